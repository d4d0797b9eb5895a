//! Which initiators may log in: the target's initiator allowlist, a value
//! the management API replaces at run time (the CSI controller's publish
//! fencing: an unpublished node must stop writing).
//!
//! - [`Allowlist`] is the pure value: everyone, or exactly the names listed
//!   (an empty list admits nobody). Names compare case-insensitively, as
//!   iSCSI names do (RFC 7143 §4.2.7.1, RFC 3722 folds case).
//! - [`InitiatorAccess`] is the shared, updatable handle: login reads the
//!   current value at the first Login Request, and every logged-in session
//!   watches it ([`InitiatorAccess::subscribe`]) to close itself once its
//!   initiator is no longer admitted.
//! - [`check_iscsi_name`] validates a name given to us by an operator or the
//!   API (RFC 7143 §4.2.7.2 iqn., §4.2.7.3 eui., §4.2.7.4 naa. formats),
//!   so that a typo is refused instead of silently admitting nobody.

use std::sync::Arc;

use tokio::sync::watch;

use super::limits::MAX_ISCSI_NAME_BYTES;

/// Initiators a target admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowlist {
    /// Every initiator (the default without `--allow-initiator`).
    Any,
    /// Only these names; none when empty.
    Only(Vec<String>),
}

impl Allowlist {
    /// Whether `initiator` may log in.
    pub fn admits(&self, initiator: &str) -> bool {
        match self {
            Allowlist::Any => true,
            Allowlist::Only(names) => names.iter().any(|n| n.eq_ignore_ascii_case(initiator)),
        }
    }

    /// The allowlist of the management API's `(initiators, allow_any)`,
    /// every name checked; duplicates are kept once (case-insensitively).
    pub fn from_names(initiators: &[String], allow_any: bool) -> Result<Self, NameError> {
        if allow_any {
            return Ok(Allowlist::Any);
        }
        let mut names: Vec<String> = Vec::with_capacity(initiators.len());
        for name in initiators {
            check_iscsi_name(name)?;
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name.clone());
            }
        }
        Ok(Allowlist::Only(names))
    }
}

/// Why a string is not an iSCSI name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("iSCSI name {name:?}: longer than {MAX_ISCSI_NAME_BYTES} bytes")]
    TooLong { name: String },
    #[error("iSCSI name {name:?}: {why}")]
    Malformed { name: String, why: &'static str },
}

/// Checks that `name` is an iSCSI name in one of the three formats of RFC
/// 7143 §4.2.7: `iqn.YYYY-MM.reversed.domain[:anything]`,
/// `eui.` and 16 hex digits, `naa.` and 16 or 32 hex digits. Only the ASCII
/// subset of the stringprep profile is accepted (letters, digits, `-`,
/// `.`, `:`), in either case.
pub fn check_iscsi_name(name: &str) -> Result<(), NameError> {
    let malformed = |why| NameError::Malformed {
        name: name.chars().take(MAX_ISCSI_NAME_BYTES).collect(),
        why,
    };
    if name.len() > MAX_ISCSI_NAME_BYTES {
        return Err(NameError::TooLong {
            name: name.chars().take(MAX_ISCSI_NAME_BYTES).collect(),
        });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'))
    {
        return Err(malformed("only letters, digits, '-', '.' and ':' allowed"));
    }
    let lower = name.to_ascii_lowercase();
    let hex_of = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if let Some(rest) = lower.strip_prefix("iqn.") {
        check_iqn(rest).map_err(malformed)
    } else if let Some(rest) = lower.strip_prefix("eui.") {
        if hex_of(rest, &[16]) {
            Ok(())
        } else {
            Err(malformed("eui. must be followed by 16 hex digits"))
        }
    } else if let Some(rest) = lower.strip_prefix("naa.") {
        if hex_of(rest, &[16, 32]) {
            Ok(())
        } else {
            Err(malformed("naa. must be followed by 16 or 32 hex digits"))
        }
    } else {
        Err(malformed("must start with iqn., eui. or naa."))
    }
}

/// The part of an iqn. name after `iqn.`: `YYYY-MM.` then a reversed
/// domain name, then optionally `:` and a unique string.
fn check_iqn(rest: &str) -> Result<(), &'static str> {
    let date = rest.get(..7).ok_or("iqn. needs a YYYY-MM date")?;
    let (year, month) = date.split_once('-').ok_or("iqn. needs a YYYY-MM date")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if year.len() != 4 || !digits(year) || month.len() != 2 || !digits(month) {
        return Err("iqn. needs a YYYY-MM date");
    }
    if !matches!(month.parse::<u8>(), Ok(1..=12)) {
        return Err("iqn. date has no such month");
    }
    let authority = rest
        .get(7..)
        .and_then(|s| s.strip_prefix('.'))
        .ok_or("iqn. date must be followed by '.' and a domain name")?;
    let domain = authority.split(':').next().unwrap_or_default();
    if domain.is_empty() || domain.split('.').any(str::is_empty) {
        return Err("iqn. needs a reversed domain name after the date");
    }
    Ok(())
}

/// The target's allowlist, shared by the login of every connection and the
/// management API. Cloning gives another handle to the same value.
#[derive(Debug, Clone)]
pub struct InitiatorAccess(Arc<watch::Sender<Allowlist>>);

impl InitiatorAccess {
    pub fn new(initial: Allowlist) -> Self {
        InitiatorAccess(Arc::new(watch::Sender::new(initial)))
    }

    /// The allowlist now.
    pub fn get(&self) -> Allowlist {
        self.0.borrow().clone()
    }

    /// Whether `initiator` may log in now.
    pub fn admits(&self, initiator: &str) -> bool {
        self.0.borrow().admits(initiator)
    }

    /// Replaces the allowlist; sessions watching it re-check their
    /// initiator. Setting the current value again changes nothing
    /// (idempotent) and wakes nobody.
    pub fn set(&self, allowlist: Allowlist) {
        self.0.send_if_modified(|current| {
            if *current == allowlist {
                return false;
            }
            *current = allowlist;
            true
        });
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<Allowlist> {
        self.0.subscribe()
    }
}

impl Default for InitiatorAccess {
    /// Admits everyone.
    fn default() -> Self {
        Self::new(Allowlist::Any)
    }
}

/// Resolves once `initiator` is no longer admitted by the allowlist `rx`
/// watches (at once if it is not admitted now); never if the allowlist can
/// no longer change.
pub async fn revoked(mut rx: watch::Receiver<Allowlist>, initiator: &str) {
    loop {
        if !rx.borrow_and_update().admits(initiator) {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "iqn.1993-08.org.debian:01:abc";
    const B: &str = "iqn.2026-11.io.cstor.test:node-b";

    #[test]
    fn any_admits_everyone_and_an_empty_list_nobody() {
        assert!(Allowlist::Any.admits(A));
        assert!(!Allowlist::Only(vec![]).admits(A));
    }

    #[test]
    fn listed_names_are_admitted_case_insensitively() {
        let list = Allowlist::Only(vec![A.to_uppercase()]);
        assert!(list.admits(A));
        assert!(!list.admits(B));
    }

    #[test]
    fn well_formed_names_of_each_format_pass() {
        for name in [
            A,
            "iqn.2016-09.com.openebs.cstor",
            "IQN.2016-09.COM.OPENEBS.CSTOR:VOL-1",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ] {
            assert_eq!(check_iscsi_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn malformed_names_are_refused() {
        for name in [
            "",
            "allowed",
            "iqn.",
            "iqn.2016-9.com.x",
            "iqn.2016-13.com.x",
            "iqn.2016-09",
            "iqn.2016-09.",
            "iqn.2016-09x.com",
            "iqn.2016-09.com..x",
            "iqn.2016-09.com.x:has space",
            "iqn.2016-09.com.x:ünicode",
            "eui.0200",
            "eui.02004567A425678G",
            "naa.1234",
        ] {
            assert!(check_iscsi_name(name).is_err(), "{name:?} passed");
        }
        let long = format!("iqn.2016-09.com.x:{}", "a".repeat(MAX_ISCSI_NAME_BYTES));
        assert!(matches!(
            check_iscsi_name(&long),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn from_names_checks_every_name_and_drops_duplicates() {
        let names = vec![A.to_owned(), A.to_uppercase(), B.to_owned()];
        assert_eq!(
            Allowlist::from_names(&names, false),
            Ok(Allowlist::Only(vec![A.to_owned(), B.to_owned()]))
        );
        assert_eq!(Allowlist::from_names(&names, true), Ok(Allowlist::Any));
        let bad = vec![A.to_owned(), "nope".to_owned()];
        assert!(Allowlist::from_names(&bad, false).is_err());
        assert_eq!(
            Allowlist::from_names(&[], false),
            Ok(Allowlist::Only(vec![]))
        );
    }

    #[test]
    fn setting_the_same_list_again_wakes_nobody() {
        let access = InitiatorAccess::new(Allowlist::Only(vec![A.into()]));
        let rx = access.subscribe();
        access.set(Allowlist::Only(vec![A.into()]));
        assert!(!rx.has_changed().unwrap_or(true));
        access.set(Allowlist::Any);
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(access.get(), Allowlist::Any);
    }

    #[tokio::test]
    async fn revoked_resolves_only_when_the_initiator_is_removed() {
        let access = InitiatorAccess::new(Allowlist::Only(vec![A.into(), B.into()]));
        let watcher = tokio::spawn(revoked(access.subscribe(), A));
        access.set(Allowlist::Only(vec![A.into()]));
        tokio::task::yield_now().await;
        assert!(!watcher.is_finished());
        access.set(Allowlist::Only(vec![B.into()]));
        watcher.await.unwrap();
        // Already not admitted: at once.
        revoked(access.subscribe(), A).await;
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The model: a name is admitted iff its lowercase form is among
        /// the lowercase forms listed.
        #[test]
        fn admits_matches_a_case_folded_set(
            listed in proptest::collection::vec("[a-cA-C]{1,3}", 0..5),
            probe in "[a-cA-C]{1,3}",
        ) {
            let model: std::collections::HashSet<String> =
                listed.iter().map(|n| n.to_ascii_lowercase()).collect();
            let list = Allowlist::Only(listed);
            prop_assert_eq!(list.admits(&probe), model.contains(&probe.to_ascii_lowercase()));
        }

        #[test]
        fn check_iscsi_name_never_panics(name in "\\PC{0,80}") {
            let _ = check_iscsi_name(&name);
        }
    }
}
