//! The io_uring backend: one ring per [`Backend`](super::Backend), serviced
//! by a dedicated thread, fed from any thread — except threads that own a
//! ring of their own (`local`), whose IO goes there.
//!
//! Job: run reads, writes, fdatasyncs and hole punches through io_uring with
//! few syscalls per IO. Submitters push an [`Op`] on a shared queue and wake
//! the ring thread through an eventfd only if it is asleep in
//! `io_uring_enter`; the ring thread moves every queued op into the
//! submission queue at once, submits and waits in one syscall, and
//! completes each op's oneshot from its completion entry.
//!
//! Invariants:
//! - An op (which owns its buffer and an `Arc` of its file, so the fd stays
//!   open) lives in the slab from the moment its SQE is pushed until its CQE
//!   is reaped: the kernel never sees a freed buffer or a closed fd. If the
//!   ring itself fails, ops still in the kernel are leaked, never freed.
//! - At most `entries - 1` ops are in the kernel, plus the eventfd read, so
//!   neither queue overflows; at most `max_queued` ops are accepted
//!   (semaphore permits owned by the op), submitters wait beyond.
//! - A short read or write is resubmitted for the remainder; a read that
//!   reaches end of file fails with `UnexpectedEof`. `EINTR`/`EAGAIN` on a
//!   read or write is retried at most [`MAX_RETRIES`] times; fsync is never
//!   retried.
//! - The thread exits once the [`Ring`] is dropped and every op is done.
//!
//! Spec: io_uring(7), io_uring_enter(2) (IORING_OP_READ/WRITE 5.6,
//! IORING_OP_FSYNC with IORING_FSYNC_DATASYNC, IORING_OP_FALLOCATE 5.6).

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_uring::{opcode, register::Probe, squeue, types, IoUring};
use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::file::{advisory, BackingFile};
use super::{AlignedBuf, BufResult, IoError, IoFuture};

mod local;
pub use local::{install_thread_ring, thread_ring_submitted};

/// Retries of a read or write that failed with `EINTR` or `EAGAIN`.
pub const MAX_RETRIES: u32 = 16;
/// Largest length of one read/write SQE (the SQE length is a `u32`); larger
/// buffers complete in several SQEs, like a short IO.
const MAX_SQE_BYTES: usize = 1 << 30;
/// user_data of the eventfd read; ops use their slab index.
const WAKE_TOKEN: u64 = u64::MAX;

/// One ring and the handle on its servicing thread.
pub(crate) struct Ring {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
}

/// What submitters and the ring thread share.
struct Shared {
    /// Ops accepted but not yet in the submission queue; `None` once the
    /// ring thread has stopped (no op may be queued after that).
    queue: Mutex<Option<Vec<Op>>>,
    /// Set by the ring thread before it sleeps in `io_uring_enter`.
    sleeping: AtomicBool,
    /// Set when the [`Ring`] is dropped.
    shutdown: AtomicBool,
    /// Written to wake the ring thread.
    eventfd: File,
}

impl Shared {
    fn wake(&self) {
        signal_eventfd(self.eventfd.as_raw_fd());
    }
}

/// An IO accepted by the ring.
struct Op {
    kind: OpKind,
    file: Arc<BackingFile>,
    retries: u32,
    _permit: OwnedSemaphorePermit,
}

enum OpKind {
    Read {
        buf: AlignedBuf,
        offset: u64,
        done_bytes: usize,
        tx: oneshot::Sender<BufResult>,
    },
    Write {
        buf: AlignedBuf,
        offset: u64,
        done_bytes: usize,
        tx: oneshot::Sender<BufResult>,
    },
    Fsync {
        tx: oneshot::Sender<io::Result<()>>,
    },
    PunchHole {
        offset: u64,
        len_bytes: u64,
        tx: oneshot::Sender<io::Result<()>>,
    },
}

impl Op {
    /// Completes the caller's future with `result`.
    fn finish(self, result: io::Result<()>) {
        let Op {
            kind,
            file,
            _permit: permit,
            ..
        } = self;
        // Release the file and the queue slot before waking the caller: a
        // caller that drops its device after the last IO must find the
        // backing store closed (its lock released) at once.
        drop(file);
        drop(permit);
        // A caller that stopped waiting does not care; the IO is over.
        match kind {
            OpKind::Read { buf, tx, .. } | OpKind::Write { buf, tx, .. } => {
                let _ = tx.send((result, buf));
            }
            OpKind::Fsync { tx } | OpKind::PunchHole { tx, .. } => {
                let _ = tx.send(result);
            }
        }
    }

    /// Fails an op the kernel may still be using: its buffer and file are
    /// leaked (never freed under the kernel), the caller gets a fresh
    /// buffer with the error.
    fn fail_in_kernel(self, err: io::Error) {
        let Op { kind, file, .. } = self;
        std::mem::forget(file);
        match kind {
            OpKind::Read { buf, tx, .. } | OpKind::Write { buf, tx, .. } => {
                let len = buf.len();
                std::mem::forget(buf);
                let _ = tx.send((Err(err), AlignedBuf::zeroed(len)));
            }
            OpKind::Fsync { tx } | OpKind::PunchHole { tx, .. } => {
                let _ = tx.send(Err(err));
            }
        }
    }

    /// The SQE for the rest of this op.
    fn sqe(&mut self, user_data: u64) -> io::Result<squeue::Entry> {
        let fd = types::Fd(self.file.raw_fd());
        let entry = match &mut self.kind {
            OpKind::Read {
                buf,
                offset,
                done_bytes,
                ..
            } => {
                let (ptr_offset, len, at) = remainder(buf.len(), *offset, *done_bytes)?;
                // SAFETY: `ptr_offset < buf.len()`, so the pointer stays in
                // the buffer's allocation; it is only handed to the kernel.
                let ptr = unsafe { buf.as_mut_ptr().add(ptr_offset) };
                opcode::Read::new(fd, ptr, len).offset(at).build()
            }
            OpKind::Write {
                buf,
                offset,
                done_bytes,
                ..
            } => {
                let (ptr_offset, len, at) = remainder(buf.len(), *offset, *done_bytes)?;
                // SAFETY: as for reads.
                let ptr = unsafe { buf.as_ptr().add(ptr_offset) };
                opcode::Write::new(fd, ptr, len).offset(at).build()
            }
            OpKind::Fsync { .. } => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            OpKind::PunchHole {
                offset, len_bytes, ..
            } => opcode::Fallocate::new(fd, *len_bytes)
                .offset(*offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
        };
        Ok(entry.user_data(user_data))
    }

    /// Takes a completion: `None` when the op is done (and completed),
    /// `Some(op)` when it must be resubmitted for the rest.
    fn complete(mut self, res: i32) -> Option<Op> {
        let retryable = res == -libc::EINTR || res == -libc::EAGAIN;
        let is_read = matches!(self.kind, OpKind::Read { .. });
        let is_rw = is_read || matches!(self.kind, OpKind::Write { .. });
        if is_rw && retryable && self.retries < MAX_RETRIES {
            self.retries += 1;
            return Some(self);
        }
        match &mut self.kind {
            OpKind::Read {
                buf, done_bytes, ..
            }
            | OpKind::Write {
                buf, done_bytes, ..
            } => {
                let progress = match usize::try_from(res) {
                    Err(_) => {
                        self.finish(Err(io::Error::from_raw_os_error(-res)));
                        return None;
                    }
                    Ok(0) => {
                        let err = if is_read {
                            io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
                        } else {
                            io::Error::new(io::ErrorKind::WriteZero, "write made no progress")
                        };
                        self.finish(Err(err));
                        return None;
                    }
                    Ok(n) => n,
                };
                let total = buf.len();
                match done_bytes.checked_add(progress) {
                    Some(d) if d < total => {
                        *done_bytes = d;
                        Some(self)
                    }
                    Some(d) if d == total => {
                        self.finish(Ok(()));
                        None
                    }
                    _ => {
                        self.finish(Err(io::Error::other(
                            "kernel reported more bytes than asked",
                        )));
                        None
                    }
                }
            }
            OpKind::Fsync { .. } => {
                let result = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(())
                };
                self.finish(result);
                None
            }
            OpKind::PunchHole { .. } => {
                let result = if res < 0 {
                    advisory(Err(io::Error::from_raw_os_error(-res)))
                } else {
                    Ok(())
                };
                self.finish(result);
                None
            }
        }
    }
}

/// Buffer offset, SQE length and file offset of what is left of an IO.
fn remainder(total: usize, offset: u64, done: usize) -> io::Result<(usize, u32, u64)> {
    let left = total
        .checked_sub(done)
        .filter(|&l| l > 0)
        .ok_or_else(|| io::Error::other("no bytes left to submit"))?;
    let len = u32::try_from(left.min(MAX_SQE_BYTES)).map_err(io::Error::other)?;
    let at = u64::try_from(done)
        .ok()
        .and_then(|d| offset.checked_add(d))
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok((done, len, at))
}

impl Ring {
    /// Checks that this process may create a ring with every opcode the
    /// backend uses (seccomp, `kernel.io_uring_disabled` and kernels before
    /// 5.6 refuse).
    pub(crate) fn probe() -> io::Result<()> {
        build_ring(2, false).map(drop)
    }

    /// A ring of `entries` SQEs and its thread; at most `max_queued` ops are
    /// accepted at once.
    pub(crate) fn new(entries: u32, max_queued: usize) -> Result<Self, IoError> {
        if entries < 2 || max_queued == 0 || max_queued > Semaphore::MAX_PERMITS {
            return Err(IoError::InvalidConfig(format!(
                "ring of {entries} entries and {max_queued} queued ops"
            )));
        }
        // Blocking eventfd: io_uring polls it; O_NONBLOCK would make the
        // armed read fail with EAGAIN instead of waiting.
        // SAFETY: plain syscall, no memory passed.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(IoError::UringUnavailable {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `efd` is a fresh fd that nothing else owns.
        let eventfd = unsafe { File::from_raw_fd(efd) };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Some(Vec::new())),
            sleeping: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            eventfd,
        });
        let thread_shared = Arc::clone(&shared);
        let capacity =
            usize::try_from(entries - 1).map_err(|e| IoError::InvalidConfig(e.to_string()))?;
        // The ring is created on its own thread: a single-issuer ring
        // belongs to the thread that created it.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("cstor-uring".into())
            .spawn(move || {
                let ring = build_ring(entries, true).or_else(|_| build_ring(entries, false));
                match ring {
                    Ok(ring) => {
                        let _ = ready_tx.send(Ok(()));
                        RingThread::new(ring, thread_shared, capacity).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| IoError::Spawn { source })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(IoError::UringUnavailable { source }),
            Err(_) => {
                return Err(IoError::UringUnavailable {
                    source: io::Error::other("io_uring thread exited during setup"),
                })
            }
        }
        Ok(Self {
            shared,
            permits: Arc::new(Semaphore::new(max_queued)),
        })
    }

    /// Queues an op built by `make` once a slot is free; resolves with
    /// what the op's oneshot receives.
    fn submit<T: Send + 'static>(
        self: &Arc<Self>,
        file: Arc<BackingFile>,
        make: impl FnOnce(oneshot::Sender<T>) -> OpKind + Send + 'static,
        on_gone: impl FnOnce(io::Error, Option<OpKind>) -> T + Send + 'static,
    ) -> IoFuture<T> {
        // The future keeps the ring alive: an IO asked for before the last
        // handle was dropped still runs.
        let ring = Arc::clone(self);
        Box::pin(async move {
            let shared = &ring.shared;
            let permits = Arc::clone(&ring.permits);
            let Ok(permit) = permits.acquire_owned().await else {
                return on_gone(ring_gone(), None);
            };
            let (tx, rx) = oneshot::channel();
            let op = Op {
                kind: make(tx),
                file,
                retries: 0,
                _permit: permit,
            };
            // On a thread that owns a ring of its own (a session shard),
            // the IO goes there: submitted and reaped by this thread, no
            // hand-off to the ring thread (`local`).
            let Err(op) = local::try_submit(op) else {
                return match rx.await {
                    Ok(v) => v,
                    Err(_) => on_gone(ring_gone(), None),
                };
            };
            {
                let mut queue = shared.queue.lock();
                match queue.as_mut() {
                    Some(q) => q.push(op),
                    None => return on_gone(ring_gone(), Some(op.kind)),
                }
            }
            if shared.sleeping.swap(false, Ordering::SeqCst) {
                shared.wake();
            }
            match rx.await {
                Ok(v) => v,
                Err(_) => on_gone(ring_gone(), None),
            }
        })
    }

    pub(crate) fn read(
        self: &Arc<Self>,
        file: Arc<BackingFile>,
        buf: AlignedBuf,
        offset: u64,
    ) -> IoFuture<BufResult> {
        let len = buf.len();
        self.submit(
            file,
            move |tx| OpKind::Read {
                buf,
                offset,
                done_bytes: 0,
                tx,
            },
            move |e, kind| (Err(e), give_back(kind, len)),
        )
    }

    pub(crate) fn write(
        self: &Arc<Self>,
        file: Arc<BackingFile>,
        buf: AlignedBuf,
        offset: u64,
    ) -> IoFuture<BufResult> {
        let len = buf.len();
        self.submit(
            file,
            move |tx| OpKind::Write {
                buf,
                offset,
                done_bytes: 0,
                tx,
            },
            move |e, kind| (Err(e), give_back(kind, len)),
        )
    }

    pub(crate) fn sync_data(self: &Arc<Self>, file: Arc<BackingFile>) -> IoFuture<io::Result<()>> {
        self.submit(file, |tx| OpKind::Fsync { tx }, |e, _| Err(e))
    }

    pub(crate) fn punch_hole(
        self: &Arc<Self>,
        file: Arc<BackingFile>,
        offset: u64,
        len_bytes: u64,
    ) -> IoFuture<io::Result<()>> {
        if len_bytes == 0 {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.submit(
            file,
            move |tx| OpKind::PunchHole {
                offset,
                len_bytes,
                tx,
            },
            |e, _| Err(e),
        )
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.wake();
    }
}

/// The buffer of an op that never ran, or a fresh one of the same length.
fn give_back(kind: Option<OpKind>, len: usize) -> AlignedBuf {
    match kind {
        Some(OpKind::Read { buf, .. }) | Some(OpKind::Write { buf, .. }) => buf,
        _ => AlignedBuf::zeroed(len),
    }
}

/// Adds 1 to an eventfd's counter. A failure (counter overflow, impossible
/// at 1 per signal) only loses a wake-up that is already pending.
fn signal_eventfd(fd: std::os::fd::RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from `one`, alive for the call, to `fd`.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), std::mem::size_of::<u64>()) };
}

fn ring_gone() -> io::Error {
    io::Error::other("io_uring backend has shut down")
}

/// Creates a ring and checks the opcodes the backend needs. With `tuned`,
/// asks for the flags that fit one thread owning the ring (single issuer,
/// cooperative and deferred task work: fewer interrupts and context
/// switches per completion, kernel 6.1+); the caller falls back to a plain
/// ring if they are refused.
fn build_ring(entries: u32, tuned: bool) -> io::Result<IoUring> {
    build_ring_with(entries, |builder| {
        if tuned {
            builder
                .setup_single_issuer()
                .setup_coop_taskrun()
                // Flags pending completion work in the SQ ring, so that even
                // a submit-only enter (want 0) runs it instead of letting
                // completions wait for the next sleep.
                .setup_taskrun_flag()
                .setup_defer_taskrun();
        }
    })
}

/// Creates a ring set up by `configure` (besides a completion queue twice
/// the size) and checks the opcodes the backend needs.
fn build_ring_with(
    entries: u32,
    configure: impl FnOnce(&mut io_uring::Builder),
) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    builder.setup_cqsize(entries.saturating_mul(2));
    configure(&mut builder);
    let ring = builder.build(entries)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for code in [
        opcode::Read::CODE,
        opcode::Write::CODE,
        opcode::Fsync::CODE,
        opcode::Fallocate::CODE,
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring opcode {code} unsupported by this kernel"),
            ));
        }
    }
    Ok(ring)
}

/// The ops of one ring: those in the kernel, by slab index (= their
/// user_data), and those waiting for a slot. Shared by the ring thread and
/// the thread rings (`local`).
struct Slots {
    slab: Vec<Option<Op>>,
    free: Vec<usize>,
    backlog: VecDeque<Op>,
}

impl Slots {
    /// Room for `capacity` ops in the kernel.
    fn new(capacity: usize) -> Self {
        Self {
            slab: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
            backlog: VecDeque::new(),
        }
    }

    fn in_kernel(&self) -> usize {
        self.slab.len() - self.free.len()
    }

    fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Moves backlog ops into free slots and their SQEs into `ring`'s
    /// submission queue (not submitted yet). False if the queue was full.
    fn fill_sq(&mut self, ring: &mut IoUring) -> bool {
        while let Some(idx) = self.free.pop() {
            let Some(mut op) = self.backlog.pop_front() else {
                self.free.push(idx);
                break;
            };
            let entry = match op.sqe(idx as u64) {
                Ok(e) => e,
                Err(e) => {
                    self.free.push(idx);
                    op.finish(Err(e));
                    continue;
                }
            };
            // SAFETY: the entry points into `op`'s buffer and fd; `op` is
            // stored in `slab[idx]` right below and stays there until the
            // CQE with this user_data is reaped (or is leaked, never
            // freed), so both outlive the IO.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_err() {
                self.free.push(idx);
                self.backlog.push_front(op);
                return false;
            }
            if let Some(slot) = self.slab.get_mut(idx) {
                *slot = Some(op);
            }
        }
        true
    }

    /// Takes the completion of the op in slot `user_data`: finishes it, or
    /// puts it first in the backlog to resubmit the rest.
    fn complete(&mut self, user_data: u64, res: i32) {
        let Ok(idx) = usize::try_from(user_data) else {
            return;
        };
        let Some(op) = self.slab.get_mut(idx).and_then(Option::take) else {
            tracing::error!(user_data, "io_uring completion for an unknown op");
            return;
        };
        self.free.push(idx);
        if let Some(op) = op.complete(res) {
            self.backlog.push_front(op);
        }
    }

    /// Fails every op: waiting ones plainly, ones in the kernel with their
    /// buffers and files leaked. True if some were in the kernel.
    fn fail_all(&mut self, err: &dyn Fn() -> io::Error) -> bool {
        for op in self.backlog.drain(..) {
            op.finish(Err(err()));
        }
        let in_kernel: Vec<Op> = self.slab.iter_mut().filter_map(Option::take).collect();
        self.free = (0..self.slab.len()).rev().collect();
        let any = !in_kernel.is_empty();
        for op in in_kernel {
            op.fail_in_kernel(err());
        }
        any
    }
}

/// State owned by the ring thread.
struct RingThread {
    ring: IoUring,
    shared: Arc<Shared>,
    /// Ops in the kernel, and ops taken from the queue (or to resubmit)
    /// waiting for a free slot.
    slots: Slots,
    /// Target of the eventfd read while it is armed; boxed so its address
    /// is stable.
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Completions of one reap, reused to avoid an allocation per batch.
    reaped: Vec<(u64, i32)>,
}

impl RingThread {
    fn new(ring: IoUring, shared: Arc<Shared>, capacity: usize) -> Self {
        Self {
            ring,
            shared,
            slots: Slots::new(capacity),
            wake_buf: Box::new(0),
            wake_armed: false,
            reaped: Vec::with_capacity(capacity + 1),
        }
    }

    fn run(mut self) {
        if let Err(e) = self.run_loop() {
            tracing::error!(error = %e, "io_uring ring failed; failing queued IOs");
            self.abandon(e);
        }
    }

    fn run_loop(&mut self) -> io::Result<()> {
        loop {
            let shutdown = self.shared.shutdown.load(Ordering::SeqCst);
            if !shutdown && !self.wake_armed {
                self.arm_wake()?;
            }
            self.take_queue(shutdown);
            self.fill_sq()?;
            if shutdown
                && self.slots.backlog.is_empty()
                && self.slots.in_kernel() == 0
                && !self.wake_armed
            {
                return Ok(());
            }
            // Sleep only if nobody queued meanwhile (see `Ring::submit`).
            self.shared.sleeping.store(true, Ordering::SeqCst);
            let queued = self
                .shared
                .queue
                .lock()
                .as_ref()
                .is_some_and(|q| !q.is_empty());
            // Don't sleep while there is work that fits in the ring.
            let work = queued || !self.slots.backlog.is_empty();
            let want = if work && self.slots.has_free() { 0 } else { 1 };
            let entered = if want == 0 {
                self.ring.submit()
            } else {
                self.ring.submit_and_wait(want)
            };
            self.shared.sleeping.store(false, Ordering::SeqCst);
            match entered {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            self.reap();
        }
    }

    /// Moves every queued op to the backlog; on shutdown closes the queue.
    fn take_queue(&mut self, shutdown: bool) {
        let mut queue = self.shared.queue.lock();
        if let Some(q) = queue.as_mut() {
            self.slots.backlog.extend(q.drain(..));
        }
        if shutdown {
            *queue = None;
        }
    }

    /// Pushes backlog ops into free slots of the submission queue.
    fn fill_sq(&mut self) -> io::Result<()> {
        if !self.slots.fill_sq(&mut self.ring) {
            // The SQ is full (not expected: in-kernel ops are capped below
            // its size); submit what is there and retry later.
            self.ring.submit()?;
        }
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let ptr: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(self.shared.eventfd.as_raw_fd()), ptr.cast(), 8)
            .build()
            .user_data(WAKE_TOKEN);
        // SAFETY: `wake_buf` is a heap allocation owned by `self`, which
        // outlives the read: the thread never exits (nor drops `self`)
        // while `wake_armed` is set, and a ring failure leaks `self`.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("io_uring submission queue stuck full"))?;
        }
        self.wake_armed = true;
        Ok(())
    }

    /// Takes every completion, finishing or resubmitting its op.
    fn reap(&mut self) {
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        for (user_data, res) in reaped.drain(..) {
            if user_data == WAKE_TOKEN {
                self.wake_armed = false;
                continue;
            }
            self.slots.complete(user_data, res);
        }
        self.reaped = reaped;
    }

    /// The ring is unusable: fail every op. Ops still in the kernel have
    /// their buffers and files leaked (the kernel may still use them), and
    /// so do the ring and the eventfd read's target.
    fn abandon(mut self, err: io::Error) {
        let fail = || io::Error::new(err.kind(), err.to_string());
        self.shared
            .queue
            .lock()
            .take()
            .into_iter()
            .flatten()
            .for_each(|op| op.finish(Err(fail())));
        self.slots.fail_all(&fail);
        std::mem::forget(self.wake_buf);
        std::mem::forget(self.ring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::DeviceOptions;

    /// An op on a real (unused) file, and the receiver of its result.
    fn read_op(len: usize) -> (Op, oneshot::Receiver<BufResult>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file =
            BackingFile::open(&dir.path().join("f"), &DeviceOptions::create(1 << 20)).unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let (tx, rx) = oneshot::channel();
        let op = Op {
            kind: OpKind::Read {
                buf: AlignedBuf::zeroed(len),
                offset: 4096,
                done_bytes: 0,
                tx,
            },
            file: Arc::new(file),
            retries: 0,
            _permit: permit,
        };
        (op, rx, dir)
    }

    fn done_bytes(op: &Op) -> usize {
        match op.kind {
            OpKind::Read { done_bytes, .. } | OpKind::Write { done_bytes, .. } => done_bytes,
            _ => panic!("not a read or write"),
        }
    }

    #[test]
    fn remainder_continues_where_the_short_io_stopped() {
        assert_eq!(remainder(8192, 4096, 0).unwrap(), (0, 8192, 4096));
        assert_eq!(remainder(8192, 4096, 512).unwrap(), (512, 7680, 4608));
        assert!(remainder(8192, 0, 8192).is_err(), "nothing left");
        assert!(remainder(8192, u64::MAX, 512).is_err(), "offset overflow");
        let (_, len, _) = remainder(3 << 30, 0, 0).unwrap();
        assert_eq!(len as usize, MAX_SQE_BYTES, "one SQE is capped");
    }

    #[test]
    fn short_read_is_resubmitted_then_completes() {
        let (op, mut rx, _dir) = read_op(8192);
        let op = op.complete(4096).expect("resubmitted for the rest");
        assert_eq!(done_bytes(&op), 4096);
        let mut op = op;
        let sqe = op.sqe(3).unwrap();
        assert_eq!(sqe.get_user_data(), 3);
        assert!(op.complete(4096).is_none());
        let (r, buf) = rx.try_recv().unwrap();
        r.unwrap();
        assert_eq!(buf.len(), 8192);
    }

    #[test]
    fn read_at_end_of_file_is_unexpected_eof() {
        let (op, mut rx, _dir) = read_op(8192);
        let op = op.complete(512).unwrap();
        assert!(op.complete(0).is_none());
        let (r, _) = rx.try_recv().unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn eagain_is_retried_a_bounded_number_of_times() {
        let (mut op, mut rx, _dir) = read_op(4096);
        for _ in 0..MAX_RETRIES {
            op = op.complete(-libc::EAGAIN).expect("retried");
        }
        assert!(op.complete(-libc::EAGAIN).is_none());
        let (r, _) = rx.try_recv().unwrap();
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EAGAIN));
    }

    #[test]
    fn eio_and_overlong_completions_fail_the_op() {
        let (op, mut rx, _dir) = read_op(4096);
        assert!(op.complete(-libc::EIO).is_none());
        assert_eq!(
            rx.try_recv().unwrap().0.unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        let (op, mut rx, _dir) = read_op(4096);
        assert!(op.complete(8192).is_none());
        assert!(rx.try_recv().unwrap().0.is_err());
    }

    #[test]
    fn fsync_errors_are_never_retried() {
        let (op, _rx, _dir) = read_op(4096);
        let (tx, mut rx) = oneshot::channel();
        let op = Op {
            kind: OpKind::Fsync { tx },
            ..op
        };
        assert!(op.complete(-libc::EINTR).is_none());
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err().raw_os_error(),
            Some(libc::EINTR)
        );
    }
}
