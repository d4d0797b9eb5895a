//! Operational parameter negotiation (RFC 7143 §6.2, §13).
//!
//! The initiator offers, the target answers; the result of each key follows
//! the RFC's function for it:
//!
//! | key | function | §  |
//! | --- | --- | --- |
//! | HeaderDigest, DataDigest | first of the offered list we support | 13.1 |
//! | MaxConnections, MaxBurstLength, FirstBurstLength, DefaultTime2Retain, MaxOutstandingR2T, ErrorRecoveryLevel | minimum | 13.2, 13.13, 13.14, 13.16, 13.17, 13.20 |
//! | DefaultTime2Wait | maximum | 13.15 |
//! | InitialR2T, DataPDUInOrder, DataSequenceInOrder | OR | 13.10, 13.18, 13.19 |
//! | ImmediateData (and the obsolete IFMarker/OFMarker) | AND | 13.11 |
//! | MaxRecvDataSegmentLength | declarative, per direction | 13.12 |
//!
//! A value outside the key's range or of the wrong type is answered
//! `Reject` and the key keeps its default (§6.2). Keys we do not know are
//! answered `NotUnderstood`. Session-wide keys that mean nothing in a
//! discovery session are answered `Irrelevant`, as is FirstBurstLength when
//! InitialR2T=Yes and ImmediateData=No (§13.14). A key offered twice in one
//! login is a protocol error (§6.1).

use std::collections::HashSet;

use super::limits::{
    MAX_DATA_SEGMENT_FIELD, MIN_SEGMENT_OR_BURST, OUR_FIRST_BURST, OUR_MAX_BURST,
    OUR_MAX_RECV_DATA_SEGMENT,
};
use super::text::{IRRELEVANT, NONE, NOT_UNDERSTOOD, REJECT};

/// Negotiated parameters of a session and its (single) connection, RFC 7143
/// §13. `Default` is the RFC's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// The initiator's MaxRecvDataSegmentLength: the largest data segment we
    /// may send it.
    pub initiator_max_recv_data_segment: u32,
    /// Our MaxRecvDataSegmentLength: the largest data segment we accept.
    pub target_max_recv_data_segment: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_max_recv_data_segment: 8192,
            target_max_recv_data_segment: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// What the target offers and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetLimits {
    /// Digests we agree to use, checked against the initiator's list.
    pub allow_header_digest: bool,
    pub allow_data_digest: bool,
    pub max_connections: u16,
    /// `false` lets the initiator choose InitialR2T=No (OR function).
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_recv_data_segment: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    /// `true`: we only handle in-order data (OR function forces Yes).
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
}

impl Default for TargetLimits {
    fn default() -> Self {
        Self {
            allow_header_digest: true,
            allow_data_digest: true,
            max_connections: 1,
            initial_r2t: false,
            immediate_data: true,
            max_recv_data_segment: OUR_MAX_RECV_DATA_SEGMENT,
            max_burst_length: OUR_MAX_BURST,
            first_burst_length: OUR_FIRST_BURST,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// A negotiation error that fails the login (status 02 00).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("key {key} offered twice")]
    Duplicate { key: String },
}

/// The operational keys this module answers.
const OPERATIONAL_KEYS: &[&str] = &[
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "IFMarker",
    "OFMarker",
    "IFMarkInt",
    "OFMarkInt",
];

/// Keys that only make sense in a normal session (RFC 7143 §13: "Irrelevant
/// when: SessionType=Discovery").
const NORMAL_SESSION_ONLY: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

/// Whether `key` is an operational key handled by [`Negotiator`].
pub fn is_operational_key(key: &str) -> bool {
    OPERATIONAL_KEYS.contains(&key)
}

/// Parses a numerical value: decimal, or hexadecimal with `0x` (RFC 7143
/// §6.1 "numerical-value").
fn number(value: &str) -> Option<u64> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn in_range<T: TryFrom<u64>>(value: &str, min: u64, max: u64) -> Option<T> {
    number(value)
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| T::try_from(n).ok())
}

fn boolean(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_owned()
}

/// Chooses the first digest of the initiator's list we allow (§13.1).
fn choose_digest(list: &str, allow_crc: bool) -> Option<bool> {
    list.split(',').find_map(|item| match item {
        "None" => Some(false),
        "CRC32C" if allow_crc => Some(true),
        _ => None,
    })
}

/// Negotiates the operational keys of one login.
#[derive(Debug, Clone)]
pub struct Negotiator {
    limits: TargetLimits,
    discovery: bool,
    params: SessionParams,
    seen: HashSet<String>,
    /// FirstBurstLength's answer depends on keys that may come after it.
    first_burst_offer: Option<u32>,
    declared_ours: bool,
}

impl Negotiator {
    pub fn new(limits: TargetLimits, discovery: bool) -> Self {
        let params = SessionParams {
            target_max_recv_data_segment: limits.max_recv_data_segment,
            ..SessionParams::default()
        };
        Self {
            limits,
            discovery,
            params,
            seen: HashSet::new(),
            first_burst_offer: None,
            declared_ours: false,
        }
    }

    /// Answers one batch of offered operational pairs (one Login Request's
    /// text) with the pairs to send back, in order.
    pub fn negotiate<'a, I>(&mut self, offers: I) -> Result<Vec<(String, String)>, NegotiationError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut answers = Vec::new();
        let mut first_burst_at = None;
        for (key, value) in offers {
            if !self.seen.insert(key.to_owned()) {
                return Err(NegotiationError::Duplicate {
                    key: key.to_owned(),
                });
            }
            if key == "FirstBurstLength" && !self.discovery {
                first_burst_at = Some(answers.len());
                answers.push((key.to_owned(), String::new()));
                self.first_burst_offer = in_range(
                    value,
                    u64::from(MIN_SEGMENT_OR_BURST),
                    u64::from(MAX_DATA_SEGMENT_FIELD),
                );
                if self.first_burst_offer.is_none() {
                    answers.pop();
                    first_burst_at = None;
                    answers.push((key.to_owned(), REJECT.to_owned()));
                }
                continue;
            }
            if let Some(answer) = self.answer(key, value) {
                answers.push((key.to_owned(), answer));
            }
        }
        if let Some(at) = first_burst_at {
            let answer = self.settle_first_burst();
            if let Some(slot) = answers.get_mut(at) {
                slot.1 = answer;
            }
        }
        if !self.declared_ours && self.seen.contains("MaxRecvDataSegmentLength") {
            self.declared_ours = true;
            answers.push((
                "MaxRecvDataSegmentLength".to_owned(),
                self.limits.max_recv_data_segment.to_string(),
            ));
        }
        Ok(answers)
    }

    /// Our own declarations not yet sent (the operational stage must carry
    /// our MaxRecvDataSegmentLength even if the initiator never declared
    /// its own).
    pub fn pending_declarations(&mut self) -> Vec<(String, String)> {
        if self.declared_ours {
            return Vec::new();
        }
        self.declared_ours = true;
        vec![(
            "MaxRecvDataSegmentLength".to_owned(),
            self.limits.max_recv_data_segment.to_string(),
        )]
    }

    /// The negotiated parameters so far.
    pub fn params(&self) -> SessionParams {
        let mut p = self.params;
        // §13.14: FirstBurstLength MUST NOT exceed MaxBurstLength.
        p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
        p
    }

    fn settle_first_burst(&mut self) -> String {
        if self.params.initial_r2t && !self.params.immediate_data {
            return IRRELEVANT.to_owned();
        }
        let Some(offer) = self.first_burst_offer else {
            return REJECT.to_owned();
        };
        let value = offer
            .min(self.limits.first_burst_length)
            .min(self.params.max_burst_length);
        self.params.first_burst_length = value;
        value.to_string()
    }

    /// The answer to one offered key, `None` for a declaration that needs
    /// none.
    fn answer(&mut self, key: &str, value: &str) -> Option<String> {
        if self.discovery && NORMAL_SESSION_ONLY.contains(&key) {
            return Some(IRRELEVANT.to_owned());
        }
        let l = self.limits;
        let p = &mut self.params;
        let len_range = (
            u64::from(MIN_SEGMENT_OR_BURST),
            u64::from(MAX_DATA_SEGMENT_FIELD),
        );
        let reject = || Some(REJECT.to_owned());
        match key {
            "HeaderDigest" | "DataDigest" => {
                let allow = if key == "HeaderDigest" {
                    l.allow_header_digest
                } else {
                    l.allow_data_digest
                };
                let Some(crc) = choose_digest(value, allow) else {
                    return reject();
                };
                if key == "HeaderDigest" {
                    p.header_digest = crc;
                } else {
                    p.data_digest = crc;
                }
                Some(if crc { "CRC32C" } else { NONE }.to_owned())
            }
            "MaxConnections" => {
                let Some(v) = in_range::<u16>(value, 1, 65535) else {
                    return reject();
                };
                p.max_connections = v.min(l.max_connections);
                Some(p.max_connections.to_string())
            }
            "MaxBurstLength" => {
                let Some(v) = in_range::<u32>(value, len_range.0, len_range.1) else {
                    return reject();
                };
                p.max_burst_length = v.min(l.max_burst_length);
                Some(p.max_burst_length.to_string())
            }
            "DefaultTime2Retain" => {
                let Some(v) = in_range::<u16>(value, 0, 3600) else {
                    return reject();
                };
                p.default_time2retain = v.min(l.default_time2retain);
                Some(p.default_time2retain.to_string())
            }
            "DefaultTime2Wait" => {
                let Some(v) = in_range::<u16>(value, 0, 3600) else {
                    return reject();
                };
                p.default_time2wait = v.max(l.default_time2wait);
                Some(p.default_time2wait.to_string())
            }
            "MaxOutstandingR2T" => {
                let Some(v) = in_range::<u16>(value, 1, 65535) else {
                    return reject();
                };
                p.max_outstanding_r2t = v.min(l.max_outstanding_r2t);
                Some(p.max_outstanding_r2t.to_string())
            }
            "ErrorRecoveryLevel" => {
                let Some(v) = in_range::<u8>(value, 0, 2) else {
                    return reject();
                };
                p.error_recovery_level = v.min(l.error_recovery_level);
                Some(p.error_recovery_level.to_string())
            }
            "InitialR2T" => {
                let Some(v) = boolean(value) else {
                    return reject();
                };
                p.initial_r2t = v || l.initial_r2t;
                Some(yes_no(p.initial_r2t))
            }
            "DataPDUInOrder" => {
                let Some(v) = boolean(value) else {
                    return reject();
                };
                p.data_pdu_in_order = v || l.data_pdu_in_order;
                Some(yes_no(p.data_pdu_in_order))
            }
            "DataSequenceInOrder" => {
                let Some(v) = boolean(value) else {
                    return reject();
                };
                p.data_sequence_in_order = v || l.data_sequence_in_order;
                Some(yes_no(p.data_sequence_in_order))
            }
            "ImmediateData" => {
                let Some(v) = boolean(value) else {
                    return reject();
                };
                p.immediate_data = v && l.immediate_data;
                Some(yes_no(p.immediate_data))
            }
            // Markers were removed by RFC 7143; we never use them, and an
            // AND of anything with No is No.
            "IFMarker" | "OFMarker" => boolean(value).map_or_else(reject, |_| Some(yes_no(false))),
            "IFMarkInt" | "OFMarkInt" => Some(IRRELEVANT.to_owned()),
            "MaxRecvDataSegmentLength" => {
                let Some(v) = in_range::<u32>(value, len_range.0, len_range.1) else {
                    return reject();
                };
                p.initiator_max_recv_data_segment = v;
                // Declarative: no answer; ours is declared separately.
                None
            }
            _ => Some(NOT_UNDERSTOOD.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(discovery: bool, offers: &[(&str, &str)]) -> (Vec<(String, String)>, SessionParams) {
        let mut n = Negotiator::new(TargetLimits::default(), discovery);
        let answers = n.negotiate(offers.iter().copied()).unwrap();
        (answers, n.params())
    }

    fn answer_of<'a>(answers: &'a [(String, String)], key: &str) -> Option<&'a str> {
        answers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The offers of a Linux open-iscsi normal session login.
    const OPEN_ISCSI: &[(&str, &str)] = &[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "16776192"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"),
        ("MaxConnections", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("MaxRecvDataSegmentLength", "262144"),
    ];

    #[test]
    fn open_iscsi_login_negotiates_our_limits() {
        let (answers, p) = run(false, OPEN_ISCSI);
        assert_eq!(answer_of(&answers, "MaxBurstLength"), Some("1048576"));
        assert_eq!(answer_of(&answers, "FirstBurstLength"), Some("65536"));
        assert_eq!(answer_of(&answers, "InitialR2T"), Some("No"));
        assert_eq!(answer_of(&answers, "ImmediateData"), Some("Yes"));
        assert_eq!(answer_of(&answers, "DefaultTime2Retain"), Some("0"));
        assert_eq!(answer_of(&answers, "IFMarker"), Some("No"));
        assert_eq!(
            answer_of(&answers, "MaxRecvDataSegmentLength"),
            Some("262144")
        );
        assert_eq!(p.max_burst_length, OUR_MAX_BURST);
        assert_eq!(p.first_burst_length, OUR_FIRST_BURST);
        assert!(!p.initial_r2t);
        assert_eq!(p.initiator_max_recv_data_segment, 262_144);
        assert_eq!(p.target_max_recv_data_segment, OUR_MAX_RECV_DATA_SEGMENT);
        // Answers keep the offer order (FirstBurstLength in its own slot).
        let keys: Vec<&str> = answers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys[9], "MaxBurstLength");
        assert_eq!(keys[10], "FirstBurstLength");
    }

    #[test]
    fn digest_choice_follows_the_initiators_preference() {
        let (a, p) = run(
            false,
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None,CRC32C"),
            ],
        );
        assert_eq!(answer_of(&a, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(answer_of(&a, "DataDigest"), Some("None"));
        assert!(p.header_digest);
        assert!(!p.data_digest);
    }

    #[test]
    fn unsupported_digest_list_is_rejected() {
        let (a, p) = run(false, &[("HeaderDigest", "SHA1,MD5")]);
        assert_eq!(answer_of(&a, "HeaderDigest"), Some("Reject"));
        assert!(!p.header_digest);
    }

    #[test]
    fn out_of_range_numbers_are_rejected_and_keep_defaults() {
        let (a, p) = run(
            false,
            &[
                ("MaxBurstLength", "511"),
                ("ErrorRecoveryLevel", "3"),
                ("MaxConnections", "0"),
                ("DefaultTime2Wait", "abc"),
            ],
        );
        for key in [
            "MaxBurstLength",
            "ErrorRecoveryLevel",
            "MaxConnections",
            "DefaultTime2Wait",
        ] {
            assert_eq!(answer_of(&a, key), Some("Reject"), "{key}");
        }
        assert_eq!(
            p,
            SessionParams {
                target_max_recv_data_segment: OUR_MAX_RECV_DATA_SEGMENT,
                ..SessionParams::default()
            }
        );
    }

    #[test]
    fn error_recovery_level_is_always_zero() {
        let (a, p) = run(false, &[("ErrorRecoveryLevel", "2")]);
        assert_eq!(answer_of(&a, "ErrorRecoveryLevel"), Some("0"));
        assert_eq!(p.error_recovery_level, 0);
    }

    #[test]
    fn default_time2wait_takes_the_maximum() {
        let (a, _) = run(false, &[("DefaultTime2Wait", "0")]);
        assert_eq!(answer_of(&a, "DefaultTime2Wait"), Some("2"));
    }

    #[test]
    fn hexadecimal_numbers_are_accepted() {
        let (a, _) = run(false, &[("MaxBurstLength", "0x1000")]);
        assert_eq!(answer_of(&a, "MaxBurstLength"), Some("4096"));
    }

    #[test]
    fn first_burst_is_irrelevant_with_initial_r2t_and_no_immediate_data() {
        // FirstBurstLength comes first: its answer must still see the rest.
        let (a, _) = run(
            false,
            &[
                ("FirstBurstLength", "4096"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "No"),
            ],
        );
        assert_eq!(answer_of(&a, "FirstBurstLength"), Some("Irrelevant"));
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let (a, p) = run(
            false,
            &[("MaxBurstLength", "8192"), ("FirstBurstLength", "65536")],
        );
        assert_eq!(answer_of(&a, "FirstBurstLength"), Some("8192"));
        assert_eq!(p.first_burst_length, 8192);
    }

    #[test]
    fn session_keys_are_irrelevant_in_discovery() {
        let (a, _) = run(
            true,
            &[("MaxBurstLength", "4096"), ("HeaderDigest", "None")],
        );
        assert_eq!(answer_of(&a, "MaxBurstLength"), Some("Irrelevant"));
        assert_eq!(answer_of(&a, "HeaderDigest"), Some("None"));
    }

    #[test]
    fn unknown_keys_are_not_understood() {
        let (a, _) = run(
            false,
            &[("X-com.example.Foo", "1"), ("iSCSIProtocolLevel", "1")],
        );
        assert_eq!(answer_of(&a, "X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(answer_of(&a, "iSCSIProtocolLevel"), Some("NotUnderstood"));
    }

    #[test]
    fn a_key_offered_twice_fails() {
        let mut n = Negotiator::new(TargetLimits::default(), false);
        n.negotiate([("MaxBurstLength", "4096")]).unwrap();
        assert_eq!(
            n.negotiate([("MaxBurstLength", "8192")]),
            Err(NegotiationError::Duplicate {
                key: "MaxBurstLength".into()
            })
        );
    }

    #[test]
    fn our_max_recv_data_segment_is_declared_once() {
        let mut n = Negotiator::new(TargetLimits::default(), false);
        assert_eq!(n.pending_declarations().len(), 1);
        assert!(n.pending_declarations().is_empty());
        let a = n
            .negotiate([("MaxRecvDataSegmentLength", "65536")])
            .unwrap();
        assert!(a.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Model: the RFC's min/max/OR/AND per key, independently computed.
        #[test]
        fn numeric_and_boolean_results_follow_the_rfc_functions(
            burst in 512u32..(1 << 24),
            r2t in 1u16..=65535,
            wait in 0u16..=3600,
            retain in 0u16..=3600,
            initial_r2t in any::<bool>(),
            immediate in any::<bool>(),
        ) {
            let l = TargetLimits::default();
            let (burst_s, r2t_s, wait_s, retain_s) =
                (burst.to_string(), r2t.to_string(), wait.to_string(), retain.to_string());
            let offers = [
                ("MaxBurstLength", burst_s.as_str()),
                ("MaxOutstandingR2T", r2t_s.as_str()),
                ("DefaultTime2Wait", wait_s.as_str()),
                ("DefaultTime2Retain", retain_s.as_str()),
                ("InitialR2T", if initial_r2t { "Yes" } else { "No" }),
                ("ImmediateData", if immediate { "Yes" } else { "No" }),
            ];
            let (_, p) = run(false, &offers);
            prop_assert_eq!(p.max_burst_length, burst.min(l.max_burst_length));
            prop_assert_eq!(p.max_outstanding_r2t, r2t.min(l.max_outstanding_r2t));
            prop_assert_eq!(p.default_time2wait, wait.max(l.default_time2wait));
            prop_assert_eq!(p.default_time2retain, retain.min(l.default_time2retain));
            prop_assert_eq!(p.initial_r2t, initial_r2t || l.initial_r2t);
            prop_assert_eq!(p.immediate_data, immediate && l.immediate_data);
            prop_assert!(p.first_burst_length <= p.max_burst_length);
        }
    }
}
