//! The sink's full rebuild by digest (`rebuild` module doc, "By digest"):
//! compare the live volume with the source's range by range
//! ([`REBUILD_DIGEST_RANGE_BYTES`]) and pull only the ranges that differ.
//!
//! 1. An *anchor*: a `RebuildSource::Ranges` stream of the volume's first
//!    block, before any comparison. Its `RebuildDone` carries the source's
//!    last received io_seq at its start, which is the run's
//!    `through_io_seq`: every range is then compared (or pulled) after it
//!    in the source's IO order, as every chunk of a live stream is read
//!    after that stream's start.
//! 2. Batches: on a probe session, up to [`REBUILD_DIGESTS_IN_FLIGHT`]
//!    `Digest`s in flight (replies matched by io_seq), each compared, in
//!    LBA order, with this replica's own `Volume::digest` of the range
//!    (under a read ticket of the volume's IO order: no live write runs in
//!    it meanwhile). Equal: nothing moves; the range counts as done work.
//!    Different, or this copy names bad blocks in it: the range is pulled.
//!    A range that is not whole 4 KiB blocks (a volume's odd tail) cannot
//!    be digested and is pulled. The source naming bad blocks aborts the
//!    run ([`RebuildError::SourceBad`]): the live stream would not copy
//!    them either (its read of them fails), and a copy of a bad block is
//!    no rebuild.
//! 3. A batch ends after at most [`MAX_REBUILD_RANGES`] differing runs of
//!    ranges (adjacent ones merged) or at the volume's end; its ranges are
//!    pulled with one `RebuildSource::Ranges` stream (a connection of its
//!    own; the probe is closed meanwhile and a new one opened for the next
//!    batch), applied like every live-volume stream: only to the blocks no
//!    live write of this run touched.
//!
//! Pacing: bytes compared equal go through the run's pacer like pulled
//! ones (a comparison reads the range on the source as a stream would; a
//! range that differs is paced by its stream), so the throttle bounds the
//! source's reads in both modes. A long pause sends heartbeats on the
//! probe, which the source would otherwise end as idle.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cstor_engine::limits::SUM_BLOCK_BYTES;
use cstor_proto::limits::MAX_REBUILD_RANGES;
use cstor_proto::{ByteRange, Extent, Message, Opcode, Packet};
use futures::SinkExt;
use tracing::info;

use super::{Progress, Reports, Run};
use crate::limits::{
    REBUILD_CONNECT_TIMEOUT, REBUILD_DIGESTS_IN_FLIGHT, REBUILD_DIGEST_RANGE_BYTES,
};
use crate::ordering::IoKind;
use crate::rebuild::io::{deadline, RebuildIo};
use crate::rebuild::state::effective_limit;
use crate::rebuild::RebuildError;
use crate::registry::VolumeEntry;

/// The io_seq of a range in flight that was not asked for (not
/// digestible): it is pulled.
const NOT_ASKED: u64 = 0;

/// The io_seq of the heartbeats of a long pause (the probe's `Hello` had
/// it; no digest does).
const HEARTBEAT_IO_SEQ: u64 = 0;

/// The longest sleep of a pause between two heartbeats on the probe: well
/// below the source's idle timeout (`SESSION_IDLE_TIMEOUT`, 15 s).
const PAUSE_SLICE: Duration = Duration::from_secs(5);

/// Whether a volume replica holds any data (a full rebuild into it then
/// goes by digest): chunks of its own, or snapshots under it.
pub(super) fn holds_data(entry: &VolumeEntry) -> Result<bool, RebuildError> {
    let stats = entry
        .volume
        .stats()
        .map_err(|e| RebuildError::engine(&entry.name, e))?;
    Ok(stats.size_bytes > 0 && (stats.allocated_bytes > 0 || stats.snapshots > 0))
}

impl<I: RebuildIo> Run<I> {
    /// The live volume by digest (module doc); returns the run's
    /// `through_io_seq` (the anchor's).
    pub(super) async fn pull_by_digest(
        &self,
        reports: &Reports,
        progress: &mut Progress,
    ) -> Result<u64, RebuildError> {
        let volume = &self.entry.volume;
        let size = volume.size_bytes().map_err(|e| self.engine(e))?;
        let block = u64::from(volume.block_bytes()).max(1);
        let anchor = ByteRange {
            offset: 0,
            len_bytes: block.min(size),
        };
        if anchor.len_bytes == 0 {
            return Err(RebuildError::Unsupported {
                volume: self.entry.name.clone(),
                detail: "a rebuild by digest of an empty volume".into(),
            });
        }
        info!(size, "rebuild compares the volume by digest");
        // Every byte is compared or pulled, the anchor's block once more.
        progress.total_bytes = progress
            .done_bytes
            .saturating_add(anchor.len_bytes)
            .saturating_add(size);
        progress.fixed_total = true;
        let through_io_seq = self
            .pull_ranges(
                vec![anchor],
                reports,
                progress,
                "anchor of a rebuild by digest",
            )
            .await?;
        let mut offset = 0;
        while offset < size {
            let (differ, next) = self.compare_batch(offset, size, reports, progress).await?;
            offset = next;
            if !differ.is_empty() {
                self.pull_ranges(differ, reports, progress, "ranges whose digests differ")
                    .await?;
            }
        }
        progress.fixed_total = false;
        Ok(through_io_seq)
    }

    /// Compares ranges from `from` on until the batch is full or the
    /// volume ends; returns the ranges to pull (ascending, merged) and
    /// where the next batch starts.
    async fn compare_batch(
        &self,
        from: u64,
        size: u64,
        reports: &Reports,
        progress: &mut Progress,
    ) -> Result<(Vec<ByteRange>, u64), RebuildError> {
        let (mut conn, _, _) = deadline(&self.io, REBUILD_CONNECT_TIMEOUT, self.probe())
            .await
            .map_err(|_| self.peer(format!("no answer within {REBUILD_CONNECT_TIMEOUT:?}")))??;
        let mut differ: Vec<ByteRange> = Vec::new();
        // Asked, in LBA order: (io_seq, range).
        let mut asked: VecDeque<(u64, ByteRange)> = VecDeque::new();
        // Replies that came before an earlier one, by io_seq.
        let mut early: BTreeMap<u64, Message> = BTreeMap::new();
        let mut next_offset = from;
        // io_seq 0 was the probe's Hello.
        let mut next_io_seq = 1u64;
        loop {
            // Each range asked may add one run to `differ`: the batch
            // never outgrows one Ranges stream.
            while asked.len() < REBUILD_DIGESTS_IN_FLIGHT
                && next_offset < size
                && differ.len() + asked.len() < MAX_REBUILD_RANGES
            {
                let range = ByteRange {
                    offset: next_offset,
                    len_bytes: REBUILD_DIGEST_RANGE_BYTES.min(size - next_offset),
                };
                next_offset += range.len_bytes;
                let extent = u32::try_from(range.len_bytes).ok().filter(|_| {
                    range.offset.is_multiple_of(SUM_BLOCK_BYTES)
                        && range.len_bytes.is_multiple_of(SUM_BLOCK_BYTES)
                });
                let Some(len_bytes) = extent else {
                    asked.push_back((NOT_ASKED, range));
                    continue;
                };
                let packet = Packet {
                    session_id: 0,
                    epoch: 0,
                    io_seq: next_io_seq,
                    message: Message::Digest(Extent {
                        offset: range.offset,
                        len_bytes,
                    }),
                };
                conn.send(packet)
                    .await
                    .map_err(|e| self.peer(format!("cannot send: {e}")))?;
                asked.push_back((next_io_seq, range));
                next_io_seq += 1;
            }
            let Some((io_seq, range)) = asked.pop_front() else {
                break;
            };
            let equal = if io_seq == NOT_ASKED {
                false
            } else {
                let theirs = match self
                    .digest_reply(&mut conn, io_seq, next_io_seq, &mut early)
                    .await?
                {
                    Message::RangeDigest(reply) => reply,
                    other => return Err(self.refused("Digest", other)),
                };
                if !theirs.bad.is_empty() {
                    return Err(RebuildError::SourceBad {
                        peer: self.start.peer_address.clone(),
                        ranges: theirs
                            .bad
                            .iter()
                            .map(|r| format!("{}+{}", r.offset, r.len_bytes))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                let ours = self.own_digest(range).await?;
                ours.bad.is_empty() && ours.digest == theirs.digest
            };
            self.settings.count_digest(equal, range.len_bytes);
            if equal {
                progress.done_bytes = progress.done_bytes.saturating_add(range.len_bytes);
                self.report(reports, progress, false).await?;
                // A range pulled is paced by its stream.
                self.pace(&mut conn, range.len_bytes, progress).await?;
            } else {
                match differ.last_mut() {
                    Some(last) if last.offset.saturating_add(last.len_bytes) == range.offset => {
                        last.len_bytes += range.len_bytes;
                    }
                    _ => differ.push(range),
                }
            }
        }
        Ok((differ, next_offset))
    }

    /// The reply to the `Digest` of `io_seq` (replies of later ones that
    /// come first are kept in `early`; `sent_below` bounds the io_seqs
    /// asked).
    async fn digest_reply(
        &self,
        conn: &mut I::Conn,
        io_seq: u64,
        sent_below: u64,
        early: &mut BTreeMap<u64, Message>,
    ) -> Result<Message, RebuildError> {
        loop {
            if let Some(message) = early.remove(&io_seq) {
                return Ok(message);
            }
            let packet = self.next(conn).await?;
            if packet.io_seq == HEARTBEAT_IO_SEQ
                && packet.message == Message::Ack(Opcode::Heartbeat)
            {
                // The answer to a heartbeat of a long pause (`pace`).
                continue;
            }
            if packet.io_seq == io_seq {
                return Ok(packet.message);
            }
            if packet.io_seq <= io_seq
                || packet.io_seq >= sent_below
                || early.contains_key(&packet.io_seq)
            {
                return Err(self.peer(format!(
                    "a reply of io_seq {} while digests {io_seq}..{sent_below} are asked",
                    packet.io_seq
                )));
            }
            early.insert(packet.io_seq, packet.message);
        }
    }

    /// This replica's digest of `range`, inside the volume's IO order.
    async fn own_digest(
        &self,
        range: ByteRange,
    ) -> Result<cstor_engine::RangeDigest, RebuildError> {
        let end = range.offset.saturating_add(range.len_bytes);
        let mut ticket = self.entry.order.admit(IoKind::Read(range.offset..end));
        ticket.ready().await;
        let digest = self
            .entry
            .volume
            .digest(range.offset, range.len_bytes)
            .await
            .map_err(|e| self.engine(e));
        drop(ticket);
        digest
    }

    /// Waits out the pacer's pause for `len` more bytes compared, keeping
    /// the probe `conn` alive (a heartbeat every [`PAUSE_SLICE`] of a long
    /// pause: the source ends a session idle for `SESSION_IDLE_TIMEOUT`).
    async fn pace(
        &self,
        conn: &mut I::Conn,
        len: u64,
        progress: &mut Progress,
    ) -> Result<(), RebuildError> {
        let limit = effective_limit(
            self.settings.limit_bytes_per_sec(),
            self.entry.rebuild.limit_bytes_per_sec(),
        );
        let mut pause = progress.pacer.delay(self.io.now(), len, limit);
        while !pause.is_zero() {
            let slice = pause.min(PAUSE_SLICE);
            if pause > PAUSE_SLICE {
                let heartbeat = Packet {
                    session_id: 0,
                    epoch: 0,
                    io_seq: HEARTBEAT_IO_SEQ,
                    message: Message::Heartbeat,
                };
                conn.send(heartbeat)
                    .await
                    .map_err(|e| self.peer(format!("cannot send: {e}")))?;
            }
            self.io.sleep(slice).await;
            pause = pause.saturating_sub(slice);
        }
        Ok(())
    }
}

const _: () = assert!(
    PAUSE_SLICE.as_secs() * 2 < crate::limits::SESSION_IDLE_TIMEOUT.as_secs(),
    "a pause's heartbeats keep the probe alive"
);
