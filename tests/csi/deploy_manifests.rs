//! The Kubernetes deployment (deploy/) validated offline by
//! scripts/validate-deploy.sh: the Helm chart linted and rendered by Helm,
//! deploy/kubernetes equal to its default rendering, every object valid
//! against the Kubernetes API schemas. The script installs its validators
//! from PyPI on first use (about a minute); without PyPI these tests fail,
//! loudly, rather than pass without having validated anything.
//!
//! Schemas cannot tell whether a container's arguments mean anything to
//! `cstor`: the manifests' and the Kubernetes target runtime's arguments are
//! parsed here with cstor's own command line definitions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use clap::{Parser, Subcommand};
use cstor_csi::kube::objects::{self, IpFamily, Template};
use cstor_csi::runtime::TargetSpec;
use serde_json::{json, Value};

fn validate(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("bash")
        .arg(root.join("scripts/validate-deploy.sh"))
        .args(args)
        .output()
        .expect("cannot run bash scripts/validate-deploy.sh")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics with the script's own words when it could not validate at all
/// (exit 2: validators not installable, e.g. no network to PyPI).
fn assert_validated(out: &Output) {
    if out.status.code() == Some(2) {
        panic!(
            "deploy/ could NOT be validated (validators unavailable; CI needs PyPI):\n{}",
            text(out)
        );
    }
}

#[test]
fn deploy_manifests_and_helm_chart_are_valid() {
    let out = validate(&[]);
    assert_validated(&out);
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "invalid deploy/ objects:\n{report}");
    assert!(report.contains("objects valid"), "{report}");
}

#[test]
fn validator_rejects_unknown_fields_and_unresolved_env_references() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("bad.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: bad
spec:
  selector:
    matchLabels: {app: bad}
  template:
    metadata:
      labels: {app: bad}
    spec:
      containers:
        - name: c
          image: busybox:1.37
          args: [--node-id=$(NODE_NAME)]
          mountPropogation: Bidirectional
",
    )
    .unwrap();
    let out = validate(&["--check", manifest.to_str().unwrap()]);
    assert_validated(&out);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("mountPropogation"), "{report}");
    assert!(
        report.contains("$(NODE_NAME) in args is not in its env"),
        "{report}"
    );
}

/// The subcommands of `cstor` that run in pods, as src/main.rs defines them.
#[derive(Debug, Parser)]
#[command(name = "cstor")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Target(cstor_target::cli::TargetArgs),
    Replica(cstor_replica::cli::ReplicaArgs),
    Csi(cstor_csi::cli::CsiArgs),
}

/// The node IP `$(HOST_IP)` expands to in these tests.
const HOST_IP: &str = "192.0.2.21";

/// Kubernetes expands `$(VAR)` from the container's env before exec.
fn expand(arg: &str) -> String {
    arg.replace("$(NODE_NAME)", "node-1")
        .replace("$(POD_NAMESPACE)", "cstor")
        .replace("$(HOST_IP)", HOST_IP)
}

/// What the manifests' cstor containers run, parsed as cstor parses it.
struct CstorContainer {
    at: String,
    raw: Vec<String>,
    command: Cmd,
}

fn cstor_containers() -> Vec<CstorContainer> {
    let out = validate(&["--dump-cstor-args"]);
    assert_validated(&out);
    assert!(out.status.success(), "{}", text(&out));
    let containers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    containers
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let raw: Vec<String> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            let args = raw.iter().map(|a| expand(a));
            let parsed = Cli::try_parse_from(std::iter::once("cstor".to_owned()).chain(args));
            let at = format!("{} container {}", c["source"], c["container"]);
            let parsed = parsed.unwrap_or_else(|e| panic!("{at}: cstor refuses its args: {e}"));
            CstorContainer {
                at,
                raw,
                command: parsed.command,
            }
        })
        .collect()
}

#[test]
fn every_cstor_container_in_the_manifests_has_arguments_cstor_accepts() {
    let mut seen: Vec<String> = cstor_containers()
        .into_iter()
        .map(|c| match c.command {
            Cmd::Csi(a) if a.command.is_some() => "csi bootstrap-certs".to_owned(),
            Cmd::Csi(a) => format!("csi {:?}", a.mode),
            Cmd::Replica(_) => "replica".to_owned(),
            Cmd::Target(_) => "target".to_owned(),
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "csi Controller",
            "csi Node",
            "csi bootstrap-certs",
            "replica"
        ]
    );
}

/// Every cstor process in the manifests runs with its TLS directory (none
/// in plaintext), and every one that listens does so on its node's IP.
#[test]
fn every_cstor_process_runs_with_tls_and_listens_on_its_node_ip_only() {
    let host: std::net::IpAddr = HOST_IP.parse().unwrap();
    for c in cstor_containers() {
        let at = &c.at;
        for arg in &c.raw {
            assert!(
                !arg.contains("0.0.0.0") && !arg.contains("[::]"),
                "{at} listens on every address: {arg}"
            );
        }
        assert!(
            !c.raw.iter().any(|a| a == "--insecure-plaintext"),
            "{at} runs in plaintext by default"
        );
        match c.command {
            Cmd::Csi(csi) if csi.command.is_some() => {
                // bootstrap-certs talks to the API server only.
            }
            Cmd::Csi(csi) => {
                assert!(csi.tls_dir.is_some(), "{at} has no --tls-dir");
                assert!(!csi.insecure_plaintext, "{at}");
                if format!("{:?}", csi.mode) == "Controller" {
                    assert!(
                        csi.tls_ca_dir.is_some(),
                        "{at} cannot issue target certificates"
                    );
                    assert_ne!(
                        csi.target_chap,
                        Some(cstor_csi::cli::ChapArg::Off),
                        "{at}: CHAP is off"
                    );
                }
            }
            Cmd::Replica(replica) => {
                let cstor_replica::cli::ReplicaCommand::Run(run) = replica.command else {
                    panic!("{at}: not `replica run`");
                };
                assert!(run.tls_dir.is_some(), "{at} has no --tls-dir");
                assert!(!run.insecure_plaintext, "{at}");
                assert_eq!(run.listen.ip(), host, "{at}");
                assert_eq!(run.mgmt_listen.ip(), host, "{at}");
                assert_eq!(run.metrics_listen.map(|a| a.ip()), Some(host), "{at}");
            }
            Cmd::Target(_) => panic!("{at}: targets are made by the controller"),
        }
    }
}

/// Every object of deploy/kubernetes, as JSON.
fn manifests() -> Vec<Value> {
    let out = validate(&["--dump-objects"]);
    assert_validated(&out);
    assert!(out.status.success(), "{}", text(&out));
    let manifests: Value = serde_json::from_slice(&out.stdout).unwrap();
    manifests.as_array().unwrap().clone()
}

fn named<'a>(manifests: &'a [Value], kind: &str, name: &str) -> &'a Value {
    manifests
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_container_has_memory_requests_and_limits() {
    let mut checked = 0;
    for o in manifests() {
        let spec = match o["kind"].as_str() {
            Some("Deployment" | "StatefulSet" | "DaemonSet" | "Job") => {
                &o["spec"]["template"]["spec"]
            }
            _ => continue,
        };
        let containers = strings_of(&spec["containers"])
            .into_iter()
            .chain(strings_of(&spec["initContainers"]));
        for c in containers {
            let at = format!(
                "{} {} container {}",
                o["kind"], o["metadata"]["name"], c["name"]
            );
            for bound in ["requests", "limits"] {
                assert!(
                    c["resources"][bound]["memory"].is_string(),
                    "{at} has no memory {bound}"
                );
            }
            checked += 1;
        }
    }
    // controller 6, node 3, replica 2 (with pool-init), bootstrap 1.
    assert_eq!(checked, 12);
}

fn strings_of(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

/// The management ports (targets' 7700, replicas' 7601) admit only the
/// controller's pods; the other ports stay open.
#[test]
fn a_network_policy_limits_the_management_ports_to_the_controller() {
    let manifests = manifests();
    let controller = named(&manifests, "StatefulSet", "cstor-csi-controller");
    let controller_labels = &controller["spec"]["template"]["metadata"]["labels"];
    let target_pod_labels = json!({
        "app.kubernetes.io/name": "cstor",
        "app.kubernetes.io/component": "target",
        "app.kubernetes.io/managed-by": "cstor-csi",
    });
    let replica = named(&manifests, "DaemonSet", "cstor-replica");
    let replica_labels = &replica["spec"]["template"]["metadata"]["labels"];
    let matches = |selector: &Value, labels: &Value| {
        selector["matchLabels"]
            .as_object()
            .is_some_and(|m| m.iter().all(|(k, v)| labels[k] == *v))
    };
    for (policy, pod_labels, mgmt, open) in [
        (
            "cstor-target-mgmt",
            &target_pod_labels,
            7700,
            vec![3260, 9500],
        ),
        ("cstor-replica-mgmt", replica_labels, 7601, vec![7600, 9501]),
    ] {
        let np = named(&manifests, "NetworkPolicy", policy);
        assert!(matches(&np["spec"]["podSelector"], pod_labels), "{policy}");
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]), "{policy}");
        let rules = strings_of(&np["spec"]["ingress"]);
        let ports = |rule: &Value| -> Vec<i64> {
            strings_of(&rule["ports"])
                .iter()
                .filter_map(|p| p["port"].as_i64())
                .collect()
        };
        let with_mgmt: Vec<&Value> = rules.iter().filter(|r| ports(r).contains(&mgmt)).collect();
        assert_eq!(with_mgmt.len(), 1, "{policy}: one rule for port {mgmt}");
        let from = strings_of(&with_mgmt[0]["from"]);
        assert!(!from.is_empty(), "{policy}: port {mgmt} open to everyone");
        for source in &from {
            assert!(
                matches(&source["podSelector"], controller_labels),
                "{policy}: port {mgmt} admits {source}"
            );
        }
        for port in open {
            assert!(
                rules.iter().any(|r| ports(r).contains(&port)),
                "{policy}: port {port} closed"
            );
        }
    }
}

/// RBAC: the controller can read no Secret, and holds none of the verbs
/// issue #15 found beyond what the sidecars use.
#[test]
fn the_controller_cannot_read_secrets_or_update_what_the_sidecars_only_patch() {
    let manifests = manifests();
    let rules = |kind: &str| strings_of(&named(&manifests, kind, "cstor-csi-controller")["rules"]);
    let verbs_on = |rules: &[Value], resource: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| strings(&r["resources"]).iter().any(|x| x == resource))
            .flat_map(|r| strings(&r["verbs"]))
            .collect()
    };
    let role = rules("Role");
    let mut secrets = verbs_on(&role, "secrets");
    secrets.sort();
    assert_eq!(secrets, ["create", "delete"]);
    let cluster = rules("ClusterRole");
    assert!(verbs_on(&cluster, "secrets").is_empty());
    for resource in [
        "persistentvolumes",
        "persistentvolumeclaims/status",
        "volumeattachments",
    ] {
        let verbs = verbs_on(&cluster, resource);
        assert!(!verbs.is_empty(), "{resource}: the sidecars need it");
        assert!(
            !verbs.iter().any(|v| v == "update"),
            "{resource}: {verbs:?}"
        );
    }
    let snapshots = verbs_on(&cluster, "volumesnapshots");
    assert!(
        !snapshots.iter().any(|v| v == "patch" || v == "update"),
        "{snapshots:?}"
    );
    // The certificate hook may only get and create Secrets.
    let hook = strings_of(&named(&manifests, "Role", "cstor-bootstrap-certs")["rules"]);
    let mut verbs = verbs_on(&hook, "secrets");
    verbs.sort();
    assert_eq!(verbs, ["create", "get"]);
    assert_eq!(hook.len(), 1);
}

/// CHAP is on by default: the controller makes each volume's credentials,
/// and the StorageClass hands them to the node plugin as node-stage secrets
/// from the namespace where the controller makes them.
#[test]
fn chap_is_on_by_default_in_the_storage_class() {
    let manifests = manifests();
    let class = named(&manifests, "StorageClass", "cstor");
    let parameters = &class["parameters"];
    assert_eq!(
        parameters["csi.storage.k8s.io/node-stage-secret-name"],
        format!("${{pv.name}}{}", "-chap")
    );
    let controller = named(&manifests, "StatefulSet", "cstor-csi-controller");
    assert_eq!(
        parameters["csi.storage.k8s.io/node-stage-secret-namespace"],
        controller["metadata"]["namespace"]
    );
    // The Secret's name is the one the Kubernetes runtime makes.
    assert_eq!(
        objects::chap_secret_name("pvc-1"),
        parameters["csi.storage.k8s.io/node-stage-secret-name"]
            .as_str()
            .unwrap()
            .replace("${pv.name}", "pvc-1")
    );
    let args = strings(&controller["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        args.contains(&"--target-chap=mutual".to_owned()),
        "{args:?}"
    );
}

#[test]
fn the_kubernetes_target_runtime_starts_targets_with_arguments_cstor_accepts() {
    let published = TargetSpec {
        volume: "pvc-1".into(),
        replicas: vec!["10.0.0.1:7600".into(), "10.0.0.2:7600".into()],
        consistency_factor: 2,
        allowed_initiators: vec!["iqn.2016-09.com.openebs.cstor:node.w1".into()],
        chap: None,
    };
    let template = |tls: bool| Template {
        namespace: "cstor".into(),
        image: "cstor:test".into(),
        image_pull_policy: "IfNotPresent".into(),
        tls,
        chap: true,
        memory_request: objects::DEFAULT_TARGET_MEMORY_REQUEST.into(),
        memory_limit: objects::DEFAULT_TARGET_MEMORY_LIMIT.into(),
    };
    for (deny, tls, family, pod_ip) in [
        (false, true, IpFamily::V4, "10.244.1.7"),
        (true, true, IpFamily::V6, "fd00::7"),
        (false, false, IpFamily::V4, "10.244.1.7"),
    ] {
        let mut spec = published.clone();
        if deny {
            spec.allowed_initiators.clear();
        }
        let deployment = objects::deployment(&spec, &template(tls), family);
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.command.as_deref(),
            Some(&[objects::BINARY.to_owned()][..])
        );
        // Kubernetes expands $(POD_IP) from the container's env.
        let env: Vec<String> = container
            .env
            .iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect();
        let args: Vec<String> = container
            .args
            .clone()
            .unwrap()
            .iter()
            .map(|a| {
                assert!(!a.contains("$(") || a.contains("$(POD_IP)"), "{a}");
                a.replace("$(POD_IP)", pod_ip)
            })
            .collect();
        assert!(env.contains(&"POD_IP".to_owned()), "{env:?}");
        let parsed = Cli::try_parse_from(std::iter::once("cstor".to_owned()).chain(args));
        let Cmd::Target(target) = parsed.unwrap().command else {
            panic!("not a target command");
        };
        assert_eq!(target.volume, "pvc-1");
        assert_eq!(
            target.replicas,
            [
                "10.0.0.1:7600".parse().unwrap(),
                "10.0.0.2:7600".parse().unwrap()
            ]
        );
        assert_eq!(target.cf, Some(2));
        assert_eq!(
            target.target_name.as_deref(),
            Some("iqn.2016-09.com.openebs.cstor:pvc-1")
        );
        let ip: std::net::IpAddr = pod_ip.parse().unwrap();
        assert_eq!(target.listen, (ip, objects::ISCSI_PORT).into());
        assert_eq!(target.mgmt_listen, Some((ip, objects::MGMT_PORT).into()));
        assert_eq!(target.deny_initiators, deny);
        assert_eq!(target.allowed_initiators, spec.allowed_initiators);
        if tls {
            assert_eq!(
                target.tls_dir.as_deref(),
                Some(Path::new(objects::TLS_MOUNT_PATH))
            );
            assert!(!target.insecure_plaintext);
        } else {
            assert_eq!(target.tls_dir, None);
            assert!(target.insecure_plaintext);
        }
    }
}
