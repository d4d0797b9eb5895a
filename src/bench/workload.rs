//! What one session of `cstor bench` sends, sans-IO: the offsets (random
//! or sequential over the session's share of the range), read or write
//! (mix), the write content, when to stop (IO count or deadline, after the
//! warm-up), and what it measured (latency histograms, counts, verify
//! results).
//!
//! Invariants:
//! - every IO lies inside the session's share of the range, aligned to the
//!   IO size: sessions never touch each other's blocks, so a session's
//!   generation table is the only writer's record of its blocks;
//! - in verify mode no IO is sent that overlaps an IO in flight of which
//!   one is a write (an overlapping read or write would see either
//!   version), so every block read has exactly one expected generation;
//! - an IO is measured only if it was sent after the warm-up ended.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::histogram::Histogram;
use super::pattern;
use super::session::{Done, Io, SessionError, Source};

/// Random or sequential offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    Rand,
    Seq,
}

/// Reads, writes, or a mix of both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rw {
    Read,
    Write,
    Mix,
}

/// A session's part of the workload, in logical blocks.
#[derive(Debug, Clone)]
pub struct Share {
    pub pattern: Pattern,
    pub rw: Rw,
    pub read_pct: u8,
    /// Logical blocks per IO.
    pub io_blocks: u32,
    pub block_bytes: u32,
    /// First LBA of the session's share and its number of IO-sized slots.
    pub first_lba: u64,
    pub slots: u64,
    /// IOs to measure (after the warm-up), if bounded by count.
    pub ios: Option<u64>,
    pub verify: bool,
    pub seed: u64,
    /// Random stream of this session (offsets, mix).
    pub stream: u64,
}

/// What a session measured.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub read_ns: Histogram,
    pub write_ns: Histogram,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Blocks compared with what was written (verify mode).
    pub blocks_checked: u64,
    pub mismatches: u64,
    /// The first mismatches, for the report.
    pub examples: Vec<MismatchReport>,
    /// When the last measured IO completed.
    pub last_done: Option<Instant>,
}

/// Mismatches kept in full per session; the rest are counted.
pub const MAX_EXAMPLES: usize = 16;

#[derive(Debug, Clone)]
pub struct MismatchReport {
    pub lba: u64,
    pub expected: String,
    pub actual: String,
}

impl Stats {
    pub fn merge(&mut self, other: &Stats) {
        self.read_ns.merge(&other.read_ns);
        self.write_ns.merge(&other.write_ns);
        self.read_bytes += other.read_bytes;
        self.write_bytes += other.write_bytes;
        self.blocks_checked += other.blocks_checked;
        self.mismatches += other.mismatches;
        for e in &other.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(e.clone());
            }
        }
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// splitmix64: small, fast, and good enough to pick offsets.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for n far below 2^64.
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// One session's load: a [`Source`] for [`super::session::Session::run`].
pub struct Load {
    share: Share,
    rng: Rng,
    next_slot: u64,
    /// Measuring starts here (the end of the warm-up) and stops issuing at
    /// `deadline`, if any.
    measure_from: Instant,
    deadline: Option<Instant>,
    /// IOs sent after the warm-up.
    measured_sent: u64,
    /// An IO drawn but held back by an overlapping one in flight.
    held: Option<Io>,
    /// (lba, blocks, write) of the IOs in flight (verify mode only).
    in_flight: Vec<(u64, u32, bool)>,
    /// Last generation written per block of the share (verify mode), 0 for
    /// none yet.
    generations: Vec<u32>,
    next_generation: u32,
    /// One buffer shared by every write outside verify mode.
    fixed_write: Bytes,
    pub stats: Stats,
}

impl Load {
    pub fn new(share: Share, measure_from: Instant, deadline: Option<Instant>) -> Load {
        let io_bytes = share.io_blocks as usize * share.block_bytes as usize;
        let generations = if share.verify {
            vec![0u32; (share.slots * u64::from(share.io_blocks)) as usize]
        } else {
            Vec::new()
        };
        // Not zeros: no target may take the shortcut of a zero block.
        let mut fixed = BytesMut::zeroed(if share.verify { 0 } else { io_bytes });
        let mut rng = Rng(share.seed ^ 0x5151);
        for chunk in fixed.chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            chunk.copy_from_slice(v.get(..chunk.len()).unwrap_or(&v));
        }
        Load {
            rng: Rng(share.stream),
            share,
            next_slot: 0,
            measure_from,
            deadline,
            measured_sent: 0,
            held: None,
            in_flight: Vec::new(),
            generations,
            next_generation: 1,
            fixed_write: fixed.freeze(),
            stats: Stats::default(),
        }
    }

    /// Whether nothing more is to be sent.
    fn finished(&self, now: Instant) -> bool {
        if self.deadline.is_some_and(|d| now >= d) {
            return true;
        }
        now >= self.measure_from && self.share.ios.is_some_and(|n| self.measured_sent >= n)
    }

    fn draw(&mut self) -> Io {
        let slot = match self.share.pattern {
            Pattern::Rand => self.rng.below(self.share.slots),
            Pattern::Seq => {
                let s = self.next_slot;
                self.next_slot = (s + 1) % self.share.slots;
                s
            }
        };
        let write = match self.share.rw {
            Rw::Read => false,
            Rw::Write => true,
            Rw::Mix => self.rng.below(100) >= u64::from(self.share.read_pct),
        };
        let blocks = self.share.io_blocks;
        let lba = self.share.first_lba + slot * u64::from(blocks);
        Io {
            lba,
            blocks,
            write: write.then(Bytes::new),
            keep_data: self.share.verify,
            tag: 0,
        }
    }

    fn overlaps(&self, io: &Io) -> bool {
        let end = io.lba + u64::from(io.blocks);
        self.in_flight.iter().any(|&(lba, blocks, write)| {
            (write || io.write.is_some()) && lba < end && io.lba < lba + u64::from(blocks)
        })
    }

    /// The data of a write: the shared buffer, or in verify mode each
    /// block stamped with a new generation.
    fn write_data(&mut self, io: &mut Io) {
        if !self.share.verify {
            io.write = Some(self.fixed_write.clone());
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        io.tag = u64::from(generation);
        let bb = self.share.block_bytes as usize;
        let mut data = BytesMut::zeroed(io.blocks as usize * bb);
        for (i, block) in data.chunks_mut(bb).enumerate() {
            pattern::fill(
                block,
                io.lba + i as u64,
                self.share.seed,
                u64::from(generation),
            );
        }
        io.write = Some(data.freeze());
    }

    fn index(&self, lba: u64) -> Option<usize> {
        usize::try_from(lba.checked_sub(self.share.first_lba)?).ok()
    }

    fn verify_read(&mut self, done: &Done) {
        let bb = self.share.block_bytes as usize;
        for (i, block) in done.data.chunks(bb).enumerate() {
            let lba = done.io.lba + i as u64;
            let expected = self
                .index(lba)
                .and_then(|i| self.generations.get(i))
                .copied()
                .filter(|g| *g != 0)
                .map(u64::from);
            // A run that writes checks the blocks it wrote (others hold
            // whatever was there before it); a read-only run checks every
            // block against the seed (an earlier verify run wrote them).
            if expected.is_none() && self.share.rw != Rw::Read {
                continue;
            }
            self.stats.blocks_checked += 1;
            if let Err(m) = pattern::check(block, lba, self.share.seed, expected) {
                self.stats.mismatches += 1;
                if self.stats.examples.len() < MAX_EXAMPLES {
                    let expected = match expected {
                        Some(g) => format!("seed {} generation {g}", self.share.seed),
                        None => format!("a block of seed {}", self.share.seed),
                    };
                    self.stats.examples.push(MismatchReport {
                        lba,
                        expected,
                        actual: m.actual(),
                    });
                }
            }
        }
    }

    /// A read-back of every block this load wrote (verify mode, after the
    /// measured run): a [`Source`] of its own, whose reads are checked but
    /// not measured.
    pub fn read_back(self) -> ReadBack {
        ReadBack {
            load: self,
            next_slot: 0,
        }
    }
}

impl Source for Load {
    fn next(&mut self, now: Instant) -> Option<Io> {
        if self.finished(now) {
            self.held = None;
            return None;
        }
        let mut io = match self.held.take() {
            Some(io) => io,
            None => self.draw(),
        };
        if self.share.verify {
            if self.overlaps(&io) {
                self.held = Some(io);
                return None;
            }
            self.in_flight.push((io.lba, io.blocks, io.write.is_some()));
        }
        if io.write.is_some() {
            self.write_data(&mut io);
        }
        if now >= self.measure_from {
            self.measured_sent += 1;
        }
        Some(io)
    }

    fn done(&mut self, done: Done, now: Instant) -> Result<(), SessionError> {
        if self.share.verify {
            let key = (done.io.lba, done.io.blocks, done.io.write.is_some());
            if let Some(at) = self.in_flight.iter().position(|e| *e == key) {
                self.in_flight.swap_remove(at);
            }
            if done.io.write.is_some() {
                let generation = u32::try_from(done.io.tag).unwrap_or(0);
                for b in 0..u64::from(done.io.blocks) {
                    if let Some(g) = self
                        .index(done.io.lba + b)
                        .and_then(|i| self.generations.get_mut(i))
                    {
                        *g = generation;
                    }
                }
            } else {
                self.verify_read(&done);
            }
        }
        if done.sent < self.measure_from {
            return Ok(());
        }
        let bytes = u64::from(done.io.blocks) * u64::from(self.share.block_bytes);
        let ns =
            u64::try_from(now.saturating_duration_since(done.sent).as_nanos()).unwrap_or(u64::MAX);
        if done.io.write.is_some() {
            self.stats.write_ns.record(ns);
            self.stats.write_bytes += bytes;
        } else {
            self.stats.read_ns.record(ns);
            self.stats.read_bytes += bytes;
        }
        self.stats.last_done = Some(now);
        Ok(())
    }
}

/// Reads back, in order, every IO-sized slot of a [`Load`]'s share that it
/// wrote to, checking each written block against its last generation.
pub struct ReadBack {
    load: Load,
    next_slot: u64,
}

impl ReadBack {
    pub fn into_stats(self) -> Stats {
        self.load.stats
    }
}

impl Source for ReadBack {
    fn next(&mut self, _now: Instant) -> Option<Io> {
        let blocks = u64::from(self.load.share.io_blocks);
        while self.next_slot < self.load.share.slots {
            let slot = self.next_slot;
            self.next_slot += 1;
            let from = (slot * blocks) as usize;
            let written = self
                .load
                .generations
                .get(from..from + blocks as usize)
                .is_some_and(|g| g.iter().any(|g| *g != 0));
            if written {
                return Some(Io {
                    lba: self.load.share.first_lba + slot * blocks,
                    blocks: self.load.share.io_blocks,
                    write: None,
                    keep_data: true,
                    tag: 0,
                });
            }
        }
        None
    }

    fn done(&mut self, done: Done, _now: Instant) -> Result<(), SessionError> {
        // Only blocks this run wrote are checked: the others hold whatever
        // was there before.
        let bb = self.load.share.block_bytes as usize;
        let seed = self.load.share.seed;
        for (i, block) in done.data.chunks(bb).enumerate() {
            let lba = done.io.lba + i as u64;
            let Some(generation) = self
                .load
                .index(lba)
                .and_then(|i| self.load.generations.get(i))
                .copied()
                .filter(|g| *g != 0)
            else {
                continue;
            };
            let stats = &mut self.load.stats;
            stats.blocks_checked += 1;
            if let Err(m) = pattern::check(block, lba, seed, Some(u64::from(generation))) {
                stats.mismatches += 1;
                if stats.examples.len() < MAX_EXAMPLES {
                    stats.examples.push(MismatchReport {
                        lba,
                        expected: format!("seed {seed} generation {generation}"),
                        actual: m.actual(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn share(pattern: Pattern, rw: Rw, verify: bool) -> Share {
        Share {
            pattern,
            rw,
            read_pct: 70,
            io_blocks: 2,
            block_bytes: 512,
            first_lba: 100,
            slots: 8,
            ios: Some(1000),
            verify,
            seed: 7,
            stream: 3,
        }
    }

    fn done(io: Io) -> Done {
        Done {
            io,
            sent: Instant::now(),
            data: Bytes::new(),
        }
    }

    #[test]
    fn ios_stay_in_the_share_and_aligned() {
        let now = Instant::now();
        let mut load = Load::new(share(Pattern::Rand, Rw::Mix, false), now, None);
        let mut reads = 0;
        for _ in 0..1000 {
            let io = load.next(now).unwrap();
            assert!(io.lba >= 100 && io.lba + 2 <= 116, "{}", io.lba);
            assert_eq!((io.lba - 100) % 2, 0);
            assert_eq!(io.write.as_ref().map(Bytes::len).unwrap_or(1024), 1024);
            reads += usize::from(io.write.is_none());
        }
        // 70 % reads, loosely.
        assert!((600..800).contains(&reads), "{reads}");
        assert!(load.next(now).is_none(), "1000 IOs asked");
    }

    #[test]
    fn sequential_wraps_over_the_share() {
        let now = Instant::now();
        let mut load = Load::new(share(Pattern::Seq, Rw::Read, false), now, None);
        let lbas: Vec<u64> = (0..10).map(|_| load.next(now).unwrap().lba).collect();
        assert_eq!(lbas, [100, 102, 104, 106, 108, 110, 112, 114, 100, 102]);
    }

    #[test]
    fn verify_holds_back_an_io_overlapping_a_write_in_flight() {
        let now = Instant::now();
        let mut s = share(Pattern::Seq, Rw::Write, true);
        s.slots = 1;
        let mut load = Load::new(s, now, None);
        let first = load.next(now).unwrap();
        assert!(load.next(now).is_none(), "same slot, write in flight");
        load.done(done(first), now).unwrap();
        assert!(load.next(now).is_some());
    }

    #[test]
    fn verify_detects_a_stale_generation_and_a_foreign_block() {
        let now = Instant::now();
        let mut s = share(Pattern::Seq, Rw::Write, true);
        s.slots = 1;
        let mut load = Load::new(s, now, None);
        let w1 = load.next(now).unwrap();
        let old = w1.write.clone().unwrap();
        load.done(done(w1), now).unwrap();
        let w2 = load.next(now).unwrap();
        load.done(done(w2), now).unwrap();
        // Reading back the first generation: stale.
        let mut back = load.read_back();
        let io = back.next(now).unwrap();
        back.done(
            Done {
                io,
                sent: now,
                data: old,
            },
            now,
        )
        .unwrap();
        assert!(back.next(now).is_none());
        let stats = back.into_stats();
        assert_eq!(stats.blocks_checked, 2);
        assert_eq!(stats.mismatches, 2);
        assert_eq!(stats.examples[0].lba, 100);
        assert!(stats.examples[0].actual.contains("generation 1"));
        assert!(stats.examples[0].expected.contains("generation 2"));
    }

    #[test]
    fn warm_up_ios_are_not_measured() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(3600);
        let mut load = Load::new(share(Pattern::Rand, Rw::Read, false), later, None);
        let io = load.next(now).unwrap();
        load.done(done(io), now).unwrap();
        assert_eq!(load.stats.read_ns.count(), 0);
    }
}
