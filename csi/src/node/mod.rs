//! Node side of the CSI driver: iSCSI login, filesystem and mount
//! operations on the host.
