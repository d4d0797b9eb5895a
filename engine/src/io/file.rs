//! Opening real backing stores (regular files and block devices) and the
//! [`FileDevice`] that serves IO on them through a [`Backend`].
//!
//! Job: turn a path into an open, sized, exclusively held file descriptor
//! with the right alignment, and provide the blocking forms of every
//! operation (used by the thread backend and as io_uring's fallback).
//!
//! Invariants:
//! - Block devices are opened with `O_EXCL` (the kernel refuses a second
//!   exclusive open and a mounted device: `EBUSY` becomes
//!   [`IoError::InUse`]); regular files take an `flock(LOCK_EX|LOCK_NB)`,
//!   so two pools never share one backing store.
//! - O_DIRECT is used when the filesystem accepts it; otherwise (tmpfs on
//!   older kernels, some FUSE) the file is opened buffered, a warning is
//!   logged once per process, and [`FileDevice::direct_io`] says so.
//! - Alignment: a block device's logical block size (`BLKSSZGET`), always;
//!   [`FILE_DIRECT_ALIGN`] for a regular file with O_DIRECT; 1 for a
//!   buffered regular file.
//! - Discard is advisory: `EOPNOTSUPP` from the backing store counts as done.
//! - A buffered write of whole pages is done at once, on the caller's
//!   thread: it is a copy into the page cache (no read of the old page, no
//!   device IO until the next fdatasync), cheaper than handing it to a
//!   worker, which io_uring does with every buffered write on filesystems
//!   without async buffered writes (ext4). It may sleep only where any
//!   writer would: dirty-page throttling, memory reclaim. Partial-page
//!   writes and everything else go through the backend.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::backend::Backend;
use super::{check_buf, check_request, ready, AlignedBuf, BufResult, Device, IoError, IoFuture};

/// Alignment used for regular files opened with O_DIRECT. 4096 is a multiple
/// of every logical block size Linux filesystems sit on (512 or 4096), so it
/// is always accepted without asking the filesystem (statx DIOALIGN is 6.1+).
pub const FILE_DIRECT_ALIGN: usize = 4096;

/// `BLKGETSIZE64` from `<linux/fs.h>`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: u64 = ioc(2, 0x12, 114, 8);
/// `BLKDISCARD` from `<linux/fs.h>`: `_IO(0x12, 119)`, takes `u64[2]`.
const BLKDISCARD: u64 = ioc(0, 0x12, 119, 0);
/// `BLKSSZGET` from `<linux/fs.h>`: `_IO(0x12, 104)`, returns an `int`.
const BLKSSZGET: u64 = ioc(0, 0x12, 104, 0);

/// The generic `_IOC` encoding (x86, arm, riscv; not mips/powerpc/sparc).
const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}

/// Whether the O_DIRECT fallback has been logged in this process.
static BUFFERED_FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// Create a new backing file, or open an existing file or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open what exists at the path; its size is the device size.
    Existing,
    /// Create a new regular file of `len_bytes` (sparse); fails with
    /// [`IoError::Open`] (kind `AlreadyExists`) if the path exists.
    Create {
        /// Size of the new file.
        len_bytes: u64,
    },
}

/// Whether to bypass the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectIo {
    /// O_DIRECT when the backing store accepts it, buffered otherwise.
    Auto,
    /// O_DIRECT or fail with [`IoError::DirectIoUnsupported`].
    Require,
    /// Always buffered (page cache).
    Off,
}

/// How to open a backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Create or open.
    pub mode: OpenMode,
    /// O_DIRECT policy.
    pub direct: DirectIo,
}

impl DeviceOptions {
    /// Open an existing file or block device, O_DIRECT when possible.
    pub fn existing() -> Self {
        Self {
            mode: OpenMode::Existing,
            direct: DirectIo::Auto,
        }
    }

    /// Create a new file of `len_bytes`, O_DIRECT when possible.
    pub fn create(len_bytes: u64) -> Self {
        Self {
            mode: OpenMode::Create { len_bytes },
            direct: DirectIo::Auto,
        }
    }

    /// The same options with another O_DIRECT policy.
    pub fn with_direct(self, direct: DirectIo) -> Self {
        Self { direct, ..self }
    }
}

/// What a [`FileDevice`] sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A regular file.
    File,
    /// A block device.
    Block,
}

/// An open, sized backing store; the fd every backend does IO on.
#[derive(Debug)]
pub(crate) struct BackingFile {
    file: File,
    path: PathBuf,
    kind: DeviceKind,
    len_bytes: u64,
    alignment: usize,
    direct: bool,
    /// The page cache's unit (`sysconf(_SC_PAGESIZE)`).
    page_bytes: u64,
}

impl BackingFile {
    /// Opens `path` as `opts` say (see the module doc for the rules).
    pub(crate) fn open(path: &Path, opts: &DeviceOptions) -> Result<Self, IoError> {
        let open_err = |source| IoError::Open {
            path: path.to_owned(),
            source,
        };
        if let OpenMode::Create { len_bytes } = opts.mode {
            // Created buffered first: an O_DIRECT open that the filesystem
            // refuses may already have created the file.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(open_err)?;
            let opened = file
                .set_len(len_bytes)
                .map_err(open_err)
                .and_then(|()| Self::open_existing(path, opts.direct));
            if opened.is_err() {
                // Best effort: leave no half-made backing file behind.
                let _ = std::fs::remove_file(path);
            }
            return opened;
        }
        Self::open_existing(path, opts.direct)
    }

    fn open_existing(path: &Path, direct: DirectIo) -> Result<Self, IoError> {
        let open_err = |source| IoError::Open {
            path: path.to_owned(),
            source,
        };
        let file_type = std::fs::metadata(path).map_err(open_err)?.file_type();
        let kind = if file_type.is_block_device() {
            DeviceKind::Block
        } else if file_type.is_file() {
            DeviceKind::File
        } else {
            return Err(IoError::NotFileOrBlockDevice {
                path: path.to_owned(),
            });
        };
        let (file, direct) = open_fd(path, kind, direct)?;
        // Re-check on the fd: the path may have been swapped meanwhile.
        let meta = file.metadata().map_err(open_err)?;
        let kind_now = if meta.file_type().is_block_device() {
            DeviceKind::Block
        } else {
            DeviceKind::File
        };
        if kind_now != kind {
            return Err(IoError::NotFileOrBlockDevice {
                path: path.to_owned(),
            });
        }
        let (len_bytes, alignment) = match kind {
            DeviceKind::File => {
                lock_exclusive(&file, path)?;
                let align = if direct { FILE_DIRECT_ALIGN } else { 1 };
                (meta.len(), align)
            }
            DeviceKind::Block => (
                block_size_bytes(&file, path)?,
                logical_block_size(&file, path)?,
            ),
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            kind,
            len_bytes,
            alignment,
            direct,
            page_bytes: page_bytes(),
        })
    }

    /// True when writing `len` bytes at `offset` only copies into the page
    /// cache: buffered, and whole pages (see the module doc).
    fn write_is_page_copy(&self, offset: u64, len: usize) -> bool {
        !self.direct
            && len > 0
            && offset.is_multiple_of(self.page_bytes)
            && (len as u64).is_multiple_of(self.page_bytes)
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    pub(crate) fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// Blocking read of the whole buffer; a short read is `UnexpectedEof`.
    pub(crate) fn read_blocking(&self, mut buf: AlignedBuf, offset: u64) -> BufResult {
        let r = self.file.read_exact_at(buf.as_mut_slice(), offset);
        (r, buf)
    }

    /// Blocking write of the whole buffer (short writes continue).
    pub(crate) fn write_blocking(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        let r = self.file.write_all_at(buf.as_slice(), offset);
        (r, buf)
    }

    /// Blocking fdatasync. Never retried by anyone (see the poisoning rule).
    pub(crate) fn sync_blocking(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Blocking discard: hole punch on files, BLKDISCARD on block devices.
    pub(crate) fn discard_blocking(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        if len_bytes == 0 {
            return Ok(());
        }
        let result = match self.kind {
            DeviceKind::File => self.punch_hole(offset, len_bytes),
            DeviceKind::Block => self.blk_discard(offset, len_bytes),
        };
        advisory(result)
    }

    fn punch_hole(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        let off =
            i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let len =
            i64::try_from(len_bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: fallocate on an fd we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn blk_discard(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len_bytes];
        // SAFETY: BLKDISCARD reads a `u64[2]` through the pointer, which
        // points at `range`, alive for the duration of the call.
        let rc = unsafe { libc::ioctl(self.raw_fd(), BLKDISCARD as _, range.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// The page size, 4096 if sysconf cannot tell.
fn page_bytes() -> u64 {
    // SAFETY: sysconf reads a constant; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Discard is advisory: a backing store that cannot do it has done enough.
pub(crate) fn advisory(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        other => other,
    }
}

/// Opens the fd, with O_DIRECT if asked and accepted; returns whether it is.
fn open_fd(path: &Path, kind: DeviceKind, direct: DirectIo) -> Result<(File, bool), IoError> {
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    let excl = match kind {
        DeviceKind::Block => libc::O_EXCL,
        DeviceKind::File => 0,
    };
    let classify = |source: io::Error| {
        if kind == DeviceKind::Block && source.raw_os_error() == Some(libc::EBUSY) {
            IoError::InUse {
                path: path.to_owned(),
            }
        } else {
            IoError::Open {
                path: path.to_owned(),
                source,
            }
        }
    };
    if direct == DirectIo::Off {
        return open(excl).map(|f| (f, false)).map_err(classify);
    }
    match open(excl | libc::O_DIRECT) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if direct == DirectIo::Require {
                return Err(IoError::DirectIoUnsupported {
                    path: path.to_owned(),
                    source: e,
                });
            }
            if !BUFFERED_FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    path = %path.display(),
                    "backing filesystem refuses O_DIRECT; using buffered IO (logged once)"
                );
            }
            open(excl).map(|f| (f, false)).map_err(classify)
        }
        Err(e) => Err(classify(e)),
    }
}

/// Takes the per-file exclusive lock that keeps two pools off one file.
fn lock_exclusive(file: &File, path: &Path) -> Result<(), IoError> {
    // SAFETY: flock on an fd we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(IoError::InUse {
            path: path.to_owned(),
        })
    } else {
        Err(IoError::Open {
            path: path.to_owned(),
            source,
        })
    }
}

fn block_size_bytes(file: &File, path: &Path) -> Result<u64, IoError> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // at `size`, alive and writable for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc == 0 {
        Ok(size)
    } else {
        Err(IoError::BlockDevice {
            path: path.to_owned(),
            what: "BLKGETSIZE64",
            source: io::Error::last_os_error(),
        })
    }
}

fn logical_block_size(file: &File, path: &Path) -> Result<usize, IoError> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at
    // `size`, alive and writable for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            BLKSSZGET as _,
            &mut size as *mut libc::c_int,
        )
    };
    let err = |source| IoError::BlockDevice {
        path: path.to_owned(),
        what: "BLKSSZGET",
        source,
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    match usize::try_from(size) {
        Ok(s) if s.is_power_of_two() && s <= super::BUF_ALIGN => Ok(s),
        _ => Err(err(io::Error::other(format!(
            "unsupported logical block size {size}"
        )))),
    }
}

/// A regular file or block device served by an IO [`Backend`].
pub struct FileDevice {
    backing: Arc<BackingFile>,
    backend: Backend,
}

impl FileDevice {
    pub(crate) fn new(backing: BackingFile, backend: Backend) -> Self {
        Self {
            backing: Arc::new(backing),
            backend,
        }
    }

    /// True when IO bypasses the page cache (O_DIRECT).
    pub fn direct_io(&self) -> bool {
        self.backing.direct
    }

    /// Regular file or block device.
    pub fn kind(&self) -> DeviceKind {
        self.backing.kind
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.backing.path
    }

    /// The backend serving it.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

impl std::fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Device for FileDevice {
    fn len_bytes(&self) -> u64 {
        self.backing.len_bytes
    }

    fn alignment(&self) -> usize {
        self.backing.alignment
    }

    fn read_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        if let Err(e) = check_buf(self, &buf, offset) {
            return ready((Err(e), buf));
        }
        self.backend.read(&self.backing, buf, offset)
    }

    fn write_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        if let Err(e) = check_buf(self, &buf, offset) {
            return ready((Err(e), buf));
        }
        if self.backing.write_is_page_copy(offset, buf.len()) {
            return ready(self.backing.write_blocking(buf, offset));
        }
        self.backend.write(&self.backing, buf, offset)
    }

    fn sync_data(&self) -> IoFuture<io::Result<()>> {
        self.backend.sync(&self.backing)
    }

    fn discard(&self, offset: u64, len_bytes: u64) -> IoFuture<io::Result<()>> {
        if let Err(e) = check_request(
            self.backing.len_bytes,
            self.backing.alignment,
            offset,
            len_bytes,
            None,
        ) {
            return ready(Err(e));
        }
        self.backend.discard(&self.backing, offset, len_bytes)
    }

    fn describe(&self) -> String {
        let kind = match self.backing.kind {
            DeviceKind::File => "file",
            DeviceKind::Block => "block device",
        };
        let mode = if self.backing.direct {
            "O_DIRECT"
        } else {
            "buffered"
        };
        format!(
            "{kind} {} ({} bytes, alignment {}, {mode}, {} backend)",
            self.backing.path.display(),
            self.backing.len_bytes,
            self.backing.alignment,
            self.backend.kind(),
        )
    }
}
