//! The byte budgets that bound the IO data connections hold
//! (docs/architecture.md, invariant 9): one per connection, kept by the
//! session core ([`super::session::FullFeature`]), and one per target,
//! shared by every connection ([`ByteBudget`]).
//!
//! A command that moves data takes its Expected Data Transfer Length from
//! both before it holds any of it (a write before its R2Ts are sent, a read
//! before it is handed to the volume) and gives it back when it no longer
//! holds it (a write once the volume completed it, a read once its Data-In
//! was queued to the socket, either when it is aborted). A command that
//! finds either budget short waits, in arrival order, in the command
//! window, which closes: the initiator stops sending and TCP pushes back.
//!
//! Outside the budgets, bounded otherwise: the immediate data of a write
//! waiting for budget (at most FirstBurstLength, 64 KiB, per command of
//! the window), what the shell queued to the socket (one send batch and one
//! PDU), and the data a read produces beyond its Expected Data Transfer
//! Length when its CDB asks for more (at most `MAX_COMMAND_DATA_BYTES`;
//! only the expected length is sent).
//!
//! No IO and no clock here: the target budget is an atomic counter, and its
//! [`ByteBudget::subscribe`] channel tells a connection's shell that budget
//! was given back, so that the commands it holds wait no longer than that.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::limits::{MAX_CONNECTION_BUFFER_BYTES, MAX_TARGET_BUFFER_BYTES};

/// A budget of bytes shared by every connection of a target.
#[derive(Debug)]
pub struct ByteBudget {
    limit: u64,
    used: AtomicU64,
    /// Bumped whenever bytes are given back.
    freed: watch::Sender<u64>,
}

impl ByteBudget {
    /// A budget of `limit` bytes, none taken.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
            freed: watch::channel(0).0,
        }
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes taken now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if that keeps the budget within its bound.
    pub fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken before, and wakes whoever waits for budget.
    pub fn give_back(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
        self.freed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes whenever bytes are given back: a connection whose commands
    /// wait for this budget retries when it changes (mark it seen before
    /// retrying, so that no give-back is missed).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.freed.subscribe()
    }
}

/// The buffer bounds of a target: what one connection may hold, and the
/// budget all of them share.
#[derive(Debug, Clone)]
pub struct BufferLimits {
    /// Bytes one connection may hold at once.
    pub per_connection: u64,
    /// Shared by every connection of the target.
    pub target: std::sync::Arc<ByteBudget>,
}

impl BufferLimits {
    /// `per_connection` bytes per connection, `per_target` for the target.
    pub fn new(per_connection: u64, per_target: u64) -> Self {
        Self {
            per_connection,
            target: std::sync::Arc::new(ByteBudget::new(per_target)),
        }
    }
}

impl Default for BufferLimits {
    fn default() -> Self {
        Self::new(MAX_CONNECTION_BUFFER_BYTES, MAX_TARGET_BUFFER_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_within_the_bound_and_refuses_past_it() {
        let b = ByteBudget::new(100);
        assert!(b.try_take(60));
        assert!(!b.try_take(41), "past the bound");
        assert!(b.try_take(40));
        assert_eq!(b.used(), 100);
        assert!(!b.try_take(1));
        assert!(!b.try_take(u64::MAX), "no overflow");
        b.give_back(60);
        assert_eq!(b.used(), 40);
        assert!(b.try_take(60));
    }

    #[test]
    fn giving_back_wakes_subscribers_and_never_underflows() {
        let b = ByteBudget::new(10);
        let mut rx = b.subscribe();
        assert!(!rx.has_changed().unwrap_or(true));
        assert!(b.try_take(10));
        assert!(!rx.has_changed().unwrap_or(true), "taking wakes nobody");
        b.give_back(20);
        assert_eq!(b.used(), 0);
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        b.give_back(0);
        assert!(!rx.has_changed().unwrap_or(true), "nothing given back");
    }
}
