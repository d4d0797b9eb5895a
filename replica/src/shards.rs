//! Session shards: every replication connection is served by one of N
//! threads, each running its own single-threaded tokio runtime.
//!
//! Why: a session is a chain of tasks (read loop → one task per request →
//! writer). On a work-stealing runtime each hand-off along that chain may
//! wake another worker thread, and on a small machine those wake-ups are
//! most of what a 4 KiB request costs (docs/benchmarks.md, "Where a 4 KiB
//! read spends its time": 4.1 context switches per read in the workers with
//! two of them, 2.0 with one). On a shard the whole chain runs on one
//! thread; several connections (several volumes, rebuild streams) still
//! spread over the shards.
//!
//! - A connection goes to the shard serving the fewest connections now.
//! - Tasks a session spawns (`tokio::spawn`) run on its shard.
//! - Each shard has an io_uring ring of its own where the kernel allows
//!   (`cstor_engine::io::install_thread_ring`): a request's disk IO is
//!   submitted and reaped by the shard's thread, not handed to the pool's
//!   ring thread.
//! - [`Shards::stop`] ends every shard runtime (tasks still there are
//!   dropped) and joins the threads; the daemon calls it after its
//!   connections have finished.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most shards a daemon runs.
pub const MAX_SHARDS: usize = 64;

/// The shard threads of a daemon.
pub struct Shards {
    shards: Vec<Shard>,
    stop: CancellationToken,
}

struct Shard {
    handle: Handle,
    /// Connections served by this shard now.
    load: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shards {
    /// Starts `count` shard threads (1..=[`MAX_SHARDS`]).
    pub fn start(count: usize) -> std::io::Result<Self> {
        if count == 0 || count > MAX_SHARDS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{count} shards: between 1 and {MAX_SHARDS}"),
            ));
        }
        let stop = CancellationToken::new();
        let mut shards = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let stopped = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("cstor-shard-{i}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async {
                        // IO started on this thread is submitted and reaped
                        // here too (cstor_engine::io::install_thread_ring).
                        match cstor_engine::io::install_thread_ring() {
                            Ok(reaper) => {
                                tokio::task::spawn_local(reaper);
                            }
                            Err(e) => {
                                tracing::info!(error = %e, "no io_uring of its own for this shard; using the pool's ring");
                            }
                        }
                        stopped.cancelled().await;
                    });
                    // Dropping the runtime here drops the tasks left on it.
                    drop(local);
                    drop(runtime);
                });
            let thread = match thread {
                Ok(t) => t,
                Err(e) => {
                    // Stop the shards already started before reporting.
                    Self { shards, stop }.stop_blocking();
                    return Err(e);
                }
            };
            shards.push(Shard {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
                thread: Some(thread),
            });
        }
        Ok(Self { shards, stop })
    }

    /// How many shards there are.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: there is at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Runs the future `make` builds on the least loaded shard, tracked by
    /// `tracker`. `make` runs on the shard, so it may register IO objects
    /// with the shard's reactor (e.g. `TcpStream::from_std`).
    pub fn spawn<F, Fut>(&self, tracker: &TaskTracker, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(shard) = self
            .shards
            .iter()
            .min_by_key(|s| s.load.load(Ordering::Relaxed))
        else {
            return;
        };
        let load = Arc::clone(&shard.load);
        load.fetch_add(1, Ordering::Relaxed);
        let guard = LoadGuard(load);
        let token = tracker.token();
        shard.handle.spawn(async move {
            let _guard = guard;
            let _token = token;
            make().await;
        });
    }

    /// Ends every shard and joins its thread (blocking; from async code run
    /// it with `spawn_blocking`).
    pub fn stop_blocking(mut self) {
        self.stop.cancel();
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take() {
                if thread.join().is_err() {
                    tracing::error!("a shard thread panicked");
                }
            }
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        // Threads not joined (stop_blocking not called) still end.
        self.stop.cancel();
    }
}

/// Counts a connection on its shard while it is served.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_string()
    }

    #[tokio::test]
    async fn connections_spread_over_the_shards_and_their_tasks_stay_on_one() {
        let shards = Shards::start(3).unwrap();
        let tracker = TaskTracker::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let release = CancellationToken::new();
        for _ in 0..3 {
            let (tx, release) = (tx.clone(), release.clone());
            shards.spawn(&tracker, move || async move {
                let own = thread_name();
                // A task the "session" spawns runs on the same thread.
                let spawned = tokio::spawn(async { thread_name() }).await.unwrap();
                tx.send((own, spawned)).unwrap();
                release.cancelled().await;
            });
        }
        let mut seen = HashSet::new();
        for _ in 0..3 {
            let (own, spawned) = rx.recv().await.unwrap();
            assert!(own.starts_with("cstor-shard-"), "{own}");
            assert_eq!(own, spawned, "a session's task left its shard");
            seen.insert(own);
        }
        // Each of the three long-lived connections went to its own shard.
        assert_eq!(seen.len(), 3, "{seen:?}");
        release.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("tracked tasks finish");
        tokio::task::spawn_blocking(move || shards.stop_blocking())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn stop_drops_tasks_still_running_and_joins() {
        let shards = Shards::start(1).unwrap();
        let tracker = TaskTracker::new();
        let dropped = Arc::new(AtomicUsize::new(0));
        struct OnDrop(Arc<AtomicUsize>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let d = Arc::clone(&dropped);
        shards.spawn(&tracker, move || async move {
            let _on_drop = OnDrop(d);
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        tokio::task::spawn_blocking(move || shards.stop_blocking())
            .await
            .unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        // The tracker's token went with the task.
        tracker.close();
        assert!(tracker.is_empty());
    }

    #[test]
    fn a_shard_count_out_of_bounds_is_refused() {
        assert!(Shards::start(0).is_err());
        assert!(Shards::start(MAX_SHARDS + 1).is_err());
    }
}
