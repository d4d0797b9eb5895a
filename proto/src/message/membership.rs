//! Membership payload: the replica set of a volume, as the target keeps it
//! on every member (`MembershipSet`) and reads it back (`MembershipGet`).
//!
//! A record is `generation u64, consistency_factor u8, count u8, count ×
//! (replica_id u128, address str)`. The target writes a new record with
//! `generation + 1` whenever the set or the consistency factor changes; a
//! replica keeps the one with the highest generation it was sent (it refuses
//! an older one). Generation 0 is "no record": no member, CF 0 — what a
//! replica that never got one answers to `MembershipGet`.
//!
//! Validation (both directions): at most [`MAX_MEMBERS`] members, addresses
//! non-empty, at most [`MAX_ADDRESS_BYTES`] and distinct, replica ids
//! distinct unless 0 (0 = not known yet: a member named on the command line
//! that was never reached), and `1 <= consistency_factor <= count` for a
//! record of generation 1 or more.

use bytes::{BufMut, BytesMut};

use crate::limits::{MAX_ADDRESS_BYTES, MAX_MEMBERS};
use crate::wire::{check_text, put_prefixed, PayloadError, Reader};

/// One member: a replica of the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The replica's id (its `HelloAck::replica_id`), 0 if not known yet.
    pub replica_id: u128,
    /// Its data address (`host:port`).
    pub address: String,
}

/// The replica set of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    /// Grows by one with every change; 0 = no record.
    pub generation: u64,
    /// Healthy acknowledgements a write needs.
    pub consistency_factor: u8,
    /// The members, in the target's order.
    pub members: Vec<Member>,
}

impl Membership {
    /// The "no record" value a replica reports when it has none.
    pub fn none() -> Membership {
        Membership::default()
    }

    /// Checks every rule of the module doc.
    pub fn check(&self) -> Result<(), PayloadError> {
        if self.members.len() > MAX_MEMBERS {
            return Err(PayloadError::TooLong {
                field: "members",
                len: self.members.len(),
                max: MAX_MEMBERS,
            });
        }
        let cf = usize::from(self.consistency_factor);
        if self.generation == 0 {
            if !self.members.is_empty() || cf != 0 {
                return Err(PayloadError::Invalid {
                    field: "generation",
                    reason: "generation 0 (no record) carries no member and no CF",
                });
            }
            return Ok(());
        }
        if cf == 0 || cf > self.members.len() {
            return Err(PayloadError::Invalid {
                field: "consistency_factor",
                reason: "must be between 1 and the member count",
            });
        }
        for (i, member) in self.members.iter().enumerate() {
            if member.address.is_empty() {
                return Err(PayloadError::Invalid {
                    field: "members.address",
                    reason: "empty address",
                });
            }
            check_text("members.address", &member.address, MAX_ADDRESS_BYTES)?;
            let earlier = self.members.iter().take(i);
            for other in earlier {
                if other.address == member.address {
                    return Err(PayloadError::Invalid {
                        field: "members.address",
                        reason: "duplicate address",
                    });
                }
                if member.replica_id != 0 && other.replica_id == member.replica_id {
                    return Err(PayloadError::Invalid {
                        field: "members.replica_id",
                        reason: "duplicate replica id",
                    });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<Membership, PayloadError> {
        let generation = src.u64("generation")?;
        let consistency_factor = src.u8("consistency_factor")?;
        let count = usize::from(src.u8("members.count")?);
        if count > MAX_MEMBERS {
            return Err(PayloadError::TooLong {
                field: "members.count",
                len: count,
                max: MAX_MEMBERS,
            });
        }
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            members.push(Member {
                replica_id: src.u128("members.replica_id")?,
                address: src.string("members.address", MAX_ADDRESS_BYTES)?,
            });
        }
        let membership = Membership {
            generation,
            consistency_factor,
            members,
        };
        membership.check()?;
        Ok(membership)
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.generation);
        dst.put_u8(self.consistency_factor);
        // `check` bounded the count to MAX_MEMBERS.
        dst.put_u8(u8::try_from(self.members.len()).unwrap_or(u8::MAX));
        for member in &self.members {
            dst.put_u128_le(member.replica_id);
            put_prefixed(dst, member.address.as_bytes());
        }
    }

    /// The encoded payload alone (the replica daemon persists it as is).
    pub fn to_bytes(&self) -> Result<Vec<u8>, PayloadError> {
        self.check()?;
        let mut dst = BytesMut::new();
        self.put(&mut dst);
        Ok(dst.to_vec())
    }

    /// Decodes a payload written by [`Membership::to_bytes`]; empty bytes
    /// are "no record".
    pub fn from_bytes(bytes: &[u8]) -> Result<Membership, PayloadError> {
        if bytes.is_empty() {
            return Ok(Membership::none());
        }
        let mut src = Reader::new(bytes::Bytes::copy_from_slice(bytes));
        let membership = Membership::decode(&mut src)?;
        src.finish()?;
        Ok(membership)
    }

    /// The member at `address`, if any.
    pub fn member(&self, address: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.address == address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u128, address: &str) -> Member {
        Member {
            replica_id: id,
            address: address.into(),
        }
    }

    fn record(cf: u8, members: Vec<Member>) -> Membership {
        Membership {
            generation: 3,
            consistency_factor: cf,
            members,
        }
    }

    #[test]
    fn a_record_round_trips_through_its_bytes() {
        let m = record(2, vec![member(1, "10.0.0.1:7000"), member(0, "b:1")]);
        assert_eq!(Membership::from_bytes(&m.to_bytes().unwrap()).unwrap(), m);
        assert_eq!(Membership::from_bytes(&[]).unwrap(), Membership::none());
    }

    #[test]
    fn cf_outside_one_to_the_member_count_is_refused() {
        assert!(record(0, vec![member(1, "a:1")]).check().is_err());
        assert!(record(2, vec![member(1, "a:1")]).check().is_err());
        assert!(record(1, vec![member(1, "a:1")]).check().is_ok());
    }

    #[test]
    fn duplicate_addresses_or_known_ids_are_refused() {
        assert!(record(1, vec![member(1, "a:1"), member(2, "a:1")])
            .check()
            .is_err());
        assert!(record(1, vec![member(1, "a:1"), member(1, "b:1")])
            .check()
            .is_err());
        // Two members whose ids are not known yet.
        assert!(record(1, vec![member(0, "a:1"), member(0, "b:1")])
            .check()
            .is_ok());
    }

    #[test]
    fn generation_zero_must_be_empty() {
        let mut m = record(1, vec![member(1, "a:1")]);
        m.generation = 0;
        assert!(m.check().is_err());
        assert!(Membership::none().check().is_ok());
    }

    #[test]
    fn member_count_beyond_the_bound_is_refused_before_allocating() {
        let mut raw = BytesMut::new();
        raw.put_u64_le(1);
        raw.put_u8(1);
        raw.put_u8(200);
        assert!(matches!(
            Membership::from_bytes(&raw),
            Err(PayloadError::TooLong {
                field: "members.count",
                ..
            })
        ));
    }
}
