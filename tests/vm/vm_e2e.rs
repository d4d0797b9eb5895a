//! The Linux kernel's iSCSI initiator against `cstor target`: the project's
//! VM runner (`cstor_testkit::vm`) boots Debian's kernel under QEMU (KVM
//! where it works, TCG otherwise), logs into the target on this machine's
//! loopback, makes an ext4 filesystem, writes (a payload, and a file fio
//! writes and verifies with crc32c), logs out and in again, fscks and
//! verifies the checksums.
//!
//! Needs root (the runner installs QEMU and the guest's tools with apt-get
//! on first use); without it the test is recorded as skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cstor_testkit::vm::{self, Vm, VmError};
use cstor_testkit::{is_root, skip, Need};

use crate::common::{free_addr, ReplicaProcess, TargetProcess};

#[test]
fn linux_initiator_logs_in_makes_ext4_and_reads_it_back() {
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
    let dir = tempfile::tempdir().unwrap();
    let replica = ReplicaProcess::create(dir.path(), "2GiB");
    replica.ctl(&["volume", "create", "vmvol", "--size", "512MiB"]);
    let portal = free_addr();
    let target = TargetProcess::start(dir.path(), portal, "vmvol", &[replica.data]);
    let outcome = Vm::new(portal.port(), &target.iqn)
        .fio(true)
        .timeout(Duration::from_secs(420))
        .console_log(dir.path().join("e2e-console.log"))
        .run()
        .unwrap();
    assert!(
        outcome.passed,
        "VM test failed: {outcome}\ntarget log:\n{}",
        target.log_text()
    );
}
