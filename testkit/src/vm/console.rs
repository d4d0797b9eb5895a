//! The lines the guest prints for the host on its serial console.
//!
//! - `E2E-INIT: …`: the guest's /init started (the boot watchdog's marker);
//! - `E2E-SIGNAL: WORD`: the guest asks the host to act (WORD: letters,
//!   digits, `._:+=-`); the host answers `E2E-ACK: WORD` on the console's
//!   input once its callback returned;
//! - `E2E-RESULT: PASS` / `E2E-RESULT: FAIL reason`: the verdict.
//!
//! Other lines (`E2E: …` progress, `E2E-STEP: …`, kernel messages) are
//! only logged. The run passes when the console holds a PASS and no FAIL;
//! the first FAIL names the reason.

use std::fmt;

/// A console line the host acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The guest's /init is running.
    Init,
    /// The guest asks for the host action named by the word.
    Signal(String),
    /// A malformed `E2E-SIGNAL:` line (ignored, but reported).
    BadSignal(String),
    /// The guest's verdict.
    Result(Verdict),
    /// Anything else.
    Other,
}

/// The guest's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `E2E-RESULT: PASS`.
    Pass,
    /// `E2E-RESULT: FAIL reason` (or any other text after `E2E-RESULT:`).
    Fail(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("PASS"),
            Verdict::Fail(reason) => write!(f, "FAIL {reason}"),
        }
    }
}

/// Classifies one console line (without its line ending; a trailing `\r`
/// from the serial line is ignored).
pub fn parse(line: &str) -> Line {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.starts_with("E2E-INIT:") {
        return Line::Init;
    }
    if let Some(rest) = line.strip_prefix("E2E-SIGNAL:") {
        let word = rest.trim();
        return if is_word(word) {
            Line::Signal(word.to_string())
        } else {
            Line::BadSignal(word.to_string())
        };
    }
    if let Some(rest) = line.strip_prefix("E2E-RESULT:") {
        let rest = rest.trim();
        return Line::Result(if rest == "PASS" {
            Verdict::Pass
        } else {
            Verdict::Fail(rest.strip_prefix("FAIL").unwrap_or(rest).trim().to_string())
        });
    }
    Line::Other
}

/// Whether `word` may name a signal.
pub fn is_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+=-".contains(&b))
}

/// The acknowledgement the host writes to the console's input after its
/// callback for `word` returned.
pub fn ack(word: &str) -> String {
    format!("E2E-ACK: {word}\n")
}

/// The run's verdict from all the verdict lines seen, in order: the first
/// FAIL, else PASS if there was one, else none (hang, crash, timeout).
pub fn overall<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> Option<Verdict> {
    let mut passed = false;
    for v in verdicts {
        match v {
            Verdict::Fail(_) => return Some(v.clone()),
            Verdict::Pass => passed = true,
        }
    }
    passed.then_some(Verdict::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_parsed() {
        assert_eq!(parse("E2E-RESULT: PASS\r"), Line::Result(Verdict::Pass));
        assert_eq!(
            parse("E2E-RESULT: FAIL login to iqn.x (exit 8)"),
            Line::Result(Verdict::Fail("login to iqn.x (exit 8)".into()))
        );
        assert_eq!(
            parse("E2E-RESULT: maybe"),
            Line::Result(Verdict::Fail("maybe".into()))
        );
        assert_eq!(parse("E2E: E2E-RESULT: PASS"), Line::Other);
        assert_eq!(parse("[  1.0] E2E-RESULT: PASS"), Line::Other);
    }

    #[test]
    fn signals_and_the_init_marker_are_parsed() {
        assert_eq!(
            parse("E2E-SIGNAL: grow-ext4"),
            Line::Signal("grow-ext4".into())
        );
        assert_eq!(
            parse("E2E-SIGNAL:  kill.replica:1+x=y \r"),
            Line::Signal("kill.replica:1+x=y".into())
        );
        assert_eq!(
            parse("E2E-SIGNAL: rm -rf /"),
            Line::BadSignal("rm -rf /".into())
        );
        assert_eq!(parse("E2E-SIGNAL:"), Line::BadSignal(String::new()));
        assert_eq!(parse("E2E-INIT: init started 2.1 s"), Line::Init);
        assert_eq!(parse("E2E: progress"), Line::Other);
        assert_eq!(ack("grow-xfs"), "E2E-ACK: grow-xfs\n");
    }

    #[test]
    fn the_first_fail_wins_and_no_verdict_is_none() {
        let pass = Verdict::Pass;
        let fail = |s: &str| Verdict::Fail(s.into());
        assert_eq!(overall([&pass]), Some(Verdict::Pass));
        assert_eq!(overall([&pass, &pass]), Some(Verdict::Pass));
        let (a, b) = (fail("a"), fail("b"));
        assert_eq!(overall([&pass, &a, &b, &pass]), Some(fail("a")));
        assert_eq!(overall(std::iter::empty()), None);
        assert_eq!(fail("x").to_string(), "FAIL x");
    }
}
