//! Data integrity: the digest of a range (what scrub and a rebuild by
//! digest compare between replicas without shipping the data).
//!
//! A range's digest is a function of its content only, 4 KiB block by
//! block: an unmapped block and a mapped block of zeros digest alike, and
//! two replicas that hold the same bytes agree whatever their chunk maps or
//! io_seqs. Every mapped block read for it is verified against its stored
//! checksum; bad blocks are reported, not digested.

use super::io::pieces;
use super::Volume;
use crate::error::{invalid, Result};
use crate::limits::{MAX_DIGEST_BYTES, SUM_BLOCK_BYTES};
use crate::meta::chunk_map::Target;

/// What [`Volume::digest`] found in a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeDigest {
    /// 64-bit digest of the range's content: crc32c over the blocks'
    /// crc32c values (high half), and over each block's crc32c followed
    /// by its index in the range (low half). Bad blocks count as their
    /// index only.
    pub digest: u64,
    /// 4 KiB blocks in the range that hold data (mapped).
    pub mapped_blocks: u64,
    /// Byte ranges (offset, length) of the volume whose data failed its
    /// checksum on this copy, merged.
    pub bad: Vec<(u64, u64)>,
}

/// crc32c of a 4 KiB block of zeros (what an unmapped block digests as).
pub(crate) fn zero_block_crc() -> u32 {
    static ZERO: [u8; SUM_BLOCK_BYTES as usize] = [0; SUM_BLOCK_BYTES as usize];
    crc32c::crc32c(&ZERO)
}

struct Digester {
    hi: u32,
    lo: u32,
    index: u64,
}

impl Digester {
    fn new() -> Self {
        Self {
            hi: 0,
            lo: 0,
            index: 0,
        }
    }

    fn block(&mut self, crc: Option<u32>) {
        let c = crc.map_or([0xff; 4], u32::to_le_bytes);
        self.hi = crc32c::crc32c_append(self.hi, &c);
        self.lo = crc32c::crc32c_append(self.lo, &c);
        self.lo = crc32c::crc32c_append(self.lo, &self.index.to_le_bytes());
        self.index += 1;
    }

    fn finish(&self) -> u64 {
        (u64::from(self.hi) << 32) | u64::from(self.lo)
    }
}

impl Volume {
    /// The digest of `[offset, offset + len)` of the live volume: 4 KiB
    /// aligned, at most [`MAX_DIGEST_BYTES`]. Reads and verifies every
    /// mapped block; a block that fails its checksum is named in
    /// `RangeDigest::bad` (this is not an error: the digest says what this
    /// copy holds, the caller decides which copy is right).
    pub async fn digest(&self, offset: u64, len: u64) -> Result<RangeDigest> {
        let _s = self.pool.structure.read().await;
        let (live, size) = self.usable()?;
        if !offset.is_multiple_of(SUM_BLOCK_BYTES) || !len.is_multiple_of(SUM_BLOCK_BYTES) {
            return Err(invalid(format!(
                "{}: a digest covers whole 4 KiB blocks ({len} bytes)",
                self.ctx("digest of", offset)
            )));
        }
        if len > MAX_DIGEST_BYTES {
            return Err(invalid(format!(
                "a digest of {len} bytes exceeds {MAX_DIGEST_BYTES}"
            )));
        }
        self.check_extent(size, offset, len)?;
        let zero = zero_block_crc();
        let mut d = Digester::new();
        let mut mapped_blocks = 0u64;
        let mut bad = Vec::new();
        let chunk_bytes = self.chunk_bytes();
        for p in pieces(offset, len, chunk_bytes) {
            let blocks = p.len as u64 / SUM_BLOCK_BYTES;
            let _g = self.pool.locks.shared(self.id, p.chunk).await;
            let target = {
                let m = self.pool.meta.lock();
                m.state.resolve(live, p.chunk).map(|(_, e)| e.target)
            };
            let Some(Target::Data(phys)) = target else {
                for _ in 0..blocks {
                    d.block(Some(zero));
                }
                continue;
            };
            mapped_blocks += blocks;
            let crcs = self.block_crcs(phys, p.off, p.len).await?;
            for (i, crc) in crcs.into_iter().enumerate() {
                if crc.is_none() {
                    let at = p.chunk * chunk_bytes + p.off + i as u64 * SUM_BLOCK_BYTES;
                    bad.push((at, SUM_BLOCK_BYTES));
                }
                d.block(crc);
            }
        }
        let bad = crate::error::Error::checksum("", bad).bad_ranges().to_vec();
        Ok(RangeDigest {
            digest: d.finish(),
            mapped_blocks,
            bad,
        })
    }
}
