//! `cstor up` as a new user runs it: replicas and a target as separate
//! processes on loopback, a killed replica restarted, Ctrl-C stopping all,
//! and a second run on the same directory bringing the same volume back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{cstor, cstor_bin, free_addr};

fn up(state: &Path, portal: std::net::SocketAddr, base_port: u16) -> Child {
    Command::new(cstor_bin())
        .args(["up", "--replicas", "3", "--size", "64MiB", "--state-dir"])
        .arg(state)
        .args([
            "--iscsi-listen",
            &portal.to_string(),
            "--base-port",
            &base_port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn cluster(state: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state.join("cluster.json")).unwrap()).unwrap()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A base port whose ten-port blocks are free for three replicas.
fn free_base_port() -> u16 {
    loop {
        let base = free_addr().port();
        if base < 32_000
            && (0..3).all(|i| {
                // data, mgmt and metrics ports of replica i
                (0..3).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + 10 * i + k)).is_ok())
            })
            // the target's mgmt and metrics ports
            && [100, 101]
                .iter()
                .all(|k| std::net::TcpListener::bind(("127.0.0.1", base + k)).is_ok())
        {
            return base;
        }
    }
}

fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "cstor up exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "cstor up ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn up_runs_restarts_stops_and_comes_back_with_the_same_volume() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let portal = free_addr();
    let base = free_base_port();
    let child = up(&state, portal, base);
    wait_until("the portal", || {
        std::net::TcpStream::connect(portal).is_ok()
    });
    wait_until("cluster.json", || state.join("cluster.json").exists());
    let c = cluster(&state);
    assert_eq!(c["iqn"], "iqn.2016-09.com.openebs.cstor:vol1");
    assert_eq!(c["portal"], portal.to_string());
    let replicas = c["replicas"].as_array().unwrap().clone();
    assert_eq!(replicas.len(), 3);
    let target_pid = c["target"]["pid"].as_u64().unwrap();
    assert!(alive(target_pid));
    let mgmt = replicas[0]["mgmt"].as_str().unwrap().to_string();
    let listed: serde_json::Value = serde_json::from_str(&cstor(&[
        "ctl", "--mgmt", &mgmt, "--json", "volume", "list",
    ]))
    .unwrap();
    assert_eq!(listed[0]["name"], "vol1");
    assert_eq!(listed[0]["size_bytes"], 64 << 20);
    let replica_id = listed[0]["replica_id"].clone();
    // The target's view: three healthy replicas, read-write.
    let target_mgmt = c["target"]["mgmt"].as_str().unwrap().to_string();
    wait_until("three healthy replicas", || {
        let out = std::process::Command::new(cstor_bin())
            .args(["ctl", "--target", &target_mgmt, "--json", "status"])
            .output()
            .unwrap();
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        status["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 3 && r.iter().all(|x| x["state"] == "healthy"))
    });

    // Kill one replica: it is restarted under a new pid and the count shows.
    let victim = replicas[1]["pid"].as_u64().unwrap();
    assert!(Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap()
        .success());
    wait_until("the restart", || {
        let c = cluster(&state);
        c["replicas"][1]["restarts"] == 1
            && c["replicas"][1]["pid"]
                .as_u64()
                .is_some_and(|p| p != victim && alive(p))
    });

    // Ctrl-C: every child stops.
    let pids: Vec<u64> = {
        let c = cluster(&state);
        let mut p: Vec<u64> = c["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["pid"].as_u64().unwrap())
            .collect();
        p.push(c["target"]["pid"].as_u64().unwrap());
        p
    };
    stop(child);
    for pid in pids {
        assert!(!alive(pid), "child {pid} outlived cstor up");
    }

    // Again on the same directory: same pools, same volume replica.
    let child = up(&state, portal, base);
    wait_until("the portal again", || {
        std::net::TcpStream::connect(portal).is_ok()
    });
    let listed: serde_json::Value = serde_json::from_str(&cstor(&[
        "ctl", "--mgmt", &mgmt, "--json", "volume", "list",
    ]))
    .unwrap();
    assert_eq!(listed[0]["replica_id"], replica_id);
    stop(child);
}
