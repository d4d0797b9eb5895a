//! Scrub's requests (rule 8 of `super`): digests from every healthy
//! replica, a read from one named replica, and repairs that never put
//! older data over a newer write.
//!
//! Rules:
//! - an [`Op::Digest`] goes to every healthy replica (none: it fails with
//!   [`VolumeError::Unavailable`] at once) and completes once each one
//!   answered, failed it or was dropped, with every digest received
//!   ([`Completion::Digests`]); it sets the *watch*: its extent and io_seq;
//! - every mutating request dispatched after it (a repair excepted) whose
//!   extent overlaps the watched one marks the watch touched;
//! - an [`Op::Repair`] whose `guard` is not the watch's io_seq, whose
//!   extent leaves the watched one, or whose watch is touched is refused as
//!   moot ([`VolumeError::Refused`]); otherwise it is an ordinary write.
//!   Held requests (behind a barrier) are dispatched in their order, so a
//!   write submitted before a held repair marks the watch before the
//!   repair is judged;
//! - an [`Op::ReadFrom`] goes to its replica if it is healthy (else fails
//!   with [`VolumeError::Unavailable`] at once) and is never retried on
//!   another: failed, it fails with [`VolumeError::Unavailable`].

use super::{Completion, Controller, Op, Pending, ReplicaIndex, ReplicaState, VolumeError};

/// The extent of the last digest and whether it was written since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScrubWatch {
    /// The digest's io_seq (a repair's `guard`).
    pub(super) io_seq: u64,
    pub(super) offset: u64,
    pub(super) end: u64,
    /// A mutating request overlapping it was dispatched since.
    pub(super) touched: bool,
}

impl Controller {
    /// The healthy replicas, in index order.
    pub(super) fn healthy_set(&self) -> Vec<ReplicaIndex> {
        (0..self.replicas.len())
            .filter(|i| self.replicas[*i].state == ReplicaState::Healthy)
            .collect()
    }

    /// A request numbered `io_seq` is dispatched: a digest sets the watch,
    /// a mutating request other than a repair that overlaps it touches it.
    pub(super) fn watch_for_scrub(&mut self, io_seq: u64, op: &Op) {
        if let Op::Digest { offset, len_bytes } = op {
            self.scrub_watch = Some(ScrubWatch {
                io_seq,
                offset: *offset,
                end: offset.saturating_add(u64::from(*len_bytes)),
                touched: false,
            });
            return;
        }
        if !op.mutates() || matches!(op, Op::Repair { .. }) {
            return;
        }
        let Some(watch) = self.scrub_watch.as_mut() else {
            return;
        };
        if let Some((offset, len)) = op.extent() {
            if offset < watch.end && watch.offset < offset.saturating_add(len) {
                watch.touched = true;
            }
        }
    }

    /// Why a repair may not go now (module doc), if it may not.
    pub(super) fn repair_is_moot(&self, op: &Op) -> Option<VolumeError> {
        let Op::Repair {
            offset,
            data,
            guard,
        } = op
        else {
            return None;
        };
        let end = offset.saturating_add(data.len() as u64);
        let fits = self.scrub_watch.is_some_and(|w| {
            w.io_seq == *guard && !w.touched && w.offset <= *offset && end <= w.end
        });
        if fits {
            None
        } else {
            Some(VolumeError::Refused(format!(
                "repair at {offset} is moot: the range was written since its digest (io_seq {guard})"
            )))
        }
    }

    /// The answer of a scrub request that can complete, if it can.
    pub(super) fn scrub_answer(
        io_seq: u64,
        p: &Pending,
    ) -> Option<Result<Completion, VolumeError>> {
        match p.op {
            Op::Digest { .. } if p.owed().next().is_none() => Some(Ok(Completion::Digests {
                io_seq,
                replies: p.digests.clone(),
                errors: p.errors.clone(),
            })),
            Op::ReadFrom { .. } if p.owed().next().is_none() => Some(Err(VolumeError::Unavailable)),
            _ => None,
        }
    }
}
