//! The fixed 64-byte frame header: layout, encoding, checked parsing.
//!
//! Invariants:
//! - The layout below is frozen for every protocol version: the magic
//!   identifies it, so a peer can always read a header (and a `Hello`) from
//!   a peer of another version and answer `VersionMismatch`.
//! - Parsing checks, in this order, the magic, the header crc32c and the
//!   reserved field, and only then trusts any other field; the payload
//!   length is bounded by the caller ([`crate::Frame::decode`]) before any
//!   allocation.
//!
//! Every offset is the previous offset plus the previous field's width; the
//! constants below are the single source and `tests` pin the drawing in the
//! crate docs to them.

use bytes::{Buf, BufMut};

use crate::frame::FrameError;
use crate::status::Status;

/// `"CSTR"` read as a little-endian u32: the first four bytes of every frame.
pub const MAGIC: u32 = u32::from_le_bytes(*b"CSTR");

/// The protocol version this crate speaks (and frames everything with).
pub const PROTOCOL_VERSION: u16 = 1;

/// Offset of `magic` (u32).
pub const MAGIC_AT: usize = 0;
/// Offset of `version` (u16).
pub const VERSION_AT: usize = MAGIC_AT + 4;
/// Offset of `opcode` (u16).
pub const OPCODE_AT: usize = VERSION_AT + 2;
/// Offset of `flags` (u16).
pub const FLAGS_AT: usize = OPCODE_AT + 2;
/// Offset of `status` (u16).
pub const STATUS_AT: usize = FLAGS_AT + 2;
/// Offset of `payload_len` (u32).
pub const PAYLOAD_LEN_AT: usize = STATUS_AT + 2;
/// Offset of `session_id` (u64).
pub const SESSION_ID_AT: usize = PAYLOAD_LEN_AT + 4;
/// Offset of `epoch` (u64).
pub const EPOCH_AT: usize = SESSION_ID_AT + 8;
/// Offset of `io_seq` (u64).
pub const IO_SEQ_AT: usize = EPOCH_AT + 8;
/// Offset of `offset` (u64).
pub const OFFSET_AT: usize = IO_SEQ_AT + 8;
/// Offset of `length` (u32).
pub const LENGTH_AT: usize = OFFSET_AT + 8;
/// Offset of `reserved` (u32, zero).
pub const RESERVED_AT: usize = LENGTH_AT + 4;
/// Offset of `payload_crc` (u32).
pub const PAYLOAD_CRC_AT: usize = RESERVED_AT + 4;
/// Offset of `header_crc` (u32), the crc32c of every byte before it.
pub const HEADER_CRC_AT: usize = PAYLOAD_CRC_AT + 4;

/// Length of the fixed header, in bytes.
pub const HEADER_LEN: usize = HEADER_CRC_AT + 4;

const _: () = assert!(HEADER_LEN == 64, "the header is one cache line");

/// The header fields a sender chooses. The payload length and both
/// checksums are derived from the payload when the frame is encoded, so they
/// cannot disagree with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version the frame is framed with.
    pub version: u16,
    /// Raw opcode: an [`crate::Opcode`] value, with
    /// [`crate::opcode::REPLY_BIT`] set on replies. Kept raw so that an
    /// unknown opcode still makes an intact frame.
    pub opcode: u16,
    /// Per-opcode flags (e.g. FUA on a write).
    pub flags: u16,
    /// Outcome, on replies; [`Status::Ok`] on requests.
    pub status: Status,
    /// The session chosen by the target in its `Hello`, echoed by both
    /// sides on every frame of the connection.
    pub session_id: u64,
    /// The target's epoch (fencing); replies echo the request's.
    pub epoch: u64,
    /// Order and tag of the request; replies echo the request's.
    pub io_seq: u64,
    /// Byte offset in the volume, for opcodes that address an extent.
    pub offset: u64,
    /// Extent length in bytes, for opcodes that address an extent.
    pub length: u32,
}

/// A header as read off the wire, checksums verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireHeader {
    pub(crate) header: FrameHeader,
    pub(crate) payload_len: u32,
    pub(crate) payload_crc: u32,
}

impl FrameHeader {
    /// Writes the header for a payload of `payload_len` bytes with checksum
    /// `payload_crc`, header checksum included.
    pub(crate) fn write(&self, payload_len: u32, payload_crc: u32, out: &mut [u8; HEADER_LEN]) {
        let mut dst = &mut out[..HEADER_CRC_AT];
        dst.put_u32_le(MAGIC);
        dst.put_u16_le(self.version);
        dst.put_u16_le(self.opcode);
        dst.put_u16_le(self.flags);
        dst.put_u16_le(self.status.to_u16());
        dst.put_u32_le(payload_len);
        dst.put_u64_le(self.session_id);
        dst.put_u64_le(self.epoch);
        dst.put_u64_le(self.io_seq);
        dst.put_u64_le(self.offset);
        dst.put_u32_le(self.length);
        dst.put_u32_le(0); // reserved
        dst.put_u32_le(payload_crc);
        debug_assert!(
            dst.is_empty(),
            "header fields fill the header up to its crc"
        );
        let header_crc = crc32c::crc32c(&out[..HEADER_CRC_AT]);
        out[HEADER_CRC_AT..].copy_from_slice(&header_crc.to_le_bytes());
    }
}

impl WireHeader {
    /// Parses and verifies a header. Fails on a wrong magic, a header
    /// checksum mismatch or a non-zero reserved field: a stream where any of
    /// these happens cannot be trusted to be in sync any more.
    pub(crate) fn parse(raw: &[u8; HEADER_LEN]) -> Result<WireHeader, FrameError> {
        let mut src = &raw[..];
        let magic = src.get_u32_le();
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let mut crc_field = &raw[HEADER_CRC_AT..];
        let stored = crc_field.get_u32_le();
        let computed = crc32c::crc32c(&raw[..HEADER_CRC_AT]);
        if stored != computed {
            return Err(FrameError::HeaderChecksum { stored, computed });
        }
        let version = src.get_u16_le();
        let opcode = src.get_u16_le();
        let flags = src.get_u16_le();
        let status = Status::from_u16(src.get_u16_le());
        let payload_len = src.get_u32_le();
        let session_id = src.get_u64_le();
        let epoch = src.get_u64_le();
        let io_seq = src.get_u64_le();
        let offset = src.get_u64_le();
        let length = src.get_u32_le();
        let reserved = src.get_u32_le();
        let payload_crc = src.get_u32_le();
        debug_assert_eq!(src.len(), HEADER_LEN - HEADER_CRC_AT);
        if reserved != 0 {
            return Err(FrameError::ReservedNonZero { found: reserved });
        }
        Ok(WireHeader {
            header: FrameHeader {
                version,
                opcode,
                flags,
                status,
                session_id,
                epoch,
                io_seq,
                offset,
                length,
            },
            payload_len,
            payload_crc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FrameHeader {
        FrameHeader {
            version: 0x0102,
            opcode: 0x0304,
            flags: 0x0506,
            status: Status::from_u16(0x0708),
            session_id: 0x1111_1111_1111_1111,
            epoch: 0x2222_2222_2222_2222,
            io_seq: 0x3333_3333_3333_3333,
            offset: 0x4444_4444_4444_4444,
            length: 0x5555_5555,
        }
    }

    fn u16_at(raw: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([raw[at], raw[at + 1]])
    }

    fn u32_at(raw: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(raw[at..at + 4].try_into().unwrap())
    }

    fn u64_at(raw: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(raw[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn fields_sit_at_their_documented_offsets() {
        let mut raw = [0u8; HEADER_LEN];
        sample().write(0x6666_6666, 0x7777_7777, &mut raw);
        assert_eq!(&raw[MAGIC_AT..MAGIC_AT + 4], b"CSTR");
        assert_eq!(u16_at(&raw, VERSION_AT), 0x0102);
        assert_eq!(u16_at(&raw, OPCODE_AT), 0x0304);
        assert_eq!(u16_at(&raw, FLAGS_AT), 0x0506);
        assert_eq!(u16_at(&raw, STATUS_AT), 0x0708);
        assert_eq!(u32_at(&raw, PAYLOAD_LEN_AT), 0x6666_6666);
        assert_eq!(u64_at(&raw, SESSION_ID_AT), 0x1111_1111_1111_1111);
        assert_eq!(u64_at(&raw, EPOCH_AT), 0x2222_2222_2222_2222);
        assert_eq!(u64_at(&raw, IO_SEQ_AT), 0x3333_3333_3333_3333);
        assert_eq!(u64_at(&raw, OFFSET_AT), 0x4444_4444_4444_4444);
        assert_eq!(u32_at(&raw, LENGTH_AT), 0x5555_5555);
        assert_eq!(u32_at(&raw, RESERVED_AT), 0);
        assert_eq!(u32_at(&raw, PAYLOAD_CRC_AT), 0x7777_7777);
        assert_eq!(
            u32_at(&raw, HEADER_CRC_AT),
            crc32c::crc32c(&raw[..HEADER_CRC_AT])
        );
    }

    #[test]
    fn written_header_parses_back() {
        let mut raw = [0u8; HEADER_LEN];
        sample().write(17, 0xdead_beef, &mut raw);
        let wire = WireHeader::parse(&raw).unwrap();
        assert_eq!(wire.header, sample());
        assert_eq!(wire.payload_len, 17);
        assert_eq!(wire.payload_crc, 0xdead_beef);
    }

    #[test]
    fn wrong_magic_is_reported_before_the_checksum() {
        let mut raw = [0u8; HEADER_LEN];
        sample().write(0, 0, &mut raw);
        raw[0] = b'X';
        assert!(matches!(
            WireHeader::parse(&raw),
            Err(FrameError::BadMagic { .. })
        ));
    }

    #[test]
    fn reserved_field_set_with_valid_checksum_is_refused() {
        let mut raw = [0u8; HEADER_LEN];
        sample().write(0, 0, &mut raw);
        raw[RESERVED_AT] = 1;
        let crc = crc32c::crc32c(&raw[..HEADER_CRC_AT]);
        raw[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            WireHeader::parse(&raw),
            Err(FrameError::ReservedNonZero { found: 1 })
        ));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut raw = [0u8; HEADER_LEN];
        sample().write(3, 4, &mut raw);
        for bit in 0..HEADER_LEN * 8 {
            let mut flipped = raw;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(WireHeader::parse(&flipped).is_err(), "bit {bit}");
        }
    }
}
