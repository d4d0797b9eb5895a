//! Block requests of the SCSI logical unit carried out on the replicated
//! volume: each [`BlockRequest`] becomes one or more volume operations.
//!
//! - Requests larger than the protocol's [`MAX_IO_BYTES`] are split; a
//!   split write completes when every piece did (FUA on every piece).
//! - WRITE SAME of a zero block is a `WriteZeroes` (the pool deallocates
//!   whole chunks); of any other block, writes of the repeated block.
//! - UNMAP: one `Unmap` per extent, then a flush when FUA was asked.
//! - COMPARE AND WRITE is atomic against every other write (SBC-3 §5.2):
//!   ordinary writes hold the shared side of [`WriteGate`], a compare and
//!   write its exclusive side from the read to the end of its write.
//! - GET LBA STATUS: the volume does not report allocation yet, so it
//!   answers one mapped extent (true for any block, SBC-3 allows it).
//!
//! The requests go to any [`BlockVolume`]: the target's [`Volume`], or a
//! simulator's handle to the same controller (crate `cstor-sim`), so that
//! both run this one translation.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use cstor_proto::limits::MAX_IO_BYTES;
use tokio::sync::RwLock;

use crate::metrics::{IoOp, TargetMetrics};
use crate::scsi::{BlockRequest, Extent, IoData, IoError, IoResult, LbaStatusExtent, Provisioning};
use crate::volume::{Completion, Op, Volume, VolumeError};

/// A volume block requests can be carried out on: what [`perform`] needs
/// of it. The future need not be `Send` (a simulator polls it on one
/// thread); the target's [`Volume`]'s is, so its block IO can be spawned.
pub trait BlockVolume {
    /// Performs one volume operation.
    fn submit(&self, op: Op) -> impl Future<Output = Result<Completion, VolumeError>>;
    /// The volume's size now.
    fn size_bytes(&self) -> u64;
}

impl BlockVolume for Volume {
    fn submit(&self, op: Op) -> impl Future<Output = Result<Completion, VolumeError>> {
        Volume::submit(self, op)
    }

    fn size_bytes(&self) -> u64 {
        Volume::size_bytes(self)
    }
}

/// Orders COMPARE AND WRITE against other writes of the volume.
#[derive(Debug, Default)]
pub struct WriteGate(RwLock<()>);

/// Largest piece of an unmap or write-zeroes request (a u32 on the wire,
/// kept block-aligned).
const MAX_EXTENT_BYTES: u64 = 1 << 30;

/// [`perform`], counted in `metrics` (operation, bytes, latency, error).
pub async fn perform_measured<V: BlockVolume>(
    metrics: &TargetMetrics,
    volume: &V,
    gate: &WriteGate,
    block_size: u32,
    request: &BlockRequest,
) -> IoResult {
    let started = std::time::Instant::now();
    let result = perform(volume, gate, block_size, request).await;
    if let Some((op, bytes)) = IoOp::of(request, block_size) {
        metrics.record(op, bytes, started.elapsed(), &result);
    }
    result
}

/// Performs one block request. `block_size` is the logical block size.
pub async fn perform<V: BlockVolume>(
    volume: &V,
    gate: &WriteGate,
    block_size: u32,
    request: &BlockRequest,
) -> IoResult {
    let bs = u64::from(block_size);
    let bytes = |lba: u64| lba.checked_mul(bs).ok_or(IoError::LbaOutOfRange);
    match request {
        BlockRequest::Read { lba, blocks } => {
            let len = u64::from(*blocks)
                .checked_mul(bs)
                .ok_or(IoError::LbaOutOfRange)?;
            read(volume, bytes(*lba)?, len).await.map(IoData::Read)
        }
        BlockRequest::Write { lba, data, fua } => {
            let _shared = gate.0.read().await;
            write(volume, bytes(*lba)?, data, *fua).await
        }
        BlockRequest::WriteSame {
            lba,
            blocks,
            block,
            fua,
        } => {
            let _shared = gate.0.read().await;
            let offset = bytes(*lba)?;
            let len = blocks.checked_mul(bs).ok_or(IoError::LbaOutOfRange)?;
            if block.iter().all(|&b| b == 0) {
                extents(volume, offset, len, |offset, len_bytes| Op::WriteZeroes {
                    offset,
                    len_bytes,
                })
                .await?;
            } else {
                write_repeated(volume, offset, len, block).await?;
            }
            if *fua {
                flush(volume).await?;
            }
            Ok(IoData::Done)
        }
        BlockRequest::Unmap { extents: list, fua } => {
            let _shared = gate.0.read().await;
            for e in list {
                let len = e.blocks.checked_mul(bs).ok_or(IoError::LbaOutOfRange)?;
                extents(volume, bytes(e.lba)?, len, |offset, len_bytes| Op::Unmap {
                    offset,
                    len_bytes,
                })
                .await?;
            }
            if *fua {
                flush(volume).await?;
            }
            Ok(IoData::Done)
        }
        BlockRequest::Flush => flush(volume).await.map(|()| IoData::Done),
        BlockRequest::CompareAndWrite {
            lba,
            verify,
            write: data,
            fua,
        } => {
            let _exclusive = gate.0.write().await;
            let offset = bytes(*lba)?;
            let current = read(volume, offset, verify.len() as u64).await?;
            if let Some(at) = current.iter().zip(verify.iter()).position(|(a, b)| a != b) {
                return Err(IoError::Miscompare {
                    offset_bytes: at as u64,
                });
            }
            write(volume, offset, data, *fua).await
        }
        BlockRequest::LbaStatus { lba, .. } => {
            let total = volume.size_bytes() / bs;
            let blocks = total.saturating_sub(*lba);
            Ok(IoData::LbaStatus(vec![LbaStatusExtent {
                extent: Extent { lba: *lba, blocks },
                status: Provisioning::Mapped,
            }]))
        }
    }
}

/// The sense condition of a volume error (docs/architecture.md, invariant
/// 3: below quorum, DATA PROTECT / WRITE PROTECTED; docs/failure-behaviour.md,
/// "Replicas run out of space": a volume that cannot allocate is write
/// protected too, DATA PROTECT, never MEDIUM ERROR: nothing is wrong with
/// the data that is there). A block no replica holds a good copy of is
/// MEDIUM ERROR, UNRECOVERED READ ERROR (docs/failure-behaviour.md, "A
/// block goes bad").
pub fn map_error(err: VolumeError) -> IoError {
    match err {
        VolumeError::OutOfRange => IoError::LbaOutOfRange,
        VolumeError::ReadOnly { .. } => IoError::WriteProtected,
        VolumeError::NoSpace => IoError::SpaceAllocationFailed,
        VolumeError::Unavailable | VolumeError::Fenced => IoError::NotReady,
        VolumeError::Refused(_) => IoError::Internal,
        // No replica holds a good copy (controller rule 7): MEDIUM ERROR,
        // UNRECOVERED READ ERROR, never the bad bytes.
        VolumeError::Unrecoverable { .. } => IoError::ReadError,
    }
}

async fn read<V: BlockVolume>(volume: &V, offset: u64, len: u64) -> Result<Bytes, IoError> {
    let Some(end) = offset.checked_add(len) else {
        return Err(IoError::LbaOutOfRange);
    };
    if len <= u64::from(MAX_IO_BYTES) {
        return read_piece(volume, offset, len).await;
    }
    let mut out =
        BytesMut::with_capacity(usize::try_from(len).map_err(|_| IoError::LbaOutOfRange)?);
    let mut at = offset;
    while at < end {
        let piece = (end - at).min(u64::from(MAX_IO_BYTES));
        out.extend_from_slice(&read_piece(volume, at, piece).await?);
        at += piece;
    }
    Ok(out.freeze())
}

async fn read_piece<V: BlockVolume>(volume: &V, offset: u64, len: u64) -> Result<Bytes, IoError> {
    let len_bytes = u32::try_from(len).map_err(|_| IoError::LbaOutOfRange)?;
    match volume.submit(Op::Read { offset, len_bytes }).await {
        Ok(Completion::Data(data)) if data.len() as u64 == len => Ok(data),
        Ok(_) => Err(IoError::Internal),
        Err(e) => Err(map_error(e)),
    }
}

async fn write<V: BlockVolume>(volume: &V, offset: u64, data: &Bytes, fua: bool) -> IoResult {
    let max = MAX_IO_BYTES as usize;
    let mut at = 0usize;
    while at < data.len() {
        let end = (at + max).min(data.len());
        let op = Op::Write {
            offset: offset + at as u64,
            data: data.slice(at..end),
            fua,
        };
        submit(volume, op).await?;
        at = end;
    }
    Ok(IoData::Done)
}

async fn write_repeated<V: BlockVolume>(
    volume: &V,
    offset: u64,
    len: u64,
    block: &Bytes,
) -> Result<(), IoError> {
    if block.is_empty() {
        return Err(IoError::Internal);
    }
    let per_piece = (MAX_IO_BYTES as usize / block.len()).max(1) * block.len();
    let mut at = 0u64;
    while at < len {
        let piece = (len - at).min(per_piece as u64) as usize;
        let mut buf = BytesMut::with_capacity(piece);
        while buf.len() < piece {
            buf.extend_from_slice(block);
        }
        buf.truncate(piece);
        submit(
            volume,
            Op::Write {
                offset: offset + at,
                data: buf.freeze(),
                fua: false,
            },
        )
        .await?;
        at += piece as u64;
    }
    Ok(())
}

async fn extents<V: BlockVolume>(
    volume: &V,
    offset: u64,
    len: u64,
    op: impl Fn(u64, u32) -> Op,
) -> Result<(), IoError> {
    let end = offset.checked_add(len).ok_or(IoError::LbaOutOfRange)?;
    let mut at = offset;
    while at < end {
        let piece = (end - at).min(MAX_EXTENT_BYTES);
        let len_bytes = u32::try_from(piece).map_err(|_| IoError::LbaOutOfRange)?;
        submit(volume, op(at, len_bytes)).await?;
        at += piece;
    }
    Ok(())
}

async fn flush<V: BlockVolume>(volume: &V) -> Result<(), IoError> {
    submit(volume, Op::Flush).await
}

async fn submit<V: BlockVolume>(volume: &V, op: Op) -> Result<(), IoError> {
    volume.submit(op).await.map(|_| ()).map_err(map_error)
}
