//! Writes the seed corpus of the `proto_frame` fuzz target:
//! `cargo run -p cstor-proto --example gen_corpus [DIR]`
//! (default `fuzz/corpus/proto_frame` of the workspace).
//!
//! One valid frame per sample packet (every message kind), a stream of all
//! of them, and a few invalid inputs the decoder must refuse: a flipped
//! payload byte, a flipped header byte, a bad magic, an oversize length with
//! a valid header checksum, an unknown opcode and an unknown version with
//! valid checksums, a truncated frame.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use cstor_proto::header::{HEADER_CRC_AT, OPCODE_AT, PAYLOAD_LEN_AT, VERSION_AT};
use cstor_proto::HEADER_LEN;

/// Recomputes the header checksum after a deliberate header edit.
fn reseal(frame: &mut [u8]) {
    let crc = crc32c::crc32c(&frame[..HEADER_CRC_AT]);
    frame[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/proto_frame")
        });
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let samples = common::samples();
    for (i, packet) in samples.iter().enumerate() {
        let kind = format!("{:?}", packet.message);
        let kind: String = kind.chars().take_while(|c| c.is_alphanumeric()).collect();
        let wire = common::encode_all(std::slice::from_ref(packet)).to_vec();
        files.push((format!("valid-{i:02}-{kind}"), wire));
    }
    files.push((
        "valid-stream-all".into(),
        common::encode_all(&samples).to_vec(),
    ));

    let find = |kind: &str| -> Vec<u8> {
        let suffix = format!("-{kind}");
        files
            .iter()
            .find(|(name, _)| name.ends_with(&suffix))
            .unwrap()
            .1
            .clone()
    };
    let write = find("Write");
    let heartbeat = find("Heartbeat");
    let flush = find("Flush");
    let mut bad = write.clone();
    bad[HEADER_LEN + 7] ^= 0x20;
    files.push(("corrupt-payload-byte".into(), bad));
    let mut bad = write.clone();
    bad[40] ^= 0x01;
    files.push(("corrupt-header-byte".into(), bad));
    let mut bad = write.clone();
    bad[0] = b'X';
    files.push(("corrupt-magic".into(), bad));
    let mut bad = write.clone();
    bad[PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut bad);
    files.push(("corrupt-oversize-length".into(), bad));
    let mut bad = heartbeat;
    bad[OPCODE_AT..OPCODE_AT + 2].copy_from_slice(&0x0777u16.to_le_bytes());
    reseal(&mut bad);
    files.push(("intact-unknown-opcode".into(), bad));
    let mut bad = flush;
    bad[VERSION_AT..VERSION_AT + 2].copy_from_slice(&2u16.to_le_bytes());
    reseal(&mut bad);
    files.push(("intact-unknown-version".into(), bad));
    files.push(("truncated-write".into(), write[..write.len() - 1].to_vec()));

    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    println!("wrote {} files to {}", files.len(), dir.display());
}
