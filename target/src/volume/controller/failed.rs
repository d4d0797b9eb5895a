//! Failed replicas (rule 6): a replica that fails a request leaves the
//! healthy set and backs off; the volume answers for lack of space only
//! when it cannot allocate.
//!
//! Rules (module doc of `super`, rule 6):
//! - an error to a barrier is judged when every replica answered it
//!   (`super::barrier`); a stale epoch fences the target;
//! - a read error fails the replica and the read is retried on another; a
//!   read refused as a bad request fails, the replica stays;
//! - `NoSpace` or `BadRequest` to a mutating request waits for the
//!   request's resolution: if another replica holds it, the refuser lacks
//!   it and fails; any other error fails the replica at once;
//! - a failed replica is [`ReplicaState::Failed`]: its link is dropped with
//!   a pause of [`failed_retry`] of its failures in a row
//!   ([`FAILED_RETRY_MIN`](super::FAILED_RETRY_MIN) doubling up to
//!   [`FAILED_RETRY_MAX`](super::FAILED_RETRY_MAX)), and it is not taken
//!   back earlier; an acknowledgement while healthy or a finished rebuild
//!   resets the count;
//! - the volume cannot allocate when it is below quorum and, even with
//!   every member not out of space back, fewer than `cf` would be healthy.

use std::time::Instant;

use cstor_proto::Status;

use super::{complete, Action, Controller, Op, ReplicaIndex, ReplicaState, VolumeError};
use crate::limits::failed_retry;

impl Controller {
    /// Failures in a row of `replica` (rule 6; 0 once it succeeded).
    pub fn failures(&self, replica: ReplicaIndex) -> u32 {
        self.replicas.get(replica).map_or(0, |r| r.failures)
    }

    /// When a failed replica may be dialled again.
    pub fn redial_at(&self, replica: ReplicaIndex) -> Option<Instant> {
        self.replicas.get(replica).and_then(|r| r.redial_at)
    }

    /// Can the volume not allocate (rule 6)? Below quorum, and even if
    /// every member that did not fail for lack of space came back, fewer
    /// than `cf` would be healthy: mutating requests then fail at once with
    /// [`VolumeError::NoSpace`] instead of being held.
    pub fn cannot_allocate(&self) -> bool {
        if self.has_quorum() || !self.replicas.iter().any(|r| r.no_space) {
            return false;
        }
        let may_count = self
            .replicas
            .iter()
            .filter(|r| {
                r.state == ReplicaState::Healthy
                    || (r.state != ReplicaState::Removed && !r.no_space)
            })
            .count();
        may_count < self.config.cf
    }

    pub(super) fn on_error_reply(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        io_seq: u64,
        status: Status,
        detail: String,
        actions: &mut Vec<Action>,
    ) {
        if status != Status::StaleEpoch && self.barrier_io_seq() == Some(io_seq) {
            // Judged when every replica has answered (module doc).
            if let Some(p) = self.pending.get_mut(&io_seq) {
                if status == Status::NotFound && matches!(p.op, Op::SnapshotDestroy { .. }) {
                    // Not there: destroyed on it already (a retry of a
                    // destroy some replicas took before it failed).
                    p.acked.insert(replica);
                    return;
                }
                p.failed.insert(replica);
            }
            if let Some(b) = self.barrier.as_mut() {
                b.errors
                    .push(format!("replica {replica}: {status:?}: {detail}"));
                if matches!(status, Status::IoError | Status::VolumePoisoned) {
                    b.troubled.insert(replica);
                }
            }
            return;
        }
        if status == Status::StaleEpoch {
            self.fence(now, actions);
            return;
        }
        let healthy = self
            .replicas
            .get(replica)
            .is_some_and(|r| r.state == ReplicaState::Healthy);
        let Some(p) = self.pending.get_mut(&io_seq) else {
            return;
        };
        if matches!(p.op, Op::Digest { .. }) {
            // Rule 7: a digest it could not give. An error of its disk
            // fails it like a read error; one about the request (a replica
            // that does not know the opcode, say) leaves it as it is.
            p.failed.insert(replica);
            p.errors.push((replica, format!("{status:?}: {detail}")));
            if matches!(status, Status::IoError | Status::VolumePoisoned) {
                self.fail_replica(
                    now,
                    replica,
                    status,
                    format!("digest: {status:?}: {detail}"),
                    actions,
                );
            }
            return;
        }
        if !p.op.mutates() {
            if p.is_repair_job() {
                // Assembled from its pieces now (rule 7): a late answer to
                // the read itself changes nothing.
                return;
            }
            if status == Status::BadRequest {
                // The request itself is wrong (the same on every replica):
                // fail it, keep the replica.
                if let Some(parent) = p.piece_of() {
                    self.fail_repair_job(parent, VolumeError::Refused(detail), actions);
                } else if let Some(p) = self.remove_pending(io_seq) {
                    actions.push(complete(p.tag, Err(VolumeError::Refused(detail))));
                }
            } else {
                // A read error: the replica leaves the healthy set, the read
                // is retried on another.
                p.failed.insert(replica);
                self.fail_replica(
                    now,
                    replica,
                    status,
                    format!("{status:?}: {detail}"),
                    actions,
                );
            }
            return;
        }
        // A mutating request: the replica failed it (rule 6). It is judged
        // once the request is resolved: if another replica holds it, this
        // one leaves the healthy set as having missed it; if none does,
        // nothing diverged.
        p.failed.insert(replica);
        p.refused.insert(replica, status);
        let refusal = match status {
            Status::NoSpace => Some(VolumeError::NoSpace),
            Status::BadRequest => Some(VolumeError::Refused(detail.clone())),
            _ => None,
        };
        if healthy && !matches!(p.refusal, Some(VolumeError::NoSpace)) {
            if let Some(refusal) = refusal.clone() {
                p.refusal = Some(refusal);
            }
        }
        if refusal.is_none() {
            // The replica is in trouble (IO error, poisoned, smaller than
            // the volume because it missed a grow, busy...): it leaves the
            // healthy set now; the request goes on with the others.
            p.refused.remove(&replica);
            self.fail_replica(
                now,
                replica,
                status,
                format!("{status:?}: {detail}"),
                actions,
            );
        }
    }

    /// `replica` failed (rule 6): its link is dropped, it is
    /// [`ReplicaState::Failed`] and dialled again only after
    /// [`failed_retry`] of its failures in a row. Counted once per link: a
    /// replica already without one is left alone.
    pub(super) fn fail_replica(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        status: Status,
        reason: String,
        actions: &mut Vec<Action>,
    ) {
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        if !r.state.is_linked() {
            return;
        }
        r.failures = r.failures.saturating_add(1);
        if status == Status::NoSpace {
            r.no_space = true;
        }
        let wait = failed_retry(r.failures);
        let failures = r.failures;
        tracing::warn!(replica, %reason, failures, ?wait, "replica failed: backing off");
        self.drop_link(now, replica, reason, wait, actions);
        if let Some(r) = self.replicas.get_mut(replica) {
            if r.state == ReplicaState::Offline {
                r.state = ReplicaState::Failed;
                r.redial_at = Some(now + wait);
            }
        }
        self.update_quorum(now);
    }

    /// Replicas that refused a mutating request that is answered and that
    /// another replica holds: they lack it, so they leave the healthy set
    /// as having missed it, and back off (rule 6).
    pub(super) fn fail_refusers(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut failed = Vec::new();
        for (seq, p) in self.pending.iter_mut() {
            if p.completed && !p.acked.is_empty() && !p.refused.is_empty() {
                for (replica, status) in std::mem::take(&mut p.refused) {
                    failed.push((*seq, replica, status));
                }
            }
        }
        for (seq, replica, status) in failed {
            self.fail_replica(
                now,
                replica,
                status,
                format!("answered {status:?} to io_seq {seq}, which another replica took"),
                actions,
            );
        }
    }
}
