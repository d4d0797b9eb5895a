//! Every bound of the SCSI layer, named in one place.
//!
//! The Block Limits VPD page (SBC-3 §6.5.3), the CDB parser and the logical
//! unit all read these constants, so what we advertise is what we enforce.
//! Byte bounds are converted to blocks with [`blocks_for_bytes`] for the
//! volume's block size.

/// Largest READ/WRITE/VERIFY/WRITE AND VERIFY transfer per command: bounds
/// the memory one command may pin in the target (16 MiB, the iSCSI layer's
/// per-command bound; the connection's write buffer bound caps the sum).
pub const MAX_TRANSFER_BYTES: u32 = crate::iscsi::limits::MAX_COMMAND_DATA_BYTES;

/// Transfer size the volume handles best (one replication frame batch).
pub const OPTIMAL_TRANSFER_BYTES: u32 = 1 << 20;

/// Largest total number of blocks one UNMAP command may deallocate.
pub const MAX_UNMAP_LBA_COUNT: u32 = 1 << 20;

/// Largest number of block descriptors in one UNMAP parameter list.
pub const MAX_UNMAP_BLOCK_DESCRIPTORS: u32 = 256;

/// Largest NUMBER OF LOGICAL BLOCKS of one WRITE SAME (with or without
/// UNMAP): what WRITE SAME(10)'s 16-bit field can carry, so both CDB sizes
/// share one bound and one command's work stays small (256 MiB at 4 KiB).
/// Larger ranges are split by the initiator (Linux reads it from the Block
/// Limits page) or deallocated with UNMAP.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xffff;

/// Largest NUMBER OF LOGICAL BLOCKS of one COMPARE AND WRITE.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 16;

/// Largest number of persistent reservation registrations per logical unit.
pub const MAX_PR_REGISTRATIONS: usize = 64;

/// Largest number of I_T nexuses whose unit attentions we track.
pub const MAX_NEXUSES: usize = 256;

/// Largest number of unit attention conditions queued per I_T nexus; older
/// ones are dropped first (SPC-4 §5.14 lets a device server do so).
pub const MAX_UNIT_ATTENTIONS_PER_NEXUS: usize = 8;

/// Largest number of descriptors in a GET LBA STATUS answer.
pub const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// Largest MODE SELECT parameter list we accept (header, block descriptor
/// and our few pages fit comfortably).
pub const MAX_MODE_SELECT_BYTES: u16 = 512;

/// Largest length of an iSCSI initiator port name we keep for a nexus
/// (RFC 7143 §4.2.7.1: 223 bytes of name plus ",i,0x" and 12 hex digits).
pub const MAX_INITIATOR_PORT_NAME_BYTES: usize = 255;

/// Longest unit serial number (VPD page 80h, SPC-4 §7.8.15): printable
/// ASCII that fits one VPD page with room to spare.
pub const MAX_SERIAL_BYTES: usize = 252;

/// Recommended command timeout reported by REPORT SUPPORTED OPERATION CODES
/// (RCTD), in seconds: a write waits for a replica quorum.
pub const RECOMMENDED_TIMEOUT_S: u32 = 30;

/// Number of whole blocks of `block_size` bytes in `bytes` (0 if
/// `block_size` is 0, which [`super::lu::BlockSize`] rules out).
pub const fn blocks_for_bytes(bytes: u32, block_size: u32) -> u32 {
    match bytes.checked_div(block_size) {
        Some(blocks) => blocks,
        None => 0,
    }
}
