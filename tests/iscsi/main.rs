//! The iSCSI target on the wire: malformed input, and libiscsi's
//! conformance suite, against a real `cstor target`.
//!
//! One test binary with a module per suite, so CI links few binaries;
//! run one suite with `cargo test --test iscsi SUITE::`.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod iscsi_conformance;
mod iscsi_wire;
