//! Honest skips.
//!
//! libtest has no "skipped" outcome: a test that returns early passes. So a
//! test that cannot run on this machine calls [`skip`], which
//!
//! - in strict mode (`CSTOR_TEST_STRICT=1`, which `scripts/test.sh` sets
//!   when it runs as root on Debian, as CI does) panics: there the
//!   prerequisite is one the run is supposed to have, and a test that did
//!   not run must not look like one that passed — unless the need is
//!   [`Need::External`] (a cluster of the user's: recorded as skipped);
//! - otherwise appends a record to the file named by `CSTOR_TEST_SKIP_LOG`
//!   (set by `scripts/test.sh`), from which the run's summary counts the
//!   test as skipped, not passed, and lists it with its reason; and says
//!   so on stderr.
//!
//! A record is one line, `binary<TAB>test<TAB>need<TAB>reason`, written
//! with a single `write` on a file opened `O_APPEND`, so parallel tests and
//! processes never interleave inside a line.

use std::fmt;
use std::io::Write;

/// The environment variable naming the skip log.
pub const SKIP_LOG_ENV: &str = "CSTOR_TEST_SKIP_LOG";
/// The environment variable that turns a skip into a failure.
pub const STRICT_ENV: &str = "CSTOR_TEST_STRICT";

/// What a test needs from the machine that it may not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root privileges (loop devices, apt-get, mounts).
    Root,
    /// An io_uring the kernel grants to this process.
    IoUring,
    /// Loop devices (`losetup`).
    LoopDevice,
    /// A tmpfs at /dev/shm.
    Tmpfs,
    /// A block device under /dev to compare with sysfs.
    BlockDevice,
    /// A program or package the project's scripts install.
    Tool(&'static str),
    /// Something outside the machine that no run is required to have and
    /// the project cannot install (a Kubernetes API server named by
    /// `KUBECONFIG`): skipped, and counted so, also in strict mode.
    External(&'static str),
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Root => f.write_str("root"),
            Need::IoUring => f.write_str("io_uring"),
            Need::LoopDevice => f.write_str("loop devices"),
            Need::Tmpfs => f.write_str("tmpfs at /dev/shm"),
            Need::BlockDevice => f.write_str("a block device"),
            Need::Tool(name) | Need::External(name) => write!(f, "{name}"),
        }
    }
}

/// Records that the calling test (or the part of it that needs `need`) did
/// not run, and why; panics instead in strict mode. The caller returns (or
/// leaves out the part) afterwards. A test with any skipped part is counted
/// as skipped.
#[allow(clippy::panic)] // a test harness: the panic is the failure it reports
pub fn skip(need: Need, reason: impl fmt::Display) {
    let test = test_name();
    if strict() && !matches!(need, Need::External(_)) {
        panic!("{test}: needs {need}, which this run must have ({STRICT_ENV}=1): {reason}");
    }
    eprintln!("SKIPPED {test}: needs {need}: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let line = format!(
            "{}\t{}\t{}\t{}\n",
            binary_name(),
            test,
            one_line(&need.to_string()),
            one_line(&reason.to_string())
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            // The summary cannot count this skip: make the test fail rather
            // than pass unseen.
            panic!("{test}: cannot record the skip in {path:?}: {e}");
        }
    }
}

/// Whether skips fail (strict mode).
pub fn strict() -> bool {
    std::env::var(STRICT_ENV).is_ok_and(|v| v == "1")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid() == 0
    }
}

/// The test's name as libtest reports it (libtest names each test's
/// thread after the test), else the thread's name or "main".
fn test_name() -> String {
    std::thread::current().name().unwrap_or("main").to_string()
}

/// The test binary's name without cargo's hash suffix ("cluster" for
/// `build/debug/deps/cluster-0123abcd`).
fn binary_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    strip_hash(&stem).to_string()
}

fn strip_hash(stem: &str) -> &str {
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => stem,
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_hash_suffix_is_stripped_and_only_that() {
        assert_eq!(strip_hash("cluster-f245dd952e1f0f8a"), "cluster");
        assert_eq!(strip_hash("pool_kill-0123456789abcdef"), "pool_kill");
        assert_eq!(strip_hash("cstor-testkit"), "cstor-testkit");
        assert_eq!(strip_hash("plain"), "plain");
    }

    #[test]
    fn records_stay_on_one_line() {
        assert_eq!(one_line("a\tb\nc"), "a b c");
    }

    #[test]
    fn libtest_names_the_thread_after_the_test() {
        // With --test-threads=1 libtest may run tests on the main thread.
        let name = test_name();
        if name != "main" {
            assert_eq!(name, "skip::tests::libtest_names_the_thread_after_the_test");
        }
    }
}
