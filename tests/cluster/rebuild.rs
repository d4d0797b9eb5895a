//! Rebuild across real processes (docs/architecture.md, invariant 6): three `cstor
//! replica run` daemons on loopback behind the target's volume layer. A
//! replica killed under load, or whose pool is replaced by an empty one,
//! comes back, pulls what it lacks from a healthy peer and becomes healthy;
//! a rebuild cut by a crash of its sink resumes. Afterwards every replica,
//! read alone through the replication protocol, holds exactly the last
//! acknowledged generation of every block.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{pattern, ReplicaProcess, VolumeLoad};
use bytes::{Bytes, BytesMut};
use cstor_mgmt::v1::{
    GetVolumeRequest, ReplicaState as MgmtReplicaState, SetRebuildThrottleRequest,
};
use cstor_target::volume::{Completion, Op, ReplicaState, Volume, VolumeSpec};

const BLOCK: u64 = 4096;
/// Blocks of a 64 KiB write (one engine chunk).
const RUN: u64 = 16;

fn replicas(n: usize, dir: &std::path::Path) -> Vec<ReplicaProcess> {
    (0..n)
        .map(|i| {
            let sub = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let r = ReplicaProcess::create(&sub, "256MiB");
            r.ctl(&["volume", "create", "vol", "--size", "64MiB"]);
            r
        })
        .collect()
}

/// The rebuild lines of a replica's log (shown with `--nocapture`).
fn show_rebuild_log(r: &ReplicaProcess) {
    for line in r.log_text().lines().filter(|l| l.contains("rebuild")) {
        eprintln!("{line}");
    }
}

fn spec(replicas: &[ReplicaProcess]) -> VolumeSpec {
    let mut spec = VolumeSpec::new(
        "vol",
        replicas.iter().map(|r| r.data).collect(),
        replicas[0].pki.target("vol"),
    );
    spec.ack_timeout = Duration::from_secs(3);
    spec.hold = Duration::from_secs(6);
    spec.open_timeout = Duration::from_secs(20);
    spec
}

async fn all_healthy(volume: &Volume, within: Duration) {
    tokio::time::timeout(within, volume.wait_for(|s| s.healthy == s.replicas.len()))
        .await
        .unwrap_or_else(|_| panic!("not all healthy: {:?}", volume.status()));
}

/// `RUN` blocks from `lba`, each the pattern of its generation.
fn run_data(lba: u64, generations: &[u64]) -> Bytes {
    let mut data = BytesMut::new();
    for (i, generation) in generations.iter().enumerate() {
        data.extend_from_slice(&pattern(lba + i as u64, *generation, BLOCK as usize));
    }
    data.freeze()
}

/// Writes generation `generation` to every block of `0..blocks`, 64 KiB at
/// a time.
async fn fill(volume: &Volume, blocks: u64, generation: u64, acked: &Mutex<Vec<u64>>) {
    for lba in (0..blocks).step_by(RUN as usize) {
        let data = run_data(lba, &[generation; RUN as usize]);
        let result = volume
            .submit(Op::Write {
                offset: lba * BLOCK,
                data,
                fua: false,
            })
            .await;
        assert_eq!(result, Ok(Completion::Done), "write at block {lba}");
        let mut acked = acked.lock().unwrap();
        for b in lba..lba + RUN {
            acked[b as usize] = generation;
        }
    }
}

/// Reads every block of `0..blocks` from each replica alone (a fresh
/// session at a newer epoch) and checks it holds generation `acked[lba]`
/// (zeros for 0).
async fn check_replicas(reps: &[ReplicaProcess], epoch: u64, acked: &[u64]) {
    let per_read = 256u64;
    for (i, r) in reps.iter().enumerate() {
        let (mut client, _) = r.open("vol", epoch).await;
        for first in (0..acked.len() as u64).step_by(per_read as usize) {
            let data = client.read(first * BLOCK, (per_read * BLOCK) as u32).await;
            for b in 0..per_read {
                let lba = first + b;
                let Some(generation) = acked.get(lba as usize) else {
                    break;
                };
                let got = &data[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
                let want = if *generation == 0 {
                    Bytes::from(vec![0u8; BLOCK as usize])
                } else {
                    pattern(lba, *generation, BLOCK as usize)
                };
                assert!(
                    got == want,
                    "replica {i} block {lba}: want generation {generation}, got generation {}",
                    u64::from_le_bytes(got[8..16].try_into().unwrap())
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_rebuilds_and_all_three_end_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    all_healthy(&volume, Duration::from_secs(20)).await;
    let blocks = 4096; // 16 MiB
    let acked = Arc::new(Mutex::new(vec![0u64; blocks as usize]));
    fill(&volume, blocks, 1, &acked).await;
    // Durable everywhere: the replica that dies comes back with this much,
    // and pulls only what was written after (a delta rebuild).
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));

    let load = VolumeLoad::start(&volume, blocks, 4, 100, &acked);
    load.wait_writes(300).await;
    reps[2].kill9();
    // Writes go on at quorum 2 while it is away.
    load.wait_writes(1500).await;
    assert_eq!(volume.status().replicas[2].1, ReplicaState::Offline);
    reps[2].start();
    all_healthy(&volume, Duration::from_secs(30)).await;
    load.wait_writes(300).await;
    load.finish().await;
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));
    let epoch = volume.status().epoch;
    volume.close();

    let rebuild = reps[2].finished_rebuild("vol").await;
    assert!(
        rebuild.from_io_seq > 0,
        "a full rebuild, not a delta: {rebuild:?}"
    );
    show_rebuild_log(&reps[2]);
    let acked = acked.lock().unwrap().clone();
    check_replicas(&reps, epoch + 1, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_a_new_empty_pool_gets_a_full_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    all_healthy(&volume, Duration::from_secs(20)).await;
    let blocks = 8192; // 32 MiB
    let acked = Arc::new(Mutex::new(vec![0u64; blocks as usize]));
    fill(&volume, blocks, 1, &acked).await;
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));

    reps[2].replace_pool("256MiB", "vol", "64MiB");
    // Time the rebuild itself: from the sink accepting it to healthy.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut started = None;
    loop {
        let status = volume.status();
        if started.is_none() && status.replicas[2].1 == ReplicaState::Rebuilding {
            started = Some(Instant::now());
        }
        if status.healthy == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no full rebuild: {status:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.map(|s| s.elapsed());
    let epoch = volume.status().epoch;
    volume.close();
    if let Some(elapsed) = elapsed {
        let mib = (blocks * BLOCK) as f64 / f64::from(1 << 20);
        eprintln!(
            "full rebuild of {mib} MiB in {elapsed:?}: {:.1} MiB/s",
            mib / elapsed.as_secs_f64().max(1e-6)
        );
    }
    let rebuild = reps[2].finished_rebuild("vol").await;
    assert_eq!(rebuild.from_io_seq, 0, "not a full rebuild: {rebuild:?}");
    show_rebuild_log(&reps[2]);
    let acked = acked.lock().unwrap().clone();
    check_replicas(&reps, epoch + 1, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_cut_by_a_crash_of_its_sink_resumes_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    all_healthy(&volume, Duration::from_secs(20)).await;
    let blocks = 8192; // 32 MiB
    let acked = Arc::new(Mutex::new(vec![0u64; blocks as usize]));
    fill(&volume, blocks, 1, &acked).await;
    reps[2].kill9();
    fill(&volume, blocks, 2, &acked).await;
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));

    // A slow rebuild (8 MiB/s) is cut by a crash once a checkpoint (every
    // 8 MiB) was taken...
    reps[2].start_with_env(&[("CSTOR_REBUILD_LIMIT", "8MiB")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = volume
            .status()
            .rebuilds
            .get(2)
            .copied()
            .flatten()
            .map_or(0, |r| r.progress.done_bytes);
        if done >= 12 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "rebuild did not progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reps[2].kill9();
    // ...and resumes from it after a restart, crawling at 256 KiB/s (the
    // rest would take 90 s) until the throttle is lifted at runtime.
    reps[2].start_with_env(&[("CSTOR_REBUILD_LIMIT", "256KiB")]);
    let mut mgmt = reps[2].mgmt_client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let replica = loop {
        let replica = mgmt
            .get_volume(GetVolumeRequest { name: "vol".into() })
            .await
            .unwrap()
            .into_inner();
        if replica.rebuild.as_ref().is_some_and(|r| r.done_bytes > 0) {
            break replica;
        }
        assert!(
            Instant::now() < deadline,
            "no rebuild progress: {replica:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(replica.state(), MgmtReplicaState::Rebuilding);
    let progress = replica.rebuild.unwrap();
    assert!(
        [reps[0].data.to_string(), reps[1].data.to_string()].contains(&progress.source),
        "{progress:?}"
    );
    assert!(progress.total_bytes >= 32 << 20, "{progress:?}");
    let throttle = mgmt
        .set_rebuild_throttle(SetRebuildThrottleRequest {
            bytes_per_second: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(throttle.bytes_per_second, 0);
    all_healthy(&volume, Duration::from_secs(30)).await;
    let epoch = volume.status().epoch;
    volume.close();
    let log = reps[2].log_text();
    let resumed = log.lines().any(|l| {
        l.contains("rebuild started")
            && l.contains("resume_offset=")
            && !l.contains("resume_offset=0")
    });
    assert!(resumed, "the second rebuild did not resume: {log}");
    show_rebuild_log(&reps[2]);
    let acked = acked.lock().unwrap().clone();
    check_replicas(&reps, epoch + 1, &acked).await;
}

/// `cstor ctl --target MGMT --json rebuild throttle RATE`: the rate the
/// target holds afterwards.
fn throttle_through_target(
    pki: &crate::common::TestPki,
    mgmt: std::net::SocketAddr,
    rate: &str,
) -> u64 {
    let out = pki.ctl(&[
        "--target",
        &mgmt.to_string(),
        "--json",
        "rebuild",
        "throttle",
        rate,
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["bytes_per_second"].as_u64().unwrap()
}

/// Issue #6: the throttle set through the target's management API reaches
/// a replica that was down when it was set (the target sends it when the
/// replica reconnects), paces its rebuild, and raising it lets the rebuild
/// finish. The target counts every byte the rebuild reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_set_through_the_target_paces_a_rebuild_until_raised() {
    const LIMIT: u64 = 1 << 20;
    const GUARD: Duration = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    let mgmt = crate::common::free_addr();
    let mgmt_arg = mgmt.to_string();
    let data: Vec<_> = reps.iter().map(|r| r.data).collect();
    let target = crate::common::TargetProcess::start_with(
        dir.path(),
        crate::common::free_addr(),
        "vol",
        &data,
        &["--mgmt-listen", &mgmt_arg],
        &[],
    );
    let mut session = crate::common::IscsiSession::login_retrying(
        target.portal,
        &target.iqn,
        "iqn.2026-11.io.cstor.test:throttle",
        GUARD,
    )
    .await;
    assert_eq!(u64::from(session.block_size), BLOCK);
    crate::common::wait_target_status(&target.pki, mgmt, "3 healthy", GUARD, |s| s["healthy"] == 3);

    // Replica 2 misses 32 MiB of writes.
    reps[2].kill9();
    let blocks = 8192u64;
    let mut acked = vec![0u64; blocks as usize];
    for lba in (0..blocks).step_by(RUN as usize) {
        let outcome = session
            .write(lba, run_data(lba, &[2; RUN as usize]))
            .await
            .unwrap();
        assert!(outcome.is_good(), "write at block {lba}: {outcome:?}");
        acked[lba as usize..(lba + RUN) as usize].fill(2);
    }
    assert!(session.sync_cache().await.unwrap().is_good());

    // Set while it is away: it learns the rate when it reconnects.
    assert_eq!(throttle_through_target(&target.pki, mgmt, "1MiB"), LIMIT);
    let started = Instant::now();
    reps[2].start();
    let paced = crate::common::wait_target_status(&target.pki, mgmt, "3 MiB rebuilt", GUARD, |s| {
        s["replicas"][2]["rebuild"]["done_bytes"]
            .as_u64()
            .is_some_and(|d| d >= 3 << 20)
    });
    // An upper bound only (a slow machine copies less, never more): at
    // most the limit over the time since the replica was started, plus
    // the pieces a sink takes before its first pause. Unthrottled, the
    // 32 MiB would all be there.
    let elapsed = started.elapsed().as_secs_f64();
    let rebuild = &paced["replicas"][2]["rebuild"];
    let done = rebuild["done_bytes"].as_u64().unwrap();
    let total = rebuild["total_bytes"].as_u64().unwrap();
    assert!(total >= blocks * BLOCK, "{paced}");
    let bound = LIMIT as f64 * elapsed + f64::from(2 << 20);
    assert!(
        (done as f64) <= bound,
        "{done} bytes rebuilt in {elapsed:.1} s at {LIMIT} B/s: {paced}"
    );
    assert_eq!(paced["replicas"][2]["state"], "rebuilding", "{paced}");
    assert_eq!(paced["rebuild_throttle_bytes_per_second"], LIMIT, "{paced}");

    // Raised: the rebuild finishes, and the counter holds all it copied.
    assert_eq!(throttle_through_target(&target.pki, mgmt, "0"), 0);
    let healthy =
        crate::common::wait_target_status(&target.pki, mgmt, "3 healthy again", GUARD, |s| {
            s["healthy"] == 3
        });
    let rebuilt = healthy["replicas"][2]["rebuilt_bytes"].as_u64().unwrap();
    assert!(rebuilt >= blocks * BLOCK, "{healthy}");
    let epoch = healthy["epoch"].as_u64().unwrap();
    drop(session);
    drop(target);
    show_rebuild_log(&reps[2]);
    check_replicas(&reps, epoch + 1, &acked).await;
}

/// Only the volume's owning session may set its rebuild throttle: a probe
/// (epoch 0) is refused, the owner's is acknowledged and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owning_session_sets_a_volume_rebuild_throttle() {
    use cstor_proto::{Message, Opcode, Status};
    let dir = tempfile::tempdir().unwrap();
    let reps = replicas(1, dir.path());
    let throttle = Message::RebuildThrottle {
        bytes_per_second: 3 << 20,
    };
    let (mut probe, _) = reps[0].open("vol", 0).await;
    let refused = probe.call(throttle.clone()).await.unwrap();
    match refused.message {
        Message::Error(e) => assert_eq!(e.status, Status::StaleEpoch, "{e:?}"),
        other => panic!("a probe set the throttle: {other:?}"),
    }
    let info = reps[0].volume_info("vol").await;
    assert_eq!(info.rebuild_throttle_bytes_per_second, 0, "{info:?}");
    let (mut owner, _) = reps[0].open("vol", 1).await;
    let acked = owner.call(throttle).await.unwrap();
    assert_eq!(acked.message, Message::Ack(Opcode::RebuildThrottle));
    let info = reps[0].volume_info("vol").await;
    assert_eq!(info.rebuild_throttle_bytes_per_second, 3 << 20, "{info:?}");
}
