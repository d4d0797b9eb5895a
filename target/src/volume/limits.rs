//! The volume controller's bounds, named in one place (docs/architecture.md,
//! invariant 9). The link's dial timings are in `super::link`
//! (`CONNECT_TIMEOUT`, `BACKOFF_MIN`, `BACKOFF_MAX`, `HEARTBEAT_INTERVAL`),
//! the driver's in `super` (`TICK`, `REQUEST_QUEUE`).

use std::time::Duration;

/// A degraded replica without a rebuild is dropped (and so redialled, and
/// offered a rebuild again) after this long.
pub const REBUILD_RETRY: Duration = Duration::from_secs(2);

/// Mutating requests held behind a snapshot or resize at most; beyond,
/// they fail as `VolumeError::Unavailable` (NOT READY: the initiator
/// retries). The SCSI layer's command window keeps this far from full.
pub const MAX_HELD: usize = 1024;

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
