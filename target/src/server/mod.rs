//! The target process: accepts iSCSI connections for one volume and serves
//! them from the SCSI logical unit and the replicated volume.
//!
//! One [`LogicalUnit`] (LUN 0) is shared by every session of the target (its
//! unit attentions and reservations are per I_T nexus); its block requests
//! go to the [`Volume`] ([`block`]; what a task does on the unit is
//! [`task`], without IO). Connections run in their own tasks ([`conn`]),
//! once admitted by the connection caps ([`admit`]): one over a cap is
//! closed at accept, before it can hold anything.
//! The volume's state reaches the LU from the volume's status (size and
//! read-only, [`VolumeState`]); the LU decides what follows: when the
//! volume grows (a resize acknowledged at quorum) it grows with it and
//! raises CAPACITY DATA HAS CHANGED (SPC-4 §5.14, SBC-3 §4.7) on every
//! nexus, so initiators re-read the capacity; while the volume is
//! read-only (below quorum) MODE SENSE reports it write protected.

pub mod admit;
pub mod block;
pub mod conn;
pub mod task;

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::iscsi::login::TargetConfig;
use crate::limits::{ACCEPT_ERROR_PAUSE, SHUTDOWN_GRACE};
use crate::metrics::{Bounds, TargetMetrics};
use crate::scsi::{BlockSize, Identity, LogicalUnit, LuConfig, LuError, VolumeState};
use crate::volume::{Volume, VolumeStatus};
use admit::{ConnectionLimits, ConnectionTable};
use block::WriteGate;

pub use crate::limits::MAX_CONNECTIONS;

/// What every connection of the target shares.
pub struct Shared {
    pub config: TargetConfig,
    pub lu: Mutex<LogicalUnit>,
    pub volume: Volume,
    pub gate: WriteGate,
    pub block_size: u32,
    /// Counted at the SCSI → volume boundary, served by `--metrics-listen`.
    pub metrics: Arc<TargetMetrics>,
    /// The connections served now, against their caps.
    pub connections: ConnectionTable,
    next_tsih: AtomicU16,
}

/// Why a target could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the replicas report a block size of {0} bytes; only 512 and 4096 are served")]
    BlockSize(u32),
    #[error("cannot create the logical unit: {0}")]
    LogicalUnit(#[from] LuError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Shared {
    /// The target of `volume` (opened already), configured by `config`.
    /// The target of `volume` (opened already), configured by `config`,
    /// with the connection caps `connections`.
    pub fn with_connection_limits(
        config: TargetConfig,
        volume: Volume,
        volume_name: &str,
        connections: ConnectionLimits,
    ) -> Result<Self, ServerError> {
        let mut shared = Self::new(config, volume, volume_name)?;
        shared.connections = ConnectionTable::new(connections);
        shared.metrics = Arc::new(TargetMetrics::new(volume_name).with_bounds(shared.bounds()));
        Ok(shared)
    }

    /// The bounds exported as metrics.
    fn bounds(&self) -> Bounds {
        let limits = self.connections.limits();
        Bounds {
            buffers: self.config.buffers.clone(),
            connections: limits.total,
            connections_per_source: limits.per_source,
        }
    }

    pub fn new(
        config: TargetConfig,
        volume: Volume,
        volume_name: &str,
    ) -> Result<Self, ServerError> {
        let block_size = volume.block_size();
        let (size, exponent) = match block_size {
            512 => (BlockSize::B512, 3),
            4096 => (BlockSize::B4096, 0),
            other => return Err(ServerError::BlockSize(other)),
        };
        let lu = LogicalUnit::new(LuConfig {
            identity: identity(volume_name),
            blocks: volume.size_bytes() / u64::from(block_size),
            block_size: size,
            physical_block_exponent: exponent,
            unmap_granularity_blocks: (64 * 1024) / block_size,
            write_cache: true,
        })?;
        let mut shared = Shared {
            config,
            lu: Mutex::new(lu),
            volume,
            gate: WriteGate::default(),
            block_size,
            metrics: Arc::new(TargetMetrics::new(volume_name)),
            connections: ConnectionTable::new(ConnectionLimits::default()),
            next_tsih: AtomicU16::new(1),
        };
        shared.metrics = Arc::new(TargetMetrics::new(volume_name).with_bounds(shared.bounds()));
        Ok(shared)
    }

    /// A fresh session handle (never 0).
    fn tsih(&self) -> NonZeroU16 {
        loop {
            if let Some(tsih) = NonZeroU16::new(self.next_tsih.fetch_add(1, Ordering::Relaxed)) {
                return tsih;
            }
        }
    }
}

/// A stable identity for the volume's LU: the same name gives the same
/// NAA designator and serial number on every target that serves it, so an
/// initiator (multipath, udev by-id links) recognises the disk after a
/// target restart or move.
pub fn identity(volume: &str) -> Identity {
    let digest = Sha256::digest(volume.as_bytes());
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    let serial: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    Identity { uuid, serial }
}

/// Binds the iSCSI portal.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}

/// Accepts and serves connections until `shutdown`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    connections.spawn(follow_volume(Arc::clone(&shared), shutdown.clone()));
    info!(
        portal = ?listener.local_addr().ok(),
        target = %shared.config.target_name,
        "iSCSI target serving"
    );
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let slot = match shared.connections.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        let limits = shared.connections.limits();
                        warn!(
                            %peer,
                            cap = why.as_str(),
                            total = limits.total,
                            per_source = limits.per_source,
                            "too many connections; closing a new one"
                        );
                        shared.metrics.connection_refused(why);
                        drop(stream);
                        continue;
                    }
                };
                let tsih = shared.tsih();
                let shared = Arc::clone(&shared);
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    shared.metrics.connection_opened();
                    conn::serve(stream, peer, Arc::clone(&shared), tsih, shutdown).await;
                    shared.metrics.connection_closed();
                    drop(slot);
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await;
}

/// Feeds the logical unit the volume's state whenever the volume's status
/// changes, until `shutdown` or the volume closes.
async fn follow_volume(shared: Arc<Shared>, shutdown: CancellationToken) {
    let status = shared.volume.subscribe();
    feed_volume_status(status, &shared.lu, shared.block_size, shutdown).await;
}

/// Tells `lu` the volume's state from every status `status` publishes
/// (blocks of `block_size` bytes); what follows is the unit's decision.
async fn feed_volume_status(
    mut status: watch::Receiver<VolumeStatus>,
    lu: &Mutex<LogicalUnit>,
    block_size: u32,
    shutdown: CancellationToken,
) {
    let block_size = u64::from(block_size.max(1));
    loop {
        let state = {
            let status = status.borrow_and_update();
            VolumeState {
                blocks: status.size_bytes / block_size,
                read_only: status.read_only,
            }
        };
        if lu.lock().follow_volume(state) {
            info!(
                blocks = state.blocks,
                "volume grew: capacity data has changed"
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests;
