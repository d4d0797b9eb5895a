//! The target's volume layer against real replica daemons on loopback:
//! quorum writes, healthy-only reads, a replica restart inside the grace
//! period, read-only below quorum, fencing by a second target.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::common::{pattern, ReplicaProcess};
use bytes::Bytes;
use cstor_target::volume::{Completion, Op, ReplicaState, Volume, VolumeError, VolumeSpec};

const BLOCK: u64 = 4096;

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

fn spec(replicas: &[ReplicaProcess]) -> VolumeSpec {
    let mut spec = VolumeSpec::new(
        "vol",
        replicas.iter().map(|r| r.data).collect(),
        replicas[0].pki.target("vol"),
    );
    spec.ack_timeout = Duration::from_secs(2);
    spec.hold = Duration::from_secs(4);
    spec.open_timeout = Duration::from_secs(20);
    spec
}

async fn write(volume: &Volume, lba: u64, generation: u64) -> Result<Completion, VolumeError> {
    volume
        .submit(Op::Write {
            offset: lba * BLOCK,
            data: pattern(lba, generation, BLOCK as usize),
            fua: false,
        })
        .await
}

async fn read(volume: &Volume, lba: u64) -> Bytes {
    match volume
        .submit(Op::Read {
            offset: lba * BLOCK,
            len_bytes: BLOCK as u32,
        })
        .await
    {
        Ok(Completion::Data(data)) => data,
        other => panic!("read of block {lba}: {other:?}"),
    }
}

async fn healthy(volume: &Volume, n: usize) {
    tokio::time::timeout(Duration::from_secs(20), volume.wait_for(|s| s.healthy == n))
        .await
        .unwrap_or_else(|_| panic!("not {n} healthy: {:?}", volume.status()));
}

#[tokio::test]
async fn three_replicas_ack_at_quorum_and_survive_losing_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    healthy(&volume, 3).await;
    assert_eq!(volume.size_bytes(), 64 << 20);
    for lba in 0..32 {
        assert_eq!(write(&volume, lba, 1).await, Ok(Completion::Done));
    }
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));

    // One replica dies: writes go on at quorum 2, reads come from the rest.
    reps[2].kill9();
    for lba in 32..64 {
        assert_eq!(write(&volume, lba, 1).await, Ok(Completion::Done));
    }
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));
    for lba in 0..64 {
        assert_eq!(read(&volume, lba).await, pattern(lba, 1, BLOCK as usize));
    }
    let status = volume.status();
    assert_eq!(status.replicas[2].1, ReplicaState::Offline);
    assert!(!status.read_only);

    // It comes back having missed writes: it rebuilds from a peer (never
    // serving reads meanwhile) and is healthy again; then every block reads
    // back whichever replica serves it.
    reps[2].start();
    healthy(&volume, 3).await;
    for _ in 0..3 {
        for lba in 0..64 {
            assert_eq!(read(&volume, lba).await, pattern(lba, 1, BLOCK as usize));
        }
    }
    volume.close();
}

#[tokio::test]
async fn a_single_replica_restart_within_the_grace_period_is_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(1, dir.path());
    let mut s = spec(&reps);
    s.hold = Duration::from_secs(15);
    let volume = Volume::open(s).await.unwrap();
    healthy(&volume, 1).await;
    for lba in 0..8 {
        write(&volume, lba, 1).await.unwrap();
    }
    volume.submit(Op::Flush).await.unwrap();
    reps[0].kill9();
    // Writes issued while it is down are held, then complete once it is back.
    let v = volume.clone();
    let held = tokio::spawn(async move {
        let mut results = Vec::new();
        for lba in 8..16 {
            results.push(write(&v, lba, 2).await);
        }
        results.push(v.submit(Op::Flush).await);
        results
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    reps[0].start();
    let results = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .unwrap()
        .unwrap();
    assert!(
        results.iter().all(|r| *r == Ok(Completion::Done)),
        "{results:?}"
    );
    for lba in 0..8 {
        assert_eq!(read(&volume, lba).await, pattern(lba, 1, BLOCK as usize));
    }
    for lba in 8..16 {
        assert_eq!(read(&volume, lba).await, pattern(lba, 2, BLOCK as usize));
    }
    volume.close();
}

#[tokio::test]
async fn below_quorum_writes_fail_read_only_after_the_hold_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    healthy(&volume, 3).await;
    write(&volume, 1, 1).await.unwrap();
    volume.submit(Op::Flush).await.unwrap();
    reps[1].kill9();
    reps[2].kill9();
    let started = std::time::Instant::now();
    assert_eq!(
        write(&volume, 2, 1).await,
        Err(VolumeError::ReadOnly { cf: 2 })
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "failed before the hold"
    );
    // Read-only now: writes fail at once, reads work.
    assert_eq!(
        write(&volume, 3, 1).await,
        Err(VolumeError::ReadOnly { cf: 2 })
    );
    assert_eq!(read(&volume, 1).await, pattern(1, 1, BLOCK as usize));
    assert!(volume.status().read_only);
    volume.close();
}

#[tokio::test]
async fn a_second_target_fences_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let reps = replicas(1, dir.path());
    let first = Volume::open(spec(&reps)).await.unwrap();
    healthy(&first, 1).await;
    write(&first, 0, 1).await.unwrap();
    first.submit(Op::Flush).await.unwrap();

    let second = Volume::open(spec(&reps)).await.unwrap();
    healthy(&second, 1).await;
    assert!(second.status().epoch > first.status().epoch);
    assert_eq!(read(&second, 0).await, pattern(0, 1, BLOCK as usize));
    // The first target's next write never lands: it learns it is fenced.
    let result = write(&first, 0, 99).await;
    assert_eq!(result, Err(VolumeError::Fenced), "{:?}", first.status());
    assert!(first.status().fenced);
    assert_eq!(read(&second, 0).await, pattern(0, 1, BLOCK as usize));
    first.close();
    second.close();
}
