//! The Kubernetes objects that run one volume's target, built from its
//! [`TargetSpec`] without IO: a Deployment (one pod, `Recreate`), a
//! ClusterIP Service (the stable portal) and, with CHAP, a Secret the pod
//! reads through environment variables.
//!
//! Invariants:
//! - A spec is validated completely before any object is built, so the API
//!   server never sees a half-valid target (and `cstor target` never exits
//!   at start on an argument we could have refused here).
//! - Secrets never appear in the Deployment: the container reads them from
//!   the Secret by `secretKeyRef`, and the pod template carries only a
//!   digest of them, so a changed secret rolls the pod.
//! - Every object carries the `app.kubernetes.io/*` labels and
//!   `cstor.openebs.io/volume`, so `kubectl get all -l
//!   cstor.openebs.io/volume=NAME` shows all of a volume's target.
//!
//! Names (cStor's): Service `VOLUME` (a DNS-1035 label, hence the rule on
//! volume names), Deployment `VOLUME-target`, Secret `VOLUME-chap`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, PodSpec,
    PodTemplateSpec, Probe, Secret, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use sha2::{Digest, Sha256};

use crate::runtime::{RuntimeError, TargetEndpoint, TargetSpec};

/// iSCSI port of every target (the IANA-registered iSCSI port).
pub const ISCSI_PORT: u16 = 3260;
/// The target's management API port (`cstor target --mgmt-listen`).
pub const MGMT_PORT: u16 = 7700;
/// The target's Prometheus metrics port (`cstor target --metrics-listen`),
/// a named container port (`metrics`) for a PodMonitor to scrape.
pub const METRICS_PORT: u16 = 9500;
/// Replicas a target accepts (`cstor target --replica`, 1 to 5).
pub const MAX_REPLICAS: usize = 5;
/// Longest Kubernetes label / DNS-1035 name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest iSCSI name (RFC 7143 §4.2.7.1).
pub const MAX_IQN_LEN: usize = 223;
/// CHAP secret length the target accepts, in bytes.
pub const CHAP_SECRET_LEN: std::ops::RangeInclusive<usize> = 12..=255;
/// How long a target pod stays bound to a node that stopped answering
/// before it is evicted (Kubernetes' default is 300 s). The volume is down
/// while its target's node is, and the target holds no state; replicas fence
/// the old target by epoch if it comes back.
pub const NODE_LOST_TOLERATION_SECONDS: i64 = 30;
/// Where the image keeps the binary (deploy/Dockerfile).
pub const BINARY: &str = "/usr/local/bin/cstor";
/// Prefix of every target's IQN; the volume name follows.
pub const TARGET_IQN_PREFIX: &str = "iqn.2016-09.com.openebs.cstor:";

/// Label naming the volume on every object of its target.
pub const VOLUME_LABEL: &str = "cstor.openebs.io/volume";
/// Pod template annotation holding a digest of the CHAP credentials.
pub const CHAP_DIGEST_ANNOTATION: &str = "cstor.openebs.io/chap-digest";
/// Keys of the CHAP Secret.
pub const CHAP_USER_KEY: &str = "user";
pub const CHAP_SECRET_KEY: &str = "secret";

/// How the objects are made, apart from the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Namespace of every object.
    pub namespace: String,
    /// Image holding the `cstor` binary at [`BINARY`].
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
}

/// A target's Service name: the volume's name.
pub fn service_name(volume: &str) -> String {
    volume.to_owned()
}

/// A target's Deployment name.
pub fn deployment_name(volume: &str) -> String {
    format!("{volume}-target")
}

/// The Secret holding a target's CHAP credentials.
pub fn secret_name(volume: &str) -> String {
    format!("{volume}-chap")
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
    if let Some(chap) = &spec.chap {
        if chap.user.is_empty() {
            return bad("CHAP user is empty".to_owned());
        }
        if !CHAP_SECRET_LEN.contains(&chap.secret.len()) {
            return bad(format!(
                "CHAP secret is {} bytes, want {} to {}",
                chap.secret.len(),
                CHAP_SECRET_LEN.start(),
                CHAP_SECRET_LEN.end()
            ));
        }
    }
    Ok(())
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

/// `cstor target`'s arguments for `spec` (never a secret).
pub fn target_args(spec: &TargetSpec) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "target".into(),
        "--listen".into(),
        format!("0.0.0.0:{ISCSI_PORT}"),
        "--mgmt-listen".into(),
        format!("0.0.0.0:{MGMT_PORT}"),
        "--metrics-listen".into(),
        format!("0.0.0.0:{METRICS_PORT}"),
        "--volume".into(),
        spec.volume.clone(),
        "--target-name".into(),
        target_iqn(&spec.volume),
        "--cf".into(),
        spec.consistency_factor.to_string(),
    ];
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
    // CHAP comes in through CSTOR_CHAP_USER / CSTOR_CHAP_SECRET, which the
    // CLI reads from the environment (see `deployment`).
    args
}

fn secret_env(volume: &str, var: &str, key: &str) -> EnvVar {
    EnvVar {
        name: var.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret_name(volume),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Digest of the CHAP credentials for the pod template annotation: a
/// changed secret changes the template, which rolls the pod (env from a
/// Secret is read only at container start).
pub fn chap_digest(spec: &TargetSpec) -> Option<String> {
    let chap = spec.chap.as_ref()?;
    let mut hasher = Sha256::new();
    hasher.update(chap.user.as_bytes());
    hasher.update([0]);
    hasher.update(chap.secret.as_bytes());
    let digest = hasher.finalize();
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The target's Deployment.
pub fn deployment(spec: &TargetSpec, template: &Template) -> Deployment {
    let volume = spec.volume.as_str();
    let env = match spec.chap {
        Some(_) => vec![
            secret_env(volume, "CSTOR_CHAP_USER", CHAP_USER_KEY),
            secret_env(volume, "CSTOR_CHAP_SECRET", CHAP_SECRET_KEY),
        ],
        None => Vec::new(),
    };
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let container = Container {
        name: "target".into(),
        image: Some(template.image.clone()),
        image_pull_policy: Some(template.image_pull_policy.clone()),
        command: Some(vec![BINARY.into()]),
        args: Some(target_args(spec)),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![
            port("iscsi", ISCSI_PORT),
            port("mgmt", MGMT_PORT),
            port("metrics", METRICS_PORT),
        ]),
        // Ready once the management API answers, which it does only after
        // the volume opened at its replicas; the iSCSI socket is bound (and
        // accepts into its backlog) before that, so a TCP probe would say
        // ready too early.
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    BINARY.into(),
                    "ctl".into(),
                    "--target".into(),
                    format!("127.0.0.1:{MGMT_PORT}"),
                    "status".into(),
                ]),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
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
        ..Container::default()
    };
    let annotations = chap_digest(spec)
        .map(|digest| BTreeMap::from([(CHAP_DIGEST_ANNOTATION.to_owned(), digest)]));
    Deployment {
        metadata: metadata(deployment_name(volume), template, volume),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
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
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
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

/// The CHAP Secret, if the spec has CHAP.
pub fn secret(spec: &TargetSpec, template: &Template) -> Option<Secret> {
    let chap = spec.chap.as_ref()?;
    let volume = spec.volume.as_str();
    Some(Secret {
        metadata: metadata(secret_name(volume), template, volume),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                CHAP_USER_KEY.to_owned(),
                ByteString(chap.user.as_bytes().to_vec()),
            ),
            (
                CHAP_SECRET_KEY.to_owned(),
                ByteString(chap.secret.as_bytes().to_vec()),
            ),
        ])),
        immutable: Some(false),
        ..Secret::default()
    })
}

/// Where the target behind `service` listens. The portal is the Service's
/// ClusterIP, not its DNS name: the node plugin runs iscsiadm in the host's
/// namespaces, whose resolver does not know cluster DNS, while kube-proxy
/// routes the ClusterIP on every node.
pub fn endpoint(volume: &str, service: &Service) -> Result<TargetEndpoint, RuntimeError> {
    let cluster_ip = service
        .spec
        .as_ref()
        .and_then(|spec| spec.cluster_ip.as_deref())
        .unwrap_or_default();
    let ip: IpAddr = cluster_ip.parse().map_err(|_| {
        RuntimeError::Other(format!(
            "service {} of volume {volume} has no cluster IP (got {cluster_ip:?})",
            service.metadata.name.as_deref().unwrap_or_default()
        ))
    })?;
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
                "short chap",
                Box::new(|s| {
                    s.chap = Some(Chap {
                        user: "u".into(),
                        secret: "short".into(),
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
        let args = target_args(&s);
        let replicas: Vec<_> = args
            .windows(2)
            .filter(|w| w[0] == "--replica")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(replicas, ["10.0.0.1:7600", "10.0.0.2:7600"]);
        assert!(!args.contains(&"--deny-initiators".to_owned()));
        s.allowed_initiators.clear();
        let args = target_args(&s);
        assert!(args.contains(&"--deny-initiators".to_owned()));
        assert!(!args.contains(&"--allow-initiator".to_owned()));
    }

    #[test]
    fn chap_secret_reaches_the_pod_only_by_secret_reference() {
        let mut s = spec();
        s.chap = Some(Chap {
            user: "alice".into(),
            secret: "a-very-secret-value".into(),
        });
        let deployment = deployment(&s, &template());
        let text = format!("{deployment:?}");
        assert!(!text.contains("a-very-secret-value"));
        let pod = deployment.spec.and_then(|d| d.template.spec).unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        let refs: Vec<_> = env
            .iter()
            .map(|e| {
                let r = e.value_from.clone().unwrap().secret_key_ref.unwrap();
                (e.name.as_str().to_owned(), r.name, r.key)
            })
            .collect();
        assert_eq!(
            refs,
            [
                ("CSTOR_CHAP_USER".into(), "pvc-1-chap".into(), "user".into()),
                (
                    "CSTOR_CHAP_SECRET".into(),
                    "pvc-1-chap".into(),
                    "secret".into()
                ),
            ]
        );
        let secret = secret(&s, &template()).unwrap();
        let data = secret.data.unwrap();
        assert_eq!(data["secret"].0, b"a-very-secret-value");
    }

    #[test]
    fn changed_chap_secret_changes_the_pod_template() {
        let mut a = spec();
        a.chap = Some(Chap {
            user: "alice".into(),
            secret: "first-secret-1".into(),
        });
        let mut b = a.clone();
        b.chap = Some(Chap {
            user: "alice".into(),
            secret: "second-secret-2".into(),
        });
        let t = template();
        let annotations = |s: &TargetSpec| deployment(s, &t).spec.unwrap().template.metadata;
        assert_ne!(annotations(&a), annotations(&b));
        assert_eq!(annotations(&a), annotations(&a.clone()));
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
            prop_assert!(secret_name(&name).len() <= 253);
        }
    }
}
