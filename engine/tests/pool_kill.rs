//! Real-kill test: a child process (this binary re-executed with
//! `CSTOR_KILL_CHILD_DIR` set) writes to a file-backed pool and flushes,
//! logging each write's intent before issuing it and each flush after it
//! returns; the parent SIGKILLs it mid-stream, reopens the pool and checks
//! that every write covered by a completed flush reads back (later writes
//! may read old or new), that each chunk's io_seq is at least that of the
//! last flushed write into it (most writes overwrite a chunk in place, and
//! their io_seqs reach the journal coalesced, one record per chunk and
//! commit) and claims no write that did not survive, and that space
//! accounting is exact.
//! Runs on the backend `CSTOR_IO_BACKEND` selects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cstor_engine::io::{test_backend, DeviceOptions};
use cstor_engine::{DeviceRef, Pool, PoolOptions, Provisioning};

const CHILD_ENV: &str = "CSTOR_KILL_CHILD_DIR";
const BLOCK: usize = 4096;
const VOL_BYTES: u64 = 8 << 20;
const CHUNK: u64 = 16384;
const FLUSHES_BEFORE_KILL: usize = 40;

fn pattern(seq: u64) -> Vec<u8> {
    seq.to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(BLOCK)
        .collect()
}

fn opts() -> PoolOptions {
    PoolOptions {
        chunk_bytes: CHUNK as u32,
        ..PoolOptions::default()
    }
}

fn child(dir: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dev: DeviceRef = test_backend()
            .open(&dir.join("pool.img"), &DeviceOptions::create(64 << 20))
            .unwrap();
        let pool = Pool::create(vec![dev], &opts()).await.unwrap();
        let v = pool
            .create_volume("v", VOL_BYTES, 4096, Provisioning::Thin)
            .await
            .unwrap();
        v.create_snapshot("base").await.unwrap();
        let mut log = std::fs::File::create(dir.join("log")).unwrap();
        writeln!(log, "R").unwrap();
        let mut x = 0x1234_5678u64;
        for seq in 1u64.. {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % (VOL_BYTES / BLOCK as u64)) * BLOCK as u64;
            writeln!(log, "W {seq} {off}").unwrap();
            v.write(off, &pattern(seq), seq).await.unwrap();
            if seq % 4 == 0 {
                v.flush().await.unwrap();
                writeln!(log, "F {seq}").unwrap();
            }
        }
    });
}

fn read_log(path: &Path) -> (Vec<(u64, u64)>, u64, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut writes = Vec::new();
    let mut flushed = 0;
    let mut flushes = 0;
    // Only complete lines count (the kill may cut the last one).
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["W", seq, off] => writes.push((seq.parse().unwrap(), off.parse().unwrap())),
            ["F", seq] => {
                flushed = seq.parse().unwrap();
                flushes += 1;
            }
            _ => {}
        }
    }
    (writes, flushed, flushes)
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for progress (or for the child to die on its own, a failure).
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited by itself: {status}");
        }
        if read_log(&log).2 >= FLUSHES_BEFORE_KILL {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (writes, flushed, flushes) = read_log(&log);
    verify(&dir.path().join("pool.img"), &writes, flushed);
    eprintln!(
        "pool_kill: {} writes, {flushes} flushes before SIGKILL, all flushed writes intact",
        writes.len()
    );
}

fn verify(img: &Path, writes: &[(u64, u64)], flushed: u64) {
    // Per offset: the value durable at the last completed flush, and the
    // values of later writes (which may or may not have landed).
    let mut durable: BTreeMap<u64, u64> = BTreeMap::new();
    let mut later: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(seq, off) in writes {
        if seq <= flushed {
            durable.insert(off, seq);
        } else {
            later.entry(off).or_default().push(seq);
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A killed process's io_uring is torn down asynchronously by the
        // kernel, which holds the file (and its flock) until then: retry.
        let mut tries = 0;
        let dev: DeviceRef = loop {
            match test_backend().open(img, &DeviceOptions::existing()) {
                Ok(d) => break d,
                Err(e) if tries < 400 && e.to_string().contains("use") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                Err(e) => panic!("reopen {}: {e}", img.display()),
            }
        };
        let pool = Pool::open(vec![dev], &opts()).await.unwrap();
        let a = pool.audit();
        assert!(
            a.owned_twice.is_empty() && a.used_not_owned.is_empty() && a.problems.is_empty(),
            "{a:?}"
        );
        let v = pool.volume("v").unwrap();
        let offsets: Vec<u64> = durable.keys().chain(later.keys()).copied().collect();
        for off in offsets {
            let mut got = vec![0; BLOCK];
            v.read(off, &mut got).await.unwrap();
            let mut ok: Vec<Vec<u8>> =
                vec![durable.get(&off).map_or(vec![0; BLOCK], |s| pattern(*s))];
            ok.extend(later.get(&off).into_iter().flatten().map(|s| pattern(*s)));
            assert!(
                ok.contains(&got),
                "offset {off}: flushed write lost (durable seq {:?})",
                durable.get(&off)
            );
        }
        assert!(
            v.last_durable_io_seq().unwrap() >= flushed,
            "durable io_seq {} below the last flush's {flushed}",
            v.last_durable_io_seq().unwrap()
        );
        // Per chunk: its io_seq comes back at least as the last flushed
        // write into it left it, and every write into it up to that io_seq
        // reads back (or a later one).
        let mut chunks: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        for &(seq, off) in writes {
            chunks.entry(off / CHUNK).or_default().push((seq, off));
        }
        for (chunk, ws) in &chunks {
            let seq = v.live_chunk_io_seq(chunk * CHUNK).unwrap();
            let floor = ws.iter().map(|w| w.0).filter(|s| *s <= flushed).max();
            assert!(
                floor.is_none_or(|f| seq >= f),
                "chunk {chunk}: io_seq {seq} below its last flushed write {floor:?} \
                 (an overwrite's record lost)"
            );
            for off in ws
                .iter()
                .map(|w| w.1)
                .collect::<std::collections::BTreeSet<_>>()
            {
                let claimed = ws
                    .iter()
                    .filter(|w| w.1 == off && w.0 <= seq)
                    .map(|w| w.0)
                    .max();
                let Some(claimed) = claimed else { continue };
                let mut got = vec![0; BLOCK];
                v.read(off, &mut got).await.unwrap();
                let ok = ws
                    .iter()
                    .any(|w| w.1 == off && w.0 >= claimed && pattern(w.0) == got);
                assert!(
                    ok,
                    "chunk {chunk} claims io_seq {seq}: offset {off} lacks write {claimed}"
                );
            }
        }
        let mut base = vec![1; BLOCK];
        v.read_snapshot("base", 0, &mut base).await.unwrap();
        assert_eq!(base, vec![0; BLOCK]);
    });
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    parent();
    println!("test pool_kill ... ok");
    // The libtest summary line, so scripts/test.sh counts this test too (a
    // failure panics above and exits non-zero before this line).
    println!("\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
}
