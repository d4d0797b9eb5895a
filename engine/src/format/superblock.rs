//! Superblock: the root of a pool, in two 4 KiB slots on device 0. A commit
//! that rewrites it writes slot `generation % 2`, so the other slot keeps
//! the previous generation; on open the valid slot with the highest
//! generation wins and a torn slot (bad checksum) is ignored.
//! See FORMAT.md "Superblock".

use super::codec::{Reader, Writer};
use super::{
    check_sealed, seal_block, FormatError, FORMAT_VERSION, INTEGRITY_FORMAT_VERSION,
    META_BLOCK_BYTES, SUPERBLOCK_OFFSET,
};
use crate::limits::MAX_DEVICES;

/// Magic at byte 0 of a superblock slot.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"CSTORSB1";

/// One backing device as the superblock records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceEntry {
    /// Device size in bytes when it joined.
    pub len_bytes: u64,
    /// Byte offset of its first data chunk.
    pub data_offset: u64,
    /// Data chunks it holds.
    pub data_chunks: u64,
}

/// Byte offset in a version-2 superblock of its integrity fields (after
/// the longest device table, which ends at 120 + 64 × 24 = 1656).
pub const INTEGRITY_FIELDS_OFFSET: usize = 2048;

/// Where a pool with block checksums keeps them (FORMAT.md "Block
/// checksums"): the checksum area and the dirty-region bitmap on device 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegrityRegions {
    /// Dirty-region bitmap: one bit per region of `region_chunks` physical
    /// chunks, set while the region may hold data whose checksum is not on
    /// disk.
    pub dirty: Region,
    /// Checksum area: a crc32c (u32 LE) per 4 KiB block of every physical
    /// chunk, in physical order.
    pub sums: Region,
    /// Physical chunks per dirty region.
    pub region_chunks: u32,
}

/// A byte range on device 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len_bytes: u64,
}

/// The decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Pool identity (random at creation).
    pub pool_guid: u128,
    /// Incremented by every superblock write; selects the slot.
    pub generation: u64,
    /// Chunk size of the pool, fixed at creation.
    pub chunk_bytes: u32,
    /// Journal region on device 0.
    pub journal: Region,
    /// The two checkpoint regions on device 0 (same length).
    pub checkpoints: [Region; 2],
    /// Which checkpoint region holds the current checkpoint (0 or 1).
    pub active_checkpoint: u8,
    /// Encoded length of the current checkpoint.
    pub checkpoint_len: u64,
    /// crc32c of the current checkpoint's bytes.
    pub checkpoint_crc: u32,
    /// Sequence number of the first journal batch after the checkpoint; the
    /// journal restarts at its region's first byte after every checkpoint.
    pub journal_seq: u64,
    /// Most data chunks the checkpoint regions were sized for.
    pub max_data_chunks: u64,
    /// Backing devices in physical-chunk order.
    pub devices: Vec<DeviceEntry>,
    /// Block checksums (format version 2); `None` for a version-1 pool,
    /// which keeps none.
    pub integrity: Option<IntegrityRegions>,
}

impl Superblock {
    /// Byte offset of slot `i` (0 or 1) on device 0.
    pub fn slot_offset(slot: u64) -> u64 {
        SUPERBLOCK_OFFSET + (slot % 2) * META_BLOCK_BYTES
    }

    /// Slot this superblock is written to.
    pub fn slot(&self) -> u64 {
        self.generation % 2
    }

    /// Encodes into one sealed 4 KiB block.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(4096);
        let version = if self.integrity.is_some() {
            INTEGRITY_FORMAT_VERSION
        } else {
            FORMAT_VERSION
        };
        w.raw(&SUPERBLOCK_MAGIC)
            .u32(version)
            .u32(self.chunk_bytes)
            .u128(self.pool_guid)
            .u64(self.generation)
            .u64(self.journal.offset)
            .u64(self.journal.len_bytes)
            .u64(self.checkpoints[0].offset)
            .u64(self.checkpoints[1].offset)
            .u64(self.checkpoints[0].len_bytes)
            .u64(self.checkpoint_len)
            .u32(self.checkpoint_crc)
            .u8(self.active_checkpoint)
            .raw(&[0u8; 3])
            .u64(self.journal_seq)
            .u64(self.max_data_chunks)
            .u32(u32::try_from(self.devices.len()).unwrap_or(u32::MAX))
            .u32(0);
        for d in self.devices.iter().take(MAX_DEVICES) {
            w.u64(d.len_bytes).u64(d.data_offset).u64(d.data_chunks);
        }
        if let Some(i) = &self.integrity {
            w.pad_to(INTEGRITY_FIELDS_OFFSET);
            w.u64(i.dirty.offset)
                .u64(i.dirty.len_bytes)
                .u64(i.sums.offset)
                .u64(i.sums.len_bytes)
                .u32(i.region_chunks);
        }
        w.pad_to(block_len());
        let mut block = w.into_vec();
        seal_block(&mut block);
        block
    }

    /// Decodes and checks one slot.
    pub fn decode(block: &[u8]) -> Result<Self, FormatError> {
        let block = block.get(..block_len()).ok_or(FormatError::BadChecksum)?;
        let mut r = Reader::new(block);
        if r.take(8)? != SUPERBLOCK_MAGIC {
            return Err(FormatError::BadMagic);
        }
        check_sealed(block)?;
        let version = r.u32()?;
        if version != FORMAT_VERSION && version != INTEGRITY_FORMAT_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        let chunk_bytes = r.u32()?;
        let pool_guid = r.u128()?;
        let generation = r.u64()?;
        let journal = Region {
            offset: r.u64()?,
            len_bytes: r.u64()?,
        };
        let ck0 = r.u64()?;
        let ck1 = r.u64()?;
        let ck_len = r.u64()?;
        let checkpoint_len = r.u64()?;
        let checkpoint_crc = r.u32()?;
        let active_checkpoint = r.u8()?;
        r.take(3)?;
        let journal_seq = r.u64()?;
        let max_data_chunks = r.u64()?;
        let count = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        r.u32()?;
        if count == 0 || count > MAX_DEVICES {
            return Err(FormatError::Invalid(format!("device count {count}")));
        }
        if active_checkpoint > 1 || checkpoint_len > ck_len {
            return Err(FormatError::Invalid("checkpoint pointer".into()));
        }
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            devices.push(DeviceEntry {
                len_bytes: r.u64()?,
                data_offset: r.u64()?,
                data_chunks: r.u64()?,
            });
        }
        let integrity = if version == INTEGRITY_FORMAT_VERSION {
            let mut r = Reader::new(
                block
                    .get(INTEGRITY_FIELDS_OFFSET..)
                    .ok_or(FormatError::BadChecksum)?,
            );
            let i = IntegrityRegions {
                dirty: Region {
                    offset: r.u64()?,
                    len_bytes: r.u64()?,
                },
                sums: Region {
                    offset: r.u64()?,
                    len_bytes: r.u64()?,
                },
                region_chunks: r.u32()?,
            };
            if i.region_chunks == 0 {
                return Err(FormatError::Invalid("dirty region of 0 chunks".into()));
            }
            Some(i)
        } else {
            None
        };
        Ok(Self {
            pool_guid,
            generation,
            chunk_bytes,
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
            active_checkpoint,
            checkpoint_len,
            checkpoint_crc,
            journal_seq,
            max_data_chunks,
            devices,
            integrity,
        })
    }

    /// Of two slots, the valid one with the highest generation; `None` when
    /// neither is valid.
    pub fn pick(slot0: &[u8], slot1: &[u8]) -> Option<Self> {
        let a = Self::decode(slot0).ok();
        let b = Self::decode(slot1).ok();
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.generation > a.generation { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

fn block_len() -> usize {
    usize::try_from(META_BLOCK_BYTES).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(generation: u64) -> Superblock {
        Superblock {
            pool_guid: 99,
            generation,
            chunk_bytes: 65536,
            journal: Region {
                offset: 12288,
                len_bytes: 65536,
            },
            checkpoints: [
                Region {
                    offset: 77824,
                    len_bytes: 8192,
                },
                Region {
                    offset: 86016,
                    len_bytes: 8192,
                },
            ],
            active_checkpoint: 1,
            checkpoint_len: 100,
            checkpoint_crc: 5,
            journal_seq: 17,
            max_data_chunks: 1000,
            devices: vec![
                DeviceEntry {
                    len_bytes: 1 << 20,
                    data_offset: 94208,
                    data_chunks: 14,
                },
                DeviceEntry {
                    len_bytes: 1 << 20,
                    data_offset: 4096,
                    data_chunks: 15,
                },
            ],
            integrity: None,
        }
    }

    #[test]
    fn a_version_2_superblock_carries_its_integrity_regions() {
        let mut sb = sample(4);
        sb.integrity = Some(IntegrityRegions {
            dirty: Region {
                offset: 94208,
                len_bytes: 4096,
            },
            sums: Region {
                offset: 98304,
                len_bytes: 8192,
            },
            region_chunks: 16,
        });
        let bytes = sb.encode();
        assert_eq!(&bytes[8..12], &INTEGRITY_FORMAT_VERSION.to_le_bytes());
        assert_eq!(Superblock::decode(&bytes), Ok(sb));
        // Version 1 is still read, and has none.
        let v1 = sample(4).encode();
        assert_eq!(&v1[8..12], &FORMAT_VERSION.to_le_bytes());
        assert_eq!(Superblock::decode(&v1).unwrap().integrity, None);
    }

    #[test]
    fn superblock_round_trips() {
        let sb = sample(4);
        assert_eq!(Superblock::decode(&sb.encode()), Ok(sb));
    }

    #[test]
    fn highest_valid_generation_wins_and_torn_slot_is_ignored() {
        let old = sample(4).encode();
        let new = sample(5).encode();
        assert_eq!(Superblock::pick(&old, &new).map(|s| s.generation), Some(5));
        assert_eq!(Superblock::pick(&new, &old).map(|s| s.generation), Some(5));
        let mut torn = new.clone();
        torn[2000] ^= 1;
        assert_eq!(Superblock::pick(&old, &torn).map(|s| s.generation), Some(4));
        assert_eq!(Superblock::pick(&torn, &[0u8; 4096]), None);
    }

    #[test]
    fn impossible_device_count_is_rejected() {
        let mut sb = sample(1);
        sb.devices.clear();
        assert!(matches!(
            Superblock::decode(&sb.encode()),
            Err(FormatError::Invalid(_))
        ));
    }
}
