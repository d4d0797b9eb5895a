//! The replica daemon's Prometheus metrics (docs/metrics.md is the
//! reference).
//!
//! - IO counters per volume, counted by the session as each admitted
//!   request completes ([`VolumeIo::record`]): operations, bytes of the
//!   successful ones, failures;
//! - pool space and per-volume figures read from the engine at each scrape
//!   ([`ReplicaMetrics::render`]), and the last rebuild into each volume as
//!   its sink reports it;
//! - refusals of the data port by reason ([`Refusal`]): TLS handshakes that
//!   failed, certificates without a usable identity, and sessions or
//!   requests the peer's identity may not make.
//!
//! Every sample carries `pool`; per-volume ones `volume`. Counters of a
//! volume live until the volume is deleted or the daemon stops (rate()
//! copes with either reset); the map holds at most one entry per volume
//! of the pool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cstor_engine::Pool;
use cstor_mgmt::exposition::{Exposition, MetricType};
use cstor_proto::Message;
use parking_lot::Mutex;

use crate::rebuild::state::RebuildStatus;
use crate::registry::Registry;

/// Operations counted, in the order of [`Op::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    /// UNMAP and WRITE ZEROES (both free chunks).
    Unmap,
}

impl Op {
    const ALL: [Op; 4] = [Op::Read, Op::Write, Op::Flush, Op::Unmap];

    fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Unmap => "unmap",
        }
    }

    /// The operation and bytes of a request; `None` for what is not data
    /// IO (snapshots, resize, membership).
    pub fn of(message: &Message) -> Option<(Op, u64)> {
        Some(match message {
            Message::Read(e) => (Op::Read, u64::from(e.len_bytes)),
            Message::Write(w) => (Op::Write, w.data.len() as u64),
            Message::Flush => (Op::Flush, 0),
            Message::Unmap(e) | Message::WriteZeroes(e) => (Op::Unmap, u64::from(e.len_bytes)),
            _ => return None,
        })
    }
}

#[derive(Debug, Default)]
struct OpCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// IO counters of one volume.
#[derive(Debug, Default)]
pub struct VolumeIo {
    ops: [OpCounters; Op::ALL.len()],
    /// 4 KiB blocks reads found failing their checksum (answered
    /// `ChecksumError`).
    checksum_blocks: AtomicU64,
}

impl VolumeIo {
    /// Counts a finished request: its operation, its bytes if `reply` is
    /// not an error, else a failure.
    pub fn record(&self, request: &Message, reply: &Message) {
        let Some((op, bytes)) = Op::of(request) else {
            return;
        };
        let Some(c) = self.ops.get(op as usize) else {
            return;
        };
        c.ops.fetch_add(1, Ordering::Relaxed);
        if let Message::ChecksumError(e) = reply {
            c.errors.fetch_add(1, Ordering::Relaxed);
            self.checksum_blocks
                .fetch_add(e.bad_blocks(), Ordering::Relaxed);
        } else if matches!(reply, Message::Error(_)) {
            c.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Blocks reads of the volume found bad since the daemon started.
    pub fn checksum_blocks(&self) -> u64 {
        self.checksum_blocks.load(Ordering::Relaxed)
    }

    fn load(&self, op: Op) -> (u64, u64, u64) {
        self.ops.get(op as usize).map_or((0, 0, 0), |c| {
            (
                c.ops.load(Ordering::Relaxed),
                c.bytes.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed),
            )
        })
    }
}

/// Why the data port refused a connection or a request
/// (`cstor_replica_connections_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The TLS handshake failed or timed out: not TLS, no client
    /// certificate, a certificate of another CA, expired or not yet valid.
    /// The connection is closed before any frame.
    Tls,
    /// The handshake succeeded but the certificate names no usable cstor
    /// identity. The connection is closed before any frame.
    Identity,
    /// The peer's identity may not do what it asked: open that session
    /// (the `Hello` is refused and the connection closed), or make that
    /// request on its session (answered `NotAuthenticated`; the session
    /// goes on).
    Unauthorized,
}

impl Refusal {
    /// Every reason, in the order of the counters.
    pub const ALL: [Refusal; 3] = [Refusal::Tls, Refusal::Identity, Refusal::Unauthorized];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Tls => "tls",
            Refusal::Identity => "identity",
            Refusal::Unauthorized => "unauthorized",
        }
    }
}

/// The daemon's metrics: IO counters by volume name, refusals by reason.
#[derive(Debug, Default)]
pub struct ReplicaMetrics {
    /// One entry per volume a session opened (bounded by the pool's
    /// volumes).
    volumes: Mutex<BTreeMap<String, Arc<VolumeIo>>>,
    /// Refusals of the data port, indexed like [`Refusal::ALL`].
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl ReplicaMetrics {
    /// Counts one refusal.
    pub fn refused(&self, reason: Refusal) {
        if let Some(c) = self.refused.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals for `reason` since the daemon started.
    pub fn refused_total(&self, reason: Refusal) -> u64 {
        self.refused
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The counters of `volume` (created on first use).
    pub fn volume(&self, volume: &str) -> Arc<VolumeIo> {
        Arc::clone(self.volumes.lock().entry(volume.to_owned()).or_default())
    }

    /// Drops the counters of a deleted volume (a volume created later under
    /// the same name starts from 0, a counter reset to Prometheus).
    pub fn forget(&self, volume: &str) {
        self.volumes.lock().remove(volume);
    }

    /// The text of a scrape of pool `pool_name`.
    pub fn render(&self, pool_name: &str, registry: &Registry) -> String {
        let mut out = Exposition::new();
        render_pool(&mut out, pool_name, registry.pool());
        self.render_refusals(&mut out, pool_name);
        self.render_volumes(&mut out, pool_name, registry);
        out.finish()
    }

    fn render_refusals(&self, out: &mut Exposition, pool_name: &str) {
        let name = "cstor_replica_connections_refused_total";
        out.family(
            name,
            MetricType::Counter,
            "Connections and requests the data port refused: failed TLS handshakes (tls), \
             certificates without a cstor identity (identity), sessions or requests the \
             peer's identity may not make (unauthorized).",
        );
        for reason in Refusal::ALL {
            out.sample(
                name,
                &[("pool", pool_name), ("reason", reason.as_str())],
                self.refused_total(reason),
            );
        }
    }

    fn render_volumes(&self, out: &mut Exposition, pool_name: &str, registry: &Registry) {
        let pool = registry.pool();
        let mut volumes = pool.list_volumes();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        let p = ("pool", pool_name);
        out.family(
            "cstor_replica_volume_size_bytes",
            MetricType::Gauge,
            "Logical size of each volume replica.",
        );
        for v in &volumes {
            let labels = [p, ("volume", v.name.as_str())];
            out.sample("cstor_replica_volume_size_bytes", &labels, v.size_bytes);
        }
        out.family(
            "cstor_replica_volume_allocated_bytes",
            MetricType::Gauge,
            "Pool space the volume's live data holds (thin: grows with writes, shrinks with unmap).",
        );
        for v in &volumes {
            let Ok(stats) = pool.volume(&v.name).and_then(|h| h.stats()) else {
                continue;
            };
            let labels = [p, ("volume", v.name.as_str())];
            out.sample(
                "cstor_replica_volume_allocated_bytes",
                &labels,
                stats.allocated_bytes,
            );
        }
        out.family(
            "cstor_replica_volume_snapshots",
            MetricType::Gauge,
            "Snapshots of each volume replica.",
        );
        for v in &volumes {
            let labels = [p, ("volume", v.name.as_str())];
            out.sample("cstor_replica_volume_snapshots", &labels, v.snapshots);
        }
        let io: Vec<(String, Arc<VolumeIo>)> = {
            let known = self.volumes.lock();
            volumes
                .iter()
                .map(|v| {
                    let counters = known.get(&v.name).cloned().unwrap_or_default();
                    (v.name.clone(), counters)
                })
                .collect()
        };
        for (what, help) in [
            ("ops", "requests of targets"),
            ("bytes", "bytes of successful requests of targets"),
            ("errors", "requests of targets that failed"),
        ] {
            for op in Op::ALL {
                if op == Op::Flush && what == "bytes" {
                    continue;
                }
                let name = format!("cstor_replica_{}_{what}_total", op.as_str());
                out.family(
                    &name,
                    MetricType::Counter,
                    &format!("{} {help}, per volume.", op.as_str()),
                );
                for (volume, counters) in &io {
                    let (ops, bytes, errors) = counters.load(op);
                    let value = match what {
                        "ops" => ops,
                        "bytes" => bytes,
                        _ => errors,
                    };
                    out.sample(&name, &[p, ("volume", volume)], value);
                }
            }
        }
        let name = "cstor_replica_checksum_errors_total";
        out.family(
            name,
            MetricType::Counter,
            "4 KiB blocks reads of targets found failing their checksum (answered ChecksumError, \
             never returned), per volume.",
        );
        for (volume, counters) in &io {
            out.sample(name, &[p, ("volume", volume)], counters.checksum_blocks());
        }
        render_rebuilds(out, pool_name, &volumes, registry);
    }
}

fn render_pool(out: &mut Exposition, pool_name: &str, pool: &Pool) {
    let stats = pool.stats();
    let labels = [("pool", pool_name)];
    for (name, help, value) in [
        (
            "cstor_replica_pool_capacity_bytes",
            "Data capacity of the pool (all its devices).",
            stats.total_bytes,
        ),
        (
            "cstor_replica_pool_used_bytes",
            "Pool data space in use (volumes, snapshots, clones).",
            stats.used_bytes,
        ),
        (
            "cstor_replica_pool_free_bytes",
            "Pool data space free.",
            stats.free_bytes,
        ),
        (
            "cstor_replica_pool_reserved_bytes",
            "Free space held back for thick volumes.",
            stats.reserved_bytes,
        ),
        (
            "cstor_replica_pool_metadata_memory_bytes",
            "Heap bytes of the pool's in-memory metadata.",
            stats.metadata_memory_bytes,
        ),
    ] {
        out.family(name, MetricType::Gauge, help);
        out.sample(name, &labels, value);
    }
    out.family(
        "cstor_replica_pool_devices",
        MetricType::Gauge,
        "Backing devices of the pool.",
    );
    out.sample("cstor_replica_pool_devices", &labels, stats.devices);
    out.family(
        "cstor_replica_pool_commits_total",
        MetricType::Counter,
        "Metadata commits since the pool was opened.",
    );
    out.sample("cstor_replica_pool_commits_total", &labels, stats.commits);
    render_pool_integrity(out, &labels, &stats.integrity);
}

/// The pool's block checksums (engine/FORMAT.md "Block checksums"): none
/// for a version-1 pool, which keeps none.
fn render_pool_integrity(
    out: &mut Exposition,
    labels: &[(&str, &str)],
    integrity: &cstor_engine::IntegrityStats,
) {
    out.family(
        "cstor_replica_pool_block_checksums",
        MetricType::Gauge,
        "1 when the pool keeps a checksum per 4 KiB block and verifies every read, \
         0 for a version-1 pool (reads not verified).",
    );
    out.sample(
        "cstor_replica_pool_block_checksums",
        labels,
        u64::from(integrity.enabled),
    );
    if !integrity.enabled {
        return;
    }
    for (name, kind, help, value) in [
        (
            "cstor_replica_pool_checksum_errors_total",
            MetricType::Counter,
            "4 KiB blocks of the pool that failed their checksum when read (reads, \
             copy-on-writes, scrub digests), since the pool was opened.",
            integrity.checksum_errors,
        ),
        (
            "cstor_replica_pool_checksums_recomputed_blocks",
            MetricType::Gauge,
            "Blocks whose checksum the last open recomputed from their data (the \
             dirty regions of an unclean shutdown).",
            integrity.recomputed_blocks,
        ),
        (
            "cstor_replica_pool_dirty_regions",
            MetricType::Gauge,
            "Regions (1 MiB of data each) marked dirty on disk now: what a power cut \
             would make the next open re-read.",
            integrity.dirty_regions,
        ),
        (
            "cstor_replica_pool_dirty_bitmap_writes_total",
            MetricType::Counter,
            "Synced writes of the dirty-region bitmap since the pool was opened.",
            integrity.bitmap_writes,
        ),
        (
            "cstor_replica_pool_checksum_memory_bytes",
            MetricType::Gauge,
            "Heap bytes of the checksum pages in memory.",
            integrity.memory_bytes,
        ),
        (
            "cstor_replica_pool_checksum_page_loads_total",
            MetricType::Counter,
            "Checksum pages read from the pool because a read or write needed one \
             not in memory.",
            integrity.page_loads,
        ),
        (
            "cstor_replica_pool_checksum_page_evictions_total",
            MetricType::Counter,
            "Checksum pages dropped from memory to stay within --checksum-cache.",
            integrity.page_evictions,
        ),
    ] {
        out.family(name, kind, help);
        out.sample(name, labels, value);
    }
}

/// One figure of a rebuild status.
type RebuildFigure = fn(&RebuildStatus) -> u64;

/// The last rebuild into each volume, as its sink reports it.
fn render_rebuilds(
    out: &mut Exposition,
    pool_name: &str,
    volumes: &[cstor_engine::VolumeInfo],
    registry: &Registry,
) {
    let runs: Vec<_> = volumes
        .iter()
        .filter_map(|v| {
            let status = registry.get(&v.name)?.rebuild.status()?;
            Some((v.name.as_str(), status))
        })
        .collect();
    let families: [(&str, &str, RebuildFigure); 4] = [
        (
            "cstor_replica_rebuild_done_bytes",
            "Bytes the last rebuild into the volume copied.",
            |s| s.done_bytes,
        ),
        (
            "cstor_replica_rebuild_total_bytes",
            "Bytes the last rebuild into the volume had to copy.",
            |s| s.total_bytes,
        ),
        (
            "cstor_replica_rebuild_rate_bytes_per_second",
            "Average rate of the last rebuild into the volume.",
            |s| s.rate_bytes_per_sec,
        ),
        (
            "cstor_replica_rebuild_running",
            "1 while a rebuild into the volume runs.",
            |s| u64::from(s.running),
        ),
    ];
    for (name, help, value) in families {
        out.family(name, MetricType::Gauge, help);
        for (volume, status) in &runs {
            out.sample(
                name,
                &[("pool", pool_name), ("volume", volume)],
                value(status),
            );
        }
    }
    let digests = registry.rebuild_settings().digest_totals();
    for (name, help, equal, differ) in [
        (
            "cstor_replica_rebuild_digest_ranges_total",
            "Ranges full rebuilds by digest compared: equal (not pulled) or differ (pulled).",
            digests.equal_ranges,
            digests.differ_ranges,
        ),
        (
            "cstor_replica_rebuild_digest_bytes_total",
            "Bytes full rebuilds by digest compared: equal (not pulled) or differ (pulled).",
            digests.equal_bytes,
            digests.differ_bytes,
        ),
    ] {
        out.family(name, MetricType::Counter, help);
        for (result, value) in [("equal", equal), ("differ", differ)] {
            out.sample(name, &[("pool", pool_name), ("result", result)], value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cstor_proto::{ErrorReply, Extent, Opcode, Status, Write};

    fn write(len: usize) -> Message {
        Message::Write(Write {
            offset: 0,
            data: Bytes::from(vec![1; len]),
            fua: false,
        })
    }

    #[test]
    fn requests_count_ops_and_bytes_and_failures_count_no_bytes() {
        let io = VolumeIo::default();
        io.record(&write(4096), &Message::Ack(Opcode::Write));
        io.record(&write(512), &Message::Ack(Opcode::Write));
        let failed = Message::Error(ErrorReply {
            request_opcode: 0,
            status: Status::NoSpace,
            detail: "full".into(),
        });
        io.record(&write(8192), &failed);
        let unmap = Message::Unmap(Extent {
            offset: 0,
            len_bytes: 65536,
        });
        io.record(&unmap, &Message::Ack(Opcode::Unmap));
        io.record(&Message::Heartbeat, &Message::Ack(Opcode::Heartbeat));
        assert_eq!(io.load(Op::Write), (3, 4608, 1));
        assert_eq!(io.load(Op::Unmap), (1, 65536, 0));
        assert_eq!(io.load(Op::Read), (0, 0, 0));
    }

    /// GET /metrics of `addr`: the body, parsed strictly.
    async fn scrape(addr: std::net::SocketAddr) -> Vec<cstor_mgmt::exposition::Sample> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (_, body) = raw.split_once("\r\n\r\n").unwrap();
        cstor_mgmt::exposition::parse(body).unwrap()
    }

    #[tokio::test]
    async fn the_daemon_serves_pool_space_that_follows_writes() {
        use crate::daemon::{init, Daemon, InitConfig, IoMode, RunConfig};
        use cstor_mgmt::exposition::find;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.img");
        let config = InitConfig {
            files: vec![(path.clone(), 64 << 20)],
            devices: vec![],
            chunk_bytes: None,
            block_checksums: true,
        };
        init(&config).await.unwrap();
        let daemon = Daemon::start(&RunConfig {
            pool_name: "p1".into(),
            devices: vec![path],
            listen: "127.0.0.1:0".parse().unwrap(),
            mgmt_listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            rebuild_limit_bytes_per_sec: 0,
            checksum_cache_bytes: cstor_engine::limits::DEFAULT_CHECKSUM_CACHE_BYTES,
            shards: 2,
            io_mode: IoMode::Buffered,
            // About pool figures: no session, TLS would add nothing.
            security: cstor_tls::Security::Plaintext,
        })
        .await
        .unwrap();
        let addr = daemon.metrics_addr().unwrap();
        let pool = Arc::clone(daemon.pool());
        let volume_bytes = 8 << 20;
        pool.create_volume("v", volume_bytes, 4096, cstor_engine::Provisioning::Thin)
            .await
            .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let served = tokio::spawn(daemon.serve(stop.clone()));

        let labels = [("pool", "p1"), ("volume", "v")];
        let before = scrape(addr).await;
        assert_eq!(
            find(&before, "cstor_replica_volume_size_bytes", &labels),
            Some(volume_bytes as f64)
        );
        let allocated = |s: &[_]| find(s, "cstor_replica_volume_allocated_bytes", &labels).unwrap();
        let used = |s: &[_]| find(s, "cstor_replica_pool_used_bytes", &[("pool", "p1")]).unwrap();
        assert_eq!(allocated(&before), 0.0);
        pool.volume("v")
            .unwrap()
            .write(0, &vec![7u8; 1 << 20], 1)
            .await
            .unwrap();
        let after = scrape(addr).await;
        assert!(allocated(&after) >= f64::from(1u32 << 20), "{after:?}");
        assert!(used(&after) - used(&before) >= f64::from(1u32 << 20));
        assert_eq!(
            find(&after, "cstor_replica_write_ops_total", &labels),
            Some(0.0),
            "writes outside a session are not target IO"
        );
        // The pool keeps block checksums, and the write dirtied a region
        // (cleaned only after some quiet commits) and its checksum pages.
        let pool_labels = [("pool", "p1")];
        assert_eq!(
            find(&after, "cstor_replica_pool_block_checksums", &pool_labels),
            Some(1.0)
        );
        assert!(
            find(&after, "cstor_replica_pool_dirty_regions", &pool_labels).unwrap() >= 1.0,
            "{after:?}"
        );
        assert!(
            find(
                &after,
                "cstor_replica_pool_checksum_memory_bytes",
                &pool_labels
            )
            .unwrap()
                >= 4096.0
        );
        assert_eq!(
            find(
                &after,
                "cstor_replica_pool_checksum_errors_total",
                &pool_labels
            ),
            Some(0.0)
        );
        stop.cancel();
        served.await.unwrap().unwrap();
    }

    #[test]
    fn a_checksum_error_counts_a_read_error_and_its_bad_blocks() {
        let io = VolumeIo::default();
        let extent = Extent {
            offset: 0,
            len_bytes: 65536,
        };
        let bad = cstor_proto::ChecksumError::new(extent, [(4096, 8192), (32768, 4096)]).unwrap();
        io.record(&Message::Read(extent), &Message::ChecksumError(bad));
        io.record(
            &Message::Read(extent),
            &Message::ReadData(Bytes::from(vec![0; 65536])),
        );
        assert_eq!(io.load(Op::Read), (2, 65536, 1));
        assert_eq!(io.checksum_blocks(), 3);
    }

    #[test]
    fn volume_counters_are_shared_by_name() {
        let m = ReplicaMetrics::default();
        m.volume("a")
            .record(&Message::Flush, &Message::Ack(Opcode::Flush));
        m.volume("a")
            .record(&Message::Flush, &Message::Ack(Opcode::Flush));
        assert_eq!(m.volume("a").load(Op::Flush).0, 2);
        assert_eq!(m.volume("b").load(Op::Flush).0, 0);
        m.forget("a");
        assert_eq!(m.volume("a").load(Op::Flush).0, 0);
    }
}
