//! Rebuild support: the chunks changed after an io_seq
//! ([`Volume::changed_chunks`], what a rebuild source streams), the
//! per-block io_seq tracking of live writes while a rebuild runs
//! ([`Volume::begin_rebuild`]), and applying rebuilt data to the live
//! volume or to a rebuilt snapshot, never over a newer live write.

use std::collections::{BTreeSet, HashMap};

use super::io::pieces;
use super::Volume;
use crate::error::{invalid, not_found, Result};
use crate::limits::MAX_CHANGES_PER_PAGE;
use crate::meta::chunk_map::Target;
use crate::meta::record::Record;

/// What a changed chunk holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Data (read it).
    Data,
    /// Zeros (unmapped over older data).
    Zero,
}

/// A chunk written after some io_seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkChange {
    /// Byte offset in the volume (chunk-aligned).
    pub offset_bytes: u64,
    /// Bytes (a chunk, or less at the end of the volume).
    pub len_bytes: u64,
    /// io_seq of the last write into the chunk.
    pub io_seq: u64,
    /// Data or zeros.
    pub kind: ChangeKind,
}

/// One page of [`Volume::changed_chunks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesPage {
    /// Changes in LBA order.
    pub changes: Vec<ChunkChange>,
    /// Where the next page starts, `None` at the end.
    pub next_offset: Option<u64>,
}

impl Volume {
    /// Chunks of the live volume (`snapshot: None`) or of a snapshot whose
    /// last write is after `since_io_seq`, in LBA order from `start_offset`,
    /// at most `MAX_CHANGES_PER_PAGE` per page.
    pub fn changed_chunks(
        &self,
        snapshot: Option<&str>,
        since_io_seq: u64,
        start_offset: u64,
    ) -> Result<ChangesPage> {
        let m = self.pool.meta.lock();
        let v = m
            .state
            .volumes
            .get(&self.id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        let (layer, size) = match snapshot {
            None => (v.live, v.size_bytes),
            Some(name) => {
                let s = m
                    .state
                    .snapshot_by_name(self.id, name)
                    .ok_or_else(|| not_found(format!("snapshot {name}")))?;
                (s.layer, s.size_bytes)
            }
        };
        let chunk_bytes = self.chunk_bytes();
        let start = start_offset / chunk_bytes;
        let size_chunks = size.div_ceil(chunk_bytes);
        let mut candidates = BTreeSet::new();
        let mut cutoff: Option<u64> = None;
        for l in m.state.chain(layer) {
            let Some(layer) = m.state.layers.get(&l) else {
                continue;
            };
            let mut it = layer.map.iter_from(start);
            let mut last = None;
            for (c, _) in it.by_ref().take(MAX_CHANGES_PER_PAGE) {
                candidates.insert(c);
                last = Some(c);
            }
            if let (Some(last), Some(_)) = (last, it.next()) {
                cutoff = Some(cutoff.map_or(last, |c| c.min(last)));
            }
        }
        let mut changes = Vec::new();
        for c in candidates {
            if c >= size_chunks || cutoff.is_some_and(|cut| c > cut) {
                continue;
            }
            let Some((_, e)) = m.state.resolve(layer, c) else {
                continue;
            };
            if e.io_seq <= since_io_seq {
                continue;
            }
            let offset_bytes = c * chunk_bytes;
            changes.push(ChunkChange {
                offset_bytes,
                len_bytes: chunk_bytes.min(size - offset_bytes),
                io_seq: e.io_seq,
                kind: match e.target {
                    Target::Data(_) => ChangeKind::Data,
                    Target::Zero => ChangeKind::Zero,
                },
            });
        }
        let next_offset = cutoff
            .and_then(|c| c.checked_add(1))
            .map(|c| c * chunk_bytes)
            .filter(|o| *o < size);
        Ok(ChangesPage {
            changes,
            next_offset,
        })
    }

    /// The io_seq of the last write into the live volume's chunk holding
    /// byte `offset` (through the snapshot chain, as a read resolves it),
    /// 0 for a chunk never written; what a rebuild source sends with
    /// blocks a sink asked for by range (`RebuildSource::Ranges`).
    pub fn live_chunk_io_seq(&self, offset: u64) -> Result<u64> {
        let m = self.pool.meta.lock();
        let live = self.live_layer(&m)?;
        let chunk = offset / self.chunk_bytes();
        Ok(m.state.resolve(live, chunk).map_or(0, |(_, e)| e.io_seq))
    }

    /// Starts tracking, per block, the io_seq of live writes (so rebuilt
    /// data never overwrites a newer live write).
    pub fn begin_rebuild(&self) -> Result<()> {
        let mut m = self.pool.meta.lock();
        let rt = m
            .vols
            .get_mut(&self.id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        rt.rebuild = Some(HashMap::new());
        Ok(())
    }

    /// Stops tracking and drops the per-block table.
    pub fn end_rebuild(&self) {
        let mut m = self.pool.meta.lock();
        if let Some(rt) = m.vols.get_mut(&self.id) {
            rt.rebuild = None;
        }
    }

    /// Checks that a piece of rebuilt data carries one io_seq per block;
    /// returns the block size in bytes.
    fn check_rebuild_piece(&self, data: &[u8], block_io_seqs: &[u64]) -> Result<usize> {
        let block = usize::try_from(self.block_bytes).map_err(|_| invalid("block"))?;
        if data.len() != block_io_seqs.len().saturating_mul(block) {
            return Err(invalid(format!(
                "{} bytes of rebuild data with {} block io_seqs",
                data.len(),
                block_io_seqs.len()
            )));
        }
        Ok(block)
    }

    /// Applies rebuilt data: block `i` of `data` (at `offset`) carries
    /// `block_io_seqs[i]`, and is written only when no live write of an
    /// equal or newer io_seq reached that block since `begin_rebuild`.
    pub async fn apply_rebuild(
        &self,
        offset: u64,
        data: &[u8],
        block_io_seqs: &[u64],
    ) -> Result<()> {
        let block = self.check_rebuild_piece(data, block_io_seqs)?;
        let _s = self.pool.structure.read().await;
        let (_, size) = self.usable()?;
        self.check_range(size, offset, data.len() as u64)?;
        let first_block = offset / u64::from(self.block_bytes);
        for p in pieces(offset, data.len() as u64, self.chunk_bytes()) {
            let _g = self.pool.locks.exclusive(self.id, p.chunk).await;
            let first = p.buf_off / block;
            let n = p.len / block;
            let accept: Vec<bool> = {
                let m = self.pool.meta.lock();
                let live = m.vols.get(&self.id).and_then(|r| r.rebuild.as_ref());
                (first..first + n)
                    .map(|i| {
                        let seq = block_io_seqs.get(i).copied().unwrap_or(0);
                        let b = first_block + i as u64;
                        live.and_then(|t| t.get(&b)).is_none_or(|live| *live < seq)
                    })
                    .collect()
            };
            let mut i = 0;
            while i < n {
                if !accept.get(i).copied().unwrap_or(false) {
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j < n && accept.get(j).copied().unwrap_or(false) {
                    j += 1;
                }
                let seq = block_io_seqs
                    .get(first + i..first + j)
                    .and_then(|s| s.iter().max().copied())
                    .unwrap_or(0);
                let bytes = data
                    .get(p.buf_off + i * block..p.buf_off + j * block)
                    .ok_or_else(|| invalid("piece"))?;
                let off = p.off + (i * block) as u64;
                self.write_locked(p.chunk, off, bytes, seq, None, None)
                    .await?;
                i = j;
            }
        }
        Ok(())
    }

    /// Creates snapshot `name` as a peer had it (rebuild only), empty, for
    /// [`Volume::apply_rebuild_snapshot`] to fill: its layer is inserted
    /// under the layer of the oldest snapshot taken after `io_seq`, or under
    /// the live layer when there is none, so every layer above keeps its
    /// own (newer) entries and live writes are never disturbed. Filled with
    /// every chunk the peer's snapshot changed since the next older
    /// snapshot, it reads as the peer's (FORMAT.md "Rebuilt snapshots").
    /// Durable when this returns.
    pub async fn insert_rebuilt_snapshot(
        &self,
        name: &str,
        io_seq: u64,
        size_bytes: u64,
    ) -> Result<()> {
        let _s = self.pool.structure.write().await;
        self.usable()?;
        {
            let mut m = self.pool.meta.lock();
            let live = self.live_layer(&m)?;
            let below = m
                .state
                .snapshots
                .values()
                .filter(|s| s.volume == self.id && s.io_seq > io_seq)
                .min_by_key(|s| (s.io_seq, s.id))
                .map_or(live, |s| s.layer);
            self.pool.admit(&m.state, 0, 1)?;
            let id = m.state.take_id();
            let layer = m.state.take_id();
            m.record(Record::InsertSnapshot {
                volume: self.id,
                id,
                layer,
                below,
                name: name.to_owned(),
                io_seq,
                size_bytes,
            })?;
        }
        self.pool.flush_all().await
    }

    /// Writes rebuilt data into snapshot `snapshot` (made by
    /// [`Volume::insert_rebuilt_snapshot`]); `block_io_seqs` are the peer's
    /// io_seqs of the blocks of `data`. Nothing but a rebuild writes into a
    /// snapshot; a live write reading through the same chunk (copy-on-write)
    /// is serialised with this one by the chunk lock.
    pub async fn apply_rebuild_snapshot(
        &self,
        snapshot: &str,
        offset: u64,
        data: &[u8],
        block_io_seqs: &[u64],
    ) -> Result<()> {
        let block = self.check_rebuild_piece(data, block_io_seqs)?;
        let _s = self.pool.structure.read().await;
        self.usable()?;
        let (layer, size) = {
            let m = self.pool.meta.lock();
            let s = m
                .state
                .snapshot_by_name(self.id, snapshot)
                .ok_or_else(|| not_found(format!("snapshot {snapshot}")))?;
            (s.layer, s.size_bytes)
        };
        self.check_range(size, offset, data.len() as u64)?;
        for p in pieces(offset, data.len() as u64, self.chunk_bytes()) {
            let _g = self.pool.locks.exclusive(self.id, p.chunk).await;
            let first = p.buf_off / block;
            let seq = block_io_seqs
                .get(first..first + p.len / block)
                .and_then(|s| s.iter().max().copied())
                .unwrap_or(0);
            let piece = data
                .get(p.buf_off..p.buf_off + p.len)
                .ok_or_else(|| invalid("piece"))?;
            self.write_locked(p.chunk, p.off, piece, seq, Some(layer), None)
                .await?;
        }
        Ok(())
    }
}
