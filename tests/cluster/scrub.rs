//! Scrub across real processes (docs/replica.md, "Scrub";
//! `cstor_target::volume::scrub`): replica daemons on loopback behind the
//! target's volume layer, a copy changed behind the target's back (the
//! test hook: the stopped replica's pool opened with the engine and
//! written at io_seq 0, so that it rejoins without a rebuild), or a block
//! nobody reads corrupted in a replica's pool file. The scrub finds the
//! range, repairs the minority from the majority, and reports what no
//! majority decides; `cstor ctl scrub` drives a target process's scrub.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cstor_engine::io::{test_backend, DeviceOptions};
use cstor_engine::{Pool, PoolOptions};
use cstor_target::volume::scrub::{RangeOutcome, Scrub, ScrubState, ScrubStatus};
use cstor_target::volume::{Completion, Op, Volume, VolumeSpec};

use crate::common::{free_addr, pattern, ReplicaProcess, TargetProcess};
use crate::metrics::{scrape, value};

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Blocks written before the scrub: 4 MiB, four scrub ranges.
const BLOCKS: u64 = 1024;
/// The block changed behind the target's back: in the second MiB.
const CHANGED: u64 = 300;

fn replicas(n: usize, dir: &Path) -> Vec<ReplicaProcess> {
    (0..n)
        .map(|i| {
            let sub = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let r = ReplicaProcess::create(&sub, "256MiB");
            r.ctl(&["volume", "create", "vol", "--size", "16MiB"]);
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

async fn all_healthy(volume: &Volume) {
    tokio::time::timeout(
        Duration::from_secs(30),
        volume.wait_for(|s| s.healthy == s.replicas.len()),
    )
    .await
    .unwrap_or_else(|_| panic!("not all healthy: {:?}", volume.status()));
}

/// Writes generation 1 of every block of `0..BLOCKS`, 64 KiB at a time,
/// and makes it durable.
async fn fill(volume: &Volume) {
    for lba in (0..BLOCKS).step_by(16) {
        let mut data = BytesMut::new();
        for b in lba..lba + 16 {
            data.extend_from_slice(&pattern(b, 1, BLOCK as usize));
        }
        let result = volume
            .submit(Op::Write {
                offset: lba * BLOCK,
                data: data.freeze(),
                fua: false,
            })
            .await;
        assert_eq!(result, Ok(Completion::Done), "write at block {lba}");
    }
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));
}

/// The test hook: with the replica stopped, writes `data` at `offset` of
/// its volume through the engine, at io_seq 0 (older than anything, so the
/// replica does not look newer and rejoins without a rebuild).
async fn change_behind_the_target(replica: &ReplicaProcess, offset: u64, data: &[u8]) {
    let dev = test_backend()
        .open(&replica.pool_file, &DeviceOptions::existing())
        .unwrap();
    let pool = Pool::open(vec![dev], &PoolOptions::default())
        .await
        .unwrap();
    let volume = pool.volume("vol").unwrap();
    volume.write(offset, data, 0).await.unwrap();
    volume.flush().await.unwrap();
    pool.close().await.unwrap();
}

/// Runs a scrub to its end and returns its status.
async fn scrub_to_the_end(scrub: &Scrub, from_start: bool) -> ScrubStatus {
    scrub.start(from_start, 0).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = scrub.status();
        if status.state != ScrubState::Running {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "scrub did not end: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads block `lba` from replica `r` alone (a session at `epoch`, which
/// fences the test's volume: call last).
async fn block_of(r: &ReplicaProcess, epoch: u64, lba: u64) -> Bytes {
    let (mut client, _) = r.open("vol", epoch).await;
    client.read(lba * BLOCK, BLOCK as u32).await
}

/// Stops replica `which`, changes block `CHANGED` of its copy, restarts it
/// and waits until every replica is healthy again (no rebuild: it missed
/// nothing).
async fn plant_a_difference(volume: &Volume, reps: &mut [ReplicaProcess], which: usize) {
    assert!(reps[which].terminate(), "replica did not stop cleanly");
    change_behind_the_target(&reps[which], CHANGED * BLOCK, &[0xee; BLOCK as usize]).await;
    reps[which].start();
    all_healthy(volume).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_repairs_the_replica_that_differs_from_the_majority() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    all_healthy(&volume).await;
    fill(&volume).await;
    plant_a_difference(&volume, &mut reps, 2).await;
    assert_eq!(volume.status().rebuilt_bytes, vec![0, 0, 0], "no rebuild");

    let scrub = Scrub::new(volume.clone(), "vol", None);
    let status = scrub_to_the_end(&scrub, false).await;
    assert_eq!(status.state, ScrubState::Done, "{status:?}");
    assert_eq!(status.total_bytes, 16 * MIB);
    assert_eq!(status.ranges_compared, 16, "{status:?}");
    assert_eq!(status.mismatched_ranges, 1, "{status:?}");
    assert_eq!(status.undecided_ranges, 0, "{status:?}");
    assert_eq!(status.passes_completed, 1);
    assert_eq!(status.cursor, 0, "a finished pass starts over");
    let range = &status.ranges[0];
    assert_eq!((range.offset, range.len), (MIB, MIB), "{range:?}");
    assert_eq!(range.outcome, RangeOutcome::Repaired, "{range:?}");
    assert_eq!(range.replicas, vec![reps[2].data.to_string()], "{range:?}");
    // The whole range was written back from the majority.
    let block = u64::from(volume.block_size());
    assert_eq!(status.repaired_blocks, MIB / block, "{status:?}");

    // A second pass finds the copies agreeing.
    let again = scrub_to_the_end(&scrub, true).await;
    assert_eq!(
        (
            again.mismatched_ranges,
            again.repaired_blocks,
            again.passes_completed
        ),
        (0, 0, 2),
        "{again:?}"
    );

    // The changed replica holds the majority's data again.
    let epoch = volume.status().epoch + 1;
    volume.close();
    for r in &reps {
        assert_eq!(
            block_of(r, epoch, CHANGED).await,
            pattern(CHANGED, 1, BLOCK as usize)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_reports_two_replicas_that_differ_as_undecided_and_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(2, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    all_healthy(&volume).await;
    fill(&volume).await;
    plant_a_difference(&volume, &mut reps, 1).await;

    let scrub = Scrub::new(volume.clone(), "vol", None);
    let status = scrub_to_the_end(&scrub, false).await;
    assert_eq!(status.state, ScrubState::Done, "{status:?}");
    assert_eq!(status.mismatched_ranges, 1, "{status:?}");
    assert_eq!(status.undecided_ranges, 1, "{status:?}");
    assert_eq!(status.repaired_blocks, 0, "{status:?}");
    let range = &status.ranges[0];
    assert_eq!((range.offset, range.len), (MIB, MIB), "{range:?}");
    assert_eq!(range.outcome, RangeOutcome::Undecided, "{range:?}");
    let mut named = range.replicas.clone();
    named.sort();
    let mut both: Vec<String> = reps.iter().map(|r| r.data.to_string()).collect();
    both.sort();
    assert_eq!(named, both, "{range:?}");

    // Nothing was guessed: each copy is as it was.
    let epoch = volume.status().epoch + 1;
    volume.close();
    assert_eq!(
        block_of(&reps[0], epoch, CHANGED).await,
        pattern(CHANGED, 1, BLOCK as usize)
    );
    assert_eq!(
        block_of(&reps[1], epoch, CHANGED).await,
        Bytes::from(vec![0xee; BLOCK as usize])
    );
}

/// Where `needle` is in the file at `path` (every match).
fn find_in_file(path: &Path, needle: &[u8]) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i as u64)
        .collect()
}

/// Needs the engine's block checksums (docs/checksums-design.md): the
/// corrupted copy names the block bad in its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_finds_and_repairs_a_corrupted_block_nobody_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    all_healthy(&volume).await;
    fill(&volume).await;
    // A block of its own pattern, found again in the pool file.
    let lba = 2 * MIB / BLOCK + 5;
    let marker: Vec<u8> = (0..BLOCK).map(|i| (i * 31 % 251) as u8 ^ 0x5a).collect();
    let result = volume
        .submit(Op::Write {
            offset: lba * BLOCK,
            data: Bytes::from(marker.clone()),
            fua: true,
        })
        .await;
    assert_eq!(result, Ok(Completion::Done));
    assert!(reps[1].terminate(), "replica did not stop cleanly");
    let at = find_in_file(&reps[1].pool_file, &marker);
    assert_eq!(at.len(), 1, "the written block is once in the pool file");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&reps[1].pool_file)
            .unwrap();
        file.seek(SeekFrom::Start(at[0] + 100)).unwrap();
        file.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
        file.sync_all().unwrap();
    }
    reps[1].start();
    all_healthy(&volume).await;

    let scrub = Scrub::new(volume.clone(), "vol", None);
    let status = scrub_to_the_end(&scrub, false).await;
    assert_eq!(status.state, ScrubState::Done, "{status:?}");
    assert_eq!(status.mismatched_ranges, 1, "{status:?}");
    assert_eq!(
        status.bad_block_ranges, 1,
        "the copy names the block bad: {status:?}"
    );
    assert_eq!(status.undecided_ranges, 0, "{status:?}");
    let range = &status.ranges[0];
    assert_eq!((range.offset, range.len), (2 * MIB, MIB), "{range:?}");
    assert_eq!(range.outcome, RangeOutcome::Repaired, "{range:?}");
    assert_eq!(range.replicas, vec![reps[1].data.to_string()], "{range:?}");
    // Only the bad block was written back.
    let block = u64::from(volume.block_size());
    assert_eq!(status.repaired_blocks, BLOCK / block, "{status:?}");

    let epoch = volume.status().epoch + 1;
    volume.close();
    for r in &reps {
        assert_eq!(block_of(r, epoch, lba).await, Bytes::from(marker.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cstor_ctl_scrub_starts_reports_and_refuses_another_volume() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    // Change a replica's copy before the target ever opens the volume.
    assert!(reps[0].terminate());
    change_behind_the_target(&reps[0], CHANGED * BLOCK, &[0xee; BLOCK as usize]).await;
    reps[0].start();
    let mgmt = free_addr();
    let metrics = free_addr();
    let state = dir.path().join("scrub-state");
    let addrs: Vec<_> = reps.iter().map(|r| r.data).collect();
    let target = TargetProcess::start_with(
        dir.path(),
        free_addr(),
        "vol",
        &addrs,
        &[
            "--mgmt-listen",
            &mgmt.to_string(),
            "--scrub-state-dir",
            state.to_str().unwrap(),
            "--metrics-listen",
            &metrics.to_string(),
        ],
        &[],
    );
    let pki = &target.pki;
    let mgmt = mgmt.to_string();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--target", mgmt.as_str()];
        all.extend_from_slice(args);
        pki.ctl_output(&all)
    };
    // Another volume's name: a clear error, no scrub.
    let wrong = ctl(&["scrub", "status", "other"]);
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("NotFound") && stderr.contains("\"vol\""),
        "{stderr}"
    );

    // Every replica healthy first: a scrub compares the healthy ones.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = ctl(&["--json", "status"]);
        if out.status.success() {
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if status["healthy"] == 3 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "{out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = ctl(&["scrub", "start", "vol", "--from-start"]);
    assert!(started.status.success(), "{started:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = ctl(&["--json", "scrub", "status", "vol"]);
        assert!(out.status.success(), "{out:?}");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["state"] == "done" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["mismatched_ranges"], 1, "{status}");
    assert_eq!(status["undecided_ranges"], 0, "{status}");
    assert_eq!(status["ranges"][0]["offset"], MIB, "{status}");
    assert_eq!(status["ranges"][0]["outcome"], "repaired", "{status}");
    assert_eq!(
        status["ranges"][0]["replicas"][0],
        reps[0].data.to_string(),
        "{status}"
    );
    // The table names the range too.
    let text = ctl(&["scrub", "status", "vol"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("repaired") && text.contains(&MIB.to_string()),
        "{text}"
    );
    // The pass ended: its cursor (0) and count are persisted.
    let saved = std::fs::read_to_string(state.join("scrub-vol.state")).unwrap();
    assert!(
        saved.contains("cursor 0") && saved.contains("passes 1"),
        "{saved}"
    );
    // The metrics count it.
    let samples = scrape(metrics).await;
    let v = [("volume", "vol")];
    assert_eq!(
        value(&samples, "cstor_scrub_bytes_total", &v),
        (16 * MIB) as f64
    );
    assert_eq!(
        value(&samples, "cstor_scrub_mismatched_ranges_total", &v),
        1.0
    );
    assert!(value(&samples, "cstor_scrub_repaired_blocks_total", &v) > 0.0);
    assert_eq!(
        value(&samples, "cstor_scrub_undecided_ranges_total", &v),
        0.0
    );
    assert_eq!(value(&samples, "cstor_scrub_running", &v), 0.0);
    // Stop with none running answers the last result.
    let stopped = ctl(&["scrub", "stop", "vol"]);
    assert!(stopped.status.success(), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_scrub_resumes_from_its_persisted_cursor_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let reps = replicas(3, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    all_healthy(&volume).await;
    let state = dir.path().join("scrub-state");
    std::fs::create_dir_all(&state).unwrap();
    let scrub = Scrub::new(volume.clone(), "vol", Some(&state));
    // Slow (1 MiB/s over 16 MiB), stopped once past the second range.
    scrub.start(false, MIB).unwrap();
    assert_eq!(
        scrub.start(false, MIB).unwrap_err(),
        cstor_target::volume::scrub::ScrubError::Running
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while scrub.status().cursor < 2 * MIB {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            scrub.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = scrub.stop().await;
    assert_eq!(stopped.state, ScrubState::Stopped, "{stopped:?}");
    assert!(stopped.cursor >= 2 * MIB && stopped.cursor < 16 * MIB);
    assert_eq!(stopped.cursor % MIB, 0);

    // A new target process (a new Scrub over the same state directory).
    let restarted = Scrub::new(volume.clone(), "vol", Some(&state));
    assert_eq!(restarted.status().cursor, stopped.cursor);
    let resumed = restarted.start(false, MIB).unwrap();
    assert_eq!(resumed.cursor, stopped.cursor, "resumes where it stopped");
    let again = restarted.stop().await;
    assert!(again.cursor >= stopped.cursor);
    // Unless told to start over.
    let fresh = restarted.start(true, 0).unwrap();
    assert_eq!(fresh.cursor, 0);
    let done = scrub_to_the_end_of(&restarted).await;
    assert_eq!(done.state, ScrubState::Done, "{done:?}");
    assert_eq!(done.scrubbed_bytes, 16 * MIB);
    assert_eq!(
        Scrub::new(volume.clone(), "vol", Some(&state))
            .status()
            .passes_completed,
        1
    );
    volume.close();
}

/// Waits for the running scrub to end.
async fn scrub_to_the_end_of(scrub: &Scrub) -> ScrubStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = scrub.status();
        if status.state != ScrubState::Running {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_under_write_load_repairs_only_the_planted_difference_and_loses_no_write() {
    use crate::common::VolumeLoad;
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let mut reps = replicas(3, dir.path());
    let volume = Volume::open(spec(&reps)).await.unwrap();
    all_healthy(&volume).await;
    fill(&volume).await;
    // Planted outside the blocks the load writes (0..BLOCKS): its range is
    // repaired while the others are written to.
    let planted = 3 * BLOCKS;
    assert!(reps[1].terminate(), "replica did not stop cleanly");
    change_behind_the_target(&reps[1], planted * BLOCK, &[0xee; BLOCK as usize]).await;
    reps[1].start();
    all_healthy(&volume).await;

    let acked = Arc::new(Mutex::new(vec![1u64; BLOCKS as usize]));
    let load = VolumeLoad::start(&volume, BLOCKS, 4, 1, &acked);
    load.wait_writes(200).await;
    let scrub = Scrub::new(volume.clone(), "vol", None);
    // 4 MiB/s: the pass takes about 4 s of the load.
    scrub.start(false, 4 * MIB).unwrap();
    let status = scrub_to_the_end_of(&scrub).await;
    let writes = load.finish().await;
    assert!(writes > 200);
    assert_eq!(status.state, ScrubState::Done, "{status:?}");
    // The copies written to meanwhile never looked different.
    assert_eq!(status.mismatched_ranges, 1, "{status:?}");
    assert_eq!(status.undecided_ranges, 0, "{status:?}");
    let range = &status.ranges[0];
    assert_eq!(range.offset, planted * BLOCK / MIB * MIB, "{range:?}");
    assert_eq!(range.outcome, RangeOutcome::Repaired, "{range:?}");
    assert_eq!(volume.submit(Op::Flush).await, Ok(Completion::Done));

    // Every replica holds every acknowledged write, and the planted block
    // is the majority's again.
    let epoch = volume.status().epoch + 1;
    volume.close();
    let acked = acked.lock().unwrap().clone();
    for (i, r) in reps.iter().enumerate() {
        let (mut client, _) = r.open("vol", epoch).await;
        for first in (0..BLOCKS).step_by(256) {
            let data = client.read(first * BLOCK, (256 * BLOCK) as u32).await;
            for b in 0..256u64 {
                let lba = first + b;
                let got = &data[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
                assert!(
                    got == pattern(lba, acked[lba as usize], BLOCK as usize),
                    "replica {i} block {lba}: not generation {}",
                    acked[lba as usize]
                );
            }
        }
        assert_eq!(
            client.read(planted * BLOCK, BLOCK as u32).await,
            Bytes::from(vec![0u8; BLOCK as usize]),
            "replica {i}: the planted block is the majority's (never written: zeros)"
        );
    }
}
