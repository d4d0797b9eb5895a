//! 4 KiB random writes and reads at queue depth 32 on a 1 GiB file through
//! each IO backend, next to fio (io_uring, O_DIRECT) on the same file in the
//! same run. The goal: engine IOPS >= 0.8 x fio.
//!
//! `cargo bench -p cstor-engine --bench device`. Environment:
//! `CSTOR_BENCH_DIR` (where the 1 GiB file goes; default the target tmp
//! dir), `CSTOR_BENCH_SECS` (seconds per comparison run, default 5),
//! `CSTOR_BENCH_ROUNDS` (comparison rounds, best kept, default 2).
//! fio is skipped with a message when it is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/fio.rs"]
mod fio;

use fio::{fio_iops, Rw};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use cstor_engine::io::{AlignedBuf, Backend, Device, DeviceOptions, FileDevice};

const FILE_LEN: u64 = 1 << 30;
const BLOCK: usize = 4096;
const QUEUE_DEPTH: usize = 32;
const FILL_CHUNK: usize = 1 << 20;

fn backends() -> Vec<(&'static str, Backend)> {
    let mut all = Vec::new();
    match Backend::uring() {
        Ok(b) => all.push(("io_uring", b)),
        Err(e) => eprintln!("io_uring backend skipped: {e}"),
    }
    all.push(("threads", Backend::threads().unwrap()));
    all
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Creates the file and writes all of it once, so no test measures extent
/// allocation.
fn prepare(path: &Path) {
    let _ = std::fs::remove_file(path);
    let dev = Backend::threads()
        .unwrap()
        .open(path, &DeviceOptions::create(FILE_LEN))
        .unwrap();
    runtime().block_on(async {
        let mut buf = AlignedBuf::zeroed(FILL_CHUNK);
        buf.as_mut_slice().fill(0x5a);
        for i in 0..FILE_LEN / FILL_CHUNK as u64 {
            let (r, b) = dev.write_at(buf, i * FILL_CHUNK as u64).await;
            r.unwrap();
            buf = b;
        }
        dev.sync_data().await.unwrap();
    });
}

/// Runs `QUEUE_DEPTH` workers doing 4 KiB random IO until `ops` are done
/// or `deadline` passes; returns the ops done and the time taken.
async fn drive(
    dev: Arc<FileDevice>,
    rw: Rw,
    ops: u64,
    deadline: Option<Instant>,
) -> (u64, Duration) {
    let left = Arc::new(AtomicU64::new(ops));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..QUEUE_DEPTH as u64 {
        let dev = Arc::clone(&dev);
        let left = Arc::clone(&left);
        let done = Arc::clone(&done);
        workers.spawn_local(async move {
            let mut x = (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut buf = AlignedBuf::zeroed(BLOCK);
            buf.as_mut_slice().fill(w as u8);
            let blocks = FILE_LEN / BLOCK as u64;
            loop {
                let took_one = left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                if !took_one || deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let offset = (x % blocks) * BLOCK as u64;
                let (r, b) = match rw {
                    Rw::RandWrite => dev.write_at(buf, offset).await,
                    Rw::RandRead => dev.read_at(buf, offset).await,
                };
                r.unwrap();
                buf = b;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    (done.load(Ordering::Relaxed), start.elapsed())
}

fn engine_iops(backend: &Backend, path: &Path, rw: Rw, secs: u64) -> f64 {
    let dev = backend.open(path, &DeviceOptions::existing()).unwrap();
    assert!(
        dev.direct_io(),
        "bench file must take O_DIRECT: {}",
        dev.describe()
    );
    let local = tokio::task::LocalSet::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (ops, took) = local.block_on(&runtime(), drive(dev, rw, u64::MAX, Some(deadline)));
    ops as f64 / took.as_secs_f64()
}

/// Best of `rounds` for fio and for each backend, interleaved, so that a
/// burst of load from elsewhere on the machine hits every contender.
fn compare(path: &Path, secs: u64, rounds: u32) {
    println!(
        "\n4 KiB random IO, QD{QUEUE_DEPTH}, O_DIRECT, 1 GiB file, best of {rounds} x {secs} s"
    );
    println!(
        "{:<10} {:<9} {:>10} {:>10} {:>7}",
        "rw", "backend", "IOPS", "fio IOPS", "ratio"
    );
    let backends = backends();
    for rw in [Rw::RandWrite, Rw::RandRead] {
        let mut fio: Option<f64> = None;
        let mut best = vec![0.0f64; backends.len()];
        for _ in 0..rounds {
            if let Some(f) = fio_iops(path, rw, secs, 0, FILE_LEN) {
                fio = Some(fio.map_or(f, |b| b.max(f)));
            }
            for (i, (_, backend)) in backends.iter().enumerate() {
                let iops = engine_iops(backend, path, rw, secs);
                if let Some(b) = best.get_mut(i) {
                    *b = b.max(iops);
                }
            }
        }
        for ((name, _), iops) in backends.iter().zip(best) {
            let (fio_text, ratio) = match fio {
                Some(f) => (format!("{f:.0}"), format!("{:.2}", iops / f)),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:<10} {:<9} {:>10.0} {:>10} {:>7}",
                rw.fio_name(),
                name,
                iops,
                fio_text,
                ratio
            );
        }
    }
    println!();
}

fn criterion_benches(path: &Path) {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("device_4k_qd32");
    group.throughput(Throughput::Elements(1));
    for (name, backend) in backends() {
        for rw in [Rw::RandWrite, Rw::RandRead] {
            let dev = backend.open(path, &DeviceOptions::existing()).unwrap();
            group.bench_function(format!("{}/{name}", rw.fio_name()), |b| {
                b.iter_custom(|iters| {
                    let local = tokio::task::LocalSet::new();
                    let (_, took) =
                        local.block_on(&runtime(), drive(Arc::clone(&dev), rw, iters, None));
                    took
                });
            });
        }
    }
    group.finish();
    c.final_summary();
}

fn main() {
    let dir = std::env::var_os("CSTOR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let secs = std::env::var("CSTOR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rounds = std::env::var("CSTOR_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let path = dir.join("cstor-device-bench.img");
    prepare(&path);
    compare(&path, secs, rounds);
    criterion_benches(&path);
    let _ = std::fs::remove_file(&path);
}
