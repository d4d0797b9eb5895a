//! `cstor replica …` command line: `init` creates a pool, `add-device`
//! grows it, `run` serves it.
//! Every flag can also be set through the environment variable its help
//! names.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use cstor_tls::Security;

use crate::daemon::{AddDeviceConfig, DaemonError, InitConfig, IoMode, NewDevice, RunConfig};

#[derive(Debug, Args)]
pub struct ReplicaArgs {
    #[command(subcommand)]
    pub command: ReplicaCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// Create a pool on new files and/or existing block devices.
    Init(InitArgs),
    /// Grow a pool by one device (a new file, or an existing block device
    /// used whole), while no daemon serves it: its chunks join the pool.
    /// Serve it afterwards with every --pool-path, the new one last.
    AddDevice(AddDeviceArgs),
    /// Serve a pool: the replication protocol for targets and the
    /// management API.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Name of the pool (for logs and `cstor ctl`).
    #[arg(long, env = "CSTOR_POOL")]
    pub pool: String,
    /// A new file to create as a backing device (sparse); give --size after
    /// each --file. Repeat to add more files.
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Size of the --file before it, e.g. 10GiB.
    #[arg(long = "size", value_name = "SIZE", value_parser = cstor_mgmt::size::parse_size)]
    pub sizes: Vec<u64>,
    /// An existing block device (ZFS zvol, LVM volume, disk) or file to use
    /// whole. Repeat to add more. Refused if it already holds a pool.
    #[arg(long = "device", value_name = "PATH")]
    pub devices: Vec<PathBuf>,
    /// Chunk size: the unit of allocation and copy-on-write (4KiB to 1MiB,
    /// a power of two).
    #[arg(long, value_parser = cstor_mgmt::size::parse_size, default_value = "64KiB")]
    pub chunk_size: u64,
    /// Create the pool without block checksums: reads are then not
    /// verified and a rotten block is served as data. Only to measure what
    /// checksums cost (benches/); never in production.
    #[arg(long)]
    pub no_block_checksums: bool,
}

impl InitArgs {
    pub fn config(&self) -> Result<InitConfig, DaemonError> {
        if self.files.len() != self.sizes.len() {
            return Err(DaemonError::FileSizeMismatch {
                files: self.files.len(),
                sizes: self.sizes.len(),
            });
        }
        let chunk_bytes = u32::try_from(self.chunk_size).map_err(|_| {
            DaemonError::Pool(format!("chunk size {} is too large", self.chunk_size))
        })?;
        Ok(InitConfig {
            files: self.files.iter().cloned().zip(self.sizes.clone()).collect(),
            devices: self.devices.clone(),
            chunk_bytes: Some(chunk_bytes),
            block_checksums: !self.no_block_checksums,
        })
    }
}

/// A pool's devices on the command line (`run`, `add-device`).
#[derive(Debug, Args)]
pub struct PoolPaths {
    /// The pool's backing devices (files or block devices), in the order
    /// they were added. Repeat, or separate with commas in the variable.
    #[arg(
        long = "pool-path",
        value_name = "PATH",
        env = "CSTOR_POOL_PATH",
        value_delimiter = ',',
        required = true
    )]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AddDeviceArgs {
    #[command(flatten)]
    pub pool: PoolPaths,
    /// A new file to create (sparse) as the added device; give --size.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "device",
        requires = "size"
    )]
    pub file: Option<PathBuf>,
    /// Size of the --file, e.g. 10GiB.
    #[arg(long, value_parser = cstor_mgmt::size::parse_size, requires = "file")]
    pub size: Option<u64>,
    /// An existing block device (or file) to add, used whole. Refused if
    /// it already holds a pool.
    #[arg(long, value_name = "PATH", required_unless_present = "file")]
    pub device: Option<PathBuf>,
}

impl AddDeviceArgs {
    pub fn config(&self) -> Result<AddDeviceConfig, DaemonError> {
        let device = match (&self.file, self.size, &self.device) {
            (Some(file), Some(size), None) => NewDevice::File(file.clone(), size),
            (None, None, Some(device)) => NewDevice::Existing(device.clone()),
            _ => return Err(DaemonError::NoDevices),
        };
        Ok(AddDeviceConfig {
            pool_paths: self.pool.paths.clone(),
            device,
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the pool (for logs and `cstor ctl`).
    #[arg(long, env = "CSTOR_POOL", default_value = "pool")]
    pub pool: String,
    #[command(flatten)]
    pub pool_paths: PoolPaths,
    /// Address for targets (replication protocol).
    #[arg(long, env = "CSTOR_REPLICA_LISTEN", default_value = "0.0.0.0:7600")]
    pub listen: SocketAddr,
    /// Address of the management API (gRPC).
    #[arg(
        long,
        env = "CSTOR_REPLICA_MGMT_LISTEN",
        default_value = "127.0.0.1:7601"
    )]
    pub mgmt_listen: SocketAddr,
    /// Prometheus metrics address (HTTP, `GET /metrics`; see
    /// docs/metrics.md), e.g. 0.0.0.0:9501. Off unless given.
    #[arg(long, env = "CSTOR_REPLICA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Rebuild throttle: bytes per second a volume rebuilding here may pull
    /// from its peer, e.g. 100MiB; 0 for no limit. Changeable at runtime
    /// through the management API.
    #[arg(
        long,
        env = "CSTOR_REBUILD_LIMIT",
        value_parser = cstor_mgmt::size::parse_size,
        default_value = "0"
    )]
    pub rebuild_limit: u64,
    /// Threads serving replication connections (1 to 64). A connection and
    /// all of its requests stay on one of them; default: one per CPU, at
    /// most 8.
    #[arg(long, env = "CSTOR_REPLICA_SHARDS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub shards: Option<u16>,
    /// How the pool's devices are read and written: `buffered` through the
    /// page cache (hot blocks are read from memory), or `direct` (O_DIRECT).
    /// Flushes make data durable the same way in both; see
    /// docs/replica.md ("IO mode").
    #[arg(long, env = "CSTOR_REPLICA_IO_MODE", value_enum, default_value_t = IoMode::Buffered)]
    pub io_mode: IoMode,
    /// Memory for the pool's block-checksum pages, e.g. 512MiB: 4 KiB of
    /// checksums cover 4 MiB of data, so the default holds those of 256 GiB
    /// in memory. Beyond it a page is read from the pool when a read or
    /// write needs it and evicted when clean (pages changed since the last
    /// commit stay until it writes them). At least one page is kept.
    #[arg(
        long,
        env = "CSTOR_CHECKSUM_CACHE",
        value_parser = cstor_mgmt::size::parse_size,
        default_value = "256MiB"
    )]
    pub checksum_cache: u64,
    /// This daemon's TLS directory: `ca.crt` (the cluster's CA), `tls.crt`
    /// (a replica certificate of this --pool) and `tls.key`. Every link is
    /// mutual TLS: targets, peer replicas (rebuilds) and management clients
    /// must present certificates of the same CA (docs/security.md).
    #[arg(long, env = "CSTOR_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Run without authentication or encryption on every port (data,
    /// rebuild, management): any peer may do anything. Only by explicit
    /// choice; logged as a warning and shown by the management API.
    #[arg(long, env = "CSTOR_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
}

impl RunArgs {
    /// The daemon's configuration; fails when the link security is not
    /// given (exactly one of `--tls-dir` and `--insecure-plaintext`) or the
    /// TLS directory cannot be read.
    pub fn config(&self) -> Result<RunConfig, DaemonError> {
        let security = Security::from_flags(self.tls_dir.as_deref(), self.insecure_plaintext)?;
        Ok(RunConfig {
            pool_name: self.pool.clone(),
            devices: self.pool_paths.paths.clone(),
            listen: self.listen,
            mgmt_listen: self.mgmt_listen,
            metrics_listen: self.metrics_listen,
            rebuild_limit_bytes_per_sec: self.rebuild_limit,
            shards: self.shards.map_or_else(default_shards, usize::from),
            io_mode: self.io_mode,
            checksum_cache_bytes: self.checksum_cache,
            security,
        })
    }
}

/// One shard per CPU, at most 8.
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}
