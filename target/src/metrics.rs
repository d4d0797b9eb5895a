//! The target's Prometheus metrics (docs/metrics.md is the reference).
//!
//! Two sources:
//! - counters and latency histograms kept at the SCSI → volume boundary
//!   (`server::block::perform_measured`): one count per block request
//!   the logical unit hands to the volume, by operation;
//! - the bounds of what peers can make the target hold
//!   ([`crate::limits`]): the IO data buffered now against its bound, the
//!   connections open and those refused by the connection caps;
//! - gauges read from the volume's status ([`VolumeStatus`], the same
//!   snapshot the management API's GetStatus shows) at each scrape, and
//!   the rebuild byte counter, the status's per-replica `rebuilt_bytes`
//!   (every byte a rebuild reported, counted by the volume driver).
//!
//! Every sample carries `volume`. Counters only grow while the process
//! lives; Prometheus's rate() handles the reset of a restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cstor_mgmt::exposition::{Exposition, Histogram, MetricType, LATENCY_BUCKETS_SECONDS};

use crate::iscsi::budget::BufferLimits;
use crate::scsi::{BlockRequest, IoError};
use crate::volume::{ReplicaState, VolumeStatus};

/// What a block request does to the volume, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Read,
    /// WRITE, WRITE SAME and COMPARE AND WRITE (its write part).
    Write,
    Flush,
    /// UNMAP (WRITE SAME with a zero block is a write).
    Unmap,
}

impl IoOp {
    const ALL: [IoOp; 4] = [IoOp::Read, IoOp::Write, IoOp::Flush, IoOp::Unmap];

    pub fn as_str(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Unmap => "unmap",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The operation and the bytes it moves, of a request on blocks of
    /// `block_size` bytes; `None` for requests that do no volume IO (GET
    /// LBA STATUS). Saturating: a request out of range fails in the volume
    /// and counts no bytes anyway.
    pub fn of(request: &BlockRequest, block_size: u32) -> Option<(IoOp, u64)> {
        let bs = u64::from(block_size);
        Some(match request {
            BlockRequest::Read { blocks, .. } => {
                (IoOp::Read, u64::from(*blocks).saturating_mul(bs))
            }
            BlockRequest::Write { data, .. } => (IoOp::Write, data.len() as u64),
            BlockRequest::WriteSame { blocks, .. } => (IoOp::Write, blocks.saturating_mul(bs)),
            BlockRequest::CompareAndWrite { write, .. } => (IoOp::Write, write.len() as u64),
            BlockRequest::Unmap { extents, .. } => (
                IoOp::Unmap,
                extents
                    .iter()
                    .map(|e| e.blocks.saturating_mul(bs))
                    .fold(0, u64::saturating_add),
            ),
            BlockRequest::Flush => (IoOp::Flush, 0),
            BlockRequest::LbaStatus { .. } => return None,
        })
    }
}

/// The `kind` label of a failed request.
fn error_kind(error: &IoError) -> &'static str {
    match error {
        IoError::LbaOutOfRange => "lba_out_of_range",
        IoError::ReadError => "read_error",
        IoError::WriteError => "write_error",
        IoError::WriteProtected => "write_protected",
        IoError::SpaceAllocationFailed => "no_space",
        IoError::NotReady => "not_ready",
        IoError::Miscompare { .. } => "miscompare",
        IoError::Internal => "internal",
    }
}

const ERROR_KINDS: [&str; 7] = [
    "lba_out_of_range",
    "read_error",
    "write_error",
    "write_protected",
    "not_ready",
    "miscompare",
    "internal",
];

#[derive(Debug)]
struct OpStats {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    latency: Histogram,
}

impl OpStats {
    fn new() -> Self {
        OpStats {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Histogram::new(LATENCY_BUCKETS_SECONDS),
        }
    }
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address had `--max-connections-per-source` open.
    PerSource,
    /// The target had `--max-connections` open.
    Total,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerSource => "per_source",
            Refusal::Total => "total",
        }
    }
}

/// The bounds the target was started with, exported as gauges.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub buffers: BufferLimits,
    pub connections: usize,
    pub connections_per_source: usize,
}

/// The metrics of one target (one volume).
#[derive(Debug)]
pub struct TargetMetrics {
    volume: String,
    ops: [OpStats; IoOp::ALL.len()],
    bounds: Option<Bounds>,
    connections_open: AtomicU64,
    /// By [`Refusal`]: per source, total.
    refused: [AtomicU64; 2],
}

impl TargetMetrics {
    pub fn new(volume: impl Into<String>) -> Self {
        TargetMetrics {
            volume: volume.into(),
            ops: std::array::from_fn(|_| OpStats::new()),
            bounds: None,
            connections_open: AtomicU64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Exports `bounds` (and the buffered bytes of its budget) too.
    pub fn with_bounds(mut self, bounds: Bounds) -> Self {
        self.bounds = Some(bounds);
        self
    }

    /// A connection was admitted.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// An admitted connection ended.
    pub fn connection_closed(&self) {
        let _ = self
            .connections_open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// A connection was closed at accept.
    pub fn connection_refused(&self, why: Refusal) {
        let at = match why {
            Refusal::PerSource => 0,
            Refusal::Total => 1,
        };
        if let Some(count) = self.refused.get(at) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one finished request: always an op and its latency; its
    /// bytes when it succeeded, its error kind when it failed.
    pub fn record<T>(&self, op: IoOp, bytes: u64, elapsed: Duration, result: &Result<T, IoError>) {
        let Some(stats) = self.ops.get(op.index()) else {
            return;
        };
        stats.ops.fetch_add(1, Ordering::Relaxed);
        stats.latency.observe(elapsed);
        match result {
            Ok(_) => {
                stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                let kind = error_kind(e);
                if let Some(at) = ERROR_KINDS.iter().position(|k| *k == kind) {
                    if let Some(count) = stats.errors.get(at) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// The text of a scrape, with gauges from `status`.
    pub fn render(&self, status: &VolumeStatus) -> String {
        let mut out = Exposition::new();
        self.render_volume(&mut out, status);
        out.finish()
    }

    /// Every family of [`TargetMetrics::render`], into `out`.
    fn render_volume(&self, out: &mut Exposition, status: &VolumeStatus) {
        self.render_io(out);
        self.render_bounds(out);
        render_status(out, &self.volume, status);
        self.render_rebuild(out, status);
        self.render_integrity(out, status);
    }

    /// Checksum errors the replicas reported and the blocks written back
    /// (controller rule 7): counters kept by the volume driver, from the
    /// status.
    fn render_integrity(&self, out: &mut Exposition, status: &VolumeStatus) {
        let v = self.volume.as_str();
        out.family(
            "cstor_checksum_errors_total",
            MetricType::Counter,
            "4 KiB blocks each replica's reads found failing their checksum (read elsewhere, \
             written back).",
        );
        for ((replica, _), blocks) in status.replicas.iter().zip(&status.checksum_errors) {
            out.sample(
                "cstor_checksum_errors_total",
                &[("volume", v), ("replica", &replica.to_string())],
                *blocks,
            );
        }
        out.family(
            "cstor_volume_replica_checksum_warning",
            MetricType::Gauge,
            "1 while a replica's reads found more than CHECKSUM_WARN_BLOCKS bad blocks within \
             CHECKSUM_ERROR_WINDOW (its disk may be going bad; it stays healthy).",
        );
        for ((replica, _), warning) in status.replicas.iter().zip(&status.checksum_warnings) {
            out.sample(
                "cstor_volume_replica_checksum_warning",
                &[("volume", v), ("replica", &replica.to_string())],
                u64::from(*warning),
            );
        }
        out.family(
            "cstor_blocks_repaired_total",
            MetricType::Counter,
            "4 KiB blocks written back after a replica found them bad, acknowledged at quorum.",
        );
        out.sample(
            "cstor_blocks_repaired_total",
            &[("volume", v)],
            status.blocks_repaired,
        );
    }

    /// [`TargetMetrics::render`] and the volume's scrub
    /// (docs/metrics.md, "Scrub").
    pub fn render_with_scrub(
        &self,
        status: &VolumeStatus,
        scrub: &crate::volume::scrub::Scrub,
    ) -> String {
        let mut out = Exposition::new();
        self.render_volume(&mut out, status);
        scrub.render_metrics(&mut out);
        out.finish()
    }

    fn render_io(&self, out: &mut Exposition) {
        let v = self.volume.as_str();
        let counter = |out: &mut Exposition, op: IoOp, what: &str, help: &str| {
            let name = format!("cstor_target_{}_{what}_total", op.as_str());
            out.family(&name, MetricType::Counter, help);
            name
        };
        for op in IoOp::ALL {
            let Some(stats) = self.ops.get(op.index()) else {
                continue;
            };
            let name = counter(
                out,
                op,
                "ops",
                &format!(
                    "{} requests the SCSI layer sent to the volume (failed ones included).",
                    op.as_str()
                ),
            );
            out.sample(&name, &[("volume", v)], stats.ops.load(Ordering::Relaxed));
            if op != IoOp::Flush {
                let name = counter(
                    out,
                    op,
                    "bytes",
                    &format!("Bytes of successful {} requests.", op.as_str()),
                );
                out.sample(&name, &[("volume", v)], stats.bytes.load(Ordering::Relaxed));
            }
        }
        out.family(
            "cstor_target_io_errors_total",
            MetricType::Counter,
            "Failed block requests by operation and SCSI error kind.",
        );
        for op in IoOp::ALL {
            let Some(stats) = self.ops.get(op.index()) else {
                continue;
            };
            for (kind, count) in ERROR_KINDS.iter().zip(&stats.errors) {
                out.sample(
                    "cstor_target_io_errors_total",
                    &[("volume", v), ("op", op.as_str()), ("kind", kind)],
                    count.load(Ordering::Relaxed),
                );
            }
        }
        out.family(
            "cstor_target_io_duration_seconds",
            MetricType::Histogram,
            "Time from the SCSI layer handing a request to the volume to its completion (quorum acknowledgement for writes).",
        );
        for op in IoOp::ALL {
            if let Some(stats) = self.ops.get(op.index()) {
                stats.latency.encode(
                    out,
                    "cstor_target_io_duration_seconds",
                    &[("volume", v), ("op", op.as_str())],
                );
            }
        }
    }

    fn render_bounds(&self, out: &mut Exposition) {
        let v = [("volume", self.volume.as_str())];
        let mut gauge = |name: &str, help: &str, value: u64| {
            out.family(name, MetricType::Gauge, help);
            out.sample(name, &v, value);
        };
        gauge(
            "cstor_target_connections",
            "iSCSI connections open (logging in or logged in).",
            self.connections_open.load(Ordering::Relaxed),
        );
        if let Some(b) = &self.bounds {
            gauge(
                "cstor_target_buffered_bytes",
                "IO data the target's connections hold now (read data not yet queued to the socket, write data not yet completed by the volume).",
                b.buffers.target.used(),
            );
            gauge(
                "cstor_target_buffered_bytes_limit",
                "Bound of cstor_target_buffered_bytes (--max-buffered-bytes).",
                b.buffers.target.limit(),
            );
            gauge(
                "cstor_target_connection_buffered_bytes_limit",
                "IO data one connection may hold (--max-buffered-bytes-per-connection).",
                b.buffers.per_connection,
            );
            gauge(
                "cstor_target_connections_limit",
                "Connections served at once (--max-connections).",
                b.connections as u64,
            );
            gauge(
                "cstor_target_connections_per_source_limit",
                "Connections served at once from one source address (--max-connections-per-source).",
                b.connections_per_source as u64,
            );
        }
        out.family(
            "cstor_target_connections_refused_total",
            MetricType::Counter,
            "Connections closed at accept, by the cap they were over.",
        );
        for (why, count) in [Refusal::PerSource, Refusal::Total]
            .into_iter()
            .zip(&self.refused)
        {
            out.sample(
                "cstor_target_connections_refused_total",
                &[("volume", self.volume.as_str()), ("reason", why.as_str())],
                count.load(Ordering::Relaxed),
            );
        }
    }

    fn render_rebuild(&self, out: &mut Exposition, status: &VolumeStatus) {
        out.family(
            "cstor_rebuild_bytes_total",
            MetricType::Counter,
            "Bytes rebuilt into each replica, summed over every rebuild run's reported progress.",
        );
        for ((replica, _), bytes) in status.replicas.iter().zip(&status.rebuilt_bytes) {
            let replica = replica.to_string();
            out.sample(
                "cstor_rebuild_bytes_total",
                &[("volume", self.volume.as_str()), ("replica", &replica)],
                *bytes,
            );
        }
    }
}

fn state_name(state: ReplicaState) -> &'static str {
    match state {
        ReplicaState::Offline => "offline",
        ReplicaState::Healthy => "healthy",
        ReplicaState::Degraded => "degraded",
        ReplicaState::Rebuilding => "rebuilding",
        ReplicaState::Removed => "removed",
        ReplicaState::Failed => "failed",
    }
}

const STATES: [ReplicaState; 6] = [
    ReplicaState::Offline,
    ReplicaState::Healthy,
    ReplicaState::Degraded,
    ReplicaState::Rebuilding,
    ReplicaState::Removed,
    ReplicaState::Failed,
];

fn render_status(out: &mut Exposition, volume: &str, s: &VolumeStatus) {
    let v = [("volume", volume)];
    let gauge = |out: &mut Exposition, name: &str, help: &str, value: u64| {
        out.family(name, MetricType::Gauge, help);
        out.sample(name, &v, value);
    };
    gauge(
        out,
        "cstor_volume_size_bytes",
        "Size of the volume.",
        s.size_bytes,
    );
    gauge(
        out,
        "cstor_volume_healthy_replicas",
        "Replicas that count for quorum and serve reads.",
        s.healthy as u64,
    );
    gauge(
        out,
        "cstor_volume_consistency_factor",
        "Healthy replicas that must acknowledge a write.",
        s.cf as u64,
    );
    gauge(
        out,
        "cstor_volume_quorum",
        "1 while healthy replicas reach the consistency factor.",
        u64::from(s.healthy >= s.cf),
    );
    gauge(
        out,
        "cstor_volume_read_only",
        "1 while writes fail below quorum (DATA PROTECT).",
        u64::from(s.read_only),
    );
    gauge(
        out,
        "cstor_volume_fenced",
        "1 once a newer target took the volume over.",
        u64::from(s.fenced),
    );
    gauge(
        out,
        "cstor_volume_in_flight_requests",
        "Requests of the SCSI layer the volume has not completed.",
        s.in_flight as u64,
    );
    out.family(
        "cstor_volume_replicas",
        MetricType::Gauge,
        "Replicas of the volume in each state.",
    );
    for state in STATES {
        let n = s.replicas.iter().filter(|(_, st)| *st == state).count();
        out.sample(
            "cstor_volume_replicas",
            &[("volume", volume), ("state", state_name(state))],
            n,
        );
    }
    out.family(
        "cstor_volume_replica_state",
        MetricType::Gauge,
        "1 for the state each replica is in, 0 for the others.",
    );
    for (addr, current) in &s.replicas {
        let addr = addr.to_string();
        for state in STATES {
            out.sample(
                "cstor_volume_replica_state",
                &[
                    ("volume", volume),
                    ("replica", &addr),
                    ("state", state_name(state)),
                ],
                state == *current,
            );
        }
    }
    out.family(
        "cstor_volume_replica_info",
        MetricType::Gauge,
        "1 per replica, naming its data address and its stable replica id (32 hex digits).",
    );
    for (i, (addr, _)) in s.replicas.iter().enumerate() {
        let id = format!("{:032x}", s.replica_ids.get(i).copied().unwrap_or(0));
        out.sample(
            "cstor_volume_replica_info",
            &[
                ("volume", volume),
                ("replica", &addr.to_string()),
                ("replica_id", &id),
            ],
            1u64,
        );
    }
    out.family(
        "cstor_volume_replica_in_flight_requests",
        MetricType::Gauge,
        "Mutating requests sent to each replica and not yet answered.",
    );
    for (i, (addr, _)) in s.replicas.iter().enumerate() {
        let owed = s.owed.get(i).copied().unwrap_or(0);
        out.sample(
            "cstor_volume_replica_in_flight_requests",
            &[("volume", volume), ("replica", &addr.to_string())],
            owed,
        );
    }
    out.family(
        "cstor_volume_rebuild_done_bytes",
        MetricType::Gauge,
        "Bytes copied so far by the rebuild running into each replica.",
    );
    let runs = || {
        s.replicas
            .iter()
            .zip(&s.rebuilds)
            .filter_map(|((addr, _), run)| run.map(|run| (addr.to_string(), run)))
    };
    for (addr, run) in runs() {
        out.sample(
            "cstor_volume_rebuild_done_bytes",
            &[("volume", volume), ("replica", &addr)],
            run.progress.done_bytes,
        );
    }
    out.family(
        "cstor_volume_rebuild_total_bytes",
        MetricType::Gauge,
        "Bytes the rebuild running into each replica has to copy.",
    );
    for (addr, run) in runs() {
        out.sample(
            "cstor_volume_rebuild_total_bytes",
            &[("volume", volume), ("replica", &addr)],
            run.progress.total_bytes,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cstor_mgmt::exposition::{find, parse};
    use cstor_proto::RebuildProgress;
    use std::net::SocketAddr;

    use crate::volume::RebuildRun;

    use crate::scsi::Extent;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn status(
        replicas: Vec<(SocketAddr, ReplicaState)>,
        rebuilds: Vec<Option<RebuildRun>>,
    ) -> VolumeStatus {
        let n = replicas.len();
        VolumeStatus {
            healthy: replicas
                .iter()
                .filter(|(_, s)| *s == ReplicaState::Healthy)
                .count(),
            replica_ids: (1..=n as u128).collect(),
            replicas,
            cf: 2,
            rebuilds,
            size_bytes: 1 << 20,
            ..VolumeStatus::default()
        }
    }

    fn run(done: u64, total: u64) -> Option<RebuildRun> {
        Some(RebuildRun {
            source: 0,
            from_io_seq: 5,
            first_live_io_seq: 9,
            accepted: true,
            progress: RebuildProgress {
                done_bytes: done,
                total_bytes: total,
            },
        })
    }

    #[test]
    fn requests_map_to_their_operation_and_bytes() {
        let write = BlockRequest::Write {
            lba: 0,
            data: Bytes::from(vec![0; 8192]),
            fua: false,
        };
        assert_eq!(IoOp::of(&write, 512), Some((IoOp::Write, 8192)));
        let read = BlockRequest::Read { lba: 0, blocks: 3 };
        assert_eq!(IoOp::of(&read, 4096), Some((IoOp::Read, 3 * 4096)));
        let unmap = BlockRequest::Unmap {
            extents: vec![Extent { lba: 0, blocks: 2 }, Extent { lba: 9, blocks: 1 }],
            fua: false,
        };
        assert_eq!(IoOp::of(&unmap, 512), Some((IoOp::Unmap, 1536)));
        assert_eq!(IoOp::of(&BlockRequest::Flush, 512), Some((IoOp::Flush, 0)));
        let huge = BlockRequest::WriteSame {
            lba: 0,
            blocks: u64::MAX,
            block: Bytes::from(vec![1; 512]),
            fua: false,
        };
        assert_eq!(IoOp::of(&huge, 512), Some((IoOp::Write, u64::MAX)));
    }

    #[test]
    fn recorded_requests_show_in_the_rendered_counters() {
        let m = TargetMetrics::new("vol1");
        m.record::<()>(IoOp::Write, 4096, Duration::from_micros(300), &Ok(()));
        m.record::<()>(IoOp::Write, 4096, Duration::from_micros(300), &Ok(()));
        m.record::<()>(
            IoOp::Write,
            4096,
            Duration::from_secs(1),
            &Err(IoError::WriteProtected),
        );
        m.record::<()>(IoOp::Read, 512, Duration::from_micros(80), &Ok(()));
        let st = status(vec![(addr(1), ReplicaState::Healthy)], vec![None]);
        let samples = parse(&m.render(&st)).unwrap();
        let v = ("volume", "vol1");
        assert_eq!(
            find(&samples, "cstor_target_write_ops_total", &[v]),
            Some(3.0)
        );
        assert_eq!(
            find(&samples, "cstor_target_write_bytes_total", &[v]),
            Some(8192.0)
        );
        assert_eq!(
            find(&samples, "cstor_target_read_bytes_total", &[v]),
            Some(512.0)
        );
        assert_eq!(
            find(&samples, "cstor_target_flush_ops_total", &[v]),
            Some(0.0)
        );
        assert_eq!(
            find(
                &samples,
                "cstor_target_io_errors_total",
                &[v, ("op", "write"), ("kind", "write_protected")]
            ),
            Some(1.0)
        );
        assert_eq!(
            find(
                &samples,
                "cstor_target_io_duration_seconds_count",
                &[v, ("op", "write")]
            ),
            Some(3.0)
        );
        assert_eq!(
            find(
                &samples,
                "cstor_target_io_duration_seconds_bucket",
                &[v, ("op", "write"), ("le", "0.0005")]
            ),
            Some(2.0)
        );
    }

    #[test]
    fn status_gauges_show_replica_states_and_quorum() {
        let m = TargetMetrics::new("v");
        let mut st = status(
            vec![
                (addr(1), ReplicaState::Healthy),
                (addr(2), ReplicaState::Rebuilding),
                (addr(3), ReplicaState::Offline),
            ],
            vec![None, run(10, 40), None],
        );
        st.read_only = true;
        let samples = parse(&m.render(&st)).unwrap();
        let v = ("volume", "v");
        assert_eq!(
            find(&samples, "cstor_volume_healthy_replicas", &[v]),
            Some(1.0)
        );
        assert_eq!(find(&samples, "cstor_volume_quorum", &[v]), Some(0.0));
        assert_eq!(find(&samples, "cstor_volume_read_only", &[v]), Some(1.0));
        assert_eq!(
            find(&samples, "cstor_volume_consistency_factor", &[v]),
            Some(2.0)
        );
        assert_eq!(
            find(
                &samples,
                "cstor_volume_replicas",
                &[v, ("state", "offline")]
            ),
            Some(1.0)
        );
        let state = |r: &str, s: &str| {
            find(
                &samples,
                "cstor_volume_replica_state",
                &[v, ("replica", r), ("state", s)],
            )
        };
        assert_eq!(state("127.0.0.1:2", "rebuilding"), Some(1.0));
        let id = format!("{:032x}", 2);
        assert_eq!(
            find(
                &samples,
                "cstor_volume_replica_info",
                &[("replica", "127.0.0.1:2"), ("replica_id", &id)]
            ),
            Some(1.0)
        );
        assert_eq!(state("127.0.0.1:2", "healthy"), Some(0.0));
        assert_eq!(
            find(
                &samples,
                "cstor_volume_rebuild_total_bytes",
                &[v, ("replica", "127.0.0.1:2")]
            ),
            Some(40.0)
        );
        assert_eq!(
            find(
                &samples,
                "cstor_volume_rebuild_done_bytes",
                &[("replica", "127.0.0.1:1")]
            ),
            None
        );
    }

    #[test]
    fn the_rebuild_counter_is_the_status_per_replica_total() {
        let m = TargetMetrics::new("vol-a");
        let mut s = status(
            vec![
                (addr(1), ReplicaState::Healthy),
                (addr(2), ReplicaState::Rebuilding),
            ],
            vec![None, run(30, 100)],
        );
        s.rebuilt_bytes = vec![0, 4096 + 30];
        let samples = parse(&m.render(&s)).unwrap();
        let counter = |r: &str| {
            find(
                &samples,
                "cstor_rebuild_bytes_total",
                &[("volume", "vol-a"), ("replica", r)],
            )
        };
        assert_eq!(counter("127.0.0.1:1"), Some(0.0));
        assert_eq!(counter("127.0.0.1:2"), Some(4126.0));
    }

    #[test]
    fn checksum_errors_warnings_and_repairs_come_from_the_status() {
        let m = TargetMetrics::new("vol-a");
        let mut s = status(
            vec![
                (addr(1), ReplicaState::Healthy),
                (addr(2), ReplicaState::Healthy),
            ],
            vec![None, None],
        );
        s.checksum_errors = vec![3, 40];
        s.checksum_warnings = vec![false, true];
        s.blocks_repaired = 42;
        let samples = parse(&m.render(&s)).unwrap();
        let per_replica =
            |name: &str, r: &str| find(&samples, name, &[("volume", "vol-a"), ("replica", r)]);
        assert_eq!(
            per_replica("cstor_checksum_errors_total", "127.0.0.1:1"),
            Some(3.0)
        );
        assert_eq!(
            per_replica("cstor_checksum_errors_total", "127.0.0.1:2"),
            Some(40.0)
        );
        assert_eq!(
            per_replica("cstor_volume_replica_checksum_warning", "127.0.0.1:1"),
            Some(0.0)
        );
        assert_eq!(
            per_replica("cstor_volume_replica_checksum_warning", "127.0.0.1:2"),
            Some(1.0)
        );
        assert_eq!(
            find(
                &samples,
                "cstor_blocks_repaired_total",
                &[("volume", "vol-a")]
            ),
            Some(42.0)
        );
    }
}
