//! Who a certificate says its holder is: a role, and for a target the
//! volumes it may serve, for a replica its pool. The identity rides in the
//! certificate's subject alternative names as URIs (`cstor:target:vol-1`,
//! `cstor:replica:pool-a`, `cstor:admin`, `cstor:reader`), so the CA's
//! signature covers it; the subject's common name is only a label for
//! humans. Names are percent-encoded (anything outside `A-Za-z0-9-._~`),
//! so every volume name the protocol allows fits in an IA5 string.

use std::fmt;

/// What a peer may do, decided from its certificate alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A target: may open sessions (claim epochs, write, change membership,
    /// snapshot, start rebuilds) on these volumes only.
    Target { volumes: Vec<String> },
    /// A replica daemon serving this pool: may pull a rebuild stream from a
    /// peer replica (never claim a volume).
    Replica { pool: String },
    /// An operator or the CSI controller: every management call.
    Admin,
    /// Monitoring: management calls that read (status, lists).
    Reader,
}

/// The kind of an [`Identity`], for what a connecting side expects of the
/// side it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Target,
    Replica,
    Admin,
    Reader,
}

/// A management call's right: reads are open to readers and admins,
/// everything else needs an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Right {
    Read,
    Admin,
}

/// Why a certificate names no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the certificate names no cstor identity (no cstor: URI among its alternative names)")]
    Missing,
    #[error("the certificate names more than one role ({0} and {1})")]
    MixedRoles(Role, Role),
    #[error("bad cstor identity {uri:?}: {reason}")]
    Malformed { uri: String, reason: &'static str },
}

const SCHEME: &str = "cstor:";

impl Identity {
    /// The role of this identity.
    pub fn role(&self) -> Role {
        match self {
            Identity::Target { .. } => Role::Target,
            Identity::Replica { .. } => Role::Replica,
            Identity::Admin => Role::Admin,
            Identity::Reader => Role::Reader,
        }
    }

    /// Whether this identity may open a target's session on `volume`.
    pub fn may_serve(&self, volume: &str) -> bool {
        matches!(self, Identity::Target { volumes } if volumes.iter().any(|v| v == volume))
    }

    /// The management right this identity holds, if any.
    pub fn right(&self) -> Option<Right> {
        match self {
            Identity::Admin => Some(Right::Admin),
            Identity::Reader => Some(Right::Read),
            Identity::Target { .. } | Identity::Replica { .. } => None,
        }
    }

    /// The alternative-name URIs that carry this identity.
    pub fn uris(&self) -> Vec<String> {
        match self {
            Identity::Target { volumes } => volumes
                .iter()
                .map(|v| format!("{SCHEME}target:{}", encode(v)))
                .collect(),
            Identity::Replica { pool } => vec![format!("{SCHEME}replica:{}", encode(pool))],
            Identity::Admin => vec![format!("{SCHEME}admin")],
            Identity::Reader => vec![format!("{SCHEME}reader")],
        }
    }

    /// Reads the identity of a DER certificate (already verified by the
    /// TLS layer: this only interprets it).
    pub fn from_der(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let uris = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        Identity::from_uris(uris)
    }

    /// Reads the identity from alternative-name URIs; URIs of other schemes
    /// are ignored.
    pub fn from_uris<'a>(
        uris: impl IntoIterator<Item = &'a str>,
    ) -> Result<Identity, IdentityError> {
        let mut found: Option<Identity> = None;
        for uri in uris {
            let Some(rest) = uri.strip_prefix(SCHEME) else {
                continue;
            };
            let next = parse_one(uri, rest)?;
            found = Some(match (found, next) {
                (None, next) => next,
                (Some(Identity::Target { mut volumes }), Identity::Target { volumes: more }) => {
                    volumes.extend(more);
                    Identity::Target { volumes }
                }
                (Some(a), b) if a == b && !matches!(a, Identity::Replica { .. }) => a,
                (Some(a), b) => {
                    if a.role() == b.role() {
                        return Err(IdentityError::Malformed {
                            uri: uri.to_owned(),
                            reason: "a replica certificate names exactly one pool",
                        });
                    }
                    return Err(IdentityError::MixedRoles(a.role(), b.role()));
                }
            });
        }
        found.ok_or(IdentityError::Missing)
    }
}

fn parse_one(uri: &str, rest: &str) -> Result<Identity, IdentityError> {
    let malformed = |reason| IdentityError::Malformed {
        uri: uri.to_owned(),
        reason,
    };
    let (role, name) = match rest.split_once(':') {
        Some((role, name)) => (role, Some(name)),
        None => (rest, None),
    };
    let name = match name {
        Some(n) => {
            let decoded = decode(n).ok_or_else(|| malformed("bad percent-encoding"))?;
            if decoded.is_empty() {
                return Err(malformed("empty name"));
            }
            Some(decoded)
        }
        None => None,
    };
    match (role, name) {
        ("target", Some(volume)) => Ok(Identity::Target {
            volumes: vec![volume],
        }),
        ("replica", Some(pool)) => Ok(Identity::Replica { pool }),
        ("admin", None) => Ok(Identity::Admin),
        ("reader", None) => Ok(Identity::Reader),
        ("target" | "replica", None) => Err(malformed("the role needs a name")),
        ("admin" | "reader", Some(_)) => Err(malformed("the role takes no name")),
        _ => Err(malformed("unknown role")),
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Target { volumes } => write!(f, "target of {}", volumes.join(", ")),
            Identity::Replica { pool } => write!(f, "replica of pool {pool}"),
            Identity::Admin => f.write_str("admin"),
            Identity::Reader => f.write_str("reader"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Target => "target",
            Role::Replica => "replica",
            Role::Admin => "admin",
            Role::Reader => "reader",
        })
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Read => "read",
            Right::Admin => "admin",
        })
    }
}

fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_every_role() {
        for identity in [
            Identity::Target {
                volumes: vec!["pvc-1".into(), "odd name:/%".into()],
            },
            Identity::Replica {
                pool: "pool a".into(),
            },
            Identity::Admin,
            Identity::Reader,
        ] {
            let uris = identity.uris();
            let back = Identity::from_uris(uris.iter().map(String::as_str));
            assert_eq!(back, Ok(identity));
        }
    }

    #[test]
    fn refuses_mixed_missing_and_malformed() {
        assert_eq!(
            Identity::from_uris(["cstor:admin", "cstor:replica:p"]),
            Err(IdentityError::MixedRoles(Role::Admin, Role::Replica))
        );
        assert_eq!(
            Identity::from_uris(["https://example.com"]),
            Err(IdentityError::Missing)
        );
        for bad in [
            "cstor:target",
            "cstor:target:",
            "cstor:admin:x",
            "cstor:root",
            "cstor:target:%zz",
        ] {
            assert!(
                matches!(
                    Identity::from_uris([bad]),
                    Err(IdentityError::Malformed { .. })
                ),
                "{bad}"
            );
        }
        assert!(Identity::from_uris(["cstor:replica:a", "cstor:replica:b"]).is_err());
    }

    #[test]
    fn only_named_volumes_are_served() {
        let t = Identity::Target {
            volumes: vec!["a".into()],
        };
        assert!(t.may_serve("a"));
        assert!(!t.may_serve("b"));
        assert!(!Identity::Admin.may_serve("a"));
        assert_eq!(Identity::Admin.right(), Some(Right::Admin));
        assert_eq!(Identity::Reader.right(), Some(Right::Read));
        assert_eq!(t.right(), None);
    }
}
