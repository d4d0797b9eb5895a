//! Checkpoint: the whole [`State`] (without the allocator, which is derived)
//! encoded in one blob, written to the checkpoint region the current
//! superblock does not use and made current by a superblock flip. Its crc32c
//! and length live in the superblock. See FORMAT.md "Checkpoint".

use std::collections::BTreeMap;

use super::chunk_map::{ChunkMap, Entry, Target};
use super::record::{id_opt, name, opt_id, LayerId};
use super::state::{Layer, Mode, SnapshotMeta, State, VolumeMeta};
use crate::format::codec::{Reader, Writer};
use crate::format::FormatError;
use crate::limits::{MAX_ATTRS_BYTES, MAX_LAYERS, MAX_MEMBERSHIP_BYTES, MAX_NAME_BYTES};

/// Magic at byte 0 of a checkpoint.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"CSTORCK2";
/// Magic of the previous layout, still read: its volume records end at
/// `max io_seq` (no membership, read as empty).
pub const CHECKPOINT_MAGIC_V1: [u8; 8] = *b"CSTORCK1";
/// Bytes per encoded chunk entry.
pub const ENTRY_BYTES: u64 = 24;
/// Fixed bytes (header).
const HEADER_BYTES: u64 = 8 + 4 + 8 + 4 * 3;
/// Upper bound of the bytes one layer's header takes.
const LAYER_BYTES: u64 = 8 + 8 + 1 + 8;
/// Upper bound of one volume record.
const VOLUME_BYTES: u64 = 8
    + 2
    + MAX_NAME_BYTES as u64
    + 8
    + 8
    + 4
    + 1
    + 16
    + 8
    + 2
    + MAX_ATTRS_BYTES as u64
    + 8
    + 8
    + 2
    + MAX_MEMBERSHIP_BYTES as u64;
/// Upper bound of one snapshot record.
const SNAPSHOT_BYTES: u64 = 8 + 2 + MAX_NAME_BYTES as u64 + 8 + 8 + 8 + 8;
/// Encoded phys of a zeros tombstone.
const ZERO_PHYS: u64 = u64::MAX;

/// An upper bound of the encoded size of `st`, plus `extra_entries` chunk
/// entries and `extra_layers` volumes/snapshots (for admission checks).
pub fn encoded_len_bound(st: &State, extra_entries: u64, extra_layers: u64) -> u64 {
    len_bound(
        (st.layers.len() as u64).saturating_add(extra_layers),
        (st.volumes.len() as u64).saturating_add(extra_layers),
        (st.snapshots.len() as u64).saturating_add(extra_layers),
        st.entries_total.saturating_add(extra_entries),
    )
}

fn len_bound(layers: u64, volumes: u64, snapshots: u64, entries: u64) -> u64 {
    HEADER_BYTES
        .saturating_add(layers.saturating_mul(LAYER_BYTES))
        .saturating_add(volumes.saturating_mul(VOLUME_BYTES))
        .saturating_add(snapshots.saturating_mul(SNAPSHOT_BYTES))
        .saturating_add(entries.saturating_mul(ENTRY_BYTES))
}

/// What a checkpoint holds, taken from a [`State`] by [`Image::of`]: the
/// layers' maps are cheap clones sharing their leaves (`ChunkMap`), so the
/// commit takes an image under the metadata lock and encodes it after
/// releasing the lock, and writes go on meanwhile (a leaf they change is
/// copied first; memory grows by at most the leaves changed during the
/// encoding).
pub struct Image {
    chunk_bytes: u32,
    next_id: u64,
    entries_total: u64,
    layers: Vec<(LayerId, Option<LayerId>, bool, ChunkMap)>,
    volumes: Vec<VolumeMeta>,
    snapshots: Vec<SnapshotMeta>,
}

impl Image {
    /// The checkpoint image of `st` as it is now.
    pub fn of(st: &State) -> Self {
        Self {
            chunk_bytes: st.chunk_bytes,
            next_id: st.next_id,
            entries_total: st.entries_total,
            layers: st
                .layers
                .iter()
                .map(|(id, l)| (*id, l.parent, l.named, l.map.clone()))
                .collect(),
            volumes: st.volumes.values().cloned().collect(),
            snapshots: st.snapshots.values().cloned().collect(),
        }
    }

    /// The encoded checkpoint.
    pub fn encode(&self) -> Vec<u8> {
        let bound = len_bound(
            self.layers.len() as u64,
            self.volumes.len() as u64,
            self.snapshots.len() as u64,
            self.entries_total,
        );
        let cap = usize::try_from(bound).unwrap_or(0);
        let mut w = Writer::with_capacity(cap.min(1 << 30));
        let n32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        w.raw(&CHECKPOINT_MAGIC)
            .u32(self.chunk_bytes)
            .u64(self.next_id)
            .u32(n32(self.layers.len()))
            .u32(n32(self.volumes.len()))
            .u32(n32(self.snapshots.len()));
        for (id, parent, named, map) in &self.layers {
            w.u64(*id)
                .u64(opt_id(*parent))
                .u8(u8::from(*named))
                .u64(map.len());
            for (chunk, e) in map.iter() {
                let phys = match e.target {
                    Target::Data(p) => p,
                    Target::Zero => ZERO_PHYS,
                };
                w.u64(chunk).u64(phys).u64(e.io_seq);
            }
        }
        for v in &self.volumes {
            w.u64(v.id)
                .bytes16(v.name.as_bytes())
                .u64(v.live)
                .u64(v.size_bytes)
                .u32(v.block_bytes)
                .u8(u8::from(v.thick))
                .u128(v.replica_id)
                .u64(v.epoch)
                .bytes16(&v.attrs)
                .u64(v.created_io_seq)
                .u64(v.max_io_seq)
                .bytes16(&v.membership);
        }
        for s in &self.snapshots {
            w.u64(s.id)
                .bytes16(s.name.as_bytes())
                .u64(s.volume)
                .u64(s.layer)
                .u64(s.io_seq)
                .u64(s.size_bytes);
        }
        w.into_vec()
    }
}

/// Encodes the state.
pub fn encode(st: &State) -> Vec<u8> {
    Image::of(st).encode()
}

fn bad(what: impl Into<String>) -> FormatError {
    FormatError::Invalid(what.into())
}

/// Decodes a checkpoint into a state over `total_chunks` physical chunks,
/// checking every reference (parents, owners, names) so that a state that
/// decodes is one the live code could have built.
pub fn decode(bytes: &[u8], chunk_bytes: u32, total_chunks: u64) -> Result<State, FormatError> {
    let mut r = Reader::new(bytes);
    let with_membership = match r.take(8)? {
        magic if magic == CHECKPOINT_MAGIC => true,
        magic if magic == CHECKPOINT_MAGIC_V1 => false,
        _ => return Err(FormatError::BadMagic),
    };
    if r.u32()? != chunk_bytes {
        return Err(bad("chunk size differs from the superblock's"));
    }
    let mut st = State::new(chunk_bytes, total_chunks);
    st.next_id = r.u64()?;
    let n_layers = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
    let n_volumes = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
    let n_snapshots = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
    if n_layers > MAX_LAYERS || n_volumes > MAX_LAYERS || n_snapshots > MAX_LAYERS {
        return Err(bad("too many layers"));
    }
    let mut layers = BTreeMap::new();
    for _ in 0..n_layers {
        let id = r.u64()?;
        let parent = id_opt(r.u64()?);
        let named = r.u8()? != 0;
        let count = r.u64()?;
        let mut map = ChunkMap::new();
        for _ in 0..count {
            let chunk = r.u64()?;
            let phys = r.u64()?;
            let io_seq = r.u64()?;
            let target = if phys == ZERO_PHYS {
                Target::Zero
            } else {
                if !st.alloc.mark_used(phys) {
                    return Err(bad(format!(
                        "physical chunk {phys} out of range or owned twice"
                    )));
                }
                Target::Data(phys)
            };
            if map.insert(chunk, Entry { target, io_seq }).is_some() {
                return Err(bad(format!("layer {id} maps chunk {chunk} twice")));
            }
        }
        st.entries_total = st.entries_total.saturating_add(map.len());
        let layer = Layer {
            parent,
            map,
            children: 0,
            named,
        };
        if id == 0 || id >= st.next_id || layers.insert(id, layer).is_some() {
            return Err(bad(format!("layer id {id}")));
        }
    }
    let parents: Vec<Option<u64>> = layers.values().map(|l: &Layer| l.parent).collect();
    for p in parents.into_iter().flatten() {
        let pl = layers
            .get_mut(&p)
            .ok_or_else(|| bad(format!("missing parent layer {p}")))?;
        pl.children = pl.children.saturating_add(1);
    }
    st.layers = layers;
    for _ in 0..n_volumes {
        let v = VolumeMeta {
            id: r.u64()?,
            name: name(r.bytes16()?)?,
            live: r.u64()?,
            size_bytes: r.u64()?,
            block_bytes: r.u32()?,
            thick: r.u8()? != 0,
            replica_id: r.u128()?,
            epoch: r.u64()?,
            attrs: r.bytes16()?.to_vec(),
            created_io_seq: r.u64()?,
            max_io_seq: r.u64()?,
            membership: if with_membership {
                r.bytes16()?.to_vec()
            } else {
                Vec::new()
            },
        };
        if !st.layers.contains_key(&v.live)
            || v.id == 0
            || v.id >= st.next_id
            || v.membership.len() > MAX_MEMBERSHIP_BYTES
        {
            return Err(bad(format!("volume {}", v.id)));
        }
        st.volumes.insert(v.id, v);
    }
    for _ in 0..n_snapshots {
        let s = SnapshotMeta {
            id: r.u64()?,
            name: name(r.bytes16()?)?,
            volume: r.u64()?,
            layer: r.u64()?,
            io_seq: r.u64()?,
            size_bytes: r.u64()?,
        };
        if !st.layers.contains_key(&s.layer) || !st.volumes.contains_key(&s.volume) {
            return Err(bad(format!("snapshot {}", s.id)));
        }
        st.snapshots.insert(s.id, s);
    }
    // Chains must end (no cycles) within the depth bound.
    for id in st.layers.keys() {
        let chain = st.chain(*id);
        if chain.len() > crate::limits::MAX_CHAIN_DEPTH + 1 {
            return Err(bad(format!("layer {id}: chain too deep or cyclic")));
        }
    }
    let audit = st.audit(&Default::default());
    if !audit.problems.is_empty() {
        return Err(bad(audit.problems.join("; ")));
    }
    // Replay applies `Map` records in replay mode from here.
    let _ = Mode::Replay;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::record::Record;

    fn sample() -> State {
        let mut st = State::new(4096, 32);
        let (id, layer) = (st.take_id(), st.take_id());
        st.apply(
            &Record::CreateVolume {
                id,
                layer,
                parent: None,
                name: "v".into(),
                size_bytes: 1 << 20,
                block_bytes: 512,
                thick: false,
                replica_id: 77,
                io_seq: 3,
            },
            Mode::Live,
        )
        .unwrap();
        let p = st.alloc.alloc().unwrap();
        st.apply(
            &Record::Map {
                layer,
                chunk: 5,
                phys: p,
                io_seq: 9,
            },
            Mode::Live,
        )
        .unwrap();
        let (sid, nl) = (st.take_id(), st.take_id());
        st.apply(
            &Record::CreateSnapshot {
                volume: id,
                id: sid,
                new_layer: nl,
                name: "s".into(),
                io_seq: 9,
            },
            Mode::Live,
        )
        .unwrap();
        st.apply(
            &Record::Zero {
                layer: nl,
                chunk: 5,
                io_seq: 10,
            },
            Mode::Live,
        )
        .unwrap();
        st.apply(
            &Record::SetAttrs {
                volume: id,
                attrs: vec![1, 2],
            },
            Mode::Live,
        )
        .unwrap();
        st.apply(
            &Record::SetMembership {
                volume: id,
                membership: vec![3, 4, 5],
            },
            Mode::Live,
        )
        .unwrap();
        st
    }

    #[test]
    fn checkpoint_of_the_previous_layout_reads_with_an_empty_membership() {
        let mut st = State::new(4096, 32);
        let (id, layer) = (st.take_id(), st.take_id());
        let create = Record::CreateVolume {
            id,
            layer,
            parent: None,
            name: "v".into(),
            size_bytes: 1 << 20,
            block_bytes: 512,
            thick: false,
            replica_id: 77,
            io_seq: 3,
        };
        st.apply(&create, Mode::Live).unwrap();
        let mut bytes = encode(&st);
        // Without snapshots the volume record ends the checkpoint: its last
        // two bytes are the (empty) membership's length.
        assert_eq!(bytes[bytes.len() - 2..], [0, 0]);
        bytes.truncate(bytes.len() - 2);
        bytes[..8].copy_from_slice(&CHECKPOINT_MAGIC_V1);
        let back = decode(&bytes, 4096, 32).unwrap();
        assert_eq!(back.volumes, st.volumes);
        assert!(back.volumes[&id].membership.is_empty());
    }

    #[test]
    fn checkpoint_round_trips_the_state() {
        let st = sample();
        let bytes = encode(&st);
        assert!((bytes.len() as u64) <= encoded_len_bound(&st, 0, 0));
        let back = decode(&bytes, 4096, 32).unwrap();
        assert_eq!(encode(&back), bytes);
        assert_eq!(back.volumes, st.volumes);
        assert_eq!(back.snapshots, st.snapshots);
        assert_eq!(back.alloc.free_count(), st.alloc.free_count());
    }

    #[test]
    fn an_image_encodes_the_state_as_it_was_when_taken() {
        let mut st = sample();
        let before = encode(&st);
        let image = Image::of(&st);
        for l in st.layers.values_mut() {
            for c in 0..8 {
                l.map.remove(c);
            }
        }
        st.next_id += 5;
        assert_ne!(encode(&st), before, "the state changed");
        assert_eq!(image.encode(), before);
    }

    #[test]
    fn truncated_or_inconsistent_checkpoint_is_rejected() {
        let bytes = encode(&sample());
        for cut in (0..bytes.len()).step_by(7) {
            assert!(decode(&bytes[..cut], 4096, 32).is_err(), "cut at {cut}");
        }
        assert!(decode(&bytes, 8192, 32).is_err(), "chunk size mismatch");
        assert!(decode(&bytes, 4096, 0).is_err(), "chunk beyond the pool");
    }
}
