//! The engine's one public error: a small, stable, matchable [`ErrorKind`]
//! plus context (what failed, on which volume / offset) and the IO error
//! underneath when there is one.
//!
//! The replica maps each kind one-to-one to a protocol status code and a
//! SCSI sense key, so kinds are only ever added, never renumbered or merged.

use std::fmt;
use std::io;

/// What went wrong, as a caller needs to act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No volume, snapshot or device of that name / id.
    NotFound,
    /// A volume or snapshot of that name exists already.
    AlreadyExists,
    /// Offset or length outside the volume.
    OutOfRange,
    /// The pool (or its metadata area) cannot hold what was asked.
    NoSpace,
    /// A request that can never succeed as given (misaligned, bad size...).
    InvalidArgument,
    /// An earlier write or sync failed on this volume or pool; it refuses
    /// further IO until reopened (we never retry fsync).
    Poisoned,
    /// A device IO failed (read errors; write/sync errors poison as well).
    Io,
    /// On-disk data failed a checksum or a consistency check.
    Corrupt,
    /// The operation conflicts with the current state (e.g. deleting a
    /// snapshot while it is being read through, or a stale epoch).
    Conflict,
    /// The pool was closed.
    Closed,
    /// Data read back does not match the checksum stored when it was
    /// written: the blocks named by [`Error::bad_ranges`] are bad on this
    /// copy (the rest of the request was fine). Never returned with data.
    Checksum,
}

/// The engine's error: a kind, a human context, and an optional IO cause.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    #[source]
    source: Option<io::Error>,
    /// For [`ErrorKind::Checksum`]: the bad byte ranges (offset, length)
    /// of the volume, whole 4 KiB blocks, sorted and merged.
    bad: Vec<(u64, u64)>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl Error {
    /// An error of `kind` with a context message.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
            bad: Vec::new(),
        }
    }

    /// An [`ErrorKind::Checksum`] error naming the bad byte ranges of the
    /// volume (merged when adjacent).
    pub fn checksum(context: impl Into<String>, mut bad: Vec<(u64, u64)>) -> Self {
        bad.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(bad.len());
        for (off, len) in bad {
            match merged.last_mut() {
                Some((o, l)) if o.saturating_add(*l) >= off => {
                    *l = (*l).max(off.saturating_add(len) - *o);
                }
                _ => merged.push((off, len)),
            }
        }
        Self {
            kind: ErrorKind::Checksum,
            context: context.into(),
            source: None,
            bad: merged,
        }
    }

    /// For a checksum error, the bad byte ranges (offset, length) of the
    /// volume; empty for every other kind.
    pub fn bad_ranges(&self) -> &[(u64, u64)] {
        &self.bad
    }

    /// An [`ErrorKind::Io`] error wrapping the device error.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self {
            kind: ErrorKind::Io,
            context: context.into(),
            source: Some(source),
            bad: Vec::new(),
        }
    }

    /// The kind, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The context message.
    pub fn context(&self) -> &str {
        &self.context
    }
}

/// Engine result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthands used across the crate.
pub(crate) fn corrupt(context: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, context)
}

pub(crate) fn invalid(context: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, context)
}

pub(crate) fn not_found(context: impl Into<String>) -> Error {
    Error::new(ErrorKind::NotFound, context)
}

pub(crate) fn no_space(context: impl Into<String>) -> Error {
    Error::new(ErrorKind::NoSpace, context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_error_merges_its_ranges() {
        let e = Error::checksum("read v1", vec![(8192, 4096), (0, 4096), (4096, 4096)]);
        assert_eq!(e.kind(), ErrorKind::Checksum);
        assert_eq!(e.bad_ranges(), &[(0, 12288)]);
        let e = Error::checksum("read v1", vec![(0, 4096), (16384, 4096)]);
        assert_eq!(e.bad_ranges(), &[(0, 4096), (16384, 4096)]);
    }

    #[test]
    fn display_names_kind_context_and_cause() {
        let e = Error::io("write volume v1 at 4096", io::Error::other("EIO"));
        assert_eq!(e.kind(), ErrorKind::Io);
        let s = e.to_string();
        assert!(
            s.contains("Io") && s.contains("v1 at 4096") && s.contains("EIO"),
            "{s}"
        );
    }
}
