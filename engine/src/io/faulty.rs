//! `FaultyDevice`: wraps any [`Device`] and fails chosen operations with
//! EIO, counting every operation, for the pool's poisoning tests.
//!
//! Job: make "the N-th write / sync / read fails" reproducible. A failed
//! operation does not reach the inner device (the write is not applied, the
//! sync does nothing), which is one of the outcomes a real EIO allows; the
//! caller must treat the device state as unknown either way.
//!
//! Invariants: counts are 1-based and include the injected failures; a read,
//! write or discard that fails [`check_request`](super::check_request)
//! (misaligned, out of range) is neither counted nor failed with EIO: the
//! inner device refuses it with `InvalidInput` as usual.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{check_buf, check_request, ready, AlignedBuf, BufResult, Device, IoFuture};

/// How many operations of each kind a [`FaultyDevice`] has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// `read_at` calls.
    pub reads: u64,
    /// `write_at` calls.
    pub writes: u64,
    /// `sync_data` calls.
    pub syncs: u64,
    /// `discard` calls.
    pub discards: u64,
}

/// Which op number of one kind fails; 0 = none.
#[derive(Default)]
struct Trigger {
    count: AtomicU64,
    fail_at: AtomicU64,
    sticky: AtomicU64,
}

impl Trigger {
    /// Counts one op; true if it must fail.
    fn hit(&self) -> bool {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let at = self.fail_at.load(Ordering::SeqCst);
        let sticky = self.sticky.load(Ordering::SeqCst) != 0;
        at != 0 && (n == at || (sticky && n > at))
    }

    fn arm(&self, nth: u64, sticky: bool) {
        self.sticky.store(u64::from(sticky), Ordering::SeqCst);
        self.fail_at.store(nth, Ordering::SeqCst);
    }
}

/// A device that fails the N-th read, write or sync with EIO.
pub struct FaultyDevice<D> {
    inner: D,
    reads: Trigger,
    writes: Trigger,
    syncs: Trigger,
    discards: Trigger,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl<D: Device> FaultyDevice<D> {
    /// Wraps `inner` with no fault armed.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            reads: Trigger::default(),
            writes: Trigger::default(),
            syncs: Trigger::default(),
            discards: Trigger::default(),
        }
    }

    /// The `nth` write (1-based, counted since creation) fails with EIO;
    /// 0 disarms.
    pub fn fail_nth_write(&self, nth: u64) {
        self.writes.arm(nth, false);
    }

    /// The `nth` sync fails with EIO; 0 disarms.
    pub fn fail_nth_sync(&self, nth: u64) {
        self.syncs.arm(nth, false);
    }

    /// The `nth` read fails with EIO; 0 disarms.
    pub fn fail_nth_read(&self, nth: u64) {
        self.reads.arm(nth, false);
    }

    /// Every write from the `nth` on fails (a dead disk); 0 disarms.
    pub fn fail_writes_from(&self, nth: u64) {
        self.writes.arm(nth, true);
    }

    /// Every sync from the `nth` on fails; 0 disarms.
    pub fn fail_syncs_from(&self, nth: u64) {
        self.syncs.arm(nth, true);
    }

    /// Operations seen so far, failed ones included.
    pub fn counts(&self) -> OpCounts {
        OpCounts {
            reads: self.reads.count.load(Ordering::SeqCst),
            writes: self.writes.count.load(Ordering::SeqCst),
            syncs: self.syncs.count.load(Ordering::SeqCst),
            discards: self.discards.count.load(Ordering::SeqCst),
        }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: Device> Device for FaultyDevice<D> {
    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }

    fn alignment(&self) -> usize {
        self.inner.alignment()
    }

    fn read_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        if check_buf(self, &buf, offset).is_ok() && self.reads.hit() {
            return ready((Err(eio()), buf));
        }
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        if check_buf(self, &buf, offset).is_ok() && self.writes.hit() {
            return ready((Err(eio()), buf));
        }
        self.inner.write_at(buf, offset)
    }

    fn sync_data(&self) -> IoFuture<io::Result<()>> {
        if self.syncs.hit() {
            return ready(Err(eio()));
        }
        self.inner.sync_data()
    }

    fn discard(&self, offset: u64, len_bytes: u64) -> IoFuture<io::Result<()>> {
        if check_request(self.len_bytes(), self.alignment(), offset, len_bytes, None).is_ok() {
            self.discards.hit();
        }
        self.inner.discard(offset, len_bytes)
    }

    fn describe(&self) -> String {
        format!("fault-injecting wrapper of {}", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemDevice;

    async fn write(dev: &impl Device, byte: u8, offset: u64) -> io::Result<()> {
        dev.write_at(AlignedBuf::from_slice(&[byte; 4096]), offset)
            .await
            .0
    }

    #[tokio::test]
    async fn nth_write_fails_with_eio_and_is_not_applied() {
        let dev = FaultyDevice::new(MemDevice::new(16384));
        dev.fail_nth_write(2);
        write(&dev, 1, 0).await.unwrap();
        let err = write(&dev, 2, 4096).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        write(&dev, 3, 8192).await.unwrap();
        let image = dev.inner().image();
        assert_eq!(image[0], 1);
        assert_eq!(image[4096], 0, "the failed write did not land");
        assert_eq!(image[8192], 3);
        assert_eq!(dev.counts().writes, 3);
    }

    #[tokio::test]
    async fn nth_sync_and_read_fail_once() {
        let dev = FaultyDevice::new(MemDevice::new(8192));
        dev.fail_nth_sync(1);
        dev.fail_nth_read(2);
        assert_eq!(
            dev.sync_data().await.unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        dev.sync_data().await.unwrap();
        let read = || dev.read_at(AlignedBuf::zeroed(4096), 0);
        read().await.0.unwrap();
        assert_eq!(read().await.0.unwrap_err().raw_os_error(), Some(libc::EIO));
        read().await.0.unwrap();
        let counts = dev.counts();
        assert_eq!((counts.syncs, counts.reads), (2, 3));
    }

    #[tokio::test]
    async fn sticky_faults_fail_every_later_op() {
        let dev = FaultyDevice::new(MemDevice::new(8192));
        dev.fail_writes_from(2);
        dev.fail_syncs_from(1);
        write(&dev, 1, 0).await.unwrap();
        for _ in 0..3 {
            assert!(write(&dev, 1, 0).await.is_err());
            assert!(dev.sync_data().await.is_err());
        }
        dev.fail_writes_from(0);
        write(&dev, 1, 0).await.unwrap();
    }

    #[tokio::test]
    async fn invalid_requests_stay_invalid_input_not_eio() {
        let dev = FaultyDevice::new(MemDevice::new(8192));
        dev.fail_nth_write(1);
        let (r, _) = dev.write_at(AlignedBuf::zeroed(4096), 1).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            write(&dev, 1, 0).await.unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
    }
}
