//! The CSI Node service for real: the team's VM harness
//! (`../shared/tools/vm/run-e2e.sh`) boots Debian's kernel with the `cstor`
//! binary and the `node_client` example added, and `tests/vm/csi-node.sh`
//! runs `cstor csi --mode node` in the guest and drives NodeStage/Publish/
//! Expand/Stats/Unpublish/Unstage over its socket against two targets on
//! this machine: an ext4 volume behind CHAP and an xfs volume, both
//! admitting only the initiator name of node `vm-node` (what the controller
//! sets up). The host grows each volume through the target's management
//! API when the guest signals it. Then the remount check: a third volume on
//! two replicas (consistency factor 2) loses one (SIGSTOP) until ext4 turns
//! read-only, gets it back (SIGCONT), and the guest checks that the node
//! service brings the filesystem back read-write (see
//! `cstor_csi::node::remount`).
//!
//! Needs root (the harness installs QEMU and open-iscsi and builds an
//! initramfs); without it the test says so and skips. The `node_client`
//! example must be built (`cargo test --workspace` builds every example;
//! otherwise `cargo build -p cstor-csi --example node_client`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]


use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::common::{cstor_bin, free_addr, ReplicaProcess, TargetProcess};

const NODE_ID: &str = "vm-node";
const MIB: u64 = 1 << 20;
const CHAP_USER: &str = "vm-node-chap";
const CHAP_SECRET: &str = "csi-node-secret-12";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

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
        eprintln!("skipped: the VM harness needs root");
        return;
    }
    let script = crate::common::shared_tool("vm/run-e2e.sh");
    assert!(
        script.exists(),
        "{} not found (set CSTOR_SHARED_DIR)",
        script.display()
    );
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
    // The guest prints "E2E-SIGNAL: grow-FS"; the host grows that volume.
    let on_boot = format!(
        "case \"$1\" in \
           grow-ext4) exec {c} ctl --target {mgmt_ext4} resize --size {grow_ext4} ;; \
           grow-xfs) exec {c} ctl --target {mgmt_xfs} resize --size {grow_xfs} ;; \
           stop-replica) exec kill -STOP {pid_b} ;; \
           cont-replica) exec kill -CONT {pid_b} ;; \
           *) echo \"unknown signal $1\"; exit 1 ;; \
         esac",
        c = cstor_bin(),
        pid_b = replica_b.pid()
    );
    let log = dir.path().join("e2e-console.log");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(ext4.portal.port().to_string())
        .arg(&ext4.iqn)
        .args(["--quiet", "--timeout", "900", "--log"])
        .arg(&log)
        .arg("--add-bin")
        .arg(&cstor)
        .arg("--add-bin")
        .arg(&client)
        .arg("--guest-script")
        .arg(&guest_script)
        .args(["--guest-env", &format!("NODE_ID={NODE_ID}")])
        .args(["--guest-env", &format!("XFS_PORT={}", xfs.portal.port())])
        .args(["--guest-env", &format!("XFS_IQN={}", xfs.iqn)])
        .args(["--guest-env", &format!("MGMT_EXT4={}", mgmt_ext4.port())])
        .args(["--guest-env", &format!("MGMT_XFS={}", mgmt_xfs.port())])
        .args(["--guest-env", &format!("GROW_EXT4={grow_ext4}")])
        .args(["--guest-env", &format!("GROW_XFS={grow_xfs}")])
        .args(["--guest-env", &format!("CHAP_USER={CHAP_USER}")])
        .args(["--guest-env", &format!("CHAP_SECRET={CHAP_SECRET}")])
        .args(["--guest-env", &format!("RO_PORT={}", ro.portal.port())])
        .args(["--guest-env", &format!("RO_IQN={}", ro.iqn)])
        .args(["--guest-env", &format!("MGMT_RO={}", mgmt_ro.port())])
        .arg("--on-boot")
        .arg(&on_boot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    eprintln!("VM test took {} s", started.elapsed().as_secs());
    assert!(
        out.status.success() && stdout.contains("E2E-RESULT: PASS"),
        "VM test failed:\n{stdout}\n{}\nconsole: {}\non-boot: {}\next4 target log:\n{}\nxfs target log:\n{}\nremount target log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(log.with_extension("log.on-boot")).unwrap_or_default(),
        ext4.log_text(),
        xfs.log_text(),
        ro.log_text()
    );
}
