//! libiscsi's conformance suite (`iscsi-test-cu`, family ALL, one process
//! per suite) against a real `cstor target` over a real replica daemon on
//! loopback, through the project's runner
//! (`cstor_testkit::conformance`). Fails on any failed, hung or crashed
//! test; prints the per-suite table.
//!
//! Installs Debian's `libiscsi-bin` on first use (as root); without it the
//! test is recorded as skipped (a failure in strict mode, as in CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cstor_testkit::conformance::{self, Options};
use cstor_testkit::{skip, Need};

use crate::common::{free_addr, ReplicaProcess, TargetProcess};

/// tgt 1.0.85 on the same suite: 160 passed, 8 failed, 62 skipped.
const TGT_PASSED: usize = 160;

#[test]
fn libiscsi_conformance_suite_passes_with_no_failure() {
    if let Err(e) = conformance::ensure_installed() {
        skip(
            Need::Tool("libiscsi-bin"),
            format!("iscsi-test-cu is needed: {e}"),
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let replica = ReplicaProcess::create(dir.path(), "2GiB");
    replica.ctl(&["volume", "create", "lun", "--size", "512MiB"]);
    let portal = free_addr();
    // Admit exactly libiscsi's two initiator names (the reservation and
    // multi-session tests log in as the second): this also keeps an
    // allowlist inherited from the environment from refusing them.
    let initiators = conformance::INITIATOR_NAMES.join(",");
    let target = TargetProcess::start_with(
        dir.path(),
        portal,
        "lun",
        &[replica.data],
        &["--allow-initiator", &initiators],
        &[],
    );
    let mut options = Options::new(format!("iscsi://{portal}/{}/0", target.iqn));
    // The suite timeout is there to catch a hang, not to time the target:
    // the Verify suites take 30-50 s on a loaded two-core CI machine.
    options.suite_timeout = Duration::from_secs(180);
    options.progress = true;
    let report = conformance::run(&options).unwrap_or_else(|e| panic!("conformance runner: {e}"));
    eprintln!("{report}");
    eprintln!(
        "conformance: {} (tgt: {TGT_PASSED} passed, 8 failed, 62 skipped)",
        report.summary()
    );
    assert_eq!(
        report.failed(),
        0,
        "conformance failures:\n{report}\ntarget log:\n{}",
        target.log_text()
    );
    assert!(
        report.passed() > TGT_PASSED,
        "fewer passed than tgt's {TGT_PASSED}: {}",
        report.summary()
    );
}
