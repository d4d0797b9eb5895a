//! The Kubernetes objects that mirror what the controller sees: one
//! `CStorVolume` per volume (spec: what the controller decided; status:
//! what its target reports) and the controller's part of each
//! `CStorPool`'s status (phase, capacity, use, volume replicas), plus the
//! pool finalizer. Written by server-side apply under [`FIELD_MANAGER`].
//!
//! Invariants:
//! - Never the source of truth: objects are computed from the replica
//!   daemons and targets ([`Controller::observe`]) and never read back into
//!   a decision. A `CStorVolume` whose volume no pool holds is deleted, but
//!   only after a sweep in which every pool answered.
//! - Rate-limited, by count, not only by time: a sweep runs every
//!   [`SWEEP_INTERVAL`], or earlier when a CSI call changed a volume, but
//!   never sooner than [`MIN_SWEEP_GAP`] after the previous one; it writes
//!   at most [`MAX_WRITES_PER_SWEEP`] objects (the rest wait for the next
//!   sweep), and only objects whose content changed since it last wrote
//!   them. At most 50 writes per 5 s, 10 per second, whatever the load.
//! - A pool whose daemon holds volume replicas keeps [`POOL_FINALIZER`]:
//!   its deletion waits, and its status message names them. The finalizer
//!   goes once the daemon answers with no volume replica, or when the
//!   agent never created the pool (it holds nothing).
//! - The pure parts ([`volume_status`], [`pool_status`]) do no IO.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use cstor_mgmt::v1::{TargetReplicaState, TargetStatus};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::crd::{
    human_bytes, labels, CStorPool, CStorPoolStatus, CStorVolume, CStorVolumeSpec,
    CStorVolumeStatus, PoolPhase, RebuildStatus, ReplicaStatus, SnapshotStatus, VolumePhase,
    POOL_FINALIZER,
};
use super::rbac::{ApiCall, Scope};
use super::FIELD_MANAGER;
use crate::controller::observe::{PoolSeen, Seen, VolumeSeen};
use crate::controller::Controller;
use crate::runtime::TargetRuntime;

/// A sweep at least this often.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Sweeps never closer than this, however many calls change volumes.
pub const MIN_SWEEP_GAP: Duration = Duration::from_secs(5);
/// Most API writes (applies and deletes) in one sweep.
pub const MAX_WRITES_PER_SWEEP: usize = 50;

/// Label selecting the `CStorVolume`s this controller writes.
const MANAGED: &str = "app.kubernetes.io/managed-by=cstor-csi";

/// The API calls of this module, for the RBAC test (`rbac.rs`).
pub const CALLS: &[ApiCall] = &[
    // The sweep's stale-object check.
    ApiCall::new(Scope::Namespace, "cstor.openebs.io", "cstorvolumes", "list"),
    // Server-side apply that may create the object (authorized as both).
    ApiCall::new(
        Scope::Namespace,
        "cstor.openebs.io",
        "cstorvolumes",
        "patch",
    ),
    ApiCall::new(
        Scope::Namespace,
        "cstor.openebs.io",
        "cstorvolumes",
        "create",
    ),
    // An object whose volume no pool holds.
    ApiCall::new(
        Scope::Namespace,
        "cstor.openebs.io",
        "cstorvolumes",
        "delete",
    ),
    ApiCall::new(
        Scope::Namespace,
        "cstor.openebs.io",
        "cstorvolumes/status",
        "patch",
    ),
    ApiCall::new(Scope::Cluster, "cstor.openebs.io", "cstorpools", "list"),
    // The finalizer, on existing objects only (never creates one).
    ApiCall::new(Scope::Cluster, "cstor.openebs.io", "cstorpools", "patch"),
    ApiCall::new(
        Scope::Cluster,
        "cstor.openebs.io",
        "cstorpools/status",
        "patch",
    ),
];

/// A state's name for people ("Healthy", "Rebuilding", ...).
fn state_name(state: i32) -> String {
    match TargetReplicaState::try_from(state) {
        Ok(TargetReplicaState::Healthy) => "Healthy",
        Ok(TargetReplicaState::Degraded) => "Degraded",
        Ok(TargetReplicaState::Rebuilding) => "Rebuilding",
        Ok(TargetReplicaState::Failed) => "Failed",
        Ok(TargetReplicaState::Offline) => "Offline",
        Ok(TargetReplicaState::Removed) => "Removed",
        Ok(TargetReplicaState::Unspecified) | Err(_) => "Unknown",
    }
    .to_owned()
}

/// Whole percent of `done` in `total` (0 when total is 0), at most 100.
fn percent(done: u64, total: u64) -> u32 {
    if total == 0 {
        return 0;
    }
    let p = u128::from(done.min(total)) * 100 / u128::from(total);
    u32::try_from(p).unwrap_or(100)
}

/// The spec of a volume's object: what the controller decided, as the
/// replicas and the target hold it.
pub fn volume_spec(v: &VolumeSeen) -> CStorVolumeSpec {
    CStorVolumeSpec {
        size_bytes: v.size_bytes,
        capacity: human_bytes(v.size_bytes),
        replicas: u32::try_from(v.pools.len()).unwrap_or(u32::MAX),
        consistency_factor: v.target.as_ref().ok().map(|t| t.consistency_factor),
        pools: v.pools.clone(),
        origin: v.origin.clone(),
    }
}

/// The status of a volume's object from what its target reports.
pub fn volume_status(v: &VolumeSeen) -> CStorVolumeStatus {
    let status: &TargetStatus = match &v.target {
        Ok(status) => status,
        Err(why) => {
            let total = u32::try_from(v.pools.len()).unwrap_or(u32::MAX);
            return CStorVolumeStatus {
                phase: VolumePhase::Offline,
                health: format!("?/{total}"),
                healthy_replicas: 0,
                total_replicas: total,
                read_only: false,
                epoch: 0,
                replicas: Vec::new(),
                rebuild: String::new(),
                last_snapshot: None,
                message: Some(format!("target: {why}")),
            };
        }
    };
    let replicas: Vec<ReplicaStatus> = status
        .replicas
        .iter()
        .map(|r| ReplicaStatus {
            address: r.address.clone(),
            state: state_name(r.state),
            acked_io_seq: r.acked_io_seq,
            rebuild: r.rebuild.as_ref().map(|b| RebuildStatus {
                source: b.source_address.clone(),
                done_bytes: b.done_bytes,
                total_bytes: b.total_bytes,
                percent: percent(b.done_bytes, b.total_bytes),
                eta_seconds: b.eta_seconds,
            }),
        })
        .collect();
    let total = u32::try_from(replicas.len()).unwrap_or(u32::MAX);
    let phase = if status.read_only {
        VolumePhase::ReadOnly
    } else if status.healthy >= total {
        VolumePhase::Healthy
    } else {
        VolumePhase::Degraded
    };
    let rebuild = replicas
        .iter()
        .filter_map(|r| r.rebuild.as_ref())
        .map(|b| match b.eta_seconds {
            Some(eta) => format!("{}% ETA {eta}s", b.percent),
            None => format!("{}%", b.percent),
        })
        .collect::<Vec<_>>()
        .join(", ");
    CStorVolumeStatus {
        phase,
        health: format!("{}/{total}", status.healthy),
        healthy_replicas: status.healthy,
        total_replicas: total,
        read_only: status.read_only,
        epoch: status.epoch,
        replicas,
        rebuild,
        last_snapshot: v.last_snapshot.as_ref().map(|s| SnapshotStatus {
            name: s.name.clone(),
            io_seq: s.io_seq,
        }),
        message: status
            .fenced
            .then(|| "fenced: a target with a newer epoch took the volume".to_owned()),
    }
}

/// The controller's part of a pool object's status. `agent`: what the
/// pool agent wrote; `seen`: the configured pool at the agent's address,
/// if any; `deleting`: the object is being deleted.
pub fn pool_status(
    agent: &CStorPoolStatus,
    seen: Option<&PoolSeen>,
    deleting: bool,
) -> CStorPoolStatus {
    let mut out = CStorPoolStatus::default();
    let replicas: Option<Vec<String>> = seen.and_then(|p| {
        p.replicas
            .as_ref()
            .ok()
            .map(|r| r.iter().map(|v| v.name.clone()).collect())
    });
    if let Some(pool) = seen.and_then(|p| p.pool.as_ref().ok()) {
        out.capacity_bytes = Some(pool.capacity_bytes);
        out.used_bytes = Some(pool.used_bytes);
        out.free_bytes = Some(pool.free_bytes);
        out.capacity = Some(human_bytes(pool.capacity_bytes));
        out.used = Some(human_bytes(pool.used_bytes));
    }
    out.volume_replica_count = replicas
        .as_ref()
        .map(|r| u32::try_from(r.len()).unwrap_or(u32::MAX));
    out.volume_replicas.clone_from(&replicas);
    let answered = seen.is_some_and(|p| p.pool.is_ok());
    out.phase = Some(match (&agent.mgmt_address, &agent.agent_error) {
        _ if deleting => PoolPhase::Terminating,
        (_, Some(_)) => PoolPhase::Error,
        (None, None) => PoolPhase::Pending,
        (Some(_), None) if answered => PoolPhase::Online,
        (Some(_), None) => PoolPhase::Offline,
    });
    out.message = match (&agent.mgmt_address, seen) {
        (Some(addr), None) => Some(format!(
            "no pool of the controller (--pool) has the management address {addr}"
        )),
        (_, Some(p)) => p.pool.as_ref().err().map(|e| format!("daemon: {e}")),
        (None, None) => None,
    };
    if deleting {
        out.message = Some(match release_blocker(agent, seen) {
            Some(why) => format!("deletion waits: {why}"),
            None => "deletion allowed: the pool holds no volume replica".to_owned(),
        });
    }
    out
}

/// Why a pool being deleted must keep its finalizer, or `None` when it
/// may go.
pub fn release_blocker(agent: &CStorPoolStatus, seen: Option<&PoolSeen>) -> Option<String> {
    let addr = agent.mgmt_address.as_ref()?;
    let Some(seen) = seen else {
        return Some(format!(
            "cannot tell what the pool at {addr} holds: no pool of the controller has that address"
        ));
    };
    match &seen.replicas {
        Err(e) => Some(format!("cannot tell what the pool at {addr} holds: {e}")),
        Ok(r) if r.is_empty() => None,
        Ok(r) => {
            let names: BTreeSet<&str> = r.iter().map(|v| v.name.as_str()).collect();
            Some(format!(
                "the pool holds replicas of volume(s) {}: delete those volumes (or move their replicas) first",
                names.into_iter().collect::<Vec<_>>().join(", ")
            ))
        }
    }
}

/// Writes the mirror objects of one controller.
pub struct Mirror<R> {
    controller: Controller<R>,
    namespace: String,
    volumes: Api<CStorVolume>,
    pools: Api<CStorPool>,
    /// What was last applied per object key, to skip unchanged writes.
    written: HashMap<String, Value>,
}

impl<R: TargetRuntime> Mirror<R> {
    pub fn new(controller: Controller<R>, client: kube::Client, namespace: &str) -> Self {
        Mirror {
            controller,
            namespace: namespace.to_owned(),
            volumes: Api::namespaced(client.clone(), namespace),
            pools: Api::all(client),
            written: HashMap::new(),
        }
    }

    /// Sweeps until `shutdown` (module doc for the pace).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let changes = self.controller.changes();
        loop {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "mirror sweep incomplete");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(MIN_SWEEP_GAP) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SWEEP_INTERVAL.saturating_sub(MIN_SWEEP_GAP)) => {}
                () = changes.notified() => {}
            }
        }
    }

    /// One sweep: reads everything, writes what changed (bounded).
    pub async fn sweep(&mut self) -> Result<usize, kube::Error> {
        let seen = self.controller.observe().await;
        let mut budget = MAX_WRITES_PER_SWEEP;
        self.sweep_volumes(&seen, &mut budget).await?;
        self.sweep_pools(&seen, &mut budget).await?;
        Ok(MAX_WRITES_PER_SWEEP - budget)
    }

    /// Applies `body` to object `key` unless it is what was last written
    /// or the sweep's budget is spent.
    async fn write(
        &mut self,
        key: String,
        body: Value,
        budget: &mut usize,
        apply: impl std::future::Future<Output = Result<(), kube::Error>>,
    ) -> Result<(), kube::Error> {
        if self.written.get(&key) == Some(&body) || *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        apply.await?;
        self.written.insert(key, body);
        Ok(())
    }

    async fn sweep_volumes(&mut self, seen: &Seen, budget: &mut usize) -> Result<(), kube::Error> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for v in &seen.volumes {
            let object = json!({
                "apiVersion": "cstor.openebs.io/v1alpha1",
                "kind": "CStorVolume",
                "metadata": {
                    "name": v.id,
                    "namespace": self.namespace,
                    "labels": labels("volume"),
                },
                "spec": volume_spec(v),
            });
            let api = self.volumes.clone();
            let (name, p) = (v.id.clone(), params.clone());
            let body = object.clone();
            self.write(format!("cv/{}", v.id), object, budget, async move {
                api.patch(&name, &p, &Patch::Apply(body)).await.map(drop)
            })
            .await?;
            let status = json!({
                "apiVersion": "cstor.openebs.io/v1alpha1",
                "kind": "CStorVolume",
                "status": volume_status(v),
            });
            let api = self.volumes.clone();
            let (name, p) = (v.id.clone(), params.clone());
            let body = status.clone();
            self.write(format!("cv/{}/status", v.id), status, budget, async move {
                api.patch_status(&name, &p, &Patch::Apply(body))
                    .await
                    .map(drop)
            })
            .await?;
        }
        if !seen.complete {
            return Ok(());
        }
        let listed = self
            .volumes
            .list(&ListParams::default().labels(MANAGED))
            .await?;
        for object in listed {
            let name = object.name_any();
            if seen.volumes.iter().any(|v| v.id == name) || *budget == 0 {
                continue;
            }
            *budget -= 1;
            match self.volumes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(volume = %name, "CStorVolume of a volume no pool holds deleted")
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(e),
            }
            self.written.remove(&format!("cv/{name}"));
            self.written.remove(&format!("cv/{name}/status"));
        }
        Ok(())
    }

    async fn sweep_pools(&mut self, seen: &Seen, budget: &mut usize) -> Result<(), kube::Error> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for object in self.pools.list(&ListParams::default()).await? {
            let name = object.name_any();
            let agent = object.status.clone().unwrap_or_default();
            let deleting = object.metadata.deletion_timestamp.is_some();
            let matched = agent
                .mgmt_address
                .as_ref()
                .and_then(|addr| seen.pools.iter().find(|p| p.addr.mgmt.to_string() == *addr));
            let status = json!({
                "apiVersion": "cstor.openebs.io/v1alpha1",
                "kind": "CStorPool",
                "status": pool_status(&agent, matched, deleting),
            });
            let api = self.pools.clone();
            let (n, p) = (name.clone(), params.clone());
            let body = status.clone();
            self.write(format!("csp/{name}/status"), status, budget, async move {
                api.patch_status(&n, &p, &Patch::Apply(body))
                    .await
                    .map(drop)
            })
            .await?;
            let holds = object.finalizers().iter().any(|f| f == POOL_FINALIZER);
            let keep = !deleting || release_blocker(&agent, matched).is_some();
            if holds == keep {
                continue;
            }
            let finalizers: Vec<&str> = if keep {
                vec![POOL_FINALIZER]
            } else {
                Vec::new()
            };
            // Applying without the finalizer drops the one this manager
            // owns; with it, adds it.
            let body = json!({
                "apiVersion": "cstor.openebs.io/v1alpha1",
                "kind": "CStorPool",
                "metadata": { "name": name, "finalizers": finalizers },
            });
            let api = self.pools.clone();
            let (n, p) = (name.clone(), params.clone());
            let sent = body.clone();
            // Not skipped as unchanged: the object says whether it holds.
            self.written.remove(&format!("csp/{name}"));
            self.write(format!("csp/{name}"), body, budget, async move {
                api.patch(&n, &p, &Patch::Apply(sent)).await.map(drop)
            })
            .await?;
            if !keep {
                tracing::info!(pool = %name, "CStorPool released: it holds no volume replica");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cstor_mgmt::v1::{Pool, TargetRebuild, TargetReplica, TargetSnapshot, VolumeReplica};

    fn replica(address: &str, state: TargetReplicaState) -> TargetReplica {
        TargetReplica {
            address: address.into(),
            state: state.into(),
            acked_io_seq: 7,
            ..TargetReplica::default()
        }
    }

    fn seen(target: Result<TargetStatus, String>) -> VolumeSeen {
        VolumeSeen {
            id: "pvc-1".into(),
            size_bytes: 10 << 30,
            pools: vec![
                "10.0.0.1:7600".into(),
                "10.0.0.2:7600".into(),
                "10.0.0.3:7600".into(),
            ],
            origin: None,
            target,
            last_snapshot: Some(TargetSnapshot {
                name: "snap-1".into(),
                io_seq: 42,
            }),
        }
    }

    #[test]
    fn a_volume_with_a_rebuilding_replica_is_degraded_with_its_progress() {
        let mut rebuilding = replica("10.0.0.3:7600", TargetReplicaState::Rebuilding);
        rebuilding.rebuild = Some(TargetRebuild {
            source_address: "10.0.0.1:7600".into(),
            done_bytes: 45,
            total_bytes: 100,
            eta_seconds: Some(120),
            ..TargetRebuild::default()
        });
        let status = TargetStatus {
            healthy: 2,
            epoch: 9,
            consistency_factor: 2,
            replicas: vec![
                replica("10.0.0.1:7600", TargetReplicaState::Healthy),
                replica("10.0.0.2:7600", TargetReplicaState::Healthy),
                rebuilding,
            ],
            ..TargetStatus::default()
        };
        let v = seen(Ok(status));
        let s = volume_status(&v);
        assert_eq!(s.phase, VolumePhase::Degraded);
        assert_eq!(s.health, "2/3");
        assert_eq!((s.healthy_replicas, s.total_replicas, s.epoch), (2, 3, 9));
        assert_eq!(s.rebuild, "45% ETA 120s");
        assert_eq!(s.replicas[2].state, "Rebuilding");
        let r = s.replicas[2].rebuild.as_ref().unwrap();
        assert_eq!((r.percent, r.eta_seconds), (45, Some(120)));
        assert_eq!(s.last_snapshot.unwrap().io_seq, 42);
        let spec = volume_spec(&v);
        assert_eq!((spec.replicas, spec.consistency_factor), (3, Some(2)));
        assert_eq!(spec.capacity, "10Gi");
    }

    #[test]
    fn below_quorum_is_read_only_and_no_target_is_offline_with_why() {
        let status = TargetStatus {
            healthy: 1,
            read_only: true,
            replicas: vec![
                replica("a", TargetReplicaState::Healthy),
                replica("b", TargetReplicaState::Offline),
                replica("c", TargetReplicaState::Failed),
            ],
            ..TargetStatus::default()
        };
        assert_eq!(
            volume_status(&seen(Ok(status))).phase,
            VolumePhase::ReadOnly
        );
        let offline = volume_status(&seen(Err("no target runs".into())));
        assert_eq!(offline.phase, VolumePhase::Offline);
        assert_eq!(offline.health, "?/3");
        assert_eq!(offline.message.as_deref(), Some("target: no target runs"));
        assert_eq!(
            volume_spec(&seen(Err(String::new()))).consistency_factor,
            None
        );
    }

    #[test]
    fn rebuild_percent_never_exceeds_100_nor_divides_by_zero() {
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(5, 3), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
        assert_eq!(percent(1, 3), 33);
    }

    fn pool_seen(volumes: &[&str]) -> PoolSeen {
        PoolSeen {
            addr: crate::mgmt::PoolAddr {
                mgmt: "10.0.0.1:7601".parse().unwrap(),
                data: "10.0.0.1:7600".parse().unwrap(),
            },
            pool: Ok(Pool {
                capacity_bytes: 100 << 30,
                used_bytes: 12 << 30,
                free_bytes: 88 << 30,
                ..Pool::default()
            }),
            replicas: Ok(volumes
                .iter()
                .map(|n| VolumeReplica {
                    name: (*n).into(),
                    ..VolumeReplica::default()
                })
                .collect()),
        }
    }

    fn agent() -> CStorPoolStatus {
        CStorPoolStatus {
            mgmt_address: Some("10.0.0.1:7601".into()),
            ..CStorPoolStatus::default()
        }
    }

    #[test]
    fn a_pool_reports_capacity_use_and_its_volume_replicas() {
        let p = pool_seen(&["pvc-1", "pvc-2"]);
        let s = pool_status(&agent(), Some(&p), false);
        assert_eq!(s.phase, Some(PoolPhase::Online));
        assert_eq!(s.capacity.as_deref(), Some("100Gi"));
        assert_eq!(s.used.as_deref(), Some("12Gi"));
        assert_eq!(s.volume_replica_count, Some(2));
        assert_eq!(s.message, None);
        let none = pool_status(&CStorPoolStatus::default(), None, false);
        assert_eq!(none.phase, Some(PoolPhase::Pending));
        let mut failed = agent();
        failed.agent_error = Some("no such device /dev/sdz".into());
        assert_eq!(
            pool_status(&failed, None, false).phase,
            Some(PoolPhase::Error)
        );
    }

    #[test]
    fn deleting_a_pool_that_holds_volume_replicas_waits_and_names_them() {
        let p = pool_seen(&["pvc-b", "pvc-a"]);
        let why = release_blocker(&agent(), Some(&p)).unwrap();
        assert!(why.contains("pvc-a, pvc-b"), "{why}");
        let s = pool_status(&agent(), Some(&p), true);
        assert_eq!(s.phase, Some(PoolPhase::Terminating));
        assert!(s.message.unwrap().contains("deletion waits"));
        // Empty, or never created: it may go.
        assert_eq!(release_blocker(&agent(), Some(&pool_seen(&[]))), None);
        assert_eq!(release_blocker(&CStorPoolStatus::default(), None), None);
        // Not reachable or not one of ours: it cannot tell, so it waits.
        assert!(release_blocker(&agent(), None).is_some());
        let mut down = pool_seen(&[]);
        down.replicas = Err("did not answer".into());
        assert!(release_blocker(&agent(), Some(&down)).is_some());
    }
}

/// Sweeps against fake replica daemons and the scripted API server
/// (recorded-style responses written here): the requests a sweep makes,
/// and that a second sweep with nothing changed writes nothing.
#[cfg(test)]
mod sweep_tests {
    use super::*;
    use crate::controller::tests::{controller, fake_pools};
    use crate::kube::mock::{Exchange, Script};
    use crate::runtime::{RuntimeError, TargetEndpoint, TargetSpec};
    use cstor_mgmt::v1::replica_manager_server::ReplicaManager;
    use cstor_mgmt::v1::CreateVolumeRequest;
    use http::Method;

    /// A runtime with no target at all (a double).
    struct NoTargets;

    impl TargetRuntime for NoTargets {
        async fn ensure_target(&self, _: &TargetSpec) -> Result<TargetEndpoint, RuntimeError> {
            Err(RuntimeError::Other("not in this double".into()))
        }
        async fn delete_target(&self, _: &str) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn serving_target(&self, _: &str) -> Result<Option<TargetEndpoint>, RuntimeError> {
            Ok(None)
        }
        async fn find_target(&self, _: &str) -> Result<Option<TargetEndpoint>, RuntimeError> {
            Ok(None)
        }
    }

    const VOLUME: &str = "/apis/cstor.openebs.io/v1alpha1/namespaces/cstor/cstorvolumes/pvc-1";
    const VOLUMES: &str = "/apis/cstor.openebs.io/v1alpha1/namespaces/cstor/cstorvolumes";
    const POOLS: &str = "/apis/cstor.openebs.io/v1alpha1/cstorpools";
    const STORED: &str = r#"{"apiVersion":"cstor.openebs.io/v1alpha1","kind":"CStorVolume",
        "metadata":{"name":"pvc-1","namespace":"cstor","uid":"u1","resourceVersion":"1"},
        "spec":{"sizeBytes":1073741824,"capacity":"1Gi","replicas":2,"pools":["10.0.0.1:7600","10.0.0.2:7600"]}}"#;

    fn list(kind: &str, items: &str) -> String {
        format!(
            r#"{{"apiVersion":"cstor.openebs.io/v1alpha1","kind":"{kind}","metadata":{{"resourceVersion":"1"}},"items":[{items}]}}"#
        )
    }

    #[tokio::test]
    async fn a_sweep_applies_spec_then_status_and_a_second_one_writes_nothing_unchanged() {
        let stale = STORED.replace("\"pvc-1\"", "\"pvc-gone\"");
        let volumes = list("CStorVolumeList", &format!("{STORED},{stale}"));
        let pools = list("CStorPoolList", "");
        let apply = |path: &str| {
            Exchange::new(Method::PATCH, path, 200, STORED)
                .content_type("application/apply-patch+yaml")
                .query("fieldManager", "cstor-csi")
        };
        let script = Script::new([
            apply(VOLUME).body(|b| {
                (b["spec"]["replicas"] == 2 && b["spec"]["capacity"] == "1Gi")
                    .then_some(())
                    .ok_or_else(|| format!("spec {b}"))
            }),
            apply(&format!("{VOLUME}/status")).body(|b| {
                (b["status"]["phase"] == "Offline" && b["status"]["health"] == "?/2")
                    .then_some(())
                    .ok_or_else(|| format!("status {b}"))
            }),
            Exchange::new(Method::GET, VOLUMES, 200, &volumes).query(
                "labelSelector",
                "app.kubernetes.io%2Fmanaged-by%3Dcstor-csi",
            ),
            // Every pool answered and none holds pvc-gone: its object goes.
            Exchange::new(Method::DELETE, &format!("{VOLUMES}/pvc-gone"), 200, &stale),
            Exchange::new(Method::GET, POOLS, 200, &pools),
            // The second sweep: the same state, only the listings.
            Exchange::new(Method::GET, VOLUMES, 200, &list("CStorVolumeList", STORED)),
            Exchange::new(Method::GET, POOLS, 200, &pools),
        ]);
        let (addrs, fakes) = fake_pools(2).await;
        for fake in &fakes {
            fake.create_volume(tonic::Request::new(CreateVolumeRequest {
                name: "pvc-1".into(),
                size_bytes: 1 << 30,
                block_size: 4096,
                ..CreateVolumeRequest::default()
            }))
            .await
            .unwrap();
        }
        let mut mirror = Mirror::new(controller(addrs, NoTargets), script.client(), "cstor");
        assert_eq!(mirror.sweep().await.unwrap(), 3);
        assert_eq!(mirror.sweep().await.unwrap(), 0);
        script.finish().unwrap();
    }
}
