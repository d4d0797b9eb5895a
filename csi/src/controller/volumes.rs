//! CreateVolume (fresh, from a snapshot, from a volume), DeleteVolume,
//! ControllerExpandVolume, ControllerGetVolume, ListVolumes, GetCapacity
//! and ValidateVolumeCapabilities (CSI spec §CreateVolume ... §GetCapacity).

use std::collections::HashMap;

use cstor_mgmt::v1::{
    CreateSnapshotRequest as TargetCreateSnapshot, CreateVolumeRequest as ReplicaCreate,
    DeleteSnapshotRequest as TargetDeleteSnapshot, DeleteVolumeRequest as ReplicaDelete,
    GrowVolumeRequest, Pool, Provisioning as ReplicaProv, ResizeRequest,
};
use tonic::{Code, Status};

use super::{granularity, invalid, runtime_status, Controller, VolumeView};
use crate::capacity::{self, Candidate, CapacityError, Range};
use crate::caps;
use crate::context;
use crate::limits::{BLOCK_BYTES, MGMT_QUORUM_CALL_TIMEOUT};
use crate::mgmt;
use crate::naming::{
    check_csi_name, check_volume_id, internal_snapshot, is_internal_snapshot, node_of_initiator,
    volume_id, SnapshotId,
};
use crate::paging;
use crate::params::{Provisioning, VolumeParams};
use crate::pb::csi::v1 as csi;
use crate::pb::csi::v1::volume_content_source::{SnapshotSource, Type as Source, VolumeSource};
use crate::runtime::{TargetRuntime, TargetSpec};

fn capacity_status(e: CapacityError) -> Status {
    match e {
        CapacityError::Negative => Status::invalid_argument(e.to_string()),
        CapacityError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
    }
}

fn to_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn replica_provisioning(p: Provisioning) -> ReplicaProv {
    match p {
        Provisioning::Thin => ReplicaProv::Thin,
        Provisioning::Thick => ReplicaProv::Thick,
    }
}

fn range_of(range: Option<&csi::CapacityRange>) -> Result<Range, Status> {
    range.map_or(Ok(Range::default()), |r| {
        Range::new(r.required_bytes, r.limit_bytes).map_err(capacity_status)
    })
}

impl<R: TargetRuntime> Controller<R> {
    pub(super) async fn do_create_volume(
        &self,
        req: csi::CreateVolumeRequest,
    ) -> Result<csi::CreateVolumeResponse, Status> {
        check_csi_name("volume name", &req.name).map_err(invalid)?;
        caps::check_all(&req.volume_capabilities).map_err(Status::invalid_argument)?;
        let params = VolumeParams::parse(&req.parameters).map_err(invalid)?;
        if !req.mutable_parameters.is_empty() {
            return Err(Status::invalid_argument(
                "mutable parameters are not supported (no MODIFY_VOLUME capability)",
            ));
        }
        let range = range_of(req.capacity_range.as_ref())?;
        let id = volume_id(&req.name);
        let _busy = self.busy(&id)?;
        let pools = self.survey().await;
        let view = self.find_volume_everywhere(&id).await?;
        let source = req.volume_content_source.clone();
        if source.is_some() && params.provisioning == Provisioning::Thick {
            return Err(Status::invalid_argument(
                "clones are thin: provisioning=thick cannot be made from a source",
            ));
        }
        let size = match source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => self.create_fresh(&view, &params, range, &pools).await?,
            Some(Source::Snapshot(SnapshotSource { snapshot_id })) => {
                let snap = SnapshotId::parse(snapshot_id).map_err(|_| {
                    Status::not_found(format!("snapshot {snapshot_id} does not exist"))
                })?;
                self.create_clone(&view, &params, range, &pools, &snap, false)
                    .await?
            }
            Some(Source::Volume(VolumeSource {
                volume_id: source_id,
            })) => {
                if check_volume_id(source_id).is_err() {
                    return Err(Status::not_found(format!(
                        "source volume {source_id} does not exist"
                    )));
                }
                let snap = SnapshotId {
                    volume: source_id.clone(),
                    snapshot: internal_snapshot(&id),
                };
                self.create_clone(&view, &params, range, &pools, &snap, true)
                    .await?
            }
        };
        tracing::info!(volume = %id, name = %req.name, size, "volume ready");
        Ok(csi::CreateVolumeResponse {
            volume: Some(csi::Volume {
                capacity_bytes: to_i64(size),
                volume_id: id,
                volume_context: HashMap::from([(
                    context::FS_TYPE.to_owned(),
                    params.fs_type.clone(),
                )]),
                content_source: source,
                accessible_topology: Vec::new(),
            }),
        })
    }

    /// A new empty volume (or the rest of a half-made one); its size.
    async fn create_fresh(
        &self,
        view: &VolumeView,
        params: &VolumeParams,
        range: Range,
        pools: &[Result<Pool, Status>],
    ) -> Result<u64, Status> {
        let id = &view.id;
        let provisioning = replica_provisioning(params.provisioning);
        let size = if view.exists() {
            let size = view.size();
            if !range.admits(size) {
                return Err(Status::already_exists(format!(
                    "volume {id} exists with {size} bytes, outside the requested range"
                )));
            }
            if view
                .held
                .iter()
                .any(|h| h.replica.provisioning() != provisioning)
            {
                return Err(Status::already_exists(format!(
                    "volume {id} exists with another provisioning"
                )));
            }
            size
        } else {
            range.size(granularity(pools)).map_err(capacity_status)?
        };
        let candidates: Vec<Candidate> = pools
            .iter()
            .enumerate()
            .filter_map(|(pool, p)| p.as_ref().ok().map(|p| (pool, p)))
            .filter(|(_, p)| params.admits_pool(&p.name))
            .map(|(pool, p)| Candidate {
                pool,
                free_bytes: p.free_bytes,
                holds: view.held.iter().any(|h| h.pool == pool),
            })
            .collect();
        let count = params.replicas(candidates.len());
        let held = view.held.len();
        // With its target running, the volume was made in full: its
        // replica set is final. Without, a CreateVolume failed half-way and
        // this one finishes it.
        let complete = view.exists() && self.has_target(id).await?;
        let explicit = params.replica_count.map(|n| n as usize);
        if (complete && explicit.is_some_and(|n| n != held)) || explicit.is_some_and(|n| held > n) {
            return Err(Status::already_exists(format!(
                "volume {id} exists with {held} replicas, not {count}"
            )));
        }
        if complete {
            // Made in full, but OK only once its target serves: a retry of
            // a call that timed out waiting for the target waits again (or
            // is UNAVAILABLE), never OK with the target still coming up.
            self.require_serving(id).await?;
            return Ok(size);
        }
        let count = (count as usize).max(held);
        let min_free = match params.provisioning {
            Provisioning::Thick => size,
            Provisioning::Thin => 0,
        };
        let chosen = capacity::place(&candidates, count, min_free)
            .map_err(|e| Status::resource_exhausted(format!("volume {id}: {e}")))?;
        let replica = ReplicaCreate {
            name: id.clone(),
            size_bytes: size,
            block_size: BLOCK_BYTES as u32,
            provisioning: provisioning.into(),
            clone_of: String::new(),
        };
        self.create_missing_replicas(view, &chosen, &replica)
            .await?;
        let n = u32::try_from(chosen.len()).unwrap_or(u32::MAX);
        let cf = params.cf(n).map_err(invalid)?;
        self.start_target(id, &chosen, cf).await?;
        Ok(size)
    }

    /// Creates `replica` on each of `pools` that does not hold the volume
    /// yet (`view`: what the pools hold now; a retried call finds some).
    async fn create_missing_replicas(
        &self,
        view: &VolumeView,
        pools: &[usize],
        replica: &ReplicaCreate,
    ) -> Result<(), Status> {
        for pool in pools
            .iter()
            .filter(|p| !view.held.iter().any(|h| h.pool == **p))
        {
            let addr = self.pool(*pool)?;
            let mut client = self.mgmt.replica(addr.mgmt).await?;
            mgmt::call(
                &format!("replica daemon {}", addr.mgmt),
                mgmt::CALL,
                client.create_volume(replica.clone()),
            )
            .await?;
            tracing::info!(
                volume = %replica.name,
                pool = %addr.mgmt,
                size = replica.size_bytes,
                clone_of = %replica.clone_of,
                "volume replica created"
            );
        }
        Ok(())
    }

    async fn has_target(&self, id: &str) -> Result<bool, Status> {
        Ok(self
            .runtime
            .find_target(id)
            .await
            .map_err(runtime_status)?
            .is_some())
    }

    /// The volume's target, once it serves (waiting within the runtime's
    /// bound); UNAVAILABLE when it does not serve in time or there is none.
    async fn require_serving(&self, id: &str) -> Result<(), Status> {
        match self
            .runtime
            .serving_target(id)
            .await
            .map_err(runtime_status)?
        {
            Some(_) => Ok(()),
            None => Err(Status::unavailable(format!(
                "the target of volume {id} went away while starting; retry"
            ))),
        }
    }

    /// Starts a new volume's target admitting nobody, unless one exists
    /// (a repeated CreateVolume must not unpublish the volume); either way
    /// returns only once it serves.
    async fn start_target(&self, id: &str, pools: &[usize], cf: u32) -> Result<(), Status> {
        if self
            .runtime
            .serving_target(id)
            .await
            .map_err(runtime_status)?
            .is_some()
        {
            return Ok(());
        }
        let replicas = pools
            .iter()
            .map(|p| self.pool(*p).map(|a| a.data.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        self.runtime
            .ensure_target(&TargetSpec {
                volume: id.to_owned(),
                replicas,
                consistency_factor: cf,
                allowed_initiators: Vec::new(),
                chap: None,
            })
            .await
            .map_err(runtime_status)?;
        Ok(())
    }

    /// A clone of snapshot `snap` on the pools that hold it; with
    /// `take_snapshot`, the snapshot is first taken (at quorum) of the
    /// source volume and dropped once the clone exists. Its size.
    async fn create_clone(
        &self,
        view: &VolumeView,
        params: &VolumeParams,
        range: Range,
        pools: &[Result<Pool, Status>],
        snap: &SnapshotId,
        take_snapshot: bool,
    ) -> Result<u64, Status> {
        let id = &view.id;
        if snap.volume == *id {
            return Err(Status::invalid_argument(format!(
                "volume {id} cannot be made from itself"
            )));
        }
        // The source's snapshots must not change under the clone.
        let _source_busy = self.busy(&snap.volume)?;
        let source = self.find_volume(&snap.volume).await;
        if view.exists() && !range.admits(view.size()) {
            return Err(Status::already_exists(format!(
                "volume {id} exists with {} bytes, outside the requested range",
                view.size()
            )));
        }
        if view.exists() && self.has_target(id).await? {
            self.require_serving(id).await?;
            if take_snapshot && source.exists() {
                self.drop_clone_snapshot(&source, &snap.snapshot).await;
            }
            return Ok(view.size());
        }
        if !source.exists() {
            return Err(Status::not_found(format!(
                "source volume {} does not exist",
                snap.volume
            )));
        }
        if let Some(n) = params
            .replica_count
            .filter(|n| *n as usize != source.held.len())
        {
            return Err(Status::invalid_argument(format!(
                "a clone lives on its source's {} pools, not {n}",
                source.held.len()
            )));
        }
        let mut holders = self.snapshot_holders(&source, &snap.snapshot).await?;
        if holders.is_empty() && take_snapshot {
            let endpoint = self.target_of(&source).await?;
            let mut client = self.mgmt.target(&endpoint.mgmt).await?;
            mgmt::call(
                &format!("target {}", endpoint.mgmt),
                MGMT_QUORUM_CALL_TIMEOUT,
                client.create_snapshot(TargetCreateSnapshot {
                    name: snap.snapshot.clone(),
                }),
            )
            .await?;
            holders = self.snapshot_holders(&source, &snap.snapshot).await?;
        }
        if holders.is_empty() {
            return Err(Status::not_found(format!(
                "snapshot {} does not exist",
                snap.to_id()
            )));
        }
        if let Some(n) = params
            .replica_count
            .filter(|n| *n as usize != holders.len())
        {
            return Err(Status::invalid_argument(format!(
                "a clone lives on its source's {} pools, not {n}",
                holders.len()
            )));
        }
        let replica = ReplicaCreate {
            name: id.clone(),
            size_bytes: source.size().max(BLOCK_BYTES),
            block_size: BLOCK_BYTES as u32,
            provisioning: ReplicaProv::Thin.into(),
            clone_of: snap.to_id(),
        };
        self.create_missing_replicas(view, &holders, &replica)
            .await?;
        let clone = self.find_volume_everywhere(id).await?;
        let size = self.fit_clone(&clone, range, pools).await?;
        let n = u32::try_from(holders.len()).unwrap_or(u32::MAX);
        let cf = params.cf(n).map_err(invalid)?;
        self.start_target(id, &holders, cf).await?;
        if take_snapshot {
            self.drop_clone_snapshot(&source, &snap.snapshot).await;
        }
        tracing::info!(volume = %id, origin = %snap.to_id(), "clone created");
        Ok(size)
    }

    /// Grows a new clone to the requested size, or removes it when it is
    /// already larger than the limit (OUT_OF_RANGE).
    async fn fit_clone(
        &self,
        clone: &VolumeView,
        range: Range,
        pools: &[Result<Pool, Status>],
    ) -> Result<u64, Status> {
        let size = clone.size();
        if range.limit != 0 && size > range.limit {
            self.delete_replicas(clone).await?;
            return Err(Status::out_of_range(format!(
                "the source holds {size} bytes, more than the limit of {} bytes",
                range.limit
            )));
        }
        if size >= range.required {
            return Ok(size);
        }
        let grown = range.size(granularity(pools)).map_err(capacity_status)?;
        for held in &clone.held {
            let addr = self.pool(held.pool)?;
            let mut client = self.mgmt.replica(addr.mgmt).await?;
            mgmt::call(
                &format!("replica daemon {}", addr.mgmt),
                mgmt::CALL,
                client.grow_volume(GrowVolumeRequest {
                    name: clone.id.clone(),
                    size_bytes: grown,
                }),
            )
            .await?;
        }
        Ok(grown)
    }

    /// Pools on which `volume` holds snapshot `name`.
    pub(super) async fn snapshot_holders(
        &self,
        volume: &VolumeView,
        name: &str,
    ) -> Result<Vec<usize>, Status> {
        let mut holders = Vec::new();
        for held in &volume.held {
            let snapshots = self.replica_snapshots(held.pool, &volume.id).await?;
            if snapshots.iter().any(|s| s.name == name) {
                holders.push(held.pool);
            }
        }
        Ok(holders)
    }

    /// Best effort: the snapshot a volume-to-volume clone was made from.
    async fn drop_clone_snapshot(&self, source: &VolumeView, name: &str) {
        let result = async {
            if self.snapshot_holders(source, name).await?.is_empty() {
                return Ok(());
            }
            let endpoint = self.target_of(source).await?;
            let mut client = self.mgmt.target(&endpoint.mgmt).await?;
            mgmt::call(
                &format!("target {}", endpoint.mgmt),
                MGMT_QUORUM_CALL_TIMEOUT,
                client.delete_snapshot(TargetDeleteSnapshot {
                    name: name.to_owned(),
                }),
            )
            .await
            .map(drop)
        };
        if let Err(e) = result.await {
            tracing::warn!(volume = %source.id, snapshot = name, error = %e, "cannot drop the clone's snapshot; it goes with the volume");
        }
    }

    async fn delete_replicas(&self, view: &VolumeView) -> Result<(), Status> {
        for held in &view.held {
            let addr = self.pool(held.pool)?;
            let mut client = self.mgmt.replica(addr.mgmt).await?;
            mgmt::call(
                &format!("replica daemon {}", addr.mgmt),
                mgmt::CALL,
                // Forced: every replica of the volume is a member of its
                // replica set (the membership record the target wrote), which
                // the replica daemon refuses to delete otherwise. Deleting
                // the data is what both callers mean: DeleteVolume (after
                // its snapshot and publish checks, and after the target was
                // deleted, so no live session is cut) and a new clone that
                // came out too large (no target yet).
                client.delete_volume(ReplicaDelete {
                    name: view.id.clone(),
                    force: true,
                }),
            )
            .await?;
        }
        Ok(())
    }

    pub(super) async fn do_delete_volume(
        &self,
        req: csi::DeleteVolumeRequest,
    ) -> Result<csi::DeleteVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is empty"));
        }
        if check_volume_id(&req.volume_id).is_err() {
            // Not one of ours, so it does not exist: deleted.
            return Ok(csi::DeleteVolumeResponse {});
        }
        let id = req.volume_id;
        let _busy = self.busy(&id)?;
        let view = self.find_volume_everywhere(&id).await?;
        if view.exists() {
            for held in &view.held {
                let snapshots = self.replica_snapshots(held.pool, &id).await?;
                if let Some(s) = snapshots.iter().find(|s| !is_internal_snapshot(&s.name)) {
                    return Err(Status::failed_precondition(format!(
                        "volume {id} has snapshot {}: delete its snapshots first",
                        SnapshotId {
                            volume: id.clone(),
                            snapshot: s.name.clone()
                        }
                        .to_id()
                    )));
                }
            }
            if let Some(endpoint) = self
                .runtime
                .find_target(&id)
                .await
                .map_err(runtime_status)?
            {
                if let Ok(allowed) = self.allowed_initiators(&endpoint).await {
                    if allowed.allow_any || !allowed.initiators.is_empty() {
                        return Err(Status::failed_precondition(format!(
                            "volume {id} is published to {:?}: unpublish it first",
                            allowed.initiators
                        )));
                    }
                }
            }
        }
        self.runtime
            .delete_target(&id)
            .await
            .map_err(runtime_status)?;
        self.delete_replicas(&view).await?;
        tracing::info!(volume = %id, "volume deleted");
        Ok(csi::DeleteVolumeResponse {})
    }

    pub(super) async fn do_expand(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is empty"));
        }
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(Status::invalid_argument("capacity_range is required"));
        };
        let range = range_of(Some(range))?;
        if let Some(why) = req.volume_capability.as_ref().and_then(caps::unsupported) {
            return Err(Status::invalid_argument(why));
        }
        let id = &req.volume_id;
        if check_volume_id(id).is_err() {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        }
        let _busy = self.busy(id)?;
        let view = self.find_volume(id).await;
        if !view.exists() {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        }
        let node_expansion_required = caps::needs_node_expansion(req.volume_capability.as_ref());
        let current = view.size();
        if current >= range.required {
            if !range.admits(current) {
                return Err(Status::out_of_range(format!(
                    "volume {id} already holds {current} bytes, more than the limit"
                )));
            }
            return Ok(csi::ControllerExpandVolumeResponse {
                capacity_bytes: to_i64(current),
                node_expansion_required,
            });
        }
        let size = range
            .size(granularity(&self.survey().await))
            .map_err(capacity_status)?;
        let endpoint = self.target_of(&view).await?;
        let mut client = self.mgmt.target(&endpoint.mgmt).await?;
        let status = mgmt::call(
            &format!("target {}", endpoint.mgmt),
            MGMT_QUORUM_CALL_TIMEOUT,
            client.resize(ResizeRequest { size_bytes: size }),
        )
        .await
        .map_err(|e| match e.code() {
            Code::ResourceExhausted => Status::resource_exhausted(e.message()),
            _ => e,
        })?;
        tracing::info!(volume = %id, size = status.size_bytes, "volume expanded");
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: to_i64(status.size_bytes),
            node_expansion_required,
        })
    }

    pub(super) async fn do_get_volume(
        &self,
        req: csi::ControllerGetVolumeRequest,
    ) -> Result<csi::ControllerGetVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is empty"));
        }
        let id = &req.volume_id;
        if check_volume_id(id).is_err() {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        }
        let view = self.find_volume(id).await;
        if !view.exists() {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        }
        let (condition, allowed) = super::condition_of(self, &view).await;
        let published_node_ids = allowed
            .map(|a| {
                a.initiators
                    .iter()
                    .filter_map(|i| node_of_initiator(i))
                    .collect()
            })
            .unwrap_or_default();
        Ok(csi::ControllerGetVolumeResponse {
            volume: Some(volume_message(&view)),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids,
                volume_condition: Some(condition),
            }),
        })
    }

    pub(super) async fn do_list_volumes(
        &self,
        req: csi::ListVolumesRequest,
    ) -> Result<csi::ListVolumesResponse, Status> {
        paging::parse_token(&req.starting_token).map_err(|e| Status::aborted(e.to_string()))?;
        let (page, next_token) = paging::page(
            self.all_volumes().await,
            |v: &VolumeView| v.id.as_str(),
            &req.starting_token,
            req.max_entries,
        )
        .map_err(|e| match e {
            paging::PageError::BadToken(_) => Status::aborted(e.to_string()),
            paging::PageError::NegativeMax(_) => Status::invalid_argument(e.to_string()),
        })?;
        let mut entries = Vec::with_capacity(page.len());
        for view in &page {
            let (condition, _) = super::condition_of(self, view).await;
            entries.push(csi::list_volumes_response::Entry {
                volume: Some(volume_message(view)),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: Vec::new(),
                    volume_condition: Some(condition),
                }),
            });
        }
        Ok(csi::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    pub(super) async fn do_get_capacity(
        &self,
        req: csi::GetCapacityRequest,
    ) -> Result<csi::GetCapacityResponse, Status> {
        let params = VolumeParams::parse(&req.parameters).map_err(invalid)?;
        let pools = self.survey().await;
        let g = granularity(&pools);
        let supported = req
            .volume_capabilities
            .iter()
            .all(|c| caps::unsupported(c).is_none());
        let free: Vec<u64> = pools
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter(|p| params.admits_pool(&p.name))
            .map(|p| p.free_bytes)
            .collect();
        let replicas = params.replicas(free.len()) as usize;
        let available = if supported {
            capacity::available(&free, replicas, g)
        } else {
            0
        };
        Ok(csi::GetCapacityResponse {
            available_capacity: to_i64(available),
            maximum_volume_size: Some(to_i64(available)),
            minimum_volume_size: Some(to_i64(g)),
        })
    }

    pub(super) async fn do_validate(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is empty"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is empty"));
        }
        let id = &req.volume_id;
        if check_volume_id(id).is_err() || !self.find_volume(id).await.exists() {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        }
        let refusal = caps::check_all(&req.volume_capabilities)
            .err()
            .or_else(|| {
                VolumeParams::parse(&req.parameters)
                    .err()
                    .map(|e| e.to_string())
            })
            .or_else(|| {
                (!req.mutable_parameters.is_empty())
                    .then(|| "mutable parameters are not supported".to_owned())
            });
        Ok(match refusal {
            Some(message) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message,
            },
            None => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: HashMap::new(),
                }),
                message: String::new(),
            },
        })
    }
}

/// The CSI view of a volume found on the pools.
fn volume_message(view: &VolumeView) -> csi::Volume {
    csi::Volume {
        capacity_bytes: to_i64(view.size()),
        volume_id: view.id.clone(),
        volume_context: HashMap::new(),
        content_source: None,
        accessible_topology: Vec::new(),
    }
}
