//! Shared by the integration tests and the corpus generator: a proptest
//! strategy producing every valid packet, and a fixed sample of each
//! message kind.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use cstor_proto::limits::{MAX_AUTH_PROOF_BYTES, MAX_DETAIL_BYTES, MAX_IO_BYTES, MAX_NAME_BYTES};
use cstor_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;

pub fn arb_name() -> impl Strategy<Value = Name> {
    prop_oneof![
        "[a-z0-9][a-z0-9.@_-]{0,30}",
        // Multi-byte characters and the longest names.
        "[a-zé€😀]{1,63}",
        Just("n".repeat(MAX_NAME_BYTES)),
    ]
    .prop_filter_map("longer than a name", |text| Name::new(text).ok())
}

fn arb_text(max_bytes: usize) -> impl Strategy<Value = String> {
    "[ -~é]{0,64}".prop_map(move |mut text| {
        while text.len() > max_bytes {
            text.pop();
        }
        text
    })
}

fn arb_data(max_len: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 1..=max_len).prop_map(Bytes::from)
}

/// An offset such that `offset + len` does not pass `u64::MAX`.
fn fit(offset: u64, len: u64) -> u64 {
    offset.min(u64::MAX - len)
}

fn arb_extent(max_len: u32) -> impl Strategy<Value = Extent> {
    (any::<u64>(), 1..=max_len).prop_map(|(offset, len_bytes)| Extent {
        offset: fit(offset, u64::from(len_bytes)),
        len_bytes,
    })
}

fn arb_versions() -> impl Strategy<Value = VersionRange> {
    (1u16..=u16::MAX, 0u16..4).prop_map(|(min, span)| VersionRange {
        min,
        max: min.saturating_add(span),
    })
}

fn arb_state() -> impl Strategy<Value = ReplicaState> {
    prop_oneof![
        Just(ReplicaState::Healthy),
        Just(ReplicaState::Degraded),
        Just(ReplicaState::Rebuilding),
        Just(ReplicaState::NewEmpty),
    ]
}

fn arb_block_size() -> impl Strategy<Value = u32> {
    (9u32..=16).prop_map(|shift| 1 << shift)
}

fn arb_progress() -> impl Strategy<Value = RebuildProgress> {
    (any::<u64>(), any::<u64>()).prop_map(|(a, b)| RebuildProgress {
        done_bytes: a.min(b),
        total_bytes: a.max(b),
    })
}

fn arb_status() -> impl Strategy<Value = Status> {
    any::<u16>().prop_map(Status::from_u16)
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    let auth = prop_oneof![
        Just(Auth::None),
        vec(any::<u8>(), 0..=MAX_AUTH_PROOF_BYTES).prop_map(|proof| Auth::PreSharedKey {
            proof: Bytes::from(proof)
        }),
    ];
    (arb_versions(), arb_name(), any::<u64>(), auth).prop_map(
        |(versions, volume, next_io_seq, auth)| Hello {
            versions,
            volume,
            next_io_seq,
            auth,
        },
    )
}

fn arb_hello_ack() -> impl Strategy<Value = HelloAck> {
    (
        1u16..=u16::MAX,
        any::<u128>(),
        any::<u128>(),
        arb_state(),
        any::<u64>(),
        any::<u64>(),
        arb_block_size(),
        any::<u64>(),
    )
        .prop_map(
            |(version, replica_id, pool_guid, state, durable, size, block, epoch)| HelloAck {
                version,
                replica_id,
                pool_guid,
                state,
                last_durable_io_seq: durable,
                volume_size_bytes: size,
                block_size_bytes: block,
                highest_epoch_seen: epoch,
            },
        )
}

fn arb_write() -> impl Strategy<Value = Write> {
    (any::<u64>(), arb_data(4096), any::<bool>()).prop_map(|(offset, data, fua)| Write {
        offset: fit(offset, data.len() as u64),
        data,
        fua,
    })
}

fn arb_rebuild_start() -> impl Strategy<Value = RebuildStart> {
    let source = prop_oneof![
        Just(RebuildSource::Live),
        arb_name().prop_map(RebuildSource::Snapshot),
        proptest::collection::vec((0u64..1 << 20, 1u64..1 << 20), 1..8).prop_map(|gaps| {
            // Ascending, disjoint: each range starts past the last's end.
            let mut at = 0u64;
            RebuildSource::Ranges(
                gaps.into_iter()
                    .map(|(gap, len_bytes)| {
                        let offset = at + gap;
                        at = offset + len_bytes;
                        ByteRange { offset, len_bytes }
                    })
                    .collect(),
            )
        })
    ];
    ("[a-z0-9.:\\[\\]-]{1,60}", arb_name(), any::<u64>(), source).prop_map(
        |(peer_address, volume, from_io_seq, source)| RebuildStart {
            peer_address,
            volume,
            from_io_seq,
            source,
        },
    )
}

fn arb_rebuild_chunk() -> impl Strategy<Value = RebuildChunk> {
    (arb_block_size(), 1usize..=4, any::<u64>()).prop_flat_map(|(block, count, offset)| {
        let len = block as usize * count;
        (
            vec(any::<u64>(), count),
            vec(any::<u8>(), len),
            Just(fit(offset, len as u64) / u64::from(block) * u64::from(block)),
        )
            .prop_map(move |(block_io_seqs, data, offset)| RebuildChunk {
                offset,
                block_size_bytes: block,
                block_io_seqs,
                data: Bytes::from(data),
            })
    })
}

fn arb_listing() -> impl Strategy<Value = SnapshotListing> {
    let info = (arb_name(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(name, io_seq, created, size_bytes)| SnapshotInfo {
            name,
            io_seq,
            created_unix_secs: created,
            size_bytes,
        },
    );
    (vec(info, 0..8), any::<bool>())
        .prop_map(|(snapshots, more)| SnapshotListing { snapshots, more })
}

fn arb_status_report() -> impl Strategy<Value = StatusReport> {
    (
        arb_state(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        arb_progress(),
    )
        .prop_map(
            |(state, durable, received, size, epoch, rebuild)| StatusReport {
                state,
                last_durable_io_seq: durable,
                last_received_io_seq: received,
                volume_size_bytes: size,
                highest_epoch_seen: epoch,
                rebuild,
            },
        )
}

/// A valid membership record: distinct addresses and ids (or unknown
/// ids), CF within the member count; or the "no record" value.
fn arb_membership() -> impl Strategy<Value = Membership> {
    let record = (
        1u64..,
        1usize..=limits::MAX_MEMBERS,
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(generation, count, cf, ids_known)| Membership {
            generation,
            consistency_factor: u8::try_from(usize::from(cf) % count + 1).unwrap(),
            members: (0..count)
                .map(|i| Member {
                    replica_id: if ids_known { i as u128 + 1 } else { 0 },
                    address: format!("10.0.0.{i}:7000"),
                })
                .collect(),
        });
    prop_oneof![Just(Membership::none()), record]
}

fn arb_error_reply() -> impl Strategy<Value = ErrorReply> {
    (0u16..REPLY_BIT, 1u16..=u16::MAX, arb_text(MAX_DETAIL_BYTES))
        .prop_filter(
            "a version mismatch on Hello and a checksum error on Read are their own messages",
            |(op, status, _)| {
                let own_message = match Status::from_u16(*status) {
                    Status::VersionMismatch => *op == Opcode::Hello.to_u16(),
                    Status::ChecksumError => *op == Opcode::Read.to_u16(),
                    _ => false,
                };
                !own_message
            },
        )
        .prop_map(|(op, status, detail)| ErrorReply::new(op, Status::from_u16(status), detail))
}

/// A valid checksum error: a read extent and, within its blocks, bad
/// ranges chosen block by block (merged as a replica sends them).
fn arb_checksum_error() -> impl Strategy<Value = ChecksumError> {
    let block = limits::CHECKSUM_BLOCK_BYTES;
    (0u64..1 << 40, 1u32..=MAX_IO_BYTES).prop_flat_map(move |(offset, len_bytes)| {
        let first = offset / block;
        let end = (offset + u64::from(len_bytes)).div_ceil(block);
        let blocks = (end - first) as usize;
        vec(any::<bool>(), blocks).prop_map(move |mut bad| {
            if !bad.contains(&true) {
                bad[0] = true;
            }
            let mut ranges: Vec<ByteRange> = Vec::new();
            for (i, is_bad) in bad.iter().enumerate() {
                if !is_bad {
                    continue;
                }
                let at = (first + i as u64) * block;
                match ranges.last_mut() {
                    Some(r) if r.offset + r.len_bytes == at => r.len_bytes += block,
                    _ => ranges.push(ByteRange {
                        offset: at,
                        len_bytes: block,
                    }),
                }
            }
            ChecksumError {
                extent: Extent { offset, len_bytes },
                bad: ranges,
            }
        })
    })
}

/// A valid digest reply: up to a few ascending, disjoint bad ranges.
fn arb_digest_reply() -> impl Strategy<Value = DigestReply> {
    (
        any::<u64>(),
        any::<u64>(),
        vec((1u64..1 << 20, 1u64..1 << 20), 0..8),
    )
        .prop_map(|(digest, mapped_blocks, gaps)| {
            let mut at = 0u64;
            let bad = gaps
                .into_iter()
                .map(|(gap, len_bytes)| {
                    let offset = at + gap;
                    at = offset + len_bytes;
                    ByteRange { offset, len_bytes }
                })
                .collect();
            DigestReply {
                digest,
                mapped_blocks,
                bad,
            }
        })
}

fn arb_ack() -> impl Strategy<Value = Opcode> {
    proptest::sample::select(
        Opcode::ALL
            .into_iter()
            .filter(|op| op.reply_kind() == ReplyKind::Ack)
            .collect::<Vec<_>>(),
    )
}

/// Every valid message, each kind equally likely.
pub fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_hello().prop_map(Message::Hello),
        arb_write().prop_map(Message::Write),
        arb_extent(MAX_IO_BYTES).prop_map(Message::Read),
        Just(Message::Flush),
        arb_extent(u32::MAX).prop_map(Message::Unmap),
        arb_extent(u32::MAX).prop_map(Message::WriteZeroes),
        arb_name().prop_map(Message::SnapshotCreate),
        arb_name().prop_map(Message::SnapshotDestroy),
        proptest::option::of(arb_name())
            .prop_map(|after| Message::SnapshotList(SnapshotListRequest { after })),
        any::<u64>().prop_map(|new_size_bytes| Message::Resize { new_size_bytes }),
        Just(Message::Status),
        arb_membership().prop_map(Message::MembershipSet),
        Just(Message::MembershipGet),
        Just(Message::Heartbeat),
        arb_rebuild_start().prop_map(Message::RebuildStart),
        arb_rebuild_chunk().prop_map(Message::RebuildChunk),
        arb_progress().prop_map(Message::RebuildProgress),
        any::<u64>()
            .prop_map(|through_io_seq| Message::RebuildDone(RebuildDone { through_io_seq })),
        (arb_status(), arb_text(MAX_DETAIL_BYTES))
            .prop_map(|(status, detail)| Message::RebuildAbort(RebuildAbort { status, detail })),
        any::<u64>().prop_map(|bytes_per_second| Message::RebuildThrottle { bytes_per_second }),
        arb_extent(limits::MAX_DIGEST_BYTES).prop_map(Message::Digest),
        arb_digest_reply().prop_map(Message::RangeDigest),
        arb_hello_ack().prop_map(Message::HelloAck),
        arb_versions().prop_map(Message::VersionMismatch),
        arb_data(4096).prop_map(Message::ReadData),
        arb_checksum_error().prop_map(Message::ChecksumError),
        arb_listing().prop_map(Message::SnapshotListing),
        arb_status_report().prop_map(Message::StatusReport),
        arb_membership().prop_map(Message::Membership),
        arb_ack().prop_map(Message::Ack),
        arb_error_reply().prop_map(Message::Error),
    ]
}

pub fn arb_packet() -> impl Strategy<Value = Packet> {
    (any::<u64>(), any::<u64>(), any::<u64>(), arb_message()).prop_map(
        |(session_id, epoch, io_seq, message)| Packet {
            session_id,
            epoch,
            io_seq,
            message,
        },
    )
}

fn name(text: &str) -> Name {
    Name::new(text).unwrap()
}

/// One or more fixed examples of every message kind, small enough to
/// corrupt byte by byte in a test and to seed the fuzzer with.
pub fn samples() -> Vec<Packet> {
    let data = |len: usize| Bytes::from((0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
    let messages = vec![
        Message::Hello(Hello {
            versions: VersionRange::SUPPORTED,
            volume: name("pvc-0a1b2c3d"),
            next_io_seq: 1_000_000,
            auth: Auth::PreSharedKey { proof: data(32) },
        }),
        Message::Hello(Hello {
            versions: VersionRange { min: 1, max: 3 },
            volume: name("vol"),
            next_io_seq: 1,
            auth: Auth::None,
        }),
        Message::Write(Write {
            offset: 8192,
            data: data(512),
            fua: false,
        }),
        Message::Write(Write {
            offset: 0,
            data: data(4096),
            fua: true,
        }),
        Message::Read(Extent {
            offset: 1 << 20,
            len_bytes: 4096,
        }),
        Message::Flush,
        Message::Unmap(Extent {
            offset: 1 << 30,
            len_bytes: 1 << 30,
        }),
        Message::WriteZeroes(Extent {
            offset: 4096,
            len_bytes: 65536,
        }),
        Message::SnapshotCreate(name("snap-2026-11-21")),
        Message::SnapshotDestroy(name("snap-old")),
        Message::SnapshotList(SnapshotListRequest { after: None }),
        Message::SnapshotList(SnapshotListRequest {
            after: Some(name("snap-a")),
        }),
        Message::Resize {
            new_size_bytes: 10 << 30,
        },
        Message::Status,
        Message::Heartbeat,
        Message::RebuildStart(RebuildStart {
            peer_address: "10.0.0.12:3270".into(),
            volume: name("pvc-0a1b2c3d"),
            from_io_seq: 4242,
            source: RebuildSource::Live,
        }),
        Message::RebuildStart(RebuildStart {
            peer_address: "[fd00::1]:3270".into(),
            volume: name("pvc-0a1b2c3d"),
            from_io_seq: 0,
            source: RebuildSource::Snapshot(name("snap-a")),
        }),
        Message::RebuildStart(RebuildStart {
            peer_address: "10.0.0.12:3270".into(),
            volume: name("pvc-0a1b2c3d"),
            from_io_seq: 0,
            source: RebuildSource::Ranges(vec![
                ByteRange {
                    offset: 0,
                    len_bytes: 1 << 20,
                },
                ByteRange {
                    offset: 8 << 20,
                    len_bytes: 3 << 20,
                },
            ]),
        }),
        Message::RebuildChunk(RebuildChunk {
            offset: 4096,
            block_size_bytes: 512,
            block_io_seqs: vec![10, 11, 12],
            data: data(1536),
        }),
        Message::RebuildProgress(RebuildProgress {
            done_bytes: 1 << 20,
            total_bytes: 1 << 30,
        }),
        Message::RebuildDone(RebuildDone {
            through_io_seq: 99_999,
        }),
        Message::RebuildAbort(RebuildAbort {
            status: Status::IoError,
            detail: "source read failed at offset 4096".into(),
        }),
        Message::HelloAck(HelloAck {
            version: 1,
            replica_id: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
            pool_guid: 42,
            state: ReplicaState::Degraded,
            last_durable_io_seq: 999_000,
            volume_size_bytes: 10 << 30,
            block_size_bytes: 4096,
            highest_epoch_seen: 6,
        }),
        Message::VersionMismatch(VersionRange::SUPPORTED),
        Message::ReadData(data(4096)),
        Message::SnapshotListing(SnapshotListing {
            snapshots: vec![
                SnapshotInfo {
                    name: name("snap-a"),
                    io_seq: 100,
                    created_unix_secs: 1_790_000_000,
                    size_bytes: 1 << 30,
                },
                SnapshotInfo {
                    name: name("snap-b"),
                    io_seq: 200,
                    created_unix_secs: 1_790_000_100,
                    size_bytes: 2 << 30,
                },
            ],
            more: true,
        }),
        Message::StatusReport(StatusReport {
            state: ReplicaState::Rebuilding,
            last_durable_io_seq: 10,
            last_received_io_seq: 12,
            volume_size_bytes: 1 << 30,
            highest_epoch_seen: 3,
            rebuild: RebuildProgress {
                done_bytes: 5,
                total_bytes: 10,
            },
        }),
        Message::MembershipSet(Membership {
            generation: 4,
            consistency_factor: 2,
            members: vec![
                Member {
                    replica_id: 7,
                    address: "10.0.0.1:7000".into(),
                },
                Member {
                    replica_id: 0,
                    address: "[fd00::2]:7000".into(),
                },
            ],
        }),
        Message::MembershipGet,
        Message::Membership(Membership::none()),
        Message::Digest(Extent {
            offset: 1 << 20,
            len_bytes: 1 << 20,
        }),
        Message::RangeDigest(DigestReply {
            digest: 0x0123_4567_89ab_cdef,
            mapped_blocks: 200,
            bad: vec![
                ByteRange {
                    offset: 1 << 20,
                    len_bytes: 4096,
                },
                ByteRange {
                    offset: (1 << 20) + 16384,
                    len_bytes: 8192,
                },
            ],
        }),
        Message::Ack(Opcode::Write),
        Message::Ack(Opcode::MembershipSet),
        Message::Ack(Opcode::Heartbeat),
        Message::Error(ErrorReply::new(
            Opcode::Write.to_u16(),
            Status::NoSpace,
            "pool full",
        )),
        Message::Error(ErrorReply::new(0x0777, Status::UnknownOpcode, "")),
        Message::Error(ErrorReply::new(
            Opcode::Hello.to_u16(),
            Status::StaleEpoch,
            "epoch 5 < 6",
        )),
        // Added after the others: the seed corpus keeps its numbering.
        Message::ChecksumError(ChecksumError {
            extent: Extent {
                offset: 512,
                len_bytes: 16384,
            },
            bad: vec![
                ByteRange {
                    offset: 0,
                    len_bytes: 4096,
                },
                ByteRange {
                    offset: 8192,
                    len_bytes: 8192,
                },
            ],
        }),
    ];
    messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| Packet {
            session_id: 0x5e55_1011,
            epoch: 6,
            io_seq: 1_000_000 + i as u64,
            message,
        })
        .collect()
}

/// Encodes packets back to back with the default bound.
pub fn encode_all(packets: &[Packet]) -> bytes::BytesMut {
    let mut buf = bytes::BytesMut::new();
    for packet in packets {
        packet
            .encode(&mut buf, cstor_proto::limits::DEFAULT_MAX_PAYLOAD_BYTES)
            .unwrap();
    }
    buf
}

pub mod fuzz_check;
