//! [`TargetRuntime`] on Kubernetes: each volume's target runs as a
//! one-pod Deployment behind a ClusterIP Service named after the volume, so
//! the portal (the Service's ClusterIP) stays the same when the pod moves to
//! another node — cStor's model. Objects are built by [`objects`] without IO;
//! this module only sends them to the API server (kube-rs) and waits.
//!
//! Invariants:
//! - `ensure_target` writes with server-side apply under one field manager,
//!   so it is idempotent (an unchanged spec changes nothing, starts no
//!   rollout) and converges (a changed spec replaces the pod template).
//! - Two target pods of one volume never run at once: the Deployment uses
//!   the `Recreate` strategy, and `delete_target` deletes in the foreground
//!   and returns only once the Deployment (and so its pod) is gone.
//! - Every wait is bounded: at most [`KubeConfig::polls`] reads,
//!   [`KubeConfig::poll_interval`] apart.
//! - Deleting what does not exist (HTTP 404) is success.
//! - `find_target` reports a target whose Deployment and Service exist and
//!   which is not being deleted, ready or not (its portal is already fixed);
//!   `serving_target` only one whose rollout is complete (its pod ready: the
//!   volume opened at its replicas), waiting for it within the bound.
//!
//! - The volume's Secrets (its target's certificate, its CHAP credentials)
//!   are made once and never read back: the controller may create and
//!   delete Secrets but not get, list or watch them, so it cannot read any
//!   Secret of the namespace (the cluster CA's included). `ensure_target`
//!   creates each one, and a Secret that exists already (HTTP 409) is kept
//!   as it is; `delete_target` deletes them.
//!
//! Order of writes in `ensure_target`: the Secrets before the Deployment
//! that reads them; the Service before the Deployment (its ClusterIP is the
//! portal, and its address family the pod network's, which the target's
//! listen addresses follow); a Secret no longer wanted (TLS or CHAP turned
//! off) is deleted after the Deployment that stopped reading it.
//!
//! Tested against a scripted API server (`tests.rs`): no live cluster.

pub mod bootstrap;
pub mod crd;
pub mod mirror;
pub mod objects;
pub mod pool_agent;
pub mod rbac;
pub mod rollout;
pub mod yaml;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
pub(crate) mod mock;
#[cfg(test)]
mod tests;

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::certs::TargetCerts;
use crate::runtime::{RuntimeError, TargetEndpoint, TargetRuntime, TargetSpec};
use objects::{ChapCredentials, IpFamily, Template};
use rollout::Rollout;

/// The API calls of the target runtime (this module), for the RBAC test
/// (`rbac.rs`). A server-side apply that may create its object is
/// authorized as `patch` and as `create`.
pub const CALLS: &[rbac::ApiCall] = &[
    // find_target, serving_target, the rollout and delete waits.
    ns("apps", "deployments", "get"),
    ns("apps", "deployments", "patch"),
    ns("apps", "deployments", "create"),
    ns("apps", "deployments", "delete"),
    ns("", "services", "get"),
    ns("", "services", "patch"),
    ns("", "services", "create"),
    ns("", "services", "delete"),
    // Made once, never read back (module doc).
    ns("", "secrets", "create"),
    ns("", "secrets", "delete"),
];

const fn ns(group: &'static str, resource: &'static str, verb: &'static str) -> rbac::ApiCall {
    rbac::ApiCall::new(rbac::Scope::Namespace, group, resource, verb)
}

/// Field manager of every server-side apply (who owns the fields we set).
pub const FIELD_MANAGER: &str = "cstor-csi";
/// Default time between two reads while waiting for a rollout or a delete.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Default number of such reads: with the interval, a 120 s bound — below
/// [`crate::limits::CONTROLLER_CALL_BUDGET`] (150 s), itself below the
/// sidecars' `--timeout` (180 s), so the sidecar gets the controller's
/// answer rather than its own deadline; and above the target Deployment's
/// progress deadline ([`objects::PROGRESS_DEADLINE_SECONDS`], 100 s), so a
/// rollout that stalls is reported as such inside the wait. A slow image
/// pull on a fresh node makes the call UNAVAILABLE and its retry waits on.
pub const DEFAULT_POLLS: u32 = 60;

/// The longest wait of one runtime operation with the default bounds.
pub const DEFAULT_WAIT: Duration =
    Duration::from_secs(DEFAULT_POLL_INTERVAL.as_secs() * DEFAULT_POLLS as u64);

/// How the Kubernetes runtime makes targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// Namespace of every target object (the driver's own namespace).
    pub namespace: String,
    /// Image holding the `cstor` binary (the driver's own image).
    pub image: String,
    /// `IfNotPresent` (default), `Always` or `Never`.
    pub image_pull_policy: String,
    /// Time between two reads while waiting.
    pub poll_interval: Duration,
    /// Reads before giving up on a rollout or a delete.
    pub polls: u32,
    /// Every target requires mutual CHAP, with credentials made for its
    /// volume (on by default).
    pub chap: bool,
    /// The target containers' memory request and limit (quantities).
    pub memory_request: String,
    pub memory_limit: String,
}

impl KubeConfig {
    /// Targets in `namespace` from `image`, with the default bounds.
    pub fn new(namespace: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            image: image.into(),
            image_pull_policy: "IfNotPresent".into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            polls: DEFAULT_POLLS,
            chap: true,
            memory_request: objects::DEFAULT_TARGET_MEMORY_REQUEST.into(),
            memory_limit: objects::DEFAULT_TARGET_MEMORY_LIMIT.into(),
        }
    }

    /// The objects' template; `tls`: targets run with mutual TLS.
    fn template(&self, tls: bool) -> Template {
        Template {
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            tls,
            chap: self.chap,
            memory_request: self.memory_request.clone(),
            memory_limit: self.memory_limit.clone(),
        }
    }
}

/// Targets as Deployments + Services through the Kubernetes API server.
#[derive(Clone)]
pub struct KubeRuntime {
    deployments: Api<Deployment>,
    services: Api<Service>,
    secrets: Api<Secret>,
    config: KubeConfig,
    certs: TargetCerts,
}

impl Debug for KubeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRuntime")
            .field("config", &self.config)
            .field("certs", &self.certs)
            .finish_non_exhaustive()
    }
}

impl KubeRuntime {
    /// A runtime talking through `client` (in a pod:
    /// `kube::Client::try_default().await`, which uses the pod's service
    /// account; see deploy/kubernetes/rbac.yaml for what it must be allowed),
    /// securing targets with `certs`.
    pub fn new(client: kube::Client, config: KubeConfig, certs: TargetCerts) -> Self {
        let ns = config.namespace.as_str();
        Self {
            deployments: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client, ns),
            config,
            certs,
        }
    }

    /// Creates the volume's Secret `name` unless it exists (then it is
    /// kept: see the module doc). Never logs the Secret's data.
    async fn create_secret(&self, name: &str, secret: &Secret) -> Result<(), RuntimeError> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match self.secrets.create(&params, secret).await {
            Ok(_) => {
                tracing::info!(secret = name, "secret created");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
            Err(e) => Err(api_error("create", "secret", name, e)),
        }
    }

    /// Waits until the Deployment's rollout is complete, starting from the
    /// state `first` the apply returned.
    async fn wait_available(&self, volume: &str, first: Deployment) -> Result<(), RuntimeError> {
        let name = objects::deployment_name(volume);
        let mut current = first;
        for _ in 0..self.config.polls {
            match rollout::rollout(&current) {
                Rollout::Complete => return Ok(()),
                Rollout::Failed(why) => {
                    return Err(RuntimeError::Unavailable(format!(
                        "target of volume {volume} failed to roll out: {why}"
                    )))
                }
                Rollout::Progressing(why) => {
                    tracing::debug!(volume, %why, "waiting for the target to be available");
                }
            }
            tokio::time::sleep(self.config.poll_interval).await;
            current = self
                .deployments
                .get(&name)
                .await
                .map_err(|e| api_error("read", "deployment", &name, e))?;
        }
        let why = match rollout::rollout(&current) {
            Rollout::Complete => return Ok(()),
            Rollout::Failed(why) | Rollout::Progressing(why) => why,
        };
        Err(RuntimeError::Unavailable(format!(
            "target of volume {volume} not available after {} reads {:?} apart: {why}",
            self.config.polls, self.config.poll_interval
        )))
    }

    /// Deletes the Deployment in the foreground and waits until it is gone.
    async fn delete_deployment(&self, volume: &str) -> Result<(), RuntimeError> {
        let name = objects::deployment_name(volume);
        if !delete(
            &self.deployments,
            "deployment",
            &name,
            &DeleteParams::foreground(),
        )
        .await?
        {
            return Ok(());
        }
        for _ in 0..self.config.polls {
            tokio::time::sleep(self.config.poll_interval).await;
            let left = self
                .deployments
                .get_opt(&name)
                .await
                .map_err(|e| api_error("read", "deployment", &name, e))?;
            if left.is_none() {
                return Ok(());
            }
        }
        Err(RuntimeError::Unavailable(format!(
            "deployment {name} still there after {} reads {:?} apart",
            self.config.polls, self.config.poll_interval
        )))
    }
}

impl TargetRuntime for KubeRuntime {
    async fn ensure_target(&self, spec: &TargetSpec) -> Result<TargetEndpoint, RuntimeError> {
        objects::validate(spec)?;
        let template = self.config.template(!self.certs.is_plaintext());
        let volume = spec.volume.as_str();
        let cert = self
            .certs
            .issue(volume)
            .map_err(|e| RuntimeError::Other(e.to_string()))?;
        if let Some(cert) = &cert {
            let name = objects::tls_secret_name(volume);
            self.create_secret(&name, &objects::tls_secret(volume, &template, cert))
                .await?;
        }
        if template.chap {
            let chap =
                ChapCredentials::generate().map_err(|e| RuntimeError::Other(e.to_string()))?;
            let name = objects::chap_secret_name(volume);
            self.create_secret(&name, &objects::chap_secret(volume, &template, &chap))
                .await?;
        }
        let service_name = objects::service_name(volume);
        let service = apply(
            &self.services,
            "service",
            &service_name,
            &objects::service(spec, &template),
        )
        .await?;
        let endpoint = objects::endpoint(volume, &service)?;
        let family = objects::cluster_ip(volume, &service).map(IpFamily::of)?;
        let deployment = apply(
            &self.deployments,
            "deployment",
            &objects::deployment_name(volume),
            &objects::deployment(spec, &template, family),
        )
        .await?;
        let params = DeleteParams::default();
        if !template.tls {
            let name = objects::tls_secret_name(volume);
            delete(&self.secrets, "secret", &name, &params).await?;
        }
        if !template.chap {
            let name = objects::chap_secret_name(volume);
            delete(&self.secrets, "secret", &name, &params).await?;
        }
        self.wait_available(volume, deployment).await?;
        tracing::info!(volume, portal = %endpoint.portal, "target available");
        Ok(endpoint)
    }

    async fn delete_target(&self, volume: &str) -> Result<(), RuntimeError> {
        objects::validate_volume(volume)?;
        self.delete_deployment(volume).await?;
        let params = DeleteParams::default();
        delete(
            &self.services,
            "service",
            &objects::service_name(volume),
            &params,
        )
        .await?;
        for name in [
            objects::tls_secret_name(volume),
            objects::chap_secret_name(volume),
        ] {
            delete(&self.secrets, "secret", &name, &params).await?;
        }
        tracing::info!(volume, "target deleted");
        Ok(())
    }

    async fn serving_target(&self, volume: &str) -> Result<Option<TargetEndpoint>, RuntimeError> {
        let Some(deployment) = self.live_deployment(volume).await? else {
            return Ok(None);
        };
        self.wait_available(volume, deployment).await?;
        self.endpoint(volume).await
    }

    async fn find_target(&self, volume: &str) -> Result<Option<TargetEndpoint>, RuntimeError> {
        if self.live_deployment(volume).await?.is_none() {
            return Ok(None);
        }
        self.endpoint(volume).await
    }
}

impl KubeRuntime {
    /// The target Deployment of `volume`, unless there is none or it is
    /// being deleted (a target on its way out).
    async fn live_deployment(&self, volume: &str) -> Result<Option<Deployment>, RuntimeError> {
        objects::validate_volume(volume)?;
        let name = objects::deployment_name(volume);
        let deployment = self
            .deployments
            .get_opt(&name)
            .await
            .map_err(|e| api_error("read", "deployment", &name, e))?;
        Ok(deployment.filter(|d| d.metadata.deletion_timestamp.is_none()))
    }

    /// The endpoint of `volume`'s target Service, if it exists.
    async fn endpoint(&self, volume: &str) -> Result<Option<TargetEndpoint>, RuntimeError> {
        let name = objects::service_name(volume);
        let service = self
            .services
            .get_opt(&name)
            .await
            .map_err(|e| api_error("read", "service", &name, e))?;
        service
            .map(|service| objects::endpoint(volume, &service))
            .transpose()
    }
}

/// Server-side apply of `object`, forcing ownership of the fields we set
/// (we are their only writer). Returns the object as stored.
async fn apply<K>(api: &Api<K>, kind: &str, name: &str, object: &K) -> Result<K, RuntimeError>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .map_err(|e| api_error("apply", kind, name, e))
}

/// Deletes one object; `Ok(false)` if there was none.
async fn delete<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    params: &DeleteParams,
) -> Result<bool, RuntimeError>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
        Err(e) => Err(api_error("delete", kind, name, e)),
    }
}

/// Maps a client error to the runtime's: what the API server refused for
/// good (bad object, forbidden) is `Other`; what may pass on retry
/// (conflict, throttling, server errors, no connection) is `Unavailable`.
fn api_error(op: &str, kind: &str, name: &str, error: kube::Error) -> RuntimeError {
    let message = format!("{op} {kind} {name}: {error}");
    match &error {
        kube::Error::Api(status) => match status.code {
            409 | 429 | 500..=599 => RuntimeError::Unavailable(message),
            _ => RuntimeError::Other(message),
        },
        _ => RuntimeError::Unavailable(message),
    }
}
