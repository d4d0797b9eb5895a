//! Text Requests in full feature phase, SendTargets above all (RFC 7143
//! §11.10, §11.11, Appendix C).
//!
//! `SendTargets=All` (any session) lists our target; `SendTargets=<name>`
//! lists it if the name is ours; `SendTargets=` (empty, normal sessions
//! only) lists the session's target. Each target comes with
//! `TargetAddress=<addr>:<port>,<tpgt>` where the address is the local
//! address of the connection the question came on: the one the initiator
//! actually reached, never a wildcard the listener was bound to.
//!
//! Long requests arrive in several PDUs (C bit, answered with empty
//! responses); long answers leave in several PDUs (C bit, each pulled by an
//! empty request carrying our Target Transfer Tag), each within the
//! initiator's MaxRecvDataSegmentLength.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use super::login::{SessionType, TargetConfig};
use super::negotiate::is_operational_key;
use super::pdu::{TextRequest, TextResponse};
use super::text::{TextAccumulator, TextError, TextWriter, NOT_UNDERSTOOD, REJECT};

/// `TargetAddress` value: `ip:port,tpgt`, IPv6 in brackets (RFC 7143
/// §13.8), IPv4-mapped IPv6 shown as IPv4.
pub fn target_address(local: SocketAddr, portal_group_tag: u16) -> String {
    let ip = match local.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{},{portal_group_tag}", local.port()),
        IpAddr::V6(v6) => format!("[{v6}]:{},{portal_group_tag}", local.port()),
    }
}

/// The pairs answering `SendTargets=<value>`.
pub fn send_targets(
    value: &str,
    session_type: SessionType,
    cfg: &TargetConfig,
    local: SocketAddr,
) -> Vec<(String, String)> {
    let ours = match value {
        "All" => true,
        "" => {
            if session_type == SessionType::Discovery {
                // Appendix C: the empty form is for normal sessions.
                return vec![("SendTargets".to_owned(), REJECT.to_owned())];
            }
            true
        }
        name => name.eq_ignore_ascii_case(&cfg.target_name),
    };
    if !ours {
        return Vec::new();
    }
    vec![
        ("TargetName".to_owned(), cfg.target_name.clone()),
        (
            "TargetAddress".to_owned(),
            target_address(local, cfg.portal_group_tag),
        ),
    ]
}

/// What the connection knows when it answers a Text Request.
#[derive(Debug, Clone, Copy)]
pub struct TextContext<'a> {
    pub cfg: &'a TargetConfig,
    pub session_type: SessionType,
    pub local_addr: SocketAddr,
    /// The initiator's MaxRecvDataSegmentLength.
    pub max_send_segment: u32,
}

/// Why a Text Request is answered with a Reject (reason Protocol Error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextExchangeError {
    #[error("malformed text: {0}")]
    Text(#[from] TextError),
    #[error("Target Transfer Tag {0:#x} does not continue any response")]
    UnknownTtt(u32),
}

/// An answer that did not fit one PDU.
#[derive(Debug)]
struct Pending {
    itt: u32,
    ttt: u32,
    rest: Bytes,
}

/// Text Request/Response exchanges of one connection.
#[derive(Debug, Default)]
pub struct TextExchange {
    request: TextAccumulator,
    pending: Option<Pending>,
    next_ttt: u32,
}

const RESERVED_TTT: u32 = u32::MAX;

impl TextExchange {
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh_ttt(&mut self) -> u32 {
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TTT {
            self.next_ttt = 1;
        }
        self.next_ttt
    }

    /// Answers one Text Request. StatSN, ExpCmdSN and MaxCmdSN of the
    /// response are left 0 for the session to fill in.
    pub fn on_request(
        &mut self,
        req: &TextRequest,
        ctx: &TextContext<'_>,
    ) -> Result<TextResponse, TextExchangeError> {
        let mut rsp = TextResponse {
            final_: true,
            continue_: false,
            lun: req.lun,
            itt: req.itt,
            ttt: RESERVED_TTT,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data: Bytes::new(),
        };
        if req.ttt != RESERVED_TTT {
            // The initiator pulls the next part of a long answer.
            let pending = self
                .pending
                .take()
                .filter(|p| p.ttt == req.ttt && p.itt == req.itt)
                .ok_or(TextExchangeError::UnknownTtt(req.ttt))?;
            return Ok(self.emit(rsp, pending.itt, pending.rest, ctx));
        }
        // A new request (TTT 0xffffffff) abandons any unfinished answer.
        self.pending = None;
        let Some(pairs) = self.request.push(&req.data, req.continue_)? else {
            rsp.final_ = false;
            rsp.ttt = self.fresh_ttt();
            return Ok(rsp);
        };
        let mut out = TextWriter::new();
        for p in &pairs {
            if p.key == "SendTargets" {
                for (k, v) in send_targets(&p.value, ctx.session_type, ctx.cfg, ctx.local_addr) {
                    out.add(&k, &v);
                }
            } else if is_operational_key(&p.key) {
                // Renegotiation in full feature phase is not supported.
                out.add(&p.key, REJECT);
            } else {
                out.add(&p.key, NOT_UNDERSTOOD);
            }
        }
        Ok(self.emit(rsp, req.itt, out.finish(), ctx))
    }

    /// Sends as much of `text` as fits, keeping the rest for the next pull.
    fn emit(
        &mut self,
        mut rsp: TextResponse,
        itt: u32,
        mut text: Bytes,
        ctx: &TextContext<'_>,
    ) -> TextResponse {
        let max = usize::try_from(ctx.max_send_segment.max(1)).unwrap_or(usize::MAX);
        if text.len() <= max {
            rsp.data = text;
            return rsp;
        }
        let ttt = self.fresh_ttt();
        rsp.data = text.split_to(max);
        rsp.final_ = false;
        rsp.continue_ = true;
        rsp.ttt = ttt;
        self.pending = Some(Pending {
            itt,
            ttt,
            rest: text,
        });
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::text::parse;

    fn cfg() -> TargetConfig {
        TargetConfig::for_volume("vol1")
    }

    fn ctx(c: &TargetConfig, st: SessionType, max: u32) -> TextContext<'_> {
        TextContext {
            cfg: c,
            session_type: st,
            local_addr: "192.168.1.20:3260".parse().unwrap(),
            max_send_segment: max,
        }
    }

    fn text_req(data: &'static [u8], continue_: bool, ttt: u32) -> TextRequest {
        TextRequest {
            immediate: false,
            final_: !continue_,
            continue_,
            lun: 0,
            itt: 5,
            ttt,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn target_address_uses_the_reached_local_address() {
        assert_eq!(
            target_address("10.1.2.3:3260".parse().unwrap(), 1),
            "10.1.2.3:3260,1"
        );
        assert_eq!(
            target_address("[fd00::5]:3261".parse().unwrap(), 2),
            "[fd00::5]:3261,2"
        );
        assert_eq!(
            target_address("[::ffff:10.0.0.9]:3260".parse().unwrap(), 1),
            "10.0.0.9:3260,1"
        );
    }

    #[test]
    fn send_targets_all_lists_our_target_and_portal() {
        let c = cfg();
        let mut x = TextExchange::new();
        let rsp = x
            .on_request(
                &text_req(b"SendTargets=All\0", false, u32::MAX),
                &ctx(&c, SessionType::Discovery, 8192),
            )
            .unwrap();
        assert!(rsp.final_ && !rsp.continue_);
        assert_eq!(rsp.ttt, u32::MAX);
        assert_eq!(rsp.itt, 5);
        let pairs = parse(&rsp.data).unwrap();
        assert_eq!(pairs[0].key, "TargetName");
        assert_eq!(pairs[0].value, "iqn.2016-09.com.openebs.cstor:vol1");
        assert_eq!(pairs[1].key, "TargetAddress");
        assert_eq!(pairs[1].value, "192.168.1.20:3260,1");
    }

    #[test]
    fn send_targets_for_another_name_lists_nothing() {
        let c = cfg();
        let got = send_targets(
            "iqn.2016-09.com.openebs.cstor:nope",
            SessionType::Discovery,
            &c,
            "1.2.3.4:3260".parse().unwrap(),
        );
        assert!(got.is_empty());
    }

    #[test]
    fn empty_send_targets_is_for_normal_sessions_only() {
        let c = cfg();
        let local = "1.2.3.4:3260".parse().unwrap();
        assert_eq!(send_targets("", SessionType::Normal, &c, local).len(), 2);
        assert_eq!(
            send_targets("", SessionType::Discovery, &c, local),
            vec![("SendTargets".to_owned(), "Reject".to_owned())]
        );
    }

    #[test]
    fn continued_request_is_acknowledged_then_answered() {
        let c = cfg();
        let k = ctx(&c, SessionType::Discovery, 8192);
        let mut x = TextExchange::new();
        let ack = x
            .on_request(&text_req(b"SendTar", true, u32::MAX), &k)
            .unwrap();
        assert!(!ack.final_ && ack.data.is_empty());
        assert_ne!(ack.ttt, u32::MAX);
        let rsp = x
            .on_request(&text_req(b"gets=All\0", false, u32::MAX), &k)
            .unwrap();
        assert_eq!(parse(&rsp.data).unwrap().len(), 2);
    }

    #[test]
    fn long_answer_is_split_within_the_initiators_limit() {
        let c = cfg();
        let k = ctx(&c, SessionType::Discovery, 16);
        let mut x = TextExchange::new();
        let mut whole = Vec::new();
        let mut rsp = x
            .on_request(&text_req(b"SendTargets=All\0", false, u32::MAX), &k)
            .unwrap();
        let mut rounds = 0;
        while rsp.continue_ {
            assert!(rsp.data.len() <= 16);
            assert!(!rsp.final_);
            whole.extend_from_slice(&rsp.data);
            rsp = x.on_request(&text_req(b"", false, rsp.ttt), &k).unwrap();
            rounds += 1;
        }
        assert!(rsp.final_ && rounds > 1);
        assert_eq!(rsp.ttt, u32::MAX);
        whole.extend_from_slice(&rsp.data);
        assert_eq!(parse(&whole).unwrap().len(), 2);
    }

    #[test]
    fn unknown_ttt_is_an_error() {
        let c = cfg();
        let mut x = TextExchange::new();
        assert_eq!(
            x.on_request(
                &text_req(b"", false, 99),
                &ctx(&c, SessionType::Normal, 8192)
            ),
            Err(TextExchangeError::UnknownTtt(99))
        );
    }

    #[test]
    fn other_keys_are_rejected_or_not_understood() {
        let c = cfg();
        let mut x = TextExchange::new();
        let rsp = x
            .on_request(
                &text_req(b"MaxBurstLength=4096\0X-foo=1\0", false, u32::MAX),
                &ctx(&c, SessionType::Normal, 8192),
            )
            .unwrap();
        let pairs = parse(&rsp.data).unwrap();
        assert_eq!(pairs[0].value, "Reject");
        assert_eq!(pairs[1].value, "NotUnderstood");
    }

    #[test]
    fn malformed_text_is_an_error() {
        let c = cfg();
        let mut x = TextExchange::new();
        assert!(matches!(
            x.on_request(
                &text_req(b"garbage\0", false, u32::MAX),
                &ctx(&c, SessionType::Normal, 8192)
            ),
            Err(TextExchangeError::Text(_))
        ));
    }
}
