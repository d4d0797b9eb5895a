//! Every link of a cstor cluster authenticated: mutual TLS 1.3 (rustls,
//! ring) with a per-cluster CA whose certificates carry a role identity
//! ([`Identity`]: a target names the volumes it may serve, a replica its
//! pool; admin and reader are the two management rights).
//!
//! - [`issue`]: a CA, role certificates, the files a process reads;
//! - [`credentials`]: those files loaded, verified and reloaded on change;
//! - [`stream`]: one connection secured ([`Security::accept`],
//!   [`Security::connect`]) and who the peer is ([`Peer`]);
//! - [`grpc`]: the management APIs over it, with per-method rights.
//!
//! Plaintext exists only as an explicit choice ([`Security::Plaintext`],
//! `--insecure-plaintext`); docs/security.md has the model.

pub mod credentials;
pub mod grpc;
pub mod identity;
pub mod issue;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;

pub use credentials::Credentials;
pub use identity::{Identity, IdentityError, Right, Role};
pub use issue::{Ca, Issued, Validity};
pub use stream::{Peer, Security, Stream};

use std::path::PathBuf;
use std::time::Duration;

/// Why credentials could not be used or a secure connection made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Flags(&'static str),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("TLS handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer's certificate: {0}")]
    PeerIdentity(#[source] IdentityError),
}
