//! Journal records: the logical metadata operations. Both the live path and
//! replay apply them through `State::apply`, so replay reproduces exactly
//! the state the live path had (deletes collapse layers deterministically).
//! Encoding: a tag byte then little-endian fields; see FORMAT.md "Records".

use crate::format::codec::{Reader, Writer};
use crate::format::FormatError;

/// Id of a layer (a volume's live map or a snapshot's frozen map).
pub type LayerId = u64;
/// Id of a volume.
pub type VolumeId = u64;
/// Id of a snapshot.
pub type SnapshotId = u64;

/// One metadata operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A new volume (or a clone when `parent` names a snapshot's layer).
    CreateVolume {
        /// New volume id.
        id: VolumeId,
        /// Its (empty) live layer.
        layer: LayerId,
        /// Layer it reads through (a clone's snapshot), if any.
        parent: Option<LayerId>,
        /// Unique volume name.
        name: String,
        /// Logical size.
        size_bytes: u64,
        /// 512 or 4096.
        block_bytes: u32,
        /// Space reserved at creation.
        thick: bool,
        /// Stable random replica id.
        replica_id: u128,
        /// io_seq at creation (a clone starts at its snapshot's).
        io_seq: u64,
    },
    /// Deletes a volume and all its snapshots.
    DeleteVolume {
        /// Volume.
        id: VolumeId,
    },
    /// Grows a volume.
    GrowVolume {
        /// Volume.
        id: VolumeId,
        /// New size (larger).
        size_bytes: u64,
    },
    /// Undoes a grow: the volume's size drops back. The live path writes
    /// it only when nothing but zeros lies beyond the new size
    /// (`Volume::shrink`), so it discards no data.
    ShrinkVolume {
        /// Volume.
        id: VolumeId,
        /// New size (smaller).
        size_bytes: u64,
    },
    /// Freezes the volume's live layer as a snapshot; the volume continues
    /// in a new empty layer above it.
    CreateSnapshot {
        /// Volume.
        volume: VolumeId,
        /// New snapshot id.
        id: SnapshotId,
        /// The volume's new live layer.
        new_layer: LayerId,
        /// Snapshot name, unique within the volume.
        name: String,
        /// io_seq the snapshot was taken at.
        io_seq: u64,
    },
    /// Deletes a snapshot.
    DeleteSnapshot {
        /// Snapshot.
        id: SnapshotId,
    },
    /// A snapshot rebuilt from a peer (rebuild only): a new empty layer
    /// named as a snapshot is inserted *below* `below` (a layer of the
    /// volume's chain), between it and its parent, so the layers above keep
    /// their own entries and read through the new one.
    InsertSnapshot {
        /// Volume.
        volume: VolumeId,
        /// New snapshot id.
        id: SnapshotId,
        /// The new snapshot's (empty) layer.
        layer: LayerId,
        /// The layer that gets the new one as its parent.
        below: LayerId,
        /// Snapshot name, unique within the volume.
        name: String,
        /// io_seq the snapshot was taken at (on the peer).
        io_seq: u64,
        /// Size of the snapshot (at most the volume's).
        size_bytes: u64,
    },
    /// Highest target epoch accepted.
    SetEpoch {
        /// Volume.
        volume: VolumeId,
        /// Epoch.
        epoch: u64,
    },
    /// Opaque attribute blob.
    SetAttrs {
        /// Volume.
        volume: VolumeId,
        /// Bytes (≤ MAX_ATTRS_BYTES).
        attrs: Vec<u8>,
    },
    /// Opaque membership record (the target's replica set of the volume).
    SetMembership {
        /// Volume.
        volume: VolumeId,
        /// Bytes (≤ MAX_MEMBERSHIP_BYTES).
        membership: Vec<u8>,
    },
    /// Maps a logical chunk of a layer to a physical chunk.
    Map {
        /// Layer.
        layer: LayerId,
        /// Logical chunk.
        chunk: u64,
        /// Physical chunk.
        phys: u64,
        /// io_seq of the last write into it.
        io_seq: u64,
    },
    /// Makes a logical chunk read as zeros (tombstone over an ancestor).
    Zero {
        /// Layer.
        layer: LayerId,
        /// Logical chunk.
        chunk: u64,
        /// io_seq of the unmap.
        io_seq: u64,
    },
    /// Drops a layer's entry for a chunk (nothing below to hide).
    Remove {
        /// Layer.
        layer: LayerId,
        /// Logical chunk.
        chunk: u64,
    },
    /// io_seq the volume is complete through: the highest written, or the
    /// owner's completion watermark once declared (FORMAT.md).
    VolumeSeq {
        /// Volume.
        volume: VolumeId,
        /// io_seq.
        io_seq: u64,
    },
}

const T_CREATE_VOLUME: u8 = 1;
const T_DELETE_VOLUME: u8 = 2;
const T_GROW_VOLUME: u8 = 3;
const T_CREATE_SNAPSHOT: u8 = 4;
const T_DELETE_SNAPSHOT: u8 = 5;
const T_SET_EPOCH: u8 = 6;
const T_SET_ATTRS: u8 = 7;
const T_MAP: u8 = 8;
const T_ZERO: u8 = 9;
const T_REMOVE: u8 = 10;
const T_VOLUME_SEQ: u8 = 11;
const T_SET_MEMBERSHIP: u8 = 12;
const T_INSERT_SNAPSHOT: u8 = 13;
const T_SHRINK_VOLUME: u8 = 14;

/// Encodes an optional layer id (ids start at 1; 0 means none).
pub(crate) fn opt_id(id: Option<u64>) -> u64 {
    id.unwrap_or(0)
}

/// Decodes an optional layer id.
pub(crate) fn id_opt(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// Decodes a UTF-8 name.
pub(crate) fn name(bytes: &[u8]) -> Result<String, FormatError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| FormatError::Invalid("name is not UTF-8".into()))
}

impl Record {
    /// Appends the encoding.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Record::CreateVolume {
                id,
                layer,
                parent,
                name,
                size_bytes,
                block_bytes,
                thick,
                replica_id,
                io_seq,
            } => {
                w.u8(T_CREATE_VOLUME)
                    .u64(*id)
                    .u64(*layer)
                    .u64(opt_id(*parent))
                    .bytes16(name.as_bytes())
                    .u64(*size_bytes)
                    .u32(*block_bytes)
                    .u8(u8::from(*thick))
                    .u128(*replica_id)
                    .u64(*io_seq);
            }
            Record::DeleteVolume { id } => {
                w.u8(T_DELETE_VOLUME).u64(*id);
            }
            Record::GrowVolume { id, size_bytes } => {
                w.u8(T_GROW_VOLUME).u64(*id).u64(*size_bytes);
            }
            Record::ShrinkVolume { id, size_bytes } => {
                w.u8(T_SHRINK_VOLUME).u64(*id).u64(*size_bytes);
            }
            Record::CreateSnapshot {
                volume,
                id,
                new_layer,
                name,
                io_seq,
            } => {
                w.u8(T_CREATE_SNAPSHOT)
                    .u64(*volume)
                    .u64(*id)
                    .u64(*new_layer)
                    .bytes16(name.as_bytes())
                    .u64(*io_seq);
            }
            Record::DeleteSnapshot { id } => {
                w.u8(T_DELETE_SNAPSHOT).u64(*id);
            }
            Record::InsertSnapshot {
                volume,
                id,
                layer,
                below,
                name,
                io_seq,
                size_bytes,
            } => {
                w.u8(T_INSERT_SNAPSHOT)
                    .u64(*volume)
                    .u64(*id)
                    .u64(*layer)
                    .u64(*below)
                    .bytes16(name.as_bytes())
                    .u64(*io_seq)
                    .u64(*size_bytes);
            }
            Record::SetEpoch { volume, epoch } => {
                w.u8(T_SET_EPOCH).u64(*volume).u64(*epoch);
            }
            Record::SetAttrs { volume, attrs } => {
                w.u8(T_SET_ATTRS).u64(*volume).bytes16(attrs);
            }
            Record::SetMembership { volume, membership } => {
                w.u8(T_SET_MEMBERSHIP).u64(*volume).bytes16(membership);
            }
            Record::Map {
                layer,
                chunk,
                phys,
                io_seq,
            } => {
                w.u8(T_MAP).u64(*layer).u64(*chunk).u64(*phys).u64(*io_seq);
            }
            Record::Zero {
                layer,
                chunk,
                io_seq,
            } => {
                w.u8(T_ZERO).u64(*layer).u64(*chunk).u64(*io_seq);
            }
            Record::Remove { layer, chunk } => {
                w.u8(T_REMOVE).u64(*layer).u64(*chunk);
            }
            Record::VolumeSeq { volume, io_seq } => {
                w.u8(T_VOLUME_SEQ).u64(*volume).u64(*io_seq);
            }
        }
    }

    /// Decodes one record.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        let tag = r.u8()?;
        Ok(match tag {
            T_CREATE_VOLUME => Record::CreateVolume {
                id: r.u64()?,
                layer: r.u64()?,
                parent: id_opt(r.u64()?),
                name: name(r.bytes16()?)?,
                size_bytes: r.u64()?,
                block_bytes: r.u32()?,
                thick: r.u8()? != 0,
                replica_id: r.u128()?,
                io_seq: r.u64()?,
            },
            T_DELETE_VOLUME => Record::DeleteVolume { id: r.u64()? },
            T_GROW_VOLUME => Record::GrowVolume {
                id: r.u64()?,
                size_bytes: r.u64()?,
            },
            T_SHRINK_VOLUME => Record::ShrinkVolume {
                id: r.u64()?,
                size_bytes: r.u64()?,
            },
            T_CREATE_SNAPSHOT => Record::CreateSnapshot {
                volume: r.u64()?,
                id: r.u64()?,
                new_layer: r.u64()?,
                name: name(r.bytes16()?)?,
                io_seq: r.u64()?,
            },
            T_DELETE_SNAPSHOT => Record::DeleteSnapshot { id: r.u64()? },
            T_INSERT_SNAPSHOT => Record::InsertSnapshot {
                volume: r.u64()?,
                id: r.u64()?,
                layer: r.u64()?,
                below: r.u64()?,
                name: name(r.bytes16()?)?,
                io_seq: r.u64()?,
                size_bytes: r.u64()?,
            },
            T_SET_EPOCH => Record::SetEpoch {
                volume: r.u64()?,
                epoch: r.u64()?,
            },
            T_SET_ATTRS => Record::SetAttrs {
                volume: r.u64()?,
                attrs: r.bytes16()?.to_vec(),
            },
            T_SET_MEMBERSHIP => Record::SetMembership {
                volume: r.u64()?,
                membership: r.bytes16()?.to_vec(),
            },
            T_MAP => Record::Map {
                layer: r.u64()?,
                chunk: r.u64()?,
                phys: r.u64()?,
                io_seq: r.u64()?,
            },
            T_ZERO => Record::Zero {
                layer: r.u64()?,
                chunk: r.u64()?,
                io_seq: r.u64()?,
            },
            T_REMOVE => Record::Remove {
                layer: r.u64()?,
                chunk: r.u64()?,
            },
            T_VOLUME_SEQ => Record::VolumeSeq {
                volume: r.u64()?,
                io_seq: r.u64()?,
            },
            other => return Err(FormatError::Invalid(format!("record tag {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Record> {
        vec![
            Record::CreateVolume {
                id: 1,
                layer: 2,
                parent: Some(7),
                name: "vol".into(),
                size_bytes: 1 << 30,
                block_bytes: 4096,
                thick: true,
                replica_id: 0xabcdef,
                io_seq: 5,
            },
            Record::DeleteVolume { id: 1 },
            Record::GrowVolume {
                id: 1,
                size_bytes: 2 << 30,
            },
            Record::ShrinkVolume {
                id: 1,
                size_bytes: 1 << 30,
            },
            Record::CreateSnapshot {
                volume: 1,
                id: 3,
                new_layer: 4,
                name: "s".into(),
                io_seq: 9,
            },
            Record::DeleteSnapshot { id: 3 },
            Record::InsertSnapshot {
                volume: 1,
                id: 5,
                layer: 6,
                below: 4,
                name: "r".into(),
                io_seq: 7,
                size_bytes: 1 << 30,
            },
            Record::SetEpoch {
                volume: 1,
                epoch: 8,
            },
            Record::SetAttrs {
                volume: 1,
                attrs: vec![1, 2, 3],
            },
            Record::SetMembership {
                volume: 1,
                membership: vec![4, 5],
            },
            Record::Map {
                layer: 2,
                chunk: 10,
                phys: 11,
                io_seq: 12,
            },
            Record::Zero {
                layer: 2,
                chunk: 10,
                io_seq: 13,
            },
            Record::Remove {
                layer: 2,
                chunk: 10,
            },
            Record::VolumeSeq {
                volume: 1,
                io_seq: 14,
            },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        let mut w = Writer::new();
        for r in all() {
            r.encode(&mut w);
        }
        let bytes = w.into_vec();
        let mut r = Reader::new(&bytes);
        for want in all() {
            assert_eq!(Record::decode(&mut r).unwrap(), want);
        }
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn unknown_tag_and_truncation_are_errors() {
        assert!(Record::decode(&mut Reader::new(&[200])).is_err());
        let mut w = Writer::new();
        all()[0].encode(&mut w);
        let bytes = w.into_vec();
        for cut in 0..bytes.len() {
            assert!(Record::decode(&mut Reader::new(&bytes[..cut])).is_err());
        }
    }
}
