//! A volume replica: block IO (read, write with the target's io_seq,
//! write-zeroes, unmap, flush), snapshots and clones, and rebuild support.
//!
//! Every request is validated (block-aligned, `checked_add`, within the
//! volume, bounded by `MAX_IO_BYTES`) before any IO, then split at chunk
//! boundaries; each piece holds its chunk's stripe lock (see `locks`) for
//! lookup, device IO and map update. The metadata mutex is never held
//! across device IO. A new mapping enters the map (and the journal) only
//! after its data write completed, so a commit, which syncs data before
//! writing records, never makes a mapping durable before its data.
//!
//! Copy-on-write: a chunk the live layer does not own (shared with a
//! snapshot or clone, or unmapped) is written to a freshly allocated chunk,
//! the rest of which is copied from the visible chunk or zero-filled.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::error::{invalid, no_space, not_found, Error, ErrorKind, Result};
use crate::io::{AlignedBuf, Device};
use crate::limits::{MAX_ATTRS_BYTES, MAX_CHANGES_PER_PAGE, MAX_IO_BYTES, MAX_MEMBERSHIP_BYTES};
use crate::meta::chunk_map::{Entry, Target};
use crate::meta::record::{LayerId, Record, VolumeId};
use crate::pool::{random_u128, Meta, PoolInner, Provisioning, VolRuntime};

/// A snapshot as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// Highest io_seq written before it was taken.
    pub io_seq: u64,
    /// Volume size when taken.
    pub size_bytes: u64,
}

/// Figures of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStats {
    /// Logical size.
    pub size_bytes: u64,
    /// Block size.
    pub block_bytes: u32,
    /// Thin or thick.
    pub provisioning: Provisioning,
    /// Bytes of chunks the volume's live layer owns.
    pub allocated_bytes: u64,
    /// Snapshots of the volume.
    pub snapshots: usize,
    /// io_seq through which every write is durable (the highest written,
    /// or the owner's completion watermark: `Volume::set_complete_io_seq`).
    pub last_durable_io_seq: u64,
    /// Pool data space in use.
    pub pool_used_bytes: u64,
    /// Pool data space free.
    pub pool_free_bytes: u64,
}

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

/// A handle on one volume of a pool.
pub struct Volume {
    pool: Arc<PoolInner>,
    id: VolumeId,
    name: String,
    block_bytes: u32,
}

enum Plan {
    InPlace(u64),
    Fresh { phys: u64, source: Option<u64> },
}

enum ZeroPlan {
    Nothing,
    Record(Record),
    WriteZeros,
}

struct Piece {
    chunk: u64,
    off: u64,
    len: usize,
    buf_off: usize,
}

/// The request `[offset, offset + len)` cut at chunk boundaries, lazily (an
/// unmap may span a whole volume). Each piece is at most one chunk, so its
/// length fits a `usize`.
fn pieces(offset: u64, len: u64, chunk_bytes: u64) -> impl Iterator<Item = Piece> {
    let end = offset.saturating_add(len);
    let mut pos = offset;
    let mut buf_off = 0usize;
    std::iter::from_fn(move || {
        if pos >= end || chunk_bytes == 0 {
            return None;
        }
        let chunk = pos / chunk_bytes;
        let off = pos % chunk_bytes;
        let n = (chunk_bytes - off).min(end - pos);
        let n_usize = usize::try_from(n).ok()?;
        let piece = Piece {
            chunk,
            off,
            len: n_usize,
            buf_off,
        };
        buf_off = buf_off.saturating_add(n_usize);
        pos += n;
        Some(piece)
    })
}

/// A live write (or unmap) of `io_seq` reached the map: it raises the
/// highest io_seq written and, unless the owner declared a completion
/// watermark, the io_seq the next commit records.
fn note_written(m: &mut Meta, id: VolumeId, io_seq: u64) {
    let watermarked = match m.vols.get_mut(&id) {
        Some(rt) => {
            rt.written_io_seq = rt.written_io_seq.max(io_seq);
            rt.watermarked
        }
        None => false,
    };
    if !watermarked {
        if let Some(v) = m.state.volumes.get_mut(&id) {
            v.max_io_seq = v.max_io_seq.max(io_seq);
        }
    }
}

impl Volume {
    pub(crate) fn new(pool: Arc<PoolInner>, id: VolumeId, name: String, block_bytes: u32) -> Self {
        Self {
            pool,
            id,
            name,
            block_bytes,
        }
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Block size (512 or 4096).
    pub fn block_bytes(&self) -> u32 {
        self.block_bytes
    }

    fn chunk_bytes(&self) -> u64 {
        u64::from(self.pool.chunk_bytes)
    }

    fn ctx(&self, what: &str, offset: u64) -> String {
        format!("{what} volume {} at {offset}", self.name)
    }

    /// Checks the pool, the volume and its poison; returns (live layer, size).
    fn usable(&self) -> Result<(LayerId, u64)> {
        self.pool.check_usable()?;
        let m = self.pool.meta.lock();
        let v = m
            .state
            .volumes
            .get(&self.id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        if let Some(p) = m.vols.get(&self.id).and_then(|r| r.poisoned.as_ref()) {
            return Err(Error::new(
                ErrorKind::Poisoned,
                format!("volume {}: {p}", self.name),
            ));
        }
        Ok((v.live, v.size_bytes))
    }

    /// Validates a data transfer (read, write, rebuild): block-aligned, at
    /// most [`MAX_IO_BYTES`], inside the volume.
    fn check_range(&self, size: u64, offset: u64, len: u64) -> Result<()> {
        if len > MAX_IO_BYTES {
            return Err(invalid(format!("{len} bytes exceeds {MAX_IO_BYTES}")));
        }
        self.check_extent(size, offset, len)
    }

    /// Validates an extent that moves no data (unmap, write zeroes): any
    /// length, block-aligned, inside the volume.
    fn check_extent(&self, size: u64, offset: u64, len: u64) -> Result<()> {
        let block = u64::from(self.block_bytes);
        if !offset.is_multiple_of(block) || !len.is_multiple_of(block) {
            return Err(invalid(format!(
                "{}: {len} bytes not aligned to {block}-byte blocks",
                self.ctx("IO on", offset)
            )));
        }
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::new(
                ErrorKind::OutOfRange,
                format!(
                    "{} + {len} passes the size {size}",
                    self.ctx("IO on", offset)
                ),
            )),
        }
    }

    fn poison(&self, why: String) -> Error {
        tracing::error!(volume = %self.name, reason = %why, "volume poisoned");
        let mut m = self.pool.meta.lock();
        if let Some(rt) = m.vols.get_mut(&self.id) {
            if rt.poisoned.is_none() {
                rt.poisoned = Some(why.clone());
            }
        }
        Error::new(ErrorKind::Poisoned, format!("volume {}: {why}", self.name))
    }

    async fn read_phys(&self, phys: u64, off: u64, out: &mut [u8]) -> Result<()> {
        let (dev, base) = self.pool.locate(phys)?;
        let align = dev.alignment().max(1) as u64;
        let len = out.len() as u64;
        let start = off - off % align;
        let end = crate::format::round_up(off + len, align).ok_or_else(|| invalid("range"))?;
        let n = usize::try_from(end - start).map_err(|_| invalid("range"))?;
        let (res, buf) = dev.read_at(AlignedBuf::zeroed(n), base + start).await;
        res.map_err(|e| Error::io(self.ctx("read", off), e))?;
        let from = usize::try_from(off - start).map_err(|_| invalid("range"))?;
        let src = buf
            .as_slice()
            .get(from..from + out.len())
            .ok_or_else(|| invalid("short read"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    /// Writes `data` at `off` in physical chunk `phys` (read-modify-write
    /// when the device's alignment is coarser than the request). Any error
    /// poisons the volume.
    async fn write_phys(&self, phys: u64, off: u64, data: &[u8]) -> Result<()> {
        let (dev, base) = self.pool.locate(phys)?;
        let align = dev.alignment().max(1) as u64;
        let len = data.len() as u64;
        let buf = if off.is_multiple_of(align) && len.is_multiple_of(align) {
            AlignedBuf::from_slice(data)
        } else {
            let start = off - off % align;
            let end = crate::format::round_up(off + len, align).ok_or_else(|| invalid("range"))?;
            let n = usize::try_from(end - start).map_err(|_| invalid("range"))?;
            let (res, mut buf) = dev.read_at(AlignedBuf::zeroed(n), base + start).await;
            if let Err(e) = res {
                return Err(self.poison(format!("read for read-modify-write failed: {e}")));
            }
            let from = usize::try_from(off - start).map_err(|_| invalid("range"))?;
            let dst = buf
                .as_mut_slice()
                .get_mut(from..from + data.len())
                .ok_or_else(|| invalid("range"))?;
            dst.copy_from_slice(data);
            let (res, _) = dev.write_at(buf, base + start).await;
            return res.map_err(|e| self.poison(format!("write at {off} failed: {e}")));
        };
        let (res, _) = dev.write_at(buf, base + off).await;
        res.map_err(|e| self.poison(format!("write at {off} failed: {e}")))
    }

    /// Plans a write into the live layer (`into: None`) or into a rebuilt
    /// snapshot's layer.
    fn plan_write(&self, chunk: u64, into: Option<LayerId>) -> Result<Plan> {
        let mut m = self.pool.meta.lock();
        let dest = m
            .state
            .volumes
            .get(&self.id)
            .map(|v| into.unwrap_or(v.live))
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        let layer = m
            .state
            .layers
            .get(&dest)
            .ok_or_else(|| not_found(format!("layer {dest}")))?;
        let source = match layer.map.get(chunk) {
            Some(Entry {
                target: Target::Data(p),
                ..
            }) => return Ok(Plan::InPlace(p)),
            Some(_) => None,
            None => layer
                .parent
                .and_then(|p| m.state.resolve(p, chunk))
                .and_then(|(_, e)| match e.target {
                    Target::Data(p) => Some(p),
                    Target::Zero => None,
                }),
        };
        self.pool.admit(&m.state, 1, 0)?;
        let phys = match into {
            // A rebuilt snapshot's chunks are beyond a thick volume's
            // reservation (which covers its live layer only).
            Some(_) if m.state.available_chunks() == 0 => None,
            _ => m.state.alloc_for(self.id),
        }
        .ok_or_else(|| no_space(format!("no free chunk for volume {}", self.name)))?;
        m.in_flight.insert(phys);
        Ok(Plan::Fresh { phys, source })
    }

    fn map_done(&self, chunk: u64, phys: u64, io_seq: u64, into: Option<LayerId>) -> Result<()> {
        let mut m = self.pool.meta.lock();
        m.in_flight.remove(&phys);
        let live = m
            .state
            .volumes
            .get(&self.id)
            .map(|v| v.live)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        // A rebuilt snapshot's content is history: it says nothing about
        // which live writes this replica completed.
        let dest = match into {
            Some(layer) => layer,
            None => {
                note_written(&mut m, self.id, io_seq);
                live
            }
        };
        let old_seq = m
            .state
            .layers
            .get(&dest)
            .and_then(|l| l.map.get(chunk))
            .map_or(0, |e| e.io_seq);
        m.record(Record::Map {
            layer: dest,
            chunk,
            phys,
            io_seq: io_seq.max(old_seq),
        })
    }

    fn release_unmapped(&self, phys: u64) {
        let mut m = self.pool.meta.lock();
        m.in_flight.remove(&phys);
        m.state.alloc.release(phys);
    }

    /// Writes one piece; the caller holds the chunk's exclusive lock.
    async fn write_locked(
        &self,
        chunk: u64,
        off: u64,
        data: &[u8],
        io_seq: u64,
        into: Option<LayerId>,
    ) -> Result<()> {
        let plan = match self.plan_write(chunk, into) {
            Err(e) if e.kind() == ErrorKind::NoSpace && self.pool.meta.lock().frees_pending() => {
                // Chunks freed by an uncommitted unmap come back once the
                // commit is durable.
                self.pool.flush_all().await?;
                self.plan_write(chunk, into)?
            }
            other => other?,
        };
        match plan {
            Plan::InPlace(p) => {
                self.write_phys(p, off, data).await?;
                self.map_done(chunk, p, io_seq, into)
            }
            Plan::Fresh { phys, source } => {
                let chunk_bytes = self.chunk_bytes();
                let full = off == 0 && data.len() as u64 == chunk_bytes;
                let res = async {
                    let n = usize::try_from(chunk_bytes).map_err(|_| invalid("chunk"))?;
                    let mut buf = vec![0u8; n];
                    if let (false, Some(src)) = (full, source) {
                        self.read_phys(src, 0, &mut buf).await?;
                    }
                    let from = usize::try_from(off).map_err(|_| invalid("offset"))?;
                    buf.get_mut(from..from + data.len())
                        .ok_or_else(|| invalid("piece outside its chunk"))?
                        .copy_from_slice(data);
                    self.write_phys(phys, 0, &buf).await
                }
                .await;
                match res {
                    Ok(()) => self.map_done(chunk, phys, io_seq, into),
                    Err(e) => {
                        self.release_unmapped(phys);
                        Err(e)
                    }
                }
            }
        }
    }

    fn track(&self, chunk: u64, off: u64, len: usize, io_seq: u64) {
        let block = u64::from(self.block_bytes);
        let mut m = self.pool.meta.lock();
        let Some(map) = m.vols.get_mut(&self.id).and_then(|r| r.rebuild.as_mut()) else {
            return;
        };
        let first = (chunk * self.chunk_bytes() + off) / block;
        for b in first..first + len as u64 / block {
            let e = map.entry(b).or_insert(0);
            *e = (*e).max(io_seq);
        }
    }

    /// Reads `buf.len()` bytes at `offset`; unmapped ranges read as zeros.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _s = self.pool.structure.read().await;
        let (live, size) = self.usable()?;
        self.read_layer(live, size, offset, buf).await
    }

    /// Reads from a snapshot of this volume.
    pub async fn read_snapshot(&self, snapshot: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
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
        self.read_layer(layer, size, offset, buf).await
    }

    async fn read_layer(
        &self,
        layer: LayerId,
        size: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        self.check_range(size, offset, buf.len() as u64)?;
        for p in pieces(offset, buf.len() as u64, self.chunk_bytes()) {
            let _g = self.pool.locks.shared(self.id, p.chunk).await;
            let target = {
                let m = self.pool.meta.lock();
                m.state.resolve(layer, p.chunk).map(|(_, e)| e.target)
            };
            let out = buf
                .get_mut(p.buf_off..p.buf_off + p.len)
                .ok_or_else(|| invalid("piece"))?;
            match target {
                Some(Target::Data(phys)) => self.read_phys(phys, p.off, out).await?,
                _ => out.fill(0),
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` as the target's write `io_seq`.
    pub async fn write(&self, offset: u64, data: &[u8], io_seq: u64) -> Result<()> {
        let _s = self.pool.structure.read().await;
        let (_, size) = self.usable()?;
        self.check_range(size, offset, data.len() as u64)?;
        for p in pieces(offset, data.len() as u64, self.chunk_bytes()) {
            let _g = self.pool.locks.exclusive(self.id, p.chunk).await;
            let piece = data
                .get(p.buf_off..p.buf_off + p.len)
                .ok_or_else(|| invalid("piece"))?;
            self.write_locked(p.chunk, p.off, piece, io_seq, None)
                .await?;
            self.track(p.chunk, p.off, p.len, io_seq);
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeros, freeing whole chunks.
    pub async fn write_zeroes(&self, offset: u64, len: u64, io_seq: u64) -> Result<()> {
        self.unmap(offset, len, io_seq).await
    }

    /// Unmaps `len` bytes at `offset`: a whole chunk is replaced by a zeros
    /// tombstone carrying `io_seq` (its physical chunk, if the volume owned
    /// one, is freed; a snapshot's stays); partial chunks are zeroed. Reads
    /// of the range return zeros afterwards.
    pub async fn unmap(&self, offset: u64, len: u64, io_seq: u64) -> Result<()> {
        let _s = self.pool.structure.read().await;
        let (_, size) = self.usable()?;
        self.check_extent(size, offset, len)?;
        for p in pieces(offset, len, self.chunk_bytes()) {
            let _g = self.pool.locks.exclusive(self.id, p.chunk).await;
            self.zero_locked(p.chunk, p.off, p.len, io_seq).await?;
            self.track(p.chunk, p.off, p.len, io_seq);
        }
        Ok(())
    }

    async fn zero_locked(&self, chunk: u64, off: u64, len: usize, io_seq: u64) -> Result<()> {
        let full = off == 0 && len as u64 == self.chunk_bytes();
        let plan = {
            let mut m = self.pool.meta.lock();
            let live = m
                .state
                .volumes
                .get(&self.id)
                .map(|v| v.live)
                .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
            note_written(&mut m, self.id, io_seq);
            let layer = m
                .state
                .layers
                .get(&live)
                .ok_or_else(|| not_found(format!("layer {live}")))?;
            let own = layer.map.get(chunk);
            let below_data = layer
                .parent
                .and_then(|p| m.state.resolve(p, chunk))
                .is_some_and(|(_, e)| matches!(e.target, Target::Data(_)));
            let visible_data = match own {
                Some(e) => matches!(e.target, Target::Data(_)),
                None => below_data,
            };
            if full && (below_data || own.is_some()) {
                // A tombstone (not a removal) even with nothing below: it
                // carries the unmap's io_seq, so `changed_chunks` reports
                // the chunk to a rebuild. It frees the chunk it replaces.
                if own.is_none() {
                    self.pool.admit(&m.state, 1, 0)?;
                }
                ZeroPlan::Record(Record::Zero {
                    layer: live,
                    chunk,
                    io_seq,
                })
            } else if !full && visible_data {
                ZeroPlan::WriteZeros
            } else {
                ZeroPlan::Nothing
            }
        };
        match plan {
            ZeroPlan::Nothing => Ok(()),
            ZeroPlan::Record(r) => self.pool.meta.lock().record(r),
            ZeroPlan::WriteZeros => {
                let zeros = vec![0u8; len];
                self.write_locked(chunk, off, &zeros, io_seq, None).await
            }
        }
    }

    /// Makes every write completed before this call durable (data and
    /// metadata); concurrent flushes share one commit.
    pub async fn flush(&self) -> Result<()> {
        self.usable()?;
        self.pool.flush_all().await?;
        self.usable().map(|_| ())
    }

    /// Declares that every write to this volume with an io_seq at most
    /// `io_seq` that its owner will ever have completed has completed (the
    /// replica's arrival-order watermark). From the first call on, a commit
    /// records this watermark (monotonic) as the volume's durable io_seq
    /// instead of the highest io_seq written, so a write still running below
    /// a completed one is never claimed durable.
    pub fn set_complete_io_seq(&self, io_seq: u64) -> Result<()> {
        let mut m = self.pool.meta.lock();
        let rt = m
            .vols
            .get_mut(&self.id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        rt.watermarked = true;
        let v = m
            .state
            .volumes
            .get_mut(&self.id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        v.max_io_seq = v.max_io_seq.max(io_seq);
        Ok(())
    }

    /// Highest io_seq recorded by a durable commit.
    pub fn last_durable_io_seq(&self) -> Result<u64> {
        let m = self.pool.meta.lock();
        m.vols
            .get(&self.id)
            .map(|r| r.durable_io_seq)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Logical size.
    pub fn size_bytes(&self) -> Result<u64> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.size_bytes)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Figures of the volume.
    pub fn stats(&self) -> Result<VolumeStats> {
        let m = self.pool.meta.lock();
        let v = m
            .state
            .volumes
            .get(&self.id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
        let chunk = self.chunk_bytes();
        let owned = m.state.layers.get(&v.live).map_or(0, |l| l.map.data_len());
        let free = m.state.alloc.free_count();
        Ok(VolumeStats {
            size_bytes: v.size_bytes,
            block_bytes: v.block_bytes,
            provisioning: if v.thick {
                Provisioning::Thick
            } else {
                Provisioning::Thin
            },
            allocated_bytes: owned.saturating_mul(chunk),
            snapshots: m
                .state
                .snapshots
                .values()
                .filter(|s| s.volume == self.id)
                .count(),
            last_durable_io_seq: m.vols.get(&self.id).map_or(0, |r| r.durable_io_seq),
            pool_used_bytes: m
                .state
                .alloc
                .total()
                .saturating_sub(free)
                .saturating_mul(chunk),
            pool_free_bytes: free.saturating_mul(chunk),
        })
    }

    /// Takes a snapshot (metadata only, O(1) in the volume's size); it holds
    /// every write completed before the call. Durable when this returns.
    pub async fn create_snapshot(&self, name: &str) -> Result<()> {
        let _s = self.pool.structure.write().await;
        self.usable()?;
        {
            let mut m = self.pool.meta.lock();
            let v = m
                .state
                .volumes
                .get(&self.id)
                .cloned()
                .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
            if v.thick {
                // The new live layer reserves again what the old one owned.
                let owned = m.state.layers.get(&v.live).map_or(0, |l| l.map.data_len());
                if m.state.available_chunks() < owned {
                    return Err(no_space(format!(
                        "snapshot of thick volume {} needs {owned} free chunks",
                        self.name
                    )));
                }
            }
            self.pool.admit(&m.state, 0, 1)?;
            let written = m.vols.get(&self.id).map_or(0, |r| r.written_io_seq);
            let id = m.state.take_id();
            let new_layer = m.state.take_id();
            m.record(Record::CreateSnapshot {
                volume: self.id,
                id,
                new_layer,
                name: name.to_owned(),
                io_seq: v.max_io_seq.max(written),
            })?;
        }
        self.pool.flush_all().await
    }

    /// Deletes a snapshot, freeing the chunks no one else references.
    pub async fn delete_snapshot(&self, name: &str) -> Result<()> {
        let _s = self.pool.structure.write().await;
        self.usable()?;
        {
            let mut m = self.pool.meta.lock();
            let id = m
                .state
                .snapshot_by_name(self.id, name)
                .map(|s| s.id)
                .ok_or_else(|| not_found(format!("snapshot {name}")))?;
            m.record(Record::DeleteSnapshot { id })?;
        }
        self.pool.flush_all().await
    }

    /// Snapshots, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let m = self.pool.meta.lock();
        if !m.state.volumes.contains_key(&self.id) {
            return Err(not_found(format!("volume {}", self.name)));
        }
        Ok(m.state
            .snapshots
            .values()
            .filter(|s| s.volume == self.id)
            .map(|s| SnapshotInfo {
                name: s.name.clone(),
                io_seq: s.io_seq,
                size_bytes: s.size_bytes,
            })
            .collect::<Vec<_>>())
        .map(|mut all| {
            // Ids give creation order here; a rebuilt snapshot may be
            // inserted after newer ones, so order by io_seq (stable).
            all.sort_by_key(|s| s.io_seq);
            all
        })
    }

    /// Clones a snapshot into a new thin, writable volume (metadata only).
    pub async fn clone_snapshot(&self, snapshot: &str, new_name: &str) -> Result<Arc<Volume>> {
        let _s = self.pool.structure.write().await;
        self.usable()?;
        let (id, block) = {
            let mut m = self.pool.meta.lock();
            let s = m
                .state
                .snapshot_by_name(self.id, snapshot)
                .cloned()
                .ok_or_else(|| not_found(format!("snapshot {snapshot}")))?;
            self.pool.admit(&m.state, 0, 1)?;
            let id = m.state.take_id();
            let layer = m.state.take_id();
            m.record(Record::CreateVolume {
                id,
                layer,
                parent: Some(s.layer),
                name: new_name.to_owned(),
                size_bytes: s.size_bytes,
                block_bytes: self.block_bytes,
                thick: false,
                replica_id: random_u128(),
                io_seq: s.io_seq,
            })?;
            m.vols.insert(
                id,
                VolRuntime {
                    durable_io_seq: s.io_seq,
                    written_io_seq: s.io_seq,
                    ..VolRuntime::default()
                },
            );
            (id, self.block_bytes)
        };
        self.pool.flush_all().await?;
        Ok(Arc::new(Volume::new(
            self.pool.clone(),
            id,
            new_name.to_owned(),
            block,
        )))
    }

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
                self.write_locked(p.chunk, off, bytes, seq, None).await?;
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
            let live = m
                .state
                .volumes
                .get(&self.id)
                .map(|v| v.live)
                .ok_or_else(|| not_found(format!("volume {}", self.name)))?;
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
            self.write_locked(p.chunk, p.off, piece, seq, Some(layer))
                .await?;
        }
        Ok(())
    }

    /// Stable random replica id, generated at volume creation.
    pub fn replica_id(&self) -> Result<u128> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.replica_id)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Highest target epoch accepted.
    pub fn epoch(&self) -> Result<u64> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.epoch)
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Records a target epoch; durable when this returns. An epoch below
    /// the recorded one is refused with [`ErrorKind::Conflict`].
    pub async fn set_epoch(&self, epoch: u64) -> Result<()> {
        self.usable()?;
        {
            let mut m = self.pool.meta.lock();
            let cur = m.state.volumes.get(&self.id).map_or(0, |v| v.epoch);
            if epoch < cur {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("epoch {epoch} is older than {cur} on volume {}", self.name),
                ));
            }
            m.record(Record::SetEpoch {
                volume: self.id,
                epoch,
            })?;
        }
        self.pool.flush_all().await
    }

    /// The opaque attribute blob.
    pub fn attrs(&self) -> Result<Vec<u8>> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.attrs.clone())
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// The opaque membership record (empty: none was ever set).
    pub fn membership(&self) -> Result<Vec<u8>> {
        let m = self.pool.meta.lock();
        m.state
            .volumes
            .get(&self.id)
            .map(|v| v.membership.clone())
            .ok_or_else(|| not_found(format!("volume {}", self.name)))
    }

    /// Replaces the membership record (≤ `MAX_MEMBERSHIP_BYTES`); durable
    /// when this returns. The engine does not interpret it: the replica
    /// daemon keeps the target's replica set of the volume there.
    pub async fn set_membership(&self, membership: &[u8]) -> Result<()> {
        if membership.len() > MAX_MEMBERSHIP_BYTES {
            return Err(invalid(format!("membership of {} bytes", membership.len())));
        }
        self.usable()?;
        self.pool.meta.lock().record(Record::SetMembership {
            volume: self.id,
            membership: membership.to_vec(),
        })?;
        self.pool.flush_all().await
    }

    /// Replaces the attribute blob (≤ `MAX_ATTRS_BYTES`); durable when this
    /// returns.
    pub async fn set_attrs(&self, attrs: &[u8]) -> Result<()> {
        if attrs.len() > MAX_ATTRS_BYTES {
            return Err(invalid(format!("attrs of {} bytes", attrs.len())));
        }
        self.usable()?;
        self.pool.meta.lock().record(Record::SetAttrs {
            volume: self.id,
            attrs: attrs.to_vec(),
        })?;
        self.pool.flush_all().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_chunk_boundaries_and_cover_the_request() {
        let got: Vec<_> = pieces(4096 - 512, 4096 + 1024, 4096)
            .map(|p| (p.chunk, p.off, p.len, p.buf_off))
            .collect();
        assert_eq!(
            got,
            vec![(0, 3584, 512, 0), (1, 0, 4096, 512), (2, 0, 512, 4608)]
        );
        assert_eq!(pieces(0, 0, 4096).count(), 0);
        // Lazy: a 64 GiB unmap does not build a million-entry vector first.
        assert_eq!(pieces(0, 1 << 36, 65536).count(), 1 << 20);
        let one: Vec<_> = pieces(8192, 4096, 4096).collect();
        assert_eq!((one.len(), one[0].chunk, one[0].off), (1, 2, 0));
    }
}
