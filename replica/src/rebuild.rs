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
//! By digest (`sink::digest`): a *full* rebuild (`from_io_seq` 0: a replica
//! added, or one whose id differs from the membership record) into a copy
//! that already holds data (allocated chunks or snapshots, decided before
//! any rebuilt block lands) does not take the live stream. It pulls an
//! *anchor* first (a `Ranges` stream of the volume's first block), then
//! compares the live volume with the source's range by range
//! ([`REBUILD_DIGEST_RANGE_BYTES`]): `Digest`s on a probe session (up to
//! [`REBUILD_DIGESTS_IN_FLIGHT`] in flight; the source serves them like
//! `RebuildStart`: a volume in a replica set, only while a target session
//! owns it there, each inside its IO order like a read of the range),
//! against this replica's own `Volume::digest` of the range (under a read
//! ticket of its IO order). Equal ranges move nothing; the others — and
//! those where this copy names bad blocks — are pulled with `Ranges`
//! streams of at most `MAX_REBUILD_RANGES` runs each, applied like the live
//! stream (never over a live write of this run). A source naming bad
//! blocks aborts the run ([`RebuildError::SourceBad`]): a live stream could
//! not read them either, and a rebuild does not copy a bad block. A copy
//! with no data takes the live stream (digests would only add round trips).
//!
//! Why it ends as a live stream would, given that:
//! - `through_io_seq` is the anchor's: the source's last received io_seq
//!   when the anchor started, before any `Digest` was sent. A live stream
//!   may claim its start's value because it reads every chunk after it in
//!   the source's IO order; here every range is observed after the
//!   anchor's start too — by its digest (in the source's IO order, after
//!   every write received before it), or by a `Ranges` stream started
//!   later. A range found equal holds, on this replica, the content the
//!   source had at that digest, and nothing but live writes of this run
//!   changes it afterwards (the run writes only the ranges that differ,
//!   which do not overlap it); a live write is newer and wins as ever. The
//!   last stream's value would be higher and claim writes the source
//!   received while the earlier ranges were being compared, which this
//!   replica has only if they reach it live. The watermark is then raised
//!   to `min(through_io_seq, J − 1)` as for the live stream.
//! - No pass over its own changes: the live stream carries only the chunks
//!   the source changed after `from_io_seq`, so a write only this replica
//!   got is not in it and needs that pass; by digest *every* range is
//!   compared, so such a write differs from the source's content like any
//!   other difference and is pulled (or, where a live write of this run
//!   landed since, the live data stays, as in that pass), and a write that
//!   left the same bytes needs nothing.
//! - Digests compare content (crc32c of each 4 KiB block, zeros where
//!   unmapped: `Volume::digest`), not io_seqs, so a copy rebuilt through
//!   another history compares equal; a range compares equal only when
//!   neither copy names a bad block in it (a bad block digests as its
//!   index alone). Limit: a stale block whose crc32c equals the current
//!   one's (about 2^-32 per differing block) goes unnoticed, as in a scrub.
//! - io_seq floor: a range found equal keeps this replica's own chunk
//!   io_seqs, which may be older than the write that last made the same
//!   content on the source (a chunk overwritten and written back alike;
//!   one written and trimmed that this replica never had: no entry here at
//!   all). A delta rebuild that later takes this replica as its source
//!   would pick its chunks by those io_seqs and miss them. So a run by
//!   digest leaves `through_io_seq` as the volume replica's io_seq floor in
//!   its attributes (`state::io_seq_floor`; kept by every later run), and
//!   as a source it serves a live stream asked from below the floor as the
//!   whole volume, every piece stamped at least the floor (`source` module
//!   doc). Sound because every write above `through_io_seq` reached this
//!   replica live (completed writes below `J` were on the source before
//!   the anchor; pending ones are resent to this replica), so its own
//!   io_seq for a chunk such a write touched is that write's.
//! - Decided at `RebuildStart` (in the read loop, before the session's
//!   next request): a live write right behind it does not make an empty
//!   replica look like one with data.
//! - Resume point: written at the start (the replica says it is degraded
//!   until the end) and cleared at the end, but its offset is not used:
//!   ranges an interrupted run pulled compare equal in the next one.
//! - Progress: the total is the volume's size (and the anchor's block);
//!   an equal range counts as done when compared, a pulled one as it
//!   lands. The pacer takes compared bytes like pulled ones (a digest
//!   reads the range on the source as a stream would): the throttle bounds
//!   the source's reads in both modes.
//! - Metrics: `cstor_replica_rebuild_digest_ranges_total{result}` and
//!   `cstor_replica_rebuild_digest_bytes_total{result}` (`equal`,
//!   `differ`).
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
//! [`REBUILD_DIGEST_RANGE_BYTES`]: crate::limits::REBUILD_DIGEST_RANGE_BYTES
//! [`REBUILD_DIGESTS_IN_FLIGHT`]: crate::limits::REBUILD_DIGESTS_IN_FLIGHT

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
