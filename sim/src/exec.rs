//! A deterministic single-threaded executor and simulated clock.
//!
//! Job: poll the futures of the real async code the simulator runs (the
//! engine, the replica's session core and rebuild, the target's block
//! requests) without a runtime. Tasks are polled in the order they were
//! woken (a FIFO of task ids), ids are never reused, and nothing reads the
//! wall clock, so a run is a function of its seed.
//!
//! Invariants:
//! - a task is polled only after a wake (or once at spawn), and never after
//!   it finished or its node was killed;
//! - [`Clock::sleep`] completes exactly when the scheduler has moved the
//!   simulated time to or past its deadline ([`Clock::fire_due`]);
//! - every task belongs to a node ([`NodeId`]): killing a node (a crash)
//!   drops its futures where they stand, as a power cut stops a process.

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use parking_lot::Mutex;

/// Which simulated process a task belongs to.
pub type NodeId = u32;

type Task = (NodeId, Pin<Box<dyn Future<Output = ()>>>);

struct TaskWaker {
    id: u64,
    ready: Arc<Mutex<VecDeque<u64>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.ready.lock().push_back(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.lock().push_back(self.id);
    }
}

/// The task set of one run.
pub struct Executor {
    tasks: BTreeMap<u64, Task>,
    ready: Arc<Mutex<VecDeque<u64>>>,
    next_id: u64,
    /// Polls made so far (a measure of work, part of the trace).
    pub polls: u64,
}

impl Default for Executor {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor {
    pub fn new() -> Self {
        Executor {
            tasks: BTreeMap::new(),
            ready: Arc::new(Mutex::new(VecDeque::new())),
            next_id: 0,
            polls: 0,
        }
    }

    /// Starts `future` as a task of `node`; it is first polled by the next
    /// [`Executor::run_ready`].
    pub fn spawn(&mut self, node: NodeId, future: impl Future<Output = ()> + 'static) {
        let id = self.next_id;
        self.next_id += 1;
        self.tasks.insert(id, (node, Box::pin(future)));
        self.ready.lock().push_back(id);
    }

    /// Drops every task of `node` (a crash: nothing of it runs again).
    pub fn kill(&mut self, node: NodeId) {
        let ids: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, (n, _))| *n == node)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            // Dropping a future may wake others (channels closing): fine,
            // they are polled by the next run.
            self.tasks.remove(&id);
        }
    }

    /// Live tasks, in total and of one node.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn tasks_of(&self, node: NodeId) -> usize {
        self.tasks.values().filter(|(n, _)| *n == node).count()
    }

    /// Polls woken tasks until none is woken; returns how many polls ran.
    pub fn run_ready(&mut self) -> u64 {
        let mut polled = 0;
        loop {
            let next = self.ready.lock().pop_front();
            let Some(id) = next else {
                return polled;
            };
            let Some((node, mut future)) = self.tasks.remove(&id) else {
                continue; // finished, killed, or woken twice
            };
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                ready: Arc::clone(&self.ready),
            }));
            let mut cx = Context::from_waker(&waker);
            polled += 1;
            self.polls += 1;
            if future.as_mut().poll(&mut cx).is_pending() {
                self.tasks.insert(id, (node, future));
            }
        }
    }
}

/// Simulated time: microseconds since the run began, and the sleepers.
#[derive(Clone, Default)]
pub struct Clock {
    inner: Arc<ClockInner>,
}

#[derive(Default)]
struct ClockInner {
    now_us: AtomicU64,
    next_seq: AtomicU64,
    /// (deadline, seq) → waker, earliest first (a min-heap via Reverse).
    sleepers: Mutex<BinaryHeap<std::cmp::Reverse<(u64, u64, WakerSlot)>>>,
}

/// A waker in the heap; ordered by nothing (deadline and seq decide).
struct WakerSlot(Arc<Mutex<SleepState>>);

impl PartialEq for WakerSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for WakerSlot {}
impl PartialOrd for WakerSlot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for WakerSlot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

#[derive(Default)]
struct SleepState {
    fired: bool,
    waker: Option<Waker>,
}

impl Clock {
    pub fn now_us(&self) -> u64 {
        self.inner.now_us.load(Ordering::SeqCst)
    }

    /// Moves time forward (never back).
    pub fn advance_to(&self, us: u64) {
        self.inner.now_us.fetch_max(us, Ordering::SeqCst);
    }

    /// The earliest deadline of a sleeper, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.inner.sleepers.lock().peek().map(|r| r.0 .0)
    }

    /// Wakes every sleeper whose deadline has come; returns how many.
    pub fn fire_due(&self) -> usize {
        let now = self.now_us();
        let mut fired = 0;
        loop {
            let slot = {
                let mut heap = self.inner.sleepers.lock();
                match heap.peek() {
                    Some(r) if r.0 .0 <= now => heap.pop().map(|r| r.0 .2),
                    _ => None,
                }
            };
            let Some(WakerSlot(state)) = slot else {
                return fired;
            };
            let waker = {
                let mut s = state.lock();
                s.fired = true;
                s.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
            fired += 1;
        }
    }

    /// Completes once simulated time reached now + `d`.
    pub fn sleep(&self, d: Duration) -> Sleep {
        let deadline = self
            .now_us()
            .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let state = Arc::new(Mutex::new(SleepState::default()));
        let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
        self.inner.sleepers.lock().push(std::cmp::Reverse((
            deadline,
            seq,
            WakerSlot(Arc::clone(&state)),
        )));
        Sleep { state }
    }
}

/// A pending [`Clock::sleep`].
pub struct Sleep {
    state: Arc<Mutex<SleepState>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state.lock();
        if s.fired {
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn sleepers_wake_in_deadline_order_and_killed_tasks_never_run() {
        let clock = Clock::default();
        let mut exec = Executor::new();
        let log = Rc::new(RefCell::new(Vec::new()));
        for (node, ms) in [(1, 30u64), (2, 10), (3, 20)] {
            let clock2 = clock.clone();
            let log2 = Rc::clone(&log);
            exec.spawn(node, async move {
                clock2.sleep(Duration::from_millis(ms)).await;
                log2.borrow_mut().push(node);
            });
        }
        exec.run_ready();
        exec.kill(3);
        while let Some(t) = clock.next_deadline() {
            clock.advance_to(t);
            clock.fire_due();
            exec.run_ready();
        }
        assert_eq!(*log.borrow(), vec![2, 1]);
        assert!(exec.is_empty());
    }
}
