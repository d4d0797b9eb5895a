//! Commit: how metadata becomes durable, and journal replay on open.
//!
//! Protocol (FORMAT.md "Commit"), one commit at a time under the commit
//! mutex, shared by every flush waiting for it (group commit):
//! 1. under the metadata lock, take the pending records, one `Map` record
//!    per chunk overwritten in place since the last commit (carrying its
//!    latest io_seq: FORMAT.md "Coalesced overwrites"), and the chunks they
//!    free (and, when checkpointing, take an image of the whole state,
//!    which holds the overwrites' io_seqs: their records are then dropped
//!    with the others, never lost nor applied twice; the image shares the
//!    maps' leaves copy-on-write and is encoded after the lock is released,
//!    so a large checkpoint does not stall writes);
//! 2. fdatasync every device — all data whose mapping or io_seq is in the
//!    taken records was written before its record existed, so it is now
//!    durable;
//! 3. append the records as one checksummed journal batch and fdatasync
//!    device 0 — or write a checkpoint to the unused region, fdatasync,
//!    write the next superblock slot, fdatasync;
//! 4. only now hand the freed chunks back to the allocator (a chunk is never
//!    reused before the commit that frees it is durable).
//!
//! Any write or sync error in 2–3 poisons the pool (never retry fsync). A
//! timer task commits at least every `commit_interval` without a flush.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use crate::error::{corrupt, invalid, Error, ErrorKind, Result};
use crate::format::codec::Writer;
use crate::format::journal::{encode_batch, BatchHeader, BATCH_HEADER_BYTES};
use crate::format::superblock::Superblock;
use crate::format::{crc, round_up, META_BLOCK_BYTES};
use crate::io::AlignedBuf;
use crate::limits::DIRTY_REGION_QUIET_COMMITS;
use crate::meta::checkpoint;
use crate::meta::record::{Record, VolumeId};
use crate::meta::state::{Mode, State};
use crate::pool::{format_err, to_usize, DeviceRef, PoolInner};

pub(crate) struct CommitState {
    pub(crate) sb: Superblock,
    pub(crate) journal_pos: u64,
    pub(crate) next_seq: u64,
    pub(crate) durable_change: u64,
}

pub(crate) async fn write_all(dev: &DeviceRef, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let (res, _) = dev.write_at(AlignedBuf::from_slice(bytes), offset).await;
    res
}

pub(crate) async fn read_exact(dev: &DeviceRef, offset: u64, len: usize) -> io::Result<AlignedBuf> {
    let (res, buf) = dev.read_at(AlignedBuf::zeroed(len), offset).await;
    res.map(|()| buf)
}

/// Spawns the group-commit timer on the current runtime (none outside one);
/// it holds the pool only weakly and only while committing.
pub(crate) fn spawn_timer(
    pool: Weak<PoolInner>,
    interval: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let task = rt.spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(p) = pool.upgrade() else { break };
            if p.closed.load(Ordering::SeqCst) || p.poison.lock().is_some() {
                break;
            }
            if let Err(e) = p.flush_all().await {
                tracing::warn!(error = %e, "timed commit failed");
            }
        }
    });
    Some(task)
}

pub(crate) fn pad(bytes: &[u8]) -> Result<Vec<u8>> {
    let len = round_up(bytes.len() as u64, META_BLOCK_BYTES).ok_or_else(|| invalid("size"))?;
    let mut v = bytes.to_vec();
    v.resize(to_usize(len)?, 0);
    Ok(v)
}

/// Replays journal batches after the checkpoint; returns the byte position
/// after the last valid batch and how many were applied.
pub(crate) async fn replay(
    dev0: &DeviceRef,
    sb: &Superblock,
    state: &mut State,
) -> Result<(u64, u64)> {
    let journal = read_exact(dev0, sb.journal.offset, to_usize(sb.journal.len_bytes)?)
        .await
        .map_err(|e| Error::io("read journal", e))?;
    let bytes = journal.as_slice();
    let mut pos = 0u64;
    let mut seq = sb.journal_seq;
    let mut batches = 0u64;
    while let Some(rest) = bytes.get(to_usize(pos)?..) {
        let Ok(h) = BatchHeader::decode(rest) else {
            break;
        };
        if h.pool_guid != sb.pool_guid || h.sb_generation != sb.generation || h.seq != seq {
            break;
        }
        let Some(len) = h.padded_len() else { break };
        if pos
            .checked_add(len)
            .is_none_or(|end| end > sb.journal.len_bytes)
        {
            break;
        }
        let Ok(payload) = h.check_payload(rest.get(BATCH_HEADER_BYTES..).unwrap_or(&[])) else {
            break;
        };
        let mut r = crate::format::codec::Reader::new(payload);
        for _ in 0..h.record_count {
            let rec = crate::meta::record::Record::decode(&mut r)
                .map_err(|e| format_err(&format!("journal batch {seq}"), e))?;
            let freed = state
                .apply(&rec, Mode::Replay)
                .map_err(|e| corrupt(format!("journal batch {seq}: {e}")))?;
            for p in freed {
                state.alloc.release(p);
            }
        }
        pos += len;
        seq += 1;
        batches += 1;
    }
    Ok((pos, batches))
}

impl PoolInner {
    /// Commits if anything changed since the last durable commit, sharing a
    /// commit with concurrent callers (group commit).
    pub(crate) async fn flush_all(&self) -> Result<()> {
        let target = self.meta.lock().change;
        let mut cs = self.commit.lock().await;
        if cs.durable_change >= target {
            // Nothing to commit; dirty regions may still be cleaned.
            if self.integrity.as_ref().is_some_and(|i| i.has_dirty()) {
                return self.commit_locked(&mut cs, false).await;
            }
            return self.check_usable();
        }
        self.commit_locked(&mut cs, false).await
    }

    pub(crate) async fn commit(&self, checkpoint: bool) -> Result<()> {
        let mut cs = self.commit.lock().await;
        self.commit_locked(&mut cs, checkpoint).await
    }

    /// Writes a checkpoint now, cleaning dirty regions as any commit does
    /// (only those quiet for `DIRTY_REGION_QUIET_COMMITS`): unlike open,
    /// close and add-device, the pool keeps running, and cleaning every
    /// region would make the next write into each pay a bitmap sync.
    pub(crate) async fn checkpoint_running(&self) -> Result<()> {
        let mut cs = self.commit.lock().await;
        self.commit_with(&mut cs, true, DIRTY_REGION_QUIET_COMMITS)
            .await
    }

    /// A commit; `force_checkpoint` (open, close, add device) writes a
    /// checkpoint and cleans every dirty region with no write running.
    pub(crate) async fn commit_locked(
        &self,
        cs: &mut CommitState,
        force_checkpoint: bool,
    ) -> Result<()> {
        // Regions quiet now may be cleaned once this commit is durable
        // (FORMAT.md "Block checksums"); a forced checkpoint cleans every
        // quiet one.
        let quiet = if force_checkpoint {
            0
        } else {
            DIRTY_REGION_QUIET_COMMITS
        };
        self.commit_with(cs, force_checkpoint, quiet).await
    }

    /// A commit that cleans the dirty regions without a write in the last
    /// `quiet` commits.
    async fn commit_with(
        &self,
        cs: &mut CommitState,
        force_checkpoint: bool,
        quiet: u64,
    ) -> Result<()> {
        if let Some(p) = self.poison.lock().as_ref() {
            return Err(Error::new(ErrorKind::Poisoned, format!("pool: {p}")));
        }
        let ticket = self.integrity.as_ref().map(|i| i.begin_commit(quiet));
        let taken = {
            let mut m = self.meta.lock();
            m.take_coalesced();
            let seqs: Vec<(VolumeId, u64)> = m
                .state
                .volumes
                .values()
                .map(|v| (v.id, v.max_io_seq))
                .collect();
            for (id, s) in &seqs {
                if m.recorded_seq.get(id).copied().unwrap_or(0) != *s {
                    m.pending.push(Record::VolumeSeq {
                        volume: *id,
                        io_seq: *s,
                    });
                    m.recorded_seq.insert(*id, *s);
                }
            }
            if m.pending.is_empty() && m.pending_free.is_empty() && !force_checkpoint {
                cs.durable_change = cs.durable_change.max(m.change);
                None
            } else {
                let records = std::mem::take(&mut m.pending);
                let frees = std::mem::take(&mut m.pending_free);
                let mut w = Writer::new();
                for r in &records {
                    r.encode(&mut w);
                }
                let payload = w.into_vec();
                let batch = (BATCH_HEADER_BYTES + payload.len()) as u64;
                let end = round_up(batch, META_BLOCK_BYTES)
                    .and_then(|b| b.checked_add(cs.journal_pos))
                    .unwrap_or(u64::MAX);
                let checkpoint = force_checkpoint || end > cs.sb.journal.len_bytes / 2;
                let ck = checkpoint.then(|| checkpoint::Image::of(&m.state));
                Some(((records.len(), payload), frees, m.change, ck, seqs))
            }
        };
        let Some((records, frees, change, ck, seqs)) = taken else {
            return self.clean_regions(ticket).await;
        };
        let devs = self.devices.read().devs.clone();
        for (i, d) in devs.iter().enumerate() {
            if let Err(e) = d.sync_data().await {
                let why = format!("fdatasync of device {i} failed: {e}");
                self.poison_pool(why.clone());
                return Err(Error::new(ErrorKind::Poisoned, why));
            }
        }
        let dev0 = devs
            .first()
            .cloned()
            .ok_or_else(|| corrupt("no device 0"))?;
        if let Some(i) = &self.integrity {
            // The checksums of the data just synced go out with the
            // metadata: the sync below covers both.
            if let Err(e) = i.write_pages(&dev0).await {
                let why = e.to_string();
                self.poison_pool(why.clone());
                return Err(Error::new(ErrorKind::Poisoned, why));
            }
        }
        let res = match ck {
            Some(image) => {
                self.checkpoints.fetch_add(1, Ordering::Relaxed);
                let bytes = image.encode();
                drop(image);
                self.write_checkpoint(cs, &dev0, &bytes).await
            }
            None => self.append_batch(cs, &dev0, records.0, &records.1).await,
        };
        if let Err(why) = res {
            self.poison_pool(why.clone());
            return Err(Error::new(ErrorKind::Poisoned, why));
        }
        for p in &frees {
            if let Ok((dev, off)) = self.locate(*p) {
                // Advisory (thin backing gets its space back); ignore errors.
                let _ = dev.discard(off, u64::from(self.chunk_bytes)).await;
            }
        }
        {
            let mut m = self.meta.lock();
            for p in frees {
                m.state.alloc.release(p);
            }
            for (id, s) in seqs {
                if let Some(rt) = m.vols.get_mut(&id) {
                    rt.durable_io_seq = s;
                }
            }
        }
        cs.durable_change = change;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.finish_regions(ticket, &dev0).await
    }

    /// Cleans the regions `ticket` found quiet, the commit being durable.
    async fn finish_regions(
        &self,
        ticket: Option<crate::integrity::CommitTicket>,
        dev0: &DeviceRef,
    ) -> Result<()> {
        let (Some(i), Some(ticket)) = (&self.integrity, ticket) else {
            return Ok(());
        };
        if let Err(e) = i.finish_commit(ticket, dev0).await {
            let why = e.to_string();
            self.poison_pool(why.clone());
            return Err(Error::new(ErrorKind::Poisoned, why));
        }
        Ok(())
    }

    /// A commit with no metadata to write still cleans quiet regions: it
    /// syncs the data, writes and syncs their checksums, then clears their
    /// bits.
    async fn clean_regions(&self, ticket: Option<crate::integrity::CommitTicket>) -> Result<()> {
        let Some(ticket) = ticket.filter(|t| !t.is_empty()) else {
            return Ok(());
        };
        let devs = self.devices.read().devs.clone();
        for (i, d) in devs.iter().enumerate() {
            if let Err(e) = d.sync_data().await {
                let why = format!("fdatasync of device {i} failed: {e}");
                self.poison_pool(why.clone());
                return Err(Error::new(ErrorKind::Poisoned, why));
            }
        }
        let dev0 = devs
            .first()
            .cloned()
            .ok_or_else(|| corrupt("no device 0"))?;
        if let Some(i) = &self.integrity {
            let res = match i.write_pages(&dev0).await {
                Ok(()) => dev0
                    .sync_data()
                    .await
                    .map_err(|e| format!("checksum area fdatasync failed: {e}")),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = res {
                self.poison_pool(why.clone());
                return Err(Error::new(ErrorKind::Poisoned, why));
            }
        }
        self.finish_regions(Some(ticket), &dev0).await
    }

    async fn append_batch(
        &self,
        cs: &mut CommitState,
        dev0: &DeviceRef,
        count: usize,
        payload: &[u8],
    ) -> std::result::Result<(), String> {
        let count = u32::try_from(count).map_err(|_| "too many records".to_string())?;
        let bytes = encode_batch(self.guid, cs.sb.generation, cs.next_seq, count, payload);
        let off = cs.sb.journal.offset + cs.journal_pos;
        write_all(dev0, off, &bytes)
            .await
            .map_err(|e| format!("journal write failed: {e}"))?;
        dev0.sync_data()
            .await
            .map_err(|e| format!("journal fdatasync failed: {e}"))?;
        cs.journal_pos += bytes.len() as u64;
        cs.next_seq += 1;
        self.journal_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.journal_records
            .fetch_add(u64::from(count), Ordering::Relaxed);
        Ok(())
    }

    async fn write_checkpoint(
        &self,
        cs: &mut CommitState,
        dev0: &DeviceRef,
        bytes: &[u8],
    ) -> std::result::Result<(), String> {
        let slot = 1 - cs.sb.active_checkpoint.min(1);
        let region = cs.sb.checkpoints[usize::from(slot)];
        if bytes.len() as u64 > region.len_bytes {
            return Err(format!(
                "checkpoint of {} bytes exceeds its {}-byte region",
                bytes.len(),
                region.len_bytes
            ));
        }
        let padded = pad(bytes).map_err(|e| e.to_string())?;
        write_all(dev0, region.offset, &padded)
            .await
            .map_err(|e| format!("checkpoint write failed: {e}"))?;
        self.checkpoint_bytes
            .fetch_add(padded.len() as u64, Ordering::Relaxed);
        dev0.sync_data()
            .await
            .map_err(|e| format!("checkpoint fdatasync failed: {e}"))?;
        let mut sb = cs.sb.clone();
        sb.generation += 1;
        sb.active_checkpoint = slot;
        sb.checkpoint_len = bytes.len() as u64;
        sb.checkpoint_crc = crc(bytes);
        sb.journal_seq = cs.next_seq;
        sb.devices = self.devices.read().space.entries().to_vec();
        write_all(dev0, Superblock::slot_offset(sb.slot()), &sb.encode())
            .await
            .map_err(|e| format!("superblock write failed: {e}"))?;
        dev0.sync_data()
            .await
            .map_err(|e| format!("superblock fdatasync failed: {e}"))?;
        cs.sb = sb;
        cs.journal_pos = 0;
        Ok(())
    }
}
