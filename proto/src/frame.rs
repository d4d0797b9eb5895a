//! The frame layer: header + payload, both checksummed, bounded in size.
//!
//! Decoding follows the mini-redis pattern: an incomplete frame is
//! `Ok(None)` and consumes nothing; the header is verified (magic, crc32c,
//! reserved) and the payload length bounded *before* any buffer is reserved
//! for the payload; a complete frame is split off the read buffer without
//! copying its payload (`split_to(..).freeze()`).
//!
//! Every [`FrameError`] is fatal to the connection: after a bad magic or
//! checksum the byte stream cannot be resynchronised. Frames whose opcode or
//! payload the message layer cannot read are *not* frame errors (see
//! [`crate::message`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::header::{FrameHeader, WireHeader, HEADER_LEN};
use crate::wire::PayloadError;

/// A checksum-verified frame: header fields and the payload they cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header fields (length and checksums are derived from `payload`).
    pub header: FrameHeader,
    /// The payload; on decode a zero-copy slice of the read buffer.
    pub payload: Bytes,
}

/// Why a byte stream is no longer a valid frame stream. Fatal: close the
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame does not start with [`crate::header::MAGIC`].
    #[error("bad frame magic {found:#010x}")]
    BadMagic {
        /// The four bytes found, as a little-endian u32.
        found: u32,
    },
    /// The header checksum does not match the header.
    #[error("header crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        /// Checksum carried by the header.
        stored: u32,
        /// Checksum of the bytes received.
        computed: u32,
    },
    /// The reserved header field is not zero.
    #[error("reserved header field is {found:#x}, must be 0")]
    ReservedNonZero {
        /// The value found.
        found: u32,
    },
    /// The payload length exceeds the configured bound.
    #[error("frame payload of {len} bytes exceeds the bound of {max} bytes")]
    PayloadTooLarge {
        /// Length announced by the header.
        len: u32,
        /// The decoder's bound.
        max: u32,
    },
    /// The payload checksum does not match the payload.
    #[error("payload crc32c mismatch on opcode {opcode:#06x} io_seq {io_seq}: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadChecksum {
        /// Raw opcode of the frame.
        opcode: u16,
        /// io_seq of the frame.
        io_seq: u64,
        /// Checksum carried by the header.
        stored: u32,
        /// Checksum of the bytes received.
        computed: u32,
    },
    /// The transport failed (from the codec's stream).
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a frame could not be encoded. Nothing was appended to the buffer.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The payload exceeds the bound configured for the encoder.
    #[error("frame payload of {len} bytes exceeds the bound of {max} bytes")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The encoder's bound.
        max: u32,
    },
    /// The message breaks a rule of the protocol (a bound, a combination
    /// the decoder would refuse); sending it would only earn a `BadRequest`.
    #[error("invalid message, opcode {opcode:#06x}: {source}")]
    Invalid {
        /// Raw opcode of the message.
        opcode: u16,
        /// The rule broken.
        #[source]
        source: PayloadError,
    },
    /// The transport failed (from the codec's sink).
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}

impl Frame {
    /// Decodes one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` if `buf` does not hold a whole frame yet; it then
    /// consumes nothing and reserves room for the rest of the frame (once
    /// the header has been verified and the length bounded). On success the
    /// frame's bytes are removed from `buf`.
    pub fn decode(buf: &mut BytesMut, max_payload_bytes: u32) -> Result<Option<Frame>, FrameError> {
        let Some(raw) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let wire = WireHeader::parse(raw)?;
        if wire.payload_len > max_payload_bytes {
            return Err(FrameError::PayloadTooLarge {
                len: wire.payload_len,
                max: max_payload_bytes,
            });
        }
        // u32 always fits usize on the 32- and 64-bit targets we build for;
        // saturate rather than wrap if it ever did not.
        let payload_len = usize::try_from(wire.payload_len).unwrap_or(usize::MAX);
        let frame_len = HEADER_LEN.saturating_add(payload_len);
        if let Some(missing) = frame_len.checked_sub(buf.len()).filter(|&n| n > 0) {
            buf.reserve(missing);
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(payload_len).freeze();
        let computed = crc32c::crc32c(&payload);
        if computed != wire.payload_crc {
            return Err(FrameError::PayloadChecksum {
                opcode: wire.header.opcode,
                io_seq: wire.header.io_seq,
                stored: wire.payload_crc,
                computed,
            });
        }
        Ok(Some(Frame {
            header: wire.header,
            payload,
        }))
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut, max_payload_bytes: u32) -> Result<(), EncodeError> {
        encode_frame(
            &self.header,
            dst,
            max_payload_bytes,
            self.payload.len(),
            |dst| dst.extend_from_slice(&self.payload),
        )
    }
}

/// Appends one frame to `dst`: reserves once (header + `payload_hint`
/// bytes), leaves room for the header, lets `put_payload` append the payload
/// in place (so data is copied exactly once, into `dst`), then checksums the
/// payload and fills the header in. On error `dst` is left as it was.
pub(crate) fn encode_frame(
    header: &FrameHeader,
    dst: &mut BytesMut,
    max_payload_bytes: u32,
    payload_hint: usize,
    put_payload: impl FnOnce(&mut BytesMut),
) -> Result<(), EncodeError> {
    let too_large = |len: usize| EncodeError::PayloadTooLarge {
        len,
        max: max_payload_bytes,
    };
    if u32::try_from(payload_hint).map_or(true, |len| len > max_payload_bytes) {
        return Err(too_large(payload_hint));
    }
    let start = dst.len();
    dst.reserve(HEADER_LEN.saturating_add(payload_hint));
    dst.put_bytes(0, HEADER_LEN);
    put_payload(dst);
    let Some((head, payload)) = dst
        .get_mut(start..)
        .and_then(|frame| frame.split_first_chunk_mut::<HEADER_LEN>())
    else {
        // Unreachable: the header room was just appended.
        dst.truncate(start);
        return Err(EncodeError::Invalid {
            opcode: header.opcode,
            source: PayloadError::Invalid {
                field: "header",
                reason: "no room for the header",
            },
        });
    };
    let payload_len = match u32::try_from(payload.len()) {
        Ok(len) if len <= max_payload_bytes => len,
        _ => {
            let len = payload.len();
            dst.truncate(start);
            return Err(too_large(len));
        }
    };
    header.write(payload_len, crc32c::crc32c(payload), head);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;

    fn frame(payload: &'static [u8]) -> Frame {
        Frame {
            header: FrameHeader {
                version: 1,
                opcode: 0x10,
                flags: 0,
                status: Status::Ok,
                session_id: 7,
                epoch: 3,
                io_seq: 99,
                offset: 4096,
                length: payload.len() as u32,
            },
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn encoded_frame_decodes_to_itself_and_consumes_exactly_its_bytes() {
        let mut buf = BytesMut::new();
        frame(b"hello").encode(&mut buf, 1024).unwrap();
        buf.extend_from_slice(b"next");
        let decoded = Frame::decode(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(decoded, frame(b"hello"));
        assert_eq!(&buf[..], b"next");
    }

    #[test]
    fn partial_frame_is_incomplete_and_consumes_nothing() {
        let mut whole = BytesMut::new();
        frame(b"payload").encode(&mut whole, 1024).unwrap();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(
                Frame::decode(&mut part, 1024).unwrap().is_none(),
                "cut {cut}"
            );
            assert_eq!(part.len(), cut);
        }
    }

    #[test]
    fn oversize_length_is_refused_before_reserving() {
        let mut buf = BytesMut::new();
        frame(&[0u8; 100]).encode(&mut buf, 1024).unwrap();
        buf.truncate(HEADER_LEN);
        let capacity_before = buf.capacity();
        let err = Frame::decode(&mut buf, 99).unwrap_err();
        assert!(matches!(
            err,
            FrameError::PayloadTooLarge { len: 100, max: 99 }
        ));
        assert_eq!(buf.capacity(), capacity_before);
    }

    #[test]
    fn incomplete_payload_reserves_the_rest_of_the_frame() {
        let mut whole = BytesMut::new();
        frame(&[5u8; 300]).encode(&mut whole, 1024).unwrap();
        let mut part = BytesMut::from(&whole[..HEADER_LEN + 10]);
        assert!(Frame::decode(&mut part, 1024).unwrap().is_none());
        assert!(part.capacity() >= whole.len());
    }

    #[test]
    fn encoding_beyond_the_bound_fails_and_leaves_the_buffer_untouched() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        let err = frame(&[0u8; 100]).encode(&mut buf, 99).unwrap_err();
        assert!(matches!(err, EncodeError::PayloadTooLarge { len: 100, .. }));
        assert_eq!(&buf[..], b"prefix");
    }

    #[test]
    fn encoding_appends_after_existing_bytes() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        frame(b"x").encode(&mut buf, 99).unwrap();
        assert_eq!(&buf[..6], b"prefix");
        let mut rest = buf.split_off(6);
        assert_eq!(Frame::decode(&mut rest, 99).unwrap().unwrap(), frame(b"x"));
    }

    #[test]
    fn corrupted_payload_byte_is_a_checksum_error() {
        let mut buf = BytesMut::new();
        frame(b"payload").encode(&mut buf, 1024).unwrap();
        buf[HEADER_LEN + 2] ^= 0x40;
        assert!(matches!(
            Frame::decode(&mut buf, 1024),
            Err(FrameError::PayloadChecksum { io_seq: 99, .. })
        ));
    }
}
