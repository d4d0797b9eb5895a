//! The device contract (see `engine/src/io/mod.rs`), checked on every
//! backend: memory, the thread pool and io_uring on files (O_DIRECT and
//! buffered), and the fault-injection and crash wrappers when idle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::ErrorKind;
use std::sync::Arc;

use cstor_engine::io::{
    AlignedBuf, Backend, CrashDevice, Device, DeviceOptions, DirectIo, FaultyDevice, FileDevice,
    MemDevice,
};
use cstor_testkit::{skip, Need};
use tempfile::TempDir;

const DEV_LEN: u64 = 4 << 20;
const BLOCK: usize = 4096;

/// A device under test and what must outlive it.
struct Subject {
    dev: Arc<dyn Device>,
    file: Option<(Arc<FileDevice>, TempDir)>,
}

fn mem() -> Option<Subject> {
    Some(Subject {
        dev: Arc::new(MemDevice::new(DEV_LEN as usize)),
        file: None,
    })
}

fn crash() -> Option<Subject> {
    Some(Subject {
        dev: Arc::new(CrashDevice::new(DEV_LEN as usize)),
        file: None,
    })
}

fn faulty() -> Option<Subject> {
    Some(Subject {
        dev: Arc::new(FaultyDevice::new(
            MemDevice::with_alignment(DEV_LEN as usize, 512).unwrap(),
        )),
        file: None,
    })
}

fn file(backend: Option<Backend>, direct: DirectIo) -> Option<Subject> {
    let Some(backend) = backend else {
        skip(Need::IoUring, "io_uring unavailable in this process");
        return None;
    };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("dev");
    let dev = backend
        .open(&path, &DeviceOptions::create(DEV_LEN).with_direct(direct))
        .unwrap();
    Some(Subject {
        dev: dev.clone(),
        file: Some((dev, dir)),
    })
}

fn threads() -> Option<Backend> {
    Some(Backend::threads().unwrap())
}

fn uring() -> Option<Backend> {
    Backend::uring().ok()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn write(dev: &dyn Device, data: &[u8], offset: u64) {
    let (r, _) = dev.write_at(AlignedBuf::from_slice(data), offset).await;
    r.unwrap();
}

async fn read(dev: &dyn Device, len: usize, offset: u64) -> Vec<u8> {
    let (r, buf) = dev.read_at(AlignedBuf::zeroed(len), offset).await;
    r.unwrap();
    buf.as_slice().to_vec()
}

async fn round_trip(s: Subject) {
    let dev = &*s.dev;
    assert_eq!(dev.len_bytes(), DEV_LEN);
    for (i, (offset, len)) in [(0u64, BLOCK), (8192, 3 * BLOCK), (DEV_LEN - 65536, 65536)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u64, len);
        write(dev, &data, offset).await;
        assert_eq!(read(dev, len, offset).await, data);
    }
    // Untouched space reads as zeros.
    assert_eq!(read(dev, BLOCK, 1 << 20).await, vec![0; BLOCK]);
}

async fn rejects_misaligned_and_out_of_range(s: Subject) {
    let dev = &*s.dev;
    let align = dev.alignment() as u64;
    if align > 1 {
        let (r, buf) = dev.read_at(AlignedBuf::zeroed(BLOCK), 1).await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(buf.len(), BLOCK, "the buffer comes back");
        let (r, _) = dev.write_at(AlignedBuf::zeroed(BLOCK + 1), 0).await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
        let r = dev.discard(align / 2, align).await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
    }
    let (r, _) = dev.read_at(AlignedBuf::zeroed(BLOCK), DEV_LEN).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
    let (r, _) = dev
        .write_at(AlignedBuf::zeroed(2 * BLOCK), DEV_LEN - BLOCK as u64)
        .await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
    let r = dev.discard(DEV_LEN - 4096, 8192).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
    // Nothing was written by the refused requests.
    assert_eq!(
        read(dev, BLOCK, DEV_LEN - BLOCK as u64).await,
        vec![0; BLOCK]
    );
}

async fn sync_succeeds_and_keeps_data(s: Subject) {
    let dev = &*s.dev;
    let data = pattern(7, BLOCK);
    write(dev, &data, 4096).await;
    dev.sync_data().await.unwrap();
    assert_eq!(read(dev, BLOCK, 4096).await, data);
}

async fn discard_reads_zeros_or_old(s: Subject) {
    let dev = &*s.dev;
    let old = pattern(3, 16 * BLOCK);
    write(dev, &old, 65536).await;
    dev.discard(65536 + 4096, 8 * BLOCK as u64).await.unwrap();
    let after = read(dev, 16 * BLOCK, 65536).await;
    assert_eq!(after[..BLOCK], old[..BLOCK], "before the range is kept");
    assert_eq!(
        after[9 * BLOCK..],
        old[9 * BLOCK..],
        "after the range is kept"
    );
    for (i, block) in after[BLOCK..9 * BLOCK].chunks(BLOCK).enumerate() {
        let was = &old[(i + 1) * BLOCK..(i + 2) * BLOCK];
        assert!(
            block == was || block.iter().all(|&b| b == 0),
            "block {i} is neither zeros nor old"
        );
    }
}

async fn many_concurrent_ios_complete(s: Subject) {
    const IN_FLIGHT: usize = 256;
    let dev = &s.dev;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..IN_FLIGHT {
        let fut = dev.write_at(
            AlignedBuf::from_slice(&pattern(i as u64 + 100, BLOCK)),
            (i * BLOCK) as u64,
        );
        tasks.spawn(fut);
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().0.unwrap();
    }
    let futs: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            (
                i,
                dev.read_at(AlignedBuf::zeroed(BLOCK), (i * BLOCK) as u64),
            )
        })
        .collect();
    let mut reads = tokio::task::JoinSet::new();
    for (i, fut) in futs {
        reads.spawn(async move { (i, fut.await) });
    }
    while let Some(done) = reads.join_next().await {
        let (i, (r, buf)) = done.unwrap();
        r.unwrap();
        assert_eq!(
            buf.as_slice(),
            &pattern(i as u64 + 100, BLOCK)[..],
            "block {i}"
        );
    }
}

/// A file shrunk behind the device's back: the read past its end fails
/// instead of returning zeros.
async fn short_file_read_is_an_error(s: Subject) {
    let Some((dev, dir)) = &s.file else {
        return;
    };
    write(&**dev, &pattern(1, BLOCK), 0).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("dev"))
        .unwrap()
        .set_len(2 * BLOCK as u64)
        .unwrap();
    let (r, _) = dev
        .read_at(AlignedBuf::zeroed(2 * BLOCK), BLOCK as u64)
        .await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::UnexpectedEof);
    let (r, _) = dev
        .read_at(AlignedBuf::zeroed(BLOCK), 8 * BLOCK as u64)
        .await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::UnexpectedEof);
    assert_eq!(read(&**dev, BLOCK, 0).await, pattern(1, BLOCK));
}

macro_rules! conformance {
    ($module:ident, $subject:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn round_trip() {
                if let Some(s) = $subject {
                    super::round_trip(s).await;
                }
            }
            #[tokio::test]
            async fn rejects_misaligned_and_out_of_range() {
                if let Some(s) = $subject {
                    super::rejects_misaligned_and_out_of_range(s).await;
                }
            }
            #[tokio::test]
            async fn sync_succeeds_and_keeps_data() {
                if let Some(s) = $subject {
                    super::sync_succeeds_and_keeps_data(s).await;
                }
            }
            #[tokio::test]
            async fn discard_reads_zeros_or_old() {
                if let Some(s) = $subject {
                    super::discard_reads_zeros_or_old(s).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn many_concurrent_ios_complete() {
                if let Some(s) = $subject {
                    super::many_concurrent_ios_complete(s).await;
                }
            }
            #[tokio::test]
            async fn short_file_read_is_an_error() {
                if let Some(s) = $subject {
                    super::short_file_read_is_an_error(s).await;
                }
            }
        }
    };
}

conformance!(mem_device, mem());
conformance!(crash_device, crash());
conformance!(faulty_device_unarmed, faulty());
conformance!(threads_direct, file(threads(), DirectIo::Auto));
conformance!(threads_buffered, file(threads(), DirectIo::Off));
conformance!(uring_direct, file(uring(), DirectIo::Auto));
conformance!(uring_buffered, file(uring(), DirectIo::Off));
