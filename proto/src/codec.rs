//! `tokio_util::codec` glue: [`FrameCodec`] decodes [`Frame`]s and encodes
//! frames and [`Packet`]s, with a hard bound on the payload length.
//!
//! The codec yields frames, not packets, on purpose: a frame error is fatal
//! (`Framed` ends the stream), while a frame the message layer cannot read
//! must still reach the connection so that it can answer it
//! ([`crate::MessageError::reply_to`]) and carry on. The connection calls
//! [`Packet::decode`] on each frame.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{EncodeError, Frame, FrameError};
use crate::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use crate::message::Packet;

/// The replication protocol codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max_payload_bytes: u32,
}

impl FrameCodec {
    /// A codec bounded at [`DEFAULT_MAX_PAYLOAD_BYTES`].
    pub fn new() -> FrameCodec {
        FrameCodec::with_max_payload(DEFAULT_MAX_PAYLOAD_BYTES)
    }

    /// A codec refusing (on decode) and never producing (on encode) a
    /// payload longer than `max_payload_bytes`.
    pub fn with_max_payload(max_payload_bytes: u32) -> FrameCodec {
        FrameCodec { max_payload_bytes }
    }

    /// The bound.
    pub fn max_payload_bytes(&self) -> u32 {
        self.max_payload_bytes
    }
}

impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec::new()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let frame = Frame::decode(src, self.max_payload_bytes)?;
        if src.len() < crate::header::HEADER_LEN {
            reserve_read_ahead(src);
        }
        Ok(frame)
    }
}

/// Encoded frames a connection gathers before `Framed` writes them out
/// without waiting for the flush (its default, 8 KiB, is two 4 KiB data
/// frames: at queue depth 32 a batch went out in 16 writes). Set with
/// `Framed::set_backpressure_boundary` on connections that batch.
pub const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Free space the next socket read of a framed connection gets.
pub const READ_AHEAD_BYTES: usize = 64 * 1024;

/// Makes room for [`READ_AHEAD_BYTES`] when less than half of it is free.
/// A decoder calls it when its buffer holds no whole header any more:
/// `Framed` reads into the buffer's spare capacity only, so without it the
/// tail of an earlier allocation (what is left after splitting off the last
/// payloads) caps the read, and a 4 KiB data frame arrives in two reads.
pub fn reserve_read_ahead(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_AHEAD_BYTES / 2 {
        buf.reserve(READ_AHEAD_BYTES);
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = EncodeError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
        frame.encode(dst, self.max_payload_bytes)
    }
}

impl Encoder<&Packet> for FrameCodec {
    type Error = EncodeError;

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
        packet.encode(dst, self.max_payload_bytes)
    }
}

impl Encoder<Packet> for FrameCodec {
    type Error = EncodeError;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
        packet.encode(dst, self.max_payload_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::HEADER_LEN;
    use crate::message::Message;

    fn heartbeat(io_seq: u64) -> Packet {
        Packet {
            session_id: 1,
            epoch: 2,
            io_seq,
            message: Message::Heartbeat,
        }
    }

    /// A write of one 4 KiB block of ones.
    fn write_4k() -> Packet {
        Packet {
            message: Message::Write(crate::message::Write {
                offset: 0,
                data: bytes::Bytes::from(vec![1u8; 4096]),
                fua: false,
            }),
            ..heartbeat(1)
        }
    }

    #[test]
    fn codec_round_trips_packets_through_frames() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        codec.encode(heartbeat(5), &mut buf).unwrap();
        codec.encode(&heartbeat(6), &mut buf).unwrap();
        for io_seq in [5, 6] {
            let frame = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(Packet::decode(frame).unwrap(), heartbeat(io_seq));
        }
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn an_emptied_buffer_has_room_for_a_whole_data_frame() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::with_capacity(HEADER_LEN + 4096 + 100);
        let write = write_4k();
        codec.encode(&write, &mut buf).unwrap();
        let frame = codec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert!(buf.capacity() >= READ_AHEAD_BYTES / 2, "{}", buf.capacity());
        drop(frame);
        // A partial header keeps what it has and gains the room too.
        let mut partial = BytesMut::with_capacity(16);
        partial.extend_from_slice(&[0u8; 10]);
        assert!(codec.decode(&mut partial).unwrap().is_none());
        assert_eq!(&partial[..], &[0u8; 10]);
        assert!(partial.capacity() - partial.len() >= READ_AHEAD_BYTES / 2);
    }

    #[test]
    fn codec_bound_applies_to_decoding() {
        let mut buf = BytesMut::new();
        let write = write_4k();
        FrameCodec::new().encode(&write, &mut buf).unwrap();
        let mut small = FrameCodec::with_max_payload(4095);
        assert!(matches!(
            small.decode(&mut buf),
            Err(FrameError::PayloadTooLarge {
                len: 4096,
                max: 4095
            })
        ));
    }
}
