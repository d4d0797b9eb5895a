//! The management API (gRPC `cstor.v1.ReplicaManager`): pool capacity,
//! volume replicas and their snapshots. Used by `cstor ctl` and the CSI
//! controller. Create and delete are idempotent, as CSI needs them to be.
//! Delete refuses a volume replica in use (a live target session, or a
//! member of a replica set: `crate::registry` module doc) unless forced.

use std::sync::Arc;

use cstor_engine::{ErrorKind, Provisioning as EngineProvisioning, VolumeInfo};
use cstor_mgmt::v1::replica_manager_server::ReplicaManager;
use cstor_mgmt::v1::{
    CreateVolumeRequest, DeleteVolumeRequest, DeleteVolumeResponse, Device, GetPoolRequest,
    GetRebuildThrottleRequest, GetVolumeRequest, GrowVolumeRequest, ListSnapshotsRequest,
    ListSnapshotsResponse, ListVolumesRequest, ListVolumesResponse, Pool, Provisioning,
    RebuildProgress, RebuildThrottle, ReplicaState, SetRebuildThrottleRequest, Snapshot,
    VolumeReplica,
};
use cstor_proto::Name;
use cstor_tls::Right;
use tonic::{Request, Response, Status};

use crate::registry::{DeleteRefused, Registry};
use crate::status::grpc_status;

/// What the daemon knows about its pool beyond the engine's figures.
#[derive(Debug, Clone)]
pub struct PoolInfo {
    pub name: String,
    pub devices: Vec<DeviceInfo>,
    pub io_backend: String,
    pub format_version: u32,
    /// The daemon runs with `--insecure-plaintext` (shown by `GetPool`).
    pub insecure_plaintext: bool,
}

#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub path: String,
    pub size_bytes: u64,
    pub direct_io: bool,
}

/// The service's path prefix (`/package.Service/`).
const SERVICE_PATH: &str = "/cstor.v1.ReplicaManager/";

/// The right each management call needs (docs/security.md, "What each port
/// accepts"), for [`cstor_tls::grpc::RequireRights`]: reads (the pool,
/// volume replicas, snapshots, the throttle) need [`Right::Read`];
/// everything else — every mutation, and any path this list does not name
/// (a method added later, another service) — needs [`Right::Admin`]: new
/// methods are closed until someone decides otherwise.
pub fn rights_of(path: &str) -> Right {
    match path.strip_prefix(SERVICE_PATH) {
        Some("GetPool" | "GetVolume" | "ListVolumes" | "ListSnapshots" | "GetRebuildThrottle") => {
            Right::Read
        }
        _ => Right::Admin,
    }
}

pub struct Service {
    registry: Arc<Registry>,
    info: PoolInfo,
}

impl Service {
    pub fn new(registry: Arc<Registry>, info: PoolInfo) -> Self {
        Self { registry, info }
    }

    fn replica(&self, info: &VolumeInfo) -> Result<VolumeReplica, Status> {
        let pool = self.registry.pool();
        let volume = pool.volume(&info.name).map_err(|e| grpc_status(&e))?;
        let entry = self.registry.get(&info.name);
        let rebuild = entry.as_ref().and_then(|e| e.rebuild.status());
        let (state, stats) = match volume.stats() {
            Ok(stats) => {
                let attached = entry.as_ref().is_some_and(|e| e.has_owner());
                let unfinished = crate::rebuild::sink::unfinished(&volume)
                    .map_err(|e| grpc_status(&e))?
                    .is_some();
                let state = if rebuild.as_ref().is_some_and(|r| r.running) {
                    ReplicaState::Rebuilding
                } else if unfinished {
                    ReplicaState::Degraded
                } else if attached {
                    ReplicaState::Healthy
                } else {
                    ReplicaState::Offline
                };
                (state, Some(stats))
            }
            Err(e) if e.kind() == ErrorKind::Poisoned => (ReplicaState::Poisoned, None),
            Err(e) => return Err(grpc_status(&e)),
        };
        Ok(VolumeReplica {
            name: info.name.clone(),
            size_bytes: info.size_bytes,
            block_size: info.block_bytes,
            provisioning: provisioning_to_api(info.provisioning).into(),
            allocated_bytes: stats.as_ref().map_or(0, |s| s.allocated_bytes),
            replica_id: format!("{:032x}", info.replica_id),
            state: state.into(),
            last_durable_io_seq: stats.as_ref().map_or(0, |s| s.last_durable_io_seq),
            epoch: volume.epoch().unwrap_or(0),
            rebuild: rebuild.map(|r| RebuildProgress {
                done_bytes: r.done_bytes,
                total_bytes: r.total_bytes,
                rate_bytes_per_second: r.rate_bytes_per_sec,
                eta_seconds: r.eta.map_or(0, |eta| eta.as_secs().max(1)),
                source: r.source,
                from_io_seq: r.from_io_seq,
                running: r.running,
            }),
            snapshot_count: u32::try_from(info.snapshots).unwrap_or(u32::MAX),
            origin: String::new(),
            rebuild_throttle_bytes_per_second: entry
                .as_ref()
                .map_or(0, |e| e.rebuild.limit_bytes_per_sec()),
        })
    }

    fn find(&self, name: &str) -> Option<VolumeInfo> {
        self.registry
            .pool()
            .list_volumes()
            .into_iter()
            .find(|v| v.name == name)
    }
}

fn provisioning_to_api(p: EngineProvisioning) -> Provisioning {
    match p {
        EngineProvisioning::Thin => Provisioning::Thin,
        EngineProvisioning::Thick => Provisioning::Thick,
    }
}

/// Names travel in the replication protocol too: the same rules apply.
fn check_name(what: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("{what} name is empty")));
    }
    if name.contains('@') || name.contains('/') {
        return Err(Status::invalid_argument(format!(
            "{what} name {name:?} must not contain '@' or '/'"
        )));
    }
    Name::new(name)
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(format!("{what} name {name:?}: {e}")))
}

#[tonic::async_trait]
impl ReplicaManager for Service {
    async fn set_rebuild_throttle(
        &self,
        request: Request<SetRebuildThrottleRequest>,
    ) -> Result<Response<RebuildThrottle>, Status> {
        let limit = request.into_inner().bytes_per_second;
        let settings = self.registry.rebuild_settings();
        settings.set_limit_bytes_per_sec(limit);
        // The daemon's rate caps every volume's own (set by its target;
        // `rebuild::state` module doc).
        tracing::info!(bytes_per_second = limit, "daemon rebuild throttle set");
        Ok(Response::new(RebuildThrottle {
            bytes_per_second: settings.limit_bytes_per_sec(),
        }))
    }

    async fn get_rebuild_throttle(
        &self,
        _: Request<GetRebuildThrottleRequest>,
    ) -> Result<Response<RebuildThrottle>, Status> {
        Ok(Response::new(RebuildThrottle {
            bytes_per_second: self.registry.rebuild_settings().limit_bytes_per_sec(),
        }))
    }

    async fn get_pool(&self, _: Request<GetPoolRequest>) -> Result<Response<Pool>, Status> {
        let stats = self.registry.pool().stats();
        Ok(Response::new(Pool {
            name: self.info.name.clone(),
            guid: format!("{:032x}", stats.pool_guid),
            capacity_bytes: stats.total_bytes,
            used_bytes: stats.used_bytes,
            free_bytes: stats.free_bytes,
            chunk_size_bytes: stats.chunk_bytes,
            devices: self
                .info
                .devices
                .iter()
                .map(|d| Device {
                    path: d.path.clone(),
                    size_bytes: d.size_bytes,
                    direct_io: d.direct_io,
                })
                .collect(),
            format_version: self.info.format_version,
            io_backend: self.info.io_backend.clone(),
            insecure_plaintext: self.info.insecure_plaintext,
        }))
    }

    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<VolumeReplica>, Status> {
        let req = request.into_inner();
        check_name("volume", &req.name)?;
        let block_size = match req.block_size {
            0 => 4096,
            512 | 4096 => req.block_size,
            other => {
                return Err(Status::invalid_argument(format!(
                    "block size must be 512 or 4096, not {other}"
                )))
            }
        };
        if req.size_bytes == 0 || !req.size_bytes.is_multiple_of(u64::from(block_size)) {
            return Err(Status::invalid_argument(format!(
                "size {} is not a positive multiple of the block size {block_size}",
                req.size_bytes
            )));
        }
        let provisioning = match Provisioning::try_from(req.provisioning) {
            Ok(Provisioning::Thick) => EngineProvisioning::Thick,
            Ok(Provisioning::Thin | Provisioning::Unspecified) => EngineProvisioning::Thin,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown provisioning {}",
                    req.provisioning
                )))
            }
        };
        if let Some(existing) = self.find(&req.name) {
            let same = existing.size_bytes == req.size_bytes
                && existing.block_bytes == block_size
                && existing.provisioning == provisioning
                && req.clone_of.is_empty();
            return if same {
                Ok(Response::new(self.replica(&existing)?))
            } else {
                Err(Status::already_exists(format!(
                    "volume {} exists with size {}, block size {}, {:?}",
                    req.name, existing.size_bytes, existing.block_bytes, existing.provisioning
                )))
            };
        }
        let pool = self.registry.pool();
        if req.clone_of.is_empty() {
            pool.create_volume(&req.name, req.size_bytes, block_size, provisioning)
                .await
                .map_err(|e| grpc_status(&e))?;
        } else {
            let Some((origin, snapshot)) = req.clone_of.split_once('@') else {
                return Err(Status::invalid_argument(format!(
                    "clone_of {:?} is not volume@snapshot",
                    req.clone_of
                )));
            };
            let source = pool.volume(origin).map_err(|e| grpc_status(&e))?;
            source
                .clone_snapshot(snapshot, &req.name)
                .await
                .map_err(|e| grpc_status(&e))?;
        }
        tracing::info!(volume = %req.name, size = req.size_bytes, ?provisioning, "volume replica created");
        let created = self
            .find(&req.name)
            .ok_or_else(|| Status::internal(format!("volume {} vanished", req.name)))?;
        Ok(Response::new(self.replica(&created)?))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let DeleteVolumeRequest { name, force } = request.into_inner();
        check_name("volume", &name)?;
        // Held until the volume is gone: no session opens it meanwhile.
        let _deleting = match self.registry.forget_unless_in_use(&name, force) {
            Ok(mark) => mark,
            Err(DeleteRefused::InUse(why)) => {
                return Err(Status::failed_precondition(format!(
                    "{why}, or delete with force"
                )))
            }
            Err(DeleteRefused::Engine(e)) => return Err(grpc_status(&e)),
        };
        match self.registry.pool().delete_volume(&name).await {
            Ok(()) => tracing::info!(volume = %name, force, "volume replica deleted"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(grpc_status(&e)),
        }
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn grow_volume(
        &self,
        request: Request<GrowVolumeRequest>,
    ) -> Result<Response<VolumeReplica>, Status> {
        let req = request.into_inner();
        check_name("volume", &req.name)?;
        let existing = self
            .find(&req.name)
            .ok_or_else(|| Status::not_found(format!("volume {}", req.name)))?;
        if req.size_bytes < existing.size_bytes {
            return Err(Status::invalid_argument(format!(
                "volume {} cannot shrink from {} to {} bytes",
                req.name, existing.size_bytes, req.size_bytes
            )));
        }
        if !req
            .size_bytes
            .is_multiple_of(u64::from(existing.block_bytes))
        {
            return Err(Status::invalid_argument(format!(
                "size {} is not a multiple of the block size {}",
                req.size_bytes, existing.block_bytes
            )));
        }
        if req.size_bytes > existing.size_bytes {
            self.registry
                .pool()
                .grow_volume(&req.name, req.size_bytes)
                .await
                .map_err(|e| grpc_status(&e))?;
        }
        let grown = self
            .find(&req.name)
            .ok_or_else(|| Status::not_found(format!("volume {}", req.name)))?;
        Ok(Response::new(self.replica(&grown)?))
    }

    async fn get_volume(
        &self,
        request: Request<GetVolumeRequest>,
    ) -> Result<Response<VolumeReplica>, Status> {
        let name = request.into_inner().name;
        let info = self
            .find(&name)
            .ok_or_else(|| Status::not_found(format!("volume {name}")))?;
        Ok(Response::new(self.replica(&info)?))
    }

    async fn list_volumes(
        &self,
        _: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let mut volumes = Vec::new();
        let mut infos = self.registry.pool().list_volumes();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        for info in &infos {
            volumes.push(self.replica(info)?);
        }
        Ok(Response::new(ListVolumesResponse { volumes }))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let name = request.into_inner().volume;
        let volume = self
            .registry
            .pool()
            .volume(&name)
            .map_err(|e| grpc_status(&e))?;
        let mut snapshots: Vec<Snapshot> = volume
            .list_snapshots()
            .map_err(|e| grpc_status(&e))?
            .into_iter()
            .map(|s| Snapshot {
                name: s.name,
                io_seq: s.io_seq,
                created_unix_seconds: 0,
                unique_bytes: 0,
            })
            .collect();
        snapshots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListSnapshotsResponse { snapshots }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_the_read_right_and_everything_else_admin() {
        use cstor_mgmt::v1::replica_manager_server::SERVICE_NAME;
        assert_eq!(SERVICE_PATH, format!("/{SERVICE_NAME}/"));
        let path = |method: &str| format!("/{SERVICE_NAME}/{method}");
        for read in [
            "GetPool",
            "GetVolume",
            "ListVolumes",
            "ListSnapshots",
            "GetRebuildThrottle",
        ] {
            assert_eq!(rights_of(&path(read)), Right::Read, "{read}");
        }
        for admin in [
            "CreateVolume",
            "DeleteVolume",
            "GrowVolume",
            "SetRebuildThrottle",
        ] {
            assert_eq!(rights_of(&path(admin)), Right::Admin, "{admin}");
        }
        // Fail closed: an unknown method, another service, a near miss.
        for unknown in [
            path("DestroyPool"),
            path("getpool"),
            path("GetPool/extra"),
            "/cstor.v1.TargetManager/GetPool".to_owned(),
            "GetPool".to_owned(),
            String::new(),
        ] {
            assert_eq!(rights_of(&unknown), Right::Admin, "{unknown}");
        }
    }
}
