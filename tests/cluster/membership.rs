//! Membership across real processes (issue #6; `cstor_target::volume::
//! membership`): `cstor replica run` daemons on loopback behind the
//! target's volume layer (and, last, behind a `cstor target` process driven
//! by `cstor ctl`). Scaling up rebuilds the new replica in full and it
//! counts for quorum only once healthy; scaling down keeps writes going; a
//! target restarted with one `--replica` reaches every member from the
//! persisted record and never dials a removed one; a killed replica is
//! replaced by a fresh pool. Afterwards every member, read alone through
//! the replication protocol, holds the last acknowledged generation of
//! every block.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{
    free_addr, pattern, replica_states, wait_target_status, Client, HelloOutcome, ReplicaProcess,
    TargetProcess, TestPki, VolumeLoad,
};
use bytes::Bytes;
use cstor_mgmt::v1::SetRebuildThrottleRequest;
use cstor_target::volume::{Completion, MemberRef, Op, ReplicaState, Volume, VolumeSpec};

const BLOCK: u64 = 4096;
/// Blocks the tests write: 4 MiB.
const BLOCKS: u64 = 1024;

fn replica(dir: &std::path::Path, name: &str) -> ReplicaProcess {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let r = ReplicaProcess::create(&sub, "128MiB");
    r.ctl(&["volume", "create", "vol", "--size", "32MiB"]);
    r
}

fn spec(pki: &TestPki, replicas: &[SocketAddr]) -> VolumeSpec {
    let mut spec = VolumeSpec::new("vol", replicas.to_vec(), pki.target("vol"));
    spec.ack_timeout = Duration::from_secs(3);
    spec.hold = Duration::from_secs(20);
    spec.open_timeout = Duration::from_secs(20);
    spec
}

async fn wait_healthy(volume: &Volume, members: usize) {
    tokio::time::timeout(
        Duration::from_secs(25),
        volume.wait_for(|s| s.replicas.len() == members && s.healthy == members),
    )
    .await
    .unwrap_or_else(|_| panic!("not {members} healthy: {:?}", volume.status()));
}

/// Writes generation 1 to every block, 64 KiB at a time.
async fn fill(volume: &Volume, acked: &Mutex<Vec<u64>>) {
    let run = 16u64;
    for lba in (0..BLOCKS).step_by(run as usize) {
        let mut data = Vec::with_capacity((run * BLOCK) as usize);
        for b in lba..lba + run {
            data.extend_from_slice(&pattern(b, 1, BLOCK as usize));
        }
        let result = volume
            .submit(Op::Write {
                offset: lba * BLOCK,
                data: Bytes::from(data),
                fua: false,
            })
            .await;
        assert_eq!(result, Ok(Completion::Done));
        acked.lock().unwrap()[lba as usize..(lba + run) as usize].fill(1);
    }
}

/// Reads every block from each replica alone (a fresh session at a newer
/// epoch) and checks it holds generation `acked[lba]`.
async fn check_replicas(pki: &TestPki, replicas: &[SocketAddr], epoch: u64, acked: &[u64]) {
    let per_read = 256u64;
    for addr in replicas {
        let (mut client, _) = Client::open(pki, *addr, "vol", epoch).await;
        for first in (0..BLOCKS).step_by(per_read as usize) {
            let data = client.read(first * BLOCK, (per_read * BLOCK) as u32).await;
            for b in 0..per_read {
                let lba = first + b;
                let generation = acked[lba as usize];
                let got = &data[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
                let want = pattern(lba, generation, BLOCK as usize);
                assert!(
                    got == want,
                    "replica {addr} block {lba}: want generation {generation}, got {}",
                    u64::from_le_bytes(got[8..16].try_into().unwrap())
                );
            }
        }
    }
}

/// The highest epoch a replica accepted, asked with a probe (epoch 0,
/// claims nothing).
async fn epoch_of(pki: &TestPki, addr: SocketAddr) -> u64 {
    let mut client = Client::connect(pki, addr, "vol").await;
    match client.hello("vol", 0, 1).await {
        HelloOutcome::Accepted(ack) => ack.highest_epoch_seen,
        HelloOutcome::Refused(m) => panic!("probe refused: {m:?}"),
    }
}

async fn set_throttle(r: &ReplicaProcess, bytes_per_second: u64) {
    let mut client = r.mgmt_client().await;
    client
        .set_rebuild_throttle(SetRebuildThrottleRequest { bytes_per_second })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_one_to_three_under_load_rebuilds_in_full_and_a_restart_from_one_finds_all() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::of_test(dir.path());
    let reps: Vec<ReplicaProcess> = (0..3)
        .map(|i| replica(dir.path(), &format!("r{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = reps.iter().map(|r| r.data).collect();
    let volume = Volume::open(spec(&pki, &addrs[..1])).await.unwrap();
    wait_healthy(&volume, 1).await;
    assert_eq!(volume.status().membership_generation, 1);
    let acked = Arc::new(Mutex::new(vec![0u64; BLOCKS as usize]));
    fill(&volume, &acked).await;

    // 1 → 2 under load: a full rebuild, then healthy.
    let load = VolumeLoad::start(&volume, BLOCKS, 4, 1000, &acked);
    load.wait_writes(50).await;
    let record = volume.add_replica(addrs[1]).await.unwrap();
    assert_eq!(record.members.len(), 2);
    assert_eq!(record.generation, 2);
    wait_healthy(&volume, 2).await;
    load.wait_writes(50).await;

    // 2 → 3, its rebuild slowed down; the CF raised to 3 meanwhile: a write
    // may complete only once the new replica is healthy and acknowledged
    // it (it acknowledges live writes while rebuilding, but does not count).
    load.finish().await;
    set_throttle(&reps[2], 1 << 20).await;
    volume.add_replica(addrs[2]).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        volume.wait_for(|s| s.replicas.get(2).map(|r| r.1) == Some(ReplicaState::Rebuilding)),
    )
    .await
    .expect("third replica never rebuilding");
    volume.set_consistency_factor(3).await.unwrap();
    assert_eq!(volume.status().cf, 3);
    let lba = 5;
    let result = volume
        .submit(Op::Write {
            offset: lba * BLOCK,
            data: pattern(lba, 77, BLOCK as usize),
            fua: false,
        })
        .await;
    // The status is updated before a completion is delivered.
    let at_completion = volume.status();
    assert_eq!(result, Ok(Completion::Done));
    assert_eq!(
        at_completion.replicas[2].1,
        ReplicaState::Healthy,
        "a write completed at CF 3 before the third replica was healthy: {at_completion:?}"
    );
    acked.lock().unwrap()[lba as usize] = 77;
    set_throttle(&reps[2], 0).await;
    wait_healthy(&volume, 3).await;
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));
    let epoch = volume.status().epoch;
    volume.close();

    // A restart naming only the first replica reaches all three.
    let volume = Volume::open(spec(&pki, &addrs[..1])).await.unwrap();
    wait_healthy(&volume, 3).await;
    let status = volume.status();
    let members: Vec<SocketAddr> = status.replicas.iter().map(|r| r.0).collect();
    assert_eq!(members, addrs);
    assert_eq!(status.cf, 3);
    assert!(status.epoch > epoch);
    assert!(status.replica_ids.iter().all(|id| *id != 0));
    let epoch = status.epoch;
    volume.close();
    let acked = acked.lock().unwrap().clone();
    check_replicas(&pki, &addrs, epoch + 1, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_keeps_writes_going_and_a_removed_replica_is_never_dialled_again() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::of_test(dir.path());
    let reps: Vec<ReplicaProcess> = (0..3)
        .map(|i| replica(dir.path(), &format!("r{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = reps.iter().map(|r| r.data).collect();
    let volume = Volume::open(spec(&pki, &addrs)).await.unwrap();
    wait_healthy(&volume, 3).await;
    let acked = Arc::new(Mutex::new(vec![0u64; BLOCKS as usize]));
    fill(&volume, &acked).await;

    // Removing below the CF is refused; 3 → 2 with CF 2 is fine, under load.
    let load = VolumeLoad::start(&volume, BLOCKS, 4, 1000, &acked);
    load.wait_writes(50).await;
    let removed = volume
        .remove_replica(MemberRef::Address(addrs[2]))
        .await
        .unwrap();
    assert_eq!(removed.members.len(), 2);
    load.wait_writes(100).await;
    load.finish().await;
    let refused = volume.remove_replica(MemberRef::Address(addrs[1])).await;
    assert!(refused.is_err(), "removing below the CF: {refused:?}");
    let status = volume.status();
    assert_eq!(
        status.replicas.iter().map(|r| r.0).collect::<Vec<_>>(),
        addrs[..2]
    );
    assert_eq!(status.healthy, 2);
    let removed_epoch = epoch_of(&pki, addrs[2]).await;
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));
    volume.close();

    // A restart with the original command line (all three, as `cstor up`
    // does) keeps the removed replica out: never claimed, never written.
    let volume = Volume::open(spec(&pki, &addrs)).await.unwrap();
    wait_healthy(&volume, 2).await;
    let status = volume.status();
    assert_eq!(
        status.replicas.iter().map(|r| r.0).collect::<Vec<_>>(),
        addrs[..2]
    );
    let lba = 9;
    let write = volume
        .submit(Op::Write {
            offset: lba * BLOCK,
            data: pattern(lba, 99, BLOCK as usize),
            fua: true,
        })
        .await;
    assert_eq!(write, Ok(Completion::Done));
    acked.lock().unwrap()[lba as usize] = 99;
    assert_eq!(epoch_of(&pki, addrs[2]).await, removed_epoch);
    let epoch = status.epoch;
    volume.close();
    let acked = acked.lock().unwrap().clone();
    check_replicas(&pki, &addrs[..2], epoch + 1, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_replaced_by_a_fresh_pool_that_rebuilds_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::of_test(dir.path());
    let mut reps: Vec<ReplicaProcess> = (0..3)
        .map(|i| replica(dir.path(), &format!("r{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = reps.iter().map(|r| r.data).collect();
    let volume = Volume::open(spec(&pki, &addrs)).await.unwrap();
    wait_healthy(&volume, 3).await;
    let acked = Arc::new(Mutex::new(vec![0u64; BLOCKS as usize]));
    fill(&volume, &acked).await;
    reps[2].kill9();
    let load = VolumeLoad::start(&volume, BLOCKS, 4, 1000, &acked);
    load.wait_writes(50).await;
    // Replace: remove the lost one, add a fresh empty pool elsewhere.
    volume
        .remove_replica(MemberRef::Address(addrs[2]))
        .await
        .unwrap();
    let fresh = replica(dir.path(), "fresh");
    let record = volume.add_replica(fresh.data).await.unwrap();
    assert_eq!(record.members.len(), 3);
    wait_healthy(&volume, 3).await;
    load.wait_writes(50).await;
    load.finish().await;
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));
    let status = volume.status();
    let members = vec![addrs[0], addrs[1], fresh.data];
    assert_eq!(
        status.replicas.iter().map(|r| r.0).collect::<Vec<_>>(),
        members
    );
    let epoch = status.epoch;
    volume.close();
    let acked = acked.lock().unwrap().clone();
    check_replicas(&pki, &members, epoch + 1, &acked).await;
}

/// The same through the binaries: `cstor ctl replica add|remove` against
/// a `cstor target`, restarted with one `--replica`.
#[test]
fn ctl_adds_and_removes_replicas_and_a_restarted_target_keeps_the_members() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::of_test(dir.path());
    let reps: Vec<ReplicaProcess> = (0..2)
        .map(|i| replica(dir.path(), &format!("r{i}")))
        .collect();
    let mgmt = free_addr();
    let mgmt_arg = mgmt.to_string();
    let start = |portal| {
        TargetProcess::start_with(
            dir.path(),
            portal,
            "vol",
            &[reps[0].data],
            &["--mgmt-listen", &mgmt_arg],
            &[],
        )
    };
    let mut target = start(free_addr());
    wait_target_status(
        &pki,
        mgmt,
        "one healthy replica",
        Duration::from_secs(30),
        |s| replica_states(s) == ["healthy"],
    );
    let out = pki.ctl(&[
        "--target",
        &mgmt_arg,
        "replica",
        "add",
        &reps[1].data.to_string(),
    ]);
    assert!(out.contains("membership generation 2"), "{out}");
    let status = wait_target_status(&pki, mgmt, "two healthy", Duration::from_secs(30), |s| {
        replica_states(s) == ["healthy", "healthy"]
    });
    assert_eq!(status["membership_generation"], 2);
    assert_eq!(
        status["replicas"][1]["address"],
        reps[1].data.to_string().as_str()
    );
    // The table names each replica's id and the membership generation.
    let table = pki.ctl(&["--target", &mgmt_arg, "status"]);
    assert!(table.contains("gen 2"), "{table}");
    // Both daemons' pools in one table; the throttle set on both.
    let (m0, m1) = (reps[0].mgmt.to_string(), reps[1].mgmt.to_string());
    let pools = pki.ctl(&["--mgmt", &m0, "--mgmt", &m1, "pool", "list"]);
    assert!(pools.contains(&m0) && pools.contains(&m1), "{pools}");
    let set = pki.ctl(&[
        "--mgmt", &m0, "--mgmt", &m1, "--json", "rebuild", "throttle", "2MiB",
    ]);
    let set: serde_json::Value = serde_json::from_str(&set).unwrap();
    for daemon in set.as_array().unwrap() {
        assert_eq!(daemon["bytes_per_second"], 2 << 20);
    }

    target.kill9();
    let _target = start(free_addr());
    let status = wait_target_status(
        &pki,
        mgmt,
        "both members after a restart",
        Duration::from_secs(30),
        |s| replica_states(s) == ["healthy", "healthy"],
    );
    assert_eq!(
        status["replicas"][1]["address"],
        reps[1].data.to_string().as_str()
    );

    let out = pki.ctl(&[
        "--target",
        &mgmt_arg,
        "--json",
        "replica",
        "remove",
        &reps[1].data.to_string(),
    ]);
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["members"].as_array().unwrap().len(), 1);
    wait_target_status(&pki, mgmt, "one member", Duration::from_secs(10), |s| {
        replica_states(s) == ["healthy"]
    });
    // The last member cannot go; the error says why.
    let out = pki.ctl_output(&[
        "--target",
        &mgmt_arg,
        "replica",
        "remove",
        &reps[0].data.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("consistency factor"), "{stderr}");
}

/// docs/architecture.md, "RF=2 is honest": with the CF lowered to 1 knowingly, the
/// replica that went on alone holds the newest data; a target cannot open
/// the volume from the other one alone, and once both answer, the other is
/// rebuilt from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf2_at_cf1_never_opens_from_the_stale_replica_alone_and_rebuilds_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::of_test(dir.path());
    let mut reps: Vec<ReplicaProcess> = (0..2)
        .map(|i| replica(dir.path(), &format!("r{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = reps.iter().map(|r| r.data).collect();
    let volume = Volume::open(spec(&pki, &addrs)).await.unwrap();
    wait_healthy(&volume, 2).await;
    assert_eq!(volume.status().cf, 2);
    let acked = Arc::new(Mutex::new(vec![0u64; BLOCKS as usize]));
    fill(&volume, &acked).await;
    volume.set_consistency_factor(1).await.unwrap();
    // r1 goes away; r0 goes on alone at CF 1.
    reps[1].kill9();
    let load = VolumeLoad::start(&volume, BLOCKS, 2, 1000, &acked);
    load.wait_writes(100).await;
    load.finish().await;
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));
    volume.close();

    // Only the stale r1 is up: no target may open the volume from it.
    reps[0].kill9();
    reps[1].start();
    let mut alone = spec(&pki, &addrs);
    alone.open_timeout = Duration::from_secs(3);
    let refused = Volume::open(alone).await;
    assert!(
        matches!(
            refused,
            Err(cstor_target::volume::OpenError::NoQuorum { needed: 2, .. })
        ),
        "{refused:?}"
    );

    // Both up: r1 is rebuilt from r0 and both hold the newest data.
    reps[0].start();
    let volume = Volume::open(spec(&pki, &addrs)).await.unwrap();
    wait_healthy(&volume, 2).await;
    assert_eq!(volume.status().cf, 1);
    let epoch = volume.status().epoch;
    volume.close();
    let acked = acked.lock().unwrap().clone();
    check_replicas(&pki, &addrs, epoch + 1, &acked).await;
}
