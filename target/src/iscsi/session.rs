//! Full feature phase of one connection (our sessions have exactly one:
//! MaxConnections=1), sans-IO (RFC 7143 §3.2, §4.2.2, §11).
//!
//! [`FullFeature::on_pdu`] takes each decoded initiator PDU,
//! [`FullFeature::complete`] each finished SCSI task and
//! [`FullFeature::aborted`] each task the logical unit aborted; all return
//! [`Action`]s: PDUs to send (already numbered), tasks to execute on the
//! logical unit, a reset of the logical unit, or "close the connection".
//!
//! Invariants:
//! - every task handed to the logical unit gets a [`TaskId`] no other task
//!   of the target ever gets (a counter all connections of the target
//!   share, [`TaskIds`]), and its completion comes back by that id,
//!   never by ITT: a task aborted here (ABORT TASK, a reset, logout) is
//!   forgotten, so its completion is dropped even when a new command has
//!   reused its ITT meanwhile (Linux does so at once). Which tasks are
//!   aborted is decided here alone; the shell keeps no task state;
//! - every command goes through the CmdSN window ([`CmdWindow`]): out of
//!   window it is dropped silently, in window it runs in CmdSN order;
//! - StatSN advances once per status-bearing PDU ([`Pdu::stamp`]);
//! - the data of the connection's commands is bounded by two byte budgets
//!   ([`super::budget`]): the connection's and the target's. A command
//!   that moves data takes its length from both before it holds any (a
//!   write before its R2Ts, a read before it is executed) and gives it back
//!   when it holds none (a write once completed; a read once the shell
//!   queued its Data-In to the socket, [`FullFeature::data_in_sent`]; any
//!   command when aborted, and all at once when the connection ends).
//!   Commands short of budget wait in arrival order, holding their window
//!   slot, so the window closes instead of the target buffering more; no
//!   command moves more than `MAX_COMMAND_DATA_BYTES`;
//! - the number of live tasks is bounded by the window depth plus
//!   `MAX_IMMEDIATE_COMMANDS`;
//! - a discovery session accepts only Text, NOP-Out and Logout (§4.3);
//!   everything else is answered with Reject "protocol error";
//! - a write never runs on data that failed its digest: a Data-Out with a
//!   data digest error is rejected, the transfer goes on, and the task ends
//!   with CHECK CONDITION "protocol service CRC error" once all its data
//!   has come (§7.8 option b, as ErrorRecoveryLevel 0 has no recovery R2T).
//!
//! Write residuals need the CDB's own transfer length, which the SCSI
//! layer knows: it passes it back in [`TaskResult::data_out_wanted`].
//! Nothing of ErrorRecoveryLevel > 0 (SNACK, task reassignment) is done:
//! we never negotiate it.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
// Looked up on every PDU of a command: a fast seeded hash, not SipHash.
use foldhash::HashMap;

use super::bhs::Bhs;
use super::budget::BufferLimits;
use super::discovery::{TextContext, TextExchange};
use super::keepalive::answer_ping;
use super::limits::MAX_COMMAND_DATA_BYTES;
use super::login::{LoggedIn, SessionType, TargetConfig};
use super::pdu::{
    opcode, tmf_response, DataIn, DataOut, LogoutRequest, LogoutResponse, NopIn, NopOut, Pdu, R2t,
    Reject, RejectReason, Residual, ScsiCommand, ScsiResponse, TaskMgmtRequest, TaskMgmtResponse,
    TextRequest, TmfFunction,
};
use super::transfer::{data_in_plan, WriteTransfer};
use super::window::{CmdWindow, WindowError};

/// SCSI status GOOD (SAM-5).
const STATUS_GOOD: u8 = 0x00;
/// iSCSI response "target failure" (RFC 7143 §11.4.3).
const RESPONSE_TARGET_FAILURE: u8 = 0x01;
/// SCSI status CHECK CONDITION (SAM-5).
const STATUS_CHECK_CONDITION: u8 = 0x02;
/// The iSCSI condition "protocol service CRC error" (RFC 7143 §11.4.7.2):
/// fixed-format sense (SPC-4 §4.5.3), current error, ABORTED COMMAND,
/// additional length 10, ASC/ASCQ 0x47/0x05.
const PROTOCOL_SERVICE_CRC_ERROR_SENSE: [u8; 18] = [
    0x70, 0, 0x0b, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x47, 0x05, 0, 0, 0, 0,
];
/// Logout response codes, RFC 7143 §11.15.1.
const LOGOUT_CLOSED: u8 = 0;
const LOGOUT_RECOVERY_NOT_SUPPORTED: u8 = 2;
/// Logout reason "remove the connection for recovery" (§11.14.1).
const LOGOUT_REASON_RECOVERY: u8 = 2;

/// Names one task handed to the logical unit, for the life of the
/// target: unlike an ITT, which the initiator reuses once the task is
/// over (or aborted), it is never given twice (a `u64` counter shared by
/// every connection, see [`TaskIds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(u64);

/// The target's source of [`TaskId`]s: clones share one counter, so the
/// sessions of one [`TargetConfig`] never hand out the same id.
#[derive(Debug, Clone, Default)]
pub struct TaskIds(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl TaskIds {
    fn next(&self) -> TaskId {
        TaskId(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// A SCSI command ready for the logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Hand it back with the result ([`FullFeature::complete`]).
    pub id: TaskId,
    /// The initiator's tag, for logs.
    pub itt: u32,
    pub lun: u64,
    pub cdb: Bytes,
    /// All write data, contiguous from offset 0.
    pub data_out: Bytes,
    /// Data-In the initiator expects (Expected Data Transfer Length of a
    /// read).
    pub expected_data_in: u32,
}

/// A logical unit's answer to a [`Task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    pub status: u8,
    pub data_in: Bytes,
    /// Sense data for CHECK CONDITION.
    pub sense: Option<Bytes>,
    /// For a write: the bytes of write data the CDB asked for, so that a
    /// mismatch with the Expected Data Transfer Length is reported as a
    /// residual (RFC 7143 §11.4.5.1). `None` reports none.
    pub data_out_wanted: Option<u32>,
}

impl TaskResult {
    /// GOOD status with `data_in`.
    pub fn good(data_in: Bytes) -> Self {
        Self {
            status: STATUS_GOOD,
            data_in,
            sense: None,
            data_out_wanted: None,
        }
    }
}

/// The residual of a transfer the initiator expected `expected` bytes of
/// and the command wanted `wanted` bytes of.
fn residual_of(expected: u32, wanted: u32) -> Residual {
    if wanted > expected {
        Residual::Overflow(wanted - expected)
    } else if wanted < expected {
        Residual::Underflow(expected - wanted)
    } else {
        Residual::None
    }
}

/// What a task management function asks of the logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    AbortTaskSet,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
}

/// What the connection shell does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Encode and send this PDU.
    Send(Pdu),
    /// Run this task on the logical unit; answer with
    /// [`FullFeature::complete`] and the task's id.
    Execute(Task),
    /// Reset state on the logical unit. The connection's tasks it concerns
    /// are aborted already: their completions will be dropped.
    Reset { kind: ResetKind, lun: u64 },
    /// Close the connection once the PDUs before this action are sent.
    Close,
}

#[derive(Debug)]
enum TaskState {
    /// A command without write data waiting for buffer budget before it
    /// is executed.
    Queued,
    /// Write data still arriving (its R2Ts wait for buffer budget).
    Receiving {
        transfer: WriteTransfer,
        buffer: BytesMut,
        /// Some of the data failed its digest: fail the task once the
        /// transfer completes.
        corrupt: bool,
    },
    /// Handed to the logical unit as this task.
    Executing(TaskId),
}

#[derive(Debug)]
struct LiveTask {
    immediate: bool,
    lun: u64,
    cdb: Bytes,
    write: bool,
    /// Expected Data Transfer Length (write data for writes).
    expected_len: u32,
    /// Data-In expected: EDTL of a read, the bidirectional read length of a
    /// write with the R bit.
    expected_in: u32,
    /// It took its budget ([`LiveTask::need`] clamped to the connection's
    /// bound): `held` bytes of it are still held.
    granted: bool,
    held: u64,
    state: TaskState,
}

impl LiveTask {
    /// The buffer budget the task takes: its write data and its Data-In.
    fn need(&self) -> u64 {
        let data_in = if self.write { self.expected_in } else { 0 };
        u64::from(self.expected_len) + u64::from(data_in)
    }
}

/// Full feature phase state of one connection.
#[derive(Debug)]
pub struct FullFeature<'a> {
    cfg: &'a TargetConfig,
    session: LoggedIn,
    window: CmdWindow<Pdu>,
    stat_sn: u32,
    tasks: HashMap<u32, LiveTask>,
    /// The ITT of each task the logical unit has, by task id.
    executing: HashMap<TaskId, u32>,
    /// Commands waiting for buffer budget, oldest first.
    waiting: VecDeque<u32>,
    buffers: BufferLimits,
    /// Bytes of budget the connection holds (taken from the target's too):
    /// its tasks' and its Data-In not yet sent.
    held: u64,
    /// Of `held`, Data-In handed to the shell and not yet reported sent.
    unsent: u64,
    /// The oldest waiting command found the target's budget short.
    short_of_target_budget: bool,
    text: TextExchange,
    next_ttt: u32,
    closing: bool,
}

impl<'a> FullFeature<'a> {
    /// Starts full feature phase after a successful login.
    pub fn new(cfg: &'a TargetConfig, session: LoggedIn) -> Self {
        Self {
            cfg,
            window: CmdWindow::new(session.exp_cmd_sn, cfg.queue_depth),
            stat_sn: session.next_stat_sn,
            session,
            tasks: HashMap::default(),
            executing: HashMap::default(),
            waiting: VecDeque::new(),
            buffers: cfg.buffers.clone(),
            held: 0,
            unsent: 0,
            short_of_target_budget: false,
            text: TextExchange::new(),
            next_ttt: 0,
            closing: false,
        }
    }

    /// The logged-in session this connection serves.
    pub fn session(&self) -> &LoggedIn {
        &self.session
    }

    /// Live tasks (received and not completed or aborted).
    pub fn live_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Bytes of buffer budget the connection holds now.
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// Commands wait for the target's budget: retry ([`Self::budget_freed`])
    /// once some is given back ([`super::budget::ByteBudget::subscribe`]).
    pub fn waits_for_target_budget(&self) -> bool {
        self.short_of_target_budget && !self.waiting.is_empty()
    }

    /// Budget was given back somewhere in the target: the commands waiting
    /// for it go on if it is enough now.
    pub fn budget_freed(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.advance_grants(&mut out);
        out
    }

    /// The shell queued `bytes` of Data-In (the data segment of a
    /// [`Pdu::DataIn`] it got from [`Self::complete`]) to the socket: their
    /// budget is given back, which may let waiting commands go on.
    pub fn data_in_sent(&mut self, bytes: usize) -> Vec<Action> {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX).min(self.unsent);
        self.unsent -= bytes;
        self.give_back(bytes);
        let mut out = Vec::new();
        if bytes > 0 && !self.waiting.is_empty() {
            self.advance_grants(&mut out);
        }
        out
    }

    /// Gives `bytes` of the connection's budget back, to the target's too.
    fn give_back(&mut self, bytes: u64) {
        let bytes = bytes.min(self.held);
        self.held -= bytes;
        self.buffers.target.give_back(bytes);
    }

    /// Numbers and queues one target PDU.
    fn send(&mut self, out: &mut Vec<Action>, mut pdu: Pdu) {
        let exp = self.window.exp_cmd_sn();
        let max = self.window.max_cmd_sn();
        if pdu.stamp(self.stat_sn, exp, max) {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        out.push(Action::Send(pdu));
    }

    fn reject(&mut self, out: &mut Vec<Action>, reason: RejectReason, header: &Bhs) {
        self.send(out, Pdu::Reject(Reject::of(reason, header)));
    }

    /// Answers a PDU the codec refused but consumed (data digest error,
    /// unknown opcode, invalid field).
    pub fn on_rejected(&mut self, reason: RejectReason, header: &Bhs) -> Vec<Action> {
        let mut out = Vec::new();
        self.reject(&mut out, reason, header);
        if reason == RejectReason::DataDigestError && header.opcode_raw() == opcode::DATA_OUT {
            self.on_corrupt_data_out(&mut out, header);
        }
        out
    }

    /// A Data-Out whose data failed its digest and was discarded (RFC 7143
    /// §7.8). Its header is sound (digest-checked or trusted as every
    /// header is without HeaderDigest), so it still counts as the data it
    /// announces: the transfer goes on as the initiator sees it, and the
    /// task fails once all the data has come instead of hanging on a range
    /// that will never be sent again.
    fn on_corrupt_data_out(&mut self, out: &mut Vec<Action>, header: &Bhs) {
        // The codec refused longer segments before this point, so the
        // stand-in for the discarded data is bounded by our
        // MaxRecvDataSegmentLength.
        let len = header.data_segment_len() as usize;
        let d = DataOut {
            final_: header.flags() & 0x80 != 0,
            lun: header.u64_at(8),
            itt: header.itt(),
            ttt: header.u32_at(20),
            exp_stat_sn: header.u32_at(28),
            data_sn: header.u32_at(36),
            buffer_offset: header.u32_at(40),
            data: Bytes::from(vec![0u8; len]),
        };
        let Some(t) = self.tasks.get_mut(&d.itt) else {
            return;
        };
        let TaskState::Receiving {
            transfer, corrupt, ..
        } = &mut t.state
        else {
            return;
        };
        match transfer.on_data_out(&d) {
            Ok(_) => {
                *corrupt = true;
                self.advance_write(out, d.itt);
                // The failed task's budget may let a waiting write go on.
                self.advance_writes(out);
            }
            // Out of sequence as well: the Reject already sent is all the
            // initiator gets, as for any bad Data-Out.
            Err(e) => tracing::debug!(itt = d.itt, "corrupt Data-Out also out of sequence: {e}"),
        }
    }

    /// A keepalive ping: NOP-In with `ttt` (from
    /// [`Keepalive::poll`](super::keepalive::Keepalive::poll)), ITT
    /// 0xffffffff, carrying but not taking the next StatSN (§11.19).
    pub fn ping(&mut self, ttt: u32) -> Vec<Action> {
        let mut out = Vec::new();
        let nop = NopIn {
            lun: 0,
            itt: u32::MAX,
            ttt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data: Bytes::new(),
        };
        self.send(&mut out, Pdu::NopIn(nop));
        out
    }

    /// Handles one PDU from the initiator.
    pub fn on_pdu(&mut self, pdu: Pdu) -> Vec<Action> {
        let mut out = Vec::new();
        // Rejects echo the header; re-encoding gives it back up to
        // reserved bits.
        let header = &pdu.bhs();
        if self.closing {
            return out;
        }
        let discovery = self.session.session_type == SessionType::Discovery;
        let (cmd_sn, immediate) = match &pdu {
            Pdu::NopOut(p) if p.itt == u32::MAX => {
                // The answer to our ping: nothing to send.
                return out;
            }
            Pdu::NopOut(p) => (p.cmd_sn, p.immediate),
            Pdu::TextRequest(p) => (p.cmd_sn, p.immediate),
            Pdu::LogoutRequest(p) => (p.cmd_sn, p.immediate),
            Pdu::ScsiCommand(p) if !discovery => (p.cmd_sn, p.immediate),
            Pdu::TaskMgmtRequest(p) if !discovery => (p.cmd_sn, p.immediate),
            Pdu::DataOut(d) if !discovery => {
                self.on_data_out(&mut out, d, header);
                return out;
            }
            Pdu::SnackRequest(_) if !discovery => {
                // ErrorRecoveryLevel 0: no SNACK (RFC 7143 §11.16).
                self.reject(&mut out, RejectReason::SnackReject, header);
                return out;
            }
            _ => {
                // Target opcodes, a Login in full feature phase, or a
                // command a discovery session may not send.
                self.reject(&mut out, RejectReason::ProtocolError, header);
                return out;
            }
        };
        match self.window.admit(cmd_sn, immediate, pdu) {
            Ok(ready) => {
                for p in ready {
                    self.run(&mut out, p, immediate);
                }
            }
            Err(WindowError::ImmediateRefused) => {
                self.reject(&mut out, RejectReason::ImmediateCommandReject, header);
            }
            Err(e @ WindowError::OutOfWindow { .. }) => {
                // RFC 7143 §4.2.2.1: silently ignored.
                tracing::debug!(initiator = %self.session.initiator_name, "dropped: {e}");
            }
        }
        out
    }

    /// Runs a command the window released.
    fn run(&mut self, out: &mut Vec<Action>, pdu: Pdu, immediate: bool) {
        match pdu {
            Pdu::NopOut(p) => {
                self.window.finish(immediate);
                self.on_ping(out, &p);
            }
            Pdu::TextRequest(p) => {
                self.window.finish(immediate);
                self.on_text(out, &p);
            }
            Pdu::LogoutRequest(p) => {
                self.window.finish(immediate);
                self.on_logout(out, &p);
            }
            Pdu::TaskMgmtRequest(p) => {
                self.window.finish(immediate);
                self.on_tmf(out, &p);
            }
            Pdu::ScsiCommand(p) => self.on_command(out, p),
            _ => {}
        }
    }

    fn on_ping(&mut self, out: &mut Vec<Action>, p: &NopOut) {
        if let Some(answer) = answer_ping(p) {
            self.send(out, Pdu::NopIn(answer));
        }
    }

    fn on_text(&mut self, out: &mut Vec<Action>, p: &TextRequest) {
        let ctx = TextContext {
            cfg: self.cfg,
            session_type: self.session.session_type,
            local_addr: self.session.local_addr,
            max_send_segment: self.session.params.initiator_max_recv_data_segment,
        };
        match self.text.on_request(p, &ctx) {
            Ok(rsp) => self.send(out, Pdu::TextResponse(rsp)),
            Err(e) => {
                tracing::debug!("text request rejected: {e}");
                let h = Pdu::TextRequest(p.clone()).bhs();
                self.reject(out, RejectReason::ProtocolError, &h);
            }
        }
    }

    fn on_logout(&mut self, out: &mut Vec<Action>, p: &LogoutRequest) {
        let response = if p.reason == LOGOUT_REASON_RECOVERY {
            LOGOUT_RECOVERY_NOT_SUPPORTED
        } else {
            LOGOUT_CLOSED
        };
        self.abort_where(|_| true);
        let rsp = LogoutResponse {
            response,
            itt: p.itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            time2wait: self.session.params.default_time2wait,
            time2retain: self.session.params.default_time2retain,
        };
        self.send(out, Pdu::LogoutResponse(rsp));
        self.closing = true;
        out.push(Action::Close);
    }

    /// Aborts every live task matching `pred`: none of them is answered.
    fn abort_where(&mut self, pred: impl Fn(&LiveTask) -> bool) {
        let mut itts: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| pred(t))
            .map(|(itt, _)| *itt)
            .collect();
        // In ITT order, not the map's: the same inputs drop the same way.
        itts.sort_unstable();
        for itt in itts {
            self.drop_task(itt);
        }
    }

    /// Forgets task `itt`: its window slot and write budget are freed, and
    /// a completion of it that comes later is dropped.
    fn drop_task(&mut self, itt: u32) {
        if let Some(t) = self.tasks.remove(&itt) {
            if let TaskState::Executing(id) = t.state {
                self.executing.remove(&id);
            }
            self.give_back(t.held);
            self.waiting.retain(|w| *w != itt);
            self.window.finish(t.immediate);
        }
    }

    fn next_task_id(&mut self) -> TaskId {
        self.cfg.task_ids.next()
    }

    /// Makes `task` live under `itt` as task `id` (its state is
    /// `Executing(id)`) and asks the shell to run it with `data_out`.
    fn execute(
        &mut self,
        out: &mut Vec<Action>,
        itt: u32,
        id: TaskId,
        task: LiveTask,
        data_out: Bytes,
    ) {
        out.push(Action::Execute(Task {
            id,
            itt,
            lun: task.lun,
            cdb: task.cdb.clone(),
            data_out,
            expected_data_in: task.expected_in,
        }));
        self.executing.insert(id, itt);
        self.tasks.insert(itt, task);
    }

    fn on_tmf(&mut self, out: &mut Vec<Action>, p: &TaskMgmtRequest) {
        let (response, reset) = match p.function {
            TmfFunction::AbortTask => {
                if self.tasks.contains_key(&p.referenced_task_tag) {
                    self.drop_task(p.referenced_task_tag);
                    (tmf_response::FUNCTION_COMPLETE, None)
                } else {
                    (tmf_response::TASK_DOES_NOT_EXIST, None)
                }
            }
            TmfFunction::AbortTaskSet => (
                tmf_response::FUNCTION_COMPLETE,
                Some(ResetKind::AbortTaskSet),
            ),
            TmfFunction::ClearTaskSet => (
                tmf_response::FUNCTION_COMPLETE,
                Some(ResetKind::ClearTaskSet),
            ),
            TmfFunction::LogicalUnitReset => (
                tmf_response::FUNCTION_COMPLETE,
                Some(ResetKind::LogicalUnitReset),
            ),
            TmfFunction::TargetWarmReset => (
                tmf_response::FUNCTION_COMPLETE,
                Some(ResetKind::TargetWarmReset),
            ),
            TmfFunction::TaskReassign => (tmf_response::REASSIGNMENT_NOT_SUPPORTED, None),
            TmfFunction::ClearAca | TmfFunction::TargetColdReset | TmfFunction::Other(_) => {
                (tmf_response::NOT_SUPPORTED, None)
            }
        };
        if let Some(kind) = reset {
            let lun = p.lun;
            if kind == ResetKind::TargetWarmReset {
                self.abort_where(|_| true);
            } else {
                self.abort_where(|t| t.lun == lun);
            }
            out.push(Action::Reset { kind, lun });
        }
        let rsp = TaskMgmtResponse {
            response,
            itt: p.itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        };
        self.send(out, Pdu::TaskMgmtResponse(rsp));
        // Aborted writes gave their buffer budget back.
        self.advance_writes(out);
    }

    fn target_failure(&mut self, out: &mut Vec<Action>, itt: u32) {
        let rsp = ScsiResponse {
            response: RESPONSE_TARGET_FAILURE,
            status: 0,
            residual: Residual::None,
            bidi_read_residual: Residual::None,
            itt,
            snack_tag: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            exp_data_sn: 0,
            data: Bytes::new(),
        };
        self.send(out, Pdu::ScsiResponse(rsp));
    }

    fn on_command(&mut self, out: &mut Vec<Action>, c: ScsiCommand) {
        let header = Pdu::ScsiCommand(c.clone()).bhs();
        if self.tasks.contains_key(&c.itt) {
            self.window.finish(c.immediate);
            self.reject(out, RejectReason::TaskInProgress, &header);
            return;
        }
        if c.expected_data_len > MAX_COMMAND_DATA_BYTES {
            self.window.finish(c.immediate);
            self.target_failure(out, c.itt);
            return;
        }
        if c.write {
            self.start_write(out, c, &header);
        } else if !c.data.is_empty() {
            self.window.finish(c.immediate);
            self.reject(out, RejectReason::ProtocolError, &header);
        } else {
            let task = live_task(&c, TaskState::Queued);
            if task.need() == 0 {
                // Moves no data: nothing to wait for.
                let id = self.next_task_id();
                let task = LiveTask {
                    state: TaskState::Executing(id),
                    ..task
                };
                self.execute(out, c.itt, id, task, Bytes::new());
                return;
            }
            self.tasks.insert(c.itt, task);
            self.waiting.push_back(c.itt);
            self.advance_grants(out);
        }
    }

    /// A write: its data is solicited (or waits for buffer budget), and it
    /// runs once all of it came.
    fn start_write(&mut self, out: &mut Vec<Action>, c: ScsiCommand, header: &Bhs) {
        let immediate_len = u32::try_from(c.data.len()).unwrap_or(u32::MAX);
        let transfer = match WriteTransfer::new(
            c.expected_data_len,
            immediate_len,
            c.final_,
            &self.session.params,
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(itt = c.itt, "write refused: {e}");
                self.window.finish(c.immediate);
                self.reject(out, RejectReason::ProtocolError, header);
                return;
            }
        };
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&c.data);
        let state = TaskState::Receiving {
            transfer,
            buffer,
            corrupt: false,
        };
        self.tasks.insert(c.itt, live_task(&c, state));
        self.waiting.push_back(c.itt);
        self.advance_writes(out);
    }

    /// Grants budget to waiting commands in arrival order (executing the
    /// reads that got it), sends R2Ts for writes that have budget, and
    /// executes completed writes.
    fn advance_writes(&mut self, out: &mut Vec<Action>) {
        self.grant(out);
        self.advance_every_write(out);
    }

    /// Grants budget to waiting commands; R2Ts only when a write got some
    /// (spares the scan of every task on the paths of reads).
    fn advance_grants(&mut self, out: &mut Vec<Action>) {
        if self.grant(out) {
            self.advance_every_write(out);
        }
    }

    /// Grants budget to waiting commands in arrival order and executes the
    /// reads that got it; whether a write got some.
    fn grant(&mut self, out: &mut Vec<Action>) -> bool {
        self.short_of_target_budget = false;
        let mut granted_write = false;
        let mut granted_reads = Vec::new();
        while let Some(&itt) = self.waiting.front() {
            let Some(t) = self.tasks.get_mut(&itt) else {
                self.waiting.pop_front();
                continue;
            };
            // A command larger than the connection's bound counts as the
            // whole bound (and so runs alone): it could never run else.
            let need = t.need().min(self.buffers.per_connection);
            if self.held.saturating_add(need) > self.buffers.per_connection {
                break;
            }
            if !self.buffers.target.try_take(need) {
                self.short_of_target_budget = true;
                break;
            }
            self.held += need;
            t.granted = true;
            t.held = need;
            if matches!(t.state, TaskState::Queued) {
                granted_reads.push(itt);
            } else {
                granted_write = true;
            }
            self.waiting.pop_front();
        }
        for itt in granted_reads {
            if let Some(t) = self.tasks.remove(&itt) {
                let id = self.next_task_id();
                let t = LiveTask {
                    state: TaskState::Executing(id),
                    ..t
                };
                self.execute(out, itt, id, t, Bytes::new());
            }
        }
        granted_write
    }

    /// Sends R2Ts for writes that have budget and executes completed ones.
    fn advance_every_write(&mut self, out: &mut Vec<Action>) {
        let mut itts: Vec<u32> = self.tasks.keys().copied().collect();
        itts.sort_unstable();
        for itt in itts {
            self.advance_write(out, itt);
        }
    }

    fn advance_write(&mut self, out: &mut Vec<Action>, itt: u32) {
        let mut r2ts = Vec::new();
        let mut done = None;
        let mut failed = false;
        let mut next = self.next_ttt;
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        let granted = t.granted;
        if let TaskState::Receiving {
            transfer,
            buffer,
            corrupt,
        } = &mut t.state
        {
            if transfer.is_complete() && *corrupt {
                failed = true;
            } else if transfer.is_complete() {
                done = Some(std::mem::take(buffer).freeze());
            } else if granted {
                r2ts = transfer.next_r2ts(|| next_tag(&mut next));
            }
        }
        self.next_ttt = next;
        let lun = t.lun;
        for r in r2ts {
            let pdu = Pdu::R2t(R2t {
                lun,
                itt,
                ttt: r.ttt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                r2t_sn: r.r2t_sn,
                buffer_offset: r.buffer_offset,
                desired_len: r.desired_len,
            });
            self.send(out, pdu);
        }
        if failed {
            self.drop_task(itt);
            let rsp = ScsiResponse {
                response: 0,
                status: STATUS_CHECK_CONDITION,
                residual: Residual::None,
                bidi_read_residual: Residual::None,
                itt,
                snack_tag: 0,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                exp_data_sn: 0,
                data: ScsiResponse::sense_segment(&PROTOCOL_SERVICE_CRC_ERROR_SENSE),
            };
            self.send(out, Pdu::ScsiResponse(rsp));
            return;
        }
        if let Some(data_out) = done {
            let Some(mut t) = self.tasks.remove(&itt) else {
                return;
            };
            // Its budget stays taken until the volume completed it.
            self.waiting.retain(|w| *w != itt);
            let id = self.next_task_id();
            t.state = TaskState::Executing(id);
            self.execute(out, itt, id, t, data_out);
        }
    }

    fn on_data_out(&mut self, out: &mut Vec<Action>, d: &DataOut, header: &Bhs) {
        let Some(t) = self.tasks.get_mut(&d.itt) else {
            self.reject(out, RejectReason::InvalidPduField, header);
            return;
        };
        let TaskState::Receiving {
            transfer, buffer, ..
        } = &mut t.state
        else {
            self.reject(out, RejectReason::ProtocolError, header);
            return;
        };
        match transfer.on_data_out(d) {
            Ok(at) => {
                // Validated: the range lies within the expected length.
                let start = at.buffer_offset as usize;
                let end = start + at.len as usize;
                if buffer.len() < end {
                    buffer.resize(end, 0);
                }
                if let Some(slot) = buffer.get_mut(start..end) {
                    slot.copy_from_slice(&d.data);
                }
                self.advance_write(out, d.itt);
            }
            Err(e) => {
                tracing::debug!(itt = d.itt, "Data-Out refused: {e}");
                self.reject(out, RejectReason::ProtocolError, header);
            }
        }
    }

    /// The logical unit aborted task `id` while it ran (another
    /// initiator's PREEMPT AND ABORT preempted this session's nexus): the
    /// task ends without a response (TAS = 0: the initiator learns of it by
    /// the unit attention its nexus got), freeing its window slot.
    pub fn aborted(&mut self, id: TaskId) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(&itt) = self.executing.get(&id) {
            self.drop_task(itt);
            self.advance_writes(&mut out);
        }
        out
    }

    /// The logical unit finished task `id`: send its data and status.
    /// A result for a task aborted here (or unknown) is dropped, whatever
    /// task uses its ITT now.
    pub fn complete(&mut self, id: TaskId, result: TaskResult) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(&itt) = self.executing.get(&id) else {
            return out;
        };
        let Some(task) = self.tasks.get(&itt) else {
            return out;
        };
        let (lun, write, expected_len, expected_in, held) = (
            task.lun,
            task.write,
            task.expected_len,
            task.expected_in,
            task.held,
        );
        let data_len = u32::try_from(result.data_in.len()).unwrap_or(u32::MAX);
        let sent_len = data_len.min(expected_in);
        // The Data-In about to go out keeps its budget until the shell
        // queued it to the socket; the rest is given back with the task.
        let keep = u64::from(sent_len).min(held);
        if let Some(t) = self.tasks.get_mut(&itt) {
            t.held -= keep;
        }
        self.unsent += keep;
        // Frees the window slot and the rest of the budget.
        self.drop_task(itt);
        // RFC 7143 §11.4.5: the residual of the command's direction (for a
        // bidirectional command, of its write part; its read residual is
        // not reported).
        let residual = match (write, result.data_out_wanted) {
            (true, Some(wanted)) => residual_of(expected_len, wanted),
            (true, None) => Residual::None,
            (false, _) => residual_of(expected_in, data_len),
        };
        let collapse = result.status == STATUS_GOOD && result.sense.is_none() && sent_len > 0;
        let p = &self.session.params;
        let plan: Vec<_> = data_in_plan(
            sent_len,
            p.initiator_max_recv_data_segment,
            p.max_burst_length,
        )
        .collect();
        for seg in &plan {
            let start = seg.buffer_offset as usize;
            let data = result.data_in.slice(start..start + seg.len as usize);
            let with_status = collapse && seg.last;
            let pdu = DataIn {
                final_: seg.final_,
                ack: false,
                status: with_status.then_some(result.status),
                residual: if with_status {
                    residual
                } else {
                    Residual::None
                },
                lun,
                itt,
                ttt: u32::MAX,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                data_sn: seg.data_sn,
                buffer_offset: seg.buffer_offset,
                data,
            };
            self.send(&mut out, Pdu::DataIn(pdu));
        }
        if !collapse {
            let rsp = ScsiResponse {
                response: 0,
                status: result.status,
                residual,
                bidi_read_residual: Residual::None,
                itt,
                snack_tag: 0,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                exp_data_sn: u32::try_from(plan.len()).unwrap_or(u32::MAX),
                data: result
                    .sense
                    .as_deref()
                    .map(ScsiResponse::sense_segment)
                    .unwrap_or_default(),
            };
            self.send(&mut out, Pdu::ScsiResponse(rsp));
        }
        self.advance_writes(&mut out);
        out
    }
}

impl Drop for FullFeature<'_> {
    /// The connection ended: whatever budget it still holds (tasks in
    /// flight, Data-In never sent) goes back to the target.
    fn drop(&mut self) {
        self.buffers.target.give_back(self.held);
    }
}

/// A live task of command `c`, in `state`.
fn live_task(c: &ScsiCommand, state: TaskState) -> LiveTask {
    LiveTask {
        immediate: c.immediate,
        lun: c.lun,
        cdb: c.cdb.clone(),
        write: c.write,
        expected_len: c.expected_data_len,
        expected_in: match (c.read, c.write) {
            (true, false) => c.expected_data_len,
            (true, true) => c.bidi_read_len.unwrap_or(0),
            _ => 0,
        },
        granted: false,
        held: 0,
        state,
    }
}

/// The next Target Transfer Tag, skipping the reserved 0xffffffff.
fn next_tag(counter: &mut u32) -> u32 {
    *counter = counter.wrapping_add(1);
    if *counter == u32::MAX {
        *counter = 1;
    }
    *counter
}

#[cfg(test)]
mod tests;
