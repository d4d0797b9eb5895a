//! The property the `iscsi_pdu` fuzz target checks, shared with this test
//! (which replays seed inputs in CI): any byte stream fed to the PDU decoder,
//! the text parser and the login state machine ends in a value or a typed
//! error, never a panic; and every PDU that decodes encodes back to bytes
//! that decode to the same PDU.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::num::NonZeroU16;

use bytes::BytesMut;
use cstor_target::iscsi::login::{LoggedIn, LoginAction, LoginMachine, SessionType, TargetConfig};
use cstor_target::iscsi::negotiate::SessionParams;
use cstor_target::iscsi::pdu::{self, Digests, FrameConfig, Pdu};
use cstor_target::iscsi::session::{Action, FullFeature, TaskResult};
use cstor_target::iscsi::text;

/// Runs every parser on `data`; panics only if a property is violated.
pub fn check(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let cfg = FrameConfig {
        digests: Digests {
            header: mode & 1 != 0,
            data: mode & 2 != 0,
        },
        max_data_segment_bytes: if mode & 4 != 0 { 8192 } else { 1 << 18 },
    };
    let _ = text::parse(stream);

    let target = TargetConfig::for_volume("fuzz");
    let tsih = NonZeroU16::MIN;
    let mut login = LoginMachine::new(&target, tsih, "127.0.0.1:3260".parse().unwrap());
    let mut session = FullFeature::new(&target, logged_in(mode));
    let mut buf = BytesMut::from(stream);
    loop {
        match pdu::decode(&mut buf, &cfg) {
            Ok(None) => break,
            Ok(Some(p)) => {
                round_trip(&p, &cfg);
                full_feature(&mut session, p.clone());
                if let Pdu::LoginRequest(req) = &p {
                    match login.on_request(req) {
                        LoginAction::Continue(rsp) => round_trip(&Pdu::LoginResponse(rsp), &cfg),
                        LoginAction::Fail(rsp, _) => {
                            assert_ne!(rsp.status_class, 0);
                            round_trip(&Pdu::LoginResponse(rsp), &cfg);
                            login =
                                LoginMachine::new(&target, tsih, "127.0.0.1:3260".parse().unwrap());
                        }
                        LoginAction::Complete(rsp, _) => {
                            round_trip(&Pdu::LoginResponse(rsp), &cfg);
                        }
                    }
                }
            }
            Err(e) => match e.disposition() {
                pdu::Disposition::Close => break,
                // The PDU was consumed: go on with the next one.
                pdu::Disposition::Reject { .. } => {}
            },
        }
    }
}

/// A session as if login had completed, normal or discovery by `mode`.
fn logged_in(mode: u8) -> LoggedIn {
    LoggedIn {
        session_type: if mode & 8 != 0 {
            SessionType::Discovery
        } else {
            SessionType::Normal
        },
        initiator_name: "iqn.x:y".into(),
        initiator_alias: None,
        isid: [0; 6],
        tsih: NonZeroU16::MIN,
        cid: 0,
        params: SessionParams {
            initial_r2t: mode & 16 != 0,
            max_outstanding_r2t: 2,
            ..SessionParams::default()
        },
        exp_cmd_sn: 0,
        next_stat_sn: 0,
        local_addr: "127.0.0.1:3260".parse().unwrap(),
    }
}

/// Feeds one PDU to the full feature machine and completes every task it
/// starts at once, with as much read data as was expected.
fn full_feature(session: &mut FullFeature<'_>, p: Pdu) {
    let mut actions = session.on_pdu(p);
    while let Some(action) = actions.pop() {
        match action {
            Action::Execute(task) => {
                let data = vec![0u8; task.expected_data_in.min(1 << 16) as usize];
                actions.extend(session.complete(task.id, TaskResult::good(data.into())));
            }
            Action::Send(p) => {
                let mut out = BytesMut::new();
                p.encode(
                    &mut out,
                    &FrameConfig {
                        digests: Digests::default(),
                        max_data_segment_bytes: 1 << 24,
                    },
                )
                .expect("the target's own PDUs encode");
            }
            Action::Reset { .. } | Action::Close => {}
        }
    }
}

fn round_trip(p: &Pdu, cfg: &FrameConfig) {
    let mut out = BytesMut::new();
    let unbounded = FrameConfig {
        max_data_segment_bytes: 1 << 24,
        ..*cfg
    };
    p.encode(&mut out, &unbounded)
        .expect("a decoded PDU encodes");
    let again = pdu::decode(&mut out, &unbounded)
        .expect("an encoded PDU decodes")
        .expect("completely");
    assert_eq!(&again, p);
    assert!(out.is_empty());
}

/// Seeds: a few valid PDUs, each cut and flipped in many ways.
fn seeds() -> Vec<Vec<u8>> {
    use bytes::Bytes;
    use cstor_target::iscsi::pdu::LoginRequest;
    let login = Pdu::LoginRequest(LoginRequest {
        transit: true,
        continue_: false,
        csg: 0,
        nsg: 1,
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 1, 0, 0],
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: Bytes::from_static(
            b"InitiatorName=iqn.x:y\0TargetName=iqn.2016-09.com.openebs.cstor:fuzz\0AuthMethod=None\0",
        ),
    });
    let mut out = Vec::new();
    for mode in 0u8..8 {
        let cfg = FrameConfig {
            digests: Digests {
                header: mode & 1 != 0,
                data: mode & 2 != 0,
            },
            max_data_segment_bytes: 1 << 18,
        };
        let mut wire = BytesMut::new();
        login.encode(&mut wire, &cfg).unwrap();
        let mut seed = vec![mode];
        seed.extend_from_slice(&wire);
        out.push(seed.clone());
        for i in 1..seed.len() {
            let mut cut = seed.clone();
            cut.truncate(i);
            out.push(cut);
            let mut flipped = seed.clone();
            flipped[i] ^= 0x5a;
            out.push(flipped);
        }
    }
    out
}

#[test]
fn seeds_and_their_mutations_never_break_a_property() {
    for seed in seeds() {
        check(&seed);
    }
}

#[test]
fn garbage_streams_never_break_a_property() {
    // A deterministic pseudo-random stream (xorshift), no timing involved.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [0usize, 1, 47, 48, 49, 100, 1000, 5000] {
        for _ in 0..50 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            check(&bytes);
        }
    }
}
