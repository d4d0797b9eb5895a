//! `cstor`: one binary for every cstor process (target, replica, CSI driver)
//! and for the operator's tools (`up`, `ctl`).
//!
//! Subcommands appear here as they become real; a capability that is not
//! built yet answers with a clear error instead of pretending.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod certs;
mod ctl;
mod up;

/// Replicated block storage for Kubernetes: an iSCSI target per volume that
/// writes every block to N replica daemons and acknowledges at quorum.
#[derive(Debug, Parser)]
#[command(name = "cstor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run replicas and a target on loopback with file-backed pools (the
    /// embedded default for a first try).
    Up(up::UpArgs),
    /// iSCSI target for one volume, replicating to its replica daemons.
    Target(cstor_target::cli::TargetArgs),
    /// Replica daemon: create a pool (`init`) or serve one (`run`).
    Replica(cstor_replica::cli::ReplicaArgs),
    /// Operate a volume through its target (status, snapshots, resize) and
    /// pools and volume replicas through a replica daemon.
    Ctl(ctl::CtlArgs),
    /// CSI driver (CSI spec v1): identity, controller and node services on
    /// a unix socket for kubelet and the CSI sidecars.
    Csi(cstor_csi::cli::CsiArgs),
    /// Certificates for mutual TLS: create a cluster CA (`ca`), issue a
    /// process's TLS directory for --tls-dir (`issue`).
    Certs(certs::CertsArgs),
    /// Load generator speaking iSCSI: random/sequential read/write/mix IO
    /// against a LUN, pipelined, with latency percentiles, a verify mode
    /// and JSON output.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => block_on(with_signals(|shutdown| up::run(args, shutdown))),
        Command::Ctl(args) => block_on(ctl::run(args)),
        Command::Replica(args) => block_on(replica(args)),
        Command::Target(args) => {
            let threads = usize::from(args.threads);
            block_on_threads(threads, target(args))
        }
        Command::Csi(args) => block_on(with_signals(|shutdown| async move {
            cstor_csi::cli::run(args, shutdown).await?;
            Ok(())
        })),
        Command::Bench(args) => {
            let threads = usize::from(args.threads);
            block_on_threads(threads, bench::run(args))
        }
        Command::Certs(args) => match certs::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs an async command to completion on a fresh runtime and turns its
/// error into a message and exit code 1.
fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    block_on_threads(0, fut)
}

/// [`block_on`] on `threads` threads: 1 runs everything on this thread, 0
/// one worker per CPU.
fn block_on_threads(
    threads: usize,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let built = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn replica(args: cstor_replica::cli::ReplicaArgs) -> anyhow::Result<()> {
    use cstor_replica::cli::ReplicaCommand;
    use cstor_replica::daemon::{add_device, init, Daemon};
    match args.command {
        ReplicaCommand::Init(init_args) => {
            let guid = init(&init_args.config()?).await?;
            println!("created pool {} (guid {guid:032x})", init_args.pool);
            Ok(())
        }
        ReplicaCommand::AddDevice(add_args) => {
            let total = add_device(&add_args.config()?).await?;
            println!("pool grown: {total} bytes of data");
            Ok(())
        }
        ReplicaCommand::Run(run_args) => {
            let daemon = Daemon::start(&run_args.config()?).await?;
            with_signals(|shutdown| async move {
                daemon.serve(shutdown).await?;
                Ok(())
            })
            .await
        }
    }
}

async fn target(args: cstor_target::cli::TargetArgs) -> anyhow::Result<()> {
    with_signals(|shutdown| async move {
        cstor_target::cli::run(args, shutdown).await?;
        Ok(())
    })
    .await
}

/// Runs `f` with a token cancelled on SIGTERM or SIGINT.
async fn with_signals<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_termination().await;
        on_signal.cancel();
    });
    f(shutdown).await
}

/// Resolves on SIGTERM (Kubernetes, `cstor up`) or SIGINT (Ctrl-C).
async fn wait_for_termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
