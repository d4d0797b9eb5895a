//! `cstor certs`: a cluster's certificate authority and the role
//! certificates its processes present (docs/architecture.md, "Links are
//! authenticated").
//!
//! - `cstor certs ca --out DIR` creates a CA (`ca.crt`, `ca.key`); it never
//!   overwrites one.
//! - `cstor certs issue --ca DIR --out DIR --role …` writes a process's TLS
//!   directory (`ca.crt`, `tls.crt`, `tls.key`, each 0600), the directory
//!   `--tls-dir` takes. Issuing into an existing TLS directory replaces its
//!   files (each renamed into place): that is how certificates are rotated
//!   under a running process, which reloads them (`cstor_tls::credentials`).
//!
//! The roles: `target` names the volumes it may serve (`--volume`, one or
//! more), `replica` the pool it serves (`--pool`, exactly one), `admin`
//! (every management call) and `reader` (management calls that read) take
//! neither.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use cstor_tls::issue::{IssueError, CA_FILE, CA_KEY_FILE, CA_VALIDITY, CERT_VALIDITY};
use cstor_tls::{Ca, Identity, Validity};

/// The longest validity `--days` accepts (100 years): far past any real
/// need, and well inside what a certificate's time fields hold.
pub const MAX_DAYS: u32 = 36_500;

/// Seconds in a day (`--days`).
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The CA's name when `--name` is not given.
pub const DEFAULT_CA_NAME: &str = "cstor cluster CA";

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a cluster CA: DIR/ca.crt and DIR/ca.key (mode 0600; keep the
    /// key away from every node). Refuses to overwrite an existing CA.
    Ca {
        /// Directory for ca.crt and ca.key (created 0700 if missing).
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name (a label for humans).
        #[arg(long, default_value = DEFAULT_CA_NAME)]
        name: String,
        /// Validity in days [default: 3650].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: Option<u32>,
    },
    /// Issue a role certificate signed by the CA and write a TLS directory
    /// (ca.crt, tls.crt, tls.key; mode 0600) for a process's --tls-dir.
    /// Files already there are replaced (a rotation: running processes
    /// reload them).
    Issue {
        /// The CA's directory (ca.crt, ca.key), as `cstor certs ca` made it.
        #[arg(long)]
        ca: PathBuf,
        /// The TLS directory to write (created 0700 if missing).
        #[arg(long)]
        out: PathBuf,
        /// Who the certificate's holder is.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// With --role target: a volume it may serve (repeat for more).
        #[arg(long)]
        volume: Vec<String>,
        /// With --role replica: the pool it serves (its `--pool`).
        #[arg(long)]
        pool: Option<String>,
        /// Validity in days [default: 365].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: Option<u32>,
    },
}

/// `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    /// An iSCSI target: may claim and write the volumes named by --volume.
    Target,
    /// A replica daemon: serves the pool named by --pool, pulls rebuilds
    /// from its peers.
    Replica,
    /// An operator or the CSI controller: every management call.
    Admin,
    /// Monitoring: management calls that read.
    Reader,
}

impl RoleArg {
    fn name(self) -> &'static str {
        match self {
            RoleArg::Target => "target",
            RoleArg::Replica => "replica",
            RoleArg::Admin => "admin",
            RoleArg::Reader => "reader",
        }
    }
}

/// Why `cstor certs` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("--role target needs at least one --volume (the volumes it may serve)")]
    NoVolume,
    #[error("--role replica needs --pool (the pool it serves, as its --pool)")]
    NoPool,
    #[error("--volume is only for --role target, not --role {0}")]
    VolumeNotForRole(&'static str),
    #[error("--pool is only for --role replica, not --role {0}")]
    PoolNotForRole(&'static str),
    #[error("bad {what} name {name:?}: {reason}")]
    BadName {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("{0} already holds a CA ({1} exists); refusing to overwrite it")]
    CaExists(PathBuf, &'static str),
    #[error("--out {0} holds a CA key ({CA_KEY_FILE}); a TLS directory goes elsewhere")]
    OutIsCa(PathBuf),
    #[error(transparent)]
    Issue(#[from] IssueError),
}

pub fn run(args: CertsArgs) -> Result<(), CertsError> {
    match args.command {
        CertsCommand::Ca { out, name, days } => {
            create_ca(&out, &name, validity(days, CA_VALIDITY))?;
            println!(
                "created CA {name:?} in {}: {CA_FILE}, {CA_KEY_FILE} (keep {CA_KEY_FILE} secret)",
                out.display()
            );
        }
        CertsCommand::Issue {
            ca,
            out,
            role,
            volume,
            pool,
            days,
        } => {
            let identity = identity(role, volume, pool)?;
            issue(&ca, &out, &identity, validity(days, CERT_VALIDITY))?;
            println!(
                "issued a certificate for {identity} in {}: ca.crt, tls.crt, tls.key",
                out.display()
            );
        }
    }
    Ok(())
}

fn validity(days: Option<u32>, default: Duration) -> Validity {
    Validity::from_now(days.map_or(default, |d| DAY * d))
}

/// The identity `--role` and its names ask for.
fn identity(
    role: RoleArg,
    volumes: Vec<String>,
    pool: Option<String>,
) -> Result<Identity, CertsError> {
    if role != RoleArg::Target && !volumes.is_empty() {
        return Err(CertsError::VolumeNotForRole(role.name()));
    }
    if role != RoleArg::Replica && pool.is_some() {
        return Err(CertsError::PoolNotForRole(role.name()));
    }
    Ok(match role {
        RoleArg::Target => {
            if volumes.is_empty() {
                return Err(CertsError::NoVolume);
            }
            for v in &volumes {
                check_name("volume", v)?;
            }
            Identity::Target { volumes }
        }
        RoleArg::Replica => {
            let pool = pool.ok_or(CertsError::NoPool)?;
            check_name("pool", &pool)?;
            Identity::Replica { pool }
        }
        RoleArg::Admin => Identity::Admin,
        RoleArg::Reader => Identity::Reader,
    })
}

/// A name as the replication protocol allows it (1 to 255 bytes, no
/// control characters).
fn check_name(what: &'static str, name: &str) -> Result<(), CertsError> {
    cstor_proto::Name::new(name)
        .map(drop)
        .map_err(|e| CertsError::BadName {
            what,
            name: name.to_owned(),
            reason: e.to_string(),
        })
}

/// Creates a CA in `dir`; refuses when either of its files is there.
pub fn create_ca(dir: &Path, name: &str, validity: Validity) -> Result<Ca, CertsError> {
    for file in [CA_FILE, CA_KEY_FILE] {
        if dir.join(file).exists() {
            return Err(CertsError::CaExists(dir.to_owned(), file));
        }
    }
    let ca = Ca::generate(name, validity)?;
    ca.save(dir)?;
    Ok(ca)
}

/// Issues `identity` with the CA in `ca_dir` into the TLS directory `out`.
fn issue(
    ca_dir: &Path,
    out: &Path,
    identity: &Identity,
    validity: Validity,
) -> Result<(), CertsError> {
    let ca = Ca::load(ca_dir)?;
    // Writing a TLS directory over a CA's would replace its ca.crt, and
    // leave a certificate that no longer goes with its ca.key.
    if out.join(CA_KEY_FILE).exists() {
        return Err(CertsError::OutIsCa(out.to_owned()));
    }
    ca.issue_dir(identity, validity, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_takes_exactly_its_names() {
        assert_eq!(
            identity(RoleArg::Target, vec!["v1".into(), "v2".into()], None).ok(),
            Some(Identity::Target {
                volumes: vec!["v1".into(), "v2".into()]
            })
        );
        assert_eq!(
            identity(RoleArg::Replica, vec![], Some("p".into())).ok(),
            Some(Identity::Replica { pool: "p".into() })
        );
        assert_eq!(
            identity(RoleArg::Admin, vec![], None).ok(),
            Some(Identity::Admin)
        );
        assert_eq!(
            identity(RoleArg::Reader, vec![], None).ok(),
            Some(Identity::Reader)
        );
        assert!(matches!(
            identity(RoleArg::Target, vec![], None),
            Err(CertsError::NoVolume)
        ));
        assert!(matches!(
            identity(RoleArg::Replica, vec![], None),
            Err(CertsError::NoPool)
        ));
        assert!(matches!(
            identity(RoleArg::Admin, vec!["v".into()], None),
            Err(CertsError::VolumeNotForRole("admin"))
        ));
        assert!(matches!(
            identity(RoleArg::Target, vec!["v".into()], Some("p".into())),
            Err(CertsError::PoolNotForRole("target"))
        ));
        assert!(matches!(
            identity(RoleArg::Replica, vec!["v".into()], Some("p".into())),
            Err(CertsError::VolumeNotForRole("replica"))
        ));
        assert!(matches!(
            identity(RoleArg::Target, vec![String::new()], None),
            Err(CertsError::BadName { what: "volume", .. })
        ));
        assert!(matches!(
            identity(RoleArg::Replica, vec![], Some("a\nb".into())),
            Err(CertsError::BadName { what: "pool", .. })
        ));
    }
}
