//! iSCSI (RFC 7143) target side, sans-IO: PDUs, login and negotiation,
//! full feature phase.
//!
//! Layers, bottom up:
//! - [`bhs`], [`digest`], [`pdu`]: the 48-byte header, CRC32C digests, and
//!   every PDU typed, checked and parsed mini-redis style;
//! - [`codec`]: `tokio_util::codec` over [`pdu`], digests and segment
//!   bounds switching after the final Login Response;
//! - [`text`], [`negotiate`], [`chap`], [`access`], [`login`]: key=value
//!   text, the RFC's negotiation rules, CHAP, the initiator allowlist, and
//!   one connection's login phase;
//! - [`window`], [`transfer`], [`keepalive`], [`discovery`], [`session`]:
//!   CmdSN window, R2T/Data-Out/Data-In sequencing, NOP pings, Text
//!   Requests (SendTargets), and the full feature phase tying them up.
//!
//! Every bound lives in [`limits`] (the target's [`crate::limits`]); the
//! byte budgets that bound the IO data a connection and the target hold
//! are [`budget`]. No module here touches a socket or a clock: a thin connection shell feeds bytes, PDUs and times in and sends
//! what comes out:
//!
//! ```text
//! socket ─bytes─▶ IscsiCodec ─Pdu─▶ LoginMachine ─LoginAction─▶ (LoggedIn)
//!                     ▲                                             │
//!                     └─ arm_full_feature(cfg) ◀────────────────────┤
//! socket ─bytes─▶ IscsiCodec ─Pdu─▶ FullFeature ─Action─▶ Send / Execute / Reset / Close
//!                                        ▲
//!                     complete(TaskId, TaskResult) ◀── SCSI logical unit
//! ```

pub mod access;
pub mod bhs;
pub mod budget;
pub mod chap;
pub mod codec;
pub mod digest;
pub mod discovery;
pub mod keepalive;
pub mod limits;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod session;
pub mod text;
pub mod transfer;
pub mod window;
