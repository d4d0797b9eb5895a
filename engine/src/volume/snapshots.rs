//! Snapshots and clones of a volume: create, delete and list snapshots
//! (metadata only), and clone a snapshot into a new volume that shares
//! its chunks copy-on-write.

use std::sync::Arc;

use super::Volume;
use crate::error::{no_space, not_found, Result};
use crate::meta::record::Record;
use crate::pool::{random_u128, VolRuntime};

/// A snapshot as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// Highest io_seq written before it was taken.
    pub io_seq: u64,
    /// Volume size when taken.
    pub size_bytes: u64,
}

impl Volume {
    /// Takes a snapshot (metadata only, O(1) in the volume's size); it holds
    /// every write completed before the call. Durable when this returns.
    pub async fn create_snapshot(&self, name: &str) -> Result<()> {
        let _s = self.pool.structure.write().await;
        self.usable()?;
        {
            let mut m = self.pool.meta.lock();
            let v = m
                .state
                .volumes
                .get(&self.id)
                .cloned()
                .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
            if v.thick {
                // The new live layer reserves again what the old one owned.
                let owned = m.state.layers.get(&v.live).map_or(0, |l| l.map.data_len());
                if m.state.available_chunks() < owned {
                    return Err(no_space(format!(
                        "snapshot of thick volume {} needs {owned} free chunks",
                        self.name
                    )));
                }
            }
            self.pool.admit(&m.state, 0, 1)?;
            let written = m.vols.get(&self.id).map_or(0, |r| r.written_io_seq);
            let id = m.state.take_id();
            let new_layer = m.state.take_id();
            m.record(Record::CreateSnapshot {
                volume: self.id,
                id,
                new_layer,
                name: name.to_owned(),
                io_seq: v.max_io_seq.max(written),
            })?;
        }
        self.pool.flush_all().await
    }

    /// Deletes a snapshot, freeing the chunks no one else references.
    pub async fn delete_snapshot(&self, name: &str) -> Result<()> {
        let _s = self.pool.structure.write().await;
        self.usable()?;
        {
            let mut m = self.pool.meta.lock();
            let id = m
                .state
                .snapshot_by_name(self.id, name)
                .map(|s| s.id)
                .ok_or_else(|| not_found(format!("snapshot {name}")))?;
            m.record(Record::DeleteSnapshot { id })?;
        }
        self.pool.flush_all().await
    }

    /// Snapshots, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let m = self.pool.meta.lock();
        if !m.state.volumes.contains_key(&self.id) {
            return Err(not_found(format!("volume {}", self.name)));
        }
        Ok(m.state
            .snapshots
            .values()
            .filter(|s| s.volume == self.id)
            .map(|s| SnapshotInfo {
                name: s.name.clone(),
                io_seq: s.io_seq,
                size_bytes: s.size_bytes,
            })
            .collect::<Vec<_>>())
        .map(|mut all| {
            // Ids give creation order here; a rebuilt snapshot may be
            // inserted after newer ones, so order by io_seq (stable).
            all.sort_by_key(|s| s.io_seq);
            all
        })
    }

    /// Clones a snapshot into a new thin, writable volume (metadata only).
    pub async fn clone_snapshot(&self, snapshot: &str, new_name: &str) -> Result<Arc<Volume>> {
        let _s = self.pool.structure.write().await;
        self.usable()?;
        let (id, block) = {
            let mut m = self.pool.meta.lock();
            let s = m
                .state
                .snapshot_by_name(self.id, snapshot)
                .cloned()
                .ok_or_else(|| not_found(format!("snapshot {snapshot}")))?;
            self.pool.admit(&m.state, 0, 1)?;
            let id = m.state.take_id();
            let layer = m.state.take_id();
            m.record(Record::CreateVolume {
                id,
                layer,
                parent: Some(s.layer),
                name: new_name.to_owned(),
                size_bytes: s.size_bytes,
                block_bytes: self.block_bytes,
                thick: false,
                replica_id: random_u128(),
                io_seq: s.io_seq,
            })?;
            m.vols.insert(
                id,
                VolRuntime {
                    durable_io_seq: s.io_seq,
                    written_io_seq: s.io_seq,
                    ..VolRuntime::default()
                },
            );
            (id, self.block_bytes)
        };
        self.pool.flush_all().await?;
        Ok(Arc::new(Volume::new(
            self.pool.clone(),
            id,
            new_name.to_owned(),
            block,
        )))
    }
}
