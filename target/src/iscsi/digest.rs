//! iSCSI CRC32C digests (RFC 7143 §11.1, test vectors in Appendix B.4).
//!
//! The iSCSI digest is CRC32C (Castagnoli, the `crc32c` crate's polynomial)
//! over the header (BHS + AHS) or over the data segment including its
//! padding. On the wire the 32-bit result is sent least significant byte
//! first: Appendix B.4 lists 32 zero bytes as `aa 36 91 8a`, the little-endian
//! bytes of CRC32C = 0x8a9136aa.

use super::limits::DIGEST_LEN;

/// CRC32C over `parts`, one after the other.
pub fn crc32c_of(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0u32, |crc, part| crc32c::crc32c_append(crc, part))
}

/// The four wire bytes of a digest.
pub fn to_wire(crc: u32) -> [u8; DIGEST_LEN] {
    crc.to_le_bytes()
}

/// The digest value carried by four wire bytes.
pub fn from_wire(bytes: [u8; DIGEST_LEN]) -> u32 {
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_of(data: &[u8]) -> [u8; 4] {
        to_wire(crc32c_of(&[data]))
    }

    // RFC 7143 Appendix B.4, the four 32-byte test vectors.
    #[test]
    fn rfc7143_b4_zeros() {
        assert_eq!(wire_of(&[0u8; 32]), [0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn rfc7143_b4_ones() {
        assert_eq!(wire_of(&[0xffu8; 32]), [0x43, 0xab, 0xa8, 0x62]);
    }

    #[test]
    fn rfc7143_b4_incrementing() {
        let data: Vec<u8> = (0u8..32).collect();
        assert_eq!(wire_of(&data), [0x4e, 0x79, 0xdd, 0x46]);
    }

    #[test]
    fn rfc7143_b4_decrementing() {
        let data: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(wire_of(&data), [0x5c, 0xdb, 0x3f, 0x11]);
    }

    #[test]
    fn digest_over_parts_equals_digest_over_concatenation() {
        let whole: Vec<u8> = (0u8..100).collect();
        let (a, b) = whole.split_at(37);
        assert_eq!(crc32c_of(&[a, b]), crc32c_of(&[&whole]));
    }

    #[test]
    fn wire_round_trip() {
        assert_eq!(from_wire(to_wire(0x1234_5678)), 0x1234_5678);
    }
}
