//! The records a volume keeps for its owner: its stable replica id, the
//! highest epoch accepted (fencing), the opaque attributes and the
//! membership record; each set is durable when it returns.

use super::Volume;
use crate::error::{invalid, not_found, Error, ErrorKind, Result};
use crate::limits::{MAX_ATTRS_BYTES, MAX_MEMBERSHIP_BYTES};
use crate::meta::record::Record;

impl Volume {
    /// Stable random replica id, generated at volume creation.
    pub fn replica_id(&self) -> Result<u128> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.replica_id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Highest target epoch accepted.
    pub fn epoch(&self) -> Result<u64> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.epoch)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Records a target epoch; durable when this returns. An epoch below
    /// the recorded one is refused with [`ErrorKind::Conflict`].
    pub async fn set_epoch(&self, epoch: u64) -> Result<()> {
        self.usable()?;
        {
            let mut m = self.pool.meta.lock();
            let cur = m.state.volumes.get(&self.id).map_or(0, |v| v.epoch);
            if epoch < cur {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("epoch {epoch} is older than {cur} on volume {}", self.name),
                ));
            }
            m.record(Record::SetEpoch {
                volume: self.id,
                epoch,
            })?;
        }
        self.pool.flush_all().await
    }

    /// The opaque attribute blob.
    pub fn attrs(&self) -> Result<Vec<u8>> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.attrs.clone())
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// The opaque membership record (empty: none was ever set).
    pub fn membership(&self) -> Result<Vec<u8>> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.membership.clone())
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Replaces the membership record (≤ `MAX_MEMBERSHIP_BYTES`); durable
    /// when this returns. The engine does not interpret it: the replica
    /// daemon keeps the target's replica set of the volume there.
    pub async fn set_membership(&self, membership: &[u8]) -> Result<()> {
        if membership.len() > MAX_MEMBERSHIP_BYTES {
            return Err(invalid(format!("membership of {} bytes", membership.len())));
        }
        self.usable()?;
        self.pool.meta.lock().record(Record::SetMembership {
            volume: self.id,
            membership: membership.to_vec(),
        })?;
        self.pool.flush_all().await
    }

    /// Replaces the attribute blob (≤ `MAX_ATTRS_BYTES`); durable when this
    /// returns.
    pub async fn set_attrs(&self, attrs: &[u8]) -> Result<()> {
        if attrs.len() > MAX_ATTRS_BYTES {
            return Err(invalid(format!("attrs of {} bytes", attrs.len())));
        }
        self.usable()?;
        self.pool.meta.lock().record(Record::SetAttrs {
            volume: self.id,
            attrs: attrs.to_vec(),
        })?;
        self.pool.flush_all().await
    }
}
