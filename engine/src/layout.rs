//! Where things are: the plan of a new pool's device 0 (label, superblock
//! slots, journal, two checkpoint regions, data) and the map from a
//! physical chunk number to (device, byte offset) over the concatenated
//! devices. Pure arithmetic, all checked.

use crate::error::{invalid, Result};
use crate::format::superblock::{DeviceEntry, IntegrityRegions, Region};
use crate::format::{round_up, META_AREA_OFFSET, META_BLOCK_BYTES, OTHER_DEVICE_DATA_OFFSET};
use crate::limits::{
    DIRTY_REGION_BYTES, MAX_DEVICES, MAX_JOURNAL_BYTES, MIN_JOURNAL_BYTES, SUM_BLOCK_BYTES,
};
use crate::meta::checkpoint::ENTRY_BYTES;

/// Checkpoint bytes reserved beyond the chunk entries for volume, snapshot
/// and layer records (names, attribute blobs): 1/64 of the pool, clamped
/// to these bounds (256 KiB holds ~50 volumes with full attribute blobs).
pub const MIN_CHECKPOINT_FIXED_BYTES: u64 = 256 * 1024;
/// See [`MIN_CHECKPOINT_FIXED_BYTES`].
pub const MAX_CHECKPOINT_FIXED_BYTES: u64 = 32 * 1024 * 1024;

/// Metadata regions of device 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaPlan {
    /// Journal region.
    pub journal: Region,
    /// The two checkpoint regions.
    pub checkpoints: [Region; 2],
    /// Most data chunks the checkpoints were sized for.
    pub max_data_chunks: u64,
    /// The dirty-region bitmap and the checksum area, sized for
    /// `max_data_chunks`.
    pub integrity: IntegrityRegions,
    /// First data byte of device 0.
    pub data_offset: u64,
}

/// Plans device 0 of a new pool.
///
/// `journal_bytes` defaults to 1/64 of device 0 (clamped); the checkpoints
/// are sized for `max_data_bytes` (default: twice the initial capacity, so
/// the pool can grow by adding devices up to that) with room for two
/// entries per chunk (a chunk and a tombstone over it).
pub fn plan_meta(
    device_lens: &[u64],
    chunk_bytes: u32,
    journal_bytes: Option<u64>,
    max_data_bytes: Option<u64>,
) -> Result<MetaPlan> {
    let chunk = u64::from(chunk_bytes);
    let dev0 = *device_lens
        .first()
        .ok_or_else(|| invalid("a pool needs at least one device"))?;
    let journal_len = match journal_bytes {
        Some(j) => j,
        None => (dev0 / 64).clamp(MIN_JOURNAL_BYTES, MAX_JOURNAL_BYTES),
    };
    let journal_len = journal_len.clamp(MIN_JOURNAL_BYTES, MAX_JOURNAL_BYTES);
    let journal_len =
        round_up(journal_len, META_BLOCK_BYTES).ok_or_else(|| invalid("journal size"))?;
    let total: u64 = device_lens.iter().fold(0u64, |a, l| a.saturating_add(*l));
    let max_data = max_data_bytes.unwrap_or(total.saturating_mul(2)).max(total);
    let max_data_chunks = max_data / chunk;
    let fixed = (total / 64).clamp(MIN_CHECKPOINT_FIXED_BYTES, MAX_CHECKPOINT_FIXED_BYTES);
    let ck_len = max_data_chunks
        .checked_mul(2 * ENTRY_BYTES)
        .and_then(|b| b.checked_add(fixed))
        .and_then(|b| round_up(b, META_BLOCK_BYTES))
        .ok_or_else(|| invalid("checkpoint size overflows"))?;
    let journal = Region {
        offset: META_AREA_OFFSET,
        len_bytes: journal_len,
    };
    let ck0 = journal
        .offset
        .checked_add(journal_len)
        .ok_or_else(|| invalid("layout overflows"))?;
    let ck1 = ck0
        .checked_add(ck_len)
        .ok_or_else(|| invalid("layout overflows"))?;
    let integrity = plan_integrity(
        ck1.checked_add(ck_len)
            .ok_or_else(|| invalid("layout overflows"))?,
        max_data_chunks,
        chunk_bytes,
    )?;
    let data_offset = integrity
        .sums
        .offset
        .checked_add(integrity.sums.len_bytes)
        .ok_or_else(|| invalid("layout overflows"))?;
    Ok(MetaPlan {
        journal,
        checkpoints: [
            Region {
                offset: ck0,
                len_bytes: ck_len,
            },
            Region {
                offset: ck1,
                len_bytes: ck_len,
            },
        ],
        max_data_chunks,
        integrity,
        data_offset,
    })
}

/// Plans the dirty-region bitmap (one bit per [`DIRTY_REGION_BYTES`] of
/// chunks) and the checksum area (a u32 per 4 KiB block) for
/// `max_data_chunks`, from byte `offset` of device 0 on.
fn plan_integrity(offset: u64, max_data_chunks: u64, chunk_bytes: u32) -> Result<IntegrityRegions> {
    let chunk = u64::from(chunk_bytes).max(1);
    let region_chunks = (DIRTY_REGION_BYTES / chunk).max(1);
    let regions = max_data_chunks.div_ceil(region_chunks);
    let dirty_len = round_up(regions.div_ceil(8).max(1), META_BLOCK_BYTES)
        .ok_or_else(|| invalid("bitmap size"))?;
    let sums_len = max_data_chunks
        .checked_mul(chunk / SUM_BLOCK_BYTES * 4)
        .and_then(|b| round_up(b.max(1), META_BLOCK_BYTES))
        .ok_or_else(|| invalid("checksum area size overflows"))?;
    let sums_offset = offset
        .checked_add(dirty_len)
        .ok_or_else(|| invalid("layout overflows"))?;
    Ok(IntegrityRegions {
        dirty: Region {
            offset,
            len_bytes: dirty_len,
        },
        sums: Region {
            offset: sums_offset,
            len_bytes: sums_len,
        },
        region_chunks: u32::try_from(region_chunks).map_err(|_| invalid("region size"))?,
    })
}

/// The data part of a device of `len_bytes` whose data starts at
/// `data_offset`; an error when not even one chunk fits.
pub fn device_entry(len_bytes: u64, data_offset: u64, chunk_bytes: u32) -> Result<DeviceEntry> {
    let chunk = u64::from(chunk_bytes);
    let data_chunks = len_bytes.saturating_sub(data_offset) / chunk.max(1);
    if data_chunks == 0 {
        return Err(invalid(format!(
            "device of {len_bytes} bytes holds no {chunk_bytes}-byte chunk after its {data_offset} bytes of metadata"
        )));
    }
    Ok(DeviceEntry {
        len_bytes,
        data_offset,
        data_chunks,
    })
}

/// Data offset of a device other than device 0.
pub fn other_data_offset() -> u64 {
    OTHER_DEVICE_DATA_OFFSET
}

/// Physical chunk → (device index, byte offset) over concatenated devices.
#[derive(Debug, Clone, Default)]
pub struct ChunkSpace {
    entries: Vec<DeviceEntry>,
    first_chunk: Vec<u64>,
    total: u64,
    chunk_bytes: u64,
}

impl ChunkSpace {
    /// The space of `entries` in order.
    pub fn new(entries: &[DeviceEntry], chunk_bytes: u32) -> Result<Self> {
        if entries.is_empty() || entries.len() > MAX_DEVICES {
            return Err(invalid(format!("{} devices", entries.len())));
        }
        let mut first_chunk = Vec::with_capacity(entries.len());
        let mut total = 0u64;
        for e in entries {
            first_chunk.push(total);
            total = total
                .checked_add(e.data_chunks)
                .ok_or_else(|| invalid("chunk count overflows"))?;
        }
        Ok(Self {
            entries: entries.to_vec(),
            first_chunk,
            total,
            chunk_bytes: u64::from(chunk_bytes),
        })
    }

    /// Physical chunks in the pool.
    pub fn total_chunks(&self) -> u64 {
        self.total
    }

    /// Devices, in order.
    pub fn entries(&self) -> &[DeviceEntry] {
        &self.entries
    }

    /// Device index and byte offset of physical chunk `phys`.
    pub fn locate(&self, phys: u64) -> Option<(usize, u64)> {
        if phys >= self.total {
            return None;
        }
        let idx = self
            .first_chunk
            .partition_point(|&f| f <= phys)
            .checked_sub(1)?;
        let e = self.entries.get(idx)?;
        let within = phys.checked_sub(*self.first_chunk.get(idx)?)?;
        let off = within
            .checked_mul(self.chunk_bytes)?
            .checked_add(e.data_offset)?;
        Some((idx, off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_regions_follow_each_other_and_fit() {
        let p = plan_meta(&[64 << 20], 65536, None, None).unwrap();
        assert_eq!(p.journal.offset, META_AREA_OFFSET);
        assert_eq!(
            p.checkpoints[0].offset,
            p.journal.offset + p.journal.len_bytes
        );
        assert_eq!(
            p.checkpoints[1].offset,
            p.checkpoints[0].offset + p.checkpoints[0].len_bytes
        );
        assert_eq!(p.data_offset % META_BLOCK_BYTES, 0);
        assert!(device_entry(64 << 20, p.data_offset, 65536).is_ok());
        assert!(device_entry(4096, 4096, 65536).is_err());
    }

    #[test]
    fn locate_walks_the_concatenated_devices() {
        let e = [
            DeviceEntry {
                len_bytes: 0,
                data_offset: 100 * 4096,
                data_chunks: 3,
            },
            DeviceEntry {
                len_bytes: 0,
                data_offset: 4096,
                data_chunks: 2,
            },
        ];
        let s = ChunkSpace::new(&e, 4096).unwrap();
        assert_eq!(s.total_chunks(), 5);
        assert_eq!(s.locate(0), Some((0, 100 * 4096)));
        assert_eq!(s.locate(2), Some((0, 102 * 4096)));
        assert_eq!(s.locate(3), Some((1, 4096)));
        assert_eq!(s.locate(4), Some((1, 8192)));
        assert_eq!(s.locate(5), None);
    }
}
