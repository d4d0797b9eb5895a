//! Data-path payloads: `Write`, and the `Extent` of `Read`, `Unmap` and
//! `WriteZeroes`.
//!
//! These carry their offset and length in the header (`offset`, `length`)
//! so that the data of a write is the whole payload, copied once into the
//! send buffer and split off the receive buffer without a copy. Validation
//! (checked arithmetic, before any IO): the extent is non-empty, ends at or
//! below `u64::MAX`, and a write or read moves at most
//! [`MAX_IO_BYTES`]. Whether it fits the volume is the replica's check
//! (answered `OutOfRange`), since only it knows the size.

use bytes::Bytes;

use crate::limits::MAX_IO_BYTES;
use crate::wire::PayloadError;

/// Header flag of a `Write`: make this write durable before acknowledging
/// it (SCSI FUA).
pub const FLAG_FUA: u16 = 0x0001;

/// A byte range of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes, at least 1.
    pub len_bytes: u32,
}

impl Extent {
    /// Checks the extent is non-empty, does not wrap and is at most
    /// `max_len_bytes` long.
    pub(crate) fn check(self, max_len_bytes: u32) -> Result<(), PayloadError> {
        if self.len_bytes == 0 {
            return Err(PayloadError::Invalid {
                field: "length",
                reason: "empty extent",
            });
        }
        if self.len_bytes > max_len_bytes {
            return Err(PayloadError::TooLong {
                field: "length",
                len: usize::try_from(self.len_bytes).unwrap_or(usize::MAX),
                max: usize::try_from(max_len_bytes).unwrap_or(usize::MAX),
            });
        }
        if self.offset.checked_add(u64::from(self.len_bytes)).is_none() {
            return Err(PayloadError::Invalid {
                field: "offset",
                reason: "offset + length overflows u64",
            });
        }
        Ok(())
    }
}

/// Write `data` at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// First byte written.
    pub offset: u64,
    /// The data, 1 byte to [`MAX_IO_BYTES`].
    pub data: Bytes,
    /// Durable before acknowledged (header flag [`FLAG_FUA`]).
    pub fua: bool,
}

impl Write {
    /// The extent written; fails if `data` is longer than a u32 can say.
    pub(crate) fn extent(&self) -> Result<Extent, PayloadError> {
        let len_bytes = u32::try_from(self.data.len()).map_err(|_| PayloadError::TooLong {
            field: "data",
            len: self.data.len(),
            max: usize::try_from(MAX_IO_BYTES).unwrap_or(usize::MAX),
        })?;
        let extent = Extent {
            offset: self.offset,
            len_bytes,
        };
        extent.check(MAX_IO_BYTES)?;
        Ok(extent)
    }

    pub(crate) fn flags(&self) -> u16 {
        if self.fua {
            FLAG_FUA
        } else {
            0
        }
    }

    /// Rebuilds a write from its header fields and payload, checking that
    /// the header length matches the payload.
    pub(crate) fn from_parts(
        extent: Extent,
        flags: u16,
        data: Bytes,
    ) -> Result<Write, PayloadError> {
        if flags & !FLAG_FUA != 0 {
            return Err(PayloadError::Invalid {
                field: "flags",
                reason: "unknown write flag",
            });
        }
        let write = Write {
            offset: extent.offset,
            data,
            fua: flags & FLAG_FUA != 0,
        };
        if write.extent()? != extent {
            return Err(PayloadError::Invalid {
                field: "length",
                reason: "header length differs from the data length",
            });
        }
        Ok(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(offset: u64, len_bytes: u32) -> Extent {
        Extent { offset, len_bytes }
    }

    #[test]
    fn extents_that_wrap_past_u64_max_are_refused() {
        assert!(extent(u64::MAX - 512, 512).check(MAX_IO_BYTES).is_ok());
        assert!(extent(u64::MAX - 511, 512).check(MAX_IO_BYTES).is_err());
    }

    #[test]
    fn empty_and_oversize_extents_are_refused() {
        assert!(extent(0, 0).check(MAX_IO_BYTES).is_err());
        assert!(extent(0, MAX_IO_BYTES).check(MAX_IO_BYTES).is_ok());
        assert!(extent(0, MAX_IO_BYTES + 1).check(MAX_IO_BYTES).is_err());
    }

    #[test]
    fn write_length_must_match_its_header() {
        let data = Bytes::from_static(&[7; 512]);
        assert!(Write::from_parts(extent(0, 512), FLAG_FUA, data.clone()).is_ok_and(|w| w.fua));
        assert!(Write::from_parts(extent(0, 511), 0, data.clone()).is_err());
        assert!(Write::from_parts(extent(0, 512), 0x0002, data).is_err());
    }
}
