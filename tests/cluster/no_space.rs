//! Replicas running out of space, across real processes: three `cstor
//! replica run` daemons with pools of different sizes under one thin
//! volume, a `cstor target` with CF 2, written through the minimal
//! initiator of tests/common (`IscsiSession`).
//!
//! - One pool fills up (32 MiB under a 128 MiB thin volume): every write is
//!   still GOOD at quorum on the two others; the short replica leaves the
//!   healthy set at its first failed write and is never reported healthy
//!   again while it lacks writes (the target's status is polled throughout),
//!   and it is not redialled more than its backoff allows; every block
//!   reads back the acknowledged data, the same every time (reads never go
//!   to the replica that lacks it).
//! - A second pool fills up (48 MiB): fewer than CF replicas can allocate,
//!   so writes fail at once (not held as below quorum) with CHECK
//!   CONDITION, DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT
//!   (07/27/07; docs/failure-behaviour.md, "Replicas run out of space"), an overwrite
//!   of an allocated block too, while reads go on and return what they
//!   returned before.
//!
//! Timeouts are hang guards only; the test asserts states and answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{
    free_addr, pattern, pattern_run, replica_states, target_status, wait_target_status,
    IscsiSession, ReplicaProcess, ScsiOutcome, TargetProcess, TestPki,
};
use bytes::Bytes;

const VOLUME: &str = "vol";
const INITIATOR: &str = "iqn.2026-11.io.cstor.test:no-space";
/// Pools: one roomy, one that fills at about 30 MiB of data, one at about
/// 46 MiB (`cstor replica init` keeps the rest for metadata).
const POOLS: [&str; 3] = ["256MiB", "32MiB", "48MiB"];
/// The thin volume on each: larger than the two small pools.
const VOLUME_SIZE: &str = "128MiB";
/// Blocks of one write (64 KiB: one chunk, the initiator's first burst).
const RUN: u64 = 16;
/// Blocks written while only the 32 MiB pool is short (40 MiB).
const FIRST_BLOCKS: u64 = 40 * 256;
/// Blocks the second phase writes at most before the 48 MiB pool must have
/// run out (64 MiB).
const SECOND_LIMIT: u64 = 64 * 256;
/// Blocks of one read (1 MiB).
const READ_RUN: u64 = 256;
/// Reads of every written block while one pool is full.
const READ_PASSES: usize = 20;
/// The target's hold below quorum (`--hold-seconds`): a write the volume
/// cannot allocate must fail well before it.
const HOLD_SECONDS: u64 = 15;
/// Hang guard for a state change.
const GUARD: Duration = Duration::from_secs(90);
/// DATA PROTECT (SPC-5 §4.4.8) / SPACE ALLOCATION FAILED WRITE PROTECT
/// (SBC-4 §4.7.3.6): 27h/07h, where a write held below quorum would end
/// in WRITE PROTECTED, 27h/00h.
const DATA_PROTECT: u8 = 0x07;
const SPACE_ALLOCATION_FAILED: (u8, u8) = (0x27, 0x07);

fn replicas(dir: &std::path::Path) -> Vec<ReplicaProcess> {
    POOLS
        .iter()
        .enumerate()
        .map(|(i, pool)| {
            let sub = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let r = ReplicaProcess::create(&sub, pool);
            r.ctl(&["volume", "create", VOLUME, "--size", VOLUME_SIZE]);
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
            "--cf",
            "2",
            "--hold-seconds",
            &HOLD_SECONDS.to_string(),
        ],
        &[],
    )
}

/// (sense key, ASC, ASCQ) of a CHECK CONDITION, fixed or descriptor format.
fn sense(outcome: &ScsiOutcome) -> Option<(u8, u8, u8)> {
    let s = outcome.sense.as_deref()?;
    if s.first()? & 0x7f >= 0x72 {
        Some((s.get(1)? & 0x0f, *s.get(2)?, *s.get(3)?))
    } else {
        Some((s.get(2)? & 0x0f, *s.get(12)?, *s.get(13)?))
    }
}

/// When (since the poller started) the target reported which state for
/// each replica.
type Samples = Vec<(Duration, Vec<String>)>;

/// The target's view of each replica over time, polled with `cstor ctl
/// --json status` on a thread of its own.
struct StatePoller {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
    thread: std::thread::JoinHandle<()>,
}

impl StatePoller {
    fn start(pki: &TestPki, mgmt: SocketAddr) -> StatePoller {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out, pki) = (stop.clone(), samples.clone(), pki.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if let Some(status) = target_status(&pki, mgmt) {
                    out.lock()
                        .unwrap()
                        .push((started.elapsed(), replica_states(&status)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        StatePoller {
            stop,
            samples,
            thread,
        }
    }

    fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// Reads `0..blocks` in 1 MiB reads; says which block first differs from
/// `expect(lba)` (and how), if any.
async fn read_back(
    session: &mut IscsiSession,
    blocks: u64,
    expect: impl Fn(u64) -> Bytes,
) -> Result<(), String> {
    let block = session.block_size as usize;
    for first in (0..blocks).step_by(READ_RUN as usize) {
        let n = READ_RUN.min(blocks - first);
        let done = session.read(first, n as u32).await.unwrap();
        if !done.is_good() {
            return Err(format!("read at {first}: {done:?}"));
        }
        for (i, got) in done.data.chunks(block).enumerate() {
            let lba = first + i as u64;
            let want = expect(lba);
            if got != want.as_ref() {
                return Err(format!(
                    "block {lba} changed: its first 16 bytes are {:02x?}, expected {:02x?}",
                    &got[..16.min(got.len())],
                    &want[..16.min(want.len())]
                ));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replica_leaves_the_healthy_set_writes_go_on_at_quorum_and_a_full_volume_is_write_protected(
) {
    let dir = tempfile::tempdir().unwrap();
    let reps = replicas(dir.path());
    let (portal, mgmt) = (free_addr(), free_addr());
    let target = start_target(dir.path(), portal, mgmt, &reps);
    tokio::task::block_in_place(|| {
        wait_target_status(&target.pki, mgmt, "3 healthy replicas", GUARD, |s| {
            replica_states(s).iter().all(|x| x == "healthy")
        })
    });
    let poller = StatePoller::start(&target.pki, mgmt);
    let mut session = IscsiSession::login(portal, &target.iqn, INITIATOR)
        .await
        .unwrap();
    let block = session.block_size as usize;
    assert_eq!(block, 4096);

    // Phase 1: more than the 32 MiB pool holds. Every write is GOOD at
    // quorum on the two others.
    let started = Instant::now();
    for lba in (0..FIRST_BLOCKS).step_by(RUN as usize) {
        let done = session
            .write(lba, pattern_run(lba, RUN, 1, block))
            .await
            .unwrap();
        assert!(
            done.is_good(),
            "write at {lba} ({} MiB): {done:?}; {}",
            lba / 256,
            target.log_text()
        );
    }
    let written = started.elapsed();
    let status = target_status(&target.pki, mgmt).unwrap();
    let states = replica_states(&status);
    assert_ne!(states[1], "healthy", "the full replica: {status}");
    assert_eq!(states[0], "healthy", "{status}");
    assert_eq!(states[2], "healthy", "{status}");
    assert!(!status["read_only"].as_bool().unwrap(), "{status}");
    eprintln!(
        "phase 1: {} MiB written GOOD in {written:?}; replica states {states:?}",
        FIRST_BLOCKS / 256
    );
    // Every block, many times: always the acknowledged data.
    for _ in 0..READ_PASSES {
        let read = read_back(&mut session, FIRST_BLOCKS, |lba| pattern(lba, 1, block)).await;
        assert!(read.is_ok(), "{read:?}; target log: {}", target.log_text());
    }

    // Phase 2: on until the 48 MiB pool is full too: fewer than CF replicas
    // can allocate, and the write fails as DATA PROTECT.
    let mut failed_at = None;
    for lba in (FIRST_BLOCKS..SECOND_LIMIT).step_by(RUN as usize) {
        let at = Instant::now();
        let done = session
            .write(lba, pattern_run(lba, RUN, 1, block))
            .await
            .unwrap();
        if done.is_good() {
            continue;
        }
        let (key, asc, ascq) = sense(&done).unwrap_or_else(|| panic!("no sense: {done:?}"));
        eprintln!(
            "phase 2: write at {} MiB failed after {:?}: sense {key:02x}/{asc:02x}/{ascq:02x}",
            lba / 256,
            at.elapsed()
        );
        assert_eq!(done.status, ScsiOutcome::CHECK_CONDITION);
        assert_eq!(
            (key, (asc, ascq)),
            (DATA_PROTECT, SPACE_ALLOCATION_FAILED),
            "{done:?}"
        );
        failed_at = Some(lba);
        break;
    }
    let failed_at = failed_at.expect("the 48 MiB pool never filled up");
    // The volume cannot allocate: every write fails at once, an overwrite of
    // an allocated block too (generation 2: it must not land anywhere).
    for lba in [failed_at + RUN, 0, FIRST_BLOCKS - RUN] {
        let at = Instant::now();
        let done = session
            .write(lba, pattern_run(lba, RUN, 2, block))
            .await
            .unwrap();
        let (key, asc, ascq) = sense(&done).unwrap_or_else(|| panic!("no sense: {done:?}"));
        assert_eq!(
            (key, (asc, ascq)),
            (DATA_PROTECT, SPACE_ALLOCATION_FAILED),
            "{done:?}"
        );
        eprintln!("write at {lba} failed after {:?}", at.elapsed());
    }
    let status = target_status(&target.pki, mgmt).unwrap();
    let states = replica_states(&status);
    // Not read-only (below quorum for the hold): out of space. The LU does
    // not turn write protected, the volume answers each write.
    assert!(!status["read_only"].as_bool().unwrap(), "{status}");
    assert_eq!(status["healthy"].as_u64(), Some(1), "{status}");
    assert_eq!(states[0], "healthy", "{status}");
    assert_ne!(states[1], "healthy", "{status}");
    assert_ne!(states[2], "healthy", "{status}");
    // Reads go on: everything acknowledged, and the blocks of the failed
    // write the same on every read.
    let read = read_back(&mut session, failed_at, |lba| pattern(lba, 1, block)).await;
    assert!(read.is_ok(), "{read:?}; target log: {}", target.log_text());
    let first = session.read(failed_at, RUN as u32).await.unwrap();
    assert!(first.is_good(), "{first:?}");
    for _ in 0..READ_PASSES {
        let again = session.read(failed_at, RUN as u32).await.unwrap();
        assert!(again.is_good() && again.data == first.data);
    }

    // The full replica was never healthy again once it had left, and it was
    // not redialled more often than its backoff allows.
    let samples = poller.finish();
    let left = samples
        .iter()
        .position(|(_, s)| s.get(1).is_some_and(|x| x != "healthy"))
        .expect("the full replica never left the healthy set");
    let back = samples[left..]
        .iter()
        .find(|(_, s)| s.get(1).is_some_and(|x| x == "healthy"));
    assert!(
        back.is_none(),
        "replica 1 reported healthy while it lacks writes: {back:?}"
    );
    let short = |s: &[String]| s.get(1).cloned().unwrap_or_default();
    assert!(
        samples.iter().any(|(_, s)| short(s) == "failed"),
        "replica 1 never reported failed"
    );
    let redials = samples
        .windows(2)
        .filter(|w| short(&w[0].1) == "failed" && short(&w[1].1) != "failed")
        .count();
    let span = samples.last().map(|(t, _)| *t).unwrap_or_default() - samples[left].0;
    eprintln!(
        "replica 1: left the healthy set at {:?}, redialled {redials} times in the {span:?} after ({} samples)",
        samples[left].0,
        samples.len()
    );
    // 1 s doubling: at most about log2(span) + 1 redials (~10 a second
    // without a backoff).
    let bound = (span.as_secs_f64().max(1.0).log2().ceil() as usize) + 2;
    assert!(
        redials <= bound,
        "{redials} redials in {span:?} (at most {bound})"
    );
}
