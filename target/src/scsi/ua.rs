//! Unit attention conditions, queued per I_T nexus (SAM-5 §5.14, SPC-4
//! §5.14 with UA_INTLCK_CTRL = 00b).
//!
//! A nexus seen for the first time starts with POWER ON, RESET, OR BUS
//! DEVICE RESET OCCURRED. Events (LUN reset, capacity change, mode page
//! change, reservation preempted/released) queue a condition for the
//! nexuses they concern. The logical unit reports the oldest pending
//! condition as CHECK CONDITION / UNIT ATTENTION on any command except
//! INQUIRY, REPORT LUNS and REQUEST SENSE, which clears it; REQUEST SENSE
//! returns it as its sense data and clears it too.
//!
//! Bounds: at most [`MAX_NEXUSES`] nexuses are tracked (a nexus beyond that
//! is served without unit attentions) and at most
//! [`MAX_UNIT_ATTENTIONS_PER_NEXUS`] conditions per nexus (the oldest is
//! dropped first); a condition already queued is not queued twice.

use std::collections::{BTreeMap, VecDeque};

use super::limits::{MAX_NEXUSES, MAX_UNIT_ATTENTIONS_PER_NEXUS};
use super::nexus::Nexus;
use super::sense::Asc;

#[derive(Debug, Default)]
pub struct UnitAttentions {
    queues: BTreeMap<Nexus, VecDeque<Asc>>,
}

impl UnitAttentions {
    /// Registers `nexus` on first sight (with a power-on condition).
    fn queue_of(&mut self, nexus: &Nexus) -> Option<&mut VecDeque<Asc>> {
        if !self.queues.contains_key(nexus) {
            if self.queues.len() >= MAX_NEXUSES {
                return None;
            }
            self.queues
                .insert(nexus.clone(), VecDeque::from([Asc::POWER_ON_RESET]));
        }
        self.queues.get_mut(nexus)
    }

    /// Oldest pending condition of `nexus`, removed from its queue.
    pub fn take(&mut self, nexus: &Nexus) -> Option<Asc> {
        self.queue_of(nexus)?.pop_front()
    }

    /// Oldest pending condition of `nexus`, left in place.
    pub fn peek(&mut self, nexus: &Nexus) -> Option<Asc> {
        self.queue_of(nexus)?.front().copied()
    }

    /// Queues `asc` for `nexus` (which is registered if new).
    pub fn push(&mut self, nexus: &Nexus, asc: Asc) {
        if let Some(queue) = self.queue_of(nexus) {
            Self::push_into(queue, asc);
        }
    }

    /// Queues `asc` for every known nexus except `except`.
    pub fn broadcast(&mut self, asc: Asc, except: Option<&Nexus>) {
        for (nexus, queue) in self.queues.iter_mut() {
            if Some(nexus) != except {
                Self::push_into(queue, asc);
            }
        }
    }

    fn push_into(queue: &mut VecDeque<Asc>, asc: Asc) {
        if queue.contains(&asc) {
            return;
        }
        if queue.len() >= MAX_UNIT_ATTENTIONS_PER_NEXUS {
            queue.pop_front();
        }
        queue.push_back(asc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u32) -> Nexus {
        Nexus::new(&format!("iqn.test,i,0x{i:012x}"), 1)
    }

    #[test]
    fn new_nexus_sees_power_on_once() {
        let mut ua = UnitAttentions::default();
        assert_eq!(ua.take(&n(1)), Some(Asc::POWER_ON_RESET));
        assert_eq!(ua.take(&n(1)), None);
    }

    #[test]
    fn broadcast_skips_the_originator_and_deduplicates() {
        let mut ua = UnitAttentions::default();
        ua.take(&n(1));
        ua.take(&n(2));
        ua.broadcast(Asc::CAPACITY_DATA_HAS_CHANGED, Some(&n(1)));
        ua.broadcast(Asc::CAPACITY_DATA_HAS_CHANGED, Some(&n(1)));
        assert_eq!(ua.take(&n(1)), None);
        assert_eq!(ua.take(&n(2)), Some(Asc::CAPACITY_DATA_HAS_CHANGED));
        assert_eq!(ua.take(&n(2)), None);
    }

    #[test]
    fn queue_is_bounded_dropping_the_oldest() {
        let mut ua = UnitAttentions::default();
        let first = n(1);
        ua.take(&first);
        for q in 0..=MAX_UNIT_ATTENTIONS_PER_NEXUS as u8 {
            ua.push(&first, Asc::new(0x2a, q));
        }
        assert_eq!(ua.take(&first), Some(Asc::new(0x2a, 1)));
    }

    #[test]
    fn nexus_table_is_bounded() {
        let mut ua = UnitAttentions::default();
        for i in 0..MAX_NEXUSES as u32 {
            ua.take(&n(i));
        }
        let extra = n(MAX_NEXUSES as u32);
        assert_eq!(ua.take(&extra), None);
        assert_eq!(ua.queues.len(), MAX_NEXUSES);
    }
}
