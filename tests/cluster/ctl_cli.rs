//! `cstor ctl` and `cstor up` as a user meets them before any daemon runs:
//! clear errors, non-zero exits, nothing pretended.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn cstor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cstor"))
}

/// A port on loopback that nothing listens on: bind one, then free it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn ctl_reports_an_unreachable_daemon_by_address() {
    let addr = format!("127.0.0.1:{}", closed_port());
    let out = cstor()
        .args([
            "ctl",
            "--insecure-plaintext",
            "--mgmt",
            &addr,
            "pool",
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach the replica daemon at {addr}")),
        "stderr: {stderr}"
    );
}

#[test]
fn ctl_rejects_a_bad_size_and_block_size_before_connecting() {
    let out = cstor()
        .args(["ctl", "volume", "create", "v1", "--size", "12XB"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));

    let out = cstor()
        .args([
            "ctl",
            "volume",
            "create",
            "v1",
            "--size",
            "1GiB",
            "--block-size",
            "1024",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("512 or 4096"));
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["up", "--help"],
        vec!["ctl", "--help"],
        vec!["ctl", "volume", "--help"],
        vec!["ctl", "pool", "status", "--help"],
        vec!["ctl", "scrub", "--help"],
        vec!["ctl", "scrub", "start", "--help"],
        vec!["ctl", "scrub", "stop", "--help"],
        vec!["ctl", "scrub", "status", "--help"],
    ] {
        let out = cstor().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
}

#[test]
fn scrub_needs_a_volume_and_a_valid_rate_before_connecting() {
    for args in [
        vec!["ctl", "--insecure-plaintext", "scrub", "start"],
        vec!["ctl", "--insecure-plaintext", "scrub", "status"],
        vec![
            "ctl",
            "--insecure-plaintext",
            "scrub",
            "start",
            "vol",
            "--rate",
            "fast",
        ],
        vec!["ctl", "--insecure-plaintext", "scrub", "rewind", "vol"],
    ] {
        let out = cstor().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty(), "{args:?}");
    }
}

#[test]
fn pool_list_names_every_unreachable_daemon_and_fails() {
    let first = format!("127.0.0.1:{}", closed_port());
    let second = format!("127.0.0.1:{}", closed_port());
    let out = cstor()
        .args([
            "ctl",
            "--insecure-plaintext",
            "--mgmt",
            &first,
            "--mgmt",
            &second,
            "pool",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for addr in [&first, &second] {
        assert!(
            stdout.contains(&format!("{addr}  unreachable")),
            "stdout: {stdout}"
        );
        assert!(
            stderr.contains(&format!("cannot reach the replica daemon at {addr}")),
            "stderr: {stderr}"
        );
    }
}

#[test]
fn replica_add_reports_an_unreachable_target_by_address() {
    let addr = format!("127.0.0.1:{}", closed_port());
    let out = cstor()
        .args([
            "ctl",
            "--insecure-plaintext",
            "--target",
            &addr,
            "replica",
            "add",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach the target at {addr}")),
        "stderr: {stderr}"
    );
}

#[test]
fn rebuild_throttle_rejects_a_bad_rate_before_connecting() {
    let out = cstor()
        .args(["ctl", "rebuild", "throttle", "fast"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn membership_and_rebuild_subcommands_have_help() {
    for args in [
        vec!["ctl", "replica", "--help"],
        vec!["ctl", "replica", "add", "--help"],
        vec!["ctl", "replica", "remove", "--help"],
        vec!["ctl", "replica", "set-cf", "--help"],
        vec!["ctl", "rebuild", "throttle", "--help"],
        vec!["ctl", "pool", "list", "--help"],
        vec!["certs", "--help"],
        vec!["certs", "ca", "--help"],
        vec!["certs", "issue", "--help"],
    ] {
        let out = cstor().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
}

/// Links are authenticated by default: a `cstor ctl` given no identity,
/// no `--insecure-plaintext` and no state directory connects nowhere and
/// says what to give; both at once are refused too.
#[test]
fn ctl_without_an_identity_or_an_explicit_plaintext_refuses_to_connect() {
    let addr = format!("127.0.0.1:{}", closed_port());
    let out = cstor()
        .args(["ctl", "--target", &addr, "status"])
        .env_remove("CSTOR_TLS_DIR")
        .env_remove("CSTOR_INSECURE_PLAINTEXT")
        .env_remove("CSTOR_STATE_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tls-dir")
            && stderr.contains("--insecure-plaintext")
            && stderr.contains("--state-dir"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("cannot reach"), "it dialled: {stderr}");

    let dir = tempfile::tempdir().unwrap();
    let out = cstor()
        .args(["ctl", "--insecure-plaintext", "--tls-dir"])
        .arg(dir.path())
        .args(["--target", &addr, "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exclude each other"));
}

/// `--state-dir` names a directory that is not a `cstor up` state
/// directory: the error says which file is missing.
#[test]
fn ctl_state_dir_without_cluster_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = cstor()
        .args(["ctl", "--state-dir"])
        .arg(dir.path())
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster.json"), "stderr: {stderr}");
}
