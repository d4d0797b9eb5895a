//! `CrashDevice`: an in-memory device that simulates power loss, for the
//! pool's crash-consistency tests.
//!
//! Job: keep two images, `durable` (what survived the last completed
//! `sync_data`) and `live` (what reads see), plus the list of writes and
//! discards since that sync. [`CrashDevice::crash`] builds the image a
//! power cut could leave: every unsynced write is independently either
//! applied or dropped (seeded, reproducible), in issue order, and
//! optionally the last one is torn, each of its 512-byte sectors
//! independently landing or not. [`CrashDevice::cut_power_after`] makes
//! every operation after the K-th fail with EIO, so a test can crash a
//! workload after each of its operations in turn.
//!
//! Invariants:
//! - `durable` + every pending write applied in order == `live`.
//! - A crash image equals `durable` except where an unsynced write
//!   landed; each of its sectors holds either the durable data or the data
//!   of a pending write covering it (the property test below checks this
//!   against a model).
//! - Once power is cut nothing changes any more: no write, sync or discard
//!   reaches either image.
//!
//! Model: redb's `tests/crash_consistency.rs` (live and durable images).

use std::io;

use parking_lot::Mutex;

use super::mem::{check_alignment, range, MEM_DEFAULT_ALIGN};
use super::{
    check_buf, check_request, ready, AlignedBuf, BufResult, Device, IoError, IoFuture, MemDevice,
};

/// Granularity at which a torn write lands: the sector size disks make
/// atomic.
pub const TORN_SECTOR_BYTES: usize = 512;

/// How a simulated power cut treats the unsynced writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPolicy {
    /// Seed of the choice of which unsynced writes land.
    pub seed: u64,
    /// Tear the last unsynced write at sector granularity (instead of
    /// applying or dropping it whole).
    pub tear_last: bool,
}

impl CrashPolicy {
    /// A policy with `seed` that tears the last write.
    pub fn torn(seed: u64) -> Self {
        Self {
            seed,
            tear_last: true,
        }
    }

    /// A policy with `seed` where every write lands whole or not at all.
    pub fn whole(seed: u64) -> Self {
        Self {
            seed,
            tear_last: false,
        }
    }
}

/// A write or discard issued since the last completed sync.
#[derive(Debug, Clone)]
struct Pending {
    offset: usize,
    /// What the range holds once it lands (zeros for a discard).
    data: Vec<u8>,
}

struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Operations accepted so far (reads, writes, syncs, discards).
    ops: u64,
    /// Operations allowed before the power goes; `None` = never.
    power_budget: Option<u64>,
}

impl State {
    /// Counts an operation; `Err(EIO)` once the power is cut.
    fn begin_op(&mut self) -> io::Result<()> {
        if self.power_budget.is_some_and(|budget| self.ops >= budget) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.ops += 1;
        Ok(())
    }
}

/// An in-memory device that can lose power.
pub struct CrashDevice {
    state: Mutex<State>,
    alignment: usize,
}

impl CrashDevice {
    /// A zeroed device of `len_bytes` with 4096-byte alignment.
    pub fn new(len_bytes: usize) -> Self {
        Self::build(vec![0; len_bytes], MEM_DEFAULT_ALIGN)
    }

    /// A device whose durable contents are `image` (e.g. an earlier crash's).
    pub fn from_image(image: Vec<u8>, alignment: usize) -> Result<Self, IoError> {
        check_alignment(alignment)?;
        Ok(Self::build(image, alignment))
    }

    fn build(image: Vec<u8>, alignment: usize) -> Self {
        Self {
            state: Mutex::new(State {
                live: image.clone(),
                durable: image,
                pending: Vec::new(),
                ops: 0,
                power_budget: None,
            }),
            alignment,
        }
    }

    /// Operations accepted so far (reads, writes, syncs, discards; not the
    /// ones refused as invalid or after the power cut).
    pub fn op_count(&self) -> u64 {
        self.state.lock().ops
    }

    /// Cuts the power once `ops` operations in total have been accepted:
    /// every later operation fails with EIO and changes nothing.
    pub fn cut_power_after(&self, ops: u64) {
        self.state.lock().power_budget = Some(ops);
    }

    /// Cuts the power now.
    pub fn cut_power(&self) {
        let mut state = self.state.lock();
        state.power_budget = Some(state.ops);
    }

    /// Writes and discards not yet made durable by a sync.
    pub fn unsynced_writes(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// What survived the last completed sync.
    pub fn durable_image(&self) -> Vec<u8> {
        self.state.lock().durable.clone()
    }

    /// What reads see now.
    pub fn live_image(&self) -> Vec<u8> {
        self.state.lock().live.clone()
    }

    /// The image a power cut now could leave, per `policy` (the device
    /// itself is unchanged: call it with many seeds).
    pub fn crash_image(&self, policy: CrashPolicy) -> Vec<u8> {
        let state = self.state.lock();
        let mut image = state.durable.clone();
        let mut rng = SplitMix64(policy.seed);
        let last = state.pending.len().checked_sub(1);
        for (i, write) in state.pending.iter().enumerate() {
            let Some(dst) = image.get_mut(write.offset..write.offset + write.data.len()) else {
                continue; // checked when issued: unreachable
            };
            if policy.tear_last && Some(i) == last {
                // Sectors are absolute: a write need not start on one.
                let mut pos = 0;
                while pos < dst.len() {
                    let abs = write.offset + pos;
                    let end = (abs / TORN_SECTOR_BYTES + 1) * TORN_SECTOR_BYTES - write.offset;
                    let end = end.min(dst.len());
                    if rng.coin() {
                        if let (Some(d), Some(s)) =
                            (dst.get_mut(pos..end), write.data.get(pos..end))
                        {
                            d.copy_from_slice(s);
                        }
                    }
                    pos = end;
                }
            } else if rng.coin() {
                dst.copy_from_slice(&write.data);
            }
        }
        image
    }

    /// A memory device holding [`crash_image`](Self::crash_image), with
    /// this device's alignment: what the pool reopens after the crash.
    pub fn crash(&self, policy: CrashPolicy) -> MemDevice {
        let image = self.crash_image(policy);
        match MemDevice::from_image(image, self.alignment) {
            Ok(dev) => dev,
            // The alignment was checked when this device was built.
            Err(_) => MemDevice::new(0),
        }
    }

    fn len(&self) -> u64 {
        self.state.lock().live.len() as u64
    }

    /// Applies a checked write or discard to `live` and records it.
    fn record(&self, offset: u64, data: Vec<u8>) -> io::Result<()> {
        let r = range(offset, data.len())?;
        let mut state = self.state.lock();
        state.begin_op()?;
        let dst = state
            .live
            .get_mut(r.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        dst.copy_from_slice(&data);
        state.pending.push(Pending {
            offset: r.start,
            data,
        });
        Ok(())
    }
}

/// Splitmix64: a tiny, seedable generator so crash images are reproducible
/// without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

impl Device for CrashDevice {
    fn len_bytes(&self) -> u64 {
        self.len()
    }

    fn alignment(&self) -> usize {
        self.alignment
    }

    fn read_at(&self, mut buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        let result = check_buf(self, &buf, offset).and_then(|()| {
            let r = range(offset, buf.len())?;
            let mut state = self.state.lock();
            state.begin_op()?;
            let src = state
                .live
                .get(r)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.as_mut_slice().copy_from_slice(src);
            Ok(())
        });
        ready((result, buf))
    }

    fn write_at(&self, buf: AlignedBuf, offset: u64) -> IoFuture<BufResult> {
        let result = check_buf(self, &buf, offset)
            .and_then(|()| self.record(offset, buf.as_slice().to_vec()));
        ready((result, buf))
    }

    fn sync_data(&self) -> IoFuture<io::Result<()>> {
        let mut state = self.state.lock();
        let result = state.begin_op().map(|()| {
            let pending = std::mem::take(&mut state.pending);
            for write in pending {
                if let Some(dst) = state
                    .durable
                    .get_mut(write.offset..write.offset + write.data.len())
                {
                    dst.copy_from_slice(&write.data);
                }
            }
        });
        ready(result)
    }

    fn discard(&self, offset: u64, len_bytes: u64) -> IoFuture<io::Result<()>> {
        let result =
            check_request(self.len(), self.alignment, offset, len_bytes, None).and_then(|()| {
                let len = usize::try_from(len_bytes)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                self.record(offset, vec![0; len])
            });
        ready(result)
    }

    fn describe(&self) -> String {
        format!(
            "crash-simulating memory device of {} bytes, alignment {}",
            self.len(),
            self.alignment
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LEN: usize = 64 * 512;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    async fn write(dev: &CrashDevice, byte: u8, offset: u64, len: usize) -> io::Result<()> {
        dev.write_at(AlignedBuf::from_slice(&vec![byte; len]), offset)
            .await
            .0
    }

    #[test]
    fn synced_writes_survive_every_crash() {
        run(async {
            let dev = CrashDevice::new(16384);
            write(&dev, 1, 0, 8192).await.unwrap();
            dev.sync_data().await.unwrap();
            for seed in 0..32 {
                let image = dev.crash(CrashPolicy::torn(seed)).image();
                assert!(image[..8192].iter().all(|&b| b == 1));
                assert!(image[8192..].iter().all(|&b| b == 0));
            }
        });
    }

    #[test]
    fn unsynced_write_lands_whole_or_not_at_all_and_both_happen() {
        run(async {
            let dev = CrashDevice::new(16384);
            write(&dev, 9, 4096, 8192).await.unwrap();
            let mut seen = (false, false);
            for seed in 0..64 {
                let image = dev.crash_image(CrashPolicy::whole(seed));
                let part = &image[4096..12288];
                if part.iter().all(|&b| b == 9) {
                    seen.0 = true;
                } else if part.iter().all(|&b| b == 0) {
                    seen.1 = true;
                } else {
                    panic!("seed {seed}: a whole-policy crash tore a write");
                }
            }
            assert_eq!(seen, (true, true), "both outcomes occur over 64 seeds");
        });
    }

    #[test]
    fn torn_last_write_mixes_old_and_new_sectors() {
        run(async {
            let dev = CrashDevice::new(16384);
            write(&dev, 5, 0, 16384).await.unwrap();
            let mut mixed = false;
            for seed in 0..16 {
                let image = dev.crash_image(CrashPolicy::torn(seed));
                for sector in image.chunks(TORN_SECTOR_BYTES) {
                    assert!(sector.iter().all(|&b| b == 5) || sector.iter().all(|&b| b == 0));
                }
                mixed |= image.contains(&5) && image.contains(&0);
            }
            assert!(mixed, "some crash tore the write");
        });
    }

    #[test]
    fn same_seed_gives_same_image() {
        run(async {
            let dev = CrashDevice::new(LEN);
            for i in 0..8u8 {
                write(&dev, i + 1, u64::from(i) * 4096, 4096).await.unwrap();
            }
            for seed in 0..8 {
                assert_eq!(
                    dev.crash_image(CrashPolicy::torn(seed)),
                    dev.crash_image(CrashPolicy::torn(seed))
                );
            }
        });
    }

    #[test]
    fn after_the_power_cut_ops_fail_with_eio_and_change_nothing() {
        run(async {
            let dev = CrashDevice::new(16384);
            dev.cut_power_after(2);
            write(&dev, 1, 0, 4096).await.unwrap();
            dev.sync_data().await.unwrap();
            let err = write(&dev, 2, 4096, 4096).await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EIO));
            assert_eq!(
                dev.sync_data().await.unwrap_err().raw_os_error(),
                Some(libc::EIO)
            );
            assert_eq!(dev.op_count(), 2);
            assert_eq!(dev.unsynced_writes(), 0);
            assert_eq!(dev.live_image(), dev.durable_image());
            assert!(dev.live_image()[4096..].iter().all(|&b| b == 0));
        });
    }

    #[test]
    fn reads_see_unsynced_writes() {
        run(async {
            let dev = CrashDevice::new(8192);
            write(&dev, 3, 4096, 4096).await.unwrap();
            let (r, buf) = dev.read_at(AlignedBuf::zeroed(4096), 4096).await;
            r.unwrap();
            assert!(buf.as_slice().iter().all(|&b| b == 3));
            assert!(dev.durable_image()[4096..].iter().all(|&b| b == 0));
        });
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            sector: usize,
            sectors: usize,
            byte: u8,
        },
        Discard {
            sector: usize,
            sectors: usize,
        },
        Sync,
    }

    fn op() -> impl Strategy<Value = Op> {
        let span = (0..LEN / 512).prop_flat_map(|s| (Just(s), 1..=(LEN / 512 - s).min(8)));
        prop_oneof![
            4 => (span.clone(), 1..=255u8).prop_map(|((sector, sectors), byte)| Op::Write { sector, sectors, byte }),
            1 => span.prop_map(|(sector, sectors)| Op::Discard { sector, sectors }),
            1 => Just(Op::Sync),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Model: the durable image at the last sync, and the writes since.
        /// Every sector of a crash image holds the durable data or the data
        /// of an unsynced write covering it; with nothing unsynced the crash
        /// image is exactly the durable one.
        #[test]
        fn crash_keeps_durable_data_and_varies_only_unsynced(
            ops in proptest::collection::vec(op(), 1..40),
            seed in any::<u64>(),
            tear in any::<bool>(),
        ) {
            run(async {
                let dev = CrashDevice::from_image(vec![0; LEN], 512).unwrap();
                let mut durable = vec![0u8; LEN];
                let mut live = vec![0u8; LEN];
                let mut pending: Vec<(usize, usize, u8)> = Vec::new();
                for op in &ops {
                    match *op {
                        Op::Write { sector, sectors, byte } => {
                            write(&dev, byte, (sector * 512) as u64, sectors * 512).await.unwrap();
                            live[sector * 512..(sector + sectors) * 512].fill(byte);
                            pending.push((sector, sectors, byte));
                        }
                        Op::Discard { sector, sectors } => {
                            dev.discard((sector * 512) as u64, (sectors * 512) as u64).await.unwrap();
                            live[sector * 512..(sector + sectors) * 512].fill(0);
                            pending.push((sector, sectors, 0));
                        }
                        Op::Sync => {
                            dev.sync_data().await.unwrap();
                            durable.clone_from(&live);
                            pending.clear();
                        }
                    }
                }
                prop_assert_eq!(dev.live_image(), live);
                prop_assert_eq!(dev.durable_image(), durable.clone());
                let image = dev.crash(CrashPolicy { seed, tear_last: tear }).image();
                if pending.is_empty() {
                    prop_assert_eq!(&image, &durable);
                }
                for s in 0..LEN / 512 {
                    let got = &image[s * 512..(s + 1) * 512];
                    let old = &durable[s * 512..(s + 1) * 512];
                    let from_pending = pending
                        .iter()
                        .any(|&(at, n, byte)| (at..at + n).contains(&s) && got.iter().all(|&b| b == byte));
                    prop_assert!(got == old || from_pending, "sector {} holds data never written there", s);
                }
                Ok(())
            })?;
        }
    }
}
