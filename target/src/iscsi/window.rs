//! Command numbering and the command window (RFC 7143 §4.2.2.1, §3.2.2.1),
//! with serial number arithmetic (RFC 1982, 32 bits).
//!
//! A non-immediate command is admitted when ExpCmdSN ≤ CmdSN ≤ MaxCmdSN;
//! outside that range it is silently dropped, as the RFC requires. Admitted
//! commands are released in CmdSN order: one that arrives ahead of a gap is
//! held (at most the window's size) until the gap fills. Immediate commands
//! skip the ordering and the window; they have their own small allowance
//! (`MAX_IMMEDIATE_COMMANDS`) beyond which they are refused (Reject reason
//! "Immediate command reject").
//!
//! Invariants: MaxCmdSN = ExpCmdSN + (depth − outstanding) − 1, so it never
//! decreases (releasing a command moves ExpCmdSN and `outstanding` together;
//! finishing one moves MaxCmdSN forward), a full queue closes the window
//! (MaxCmdSN = ExpCmdSN − 1), and `outstanding + held ≤ depth` because
//! every held command sits inside the window.

use std::collections::BTreeMap;

use super::limits::{MAX_IMMEDIATE_COMMANDS, MAX_QUEUE_DEPTH};

/// `a < b` in 32-bit serial number arithmetic (RFC 1982 §3.2).
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < (1 << 31)
}

/// `a ≤ b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// Why a command was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Outside [ExpCmdSN, MaxCmdSN] or already seen: drop silently.
    #[error("CmdSN {cmd_sn} outside the window [{exp_cmd_sn}, {max_cmd_sn}]")]
    OutOfWindow {
        cmd_sn: u32,
        exp_cmd_sn: u32,
        max_cmd_sn: u32,
    },
    /// An immediate command with every queue slot taken: Reject 0x06.
    #[error("no queue slot for an immediate command")]
    ImmediateRefused,
}

/// The command window of a session, holding early commands of type `T`.
#[derive(Debug)]
pub struct CmdWindow<T> {
    exp_cmd_sn: u32,
    depth: u32,
    /// Non-immediate commands released to execution and not yet finished.
    outstanding: u32,
    /// Immediate commands not yet finished.
    immediate: u32,
    /// Commands admitted ahead of a gap, by CmdSN distance from ExpCmdSN.
    held: BTreeMap<u32, T>,
}

impl<T> CmdWindow<T> {
    /// A window starting at the login's CmdSN with `depth` slots (clamped
    /// to 1..=`MAX_QUEUE_DEPTH`).
    pub fn new(first_cmd_sn: u32, depth: u32) -> Self {
        Self {
            exp_cmd_sn: first_cmd_sn,
            depth: depth.clamp(1, MAX_QUEUE_DEPTH),
            outstanding: 0,
            immediate: 0,
            held: BTreeMap::new(),
        }
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    /// MaxCmdSN to advertise in every response.
    pub fn max_cmd_sn(&self) -> u32 {
        let open = self.depth.saturating_sub(self.outstanding);
        self.exp_cmd_sn.wrapping_add(open).wrapping_sub(1)
    }

    /// Commands released and not finished.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Admits one command. Returns the commands now ready to execute, in
    /// CmdSN order (empty when it was held behind a gap).
    pub fn admit(&mut self, cmd_sn: u32, immediate: bool, item: T) -> Result<Vec<T>, WindowError> {
        if immediate {
            if self.immediate >= MAX_IMMEDIATE_COMMANDS {
                return Err(WindowError::ImmediateRefused);
            }
            self.immediate += 1;
            return Ok(vec![item]);
        }
        let max_cmd_sn = self.max_cmd_sn();
        let distance = cmd_sn.wrapping_sub(self.exp_cmd_sn);
        let in_window = sn_le(self.exp_cmd_sn, cmd_sn) && sn_le(cmd_sn, max_cmd_sn);
        if !in_window || self.held.contains_key(&distance) {
            return Err(WindowError::OutOfWindow {
                cmd_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn,
            });
        }
        self.held.insert(distance, item);
        Ok(self.release())
    }

    /// Moves the commands at the head of the window to execution.
    fn release(&mut self) -> Vec<T> {
        let mut ready = Vec::new();
        while let Some(item) = self.held.remove(&0) {
            ready.push(item);
            self.outstanding += 1;
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            // Every held distance shrinks by one.
            self.held = std::mem::take(&mut self.held)
                .into_iter()
                .map(|(d, t)| (d.saturating_sub(1), t))
                .collect();
        }
        ready
    }

    /// A released command finished (its status was sent): its slot frees.
    pub fn finish(&mut self, immediate: bool) {
        if immediate {
            self.immediate = self.immediate.saturating_sub(1);
        } else {
            self.outstanding = self.outstanding.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn serial_comparison_wraps() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(u32::MAX, 0));
        assert!(!sn_lt(0, u32::MAX));
        assert!(sn_le(5, 5));
        assert!(!sn_lt(5, 5));
    }

    #[test]
    fn in_order_commands_are_released_and_the_window_slides() {
        let mut w = CmdWindow::new(10, 4);
        assert_eq!(w.max_cmd_sn(), 13);
        assert_eq!(w.admit(10, false, 'a'), Ok(vec!['a']));
        assert_eq!(w.exp_cmd_sn(), 11);
        // One command in flight: the window stays at 13 until it finishes.
        assert_eq!(w.max_cmd_sn(), 13);
        w.finish(false);
        assert_eq!(w.max_cmd_sn(), 14);
    }

    #[test]
    fn a_full_queue_closes_the_window() {
        let mut w = CmdWindow::new(0, 2);
        w.admit(0, false, ()).unwrap();
        w.admit(1, false, ()).unwrap();
        assert_eq!(w.max_cmd_sn(), w.exp_cmd_sn().wrapping_sub(1));
        assert!(matches!(
            w.admit(2, false, ()),
            Err(WindowError::OutOfWindow { .. })
        ));
    }

    #[test]
    fn out_of_window_and_duplicate_commands_are_dropped() {
        let mut w = CmdWindow::new(100, 8);
        // Old (already executed) and beyond MaxCmdSN.
        assert!(w.admit(99, false, ()).is_err());
        assert!(w.admit(108, false, ()).is_err());
        assert!(w.admit(107, false, ()).unwrap().is_empty());
        assert!(
            w.admit(107, false, ()).is_err(),
            "duplicate of a held command"
        );
    }

    #[test]
    fn early_commands_wait_for_the_gap() {
        let mut w = CmdWindow::new(0, 8);
        assert_eq!(w.admit(2, false, 'c'), Ok(vec![]));
        assert_eq!(w.admit(1, false, 'b'), Ok(vec![]));
        assert_eq!(w.admit(0, false, 'a'), Ok(vec!['a', 'b', 'c']));
        assert_eq!(w.exp_cmd_sn(), 3);
    }

    #[test]
    fn immediate_commands_bypass_the_window_within_their_allowance() {
        let mut w = CmdWindow::new(0, 1);
        for _ in 0..MAX_IMMEDIATE_COMMANDS {
            assert_eq!(w.admit(0, true, 'i'), Ok(vec!['i']));
        }
        assert_eq!(w.exp_cmd_sn(), 0, "immediate commands do not advance CmdSN");
        assert_eq!(w.max_cmd_sn(), 0, "nor take the window");
        assert_eq!(w.admit(0, true, 'j'), Err(WindowError::ImmediateRefused));
        w.finish(true);
        assert_eq!(w.admit(0, true, 'k'), Ok(vec!['k']));
        assert_eq!(w.admit(0, false, 'n'), Ok(vec!['n']));
    }

    #[test]
    fn window_works_across_the_wrap() {
        let mut w = CmdWindow::new(u32::MAX - 1, 4);
        for sn in [u32::MAX - 1, u32::MAX, 0, 1] {
            assert_eq!(w.admit(sn, false, sn).unwrap(), vec![sn]);
            w.finish(false);
        }
        assert_eq!(w.exp_cmd_sn(), 2);
    }

    proptest! {
        /// Model: a set of admitted CmdSNs; release order must be
        /// ascending and contiguous, never more than `depth` outstanding.
        #[test]
        fn releases_are_contiguous_and_bounded(
            start in any::<u32>(),
            ops in proptest::collection::vec((0u32..12, any::<bool>()), 1..200),
        ) {
            let depth = 6;
            let mut w = CmdWindow::new(start, depth);
            let mut next_expected = start;
            let mut last_max = w.max_cmd_sn();
            for (offset, finish) in ops {
                if finish {
                    w.finish(false);
                    prop_assert!(sn_le(last_max, w.max_cmd_sn()));
                    last_max = w.max_cmd_sn();
                    continue;
                }
                let sn = w.exp_cmd_sn().wrapping_add(offset);
                if let Ok(ready) = w.admit(sn, false, sn) {
                    for got in ready {
                        prop_assert_eq!(got, next_expected);
                        next_expected = next_expected.wrapping_add(1);
                    }
                }
                prop_assert!(w.outstanding() <= depth);
                prop_assert_eq!(w.exp_cmd_sn(), next_expected);
                // MaxCmdSN never moves backwards.
                prop_assert!(sn_le(last_max, w.max_cmd_sn()));
                last_max = w.max_cmd_sn();
            }
        }
    }
}
