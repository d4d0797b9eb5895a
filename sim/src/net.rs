//! The simulated network: connections with per-direction FIFO delivery
//! after seeded delays, resets, and partitions that heal.
//!
//! Invariants:
//! - on one connection, messages in one direction arrive in the order they
//!   were sent (a later one never overtakes an earlier one: TCP);
//! - nothing is delivered on a connection once it is closed, and both
//!   ends learn of the close (each at its own delay);
//! - a node cut off by a partition neither sends nor receives: its
//!   connections are reset when the partition starts, and dials to or from
//!   it fail until it heals.

use std::collections::{BTreeMap, BTreeSet};

use crate::rng::Rng;

/// One connection of the run (never reused).
pub type ConnId = u64;

/// Which end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// The end that dialled.
    Client,
    /// The end that accepted.
    Server,
}

impl End {
    pub fn other(self) -> End {
        match self {
            End::Client => End::Server,
            End::Server => End::Client,
        }
    }
}

/// A simulated host: initiators, the target, replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    Initiator(u32),
    Target,
    Replica(u32),
}

#[derive(Debug)]
struct Conn {
    client: Host,
    server: Host,
    open: bool,
    /// Ends that learnt of the close.
    learnt: BTreeSet<End>,
    /// Per direction (towards that end): when the last message arrives.
    last_arrival: BTreeMap<End, u64>,
}

/// Delays of the network, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub min_us: u64,
    pub max_us: u64,
    /// Percent of messages that take up to 20 × `max_us` (a slow path).
    pub slow_percent: u64,
}

/// Connections and partitions.
#[derive(Debug)]
pub struct Net {
    conns: BTreeMap<ConnId, Conn>,
    next: ConnId,
    cut_off: BTreeSet<Host>,
    pub latency: Latency,
    /// Extra delay of everything a host sends or receives (a slow node).
    slow: BTreeMap<Host, u64>,
    pub messages: u64,
}

impl Net {
    pub fn new(latency: Latency) -> Self {
        Net {
            conns: BTreeMap::new(),
            next: 1,
            cut_off: BTreeSet::new(),
            latency,
            slow: BTreeMap::new(),
            messages: 0,
        }
    }

    /// Dials: a new open connection, or `None` when either end is cut off.
    pub fn connect(&mut self, client: Host, server: Host) -> Option<ConnId> {
        if self.cut_off.contains(&client) || self.cut_off.contains(&server) {
            return None;
        }
        let id = self.next;
        self.next += 1;
        self.conns.insert(
            id,
            Conn {
                client,
                server,
                open: true,
                learnt: BTreeSet::new(),
                last_arrival: BTreeMap::new(),
            },
        );
        Some(id)
    }

    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.open)
    }

    /// The host at `end` of `conn`.
    pub fn host(&self, conn: ConnId, end: End) -> Option<Host> {
        self.conns.get(&conn).map(|c| match end {
            End::Client => c.client,
            End::Server => c.server,
        })
    }

    fn delay(&mut self, rng: &mut Rng, from: Host, to: Host) -> u64 {
        let l = self.latency;
        let mut d = rng.range(l.min_us, l.max_us);
        if rng.chance(l.slow_percent) {
            d += rng.range(l.max_us, 20 * l.max_us);
        }
        d + self.slow.get(&from).copied().unwrap_or(0) + self.slow.get(&to).copied().unwrap_or(0)
    }

    /// When a message sent now on `conn` towards `to` arrives (FIFO per
    /// direction), or `None` when the connection is closed.
    pub fn send(&mut self, rng: &mut Rng, now: u64, conn: ConnId, to: End) -> Option<u64> {
        let (from_host, to_host) = {
            let c = self.conns.get(&conn)?;
            if !c.open {
                return None;
            }
            match to {
                End::Server => (c.client, c.server),
                End::Client => (c.server, c.client),
            }
        };
        let d = self.delay(rng, from_host, to_host);
        let c = self.conns.get_mut(&conn)?;
        let last = c.last_arrival.get(&to).copied().unwrap_or(0);
        let at = (now + d).max(last);
        c.last_arrival.insert(to, at);
        self.messages += 1;
        Some(at)
    }

    /// Closes `conn`; returns when each end learns of it (after what was
    /// sent before the close arrived), or `None` if it was closed already.
    pub fn close(&mut self, rng: &mut Rng, now: u64, conn: ConnId) -> Option<[(End, u64); 2]> {
        let (client, server) = {
            let c = self.conns.get(&conn)?;
            if !c.open {
                return None;
            }
            (c.client, c.server)
        };
        let d1 = self.delay(rng, server, client);
        let d2 = self.delay(rng, client, server);
        let c = self.conns.get_mut(&conn)?;
        c.open = false;
        let at_client = (now + d1).max(c.last_arrival.get(&End::Client).copied().unwrap_or(0));
        let at_server = (now + d2).max(c.last_arrival.get(&End::Server).copied().unwrap_or(0));
        Some([(End::Client, at_client), (End::Server, at_server)])
    }

    /// `end` of the closed `conn` learnt of the close; once both did, the
    /// connection is forgotten.
    pub fn learnt_close(&mut self, conn: ConnId, end: End) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.open {
            return;
        }
        c.learnt.insert(end);
        if c.learnt.len() == 2 {
            self.conns.remove(&conn);
        }
    }

    /// Open connections touching `host`.
    pub fn conns_of(&self, host: Host) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.open && (c.client == host || c.server == host))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn cut(&mut self, host: Host) {
        self.cut_off.insert(host);
    }

    pub fn heal(&mut self, host: Host) {
        self.cut_off.remove(&host);
    }

    pub fn is_cut(&self, host: Host) -> bool {
        self.cut_off.contains(&host)
    }

    pub fn heal_all(&mut self) {
        self.cut_off.clear();
        self.slow.clear();
    }

    pub fn set_slow(&mut self, host: Host, extra_us: u64) {
        if extra_us == 0 {
            self.slow.remove(&host);
        } else {
            self.slow.insert(host, extra_us);
        }
    }

    /// The extra delay of `host` (0: not slow).
    pub fn slowness(&self, host: Host) -> u64 {
        self.slow.get(&host).copied().unwrap_or(0)
    }

    pub fn open_conns(&self) -> usize {
        self.conns.values().filter(|c| c.open).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_direction_is_fifo_and_a_closed_connection_delivers_nothing() {
        let mut rng = Rng::new(3);
        let mut net = Net::new(Latency {
            min_us: 10,
            max_us: 1000,
            slow_percent: 20,
        });
        let c = net.connect(Host::Target, Host::Replica(0)).unwrap_or(0);
        let mut last = 0;
        for now in 0..200 {
            let at = net.send(&mut rng, now, c, End::Server).unwrap_or(0);
            assert!(at >= last && at > now);
            last = at;
        }
        let ends = net.close(&mut rng, 300, c);
        assert!(ends.is_some_and(|e| e.iter().all(|(_, t)| *t >= 300)));
        assert_eq!(net.send(&mut rng, 301, c, End::Server), None);
        net.cut(Host::Replica(0));
        assert_eq!(net.connect(Host::Target, Host::Replica(0)), None);
        net.heal(Host::Replica(0));
        assert!(net.connect(Host::Target, Host::Replica(0)).is_some());
    }
}
