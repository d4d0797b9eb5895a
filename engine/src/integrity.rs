//! Block checksums (FORMAT.md "Block checksums"): a crc32c per 4 KiB
//! block of every physical chunk, verified on every read, kept crash-safe
//! by a dirty-region bitmap.
//!
//! Job: hand out and store the checksums through a bounded cache of pages
//! of [`SUMS_PER_PAGE`] values (`pages`: read from the checksum area on
//! first use, evicted when clean), write the pages changed since the last
//! commit to the checksum area on device 0, and keep the on-disk bitmap of
//! regions whose checksums may disagree with their data after a power
//! cut.
//!
//! Invariants:
//! - A data write into a region is issued only once the region's bit is
//!   set on disk and synced (`begin_write`). So after any power cut, a
//!   block whose content may differ from what its stored checksum says (a
//!   write since the last commit landed whole, torn or not at all) lies in
//!   a region whose bit is set, and open recomputes every mapped block
//!   there (`recover`) before serving: no false alarm.
//! - A region's bit is cleared only after a commit that began when the
//!   region had no write running, and no write began since: its data was
//!   synced by that commit, and its checksums, set in memory when each
//!   write completed, were written to the checksum area and synced by it.
//!   So a clean region's stored checksums match its data.
//! - `ondisk` never claims a bit the disk may lack: bits are marked there
//!   only after their bitmap write was synced, and a bit about to be
//!   cleared is unmarked before the write that clears it.
//! - A data write that failed leaves its region dirty until the pool is
//!   reopened (its data may have changed, its checksum did not).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::commit::{read_exact, write_all};
use crate::error::{Error, Result};
use crate::format::superblock::IntegrityRegions;
use crate::format::META_BLOCK_BYTES;
use crate::limits::SUM_BLOCK_BYTES;
use crate::pool::{to_usize, DeviceRef};

mod pages;

use pages::SumPages;
pub(crate) use pages::{Pins, SUMS_PER_PAGE};

#[derive(Debug, Clone, Copy)]
struct RegionInfo {
    /// Data writes into the region that have begun and not completed.
    active: u32,
    /// The commit counter when the latest write into the region began.
    last_write: u64,
}

struct Regions {
    /// Bits that must be set on disk (every region written since its bit
    /// was last cleared).
    want: Vec<u8>,
    /// Bits known set on disk and synced.
    ondisk: Vec<u8>,
    /// Regions whose bit is wanted.
    info: HashMap<u64, RegionInfo>,
    /// Commits begun (`begin_commit`).
    commit: u64,
    /// Regions a durable commit found quiet, with that commit's number:
    /// cleared by the next bitmap write unless written since.
    clearable: Vec<(u64, u64)>,
}

fn bit(bits: &[u8], r: u64) -> bool {
    let byte = usize::try_from(r / 8).unwrap_or(usize::MAX);
    bits.get(byte).is_some_and(|b| b & (1 << (r % 8)) != 0)
}

fn set_bit(bits: &mut [u8], r: u64, on: bool) {
    let byte = usize::try_from(r / 8).unwrap_or(usize::MAX);
    if let Some(b) = bits.get_mut(byte) {
        if on {
            *b |= 1 << (r % 8);
        } else {
            *b &= !(1 << (r % 8));
        }
    }
}

/// The checksums of a pool and its dirty-region bitmap.
pub(crate) struct Integrity {
    area: IntegrityRegions,
    blocks_per_chunk: u64,
    region_chunks: u64,
    pages: SumPages,
    regions: Mutex<Regions>,
    /// Serializes bitmap writes; holds the bitmap as last written and
    /// synced.
    bitmap_io: tokio::sync::Mutex<Vec<u8>>,
    pub(crate) errors: AtomicU64,
    pub(crate) recomputed_blocks: AtomicU64,
    pub(crate) bitmap_writes: AtomicU64,
}

/// A data write in progress in a region (`Integrity::begin_write`): the
/// region cannot be cleaned while it lives. `fail` keeps the region dirty
/// until the pool is reopened.
pub(crate) struct WriteGuard<'a> {
    integrity: &'a Integrity,
    region: u64,
    failed: bool,
}

impl WriteGuard<'_> {
    /// The write failed: its data may have changed without its checksum.
    pub(crate) fn fail(mut self) {
        self.failed = true;
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.failed {
            // Never cleaned before the next open recomputes it.
            return;
        }
        let mut g = self.integrity.regions.lock();
        if let Some(i) = g.info.get_mut(&self.region) {
            i.active = i.active.saturating_sub(1);
        }
    }
}

/// What a commit found clean when it began (`Integrity::begin_commit`).
pub(crate) struct CommitTicket {
    commit: u64,
    quiet: Vec<u64>,
}

impl CommitTicket {
    /// No region to clean.
    pub(crate) fn is_empty(&self) -> bool {
        self.quiet.is_empty()
    }
}

impl Integrity {
    /// The checksums and bitmap of a pool whose superblock names `area`,
    /// for `max_data_chunks` of `chunk_bytes`, keeping at most
    /// `cache_pages` checksum pages in memory besides dirty and pinned
    /// ones. `opened`: the pool exists (pages are read from the area on
    /// first use; `load` reads the bitmap); otherwise the area is all zeros.
    pub(crate) fn new(
        area: IntegrityRegions,
        max_data_chunks: u64,
        chunk_bytes: u32,
        cache_pages: u64,
        opened: bool,
    ) -> Self {
        let blocks_per_chunk = (u64::from(chunk_bytes) / SUM_BLOCK_BYTES).max(1);
        let pages = max_data_chunks
            .saturating_mul(blocks_per_chunk)
            .div_ceil(SUMS_PER_PAGE)
            .min(area.sums.len_bytes / META_BLOCK_BYTES);
        let bitmap = usize::try_from(area.dirty.len_bytes).unwrap_or(0);
        Self {
            area,
            blocks_per_chunk,
            region_chunks: u64::from(area.region_chunks).max(1),
            pages: SumPages::new(pages, area.sums.offset, cache_pages, opened),
            regions: Mutex::new(Regions {
                want: vec![0; bitmap],
                ondisk: vec![0; bitmap],
                info: HashMap::new(),
                commit: 0,
                clearable: Vec::new(),
            }),
            bitmap_io: tokio::sync::Mutex::new(vec![0; bitmap]),
            errors: AtomicU64::new(0),
            recomputed_blocks: AtomicU64::new(0),
            bitmap_writes: AtomicU64::new(0),
        }
    }

    /// 4 KiB blocks per physical chunk.
    pub(crate) fn blocks_per_chunk(&self) -> u64 {
        self.blocks_per_chunk
    }

    /// The stored checksums of `n` blocks from physical block `first`
    /// (pages not in memory are read from device 0).
    pub(crate) async fn sums(&self, dev0: &DeviceRef, first: u64, n: usize) -> Result<Vec<u32>> {
        self.pages.read(dev0, first, n).await
    }

    /// Keeps the checksum pages of `n` blocks from physical block `first`
    /// in memory until the guard drops: a write takes it before its data
    /// write, so `set_sums` after it never waits for a read.
    pub(crate) async fn pin_sums(
        &self,
        dev0: &DeviceRef,
        first: u64,
        n: usize,
    ) -> Result<Pins<'_>> {
        self.pages.pin(dev0, first, n).await
    }

    /// Stores the checksums of consecutive blocks from physical block
    /// `first` (their pages pinned by `pin_sums`); the next commit writes
    /// them.
    pub(crate) fn set_sums(&self, first: u64, crcs: &[u32]) -> Result<()> {
        self.pages.set(first, crcs)
    }

    /// Heap bytes of the checksum pages in memory (and their table).
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.pages.memory_bytes()
    }

    /// The figures `PoolStats::integrity` reports.
    pub(crate) fn stats(&self) -> crate::pool::IntegrityStats {
        crate::pool::IntegrityStats {
            enabled: true,
            checksum_errors: self.errors.load(Ordering::Relaxed),
            recomputed_blocks: self.recomputed_blocks.load(Ordering::Relaxed),
            dirty_regions: self.dirty_regions(),
            bitmap_writes: self.bitmap_writes.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes(),
            area_bytes: self.area.sums.len_bytes,
            cache_pages: self.pages.resident(),
            cache_limit_pages: self.pages.max_resident(),
            page_loads: self.pages.loads.load(Ordering::Relaxed),
            page_evictions: self.pages.evictions.load(Ordering::Relaxed),
        }
    }

    /// Whether some region is dirty (a commit may clean it).
    pub(crate) fn has_dirty(&self) -> bool {
        !self.regions.lock().info.is_empty()
    }

    /// Regions whose bit is set on disk now.
    pub(crate) fn dirty_regions(&self) -> u64 {
        let g = self.regions.lock();
        g.ondisk.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    fn region_of(&self, phys_chunk: u64) -> u64 {
        phys_chunk / self.region_chunks
    }

    /// Reads the dirty-region bitmap of an opened pool (checksum pages are
    /// read when first used); returns the regions marked dirty.
    pub(crate) async fn load(&self, dev0: &DeviceRef) -> Result<Vec<u64>> {
        let bitmap = read_exact(
            dev0,
            self.area.dirty.offset,
            to_usize(self.area.dirty.len_bytes)?,
        )
        .await
        .map_err(|e| Error::io("read dirty-region bitmap", e))?;
        let bits = bitmap.as_slice().to_vec();
        let dirty: Vec<u64> = (0..bits.len() as u64 * 8)
            .filter(|r| bit(&bits, *r))
            .collect();
        {
            let mut g = self.regions.lock();
            g.want.clone_from(&bits);
            g.ondisk.clone_from(&bits);
            for r in &dirty {
                g.info.insert(
                    *r,
                    RegionInfo {
                        active: 0,
                        last_write: 0,
                    },
                );
            }
        }
        *self.bitmap_io.lock().await = bits;
        Ok(dirty)
    }

    /// The physical chunks of region `r` below `total_chunks`.
    pub(crate) fn region_chunks(&self, r: u64, total_chunks: u64) -> std::ops::Range<u64> {
        let first = r.saturating_mul(self.region_chunks).min(total_chunks);
        let end = first.saturating_add(self.region_chunks).min(total_chunks);
        first..end
    }

    /// A data write into physical chunk `phys_chunk` is about to be
    /// issued: returns once the chunk's region is marked dirty on disk.
    pub(crate) async fn begin_write(
        &self,
        dev0: &DeviceRef,
        phys_chunk: u64,
    ) -> Result<WriteGuard<'_>> {
        let r = self.region_of(phys_chunk);
        let guard = WriteGuard {
            integrity: self,
            region: r,
            failed: false,
        };
        {
            let mut g = self.regions.lock();
            let c = g.commit;
            let i = g.info.entry(r).or_insert(RegionInfo {
                active: 0,
                last_write: c,
            });
            i.active += 1;
            i.last_write = c;
            set_bit(&mut g.want, r, true);
            if bit(&g.ondisk, r) {
                return Ok(guard);
            }
        }
        loop {
            let mut image = self.bitmap_io.lock().await;
            if bit(&self.regions.lock().ondisk, r) {
                return Ok(guard);
            }
            self.write_bitmap(&mut image, dev0).await?;
        }
    }

    /// Writes the wanted bitmap (clearing what may be cleared) where it
    /// differs from the last one written, and syncs it. The caller holds
    /// `bitmap_io` (`image`).
    async fn write_bitmap(&self, image: &mut Vec<u8>, dev0: &DeviceRef) -> Result<()> {
        let snapshot = {
            let mut g = self.regions.lock();
            let clearable = std::mem::take(&mut g.clearable);
            for (r, c) in clearable {
                let quiet = g
                    .info
                    .get(&r)
                    .is_some_and(|i| i.active == 0 && i.last_write < c);
                if quiet {
                    g.info.remove(&r);
                    set_bit(&mut g.want, r, false);
                    set_bit(&mut g.ondisk, r, false);
                }
            }
            g.want.clone()
        };
        let page = to_usize(META_BLOCK_BYTES)?;
        let mut wrote = false;
        for (i, (new, old)) in snapshot.chunks(page).zip(image.chunks(page)).enumerate() {
            if new == old {
                continue;
            }
            let mut block = new.to_vec();
            block.resize(page, 0);
            write_all(dev0, self.area.dirty.offset + (i * page) as u64, &block)
                .await
                .map_err(|e| Error::io("write dirty-region bitmap", e))?;
            wrote = true;
        }
        if wrote {
            dev0.sync_data()
                .await
                .map_err(|e| Error::io("sync dirty-region bitmap", e))?;
            self.bitmap_writes.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut g = self.regions.lock();
            for (o, s) in g.ondisk.iter_mut().zip(&snapshot) {
                *o |= s;
            }
        }
        *image = snapshot;
        Ok(())
    }

    /// A commit begins (before its data sync): the regions with no write
    /// running and none in the last `quiet_commits` commits are the ones
    /// it may clean once durable.
    pub(crate) fn begin_commit(&self, quiet_commits: u64) -> CommitTicket {
        let mut g = self.regions.lock();
        g.commit += 1;
        let c = g.commit;
        let quiet = g
            .info
            .iter()
            .filter(|(_, i)| i.active == 0 && i.last_write.saturating_add(quiet_commits) < c)
            .map(|(r, _)| *r)
            .collect();
        CommitTicket { commit: c, quiet }
    }

    /// Writes every checksum page changed since the last call to the
    /// checksum area (not synced: the commit's sync of device 0 follows).
    pub(crate) async fn write_pages(&self, dev0: &DeviceRef) -> Result<()> {
        self.pages.write_dirty(dev0).await
    }

    /// The commit of `ticket` is durable (its data synced, then the pages
    /// written by `write_pages` synced with its metadata): its quiet
    /// regions are cleaned, unless written since it began.
    pub(crate) async fn finish_commit(&self, ticket: CommitTicket, dev0: &DeviceRef) -> Result<()> {
        if ticket.quiet.is_empty() {
            return Ok(());
        }
        {
            let mut g = self.regions.lock();
            let c = ticket.commit;
            g.clearable.extend(ticket.quiet.into_iter().map(|r| (r, c)));
        }
        let mut image = self.bitmap_io.lock().await;
        self.write_bitmap(&mut image, dev0).await
    }

    /// The checksum of one block, as the verify path compares it.
    pub(crate) fn block_crc(block: &[u8]) -> u32 {
        crc32c::crc32c(block)
    }

    /// Counts `n` blocks that failed their checksum.
    pub(crate) fn count_errors(&self, n: u64) {
        self.errors.fetch_add(n, Ordering::Relaxed);
    }
}

/// The error of a read that found bad blocks: `bad` are byte ranges of
/// the volume.
pub(crate) fn checksum_error(what: String, bad: Vec<(u64, u64)>) -> Error {
    let n: u64 = bad.iter().map(|(_, l)| l / SUM_BLOCK_BYTES).sum();
    Error::checksum(format!("{what}: {n} block(s) fail their checksum"), bad)
}

impl Integrity {
    /// After an unclean shutdown: recomputes the checksums of every block
    /// of every chunk in use (`used`) in the `dirty` regions from the data
    /// found there. The pool's first commit writes them and cleans the
    /// regions.
    pub(crate) async fn recover(
        &self,
        devs: &[DeviceRef],
        space: &crate::layout::ChunkSpace,
        used: impl Fn(u64) -> bool,
        dirty: &[u64],
        chunk_bytes: u32,
    ) -> Result<()> {
        let block = to_usize(SUM_BLOCK_BYTES)?;
        for r in dirty {
            for p in self.region_chunks(*r, space.total_chunks()) {
                if !used(p) {
                    continue;
                }
                let (idx, off) = space
                    .locate(p)
                    .ok_or_else(|| crate::error::corrupt(format!("physical chunk {p}")))?;
                let dev = devs
                    .get(idx)
                    .ok_or_else(|| crate::error::corrupt(format!("device {idx}")))?;
                let data = read_exact(dev, off, to_usize(u64::from(chunk_bytes))?)
                    .await
                    .map_err(|e| Error::io(format!("recompute checksums of chunk {p}"), e))?;
                let crcs: Vec<u32> = data.as_slice().chunks(block).map(Self::block_crc).collect();
                let first = p * self.blocks_per_chunk;
                let dev0 = devs
                    .first()
                    .ok_or_else(|| crate::error::corrupt("no device 0"))?;
                let pins = self.pin_sums(dev0, first, crcs.len()).await?;
                self.set_sums(first, &crcs)?;
                drop(pins);
                self.recomputed_blocks
                    .fetch_add(crcs.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::format::superblock::Region;
    use crate::io::MemDevice;

    const CHUNK: u32 = 65536;

    fn integrity() -> (Integrity, DeviceRef) {
        fixture(16, 1 << 20)
    }

    /// Checksums for `pages` pages through a cache of the fewest pages
    /// allowed.
    fn small_cache(pages: u64) -> (Integrity, DeviceRef) {
        fixture(pages, 0)
    }

    /// Checksums of `pages` pages (and the chunks they cover), at most
    /// `cache_pages` of them kept in memory, on a new 1 MiB device.
    fn fixture(pages: u64, cache_pages: u64) -> (Integrity, DeviceRef) {
        let area = IntegrityRegions {
            dirty: Region {
                offset: 0,
                len_bytes: 4096,
            },
            sums: Region {
                offset: 4096,
                len_bytes: pages * META_BLOCK_BYTES,
            },
            region_chunks: 16,
        };
        let dev: DeviceRef = Arc::new(MemDevice::new(1 << 20));
        let chunks = pages * SUMS_PER_PAGE / (u64::from(CHUNK) / SUM_BLOCK_BYTES);
        (Integrity::new(area, chunks, CHUNK, cache_pages, false), dev)
    }

    /// The bitmap as on the device.
    async fn on_disk(dev: &DeviceRef) -> Vec<u8> {
        read_exact(dev, 0, 4096).await.unwrap().as_slice().to_vec()
    }

    #[tokio::test]
    async fn a_write_waits_for_its_region_on_disk_and_a_quiet_commit_cleans_it() {
        let (i, dev) = integrity();
        let g = i.begin_write(&dev, 17).await.unwrap();
        assert!(bit(&on_disk(&dev).await, 1), "chunk 17 lies in region 1");
        assert_eq!(i.bitmap_writes.load(Ordering::Relaxed), 1);
        // A second write into the region pays nothing.
        let g2 = i.begin_write(&dev, 31).await.unwrap();
        assert_eq!(i.bitmap_writes.load(Ordering::Relaxed), 1);
        drop((g, g2));
        let t = i.begin_commit(0);
        i.finish_commit(t, &dev).await.unwrap();
        assert!(!bit(&on_disk(&dev).await, 1));
        assert!(!i.has_dirty());
    }

    #[tokio::test]
    async fn a_region_written_during_a_commit_stays_dirty() {
        let (i, dev) = integrity();
        // Running when the commit began: its data may miss the sync.
        let g = i.begin_write(&dev, 0).await.unwrap();
        let t = i.begin_commit(0);
        drop(g);
        i.finish_commit(t, &dev).await.unwrap();
        assert!(bit(&on_disk(&dev).await, 0), "running write");
        // Begun after the commit began, over a region it found quiet.
        let t = i.begin_commit(0);
        let g = i.begin_write(&dev, 0).await.unwrap();
        drop(g);
        i.finish_commit(t, &dev).await.unwrap();
        assert!(bit(&on_disk(&dev).await, 0), "write after the commit began");
        // Now quiet through a whole commit.
        let t = i.begin_commit(0);
        i.finish_commit(t, &dev).await.unwrap();
        assert!(!bit(&on_disk(&dev).await, 0));
    }

    #[tokio::test]
    async fn a_hot_region_is_cleaned_only_after_its_quiet_commits() {
        let (i, dev) = integrity();
        drop(i.begin_write(&dev, 40).await.unwrap());
        for _ in 0..3 {
            let t = i.begin_commit(3);
            i.finish_commit(t, &dev).await.unwrap();
            assert!(bit(&on_disk(&dev).await, 2));
        }
        let t = i.begin_commit(3);
        i.finish_commit(t, &dev).await.unwrap();
        assert!(!bit(&on_disk(&dev).await, 2));
    }

    #[tokio::test]
    async fn a_failed_write_keeps_its_region_dirty_until_reopened() {
        let (i, dev) = integrity();
        i.begin_write(&dev, 5).await.unwrap().fail();
        let t = i.begin_commit(0);
        i.finish_commit(t, &dev).await.unwrap();
        assert!(bit(&on_disk(&dev).await, 0));
    }

    #[tokio::test]
    async fn checksums_persist_through_pages_and_load() {
        let (i, dev) = integrity();
        // Across a page boundary (1024 checksums a page).
        let pins = i.pin_sums(&dev, 1020, 8).await.unwrap();
        i.set_sums(1020, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        drop(pins);
        let want = vec![0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0];
        assert_eq!(i.sums(&dev, 1018, 12).await.unwrap(), want);
        drop(i.begin_write(&dev, 64).await.unwrap());
        i.write_pages(&dev).await.unwrap();
        let (j, _) = integrity();
        let j = Integrity::new(j.area, 1024, CHUNK, 1 << 20, true);
        let dirty = j.load(&dev).await.unwrap();
        assert_eq!(j.sums(&dev, 1018, 12).await.unwrap(), want);
        assert_eq!(j.pages.loads.load(Ordering::Relaxed), 2, "two pages read");
        assert_eq!(dirty, vec![4], "chunk 64 lies in region 4");
    }

    /// A pool's checksums through a cache of `MIN_RESIDENT_PAGES` pages
    /// over four times as many: every page is evicted and read back.
    #[tokio::test]
    async fn a_small_cache_evicts_clean_pages_and_reads_them_back() {
        let pages = 16;
        let (i, dev) = small_cache(pages);
        let sum = |b: u64| (b as u32).wrapping_mul(2_654_435_761) | 1;
        for p in 0..pages {
            // Two blocks in each page, one at each end.
            for b in [p * SUMS_PER_PAGE, p * SUMS_PER_PAGE + SUMS_PER_PAGE - 1] {
                let pins = i.pin_sums(&dev, b, 1).await.unwrap();
                i.set_sums(b, &[sum(b)]).unwrap();
                drop(pins);
            }
        }
        // Dirty pages stay, whatever the bound.
        assert_eq!(i.pages.resident(), pages);
        i.write_pages(&dev).await.unwrap();
        assert_eq!(i.pages.resident(), pages::MIN_RESIDENT_PAGES);
        for p in (0..pages).rev() {
            let b = p * SUMS_PER_PAGE;
            let got = i.sums(&dev, b, SUMS_PER_PAGE as usize).await.unwrap();
            assert_eq!(got.first(), Some(&sum(b)), "page {p}");
            assert_eq!(got.last(), Some(&sum(b + SUMS_PER_PAGE - 1)), "page {p}");
            assert!(got[1..got.len() - 1].iter().all(|s| *s == 0));
            assert!(i.pages.resident() <= pages::MIN_RESIDENT_PAGES);
        }
        let s = i.stats();
        assert!(s.page_loads >= pages - pages::MIN_RESIDENT_PAGES, "{s:?}");
        assert!(
            s.page_evictions >= pages - pages::MIN_RESIDENT_PAGES,
            "{s:?}"
        );
        assert!(s.memory_bytes < (pages::MIN_RESIDENT_PAGES + 1) * META_BLOCK_BYTES + 4096);
    }

    /// A pinned page is not evicted, and a write into an evicted page
    /// changes only its own checksums.
    #[tokio::test]
    async fn a_pinned_page_stays_and_a_write_into_an_evicted_page_keeps_the_rest() {
        let pages = 8;
        let (i, dev) = small_cache(pages);
        for p in 0..pages {
            let b = p * SUMS_PER_PAGE;
            let pins = i.pin_sums(&dev, b, 2).await.unwrap();
            i.set_sums(b, &[7, 8]).unwrap();
            drop(pins);
        }
        let held = i.pin_sums(&dev, 0, 1).await.unwrap();
        i.write_pages(&dev).await.unwrap();
        for p in 1..pages {
            let _ = i.sums(&dev, p * SUMS_PER_PAGE, 1).await.unwrap();
        }
        let loads = i.pages.loads.load(Ordering::Relaxed);
        assert_eq!(i.sums(&dev, 0, 2).await.unwrap(), vec![7, 8]);
        assert_eq!(
            i.pages.loads.load(Ordering::Relaxed),
            loads,
            "page 0 stayed"
        );
        drop(held);
        // Page 1 was evicted since: a write into its second block.
        let b = SUMS_PER_PAGE;
        let pins = i.pin_sums(&dev, b + 1, 1).await.unwrap();
        i.set_sums(b + 1, &[9]).unwrap();
        drop(pins);
        assert_eq!(i.sums(&dev, b, 3).await.unwrap(), vec![7, 9, 0]);
    }
}
