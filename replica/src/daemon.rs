//! Creating a pool (`cstor replica init`) and serving one (`cstor replica
//! run`): check the daemon's certificate (a replica of its pool), open the
//! devices and the pool, bind both listeners (a clear error for an address
//! in use), serve until SIGTERM/SIGINT, then shut down gracefully: stop
//! accepting, cut sessions, let in-flight requests finish (bounded by
//! [`SHUTDOWN_GRACE`]), and close the pool (commit + checkpoint).
//!
//! Both ports are secured by the daemon's [`Security`] (docs/security.md):
//! the data port's connections are handshaken on their shard
//! (`session::serve`), the management port's by
//! [`cstor_tls::grpc::incoming`], and each management call needs the right
//! [`crate::mgmt::rights_of`] names.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cstor_engine::io::{
    Backend, BackendKind, Device, DeviceOptions, DirectIo, FileDevice, IoError,
};
use cstor_engine::{DeviceRef, Pool, PoolOptions};
use cstor_mgmt::metrics_http;
use cstor_mgmt::v1::replica_manager_server::ReplicaManagerServer;
use cstor_tls::grpc::RequireRights;
use cstor_tls::{Identity, Security, TlsError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::limits::{IN_USE_WAIT, MAX_CONNECTIONS, SHUTDOWN_GRACE};
use crate::mgmt::{DeviceInfo, PoolInfo, Service};
use crate::registry::Registry;
use crate::shards::Shards;

/// Why the daemon could not start or stop cleanly. Each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("no backing device given")]
    NoDevices,
    #[error("--file and --size must come in pairs ({files} files, {sizes} sizes)")]
    FileSizeMismatch { files: usize, sizes: usize },
    #[error("cannot start the IO backend: {0}")]
    Backend(String),
    #[error("cannot open {path}: {reason}")]
    Device { path: String, reason: String },
    #[error("{0}")]
    Pool(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("management API failed: {0}")]
    Mgmt(String),
    #[error("cannot start the connection threads: {0}")]
    Shards(std::io::Error),
    /// The link security flags or the TLS directory (the message says
    /// what to give or what is wrong with the files).
    #[error(transparent)]
    Security(#[from] TlsError),
    /// The TLS directory holds a certificate that is not this daemon's: not
    /// a replica identity, or a replica of another pool.
    #[error(
        "the certificate in {dir} is for {identity}, but this daemon serves pool {pool}: \
         give it a replica certificate of pool {pool} \
         (`cstor certs issue --role replica --pool {pool}`)"
    )]
    WrongIdentity {
        dir: PathBuf,
        identity: Identity,
        pool: String,
    },
}

/// A pool to create.
#[derive(Debug, Clone)]
pub struct InitConfig {
    /// New files to create as devices, with their sizes.
    pub files: Vec<(PathBuf, u64)>,
    /// Existing block devices (or files) to use whole.
    pub devices: Vec<PathBuf>,
    pub chunk_bytes: Option<u32>,
    /// Keep block checksums (the default; off only to measure their cost).
    pub block_checksums: bool,
}

/// Creates a pool on new files and/or existing devices. Refuses to touch a
/// path that exists when asked to create a file, and a device that already
/// holds a pool.
pub async fn init(config: &InitConfig) -> Result<u128, DaemonError> {
    if config.files.is_empty() && config.devices.is_empty() {
        return Err(DaemonError::NoDevices);
    }
    let backend = backend()?;
    let mut devices: Vec<DeviceRef> = Vec::new();
    for (path, size) in &config.files {
        let dev = open(&backend, path, &DeviceOptions::create(*size))?;
        devices.push(dev);
    }
    for path in &config.devices {
        let dev = open(&backend, path, &DeviceOptions::existing())?;
        refuse_pool_device(&dev, path).await?;
        devices.push(dev);
    }
    let mut options = PoolOptions::default();
    if let Some(chunk) = config.chunk_bytes {
        options.chunk_bytes = chunk;
    }
    options.block_checksums = config.block_checksums;
    let pool = Pool::create(devices, &options)
        .await
        .map_err(|e| DaemonError::Pool(format!("cannot create the pool: {e}")))?;
    let guid = pool.guid();
    pool.close()
        .await
        .map_err(|e| DaemonError::Pool(format!("cannot close the new pool: {e}")))?;
    Ok(guid)
}

/// A device to add to an existing pool, while no daemon serves it.
#[derive(Debug, Clone)]
pub struct AddDeviceConfig {
    /// The pool's devices, in the order they were added.
    pub pool_paths: Vec<PathBuf>,
    /// The new device: a file to create (path, size) or an existing block
    /// device or file to use whole.
    pub device: NewDevice,
}

/// A device [`add_device`] adds.
#[derive(Debug, Clone)]
pub enum NewDevice {
    /// A new (sparse) file of this size.
    File(PathBuf, u64),
    /// An existing device or file, used whole.
    Existing(PathBuf),
}

impl NewDevice {
    fn path(&self) -> &std::path::Path {
        match self {
            NewDevice::File(path, _) | NewDevice::Existing(path) => path,
        }
    }
}

/// Adds a device to the pool on `config.pool_paths` (no daemon may be
/// serving it: the pool is opened here) and returns the pool's new size in
/// bytes. Its chunks join the pool; durable when this returns. A device
/// that already holds another pool is refused; one that is already this
/// pool's next device is left as it is (the call is idempotent).
pub async fn add_device(config: &AddDeviceConfig) -> Result<u64, DaemonError> {
    if config.pool_paths.is_empty() {
        return Err(DaemonError::NoDevices);
    }
    let backend = backend()?;
    let new_path = config.device.path();
    if config.pool_paths.iter().any(|p| p == new_path) {
        return Err(DaemonError::Device {
            path: new_path.display().to_string(),
            reason: "it is already one of the pool's devices".into(),
        });
    }
    let mut devices: Vec<DeviceRef> = Vec::new();
    for path in &config.pool_paths {
        devices.push(open(&backend, path, &DeviceOptions::existing())?);
    }
    // An existing device is checked first: one that holds a pool is never
    // written. If it is this pool's next device already (an earlier run
    // added it and was cut short before its caller noted it), there is
    // nothing to do: adding a device twice is a no-op.
    let existing = match &config.device {
        NewDevice::Existing(path) => {
            let dev = open(&backend, path, &DeviceOptions::existing())?;
            if Pool::label_of(&dev).await.is_some() {
                let mut all = devices.clone();
                all.push(dev.clone());
                if let Ok(pool) = Pool::open(all, &no_timer()).await {
                    let total = pool.stats().total_bytes;
                    pool.close()
                        .await
                        .map_err(|e| DaemonError::Pool(format!("cannot close the pool: {e}")))?;
                    return Ok(total);
                }
                refuse_pool_device(&dev, path).await?;
            }
            Some(dev)
        }
        NewDevice::File(..) => None,
    };
    let pool = Pool::open(devices, &no_timer()).await.map_err(|e| {
        DaemonError::Pool(format!(
            "cannot open the pool on {}: {e}",
            paths(&config.pool_paths)
        ))
    })?;
    let dev = match (existing, &config.device) {
        (Some(dev), _) => dev,
        (None, NewDevice::File(path, size)) => open(&backend, path, &DeviceOptions::create(*size))?,
        (None, NewDevice::Existing(path)) => open(&backend, path, &DeviceOptions::existing())?,
    };
    pool.add_device(dev)
        .await
        .map_err(|e| DaemonError::Device {
            path: new_path.display().to_string(),
            reason: format!("cannot add it to the pool: {e}"),
        })?;
    let total = pool.stats().total_bytes;
    pool.close()
        .await
        .map_err(|e| DaemonError::Pool(format!("cannot close the pool: {e}")))?;
    Ok(total)
}

/// Refuses a device that carries a pool's label (one device of a pool of
/// several included): it would be overwritten.
async fn refuse_pool_device(dev: &DeviceRef, path: &std::path::Path) -> Result<(), DaemonError> {
    match Pool::label_of(dev).await {
        Some(guid) => Err(DaemonError::Device {
            path: path.display().to_string(),
            reason: format!("it already holds pool {guid:032x}; refusing to overwrite it"),
        }),
        None => Ok(()),
    }
}

/// A pool to serve.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub pool_name: String,
    /// The pool's devices, in the order they were added.
    pub devices: Vec<PathBuf>,
    pub listen: SocketAddr,
    pub mgmt_listen: SocketAddr,
    /// Prometheus metrics endpoint (`GET /metrics`), off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Rebuild throttle at start (0: none).
    pub rebuild_limit_bytes_per_sec: u64,
    /// Threads serving replication connections ([`crate::shards`]).
    pub shards: usize,
    /// Whether pool IO goes through the page cache.
    pub io_mode: IoMode,
    /// Memory for the pool's checksum pages
    /// (`PoolOptions::checksum_cache_bytes`).
    pub checksum_cache_bytes: u64,
    /// How every link is secured: mutual TLS with a replica certificate of
    /// this pool, or plaintext by the operator's explicit choice.
    pub security: Security,
}

/// How a daemon reads and writes its pool's devices. Either way a flush
/// (SYNCHRONIZE CACHE, FUA, the commit timer) fdatasyncs every device before
/// the metadata that points at the data is committed, so what is durable
/// after a power loss is the same; what differs is where an acknowledged,
/// unflushed write waits (page cache or the device's own cache) and whether
/// reads of recently used blocks are served from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IoMode {
    /// Through the kernel's page cache: recently read or written blocks are
    /// served from memory (reclaimable; cgroup-accounted), writes are
    /// written back at the next flush or commit.
    #[default]
    Buffered,
    /// O_DIRECT, bypassing the page cache (a backing filesystem that
    /// refuses it, such as tmpfs, falls back to buffered with a log line).
    Direct,
}

impl IoMode {
    fn direct_io(self) -> DirectIo {
        match self {
            IoMode::Buffered => DirectIo::Off,
            IoMode::Direct => DirectIo::Auto,
        }
    }
}

/// The daemon, bound and ready to serve.
pub struct Daemon {
    shards: Shards,
    pool: Arc<Pool>,
    registry: Arc<Registry>,
    data: TcpListener,
    mgmt: TcpListener,
    metrics: Option<TcpListener>,
    info: PoolInfo,
    security: Security,
}

impl Daemon {
    /// Checks the daemon's own certificate, opens the pool and binds both
    /// listeners.
    pub async fn start(config: &RunConfig) -> Result<Daemon, DaemonError> {
        if config.devices.is_empty() {
            return Err(DaemonError::NoDevices);
        }
        check_identity(&config.security, &config.pool_name)?;
        let backend = backend()?;
        let mut devices: Vec<DeviceRef> = Vec::new();
        let mut infos = Vec::new();
        for path in &config.devices {
            let dev = open_waiting_for_release(&backend, path, config.io_mode).await?;
            infos.push(DeviceInfo {
                path: path.display().to_string(),
                size_bytes: dev.len_bytes(),
                direct_io: dev.direct_io(),
            });
            // Kind, size, alignment, O_DIRECT or buffered, IO backend.
            info!(device = %dev.describe(), "pool device");
            devices.push(dev);
        }
        let options = PoolOptions {
            checksum_cache_bytes: config.checksum_cache_bytes,
            ..PoolOptions::default()
        };
        let pool = Pool::open(devices, &options).await.map_err(|e| {
            DaemonError::Pool(format!(
                "cannot open the pool on {}: {e}",
                paths(&config.devices)
            ))
        })?;
        let data = bind(config.listen).await?;
        let mgmt = bind(config.mgmt_listen).await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let pool = Arc::new(pool);
        let info = PoolInfo {
            name: config.pool_name.clone(),
            devices: infos,
            io_backend: match backend.kind() {
                BackendKind::Uring => "io_uring".into(),
                BackendKind::Threads => "threads".into(),
            },
            format_version: cstor_engine::format::FORMAT_VERSION,
            insecure_plaintext: config.security.is_plaintext(),
        };
        let registry = Arc::new(Registry::new(Arc::clone(&pool)));
        registry
            .rebuild_settings()
            .set_limit_bytes_per_sec(config.rebuild_limit_bytes_per_sec);
        let shards = Shards::start(config.shards).map_err(DaemonError::Shards)?;
        Ok(Daemon {
            shards,
            registry,
            pool,
            data,
            mgmt,
            metrics,
            info,
            security: config.security.clone(),
        })
    }

    /// The pool served (in-process tests and tools).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The data (replication protocol) address actually bound.
    pub fn data_addr(&self) -> std::io::Result<SocketAddr> {
        self.data.local_addr()
    }

    /// The management address actually bound.
    pub fn mgmt_addr(&self) -> std::io::Result<SocketAddr> {
        self.mgmt.local_addr()
    }

    /// The metrics address actually bound, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled, then shuts down gracefully.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        let Daemon {
            shards,
            pool,
            registry,
            data,
            mgmt,
            metrics,
            info,
            security,
        } = self;
        if security.is_plaintext() {
            warn!(security = %security.describe(), "every port of this daemon accepts any peer");
        } else {
            info!(security = %security.describe(), "links secured");
        }
        // New certificates (rotation) serve new handshakes.
        security.watch(shutdown.clone());
        info!(
            pool = %info.name,
            guid = format!("{:032x}", pool.guid()),
            data = ?data.local_addr().ok(),
            mgmt = ?mgmt.local_addr().ok(),
            io = %info.io_backend,
            shards = shards.len(),
            "replica daemon serving"
        );
        if let Some(listener) = metrics {
            let (registry, pool_name) = (Arc::clone(&registry), info.name.clone());
            let render: metrics_http::Render =
                Arc::new(move || registry.metrics().render(&pool_name, &registry));
            tokio::spawn(metrics_http::serve(listener, render, shutdown.clone()));
        }
        let service = ReplicaManagerServer::new(Service::new(Arc::clone(&registry), info));
        let mgmt_shutdown = shutdown.clone();
        let mgmt_incoming = cstor_tls::grpc::incoming(mgmt, security.clone());
        let mgmt_task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(RequireRights::new(crate::mgmt::rights_of))
                .add_service(service)
                .serve_with_incoming_shutdown(mgmt_incoming, mgmt_shutdown.cancelled_owned())
                .await
        });
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = data.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        warn!(%peer, limit = MAX_CONNECTIONS, "too many connections; closing a new one");
                        continue;
                    }
                    // The stream moves to its shard's reactor.
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(%peer, error = %e, "cannot hand a connection to a shard");
                            continue;
                        }
                    };
                    let (registry, shutdown, security) =
                        (Arc::clone(&registry), shutdown.clone(), security.clone());
                    // The TLS handshake runs on the shard too: a slow or
                    // silent peer holds no task of the accept loop.
                    shards.spawn(&connections, move || async move {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => {
                                crate::session::serve(stream, peer, security, registry, shutdown)
                                    .await;
                            }
                            Err(e) => warn!(%peer, error = %e, "cannot serve a connection"),
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        info!("shutting down: no new connections; finishing requests in flight");
        drop(data);
        registry.cut_all();
        connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
            .await
            .is_err()
        {
            warn!(grace = ?SHUTDOWN_GRACE, "requests still running after the grace period");
        }
        let mgmt_result = mgmt_task.await;
        // Whatever is left on the shards (sessions past the grace period)
        // ends before the pool closes.
        if tokio::task::spawn_blocking(move || shards.stop_blocking())
            .await
            .is_err()
        {
            warn!("a shard did not stop cleanly");
        }
        pool.close()
            .await
            .map_err(|e| DaemonError::Pool(format!("cannot close the pool cleanly: {e}")))?;
        info!("pool closed cleanly");
        match mgmt_result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DaemonError::Mgmt(e.to_string())),
            Err(e) => Err(DaemonError::Mgmt(e.to_string())),
        }
    }
}

/// A daemon's certificate must be a replica identity of the pool it
/// serves (docs/security.md, "Identities"): a target's or another pool's
/// certificate is a misconfiguration, refused before anything is opened.
fn check_identity(security: &Security, pool: &str) -> Result<(), DaemonError> {
    let Some(credentials) = security.credentials() else {
        return Ok(());
    };
    match credentials.identity() {
        Identity::Replica { pool: ours } if ours == pool => {}
        identity => {
            return Err(DaemonError::WrongIdentity {
                dir: credentials.dir().to_owned(),
                identity,
                pool: pool.to_owned(),
            })
        }
    }
    // A rotation must not change the daemon's job either: a reloaded
    // certificate of another pool or role is refused (the current one stays).
    let pool = pool.to_owned();
    credentials
        .require(Box::new(move |identity| match identity {
            Identity::Replica { pool: ours } if *ours == pool => Ok(()),
            other => Err(format!("{other} is not a replica of pool {pool}")),
        }))
        .map_err(DaemonError::Security)
}

fn backend() -> Result<Backend, DaemonError> {
    Backend::from_env().map_err(|e| DaemonError::Backend(e.to_string()))
}

fn open_file(
    backend: &Backend,
    path: &std::path::Path,
    options: &DeviceOptions,
) -> Result<Arc<FileDevice>, DaemonError> {
    backend
        .open(path, options)
        .map_err(|e| DaemonError::Device {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Opens an existing device, waiting up to [`IN_USE_WAIT`] while it is in
/// use. A daemon restarted right after a crash (SIGKILL, OOM) finds its
/// pool still locked for a moment: the kernel tears a dead process's
/// io_uring down asynchronously, and the ring holds the file until then.
async fn open_waiting_for_release(
    backend: &Backend,
    path: &std::path::Path,
    io_mode: IoMode,
) -> Result<Arc<FileDevice>, DaemonError> {
    let options = DeviceOptions::existing().with_direct(io_mode.direct_io());
    let deadline = tokio::time::Instant::now() + IN_USE_WAIT;
    let mut logged = false;
    loop {
        match backend.open(path, &options) {
            Ok(dev) => return Ok(dev),
            Err(IoError::InUse { .. }) if tokio::time::Instant::now() < deadline => {
                if !logged {
                    info!(device = %path.display(), wait = ?IN_USE_WAIT, "device in use; waiting for it to be released");
                    logged = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(DaemonError::Device {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

fn open(
    backend: &Backend,
    path: &std::path::Path,
    options: &DeviceOptions,
) -> Result<DeviceRef, DaemonError> {
    Ok(open_file(backend, path, options)?)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })
}

fn paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_timer() -> PoolOptions {
    PoolOptions {
        commit_interval: None,
        ..PoolOptions::default()
    }
}
