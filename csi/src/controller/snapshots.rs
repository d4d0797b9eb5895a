//! CreateSnapshot, DeleteSnapshot, ListSnapshots (CSI spec §CreateSnapshot
//! ... §ListSnapshots). Snapshots are taken and destroyed by the volume's
//! target, at quorum (invariant 4): a CreateSnapshot that returns holds
//! every write acknowledged before it, so it is `ready_to_use` at once.
//! Listed snapshots are ready when a majority of the volume's replicas
//! hold them.

use std::collections::BTreeMap;

use cstor_mgmt::v1::{
    CreateSnapshotRequest as TargetCreateSnapshot, DeleteSnapshotRequest as TargetDeleteSnapshot,
    ListVolumesRequest as ReplicaListVolumes,
};
use prost_types::Timestamp;
use tonic::Status;

use super::{invalid, Controller, VolumeView};
use crate::limits::MGMT_QUORUM_CALL_TIMEOUT;
use crate::mgmt;
use crate::naming::{check_csi_name, check_volume_id, is_internal_snapshot, SnapshotId};
use crate::paging;
use crate::params::majority;
use crate::pb::csi::v1 as csi;
use crate::runtime::TargetRuntime;

/// One snapshot as the replicas hold it.
struct Found {
    id: SnapshotId,
    /// Replicas holding it, of `replicas`.
    holders: usize,
    replicas: usize,
    size_bytes: u64,
    created_unix_seconds: u64,
}

impl Found {
    fn message(&self) -> csi::Snapshot {
        let ready = u32::try_from(self.holders).unwrap_or(u32::MAX)
            >= majority(u32::try_from(self.replicas).unwrap_or(u32::MAX));
        csi::Snapshot {
            size_bytes: i64::try_from(self.size_bytes).unwrap_or(i64::MAX),
            snapshot_id: self.id.to_id(),
            source_volume_id: self.id.volume.clone(),
            creation_time: Some(Timestamp {
                seconds: i64::try_from(self.created_unix_seconds).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            ready_to_use: ready,
            group_snapshot_id: String::new(),
        }
    }
}

fn now_unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<R: TargetRuntime> Controller<R> {
    /// The CSI snapshots of a volume, by replica snapshot name.
    async fn snapshots_of(&self, view: &VolumeView) -> Result<BTreeMap<String, Found>, Status> {
        let mut found: BTreeMap<String, Found> = BTreeMap::new();
        for held in &view.held {
            for s in self.replica_snapshots(held.pool, &view.id).await? {
                if is_internal_snapshot(&s.name) {
                    continue;
                }
                let entry = found.entry(s.name.clone()).or_insert_with(|| Found {
                    id: SnapshotId {
                        volume: view.id.clone(),
                        snapshot: s.name.clone(),
                    },
                    holders: 0,
                    replicas: view.held.len(),
                    size_bytes: view.size(),
                    created_unix_seconds: s.created_unix_seconds,
                });
                entry.holders += 1;
                entry.created_unix_seconds = entry.created_unix_seconds.max(s.created_unix_seconds);
            }
        }
        Ok(found)
    }

    /// Every volume on the pools (by id, in id order), each with its
    /// replicas; a pool that does not answer is left out (and logged).
    pub(super) async fn all_volumes(&self) -> Vec<VolumeView> {
        let answers = mgmt::on_every_pool(&self.mgmt, &self.pools, |clients, pool| async move {
            let mut client = clients.replica(pool.mgmt).await?;
            mgmt::call(
                &format!("replica daemon {}", pool.mgmt),
                mgmt::CALL,
                client.list_volumes(ReplicaListVolumes {}),
            )
            .await
        })
        .await;
        let mut volumes: BTreeMap<String, VolumeView> = BTreeMap::new();
        for (pool, answer) in answers.into_iter().enumerate() {
            let listed = match answer {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(error = %e, "pool left out of the volume listing");
                    continue;
                }
            };
            for replica in listed.volumes {
                if check_volume_id(&replica.name).is_err() {
                    continue;
                }
                volumes
                    .entry(replica.name.clone())
                    .or_insert_with(|| VolumeView {
                        id: replica.name.clone(),
                        ..VolumeView::default()
                    })
                    .held
                    .push(super::Held { pool, replica });
            }
        }
        volumes.into_values().collect()
    }

    pub(super) async fn do_create_snapshot(
        &self,
        req: csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse, Status> {
        check_csi_name("snapshot name", &req.name).map_err(invalid)?;
        if req.source_volume_id.is_empty() {
            return Err(Status::invalid_argument("source_volume_id is empty"));
        }
        // Keys under csi.storage.k8s.io/ are the snapshotter's metadata.
        if let Some(key) = req
            .parameters
            .keys()
            .find(|k| !k.starts_with("csi.storage.k8s.io/"))
        {
            return Err(Status::invalid_argument(format!(
                "unknown snapshot parameter {key:?}"
            )));
        }
        let source = &req.source_volume_id;
        if check_volume_id(source).is_err() {
            return Err(Status::not_found(format!("volume {source} does not exist")));
        }
        let id = SnapshotId::new(source, &req.name);
        let _busy = self.busy(source)?;
        let view = self.find_volume(source).await;
        if !view.exists() {
            return Err(Status::not_found(format!("volume {source} does not exist")));
        }
        // Snapshot names are unique across volumes (the CO's contract).
        for other in self.all_volumes().await {
            if other.id == view.id {
                continue;
            }
            if self.snapshots_of(&other).await?.contains_key(&id.snapshot) {
                return Err(Status::already_exists(format!(
                    "snapshot {} exists for volume {}",
                    req.name, other.id
                )));
            }
        }
        if let Some(found) = self.snapshots_of(&view).await?.get(&id.snapshot) {
            return Ok(csi::CreateSnapshotResponse {
                snapshot: Some(found.message()),
            });
        }
        let endpoint = self.target_of(&view).await?;
        let mut client = self.mgmt.target(&endpoint.mgmt).await?;
        mgmt::call(
            &format!("target {}", endpoint.mgmt),
            MGMT_QUORUM_CALL_TIMEOUT,
            client.create_snapshot(TargetCreateSnapshot {
                name: id.snapshot.clone(),
            }),
        )
        .await?;
        tracing::info!(snapshot = %id.to_id(), name = %req.name, "snapshot taken at quorum");
        let taken = Found {
            id,
            holders: view.held.len(),
            replicas: view.held.len(),
            size_bytes: view.size(),
            created_unix_seconds: now_unix_seconds(),
        };
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(taken.message()),
        })
    }

    pub(super) async fn do_delete_snapshot(
        &self,
        req: csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse, Status> {
        if req.snapshot_id.is_empty() {
            return Err(Status::invalid_argument("snapshot_id is empty"));
        }
        let Ok(id) = SnapshotId::parse(&req.snapshot_id) else {
            // Not one of ours, so it does not exist: deleted.
            return Ok(csi::DeleteSnapshotResponse {});
        };
        let _busy = self.busy(&id.volume)?;
        let view = self.find_volume(&id.volume).await;
        if !view.exists() || self.snapshot_holders(&view, &id.snapshot).await?.is_empty() {
            return Ok(csi::DeleteSnapshotResponse {});
        }
        let endpoint = self.target_of(&view).await?;
        let mut client = self.mgmt.target(&endpoint.mgmt).await?;
        mgmt::call(
            &format!("target {}", endpoint.mgmt),
            MGMT_QUORUM_CALL_TIMEOUT,
            client.delete_snapshot(TargetDeleteSnapshot {
                name: id.snapshot.clone(),
            }),
        )
        .await?;
        tracing::info!(snapshot = %id.to_id(), "snapshot deleted");
        Ok(csi::DeleteSnapshotResponse {})
    }

    pub(super) async fn do_list_snapshots(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, Status> {
        if req.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries is negative"));
        }
        paging::parse_token(&req.starting_token).map_err(|e| Status::aborted(e.to_string()))?;
        let wanted = if req.snapshot_id.is_empty() {
            None
        } else {
            match SnapshotId::parse(&req.snapshot_id) {
                Ok(id) => Some(id),
                Err(_) => return Ok(csi::ListSnapshotsResponse::default()),
            }
        };
        if !req.source_volume_id.is_empty() && check_volume_id(&req.source_volume_id).is_err() {
            return Ok(csi::ListSnapshotsResponse::default());
        }
        let volume_filter = wanted
            .as_ref()
            .map(|w| w.volume.clone())
            .or_else(|| (!req.source_volume_id.is_empty()).then(|| req.source_volume_id.clone()));
        if let (Some(w), false) = (&wanted, req.source_volume_id.is_empty()) {
            if w.volume != req.source_volume_id {
                return Ok(csi::ListSnapshotsResponse::default());
            }
        }
        let volumes = match &volume_filter {
            Some(v) => vec![self.find_volume(v).await],
            None => self.all_volumes().await,
        };
        let mut all = Vec::new();
        for view in volumes.iter().filter(|v| v.exists()) {
            for (_, found) in self.snapshots_of(view).await? {
                if wanted.as_ref().is_none_or(|w| *w == found.id) {
                    all.push((found.id.to_id(), found));
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let (page, next_token) = paging::page(
            all,
            |(key, _)| key.as_str(),
            &req.starting_token,
            req.max_entries,
        )
        .map_err(|e| Status::aborted(e.to_string()))?;
        Ok(csi::ListSnapshotsResponse {
            entries: page
                .iter()
                .map(|(_, f)| csi::list_snapshots_response::Entry {
                    snapshot: Some(f.message()),
                })
                .collect(),
            next_token,
        })
    }
}
