//! Device label: the first 4 KiB of every backing device. It names the pool
//! (guid) and the device's index in the pool so that devices cannot be
//! mixed up or given in the wrong order. See FORMAT.md "Device label".

use super::codec::{Reader, Writer};
use super::{check_sealed, seal_block, FormatError, FORMAT_VERSION, META_BLOCK_BYTES};

/// Magic at byte 0 of a label.
pub const LABEL_MAGIC: [u8; 8] = *b"CSTORLB1";

/// What a device label holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// Pool this device belongs to.
    pub pool_guid: u128,
    /// Position of the device in the pool's physical chunk space.
    pub device_index: u32,
    /// Device size in bytes when it joined the pool.
    pub len_bytes: u64,
    /// Byte offset of the device's first data chunk.
    pub data_offset: u64,
    /// Data chunks on this device.
    pub data_chunks: u64,
}

impl Label {
    /// Encodes into one sealed 4 KiB block.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(4096);
        w.raw(&LABEL_MAGIC)
            .u32(FORMAT_VERSION)
            .u32(self.device_index)
            .u128(self.pool_guid)
            .u64(self.len_bytes)
            .u64(self.data_offset)
            .u64(self.data_chunks);
        w.pad_to(block_len());
        let mut block = w.into_vec();
        seal_block(&mut block);
        block
    }

    /// Decodes and checks a label block.
    pub fn decode(block: &[u8]) -> Result<Self, FormatError> {
        let block = block.get(..block_len()).ok_or(FormatError::BadChecksum)?;
        let mut r = Reader::new(block);
        if r.take(8)? != LABEL_MAGIC {
            return Err(FormatError::BadMagic);
        }
        check_sealed(block)?;
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        Ok(Self {
            device_index: r.u32()?,
            pool_guid: r.u128()?,
            len_bytes: r.u64()?,
            data_offset: r.u64()?,
            data_chunks: r.u64()?,
        })
    }
}

fn block_len() -> usize {
    usize::try_from(META_BLOCK_BYTES).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_round_trips_and_rejects_foreign_blocks() {
        let l = Label {
            pool_guid: 0x1234_5678_9abc,
            device_index: 3,
            len_bytes: 1 << 30,
            data_offset: 4096,
            data_chunks: 16383,
        };
        let b = l.encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(Label::decode(&b), Ok(l));
        assert_eq!(Label::decode(&[0u8; 4096]), Err(FormatError::BadMagic));
        let mut torn = b.clone();
        torn[40] ^= 0xff;
        assert_eq!(Label::decode(&torn), Err(FormatError::BadChecksum));
    }
}
