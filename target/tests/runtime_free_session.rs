//! The target's cores driven from outside the crate with no runtime, no
//! socket and no clock, the way a simulator (crate `cstor-sim`) drives
//! them: a login through [`LoginMachine`] from hand-built Login Requests,
//! then a WRITE solicited by R2T and a READ through [`FullFeature`], the
//! logical unit ([`cstor_target::server::task`]) and the block layer
//! ([`cstor_target::server::block::perform`]) on an in-memory
//! [`BlockVolume`] whose futures are polled by hand. Only public items are
//! used: this is the API a simulator builds on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::future::Future;
use std::num::NonZeroU16;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use cstor_target::iscsi::login::{LoginAction, LoginMachine, SessionType, TargetConfig};
use cstor_target::iscsi::pdu::{DataOut, LoginRequest, LogoutRequest, Pdu, ScsiCommand, TaskAttr};
use cstor_target::iscsi::session::{Action, FullFeature};
use cstor_target::iscsi::text::TextWriter;
use cstor_target::scsi::{BlockSize, Identity, LogicalUnit, LuConfig, Nexus};
use cstor_target::server::block::{self, BlockVolume, WriteGate};
use cstor_target::server::task::{self, Started};
use cstor_target::volume::{Completion, Op, VolumeError};

const INITIATOR: &str = "iqn.2026-12.test:sim";
const BLOCK: usize = 512;
const BLOCKS: usize = 64;

/// A volume in memory; its futures are ready at once and not `Send`.
struct MemVolume(RefCell<Vec<u8>>);

impl BlockVolume for MemVolume {
    fn submit(&self, op: Op) -> impl Future<Output = Result<Completion, VolumeError>> {
        let result = match op {
            Op::Read { offset, len_bytes } => {
                let at = offset as usize;
                let data = self.0.borrow()[at..at + len_bytes as usize].to_vec();
                Ok(Completion::Data(Bytes::from(data)))
            }
            Op::Write { offset, data, .. } => {
                let at = offset as usize;
                self.0.borrow_mut()[at..at + data.len()].copy_from_slice(&data);
                Ok(Completion::Done)
            }
            Op::Flush => Ok(Completion::Done),
            _ => Err(VolumeError::Refused("not in this test".into())),
        };
        std::future::ready(result)
    }

    fn size_bytes(&self) -> u64 {
        self.0.borrow().len() as u64
    }
}

/// Polls `future` to its end on this thread (a simulator's executor does
/// the same with its own wakers).
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("the future never finished");
}

fn login_request(csg: u8, nsg: u8, cmd_sn: u32, pairs: &[(&str, &str)]) -> LoginRequest {
    let mut text = TextWriter::new();
    for (k, v) in pairs {
        text.add(k, v);
    }
    LoginRequest {
        transit: true,
        continue_: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 0x3d, 0, 1],
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn,
        exp_stat_sn: 0,
        data: text.finish(),
    }
}

/// What the connection shell does with the cores' actions, with the block
/// IO performed at once: returns the PDUs to send.
fn carry_out(
    ff: &mut FullFeature<'_>,
    lu: &mut LogicalUnit,
    nexus: &Nexus,
    volume: &MemVolume,
    gate: &WriteGate,
    actions: Vec<Action>,
) -> Vec<Pdu> {
    let mut sent = Vec::new();
    let mut queue = std::collections::VecDeque::from(actions);
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Send(pdu) => {
                if let Pdu::DataIn(d) = &pdu {
                    queue.extend(ff.data_in_sent(d.data.len()));
                }
                sent.push(pdu);
            }
            Action::Execute(t) => match task::start(lu, nexus, t).0 {
                Started::Done(id, result) => queue.extend(ff.complete(id, result)),
                Started::Io(io) => {
                    let request = io.pending.request().clone();
                    let result = run(block::perform(volume, gate, BLOCK as u32, &request));
                    queue.extend(task::finish(lu, ff, io, result));
                }
            },
            Action::Reset { kind, lun } => task::reset(lu, kind, lun),
            Action::Close => {}
        }
    }
    sent
}

fn command(itt: u32, cmd_sn: u32, cdb: [u8; 10], write: bool, len: u32) -> Pdu {
    Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        final_: true,
        read: !write && len > 0,
        write,
        attr: TaskAttr::Simple,
        lun: 0,
        itt,
        expected_data_len: len,
        cmd_sn,
        exp_stat_sn: 0,
        cdb: Bytes::copy_from_slice(&cdb),
        bidi_read_len: None,
        data: Bytes::new(),
    })
}

fn rw10(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [opcode, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn status_of(pdus: &[Pdu], itt: u32) -> Option<u8> {
    pdus.iter().find_map(|p| match p {
        Pdu::ScsiResponse(r) if r.itt == itt => Some(r.status),
        Pdu::DataIn(d) if d.itt == itt => d.status,
        _ => None,
    })
}

#[test]
fn login_write_and_read_back_with_no_runtime() {
    let cfg = TargetConfig::for_volume("vol1");
    let mut login = LoginMachine::new(&cfg, NonZeroU16::MIN, "10.0.0.1:3260".parse().unwrap());
    let first = login_request(
        0,
        1,
        1,
        &[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Normal"),
            ("TargetName", &cfg.target_name),
            ("AuthMethod", "None"),
        ],
    );
    assert!(matches!(login.on_request(&first), LoginAction::Continue(_)));
    let operational = login_request(
        1,
        3,
        1,
        &[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxRecvDataSegmentLength", "65536"),
        ],
    );
    let session = match login.on_request(&operational) {
        LoginAction::Complete(_, session) => *session,
        other => panic!("login did not complete: {other:?}"),
    };
    assert_eq!(session.session_type, SessionType::Normal);

    let nexus = Nexus::iscsi(&session.initiator_name, session.isid, cfg.portal_group_tag);
    let mut lu = LogicalUnit::new(LuConfig {
        identity: Identity {
            uuid: [1; 16],
            serial: "vol1".into(),
        },
        blocks: BLOCKS as u64,
        block_size: BlockSize::B512,
        physical_block_exponent: 0,
        unmap_granularity_blocks: 1,
        write_cache: true,
    })
    .unwrap();
    let volume = MemVolume(RefCell::new(vec![0; BLOCKS * BLOCK]));
    let gate = WriteGate::default();
    let mut ff = FullFeature::new(&cfg, session);
    let mut cmd_sn = 1;
    let mut shell = |ff: &mut FullFeature<'_>, pdu: Pdu| {
        let actions = ff.on_pdu(pdu);
        carry_out(ff, &mut lu, &nexus, &volume, &gate, actions)
    };

    // TEST UNIT READY: the power-on unit attention, then ready.
    let tur = |itt, cmd_sn| {
        Pdu::ScsiCommand(ScsiCommand {
            cdb: Bytes::from_static(&[0; 6]),
            ..match command(itt, cmd_sn, [0; 10], false, 0) {
                Pdu::ScsiCommand(c) => c,
                _ => unreachable!(),
            }
        })
    };
    assert_eq!(status_of(&shell(&mut ff, tur(10, cmd_sn)), 10), Some(0x02));
    cmd_sn += 1;
    assert_eq!(status_of(&shell(&mut ff, tur(11, cmd_sn)), 11), Some(0x00));
    cmd_sn += 1;

    // WRITE(10) of two blocks at LBA 3: solicited by an R2T, sent as one
    // Data-Out.
    let payload: Vec<u8> = (0..2 * BLOCK).map(|i| (i % 251) as u8).collect();
    let len = payload.len() as u32;
    let sent = shell(&mut ff, command(20, cmd_sn, rw10(0x2a, 3, 2), true, len));
    cmd_sn += 1;
    let r2t = sent
        .iter()
        .find_map(|p| match p {
            Pdu::R2t(r) if r.itt == 20 => Some(r.clone()),
            _ => None,
        })
        .expect("an R2T");
    assert_eq!((r2t.buffer_offset, r2t.desired_len), (0, len));
    let data_out = Pdu::DataOut(DataOut {
        final_: true,
        lun: 0,
        itt: 20,
        ttt: r2t.ttt,
        exp_stat_sn: 0,
        data_sn: 0,
        buffer_offset: 0,
        data: Bytes::from(payload.clone()),
    });
    assert_eq!(status_of(&shell(&mut ff, data_out), 20), Some(0x00));

    // READ(10) of the same blocks: the data comes back in Data-In.
    let sent = shell(&mut ff, command(30, cmd_sn, rw10(0x28, 3, 2), false, len));
    cmd_sn += 1;
    let read: Vec<u8> = sent
        .iter()
        .filter_map(|p| match p {
            Pdu::DataIn(d) if d.itt == 30 => Some(d.data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(read, payload);
    assert_eq!(status_of(&sent, 30), Some(0x00));

    // Logout: answered, then the connection closes.
    let actions = ff.on_pdu(Pdu::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: 0,
        itt: 40,
        cid: 0,
        cmd_sn,
        exp_stat_sn: 0,
    }));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Send(Pdu::LogoutResponse(_)))));
    assert!(actions.iter().any(|a| matches!(a, Action::Close)));
}
