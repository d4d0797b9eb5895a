//! Test fixtures: a cluster CA in a temporary directory, and TLS
//! directories of any identity issued by it (or by a CA of another
//! cluster, or already expired), as [`Security`] values.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cstor_tls::issue::{CA_VALIDITY, CERT_VALIDITY};
use cstor_tls::{Ca, Identity, Security, Validity};

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
        self.dir_valid(identity, Validity::from_now(CERT_VALIDITY))
    }

    /// A TLS directory for `identity` whose certificate expired an hour ago.
    pub(crate) fn expired_dir(&mut self, identity: &Identity) -> PathBuf {
        let now = SystemTime::now();
        let validity = Validity {
            not_before: now - Duration::from_secs(48 * 3600),
            not_after: now - Duration::from_secs(3600),
        };
        self.dir_valid(identity, validity)
    }

    fn dir_valid(&mut self, identity: &Identity, validity: Validity) -> PathBuf {
        self.issued += 1;
        let dir = self.dir.path().join(format!("tls-{}", self.issued));
        self.ca.issue_dir(identity, validity, &dir).unwrap();
        dir
    }

    /// The credentials of `identity`.
    pub(crate) fn security(&mut self, identity: &Identity) -> Security {
        let dir = self.dir(identity);
        Security::from_flags(Some(&dir), false).unwrap()
    }

    /// Credentials of `identity` whose certificate expired.
    pub(crate) fn expired(&mut self, identity: &Identity) -> Security {
        let dir = self.expired_dir(identity);
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
