//! The blocking backend: a bounded pool of worker threads doing
//! `pread`/`pwrite`/`fdatasync`/discard, results back through oneshots.
//!
//! Job: run blocking calls off the async executor, with a cap on what is
//! queued. Used where io_uring is refused (seccomp, old kernel) and, next to
//! io_uring, for the few calls io_uring has no opcode for (BLKDISCARD).
//!
//! Invariants:
//! - At most `max_queued` jobs are queued or running at once: a job holds a
//!   semaphore permit from before it is queued until it finished, so
//!   submitters wait (asynchronously) instead of growing the queue.
//! - Workers exit when the last [`ThreadPool`] handle is dropped and the
//!   queue is drained; a queued job always runs (it owns its buffer).

use std::io;
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};

use super::IoError;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of blocking worker threads fed by a bounded queue.
pub(crate) struct ThreadPool {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
}

impl ThreadPool {
    /// Starts `workers` threads named `name-N`; at most `max_queued` jobs
    /// may be queued or running.
    pub(crate) fn new(name: &str, workers: usize, max_queued: usize) -> Result<Self, IoError> {
        if workers == 0 || max_queued < workers || max_queued > Semaphore::MAX_PERMITS {
            return Err(IoError::InvalidConfig(format!(
                "thread pool of {workers} workers and {max_queued} queued jobs"
            )));
        }
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&rx))
                .map_err(|source| IoError::Spawn { source })?;
        }
        Ok(Self {
            jobs,
            permits: Arc::new(Semaphore::new(max_queued)),
        })
    }

    /// Runs `f` on a worker and resolves to its result. Waits for a queue
    /// slot first. `Err` only if the pool is gone (its workers died).
    pub(crate) fn run<T, F>(&self, f: F) -> impl std::future::Future<Output = io::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permits = Arc::clone(&self.permits);
        let jobs = self.jobs.clone();
        async move {
            let permit = permits.acquire_owned().await.map_err(|_| pool_gone())?;
            let (tx, rx) = oneshot::channel();
            let job: Job = Box::new(move || {
                let out = f();
                drop(permit);
                // The caller may have stopped waiting; the IO is done anyway.
                let _ = tx.send(out);
            });
            jobs.send(job).map_err(|_| pool_gone())?;
            rx.await.map_err(|_| pool_gone())
        }
    }
}

fn pool_gone() -> io::Error {
    io::Error::other("IO thread pool has shut down")
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // Hold the lock only while waiting for the next job, not while
        // running it, so the other workers can take the following ones.
        let job = rx.lock().recv();
        match job {
            Ok(job) => job(),
            Err(mpsc::RecvError) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn rejects_empty_or_inconsistent_bounds() {
        assert!(ThreadPool::new("t", 0, 4).is_err());
        assert!(ThreadPool::new("t", 4, 2).is_err());
        assert!(ThreadPool::new("t", 2, 4).is_ok());
    }

    #[tokio::test]
    async fn runs_every_job_and_returns_its_result() {
        let pool = ThreadPool::new("t", 3, 4).unwrap();
        let futs: Vec<_> = (0..100u64).map(|i| pool.run(move || i * 2)).collect();
        for (i, f) in futs.into_iter().enumerate() {
            assert_eq!(f.await.unwrap(), i as u64 * 2);
        }
    }

    #[tokio::test]
    async fn never_more_jobs_running_than_the_queue_bound() {
        let pool = ThreadPool::new("t", 4, 4).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let futs: Vec<_> = (0..64)
            .map(|_| {
                let running = Arc::clone(&running);
                let peak = Arc::clone(&peak);
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::yield_now();
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for f in futs {
            f.await.unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 4);
        assert!(peak.load(Ordering::SeqCst) >= 1);
    }
}
