//! The sink's snapshot phase: make this replica's snapshots the source's.
//!
//! Run before the live stream and once more after it (to catch snapshots
//! the healthy replicas took meanwhile: a target sends snapshot barriers to
//! healthy replicas only). Each pass lists the source's snapshots on a probe
//! session, then:
//!
//! 1. deletes every snapshot of this replica the source does not have (same
//!    name *and* io_seq) — only among those it had when the run started or
//!    that the run created, never one taken during the session;
//! 2. for each source snapshot it lacks, oldest first: persists the resume
//!    point naming it (so a crash mid-fill deletes and redoes it), inserts
//!    an empty snapshot layer in io_seq place
//!    (`Volume::insert_rebuilt_snapshot`, FORMAT.md "Rebuilt snapshots"),
//!    pulls the source's `RebuildSource::Snapshot` stream of every chunk
//!    changed after the newest snapshot it already has at or below that
//!    io_seq (everything, when none), writes it into the new layer, flushes,
//!    and clears the name from the resume point.
//!
//! Live writes are never touched: they land in the live layer, above every
//! inserted one. A rebuilt snapshot has the size the source lists for it
//! (the volume's size when it was taken, smaller than today's after a
//! resize).

use std::collections::BTreeSet;

use cstor_engine::limits::MAX_CHAIN_DEPTH;
use cstor_engine::ErrorKind;
use cstor_proto::{Message, Name, RebuildChunk, RebuildSource, SnapshotListRequest};
use tracing::info;

use super::{Dest, Progress, Reports, Run};
use crate::limits::REBUILD_CONNECT_TIMEOUT;
use crate::rebuild::io::{deadline, RebuildIo};
use crate::rebuild::state::ResumePoint;
use crate::rebuild::RebuildError;

/// A snapshot as a replica lists it. Two snapshots are the same only when
/// all three agree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    name: String,
    io_seq: u64,
    size_bytes: u64,
}

/// What one pass changes on the sink.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Local snapshots to delete.
    delete: Vec<String>,
    /// Source snapshots to create, oldest first.
    create: Vec<Snap>,
}

/// The pass that makes `local` equal to `source`, deleting only names in
/// `deletable`. A local snapshot with a source snapshot's name but another
/// io_seq is another snapshot (deleted and re-taken while this replica was
/// away): it is replaced when deletable, and the source's is skipped when
/// not (the names clash).
fn plan(source: &[Snap], local: &[Snap], deletable: &BTreeSet<String>) -> Plan {
    let delete: Vec<String> = local
        .iter()
        .filter(|l| !source.contains(l) && deletable.contains(&l.name))
        .map(|l| l.name.clone())
        .collect();
    let kept = |name: &str| {
        local
            .iter()
            .any(|l| l.name == name && !delete.contains(&l.name))
    };
    let mut create: Vec<Snap> = source.iter().filter(|s| !kept(&s.name)).cloned().collect();
    create.sort_by(|a, b| (a.io_seq, &a.name).cmp(&(b.io_seq, &b.name)));
    Plan { delete, create }
}

/// The io_seq a snapshot of `io_seq` is rebuilt from: that of the newest
/// local snapshot at or below it (identical on both replicas), else 0.
fn base_io_seq(local: &[Snap], io_seq: u64) -> u64 {
    local
        .iter()
        .map(|l| l.io_seq)
        .filter(|s| *s <= io_seq)
        .max()
        .unwrap_or(0)
}

impl<I: RebuildIo> Run<I> {
    /// One pass of the module doc.
    pub(super) async fn sync_snapshots(
        &self,
        reports: &Reports,
        progress: &mut Progress,
        resume: Option<ResumePoint>,
        deletable: &mut BTreeSet<String>,
    ) -> Result<(), RebuildError> {
        let volume = &self.entry.volume;
        let source = self.source_snapshots().await?;
        let plan = plan(&source, &self.local_snapshots()?, deletable);
        for name in &plan.delete {
            self.delete_snapshot(name).await?;
            deletable.remove(name);
            info!(snapshot = %name, "snapshot gone from the source deleted");
        }
        for snap in &plan.create {
            let base = base_io_seq(&self.local_snapshots()?, snap.io_seq);
            let name = Name::new(snap.name.clone())
                .map_err(|e| self.peer(format!("snapshot name {:?}: {e}", snap.name)))?;
            // Durable before the snapshot exists: a crash from here on
            // leaves a resume point naming it, and the next run deletes it.
            self.checkpoint(resume, 0, Some(&snap.name)).await?;
            volume
                .insert_rebuilt_snapshot(&snap.name, snap.io_seq, snap.size_bytes)
                .await
                .map_err(|e| self.engine(e))?;
            deletable.insert(snap.name.clone());
            let mut conn = self.connect(RebuildSource::Snapshot(name), base).await?;
            self.stream(
                &mut conn,
                reports,
                progress,
                Dest::Snapshot(&snap.name),
                None,
            )
            .await?;
            volume.flush().await.map_err(|e| self.engine(e))?;
            self.checkpoint(resume, 0, None).await?;
            info!(snapshot = %snap.name, io_seq = snap.io_seq, base_io_seq = base, "snapshot rebuilt");
        }
        Ok(())
    }

    fn local_snapshots(&self) -> Result<Vec<Snap>, RebuildError> {
        Ok(self
            .entry
            .volume
            .list_snapshots()
            .map_err(|e| self.engine(e))?
            .into_iter()
            .map(|s| Snap {
                name: s.name,
                io_seq: s.io_seq,
                size_bytes: s.size_bytes,
            })
            .collect())
    }

    /// Deletes a local snapshot; one already gone is fine.
    pub(super) async fn delete_snapshot(&self, name: &str) -> Result<(), RebuildError> {
        match self.entry.volume.delete_snapshot(name).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.engine(e)),
            _ => Ok(()),
        }
    }

    /// Every snapshot of the source (at most [`MAX_CHAIN_DEPTH`], the most
    /// a volume can have), listed page by page on a probe session.
    async fn source_snapshots(&self) -> Result<Vec<Snap>, RebuildError> {
        let listing = async {
            let (mut conn, _, _) = self.probe().await?;
            let mut all = Vec::new();
            let mut after = None;
            for io_seq in 1u64.. {
                let request = Message::SnapshotList(SnapshotListRequest { after });
                let page = match self.call(&mut conn, io_seq, request).await? {
                    Message::SnapshotListing(page) => page,
                    other => return Err(self.refused("SnapshotList", other)),
                };
                after = page.snapshots.last().map(|s| s.name.clone());
                all.extend(page.snapshots.into_iter().map(|s| Snap {
                    name: s.name.as_str().to_owned(),
                    io_seq: s.io_seq,
                    size_bytes: s.size_bytes,
                }));
                if all.len() > MAX_CHAIN_DEPTH {
                    return Err(self.peer(format!(
                        "source lists more than {MAX_CHAIN_DEPTH} snapshots"
                    )));
                }
                if !page.more || after.is_none() {
                    break;
                }
            }
            Ok(all)
        };
        deadline(&self.io, REBUILD_CONNECT_TIMEOUT, listing)
            .await
            .map_err(|_| self.peer(format!("no listing within {REBUILD_CONNECT_TIMEOUT:?}")))?
    }

    /// Writes one chunk of a snapshot stream into the rebuilt snapshot.
    pub(super) async fn apply_snapshot(
        &self,
        chunk: &RebuildChunk,
        snapshot: &str,
    ) -> Result<(), RebuildError> {
        let volume = &self.entry.volume;
        if chunk.block_size_bytes != volume.block_bytes() {
            return Err(self.peer(format!(
                "chunk of {}-byte blocks for a volume of {}-byte blocks",
                chunk.block_size_bytes,
                volume.block_bytes()
            )));
        }
        volume
            .apply_rebuild_snapshot(snapshot, chunk.offset, &chunk.data, &chunk.block_io_seqs)
            .await
            .map_err(|e| self.engine(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, io_seq: u64) -> Snap {
        Snap {
            name: name.into(),
            io_seq,
            size_bytes: 1 << 30,
        }
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn missing_snapshots_are_created_oldest_first_and_gone_ones_deleted() {
        let source = [snap("c", 30), snap("a", 10), snap("b", 20)];
        let local = [snap("a", 10), snap("old", 5)];
        let p = plan(&source, &local, &names(&["a", "old"]));
        assert_eq!(p.delete, vec!["old".to_owned()]);
        assert_eq!(p.create, vec![snap("b", 20), snap("c", 30)]);
    }

    #[test]
    fn a_snapshot_taken_during_the_session_is_never_deleted() {
        let p = plan(&[], &[snap("new", 50)], &names(&[]));
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_reused_name_with_another_io_seq_is_replaced() {
        let p = plan(
            &[snap("daily", 200)],
            &[snap("daily", 50)],
            &names(&["daily"]),
        );
        assert_eq!(p.delete, vec!["daily".to_owned()]);
        assert_eq!(p.create, vec![snap("daily", 200)]);
        // Not deletable: the clash is left alone.
        let p = plan(&[snap("daily", 200)], &[snap("daily", 50)], &names(&[]));
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_local_snapshot_of_another_size_is_another_snapshot() {
        let small = Snap {
            size_bytes: 1 << 20,
            ..snap("pre-resize", 10)
        };
        let p = plan(
            std::slice::from_ref(&small),
            &[snap("pre-resize", 10)],
            &names(&["pre-resize"]),
        );
        assert_eq!(p.delete, vec!["pre-resize".to_owned()]);
        assert_eq!(p.create, vec![small]);
    }

    #[test]
    fn a_snapshot_is_rebuilt_from_the_newest_one_at_or_below_it() {
        let local = [snap("a", 10), snap("c", 30)];
        assert_eq!(base_io_seq(&local, 20), 10);
        assert_eq!(base_io_seq(&local, 30), 30);
        assert_eq!(base_io_seq(&local, 5), 0);
        assert_eq!(base_io_seq(&[], 5), 0);
    }
}
