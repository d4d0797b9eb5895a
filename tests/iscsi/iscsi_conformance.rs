//! libiscsi's conformance suite (`iscsi-test-cu`, family ALL, through the
//! team's `../shared/tools/conformance.sh`) against a real `cstor target`
//! over a real replica daemon on loopback. Fails on any failed test.
//!
//! Needs Debian's `libiscsi-bin` (installed by `scripts/test.sh`); without
//! it the test says so and skips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]


use std::process::Command;

use crate::common::{free_addr, ReplicaProcess, TargetProcess};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Parses the script's last line: `N passed, M failed, K skipped`.
fn counts(summary: &str) -> Option<(u32, u32, u32)> {
    let line = summary.lines().rev().find(|l| l.contains(" passed, "))?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().ok());
    Some((numbers.next()??, numbers.next()??, numbers.next()??))
}

#[test]
fn libiscsi_conformance_suite_passes_with_no_failure() {
    if !have("iscsi-test-cu") {
        eprintln!("skipped: iscsi-test-cu not installed (apt-get install libiscsi-bin; scripts/test.sh does)");
        return;
    }
    let script = crate::common::shared_tool("conformance.sh");
    assert!(
        script.exists(),
        "{} not found (set CSTOR_SHARED_DIR)",
        script.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let replica = ReplicaProcess::create(dir.path(), "2GiB");
    replica.ctl(&["volume", "create", "lun", "--size", "512MiB"]);
    let portal = free_addr();
    let target = TargetProcess::start(dir.path(), portal, "lun", &[replica.data]);
    let url = format!("iscsi://{portal}/{}/0", target.iqn);
    let out_file = dir.path().join("conformance.txt");
    let run = Command::new("bash")
        .arg(&script)
        .arg(&url)
        .arg(&out_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let table = std::fs::read_to_string(&out_file).unwrap_or_default();
    eprintln!("{table}");
    let (passed, failed, skipped) = counts(&stdout).unwrap_or_else(|| {
        panic!(
            "no summary line: {stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        )
    });
    eprintln!("conformance: {passed} passed, {failed} failed, {skipped} skipped (tgt: 160 passed, 8 failed, 62 skipped)");
    assert_eq!(
        failed,
        0,
        "conformance failures:\n{table}\ntarget log:\n{}",
        target.log_text()
    );
    assert!(passed > 160, "fewer passed than tgt's 160: {passed}");
}

#[test]
fn summary_line_is_parsed() {
    assert_eq!(
        counts("x\n172 passed, 5 failed, 53 skipped\n"),
        Some((172, 5, 53))
    );
    assert_eq!(counts("nothing"), None);
}
