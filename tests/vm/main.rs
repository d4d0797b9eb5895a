//! The Linux kernel's iSCSI initiator, in a VM, against real `cstor`
//! processes on the host.
//!
//! One test binary with a module per suite, so CI links few binaries;
//! run one suite with `cargo test --test vm SUITE::`.

#[path = "../common/mod.rs"]
mod common;

mod csi_node_vm;
mod vm_e2e;
mod vm_up;
