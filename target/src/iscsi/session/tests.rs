//! Full feature phase tests, each naming the RFC 7143 rule it checks.

use std::num::NonZeroU16;

use bytes::Bytes;

use super::*;
use crate::iscsi::negotiate::SessionParams;
use crate::iscsi::pdu::{SnackRequest, TaskAttr};

const FIRST_CMD_SN: u32 = 10;
const FIRST_STAT_SN: u32 = 100;

fn session(kind: SessionType, params: SessionParams) -> LoggedIn {
    LoggedIn {
        session_type: kind,
        initiator_name: "iqn.2000-01.com.example:i".into(),
        initiator_alias: None,
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: NonZeroU16::new(1).unwrap(),
        cid: 0,
        params,
        exp_cmd_sn: FIRST_CMD_SN,
        next_stat_sn: FIRST_STAT_SN,
        local_addr: "10.0.0.1:3260".parse().unwrap(),
    }
}

fn params() -> SessionParams {
    SessionParams {
        initiator_max_recv_data_segment: 4096,
        target_max_recv_data_segment: 65536,
        max_burst_length: 8192,
        ..SessionParams::default()
    }
}

fn cmd(itt: u32, cmd_sn: u32, read: bool, write: bool, edtl: u32, data: Vec<u8>) -> Pdu {
    let mut cdb = vec![0u8; 16];
    cdb[0] = if write { 0x2a } else { 0x28 };
    Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        final_: true,
        read,
        write,
        attr: TaskAttr::Simple,
        lun: 0,
        itt,
        expected_data_len: edtl,
        cmd_sn,
        exp_stat_sn: FIRST_STAT_SN,
        cdb: Bytes::from(cdb),
        bidi_read_len: None,
        data: Bytes::from(data),
    })
}

fn sent(actions: &[Action]) -> Vec<&Pdu> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn executed(actions: &[Action]) -> Vec<&Task> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Execute(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn reject_reason(p: &Pdu) -> u8 {
    match p {
        Pdu::Reject(r) => r.reason,
        other => panic!("expected Reject, got {other:?}"),
    }
}

fn good(data: Vec<u8>) -> TaskResult {
    TaskResult::good(Bytes::from(data))
}

#[test]
fn read_data_is_sent_in_segments_with_status_in_the_last_data_in() {
    // RFC 7143 §11.7.3-§11.7.5: phase collapse and residual underflow.
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let task = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 12_000, vec![])));
    assert_eq!(task.expected_data_in, 12_000);
    let a = finish(&mut ff, &task, good(vec![7; 10_000]));
    let pdus = sent(&a);
    assert_eq!(pdus.len(), 3);
    let ins: Vec<&DataIn> = pdus
        .iter()
        .map(|p| match p {
            Pdu::DataIn(d) => d,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ins.iter().map(|d| d.data.len()).collect::<Vec<_>>(),
        vec![4096, 4096, 1808]
    );
    assert!(ins[0].status.is_none() && ins[1].status.is_none());
    assert_eq!(ins[2].status, Some(0));
    assert_eq!(ins[2].residual, Residual::Underflow(2000));
    assert_eq!(ins[2].stat_sn, FIRST_STAT_SN);
    assert!(ins[1].final_, "8192-byte burst ends at the second PDU");
    assert_eq!(ins[2].exp_cmd_sn, FIRST_CMD_SN + 1);
    assert_eq!(ff.live_tasks(), 0);
}

#[test]
fn check_condition_goes_in_a_scsi_response_with_sense() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let task = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 512, vec![])));
    let a = finish(
        &mut ff,
        &task,
        TaskResult {
            status: 0x02,
            data_in: Bytes::new(),
            sense: Some(Bytes::from_static(&[0x70, 0, 0x05])),
            data_out_wanted: None,
        },
    );
    let [Pdu::ScsiResponse(r)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!(r.status, 0x02);
    assert_eq!(r.sense(), Some(&[0x70, 0, 0x05][..]));
    assert_eq!(r.residual, Residual::Underflow(512));
    assert_eq!(r.stat_sn, FIRST_STAT_SN);
}

#[test]
fn write_with_all_data_immediate_executes_at_once() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let task = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, false, true, 1024, vec![9; 1024])));
    assert_eq!(&task.data_out[..], &[9; 1024][..]);
    let a = finish(&mut ff, &task, good(vec![]));
    let [Pdu::ScsiResponse(r)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!((r.status, r.residual), (0, Residual::None));
}

#[test]
fn write_is_solicited_with_r2ts_and_assembled_in_order() {
    // RFC 7143 §11.8: R2T carries StatSN without advancing it.
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let a = ff.on_pdu(cmd(1, FIRST_CMD_SN, false, true, 10_000, vec![1; 1000]));
    let [Pdu::R2t(r2t)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!(
        (r2t.buffer_offset, r2t.desired_len, r2t.r2t_sn),
        (1000, 8192, 0)
    );
    assert_eq!(r2t.stat_sn, FIRST_STAT_SN);
    let r2t = r2t.clone();
    let dout = |ttt, data_sn, offset: u32, len: usize, byte, final_| {
        Pdu::DataOut(DataOut {
            final_,
            lun: 0,
            itt: 1,
            ttt,
            exp_stat_sn: FIRST_STAT_SN,
            data_sn,
            buffer_offset: offset,
            data: Bytes::from(vec![byte; len]),
        })
    };
    assert!(ff.on_pdu(dout(r2t.ttt, 0, 1000, 4096, 2, false)).is_empty());
    let a = ff.on_pdu(dout(r2t.ttt, 1, 5096, 4096, 3, true));
    let [Pdu::R2t(second)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!((second.buffer_offset, second.desired_len), (9192, 808));
    let a = ff.on_pdu(dout(second.ttt, 0, 9192, 808, 4, true));
    let t = executed(&a);
    assert_eq!(t.len(), 1);
    let d = &t[0].data_out;
    assert_eq!(d.len(), 10_000);
    assert!(d[..1000].iter().all(|b| *b == 1));
    assert!(d[1000..5096].iter().all(|b| *b == 2));
    assert!(d[5096..9192].iter().all(|b| *b == 3));
    assert!(d[9192..].iter().all(|b| *b == 4));
}

#[test]
fn bad_data_out_is_rejected() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    ff.on_pdu(cmd(1, FIRST_CMD_SN, false, true, 4096, vec![]));
    let bad = |itt, offset| {
        Pdu::DataOut(DataOut {
            final_: false,
            lun: 0,
            itt,
            ttt: 1,
            exp_stat_sn: 0,
            data_sn: 0,
            buffer_offset: offset,
            data: Bytes::from_static(&[0; 512]),
        })
    };
    let a = ff.on_pdu(bad(99, 0));
    assert_eq!(
        reject_reason(sent(&a)[0]),
        RejectReason::InvalidPduField as u8
    );
    let a = ff.on_pdu(bad(1, 512));
    assert_eq!(
        reject_reason(sent(&a)[0]),
        RejectReason::ProtocolError as u8
    );
}

#[test]
fn data_out_failing_its_digest_ends_the_write_with_crc_error_once_all_data_came() {
    // RFC 7143 §7.8: Reject 0x02, then (option b) CHECK CONDITION "protocol
    // service CRC error" after the data of every outstanding R2T.
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let a = ff.on_pdu(cmd(1, FIRST_CMD_SN, false, true, 8192, vec![]));
    let [Pdu::R2t(r2t)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    let dout = |data_sn, offset: u32, final_| DataOut {
        final_,
        lun: 0,
        itt: 1,
        ttt: r2t.ttt,
        exp_stat_sn: FIRST_STAT_SN,
        data_sn,
        buffer_offset: offset,
        data: Bytes::from(vec![5; 4096]),
    };
    let corrupt = Pdu::DataOut(dout(0, 0, false)).bhs();
    let a = ff.on_rejected(RejectReason::DataDigestError, &corrupt);
    let [Pdu::Reject(reject)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!(reject.reason, RejectReason::DataDigestError as u8);
    assert_eq!(
        ff.live_tasks(),
        1,
        "the task waits for the rest of its data"
    );
    let a = ff.on_pdu(Pdu::DataOut(dout(1, 4096, true)));
    assert!(executed(&a).is_empty(), "a write ran on corrupt data");
    let [Pdu::ScsiResponse(rsp)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!((rsp.itt, rsp.status), (1, 0x02));
    let sense = rsp.sense().unwrap();
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (0x0b, 0x47, 0x05));
    assert_eq!(ff.live_tasks(), 0);
    assert_eq!(
        rsp.max_cmd_sn,
        FIRST_CMD_SN + cfg.queue_depth,
        "window slot freed"
    );
}

#[test]
fn commands_outside_the_window_are_dropped_silently() {
    // RFC 7143 §4.2.2.1.
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    assert!(ff
        .on_pdu(cmd(1, FIRST_CMD_SN - 1, true, false, 0, vec![]))
        .is_empty());
    assert!(ff
        .on_pdu(cmd(2, FIRST_CMD_SN + 32, true, false, 0, vec![]))
        .is_empty());
    assert_eq!(ff.live_tasks(), 0);
}

#[test]
fn max_cmd_sn_advances_when_commands_finish() {
    let cfg = TargetConfig {
        queue_depth: 2,
        ..TargetConfig::for_volume("v")
    };
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let first = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 0, vec![])));
    ff.on_pdu(cmd(2, FIRST_CMD_SN + 1, true, false, 0, vec![]));
    assert!(ff
        .on_pdu(cmd(3, FIRST_CMD_SN + 2, true, false, 0, vec![]))
        .is_empty());
    let a = finish(&mut ff, &first, good(vec![]));
    let [Pdu::ScsiResponse(r)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!(r.exp_cmd_sn, FIRST_CMD_SN + 2);
    assert_eq!(r.max_cmd_sn, FIRST_CMD_SN + 2);
}

#[test]
fn discovery_session_rejects_scsi_commands() {
    // RFC 7143 §4.3: only Text, Logout (and NOP) in discovery sessions.
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Discovery, params()));
    let a = ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 512, vec![]));
    assert_eq!(
        reject_reason(sent(&a)[0]),
        RejectReason::ProtocolError as u8
    );
    let Pdu::Reject(r) = sent(&a)[0] else {
        unreachable!()
    };
    assert_eq!(
        r.header[0] & 0x3f,
        0x01,
        "the rejected header is the command's"
    );
}

#[test]
fn pings_are_answered_and_answers_to_ours_are_not() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let nop = |itt, immediate| {
        Pdu::NopOut(NopOut {
            immediate,
            lun: 0,
            itt,
            ttt: u32::MAX,
            cmd_sn: FIRST_CMD_SN,
            exp_stat_sn: FIRST_STAT_SN,
            data: Bytes::from_static(b"x"),
        })
    };
    let a = ff.on_pdu(nop(5, true));
    let [Pdu::NopIn(n)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!(
        (n.itt, n.stat_sn, &n.data[..]),
        (5, FIRST_STAT_SN, &b"x"[..])
    );
    assert!(ff.on_pdu(nop(u32::MAX, true)).is_empty());
}

fn tmf(function: TmfFunction, rtt: u32) -> Pdu {
    Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function,
        lun: 0,
        itt: 50,
        referenced_task_tag: rtt,
        cmd_sn: FIRST_CMD_SN + 1,
        exp_stat_sn: FIRST_STAT_SN,
        ref_cmd_sn: FIRST_CMD_SN,
        exp_data_sn: 0,
    })
}

fn tmf_response_of(a: &[Action]) -> u8 {
    match sent(a).last() {
        Some(Pdu::TaskMgmtResponse(r)) => r.response,
        other => panic!("{other:?}"),
    }
}

#[test]
fn abort_task_aborts_a_live_task_and_its_result_is_dropped() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let task = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 512, vec![])));
    let a = ff.on_pdu(tmf(TmfFunction::AbortTask, 1));
    assert_eq!(tmf_response_of(&a), tmf_response::FUNCTION_COMPLETE);
    assert_eq!(ff.live_tasks(), 0);
    assert!(finish(&mut ff, &task, good(vec![0; 512])).is_empty());
    let a = ff.on_pdu(tmf(TmfFunction::AbortTask, 77));
    assert_eq!(tmf_response_of(&a), tmf_response::TASK_DOES_NOT_EXIST);
}

#[test]
fn lun_reset_aborts_everything_on_the_lun_then_resets() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 512, vec![]));
    ff.on_pdu(cmd(2, FIRST_CMD_SN + 1, false, true, 4096, vec![]));
    let mut t = tmf(TmfFunction::LogicalUnitReset, u32::MAX);
    if let Pdu::TaskMgmtRequest(r) = &mut t {
        r.cmd_sn = FIRST_CMD_SN + 2;
    }
    let a = ff.on_pdu(t);
    assert!(a.contains(&Action::Reset {
        kind: ResetKind::LogicalUnitReset,
        lun: 0
    }));
    assert_eq!(tmf_response_of(&a), tmf_response::FUNCTION_COMPLETE);
    assert_eq!(ff.live_tasks(), 0);
}

#[test]
fn unsupported_task_management_functions_say_so() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let a = ff.on_pdu(tmf(TmfFunction::TaskReassign, 1));
    assert_eq!(
        tmf_response_of(&a),
        tmf_response::REASSIGNMENT_NOT_SUPPORTED
    );
    let a = ff.on_pdu(tmf(TmfFunction::Other(42), 1));
    assert_eq!(tmf_response_of(&a), tmf_response::NOT_SUPPORTED);
}

#[test]
fn logout_answers_then_closes_and_ignores_the_rest() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let a = ff.on_pdu(Pdu::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: 0,
        itt: 9,
        cid: 0,
        cmd_sn: FIRST_CMD_SN,
        exp_stat_sn: FIRST_STAT_SN,
    }));
    let Some(Action::Send(Pdu::LogoutResponse(r))) = a.first() else {
        panic!("{a:?}");
    };
    assert_eq!((r.response, r.itt, r.time2wait), (0, 9, 2));
    assert_eq!(a.last(), Some(&Action::Close));
    assert!(ff
        .on_pdu(cmd(1, FIRST_CMD_SN, true, false, 0, vec![]))
        .is_empty());
}

#[test]
fn snack_is_rejected_at_error_recovery_level_zero() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let a = ff.on_pdu(Pdu::SnackRequest(SnackRequest {
        snack_type: 0,
        lun: 0,
        itt: 1,
        ttt: u32::MAX,
        exp_stat_sn: 0,
        beg_run: 0,
        run_length: 0,
    }));
    assert_eq!(reject_reason(sent(&a)[0]), RejectReason::SnackReject as u8);
}

#[test]
fn reused_task_tag_is_rejected_as_task_in_progress() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 512, vec![]));
    let a = ff.on_pdu(cmd(1, FIRST_CMD_SN + 1, true, false, 512, vec![]));
    assert_eq!(
        reject_reason(sent(&a)[0]),
        RejectReason::TaskInProgress as u8
    );
}

#[test]
fn write_buffers_are_bounded_per_connection() {
    let cfg = TargetConfig::for_volume("v");
    let p = SessionParams {
        max_burst_length: 16 * 1024 * 1024,
        ..params()
    };
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, p));
    let big = MAX_COMMAND_DATA_BYTES;
    let fits = u32::try_from(cfg.buffers.per_connection / u64::from(big)).unwrap();
    for i in 0..fits {
        let a = ff.on_pdu(cmd(i, FIRST_CMD_SN + i, false, true, big, vec![]));
        assert_eq!(sent(&a).len(), 1, "write {i} is solicited");
    }
    let a = ff.on_pdu(cmd(fits, FIRST_CMD_SN + fits, false, true, big, vec![]));
    assert!(sent(&a).is_empty(), "over budget: waits for its R2T");
    // Aborting one frees its budget: the waiting write is solicited at
    // once, not at some later completion.
    let mut t = tmf(TmfFunction::AbortTask, 0);
    if let Pdu::TaskMgmtRequest(r) = &mut t {
        r.cmd_sn = FIRST_CMD_SN + fits + 1;
    }
    let a = ff.on_pdu(t);
    assert!(sent(&a)
        .iter()
        .any(|p| matches!(p, Pdu::R2t(r) if r.itt == fits)));
}

#[test]
fn oversized_command_gets_target_failure() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let a = ff.on_pdu(cmd(
        1,
        FIRST_CMD_SN,
        true,
        false,
        MAX_COMMAND_DATA_BYTES + 1,
        vec![],
    ));
    let [Pdu::ScsiResponse(r)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!(r.response, RESPONSE_TARGET_FAILURE);
}

#[test]
fn stat_sn_advances_once_per_status() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let tasks: Vec<Task> = (0..3)
        .map(|i| the_task(&ff.on_pdu(cmd(i, FIRST_CMD_SN + i, true, false, 100, vec![]))))
        .collect();
    let mut stat_sns = Vec::new();
    for task in &tasks {
        for p in sent(&finish(&mut ff, task, good(vec![1; 100]))) {
            if let Pdu::DataIn(d) = p {
                stat_sns.push(d.stat_sn);
            }
        }
    }
    assert_eq!(
        stat_sns,
        vec![FIRST_STAT_SN, FIRST_STAT_SN + 1, FIRST_STAT_SN + 2]
    );
}

#[test]
fn write_residuals_compare_the_cdb_with_the_expected_length() {
    // RFC 7143 §11.4.5.1: U when the command wanted less than EDTL, O when
    // it wanted more.
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    for (itt, wanted, residual) in [
        (1, 512, Residual::Underflow(512)),
        (2, 2048, Residual::Overflow(1024)),
        (3, 1024, Residual::None),
    ] {
        let task = the_task(&ff.on_pdu(cmd(
            itt,
            FIRST_CMD_SN + itt - 1,
            false,
            true,
            1024,
            vec![0; 1024],
        )));
        let a = finish(
            &mut ff,
            &task,
            TaskResult {
                data_out_wanted: Some(wanted),
                ..TaskResult::good(Bytes::new())
            },
        );
        let [Pdu::ScsiResponse(r)] = sent(&a)[..] else {
            panic!("{a:?}");
        };
        assert_eq!(r.residual, residual, "wanted {wanted}");
    }
}

#[test]
fn keepalive_ping_carries_the_next_stat_sn_without_taking_it() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let a = ff.ping(7);
    let [Pdu::NopIn(n)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!((n.itt, n.ttt, n.stat_sn), (u32::MAX, 7, FIRST_STAT_SN));
    let task = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 0, vec![])));
    let a = finish(&mut ff, &task, good(vec![]));
    let [Pdu::ScsiResponse(r)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!(r.stat_sn, FIRST_STAT_SN);
}

/// Hands the logical unit's `result` for `task` back to the session, the
/// way the connection shell does.
fn finish(ff: &mut FullFeature<'_>, task: &Task, result: TaskResult) -> Vec<Action> {
    ff.complete(task.id, result)
}

/// The one task `actions` asks to execute.
fn the_task(actions: &[Action]) -> Task {
    let [t] = executed(actions)[..] else {
        panic!("expected one task to execute: {actions:?}");
    };
    t.clone()
}

/// The data of a read's answer: Data-In PDUs of `itt`, concatenated.
fn data_in_of(actions: &[Action], itt: u32) -> Vec<u8> {
    sent(actions)
        .iter()
        .flat_map(|p| match p {
            Pdu::DataIn(d) if d.itt == itt => d.data.to_vec(),
            other => panic!("expected Data-In of ITT {itt}: {other:?}"),
        })
        .collect()
}

#[test]
fn an_aborted_tasks_completion_is_dropped_even_when_a_new_command_reuses_its_itt() {
    // Linux reuses an ITT as soon as ABORT TASK answered: the aborted
    // read's data must never reach the new command, whichever finishes
    // first.
    for aborted_finishes_first in [true, false] {
        let cfg = TargetConfig::for_volume("v");
        let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
        let old = the_task(&ff.on_pdu(cmd(7, FIRST_CMD_SN, true, false, 512, vec![])));
        let a = ff.on_pdu(tmf(TmfFunction::AbortTask, 7));
        assert_eq!(tmf_response_of(&a), tmf_response::FUNCTION_COMPLETE);
        let new = the_task(&ff.on_pdu(cmd(7, FIRST_CMD_SN + 1, true, false, 512, vec![])));
        assert_eq!(new.itt, 7);
        if aborted_finishes_first {
            let a = finish(&mut ff, &old, good(vec![0xaa; 512]));
            assert!(a.is_empty(), "the aborted read was answered: {a:?}");
        }
        let a = finish(&mut ff, &new, good(vec![0xbb; 512]));
        assert_eq!(data_in_of(&a, 7), vec![0xbb; 512]);
        let a = finish(&mut ff, &old, good(vec![0xaa; 512]));
        assert!(a.is_empty(), "the aborted read was answered: {a:?}");
        assert_eq!(ff.live_tasks(), 0);
    }
}

#[test]
fn after_a_lun_reset_reused_itts_get_their_own_answers_and_the_reset_tasks_none() {
    let cfg = TargetConfig::for_volume("v");
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let old_1 = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 512, vec![])));
    // A write still waiting for its data: it never reached the LU.
    let a = ff.on_pdu(cmd(2, FIRST_CMD_SN + 1, false, true, 4096, vec![]));
    assert!(executed(&a).is_empty());
    let old_3 = the_task(&ff.on_pdu(cmd(3, FIRST_CMD_SN + 2, true, false, 512, vec![])));
    let mut reset = tmf(TmfFunction::LogicalUnitReset, u32::MAX);
    if let Pdu::TaskMgmtRequest(r) = &mut reset {
        r.cmd_sn = FIRST_CMD_SN + 3;
    }
    let a = ff.on_pdu(reset);
    assert_eq!(tmf_response_of(&a), tmf_response::FUNCTION_COMPLETE);
    assert_eq!(ff.live_tasks(), 0);
    let new_1 = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN + 3, true, false, 512, vec![])));
    let new_2 = the_task(&ff.on_pdu(cmd(2, FIRST_CMD_SN + 4, false, true, 512, vec![0x22; 512])));
    let new_3 = the_task(&ff.on_pdu(cmd(3, FIRST_CMD_SN + 5, true, false, 512, vec![])));
    for old in [&old_1, &old_3] {
        let a = finish(&mut ff, old, good(vec![0xee; 512]));
        assert!(a.is_empty(), "a reset task was answered: {a:?}");
    }
    assert_eq!(
        data_in_of(&finish(&mut ff, &new_1, good(vec![0x11; 512])), 1),
        vec![0x11; 512]
    );
    let a = finish(&mut ff, &new_2, good(vec![]));
    let [Pdu::ScsiResponse(r)] = sent(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!((r.itt, r.status), (2, 0));
    assert_eq!(
        data_in_of(&finish(&mut ff, &new_3, good(vec![0x33; 512])), 3),
        vec![0x33; 512]
    );
    assert_eq!(ff.live_tasks(), 0);
}

#[test]
fn a_task_the_logical_unit_aborted_ends_without_an_answer_and_frees_its_window_slot() {
    // Another initiator's PREEMPT AND ABORT: TAS = 0, no status at all.
    let cfg = TargetConfig {
        queue_depth: 1,
        ..TargetConfig::for_volume("v")
    };
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let task = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 512, vec![])));
    assert!(ff.aborted(task.id).is_empty());
    assert_eq!(ff.live_tasks(), 0);
    assert!(finish(&mut ff, &task, good(vec![1; 512])).is_empty());
    assert!(ff.aborted(task.id).is_empty(), "twice is harmless");
    let next = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN + 1, true, false, 512, vec![])));
    let a = finish(&mut ff, &next, good(vec![2; 512]));
    assert_eq!(data_in_of(&a, 1), vec![2; 512]);
}

/// A target whose connections may hold `per_connection` bytes each and
/// `per_target` together.
fn budget_cfg(per_connection: u64, per_target: u64) -> TargetConfig {
    TargetConfig {
        buffers: crate::iscsi::budget::BufferLimits::new(per_connection, per_target),
        ..TargetConfig::for_volume("v")
    }
}

/// Feeds the shell's report of every Data-In of `actions` as queued to
/// the socket; returns the actions that follow.
fn send_data_in(ff: &mut FullFeature<'_>, actions: &[Action]) -> Vec<Action> {
    let mut out = Vec::new();
    for p in sent(actions) {
        if let Pdu::DataIn(d) = p {
            out.extend(ff.data_in_sent(d.data.len()));
        }
    }
    out
}

#[test]
fn reads_past_the_connection_budget_wait_until_their_data_in_is_sent() {
    let cfg = budget_cfg(1000, 10_000);
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let first = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 600, vec![])));
    let a = ff.on_pdu(cmd(2, FIRST_CMD_SN + 1, true, false, 600, vec![]));
    assert!(
        executed(&a).is_empty(),
        "over the connection's budget: waits"
    );
    assert_eq!(ff.held_bytes(), 600);
    assert!(
        !ff.waits_for_target_budget(),
        "short of its own budget only"
    );
    // Completing the first is not enough: its Data-In still holds budget
    // until the shell queued it to the socket.
    let done = finish(&mut ff, &first, good(vec![1; 600]));
    assert!(executed(&done).is_empty());
    assert_eq!(ff.held_bytes(), 600);
    assert_eq!(cfg.buffers.target.used(), 600);
    let next = send_data_in(&mut ff, &done);
    let second = the_task(&next);
    assert_eq!(second.itt, 2);
    assert_eq!(ff.held_bytes(), 600);
    // A short read gives back what it did not send at once.
    let done = finish(&mut ff, &second, good(vec![1; 100]));
    assert_eq!(ff.held_bytes(), 100);
    send_data_in(&mut ff, &done);
    assert_eq!(ff.held_bytes(), 0);
    assert_eq!(cfg.buffers.target.used(), 0);
}

#[test]
fn the_target_budget_is_shared_and_freeing_it_wakes_a_waiting_connection() {
    let cfg = budget_cfg(1000, 1000);
    let mut a = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let mut b = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let mut freed = cfg.buffers.target.subscribe();
    let held = the_task(&a.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 800, vec![])));
    let waits = b.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 800, vec![]));
    assert!(executed(&waits).is_empty(), "the target's budget is short");
    assert!(b.waits_for_target_budget());
    assert!(b.budget_freed().is_empty(), "nothing was given back yet");
    freed.borrow_and_update();
    let done = finish(&mut a, &held, good(vec![0; 800]));
    send_data_in(&mut a, &done);
    assert!(
        freed.has_changed().unwrap(),
        "giving back wakes the waiters"
    );
    let go = the_task(&b.budget_freed());
    assert_eq!(go.expected_data_in, 800);
    assert!(!b.waits_for_target_budget());
}

#[test]
fn commands_that_move_no_data_never_wait_for_budget() {
    let cfg = budget_cfg(1000, 1000);
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 1000, vec![])));
    let a = ff.on_pdu(cmd(2, FIRST_CMD_SN + 1, false, false, 0, vec![]));
    assert_eq!(the_task(&a).itt, 2, "TEST UNIT READY runs at once");
}

#[test]
fn writes_hold_their_budget_until_the_volume_completed_them() {
    let cfg = budget_cfg(1000, 10_000);
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let w = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, false, true, 512, vec![3; 512])));
    assert_eq!(ff.held_bytes(), 512, "executing, not completed");
    let a = ff.on_pdu(cmd(2, FIRST_CMD_SN + 1, false, true, 600, vec![]));
    assert!(sent(&a).is_empty(), "no R2T past the budget");
    let a = finish(&mut ff, &w, good(vec![]));
    assert!(sent(&a)
        .iter()
        .any(|p| matches!(p, Pdu::R2t(r) if r.itt == 2)));
    assert_eq!(ff.held_bytes(), 600);
}

#[test]
fn aborts_and_a_closed_connection_give_every_byte_back() {
    let cfg = budget_cfg(1000, 1000);
    let mut ff = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let read = the_task(&ff.on_pdu(cmd(1, FIRST_CMD_SN, true, false, 400, vec![])));
    ff.on_pdu(cmd(2, FIRST_CMD_SN + 1, false, true, 400, vec![]));
    // Aborting the read gives its budget back; its late completion is
    // dropped and gives nothing back twice.
    let mut t = tmf(TmfFunction::AbortTask, 1);
    if let Pdu::TaskMgmtRequest(r) = &mut t {
        r.cmd_sn = FIRST_CMD_SN + 2;
    }
    ff.on_pdu(t);
    assert_eq!(ff.held_bytes(), 400);
    assert!(finish(&mut ff, &read, good(vec![0; 400])).is_empty());
    assert_eq!(cfg.buffers.target.used(), 400);
    // A Data-In never sent (the connection ended first) is given back too.
    let r = the_task(&ff.on_pdu(cmd(3, FIRST_CMD_SN + 2, true, false, 500, vec![])));
    finish(&mut ff, &r, good(vec![0; 500]));
    assert_eq!(cfg.buffers.target.used(), 900);
    drop(ff);
    assert_eq!(cfg.buffers.target.used(), 0);
}

#[test]
fn task_ids_are_unique_across_the_sessions_of_a_target() {
    let cfg = TargetConfig::for_volume("v");
    let mut a = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let mut b = FullFeature::new(&cfg, session(SessionType::Normal, params()));
    let ids: std::collections::BTreeSet<TaskId> = (0..4)
        .flat_map(|_| [a.next_task_id(), b.next_task_id()])
        .collect();
    assert_eq!(ids.len(), 8, "an id was handed out twice: {ids:?}");
}
