//! Reads a replica found bad (rule 7): a `ChecksumError` names the blocks
//! of a read that failed their checksum on that replica, and is not the
//! replica's failure.
//!
//! Rules (module doc of `super`, rule 7; docs/checksums-design.md,
//! "Reads"):
//! - the replica stays healthy; its checksum errors are counted (blocks,
//!   [`Controller::checksum_errors`]) and those of the last
//!   [`CHECKSUM_ERROR_WINDOW`] judged: more than [`CHECKSUM_WARN_BLOCKS`]
//!   and the status reports it ([`Controller::checksum_warning`]);
//! - the read is then assembled from *pieces*, reads of its own (their own
//!   io_seq, never completed to the shell): what the replica vouched for
//!   (the rest of the read) from any healthy replica, each bad range (whole
//!   4 KiB blocks) from a healthy replica that has not found it bad. A piece
//!   answered `ChecksumError` is split the same way, so each block is tried
//!   on each healthy replica in turn until one has a good copy; a piece
//!   that a replica fails otherwise is retried like any read;
//! - a block that every healthy replica found bad fails the read with
//!   [`VolumeError::Unrecoverable`] (MEDIUM ERROR, UNRECOVERED READ ERROR),
//!   never with the bad bytes; with no healthy replica at all, the pieces
//!   wait like any read (the grace period, then `Unavailable`);
//! - once every piece has its data the read completes, then the good
//!   copies of the bad blocks are written back as ordinary writes (their
//!   own io_seq, to every linked replica: `Controller::submit_into` with
//!   [`REPAIR_TAG`]), except where a write makes it moot: one dispatched
//!   after the read (noted as it is dispatched), one held behind a barrier,
//!   or one still pending (a replica may not have applied it, and the good
//!   copy may predate it). A write-back acknowledged at quorum counts its
//!   blocks ([`Controller::blocks_repaired`]).

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;
use cstor_proto::limits::{CHECKSUM_BLOCK_BYTES, MAX_IO_BYTES};
use cstor_proto::ChecksumError;

use super::ops::answer;
use super::{
    complete, Action, Completion, Controller, Op, Pending, ReplicaIndex, ReplicaState, VolumeError,
    CHECKSUM_ERROR_WINDOW, CHECKSUM_WARN_BLOCKS, MAX_CHECKSUM_ERROR_EVENTS, REPAIR_TAG,
};

/// The unit of checksums, of bad ranges and of write-backs.
const BLOCK: u64 = CHECKSUM_BLOCK_BYTES;

/// Byte ranges `(offset, len)`: sorted, disjoint, non-empty.
pub(super) type Ranges = Vec<(u64, u64)>;

/// What a read being repaired, or a piece of one, carries.
#[derive(Debug)]
pub(super) enum Repair {
    /// A read of the SCSI layer that a write overlapped while pending, or
    /// that a replica answered `ChecksumError`.
    Read {
        /// Blocks (aligned to 4 KiB, merged) of the writes dispatched while
        /// it was pending: nothing is written back there.
        overwritten: Ranges,
        /// Set once a replica found blocks of it bad: it is assembled from
        /// pieces from then on.
        job: Option<Job>,
    },
    /// A piece of the read `parent` (its io_seq).
    Piece(Piece),
}

/// A read assembled from pieces.
#[derive(Debug)]
pub(super) struct Job {
    /// The read's data so far.
    data: Vec<u8>,
    /// Pieces not answered yet.
    pieces: usize,
    /// Good copies of blocks a replica found bad: `(offset, data)`, whole
    /// blocks.
    write_back: Vec<(u64, Bytes)>,
}

/// A piece of a read being repaired.
#[derive(Debug)]
pub(super) struct Piece {
    parent: u64,
    /// Replicas that found its blocks bad: never read from.
    bad_on: BTreeSet<ReplicaIndex>,
    /// Its blocks were found bad somewhere: its data is written back.
    write_back: bool,
    /// `bad_on` was forgotten once already because a write replaced its
    /// blocks since (`Controller::forget_if_overwritten`).
    renewed: bool,
}

impl Pending {
    /// A read assembled from pieces (it is not sent anywhere itself).
    pub(super) fn is_repair_job(&self) -> bool {
        matches!(
            self.repair.as_deref(),
            Some(Repair::Read { job: Some(_), .. })
        )
    }

    /// The read this is a piece of.
    pub(super) fn piece_of(&self) -> Option<u64> {
        match self.repair.as_deref() {
            Some(Repair::Piece(piece)) => Some(piece.parent),
            _ => None,
        }
    }

    /// For a piece: the replicas that found its blocks bad.
    pub(super) fn bad_on(&self) -> Option<&BTreeSet<ReplicaIndex>> {
        match self.repair.as_deref() {
            Some(Repair::Piece(piece)) => Some(&piece.bad_on),
            _ => None,
        }
    }
}

/// 4 KiB blocks in `bytes` (rounded up).
pub(super) fn blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK)
}

/// `[offset, offset + len)` aligned out to whole blocks: `(start, end)`.
fn aligned(offset: u64, len: u64) -> (u64, u64) {
    let start = offset - offset % BLOCK;
    let end = offset
        .saturating_add(len)
        .checked_next_multiple_of(BLOCK)
        .unwrap_or(u64::MAX - u64::MAX % BLOCK);
    (start, end)
}

/// Adds `[start, end)` to `ranges`, merging what overlaps or touches it.
fn add(ranges: &mut Ranges, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let (mut s, mut e) = (start, end);
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(o, l) in ranges.iter() {
        let oe = o.saturating_add(l);
        if oe < s || o > e {
            out.push((o, l));
        } else {
            s = s.min(o);
            e = e.max(oe);
        }
    }
    out.push((s, e - s));
    out.sort_unstable();
    *ranges = out;
}

/// `[start, end)` without `minus`.
fn subtract(start: u64, end: u64, minus: &[(u64, u64)]) -> Ranges {
    let mut out = Vec::new();
    let mut at = start;
    for &(o, l) in minus {
        let oe = o.saturating_add(l);
        if oe <= at {
            continue;
        }
        if o >= end {
            break;
        }
        if o > at {
            out.push((at, o - at));
        }
        at = oe;
        if at >= end {
            break;
        }
    }
    if at < end {
        out.push((at, end - at));
    }
    out
}

/// `[start, end)` cut in reads of at most [`MAX_IO_BYTES`] (aligned when
/// `start` is).
fn split(start: u64, end: u64) -> Vec<(u64, u32)> {
    let max = u64::from(MAX_IO_BYTES);
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let len = (end - at).min(max);
        out.push((at, u32::try_from(len).unwrap_or(MAX_IO_BYTES)));
        at += len;
    }
    out
}

impl Controller {
    /// 4 KiB blocks `replica`'s reads named bad since this target started.
    pub fn checksum_errors(&self, replica: ReplicaIndex) -> u64 {
        self.replicas.get(replica).map_or(0, |r| r.checksum_errors)
    }

    /// Those of the last [`CHECKSUM_ERROR_WINDOW`].
    pub fn recent_checksum_errors(&self, replica: ReplicaIndex, now: Instant) -> u64 {
        self.replicas.get(replica).map_or(0, |r| {
            r.checksum_recent
                .iter()
                .filter(|(at, _)| now.saturating_duration_since(*at) < CHECKSUM_ERROR_WINDOW)
                .map(|(_, blocks)| *blocks)
                .fold(0, u64::saturating_add)
        })
    }

    /// Did `replica`'s reads name more than [`CHECKSUM_WARN_BLOCKS`] bad
    /// blocks within the last [`CHECKSUM_ERROR_WINDOW`]? (The status
    /// reports it; the replica stays healthy.)
    pub fn checksum_warning(&self, replica: ReplicaIndex, now: Instant) -> bool {
        self.recent_checksum_errors(replica, now) > CHECKSUM_WARN_BLOCKS
    }

    /// 4 KiB blocks written back after a replica found them bad, and
    /// acknowledged at quorum, since this target started.
    pub fn blocks_repaired(&self) -> u64 {
        self.blocks_repaired
    }

    fn note_checksum_errors(&mut self, now: Instant, replica: ReplicaIndex, blocks: u64) {
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        r.checksum_errors = r.checksum_errors.saturating_add(blocks);
        while r
            .checksum_recent
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= CHECKSUM_ERROR_WINDOW)
        {
            r.checksum_recent.pop_front();
        }
        let full = r.checksum_recent.len() >= MAX_CHECKSUM_ERROR_EVENTS;
        match r.checksum_recent.back_mut() {
            // Full: the newest entry takes them (it is kept the longest,
            // so the window's count errs high, never low).
            Some(last) if full => {
                last.0 = now;
                last.1 = last.1.saturating_add(blocks);
            }
            _ => r.checksum_recent.push_back((now, blocks)),
        }
        if self.checksum_warning(replica, now) {
            tracing::warn!(
                replica,
                recent = self.recent_checksum_errors(replica, now),
                window = ?CHECKSUM_ERROR_WINDOW,
                "replica keeps finding bad blocks"
            );
        }
    }

    /// A mutating request `op` is being dispatched: where it changes
    /// blocks a pending read covers, writing them back is moot.
    pub(super) fn note_overwritten(&mut self, op: &Op) {
        if self.reads.is_empty() {
            return;
        }
        let Some((offset, len)) = op.extent() else {
            return;
        };
        let (ws, we) = aligned(offset, len);
        for seq in &self.reads {
            let Some(p) = self.pending.get_mut(seq) else {
                continue;
            };
            let Op::Read {
                offset: ro,
                len_bytes,
            } = p.op
            else {
                continue;
            };
            let (rs, re) = aligned(ro, u64::from(len_bytes));
            let (s, e) = (rs.max(ws), re.min(we));
            if s >= e {
                continue;
            }
            let repair = p.repair.get_or_insert_with(|| {
                Box::new(Repair::Read {
                    overwritten: Vec::new(),
                    job: None,
                })
            });
            if let Repair::Read { overwritten, .. } = repair.as_mut() {
                add(overwritten, s, e);
            }
        }
    }

    /// `replica` answered read `io_seq` (a read of the SCSI layer or a
    /// piece of one) with `ChecksumError`.
    pub(super) fn on_checksum_error(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        io_seq: u64,
        reply: ChecksumError,
        actions: &mut Vec<Action>,
    ) {
        let size = self.config.size_bytes;
        let Some(p) = self.pending.get_mut(&io_seq) else {
            return;
        };
        let Op::Read { offset, len_bytes } = p.op else {
            return;
        };
        if reply.extent.offset != offset || reply.extent.len_bytes != len_bytes {
            p.failed.insert(replica);
            self.drop_replica(
                now,
                replica,
                format!(
                    "checksum error for {}+{}, the read was {offset}+{len_bytes}",
                    reply.extent.offset, reply.extent.len_bytes
                ),
                actions,
            );
            return;
        }
        let (parent, bad_on, write_back, renewed) = match p.repair.as_deref() {
            Some(Repair::Piece(piece)) => (
                piece.parent,
                piece.bad_on.clone(),
                piece.write_back,
                piece.renewed,
            ),
            _ => (io_seq, BTreeSet::new(), false, false),
        };
        if parent == io_seq {
            // The read itself: assembled from pieces from now on; it is
            // owed by nobody.
            let sent: Vec<ReplicaIndex> = p.sent.keys().copied().collect();
            p.failed.extend(sent);
            let overwritten = match p.repair.take().map(|r| *r) {
                Some(Repair::Read { overwritten, .. }) => overwritten,
                _ => Vec::new(),
            };
            p.repair = Some(Box::new(Repair::Read {
                overwritten,
                job: Some(Job {
                    data: vec![0; len_bytes as usize],
                    pieces: 0,
                    write_back: Vec::new(),
                }),
            }));
        } else {
            self.remove_pending(io_seq);
            if let Some(job) = self.job_mut(parent) {
                job.pieces = job.pieces.saturating_sub(1);
            }
        }
        let blocks = reply.bad_blocks();
        tracing::warn!(
            replica,
            io_seq,
            offset,
            len_bytes,
            blocks,
            bad = ?reply.bad,
            "replica found blocks bad: reading them from another"
        );
        self.note_checksum_errors(now, replica, blocks);
        // What the replica vouched for, and what it found bad (whole blocks
        // within the volume).
        let end = offset + u64::from(len_bytes);
        let mut bad: Ranges = Vec::new();
        for range in &reply.bad {
            let e = range.offset.saturating_add(range.len_bytes).min(size);
            if range.offset < e {
                bad.push((range.offset, e - range.offset));
            }
        }
        let good = subtract(offset, end, &bad);
        let mut found_bad = bad_on.clone();
        found_bad.insert(replica);
        let mut new = Vec::new();
        for (o, l) in good {
            new.push((o, o + l, bad_on.clone(), write_back));
        }
        for (o, l) in bad {
            new.push((o, o + l, found_bad.clone(), true));
        }
        new.sort_by_key(|(o, ..)| *o);
        for (start, end, bad_on, write_back) in new {
            for (o, l) in split(start, end) {
                let piece = Piece {
                    parent,
                    bad_on: bad_on.clone(),
                    write_back,
                    renewed,
                };
                if !self.send_piece(now, o, l, piece, actions) {
                    return;
                }
            }
        }
        self.finish_if_whole(now, parent, actions);
    }

    fn job_mut(&mut self, parent: u64) -> Option<&mut Job> {
        match self.pending.get_mut(&parent)?.repair.as_deref_mut() {
            Some(Repair::Read { job: Some(job), .. }) => Some(job),
            _ => None,
        }
    }

    /// Every healthy replica found piece `piece` of `[offset, offset +
    /// len)` bad; but if a write dispatched since its read replaced all of
    /// it (the read's `overwritten`), those replicas hold (or will, before
    /// anything sent from now on) that write's data: what they found is
    /// forgotten, once per piece, and the blocks are asked of them again.
    /// True if it was.
    fn forget_if_overwritten(&self, piece: &mut Piece, offset: u64, len: u64) -> bool {
        if piece.renewed {
            return false;
        }
        let Some(Repair::Read { overwritten, .. }) = self
            .pending
            .get(&piece.parent)
            .and_then(|p| p.repair.as_deref())
        else {
            return false;
        };
        let (s, e) = aligned(offset, len);
        if !subtract(s, e, overwritten).is_empty() {
            return false;
        }
        piece.bad_on.clear();
        piece.renewed = true;
        true
    }

    /// A new piece `[offset, offset + len_bytes)` of read `piece.parent`,
    /// sent to a healthy replica outside `piece.bad_on` (or waiting for one
    /// when none is healthy). False when no healthy replica has a good
    /// copy: the read failed.
    fn send_piece(
        &mut self,
        now: Instant,
        offset: u64,
        len_bytes: u32,
        mut piece: Piece,
        actions: &mut Vec<Action>,
    ) -> bool {
        let op = Op::Read { offset, len_bytes };
        let parent = piece.parent;
        let mut pick = self.pick_piece_reader(&op, &piece.bad_on, &BTreeSet::new());
        if pick.is_err() && self.forget_if_overwritten(&mut piece, offset, u64::from(len_bytes)) {
            pick = self.pick_piece_reader(&op, &piece.bad_on, &BTreeSet::new());
        }
        let reader = match pick {
            Ok(reader) => reader,
            Err(offset) => {
                self.fail_repair_job(parent, VolumeError::Unrecoverable { offset }, actions);
                return false;
            }
        };
        let Some(job) = self.job_mut(parent) else {
            return false;
        };
        job.pieces += 1;
        let io_seq = self.next_io_seq;
        self.next_io_seq += 1;
        let mut pending = Pending {
            tag: REPAIR_TAG,
            op,
            submitted: now,
            sent: Default::default(),
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            refused: Default::default(),
            refusal: None,
            completed: false,
            repair: Some(Box::new(Repair::Piece(piece))),
            digests: Vec::new(),
            errors: Vec::new(),
        };
        if let Some(reader) = reader {
            pending.sent.insert(reader, now);
            actions.push(self.send(reader, io_seq, &pending.op));
        }
        self.insert_pending(io_seq, pending);
        true
    }

    /// Piece `seq`, failed by a replica, has no healthy replica left that
    /// did not find it bad: unless a write replaced it since
    /// (`forget_if_overwritten`), its read fails. True if it may be
    /// asked again.
    pub(super) fn renew_or_fail_piece(
        &mut self,
        seq: u64,
        unrecoverable_at: u64,
        actions: &mut Vec<Action>,
    ) -> bool {
        let Some(p) = self.pending.get_mut(&seq) else {
            return false;
        };
        let Op::Read { offset, len_bytes } = p.op else {
            return false;
        };
        let Some(Repair::Piece(mut piece)) = p.repair.take().map(|r| *r) else {
            return false;
        };
        let renewed = self.forget_if_overwritten(&mut piece, offset, u64::from(len_bytes));
        let parent = piece.parent;
        if let Some(p) = self.pending.get_mut(&seq) {
            p.repair = Some(Box::new(Repair::Piece(piece)));
        }
        if !renewed {
            self.fail_repair_job(
                parent,
                VolumeError::Unrecoverable {
                    offset: unrecoverable_at,
                },
                actions,
            );
        }
        renewed
    }

    /// A healthy replica to read piece `op` from: not in `bad_on` (it found
    /// the blocks bad), preferably not in `failed` (it failed this piece
    /// once). `Ok(None)`: no healthy replica at all, the piece waits like
    /// any read; `Err(offset)`: every healthy replica found it bad.
    pub(super) fn pick_piece_reader(
        &mut self,
        op: &Op,
        bad_on: &BTreeSet<ReplicaIndex>,
        failed: &BTreeSet<ReplicaIndex>,
    ) -> Result<Option<ReplicaIndex>, u64> {
        let candidates: Vec<ReplicaIndex> = (0..self.replicas.len())
            .filter(|i| self.replicas[*i].state == ReplicaState::Healthy && !bad_on.contains(i))
            .collect();
        let Some(first) = candidates.first().copied() else {
            if self.healthy() == 0 {
                return Ok(None);
            }
            return Err(op.extent().map_or(0, |(offset, _)| offset));
        };
        let exclude: BTreeSet<ReplicaIndex> = failed.union(bad_on).copied().collect();
        match self.pick_reader_for(op, &exclude) {
            Some(r) if !bad_on.contains(&r) => Ok(Some(r)),
            // Each candidate failed it once: try them again, as a read does.
            _ => Ok(Some(first)),
        }
    }

    /// A piece answered with its data: into its read; the read completes
    /// once every piece did.
    pub(super) fn on_piece_data(
        &mut self,
        now: Instant,
        io_seq: u64,
        data: Bytes,
        actions: &mut Vec<Action>,
    ) {
        let Some(p) = self.remove_pending(io_seq) else {
            return;
        };
        let (Some(Repair::Piece(piece)), Op::Read { offset: po, .. }) =
            (p.repair.map(|r| *r), p.op)
        else {
            return;
        };
        let Some(parent) = self.pending.get_mut(&piece.parent) else {
            return;
        };
        let Op::Read {
            offset: ro,
            len_bytes,
        } = parent.op
        else {
            return;
        };
        let Some(Repair::Read { job: Some(job), .. }) = parent.repair.as_deref_mut() else {
            return;
        };
        let (s, e) = (
            po.max(ro),
            (po + data.len() as u64).min(ro + u64::from(len_bytes)),
        );
        if s < e {
            let (into, from) = ((s - ro) as usize, (s - po) as usize);
            let n = (e - s) as usize;
            if let (Some(dst), Some(src)) =
                (job.data.get_mut(into..into + n), data.get(from..from + n))
            {
                dst.copy_from_slice(src);
            }
        }
        if piece.write_back {
            job.write_back.push((po, data));
        }
        job.pieces = job.pieces.saturating_sub(1);
        self.finish_if_whole(now, piece.parent, actions);
    }

    /// Completes read `parent` if every piece of it answered, then writes
    /// back the good copies of its bad blocks where no write made that
    /// moot (module doc).
    fn finish_if_whole(&mut self, now: Instant, parent: u64, actions: &mut Vec<Action>) {
        if self.job_mut(parent).is_none_or(|job| job.pieces > 0) {
            return;
        }
        let Some(p) = self.remove_pending(parent) else {
            return;
        };
        let Some(Repair::Read {
            overwritten,
            job: Some(job),
        }) = p.repair.map(|r| *r)
        else {
            return;
        };
        actions.push(complete(p.tag, Ok(Completion::Data(Bytes::from(job.data)))));
        let mut moot = overwritten;
        let later = self
            .held
            .iter()
            .map(|(_, op)| op)
            .chain(self.pending.values().map(|q| &q.op))
            .filter(|op| op.mutates())
            .filter_map(Op::extent);
        for (o, l) in later {
            let (s, e) = aligned(o, l);
            add(&mut moot, s, e);
        }
        let mut writes = Vec::new();
        let mut skipped = 0u64;
        for (offset, data) in job.write_back {
            let end = offset + data.len() as u64;
            let keep = subtract(offset, end, &moot);
            skipped +=
                blocks(data.len() as u64) - keep.iter().map(|(_, l)| blocks(*l)).sum::<u64>();
            for (o, l) in keep {
                let from = (o - offset) as usize;
                writes.push(Op::Write {
                    offset: o,
                    data: data.slice(from..from + l as usize),
                    fua: false,
                });
            }
        }
        tracing::info!(
            read = parent,
            writes = writes.len(),
            moot_blocks = skipped,
            "writing back the good copies of bad blocks"
        );
        for op in writes {
            self.submit_into(now, REPAIR_TAG, op, actions);
        }
    }

    /// Read `parent` fails with `err`: it and its pieces are forgotten.
    pub(super) fn fail_repair_job(
        &mut self,
        parent: u64,
        err: VolumeError,
        actions: &mut Vec<Action>,
    ) {
        let pieces: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.piece_of() == Some(parent))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in pieces {
            self.remove_pending(seq);
        }
        if let Some(p) = self.remove_pending(parent) {
            tracing::warn!(read = parent, error = %err, "read failed");
            answer(actions, p.tag, Err(err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_subtract_and_split() {
        let mut r = Vec::new();
        add(&mut r, 8192, 12288);
        add(&mut r, 0, 4096);
        add(&mut r, 4096, 8192);
        add(&mut r, 20480, 24576);
        add(&mut r, 5, 5);
        assert_eq!(r, vec![(0, 12288), (20480, 4096)]);
        assert_eq!(
            subtract(100, 30000, &r),
            vec![(12288, 20480 - 12288), (24576, 30000 - 24576)]
        );
        assert_eq!(subtract(0, 4096, &r), vec![]);
        assert_eq!(subtract(12288, 20480, &r), vec![(12288, 8192)]);
        assert_eq!(aligned(512, 512), (0, 4096));
        assert_eq!(aligned(4096, 4096), (4096, 8192));
        let max = u64::from(MAX_IO_BYTES);
        assert_eq!(
            split(4096, 4096 + max + 4096),
            vec![(4096, MAX_IO_BYTES), (4096 + max, 4096)]
        );
        assert_eq!(blocks(8192), 2);
        assert_eq!(blocks(1), 1);
    }
}
