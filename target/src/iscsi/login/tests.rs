//! Login state machine tests: each names the RFC 7143 rule it checks.

use bytes::Bytes;

use super::*;
use crate::iscsi::access::Allowlist;
use crate::iscsi::chap::{decode_binary, encode_binary, ChapAlgorithm, Credentials};
use crate::iscsi::text::parse;

const INITIATOR: &str = "iqn.1993-08.org.debian:01:abcdef";
const SECRET: &[u8] = b"initiator-secret";
const TARGET_SECRET: &[u8] = b"the-target-secret";

fn cfg() -> TargetConfig {
    TargetConfig::for_volume("vol1")
}

fn chap_cfg(mutual: bool) -> TargetConfig {
    let target = mutual.then(|| Credentials::new("tgt", TARGET_SECRET).unwrap());
    TargetConfig {
        chap: Some(ChapConfig::new(Credentials::new("alice", SECRET).unwrap(), target).unwrap()),
        ..cfg()
    }
}

fn addr() -> SocketAddr {
    "10.0.0.5:3260".parse().unwrap()
}

fn tsih() -> NonZeroU16 {
    NonZeroU16::new(7).unwrap()
}

fn req(csg: u8, nsg: Option<u8>, pairs: &[(&str, &str)]) -> LoginRequest {
    let mut w = TextWriter::new();
    for (k, v) in pairs {
        w.add(k, v);
    }
    LoginRequest {
        transit: nsg.is_some(),
        continue_: false,
        csg,
        nsg: nsg.unwrap_or(0),
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 0x3d, 0, 0],
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: 100,
        exp_stat_sn: 50,
        data: w.finish(),
    }
}

fn answers(rsp: &LoginResponse) -> Vec<(String, String)> {
    parse(&rsp.data)
        .unwrap()
        .into_iter()
        .map(|p| (p.key, p.value))
        .collect()
}

fn value(rsp: &LoginResponse, key: &str) -> Option<String> {
    answers(rsp)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn expect_continue(a: LoginAction) -> LoginResponse {
    match a {
        LoginAction::Continue(r) => {
            assert_eq!((r.status_class, r.status_detail), (0, 0));
            r
        }
        other => panic!("expected Continue, got {other:?}"),
    }
}

fn expect_fail(a: LoginAction, status: LoginStatus) -> LoginResponse {
    match a {
        LoginAction::Fail(r, why) => {
            assert_eq!(
                LoginStatus {
                    class: r.status_class,
                    detail: r.status_detail
                },
                status,
                "{why}"
            );
            r
        }
        other => panic!("expected Fail({status:?}), got {other:?}"),
    }
}

fn expect_complete(a: LoginAction) -> (LoginResponse, LoggedIn) {
    match a {
        LoginAction::Complete(r, done) => (r, *done),
        other => panic!("expected Complete, got {other:?}"),
    }
}

const FIRST: &[(&str, &str)] = &[
    ("InitiatorName", INITIATOR),
    ("SessionType", "Normal"),
    ("TargetName", "iqn.2016-09.com.openebs.cstor:vol1"),
    ("AuthMethod", "None"),
];

const OPERATIONAL: &[(&str, &str)] = &[
    ("HeaderDigest", "CRC32C,None"),
    ("DataDigest", "None"),
    ("MaxRecvDataSegmentLength", "65536"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "65536"),
];

#[test]
fn normal_login_without_auth_goes_through_both_stages() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let r1 = expect_continue(m.on_request(&req(0, Some(1), FIRST)));
    assert!(r1.transit);
    assert_eq!((r1.csg, r1.nsg), (0, 1));
    assert_eq!(value(&r1, "AuthMethod").as_deref(), Some("None"));
    assert_eq!(value(&r1, "TargetPortalGroupTag").as_deref(), Some("1"));
    assert_eq!(r1.tsih, 0, "TSIH is given only in the final response");

    let (r2, done) = expect_complete(m.on_request(&req(1, Some(3), OPERATIONAL)));
    assert!(r2.transit);
    assert_eq!((r2.csg, r2.nsg), (1, 3));
    assert_eq!(r2.tsih, 7);
    assert_eq!(value(&r2, "HeaderDigest").as_deref(), Some("CRC32C"));
    assert_eq!(
        value(&r2, "MaxRecvDataSegmentLength").as_deref(),
        Some("262144")
    );
    assert_eq!(done.session_type, SessionType::Normal);
    assert_eq!(done.initiator_name, INITIATOR);
    assert!(done.params.header_digest);
    assert!(!done.params.initial_r2t);
    assert_eq!(done.params.initiator_max_recv_data_segment, 65536);
    let ff = done.full_feature_config();
    assert!(ff.rx.digests.header && !ff.rx.digests.data);
    assert_eq!(ff.tx.max_data_segment_bytes, 65536);
    assert_eq!(done.local_addr, addr());
    assert_eq!(
        done.initiator_port(),
        "iqn.1993-08.org.debian:01:abcdef,i,0x8000003d0000"
    );
}

#[test]
fn stat_sn_counts_every_response_and_exp_cmd_sn_is_the_login_cmd_sn() {
    // RFC 7143 §11.13.4: StatSN of the first response starts the count; every
    // following response, login ones included, carries the next number.
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let r1 = expect_continue(m.on_request(&req(0, Some(1), FIRST)));
    let (r2, done) = expect_complete(m.on_request(&req(1, Some(3), OPERATIONAL)));
    assert_eq!(r1.stat_sn, 50);
    assert_eq!(r2.stat_sn, 51);
    assert_eq!(done.next_stat_sn, 52);
    assert_eq!(r1.exp_cmd_sn, 100);
    assert_eq!(r2.max_cmd_sn, 100 + 31);
    assert_eq!(done.exp_cmd_sn, 100);
}

#[test]
fn security_straight_to_full_feature_declares_our_segment_length() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let (r, done) = expect_complete(m.on_request(&req(0, Some(3), FIRST)));
    assert_eq!(
        value(&r, "MaxRecvDataSegmentLength").as_deref(),
        Some("262144")
    );
    assert_eq!(done.params.max_burst_length, 262_144, "RFC default");
}

#[test]
fn operational_first_request_is_allowed_without_chap() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2016-09.com.openebs.cstor:vol1"),
    ];
    expect_complete(m.on_request(&req(1, Some(3), &pairs)));
}

#[test]
fn discovery_session_needs_no_target_name_and_gets_no_portal_tag() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("SessionType", "Discovery"),
        ("AuthMethod", "None"),
        ("MaxBurstLength", "4096"),
    ];
    let (r, done) = expect_complete(m.on_request(&req(0, Some(3), &pairs)));
    assert_eq!(done.session_type, SessionType::Discovery);
    assert_eq!(value(&r, "TargetPortalGroupTag"), None);
    assert_eq!(value(&r, "MaxBurstLength").as_deref(), Some("Irrelevant"));
}

#[test]
fn missing_initiator_name_is_02_07() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let pairs = [("TargetName", "iqn.2016-09.com.openebs.cstor:vol1")];
    expect_fail(
        m.on_request(&req(0, Some(1), &pairs)),
        LoginStatus::MISSING_PARAMETER,
    );
}

#[test]
fn missing_target_name_in_normal_session_is_02_07() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let pairs = [("InitiatorName", INITIATOR)];
    expect_fail(
        m.on_request(&req(0, Some(1), &pairs)),
        LoginStatus::MISSING_PARAMETER,
    );
}

#[test]
fn unknown_target_is_02_03() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2016-09.com.openebs.cstor:other"),
    ];
    let r = expect_fail(
        m.on_request(&req(0, Some(1), &pairs)),
        LoginStatus::NOT_FOUND,
    );
    assert!(!r.transit && !r.continue_);
}

#[test]
fn unknown_session_type_is_02_09() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let pairs = [("InitiatorName", INITIATOR), ("SessionType", "Weird")];
    expect_fail(
        m.on_request(&req(0, Some(1), &pairs)),
        LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
    );
}

#[test]
fn initiator_outside_the_allowlist_is_02_02() {
    let c = TargetConfig {
        allowed_initiators: InitiatorAccess::new(Allowlist::Only(vec![
            "iqn.2000-01.com.example:allowed".into(),
        ])),
        ..cfg()
    };
    let mut m = LoginMachine::new(&c, tsih(), addr());
    expect_fail(
        m.on_request(&req(0, Some(1), FIRST)),
        LoginStatus::AUTHORIZATION_FAILURE,
    );
    let c = TargetConfig {
        allowed_initiators: InitiatorAccess::new(Allowlist::Only(vec![INITIATOR.to_uppercase()])),
        ..cfg()
    };
    let mut m = LoginMachine::new(&c, tsih(), addr());
    expect_continue(m.on_request(&req(0, Some(1), FIRST)));
}

#[test]
fn version_other_than_zero_is_02_05() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let mut r = req(0, Some(1), FIRST);
    r.version_min = 1;
    r.version_max = 2;
    expect_fail(m.on_request(&r), LoginStatus::UNSUPPORTED_VERSION);
}

#[test]
fn non_zero_tsih_is_02_0a() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let mut r = req(0, Some(1), FIRST);
    r.tsih = 3;
    expect_fail(m.on_request(&r), LoginStatus::SESSION_DOES_NOT_EXIST);
}

#[test]
fn malformed_text_is_02_00() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let mut r = req(0, Some(1), &[]);
    r.data = Bytes::from_static(b"InitiatorName\0");
    expect_fail(m.on_request(&r), LoginStatus::INITIATOR_ERROR);
}

#[test]
fn duplicate_operational_key_is_02_00() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    expect_continue(m.on_request(&req(0, Some(1), FIRST)));
    let pairs = [("MaxBurstLength", "4096"), ("MaxBurstLength", "8192")];
    expect_fail(
        m.on_request(&req(1, Some(3), &pairs)),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn security_key_in_operational_stage_is_02_00() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    expect_continue(m.on_request(&req(0, Some(1), FIRST)));
    let pairs = [("CHAP_A", "5")];
    expect_fail(
        m.on_request(&req(1, Some(3), &pairs)),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn isid_change_during_login_is_02_00() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    expect_continue(m.on_request(&req(0, Some(1), FIRST)));
    let mut r = req(1, Some(3), OPERATIONAL);
    r.isid = [1, 2, 3, 4, 5, 6];
    expect_fail(m.on_request(&r), LoginStatus::INITIATOR_ERROR);
}

#[test]
fn invalid_next_stage_is_02_00() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    expect_fail(
        m.on_request(&req(0, Some(2), FIRST)),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn continued_request_is_acknowledged_empty_then_answered() {
    // RFC 7143 §6.3 / §11.12.2 (C bit).
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let whole = req(0, Some(1), FIRST).data;
    let (a, b) = whole.split_at(10);
    let mut part1 = req(0, None, &[]);
    part1.continue_ = true;
    part1.data = Bytes::copy_from_slice(a);
    let ack = expect_continue(m.on_request(&part1));
    assert!(ack.data.is_empty() && !ack.transit);
    let mut part2 = req(0, Some(1), &[]);
    part2.data = Bytes::copy_from_slice(b);
    let r = expect_continue(m.on_request(&part2));
    assert!(r.transit);
    assert_eq!(value(&r, "AuthMethod").as_deref(), Some("None"));
}

#[test]
fn endless_login_is_cut_off() {
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    expect_continue(m.on_request(&req(0, None, FIRST)));
    let mut last = None;
    for _ in 0..MAX_LOGIN_EXCHANGES {
        last = Some(m.on_request(&req(0, None, &[])));
        if matches!(last, Some(LoginAction::Fail(..))) {
            break;
        }
    }
    expect_fail(last.unwrap(), LoginStatus::INITIATOR_ERROR);
}

#[test]
fn the_largest_answer_still_fits_one_login_pdu() {
    use crate::iscsi::limits::MAX_KEYS;
    use crate::iscsi::pdu::{FrameConfig, Pdu};
    let c = cfg();
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let names: Vec<String> = (0..MAX_KEYS - FIRST.len())
        .map(|i| format!("X-{i:061}"))
        .collect();
    let mut pairs: Vec<(&str, &str)> = FIRST.to_vec();
    pairs.extend(names.iter().map(|n| (n.as_str(), "v")));
    let r = expect_continue(m.on_request(&req(0, None, &pairs)));
    assert_eq!(answers(&r).len(), MAX_KEYS - FIRST.len() + 2);
    let mut wire = bytes::BytesMut::new();
    Pdu::LoginResponse(r)
        .encode(&mut wire, &FrameConfig::login())
        .unwrap();
}

/// Runs CHAP through `m` as an initiator knowing `secret`; returns the
/// final action and the target's answer to the mutual challenge if asked.
fn chap_login(
    m: &mut LoginMachine<'_>,
    algorithms: &str,
    secret: &[u8],
    mutual: Option<(&str, &str)>,
) -> LoginAction {
    let first = [
        ("InitiatorName", INITIATOR),
        ("SessionType", "Normal"),
        ("TargetName", "iqn.2016-09.com.openebs.cstor:vol1"),
        ("AuthMethod", "CHAP,None"),
    ];
    let r1 = expect_continue(m.on_request(&req(0, Some(1), &first)));
    assert!(!r1.transit, "the target is not ready to leave security yet");
    assert_eq!(value(&r1, "AuthMethod").as_deref(), Some("CHAP"));
    let r2 = expect_continue(m.on_request(&req(0, None, &[("CHAP_A", algorithms)])));
    let alg = match value(&r2, "CHAP_A").as_deref() {
        Some("5") => ChapAlgorithm::Md5,
        Some("7") => ChapAlgorithm::Sha256,
        other => panic!("CHAP_A {other:?}"),
    };
    let id: u8 = value(&r2, "CHAP_I").unwrap().parse().unwrap();
    let challenge = decode_binary(&value(&r2, "CHAP_C").unwrap()).unwrap();
    assert!(challenge.len() >= 16);
    let response = encode_binary(&alg.response(id, secret, &challenge));
    let mut pairs = vec![("CHAP_N", "alice"), ("CHAP_R", response.as_str())];
    if let Some((i, c)) = mutual {
        pairs.push(("CHAP_I", i));
        pairs.push(("CHAP_C", c));
    }
    m.on_request(&req(0, Some(1), &pairs))
}

#[test]
fn chap_md5_and_sha256_logins_succeed_with_the_right_secret() {
    let c = chap_cfg(false);
    for alg in ["5", "7", "7,5"] {
        let mut m = LoginMachine::new(&c, tsih(), addr());
        let r = expect_continue(chap_login(&mut m, alg, SECRET, None));
        assert!(r.transit);
        assert_eq!((r.csg, r.nsg), (0, 1));
        expect_complete(m.on_request(&req(1, Some(3), OPERATIONAL)));
    }
}

#[test]
fn chap_with_a_wrong_secret_is_02_01() {
    let c = chap_cfg(false);
    let mut m = LoginMachine::new(&c, tsih(), addr());
    expect_fail(
        chap_login(&mut m, "5", b"wrong-secret-123", None),
        LoginStatus::AUTHENTICATION_FAILURE,
    );
}

#[test]
fn mutual_chap_returns_the_targets_proof() {
    let c = chap_cfg(true);
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let my_challenge = "0x00112233445566778899aabbccddeeff";
    let r = expect_continue(chap_login(&mut m, "5", SECRET, Some(("200", my_challenge))));
    assert_eq!(value(&r, "CHAP_N").as_deref(), Some("tgt"));
    let want =
        ChapAlgorithm::Md5.response(200, TARGET_SECRET, &decode_binary(my_challenge).unwrap());
    assert_eq!(value(&r, "CHAP_R"), Some(encode_binary(&want)));
}

#[test]
fn chap_required_but_initiator_skips_security_is_02_01() {
    let c = chap_cfg(false);
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2016-09.com.openebs.cstor:vol1"),
    ];
    expect_fail(
        m.on_request(&req(1, Some(3), &pairs)),
        LoginStatus::AUTHENTICATION_FAILURE,
    );
}

#[test]
fn chap_required_but_only_none_offered_is_02_01_with_reject() {
    let c = chap_cfg(false);
    let mut m = LoginMachine::new(&c, tsih(), addr());
    expect_fail(
        m.on_request(&req(0, Some(1), FIRST)),
        LoginStatus::AUTHENTICATION_FAILURE,
    );
}

#[test]
fn chap_required_and_transit_without_auth_method_is_02_01() {
    let c = chap_cfg(false);
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2016-09.com.openebs.cstor:vol1"),
    ];
    expect_fail(
        m.on_request(&req(0, Some(1), &pairs)),
        LoginStatus::AUTHENTICATION_FAILURE,
    );
}

#[test]
fn chap_response_before_challenge_is_02_01() {
    let c = chap_cfg(false);
    let mut m = LoginMachine::new(&c, tsih(), addr());
    let first = [
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2016-09.com.openebs.cstor:vol1"),
        ("AuthMethod", "CHAP"),
    ];
    expect_continue(m.on_request(&req(0, None, &first)));
    let pairs = [("CHAP_N", "alice"), ("CHAP_R", "0x00")];
    expect_fail(
        m.on_request(&req(0, Some(1), &pairs)),
        LoginStatus::AUTHENTICATION_FAILURE,
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    const KEYS: &[(&str, &[&str])] = &[
        ("InitiatorName", &[INITIATOR, ""]),
        (
            "TargetName",
            &["iqn.2016-09.com.openebs.cstor:vol1", "iqn.x:other"],
        ),
        ("SessionType", &["Normal", "Discovery", "Bogus"]),
        ("AuthMethod", &["None", "CHAP", "CHAP,None", "SRP"]),
        ("CHAP_A", &["5", "7", "6"]),
        ("CHAP_N", &["alice"]),
        ("CHAP_R", &["0x00", "0xzz"]),
        ("MaxBurstLength", &["4096", "0", "x"]),
        ("HeaderDigest", &["CRC32C,None", "None"]),
        ("X-vendor", &["1"]),
    ];

    fn request() -> impl Strategy<Value = LoginRequest> {
        (
            proptest::collection::vec((0..KEYS.len(), 0usize..4), 0..6),
            0u8..4,
            0u8..4,
            any::<bool>(),
            any::<u32>(),
        )
            .prop_map(|(keys, csg, nsg, transit, itt)| {
                let pairs: Vec<(&str, &str)> = keys
                    .iter()
                    .map(|(k, v)| {
                        let (key, values) = KEYS[*k];
                        (key, values[v % values.len()])
                    })
                    .collect();
                let mut r = req(csg, transit.then_some(nsg), &pairs);
                r.itt = itt;
                r
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the initiator sends: every response echoes the ITT and
        /// takes the next StatSN; a failure has a non-zero class and no T
        /// bit; a success ends in full feature with our TSIH; the machine
        /// never runs past its exchange bound.
        #[test]
        fn any_request_sequence_gets_well_formed_answers(
            reqs in proptest::collection::vec(request(), 1..40),
            chap in any::<bool>(),
        ) {
            let c = if chap { chap_cfg(false) } else { cfg() };
            let mut m = LoginMachine::new(&c, tsih(), addr());
            let mut expected_stat_sn = None;
            for (i, r) in reqs.iter().enumerate() {
                prop_assert!(i as u32 <= MAX_LOGIN_EXCHANGES);
                let action = m.on_request(r);
                let rsp = match &action {
                    LoginAction::Continue(rsp)
                    | LoginAction::Fail(rsp, _)
                    | LoginAction::Complete(rsp, _) => rsp,
                };
                prop_assert_eq!(rsp.itt, r.itt);
                let want = expected_stat_sn.unwrap_or(rsp.stat_sn);
                prop_assert_eq!(rsp.stat_sn, want);
                expected_stat_sn = Some(want.wrapping_add(1));
                match action {
                    LoginAction::Continue(rsp) => {
                        prop_assert_eq!(rsp.status_class, 0);
                        prop_assert_eq!(rsp.tsih, 0);
                    }
                    LoginAction::Fail(rsp, why) => {
                        prop_assert_ne!(rsp.status_class, 0);
                        prop_assert!(!rsp.transit);
                        prop_assert_eq!(
                            (rsp.status_class, rsp.status_detail),
                            (why.status().class, why.status().detail)
                        );
                        break;
                    }
                    LoginAction::Complete(rsp, done) => {
                        prop_assert!(rsp.transit);
                        prop_assert_eq!(rsp.nsg, stage::FULL_FEATURE);
                        prop_assert_eq!(rsp.tsih, tsih().get());
                        prop_assert_eq!(done.initiator_name.as_str(), INITIATOR);
                        break;
                    }
                }
            }
        }
    }
}
