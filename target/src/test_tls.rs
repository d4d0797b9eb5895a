//! Test fixtures: a cluster CA in a temporary directory, and TLS
//! directories of any identity issued by it, as [`Security`] values.

use cstor_tls::issue::{CA_VALIDITY, CERT_VALIDITY};
use cstor_tls::{Ca, Identity, Security, Validity};
use std::path::PathBuf;

/// A CA and the TLS directories issued from it, under one temporary
/// directory (removed on drop).
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    issued: usize,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::generate("test cluster", Validity::from_now(CA_VALIDITY)).unwrap(),
            issued: 0,
        }
    }

    /// A TLS directory for `identity`, valid for a year.
    pub(crate) fn dir(&mut self, identity: &Identity) -> PathBuf {
        self.issued += 1;
        let dir = self.dir.path().join(format!("tls-{}", self.issued));
        let validity = Validity::from_now(CERT_VALIDITY);
        self.ca.issue_dir(identity, validity, &dir).unwrap();
        dir
    }

    /// The credentials of `identity`.
    pub(crate) fn security(&mut self, identity: &Identity) -> Security {
        let dir = self.dir(identity);
        Security::from_flags(Some(&dir), false).unwrap()
    }
}

pub(crate) fn target(volume: &str) -> Identity {
    Identity::Target {
        volumes: vec![volume.to_owned()],
    }
}

pub(crate) fn replica(pool: &str) -> Identity {
    Identity::Replica {
        pool: pool.to_owned(),
    }
}
