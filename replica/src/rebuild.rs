//! Replica-to-replica rebuild (docs/architecture.md, invariant 6): this
//! daemon as the *source* that streams a volume's changed chunks to a peer
//! ([`source`]), and as the *sink* that pulls them into its own copy
//! ([`sink`]), with the per-volume state both share ([`state`]) and what
//! they need from the outside world ([`io`]: a clock, links, a task — tokio
//! in the daemon, anything else in a simulator).
//!
//! Protocol (`cstor_proto::message::rebuild`):
//!
//! ```text
//!  target ──RebuildStart{source addr, from_io_seq} io_seq=J──▶ sink ──Ack──▶ target
//!  sink ──Hello(epoch 0)──▶ source ──HelloAck──▶ sink
//!  sink ──RebuildStart{sink addr, from_io_seq}──▶ source ──Ack──▶ sink
//!  source ──RebuildProgress{0, total}, RebuildChunk…, RebuildDone──▶ sink
//!  sink ──RebuildProgress… (periodic), RebuildDone | RebuildAbort──▶ target
//! ```
//!
//! Why rebuilt data can never overwrite newer live data: the target sends
//! `RebuildStart` as the first frame of a fresh session, before it resends
//! pending writes and before any new write. The sink starts tracking, per
//! block, every live write from that frame on (synchronously, in the read
//! loop), and applies a rebuilt piece only inside the volume's IO order (so
//! no overlapping live write is running) and only to blocks no live write
//! touched since. A block that got a live write holds the newest data from
//! live writes alone: every write the sink did not get live completed before
//! it rejoined, and a completed write is older than any pending or new write
//! to the same block (replicas apply overlapping writes in io_seq order).
//!
//! The target picks a source that acknowledged every completed write the sink
//! lacks (the packet's io_seq `J` is the first io_seq the sink got live), so
//! the source's scan sees them all; the source reads each piece inside its
//! own IO order, so a write it received earlier is applied before the read.
//!
//! Bounded memory: the source reads at most [`REBUILD_PIECES_IN_FLIGHT`]
//! pieces ([`REBUILD_PIECE_BYTES`] each) ahead of the socket, so it reads
//! at the pace the sink consumes (TCP backpressure); the sink applies at
//! most as many decoded chunks at once, each under its own IO-order ticket
//! (the stream is in LBA order: they never overlap), and they finish in
//! stream order, so a resume point never passes an unapplied chunk. The
//! live-write tracker is one bit per block of the volume.
//!
//! Throttle (`state` module doc): the sink paces what it pulls to the
//! lower of its daemon's limit and the volume's, which the volume's target
//! sets (`RebuildThrottle` on the owning session).
//!
//! What only the sink got: a write after `from_io_seq` that reached the
//! sink but never the source (it never completed: a partition, a target
//! crash) sits in a chunk the source may not have changed since, so the
//! live stream does not carry it. After the live stream the sink lists
//! the chunks it changed itself after `from_io_seq` (taken before any
//! rebuilt block landed), and pulls those the stream did not carry by
//! range (`RebuildSource::Ranges`: the source's content whatever its
//! io_seq, zeros where it never wrote), applied like the live stream.
//! Usually there are none.
//!
//! Resumable: every [`REBUILD_CHECKPOINT_BYTES`] the sink flushes and
//! persists a [`state::ResumePoint`] in the volume attributes. A new rebuild
//! with the same `from_io_seq` skips a chunk below the saved offset when the
//! source's io_seq for it is below the interrupted run's `J` (the
//! interrupted run copied it — durably: the point is saved after a flush —
//! and the source has not changed it since). (It no longer also asks for
//! the chunk's io_seq to be at most the sink's durable io_seq: that is now
//! the completion watermark, held at `from_io_seq` for the whole rebuild.)
//! The frozen
//! `RebuildStart` has no start offset, so the source still streams the
//! skipped range; the sink only skips the writes.
//!
//! Snapshots (`sink::snapshots`): before the live stream and once more
//! after it, the sink lists the source's snapshots on a probe session,
//! deletes those the source no longer has (only among the ones it had when
//! the run started, or that the run created), and recreates each one it
//! lacks, oldest first: an empty snapshot layer with the source's name and
//! io_seq is *inserted below* the layers newer than it
//! (`Volume::insert_rebuilt_snapshot`; engine/FORMAT.md "Rebuilt
//! snapshots"), then filled from a `RebuildStart{Snapshot(name), base}`
//! stream (same shape as above) of every chunk the source's snapshot
//! changed after `base`, the io_seq of the newest snapshot the sink already
//! has at or below it. Live writes land in the live layer, above every
//! inserted one, so snapshot rebuilding never touches live data and needs
//! no live-write filter; the live stream keeps the per-block newer-wins
//! rule. A snapshot cut short by a crash is named in the resume point and
//! deleted and redone by the next run.
//!
//! Complete-through (`crate::ordering::watermark`): from `RebuildStart`
//! until `RebuildDone` the sink's completion watermark is held at
//! `from_io_seq`; the done raises it to the stream's `through_io_seq`.
//!
//! [`REBUILD_PIECE_BYTES`]: crate::limits::REBUILD_PIECE_BYTES
//! [`REBUILD_PIECES_IN_FLIGHT`]: crate::limits::REBUILD_PIECES_IN_FLIGHT
//! [`REBUILD_CHECKPOINT_BYTES`]: crate::limits::REBUILD_CHECKPOINT_BYTES

pub mod io;
pub mod sink;
pub mod source;
pub mod state;

use cstor_proto::Status;

/// Why a rebuild stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("volume {volume}: {source}")]
    Engine {
        volume: String,
        #[source]
        source: cstor_engine::Error,
    },
    #[error("rebuild peer {peer}: {detail}")]
    Peer { peer: String, detail: String },
    #[error("rebuild source {peer} aborted: {status:?}: {detail}")]
    SourceAborted {
        peer: String,
        status: Status,
        detail: String,
    },
    #[error(
        "rebuild source {peer} holds blocks that fail their checksum ({ranges}): \
         a rebuild does not copy them (a scrub or a read through the target \
         repairs the source from a healthy copy)"
    )]
    SourceBad { peer: String, ranges: String },
    #[error("rebuild of volume {volume} is not supported: {detail}")]
    Unsupported { volume: String, detail: String },
    #[error("rebuild cancelled (session cut, volume deleted or shutdown)")]
    Cancelled,
}

impl RebuildError {
    /// The status a `RebuildAbort` carries for this error.
    pub fn status(&self) -> Status {
        match self {
            RebuildError::Engine { source, .. } => crate::status::proto_status(source),
            RebuildError::Peer { .. } | RebuildError::SourceBad { .. } => Status::IoError,
            RebuildError::SourceAborted { status, .. } => *status,
            RebuildError::Unsupported { .. } => Status::BadRequest,
            RebuildError::Cancelled => Status::Busy,
        }
    }

    fn engine(volume: &str, source: cstor_engine::Error) -> Self {
        RebuildError::Engine {
            volume: volume.to_owned(),
            source,
        }
    }
}
