//! A heap buffer aligned for O_DIRECT IO.
//!
//! Job: own `len` zero-initialised bytes at an address that is a multiple of
//! [`BUF_ALIGN`], which satisfies every device's logical block size (512 or
//! 4096) and the 4096-byte alignment the files backends use with O_DIRECT.
//!
//! Invariants:
//! - `ptr` comes from `std::alloc::alloc_zeroed` with `layout` (size at least
//!   1, so the allocation is never zero-sized) and is freed once, in `Drop`,
//!   with the same layout.
//! - The first `len` bytes are initialised (zeroed at allocation, then only
//!   written through safe slices) and `len <= layout.size()`.
//! - The heap address never changes while the buffer lives, so an in-flight
//!   io_uring operation that owns the buffer may keep pointing into it.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`], in bytes.
pub const BUF_ALIGN: usize = 4096;

/// An owned, zero-initialised byte buffer whose address is 4096-byte aligned.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation, like `Box<[u8]>`; it has
// no interior mutability and no thread affinity, so moving it to another
// thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out `&[u8]` (no interior mutability),
// exactly like `&Box<[u8]>`, so sharing across threads is sound.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    ///
    /// Aborts through `handle_alloc_error` if the allocator fails, like `Vec`;
    /// a length too large for any allocation (over `isize::MAX`) is the
    /// caller's bug and is treated the same way.
    pub fn zeroed(len: usize) -> Self {
        let size = len.max(1);
        let Ok(layout) = Layout::from_size_align(size, BUF_ALIGN) else {
            // Only reachable for len > isize::MAX - BUF_ALIGN: no allocation
            // of that size can exist, so behave as an allocation failure.
            handle_alloc_error(Layout::new::<[u8; BUF_ALIGN]>());
        };
        // SAFETY: `layout` has a non-zero size (`size >= 1`).
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout);
        };
        Self { ptr, len, layout }
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
        // SAFETY: `ptr` is valid for reads of `len <= layout.size()` bytes,
        // all initialised (invariants above); the borrow of `self` keeps the
        // allocation alive and unaliased by `&mut` for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only
        // reference to the bytes for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Address of the first byte, for IO engines that hand it to the kernel.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Mutable address of the first byte, for IO engines that hand it to
    /// the kernel.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with exactly `layout` and is freed only
        // here, once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

impl PartialEq for AlignedBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for AlignedBuf {}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_are_aligned_and_zero() {
        for len in [0usize, 1, 511, 512, 4096, 4097, 65536] {
            let buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.is_empty(), len == 0);
            assert_eq!(buf.as_ptr() as usize % BUF_ALIGN, 0);
            assert!(buf.as_slice().iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn from_slice_copies_and_clone_is_deep() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut a = AlignedBuf::from_slice(&data);
        let b = a.clone();
        a.as_mut_slice()[0] ^= 0xff;
        assert_eq!(b.as_slice(), &data[..]);
        assert_ne!(a, b);
        assert_ne!(a.as_ptr(), b.as_ptr());
    }

    #[test]
    fn buffers_move_across_threads() {
        let buf = AlignedBuf::from_slice(b"hello");
        let back = std::thread::spawn(move || buf).join().unwrap();
        assert_eq!(back.as_slice(), b"hello");
    }
}
