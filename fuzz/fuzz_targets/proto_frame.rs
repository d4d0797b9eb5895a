//! Fuzzes the replication frame decoder and message layer with arbitrary
//! byte streams (as received from a socket), once raw and once with their
//! checksums fixed up so that inputs reach the message parsers. The check is
//! shared with `proto/tests/corpus.rs`, which replays the corpus in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../proto/tests/common/fuzz_check.rs"]
mod fuzz_check;

fuzz_target!(|data: &[u8]| {
    fuzz_check::check(data);
});
