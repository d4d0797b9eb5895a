//! Arrival-order admission of a volume's IOs.
//!
//! The target sends writes in io_seq order and pipelines them; the replica
//! runs them concurrently for speed, so it must not let two of them that
//! touch the same bytes overtake each other. Every IO is *admitted* by the
//! connection's read loop, in arrival order, before its task is spawned;
//! admission records which earlier, still running IOs it must wait for:
//!
//! - a write waits for every earlier read or write that overlaps it;
//! - a read waits for every earlier write that overlaps it (it must see
//!   them), never for other reads;
//! - a flush waits for every earlier write (it makes them durable);
//! - a barrier (snapshot, resize) waits for everything earlier, and
//!   everything later waits for it.
//!
//! IOs that do not conflict run in parallel. Completion is signalled by
//! dropping the [`Ticket`], so a task that fails or is cancelled can never
//! leave a later IO waiting forever.
//!
//! Invariant: the number of tracked IOs is bounded by the caller's in-flight
//! limit (see `limits`), so the linear conflict scan stays small.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

pub mod watermark;

use watermark::Watermark;

/// What an IO does, for conflict purposes. Ranges are in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoKind {
    Read(Range<u64>),
    Write(Range<u64>),
    Flush,
    Barrier,
}

impl IoKind {
    fn writes(&self) -> Option<&Range<u64>> {
        match self {
            IoKind::Write(r) => Some(r),
            _ => None,
        }
    }

    /// Must an IO of kind `self`, arriving later, wait for `earlier`?
    fn must_wait_for(&self, earlier: &IoKind) -> bool {
        match (self, earlier) {
            (IoKind::Barrier, _) | (_, IoKind::Barrier) => true,
            (IoKind::Flush, e) => e.writes().is_some(),
            (IoKind::Write(r), IoKind::Write(e) | IoKind::Read(e)) => overlaps(r, e),
            (IoKind::Read(r), IoKind::Write(e)) => overlaps(r, e),
            _ => false,
        }
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Admission state of one volume.
#[derive(Debug, Default, Clone)]
pub struct IoOrder {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    running: BTreeMap<u64, Running>,
    /// Completion of the mutating requests admitted with an io_seq.
    watermark: Watermark,
}

#[derive(Debug)]
struct Running {
    kind: IoKind,
    done: watch::Receiver<()>,
}

/// An admitted IO. Await [`Ticket::ready`] before doing the IO; drop the
/// ticket when the IO is finished (successfully or not).
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    order: Arc<Mutex<State>>,
    wait_for: Vec<watch::Receiver<()>>,
    /// The io_seq of a mutating request (`admit_mutation`), and whether it
    /// succeeded (`Ticket::succeeded`): reported to the watermark on drop.
    io_seq: Option<u64>,
    ok: bool,
    /// A rerun ([`IoOrder::admit_mutation`]).
    reruns: bool,
    // Dropped with the ticket: wakes every later IO waiting for this one.
    _done: watch::Sender<()>,
}

impl IoOrder {
    pub fn new() -> Self {
        Self::default()
    }

    /// An order for a volume whose engine records it complete through
    /// `durable` (its watermark starts there, not at 0: a watermark
    /// published before any write must not claim less than is true).
    pub fn starting_at(durable: u64) -> Self {
        let order = Self::default();
        order.inner.lock().watermark = Watermark::starting_at(durable);
        order
    }

    /// Admits an IO after every IO admitted before it. Call in arrival
    /// order, from one task per volume stream.
    pub fn admit(&self, kind: IoKind) -> Ticket {
        self.admit_inner(kind, None)
    }

    /// [`IoOrder::admit`] for a mutating request of the target numbered
    /// `io_seq`: the watermark counts it running until the ticket drops,
    /// and failed unless [`Ticket::succeeded`] was called.
    ///
    /// A rerun — `io_seq` at or below the watermark, a write this replica
    /// completed (or got from a rebuild) and is sent again — lowers the
    /// watermark below it until it is done (it may put older data back
    /// over newer until the later reruns follow): [`Ticket::reruns`].
    pub fn admit_mutation(&self, kind: IoKind, io_seq: u64) -> Ticket {
        self.admit_inner(kind, Some(io_seq))
    }

    /// The completion watermark (`watermark` module doc).
    pub fn complete_io_seq(&self) -> u64 {
        self.inner.lock().watermark.complete_through()
    }

    /// Calls `publish` with the completion watermark, under the order's
    /// lock: two publishers never record their values out of order (a
    /// value read before a rerun lowered it is never recorded after).
    pub fn publish_watermark<T>(&self, publish: impl FnOnce(u64) -> T) -> T {
        let state = self.inner.lock();
        publish(state.watermark.complete_through())
    }

    /// A rebuild of this replica from `from_io_seq` started.
    pub fn hold_watermark(&self, from_io_seq: u64) {
        self.inner.lock().watermark.hold(from_io_seq);
    }

    /// A rebuild of this replica finished through `through_io_seq`.
    pub fn rebuilt_through(&self, through_io_seq: u64) {
        self.inner.lock().watermark.rebuilt(through_io_seq);
    }

    fn admit_inner(&self, kind: IoKind, io_seq: Option<u64>) -> Ticket {
        let (tx, rx) = watch::channel(());
        let mut state = self.inner.lock();
        let mut reruns = false;
        if let Some(io_seq) = io_seq {
            reruns = io_seq <= state.watermark.complete_through();
            state.watermark.admit(io_seq);
        }
        let wait_for = state
            .running
            .values()
            .filter(|r| kind.must_wait_for(&r.kind))
            .map(|r| r.done.clone())
            .collect();
        let id = state.next_id;
        state.next_id += 1;
        state.running.insert(id, Running { kind, done: rx });
        Ticket {
            id,
            order: Arc::clone(&self.inner),
            wait_for,
            io_seq,
            ok: false,
            reruns,
            _done: tx,
        }
    }

    /// Number of admitted IOs not yet finished.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().running.len()
    }
}

impl Ticket {
    /// Resolves once every earlier conflicting IO has finished.
    /// Cancel-safe: a wait that is dropped half-way keeps what is left.
    pub async fn ready(&mut self) {
        while let Some(rx) = self.wait_for.last_mut() {
            // `changed` fails once the sender (the earlier ticket) is
            // dropped; nothing is ever sent, so that is the only wake-up.
            while rx.changed().await.is_ok() {}
            self.wait_for.pop();
        }
    }
}

impl Ticket {
    /// The IO was executed and succeeded (see [`IoOrder::admit_mutation`]).
    pub fn succeeded(&mut self) {
        self.ok = true;
    }

    /// Was this mutation admitted as a rerun of one the watermark had
    /// passed ([`IoOrder::admit_mutation`])? Its owner makes the lowered
    /// watermark durable before running it.
    pub fn reruns(&self) -> bool {
        self.reruns
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.order.lock();
        state.running.remove(&self.id);
        if let Some(io_seq) = self.io_seq {
            state.watermark.finish(io_seq, self.ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_of_a_completed_write_lowers_the_watermark_until_it_is_done() {
        let order = IoOrder::starting_at(150);
        assert_eq!(order.complete_io_seq(), 150, "starts where the engine was");
        let mut rerun = order.admit_mutation(IoKind::Write(0..512), 140);
        assert!(rerun.reruns());
        assert_eq!(order.complete_io_seq(), 139);
        let new = order.admit_mutation(IoKind::Write(4096..4608), 200);
        assert!(!new.reruns(), "a write above the watermark is no rerun");
        rerun.succeeded();
        drop(rerun);
        assert_eq!(order.complete_io_seq(), 199, "200 still runs");
        drop(new);
        assert_eq!(order.complete_io_seq(), 199, "200 failed: held below it");
        assert_eq!(order.publish_watermark(|h| h), 199);
    }
    use std::time::Duration;
    use tokio::time::timeout;

    const SHORT: Duration = Duration::from_millis(50);

    async fn is_ready(t: &mut Ticket) -> bool {
        timeout(SHORT, t.ready()).await.is_ok()
    }

    #[tokio::test]
    async fn overlapping_write_waits_for_earlier_write_until_it_is_dropped() {
        let order = IoOrder::new();
        let mut first = order.admit(IoKind::Write(0..4096));
        let mut second = order.admit(IoKind::Write(2048..8192));
        assert!(is_ready(&mut first).await);
        assert!(!is_ready(&mut second).await);
        drop(first);
        assert!(is_ready(&mut second).await);
    }

    #[tokio::test]
    async fn disjoint_writes_and_concurrent_reads_do_not_wait() {
        let order = IoOrder::new();
        let _w = order.admit(IoKind::Write(0..4096));
        let _r1 = order.admit(IoKind::Read(8192..12288));
        let mut r2 = order.admit(IoKind::Read(8192..12288));
        let mut w2 = order.admit(IoKind::Write(4096..8192));
        assert!(is_ready(&mut r2).await);
        assert!(is_ready(&mut w2).await);
    }

    #[tokio::test]
    async fn read_waits_for_overlapping_write_and_write_for_overlapping_read() {
        let order = IoOrder::new();
        let w = order.admit(IoKind::Write(0..4096));
        let mut r = order.admit(IoKind::Read(0..512));
        assert!(!is_ready(&mut r).await);
        drop(w);
        assert!(is_ready(&mut r).await);
        let mut w2 = order.admit(IoKind::Write(0..512));
        assert!(!is_ready(&mut w2).await);
        drop(r);
        assert!(is_ready(&mut w2).await);
    }

    #[tokio::test]
    async fn flush_waits_for_all_earlier_writes_but_not_reads_or_later_writes() {
        let order = IoOrder::new();
        let w1 = order.admit(IoKind::Write(0..4096));
        let _r = order.admit(IoKind::Read(1 << 20..(1 << 20) + 4096));
        let mut flush = order.admit(IoKind::Flush);
        let mut later = order.admit(IoKind::Write(1 << 30..(1 << 30) + 4096));
        assert!(is_ready(&mut later).await);
        assert!(!is_ready(&mut flush).await);
        drop(w1);
        assert!(is_ready(&mut flush).await);
    }

    #[tokio::test]
    async fn barrier_orders_everything_around_it() {
        let order = IoOrder::new();
        let r = order.admit(IoKind::Read(0..512));
        let mut barrier = order.admit(IoKind::Barrier);
        let mut after = order.admit(IoKind::Read(1 << 20..(1 << 20) + 512));
        assert!(!is_ready(&mut barrier).await);
        assert!(!is_ready(&mut after).await);
        drop(r);
        assert!(is_ready(&mut barrier).await);
        assert!(!is_ready(&mut after).await);
        drop(barrier);
        assert!(is_ready(&mut after).await);
        assert_eq!(order.in_flight(), 1);
    }

    #[tokio::test]
    async fn a_dropped_unstarted_ticket_releases_its_waiters() {
        let order = IoOrder::new();
        let w1 = order.admit(IoKind::Write(0..4096));
        let w2 = order.admit(IoKind::Write(0..4096));
        let mut w3 = order.admit(IoKind::Write(0..4096));
        drop(w2); // cancelled before it ran
        assert!(!is_ready(&mut w3).await);
        drop(w1);
        assert!(is_ready(&mut w3).await);
    }

    #[tokio::test]
    async fn a_cancelled_wait_keeps_waiting_for_the_rest() {
        let order = IoOrder::new();
        let w1 = order.admit(IoKind::Write(0..4096));
        let w2 = order.admit(IoKind::Write(0..4096));
        let mut w3 = order.admit(IoKind::Write(0..4096));
        drop(w1);
        assert!(!is_ready(&mut w3).await); // gave up while still waiting on w2
        assert!(!is_ready(&mut w3).await);
        drop(w2);
        assert!(is_ready(&mut w3).await);
    }
}
