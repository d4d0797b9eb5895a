//! How the targets the controller starts are secured: each volume's target
//! gets its own certificate, `Target{[volume]}`, issued by the cluster CA
//! (`--tls-ca-dir`) when the runtime starts it, so a target can claim only
//! its own volume at the replicas; or, when the controller itself runs in
//! plaintext (`--insecure-plaintext`), targets run in plaintext too.
//!
//! The CA's key never leaves the controller: runtimes receive issued
//! certificates ([`TargetCert`]), not the CA.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cstor_tls::issue::{IssueError, CERT_VALIDITY};
use cstor_tls::{Ca, Identity, Issued, Validity};

/// Lifetime of a target's certificate. The local runtime issues a new one
/// at every start of the target; the Kubernetes runtime once per volume
/// (its Secret is never read back: see `kube`).
pub const TARGET_CERT_VALIDITY: Duration = CERT_VALIDITY;

/// Why a target's certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read the CA at {dir}: {source}")]
    LoadCa { dir: String, source: IssueError },
    #[error("cannot issue the certificate of the target of volume {volume}: {source}")]
    Issue { volume: String, source: IssueError },
}

/// How targets are secured.
#[derive(Clone)]
pub enum TargetCerts {
    /// Mutual TLS: certificates issued by this CA.
    Issue(Arc<Ca>),
    /// `--insecure-plaintext`, as the controller itself runs.
    Plaintext,
}

impl std::fmt::Debug for TargetCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetCerts::Issue(_) => f.write_str("TargetCerts::Issue(<CA>)"),
            TargetCerts::Plaintext => f.write_str("TargetCerts::Plaintext"),
        }
    }
}

/// One target's TLS directory, as files: the CA it trusts, its certificate
/// and its key (never logged: `Debug` leaves them out).
#[derive(Clone)]
pub struct TargetCert {
    /// `ca.crt`: the cluster CA.
    pub ca_pem: String,
    /// `tls.crt` and `tls.key`.
    pub issued: Issued,
}

impl std::fmt::Debug for TargetCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetCert").finish_non_exhaustive()
    }
}

impl TargetCerts {
    /// Targets' certificates issued by the CA in `dir` (`ca.crt`, `ca.key`).
    pub fn load(dir: &Path) -> Result<TargetCerts, CertError> {
        let ca = Ca::load(dir).map_err(|source| CertError::LoadCa {
            dir: dir.display().to_string(),
            source,
        })?;
        Ok(TargetCerts::Issue(Arc::new(ca)))
    }

    /// Whether targets run in plaintext.
    pub fn is_plaintext(&self) -> bool {
        matches!(self, TargetCerts::Plaintext)
    }

    /// A new certificate for the target of `volume` (`None` in plaintext).
    pub fn issue(&self, volume: &str) -> Result<Option<TargetCert>, CertError> {
        let TargetCerts::Issue(ca) = self else {
            return Ok(None);
        };
        let identity = Identity::Target {
            volumes: vec![volume.to_owned()],
        };
        let issued = ca
            .issue(&identity, Validity::from_now(TARGET_CERT_VALIDITY))
            .map_err(|source| CertError::Issue {
                volume: volume.to_owned(),
                source,
            })?;
        Ok(Some(TargetCert {
            ca_pem: ca.cert_pem().to_owned(),
            issued,
        }))
    }

    /// Writes the target of `volume` a TLS directory at `dir` (`ca.crt`,
    /// `tls.crt`, `tls.key`, mode 0600); `false` in plaintext (nothing
    /// written).
    pub fn issue_dir(&self, volume: &str, dir: &Path) -> Result<bool, CertError> {
        let Some(cert) = self.issue(volume)? else {
            return Ok(false);
        };
        cstor_tls::issue::write_tls_dir(dir, &cert.ca_pem, &cert.issued).map_err(|source| {
            CertError::Issue {
                volume: volume.to_owned(),
                source,
            }
        })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cstor_tls::issue::CA_VALIDITY;
    use cstor_tls::Credentials;

    #[test]
    fn a_target_certificate_names_exactly_its_volume_and_loads_as_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test", Validity::from_now(CA_VALIDITY)).unwrap();
        ca.save(&dir.path().join("ca")).unwrap();
        let certs = TargetCerts::load(&dir.path().join("ca")).unwrap();
        let tls = dir.path().join("pvc-1");
        assert!(certs.issue_dir("pvc-1", &tls).unwrap());
        let credentials = Credentials::load(&tls).unwrap();
        assert_eq!(
            credentials.identity(),
            Identity::Target {
                volumes: vec!["pvc-1".into()]
            }
        );
        assert!(credentials.identity().may_serve("pvc-1"));
        assert!(!credentials.identity().may_serve("pvc-2"));
    }

    #[test]
    fn plaintext_issues_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("pvc-1");
        assert!(TargetCerts::Plaintext.issue("pvc-1").unwrap().is_none());
        assert!(!TargetCerts::Plaintext.issue_dir("pvc-1", &tls).unwrap());
        assert!(!tls.exists());
    }

    #[test]
    fn a_missing_ca_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = TargetCerts::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertError::LoadCa { .. }), "{err}");
    }
}
