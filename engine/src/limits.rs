//! Every bound of the pool store, named in one place (TigerStyle: put a
//! limit on everything). On-disk sizes are in `format`; these are the
//! limits on what callers may ask for and on what the store keeps.

/// Smallest chunk size a pool may be created with.
pub const MIN_CHUNK_BYTES: u32 = 4096;
/// Largest chunk size a pool may be created with.
pub const MAX_CHUNK_BYTES: u32 = 1 << 20;
/// Chunk size when the caller does not choose one.
pub const DEFAULT_CHUNK_BYTES: u32 = 64 * 1024;
/// Backing devices per pool (the superblock's device table is this long).
pub const MAX_DEVICES: usize = 64;
/// Length of a volume or snapshot name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Opaque per-volume attribute blob (membership / config), in bytes.
pub const MAX_ATTRS_BYTES: usize = 4096;
/// Membership record of a volume replica (opaque to the engine; written by
/// the replica daemon for the target), in bytes.
pub const MAX_MEMBERSHIP_BYTES: usize = 1024;
/// Volumes + snapshots + hidden layers in a pool.
pub const MAX_LAYERS: usize = 4096;
/// Snapshots in one volume's ancestry (a read walks at most this many maps).
pub const MAX_CHAIN_DEPTH: usize = 256;
/// Largest single read / write / unmap, in bytes.
pub const MAX_IO_BYTES: u64 = 16 * 1024 * 1024;
/// Stripes of the per-chunk IO lock table.
pub const IO_LOCK_STRIPES: usize = 4096;
/// Group-commit timer: metadata is committed at least this often.
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 1000;
/// Journal region size bounds (default: 1/64 of device 0, clamped).
pub const MIN_JOURNAL_BYTES: u64 = 64 * 1024;
/// See [`MIN_JOURNAL_BYTES`].
pub const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;
/// Largest volume, in bytes (keeps every chunk index and byte offset far
/// from overflow: 2^50 = 1 PiB).
pub const MAX_VOLUME_BYTES: u64 = 1 << 50;
/// Chunks changed since an io_seq returned per page by
/// `Volume::changed_chunks`.
pub const MAX_CHANGES_PER_PAGE: usize = 4096;
/// Bytes a checksum covers: every 4 KiB block of a physical chunk has its
/// own crc32c (FORMAT.md "Block checksums").
pub const SUM_BLOCK_BYTES: u64 = 4096;
/// Checksum pages a pool keeps in memory by default
/// (`PoolOptions::checksum_cache_bytes`): 256 MiB holds the checksums of
/// 256 GiB of data; pages beyond it are read from the checksum area when
/// used (one 4 KiB read per 4 MiB of data) and evicted when clean. Pages
/// changed since the last commit stay until it writes them.
pub const DEFAULT_CHECKSUM_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Largest range one `Volume::digest` call covers (it ships no data, so it
/// may be larger than [`MAX_IO_BYTES`]; it reads every mapped block of it).
pub const MAX_DIGEST_BYTES: u64 = 64 * 1024 * 1024;
/// Data a bit of the dirty-region bitmap covers (FORMAT.md "Block
/// checksums"): the first write into a clean region waits for one bitmap
/// write and sync; recovery after a power cut re-reads every mapped chunk
/// of a dirty region to recompute its checksums.
pub const DIRTY_REGION_BYTES: u64 = 1024 * 1024;
/// Commits a region must go without a write before its bit is cleared (so
/// a hot region stays dirty and its writes pay no bitmap sync). Counted in
/// commits, not time, so a pool behaves the same under a simulated clock;
/// a clean shutdown cleans every region.
pub const DIRTY_REGION_QUIET_COMMITS: u64 = 16;
