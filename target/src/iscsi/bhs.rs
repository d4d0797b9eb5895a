//! The 48-byte Basic Header Segment and its generic fields (RFC 7143
//! §11.2.1).
//!
//! ```text
//! byte  0      1      2      3
//!   0  |.|I| Opcode |F| opcode-specific       |
//!   4  | TotalAHSLength | DataSegmentLength (24 bits) |
//!   8  | LUN or opcode-specific (8 bytes)             |
//!  16  | Initiator Task Tag                           |
//!  20  | opcode-specific fields (28 bytes)            |
//! ```
//!
//! Every accessor takes a constant offset written in the PDU layouts of
//! `pdu::initiator` / `pdu::target`; no offset ever comes from the wire, so
//! indexing cannot go out of bounds.

use super::limits::BHS_LEN;

/// A Basic Header Segment, kept as its raw bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl Default for Bhs {
    fn default() -> Self {
        Self([0; BHS_LEN])
    }
}

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bhs")
            .field("opcode", &format_args!("{:#04x}", self.opcode_raw()))
            .field("flags", &format_args!("{:#04x}", self.flags()))
            .field("itt", &format_args!("{:#010x}", self.itt()))
            .field("dsl", &self.data_segment_len())
            .finish()
    }
}

const IMMEDIATE_BIT: u8 = 0x40;
const OPCODE_MASK: u8 = 0x3f;

impl Bhs {
    /// The 6-bit opcode, whether we know it or not.
    pub fn opcode_raw(&self) -> u8 {
        self.0[0] & OPCODE_MASK
    }

    /// The I (immediate delivery) bit.
    pub fn immediate(&self) -> bool {
        self.0[0] & IMMEDIATE_BIT != 0
    }

    /// Byte 1: the F bit and opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    /// TotalAHSLength converted from 4-byte words to bytes.
    pub fn total_ahs_bytes(&self) -> usize {
        usize::from(self.0[4]) * 4
    }

    /// DataSegmentLength in bytes, without padding.
    pub fn data_segment_len(&self) -> u32 {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])
    }

    /// The Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    pub(crate) fn set_opcode(&mut self, opcode: u8, immediate: bool) {
        self.0[0] = (opcode & OPCODE_MASK) | if immediate { IMMEDIATE_BIT } else { 0 };
    }

    pub(crate) fn set_flags(&mut self, flags: u8) {
        self.0[1] = flags;
    }

    /// Sets TotalAHSLength from a byte count the caller has bounded by
    /// `MAX_AHS_BYTES` and padded to a multiple of four.
    pub(crate) fn set_total_ahs_words(&mut self, words: u8) {
        self.0[4] = words;
    }

    /// Sets DataSegmentLength from a length the caller has bounded by
    /// `MAX_DATA_SEGMENT_FIELD`.
    pub(crate) fn set_data_segment_len(&mut self, len: u32) {
        let [_, a, b, c] = len.to_be_bytes();
        self.0[5] = a;
        self.0[6] = b;
        self.0[7] = c;
    }

    pub(crate) fn u8_at(&self, off: usize) -> u8 {
        self.0[off]
    }

    pub(crate) fn set_u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }

    pub(crate) fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }

    pub(crate) fn set_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }

    pub(crate) fn set_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64_at(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[off..off + 8]);
        u64::from_be_bytes(b)
    }

    pub(crate) fn set_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bytes_at<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut b = [0u8; N];
        b.copy_from_slice(&self.0[off..off + N]);
        b
    }

    pub(crate) fn set_bytes(&mut self, off: usize, v: &[u8]) {
        self.0[off..off + v.len()].copy_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_fields_round_trip() {
        let mut h = Bhs::default();
        h.set_opcode(0x01, true);
        h.set_flags(0x80);
        h.set_total_ahs_words(3);
        h.set_data_segment_len(0x00ab_cdef);
        h.set_u32(16, 0xdead_beef);
        assert_eq!(h.opcode_raw(), 0x01);
        assert!(h.immediate());
        assert_eq!(h.flags(), 0x80);
        assert_eq!(h.total_ahs_bytes(), 12);
        assert_eq!(h.data_segment_len(), 0x00ab_cdef);
        assert_eq!(h.itt(), 0xdead_beef);
        assert_eq!(&h.0[5..8], &[0xab, 0xcd, 0xef]);
    }

    #[test]
    fn multi_byte_fields_are_big_endian() {
        let mut h = Bhs::default();
        h.set_u16(20, 0x0102);
        h.set_u64(8, 0x0102_0304_0506_0708);
        assert_eq!(&h.0[20..22], &[1, 2]);
        assert_eq!(&h.0[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(h.u64_at(8), 0x0102_0304_0506_0708);
        assert_eq!(h.u16_at(20), 0x0102);
    }
}
