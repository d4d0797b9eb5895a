//! Errors of opening and configuring backing devices.
//!
//! Job: say what failed and on what (path, device). Per-IO errors stay
//! `std::io::Error` (the [`Device`](super::Device) contract) because their
//! kind (`InvalidInput`, `UnexpectedEof`, raw EIO...) is what the pool maps
//! to poisoning and to SCSI sense; this enum is for the setup path only.

use std::io;
use std::path::PathBuf;

/// Why a backing device or an IO backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// `open(2)`, `fstat(2)` or sizing the file failed.
    #[error("cannot open backing store {path}: {source}")]
    Open {
        /// The backing store.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The backing store is held by another user (a block device opened
    /// exclusively or mounted, or a file locked by another pool).
    #[error("backing store {path} is in use by another process or mounted")]
    InUse {
        /// The backing store.
        path: PathBuf,
    },
    /// The path is neither a regular file nor a block device.
    #[error("backing store {path} is neither a regular file nor a block device")]
    NotFileOrBlockDevice {
        /// The path.
        path: PathBuf,
    },
    /// A block device ioctl (size, logical block size) failed.
    #[error("cannot query block device {path} ({what}): {source}")]
    BlockDevice {
        /// The device.
        path: PathBuf,
        /// Which query failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// O_DIRECT was required but the backing filesystem refuses it.
    #[error("backing store {path} does not support O_DIRECT: {source}")]
    DirectIoUnsupported {
        /// The backing store.
        path: PathBuf,
        /// The OS error of the O_DIRECT open.
        #[source]
        source: io::Error,
    },
    /// A parameter is out of its documented range.
    #[error("invalid IO configuration: {0}")]
    InvalidConfig(String),
    /// io_uring could not be set up (seccomp, old kernel, limits).
    #[error("io_uring unavailable: {source}")]
    UringUnavailable {
        /// The error of `io_uring_setup(2)` or of the probe.
        #[source]
        source: io::Error,
    },
    /// A backend's worker thread could not be started.
    #[error("cannot start IO worker thread: {source}")]
    Spawn {
        /// The OS error.
        #[source]
        source: io::Error,
    },
}
