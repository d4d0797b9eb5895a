//! Execution of an admitted IO against the engine (write, read, digest, flush,
//! unmap, write-zeroes, snapshot create/destroy, membership store, resize),
//! and the hand-over of the completion watermark to the engine.

use bytes::Bytes;
use cstor_engine::Error as EngineError;
use cstor_proto::{ByteRange, DigestReply, Message, Opcode, Packet};
use tracing::{debug, warn};

use super::reply::{checksum_reply, engine_error_reply};
use crate::registry::VolumeEntry;

/// Hands the volume's completion watermark to the engine, which records it
/// at its next commit as the durable io_seq.
pub(crate) fn publish_watermark(entry: &VolumeEntry) {
    if let Err(e) = entry
        .order
        .publish_watermark(|h| entry.volume.set_complete_io_seq(h))
    {
        debug!(volume = %entry.name, error = %e, "cannot record the completion watermark");
    }
}

pub(super) async fn execute(entry: &VolumeEntry, packet: &Packet) -> Packet {
    let volume = &entry.volume;
    let io_seq = packet.io_seq;
    let result: Result<Message, EngineError> = async {
        Ok(match &packet.message {
            Message::Write(w) => {
                entry.rebuild.note_live(w.offset, w.data.len() as u64);
                volume.write(w.offset, &w.data, io_seq).await?;
                if w.fua {
                    volume.flush().await?;
                }
                Message::Ack(Opcode::Write)
            }
            Message::Read(e) => {
                let mut buf = vec![0u8; e.len_bytes as usize];
                volume.read(e.offset, &mut buf).await?;
                Message::ReadData(Bytes::from(buf))
            }
            Message::Digest(e) => {
                let d = volume.digest(e.offset, u64::from(e.len_bytes)).await?;
                let bad = d
                    .bad
                    .into_iter()
                    .map(|(offset, len_bytes)| ByteRange { offset, len_bytes })
                    .collect();
                Message::RangeDigest(DigestReply::with_bad(d.digest, d.mapped_blocks, bad))
            }
            Message::Flush => {
                volume.flush().await?;
                Message::Ack(Opcode::Flush)
            }
            Message::Unmap(e) => {
                entry.rebuild.note_live(e.offset, u64::from(e.len_bytes));
                volume
                    .unmap(e.offset, u64::from(e.len_bytes), io_seq)
                    .await?;
                Message::Ack(Opcode::Unmap)
            }
            Message::WriteZeroes(e) => {
                entry.rebuild.note_live(e.offset, u64::from(e.len_bytes));
                volume
                    .write_zeroes(e.offset, u64::from(e.len_bytes), io_seq)
                    .await?;
                Message::Ack(Opcode::WriteZeroes)
            }
            Message::SnapshotCreate(name) => {
                volume.create_snapshot(name.as_str()).await?;
                Message::Ack(Opcode::SnapshotCreate)
            }
            Message::SnapshotDestroy(name) => {
                volume.delete_snapshot(name.as_str()).await?;
                Message::Ack(Opcode::SnapshotDestroy)
            }
            Message::MembershipSet(record) => {
                entry.store_membership(record).await?;
                Message::Ack(Opcode::MembershipSet)
            }
            Message::Resize { new_size_bytes } => {
                let current = volume.size_bytes()?;
                if *new_size_bytes < current {
                    // The target undoes a grow that failed short of quorum;
                    // the engine refuses it over anything but zeros.
                    volume.shrink(*new_size_bytes).await?;
                } else if *new_size_bytes > current {
                    entry.pool.grow_volume(&entry.name, *new_size_bytes).await?;
                }
                Message::Ack(Opcode::Resize)
            }
            other => {
                return Err(EngineError::new(
                    cstor_engine::ErrorKind::InvalidArgument,
                    format!("opcode {:#06x} is not an IO", other.wire_opcode()),
                ))
            }
        })
    }
    .await;
    match result {
        Ok(message) => packet.reply(message),
        Err(e) => {
            warn!(io_seq, error = %e, "request failed");
            match &packet.message {
                // Bad blocks on this copy (docs/checksums-design.md,
                // "Reads"): named, never returned; the target reads them
                // elsewhere and writes them back. Not a failure of the
                // replica: nothing is poisoned.
                Message::Read(extent) if e.kind() == cstor_engine::ErrorKind::Checksum => {
                    checksum_reply(packet, *extent, &e)
                }
                _ => engine_error_reply(packet, &e),
            }
        }
    }
}
