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
        .args(["ctl", "--mgmt", &addr, "pool", "status"])
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
    ] {
        let out = cstor().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
}
