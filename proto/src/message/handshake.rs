//! Handshake payloads: `Hello`, `HelloAck`, `VersionMismatch`.
//!
//! A connection opens with the target's `Hello` (framed with header version
//! 1 whatever versions it offers). The replica answers `HelloAck` naming the
//! version both speak, or `VersionMismatch` naming the range it supports; it
//! then closes. The three payload layouts below are frozen for all versions,
//! like the header, so that two versions can always tell each other why they
//! cannot talk.
//!
//! The target epoch is the `epoch` header field of the `Hello`; the session
//! id is its `session_id` field. Authentication proofs are carried, not
//! checked: the replica daemon verifies them against the volume's secret.

use bytes::{BufMut, Bytes, BytesMut};

use crate::header::PROTOCOL_VERSION;
use crate::limits::{MAX_AUTH_PROOF_BYTES, MAX_BLOCK_BYTES, MIN_BLOCK_BYTES};
use crate::wire::{put_prefixed, Name, PayloadError, Reader};

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// Lowest version, at least 1.
    pub min: u16,
    /// Highest version, at least `min`.
    pub max: u16,
}

impl VersionRange {
    /// The versions this crate speaks.
    pub const SUPPORTED: VersionRange = VersionRange {
        min: PROTOCOL_VERSION,
        max: PROTOCOL_VERSION,
    };

    /// The highest version in both ranges, if any.
    pub fn negotiate(self, other: VersionRange) -> Option<u16> {
        let high = self.max.min(other.max);
        let low = self.min.max(other.min);
        (low <= high).then_some(high)
    }

    pub(crate) fn check(self) -> Result<(), PayloadError> {
        if self.min == 0 || self.min > self.max {
            return Err(PayloadError::Invalid {
                field: "versions",
                reason: "range must satisfy 1 <= min <= max",
            });
        }
        Ok(())
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<VersionRange, PayloadError> {
        let range = VersionRange {
            min: src.u16("versions.min")?,
            max: src.u16("versions.max")?,
        };
        range.check()?;
        Ok(range)
    }

    pub(crate) fn put(self, dst: &mut BytesMut) {
        dst.put_u16_le(self.min);
        dst.put_u16_le(self.max);
    }
}

/// How the target proves it may open the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No proof (only accepted by replicas configured without a secret).
    None,
    /// A proof computed from the volume's pre-shared secret (e.g. an HMAC
    /// over volume name, epoch and session id); at most
    /// [`MAX_AUTH_PROOF_BYTES`] bytes, verified by the replica daemon.
    PreSharedKey {
        /// The proof bytes.
        proof: Bytes,
    },
}

const AUTH_NONE: u8 = 0;
const AUTH_PRE_SHARED_KEY: u8 = 1;

/// The target's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Versions the target speaks.
    pub versions: VersionRange,
    /// The volume this connection serves.
    pub volume: Name,
    /// The first io_seq the target will use on this connection; the replica
    /// will not see a lower one.
    pub next_io_seq: u64,
    /// Authentication.
    pub auth: Auth,
}

impl Hello {
    pub(crate) fn check(&self) -> Result<(), PayloadError> {
        self.versions.check()?;
        if let Auth::PreSharedKey { proof } = &self.auth {
            if proof.len() > MAX_AUTH_PROOF_BYTES {
                return Err(PayloadError::TooLong {
                    field: "auth.proof",
                    len: proof.len(),
                    max: MAX_AUTH_PROOF_BYTES,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<Hello, PayloadError> {
        let versions = VersionRange::decode(src)?;
        let next_io_seq = src.u64("next_io_seq")?;
        let volume = src.name("volume")?;
        let auth = match src.u8("auth.method")? {
            AUTH_NONE => Auth::None,
            AUTH_PRE_SHARED_KEY => Auth::PreSharedKey {
                proof: src.prefixed("auth.proof", MAX_AUTH_PROOF_BYTES)?,
            },
            _ => {
                return Err(PayloadError::Invalid {
                    field: "auth.method",
                    reason: "unknown authentication method",
                })
            }
        };
        Ok(Hello {
            versions,
            volume,
            next_io_seq,
            auth,
        })
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        self.versions.put(dst);
        dst.put_u64_le(self.next_io_seq);
        self.volume.put(dst);
        match &self.auth {
            Auth::None => dst.put_u8(AUTH_NONE),
            Auth::PreSharedKey { proof } => {
                dst.put_u8(AUTH_PRE_SHARED_KEY);
                put_prefixed(dst, proof);
            }
        }
    }
}

/// A replica's view of its copy of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// Complete and current: may serve reads and count towards quorum.
    Healthy,
    /// Complete up to its last durable io_seq but known to have missed
    /// writes since: needs a delta rebuild.
    Degraded,
    /// Receiving a rebuild: takes live writes, serves no reads.
    Rebuilding,
    /// Freshly created with no data: needs a full rebuild (or is the first
    /// replica of a new volume).
    NewEmpty,
}

impl ReplicaState {
    fn to_u8(self) -> u8 {
        match self {
            ReplicaState::Healthy => 1,
            ReplicaState::Degraded => 2,
            ReplicaState::Rebuilding => 3,
            ReplicaState::NewEmpty => 4,
        }
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<ReplicaState, PayloadError> {
        match src.u8("state")? {
            1 => Ok(ReplicaState::Healthy),
            2 => Ok(ReplicaState::Degraded),
            3 => Ok(ReplicaState::Rebuilding),
            4 => Ok(ReplicaState::NewEmpty),
            _ => Err(PayloadError::Invalid {
                field: "state",
                reason: "unknown replica state",
            }),
        }
    }

    pub(crate) fn put(self, dst: &mut BytesMut) {
        dst.put_u8(self.to_u8());
    }
}

/// The replica's answer to a `Hello` it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloAck {
    /// The version both sides speak from now on.
    pub version: u16,
    /// This replica of the volume.
    pub replica_id: u128,
    /// The pool holding it.
    pub pool_guid: u128,
    /// Its state.
    pub state: ReplicaState,
    /// Every write up to this io_seq is durable on the replica.
    pub last_durable_io_seq: u64,
    /// Volume size.
    pub volume_size_bytes: u64,
    /// Block size of the volume (power of two, 512 B to 64 KiB).
    pub block_size_bytes: u32,
    /// Highest target epoch the replica has persisted (the `Hello` epoch
    /// must exceed it unless it is that same target reconnecting).
    pub highest_epoch_seen: u64,
}

impl HelloAck {
    pub(crate) fn check(&self) -> Result<(), PayloadError> {
        if self.version == 0 {
            return Err(PayloadError::Invalid {
                field: "version",
                reason: "version 0 does not exist",
            });
        }
        check_block_size(self.block_size_bytes)
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<HelloAck, PayloadError> {
        let ack = HelloAck {
            version: src.u16("version")?,
            state: ReplicaState::decode(src)?,
            block_size_bytes: src.u32("block_size_bytes")?,
            replica_id: src.u128("replica_id")?,
            pool_guid: src.u128("pool_guid")?,
            last_durable_io_seq: src.u64("last_durable_io_seq")?,
            volume_size_bytes: src.u64("volume_size_bytes")?,
            highest_epoch_seen: src.u64("highest_epoch_seen")?,
        };
        ack.check()?;
        Ok(ack)
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_u16_le(self.version);
        self.state.put(dst);
        dst.put_u32_le(self.block_size_bytes);
        dst.put_u128_le(self.replica_id);
        dst.put_u128_le(self.pool_guid);
        dst.put_u64_le(self.last_durable_io_seq);
        dst.put_u64_le(self.volume_size_bytes);
        dst.put_u64_le(self.highest_epoch_seen);
    }
}

/// A block size must be a power of two between the protocol's bounds.
pub(crate) fn check_block_size(block_size_bytes: u32) -> Result<(), PayloadError> {
    if !block_size_bytes.is_power_of_two()
        || !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&block_size_bytes)
    {
        return Err(PayloadError::Invalid {
            field: "block_size_bytes",
            reason: "not a power of two between 512 B and 64 KiB",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(range(1, 3).negotiate(range(2, 5)), Some(3));
        assert_eq!(range(2, 5).negotiate(range(1, 3)), Some(3));
        assert_eq!(range(1, 1).negotiate(range(1, 1)), Some(1));
    }

    #[test]
    fn disjoint_ranges_do_not_negotiate() {
        assert_eq!(range(1, 1).negotiate(range(2, 3)), None);
        assert_eq!(range(4, 9).negotiate(range(1, 3)), None);
    }

    #[test]
    fn empty_or_zero_ranges_are_invalid() {
        assert!(range(0, 1).check().is_err());
        assert!(range(3, 2).check().is_err());
        assert!(range(1, 1).check().is_ok());
    }

    #[test]
    fn block_sizes_must_be_bounded_powers_of_two() {
        for ok in [512, 4096, 65536] {
            assert!(check_block_size(ok).is_ok(), "{ok}");
        }
        for bad in [0, 256, 1000, 131072] {
            assert!(check_block_size(bad).is_err(), "{bad}");
        }
    }
}
