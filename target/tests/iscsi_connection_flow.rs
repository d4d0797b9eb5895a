//! End-to-end, bytes in and bytes out, of the sans-IO iSCSI pieces driven the
//! way the connection shell will drive them: codec → login machine → codec
//! switching digests → full feature PDUs (pings, SendTargets, Rejects,
//! command window). An "initiator" here is hand-built PDUs encoded with the
//! same PDU layer, decoded on the way back with the initiator's view of the
//! connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use cstor_target::iscsi::chap::{
    decode_binary, encode_binary, ChapAlgorithm, ChapConfig, Credentials,
};
use cstor_target::iscsi::codec::IscsiCodec;
use cstor_target::iscsi::discovery::{TextContext, TextExchange};
use cstor_target::iscsi::keepalive::answer_ping;
use cstor_target::iscsi::login::{LoggedIn, LoginAction, LoginMachine, SessionType, TargetConfig};
use cstor_target::iscsi::pdu::{
    self, tmf_response, DataOut, Digests, FrameConfig, LoginRequest, LoginResponse, NopOut, Pdu,
    Reject, RejectReason, ScsiCommand, TaskAttr, TaskMgmtRequest, TextRequest, TmfFunction,
};
use cstor_target::iscsi::session::{Action, FullFeature, Task, TaskResult};
use cstor_target::iscsi::text::{parse, TextWriter};
use cstor_target::iscsi::window::{CmdWindow, WindowError};
use tokio_util::codec::{Decoder, Encoder};

const INITIATOR: &str = "iqn.1994-05.com.redhat:client1";

fn local() -> SocketAddr {
    "172.16.0.10:3260".parse().unwrap()
}

fn text(pairs: &[(&str, &str)]) -> Bytes {
    let mut w = TextWriter::new();
    for (k, v) in pairs {
        w.add(k, v);
    }
    w.finish()
}

fn login_req(csg: u8, nsg: u8, data: Bytes) -> Pdu {
    Pdu::LoginRequest(LoginRequest {
        transit: true,
        continue_: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: [0x40, 0, 0x01, 0x37, 0, 0],
        tsih: 0,
        itt: 0,
        cid: 1,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data,
    })
}

/// The target side of one connection: codec + login, as the shell will be.
struct Target<'a> {
    codec: IscsiCodec,
    login: LoginMachine<'a>,
    done: Option<LoggedIn>,
    failed: bool,
}

impl<'a> Target<'a> {
    fn new(cfg: &'a TargetConfig) -> Self {
        Self {
            codec: IscsiCodec::new(),
            login: LoginMachine::new(cfg, NonZeroU16::new(0x11).unwrap(), local()),
            done: None,
            failed: false,
        }
    }

    /// Feeds initiator bytes, returns the bytes the target sends back.
    fn receive(&mut self, wire: &mut BytesMut) -> BytesMut {
        let mut out = BytesMut::new();
        while let Some(item) = self.codec.decode(wire).unwrap() {
            let Pdu::LoginRequest(req) = item.unwrap() else {
                panic!("only login PDUs in this helper");
            };
            let rsp = match self.login.on_request(&req) {
                LoginAction::Continue(r) => r,
                LoginAction::Fail(r, _) => {
                    self.failed = true;
                    r
                }
                LoginAction::Complete(r, done) => {
                    self.codec.arm_full_feature(done.full_feature_config());
                    self.done = Some(*done);
                    r
                }
            };
            self.codec
                .encode(Pdu::LoginResponse(rsp), &mut out)
                .unwrap();
        }
        out
    }
}

fn send(p: &Pdu, cfg: &FrameConfig) -> BytesMut {
    let mut b = BytesMut::new();
    p.encode(&mut b, cfg).unwrap();
    b
}

fn login_response(wire: &mut BytesMut) -> LoginResponse {
    match pdu::decode(wire, &FrameConfig::login()).unwrap().unwrap() {
        Pdu::LoginResponse(r) => r,
        other => panic!("expected a Login Response, got {other:?}"),
    }
}

fn value(data: &[u8], key: &str) -> Option<String> {
    parse(data)
        .unwrap()
        .into_iter()
        .find(|p| p.key == key)
        .map(|p| p.value)
}

const BOTH: Digests = Digests {
    header: true,
    data: true,
};

/// Logs in a normal session with both digests; returns the target and the
/// initiator's receive configuration.
fn logged_in(cfg: &TargetConfig) -> (Target<'_>, FrameConfig) {
    let mut t = Target::new(cfg);
    let first = text(&[
        ("InitiatorName", INITIATOR),
        ("SessionType", "Normal"),
        ("TargetName", &cfg.target_name),
        ("AuthMethod", "None"),
    ]);
    let mut back = t.receive(&mut send(&login_req(0, 1, first), &FrameConfig::login()));
    let r1 = login_response(&mut back);
    assert_eq!((r1.status_class, r1.transit, r1.nsg), (0, true, 1));
    let ops = text(&[
        ("HeaderDigest", "CRC32C"),
        ("DataDigest", "CRC32C"),
        ("MaxRecvDataSegmentLength", "131072"),
    ]);
    let mut back = t.receive(&mut send(&login_req(1, 3, ops), &FrameConfig::login()));
    let r2 = login_response(&mut back);
    assert_eq!(
        (r2.status_class, r2.transit, r2.nsg, r2.tsih),
        (0, true, 3, 0x11)
    );
    let initiator_rx = FrameConfig {
        digests: BOTH,
        max_data_segment_bytes: 131_072,
    };
    (t, initiator_rx)
}

#[test]
fn login_then_digested_ping_round_trip() {
    let cfg = TargetConfig::for_volume("pvc-1");
    let (mut t, initiator_rx) = logged_in(&cfg);
    let done = t.done.clone().unwrap();
    assert_eq!(done.params.initiator_max_recv_data_segment, 131_072);

    // The initiator now sends with digests, within our declared 256 KiB.
    let target_rx = FrameConfig {
        digests: BOTH,
        max_data_segment_bytes: 262_144,
    };
    let ping = Pdu::NopOut(NopOut {
        immediate: true,
        lun: 0,
        itt: 0x77,
        ttt: u32::MAX,
        cmd_sn: done.exp_cmd_sn,
        exp_stat_sn: done.next_stat_sn,
        data: Bytes::from_static(b"are you there"),
    });
    let mut wire = send(&ping, &target_rx);
    let Pdu::NopOut(got) = t.codec.decode(&mut wire).unwrap().unwrap().unwrap() else {
        panic!("expected NOP-Out");
    };
    let mut answer = Pdu::NopIn(answer_ping(&got).unwrap());
    assert!(answer.stamp(done.next_stat_sn, done.exp_cmd_sn, done.exp_cmd_sn + 31));
    let mut out = BytesMut::new();
    t.codec.encode(&answer, &mut out).unwrap();
    let Pdu::NopIn(pong) = pdu::decode(&mut out, &initiator_rx).unwrap().unwrap() else {
        panic!("expected NOP-In");
    };
    assert_eq!(pong.itt, 0x77);
    assert_eq!(&pong.data[..], b"are you there");
    assert_eq!(pong.stat_sn, done.next_stat_sn);
}

#[test]
fn corrupted_payload_is_rejected_with_data_digest_error_and_the_connection_goes_on() {
    let cfg = TargetConfig::for_volume("pvc-1");
    let (mut t, initiator_rx) = logged_in(&cfg);
    let target_rx = t.codec.rx_config();
    let ping = Pdu::NopOut(NopOut {
        immediate: true,
        lun: 0,
        itt: 5,
        ttt: u32::MAX,
        cmd_sn: 1,
        exp_stat_sn: 2,
        data: Bytes::from_static(b"payload!"),
    });
    let mut wire = send(&ping, &target_rx);
    let at = wire.len() - 6; // inside the data segment
    wire[at] ^= 0x01;
    wire.extend_from_slice(&send(&ping, &target_rx));
    let rejected = t.codec.decode(&mut wire).unwrap().unwrap().unwrap_err();
    assert_eq!(rejected.reason, RejectReason::DataDigestError);
    let mut rej = Pdu::Reject(Reject::of(rejected.reason, &rejected.header));
    rej.stamp(2, 1, 32);
    let mut out = BytesMut::new();
    t.codec.encode(&rej, &mut out).unwrap();
    let Pdu::Reject(r) = pdu::decode(&mut out, &initiator_rx).unwrap().unwrap() else {
        panic!("expected Reject");
    };
    assert_eq!(r.reason, 0x02);
    assert_eq!(
        &r.header[16..20],
        &5u32.to_be_bytes(),
        "echoes the bad header"
    );
    // The next, intact PDU decodes.
    assert!(t.codec.decode(&mut wire).unwrap().unwrap().is_ok());
}

#[test]
fn unknown_opcode_after_login_is_rejected_as_not_supported() {
    let cfg = TargetConfig::for_volume("pvc-1");
    let (mut t, _) = logged_in(&cfg);
    let target_rx = t.codec.rx_config();
    // Build a well-formed, digested PDU with a vendor opcode.
    let mut wire = send(
        &Pdu::NopOut(NopOut {
            immediate: false,
            lun: 0,
            itt: 9,
            ttt: u32::MAX,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data: Bytes::new(),
        }),
        &FrameConfig {
            digests: Digests::default(),
            max_data_segment_bytes: 8192,
        },
    );
    wire[0] = 0x1d;
    let crc = crc32c::crc32c(&wire[..48]);
    wire.extend_from_slice(&crc.to_le_bytes());
    assert!(target_rx.digests.header);
    let rejected = t.codec.decode(&mut wire).unwrap().unwrap().unwrap_err();
    assert_eq!(rejected.reason, RejectReason::CommandNotSupported);
    assert_eq!(rejected.header.itt(), 9);
}

#[test]
fn discovery_session_send_targets_reports_the_reached_portal() {
    let cfg = TargetConfig::for_volume("pvc-2");
    let mut t = Target::new(&cfg);
    let first = text(&[
        ("InitiatorName", INITIATOR),
        ("SessionType", "Discovery"),
        ("AuthMethod", "None"),
    ]);
    let mut back = t.receive(&mut send(&login_req(0, 3, first), &FrameConfig::login()));
    let rsp = login_response(&mut back);
    assert_eq!((rsp.status_class, rsp.nsg), (0, 3));
    let done = t.done.clone().unwrap();
    assert_eq!(done.session_type, SessionType::Discovery);

    let req = Pdu::TextRequest(TextRequest {
        immediate: false,
        final_: true,
        continue_: false,
        lun: 0,
        itt: 2,
        ttt: u32::MAX,
        cmd_sn: done.exp_cmd_sn,
        exp_stat_sn: done.next_stat_sn,
        data: text(&[("SendTargets", "All")]),
    });
    let mut wire = send(&req, &t.codec.rx_config());
    let Pdu::TextRequest(got) = t.codec.decode(&mut wire).unwrap().unwrap().unwrap() else {
        panic!("expected Text Request");
    };
    let ctx = TextContext {
        cfg: &cfg,
        session_type: done.session_type,
        local_addr: done.local_addr,
        max_send_segment: done.params.initiator_max_recv_data_segment,
    };
    let rsp = TextExchange::new().on_request(&got, &ctx).unwrap();
    assert_eq!(
        value(&rsp.data, "TargetName").as_deref(),
        Some("iqn.2016-09.com.openebs.cstor:pvc-2")
    );
    assert_eq!(
        value(&rsp.data, "TargetAddress").as_deref(),
        Some("172.16.0.10:3260,1")
    );
}

#[test]
fn chap_with_a_wrong_secret_gets_02_01_and_the_machine_stops() {
    let cfg = TargetConfig {
        chap: Some(
            ChapConfig::new(Credentials::new("user", b"the-right-secret").unwrap(), None).unwrap(),
        ),
        ..TargetConfig::for_volume("pvc-3")
    };
    let mut t = Target::new(&cfg);
    let first = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", &cfg.target_name),
        ("AuthMethod", "CHAP"),
    ]);
    let mut back = t.receive(&mut send(&login_req(0, 1, first), &FrameConfig::login()));
    assert_eq!(login_response(&mut back).status_class, 0);
    let mut pdu_a = login_req(0, 1, text(&[("CHAP_A", "5")]));
    if let Pdu::LoginRequest(r) = &mut pdu_a {
        r.transit = false;
    }
    let mut back = t.receive(&mut send(&pdu_a, &FrameConfig::login()));
    let r = login_response(&mut back);
    let id: u8 = value(&r.data, "CHAP_I").unwrap().parse().unwrap();
    let challenge = decode_binary(&value(&r.data, "CHAP_C").unwrap()).unwrap();
    let wrong = ChapAlgorithm::Md5.response(id, b"the-wrong-secret", &challenge);
    let reply = text(&[("CHAP_N", "user"), ("CHAP_R", &encode_binary(&wrong))]);
    let mut back = t.receive(&mut send(&login_req(0, 1, reply), &FrameConfig::login()));
    let r = login_response(&mut back);
    assert_eq!((r.status_class, r.status_detail), (2, 1));
    assert!(t.failed);
    assert!(t.done.is_none());
}

#[test]
fn out_of_window_commands_are_dropped_and_in_window_ones_run_in_order() {
    let mut w: CmdWindow<u32> = CmdWindow::new(1, 4);
    assert_eq!(w.max_cmd_sn(), 4);
    assert!(matches!(
        w.admit(5, false, 5),
        Err(WindowError::OutOfWindow { .. })
    ));
    assert!(matches!(
        w.admit(0, false, 0),
        Err(WindowError::OutOfWindow { .. })
    ));
    assert_eq!(w.admit(2, false, 2), Ok(vec![]));
    assert_eq!(w.admit(1, false, 1), Ok(vec![1, 2]));
}

/// Runs `pdus` (initiator side) through the wire and the full feature
/// machine; returns what the target sent, decoded by the initiator, and
/// the tasks it asked to execute.
fn exchange(
    t: &mut Target<'_>,
    ff: &mut FullFeature<'_>,
    pdus: &[Pdu],
    initiator_rx: &FrameConfig,
) -> (Vec<Pdu>, Vec<cstor_target::iscsi::session::Task>) {
    let target_rx = t.codec.rx_config();
    let mut wire = BytesMut::new();
    for p in pdus {
        p.encode(&mut wire, &target_rx).unwrap();
    }
    let mut out = BytesMut::new();
    let mut tasks = Vec::new();
    while let Some(item) = t.codec.decode(&mut wire).unwrap() {
        for action in ff.on_pdu(item.unwrap()) {
            match action {
                Action::Send(p) => t.codec.encode(p, &mut out).unwrap(),
                Action::Execute(task) => tasks.push(task),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let mut got = Vec::new();
    while let Some(p) = pdu::decode(&mut out, initiator_rx).unwrap() {
        got.push(p);
    }
    (got, tasks)
}

#[test]
fn solicited_write_over_the_wire_with_digests() {
    let cfg = TargetConfig::for_volume("pvc-4");
    let (mut t, initiator_rx) = logged_in(&cfg);
    let done = t.done.clone().unwrap();
    let mut ff = FullFeature::new(&cfg, done.clone());
    let write = Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        final_: true,
        read: false,
        write: true,
        attr: TaskAttr::Simple,
        lun: 0,
        itt: 0x10,
        expected_data_len: 8192,
        cmd_sn: done.exp_cmd_sn,
        exp_stat_sn: done.next_stat_sn,
        cdb: Bytes::from(vec![0x2a, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0]),
        bidi_read_len: None,
        data: Bytes::from(vec![0xab; 4096]),
    });
    let (got, tasks) = exchange(&mut t, &mut ff, &[write], &initiator_rx);
    assert!(tasks.is_empty());
    let [Pdu::R2t(r2t)] = &got[..] else {
        panic!("{got:?}");
    };
    assert_eq!((r2t.buffer_offset, r2t.desired_len), (4096, 4096));
    let dout = Pdu::DataOut(DataOut {
        final_: true,
        lun: 0,
        itt: 0x10,
        ttt: r2t.ttt,
        exp_stat_sn: done.next_stat_sn,
        data_sn: 0,
        buffer_offset: 4096,
        data: Bytes::from(vec![0xcd; 4096]),
    });
    let (got, tasks) = exchange(&mut t, &mut ff, &[dout], &initiator_rx);
    assert!(got.is_empty());
    assert_eq!(tasks.len(), 1);
    assert_eq!(&tasks[0].data_out[..4096], &[0xab; 4096][..]);
    assert_eq!(&tasks[0].data_out[4096..], &[0xcd; 4096][..]);
    let mut out = BytesMut::new();
    for a in ff.complete(tasks[0].id, TaskResult::good(Bytes::new())) {
        let Action::Send(p) = a else { panic!("{a:?}") };
        t.codec.encode(p, &mut out).unwrap();
    }
    let Pdu::ScsiResponse(rsp) = pdu::decode(&mut out, &initiator_rx).unwrap().unwrap() else {
        panic!("expected SCSI Response");
    };
    assert_eq!(
        (rsp.itt, rsp.status, rsp.stat_sn),
        (0x10, 0, done.next_stat_sn)
    );
    assert_eq!(rsp.exp_cmd_sn, done.exp_cmd_sn + 1);
}

/// What the initiator receives once the logical unit answered `task` with
/// `result`: the session's actions, encoded by the target and decoded on
/// the initiator's side.
fn answer(
    t: &mut Target<'_>,
    ff: &mut FullFeature<'_>,
    task: &Task,
    result: TaskResult,
    initiator_rx: &FrameConfig,
) -> Vec<Pdu> {
    let mut out = BytesMut::new();
    for a in ff.complete(task.id, result) {
        let Action::Send(p) = a else { panic!("{a:?}") };
        t.codec.encode(p, &mut out).unwrap();
    }
    let mut got = Vec::new();
    while let Some(p) = pdu::decode(&mut out, initiator_rx).unwrap() {
        got.push(p);
    }
    got
}

fn read_command(itt: u32, cmd_sn: u32, exp_stat_sn: u32) -> Pdu {
    Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        attr: TaskAttr::Simple,
        lun: 0,
        itt,
        expected_data_len: 4096,
        cmd_sn,
        exp_stat_sn,
        cdb: Bytes::from(vec![0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]),
        bidi_read_len: None,
        data: Bytes::new(),
    })
}

#[test]
fn a_read_aborted_by_abort_task_never_answers_the_command_that_reuses_its_itt() {
    let cfg = TargetConfig::for_volume("pvc-5");
    let (mut t, initiator_rx) = logged_in(&cfg);
    let done = t.done.clone().unwrap();
    let mut ff = FullFeature::new(&cfg, done.clone());
    let (cmd_sn, stat_sn) = (done.exp_cmd_sn, done.next_stat_sn);
    let (_, tasks) = exchange(
        &mut t,
        &mut ff,
        &[read_command(0x30, cmd_sn, stat_sn)],
        &initiator_rx,
    );
    let [old] = &tasks[..] else {
        panic!("{tasks:?}")
    };
    let abort = Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: TmfFunction::AbortTask,
        lun: 0,
        itt: 0x31,
        referenced_task_tag: 0x30,
        cmd_sn: cmd_sn + 1,
        exp_stat_sn: stat_sn,
        ref_cmd_sn: cmd_sn,
        exp_data_sn: 0,
    });
    let (got, tasks) = exchange(
        &mut t,
        &mut ff,
        &[abort, read_command(0x30, cmd_sn + 1, stat_sn + 1)],
        &initiator_rx,
    );
    let [Pdu::TaskMgmtResponse(tmf)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(
        (tmf.itt, tmf.response),
        (0x31, tmf_response::FUNCTION_COMPLETE)
    );
    let [new] = &tasks[..] else {
        panic!("{tasks:?}")
    };
    let got = answer(
        &mut t,
        &mut ff,
        old,
        TaskResult::good(Bytes::from(vec![0xaa; 4096])),
        &initiator_rx,
    );
    assert!(got.is_empty(), "the aborted read reached the wire: {got:?}");
    let got = answer(
        &mut t,
        &mut ff,
        new,
        TaskResult::good(Bytes::from(vec![0xbb; 4096])),
        &initiator_rx,
    );
    let [Pdu::DataIn(d)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!((d.itt, d.status, d.stat_sn), (0x30, Some(0), stat_sn + 1));
    assert_eq!(&d.data[..], &[0xbb; 4096][..]);
}
