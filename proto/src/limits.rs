//! Every bound of the protocol, named in one place.
//!
//! Decoding checks each of these before it allocates or copies anything, and
//! encoding refuses to produce a frame the other side would reject, so a peer
//! speaking the same version never sees a limit error from a well-behaved
//! sender. Changing a value that is sent on the wire (all but
//! [`DEFAULT_MAX_PAYLOAD_BYTES`], which is local configuration) needs a new
//! protocol version.

/// Largest data payload of one `Write`, `ReadData` or `RebuildChunk`: 1 MiB,
/// the largest transfer the target issues per replica request.
pub const MAX_IO_BYTES: u32 = 1024 * 1024;

/// Room above [`MAX_IO_BYTES`] for the non-data part of a payload (the
/// per-block io_seq table of a full rebuild chunk is 2 KiB; a full snapshot
/// listing is about 280 KiB, well below `MAX_IO_BYTES` anyway).
pub const PAYLOAD_METADATA_SLACK_BYTES: u32 = 64 * 1024;

/// Default bound on one frame's payload, enforced by the decoder before it
/// reserves a single byte for it. Configurable per codec; this default fits
/// every message a well-behaved peer sends.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u32 = MAX_IO_BYTES + PAYLOAD_METADATA_SLACK_BYTES;

/// Longest volume or snapshot name, in UTF-8 bytes (a Kubernetes object name
/// is at most 253 characters; a PVC-derived volume name fits).
pub const MAX_NAME_BYTES: usize = 255;

/// Longest peer address of a `RebuildStart` (`host:port`, IPv6 in brackets,
/// or a DNS name), in bytes.
pub const MAX_ADDRESS_BYTES: usize = 255;

/// Most members of a volume's membership record (a volume has 1 to 5
/// replicas).
pub const MAX_MEMBERS: usize = 5;

/// Longest human-readable detail carried by an error reply or a rebuild
/// abort, in bytes. Details are for logs; programs match on the status.
pub const MAX_DETAIL_BYTES: usize = 256;

/// Longest pre-shared-key proof carried by a `Hello` (an HMAC-SHA-512 is 64).
pub const MAX_AUTH_PROOF_BYTES: usize = 64;

/// Most snapshots in one `SnapshotListing` reply; longer lists are paged
/// (`more` set, the next request starts after the last name received).
pub const MAX_SNAPSHOTS_PER_LISTING: usize = 1024;

/// Smallest block size a replica may report or a rebuild chunk may use.
pub const MIN_BLOCK_BYTES: u32 = 512;

/// Largest block size a replica may report or a rebuild chunk may use.
pub const MAX_BLOCK_BYTES: u32 = 64 * 1024;

/// Most blocks in one `RebuildChunk`: with 4 KiB blocks a chunk carries
/// [`MAX_IO_BYTES`] of data. The data length is also bounded by
/// `MAX_IO_BYTES` whatever the block size.
pub const MAX_REBUILD_CHUNK_BLOCKS: u32 = 256;

/// Most byte ranges in one `RebuildStart` of `RebuildSource::Ranges`; a
/// sink with more asks for them in several streams.
pub const MAX_REBUILD_RANGES: usize = 4096;

/// The unit a replica verifies data in, and so the unit of the ranges a
/// `ChecksumError` reply names: a checksum covers each 4 KiB block of the
/// volume (the engine's `SUM_BLOCK_BYTES`).
pub const CHECKSUM_BLOCK_BYTES: u64 = 4096;

/// Most bad ranges in one `ChecksumError` reply. Its ranges are whole
/// [`CHECKSUM_BLOCK_BYTES`] blocks within the read's extent aligned out to
/// blocks, merged (never adjacent): a read of [`MAX_IO_BYTES`] touches at
/// most 257 blocks, so at most 129 ranges (every other block bad).
pub const MAX_CHECKSUM_RANGES: usize =
    (MAX_IO_BYTES as usize / CHECKSUM_BLOCK_BYTES as usize + 1).div_ceil(2);
/// Largest extent one `Digest` covers: 64 MiB (it ships no data back,
/// only a digest; the replica reads every mapped block of it).
pub const MAX_DIGEST_BYTES: u32 = 64 * 1024 * 1024;

/// Most bad ranges one `RangeDigest` reply names (a replica with more
/// folds the rest into its last range). 1 MiB of alternating good and bad
/// 4 KiB blocks is 128 ranges.
pub const MAX_DIGEST_BAD_RANGES: usize = 1024;

// The bounds agree with each other; checked at compile time.
const _: () = {
    // A full rebuild chunk: block size, count and one io_seq per block.
    let rebuild_table = 8 + 8 * MAX_REBUILD_CHUNK_BLOCKS;
    assert!(DEFAULT_MAX_PAYLOAD_BYTES >= MAX_IO_BYTES + rebuild_table);
    // A full snapshot listing: count, flag and (name, io_seq, time) entries.
    let listing = 5 + MAX_SNAPSHOTS_PER_LISTING * (2 + MAX_NAME_BYTES + 8 + 8);
    assert!(listing <= DEFAULT_MAX_PAYLOAD_BYTES as usize);
    // A full ranges request: the start's fixed fields and 16 bytes a range.
    let ranges = 8 + 2 + MAX_NAME_BYTES + 2 + MAX_ADDRESS_BYTES + 1 + 4 + 16 * MAX_REBUILD_RANGES;
    assert!(ranges <= DEFAULT_MAX_PAYLOAD_BYTES as usize);
    // A full digest reply: digest, mapped blocks, count and 16 bytes a range.
    assert!(20 + 16 * MAX_DIGEST_BAD_RANGES <= DEFAULT_MAX_PAYLOAD_BYTES as usize);
    assert!(MIN_BLOCK_BYTES.is_power_of_two() && MAX_BLOCK_BYTES.is_power_of_two());
    assert!(MIN_BLOCK_BYTES <= MAX_BLOCK_BYTES && MAX_BLOCK_BYTES <= MAX_IO_BYTES);
    // A full checksum error: its count and 16 bytes a range.
    assert!(MAX_CHECKSUM_RANGES == 129);
    assert!(2 + 16 * MAX_CHECKSUM_RANGES <= DEFAULT_MAX_PAYLOAD_BYTES as usize);
    assert!(MAX_CHECKSUM_RANGES <= u16::MAX as usize);
    // Strings carry a u16 length.
    assert!(MAX_NAME_BYTES <= u16::MAX as usize);
    assert!(MAX_ADDRESS_BYTES <= u16::MAX as usize);
    assert!(MAX_DETAIL_BYTES <= u16::MAX as usize);
    assert!(MAX_AUTH_PROOF_BYTES <= u16::MAX as usize);
};
