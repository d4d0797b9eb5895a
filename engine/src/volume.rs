//! A volume replica: a handle on one volume of a pool, and its parts:
//! block IO ([`io`]: read, write with the target's io_seq, write-zeroes,
//! unmap, flush, copy-on-write), snapshots and clones ([`snapshots`]),
//! rebuild support ([`rebuild`]), figures and the completion watermark
//! ([`stats`]), and the records kept for the owner ([`records`]: replica
//! id, epoch, attributes, membership).
//!
//! This module holds the handle and what every part shares: the checks of
//! a request against the volume (`usable`, `check_range`, `check_extent`)
//! and poisoning.

mod integrity;
mod io;
mod rebuild;
mod records;
mod snapshots;
mod stats;

use std::sync::Arc;

use crate::error::{invalid, not_found, Error, ErrorKind, Result};
use crate::limits::MAX_IO_BYTES;
use crate::meta::record::{LayerId, VolumeId};
use crate::pool::PoolInner;

pub use self::integrity::RangeDigest;
pub use self::rebuild::{ChangeKind, ChangesPage, ChunkChange};
pub use self::snapshots::SnapshotInfo;
pub use self::stats::VolumeStats;

/// A handle on one volume of a pool.
pub struct Volume {
    pool: Arc<PoolInner>,
    id: VolumeId,
    name: String,
    block_bytes: u32,
}

impl Volume {
    pub(crate) fn new(pool: Arc<PoolInner>, id: VolumeId, name: String, block_bytes: u32) -> Self {
        Self {
            pool,
            id,
            name,
            block_bytes,
        }
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Block size (512 or 4096).
    pub fn block_bytes(&self) -> u32 {
        self.block_bytes
    }

    /// The pool's chunk size: the unit of allocation, copy-on-write and
    /// the io_seq a rebuild compares.
    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.pool.chunk_bytes)
    }

    fn ctx(&self, what: &str, offset: u64) -> String {
        format!("{what} volume {} at {offset}", self.name)
    }

    /// The volume's live layer in `m` (the pool's metadata, locked).
    fn live_layer(&self, m: &crate::pool::Meta) -> Result<LayerId> {
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.live)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Checks the pool, the volume and its poison; returns (live layer, size).
    fn usable(&self) -> Result<(LayerId, u64)> {
        self.pool.check_usable()?;
        let m = self.pool.meta.lock();
        self.usable_locked(&m)
    }

    /// Validates a data transfer (read, write, rebuild): block-aligned, at
    /// most [`MAX_IO_BYTES`], inside the volume.
    fn check_range(&self, size: u64, offset: u64, len: u64) -> Result<()> {
        if len > MAX_IO_BYTES {
            return Err(invalid(format!("{len} bytes exceeds {MAX_IO_BYTES}")));
        }
        self.check_extent(size, offset, len)
    }

    /// Validates an extent that moves no data (unmap, write zeroes): any
    /// length, block-aligned, inside the volume.
    fn check_extent(&self, size: u64, offset: u64, len: u64) -> Result<()> {
        let block = u64::from(self.block_bytes);
        if !offset.is_multiple_of(block) || !len.is_multiple_of(block) {
            return Err(invalid(format!(
                "{}: {len} bytes not aligned to {block}-byte blocks",
                self.ctx("IO on", offset)
            )));
        }
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::new(
                ErrorKind::OutOfRange,
                format!(
                    "{} + {len} passes the size {size}",
                    self.ctx("IO on", offset)
                ),
            )),
        }
    }

    fn poison(&self, why: String) -> Error {
        tracing::error!(volume = %self.name, reason = %why, "volume poisoned");
        let mut m = self.pool.meta.lock();
        if let Some(rt) = m.vols.get_mut(&self.id) {
            if rt.poisoned.is_none() {
                rt.poisoned = Some(why.clone());
            }
        }
        Error::new(ErrorKind::Poisoned, format!("volume {}: {why}", self.name))
    }
}
