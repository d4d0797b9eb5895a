//! On-disk format: device labels, the two superblock slots and journal
//! batch framing. Pure code (bytes in, values out); `engine/FORMAT.md`
//! draws every byte, and the constants here are the ones it names.
//!
//! Layout of device 0 (every offset derives from the one before):
//! `[label 4 KiB][superblock slot 0 4 KiB][slot 1 4 KiB][journal][checkpoint 0][checkpoint 1][data chunks]`.
//! Other devices: `[label 4 KiB][data chunks]`.

pub mod codec;
pub mod journal;
pub mod label;
pub mod superblock;

/// Unit of every metadata write and of region alignment.
pub const META_BLOCK_BYTES: u64 = 4096;
/// Device label at offset 0 of every device.
pub const LABEL_OFFSET: u64 = 0;
/// Superblock slot `i` lives at `SUPERBLOCK_OFFSET + i * META_BLOCK_BYTES`.
pub const SUPERBLOCK_OFFSET: u64 = LABEL_OFFSET + META_BLOCK_BYTES;
/// First byte after the two superblock slots: the journal region starts here.
pub const META_AREA_OFFSET: u64 = SUPERBLOCK_OFFSET + 2 * META_BLOCK_BYTES;
/// Data of devices other than 0 starts right after their label.
pub const OTHER_DEVICE_DATA_OFFSET: u64 = LABEL_OFFSET + META_BLOCK_BYTES;
/// On-disk format version of device labels and of a superblock without
/// block checksums (pools created before them; still opened).
pub const FORMAT_VERSION: u32 = 1;
/// Superblock format version of a pool with block checksums (FORMAT.md
/// "Block checksums"): version 1 plus the integrity regions. Open refuses
/// any version but these two.
pub const INTEGRITY_FORMAT_VERSION: u32 = 2;

/// Why a block of metadata was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The magic number did not match (not ours, or never written).
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not read.
    #[error("unsupported format version {0}")]
    BadVersion(u32),
    /// The checksum did not match (torn or corrupted).
    #[error("checksum mismatch")]
    BadChecksum,
    /// A field ran past the end.
    #[error(transparent)]
    Truncated(#[from] codec::Truncated),
    /// A field holds an impossible value.
    #[error("invalid field: {0}")]
    Invalid(String),
}

/// Rounds `v` up to a multiple of `align` (a power of two or any non-zero
/// value); `None` on overflow.
pub fn round_up(v: u64, align: u64) -> Option<u64> {
    if align == 0 {
        return None;
    }
    let rem = v % align;
    if rem == 0 {
        Some(v)
    } else {
        v.checked_add(align - rem)
    }
}

/// crc32c of `bytes` (Castagnoli, as everywhere in cstor).
pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Writes `crc(block[..len-4])` into the last 4 bytes of a fixed block.
pub(crate) fn seal_block(block: &mut [u8]) {
    let n = block.len().saturating_sub(4);
    let (body, tail) = block.split_at_mut(n);
    tail.copy_from_slice(&crc(body).to_le_bytes());
}

/// Checks a block sealed by [`seal_block`].
pub(crate) fn check_sealed(block: &[u8]) -> Result<(), FormatError> {
    let n = block.len().checked_sub(4).ok_or(FormatError::BadChecksum)?;
    let (body, tail) = block.split_at(n);
    let mut want = [0u8; 4];
    want.copy_from_slice(tail);
    if crc(body) == u32::from_le_bytes(want) {
        Ok(())
    } else {
        Err(FormatError::BadChecksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_up_aligns_and_detects_overflow() {
        assert_eq!(round_up(0, 4096), Some(0));
        assert_eq!(round_up(1, 4096), Some(4096));
        assert_eq!(round_up(8192, 4096), Some(8192));
        assert_eq!(round_up(u64::MAX, 4096), None);
        assert_eq!(round_up(5, 0), None);
    }

    #[test]
    fn sealed_block_detects_any_flipped_byte() {
        let mut b = vec![7u8; 64];
        seal_block(&mut b);
        assert!(check_sealed(&b).is_ok());
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert_eq!(check_sealed(&c), Err(FormatError::BadChecksum), "byte {i}");
        }
    }
}
