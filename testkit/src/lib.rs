//! The project's own test harness, used by the tests of every crate (as a
//! dev-dependency) and runnable by hand:
//!
//! - [`skip()`]: a test that cannot run here says why and is counted as
//!   skipped by `scripts/test.sh`, never as passed; where the machine must
//!   have the prerequisite (CI: root on Debian), the skip fails the test;
//! - [`apt`]: Debian packages the harness needs, installed on first use;
//! - [`conformance`]: libiscsi's `iscsi-test-cu` run suite by suite against
//!   a target, with passed / failed / skipped per suite (binary
//!   `cstor-conformance`);
//! - [`vm`]: a Linux VM (Debian's kernel, open-iscsi) that logs into a
//!   target on the host, runs the built-in test or a guest script, and can
//!   signal the host mid-run (binary `cstor-vm`).
//!
//! Nothing here refers to a path outside the repository.

pub mod apt;
pub mod conformance;
pub mod skip;
pub mod vm;

pub use skip::{is_root, skip, Need};
