//! The status code carried in every frame header (`status`, u16 LE).
//!
//! A small, stable set that maps one-to-one onto the engine's error kinds and
//! the SCSI sense the target reports, so that no layer has to guess. Values
//! are part of the wire format and never reused; a value this version does
//! not know decodes as [`Status::Unknown`] (never a panic, never a guess) and
//! is treated by callers like an I/O error.

/// Outcome of a request, carried in the header of its reply. Requests and
/// one-way messages carry [`Status::Ok`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Success.
    Ok,
    /// No protocol version in common, or a frame framed with a version this
    /// side does not speak.
    VersionMismatch,
    /// The request's opcode is not known to this side.
    UnknownOpcode,
    /// The request is malformed (bad payload, unused header field set,
    /// unknown flag). The connection stays usable.
    BadRequest,
    /// Offset/length outside the volume.
    OutOfRange,
    /// The pool has no space left for the write.
    NoSpace,
    /// The backing device failed the operation.
    IoError,
    /// The volume saw an I/O error earlier and refuses all I/O until it is
    /// rebuilt (no retry of a failed fsync).
    VolumePoisoned,
    /// No such volume or snapshot.
    NotFound,
    /// A snapshot (or volume) of that name exists already.
    AlreadyExists,
    /// The request's target epoch is older than one the replica has seen:
    /// the sender has been fenced.
    StaleEpoch,
    /// The handshake's authentication failed, or a request came before it.
    NotAuthenticated,
    /// Temporarily unable (opening, rebuilding, queue full); retry later.
    Busy,
    /// The volume or replica is read-only.
    ReadOnly,
    /// Data read back does not match the checksum stored with it: the
    /// blocks are bad on this copy (the replica is not failed for it). The
    /// reply to a `Read` is [`Message::ChecksumError`](crate::Message)
    /// naming the bad ranges, never data; to any other request an error
    /// reply with a detail.
    ChecksumError,
    /// A value this version does not know.
    Unknown(u16),
}

impl Status {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Status::Ok => 0,
            Status::VersionMismatch => 1,
            Status::UnknownOpcode => 2,
            Status::BadRequest => 3,
            Status::OutOfRange => 4,
            Status::NoSpace => 5,
            Status::IoError => 6,
            Status::VolumePoisoned => 7,
            Status::NotFound => 8,
            Status::AlreadyExists => 9,
            Status::StaleEpoch => 10,
            Status::NotAuthenticated => 11,
            Status::Busy => 12,
            Status::ReadOnly => 13,
            Status::ChecksumError => 14,
            Status::Unknown(value) => value,
        }
    }

    /// The status of a wire value; total, unknown values are kept as
    /// [`Status::Unknown`].
    pub fn from_u16(value: u16) -> Status {
        match value {
            0 => Status::Ok,
            1 => Status::VersionMismatch,
            2 => Status::UnknownOpcode,
            3 => Status::BadRequest,
            4 => Status::OutOfRange,
            5 => Status::NoSpace,
            6 => Status::IoError,
            7 => Status::VolumePoisoned,
            8 => Status::NotFound,
            9 => Status::AlreadyExists,
            10 => Status::StaleEpoch,
            11 => Status::NotAuthenticated,
            12 => Status::Busy,
            13 => Status::ReadOnly,
            14 => Status::ChecksumError,
            other => Status::Unknown(other),
        }
    }

    /// True for [`Status::Ok`].
    pub fn is_ok(self) -> bool {
        self == Status::Ok
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Unknown(value) => write!(f, "unknown status {value}"),
            known => write!(f, "{known:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_value_round_trips() {
        for value in 0..=u16::MAX {
            assert_eq!(Status::from_u16(value).to_u16(), value);
        }
    }

    #[test]
    fn unassigned_values_decode_as_unknown() {
        assert_eq!(Status::from_u16(15), Status::Unknown(15));
        assert_eq!(Status::from_u16(u16::MAX), Status::Unknown(u16::MAX));
        assert_eq!(Status::from_u16(13), Status::ReadOnly);
        assert_eq!(Status::from_u16(14), Status::ChecksumError);
    }
}
