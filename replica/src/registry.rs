//! The daemon's volumes as sessions see them: each volume's admission order
//! and which session owns it (fencing: docs/architecture.md, invariant 5).
//!
//! Fencing rules, checked under a per-volume claim lock:
//! - a session claims a volume with the target's epoch; an epoch below the
//!   highest the volume replica has accepted (persisted by the engine) is
//!   refused (`Stale`);
//! - a higher epoch is persisted (durably) *before* the claim succeeds, then
//!   the previous owner is cut and every IO it had admitted is drained, so
//!   no write of an older target can land after the new one starts;
//! - the same epoch again is a reconnect of the current target: allowed
//!   only when no live session holds the volume (`Busy` otherwise), so two
//!   targets that picked the same epoch can never both write here;
//! - epoch 0 is a probe: it reads the state but claims nothing and may do
//!   no IO.
//!
//! Membership (`VolumeEntry::store_membership`): the volume's membership
//! record is kept for the target, which owns its meaning
//! (`cstor_target::volume::membership`). Here only its order is enforced:
//! a record replaces the one held only with a higher generation; the same
//! record again is accepted (a resent request), another record of the same
//! or a lower generation is refused (`Conflict`), so a generation once
//! stored names one record forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cstor_engine::{ErrorKind, Pool, Volume};
use cstor_proto::Membership;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::metrics::ReplicaMetrics;
use crate::ordering::{IoKind, IoOrder};
use crate::rebuild::state::{RebuildSettings, RebuildSlot};

/// Why a claim was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("epoch {epoch} is older than epoch {highest} already accepted for volume {volume}")]
    Stale {
        volume: String,
        epoch: u64,
        highest: u64,
    },
    #[error("volume {volume} is held by a live session of epoch {epoch}")]
    Busy { volume: String, epoch: u64 },
    #[error(transparent)]
    Engine(#[from] cstor_engine::Error),
}

/// The volumes the daemon's sessions have opened.
pub struct Registry {
    pool: Arc<Pool>,
    volumes: Mutex<HashMap<String, Arc<VolumeEntry>>>,
    next_conn_id: AtomicU64,
    rebuild_settings: Arc<RebuildSettings>,
    metrics: ReplicaMetrics,
}

impl Registry {
    pub fn new(pool: Arc<Pool>) -> Self {
        Self {
            pool,
            volumes: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
            rebuild_settings: Arc::new(RebuildSettings::default()),
            metrics: ReplicaMetrics::default(),
        }
    }

    /// IO counters of the daemon's volumes (Prometheus metrics).
    pub fn metrics(&self) -> &ReplicaMetrics {
        &self.metrics
    }

    /// The daemon-wide rebuild settings (throttle).
    pub fn rebuild_settings(&self) -> &Arc<RebuildSettings> {
        &self.rebuild_settings
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// A fresh id for a connection (logs, ownership).
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The entry of a volume, opening it on first use.
    pub fn entry(&self, name: &str) -> Result<Arc<VolumeEntry>, cstor_engine::Error> {
        let mut volumes = self.volumes.lock();
        if let Some(entry) = volumes.get(name) {
            return Ok(Arc::clone(entry));
        }
        let volume = self.pool.volume(name)?;
        let entry = Arc::new(VolumeEntry {
            name: name.to_owned(),
            pool: Arc::clone(&self.pool),
            volume,
            order: IoOrder::new(),
            owner: Mutex::new(None),
            claim_lock: tokio::sync::Mutex::new(()),
            last_received_io_seq: AtomicU64::new(0),
            rebuild: RebuildSlot::default(),
            rebuild_settings: Arc::clone(&self.rebuild_settings),
        });
        volumes.insert(name.to_owned(), Arc::clone(&entry));
        Ok(entry)
    }

    /// The entry of a volume if a session opened it.
    pub fn get(&self, name: &str) -> Option<Arc<VolumeEntry>> {
        self.volumes.lock().get(name).cloned()
    }

    /// Forgets a volume (before it is deleted): its owner and its rebuild
    /// are cut.
    pub fn forget(&self, name: &str) {
        if let Some(entry) = self.volumes.lock().remove(name) {
            entry.cut_owner();
            entry.rebuild.cancel();
        }
        self.metrics.forget(name);
    }

    /// Cuts every session and rebuild (shutdown).
    pub fn cut_all(&self) {
        for entry in self.volumes.lock().values() {
            entry.cut_owner();
            entry.rebuild.cancel();
        }
    }
}

/// One volume replica as the sessions share it.
pub struct VolumeEntry {
    pub name: String,
    pub pool: Arc<Pool>,
    pub volume: Arc<Volume>,
    /// Arrival order of every session's IO on this volume.
    pub order: IoOrder,
    owner: Mutex<Option<Owner>>,
    claim_lock: tokio::sync::Mutex<()>,
    /// Highest io_seq of a mutating request received (not necessarily
    /// durable); the target starts above it after a restart.
    last_received_io_seq: AtomicU64,
    /// The sink side of a rebuild of this volume replica.
    pub rebuild: RebuildSlot,
    /// The daemon's rebuild settings (shared by every volume).
    pub rebuild_settings: Arc<RebuildSettings>,
}

struct Owner {
    epoch: u64,
    conn_id: u64,
    cancel: CancellationToken,
}

impl VolumeEntry {
    /// Claims the volume for connection `conn_id` at `epoch` (see the
    /// module doc). The returned token is cancelled when a newer session
    /// takes the volume over.
    pub async fn claim(&self, epoch: u64, conn_id: u64) -> Result<CancellationToken, ClaimError> {
        let _claiming = self.claim_lock.lock().await;
        let highest = self.volume.epoch()?;
        if epoch < highest {
            return Err(ClaimError::Stale {
                volume: self.name.clone(),
                epoch,
                highest,
            });
        }
        if epoch == highest {
            if let Some(owner) = self.owner.lock().as_ref() {
                if !owner.cancel.is_cancelled() {
                    return Err(ClaimError::Busy {
                        volume: self.name.clone(),
                        epoch: owner.epoch,
                    });
                }
            }
        } else {
            // Durable before anyone is told: after a crash the replica still
            // refuses the older target.
            self.volume.set_epoch(epoch).await?;
        }
        let cancel = CancellationToken::new();
        let previous = self.owner.lock().replace(Owner {
            epoch,
            conn_id,
            cancel: cancel.clone(),
        });
        if let Some(previous) = previous {
            tracing::info!(
                volume = %self.name,
                old_epoch = previous.epoch,
                new_epoch = epoch,
                "a newer session took the volume over; cutting the old one"
            );
            previous.cancel.cancel();
        }
        // Every IO admitted before this point (the old owner's) finishes
        // before the new owner's first IO is admitted.
        let mut drain = self.order.admit(IoKind::Barrier);
        drain.ready().await;
        Ok(cancel)
    }

    /// Does connection `conn_id` own the volume right now?
    pub fn is_owner(&self, conn_id: u64) -> bool {
        self.owner
            .lock()
            .as_ref()
            .is_some_and(|o| o.conn_id == conn_id && !o.cancel.is_cancelled())
    }

    /// Is any live session attached?
    pub fn has_owner(&self) -> bool {
        self.owner
            .lock()
            .as_ref()
            .is_some_and(|o| !o.cancel.is_cancelled())
    }

    /// Called when connection `conn_id` ends: frees the volume if it owned it.
    pub fn release(&self, conn_id: u64) {
        let mut owner = self.owner.lock();
        if owner.as_ref().is_some_and(|o| o.conn_id == conn_id) {
            if let Some(o) = owner.take() {
                o.cancel.cancel();
            }
        }
    }

    fn cut_owner(&self) {
        if let Some(o) = self.owner.lock().take() {
            o.cancel.cancel();
        }
    }

    /// The membership record held (generation 0: none).
    pub fn membership(&self) -> Result<Membership, cstor_engine::Error> {
        Membership::from_bytes(&self.volume.membership()?).map_err(|e| {
            cstor_engine::Error::new(
                ErrorKind::Corrupt,
                format!("membership record of volume {}: {e}", self.name),
            )
        })
    }

    /// Persists `record` (durable when this returns) if its generation is
    /// above the one held; see the module doc. Callers run it as a barrier
    /// of the owning session, so two stores never race.
    pub async fn store_membership(&self, record: &Membership) -> Result<(), cstor_engine::Error> {
        let held = self.membership()?;
        if record.generation <= held.generation {
            if *record == held {
                return Ok(());
            }
            return Err(cstor_engine::Error::new(
                ErrorKind::Conflict,
                format!(
                    "membership generation {} of volume {} is not above the {} held",
                    record.generation, self.name, held.generation
                ),
            ));
        }
        let bytes = record.to_bytes().map_err(|e| {
            cstor_engine::Error::new(
                ErrorKind::InvalidArgument,
                format!("membership record: {e}"),
            )
        })?;
        self.volume.set_membership(&bytes).await?;
        tracing::info!(
            volume = %self.name,
            generation = record.generation,
            members = record.members.len(),
            cf = record.consistency_factor,
            "membership record stored"
        );
        Ok(())
    }

    pub fn note_received(&self, io_seq: u64) {
        self.last_received_io_seq
            .fetch_max(io_seq, Ordering::Relaxed);
    }

    /// Highest io_seq received: of this process's sessions, or durable
    /// from before, whichever is higher.
    pub fn last_received_io_seq(&self) -> u64 {
        let durable = self.volume.last_durable_io_seq().unwrap_or(0);
        self.last_received_io_seq
            .load(Ordering::Relaxed)
            .max(durable)
    }
}
