//! Every bound and default of the CSI driver, named in one place.

use std::time::Duration;

/// The driver's name (GetPluginInfo), also the CSIDriver object's name.
pub const DRIVER_NAME: &str = "cstor.csi.openebs.io";

/// Size of a volume whose CreateVolume names no capacity.
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;

/// Replicas of a volume when `replicaCount` is not given (fewer when fewer
/// pools are configured, so a one-pool test cluster works unconfigured).
pub const DEFAULT_REPLICA_COUNT: u32 = 3;

/// Most replicas a volume may have (the target's limit).
pub const MAX_REPLICAS: u32 = 5;

/// Block size of every volume the driver creates (bytes).
pub const BLOCK_BYTES: u64 = 4096;

/// Longest CSI volume or snapshot name accepted (bytes); the CSI spec
/// asks plugins to take at least 128.
pub const MAX_CSI_NAME_BYTES: usize = 1024;

/// Longest volume id (a DNS-1123 label: it names Kubernetes objects).
pub const MAX_VOLUME_ID_BYTES: usize = 63;

/// Most entries in one ListVolumes / ListSnapshots page when the CO sets
/// no `max_entries` (or a larger one).
pub const MAX_PAGE_ENTRIES: usize = 1000;

/// Dialing a replica daemon's or a target's management API.
pub const MGMT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One management call that does no quorum work (status, listing, create).
pub const MGMT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A management call that waits for quorum (snapshot, resize): longer than
/// the target's hold time below quorum (20 s by default).
pub const MGMT_QUORUM_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The CSI sidecars' `--timeout` as the chart sets it
/// (`controller.timeout` in deploy/helm/cstor/values.yaml; a test reads it
/// there): how long a sidecar waits for one call before it gives up with
/// DEADLINE_EXCEEDED and retries.
pub const SIDECAR_TIMEOUT: Duration = Duration::from_secs(180);

/// Every Controller RPC answers within this, UNAVAILABLE when its work is
/// not done by then (what it did stays: every call is idempotent, and the
/// retry carries on). 30 s below [`SIDECAR_TIMEOUT`], so the sidecar always
/// gets the controller's answer, never its own deadline. The waits inside a
/// call are shorter still (the Kubernetes runtime's rollout wait,
/// `kube::DEFAULT_WAIT`, 120 s).
pub const CONTROLLER_CALL_BUDGET: Duration = Duration::from_secs(150);

/// How long a local target may take to start serving.
pub const TARGET_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the local runtime looks for dead target processes.
pub const TARGET_SUPERVISE_INTERVAL: Duration = Duration::from_secs(2);

/// Longest wait of the local runtime's supervisor before it tries again
/// to restart a target that failed to start.
pub const TARGET_RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Most targets one local runtime runs.
pub const MAX_LOCAL_TARGETS: usize = 1024;
