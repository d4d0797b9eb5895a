//! The controller against test doubles: in-process fake replica daemons
//! (a `ReplicaManager` over gRPC on loopback, holding volume replicas in a
//! map) and the Kubernetes runtime talking to the scripted API server of
//! `kube::mock` (recorded responses, not a live cluster).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cstor_mgmt::v1::replica_manager_server::{ReplicaManager, ReplicaManagerServer};
use cstor_mgmt::v1::{
    CreateVolumeRequest, DeleteVolumeRequest, DeleteVolumeResponse, GetPoolRequest,
    GetRebuildThrottleRequest, GetVolumeRequest, GrowVolumeRequest, ListSnapshotsRequest,
    ListSnapshotsResponse, ListVolumesRequest, ListVolumesResponse, Pool, RebuildThrottle,
    ReplicaState, SetRebuildThrottleRequest, VolumeReplica,
};
use http::Method;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

use super::{within, Controller, ControllerConfig};
use crate::certs::TargetCerts;
use crate::kube::mock::{Exchange, Script};
use crate::kube::{KubeConfig, KubeRuntime};
use crate::limits::{CONTROLLER_CALL_BUDGET, SIDECAR_TIMEOUT};
use crate::mgmt::{Clients, PoolAddr};
use crate::pb::csi::v1 as csi;
use crate::pb::csi::v1::controller_server::Controller as _;

/// A replica daemon's management API holding volume replicas in a map.
#[derive(Clone, Default)]
pub(crate) struct FakePool {
    name: String,
    volumes: Arc<Mutex<BTreeMap<String, VolumeReplica>>>,
}

impl FakePool {
    fn volumes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VolumeReplica>> {
        self.volumes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.volumes().keys().cloned().collect()
    }
}

#[tonic::async_trait]
impl ReplicaManager for FakePool {
    async fn get_pool(&self, _: Request<GetPoolRequest>) -> Result<Response<Pool>, Status> {
        let used: u64 = self.volumes().values().map(|v| v.size_bytes).sum();
        Ok(Response::new(Pool {
            name: self.name.clone(),
            guid: "0".repeat(32),
            capacity_bytes: 100 << 30,
            used_bytes: used,
            free_bytes: (100 << 30) - used,
            chunk_size_bytes: 64 << 10,
            ..Pool::default()
        }))
    }

    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<VolumeReplica>, Status> {
        let r = request.into_inner();
        let replica = VolumeReplica {
            name: r.name.clone(),
            size_bytes: r.size_bytes,
            block_size: r.block_size,
            provisioning: r.provisioning,
            replica_id: "1".repeat(32),
            state: ReplicaState::Offline.into(),
            origin: r.clone_of,
            ..VolumeReplica::default()
        };
        self.volumes().insert(r.name, replica.clone());
        Ok(Response::new(replica))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        self.volumes().remove(&request.into_inner().name);
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn grow_volume(
        &self,
        request: Request<GrowVolumeRequest>,
    ) -> Result<Response<VolumeReplica>, Status> {
        let r = request.into_inner();
        let mut volumes = self.volumes();
        let v = volumes
            .get_mut(&r.name)
            .ok_or_else(|| Status::not_found(r.name.clone()))?;
        v.size_bytes = r.size_bytes;
        Ok(Response::new(v.clone()))
    }

    async fn get_volume(
        &self,
        request: Request<GetVolumeRequest>,
    ) -> Result<Response<VolumeReplica>, Status> {
        let name = request.into_inner().name;
        self.volumes()
            .get(&name)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("volume {name}")))
    }

    async fn list_volumes(
        &self,
        _: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        Ok(Response::new(ListVolumesResponse {
            volumes: self.volumes().values().cloned().collect(),
        }))
    }

    async fn list_snapshots(
        &self,
        _: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        Ok(Response::new(ListSnapshotsResponse::default()))
    }

    async fn set_rebuild_throttle(
        &self,
        _: Request<SetRebuildThrottleRequest>,
    ) -> Result<Response<RebuildThrottle>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn get_rebuild_throttle(
        &self,
        _: Request<GetRebuildThrottleRequest>,
    ) -> Result<Response<RebuildThrottle>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// `n` fake replica daemons serving on loopback, in plaintext.
pub(crate) async fn fake_pools(n: u8) -> (Vec<PoolAddr>, Vec<FakePool>) {
    let mut addrs = Vec::new();
    let mut pools = Vec::new();
    for i in 1..=n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mgmt = listener.local_addr().unwrap();
        let pool = FakePool {
            name: format!("pool-{i}"),
            ..FakePool::default()
        };
        let server = tonic::transport::Server::builder()
            .add_service(ReplicaManagerServer::new(pool.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        addrs.push(PoolAddr {
            mgmt,
            data: format!("10.0.0.{i}:7600").parse().unwrap(),
        });
        pools.push(pool);
    }
    (addrs, pools)
}

pub(crate) fn controller<R: crate::runtime::TargetRuntime>(
    pools: Vec<PoolAddr>,
    runtime: R,
) -> Controller<R> {
    Controller::new(
        ControllerConfig {
            pools,
            known_nodes: Vec::new(),
            clients: Clients::new(cstor_tls::Security::Plaintext),
        },
        Arc::new(runtime),
    )
}

/// The Kubernetes runtime in plaintext without CHAP, reading a rollout at
/// most `polls` times with no pause between reads.
pub(crate) fn kube_runtime(script: &Script, polls: u32) -> KubeRuntime {
    let mut config = KubeConfig::new("cstor", "cstor:test");
    config.poll_interval = Duration::ZERO;
    config.polls = polls;
    config.chap = false;
    KubeRuntime::new(script.client(), config, TargetCerts::Plaintext)
}

pub(crate) fn create_request(name: &str) -> csi::CreateVolumeRequest {
    use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: "ext4".into(),
                ..MountVolume::default()
            })),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter.into(),
            }),
        }],
        parameters: HashMap::new(),
        ..csi::CreateVolumeRequest::default()
    }
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/cstor/deployments/pvc-1-target";
const SERVICE: &str = "/api/v1/namespaces/cstor/services/pvc-1";
const CHAP_SECRET: &str = "/api/v1/namespaces/cstor/secrets/pvc-1-chap";
const TLS_SECRET: &str = "/api/v1/namespaces/cstor/secrets/pvc-1-tls";

macro_rules! testdata {
    ($name:literal) => {
        include_str!(concat!("../kube/testdata/", $name))
    };
}

fn get(path: &str, response: &str) -> Exchange {
    Exchange::new(Method::GET, path, 200, response)
}

fn apply(path: &str, response: &str) -> Exchange {
    Exchange::new(Method::PATCH, path, 200, response)
        .content_type("application/apply-patch+yaml")
        .query("fieldManager", "cstor-csi")
}

/// The case (#19): CreateVolume times out waiting for a target
/// that never becomes available (UNAVAILABLE); the provisioner retries the
/// same request, which finds the replicas and the target's Deployment and
/// Service in place — the Deployment still at 0/1 available. The retry
/// must wait for the target again and answer UNAVAILABLE, not OK; only
/// once the Deployment is available does a retry answer OK. Doubles: fake
/// replica daemons, and the API server is scripted (recorded responses).
#[tokio::test]
async fn a_retried_create_volume_is_ok_only_once_its_target_serves() {
    let progressing = testdata!("deployment-progressing.json");
    let available = testdata!("deployment-available.json");
    let service = testdata!("service-applied.json");
    let script = Script::new([
        // First call: no target yet; one is made and never becomes
        // available within the two reads allowed.
        Exchange::new(
            Method::GET,
            DEPLOYMENT,
            404,
            testdata!("status-404-deployment.json"),
        ),
        apply(SERVICE, service),
        apply(DEPLOYMENT, testdata!("deployment-created.json")),
        Exchange::new(
            Method::DELETE,
            TLS_SECRET,
            404,
            testdata!("status-404-secret-tls.json"),
        ),
        Exchange::new(
            Method::DELETE,
            CHAP_SECRET,
            404,
            testdata!("status-404-secret.json"),
        ),
        get(DEPLOYMENT, progressing),
        get(DEPLOYMENT, progressing),
        // The retry: the target exists (Deployment and Service) ...
        get(DEPLOYMENT, progressing),
        get(SERVICE, service),
        // ... and is waited for again, still not available.
        get(DEPLOYMENT, progressing),
        get(DEPLOYMENT, progressing),
        get(DEPLOYMENT, progressing),
        // The next retry: available at last.
        get(DEPLOYMENT, available),
        get(SERVICE, service),
        get(DEPLOYMENT, available),
        get(SERVICE, service),
    ]);
    let (addrs, pools) = fake_pools(3).await;
    let controller = controller(addrs, kube_runtime(&script, 2));

    let first = controller
        .create_volume(Request::new(create_request("pvc-1")))
        .await;
    assert_eq!(
        first.as_ref().map_err(Status::code).err(),
        Some(Code::Unavailable),
        "{first:?}"
    );
    for pool in &pools {
        assert_eq!(pool.names(), ["pvc-1"], "the replicas were made");
    }

    let retry = controller
        .create_volume(Request::new(create_request("pvc-1")))
        .await;
    let Err(status) = retry else {
        panic!("a retry answered OK while the target is still 0/1 available");
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("not available"), "{status:?}");

    let last = controller
        .create_volume(Request::new(create_request("pvc-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(last.volume.unwrap().volume_id, "pvc-1");
    script.finish().unwrap();
}

/// A call whose work never ends answers UNAVAILABLE at its budget instead
/// of hanging until the sidecar gives up (a short budget here; the real
/// one's place below the sidecars' timeout is pinned by
/// `the_waits_nest_below_the_sidecar_timeout_the_chart_sets`).
#[tokio::test]
async fn a_call_that_never_ends_is_unavailable_at_its_budget() {
    let result = within(
        Duration::from_millis(1),
        "CreateVolume",
        std::future::pending::<Result<(), Status>>(),
    )
    .await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("a retry carries on"),
        "{status:?}"
    );
}

/// The chart's sidecar timeout (values.yaml `controller.timeout`) is the
/// one the controller's bounds are derived from, and every wait nests
/// inside the next: the target Deployment's progress deadline < the
/// runtime's rollout wait < the controller's call budget < the sidecars'
/// timeout.
#[test]
fn the_waits_nest_below_the_sidecar_timeout_the_chart_sets() {
    let values = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/cstor/values.yaml"),
    )
    .unwrap();
    let timeout = values
        .lines()
        .skip_while(|l| !l.starts_with("controller:"))
        .find_map(|l| l.trim().strip_prefix("timeout: "))
        .unwrap();
    assert_eq!(
        timeout,
        format!("{}s", SIDECAR_TIMEOUT.as_secs()),
        "values.yaml controller.timeout and limits::SIDECAR_TIMEOUT disagree"
    );
    let progress = Duration::from_secs(
        u64::try_from(crate::kube::objects::PROGRESS_DEADLINE_SECONDS).unwrap(),
    );
    let wait = crate::kube::DEFAULT_WAIT;
    assert!(progress < wait, "{progress:?} < {wait:?}");
    assert!(wait < CONTROLLER_CALL_BUDGET);
    assert!(CONTROLLER_CALL_BUDGET < SIDECAR_TIMEOUT);
    assert!(crate::limits::TARGET_START_TIMEOUT < CONTROLLER_CALL_BUDGET);
}
