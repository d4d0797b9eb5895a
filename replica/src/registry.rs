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
//!   no IO;
//! - an epoch above [`MAX_EPOCH`] (i.e. `u64::MAX`) is refused
//!   (`Exhausted`) and nothing is persisted: no later target could ever
//!   claim above it, so accepting it would end fencing for the volume.
//!
//! Deleting (`Registry::forget_unless_in_use`): a volume replica is in use
//! while a live session holds a claim on it (or a claim is under way), or
//! while it holds a membership record naming members (generation above 0):
//! it is part of a replica set, and deleting it would take a copy of the
//! data away from its target. Unless forced, such a delete is refused.
//!
//! Membership (`VolumeEntry::store_membership`): the volume's membership
//! record is kept for the target, which owns its meaning
//! (`cstor_target::volume::membership`). Here only its order is enforced:
//! a record replaces the one held only with a higher generation; the same
//! record again is accepted (a resent request), another record of the same
//! or a lower generation is refused (`Conflict`), so a generation once
//! stored names one record forever.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cstor_engine::{ErrorKind, Pool, Volume};
use cstor_proto::Membership;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::limits::MAX_EPOCH;
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
    #[error(
        "epoch {epoch} is above the highest claimable epoch {max} for volume {volume}: \
         the epoch space is exhausted (no successor could fence it)",
        max = MAX_EPOCH
    )]
    Exhausted { volume: String, epoch: u64 },
    #[error(transparent)]
    Engine(#[from] cstor_engine::Error),
}

/// Why a volume replica may not be deleted without force (see the module
/// doc).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InUse {
    #[error("volume {volume} has a live target session (epoch {epoch}): stop its target first")]
    Session { volume: String, epoch: u64 },
    #[error("a target session is claiming volume {volume}: stop its target first")]
    Claiming { volume: String },
    #[error(
        "volume {volume} is a member of a replica set (membership generation {generation}, \
         {members} members): remove it from the set first"
    )]
    Member {
        volume: String,
        generation: u64,
        members: usize,
    },
}

/// Why a delete did not go ahead.
#[derive(Debug, thiserror::Error)]
pub enum DeleteRefused {
    #[error(transparent)]
    InUse(#[from] InUse),
    #[error(transparent)]
    Engine(#[from] cstor_engine::Error),
}

/// The volumes the daemon's sessions have opened (by name: [`Registry::cut_all`]
/// cuts them in name order, the same every run).
pub struct Registry {
    pool: Arc<Pool>,
    volumes: Mutex<BTreeMap<String, Arc<VolumeEntry>>>,
    /// Volumes being deleted (how many deletes of each are under way).
    deleting: Mutex<BTreeMap<String, usize>>,
    next_conn_id: AtomicU64,
    rebuild_settings: Arc<RebuildSettings>,
    metrics: ReplicaMetrics,
}

impl Registry {
    pub fn new(pool: Arc<Pool>) -> Self {
        Self {
            pool,
            volumes: Mutex::new(BTreeMap::new()),
            deleting: Mutex::new(BTreeMap::new()),
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

    /// The entry of a volume, opening it on first use; a volume being
    /// deleted is not found.
    pub fn entry(&self, name: &str) -> Result<Arc<VolumeEntry>, cstor_engine::Error> {
        let mut volumes = self.volumes.lock();
        if let Some(entry) = volumes.get(name) {
            return Ok(Arc::clone(entry));
        }
        if self.deleting.lock().contains_key(name) {
            return Err(being_deleted(name));
        }
        let volume = self.pool.volume(name)?;
        let durable = volume.last_durable_io_seq()?;
        let entry = Arc::new(VolumeEntry {
            name: name.to_owned(),
            pool: Arc::clone(&self.pool),
            volume,
            order: IoOrder::starting_at(durable),
            owner: Mutex::new(None),
            claim_lock: tokio::sync::Mutex::new(()),
            forgotten: AtomicBool::new(false),
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

    /// Marks `name` as being deleted and forgets it, unless it is in use
    /// (module doc) and `force` is not set: then nothing changes. A volume
    /// that does not exist is not in use. Forgetting cuts the volume's
    /// owner and its rebuild; a claim under way fails, and no session opens
    /// the volume again until the returned mark is dropped (after the
    /// delete). The check and the forgetting are one step under the
    /// registry's lock, so no session can open the volume between them.
    pub fn forget_unless_in_use(
        &self,
        name: &str,
        force: bool,
    ) -> Result<Deleting<'_>, DeleteRefused> {
        let mut volumes = self.volumes.lock();
        if !force {
            in_use(&self.pool, name, volumes.get(name))?;
        }
        *self.deleting.lock().entry(name.to_owned()).or_insert(0) += 1;
        let mark = Deleting {
            registry: self,
            name: name.to_owned(),
        };
        if let Some(entry) = volumes.remove(name) {
            entry.forgotten.store(true, Ordering::SeqCst);
            entry.cut_owner();
            entry.rebuild.cancel();
        }
        drop(volumes);
        self.metrics.forget(name);
        Ok(mark)
    }

    /// Cuts every session and rebuild (shutdown).
    pub fn cut_all(&self) {
        for entry in self.volumes.lock().values() {
            entry.cut_owner();
            entry.rebuild.cancel();
        }
    }
}

/// A volume being deleted: sessions cannot open it until this is dropped.
#[must_use = "the volume is only protected while the mark is held"]
pub struct Deleting<'a> {
    registry: &'a Registry,
    name: String,
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        let mut deleting = self.registry.deleting.lock();
        if let Some(count) = deleting.get_mut(&self.name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                deleting.remove(&self.name);
            }
        }
    }
}

/// Whether volume `name` (`entry`: its entry, if a session opened it) is in
/// use (module doc).
fn in_use(pool: &Pool, name: &str, entry: Option<&Arc<VolumeEntry>>) -> Result<(), DeleteRefused> {
    if let Some(entry) = entry {
        if let Some(epoch) = entry.owner_epoch() {
            return Err(InUse::Session {
                volume: name.to_owned(),
                epoch,
            }
            .into());
        }
        if entry.claim_lock.try_lock().is_err() {
            return Err(InUse::Claiming {
                volume: name.to_owned(),
            }
            .into());
        }
    }
    let membership = match entry {
        Some(entry) => entry.membership()?,
        None => match pool.volume(name) {
            Ok(volume) => membership_of(name, &volume)?,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        },
    };
    if membership.generation > 0 && !membership.members.is_empty() {
        return Err(InUse::Member {
            volume: name.to_owned(),
            generation: membership.generation,
            members: membership.members.len(),
        }
        .into());
    }
    Ok(())
}

fn being_deleted(name: &str) -> cstor_engine::Error {
    cstor_engine::Error::new(
        ErrorKind::NotFound,
        format!("volume {name} is being deleted"),
    )
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
    /// Set (before the owner is cut) when the volume is being deleted: a
    /// claim then fails instead of owning a volume about to go.
    forgotten: AtomicBool,
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
        if epoch > MAX_EPOCH {
            return Err(ClaimError::Exhausted {
                volume: self.name.clone(),
                epoch,
            });
        }
        let _claiming = self.claim_lock.lock().await;
        if self.forgotten.load(Ordering::SeqCst) {
            return Err(being_deleted(&self.name).into());
        }
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
        let previous = {
            let mut owner = self.owner.lock();
            // Checked under the owner's lock, which the delete takes after
            // setting the flag: either this sees the flag, or the delete
            // cuts the owner set here.
            if self.forgotten.load(Ordering::SeqCst) {
                return Err(being_deleted(&self.name).into());
            }
            owner.replace(Owner {
                epoch,
                conn_id,
                cancel: cancel.clone(),
            })
        };
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

    /// The epoch of the live session attached, if any.
    pub fn owner_epoch(&self) -> Option<u64> {
        self.owner
            .lock()
            .as_ref()
            .filter(|o| !o.cancel.is_cancelled())
            .map(|o| o.epoch)
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
        membership_of(&self.name, &self.volume)
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

/// The membership record `volume` holds (generation 0: none).
fn membership_of(name: &str, volume: &Volume) -> Result<Membership, cstor_engine::Error> {
    Membership::from_bytes(&volume.membership()?).map_err(|e| {
        cstor_engine::Error::new(
            ErrorKind::Corrupt,
            format!("membership record of volume {name}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use cstor_engine::io::MemDevice;
    use cstor_engine::{DeviceRef, PoolOptions, Provisioning};
    use cstor_proto::Member;

    use super::*;

    async fn registry(volumes: &[&str]) -> Registry {
        let device: DeviceRef = Arc::new(MemDevice::new(64 << 20));
        let options = PoolOptions {
            commit_interval: None,
            ..PoolOptions::default()
        };
        let pool = Pool::create(vec![device], &options).await.unwrap();
        for name in volumes {
            pool.create_volume(name, 1 << 20, 4096, Provisioning::Thin)
                .await
                .unwrap();
        }
        Registry::new(Arc::new(pool))
    }

    #[tokio::test]
    async fn a_claim_of_the_last_epoch_is_refused_and_changes_nothing() {
        let registry = registry(&["v"]).await;
        let entry = registry.entry("v").unwrap();
        let owner = entry.claim(7, 1).await.unwrap();

        let refused = entry.claim(u64::MAX, 2).await;
        assert!(
            matches!(
                refused,
                Err(ClaimError::Exhausted {
                    epoch: u64::MAX,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(entry.volume.epoch().unwrap(), 7);
        assert!(entry.is_owner(1) && !owner.is_cancelled());

        // The highest claimable epoch is claimed; nothing can follow it.
        let last = entry.claim(MAX_EPOCH, 3).await.unwrap();
        assert!(owner.is_cancelled());
        assert!(matches!(
            entry.claim(u64::MAX, 4).await,
            Err(ClaimError::Exhausted { .. })
        ));
        assert_eq!(entry.volume.epoch().unwrap(), MAX_EPOCH);
        assert!(entry.is_owner(3) && !last.is_cancelled());
    }

    #[tokio::test]
    async fn a_volume_in_use_is_not_forgotten_unless_forced() {
        let registry = registry(&["live", "member", "idle"]).await;
        let live = registry.entry("live").unwrap();
        let owner = live.claim(1, 1).await.unwrap();
        assert!(matches!(
            registry.forget_unless_in_use("live", false),
            Err(DeleteRefused::InUse(InUse::Session { epoch: 1, .. }))
        ));
        assert!(registry.get("live").is_some() && live.is_owner(1));

        let record = Membership {
            generation: 2,
            consistency_factor: 1,
            members: vec![Member {
                replica_id: 0,
                address: "127.0.0.1:1".into(),
            }],
        };
        let member = registry.pool().volume("member").unwrap();
        member
            .set_membership(&record.to_bytes().unwrap())
            .await
            .unwrap();
        assert!(matches!(
            registry.forget_unless_in_use("member", false),
            Err(DeleteRefused::InUse(InUse::Member {
                generation: 2,
                members: 1,
                ..
            }))
        ));

        // Neither in use, or missing: forgotten.
        drop(registry.forget_unless_in_use("idle", false).unwrap());
        drop(registry.forget_unless_in_use("missing", false).unwrap());

        // Forced: the owner is cut, and the volume cannot be opened or
        // claimed while the delete is under way.
        let deleting = registry.forget_unless_in_use("live", true).unwrap();
        assert!(owner.is_cancelled() && !live.has_owner());
        assert!(registry.get("live").is_none());
        assert_eq!(
            registry.entry("live").err().map(|e| e.kind()),
            Some(ErrorKind::NotFound)
        );
        assert!(matches!(
            live.claim(2, 2).await,
            Err(ClaimError::Engine(e)) if e.kind() == ErrorKind::NotFound
        ));
        drop(deleting);
        assert!(registry.entry("live").is_ok());
        drop(registry.forget_unless_in_use("member", true).unwrap());
    }
}
