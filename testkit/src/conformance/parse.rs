//! What one `iscsi-test-cu` process printed, test by test. Pure: text in,
//! results out.
//!
//! The tool runs CUnit's "basic" runner in verbose mode, which prints
//!
//! ```text
//! Suite: Read10
//!   Test: Simple ...passed
//!   Test: BeyondEol ...FAILED
//!     1. test_read10_beyond_eol.c:62  - CU_ASSERT_EQUAL(ret,0)
//!   Test: InvalidDataOutSize ...    [SKIPPED] LBPPB < 2. Skipping test
//! passed
//!
//! Run Summary:    Type  Total    Ran Passed Failed Inactive
//! ```
//!
//! CUnit writes `passed` or `FAILED` right after the test's own log lines
//! (libiscsi's, indented, each ending in a newline), so the verdict starts
//! a line, or follows the `...` of the test's header when the test logged
//! nothing. A failed test's assertions follow as numbered lines. What comes
//! after a verdict on its line is logged by the suite's set-up or tear-down
//! (a `[FAILED] PRIN …` after the last Reserve6 test), not by the test.
//!
//! libiscsi has no "skipped" verdict: a test that does not apply logs
//! `[SKIPPED] reason` and passes. A passed test whose log carries
//! `[SKIPPED]` is counted here as skipped, with its reasons. A passed test
//! may log `[FAILED]` (a command it expected to fail): the verdict counts.
//!
//! A test whose header was printed but not its verdict did not finish: the
//! process was killed or crashed inside it. [`parse`] reports it as
//! [`NotRun::Unfinished`]; [`classify`], told how the process ended, says
//! why, and adds the listed tests that never started.

use std::fmt;

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, and did not say it skipped anything.
    Passed,
    /// Failed at least one assertion.
    Failed,
    /// Passed after logging `[SKIPPED]`: the test did not apply.
    Skipped,
    /// Never reached a verdict. Counted as failed.
    NotRun(NotRun),
}

impl Outcome {
    /// Whether the test counts as failed: a failure, or no verdict.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::NotRun(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("passed"),
            Outcome::Failed => f.write_str("FAILED"),
            Outcome::Skipped => f.write_str("skipped"),
            Outcome::NotRun(why) => write!(f, "not run: {why}"),
        }
    }
}

/// Why a test has no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRun {
    /// Started, no verdict, cause not known yet (see [`classify`]).
    Unfinished,
    /// Started, and the process was killed by the suite's timeout.
    Hung,
    /// Started, and the process died: a signal, or an exit status other
    /// than CUnit's 0 or 1.
    Crashed,
    /// Listed by `iscsi-test-cu --list` but never started: an earlier test
    /// hung or crashed the process, the login or the suite's set-up failed,
    /// or the run's overall time was used up.
    NeverStarted,
}

impl fmt::Display for NotRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotRun::Unfinished => "unfinished",
            NotRun::Hung => "hung, killed by the suite timeout",
            NotRun::Crashed => "iscsi-test-cu died in it",
            NotRun::NeverStarted => "never started",
        })
    }
}

/// One test of a suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// The test's name within its suite (`Simple` of `ALL.Read10.Simple`).
    pub name: String,
    pub outcome: Outcome,
    /// A skipped test's `[SKIPPED]` reasons (without the marker), each
    /// once; a failed or unfinished test's log lines that report a problem
    /// (`[FAILED] …`, `Login Failed …`) and CUnit's assertion lines;
    /// nothing for a passed test.
    pub messages: Vec<String>,
}

/// Everything one process printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Suites in the order they started, each with its tests in order.
    pub suites: Vec<ParsedSuite>,
    /// Whether CUnit printed its run summary: the process ran to the end.
    pub completed: bool,
    /// Lines printed outside any test that say something went wrong:
    /// CUnit's `WARNING - Suite initialization failed …`, libiscsi's
    /// `Login Failed …`.
    pub notes: Vec<String>,
}

/// One `Suite:` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedSuite {
    pub name: String,
    pub tests: Vec<TestResult>,
}

const SKIPPED: &str = "[SKIPPED]";

/// The test whose verdict has not been printed yet.
struct Open {
    name: String,
    /// Its `[SKIPPED]` reasons, each once.
    reasons: Vec<String>,
    /// Its log lines that report a problem (`[FAILED] …`, `Login Failed …`).
    problems: Vec<String>,
}

impl Open {
    fn new(name: &str) -> Self {
        Open {
            name: name.trim().to_string(),
            reasons: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Takes one line of the test's block (or what follows its header's
    /// `...`); returns the verdict if the line carries it.
    fn line(&mut self, line: &str) -> Option<Outcome> {
        if let Some(verdict) = verdict(line) {
            return Some(verdict);
        }
        if let Some(at) = line.find(SKIPPED) {
            let reason = line[at + SKIPPED.len()..].trim();
            let reason = if reason.is_empty() {
                "(no reason given)"
            } else {
                reason
            };
            if !self.reasons.iter().any(|r| r == reason) {
                self.reasons.push(reason.to_string());
            }
        } else if is_problem(line) {
            self.problems.push(line.trim().to_string());
        }
        None
    }

    /// The test with CUnit's verdict. A passed test that logged
    /// `[SKIPPED]` is skipped, with its reasons; a passed test keeps no
    /// message (what it logged as failed, it expected); a failed one keeps
    /// its problem lines.
    fn close(self, verdict: Outcome) -> TestResult {
        let (outcome, messages) = match verdict {
            Outcome::Passed if !self.reasons.is_empty() => (Outcome::Skipped, self.reasons),
            Outcome::Passed => (Outcome::Passed, Vec::new()),
            other => (other, self.problems),
        };
        TestResult {
            name: self.name,
            outcome,
            messages,
        }
    }

    /// The test without a verdict: the process ended inside it.
    fn unfinished(self) -> TestResult {
        TestResult {
            name: self.name,
            outcome: Outcome::NotRun(NotRun::Unfinished),
            messages: self.problems,
        }
    }
}

/// A log line that reports a problem.
fn is_problem(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower.contains("fail") || lower.contains("error")
}

/// Parses the merged stdout and stderr of one `iscsi-test-cu` process.
pub fn parse(output: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut open: Option<Open> = None;
    // The failed test whose numbered assertion lines may follow.
    let mut asserting = false;
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("Run Summary:") {
            file_unfinished(&mut parsed, &mut open);
            parsed.completed = true;
            break;
        }
        if let Some(name) = line.strip_prefix("Suite: ") {
            file_unfinished(&mut parsed, &mut open);
            asserting = false;
            parsed.suites.push(ParsedSuite {
                name: name.trim().to_string(),
                tests: Vec::new(),
            });
            continue;
        }
        let header = line
            .strip_prefix("  Test: ")
            .and_then(|header| header.split_once(" ..."));
        let (current, rest) = match (header, open.take()) {
            (Some((name, rest)), previous) => {
                if let Some(previous) = previous {
                    file(&mut parsed, previous.unfinished());
                }
                asserting = false;
                (Open::new(name), rest)
            }
            (None, Some(current)) => (current, line),
            (None, None) => {
                if asserting && is_assertion(line) {
                    if let Some(test) = parsed.suites.last_mut().and_then(|s| s.tests.last_mut()) {
                        test.messages.push(line.trim().to_string());
                    }
                } else {
                    asserting = false;
                    note(&mut parsed, line);
                }
                continue;
            }
        };
        let mut current = current;
        match current.line(rest) {
            Some(verdict) => {
                asserting = verdict == Outcome::Failed;
                file(&mut parsed, current.close(verdict));
            }
            None => open = Some(current),
        }
    }
    file_unfinished(&mut parsed, &mut open);
    parsed
}

/// The verdict CUnit printed at the start of `line`, if any.
fn verdict(line: &str) -> Option<Outcome> {
    let starts_with_word = |word: &str| {
        line.strip_prefix(word)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
    };
    if starts_with_word("passed") {
        Some(Outcome::Passed)
    } else if starts_with_word("FAILED") {
        Some(Outcome::Failed)
    } else {
        None
    }
}

fn file(parsed: &mut Parsed, test: TestResult) {
    if parsed.suites.is_empty() {
        // A test before any "Suite:" line: not CUnit's format, but keep it.
        parsed.suites.push(ParsedSuite::default());
    }
    if let Some(suite) = parsed.suites.last_mut() {
        suite.tests.push(test);
    }
}

fn file_unfinished(parsed: &mut Parsed, open: &mut Option<Open>) {
    if let Some(current) = open.take() {
        file(parsed, current.unfinished());
    }
}

/// CUnit's `    1. file.c:62  - CU_ASSERT…` line.
fn is_assertion(line: &str) -> bool {
    line.trim_start()
        .split_once(". ")
        .is_some_and(|(number, rest)| {
            !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) && rest.contains(':')
        })
}

/// Keeps a line printed outside any test if it reports a problem.
fn note(parsed: &mut Parsed, line: &str) {
    if is_problem(line) || line.contains("WARNING") {
        parsed.notes.push(line.trim().to_string());
    }
}

/// How an `iscsi-test-cu` process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Exited with this status (CUnit's runner: 0; libiscsi returns 1
    /// when a test failed, 255 when it could not log in).
    Exited(i32),
    /// Killed by the suite's timeout.
    TimedOut,
    /// Killed by a signal we did not send (a crash: 11 is SIGSEGV).
    Signaled(i32),
    /// Not started: the run's overall time was used up.
    NotStarted,
}

impl Ending {
    /// Whether the process ran to its end normally.
    pub fn is_normal(self) -> bool {
        matches!(self, Ending::Exited(0 | 1))
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Exited(code) => write!(f, "rc={code}"),
            Ending::TimedOut => f.write_str("timed out"),
            Ending::Signaled(signal) => write!(f, "signal {signal}"),
            Ending::NotStarted => f.write_str("not started"),
        }
    }
}

/// The tests of suite `suite`: what `parsed` says of them given how the
/// process ended (an unfinished test hung or crashed), then the `expected`
/// tests (from `--list`) it does not mention, as never started.
pub fn classify(
    parsed: &Parsed,
    suite: &str,
    expected: &[String],
    ending: Ending,
) -> Vec<TestResult> {
    let unfinished = match ending {
        Ending::TimedOut => NotRun::Hung,
        _ => NotRun::Crashed,
    };
    let mut tests: Vec<TestResult> = parsed
        .suites
        .iter()
        .filter(|s| s.name == suite || s.name.is_empty())
        .flat_map(|s| s.tests.iter().cloned())
        .map(|mut test| {
            if test.outcome == Outcome::NotRun(NotRun::Unfinished) {
                test.outcome = Outcome::NotRun(unfinished);
            }
            test
        })
        .collect();
    for name in expected {
        if !tests.iter().any(|t| &t.name == name) {
            tests.push(TestResult {
                name: name.clone(),
                outcome: Outcome::NotRun(NotRun::NeverStarted),
                messages: Vec::new(),
            });
        }
    }
    tests
}

#[cfg(test)]
mod tests {
    use super::*;

    const BANNER: &str = "\n\n\n     CUnit - A unit testing framework for C - Version 2.1-3\n     http://cunit.sourceforge.net/\n\n\n";

    fn outcomes(parsed: &Parsed) -> Vec<(String, Outcome)> {
        parsed
            .suites
            .iter()
            .flat_map(|s| s.tests.iter())
            .map(|t| (t.name.clone(), t.outcome))
            .collect()
    }

    fn names(expected: &[&str]) -> Vec<String> {
        expected.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_clean_suite_passes_test_by_test() {
        let out = format!(
            "{BANNER}Suite: Read10\n  Test: Simple ...passed\n  Test: BeyondEol ...passed\n  Test: ZeroBlocks ...passed\n\nRun Summary:    Type  Total    Ran Passed Failed Inactive\n              suites      1      1    n/a      0        0\n               tests      3      3      3      0        0\n             asserts   5651   5651   5651      0      n/a\n\nElapsed time =    0.463 seconds\nTests completed with return value: 0\n"
        );
        let p = parse(&out);
        assert!(p.completed);
        assert_eq!(p.suites.len(), 1);
        assert_eq!(p.suites[0].name, "Read10");
        assert_eq!(
            outcomes(&p),
            [
                ("Simple".to_string(), Outcome::Passed),
                ("BeyondEol".to_string(), Outcome::Passed),
                ("ZeroBlocks".to_string(), Outcome::Passed),
            ]
        );
        assert!(p.suites[0].tests.iter().all(|t| t.messages.is_empty()));
        assert!(p.notes.is_empty());
    }

    #[test]
    fn a_passed_test_that_logged_skipped_is_skipped_with_its_reasons_once() {
        // Captured from ALL.CompareAndWrite and ALL.Sanitize against cstor.
        let out = format!(
            "{BANNER}Suite: Sanitize\n  Test: BlockEraseReserved ...    [SKIPPED] SANITIZE is not implemented.\n    [SKIPPED] SANITIZE is not implemented.\npassed\n  Test: Readonly ...    [INFO] TESTUNITREADY command: failed with sense. SENSE KEY:UNIT_ATTENTION(6) ASCQ:MODE PARAMETERS CHANGED(0x2a01)\n    [SKIPPED] SANITIZE OVERWRITE is not implemented according to REPORT_SUPPORTED_OPCODES.\n    [SKIPPED] SANITIZE BLOCK_ERASE is not implemented according to REPORT_SUPPORTED_OPCODES.\npassed\n  Test: InvalidDataOutSize ...    [SKIPPED] LBPPB < 2. Skipping test\npassed\n\nRun Summary:    Type  Total    Ran Passed Failed Inactive\n"
        );
        let p = parse(&out);
        let tests = &p.suites[0].tests;
        assert!(tests.iter().all(|t| t.outcome == Outcome::Skipped));
        assert_eq!(tests[0].messages, ["SANITIZE is not implemented."]);
        assert_eq!(
            tests[1].messages,
            [
                "SANITIZE OVERWRITE is not implemented according to REPORT_SUPPORTED_OPCODES.",
                "SANITIZE BLOCK_ERASE is not implemented according to REPORT_SUPPORTED_OPCODES.",
            ]
        );
        assert_eq!(tests[2].messages, ["LBPPB < 2. Skipping test"]);
    }

    #[test]
    fn a_log_without_the_skip_marker_is_a_pass() {
        // ALL.WriteSame10.UnmapUntilEnd against a WSNZ=1 target: libiscsi
        // says why it did less, but not "[SKIPPED]"; CUnit and we say passed.
        let out = format!(
            "{BANNER}Suite: WriteSame10\n  Test: UnmapUntilEnd ...    WRITESAME10 does not support 0-blocks.WSNZ == 1\npassed\n  Test: UnmapVPD ...passed\n\nRun Summary:"
        );
        let p = parse(&out);
        assert_eq!(
            outcomes(&p),
            [
                ("UnmapUntilEnd".to_string(), Outcome::Passed),
                ("UnmapVPD".to_string(), Outcome::Passed),
            ]
        );
    }

    #[test]
    fn failed_log_lines_of_a_passed_test_and_of_the_suite_teardown_are_no_failure() {
        // Captured from ALL.Reserve6 against cstor: LUNReset logs the unit
        // attention it provoked and passes; the suite's tear-down logs one
        // more after the verdict, on the verdict's line.
        let out = format!(
            "{BANNER}Suite: Reserve6\n  Test: TargetWarmReset ...passed\n  Test: LUNReset ...    [FAILED] RESERVE6 command: failed with sense. SENSE KEY:UNIT_ATTENTION(6) ASCQ:BUS_DEVICE_RESET_FUNCTION_OCCURED(0x2903)\npassed    [FAILED] PRIN command: failed with sense. SENSE KEY:UNIT_ATTENTION(6) ASCQ:BUS_DEVICE_RESET_FUNCTION_OCCURED(0x2903)\n\n\nRun Summary:    Type  Total    Ran Passed Failed Inactive\n"
        );
        let p = parse(&out);
        assert!(p.completed);
        assert_eq!(
            outcomes(&p),
            [
                ("TargetWarmReset".to_string(), Outcome::Passed),
                ("LUNReset".to_string(), Outcome::Passed),
            ]
        );
        assert!(p.suites[0].tests[1].messages.is_empty());
    }

    #[test]
    fn a_failed_test_keeps_its_problems_and_assertions() {
        // Captured from ALL.Reserve6 against a cstor target that admitted
        // only libiscsi's first initiator name: the tests that log in as
        // the second fail (rc 1).
        let out = format!(
            "{BANNER}Suite: Reserve6\n  Test: Simple ...passed\n  Test: 2Initiators ...    Take out a RESERVE6 from the first initiator\n    Verify that the first initiator can re-RESERVE6 the same reservation\nLogin Failed. Failed to log in to target. Status: Authorization failure(514)\nFAILED\n    1. test_reserve6_2initiators.c:52  - CU_ASSERT_EQUAL(ret,0)\n  Test: TargetColdReset ...    [SKIPPED] Task Management functionfor ColdReset is not working/implemented\n\npassed\n  Test: TargetWarmReset ...Login Failed. Failed to log in to target. Status: Authorization failure(514)\nFAILED\n    1. test_reserve6_target_warm_reset.c:63  - CU_ASSERT_EQUAL(ret,0)\n  Test: LUNReset ...    [FAILED] RESERVE6 command: failed with sense. SENSE KEY:UNIT_ATTENTION(6) ASCQ:BUS_DEVICE_RESET_FUNCTION_OCCURED(0x2903)\nLogin Failed. Failed to log in to target. Status: Authorization failure(514)\npassed    [FAILED] PRIN command: failed with sense. SENSE KEY:UNIT_ATTENTION(6) ASCQ:BUS_DEVICE_RESET_FUNCTION_OCCURED(0x2903)\n\n\nRun Summary:    Type  Total    Ran Passed Failed Inactive\n              suites      1      1    n/a      0        0\n               tests      7      7      3      4        0\n"
        );
        let p = parse(&out);
        assert!(p.completed);
        assert_eq!(
            outcomes(&p),
            [
                ("Simple".to_string(), Outcome::Passed),
                ("2Initiators".to_string(), Outcome::Failed),
                ("TargetColdReset".to_string(), Outcome::Skipped),
                ("TargetWarmReset".to_string(), Outcome::Failed),
                ("LUNReset".to_string(), Outcome::Passed),
            ]
        );
        let tests = &p.suites[0].tests;
        assert_eq!(
            tests[1].messages,
            [
                "Login Failed. Failed to log in to target. Status: Authorization failure(514)",
                "1. test_reserve6_2initiators.c:52  - CU_ASSERT_EQUAL(ret,0)",
            ]
        );
        assert_eq!(
            tests[2].messages,
            ["Task Management functionfor ColdReset is not working/implemented"]
        );
        assert_eq!(tests[3].messages.len(), 2);
        assert!(tests[4].messages.is_empty());
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn a_test_cut_off_by_a_kill_is_unfinished_then_hung_and_the_rest_never_started() {
        // Captured from ALL.Verify16 whose target was killed a few seconds
        // in: libiscsi retried the login until the suite timeout killed it.
        let out = format!("{BANNER}Suite: Verify16\n  Test: Simple ...");
        let p = parse(&out);
        assert!(!p.completed);
        assert_eq!(
            outcomes(&p),
            [("Simple".to_string(), Outcome::NotRun(NotRun::Unfinished))]
        );
        let expected = names(&["Simple", "BeyondEol", "ZeroBlocks"]);
        let tests = classify(&p, "Verify16", &expected, Ending::TimedOut);
        let got: Vec<Outcome> = tests.iter().map(|t| t.outcome).collect();
        assert_eq!(
            got,
            [
                Outcome::NotRun(NotRun::Hung),
                Outcome::NotRun(NotRun::NeverStarted),
                Outcome::NotRun(NotRun::NeverStarted),
            ]
        );
        let crashed = classify(&p, "Verify16", &expected, Ending::Signaled(11));
        assert_eq!(crashed[0].outcome, Outcome::NotRun(NotRun::Crashed));
        assert!(crashed.iter().all(|t| t.outcome.is_failure()));
    }

    #[test]
    fn a_failed_login_runs_nothing_and_every_listed_test_is_not_run() {
        // Captured from iscsi-test-cu against a port nothing listens on
        // (rc 255).
        let out = "Login Failed. iscsi_service failed with : iscsi_service_reconnect_if_loggedin. Can not reconnect right now.\n\nFailed to connect to SCSI device 0\n";
        let p = parse(out);
        assert!(!p.completed);
        assert!(p.suites.is_empty());
        assert_eq!(p.notes.len(), 2);
        let expected = names(&["Simple", "BeyondEol"]);
        let tests = classify(&p, "Read10", &expected, Ending::Exited(255));
        assert_eq!(tests.len(), 2);
        assert!(tests
            .iter()
            .all(|t| t.outcome == Outcome::NotRun(NotRun::NeverStarted)));
    }

    #[test]
    fn a_suite_that_cannot_start_leaves_notes_and_its_tests_not_run() {
        // Captured from ALL.MultipathIO given two URLs to different LUNs
        // (rc 255, before CUnit's banner).
        let out = "skipping non-LU designator: 1\nskipping non-LU designator: 1\nskipping unsupported des type: 1\nfailed to find matching LU device ID for all paths\nmultipath unit serial mismatch: 0f249651af9b68a1beee != e4563a9b6215b4e49ba3\nfailed to find matching serial number for all paths\nmultipath devices don't match\n";
        let p = parse(out);
        assert!(!p.completed);
        assert_eq!(
            p.notes,
            [
                "failed to find matching LU device ID for all paths",
                "failed to find matching serial number for all paths",
            ]
        );
        let tests = classify(
            &p,
            "MultipathIO",
            &names(&["Simple", "Reset"]),
            Ending::Exited(255),
        );
        assert!(tests
            .iter()
            .all(|t| t.outcome == Outcome::NotRun(NotRun::NeverStarted)));
    }

    #[test]
    fn only_a_word_at_the_start_of_a_line_is_a_verdict() {
        assert_eq!(verdict("passed"), Some(Outcome::Passed));
        assert_eq!(verdict("passed    [FAILED] PRIN"), Some(Outcome::Passed));
        assert_eq!(verdict("FAILED"), Some(Outcome::Failed));
        assert_eq!(verdict("    [FAILED] READ10"), None);
        assert_eq!(verdict("    the check passed"), None);
        assert_eq!(verdict("passedx"), None);
    }

    #[test]
    fn assertion_lines_are_numbered_file_and_line() {
        assert!(is_assertion(
            "    1. test_read10_simple.c:50  - CU_ASSERT_EQUAL(ret,0)"
        ));
        assert!(!is_assertion("    [FAILED] READ10"));
        assert!(!is_assertion("Suite: Read10"));
    }
}
