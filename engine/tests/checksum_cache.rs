//! Block checksums through a checksum-page cache far smaller than the
//! pool (`PoolOptions::checksum_cache_bytes` of one page: 4 KiB of
//! checksums cover 4 MiB of data, the pools here hold about ten times
//! that). Pages are evicted and read back all the time; reads must never
//! see a false checksum error and data must come back as written — while
//! concurrent writers and readers race the evictions, across a reopen, and
//! after a power cut at a random point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use cstor_engine::io::{CrashDevice, CrashPolicy, MemDevice};
use cstor_engine::{DeviceRef, Pool, PoolOptions, Provisioning, Volume};

const DEV_BYTES: usize = 48 << 20;
const VOL_BYTES: u64 = 40 << 20;
const BLOCK: u64 = 4096;
const BLOCKS: u64 = VOL_BYTES / BLOCK;
/// Writers (and as many readers) running at once.
const TASKS: u64 = 8;

fn opts() -> PoolOptions {
    PoolOptions {
        commit_interval: None,
        checksum_cache_bytes: 4096,
        ..PoolOptions::default()
    }
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The content of block `b` at version `v` (0: never written, zeros).
fn content(b: u64, v: u64) -> Vec<u8> {
    if v == 0 {
        return vec![0; BLOCK as usize];
    }
    (0..BLOCK)
        .map(|i| (b.wrapping_mul(131) ^ v.wrapping_mul(17) ^ (i / 8)) as u8)
        .collect()
}

/// Writes of 1 to 4 blocks by `TASKS` writers, each in its own stripe of
/// the volume, while as many readers check blocks no writer touches any
/// more; a flush every 64 writes. Returns each block's last version.
async fn churn(v: &Arc<Volume>, seed: u64, writes_per_task: u64) -> HashMap<u64, u64> {
    let stripe = BLOCKS / TASKS;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let v = Arc::clone(v);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut last: HashMap<u64, u64> = HashMap::new();
            for k in 0..writes_per_task {
                let n = 1 + rng.next() % 4;
                let b = t * stripe + rng.next() % (stripe - n);
                let version = k + 1;
                let mut buf = Vec::new();
                for i in 0..n {
                    buf.extend(content(b + i, version));
                    last.insert(b + i, version);
                }
                let io_seq = t * writes_per_task + version;
                v.write(b * BLOCK, &buf, io_seq).await.unwrap();
                if k % 64 == 63 {
                    v.flush().await.unwrap();
                }
                // Read back one block written before: its page may have
                // been evicted meanwhile.
                let keys: Vec<u64> = last.keys().copied().collect();
                let r = keys[(rng.next() % keys.len() as u64) as usize];
                let mut out = vec![0u8; BLOCK as usize];
                v.read(r * BLOCK, &mut out)
                    .await
                    .unwrap_or_else(|e| panic!("task {t}: read of block {r} failed: {e}"));
                assert!(out == content(r, last[&r]), "task {t}: block {r} differs");
            }
            last
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Reads every block of the volume and compares it with `last` (blocks
/// absent there were never written and read as zeros).
async fn check_all(v: &Volume, last: &HashMap<u64, u64>, what: &str) {
    let mut out = vec![0u8; (BLOCK * 256) as usize];
    for first in (0..BLOCKS).step_by(256) {
        v.read(first * BLOCK, &mut out)
            .await
            .unwrap_or_else(|e| panic!("{what}: read at block {first} failed: {e}"));
        for (i, got) in out.chunks(BLOCK as usize).enumerate() {
            let b = first + i as u64;
            let want = content(b, last.get(&b).copied().unwrap_or(0));
            assert!(got == want, "{what}: block {b} differs");
        }
    }
}

#[tokio::test]
async fn a_one_page_cache_evicts_and_reloads_while_writers_and_readers_race() {
    let dev: DeviceRef = Arc::new(MemDevice::new(DEV_BYTES));
    let pool = Pool::create(vec![Arc::clone(&dev)], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", VOL_BYTES, BLOCK as u32, Provisioning::Thin)
        .await
        .unwrap();
    let last = churn(&v, 7, 300).await;
    v.flush().await.unwrap();
    check_all(&v, &last, "before reopen").await;
    let s = pool.stats().integrity;
    assert!(s.page_evictions > 0 && s.page_loads > 0, "{s:?}");
    assert_eq!(s.checksum_errors, 0);
    assert!(s.cache_pages <= s.cache_limit_pages, "{s:?}");
    assert!(s.memory_bytes < 64 * 1024, "{s:?}");
    drop(v);
    pool.close().await.unwrap();

    let pool = Pool::open(vec![dev], &opts()).await.unwrap();
    let v = pool.volume("v").unwrap();
    check_all(&v, &last, "after reopen").await;
    let s = pool.stats().integrity;
    assert!(s.page_loads >= 9, "every page read back: {s:?}");
    assert_eq!(s.checksum_errors, 0);
}

/// Power cuts at random points of a churn over a one-page cache: after
/// reopening, every block reads without a checksum error, and the blocks
/// no write touched after the last flush hold their flushed content.
#[tokio::test]
async fn power_cuts_under_a_one_page_cache_leave_no_false_checksum_error() {
    for seed in 1..=4u64 {
        let dev = Arc::new(CrashDevice::new(DEV_BYTES));
        let pool = Pool::create(vec![Arc::clone(&dev) as DeviceRef], &opts())
            .await
            .unwrap();
        let v = pool
            .create_volume("v", VOL_BYTES, BLOCK as u32, Provisioning::Thin)
            .await
            .unwrap();
        let flushed = churn(&v, seed, 120).await;
        v.flush().await.unwrap();
        // Overwrite more, and cut the power somewhere in it.
        dev.cut_power_after(dev.op_count() + 200 + seed * 97);
        let mut rng = Rng(seed);
        let mut touched = Vec::new();
        for k in 0..400u64 {
            let b = rng.next() % BLOCKS;
            touched.push(b);
            if v.write(b * BLOCK, &content(b, 1000 + k), 1_000_000 + k)
                .await
                .is_err()
            {
                break;
            }
        }
        drop(v);
        drop(pool);
        let image = dev.crash_image(CrashPolicy::torn(seed));
        let dev: DeviceRef = Arc::new(MemDevice::from_image(image, 4096).unwrap());
        let pool = Pool::open(vec![dev], &opts()).await.unwrap();
        let v = pool.volume("v").unwrap();
        let what = format!("seed {seed}");
        let mut out = vec![0u8; BLOCK as usize];
        for b in 0..BLOCKS {
            v.read(b * BLOCK, &mut out)
                .await
                .unwrap_or_else(|e| panic!("{what}: block {b}: {e}"));
            if !touched.contains(&b) {
                let want = content(b, flushed.get(&b).copied().unwrap_or(0));
                assert!(out == want, "{what}: flushed block {b} differs");
            }
        }
        assert_eq!(pool.stats().integrity.checksum_errors, 0, "{what}");
    }
}
