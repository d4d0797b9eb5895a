//! A volume's figures: size, durable io_seq, the owner's completion
//! watermark ([`Volume::set_complete_io_seq`]), and [`VolumeStats`].

use super::Volume;
use crate::error::{not_found, Result};
use crate::pool::Provisioning;

/// Figures of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStats {
    /// Logical size.
    pub size_bytes: u64,
    /// Block size.
    pub block_bytes: u32,
    /// Thin or thick.
    pub provisioning: Provisioning,
    /// Bytes of chunks the volume's live layer owns.
    pub allocated_bytes: u64,
    /// Snapshots of the volume.
    pub snapshots: usize,
    /// io_seq through which every write is durable (the highest written,
    /// or the owner's completion watermark: `Volume::set_complete_io_seq`).
    pub last_durable_io_seq: u64,
    /// Pool data space in use.
    pub pool_used_bytes: u64,
    /// Pool data space free.
    pub pool_free_bytes: u64,
}

impl Volume {
    /// Declares that every write to this volume with an io_seq at most
    /// `io_seq` that its owner will ever have completed has completed (the
    /// replica's arrival-order watermark). From the first call on, a commit
    /// records this watermark as the volume's durable io_seq instead of the
    /// highest io_seq written, so a write still running below a completed
    /// one is never claimed durable. It may go down: an owner that runs
    /// again a write it had completed (a target resends what it was not
    /// answered) holds older data there until the rerun is done, and says
    /// so (FORMAT.md "Durable io_seq is a completion watermark").
    pub fn set_complete_io_seq(&self, io_seq: u64) -> Result<()> {
        let mut m = self.pool.meta.lock();
        let rt = m
            .vols
            .get_mut(&self.id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        rt.watermarked = true;
        let v = m
            .state
            .volumes
            .get_mut(&self.id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        let lowered = io_seq < v.max_io_seq;
        v.max_io_seq = io_seq;
        if lowered {
            // A lower claim is a change the next flush must make durable
            // (a higher one rides on the data that raised it).
            m.change = m.change.saturating_add(1);
        }
        Ok(())
    }

    /// Highest io_seq recorded by a durable commit.
    pub fn last_durable_io_seq(&self) -> Result<u64> {
        let m = self.pool.meta.lock();
        m.vols
            .get(&self.id)
            .map(|r| r.durable_io_seq)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Logical size.
    pub fn size_bytes(&self) -> Result<u64> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.size_bytes)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Figures of the volume.
    pub fn stats(&self) -> Result<VolumeStats> {
        let m = self.pool.meta.lock();
        let v = m
            .state
            .volumes
            .get(&self.id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        let chunk = self.chunk_bytes();
        let owned = m.state.layers.get(&v.live).map_or(0, |l| l.map.data_len());
        let free = m.state.alloc.free_count();
        Ok(VolumeStats {
            size_bytes: v.size_bytes,
            block_bytes: v.block_bytes,
            provisioning: if v.thick {
                Provisioning::Thick
            } else {
                Provisioning::Thin
            },
            allocated_bytes: owned.saturating_mul(chunk),
            snapshots: m
                .state
                .snapshots
                .values()
                .filter(|s| s.volume == self.id)
                .count(),
            last_durable_io_seq: m.vols.get(&self.id).map_or(0, |r| r.durable_io_seq),
            pool_used_bytes: m
                .state
                .alloc
                .total()
                .saturating_sub(free)
                .saturating_mul(chunk),
            pool_free_bytes: free.saturating_mul(chunk),
        })
    }
}
