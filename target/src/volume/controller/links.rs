//! Losing links: a replica's connection going down, a packet that could
//! not be sent, the controller dropping a replica, and fencing.
//!
//! Rules (module doc of `super`, "Connection generations" and rule 5 of
//! docs/architecture.md):
//! - a down report or a not-sent report of an older connection changes
//!   nothing; a packet not sent on the current one drops the replica (it
//!   gets what it owes again on its next connection);
//! - a replica that goes offline while it is a rebuild's source makes that
//!   rebuild done again once it is done (the process that serves the rest
//!   may be a restarted one that lost acknowledged writes);
//! - a replica that goes offline is sent again, on reconnect, what it has
//!   not acknowledged of the unanswered mutating requests; of an answered
//!   one it lacks, it is degraded from its io_seq at once (a quick
//!   reconnect must not find it complete); a read it had is retried
//!   elsewhere;
//! - a reply for a stale epoch fences the target for good: everything
//!   pending, the barrier and the held requests fail with
//!   [`VolumeError::Fenced`] and every link is dropped.

use std::time::{Duration, Instant};

use super::ops::answer;
use super::{complete, Action, Controller, Generation, ReplicaIndex, ReplicaState, VolumeError};

impl Controller {
    /// Connection `generation` of a replica's link is gone (or, with the
    /// generation of its last connection, a redial failed). The report of
    /// a connection older than the current one changes nothing.
    pub fn on_disconnected(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        generation: Generation,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if generation < self.generation(replica) {
            return actions;
        }
        self.mark_offline(now, replica, &mut actions);
        self.settle(now, &mut actions);
        actions
    }

    /// The link did not send a packet decided for its connection
    /// `generation` (that connection was gone when the packet got there).
    /// For the current connection the replica lacks it: the link is dropped
    /// (what it owes is sent again on the next connection); for an older
    /// one, nothing to do (its down report did or will do that).
    pub fn on_not_sent(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        generation: Generation,
        io_seq: u64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if generation != self.generation(replica) {
            return actions;
        }
        self.drop_replica(
            now,
            replica,
            format!("io_seq {io_seq} could not be sent on its connection"),
            &mut actions,
        );
        self.settle(now, &mut actions);
        actions
    }

    /// The shell could not (re)claim a replica because a newer target owns
    /// the volume: stop for good.
    pub fn on_fenced(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.fence(now, &mut actions);
        actions
    }

    pub(super) fn fence(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if !self.fenced {
            tracing::error!("a newer target owns the volume: this target is fenced");
        }
        self.fenced = true;
        self.pending_bytes = 0;
        self.reads.clear();
        for (_, p) in std::mem::take(&mut self.pending) {
            // A piece of a repaired read answers nothing: its read is in
            // `pending` too.
            if p.piece_of().is_none() && !p.completed {
                answer(actions, p.tag, Err(VolumeError::Fenced));
            }
        }
        if let Some(b) = self.barrier.take() {
            // Once sent, its entry was in `pending`, answered above.
            if b.io_seq.is_none() {
                actions.push(complete(b.tag, Err(VolumeError::Fenced)));
            }
        }
        for (tag, _) in std::mem::take(&mut self.held) {
            answer(actions, tag, Err(VolumeError::Fenced));
        }
        for index in 0..self.replicas.len() {
            if self.replicas[index].state.is_linked() {
                actions.push(Action::Drop {
                    replica: index,
                    generation: self.replicas[index].generation,
                    reason: "fenced".into(),
                    redial_after: Duration::ZERO,
                });
                self.replicas[index].state = ReplicaState::Offline;
            }
        }
        self.update_quorum(now);
    }

    /// Drops `replica`'s link; the shell dials it again at once.
    pub(super) fn drop_replica(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        reason: String,
        actions: &mut Vec<Action>,
    ) {
        self.drop_link(now, replica, reason, Duration::ZERO, actions);
    }

    pub(super) fn drop_link(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        reason: String,
        redial_after: Duration,
        actions: &mut Vec<Action>,
    ) {
        if self
            .replicas
            .get(replica)
            .is_none_or(|r| !r.state.is_linked())
        {
            return;
        }
        tracing::warn!(replica, %reason, "dropping replica");
        actions.push(Action::Drop {
            replica,
            generation: self.generation(replica),
            reason,
            redial_after,
        });
        self.mark_offline(now, replica, actions);
    }

    pub(super) fn mark_offline(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        actions: &mut Vec<Action>,
    ) {
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        if !matches!(r.state, ReplicaState::Removed | ReplicaState::Failed) {
            r.state = ReplicaState::Offline;
        }
        r.rebuild = None;
        r.retry_at = None;
        // A rebuild it is the source of may be served, from here on, by a
        // process that is not the one this link knew (it restarted and
        // lost writes it had acknowledged; its daemon serves a source only
        // while a target session owns its volume, so only once it is
        // claimed again): that sink is rebuilt once more when done.
        for r in self.replicas.iter_mut() {
            if let Some(run) = r.rebuild.filter(|run| run.source == replica) {
                r.rebuild_again_from(run.from_io_seq);
            }
        }
        let mut lacks = Vec::new();
        for (seq, p) in self.pending.iter_mut() {
            if !p.sent.contains_key(&replica) || p.acked.contains(&replica) {
                continue;
            }
            if p.op.mutates() && !p.completed {
                // Sent again when it reconnects, if still unanswered.
                p.sent.remove(&replica);
            } else {
                // A read to retry elsewhere, or an answered write this
                // replica now certainly lacks.
                p.failed.insert(replica);
                if p.op.mutates() {
                    lacks.push((*seq, p.acked.clone()));
                }
            }
        }
        // Noted now, not when the entry goes (others may still owe it): a
        // quick reconnect must not find it complete.
        for (seq, acked) in lacks {
            self.note_missed(seq, &acked, &[replica]);
        }
        self.update_quorum(now);
        self.dispatch_waiting_reads(now, actions);
    }
}
