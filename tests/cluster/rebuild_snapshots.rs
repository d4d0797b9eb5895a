//! Rebuild of a volume that has snapshots, across real processes (docs/architecture.md,
//! invariants 4 and 6): three `cstor replica run` daemons behind the
//! target's volume layer. Snapshots are taken, and one deleted, while a
//! replica is away (delta rebuild) or after its pool was replaced by an empty
//! one (full rebuild); it comes back under live writes, and once healthy
//! every replica — read alone through the replication protocol — holds the
//! last acknowledged generation of every block, the same snapshot list, and
//! in each snapshot (read through a clone made by the replica management
//! API) the generations acknowledged before that snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{pattern, ReplicaProcess, VolumeLoad};
use bytes::{Bytes, BytesMut};
use cstor_mgmt::v1::{CreateVolumeRequest, ListSnapshotsRequest};
use cstor_target::volume::{Completion, Op, Volume, VolumeSpec};

const BLOCK: u64 = 4096;
/// Blocks of one 64 KiB write.
const RUN: u64 = 16;
/// 8 MiB of the 64 MiB volume are written.
const BLOCKS: u64 = 2048;

fn replicas(dir: &std::path::Path) -> Vec<ReplicaProcess> {
    (0..3)
        .map(|i| {
            let sub = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let r = ReplicaProcess::create(&sub, "256MiB");
            r.ctl(&["volume", "create", "vol", "--size", "64MiB"]);
            r
        })
        .collect()
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

/// What the test knows was acknowledged: the generation of every block of
/// the live volume and of each snapshot.
#[derive(Default)]
struct Truth {
    live: Vec<u64>,
    snapshots: BTreeMap<String, Vec<u64>>,
}

/// Writes generation `generation` to blocks `from..to`, 64 KiB at a time.
async fn write(volume: &Volume, truth: &Mutex<Truth>, from: u64, to: u64, generation: u64) {
    for lba in (from..to).step_by(RUN as usize) {
        let mut data = BytesMut::new();
        for b in lba..lba + RUN {
            data.extend_from_slice(&pattern(b, generation, BLOCK as usize));
        }
        let result = volume
            .submit(Op::Write {
                offset: lba * BLOCK,
                data: data.freeze(),
                fua: false,
            })
            .await;
        assert_eq!(result, Ok(Completion::Done), "write at block {lba}");
        let mut truth = truth.lock().unwrap();
        for b in lba..lba + RUN {
            truth.live[b as usize] = generation;
        }
    }
}

async fn snapshot(volume: &Volume, truth: &Mutex<Truth>, name: &str) {
    volume.create_snapshot(name).await.unwrap();
    let mut truth = truth.lock().unwrap();
    let live = truth.live.clone();
    truth.snapshots.insert(name.to_owned(), live);
}

async fn destroy(volume: &Volume, truth: &Mutex<Truth>, name: &str) {
    volume.destroy_snapshot(name).await.unwrap();
    truth.lock().unwrap().snapshots.remove(name);
}

/// Reads `volume` on replica `r` alone (a fresh session at `epoch`) and
/// checks every block holds the generation `want` says (zeros for 0).
async fn check(r: &ReplicaProcess, i: usize, volume: &str, epoch: u64, want: &[u64]) {
    let per_read = 256u64;
    let (mut client, _) = r.open(volume, epoch).await;
    for first in (0..want.len() as u64).step_by(per_read as usize) {
        let data = client.read(first * BLOCK, (per_read * BLOCK) as u32).await;
        for b in 0..per_read {
            let lba = first + b;
            let Some(generation) = want.get(lba as usize) else {
                break;
            };
            let got = &data[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
            let expected = if *generation == 0 {
                Bytes::from(vec![0u8; BLOCK as usize])
            } else {
                pattern(lba, *generation, BLOCK as usize)
            };
            assert!(
                got == expected,
                "replica {i} volume {volume} block {lba}: want generation {generation}, got {}",
                u64::from_le_bytes(got[8..16].try_into().unwrap())
            );
        }
    }
}

/// Every replica: the live volume, the snapshot names and each snapshot's
/// content (through a clone) are the truth.
async fn check_all(reps: &[ReplicaProcess], epoch: u64, truth: &Truth) {
    for (i, r) in reps.iter().enumerate() {
        check(r, i, "vol", epoch, &truth.live).await;
        let mut mgmt = r.mgmt_client().await;
        let mut names: Vec<String> = mgmt
            .list_snapshots(ListSnapshotsRequest {
                volume: "vol".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .snapshots
            .into_iter()
            .map(|s| s.name)
            .collect();
        names.sort();
        let want: Vec<String> = truth.snapshots.keys().cloned().collect();
        assert_eq!(names, want, "replica {i}: snapshot list");
        for (name, generations) in &truth.snapshots {
            let clone = format!("clone-{name}");
            mgmt.create_volume(CreateVolumeRequest {
                name: clone.clone(),
                size_bytes: 64 << 20,
                block_size: BLOCK as u32,
                provisioning: 0,
                clone_of: format!("vol@{name}"),
            })
            .await
            .unwrap();
            check(r, i, &clone, 1, generations).await;
        }
    }
}

/// Snapshots and writes while replica 2 is away (or empty): `s1` (taken
/// before) is deleted, `s2` and `s3` are new.
async fn history_while_away(volume: &Volume, truth: &Mutex<Truth>) {
    write(volume, truth, 0, BLOCKS / 2, 2).await;
    snapshot(volume, truth, "s2").await;
    write(volume, truth, BLOCKS / 4, 3 * BLOCKS / 4, 3).await;
    destroy(volume, truth, "s1").await;
    snapshot(volume, truth, "s3").await;
    write(volume, truth, BLOCKS / 2, BLOCKS, 4).await;
}

async fn run(replace_pool: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    all_healthy(&volume, Duration::from_secs(20)).await;
    let truth = Arc::new(Mutex::new(Truth {
        live: vec![0; BLOCKS as usize],
        ..Truth::default()
    }));
    write(&volume, &truth, 0, BLOCKS, 1).await;
    snapshot(&volume, &truth, "s0").await;
    snapshot(&volume, &truth, "s1").await;
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));

    if replace_pool {
        reps[2].terminate();
    } else {
        reps[2].kill9();
    }
    history_while_away(&volume, &truth).await;
    // Live writes during the rebuild, one writer over every block.
    let acked = Arc::new(Mutex::new(truth.lock().unwrap().live.clone()));
    let load = VolumeLoad::start(&volume, BLOCKS, 1, 1000, &acked);
    if replace_pool {
        reps[2].replace_pool("256MiB", "vol", "64MiB");
    } else {
        reps[2].start();
    }
    all_healthy(&volume, Duration::from_secs(60)).await;
    let live_writes = load.finish().await;
    truth.lock().unwrap().live = acked.lock().unwrap().clone();
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));
    let epoch = volume.status().epoch;
    volume.close();

    let log = reps[2].log_text();
    for line in log
        .lines()
        .filter(|l| l.contains("rebuil") || l.contains("snapshot"))
    {
        eprintln!("{line}");
    }
    eprintln!("{live_writes} live writes during the rebuild");
    let rebuild = reps[2].finished_rebuild("vol").await;
    assert_eq!(
        rebuild.from_io_seq == 0,
        replace_pool,
        "a full rebuild exactly for the new pool: {rebuild:?}"
    );
    // The snapshots themselves, block by block, are checked by check_all.
    let (rebuilt, healthy) = (
        reps[2].volume_info("vol").await,
        reps[0].volume_info("vol").await,
    );
    assert!(
        rebuilt.snapshot_count > 0,
        "no snapshot was rebuilt: {rebuilt:?}"
    );
    assert_eq!(rebuilt.snapshot_count, healthy.snapshot_count);
    let truth = Arc::try_unwrap(truth).ok().unwrap().into_inner().unwrap();
    check_all(&reps, epoch + 1, &truth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_rebuild_recreates_snapshots_taken_and_deletes_those_destroyed_while_away() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rebuild_of_an_empty_pool_recreates_every_snapshot() {
    run(true).await;
}
