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

/// Kubernetes expands `$(VAR)` from the container's env before exec.
fn expand(arg: &str) -> String {
    arg.replace("$(NODE_NAME)", "node-1")
        .replace("$(POD_NAMESPACE)", "cstor")
}

#[test]
fn every_cstor_container_in_the_manifests_has_arguments_cstor_accepts() {
    let out = validate(&["--dump-cstor-args"]);
    assert_validated(&out);
    assert!(out.status.success(), "{}", text(&out));
    let containers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let containers = containers.as_array().unwrap();
    let mut seen = Vec::new();
    for c in containers {
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| expand(a.as_str().unwrap()))
            .collect();
        let parsed = Cli::try_parse_from(std::iter::once("cstor".to_owned()).chain(args));
        let at = format!("{} container {}", c["source"], c["container"]);
        let parsed = parsed.unwrap_or_else(|e| panic!("{at}: cstor refuses its args: {e}"));
        seen.push(match parsed.command {
            Cmd::Csi(a) => format!("csi {:?}", a.mode),
            Cmd::Replica(_) => "replica".to_owned(),
            Cmd::Target(_) => "target".to_owned(),
        });
    }
    seen.sort();
    assert_eq!(
        seen,
        ["csi Controller", "csi Node", "replica"],
        "{containers:?}"
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
