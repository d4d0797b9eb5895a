//! Sessions of several initiators sharing the target's one logical unit,
//! driven the way the connection shell drives the cores
//! (`target/src/server/conn.rs`): PDUs into each session core, its tasks
//! into the logical unit, block requests performed on an in-memory volume
//! when the test says so, and each completion back into the session it
//! came from. Every decision is the cores'; the shell adds sockets and
//! tasks, nothing this simulation leaves out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scsi_support;

use std::num::NonZeroU16;

use bytes::Bytes;
use cstor_target::iscsi::login::{LoggedIn, SessionType, TargetConfig};
use cstor_target::iscsi::negotiate::SessionParams;
use cstor_target::iscsi::pdu::{
    Pdu, ScsiCommand, ScsiResponse, TaskAttr, TaskMgmtRequest, TmfFunction,
};
use cstor_target::iscsi::session::{Action, FullFeature, ResetKind, TaskId, TaskResult};
use cstor_target::scsi::{
    Asc, Completed, LogicalUnit, Nexus, Outcome, Pending, Response, Sense, SenseKey,
};
use scsi_support::*;

const INITIATOR: &str = "iqn.2026-01.test:node";
const TPGT: u16 = 1;

/// One initiator's session and the shell's view of it.
struct Initiator<'a> {
    ff: FullFeature<'a>,
    nexus: Nexus,
    cmd_sn: u32,
    next_itt: u32,
    /// Tasks whose block request the volume works on.
    in_flight: Vec<(TaskId, Pending)>,
}

impl<'a> Initiator<'a> {
    fn new(cfg: &'a TargetConfig, isid_last: u8) -> Self {
        let isid = [0x40, 0, 0, 0, 0, isid_last];
        let session = LoggedIn {
            session_type: SessionType::Normal,
            initiator_name: INITIATOR.into(),
            initiator_alias: None,
            isid,
            tsih: NonZeroU16::new(u16::from(isid_last) + 1).unwrap(),
            cid: 0,
            params: SessionParams::default(),
            exp_cmd_sn: 1,
            next_stat_sn: 1,
            local_addr: "10.0.0.1:3260".parse().unwrap(),
        };
        Initiator {
            ff: FullFeature::new(cfg, session),
            nexus: Nexus::iscsi(INITIATOR, isid, TPGT),
            cmd_sn: 1,
            next_itt: 1,
            in_flight: Vec::new(),
        }
    }

    /// Sends a command (`data`: all its write data, immediate) and returns
    /// what the target answers before any block request finishes.
    fn send(&mut self, lu: &mut LogicalUnit, cdb: &[u8], data: &[u8], read_len: u32) -> Vec<Pdu> {
        let mut padded = cdb.to_vec();
        padded.resize(16, 0);
        let write = !data.is_empty();
        let command = Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: true,
            read: read_len > 0,
            write,
            attr: TaskAttr::Simple,
            lun: 0,
            itt: self.next_itt,
            expected_data_len: if write { data.len() as u32 } else { read_len },
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            cdb: Bytes::from(padded),
            bidi_read_len: None,
            data: Bytes::copy_from_slice(data),
        });
        self.next_itt += 1;
        self.cmd_sn += 1;
        let actions = self.ff.on_pdu(command);
        self.carry_out(lu, actions)
    }

    /// Sends a command that needs no block request and returns its answer.
    fn ask(&mut self, lu: &mut LogicalUnit, cdb: &[u8], data: &[u8]) -> ScsiResponse {
        match &self.send(lu, cdb, data, 0)[..] {
            [Pdu::ScsiResponse(r)] => r.clone(),
            other => panic!("expected one SCSI Response, got {other:?}"),
        }
    }

    /// Lets the volume finish every block request of this session.
    fn finish_io(&mut self, lu: &mut LogicalUnit, vol: &mut MemVolume) -> Vec<Pdu> {
        let mut sent = Vec::new();
        for (id, pending) in std::mem::take(&mut self.in_flight) {
            let result = vol.perform(pending.request());
            let actions = match lu.complete(pending, result) {
                Completed::Respond(r) => self.ff.complete(id, task_result(r)),
                Completed::Aborted => self.ff.aborted(id),
            };
            sent.extend(self.carry_out(lu, actions));
        }
        sent
    }

    /// Does what the session core asks, as the shell does; returns the
    /// PDUs it sent.
    fn carry_out(&mut self, lu: &mut LogicalUnit, actions: Vec<Action>) -> Vec<Pdu> {
        let mut sent = Vec::new();
        let mut queue = std::collections::VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(p) => sent.push(p),
                Action::Execute(task) => match lu.execute(&self.nexus, &task.cdb, task.data_out) {
                    Outcome::Done(r) => queue.extend(self.ff.complete(task.id, task_result(r))),
                    Outcome::Io(pending) => self.in_flight.push((task.id, pending)),
                },
                // As the shell: a LUN or target warm reset resets the unit.
                Action::Reset {
                    kind: ResetKind::LogicalUnitReset | ResetKind::TargetWarmReset,
                    lun: 0,
                } => lu.lun_reset(),
                Action::Reset { .. } | Action::Close => {}
            }
        }
        sent
    }

    /// Sends a LOGICAL UNIT RESET task management request for LUN 0.
    fn lun_reset(&mut self, lu: &mut LogicalUnit) -> Vec<Pdu> {
        let request = Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: TmfFunction::LogicalUnitReset,
            lun: 0,
            itt: self.next_itt,
            referenced_task_tag: 0xffff_ffff,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn: 0,
            exp_data_sn: 0,
        });
        self.next_itt += 1;
        let actions = self.ff.on_pdu(request);
        self.carry_out(lu, actions)
    }
}

/// The logical unit's response as the session core takes it (as the shell
/// converts it; residuals of these commands are not looked at here).
fn task_result(r: Response) -> TaskResult {
    TaskResult {
        status: r.status.code(),
        data_in: r.data_in,
        sense: r.sense.map(Bytes::from),
        data_out_wanted: None,
    }
}

fn sense_in(r: &ScsiResponse) -> Sense {
    Sense::decode(r.sense().expect("sense data")).expect("valid sense")
}

/// Both sessions past their power-on unit attention, registered (A with
/// key 0xa, B with 0xb), and A holding a Write Exclusive reservation.
fn a_reserves_b_registered<'a>(lu: &mut LogicalUnit, a: &mut Initiator<'a>, b: &mut Initiator<'a>) {
    for (who, key) in [(&mut *a, 0xa), (&mut *b, 0xb)] {
        assert_eq!(sense_in(&who.ask(lu, &tur(), &[])).asc, Asc::POWER_ON_RESET);
        let (c, p) = pr_out(0, 0, 0, key);
        assert_eq!(who.ask(lu, &c, &p).status, 0);
    }
    let (c, p) = pr_out(1, 0x01, 0xa, 0);
    assert_eq!(a.ask(lu, &c, &p).status, 0);
}

#[test]
fn preempt_and_abort_from_one_session_silences_the_preempted_sessions_commands_in_flight() {
    let cfg = TargetConfig::for_volume("pvc-shared");
    let mut lu = LogicalUnit::new(config(64)).unwrap();
    let mut vol = MemVolume::new(64);
    let (mut a, mut b) = (Initiator::new(&cfg, 1), Initiator::new(&cfg, 2));
    a_reserves_b_registered(&mut lu, &mut a, &mut b);
    assert!(a.send(&mut lu, &write10(0, 1), &[0xaa; BS], 0).is_empty());
    assert!(a.send(&mut lu, &read10(0, 1), &[], BS as u32).is_empty());
    assert!(b.send(&mut lu, &read10(1, 1), &[], BS as u32).is_empty());
    let (c, p) = pr_out(5, 0x01, 0xb, 0xa);
    assert_eq!(b.ask(&mut lu, &c, &p).status, 0, "PREEMPT AND ABORT");
    let sent = a.finish_io(&mut lu, &mut vol);
    assert!(
        sent.is_empty(),
        "A's aborted commands were answered: {sent:?}"
    );
    assert_eq!(
        a.ff.live_tasks(),
        0,
        "A's aborted tasks still hold their slots"
    );
    let sent = b.finish_io(&mut lu, &mut vol);
    assert!(
        matches!(&sent[..], [Pdu::DataIn(d)] if d.status == Some(0)),
        "B's own read goes on: {sent:?}"
    );
    let r = a.ask(&mut lu, &tur(), &[]);
    let s = sense_in(&r);
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::UnitAttention, Asc::REGISTRATIONS_PREEMPTED)
    );
    assert_eq!(
        r.max_cmd_sn,
        a.cmd_sn - 1 + cfg.queue_depth,
        "A's window is whole again"
    );
}

/// SAM-5 §7.6: a LOGICAL UNIT RESET aborts every task of the unit, whatever
/// I_T nexus sent it; the other nexuses learn it from a unit attention
/// (TAS = 0: their aborted commands get no response).
#[test]
fn a_lun_reset_from_one_session_aborts_every_sessions_commands_in_flight() {
    let cfg = TargetConfig::for_volume("pvc-shared");
    let mut lu = LogicalUnit::new(config(64)).unwrap();
    let mut vol = MemVolume::new(64);
    let (mut a, mut b) = (Initiator::new(&cfg, 1), Initiator::new(&cfg, 2));
    for who in [&mut a, &mut b] {
        assert_eq!(
            sense_in(&who.ask(&mut lu, &tur(), &[])).asc,
            Asc::POWER_ON_RESET
        );
    }
    assert!(a.send(&mut lu, &write10(0, 1), &[0xaa; BS], 0).is_empty());
    assert!(a.send(&mut lu, &read10(0, 1), &[], BS as u32).is_empty());
    assert!(b.send(&mut lu, &read10(1, 1), &[], BS as u32).is_empty());
    let answered = b.lun_reset(&mut lu);
    assert!(
        matches!(&answered[..], [Pdu::TaskMgmtResponse(r)] if r.response == 0),
        "the reset is done: {answered:?}"
    );
    let sent = a.finish_io(&mut lu, &mut vol);
    assert!(
        sent.is_empty(),
        "A's reset commands were answered: {sent:?}"
    );
    assert_eq!(
        a.ff.live_tasks(),
        0,
        "A's aborted tasks still hold their slots"
    );
    let sent = b.finish_io(&mut lu, &mut vol);
    assert!(sent.is_empty(), "B's own reset read was answered: {sent:?}");
    let s = sense_in(&a.ask(&mut lu, &tur(), &[]));
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::UnitAttention, Asc::BUS_DEVICE_RESET)
    );
    // A command issued after the reset runs as usual.
    assert!(a.send(&mut lu, &read10(0, 1), &[], BS as u32).is_empty());
    let sent = a.finish_io(&mut lu, &mut vol);
    assert!(
        matches!(&sent[..], [Pdu::DataIn(d)] if d.status == Some(0)),
        "after the reset: {sent:?}"
    );
}
