//! Rebuild state shared by a volume's sessions and its sink task: the
//! daemon-wide throttle, the per-volume slot (which sink run is current, the
//! live-write tracker, progress, the volume's own throttle), the persisted
//! resume point (and the volume replica's io_seq floor after a rebuild by
//! digest, kept in the same attribute blob: [`io_seq_floor`]), and the
//! pacer.
//!
//! Throttle: a sink paces itself to [`effective_limit`] of two rates, read
//! again at every chunk: the daemon's (`SetRebuildThrottle` on the
//! replica's management API; a cap for every volume of the pool) and the
//! volume's (`RebuildThrottle` from the volume's owning target, kept in
//! memory in the slot until the owner sets another; a target sends its
//! rate each time it claims the replica). Either being 0 leaves the other.
//!
//! Invariants:
//! - at most one sink run per volume is *current* (its generation equals the
//!   slot's); only the current run may end the tracking or checkpoint;
//! - while a run is current, every live mutating request executed on the
//!   volume marks its blocks in the tracker before it touches the engine
//!   (`note_live`), and the tracker is only read by a rebuilt write that
//!   holds an IO-order ticket covering the same range.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Daemon-wide rebuild settings, changeable at runtime (management API).
#[derive(Debug, Default)]
pub struct RebuildSettings {
    /// Bytes per second a sink may apply; 0: unlimited.
    limit_bytes_per_sec: AtomicU64,
    /// What full rebuilds by digest compared (metrics), every run of the
    /// daemon.
    digests: DigestCounts,
}

/// Ranges and bytes full rebuilds by digest found equal (nothing moved)
/// or different (pulled), summed over the daemon's runs.
#[derive(Debug, Default)]
pub struct DigestCounts {
    equal_ranges: AtomicU64,
    equal_bytes: AtomicU64,
    differ_ranges: AtomicU64,
    differ_bytes: AtomicU64,
}

/// The counts of [`DigestCounts`] at one time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DigestTotals {
    pub equal_ranges: u64,
    pub equal_bytes: u64,
    pub differ_ranges: u64,
    pub differ_bytes: u64,
}

impl RebuildSettings {
    pub fn new(limit_bytes_per_sec: u64) -> Self {
        Self {
            limit_bytes_per_sec: AtomicU64::new(limit_bytes_per_sec),
            digests: DigestCounts::default(),
        }
    }

    /// A range of `len` bytes compared by digest: `equal` (not pulled) or
    /// not.
    pub fn count_digest(&self, equal: bool, len: u64) {
        let d = &self.digests;
        let (ranges, bytes) = if equal {
            (&d.equal_ranges, &d.equal_bytes)
        } else {
            (&d.differ_ranges, &d.differ_bytes)
        };
        ranges.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// What rebuilds by digest compared so far.
    pub fn digest_totals(&self) -> DigestTotals {
        let d = &self.digests;
        DigestTotals {
            equal_ranges: d.equal_ranges.load(Ordering::Relaxed),
            equal_bytes: d.equal_bytes.load(Ordering::Relaxed),
            differ_ranges: d.differ_ranges.load(Ordering::Relaxed),
            differ_bytes: d.differ_bytes.load(Ordering::Relaxed),
        }
    }

    /// Bytes per second; 0: unlimited.
    pub fn limit_bytes_per_sec(&self) -> u64 {
        self.limit_bytes_per_sec.load(Ordering::Relaxed)
    }

    /// Takes effect on the next chunk of every running rebuild.
    pub fn set_limit_bytes_per_sec(&self, limit: u64) {
        self.limit_bytes_per_sec.store(limit, Ordering::Relaxed);
    }
}

/// The rate a sink of a volume paces itself to: the lower of the daemon's
/// limit and the volume's, where 0 is no limit from that side (module doc).
pub fn effective_limit(daemon_bytes_per_sec: u64, volume_bytes_per_sec: u64) -> u64 {
    match (daemon_bytes_per_sec, volume_bytes_per_sec) {
        (0, volume) => volume,
        (daemon, 0) => daemon,
        (daemon, volume) => daemon.min(volume),
    }
}

/// What a running (or finished) sink reports through the management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildStatus {
    /// Address of the source replica.
    pub source: String,
    pub from_io_seq: u64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Average since the run started.
    pub rate_bytes_per_sec: u64,
    /// `None` while unknown (nothing copied yet).
    pub eta: Option<Duration>,
    pub running: bool,
}

impl RebuildStatus {
    /// Rate and ETA of `done_bytes` of `total_bytes` after `elapsed`.
    pub fn estimate(
        done_bytes: u64,
        total_bytes: u64,
        elapsed: Duration,
    ) -> (u64, Option<Duration>) {
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 || done_bytes == 0 {
            return (0, None);
        }
        let rate =
            u64::try_from(u128::from(done_bytes) * 1000 / u128::from(ms)).unwrap_or(u64::MAX);
        if rate == 0 {
            return (0, None);
        }
        let left = total_bytes.saturating_sub(done_bytes);
        (
            rate,
            Some(Duration::from_millis(left.saturating_mul(1000) / rate)),
        )
    }
}

/// One bit per block: blocks written live since the current run started
/// (or, with the engine's chunk as the block, the chunks a sink changed
/// itself, and those a stream carried: `sink`).
#[derive(Debug)]
pub struct BlockSet {
    block_bytes: u64,
    bits: Vec<u64>,
}

impl BlockSet {
    /// A set for a volume of `size_bytes` in `block_bytes` blocks.
    pub fn new(size_bytes: u64, block_bytes: impl Into<u64>) -> Self {
        let block_bytes = block_bytes.into().max(1);
        let blocks = size_bytes.div_ceil(block_bytes);
        let words = usize::try_from(blocks.div_ceil(64)).unwrap_or(0);
        Self {
            block_bytes,
            bits: vec![0; words],
        }
    }

    /// Marks every block `offset..offset+len` touches. Blocks past the
    /// end are ignored (the engine refuses such IO anyway).
    pub fn mark(&mut self, offset: u64, len: u64) {
        let first = offset / self.block_bytes;
        let end = offset.saturating_add(len).div_ceil(self.block_bytes);
        for block in first..end {
            let Ok(word) = usize::try_from(block / 64) else {
                return;
            };
            match self.bits.get_mut(word) {
                Some(w) => *w |= 1 << (block % 64),
                None => return,
            }
        }
    }

    /// Was block `block` written live? Out-of-range blocks were not.
    pub fn contains(&self, block: u64) -> bool {
        usize::try_from(block / 64)
            .ok()
            .and_then(|w| self.bits.get(w))
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }
}

/// The rebuild state of one volume replica.
#[derive(Debug, Default)]
pub struct RebuildSlot {
    inner: Mutex<SlotInner>,
    /// The volume's own rate limit (bytes per second; 0: none), set by its
    /// owning target; outlives runs and sessions.
    limit_bytes_per_sec: AtomicU64,
}

#[derive(Debug, Default)]
struct SlotInner {
    generation: u64,
    cancel: Option<CancellationToken>,
    live: Option<BlockSet>,
    status: Option<RebuildStatus>,
}

impl RebuildSlot {
    /// Starts a new run: the previous one (if any) is cancelled and stops
    /// being current; live writes are tracked from now on. Returns the new
    /// run's generation.
    pub fn begin(&self, live: BlockSet, cancel: CancellationToken, status: RebuildStatus) -> u64 {
        let mut inner = self.inner.lock();
        if let Some(previous) = inner.cancel.replace(cancel) {
            previous.cancel();
        }
        inner.generation = inner.generation.wrapping_add(1);
        inner.live = Some(live);
        inner.status = Some(status);
        inner.generation
    }

    /// Ends run `generation` if it is still current: tracking stops.
    /// Returns whether it was current.
    pub fn end(&self, generation: u64, running: bool) -> bool {
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return false;
        }
        inner.live = None;
        inner.cancel = None;
        if let Some(status) = inner.status.as_mut() {
            status.running = running;
        }
        true
    }

    /// Sets the volume's own rate limit (bytes per second; 0: none). Takes
    /// effect on the next chunk of a running sink.
    pub fn set_limit_bytes_per_sec(&self, limit: u64) {
        self.limit_bytes_per_sec.store(limit, Ordering::Relaxed);
    }

    /// The volume's own rate limit; 0: none.
    pub fn limit_bytes_per_sec(&self) -> u64 {
        self.limit_bytes_per_sec.load(Ordering::Relaxed)
    }

    /// Cancels the current run (volume deleted, daemon shutting down).
    pub fn cancel(&self) {
        if let Some(cancel) = self.inner.lock().cancel.as_ref() {
            cancel.cancel();
        }
    }

    pub fn is_current(&self, generation: u64) -> bool {
        self.inner.lock().generation == generation
    }

    /// A live mutating request is about to touch `offset..offset+len`.
    pub fn note_live(&self, offset: u64, len: u64) {
        if let Some(live) = self.inner.lock().live.as_mut() {
            live.mark(offset, len);
        }
    }

    /// For each of `blocks` blocks from `first_block`: may rebuilt data be
    /// written there (no live write since the run began)?
    pub fn rebuildable(&self, first_block: u64, blocks: usize) -> Vec<bool> {
        let inner = self.inner.lock();
        (0..blocks as u64)
            .map(|i| {
                inner
                    .live
                    .as_ref()
                    .is_none_or(|live| !live.contains(first_block.saturating_add(i)))
            })
            .collect()
    }

    /// Progress of run `generation` (ignored if it is no longer current).
    pub fn update(&self, generation: u64, f: impl FnOnce(&mut RebuildStatus)) {
        let mut inner = self.inner.lock();
        if inner.generation == generation {
            if let Some(status) = inner.status.as_mut() {
                f(status);
            }
        }
    }

    /// The last run's status, if any run happened in this process.
    pub fn status(&self) -> Option<RebuildStatus> {
        self.inner.lock().status.clone()
    }
}

/// Where an interrupted rebuild may resume, persisted in the volume's
/// attribute blob. Layout (little endian): magic `b"RBLD"`, version u8 = 2,
/// from_io_seq u64, first_live_io_seq u64, next_offset u64, then the name
/// of the rebuilt snapshot being filled (u8 length, 0 for none, and UTF-8
/// bytes; see [`ResumePoint::filling`]), then (version 3, written only
/// with a floor) the volume replica's io_seq floor u64
/// ([`io_seq_floor`]). Versions 1 (33 bytes, no name) and 2 (no floor) are
/// read; version 2 is written when there is no floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The rebuild it belongs to.
    pub from_io_seq: u64,
    /// The `J` of the run that copied up to `next_offset` (lowest of the
    /// runs that contributed).
    pub first_live_io_seq: u64,
    /// Every chunk below this was applied and is durable.
    pub next_offset: u64,
}

const RESUME_MAGIC: &[u8; 4] = b"RBLD";
const RESUME_VERSION_1: u8 = 1;
const RESUME_VERSION_2: u8 = 2;
const RESUME_VERSION: u8 = 3;
/// The attribute blob of a volume replica with an io_seq floor and no
/// unfinished rebuild: magic, floor u64.
const FLOOR_MAGIC: &[u8; 4] = b"RFLR";
const RESUME_LEN: usize = 4 + 1 + 8 * 3;

impl ResumePoint {
    /// The blob with no snapshot being filled.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_filling(None)
    }

    /// The blob naming `filling`, a rebuilt snapshot created but not yet
    /// completely filled (a name longer than 255 bytes cannot be a
    /// snapshot name, see `cstor_proto::Name`; it is cut, which makes the
    /// next run find no such snapshot and redo nothing wrong).
    pub fn encode_filling(&self, filling: Option<&str>) -> Vec<u8> {
        self.encode_with(filling, 0)
    }

    /// The blob naming `filling` (as [`ResumePoint::encode_filling`]) and
    /// keeping the volume replica's io_seq `floor`.
    pub fn encode_with(&self, filling: Option<&str>, floor: u64) -> Vec<u8> {
        let name = filling.map_or(&[][..], str::as_bytes);
        let name = name.get(..usize::from(u8::MAX)).unwrap_or(name);
        let mut out = Vec::with_capacity(RESUME_LEN + 1 + name.len());
        out.extend_from_slice(RESUME_MAGIC);
        // Without a floor, version 2 as before (what an older daemon reads).
        out.push(if floor == 0 {
            RESUME_VERSION_2
        } else {
            RESUME_VERSION
        });
        out.extend_from_slice(&self.from_io_seq.to_le_bytes());
        out.extend_from_slice(&self.first_live_io_seq.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name);
        if floor != 0 {
            out.extend_from_slice(&floor.to_le_bytes());
        }
        out
    }

    /// The rebuilt snapshot a blob says was being filled, if any: an
    /// interrupted run leaves it incomplete, so the next one deletes it.
    pub fn filling(bytes: &[u8]) -> Option<String> {
        Self::decode(bytes)?;
        let len = usize::from(*bytes.get(RESUME_LEN)?);
        let name = bytes.get(RESUME_LEN + 1..RESUME_LEN + 1 + len)?;
        (len > 0)
            .then(|| String::from_utf8(name.to_vec()).ok())
            .flatten()
    }

    /// `None` for anything that is not a resume point of a known version
    /// (empty attributes, another layout): start from scratch.
    pub fn decode(bytes: &[u8]) -> Option<ResumePoint> {
        if bytes.get(..4)? != RESUME_MAGIC {
            return None;
        }
        let exact = match *bytes.get(4)? {
            RESUME_VERSION_1 => bytes.len() == RESUME_LEN,
            RESUME_VERSION_2 => {
                let name = usize::from(*bytes.get(RESUME_LEN)?);
                bytes.len() == RESUME_LEN + 1 + name
            }
            RESUME_VERSION => {
                let name = usize::from(*bytes.get(RESUME_LEN)?);
                bytes.len() == RESUME_LEN + 1 + name + 8
            }
            _ => false,
        };
        if !exact {
            return None;
        }
        let u64_at = |at: usize| -> Option<u64> {
            let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(raw))
        };
        Some(ResumePoint {
            from_io_seq: u64_at(5)?,
            first_live_io_seq: u64_at(13)?,
            next_offset: u64_at(21)?,
        })
    }

    /// May a chunk that ends at `end` and whose source io_seq is `io_seq`
    /// be skipped? (module doc of `rebuild`: copied before — and durable,
    /// the point being saved after a flush — and unchanged since.)
    pub fn skips(&self, end: u64, io_seq: u64) -> bool {
        end <= self.next_offset && io_seq < self.first_live_io_seq
    }
}

/// The io_seq floor of a volume replica, from its attribute blob (0:
/// none). A full rebuild by digest keeps the ranges it finds equal to its
/// source's as they are, with this replica's own chunk io_seqs, which may
/// be older than the writes that last made that content on the source (a
/// chunk written, overwritten, and written back alike, or trimmed after
/// a write this replica never had). Such a replica then reads every chunk
/// of its live volume as last written at least at the run's
/// `through_io_seq`, its floor: as a source, a live stream from below the
/// floor carries every chunk, each stamped at least the floor, and a
/// stream of ranges stamps them likewise (`source` module doc). Kept by
/// every later run (in its resume point, then alone).
pub fn io_seq_floor(bytes: &[u8]) -> u64 {
    let u64_at = |at: usize| -> Option<u64> {
        let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(raw))
    };
    if bytes.get(..4) == Some(&FLOOR_MAGIC[..]) && bytes.len() == 12 {
        return u64_at(4).unwrap_or(0);
    }
    if ResumePoint::decode(bytes).is_some() && bytes.get(4) == Some(&RESUME_VERSION) {
        return u64_at(bytes.len() - 8).unwrap_or(0);
    }
    0
}

/// The attribute blob of a volume replica with no unfinished rebuild and
/// io_seq floor `floor` (empty for none).
pub fn encode_floor(floor: u64) -> Vec<u8> {
    if floor == 0 {
        return Vec::new();
    }
    let mut out = FLOOR_MAGIC.to_vec();
    out.extend_from_slice(&floor.to_le_bytes());
    out
}

/// Holds a sink to `limit` bytes per second over a window that restarts
/// whenever the limit changes. Times are a clock's (`rebuild::io::Clock`):
/// time since an origin fixed for the run.
#[derive(Debug)]
pub struct Pacer {
    window_start: Duration,
    window_bytes: u64,
    limit: u64,
}

impl Pacer {
    pub fn new(now: Duration) -> Self {
        Self {
            window_start: now,
            window_bytes: 0,
            limit: 0,
        }
    }

    /// `bytes` more were applied at `now` under `limit`: how long to wait
    /// before the next chunk.
    pub fn delay(&mut self, now: Duration, bytes: u64, limit: u64) -> Duration {
        if limit != self.limit {
            self.limit = limit;
            self.window_start = now;
            self.window_bytes = 0;
        }
        if limit == 0 {
            return Duration::ZERO;
        }
        self.window_bytes = self.window_bytes.saturating_add(bytes);
        let due_ms = u128::from(self.window_bytes) * 1000 / u128::from(limit);
        let due = Duration::from_millis(u64::try_from(due_ms).unwrap_or(u64::MAX));
        due.saturating_sub(now.saturating_sub(self.window_start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resume_point_round_trips_and_rejects_other_blobs() {
        let p = ResumePoint {
            from_io_seq: 7,
            first_live_io_seq: 1 << 40,
            next_offset: 64 << 20,
        };
        assert_eq!(ResumePoint::decode(&p.encode()), Some(p));
        assert_eq!(ResumePoint::decode(&[]), None);
        let mut bad = p.encode();
        bad[4] = 4;
        assert_eq!(ResumePoint::decode(&bad), None);
        assert_eq!(ResumePoint::decode(&p.encode()[..20]), None);
    }

    #[test]
    fn resume_point_carries_the_snapshot_being_filled_and_reads_version_1() {
        let p = ResumePoint {
            from_io_seq: 7,
            first_live_io_seq: 9,
            next_offset: 4096,
        };
        let blob = p.encode_filling(Some("snap-a"));
        assert_eq!(ResumePoint::decode(&blob), Some(p));
        assert_eq!(ResumePoint::filling(&blob).as_deref(), Some("snap-a"));
        assert_eq!(ResumePoint::filling(&p.encode()), None);
        assert_eq!(ResumePoint::decode(&blob[..blob.len() - 1]), None);
        let mut v1 = p.encode();
        v1.truncate(RESUME_LEN);
        v1[4] = RESUME_VERSION_1;
        assert_eq!(ResumePoint::decode(&v1), Some(p));
        assert_eq!(ResumePoint::filling(&v1), None);
        // Version 2: a name, no floor (what is written without one).
        let v2 = p.encode_filling(Some("snap-a"));
        assert_eq!(v2[4], RESUME_VERSION_2);
        assert_eq!(ResumePoint::decode(&v2), Some(p));
        assert_eq!(ResumePoint::filling(&v2).as_deref(), Some("snap-a"));
        assert_eq!(io_seq_floor(&v2), 0);
    }

    #[test]
    fn the_io_seq_floor_is_kept_in_a_resume_point_and_alone_without_one() {
        let p = ResumePoint {
            from_io_seq: 0,
            first_live_io_seq: 9,
            next_offset: 4096,
        };
        let blob = p.encode_with(Some("s"), 1234);
        assert_eq!(ResumePoint::decode(&blob), Some(p));
        assert_eq!(ResumePoint::filling(&blob).as_deref(), Some("s"));
        assert_eq!(io_seq_floor(&blob), 1234);
        assert_eq!(io_seq_floor(&p.encode()), 0);
        // Alone: no resume point (the replica is not unfinished).
        let alone = encode_floor(1234);
        assert_eq!(ResumePoint::decode(&alone), None);
        assert_eq!(io_seq_floor(&alone), 1234);
        assert!(encode_floor(0).is_empty());
        assert_eq!(io_seq_floor(&[]), 0);
        assert_eq!(io_seq_floor(&alone[..11]), 0);
    }

    #[test]
    fn resume_skips_only_copied_unchanged_chunks() {
        let p = ResumePoint {
            from_io_seq: 0,
            first_live_io_seq: 100,
            next_offset: 1 << 20,
        };
        assert!(p.skips(1 << 20, 99));
        assert!(!p.skips((1 << 20) + 1, 99), "beyond the saved offset");
        assert!(!p.skips(4096, 100), "written after the run began");
    }

    #[test]
    fn pacer_holds_the_limit_and_restarts_when_it_changes() {
        let t0 = Duration::from_secs(1000);
        let mut pacer = Pacer::new(t0);
        assert_eq!(pacer.delay(t0, 1 << 20, 0), Duration::ZERO);
        // 1 MiB at 1 MiB/s: one second after the window started.
        assert_eq!(pacer.delay(t0, 1 << 20, 1 << 20), Duration::from_secs(1));
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(
            pacer.delay(later, 1 << 20, 1 << 20),
            Duration::from_millis(500)
        );
        // A new limit starts a new window.
        assert_eq!(
            pacer.delay(later, 1 << 20, 2 << 20),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn the_effective_limit_is_the_lower_of_daemon_and_volume_zero_being_none() {
        assert_eq!(effective_limit(0, 0), 0, "no limit anywhere");
        assert_eq!(effective_limit(0, 5), 5, "the volume's alone");
        assert_eq!(effective_limit(7, 0), 7, "the daemon's alone");
        assert_eq!(effective_limit(7, 5), 5, "the volume's below the cap");
        assert_eq!(effective_limit(3, 5), 3, "the daemon's caps the volume's");
        let slot = RebuildSlot::default();
        assert_eq!(slot.limit_bytes_per_sec(), 0);
        slot.set_limit_bytes_per_sec(1 << 20);
        assert_eq!(slot.limit_bytes_per_sec(), 1 << 20);
    }

    #[test]
    fn estimate_gives_rate_and_eta() {
        let (rate, eta) = RebuildStatus::estimate(10 << 20, 30 << 20, Duration::from_secs(2));
        assert_eq!(rate, 5 << 20);
        assert_eq!(eta, Some(Duration::from_secs(4)));
        assert_eq!(
            RebuildStatus::estimate(0, 10, Duration::from_secs(1)),
            (0, None)
        );
    }

    #[test]
    fn slot_tracks_live_writes_only_for_the_current_run() {
        let slot = RebuildSlot::default();
        let status = RebuildStatus {
            source: "a".into(),
            from_io_seq: 0,
            done_bytes: 0,
            total_bytes: 0,
            rate_bytes_per_sec: 0,
            eta: None,
            running: true,
        };
        slot.note_live(0, 4096);
        assert_eq!(
            slot.rebuildable(0, 1),
            vec![true],
            "no run: nothing tracked"
        );
        let first_cancel = CancellationToken::new();
        let first = slot.begin(
            BlockSet::new(1 << 20, 4096u32),
            first_cancel.clone(),
            status.clone(),
        );
        slot.note_live(4096, 8192);
        assert_eq!(slot.rebuildable(0, 4), vec![true, false, false, true]);
        let second = slot.begin(
            BlockSet::new(1 << 20, 4096u32),
            CancellationToken::new(),
            status,
        );
        assert!(first_cancel.is_cancelled());
        assert!(
            !slot.end(first, false),
            "a superseded run cannot end tracking"
        );
        assert_eq!(
            slot.rebuildable(1, 1),
            vec![true],
            "a new run tracks afresh"
        );
        slot.note_live(0, 4096);
        assert!(slot.end(second, false));
        assert_eq!(slot.rebuildable(0, 1), vec![true]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The block set agrees with a model set of marked blocks.
        #[test]
        fn block_set_matches_a_model(
            marks in proptest::collection::vec((0u64..300, 1u64..5), 0..20),
        ) {
            let block = 512u64;
            let mut set = BlockSet::new(256 * block, 512u32);
            let mut model = std::collections::BTreeSet::new();
            for (first, count) in marks {
                set.mark(first * block, count * block);
                for b in first..first + count {
                    if b < 256 {
                        model.insert(b);
                    }
                }
            }
            for b in 0..300 {
                prop_assert_eq!(set.contains(b), model.contains(&b), "block {}", b);
            }
        }
    }
}
