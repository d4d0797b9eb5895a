//! Fuzzes the iSCSI PDU decoder, the key=value text parser and the login
//! state machine with arbitrary byte streams (as received from a socket).
//! The first byte picks digests and the data segment bound. The check is
//! shared with `target/tests/iscsi_fuzz_check.rs`, which replays seeds in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../target/tests/iscsi_fuzz_check.rs"]
mod iscsi_fuzz_check;

fuzz_target!(|data: &[u8]| {
    iscsi_fuzz_check::check(data);
});
