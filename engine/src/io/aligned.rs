//! A heap buffer aligned for O_DIRECT IO.
//!
//! Placeholder to be completed by the IO backend work: the alignment is
//! always 4096 bytes, which satisfies every device's logical block size.

/// An owned, zero-initialised byte buffer whose address is 4096-byte aligned.
pub struct AlignedBuf {
    // Over-allocated Vec; `start` is the first aligned index.
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

/// Alignment of every [`AlignedBuf`], in bytes.
pub const BUF_ALIGN: usize = 4096;

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        let storage = vec![0u8; len + BUF_ALIGN];
        let addr = storage.as_ptr() as usize;
        let start = (BUF_ALIGN - addr % BUF_ALIGN) % BUF_ALIGN;
        Self {
            storage,
            start,
            len,
        }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut buf = Self::zeroed(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).finish()
    }
}
