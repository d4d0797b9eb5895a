//! Rings owned by one thread: a thread that runs a single-threaded tokio
//! runtime (a replica's session shard) installs one with
//! [`install_thread_ring`], and every IO of the io_uring backend started on
//! that thread is submitted to it and reaped by the same thread.
//!
//! Why: with the shared ring, an IO costs two wake-ups of the ring thread
//! (to submit, on completion) and one of the thread that asked; io_uring
//! also posts a read's completion as task work of the thread that submitted
//! it, so submitting from the asking thread into the shared ring would only
//! move those wake-ups. Here the asking thread submits (one
//! `io_uring_enter`), sleeps in its runtime's epoll like for any socket,
//! and is woken once by the ring's eventfd when completions wait.
//!
//! Design:
//! - The ring is set up single-issuer with deferred task work: completions
//!   are only posted when this thread enters the kernel asking for events,
//!   which the reaper task does each time the registered eventfd fires.
//! - Ops are the shared ring's [`Op`]s (same SQEs, resubmission of short
//!   IOs, retries, permits); at most `entries - 1` are in the kernel, the
//!   rest wait in a backlog.
//! - If the ring fails, or the thread's runtime ends with ops still in the
//!   kernel, those ops' buffers and files are leaked, never freed under the
//!   kernel (as for the shared ring); ops not yet in the kernel fail.
//! - A thread without a ring of its own (or whose ring failed) uses the
//!   shared ring: [`try_submit`] hands the op back.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::IoUring;
use tokio::io::unix::AsyncFd;

use super::{build_ring_with, signal_eventfd, Op, Slots};
use crate::io::IoError;

/// Entries of a thread's ring (and so at most 255 of its IOs in the kernel).
pub const THREAD_RING_ENTRIES: u32 = 256;

/// `io_uring_enter(2)` flag: wait for / run completions (the kernel ABI;
/// the io-uring crate keeps its constant private).
const IORING_ENTER_GETEVENTS: u32 = 1;

thread_local! {
    static RING: RefCell<Option<Rc<LocalRing>>> = const { RefCell::new(None) };
}

struct LocalRing {
    core: RefCell<Core>,
    /// Registered with the ring: the kernel signals it when completions
    /// (or deferred task work) wait.
    eventfd: AsyncFd<OwnedFd>,
    /// Set when the ring failed or its runtime is ending: no new ops.
    closed: Cell<bool>,
    /// Ops submitted here so far.
    submitted: Cell<u64>,
}

struct Core {
    /// Dropped only when no op is in the kernel (see `Drop`).
    ring: ManuallyDrop<IoUring>,
    slots: Slots,
}

/// Gives this thread a ring of its own. Returns the ring's reaper, which
/// the caller must run on this thread (e.g. `LocalSet::spawn_local`) for as
/// long as the thread does IO: call it on a thread that runs a
/// single-threaded tokio runtime. Returns an error (and changes nothing)
/// outside a runtime or where the kernel refuses such a ring; IO on this
/// thread then keeps using the shared ring.
pub fn install_thread_ring() -> Result<impl std::future::Future<Output = ()>, IoError> {
    let unavailable = |source| IoError::UringUnavailable { source };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(unavailable(io::Error::other(
            "a thread ring needs a tokio runtime on its thread",
        )));
    }
    let ring = build_ring_with(THREAD_RING_ENTRIES, |b| {
        b.setup_single_issuer().setup_defer_taskrun();
    })
    .map_err(unavailable)?;
    // SAFETY: plain syscall, no memory passed.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(unavailable(io::Error::last_os_error()));
    }
    // SAFETY: `efd` is a fresh fd that nothing else owns.
    let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
    ring.submitter()
        .register_eventfd(eventfd.as_raw_fd())
        .map_err(unavailable)?;
    // SAFETY: the AsyncFd owns the eventfd, which stays open (and the same
    // file) until the AsyncFd is dropped.
    let eventfd = unsafe { AsyncFd::register(eventfd) }.map_err(|e| unavailable(e.into()))?;
    let capacity = usize::try_from(THREAD_RING_ENTRIES - 1)
        .map_err(|e| IoError::InvalidConfig(e.to_string()))?;
    let local = Rc::new(LocalRing {
        core: RefCell::new(Core {
            ring: ManuallyDrop::new(ring),
            slots: Slots::new(capacity),
        }),
        eventfd,
        closed: Cell::new(false),
        submitted: Cell::new(0),
    });
    RING.with(|r| *r.borrow_mut() = Some(Rc::clone(&local)));
    Ok(reap(local))
}

/// IOs this thread's own ring took so far; `None` when the thread has no
/// ring of its own (diagnostics and tests).
pub fn thread_ring_submitted() -> Option<u64> {
    RING.try_with(|r| r.borrow().as_ref().map(|r| r.submitted.get()))
        .ok()
        .flatten()
}

/// Submits `op` to this thread's ring, or hands it back when the thread
/// has none (or it is closed).
pub(super) fn try_submit(op: Op) -> Result<(), Op> {
    let ring = RING
        .try_with(|r| r.borrow().as_ref().map(Rc::clone))
        .ok()
        .flatten();
    match ring {
        Some(ring) if !ring.closed.get() => {
            ring.submitted.set(ring.submitted.get() + 1);
            ring.push(op);
            Ok(())
        }
        _ => Err(op),
    }
}

impl LocalRing {
    fn push(&self, op: Op) {
        let mut core = self.core.borrow_mut();
        core.slots.backlog.push_back(op);
        core.fill_sq();
        if let Err(e) = core.ring.submit() {
            if !transient(&e) {
                tracing::warn!(error = %e, "thread ring: submit failed; the reaper retries");
            }
            // The SQEs stay queued; the reaper submits them on its next turn.
            self.kick();
            return;
        }
        // An IO the kernel finished during the submit (a page-cache hit)
        // completes now: its task sees the result on its first poll
        // instead of after a turn of the reaper.
        if core.reap() {
            // A retry or a backlogged op took the slot: the reaper submits.
            self.kick();
        }
    }

    /// Makes the reaper take a turn.
    fn kick(&self) {
        signal_eventfd(self.eventfd.as_raw_fd());
    }

    /// Empties the eventfd's counter (non-blocking).
    fn drain_eventfd(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into `buf`, alive for the call.
        let _ = unsafe {
            libc::read(
                self.eventfd.as_raw_fd(),
                (&mut buf as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Runs deferred completions, reaps them, submits what is queued.
    fn turn(&self) -> io::Result<()> {
        let mut core = self.core.borrow_mut();
        let to_submit = core.ring.submission().len();
        // SAFETY: no signal mask or arguments are passed.
        let entered = unsafe {
            core.ring.submitter().enter::<libc::sigset_t>(
                u32::try_from(to_submit).unwrap_or(u32::MAX),
                0,
                IORING_ENTER_GETEVENTS,
                None,
            )
        };
        match entered {
            Ok(_) => {}
            Err(e) if transient(&e) => self.kick(),
            Err(e) => return Err(e),
        }
        if core.reap() {
            if let Err(e) = core.ring.submit() {
                if !transient(&e) {
                    return Err(e);
                }
                self.kick();
            }
        }
        Ok(())
    }

    /// The ring is unusable: no new ops; queued ones fail, ones in the
    /// kernel fail with their buffers leaked.
    fn fail(&self, err: &io::Error) {
        tracing::error!(error = %err, "thread ring failed; failing its IOs");
        self.closed.set(true);
        let fail = || io::Error::new(err.kind(), err.to_string());
        self.core.borrow_mut().slots.fail_all(&fail);
    }
}

impl Core {
    /// Completes every posted completion and refills the submission queue;
    /// true if it queued SQEs (not submitted yet).
    fn reap(&mut self) -> bool {
        let reaped: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (user_data, res) in reaped {
            // Completing only schedules the waiting task: nothing here
            // re-enters the ring.
            self.slots.complete(user_data, res);
        }
        self.fill_sq();
        !self.ring.submission().is_empty()
    }

    fn fill_sq(&mut self) {
        // A full queue (not expected: in-kernel ops are capped below its
        // size) leaves the rest in the backlog for the next turn.
        let _ = self.slots.fill_sq(&mut self.ring);
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let ended = || io::Error::other("the thread serving this IO ended");
        if self.slots.fail_all(&ended) {
            // The runtime ended with IOs in the kernel: their buffers were
            // leaked, and so is the ring, so that the kernel never writes
            // into freed memory.
            return;
        }
        // SAFETY: dropped once, here; nothing uses the ring afterwards.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// The reaper: one turn each time the eventfd fires, until the ring fails.
/// It ends with the runtime (the thread-local keeps the ring until then).
async fn reap(ring: Rc<LocalRing>) {
    // However the reaper ends (the ring failed, or its runtime dropped it),
    // IO on this thread goes back to the shared ring.
    let _leave = Leave(Rc::clone(&ring));
    loop {
        let mut guard = match ring.eventfd.readable().await {
            Ok(g) => g,
            Err(e) => {
                ring.fail(&e);
                break;
            }
        };
        // Cleared before the turn: a completion after this fires again.
        guard.clear_ready();
        drop(guard);
        ring.drain_eventfd();
        if let Err(e) = ring.turn() {
            ring.fail(&e);
            break;
        }
    }
}

/// Closes the thread's ring and uninstalls it.
struct Leave(Rc<LocalRing>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.closed.set(true);
        let _ = RING.try_with(|r| r.borrow_mut().take());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::io::{AlignedBuf, Backend, Device, DeviceOptions};

    /// Runs `f` on a fresh thread with a single-threaded runtime and a
    /// LocalSet, like a replica's session shard.
    fn on_shard_thread<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio::task::LocalSet::new().block_on(&rt, f());
        })
        .join()
        .unwrap();
    }

    /// The io_uring backend, or `None` (saying SKIP) where it is refused.
    fn uring_or_skip() -> Option<Backend> {
        match Backend::uring() {
            Ok(backend) => Some(backend),
            Err(e) => {
                cstor_testkit::skip(
                    cstor_testkit::Need::IoUring,
                    format!("io_uring refused on this machine: {e}"),
                );
                None
            }
        }
    }

    /// Installs this thread's ring and spawns its reaper; false (saying
    /// SKIP) where the kernel refuses such a ring.
    fn install_or_skip() -> bool {
        match install_thread_ring() {
            Ok(reaper) => {
                tokio::task::spawn_local(reaper);
                true
            }
            Err(e) => {
                cstor_testkit::skip(
                    cstor_testkit::Need::IoUring,
                    format!("no thread ring here: {e}"),
                );
                false
            }
        }
    }

    fn pattern(len: usize, seed: u8) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(len);
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        buf
    }

    #[test]
    fn io_on_a_thread_with_its_own_ring_goes_through_it() {
        let Some(backend) = uring_or_skip() else {
            return;
        };
        on_shard_thread(move || async move {
            assert_eq!(thread_ring_submitted(), None);
            if !install_or_skip() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let dev = backend
                .open(&dir.path().join("d"), &DeviceOptions::create(8 << 20))
                .unwrap();
            // Many IOs at once: more than the ring has entries, so some wait
            // in the backlog and go in as others complete.
            let blocks = 600usize;
            let writes: Vec<_> = (0..blocks)
                .map(|i| dev.write_at(pattern(4096, i as u8), (i * 4096) as u64))
                .map(tokio::task::spawn_local)
                .collect();
            for write in writes {
                write.await.unwrap().0.unwrap();
            }
            dev.sync_data().await.unwrap();
            let reads: Vec<_> = (0..blocks)
                .map(|i| dev.read_at(AlignedBuf::zeroed(4096), (i * 4096) as u64))
                .map(tokio::task::spawn_local)
                .collect();
            for (i, read) in reads.into_iter().enumerate() {
                let (result, buf) = read.await.unwrap();
                result.unwrap();
                assert_eq!(
                    buf.as_slice(),
                    pattern(4096, i as u8).as_slice(),
                    "block {i}"
                );
            }
            // Every IO above (600 writes, 1 fdatasync, 600 reads) went
            // through this thread's ring.
            assert_eq!(thread_ring_submitted(), Some(2 * blocks as u64 + 1));
            // An error still comes back as an error: a read past the end.
            let (result, _) = dev.read_at(AlignedBuf::zeroed(4096), 8 << 20).await;
            assert!(result.is_err());
        });
    }

    /// A buffered read of a cached page completes inside the submit: its
    /// future is ready on the first poll, without a turn of the reaper.
    #[test]
    fn a_page_cache_hit_completes_on_the_first_poll() {
        use std::task::{Context, Poll, Waker};
        let Some(backend) = uring_or_skip() else {
            return;
        };
        on_shard_thread(move || async move {
            if !install_or_skip() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let options = DeviceOptions::create(1 << 20).with_direct(crate::io::DirectIo::Off);
            let dev = backend.open(&dir.path().join("d"), &options).unwrap();
            let (r, _) = dev.write_at(pattern(4096, 9), 8192).await;
            r.unwrap();
            let before = thread_ring_submitted().unwrap();
            let mut read = dev.read_at(AlignedBuf::zeroed(4096), 8192);
            match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready((r, buf)) => {
                    r.unwrap();
                    assert_eq!(buf.as_slice(), pattern(4096, 9).as_slice());
                }
                Poll::Pending => panic!("a page-cache hit waited for the reaper"),
            }
            assert_eq!(thread_ring_submitted(), Some(before + 1));
        });
    }

    #[test]
    fn when_its_runtime_ends_the_thread_goes_back_to_the_shared_ring() {
        let Some(backend) = uring_or_skip() else {
            return;
        };
        std::thread::spawn(move || {
            let dir = tempfile::tempdir().unwrap();
            let dev = backend
                .open(&dir.path().join("d"), &DeviceOptions::create(1 << 20))
                .unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            let installed = local.block_on(&rt, async {
                let Ok(reaper) = install_thread_ring() else {
                    return false;
                };
                tokio::task::spawn_local(reaper);
                let (r, _) = dev.write_at(pattern(4096, 7), 0).await;
                r.unwrap();
                true
            });
            if !installed {
                eprintln!("SKIP: no thread ring here");
                return;
            }
            drop(local);
            assert_eq!(thread_ring_submitted(), None, "the ring stays installed");
            // A new runtime on the same thread, without a ring: the shared
            // ring serves it.
            rt.block_on(async {
                let (r, buf) = dev.read_at(AlignedBuf::zeroed(4096), 0).await;
                r.unwrap();
                assert_eq!(buf.as_slice(), pattern(4096, 7).as_slice());
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn outside_a_runtime_no_ring_is_installed() {
        assert!(install_thread_ring().is_err());
        assert_eq!(thread_ring_submitted(), None);
    }
}
