//! What the replica reports about its copy: its state and the io_seq
//! through which it is complete (in the `HelloAck` and the
//! `StatusReport`), and a page of its snapshot listing.

use cstor_engine::Error as EngineError;
use cstor_proto::limits::MAX_SNAPSHOTS_PER_LISTING;
use cstor_proto::{
    Name, RebuildProgress, ReplicaState, SnapshotInfo, SnapshotListRequest, SnapshotListing,
    StatusReport,
};

use crate::rebuild;
use crate::registry::VolumeEntry;

/// The io_seq through which the copy is complete: the durable one, or
/// while a rebuild is unfinished the io_seq it started from (rebuilt blocks
/// carry newer io_seqs that say nothing about the blocks not copied yet).
pub(super) fn complete_through(entry: &VolumeEntry, durable: u64) -> Result<u64, EngineError> {
    Ok(rebuild::sink::unfinished(&entry.volume)?.map_or(durable, |p| p.from_io_seq.min(durable)))
}

/// The replica's own view of its copy. It cannot know alone whether it
/// missed writes (the target decides that from io_seqs); it knows whether it
/// ever held any, and whether a rebuild of it is unfinished.
pub(super) fn replica_state(entry: &VolumeEntry) -> Result<ReplicaState, EngineError> {
    if rebuild::sink::unfinished(&entry.volume)?.is_some() {
        let running = entry.rebuild.status().is_some_and(|s| s.running);
        return Ok(if running {
            ReplicaState::Rebuilding
        } else {
            ReplicaState::Degraded
        });
    }
    let stats = entry.volume.stats()?;
    Ok(
        if stats.last_durable_io_seq == 0 && stats.allocated_bytes == 0 {
            ReplicaState::NewEmpty
        } else {
            ReplicaState::Healthy
        },
    )
}

pub(super) fn status_report(entry: &VolumeEntry) -> Result<StatusReport, EngineError> {
    let stats = entry.volume.stats()?;
    Ok(StatusReport {
        state: replica_state(entry)?,
        last_durable_io_seq: complete_through(entry, stats.last_durable_io_seq)?,
        last_received_io_seq: entry.last_received_io_seq(),
        volume_size_bytes: stats.size_bytes,
        highest_epoch_seen: entry.volume.epoch()?,
        rebuild: entry.rebuild.status().filter(|s| s.running).map_or_else(
            RebuildProgress::default,
            |s| RebuildProgress {
                done_bytes: s.done_bytes.min(s.total_bytes),
                total_bytes: s.total_bytes,
            },
        ),
    })
}

pub(super) fn snapshot_listing(
    entry: &VolumeEntry,
    request: &SnapshotListRequest,
) -> Result<SnapshotListing, EngineError> {
    let mut all = entry.volume.list_snapshots()?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let after = request.after.as_ref().map(Name::as_str);
    let mut page = all
        .into_iter()
        .filter(|s| after.is_none_or(|a| s.name.as_str() > a))
        .map(|s| {
            Name::new(s.name.clone())
                .map(|name| SnapshotInfo {
                    name,
                    io_seq: s.io_seq,
                    created_unix_secs: 0,
                    size_bytes: s.size_bytes,
                })
                .map_err(|e| {
                    EngineError::new(
                        cstor_engine::ErrorKind::Corrupt,
                        format!("snapshot name {:?}: {e}", s.name),
                    )
                })
        })
        .take(MAX_SNAPSHOTS_PER_LISTING + 1)
        .collect::<Result<Vec<_>, _>>()?;
    let more = page.len() > MAX_SNAPSHOTS_PER_LISTING;
    page.truncate(MAX_SNAPSHOTS_PER_LISTING);
    Ok(SnapshotListing {
        snapshots: page,
        more,
    })
}
