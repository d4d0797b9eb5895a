//! The Prometheus endpoints of a target and a replica daemon (issue #7):
//! scraped over HTTP before and after IO through the whole path (iSCSI →
//! target → replication protocol → replica), the text must parse as
//! exposition format 0.0.4 and the counters must have moved by exactly the
//! IO done; the pool's used bytes must grow with thin allocation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{free_addr, pattern, IscsiSession, ReplicaProcess, TargetProcess};
use cstor_mgmt::exposition::{find, parse, Sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VOLUME: &str = "metered";
const INITIATOR: &str = "iqn.2026-11.io.cstor.test:metrics";
/// Hang guard, not a timing assertion.
const GUARD: Duration = Duration::from_secs(30);
/// Writes spaced one 64 KiB pool chunk apart, so each allocates a chunk.
const WRITES: u64 = 16;
const CHUNK_BYTES: u64 = 64 * 1024;
const READS: u64 = 5;

/// One HTTP exchange; returns (status line, headers, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut raw))
        .await
        .expect("no HTTP answer")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("no HTTP head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

/// `GET /metrics`, checked to be 200 with the 0.0.4 text content type and
/// to parse strictly.
pub(crate) async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, headers, body) = http_get(addr, "/metrics").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    parse(&body).unwrap_or_else(|e| panic!("not exposition format: {e}\n{body}"))
}

pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[tokio::test]
async fn counters_move_by_the_io_done_and_the_pool_fills() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = ReplicaProcess::create(dir.path(), "128MiB");
    replica.ctl(&["volume", "create", VOLUME, "--size", "32MiB"]);
    // Restart the daemon with its metrics endpoint on.
    let replica_metrics = free_addr();
    assert!(replica.terminate());
    replica.start_with_env(&[("CSTOR_REPLICA_METRICS_LISTEN", &replica_metrics.to_string())]);

    let target_metrics = free_addr();
    let metrics_arg = target_metrics.to_string();
    let mgmt_arg = free_addr().to_string();
    let target = TargetProcess::start_with(
        dir.path(),
        free_addr(),
        VOLUME,
        &[replica.data],
        &["--metrics-listen", &metrics_arg, "--mgmt-listen", &mgmt_arg],
        &[],
    );
    let mut session =
        IscsiSession::login_retrying(target.portal, &target.iqn, INITIATOR, GUARD).await;
    let block = u64::from(session.block_size);
    let v = ("volume", VOLUME);
    let p = ("pool", "test");

    // The replica turns healthy once the target settled its membership.
    let target_before = wait_metrics(target_metrics, "1 healthy", |s| {
        find(s, "cstor_volume_healthy_replicas", &[v]) == Some(1.0)
    })
    .await;
    let replica_before = scrape(replica_metrics).await;
    assert_eq!(value(&target_before, "cstor_volume_quorum", &[v]), 1.0);
    assert_eq!(value(&target_before, "cstor_volume_read_only", &[v]), 0.0);
    let replica_addr = replica.data.to_string();
    assert_eq!(
        value(
            &target_before,
            "cstor_volume_replica_state",
            &[v, ("replica", &replica_addr), ("state", "healthy")]
        ),
        1.0
    );

    for i in 0..WRITES {
        let lba = i * CHUNK_BYTES / block;
        let outcome = session
            .write(lba, pattern(lba, 1, block as usize))
            .await
            .unwrap();
        assert!(outcome.is_good(), "write {i}: {outcome:?}");
    }
    for i in 0..READS {
        assert!(session
            .read(i * CHUNK_BYTES / block, 2)
            .await
            .unwrap()
            .is_good());
    }
    assert!(session.sync_cache().await.unwrap().is_good());

    let target_after = scrape(target_metrics).await;
    let replica_after = scrape(replica_metrics).await;
    let delta = |before: &[Sample], after: &[Sample], name: &str, labels: &[(&str, &str)]| {
        value(after, name, labels) - value(before, name, labels)
    };
    let t =
        |name: &str, labels: &[(&str, &str)]| delta(&target_before, &target_after, name, labels);
    let r =
        |name: &str, labels: &[(&str, &str)]| delta(&replica_before, &replica_after, name, labels);

    let written = (WRITES * block) as f64;
    assert_eq!(t("cstor_target_write_ops_total", &[v]), WRITES as f64);
    assert_eq!(t("cstor_target_write_bytes_total", &[v]), written);
    assert_eq!(t("cstor_target_read_ops_total", &[v]), READS as f64);
    assert_eq!(
        t("cstor_target_read_bytes_total", &[v]),
        (READS * 2 * block) as f64
    );
    assert_eq!(t("cstor_target_flush_ops_total", &[v]), 1.0);
    assert_eq!(
        t(
            "cstor_target_io_duration_seconds_count",
            &[v, ("op", "write")]
        ),
        WRITES as f64
    );
    assert_eq!(
        t(
            "cstor_target_io_errors_total",
            &[v, ("op", "write"), ("kind", "write_protected")]
        ),
        0.0
    );

    // Every write reached the replica once; so did the flush. Reads may
    // be served by the replica only (one replica).
    let rv = [p, v];
    assert_eq!(r("cstor_replica_write_ops_total", &rv), WRITES as f64);
    assert_eq!(r("cstor_replica_write_bytes_total", &rv), written);
    assert_eq!(r("cstor_replica_read_ops_total", &rv), READS as f64);
    assert!(r("cstor_replica_flush_ops_total", &rv) >= 1.0);
    assert_eq!(r("cstor_replica_write_errors_total", &rv), 0.0);
    // Thin provisioning: each write to a new chunk allocated one.
    let grown = (WRITES * CHUNK_BYTES) as f64;
    assert!(r("cstor_replica_pool_used_bytes", &[p]) >= grown);
    assert!(r("cstor_replica_volume_allocated_bytes", &rv) >= grown);
    assert_eq!(
        value(&replica_after, "cstor_replica_volume_size_bytes", &rv),
        (32u64 << 20) as f64
    );
    let capacity = value(&replica_after, "cstor_replica_pool_capacity_bytes", &[p]);
    let used = value(&replica_after, "cstor_replica_pool_used_bytes", &[p]);
    let free = value(&replica_after, "cstor_replica_pool_free_bytes", &[p]);
    assert_eq!(used + free, capacity);
}

#[tokio::test]
async fn other_paths_are_404_and_the_query_string_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = ReplicaProcess::create(dir.path(), "64MiB");
    let metrics = free_addr();
    assert!(replica.terminate());
    replica.start_with_env(&[("CSTOR_REPLICA_METRICS_LISTEN", &metrics.to_string())]);
    let (status, _, _) = http_get(metrics, "/").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (status, _, body) = http_get(metrics, "/metrics?x=1").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let samples = parse(&body).unwrap();
    assert!(
        value(
            &samples,
            "cstor_replica_pool_capacity_bytes",
            &[("pool", "test")]
        ) > 0.0
    );
}

/// Polls the target's metrics until `ok` holds; panics with the last
/// scrape after the hang guard.
async fn wait_metrics(addr: SocketAddr, what: &str, ok: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = tokio::time::Instant::now() + 2 * GUARD;
    loop {
        let samples = scrape(addr).await;
        if ok(&samples) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never seen in {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_replica_that_missed_writes_shows_degraded_then_rebuilt_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<ReplicaProcess> = (0..3)
        .map(|i| {
            let sub = dir.path().join(format!("r{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let r = ReplicaProcess::create(&sub, "128MiB");
            r.ctl(&["volume", "create", VOLUME, "--size", "32MiB"]);
            r
        })
        .collect();
    let target_metrics = free_addr();
    let metrics_arg = target_metrics.to_string();
    let mgmt_arg = free_addr().to_string();
    let data: Vec<SocketAddr> = replicas.iter().map(|r| r.data).collect();
    let target = TargetProcess::start_with(
        dir.path(),
        free_addr(),
        VOLUME,
        &data,
        &["--metrics-listen", &metrics_arg, "--mgmt-listen", &mgmt_arg],
        &[],
    );
    let mut session =
        IscsiSession::login_retrying(target.portal, &target.iqn, INITIATOR, GUARD).await;
    let block = u64::from(session.block_size);
    let v = ("volume", VOLUME);
    let lagging = replicas[2].data.to_string();
    let r = ("replica", lagging.as_str());
    wait_metrics(target_metrics, "3 healthy", |s| {
        find(s, "cstor_volume_healthy_replicas", &[v]) == Some(3.0)
    })
    .await;

    // Replica 2 dies; writes go on at quorum 2 and it misses them.
    replicas[2].kill9();
    let chunk = vec![0x5a_u8; CHUNK_BYTES as usize];
    for i in 0..WRITES {
        let outcome = session
            .write(i * CHUNK_BYTES / block, bytes::Bytes::from(chunk.clone()))
            .await
            .unwrap();
        assert!(outcome.is_good(), "write {i}: {outcome:?}");
    }
    let degraded = wait_metrics(target_metrics, "replica 2 not healthy", |s| {
        find(
            s,
            "cstor_volume_replica_state",
            &[v, r, ("state", "healthy")],
        ) == Some(0.0)
    })
    .await;
    assert_eq!(value(&degraded, "cstor_volume_quorum", &[v]), 1.0);
    assert_eq!(value(&degraded, "cstor_volume_healthy_replicas", &[v]), 2.0);

    // It comes back, is rebuilt from a peer, and the counter shows it.
    let replica_metrics = free_addr();
    replicas[2].start_with_env(&[("CSTOR_REPLICA_METRICS_LISTEN", &replica_metrics.to_string())]);
    let healthy = wait_metrics(target_metrics, "3 healthy again", |s| {
        find(s, "cstor_volume_healthy_replicas", &[v]) == Some(3.0)
    })
    .await;
    let sink = scrape(replica_metrics).await;
    let pv = [("pool", "test"), v];
    assert_eq!(value(&sink, "cstor_replica_rebuild_running", &pv), 0.0);
    let missed = (WRITES * CHUNK_BYTES) as f64;
    let copied = value(&sink, "cstor_replica_rebuild_done_bytes", &pv);
    assert!(copied >= missed);
    assert_eq!(
        copied,
        value(&sink, "cstor_replica_rebuild_total_bytes", &pv)
    );
    // The target's counter sums every byte the rebuild reported (its last
    // report, of all it copied, comes before its done): at least the run
    // the sink shows (more only if an earlier run was cut), never less
    // than what the replica missed.
    let counted = value(&healthy, "cstor_rebuild_bytes_total", &[v, r]);
    assert!(counted >= missed, "{counted} < {missed}");
    assert!(counted >= copied, "{counted} < {copied}");
    // The healthy replicas were never rebuilt.
    let healthy_one = replicas[0].data.to_string();
    assert_eq!(
        value(
            &healthy,
            "cstor_rebuild_bytes_total",
            &[v, ("replica", healthy_one.as_str())]
        ),
        0.0
    );
}
