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
}

mod aligned;
pub use aligned::AlignedBuf;
