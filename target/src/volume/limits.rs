//! The volume controller's bounds, named in one place (docs/architecture.md,
//! invariant 9). The link's dial timings are in `super::link`
//! (`CONNECT_TIMEOUT`, `BACKOFF_MIN`, `BACKOFF_MAX`, `HEARTBEAT_INTERVAL`),
//! the driver's in `super` (`TICK`, `REQUEST_QUEUE`).
//!
//! What a lagging replica can make the volume hold is bounded three ways:
//! by time (the ack timeout, `super::VolumeSpec::ack_timeout`), by count
//! ([`MAX_OWED_REQUESTS`]) and by bytes ([`MAX_OWED_BYTES`]); the queue to
//! each link is bounded above both ([`LINK_QUEUE`]).

use std::time::Duration;

/// A degraded replica without a rebuild is dropped (and so redialled, and
/// offered a rebuild again) after this long.
pub const REBUILD_RETRY: Duration = Duration::from_secs(2);

/// Mutating requests held behind a snapshot or resize at most; beyond,
/// they fail as `VolumeError::Unavailable` (NOT READY: the initiator
/// retries). The SCSI layer's command window keeps this far from full.
pub const MAX_HELD: usize = 1024;

/// A linked replica that owes more requests than this (sent to it and not
/// answered, acknowledged by others or not) is dropped like a replica
/// slower than the ack timeout (controller rule 9): what the volume keeps
/// for a lagging replica is bounded by size, not only by time. Far above
/// what a replica that keeps up owes, the requests in flight: four times
/// eight sessions at the largest command window
/// (`crate::limits::MAX_QUEUE_DEPTH`, 256). The controller looks at its
/// pending requests on every event, so this also bounds that work.
pub const MAX_OWED_REQUESTS: usize = 8192;

/// A linked replica that owes more data than this (bytes of write
/// payloads sent to it and not answered) is dropped (as
/// [`MAX_OWED_REQUESTS`]). Twice the data all the target's connections may
/// have in flight at once (`crate::limits::MAX_TARGET_BUFFER_BYTES`, 256
/// MiB): a replica that keeps up never owes that much.
pub const MAX_OWED_BYTES: u64 = 512 * 1024 * 1024;

/// Commands the driver queues to one link at most. Above the controller's
/// own bound ([`MAX_OWED_REQUESTS`], plus room for the unawaited requests
/// and the rebuild start of a connection), so the controller drops a
/// lagging replica first; should the queue still be full (a link stuck on
/// a socket), the command is reported not sent and the controller drops
/// the replica all the same. What comes back from a link is bounded by
/// what was sent to it (one answer per request, plus a rebuild's reports).
pub const LINK_QUEUE: usize = MAX_OWED_REQUESTS + 1024;

/// A replica that failed (an error answered to a write the others took, a
/// read error, its rebuild aborted for lack of space or a poisoned volume)
/// is redialled only after this long; each further failure without a
/// success in between doubles the wait, up to [`FAILED_RETRY_MAX`].
pub const FAILED_RETRY_MIN: Duration = Duration::from_secs(1);

/// The longest a failed replica waits before it is dialled again: how late
/// a replica whose pool was grown (or whose disk was replaced) at worst
/// comes back by itself.
pub const FAILED_RETRY_MAX: Duration = Duration::from_secs(60);

/// The wait before a replica that failed `failures` times in a row (at
/// least once) is dialled again: [`FAILED_RETRY_MIN`] doubled per failure
/// after the first, capped at [`FAILED_RETRY_MAX`].
pub fn failed_retry(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FAILED_RETRY_MIN
        .saturating_mul(1u32 << doublings)
        .min(FAILED_RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_retry_doubles_from_the_minimum_up_to_the_cap() {
        assert_eq!(failed_retry(0), FAILED_RETRY_MIN);
        assert_eq!(failed_retry(1), FAILED_RETRY_MIN);
        assert_eq!(failed_retry(2), FAILED_RETRY_MIN * 2);
        assert_eq!(failed_retry(3), FAILED_RETRY_MIN * 4);
        assert_eq!(failed_retry(7), FAILED_RETRY_MAX);
        assert_eq!(failed_retry(u32::MAX), FAILED_RETRY_MAX);
        let mut previous = Duration::ZERO;
        for failures in 1..100 {
            let wait = failed_retry(failures);
            assert!(wait >= previous && wait <= FAILED_RETRY_MAX);
            previous = wait;
        }
    }
}
