//! A process's credentials, read from its TLS directory (see
//! [`crate::issue`] for the files) and kept current: [`Credentials::watch`]
//! polls the files every [`RELOAD_POLL`] and swaps in the new set when they
//! changed and load cleanly (a certificate whose key does not match yet —
//! a rotation caught half-way — keeps the old set until the next poll).
//! Connections already open keep the credentials they were made with; every
//! new handshake uses the current ones.
//!
//! Verification, both ways: TLS 1.3 only; the peer's chain must lead to one
//! of the trusted CAs and be valid now (expired and not-yet-valid
//! certificates are refused); then the peer's identity is read from its
//! certificate. Names and addresses are not checked (replicas are dialled
//! at whatever address the cluster gives them); the role is — a connecting
//! side states which roles it expects to reach.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::identity::{Identity, Role};
use crate::issue::{CA_FILE, CERT_FILE, KEY_FILE};
use crate::TlsError;

/// How often the TLS directory is checked for new files.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// One loaded set of files.
struct Loaded {
    identity: Identity,
    not_after: SystemTime,
    roots: Arc<RootCertStore>,
    key: Arc<CertifiedKey>,
    server: Arc<ServerConfig>,
    stamp: Stamp,
}

/// What the files looked like when they were read (modification time,
/// length and a digest of the content of each: a file rewritten with the
/// same length within the file system's time granularity still differs);
/// a change of any means "read again".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64, u64)>>);

impl Stamp {
    fn of(dir: &Path) -> Stamp {
        use std::hash::{Hash, Hasher};
        Stamp(
            [CA_FILE, CERT_FILE, KEY_FILE]
                .iter()
                .map(|f| {
                    let path = dir.join(f);
                    let meta = std::fs::metadata(&path).ok()?;
                    let mut digest = std::collections::hash_map::DefaultHasher::new();
                    std::fs::read(&path).ok()?.hash(&mut digest);
                    Some((meta.modified().ok()?, meta.len(), digest.finish()))
                })
                .collect(),
        )
    }
}

/// What a process requires of its own identity (see
/// [`Credentials::require`]): `Err` says why a certificate does not fit.
pub type IdentityCheck = Box<dyn Fn(&Identity) -> Result<(), String> + Send + Sync>;

/// A process's current certificate, key and trusted CAs.
pub struct Credentials {
    dir: PathBuf,
    current: RwLock<Arc<Loaded>>,
    check: RwLock<Option<IdentityCheck>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("dir", &self.dir)
            .field("identity", &self.identity())
            .finish()
    }
}

impl Credentials {
    /// Reads the TLS directory `dir` (`ca.crt`, `tls.crt`, `tls.key`).
    pub fn load(dir: &Path) -> Result<Arc<Credentials>, TlsError> {
        let loaded = load(dir)?;
        Ok(Arc::new(Credentials {
            dir: dir.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
            check: RwLock::new(None),
        }))
    }

    /// Requires every certificate this process uses to pass `check` (a
    /// target's must name its volume, a replica's its pool): the current
    /// one now, and a reloaded one before it replaces the current set (a
    /// rotation that would change the process's job is refused, and the
    /// old set stays in use). A later call replaces the requirement.
    pub fn require(&self, check: IdentityCheck) -> Result<(), TlsError> {
        let identity = self.identity();
        check(&identity).map_err(|reason| TlsError::Bad {
            path: self.dir.join(CERT_FILE),
            reason,
        })?;
        *self.check.write().unwrap_or_else(PoisonError::into_inner) = Some(check);
        Ok(())
    }

    /// The directory the credentials are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Who this process is, by its current certificate.
    pub fn identity(&self) -> Identity {
        self.current().identity.clone()
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.current().not_after
    }

    /// Reads the files again if they changed since they were last read.
    /// `Ok(true)`: a new set is in use. An error keeps the old set (and the
    /// files are read again at the next call).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = Stamp::of(&self.dir);
        if stamp == self.current().stamp {
            return Ok(false);
        }
        let loaded = load(&self.dir)?;
        if let Some(check) = self
            .check
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            check(&loaded.identity).map_err(|reason| TlsError::Bad {
                path: self.dir.join(CERT_FILE),
                reason,
            })?;
        }
        let identity = loaded.identity.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        info!(dir = %self.dir.display(), %identity, "TLS credentials reloaded");
        Ok(true)
    }

    /// Polls the files every [`RELOAD_POLL`] until `shutdown`.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_POLL) => {}
                }
                match this.reload_if_changed() {
                    Ok(_) => last_error = None,
                    Err(e) => {
                        let e = e.to_string();
                        if last_error.as_ref() != Some(&e) {
                            warn!(dir = %this.dir.display(), error = %e, "new TLS files not usable yet; keeping the current ones");
                        }
                        last_error = Some(e);
                    }
                }
            }
        })
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current().server)
    }

    /// A client configuration presenting this process's certificate that
    /// accepts only a server whose identity has one of the `expect` roles.
    pub(crate) fn client_config(&self, expect: &[Role]) -> Result<Arc<ClientConfig>, TlsError> {
        let loaded = self.current();
        let provider = provider();
        let verifier = Arc::new(RoleVerifier {
            roots: Arc::clone(&loaded.roots),
            expect: expect.to_vec(),
            provider: Arc::clone(&provider),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Single(Arc::clone(&loaded.key))));
        config.enable_sni = false;
        Ok(Arc::new(config))
    }
}

/// ring's TLS 1.3 suites, AES-128-GCM first: with AES instructions it is
/// the cheapest per byte of the three (every block of a volume crosses a
/// link twice), and 128-bit keys are what TLS 1.3 itself deems enough. A
/// peer that prefers another suite still gets it.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn load(dir: &Path) -> Result<Loaded, TlsError> {
    let stamp = Stamp::of(dir);
    let file = |name: &str| -> Result<Vec<u8>, TlsError> {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
    };
    let (ca, cert, key) = (file(CA_FILE)?, file(CERT_FILE)?, file(KEY_FILE)?);
    parse(dir, &ca, &cert, &key, stamp)
}

/// Checks a TLS directory's three files given as PEM (e.g. kept in a
/// Kubernetes Secret) as loading them would: the CAs parse, the key goes
/// with the certificate, and the certificate names an identity. Returns
/// the identity and when the certificate expires.
pub fn inspect(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Identity, SystemTime), TlsError> {
    let loaded = parse(Path::new(""), ca_pem, cert_pem, key_pem, Stamp(Vec::new()))?;
    Ok((loaded.identity, loaded.not_after))
}

/// The credentials of the three files' contents; errors name the files
/// under `dir`.
fn parse(dir: &Path, ca: &[u8], cert: &[u8], key: &[u8], stamp: Stamp) -> Result<Loaded, TlsError> {
    let bad = |name: &str, reason: String| TlsError::Bad {
        path: dir.join(name),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        let cert = cert.map_err(|e| bad(CA_FILE, e.to_string()))?;
        roots.add(cert).map_err(|e| bad(CA_FILE, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad(CA_FILE, "no CA certificate in it".into()));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(CERT_FILE, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(bad(CERT_FILE, "no certificate in it".into()));
    };
    let identity = Identity::from_der(leaf).map_err(|e| bad(CERT_FILE, e.to_string()))?;
    let not_after = not_after(leaf).map_err(|e| bad(CERT_FILE, e))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad(KEY_FILE, e.to_string()))?;
    let provider = provider();
    let key = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| bad(KEY_FILE, format!("does not go with {CERT_FILE}: {e}")))?;
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| bad(CA_FILE, e.to_string()))?;
    let key = Arc::new(key);
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(Single(Arc::clone(&key))));
    Ok(Loaded {
        identity,
        not_after,
        roots,
        key,
        server: Arc::new(server),
        stamp,
    })
}

fn not_after(der: &[u8]) -> Result<SystemTime, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Always this certificate (either side).
#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

impl rustls::client::ResolvesClientCert for Single {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a server: chain to a trusted CA, valid now, and an identity of
/// an expected role.
#[derive(Debug)]
struct RoleVerifier {
    roots: Arc<RootCertStore>,
    expect: Vec<Role>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let identity = Identity::from_der(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if !self.expect.contains(&identity.role()) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
