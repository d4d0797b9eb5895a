//! `cstor target` command line: one iSCSI target for one volume. Every
//! flag can also be set through the environment variable its help names.
//!
//! Security: every link the target makes or serves (its replica links, its
//! management API) is mutual TLS 1.3 with the credentials of `--tls-dir`,
//! whose certificate must be a target's naming `--volume`
//! ([`check_identity`]); `--insecure-plaintext` is the one explicit way
//! out, logged as a warning at start and shown in the status. One of the
//! two is required.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::Args;
use cstor_mgmt::metrics_http;
use cstor_mgmt::size::parse_size;
use cstor_tls::{Identity, Security, TlsError};
use tokio_util::sync::CancellationToken;

use crate::iscsi::access::{Allowlist, InitiatorAccess};
use crate::iscsi::budget::BufferLimits;
use crate::iscsi::chap::{ChapConfig, Credentials};
use crate::iscsi::login::{target_name_for, TargetConfig};
use crate::limits::{
    MAX_COMMAND_DATA_BYTES, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE,
    MAX_CONNECTION_BUFFER_BYTES, MAX_TARGET_BUFFER_BYTES,
};
use crate::mgmt;
use crate::server::admit::ConnectionLimits;
use crate::server::{self, Shared};
use crate::volume::scrub::Scrub;
use crate::volume::{Volume, VolumeSpec};

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// iSCSI portal address.
    #[arg(long, env = "CSTOR_TARGET_LISTEN", default_value = "0.0.0.0:3260")]
    pub listen: SocketAddr,
    /// Management API address (gRPC: status, snapshots, resize; used by
    /// `cstor ctl --target`). Default 127.0.0.1:7700; if that is taken
    /// (another target on this host) the API is off, with a warning. An
    /// address given here must be free.
    #[arg(long, env = "CSTOR_TARGET_MGMT_LISTEN")]
    pub mgmt_listen: Option<SocketAddr>,
    /// Prometheus metrics address (HTTP, `GET /metrics`; see
    /// docs/metrics.md), e.g. 0.0.0.0:9500. Off unless given.
    #[arg(long, env = "CSTOR_TARGET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS directory: `ca.crt` (the cluster's CA), `tls.crt` (a target
    /// certificate naming --volume) and `tls.key`. Secures the replica
    /// links and the management API (mutual TLS 1.3); the files are read
    /// again when they change. Required unless --insecure-plaintext.
    #[arg(long, env = "CSTOR_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Run without authentication or encryption on every link (replica
    /// links, management API). Never the default; logged as a warning and
    /// shown in the status.
    #[arg(long, env = "CSTOR_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// The volume to serve (its replicas hold a volume replica of this name).
    #[arg(long, env = "CSTOR_VOLUME")]
    pub volume: String,
    /// A replica daemon's data address; repeat for every replica (1 to 5).
    /// These make a new volume's membership; once the replicas hold a
    /// membership record (any volume that was opened before), the target
    /// follows the record and dials its members, and addresses here only
    /// need to reach one of them.
    #[arg(
        long = "replica",
        env = "CSTOR_REPLICAS",
        value_delimiter = ',',
        required = true
    )]
    pub replicas: Vec<SocketAddr>,
    /// Consistency factor: healthy replicas that must acknowledge a write
    /// (default: a majority). Used for a new volume only; afterwards the
    /// CF in the replicas' membership record applies (change it with
    /// `cstor ctl replica set-cf`).
    #[arg(long, env = "CSTOR_CF")]
    pub cf: Option<usize>,
    /// Target name (default iqn.2016-09.com.openebs.cstor:VOLUME).
    #[arg(long, env = "CSTOR_TARGET_NAME")]
    pub target_name: Option<String>,
    /// Only these initiators may log in (repeat); default: any. The
    /// management API's SetAllowedInitiators replaces the list at run time.
    #[arg(
        long = "allow-initiator",
        env = "CSTOR_ALLOWED_INITIATORS",
        value_delimiter = ','
    )]
    pub allowed_initiators: Vec<String>,
    /// Admit no initiator until the management API's SetAllowedInitiators
    /// names some (the CSI controller publishes the volume to a node).
    #[arg(
        long,
        env = "CSTOR_DENY_INITIATORS",
        conflicts_with = "allowed_initiators"
    )]
    pub deny_initiators: bool,
    /// CHAP user the initiator must authenticate as (with
    /// CSTOR_CHAP_SECRET, 12 to 255 bytes).
    #[arg(long, env = "CSTOR_CHAP_USER")]
    pub chap_user: Option<String>,
    /// Mutual CHAP: the user the target answers as (with
    /// CSTOR_CHAP_TARGET_SECRET).
    #[arg(long, env = "CSTOR_CHAP_TARGET_USER")]
    pub chap_target_user: Option<String>,
    /// Drop a replica that takes longer than this to acknowledge (seconds).
    #[arg(long, env = "CSTOR_ACK_TIMEOUT", default_value_t = 5)]
    pub ack_timeout_seconds: u64,
    /// Below quorum, hold writes this long before failing them (seconds;
    /// keep it under the initiator's SCSI command timeout, 30 s on Linux).
    #[arg(long, env = "CSTOR_HOLD", default_value_t = 20)]
    pub hold_seconds: u64,
    /// Commands an initiator may have outstanding (MaxCmdSN window).
    #[arg(long, env = "CSTOR_QUEUE_DEPTH", default_value_t = 128)]
    pub queue_depth: u32,
    /// Threads serving the volume (1 to 64). With 1 (the default) every
    /// session, the replica links and the APIs share one thread, which
    /// spares a command the wake-ups of handing it between threads; more
    /// help only when many sessions (multipath) keep one CPU busy.
    #[arg(long, env = "CSTOR_TARGET_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// IO data all connections may hold at once (read data not yet queued
    /// to a socket, write data not yet completed by the volume), e.g.
    /// 256MiB; past it commands wait and TCP pushes back.
    #[arg(long, env = "CSTOR_MAX_BUFFERED_BYTES", value_parser = parse_size,
          default_value_t = MAX_TARGET_BUFFER_BYTES)]
    pub max_buffered_bytes: u64,
    /// IO data one connection may hold at once (at least 16MiB, the
    /// largest command, and at most --max-buffered-bytes).
    #[arg(long, env = "CSTOR_MAX_BUFFERED_BYTES_PER_CONNECTION", value_parser = parse_size,
          default_value_t = MAX_CONNECTION_BUFFER_BYTES)]
    pub max_buffered_bytes_per_connection: u64,
    /// iSCSI connections served at once; more are closed at accept.
    #[arg(long, env = "CSTOR_MAX_CONNECTIONS", default_value_t = MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_connections: usize,
    /// iSCSI connections served at once from one source IP address
    /// (logged in or not); more are closed at accept.
    #[arg(long, env = "CSTOR_MAX_CONNECTIONS_PER_SOURCE",
          default_value_t = MAX_CONNECTIONS_PER_SOURCE,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_connections_per_source: usize,
    /// Scrub the volume every INTERVAL (e.g. 7d, 24h, 90m; at least 60s),
    /// counted from the target's start and from each scheduled start; a
    /// scrub already running is left alone, a stopped one resumed
    /// (docs/replica.md, "Scrub"). Off unless given; `cstor ctl scrub
    /// start` works either way.
    #[arg(long, env = "CSTOR_SCRUB_INTERVAL", value_name = "INTERVAL",
          value_parser = crate::volume::scrub::parse_interval)]
    pub scrub_interval: Option<Duration>,
    /// Directory where the scrub's cursor is persisted
    /// (`scrub-<volume>.state`), so that a restarted target's scrub
    /// resumes where the last one stopped. Without it the cursor lives in
    /// the process only.
    #[arg(long, env = "CSTOR_SCRUB_STATE_DIR", value_name = "DIR")]
    pub scrub_state_dir: Option<PathBuf>,
}

/// Why `cstor target` could not start.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("CHAP: {0}")]
    Chap(String),
    #[error("--allow-initiator: {0}")]
    Initiator(#[from] crate::iscsi::access::NameError),
    /// `--tls-dir`/`--insecure-plaintext` missing, both given, or the TLS
    /// files unusable.
    #[error(transparent)]
    Security(#[from] TlsError),
    /// The certificate is not a target's for this volume.
    #[error(
        "{cert}: the certificate is for {found}, but this target serves volume {volume:?}: \
         it needs a target certificate naming that volume (cstor:target:{volume})"
    )]
    Identity {
        cert: PathBuf,
        found: Identity,
        volume: String,
    },
    #[error("cannot open volume {volume}: {source}")]
    Open {
        volume: String,
        source: crate::volume::OpenError,
    },
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Mgmt(#[from] mgmt::MgmtError),
    #[error(transparent)]
    Metrics(#[from] cstor_mgmt::metrics_http::MetricsHttpError),
    #[error("--max-buffered-bytes-per-connection {per_connection} must be at least {MAX_COMMAND_DATA_BYTES} (the largest command) and at most --max-buffered-bytes {per_target}")]
    BufferBounds {
        per_connection: u64,
        per_target: u64,
    },
}

impl TargetArgs {
    fn chap(&self) -> Result<Option<ChapConfig>, TargetError> {
        let secret = |var: &str| {
            std::env::var(var).map_err(|_| TargetError::Chap(format!("{var} must hold the secret")))
        };
        let Some(user) = &self.chap_user else {
            return Ok(None);
        };
        let initiator = Credentials::new(user, secret("CSTOR_CHAP_SECRET")?.as_bytes())
            .map_err(|e| TargetError::Chap(e.to_string()))?;
        let target = match &self.chap_target_user {
            Some(user) => Some(
                Credentials::new(user, secret("CSTOR_CHAP_TARGET_SECRET")?.as_bytes())
                    .map_err(|e| TargetError::Chap(e.to_string()))?,
            ),
            None => None,
        };
        ChapConfig::new(initiator, target)
            .map(Some)
            .map_err(|e| TargetError::Chap(e.to_string()))
    }

    /// Who may log in at start.
    fn allowlist(&self) -> Result<Allowlist, TargetError> {
        if self.deny_initiators {
            return Ok(Allowlist::Only(Vec::new()));
        }
        if self.allowed_initiators.is_empty() {
            return Ok(Allowlist::Any);
        }
        Ok(Allowlist::from_names(&self.allowed_initiators, false)?)
    }

    fn config(&self) -> Result<TargetConfig, TargetError> {
        let mut config = TargetConfig::for_volume(&self.volume);
        config.target_name = self
            .target_name
            .clone()
            .unwrap_or_else(|| target_name_for(&self.volume));
        config.allowed_initiators = InitiatorAccess::new(self.allowlist()?);
        config.chap = self.chap()?;
        config.queue_depth = self.queue_depth;
        config.buffers = self.buffers()?;
        Ok(config)
    }

    /// The buffer bounds: a connection's must hold the largest command and
    /// fit in the target's.
    fn buffers(&self) -> Result<BufferLimits, TargetError> {
        let (per_connection, per_target) = (
            self.max_buffered_bytes_per_connection,
            self.max_buffered_bytes,
        );
        if per_connection < u64::from(MAX_COMMAND_DATA_BYTES) || per_connection > per_target {
            return Err(TargetError::BufferBounds {
                per_connection,
                per_target,
            });
        }
        Ok(BufferLimits::new(per_connection, per_target))
    }

    fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            total: self.max_connections,
            per_source: self.max_connections_per_source,
        }
    }
}

/// Refuses credentials that are not a target's for `volume`: a target
/// certificate must name the volume its process serves (replicas refuse a
/// target whose certificate does not, so it could never claim it; better
/// to say so at start). Plaintext passes (the operator's choice).
pub fn check_identity(security: &Security, volume: &str) -> Result<(), TargetError> {
    let Some(credentials) = security.credentials() else {
        return Ok(());
    };
    let identity = credentials.identity();
    if identity.may_serve(volume) {
        // A rotation must not change the target's job either: a reloaded
        // certificate that does not name the volume is refused (the current
        // one stays in use).
        let volume = volume.to_owned();
        return credentials
            .require(Box::new(move |identity| {
                if identity.may_serve(&volume) {
                    Ok(())
                } else {
                    Err(format!("{identity} does not name volume {volume}"))
                }
            }))
            .map_err(TargetError::Security);
    }
    Err(TargetError::Identity {
        cert: credentials.dir().join(cstor_tls::issue::CERT_FILE),
        found: identity,
        volume: volume.to_owned(),
    })
}

/// Runs the target until `shutdown`.
pub async fn run(args: TargetArgs, shutdown: CancellationToken) -> Result<(), TargetError> {
    let security = Security::from_flags(args.tls_dir.as_deref(), args.insecure_plaintext)?;
    check_identity(&security, &args.volume)?;
    if security.is_plaintext() {
        tracing::warn!(volume = %args.volume, security = %security.describe(), "links are NOT secured");
    } else {
        tracing::info!(volume = %args.volume, security = %security.describe(), "links secured");
    }
    security.watch(shutdown.clone());
    let config = args.config()?;
    let listener = server::bind(args.listen).await?;
    let mgmt_listener = match args.mgmt_listen {
        Some(addr) => Some(mgmt::bind(addr).await?),
        None => match mgmt::bind(mgmt::DEFAULT_LISTEN).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "management API off: pass --mgmt-listen");
                None
            }
        },
    };
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(metrics_http::bind(addr).await?),
        None => None,
    };
    let mut spec = VolumeSpec::new(args.volume.clone(), args.replicas.clone(), security.clone());
    spec.cf = args.cf;
    spec.ack_timeout = Duration::from_secs(args.ack_timeout_seconds);
    spec.hold = Duration::from_secs(args.hold_seconds);
    tracing::info!(volume = %args.volume, replicas = ?args.replicas, "waiting for the replicas");
    let volume = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        opened = Volume::open(spec) => opened.map_err(|source| TargetError::Open {
            volume: args.volume.clone(),
            source,
        })?,
    };
    let shared = Arc::new(Shared::with_connection_limits(
        config,
        volume.clone(),
        &args.volume,
        args.connection_limits(),
    )?);
    if let Some(dir) = &args.scrub_state_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the scrub state directory");
        }
    }
    let scrub = Scrub::new(
        volume.clone(),
        args.volume.clone(),
        args.scrub_state_dir.as_deref(),
    );
    if let Some(interval) = args.scrub_interval {
        tracing::info!(volume = %args.volume, ?interval, "scrub scheduled");
        scrub.schedule(interval, shutdown.clone());
    }
    if let Some(listener) = metrics_listener {
        let (metrics, volume) = (Arc::clone(&shared.metrics), volume.clone());
        let scrub = scrub.clone();
        let render: metrics_http::Render =
            Arc::new(move || metrics.render_with_scrub(&volume.status(), &scrub));
        tokio::spawn(metrics_http::serve(listener, render, shutdown.clone()));
    }
    let api_task = mgmt_listener.map(|listener| {
        let api = mgmt::Service::new(volume.clone(), args.volume.clone(), &security)
            .with_initiator_access(shared.config.allowed_initiators.clone())
            .with_scrub(scrub.clone());
        tokio::spawn(mgmt::serve(
            listener,
            api,
            security.clone(),
            shutdown.clone(),
        ))
    });
    server::serve(listener, shared, shutdown.clone()).await;
    shutdown.cancel();
    let _ = scrub.stop().await;
    volume.close();
    let Some(task) = api_task else {
        return Ok(());
    };
    match task.await {
        Ok(result) => result.map_err(TargetError::from),
        Err(e) => {
            tracing::warn!(error = %e, "management API task ended abnormally");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use cstor_tls::Identity;

    use super::*;
    use crate::test_tls::{replica, target, Pki};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        target: TargetArgs,
    }

    /// An address no local socket can bind (TEST-NET-1): a target that got
    /// past its security checks fails at once with another error.
    const UNBINDABLE: &str = "192.0.2.1:3260";

    fn args(extra: &[&str]) -> TargetArgs {
        let mut argv = vec![
            "cstor-target",
            "--volume",
            "vol",
            "--replica",
            "127.0.0.1:1",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().target
    }

    #[test]
    fn the_security_flags_parse_and_default_to_neither() {
        let none = args(&[]);
        assert_eq!((none.tls_dir, none.insecure_plaintext), (None, false));
        let tls = args(&["--tls-dir", "/etc/cstor/tls"]);
        assert_eq!(tls.tls_dir, Some(PathBuf::from("/etc/cstor/tls")));
        assert!(args(&["--insecure-plaintext"]).insecure_plaintext);
    }

    #[tokio::test]
    async fn without_tls_dir_or_insecure_plaintext_the_target_does_not_start() {
        let result = run(args(&["--listen", UNBINDABLE]), CancellationToken::new()).await;
        assert!(
            matches!(result, Err(TargetError::Security(TlsError::Flags(_)))),
            "{result:?}"
        );
        let mut pki = Pki::new();
        let dir = pki.dir(&target("vol"));
        let both = args(&[
            "--tls-dir",
            dir.to_str().unwrap(),
            "--insecure-plaintext",
            "--listen",
            UNBINDABLE,
        ]);
        let result = run(both, CancellationToken::new()).await;
        assert!(
            matches!(result, Err(TargetError::Security(TlsError::Flags(_)))),
            "{result:?}"
        );
    }

    #[test]
    fn only_a_target_certificate_naming_the_volume_is_accepted() {
        let mut pki = Pki::new();
        assert!(check_identity(&pki.security(&target("vol")), "vol").is_ok());
        let several = Identity::Target {
            volumes: vec!["a".into(), "vol".into()],
        };
        assert!(check_identity(&pki.security(&several), "vol").is_ok());
        assert!(check_identity(&Security::Plaintext, "vol").is_ok());
        for wrong in [
            target("other"),
            replica("pool"),
            Identity::Admin,
            Identity::Reader,
        ] {
            match check_identity(&pki.security(&wrong), "vol") {
                Err(TargetError::Identity { found, volume, .. }) => {
                    assert_eq!((found, volume.as_str()), (wrong, "vol"));
                }
                other => panic!("{wrong}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_target_with_another_volumes_certificate_refuses_to_start() {
        let mut pki = Pki::new();
        let dir = pki.dir(&target("other"));
        let result = run(
            args(&[
                "--tls-dir",
                dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:1",
            ]),
            CancellationToken::new(),
        )
        .await;
        assert!(
            matches!(result, Err(TargetError::Identity { .. })),
            "{result:?}"
        );
    }
}
