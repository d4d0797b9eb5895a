//! cstor's Kubernetes objects: `CStorVolume` (one per volume, in the
//! controller's namespace) and `CStorPool` (one per pool node, cluster
//! scoped). Their CustomResourceDefinitions are generated from these types
//! ([`crds`], [`crds_yaml`]): the chart's `templates/crds.yaml` is that
//! output, and a test fails when they differ, so the schema cannot drift
//! from the code that reads and writes the objects.
//!
//! Invariants:
//! - A `CStorVolume` is a mirror, never the source of truth: the replicas
//!   hold the volume, the controller decides. Its spec is what the CSI
//!   controller decided (size, replicas, consistency factor, pools), its
//!   status what the volume's target reports; both are written by
//!   server-side apply under [`super::FIELD_MANAGER`] (see [`super::mirror`]).
//!   Deleting one changes nothing: the next sweep writes it again.
//! - A `CStorPool` is intent: which devices (or which file) make the pool
//!   of one node. `cstor csi pool-agent` (the replica DaemonSet's init
//!   container) creates the pool from it; the controller reports capacity,
//!   use and health in its status and holds the [`POOL_FINALIZER`] while
//!   the pool holds volume replicas.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every cstor object.
pub const GROUP: &str = "cstor.openebs.io";

/// Held on every `CStorPool` by the controller: a pool whose daemon still
/// holds volume replicas is not let go (its status says which).
pub const POOL_FINALIZER: &str = "cstor.openebs.io/pool-protection";

/// What the CSI controller decided for a volume.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1alpha1",
    kind = "CStorVolume",
    plural = "cstorvolumes",
    shortname = "cv",
    category = "cstor",
    namespaced,
    status = "CStorVolumeStatus",
    doc = "A cstor volume as the CSI controller decided it (spec) and its target reports it (status). A mirror written by the controller: the replicas hold the truth.",
    printcolumn = r#"{"name":"Capacity","type":"string","jsonPath":".spec.capacity"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.health","description":"healthy replicas / replicas"}"#,
    printcolumn = r#"{"name":"CF","type":"integer","jsonPath":".spec.consistencyFactor","description":"replicas that must acknowledge a write"}"#,
    printcolumn = r#"{"name":"ReadOnly","type":"boolean","jsonPath":".status.readOnly"}"#,
    printcolumn = r#"{"name":"Rebuild","type":"string","jsonPath":".status.rebuild","description":"progress of the replicas being rebuilt"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.epoch","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeSpec {
    /// Size in bytes.
    pub size_bytes: u64,
    /// Size for people (binary units, e.g. 10Gi).
    pub capacity: String,
    /// Number of replicas.
    pub replicas: u32,
    /// Replicas that must acknowledge a write (consistency factor); absent
    /// while the target cannot be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_factor: Option<u32>,
    /// The replica daemons holding the volume: their data addresses.
    pub pools: Vec<String>,
    /// For a clone: the snapshot it was made from, `volume@snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Where a volume stands, as its target reports it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VolumePhase {
    /// Every replica healthy.
    Healthy,
    /// At quorum, some replicas missing or rebuilding.
    Degraded,
    /// Below quorum: writes fail, reads go on.
    ReadOnly,
    /// No target runs, or it did not answer.
    Offline,
}

/// The volume's state, mirrored from its target's management API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeStatus {
    pub phase: VolumePhase,
    /// `healthy/total`, for `kubectl get`.
    pub health: String,
    pub healthy_replicas: u32,
    pub total_replicas: u32,
    /// Below quorum: writes are refused.
    pub read_only: bool,
    /// The target's epoch (fencing: replicas refuse older ones).
    pub epoch: u64,
    /// Each replica as the target sees it.
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// Rebuilds in progress for `kubectl get`, e.g. `45% ETA 120s`; empty
    /// when none runs.
    #[serde(default)]
    pub rebuild: String,
    /// The newest snapshot the target lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<SnapshotStatus>,
    /// Why the phase is what it is, when that is not obvious.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One replica of a volume as its target sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// The replica daemon's data address.
    pub address: String,
    /// Healthy, Degraded, Rebuilding, Failed or Offline.
    pub state: String,
    /// Highest io_seq it acknowledged to this target.
    pub acked_io_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildStatus>,
}

/// A rebuild in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildStatus {
    /// Data address of the replica it pulls from.
    pub source: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Whole percent done (0 to 100).
    pub percent: u32,
    /// Seconds left at the rate seen so far; absent until it moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
}

/// A snapshot of the volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    pub name: String,
    /// It holds every write below this io_seq.
    pub io_seq: u64,
}

/// The pool of one node: the replica DaemonSet's pod on that node creates
/// it from this object.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1alpha1",
    kind = "CStorPool",
    plural = "cstorpools",
    shortname = "csp",
    category = "cstor",
    status = "CStorPoolStatus",
    selectable = ".spec.node",
    doc = "The pool of one node: which block devices (or which file) back it. The replica daemon on that node creates it once and uses it; the controller reports capacity, use and health.",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Capacity","type":"string","jsonPath":".status.capacity"}"#,
    printcolumn = r#"{"name":"Used","type":"string","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.volumeReplicaCount","description":"volume replicas the pool holds"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolSpec {
    /// The node whose replica daemon runs this pool.
    pub node: String,
    /// Whole block devices (or existing files) backing the pool, in the
    /// order they join it. Adding one grows the pool.
    #[serde(default)]
    pub devices: Vec<String>,
    /// A sparse file backing the pool instead (under the chart's
    /// replica.hostDir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PoolFile>,
    /// Unit of allocation and copy-on-write, e.g. 64KiB (fixed once the
    /// pool exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<String>,
}

/// A file-backed pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolFile {
    /// File name under the replica's host directory (no `/`).
    pub name: String,
    /// Size, e.g. 100GiB.
    pub size: String,
}

/// Where a pool stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PoolPhase {
    /// Not created yet.
    Pending,
    /// Created; its daemon answers.
    Online,
    /// Created; its daemon does not answer.
    Offline,
    /// Being deleted: waits for its volume replicas to go.
    Terminating,
    /// The spec cannot be made into a pool (see the message).
    Error,
}

/// A pool's state: what the pool agent made (its address, devices,
/// message, error; field manager `cstor-pool-agent`) and what the replica
/// daemon reports through the controller (phase, capacity, use, volume
/// replicas; field manager `cstor-csi`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PoolPhase>,
    /// The replica daemon's management address (the agent writes it; the
    /// controller finds the pool by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mgmt_address: Option<String>,
    /// Devices the pool was made of, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// Devices of the spec that are not in the pool yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_devices: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// Capacity for people (e.g. 100Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Use for people (e.g. 12Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<String>,
    /// The volume replicas the pool holds, by volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_replicas: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_replica_count: Option<u32>,
    /// What the agent last did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_message: Option<String>,
    /// Why the agent could not make the pool from the spec (the pod waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_error: Option<String>,
    /// What the controller last saw (e.g. why deletion waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Both CRDs, in the order they are applied.
pub fn crds() -> [CustomResourceDefinition; 2] {
    [CStorPool::crd(), CStorVolume::crd()]
}

/// Header of the generated chart file.
pub const CRDS_HEADER: &str = "\
# Generated from csi/src/kube/crd.rs by `cstor csi crds`: edit the types,
# then regenerate (CSTOR_WRITE_CRDS=1 cargo test -p cstor-csi crds_yaml).
# Kept on `helm uninstall` (helm.sh/resource-policy: keep): the CStorPool
# objects are the pools' intent and must outlive the release.
";

/// Both CRDs as one YAML stream, as the chart holds them.
pub fn crds_yaml() -> Result<String, serde_json::Error> {
    let mut out = String::from(CRDS_HEADER);
    for crd in crds() {
        let mut value = serde_json::to_value(&crd)?;
        if let Some(meta) = value
            .get_mut("metadata")
            .and_then(serde_json::Value::as_object_mut)
        {
            let mut annotations = serde_json::Map::new();
            annotations.insert("helm.sh/resource-policy".into(), "keep".into());
            meta.insert("annotations".into(), annotations.into());
        }
        out.push_str("---\n");
        super::yaml::write(&mut out, &value);
    }
    Ok(out)
}

/// Binary units for people: the largest unit that keeps three significant
/// digits, e.g. `10Gi`, `1.5Ti`, `512Mi`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = if unit == 0 || value >= 100.0 || (value.fract() * 10.0).round() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    };
    let suffix = UNITS.get(unit).copied().unwrap_or("");
    format!("{text}{suffix}")
}

/// Labels every object the controller makes carries.
pub fn labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "cstor".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "cstor-csi".to_owned(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn chart_crds() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/cstor/templates/crds.yaml")
    }

    /// The chart's CRDs are exactly what the types generate. With
    /// CSTOR_WRITE_CRDS=1 the test writes them instead.
    #[test]
    fn crds_yaml_in_the_chart_is_generated_from_the_types() {
        let want = crds_yaml().unwrap();
        let path = chart_crds();
        if std::env::var("CSTOR_WRITE_CRDS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} differs from the CRDs csi/src/kube/crd.rs generates: run \
             `CSTOR_WRITE_CRDS=1 cargo test -p cstor-csi crds_yaml` (or \
             `cstor csi crds > {}`)",
            path.display(),
            path.display()
        );
    }

    #[test]
    fn crds_are_structural_with_a_status_subresource_and_columns() {
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            assert!(name.ends_with(".cstor.openebs.io"), "{name}");
            let version = &crd.spec.versions[0];
            assert!(version.served && version.storage, "{name}");
            assert!(
                version
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some()),
                "{name}: status is a subresource, so spec and status writers never race"
            );
            let columns = version.additional_printer_columns.as_deref().unwrap_or(&[]);
            assert!(columns.iter().any(|c| c.name == "Phase"), "{name}");
            let schema = serde_json::to_value(&version.schema).unwrap();
            let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
            assert_eq!(spec["type"], "object", "{name}");
        }
        assert_eq!(
            CStorVolume::crd().spec.scope,
            "Namespaced",
            "volumes live with the controller"
        );
        assert_eq!(CStorPool::crd().spec.scope, "Cluster");
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(1023), "1023");
        assert_eq!(human_bytes(10 << 30), "10Gi");
        assert_eq!(human_bytes(3 << 29), "1.5Gi");
        assert_eq!(human_bytes(100 << 40), "100Ti");
        assert_eq!(human_bytes(u64::MAX), "16384Pi");
    }
}
