//! `MemDevice`: a [`Device`] held in memory, for tests.
//!
//! Job: the simplest correct implementation of the device contract, so pool
//! tests run fast and without files. Every operation completes before its
//! future is returned; `sync_data` is a no-op (memory is the "durable"
//! image; see [`CrashDevice`](super::CrashDevice) for power loss).
//!
//! Invariants: the image length never changes; requests are checked with
//! [`check_request`](super::check_request) against the configured alignment
//! before touching the image; discard zeroes the range.

use std::io;
use std::sync::Arc;

use parking_lot::RwLock;

use super::BUF_ALIGN;
use super::{check_buf, check_request, ready, AlignedBuf, BufResult, Device, IoError, IoFuture};

/// Alignment of [`MemDevice::new`]: the strictest logical block size a real
/// backend reports, so pool code that passes on memory passes on disks.
pub const MEM_DEFAULT_ALIGN: usize = 4096;

/// An in-memory device. Cloning gives another handle to the same image.
#[derive(Clone)]
pub struct MemDevice {
    image: Arc<RwLock<Vec<u8>>>,
    alignment: usize,
}

impl MemDevice {
    /// A zeroed device of `len_bytes` with 4096-byte alignment.
    pub fn new(len_bytes: usize) -> Self {
        Self {
            image: Arc::new(RwLock::new(vec![0; len_bytes])),
            alignment: MEM_DEFAULT_ALIGN,
        }
    }

    /// A zeroed device of `len_bytes` with `alignment` (a power of two, at
    /// most [`BUF_ALIGN`]; 1 means no alignment).
    pub fn with_alignment(len_bytes: usize, alignment: usize) -> Result<Self, IoError> {
        Self::from_image(vec![0; len_bytes], alignment)
    }

    /// A device whose contents are `image` (e.g. what a crash left).
    pub fn from_image(image: Vec<u8>, alignment: usize) -> Result<Self, IoError> {
        check_alignment(alignment)?;
        Ok(Self {
            image: Arc::new(RwLock::new(image)),
            alignment,
        })
    }

    /// A copy of the whole image.
    pub fn image(&self) -> Vec<u8> {
        self.image.read().clone()
    }
}

/// Accepts the alignments an [`AlignedBuf`] can always satisfy.
pub(crate) fn check_alignment(alignment: usize) -> Result<(), IoError> {
    if alignment.is_power_of_two() && alignment <= BUF_ALIGN {
        Ok(())
    } else {
        Err(IoError::InvalidConfig(format!(
            "alignment {alignment} is not a power of two no larger than {BUF_ALIGN}"
        )))
    }
}

/// The byte range of a checked request as `usize` indices.
pub(crate) fn range(offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range overflows"))?;
    Ok(start..end)
}

impl Device for MemDevice {
    fn len_bytes(&self) -> u64 {
        self.image.read().len() as u64
    }

    fn alignment(&self) -> usize {
        self.alignment
    }

    fn read_at(&self, mut buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        let result = check_buf(self, &buf, offset).and_then(|()| {
            let r = range(offset, buf.len())?;
            let image = self.image.read();
            let src = image
                .get(r)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.as_mut_slice().copy_from_slice(src);
            Ok(())
        });
        ready((result, buf))
    }

    fn write_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        let result = check_buf(self, &buf, offset).and_then(|()| {
            let r = range(offset, buf.len())?;
            let mut image = self.image.write();
            let dst = image
                .get_mut(r)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            dst.copy_from_slice(buf.as_slice());
            Ok(())
        });
        ready((result, buf))
    }

    fn sync_data(&self) -> IoFuture<io::Result<()>> {
        ready(Ok(()))
    }

    fn discard(&self, offset: u64, len_bytes: u64) -> IoFuture<io::Result<()>> {
        let result = check_request(self.len_bytes(), self.alignment, offset, len_bytes, None)
            .and_then(|()| {
                let len = usize::try_from(len_bytes)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                let r = range(offset, len)?;
                let mut image = self.image.write();
                if let Some(dst) = image.get_mut(r) {
                    dst.fill(0);
                }
                Ok(())
            });
        ready(result)
    }

    fn describe(&self) -> String {
        format!(
            "memory device of {} bytes, alignment {}",
            self.len_bytes(),
            self.alignment
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_must_be_a_power_of_two_up_to_buf_align() {
        assert!(MemDevice::with_alignment(4096, 1).is_ok());
        assert!(MemDevice::with_alignment(4096, 512).is_ok());
        assert!(MemDevice::with_alignment(4096, 3).is_err());
        assert!(MemDevice::with_alignment(4096, 0).is_err());
        assert!(MemDevice::with_alignment(4096, 8192).is_err());
    }

    #[tokio::test]
    async fn clones_share_the_image() {
        let a = MemDevice::new(8192);
        let b = a.clone();
        let (r, _) = a.write_at(AlignedBuf::from_slice(&[7; 4096]), 4096).await;
        r.unwrap();
        assert_eq!(&b.image()[4096..], &[7; 4096][..]);
        assert_eq!(&b.image()[..4096], &[0; 4096][..]);
    }
}
