//! In-place overwrites, coalesced (FORMAT.md "Coalesced overwrites").
//!
//! A write into a chunk that a layer already owns as data changes no
//! mapping, only the io_seq of the chunk's entry. Instead of one `Map`
//! record per such write, the state takes the new io_seq at once (once the
//! data write completed) and [`Coalesced`] remembers the chunk; a commit
//! then journals ONE `Map` record per remembered chunk, carrying the io_seq
//! the entry holds at that moment: the latest completed write's.
//!
//! Invariants:
//! - every remembered chunk's entry is `Data(phys)` with the remembered
//!   `phys` (the chunk lock and the structure lock keep it so until the
//!   record is taken; a record is taken before any other record that
//!   changes the chunk's entry or the layers, so the journal replays to the
//!   same state as one record per overwrite would);
//! - the io_seq a taken record carries is that of a write whose data was
//!   written before the record was taken, so the commit's fdatasync, which
//!   follows, makes that data durable before the record (commit rule 2).
//!
//! Bound: one entry per chunk a layer owns (at most the pool's chunks),
//! emptied by every commit (the timer commits every second).
//!
//! Sans IO, like the rest of `meta`.

use std::collections::BTreeMap;

use super::chunk_map::{Entry, Target};
use super::record::{LayerId, Record, VolumeId};
use super::state::State;

/// One in-place overwrite whose data write completed, as the IO path hands
/// it to the metadata (`volume::io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overwrite {
    /// The volume written (its live layer is `layer`).
    pub(crate) volume: VolumeId,
    /// The layer owning the chunk.
    pub(crate) layer: LayerId,
    /// Logical chunk.
    pub(crate) chunk: u64,
    /// The physical chunk the entry names (and the data went to).
    pub(crate) phys: u64,
    /// The write's io_seq.
    pub(crate) io_seq: u64,
    /// A live write's byte offset in the volume and length, which a
    /// running rebuild tracks per block; `None` when the caller tracks
    /// it itself, or when it is a rebuild's own write.
    pub(crate) track: Option<(u64, u64)>,
}

/// Chunks overwritten in place since the last commit took their records:
/// (layer, logical chunk) → physical chunk.
#[derive(Debug, Default)]
pub(crate) struct Coalesced {
    chunks: BTreeMap<(LayerId, u64), u64>,
}

impl Coalesced {
    /// Chunks remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Applies an overwrite of `phys` at (`layer`, `chunk`) to `state`: the
    /// entry's io_seq becomes the larger of its own and `io_seq`, and the
    /// chunk is remembered for the next commit. Returns false (and changes
    /// nothing) when the entry is not `Data(phys)`: the caller then records
    /// the overwrite the ordinary way.
    pub(crate) fn apply(
        &mut self,
        state: &mut State,
        layer: LayerId,
        chunk: u64,
        phys: u64,
        io_seq: u64,
    ) -> bool {
        let Some(l) = state.layers.get_mut(&layer) else {
            return false;
        };
        let Some(e) = l.map.get(chunk) else {
            return false;
        };
        if e.target != Target::Data(phys) {
            return false;
        }
        if io_seq > e.io_seq {
            l.map.insert(
                chunk,
                Entry {
                    target: e.target,
                    io_seq,
                },
            );
        }
        // Remembered even when the io_seq did not rise (a rebuild's older
        // block): today's path journals a record for it too, and a commit
        // must run (and sync the data) for the flush that follows.
        self.chunks.insert((layer, chunk), phys);
        true
    }

    /// The record of (`layer`, `chunk`) if it is remembered, forgotten
    /// from now on: what must precede a record changing that entry.
    pub(crate) fn take_one(&mut self, state: &State, layer: LayerId, chunk: u64) -> Option<Record> {
        let phys = self.chunks.remove(&(layer, chunk))?;
        map_record(state, layer, chunk, phys)
    }

    /// Every remembered chunk's record, in (layer, chunk) order, all
    /// forgotten from now on.
    pub(crate) fn take_all(&mut self, state: &State) -> Vec<Record> {
        std::mem::take(&mut self.chunks)
            .into_iter()
            .filter_map(|((layer, chunk), phys)| map_record(state, layer, chunk, phys))
            .collect()
    }
}

/// The `Map` record of an entry as `state` holds it now; `None` when it no
/// longer names `phys` (it cannot: see the module's invariants).
fn map_record(state: &State, layer: LayerId, chunk: u64, phys: u64) -> Option<Record> {
    let e = state.layers.get(&layer)?.map.get(chunk)?;
    (e.target == Target::Data(phys)).then_some(Record::Map {
        layer,
        chunk,
        phys,
        io_seq: e.io_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::state::Mode;

    fn state_with_chunk() -> State {
        let mut st = State::new(4096, 64);
        st.apply(
            &Record::CreateVolume {
                id: 1,
                layer: 2,
                parent: None,
                name: "v".into(),
                size_bytes: 1 << 20,
                block_bytes: 4096,
                thick: false,
                replica_id: 9,
                io_seq: 0,
            },
            Mode::Replay,
        )
        .unwrap();
        st.apply(
            &Record::Map {
                layer: 2,
                chunk: 3,
                phys: 7,
                io_seq: 10,
            },
            Mode::Replay,
        )
        .unwrap();
        st
    }

    #[test]
    fn overwrites_of_a_chunk_coalesce_into_one_record_with_the_latest_io_seq() {
        let mut st = state_with_chunk();
        let mut c = Coalesced::default();
        assert!(c.apply(&mut st, 2, 3, 7, 11));
        assert!(c.apply(&mut st, 2, 3, 7, 15));
        // An older io_seq (a rebuild's block) never lowers the entry's.
        assert!(c.apply(&mut st, 2, 3, 7, 12));
        assert_eq!(st.layers[&2].map.get(3).unwrap().io_seq, 15);
        assert_eq!(c.len(), 1);
        let recs = c.take_all(&st);
        assert_eq!(
            recs,
            vec![Record::Map {
                layer: 2,
                chunk: 3,
                phys: 7,
                io_seq: 15
            }]
        );
        assert_eq!(c.len(), 0);
        assert!(c.take_all(&st).is_empty());
    }

    #[test]
    fn an_overwrite_of_an_entry_that_is_not_its_chunk_changes_nothing() {
        let mut st = state_with_chunk();
        let mut c = Coalesced::default();
        assert!(!c.apply(&mut st, 2, 3, 8, 20), "another physical chunk");
        assert!(!c.apply(&mut st, 2, 4, 7, 20), "an unmapped chunk");
        assert!(!c.apply(&mut st, 5, 3, 7, 20), "a missing layer");
        assert_eq!(st.layers[&2].map.get(3).unwrap().io_seq, 10);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn taking_one_chunk_leaves_the_others() {
        let mut st = state_with_chunk();
        st.apply(
            &Record::Map {
                layer: 2,
                chunk: 4,
                phys: 8,
                io_seq: 10,
            },
            Mode::Replay,
        )
        .unwrap();
        let mut c = Coalesced::default();
        c.apply(&mut st, 2, 3, 7, 11);
        c.apply(&mut st, 2, 4, 8, 12);
        assert_eq!(
            c.take_one(&st, 2, 3),
            Some(Record::Map {
                layer: 2,
                chunk: 3,
                phys: 7,
                io_seq: 11
            })
        );
        assert_eq!(c.take_one(&st, 2, 3), None);
        assert_eq!(c.len(), 1);
    }
}
