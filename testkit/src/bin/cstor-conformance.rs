//! `cstor-conformance`: libiscsi's conformance suite (`iscsi-test-cu`)
//! against one scratch LUN of a target on loopback, one process per suite,
//! with a per-suite table whose last line is `N passed, M failed, K
//! skipped`. See `cstor_testkit::conformance`.
//!
//! Exit status: 0 no test failed, 1 some test failed (or hung, crashed,
//! never started), 2 the suite could not be run or no test reached a
//! verdict.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use cstor_testkit::conformance::{self, Options};

/// Runs libiscsi's conformance suite (iscsi-test-cu, Debian libiscsi-bin)
/// against a scratch LUN on loopback: each suite in its own process under
/// its own timeout. The suite OVERWRITES the LUN.
///
/// Exit status: 0 no test failed, 1 a test failed (or hung, crashed, never
/// started), 2 the suite could not be run, or no test reached a verdict
/// (no target, login refused).
#[derive(Debug, Parser)]
#[command(name = "cstor-conformance")]
struct Args {
    /// iscsi://127.0.0.1:PORT/TARGET-IQN/LUN (loopback only).
    url: String,
    /// FAMILY (one process per suite), FAMILY.SUITE or FAMILY.SUITE.TEST,
    /// as `iscsi-test-cu --list` names them.
    #[arg(long, default_value = "ALL")]
    tests: String,
    /// Seconds one suite may run before its process group is killed.
    #[arg(long, default_value_t = 60)]
    suite_timeout: u64,
    /// Seconds the whole run may take; suites not started by then count as
    /// not run.
    #[arg(long, default_value_t = 1500)]
    timeout: u64,
    /// Write the report (the table and lists printed on stdout) to FILE too.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write everything iscsi-test-cu printed, suite by suite, to FILE.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// A second URL to the same LUN, for the MultipathIO suite.
    #[arg(long, value_name = "URL")]
    multipath_url: Option<String>,
    /// Leave out the destructive write tests (iscsi-test-cu --dataloss).
    #[arg(long)]
    no_dataloss: bool,
    /// Leave out the SANITIZE tests (iscsi-test-cu --allow-sanitize).
    #[arg(long)]
    no_sanitize: bool,
    /// Do not install libiscsi-bin when iscsi-test-cu is missing.
    #[arg(long)]
    no_install: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.no_install {
        if let Err(e) = conformance::ensure_installed() {
            eprintln!("cstor-conformance: {e}");
            return ExitCode::from(2);
        }
    }
    let mut options = Options::new(args.url);
    options.tests = args.tests;
    options.suite_timeout = Duration::from_secs(args.suite_timeout);
    options.timeout = Duration::from_secs(args.timeout);
    options.multipath_url = args.multipath_url;
    options.dataloss = !args.no_dataloss;
    options.allow_sanitize = !args.no_sanitize;
    options.progress = true;
    let report = match conformance::run(&options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("cstor-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    let text = report.to_string();
    print!("{text}");
    if let Some(path) = &args.out {
        if let Err(e) = std::fs::write(path, &text) {
            eprintln!("cstor-conformance: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &args.log {
        let log: String = report
            .suites
            .iter()
            .map(|s| {
                format!(
                    "=== {} ({}, {:.1}s)\n{}\n",
                    s.selector, s.ending, s.seconds, s.output
                )
            })
            .collect();
        if let Err(e) = std::fs::write(path, log) {
            eprintln!("cstor-conformance: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.measured() == 0 {
        eprintln!(
            "cstor-conformance: no test reached a verdict: is the target up, and does it admit \
             libiscsi's initiator names? (see the suites' last lines above)"
        );
        return ExitCode::from(2);
    }
    if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
