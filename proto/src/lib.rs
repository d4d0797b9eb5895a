//! The replication protocol spoken between the cstor target and its replicas
//! (and between replicas during a rebuild): framing, checksums, messages.
//!
//! Sans-IO: this crate turns bytes into messages and back; it never touches a
//! socket.
