//! Opening backing files: sizes, modes, exclusivity and errors, on both
//! backends; and IO in flight surviving the drop of every handle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::ErrorKind;
use std::path::Path;

use cstor_engine::io::{
    test_backend, AlignedBuf, Backend, BackendKind, Device, DeviceKind, DeviceOptions, DirectIo,
    IoError,
};
use cstor_testkit::{skip, Need};

fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::threads().unwrap()];
    match Backend::uring() {
        Ok(b) => all.push(b),
        Err(e) => skip(Need::IoUring, format!("the io_uring half: {e}")),
    }
    all
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[tokio::test]
async fn created_file_reopens_with_its_size_and_data() {
    for backend in backends() {
        let dir = tmpdir();
        let path = dir.path().join("dev");
        {
            let dev = backend
                .open(&path, &DeviceOptions::create(1 << 20))
                .unwrap();
            assert_eq!(dev.len_bytes(), 1 << 20);
            assert_eq!(dev.kind(), DeviceKind::File);
            let (r, _) = dev
                .write_at(AlignedBuf::from_slice(&[0xab; 4096]), 8192)
                .await;
            r.unwrap();
            dev.sync_data().await.unwrap();
        }
        let dev = backend.open(&path, &DeviceOptions::existing()).unwrap();
        assert_eq!(dev.len_bytes(), 1 << 20);
        let (r, buf) = dev.read_at(AlignedBuf::zeroed(4096), 8192).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0xab), "{:?}", backend);
    }
}

#[test]
fn create_refuses_an_existing_path() {
    let dir = tmpdir();
    let path = dir.path().join("dev");
    std::fs::write(&path, b"keep me").unwrap();
    let err = test_backend()
        .open(&path, &DeviceOptions::create(1 << 20))
        .unwrap_err();
    match err {
        IoError::Open { source, .. } => assert_eq!(source.kind(), ErrorKind::AlreadyExists),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn a_file_in_use_by_another_device_is_refused_until_closed() {
    let dir = tmpdir();
    let path = dir.path().join("dev");
    let backend = test_backend();
    let first = backend
        .open(&path, &DeviceOptions::create(1 << 20))
        .unwrap();
    let err = backend.open(&path, &DeviceOptions::existing()).unwrap_err();
    assert!(matches!(err, IoError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    backend.open(&path, &DeviceOptions::existing()).unwrap();
}

#[test]
fn missing_paths_and_directories_are_refused() {
    let dir = tmpdir();
    let err = test_backend()
        .open(&dir.path().join("nope"), &DeviceOptions::existing())
        .unwrap_err();
    assert!(matches!(&err, IoError::Open { source, .. } if source.kind() == ErrorKind::NotFound));
    let err = test_backend()
        .open(dir.path(), &DeviceOptions::existing())
        .unwrap_err();
    assert!(
        matches!(err, IoError::NotFileOrBlockDevice { .. }),
        "{err:?}"
    );
}

fn assert_mode_consistent(dev: &cstor_engine::io::FileDevice) {
    let text = dev.describe();
    if dev.direct_io() {
        assert_eq!(dev.alignment(), cstor_engine::io::FILE_DIRECT_ALIGN);
        assert!(text.contains("O_DIRECT"), "{text}");
    } else {
        assert_eq!(dev.alignment(), 1);
        assert!(text.contains("buffered"), "{text}");
    }
}

#[test]
fn direct_off_is_buffered_with_byte_alignment() {
    let dir = tmpdir();
    let opts = DeviceOptions::create(1 << 20).with_direct(DirectIo::Off);
    let dev = test_backend().open(&dir.path().join("dev"), &opts).unwrap();
    assert!(!dev.direct_io());
    assert_mode_consistent(&dev);
}

#[test]
fn auto_direct_reports_the_mode_it_got() {
    let dir = tmpdir();
    let dev = test_backend()
        .open(&dir.path().join("dev"), &DeviceOptions::create(1 << 20))
        .unwrap();
    assert_mode_consistent(&dev);
    assert!(dev.describe().contains(&test_backend().kind().to_string()));
}

/// tmpfs refuses O_DIRECT on older kernels and accepts it since 6.6: either
/// way `Auto` opens, and `Require` opens with O_DIRECT or says why not.
#[test]
fn tmpfs_opens_in_auto_and_require_is_honest() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        skip(Need::Tmpfs, "no /dev/shm");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let dev = test_backend()
        .open(&dir.path().join("auto"), &DeviceOptions::create(1 << 20))
        .unwrap();
    assert_mode_consistent(&dev);
    let opts = DeviceOptions::create(1 << 20).with_direct(DirectIo::Require);
    match test_backend().open(&dir.path().join("require"), &opts) {
        Ok(dev) => assert!(dev.direct_io()),
        Err(IoError::DirectIoUnsupported { .. }) => assert!(!dev.direct_io()),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn backend_kinds_name_themselves() {
    assert_eq!(Backend::threads().unwrap().kind(), BackendKind::Threads);
    assert_eq!(BackendKind::Uring.to_string(), "io_uring");
    let auto = Backend::auto().unwrap();
    if Backend::uring().is_ok() {
        assert_eq!(auto.kind(), BackendKind::Uring);
    } else {
        assert_eq!(auto.kind(), BackendKind::Threads);
    }
}

/// Every handle (backend, device) is dropped while IOs are in flight: the
/// IOs still complete and hand their buffers back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_in_flight_completes_after_every_handle_is_dropped() {
    for backend in backends() {
        let dir = tmpdir();
        let dev = backend
            .open(&dir.path().join("dev"), &DeviceOptions::create(1 << 20))
            .unwrap();
        let futs: Vec<_> = (0..64u64)
            .map(|i| dev.write_at(AlignedBuf::from_slice(&[i as u8; 4096]), i * 4096))
            .collect();
        let sync = dev.sync_data();
        drop(dev);
        drop(backend);
        for (i, f) in futs.into_iter().enumerate() {
            let (r, buf) = f.await;
            r.unwrap();
            assert_eq!(buf.as_slice()[0], i as u8);
        }
        sync.await.unwrap();
    }
}

/// The backing store is closed (its lock released) by the time the last
/// IO's future has resolved and the device is dropped: reopening at once
/// never finds it in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_device_after_its_last_io_releases_the_file_at_once() {
    for backend in backends() {
        let dir = tmpdir();
        let path = dir.path().join("dev");
        drop(
            backend
                .open(&path, &DeviceOptions::create(1 << 20))
                .unwrap(),
        );
        for round in 0..50u8 {
            let dev = backend.open(&path, &DeviceOptions::existing()).unwrap();
            let (r, _) = dev
                .write_at(AlignedBuf::from_slice(&[round; 4096]), 0)
                .await;
            r.unwrap();
            dev.sync_data().await.unwrap();
            drop(dev);
        }
    }
}

#[test]
fn a_failed_create_leaves_no_file_behind() {
    let dir = tmpdir();
    let path = dir.path().join("dev");
    // Larger than any filesystem allows: set_len fails with EFBIG/EINVAL.
    let err = test_backend()
        .open(&path, &DeviceOptions::create(u64::MAX))
        .unwrap_err();
    assert!(matches!(err, IoError::Open { .. }), "{err:?}");
    assert!(!path.exists());
}

/// The fault-injection wrapper composes with a real device through the
/// `Arc` impl: the armed sync fails with EIO, the others reach the file.
#[tokio::test]
async fn faulty_wrapper_over_a_file_device_fails_the_armed_sync_only() {
    let dir = tmpdir();
    let dev = test_backend()
        .open(&dir.path().join("dev"), &DeviceOptions::create(1 << 20))
        .unwrap();
    let faulty = cstor_engine::io::FaultyDevice::new(dev);
    faulty.fail_nth_sync(2);
    faulty.sync_data().await.unwrap();
    let err = faulty.sync_data().await.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    faulty.sync_data().await.unwrap();
    assert_eq!(faulty.counts().syncs, 3);
}

/// A buffered write of whole pages is a copy into the page cache, done at
/// once on the caller's thread: its future is ready on the first poll, on
/// both backends, and the data reads back; a partial-page write still goes
/// through the backend and lands too.
#[tokio::test]
async fn buffered_whole_page_writes_complete_on_the_first_poll() {
    use std::task::{Context, Poll, Waker};
    let page = 4096usize;
    for backend in backends() {
        let dir = tmpdir();
        let opts = DeviceOptions::create(1 << 20).with_direct(DirectIo::Off);
        let dev = backend.open(&dir.path().join("dev"), &opts).unwrap();
        let mut write = dev.write_at(
            AlignedBuf::from_slice(&vec![0x5a; 2 * page]),
            8 * page as u64,
        );
        let first = write.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        match first {
            Poll::Ready((r, _)) => r.unwrap(),
            Poll::Pending => panic!("{}: a whole-page buffered write waited", backend.kind()),
        }
        let (r, _) = dev
            .write_at(AlignedBuf::from_slice(&[0xc3; 100]), 8 * page as u64 + 10)
            .await;
        r.unwrap();
        let (r, buf) = dev
            .read_at(AlignedBuf::zeroed(2 * page), 8 * page as u64)
            .await;
        r.unwrap();
        let mut expect = vec![0x5a; 2 * page];
        expect[10..110].fill(0xc3);
        assert_eq!(buf.as_slice(), &expect[..], "{}", backend.kind());
    }
}
