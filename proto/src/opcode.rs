//! Opcodes: the `opcode` header field (u16 LE).
//!
//! The low 15 bits name the operation; bit 15 ([`REPLY_BIT`]) marks the
//! reply to it, so a reply always names the request it answers, even a
//! request whose opcode the replier did not know. Values are part of the wire
//! format and never reused. An opcode this version does not know is not an
//! error of the frame layer: the frame is intact, and the message layer
//! reports it so that the connection can answer `UnknownOpcode` and go on.

/// Bit 15 of the opcode field: this frame is a reply.
pub const REPLY_BIT: u16 = 0x8000;

/// The operations of protocol version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    /// Handshake: target → replica. Reply: `HelloAck` or `VersionMismatch`.
    Hello = 0x0001,
    /// Write data at an offset. Reply: `Ack`.
    Write = 0x0010,
    /// Read an extent. Reply: `ReadData`.
    Read = 0x0011,
    /// Make every acknowledged write durable. Reply: `Ack`.
    Flush = 0x0012,
    /// Deallocate an extent (reads back zeros). Reply: `Ack`.
    Unmap = 0x0013,
    /// Write zeros over an extent without sending them. Reply: `Ack`.
    WriteZeroes = 0x0014,
    /// Create a snapshot of the volume. Reply: `Ack`.
    SnapshotCreate = 0x0020,
    /// Destroy a snapshot. Reply: `Ack`.
    SnapshotDestroy = 0x0021,
    /// List snapshots, paged. Reply: `SnapshotListing`.
    SnapshotList = 0x0022,
    /// Grow the volume. Reply: `Ack`.
    Resize = 0x0023,
    /// Ask a replica for its state. Reply: `StatusReport`.
    Status = 0x0024,
    /// Persist the volume's membership record. Reply: `Ack`.
    MembershipSet = 0x0025,
    /// Read the volume's membership record (allowed on a probe). Reply:
    /// `Membership`.
    MembershipGet = 0x0026,
    /// Liveness probe, either direction. Reply: `Ack`.
    Heartbeat = 0x0030,
    /// Start a rebuild (target → sink, sink → source). Reply: `Ack`.
    RebuildStart = 0x0040,
    /// One extent of rebuild data, source → sink. One-way.
    RebuildChunk = 0x0041,
    /// Rebuild progress, sink → target. One-way.
    RebuildProgress = 0x0042,
    /// The source sent everything, or the sink finished. One-way.
    RebuildDone = 0x0043,
    /// Either side gives up on the rebuild. One-way.
    RebuildAbort = 0x0044,
    /// The owning target sets the volume's rebuild rate limit on a replica
    /// (bytes per second its rebuilds pull; 0: none). Reply: `Ack`.
    RebuildThrottle = 0x0045,
    /// The digest of an extent of the live volume (scrub), ordered like a
    /// read of it. Reply: `RangeDigest`.
    Digest = 0x0050,
}

/// What the replier sends back for an opcode when it succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// An empty `Ack` reply.
    Ack,
    /// A reply with its own payload type.
    Typed,
    /// No reply (stream messages); failures end the stream with an abort.
    OneWay,
}

impl Opcode {
    /// Every opcode, in wire order.
    pub const ALL: [Opcode; 21] = [
        Opcode::Hello,
        Opcode::Write,
        Opcode::Read,
        Opcode::Flush,
        Opcode::Unmap,
        Opcode::WriteZeroes,
        Opcode::SnapshotCreate,
        Opcode::SnapshotDestroy,
        Opcode::SnapshotList,
        Opcode::Resize,
        Opcode::Status,
        Opcode::MembershipSet,
        Opcode::MembershipGet,
        Opcode::Heartbeat,
        Opcode::RebuildStart,
        Opcode::RebuildChunk,
        Opcode::RebuildProgress,
        Opcode::RebuildDone,
        Opcode::RebuildAbort,
        Opcode::RebuildThrottle,
        Opcode::Digest,
    ];

    /// The wire value (without [`REPLY_BIT`]).
    pub fn to_u16(self) -> u16 {
        self as u16
    }

    /// The opcode of a wire value with [`REPLY_BIT`] cleared, if known.
    pub fn from_u16(value: u16) -> Option<Opcode> {
        Opcode::ALL.into_iter().find(|op| op.to_u16() == value)
    }

    /// What a successful reply to this opcode is.
    pub fn reply_kind(self) -> ReplyKind {
        match self {
            Opcode::Hello
            | Opcode::Read
            | Opcode::SnapshotList
            | Opcode::Status
            | Opcode::MembershipGet
            | Opcode::Digest => ReplyKind::Typed,
            Opcode::Write
            | Opcode::Flush
            | Opcode::Unmap
            | Opcode::WriteZeroes
            | Opcode::SnapshotCreate
            | Opcode::SnapshotDestroy
            | Opcode::Resize
            | Opcode::MembershipSet
            | Opcode::Heartbeat
            | Opcode::RebuildStart
            | Opcode::RebuildThrottle => ReplyKind::Ack,
            Opcode::RebuildChunk
            | Opcode::RebuildProgress
            | Opcode::RebuildDone
            | Opcode::RebuildAbort => ReplyKind::OneWay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_opcodes_round_trip_and_leave_the_reply_bit_free() {
        for op in Opcode::ALL {
            assert_eq!(op.to_u16() & REPLY_BIT, 0, "{op:?}");
            assert_eq!(Opcode::from_u16(op.to_u16()), Some(op));
        }
    }

    #[test]
    fn unassigned_values_are_not_opcodes() {
        let known = Opcode::ALL.map(Opcode::to_u16);
        for value in 0..REPLY_BIT {
            assert_eq!(Opcode::from_u16(value).is_some(), known.contains(&value));
        }
    }
}
