//! Which accepted connections the target serves (docs/architecture.md,
//! invariant 9): at most `total` at once, and at most `per_source` from
//! one source IP address, counted from accept (before login) until the
//! connection ends. A connection over either cap is closed at once, so
//! that idle connections from one host cannot take every slot.
//!
//! No IO: a table of counts behind a lock, and a [`Slot`] per admitted
//! connection that gives its place back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::limits::{MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE};
use crate::metrics::Refusal;

/// The connection caps of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections at once.
    pub total: usize,
    /// Connections at once from one source IP address.
    pub per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            total: MAX_CONNECTIONS,
            per_source: MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// The connections a target serves now, by source.
#[derive(Debug)]
pub struct ConnectionTable {
    limits: ConnectionLimits,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    source: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnectionTable {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// A place for a connection from `source`, or the cap it is over.
    pub fn admit(&self, source: IpAddr) -> Result<Slot, Refusal> {
        let mut counts = self.counts.lock();
        if counts.total >= self.limits.total {
            return Err(Refusal::Total);
        }
        let from_source = counts.by_source.entry(source).or_insert(0);
        if *from_source >= self.limits.per_source {
            return Err(Refusal::PerSource);
        }
        *from_source += 1;
        counts.total += 1;
        Ok(Slot {
            source,
            counts: Arc::clone(&self.counts),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_source_over_its_cap_is_refused_others_are_not() {
        let table = ConnectionTable::new(ConnectionLimits {
            total: 10,
            per_source: 2,
        });
        let a1 = table.admit(ip(1));
        let a2 = table.admit(ip(1));
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(table.admit(ip(1)).err(), Some(Refusal::PerSource));
        let b = table.admit(ip(2));
        assert!(b.is_ok(), "another source still gets in");
        drop(a1);
        assert!(table.admit(ip(1)).is_ok(), "a closed one frees its place");
        assert_eq!(table.open(), 2);
    }

    #[test]
    fn the_total_cap_holds_across_sources_and_slots_come_back() {
        let table = ConnectionTable::new(ConnectionLimits {
            total: 3,
            per_source: 3,
        });
        let slots: Vec<_> = (1..=3).map(|i| table.admit(ip(i))).collect();
        assert!(slots.iter().all(Result::is_ok));
        assert_eq!(table.admit(ip(9)).err(), Some(Refusal::Total));
        drop(slots);
        assert_eq!(table.open(), 0);
        assert!(table.counts.lock().by_source.is_empty(), "no entry leaks");
        assert!(table.admit(ip(9)).is_ok());
    }
}
