//! Rebuild orchestration (invariant 6; the replica side is
//! `cstor_replica::rebuild`).
//!
//! Rules (module doc of `super`, "Rebuild orchestration"):
//! - a rebuild starts only as the first thing on a fresh link of a
//!   degraded replica ([`Action::StartRebuild`]); its io_seq `J` is the
//!   controller's next io_seq, the first one sent live;
//! - its source is a healthy replica that acknowledged every pending
//!   mutating request that is completed or that the sink already holds;
//!   with none, the link is dropped at once (no live write may reach the
//!   replica before its `RebuildStart`) and redialled after
//!   [`REBUILD_RETRY`];
//! - reports carry `J`: a report of another run is ignored. Accepted, the
//!   replica is rebuilding; done, it is healthy (its failures forgotten),
//!   unless a snapshot a quorum took changed the peer meanwhile, or the
//!   source was found to lack requests (a member reached later held more)
//!   or went offline meanwhile (what it served after may come from a
//!   restarted process): then it is rebuilt again from there;
//! - aborted or refused for lack of space or a poisoned volume, the replica
//!   failed (rule 6, `super::failed`); otherwise it stays degraded and is
//!   offered a new rebuild after the longer of [`REBUILD_RETRY`] and its
//!   failure backoff ([`failed_retry`]).

use std::time::Instant;

use cstor_proto::{Message, Opcode, Packet, RebuildProgress, Status};

use super::{Action, Controller, ReplicaIndex, ReplicaState};
use crate::limits::{failed_retry, REBUILD_RETRY};

/// A rebuild the controller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildRun {
    pub source: ReplicaIndex,
    pub from_io_seq: u64,
    /// io_seq of the `RebuildStart` (and of every report of this run).
    pub first_live_io_seq: u64,
    /// The sink accepted it.
    pub accepted: bool,
    pub progress: RebuildProgress,
}

/// Replies about a rebuild, matched by the run's io_seq rather than by a
/// pending request.
pub(super) fn is_rebuild_report(message: &Message) -> bool {
    match message {
        Message::Ack(Opcode::RebuildStart)
        | Message::RebuildProgress(_)
        | Message::RebuildDone(_)
        | Message::RebuildAbort(_) => true,
        Message::Error(e) => e.request_opcode == Opcode::RebuildStart.to_u16(),
        _ => false,
    }
}

impl Controller {
    /// The current rebuild of `replica`, if one was started.
    pub fn rebuild(&self, replica: ReplicaIndex) -> Option<RebuildRun> {
        self.replicas.get(replica).and_then(|r| r.rebuild)
    }

    /// On connect of a degraded replica: start its rebuild from an
    /// eligible source, or schedule a retry (module doc).
    pub(super) fn start_rebuild(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        actions: &mut Vec<Action>,
    ) {
        let Some(missed_from) = self.replicas.get(replica).and_then(|r| r.missed_from) else {
            return;
        };
        let source = (0..self.replicas.len()).find(|s| {
            *s != replica
                && self.replicas[*s].state == ReplicaState::Healthy
                && self
                    .pending
                    .values()
                    .filter(|p| p.op.mutates() && (p.completed || p.acked.contains(&replica)))
                    .all(|p| p.acked.contains(s))
        });
        let Some(source) = source else {
            // Not kept linked meanwhile: a live write reaching it without a
            // `RebuildStart` first would raise its completion watermark over
            // the writes it missed (nothing holds it), and a later target
            // would find it complete (invariant 6). Redialled after the
            // retry delay, when a source may be back.
            self.drop_link(
                now,
                replica,
                "no rebuild source yet: retrying later".into(),
                REBUILD_RETRY,
                actions,
            );
            return;
        };
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        let run = RebuildRun {
            source,
            from_io_seq: missed_from.saturating_sub(1),
            first_live_io_seq: self.next_io_seq,
            accepted: false,
            progress: RebuildProgress::default(),
        };
        tracing::info!(
            replica,
            source,
            from_io_seq = run.from_io_seq,
            "starting a rebuild"
        );
        r.rebuild = Some(run);
        // This run lists the peer's snapshots after every snapshot taken so far.
        r.missed_in_rebuild = None;
        r.retry_at = None;
        actions.push(Action::StartRebuild {
            replica,
            generation: r.generation,
            source,
            from_io_seq: run.from_io_seq,
            first_live_io_seq: run.first_live_io_seq,
        });
    }

    pub(super) fn on_rebuild_report(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        packet: Packet,
        actions: &mut Vec<Action>,
    ) {
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        let Some(run) = r.rebuild.as_mut() else {
            return;
        };
        if run.first_live_io_seq != packet.io_seq || !r.state.is_linked() {
            return;
        }
        match packet.message {
            Message::Ack(Opcode::RebuildStart) => {
                run.accepted = true;
                r.state = ReplicaState::Rebuilding;
            }
            Message::RebuildProgress(progress) => run.progress = progress,
            Message::RebuildDone(done) => {
                if let Some(seq) = r.missed_in_rebuild.take() {
                    tracing::info!(
                        replica,
                        through_io_seq = done.through_io_seq,
                        snapshot_io_seq = seq,
                        "rebuild done, but it may lack a snapshot taken or a request its source was found lacking meanwhile: rebuilding again"
                    );
                    r.state = ReplicaState::Degraded;
                    r.rebuild = None;
                    r.missed_from = Some(r.missed_from.map_or(seq, |m| m.min(seq)));
                    r.retry_at = Some(now);
                    return;
                }
                tracing::info!(
                    replica,
                    through_io_seq = done.through_io_seq,
                    "rebuild done: replica healthy"
                );
                let first_live = run.first_live_io_seq;
                r.state = ReplicaState::Healthy;
                r.rebuild = None;
                r.missed_from = None;
                r.failures = 0;
                r.no_space = false;
                r.redial_at = None;
                // It now holds every request before the run's first live
                // io_seq that it was not sent live on this link: each was
                // completed at the start, so the source held it and the
                // rebuild copied it. An entry still waiting for a slower
                // replica must not find it lacking when it goes
                // (`note_missed`), or it would be degraded again for a write
                // it holds.
                for (_, p) in self.pending.range_mut(..first_live) {
                    let live = p.sent.contains_key(&replica) && !p.failed.contains(&replica);
                    if p.op.mutates() && !p.op.is_barrier() && p.completed && !live {
                        p.acked.insert(replica);
                    }
                }
                self.update_quorum(now);
                self.dispatch_waiting_reads(now, actions);
            }
            Message::RebuildAbort(abort) => {
                tracing::warn!(replica, status = ?abort.status, detail = %abort.detail, "rebuild aborted");
                self.rebuild_failed(now, replica, abort.status, abort.detail, actions);
            }
            Message::Error(error) => {
                tracing::warn!(replica, status = ?error.status, detail = %error.detail, "rebuild refused");
                self.rebuild_failed(now, replica, error.status, error.detail, actions);
            }
            _ => {}
        }
    }

    /// A rebuild of `replica` was aborted or refused. For lack of space or a
    /// poisoned volume the replica itself failed (rule 6): dropped, it backs
    /// off. Otherwise (the source went away, the session was cut...) it stays
    /// degraded and is offered a new rebuild on a fresh link after
    /// [`REBUILD_RETRY`], or after its failure backoff if that is longer:
    /// a rebuild that keeps failing is retried less and less often.
    pub(super) fn rebuild_failed(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        status: Status,
        detail: String,
        actions: &mut Vec<Action>,
    ) {
        if matches!(status, Status::NoSpace | Status::VolumePoisoned) {
            let reason = format!("rebuild failed: {status:?}: {detail}");
            self.fail_replica(now, replica, status, reason, actions);
            return;
        }
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        r.failures = r.failures.saturating_add(1);
        r.state = ReplicaState::Degraded;
        r.rebuild = None;
        r.retry_at = Some(now + REBUILD_RETRY.max(failed_retry(r.failures)));
    }
}
