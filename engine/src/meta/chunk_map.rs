//! One layer's map: logical chunk index → (target, io_seq of the last write
//! into it), where the target is a physical chunk or "zeros" (a tombstone
//! that hides an ancestor's data after an unmap).
//!
//! A sparse two-level radix: an ordered map of leaves of [`LEAF_ENTRIES`]
//! consecutive chunks, each leaf two flat arrays. Dense regions cost 16
//! bytes per chunk (0.024 % of 64 KiB of data); iteration is in LBA order.
//! Invariant: `len` and `data_len` equal the counts of present entries and
//! of `Data` entries; a leaf with no entries is removed.
//!
//! Leaves are shared copy-on-write: [`ChunkMap::clone`] copies only the
//! ordered map of leaf pointers (one per 128 chunks), and a later change to
//! a leaf still shared with a clone copies that leaf first. A checkpoint
//! takes such a clone under the metadata lock and encodes it after
//! releasing it (`checkpoint::Image`), so writes never wait for the
//! encoding of a large map.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Chunks per leaf.
pub const LEAF_ENTRIES: usize = 128;
const LEAF_U64: u64 = LEAF_ENTRIES as u64;
/// Marks an absent entry in a leaf.
const EMPTY: u64 = u64::MAX;
/// Marks a zeros tombstone in a leaf.
const ZERO: u64 = u64::MAX - 1;
/// Physical chunk numbers must stay below this (the two markers above).
pub const MAX_PHYS: u64 = ZERO;

/// Where a mapped logical chunk's contents are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// In this physical chunk.
    Data(u64),
    /// All zeros (hides whatever an ancestor layer holds).
    Zero,
}

/// A present entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Contents.
    pub target: Target,
    /// io_seq of the last write into the chunk.
    pub io_seq: u64,
}

#[derive(Clone)]
struct Leaf {
    phys: [u64; LEAF_ENTRIES],
    seq: [u64; LEAF_ENTRIES],
    count: u16,
}

impl Leaf {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            phys: [EMPTY; LEAF_ENTRIES],
            seq: [0; LEAF_ENTRIES],
            count: 0,
        })
    }
}

fn decode(phys: u64, seq: u64) -> Option<Entry> {
    let target = match phys {
        EMPTY => return None,
        ZERO => Target::Zero,
        p => Target::Data(p),
    };
    Some(Entry {
        target,
        io_seq: seq,
    })
}

fn split(chunk: u64) -> (u64, usize) {
    // `chunk % LEAF_U64` < 128, so the cast cannot truncate.
    (chunk / LEAF_U64, (chunk % LEAF_U64) as usize)
}

/// A layer's chunk map. Cloning is cheap (leaves are shared until
/// changed: see the module doc).
#[derive(Default, Clone)]
pub struct ChunkMap {
    leaves: BTreeMap<u64, Arc<Leaf>>,
    len: u64,
    data_len: u64,
}

impl std::fmt::Debug for ChunkMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkMap")
            .field("len", &self.len)
            .field("data_len", &self.data_len)
            .finish()
    }
}

impl ChunkMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries present.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no entry is present.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries whose target is a physical chunk.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The entry of `chunk`, if any.
    pub fn get(&self, chunk: u64) -> Option<Entry> {
        let (leaf, slot) = split(chunk);
        let l = self.leaves.get(&leaf)?;
        decode(*l.phys.get(slot)?, *l.seq.get(slot)?)
    }

    /// Sets the entry of `chunk`, returning the previous one. A `Data`
    /// target must be below [`MAX_PHYS`] (the caller validates).
    pub fn insert(&mut self, chunk: u64, entry: Entry) -> Option<Entry> {
        let (leaf, slot) = split(chunk);
        let l = Arc::make_mut(self.leaves.entry(leaf).or_insert_with(Leaf::new));
        let (Some(p), Some(s)) = (l.phys.get_mut(slot), l.seq.get_mut(slot)) else {
            return None;
        };
        let old = decode(*p, *s);
        *p = match entry.target {
            Target::Data(phys) => phys.min(MAX_PHYS - 1),
            Target::Zero => ZERO,
        };
        *s = entry.io_seq;
        if old.is_none() {
            l.count = l.count.saturating_add(1);
            self.len = self.len.saturating_add(1);
        }
        if matches!(
            old,
            Some(Entry {
                target: Target::Data(_),
                ..
            })
        ) {
            self.data_len = self.data_len.saturating_sub(1);
        }
        if matches!(entry.target, Target::Data(_)) {
            self.data_len = self.data_len.saturating_add(1);
        }
        old
    }

    /// Removes the entry of `chunk`, returning it.
    pub fn remove(&mut self, chunk: u64) -> Option<Entry> {
        let (leaf, slot) = split(chunk);
        let l = self.leaves.get_mut(&leaf)?;
        if *l.phys.get(slot)? == EMPTY {
            // Nothing to remove: do not copy a leaf a clone shares.
            return None;
        }
        let l = Arc::make_mut(l);
        let p = l.phys.get_mut(slot)?;
        let old = decode(*p, *l.seq.get(slot)?)?;
        *p = EMPTY;
        l.count = l.count.saturating_sub(1);
        let now_empty = l.count == 0;
        self.len = self.len.saturating_sub(1);
        if matches!(old.target, Target::Data(_)) {
            self.data_len = self.data_len.saturating_sub(1);
        }
        if now_empty {
            self.leaves.remove(&leaf);
        }
        Some(old)
    }

    /// Entries with chunk index ≥ `start`, in chunk order.
    pub fn iter_from(&self, start: u64) -> impl Iterator<Item = (u64, Entry)> + '_ {
        let (first_leaf, _) = split(start);
        self.leaves
            .range(first_leaf..)
            .flat_map(|(&leaf, l)| {
                l.phys
                    .iter()
                    .zip(l.seq.iter())
                    .enumerate()
                    .filter_map(move |(i, (&p, &s))| {
                        let chunk = leaf.checked_mul(LEAF_U64)?.checked_add(i as u64)?;
                        decode(p, s).map(|e| (chunk, e))
                    })
            })
            .filter(move |(c, _)| *c >= start)
    }

    /// All entries in chunk order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.iter_from(0)
    }

    /// Heap bytes held (leaves with their reference counts, plus an
    /// estimate of the ordered map's nodes). A leaf shared with a clone
    /// counts in both.
    pub fn memory_bytes(&self) -> u64 {
        let per_leaf = std::mem::size_of::<Leaf>() as u64 + 2 * 8 + 3 * 8;
        (self.leaves.len() as u64).saturating_mul(per_leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;

    fn data(p: u64, s: u64) -> Entry {
        Entry {
            target: Target::Data(p),
            io_seq: s,
        }
    }

    #[test]
    fn insert_get_remove_keep_counts() {
        let mut m = ChunkMap::new();
        assert_eq!(m.insert(5, data(9, 1)), None);
        assert_eq!(
            m.insert(
                300,
                Entry {
                    target: Target::Zero,
                    io_seq: 2
                }
            ),
            None
        );
        assert_eq!((m.len(), m.data_len()), (2, 1));
        assert_eq!(m.get(5), Some(data(9, 1)));
        assert_eq!(m.insert(5, data(9, 3)), Some(data(9, 1)));
        assert_eq!(m.remove(5), Some(data(9, 3)));
        assert_eq!((m.len(), m.data_len()), (1, 0));
        assert_eq!(m.remove(300).map(|e| e.target), Some(Target::Zero));
        assert!(m.is_empty());
        assert_eq!(m.memory_bytes(), 0, "empty leaves are dropped");
    }

    #[test]
    fn a_clone_shares_leaves_until_one_side_changes_them() {
        let mut m = ChunkMap::new();
        for c in 0..1024 {
            m.insert(c, data(c, 1));
        }
        let image = m.clone();
        let shared = |a: &ChunkMap, b: &ChunkMap| {
            a.leaves
                .iter()
                .filter(|(k, l)| b.leaves.get(*k).is_some_and(|o| Arc::ptr_eq(l, o)))
                .count()
        };
        assert_eq!(shared(&m, &image), 8, "a clone copies no leaf");
        m.insert(5, data(7, 2));
        assert_eq!(m.remove(2000), None);
        assert_eq!(shared(&m, &image), 7, "only the changed leaf is copied");
        assert_eq!(image.get(5), Some(data(5, 1)));
        assert_eq!(m.get(5), Some(data(7, 2)));
    }

    proptest! {
        #[test]
        fn behaves_like_an_ordered_map(ops in prop::collection::vec((0u64..1000, 0u64..4, 0u64..100), 0..200), start in 0u64..1000) {
            let mut m = ChunkMap::new();
            let mut model: Model<u64, Entry> = Model::new();
            for (chunk, op, v) in ops {
                match op {
                    0 => { prop_assert_eq!(m.remove(chunk), model.remove(&chunk)); }
                    1 => {
                        let e = Entry { target: Target::Zero, io_seq: v };
                        prop_assert_eq!(m.insert(chunk, e), model.insert(chunk, e));
                    }
                    _ => { prop_assert_eq!(m.insert(chunk, data(v, v)), model.insert(chunk, data(v, v))); }
                }
            }
            prop_assert_eq!(m.len(), model.len() as u64);
            let data_len = model.values().filter(|e| matches!(e.target, Target::Data(_))).count() as u64;
            prop_assert_eq!(m.data_len(), data_len);
            let got: Vec<_> = m.iter_from(start).collect();
            let want: Vec<_> = model.range(start..).map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn a_clone_keeps_its_entries_while_the_original_changes(
            before in prop::collection::vec((0u64..600, 0u64..3, 1u64..100), 0..150),
            after in prop::collection::vec((0u64..600, 0u64..3, 1u64..100), 0..150),
        ) {
            let apply = |m: &mut ChunkMap, model: &mut Model<u64, Entry>, ops: &[(u64, u64, u64)]| {
                for &(chunk, op, v) in ops {
                    if op == 0 {
                        m.remove(chunk);
                        model.remove(&chunk);
                    } else {
                        m.insert(chunk, data(v, v));
                        model.insert(chunk, data(v, v));
                    }
                }
            };
            let mut m = ChunkMap::new();
            let mut model = Model::new();
            apply(&mut m, &mut model, &before);
            let image = m.clone();
            let at_clone = model.clone();
            apply(&mut m, &mut model, &after);
            let kept: Vec<_> = image.iter().collect();
            prop_assert_eq!(kept, at_clone.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(m.iter().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
        }
    }
}
