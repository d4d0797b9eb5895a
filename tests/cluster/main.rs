//! Cross-process tests of the data plane: replica daemons, targets,
//! `cstor up` and `cstor ctl` as real child processes on loopback.
//!
//! One test binary with a module per suite, so CI links few binaries;
//! run one suite with `cargo test --test cluster SUITE::`.

#[path = "../common/mod.rs"]
mod common;

mod certs;
mod ctl_cli;
mod failures;
mod initiator_access;
mod integrity;
mod membership;
mod metrics;
mod no_space;
mod rebuild;
mod rebuild_snapshots;
mod replica_daemon;
mod scrub;
mod security;
mod snapshot_resize;
mod up;
mod volume_replication;
