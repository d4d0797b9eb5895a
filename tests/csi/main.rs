//! The CSI controller against real replica daemons, and the Kubernetes
//! manifests validated offline.
//!
//! One test binary with a module per suite, so CI links few binaries;
//! run one suite with `cargo test --test csi SUITE::`.

#[path = "../common/mod.rs"]
mod common;

mod csi_controller;
mod deploy_manifests;
