//! Requests of the SCSI layer: how they enter the controller and reach the
//! replicas, and how the replicas' answers are taken in.
//!
//! Rules (module doc of `super`):
//! - a request outside the volume, or to a fenced target, fails at once;
//!   a barrier (snapshot, resize, membership record) is one at a time and
//!   holds the mutating requests submitted after it (at most
//!   [`MAX_HELD`]; beyond, [`VolumeError::Unavailable`]) (rules 4 and 5);
//! - a mutating request gets the next io_seq and goes to every linked
//!   replica, in io_seq order per replica (rule 1); when the volume
//!   cannot allocate it fails with [`VolumeError::NoSpace`], when read-only
//!   with [`VolumeError::ReadOnly`], at once (rules 3 and 6);
//! - a read goes to one healthy replica, round-robin; a read with no live
//!   attempt goes to another healthy one as soon as there is one (rule 2);
//! - a reply counts only if it is of this target's session and epoch, on
//!   the replica's current connection, to a request sent to it; an ack is
//!   recorded (and resets the replica's failure count), read data of the
//!   wrong size or an unexpected reply drops the replica, an error is
//!   judged by `super::failed`, a rebuild report by `super::rebuild`.
//!   Completion itself is `super::pending`'s (settle).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use cstor_proto::{Message, Packet};

use super::rebuild::is_rebuild_report;
use super::{
    complete, Action, Barrier, Completion, Controller, Generation, Op, Pending, ReplicaIndex,
    ReplicaState, Tag, VolumeError, REPAIR_TAG,
};
use crate::limits::MAX_HELD;
use cstor_proto::limits::MAX_DIGEST_BYTES;

impl Controller {
    /// A new request from the SCSI layer.
    pub fn submit(&mut self, now: Instant, tag: Tag, op: Op) -> Vec<Action> {
        let mut actions = Vec::new();
        self.submit_into(now, tag, op, &mut actions);
        actions
    }

    /// [`Controller::submit`], into `actions`; the controller's own
    /// write-backs come through here too (tag [`REPAIR_TAG`]).
    pub(super) fn submit_into(
        &mut self,
        now: Instant,
        tag: Tag,
        op: Op,
        actions: &mut Vec<Action>,
    ) {
        if self.fenced {
            answer(actions, tag, Err(VolumeError::Fenced));
            return;
        }
        if let Some(err) = self.check_range(&op) {
            answer(actions, tag, Err(err));
            return;
        }
        if op.is_barrier() {
            if self.barrier.is_some() {
                let busy =
                    "another snapshot, resize or membership change of the volume is in progress";
                actions.push(complete(tag, Err(VolumeError::Refused(busy.into()))));
                return;
            }
            self.barrier = Some(Barrier {
                tag,
                op,
                submitted: now,
                io_seq: None,
                errors: Vec::new(),
                troubled: BTreeSet::new(),
            });
            self.settle(now, actions);
            return;
        }
        if op.mutates() && self.barrier.is_some() {
            if self.held.len() >= MAX_HELD {
                answer(actions, tag, Err(VolumeError::Unavailable));
            } else {
                self.held.push_back((tag, op));
            }
            return;
        }
        self.dispatch(now, tag, op, actions);
    }

    /// Sends a request that may go now: numbered, to every linked replica
    /// (mutating) or to one healthy replica (reads).
    pub(super) fn dispatch(&mut self, now: Instant, tag: Tag, op: Op, actions: &mut Vec<Action>) {
        if op.mutates() && self.cannot_allocate() {
            answer(actions, tag, Err(VolumeError::NoSpace));
            return;
        }
        if op.mutates() && self.is_read_only(now) {
            answer(
                actions,
                tag,
                Err(VolumeError::ReadOnly { cf: self.config.cf }),
            );
            return;
        }
        if let Some(moot) = self.repair_is_moot(&op) {
            actions.push(complete(tag, Err(moot)));
            return;
        }
        let targets = match &op {
            Op::Digest { .. } => self.healthy_set(),
            Op::ReadFrom { replica, .. } => self
                .healthy_set()
                .into_iter()
                .filter(|r| r == replica)
                .collect(),
            _ => Vec::new(),
        };
        if matches!(op, Op::Digest { .. } | Op::ReadFrom { .. }) && targets.is_empty() {
            actions.push(complete(tag, Err(VolumeError::Unavailable)));
            return;
        }
        let io_seq = self.next_io_seq;
        self.next_io_seq += 1;
        self.watch_for_scrub(io_seq, &op);
        if op.mutates() {
            // Writing back what a pending read found bad is moot where
            // this changes it (rule 7).
            self.note_overwritten(&op);
        }
        let mut pending = Pending {
            tag,
            op,
            submitted: now,
            sent: BTreeMap::new(),
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            refused: BTreeMap::new(),
            refusal: None,
            completed: false,
            repair: None,
            digests: Vec::new(),
            errors: Vec::new(),
        };
        if !targets.is_empty() {
            for index in targets {
                pending.sent.insert(index, now);
                actions.push(self.send(index, io_seq, &pending.op));
            }
        } else if pending.op.mutates() {
            for index in 0..self.replicas.len() {
                if self.takes_requests(index) {
                    pending.sent.insert(index, now);
                    actions.push(self.send(index, io_seq, &pending.op));
                }
            }
        } else if let Some(reader) = self.pick_reader_for(&pending.op, &pending.failed) {
            pending.sent.insert(reader, now);
            actions.push(self.send(reader, io_seq, &pending.op));
        }
        let mutates = pending.op.mutates();
        self.insert_pending(io_seq, pending);
        if mutates {
            self.bound_backlogs(now, actions);
        }
    }

    /// Does a new mutating request go to `replica`? Every linked replica
    /// takes them, but a degraded one without a rebuild: it lacks a
    /// completed request and its link is dropped at the next tick (a
    /// rebuild starts only on a fresh link). A later request would raise
    /// what it reports as received past what it lacks, and a target that
    /// restarts meanwhile would take it for the most advanced member
    /// (seed 5077); it gets what it lacks through its rebuild.
    pub(super) fn takes_requests(&self, replica: ReplicaIndex) -> bool {
        self.replicas.get(replica).is_some_and(|r| {
            r.state.is_linked() && !(r.state == ReplicaState::Degraded && r.rebuild.is_none())
        })
    }

    pub(super) fn check_range(&self, op: &Op) -> Option<VolumeError> {
        let (offset, len) = match op {
            Op::Read { offset, len_bytes }
            | Op::Unmap { offset, len_bytes }
            | Op::WriteZeroes { offset, len_bytes } => (*offset, u64::from(*len_bytes)),
            Op::Write { offset, data, .. } | Op::Repair { offset, data, .. } => {
                (*offset, data.len() as u64)
            }
            Op::ReadFrom {
                offset, len_bytes, ..
            } => (*offset, u64::from(*len_bytes)),
            Op::Digest { offset, len_bytes } => {
                if *len_bytes > MAX_DIGEST_BYTES {
                    return Some(VolumeError::Refused(format!(
                        "a digest covers at most {MAX_DIGEST_BYTES} bytes, not {len_bytes}"
                    )));
                }
                (*offset, u64::from(*len_bytes))
            }
            Op::Resize { size_bytes } if *size_bytes < self.config.size_bytes => {
                return Some(VolumeError::Refused(format!(
                    "a volume cannot shrink: {} bytes now, {size_bytes} asked",
                    self.config.size_bytes
                )))
            }
            Op::Flush
            | Op::SnapshotCreate { .. }
            | Op::SnapshotDestroy { .. }
            | Op::Resize { .. }
            | Op::ListSnapshots { .. }
            | Op::SetMembership { .. } => return None,
        };
        match offset.checked_add(len) {
            Some(end) if end <= self.config.size_bytes && len > 0 => None,
            _ => Some(VolumeError::OutOfRange),
        }
    }

    /// A reply from a replica on its connection `generation` (a reply of
    /// another connection is ignored).
    pub fn on_reply(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        generation: Generation,
        packet: Packet,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if packet.epoch != self.config.epoch
            || packet.session_id != self.config.session_id
            || generation != self.generation(replica)
        {
            return actions;
        }
        if is_rebuild_report(&packet.message) {
            self.on_rebuild_report(now, replica, packet, &mut actions);
            self.settle(now, &mut actions);
            return actions;
        }
        let io_seq = packet.io_seq;
        let Some(pending) = self.pending.get_mut(&io_seq) else {
            // A late reply to something completed already (e.g. a slow
            // replica's ack): nothing to do.
            return actions;
        };
        if !pending.sent.contains_key(&replica) {
            return actions;
        }
        match packet.message {
            Message::Ack(opcode) if opcode == pending.op.opcode() => {
                pending.acked.insert(replica);
                pending.refused.remove(&replica);
                if let Some(r) = self.replicas.get_mut(replica) {
                    if pending.op.noted_received() {
                        r.acked_max = r.acked_max.max(io_seq);
                    }
                    if r.state == ReplicaState::Healthy {
                        // Proven sound again: the next failure starts the
                        // backoff over.
                        r.failures = 0;
                    }
                }
            }
            _ if pending.is_repair_job() => {
                // The read is assembled from its pieces now; a late answer
                // to it changes nothing.
            }
            Message::ChecksumError(reply) if matches!(pending.op, Op::Read { .. }) => {
                self.on_checksum_error(now, replica, io_seq, reply, &mut actions);
            }
            Message::RangeDigest(reply) if matches!(pending.op, Op::Digest { .. }) => {
                pending.acked.insert(replica);
                pending.digests.push((replica, reply));
            }
            Message::ReadData(data)
                if matches!(pending.op, Op::Read { .. } | Op::ReadFrom { .. }) =>
            {
                let expected = match pending.op {
                    Op::Read { len_bytes, .. } | Op::ReadFrom { len_bytes, .. } => {
                        len_bytes as usize
                    }
                    _ => 0,
                };
                if data.len() == expected {
                    if pending.piece_of().is_some() {
                        self.on_piece_data(now, io_seq, data, &mut actions);
                    } else {
                        let tag = pending.tag;
                        self.remove_pending(io_seq);
                        actions.push(complete(tag, Ok(Completion::Data(data))));
                    }
                } else {
                    pending.failed.insert(replica);
                    self.drop_replica(
                        now,
                        replica,
                        format!("read reply of {} bytes, expected {expected}", data.len()),
                        &mut actions,
                    );
                }
            }
            Message::SnapshotListing(listing) if matches!(pending.op, Op::ListSnapshots { .. }) => {
                let tag = pending.tag;
                self.remove_pending(io_seq);
                actions.push(complete(tag, Ok(Completion::Snapshots(listing))));
            }
            Message::Error(error) => {
                self.on_error_reply(
                    now,
                    replica,
                    io_seq,
                    error.status,
                    error.detail,
                    &mut actions,
                );
            }
            other => {
                self.drop_replica(
                    now,
                    replica,
                    format!("unexpected reply {:#06x}", other.wire_opcode()),
                    &mut actions,
                );
            }
        }
        self.settle(now, &mut actions);
        actions
    }

    /// Sends reads that have no live attempt to a healthy replica.
    pub(super) fn dispatch_waiting_reads(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                matches!(p.op, Op::Read { .. } | Op::ListSnapshots { .. })
                    && !p.is_repair_job()
                    && p.sent.keys().all(|r| p.failed.contains(r))
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in waiting {
            let Some((op, failed, bad_on)) = self
                .pending
                .get(&seq)
                .map(|p| (p.op.clone(), p.failed.clone(), p.bad_on().cloned()))
            else {
                continue;
            };
            let reader = match bad_on {
                // A piece of a read being repaired: never a replica that
                // found its blocks bad (rule 7).
                Some(bad_on) => match self.pick_piece_reader(&op, &bad_on, &failed) {
                    Ok(reader) => reader,
                    Err(offset) => {
                        if !self.renew_or_fail_piece(seq, offset, actions) {
                            continue;
                        }
                        let bad_on = self
                            .pending
                            .get(&seq)
                            .and_then(|p| p.bad_on().cloned())
                            .unwrap_or_default();
                        self.pick_piece_reader(&op, &bad_on, &failed).ok().flatten()
                    }
                },
                None => self.pick_reader_for(&op, &failed),
            };
            let Some(reader) = reader else {
                continue;
            };
            if let Some(p) = self.pending.get_mut(&seq) {
                p.sent.insert(reader, now);
                let op = p.op.clone();
                actions.push(self.send(reader, seq, &op));
            }
        }
    }

    /// A healthy replica for `read`, not in `exclude`, and — when one is —
    /// one that answered every completed write overlapping it. A replica
    /// whose answer to such a write has not come yet may still fail it
    /// (out of space, say) and read the older data back, although the
    /// initiator was told the write was done: its answer is not awaited,
    /// another replica serves the read. (When no such replica is healthy
    /// the read goes to one that is, as before: the completed write's
    /// acknowledgers have all left the healthy set.)
    pub(super) fn pick_reader_for(
        &mut self,
        read: &Op,
        exclude: &BTreeSet<ReplicaIndex>,
    ) -> Option<ReplicaIndex> {
        let owing = self.owing_completed_writes(read);
        if !owing.is_empty() {
            let mut narrower = exclude.clone();
            narrower.extend(owing);
            let has_other = (0..self.replicas.len())
                .any(|i| self.replicas[i].state == ReplicaState::Healthy && !narrower.contains(&i));
            if has_other {
                return self.pick_reader(&narrower);
            }
        }
        self.pick_reader(exclude)
    }

    /// Replicas that have not acknowledged a completed write overlapping
    /// `read` (no answer yet, or a failure).
    fn owing_completed_writes(&self, read: &Op) -> BTreeSet<ReplicaIndex> {
        let Some((offset, len)) = read.extent() else {
            return BTreeSet::new();
        };
        let end = offset.saturating_add(len);
        self.pending
            .values()
            .filter(|p| p.completed && p.op.mutates())
            .filter(|p| {
                p.op.extent()
                    .is_some_and(|(o, l)| o < end && offset < o.saturating_add(l))
            })
            .flat_map(|p| p.sent.keys().filter(|r| !p.acked.contains(r)).copied())
            .collect()
    }

    pub(super) fn pick_reader(&mut self, exclude: &BTreeSet<ReplicaIndex>) -> Option<ReplicaIndex> {
        let n = self.replicas.len();
        for step in 0..n {
            let index = (self.next_reader + step) % n;
            if self.replicas[index].state == ReplicaState::Healthy && !exclude.contains(&index) {
                self.next_reader = (index + 1) % n;
                return Some(index);
            }
        }
        // Every healthy replica failed this read once: try them again.
        (0..n).find(|i| self.replicas[*i].state == ReplicaState::Healthy)
    }
}

/// Completes request `tag`, unless it is one of the controller's own
/// write-backs ([`REPAIR_TAG`]: nobody waits for it).
pub(super) fn answer(actions: &mut Vec<Action>, tag: Tag, result: Result<Completion, VolumeError>) {
    if tag != REPAIR_TAG {
        actions.push(complete(tag, result));
    }
}
