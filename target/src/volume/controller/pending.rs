//! The pending table: every request sent and not yet forgotten, and when
//! each completes.
//!
//! Rules (module doc of `super`):
//! - a mutating request completes once `cf` *healthy* replicas
//!   acknowledged it (rule 1); if healthy replicas refused it and too few
//!   are left to take it, it fails with their refusal (rule 6); when the
//!   volume cannot allocate, with [`VolumeError::NoSpace`]; below quorum
//!   for longer than the grace period, with [`VolumeError::ReadOnly`]
//!   (rule 3);
//! - a read with no healthy replica left fails with
//!   [`VolumeError::Unavailable`] after the grace period (rule 2);
//! - an answered entry stays until every replica it was sent to answered
//!   or was dropped, so that a replica that never does is known to have
//!   missed it: every replica without a request some replica holds is
//!   degraded from its io_seq (`note_missed`);
//! - a slow replica is dropped (rule 9): a linked replica that has not
//!   acknowledged within `ack_timeout` ([`Controller::tick`]), or that owes
//!   more than `max_owed_requests` requests or `max_owed_bytes` bytes (the
//!   shell's are [`MAX_OWED_REQUESTS`](super::MAX_OWED_REQUESTS) and
//!   [`MAX_OWED_BYTES`](super::MAX_OWED_BYTES)); a degraded replica without
//!   a rebuild is dropped when its retry time comes, so that its next link
//!   offers one again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use cstor_proto::Status;

use super::repair::{self, Repair};
use super::{
    complete, Action, Completion, Controller, Op, ReplicaIndex, ReplicaState, Tag, VolumeError,
    REPAIR_TAG,
};

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) tag: Tag,
    pub(super) op: Op,
    pub(super) submitted: Instant,
    /// Replica → when the request was sent to it.
    pub(super) sent: BTreeMap<ReplicaIndex, Instant>,
    /// Replicas that acknowledged it (whatever their state at the time).
    pub(super) acked: BTreeSet<ReplicaIndex>,
    /// Replicas that failed it (and were dropped for it, or were gone).
    pub(super) failed: BTreeSet<ReplicaIndex>,
    /// Replicas that answered it with an error and have not been judged for
    /// it yet (rule 6): once another replica holds it, each leaves the
    /// healthy set as having missed it.
    pub(super) refused: BTreeMap<ReplicaIndex, Status>,
    /// What a healthy replica's refusal makes of the request if too few
    /// healthy replicas can still take it: [`VolumeError::NoSpace`] (it
    /// wins over any other) or [`VolumeError::Refused`].
    pub(super) refusal: Option<VolumeError>,
    /// The SCSI layer has its answer; the entry stays until every replica
    /// it was sent to acknowledged it or was dropped, so that a replica that
    /// never does is known to have missed it.
    pub(super) completed: bool,
    /// An [`Op::Digest`]'s answers so far (rule 8).
    pub(super) digests: Vec<(ReplicaIndex, cstor_proto::DigestReply)>,
    /// Replicas that could not answer an [`Op::Digest`], and why.
    pub(super) errors: Vec<(ReplicaIndex, String)>,
    /// A read a replica answered `ChecksumError`, or a piece of one: how it
    /// is made whole (rule 7, `super::repair`). `None` for every other
    /// request.
    pub(super) repair: Option<Box<Repair>>,
}

impl Pending {
    /// Replicas it was sent to that still owe an answer.
    pub(super) fn owed(&self) -> impl Iterator<Item = &ReplicaIndex> {
        self.sent
            .keys()
            .filter(|r| !self.acked.contains(r) && !self.failed.contains(r))
    }
}

impl Controller {
    /// Requests the SCSI layer still waits for (not the controller's own:
    /// the pieces of a read being repaired, write-backs).
    pub fn in_flight(&self) -> usize {
        self.pending
            .values()
            .filter(|p| !p.completed && p.tag != REPAIR_TAG)
            .count()
    }

    pub(super) fn insert_pending(&mut self, io_seq: u64, pending: Pending) {
        self.pending_bytes = self.pending_bytes.saturating_add(pending.op.data_bytes());
        if matches!(pending.op, Op::Read { .. }) && pending.tag != REPAIR_TAG {
            self.reads.insert(io_seq);
        }
        self.pending.insert(io_seq, pending);
    }

    pub(super) fn remove_pending(&mut self, io_seq: u64) -> Option<Pending> {
        let pending = self.pending.remove(&io_seq)?;
        self.pending_bytes = self.pending_bytes.saturating_sub(pending.op.data_bytes());
        self.reads.remove(&io_seq);
        Some(pending)
    }

    /// Mutating requests `replica` was sent and has not answered yet.
    pub fn owed_by(&self, replica: ReplicaIndex) -> usize {
        self.pending
            .values()
            .filter(|p| p.owed().any(|r| *r == replica))
            .count()
    }

    /// Data bytes of the mutating requests `replica` was sent and has not
    /// answered yet (rule 9 bounds it by [`MAX_OWED_BYTES`](super::MAX_OWED_BYTES)).
    pub fn owed_bytes_by(&self, replica: ReplicaIndex) -> u64 {
        self.pending
            .values()
            .filter(|p| p.owed().any(|r| *r == replica))
            .map(|p| p.op.data_bytes())
            .sum()
    }

    /// Rule 9, by size: a linked replica that owes more than
    /// `max_owed_requests` requests or `max_owed_bytes` bytes of data is
    /// dropped, like one slower than the ack timeout, instead of having the
    /// volume hold ever more for it. Counted only when everything pending
    /// could exceed a bound (no replica owes more than that).
    pub(super) fn bound_backlogs(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let (max_requests, max_bytes) = (self.config.max_owed_requests, self.config.max_owed_bytes);
        if self.pending.len() <= max_requests && self.pending_bytes <= max_bytes {
            return;
        }
        let mut owed: BTreeMap<ReplicaIndex, (usize, u64)> = BTreeMap::new();
        for p in self.pending.values() {
            for r in p.owed() {
                let entry = owed.entry(*r).or_default();
                entry.0 += 1;
                entry.1 = entry.1.saturating_add(p.op.data_bytes());
            }
        }
        for (replica, (requests, bytes)) in owed {
            if requests > max_requests || bytes > max_bytes {
                self.drop_replica(
                    now,
                    replica,
                    format!(
                        "owes {requests} requests ({bytes} bytes): more than {max_requests} or {max_bytes} bytes"
                    ),
                    actions,
                );
            }
        }
    }

    /// Time passes: drop slow replicas, fail requests held too long.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let timeout = self.config.ack_timeout;
        let slow: BTreeSet<ReplicaIndex> = self
            .pending
            .values()
            .flat_map(|p| {
                p.sent.iter().filter(move |(r, at)| {
                    !p.acked.contains(r)
                        && !p.failed.contains(r)
                        && now.saturating_duration_since(**at) >= timeout
                })
            })
            .map(|(r, _)| *r)
            .filter(|r| self.replicas.get(*r).is_some_and(|x| x.state.is_linked()))
            .collect();
        for replica in slow {
            self.drop_replica(
                now,
                replica,
                format!("no acknowledgement within {timeout:?}"),
                &mut actions,
            );
        }
        let retry: Vec<ReplicaIndex> = (0..self.replicas.len())
            .filter(|i| {
                self.replicas[*i].state == ReplicaState::Degraded
                    && self.replicas[*i].rebuild.is_none()
                    // None: it was found lacking a write while linked
                    // (`note_missed`), and nothing will rebuild it on this
                    // link: a fresh one starts its rebuild.
                    && self.replicas[*i].retry_at.is_none_or(|t| now >= t)
            })
            .collect();
        for replica in retry {
            self.drop_replica(
                now,
                replica,
                "degraded without a rebuild: reconnecting to start one".into(),
                &mut actions,
            );
        }
        self.settle(now, &mut actions);
        actions
    }

    /// Completes whatever can complete, retries reads, fails what waited
    /// too long, and forgets what every replica has answered. Called after
    /// every event.
    pub(super) fn settle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.update_quorum(now);
        let cf = self.config.cf;
        let read_only = self.is_read_only(now);
        let cannot_allocate = self.cannot_allocate();
        let is_healthy = |r: &ReplicaIndex| {
            self.replicas
                .get(*r)
                .is_some_and(|x| x.state == ReplicaState::Healthy)
        };
        let mut answers = Vec::new();
        for (seq, p) in &self.pending {
            if p.completed || p.op.is_barrier() {
                continue;
            }
            if p.op.mutates() {
                let healthy_acks = p.acked.iter().filter(|r| is_healthy(r)).count();
                let healthy_owed = p.owed().filter(|r| is_healthy(r)).count();
                if healthy_acks >= cf {
                    answers.push((*seq, Ok(Completion::Done)));
                } else if let Some(refusal) = p
                    .refusal
                    .clone()
                    .filter(|_| healthy_acks + healthy_owed < cf)
                {
                    // Healthy replicas refused it and too few are left to
                    // take it (rule 6).
                    answers.push((*seq, Err(refusal)));
                } else if cannot_allocate {
                    answers.push((*seq, Err(VolumeError::NoSpace)));
                } else if read_only {
                    answers.push((*seq, Err(VolumeError::ReadOnly { cf })));
                }
            } else if let Some(answer) = Self::scrub_answer(*seq, p) {
                answers.push((*seq, answer));
            } else if matches!(p.op, Op::Digest { .. } | Op::ReadFrom { .. }) {
                // Waits for every replica it went to.
            } else if !p.is_repair_job()
                && p.sent.keys().all(|r| p.failed.contains(r))
                && self.healthy() == 0
                && now.saturating_duration_since(p.submitted) >= self.config.hold
            {
                answers.push((*seq, Err(VolumeError::Unavailable)));
            }
        }
        for (seq, result) in answers {
            let Some(p) = self.pending.get_mut(&seq) else {
                continue;
            };
            if let Some(parent) = p.piece_of() {
                // A piece of a read being repaired: the read fails.
                self.fail_repair_job(parent, VolumeError::Unavailable, actions);
                continue;
            }
            p.completed = true;
            if p.tag == REPAIR_TAG {
                // A write-back: nobody waits for it (rule 7).
                if result.is_ok() {
                    self.blocks_repaired = self
                        .blocks_repaired
                        .saturating_add(repair::blocks(p.op.data_bytes()));
                } else {
                    tracing::warn!(
                        io_seq = seq,
                        ?result,
                        "write-back of repaired blocks failed"
                    );
                }
            } else {
                actions.push(complete(p.tag, result));
            }
            if !p.op.mutates() {
                self.remove_pending(seq);
                continue;
            }
            // Offline replicas will never get it (it is not resent once
            // answered).
            let acked = p.acked.clone();
            let unreached: Vec<ReplicaIndex> = (0..self.replicas.len())
                .filter(|r| !p.acked.contains(r) && !p.sent.contains_key(r))
                .collect();
            self.note_missed(seq, &acked, &unreached);
        }
        self.fail_refusers(now, actions);
        let finished: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.completed && p.owed().next().is_none())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in finished {
            if let Some(p) = self.remove_pending(seq) {
                let lacking: Vec<ReplicaIndex> = (0..self.replicas.len())
                    .filter(|r| !p.acked.contains(r))
                    .collect();
                self.note_missed(seq, &p.acked, &lacking);
            }
        }
        self.dispatch_waiting_reads(now, actions);
        self.advance_barrier(now, actions);
    }

    /// Request `seq` is held by the replicas in `acked`; those in `lacking`
    /// do not have it: they must be rebuilt from `seq` before they may
    /// count again.
    pub(super) fn note_missed(
        &mut self,
        seq: u64,
        acked: &BTreeSet<ReplicaIndex>,
        lacking: &[ReplicaIndex],
    ) {
        if acked.is_empty() {
            return;
        }
        for index in lacking {
            let Some(replica) = self.replicas.get_mut(*index) else {
                continue;
            };
            replica.missed_from = Some(replica.missed_from.map_or(seq, |m| m.min(seq)));
            if replica.state == ReplicaState::Healthy {
                tracing::warn!(
                    replica = index,
                    io_seq = seq,
                    "replica missed a write: degraded"
                );
                replica.state = ReplicaState::Degraded;
            }
        }
    }
}
