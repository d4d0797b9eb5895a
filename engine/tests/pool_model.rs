//! Model-based property test: random sequences of every pool operation
//! (create, write, write-zeroes, unmap, read, flush, snapshot, delete
//! snapshot, clone, delete volume, grow, add device, reopen clean and by
//! journal replay)
//! against an in-memory model of each volume's and snapshot's bytes. After
//! every operation the pool's space accounting is audited (every chunk
//! owned once, the allocator agrees) and at the end every volume and
//! snapshot is read back in full. A reopen (and a last one by journal
//! replay at the end) must give back every chunk's io_seq, in the volume
//! and in each snapshot, and each volume's durable io_seq, exactly as the
//! pool held them before: a coalesced overwrite record that a commit lost,
//! or wrote into the wrong layer, shows there. `PROPTEST_CASES` raises the
//! case count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;

use cstor_engine::io::MemDevice;
use cstor_engine::{ChunkChange, DeviceRef, ErrorKind, Pool, PoolOptions, Provisioning};
use proptest::prelude::*;

const BLOCK: u64 = 512;
const CHUNK: u32 = 4096;
const DEV_BYTES: usize = 3 << 20;

#[derive(Debug, Clone)]
enum Op {
    Create {
        blocks: u64,
        thick: bool,
    },
    Write {
        vol: usize,
        block: u64,
        blocks: u64,
        seed: u8,
    },
    Zero {
        vol: usize,
        block: u64,
        blocks: u64,
    },
    Unmap {
        vol: usize,
        block: u64,
        blocks: u64,
    },
    Read {
        vol: usize,
        block: u64,
        blocks: u64,
    },
    Flush,
    Snapshot {
        vol: usize,
    },
    DeleteSnapshot {
        vol: usize,
        snap: usize,
    },
    Clone {
        vol: usize,
        snap: usize,
    },
    DeleteVolume {
        vol: usize,
    },
    /// A snapshot as a rebuild recreates it: inserted under the live layer,
    /// filled with the volume's content.
    RebuiltSnapshot {
        vol: usize,
    },
    Grow {
        vol: usize,
        blocks: u64,
    },
    Reopen {
        clean: bool,
    },
    AddDevice,
}

fn op() -> impl Strategy<Value = Op> {
    let vol = 0usize..4;
    prop_oneof![
        2 => (1u64..160, any::<bool>()).prop_map(|(blocks, thick)| Op::Create { blocks, thick: thick && blocks < 40 }),
        10 => (vol.clone(), 0u64..160, 1u64..24, any::<u8>()).prop_map(|(vol, block, blocks, seed)| Op::Write { vol, block, blocks, seed }),
        2 => (vol.clone(), 0u64..160, 1u64..24).prop_map(|(vol, block, blocks)| Op::Zero { vol, block, blocks }),
        3 => (vol.clone(), 0u64..160, 1u64..40).prop_map(|(vol, block, blocks)| Op::Unmap { vol, block, blocks }),
        3 => (vol.clone(), 0u64..160, 1u64..40).prop_map(|(vol, block, blocks)| Op::Read { vol, block, blocks }),
        1 => Just(Op::Flush),
        3 => vol.clone().prop_map(|vol| Op::Snapshot { vol }),
        2 => (vol.clone(), 0usize..4).prop_map(|(vol, snap)| Op::DeleteSnapshot { vol, snap }),
        2 => (vol.clone(), 0usize..4).prop_map(|(vol, snap)| Op::Clone { vol, snap }),
        1 => vol.clone().prop_map(|vol| Op::DeleteVolume { vol }),
        1 => vol.clone().prop_map(|vol| Op::RebuiltSnapshot { vol }),
        1 => (vol, 1u64..64).prop_map(|(vol, blocks)| Op::Grow { vol, blocks }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => Just(Op::AddDevice),
    ]
}

struct ModelVolume {
    name: String,
    data: Vec<u8>,
    snaps: Vec<(String, Vec<u8>)>,
}

struct Harness {
    devs: Vec<DeviceRef>,
    pool: Option<Pool>,
    vols: Vec<ModelVolume>,
    next_name: u32,
    io_seq: u64,
}

fn opts() -> PoolOptions {
    PoolOptions {
        chunk_bytes: CHUNK,
        commit_interval: None,
        journal_bytes: Some(64 * 1024),
        ..PoolOptions::default()
    }
}

fn fill(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8) | 1)
        .collect()
}

/// Clamps (block, blocks) into a volume of `len` bytes; None when empty.
fn clamp(len: usize, block: u64, blocks: u64) -> Option<(u64, usize)> {
    let total = len as u64 / BLOCK;
    let start = block % total.max(1);
    let n = blocks.min(total - start);
    (n > 0).then_some((start * BLOCK, (n * BLOCK) as usize))
}

/// What a reopen must give back of one volume: its durable io_seq, and
/// every chunk written (with its io_seq) of the volume and of each of its
/// snapshots.
type Seqs = Vec<(String, u64, Vec<(Option<String>, Vec<ChunkChange>)>)>;

impl Harness {
    fn pool(&self) -> &Pool {
        self.pool.as_ref().unwrap()
    }

    fn seqs(&self) -> Seqs {
        let changes = |v: &cstor_engine::Volume, snap: Option<&str>| {
            let mut all = Vec::new();
            let mut from = Some(0);
            while let Some(offset) = from {
                let page = v.changed_chunks(snap, 0, offset).unwrap();
                all.extend(page.changes);
                from = page.next_offset;
            }
            all
        };
        self.vols
            .iter()
            .map(|mv| {
                let v = self.pool().volume(&mv.name).unwrap();
                let mut layers = vec![(None, changes(&v, None))];
                for (s, _) in &mv.snaps {
                    layers.push((Some(s.clone()), changes(&v, Some(s))));
                }
                (mv.name.clone(), v.last_durable_io_seq().unwrap(), layers)
            })
            .collect()
    }

    fn pick(&self, vol: usize) -> Option<usize> {
        (!self.vols.is_empty()).then(|| vol % self.vols.len())
    }

    fn name(&mut self, prefix: &str) -> String {
        self.next_name += 1;
        format!("{prefix}{}", self.next_name)
    }

    fn audit(&self) -> Result<(), TestCaseError> {
        let a = self.pool().audit();
        prop_assert!(a.owned_twice.is_empty(), "owned twice {:?}", a.owned_twice);
        prop_assert!(
            a.owned_but_free.is_empty(),
            "owned but free {:?}",
            a.owned_but_free
        );
        prop_assert!(a.used_not_owned.is_empty(), "leaked {:?}", a.used_not_owned);
        prop_assert!(a.problems.is_empty(), "{:?}", a.problems);
        Ok(())
    }

    async fn check_all(&self) -> Result<(), TestCaseError> {
        for mv in &self.vols {
            let v = self.pool().volume(&mv.name).unwrap();
            let mut got = vec![0xAA; mv.data.len()];
            v.read(0, &mut got).await.unwrap();
            prop_assert!(got == mv.data, "volume {} differs", mv.name);
            for (s, want) in &mv.snaps {
                let mut got = vec![0xAA; want.len()];
                v.read_snapshot(s, 0, &mut got).await.unwrap();
                prop_assert!(&got == want, "snapshot {s} of {} differs", mv.name);
            }
        }
        Ok(())
    }

    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.io_seq += 1;
        let seq = self.io_seq;
        match op.clone() {
            Op::Create { blocks, thick } => {
                let name = self.name("v");
                let prov = if thick {
                    Provisioning::Thick
                } else {
                    Provisioning::Thin
                };
                match self
                    .pool()
                    .create_volume(&name, blocks * BLOCK, BLOCK as u32, prov)
                    .await
                {
                    Ok(_) => self.vols.push(ModelVolume {
                        name,
                        data: vec![0; (blocks * BLOCK) as usize],
                        snaps: Vec::new(),
                    }),
                    Err(e) => prop_assert_eq!(e.kind(), ErrorKind::NoSpace),
                }
            }
            Op::Write {
                vol,
                block,
                blocks,
                seed,
            } => {
                let Some(i) = self.pick(vol) else {
                    return Ok(());
                };
                let Some((off, len)) = clamp(self.vols[i].data.len(), block, blocks) else {
                    return Ok(());
                };
                let data = fill(seed, len);
                let v = self.pool().volume(&self.vols[i].name).unwrap();
                match v.write(off, &data, seq).await {
                    Ok(()) => {
                        self.vols[i].data[off as usize..off as usize + len].copy_from_slice(&data)
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind(), ErrorKind::NoSpace);
                        // All or nothing: a write refused for space
                        // changed none of its chunks.
                        let mut got = vec![0; len];
                        v.read(off, &mut got).await.unwrap();
                        prop_assert_eq!(
                            &got[..],
                            &self.vols[i].data[off as usize..off as usize + len]
                        );
                    }
                }
            }
            Op::Zero { vol, block, blocks } | Op::Unmap { vol, block, blocks } => {
                let Some(i) = self.pick(vol) else {
                    return Ok(());
                };
                let Some((off, len)) = clamp(self.vols[i].data.len(), block, blocks) else {
                    return Ok(());
                };
                let v = self.pool().volume(&self.vols[i].name).unwrap();
                let res = if matches!(op, Op::Zero { .. }) {
                    v.write_zeroes(off, len as u64, seq).await
                } else {
                    v.unmap(off, len as u64, seq).await
                };
                match res {
                    Ok(()) => self.vols[i].data[off as usize..off as usize + len].fill(0),
                    Err(e) => {
                        prop_assert_eq!(e.kind(), ErrorKind::NoSpace);
                        let mut got = vec![0; len];
                        v.read(off, &mut got).await.unwrap();
                        for (j, b) in got.iter().enumerate() {
                            let m = &mut self.vols[i].data[off as usize + j];
                            prop_assert!(*b == *m || *b == 0);
                            *m = *b;
                        }
                    }
                }
            }
            Op::Read { vol, block, blocks } => {
                let Some(i) = self.pick(vol) else {
                    return Ok(());
                };
                let Some((off, len)) = clamp(self.vols[i].data.len(), block, blocks) else {
                    return Ok(());
                };
                let v = self.pool().volume(&self.vols[i].name).unwrap();
                let mut got = vec![0xAA; len];
                v.read(off, &mut got).await.unwrap();
                prop_assert!(
                    got[..] == self.vols[i].data[off as usize..off as usize + len],
                    "read differs"
                );
            }
            Op::Flush => self.pool().flush().await.unwrap(),
            Op::Snapshot { vol } => {
                let Some(i) = self.pick(vol) else {
                    return Ok(());
                };
                let name = self.name("s");
                let v = self.pool().volume(&self.vols[i].name).unwrap();
                match v.create_snapshot(&name).await {
                    Ok(()) => {
                        let data = self.vols[i].data.clone();
                        self.vols[i].snaps.push((name, data));
                    }
                    Err(e) => prop_assert_eq!(e.kind(), ErrorKind::NoSpace),
                }
            }
            Op::DeleteSnapshot { vol, snap } => {
                let Some(i) = self.pick(vol) else {
                    return Ok(());
                };
                if self.vols[i].snaps.is_empty() {
                    return Ok(());
                }
                let j = snap % self.vols[i].snaps.len();
                let (name, _) = self.vols[i].snaps.remove(j);
                let v = self.pool().volume(&self.vols[i].name).unwrap();
                v.delete_snapshot(&name).await.unwrap();
            }
            Op::Clone { vol, snap } => {
                let Some(i) = self.pick(vol) else {
                    return Ok(());
                };
                if self.vols[i].snaps.is_empty() {
                    return Ok(());
                }
                let j = snap % self.vols[i].snaps.len();
                let (sname, data) = self.vols[i].snaps[j].clone();
                let name = self.name("c");
                let v = self.pool().volume(&self.vols[i].name).unwrap();
                v.clone_snapshot(&sname, &name).await.unwrap();
                self.vols.push(ModelVolume {
                    name,
                    data,
                    snaps: Vec::new(),
                });
            }
            Op::RebuiltSnapshot { vol } => {
                let Some(i) = self.pick(vol) else {
                    return Ok(());
                };
                let name = self.name("r");
                let data = self.vols[i].data.clone();
                let v = self.pool().volume(&self.vols[i].name).unwrap();
                let filled = async {
                    v.insert_rebuilt_snapshot(&name, seq, data.len() as u64)
                        .await?;
                    // Pieces of at most 32 KiB (well under MAX_IO_BYTES).
                    for (k, piece) in data.chunks(64 * BLOCK as usize).enumerate() {
                        let seqs = vec![seq; piece.len() / BLOCK as usize];
                        let off = (k * 64) as u64 * BLOCK;
                        v.apply_rebuild_snapshot(&name, off, piece, &seqs).await?;
                    }
                    Ok::<(), cstor_engine::Error>(())
                }
                .await;
                match filled {
                    Ok(()) => self.vols[i].snaps.push((name, data)),
                    Err(e) => {
                        prop_assert_eq!(e.kind(), ErrorKind::NoSpace);
                        // What a rebuild does with a snapshot it could not
                        // fill.
                        if let Err(e) = v.delete_snapshot(&name).await {
                            prop_assert_eq!(e.kind(), ErrorKind::NotFound);
                        }
                    }
                }
            }
            Op::DeleteVolume { vol } => {
                let Some(i) = self.pick(vol) else {
                    return Ok(());
                };
                let mv = self.vols.remove(i);
                self.pool().delete_volume(&mv.name).await.unwrap();
            }
            Op::Grow { vol, blocks } => {
                let Some(i) = self.pick(vol) else {
                    return Ok(());
                };
                let new_len = self.vols[i].data.len() + (blocks * BLOCK) as usize;
                match self
                    .pool()
                    .grow_volume(&self.vols[i].name, new_len as u64)
                    .await
                {
                    Ok(()) => self.vols[i].data.resize(new_len, 0),
                    Err(e) => prop_assert_eq!(e.kind(), ErrorKind::NoSpace),
                }
            }
            Op::AddDevice => {
                let dev: DeviceRef = Arc::new(MemDevice::new(1 << 20));
                match self.pool().add_device(dev.clone()).await {
                    Ok(()) => self.devs.push(dev),
                    // The metadata area was sized for twice the start.
                    Err(e) => prop_assert_eq!(e.kind(), ErrorKind::NoSpace),
                }
            }
            Op::Reopen { clean } => {
                let pool = self.pool.take().unwrap();
                if clean {
                    pool.close().await.unwrap();
                } else {
                    // Durable through the journal only (no checkpoint).
                    pool.flush().await.unwrap();
                }
                self.pool = Some(pool);
                let before = self.seqs();
                drop(self.pool.take());
                // Devices in reverse order: labels put them back.
                let devs: Vec<DeviceRef> = self.devs.iter().rev().cloned().collect();
                self.pool = Some(Pool::open(devs, &opts()).await.unwrap());
                prop_assert!(
                    self.seqs() == before,
                    "io_seqs differ after a reopen ({}): {:?} became {:?}",
                    if clean { "clean" } else { "by journal replay" },
                    before,
                    self.seqs()
                );
            }
        }
        self.audit()
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dev: DeviceRef = Arc::new(MemDevice::new(DEV_BYTES));
        let pool = Pool::create(vec![dev.clone()], &opts()).await.unwrap();
        let mut h = Harness {
            devs: vec![dev],
            pool: Some(pool),
            vols: Vec::new(),
            next_name: 0,
            io_seq: 0,
        };
        h.apply(&Op::Create {
            blocks: 64,
            thick: false,
        })
        .await?;
        for op in &ops {
            h.apply(op).await?;
        }
        h.check_all().await?;
        h.apply(&Op::Reopen { clean: false }).await?;
        h.check_all().await?;
        // Used space is exactly what the layers own once frees committed.
        h.pool().flush().await.unwrap();
        let a = h.pool().audit();
        let stats = h.pool().stats();
        prop_assert_eq!(stats.used_bytes, a.owned * u64::from(CHUNK));
        let names: BTreeSet<String> = h
            .pool()
            .list_volumes()
            .into_iter()
            .map(|v| v.name)
            .collect();
        let want: BTreeSet<String> = h.vols.iter().map(|v| v.name.clone()).collect();
        prop_assert_eq!(names, want);
        Ok(())
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn pool_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
