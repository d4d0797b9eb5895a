//! `cstor up` as a new user runs it: replicas and a target as separate
//! processes on loopback, a killed replica restarted, Ctrl-C stopping all,
//! and a second run on the same directory bringing the same volume back.
//! Its links are mutual TLS with a CA of its own, and `cstor ctl
//! --state-dir` reaches everything with no other flag; `--insecure-plaintext`
//! is the explicit way out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{cstor, cstor_bin, free_addr};
use crate::security::Load;
use cstor_tls::{Ca, Credentials, Identity, Validity};

fn up(state: &Path, portal: std::net::SocketAddr, base_port: u16) -> Child {
    up_with(state, portal, base_port, &[])
}

fn up_with(state: &Path, portal: std::net::SocketAddr, base_port: u16, extra: &[&str]) -> Child {
    Command::new(cstor_bin())
        .args(["up", "--replicas", "3", "--size", "64MiB", "--state-dir"])
        .arg(state)
        .args([
            "--iscsi-listen",
            &portal.to_string(),
            "--base-port",
            &base_port.to_string(),
        ])
        .args(extra)
        .env_remove("CSTOR_TLS_DIR")
        .env_remove("CSTOR_INSECURE_PLAINTEXT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `cstor ctl --state-dir STATE ARGS` (nothing else: the state directory
/// names the addresses and the identity).
fn ctl_state(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(cstor_bin())
        .arg("ctl")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("CSTOR_TLS_DIR")
        .env_remove("CSTOR_INSECURE_PLAINTEXT")
        .env_remove("CSTOR_STATE_DIR")
        .output()
        .unwrap()
}

/// The target's status through `cstor ctl --state-dir`, or Null while it
/// does not answer.
fn status_of(state: &Path) -> serde_json::Value {
    let out = ctl_state(state, &["--json", "status"]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn all_healthy(status: &serde_json::Value) -> bool {
    status["replicas"]
        .as_array()
        .is_some_and(|r| r.len() == 3 && r.iter().all(|x| x["state"] == "healthy"))
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
    let listed = ctl_state(&state, &["--mgmt", &mgmt, "--json", "volume", "list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["name"], "vol1");
    assert_eq!(listed[0]["size_bytes"], 64 << 20);
    let replica_id = listed[0]["replica_id"].clone();
    // The target's view through `ctl --state-dir` alone: three healthy
    // replicas, read-write, over mutual TLS.
    wait_until("three healthy replicas", || all_healthy(&status_of(&state)));
    let status = status_of(&state);
    assert_eq!(status["insecure_plaintext"], false, "{status}");
    assert_eq!(status["links"], "mutual TLS", "{status}");
    // Every daemon's pool, each over TLS.
    let pools = ctl_state(&state, &["--json", "pool", "list"]);
    assert!(pools.status.success());
    let pools: serde_json::Value = serde_json::from_slice(&pools.stdout).unwrap();
    assert_eq!(pools.as_array().unwrap().len(), 3, "{pools}");
    for pool in pools.as_array().unwrap() {
        assert_eq!(pool["insecure_plaintext"], false, "{pool}");
    }

    // The certificates: a CA, a directory per process and for the
    // operator, each with its identity, private files; cluster.json names
    // them. Without them (plaintext, or no identity), nothing answers.
    assert_eq!(c["insecure_plaintext"], false);
    let tls = state.join("tls");
    for (i, r) in replicas.iter().enumerate() {
        let dir = tls.join(format!("replica-{i}"));
        assert_eq!(r["tls_dir"], dir.to_str().unwrap());
        assert_eq!(
            Credentials::load(&dir).unwrap().identity(),
            Identity::Replica {
                pool: format!("pool-{i}")
            }
        );
    }
    assert_eq!(
        Credentials::load(&tls.join("target")).unwrap().identity(),
        Identity::Target {
            volumes: vec!["vol1".into()]
        }
    );
    assert_eq!(c["tls"]["admin"], tls.join("admin").to_str().unwrap());
    for (name, identity) in [("admin", Identity::Admin), ("reader", Identity::Reader)] {
        assert_eq!(
            Credentials::load(&tls.join(name)).unwrap().identity(),
            identity
        );
    }
    for file in [
        "ca/ca.key",
        "admin/tls.key",
        "target/tls.key",
        "replica-0/tls.key",
    ] {
        let mode = std::fs::metadata(tls.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
    let target_mgmt = c["target"]["mgmt"].as_str().unwrap().to_string();
    let plain = Command::new(cstor_bin())
        .args([
            "ctl",
            "--insecure-plaintext",
            "--target",
            &target_mgmt,
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(
        plain.status.code(),
        Some(1),
        "a plaintext client was served"
    );
    let admin_cert = std::fs::read(tls.join("admin/tls.crt")).unwrap();
    // A lost directory is issued again at the next start; the others stay.
    std::fs::remove_dir_all(tls.join("reader")).unwrap();

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
    let listed = ctl_state(&state, &["--mgmt", &mgmt, "--json", "volume", "list"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["replica_id"], replica_id);
    assert_eq!(
        std::fs::read(tls.join("admin/tls.crt")).unwrap(),
        admin_cert,
        "the admin certificate was issued anew"
    );
    assert_eq!(
        Credentials::load(&tls.join("reader")).unwrap().identity(),
        Identity::Reader
    );
    wait_until("three healthy replicas again", || {
        all_healthy(&status_of(&state))
    });
    stop(child);
}

/// `cstor up --insecure-plaintext`: no CA, every child in plaintext (the
/// explicit way out), recorded in cluster.json so that `ctl --state-dir`
/// talks plaintext too, and shown in status.
#[test]
fn up_in_plaintext_only_when_asked_and_ctl_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let portal = free_addr();
    let base = free_base_port();
    let child = up_with(&state, portal, base, &["--insecure-plaintext"]);
    wait_until("cluster.json", || state.join("cluster.json").exists());
    let c = cluster(&state);
    assert_eq!(c["insecure_plaintext"], true);
    assert!(c["tls"].is_null(), "{c}");
    assert!(!state.join("tls").exists(), "a CA was made for plaintext");
    wait_until("three healthy replicas", || all_healthy(&status_of(&state)));
    let status = status_of(&state);
    assert_eq!(status["insecure_plaintext"], true, "{status}");
    assert_eq!(status["links"], "PLAINTEXT (insecure)", "{status}");
    let table = ctl_state(&state, &["status"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("PLAINTEXT (insecure)"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
    // A plaintext client with no state directory reaches it too.
    let mgmt = c["replicas"][0]["mgmt"].as_str().unwrap();
    let pool: serde_json::Value = serde_json::from_str(&cstor(&[
        "ctl",
        "--insecure-plaintext",
        "--mgmt",
        mgmt,
        "--json",
        "pool",
        "status",
    ]))
    .unwrap();
    assert_eq!(pool["insecure_plaintext"], true);
    stop(child);
}

/// Rotation under a running `cstor up`, as an operator would do it by
/// hand: a new CA replaces the old one in `STATE/tls/ca`, and every TLS
/// directory (each replica's, the target's, admin, reader) gets the new CA
/// as its only trusted one and a new certificate and key from it — while an
/// initiator writes and verifies. Every process reloads at its next poll
/// (`ctl --state-dir` with the new admin identity is answered, the old
/// admin identity is not); the links made before go on; a replica killed
/// afterwards is restarted by `cstor up`, makes its handshakes with the new
/// certificates on both sides (the target's to it, its own to the rebuild
/// source) and rebuilds; the data verifies at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_replaced_under_cstor_up_keeps_io_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let portal = free_addr();
    let base = free_base_port();
    let child = up(&state, portal, base);
    wait_until("cluster.json", || state.join("cluster.json").exists());
    tokio::task::block_in_place(|| {
        wait_until("three healthy replicas", || all_healthy(&status_of(&state)))
    });
    let iqn = cluster(&state)["iqn"].as_str().unwrap().to_owned();
    let load = Load::start_at(portal, &iqn).await;
    load.wait_writes(100).await;

    let tls = state.join("tls");
    let old_admin = dir.path().join("old-admin");
    copy_dir(&tls.join("admin"), &old_admin);
    let new_ca = Ca::generate("rotated", Validity::from_now(Duration::from_secs(86_400))).unwrap();
    // The new CA in place of the old (so that a restarted child is issued
    // nothing from the old one), then every directory.
    for (file, pem) in [
        ("ca.crt", new_ca.cert_pem().to_owned()),
        ("ca.key", new_ca.key_pem()),
    ] {
        cstor_tls::issue::write_private(&tls.join("ca").join(file), pem.as_bytes()).unwrap();
    }
    let mut dirs: Vec<String> = (0..3).map(|i| format!("replica-{i}")).collect();
    dirs.extend(["target", "admin", "reader"].map(String::from));
    for name in &dirs {
        let d = tls.join(name);
        let identity = Credentials::load(&d).unwrap().identity();
        new_ca
            .issue_dir(
                &identity,
                Validity::from_now(Duration::from_secs(86_400)),
                &d,
            )
            .unwrap();
    }
    // Reloaded everywhere: the new admin is answered by the target and
    // every replica, the old one by none.
    tokio::task::block_in_place(|| {
        wait_until("the new certificates taken up", || {
            let pools = ctl_state(&state, &["--json", "pool", "list"]);
            pools.status.success() && ctl_state(&state, &["--json", "status"]).status.success()
        })
    });
    let target_mgmt = cluster(&state)["target"]["mgmt"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = Command::new(cstor_bin())
        .args(["ctl", "--tls-dir"])
        .arg(&old_admin)
        .args(["--target", &target_mgmt, "status"])
        .env_remove("CSTOR_TLS_DIR")
        .env_remove("CSTOR_INSECURE_PLAINTEXT")
        .output()
        .unwrap();
    assert!(!old.status.success(), "the old CA's admin is still served");
    load.wait_writes(100).await;

    // A replica killed: restarted by `cstor up`, relinked and rebuilt with
    // the new certificates.
    let victim = cluster(&state)["replicas"][1]["pid"].as_u64().unwrap();
    assert!(Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap()
        .success());
    tokio::task::block_in_place(|| {
        wait_until("the restart", || {
            let c = cluster(&state);
            c["replicas"][1]["pid"]
                .as_u64()
                .is_some_and(|p| p != victim && alive(p))
        });
        wait_until("three healthy replicas after the restart", || {
            all_healthy(&status_of(&state))
        });
    });
    load.wait_writes(100).await;
    let status = status_of(&state);
    assert_eq!(status["fenced"], false, "{status}");
    assert_eq!(status["read_only"], false, "{status}");
    load.finish_and_verify().await;
    // The restarted replica kept the new certificate (nothing re-issued
    // from the old CA).
    let ca_pem = std::fs::read_to_string(tls.join("replica-1/ca.crt")).unwrap();
    assert_eq!(ca_pem, new_ca.cert_pem());
    stop(child);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
