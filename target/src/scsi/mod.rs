//! SCSI block commands (SPC-4 / SBC-3): CDB parsing, sense data, dispatch. Sans-IO.
//!
//! The session layer feeds a [`LogicalUnit`] with CDBs and data-out and gets
//! back either a [`Response`] or a [`Pending`] block request for the volume
//! layer, which it completes later:
//!
//! ```text
//! iSCSI session ── execute(nexus, cdb, data_out) ──▶ LogicalUnit ──▶ Outcome::Done(Response)
//!                                                         │
//!                                                         └──▶ Outcome::Io(Pending) ──▶ volume
//! iSCSI session ◀── Completed ◀── complete(pending, result) ◀────────────────────────────┘
//! ```
//!
//! A command whose block request was running when another nexus's PREEMPT
//! AND ABORT preempted its nexus completes as [`Completed::Aborted`]: no
//! response goes to the initiator (module `aborts`). The shell tells the unit
//! the volume's state ([`VolumeState`]: size, read-only below quorum) and
//! the unit decides what follows (capacity change, write protection).
//!
//! Modules: [`cdb`] parses and validates CDBs against [`opcodes`] (the one
//! command table) and [`limits`] (every bound); [`sense`] builds sense data;
//! [`lu`] is the state machine, `medium` turns medium commands into
//! block requests; [`inquiry`], [`mode`], [`capacity`],
//! [`rsoc`], [`pr`] and [`ua`] produce its answers; `aborts` tracks the
//! commands PREEMPT AND ABORT aborted; [`io`] is the volume interface;
//! [`no_lu`] answers for LUNs other than 0.

mod aborts;
pub mod capacity;
pub mod cdb;
pub mod inquiry;
pub mod io;
pub mod limits;
pub mod lu;
mod medium;
pub mod mode;
pub mod nexus;
pub mod no_lu;
pub mod opcodes;
pub mod pr;
pub mod rsoc;
pub mod sense;
pub mod ua;

pub use cdb::{Command, Geometry};
pub use inquiry::Identity;
pub use io::{
    BlockRequest, Extent, IoData, IoError, IoResult, LbaStatusExtent, Pending, Provisioning,
};
pub use lu::{
    BlockSize, Completed, LogicalUnit, LuConfig, LuError, Outcome, Response, VolumeState,
};
pub use nexus::Nexus;
pub use no_lu::respond_without_lu;
pub use sense::{Asc, Sense, SenseKey, Status};
