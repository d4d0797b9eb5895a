//! The checksum pages in memory: a bounded cache over the checksum area.
//!
//! Job: hand out and store the crc32c of physical blocks, holding at most
//! `max_resident` pages (4 KiB of checksums each, covering 4 MiB of data)
//! beyond the ones that must stay: a page changed since it was last
//! written out (dirty), or pinned. A page that is not resident is read from
//! the checksum area on first use (or is all zeros: a new pool's area is
//! zeroed at creation). Eviction is CLOCK: a page used since the hand last
//! passed gets a second chance.
//!
//! Invariants:
//! - A page is evicted only when it is clean (its content is what the
//!   checksum area holds: written out by `write_dirty`, that write
//!   completed) and unpinned. So reading it back yields what was evicted.
//! - A load that began before an eviction of its page installs nothing
//!   (`evictions` changed): it may have read the area before a write-out
//!   that the evicted page had seen.
//! - A write's pages are pinned (`pin`) from before its data write until
//!   its checksums are stored (`set`): storing never needs a load.
//! - Lock order: the clock before a page, a page before the dirty list;
//!   never the reverse.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::commit::{read_exact, write_all};
use crate::error::{Error, Result};
use crate::format::META_BLOCK_BYTES;
use crate::pool::{to_usize, DeviceRef};

/// Checksums per page of the checksum area (one 4 KiB block of u32s): a
/// page covers 4 MiB of data.
pub(crate) const SUMS_PER_PAGE: u64 = META_BLOCK_BYTES / 4;
/// Fewest resident pages the cache aims for (whatever the option says).
/// Correctness needs no more: dirty and pinned pages stay beyond it.
pub(crate) const MIN_RESIDENT_PAGES: u64 = 1;
/// Consecutive dirty pages written out by one device request.
const WRITE_RUN_PAGES: usize = 256;

#[derive(Default)]
struct Page {
    sums: Option<Box<[u32]>>,
    /// Not resident: the page must be read from the checksum area (else it
    /// is all zeros).
    on_disk: bool,
    /// Changed since it was last written out.
    dirty: bool,
    /// Writes into the page in progress, and its own write-out.
    pins: u32,
    /// Used since the clock hand last passed it.
    referenced: bool,
    /// Times evicted: a load that began before installs nothing.
    evictions: u64,
}

impl Page {
    fn evictable(&self) -> bool {
        self.sums.is_some() && !self.dirty && self.pins == 0
    }
}

/// What a page holds now, or what loading it needs.
enum Look {
    Resident,
    /// Not resident and never written: zeros.
    Zeros,
    /// Must be read; the eviction count the load must still find.
    Load(u64),
}

/// The checksum pages of a pool.
pub(crate) struct SumPages {
    /// Byte offset of the checksum area on device 0.
    area_offset: u64,
    pages: Vec<Mutex<Page>>,
    dirty: Mutex<Vec<u64>>,
    /// Resident pages, in the clock hand's order.
    clock: Mutex<VecDeque<u64>>,
    resident: AtomicU64,
    max_resident: u64,
    pub(crate) loads: AtomicU64,
    pub(crate) evictions: AtomicU64,
}

/// Pages pinned for a write (`SumPages::pin`): not evicted while this
/// lives.
pub(crate) struct Pins<'a> {
    pages: &'a SumPages,
    held: Vec<u64>,
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        for &p in &self.held {
            if let Some(page) = self.pages.page(p) {
                let mut g = page.lock();
                g.pins = g.pins.saturating_sub(1);
            }
        }
        self.pages.evict_over_bound();
    }
}

impl SumPages {
    /// `n` pages at `area_offset` on device 0, at most `max_resident`
    /// resident (not counting dirty or pinned ones; at least
    /// [`MIN_RESIDENT_PAGES`]). `on_disk`: the area may hold checksums
    /// (an opened pool); otherwise it is all zeros (a new pool).
    pub(crate) fn new(n: u64, area_offset: u64, max_resident: u64, on_disk: bool) -> Self {
        Self {
            area_offset,
            pages: (0..n)
                .map(|_| {
                    Mutex::new(Page {
                        on_disk,
                        ..Page::default()
                    })
                })
                .collect(),
            dirty: Mutex::new(Vec::new()),
            clock: Mutex::new(VecDeque::new()),
            resident: AtomicU64::new(0),
            max_resident: max_resident.max(MIN_RESIDENT_PAGES),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn page(&self, p: u64) -> Option<&Mutex<Page>> {
        self.pages.get(usize::try_from(p).ok()?)
    }

    /// Pages resident now.
    pub(crate) fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// Heap bytes: the resident pages and the page table.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.resident() * META_BLOCK_BYTES
            + self.pages.len() as u64 * std::mem::size_of::<Mutex<Page>>() as u64
    }

    /// The most pages kept resident besides dirty and pinned ones.
    pub(crate) fn max_resident(&self) -> u64 {
        self.max_resident
    }

    /// The page spans of `n` checksums from block `first`: (page, index in
    /// the page, count).
    fn spans(first: u64, n: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let mut b = first;
        let end = first.saturating_add(n as u64);
        std::iter::from_fn(move || {
            if b >= end {
                return None;
            }
            let page = b / SUMS_PER_PAGE;
            let at = b % SUMS_PER_PAGE;
            let take = (end - b).min(SUMS_PER_PAGE - at);
            b += take;
            // Both are below SUMS_PER_PAGE (1024).
            Some((page, at as usize, take as usize))
        })
    }

    /// The stored checksums of `n` blocks from block `first`, reading
    /// pages that are not resident.
    pub(crate) async fn read(&self, dev0: &DeviceRef, first: u64, n: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        for (p, at, take) in Self::spans(first, n) {
            loop {
                let Some(page) = self.page(p) else {
                    out.resize(out.len() + take, 0);
                    break;
                };
                {
                    let mut g = page.lock();
                    if let Some(s) = &g.sums {
                        out.extend_from_slice(s.get(at..at + take).unwrap_or(&[]));
                        g.referenced = true;
                        break;
                    }
                }
                match self.look(p, false) {
                    Look::Resident => continue,
                    Look::Zeros => {
                        out.resize(out.len() + take, 0);
                        break;
                    }
                    Look::Load(evictions) => {
                        let sums = self.load(dev0, p).await?;
                        out.extend_from_slice(sums.get(at..at + take).unwrap_or(&[]));
                        self.install(p, evictions, sums, false);
                        // What was read was current when the load began
                        // (the page was clean on disk and not resident).
                        break;
                    }
                }
            }
        }
        self.evict_over_bound();
        Ok(out)
    }

    /// Makes the pages of `n` checksums from block `first` resident and
    /// pins them until the returned guard drops.
    pub(crate) async fn pin(&self, dev0: &DeviceRef, first: u64, n: usize) -> Result<Pins<'_>> {
        let mut pins = Pins {
            pages: self,
            held: Vec::new(),
        };
        for (p, _, _) in Self::spans(first, n) {
            loop {
                match self.look(p, true) {
                    // A pinned zero page is made resident: never `Zeros`.
                    Look::Resident | Look::Zeros => break,
                    Look::Load(evictions) => {
                        let sums = self.load(dev0, p).await?;
                        if self.install(p, evictions, sums, true) {
                            break;
                        }
                    }
                }
            }
            pins.held.push(p);
        }
        Ok(pins)
    }

    /// Where page `p` stands; with `pin`, a resident page (a zero page is
    /// made resident) is pinned.
    fn look(&self, p: u64, pin: bool) -> Look {
        let Some(page) = self.page(p) else {
            return Look::Resident;
        };
        let mut g = page.lock();
        if g.sums.is_none() && !g.on_disk && pin {
            g.sums = Some(zeros());
            drop(g);
            self.resident.fetch_add(1, Ordering::Relaxed);
            self.clock.lock().push_back(p);
            return self.look(p, pin);
        }
        match (&g.sums, g.on_disk) {
            (Some(_), _) => {
                g.referenced = true;
                if pin {
                    g.pins += 1;
                }
                Look::Resident
            }
            (None, false) => Look::Zeros,
            (None, true) => Look::Load(g.evictions),
        }
    }

    /// Reads page `p` from the checksum area.
    async fn load(&self, dev0: &DeviceRef, p: u64) -> Result<Box<[u32]>> {
        let at = self.area_offset + p * META_BLOCK_BYTES;
        let buf = read_exact(dev0, at, to_usize(META_BLOCK_BYTES)?)
            .await
            .map_err(|e| Error::io("read checksum page", e))?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        Ok(buf
            .as_slice()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Installs loaded page `p` unless it was evicted since the load began
    /// (`evictions`) or is resident already; with `pin`, pins it when it is
    /// resident afterwards. False when the caller must look again.
    fn install(&self, p: u64, evictions: u64, sums: Box<[u32]>, pin: bool) -> bool {
        let Some(page) = self.page(p) else {
            return true;
        };
        let mut g = page.lock();
        if g.sums.is_some() {
            if pin {
                g.pins += 1;
            }
            return true;
        }
        if g.evictions != evictions {
            return false;
        }
        g.sums = Some(sums);
        g.referenced = true;
        if pin {
            g.pins += 1;
        }
        drop(g);
        self.resident.fetch_add(1, Ordering::Relaxed);
        self.clock.lock().push_back(p);
        true
    }

    /// Stores the checksums of consecutive blocks from block `first`; their
    /// pages are written by the next `write_dirty`. Their pages must be
    /// pinned (`pin`) or never written (zeros).
    pub(crate) fn set(&self, first: u64, crcs: &[u32]) -> Result<()> {
        let mut done = 0usize;
        for (p, at, take) in Self::spans(first, crcs.len()) {
            let Some(page) = self.page(p) else {
                done += take;
                continue;
            };
            let mut g = page.lock();
            let was_resident = g.sums.is_some();
            if !was_resident && g.on_disk {
                return Err(crate::error::corrupt(format!(
                    "checksum page {p} stored without being loaded"
                )));
            }
            let sums = g.sums.get_or_insert_with(zeros);
            if let (Some(dst), Some(src)) =
                (sums.get_mut(at..at + take), crcs.get(done..done + take))
            {
                dst.copy_from_slice(src);
            }
            g.referenced = true;
            if !g.dirty {
                g.dirty = true;
                self.dirty.lock().push(p);
            }
            drop(g);
            if !was_resident {
                self.resident.fetch_add(1, Ordering::Relaxed);
                self.clock.lock().push_back(p);
            }
            done += take;
        }
        Ok(())
    }

    /// Writes every page changed since the last call to the checksum area
    /// (not synced: the caller's sync of device 0 follows).
    pub(crate) async fn write_dirty(&self, dev0: &DeviceRef) -> Result<()> {
        let mut pages = std::mem::take(&mut *self.dirty.lock());
        pages.sort_unstable();
        pages.dedup();
        let page_bytes = to_usize(META_BLOCK_BYTES)?;
        let mut i = 0;
        while i < pages.len() {
            // A run of consecutive pages goes in one write.
            let mut j = i + 1;
            while j < pages.len() && pages[j] == pages[j - 1] + 1 && j - i < WRITE_RUN_PAGES {
                j += 1;
            }
            let run = &pages[i..j];
            let mut buf = Vec::with_capacity(run.len() * page_bytes);
            for &p in run {
                let Some(page) = self.page(p) else { continue };
                let mut g = page.lock();
                g.dirty = false;
                // Not evicted until this write completed.
                g.pins += 1;
                match &g.sums {
                    Some(s) => s
                        .iter()
                        .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
                    None => buf.resize(buf.len() + page_bytes, 0),
                }
            }
            let res = write_all(dev0, self.area_offset + run[0] * META_BLOCK_BYTES, &buf).await;
            for &p in run {
                if let Some(page) = self.page(p) {
                    let mut g = page.lock();
                    g.pins = g.pins.saturating_sub(1);
                }
            }
            res.map_err(|e| Error::io("write checksum area", e))?;
            i = j;
        }
        self.evict_over_bound();
        Ok(())
    }

    /// Evicts clean, unpinned pages until at most `max_resident` are
    /// resident, or every page was passed twice (the rest are dirty,
    /// pinned or just used: the bound is exceeded until a commit writes
    /// them out).
    fn evict_over_bound(&self) {
        if self.resident() <= self.max_resident {
            return;
        }
        let mut clock = self.clock.lock();
        let mut budget = clock.len().saturating_mul(2);
        while self.resident() > self.max_resident && budget > 0 {
            budget -= 1;
            let Some(p) = clock.pop_front() else { break };
            let Some(page) = self.page(p) else { continue };
            let mut g = page.lock();
            if g.sums.is_none() {
                continue;
            }
            if !g.evictable() || g.referenced {
                g.referenced = false;
                clock.push_back(p);
                continue;
            }
            g.sums = None;
            g.on_disk = true;
            g.evictions = g.evictions.wrapping_add(1);
            drop(g);
            self.resident.fetch_sub(1, Ordering::Relaxed);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn zeros() -> Box<[u32]> {
    vec![0u32; SUMS_PER_PAGE as usize].into_boxed_slice()
}
