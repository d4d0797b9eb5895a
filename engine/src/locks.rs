//! Per-chunk IO locks, striped: every IO on a volume's logical chunk holds
//! the stripe of (volume, chunk) — reads shared, writes / unmaps / rebuild
//! writes exclusive — for its lookup, device IO and map update. This is what
//! serializes concurrent writes to a chunk being allocated or copied (COW),
//! keeps a read from seeing a half-copied chunk, and keeps a chunk from
//! being freed and reused under a read of it. Stripes are never held across
//! more than one chunk at a time, so they cannot deadlock.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::limits::IO_LOCK_STRIPES;

/// The stripe table.
pub struct ChunkLocks {
    stripes: Vec<RwLock<()>>,
    // Only reachable if `stripes` were empty, which `new` never makes.
    fallback: RwLock<()>,
}

impl Default for ChunkLocks {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkLocks {
    /// [`IO_LOCK_STRIPES`] stripes.
    pub fn new() -> Self {
        Self {
            stripes: (0..IO_LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            fallback: RwLock::new(()),
        }
    }

    fn stripe(&self, volume: u64, chunk: u64) -> &RwLock<()> {
        // Fibonacci hashing spreads neighbouring chunks over stripes.
        let h = (volume.rotate_left(32) ^ chunk).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let n = self.stripes.len().max(1);
        let i = usize::try_from(h >> 32).unwrap_or(0) % n;
        self.stripes.get(i).unwrap_or(&self.fallback)
    }

    /// Shared hold on (volume, chunk).
    pub async fn shared(&self, volume: u64, chunk: u64) -> RwLockReadGuard<'_, ()> {
        self.stripe(volume, chunk).read().await
    }

    /// Exclusive hold on (volume, chunk).
    pub async fn exclusive(&self, volume: u64, chunk: u64) -> RwLockWriteGuard<'_, ()> {
        self.stripe(volume, chunk).write().await
    }
}
