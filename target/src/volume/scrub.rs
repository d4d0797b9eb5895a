//! Scrub: walks the volume range by range, compares the healthy replicas'
//! digests of each, and repairs a minority copy from the majority
//! (docs/checksums-design.md, "Scrub and rebuild by digest"; operator view
//! in docs/replica.md, "Scrub").
//!
//! One scrub per volume, a task of the target process started and stopped
//! through the management API (`cstor ctl scrub start|stop|status`) or by
//! the schedule (`--scrub-interval`). Each step, for the range of
//! [`SCRUB_RANGE_BYTES`] at the cursor:
//! 1. an [`Op::Digest`] asks every healthy replica for the digest of the
//!    range; it has its place in the io_seq order, so concurrent writes
//!    cannot make healthy copies look different (controller rule 8);
//! 2. [`judge::judge`] decides: agree → next range; a majority (or the
//!    only copies that verified, against copies naming bad blocks) → the
//!    other copies' bad blocks, or the whole range where a copy differs,
//!    are read from a replica of the winning group ([`Op::ReadFrom`]) and
//!    written back as an ordinary write ([`Op::Repair`], to every linked
//!    replica, refused as moot if a write to the range came since the
//!    digest), then the range is compared again; no majority → the range
//!    is reported undecided and left as it is;
//! 3. at most [`SCRUB_RANGE_ATTEMPTS`] compares per range; one that still
//!    differs is reported undecided.
//!
//! Pace: the start's rate if it names one, else the volume's rebuild
//! throttle ([`Volume::set_rebuild_throttle`]) if set, else
//! [`SCRUB_DEFAULT_BYTES_PER_SEC`]; read again after every range, so a
//! throttle change applies at once. The scrub holds no write and takes no
//! lock: its cost to IO is its own digests, reads and repairs.
//!
//! The cursor (and the counters of the run) live in the target process;
//! with `--scrub-state-dir DIR` they are also persisted in
//! `DIR/scrub-<volume>.state` (at most every [`SCRUB_PERSIST_EVERY`] while
//! running, and when a scrub stops or ends), so a restarted target's `scrub
//! start` resumes where the last one stopped unless told `--from-start`.
//! Without it a restarted target starts from the beginning. A pass that
//! reaches the end sets the cursor back to 0.

mod judge;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cstor_mgmt::exposition::{Exposition, MetricType};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use judge::{judge, Verdict};

use super::controller::ReplicaIndex;
use super::{Completion, Op, Volume, VolumeError};
use crate::limits::{
    MAX_SCRUB_REPORTED_RANGES, SCRUB_DEFAULT_BYTES_PER_SEC, SCRUB_PERSIST_EVERY,
    SCRUB_RANGE_ATTEMPTS, SCRUB_RANGE_BYTES, SCRUB_UNAVAILABLE_PAUSE,
};

/// The block a digest covers (`cstor_engine::limits::SUM_BLOCK_BYTES`):
/// a scrub covers the volume up to its last whole one.
const DIGEST_BLOCK_BYTES: u64 = 4096;

/// Where a scrub is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubState {
    /// Never started in this process.
    Idle,
    Running,
    /// Stopped by the operator before the end; resumable.
    Stopped,
    /// The last pass reached the end of the volume.
    Done,
    /// Ended by an error it cannot go on from (fenced, closed).
    Failed,
}

impl ScrubState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScrubState::Idle => "idle",
            ScrubState::Running => "running",
            ScrubState::Stopped => "stopped",
            ScrubState::Done => "done",
            ScrubState::Failed => "failed",
        }
    }
}

/// What became of a range a scrub found not agreeing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Repaired from the majority (the compare after it agreed).
    Repaired,
    /// Left as it is: no copy could be chosen, or it still differed.
    Undecided,
}

impl RangeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RangeOutcome::Repaired => "repaired",
            RangeOutcome::Undecided => "undecided",
        }
    }
}

/// A range a scrub found not agreeing, for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeReport {
    pub offset: u64,
    pub len: u64,
    pub outcome: RangeOutcome,
    /// Data addresses of the replicas whose copy differed or named bad
    /// blocks (all of them, for an undecided range).
    pub replicas: Vec<String>,
    pub detail: String,
}

/// A scrub's status (the run in progress, or the last one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubStatus {
    pub state: ScrubState,
    /// Next byte to compare.
    pub cursor: u64,
    /// Bytes a pass covers (the volume up to its last whole 4 KiB block).
    pub total_bytes: u64,
    /// Bytes compared by this run.
    pub scrubbed_bytes: u64,
    pub ranges_compared: u64,
    /// Ranges whose copies did not agree at their first compare.
    pub mismatched_ranges: u64,
    /// Logical blocks written back.
    pub repaired_blocks: u64,
    /// Ranges reported undecided.
    pub undecided_ranges: u64,
    /// Ranges where a copy named blocks that failed their checksum.
    pub bad_block_ranges: u64,
    /// The first [`MAX_SCRUB_REPORTED_RANGES`] ranges that did not agree.
    pub ranges: Vec<RangeReport>,
    /// The pace it runs at (bytes per second).
    pub bytes_per_second: u64,
    /// Estimated time to the end of the pass at the rate seen so far.
    pub eta: Option<Duration>,
    /// Passes that reached the end, since the state was first kept.
    pub passes_completed: u64,
    /// Why it last failed or paused, if it did.
    pub last_error: Option<String>,
    /// `--scrub-interval`, if scheduled.
    pub interval: Option<Duration>,
}

impl ScrubStatus {
    fn new() -> ScrubStatus {
        ScrubStatus {
            state: ScrubState::Idle,
            cursor: 0,
            total_bytes: 0,
            scrubbed_bytes: 0,
            ranges_compared: 0,
            mismatched_ranges: 0,
            repaired_blocks: 0,
            undecided_ranges: 0,
            bad_block_ranges: 0,
            ranges: Vec::new(),
            bytes_per_second: 0,
            eta: None,
            passes_completed: 0,
            last_error: None,
            interval: None,
        }
    }

    fn report(&mut self, report: RangeReport) {
        if self.ranges.len() < MAX_SCRUB_REPORTED_RANGES {
            self.ranges.push(report);
        }
    }
}

/// Why a scrub request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrubError {
    #[error("a scrub of the volume is already running")]
    Running,
    #[error("the volume is fenced or closed: {0}")]
    Volume(VolumeError),
}

/// Counters since the process started (the metrics).
#[derive(Debug, Default)]
struct Totals {
    bytes: AtomicU64,
    mismatched: AtomicU64,
    repaired_blocks: AtomicU64,
    undecided: AtomicU64,
}

struct Inner {
    volume: Volume,
    name: String,
    state_file: Option<PathBuf>,
    status: Mutex<ScrubStatus>,
    /// The running task's stop token.
    running: Mutex<Option<CancellationToken>>,
    totals: Totals,
}

/// The scrub of one volume. Cloning shares it.
#[derive(Clone)]
pub struct Scrub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scrub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrub")
            .field("volume", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Scrub {
    /// The scrub of `volume`; with `state_dir`, its cursor is persisted
    /// there (module doc) and read back now.
    pub fn new(volume: Volume, name: impl Into<String>, state_dir: Option<&Path>) -> Scrub {
        let name = name.into();
        let state_file = state_dir.map(|dir| dir.join(format!("scrub-{name}.state")));
        let mut status = ScrubStatus::new();
        if let Some(path) = &state_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let saved = Saved::parse(&text);
                    status.cursor = saved.cursor;
                    status.passes_completed = saved.passes;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "scrub state unreadable: starting from the beginning");
                }
            }
        }
        Scrub {
            inner: Arc::new(Inner {
                volume,
                name,
                state_file,
                status: Mutex::new(status),
                running: Mutex::new(None),
                totals: Totals::default(),
            }),
        }
    }

    /// Starts a scrub from the cursor (or from the beginning with
    /// `from_start`, or when the last pass ended), paced at
    /// `bytes_per_second` if not 0 (module doc).
    pub fn start(
        &self,
        from_start: bool,
        bytes_per_second: u64,
    ) -> Result<ScrubStatus, ScrubError> {
        let mut running = self.inner.running.lock();
        if running.is_some() {
            return Err(ScrubError::Running);
        }
        let status = self.inner.volume.status();
        if status.fenced {
            return Err(ScrubError::Volume(VolumeError::Fenced));
        }
        let total = status.size_bytes / DIGEST_BLOCK_BYTES * DIGEST_BLOCK_BYTES;
        {
            let mut s = self.inner.status.lock();
            let resume = !from_start && s.cursor < total;
            let passes = s.passes_completed;
            let interval = s.interval;
            let cursor = if resume { s.cursor } else { 0 };
            *s = ScrubStatus::new();
            s.state = ScrubState::Running;
            s.cursor = cursor;
            s.total_bytes = total;
            s.passes_completed = passes;
            s.interval = interval;
        }
        let stop = CancellationToken::new();
        *running = Some(stop.clone());
        tracing::info!(volume = %self.inner.name, from_start, "scrub started");
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let end = run(&inner, &stop, bytes_per_second).await;
            // Persisted before the end shows: whoever sees it ended finds
            // the cursor saved. The running slot and the state change
            // together (the lock order of `start`).
            persist(&inner);
            let mut running = inner.running.lock();
            {
                let mut s = inner.status.lock();
                s.state = end;
                s.eta = None;
            }
            *running = None;
            drop(running);
            tracing::info!(volume = %inner.name, state = end.as_str(), "scrub ended");
        });
        drop(running);
        Ok(self.status())
    }

    /// Stops a running scrub (its cursor is kept: `start` resumes there).
    /// Returns once it stopped, or at once when none runs.
    pub async fn stop(&self) -> ScrubStatus {
        let token = self.inner.running.lock().clone();
        if let Some(token) = token {
            token.cancel();
            while self.inner.running.lock().is_some() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.status()
    }

    pub fn status(&self) -> ScrubStatus {
        self.inner.status.lock().clone()
    }

    /// Starts a scrub every `interval` from the last start (when none is
    /// running then), until `shutdown`. A stopped scrub is resumed.
    pub fn schedule(&self, interval: Duration, shutdown: CancellationToken) {
        self.inner.status.lock().interval = Some(interval);
        let scrub = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(interval) => {}
                }
                match scrub.start(false, 0) {
                    Ok(_) => tracing::info!(volume = %scrub.inner.name, "scheduled scrub started"),
                    Err(e) => {
                        tracing::info!(volume = %scrub.inner.name, error = %e, "scheduled scrub not started")
                    }
                }
            }
            let _ = scrub.stop().await;
        });
    }

    /// The scrub's metrics (docs/metrics.md, "Scrub").
    pub fn render_metrics(&self, out: &mut Exposition) {
        let v = [("volume", self.inner.name.as_str())];
        let t = &self.inner.totals;
        let counters = [
            (
                "cstor_scrub_bytes_total",
                "Bytes of the volume scrubs compared.",
                &t.bytes,
            ),
            (
                "cstor_scrub_mismatched_ranges_total",
                "Ranges whose replicas' copies did not agree when first compared.",
                &t.mismatched,
            ),
            (
                "cstor_scrub_repaired_blocks_total",
                "Logical blocks scrubs wrote back from the majority.",
                &t.repaired_blocks,
            ),
            (
                "cstor_scrub_undecided_ranges_total",
                "Ranges scrubs could not decide (no majority of verified copies) and left as they were.",
                &t.undecided,
            ),
        ];
        for (name, help, value) in counters {
            out.family(name, MetricType::Counter, help);
            out.sample(name, &v, value.load(Ordering::Relaxed));
        }
        let s = self.status();
        out.family(
            "cstor_scrub_running",
            MetricType::Gauge,
            "1 while a scrub of the volume runs.",
        );
        out.sample(
            "cstor_scrub_running",
            &v,
            u64::from(s.state == ScrubState::Running),
        );
        out.family(
            "cstor_scrub_cursor_bytes",
            MetricType::Gauge,
            "Where the scrub is (the next byte it compares).",
        );
        out.sample("cstor_scrub_cursor_bytes", &v, s.cursor);
    }
}

/// Runs a scrub from the status's cursor to the end or until stopped; the
/// state it ends in.
async fn run(inner: &Inner, stop: &CancellationToken, rate: u64) -> ScrubState {
    let started = Instant::now();
    let mut persisted = Instant::now();
    let (mut cursor, total) = {
        let s = inner.status.lock();
        (s.cursor, s.total_bytes)
    };
    let block = u64::from(inner.volume.block_size().max(1));
    let mut done = 0u64;
    while cursor < total {
        if stop.is_cancelled() {
            return ScrubState::Stopped;
        }
        let len = SCRUB_RANGE_BYTES.min(total - cursor);
        // Stopping drops the range's requests (a repair already submitted
        // still completes: it is an ordinary write); the cursor stays at
        // the range, compared again on resume.
        let outcome = tokio::select! {
            () = stop.cancelled() => return ScrubState::Stopped,
            outcome = scrub_range(inner, cursor, len, block) => outcome,
        };
        match outcome {
            Ok(()) => {}
            Err(VolumeError::Unavailable) | Err(VolumeError::ReadOnly { .. }) => {
                inner.status.lock().last_error =
                    Some("no healthy replica to compare: waiting".into());
                tokio::select! {
                    () = stop.cancelled() => return ScrubState::Stopped,
                    () = tokio::time::sleep(SCRUB_UNAVAILABLE_PAUSE) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(volume = %inner.name, error = %e, "scrub failed");
                inner.status.lock().last_error = Some(e.to_string());
                return ScrubState::Failed;
            }
        }
        cursor += len;
        done += len;
        inner.totals.bytes.fetch_add(len, Ordering::Relaxed);
        let pace = pace(inner, rate);
        {
            let mut s = inner.status.lock();
            s.cursor = cursor;
            s.scrubbed_bytes = done;
            s.bytes_per_second = pace;
            s.eta = eta(done, total - cursor, started.elapsed());
        }
        if persisted.elapsed() >= SCRUB_PERSIST_EVERY {
            persist(inner);
            persisted = Instant::now();
        }
        // Paced: `done` bytes take at least done / pace seconds.
        let due = Duration::from_secs_f64(done as f64 / pace.max(1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::select! {
                () = stop.cancelled() => return ScrubState::Stopped,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
    let mut s = inner.status.lock();
    s.cursor = 0;
    s.passes_completed += 1;
    ScrubState::Done
}

/// The pace (module doc).
fn pace(inner: &Inner, rate: u64) -> u64 {
    if rate > 0 {
        return rate;
    }
    match inner.volume.rebuild_throttle() {
        0 => SCRUB_DEFAULT_BYTES_PER_SEC,
        throttle => throttle,
    }
}

/// Time left for `left` bytes at the rate of `done` in `elapsed`.
fn eta(done: u64, left: u64, elapsed: Duration) -> Option<Duration> {
    if done == 0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        elapsed.as_secs_f64() * left as f64 / done as f64,
    ))
}

/// Compares one range, repairing what the verdicts allow (module doc).
async fn scrub_range(inner: &Inner, offset: u64, len: u64, block: u64) -> Result<(), VolumeError> {
    let len_bytes = u32::try_from(len).map_err(|_| VolumeError::OutOfRange)?;
    let mut found: Option<(Vec<ReplicaIndex>, bool)> = None;
    let mut repaired = 0u64;
    let mut last = String::new();
    for attempt in 0..SCRUB_RANGE_ATTEMPTS {
        let (io_seq, replies, errors) = match inner
            .volume
            .submit(Op::Digest { offset, len_bytes })
            .await?
        {
            Completion::Digests {
                io_seq,
                replies,
                errors,
            } => (io_seq, replies, errors),
            other => {
                return Err(VolumeError::Refused(format!(
                    "unexpected answer to a digest: {other:?}"
                )))
            }
        };
        for (replica, error) in &errors {
            tracing::warn!(volume = %inner.name, replica, offset, %error, "no digest from a replica");
        }
        let verdict = judge(offset, len, &replies);
        if attempt == 0 && verdict != Verdict::Unanswered {
            inner.status.lock().ranges_compared += 1;
        }
        match verdict {
            Verdict::Unanswered => {
                if !errors.is_empty() {
                    // The healthy replicas refused the digest (an older
                    // version, say): not compared, said so, and on. (None
                    // answered at all, they went down: compared again once
                    // one is back.)
                    let detail = errors
                        .iter()
                        .map(|(r, e)| format!("replica {r}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    inner.status.lock().last_error = Some(format!("digest at {offset}: {detail}"));
                    return Ok(());
                }
                return Err(VolumeError::Unavailable);
            }
            Verdict::Agree => {
                if let Some((replicas, _)) = found {
                    let detail =
                        format!("{} bytes written back; the copies agree", repaired * block);
                    record(
                        inner,
                        offset,
                        len,
                        RangeOutcome::Repaired,
                        &replicas,
                        detail,
                    );
                }
                return Ok(());
            }
            Verdict::Undecided { why } => {
                let all: Vec<ReplicaIndex> = replies.iter().map(|(r, _)| *r).collect();
                note_first(inner, &mut found, &all, false);
                inner.totals.undecided.fetch_add(1, Ordering::Relaxed);
                inner.status.lock().undecided_ranges += 1;
                tracing::warn!(volume = %inner.name, offset, len, %why, "scrub: range undecided");
                record(inner, offset, len, RangeOutcome::Undecided, &all, why);
                return Ok(());
            }
            Verdict::Repair {
                source,
                ranges,
                differing,
                bad,
            } => {
                let mut involved = differing.clone();
                involved.extend(&bad);
                note_first(inner, &mut found, &involved, !bad.is_empty());
                tracing::warn!(
                    volume = %inner.name, offset, len, source, ?differing, ?bad,
                    "scrub: copies differ; repairing from the majority"
                );
                for (at, n) in ranges {
                    match repair(inner, source, at, n, io_seq).await {
                        Ok(()) => {
                            let blocks = n.div_ceil(block);
                            repaired += blocks;
                            inner
                                .totals
                                .repaired_blocks
                                .fetch_add(blocks, Ordering::Relaxed);
                            inner.status.lock().repaired_blocks += blocks;
                        }
                        Err(VolumeError::Refused(why)) => {
                            // Moot (written since) or refused: compare again.
                            last = why;
                            break;
                        }
                        Err(VolumeError::NoSpace) => {
                            last = VolumeError::NoSpace.to_string();
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    let all: Vec<ReplicaIndex> = found.as_ref().map(|(r, _)| r.clone()).unwrap_or_default();
    inner.totals.undecided.fetch_add(1, Ordering::Relaxed);
    inner.status.lock().undecided_ranges += 1;
    let detail = format!(
        "still differs after {SCRUB_RANGE_ATTEMPTS} compares ({} bytes written back){}",
        repaired * block,
        if last.is_empty() {
            String::new()
        } else {
            format!("; last: {last}")
        }
    );
    record(inner, offset, len, RangeOutcome::Undecided, &all, detail);
    Ok(())
}

/// Counts the range as mismatched at its first verdict that is not an
/// agreement.
fn note_first(
    inner: &Inner,
    found: &mut Option<(Vec<ReplicaIndex>, bool)>,
    replicas: &[ReplicaIndex],
    bad: bool,
) {
    if found.is_some() {
        return;
    }
    *found = Some((replicas.to_vec(), bad));
    inner.totals.mismatched.fetch_add(1, Ordering::Relaxed);
    let mut s = inner.status.lock();
    s.mismatched_ranges += 1;
    if bad {
        s.bad_block_ranges += 1;
    }
}

fn record(
    inner: &Inner,
    offset: u64,
    len: u64,
    outcome: RangeOutcome,
    replicas: &[ReplicaIndex],
    detail: String,
) {
    let status = inner.volume.status();
    let replicas = replicas
        .iter()
        .map(|r| {
            status
                .replicas
                .get(*r)
                .map_or_else(|| format!("replica {r}"), |(addr, _)| addr.to_string())
        })
        .collect();
    inner.status.lock().report(RangeReport {
        offset,
        len,
        outcome,
        replicas,
        detail,
    });
}

/// Reads `[offset, offset + len)` from `source` and writes it back,
/// guarded by the digest numbered `guard` (controller rule 8).
async fn repair(
    inner: &Inner,
    source: ReplicaIndex,
    offset: u64,
    len: u64,
    guard: u64,
) -> Result<(), VolumeError> {
    let len_bytes = u32::try_from(len).map_err(|_| VolumeError::OutOfRange)?;
    let data: Bytes = match inner
        .volume
        .submit(Op::ReadFrom {
            replica: source,
            offset,
            len_bytes,
        })
        .await?
    {
        Completion::Data(data) => data,
        other => {
            return Err(VolumeError::Refused(format!(
                "unexpected answer to a read: {other:?}"
            )))
        }
    };
    inner
        .volume
        .submit(Op::Repair {
            offset,
            data,
            guard,
        })
        .await
        .map(drop)
}

/// What the state file keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Saved {
    cursor: u64,
    passes: u64,
}

impl Saved {
    /// `key value` lines; unknown keys and bad values are ignored (a
    /// damaged file costs a scrub from the beginning, nothing more).
    fn parse(text: &str) -> Saved {
        let mut saved = Saved::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "cursor" => saved.cursor = value,
                "passes" => saved.passes = value,
                _ => {}
            }
        }
        saved
    }

    fn render(self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!(
            "cursor {}\npasses {}\nsaved_unix {now}\n",
            self.cursor, self.passes
        )
    }
}

/// Writes the cursor to the state file, if there is one: a temporary file
/// synced, then renamed over it.
fn persist(inner: &Inner) {
    let Some(path) = &inner.state_file else {
        return;
    };
    let saved = {
        let s = inner.status.lock();
        Saved {
            cursor: s.cursor,
            passes: s.passes_completed,
        }
    };
    if let Err(e) = write_atomically(path, saved.render().as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot persist the scrub cursor");
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("state.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Parses a `--scrub-interval`: a number with an optional unit `s`, `m`,
/// `h` or `d` (seconds without one).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (s, m, h, d), e.g. 24h"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("{text:?}: unknown unit {other:?} (s, m, h, d)")),
    };
    let secs = n
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("{text:?}: too long"))?;
    let interval = Duration::from_secs(secs);
    if interval < crate::limits::MIN_SCRUB_INTERVAL {
        return Err(format!(
            "{text:?}: at least {}s",
            crate::limits::MIN_SCRUB_INTERVAL.as_secs()
        ));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_a_damaged_one_means_the_beginning() {
        let saved = Saved {
            cursor: 5 << 20,
            passes: 3,
        };
        assert_eq!(Saved::parse(&saved.render()), saved);
        assert_eq!(Saved::parse("garbage\ncursor x\n"), Saved::default());
        assert_eq!(Saved::parse(""), Saved::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scrub-v.state");
        write_atomically(&path, saved.render().as_bytes()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(Saved::parse(&text), saved);
    }

    #[test]
    fn intervals_take_a_unit_and_a_floor() {
        assert_eq!(parse_interval("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_interval("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_interval("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_interval("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_interval("10s").is_err());
        assert!(parse_interval("").is_err());
        assert!(parse_interval("h").is_err());
        assert!(parse_interval("5w").is_err());
        assert!(parse_interval("99999999999999999999d").is_err());
    }

    #[test]
    fn the_eta_extrapolates_the_rate_so_far() {
        assert_eq!(eta(0, 100, Duration::from_secs(1)), None);
        assert_eq!(
            eta(100, 300, Duration::from_secs(2)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(eta(100, 0, Duration::from_secs(2)), Some(Duration::ZERO));
    }
}
