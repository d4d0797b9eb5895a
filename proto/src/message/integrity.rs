//! Integrity payloads: the digest of a range (scrub).
//!
//! `Digest` asks a replica for the digest of an extent of its live volume
//! (offset and length in the header, like a read, at most
//! [`MAX_DIGEST_BYTES`]; whole 4 KiB blocks, which the replica checks). It
//! carries an io_seq of the target's order like any request, and a replica
//! orders it like a read of the extent (after every earlier overlapping
//! write, before every later one), so replicas that took the same writes
//! digest the same content whatever IO runs meanwhile.
//!
//! The reply, `RangeDigest`, is `digest u64, mapped_blocks u64, count u32,
//! count × (offset u64, len u64)`: the digest of the content (an unmapped
//! block digests as zeros), how many 4 KiB blocks of the extent are mapped,
//! and the byte ranges whose data failed its stored checksum on that copy.
//! Validation: at most [`MAX_DIGEST_BAD_RANGES`] ranges, each non-empty,
//! ascending, not overlapping, not wrapping. A replier with more bad ranges
//! than that names the first ones and one last range that covers the rest
//! ([`DigestReply::with_bad`]): naming a good block as bad only repairs it
//! from a good copy.

use bytes::{BufMut, BytesMut};

use crate::limits::MAX_DIGEST_BAD_RANGES;
use crate::message::rebuild::ByteRange;
use crate::wire::{PayloadError, Reader};

/// Reply to `Digest`: what one replica holds in the extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestReply {
    /// Digest of the extent's content (equal content, equal digest).
    pub digest: u64,
    /// 4 KiB blocks of the extent that hold data on this replica.
    pub mapped_blocks: u64,
    /// Byte ranges whose data failed its checksum on this replica: at most
    /// [`MAX_DIGEST_BAD_RANGES`], ascending, not overlapping.
    pub bad: Vec<ByteRange>,
}

impl DigestReply {
    /// A reply naming `bad` (ascending, not overlapping, non-empty ranges),
    /// folding the ranges past [`MAX_DIGEST_BAD_RANGES`] − 1 into one last
    /// range that covers them all.
    pub fn with_bad(digest: u64, mapped_blocks: u64, mut bad: Vec<ByteRange>) -> DigestReply {
        if bad.len() > MAX_DIGEST_BAD_RANGES {
            let tail = bad.split_off(MAX_DIGEST_BAD_RANGES - 1);
            if let (Some(first), Some(last)) = (tail.first(), tail.last()) {
                let end = last.end().unwrap_or(u64::MAX);
                bad.push(ByteRange {
                    offset: first.offset,
                    len_bytes: end.saturating_sub(first.offset),
                });
            }
        }
        DigestReply {
            digest,
            mapped_blocks,
            bad,
        }
    }

    /// Bytes of the payload.
    pub(crate) fn wire_len(&self) -> usize {
        20 + 16 * self.bad.len()
    }

    pub(crate) fn check(&self) -> Result<(), PayloadError> {
        if self.bad.len() > MAX_DIGEST_BAD_RANGES {
            return Err(PayloadError::TooLong {
                field: "bad",
                len: self.bad.len(),
                max: MAX_DIGEST_BAD_RANGES,
            });
        }
        crate::message::rebuild::check_ascending(&self.bad, "bad")
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.digest);
        dst.put_u64_le(self.mapped_blocks);
        // At most MAX_DIGEST_BAD_RANGES (checked before encoding).
        dst.put_u32_le(u32::try_from(self.bad.len()).unwrap_or(u32::MAX));
        for range in &self.bad {
            dst.put_u64_le(range.offset);
            dst.put_u64_le(range.len_bytes);
        }
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<DigestReply, PayloadError> {
        let digest = src.u64("digest")?;
        let mapped_blocks = src.u64("mapped_blocks")?;
        let count = src.u32("bad.count")?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > MAX_DIGEST_BAD_RANGES {
            return Err(PayloadError::TooLong {
                field: "bad",
                len: count,
                max: MAX_DIGEST_BAD_RANGES,
            });
        }
        let mut bad = Vec::with_capacity(count);
        for _ in 0..count {
            bad.push(ByteRange {
                offset: src.u64("bad.offset")?,
                len_bytes: src.u64("bad.len")?,
            });
        }
        let reply = DigestReply {
            digest,
            mapped_blocks,
            bad,
        };
        reply.check()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(offset: u64, len_bytes: u64) -> ByteRange {
        ByteRange { offset, len_bytes }
    }

    #[test]
    fn bad_ranges_must_be_ordered_non_empty_and_not_wrap() {
        let reply = |bad| DigestReply {
            digest: 1,
            mapped_blocks: 2,
            bad,
        };
        assert!(reply(vec![]).check().is_ok());
        assert!(reply(vec![range(0, 4096), range(8192, 4096)])
            .check()
            .is_ok());
        assert!(reply(vec![range(0, 0)]).check().is_err());
        assert!(reply(vec![range(8192, 4096), range(0, 4096)])
            .check()
            .is_err());
        assert!(reply(vec![range(0, 8192), range(4096, 4096)])
            .check()
            .is_err());
        assert!(reply(vec![range(u64::MAX - 10, 4096)]).check().is_err());
        let too_many = (0..=MAX_DIGEST_BAD_RANGES as u64)
            .map(|i| range(i * 8192, 4096))
            .collect();
        assert!(reply(too_many).check().is_err());
    }

    #[test]
    fn more_bad_ranges_than_the_bound_fold_into_one_last_range() {
        let many: Vec<ByteRange> = (0..MAX_DIGEST_BAD_RANGES as u64 + 10)
            .map(|i| range(i * 8192, 4096))
            .collect();
        let last_end = many.last().and_then(|r| r.end()).unwrap();
        let reply = DigestReply::with_bad(7, 9, many.clone());
        assert!(reply.check().is_ok());
        assert_eq!(reply.bad.len(), MAX_DIGEST_BAD_RANGES);
        assert_eq!(
            reply.bad[..MAX_DIGEST_BAD_RANGES - 1],
            many[..MAX_DIGEST_BAD_RANGES - 1]
        );
        let folded = reply.bad[MAX_DIGEST_BAD_RANGES - 1];
        assert_eq!(folded.offset, many[MAX_DIGEST_BAD_RANGES - 1].offset);
        assert_eq!(folded.end(), Some(last_end));
        // Within the bound: unchanged.
        let few = vec![range(0, 4096)];
        assert_eq!(DigestReply::with_bad(1, 1, few.clone()).bad, few);
    }
}
