//! Every bound of the target, named in one place (docs/architecture.md,
//! invariant 9).
//!
//! A limit protects the target from an initiator (or a corrupted stream) that
//! would make it allocate, hold a connection or loop without end. Values the
//! RFC fixes carry the section that fixes them; values that are our policy
//! say why they were chosen. The bounds an operator may change are the
//! defaults of `cstor target` flags (docs/configuration.md); the SCSI
//! layer's are in `crate::scsi::limits`.

use std::time::Duration;

// ------------------------------------------------------------ connections

/// Connections served at once by one target (default of
/// `--max-connections`): a volume has one session per node that mounts
/// it (a few with multipath), so 64 leaves ample room while bounding the
/// tasks and buffers a flood of connections can make the target hold.
/// More are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Connections from one source IP address at once, logged in or not
/// (default of `--max-connections-per-source`): a node logs in once per
/// path, so 8 covers multipath; more from one address are closed at
/// once, so that one host cannot take every slot of [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 8;

/// A new connection must send its first Login PDU within this: an
/// initiator sends it right after connecting, and an idle connection must
/// not hold a slot for the whole [`LOGIN_TIMEOUT`].
pub const FIRST_PDU_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection must finish logging in within this (CHAP included).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Ping a quiet initiator after this long (NOP-In, RFC 7143 §11.19).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// …and close the connection if it does not answer within this.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A PDU the initiator does not take off the socket within this (it
/// stopped reading) closes the connection, which gives back the buffer
/// budget its unsent Data-In holds. As long as the keepalive timeout: an
/// initiator that reads nothing for that long is as dead as one that does
/// not answer a ping.
pub const SEND_TIMEOUT: Duration = KEEPALIVE_TIMEOUT;

/// At most this many events (PDUs, completions) are handled between two
/// flushes of a connection's socket (and between two looks at shutdown
/// and revocation): enough to answer a full queue in one write.
pub const EVENTS_PER_FLUSH: usize = 64;

/// Pause after a failed `accept` (out of file descriptors), so the accept
/// loop does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// On shutdown, connections get this long to end before the target exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

// ------------------------------------------------------- buffered IO data

/// Data one connection may hold at once (default of
/// `--max-buffered-bytes-per-connection`), in bytes: write data from the
/// moment its R2Ts are sent until the volume completed the write, and
/// read data from the moment the read is handed to the volume until its
/// Data-In was queued to the socket. Past it, commands wait in the
/// command window (which then closes) and TCP pushes back. 32 MiB is a
/// queue of 32 commands of 1 MiB (open-iscsi's default queue depth and
/// our optimal transfer size), twice the largest single command.
pub const MAX_CONNECTION_BUFFER_BYTES: u64 = 32 * 1024 * 1024;

/// Data all the connections of the target may hold at once (default of
/// `--max-buffered-bytes`), in bytes: eight connections at their own
/// bound. Commands past it wait as for the connection's bound; budget
/// freed anywhere wakes them.
pub const MAX_TARGET_BUFFER_BYTES: u64 = 256 * 1024 * 1024;

// ------------------------------------------------------------ iSCSI layer

/// Basic Header Segment length, RFC 7143 §11.2.1.
pub const BHS_LEN: usize = 48;

/// A CRC32C header or data digest, RFC 7143 §11.1.
pub const DIGEST_LEN: usize = 4;

/// TotalAHSLength is one byte counting 4-byte words (RFC 7143 §11.2.1.4), so
/// the AHS can never exceed this many bytes.
pub const MAX_AHS_BYTES: usize = 255 * 4;

/// The largest data segment a receiver may declare (MaxRecvDataSegmentLength
/// is 512 to 2^24-1, RFC 7143 §13.12); DataSegmentLength is a 24-bit field.
pub const MAX_DATA_SEGMENT_FIELD: u32 = (1 << 24) - 1;

/// Smallest value of MaxRecvDataSegmentLength / MaxBurstLength /
/// FirstBurstLength, RFC 7143 §13.12-§13.14.
pub const MIN_SEGMENT_OR_BURST: u32 = 512;

/// During the login phase both sides use the default
/// MaxRecvDataSegmentLength of 8192 (RFC 7143 §13.12): the declared value
/// only applies once the connection is in full feature phase.
pub const LOGIN_MAX_RECV_DATA_SEGMENT: u32 = 8192;

/// The data segment we accept in full feature phase (declared as our
/// MaxRecvDataSegmentLength). 256 KiB keeps one Data-Out PDU per connection
/// well below the per-connection in-flight cap.
pub const OUR_MAX_RECV_DATA_SEGMENT: u32 = 256 * 1024;

/// Largest MaxBurstLength we accept (1 MiB): bounds one R2T's buffer.
pub const OUR_MAX_BURST: u32 = 1024 * 1024;

/// Largest FirstBurstLength we accept (64 KiB): bounds unsolicited data held
/// per command before the command is dispatched.
pub const OUR_FIRST_BURST: u32 = 64 * 1024;

/// Longest key name, RFC 7143 §6.1 ("key-name ... MUST NOT exceed 63 bytes").
pub const MAX_KEY_BYTES: usize = 63;

/// Longest value we parse. RFC 7143 §6.1 bounds ordinary values at 255 bytes
/// but CHAP_C/CHAP_R are large-binary-values of up to 1024 binary bytes
/// (§12.1.3), which encode to at most 2 + 2 * 1024 hex characters.
pub const MAX_VALUE_BYTES: usize = 2 + 2 * 1024;

/// Bytes of key=value text accumulated across C-bit continuations of one
/// login or text request (RFC 7143 §6.3, §11.10.2). A login a real initiator
/// sends is about 1 KiB; 64 KiB leaves room and still caps memory.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Key=value pairs in one (possibly multi-PDU) request. Linux open-iscsi sends
/// about 20 in its largest login request. 64 answers of at most
/// 63 + "=NotUnderstood" bytes still fit one 8192-byte login response.
pub const MAX_KEYS: usize = 64;

/// Login/Text exchanges in one login phase before we give up: every step of
/// the RFC's login completes in a handful, so an initiator looping forever is
/// refused instead of holding the connection.
pub const MAX_LOGIN_EXCHANGES: u32 = 32;

/// CHAP challenge length we send (RFC 7143 §12.1.3 asks for a challenge at
/// least as long as the hash; 32 bytes covers SHA-256).
pub const CHAP_CHALLENGE_BYTES: usize = 32;

/// Largest binary CHAP_C / CHAP_R value accepted, RFC 7143 §12.1.3.
pub const CHAP_MAX_BINARY_BYTES: usize = 1024;

/// Shortest CHAP secret we let an operator configure (RFC 7143 §12.1.3:
/// "at least 96 bits").
pub const CHAP_MIN_SECRET_BYTES: usize = 12;

/// Longest CHAP secret we let an operator configure: keeps secrets within one
/// value's bounds.
pub const CHAP_MAX_SECRET_BYTES: usize = 255;

/// Longest iSCSI name, RFC 7143 §4.2.7.1 ("MUST NOT be larger than 223
/// bytes").
pub const MAX_ISCSI_NAME_BYTES: usize = 223;

/// Immediate commands (I bit) in flight per session, outside the CmdSN
/// window: initiators use them for task management and pings, a handful at
/// a time (RFC 7143 §3.2.2.1 lets the target refuse more with Reject 0x06).
pub const MAX_IMMEDIATE_COMMANDS: u32 = 4;

/// Largest command window (queue depth) a session may be configured with.
pub const MAX_QUEUE_DEPTH: u32 = 256;

/// Expected Data Transfer Length of one command we accept (16 MiB): above
/// what we report as the maximum transfer length in the Block Limits VPD
/// page, so only a misbehaving initiator reaches it.
pub const MAX_COMMAND_DATA_BYTES: u32 = 16 * 1024 * 1024;

// ----------------------------------------------------------- volume layer
//
// The volume controller's bounds (`crate::volume::controller`). The link's
// dial timings are in `crate::volume::link` (`CONNECT_TIMEOUT`,
// `BACKOFF_MIN`, `BACKOFF_MAX`, `HEARTBEAT_INTERVAL`), the driver's in
// `crate::volume` (`TICK`, `REQUEST_QUEUE`).
//
// What a lagging replica can make the volume hold is bounded three ways:
// by time (the ack timeout, `crate::volume::VolumeSpec::ack_timeout`), by
// count ([`MAX_OWED_REQUESTS`]) and by bytes ([`MAX_OWED_BYTES`]); the queue
// to each link is bounded above both ([`LINK_QUEUE`]).

/// The highest epoch the target claims. A volume opens with one above the
/// highest epoch any replica accepted; a replica that accepted `u64::MAX`
/// could never be fenced by a successor, so that epoch is never claimed
/// (replicas refuse it too): when the highest accepted is `MAX_EPOCH` or
/// more, the volume does not open (`OpenError::EpochExhausted`) rather than
/// wrap to an old epoch or share one with another target.
pub const MAX_EPOCH: u64 = u64::MAX - 1;

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
/// eight sessions at the largest command window ([`MAX_QUEUE_DEPTH`], 256).
/// The controller looks at its pending requests on every event, so this
/// also bounds that work.
pub const MAX_OWED_REQUESTS: usize = 8192;

/// A linked replica that owes more data than this (bytes of write
/// payloads sent to it and not answered) is dropped (as
/// [`MAX_OWED_REQUESTS`]). Twice the data all the target's connections may
/// have in flight at once ([`MAX_TARGET_BUFFER_BYTES`], 256 MiB): a replica
/// that keeps up never owes that much.
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

/// A replica whose reads named more than this many bad 4 KiB blocks
/// (`ChecksumError`, controller rule 7) within [`CHECKSUM_ERROR_WINDOW`] is
/// reported in the volume status (`checksum_warning`; docs/metrics.md,
/// `cstor_volume_replica_checksum_warning`). It stays healthy: each bad
/// block is read from another replica and written back, and one bad block
/// is not a failed disk; a disk that keeps rotting is the operator's to
/// replace. 16 blocks (64 KiB) in an hour is far above what a healthy disk
/// shows (none) and what a single bad sector makes (one block per read of
/// it until the write-back lands).
pub const CHECKSUM_WARN_BLOCKS: u64 = 16;

/// The window [`CHECKSUM_WARN_BLOCKS`] counts over.
pub const CHECKSUM_ERROR_WINDOW: Duration = Duration::from_secs(3600);

/// Checksum error reports kept per replica for that window at most: past
/// it, the newest entry absorbs further reports (and is kept longest, so
/// the window's count errs high, never low). Bounds what a replica
/// answering every read with a checksum error makes the target hold.
pub const MAX_CHECKSUM_ERROR_EVENTS: usize = 256;

/// The wait before a replica that failed `failures` times in a row (at
/// least once) is dialled again: [`FAILED_RETRY_MIN`] doubled per failure
/// after the first, capped at [`FAILED_RETRY_MAX`].
pub fn failed_retry(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FAILED_RETRY_MIN
        .saturating_mul(1u32 << doublings)
        .min(FAILED_RETRY_MAX)
}

// ------------------------------------------------------------------ scrub

/// Bytes one scrub step compares (`volume::scrub`): one `Digest` per
/// healthy replica, and a repair of it fits one read and one write
/// (`cstor_proto::limits::MAX_IO_BYTES`).
pub const SCRUB_RANGE_BYTES: u64 = 1024 * 1024;

/// A scrub's pace when neither its start nor the volume's rebuild throttle
/// names one: 64 MiB/s of volume compared (each healthy replica reads that
/// much, mapped data only), a small share of a disk's bandwidth.
pub const SCRUB_DEFAULT_BYTES_PER_SEC: u64 = 64 * 1024 * 1024;

/// Compares of one range at most (the first, then one after each repair
/// or moot repair) before the range is reported undecided.
pub const SCRUB_RANGE_ATTEMPTS: u32 = 4;

/// Ranges a scrub's status lists (mismatched, repaired or undecided) at
/// most; past it they are counted, not listed.
pub const MAX_SCRUB_REPORTED_RANGES: usize = 64;

/// The scrub cursor is persisted at most this often while a scrub runs
/// (and whenever it stops or ends).
pub const SCRUB_PERSIST_EVERY: Duration = Duration::from_secs(5);

/// A scrub with no healthy replica to ask waits this long before it asks
/// again (it goes on once one is back, or until stopped).
pub const SCRUB_UNAVAILABLE_PAUSE: Duration = Duration::from_secs(1);

/// Shortest `--scrub-interval`.
pub const MIN_SCRUB_INTERVAL: Duration = Duration::from_secs(60);

const _: () = assert!(SCRUB_RANGE_BYTES <= cstor_proto::limits::MAX_IO_BYTES as u64);
const _: () = assert!(SCRUB_RANGE_BYTES <= cstor_proto::limits::MAX_DIGEST_BYTES as u64);
const _: () = assert!(SCRUB_RANGE_BYTES.is_multiple_of(4096));

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
