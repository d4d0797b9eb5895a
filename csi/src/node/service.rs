//! The CSI Node gRPC service (CSI spec v1 §"Node Service RPC") over
//! [`NodeOps`]: turns requests into the typed operations, runs them on the
//! blocking pool, and maps [`NodeError`] codes to gRPC status codes.
//!
//! One operation per volume at a time: a second call for a volume while
//! one runs is answered ABORTED (CSI spec §"Concurrency": "Operation
//! pending for volume"), and the CO retries.
//!
//! Every request's arguments are checked first, before the volume is
//! marked busy and before the host is touched: a missing or malformed
//! required field is INVALID_ARGUMENT whatever else is going on (CSI spec
//! §"Error Scheme": "Missing required field | 3 INVALID_ARGUMENT").

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cstor_tls::Security;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::pb::csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use pb::volume_capability::AccessType;

use super::fs::FsType;
use super::host::{Host, RealHost};
use super::ops::{
    check_path, check_volume_id, check_volume_path, Code, NodeError, NodeOps,
    DEFAULT_DEVICE_TIMEOUT,
};
use super::publish::PublishRequest;
use super::remount::{self, DEFAULT_REMOUNT_INTERVAL};
use super::stage::{AccessRequest, StageRequest};

/// Where staged-volume records live unless configured otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cstor-csi/node";
/// The topology segment NodeGetInfo reports: the node's own name.
pub const TOPOLOGY_KEY: &str = "topology.cstor.openebs.io/node";

/// How the node service runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (the Kubernetes node name); its initiator name is
    /// `crate::initiator_name(node_id)`.
    pub node_id: String,
    /// Directory of staged-volume records (must survive plugin restarts:
    /// a hostPath in Kubernetes).
    pub state_dir: PathBuf,
    /// Bound on waiting for a LUN's device after login or rescan.
    pub device_timeout: Duration,
    /// Interval of the background remount check.
    pub remount_interval: Duration,
    /// How the remount check reaches targets' management APIs (a reader
    /// identity is enough: it only reads their status).
    pub security: Security,
}

impl NodeConfig {
    /// Defaults for everything but the node id and the security.
    pub fn new(node_id: impl Into<String>, security: Security) -> Self {
        NodeConfig {
            node_id: node_id.into(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            device_timeout: DEFAULT_DEVICE_TIMEOUT,
            remount_interval: DEFAULT_REMOUNT_INTERVAL,
            security,
        }
    }
}

/// The CSI Node service. Cheap to clone (shared state).
pub struct NodeService<H: Host = RealHost> {
    inner: Arc<Inner<H>>,
}

impl<H: Host> Clone for NodeService<H> {
    fn clone(&self) -> Self {
        NodeService {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<H: Host> {
    ops: NodeOps<H>,
    config: NodeConfig,
    /// Volumes with an operation in progress.
    busy: Mutex<HashSet<String>>,
}

impl NodeService<RealHost> {
    /// The service on this machine.
    pub fn new(config: NodeConfig) -> Self {
        Self::with_host(config, RealHost)
    }
}

/// Releases a volume's busy mark when the operation ends (or panics).
struct Busy<H: Host> {
    inner: Arc<Inner<H>>,
    volume_id: String,
}

impl<H: Host> Drop for Busy<H> {
    fn drop(&mut self) {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.volume_id);
    }
}

fn status(e: NodeError) -> Status {
    let code = match e.code {
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::NotFound => tonic::Code::NotFound,
        Code::AlreadyExists => tonic::Code::AlreadyExists,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::Aborted => tonic::Code::Aborted,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        Code::Internal => tonic::Code::Internal,
    };
    Status::new(code, e.message)
}

impl<H: Host> NodeService<H> {
    /// The service over any host (tests use a model of one).
    pub fn with_host(config: NodeConfig, host: H) -> Self {
        let ops = NodeOps::new(
            host,
            crate::initiator_name(&config.node_id),
            config.state_dir.clone(),
            config.device_timeout,
        );
        NodeService {
            inner: Arc::new(Inner {
                ops,
                config,
                busy: Mutex::new(HashSet::new()),
            }),
        }
    }

    fn try_busy(&self, volume_id: &str) -> Option<Busy<H>> {
        let mut busy = self
            .inner
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        busy.insert(volume_id.to_owned()).then(|| Busy {
            inner: Arc::clone(&self.inner),
            volume_id: volume_id.to_owned(),
        })
    }

    /// Runs `f` on the blocking pool with the volume marked busy.
    async fn run<T, F>(&self, volume_id: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&NodeOps<H>) -> Result<T, NodeError> + Send + 'static,
    {
        check_volume_id(volume_id).map_err(status)?;
        let busy = self.try_busy(volume_id).ok_or_else(|| {
            Status::aborted(format!("an operation on volume {volume_id} is in progress"))
        })?;
        self.run_unlocked(volume_id, move |ops| {
            let _busy = busy;
            f(ops)
        })
        .await
    }

    /// Runs `f` on the blocking pool without marking the volume busy: for
    /// NodeGetVolumeStats, which only looks, so that a stats poll never
    /// fails because a stage or the remount check is running.
    async fn run_unlocked<T, F>(&self, volume_id: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&NodeOps<H>) -> Result<T, NodeError> + Send + 'static,
    {
        check_volume_id(volume_id).map_err(status)?;
        let inner = Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || f(&inner.ops))
            .await
            .map_err(|e| Status::internal(format!("node operation failed: {e}")))?;
        result.map_err(|e| {
            tracing::warn!(volume = volume_id, code = ?e.code, error = %e.message, "node operation failed");
            status(e)
        })
    }

    /// The background remount check ([`remount`]), until `shutdown`.
    pub async fn run_remount_check(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.config.remount_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.remount_pass().await,
            }
        }
    }

    async fn remount_pass(&self) {
        let inner = Arc::clone(&self.inner);
        let candidates = match tokio::task::spawn_blocking(move || inner.ops.read_only_volumes())
            .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return tracing::warn!(error = %e, "remount check: cannot list volumes"),
            Err(e) => return tracing::warn!(error = %e, "remount check failed"),
        };
        for c in candidates {
            let Some(addr) = c.target_mgmt.clone() else {
                tracing::debug!(volume = %c.volume_id, "read-only filesystem, no targetMgmt: not remounted");
                continue;
            };
            match remount::target_status(&self.inner.config.security, &addr).await {
                Ok(s) if remount::has_quorum(&s) => {}
                Ok(_) => {
                    tracing::debug!(volume = %c.volume_id, "read-only filesystem; the target has no quorum yet");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(volume = %c.volume_id, error = %e, "read-only filesystem; target status unknown");
                    continue;
                }
            }
            // Skip a volume an RPC is working on; the next pass sees it.
            let volume_id = c.volume_id.clone();
            let _ = self.run(&volume_id, move |ops| ops.remount_rw(&c)).await;
        }
    }
}

/// Volume context for stage: `volume_context` with `publish_context` on top
/// (the controller may put the portal in either).
fn merged_context(
    volume: &std::collections::HashMap<String, String>,
    publish: &std::collections::HashMap<String, String>,
) -> std::collections::HashMap<String, String> {
    let mut ctx = volume.clone();
    ctx.extend(publish.iter().map(|(k, v)| (k.clone(), v.clone())));
    ctx
}

/// The capability, flattened: block or mount (fs, flags + `ro` for a
/// read-only access mode).
fn access(cap: Option<&pb::VolumeCapability>) -> Result<AccessRequest, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument("volume capability missing"))?;
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown);
    if mode == Mode::Unknown {
        return Err(Status::invalid_argument(
            "volume capability has no access mode",
        ));
    }
    let read_only = matches!(mode, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly);
    match &cap.access_type {
        Some(AccessType::Block(_)) => Ok(AccessRequest::Block),
        Some(AccessType::Mount(m)) => {
            let mut flags = m.mount_flags.clone();
            if read_only && !flags.iter().any(|f| f == "ro") {
                flags.push("ro".into());
            }
            Ok(AccessRequest::Mount {
                fs_type: m.fs_type.clone(),
                flags,
            })
        }
        None => Err(Status::invalid_argument(
            "volume capability has no access type",
        )),
    }
}

/// NodePublishVolume's arguments, every one checked before anything is
/// touched. The required `volume_id`, `target_path` and
/// `volume_capability` (with its access type and mode: "Volume capability
/// describing how the CO intends to use this volume. [...] This is a
/// REQUIRED field") are INVALID_ARGUMENT when missing or malformed. A
/// missing `staging_target_path` is FAILED_PRECONDITION, as the spec's
/// table says: "Staging target path not set | 9 FAILED_PRECONDITION |
/// Indicates that `STAGE_UNSTAGE_VOLUME` capability is set but no
/// `staging_target_path` was set".
fn publish_request(r: pb::NodePublishVolumeRequest) -> Result<PublishRequest, Status> {
    check_volume_id(&r.volume_id).map_err(status)?;
    check_path("target path", &r.target_path).map_err(status)?;
    let access = access(r.volume_capability.as_ref())?;
    if let AccessRequest::Mount { fs_type, .. } = &access {
        if !fs_type.is_empty() && FsType::parse(fs_type).is_none() {
            return Err(Status::invalid_argument(format!(
                "volume capability fs_type {fs_type:?} is not supported (ext4, xfs)"
            )));
        }
    }
    if r.staging_target_path.is_empty() {
        return Err(Status::failed_precondition(
            "staging target path missing (the plugin has STAGE_UNSTAGE_VOLUME)",
        ));
    }
    check_path("staging target path", &r.staging_target_path).map_err(status)?;
    Ok(PublishRequest {
        block: matches!(access, AccessRequest::Block),
        volume_id: r.volume_id,
        staging_path: r.staging_target_path,
        target_path: r.target_path,
        read_only: r.readonly,
    })
}

fn bytes_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl<H: Host> pb::node_server::Node for NodeService<H> {
    async fn node_stage_volume(
        &self,
        request: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let r = request.into_inner();
        let req = StageRequest {
            access: access(r.volume_capability.as_ref())?,
            context: merged_context(&r.volume_context, &r.publish_context),
            volume_id: r.volume_id,
            staging_path: r.staging_target_path,
            secrets: r.secrets,
        };
        let plan = req.plan().map_err(status)?;
        let id = req.volume_id;
        self.run(&id, move |ops| ops.stage_plan(&plan)).await?;
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let r = request.into_inner();
        check_volume_id(&r.volume_id).map_err(status)?;
        check_path("staging target path", &r.staging_target_path).map_err(status)?;
        let id = r.volume_id.clone();
        self.run(&id, move |ops| {
            ops.unstage(&r.volume_id, &r.staging_target_path)
        })
        .await?;
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let req = publish_request(request.into_inner())?;
        let id = req.volume_id.clone();
        self.run(&id, move |ops| ops.publish(&req)).await?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        check_volume_id(&r.volume_id).map_err(status)?;
        check_path("target path", &r.target_path).map_err(status)?;
        let id = r.volume_id.clone();
        self.run(&id, move |ops| ops.unpublish(&r.volume_id, &r.target_path))
            .await?;
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        use pb::volume_usage::Unit;
        let r = request.into_inner();
        check_volume_id(&r.volume_id).map_err(status)?;
        check_volume_path(&r.volume_path).map_err(status)?;
        let id = r.volume_id.clone();
        let stats = self
            .run_unlocked(&id, move |ops| ops.stats(&r.volume_id, &r.volume_path))
            .await?;
        let mut usage = Vec::new();
        if let Some(u) = stats.usage {
            usage.push(pb::VolumeUsage {
                available: bytes_i64(u.available_bytes),
                total: bytes_i64(u.total_bytes),
                used: bytes_i64(u.used_bytes),
                unit: Unit::Bytes as i32,
            });
            usage.push(pb::VolumeUsage {
                available: bytes_i64(u.free_inodes),
                total: bytes_i64(u.total_inodes),
                used: bytes_i64(u.used_inodes),
                unit: Unit::Inodes as i32,
            });
        }
        if let Some(total) = stats.block_total_bytes {
            usage.push(pb::VolumeUsage {
                total: bytes_i64(total),
                unit: Unit::Bytes as i32,
                ..pb::VolumeUsage::default()
            });
        }
        Ok(Response::new(pb::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(pb::VolumeCondition {
                abnormal: stats.abnormal.is_some(),
                message: stats.abnormal.unwrap_or_else(|| "ok".into()),
            }),
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        check_volume_id(&r.volume_id).map_err(status)?;
        check_volume_path(&r.volume_path).map_err(status)?;
        let required = match r.capacity_range {
            None => None,
            Some(c) => Some(u64::try_from(c.required_bytes).map_err(|_| {
                Status::invalid_argument("capacity_range.required_bytes is negative")
            })?),
        };
        if let Some(c) = r.capacity_range {
            if c.limit_bytes < 0 || (c.limit_bytes > 0 && c.limit_bytes < c.required_bytes) {
                return Err(Status::invalid_argument(
                    "capacity_range.limit_bytes is negative or below required_bytes",
                ));
            }
        }
        let id = r.volume_id.clone();
        let size = self
            .run(&id, move |ops| {
                ops.expand(&r.volume_id, &r.volume_path, required)
            })
            .await?;
        Ok(Response::new(pb::NodeExpandVolumeResponse {
            capacity_bytes: bytes_i64(size),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        use pb::node_service_capability::{rpc::Type, Rpc, Type as Cap};
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition,
        ]
        .into_iter()
        .map(|t| pb::NodeServiceCapability {
            r#type: Some(Cap::Rpc(Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        let node_id = self.inner.config.node_id.clone();
        Ok(Response::new(pb::NodeGetInfoResponse {
            accessible_topology: Some(pb::Topology {
                segments: [(TOPOLOGY_KEY.to_owned(), node_id.clone())].into(),
            }),
            node_id,
            max_volumes_per_node: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::fake::*;
    use super::*;
    use pb::node_server::Node;
    use pb::volume_capability::{AccessMode, MountVolume};

    fn service() -> (NodeService<FakeHost>, FakeHost) {
        let host = FakeHost::new(&crate::initiator_name("n1"), &[(IQN, GIB)]);
        host.state().dirs.insert(PathBuf::from(STAGING));
        let mut config = NodeConfig::new("n1", Security::Plaintext);
        config.device_timeout = Duration::from_secs(1);
        (NodeService::with_host(config, host.clone()), host)
    }

    fn mount_cap(mode: Mode, fs: &str) -> pb::VolumeCapability {
        pb::VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                ..MountVolume::default()
            })),
        }
    }

    fn stage(cap: Option<pb::VolumeCapability>) -> Request<pb::NodeStageVolumeRequest> {
        Request::new(pb::NodeStageVolumeRequest {
            volume_id: "pv1".into(),
            staging_target_path: STAGING.into(),
            volume_capability: cap,
            volume_context: HashMap::from([("iqn".to_owned(), IQN.to_owned())]),
            publish_context: HashMap::from([
                ("portal".to_owned(), PORTAL.to_owned()),
                ("lun".to_owned(), "0".to_owned()),
            ]),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn the_grpc_lifecycle_works_and_errors_carry_csi_codes() {
        let (svc, host) = service();
        svc.node_stage_volume(stage(Some(mount_cap(Mode::SingleNodeWriter, "xfs"))))
            .await
            .unwrap();
        assert_eq!(host.state().luns[IQN].fs.as_deref(), Some("xfs"));
        let err = svc
            .node_stage_volume(stage(Some(mount_cap(Mode::SingleNodeWriter, "ext4"))))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        let publish = pb::NodePublishVolumeRequest {
            volume_id: "pv1".into(),
            staging_target_path: STAGING.into(),
            target_path: TARGET.into(),
            volume_capability: Some(mount_cap(Mode::SingleNodeWriter, "xfs")),
            readonly: true,
            ..Default::default()
        };
        svc.node_publish_volume(Request::new(publish.clone()))
            .await
            .unwrap();
        let no_staging = pb::NodePublishVolumeRequest {
            staging_target_path: String::new(),
            ..publish
        };
        assert_eq!(
            svc.node_publish_volume(Request::new(no_staging))
                .await
                .unwrap_err()
                .code(),
            tonic::Code::FailedPrecondition
        );
        let stats = svc
            .node_get_volume_stats(Request::new(pb::NodeGetVolumeStatsRequest {
                volume_id: "pv1".into(),
                volume_path: TARGET.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.usage.len(), 2);
        assert!(stats.usage.iter().all(|u| u.total > 0));
        assert!(!stats.volume_condition.unwrap().abnormal);
        // Not published here: nothing to undo, OK (see
        // `unpublish_of_a_volume_not_published_here_is_ok`).
        svc.node_unpublish_volume(Request::new(pb::NodeUnpublishVolumeRequest {
            volume_id: "ghost".into(),
            target_path: TARGET.into(),
        }))
        .await
        .unwrap();
        assert_eq!(
            host.state().mounts.len(),
            2,
            "another volume's call unmounted pv1"
        );
        svc.node_unpublish_volume(Request::new(pb::NodeUnpublishVolumeRequest {
            volume_id: "pv1".into(),
            target_path: TARGET.into(),
        }))
        .await
        .unwrap();
        svc.node_unstage_volume(Request::new(pb::NodeUnstageVolumeRequest {
            volume_id: "pv1".into(),
            staging_target_path: STAGING.into(),
        }))
        .await
        .unwrap();
        assert!(host.state().sessions.is_empty());
    }

    #[tokio::test]
    async fn missing_or_unknown_capability_parts_are_invalid_argument() {
        let (svc, host) = service();
        let no_type = pb::VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: None,
        };
        for cap in [
            None,
            Some(no_type),
            Some(mount_cap(Mode::Unknown, "ext4")),
            Some(mount_cap(Mode::SingleNodeWriter, "btrfs")),
        ] {
            let err = svc.node_stage_volume(stage(cap)).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        }
        let err = svc
            .node_expand_volume(Request::new(pb::NodeExpandVolumeRequest {
                volume_id: "pv1".into(),
                volume_path: TARGET.into(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: -1,
                    limit_bytes: 0,
                }),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(host.take_commands().is_empty());
    }

    #[tokio::test]
    async fn a_reader_only_access_mode_stages_read_only() {
        let (svc, host) = service();
        svc.node_stage_volume(stage(Some(mount_cap(Mode::MultiNodeReaderOnly, "ext4"))))
            .await
            .unwrap();
        let s = host.state();
        assert!(s.mounts[0].mount_ro());
    }

    #[tokio::test]
    async fn a_second_operation_on_a_busy_volume_is_aborted() {
        let (svc, _host) = service();
        let held = svc.try_busy("pv1").unwrap();
        let err = svc
            .node_stage_volume(stage(Some(mount_cap(Mode::SingleNodeWriter, "ext4"))))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
        // Stats only looks: it is answered while the volume is busy.
        let stats = svc
            .node_get_volume_stats(Request::new(pb::NodeGetVolumeStatsRequest {
                volume_id: "pv1".into(),
                volume_path: TARGET.into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(stats.code(), tonic::Code::NotFound);
        drop(held);
        svc.node_stage_volume(stage(Some(mount_cap(Mode::SingleNodeWriter, "ext4"))))
            .await
            .unwrap();
    }

    fn publish_req() -> pb::NodePublishVolumeRequest {
        pb::NodePublishVolumeRequest {
            volume_id: "pv1".into(),
            staging_target_path: STAGING.into(),
            target_path: TARGET.into(),
            volume_capability: Some(mount_cap(Mode::SingleNodeWriter, "ext4")),
            ..Default::default()
        }
    }

    /// CSI spec §"NodePublishVolume": `volume_id`, `target_path` and
    /// `volume_capability` are each "REQUIRED"; §"Error Scheme": "Missing
    /// required field | 3 INVALID_ARGUMENT"; and "Staging target path not
    /// set | 9 FAILED_PRECONDITION". All are checked before the volume is
    /// marked busy (no ABORTED for a bad request) or the host is touched.
    #[tokio::test]
    async fn publish_without_a_volume_capability_or_other_required_argument_is_invalid_before_anything_is_touched(
    ) {
        let (svc, host) = service();
        let _held = svc.try_busy("pv1").unwrap();
        let no_mode = pb::VolumeCapability {
            access_mode: None,
            ..mount_cap(Mode::SingleNodeWriter, "ext4")
        };
        let no_type = pb::VolumeCapability {
            access_type: None,
            ..mount_cap(Mode::SingleNodeWriter, "ext4")
        };
        let invalid = [
            pb::NodePublishVolumeRequest {
                volume_capability: None,
                ..publish_req()
            },
            // Capability checked before the staging path.
            pb::NodePublishVolumeRequest {
                volume_capability: None,
                staging_target_path: String::new(),
                ..publish_req()
            },
            pb::NodePublishVolumeRequest {
                volume_capability: Some(no_mode),
                ..publish_req()
            },
            pb::NodePublishVolumeRequest {
                volume_capability: Some(mount_cap(Mode::Unknown, "ext4")),
                ..publish_req()
            },
            pb::NodePublishVolumeRequest {
                volume_capability: Some(no_type),
                ..publish_req()
            },
            pb::NodePublishVolumeRequest {
                volume_capability: Some(mount_cap(Mode::SingleNodeWriter, "btrfs")),
                ..publish_req()
            },
            pb::NodePublishVolumeRequest {
                volume_id: String::new(),
                ..publish_req()
            },
            pb::NodePublishVolumeRequest {
                volume_id: "a/b".into(),
                ..publish_req()
            },
            pb::NodePublishVolumeRequest {
                target_path: String::new(),
                ..publish_req()
            },
            pb::NodePublishVolumeRequest {
                target_path: "relative/mount".into(),
                ..publish_req()
            },
            pb::NodePublishVolumeRequest {
                staging_target_path: "relative/staging".into(),
                ..publish_req()
            },
        ];
        for req in invalid {
            let err = svc
                .node_publish_volume(Request::new(req.clone()))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{req:?}: {err:?}");
        }
        let err = svc
            .node_publish_volume(Request::new(pb::NodePublishVolumeRequest {
                staging_target_path: String::new(),
                ..publish_req()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert_eq!(host.state().host_calls, 0);
        // The same request, complete, is merely busy.
        let err = svc
            .node_publish_volume(Request::new(publish_req()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
    }

    /// CSI spec §"NodeGetVolumeStats Errors" / §"NodeExpandVolume Errors":
    /// "Volume does not exist | 5 NOT_FOUND | Indicates that a volume
    /// corresponding to the specified `volume_id` does not exist on
    /// specified `volume_path`"; an empty `volume_path` is a missing
    /// required field, INVALID_ARGUMENT.
    #[tokio::test]
    async fn stats_and_expand_of_a_volume_not_on_this_node_are_not_found_whatever_the_path() {
        let (svc, host) = service();
        host.state().dirs.insert("/srv/unrelated".into());
        for (path, code) in [
            ("/not/there", tonic::Code::NotFound),
            ("relative/path", tonic::Code::NotFound),
            ("/var/lib/kubelet/../kubelet/pods", tonic::Code::NotFound),
            ("/srv/unrelated", tonic::Code::NotFound),
            (STAGING, tonic::Code::NotFound),
            ("", tonic::Code::InvalidArgument),
        ] {
            let stats = svc
                .node_get_volume_stats(Request::new(pb::NodeGetVolumeStatsRequest {
                    volume_id: "pv1".into(),
                    volume_path: path.into(),
                    ..Default::default()
                }))
                .await
                .unwrap_err();
            assert_eq!(stats.code(), code, "stats {path:?}: {stats:?}");
            let expand = svc
                .node_expand_volume(Request::new(pb::NodeExpandVolumeRequest {
                    volume_id: "pv1".into(),
                    volume_path: path.into(),
                    ..Default::default()
                }))
                .await
                .unwrap_err();
            assert_eq!(expand.code(), code, "expand {path:?}: {expand:?}");
        }
        assert!(host.take_commands().is_empty());
    }

    /// CSI spec §"NodeUnpublishVolume": "This operation MUST be
    /// idempotent"; §"NodeUnstageVolume": "If the volume corresponding to
    /// the `volume_id` is not staged to the `staging_target_path`, the
    /// Plugin MUST reply `0 OK`".
    #[tokio::test]
    async fn unpublish_and_unstage_of_a_volume_not_here_are_ok_and_run_nothing() {
        let (svc, host) = service();
        for target in [TARGET, "/never/published"] {
            svc.node_unpublish_volume(Request::new(pb::NodeUnpublishVolumeRequest {
                volume_id: "pv1".into(),
                target_path: target.into(),
            }))
            .await
            .unwrap();
        }
        svc.node_unstage_volume(Request::new(pb::NodeUnstageVolumeRequest {
            volume_id: "pv1".into(),
            staging_target_path: STAGING.into(),
        }))
        .await
        .unwrap();
        assert!(host.take_commands().is_empty());
        // Staged, but at another path than the one given: not staged there.
        svc.node_stage_volume(stage(Some(mount_cap(Mode::SingleNodeWriter, "ext4"))))
            .await
            .unwrap();
        host.take_commands();
        svc.node_unstage_volume(Request::new(pb::NodeUnstageVolumeRequest {
            volume_id: "pv1".into(),
            staging_target_path: "/elsewhere".into(),
        }))
        .await
        .unwrap();
        assert_eq!(host.take_changes(), Vec::<String>::new());
        assert_eq!(host.state().sessions.len(), 1);
    }

    /// A failed NodeStageVolume leaves nothing behind: afterwards the node
    /// answers as if it had never been called (stats NOT_FOUND, unstage OK
    /// with nothing to do, a new stage runs and is not ABORTED).
    #[tokio::test]
    async fn a_failed_stage_leaves_no_record_and_later_calls_act_as_if_it_never_happened() {
        let (svc, host) = service();
        host.fail_commands_with("mount -t ext4");
        let err = svc
            .node_stage_volume(stage(Some(mount_cap(Mode::SingleNodeWriter, "ext4"))))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
        assert!(host.state().sessions.is_empty());
        let stats = svc
            .node_get_volume_stats(Request::new(pb::NodeGetVolumeStatsRequest {
                volume_id: "pv1".into(),
                volume_path: STAGING.into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(stats.code(), tonic::Code::NotFound);
        host.take_commands();
        svc.node_unstage_volume(Request::new(pb::NodeUnstageVolumeRequest {
            volume_id: "pv1".into(),
            staging_target_path: STAGING.into(),
        }))
        .await
        .unwrap();
        assert!(host.take_commands().is_empty());
        host.state().fail_matching.clear();
        svc.node_stage_volume(stage(Some(mount_cap(Mode::SingleNodeWriter, "ext4"))))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn get_info_reports_the_node_and_its_topology_and_capabilities() {
        let (svc, _host) = service();
        let info = svc
            .node_get_info(Request::new(pb::NodeGetInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.node_id, "n1");
        assert_eq!(
            info.accessible_topology.unwrap().segments[TOPOLOGY_KEY],
            "n1"
        );
        let caps = svc
            .node_get_capabilities(Request::new(pb::NodeGetCapabilitiesRequest {}))
            .await
            .unwrap()
            .into_inner()
            .capabilities;
        assert_eq!(caps.len(), 4);
    }
}
