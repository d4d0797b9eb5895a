//! IO backends and how one is chosen: io_uring by default, a blocking thread
//! pool where io_uring is refused.
//!
//! Job: own the machinery that runs IOs (one io_uring ring and its thread,
//! or a pool of blocking workers) and share it between the devices of a
//! pool; pick it once per process ([`Backend::auto`]) or as the
//! `CSTOR_IO_BACKEND` environment variable forces ([`Backend::from_env`],
//! [`test_backend`]), so the whole engine test suite runs on both.
//!
//! Bounds of both backends are named here.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::file::{BackingFile, FileDevice};
use super::threads::ThreadPool;
use super::uring::Ring;
use super::{AlignedBuf, BufResult, DeviceOptions, IoError, IoFuture};

/// How long [`Backend::open`] keeps trying a store that is in use before
/// it reports [`IoError::InUse`] (see there).
pub const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Environment variable forcing a backend: `uring`, `threads` or `auto`.
pub const BACKEND_ENV: &str = "CSTOR_IO_BACKEND";

/// Blocking workers of the thread backend: enough to keep a queue depth of
/// 32 busy on one device, which is what the target drives per volume.
pub const THREAD_WORKERS: usize = 32;
/// IOs queued or running in one thread backend; submitters wait beyond.
pub const THREAD_MAX_QUEUED: usize = 1024;
/// Blocking workers next to a ring, for calls io_uring has no opcode for
/// (BLKDISCARD).
pub const URING_BLOCKING_WORKERS: usize = 2;
/// Submission queue entries of a ring; also the cap on IOs in the kernel at
/// once, so the completion queue (twice as large) never overflows.
pub const URING_ENTRIES: u32 = 256;
/// IOs accepted by one ring (in the kernel or waiting for a slot);
/// submitters wait beyond.
pub const URING_MAX_QUEUED: usize = 4096;

/// Which machinery a [`Backend`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// One io_uring ring serviced by a dedicated thread.
    Uring,
    /// A pool of blocking worker threads.
    Threads,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Uring => "io_uring",
            BackendKind::Threads => "threads",
        })
    }
}

/// A handle on an IO backend; clones share it (one ring or one pool for all
/// the devices of a pool). The machinery stops when the last handle and the
/// last device using it are gone, after finishing the IOs in flight.
#[derive(Clone)]
pub struct Backend {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Threads(Arc<ThreadPool>),
    Uring {
        ring: Arc<Ring>,
        blocking: Arc<ThreadPool>,
    },
}

/// Result of the once-per-process io_uring probe.
static URING_PROBE: OnceLock<Result<(), String>> = OnceLock::new();

impl Backend {
    /// A thread-pool backend.
    pub fn threads() -> Result<Self, IoError> {
        let pool = ThreadPool::new("cstor-io", THREAD_WORKERS, THREAD_MAX_QUEUED)?;
        Ok(Self {
            inner: Inner::Threads(Arc::new(pool)),
        })
    }

    /// An io_uring backend: one ring and its servicing thread.
    pub fn uring() -> Result<Self, IoError> {
        let ring = Ring::new(URING_ENTRIES, URING_MAX_QUEUED)?;
        let blocking = ThreadPool::new(
            "cstor-io-blk",
            URING_BLOCKING_WORKERS,
            URING_BLOCKING_WORKERS,
        )?;
        Ok(Self {
            inner: Inner::Uring {
                ring: Arc::new(ring),
                blocking: Arc::new(blocking),
            },
        })
    }

    /// io_uring if this process may use it, else threads. The probe runs
    /// once per process and a refusal is logged once (`tracing::warn`).
    pub fn auto() -> Result<Self, IoError> {
        let probe = URING_PROBE.get_or_init(|| match Ring::probe() {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring refused; using the blocking thread-pool backend");
                Err(e.to_string())
            }
        });
        if probe.is_err() {
            return Self::threads();
        }
        // The probe passed but this ring may still be refused (a memlock
        // or ring-count limit): fall back rather than fail the pool.
        Self::uring().or_else(|e| {
            tracing::warn!(error = %e, "io_uring ring refused; using the blocking thread-pool backend");
            Self::threads()
        })
    }

    /// The backend [`BACKEND_ENV`] asks for: `uring` (an error if refused),
    /// `threads`, or `auto`/unset ([`Backend::auto`]).
    pub fn from_env() -> Result<Self, IoError> {
        let value = match std::env::var(BACKEND_ENV) {
            Ok(v) => Some(v),
            Err(std::env::VarError::NotPresent) => None,
            Err(e) => return Err(IoError::InvalidConfig(format!("{BACKEND_ENV}: {e}"))),
        };
        match parse_choice(value.as_deref())? {
            None => Self::auto(),
            Some(BackendKind::Uring) => Self::uring(),
            Some(BackendKind::Threads) => Self::threads(),
        }
    }

    /// Which machinery this is.
    pub fn kind(&self) -> BackendKind {
        match self.inner {
            Inner::Threads(_) => BackendKind::Threads,
            Inner::Uring { .. } => BackendKind::Uring,
        }
    }

    /// Opens a backing file or block device (see [`DeviceOptions`]) served
    /// by this backend.
    ///
    /// A store found in use is tried again for up to [`RELEASE_WAIT`]: the
    /// kernel drops a closed fd's lock (or a block device's exclusive claim)
    /// when the last reference to the open file goes, and an io_uring
    /// request may hold one for a moment after its completion was reaped.
    /// Only a store still in use after that is [`IoError::InUse`].
    pub fn open(&self, path: &Path, opts: &DeviceOptions) -> Result<Arc<FileDevice>, IoError> {
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        loop {
            match BackingFile::open(path, opts) {
                Ok(backing) => return Ok(Arc::new(FileDevice::new(backing, self.clone()))),
                Err(IoError::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn read(
        &self,
        file: &Arc<BackingFile>,
        buf: AlignedBuf,
        offset: u64,
    ) -> IoFuture<BufResult> {
        match &self.inner {
            Inner::Threads(pool) => {
                let file = Arc::clone(file);
                let len = buf.len();
                let fut = pool.run(move || file.read_blocking(buf, offset));
                Box::pin(async move {
                    fut.await
                        .unwrap_or_else(|e| (Err(e), AlignedBuf::zeroed(len)))
                })
            }
            Inner::Uring { ring, .. } => ring.read(Arc::clone(file), buf, offset),
        }
    }

    pub(crate) fn write(
        &self,
        file: &Arc<BackingFile>,
        buf: AlignedBuf,
        offset: u64,
    ) -> IoFuture<BufResult> {
        match &self.inner {
            Inner::Threads(pool) => {
                let file = Arc::clone(file);
                let len = buf.len();
                let fut = pool.run(move || file.write_blocking(buf, offset));
                Box::pin(async move {
                    fut.await
                        .unwrap_or_else(|e| (Err(e), AlignedBuf::zeroed(len)))
                })
            }
            Inner::Uring { ring, .. } => ring.write(Arc::clone(file), buf, offset),
        }
    }

    pub(crate) fn sync(&self, file: &Arc<BackingFile>) -> IoFuture<io::Result<()>> {
        match &self.inner {
            Inner::Threads(pool) => {
                let file = Arc::clone(file);
                let fut = pool.run(move || file.sync_blocking());
                Box::pin(async move { fut.await.and_then(|r| r) })
            }
            Inner::Uring { ring, .. } => ring.sync_data(Arc::clone(file)),
        }
    }

    pub(crate) fn discard(
        &self,
        file: &Arc<BackingFile>,
        offset: u64,
        len_bytes: u64,
    ) -> IoFuture<io::Result<()>> {
        let blocking = |pool: &ThreadPool| -> IoFuture<io::Result<()>> {
            let file = Arc::clone(file);
            let fut = pool.run(move || file.discard_blocking(offset, len_bytes));
            Box::pin(async move { fut.await.and_then(|r| r) })
        };
        match &self.inner {
            Inner::Threads(pool) => blocking(pool),
            Inner::Uring {
                ring,
                blocking: pool,
            } => match file.kind() {
                super::DeviceKind::File => ring.punch_hole(Arc::clone(file), offset, len_bytes),
                super::DeviceKind::Block => blocking(pool),
            },
        }
    }
}

/// What [`BACKEND_ENV`] asks for: a kind, or `None` for automatic choice.
fn parse_choice(value: Option<&str>) -> Result<Option<BackendKind>, IoError> {
    match value.map(str::trim) {
        None | Some("") | Some("auto") => Ok(None),
        Some("uring") | Some("io_uring") => Ok(Some(BackendKind::Uring)),
        Some("threads") => Ok(Some(BackendKind::Threads)),
        Some(other) => Err(IoError::InvalidConfig(format!(
            "{BACKEND_ENV}={other:?}: expected uring, threads or auto"
        ))),
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({})", self.kind())
    }
}

/// The backend tests should use: [`Backend::from_env`], shared by every test
/// of the process. Run the suite with `CSTOR_IO_BACKEND=threads` and
/// `CSTOR_IO_BACKEND=uring` to cover both.
///
/// Panics (it is a test helper) if the forced backend cannot start, so a
/// run that asked for io_uring never silently tests the thread pool.
#[allow(clippy::panic)] // test helper: a misconfigured test run must stop
pub fn test_backend() -> Backend {
    static SHARED: OnceLock<Backend> = OnceLock::new();
    SHARED
        .get_or_init(|| match Backend::from_env() {
            Ok(b) => b,
            Err(e) => panic!("cannot start the IO backend for tests: {e}"),
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_choice_parses_the_documented_values_only() {
        assert_eq!(parse_choice(None).unwrap(), None);
        assert_eq!(parse_choice(Some("auto")).unwrap(), None);
        assert_eq!(parse_choice(Some("")).unwrap(), None);
        assert_eq!(
            parse_choice(Some("uring")).unwrap(),
            Some(BackendKind::Uring)
        );
        assert_eq!(
            parse_choice(Some("io_uring")).unwrap(),
            Some(BackendKind::Uring)
        );
        assert_eq!(
            parse_choice(Some("threads")).unwrap(),
            Some(BackendKind::Threads)
        );
        assert!(matches!(
            parse_choice(Some("aio")),
            Err(IoError::InvalidConfig(_))
        ));
    }

    #[test]
    fn test_backend_honours_the_environment() {
        let expected = parse_choice(std::env::var(BACKEND_ENV).ok().as_deref()).unwrap();
        let got = test_backend().kind();
        match expected {
            Some(kind) => assert_eq!(got, kind),
            None => assert_eq!(got, Backend::auto().unwrap().kind()),
        }
    }
}
