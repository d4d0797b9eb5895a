//! The completion watermark of a volume's mutating requests: the io_seq a
//! replica may call *complete through* (docs/architecture.md, invariant 6;
//! engine/FORMAT.md, "Durable io_seq is a completion watermark").
//!
//! Writes run concurrently, so the highest io_seq written is no such
//! bound: write 105 may finish while 103 (received before it, on the same
//! ordered TCP stream) is still running, and a crash then loses 103 although
//! 105 is durable. The watermark is instead the highest `H` such that every
//! mutating request admitted with an io_seq at most `H` finished
//! successfully:
//!
//! - `H` is at most the highest io_seq admitted (or rebuilt through);
//! - it stays below every admitted request still running — from this
//!   session or an earlier one: a fenced session's requests count once
//!   drained;
//! - it stays below every request that failed or was never executed
//!   (fenced), until the same io_seq succeeds (the target resends pending
//!   writes, same io_seq and data) or a rebuild covers it;
//! - while a rebuild of this replica runs it stays at most the rebuild's
//!   `from_io_seq`: io_seqs below the first live one are not sent to this
//!   replica but pulled from a peer, complete only when the rebuild is done.
//!
//! io_seqs are not dense per replica (flushes, reads and snapshots take
//! io_seqs too; a degraded replica misses writes), so `H` may jump over
//! io_seqs this replica never saw: the target sends a healthy replica every
//! write, and a degraded one starts its session with the rebuild (the hold
//! above) before any write. The engine records `H` at each commit (it only
//! grows there), so the durable io_seq a replica reports after a restart
//! never exceeds a write it may have lost.
//!
//! Bounded: running requests are bounded by the in-flight limit; failed
//! io_seqs beyond [`MAX_FAILED`] are folded into one lowest bound that only
//! a rebuild clears.

use std::collections::{BTreeMap, BTreeSet};

/// Failed io_seqs remembered one by one.
pub const MAX_FAILED: usize = 1024;

/// See the module doc.
#[derive(Debug, Default)]
pub struct Watermark {
    /// Highest io_seq admitted or rebuilt through.
    admitted: u64,
    /// Running requests by io_seq (a resent write may run twice).
    running: BTreeMap<u64, u32>,
    /// io_seqs that failed and have not succeeded since.
    failed: BTreeSet<u64>,
    /// The lowest failed io_seq forgotten when `failed` was full.
    overflow: Option<u64>,
    /// A rebuild of this replica runs from this io_seq.
    hold: Option<u64>,
}

impl Watermark {
    /// The watermark of a volume recorded complete through `durable`.
    pub fn starting_at(durable: u64) -> Self {
        Self {
            admitted: durable,
            ..Self::default()
        }
    }

    /// A mutating request of `io_seq` was admitted (arrival order).
    pub fn admit(&mut self, io_seq: u64) {
        self.admitted = self.admitted.max(io_seq);
        let n = self.running.entry(io_seq).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// The request of `io_seq` admitted before finished; `ok` when it was
    /// executed and succeeded.
    pub fn finish(&mut self, io_seq: u64, ok: bool) {
        if let Some(n) = self.running.get_mut(&io_seq) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(&io_seq);
            }
        }
        if ok {
            self.failed.remove(&io_seq);
        } else if self.failed.len() < MAX_FAILED {
            self.failed.insert(io_seq);
        } else {
            self.overflow = Some(self.overflow.map_or(io_seq, |o| o.min(io_seq)));
        }
    }

    /// A rebuild of this replica from `from_io_seq` started: nothing above
    /// it is complete until [`Watermark::rebuilt`].
    pub fn hold(&mut self, from_io_seq: u64) {
        self.hold = Some(self.hold.map_or(from_io_seq, |h| h.min(from_io_seq)));
    }

    /// A rebuild finished: this replica holds every write through
    /// `through_io_seq` (those still running excepted).
    pub fn rebuilt(&mut self, through_io_seq: u64) {
        self.hold = None;
        self.admitted = self.admitted.max(through_io_seq);
        self.failed = self.failed.split_off(&through_io_seq.saturating_add(1));
        if self.overflow.is_some_and(|o| o <= through_io_seq) {
            self.overflow = None;
        }
    }

    /// The watermark `H`.
    pub fn complete_through(&self) -> u64 {
        let below = |io_seq: u64| io_seq.saturating_sub(1);
        let mut h = self.admitted;
        if let Some(first) = self.running.keys().next() {
            h = h.min(below(*first));
        }
        if let Some(first) = self.failed.first() {
            h = h.min(below(*first));
        }
        if let Some(o) = self.overflow {
            h = h.min(below(o));
        }
        if let Some(from) = self.hold {
            h = h.min(from);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_running_write_keeps_the_watermark_below_it_even_when_later_ones_finished() {
        let mut w = Watermark::default();
        for s in [103, 104, 105] {
            w.admit(s);
        }
        w.finish(105, true);
        w.finish(104, true);
        assert_eq!(w.complete_through(), 102);
        w.finish(103, true);
        assert_eq!(w.complete_through(), 105);
    }

    #[test]
    fn a_failed_write_pins_the_watermark_until_its_resend_succeeds_or_a_rebuild() {
        let mut w = Watermark::default();
        w.admit(10);
        w.admit(11);
        w.finish(10, false);
        w.finish(11, true);
        assert_eq!(w.complete_through(), 9);
        w.admit(10);
        w.finish(10, true);
        assert_eq!(w.complete_through(), 11);
        w.admit(12);
        w.finish(12, false);
        assert_eq!(w.complete_through(), 11);
        w.rebuilt(20);
        assert_eq!(w.complete_through(), 20);
    }

    #[test]
    fn a_rebuild_holds_the_watermark_at_its_start_until_done() {
        let mut w = Watermark::default();
        w.hold(50);
        w.admit(900);
        w.finish(900, true);
        assert_eq!(w.complete_through(), 50);
        w.rebuilt(899);
        assert_eq!(w.complete_through(), 900);
    }

    #[test]
    fn overflowing_failures_pin_at_the_lowest_until_a_rebuild() {
        let mut w = Watermark::default();
        for s in 1..=(MAX_FAILED as u64 + 10) {
            w.admit(s);
        }
        for s in (1..=(MAX_FAILED as u64 + 10)).rev() {
            w.finish(s, false);
        }
        // The lowest failures were the ones past the bound.
        assert_eq!(w.complete_through(), 0);
        for s in 1..=(MAX_FAILED as u64 + 10) {
            w.admit(s);
            w.finish(s, true);
        }
        assert_eq!(
            w.complete_through(),
            0,
            "only a rebuild clears the overflow"
        );
        w.rebuilt(MAX_FAILED as u64 + 10);
        assert_eq!(w.complete_through(), MAX_FAILED as u64 + 10);
    }

    /// What happens to a replica, in the order the model applies it.
    #[derive(Debug, Clone)]
    enum Event {
        /// The target sends the next write, `gap` io_seqs after the last.
        Send { gap: u64 },
        /// A running write (the `pick`-th) finishes.
        Finish { pick: usize, ok: bool },
        /// The session is cut: every running write is fenced (finishes not
        /// executed) and the new session resends them.
        Reconnect,
        /// A commit: completed writes become durable, the watermark is
        /// recorded.
        Commit,
        /// The process dies: only committed writes survive. If it lost
        /// any, the target (seeing it behind its peers) opens the next
        /// session with a rebuild from the recorded io_seq, before any
        /// write.
        Crash,
        /// A rebuild runs to its end: every write sent that is not running
        /// here is copied from a peer (a running one is live: rebuilt data
        /// never overwrites it).
        Rebuild,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (1..4u64).prop_map(|gap| Event::Send { gap }),
            4 => (any::<usize>(), prop::bool::weighted(0.9))
                .prop_map(|(pick, ok)| Event::Finish { pick, ok }),
            1 => Just(Event::Reconnect),
            2 => Just(Event::Commit),
            1 => Just(Event::Crash),
            1 => Just(Event::Rebuild),
        ]
    }

    /// The oracle: per io_seq sent to the replica, whether it is applied
    /// (in memory) and durable.
    #[derive(Default)]
    struct Model {
        next: u64,
        /// io_seq → (applied, durable).
        writes: BTreeMap<u64, (bool, bool)>,
        /// Running requests, in arrival order.
        running: Vec<u64>,
        /// The io_seq the engine recorded (max of watermarks at commits).
        recorded: u64,
    }

    impl Model {
        /// The lowest write sent that the replica does not hold (in memory,
        /// or durably when `durable`).
        fn first_missing(&self, durable: bool) -> Option<u64> {
            self.writes
                .iter()
                .find(|(_, (applied, on_disk))| !if durable { *on_disk } else { *applied })
                .map(|(s, _)| *s)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The reported watermark (live, and recorded across crashes) never
        /// reaches a write sent to the replica that it does not hold.
        #[test]
        fn the_watermark_never_passes_a_missing_admitted_write(
            events in prop::collection::vec(event(), 1..120),
        ) {
            let mut m = Model::default();
            let mut w = Watermark::default();
            for e in events {
                match e {
                    Event::Send { gap } => {
                        m.next += gap;
                        m.writes.insert(m.next, (false, false));
                        m.running.push(m.next);
                        w.admit(m.next);
                    }
                    Event::Finish { pick, ok } => {
                        if !m.running.is_empty() {
                            let s = m.running.remove(pick % m.running.len());
                            if ok {
                                if let Some(st) = m.writes.get_mut(&s) {
                                    st.0 = true;
                                }
                            }
                            w.finish(s, ok);
                        }
                    }
                    Event::Reconnect => {
                        let fenced = std::mem::take(&mut m.running);
                        for s in &fenced {
                            w.admit(*s);
                        }
                        for s in &fenced {
                            w.finish(*s, false);
                        }
                        m.running = fenced;
                    }
                    Event::Commit => {
                        for st in m.writes.values_mut() {
                            st.1 |= st.0;
                        }
                        m.recorded = m.recorded.max(w.complete_through());
                    }
                    Event::Crash => {
                        m.running.clear();
                        for st in m.writes.values_mut() {
                            st.0 = st.1;
                        }
                        w = Watermark::default();
                        // What the replica reports after the restart.
                        if let Some(lost) = m.first_missing(true) {
                            prop_assert!(m.recorded < lost, "recorded {} but {lost} lost", m.recorded);
                            w.hold(m.recorded);
                        }
                    }
                    Event::Rebuild => {
                        w.hold(m.recorded);
                        for (s, st) in m.writes.iter_mut() {
                            st.0 |= !m.running.contains(s);
                        }
                        w.rebuilt(m.next);
                    }
                }
                if let Some(missing) = m.first_missing(false) {
                    let h = w.complete_through();
                    prop_assert!(h < missing, "watermark {h} but {missing} missing");
                }
                if let Some(lost) = m.first_missing(true) {
                    prop_assert!(m.recorded < lost, "recorded {} but {lost} not durable", m.recorded);
                }
            }
        }
    }
}
