//! The property the `proto_frame` fuzz target checks, shared with the
//! corpus replay test (`tests/corpus.rs`) so that CI runs the same check on
//! the committed corpus. Included by path from `fuzz/fuzz_targets/`.
//!
//! For any input: decoding never panics; every frame decoded re-encodes to
//! exactly the bytes it came from; every packet decoded from it re-encodes
//! to those bytes too; every message error yields an encodable reply (or
//! none, for replies). The input is decoded as is, then once more with its
//! checksums and lengths fixed up, so that the fuzzer gets past the crc32c
//! checks into the message layer.

use bytes::BytesMut;
use cstor_proto::header::{HEADER_CRC_AT, PAYLOAD_CRC_AT, PAYLOAD_LEN_AT};
use cstor_proto::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use cstor_proto::{Frame, Packet, HEADER_LEN};

/// What decoding one input produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Frames decoded.
    pub frames: usize,
    /// Packets decoded from them.
    pub packets: usize,
    /// The stream ended in a frame error.
    pub frame_error: bool,
}

/// Decodes `data` as a frame stream and checks the invariants above.
pub fn decode_stream(data: &[u8]) -> Outcome {
    let max = DEFAULT_MAX_PAYLOAD_BYTES;
    let mut outcome = Outcome::default();
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        let frame = match Frame::decode(&mut buf, max) {
            Ok(Some(frame)) => frame,
            Ok(None) => return outcome,
            Err(_) => {
                outcome.frame_error = true;
                return outcome;
            }
        };
        outcome.frames += 1;
        let consumed = &before[..before.len() - buf.len()];
        let mut again = BytesMut::new();
        frame
            .encode(&mut again, max)
            .expect("a decoded frame encodes");
        assert_eq!(&again[..], consumed, "frame re-encodes differently");
        match Packet::decode(frame.clone()) {
            Ok(packet) => {
                outcome.packets += 1;
                let mut again = BytesMut::new();
                packet
                    .encode(&mut again, max)
                    .expect("a decoded packet encodes");
                assert_eq!(&again[..], consumed, "packet re-encodes differently");
            }
            Err(error) => {
                if let Some(reply) = error.reply_to(&frame.header) {
                    let mut out = BytesMut::new();
                    reply.encode(&mut out, max).expect("an error reply encodes");
                    let echoed = Frame::decode(&mut out, max).expect("reply decodes");
                    let echoed =
                        Packet::decode(echoed.expect("whole reply")).expect("reply packet");
                    assert_eq!(echoed, reply);
                }
            }
        }
    }
}

/// Rewrites every header of `data` so that its payload length fits the
/// bytes present and both checksums match.
pub fn fix_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0usize;
    while let Some(header) = out.get(at..at + HEADER_LEN) {
        let mut len_field = [0u8; 4];
        len_field.copy_from_slice(&header[PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 4]);
        let available = out.len() - at - HEADER_LEN;
        let payload_len = (u32::from_le_bytes(len_field) as usize).min(available);
        let payload_start = at + HEADER_LEN;
        let payload_crc = crc32c::crc32c(&out[payload_start..payload_start + payload_len]);
        let header = &mut out[at..at + HEADER_LEN];
        header[PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 4]
            .copy_from_slice(&(payload_len as u32).to_le_bytes());
        header[PAYLOAD_CRC_AT..PAYLOAD_CRC_AT + 4].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&header[..HEADER_CRC_AT]);
        header[HEADER_CRC_AT..].copy_from_slice(&header_crc.to_le_bytes());
        at = payload_start + payload_len;
    }
    out
}

/// The whole fuzz check: the raw input, then its fixed-up twin.
pub fn check(data: &[u8]) -> Outcome {
    let raw = decode_stream(data);
    let fixed = fix_checksums(data);
    if fixed != data {
        decode_stream(&fixed);
    }
    raw
}
