//! The pool: its devices and its metadata ([`State`] behind a mutex, never
//! held across IO); creating, opening, growing and closing it; volumes'
//! lifecycle. How metadata becomes durable is in `commit`; the IO path is in
//! `volume`.
//!
//! Invariants: structural changes (volume / snapshot / clone create and
//! delete, add-device, close) hold the structure lock exclusively, so no IO
//! runs under them, and are durable when they return. Whoever takes the
//! metadata lock ([`MetaLock`]) sees every in-place overwrite completed
//! before: the lock applies the ones handed over since it was last taken.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::commit::{pad, read_exact, replay, spawn_timer, write_all, CommitState};
use crate::error::{corrupt, invalid, no_space, not_found, Error, ErrorKind, Result};
use crate::format::label::Label;
use crate::format::superblock::Superblock;
use crate::format::{crc, round_up, FormatError, META_BLOCK_BYTES};
use crate::integrity::Integrity;
use crate::io::{Device, BUF_ALIGN};
use crate::layout::{device_entry, other_data_offset, plan_meta, ChunkSpace};
use crate::limits::{
    DEFAULT_CHECKSUM_CACHE_BYTES, DEFAULT_CHUNK_BYTES, DEFAULT_COMMIT_INTERVAL_MS, MAX_CHUNK_BYTES,
    MAX_DEVICES, MAX_JOURNAL_BYTES, MIN_CHUNK_BYTES, SUM_BLOCK_BYTES,
};
use crate::locks::ChunkLocks;
use crate::meta::checkpoint;
use crate::meta::overwrites::{Coalesced, Overwrite};
use crate::meta::record::{Record, VolumeId};
use crate::meta::state::{Audit, Mode, State, StateError};
use crate::volume::Volume;

/// A backing device as the pool holds it.
pub type DeviceRef = Arc<dyn Device>;

/// How a new pool is laid out, and how an opened one commits.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Chunk size (power of two, 4 KiB–1 MiB). Creation only.
    pub chunk_bytes: u32,
    /// Journal region size, clamped to [64 KiB, 64 MiB]; default 1/64 of
    /// device 0. Creation only.
    pub journal_bytes: Option<u64>,
    /// Capacity the checkpoint regions are sized for (adding devices beyond
    /// it is refused); default twice the initial capacity. Creation only.
    pub max_data_bytes: Option<u64>,
    /// Group-commit timer; `None` commits only on flush (tests).
    pub commit_interval: Option<Duration>,
    /// Keep a checksum per 4 KiB block and verify every read (FORMAT.md
    /// "Block checksums"); default on. Off creates a version-1 pool, whose
    /// reads are not verified: only to measure what checksums cost.
    /// Creation only.
    pub block_checksums: bool,
    /// Memory for checksum pages (4 KiB per 4 MiB of data; at least one
    /// page); pages beyond it are read when used and evicted when clean,
    /// and pages changed since the last commit stay until it writes them.
    /// Default [`DEFAULT_CHECKSUM_CACHE_BYTES`] (256 MiB: 256 GiB of data).
    pub checksum_cache_bytes: u64,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            journal_bytes: None,
            max_data_bytes: None,
            commit_interval: Some(Duration::from_millis(DEFAULT_COMMIT_INTERVAL_MS)),
            block_checksums: true,
            checksum_cache_bytes: DEFAULT_CHECKSUM_CACHE_BYTES,
        }
    }
}

/// Thin (allocate on write) or thick (space reserved at creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Allocate on first write.
    Thin,
    /// Reserve the whole size at creation; refused when it does not fit.
    Thick,
}

/// Space and memory of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Pool identity.
    pub pool_guid: u128,
    /// Chunk size.
    pub chunk_bytes: u32,
    /// Backing devices.
    pub devices: usize,
    /// Data capacity.
    pub total_bytes: u64,
    /// Data chunks in use (owned, being written, or freed by a commit not
    /// yet durable).
    pub used_bytes: u64,
    /// Free data space.
    pub free_bytes: u64,
    /// Free space held back for thick volumes.
    pub reserved_bytes: u64,
    /// Heap bytes of the in-memory metadata (maps + allocator bitmap).
    pub metadata_memory_bytes: u64,
    /// `metadata_memory_bytes` per TiB of allocated data (0 when empty).
    pub metadata_bytes_per_tib: u64,
    /// Metadata commits since open (journal batches + checkpoints).
    pub commits: u64,
    /// Checkpoints written since open.
    pub checkpoints: u64,
    /// Journal bytes written since open (batches, headers and padding
    /// included; checkpoints not).
    pub journal_bytes: u64,
    /// Journal records written since open.
    pub journal_records: u64,
    /// Checkpoint bytes written since open (padding included; the one
    /// written at open too).
    pub checkpoint_bytes: u64,
    /// Block checksums: what they cost and what they found.
    pub integrity: IntegrityStats,
}

/// Block checksums of a pool (FORMAT.md "Block checksums").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityStats {
    /// The pool keeps block checksums (format version 2); false for a
    /// version-1 pool, whose reads are not verified.
    pub enabled: bool,
    /// 4 KiB blocks that failed their checksum since open (each read of a
    /// bad block counts).
    pub checksum_errors: u64,
    /// Blocks whose checksum open recomputed from their data (dirty
    /// regions after an unclean shutdown).
    pub recomputed_blocks: u64,
    /// Dirty regions set on disk now.
    pub dirty_regions: u64,
    /// Bitmap writes (each synced) since open.
    pub bitmap_writes: u64,
    /// Heap bytes of the checksum pages in memory.
    pub memory_bytes: u64,
    /// Bytes of the checksum area on device 0 (4 bytes per 4 KiB of the
    /// pool's largest capacity).
    pub area_bytes: u64,
    /// Checksum pages (4 KiB each) in memory now.
    pub cache_pages: u64,
    /// The most pages kept in memory besides those changed since the last
    /// commit (`PoolOptions::checksum_cache_bytes`).
    pub cache_limit_pages: u64,
    /// Checksum pages read from the checksum area since open.
    pub page_loads: u64,
    /// Checksum pages evicted from memory since open.
    pub page_evictions: u64,
}

/// A volume as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Logical size.
    pub size_bytes: u64,
    /// Block size.
    pub block_bytes: u32,
    /// Thin or thick.
    pub provisioning: Provisioning,
    /// Stable replica id.
    pub replica_id: u128,
    /// Snapshots of it.
    pub snapshots: usize,
}

/// A pool. Cheap to clone; all clones share it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

pub(crate) struct Devices {
    pub(crate) devs: Vec<DeviceRef>,
    pub(crate) space: ChunkSpace,
}

#[derive(Debug, Default)]
pub(crate) struct VolRuntime {
    pub(crate) poisoned: Option<String>,
    pub(crate) durable_io_seq: u64,
    /// Highest io_seq written since the pool opened (at least the recorded
    /// one): a snapshot's io_seq.
    pub(crate) written_io_seq: u64,
    /// Set once the owner declared a completion watermark
    /// (`Volume::set_complete_io_seq`): from then on the recorded io_seq
    /// advances only with it, never with the max written.
    pub(crate) watermarked: bool,
    /// Block → io_seq of live writes since a rebuild began.
    pub(crate) rebuild: Option<HashMap<u64, u64>>,
}

pub(crate) struct Meta {
    pub(crate) state: State,
    /// Records for the next commit, in the order they were applied.
    pub(crate) pending: Vec<Record>,
    /// Chunks overwritten in place whose records the next commit writes
    /// (FORMAT.md "Coalesced overwrites").
    pub(crate) coalesced: Coalesced,
    /// Overwrites handed over by the IO path (`MetaLock::overwritten`),
    /// applied by the next `MetaLock::lock`.
    overwrites: std::sync::mpsc::Receiver<Overwrite>,
    pub(crate) pending_free: Vec<u64>,
    pub(crate) change: u64,
    pub(crate) in_flight: BTreeSet<u64>,
    pub(crate) vols: HashMap<VolumeId, VolRuntime>,
    pub(crate) recorded_seq: HashMap<VolumeId, u64>,
    /// Chunks promised to running writes and not yet allocated
    /// (`volume::io::Promise`): no other allocation may take them.
    pub(crate) promised: u64,
}

pub(crate) fn state_err(e: StateError) -> Error {
    match e {
        StateError::NotFound(s) => Error::new(ErrorKind::NotFound, s),
        StateError::AlreadyExists(s) => Error::new(ErrorKind::AlreadyExists, s),
        StateError::Invalid(s) => Error::new(ErrorKind::InvalidArgument, s),
    }
}

impl Meta {
    fn new(state: State, overwrites: std::sync::mpsc::Receiver<Overwrite>) -> Self {
        let mut vols = HashMap::new();
        let mut recorded_seq = HashMap::new();
        for v in state.volumes.values() {
            vols.insert(
                v.id,
                VolRuntime {
                    durable_io_seq: v.max_io_seq,
                    written_io_seq: v.max_io_seq,
                    ..VolRuntime::default()
                },
            );
            recorded_seq.insert(v.id, v.max_io_seq);
        }
        Self {
            state,
            pending: Vec::new(),
            coalesced: Coalesced::default(),
            overwrites,
            pending_free: Vec::new(),
            change: 0,
            in_flight: BTreeSet::new(),
            vols,
            recorded_seq,
            promised: 0,
        }
    }

    /// Applies a live record and queues it (and what it frees) for commit.
    /// The coalesced record of a chunk it changes goes first, and all of
    /// them before a record that is not a chunk's (a snapshot may freeze
    /// their layer, a delete drop it): the journal then replays exactly as
    /// one record per overwrite would.
    pub(crate) fn record(&mut self, rec: Record) -> Result<()> {
        match &rec {
            Record::Map { layer, chunk, .. }
            | Record::Zero { layer, chunk, .. }
            | Record::Remove { layer, chunk } => {
                if let Some(r) = self.coalesced.take_one(&self.state, *layer, *chunk) {
                    self.pending.push(r);
                }
            }
            _ => self.take_coalesced(),
        }
        let freed = self.state.apply(&rec, Mode::Live).map_err(state_err)?;
        self.pending.push(rec);
        self.pending_free.extend(freed);
        self.change = self.change.saturating_add(1);
        Ok(())
    }

    /// Moves every coalesced overwrite's record to the pending records.
    pub(crate) fn take_coalesced(&mut self) {
        let recs = self.coalesced.take_all(&self.state);
        self.pending.extend(recs);
    }

    /// A live write (or unmap) of `io_seq` reached the map: it raises the
    /// highest io_seq written and, unless the owner declared a completion
    /// watermark, the io_seq the next commit records.
    pub(crate) fn note_written(&mut self, id: VolumeId, io_seq: u64) {
        let watermarked = match self.vols.get_mut(&id) {
            Some(rt) => {
                rt.written_io_seq = rt.written_io_seq.max(io_seq);
                rt.watermarked
            }
            None => false,
        };
        if !watermarked {
            if let Some(v) = self.state.volumes.get_mut(&id) {
                v.max_io_seq = v.max_io_seq.max(io_seq);
            }
        }
    }

    /// Records, while a rebuild of the volume runs, the io_seq of a live
    /// write per block of `[offset, offset + len_bytes)` (so rebuilt data
    /// never overwrites it).
    pub(crate) fn track(&mut self, id: VolumeId, offset: u64, len_bytes: u64, io_seq: u64) {
        let block = self
            .state
            .volumes
            .get(&id)
            .map_or(0, |v| u64::from(v.block_bytes));
        let Some(map) = self.vols.get_mut(&id).and_then(|r| r.rebuild.as_mut()) else {
            return;
        };
        if block == 0 {
            return;
        }
        let first = offset / block;
        for b in first..first.saturating_add(len_bytes / block) {
            let e = map.entry(b).or_insert(0);
            *e = (*e).max(io_seq);
        }
    }

    /// Applies a completed in-place overwrite of the live layer: the
    /// chunk's io_seq, the volume's written io_seq, a rebuild's per-block
    /// io_seqs, and the chunk's coalesced record for the next commit.
    pub(crate) fn overwritten(&mut self, o: &Overwrite) {
        self.note_written(o.volume, o.io_seq);
        if let Some((offset, len_bytes)) = o.track {
            self.track(o.volume, offset, len_bytes, o.io_seq);
        }
        if !self
            .coalesced
            .apply(&mut self.state, o.layer, o.chunk, o.phys, o.io_seq)
        {
            // Unreachable: the chunk lock and the structure lock were held
            // from the lookup to the hand-over, so the entry is still the
            // one the data went to. A `Map` naming it now could make a
            // chunk owned twice; the chunk's io_seq stays below the write
            // instead (a rebuild sends it again: safe).
            tracing::error!(
                volume = o.volume,
                chunk = o.chunk,
                "an overwritten chunk changed its mapping before its io_seq was recorded"
            );
            return;
        }
        self.change = self.change.saturating_add(1);
    }

    /// True when freed chunks wait for a commit (a NoSpace may go away).
    pub(crate) fn frees_pending(&self) -> bool {
        !self.pending_free.is_empty()
    }
}

/// The metadata mutex. An in-place overwrite takes it once, before its
/// data write, and hands its completion over afterwards through a channel
/// (no lock); every [`MetaLock::lock`] applies what was handed over before
/// anything else, so no one holding the lock sees a state without an
/// overwrite that completed before they took it. The channel holds at most
/// the overwrites that completed since the lock was last taken, each of
/// which took it before its data write: it is bounded by the IO in flight.
pub(crate) struct MetaLock {
    meta: Mutex<Meta>,
    overwrites: std::sync::mpsc::Sender<Overwrite>,
    /// Acquisitions, for the tests that bound them per IO.
    #[cfg(test)]
    pub(crate) taken: AtomicU64,
}

impl MetaLock {
    fn new(state: State) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Self {
            meta: Mutex::new(Meta::new(state, rx)),
            overwrites: tx,
            #[cfg(test)]
            taken: AtomicU64::new(0),
        }
    }

    /// Locks the metadata, having applied every overwrite handed over.
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, Meta> {
        #[cfg(test)]
        self.taken.fetch_add(1, Ordering::Relaxed);
        let mut m = self.meta.lock();
        while let Ok(o) = m.overwrites.try_recv() {
            m.overwritten(&o);
        }
        m
    }

    /// Hands over an in-place overwrite whose data write completed (the
    /// caller still holds its chunk lock and the structure lock shared).
    pub(crate) fn overwritten(&self, o: Overwrite) {
        if let Err(std::sync::mpsc::SendError(o)) = self.overwrites.send(o) {
            // The receiver lives as long as the sender (both are ours).
            self.lock().overwritten(&o);
        }
    }
}

pub(crate) struct PoolInner {
    pub(crate) guid: u128,
    pub(crate) chunk_bytes: u32,
    pub(crate) devices: RwLock<Devices>,
    pub(crate) meta: MetaLock,
    pub(crate) commit: tokio::sync::Mutex<CommitState>,
    /// Held shared by every IO, exclusively by snapshot / clone / delete /
    /// add-device, so those never run under an IO.
    pub(crate) structure: tokio::sync::RwLock<()>,
    pub(crate) locks: ChunkLocks,
    pub(crate) poison: Mutex<Option<String>>,
    /// Set with `poison`: checked on every IO without taking its mutex.
    poisoned: AtomicBool,
    pub(crate) closed: AtomicBool,
    pub(crate) commits: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) journal_bytes: AtomicU64,
    pub(crate) journal_records: AtomicU64,
    pub(crate) checkpoint_bytes: AtomicU64,
    pub(crate) checkpoint_capacity: u64,
    /// The group-commit timer task, stopped by `close`.
    timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    max_data_chunks: u64,
    /// Block checksums (`None`: a version-1 pool, which keeps none).
    pub(crate) integrity: Option<Integrity>,
}

pub(crate) fn format_err(what: &str, e: FormatError) -> Error {
    corrupt(format!("{what}: {e}"))
}

pub(crate) fn to_usize(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| invalid(format!("{v} does not fit in memory")))
}

thread_local! {
    /// This thread's seeded id stream ([`seed_ids`]): the next state.
    static SEEDED_IDS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Makes the pool guids and replica ids drawn on this thread from now on
/// come from a stream fixed by `seed` (`None`: random again, the default).
/// For a simulator that runs whole clusters in one thread and must replay
/// a seed exactly; ids need uniqueness only, and the stream's are unique
/// (splitmix64 is a bijection of its state). Other threads are unaffected.
pub fn seed_ids(seed: Option<u64>) {
    SEEDED_IDS.with(|ids| ids.set(seed));
}

/// The next id of this thread's seeded stream, if it has one.
fn seeded_u128() -> Option<u128> {
    SEEDED_IDS.with(|ids| {
        let mut state = ids.get()?;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let id = (u128::from(next()) << 64) | u128::from(next());
        ids.set(Some(state));
        Some(id)
    })
}

/// A random u128 from the OS-seeded hasher keys, the clock and a counter
/// (pool guids and replica ids need uniqueness, not secrecy), or the next
/// of this thread's seeded stream ([`seed_ids`]).
pub(crate) fn random_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    if let Some(id) = seeded_u128() {
        return id;
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = 0u128;
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        out = (out << 64) | u128::from(h.finish());
    }
    out
}

fn check_device(dev: &DeviceRef, chunk_bytes: u32) -> Result<()> {
    let align = dev.alignment();
    if align == 0 || align > BUF_ALIGN || !align.is_power_of_two() {
        return Err(invalid(format!("device alignment {align}")));
    }
    if u64::from(chunk_bytes) % (align as u64) != 0 {
        return Err(invalid(format!(
            "chunk size {chunk_bytes} is not a multiple of the device alignment {align}"
        )));
    }
    Ok(())
}

/// Checks that the superblock's regions are sane before reading them: the
/// journal within its bound, and journal, checkpoints and data of device 0
/// in that order without overlap.
fn check_layout(sb: &Superblock) -> Result<()> {
    let bad = |what: &str| corrupt(format!("superblock: {what}"));
    if !sb.chunk_bytes.is_power_of_two()
        || !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&sb.chunk_bytes)
    {
        return Err(bad("chunk size"));
    }
    if sb.journal.len_bytes > MAX_JOURNAL_BYTES || sb.journal.len_bytes < META_BLOCK_BYTES {
        return Err(bad("journal size"));
    }
    let [c0, c1] = sb.checkpoints;
    let ends = |r: crate::format::superblock::Region| r.offset.checked_add(r.len_bytes);
    let data0 = sb.devices.first().map_or(0, |d| d.data_offset);
    let meta_end = match &sb.integrity {
        Some(i) => {
            let ordered = ends(c1).is_some_and(|e| e <= i.dirty.offset)
                && ends(i.dirty).is_some_and(|e| e <= i.sums.offset);
            if !ordered {
                return Err(bad("checksum regions overlap the checkpoints"));
            }
            // The regions must hold what the pool's capacity needs, and
            // no more than its bound asks (a corrupt superblock must not
            // make open allocate without bound).
            let blocks_per_chunk = u64::from(sb.chunk_bytes) / SUM_BLOCK_BYTES;
            let sums_needed = sb
                .max_data_chunks
                .checked_mul(blocks_per_chunk * 4)
                .ok_or_else(|| bad("capacity"))?;
            let regions = sb.max_data_chunks.div_ceil(u64::from(i.region_chunks));
            if i.sums.len_bytes < sums_needed
                || i.dirty.len_bytes.saturating_mul(8) < regions
                || i.dirty.len_bytes > MAX_DIRTY_BITMAP_BYTES
            {
                return Err(bad("checksum regions do not match the capacity"));
            }
            ends(i.sums)
        }
        None => ends(c1),
    };
    let ordered = ends(sb.journal).is_some_and(|e| e <= c0.offset)
        && ends(c0).is_some_and(|e| e <= c1.offset)
        && meta_end.is_some_and(|e| !sb.devices.is_empty() && e <= data0);
    if !ordered {
        return Err(bad("metadata regions overlap"));
    }
    Ok(())
}

/// What a pool starts from: created empty, or read back by open.
struct Loaded {
    space: ChunkSpace,
    state: State,
    sb: Superblock,
    /// Where the next journal batch goes.
    journal_pos: u64,
    integrity: Option<Integrity>,
}

/// Largest write of zeros when a pool is created.
const ZERO_WRITE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest dirty-region bitmap open accepts (at one bit per MiB, a pool
/// of 512 TiB).
const MAX_DIRTY_BITMAP_BYTES: u64 = 64 * 1024 * 1024;

impl Pool {
    /// Creates a pool on `devices` (their contents are overwritten).
    pub async fn create(devices: Vec<DeviceRef>, opts: &PoolOptions) -> Result<Self> {
        let chunk = opts.chunk_bytes;
        if !chunk.is_power_of_two() || !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk) {
            return Err(invalid(format!("chunk size {chunk}")));
        }
        if devices.is_empty() || devices.len() > MAX_DEVICES {
            return Err(invalid(format!(
                "{} devices (1..={MAX_DEVICES})",
                devices.len()
            )));
        }
        for d in &devices {
            check_device(d, chunk)?;
        }
        let lens: Vec<u64> = devices.iter().map(|d| d.len_bytes()).collect();
        let mut plan = plan_meta(&lens, chunk, opts.journal_bytes, opts.max_data_bytes)?;
        let integrity_plan = opts.block_checksums.then_some(plan.integrity);
        if integrity_plan.is_none() {
            // The version-1 layout: data right after the checkpoints.
            plan.data_offset = plan.integrity.dirty.offset;
        }
        let mut entries = Vec::with_capacity(devices.len());
        for (i, len) in lens.iter().enumerate() {
            let off = if i == 0 {
                plan.data_offset
            } else {
                other_data_offset()
            };
            entries.push(device_entry(*len, off, chunk)?);
        }
        let space = ChunkSpace::new(&entries, chunk)?;
        if space.total_chunks() > plan.max_data_chunks {
            return Err(invalid("max_data_bytes is below the pool's capacity"));
        }
        let guid = random_u128();
        let io_err = |what: &str, e: io::Error| Error::io(format!("create pool: {what}"), e);
        for (i, (d, e)) in devices.iter().zip(&entries).enumerate() {
            let label = Label {
                pool_guid: guid,
                device_index: u32::try_from(i).unwrap_or(u32::MAX),
                len_bytes: e.len_bytes,
                data_offset: e.data_offset,
                data_chunks: e.data_chunks,
            };
            write_all(d, 0, &label.encode())
                .await
                .map_err(|e| io_err("write label", e))?;
        }
        let dev0 = devices
            .first()
            .cloned()
            .ok_or_else(|| invalid("no devices"))?;
        let state = State::new(chunk, space.total_chunks());
        let ck = checkpoint::encode(&state);
        let ck_padded = pad(&ck)?;
        write_all(&dev0, plan.checkpoints[0].offset, &ck_padded)
            .await
            .map_err(|e| io_err("write checkpoint", e))?;
        // The bitmap and checksum area may hold an older pool's: zero them
        // (0.1 % of the pool; nothing is mapped yet, so nothing else needs
        // a checksum).
        let areas = integrity_plan.map(|i| [i.dirty, i.sums]);
        for region in areas.iter().flatten() {
            let mut pos = 0u64;
            while pos < region.len_bytes {
                let n = (region.len_bytes - pos).min(ZERO_WRITE_BYTES);
                write_all(&dev0, region.offset + pos, &vec![0u8; to_usize(n)?])
                    .await
                    .map_err(|e| io_err("clear checksum area", e))?;
                pos += n;
            }
        }
        // Slot 0 may hold an older pool's superblock: clear it.
        let zero = vec![0u8; to_usize(META_BLOCK_BYTES)?];
        write_all(&dev0, Superblock::slot_offset(0), &zero)
            .await
            .map_err(|e| io_err("clear superblock", e))?;
        for d in &devices {
            d.sync_data().await.map_err(|e| io_err("sync", e))?;
        }
        let sb = Superblock {
            pool_guid: guid,
            generation: 1,
            chunk_bytes: chunk,
            journal: plan.journal,
            checkpoints: plan.checkpoints,
            active_checkpoint: 0,
            checkpoint_len: ck.len() as u64,
            checkpoint_crc: crc(&ck),
            journal_seq: 1,
            max_data_chunks: plan.max_data_chunks,
            devices: entries,
            integrity: integrity_plan,
        };
        write_all(&dev0, Superblock::slot_offset(sb.slot()), &sb.encode())
            .await
            .map_err(|e| io_err("write superblock", e))?;
        dev0.sync_data().await.map_err(|e| io_err("sync", e))?;
        tracing::info!(pool = %format!("{guid:032x}"), chunk_bytes = chunk, devices = devices.len(), "pool created");
        let cache_pages = opts.checksum_cache_bytes / META_BLOCK_BYTES;
        let integrity = integrity_plan
            .map(|i| Integrity::new(i, plan.max_data_chunks, chunk, cache_pages, false));
        let loaded = Loaded {
            space,
            state,
            sb,
            journal_pos: 0,
            integrity,
        };
        Ok(Self::start(guid, devices, loaded, opts))
    }

    fn start(guid: u128, devs: Vec<DeviceRef>, loaded: Loaded, opts: &PoolOptions) -> Self {
        let Loaded {
            space,
            state,
            sb,
            journal_pos,
            integrity,
        } = loaded;
        let inner = Arc::new(PoolInner {
            integrity,
            guid,
            chunk_bytes: sb.chunk_bytes,
            devices: RwLock::new(Devices { devs, space }),
            meta: MetaLock::new(state),
            checkpoint_capacity: sb.checkpoints[0].len_bytes,
            max_data_chunks: sb.max_data_chunks,
            commit: tokio::sync::Mutex::new(CommitState {
                next_seq: sb.journal_seq,
                sb,
                journal_pos,
                durable_change: 0,
            }),
            structure: tokio::sync::RwLock::new(()),
            locks: ChunkLocks::new(),
            poison: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            journal_bytes: AtomicU64::new(0),
            journal_records: AtomicU64::new(0),
            checkpoint_bytes: AtomicU64::new(0),
            timer: Mutex::new(None),
        });
        if let Some(interval) = opts.commit_interval {
            *inner.timer.lock() = spawn_timer(Arc::downgrade(&inner), interval);
        }
        Self { inner }
    }

    /// The guid of the pool `dev` belongs to, if it carries a pool's label
    /// (whether or not the pool's other devices are at hand); `None` for a
    /// device without one (new, or holding something else).
    pub async fn label_of(dev: &DeviceRef) -> Option<u128> {
        let block = to_usize(META_BLOCK_BYTES).ok()?;
        let b = read_exact(dev, 0, block).await.ok()?;
        Label::decode(b.as_slice()).ok().map(|l| l.pool_guid)
    }

    /// Opens the pool on `devices` (any order; labels give it), replays the
    /// journal and writes a fresh checkpoint so the journal restarts empty.
    pub async fn open(devices: Vec<DeviceRef>, opts: &PoolOptions) -> Result<Self> {
        if devices.is_empty() || devices.len() > MAX_DEVICES {
            return Err(invalid(format!("{} devices", devices.len())));
        }
        let block = to_usize(META_BLOCK_BYTES)?;
        let mut labelled = Vec::with_capacity(devices.len());
        for d in devices {
            let b = read_exact(&d, 0, block)
                .await
                .map_err(|e| Error::io("read label", e))?;
            let label = Label::decode(b.as_slice()).map_err(|e| format_err("device label", e))?;
            labelled.push((label, d));
        }
        labelled.sort_by_key(|(l, _)| l.device_index);
        let guid = labelled.first().map(|(l, _)| l.pool_guid).unwrap_or(0);
        let dev0 = labelled
            .first()
            .map(|(_, d)| d.clone())
            .ok_or_else(|| invalid("no devices"))?;
        let s0 = read_exact(&dev0, Superblock::slot_offset(0), block)
            .await
            .map_err(|e| Error::io("read superblock", e))?;
        let s1 = read_exact(&dev0, Superblock::slot_offset(1), block)
            .await
            .map_err(|e| Error::io("read superblock", e))?;
        let sb = Superblock::pick(s0.as_slice(), s1.as_slice())
            .ok_or_else(|| corrupt("no valid superblock on device 0"))?;
        if sb.devices.len() != labelled.len() {
            return Err(invalid(format!(
                "pool has {} devices, {} given",
                sb.devices.len(),
                labelled.len()
            )));
        }
        for (i, ((label, dev), entry)) in labelled.iter().zip(&sb.devices).enumerate() {
            if label.pool_guid != sb.pool_guid || label.device_index as usize != i {
                return Err(invalid(format!(
                    "device {i} belongs to another pool or slot"
                )));
            }
            if label.data_offset != entry.data_offset
                || label.data_chunks != entry.data_chunks
                || dev.len_bytes() < entry.len_bytes
            {
                return Err(corrupt(format!(
                    "device {i} label disagrees with the superblock"
                )));
            }
            check_device(dev, sb.chunk_bytes)?;
        }
        check_layout(&sb)?;
        let space = ChunkSpace::new(&sb.devices, sb.chunk_bytes)?;
        let active = sb
            .checkpoints
            .get(usize::from(sb.active_checkpoint))
            .copied()
            .ok_or_else(|| corrupt("active checkpoint"))?;
        let ck_len = to_usize(sb.checkpoint_len)?;
        let ck_read = to_usize(round_up(sb.checkpoint_len, META_BLOCK_BYTES).unwrap_or(0))?;
        let ck = read_exact(&dev0, active.offset, ck_read)
            .await
            .map_err(|e| Error::io("read checkpoint", e))?;
        let ck_bytes = ck
            .as_slice()
            .get(..ck_len)
            .ok_or_else(|| corrupt("checkpoint length"))?;
        if crc(ck_bytes) != sb.checkpoint_crc {
            return Err(corrupt("checkpoint checksum mismatch"));
        }
        let mut state = checkpoint::decode(ck_bytes, sb.chunk_bytes, space.total_chunks())
            .map_err(|e| format_err("checkpoint", e))?;
        let (journal_pos, batches) = replay(&dev0, &sb, &mut state).await?;
        tracing::info!(pool = %format!("{:032x}", sb.pool_guid), batches, "journal replayed");
        let devs: Vec<DeviceRef> = labelled.into_iter().map(|(_, d)| d).collect();
        let integrity = match sb.integrity {
            Some(area) => {
                let integrity = Integrity::new(
                    area,
                    sb.max_data_chunks,
                    sb.chunk_bytes,
                    opts.checksum_cache_bytes / META_BLOCK_BYTES,
                    true,
                );
                let dirty = integrity.load(&dev0).await?;
                if !dirty.is_empty() {
                    integrity
                        .recover(
                            &devs,
                            &space,
                            |p| state.alloc.is_used(p),
                            &dirty,
                            sb.chunk_bytes,
                        )
                        .await?;
                    tracing::info!(
                        pool = %format!("{:032x}", sb.pool_guid),
                        regions = dirty.len(),
                        blocks = integrity.recomputed_blocks.load(Ordering::Relaxed),
                        "checksums of dirty regions recomputed"
                    );
                }
                Some(integrity)
            }
            None => {
                tracing::warn!(
                    pool = %format!("{:032x}", sb.pool_guid),
                    "format version 1 pool: no block checksums, reads are not verified"
                );
                None
            }
        };
        let guid = if guid == sb.pool_guid {
            guid
        } else {
            sb.pool_guid
        };
        let loaded = Loaded {
            space,
            state,
            sb,
            journal_pos,
            integrity,
        };
        let pool = Self::start(guid, devs, loaded, opts);
        pool.inner.commit(true).await?;
        Ok(pool)
    }

    /// Pool identity.
    pub fn guid(&self) -> u128 {
        self.inner.guid
    }

    /// Chunk size.
    pub fn chunk_bytes(&self) -> u32 {
        self.inner.chunk_bytes
    }

    /// Space and memory figures.
    pub fn stats(&self) -> PoolStats {
        let devices = self.inner.devices.read().devs.len();
        let m = self.inner.meta.lock();
        let chunk = u64::from(self.inner.chunk_bytes);
        let total = m.state.alloc.total();
        let free = m.state.alloc.free_count();
        let used = total.saturating_sub(free);
        let mem: u64 = m
            .state
            .layers
            .values()
            .map(|l| l.map.memory_bytes())
            .fold(total.div_ceil(8), u64::saturating_add);
        let owned: u64 = m.state.layers.values().map(|l| l.map.data_len()).sum();
        let allocated = owned.saturating_mul(chunk);
        let per_tib = if allocated == 0 {
            0
        } else {
            u64::try_from(u128::from(mem) * (1u128 << 40) / u128::from(allocated))
                .unwrap_or(u64::MAX)
        };
        PoolStats {
            pool_guid: self.inner.guid,
            chunk_bytes: self.inner.chunk_bytes,
            devices,
            total_bytes: total.saturating_mul(chunk),
            used_bytes: used.saturating_mul(chunk),
            free_bytes: free.saturating_mul(chunk),
            reserved_bytes: m.state.reserved_chunks().saturating_mul(chunk),
            metadata_memory_bytes: mem,
            metadata_bytes_per_tib: per_tib,
            commits: self.inner.commits.load(Ordering::Relaxed),
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            journal_bytes: self.inner.journal_bytes.load(Ordering::Relaxed),
            journal_records: self.inner.journal_records.load(Ordering::Relaxed),
            checkpoint_bytes: self.inner.checkpoint_bytes.load(Ordering::Relaxed),
            integrity: self
                .inner
                .integrity
                .as_ref()
                .map(Integrity::stats)
                .unwrap_or_default(),
        }
    }

    /// Creates a volume; durable when this returns.
    pub async fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_bytes: u32,
        provisioning: Provisioning,
    ) -> Result<Arc<Volume>> {
        self.inner.check_usable()?;
        let _s = self.inner.structure.write().await;
        {
            let mut m = self.inner.meta.lock();
            let thick = provisioning == Provisioning::Thick;
            if thick && m.state.available_chunks() < m.state.chunks_of(size_bytes) {
                return Err(no_space(format!(
                    "thick volume {name} of {size_bytes} bytes does not fit"
                )));
            }
            self.inner.admit(&m.state, 0, 1)?;
            let id = m.state.take_id();
            let layer = m.state.take_id();
            m.record(Record::CreateVolume {
                id,
                layer,
                parent: None,
                name: name.to_owned(),
                size_bytes,
                block_bytes,
                thick,
                replica_id: random_u128(),
                io_seq: 0,
            })?;
            m.vols.insert(id, VolRuntime::default());
        }
        self.inner.flush_all().await?;
        self.volume(name)
    }

    /// Deletes a volume and its snapshots, freeing every chunk no clone
    /// still reads; durable when this returns.
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        self.inner.check_usable()?;
        let _s = self.inner.structure.write().await;
        {
            let mut m = self.inner.meta.lock();
            let id = m
                .state
                .volume_by_name(name)
                .map(|v| v.id)
                .ok_or_else(|| not_found(format!("volume {name}")))?;
            m.record(Record::DeleteVolume { id })?;
            m.vols.remove(&id);
            m.recorded_seq.remove(&id);
        }
        self.inner.flush_all().await
    }

    /// Grows a volume to `size_bytes`; durable when this returns.
    pub async fn grow_volume(&self, name: &str, size_bytes: u64) -> Result<()> {
        self.inner.check_usable()?;
        let _s = self.inner.structure.write().await;
        {
            let mut m = self.inner.meta.lock();
            let v = m
                .state
                .volume_by_name(name)
                .cloned()
                .ok_or_else(|| not_found(format!("volume {name}")))?;
            if v.thick {
                let extra = m
                    .state
                    .chunks_of(size_bytes)
                    .saturating_sub(m.state.chunks_of(v.size_bytes));
                if m.state.available_chunks() < extra {
                    return Err(no_space(format!("growing thick volume {name}")));
                }
            }
            m.record(Record::GrowVolume {
                id: v.id,
                size_bytes,
            })?;
        }
        self.inner.flush_all().await
    }

    /// Every volume.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        let m = self.inner.meta.lock();
        m.state
            .volumes
            .values()
            .map(|v| VolumeInfo {
                name: v.name.clone(),
                size_bytes: v.size_bytes,
                block_bytes: v.block_bytes,
                provisioning: if v.thick {
                    Provisioning::Thick
                } else {
                    Provisioning::Thin
                },
                replica_id: v.replica_id,
                snapshots: m
                    .state
                    .snapshots
                    .values()
                    .filter(|s| s.volume == v.id)
                    .count(),
            })
            .collect()
    }

    /// A handle on a volume.
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        let m = self.inner.meta.lock();
        let v = m
            .state
            .volume_by_name(name)
            .ok_or_else(|| not_found(format!("volume {name}")))?;
        Ok(Arc::new(Volume::new(
            self.inner.clone(),
            v.id,
            v.name.clone(),
            v.block_bytes,
        )))
    }

    /// Adds a backing device: its chunks join the pool. Durable when this
    /// returns (label written, then a checkpoint and superblock naming it).
    pub async fn add_device(&self, dev: DeviceRef) -> Result<()> {
        self.inner.check_usable()?;
        check_device(&dev, self.inner.chunk_bytes)?;
        let _s = self.inner.structure.write().await;
        let mut cs = self.inner.commit.lock().await;
        let (index, entries) = {
            let d = self.inner.devices.read();
            (d.devs.len(), d.space.entries().to_vec())
        };
        if index >= MAX_DEVICES {
            return Err(invalid(format!(
                "a pool holds at most {MAX_DEVICES} devices"
            )));
        }
        let entry = device_entry(dev.len_bytes(), other_data_offset(), self.inner.chunk_bytes)?;
        let mut all = entries;
        all.push(entry);
        let space = ChunkSpace::new(&all, self.inner.chunk_bytes)?;
        if space.total_chunks() > self.inner.max_data_chunks {
            return Err(no_space(format!(
                "the metadata area was sized for {} chunks",
                self.inner.max_data_chunks
            )));
        }
        let label = Label {
            pool_guid: self.inner.guid,
            device_index: u32::try_from(index).unwrap_or(u32::MAX),
            len_bytes: entry.len_bytes,
            data_offset: entry.data_offset,
            data_chunks: entry.data_chunks,
        };
        write_all(&dev, 0, &label.encode())
            .await
            .map_err(|e| Error::io("write label of new device", e))?;
        dev.sync_data()
            .await
            .map_err(|e| Error::io("sync new device", e))?;
        {
            let mut d = self.inner.devices.write();
            d.devs.push(dev);
            d.space = space.clone();
        }
        self.inner
            .meta
            .lock()
            .state
            .alloc
            .grow(space.total_chunks());
        self.inner.commit_locked(&mut cs, true).await
    }

    /// Commits all metadata (every write completed so far is durable).
    pub async fn flush(&self) -> Result<()> {
        self.inner.check_usable()?;
        self.inner.flush_all().await
    }

    /// Commits now and writes a checkpoint (replacing the journal), as a
    /// full journal does; for benches and operators. IO goes on meanwhile
    /// (the structure lock is not taken) and the pool stays open; dirty
    /// regions are cleaned as by any commit (not all at once, as close
    /// does).
    pub async fn checkpoint(&self) -> Result<()> {
        self.inner.check_usable()?;
        self.inner.checkpoint_running().await
    }

    /// Clean shutdown: commit and checkpoint, then refuse further use.
    pub async fn close(&self) -> Result<()> {
        self.inner.check_usable()?;
        let _s = self.inner.structure.write().await;
        let res = self.inner.commit(true).await;
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(timer) = self.inner.timer.lock().take() {
            timer.abort();
        }
        res
    }

    /// Checks the space-accounting invariants (every chunk owned once, the
    /// allocator agrees); meaningful when no IO is in flight.
    pub fn audit(&self) -> Audit {
        let m = self.inner.meta.lock();
        let mut extra = m.in_flight.clone();
        extra.extend(m.pending_free.iter().copied());
        m.state.audit(&extra)
    }

    /// The poison message, if the pool is poisoned.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.poison.lock().clone()
    }
}

impl PoolInner {
    pub(crate) fn check_usable(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Closed, "pool is closed"));
        }
        if !self.poisoned.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(p) = self.poison.lock().as_ref() {
            return Err(Error::new(ErrorKind::Poisoned, format!("pool: {p}")));
        }
        Ok(())
    }

    pub(crate) fn poison_pool(&self, why: String) {
        tracing::error!(pool = %format!("{:032x}", self.guid), reason = %why, "pool poisoned");
        let mut p = self.poison.lock();
        if p.is_none() {
            *p = Some(why);
        }
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Refuses a metadata change when the checkpoint could no longer hold
    /// the state after it.
    pub(crate) fn admit(&self, st: &State, entries: u64, layers: u64) -> Result<()> {
        if checkpoint::encoded_len_bound(st, entries, layers) > self.checkpoint_capacity {
            return Err(no_space("pool metadata area is full"));
        }
        Ok(())
    }

    pub(crate) fn locate(&self, phys: u64) -> Result<(DeviceRef, u64)> {
        let d = self.devices.read();
        let (idx, off) = d
            .space
            .locate(phys)
            .ok_or_else(|| corrupt(format!("physical chunk {phys} outside the pool")))?;
        let dev = d
            .devs
            .get(idx)
            .cloned()
            .ok_or_else(|| corrupt(format!("device {idx}")))?;
        Ok((dev, off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Superblock {
        use crate::format::superblock::DeviceEntry;
        let plan = plan_meta(&[16 << 20], 65536, None, None).unwrap();
        Superblock {
            pool_guid: 1,
            generation: 1,
            chunk_bytes: 65536,
            journal: plan.journal,
            checkpoints: plan.checkpoints,
            active_checkpoint: 0,
            checkpoint_len: 0,
            checkpoint_crc: 0,
            journal_seq: 1,
            max_data_chunks: plan.max_data_chunks,
            devices: vec![DeviceEntry {
                len_bytes: 16 << 20,
                data_offset: plan.data_offset,
                data_chunks: 10,
            }],
            integrity: None,
        }
    }

    #[test]
    fn layout_check_accepts_a_planned_pool_and_refuses_overlaps() {
        assert!(check_layout(&layout()).is_ok());
        let mut sb = layout();
        sb.checkpoints[1].offset = sb.checkpoints[0].offset + 4096;
        assert_eq!(check_layout(&sb).unwrap_err().kind(), ErrorKind::Corrupt);
        let mut sb = layout();
        sb.journal.len_bytes = u64::MAX;
        assert_eq!(check_layout(&sb).unwrap_err().kind(), ErrorKind::Corrupt);
        let mut sb = layout();
        sb.devices[0].data_offset = sb.checkpoints[1].offset;
        assert_eq!(check_layout(&sb).unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn random_ids_differ() {
        let ids: BTreeSet<u128> = (0..1000).map(|_| random_u128()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn seeded_ids_repeat_per_seed_differ_and_stay_on_their_thread() {
        let draw = |seed| {
            seed_ids(Some(seed));
            let ids: Vec<u128> = (0..1000).map(|_| random_u128()).collect();
            seed_ids(None);
            ids
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 1000);
        seed_ids(Some(7));
        let other = std::thread::spawn(random_u128).join().unwrap();
        seed_ids(None);
        assert_ne!(other, a[0]);
    }

    #[test]
    fn pad_rounds_up_to_whole_metadata_blocks() {
        assert_eq!(pad(&[1; 10]).unwrap().len(), 4096);
        assert_eq!(pad(&[1; 4096]).unwrap().len(), 4096);
        assert_eq!(pad(&[1; 4097]).unwrap().len(), 8192);
        assert!(pad(&[]).unwrap().is_empty());
    }

    #[test]
    fn state_errors_map_to_their_public_kinds() {
        let k = |e| state_err(e).kind();
        assert_eq!(k(StateError::NotFound("x".into())), ErrorKind::NotFound);
        assert_eq!(
            k(StateError::AlreadyExists("x".into())),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            k(StateError::Invalid("x".into())),
            ErrorKind::InvalidArgument
        );
    }
}
