//! Medium commands: turning a validated READ, WRITE, WRITE AND VERIFY,
//! VERIFY, SYNCHRONIZE CACHE, PRE-FETCH, WRITE SAME, UNMAP, COMPARE AND WRITE or GET
//! LBA STATUS into one [`BlockRequest`], and its completion into data-in
//! (SBC-3 §5).
//!
//! Invariants: the CDB parser has already checked every range against the
//! capacity; a request carries only whole blocks; a completion whose data
//! does not have the size the request implies is an internal error, never
//! data handed to the initiator.

use bytes::Bytes;

use super::capacity;
use super::cdb::{ByteCheck, Command, Geometry};
use super::io::{self, BlockRequest, Extent, IoData, IoError, Pending, Then};
use super::limits::MAX_LBA_STATUS_DESCRIPTORS;
use super::sense::Sense;

/// What to do with a medium command.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Nothing to transfer (e.g. zero blocks): GOOD at once.
    Good,
    Io(Pending),
    Check(Sense),
}

fn io(request: BlockRequest, then: Then) -> Plan {
    Plan::Io(Pending {
        request,
        then,
        stamp: None,
    })
}

/// Plans a medium command; gives any other command back.
///
/// `write_through` is !WCE: every write-like request then carries `fua`.
/// `data_out` is all the data-out the initiator sent.
pub(crate) fn plan(
    geometry: Geometry,
    write_through: bool,
    command: Command,
    data_out: Bytes,
) -> Result<Plan, Command> {
    let bs = geometry.block_size as usize;
    let plan = match command {
        Command::Read { blocks: 0, .. } => Plan::Good,
        Command::Read { lba, blocks } => io(
            BlockRequest::Read { lba, blocks },
            Then::ReadData {
                bytes: u64::from(blocks) * bs as u64,
            },
        ),
        Command::Write { lba, blocks, fua } => {
            write(bs, lba, blocks, fua || write_through, data_out)
        }
        // Verification is the replicas' crc32c check of every frame, and the
        // data is durable on a quorum before GOOD.
        Command::WriteAndVerify { lba, blocks } => write(bs, lba, blocks, true, data_out),
        Command::Verify {
            lba,
            blocks,
            bytchk,
        } => verify(bs, lba, blocks, bytchk, data_out),
        Command::SynchronizeCache { .. } => io(BlockRequest::Flush, Then::Status),
        // The target keeps no cache (every read goes to a replica), and
        // SBC-3 §5.9 answers GOOD when the cache cannot hold the blocks
        // (CONDITION MET would claim they are now cached).
        Command::PreFetch { .. } => Plan::Good,
        Command::WriteSame {
            lba,
            blocks,
            unmap,
            ndob,
        } => {
            let block = if ndob {
                Bytes::from(vec![0u8; bs])
            } else if data_out.len() >= bs {
                data_out.slice(..bs)
            } else {
                return Ok(Plan::Check(Sense::parameter_list_length()));
            };
            // Unmapped blocks read as zeros (LBPRZ = 1), so unmapping is
            // exactly writing zeros; any other pattern is written.
            let request = if unmap && block.iter().all(|&b| b == 0) {
                BlockRequest::Unmap {
                    extents: vec![Extent { lba, blocks }],
                    fua: write_through,
                }
            } else {
                BlockRequest::WriteSame {
                    lba,
                    blocks,
                    block,
                    fua: write_through,
                }
            };
            io(request, Then::Status)
        }
        Command::Unmap { param_len } => {
            match capacity::unmap_extents(geometry, param_len, &data_out) {
                Ok(extents) if extents.is_empty() => Plan::Good,
                Ok(extents) => io(
                    BlockRequest::Unmap {
                        extents,
                        fua: write_through,
                    },
                    Then::Status,
                ),
                Err(sense) => Plan::Check(sense),
            }
        }
        // SBC-3 §5.2: zero blocks is no operation, not an error -- unless the
        // initiator sent data for it, which no zero-block command can take.
        Command::CompareAndWrite { blocks: 0, .. } if data_out.is_empty() => Plan::Good,
        Command::CompareAndWrite { lba, blocks, fua } => {
            // SBC-3 §5.2: the data-out is exactly the verify instance then
            // the write instance; any other size is refused, not guessed at.
            let half = usize::from(blocks) * bs;
            if data_out.len() != 2 * half {
                return Ok(Plan::Check(Sense::invalid_cdb_field(13, None)));
            }
            io(
                BlockRequest::CompareAndWrite {
                    lba,
                    verify: data_out.slice(..half),
                    write: data_out.slice(half..),
                    fua: fua || write_through,
                },
                Then::Status,
            )
        }
        Command::GetLbaStatus { lba, alloc_len } => {
            // Room for this many 16-byte descriptors after the 8-byte header.
            let room = (alloc_len as usize).saturating_sub(8) / 16;
            io(
                BlockRequest::LbaStatus {
                    lba,
                    max_extents: room.clamp(1, MAX_LBA_STATUS_DESCRIPTORS),
                },
                Then::LbaStatus { lba, alloc_len },
            )
        }
        other => return Err(other),
    };
    Ok(plan)
}

/// Writes the whole blocks of data-out received, at most `blocks`.
fn write(bs: usize, lba: u64, blocks: u32, fua: bool, data_out: Bytes) -> Plan {
    let received = u32::try_from(data_out.len() / bs).unwrap_or(u32::MAX);
    let blocks = blocks.min(received);
    if blocks == 0 {
        return Plan::Good;
    }
    let data = data_out.slice(..blocks as usize * bs);
    io(BlockRequest::Write { lba, data, fua }, Then::Status)
}

fn verify(bs: usize, lba: u64, blocks: u32, bytchk: ByteCheck, data_out: Bytes) -> Plan {
    let (blocks, expected, single_block) = match bytchk {
        // Every replica read is crc32c-checked and the range is valid:
        // there is nothing more a medium verification could find.
        ByteCheck::None => return Plan::Good,
        ByteCheck::Full => {
            let received = u32::try_from(data_out.len() / bs).unwrap_or(u32::MAX);
            let blocks = blocks.min(received);
            (blocks, data_out.slice(..blocks as usize * bs), false)
        }
        ByteCheck::SingleBlock if data_out.len() >= bs => (blocks, data_out.slice(..bs), true),
        ByteCheck::SingleBlock => return Plan::Check(Sense::parameter_list_length()),
    };
    if blocks == 0 {
        return Plan::Good;
    }
    io(
        BlockRequest::Read { lba, blocks },
        Then::Compare {
            expected,
            single_block,
            read_bytes: u64::from(blocks) * bs as u64,
        },
    )
}

/// The data-in of a completed medium command (already cut to the
/// allocation length), or why it failed.
pub(crate) fn finish(geometry: Geometry, then: Then, data: IoData) -> Result<Bytes, IoError> {
    match (then, data) {
        (Then::Status | Then::Stop, _) => Ok(Bytes::new()),
        (Then::ReadData { bytes }, IoData::Read(read)) if read.len() as u64 == bytes => Ok(read),
        (
            Then::Compare {
                expected,
                single_block,
                read_bytes,
            },
            IoData::Read(read),
        ) if read.len() as u64 == read_bytes => {
            let mismatch = if single_block {
                let bs = expected.len().max(1);
                read.chunks(bs).enumerate().find_map(|(i, block)| {
                    io::first_difference(&expected, block).map(|at| i * bs + at)
                })
            } else {
                io::first_difference(&expected, &read)
            };
            match mismatch {
                None => Ok(Bytes::new()),
                Some(at) => Err(IoError::Miscompare {
                    offset_bytes: at as u64,
                }),
            }
        }
        (Then::LbaStatus { lba, alloc_len }, IoData::LbaStatus(extents)) => {
            let mut data =
                capacity::lba_status(geometry, lba, &extents).ok_or(IoError::Internal)?;
            data.truncate(usize::try_from(alloc_len).unwrap_or(usize::MAX));
            Ok(Bytes::from(data))
        }
        // The volume answered with the wrong kind or size of data.
        _ => Err(IoError::Internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry {
        blocks: 100,
        block_size: 512,
    };

    fn planned(command: Command, data: Vec<u8>) -> Plan {
        plan(GEO, false, command, Bytes::from(data)).expect("a medium command")
    }

    #[test]
    fn non_medium_commands_are_given_back() {
        let back = plan(GEO, false, Command::TestUnitReady, Bytes::new());
        assert!(matches!(back, Err(Command::TestUnitReady)));
    }

    #[test]
    fn write_through_forces_fua() {
        let w = Command::Write {
            lba: 1,
            blocks: 1,
            fua: false,
        };
        let Ok(Plan::Io(p)) = plan(GEO, true, w, Bytes::from(vec![0; 512])) else {
            panic!("expected IO");
        };
        assert!(matches!(p.request, BlockRequest::Write { fua: true, .. }));
    }

    #[test]
    fn single_block_verify_compares_each_block() {
        let v = Command::Verify {
            lba: 0,
            blocks: 3,
            bytchk: ByteCheck::SingleBlock,
        };
        let Plan::Io(p) = planned(v, vec![7; 512]) else {
            panic!("expected IO");
        };
        let mut medium = vec![7u8; 3 * 512];
        medium[2 * 512 + 9] = 0;
        let r = finish(GEO, p.then, IoData::Read(Bytes::from(medium)));
        assert_eq!(r, Err(IoError::Miscompare { offset_bytes: 1033 }));
    }

    #[test]
    fn short_read_answer_is_internal_not_a_miscompare() {
        let v = Command::Verify {
            lba: 0,
            blocks: 2,
            bytchk: ByteCheck::Full,
        };
        let Plan::Io(p) = planned(v, vec![0; 1024]) else {
            panic!("expected IO");
        };
        let r = finish(GEO, p.then, IoData::Read(Bytes::from(vec![0; 512])));
        assert_eq!(r, Err(IoError::Internal));
    }

    #[test]
    fn write_same_without_data_is_a_parameter_list_error() {
        let ws = Command::WriteSame {
            lba: 0,
            blocks: 4,
            unmap: false,
            ndob: false,
        };
        assert!(matches!(
            planned(ws, vec![0; 100]),
            Plan::Check(s) if s == Sense::parameter_list_length()
        ));
    }
}
