//! Replays the committed fuzz corpus (`fuzz/corpus/proto_frame/`) through
//! the fuzz target's check, so that CI exercises every input the fuzzer
//! kept, without the fuzzer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::fuzz_check::check;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/proto_frame");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_passes_the_fuzz_check() {
    let files = corpus();
    assert!(
        files.len() >= 30,
        "seed corpus missing: {} files",
        files.len()
    );
    for (name, bytes) in &files {
        let outcome = std::panic::catch_unwind(|| check(bytes));
        assert!(outcome.is_ok(), "{name} failed the fuzz check");
    }
}

#[test]
fn valid_seeds_decode_to_packets_and_corrupt_seeds_are_refused() {
    for (name, bytes) in corpus() {
        let outcome = check(&bytes);
        if name.starts_with("valid-") {
            assert!(
                outcome.packets >= 1 && !outcome.frame_error,
                "{name}: {outcome:?}"
            );
            assert_eq!(outcome.packets, outcome.frames, "{name}");
        } else if name.starts_with("corrupt-") {
            assert!(outcome.frame_error, "{name}: {outcome:?}");
        } else if name.starts_with("intact-") {
            assert_eq!((outcome.frames, outcome.packets), (1, 0), "{name}");
        } else if name.starts_with("truncated-") {
            assert_eq!((outcome.frames, outcome.frame_error), (0, false), "{name}");
        }
    }
}
