//! The CSI Controller service (CSI spec v1 §Controller Service RPC):
//! provisioning, publishing, snapshots, expansion, capacity and health of
//! cstor volumes, driven through the replica daemons' and the targets'
//! management APIs.
//!
//! Stateless: the replicas hold the truth. A volume exists when a
//! configured pool holds a volume replica named by its id; its snapshots
//! are the replicas' snapshots; whom it is published to is the allowlist
//! of its target; where its target runs is the [`TargetRuntime`]'s
//! business. Every RPC is idempotent and checks its arguments before any
//! IO. Two calls on one volume at once: the second is ABORTED (spec
//! §Concurrency).
//!
//! - [`volumes`]: Create/Delete/Expand/Get/List volumes, capacity,
//!   capability validation.
//! - [`publish`]: ControllerPublish/Unpublish (fencing at the target).
//! - [`snapshots`]: Create/Delete/List snapshots.

pub mod observe;
mod publish;
mod snapshots;
mod volumes;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cstor_mgmt::v1::{
    AllowedInitiators, GetAllowedInitiatorsRequest, GetPoolRequest, GetTargetStatusRequest,
    GetVolumeRequest, ListSnapshotsRequest as ReplicaListSnapshots, Pool,
    Snapshot as ReplicaSnapshot, TargetStatus, VolumeReplica,
};
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};

use crate::capacity::round_up;
use crate::caps;
use crate::limits::{BLOCK_BYTES, CONTROLLER_CALL_BUDGET, SIDECAR_TIMEOUT};
use crate::mgmt::{self, Clients, PoolAddr};
use crate::params::majority;
use crate::pb::csi::v1 as csi;
use crate::pb::csi::v1::controller_server::Controller as ControllerRpc;
use crate::pb::csi::v1::controller_service_capability::rpc::Type as Cap;
use crate::runtime::{RuntimeError, TargetEndpoint, TargetRuntime, TargetSpec};

/// What the controller is told at start.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The replica daemons volumes may be placed on.
    pub pools: Vec<PoolAddr>,
    /// Node ids a volume may be published to; empty: any (the controller
    /// cannot tell which nodes exist).
    pub known_nodes: Vec<String>,
    /// How the management APIs are dialled (the controller's admin
    /// identity, or plaintext).
    pub clients: Clients,
}

/// The Controller service over runtime `R`.
pub struct Controller<R> {
    pools: Vec<PoolAddr>,
    known_nodes: Vec<String>,
    mgmt: Clients,
    runtime: Arc<R>,
    busy: Arc<Mutex<HashSet<String>>>,
    /// Woken after every call that changed a volume, so that its mirror
    /// object is written soon (`kube::mirror`), not at the next sweep.
    changed: Arc<Notify>,
}

/// A handle on the same controller (its pools, clients, runtime and busy
/// set are shared).
impl<R> Clone for Controller<R> {
    fn clone(&self) -> Self {
        Controller {
            pools: self.pools.clone(),
            known_nodes: self.known_nodes.clone(),
            mgmt: self.mgmt.clone(),
            runtime: Arc::clone(&self.runtime),
            busy: Arc::clone(&self.busy),
            changed: Arc::clone(&self.changed),
        }
    }
}

/// The capabilities this controller implements, exactly.
pub const CAPABILITIES: [Cap; 10] = [
    Cap::CreateDeleteVolume,
    Cap::PublishUnpublishVolume,
    Cap::ListVolumes,
    Cap::GetCapacity,
    Cap::CreateDeleteSnapshot,
    Cap::ListSnapshots,
    Cap::CloneVolume,
    Cap::ExpandVolume,
    Cap::VolumeCondition,
    Cap::GetVolume,
];

/// Marks a volume busy until dropped.
struct Busy {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// One volume replica found on a pool.
#[derive(Debug, Clone)]
struct Held {
    pool: usize,
    replica: VolumeReplica,
}

/// A volume as the pools show it.
#[derive(Debug, Clone, Default)]
struct VolumeView {
    id: String,
    held: Vec<Held>,
    /// Pools that did not answer.
    unreachable: Vec<usize>,
}

impl VolumeView {
    fn exists(&self) -> bool {
        !self.held.is_empty()
    }

    /// The volume's size: the largest of its replicas (a grow interrupted
    /// half-way leaves some replicas smaller until the target evens them).
    fn size(&self) -> u64 {
        self.held
            .iter()
            .map(|h| h.replica.size_bytes)
            .max()
            .unwrap_or(0)
    }
}

fn invalid(e: impl Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn runtime_status(e: RuntimeError) -> Status {
    match e {
        RuntimeError::InvalidSpec(m) => Status::internal(format!("target spec refused: {m}")),
        RuntimeError::Unavailable(m) => Status::unavailable(m),
        RuntimeError::Other(m) => Status::internal(m),
    }
}

impl<R: TargetRuntime> Controller<R> {
    pub fn new(config: ControllerConfig, runtime: Arc<R>) -> Self {
        Controller {
            pools: config.pools,
            known_nodes: config.known_nodes,
            mgmt: config.clients,
            runtime,
            busy: Arc::default(),
            changed: Arc::default(),
        }
    }

    /// Notified after every call that changed a volume.
    pub fn changes(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// Passes `answer` on, waking the mirror when the call changed
    /// something.
    fn changed<T>(&self, answer: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        if answer.is_ok() {
            self.changed.notify_one();
        }
        answer
    }

    /// How this controller dials the management APIs.
    pub fn clients(&self) -> &Clients {
        &self.mgmt
    }

    /// Marks `key` busy, or ABORTED when another call holds it.
    fn busy(&self, key: &str) -> Result<Busy, Status> {
        let mut set = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if !set.insert(key.to_owned()) {
            return Err(Status::aborted(format!(
                "an operation on {key} is already in progress"
            )));
        }
        Ok(Busy {
            set: self.busy.clone(),
            key: key.to_owned(),
        })
    }

    fn pool(&self, index: usize) -> Result<PoolAddr, Status> {
        self.pools
            .get(index)
            .copied()
            .ok_or_else(|| Status::internal(format!("no pool #{index}")))
    }

    /// Every pool's state, in configuration order.
    async fn survey(&self) -> Vec<Result<Pool, Status>> {
        mgmt::on_every_pool(&self.mgmt, &self.pools, |clients, pool| async move {
            let mut client = clients.replica(pool.mgmt).await?;
            mgmt::call(
                &format!("replica daemon {}", pool.mgmt),
                mgmt::CALL,
                client.get_pool(GetPoolRequest {}),
            )
            .await
        })
        .await
    }

    /// The volume replicas named `id` on every pool.
    async fn find_volume(&self, id: &str) -> VolumeView {
        let name = id.to_owned();
        let answers = mgmt::on_every_pool(&self.mgmt, &self.pools, move |clients, pool| {
            let name = name.clone();
            async move {
                let mut client = clients.replica(pool.mgmt).await?;
                mgmt::call(
                    &format!("replica daemon {}", pool.mgmt),
                    mgmt::CALL,
                    client.get_volume(GetVolumeRequest { name }),
                )
                .await
            }
        })
        .await;
        let mut view = VolumeView {
            id: id.to_owned(),
            ..VolumeView::default()
        };
        for (pool, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(replica) => view.held.push(Held { pool, replica }),
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => {
                    tracing::warn!(volume = id, error = %e, "pool did not answer");
                    view.unreachable.push(pool);
                }
            }
        }
        view
    }

    /// Like [`find_volume`](Self::find_volume), but UNAVAILABLE when a pool
    /// did not answer: for calls that must not miss a replica.
    async fn find_volume_everywhere(&self, id: &str) -> Result<VolumeView, Status> {
        let view = self.find_volume(id).await;
        if let Some(pool) = view.unreachable.first().and_then(|p| self.pools.get(*p)) {
            return Err(Status::unavailable(format!(
                "replica daemon {} is unreachable: cannot tell where volume {id} lives",
                pool.mgmt
            )));
        }
        Ok(view)
    }

    /// The snapshots of `volume` on pool `pool`.
    async fn replica_snapshots(
        &self,
        pool: usize,
        volume: &str,
    ) -> Result<Vec<ReplicaSnapshot>, Status> {
        let addr = self.pool(pool)?;
        let mut client = self.mgmt.replica(addr.mgmt).await?;
        let listed = mgmt::call(
            &format!("replica daemon {}", addr.mgmt),
            mgmt::CALL,
            client.list_snapshots(ReplicaListSnapshots {
                volume: volume.to_owned(),
            }),
        )
        .await?;
        Ok(listed.snapshots)
    }

    /// The volume's running target; one is started again (admitting
    /// nobody) when the runtime lost it.
    async fn target_of(&self, view: &VolumeView) -> Result<TargetEndpoint, Status> {
        if let Some(endpoint) = self
            .runtime
            .find_target(&view.id)
            .await
            .map_err(runtime_status)?
        {
            return Ok(endpoint);
        }
        let replicas: Vec<String> = view
            .held
            .iter()
            .filter_map(|h| self.pools.get(h.pool).map(|p| p.data.to_string()))
            .collect();
        let n = u32::try_from(replicas.len()).unwrap_or(u32::MAX);
        tracing::warn!(volume = %view.id, "no target: starting one with a majority consistency factor");
        self.runtime
            .ensure_target(&TargetSpec {
                volume: view.id.clone(),
                replicas,
                consistency_factor: majority(n),
                allowed_initiators: Vec::new(),
                chap: None,
            })
            .await
            .map_err(runtime_status)
    }

    async fn target_status(&self, endpoint: &TargetEndpoint) -> Result<TargetStatus, Status> {
        let mut client = self.mgmt.target(&endpoint.mgmt).await?;
        mgmt::call(
            &format!("target {}", endpoint.mgmt),
            mgmt::CALL,
            client.get_status(GetTargetStatusRequest {}),
        )
        .await
    }

    async fn allowed_initiators(
        &self,
        endpoint: &TargetEndpoint,
    ) -> Result<AllowedInitiators, Status> {
        let mut client = self.mgmt.target(&endpoint.mgmt).await?;
        mgmt::call(
            &format!("target {}", endpoint.mgmt),
            mgmt::CALL,
            client.get_allowed_initiators(GetAllowedInitiatorsRequest {}),
        )
        .await
    }

    /// The target's spec as it runs, with another allowlist.
    fn respec(id: &str, status: &TargetStatus, allowed: Vec<String>) -> TargetSpec {
        TargetSpec {
            volume: id.to_owned(),
            replicas: status.replicas.iter().map(|r| r.address.clone()).collect(),
            consistency_factor: status.consistency_factor,
            allowed_initiators: allowed,
            chap: None,
        }
    }
}

/// Size granularity: the largest chunk of the reachable pools, a whole
/// number of blocks.
fn granularity(pools: &[Result<Pool, Status>]) -> u64 {
    let chunk = pools
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|p| u64::from(p.chunk_size_bytes))
        .max()
        .unwrap_or(BLOCK_BYTES);
    round_up(chunk.max(BLOCK_BYTES), BLOCK_BYTES).unwrap_or(BLOCK_BYTES)
}

#[tonic::async_trait]
impl<R: TargetRuntime> ControllerRpc for Controller<R> {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        self.changed(
            within_budget("CreateVolume", self.do_create_volume(request.into_inner())).await,
        )
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        self.changed(
            within_budget("DeleteVolume", self.do_delete_volume(request.into_inner())).await,
        )
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        self.changed(
            within_budget(
                "ControllerPublishVolume",
                self.do_publish(request.into_inner()),
            )
            .await,
        )
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        self.changed(
            within_budget(
                "ControllerUnpublishVolume",
                self.do_unpublish(request.into_inner()),
            )
            .await,
        )
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        within_budget(
            "ValidateVolumeCapabilities",
            self.do_validate(request.into_inner()),
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        within_budget("ListVolumes", self.do_list_volumes(request.into_inner())).await
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        within_budget("GetCapacity", self.do_get_capacity(request.into_inner())).await
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::{Rpc, Type};
        let capabilities = CAPABILITIES
            .iter()
            .map(|cap| csi::ControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: *cap as i32,
                })),
            })
            .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        self.changed(
            within_budget(
                "CreateSnapshot",
                self.do_create_snapshot(request.into_inner()),
            )
            .await,
        )
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        self.changed(
            within_budget(
                "DeleteSnapshot",
                self.do_delete_snapshot(request.into_inner()),
            )
            .await,
        )
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        within_budget(
            "ListSnapshots",
            self.do_list_snapshots(request.into_inner()),
        )
        .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        self.changed(
            within_budget(
                "ControllerExpandVolume",
                self.do_expand(request.into_inner()),
            )
            .await,
        )
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        within_budget(
            "ControllerGetVolume",
            self.do_get_volume(request.into_inner()),
        )
        .await
    }

    async fn controller_modify_volume(
        &self,
        _: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerModifyVolume: cstor volumes have no mutable parameters",
        ))
    }
}

/// Runs one RPC within [`CONTROLLER_CALL_BUDGET`] (below the sidecars'
/// timeout): UNAVAILABLE when it is not done by then. Dropping the call's
/// future at an await is what a client's cancellation does too; every RPC
/// is idempotent, so the retry finishes what this one started.
async fn within_budget<T>(
    rpc: &str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    within(CONTROLLER_CALL_BUDGET, rpc, call).await
}

async fn within<T>(
    budget: Duration,
    rpc: &str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    match tokio::time::timeout(budget, call).await {
        Ok(result) => result.map(Response::new),
        Err(_) => {
            tracing::warn!(rpc, ?budget, "call not done within its budget");
            Err(Status::unavailable(format!(
                "{rpc} not done within {budget:?} (the sidecars wait {SIDECAR_TIMEOUT:?}); \
                 what it did stays, a retry carries on"
            )))
        }
    }
}

/// The volume's condition, asking its target.
async fn condition_of<R: TargetRuntime>(
    controller: &Controller<R>,
    view: &VolumeView,
) -> (csi::VolumeCondition, Option<AllowedInitiators>) {
    let endpoint = match controller.runtime.find_target(&view.id).await {
        Ok(Some(endpoint)) => endpoint,
        Ok(None) => return (caps::condition(Err("no target runs")), None),
        Err(e) => return (caps::condition(Err(&e.to_string())), None),
    };
    let condition = match controller.target_status(&endpoint).await {
        Ok(status) => caps::condition(Ok(&status)),
        Err(e) => caps::condition(Err(e.message())),
    };
    let allowed = controller.allowed_initiators(&endpoint).await.ok();
    (condition, allowed)
}
