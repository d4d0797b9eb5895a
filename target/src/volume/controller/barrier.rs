//! Barriers: snapshots, snapshot destroys, resizes (rule 4) and membership
//! records (rule 5), each run alone between the requests before and after
//! it.
//!
//! Rules (module doc of `super`):
//! - a barrier starts once every earlier mutating request was answered to
//!   the SCSI layer and enough replicas are healthy (the CF, or for a
//!   membership record the lower of the old and new CF); it gets its own
//!   io_seq and goes to every healthy replica;
//! - without quorum it waits the grace period from its submission, then
//!   fails with [`VolumeError::ReadOnly`];
//! - once every replica it went to answered or was dropped: enough healthy
//!   successes and it is done (replicas that failed it are dropped, those
//!   without it degraded from its io_seq, but not for a membership record;
//!   a replica rebuilding meanwhile rebuilds again; a resize changes the
//!   volume's size; a membership record's [`MemberChange`] and CF apply);
//!   fewer and it fails naming each replica's error, a snapshot some took
//!   being destroyed on them (best effort), and a replica that failed it
//!   with an IO error (it may hold part of it) dropped, and degraded from
//!   its io_seq when a healthy peer is left to rebuild it from (the
//!   rebuild gives it that peer's snapshots);
//! - a snapshot destroy answered `NotFound` counts as taken (a retry of a
//!   destroy that some replicas took before it failed completes);
//! - the requests held behind it then go on in their order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{
    complete, Action, Completion, Controller, Op, Pending, Replica, ReplicaIndex, ReplicaState,
    Tag, VolumeError,
};

/// What a committed membership record changes in the controller (the
/// record itself is the shell's business, `super::membership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Nothing but the CF (or nothing at all: a record rewritten).
    None,
    /// A new replica joins with the next index: offline, and once linked
    /// degraded from io_seq 0 (a full rebuild) until its rebuild is done.
    Add,
    /// The replica leaves: its link is dropped and it becomes `Removed`.
    Remove(ReplicaIndex),
}

/// The snapshot, snapshot destroy or resize in progress.
#[derive(Debug)]
pub(super) struct Barrier {
    pub(super) tag: Tag,
    pub(super) op: Op,
    pub(super) submitted: Instant,
    /// Its io_seq, once sent (its `Pending` is then in `pending`).
    pub(super) io_seq: Option<u64>,
    /// What the replicas that failed it said.
    pub(super) errors: Vec<String>,
    /// Replicas that failed it with an IO error or poisoned: they may hold
    /// part of it.
    pub(super) troubled: BTreeSet<ReplicaIndex>,
}

impl Controller {
    /// Is a snapshot or resize in progress?
    pub fn barrier_in_progress(&self) -> bool {
        self.barrier.is_some()
    }

    pub(super) fn barrier_io_seq(&self) -> Option<u64> {
        self.barrier.as_ref().and_then(|b| b.io_seq)
    }

    /// Starts the barrier when it may go, fails it when quorum stayed away
    /// too long, and resolves it once every replica it went to answered.
    pub(super) fn advance_barrier(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(barrier) = self.barrier.as_ref() else {
            return;
        };
        match barrier.io_seq {
            None => {
                let earlier_unanswered = self
                    .pending
                    .values()
                    .any(|p| p.op.mutates() && !p.completed);
                let quorum = self.healthy() >= self.barrier_cf(&barrier.op);
                if quorum && !earlier_unanswered {
                    self.start_barrier(now, actions);
                } else if !quorum
                    && now.saturating_duration_since(barrier.submitted) >= self.config.hold
                {
                    let tag = barrier.tag;
                    tracing::warn!(op = ?barrier.op, "no quorum within the grace period: failing");
                    self.barrier = None;
                    actions.push(complete(
                        tag,
                        Err(VolumeError::ReadOnly { cf: self.config.cf }),
                    ));
                    self.release_held(now, actions);
                }
            }
            Some(seq) => {
                let answered = self
                    .pending
                    .get(&seq)
                    .is_none_or(|p| p.owed().next().is_none());
                if answered {
                    self.resolve_barrier(now, seq, actions);
                }
            }
        }
    }

    pub(super) fn start_barrier(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(barrier) = self.barrier.as_mut() else {
            return;
        };
        let io_seq = self.next_io_seq;
        self.next_io_seq += 1;
        barrier.io_seq = Some(io_seq);
        // A removal's record goes to the members that stay only: stored on
        // the leaving one (and the change failing), a later target could
        // take it from there and leave that replica's data behind; it is
        // dropped once the change commits (seed 9230).
        let leaving = barrier.op.leaving_member();
        let pending = Pending {
            tag: barrier.tag,
            op: barrier.op.clone(),
            submitted: now,
            sent: self
                .replicas
                .iter()
                .enumerate()
                .filter(|(i, r)| r.state == ReplicaState::Healthy && Some(*i) != leaving)
                .map(|(i, _)| (i, now))
                .collect(),
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            refused: BTreeMap::new(),
            refusal: None,
            completed: false,
            digests: Vec::new(),
            errors: Vec::new(),
            repair: None,
        };
        tracing::info!(io_seq, op = ?pending.op, replicas = pending.sent.len(), "barrier sent");
        for replica in pending.sent.keys() {
            actions.push(self.send(*replica, io_seq, &pending.op));
        }
        self.insert_pending(io_seq, pending);
    }

    pub(super) fn resolve_barrier(&mut self, now: Instant, seq: u64, actions: &mut Vec<Action>) {
        let Some(barrier) = self.barrier.take() else {
            return;
        };
        let Some(p) = self.remove_pending(seq) else {
            // Failed already (fenced).
            self.release_held(now, actions);
            return;
        };
        // A removal counts only the members that stay: the one leaving may
        // be the only one that took the requests before it, and what it
        // acknowledged must be on the members that go on (seed 9230).
        let leaving = p.op.leaving_member();
        let healthy_acks = p
            .acked
            .iter()
            .filter(|r| Some(**r) != leaving)
            .filter(|r| {
                self.replicas
                    .get(**r)
                    .is_some_and(|x| x.state == ReplicaState::Healthy)
            })
            .count();
        let cf = self.barrier_cf(&p.op);
        if healthy_acks >= cf {
            tracing::info!(io_seq = seq, op = ?p.op, acks = healthy_acks, "barrier done at quorum");
            for replica in &p.failed {
                self.drop_replica(
                    now,
                    *replica,
                    format!("failed {:?} that a quorum took", p.op.opcode()),
                    actions,
                );
            }
            // A membership record is not data: a replica without it gets it
            // when its link comes up, and is not degraded for it.
            if !matches!(p.op, Op::SetMembership { .. }) {
                let lacking: Vec<ReplicaIndex> = (0..self.replicas.len())
                    .filter(|r| !p.acked.contains(r))
                    .collect();
                self.note_missed(seq, &p.acked, &lacking);
            }
            if matches!(p.op, Op::SnapshotCreate { .. } | Op::SnapshotDestroy { .. }) {
                for r in self.replicas.iter_mut().filter(|r| r.rebuild.is_some()) {
                    r.rebuild_again_from(seq);
                }
            }
            if let Op::Resize { size_bytes } = p.op {
                self.config.size_bytes = size_bytes;
            }
            if let Op::SetMembership { change, new_cf, .. } = p.op {
                self.commit_membership(now, change, new_cf, actions);
            }
            actions.push(complete(p.tag, Ok(Completion::Done)));
        } else {
            let what = match &p.op {
                Op::SnapshotCreate { name } => format!("snapshot {:?}", name.as_str()),
                Op::SnapshotDestroy { name } => {
                    format!("destroying snapshot {:?}", name.as_str())
                }
                Op::Resize { size_bytes } => format!("resize to {size_bytes} bytes"),
                Op::SetMembership { record, .. } => {
                    format!("membership generation {}", record.generation)
                }
                other => format!("{other:?}"),
            };
            let errors = if barrier.errors.is_empty() {
                "no other answer".to_owned()
            } else {
                barrier.errors.join("; ")
            };
            let detail = format!(
                "{what} failed: {healthy_acks} of the {cf} healthy replicas needed took it ({errors})"
            );
            tracing::warn!(io_seq = seq, %detail, "barrier failed");
            // A replica that failed it with an IO error may hold part of it
            // (a snapshot written but not synced, then found after a
            // restart): it leaves the healthy set and is rebuilt from its
            // io_seq, which makes its snapshots a healthy peer's (when
            // there is one: the only copy is just dropped and redialled).
            let peer =
                self.replicas.iter().enumerate().any(|(i, r)| {
                    !barrier.troubled.contains(&i) && r.state == ReplicaState::Healthy
                });
            for replica in &barrier.troubled {
                if peer {
                    self.mark_missed(*replica, seq);
                }
                self.fail_replica(
                    now,
                    *replica,
                    cstor_proto::Status::IoError,
                    format!("failed {:?} with an IO error", p.op.opcode()),
                    actions,
                );
            }
            // Undone where it was taken (best effort, its own io_seq,
            // answers ignored): a snapshot is destroyed where acknowledged;
            // a grow is shrunk back on every linked replica (one whose
            // answer was lost with its connection may hold it; a shrink to
            // the size held changes nothing, and the replica refuses one
            // over data, none was written there). A replica that took it
            // and is not linked now is shrunk when it connects
            // (`on_connected_sized`).
            let undo = match &p.op {
                Op::SnapshotCreate { name } => Some((
                    Op::SnapshotDestroy { name: name.clone() },
                    p.acked.iter().copied().collect::<Vec<_>>(),
                )),
                Op::Resize { .. } => Some((
                    Op::Resize {
                        size_bytes: self.config.size_bytes,
                    },
                    (0..self.replicas.len()).collect(),
                )),
                _ => None,
            };
            if let Some((undo, on)) = undo {
                let undo_seq = self.next_io_seq;
                self.next_io_seq += 1;
                for replica in on {
                    if self.takes_requests(replica) {
                        actions.push(self.send(replica, undo_seq, &undo));
                    }
                }
            }
            actions.push(complete(p.tag, Err(VolumeError::Refused(detail))));
        }
        self.release_held(now, actions);
    }

    /// Healthy acknowledgements a barrier needs: the CF, or for a
    /// membership record the lower of the old and new CF (rule 5).
    pub(super) fn barrier_cf(&self, op: &Op) -> usize {
        match op {
            Op::SetMembership { new_cf, .. } => self.config.cf.min(*new_cf).max(1),
            _ => self.config.cf,
        }
    }

    /// A membership record committed: the member set and CF follow it.
    pub(super) fn commit_membership(
        &mut self,
        now: Instant,
        change: MemberChange,
        new_cf: usize,
        actions: &mut Vec<Action>,
    ) {
        match change {
            MemberChange::None => {}
            MemberChange::Add => {
                tracing::info!(replica = self.replicas.len(), "member added: full rebuild");
                self.replicas
                    .push(Replica::new(ReplicaState::Offline, Some(0)));
                self.config.replicas = self.replicas.len();
            }
            MemberChange::Remove(replica) => {
                if self.replicas.get(replica).is_some() {
                    tracing::info!(replica, "member removed");
                    self.drop_replica(now, replica, "removed from the volume".into(), actions);
                    if let Some(r) = self.replicas.get_mut(replica) {
                        r.state = ReplicaState::Removed;
                        r.missed_from = Some(0);
                    }
                }
            }
        }
        self.config.cf = new_cf.max(1);
        self.update_quorum(now);
    }

    /// The barrier is over: held requests go on, in order.
    pub(super) fn release_held(&mut self, now: Instant, actions: &mut Vec<Action>) {
        while let Some((tag, op)) = self.held.pop_front() {
            self.dispatch(now, tag, op, actions);
        }
    }
}
