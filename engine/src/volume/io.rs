//! The IO path of a volume: read (live layer or a snapshot), write with
//! the target's io_seq, write-zeroes, unmap, flush.
//!
//! Every request is validated (block-aligned, `checked_add`, within the
//! volume, bounded by `MAX_IO_BYTES`) before any IO, then split at chunk
//! boundaries (`pieces`); each piece holds its chunk's stripe lock (see
//! `locks`) for lookup, device IO and map update. The metadata mutex is
//! never held across device IO. A new mapping enters the map (and the
//! journal) only after its data write completed, so a commit, which syncs
//! data before writing records, never makes a mapping durable before its
//! data.
//!
//! Overwrites: a write within one chunk the live layer owns takes the
//! metadata lock once, before its data write (checks and lookup,
//! `Volume::overwrite`); once the data is written it hands the overwrite
//! over without the lock (`MetaLock::overwritten`), and the next holder of
//! the lock applies it: the chunk's io_seq, the volume's written io_seq,
//! and one coalesced `Map` record per chunk for the next commit (FORMAT.md
//! "Coalesced overwrites"). In-place pieces of other writes are applied
//! the same way under the lock they take anyway.
//!
//! Copy-on-write: a chunk the live layer does not own (shared with a
//! snapshot or clone, or unmapped) is written to a freshly allocated chunk,
//! the rest of which is copied from the visible chunk or zero-filled
//! (`Volume::plan_write`). While a rebuild runs, every live write records
//! its io_seq per block (`Volume::track`).

use super::Volume;
use crate::error::{invalid, no_space, not_found, Error, ErrorKind, Result};
use crate::integrity::{checksum_error, Integrity};
use crate::io::{AlignedBuf, Device};
use crate::limits::SUM_BLOCK_BYTES;
use crate::meta::chunk_map::{Entry, Target};
use crate::meta::overwrites::Overwrite;
use crate::meta::record::{LayerId, Record};
use crate::pool::{Meta, MetaLock};

enum Plan {
    InPlace(u64),
    Fresh { phys: u64, source: Option<u64> },
}

/// What a range asks of the pool's free chunks (`Volume::promise`).
#[derive(Debug, Clone, Copy)]
enum Need {
    Write,
    Zero,
}

/// What zeroing a piece of a chunk takes (`zero_locked` carries it out,
/// `fresh_chunks` counts it for the promise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroStep {
    /// Nothing visible there: nothing to do.
    Nothing,
    /// A tombstone over the whole chunk (not a removal, even with nothing
    /// below: it carries the unmap's io_seq, so `changed_chunks` reports
    /// the chunk to a rebuild; it frees the chunk it replaces).
    /// `new_entry`: the layer had no entry for the chunk.
    Tombstone { new_entry: bool },
    /// Zeros written over part of the chunk: in place when the layer owns
    /// it, else (`copy`) into a copy of the chunk below.
    Zeros { copy: bool },
}

/// The [`ZeroStep`] for zeroing part (or, `full`, all) of `chunk` in the
/// live layer `live`.
fn zero_step(m: &Meta, live: LayerId, chunk: u64, full: bool) -> Result<ZeroStep> {
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
    let own_data = own.is_some_and(|e| matches!(e.target, Target::Data(_)));
    Ok(if full && (below_data || own.is_some()) {
        ZeroStep::Tombstone {
            new_entry: own.is_none(),
        }
    } else if !full && own_data {
        ZeroStep::Zeros { copy: false }
    } else if !full && own.is_none() && below_data {
        ZeroStep::Zeros { copy: true }
    } else {
        ZeroStep::Nothing
    })
}

enum ZeroPlan {
    Nothing,
    Record(Record),
    WriteZeros,
}

pub(super) struct Piece {
    pub(super) chunk: u64,
    pub(super) off: u64,
    pub(super) len: usize,
    pub(super) buf_off: usize,
}

/// The request `[offset, offset + len)` cut at chunk boundaries, lazily (an
/// unmap may span a whole volume). Each piece is at most one chunk, so its
/// length fits a `usize`.
pub(super) fn pieces(offset: u64, len: u64, chunk_bytes: u64) -> impl Iterator<Item = Piece> {
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

impl Volume {
    /// The alignment of a data IO on `dev`: the device's, and whole 4 KiB
    /// blocks when the pool keeps block checksums.
    fn io_align(&self, dev: &crate::pool::DeviceRef) -> u64 {
        let align = dev.alignment().max(1) as u64;
        if self.pool.integrity.is_some() {
            align.max(SUM_BLOCK_BYTES)
        } else {
            align
        }
    }

    /// Reads `out.len()` bytes at `off` of physical chunk `phys`, which
    /// holds the volume's logical chunk `chunk`. Every 4 KiB block read is
    /// verified against its checksum: a mismatch is a checksum error
    /// naming the bad blocks as volume byte ranges, and no data.
    async fn read_phys(&self, phys: u64, chunk: u64, off: u64, out: &mut [u8]) -> Result<()> {
        self.read_phys_keeping(phys, chunk, off, out, None).await
    }

    /// [`Self::read_phys`] for a copy-on-write: blocks wholly inside
    /// `overwritten` (a chunk-relative byte range the write replaces) need
    /// not pass their checksum — what was there is not kept (so a repair
    /// can write over a bad block a snapshot shares).
    async fn read_phys_keeping(
        &self,
        phys: u64,
        chunk: u64,
        off: u64,
        out: &mut [u8],
        overwritten: Option<(u64, u64)>,
    ) -> Result<()> {
        let (dev, base) = self.pool.locate(phys)?;
        let align = self.io_align(&dev);
        let len = out.len() as u64;
        let start = off - off % align;
        let end = crate::format::round_up(off + len, align).ok_or_else(|| invalid("range"))?;
        let n = usize::try_from(end - start).map_err(|_| invalid("range"))?;
        let (res, buf) = dev.read_at(AlignedBuf::zeroed(n), base + start).await;
        res.map_err(|e| Error::io(self.ctx("read", off), e))?;
        if let Some(i) = &self.pool.integrity {
            let at = chunk * self.chunk_bytes();
            let (from, len) = overwritten.unwrap_or((0, 0));
            let bad: Vec<(u64, u64)> = self
                .verify(i, phys, start, buf.as_slice(), at)
                .await?
                .into_iter()
                .filter(|(o, l)| !(*o >= at + from && o + l <= at + from + len))
                .collect();
            if !bad.is_empty() {
                return Err(checksum_error(self.ctx("read", at + off), bad));
            }
        }
        let from = usize::try_from(off - start).map_err(|_| invalid("range"))?;
        let src = buf
            .as_slice()
            .get(from..from + out.len())
            .ok_or_else(|| invalid("short read"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    /// The blocks of `data`, read at `start` (4 KiB aligned) of physical
    /// chunk `phys`, that fail their stored checksum, as volume byte ranges
    /// (`at`: the volume offset of the chunk); counted as errors. Fails
    /// only when a checksum page cannot be read.
    async fn verify(
        &self,
        i: &Integrity,
        phys: u64,
        start: u64,
        data: &[u8],
        at: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let block = SUM_BLOCK_BYTES as usize;
        let first = phys * i.blocks_per_chunk() + start / SUM_BLOCK_BYTES;
        let stored = i.sums(&self.dev0()?, first, data.len() / block).await?;
        let bad: Vec<(u64, u64)> = data
            .chunks(block)
            .zip(stored)
            .enumerate()
            .filter(|(_, (b, want))| Integrity::block_crc(b) != *want)
            .map(|(k, _)| (at + start + k as u64 * SUM_BLOCK_BYTES, SUM_BLOCK_BYTES))
            .collect();
        if !bad.is_empty() {
            i.count_errors(bad.len() as u64);
            tracing::warn!(volume = %self.name, physical_chunk = phys, blocks = bad.len(), "checksum mismatch");
        }
        Ok(bad)
    }

    /// The crc32c of each 4 KiB block of `[off, off + len)` in physical
    /// chunk `phys` (4 KiB aligned), read from the device and verified
    /// against the stored checksums: `None` for a block that fails.
    pub(super) async fn block_crcs(
        &self,
        phys: u64,
        off: u64,
        len: usize,
    ) -> Result<Vec<Option<u32>>> {
        let (dev, base) = self.pool.locate(phys)?;
        let (res, buf) = dev.read_at(AlignedBuf::zeroed(len), base + off).await;
        res.map_err(|e| Error::io(self.ctx("digest", off), e))?;
        let bad = match &self.pool.integrity {
            Some(i) => self.verify(i, phys, off, buf.as_slice(), 0).await?,
            None => Vec::new(),
        };
        Ok(buf
            .as_slice()
            .chunks(SUM_BLOCK_BYTES as usize)
            .enumerate()
            .map(|(k, b)| {
                let at = off + k as u64 * SUM_BLOCK_BYTES;
                (!bad.iter().any(|(o, _)| *o == at)).then(|| Integrity::block_crc(b))
            })
            .collect())
    }

    /// Writes `data` at `off` in physical chunk `phys`, which holds the
    /// volume's logical chunk `chunk` (read-modify-write when the device's
    /// alignment, or the 4 KiB of a checksum, is coarser than the
    /// request). With block checksums: the chunk's dirty region is marked
    /// on disk first, a block only partly overwritten must pass its
    /// checksum (else a checksum error, nothing written), and the new
    /// checksums are stored once the data is written. A device error
    /// poisons the volume.
    async fn write_phys(&self, phys: u64, chunk: u64, off: u64, data: &[u8]) -> Result<()> {
        let (dev, base) = self.pool.locate(phys)?;
        let align = self.io_align(&dev);
        let len = data.len() as u64;
        let guard = match &self.pool.integrity {
            Some(i) => Some(self.begin_write(i, phys, off, len).await?),
            None => None,
        };
        let (start, buf) = if off.is_multiple_of(align) && len.is_multiple_of(align) {
            (off, AlignedBuf::from_slice(data))
        } else {
            let start = off - off % align;
            let end = crate::format::round_up(off + len, align).ok_or_else(|| invalid("range"))?;
            let n = usize::try_from(end - start).map_err(|_| invalid("range"))?;
            let (res, mut buf) = dev.read_at(AlignedBuf::zeroed(n), base + start).await;
            if let Err(e) = res {
                return Err(self.poison(format!("read for read-modify-write failed: {e}")));
            }
            if let Some(i) = &self.pool.integrity {
                // What the write keeps of a block must be good: its new
                // checksum would vouch for it.
                let at = chunk * self.chunk_bytes();
                let bad: Vec<(u64, u64)> = self
                    .verify(i, phys, start, buf.as_slice(), at)
                    .await?
                    .into_iter()
                    .filter(|(o, l)| !(*o >= at + off && o + l <= at + off + len))
                    .collect();
                if !bad.is_empty() {
                    return Err(checksum_error(self.ctx("write", at + off), bad));
                }
            }
            let from = usize::try_from(off - start).map_err(|_| invalid("range"))?;
            let dst = buf
                .as_mut_slice()
                .get_mut(from..from + data.len())
                .ok_or_else(|| invalid("range"))?;
            dst.copy_from_slice(data);
            (start, buf)
        };
        let crcs: Option<Vec<u32>> = self.pool.integrity.as_ref().map(|_| {
            buf.as_slice()
                .chunks(SUM_BLOCK_BYTES as usize)
                .map(Integrity::block_crc)
                .collect()
        });
        let (res, _) = dev.write_at(buf, base + start).await;
        if let Err(e) = res {
            if let Some((g, _pins)) = guard {
                g.fail();
            }
            return Err(self.poison(format!("write at {off} failed: {e}")));
        }
        if let (Some(i), Some(crcs)) = (&self.pool.integrity, crcs) {
            let first = phys * i.blocks_per_chunk() + start / SUM_BLOCK_BYTES;
            if let Err(e) = i.set_sums(first, &crcs) {
                return Err(self.poison(format!("checksums of the write at {off}: {e}")));
            }
        }
        drop(guard);
        Ok(())
    }

    /// Device 0 of the pool (the checksum area and the bitmap live there).
    fn dev0(&self) -> Result<crate::pool::DeviceRef> {
        self.pool
            .devices
            .read()
            .devs
            .first()
            .cloned()
            .ok_or_else(|| invalid("no device 0"))
    }

    /// Before a data write of `len` bytes at `off` into physical chunk
    /// `phys`: marks its dirty region on disk (a bitmap write that fails
    /// poisons the pool) and keeps the checksum pages of its 4 KiB blocks
    /// in memory until the write's checksums are stored.
    async fn begin_write<'a>(
        &self,
        i: &'a Integrity,
        phys: u64,
        off: u64,
        len: u64,
    ) -> Result<(crate::integrity::WriteGuard<'a>, crate::integrity::Pins<'a>)> {
        let dev0 = self.dev0()?;
        let first = phys * i.blocks_per_chunk() + off / SUM_BLOCK_BYTES;
        let blocks = (off + len).div_ceil(SUM_BLOCK_BYTES) - off / SUM_BLOCK_BYTES;
        let pins = i
            .pin_sums(
                &dev0,
                first,
                usize::try_from(blocks).map_err(|_| invalid("range"))?,
            )
            .await?;
        let guard = i.begin_write(&dev0, phys).await.map_err(|e| {
            let why = e.to_string();
            self.pool.poison_pool(why.clone());
            Error::new(ErrorKind::Poisoned, format!("pool: {why}"))
        })?;
        Ok((guard, pins))
    }

    /// Plans a write into the live layer (`into: None`) or into a rebuilt
    /// snapshot's layer; a fresh chunk comes from `promise` when it has
    /// one left, else from what no promise holds.
    fn plan_write(
        &self,
        chunk: u64,
        into: Option<LayerId>,
        promise: Option<&Promise<'_>>,
    ) -> Result<Plan> {
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
        if let Some(promise) = promise {
            promise.take_one(&mut m);
        }
        // What other writes were promised is not ours to take.
        let thick = m.state.volumes.get(&self.id).is_some_and(|v| v.thick);
        let room = match (into, thick) {
            // A thick volume's live layer draws on its reservation.
            (None, true) => m.state.alloc.free_count(),
            // A rebuilt snapshot's chunks are beyond a thick volume's
            // reservation (which covers its live layer only).
            _ => m.state.available_chunks(),
        };
        let phys = (room > m.promised)
            .then(|| m.state.alloc_for(self.id))
            .flatten()
            .ok_or_else(|| no_space(format!("no free chunk for volume {}", self.name)))?;
        m.in_flight.insert(phys);
        Ok(Plan::Fresh { phys, source })
    }

    fn map_done(&self, chunk: u64, phys: u64, io_seq: u64, into: Option<LayerId>) -> Result<()> {
        let mut m = self.pool.meta.lock();
        m.in_flight.remove(&phys);
        let live = self.live_layer(&m)?;
        // A rebuilt snapshot's content is history: it says nothing about
        // which live writes this replica completed.
        let dest = match into {
            Some(layer) => layer,
            None => {
                m.note_written(self.id, io_seq);
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
    pub(super) async fn write_locked(
        &self,
        chunk: u64,
        off: u64,
        data: &[u8],
        io_seq: u64,
        into: Option<LayerId>,
        promise: Option<&Promise<'_>>,
    ) -> Result<()> {
        let plan = match self.plan_write(chunk, into, promise) {
            Err(e) if e.kind() == ErrorKind::NoSpace && self.pool.meta.lock().frees_pending() => {
                // Chunks freed by an uncommitted unmap come back once the
                // commit is durable.
                self.pool.flush_all().await?;
                self.plan_write(chunk, into, promise)?
            }
            other => other?,
        };
        match plan {
            Plan::InPlace(p) if into.is_none() => {
                self.write_phys(p, chunk, off, data).await?;
                let mut m = self.pool.meta.lock();
                let layer = self.live_layer(&m)?;
                m.overwritten(&Overwrite {
                    volume: self.id,
                    layer,
                    chunk,
                    phys: p,
                    io_seq,
                    // The caller tracks live writes for a rebuild; a
                    // rebuild's own are not live.
                    track: None,
                });
                Ok(())
            }
            Plan::InPlace(p) => {
                self.write_phys(p, chunk, off, data).await?;
                self.map_done(chunk, p, io_seq, into)
            }
            Plan::Fresh { phys, source } => {
                let chunk_bytes = self.chunk_bytes();
                let full = off == 0 && data.len() as u64 == chunk_bytes;
                let res = async {
                    let n = usize::try_from(chunk_bytes).map_err(|_| invalid("chunk"))?;
                    let mut buf = vec![0u8; n];
                    if let (false, Some(src)) = (full, source) {
                        let written = Some((off, data.len() as u64));
                        self.read_phys_keeping(src, chunk, 0, &mut buf, written)
                            .await?;
                    }
                    let from = usize::try_from(off).map_err(|_| invalid("offset"))?;
                    buf.get_mut(from..from + data.len())
                        .ok_or_else(|| invalid("piece outside its chunk"))?
                        .copy_from_slice(data);
                    self.write_phys(phys, chunk, 0, &buf).await
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
        let offset = chunk * self.chunk_bytes() + off;
        self.pool
            .meta
            .lock()
            .track(self.id, offset, len as u64, io_seq);
    }

    /// The write of `data` at `offset` when it lies within one chunk the
    /// live layer owns: one metadata-lock acquisition (checks, lookup),
    /// the data write in place, then the hand-over of the overwrite
    /// (`MetaLock::overwritten`). False, having changed nothing, for any
    /// other write. The caller holds the structure lock shared.
    async fn overwrite(&self, offset: u64, data: &[u8], io_seq: u64) -> Result<bool> {
        let chunk_bytes = self.chunk_bytes();
        let len = data.len() as u64;
        let (chunk, off) = (offset / chunk_bytes, offset % chunk_bytes);
        if len == 0 || off.checked_add(len).is_none_or(|end| end > chunk_bytes) {
            return Ok(false);
        }
        self.pool.check_usable()?;
        let _g = self.pool.locks.exclusive(self.id, chunk).await;
        let (layer, phys) = {
            let m = self.pool.meta.lock();
            let (live, size) = self.usable_locked(&m)?;
            self.check_range(size, offset, len)?;
            let owned = m
                .state
                .layers
                .get(&live)
                .and_then(|l| l.map.get(chunk))
                .and_then(|e| match e.target {
                    Target::Data(p) => Some(p),
                    Target::Zero => None,
                });
            let Some(phys) = owned else {
                return Ok(false);
            };
            // What `promise` checks of a write that needs no fresh chunk.
            self.pool.admit(&m.state, 0, 0)?;
            (live, phys)
        };
        self.write_phys(phys, chunk, off, data).await?;
        self.pool.meta.overwritten(Overwrite {
            volume: self.id,
            layer,
            chunk,
            phys,
            io_seq,
            track: Some((offset, len)),
        });
        Ok(true)
    }

    /// `usable` for a caller holding the metadata lock (`m`): the volume
    /// and its poison; returns (live layer, size). The pool's own state
    /// (closed, poisoned) is the caller's to check.
    pub(super) fn usable_locked(&self, m: &Meta) -> Result<(LayerId, u64)> {
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
        let mut bad = Vec::new();
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
                Some(Target::Data(phys)) => {
                    match self.read_phys(phys, p.chunk, p.off, out).await {
                        // Every bad block of the request is named at once.
                        Err(e) if e.kind() == ErrorKind::Checksum => {
                            bad.extend_from_slice(e.bad_ranges());
                        }
                        other => other?,
                    }
                }
                _ => out.fill(0),
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(checksum_error(self.ctx("read", offset), bad))
        }
    }

    /// Writes `data` at `offset` as the target's write `io_seq`.
    pub async fn write(&self, offset: u64, data: &[u8], io_seq: u64) -> Result<()> {
        let _s = self.pool.structure.read().await;
        if self.overwrite(offset, data, io_seq).await? {
            return Ok(());
        }
        let (_, size) = self.usable()?;
        self.check_range(size, offset, data.len() as u64)?;
        // All or nothing when space runs out: every fresh chunk the write
        // needs is promised before its first piece lands.
        let promise = self.promise(offset, data.len() as u64, Need::Write).await?;
        for p in pieces(offset, data.len() as u64, self.chunk_bytes()) {
            let _g = self.pool.locks.exclusive(self.id, p.chunk).await;
            let piece = data
                .get(p.buf_off..p.buf_off + p.len)
                .ok_or_else(|| invalid("piece"))?;
            self.write_locked(p.chunk, p.off, piece, io_seq, None, Some(&promise))
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
        // All or nothing when space runs out, as a write: a partial chunk
        // zeroed through copy-on-write needs a fresh chunk, promised
        // before the first piece changes anything.
        let promise = self.promise(offset, len, Need::Zero).await?;
        for p in pieces(offset, len, self.chunk_bytes()) {
            let _g = self.pool.locks.exclusive(self.id, p.chunk).await;
            self.zero_locked(p.chunk, p.off, p.len, io_seq, &promise)
                .await?;
            self.track(p.chunk, p.off, p.len, io_seq);
        }
        Ok(())
    }

    async fn zero_locked(
        &self,
        chunk: u64,
        off: u64,
        len: usize,
        io_seq: u64,
        promise: &Promise<'_>,
    ) -> Result<()> {
        let full = off == 0 && len as u64 == self.chunk_bytes();
        let plan = {
            let mut m = self.pool.meta.lock();
            let live = self.live_layer(&m)?;
            m.note_written(self.id, io_seq);
            match zero_step(&m, live, chunk, full)? {
                ZeroStep::Tombstone { new_entry } => {
                    if new_entry {
                        self.pool.admit(&m.state, 1, 0)?;
                    }
                    ZeroPlan::Record(Record::Zero {
                        layer: live,
                        chunk,
                        io_seq,
                    })
                }
                ZeroStep::Zeros { .. } => ZeroPlan::WriteZeros,
                ZeroStep::Nothing => ZeroPlan::Nothing,
            }
        };
        match plan {
            ZeroPlan::Nothing => Ok(()),
            ZeroPlan::Record(r) => self.pool.meta.lock().record(r),
            ZeroPlan::WriteZeros => {
                let zeros = vec![0u8; len];
                self.write_locked(chunk, off, &zeros, io_seq, None, Some(promise))
                    .await
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

    /// Undoes a grow: the volume's size drops to `size_bytes`, durably
    /// (FORMAT.md "Undoing a grow"). Refused with `InvalidArgument` when
    /// anything but zeros lies beyond it, in the volume or in a snapshot
    /// it reads through: a shrink never discards data, and a later grow
    /// over the same range reads zeros. The same or a larger size changes
    /// nothing (a grow is [`crate::Pool::grow_volume`]'s).
    pub async fn shrink(&self, size_bytes: u64) -> Result<()> {
        let _s = self.pool.structure.write().await;
        let (live, size) = self.usable()?;
        if size_bytes >= size {
            return Ok(());
        }
        let chunk_bytes = self.chunk_bytes();
        let beyond = |what: String| {
            invalid(format!(
                "volume {} cannot shrink from {size} to {size_bytes} bytes: {what} lies beyond",
                self.name
            ))
        };
        let tail = {
            let m = self.pool.meta.lock();
            let first_whole = size_bytes.div_ceil(chunk_bytes);
            for layer in m.state.chain(live) {
                let l = m
                    .state
                    .layers
                    .get(&layer)
                    .ok_or_else(|| not_found(format!("layer {layer}")))?;
                if let Some((chunk, _)) = l
                    .map
                    .iter_from(first_whole)
                    .find(|(_, e)| matches!(e.target, Target::Data(_)))
                {
                    return Err(beyond(format!("data of chunk {chunk} (layer {layer})")));
                }
            }
            let off = size_bytes % chunk_bytes;
            match m.state.resolve(live, size_bytes / chunk_bytes) {
                Some((
                    _,
                    Entry {
                        target: Target::Data(phys),
                        ..
                    },
                )) if off != 0 => Some((phys, off)),
                _ => None,
            }
        };
        if let Some((phys, off)) = tail {
            // The chunk across the new end holds data: what lies past the
            // end must be zeros (it is, unless the volume once held data
            // there at a larger size).
            let len = usize::try_from(chunk_bytes - off).map_err(|_| invalid("chunk"))?;
            let mut rest = vec![0u8; len];
            self.read_phys(phys, size_bytes / chunk_bytes, off, &mut rest)
                .await?;
            if let Some(at) = rest.iter().position(|b| *b != 0) {
                return Err(beyond(format!(
                    "a non-zero byte at {}",
                    size_bytes + at as u64
                )));
            }
        }
        self.pool.meta.lock().record(Record::ShrinkVolume {
            id: self.id,
            size_bytes,
        })?;
        self.pool.flush_all().await
    }
}

/// Fresh chunks promised to one write (`Volume::write`): taken one by one
/// as its pieces allocate; what is left goes back when it is dropped.
pub(super) struct Promise<'a> {
    meta: &'a MetaLock,
    left: std::sync::atomic::AtomicU64,
}

impl Promise<'_> {
    /// One promised chunk is being allocated now (`m` is `meta`, locked).
    fn take_one(&self, m: &mut Meta) {
        use std::sync::atomic::Ordering;
        if self.left.load(Ordering::Relaxed) > 0 {
            self.left.fetch_sub(1, Ordering::Relaxed);
            m.promised = m.promised.saturating_sub(1);
        }
    }
}

impl Drop for Promise<'_> {
    fn drop(&mut self) {
        let left = *self.left.get_mut();
        if left > 0 {
            let mut m = self.meta.lock();
            m.promised = m.promised.saturating_sub(left);
        }
    }
}

impl Volume {
    /// Promises every fresh chunk a write of `len` bytes at `offset` needs
    /// (each piece whose chunk the live layer does not hold as data), or
    /// fails with `NoSpace` having changed nothing. Chunks freed by an
    /// uncommitted unmap are waited for (a commit) before giving up.
    async fn promise(&self, offset: u64, len: u64, need: Need) -> Result<Promise<'_>> {
        for attempt in 0..2 {
            {
                let mut m = self.pool.meta.lock();
                let (needed, entries) = self.fresh_chunks(&m, offset, len, need)?;
                let thick = m.state.volumes.get(&self.id).is_some_and(|v| v.thick);
                let room = if thick {
                    m.state.alloc.free_count()
                } else {
                    m.state.available_chunks()
                };
                if needed == 0 || room.saturating_sub(m.promised) >= needed {
                    self.pool.admit(&m.state, entries, 0)?;
                    m.promised = m.promised.saturating_add(needed);
                    return Ok(Promise {
                        meta: &self.pool.meta,
                        left: std::sync::atomic::AtomicU64::new(needed),
                    });
                }
                if attempt > 0 || !m.frees_pending() {
                    return Err(no_space(format!(
                        "volume {}: {} of {len} bytes at {offset} needs {needed} \
                         free chunks, {} are left",
                        self.name,
                        match need {
                            Need::Write => "a write",
                            Need::Zero => "zeroing",
                        },
                        room.saturating_sub(m.promised)
                    )));
                }
            }
            self.pool.flush_all().await?;
        }
        Err(no_space(format!("volume {}: no free chunk", self.name)))
    }

    /// Fresh chunks `offset..offset+len` needs, and the map entries it may
    /// add. A write allocates for every piece whose chunk the live layer
    /// does not hold as data; zeroing only for a partial piece over data
    /// the live layer does not own (copy-on-write), and adds a tombstone
    /// for a whole chunk it does not own that shows data from below
    /// (`zero_locked`'s plan).
    fn fresh_chunks(&self, m: &Meta, offset: u64, len: u64, need: Need) -> Result<(u64, u64)> {
        let live = self.live_layer(m)?;
        let layer = m
            .state
            .layers
            .get(&live)
            .ok_or_else(|| not_found(format!("layer {live}")))?;
        let (mut fresh, mut entries) = (0u64, 0u64);
        for p in pieces(offset, len, self.chunk_bytes()) {
            let (chunk, entry) = match need {
                Need::Write => {
                    let owned = matches!(
                        layer.map.get(p.chunk),
                        Some(Entry {
                            target: Target::Data(_),
                            ..
                        })
                    );
                    (!owned, !owned)
                }
                Need::Zero => {
                    let full = p.len as u64 == self.chunk_bytes();
                    match zero_step(m, live, p.chunk, full)? {
                        ZeroStep::Tombstone { new_entry } => (false, new_entry),
                        ZeroStep::Zeros { copy } => (copy, copy),
                        ZeroStep::Nothing => (false, false),
                    }
                }
            };
            fresh += u64::from(chunk);
            entries += u64::from(entry);
        }
        Ok((fresh, entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata-lock acquisitions `f` makes on `v`'s pool.
    async fn lock_takes<F: std::future::Future<Output = Result<()>>>(v: &Volume, f: F) -> u64 {
        use std::sync::atomic::Ordering;
        let before = v.pool.meta.taken.load(Ordering::Relaxed);
        f.await.unwrap();
        v.pool.meta.taken.load(Ordering::Relaxed) - before
    }

    #[tokio::test]
    async fn an_overwrite_of_an_owned_chunk_takes_the_metadata_lock_once() {
        use crate::io::MemDevice;
        use crate::{Pool, PoolOptions, Provisioning};
        let opts = PoolOptions {
            chunk_bytes: 65536,
            commit_interval: None,
            ..PoolOptions::default()
        };
        let dev: crate::DeviceRef = std::sync::Arc::new(MemDevice::new(8 << 20));
        let pool = Pool::create(vec![dev], &opts).await.unwrap();
        let v = pool
            .create_volume("v", 1 << 20, 4096, Provisioning::Thin)
            .await
            .unwrap();
        let data = vec![7u8; 4096];
        // The first write allocates (the ordinary path, several).
        assert!(lock_takes(&v, v.write(0, &data, 1)).await > 1);
        for seq in 2..20u64 {
            let off = (seq % 16) * 4096;
            assert_eq!(lock_takes(&v, v.write(off, &data, seq)).await, 1);
        }
        // Whoever takes the lock next sees the overwrites.
        assert_eq!(v.live_chunk_io_seq(0).unwrap(), 19);
        // A rebuild tracking live writes sees them too, at no extra cost.
        v.begin_rebuild().unwrap();
        assert_eq!(lock_takes(&v, v.write(4096, &data, 20)).await, 1);
        v.apply_rebuild(4096, &[1u8; 4096], &[20]).await.unwrap();
        let mut got = vec![0u8; 4096];
        v.read(4096, &mut got).await.unwrap();
        assert_eq!(got, data, "a rebuilt block overwrote a live write as new");
        v.end_rebuild();
    }

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
