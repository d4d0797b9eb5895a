//! Tests of PDU framing: round trips of every type, incomplete input,
//! bounds, digests, and the Reject/close answers of RFC 7143 §7.8, §11.17.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::strategy::{any_pdu, digests};
use super::*;

fn cfg(digests: Digests) -> FrameConfig {
    FrameConfig {
        digests,
        max_data_segment_bytes: 1 << 20,
    }
}

fn encoded(pdu: &Pdu, c: &FrameConfig) -> BytesMut {
    let mut b = BytesMut::new();
    pdu.encode(&mut b, c).unwrap();
    b
}

fn nop_out(data: &'static [u8]) -> Pdu {
    Pdu::NopOut(NopOut {
        immediate: true,
        lun: 0,
        itt: 7,
        ttt: u32::MAX,
        cmd_sn: 1,
        exp_stat_sn: 1,
        data: Bytes::from_static(data),
    })
}

const BOTH: Digests = Digests {
    header: true,
    data: true,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_pdu_round_trips(pdu in any_pdu(), d in digests()) {
        let c = cfg(d);
        let mut buf = encoded(&pdu, &c);
        let len = buf.len();
        prop_assert_eq!(len % 4, 0);
        prop_assert_eq!(check(&buf, &c), Ok(Some(len)));
        prop_assert_eq!(decode(&mut buf, &c), Ok(Some(pdu)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn every_strict_prefix_is_incomplete(pdu in any_pdu(), d in digests()) {
        let c = cfg(d);
        let buf = encoded(&pdu, &c);
        for cut in 0..buf.len() {
            prop_assert_eq!(check(&buf[..cut], &c), Ok(None));
        }
    }

    #[test]
    fn any_corrupted_byte_of_a_digested_pdu_is_detected(
        pdu in any_pdu(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let c = cfg(BOTH);
        let mut buf = encoded(&pdu, &c);
        let i = at.index(buf.len());
        buf[i] ^= flip;
        // Flipping a bit of the padding is covered by the data digest too.
        match decode(&mut buf.clone(), &c) {
            Err(PduError::HeaderDigest { .. }) | Err(PduError::DataDigest { .. }) => {}
            // A corrupted header can make the frame look longer than we have.
            Ok(None) => prop_assert!(i < BHS_LEN + 255 * 4 + 4),
            other => prop_assert!(false, "corruption at {} undetected: {:?}", i, other),
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), d in digests()) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode(&mut buf, &cfg(d));
    }
}

#[test]
fn two_pdus_back_to_back_decode_in_order() {
    let c = cfg(BOTH);
    let mut buf = encoded(&nop_out(b"ab"), &c);
    buf.extend_from_slice(&encoded(&nop_out(b"cdefg"), &c));
    assert_eq!(decode(&mut buf, &c), Ok(Some(nop_out(b"ab"))));
    assert_eq!(decode(&mut buf, &c), Ok(Some(nop_out(b"cdefg"))));
    assert_eq!(decode(&mut buf, &c), Ok(None));
}

#[test]
fn data_segment_is_padded_to_four_bytes_with_zeros() {
    let buf = encoded(&nop_out(b"abcde"), &cfg(Digests::default()));
    assert_eq!(buf.len(), BHS_LEN + 8);
    assert_eq!(&buf[BHS_LEN..], b"abcde\0\0\0");
    assert_eq!(&buf[5..8], &[0, 0, 5]);
}

#[test]
fn data_digest_absent_when_data_segment_is_empty() {
    let buf = encoded(&nop_out(b""), &cfg(BOTH));
    assert_eq!(buf.len(), BHS_LEN + DIGEST_LEN);
}

#[test]
fn oversized_data_segment_is_refused_before_the_data_arrives() {
    let small = FrameConfig {
        digests: Digests::default(),
        max_data_segment_bytes: 8,
    };
    let buf = encoded(&nop_out(b"0123456789"), &cfg(Digests::default()));
    // Only the header is offered: the bound is enforced already.
    let err = check(&buf[..BHS_LEN], &small).unwrap_err();
    assert!(matches!(
        err,
        PduError::DataSegmentTooLong {
            len: 10,
            max: 8,
            ..
        }
    ));
    assert_eq!(err.disposition(), Disposition::Close);
}

#[test]
fn oversized_data_segment_is_refused_before_a_claimed_ahs_arrives() {
    let small = FrameConfig {
        digests: Digests::default(),
        max_data_segment_bytes: 8,
    };
    // Garbage: TotalAHSLength 255 words, DataSegmentLength 2^24 - 1.
    let garbage = [0xffu8; BHS_LEN];
    let err = check(&garbage, &small).unwrap_err();
    assert!(
        matches!(err, PduError::DataSegmentTooLong { .. }),
        "{err:?}"
    );
    // With a header digest the length is not trusted before the digest.
    let digested = FrameConfig {
        digests: BOTH,
        ..small
    };
    assert_eq!(check(&garbage, &digested), Ok(None));
}

#[test]
fn encode_refuses_data_beyond_the_peers_limit() {
    let small = FrameConfig {
        digests: Digests::default(),
        max_data_segment_bytes: 4,
    };
    let mut b = BytesMut::new();
    assert_eq!(
        nop_out(b"01234").encode(&mut b, &small),
        Err(EncodeError::DataSegmentTooLong { len: 5, max: 4 })
    );
}

#[test]
fn bad_header_digest_closes_the_connection() {
    let c = cfg(BOTH);
    let mut buf = encoded(&nop_out(b"x"), &c);
    buf[20] ^= 1;
    let err = decode(&mut buf, &c).unwrap_err();
    assert!(matches!(err, PduError::HeaderDigest { .. }));
    assert_eq!(err.disposition(), Disposition::Close);
}

#[test]
fn bad_data_digest_is_rejected_with_the_header_and_the_pdu_consumed() {
    let c = cfg(BOTH);
    let mut buf = encoded(&nop_out(b"payload"), &c);
    let header: [u8; BHS_LEN] = buf[..BHS_LEN].try_into().unwrap();
    buf[BHS_LEN + DIGEST_LEN] ^= 0x10;
    buf.extend_from_slice(&encoded(&nop_out(b"next"), &c));
    let err = decode(&mut buf, &c).unwrap_err();
    assert_eq!(
        err.disposition(),
        Disposition::Reject {
            reason: RejectReason::DataDigestError,
            header: Bhs(header)
        }
    );
    assert_eq!(decode(&mut buf, &c), Ok(Some(nop_out(b"next"))));
}

#[test]
fn unknown_opcode_is_rejected_as_command_not_supported() {
    let c = cfg(Digests::default());
    let mut raw = [0u8; BHS_LEN + 4];
    raw[0] = 0x1c; // vendor-specific initiator opcode
    raw[7] = 3; // DataSegmentLength 3, padded to 4
    raw[16..20].copy_from_slice(&9u32.to_be_bytes());
    let mut buf = BytesMut::from(&raw[..]);
    let err = decode(&mut buf, &c).unwrap_err();
    assert!(matches!(err, PduError::UnknownOpcode { opcode: 0x1c, .. }));
    match err.disposition() {
        Disposition::Reject { reason, header } => {
            assert_eq!(reason, RejectReason::CommandNotSupported);
            assert_eq!(header.itt(), 9);
        }
        Disposition::Close => panic!("unknown opcode must not close"),
    }
    assert!(buf.is_empty(), "the unknown PDU is consumed");
}

#[test]
fn login_request_with_transit_and_continue_is_an_invalid_field() {
    let c = cfg(Digests::default());
    let mut raw = [0u8; BHS_LEN];
    raw[0] = 0x43;
    raw[1] = 0xc0 | 0x04 | 0x01;
    let mut buf = BytesMut::from(&raw[..]);
    let err = decode(&mut buf, &c).unwrap_err();
    assert!(matches!(
        err.disposition(),
        Disposition::Reject {
            reason: RejectReason::InvalidPduField,
            ..
        }
    ));
}

#[test]
fn truncated_ahs_is_an_invalid_field() {
    let c = cfg(Digests::default());
    let mut raw = [0u8; BHS_LEN + 4];
    raw[0] = 0x01;
    raw[4] = 1; // one AHS word
    raw[BHS_LEN..BHS_LEN + 2].copy_from_slice(&40u16.to_be_bytes()); // claims 40 bytes
    raw[BHS_LEN + 2] = 1;
    let mut buf = BytesMut::from(&raw[..]);
    assert!(matches!(
        decode(&mut buf, &c),
        Err(PduError::InvalidField {
            field: "AHSLength",
            ..
        })
    ));
}

#[test]
fn extended_cdb_and_bidi_ahs_decode() {
    let c = cfg(BOTH);
    let cdb: Vec<u8> = (0u8..32).collect();
    let cmd = Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: true,
        attr: TaskAttr::Simple,
        lun: 1 << 48,
        itt: 3,
        expected_data_len: 4096,
        cmd_sn: 10,
        exp_stat_sn: 20,
        cdb: Bytes::from(cdb),
        bidi_read_len: Some(512),
        data: Bytes::new(),
    });
    let mut buf = encoded(&cmd, &c);
    // Extended CDB AHS: 3 + 17 bytes padded to 20; bidi AHS: 8 bytes.
    assert_eq!(buf[4], 7);
    assert_eq!(&buf[BHS_LEN..BHS_LEN + 4], &[0, 17, 1, 0]);
    assert_eq!(decode(&mut buf, &c), Ok(Some(cmd)));
}

#[test]
fn scsi_response_sense_segment_has_its_length_prefix() {
    let seg = ScsiResponse::sense_segment(&[0x70, 0, 5]);
    assert_eq!(&seg[..], &[0, 3, 0x70, 0, 5]);
    let rsp = ScsiResponse {
        response: 0,
        status: 0x02,
        residual: Residual::None,
        bidi_read_residual: Residual::None,
        itt: 1,
        snack_tag: 0,
        stat_sn: 1,
        exp_cmd_sn: 1,
        max_cmd_sn: 1,
        exp_data_sn: 0,
        data: seg,
    };
    assert_eq!(rsp.sense(), Some(&[0x70, 0, 5][..]));
}

#[test]
fn data_in_with_status_sets_final_and_status_bits() {
    let din = Pdu::DataIn(DataIn {
        final_: false,
        ack: false,
        status: Some(0),
        residual: Residual::Underflow(512),
        lun: 0,
        itt: 1,
        ttt: u32::MAX,
        stat_sn: 5,
        exp_cmd_sn: 6,
        max_cmd_sn: 7,
        data_sn: 0,
        buffer_offset: 0,
        data: Bytes::from_static(b"data"),
    });
    let buf = encoded(&din, &cfg(Digests::default()));
    assert_eq!(buf[1], 0x80 | 0x02 | 0x01);
    assert_eq!(&buf[44..48], &512u32.to_be_bytes());
}

#[test]
fn reject_carries_the_offending_header() {
    let mut h = Bhs::default();
    h.set_opcode(0x01, false);
    h.set_u32(16, 0x1234);
    let rej = Pdu::Reject(Reject::of(RejectReason::ProtocolError, &h));
    let buf = encoded(&rej, &cfg(Digests::default()));
    assert_eq!(buf[0], 0x3f);
    assert_eq!(buf[2], 0x04);
    assert_eq!(&buf[16..20], &[0xff; 4]);
    assert_eq!(&buf[BHS_LEN..], &h.0);
}

#[test]
fn stamp_numbers_responses_and_says_which_take_a_stat_sn() {
    let mut rsp = Pdu::Reject(Reject::of(RejectReason::ProtocolError, &Bhs::default()));
    assert!(rsp.stamp(10, 20, 30));
    let Pdu::Reject(r) = &rsp else { unreachable!() };
    assert_eq!((r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn), (10, 20, 30));

    let mut r2t = Pdu::R2t(R2t {
        lun: 0,
        itt: 1,
        ttt: 2,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        r2t_sn: 0,
        buffer_offset: 0,
        desired_len: 512,
    });
    assert!(
        !r2t.stamp(10, 20, 30),
        "R2T carries StatSN without taking it"
    );

    let ping = |itt| {
        Pdu::NopIn(NopIn {
            lun: 0,
            itt,
            ttt: 5,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data: Bytes::new(),
        })
    };
    assert!(!ping(u32::MAX).stamp(1, 1, 1), "target ping");
    assert!(ping(3).stamp(1, 1, 1), "answer to an initiator ping");
    assert!(
        !nop_out(b"").stamp(1, 1, 1),
        "initiator PDUs are not stamped"
    );
}
