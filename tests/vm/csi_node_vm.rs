//! The CSI Node service for real: the project's VM runner
//! (`cstor_testkit::vm`) boots Debian's kernel with the `cstor` binary and
//! the `node_client` example added, and `tests/vm/csi-node.sh`
//! runs `cstor csi --mode node` in the guest and drives NodeStage/Publish/
//! Expand/Stats/Unpublish/Unstage over its socket against two targets on
//! this machine: an ext4 volume behind CHAP and an xfs volume, both
//! admitting only the initiator name of node `vm-node` (what the controller
//! sets up). The host grows each volume through the target's management
//! API when the guest signals it (`e2e-signal grow-FS`, which returns once
//! the host's callback did it). Then the remount check: a third volume on
//! two replicas (consistency factor 2) loses one (SIGSTOP) until ext4 turns
//! read-only, gets it back (SIGCONT), and the guest checks that the node
//! service brings the filesystem back read-write (see
//! `cstor_csi::node::remount`).
//!
//! Needs root (the runner installs QEMU and open-iscsi with apt-get on
//! first use); without it the test is recorded as skipped. The `node_client`
//! example must be built (`cargo test --workspace` builds every example;
//! otherwise `cargo build -p cstor-csi --example node_client`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cstor_testkit::vm::{self, Vm, VmError};
use cstor_testkit::{is_root, skip, Need};

use crate::common::{cstor_bin, free_addr, ReplicaProcess, TargetProcess};

const NODE_ID: &str = "vm-node";
const MIB: u64 = 1 << 20;
const CHAP_USER: &str = "vm-node-chap";
const CHAP_SECRET: &str = "csi-node-secret-12";

/// `build/debug/examples/node_client`, next to this test's `deps/` dir.
fn node_client() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let client = dir.join("examples/node_client");
    assert!(
        client.exists(),
        "{} missing: run `cargo build -p cstor-csi --example node_client` \
         (cargo test --workspace builds it)",
        client.display()
    );
    client
}

/// A copy of `bin` without debug info (the guest unpacks it into RAM).
fn stripped(bin: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(bin.file_name().unwrap());
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(bin)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        std::fs::copy(bin, &out).unwrap();
    }
    out
}

#[test]
fn csi_node_stages_publishes_expands_and_restages_ext4_and_xfs_in_a_vm() {
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
    let guest_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/csi-node.sh");
    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    let cstor = stripped(Path::new(cstor_bin()), &bins);
    let client = stripped(&node_client(), &bins);

    let replica = ReplicaProcess::create(dir.path(), "2GiB");
    replica.ctl(&["volume", "create", "csiext4", "--size", "256MiB"]);
    replica.ctl(&["volume", "create", "csixfs", "--size", "512MiB"]);
    let initiator = cstor_csi::initiator_name(NODE_ID);
    let (mgmt_ext4, mgmt_xfs) = (free_addr(), free_addr());
    let ext4 = TargetProcess::start_with(
        dir.path(),
        free_addr(),
        "csiext4",
        &[replica.data],
        &[
            "--mgmt-listen",
            &mgmt_ext4.to_string(),
            "--allow-initiator",
            &initiator,
            "--chap-user",
            CHAP_USER,
        ],
        &[("CSTOR_CHAP_SECRET", CHAP_SECRET)],
    );
    let xfs = TargetProcess::start_with(
        dir.path(),
        free_addr(),
        "csixfs",
        &[replica.data],
        &[
            "--mgmt-listen",
            &mgmt_xfs.to_string(),
            "--allow-initiator",
            &initiator,
        ],
        &[],
    );
    // The remount-check volume: on `replica` and a second daemon, CF 2,
    // a short hold so writes fail soon after the second replica stops.
    let rb_dir = dir.path().join("replica-b");
    std::fs::create_dir(&rb_dir).unwrap();
    let replica_b = ReplicaProcess::create(&rb_dir, "1GiB");
    replica.ctl(&["volume", "create", "csiro", "--size", "256MiB"]);
    replica_b.ctl(&["volume", "create", "csiro", "--size", "256MiB"]);
    let mgmt_ro = free_addr();
    let ro = TargetProcess::start_with(
        dir.path(),
        free_addr(),
        "csiro",
        &[replica.data, replica_b.data],
        &[
            "--mgmt-listen",
            &mgmt_ro.to_string(),
            "--allow-initiator",
            &initiator,
            "--cf",
            "2",
            "--hold-seconds",
            "2",
            "--ack-timeout-seconds",
            "2",
        ],
        &[],
    );
    let (grow_ext4, grow_xfs) = (384 * MIB, 640 * MIB);
    // The guest asks with `e2e-signal WORD`; the callback acts, and the
    // guest goes on once it returned. What failed is asserted at the end.
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let on_signal = {
        let failures = Arc::clone(&failures);
        let pid_b = replica_b.pid().to_string();
        let admin = replica.pki.admin_dir().display().to_string();
        move |word: &str| {
            let (program, args) = match word {
                "grow-ext4" => (
                    cstor_bin(),
                    vec![
                        "ctl".to_string(),
                        "--tls-dir".into(),
                        admin.clone(),
                        "--target".into(),
                        mgmt_ext4.to_string(),
                        "resize".into(),
                        "--size".into(),
                        grow_ext4.to_string(),
                    ],
                ),
                "grow-xfs" => (
                    cstor_bin(),
                    vec![
                        "ctl".to_string(),
                        "--tls-dir".into(),
                        admin.clone(),
                        "--target".into(),
                        mgmt_xfs.to_string(),
                        "resize".into(),
                        "--size".into(),
                        grow_xfs.to_string(),
                    ],
                ),
                "stop-replica" => ("kill", vec!["-STOP".to_string(), pid_b.clone()]),
                "cont-replica" => ("kill", vec!["-CONT".to_string(), pid_b.clone()]),
                other => {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("unknown signal {other}"));
                    return;
                }
            };
            match Command::new(program).args(&args).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => failures.lock().unwrap().push(format!(
                    "{word}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )),
                Err(e) => failures.lock().unwrap().push(format!("{word}: {e}")),
            }
        }
    };
    // The node plugin's TLS directory (a reader of the test's CA), handed
    // to the guest as text.
    let node_tls = replica.pki.reader_dir();
    let pem = |file: &str| std::fs::read_to_string(node_tls.join(file)).unwrap();
    let started = Instant::now();
    let outcome = Vm::new(ext4.portal.port(), &ext4.iqn)
        .timeout(Duration::from_secs(900))
        .console_log(dir.path().join("e2e-console.log"))
        .add_bin(&cstor)
        .add_bin(&client)
        .guest_script(&guest_script)
        .env("NODE_ID", NODE_ID)
        .env("XFS_PORT", xfs.portal.port())
        .env("XFS_IQN", &xfs.iqn)
        .env("MGMT_EXT4", mgmt_ext4.port())
        .env("MGMT_XFS", mgmt_xfs.port())
        .env("GROW_EXT4", grow_ext4)
        .env("GROW_XFS", grow_xfs)
        .env("CHAP_USER", CHAP_USER)
        .env("CHAP_SECRET", CHAP_SECRET)
        .env("RO_PORT", ro.portal.port())
        .env("RO_IQN", &ro.iqn)
        .env("MGMT_RO", mgmt_ro.port())
        .env("TLS_CA", pem("ca.crt"))
        .env("TLS_CRT", pem("tls.crt"))
        .env("TLS_KEY", pem("tls.key"))
        .on_signal(on_signal)
        .run()
        .unwrap();
    eprintln!("VM test took {} s", started.elapsed().as_secs());
    let failures = failures.lock().unwrap().clone();
    assert!(
        outcome.passed && failures.is_empty(),
        "VM test failed: {outcome}\nhost actions that failed: {failures:?}\n\
         ext4 target log:\n{}\nxfs target log:\n{}\nremount target log:\n{}",
        ext4.log_text(),
        xfs.log_text(),
        ro.log_text()
    );
}
