//! Encoding + decoding of 4 KiB and 64 KiB write frames (both crc32c
//! included), beside a plain memcpy of the same data bytes.
//!
//! `cargo bench -p cstor-proto --bench frame` runs the criterion groups
//! (throughput in bytes of data per second), then prints a plain summary:
//! GB/s of encode+decode, GB/s of memcpy, and their ratio. The goal is a
//! ratio of at least 0.5 for 64 KiB frames.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use cstor_proto::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use cstor_proto::{Frame, Message, Packet, Write, HEADER_LEN};

const SIZES: [(usize, &str); 2] = [(4096, "4KiB"), (65536, "64KiB")];

fn write_packet(len: usize) -> Packet {
    Packet {
        session_id: 1,
        epoch: 2,
        io_seq: 3,
        message: Message::Write(Write {
            offset: 1 << 20,
            data: Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>()),
            fua: false,
        }),
    }
}

/// One round trip as a connection does it: encode into the send buffer,
/// decode the frame off the receive buffer (zero-copy payload), then the
/// packet. Both buffers are the same here, as after a loopback.
fn encode_decode(packet: &Packet, buf: &mut BytesMut) -> Packet {
    packet.encode(buf, DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
    let frame = Frame::decode(buf, DEFAULT_MAX_PAYLOAD_BYTES)
        .unwrap()
        .unwrap();
    Packet::decode(frame).unwrap()
}

fn memcpy(src: &[u8], dst: &mut [u8]) {
    dst.copy_from_slice(src);
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("write_frame");
    for (len, label) in SIZES {
        group.throughput(Throughput::Bytes(len as u64));
        let packet = write_packet(len);
        let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
        group.bench_function(format!("encode_decode/{label}"), |b| {
            b.iter(|| black_box(encode_decode(black_box(&packet), &mut buf)))
        });
        let src = vec![7u8; len];
        let mut dst = vec![0u8; len];
        group.bench_function(format!("memcpy/{label}"), |b| {
            b.iter(|| memcpy(black_box(&src), black_box(&mut dst)))
        });
    }
    group.finish();
}

/// Best throughput of a few timed rounds, in GB/s (10^9 bytes).
fn gigabytes_per_sec(bytes_per_iter: usize, mut op: impl FnMut()) -> f64 {
    let round = Duration::from_millis(200);
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut iters = 0u64;
        while start.elapsed() < round {
            for _ in 0..64 {
                op();
            }
            iters += 64;
        }
        let secs = start.elapsed().as_secs_f64();
        best = best.max(iters as f64 * bytes_per_iter as f64 / secs / 1e9);
    }
    best
}

fn summary() {
    println!();
    println!("summary (best of 5 rounds of 200 ms; data bytes per second):");
    for (len, label) in SIZES {
        let packet = write_packet(len);
        let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
        let frame_rate = gigabytes_per_sec(len, || {
            black_box(encode_decode(black_box(&packet), &mut buf));
        });
        let src = vec![7u8; len];
        let mut dst = vec![0u8; len];
        let copy_rate = gigabytes_per_sec(len, || memcpy(black_box(&src), black_box(&mut dst)));
        let crc_rate = gigabytes_per_sec(len, || {
            black_box(crc32c::crc32c(black_box(&src)));
        });
        println!(
            "  {label} write frame: encode+decode {frame_rate:.2} GB/s, memcpy {copy_rate:.2} GB/s, ratio {:.2} of memcpy",
            frame_rate / copy_rate
        );
        // Encode+decode is one copy and two crc32c passes (sender and
        // receiver), so its bound is set by the checksum's speed.
        println!(
            "  {label} for reference: one crc32c pass {crc_rate:.2} GB/s; copy + 2 passes bound {:.2} GB/s",
            1.0 / (1.0 / copy_rate + 2.0 / crc_rate)
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    // `cargo test --benches` runs each benchmark once as a smoke test;
    // only a real bench run prints the timed summary.
    if std::env::args().any(|arg| arg == "--bench") {
        summary();
    }
}
