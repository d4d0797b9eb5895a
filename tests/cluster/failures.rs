//! Failures across real processes, seen by an iSCSI initiator: three
//! `cstor replica run` daemons and a `cstor target` on loopback, driven by
//! the minimal initiator of tests/common (`IscsiSession`).
//!
//! - A replica that is *slow*, not dead (SIGSTOP), leaves the healthy set
//!   after the target's ack timeout instead of stalling the volume
//!   (docs/architecture.md, invariant 9 and "acknowledge at quorum"); writes go on GOOD at
//!   quorum while it is stopped; after SIGCONT it rejoins, rebuilds and is
//!   healthy again (invariant 6), and all three replicas hold exactly the
//!   acknowledged data.
//! - A target killed with SIGKILL under load and restarted on the same
//!   portal loses nothing that was flushed (invariant 1: the target is
//!   stateless, the replicas hold the truth): a new session reads every
//!   flushed block back, and every block written after the last flush is
//!   one of the generations written to it, never torn.
//!
//! The kill -9 of replicas, below-quorum read-only, fencing, snapshots and
//! grow under load are in tests/volume_replication.rs, tests/rebuild.rs and
//! tests/snapshot_resize.rs. Timeouts here are hang guards only; the tests
//! assert states and their order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{
    free_addr, is_stopped, pattern, pattern_run, replica_states, signal, wait_target_status,
    IscsiSession, ReplicaProcess, TargetProcess, TestPki,
};

const VOLUME: &str = "vol";
const INITIATOR: &str = "iqn.2026-11.io.cstor.test:failures";
/// The target's ack timeout in these tests (`--ack-timeout-seconds`).
const ACK_TIMEOUT_SECONDS: &str = "2";
/// Blocks the tests write to (16 MiB of 4 KiB blocks).
const BLOCKS: u64 = 4096;
/// Blocks of one multi-block write (64 KiB, the initiator's first burst).
const RUN: u64 = 16;
/// Concurrent writer sessions while the target is killed.
const WRITERS: u64 = 4;
/// Hang guard for a state change (ejection, rebuild, restart).
const GUARD: Duration = Duration::from_secs(90);

fn replicas(n: usize, dir: &std::path::Path) -> Vec<ReplicaProcess> {
    (0..n)
        .map(|i| {
            let sub = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let r = ReplicaProcess::create(&sub, "256MiB");
            r.ctl(&["volume", "create", VOLUME, "--size", "64MiB"]);
            r
        })
        .collect()
}

fn start_target(
    dir: &std::path::Path,
    portal: SocketAddr,
    mgmt: SocketAddr,
    reps: &[ReplicaProcess],
) -> TargetProcess {
    let data: Vec<SocketAddr> = reps.iter().map(|r| r.data).collect();
    TargetProcess::start_with(
        dir,
        portal,
        VOLUME,
        &data,
        &[
            "--mgmt-listen",
            &mgmt.to_string(),
            "--ack-timeout-seconds",
            ACK_TIMEOUT_SECONDS,
            "--hold-seconds",
            "15",
        ],
        &[],
    )
}

/// Blocks until the target reports `n` healthy replicas (run off the async
/// workers: it polls `cstor ctl`).
fn wait_healthy(pki: &TestPki, mgmt: SocketAddr, n: usize) -> serde_json::Value {
    tokio::task::block_in_place(|| {
        wait_target_status(pki, mgmt, &format!("{n} healthy replicas"), GUARD, |s| {
            replica_states(s).iter().filter(|x| *x == "healthy").count() == n
        })
    })
}

/// Which generation a block holds: 0 for zeros, `g` for `pattern(lba, g)`,
/// `None` for anything else (torn, misplaced, garbage).
fn generation_of(lba: u64, block: &[u8]) -> Option<u64> {
    if block.iter().all(|b| *b == 0) {
        return Some(0);
    }
    let generation = u64::from_le_bytes(block.get(8..16)?.try_into().ok()?);
    (pattern(lba, generation, block.len()) == block).then_some(generation)
}

/// Reads every block of `0..acked.len()` from each replica alone (a fresh
/// session at `epoch`, above the dead target's) and checks it holds
/// generation `acked[lba]`.
async fn check_replicas(reps: &[ReplicaProcess], epoch: u64, acked: &[u64], block: u64) {
    let per_read = 256u64;
    for (i, r) in reps.iter().enumerate() {
        let (mut client, _) = r.open(VOLUME, epoch).await;
        for first in (0..acked.len() as u64).step_by(per_read as usize) {
            let data = client.read(first * block, (per_read * block) as u32).await;
            for (b, got) in data.chunks(block as usize).enumerate() {
                let lba = first + b as u64;
                let want = acked[lba as usize];
                assert_eq!(
                    generation_of(lba, got),
                    Some(want),
                    "replica {i} block {lba}: want generation {want}"
                );
            }
        }
    }
}

/// A writer task on its own iSCSI session overwriting single blocks of
/// `0..BLOCKS` (a stride that visits every block) until told to stop. QD 1:
/// each write is GOOD before the next is sent, so `acked` is exactly what
/// the volume must hold.
struct Load {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<IscsiSession>,
}

impl Load {
    fn start(mut session: IscsiSession, acked: &Arc<Mutex<Vec<u64>>>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (s, w, acked) = (Arc::clone(&stop), Arc::clone(&writes), Arc::clone(acked));
        let task = tokio::spawn(async move {
            let block_size = session.block_size as usize;
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                // 97 is coprime with BLOCKS (a power of two).
                let lba = i * 97 % BLOCKS;
                let generation = 100 + i;
                let done = session
                    .write(lba, pattern(lba, generation, block_size))
                    .await
                    .unwrap_or_else(|e| panic!("write of block {lba}: {e}"));
                assert!(done.is_good(), "write of block {lba}: {done:?}");
                acked.lock().unwrap()[lba as usize] = generation;
                w.fetch_add(1, Ordering::Relaxed);
            }
            session
        });
        Load { stop, writes, task }
    }

    fn count(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Waits until `more` writes have completed GOOD since the call.
    async fn wait_writes(&self, more: u64) {
        let target = self.count() + more;
        let deadline = Instant::now() + GUARD;
        while self.count() < target {
            assert!(
                !self.task.is_finished(),
                "the writer stopped (see its panic)"
            );
            assert!(Instant::now() < deadline, "writes stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> IscsiSession {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_ejected_writes_go_on_and_it_rebuilds_after_sigcont() {
    let dir = tempfile::tempdir().unwrap();
    let reps = replicas(3, dir.path());
    let (portal, mgmt) = (free_addr(), free_addr());
    let mut target = start_target(dir.path(), portal, mgmt, &reps);
    wait_healthy(&target.pki, mgmt, 3);
    let mut session = IscsiSession::login(portal, &target.iqn, INITIATOR)
        .await
        .unwrap();
    assert_eq!(session.block_size, 4096);
    let block = u64::from(session.block_size);

    // Generation 1 everywhere, flushed.
    let acked = Arc::new(Mutex::new(vec![0u64; BLOCKS as usize]));
    for lba in (0..BLOCKS).step_by(RUN as usize) {
        let done = session
            .write(lba, pattern_run(lba, RUN, 1, block as usize))
            .await
            .unwrap();
        assert!(done.is_good(), "fill at {lba}: {done:?}");
    }
    acked.lock().unwrap().fill(1);
    assert!(session.sync_cache().await.unwrap().is_good());

    let load = Load::start(session, &acked);
    load.wait_writes(200).await;
    let slow = reps[2].pid();
    let slow_addr = reps[2].data.to_string();
    signal(slow, "-STOP");
    let stopped_at = Instant::now();
    // The target gives up on it after the ack timeout: it leaves the
    // healthy set while it is still stopped.
    let status = tokio::task::block_in_place(|| {
        wait_target_status(
            &target.pki,
            mgmt,
            "the stopped replica to be ejected",
            GUARD,
            |s| {
                s["replicas"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|x| x["address"] == slow_addr.as_str() && x["state"] != "healthy")
                })
            },
        )
    });
    eprintln!(
        "stopped replica ejected after {:?} (ack timeout {ACK_TIMEOUT_SECONDS} s): {:?}",
        stopped_at.elapsed(),
        replica_states(&status)
    );
    assert!(!status["read_only"].as_bool().unwrap(), "{status}");
    // Writes go on GOOD at quorum two while it is stopped.
    load.wait_writes(500).await;
    assert!(is_stopped(slow), "the replica was not stopped throughout");
    let status = crate::common::target_status(&target.pki, mgmt).unwrap();
    assert_eq!(
        replica_states(&status)
            .iter()
            .filter(|x| *x == "healthy")
            .count(),
        2,
        "{status}"
    );

    // Woken up, it rejoins, rebuilds what it missed and is healthy again,
    // all while the load goes on.
    signal(slow, "-CONT");
    wait_healthy(&target.pki, mgmt, 3);
    load.wait_writes(200).await;
    let mut session = load.finish().await;
    assert!(session.sync_cache().await.unwrap().is_good());
    // It became healthy through a rebuild, not by being taken back as it was.
    reps[2].finished_rebuild(VOLUME).await;

    // Through the target: everything acknowledged, whichever replica serves.
    let acked = acked.lock().unwrap().clone();
    for _ in 0..2 {
        for first in (0..BLOCKS).step_by(256) {
            let done = session.read(first, 256).await.unwrap();
            assert!(done.is_good(), "read at {first}: {done:?}");
            for (b, got) in done.data.chunks(block as usize).enumerate() {
                let lba = first + b as u64;
                assert_eq!(generation_of(lba, got), Some(acked[lba as usize]), "{lba}");
            }
        }
    }
    // And each replica alone holds exactly that.
    let epoch = crate::common::target_status(&target.pki, mgmt).unwrap()["epoch"]
        .as_u64()
        .unwrap();
    target.kill9();
    check_replicas(&reps, epoch + 1, &acked, block).await;
}

/// What the initiator knows about one block while it writes.
#[derive(Debug, Clone, Default)]
struct BlockHistory {
    /// The generation a SYNCHRONIZE CACHE made durable (0: zeros).
    flushed: u64,
    /// Generations sent after that flush (acknowledged or in flight): the
    /// block may hold any of these, or `flushed`.
    since: BTreeSet<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_under_load_loses_no_flushed_write_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let reps = replicas(3, dir.path());
    let (portal, mgmt) = (free_addr(), free_addr());
    let mut target = start_target(dir.path(), portal, mgmt, &reps);
    wait_healthy(&target.pki, mgmt, 3);
    // Writers, each on its own session and region of the first 8 MiB
    // (so several writes are in flight when the target dies): 64 KiB
    // writes, a SYNCHRONIZE CACHE after every eight, until the connection
    // dies under them.
    let history = Arc::new(Mutex::new(vec![
        BlockHistory::default();
        (BLOCKS / 2) as usize
    ]));
    let syncs = Arc::new(AtomicU64::new(0));
    let region = BLOCKS / 2 / WRITERS;
    let mut writers = Vec::new();
    for k in 0..WRITERS {
        let mut session = IscsiSession::login(portal, &target.iqn, INITIATOR)
            .await
            .unwrap();
        let (history, syncs) = (Arc::clone(&history), Arc::clone(&syncs));
        let mine = (k * region) as usize..((k + 1) * region) as usize;
        writers.push(tokio::spawn(async move {
            let block = session.block_size as usize;
            let runs = region / RUN;
            let mut i = 0u64;
            loop {
                i += 1;
                // 37 is coprime with `runs` (a power of two).
                let lba = k * region + (i * 37 % runs) * RUN;
                let generation = i * WRITERS + k;
                // Recorded before it is sent: once sent it may land.
                for h in &mut history.lock().unwrap()[lba as usize..(lba + RUN) as usize] {
                    h.since.insert(generation);
                }
                match session
                    .write(lba, pattern_run(lba, RUN, generation, block))
                    .await
                {
                    Ok(done) => assert!(done.is_good(), "write at {lba}: {done:?}"),
                    Err(e) => return (i, e),
                }
                if i.is_multiple_of(8) {
                    // What this writer got GOOD before it sends the
                    // SYNCHRONIZE CACHE is durable once that is GOOD: the
                    // newest generation of each of its blocks is then the
                    // flushed one. (Other writers' blocks may have a write
                    // in flight: they are theirs to account.)
                    let before: Vec<BlockHistory> = history.lock().unwrap()[mine.clone()].to_vec();
                    match session.sync_cache().await {
                        Ok(done) => assert!(done.is_good(), "sync: {done:?}"),
                        Err(e) => return (i, e),
                    }
                    let mut h = history.lock().unwrap();
                    for (now, then) in h[mine.clone()].iter_mut().zip(before) {
                        if let Some(newest) = then.since.last() {
                            now.flushed = *newest;
                            now.since.retain(|g| g > newest);
                        }
                    }
                    syncs.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Kill it mid-stream, once a good number of flushes went through.
    let deadline = Instant::now() + GUARD;
    while syncs.load(Ordering::Relaxed) < 40 {
        assert!(
            writers.iter().all(|w| !w.is_finished()),
            "a writer stopped early"
        );
        assert!(Instant::now() < deadline, "writes stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    target.kill9();
    for writer in writers {
        let (writes, error) = writer.await.unwrap();
        eprintln!("a writer saw the target die after {writes} writes: {error}");
    }

    // Same portal, same replicas, a new process: a new session.
    let target = start_target(dir.path(), portal, mgmt, &reps);
    wait_healthy(&target.pki, mgmt, 3);
    let mut session = IscsiSession::login_retrying(portal, &target.iqn, INITIATOR, GUARD).await;
    let block = session.block_size as usize;
    let history = history.lock().unwrap().clone();
    let (mut flushed_blocks, mut newer, mut torn) = (0, 0, Vec::new());
    // Twice: reads may be served by different replicas.
    for pass in 0..2 {
        for first in (0..history.len() as u64).step_by(256) {
            let done = session.read(first, 256).await.unwrap();
            assert!(done.is_good(), "read at {first}: {done:?}");
            for (b, got) in done.data.chunks(block).enumerate() {
                let lba = first + b as u64;
                let h = &history[lba as usize];
                match generation_of(lba, got) {
                    Some(g) if g == h.flushed => flushed_blocks += u64::from(pass == 0),
                    Some(g) if h.since.contains(&g) => newer += u64::from(pass == 0),
                    other => torn.push((lba, other, h.clone())),
                }
            }
        }
    }
    eprintln!(
        "after the restart: {flushed_blocks} blocks at their flushed generation, \
         {newer} at a newer unflushed one"
    );
    assert!(
        torn.is_empty(),
        "blocks lost or torn (lba, found generation, history): {torn:?}"
    );
    // The volume is writable again through the new session.
    let done = session
        .write(0, pattern_run(0, RUN, 1 << 40, block))
        .await
        .unwrap();
    assert!(done.is_good(), "{done:?}");
    assert!(session.sync_cache().await.unwrap().is_good());
    let mut history = history;
    for h in &mut history[..RUN as usize] {
        *h = BlockHistory {
            flushed: 1 << 40,
            since: BTreeSet::new(),
        };
    }

    // All three are healthy: each replica alone holds every flushed block,
    // and they agree on the unflushed ones (else reads would flip between
    // an old and a new generation depending on which replica serves them).
    let epoch = crate::common::target_status(&target.pki, mgmt).unwrap()["epoch"]
        .as_u64()
        .unwrap();
    drop(target);
    let mut images = Vec::new();
    for (i, r) in reps.iter().enumerate() {
        let (mut client, _) = r.open(VOLUME, epoch + 1).await;
        let mut image = Vec::new();
        for first in (0..history.len() as u64).step_by(256) {
            let data = client
                .read(first * block as u64, (256 * block) as u32)
                .await;
            for (b, got) in data.chunks(block).enumerate() {
                let lba = first + b as u64;
                let h = &history[lba as usize];
                let g = generation_of(lba, got);
                assert!(
                    g == Some(h.flushed) || g.is_some_and(|g| h.since.contains(&g)),
                    "replica {i} block {lba}: found generation {g:?}, history {h:?}"
                );
                image.push(g);
            }
        }
        images.push(image);
    }
    for (i, image) in images.iter().enumerate().skip(1) {
        let differ: Vec<usize> = (0..image.len())
            .filter(|b| image[*b] != images[0][*b])
            .collect();
        assert!(
            differ.is_empty(),
            "replicas 0 and {i} differ at blocks {differ:?}"
        );
    }
}
