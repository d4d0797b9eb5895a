//! The rebuild source: answers a peer's `RebuildStart` on a probe session
//! (epoch 0) by streaming every chunk of the live volume — or of one of its
//! snapshots (`RebuildSource::Snapshot`) — last written after `from_io_seq`,
//! in LBA order.
//!
//! Stream: `Ack`, `RebuildProgress{0, total}`, `RebuildChunk`…,
//! `RebuildDone{through_io_seq}` — or `RebuildAbort` on an error. Each chunk
//! carries at most [`REBUILD_PIECE_BYTES`], with the io_seq the engine
//! recorded for its chunk on every block. Each piece is read inside the
//! volume's IO order (a write received before is applied first) and written
//! to the socket before the next is read: memory stays at one piece and the
//! sink's pace sets ours (TCP backpressure). A snapshot is frozen: its
//! pieces are read without taking an IO-order ticket, and its stream's
//! `through_io_seq` is the snapshot's io_seq.

use bytes::Bytes;
use cstor_proto::limits::MAX_REBUILD_CHUNK_BLOCKS;
use cstor_proto::{
    EncodeError, Message, Opcode, Packet, RebuildAbort, RebuildChunk, RebuildDone, RebuildProgress,
    RebuildSource, RebuildStart,
};
use futures::{Sink, SinkExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::RebuildError;
use crate::limits::{REBUILD_PIECE_BYTES, REBUILD_STREAM_IDLE_TIMEOUT};
use crate::ordering::IoKind;
use crate::registry::VolumeEntry;

/// Serves one rebuild stream on `sink` (the probe session's socket) and
/// returns when it is done, aborted, or the sink went away.
pub async fn serve<S>(
    sink: &mut S,
    entry: &VolumeEntry,
    request: &Packet,
    start: &RebuildStart,
    stop: &CancellationToken,
) -> Result<(), RebuildError>
where
    S: Sink<Packet, Error = EncodeError> + Unpin,
{
    let peer = &start.peer_address;
    let outcome = tokio::select! {
        () = stop.cancelled() => Err(RebuildError::Cancelled),
        outcome = stream(sink, entry, request, start) => outcome,
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
            put(sink, request.reply(abort), peer).await?;
        }
    }
    outcome
}

async fn stream<S>(
    sink: &mut S,
    entry: &VolumeEntry,
    request: &Packet,
    start: &RebuildStart,
) -> Result<(), RebuildError>
where
    S: Sink<Packet, Error = EncodeError> + Unpin,
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
    let snapshot = match &start.source {
        RebuildSource::Live => None,
        RebuildSource::Snapshot(name) => Some(name.as_str()),
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
    let total_bytes = total(entry, snapshot, start.from_io_seq)?;
    put(
        sink,
        request.reply(Message::Ack(Opcode::RebuildStart)),
        peer,
    )
    .await?;
    put(
        sink,
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
    let piece_len = piece_blocks * block_len;
    let mut next = Some(0u64);
    while let Some(from) = next {
        let page = volume
            .changed_chunks(snapshot, start.from_io_seq, from)
            .map_err(engine)?;
        for change in page.changes {
            // A zeroed chunk (`ChangeKind::Zero`) is read, and travels, as
            // zeros: the sink must learn that older data there is gone.
            let end = change
                .offset_bytes
                .checked_add(change.len_bytes)
                .ok_or_else(|| RebuildError::Unsupported {
                    volume: entry.name.clone(),
                    detail: format!("chunk at {} overflows", change.offset_bytes),
                })?;
            if !change.len_bytes.is_multiple_of(block_len) {
                return Err(RebuildError::Unsupported {
                    volume: entry.name.clone(),
                    detail: format!(
                        "chunk at {} of {} bytes is not whole blocks",
                        change.offset_bytes, change.len_bytes
                    ),
                });
            }
            let mut offset = change.offset_bytes;
            while offset < end {
                let len = piece_len.min(end - offset);
                let data = read_piece(entry, snapshot, offset, len).await?;
                let blocks = usize::try_from(len / block_len).unwrap_or(0);
                let chunk = RebuildChunk {
                    offset,
                    block_size_bytes: block,
                    block_io_seqs: vec![change.io_seq; blocks],
                    data,
                };
                put(sink, request.reply(Message::RebuildChunk(chunk)), peer).await?;
                offset += len;
            }
        }
        next = page.next_offset;
    }
    put(
        sink,
        request.reply(Message::RebuildDone(RebuildDone { through_io_seq })),
        peer,
    )
    .await?;
    info!(volume = %entry.name, sink = %peer, total_bytes, "rebuild source done");
    Ok(())
}

/// Sends one packet of the stream; a sink that takes nothing for
/// [`REBUILD_STREAM_IDLE_TIMEOUT`] is given up (it may have stalled).
async fn put<S>(sink: &mut S, packet: Packet, peer: &str) -> Result<(), RebuildError>
where
    S: Sink<Packet, Error = EncodeError> + Unpin,
{
    let gone = |detail: String| RebuildError::Peer {
        peer: peer.to_owned(),
        detail,
    };
    match tokio::time::timeout(REBUILD_STREAM_IDLE_TIMEOUT, sink.send(packet)).await {
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
