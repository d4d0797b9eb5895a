//! Message-layer behaviour: strictness, error replies, version handling.
//! Round trips of every message are property-tested in `tests/`.

use super::*;
use crate::limits::{
    DEFAULT_MAX_PAYLOAD_BYTES, MAX_DETAIL_BYTES, MAX_DIGEST_BYTES, MAX_IO_BYTES, MAX_NAME_BYTES,
};
use crate::wire::put_prefixed;

fn packet(message: Message) -> Packet {
    Packet {
        session_id: 0xabc,
        epoch: 7,
        io_seq: 1000,
        message,
    }
}

fn frame_of(packet: &Packet) -> Frame {
    let mut buf = BytesMut::new();
    packet.encode(&mut buf, DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
    Frame::decode(&mut buf, DEFAULT_MAX_PAYLOAD_BYTES)
        .unwrap()
        .unwrap()
}

fn write(len: usize) -> Message {
    Message::Write(Write {
        offset: 4096,
        data: Bytes::from(vec![0x5a; len]),
        fua: true,
    })
}

#[test]
fn write_travels_in_header_and_payload() {
    let frame = frame_of(&packet(write(512)));
    assert_eq!(frame.header.opcode, Opcode::Write.to_u16());
    assert_eq!(frame.header.offset, 4096);
    assert_eq!(frame.header.length, 512);
    assert_eq!(frame.header.flags, FLAG_FUA);
    assert_eq!(frame.payload.len(), 512);
}

#[test]
fn unknown_request_opcode_is_answered_with_unknown_opcode_and_same_io_seq() {
    let mut frame = frame_of(&packet(Message::Heartbeat));
    frame.header.opcode = 0x0777;
    let err = Packet::decode(frame.clone()).unwrap_err();
    assert_eq!(err, MessageError::UnknownOpcode { opcode: 0x0777 });
    let reply = err.reply_to(&frame.header).unwrap();
    assert_eq!(reply.io_seq, 1000);
    assert_eq!(reply.session_id, 0xabc);
    let Message::Error(error) = &reply.message else {
        panic!("not an error reply: {reply:?}");
    };
    assert_eq!(error.request_opcode, 0x0777);
    assert_eq!(error.status, Status::UnknownOpcode);
    // The reply itself encodes and decodes, though its opcode is unknown.
    assert_eq!(Packet::decode(frame_of(&reply)).unwrap(), reply);
}

#[test]
fn errors_on_replies_are_never_answered() {
    let mut frame = frame_of(&packet(Message::Ack(Opcode::Write)));
    frame.header.opcode = 0x0777 | REPLY_BIT;
    let err = Packet::decode(frame.clone()).unwrap_err();
    assert_eq!(err.status(), Status::UnknownOpcode);
    assert_eq!(err.reply_to(&frame.header), None);
}

#[test]
fn malformed_payload_is_a_bad_request() {
    let mut frame = frame_of(&packet(Message::Resize {
        new_size_bytes: 1 << 30,
    }));
    frame.payload = frame.payload.slice(..7);
    let err = Packet::decode(frame.clone()).unwrap_err();
    assert!(matches!(err, MessageError::Malformed { .. }));
    let reply = err.reply_to(&frame.header).unwrap();
    assert!(matches!(
        reply.message,
        Message::Error(ErrorReply {
            status: Status::BadRequest,
            ..
        })
    ));
}

#[test]
fn unused_header_fields_must_be_zero() {
    let base = frame_of(&packet(Message::Flush));
    let mut with_offset = base.clone();
    with_offset.header.offset = 1;
    let mut with_flags = base.clone();
    with_flags.header.flags = FLAG_FUA;
    let mut with_status = base;
    with_status.header.status = Status::IoError;
    for frame in [with_offset, with_flags, with_status] {
        assert!(matches!(
            Packet::decode(frame),
            Err(MessageError::Malformed { .. })
        ));
    }
}

#[test]
fn unknown_write_flag_is_refused() {
    let mut frame = frame_of(&packet(write(512)));
    frame.header.flags |= 0x0100;
    assert!(matches!(
        Packet::decode(frame),
        Err(MessageError::Malformed { .. })
    ));
}

#[test]
fn other_frame_version_is_a_version_mismatch() {
    let mut frame = frame_of(&packet(Message::Flush));
    frame.header.version = 2;
    let err = Packet::decode(frame.clone()).unwrap_err();
    assert_eq!(err.status(), Status::VersionMismatch);
    let reply = err.reply_to(&frame.header).unwrap();
    assert!(matches!(
        reply.message,
        Message::Error(ErrorReply {
            status: Status::VersionMismatch,
            ..
        })
    ));
}

#[test]
fn hello_in_another_version_is_answered_with_the_supported_range() {
    let hello = Message::Hello(Hello {
        versions: VersionRange { min: 2, max: 3 },
        volume: Name::new("pvc-1").unwrap(),
        next_io_seq: 1,
        auth: Auth::None,
    });
    let mut frame = frame_of(&packet(hello));
    frame.header.version = 2;
    let reply = Packet::decode(frame.clone())
        .unwrap_err()
        .reply_to(&frame.header)
        .unwrap();
    assert_eq!(
        reply.message,
        Message::VersionMismatch(VersionRange::SUPPORTED)
    );
    let reply_frame = frame_of(&reply);
    assert_eq!(reply_frame.header.status, Status::VersionMismatch);
    assert_eq!(
        reply_frame.header.opcode,
        Opcode::Hello.to_u16() | REPLY_BIT
    );
}

#[test]
fn unknown_status_in_a_reply_decodes_as_an_error_reply() {
    let reply = packet(Message::Error(ErrorReply::new(
        Opcode::Write.to_u16(),
        Status::Unknown(999),
        "from the future",
    )));
    assert_eq!(Packet::decode(frame_of(&reply)).unwrap(), reply);
}

#[test]
fn ambiguous_or_invalid_messages_are_refused_by_the_encoder() {
    let invalid = [
        Message::Error(ErrorReply::new(0x10, Status::Ok, "")),
        Message::Error(ErrorReply::new(
            Opcode::Hello.to_u16(),
            Status::VersionMismatch,
            "",
        )),
        Message::Ack(Opcode::Read),
        Message::Ack(Opcode::RebuildChunk),
        Message::Read(Extent {
            offset: 0,
            len_bytes: 0,
        }),
        Message::ReadData(Bytes::new()),
        write(MAX_IO_BYTES as usize + 1),
        Message::Hello(Hello {
            versions: VersionRange { min: 2, max: 1 },
            volume: Name::new("v").unwrap(),
            next_io_seq: 0,
            auth: Auth::None,
        }),
    ];
    for message in invalid {
        let mut buf = BytesMut::new();
        let result = packet(message.clone()).encode(&mut buf, DEFAULT_MAX_PAYLOAD_BYTES);
        assert!(
            matches!(result, Err(EncodeError::Invalid { .. })),
            "{message:?}"
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn reply_to_a_one_way_message_is_refused() {
    let mut frame = frame_of(&packet(Message::Ack(Opcode::Flush)));
    frame.header.opcode = Opcode::RebuildDone.to_u16() | REPLY_BIT;
    assert!(matches!(
        Packet::decode(frame),
        Err(MessageError::Malformed { .. })
    ));
}

#[test]
fn error_detail_is_cut_on_a_character_boundary() {
    let long = "é".repeat(MAX_DETAIL_BYTES);
    let error = ErrorReply::new(0x10, Status::IoError, long);
    assert!(error.detail.len() <= MAX_DETAIL_BYTES);
    assert!(error.detail.len() >= MAX_DETAIL_BYTES - 1);
}

#[test]
fn snapshot_name_over_the_bound_is_malformed() {
    let mut payload = BytesMut::new();
    put_prefixed(&mut payload, "x".repeat(MAX_NAME_BYTES + 1).as_bytes());
    let mut frame = frame_of(&packet(Message::SnapshotCreate(Name::new("s").unwrap())));
    frame.payload = payload.freeze();
    assert!(matches!(
        Packet::decode(frame),
        Err(MessageError::Malformed {
            source: PayloadError::TooLong { .. },
            ..
        })
    ));
}

#[test]
fn reply_echoes_the_request_ids() {
    let request = packet(Message::Flush);
    let reply = request.reply(Message::Ack(Opcode::Flush));
    assert_eq!(
        (reply.session_id, reply.epoch, reply.io_seq),
        (0xabc, 7, 1000)
    );
}

#[test]
fn rebuild_throttle_carries_its_rate_in_the_payload_and_is_acked() {
    let request = packet(Message::RebuildThrottle {
        bytes_per_second: 50 << 20,
    });
    let frame = frame_of(&request);
    assert_eq!(frame.header.opcode, Opcode::RebuildThrottle.to_u16());
    assert_eq!(frame.payload.len(), 8);
    assert_eq!(Packet::decode(frame).unwrap(), request);
    let ack = request.reply(Message::Ack(Opcode::RebuildThrottle));
    assert_eq!(Packet::decode(frame_of(&ack)).unwrap(), ack);
}

#[test]
fn replies_and_requests_are_told_apart() {
    for request in [
        Message::Flush,
        Message::Heartbeat,
        Message::MembershipGet,
        Message::Status,
    ] {
        assert!(!request.is_reply(), "{request:?}");
    }
    for reply in [
        Message::Ack(Opcode::Flush),
        Message::ReadData(Bytes::from_static(b"x")),
        Message::Membership(Membership::none()),
        Message::Error(ErrorReply::new(
            Opcode::Write.to_u16(),
            Status::BadRequest,
            "no",
        )),
    ] {
        assert!(reply.is_reply(), "{reply:?}");
    }
}

fn checksum_error(offset: u64, len_bytes: u32, bad: &[(u64, u64)]) -> Message {
    Message::ChecksumError(ChecksumError {
        extent: Extent { offset, len_bytes },
        bad: bad
            .iter()
            .map(|&(offset, len_bytes)| ByteRange { offset, len_bytes })
            .collect(),
    })
}

#[test]
fn a_checksum_error_echoes_the_read_extent_in_the_header_and_names_blocks() {
    let reply = packet(checksum_error(512, 8192, &[(0, 4096), (8192, 4096)]));
    let frame = frame_of(&reply);
    assert_eq!(frame.header.opcode, Opcode::Read.to_u16() | REPLY_BIT);
    assert_eq!(frame.header.status, Status::ChecksumError);
    assert_eq!((frame.header.offset, frame.header.length), (512, 8192));
    assert_eq!(frame.payload.len(), 2 + 2 * 16);
    assert_eq!(Packet::decode(frame).unwrap(), reply);
    let Message::ChecksumError(e) = &reply.message else {
        unreachable!()
    };
    assert_eq!(e.bad_blocks(), 2);
    assert!(reply.message.is_reply());
}

#[test]
fn malformed_checksum_errors_are_refused_with_the_field_named() {
    let base = frame_of(&packet(checksum_error(0, 16384, &[(4096, 4096)])));
    let payload = |count: u16, ranges: &[(u64, u64)]| {
        let mut p = BytesMut::new();
        p.extend_from_slice(&count.to_le_bytes());
        for (o, l) in ranges {
            p.extend_from_slice(&o.to_le_bytes());
            p.extend_from_slice(&l.to_le_bytes());
        }
        p.freeze()
    };
    let cases: Vec<(Bytes, &str)> = vec![
        (payload(0, &[]), "bad: 0 exceeds the bound of 129"),
        (payload(130, &[]), "bad: 130 exceeds the bound of 129"),
        (payload(2, &[(0, 4096)]), "bad.offset: needs 8 bytes"),
        (payload(1, &[(100, 4096)]), "whole 4 KiB blocks"),
        (
            payload(1, &[(16384, 4096)]),
            "outside the blocks of the read",
        ),
        (
            payload(2, &[(8192, 4096), (0, 4096)]),
            "out of order, overlapping or adjacent",
        ),
        (
            payload(2, &[(0, 4096), (4096, 4096)]),
            "out of order, overlapping or adjacent",
        ),
        (payload(1, &[(0, 0)]), "empty range"),
    ];
    for (bad_payload, expected) in cases {
        let mut frame = base.clone();
        frame.payload = bad_payload;
        let err = Packet::decode(frame).unwrap_err();
        assert!(
            matches!(err, MessageError::Malformed { .. }) && err.to_string().contains(expected),
            "{expected}: {err}"
        );
        // A reply: never answered.
        assert_eq!(err.reply_to(&base.header), None);
    }
    // Trailing bytes after the list.
    let mut frame = base.clone();
    let mut longer = BytesMut::from(&frame.payload[..]);
    longer.extend_from_slice(&[0]);
    frame.payload = longer.freeze();
    assert!(matches!(
        Packet::decode(frame),
        Err(MessageError::Malformed {
            source: PayloadError::Trailing { len: 1 },
            ..
        })
    ));
    // The extent in the header must be a valid read.
    for (offset, length) in [(0, 0), (0, MAX_IO_BYTES + 1), (u64::MAX, 4096)] {
        let mut frame = base.clone();
        frame.header.offset = offset;
        frame.header.length = length;
        assert!(matches!(
            Packet::decode(frame),
            Err(MessageError::Malformed { .. })
        ));
    }
    // No flags.
    let mut frame = base;
    frame.header.flags = 1;
    assert!(matches!(
        Packet::decode(frame),
        Err(MessageError::Malformed { .. })
    ));
}

#[test]
fn a_checksum_error_is_a_typed_reply_on_read_only() {
    // On Read it is its own message, never a detail string.
    let mut buf = BytesMut::new();
    let as_error = packet(Message::Error(ErrorReply::new(
        Opcode::Read.to_u16(),
        Status::ChecksumError,
        "bad block",
    )));
    assert!(matches!(
        as_error.encode(&mut buf, DEFAULT_MAX_PAYLOAD_BYTES),
        Err(EncodeError::Invalid { .. })
    ));
    // On any other request it is an error reply with a detail.
    let on_write = packet(Message::Error(ErrorReply::new(
        Opcode::Write.to_u16(),
        Status::ChecksumError,
        "read-modify-write of a bad block",
    )));
    assert_eq!(Packet::decode(frame_of(&on_write)).unwrap(), on_write);
    // Invalid ranges are refused by the encoder too.
    for invalid in [
        checksum_error(0, 4096, &[]),
        checksum_error(0, 4096, &[(4096, 4096)]),
        checksum_error(0, 8192, &[(0, 4096), (4096, 4096)]),
    ] {
        let mut buf = BytesMut::new();
        assert!(
            matches!(
                packet(invalid.clone()).encode(&mut buf, DEFAULT_MAX_PAYLOAD_BYTES),
                Err(EncodeError::Invalid { .. })
            ),
            "{invalid:?}"
        );
    }
}

fn digest_reply(bad: Vec<ByteRange>) -> Message {
    Message::RangeDigest(DigestReply {
        digest: 0xfeed,
        mapped_blocks: 3,
        bad,
    })
}

#[test]
fn digest_travels_like_a_read_and_its_reply_round_trips() {
    let request = packet(Message::Digest(Extent {
        offset: 1 << 20,
        len_bytes: 1 << 20,
    }));
    let frame = frame_of(&request);
    assert_eq!(frame.header.opcode, Opcode::Digest.to_u16());
    assert_eq!(
        (frame.header.offset, frame.header.length),
        (1 << 20, 1 << 20)
    );
    assert!(frame.payload.is_empty());
    assert_eq!(Packet::decode(frame).unwrap(), request);
    let reply = request.reply(digest_reply(vec![ByteRange {
        offset: 1 << 20,
        len_bytes: 4096,
    }]));
    let frame = frame_of(&reply);
    assert_eq!(frame.header.opcode, Opcode::Digest.to_u16() | REPLY_BIT);
    assert_eq!(frame.payload.len(), 20 + 16);
    assert_eq!(Packet::decode(frame).unwrap(), reply);
}

#[test]
fn malformed_digests_are_bad_requests() {
    let base = frame_of(&packet(Message::Digest(Extent {
        offset: 0,
        len_bytes: 4096,
    })));
    let mut too_long = base.clone();
    too_long.header.length = MAX_DIGEST_BYTES + 1;
    let mut empty = base.clone();
    empty.header.length = 0;
    let mut wraps = base.clone();
    wraps.header.offset = u64::MAX - 100;
    let mut flagged = base.clone();
    flagged.header.flags = FLAG_FUA;
    let mut payload = base;
    payload.payload = Bytes::from_static(&[0]);
    for frame in [too_long, empty, wraps, flagged, payload] {
        let err = Packet::decode(frame.clone()).unwrap_err();
        assert_eq!(err.status(), Status::BadRequest, "{frame:?}");
        assert!(err.reply_to(&frame.header).is_some());
    }
    // Encoding refuses what decoding would.
    let mut buf = BytesMut::new();
    let oversize = packet(Message::Digest(Extent {
        offset: 0,
        len_bytes: MAX_DIGEST_BYTES + 1,
    }));
    assert!(oversize
        .encode(&mut buf, DEFAULT_MAX_PAYLOAD_BYTES)
        .is_err());
    assert!(buf.is_empty());
}

#[test]
fn malformed_digest_replies_are_refused() {
    let good = frame_of(&packet(digest_reply(vec![ByteRange {
        offset: 0,
        len_bytes: 4096,
    }])));
    let with_payload = |payload: Vec<u8>| {
        let mut frame = good.clone();
        frame.payload = Bytes::from(payload);
        frame
    };
    let head = |count: u32| {
        let mut p = Vec::new();
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(&count.to_le_bytes());
        p
    };
    let range = |p: &mut Vec<u8>, offset: u64, len: u64| {
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&len.to_le_bytes());
    };
    // A count past the bound, refused before anything is read for it.
    let huge = with_payload(head(u32::MAX));
    // A count the payload does not hold.
    let short = with_payload(head(2));
    // Truncated inside the fixed fields.
    let stub = with_payload(vec![0; 19]);
    // An empty range, ranges out of order, a wrapping one, trailing bytes.
    let mut p = head(1);
    range(&mut p, 0, 0);
    let empty = with_payload(p);
    let mut p = head(2);
    range(&mut p, 8192, 4096);
    range(&mut p, 0, 4096);
    let unordered = with_payload(p);
    let mut p = head(1);
    range(&mut p, u64::MAX - 10, 4096);
    let wraps = with_payload(p);
    let mut p = head(0);
    p.push(0);
    let trailing = with_payload(p);
    let mut flagged = good.clone();
    flagged.header.offset = 4096;
    for frame in [
        huge, short, stub, empty, unordered, wraps, trailing, flagged,
    ] {
        let err = Packet::decode(frame.clone()).unwrap_err();
        assert!(
            matches!(err, MessageError::Malformed { .. }),
            "{frame:?}: {err:?}"
        );
        // A reply is never answered.
        assert_eq!(err.reply_to(&frame.header), None);
    }
    // Encoding refuses a reply the decoder would refuse.
    let mut buf = BytesMut::new();
    let bad = packet(digest_reply(vec![ByteRange {
        offset: 0,
        len_bytes: 0,
    }]));
    assert!(bad.encode(&mut buf, DEFAULT_MAX_PAYLOAD_BYTES).is_err());
}
