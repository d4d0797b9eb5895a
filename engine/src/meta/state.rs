//! The pool's metadata as a pure state machine (sans IO): layers (chunk
//! maps chained by parent), volumes, snapshots and the free-chunk
//! allocator. [`State::apply`] validates and applies one [`Record`] and
//! returns the physical chunks it freed; the live path and journal replay
//! both go through it.
//!
//! Model (overlay chain, see FORMAT.md "Why layers"): a volume writes into
//! its own *live* layer; a snapshot freezes the live layer and gives the
//! volume a new empty one above it (O(1) whatever the volume's size); a
//! clone is a new volume whose live layer sits on a snapshot's layer. A
//! snapshot rebuilt from a peer gets a new layer *inserted* under a layer
//! of the volume's chain (`Record::InsertSnapshot`, FORMAT.md "Rebuilt
//! snapshots"). A read walks live → parent → ... and the first entry wins.
//!
//! Invariants (checked by [`State::audit`]):
//! - every physical chunk is owned by at most one layer entry, and is marked
//!   used in the allocator; used chunks not owned are exactly the ones being
//!   written or freed by a commit not yet durable;
//! - every layer is named (a volume's live layer or a snapshot's layer) or
//!   has ≥ 2 children: an unnamed layer with one child is merged into it,
//!   with none it is dropped, freeing its chunks;
//! - `children` counts equal the layers naming each layer as parent.

use std::collections::{BTreeMap, BTreeSet};

use super::alloc::Allocator;
use super::chunk_map::{ChunkMap, Entry, Target, MAX_PHYS};
use super::record::{LayerId, Record, SnapshotId, VolumeId};
use crate::limits::{
    MAX_ATTRS_BYTES, MAX_CHAIN_DEPTH, MAX_LAYERS, MAX_MEMBERSHIP_BYTES, MAX_NAME_BYTES,
    MAX_VOLUME_BYTES,
};

/// Why a record could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Names an id that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Creates something that exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A value out of bounds.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// A map of logical chunks, chained to its parent.
#[derive(Debug)]
pub struct Layer {
    /// Layer read through for chunks this one lacks.
    pub parent: Option<LayerId>,
    /// Entries.
    pub map: ChunkMap,
    /// Layers whose parent is this one.
    pub children: u32,
    /// True when a volume (live) or a snapshot names this layer.
    pub named: bool,
}

/// A volume as the metadata holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMeta {
    /// Id.
    pub id: VolumeId,
    /// Unique name.
    pub name: String,
    /// Layer its writes go to.
    pub live: LayerId,
    /// Logical size.
    pub size_bytes: u64,
    /// Block size.
    pub block_bytes: u32,
    /// Thick (reserved) or thin.
    pub thick: bool,
    /// Stable random replica id.
    pub replica_id: u128,
    /// Highest target epoch accepted.
    pub epoch: u64,
    /// Opaque attributes.
    pub attrs: Vec<u8>,
    /// Opaque membership record (empty: none yet).
    pub membership: Vec<u8>,
    /// io_seq at creation.
    pub created_io_seq: u64,
    /// Highest io_seq written.
    pub max_io_seq: u64,
}

/// A snapshot as the metadata holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Id.
    pub id: SnapshotId,
    /// Name, unique within its volume.
    pub name: String,
    /// Volume it was taken of.
    pub volume: VolumeId,
    /// Its frozen layer.
    pub layer: LayerId,
    /// io_seq it was taken at.
    pub io_seq: u64,
    /// Volume size when taken.
    pub size_bytes: u64,
}

/// Whether `apply` runs on the live path or replays the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A `Map` names a chunk the caller allocated (marked used).
    Live,
    /// A `Map` names a chunk that must be free; it becomes used.
    Replay,
}

/// The whole metadata of a pool.
#[derive(Debug)]
pub struct State {
    /// Chunk size of the pool.
    pub chunk_bytes: u32,
    /// All layers.
    pub layers: BTreeMap<LayerId, Layer>,
    /// Volumes by id.
    pub volumes: BTreeMap<VolumeId, VolumeMeta>,
    /// Snapshots by id.
    pub snapshots: BTreeMap<SnapshotId, SnapshotMeta>,
    /// Next unused id (ids are never reused; 0 means "none").
    pub next_id: u64,
    /// Free-chunk allocator.
    pub alloc: Allocator,
    /// Σ entries over all layers (bounds the checkpoint size).
    pub entries_total: u64,
}

/// Result of [`State::audit`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Physical chunks owned by layer entries.
    pub owned: u64,
    /// Chunks owned by two entries.
    pub owned_twice: Vec<u64>,
    /// Chunks owned but marked free in the allocator.
    pub owned_but_free: Vec<u64>,
    /// Chunks marked used but owned by nobody.
    pub used_not_owned: Vec<u64>,
    /// Structural problems (dangling parents, wrong child counts...).
    pub problems: Vec<String>,
}

fn nf(what: impl Into<String>) -> StateError {
    StateError::NotFound(what.into())
}

fn inv(what: impl Into<String>) -> StateError {
    StateError::Invalid(what.into())
}

impl State {
    /// An empty pool's metadata over `total_chunks` physical chunks.
    pub fn new(chunk_bytes: u32, total_chunks: u64) -> Self {
        Self {
            chunk_bytes,
            layers: BTreeMap::new(),
            volumes: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            next_id: 1,
            alloc: Allocator::new(total_chunks),
            entries_total: 0,
        }
    }

    /// Logical chunks of a volume of `size_bytes`.
    pub fn chunks_of(&self, size_bytes: u64) -> u64 {
        size_bytes.div_ceil(u64::from(self.chunk_bytes.max(1)))
    }

    /// Takes a fresh id.
    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    fn bump_ids(&mut self, ids: &[u64]) {
        for &id in ids {
            if id >= self.next_id {
                self.next_id = id.saturating_add(1);
            }
        }
    }

    /// Volume by name.
    pub fn volume_by_name(&self, name: &str) -> Option<&VolumeMeta> {
        self.volumes.values().find(|v| v.name == name)
    }

    /// Snapshot of `volume` by name.
    pub fn snapshot_by_name(&self, volume: VolumeId, name: &str) -> Option<&SnapshotMeta> {
        self.snapshots
            .values()
            .find(|s| s.volume == volume && s.name == name)
    }

    /// Layers from `layer` up to the root, `layer` first.
    pub fn chain(&self, layer: LayerId) -> Vec<LayerId> {
        let mut out = Vec::new();
        let mut cur = Some(layer);
        while let Some(id) = cur {
            if out.len() > MAX_CHAIN_DEPTH + 1 {
                break;
            }
            let Some(l) = self.layers.get(&id) else { break };
            out.push(id);
            cur = l.parent;
        }
        out
    }

    /// The visible entry of `chunk` seen from `layer`: the first layer of
    /// the chain holding one, with the layer it was found in.
    pub fn resolve(&self, layer: LayerId, chunk: u64) -> Option<(LayerId, Entry)> {
        let mut cur = Some(layer);
        let mut depth = 0usize;
        while let Some(id) = cur {
            let l = self.layers.get(&id)?;
            if let Some(e) = l.map.get(chunk) {
                return Some((id, e));
            }
            depth += 1;
            if depth > MAX_CHAIN_DEPTH + 1 {
                return None;
            }
            cur = l.parent;
        }
        None
    }

    /// Chunks a thick volume still holds in reserve.
    pub fn reserved_chunks(&self) -> u64 {
        self.volumes
            .values()
            .filter(|v| v.thick)
            .map(|v| {
                let live = self.layers.get(&v.live).map_or(0, |l| l.map.data_len());
                self.chunks_of(v.size_bytes).saturating_sub(live)
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Free chunks a thin allocation may take (free minus reservations).
    pub fn available_chunks(&self) -> u64 {
        self.alloc
            .free_count()
            .saturating_sub(self.reserved_chunks())
    }

    /// Allocates a chunk for a write into `volume`'s live layer: a thick
    /// volume draws on its reservation, a thin one on what is unreserved.
    pub fn alloc_for(&mut self, volume: VolumeId) -> Option<u64> {
        let thick = self.volumes.get(&volume).is_some_and(|v| v.thick);
        if !thick && self.available_chunks() == 0 {
            return None;
        }
        self.alloc.alloc()
    }

    fn check_name(name: &str) -> Result<(), StateError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(inv(format!("name of {} bytes", name.len())));
        }
        Ok(())
    }

    /// A grow (`grow`) or the undo of one: the new size is checked against
    /// the block size and may only go the one way.
    fn set_size(&mut self, id: VolumeId, size_bytes: u64, grow: bool) -> Result<(), StateError> {
        let block = self
            .volumes
            .get(&id)
            .ok_or_else(|| nf(format!("volume {id}")))?
            .block_bytes;
        self.check_size(size_bytes, block)?;
        let v = self
            .volumes
            .get_mut(&id)
            .ok_or_else(|| nf(format!("volume {id}")))?;
        if grow && size_bytes < v.size_bytes {
            return Err(inv("volumes only grow"));
        }
        if !grow && size_bytes > v.size_bytes {
            return Err(inv("a shrink cannot grow a volume"));
        }
        v.size_bytes = size_bytes;
        Ok(())
    }

    fn check_size(&self, size_bytes: u64, block_bytes: u32) -> Result<(), StateError> {
        if block_bytes != 512 && block_bytes != 4096 {
            return Err(inv(format!("block size {block_bytes}")));
        }
        if size_bytes == 0
            || size_bytes > MAX_VOLUME_BYTES
            || !size_bytes.is_multiple_of(u64::from(block_bytes))
        {
            return Err(inv(format!(
                "size {size_bytes} (block {block_bytes}, max {MAX_VOLUME_BYTES})"
            )));
        }
        Ok(())
    }

    fn check_chunk(&self, chunk: u64) -> Result<(), StateError> {
        if chunk >= self.chunks_of(MAX_VOLUME_BYTES) {
            return Err(inv(format!("logical chunk {chunk}")));
        }
        Ok(())
    }

    fn add_layer(&mut self, id: LayerId, parent: Option<LayerId>) -> Result<(), StateError> {
        if self.layers.contains_key(&id) || id == 0 {
            return Err(StateError::AlreadyExists(format!("layer {id}")));
        }
        if self.layers.len() >= MAX_LAYERS {
            return Err(inv(format!("more than {MAX_LAYERS} layers")));
        }
        if let Some(p) = parent {
            if self.chain(p).len() >= MAX_CHAIN_DEPTH {
                return Err(inv(format!("chain deeper than {MAX_CHAIN_DEPTH}")));
            }
            let pl = self
                .layers
                .get_mut(&p)
                .ok_or_else(|| nf(format!("parent layer {p}")))?;
            pl.children = pl.children.saturating_add(1);
        }
        self.layers.insert(
            id,
            Layer {
                parent,
                map: ChunkMap::new(),
                children: 0,
                named: true,
            },
        );
        self.bump_ids(&[id]);
        Ok(())
    }

    /// Validates and applies `rec`; returns the physical chunks it freed.
    pub fn apply(&mut self, rec: &Record, mode: Mode) -> Result<Vec<u64>, StateError> {
        let mut freed = Vec::new();
        match rec {
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
                Self::check_name(name)?;
                self.check_size(*size_bytes, *block_bytes)?;
                if self.volumes.contains_key(id) || self.volume_by_name(name).is_some() {
                    return Err(StateError::AlreadyExists(format!("volume {name}")));
                }
                if let Some(p) = parent {
                    let snap = self.snapshots.values().find(|s| s.layer == *p);
                    let Some(snap) = snap else {
                        return Err(nf(format!("snapshot layer {p}")));
                    };
                    if snap.size_bytes > *size_bytes {
                        return Err(inv("clone smaller than its snapshot"));
                    }
                }
                self.add_layer(*layer, *parent)?;
                self.bump_ids(&[*id]);
                self.volumes.insert(
                    *id,
                    VolumeMeta {
                        id: *id,
                        name: name.clone(),
                        live: *layer,
                        size_bytes: *size_bytes,
                        block_bytes: *block_bytes,
                        thick: *thick,
                        replica_id: *replica_id,
                        epoch: 0,
                        attrs: Vec::new(),
                        membership: Vec::new(),
                        created_io_seq: *io_seq,
                        max_io_seq: *io_seq,
                    },
                );
            }
            Record::DeleteVolume { id } => {
                let v = self
                    .volumes
                    .remove(id)
                    .ok_or_else(|| nf(format!("volume {id}")))?;
                let snaps: Vec<SnapshotMeta> = self
                    .snapshots
                    .values()
                    .filter(|s| s.volume == *id)
                    .cloned()
                    .collect();
                // Newest first: each collapse then merges into a layer that
                // is itself about to go, or frees outright.
                let mut layers = vec![v.live];
                for s in snaps.iter().rev() {
                    self.snapshots.remove(&s.id);
                    layers.push(s.layer);
                }
                for l in &layers {
                    if let Some(layer) = self.layers.get_mut(l) {
                        layer.named = false;
                    }
                }
                for l in layers {
                    self.collapse(l, &mut freed);
                }
            }
            Record::GrowVolume { id, size_bytes } => self.set_size(*id, *size_bytes, true)?,
            Record::ShrinkVolume { id, size_bytes } => self.set_size(*id, *size_bytes, false)?,
            Record::CreateSnapshot {
                volume,
                id,
                new_layer,
                name,
                io_seq,
            } => {
                Self::check_name(name)?;
                let v = self
                    .volumes
                    .get(volume)
                    .ok_or_else(|| nf(format!("volume {volume}")))?
                    .clone();
                if self.snapshots.contains_key(id) || self.snapshot_by_name(*volume, name).is_some()
                {
                    return Err(StateError::AlreadyExists(format!("snapshot {name}")));
                }
                self.add_layer(*new_layer, Some(v.live))?;
                self.bump_ids(&[*id]);
                if let Some(vm) = self.volumes.get_mut(volume) {
                    vm.live = *new_layer;
                }
                self.snapshots.insert(
                    *id,
                    SnapshotMeta {
                        id: *id,
                        name: name.clone(),
                        volume: *volume,
                        layer: v.live,
                        io_seq: *io_seq,
                        size_bytes: v.size_bytes,
                    },
                );
            }
            Record::InsertSnapshot {
                volume,
                id,
                layer,
                below,
                name,
                io_seq,
                size_bytes,
            } => self.insert_snapshot(
                SnapshotMeta {
                    id: *id,
                    name: name.clone(),
                    volume: *volume,
                    layer: *layer,
                    io_seq: *io_seq,
                    size_bytes: *size_bytes,
                },
                *below,
            )?,
            Record::DeleteSnapshot { id } => {
                let s = self
                    .snapshots
                    .remove(id)
                    .ok_or_else(|| nf(format!("snapshot {id}")))?;
                if let Some(l) = self.layers.get_mut(&s.layer) {
                    l.named = false;
                }
                self.collapse(s.layer, &mut freed);
            }
            Record::SetEpoch { volume, epoch } => {
                let v = self
                    .volumes
                    .get_mut(volume)
                    .ok_or_else(|| nf(format!("volume {volume}")))?;
                v.epoch = v.epoch.max(*epoch);
            }
            Record::SetAttrs { volume, attrs } => {
                if attrs.len() > MAX_ATTRS_BYTES {
                    return Err(inv(format!("attrs of {} bytes", attrs.len())));
                }
                let v = self
                    .volumes
                    .get_mut(volume)
                    .ok_or_else(|| nf(format!("volume {volume}")))?;
                v.attrs.clone_from(attrs);
            }
            Record::SetMembership { volume, membership } => {
                if membership.len() > MAX_MEMBERSHIP_BYTES {
                    return Err(inv(format!("membership of {} bytes", membership.len())));
                }
                let v = self
                    .volumes
                    .get_mut(volume)
                    .ok_or_else(|| nf(format!("volume {volume}")))?;
                v.membership.clone_from(membership);
            }
            Record::Map {
                layer,
                chunk,
                phys,
                io_seq,
            } => {
                self.check_chunk(*chunk)?;
                if *phys >= self.alloc.total() || *phys >= MAX_PHYS {
                    return Err(inv(format!("physical chunk {phys}")));
                }
                let l = self
                    .layers
                    .get(layer)
                    .ok_or_else(|| nf(format!("layer {layer}")))?;
                let old = l.map.get(*chunk);
                let same = old.is_some_and(|e| e.target == Target::Data(*phys));
                if !same {
                    match mode {
                        Mode::Live if !self.alloc.is_used(*phys) => {
                            return Err(inv(format!("chunk {phys} was not allocated")));
                        }
                        Mode::Replay if !self.alloc.mark_used(*phys) => {
                            return Err(inv(format!("chunk {phys} owned twice")));
                        }
                        _ => {}
                    }
                }
                self.set_entry(
                    *layer,
                    *chunk,
                    Some(Entry {
                        target: Target::Data(*phys),
                        io_seq: *io_seq,
                    }),
                    &mut freed,
                );
            }
            Record::Zero {
                layer,
                chunk,
                io_seq,
            } => {
                self.check_chunk(*chunk)?;
                if !self.layers.contains_key(layer) {
                    return Err(nf(format!("layer {layer}")));
                }
                let e = Entry {
                    target: Target::Zero,
                    io_seq: *io_seq,
                };
                self.set_entry(*layer, *chunk, Some(e), &mut freed);
            }
            Record::Remove { layer, chunk } => {
                if !self.layers.contains_key(layer) {
                    return Err(nf(format!("layer {layer}")));
                }
                self.set_entry(*layer, *chunk, None, &mut freed);
            }
            Record::VolumeSeq { volume, io_seq } => {
                let v = self
                    .volumes
                    .get_mut(volume)
                    .ok_or_else(|| nf(format!("volume {volume}")))?;
                // The last record wins: a completion watermark may go down.
                v.max_io_seq = *io_seq;
            }
        }
        Ok(freed)
    }

    /// Applies `InsertSnapshot`: `snap.layer` becomes the parent of
    /// `below`, which must be the volume's live layer or one of its
    /// snapshots' layers (the chain above keeps its entries; see FORMAT.md
    /// "Rebuilt snapshots").
    fn insert_snapshot(&mut self, snap: SnapshotMeta, below: LayerId) -> Result<(), StateError> {
        Self::check_name(&snap.name)?;
        let v = self
            .volumes
            .get(&snap.volume)
            .ok_or_else(|| nf(format!("volume {}", snap.volume)))?;
        // It may be larger than the live volume (FORMAT.md "Rebuilt
        // snapshots": a peer that took a grow that failed short of quorum).
        if snap.size_bytes == 0 || !snap.size_bytes.is_multiple_of(u64::from(v.block_bytes)) {
            return Err(inv(format!("rebuilt snapshot size {}", snap.size_bytes)));
        }
        let owned = v.live == below
            || self
                .snapshots
                .values()
                .any(|s| s.volume == snap.volume && s.layer == below);
        if !owned {
            return Err(inv(format!(
                "layer {below} is not a layer of volume {}",
                snap.volume
            )));
        }
        if self.snapshots.contains_key(&snap.id)
            || self.snapshot_by_name(snap.volume, &snap.name).is_some()
        {
            return Err(StateError::AlreadyExists(format!("snapshot {}", snap.name)));
        }
        let parent = self
            .layers
            .get(&below)
            .ok_or_else(|| nf(format!("layer {below}")))?
            .parent;
        // Every chain through `below` (the volume's, its clones') gets one
        // layer deeper.
        let too_deep = self.layers.keys().any(|l| {
            let chain = self.chain(*l);
            chain.contains(&below) && chain.len() >= MAX_CHAIN_DEPTH
        });
        if too_deep {
            return Err(inv(format!("chain deeper than {MAX_CHAIN_DEPTH}")));
        }
        self.add_layer(snap.layer, parent)?;
        // `below` leaves its old parent (which keeps the same count: it got
        // the new layer as a child instead) and hangs on the new layer.
        if let Some(p) = parent.and_then(|p| self.layers.get_mut(&p)) {
            p.children = p.children.saturating_sub(1);
        }
        if let Some(l) = self.layers.get_mut(&below) {
            l.parent = Some(snap.layer);
        }
        if let Some(l) = self.layers.get_mut(&snap.layer) {
            l.children = 1;
        }
        self.bump_ids(&[snap.id]);
        self.snapshots.insert(snap.id, snap);
        Ok(())
    }

    /// Sets (or removes) one entry, freeing a physical chunk it replaces.
    fn set_entry(&mut self, layer: LayerId, chunk: u64, e: Option<Entry>, freed: &mut Vec<u64>) {
        let Some(l) = self.layers.get_mut(&layer) else {
            return;
        };
        let before = l.map.len();
        let old = match e {
            Some(e) => l.map.insert(chunk, e),
            None => l.map.remove(chunk),
        };
        let after = l.map.len();
        self.entries_total = self
            .entries_total
            .saturating_add(after)
            .saturating_sub(before);
        if let Some(Entry {
            target: Target::Data(old_phys),
            ..
        }) = old
        {
            if e.map(|e| e.target) != Some(Target::Data(old_phys)) {
                freed.push(old_phys);
            }
        }
    }

    /// Drops or merges unnamed layers from `start` downwards (see module
    /// invariants), appending the physical chunks no one references any
    /// more to `freed`.
    fn collapse(&mut self, start: LayerId, freed: &mut Vec<u64>) {
        let mut cur = Some(start);
        while let Some(id) = cur {
            let Some(l) = self.layers.get(&id) else { break };
            if l.named {
                break;
            }
            match l.children {
                0 => {
                    let Some(l) = self.layers.remove(&id) else {
                        break;
                    };
                    self.entries_total = self.entries_total.saturating_sub(l.map.len());
                    for (_, e) in l.map.iter() {
                        if let Target::Data(p) = e.target {
                            freed.push(p);
                        }
                    }
                    if let Some(p) = l.parent.and_then(|p| self.layers.get_mut(&p)) {
                        p.children = p.children.saturating_sub(1);
                    }
                    cur = l.parent;
                }
                1 => {
                    let child = self
                        .layers
                        .iter()
                        .find(|(_, c)| c.parent == Some(id))
                        .map(|(cid, _)| *cid);
                    let Some(child) = child else { break };
                    let Some(l) = self.layers.remove(&id) else {
                        break;
                    };
                    self.entries_total = self.entries_total.saturating_sub(l.map.len());
                    let Some(c) = self.layers.get_mut(&child) else {
                        break;
                    };
                    c.parent = l.parent;
                    let before = c.map.len();
                    for (chunk, e) in l.map.iter() {
                        if c.map.get(chunk).is_some() {
                            if let Target::Data(p) = e.target {
                                freed.push(p);
                            }
                        } else {
                            c.map.insert(chunk, e);
                        }
                    }
                    let added = c.map.len().saturating_sub(before);
                    self.entries_total = self.entries_total.saturating_add(added);
                    break;
                }
                _ => break,
            }
        }
    }

    /// Checks every invariant of the module doc against the allocator;
    /// `in_flight` lists chunks legitimately used but not owned.
    pub fn audit(&self, in_flight: &BTreeSet<u64>) -> Audit {
        let mut a = Audit::default();
        let mut owners: BTreeSet<u64> = BTreeSet::new();
        let mut children: BTreeMap<LayerId, u32> = BTreeMap::new();
        for (id, l) in &self.layers {
            if let Some(p) = l.parent {
                if !self.layers.contains_key(&p) {
                    a.problems
                        .push(format!("layer {id} has missing parent {p}"));
                }
                *children.entry(p).or_default() += 1;
            }
            for (_, e) in l.map.iter() {
                if let Target::Data(p) = e.target {
                    if !owners.insert(p) {
                        a.owned_twice.push(p);
                    }
                    if !self.alloc.is_used(p) {
                        a.owned_but_free.push(p);
                    }
                }
            }
        }
        for (id, l) in &self.layers {
            let want = children.get(id).copied().unwrap_or(0);
            if l.children != want {
                a.problems
                    .push(format!("layer {id} children {} != {want}", l.children));
            }
            let named = self.volumes.values().any(|v| v.live == *id)
                || self.snapshots.values().any(|s| s.layer == *id);
            if named != l.named {
                a.problems.push(format!("layer {id} named flag wrong"));
            }
            if !named && l.children < 2 {
                a.problems
                    .push(format!("unnamed layer {id} with {} children", l.children));
            }
        }
        for p in 0..self.alloc.total() {
            if self.alloc.is_used(p) && !owners.contains(&p) && !in_flight.contains(&p) {
                a.used_not_owned.push(p);
            }
        }
        let total: u64 = self.layers.values().map(|l| l.map.len()).sum();
        if total != self.entries_total {
            a.problems
                .push(format!("entries_total {} != {total}", self.entries_total));
        }
        a.owned = owners.len() as u64;
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(
        st: &mut State,
        name: &str,
        parent: Option<LayerId>,
        size: u64,
    ) -> (VolumeId, LayerId) {
        let id = st.take_id();
        let layer = st.take_id();
        st.apply(
            &Record::CreateVolume {
                id,
                layer,
                parent,
                name: name.into(),
                size_bytes: size,
                block_bytes: 512,
                thick: false,
                replica_id: 1,
                io_seq: 0,
            },
            Mode::Live,
        )
        .unwrap();
        (id, layer)
    }

    fn map(st: &mut State, layer: LayerId, chunk: u64) -> u64 {
        let p = st.alloc.alloc().unwrap();
        st.apply(
            &Record::Map {
                layer,
                chunk,
                phys: p,
                io_seq: 1,
            },
            Mode::Live,
        )
        .unwrap();
        p
    }

    fn snap(st: &mut State, volume: VolumeId, name: &str) -> SnapshotId {
        let id = st.take_id();
        let new_layer = st.take_id();
        st.apply(
            &Record::CreateSnapshot {
                volume,
                id,
                new_layer,
                name: name.into(),
                io_seq: 0,
            },
            Mode::Live,
        )
        .unwrap();
        id
    }

    fn clean(st: &State) {
        let a = st.audit(&BTreeSet::new());
        assert!(
            a.owned_twice.is_empty()
                && a.owned_but_free.is_empty()
                && a.used_not_owned.is_empty()
                && a.problems.is_empty(),
            "{a:?}"
        );
    }

    fn release(st: &mut State, freed: Vec<u64>) {
        for p in freed {
            assert!(st.alloc.release(p));
        }
    }

    #[test]
    fn snapshot_then_delete_merges_into_the_volume_and_frees_overridden_chunks() {
        let mut st = State::new(4096, 64);
        let (v, l0) = create(&mut st, "v", None, 1 << 20);
        let a = map(&mut st, l0, 0);
        let _b = map(&mut st, l0, 1);
        let s = snap(&mut st, v, "s");
        let live = st.volumes[&v].live;
        assert_eq!(st.resolve(live, 0).map(|(l, _)| l), Some(l0));
        let c = map(&mut st, live, 0); // COW of chunk 0
        assert_ne!(a, c);
        let freed = st
            .apply(&Record::DeleteSnapshot { id: s }, Mode::Live)
            .unwrap();
        assert_eq!(freed, vec![a], "only the overridden chunk is freed");
        release(&mut st, freed);
        assert_eq!(st.layers.len(), 1);
        assert_eq!(st.layers[&live].map.data_len(), 2);
        clean(&st);
    }

    fn insert(
        st: &mut State,
        volume: VolumeId,
        below: LayerId,
        name: &str,
    ) -> Result<LayerId, StateError> {
        let id = st.take_id();
        let layer = st.take_id();
        st.apply(
            &Record::InsertSnapshot {
                volume,
                id,
                layer,
                below,
                name: name.into(),
                io_seq: 5,
                size_bytes: 1 << 20,
            },
            Mode::Live,
        )?;
        Ok(layer)
    }

    #[test]
    fn an_inserted_snapshot_sits_under_the_layer_above_which_keeps_its_entries() {
        let mut st = State::new(4096, 64);
        let (v, l0) = create(&mut st, "v", None, 1 << 20);
        let _old = snap(&mut st, v, "old");
        let live = st.volumes[&v].live;
        let own = map(&mut st, live, 0);
        let x = insert(&mut st, v, live, "rebuilt").unwrap();
        assert_eq!(st.chain(live), vec![live, x, l0]);
        let filled = map(&mut st, x, 1);
        // The live layer keeps its own chunk and reads the new one through.
        assert_eq!(
            st.resolve(live, 0).map(|(_, e)| e.target),
            Some(Target::Data(own))
        );
        assert_eq!(
            st.resolve(live, 1).map(|(_, e)| e.target),
            Some(Target::Data(filled))
        );
        assert_eq!(st.snapshot_by_name(v, "rebuilt").map(|s| s.layer), Some(x));
        clean(&st);
        // Under a snapshot layer too; and deleting it merges it back.
        let y = insert(&mut st, v, x, "older").unwrap();
        assert_eq!(st.chain(live), vec![live, x, y, l0]);
        clean(&st);
        let id = st.snapshot_by_name(v, "older").map(|s| s.id).unwrap();
        let freed = st
            .apply(&Record::DeleteSnapshot { id }, Mode::Live)
            .unwrap();
        release(&mut st, freed);
        assert_eq!(st.chain(live), vec![live, x, l0]);
        clean(&st);
    }

    #[test]
    fn inserting_a_snapshot_under_another_volume_or_twice_is_refused() {
        let mut st = State::new(4096, 64);
        let (v, _) = create(&mut st, "v", None, 1 << 20);
        let (_, other) = create(&mut st, "w", None, 1 << 20);
        assert!(insert(&mut st, v, other, "x").is_err());
        let live = st.volumes[&v].live;
        insert(&mut st, v, live, "x").unwrap();
        assert!(matches!(
            insert(&mut st, v, live, "x"),
            Err(StateError::AlreadyExists(_))
        ));
        clean(&st);
    }

    #[test]
    fn deleting_a_volume_keeps_the_snapshot_its_clone_reads_through() {
        let mut st = State::new(4096, 64);
        let (v, l0) = create(&mut st, "v", None, 1 << 20);
        let a = map(&mut st, l0, 0);
        let b = map(&mut st, l0, 1);
        let s = snap(&mut st, v, "s");
        let live = st.volumes[&v].live;
        let d = map(&mut st, live, 1);
        let (c, clive) = create(&mut st, "c", Some(l0), 1 << 20);
        let freed = st
            .apply(&Record::DeleteVolume { id: v }, Mode::Live)
            .unwrap();
        assert_eq!(
            freed,
            vec![d],
            "the volume's own chunk goes; the snapshot's stay"
        );
        release(&mut st, freed);
        assert!(!st.snapshots.contains_key(&s));
        assert_eq!(
            st.resolve(clive, 0).map(|(_, e)| e.target),
            Some(Target::Data(a))
        );
        assert_eq!(
            st.resolve(clive, 1).map(|(_, e)| e.target),
            Some(Target::Data(b))
        );
        clean(&st);
        let freed = st
            .apply(&Record::DeleteVolume { id: c }, Mode::Live)
            .unwrap();
        let mut freed_sorted = freed.clone();
        freed_sorted.sort_unstable();
        assert_eq!(freed_sorted, vec![a, b]);
        release(&mut st, freed);
        assert!(st.layers.is_empty());
        assert_eq!(st.alloc.free_count(), 64);
        clean(&st);
    }

    #[test]
    fn replay_refuses_a_chunk_owned_twice() {
        let mut st = State::new(4096, 8);
        let (_, l0) = create(&mut st, "v", None, 1 << 20);
        let rec = |chunk| Record::Map {
            layer: l0,
            chunk,
            phys: 3,
            io_seq: 1,
        };
        st.apply(&rec(0), Mode::Replay).unwrap();
        assert!(st.apply(&rec(1), Mode::Replay).is_err());
    }

    #[test]
    fn thick_volume_reserves_its_size() {
        let mut st = State::new(4096, 10);
        let id = st.take_id();
        let layer = st.take_id();
        st.apply(
            &Record::CreateVolume {
                id,
                layer,
                parent: None,
                name: "t".into(),
                size_bytes: 8 * 4096,
                block_bytes: 4096,
                thick: true,
                replica_id: 1,
                io_seq: 0,
            },
            Mode::Live,
        )
        .unwrap();
        assert_eq!(st.available_chunks(), 2);
        let (thin, _) = create(&mut st, "thin", None, 1 << 20);
        assert!(st.alloc_for(thin).is_some());
        assert!(st.alloc_for(thin).is_some());
        assert!(
            st.alloc_for(thin).is_none(),
            "thin may not eat the reservation"
        );
        assert!(st.alloc_for(id).is_some(), "thick draws on its reservation");
    }
}
