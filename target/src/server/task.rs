//! The logical unit's side of a session's tasks, without IO: what a task
//! the session core hands out ([`crate::iscsi::session::Action::Execute`])
//! does on the logical unit, how its answer goes back to the core, and what
//! a reset does to the unit. The connection shell (`conn`) calls these; so
//! does a simulator that plays the shell (crate `cstor-sim`), so that both
//! run this one code.
//!
//! Rules:
//! - a task of LUN 0 runs on the target's one logical unit; any other LUN
//!   is answered without one ([`respond_without_lu`]);
//! - a task answered by the unit at once is [`Started::Done`]; one that
//!   needs block IO is [`Started::Io`]: its request is performed
//!   ([`super::block::perform`]) and the result handed to [`finish`], which
//!   ends it silently when the unit says it was aborted meanwhile (another
//!   initiator's PREEMPT AND ABORT);
//! - every answer carries the CDB's own write length, which only the unit
//!   knows (`TaskResult::data_out_wanted`, for residuals);
//! - a LOGICAL UNIT RESET or TARGET WARM RESET of LUN 0 resets the unit.

use bytes::Bytes;

use crate::iscsi::session::{Action, FullFeature, ResetKind, Task, TaskId, TaskResult};
use crate::scsi::{
    respond_without_lu, Completed, IoResult, LogicalUnit, Nexus, Outcome, Pending, Response,
};

/// A task whose block request is to be performed.
#[derive(Debug)]
pub struct TaskIo {
    /// The session core's id of the task.
    pub id: TaskId,
    pub cdb: Bytes,
    /// The unit's request ([`Pending::request`]) and what to finish.
    pub pending: Pending,
}

/// What a task became on the logical unit.
#[derive(Debug)]
pub enum Started {
    /// Answered at once: hand it to `FullFeature::complete`.
    Done(TaskId, TaskResult),
    /// Block IO to perform, then [`finish`].
    Io(TaskIo),
}

/// Runs `task` of `nexus` on the logical unit. Also says whether the unit
/// refused it because the volume is read-only (counted as the volume's own
/// DATA PROTECT answers are).
pub fn start(lu: &mut LogicalUnit, nexus: &Nexus, task: Task) -> (Started, bool) {
    if task.lun != 0 {
        let response = respond_without_lu(&task.cdb);
        let result = task_result(lu, &task.cdb, response);
        return (Started::Done(task.id, result), false);
    }
    let before = lu.write_protected_refusals();
    let outcome = lu.execute(nexus, &task.cdb, task.data_out);
    let refused = lu.write_protected_refusals() > before;
    let started = match outcome {
        Outcome::Done(response) => Started::Done(task.id, task_result(lu, &task.cdb, response)),
        Outcome::Io(pending) => Started::Io(TaskIo {
            id: task.id,
            cdb: task.cdb,
            pending,
        }),
    };
    (started, refused)
}

/// A task's block IO is done: the logical unit finishes its command and
/// the session core answers it, or ends it silently when the unit says it
/// was aborted meanwhile.
pub fn finish(
    lu: &mut LogicalUnit,
    ff: &mut FullFeature<'_>,
    io: TaskIo,
    result: IoResult,
) -> Vec<Action> {
    match lu.complete(io.pending, result) {
        Completed::Respond(response) => {
            let result = task_result(lu, &io.cdb, response);
            ff.complete(io.id, result)
        }
        Completed::Aborted => ff.aborted(io.id),
    }
}

/// The session core's form of the unit's answer to `cdb`.
pub fn task_result(lu: &LogicalUnit, cdb: &[u8], response: Response) -> TaskResult {
    let wanted = lu.data_out_len(cdb);
    TaskResult {
        status: response.status.code(),
        data_in: response.data_in,
        sense: response.sense.map(Bytes::from),
        data_out_wanted: (wanted > 0).then(|| u32::try_from(wanted).unwrap_or(u32::MAX)),
    }
}

/// What a task management reset the session core asked for does to the
/// logical unit (the core has aborted the tasks it concerns already).
pub fn reset(lu: &mut LogicalUnit, kind: ResetKind, lun: u64) {
    if lun == 0
        && matches!(
            kind,
            ResetKind::LogicalUnitReset | ResetKind::TargetWarmReset
        )
    {
        lu.lun_reset();
    }
}
