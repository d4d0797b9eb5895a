//! Management payloads: snapshots, resize, status.
//!
//! A `SnapshotCreate` is ordered like a write: it captures every write with
//! a lower io_seq than its own (header `io_seq`) and none with a higher one.
//! Listings are paged: a request names the last snapshot already received
//! (or none), a reply holds at most [`MAX_SNAPSHOTS_PER_LISTING`] entries and
//! says whether more follow.

use bytes::{BufMut, BytesMut};

use crate::limits::{MAX_NAME_BYTES, MAX_SNAPSHOTS_PER_LISTING};
use crate::message::handshake::ReplicaState;
use crate::message::rebuild::RebuildProgress;
use crate::wire::{Name, PayloadError, Reader};

/// Ask for the snapshots of the volume, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotListRequest {
    /// Start after this name (the last one of the previous page), or at
    /// the beginning.
    pub after: Option<Name>,
}

impl SnapshotListRequest {
    pub(crate) fn decode(src: &mut Reader) -> Result<SnapshotListRequest, PayloadError> {
        let after = src.string("after", MAX_NAME_BYTES)?;
        let after = if after.is_empty() {
            None
        } else {
            Some(Name::new(after)?)
        };
        Ok(SnapshotListRequest { after })
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        match &self.after {
            Some(name) => name.put(dst),
            None => dst.put_u16_le(0),
        }
    }
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: Name,
    /// The io_seq it was taken at (holds every write below it).
    pub io_seq: u64,
    /// Creation time, seconds since the Unix epoch (replica clock).
    pub created_unix_secs: u64,
    /// The volume's size when it was taken (the snapshot's size).
    pub size_bytes: u64,
}

/// One page of snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotListing {
    /// At most [`MAX_SNAPSHOTS_PER_LISTING`] snapshots, in name order.
    pub snapshots: Vec<SnapshotInfo>,
    /// More snapshots follow the last one.
    pub more: bool,
}

impl SnapshotListing {
    pub(crate) fn check(&self) -> Result<(), PayloadError> {
        if self.snapshots.len() > MAX_SNAPSHOTS_PER_LISTING {
            return Err(PayloadError::TooLong {
                field: "snapshots",
                len: self.snapshots.len(),
                max: MAX_SNAPSHOTS_PER_LISTING,
            });
        }
        Ok(())
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<SnapshotListing, PayloadError> {
        let count = src.u32("snapshots.count")?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > MAX_SNAPSHOTS_PER_LISTING {
            return Err(PayloadError::TooLong {
                field: "snapshots.count",
                len: count,
                max: MAX_SNAPSHOTS_PER_LISTING,
            });
        }
        let more = src.bool("more")?;
        let mut snapshots = Vec::with_capacity(count);
        for _ in 0..count {
            snapshots.push(SnapshotInfo {
                name: src.name("snapshots.name")?,
                io_seq: src.u64("snapshots.io_seq")?,
                created_unix_secs: src.u64("snapshots.created_unix_secs")?,
                size_bytes: src.u64("snapshots.size_bytes")?,
            });
        }
        Ok(SnapshotListing { snapshots, more })
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        // `check` bounded the count far below u32::MAX.
        dst.put_u32_le(u32::try_from(self.snapshots.len()).unwrap_or(u32::MAX));
        dst.put_u8(u8::from(self.more));
        for snapshot in &self.snapshots {
            snapshot.name.put(dst);
            dst.put_u64_le(snapshot.io_seq);
            dst.put_u64_le(snapshot.created_unix_secs);
            dst.put_u64_le(snapshot.size_bytes);
        }
    }

    pub(crate) fn wire_len(&self) -> usize {
        self.snapshots
            .iter()
            .map(|s| s.name.wire_len() + 24)
            .fold(5, usize::saturating_add)
    }
}

/// A replica's answer to `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusReport {
    /// Its state.
    pub state: ReplicaState,
    /// Every write up to this io_seq is durable.
    pub last_durable_io_seq: u64,
    /// Highest io_seq received (applied, maybe not yet durable).
    pub last_received_io_seq: u64,
    /// Volume size.
    pub volume_size_bytes: u64,
    /// Highest target epoch persisted.
    pub highest_epoch_seen: u64,
    /// Rebuild progress (both zero when no rebuild runs).
    pub rebuild: RebuildProgress,
}

impl StatusReport {
    pub(crate) fn check(&self) -> Result<(), PayloadError> {
        self.rebuild.check()
    }

    pub(crate) fn decode(src: &mut Reader) -> Result<StatusReport, PayloadError> {
        let report = StatusReport {
            state: ReplicaState::decode(src)?,
            last_durable_io_seq: src.u64("last_durable_io_seq")?,
            last_received_io_seq: src.u64("last_received_io_seq")?,
            volume_size_bytes: src.u64("volume_size_bytes")?,
            highest_epoch_seen: src.u64("highest_epoch_seen")?,
            rebuild: RebuildProgress::decode(src)?,
        };
        report.check()?;
        Ok(report)
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        self.state.put(dst);
        dst.put_u64_le(self.last_durable_io_seq);
        dst.put_u64_le(self.last_received_io_seq);
        dst.put_u64_le(self.volume_size_bytes);
        dst.put_u64_le(self.highest_epoch_seen);
        self.rebuild.put(dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn listing_count_beyond_the_bound_is_refused_before_allocating() {
        let mut raw = BytesMut::new();
        raw.put_u32_le(u32::MAX);
        raw.put_u8(0);
        let mut src = Reader::new(raw.freeze());
        assert!(matches!(
            SnapshotListing::decode(&mut src),
            Err(PayloadError::TooLong {
                field: "snapshots.count",
                ..
            })
        ));
    }

    #[test]
    fn listing_count_larger_than_the_entries_present_is_truncated() {
        let mut raw = BytesMut::new();
        raw.put_u32_le(2);
        raw.put_u8(0);
        Name::new("a").unwrap().put(&mut raw);
        raw.put_u64_le(1);
        raw.put_u64_le(2);
        let mut src = Reader::new(raw.freeze());
        assert!(matches!(
            SnapshotListing::decode(&mut src),
            Err(PayloadError::Truncated { .. })
        ));
    }

    #[test]
    fn empty_after_means_from_the_start() {
        let mut src = Reader::new(Bytes::from_static(&[0, 0]));
        assert_eq!(
            SnapshotListRequest::decode(&mut src),
            Ok(SnapshotListRequest { after: None })
        );
    }
}
