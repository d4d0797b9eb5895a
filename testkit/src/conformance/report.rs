//! The results of a run, and their printed form: a per-suite table, the
//! failed and not-run tests with their messages, the skipped tests with
//! their reasons, and last the line `N passed, M failed, K skipped`.

use std::fmt;
use std::time::Duration;

use super::parse::{self, Ending, Outcome, TestResult};
use super::Selection;

/// One suite: one `iscsi-test-cu` process.
#[derive(Debug, Clone)]
pub struct SuiteResult {
    /// The suite's name (`Read10`).
    pub name: String,
    /// The `-t` selector it ran with (`ALL.Read10`).
    pub selector: String,
    /// Every test `--list` names for the selector, and any other the
    /// process reported, in the order they ran.
    pub tests: Vec<TestResult>,
    /// How the process ended.
    pub ending: Ending,
    /// Its wall-clock time.
    pub seconds: f64,
    /// Problems it reported outside any test (a failed login, a failed
    /// suite set-up).
    pub notes: Vec<String>,
    /// Everything it printed (stdout and stderr, merged).
    pub output: String,
}

impl SuiteResult {
    /// The result of one process from its output and ending. Pure.
    pub fn from_output(
        selection: &Selection,
        output: String,
        ending: Ending,
        seconds: f64,
    ) -> Self {
        let parsed = parse::parse(&output);
        let tests = parse::classify(&parsed, &selection.suite, &selection.tests, ending);
        SuiteResult {
            name: selection.suite.clone(),
            selector: selection.selector.clone(),
            tests,
            ending,
            seconds,
            notes: parsed.notes,
            output,
        }
    }

    fn count(&self, keep: impl Fn(Outcome) -> bool) -> usize {
        self.tests.iter().filter(|t| keep(t.outcome)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|o| o == Outcome::Passed)
    }

    /// Tests that failed an assertion (not counting those not run).
    pub fn failed(&self) -> usize {
        self.count(|o| o == Outcome::Failed)
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| o == Outcome::Skipped)
    }

    /// Tests without a verdict (hung, crashed, never started).
    pub fn not_run(&self) -> usize {
        self.count(|o| matches!(o, Outcome::NotRun(_)))
    }

    /// The last `n` non-blank lines the process printed.
    pub fn last_lines(&self, n: usize) -> Vec<&str> {
        let mut lines: Vec<&str> = self
            .output
            .lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(n)
            .collect();
        lines.reverse();
        lines
    }

    /// The one-line summary printed as each suite ends.
    pub fn progress_line(&self) -> String {
        format!(
            "{} {} passed, {} failed, {} skipped, {} not run ({}, {:.1}s)",
            self.name,
            self.passed(),
            self.failed(),
            self.skipped(),
            self.not_run(),
            self.ending,
            self.seconds
        )
    }
}

/// The results of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub url: String,
    /// The family, suite or test selected.
    pub tests: String,
    /// How each process was started.
    pub command: String,
    /// The installed `libiscsi-bin` version.
    pub version: Option<String>,
    pub suite_timeout: Duration,
    /// Wall-clock time of the whole run.
    pub seconds: f64,
    pub suites: Vec<SuiteResult>,
}

impl Report {
    fn sum(&self, count: impl Fn(&SuiteResult) -> usize) -> usize {
        self.suites.iter().map(count).sum()
    }

    pub fn passed(&self) -> usize {
        self.sum(SuiteResult::passed)
    }

    /// Failed tests, counting those without a verdict (hung, crashed,
    /// never started): the "M failed" of the summary line.
    pub fn failed(&self) -> usize {
        self.sum(SuiteResult::failed) + self.not_run()
    }

    pub fn skipped(&self) -> usize {
        self.sum(SuiteResult::skipped)
    }

    /// Tests without a verdict.
    pub fn not_run(&self) -> usize {
        self.sum(SuiteResult::not_run)
    }

    /// Every test.
    pub fn total(&self) -> usize {
        self.sum(|s| s.tests.len())
    }

    /// Tests that reached a verdict (passed, failed or skipped). None
    /// means nothing was measured: the target was not there, or refused
    /// the login.
    pub fn measured(&self) -> usize {
        self.total() - self.not_run()
    }

    /// No test failed or went without a verdict, and at least one ran.
    pub fn is_success(&self) -> bool {
        self.failed() == 0 && self.total() > 0
    }

    /// `N passed, M failed, K skipped`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }

    /// Every test of `suite.test` with its outcome, in run order.
    pub fn tests(&self) -> impl Iterator<Item = (&SuiteResult, &TestResult)> {
        self.suites
            .iter()
            .flat_map(|s| s.tests.iter().map(move |t| (s, t)))
    }

    /// The failed and not-run tests.
    pub fn failures(&self) -> impl Iterator<Item = (&SuiteResult, &TestResult)> {
        self.tests().filter(|(_, t)| t.outcome.is_failure())
    }

    /// The skipped tests (each with its reasons in `messages`).
    pub fn skips(&self) -> impl Iterator<Item = (&SuiteResult, &TestResult)> {
        self.tests().filter(|(_, t)| t.outcome == Outcome::Skipped)
    }

    /// Suites whose process did not end normally.
    pub fn incomplete(&self) -> impl Iterator<Item = &SuiteResult> {
        self.suites.iter().filter(|s| !s.ending.is_normal())
    }
}

/// The printed report; its last line is [`Report::summary`].
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# iscsi-test-cu conformance results")?;
        writeln!(
            f,
            "# libiscsi-bin {}: {}",
            self.version.as_deref().unwrap_or("(version unknown)"),
            self.command
        )?;
        writeln!(
            f,
            "# tests: {}, one process per suite, each killed after {}s; total wall time {:.1}s",
            self.tests,
            self.suite_timeout.as_secs(),
            self.seconds
        )?;
        writeln!(f, "# url: {}", self.url)?;
        writeln!(f)?;
        writeln!(
            f,
            "not run = hung (killed by the suite timeout), crashed, or never started; \
             counted as failed in the last line"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, cells: [&dyn fmt::Display; 8]| {
            writeln!(
                f,
                "{:<28} {:>6} {:>6} {:>6} {:>6} {:>7} {:>8}  {}",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
            )
        };
        row(
            f,
            [
                &"suite", &"total", &"passed", &"failed", &"skipped", &"not run", &"seconds",
                &"process",
            ],
        )?;
        for s in &self.suites {
            row(
                f,
                [
                    &s.name,
                    &s.tests.len(),
                    &s.passed(),
                    &s.failed(),
                    &s.skipped(),
                    &s.not_run(),
                    &format!("{:.1}", s.seconds),
                    &s.ending,
                ],
            )?;
        }
        row(
            f,
            [
                &"TOTAL",
                &self.total(),
                &self.passed(),
                &self.sum(SuiteResult::failed),
                &self.skipped(),
                &self.not_run(),
                &format!("{:.1}", self.seconds),
                &"",
            ],
        )?;

        let mut incomplete = self.incomplete().peekable();
        if incomplete.peek().is_some() {
            writeln!(f)?;
            writeln!(f, "## suites that did not end normally")?;
            for s in incomplete {
                writeln!(
                    f,
                    "- {} ({}, {:.1}s), its last lines:",
                    s.name, s.ending, s.seconds
                )?;
                for line in s.last_lines(6) {
                    writeln!(f, "    {}", clip(line))?;
                }
            }
        }
        let mut failures = self.failures().peekable();
        if failures.peek().is_some() {
            writeln!(f)?;
            writeln!(f, "## failed and not-run tests")?;
            for (s, t) in failures {
                writeln!(f, "- {}.{}: {}", s.name, t.name, t.outcome)?;
                for message in t.messages.iter().take(8) {
                    writeln!(f, "    {}", clip(message))?;
                }
            }
        }
        let mut skips = self.skips().peekable();
        if skips.peek().is_some() {
            writeln!(f)?;
            writeln!(f, "## skipped tests (libiscsi's reason)")?;
            for (s, t) in skips {
                writeln!(f, "- {}.{}: {}", s.name, t.name, t.messages.join(" / "))?;
            }
        }
        let notes: Vec<(&str, &String)> = self
            .suites
            .iter()
            .filter(|s| s.ending.is_normal())
            .flat_map(|s| s.notes.iter().map(move |n| (s.name.as_str(), n)))
            .collect();
        if !notes.is_empty() {
            writeln!(f)?;
            writeln!(f, "## printed outside any test")?;
            for (suite, note) in notes {
                writeln!(f, "- {suite}: {}", clip(note))?;
            }
        }
        writeln!(f)?;
        writeln!(f, "{}", self.summary())
    }
}

/// A message cut to a readable length (a failing BeyondEol test can log
/// thousands of characters).
fn clip(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(suite: &str, tests: &[&str]) -> Selection {
        Selection {
            selector: format!("ALL.{suite}"),
            suite: suite.to_string(),
            tests: tests.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn report(suites: Vec<SuiteResult>) -> Report {
        Report {
            url: "iscsi://127.0.0.1:3260/iqn.x:y/0".to_string(),
            tests: "ALL".to_string(),
            command: "iscsi-test-cu -t SELECTOR --dataloss".to_string(),
            version: Some("1.19.0-3".to_string()),
            suite_timeout: Duration::from_secs(60),
            seconds: 12.5,
            suites,
        }
    }

    #[test]
    fn counts_add_up_and_not_run_tests_count_as_failed() {
        let read10 = SuiteResult::from_output(
            &selection("Read10", &["Simple", "BeyondEol", "ZeroBlocks"]),
            "Suite: Read10\n  Test: Simple ...passed\n  Test: BeyondEol ...FAILED\n    1. t.c:1  - CU_ASSERT_EQUAL(ret,0)\n  Test: ZeroBlocks ...    [SKIPPED] not for this LU\npassed\n\nRun Summary:\n".to_string(),
            Ending::Exited(1),
            1.31,
        );
        let verify = SuiteResult::from_output(
            &selection("Verify16", &["Simple", "Mismatch"]),
            "Suite: Verify16\n  Test: Simple ...passed\n  Test: Mismatch ...".to_string(),
            Ending::TimedOut,
            60.0,
        );
        let r = report(vec![read10, verify]);
        assert_eq!(
            (r.passed(), r.failed(), r.skipped(), r.not_run()),
            (2, 2, 1, 1)
        );
        assert_eq!(r.total(), 5);
        assert_eq!(r.measured(), 4);
        assert!(!r.is_success());
        assert_eq!(r.summary(), "2 passed, 2 failed, 1 skipped");
        let text = r.to_string();
        assert_eq!(text.lines().last(), Some("2 passed, 2 failed, 1 skipped"));
        assert!(
            text.contains("- Read10.ZeroBlocks: not for this LU"),
            "{text}"
        );
        assert!(
            text.contains("- Read10.BeyondEol: FAILED\n    1. t.c:1  - CU_ASSERT_EQUAL(ret,0)"),
            "{text}"
        );
        assert!(
            text.contains("- Verify16.Mismatch: not run: hung"),
            "{text}"
        );
        assert!(
            text.contains("- Verify16 (timed out, 60.0s), its last lines:\n    Suite: Verify16\n      Test: Simple ...passed\n      Test: Mismatch ...\n"),
            "{text}"
        );
        let row = text.lines().find(|l| l.starts_with("Read10 ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["Read10", "3", "1", "1", "1", "0", "1.3", "rc=1"]);
    }

    #[test]
    fn an_empty_run_is_no_success() {
        let r = report(Vec::new());
        assert!(!r.is_success());
        assert_eq!(
            r.to_string().lines().last(),
            Some("0 passed, 0 failed, 0 skipped")
        );
    }

    #[test]
    fn long_messages_are_clipped_on_a_char_boundary() {
        let long = "é".repeat(300);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), 201);
        assert_eq!(clip("short"), "short");
    }
}
