//! The pool store: a thin-provisioned, copy-on-write block store with
//! snapshots and clones, on files or block devices.

pub mod io;
