//! The pool store: a thin-provisioned, copy-on-write block store with
//! snapshots and clones, on files or block devices.
//!
//! A [`Pool`] concatenates its backing devices into one space of fixed-size
//! chunks; volumes map logical chunks to physical ones through layered chunk
//! maps (snapshots freeze a layer); metadata is journaled and checkpointed
//! on device 0 and committed on flush and on a timer. The on-disk format is
//! drawn in `engine/FORMAT.md`.
//!
//! Modules: `format` (bytes on disk), `meta` (the metadata state machine,
//! no IO), `layout` (where things are), `pool` (the pool and volume
//! lifecycle), `volume` (the IO path), `commit` (durability), `io`
//! (devices).

mod commit;
pub mod error;
pub mod format;
mod integrity;
pub mod io;
pub mod layout;
pub mod limits;
mod locks;
pub mod meta;
pub mod pool;
pub mod volume;

pub use error::{Error, ErrorKind, Result};
pub use pool::{DeviceRef, IntegrityStats, Pool, PoolOptions, PoolStats, Provisioning, VolumeInfo};
pub use volume::{
    ChangeKind, ChangesPage, ChunkChange, RangeDigest, SnapshotInfo, Volume, VolumeStats,
};
