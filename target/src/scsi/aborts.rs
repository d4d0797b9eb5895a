//! Commands aborted while their block request runs: PREEMPT AND ABORT
//! (SPC-4 §5.13.11.2.7) aborts the tasks of every I_T nexus it preempts,
//! and a LOGICAL UNIT RESET (SAM-5 §7.6) every task of the unit, whichever
//! session of the target they came in on.
//!
//! The logical unit is the one place every session's commands pass through
//! (`execute` to start, `complete` to finish), so it decides here which
//! completions are aborted: each block request it issues carries a
//! [`Stamp`] (its nexus, and the abort generation when it was issued); a
//! PREEMPT AND ABORT opens a new generation and records it for each
//! preempted nexus, a reset opens one for every nexus; a completion is
//! aborted when its nexus was preempted, or the unit reset, after it was
//! issued. A command issued after the preemption is a new
//! task, answered as usual (its nexus first sees REGISTRATIONS PREEMPTED).
//!
//! Bound: at most [`MAX_NEXUSES`] nexuses are remembered, the one preempted
//! longest ago is forgotten first (by then its commands have long ended).

use std::collections::BTreeMap;

use super::limits::MAX_NEXUSES;
use super::nexus::Nexus;

/// Where and when a block request was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    nexus: Nexus,
    generation: u64,
}

/// The nexuses whose commands PREEMPT AND ABORT aborted, and when.
#[derive(Debug, Default)]
pub(crate) struct Aborts {
    /// Counts PREEMPT AND ABORTs that preempted some nexus.
    generation: u64,
    /// The generation at which each nexus was last preempted and aborted.
    preempted: BTreeMap<Nexus, u64>,
    /// The generation of the last reset of the unit: every request issued
    /// before it is aborted.
    reset_at: u64,
}

impl Aborts {
    /// The stamp of a block request `nexus` issues now.
    pub(crate) fn stamp(&self, nexus: &Nexus) -> Stamp {
        Stamp {
            nexus: nexus.clone(),
            generation: self.generation,
        }
    }

    /// Aborts every command `victims` have in flight now.
    pub(crate) fn abort(&mut self, victims: &[Nexus]) {
        if victims.is_empty() {
            return;
        }
        self.generation += 1;
        for victim in victims {
            self.make_room_for(victim);
            self.preempted.insert(victim.clone(), self.generation);
        }
    }

    /// Aborts every command in flight now, of every nexus (a LOGICAL UNIT
    /// RESET or a target warm reset).
    pub(crate) fn abort_every(&mut self) {
        self.generation += 1;
        self.reset_at = self.generation;
    }

    /// Whether the request stamped `stamp` was aborted since it was issued.
    pub(crate) fn is_aborted(&self, stamp: &Stamp) -> bool {
        stamp.generation < self.reset_at
            || self
                .preempted
                .get(&stamp.nexus)
                .is_some_and(|at| *at > stamp.generation)
    }

    /// Forgets the nexus preempted longest ago if `nexus` would not fit.
    fn make_room_for(&mut self, nexus: &Nexus) {
        if self.preempted.len() < MAX_NEXUSES || self.preempted.contains_key(nexus) {
            return;
        }
        let oldest = self
            .preempted
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(n, _)| n.clone());
        if let Some(oldest) = oldest {
            self.preempted.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: usize) -> Nexus {
        Nexus::new(&format!("iqn.test,i,0x{i:012x}"), 1)
    }

    #[test]
    fn a_request_issued_before_its_nexus_was_preempted_is_aborted() {
        let mut aborts = Aborts::default();
        let before = aborts.stamp(&n(1));
        let other = aborts.stamp(&n(2));
        aborts.abort(&[n(1)]);
        assert!(aborts.is_aborted(&before));
        assert!(!aborts.is_aborted(&other), "another nexus's request");
    }

    #[test]
    fn a_request_issued_after_the_preemption_is_not_aborted() {
        let mut aborts = Aborts::default();
        aborts.abort(&[n(1)]);
        let after = aborts.stamp(&n(1));
        assert!(!aborts.is_aborted(&after));
        aborts.abort(&[n(2)]);
        assert!(!aborts.is_aborted(&after), "a later preemption of another");
        aborts.abort(&[n(1)]);
        assert!(aborts.is_aborted(&after), "a second preemption of its own");
    }

    #[test]
    fn a_reset_aborts_every_nexus_request_issued_before_it_and_none_after() {
        let mut aborts = Aborts::default();
        let (one, two) = (aborts.stamp(&n(1)), aborts.stamp(&n(2)));
        aborts.abort_every();
        assert!(aborts.is_aborted(&one) && aborts.is_aborted(&two));
        let after = aborts.stamp(&n(1));
        assert!(!aborts.is_aborted(&after));
        aborts.abort(&[n(2)]);
        assert!(!aborts.is_aborted(&after), "a later preemption of another");
    }

    #[test]
    fn a_preemption_without_victims_opens_no_generation() {
        let mut aborts = Aborts::default();
        aborts.abort(&[]);
        assert_eq!(aborts.generation, 0);
    }

    #[test]
    fn the_table_is_bounded_forgetting_the_oldest_preemption() {
        let mut aborts = Aborts::default();
        let first = aborts.stamp(&n(0));
        for i in 0..MAX_NEXUSES {
            aborts.abort(&[n(i)]);
        }
        let second = aborts.stamp(&n(1));
        assert!(aborts.is_aborted(&first));
        aborts.abort(&[n(MAX_NEXUSES)]);
        assert_eq!(aborts.preempted.len(), MAX_NEXUSES);
        assert!(
            !aborts.is_aborted(&first),
            "forgotten: preempted longest ago"
        );
        aborts.abort(&[n(1)]);
        assert!(aborts.is_aborted(&second), "a known nexus needs no room");
        assert_eq!(aborts.preempted.len(), MAX_NEXUSES);
    }
}
