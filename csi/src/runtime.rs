//! Where a volume's target runs: one interface, two implementations
//! (local processes for `cstor up` and tests; a Deployment + Service per
//! volume in Kubernetes, so the portal survives the target pod moving).
//!
//! Invariants every implementation keeps:
//! - `ensure_target` is idempotent and converges: calling it again with the
//!   same spec changes nothing; with a changed spec (replica set, allowed
//!   initiators) it brings the running target to the new spec.
//! - `delete_target` of a target that does not exist succeeds.
//! - A target never runs for a volume with two different specs at once
//!   (fencing by epoch on the replicas is the backstop, not the plan).

use std::future::Future;

/// What a volume's target needs to run: everything it is told on its
/// command line. The target is stateless apart from this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// Volume name; also the last part of the IQN. A DNS-1123 label (it
    /// names Kubernetes objects).
    pub volume: String,
    /// Replica daemons' data addresses (`host:port`), one per replica.
    pub replicas: Vec<String>,
    /// Replicas that must acknowledge a write (1..=replicas.len()).
    pub consistency_factor: u32,
    /// Initiator names admitted to log in; empty admits none (a volume not
    /// published to any node).
    pub allowed_initiators: Vec<String>,
    /// CHAP credentials the initiator must present, if any.
    pub chap: Option<Chap>,
}

/// One-way CHAP credentials (the target authenticates the initiator).
#[derive(Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: String,
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chap")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Where a running target can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEndpoint {
    /// iSCSI portal, `host:port`, stable for the volume's life.
    pub portal: String,
    /// The target's IQN.
    pub iqn: String,
    /// Management API endpoint (`http://host:port`).
    pub mgmt: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec cannot be run (bad name, no replicas, CF out of range).
    #[error("invalid target spec: {0}")]
    InvalidSpec(String),
    /// The runtime could not be reached or refused the request; retrying
    /// may help.
    #[error("target runtime unavailable: {0}")]
    Unavailable(String),
    /// Anything else, with the runtime's own message.
    #[error("target runtime: {0}")]
    Other(String),
}

/// Runs, finds and removes volume targets.
pub trait TargetRuntime: Send + Sync + 'static {
    /// Starts the volume's target (or updates it to `spec`) and returns
    /// where it listens once it is ready to accept logins.
    fn ensure_target(
        &self,
        spec: &TargetSpec,
    ) -> impl Future<Output = Result<TargetEndpoint, RuntimeError>> + Send;

    /// Stops the volume's target and removes what the runtime made for it.
    /// Succeeds when there is none.
    fn delete_target(&self, volume: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The volume's target once it serves, waiting for it within the
    /// runtime's bound: `None` when there is no target; `Unavailable` when
    /// one exists but does not serve within the bound. A target that exists
    /// is not yet one that serves: a retried CreateVolume must not take the
    /// first for the second.
    fn serving_target(
        &self,
        volume: &str,
    ) -> impl Future<Output = Result<Option<TargetEndpoint>, RuntimeError>> + Send;

    /// The volume's target, if one exists, serving or not (its portal is
    /// fixed either way).
    fn find_target(
        &self,
        volume: &str,
    ) -> impl Future<Output = Result<Option<TargetEndpoint>, RuntimeError>> + Send;
}
