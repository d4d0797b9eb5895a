//! NOP-Out/NOP-In: answering the initiator's pings and pinging a quiet
//! initiator (RFC 7143 §11.18, §11.19), as a pure function of time.
//!
//! A NOP-Out with a real ITT is a ping: answer a NOP-In with the same ITT,
//! TTT 0xffffffff and the same data. A NOP-Out with ITT 0xffffffff answers
//! our ping and carries our TTT back; it gets no answer.
//!
//! When nothing was heard for `interval_ms`, the target sends a NOP-In with
//! a fresh TTT (ITT 0xffffffff); if nothing is heard for `timeout_ms` after
//! that, the connection is dead and the shell closes it.

use super::pdu::{NopIn, NopOut};

/// The reserved tag value: "no tag".
const NO_TAG: u32 = u32::MAX;

/// The NOP-In answering an initiator's ping, or `None` when the NOP-Out is
/// itself an answer to our ping. StatSN, ExpCmdSN and MaxCmdSN are left 0
/// for the session to fill in.
pub fn answer_ping(nop: &NopOut) -> Option<NopIn> {
    (nop.itt != NO_TAG).then(|| NopIn {
        lun: nop.lun,
        itt: nop.itt,
        ttt: NO_TAG,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        data: nop.data.clone(),
    })
}

/// What the connection does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveAction {
    /// Nothing to do before `until_ms`.
    Wait { until_ms: u64 },
    /// Send a NOP-In ping with this TTT (ITT 0xffffffff, LUN 0).
    Ping { ttt: u32 },
    /// No answer within the timeout: close the connection.
    Dead,
}

/// Keepalive state of one connection. Times are milliseconds on any
/// monotonic clock the shell chooses.
#[derive(Debug, Clone)]
pub struct Keepalive {
    interval_ms: u64,
    timeout_ms: u64,
    last_heard_ms: u64,
    ping_sent_ms: Option<u64>,
    next_ttt: u32,
}

impl Keepalive {
    pub fn new(interval_ms: u64, timeout_ms: u64, now_ms: u64) -> Self {
        Self {
            interval_ms: interval_ms.max(1),
            timeout_ms: timeout_ms.max(1),
            last_heard_ms: now_ms,
            ping_sent_ms: None,
            next_ttt: 0,
        }
    }

    /// Any PDU arrived from the initiator: it is alive.
    pub fn heard(&mut self, now_ms: u64) {
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
        self.ping_sent_ms = None;
    }

    /// Decides what to do at `now_ms`.
    pub fn poll(&mut self, now_ms: u64) -> KeepaliveAction {
        if let Some(sent) = self.ping_sent_ms {
            let deadline = sent.saturating_add(self.timeout_ms);
            return if now_ms >= deadline {
                KeepaliveAction::Dead
            } else {
                KeepaliveAction::Wait { until_ms: deadline }
            };
        }
        let due = self.last_heard_ms.saturating_add(self.interval_ms);
        if now_ms < due {
            return KeepaliveAction::Wait { until_ms: due };
        }
        self.ping_sent_ms = Some(now_ms);
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == NO_TAG {
            self.next_ttt = 1;
        }
        KeepaliveAction::Ping { ttt: self.next_ttt }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn nop(itt: u32) -> NopOut {
        NopOut {
            immediate: true,
            lun: 3,
            itt,
            ttt: NO_TAG,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data: Bytes::from_static(b"ping"),
        }
    }

    #[test]
    fn a_ping_is_answered_with_its_itt_and_data() {
        let a = answer_ping(&nop(42)).unwrap();
        assert_eq!((a.itt, a.ttt, a.lun), (42, NO_TAG, 3));
        assert_eq!(&a.data[..], b"ping");
    }

    #[test]
    fn an_answer_to_our_ping_gets_no_answer() {
        assert_eq!(answer_ping(&nop(NO_TAG)), None);
    }

    #[test]
    fn quiet_initiator_is_pinged_then_declared_dead() {
        let mut k = Keepalive::new(5_000, 2_000, 0);
        assert_eq!(k.poll(1_000), KeepaliveAction::Wait { until_ms: 5_000 });
        let KeepaliveAction::Ping { ttt } = k.poll(5_000) else {
            panic!("expected a ping");
        };
        assert_ne!(ttt, NO_TAG);
        assert_eq!(k.poll(6_000), KeepaliveAction::Wait { until_ms: 7_000 });
        assert_eq!(k.poll(7_000), KeepaliveAction::Dead);
    }

    #[test]
    fn traffic_postpones_the_ping_and_an_answer_clears_it() {
        let mut k = Keepalive::new(5_000, 2_000, 0);
        k.heard(4_000);
        assert_eq!(k.poll(5_000), KeepaliveAction::Wait { until_ms: 9_000 });
        assert!(matches!(k.poll(9_000), KeepaliveAction::Ping { .. }));
        k.heard(9_500);
        assert_eq!(k.poll(10_000), KeepaliveAction::Wait { until_ms: 14_500 });
    }
}
