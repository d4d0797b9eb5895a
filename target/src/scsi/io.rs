//! The interface between the logical unit and the volume layer: block
//! requests out, completions in.
//!
//! The logical unit never does IO. A medium command becomes one
//! [`BlockRequest`], wrapped in a [`Pending`] that also remembers how to
//! finish the command; the caller performs the request (the volume layer
//! replicates it to a quorum of replicas) and hands the `Pending` back with
//! an [`IoResult`] to `LogicalUnit::complete`.
//!
//! Contract for the volume layer:
//! - `fua: true` on a write-like request means: durable on a quorum before
//!   completing (the write cache is the replicas' volatile state). With the
//!   write cache disabled (WCE = 0) every write-like request carries it.
//! - [`BlockRequest::CompareAndWrite`] must be atomic against every other
//!   write to its range (SBC-3 §5.2): compare and write under one range lock,
//!   in one io_seq slot. It completes with [`IoError::Miscompare`] (offset of
//!   the first differing byte) and writes nothing when the data differ.
//! - [`BlockRequest::Unmap`] deallocates: afterwards the blocks read as
//!   zeros (we report LBPRZ = 1).
//! - [`BlockRequest::LbaStatus`] answers the mapped/deallocated extents from
//!   `lba` on; a volume that cannot tell answers one mapped extent (which is
//!   truthful, if imprecise: SBC-3 allows mapped for any block).

use bytes::Bytes;

use super::aborts::Stamp;

/// A range of logical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub lba: u64,
    pub blocks: u64,
}

/// One block IO for the volume layer. LBAs and counts are in logical blocks
/// of the unit's block size; data lengths are whole blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRequest {
    Read {
        lba: u64,
        blocks: u32,
    },
    Write {
        lba: u64,
        data: Bytes,
        fua: bool,
    },
    /// Write `block` (exactly one block) to each of `blocks` blocks.
    WriteSame {
        lba: u64,
        blocks: u64,
        block: Bytes,
        fua: bool,
    },
    /// Deallocate these extents (sorted as given, possibly overlapping).
    Unmap {
        extents: Vec<Extent>,
        fua: bool,
    },
    /// Make every completed write durable on a quorum.
    Flush,
    /// Atomically: if the blocks at `lba` equal `verify`, write `write`.
    CompareAndWrite {
        lba: u64,
        verify: Bytes,
        write: Bytes,
        fua: bool,
    },
    /// Provisioning status of blocks from `lba` (at most `max_extents`).
    LbaStatus {
        lba: u64,
        max_extents: usize,
    },
}

/// Provisioning status of one extent (SBC-3 §5.5.3, table 37).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    Mapped = 0,
    Deallocated = 1,
}

/// One answer extent of [`BlockRequest::LbaStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaStatusExtent {
    pub extent: Extent,
    pub status: Provisioning,
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoData {
    /// Writes, unmaps, flushes, compare-and-write.
    Done,
    /// The blocks read, exactly `blocks × block_size` bytes.
    Read(Bytes),
    LbaStatus(Vec<LbaStatusExtent>),
}

/// Why a request failed; each kind maps to one sense condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    #[error("LBA out of range")]
    LbaOutOfRange,
    #[error("unrecovered read error")]
    ReadError,
    #[error("write error")]
    WriteError,
    /// Below quorum: the volume is read-only (docs/architecture.md,
    /// invariant 3).
    #[error("volume is read-only")]
    WriteProtected,
    /// Fewer than CF replicas could allocate for the write: the volume is
    /// out of space (docs/failure-behaviour.md, "Replicas run out of space").
    #[error("space allocation failed")]
    SpaceAllocationFailed,
    #[error("volume not ready")]
    NotReady,
    #[error("miscompare at byte {offset_bytes}")]
    Miscompare { offset_bytes: u64 },
    /// The volume answered something inconsistent with the request.
    #[error("internal target failure")]
    Internal,
}

pub type IoResult = Result<IoData, IoError>;

/// How to turn the completion of a request into the command's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Then {
    /// GOOD without data.
    Status,
    /// GOOD with the read data as data-in.
    ReadData { bytes: u64 },
    /// VERIFY with BYTCHK: compare the `read_bytes` read with `expected`
    /// (`single_block`: one block compared with every block read).
    Compare {
        expected: Bytes,
        single_block: bool,
        read_bytes: u64,
    },
    /// GET LBA STATUS answer, truncated to the allocation length.
    LbaStatus { lba: u64, alloc_len: u32 },
    /// START STOP UNIT (stop) after its flush.
    Stop,
}

/// An issued request and what to do with its completion. Hand it back to
/// `LogicalUnit::complete` exactly once.
#[derive(Debug)]
#[must_use = "a pending request must be performed and completed"]
pub struct Pending {
    pub(crate) request: BlockRequest,
    pub(crate) then: Then,
    /// Who issued it and when, set by the logical unit: whether a PREEMPT
    /// AND ABORT aborted it meanwhile (module `aborts`).
    pub(crate) stamp: Option<Stamp>,
}

impl Pending {
    pub fn request(&self) -> &BlockRequest {
        &self.request
    }
}

/// First index at which `a` and `b` differ, if any.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then_some(a.len().min(b.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_finds_offset_or_length_mismatch() {
        assert_eq!(first_difference(b"abcd", b"abcd"), None);
        assert_eq!(first_difference(b"abcd", b"abxd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
    }
}
