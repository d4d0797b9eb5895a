//! The replication protocol spoken between the cstor target and its replicas
//! (and between replicas during a rebuild): framing, checksums, messages.
//!
//! Sans-IO: this crate turns bytes into messages and back; it never touches a
//! socket. The target's volume controller and the replica daemon wrap a TCP
//! stream in `tokio_util::codec::Framed<_, FrameCodec>`.
//!
//! # Two layers
//!
//! 1. **Frames** ([`Frame`], [`FrameCodec`]): a fixed 64-byte header and a
//!    payload, each with its own crc32c (Castagnoli). A bad magic, a
//!    checksum mismatch, a non-zero reserved field or a payload longer than
//!    the codec's bound ([`limits::DEFAULT_MAX_PAYLOAD_BYTES`] by default,
//!    checked before any allocation) is a [`FrameError`]: the stream is out
//!    of sync, close the connection.
//! 2. **Messages** ([`Packet`], [`Message`]): each opcode's header use and
//!    payload, strictly validated with checked arithmetic. An intact frame
//!    with an unknown opcode, an unsupported version or a malformed payload
//!    is a [`MessageError`]: answer it with [`MessageError::reply_to`] (an
//!    error reply with the request's io_seq) and keep the connection.
//!
//! # Frame header (little-endian, 64 bytes)
//!
//! Each offset is the previous offset plus the previous width (the
//! constants of [`header`], whose tests pin this table):
//!
//! ```text
//! offset width field        meaning
//!      0     4 magic        "CSTR" (0x52545343 as u32 LE)
//!      4     2 version      protocol version the frame is framed with (1)
//!      6     2 opcode       Opcode; bit 15 set on replies
//!      8     2 flags        per opcode (Write: bit 0 = FUA); others must be 0
//!     10     2 status       Status; Ok on requests
//!     12     4 payload_len  bytes of payload after the header
//!     16     8 session_id   chosen by the target's Hello, echoed on every frame
//!     24     8 epoch        target epoch (fencing); replies echo the request's
//!     32     8 io_seq       request order and tag; replies echo the request's
//!     40     8 offset       byte offset (Write, Read, Unmap, WriteZeroes, RebuildChunk)
//!     48     4 length       extent length in bytes (same opcodes), else 0
//!     52     4 reserved     0
//!     56     4 payload_crc  crc32c of the payload (0 for an empty payload)
//!     60     4 header_crc   crc32c of bytes 0..60
//!     64       payload
//! ```
//!
//! The header layout, and the payloads of `Hello`, `HelloAck` and
//! `VersionMismatch`, are frozen for every version, so that peers of
//! different versions can always say why they cannot talk.
//!
//! # Messages (version 1)
//!
//! Payload fields are little-endian; strings are a u16 byte length then
//! UTF-8; bools one byte 0/1. Every bound is in [`limits`].
//!
//! ```text
//! opcode  request          payload                                   success reply
//! 0x0001  Hello            min u16, max u16, next_io_seq u64,        HelloAck / VersionMismatch
//!                          volume str, auth u8 (0 none, 1 psk + proof str)
//! 0x0010  Write            data (header offset/length, flag FUA)     Ack
//! 0x0011  Read             - (header offset/length ≤ 1 MiB)          ReadData: data, or
//!                                                                    ChecksumError (below)
//! 0x0012  Flush            -                                         Ack
//! 0x0013  Unmap            - (header offset/length)                  Ack
//! 0x0014  WriteZeroes      - (header offset/length)                  Ack
//! 0x0020  SnapshotCreate   name str (at the request's io_seq)        Ack
//! 0x0021  SnapshotDestroy  name str                                  Ack
//! 0x0022  SnapshotList     after str ("" = from the start)           SnapshotListing: count u32,
//!                                                                    more u8, count × (name str,
//!                                                                    io_seq u64, created_unix_secs u64)
//! 0x0023  Resize           new_size_bytes u64                        Ack
//! 0x0024  Status           -                                         StatusReport: state u8, durable,
//!                                                                    received io_seq u64, size u64,
//!                                                                    epoch u64, rebuild done/total u64
//! 0x0025  MembershipSet    generation u64, cf u8, count u8,          Ack
//!                          count × (replica_id u128, address str)
//! 0x0026  MembershipGet    -                                         Membership: as MembershipSet's
//! 0x0030  Heartbeat        - (either direction)                      Ack
//! 0x0040  RebuildStart     from_io_seq u64, volume str, peer str,    Ack
//!                          source u8 (0 live, 1 snapshot + name str,
//!                          2 ranges + count u32, count × (offset u64,
//!                          len u64))
//! 0x0041  RebuildChunk     block_size u32, count u32, count × io_seq one-way
//!                          u64, data (header offset/length)
//! 0x0042  RebuildProgress  done u64, total u64                       one-way
//! 0x0043  RebuildDone      through_io_seq u64                        one-way
//! 0x0044  RebuildAbort     status u16, detail str                    one-way
//! 0x0045  RebuildThrottle  bytes_per_second u64 (0 = no limit)       Ack
//! 0x0050  Digest           - (header offset/length ≤ 64 MiB)         RangeDigest: digest u64,
//!                                                                    mapped_blocks u64, count u32,
//!                                                                    count × (offset u64, len u64)
//! ```
//!
//! `HelloAck` is `version u16, state u8, block_size u32, replica_id u128,
//! pool_guid u128, last_durable_io_seq u64, volume_size u64,
//! highest_epoch_seen u64`; `VersionMismatch` (reply to Hello, status
//! `VersionMismatch`) is the replier's `min u16, max u16`. [`ChecksumError`]
//! (reply to Read, status `ChecksumError`: blocks of the read failed their
//! checksum on the replica) carries the read's extent in the header
//! (offset/length) and `count u16, count × (offset u64, len u64)`: the bad
//! byte ranges of the volume, never data; whole 4 KiB blocks
//! ([`limits::CHECKSUM_BLOCK_BYTES`]), ascending and merged, within the
//! read's extent aligned out to blocks, 1 to
//! [`limits::MAX_CHECKSUM_RANGES`] of them. Any other reply with a
//! status other than `Ok` is an [`ErrorReply`] whose payload is a detail
//! string; its opcode is the request's, even one the replier did not know.
//!
//! # Handshake
//!
//! The target dials and sends `Hello` (framed with version 1) carrying the
//! versions it speaks, the volume, its epoch (header), a fresh session id
//! (header), the first io_seq it will use and an authentication proof. The
//! replica checks the proof and the epoch (fencing, answering `StaleEpoch`
//! or `NotAuthenticated` errors) and answers `HelloAck` with the highest
//! common version and its state, or `VersionMismatch` with its range.

pub mod limits;

mod codec;
mod frame;
pub mod header;
mod message;
mod opcode;
mod status;
mod wire;

pub use codec::{reserve_read_ahead, FrameCodec, READ_AHEAD_BYTES, WRITE_BATCH_BYTES};
pub use frame::{EncodeError, Frame, FrameError};
pub use header::{FrameHeader, HEADER_LEN, MAGIC, PROTOCOL_VERSION};
pub use message::{
    Auth, ByteRange, ChecksumError, DigestReply, ErrorReply, Extent, Hello, HelloAck, Member,
    Membership, Message, MessageError, Packet, RebuildAbort, RebuildChunk, RebuildDone,
    RebuildProgress, RebuildSource, RebuildStart, ReplicaState, SnapshotInfo, SnapshotListRequest,
    SnapshotListing, StatusReport, VersionRange, Write, FLAG_FUA,
};
pub use opcode::{Opcode, ReplyKind, REPLY_BIT};
pub use status::Status;
pub use wire::{Name, PayloadError};
