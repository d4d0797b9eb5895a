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
