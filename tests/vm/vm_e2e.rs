//! The Linux kernel's iSCSI initiator against `cstor target`: the team's VM
//! harness (`../shared/tools/vm/run-e2e.sh`) boots Debian's kernel under
//! QEMU (KVM where it works, TCG otherwise), logs into the target on this
//! machine's loopback, makes an ext4 filesystem, writes, logs out and in
//! again, fscks and verifies.
//!
//! Needs root (the harness installs QEMU and open-iscsi with apt-get and
//! builds an initramfs); without it the test says so and skips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]


use std::process::Command;

use crate::common::{free_addr, ReplicaProcess, TargetProcess};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn linux_initiator_logs_in_makes_ext4_and_reads_it_back() {
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
    let dir = tempfile::tempdir().unwrap();
    let replica = ReplicaProcess::create(dir.path(), "2GiB");
    replica.ctl(&["volume", "create", "vmvol", "--size", "512MiB"]);
    let portal = free_addr();
    let target = TargetProcess::start(dir.path(), portal, "vmvol", &[replica.data]);
    let log = dir.path().join("e2e-console.log");
    let out = Command::new("bash")
        .arg(&script)
        .arg(portal.port().to_string())
        .arg(&target.iqn)
        .arg("--quiet")
        .arg("--log")
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("E2E-RESULT: PASS"),
        "VM test failed:\n{stdout}\n{}\nconsole: {}\ntarget log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default(),
        target.log_text()
    );
}
