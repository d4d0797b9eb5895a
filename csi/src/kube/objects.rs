//! The Kubernetes objects that run one volume's target, built from its
//! [`TargetSpec`] without IO: a Deployment (one pod, `Recreate`), a
//! ClusterIP Service (the stable portal), the target's TLS Secret (its
//! certificate, `Target{[volume]}`) and its CHAP Secret (random mutual CHAP
//! credentials, read by the target through environment variables and by
//! the node plugin as CSI node-stage secrets).
//!
//! Invariants:
//! - A spec is validated completely before any object is built, so the API
//!   server never sees a half-valid target (and `cstor target` never exits
//!   at start on an argument we could have refused here).
//! - Secrets never appear in the Deployment: the container reads CHAP from
//!   the Secret by `secretKeyRef` and its certificate from the Secret
//!   mounted as a volume. Both Secrets are immutable: made once for the
//!   volume (the runtime never reads them back) and deleted with it.
//! - The target listens on its pod's IP (downward API `status.podIP`), not
//!   on every address.
//! - Every object carries the `app.kubernetes.io/*` labels and
//!   `cstor.openebs.io/volume`, so `kubectl get all,secrets -l
//!   cstor.openebs.io/volume=NAME` shows all of a volume's target.
//!
//! Names (cStor's): Service `VOLUME` (a DNS-1035 label, hence the rule on
//! volume names), Deployment `VOLUME-target`, Secrets `VOLUME-chap` and
//! `VOLUME-tls`. The StorageClass names the CHAP Secret to the node plugin
//! with `csi.storage.k8s.io/node-stage-secret-name: ${pv.name}-chap` (a
//! volume's id is its PV name, see `naming`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use crate::certs::TargetCert;
use crate::node::volume::keys;
use crate::runtime::{RuntimeError, TargetEndpoint, TargetSpec};

/// iSCSI port of every target (the IANA-registered iSCSI port).
pub const ISCSI_PORT: u16 = 3260;
/// The target's management API port (`cstor target --mgmt-listen`).
pub const MGMT_PORT: u16 = 7700;
/// The target's Prometheus metrics port (`cstor target --metrics-listen`),
/// a named container port (`metrics`) for a PodMonitor to scrape, and the
/// readiness probe's.
pub const METRICS_PORT: u16 = 9500;
/// Replicas a target accepts (`cstor target --replica`, 1 to 5).
pub const MAX_REPLICAS: usize = 5;
/// Longest Kubernetes label / DNS-1035 name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest iSCSI name (RFC 7143 §4.2.7.1).
pub const MAX_IQN_LEN: usize = 223;
/// CHAP secret length the target accepts, in bytes.
pub const CHAP_SECRET_LEN: std::ops::RangeInclusive<usize> = 12..=255;
/// Length of the CHAP secrets the runtime makes: alphanumeric characters,
/// about 143 bits of entropy, within what the target and open-iscsi take
/// ([`CHAP_SECRET_LEN`]).
pub const CHAP_GENERATED_SECRET_LEN: usize = 24;
/// The CHAP name the node plugin (initiator) authenticates as.
pub const CHAP_INITIATOR_USER: &str = "cstor-initiator";
/// The CHAP name the target answers as (mutual CHAP).
pub const CHAP_TARGET_USER: &str = "cstor-target";
/// How long a target pod stays bound to a node that stopped answering
/// before it is evicted (Kubernetes' default is 300 s). The volume is down
/// while its target's node is, and the target holds no state; replicas fence
/// the old target by epoch if it comes back.
pub const NODE_LOST_TOLERATION_SECONDS: i64 = 30;
/// The target Deployment's `progressDeadlineSeconds`: a rollout that made
/// no progress for this long is `ProgressDeadlineExceeded`, which ends the
/// controller's wait at once with the reason. Below the wait
/// ([`super::DEFAULT_WAIT`], 120 s) so that it can fire inside it
/// (Kubernetes' default, 600 s, never could); a test pins the order.
pub const PROGRESS_DEADLINE_SECONDS: i32 = 100;
/// Where the image keeps the binary (deploy/Dockerfile).
pub const BINARY: &str = "/usr/local/bin/cstor";
/// Prefix of every target's IQN; the volume name follows.
pub const TARGET_IQN_PREFIX: &str = "iqn.2016-09.com.openebs.cstor:";
/// Where the target's TLS Secret is mounted (its `--tls-dir`).
pub const TLS_MOUNT_PATH: &str = "/etc/cstor/tls";
/// File mode of the mounted TLS files: the private key is readable by the
/// container's user only.
pub const TLS_FILE_MODE: i32 = 0o400;
/// The environment variable holding the pod's IP (downward API), which the
/// target's listen addresses name.
pub const POD_IP_ENV: &str = "POD_IP";
/// Default memory request of a target container: an idle target.
pub const DEFAULT_TARGET_MEMORY_REQUEST: &str = "128Mi";
/// Default memory limit of a target container: its buffered IO data is
/// bounded by 256 MiB (target/src/limits.rs, MAX_TARGET_BUFFER_BYTES) and
/// what its replicas owe by 512 MiB (MAX_OWED_BYTES), shared between them.
pub const DEFAULT_TARGET_MEMORY_LIMIT: &str = "1Gi";

/// Label naming the volume on every object of its target.
pub const VOLUME_LABEL: &str = "cstor.openebs.io/volume";
/// Keys of the CHAP Secret: open-iscsi's own names, which the node plugin
/// reads from its node-stage secrets (`node::volume::keys`).
pub const CHAP_USER_KEY: &str = keys::CHAP_USERNAME;
pub const CHAP_SECRET_KEY: &str = keys::CHAP_PASSWORD;
pub const CHAP_TARGET_USER_KEY: &str = keys::CHAP_USERNAME_IN;
pub const CHAP_TARGET_SECRET_KEY: &str = keys::CHAP_PASSWORD_IN;
/// Keys of the TLS Secret (a `kubernetes.io/tls` Secret plus `ca.crt`),
/// the file names of a TLS directory.
pub const TLS_CA_KEY: &str = cstor_tls::issue::CA_FILE;
pub const TLS_CERT_KEY: &str = cstor_tls::issue::CERT_FILE;
pub const TLS_KEY_KEY: &str = cstor_tls::issue::KEY_FILE;

/// How the objects are made, apart from the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Namespace of every object.
    pub namespace: String,
    /// Image holding the `cstor` binary at [`BINARY`].
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    /// Targets run with mutual TLS (their TLS Secret mounted), else
    /// `--insecure-plaintext`.
    pub tls: bool,
    /// Targets require mutual CHAP (their CHAP Secret in the environment).
    pub chap: bool,
    /// The target container's memory request and limit (quantities).
    pub memory_request: String,
    pub memory_limit: String,
}

/// The address family of the pod network (the Service's cluster IP
/// tells it), which decides how a listen address around the pod IP is
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// `$(POD_IP):PORT`, bracketed for IPv6; Kubernetes expands the
    /// variable before the target starts.
    pub fn pod_ip_listen(self, port: u16) -> String {
        match self {
            IpFamily::V4 => format!("$({POD_IP_ENV}):{port}"),
            IpFamily::V6 => format!("[$({POD_IP_ENV})]:{port}"),
        }
    }
}

/// A target's Service name: the volume's name.
pub fn service_name(volume: &str) -> String {
    volume.to_owned()
}

/// A target's Deployment name.
pub fn deployment_name(volume: &str) -> String {
    format!("{volume}-target")
}

/// The Secret holding a volume's CHAP credentials.
pub fn chap_secret_name(volume: &str) -> String {
    format!("{volume}-chap")
}

/// The Secret holding a target's certificate.
pub fn tls_secret_name(volume: &str) -> String {
    format!("{volume}-tls")
}

/// The IQN of the volume's target.
pub fn target_iqn(volume: &str) -> String {
    format!("{TARGET_IQN_PREFIX}{volume}")
}

/// Checks the volume name alone: a DNS-1035 label (RFC 1035 §2.3.1:
/// lowercase letters, digits and '-', starting with a letter, ending with
/// a letter or digit, at most 63), as a Service name must be.
pub fn validate_volume(volume: &str) -> Result<(), RuntimeError> {
    let bad = |why: &str| {
        Err(RuntimeError::InvalidSpec(format!(
            "volume {volume:?}: {why}"
        )))
    };
    if volume.is_empty() || volume.len() > MAX_NAME_LEN {
        return bad("must be 1 to 63 characters");
    }
    if !volume.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("must start with a lowercase letter");
    }
    if !volume.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return bad("must end with a lowercase letter or a digit");
    }
    if !volume
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("may hold only lowercase letters, digits and '-'");
    }
    Ok(())
}

/// Checks everything `cstor target` would check at start, and what names
/// Kubernetes objects.
pub fn validate(spec: &TargetSpec) -> Result<(), RuntimeError> {
    validate_volume(&spec.volume)?;
    let bad = |why: String| {
        Err(RuntimeError::InvalidSpec(format!(
            "volume {}: {why}",
            spec.volume
        )))
    };
    if spec.replicas.is_empty() || spec.replicas.len() > MAX_REPLICAS {
        return bad(format!(
            "{} replicas, want 1 to {MAX_REPLICAS}",
            spec.replicas.len()
        ));
    }
    for replica in &spec.replicas {
        // The target dials replicas by address (no DNS), so an address it
        // cannot parse would only fail inside the pod.
        if replica.parse::<SocketAddr>().is_err() {
            return bad(format!("replica address {replica:?} is not IP:PORT"));
        }
    }
    let cf = usize::try_from(spec.consistency_factor).unwrap_or(usize::MAX);
    if cf == 0 || cf > spec.replicas.len() {
        return bad(format!(
            "consistency factor {} out of 1..={}",
            spec.consistency_factor,
            spec.replicas.len()
        ));
    }
    for name in &spec.allowed_initiators {
        let printable = name.chars().all(|c| c.is_ascii_graphic() && c != ',');
        if name.is_empty() || name.len() > MAX_IQN_LEN || !printable {
            return bad(format!("initiator name {name:?} is not an iSCSI name"));
        }
    }
    if spec.chap.is_some() {
        // The runtime makes each volume's CHAP credentials itself and keeps
        // them only in the volume's Secret (`chap_secret`).
        return bad("the Kubernetes runtime makes its own CHAP credentials; \
                    a spec must not carry any"
            .to_owned());
    }
    Ok(())
}

/// One volume's mutual CHAP credentials: the initiator's (the node plugin
/// logs in with them) and the target's (the target proves itself with
/// them). Never logged: `Debug` shows the names only.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: String,
    pub target_user: String,
    pub target_secret: String,
}

impl std::fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .field("target_user", &self.target_user)
            .finish_non_exhaustive()
    }
}

/// Why CHAP credentials could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a random CHAP secret: {0}")]
pub struct ChapError(String);

/// Random bytes drawn per generated secret: each is kept with probability
/// 248/256 (rejection sampling keeps the alphabet uniform), so 64 give
/// [`CHAP_GENERATED_SECRET_LEN`] characters but with a negligible chance.
const CHAP_RANDOM_BYTES: usize = 64;

const ALPHANUMERIC: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_secret() -> Result<String, ChapError> {
    let mut random = [0u8; CHAP_RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(|e| ChapError(e.to_string()))?;
    // 248 = 4 × 62: bytes below it map uniformly onto the alphabet.
    let secret: String = random
        .iter()
        .filter(|b| **b < 248)
        .filter_map(|b| ALPHANUMERIC.get(usize::from(*b) % ALPHANUMERIC.len()))
        .take(CHAP_GENERATED_SECRET_LEN)
        .map(|b| char::from(*b))
        .collect();
    if secret.len() < CHAP_GENERATED_SECRET_LEN {
        return Err(ChapError("too few usable random bytes".into()));
    }
    Ok(secret)
}

impl ChapCredentials {
    /// New random credentials; the two secrets differ (RFC 7143 §12.1.3).
    pub fn generate() -> Result<ChapCredentials, ChapError> {
        let secret = random_secret()?;
        let mut target_secret = random_secret()?;
        if target_secret == secret {
            target_secret = random_secret()?;
        }
        if target_secret == secret {
            return Err(ChapError("the random source repeats itself".into()));
        }
        Ok(ChapCredentials {
            user: CHAP_INITIATOR_USER.to_owned(),
            secret,
            target_user: CHAP_TARGET_USER.to_owned(),
            target_secret,
        })
    }
}

/// Labels on every object of the volume's target.
pub fn labels(volume: &str) -> BTreeMap<String, String> {
    let mut labels = selector(volume);
    labels.insert("app.kubernetes.io/name".into(), "cstor".into());
    labels.insert("app.kubernetes.io/instance".into(), volume.into());
    labels.insert("app.kubernetes.io/managed-by".into(), "cstor-csi".into());
    labels.insert("app.kubernetes.io/part-of".into(), "cstor".into());
    labels
}

/// The labels selecting the target pod: few and never changed (a
/// Deployment's selector is immutable).
pub fn selector(volume: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/component".to_owned(),
            "target".to_owned(),
        ),
        (VOLUME_LABEL.to_owned(), volume.to_owned()),
    ])
}

fn metadata(name: String, template: &Template, volume: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(template.namespace.clone()),
        labels: Some(labels(volume)),
        ..ObjectMeta::default()
    }
}

/// `cstor target`'s arguments for `spec` (never a secret); the listen
/// addresses name the pod's IP in `family`.
pub fn target_args(spec: &TargetSpec, template: &Template, family: IpFamily) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "target".into(),
        "--listen".into(),
        family.pod_ip_listen(ISCSI_PORT),
        "--mgmt-listen".into(),
        family.pod_ip_listen(MGMT_PORT),
        "--metrics-listen".into(),
        family.pod_ip_listen(METRICS_PORT),
        "--volume".into(),
        spec.volume.clone(),
        "--target-name".into(),
        target_iqn(&spec.volume),
        "--cf".into(),
        spec.consistency_factor.to_string(),
    ];
    if template.tls {
        args.extend(["--tls-dir".to_owned(), TLS_MOUNT_PATH.to_owned()]);
    } else {
        args.push("--insecure-plaintext".into());
    }
    for replica in &spec.replicas {
        args.extend(["--replica".to_owned(), replica.clone()]);
    }
    if spec.allowed_initiators.is_empty() {
        // The spec's empty list admits nobody; the CLI's empty list would
        // admit anybody.
        args.push("--deny-initiators".into());
    }
    for initiator in &spec.allowed_initiators {
        args.extend(["--allow-initiator".to_owned(), initiator.clone()]);
    }
    // CHAP comes in through CSTOR_CHAP_USER / CSTOR_CHAP_SECRET and
    // CSTOR_CHAP_TARGET_USER / CSTOR_CHAP_TARGET_SECRET, which the CLI reads
    // from the environment (see `deployment`).
    args
}

fn secret_env(volume: &str, var: &str, key: &str) -> EnvVar {
    EnvVar {
        name: var.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: chap_secret_name(volume),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The target's Deployment; `family` is the pod network's (see
/// [`IpFamily`]).
pub fn deployment(spec: &TargetSpec, template: &Template, family: IpFamily) -> Deployment {
    let volume = spec.volume.as_str();
    let mut env = vec![EnvVar {
        name: POD_IP_ENV.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }];
    if template.chap {
        env.extend([
            secret_env(volume, "CSTOR_CHAP_USER", CHAP_USER_KEY),
            secret_env(volume, "CSTOR_CHAP_SECRET", CHAP_SECRET_KEY),
            secret_env(volume, "CSTOR_CHAP_TARGET_USER", CHAP_TARGET_USER_KEY),
            secret_env(volume, "CSTOR_CHAP_TARGET_SECRET", CHAP_TARGET_SECRET_KEY),
        ]);
    }
    let (volumes, mounts) = if template.tls {
        (
            Some(vec![Volume {
                name: "tls".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(tls_secret_name(volume)),
                    default_mode: Some(TLS_FILE_MODE),
                    optional: Some(false),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            }]),
            Some(vec![VolumeMount {
                name: "tls".into(),
                mount_path: TLS_MOUNT_PATH.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
        )
    } else {
        (None, None)
    };
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let memory = |quantity: &str| {
        Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(quantity.to_owned()),
        )]))
    };
    let container = Container {
        name: "target".into(),
        image: Some(template.image.clone()),
        image_pull_policy: Some(template.image_pull_policy.clone()),
        command: Some(vec![BINARY.into()]),
        args: Some(target_args(spec, template, family)),
        env: Some(env),
        ports: Some(vec![
            port("iscsi", ISCSI_PORT),
            port("mgmt", MGMT_PORT),
            port("metrics", METRICS_PORT),
        ]),
        // Ready once the metrics endpoint answers, which it does only after
        // the volume opened at its replicas (its socket, like the iSCSI
        // and management ones, is bound before, and accepts into its
        // backlog, so a TCP probe would say ready too early). Not the
        // management API: the target's own certificate holds no right to
        // call it.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(cstor_mgmt::metrics_http::PATH.into()),
                port: IntOrString::String("metrics".into()),
                scheme: Some("HTTP".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: memory(&template.memory_request),
            limits: memory(&template.memory_limit),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: mounts,
        ..Container::default()
    };
    Deployment {
        metadata: metadata(deployment_name(volume), template, volume),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            selector: LabelSelector {
                match_labels: Some(selector(volume)),
                ..LabelSelector::default()
            },
            // Never two target pods for one volume, not even during an
            // update: the old one is gone before the new one starts.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(volume)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes,
                    // The target never talks to the API server.
                    automount_service_account_token: Some(false),
                    // Service environment variables (NAME_PORT, ...) could
                    // collide with the CSTOR_* variables the CLI reads.
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    tolerations: Some(
                        [
                            "node.kubernetes.io/not-ready",
                            "node.kubernetes.io/unreachable",
                        ]
                        .map(|key| Toleration {
                            key: Some(key.to_owned()),
                            operator: Some("Exists".into()),
                            effect: Some("NoExecute".into()),
                            toleration_seconds: Some(NODE_LOST_TOLERATION_SECONDS),
                            ..Toleration::default()
                        })
                        .to_vec(),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The target's Service: a ClusterIP that stays when the pod moves.
pub fn service(spec: &TargetSpec, template: &Template) -> Service {
    let volume = spec.volume.as_str();
    let port = |name: &str, port: u16| ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    Service {
        metadata: metadata(service_name(volume), template, volume),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(volume)),
            ports: Some(vec![port("iscsi", ISCSI_PORT), port("mgmt", MGMT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn secret_object(
    name: String,
    template: &Template,
    volume: &str,
    type_: &str,
    data: BTreeMap<String, ByteString>,
) -> Secret {
    Secret {
        metadata: metadata(name, template, volume),
        type_: Some(type_.to_owned()),
        data: Some(data),
        immutable: Some(true),
        ..Secret::default()
    }
}

/// The volume's CHAP Secret: the initiator's and the target's credentials
/// under open-iscsi's key names (the node plugin gets the Secret as its
/// node-stage secrets, the target reads it through `secretKeyRef`).
pub fn chap_secret(volume: &str, template: &Template, chap: &ChapCredentials) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    secret_object(
        chap_secret_name(volume),
        template,
        volume,
        "Opaque",
        BTreeMap::from([
            (CHAP_USER_KEY.to_owned(), bytes(&chap.user)),
            (CHAP_SECRET_KEY.to_owned(), bytes(&chap.secret)),
            (CHAP_TARGET_USER_KEY.to_owned(), bytes(&chap.target_user)),
            (
                CHAP_TARGET_SECRET_KEY.to_owned(),
                bytes(&chap.target_secret),
            ),
        ]),
    )
}

/// The target's TLS Secret (`kubernetes.io/tls`): the CA it trusts, its
/// certificate and key, mounted at [`TLS_MOUNT_PATH`].
pub fn tls_secret(volume: &str, template: &Template, cert: &TargetCert) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    secret_object(
        tls_secret_name(volume),
        template,
        volume,
        "kubernetes.io/tls",
        BTreeMap::from([
            (TLS_CA_KEY.to_owned(), bytes(&cert.ca_pem)),
            (TLS_CERT_KEY.to_owned(), bytes(&cert.issued.cert_pem)),
            (TLS_KEY_KEY.to_owned(), bytes(&cert.issued.key_pem)),
        ]),
    )
}

/// The cluster IP of the volume's `service`.
pub fn cluster_ip(volume: &str, service: &Service) -> Result<IpAddr, RuntimeError> {
    let cluster_ip = service
        .spec
        .as_ref()
        .and_then(|spec| spec.cluster_ip.as_deref())
        .unwrap_or_default();
    cluster_ip.parse().map_err(|_| {
        RuntimeError::Other(format!(
            "service {} of volume {volume} has no cluster IP (got {cluster_ip:?})",
            service.metadata.name.as_deref().unwrap_or_default()
        ))
    })
}

/// Where the target behind `service` listens. The portal is the Service's
/// ClusterIP, not its DNS name: the node plugin runs iscsiadm in the host's
/// namespaces, whose resolver does not know cluster DNS, while kube-proxy
/// routes the ClusterIP on every node.
pub fn endpoint(volume: &str, service: &Service) -> Result<TargetEndpoint, RuntimeError> {
    let ip = cluster_ip(volume, service)?;
    Ok(TargetEndpoint {
        portal: SocketAddr::new(ip, ISCSI_PORT).to_string(),
        iqn: target_iqn(volume),
        mgmt: format!("http://{}", SocketAddr::new(ip, MGMT_PORT)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Chap;
    use proptest::prelude::*;

    fn spec() -> TargetSpec {
        TargetSpec {
            volume: "pvc-1".into(),
            replicas: vec!["10.0.0.1:7600".into(), "10.0.0.2:7600".into()],
            consistency_factor: 2,
            allowed_initiators: vec!["iqn.2016-09.com.openebs.cstor:node.w1".into()],
            chap: None,
        }
    }

    fn template() -> Template {
        Template {
            namespace: "cstor".into(),
            image: "cstor:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            tls: true,
            chap: true,
            memory_request: DEFAULT_TARGET_MEMORY_REQUEST.into(),
            memory_limit: DEFAULT_TARGET_MEMORY_LIMIT.into(),
        }
    }

    fn chap() -> ChapCredentials {
        ChapCredentials {
            user: CHAP_INITIATOR_USER.into(),
            secret: "a-very-secret-value".into(),
            target_user: CHAP_TARGET_USER.into(),
            target_secret: "the-targets-own-secret".into(),
        }
    }

    #[test]
    fn valid_spec_passes() {
        assert!(validate(&spec()).is_ok());
    }

    #[test]
    fn validation_refuses_what_kubernetes_or_the_target_would() {
        type Mutation = Box<dyn Fn(&mut TargetSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("uppercase", Box::new(|s| s.volume = "PVC-1".into())),
            ("leading digit", Box::new(|s| s.volume = "1pvc".into())),
            ("trailing dash", Box::new(|s| s.volume = "pvc-".into())),
            ("too long", Box::new(|s| s.volume = "a".repeat(64))),
            ("no replicas", Box::new(|s| s.replicas.clear())),
            (
                "six replicas",
                Box::new(|s| s.replicas = vec!["10.0.0.1:1".into(); 6]),
            ),
            (
                "hostname replica",
                Box::new(|s| s.replicas[0] = "node-1:7600".into()),
            ),
            ("cf zero", Box::new(|s| s.consistency_factor = 0)),
            ("cf above n", Box::new(|s| s.consistency_factor = 3)),
            (
                "comma initiator",
                Box::new(|s| s.allowed_initiators[0] = "a,b".into()),
            ),
            (
                "chap in the spec",
                Box::new(|s| {
                    s.chap = Some(Chap {
                        user: "u".into(),
                        secret: "long-enough-secret".into(),
                    })
                }),
            ),
        ];
        for (what, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert!(
                matches!(validate(&s), Err(RuntimeError::InvalidSpec(_))),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn args_name_every_replica_and_deny_when_no_initiator_is_allowed() {
        let mut s = spec();
        let args = target_args(&s, &template(), IpFamily::V4);
        let replicas: Vec<_> = args
            .windows(2)
            .filter(|w| w[0] == "--replica")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(replicas, ["10.0.0.1:7600", "10.0.0.2:7600"]);
        assert!(!args.contains(&"--deny-initiators".to_owned()));
        s.allowed_initiators.clear();
        let args = target_args(&s, &template(), IpFamily::V4);
        assert!(args.contains(&"--deny-initiators".to_owned()));
        assert!(!args.contains(&"--allow-initiator".to_owned()));
    }

    #[test]
    fn the_target_listens_on_its_pod_ip_in_the_pod_networks_family() {
        let value = |args: &[String], flag: &str| {
            args.windows(2)
                .find(|w| w[0] == flag)
                .map(|w| w[1].clone())
                .unwrap()
        };
        let v4 = target_args(&spec(), &template(), IpFamily::V4);
        assert_eq!(value(&v4, "--listen"), "$(POD_IP):3260");
        assert_eq!(value(&v4, "--mgmt-listen"), "$(POD_IP):7700");
        assert_eq!(value(&v4, "--metrics-listen"), "$(POD_IP):9500");
        let v6 = target_args(&spec(), &template(), IpFamily::V6);
        assert_eq!(value(&v6, "--mgmt-listen"), "[$(POD_IP)]:7700");
        // Expanded as Kubernetes does, both parse as socket addresses.
        let expanded = value(&v4, "--listen").replace("$(POD_IP)", "10.244.1.7");
        assert!(expanded.parse::<SocketAddr>().is_ok());
        let expanded = value(&v6, "--listen").replace("$(POD_IP)", "fd00::7");
        assert!(expanded.parse::<SocketAddr>().is_ok());
        let made = deployment(&spec(), &template(), IpFamily::V4);
        let pod = made.spec.and_then(|d| d.template.spec).unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        let pod_ip = env.iter().find(|e| e.name == POD_IP_ENV).unwrap();
        let field = pod_ip.value_from.clone().unwrap().field_ref.unwrap();
        assert_eq!(field.field_path, "status.podIP");
    }

    #[test]
    fn with_tls_the_target_mounts_its_secret_and_without_it_runs_plaintext() {
        let d = deployment(&spec(), &template(), IpFamily::V4);
        let pod = d.spec.and_then(|d| d.template.spec).unwrap();
        let container = &pod.containers[0];
        let args = container.args.clone().unwrap();
        let dir = args.windows(2).find(|w| w[0] == "--tls-dir").unwrap();
        assert_eq!(dir[1], TLS_MOUNT_PATH);
        assert!(!args.contains(&"--insecure-plaintext".to_owned()));
        let mount = &container.volume_mounts.clone().unwrap()[0];
        assert_eq!(mount.mount_path, TLS_MOUNT_PATH);
        let volume = &pod.volumes.clone().unwrap()[0];
        assert_eq!(volume.name, mount.name);
        let source = volume.secret.clone().unwrap();
        assert_eq!(source.secret_name.as_deref(), Some("pvc-1-tls"));
        assert_eq!(source.default_mode, Some(0o400));

        let plain = Template {
            tls: false,
            ..template()
        };
        let d = deployment(&spec(), &plain, IpFamily::V4);
        let pod = d.spec.and_then(|d| d.template.spec).unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert!(args.contains(&"--insecure-plaintext".to_owned()));
        assert!(!args.contains(&"--tls-dir".to_owned()));
        assert!(pod.volumes.is_none() && pod.containers[0].volume_mounts.is_none());
    }

    #[test]
    fn chap_reaches_the_pod_only_by_secret_reference() {
        let made = deployment(&spec(), &template(), IpFamily::V4);
        let text = format!("{made:?}");
        assert!(!text.contains("a-very-secret-value"));
        let pod = made.spec.and_then(|d| d.template.spec).unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        let refs: Vec<_> = env
            .iter()
            .filter_map(|e| {
                let r = e.value_from.clone()?.secret_key_ref?;
                Some((e.name.clone(), r.name, r.key))
            })
            .collect();
        let expect =
            |var: &str, key: &str| (var.to_owned(), "pvc-1-chap".to_owned(), key.to_owned());
        assert_eq!(
            refs,
            [
                expect("CSTOR_CHAP_USER", "node.session.auth.username"),
                expect("CSTOR_CHAP_SECRET", "node.session.auth.password"),
                expect("CSTOR_CHAP_TARGET_USER", "node.session.auth.username_in"),
                expect("CSTOR_CHAP_TARGET_SECRET", "node.session.auth.password_in"),
            ]
        );
        let secret = chap_secret("pvc-1", &template(), &chap());
        assert_eq!(secret.immutable, Some(true));
        let data = secret.data.unwrap();
        assert_eq!(data["node.session.auth.password"].0, b"a-very-secret-value");
        assert_eq!(
            data["node.session.auth.password_in"].0,
            b"the-targets-own-secret"
        );
        assert!(!format!("{:?}", chap()).contains("secret-value"));

        let off = Template {
            chap: false,
            ..template()
        };
        let d = deployment(&spec(), &off, IpFamily::V4);
        let env = d.spec.and_then(|d| d.template.spec).unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        assert!(env.iter().all(|e| !e.name.starts_with("CSTOR_CHAP")));
    }

    #[test]
    fn generated_chap_secrets_are_random_distinct_and_acceptable_to_both_ends() {
        let a = ChapCredentials::generate().unwrap();
        let b = ChapCredentials::generate().unwrap();
        for c in [&a, &b] {
            for secret in [&c.secret, &c.target_secret] {
                assert_eq!(secret.len(), CHAP_GENERATED_SECRET_LEN);
                assert!(CHAP_SECRET_LEN.contains(&secret.len()));
                assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
            assert_ne!(c.secret, c.target_secret);
        }
        assert_ne!(a.secret, b.secret);
        // What the node plugin reads from its node-stage secrets.
        let secret = chap_secret("pvc-1", &template(), &a);
        let secrets: std::collections::HashMap<String, String> = secret
            .data
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect();
        let parsed = crate::node::volume::parse_chap(&secrets).unwrap().unwrap();
        assert_eq!(parsed.password, a.secret);
        assert_eq!(
            parsed.password_in.as_deref(),
            Some(a.target_secret.as_str())
        );
    }

    #[test]
    fn every_target_container_has_memory_requests_and_limits() {
        let d = deployment(&spec(), &template(), IpFamily::V4);
        let pod = d.spec.and_then(|d| d.template.spec).unwrap();
        let resources = pod.containers[0].resources.clone().unwrap();
        assert_eq!(
            resources.requests.unwrap()["memory"].0,
            DEFAULT_TARGET_MEMORY_REQUEST
        );
        assert_eq!(
            resources.limits.unwrap()["memory"].0,
            DEFAULT_TARGET_MEMORY_LIMIT
        );
    }

    #[test]
    fn endpoint_is_the_cluster_ip_for_v4_and_v6() {
        let mut svc = service(&spec(), &template());
        let spec_mut = svc.spec.as_mut().unwrap();
        spec_mut.cluster_ip = Some("10.96.0.12".into());
        let e = endpoint("pvc-1", &svc).unwrap();
        assert_eq!(e.portal, "10.96.0.12:3260");
        assert_eq!(e.mgmt, "http://10.96.0.12:7700");
        assert_eq!(e.iqn, "iqn.2016-09.com.openebs.cstor:pvc-1");
        svc.spec.as_mut().unwrap().cluster_ip = Some("fd00::c".into());
        assert_eq!(endpoint("pvc-1", &svc).unwrap().portal, "[fd00::c]:3260");
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert!(matches!(
            endpoint("pvc-1", &svc),
            Err(RuntimeError::Other(_))
        ));
    }

    /// Oracle: the DNS-1035 label rule written as a regular language.
    fn is_dns1035(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_lowercase()
            && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn volume_names_are_accepted_exactly_when_dns1035(name in "[a-z0-9A-Z._-]{0,70}") {
            prop_assert_eq!(validate_volume(&name).is_ok(), is_dns1035(&name));
        }

        #[test]
        fn object_names_of_valid_volumes_are_valid(name in "[a-z]([a-z0-9-]{0,61}[a-z0-9])?") {
            prop_assume!(validate_volume(&name).is_ok());
            prop_assert!(is_dns1035(&service_name(&name)));
            // Deployment and Secret names are DNS-1123 subdomains (253).
            prop_assert!(deployment_name(&name).len() <= 253);
            prop_assert!(chap_secret_name(&name).len() <= 253);
            prop_assert!(tls_secret_name(&name).len() <= 253);
        }
    }
}
