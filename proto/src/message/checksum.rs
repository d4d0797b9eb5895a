//! The `ChecksumError` reply to a `Read`: the blocks of the read that
//! failed their checksum on the replica, never data.
//!
//! A replica verifies each [`CHECKSUM_BLOCK_BYTES`] block it reads against
//! the checksum stored when it was written. When some fail, it answers the
//! `Read` with status `ChecksumError`, the read's extent in the header
//! (`offset`, `length`, as the request's) and the payload `count u16,
//! count × (offset u64, len u64)`: byte ranges of the volume. Validation,
//! on both sides:
//! - at least one and at most [`MAX_CHECKSUM_RANGES`] ranges;
//! - each a non-empty run of whole blocks (offset and length multiples of
//!   [`CHECKSUM_BLOCK_BYTES`]) that does not wrap;
//! - ascending and merged: each starts past the end of the one before
//!   (adjacent ranges are one range), so the list has one encoding;
//! - each within the read's extent aligned out to whole blocks (a read of
//!   part of a block names the whole block);
//! - the extent itself is a valid read extent (non-empty, at most
//!   [`MAX_IO_BYTES`], not wrapping).

use bytes::{BufMut, BytesMut};

use crate::limits::{CHECKSUM_BLOCK_BYTES, MAX_CHECKSUM_RANGES, MAX_IO_BYTES};
use crate::message::io::Extent;
use crate::message::rebuild::ByteRange;
use crate::wire::{PayloadError, Reader};

/// Reply to a `Read` whose blocks failed their checksum on the replier
/// (status `ChecksumError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumError {
    /// The read's extent (the header's offset and length).
    pub extent: Extent,
    /// The bad byte ranges of the volume (module doc for their rules).
    pub bad: Vec<ByteRange>,
}

impl ChecksumError {
    /// Bytes of the extent aligned out to whole checksum blocks:
    /// `[first, end)`.
    fn aligned_extent(extent: Extent) -> (u64, u64) {
        let first = extent.offset - extent.offset % CHECKSUM_BLOCK_BYTES;
        let end = extent
            .offset
            .saturating_add(u64::from(extent.len_bytes))
            .checked_next_multiple_of(CHECKSUM_BLOCK_BYTES)
            .unwrap_or(u64::MAX - u64::MAX % CHECKSUM_BLOCK_BYTES);
        (first, end)
    }

    /// The reply naming `ranges` (byte offset, length) bad in the read of
    /// `extent`: each range is rounded out to whole blocks and clipped to
    /// the read's blocks, then they are sorted and merged. Fails if
    /// nothing of the read is left, or if the ranges are more than
    /// [`MAX_CHECKSUM_RANGES`] (which a read of whole blocks cannot make).
    pub fn new(
        extent: Extent,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<ChecksumError, PayloadError> {
        extent.check(MAX_IO_BYTES)?;
        let (first, end) = Self::aligned_extent(extent);
        let mut clipped: Vec<(u64, u64)> = ranges
            .into_iter()
            .filter_map(|(offset, len)| {
                let from = (offset - offset % CHECKSUM_BLOCK_BYTES).max(first);
                let to = offset
                    .saturating_add(len)
                    .checked_next_multiple_of(CHECKSUM_BLOCK_BYTES)
                    .unwrap_or(end)
                    .min(end);
                (len > 0 && from < to).then_some((from, to))
            })
            .collect();
        clipped.sort_unstable();
        let mut bad: Vec<ByteRange> = Vec::with_capacity(clipped.len());
        for (from, to) in clipped {
            match bad.last_mut() {
                Some(last) if last.offset + last.len_bytes >= from => {
                    last.len_bytes = last.len_bytes.max(to - last.offset);
                }
                _ => bad.push(ByteRange {
                    offset: from,
                    len_bytes: to - from,
                }),
            }
        }
        let reply = ChecksumError { extent, bad };
        reply.check()?;
        Ok(reply)
    }

    /// 4 KiB blocks named bad.
    pub fn bad_blocks(&self) -> u64 {
        self.bad
            .iter()
            .map(|r| r.len_bytes / CHECKSUM_BLOCK_BYTES)
            .fold(0, u64::saturating_add)
    }

    pub(crate) fn check(&self) -> Result<(), PayloadError> {
        self.extent.check(MAX_IO_BYTES)?;
        if self.bad.is_empty() || self.bad.len() > MAX_CHECKSUM_RANGES {
            return Err(PayloadError::TooLong {
                field: "bad",
                len: self.bad.len(),
                max: MAX_CHECKSUM_RANGES,
            });
        }
        let (first, end) = Self::aligned_extent(self.extent);
        let mut floor = first;
        for (i, range) in self.bad.iter().enumerate() {
            let invalid = |reason| PayloadError::Invalid {
                field: "bad",
                reason,
            };
            if range.len_bytes == 0 {
                return Err(invalid("empty range"));
            }
            if range.offset % CHECKSUM_BLOCK_BYTES != 0
                || range.len_bytes % CHECKSUM_BLOCK_BYTES != 0
            {
                return Err(invalid("range not made of whole 4 KiB blocks"));
            }
            let range_end = range.end().ok_or(invalid("range wraps"))?;
            if range.offset < first || range_end > end {
                return Err(invalid("range outside the blocks of the read"));
            }
            if range.offset < floor || (i > 0 && range.offset == floor) {
                return Err(invalid(
                    "ranges out of order, overlapping or adjacent (not merged)",
                ));
            }
            floor = range_end;
        }
        Ok(())
    }

    /// Decodes the payload of the reply whose header carried `extent`.
    pub(crate) fn decode(extent: Extent, src: &mut Reader) -> Result<ChecksumError, PayloadError> {
        let count = usize::from(src.u16("bad")?);
        if count > MAX_CHECKSUM_RANGES {
            return Err(PayloadError::TooLong {
                field: "bad",
                len: count,
                max: MAX_CHECKSUM_RANGES,
            });
        }
        let mut bad = Vec::with_capacity(count);
        for _ in 0..count {
            bad.push(ByteRange {
                offset: src.u64("bad.offset")?,
                len_bytes: src.u64("bad.len")?,
            });
        }
        let reply = ChecksumError { extent, bad };
        reply.check()?;
        Ok(reply)
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_u16_le(u16::try_from(self.bad.len()).unwrap_or(u16::MAX));
        for range in &self.bad {
            dst.put_u64_le(range.offset);
            dst.put_u64_le(range.len_bytes);
        }
    }

    pub(crate) fn wire_len(&self) -> usize {
        2 + 16 * self.bad.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(offset: u64, len_bytes: u32, bad: &[(u64, u64)]) -> ChecksumError {
        ChecksumError {
            extent: Extent { offset, len_bytes },
            bad: bad
                .iter()
                .map(|&(offset, len_bytes)| ByteRange { offset, len_bytes })
                .collect(),
        }
    }

    fn reason(r: &ChecksumError) -> String {
        r.check().unwrap_err().to_string()
    }

    #[test]
    fn ranges_are_whole_blocks_within_the_read_aligned_out() {
        assert!(reply(0, 8192, &[(0, 4096)]).check().is_ok());
        assert!(reply(0, 8192, &[(0, 4096), (8192, 0)]).check().is_err());
        // A read of part of a block names the whole block.
        assert!(reply(512, 512, &[(0, 4096)]).check().is_ok());
        assert!(reply(4096 - 512, 1024, &[(0, 8192)]).check().is_ok());
        assert!(reply(4096, 4096, &[(0, 4096)])
            .check()
            .is_err_and(|e| e.to_string().contains("outside")));
        assert!(reply(0, 4096, &[(0, 8192)]).check().is_err());
        assert!(reason(&reply(0, 8192, &[(512, 4096)])).contains("whole 4 KiB blocks"));
        assert!(reason(&reply(0, 8192, &[(0, 1000)])).contains("whole 4 KiB blocks"));
        assert!(reason(&reply(0, 8192, &[(0, 0)])).contains("empty"));
        // The largest read: 257 blocks aligned out, 129 ranges at most.
        let every_other: Vec<(u64, u64)> = (0..129).map(|i| (i * 8192, 4096)).collect();
        assert!(reply(1, MAX_IO_BYTES, &every_other).check().is_ok());
    }

    #[test]
    fn new_rounds_clips_sorts_and_merges() {
        let extent = Extent {
            offset: 512,
            len_bytes: 16384,
        };
        let made = ChecksumError::new(
            extent,
            [(12288, 100), (0, 4096), (4096, 10), (1 << 30, 4096), (0, 0)],
        )
        .unwrap();
        assert_eq!(made, reply(512, 16384, &[(0, 8192), (12288, 4096)]));
        // Past the read's blocks: clipped to them.
        let made = ChecksumError::new(extent, [(16384, 1 << 20)]).unwrap();
        assert_eq!(made, reply(512, 16384, &[(16384, 4096)]));
        // Nothing of the read: no reply of this kind.
        assert!(ChecksumError::new(extent, [(1 << 30, 4096)]).is_err());
        assert!(ChecksumError::new(extent, []).is_err());
    }

    #[test]
    fn ranges_must_be_sorted_disjoint_and_merged() {
        assert!(reply(0, 16384, &[(0, 4096), (8192, 4096)]).check().is_ok());
        for bad in [
            &[(8192, 4096), (0, 4096)][..],
            &[(0, 8192), (4096, 4096)][..],
            &[(0, 4096), (4096, 4096)][..],
        ] {
            assert!(
                reason(&reply(0, 16384, bad)).contains("not merged"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn empty_oversized_and_wrapping_lists_are_refused() {
        assert!(matches!(
            reply(0, 4096, &[]).check(),
            Err(PayloadError::TooLong { len: 0, .. })
        ));
        let many: Vec<(u64, u64)> = (0..130).map(|i| (i * 8192, 4096)).collect();
        assert!(matches!(
            reply(0, MAX_IO_BYTES, &many).check(),
            Err(PayloadError::TooLong {
                len: 130,
                max: 129,
                ..
            })
        ));
        let top = u64::MAX - u64::MAX % 4096 - 4096;
        assert!(reply(top, 4096, &[(top, 4096)]).check().is_ok());
        assert!(reason(&reply(top, 4096, &[(top, u64::MAX - top + 1)])).contains("wraps"));
        // The extent itself must be a valid read.
        assert!(reply(0, 0, &[(0, 4096)]).check().is_err());
        assert!(reply(0, MAX_IO_BYTES + 1, &[(0, 4096)]).check().is_err());
    }

    #[test]
    fn a_count_above_the_bound_is_refused_before_reading_the_ranges() {
        let mut payload = BytesMut::new();
        payload.put_u16_le(u16::MAX);
        let mut src = Reader::new(payload.freeze());
        let extent = Extent {
            offset: 0,
            len_bytes: 4096,
        };
        assert_eq!(
            ChecksumError::decode(extent, &mut src),
            Err(PayloadError::TooLong {
                field: "bad",
                len: 65535,
                max: MAX_CHECKSUM_RANGES
            })
        );
    }

    #[test]
    fn a_truncated_list_names_the_field() {
        let mut payload = BytesMut::new();
        payload.put_u16_le(2);
        payload.put_u64_le(0);
        payload.put_u64_le(4096);
        payload.put_u64_le(8192);
        let mut src = Reader::new(payload.freeze());
        let extent = Extent {
            offset: 0,
            len_bytes: 16384,
        };
        assert!(matches!(
            ChecksumError::decode(extent, &mut src),
            Err(PayloadError::Truncated {
                field: "bad.len",
                ..
            })
        ));
    }
}
