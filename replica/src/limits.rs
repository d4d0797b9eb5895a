//! Every bound of the replica daemon, in one place.

use std::time::Duration;

/// Requests of one connection being worked on at once. The read loop stops
/// reading when they are all taken, so a fast target is slowed by TCP
/// backpressure instead of growing a queue here.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 128;

/// Replies queued for the connection's writer (one per request in flight,
/// plus a few for errors answered by the read loop itself).
pub const REPLY_QUEUE: usize = MAX_IN_FLIGHT_PER_CONNECTION + 16;

/// Connections served at once; more are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// The highest epoch a session may claim. A volume replica that accepted
/// `u64::MAX` could never be fenced again (no successor exists), so two
/// targets would end up sharing it: a claim above this is refused
/// (`StaleEpoch`) and the epoch space of the volume is exhausted.
pub const MAX_EPOCH: u64 = u64::MAX - 1;

/// A new connection must complete its handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A session that sends nothing (not even a heartbeat) for this long is
/// considered dead and closed, which frees the volume for a reconnect.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// On SIGTERM, in-flight requests get this long to finish before the pool
/// is closed anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long `run` waits for a device that is in use to be released (a
/// crashed predecessor's io_uring is torn down asynchronously by the
/// kernel) before giving up with a clear error.
pub const IN_USE_WAIT: Duration = Duration::from_secs(5);

/// Data of one `RebuildChunk` the source sends (and so the most the sink
/// holds of a stream at once, besides the codec's buffer). Smaller than a
/// frame's bound so that a stream interleaves well with live IO.
pub const REBUILD_PIECE_BYTES: u64 = 256 * 1024;

/// Pieces of one rebuild stream in flight at each end: the source reads
/// this many ahead of the socket, the sink applies this many at once. A
/// piece at a time made the stream latency-bound (a read, a loopback hop
/// and a write in turn per piece; docs/benchmarks.md "Rebuild"); this
/// bounds the memory a stream holds at each end to this many pieces.
pub const REBUILD_PIECES_IN_FLIGHT: usize = 8;

/// The sink's dial and handshake with the rebuild source.
pub const REBUILD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The sink gives up on a source that sends nothing for this long.
pub const REBUILD_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the sink reports `RebuildProgress` to its target.
pub const REBUILD_PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// The sink persists its resume point (and so flushes what it applied)
/// after this many bytes.
pub const REBUILD_CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// The range a full rebuild by digest compares at a time (`rebuild` module
/// doc, "By digest"): a range whose digests agree moves no data, one that
/// differs is pulled whole. Smaller ranges pull less around a difference
/// and cost more round trips; whole 4 KiB blocks, within a `Digest`'s
/// bound.
pub const REBUILD_DIGEST_RANGE_BYTES: u64 = 1024 * 1024;

/// `Digest` requests a sink has in flight to its source at once (replies
/// are matched by io_seq): enough to hide the round trip behind the
/// source's reads; each reply is a few bytes.
pub const REBUILD_DIGESTS_IN_FLIGHT: usize = 8;

const _: () = {
    assert!(REBUILD_DIGEST_RANGE_BYTES <= cstor_engine::limits::MAX_DIGEST_BYTES);
    assert!(REBUILD_DIGEST_RANGE_BYTES <= cstor_proto::limits::MAX_DIGEST_BYTES as u64);
    assert!(REBUILD_DIGEST_RANGE_BYTES.is_multiple_of(cstor_engine::limits::SUM_BLOCK_BYTES));
    assert!(REBUILD_DIGESTS_IN_FLIGHT >= 1);
};
