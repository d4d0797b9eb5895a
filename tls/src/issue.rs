//! Issuing: a per-cluster CA and role certificates signed by it (ECDSA
//! P-256), and the files a process reads them from.
//!
//! A process's TLS directory holds three files, named as in a Kubernetes
//! `kubernetes.io/tls` Secret so that a Secret mounts as one: `ca.crt` (the
//! CAs it trusts, one or more PEM certificates — during a CA rotation both
//! old and new), `tls.crt` (its own certificate) and `tls.key` (its private
//! key). A CA's directory holds `ca.crt` and `ca.key`. Every file is written
//! whole to a temporary name and renamed into place (a reader never sees
//! half a file), with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::Identity;

/// The trusted CAs of a TLS directory.
pub const CA_FILE: &str = "ca.crt";
/// A CA directory's private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// The process's own certificate.
pub const CERT_FILE: &str = "tls.crt";
/// The process's private key.
pub const KEY_FILE: &str = "tls.key";

/// A CA certificate's default lifetime.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A role certificate's default lifetime.
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates are valid from this long before they were issued, so that
/// peers whose clocks lag a little accept them at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Why a CA or certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite a CA")]
    Exists(PathBuf),
    #[error("{path}: not a usable CA ({reason})")]
    BadCa { path: PathBuf, reason: String },
}

/// Which half of a CA's PEM pair is unusable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("the CA key: {0}")]
    Key(String),
    #[error("the CA certificate: {0}")]
    Cert(String),
}

/// A certificate's validity window.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From now (less [`CLOCK_SKEW`]) for `lifetime`.
    pub fn from_now(lifetime: Duration) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now.checked_sub(CLOCK_SKEW).unwrap_or(now),
            not_after: now + lifetime,
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// A certificate authority: signs role certificates.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn generate(name: &str, validity: Validity) -> Result<Ca, IssueError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "cstor");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity.apply(&mut params);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads a CA from its directory (`ca.crt`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Ca, IssueError> {
        let cert_path = dir.join(CA_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        Ca::from_pem(&read(&cert_path)?, &read(&key_path)?).map_err(|e| match e {
            PemError::Key(reason) => IssueError::BadCa {
                path: key_path,
                reason,
            },
            PemError::Cert(reason) => IssueError::BadCa {
                path: cert_path,
                reason,
            },
        })
    }

    /// A CA from its certificate and key, PEM (e.g. kept in a Kubernetes
    /// Secret rather than files).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PemError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PemError::Key(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| PemError::Cert(e.to_string()))?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The CA's private key, PEM (what `ca.key` holds).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Writes `ca.crt` and `ca.key` into `dir` (created 0700 if missing);
    /// refuses to overwrite an existing CA key.
    pub fn save(&self, dir: &Path) -> Result<(), IssueError> {
        create_dir(dir)?;
        let key_path = dir.join(CA_KEY_FILE);
        if key_path.exists() {
            return Err(IssueError::Exists(key_path));
        }
        write_private(&dir.join(CA_FILE), self.cert_pem.as_bytes())?;
        write_private(&key_path, self.key_pem().as_bytes())
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a new certificate (with a new key) for `identity`.
    pub fn issue(&self, identity: &Identity, validity: Validity) -> Result<Issued, IssueError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "cstor");
        dn.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = identity
            .uris()
            .into_iter()
            .map(|uri| Ok(SanType::URI(uri.try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every role both dials and accepts somewhere (a replica serves
        // targets and dials peers for rebuilds; a target dials replicas and
        // serves management), so every certificate is good for both ends.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `identity` and writes a whole TLS directory
    /// (`ca.crt` = this CA, `tls.crt`, `tls.key`) at `dir`.
    pub fn issue_dir(
        &self,
        identity: &Identity,
        validity: Validity,
        dir: &Path,
    ) -> Result<(), IssueError> {
        let issued = self.issue(identity, validity)?;
        write_tls_dir(dir, &self.cert_pem, &issued)
    }
}

/// Writes a TLS directory: the trusted CAs, then the key, then the
/// certificate (each renamed into place; a reloading reader sees a
/// consistent pair once the certificate changes, see `credentials`).
pub fn write_tls_dir(dir: &Path, ca_pem: &str, issued: &Issued) -> Result<(), IssueError> {
    create_dir(dir)?;
    write_private(&dir.join(CA_FILE), ca_pem.as_bytes())?;
    write_private(&dir.join(KEY_FILE), issued.key_pem.as_bytes())?;
    write_private(&dir.join(CERT_FILE), issued.cert_pem.as_bytes())
}

fn create_dir(dir: &Path) -> Result<(), IssueError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| IssueError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `bytes` to a temporary file beside `path` (mode 0600), syncs it
/// and renames it into place.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IssueError> {
    let io = |source| IssueError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<String, IssueError> {
    std::fs::read_to_string(path).map_err(|source| IssueError::Io {
        path: path.to_owned(),
        source,
    })
}
