//! Shared helpers for the SCSI scenario tests: an in-memory volume that
//! performs block requests, and CDB builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use cstor_target::scsi::{
    BlockRequest, BlockSize, Completed, Extent, Identity, IoData, IoError, LbaStatusExtent,
    LogicalUnit, LuConfig, Nexus, Outcome, Pending, Provisioning, Response, Sense, Status,
};

pub const BS: usize = 512;

/// An in-memory volume: the data, which blocks are mapped, and a log of
/// the requests it performed.
pub struct MemVolume {
    pub data: Vec<u8>,
    pub mapped: Vec<bool>,
    pub log: Vec<BlockRequest>,
    /// Answer every request with this error instead of performing it.
    pub fail_with: Option<IoError>,
}

impl MemVolume {
    pub fn new(blocks: usize) -> Self {
        MemVolume {
            data: vec![0; blocks * BS],
            mapped: vec![false; blocks],
            log: Vec::new(),
            fail_with: None,
        }
    }

    fn range(lba: u64, blocks: u64) -> std::ops::Range<usize> {
        lba as usize * BS..(lba + blocks) as usize * BS
    }

    fn map(&mut self, lba: u64, blocks: u64, mapped: bool) {
        for b in lba..lba + blocks {
            self.mapped[b as usize] = mapped;
        }
    }

    pub fn perform(&mut self, request: &BlockRequest) -> Result<IoData, IoError> {
        self.log.push(request.clone());
        if let Some(e) = self.fail_with {
            return Err(e);
        }
        match request {
            BlockRequest::Read { lba, blocks } => Ok(IoData::Read(Bytes::copy_from_slice(
                &self.data[Self::range(*lba, u64::from(*blocks))],
            ))),
            BlockRequest::Write { lba, data, .. } => {
                let blocks = (data.len() / BS) as u64;
                self.data[Self::range(*lba, blocks)].copy_from_slice(data);
                self.map(*lba, blocks, true);
                Ok(IoData::Done)
            }
            BlockRequest::WriteSame {
                lba, blocks, block, ..
            } => {
                for chunk in self.data[Self::range(*lba, *blocks)].chunks_mut(BS) {
                    chunk.copy_from_slice(block);
                }
                self.map(*lba, *blocks, true);
                Ok(IoData::Done)
            }
            BlockRequest::Unmap { extents, .. } => {
                for Extent { lba, blocks } in extents {
                    self.data[Self::range(*lba, *blocks)].fill(0);
                    self.map(*lba, *blocks, false);
                }
                Ok(IoData::Done)
            }
            BlockRequest::Flush => Ok(IoData::Done),
            BlockRequest::CompareAndWrite {
                lba, verify, write, ..
            } => {
                let blocks = (verify.len() / BS) as u64;
                let current = &self.data[Self::range(*lba, blocks)];
                if let Some(at) = current.iter().zip(verify.iter()).position(|(a, b)| a != b) {
                    return Err(IoError::Miscompare {
                        offset_bytes: at as u64,
                    });
                }
                self.data[Self::range(*lba, blocks)].copy_from_slice(write);
                self.map(*lba, blocks, true);
                Ok(IoData::Done)
            }
            BlockRequest::LbaStatus { lba, max_extents } => {
                let mut extents: Vec<LbaStatusExtent> = Vec::new();
                for b in *lba as usize..self.mapped.len() {
                    let status = if self.mapped[b] {
                        Provisioning::Mapped
                    } else {
                        Provisioning::Deallocated
                    };
                    if let Some(last) = extents.last_mut().filter(|l| l.status == status) {
                        last.extent.blocks += 1;
                        continue;
                    }
                    match extents.len() == *max_extents {
                        true => break,
                        false => extents.push(LbaStatusExtent {
                            extent: Extent {
                                lba: b as u64,
                                blocks: 1,
                            },
                            status,
                        }),
                    }
                }
                Ok(IoData::LbaStatus(extents))
            }
        }
    }
}

pub fn config(blocks: u64) -> LuConfig {
    LuConfig {
        identity: Identity {
            uuid: [7; 16],
            serial: "pvc-0001".into(),
        },
        blocks,
        block_size: BlockSize::B512,
        physical_block_exponent: 3,
        unmap_granularity_blocks: 128,
        write_cache: true,
    }
}

pub fn nexus(i: u8) -> Nexus {
    Nexus::new(&format!("iqn.2026-11.test:init{i},i,0x00023d00000{i}"), 1)
}

/// Executes `cdb` and, if it needs IO, performs it on `vol` and completes.
pub fn run(
    lu: &mut LogicalUnit,
    vol: &mut MemVolume,
    n: &Nexus,
    cdb: &[u8],
    data: &[u8],
) -> Response {
    match lu.execute(n, cdb, Bytes::copy_from_slice(data)) {
        Outcome::Done(r) => r,
        Outcome::Io(pending) => finish_io(lu, vol, pending).expect("not aborted"),
    }
}

/// Starts `cdb` from `n`: the block request it needs, to be finished later
/// with [`finish_io`] (as the shell does while the volume works on it).
pub fn start_io(lu: &mut LogicalUnit, n: &Nexus, cdb: &[u8], data: &[u8]) -> Pending {
    match lu.execute(n, cdb, Bytes::copy_from_slice(data)) {
        Outcome::Io(pending) => pending,
        Outcome::Done(r) => panic!("expected a block request, got {r:?}"),
    }
}

/// Performs `pending` on `vol` and finishes it: the response to send, or
/// `None` when the command was aborted meanwhile and gets none.
pub fn finish_io(lu: &mut LogicalUnit, vol: &mut MemVolume, pending: Pending) -> Option<Response> {
    let result = vol.perform(pending.request());
    match lu.complete(pending, result) {
        Completed::Respond(r) => Some(r),
        Completed::Aborted => None,
    }
}

/// A unit whose power-on unit attention has been consumed on `nexus(1)`
/// and `nexus(2)`.
pub fn ready_unit(blocks: u64) -> (LogicalUnit, MemVolume) {
    let mut lu = LogicalUnit::new(config(blocks)).unwrap();
    let mut vol = MemVolume::new(blocks as usize);
    for i in [1, 2] {
        let r = run(&mut lu, &mut vol, &nexus(i), &tur(), &[]);
        assert_eq!(sense_of(&r).asc, cstor_target::scsi::Asc::POWER_ON_RESET);
    }
    (lu, vol)
}

pub fn sense_of(r: &Response) -> Sense {
    assert_eq!(r.status, Status::CheckCondition, "expected CHECK CONDITION");
    Sense::decode(r.sense.as_deref().expect("sense data")).expect("valid sense")
}

pub fn assert_good(r: &Response) {
    assert_eq!(
        r.status,
        Status::Good,
        "sense: {:?}",
        r.sense.as_deref().and_then(Sense::decode)
    );
}

pub fn tur() -> Vec<u8> {
    vec![0; 6]
}

pub fn rw10(opcode: u8, flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![opcode, flags, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn rw16(opcode: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    rw10(0x28, 0, lba, blocks)
}

pub fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    rw10(0x2a, 0, lba, blocks)
}

pub fn compare_and_write(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = rw16(0x89, 0, lba, 0);
    c[13] = blocks;
    c
}

pub fn unmap_cdb(param_len: u16) -> Vec<u8> {
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&param_len.to_be_bytes());
    c
}

pub fn unmap_list(descriptors: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; 8];
    for (lba, n) in descriptors {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    let len = l.len();
    l[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
    l[2..4].copy_from_slice(&((len - 8) as u16).to_be_bytes());
    l
}

pub fn pr_out(action: u8, pr_type: u8, key: u64, sa_key: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5f, action, pr_type, 0, 0, 0, 0, 0, 24, 0];
    let mut params = vec![0u8; 24];
    params[..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (cdb, params)
}
