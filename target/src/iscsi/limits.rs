//! The iSCSI layer's bounds: they live with every other bound of the
//! target in [`crate::limits`], re-exported here for the paths that name
//! them as `iscsi::limits`.

pub use crate::limits::*;
