//! The Linux kernel's iSCSI initiator against `cstor up`, the embedded
//! default a new user runs first: three replica daemons and a target on
//! loopback, supervised. Two VM boots (the project's VM runner,
//! `cstor_testkit::vm`: Debian's kernel under QEMU, KVM or TCG):
//!
//! 1. the runner's built-in test (discovery, login, ext4, write, re-login,
//!    fsck, verify) against the portal and IQN `cstor up` announces;
//! 2. `tests/vm/up-replica-loss.sh` in the guest writes fsync'd files and
//!    signals the host (`e2e-signal kill-replica`), whose callback kills
//!    one replica daemon with SIGKILL before the guest goes on writing;
//!    `cstor up` restarts it (as Kubernetes would), the target rebuilds it
//!    and reports three healthy replicas (`cstor ctl --state-dir DIR
//!    status --json`, over the mutual TLS `cstor up` sets up); only
//!    then does the guest hear from the host (HTTP on a loopback port), and
//!    it checks e2fsck and every file's checksum after a re-login
//!    (docs/architecture.md, invariants 1 and 6, through a real filesystem).
//!
//! Needs root (the runner installs QEMU and open-iscsi with apt-get on
//! first use); without it the test is recorded as skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cstor_testkit::vm::{self, Outcome, Vm, VmError};
use cstor_testkit::{is_root, skip, Need};

use crate::common::{cstor_bin, free_addr, free_up_base_port, replica_states};

/// Hang guard of one state change (restart, rebuild); not a timing assertion.
const GUARD: Duration = Duration::from_secs(240);
/// The wall-clock limit of one VM (TCG boots are slow here).
const VM_TIMEOUT: Duration = Duration::from_secs(420);

/// A running `cstor up`; stopped with SIGINT (it then stops its children)
/// when dropped, even when the test fails.
struct Up {
    child: Child,
    state: PathBuf,
}

impl Up {
    /// Runs `cstor up` from a hard link (else a copy) of the binary in
    /// `dir`: `cstor up` restarts its children from its own executable's
    /// path, which a concurrent `cargo build` in a shared checkout would
    /// otherwise replace under it.
    fn start(dir: &Path, portal: SocketAddr, base_port: u16) -> (Up, String) {
        let exe = dir.join("cstor");
        if std::fs::hard_link(cstor_bin(), &exe).is_err() {
            std::fs::copy(cstor_bin(), &exe).unwrap();
        }
        let state = dir.join("state");
        let state = state.as_path();
        let mut child = Command::new(&exe)
            .args(["up", "--replicas", "3", "--size", "512MiB", "--state-dir"])
            .arg(state)
            .args(["--iscsi-listen", &portal.to_string()])
            .args(["--base-port", &base_port.to_string()])
            // A slow rebuild (every replica inherits it), so that the
            // guest's writes go on while the killed replica rebuilds.
            .env("CSTOR_REBUILD_LIMIT", "2MiB")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(state.with_extension("up.log")).unwrap())
            .spawn()
            .unwrap();
        // The banner: everything up to the line naming the IQN.
        let mut banner = String::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if line.trim_start().starts_with("IQN") {
                break;
            }
        }
        // Keep draining it so that cstor up never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (
            Up {
                child,
                state: state.to_owned(),
            },
            banner,
        )
    }

    /// cluster.json, cstor up's own log and the tail of every child's log.
    fn explain(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let tail = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        let mut out = format!(
            "cluster.json:\n{}\ncstor up:\n{}\n",
            read(&self.state.join("cluster.json")),
            tail(read(&self.state.with_extension("up.log")))
        );
        for name in ["replica-0", "replica-1", "replica-2", "target"] {
            let log = self.state.join(format!("logs/{name}.log"));
            out.push_str(&format!("{name}:\n{}\n", tail(read(&log))));
        }
        out
    }

    /// The target's status through `cstor ctl --state-dir` (the addresses
    /// and the admin identity from the state directory), or None while it
    /// does not answer.
    fn status(&self) -> Option<serde_json::Value> {
        let out = Command::new(cstor_bin())
            .args(["ctl", "--json", "--state-dir"])
            .arg(&self.state)
            .arg("status")
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn cluster(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.state.join("cluster.json")).unwrap())
            .unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ok` until it holds; after `GUARD` panics with `explain()`.
fn wait_until(what: &str, explain: impl Fn() -> String, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn three_healthy(up: &Up) -> bool {
    up.status().is_some_and(|s| {
        let states = replica_states(&s);
        states.len() == 3 && states.iter().all(|x| x == "healthy")
    })
}

fn assert_pass(what: &str, outcome: &Outcome, up: &Up) {
    let target_log = up.state.join("logs/target.log");
    assert!(
        outcome.passed,
        "{what} failed: {outcome}\ntarget log:\n{}",
        std::fs::read_to_string(target_log).unwrap_or_default()
    );
}

/// Answers every HTTP request on `listener` with "healthy" (the guest's
/// sign that the host saw three healthy replicas again).
fn tell_the_guest(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nhealthy\n",
            );
        }
    });
}

#[test]
fn kernel_initiator_on_cstor_up_passes_e2e_and_keeps_its_data_through_a_replica_kill() {
    if !is_root() {
        skip(
            Need::Root,
            "the VM runner installs QEMU and open-iscsi with apt-get",
        );
        return;
    }
    match vm::prepare() {
        Err(VmError::Unavailable(why)) => return skip(why.need, why.reason),
        other => other.unwrap(),
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let portal = free_addr();
    let (up, banner) = Up::start(dir.path(), portal, free_up_base_port(3));
    let cluster = up.cluster();
    let iqn = cluster["iqn"].as_str().unwrap().to_owned();
    assert!(banner.contains(&portal.to_string()), "{banner}");
    assert!(banner.contains(&iqn), "{banner}");
    wait_until(
        "three healthy replicas",
        || up.explain(),
        || three_healthy(&up),
    );
    let status = up.status().unwrap();
    assert_eq!(status["links"], "mutual TLS", "{status}");

    // 1. The runner's own test against the announced portal and IQN.
    let outcome = Vm::new(portal.port(), &iqn)
        .timeout(VM_TIMEOUT)
        .console_log(dir.path().join("e2e-builtin.log"))
        .run()
        .unwrap();
    assert_pass("built-in e2e", &outcome, &up);
    eprintln!("built-in e2e done at {:?}", started.elapsed());

    // 2. A replica killed under the guest's writes.
    let victim = cluster["replicas"][1]["pid"].as_u64().unwrap();
    let replica_log = PathBuf::from(cluster["replicas"][1]["log"].as_str().unwrap());
    let rebuilds_before = std::fs::read_to_string(&replica_log)
        .unwrap_or_default()
        .matches("rebuild done")
        .count();
    let ready = TcpListener::bind("127.0.0.1:0").unwrap();
    let ready_port = ready.local_addr().unwrap().port();
    let guest_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/up-replica-loss.sh");
    let log = dir.path().join("e2e-replica-loss.log");
    // The guest signals; the callback kills the replica (and says so here)
    // before the guest goes on writing.
    let (killed_tx, killed) = mpsc::channel();
    let vm = Vm::new(portal.port(), &iqn)
        .guest_script(&guest_script)
        .env("READY_PORT", ready_port)
        .env("MIN_FILES", 12)
        .env("MAX_FILES", 400)
        .timeout(VM_TIMEOUT)
        .console_log(&log)
        .on_signal(move |word| {
            if word == "kill-replica" {
                let status = Command::new("kill")
                    .args(["-9", &victim.to_string()])
                    .status();
                let _ = killed_tx.send(status.map(|s| s.success()).unwrap_or(false));
            }
        })
        .spawn();
    let explain = || {
        format!(
            "console:\n{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            up.explain()
        )
    };
    // Until the guest has written its first files and signalled (the VM may
    // first wait for another test's VM: no time limit here but the VM's).
    match killed.recv() {
        Ok(true) => {}
        Ok(false) => panic!("kill -9 {victim} failed\n{}", explain()),
        Err(_) => panic!(
            "the VM ended without asking for the kill: {}",
            match vm.wait() {
                Ok(outcome) => outcome.to_string(),
                Err(e) => e.to_string(),
            }
        ),
    }
    // cstor up restarts it.
    wait_until("the killed replica's restart", explain, || {
        assert!(
            !vm.is_finished(),
            "the VM ended before the replica was restarted\n{}",
            explain()
        );
        let c = up.cluster();
        c["replicas"][1]["restarts"].as_u64() >= Some(1)
            && c["replicas"][1]["pid"]
                .as_u64()
                .is_some_and(|p| p != victim)
    });
    eprintln!("replica killed and restarted at {:?}", started.elapsed());
    // Rebuilt and healthy while the guest still writes (it waits for us).
    // Writes the target numbered while the replica was not healthy, as far
    // as polling sees them (shown, not asserted: a poll may miss a short
    // rebuild).
    let victim_addr = cluster["replicas"][1]["data"].as_str().unwrap().to_owned();
    let mut io_seq_away: Option<(u64, u64)> = None;
    wait_until("three healthy replicas after the kill", explain, || {
        assert!(
            !vm.is_finished(),
            "the VM ended before the replica was healthy again\n{}",
            explain()
        );
        let Some(status) = up.status() else {
            return false;
        };
        let away = status["replicas"].as_array().is_some_and(|r| {
            r.iter()
                .any(|x| x["address"] == victim_addr.as_str() && x["state"] != "healthy")
        });
        if let (true, Some(seq)) = (away, status["next_io_seq"].as_u64()) {
            let first = io_seq_away.map_or(seq, |(first, _)| first);
            io_seq_away = Some((first, seq));
        }
        let states = replica_states(&status);
        states.len() == 3 && states.iter().all(|x| x == "healthy")
    });
    if let Some((first, last)) = io_seq_away {
        eprintln!(
            "the target numbered {} writes while the replica was away or rebuilding",
            last - first
        );
    }
    let rebuilds_after = std::fs::read_to_string(&replica_log)
        .unwrap()
        .matches("rebuild done")
        .count();
    assert!(
        rebuilds_after > rebuilds_before,
        "the restarted replica became healthy without a rebuild"
    );
    eprintln!("three healthy again at {:?}", started.elapsed());
    tell_the_guest(ready);
    let outcome = vm.wait().unwrap();
    assert_pass("replica-loss e2e", &outcome, &up);
    eprintln!("whole test: {:?}", started.elapsed());
}
