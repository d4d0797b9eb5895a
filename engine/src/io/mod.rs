//! IO backends: how the pool reads and writes its backing devices.
//!
//! The pool sees each backing device (a file or a block device) as a
//! [`Device`]: positioned reads and writes of [`AlignedBuf`]s, a data sync and
//! a discard, all asynchronous so that many IOs are in flight at once. Two
//! real backends implement it (io_uring by default, a blocking thread pool
//! where io_uring is refused) and two test backends wrap or replace them
//! (fault injection, and a power-loss simulator for crash-consistency tests).
//!
//! Contract every implementation keeps:
//! - `offset`, `buf.len()` and the buffer address are multiples of
//!   [`Device::alignment`]; a misaligned or out-of-range request fails with
//!   `InvalidInput` before any IO.
//! - `read_at` fills the whole buffer or fails (a short read past the end of
//!   a file is an error, never silent zeros).
//! - `write_at` writes the whole buffer or fails; it is durable only after a
//!   later `sync_data` completes successfully.
//! - After any failed write or sync the caller must assume the device state
//!   is unknown (see the engine's poisoning rule: never retry fsync).
//!
//! Map of the module:
//! - [`Backend`] (`backend.rs`): io_uring (`uring.rs`) or blocking threads
//!   (`threads.rs`), chosen by [`Backend::auto`] / `CSTOR_IO_BACKEND`;
//!   [`Backend::open`] gives a [`FileDevice`] (`file.rs`) on a regular file
//!   or block device. Tests take [`test_backend`]. A thread that runs its
//!   own single-threaded runtime (a replica's session shard) may take an
//!   io_uring ring of its own ([`install_thread_ring`], `uring/local.rs`):
//!   the io_uring backend's IO started there is submitted and reaped there.
//! - [`MemDevice`] (`mem.rs`), [`FaultyDevice`] (`faulty.rs`, EIO on the
//!   N-th op) and [`CrashDevice`] (`crash.rs`, power loss) for tests.
//! - [`check_request`]: the one validation every implementation runs.

use std::future::Future;
use std::io;
use std::pin::Pin;

/// A boxed future an IO backend returns; `'static` so the caller can move it
/// into a task.
pub type IoFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Result of a read or write: the outcome and the buffer, handed back so the
/// caller can reuse it (io_uring owns the buffer while the IO runs).
pub type BufResult = (io::Result<()>, AlignedBuf);

/// One backing device of a pool, as the pool sees it.
pub trait Device: Send + Sync + 'static {
    /// Usable size in bytes.
    fn len_bytes(&self) -> u64;
    /// Alignment, in bytes, of offsets, lengths and buffer addresses
    /// (the logical block size with O_DIRECT, else 1).
    fn alignment(&self) -> usize;
    /// Reads `buf.len()` bytes at `offset` into `buf`.
    fn read_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult>;
    /// Makes every write completed before this call durable (fdatasync).
    fn sync_data(&self) -> IoFuture<io::Result<()>>;
    /// Gives the space of a range back to the backing store (punch a hole in
    /// a file, BLKDISCARD on a block device). Afterwards the range reads as
    /// zeros or as its old contents; the pool never relies on either.
    fn discard(&self, offset: u64, len_bytes: u64) -> IoFuture<io::Result<()>>;
    /// One line for logs and `cstor ctl`: what backs the device and how it
    /// is accessed (backend, O_DIRECT or buffered, size, alignment).
    fn describe(&self) -> String {
        format!(
            "device of {} bytes, alignment {}",
            self.len_bytes(),
            self.alignment()
        )
    }
}

/// A shared device is a device: lets wrappers such as [`FaultyDevice`] take
/// an `Arc<dyn Device>` as well as a concrete one.
impl<D: Device + ?Sized> Device for std::sync::Arc<D> {
    fn len_bytes(&self) -> u64 {
        (**self).len_bytes()
    }
    fn alignment(&self) -> usize {
        (**self).alignment()
    }
    fn read_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        (**self).write_at(buf, offset)
    }
    fn sync_data(&self) -> IoFuture<io::Result<()>> {
        (**self).sync_data()
    }
    fn discard(&self, offset: u64, len_bytes: u64) -> IoFuture<io::Result<()>> {
        (**self).discard(offset, len_bytes)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Checks a request against a device's size and alignment before any IO:
/// `offset`, `len_bytes` and (when given) the buffer address must be
/// multiples of `alignment`, and `offset + len_bytes` must not overflow nor
/// pass `device_len_bytes`. Every backend calls this; so may callers.
pub fn check_request(
    device_len_bytes: u64,
    alignment: usize,
    offset: u64,
    len_bytes: u64,
    buf_addr: Option<usize>,
) -> io::Result<()> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let align = alignment.max(1);
    let align_u64 = u64::try_from(align).map_err(|_| invalid(format!("alignment {align}")))?;
    if offset.checked_rem(align_u64) != Some(0) || len_bytes.checked_rem(align_u64) != Some(0) {
        return Err(invalid(format!(
            "request at offset {offset} of {len_bytes} bytes is not aligned to {align} bytes"
        )));
    }
    if let Some(addr) = buf_addr {
        if addr.checked_rem(align) != Some(0) {
            return Err(invalid(format!(
                "buffer address {addr:#x} is not aligned to {align} bytes"
            )));
        }
    }
    match offset.checked_add(len_bytes) {
        Some(end) if end <= device_len_bytes => Ok(()),
        _ => Err(invalid(format!(
            "request at offset {offset} of {len_bytes} bytes passes the device end {device_len_bytes}"
        ))),
    }
}

/// [`check_request`] for a buffer IO.
fn check_buf(dev: &(impl Device + ?Sized), buf: &AlignedBuf, offset: u64) -> io::Result<()> {
    let len = u64::try_from(buf.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
    check_request(
        dev.len_bytes(),
        dev.alignment(),
        offset,
        len,
        Some(buf.as_ptr() as usize),
    )
}

/// A future already resolved to `value`.
fn ready<T: Send + 'static>(value: T) -> IoFuture<T> {
    Box::pin(std::future::ready(value))
}

mod aligned;
mod backend;
mod crash;
mod error;
mod faulty;
mod file;
mod mem;
mod threads;
mod uring;

pub use aligned::{AlignedBuf, BUF_ALIGN};
pub use backend::{test_backend, Backend, BackendKind, BACKEND_ENV};
pub use crash::{CrashDevice, CrashPolicy};
pub use error::IoError;
pub use faulty::{FaultyDevice, OpCounts};
pub use file::{DeviceKind, DeviceOptions, DirectIo, FileDevice, OpenMode, FILE_DIRECT_ALIGN};
pub use mem::MemDevice;
pub use uring::{install_thread_ring, thread_ring_submitted};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_request_accepts_aligned_in_range() {
        assert!(check_request(8192, 512, 512, 1024, Some(4096)).is_ok());
        assert!(check_request(8192, 512, 8192, 0, None).is_ok());
        assert!(check_request(8192, 1, 3, 5, Some(7)).is_ok());
    }

    #[test]
    fn check_request_rejects_misaligned_offset_length_or_address() {
        for (offset, len, addr) in [(1, 512, 0), (0, 100, 0), (0, 512, 8)] {
            let err = check_request(8192, 512, offset, len, Some(addr)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn check_request_rejects_out_of_range_and_overflow() {
        let err = check_request(8192, 512, 8192, 512, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = check_request(u64::MAX, 1, u64::MAX, 1, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
