//! A pool on block devices: two loop devices (root only; CI runs as root),
//! one with 4096-byte logical sectors so 512-byte volume blocks take the
//! read-modify-write path under O_DIRECT. Create on one, grow the pool with
//! the other, write across both, close, reopen (devices given in the other
//! order) and read everything back, on the backend `CSTOR_IO_BACKEND` picks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use cstor_engine::io::{test_backend, DeviceOptions};
use cstor_engine::{DeviceRef, Pool, PoolOptions, Provisioning};
use cstor_testkit::{is_root, skip, Need};

const LOOP_BYTES: u64 = 48 << 20;

/// A loop device over a sparse file, detached on drop.
struct LoopDev {
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    fn attach(sector_bytes: u32) -> Option<Self> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let file = dir.path().join("pool.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(LOOP_BYTES)
            .unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show", "--sector-size", &sector_bytes.to_string()])
            .arg(&file)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                dev: PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
                _dir: dir,
            }),
            Ok(o) => {
                skip(
                    Need::LoopDevice,
                    format!("losetup failed: {}", String::from_utf8_lossy(&o.stderr)),
                );
                None
            }
            Err(e) => {
                skip(Need::LoopDevice, format!("cannot run losetup: {e}"));
                None
            }
        }
    }

    /// Opens the device, waiting out a short-lived holder (udev probing a
    /// new loop device, or the previous pool's backend releasing it).
    fn open(&self) -> DeviceRef {
        for _ in 0..400 {
            match test_backend().open(&self.dev, &DeviceOptions::existing()) {
                Ok(d) => return d,
                Err(e) if e.to_string().contains("in use") => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(e) => panic!("open {}: {e}", self.dev.display()),
            }
        }
        panic!("{} stayed in use", self.dev.display());
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize * 131 + i / 512) as u8)
        .collect()
}

#[tokio::test]
async fn pool_on_loop_devices_grows_and_reopens() {
    if !is_root() {
        skip(Need::Root, "loop devices need root");
        return;
    }
    let (Some(a), Some(b)) = (LoopDev::attach(4096), LoopDev::attach(512)) else {
        return;
    };
    let opts = PoolOptions {
        commit_interval: None,
        ..PoolOptions::default()
    };
    let chunk = u64::from(opts.chunk_bytes);
    {
        let pool = Pool::create(vec![a.open()], &opts).await.unwrap();
        pool.add_device(b.open()).await.unwrap();
        let v = pool
            .create_volume("v", 256 << 20, 512, Provisioning::Thin)
            .await
            .unwrap();
        // Enough chunks to reach the second device, plus 512-byte writes.
        let chunks = pool.stats().total_bytes / chunk * 3 / 4;
        for c in 0..chunks {
            v.write(c * chunk + 512, &pattern(c, 1024), c + 1)
                .await
                .unwrap();
        }
        v.create_snapshot("s").await.unwrap();
        v.unmap(0, chunk, chunks + 1).await.unwrap();
        pool.close().await.unwrap();
    }
    let pool = Pool::open(vec![b.open(), a.open()], &opts).await.unwrap();
    let v = pool.volume("v").unwrap();
    let chunks = pool.stats().total_bytes / chunk * 3 / 4;
    let mut got = vec![0; 1024];
    v.read(512, &mut got).await.unwrap();
    assert_eq!(got, vec![0; 1024], "unmapped");
    for c in 1..chunks {
        v.read(c * chunk + 512, &mut got).await.unwrap();
        assert_eq!(got, pattern(c, 1024), "chunk {c}");
    }
    v.read_snapshot("s", 512, &mut got).await.unwrap();
    assert_eq!(got, pattern(0, 1024));
    let audit = pool.audit();
    assert!(
        audit.used_not_owned.is_empty() && audit.owned_twice.is_empty(),
        "{audit:?}"
    );
}
