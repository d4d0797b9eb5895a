//! Pool benches: 4 KiB random writes and reads at queue depth 32 through the
//! engine on a 1 GiB file, beside fio (io_uring, O_DIRECT) on a file of the
//! same size on the same filesystem (the same range as the pool's data
//! area: fio writing into the pool's own file would be rot its block
//! checksums catch) in the same run, alternating, ratio printed (goal:
//! engine ≥ 0.8 × fio). The writes are overwrites of allocated chunks, over
//! the whole volume and over a 64 MiB hot set (1,024 chunks, where
//! overwrites of one chunk between two commits are many); for each the
//! journal bytes, records and checkpoint bytes per write are printed (the
//! pool's counters, commits by the default timer). And snapshot
//! create time on a 1 GiB and a 1 TiB thin volume holding data (goal: the
//! same for both). Prints the in-memory metadata bytes per TiB allocated.
//! Every IOPS row also runs on a second pool, on a second file, created
//! without block checksums (FORMAT.md "Block checksums"), in the same
//! alternation: the checksums' cost is the ratio of the two (goal: ≤ 5 %).
//!
//! `cargo bench -p cstor-engine --bench pool`. Environment: `CSTOR_BENCH_DIR`
//! (where the file goes; default the target tmp dir), `CSTOR_BENCH_SECS`
//! (seconds per IOPS comparison run, default 5), `CSTOR_IO_BACKEND`.
//! fio is skipped with a message when it is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/fio.rs"]
mod fio;

use fio::{fio_iops, Rw};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use cstor_engine::io::{test_backend, DeviceOptions};
use cstor_engine::layout::plan_meta;
use cstor_engine::{DeviceRef, Pool, PoolOptions, Provisioning, Volume};

const FILE_LEN: u64 = 1 << 30;
const VOL_LEN: u64 = 768 << 20;
const BLOCK: usize = 4096;
const QUEUE_DEPTH: usize = 32;
/// Alternating engine / fio runs per comparison; the best of each counts
/// (the machine is shared: the best run is the least disturbed one).
const ROUNDS: usize = 2;
/// Chunks holding data in each snapshot-bench volume (both fit the file).
const DATA_CHUNKS: u64 = 4096;
/// The hot set of the second random-write row.
const HOT_LEN: u64 = 64 << 20;

/// One row of the IOPS table.
#[derive(Clone, Copy)]
struct Row {
    name: &'static str,
    rw: Rw,
    span_bytes: u64,
}

const ROWS: [Row; 3] = [
    Row {
        name: "randwrite",
        rw: Rw::RandWrite,
        span_bytes: VOL_LEN,
    },
    Row {
        name: "randwrite-64M",
        rw: Rw::RandWrite,
        span_bytes: HOT_LEN,
    },
    Row {
        name: "randread",
        rw: Rw::RandRead,
        span_bytes: VOL_LEN,
    },
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bench_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("CSTOR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(FILE_LEN).unwrap();
    // fio reads need allocated blocks: fill the file once.
    let status = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "conv=notrunc", "status=none"])
        .arg(format!("of={}", path.display()))
        .arg(format!("count={}", FILE_LEN >> 20))
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("dd failed: fio reads may hit holes");
    }
    path
}

/// `QUEUE_DEPTH` tasks doing random 4 KiB IOs over the first `span_bytes`
/// of the volume until `ops` are done or the deadline passes; returns (ops
/// done, elapsed).
async fn drive(
    v: &Arc<Volume>,
    rw: Rw,
    span_bytes: u64,
    ops: Option<u64>,
    until: Option<Instant>,
) -> (u64, Duration) {
    let done = Arc::new(AtomicU64::new(0));
    let blocks = span_bytes / BLOCK as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..QUEUE_DEPTH {
        let v = v.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
            let mut buf = vec![t as u8; BLOCK];
            loop {
                let n = done.fetch_add(1, Ordering::Relaxed);
                if ops.is_some_and(|o| n >= o) || until.is_some_and(|u| Instant::now() >= u) {
                    break;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % blocks) * BLOCK as u64;
                match rw {
                    Rw::RandWrite => v.write(off, &buf, n + 1).await.unwrap(),
                    Rw::RandRead => v.read(off, &mut buf).await.unwrap(),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = done
        .load(Ordering::Relaxed)
        .saturating_sub(QUEUE_DEPTH as u64);
    (ops.map_or(n, |o| o.min(n)), start.elapsed())
}

/// Opens the bench file, waiting while the backend still releases a
/// previous handle on it (its flock goes with the last reference).
fn open_file(path: &Path) -> DeviceRef {
    for _ in 0..400 {
        match test_backend().open(path, &DeviceOptions::existing()) {
            Ok(d) => return d,
            Err(e) if e.to_string().contains("in use") => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => panic!("open {}: {e}", path.display()),
        }
    }
    panic!("{} stayed in use", path.display());
}

async fn make_pool(path: &Path, block_checksums: bool) -> (Pool, Arc<Volume>) {
    let dev = open_file(path);
    let options = PoolOptions {
        block_checksums,
        ..PoolOptions::default()
    };
    let pool = Pool::create(vec![dev], &options).await.unwrap();
    let v = pool
        .create_volume("bench", VOL_LEN, 4096, Provisioning::Thin)
        .await
        .unwrap();
    // Allocate every chunk so the write bench measures steady-state
    // overwrites and reads hit data.
    let mb = vec![0x5Au8; 1 << 20];
    for i in 0..VOL_LEN >> 20 {
        v.write(i << 20, &mb, 1).await.unwrap();
    }
    v.flush().await.unwrap();
    (pool, v)
}

fn main() {
    let secs: u64 = std::env::var("CSTOR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let path = bench_file("cstor-pool-bench.img");
    let fio_path = bench_file("cstor-pool-bench-fio.img");
    let plain_path = bench_file("cstor-pool-bench-nosums.img");
    let rt = runtime();
    let (pool, v) = rt.block_on(make_pool(&path, true));
    let (plain_pool, plain) = rt.block_on(make_pool(&plain_path, false));
    assert!(pool.stats().integrity.enabled && !plain_pool.stats().integrity.enabled);
    let data_offset = plan_meta(&[FILE_LEN], pool.chunk_bytes(), None, None)
        .unwrap()
        .data_offset;
    println!(
        "\n{:<14} {:>12} {:>12} {:>8} {:>13} {:>11} {:>13} {:>14} {:>9}   (best of {ROUNDS} alternating runs of {secs} s each)",
        "rw", "engine IOPS", "fio IOPS", "ratio", "journal B/op", "records/op", "ckpt B/op", "no-sums IOPS", "sums/no"
    );
    for row in ROWS {
        let (mut engine, mut fio, mut unsummed) = (0f64, None::<f64>, 0f64);
        let (mut ops_total, mut journal_bytes, mut journal_records, mut ckpt_bytes) =
            (0u64, 0u64, 0u64, 0u64);
        for _ in 0..ROUNDS {
            if let Some(f) = fio_iops(&fio_path, row.rw, secs, data_offset, row.span_bytes) {
                fio = Some(fio.map_or(f, |b| b.max(f)));
            }
            let until = Instant::now() + Duration::from_secs(secs);
            let before = pool.stats();
            let (ops, elapsed) = rt.block_on(drive(&v, row.rw, row.span_bytes, None, Some(until)));
            // What the run left to commit counts too.
            rt.block_on(pool.flush()).unwrap();
            let after = pool.stats();
            ops_total += ops;
            journal_bytes += after.journal_bytes - before.journal_bytes;
            journal_records += after.journal_records - before.journal_records;
            ckpt_bytes += after.checkpoint_bytes - before.checkpoint_bytes;
            engine = engine.max(ops as f64 / elapsed.as_secs_f64());
            let until = Instant::now() + Duration::from_secs(secs);
            let (ops, elapsed) =
                rt.block_on(drive(&plain, row.rw, row.span_bytes, None, Some(until)));
            rt.block_on(plain_pool.flush()).unwrap();
            unsummed = unsummed.max(ops as f64 / elapsed.as_secs_f64());
        }
        let (fio_text, ratio) = match fio {
            Some(f) if f > 0.0 => (format!("{f:.0}"), format!("{:.2}", engine / f)),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let per_op = |n: u64| n as f64 / ops_total.max(1) as f64;
        println!(
            "{:<14} {:>12.0} {:>12} {:>8} {:>13.1} {:>11.3} {:>13.1} {:>14.0} {:>9.3}",
            row.name,
            engine,
            fio_text,
            ratio,
            per_op(journal_bytes),
            per_op(journal_records),
            per_op(ckpt_bytes),
            unsummed,
            engine / unsummed.max(1.0)
        );
    }
    let st = pool.stats().integrity;
    println!(
        "checksums: {} bytes on disk for {} bytes of pool ({:.3} %), {} bytes in memory, {} bitmap writes",
        st.area_bytes,
        pool.stats().total_bytes,
        st.area_bytes as f64 * 100.0 / pool.stats().total_bytes.max(1) as f64,
        st.memory_bytes,
        st.bitmap_writes
    );
    drop(plain);
    rt.block_on(plain_pool.close()).unwrap();
    drop(plain_pool);
    let _ = std::fs::remove_file(&plain_path);
    let _ = std::fs::remove_file(&fio_path);
    let s = pool.stats();
    println!(
        "metadata in memory: {} bytes for {} allocated bytes = {} bytes per TiB ({:.4} %)\n",
        s.metadata_memory_bytes,
        s.used_bytes,
        s.metadata_bytes_per_tib,
        s.metadata_bytes_per_tib as f64 * 100.0 / (1u64 << 40) as f64
    );

    let mut c = Criterion::default().configure_from_args().sample_size(10);
    {
        let mut g = c.benchmark_group("pool_4k_qd32");
        g.throughput(Throughput::Elements(1));
        for row in ROWS {
            g.bench_function(row.name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(drive(&v, row.rw, row.span_bytes, Some(iters), None))
                        .1
                });
            });
        }
        g.finish();
    }
    drop(v);
    rt.block_on(pool.close()).unwrap();
    drop(pool);
    // Let the runtime retire the aborted commit timer (it may hold the pool).
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });

    // Snapshot create on 1 GiB and 1 TiB thin volumes holding data.
    let dev = open_file(&path);
    let pool = rt
        .block_on(Pool::create(vec![dev], &PoolOptions::default()))
        .unwrap();
    let chunk = u64::from(pool.chunk_bytes());
    let mut g = c.benchmark_group("snapshot_create");
    for (name, size) in [("1GiB", 1u64 << 30), ("1TiB", 1u64 << 40)] {
        let stride = (size / DATA_CHUNKS).max(chunk);
        let v = rt
            .block_on(pool.create_volume(name, size, 4096, Provisioning::Thin))
            .unwrap();
        // The same amount of data in both volumes, spread over each.
        rt.block_on(async {
            let mut off = 0;
            while off < size {
                v.write(off, &[1u8; BLOCK], 1).await.unwrap();
                off += stride;
            }
            v.flush().await.unwrap();
        });
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let s = format!("s{n}");
                    let t = Instant::now();
                    rt.block_on(v.create_snapshot(&s)).unwrap();
                    total += t.elapsed();
                    rt.block_on(v.delete_snapshot(&s)).unwrap();
                }
                total
            });
        });
    }
    g.finish();
    c.final_summary();
    drop(pool);
    let _ = std::fs::remove_file(&path);
}
