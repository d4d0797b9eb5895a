//! Journal batch framing. A commit appends one batch: a 56-byte header
//! followed by the encoded records, padded with zeros to a multiple of 4 KiB.
//! Replay reads batches from the journal region's first byte and stops at the
//! first one that is not exactly the next expected (generation, seq) or
//! fails a checksum: that is the torn tail, ignored. See FORMAT.md "Journal".

use super::codec::{Reader, Writer};
use super::{crc, round_up, FormatError, META_BLOCK_BYTES};

/// Magic at byte 0 of a batch header.
pub const BATCH_MAGIC: [u8; 8] = *b"CSTORJB1";
/// Size of the batch header in bytes.
pub const BATCH_HEADER_BYTES: usize = 56;

/// A decoded batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Pool the batch belongs to (a journal left by an older pool on the
    /// same device never matches).
    pub pool_guid: u128,
    /// Superblock generation that started this journal (a batch left over
    /// from an older journal never matches).
    pub sb_generation: u64,
    /// Batch sequence number, consecutive within a journal.
    pub seq: u64,
    /// Records in the payload.
    pub record_count: u32,
    /// Payload bytes after the header.
    pub payload_len: u32,
    /// crc32c of the payload.
    pub payload_crc: u32,
}

impl BatchHeader {
    /// Bytes the batch takes in the journal (header + payload, padded).
    pub fn padded_len(&self) -> Option<u64> {
        let raw = u64::try_from(BATCH_HEADER_BYTES)
            .ok()?
            .checked_add(u64::from(self.payload_len))?;
        round_up(raw, META_BLOCK_BYTES)
    }

    /// Decodes and checks a header from the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let head = bytes
            .get(..BATCH_HEADER_BYTES)
            .ok_or(FormatError::BadChecksum)?;
        let mut r = Reader::new(head);
        if r.take(8)? != BATCH_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let h = Self {
            pool_guid: r.u128()?,
            sb_generation: r.u64()?,
            seq: r.u64()?,
            record_count: r.u32()?,
            payload_len: r.u32()?,
            payload_crc: r.u32()?,
        };
        let body_end = r.pos();
        let stored = r.u32()?;
        let covered = head.get(..body_end).ok_or(FormatError::BadChecksum)?;
        if crc(covered) != stored {
            return Err(FormatError::BadChecksum);
        }
        Ok(h)
    }

    /// Checks `payload` against the header's length and checksum.
    pub fn check_payload<'a>(&self, after_header: &'a [u8]) -> Result<&'a [u8], FormatError> {
        let len = usize::try_from(self.payload_len).map_err(|_| FormatError::BadChecksum)?;
        let payload = after_header.get(..len).ok_or(FormatError::BadChecksum)?;
        if crc(payload) != self.payload_crc {
            return Err(FormatError::BadChecksum);
        }
        Ok(payload)
    }
}

/// Frames `payload` (encoded records) as a batch, padded to 4 KiB.
pub fn encode_batch(
    pool_guid: u128,
    sb_generation: u64,
    seq: u64,
    record_count: u32,
    payload: &[u8],
) -> Vec<u8> {
    let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut w = Writer::with_capacity(BATCH_HEADER_BYTES + payload.len() + 4096);
    w.raw(&BATCH_MAGIC)
        .u128(pool_guid)
        .u64(sb_generation)
        .u64(seq)
        .u32(record_count)
        .u32(payload_len)
        .u32(crc(payload));
    let header_crc = crc(w.as_slice());
    w.u32(header_crc);
    debug_assert_eq!(w.len(), BATCH_HEADER_BYTES);
    w.raw(payload);
    let total = u64::try_from(w.len())
        .ok()
        .and_then(|l| round_up(l, META_BLOCK_BYTES))
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(w.len());
    w.pad_to(total);
    w.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_exactly_its_documented_size() {
        let b = encode_batch(1, 2, 3, 4, b"");
        assert!(BatchHeader::decode(&b[..BATCH_HEADER_BYTES]).is_ok());
        assert!(BatchHeader::decode(&b[..BATCH_HEADER_BYTES - 1]).is_err());
    }

    #[test]
    fn batch_round_trips_and_is_padded() {
        let b = encode_batch(1, 3, 9, 2, b"hello records");
        assert_eq!(b.len(), 4096);
        let h = BatchHeader::decode(&b).unwrap();
        assert_eq!((h.sb_generation, h.seq, h.record_count), (3, 9, 2));
        assert_eq!(h.padded_len(), Some(4096));
        assert_eq!(
            h.check_payload(&b[BATCH_HEADER_BYTES..]).unwrap(),
            b"hello records"
        );
    }

    #[test]
    fn torn_header_or_payload_is_detected() {
        let b = encode_batch(1, 3, 9, 1, &[5u8; 5000]);
        assert_eq!(b.len(), 8192);
        let mut h = b.clone();
        h[30] ^= 1;
        assert_eq!(BatchHeader::decode(&h), Err(FormatError::BadChecksum));
        let mut p = b.clone();
        p[3000] ^= 1;
        let hdr = BatchHeader::decode(&p).unwrap();
        assert!(hdr.check_payload(&p[BATCH_HEADER_BYTES..]).is_err());
        // A payload cut short (torn second block, zeroed) also fails.
        let mut cut = b.clone();
        cut[4096..].fill(0);
        assert!(hdr.check_payload(&cut[BATCH_HEADER_BYTES..]).is_err());
    }
}
