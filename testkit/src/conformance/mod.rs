//! The project's libiscsi conformance runner.
//!
//! Runs libiscsi's SCSI/iSCSI conformance suite, `iscsi-test-cu` (Debian
//! `libiscsi-bin`), against one LUN of a target on loopback, and reports
//! every test as passed, failed or skipped (with libiscsi's reason).
//!
//! - The tests of a family (`ALL` by default: 230 tests in 51 suites with
//!   libiscsi 1.19) are taken from `iscsi-test-cu --list`, and each suite
//!   runs in its own `iscsi-test-cu -t FAMILY.SUITE` process under its own
//!   timeout: a suite that hangs is killed (its whole process group) and a
//!   suite that crashes the tool ends alone; the other suites are still
//!   measured. A test that started but never finished, or never started,
//!   counts as failed ("not run").
//! - The suite is destructive (`--dataloss`, `--allow-sanitize`, on by
//!   default): only loopback URLs are accepted, and the LUN must be scratch.
//! - The output is parsed by [`parse`] (pure, unit-tested on captured
//!   output); [`Report`] prints the per-suite table whose last line is
//!   `N passed, M failed, K skipped`, and gives callers the results.
//!
//! Used by `tests/iscsi/iscsi_conformance.rs` and by the
//! `cstor-conformance` binary (by hand: `cstor-conformance --help`).

pub mod parse;
mod report;
mod url;

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use parse::{Ending, NotRun, Outcome, TestResult};
pub use report::{Report, SuiteResult};

use crate::apt::{self, AptError, Program};

/// The program, and the Debian package that provides it.
pub const PROGRAM: Program = Program {
    command: "iscsi-test-cu",
    package: "libiscsi-bin",
};

/// The initiator names `iscsi-test-cu` logs in with (its defaults); a
/// target with an initiator allowlist must admit both (the reservation and
/// multi-session tests use the second).
pub const INITIATOR_NAMES: [&str; 2] = [
    "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test",
    "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2",
];

/// How long to wait for the rest of a process's output after it ended.
const DRAIN: Duration = Duration::from_secs(5);
/// How often a running suite is checked for exit or timeout.
const POLL: Duration = Duration::from_millis(20);

/// Why the suite could not be run (as opposed to tests that failed).
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("not an iSCSI URL (iscsi://HOST[:PORT]/TARGET-IQN/LUN): {0}")]
    BadUrl(String),
    #[error(
        "refusing {0}: the conformance suite overwrites the LUN, so only a target on \
         loopback (127.0.0.0/8, [::1], localhost) is accepted"
    )]
    NotLoopback(String),
    #[error("{0} not found (Debian package libiscsi-bin; `ensure_installed` installs it as root)")]
    NotInstalled(String),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} --list` failed ({status}): {output}")]
    List {
        program: String,
        status: ExitStatus,
        output: String,
    },
    #[error("no test of `iscsi-test-cu --list` matches {0:?} (FAMILY, FAMILY.SUITE or FAMILY.SUITE.TEST)")]
    NoSuchTests(String),
    #[error("the per-suite timeout must be more than zero")]
    ZeroTimeout,
}

/// What to run, and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// `iscsi://127.0.0.1:PORT/TARGET-IQN/LUN` (loopback only).
    pub url: String,
    /// A second URL to the same LUN, for the MultipathIO suite (which
    /// skips without one).
    pub multipath_url: Option<String>,
    /// `FAMILY` (each suite in its own process), `FAMILY.SUITE` or
    /// `FAMILY.SUITE.TEST`. Default `ALL`.
    pub tests: String,
    /// Wall-clock limit of one suite's process. Default 60 s.
    pub suite_timeout: Duration,
    /// Wall-clock limit of the whole run; suites not started by then are
    /// not run. Default 25 minutes.
    pub timeout: Duration,
    /// `--dataloss`: the write tests. Default on (the LUN is scratch).
    pub dataloss: bool,
    /// `--allow-sanitize`: the SANITIZE tests. Default on.
    pub allow_sanitize: bool,
    /// The program to run; default `iscsi-test-cu` in `PATH`.
    pub program: PathBuf,
    /// Print a line to stderr as each suite ends.
    pub progress: bool,
}

impl Options {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Options {
            url: url.into(),
            multipath_url: None,
            tests: "ALL".to_string(),
            suite_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(25 * 60),
            dataloss: true,
            allow_sanitize: true,
            program: PathBuf::from(PROGRAM.command),
            progress: false,
        }
    }

    /// The options given to every `iscsi-test-cu` process after `-t SEL`.
    fn tool_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.dataloss {
            args.push("--dataloss".to_string());
        }
        if self.allow_sanitize {
            args.push("--allow-sanitize".to_string());
        }
        args.push(self.url.clone());
        args.extend(self.multipath_url.clone());
        args
    }
}

/// Installs `libiscsi-bin` if `iscsi-test-cu` is missing (as root; see
/// [`apt::ensure`]).
pub fn ensure_installed() -> Result<(), AptError> {
    apt::ensure(&[PROGRAM])
}

/// A process to run: the selector passed with `-t`, the suite it is
/// counted under, and the tests `--list` says it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// `FAMILY.SUITE` or `FAMILY.SUITE.TEST`.
    pub selector: String,
    pub suite: String,
    pub tests: Vec<String>,
}

/// The processes to run for `filter`, from the output of
/// `iscsi-test-cu --list` (one name a line: `ALL`, `ALL.Read10`,
/// `ALL.Read10.Simple`…), suites in listed order. Pure.
pub fn select(list: &str, filter: &str) -> Result<Vec<Selection>, ConformanceError> {
    let parts: Vec<&str> = filter.split('.').collect();
    if filter.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(ConformanceError::NoSuchTests(filter.to_string()));
    }
    let mut selections: Vec<Selection> = Vec::new();
    for line in list.lines() {
        let name: Vec<&str> = line.trim().split('.').collect();
        let [family, suite, test] = name[..] else {
            continue;
        };
        if parts[..] != name[..parts.len()] {
            continue;
        }
        let selector = if parts.len() == 3 {
            line.trim().to_string()
        } else {
            format!("{family}.{suite}")
        };
        match selections.iter_mut().find(|s| s.selector == selector) {
            Some(selection) => {
                if !selection.tests.iter().any(|t| t == test) {
                    selection.tests.push(test.to_string());
                }
            }
            None => selections.push(Selection {
                selector,
                suite: suite.to_string(),
                tests: vec![test.to_string()],
            }),
        }
    }
    if selections.is_empty() {
        return Err(ConformanceError::NoSuchTests(filter.to_string()));
    }
    Ok(selections)
}

/// Runs the suites `options` select and reports every test.
///
/// Errors only when nothing could be measured: a bad or non-loopback URL,
/// no `iscsi-test-cu`, or a filter that selects nothing. Failures,
/// hangs and crashes are in the [`Report`].
pub fn run(options: &Options) -> Result<Report, ConformanceError> {
    url::check(&options.url)?;
    if let Some(second) = &options.multipath_url {
        url::check(second)?;
    }
    if options.suite_timeout.is_zero() {
        return Err(ConformanceError::ZeroTimeout);
    }
    let program = options.program.to_string_lossy().into_owned();
    if !apt::have(&program) {
        return Err(ConformanceError::NotInstalled(program));
    }
    let list = list(options)?;
    let selections = select(&list, &options.tests)?;
    let started = Instant::now();
    let deadline = started + options.timeout;
    let mut suites = Vec::with_capacity(selections.len());
    for selection in &selections {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = if left.is_zero() {
            SuiteResult::from_output(selection, String::new(), Ending::NotStarted, 0.0)
        } else {
            run_suite(options, selection, options.suite_timeout.min(left))?
        };
        if options.progress {
            eprintln!("conformance: {}", result.progress_line());
        }
        suites.push(result);
    }
    Ok(Report {
        url: options.url.clone(),
        tests: options.tests.clone(),
        command: format!(
            "{} -t SELECTOR {}",
            PROGRAM.command,
            options.tool_args().join(" ")
        ),
        version: apt::installed_version(PROGRAM.package),
        suite_timeout: options.suite_timeout,
        seconds: started.elapsed().as_secs_f64(),
        suites,
    })
}

/// `iscsi-test-cu --list`.
fn list(options: &Options) -> Result<String, ConformanceError> {
    let program = options.program.to_string_lossy().into_owned();
    let out = Command::new(&options.program)
        .arg("--list")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ConformanceError::Spawn {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ConformanceError::List {
            program,
            status: out.status,
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One `iscsi-test-cu -t SELECTOR` process under `limit`.
fn run_suite(
    options: &Options,
    selection: &Selection,
    limit: Duration,
) -> Result<SuiteResult, ConformanceError> {
    let mut args = vec!["-t".to_string(), selection.selector.clone()];
    args.extend(options.tool_args());
    let started = Instant::now();
    let (output, ending) = run_process(&options.program, &args, limit)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(SuiteResult::from_output(selection, output, ending, seconds))
}

/// Runs `program args` in its own process group with stdout and stderr
/// merged into one pipe (unbuffered through `stdbuf` when there is one, so
/// a killed process loses no line); kills the group at `limit`.
fn run_process(
    program: &std::path::Path,
    args: &[String],
    limit: Duration,
) -> Result<(String, Ending), ConformanceError> {
    let name = program.to_string_lossy().into_owned();
    let spawn_error = |source| ConformanceError::Spawn {
        program: name.clone(),
        source,
    };
    let (mut reader, writer) = std::io::pipe().map_err(spawn_error)?;
    let writer_err = writer.try_clone().map_err(spawn_error)?;
    let mut command = if apt::have("stdbuf") {
        let mut c = Command::new("stdbuf");
        c.args(["-o0", "-e0"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_err)
        .process_group(0);
    let mut child = command.spawn().map_err(spawn_error)?;
    // The command holds the pipe's write ends: drop them, so that the
    // reader sees the end of the output when the process group is gone.
    drop(command);

    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let deadline = Instant::now() + limit;
    let mut output = Vec::new();
    let ending = loop {
        while let Ok(chunk) = rx.try_recv() {
            output.extend_from_slice(&chunk);
        }
        match child.try_wait() {
            Ok(Some(status)) => break ending_of(status),
            Ok(None) => {}
            Err(e) => return Err(spawn_error(e)),
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            // Reaped only after the kill: the group id cannot be reused
            // while its leader is a zombie.
            let _ = child.wait();
            break Ending::TimedOut;
        }
        std::thread::sleep(POLL);
    };
    // The rest of the output, until every writer has closed the pipe.
    let drain_until = Instant::now() + DRAIN;
    loop {
        let left = drain_until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => output.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    Ok((String::from_utf8_lossy(&output).into_owned(), ending))
}

fn ending_of(status: ExitStatus) -> Ending {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(signal)) => Ending::Signaled(signal),
        (None, None) => Ending::Exited(-1),
    }
}

/// SIGKILL to the process group led by our child `pid`.
#[allow(unsafe_code)]
fn kill_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; the group is the one
    // our child leads (process_group(0)) and the child is not reaped yet.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The start of `iscsi-test-cu --list` (libiscsi-bin 1.19.0-3), and a
    // suite of another family.
    const LIST: &str = "ALL\nALL.CompareAndWrite\nALL.CompareAndWrite.Simple\nALL.CompareAndWrite.DpoFua\nALL.Read10\nALL.Read10.Simple\nALL.Read10.BeyondEol\nSCSI\nSCSI.Read10\nSCSI.Read10.Simple\n";

    #[test]
    fn a_family_is_one_process_per_suite_in_listed_order() {
        let s = select(LIST, "ALL").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].selector, "ALL.CompareAndWrite");
        assert_eq!(s[0].suite, "CompareAndWrite");
        assert_eq!(s[0].tests, ["Simple", "DpoFua"]);
        assert_eq!(s[1].selector, "ALL.Read10");
        assert_eq!(s[1].tests, ["Simple", "BeyondEol"]);
    }

    #[test]
    fn a_suite_or_a_test_selects_just_that() {
        let s = select(LIST, "ALL.Read10").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].tests, ["Simple", "BeyondEol"]);
        let t = select(LIST, "ALL.Read10.BeyondEol").unwrap();
        assert_eq!(
            t,
            [Selection {
                selector: "ALL.Read10.BeyondEol".to_string(),
                suite: "Read10".to_string(),
                tests: vec!["BeyondEol".to_string()],
            }]
        );
    }

    #[test]
    fn a_filter_that_matches_nothing_is_an_error_not_an_empty_pass() {
        for filter in [
            "",
            "NONE",
            "ALL.Read1",
            "ALL.Read10.Nope",
            "ALL..Simple",
            "A.B.C.D",
        ] {
            assert!(
                matches!(select(LIST, filter), Err(ConformanceError::NoSuchTests(_))),
                "{filter}"
            );
        }
    }

    #[test]
    fn the_tool_gets_the_destructive_options_by_default() {
        let o = Options::new("iscsi://127.0.0.1:3260/iqn.x:y/0");
        assert_eq!(
            o.tool_args(),
            [
                "--dataloss",
                "--allow-sanitize",
                "iscsi://127.0.0.1:3260/iqn.x:y/0"
            ]
        );
        assert_eq!(o.tests, "ALL");
        assert_eq!(o.suite_timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_remote_url_is_refused_before_anything_runs() {
        let o = Options::new("iscsi://10.0.0.5:3260/iqn.x:y/0");
        assert!(matches!(run(&o), Err(ConformanceError::NotLoopback(_))));
    }

    #[test]
    fn a_process_past_its_limit_is_killed_with_its_group_and_its_output_kept() {
        let args = [
            "-c".to_string(),
            "echo started; sleep 30 & sleep 30; echo never".to_string(),
        ];
        let t = Instant::now();
        let (out, ending) = run_process(
            std::path::Path::new("sh"),
            &args,
            Duration::from_millis(500),
        )
        .unwrap();
        assert_eq!(ending, Ending::TimedOut);
        assert_eq!(out, "started\n");
        // The background sleep was killed too: the pipe closed at once.
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }

    #[test]
    fn exit_status_and_signals_are_told_apart() {
        let run = |script: &str| {
            run_process(
                std::path::Path::new("sh"),
                &["-c".to_string(), script.to_string()],
                Duration::from_secs(10),
            )
            .unwrap()
        };
        assert_eq!(
            run("echo out; echo err >&2; exit 1"),
            ("out\nerr\n".to_string(), Ending::Exited(1))
        );
        assert_eq!(run("kill -SEGV $$").1, Ending::Signaled(libc::SIGSEGV));
    }
}
