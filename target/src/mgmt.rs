//! The target's management API (gRPC `cstor.v1.TargetManager`): the
//! volume's status per replica, snapshots and resize, and membership (add,
//! remove, consistency factor; `volume::membership`), each carried out by
//! the volume controller at quorum (see `volume::controller`, invariant 4),
//! and the volume's rebuild throttle (forwarded to its replicas; `volume`
//! module doc).
//!
//! A thin shell: every call turns into one [`Volume`] call; errors map to
//! gRPC codes as `target.proto` documents them.
//!
//! Security (docs/security.md, "What each port accepts"): served over
//! [`cstor_tls::grpc::incoming`], so a caller without a certificate of the
//! cluster's CA (or with an expired one) never completes the handshake;
//! then every call needs the right [`rights_of`] names for its method,
//! checked by [`RequireRights`] before the call reaches the service
//! (`PERMISSION_DENIED` otherwise; target and replica identities hold no
//! management right). In plaintext (`--insecure-plaintext`) every caller
//! holds every right, and the status says so
//! (`TargetStatus.insecure_plaintext`).

use std::net::SocketAddr;

use cstor_mgmt::v1::target_manager_server::{TargetManager, TargetManagerServer};
use cstor_mgmt::v1::{
    AddReplicaRequest, Member, Membership, RemoveReplicaRequest, SetConsistencyFactorRequest,
};
use cstor_mgmt::v1::{AllowedInitiators, GetAllowedInitiatorsRequest, SetAllowedInitiatorsRequest};
use cstor_mgmt::v1::{
    CreateSnapshotRequest, CreateSnapshotResponse, DeleteSnapshotRequest, DeleteSnapshotResponse,
    GetTargetStatusRequest, ListTargetSnapshotsRequest, ListTargetSnapshotsResponse, ResizeRequest,
    TargetRebuild, TargetReplica, TargetReplicaState, TargetSnapshot, TargetStatus,
};
use cstor_mgmt::v1::{
    GetScrubStatusRequest, ScrubRange, ScrubStatus as ScrubStatusMessage, StartScrubRequest,
    StopScrubRequest,
};
use cstor_mgmt::v1::{
    GetTargetRebuildThrottleRequest, SetTargetRebuildThrottleRequest, TargetRebuildThrottle,
};
use cstor_tls::grpc::RequireRights;
use cstor_tls::{Right, Security};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::iscsi::access::{Allowlist, InitiatorAccess};
use crate::volume::scrub::{Scrub, ScrubError, ScrubStatus};
use crate::volume::{MemberRef, ReplicaState, Volume, VolumeError, VolumeStatus};

/// Where `cstor target` serves the API unless told otherwise (and where
/// `cstor ctl --target` looks by default).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7700,
));

/// Most initiator names a SetAllowedInitiators call may list (a volume is
/// attached to one node, a handful while it moves).
pub const MAX_ALLOWED_INITIATORS: usize = 64;

/// The service's path prefix (`/package.Service/`).
const SERVICE_PATH: &str = "/cstor.v1.TargetManager/";

/// The right each call needs, for [`RequireRights`] (module doc): the
/// reads (`GetStatus`, `ListSnapshots`, `GetAllowedInitiators`,
/// `GetRebuildThrottle`, `GetScrubStatus`) need [`Right::Read`]; every mutation, and any
/// path not listed here (a method added later, another service), needs
/// [`Right::Admin`]: fail closed.
pub fn rights_of(path: &str) -> Right {
    match path.strip_prefix(SERVICE_PATH) {
        Some(
            "GetStatus"
            | "ListSnapshots"
            | "GetAllowedInitiators"
            | "GetRebuildThrottle"
            | "GetScrubStatus",
        ) => Right::Read,
        _ => Right::Admin,
    }
}

/// Why the management API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("management API: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The `TargetManager` service of one volume.
pub struct Service {
    volume: Volume,
    name: String,
    access: InitiatorAccess,
    /// The process runs with `--insecure-plaintext` (shown in the status).
    plaintext: bool,
    /// The volume's scrub.
    scrub: Scrub,
}

impl Service {
    /// The service of `volume`, in a process secured by `security` (the
    /// status reports whether that is plaintext).
    pub fn new(volume: Volume, name: impl Into<String>, security: &Security) -> Self {
        let name = name.into();
        Service {
            scrub: Scrub::new(volume.clone(), name.clone(), None),
            volume,
            name,
            access: InitiatorAccess::default(),
            plaintext: security.is_plaintext(),
        }
    }

    /// Serves `scrub` (the one the schedule and the metrics use) through
    /// the scrub calls. Without it they drive a scrub of their own.
    pub fn with_scrub(mut self, scrub: Scrub) -> Self {
        self.scrub = scrub;
        self
    }

    /// A scrub call must name the target's volume.
    fn check_volume(&self, volume: &str) -> Result<(), Status> {
        if volume == self.name {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "this target serves volume {:?}, not {volume:?}",
                self.name
            )))
        }
    }

    /// Serves `access` (the allowlist the target's logins read) through
    /// Set/GetAllowedInitiators. Without it those calls govern an
    /// allowlist no login reads.
    pub fn with_initiator_access(mut self, access: InitiatorAccess) -> Self {
        self.access = access;
        self
    }

    fn status(&self) -> TargetStatus {
        let mut status =
            status_message(&self.name, self.volume.block_size(), &self.volume.status());
        status.insecure_plaintext = self.plaintext;
        status
    }
}

/// Binds `addr` (before the volume is opened, so that a port conflict shows
/// at once).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MgmtError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MgmtError::Listen { addr, source })
}

/// Serves the API on `listener` until `shutdown`, every connection
/// secured by `security` and every call checked against [`rights_of`]
/// (module doc).
pub async fn serve(
    listener: TcpListener,
    service: Service,
    security: Security,
    shutdown: CancellationToken,
) -> Result<(), MgmtError> {
    tracing::info!(
        mgmt = ?listener.local_addr().ok(),
        volume = %service.name,
        security = %security.describe(),
        "target management API serving"
    );
    tonic::transport::Server::builder()
        .layer(RequireRights::new(rights_of))
        .add_service(TargetManagerServer::new(service))
        .serve_with_incoming_shutdown(
            cstor_tls::grpc::incoming(listener, security),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}

/// The status as the API shows it.
pub fn status_message(volume: &str, block_size: u32, s: &VolumeStatus) -> TargetStatus {
    let replicas = s
        .replicas
        .iter()
        .enumerate()
        .map(|(i, (addr, state))| TargetReplica {
            address: addr.to_string(),
            state: replica_state(*state) as i32,
            acked_io_seq: s.acked_io_seqs.get(i).copied().unwrap_or(0),
            in_flight: s.owed.get(i).map_or(0, |n| *n as u64),
            rebuild: s
                .rebuilds
                .get(i)
                .copied()
                .flatten()
                .map(|run| TargetRebuild {
                    source: u32::try_from(run.source).unwrap_or(u32::MAX),
                    from_io_seq: run.from_io_seq,
                    done_bytes: run.progress.done_bytes,
                    total_bytes: run.progress.total_bytes,
                    eta_seconds: s
                        .rebuild_etas
                        .get(i)
                        .copied()
                        .flatten()
                        .map(|d| d.as_secs()),
                    source_address: s
                        .replicas
                        .get(run.source)
                        .map_or_else(String::new, |(a, _)| a.to_string()),
                }),
            replica_id: format!("{:032x}", s.replica_ids.get(i).copied().unwrap_or(0)),
            rebuilt_bytes: s.rebuilt_bytes.get(i).copied().unwrap_or(0),
            checksum_errors: s.checksum_errors.get(i).copied().unwrap_or(0),
            checksum_errors_recent: s.checksum_errors_recent.get(i).copied().unwrap_or(0),
            checksum_warning: s.checksum_warnings.get(i).copied().unwrap_or(false),
        })
        .collect();
    TargetStatus {
        volume: volume.to_owned(),
        size_bytes: s.size_bytes,
        block_size_bytes: block_size,
        epoch: s.epoch,
        consistency_factor: u32::try_from(s.cf).unwrap_or(u32::MAX),
        healthy: u32::try_from(s.healthy).unwrap_or(u32::MAX),
        read_only: s.read_only,
        fenced: s.fenced,
        next_io_seq: s.next_io_seq,
        in_flight: s.in_flight as u64,
        barrier: s.barrier,
        replicas,
        membership_generation: s.membership_generation,
        rebuild_throttle_bytes_per_second: s.rebuild_throttle_bytes_per_sec,
        blocks_repaired: s.blocks_repaired,
        // The service fills it in (`Service::status`): it is the
        // process's, not the volume's.
        insecure_plaintext: false,
    }
}

/// A scrub's status as the API shows it.
pub fn scrub_message(volume: &str, s: &ScrubStatus) -> ScrubStatusMessage {
    ScrubStatusMessage {
        volume: volume.to_owned(),
        state: s.state.as_str().to_owned(),
        cursor_bytes: s.cursor,
        total_bytes: s.total_bytes,
        scrubbed_bytes: s.scrubbed_bytes,
        ranges_compared: s.ranges_compared,
        mismatched_ranges: s.mismatched_ranges,
        repaired_blocks: s.repaired_blocks,
        undecided_ranges: s.undecided_ranges,
        bad_block_ranges: s.bad_block_ranges,
        ranges: s
            .ranges
            .iter()
            .map(|r| ScrubRange {
                offset: r.offset,
                length: r.len,
                outcome: r.outcome.as_str().to_owned(),
                replicas: r.replicas.clone(),
                detail: r.detail.clone(),
            })
            .collect(),
        bytes_per_second: s.bytes_per_second,
        eta_seconds: s.eta.map(|d| d.as_secs()),
        passes_completed: s.passes_completed,
        last_error: s.last_error.clone().unwrap_or_default(),
        interval_seconds: s.interval.map_or(0, |d| d.as_secs()),
    }
}

/// A committed membership record as the API shows it.
pub fn membership_message(record: &cstor_proto::Membership) -> Membership {
    Membership {
        generation: record.generation,
        consistency_factor: u32::from(record.consistency_factor),
        members: record
            .members
            .iter()
            .map(|m| Member {
                replica_id: format!("{:032x}", m.replica_id),
                address: m.address.clone(),
            })
            .collect(),
    }
}

fn replica_state(state: ReplicaState) -> TargetReplicaState {
    match state {
        ReplicaState::Offline => TargetReplicaState::Offline,
        ReplicaState::Healthy => TargetReplicaState::Healthy,
        ReplicaState::Degraded => TargetReplicaState::Degraded,
        ReplicaState::Rebuilding => TargetReplicaState::Rebuilding,
        ReplicaState::Removed => TargetReplicaState::Removed,
        ReplicaState::Failed => TargetReplicaState::Failed,
    }
}

/// gRPC code of a failed volume request (target.proto's table).
fn grpc_status(err: VolumeError) -> Status {
    let msg = err.to_string();
    match err {
        VolumeError::OutOfRange => Status::invalid_argument(msg),
        VolumeError::Refused(_) => Status::failed_precondition(msg),
        VolumeError::NoSpace => Status::resource_exhausted(msg),
        VolumeError::ReadOnly { .. } | VolumeError::Unavailable | VolumeError::Fenced => {
            Status::unavailable(msg)
        }
        VolumeError::Unrecoverable { .. } => Status::data_loss(msg),
    }
}

#[tonic::async_trait]
impl TargetManager for Service {
    async fn get_status(
        &self,
        _: Request<GetTargetStatusRequest>,
    ) -> Result<Response<TargetStatus>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let name = request.into_inner().name;
        check_name(&name)?;
        tracing::info!(volume = %self.name, snapshot = %name, "snapshot requested");
        self.volume
            .create_snapshot(&name)
            .await
            .map_err(grpc_status)?;
        Ok(Response::new(CreateSnapshotResponse { name }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let name = request.into_inner().name;
        check_name(&name)?;
        tracing::info!(volume = %self.name, snapshot = %name, "snapshot deletion requested");
        self.volume
            .destroy_snapshot(&name)
            .await
            .map_err(grpc_status)?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        _: Request<ListTargetSnapshotsRequest>,
    ) -> Result<Response<ListTargetSnapshotsResponse>, Status> {
        let snapshots = self
            .volume
            .list_snapshots()
            .await
            .map_err(grpc_status)?
            .into_iter()
            .map(|s| TargetSnapshot {
                name: s.name.as_str().to_owned(),
                io_seq: s.io_seq,
            })
            .collect();
        Ok(Response::new(ListTargetSnapshotsResponse { snapshots }))
    }

    async fn resize(
        &self,
        request: Request<ResizeRequest>,
    ) -> Result<Response<TargetStatus>, Status> {
        let size_bytes = request.into_inner().size_bytes;
        let current = self.volume.size_bytes();
        if size_bytes < current {
            return Err(Status::invalid_argument(format!(
                "volume {} cannot shrink from {current} to {size_bytes} bytes",
                self.name
            )));
        }
        if !size_bytes.is_multiple_of(u64::from(self.volume.block_size().max(1))) {
            return Err(Status::invalid_argument(format!(
                "{size_bytes} bytes is not a multiple of the {}-byte block",
                self.volume.block_size()
            )));
        }
        tracing::info!(volume = %self.name, size_bytes, "resize requested");
        self.volume.resize(size_bytes).await.map_err(grpc_status)?;
        Ok(Response::new(self.status()))
    }

    async fn set_allowed_initiators(
        &self,
        request: Request<SetAllowedInitiatorsRequest>,
    ) -> Result<Response<AllowedInitiators>, Status> {
        let request = request.into_inner();
        if request.initiators.len() > MAX_ALLOWED_INITIATORS {
            return Err(Status::invalid_argument(format!(
                "{} initiators: at most {MAX_ALLOWED_INITIATORS}",
                request.initiators.len()
            )));
        }
        let allowlist = Allowlist::from_names(&request.initiators, request.allow_any)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(volume = %self.name, ?allowlist, "allowed initiators set");
        self.access.set(allowlist);
        Ok(Response::new(allowed_message(&self.access.get())))
    }

    async fn set_rebuild_throttle(
        &self,
        request: Request<SetTargetRebuildThrottleRequest>,
    ) -> Result<Response<TargetRebuildThrottle>, Status> {
        let bytes_per_second = request.into_inner().bytes_per_second;
        self.volume.set_rebuild_throttle(bytes_per_second);
        Ok(Response::new(TargetRebuildThrottle {
            bytes_per_second: self.volume.rebuild_throttle(),
        }))
    }

    async fn get_rebuild_throttle(
        &self,
        _: Request<GetTargetRebuildThrottleRequest>,
    ) -> Result<Response<TargetRebuildThrottle>, Status> {
        Ok(Response::new(TargetRebuildThrottle {
            bytes_per_second: self.volume.rebuild_throttle(),
        }))
    }

    async fn start_scrub(
        &self,
        request: Request<StartScrubRequest>,
    ) -> Result<Response<ScrubStatusMessage>, Status> {
        let request = request.into_inner();
        self.check_volume(&request.volume)?;
        tracing::info!(volume = %self.name, from_start = request.from_start, "scrub start requested");
        let status = self
            .scrub
            .start(request.from_start, request.bytes_per_second)
            .map_err(|e| match e {
                ScrubError::Running => Status::failed_precondition(e.to_string()),
                ScrubError::Volume(e) => grpc_status(e),
            })?;
        Ok(Response::new(scrub_message(&self.name, &status)))
    }

    async fn stop_scrub(
        &self,
        request: Request<StopScrubRequest>,
    ) -> Result<Response<ScrubStatusMessage>, Status> {
        self.check_volume(&request.into_inner().volume)?;
        tracing::info!(volume = %self.name, "scrub stop requested");
        let status = self.scrub.stop().await;
        Ok(Response::new(scrub_message(&self.name, &status)))
    }

    async fn get_scrub_status(
        &self,
        request: Request<GetScrubStatusRequest>,
    ) -> Result<Response<ScrubStatusMessage>, Status> {
        self.check_volume(&request.into_inner().volume)?;
        Ok(Response::new(scrub_message(
            &self.name,
            &self.scrub.status(),
        )))
    }

    async fn get_allowed_initiators(
        &self,
        _: Request<GetAllowedInitiatorsRequest>,
    ) -> Result<Response<AllowedInitiators>, Status> {
        Ok(Response::new(allowed_message(&self.access.get())))
    }

    async fn add_replica(
        &self,
        request: Request<AddReplicaRequest>,
    ) -> Result<Response<Membership>, Status> {
        let text = request.into_inner().address;
        let address: SocketAddr = text
            .parse()
            .map_err(|_| Status::invalid_argument(format!("{text:?} is not host:port")))?;
        tracing::info!(volume = %self.name, %address, "replica add requested");
        let record = self
            .volume
            .add_replica(address)
            .await
            .map_err(grpc_status)?;
        Ok(Response::new(membership_message(&record)))
    }

    async fn remove_replica(
        &self,
        request: Request<RemoveReplicaRequest>,
    ) -> Result<Response<Membership>, Status> {
        let text = request.into_inner().replica;
        let which = MemberRef::parse(&text).map_err(|_| {
            Status::invalid_argument(format!(
                "{text:?} is neither host:port nor a 32-hex-digit replica id"
            ))
        })?;
        tracing::info!(volume = %self.name, replica = %text, "replica removal requested");
        let record = self
            .volume
            .remove_replica(which)
            .await
            .map_err(grpc_status)?;
        Ok(Response::new(membership_message(&record)))
    }

    async fn set_consistency_factor(
        &self,
        request: Request<SetConsistencyFactorRequest>,
    ) -> Result<Response<Membership>, Status> {
        let cf = request.into_inner().consistency_factor;
        let cf = usize::try_from(cf)
            .map_err(|_| Status::invalid_argument(format!("consistency factor {cf}")))?;
        tracing::info!(volume = %self.name, cf, "consistency factor change requested");
        let record = self
            .volume
            .set_consistency_factor(cf)
            .await
            .map_err(grpc_status)?;
        Ok(Response::new(membership_message(&record)))
    }
}

/// The allowlist as the API shows it.
fn allowed_message(allowlist: &Allowlist) -> AllowedInitiators {
    match allowlist {
        Allowlist::Any => AllowedInitiators {
            initiators: Vec::new(),
            allow_any: true,
        },
        Allowlist::Only(names) => AllowedInitiators {
            initiators: names.clone(),
            allow_any: false,
        },
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    cstor_proto::Name::new(name.to_owned())
        .map(drop)
        .map_err(|e| Status::invalid_argument(format!("snapshot name {name:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_message_carries_every_replica_and_its_rebuild() {
        let status = VolumeStatus {
            replicas: vec![
                ("127.0.0.1:1".parse().unwrap(), ReplicaState::Healthy),
                ("127.0.0.1:2".parse().unwrap(), ReplicaState::Rebuilding),
            ],
            cf: 1,
            healthy: 1,
            read_only: false,
            fenced: false,
            epoch: 4,
            next_io_seq: 99,
            rebuilds: vec![
                None,
                Some(crate::volume::RebuildRun {
                    source: 0,
                    from_io_seq: 10,
                    first_live_io_seq: 50,
                    accepted: true,
                    progress: cstor_proto::RebuildProgress {
                        done_bytes: 3,
                        total_bytes: 8,
                    },
                }),
            ],
            acked_io_seqs: vec![98, 97],
            owed: vec![0, 2],
            in_flight: 1,
            size_bytes: 1 << 20,
            barrier: true,
            replica_ids: vec![0xab, 0xcd],
            rebuild_etas: vec![None, Some(std::time::Duration::from_secs(42))],
            membership_generation: 3,
            rebuilt_bytes: vec![0, 1 << 20],
            rebuild_throttle_bytes_per_sec: 5 << 20,
            checksum_errors: vec![20, 0],
            checksum_errors_recent: vec![17, 0],
            checksum_warnings: vec![true, false],
            blocks_repaired: 19,
        };
        let m = status_message("v", 4096, &status);
        assert_eq!(m.replicas.len(), 2);
        assert_eq!(m.replicas[0].address, "127.0.0.1:1");
        assert_eq!(m.replicas[0].state, TargetReplicaState::Healthy as i32);
        assert_eq!(m.replicas[1].state, TargetReplicaState::Rebuilding as i32);
        assert_eq!(m.replicas[1].in_flight, 2);
        assert_eq!(m.replicas[0].acked_io_seq, 98);
        let rebuild = m.replicas[1].rebuild.clone().unwrap();
        assert_eq!((rebuild.done_bytes, rebuild.total_bytes), (3, 8));
        assert_eq!(rebuild.eta_seconds, Some(42));
        assert_eq!(rebuild.source_address, "127.0.0.1:1");
        assert_eq!(m.replicas[1].replica_id, format!("{:032x}", 0xcd));
        assert_eq!(m.membership_generation, 3);
        assert_eq!(m.replicas[1].rebuilt_bytes, 1 << 20);
        assert_eq!(m.rebuild_throttle_bytes_per_second, 5 << 20);
        assert_eq!(
            (
                m.replicas[0].checksum_errors,
                m.replicas[0].checksum_errors_recent,
                m.replicas[0].checksum_warning
            ),
            (20, 17, true)
        );
        assert!(!m.replicas[1].checksum_warning);
        assert_eq!(m.blocks_repaired, 19);
        assert!(m.replicas[0].rebuild.is_none());
        assert_eq!((m.size_bytes, m.epoch, m.next_io_seq), (1 << 20, 4, 99));
        assert!(m.barrier);
    }

    #[test]
    fn reads_need_the_read_right_and_everything_else_admin() {
        use cstor_mgmt::v1::target_manager_server::SERVICE_NAME;
        assert_eq!(SERVICE_PATH, format!("/{SERVICE_NAME}/"));
        let path = |method: &str| format!("/{SERVICE_NAME}/{method}");
        for read in [
            "GetStatus",
            "ListSnapshots",
            "GetAllowedInitiators",
            "GetRebuildThrottle",
            "GetScrubStatus",
        ] {
            assert_eq!(rights_of(&path(read)), Right::Read, "{read}");
        }
        for admin in [
            "CreateSnapshot",
            "DeleteSnapshot",
            "Resize",
            "SetAllowedInitiators",
            "AddReplica",
            "RemoveReplica",
            "SetConsistencyFactor",
            "SetRebuildThrottle",
            "StartScrub",
            "StopScrub",
        ] {
            assert_eq!(rights_of(&path(admin)), Right::Admin, "{admin}");
        }
        // Fail closed: an unknown method, another service, near misses.
        for unknown in [
            path("DestroyVolume"),
            path("getstatus"),
            path("GetStatus/extra"),
            "/cstor.v1.ReplicaManager/GetStatus".to_owned(),
            "/cstor.v1.ReplicaManager/GetPool".to_owned(),
            "GetStatus".to_owned(),
            String::new(),
        ] {
            assert_eq!(rights_of(&unknown), Right::Admin, "{unknown}");
        }
    }

    #[test]
    fn failed_volume_requests_map_to_the_documented_codes() {
        let code = |e| grpc_status(e).code();
        assert_eq!(
            code(VolumeError::Refused("x".into())),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(VolumeError::ReadOnly { cf: 2 }),
            tonic::Code::Unavailable
        );
        assert_eq!(code(VolumeError::Fenced), tonic::Code::Unavailable);
        assert_eq!(code(VolumeError::OutOfRange), tonic::Code::InvalidArgument);
        assert_eq!(
            code(VolumeError::Unrecoverable { offset: 4096 }),
            tonic::Code::DataLoss
        );
    }
}
