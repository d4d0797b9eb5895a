//! The rebuild source: answers a peer's `RebuildStart` on a probe session
//! (epoch 0) by streaming every chunk of the live volume — or of one of its
//! snapshots (`RebuildSource::Snapshot`) — last written after `from_io_seq`,
//! in LBA order; or, for `RebuildSource::Ranges`, every block of the live
//! volume in the ranges the sink names, whatever its io_seq (the chunks the
//! sink changed itself that this replica never got: `sink` module doc).
//!
//! A replica is a source only while a target session owns its volume on
//! this process (`Busy` otherwise): the target chose it as healthy on a
//! link to this process, not to one before a restart that may have lost
//! writes it acknowledged (the session router checks it).
//!
//! Stream: `Ack`, `RebuildProgress{0, total}`, `RebuildChunk`…,
//! `RebuildDone{through_io_seq}` — or `RebuildAbort` on an error. Each chunk
//! carries at most [`REBUILD_PIECE_BYTES`], with the io_seq the engine
//! recorded for its chunk on every block. Each piece is read inside the
//! volume's IO order (a write received before is applied first). Up to
//! [`REBUILD_PIECES_IN_FLIGHT`] pieces are read ahead of the socket and
//! sent in LBA order: memory stays at that many pieces and the sink's pace
//! sets ours (TCP backpressure). Reading ahead changes nothing for the
//! sink: a piece read earlier misses at most writes the sink gets live. A
//! snapshot is frozen: its pieces are read without taking an IO-order
//! ticket, and its stream's `through_io_seq` is the snapshot's io_seq.
//!
//! A replica rebuilt by digest has an io_seq floor (`state::io_seq_floor`):
//! its own io_seqs of the chunks that run found equal may be older than the
//! write that last made their content elsewhere, and a chunk it never
//! wrote may be one the others wrote and trimmed. So a live stream asked
//! from below the floor carries the whole live volume (a stream of one
//! range over all of it: zeros where this replica holds nothing), and
//! every piece of a live or ranges stream carries at least the floor as
//! its io_seq: a sink's delta rebuild (and its resume point's skip rule)
//! then misses nothing. It costs such a sink a copy of the whole volume
//! (zeros allocated as data, like zeroed chunks in every rebuild) until
//! sinks ask from above the floor.
//!
//! Runtime-free: the stream is any sink of packets, and the send timeout
//! runs on the given [`Clock`] (the daemon's: tokio's).

use std::collections::VecDeque;
use std::fmt::Display;
use std::pin::pin;

use bytes::Bytes;
use cstor_proto::limits::MAX_REBUILD_CHUNK_BLOCKS;
use cstor_proto::{
    ByteRange, Message, Opcode, Packet, RebuildAbort, RebuildChunk, RebuildDone, RebuildProgress,
    RebuildSource, RebuildStart,
};
use futures::future::{self, Either};
use futures::stream::FuturesOrdered;
use futures::{Sink, SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::io::{deadline, Clock};
use super::state::io_seq_floor;
use super::RebuildError;
use crate::limits::{REBUILD_PIECES_IN_FLIGHT, REBUILD_PIECE_BYTES, REBUILD_STREAM_IDLE_TIMEOUT};
use crate::ordering::IoKind;
use crate::registry::VolumeEntry;

/// Serves one rebuild stream on `sink` (the probe session's socket:
/// `request` is the sink's `RebuildStart`, `start` its content) and
/// returns when it is done, aborted, `stop`ped, or the sink went away.
/// `clock` times the sends.
pub async fn serve<S, C>(
    sink: &mut S,
    clock: &C,
    entry: &VolumeEntry,
    request: &Packet,
    start: &RebuildStart,
    stop: &CancellationToken,
) -> Result<(), RebuildError>
where
    S: Sink<Packet> + Unpin,
    S::Error: Display,
    C: Clock,
{
    let peer = &start.peer_address;
    let outcome = {
        // The stop first: a stream stopped and done at once is stopped.
        let stopped = pin!(stop.cancelled());
        let streaming = pin!(stream(sink, clock, entry, request, start));
        match future::select(stopped, streaming).await {
            Either::Left(((), _)) => Err(RebuildError::Cancelled),
            Either::Right((outcome, _)) => outcome,
        }
    };
    match &outcome {
        Ok(()) => {}
        // The sink is gone: nobody to tell.
        Err(RebuildError::Peer { .. }) => {}
        Err(e) => {
            warn!(volume = %entry.name, sink = %peer, error = %e, "rebuild source aborts");
            let abort = Message::RebuildAbort(RebuildAbort {
                status: e.status(),
                detail: truncate(e.to_string()),
            });
            put(sink, clock, request.reply(abort), peer).await?;
        }
    }
    outcome
}

async fn stream<S, C>(
    sink: &mut S,
    clock: &C,
    entry: &VolumeEntry,
    request: &Packet,
    start: &RebuildStart,
) -> Result<(), RebuildError>
where
    S: Sink<Packet> + Unpin,
    S::Error: Display,
    C: Clock,
{
    let peer = &start.peer_address;
    if start.volume.as_str() != entry.name {
        return Err(RebuildError::Unsupported {
            volume: entry.name.clone(),
            detail: format!(
                "asked for volume {} on a session of it",
                start.volume.as_str()
            ),
        });
    }
    let volume = &entry.volume;
    let engine = |e| RebuildError::engine(&entry.name, e);
    let (snapshot, ranges) = match &start.source {
        RebuildSource::Live => (None, None),
        RebuildSource::Snapshot(name) => (Some(name.as_str()), None),
        RebuildSource::Ranges(ranges) => (None, Some(ranges.as_slice())),
    };
    let through_io_seq = match snapshot {
        // Every write received so far is in the stream (read after it in
        // IO order); later ones may be too.
        None => entry.last_received_io_seq(),
        Some(name) => volume
            .list_snapshots()
            .map_err(engine)?
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.io_seq)
            .ok_or_else(|| {
                engine(cstor_engine::Error::new(
                    cstor_engine::ErrorKind::NotFound,
                    format!("snapshot {name}"),
                ))
            })?,
    };
    // A replica rebuilt by digest reads its live chunks as last written at
    // least at its io_seq floor (module doc): a live stream from below it
    // is the whole volume's, each piece stamped at least the floor.
    let floor = match snapshot {
        None => io_seq_floor(&volume.attrs().map_err(engine)?),
        Some(_) => 0,
    };
    let whole;
    let ranges = if snapshot.is_none() && ranges.is_none() && start.from_io_seq < floor {
        info!(volume = %entry.name, sink = %peer, floor, from_io_seq = start.from_io_seq, "a live stream from below this replica's io_seq floor carries the whole volume");
        whole = [ByteRange {
            offset: 0,
            len_bytes: volume.size_bytes().map_err(engine)?,
        }];
        Some(&whole[..])
    } else {
        ranges
    };
    let total_bytes = match ranges {
        None => total(entry, snapshot, start.from_io_seq)?,
        Some(ranges) => {
            check_ranges(entry, ranges)?;
            ranges.iter().map(|r| r.len_bytes).sum()
        }
    };
    put(
        sink,
        clock,
        request.reply(Message::Ack(Opcode::RebuildStart)),
        peer,
    )
    .await?;
    put(
        sink,
        clock,
        request.reply(Message::RebuildProgress(RebuildProgress {
            done_bytes: 0,
            total_bytes,
        })),
        peer,
    )
    .await?;
    info!(volume = %entry.name, sink = %peer, snapshot = ?snapshot, from_io_seq = start.from_io_seq, total_bytes, "rebuild source started");
    let block = volume.block_bytes();
    let block_len = u64::from(block);
    if block_len == 0 {
        return Err(RebuildError::Unsupported {
            volume: entry.name.clone(),
            detail: "zero block size".into(),
        });
    }
    // Whole blocks, within both our bound and the protocol's per chunk.
    let piece_blocks =
        (REBUILD_PIECE_BYTES / block_len).clamp(1, u64::from(MAX_REBUILD_CHUNK_BLOCKS));
    let mut pieces = Pieces {
        entry,
        snapshot,
        from_io_seq: start.from_io_seq,
        floor,
        block_len,
        piece_len: piece_blocks * block_len,
        next_page: Some(0),
        ranges: ranges.map(|r| r.iter().copied().collect()),
        queue: VecDeque::new(),
    };
    let mut reads = FuturesOrdered::new();
    loop {
        while reads.len() < REBUILD_PIECES_IN_FLIGHT {
            let Some(piece) = pieces.next()? else {
                break;
            };
            reads.push_back(read_chunk(entry, snapshot, piece, block));
        }
        let Some(chunk) = reads.next().await else {
            break;
        };
        put(
            sink,
            clock,
            request.reply(Message::RebuildChunk(chunk?)),
            peer,
        )
        .await?;
    }
    put(
        sink,
        clock,
        request.reply(Message::RebuildDone(RebuildDone { through_io_seq })),
        peer,
    )
    .await?;
    info!(volume = %entry.name, sink = %peer, total_bytes, "rebuild source done");
    Ok(())
}

/// One piece of the stream: `len_bytes` at `offset`, of an engine chunk
/// last written at `io_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    offset: u64,
    len_bytes: u64,
    io_seq: u64,
}

/// The pieces of a stream in LBA order, a page of the engine's changed
/// chunks at a time (validated before any is read) — or, for a stream of
/// ranges, a chunk of a range at a time.
struct Pieces<'a> {
    entry: &'a VolumeEntry,
    snapshot: Option<&'a str>,
    from_io_seq: u64,
    /// The live volume's io_seq floor (0 for a snapshot): every piece is
    /// stamped at least this.
    floor: u64,
    block_len: u64,
    piece_len: u64,
    /// The next page of changes to ask for; `None` after the last one.
    next_page: Option<u64>,
    /// The ranges still to cut, for a stream of ranges (validated).
    ranges: Option<VecDeque<ByteRange>>,
    queue: VecDeque<Piece>,
}

impl Pieces<'_> {
    fn next(&mut self) -> Result<Option<Piece>, RebuildError> {
        if self.ranges.is_some() {
            return self.next_of_ranges();
        }
        while self.queue.is_empty() {
            let Some(from) = self.next_page else {
                return Ok(None);
            };
            let page = self
                .entry
                .volume
                .changed_chunks(self.snapshot, self.from_io_seq, from)
                .map_err(|e| RebuildError::engine(&self.entry.name, e))?;
            for change in page.changes {
                // A zeroed chunk (`ChangeKind::Zero`) is read, and travels,
                // as zeros: the sink must learn that older data there is gone.
                let io_seq = change.io_seq.max(self.floor);
                self.queue(change.offset_bytes, change.len_bytes, io_seq)?;
            }
            self.next_page = page.next_offset;
        }
        Ok(self.queue.pop_front())
    }
}

impl Pieces<'_> {
    /// Queues the pieces of `len` bytes at `offset`, all of `io_seq`.
    fn queue(&mut self, offset: u64, len: u64, io_seq: u64) -> Result<(), RebuildError> {
        split(
            offset,
            len,
            io_seq,
            self.block_len,
            self.piece_len,
            &mut self.queue,
        )
        .map_err(|e| RebuildError::Unsupported {
            volume: self.entry.name.clone(),
            detail: e.to_string(),
        })
    }

    /// The next piece of a stream of ranges: each range is cut at the
    /// engine's chunk boundaries (a piece carries one chunk's io_seq), a
    /// chunk at a time.
    fn next_of_ranges(&mut self) -> Result<Option<Piece>, RebuildError> {
        let volume = &self.entry.volume;
        let chunk_len = volume.chunk_bytes().max(1);
        while self.queue.is_empty() {
            let Some(range) = self.ranges.as_mut().and_then(VecDeque::pop_front) else {
                return Ok(None);
            };
            // Validated: does not wrap.
            let end = range.offset.saturating_add(range.len_bytes);
            let chunk_end = (range.offset / chunk_len + 1).saturating_mul(chunk_len);
            let part_end = end.min(chunk_end);
            let io_seq = volume
                .live_chunk_io_seq(range.offset)
                .map_err(|e| RebuildError::engine(&self.entry.name, e))?
                .max(self.floor);
            self.queue(range.offset, part_end - range.offset, io_seq)?;
            if part_end < end {
                if let Some(ranges) = self.ranges.as_mut() {
                    ranges.push_front(ByteRange {
                        offset: part_end,
                        len_bytes: end - part_end,
                    });
                }
            }
        }
        Ok(self.queue.pop_front())
    }
}

/// Refuses ranges that are not whole blocks inside the volume (the
/// protocol checked they are ascending, disjoint and do not wrap).
fn check_ranges(entry: &VolumeEntry, ranges: &[ByteRange]) -> Result<(), RebuildError> {
    let block = u64::from(entry.volume.block_bytes()).max(1);
    let size = entry
        .volume
        .size_bytes()
        .map_err(|e| RebuildError::engine(&entry.name, e))?;
    for range in ranges {
        let end = range.offset.saturating_add(range.len_bytes);
        if !range.offset.is_multiple_of(block) || !range.len_bytes.is_multiple_of(block) {
            return Err(RebuildError::Unsupported {
                volume: entry.name.clone(),
                detail: format!(
                    "range {}+{} is not whole {block}-byte blocks",
                    range.offset, range.len_bytes
                ),
            });
        }
        if end > size {
            return Err(RebuildError::Unsupported {
                volume: entry.name.clone(),
                detail: format!(
                    "range {}+{} ends past the volume's {size} bytes",
                    range.offset, range.len_bytes
                ),
            });
        }
    }
    Ok(())
}

/// Why a changed chunk cannot be cut into pieces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SplitError {
    #[error("chunk at {offset} overflows")]
    Overflows { offset: u64 },
    #[error("chunk at {offset} of {len} bytes is not whole {block_len}-byte blocks")]
    NotWholeBlocks {
        offset: u64,
        len: u64,
        block_len: u64,
    },
}

/// Cuts the changed chunk `offset..offset+len` into pieces of at most
/// `piece_len` bytes (whole blocks) appended to `out`; refuses a chunk
/// that overflows or is not whole blocks.
fn split(
    offset: u64,
    len: u64,
    io_seq: u64,
    block_len: u64,
    piece_len: u64,
    out: &mut VecDeque<Piece>,
) -> Result<(), SplitError> {
    let end = offset
        .checked_add(len)
        .ok_or(SplitError::Overflows { offset })?;
    if block_len == 0 || piece_len == 0 || !len.is_multiple_of(block_len) {
        return Err(SplitError::NotWholeBlocks {
            offset,
            len,
            block_len,
        });
    }
    let mut at = offset;
    while at < end {
        let len_bytes = piece_len.min(end - at);
        out.push_back(Piece {
            offset: at,
            len_bytes,
            io_seq,
        });
        at += len_bytes;
    }
    Ok(())
}

/// Reads `piece` into a chunk of the stream.
async fn read_chunk(
    entry: &VolumeEntry,
    snapshot: Option<&str>,
    piece: Piece,
    block: u32,
) -> Result<RebuildChunk, RebuildError> {
    let data = read_piece(entry, snapshot, piece.offset, piece.len_bytes).await?;
    let blocks = usize::try_from(piece.len_bytes / u64::from(block).max(1)).unwrap_or(0);
    Ok(RebuildChunk {
        offset: piece.offset,
        block_size_bytes: block,
        block_io_seqs: vec![piece.io_seq; blocks],
        data,
    })
}

/// Sends one packet of the stream; a sink that takes nothing for
/// [`REBUILD_STREAM_IDLE_TIMEOUT`] is given up (it may have stalled).
async fn put<S, C>(sink: &mut S, clock: &C, packet: Packet, peer: &str) -> Result<(), RebuildError>
where
    S: Sink<Packet> + Unpin,
    S::Error: Display,
    C: Clock,
{
    let gone = |detail: String| RebuildError::Peer {
        peer: peer.to_owned(),
        detail,
    };
    match deadline(clock, REBUILD_STREAM_IDLE_TIMEOUT, sink.send(packet)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(gone(format!("cannot send: {e}"))),
        Err(_) => Err(gone(format!(
            "took nothing for {REBUILD_STREAM_IDLE_TIMEOUT:?}"
        ))),
    }
}

/// Bytes the stream will carry: a pass over the metadata only.
fn total(
    entry: &VolumeEntry,
    snapshot: Option<&str>,
    from_io_seq: u64,
) -> Result<u64, RebuildError> {
    let mut total = 0u64;
    let mut next = Some(0u64);
    while let Some(from) = next {
        let page = entry
            .volume
            .changed_chunks(snapshot, from_io_seq, from)
            .map_err(|e| RebuildError::engine(&entry.name, e))?;
        total = page
            .changes
            .iter()
            .fold(total, |t, c| t.saturating_add(c.len_bytes));
        next = page.next_offset;
    }
    Ok(total)
}

/// Reads one piece of the live volume inside the IO order (after every
/// write received before), or of a (frozen) snapshot.
async fn read_piece(
    entry: &VolumeEntry,
    snapshot: Option<&str>,
    offset: u64,
    len: u64,
) -> Result<Bytes, RebuildError> {
    let _ticket = match snapshot {
        Some(_) => None,
        None => {
            let mut ticket = entry
                .order
                .admit(IoKind::Read(offset..offset.saturating_add(len)));
            ticket.ready().await;
            Some(ticket)
        }
    };
    let len = usize::try_from(len).map_err(|_| RebuildError::Unsupported {
        volume: entry.name.clone(),
        detail: format!("piece of {len} bytes"),
    })?;
    let mut buf = vec![0u8; len];
    match snapshot {
        None => entry.volume.read(offset, &mut buf).await,
        Some(name) => entry.volume.read_snapshot(name, offset, &mut buf).await,
    }
    .map_err(|e| RebuildError::engine(&entry.name, e))?;
    Ok(Bytes::from(buf))
}

/// Details travel bounded (`MAX_DETAIL_BYTES`); cut at a char boundary.
pub(super) fn truncate(mut detail: String) -> String {
    let max = cstor_proto::limits::MAX_DETAIL_BYTES;
    if detail.len() > max {
        let mut cut = max;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_chunk_that_overflows_or_is_not_whole_blocks_is_refused() {
        let mut out = VecDeque::new();
        assert_eq!(
            split(u64::MAX - 10, 4096, 1, 4096, 8192, &mut out),
            Err(SplitError::Overflows {
                offset: u64::MAX - 10
            })
        );
        assert!(matches!(
            split(0, 4095, 1, 4096, 8192, &mut out),
            Err(SplitError::NotWholeBlocks { len: 4095, .. })
        ));
        assert!(matches!(
            split(0, 4096, 1, 0, 8192, &mut out),
            Err(SplitError::NotWholeBlocks { block_len: 0, .. })
        ));
        assert!(out.is_empty(), "nothing queued from a refused chunk");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The pieces tile the chunk exactly, in order, each whole blocks
        /// and at most a piece long, all with the chunk's io_seq.
        #[test]
        fn pieces_tile_the_chunk_in_order(
            first_block in 0u64..1000,
            blocks in 0u64..300,
            piece_blocks in 1u64..70,
            io_seq in any::<u64>(),
        ) {
            let block = 512u64;
            let (offset, len) = (first_block * block, blocks * block);
            let mut out = VecDeque::new();
            split(offset, len, io_seq, block, piece_blocks * block, &mut out).unwrap();
            let mut at = offset;
            for piece in &out {
                prop_assert_eq!(piece.offset, at);
                prop_assert!(piece.len_bytes > 0 && piece.len_bytes <= piece_blocks * block);
                prop_assert_eq!(piece.len_bytes % block, 0);
                prop_assert_eq!(piece.io_seq, io_seq);
                at += piece.len_bytes;
            }
            prop_assert_eq!(at, offset + len);
            prop_assert_eq!(out.len() as u64, blocks.div_ceil(piece_blocks));
        }
    }
}
