//! The oracle of block semantics and durability: what every READ may
//! return, block by block.
//!
//! Every write of the workload gets a unique id and every block it writes
//! a self-describing content ([`block_content`]): the id, the block's LBA
//! (or a WRITE SAME marker) and filler derived from both, so a read tells
//! exactly which write each block came from, and a torn block, a block of
//! another LBA or of another command's data is detected.
//!
//! A write `w` of a block is *allowed* for a read issued at `s` and
//! answered at `e` when it was issued before `e` and no write `w2` of the
//! block *dominates* it: `w2` was acknowledged GOOD before `s`, was issued
//! after `w` ended (`w` answered, or its target-side work finished,
//! whichever is known: a failed or aborted write may still have landed
//! until then), and `w2` cannot have been lost since: no replica lost
//! power between `w2`'s issue (a replica may take it, lose power, and
//! the GOOD reach the initiator after the cut) and `e`, unless `w2` was durable
//! (FUA, or a SYNCHRONIZE CACHE acknowledged after it was issued after `w2`
//! was acknowledged) before that power cut. A replica killed without a
//! power cut loses the same (its pool's uncommitted metadata dies with the
//! process: docs/failure-behaviour.md, "a crash loses what SYNCHRONIZE
//! CACHE or FUA had not made durable"). So acknowledged writes are never
//! older than what a read returns, durable writes survive every crash, and
//! the value 0 (never written, unmapped, zeroed) is a write like any other.
//!
//! Torn blocks: a power cut may tear a pool's last unsynced device write
//! at [`SECTOR`] granularity (engine/FORMAT.md: only metadata is never
//! torn). Only a replica with no healthy peer serves that: any other is
//! degraded and rebuilt (invariant 6), the only one carries on from what it
//! holds, as a disk after a power loss (docs/failure-behaviour.md). After
//! such a cut a block may hold, sector by sector, the content of writes it
//! may hold whole, if one of them was not durable at the cut.

use std::collections::BTreeMap;

/// Logical block size of the simulated unit.
pub const BLOCK: usize = 4096;
const MAGIC: u32 = 0x5349_4d42; // "SIMB"
/// The LBA field of a WRITE SAME block (the same content at every LBA).
pub const SAME_LBA: u32 = u32::MAX;
/// What a power cut tears a device write into (the engine's `CrashDevice`:
/// the sector size disks write atomically).
pub const SECTOR: usize = 512;

/// The content write `id` puts in a block (`lba_tag`: the LBA, or
/// [`SAME_LBA`]). Id 0 is the zero block.
pub fn block_content(id: u64, lba_tag: u32) -> Vec<u8> {
    let mut out = vec![0u8; BLOCK];
    if id == 0 {
        return out;
    }
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..12].copy_from_slice(&id.to_le_bytes());
    out[12..16].copy_from_slice(&lba_tag.to_le_bytes());
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(lba_tag).rotate_left(29) ^ 1;
    for word in out[16..].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    out
}

/// Which write a block read holds: `Ok((id, lba_tag))`, or why it is
/// nobody's write.
pub fn decode_block(block: &[u8], lba: u64) -> Result<u64, String> {
    if block.len() != BLOCK {
        return Err(format!("block of {} bytes", block.len()));
    }
    if block.iter().all(|b| *b == 0) {
        return Ok(0);
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&block[r]);
        u64::from_le_bytes(b)
    };
    if word(0..4) != u64::from(MAGIC) {
        return Err("content nobody wrote (no block header)".into());
    }
    let id = word(4..12);
    let tag = word(12..16) as u32;
    if tag != SAME_LBA && u64::from(tag) != lba {
        return Err(format!("block of LBA {tag} (write {id}) read at LBA {lba}"));
    }
    if block_content(id, tag) != block {
        return Err(format!("torn or corrupt block of write {id}"));
    }
    Ok(id)
}

/// One write of one block, as the oracle knows it.
#[derive(Debug, Clone)]
struct Rec {
    /// The value it leaves: its write id, or 0 for a zeroing.
    id: u64,
    /// The command that wrote it.
    cmd: u64,
    issued: u64,
    /// When it can no longer land (answered and its target-side work over).
    ended: Option<u64>,
    acked: Option<u64>,
    durable: Option<u64>,
}

/// The history of every block, the power cuts, and the open commands.
#[derive(Debug, Default)]
pub struct Model {
    blocks: BTreeMap<u64, Vec<Rec>>,
    /// Times at which a replica crashed (power cut or killed).
    power_cuts: Vec<u64>,
    /// Times of the power cuts that may have left a torn block a replica
    /// then serves (module doc).
    tearing_cuts: Vec<u64>,
    /// Writes by id: their blocks (for ends, acks and durability).
    writes: BTreeMap<u64, Vec<u64>>,
    /// Acknowledged, not yet durable writes (for SYNCHRONIZE CACHE).
    volatile: BTreeMap<u64, u64>,
    next_id: u64,
}

impl Model {
    pub fn new() -> Self {
        Model {
            next_id: 1,
            ..Model::default()
        }
    }

    fn history(&mut self, lba: u64) -> &mut Vec<Rec> {
        self.blocks.entry(lba).or_insert_with(|| {
            vec![Rec {
                id: 0,
                cmd: 0,
                issued: 0,
                ended: Some(0),
                acked: Some(0),
                durable: Some(0),
            }]
        })
    }

    /// A new write (or unmap/zeroing, `zero`: its blocks become id 0 —
    /// then the id only names the command) of `lbas` issued at `now`;
    /// returns its id.
    pub fn issue_write(&mut self, now: u64, lbas: &[u64], zero: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        for &lba in lbas {
            let rec = Rec {
                id: if zero { 0 } else { id },
                cmd: id,
                issued: now,
                ended: None,
                acked: None,
                durable: None,
            };
            self.history(lba).push(rec);
        }
        self.writes.insert(id, lbas.to_vec());
        id
    }

    fn recs_of(&mut self, id: u64) -> Vec<(u64, usize)> {
        let Some(lbas) = self.writes.get(&id).cloned() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for lba in lbas {
            if let Some(h) = self.blocks.get(&lba) {
                if let Some(i) = h.iter().rposition(|r| r.cmd == id) {
                    out.push((lba, i));
                }
            }
        }
        out
    }

    /// The write was answered GOOD at `now` (`fua`: durable too).
    pub fn ack_write(&mut self, id: u64, now: u64, fua: bool) {
        for (lba, i) in self.recs_of(id) {
            if let Some(r) = self.blocks.get_mut(&lba).and_then(|h| h.get_mut(i)) {
                r.acked = Some(now);
                r.ended = Some(now);
                if fua {
                    r.durable = Some(now);
                }
            }
        }
        if !fua {
            self.volatile.insert(id, now);
        }
        self.writes.remove(&id);
    }

    /// The write failed or was aborted; it may have landed until `ended`.
    pub fn end_write(&mut self, id: u64, ended: u64) {
        for (lba, i) in self.recs_of(id) {
            if let Some(r) = self.blocks.get_mut(&lba).and_then(|h| h.get_mut(i)) {
                r.ended = Some(ended);
            }
        }
        self.writes.remove(&id);
    }

    /// A SYNCHRONIZE CACHE issued at `issued` was acknowledged at `now`:
    /// every write acknowledged before `issued` is durable.
    pub fn flushed(&mut self, issued: u64, now: u64) {
        let ids: Vec<u64> = self
            .volatile
            .iter()
            .filter(|(_, acked)| **acked < issued)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.volatile.remove(id);
        }
        let ids: std::collections::BTreeSet<u64> = ids.into_iter().collect();
        for h in self.blocks.values_mut() {
            for r in h.iter_mut() {
                if r.durable.is_none()
                    && r.acked.is_some_and(|a| a < issued)
                    && ids.contains(&r.cmd)
                {
                    r.durable = Some(now);
                }
            }
        }
    }

    /// A replica crashed at `now` (lost power, or its process was killed:
    /// either way what its pool had not committed is gone); `tears`: the
    /// crash may have torn a block it will serve (module doc).
    pub fn power_cut(&mut self, now: u64, tears: bool) {
        self.power_cuts.push(now);
        if tears {
            self.tearing_cuts.push(now);
        }
    }

    /// May a crash before `until` have lost `w2`? Any crash after it was
    /// issued may have (a replica can take it, lose power, and the target's
    /// GOOD reach the initiator only after the cut), unless it was durable
    /// by then.
    fn lost_maybe(&self, w2: &Rec, until: u64) -> bool {
        if w2.acked.is_none() {
            return true;
        }
        self.power_cuts
            .iter()
            .any(|&t| t > w2.issued && t < until && w2.durable.is_none_or(|d| d > t))
    }

    /// The write ids block `lba` may hold for a read issued at `s` and
    /// answered at `e`.
    pub fn allowed(&self, lba: u64, s: u64, e: u64) -> Vec<u64> {
        self.recs_allowed(lba, s, e, e)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// The records block `lba` may hold for a read issued at `s` and
    /// answered at `e`, with crashes until `lost_until` (after `e` for a
    /// snapshot asked for at `s = e` and taken later) able to lose a write;
    /// each with whether a power cut may have torn it.
    fn recs_allowed(&self, lba: u64, s: u64, e: u64, lost_until: u64) -> Vec<(u64, bool)> {
        let zero = [Rec {
            id: 0,
            cmd: 0,
            issued: 0,
            ended: Some(0),
            acked: Some(0),
            durable: Some(0),
        }];
        let h: &[Rec] = self.blocks.get(&lba).map_or(&zero, |h| h.as_slice());
        h.iter()
            .filter(|r| r.issued < e)
            .filter(|r| {
                !h.iter().any(|w2| {
                    w2.acked.is_some_and(|a| a < s)
                        && r.ended.is_some_and(|end| w2.issued > end)
                        && !self.lost_maybe(w2, lost_until)
                })
            })
            .map(|r| {
                let torn = self
                    .tearing_cuts
                    .iter()
                    .any(|&t| t > r.issued && t < lost_until && r.durable.is_none_or(|d| d > t));
                (r.id, torn)
            })
            .collect()
    }

    /// Checks one block of a read; `Err` names what is wrong.
    pub fn check_block(&self, lba: u64, block: &[u8], s: u64, e: u64) -> Result<(), String> {
        self.check_between(lba, block, s, e, e)
    }

    /// Checks one block of a snapshot asked for at `asked` and taken
    /// (acknowledged) at `taken`: it holds what a read at `asked` could,
    /// except what a crash before `taken` lost.
    pub fn check_snapshot_block(
        &self,
        lba: u64,
        block: &[u8],
        asked: u64,
        taken: u64,
    ) -> Result<(), String> {
        self.check_between(lba, block, asked, asked, taken)
    }

    fn check_between(
        &self,
        lba: u64,
        block: &[u8],
        s: u64,
        e: u64,
        lost_until: u64,
    ) -> Result<(), String> {
        let recs = self.recs_allowed(lba, s, e, lost_until);
        let id = match decode_block(block, lba) {
            Ok(id) => id,
            Err(_) if torn_of(block, lba, &recs) => return Ok(()),
            Err(e) => {
                // Whose each sector is, among every write the block had.
                let mut ids: Vec<u64> = self
                    .blocks
                    .get(&lba)
                    .map(|h| h.iter().map(|r| r.id).collect())
                    .unwrap_or_default();
                ids.push(0);
                let sectors: Vec<String> = block
                    .chunks(SECTOR)
                    .enumerate()
                    .map(|(k, sector)| {
                        let range = k * SECTOR..(k + 1) * SECTOR;
                        ids.iter()
                            .find(|id| {
                                [lba as u32, SAME_LBA].iter().any(|tag| {
                                    block_content(**id, *tag).get(range.clone()) == Some(sector)
                                })
                            })
                            .map_or("?".into(), |id| id.to_string())
                    })
                    .collect();
                return Err(format!(
                    "{e} (sectors from writes {sectors:?}; may hold {recs:?} as (write, torn))"
                ));
            }
        };
        if recs.iter().any(|(r, _)| *r == id) {
            Ok(())
        } else {
            let allowed: Vec<u64> = recs.iter().map(|(r, _)| *r).collect();
            Err(format!(
                "LBA {lba} holds write {id}, but a read issued at {s} µs and answered at {e} µs may only see writes {allowed:?}"
            ))
        }
    }

    /// Forgets history no read can need any more: records dominated for
    /// every read issued at or after `oldest_open` (the oldest command
    /// still open) by a durable acknowledged write.
    pub fn prune(&mut self, oldest_open: u64) {
        for h in self.blocks.values_mut() {
            if h.len() < 24 {
                continue;
            }
            let dominators: Vec<(u64, u64)> = h
                .iter()
                .filter(|w2| w2.durable.is_some_and(|d| d < oldest_open))
                .filter_map(|w2| w2.acked.map(|a| (a, w2.issued)))
                .filter(|(a, _)| *a < oldest_open)
                .collect();
            h.retain(|r| {
                !dominators
                    .iter()
                    .any(|(_, issued)| r.ended.is_some_and(|end| *issued > end))
            });
        }
    }

    pub fn writes_issued(&self) -> u64 {
        self.next_id - 1
    }
}

/// Is `block` a tear of the allowed writes `recs` (module doc): one of them
/// may be torn, and every sector holds that sector of one of them?
fn torn_of(block: &[u8], lba: u64, recs: &[(u64, bool)]) -> bool {
    if block.len() != BLOCK || !recs.iter().any(|(_, torn)| *torn) {
        return false;
    }
    // The oracle does not keep which writes were WRITE SAMEs: both tags are
    // tried (the filler depends on the tag, so neither matches by chance).
    let contents: Vec<Vec<u8>> = recs
        .iter()
        .flat_map(|(id, _)| [block_content(*id, lba as u32), block_content(*id, SAME_LBA)])
        .collect();
    block.chunks(SECTOR).enumerate().all(|(k, sector)| {
        contents
            .iter()
            .any(|c| c.get(k * SECTOR..(k + 1) * SECTOR) == Some(sector))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_name_their_write_and_reject_foreign_content() {
        let b = block_content(42, 7);
        assert_eq!(decode_block(&b, 7), Ok(42));
        assert!(decode_block(&b, 8).is_err(), "another LBA's block");
        let mut torn = b.clone();
        torn[3000] ^= 1;
        assert!(decode_block(&torn, 7).is_err());
        assert_eq!(decode_block(&vec![0u8; BLOCK], 3), Ok(0));
        assert_eq!(decode_block(&block_content(5, SAME_LBA), 99), Ok(5));
    }

    #[test]
    fn an_acknowledged_write_hides_older_ones_until_a_power_cut_unless_durable() {
        let mut m = Model::new();
        let a = m.issue_write(10, &[0], false);
        m.ack_write(a, 20, false);
        let b = m.issue_write(30, &[0], false);
        m.ack_write(b, 40, false);
        assert_eq!(m.allowed(0, 50, 60), vec![b]);
        // Concurrent with the read: both.
        let c = m.issue_write(55, &[0], false);
        assert_eq!(m.allowed(0, 50, 60), vec![b, c]);
        m.end_write(c, 70);
        // A power cut after b's ack: b may be lost, a and 0 come back.
        m.power_cut(80, false);
        assert_eq!(m.allowed(0, 90, 100), vec![0, a, b, c]);
        // Made durable by a flush issued after it: survives the next cut.
        let d = m.issue_write(110, &[0], false);
        m.ack_write(d, 120, false);
        m.flushed(130, 140);
        m.power_cut(150, false);
        assert_eq!(m.allowed(0, 160, 170), vec![d]);
    }

    #[test]
    fn a_block_torn_by_a_power_cut_passes_only_as_sectors_of_writes_it_may_hold() {
        let mut m = Model::new();
        let a = m.issue_write(10, &[3], false);
        m.ack_write(a, 20, false);
        m.flushed(30, 40);
        let b = m.issue_write(50, &[3], false);
        m.ack_write(b, 60, false);
        let mut torn = block_content(a, 3);
        torn[SECTOR..2 * SECTOR].copy_from_slice(&block_content(b, 3)[SECTOR..2 * SECTOR]);
        // A cut that cannot tear (a peer rebuilds the replica): refused.
        m.power_cut(70, false);
        assert!(m.check_block(3, &torn, 80, 90).is_err());
        m.power_cut(100, true);
        assert_eq!(m.check_block(3, &torn, 110, 120), Ok(()));
        // Foreign bytes in a sector are still refused.
        let mut bad = torn.clone();
        bad[3 * SECTOR] ^= 1;
        assert!(m.check_block(3, &bad, 110, 120).is_err());
        // A snapshot asked for before the cut and taken after may miss b.
        assert!(m
            .check_snapshot_block(3, &block_content(a, 3), 65, 66)
            .is_err());
        assert_eq!(
            m.check_snapshot_block(3, &block_content(a, 3), 65, 75),
            Ok(())
        );
    }
}
