//! Scale bench (issue #18): two goals measured on a 1 TiB thin volume.
//!
//! 1. Metadata in memory per data mapped (goal: ≤ 0.1 % of the data it
//!    maps). A pool with block checksums (the default) and 64 KiB chunks is
//!    created on a sparse file sized for 1 TiB of data plus the pool's
//!    metadata; a 1 TiB thin volume on it is written "fully" over a prefix
//!    of `CSTOR_SCALE_GIB` GiB: one 4 KiB write into each 64 KiB chunk
//!    (the first write into a chunk zero-fills the rest, so the prefix costs
//!    its full size in disk). Memory is proportional to the chunks mapped,
//!    so the figures per TiB are those of the prefix scaled per chunk
//!    mapped. Printed: the pool's own estimates (`PoolStats`: chunk maps
//!    plus allocator bitmap, and the block checksum pages), each per TiB
//!    mapped and as % of the data mapped; and the heap the process really
//!    holds, counted by a `#[global_allocator]` wrapper around `System`,
//!    before and after the writes, to check the estimates against it. Part
//!    of the estimate is sized by the pool's capacity, not by the data
//!    mapped (allocator bitmap, checksum page table: what it holds before
//!    the writes), and the checksum pages in memory are bounded by the
//!    pool's checksum cache (`PoolOptions::checksum_cache_bytes`, default
//!    256 MiB), so a projection to the whole volume mapped is printed too:
//!    maps scaled per chunk, checksum pages up to that bound.
//! 2. A checkpoint never stalls IO (goal: p99 write latency during a
//!    checkpoint within 2× of the p99 without one). On the filled volume
//!    (so a checkpoint encodes one entry per chunk written), 4 KiB random
//!    overwrites at queue depth 32 over the prefix for `CSTOR_SCALE_SECS`
//!    while a task forces a checkpoint (`Pool::checkpoint`) about every
//!    second. Writes whose [start, end) overlaps a checkpoint's are
//!    "during", the others "quiet"; printed: count, p50, p99 and max of
//!    each, and the ratio of the p99s; and each checkpoint's duration and
//!    bytes.
//!
//! IO runs as 32 tasks on a current-thread runtime (as the pool bench).
//!
//! Environment:
//! - `CSTOR_BENCH_DIR`: where the sparse pool file goes (default the cargo
//!   target tmp dir); it is deleted at the end. The run refuses to start
//!   unless the prefix plus 2 GiB (the checksum area, 1 GiB for 1 TiB, is
//!   written at pool creation) is free there.
//! - `CSTOR_SCALE_GIB`: GiB of the volume written (1..=1024, default 16).
//! - `CSTOR_SCALE_SECS`: seconds of overwrites under checkpoints (1..=3600,
//!   default 10).
//! - `CSTOR_SCALE_JSON`: also write the results as one JSON object there
//!   (keys: see [`results_json`]; `benches/speed.sh` reads them;
//!   `metadata_pct_full` is the projection to the whole volume mapped).
//! - `CSTOR_IO_BACKEND`: as for every engine bench.
//!
//! Run: `cargo bench -p cstor-engine --bench scale`, e.g.
//! `CSTOR_SCALE_GIB=4 CSTOR_SCALE_SECS=5 CSTOR_BENCH_DIR=/var/tmp/scalebench
//! cargo bench -p cstor-engine --bench scale`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cstor_engine::io::{test_backend, DeviceOptions};
use cstor_engine::layout::plan_meta;
use cstor_engine::limits::DEFAULT_CHUNK_BYTES;
use cstor_engine::{Pool, PoolOptions, PoolStats, Provisioning, Volume};

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
/// The thin volume's size, and the data the pool file holds room for.
const VOLUME_BYTES: u64 = TIB;
const BLOCK: usize = 4096;
const QUEUE_DEPTH: usize = 32;
/// Free space wanted beyond the prefix written.
const SPARE_BYTES: u64 = 2 * GIB;
/// Pause between the end of a forced checkpoint and the next one.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const FILE_NAME: &str = "cstor-scale-bench.img";

// ---------------------------------------------------------------------------
// Heap accounting.

/// `System`, counting the bytes live and their peak.
struct CountingAlloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn note_alloc(bytes: usize) {
    let live = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
}

fn note_dealloc(bytes: usize) {
    LIVE_BYTES.fetch_sub(bytes, Ordering::Relaxed);
}

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; the counting touches atomics only.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) };
        note_dealloc(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note_dealloc(layout.size());
            note_alloc(new_size);
        }
        p
    }
}

/// Heap bytes the process holds now.
fn live_heap_bytes() -> u64 {
    LIVE_BYTES.load(Ordering::Relaxed) as u64
}

// ---------------------------------------------------------------------------
// Configuration and the pool file.

struct Config {
    dir: PathBuf,
    prefix_bytes: u64,
    secs: u64,
    json: Option<PathBuf>,
}

/// `name` parsed as an integer in `range`, `default` when unset.
fn env_in_range(
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, String> {
    let Ok(text) = std::env::var(name) else {
        return Ok(default);
    };
    match text.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "{name}={text:?}: expected an integer in {}..={}",
            range.start(),
            range.end()
        )),
    }
}

fn config() -> Result<Config, String> {
    let gib = env_in_range("CSTOR_SCALE_GIB", 16, 1..=VOLUME_BYTES / GIB)?;
    let secs = env_in_range("CSTOR_SCALE_SECS", 10, 1..=3600)?;
    let dir = std::env::var_os("CSTOR_BENCH_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    let json = std::env::var_os("CSTOR_SCALE_JSON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    Ok(Config {
        dir,
        prefix_bytes: gib * GIB,
        secs,
        json,
    })
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
#[allow(unsafe_code)]
fn free_bytes(dir: &Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{}: NUL in path", dir.display()))?;
    // SAFETY: statvfs(3) reads the NUL-terminated path we own and writes one
    // `statvfs` into the zeroed struct we own; all-zero is a valid
    // `statvfs` (plain integers).
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut st) != 0 {
            return Err(format!(
                "statvfs {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        st
    };
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Refuses (with the figures) when `dir` cannot hold `prefix_bytes` written
/// plus [`SPARE_BYTES`].
fn check_free_space(dir: &Path, prefix_bytes: u64) -> Result<(), String> {
    let free = free_bytes(dir)?;
    let need = prefix_bytes + SPARE_BYTES;
    if free < need {
        return Err(format!(
            "{} has {:.1} GiB free; writing {} GiB of the volume needs {:.1} GiB (the prefix plus 2 GiB). \
             Lower CSTOR_SCALE_GIB or point CSTOR_BENCH_DIR elsewhere.",
            dir.display(),
            free as f64 / GIB as f64,
            prefix_bytes / GIB,
            need as f64 / GIB as f64
        ));
    }
    Ok(())
}

/// Length of a pool file whose data area holds `data_bytes` after the
/// metadata `Pool::create` lays out before it (which grows with the file).
fn pool_file_len(data_bytes: u64, chunk_bytes: u32) -> u64 {
    let chunk = u64::from(chunk_bytes);
    let mut len = data_bytes;
    loop {
        let plan = plan_meta(&[len], chunk_bytes, None, Some(len)).unwrap();
        let want = plan.data_offset + data_bytes + chunk;
        if want <= len {
            return len;
        }
        len = want.next_multiple_of(chunk);
    }
}

/// The sparse pool file; deleted when dropped (also when a panic unwinds).
struct PoolFile {
    path: PathBuf,
    len_bytes: u64,
}

impl PoolFile {
    fn create(dir: &Path, len_bytes: u64) -> Self {
        let path = dir.join(FILE_NAME);
        let _ = std::fs::remove_file(&path);
        let f = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let file = Self { path, len_bytes };
        f.set_len(len_bytes)
            .unwrap_or_else(|e| panic!("size {}: {e}", file.path.display()));
        file
    }
}

impl Drop for PoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn create_pool(file: &PoolFile) -> (Pool, Arc<Volume>) {
    let dev = test_backend()
        .open(&file.path, &DeviceOptions::existing())
        .unwrap_or_else(|e| panic!("open {}: {e}", file.path.display()));
    let options = PoolOptions {
        max_data_bytes: Some(file.len_bytes),
        ..PoolOptions::default()
    };
    let pool = Pool::create(vec![dev], &options).await.unwrap();
    assert!(pool.stats().integrity.enabled, "block checksums are off");
    assert!(
        pool.stats().total_bytes >= VOLUME_BYTES,
        "the pool holds less than the volume"
    );
    let v = pool
        .create_volume("scale", VOLUME_BYTES, BLOCK as u32, Provisioning::Thin)
        .await
        .unwrap();
    (pool, v)
}

// ---------------------------------------------------------------------------
// Goal 1: metadata memory.

/// One 4 KiB write into each of the first `chunks` chunks, `QUEUE_DEPTH`
/// at a time; io_seqs come from `seq`.
async fn fill(v: &Arc<Volume>, chunks: u64, chunk_bytes: u64, seq: &Arc<AtomicU64>) {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..QUEUE_DEPTH)
        .map(|t| {
            let (v, next, seq) = (v.clone(), next.clone(), seq.clone());
            tokio::spawn(async move {
                let buf = vec![0xA5u8 ^ t as u8; BLOCK];
                loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= chunks {
                        break;
                    }
                    let s = seq.fetch_add(1, Ordering::Relaxed);
                    v.write(c * chunk_bytes, &buf, s).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// In-memory metadata against the data it maps.
struct MemoryFigures {
    mapped_bytes: u64,
    chunk_bytes: u64,
    /// `PoolStats::metadata_memory_bytes`: chunk maps + allocator bitmap.
    map_bytes: u64,
    /// `IntegrityStats::memory_bytes`: checksum pages.
    checksum_bytes: u64,
    /// Heap bytes the process held before and after the writes.
    heap_before: u64,
    heap_after: u64,
    /// The pool's estimates before the writes (map, checksums).
    estimate_before: (u64, u64),
    /// Checksum pages kept in memory at most (besides pages changed since
    /// the last commit): `IntegrityStats::cache_limit_pages` × 4 KiB.
    checksum_cache_bytes: u64,
}

impl MemoryFigures {
    fn metadata_bytes(&self) -> u64 {
        self.map_bytes + self.checksum_bytes
    }

    fn heap_delta(&self) -> i64 {
        self.heap_after as i64 - self.heap_before as i64
    }

    /// `bytes` as % of the data mapped.
    fn pct(&self, bytes: f64) -> f64 {
        bytes * 100.0 / self.mapped_bytes.max(1) as f64
    }

    /// `bytes` scaled to a TiB mapped (memory goes with chunks mapped).
    fn per_tib(&self, bytes: u64) -> u64 {
        (u128::from(bytes) * u128::from(TIB) / u128::from(self.mapped_bytes.max(1))) as u64
    }

    /// The pool's estimate with the whole volume mapped: what it held
    /// before the writes (sized by the pool's capacity: allocator bitmap,
    /// checksum page table) plus what the writes added, scaled to the
    /// volume — the chunk maps linearly, the checksum pages up to the
    /// checksum cache's bound (pages beyond it are read from the pool when
    /// used; pages changed since the last commit may exceed it until the
    /// commit writes them).
    fn projected_full(&self) -> u64 {
        let scale = VOLUME_BYTES / TIB;
        let maps = self.map_bytes.saturating_sub(self.estimate_before.0);
        let sums = self.checksum_bytes.saturating_sub(self.estimate_before.1);
        let sums_full = (self.per_tib(sums) * scale).min(self.checksum_cache_bytes);
        self.estimate_before.0 + self.estimate_before.1 + self.per_tib(maps) * scale + sums_full
    }

    /// [`Self::projected_full`] as % of the volume.
    fn projected_full_pct(&self) -> f64 {
        self.projected_full() as f64 * 100.0 / VOLUME_BYTES as f64
    }

    fn print(&self, prefix_bytes: u64, fill_time: Duration) {
        let chunks = self.mapped_bytes / self.chunk_bytes;
        println!(
            "\nvolume: {} GiB thin ({} TiB); written: the first {} GiB, one 4 KiB write into each of its {} chunks of {} KiB ({} GiB mapped) at QD{QUEUE_DEPTH} in {:.1} s",
            VOLUME_BYTES / GIB,
            VOLUME_BYTES / TIB,
            prefix_bytes / GIB,
            chunks,
            self.chunk_bytes / 1024,
            self.mapped_bytes as f64 / GIB as f64,
            fill_time.as_secs_f64()
        );
        println!(
            "metadata in memory, per TiB mapped = scaled per chunk mapped (memory is proportional to chunks mapped):"
        );
        let row = |name: &str, bytes: u64| {
            println!(
                "  {name:<34} {bytes:>12} B  {:>12} B/TiB  {:>8.4} % of data mapped",
                self.per_tib(bytes),
                self.pct(bytes as f64)
            );
        };
        row("chunk maps + allocator bitmap", self.map_bytes);
        row("block checksum pages", self.checksum_bytes);
        row("sum (goal ≤ 0.1 %)", self.metadata_bytes());
        println!(
            "  of which sized by the pool's capacity, not by data mapped (before the writes): {} B maps + bitmap, {} B checksum page table",
            self.estimate_before.0, self.estimate_before.1
        );
        println!(
            "  projected with all {} GiB of the volume mapped (checksum pages capped by the {} MiB checksum cache): {} B = {:.4} % of the data mapped",
            VOLUME_BYTES / GIB,
            self.checksum_cache_bytes >> 20,
            self.projected_full(),
            self.projected_full_pct()
        );
        let estimate_delta =
            self.metadata_bytes() as i64 - (self.estimate_before.0 + self.estimate_before.1) as i64;
        println!(
            "  heap of the process (counting allocator): {} B before the writes, {} B after, delta {} B ({:.4} % of data mapped); PoolStats delta {} B; peak {} B",
            self.heap_before,
            self.heap_after,
            self.heap_delta(),
            self.pct(self.heap_delta() as f64),
            estimate_delta,
            PEAK_BYTES.load(Ordering::Relaxed)
        );
    }
}

// ---------------------------------------------------------------------------
// Goal 2: writes under checkpoints.

/// A [start, end) interval.
#[derive(Clone, Copy)]
struct Span {
    start: Instant,
    end: Instant,
}

impl Span {
    fn len(self) -> Duration {
        self.end - self.start
    }
}

struct Checkpoint {
    span: Span,
    bytes: u64,
}

/// `QUEUE_DEPTH` tasks doing random 4 KiB overwrites over the first
/// `span_bytes` until `until`; every write's interval.
async fn overwrite(
    v: &Arc<Volume>,
    span_bytes: u64,
    until: Instant,
    seq: &Arc<AtomicU64>,
) -> Vec<Span> {
    let blocks = span_bytes / BLOCK as u64;
    let tasks: Vec<_> = (0..QUEUE_DEPTH)
        .map(|t| {
            let (v, seq) = (v.clone(), seq.clone());
            tokio::spawn(async move {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                let buf = vec![t as u8; BLOCK];
                let mut spans = Vec::with_capacity(1 << 16);
                loop {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = (x % blocks) * BLOCK as u64;
                    let s = seq.fetch_add(1, Ordering::Relaxed);
                    let start = Instant::now();
                    if start >= until {
                        break;
                    }
                    v.write(off, &buf, s).await.unwrap();
                    spans.push(Span {
                        start,
                        end: Instant::now(),
                    });
                }
                spans
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// A checkpoint about every [`CHECKPOINT_EVERY`] until `until`.
async fn force_checkpoints(pool: &Pool, until: Instant) -> Vec<Checkpoint> {
    let mut done = Vec::new();
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        let start = Instant::now();
        if start >= until {
            return done;
        }
        let bytes_before = pool.stats().checkpoint_bytes;
        pool.checkpoint().await.unwrap();
        let end = Instant::now();
        done.push(Checkpoint {
            span: Span { start, end },
            bytes: pool.stats().checkpoint_bytes - bytes_before,
        });
    }
}

/// Whether `w` overlaps one of `checkpoints` (in order, disjoint).
fn overlaps_checkpoint(w: Span, checkpoints: &[Checkpoint]) -> bool {
    let i = checkpoints.partition_point(|c| c.span.end <= w.start);
    checkpoints.get(i).is_some_and(|c| c.span.start < w.end)
}

/// Count and percentiles of write latencies.
struct Latencies {
    count: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Latencies {
    fn of(mut l: Vec<Duration>) -> Self {
        l.sort_unstable();
        // Nearest rank.
        let at = |q: f64| {
            let rank = ((q * l.len() as f64).ceil() as usize).max(1);
            l.get(rank - 1).copied().unwrap_or_default()
        };
        Self {
            count: l.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: l.last().copied().unwrap_or_default(),
        }
    }

    fn print(&self, name: &str) {
        println!(
            "  {name:<26} {:>9} writes  p50 {:>9.1} µs  p99 {:>9.1} µs  max {:>9.1} µs",
            self.count,
            us(self.p50),
            us(self.p99),
            us(self.max)
        );
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The overwrite run split by checkpoints.
struct StallFigures {
    quiet: Latencies,
    during: Latencies,
    checkpoints: Vec<Checkpoint>,
    /// Checkpoints the pool wrote in the run, forced or not.
    pool_checkpoints: u64,
    secs: u64,
}

impl StallFigures {
    fn of(writes: &[Span], checkpoints: Vec<Checkpoint>, pool_checkpoints: u64, secs: u64) -> Self {
        let (during, quiet): (Vec<Span>, Vec<Span>) = writes
            .iter()
            .partition(|w| overlaps_checkpoint(**w, &checkpoints));
        Self {
            quiet: Latencies::of(quiet.iter().map(|w| w.len()).collect()),
            during: Latencies::of(during.iter().map(|w| w.len()).collect()),
            checkpoints,
            pool_checkpoints,
            secs,
        }
    }

    /// p99 during a checkpoint / p99 without one (NaN when a side is empty).
    fn p99_ratio(&self) -> f64 {
        if self.quiet.count == 0 || self.during.count == 0 {
            return f64::NAN;
        }
        self.during.p99.as_secs_f64() / self.quiet.p99.as_secs_f64()
    }

    fn checkpoint_max(&self) -> Duration {
        self.checkpoints
            .iter()
            .map(|c| c.span.len())
            .max()
            .unwrap_or_default()
    }

    fn print(&self, prefix_bytes: u64) {
        println!(
            "\ncheckpoints under IO: 4 KiB random overwrites at QD{QUEUE_DEPTH} over the {} GiB written for {} s, a checkpoint forced about every {} s:",
            prefix_bytes / GIB,
            self.secs,
            CHECKPOINT_EVERY.as_secs()
        );
        self.quiet.print("quiet");
        self.during.print("during a checkpoint");
        println!(
            "  p99 during / p99 quiet: {:.2} (goal ≤ 2)",
            self.p99_ratio()
        );
        let list: Vec<String> = self
            .checkpoints
            .iter()
            .map(|c| format!("{:.1} ms / {} KiB", ms(c.span.len()), c.bytes / 1024))
            .collect();
        println!(
            "  {} checkpoints forced ({} written by the pool in the run), max {:.1} ms: {}",
            self.checkpoints.len(),
            self.pool_checkpoints,
            ms(self.checkpoint_max()),
            list.join(", ")
        );
    }
}

// ---------------------------------------------------------------------------
// Results.

/// The figures as one JSON object (`benches/speed.sh` reads these keys).
fn results_json(mem: &MemoryFigures, stall: &StallFigures) -> serde_json::Value {
    serde_json::json!({
        "volume_bytes": VOLUME_BYTES,
        "mapped_bytes": mem.mapped_bytes,
        "chunk_bytes": mem.chunk_bytes,
        "map_bytes": mem.map_bytes,
        "checksum_bytes": mem.checksum_bytes,
        "metadata_bytes_per_tib": mem.per_tib(mem.metadata_bytes()),
        "metadata_pct": mem.pct(mem.metadata_bytes() as f64),
        "metadata_pct_full": mem.projected_full_pct(),
        "map_pct": mem.pct(mem.map_bytes as f64),
        "checksum_pct": mem.pct(mem.checksum_bytes as f64),
        "heap_bytes_delta": mem.heap_delta(),
        "heap_pct": mem.pct(mem.heap_delta() as f64),
        "p99_us_quiet": us(stall.quiet.p99),
        "p99_us_checkpoint": us(stall.during.p99),
        "checkpoint_p99_ratio": stall.p99_ratio(),
        "checkpoints": stall.checkpoints.len(),
        "checkpoint_ms_max": ms(stall.checkpoint_max()),
        "writes_quiet": stall.quiet.count,
        "writes_checkpoint": stall.during.count,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Fills the prefix and measures what its metadata holds in memory.
fn measure_memory(
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    v: &Arc<Volume>,
    prefix_bytes: u64,
    seq: &Arc<AtomicU64>,
) -> MemoryFigures {
    let before: PoolStats = pool.stats();
    let chunk_bytes = u64::from(pool.chunk_bytes());
    let heap_before = live_heap_bytes();
    let started = Instant::now();
    rt.block_on(fill(v, prefix_bytes / chunk_bytes, chunk_bytes, seq));
    rt.block_on(pool.flush()).unwrap();
    let fill_time = started.elapsed();
    let heap_after = live_heap_bytes();
    let s = pool.stats();
    let mem = MemoryFigures {
        mapped_bytes: s.used_bytes,
        chunk_bytes,
        map_bytes: s.metadata_memory_bytes,
        checksum_bytes: s.integrity.memory_bytes,
        heap_before,
        heap_after,
        estimate_before: (before.metadata_memory_bytes, before.integrity.memory_bytes),
        checksum_cache_bytes: s.integrity.cache_limit_pages * 4096,
    };
    if s.used_bytes != prefix_bytes {
        println!(
            "note: {} bytes in use, not the {prefix_bytes} written",
            s.used_bytes
        );
    }
    mem.print(prefix_bytes, fill_time);
    mem
}

/// Overwrites the prefix under forced checkpoints for `secs`.
fn measure_stalls(
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    v: &Arc<Volume>,
    prefix_bytes: u64,
    secs: u64,
    seq: &Arc<AtomicU64>,
) -> StallFigures {
    let checkpoints_before = pool.stats().checkpoints;
    let until = Instant::now() + Duration::from_secs(secs);
    let (writes, checkpoints) = rt.block_on(async {
        tokio::join!(
            overwrite(v, prefix_bytes, until, seq),
            force_checkpoints(pool, until)
        )
    });
    let pool_checkpoints = pool.stats().checkpoints - checkpoints_before;
    let stall = StallFigures::of(&writes, checkpoints, pool_checkpoints, secs);
    stall.print(prefix_bytes);
    stall
}

fn run(cfg: &Config) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("create {}: {e}", cfg.dir.display()))?;
    check_free_space(&cfg.dir, cfg.prefix_bytes)?;
    let file = PoolFile::create(&cfg.dir, pool_file_len(VOLUME_BYTES, DEFAULT_CHUNK_BYTES));
    let rt = runtime();
    let (pool, v) = rt.block_on(create_pool(&file));
    let seq = Arc::new(AtomicU64::new(1));
    let mem = measure_memory(&rt, &pool, &v, cfg.prefix_bytes, &seq);
    let stall = measure_stalls(&rt, &pool, &v, cfg.prefix_bytes, cfg.secs, &seq);
    if let Some(path) = &cfg.json {
        let text = results_json(&mem, &stall).to_string();
        std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("\nresults written to {}", path.display());
    }
    drop(v);
    rt.block_on(pool.close()).unwrap();
    drop(pool);
    drop(file);
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let result = config().and_then(|cfg| run(&cfg));
    if let Err(e) = result {
        eprintln!("scale bench: {e}");
        std::process::exit(2);
    }
}
