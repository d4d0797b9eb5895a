//! Property tests of the whole codec against a trivial model: the list of
//! packets that was encoded is the list that must come out, whatever the
//! packets, however the stream is cut, and no corrupted byte may turn into
//! a packet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use bytes::BytesMut;
use common::{arb_packet, encode_all, samples};
use cstor_proto::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use cstor_proto::{Frame, FrameCodec, Packet};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// Feeds `stream` to a codec in the given chunks, decoding after each one;
/// returns the packets decoded and what is left undecoded.
fn decode_in_chunks(stream: &[u8], cuts: &[usize]) -> (Vec<Packet>, usize) {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            packets.push(Packet::decode(frame).unwrap());
        }
    }
    (packets, buf.len())
}

fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, cstor_proto::FrameError> {
    Frame::decode(&mut BytesMut::from(bytes), DEFAULT_MAX_PAYLOAD_BYTES)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_packet_round_trips_and_reencodes_identically(packet in arb_packet()) {
        let mut buf = BytesMut::new();
        packet.encode(&mut buf, DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        let wire = buf.clone().freeze();
        let frame = Frame::decode(&mut buf, DEFAULT_MAX_PAYLOAD_BYTES).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        let decoded = Packet::decode(frame).unwrap();
        prop_assert_eq!(&decoded, &packet);
        let mut again = BytesMut::new();
        decoded.encode(&mut again, DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        prop_assert_eq!(&again[..], &wire[..]);
    }

    #[test]
    fn any_single_corrupted_byte_is_an_error(
        packet in arb_packet(),
        position in any::<proptest::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut wire = encode_all(std::slice::from_ref(&packet));
        let at = position.index(wire.len());
        wire[at] ^= xor;
        prop_assert!(decode_one(&wire).is_err(), "byte {} ^ {:#x} accepted", at, xor);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_stream_cut_anywhere_decodes_to_the_same_packets(
        packets in vec(arb_packet(), 1..8),
        cut_points in vec(any::<proptest::sample::Index>(), 0..16),
    ) {
        let stream = encode_all(&packets);
        let mut cuts: Vec<usize> = cut_points.iter().map(|i| i.index(stream.len())).collect();
        cuts.sort_unstable();
        let (decoded, left) = decode_in_chunks(&stream, &cuts);
        prop_assert_eq!(decoded, packets);
        prop_assert_eq!(left, 0);
    }
}

#[test]
fn the_sample_stream_decodes_fed_one_byte_at_a_time() {
    let packets = samples();
    let stream = encode_all(&packets);
    let cuts: Vec<usize> = (1..stream.len()).collect();
    let (decoded, left) = decode_in_chunks(&stream, &cuts);
    assert_eq!(decoded, packets);
    assert_eq!(left, 0);
}

#[test]
fn every_byte_of_every_sample_is_covered_by_a_checksum() {
    for packet in samples() {
        let wire = encode_all(std::slice::from_ref(&packet));
        for at in 0..wire.len() {
            for xor in [0x01, 0x80, 0xff] {
                let mut bad = wire.clone();
                bad[at] ^= xor;
                assert!(
                    decode_one(&bad).is_err(),
                    "{:?}: byte {at} ^ {xor:#x} accepted",
                    packet.message
                );
            }
        }
    }
}

#[test]
fn samples_cover_every_message_kind() {
    let kinds: BTreeSet<String> = samples()
        .iter()
        .map(|p| {
            let debug = format!("{:?}", p.message);
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    // Every variant of `Message`.
    assert_eq!(kinds.len(), 30, "{kinds:?}");
}

#[test]
fn the_largest_write_fits_the_default_bound() {
    let packet = Packet {
        session_id: 1,
        epoch: 1,
        io_seq: 1,
        message: cstor_proto::Message::Write(cstor_proto::Write {
            offset: 0,
            data: bytes::Bytes::from(vec![3u8; cstor_proto::limits::MAX_IO_BYTES as usize]),
            fua: false,
        }),
    };
    let stream = encode_all(std::slice::from_ref(&packet));
    let (decoded, _) = decode_in_chunks(&stream, &[10, 100, 70_000]);
    assert_eq!(decoded, vec![packet]);
}
