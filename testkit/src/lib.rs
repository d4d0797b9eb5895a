//! The project's own test harness, used by the tests of every crate (as a
//! dev-dependency) and runnable by hand:
//!
//! - [`skip`]: a test that cannot run here says why and is counted as
//!   skipped by `scripts/test.sh`, never as passed; where the machine must
//!   have the prerequisite (CI: root on Debian), the skip fails the test;
//! - [`apt`]: Debian packages the harness needs, installed on first use.
//!
//! Nothing here refers to a path outside the repository.

pub mod apt;
pub mod conformance;
pub mod skip;
pub mod vm;

pub use skip::{is_root, skip, Need};
