//! Rebuild payloads: start, chunk stream, progress, done, abort.
//!
//! The target sends `RebuildStart` to the replica to be rebuilt (the sink),
//! naming a healthy peer (the source); the sink dials the source and sends
//! it a `RebuildStart` naming itself. The source then streams
//! `RebuildChunk`s of every block written since `from_io_seq`, each block
//! with the io_seq of its last write so the sink can keep a newer live write
//! over older rebuilt data (docs/architecture.md, invariant 6), and ends
//! with `RebuildDone`. The sink reports `RebuildProgress` to the target.
//! Either side may send `RebuildAbort`. Chunk, progress, done and abort are
//! one-way: TCP backpressure paces the stream.
//!
//! A chunk's extent travels in the header (`offset`, `length`); its payload
//! is `block_size u32, block_count u32, block_count × io_seq u64, data`.
//! Validation: the block size is a bounded power of two, the count is
//! between 1 and [`MAX_REBUILD_CHUNK_BLOCKS`], `length = count × block
//! size` (checked) and at most [`MAX_IO_BYTES`], the offset is
//! block-aligned and the extent does not wrap.

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits::{
    MAX_ADDRESS_BYTES, MAX_DETAIL_BYTES, MAX_IO_BYTES, MAX_REBUILD_CHUNK_BLOCKS, MAX_REBUILD_RANGES,
};
use crate::message::handshake::check_block_size;
use crate::message::io::Extent;
use crate::status::Status;
use crate::wire::{check_text, put_prefixed, Name, PayloadError, Reader};

/// What the source copies from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildSource {
    /// The live volume; the stream's `RebuildDone` carries the source's
    /// last received io_seq.
    Live,
    /// A snapshot of it, frozen: the stream carries every chunk of the
    /// snapshot last written after `from_io_seq` (the io_seq of the newest
    /// snapshot the sink already shares, 0 for all), and its `RebuildDone`
    /// carries the snapshot's io_seq. A sink asks for one per snapshot it
    /// lacks (`cstor_replica::rebuild`).
    Snapshot(Name),
    /// Byte ranges of the live volume, whatever their io_seq (`from_io_seq`
    /// is not used): every block in them, each with the io_seq of its
    /// chunk's last write, blocks never written as zeros with io_seq 0.
    /// A sink asks for the chunks it changed itself that the live stream
    /// did not carry — writes the source never got — so that it ends with
    /// the source's content there too (`cstor_replica::rebuild`). At least
    /// one and at most [`MAX_REBUILD_RANGES`] ranges, each non-empty, in
    /// ascending order, not overlapping, not wrapping.
    Ranges(Vec<ByteRange>),
}

/// A byte range of the volume, for [`RebuildSource::Ranges`] (longer than
/// an IO's [`Extent`]: a range may cover many chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes, at least 1.
    pub len_bytes: u64,
}

impl ByteRange {
    /// One past the last byte; `None` if the range wraps.
    pub fn end(self) -> Option<u64> {
        self.offset.checked_add(self.len_bytes)
    }
}

const SOURCE_LIVE: u8 = 0;
const SOURCE_SNAPSHOT: u8 = 1;
const SOURCE_RANGES: u8 = 2;

/// Checks the ranges of a [`RebuildSource::Ranges`] (module doc).
fn check_ranges(ranges: &[ByteRange]) -> Result<(), PayloadError> {
    if ranges.is_empty() || ranges.len() > MAX_REBUILD_RANGES {
        return Err(PayloadError::TooLong {
            field: "source.ranges",
            len: ranges.len(),
            max: MAX_REBUILD_RANGES,
        });
    }
    check_ascending(ranges, "source.ranges")
}

/// Checks that `ranges` (the list field `field`) are each non-empty and
/// not wrapping, ascending and not overlapping.
pub(crate) fn check_ascending(
    ranges: &[ByteRange],
    field: &'static str,
) -> Result<(), PayloadError> {
    let mut floor = 0u64;
    for range in ranges {
        let invalid = |reason| PayloadError::Invalid { field, reason };
        if range.len_bytes == 0 {
            return Err(invalid("empty range"));
        }
        let end = range.end().ok_or(invalid("range wraps"))?;
        if range.offset < floor {
            return Err(invalid("ranges out of order or overlapping"));
        }
        floor = end;
    }
    Ok(())
}

/// Start a rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildStart {
    /// `host:port` of the other replica (source when sent to the sink,
    /// sink when sent to the source); at most [`MAX_ADDRESS_BYTES`], not
    /// empty.
    pub peer_address: String,
    /// The volume.
    pub volume: Name,
    /// Copy every block last written after this io_seq (0: everything).
    pub from_io_seq: u64,
    /// Live volume or snapshot.
    pub source: RebuildSource,
}

impl RebuildStart {
    pub(crate) fn check(&self) -> Result<(), PayloadError> {
        if self.peer_address.is_empty() {
            return Err(PayloadError::Invalid {
                field: "peer_address",
                reason: "empty address",
            });
        }
        check_text("peer_address", &self.peer_address, MAX_ADDRESS_BYTES)?;
        match &self.source {
            RebuildSource::Ranges(ranges) => check_ranges(ranges),
            RebuildSource::Live | RebuildSource::Snapshot(_) => Ok(()),
        }
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<RebuildStart, PayloadError> {
        let start = RebuildStart {
            from_io_seq: src.u64("from_io_seq")?,
            volume: src.name("volume")?,
            peer_address: src.string("peer_address", MAX_ADDRESS_BYTES)?,
            source: match src.u8("source")? {
                SOURCE_LIVE => RebuildSource::Live,
                SOURCE_SNAPSHOT => RebuildSource::Snapshot(src.name("source.snapshot")?),
                SOURCE_RANGES => {
                    let count = src.u32("source.ranges")?;
                    let count = usize::try_from(count).unwrap_or(usize::MAX);
                    if count > MAX_REBUILD_RANGES {
                        return Err(PayloadError::TooLong {
                            field: "source.ranges",
                            len: count,
                            max: MAX_REBUILD_RANGES,
                        });
                    }
                    let mut ranges = Vec::with_capacity(count);
                    for _ in 0..count {
                        ranges.push(ByteRange {
                            offset: src.u64("source.ranges.offset")?,
                            len_bytes: src.u64("source.ranges.len")?,
                        });
                    }
                    RebuildSource::Ranges(ranges)
                }
                _ => {
                    return Err(PayloadError::Invalid {
                        field: "source",
                        reason: "unknown rebuild source",
                    })
                }
            },
        };
        start.check()?;
        Ok(start)
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.from_io_seq);
        self.volume.put(dst);
        put_prefixed(dst, self.peer_address.as_bytes());
        match &self.source {
            RebuildSource::Live => dst.put_u8(SOURCE_LIVE),
            RebuildSource::Snapshot(name) => {
                dst.put_u8(SOURCE_SNAPSHOT);
                name.put(dst);
            }
            RebuildSource::Ranges(ranges) => {
                dst.put_u8(SOURCE_RANGES);
                dst.put_u32_le(u32::try_from(ranges.len()).unwrap_or(u32::MAX));
                for range in ranges {
                    dst.put_u64_le(range.offset);
                    dst.put_u64_le(range.len_bytes);
                }
            }
        }
    }
}

/// Consecutive blocks of rebuild data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildChunk {
    /// First byte; a multiple of `block_size_bytes`.
    pub offset: u64,
    /// Size of each block.
    pub block_size_bytes: u32,
    /// io_seq of the last write of each block, in block order.
    pub block_io_seqs: Vec<u64>,
    /// `block_io_seqs.len() × block_size_bytes` bytes of data.
    pub data: Bytes,
}

impl RebuildChunk {
    /// The chunk's extent, after checking every rule of the module docs.
    pub(crate) fn extent(&self) -> Result<Extent, PayloadError> {
        check_block_size(self.block_size_bytes)?;
        let blocks = self.block_io_seqs.len();
        let max_blocks = usize::try_from(MAX_REBUILD_CHUNK_BLOCKS).unwrap_or(usize::MAX);
        if blocks == 0 || blocks > max_blocks {
            return Err(PayloadError::TooLong {
                field: "block_io_seqs",
                len: blocks,
                max: max_blocks,
            });
        }
        let expected = u32::try_from(blocks)
            .ok()
            .and_then(|n| n.checked_mul(self.block_size_bytes));
        if expected.and_then(|n| usize::try_from(n).ok()) != Some(self.data.len()) {
            return Err(PayloadError::Invalid {
                field: "data",
                reason: "length is not block_count x block_size",
            });
        }
        let extent = Extent {
            offset: self.offset,
            len_bytes: expected.unwrap_or(0),
        };
        extent.check(MAX_IO_BYTES)?;
        // A power of two 2^k divides the offset iff it has k trailing zeros.
        if self.offset.trailing_zeros() < self.block_size_bytes.trailing_zeros() {
            return Err(PayloadError::Invalid {
                field: "offset",
                reason: "not block-aligned",
            });
        }
        Ok(extent)
    }

    pub(crate) fn decode(extent: Extent, src: &mut Reader) -> Result<RebuildChunk, PayloadError> {
        let block_size_bytes = src.u32("block_size_bytes")?;
        let count = src.u32("block_count")?;
        if count > MAX_REBUILD_CHUNK_BLOCKS {
            return Err(PayloadError::TooLong {
                field: "block_count",
                len: usize::try_from(count).unwrap_or(usize::MAX),
                max: usize::try_from(MAX_REBUILD_CHUNK_BLOCKS).unwrap_or(usize::MAX),
            });
        }
        let mut block_io_seqs = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for _ in 0..count {
            block_io_seqs.push(src.u64("block_io_seqs")?);
        }
        let chunk = RebuildChunk {
            offset: extent.offset,
            block_size_bytes,
            block_io_seqs,
            data: src.rest(),
        };
        if chunk.extent()? != extent {
            return Err(PayloadError::Invalid {
                field: "length",
                reason: "header length differs from the data length",
            });
        }
        Ok(chunk)
    }

    /// Puts everything but the data (the caller appends it, so that it is
    /// copied once).
    pub(crate) fn put_table(&self, dst: &mut BytesMut) {
        dst.put_u32_le(self.block_size_bytes);
        // `extent` bounded the count by MAX_REBUILD_CHUNK_BLOCKS.
        dst.put_u32_le(u32::try_from(self.block_io_seqs.len()).unwrap_or(u32::MAX));
        for io_seq in &self.block_io_seqs {
            dst.put_u64_le(*io_seq);
        }
    }

    pub(crate) fn wire_len(&self) -> usize {
        self.block_io_seqs
            .len()
            .saturating_mul(8)
            .saturating_add(8)
            .saturating_add(self.data.len())
    }
}

/// How far a rebuild got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Bytes copied so far, at most `total_bytes`.
    pub done_bytes: u64,
    /// Bytes to copy in all.
    pub total_bytes: u64,
}

impl RebuildProgress {
    pub(crate) fn check(&self) -> Result<(), PayloadError> {
        if self.done_bytes > self.total_bytes {
            return Err(PayloadError::Invalid {
                field: "rebuild.done_bytes",
                reason: "more done than total",
            });
        }
        Ok(())
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<RebuildProgress, PayloadError> {
        let progress = RebuildProgress {
            done_bytes: src.u64("rebuild.done_bytes")?,
            total_bytes: src.u64("rebuild.total_bytes")?,
        };
        progress.check()?;
        Ok(progress)
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.done_bytes);
        dst.put_u64_le(self.total_bytes);
    }
}

/// The end of a rebuild stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildDone {
    /// The sink now holds every write up to this io_seq.
    pub through_io_seq: u64,
}

/// A rebuild given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildAbort {
    /// Why, as a status (e.g. `IoError` on the source, `NoSpace` on the
    /// sink).
    pub status: Status,
    /// For logs; at most [`MAX_DETAIL_BYTES`].
    pub detail: String,
}

impl RebuildAbort {
    pub(crate) fn check(&self) -> Result<(), PayloadError> {
        check_text("detail", &self.detail, MAX_DETAIL_BYTES)
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<RebuildAbort, PayloadError> {
        Ok(RebuildAbort {
            status: Status::from_u16(src.u16("status")?),
            detail: src.string("detail", MAX_DETAIL_BYTES)?,
        })
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_u16_le(self.status.to_u16());
        put_prefixed(dst, self.detail.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, blocks: usize, data_len: usize) -> RebuildChunk {
        RebuildChunk {
            offset,
            block_size_bytes: 4096,
            block_io_seqs: vec![1; blocks],
            data: Bytes::from(vec![0u8; data_len]),
        }
    }

    #[test]
    fn chunk_data_must_be_count_times_block_size() {
        assert!(chunk(0, 2, 8192).extent().is_ok());
        assert!(chunk(0, 2, 8191).extent().is_err());
        assert!(chunk(0, 0, 0).extent().is_err());
    }

    #[test]
    fn chunk_offset_must_be_block_aligned() {
        assert!(chunk(4096, 1, 4096).extent().is_ok());
        assert!(chunk(4095, 1, 4096).extent().is_err());
    }

    #[test]
    fn chunk_block_count_is_bounded() {
        let max = MAX_REBUILD_CHUNK_BLOCKS as usize;
        assert!(chunk(0, max, max * 4096).extent().is_ok());
        assert!(chunk(0, max + 1, (max + 1) * 4096).extent().is_err());
    }

    #[test]
    fn progress_beyond_total_is_refused() {
        let bad = RebuildProgress {
            done_bytes: 2,
            total_bytes: 1,
        };
        assert!(bad.check().is_err());
    }

    fn range(offset: u64, len_bytes: u64) -> ByteRange {
        ByteRange { offset, len_bytes }
    }

    #[test]
    fn ranges_must_be_non_empty_ascending_disjoint_and_bounded() {
        let ok = [range(0, 4096), range(4096, 8192), range(1 << 40, 1)];
        assert_eq!(check_ranges(&ok), Ok(()));
        let refused: [(&[ByteRange], &str); 5] = [
            (&[], "no range"),
            (&[range(0, 0)], "empty range"),
            (&[range(u64::MAX, 2)], "wrapping range"),
            (&[range(4096, 10), range(0, 10)], "out of order"),
            (&[range(0, 8192), range(4096, 10)], "overlapping"),
        ];
        for (ranges, what) in refused {
            assert!(check_ranges(ranges).is_err(), "{what} accepted");
        }
        let too_many = vec![range(0, 1); MAX_REBUILD_RANGES + 1];
        assert!(matches!(
            check_ranges(&too_many),
            Err(PayloadError::TooLong { .. })
        ));
    }

    #[test]
    fn a_count_beyond_the_bound_is_refused_before_reading_the_ranges() {
        let start = RebuildStart {
            peer_address: "h:1".into(),
            volume: Name::new("v").unwrap(),
            from_io_seq: 0,
            source: RebuildSource::Ranges(vec![range(0, 4096)]),
        };
        let mut buf = BytesMut::new();
        start.put(&mut buf);
        // The count is the u32 after the source tag, the payload's last
        // 4 + 16 bytes being count and the one range.
        let at = buf.len() - 20;
        buf[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut reader = Reader::new(buf.freeze());
        assert!(matches!(
            RebuildStart::decode(&mut reader),
            Err(PayloadError::TooLong {
                field: "source.ranges",
                ..
            })
        ));
    }
}
