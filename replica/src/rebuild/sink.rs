//! The rebuild sink: on the owning session's `RebuildStart`, track live
//! writes at once, then pull the missing range from the named source in a
//! background task and report to the target.
//!
//! The task first makes this replica's snapshots the source's
//! (`snapshots`), then dials the source (mutual TLS with this daemon's
//! replica certificate; the source must present a replica certificate
//! too, and allows the pull only for a volume in a replica set:
//! `session::access`), probes it (epoch 0), asks for
//! the live stream and applies each chunk inside the volume's IO order, to
//! the blocks no live write touched since the start (module doc of
//! `rebuild`) — or, for a full rebuild into a copy that holds data,
//! compares the volume by digest and pulls only the ranges that differ
//! (`digest`). It paces itself to the daemon's and the volume's throttle
//! (`state::effective_limit`), reports
//! `RebuildProgress` to the target every [`REBUILD_PROGRESS_INTERVAL`],
//! checkpoints a resume point every [`REBUILD_CHECKPOINT_BYTES`], catches
//! snapshots taken meanwhile (a second snapshot pass), and at the end
//! flushes and sends `RebuildDone` (or `RebuildAbort`). Cancelled with the owning session (a
//! newer target, a disconnect), on volume delete and on shutdown.
//!
//! Runtime-free: the task, the links to the source and the time are the
//! given [`RebuildIo`]'s (the daemon's: [`TokioIo`], TCP and TLS on
//! tokio); pacing, progress intervals and the rate estimate read only its
//! clock.
//!
//! [`TokioIo`]: super::io::TokioIo

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use cstor_proto::limits::MAX_REBUILD_RANGES;
use cstor_proto::{
    Auth, ByteRange, Hello, Message, Name, Opcode, Packet, RebuildAbort, RebuildChunk, RebuildDone,
    RebuildProgress, RebuildSource, RebuildStart, VersionRange,
};
use futures::future::{self, Either};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::io::{deadline, RebuildIo};
use super::source::truncate;
use super::state::{
    effective_limit, encode_floor, io_seq_floor, BlockSet, Pacer, RebuildSettings, RebuildStatus,
    ResumePoint,
};
use super::RebuildError;
use crate::limits::{
    REBUILD_CHECKPOINT_BYTES, REBUILD_CONNECT_TIMEOUT, REBUILD_PIECES_IN_FLIGHT,
    REBUILD_PROGRESS_INTERVAL, REBUILD_STREAM_IDLE_TIMEOUT,
};
use crate::ordering::IoKind;
use crate::registry::VolumeEntry;

mod digest;
mod snapshots;

/// What [`Run::repair_own_changes`] pulls (the log's words).
const OWN: &str = "chunks only this replica changed";

/// Where the sink's reports to the target go: the owning session.
pub struct Reports {
    /// The target's `RebuildStart`; reports carry its session, epoch and
    /// io_seq (the first io_seq this session got live, `J`).
    pub request: Packet,
    /// The session's replies: `RebuildProgress`, then one `RebuildDone` or
    /// `RebuildAbort`, each a reply to `request`.
    pub replies: mpsc::Sender<Packet>,
}

/// Starts a sink run for `entry` (called by the session's read loop, so
/// tracking begins before the next request is admitted) as a task of
/// `io`, which also dials the source and keeps the time; `settings` are
/// the daemon's, `stop` ends the run (the session's end). Errors are
/// refusals to start, answered to the target as an error reply.
pub fn start<I: RebuildIo>(
    entry: &Arc<VolumeEntry>,
    settings: Arc<RebuildSettings>,
    io: I,
    start: RebuildStart,
    reports: Reports,
    stop: &CancellationToken,
) -> Result<(), RebuildError> {
    let volume = &entry.volume;
    let unsupported = |detail: String| RebuildError::Unsupported {
        volume: entry.name.clone(),
        detail,
    };
    if start.volume.as_str() != entry.name {
        return Err(unsupported(format!(
            "asked to rebuild volume {} on a session of it",
            start.volume.as_str()
        )));
    }
    if start.source != RebuildSource::Live {
        // A target names the live volume; its snapshots come along.
        return Err(unsupported(
            "a sink rebuilds the live volume (with its snapshots), not one snapshot".into(),
        ));
    }
    let size = volume
        .size_bytes()
        .map_err(|e| RebuildError::engine(&entry.name, e))?;
    let pre_session_snapshots = volume
        .list_snapshots()
        .map_err(|e| RebuildError::engine(&entry.name, e))?
        .into_iter()
        .map(|s| s.name)
        .collect();
    // A full rebuild into a copy that holds data compares it by digest
    // (module doc of `rebuild`, "By digest"): decided here, before any live
    // write of the session or rebuilt block lands.
    let by_digest = start.from_io_seq == 0 && digest::holds_data(entry)?;
    let cancel = stop.child_token();
    let status = RebuildStatus {
        source: start.peer_address.clone(),
        from_io_seq: start.from_io_seq,
        done_bytes: 0,
        total_bytes: 0,
        rate_bytes_per_sec: 0,
        eta: None,
        running: true,
    };
    let generation = entry.rebuild.begin(
        BlockSet::new(size, volume.block_bytes()),
        cancel.clone(),
        status,
    );
    if let Err(e) = volume.begin_rebuild() {
        entry.rebuild.end(generation, false);
        return Err(RebuildError::engine(&entry.name, e));
    }
    // Writes below the first live one come from the source: this replica
    // is complete through `from_io_seq` only, until the run is done.
    entry.order.hold_watermark(start.from_io_seq);
    // And the engine follows the watermark from now on: rebuilt blocks
    // must not raise the durable io_seq by themselves.
    crate::session::publish_watermark(entry);
    let run = Run {
        entry: Arc::clone(entry),
        settings,
        io: io.clone(),
        start,
        first_live_io_seq: reports.request.io_seq,
        generation,
        pre_session_snapshots,
        io_seq_floor: std::sync::atomic::AtomicU64::new(0),
        by_digest,
    };
    let span =
        tracing::info_span!("rebuild", volume = %entry.name, source = %run.start.peer_address);
    io.spawn(
        async move {
            let outcome = {
                // The cancel first: a run cancelled and done at once is
                // cancelled.
                let cancelled = pin!(cancel.cancelled());
                let pulling = pin!(run.pull(&reports));
                match future::select(cancelled, pulling).await {
                    Either::Left(((), _)) => Err(RebuildError::Cancelled),
                    Either::Right((outcome, _)) => outcome,
                }
            };
            if run.entry.rebuild.end(run.generation, false) {
                run.entry.volume.end_rebuild();
            }
            let message = match outcome {
                Ok(through_io_seq) => {
                    info!(through_io_seq, "rebuild done");
                    Message::RebuildDone(RebuildDone { through_io_seq })
                }
                Err(e) => {
                    warn!(error = %e, "rebuild failed");
                    Message::RebuildAbort(RebuildAbort {
                        status: e.status(),
                        detail: truncate(e.to_string()),
                    })
                }
            };
            // The session may be gone; the target learns it from that.
            let _ = reports.replies.send(reports.request.reply(message)).await;
        }
        .instrument(span)
        .boxed(),
    );
    Ok(())
}

/// The resume point of a rebuild that has not finished on this volume
/// replica (interrupted, or running), if any.
pub fn unfinished(
    volume: &cstor_engine::Volume,
) -> Result<Option<ResumePoint>, cstor_engine::Error> {
    Ok(ResumePoint::decode(&volume.attrs()?))
}

struct Run<I: RebuildIo> {
    entry: Arc<VolumeEntry>,
    settings: Arc<RebuildSettings>,
    /// How the source is dialled, and the time.
    io: I,
    start: RebuildStart,
    first_live_io_seq: u64,
    generation: u64,
    /// The snapshots this replica had when the run started (before any
    /// live request of the session): the only ones it may delete as gone
    /// from the source.
    pre_session_snapshots: BTreeSet<String>,
    /// The volume replica's io_seq floor (`state::io_seq_floor`) when the
    /// run started: every checkpoint keeps it.
    io_seq_floor: std::sync::atomic::AtomicU64,
    /// A full rebuild into a copy that held data when it started: by
    /// digest (`digest`).
    by_digest: bool,
}

/// Counters of one run (all its streams); times are the run's clock's.
struct Progress {
    started: Duration,
    done_bytes: u64,
    total_bytes: u64,
    since_checkpoint: u64,
    last_report: Duration,
    pacer: Pacer,
    /// The total is set for a whole phase (a rebuild by digest: the
    /// volume's size), not by each stream's `RebuildProgress`.
    fixed_total: bool,
}

/// A chunk applied: where it ends and how long it was.
#[derive(Debug, Clone, Copy)]
struct Applied {
    end: u64,
    len_bytes: u64,
}

/// What the stream loop woke up for.
enum Step {
    /// The oldest chunk being applied finished.
    Applied(Result<Applied, RebuildError>),
    /// The next packet of the stream came.
    Received(Result<Packet, RebuildError>),
}

/// Where a stream's chunks go.
#[derive(Clone, Copy)]
enum Dest<'a> {
    /// The live volume, to the blocks no live write touched (resumable).
    Live(Option<ResumePoint>),
    /// A rebuilt snapshot being filled.
    Snapshot(&'a str),
    /// The live volume again, to the blocks no live write touched, for
    /// the ranges this replica changed itself that the live stream did not
    /// carry (`Run::repair_own_changes`); not checkpointed.
    Repair,
}

impl<I: RebuildIo> Run<I> {
    fn engine(&self, e: cstor_engine::Error) -> RebuildError {
        RebuildError::engine(&self.entry.name, e)
    }

    fn peer(&self, detail: String) -> RebuildError {
        RebuildError::Peer {
            peer: self.start.peer_address.clone(),
            detail,
        }
    }

    /// The whole run; returns the `through_io_seq` of the source's live
    /// stream.
    async fn pull(&self, reports: &Reports) -> Result<u64, RebuildError> {
        let volume = &self.entry.volume;
        let attrs = volume.attrs().map_err(|e| self.engine(e))?;
        let resume =
            ResumePoint::decode(&attrs).filter(|p| p.from_io_seq == self.start.from_io_seq);
        // Kept through this run (its checkpoints carry it).
        self.io_seq_floor
            .store(io_seq_floor(&attrs), std::sync::atomic::Ordering::Relaxed);
        // A snapshot an interrupted run created but did not fill is
        // incomplete: it goes before anything else (and is redone).
        let mut deletable = self.pre_session_snapshots.clone();
        if let Some(name) = ResumePoint::filling(&attrs) {
            self.delete_snapshot(&name).await?;
        }
        // Durable before any rebuilt block lands: after a crash the replica
        // reports itself degraded, complete only through `from_io_seq`.
        self.checkpoint(resume, 0, None).await?;
        let by_digest = self.by_digest;
        // What this replica changed itself after `from_io_seq`, before any
        // rebuilt block lands (which would count as a change too); by
        // digest every range is compared instead.
        let own_changes = if by_digest {
            None
        } else {
            Some(self.own_changes()?)
        };
        info!(
            by_digest,
            from_io_seq = self.start.from_io_seq,
            resume_offset = resume.map_or(0, |p| p.next_offset),
            "rebuild started"
        );
        let now = self.io.now();
        let mut progress = Progress {
            started: now,
            done_bytes: 0,
            total_bytes: 0,
            since_checkpoint: 0,
            last_report: now,
            pacer: Pacer::new(now),
            fixed_total: false,
        };
        self.sync_snapshots(reports, &mut progress, resume, &mut deletable)
            .await?;
        let through_io_seq = if by_digest {
            // Every range is compared, so a write only this replica got
            // differs from the source like any other difference: no
            // separate pass over its own changes (module doc).
            self.pull_by_digest(reports, &mut progress).await?
        } else {
            let mut conn = self
                .connect(RebuildSource::Live, self.start.from_io_seq)
                .await?;
            let mut carried = self.chunk_set()?;
            let through_io_seq = self
                .stream(
                    &mut conn,
                    reports,
                    &mut progress,
                    Dest::Live(resume),
                    Some(&mut carried),
                )
                .await?;
            drop(conn);
            if let Some(own) = &own_changes {
                self.repair_own_changes(own, &carried, reports, &mut progress)
                    .await?;
            }
            through_io_seq
        };
        // Snapshots the healthy replicas took while this one was rebuilding.
        self.sync_snapshots(reports, &mut progress, resume, &mut deletable)
            .await?;
        // Everything before the first live io_seq is here; what the stream
        // carried from there on counts only as the live requests arrive
        // (they come on the session, in order, and the watermark follows
        // them). A live request that reaches this replica after the stream
        // brought newer data puts older data back until the requests after
        // it follow; a target that stops in between must find this replica
        // complete only through what it received, not through the stream's
        // end (seed 4418). The commits below record it.
        if !self.entry.rebuild.is_current(self.generation) {
            return Err(RebuildError::Cancelled);
        }
        self.entry
            .order
            .rebuilt_through(through_io_seq.min(self.first_live_io_seq.saturating_sub(1)));
        crate::session::publish_watermark(&self.entry);
        volume.flush().await.map_err(|e| self.engine(e))?;
        // The resume point is spent; `set_attrs` is durable. By digest, the
        // ranges found equal keep this replica's own chunk io_seqs: from
        // now on it reads them as at least `through_io_seq` (its io_seq
        // floor, `state::io_seq_floor`), before it can serve as a source.
        let floor = self.io_seq_floor.load(std::sync::atomic::Ordering::Relaxed);
        let floor = if by_digest {
            floor.max(through_io_seq)
        } else {
            floor
        };
        volume
            .set_attrs(&encode_floor(floor))
            .await
            .map_err(|e| self.engine(e))?;
        progress.total_bytes = progress.total_bytes.max(progress.done_bytes);
        self.report(reports, &mut progress, true).await?;
        Ok(through_io_seq)
    }

    /// Applies one stream (`Ack` already received) until its
    /// `RebuildDone`; returns that done's `through_io_seq`.
    ///
    /// Up to [`REBUILD_PIECES_IN_FLIGHT`] chunks are applied at once (each
    /// under its own IO-order ticket: they never overlap, the stream being
    /// in LBA order) and finish in stream order, so a checkpoint names an
    /// offset below which every chunk was applied. The pacer's pause
    /// delays the next read, not the applies.
    /// Every chunk received (applied or skipped) is marked in `carried`
    /// when given.
    async fn stream(
        &self,
        conn: &mut I::Conn,
        reports: &Reports,
        progress: &mut Progress,
        into: Dest<'_>,
        mut carried: Option<&mut BlockSet>,
    ) -> Result<u64, RebuildError> {
        // This stream's total adds to what the earlier ones did.
        let done_before = progress.done_bytes;
        let mut applying = FuturesOrdered::new();
        // When the pacer's pause ends (the run's clock).
        let mut paused_until: Option<Duration> = None;
        loop {
            // The oldest apply first, then (with room for another) the
            // next packet: always in that order, never at random.
            let step = {
                let receiving = applying.len() < REBUILD_PIECES_IN_FLIGHT;
                let mut next = pin!(self.paced_next(conn, paused_until));
                future::poll_fn(|cx| {
                    if !applying.is_empty() {
                        if let Poll::Ready(Some(applied)) = applying.poll_next_unpin(cx) {
                            return Poll::Ready(Step::Applied(applied));
                        }
                    } else if !receiving {
                        return Poll::Ready(Step::Received(Err(RebuildError::Cancelled)));
                    }
                    if receiving {
                        if let Poll::Ready(packet) = next.as_mut().poll(cx) {
                            return Poll::Ready(Step::Received(packet));
                        }
                    }
                    Poll::Pending
                })
                .await
            };
            let packet = match step {
                Step::Applied(applied) => {
                    let applied = applied?;
                    let mut end = applied.end;
                    if self.applied(applied, into, progress) {
                        // Every apply still in flight finishes first: the
                        // checkpoint commits the pool, and an apply this
                        // task stopped polling may hold what that commit
                        // waits for (the engine's dirty-region bitmap).
                        while let Some(applied) = applying.next().await {
                            let applied = applied?;
                            end = applied.end;
                            self.applied(applied, into, progress);
                        }
                        self.checkpoint_live(into, end, progress).await?;
                    }
                    continue;
                }
                Step::Received(packet) => packet?,
            };
            match packet.message {
                Message::RebuildProgress(p) if !progress.fixed_total => {
                    progress.total_bytes = done_before.saturating_add(p.total_bytes);
                }
                Message::RebuildProgress(_) => {}
                Message::RebuildChunk(chunk) => {
                    let len = chunk.data.len() as u64;
                    if let Some(carried) = carried.as_deref_mut() {
                        carried.mark(chunk.offset, len);
                    }
                    progress.done_bytes = progress.done_bytes.saturating_add(len);
                    applying.push_back(self.apply_to(chunk, into));
                    self.report(reports, progress, false).await?;
                    let limit = effective_limit(
                        self.settings.limit_bytes_per_sec(),
                        self.entry.rebuild.limit_bytes_per_sec(),
                    );
                    let now = self.io.now();
                    let pause = progress.pacer.delay(now, len, limit);
                    paused_until = (!pause.is_zero()).then(|| now.saturating_add(pause));
                }
                Message::RebuildDone(done) => {
                    let mut due = None;
                    while let Some(applied) = applying.next().await {
                        let applied = applied?;
                        if self.applied(applied, into, progress) {
                            due = Some(applied.end);
                        }
                    }
                    if let Some(end) = due {
                        self.checkpoint_live(into, end, progress).await?;
                    }
                    return Ok(done.through_io_seq);
                }
                Message::RebuildAbort(abort) => {
                    return Err(RebuildError::SourceAborted {
                        peer: self.start.peer_address.clone(),
                        status: abort.status,
                        detail: abort.detail,
                    })
                }
                Message::Error(e) => {
                    return Err(RebuildError::SourceAborted {
                        peer: self.start.peer_address.clone(),
                        status: e.status,
                        detail: e.detail,
                    })
                }
                other => {
                    return Err(self.peer(format!(
                        "unexpected message {:#06x} in the stream",
                        other.wire_opcode()
                    )))
                }
            }
        }
    }

    /// An empty set of the live volume's chunks.
    fn chunk_set(&self) -> Result<BlockSet, RebuildError> {
        let volume = &self.entry.volume;
        let size = volume.size_bytes().map_err(|e| self.engine(e))?;
        Ok(BlockSet::new(size, volume.chunk_bytes()))
    }

    /// The chunks of the live volume this replica last wrote after
    /// `from_io_seq` (a pass over the metadata only).
    fn own_changes(&self) -> Result<BlockSet, RebuildError> {
        let volume = &self.entry.volume;
        let mut changed = self.chunk_set()?;
        let mut next = Some(0u64);
        while let Some(from) = next {
            let page = volume
                .changed_chunks(None, self.start.from_io_seq, from)
                .map_err(|e| self.engine(e))?;
            for change in &page.changes {
                changed.mark(change.offset_bytes, change.len_bytes);
            }
            next = page.next_offset;
        }
        Ok(changed)
    }

    /// Makes this replica's copy the source's in the chunks it changed
    /// itself after `from_io_seq` (`own`) that the live stream did not
    /// carry. Such a chunk holds a write the source never got: had the
    /// source got it, its own io_seq for the chunk would be after
    /// `from_io_seq` and the stream would have carried it. It is a write
    /// that never completed (it reached this replica alone, say, before a
    /// partition or a target crash): either content is allowed to a
    /// reader, but the replicas must agree. So those chunks are pulled
    /// from the source by range, whatever their io_seq there, and applied
    /// like the live stream (never over a live write of this run). Usually
    /// there are none.
    async fn repair_own_changes(
        &self,
        own: &BlockSet,
        carried: &BlockSet,
        reports: &Reports,
        progress: &mut Progress,
    ) -> Result<(), RebuildError> {
        let volume = &self.entry.volume;
        let size = volume.size_bytes().map_err(|e| self.engine(e))?;
        let chunk = volume.chunk_bytes().max(1);
        let mut ranges: Vec<ByteRange> = Vec::new();
        let chunks = size.div_ceil(chunk);
        let mut c = 0u64;
        while c < chunks {
            if !own.contains(c) || carried.contains(c) {
                c += 1;
                continue;
            }
            let offset = c * chunk;
            let len_bytes = chunk.min(size - offset);
            match ranges.last_mut() {
                Some(last) if last.offset.saturating_add(last.len_bytes) == offset => {
                    last.len_bytes += len_bytes;
                }
                _ => ranges.push(ByteRange { offset, len_bytes }),
            }
            c += 1;
            if ranges.len() == MAX_REBUILD_RANGES {
                self.pull_ranges(std::mem::take(&mut ranges), reports, progress, OWN)
                    .await?;
            }
        }
        if !ranges.is_empty() {
            self.pull_ranges(ranges, reports, progress, OWN).await?;
        }
        Ok(())
    }

    /// One stream of `ranges` of the live volume from the source (`what`
    /// they are, for the log), applied as [`Dest::Repair`]; returns its
    /// `through_io_seq`.
    async fn pull_ranges(
        &self,
        ranges: Vec<ByteRange>,
        reports: &Reports,
        progress: &mut Progress,
        what: &str,
    ) -> Result<u64, RebuildError> {
        let bytes: u64 = ranges.iter().map(|r| r.len_bytes).sum();
        info!(ranges = ranges.len(), bytes, "rebuild pulls the {what}");
        let mut conn = self.connect(RebuildSource::Ranges(ranges), 0).await?;
        self.stream(&mut conn, reports, progress, Dest::Repair, None)
            .await
    }

    /// The next packet of the stream, once the pacer's pause is over.
    async fn paced_next(
        &self,
        conn: &mut I::Conn,
        paused_until: Option<Duration>,
    ) -> Result<Packet, RebuildError> {
        if let Some(until) = paused_until {
            let left = until.saturating_sub(self.io.now());
            if !left.is_zero() {
                self.io.sleep(left).await;
            }
        }
        self.next(conn).await
    }

    /// Applies one chunk where it goes; returns its end offset and length.
    async fn apply_to(&self, chunk: RebuildChunk, into: Dest<'_>) -> Result<Applied, RebuildError> {
        let len_bytes = chunk.data.len() as u64;
        let end = match into {
            Dest::Live(resume) => self.apply(&chunk, resume).await?,
            Dest::Repair => self.apply(&chunk, None).await?,
            Dest::Snapshot(name) => {
                self.apply_snapshot(&chunk, name).await?;
                chunk.offset.saturating_add(len_bytes)
            }
        };
        Ok(Applied { end, len_bytes })
    }

    /// A chunk was applied, and every one before it in the stream: counts
    /// it toward the live volume's next resume point; true when that is
    /// due ([`Self::checkpoint_live`], once no apply is in flight).
    fn applied(&self, applied: Applied, into: Dest<'_>, progress: &mut Progress) -> bool {
        if !matches!(into, Dest::Live(_)) {
            return false;
        }
        progress.since_checkpoint = progress.since_checkpoint.saturating_add(applied.len_bytes);
        progress.since_checkpoint >= REBUILD_CHECKPOINT_BYTES
    }

    /// Persists the live volume's resume point at `end` (every chunk below
    /// it applied, none in flight).
    async fn checkpoint_live(
        &self,
        into: Dest<'_>,
        end: u64,
        progress: &mut Progress,
    ) -> Result<(), RebuildError> {
        if let Dest::Live(resume) = into {
            self.checkpoint(resume, end, None).await?;
            progress.since_checkpoint = 0;
        }
        Ok(())
    }

    /// Dials the source, secures the connection (the source must present
    /// a replica certificate) and opens a probe session on the volume.
    async fn probe(&self) -> Result<(I::Conn, Name, String), RebuildError> {
        let (mut conn, local) = self.io.dial(self.start.peer_address.as_str()).await?;
        let volume = Name::new(self.entry.name.clone())
            .map_err(|e| self.peer(format!("volume name: {e}")))?;
        let hello = Message::Hello(Hello {
            versions: VersionRange::SUPPORTED,
            volume: volume.clone(),
            next_io_seq: 0,
            auth: Auth::None,
        });
        match self.call(&mut conn, 0, hello).await? {
            Message::HelloAck(ack) if ack.block_size_bytes == self.entry.volume.block_bytes() => {
                Ok((conn, volume, local))
            }
            Message::HelloAck(ack) => Err(self.peer(format!(
                "source has {}-byte blocks, this replica {}",
                ack.block_size_bytes,
                self.entry.volume.block_bytes()
            ))),
            other => Err(self.refused("Hello", other)),
        }
    }

    /// Dials the source, probes the volume and asks for the stream of
    /// `source` (live volume or a snapshot) after `from_io_seq`.
    async fn connect(
        &self,
        source: RebuildSource,
        from_io_seq: u64,
    ) -> Result<I::Conn, RebuildError> {
        let connecting = async {
            let (mut conn, volume, local) = self.probe().await?;
            let request = Message::RebuildStart(RebuildStart {
                peer_address: local,
                volume,
                from_io_seq,
                source,
            });
            match self.call(&mut conn, 1, request).await? {
                Message::Ack(Opcode::RebuildStart) => Ok(conn),
                other => Err(self.refused("RebuildStart", other)),
            }
        };
        deadline(&self.io, REBUILD_CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| self.peer(format!("no answer within {REBUILD_CONNECT_TIMEOUT:?}")))?
    }

    fn refused(&self, what: &str, answer: Message) -> RebuildError {
        match answer {
            Message::Error(e) => RebuildError::SourceAborted {
                peer: self.start.peer_address.clone(),
                status: e.status,
                detail: format!("{what} refused: {}", e.detail),
            },
            Message::RebuildAbort(a) => RebuildError::SourceAborted {
                peer: self.start.peer_address.clone(),
                status: a.status,
                detail: a.detail,
            },
            other => self.peer(format!(
                "unexpected answer {:#06x} to {what}",
                other.wire_opcode()
            )),
        }
    }

    async fn call(
        &self,
        conn: &mut I::Conn,
        io_seq: u64,
        message: Message,
    ) -> Result<Message, RebuildError> {
        let packet = Packet {
            session_id: 0,
            epoch: 0,
            io_seq,
            message,
        };
        conn.send(packet)
            .await
            .map_err(|e| self.peer(format!("cannot send: {e}")))?;
        Ok(self.next(conn).await?.message)
    }

    async fn next(&self, conn: &mut I::Conn) -> Result<Packet, RebuildError> {
        match deadline(&self.io, REBUILD_STREAM_IDLE_TIMEOUT, conn.next()).await {
            Err(_) => Err(self.peer(format!("silent for {REBUILD_STREAM_IDLE_TIMEOUT:?}"))),
            Ok(None) => Err(self.peer("connection closed".into())),
            // "bad frame: …" or "undecodable message: …" (the link's words).
            Ok(Some(Err(e))) => Err(self.peer(e.0)),
            Ok(Some(Ok(packet))) => Ok(packet),
        }
    }

    /// Applies one chunk to the blocks no live write touched; returns its
    /// end offset.
    async fn apply(
        &self,
        chunk: &RebuildChunk,
        resume: Option<ResumePoint>,
    ) -> Result<u64, RebuildError> {
        let volume = &self.entry.volume;
        let block = volume.block_bytes();
        let bad = |detail: String| self.peer(detail);
        if chunk.block_size_bytes != block {
            return Err(bad(format!(
                "chunk of {}-byte blocks for a volume of {block}-byte blocks",
                chunk.block_size_bytes
            )));
        }
        let block_len = usize::try_from(block).map_err(|_| bad("block size".into()))?;
        let end = chunk
            .offset
            .checked_add(chunk.data.len() as u64)
            .ok_or_else(|| bad(format!("chunk at {} overflows", chunk.offset)))?;
        let newest = chunk.block_io_seqs.iter().copied().max().unwrap_or(0);
        if resume.is_some_and(|p| p.skips(end, newest)) {
            return Ok(end);
        }
        let mut ticket = self.entry.order.admit(IoKind::Write(chunk.offset..end));
        ticket.ready().await;
        let first_block = chunk.offset / u64::from(block);
        let accept = self
            .entry
            .rebuild
            .rebuildable(first_block, chunk.block_io_seqs.len());
        let mut i = 0;
        while i < accept.len() {
            if !accept.get(i).copied().unwrap_or(false) {
                i += 1;
                continue;
            }
            let mut j = i;
            while accept.get(j).copied().unwrap_or(false) {
                j += 1;
            }
            let data = chunk
                .data
                .get(i * block_len..j * block_len)
                .ok_or_else(|| bad("chunk data shorter than its blocks".into()))?;
            let seqs = chunk
                .block_io_seqs
                .get(i..j)
                .ok_or_else(|| bad("chunk io_seqs".into()))?;
            let offset = chunk.offset + (i * block_len) as u64;
            volume
                .apply_rebuild(offset, data, seqs)
                .await
                .map_err(|e| self.engine(e))?;
            i = j;
        }
        drop(ticket);
        Ok(end)
    }

    /// Persists the resume point (durable, with everything applied so far).
    async fn checkpoint(
        &self,
        resume: Option<ResumePoint>,
        next_offset: u64,
        filling: Option<&str>,
    ) -> Result<(), RebuildError> {
        if !self.entry.rebuild.is_current(self.generation) {
            return Err(RebuildError::Cancelled);
        }
        let point = ResumePoint {
            from_io_seq: self.start.from_io_seq,
            first_live_io_seq: resume.map_or(self.first_live_io_seq, |p| {
                p.first_live_io_seq.min(self.first_live_io_seq)
            }),
            next_offset: resume.map_or(next_offset, |p| p.next_offset.max(next_offset)),
        };
        self.entry
            .volume
            .set_attrs(&point.encode_with(
                filling,
                self.io_seq_floor.load(std::sync::atomic::Ordering::Relaxed),
            ))
            .await
            .map_err(|e| self.engine(e))
    }

    /// Updates the status and, every interval (or when `last`), tells the
    /// target.
    async fn report(
        &self,
        reports: &Reports,
        progress: &mut Progress,
        last: bool,
    ) -> Result<(), RebuildError> {
        let total = progress.total_bytes.max(progress.done_bytes);
        let now = self.io.now();
        let (rate, eta) = RebuildStatus::estimate(
            progress.done_bytes,
            total,
            now.saturating_sub(progress.started),
        );
        self.entry.rebuild.update(self.generation, |s| {
            s.done_bytes = progress.done_bytes;
            s.total_bytes = total;
            s.rate_bytes_per_sec = rate;
            s.eta = eta;
        });
        if !last && now.saturating_sub(progress.last_report) < REBUILD_PROGRESS_INTERVAL {
            return Ok(());
        }
        progress.last_report = now;
        let message = Message::RebuildProgress(RebuildProgress {
            done_bytes: progress.done_bytes,
            total_bytes: total,
        });
        reports
            .replies
            .send(reports.request.reply(message))
            .await
            .map_err(|_| RebuildError::Cancelled)
    }
}
