//! Block-device backing on a loop device (root only; CI runs as root):
//! size and logical block size detection, O_DIRECT IO, discard, and O_EXCL
//! refusal of a second open, on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cstor_engine::io::{AlignedBuf, Backend, Device, DeviceKind, DeviceOptions, IoError};
use cstor_testkit::{is_root, skip, Need};

const LOOP_LEN: u64 = 32 << 20;

/// A loop device over a file; detached on drop, even when a test fails.
struct LoopDev {
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    fn attach(sector_size: u32) -> Option<Self> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let file = dir.path().join("backing.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(LOOP_LEN)
            .unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show", "--sector-size", &sector_size.to_string()])
            .arg(&file)
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
                Some(Self {
                    dev: PathBuf::from(dev),
                    _dir: dir,
                })
            }
            Ok(out) => {
                skip(
                    Need::LoopDevice,
                    format!("losetup failed: {}", String::from_utf8_lossy(&out.stderr)),
                );
                None
            }
            Err(e) => {
                skip(Need::LoopDevice, format!("cannot run losetup: {e}"));
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.dev
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::threads().unwrap()];
    match Backend::uring() {
        Ok(b) => all.push(b),
        Err(e) => skip(Need::IoUring, format!("the io_uring half: {e}")),
    }
    all
}

async fn check_block_device(sector_size: u32) {
    if !is_root() {
        skip(Need::Root, "loop devices need root");
        return;
    }
    let Some(lo) = LoopDev::attach(sector_size) else {
        return;
    };
    for backend in backends() {
        let dev = backend.open(lo.path(), &DeviceOptions::existing()).unwrap();
        assert_eq!(dev.kind(), DeviceKind::Block);
        assert_eq!(dev.len_bytes(), LOOP_LEN);
        assert_eq!(dev.alignment(), sector_size as usize);
        assert!(dev.direct_io(), "{}", dev.describe());
        assert!(dev.describe().contains("block device"));

        // O_EXCL: a second open of the same device is refused clearly.
        let err = backend
            .open(lo.path(), &DeviceOptions::existing())
            .unwrap_err();
        assert!(matches!(err, IoError::InUse { .. }), "{err:?}");

        // Misaligned by less than a sector is refused before any IO.
        let (r, _) = dev
            .read_at(
                AlignedBuf::zeroed(sector_size as usize),
                u64::from(sector_size) / 2,
            )
            .await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);

        let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
        let at = LOOP_LEN - 65536;
        let (r, _) = dev.write_at(AlignedBuf::from_slice(&data), at).await;
        r.unwrap();
        dev.sync_data().await.unwrap();
        let (r, buf) = dev.read_at(AlignedBuf::zeroed(65536), at).await;
        r.unwrap();
        assert_eq!(buf.as_slice(), &data[..]);

        dev.discard(at, 65536).await.unwrap();
        let (r, buf) = dev.read_at(AlignedBuf::zeroed(65536), at).await;
        r.unwrap();
        assert!(buf.as_slice() == &data[..] || buf.as_slice().iter().all(|&b| b == 0));

        drop(dev);
        // Closed: the device can be opened again. The kernel releases an
        // exclusive block-device claim when the last file reference goes,
        // and io_uring's deferred completion work may hold one until the
        // ring is next entered: allow that moment, not more.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match backend.open(lo.path(), &DeviceOptions::existing()) {
                Ok(_) => break,
                Err(cstor_engine::io::IoError::InUse { .. })
                    if std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("reopen after close: {e}"),
            }
        }
    }
}

#[tokio::test]
async fn loop_device_with_512_byte_sectors() {
    check_block_device(512).await;
}

#[tokio::test]
async fn loop_device_with_4096_byte_sectors() {
    check_block_device(4096).await;
}
