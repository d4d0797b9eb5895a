//! The cstor iSCSI target: RFC 7143 PDUs and login, SCSI block commands, and
//! the volume controller that replicates every write.

pub mod cli;
pub mod iscsi;
pub mod limits;
pub mod metrics;
pub mod mgmt;
pub mod scsi;
pub mod server;
#[cfg(test)]
mod test_tls;
pub mod volume;
