//! The target's status as `cstor ctl status` (and `resize`) prints it: a
//! table of the volume (with its link security) and one row per replica
//! with its rebuild progress and ETA, or JSON.

use anyhow::Result;
use cstor_mgmt::size::format_size;
use cstor_mgmt::v1::{TargetReplicaState, TargetStatus};
use serde_json::{json, Value};

use super::output::{emit, links_text, table};

fn target_state_name(state: i32) -> &'static str {
    match TargetReplicaState::try_from(state) {
        Ok(TargetReplicaState::Healthy) => "healthy",
        Ok(TargetReplicaState::Degraded) => "degraded",
        Ok(TargetReplicaState::Rebuilding) => "rebuilding",
        Ok(TargetReplicaState::Offline) => "offline",
        Ok(TargetReplicaState::Removed) => "removed",
        Ok(TargetReplicaState::Failed) => "failed",
        Ok(TargetReplicaState::Unspecified) | Err(_) => "unknown",
    }
}

fn target_status_json(s: &TargetStatus) -> Value {
    json!({
        "volume": s.volume,
        "size_bytes": s.size_bytes,
        "block_size": s.block_size_bytes,
        "epoch": s.epoch,
        "consistency_factor": s.consistency_factor,
        "healthy": s.healthy,
        "read_only": s.read_only,
        "fenced": s.fenced,
        "next_io_seq": s.next_io_seq,
        "in_flight": s.in_flight,
        "snapshot_or_resize_in_progress": s.barrier,
        "membership_generation": s.membership_generation,
        "rebuild_throttle_bytes_per_second": s.rebuild_throttle_bytes_per_second,
        "insecure_plaintext": s.insecure_plaintext,
        "blocks_repaired": s.blocks_repaired,
        "links": links_text(s.insecure_plaintext),
        "replicas": s.replicas.iter().map(|r| json!({
            "address": r.address,
            "replica_id": r.replica_id,
            "state": target_state_name(r.state),
            "acked_io_seq": r.acked_io_seq,
            "in_flight": r.in_flight,
            "rebuilt_bytes": r.rebuilt_bytes,
            "checksum_errors": r.checksum_errors,
            "checksum_errors_recent": r.checksum_errors_recent,
            "checksum_warning": r.checksum_warning,
            "rebuild": r.rebuild.as_ref().map(|b| json!({
                "source": b.source,
                "from_io_seq": b.from_io_seq,
                "source_address": b.source_address,
                "done_bytes": b.done_bytes,
                "total_bytes": b.total_bytes,
                "eta_seconds": b.eta_seconds,
            })),
        })).collect::<Vec<_>>(),
    })
}

/// A replica's checksum errors as the status table shows them: the blocks
/// its reads found bad since the target started, and a warning when more
/// than the bound were in the target's window
/// (`cstor_target::limits::CHECKSUM_ERROR_WINDOW`).
fn checksum_cell(r: &cstor_mgmt::v1::TargetReplica) -> String {
    if r.checksum_warning {
        let window = cstor_target::limits::CHECKSUM_ERROR_WINDOW.as_secs();
        format!(
            "{} (WARNING: {} in the last {})",
            r.checksum_errors,
            r.checksum_errors_recent,
            format_eta(window)
        )
    } else {
        r.checksum_errors.to_string()
    }
}

/// A rebuild as the status table shows it: done/total (percent), source,
/// time left.
fn rebuild_cell(b: &cstor_mgmt::v1::TargetRebuild) -> String {
    let percent = if b.total_bytes == 0 {
        0.0
    } else {
        b.done_bytes.min(b.total_bytes) as f64 * 100.0 / b.total_bytes as f64
    };
    let eta = b.eta_seconds.map_or_else(
        || "ETA unknown".to_string(),
        |s| format!("ETA {}", format_eta(s)),
    );
    let source = if b.source_address.is_empty() {
        format!("#{}", b.source)
    } else {
        b.source_address.clone()
    };
    format!(
        "{}/{} ({percent:.0}%) from {source}, {eta}",
        format_size(b.done_bytes),
        format_size(b.total_bytes),
    )
}

/// Seconds as `1h02m03s` / `2m03s` / `3s`.
fn format_eta(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

pub(super) fn print_target_status(s: &TargetStatus, as_json: bool) -> Result<()> {
    if as_json {
        emit(&serde_json::to_string_pretty(&target_status_json(s))?);
        return Ok(());
    }
    let mode = if s.fenced {
        "fenced"
    } else if s.read_only {
        "read-only"
    } else {
        "read-write"
    };
    let mut out = table(
        &[
            "VOLUME",
            "SIZE",
            "MODE",
            "HEALTHY",
            "CF",
            "EPOCH",
            "NEXT_IO_SEQ",
            "IN_FLIGHT",
            "MEMBERSHIP",
            "REPAIRED",
            "LINKS",
        ],
        &[vec![
            s.volume.clone(),
            format_size(s.size_bytes),
            mode.to_string(),
            format!("{}/{}", s.healthy, s.replicas.len()),
            s.consistency_factor.to_string(),
            s.epoch.to_string(),
            s.next_io_seq.to_string(),
            s.in_flight.to_string(),
            format!("gen {}", s.membership_generation),
            format!("{} blocks", s.blocks_repaired),
            links_text(s.insecure_plaintext).to_string(),
        ]],
    );
    out.push('\n');
    let rows = s
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.address.clone(),
                r.replica_id.get(..8).unwrap_or_default().to_string(),
                target_state_name(r.state).to_string(),
                r.acked_io_seq.to_string(),
                r.in_flight.to_string(),
                checksum_cell(r),
                r.rebuild.as_ref().map_or_else(String::new, rebuild_cell),
            ]
        })
        .collect::<Vec<_>>();
    out.push_str(&table(
        &[
            "REPLICA",
            "ID",
            "STATE",
            "ACKED_IO_SEQ",
            "IN_FLIGHT",
            "BAD_BLOCKS",
            "REBUILD",
        ],
        &rows,
    ));
    emit(&out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_reads_in_hours_minutes_seconds() {
        assert_eq!(format_eta(0), "0s");
        assert_eq!(format_eta(59), "59s");
        assert_eq!(format_eta(61), "1m01s");
        assert_eq!(format_eta(3723), "1h02m03s");
    }

    #[test]
    fn a_checksum_cell_shows_the_count_and_warns() {
        let mut r = cstor_mgmt::v1::TargetReplica {
            checksum_errors: 3,
            checksum_errors_recent: 3,
            ..Default::default()
        };
        assert_eq!(checksum_cell(&r), "3");
        r.checksum_errors = 40;
        r.checksum_errors_recent = 17;
        r.checksum_warning = true;
        assert_eq!(checksum_cell(&r), "40 (WARNING: 17 in the last 1h00m00s)");
    }

    #[test]
    fn a_rebuild_cell_shows_progress_source_and_eta() {
        let b = cstor_mgmt::v1::TargetRebuild {
            source: 0,
            from_io_seq: 0,
            done_bytes: 1 << 20,
            total_bytes: 4 << 20,
            eta_seconds: Some(90),
            source_address: "127.0.0.1:7000".into(),
        };
        assert_eq!(
            rebuild_cell(&b),
            "1.0 MiB/4.0 MiB (25%) from 127.0.0.1:7000, ETA 1m30s"
        );
        let unknown = cstor_mgmt::v1::TargetRebuild {
            eta_seconds: None,
            total_bytes: 0,
            ..b
        };
        assert!(rebuild_cell(&unknown).ends_with("ETA unknown"));
    }
}
