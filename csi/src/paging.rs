//! Paging of ListVolumes and ListSnapshots (CSI spec §ListVolumes,
//! §ListSnapshots): pure.
//!
//! Entries are listed in ascending key order; a `next_token` names the last
//! key returned, and the next page starts after it. A key-based token stays
//! valid when entries are added or removed between pages (nothing is
//! listed twice; nothing that existed throughout is skipped). A token that
//! is not one of ours is ABORTED, as the spec asks.

use crate::limits::MAX_PAGE_ENTRIES;

const TOKEN_PREFIX: &str = "k1.";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// ABORTED in CSI.
    #[error("starting_token {0:?} was not issued by this plugin")]
    BadToken(String),
    /// INVALID_ARGUMENT in CSI.
    #[error("max_entries {0} is negative")]
    NegativeMax(i32),
}

/// The token that resumes after `key`.
pub fn token_after(key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

/// The key a token resumes after; `None` for the empty token (first page).
pub fn parse_token(token: &str) -> Result<Option<String>, PageError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || PageError::BadToken(token.to_owned());
    let hex = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u8>, _>>()?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// One page of `entries` (sorted by `key`, keys unique): those after the
/// token's key, at most `max_entries` (0: the driver's page bound), and the
/// token of the next page (empty on the last).
pub fn page<T>(
    entries: Vec<T>,
    key: impl Fn(&T) -> &str,
    starting_token: &str,
    max_entries: i32,
) -> Result<(Vec<T>, String), PageError> {
    let after = parse_token(starting_token)?;
    let max = match usize::try_from(max_entries) {
        Err(_) => return Err(PageError::NegativeMax(max_entries)),
        Ok(0) => MAX_PAGE_ENTRIES,
        Ok(n) => n.min(MAX_PAGE_ENTRIES),
    };
    let mut rest: Vec<T> = entries
        .into_iter()
        .filter(|e| after.as_deref().is_none_or(|a| key(e) > a))
        .collect();
    if rest.len() <= max {
        return Ok((rest, String::new()));
    }
    rest.truncate(max);
    let next = rest.last().map(|e| token_after(key(e))).unwrap_or_default();
    Ok((rest, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("vol-{i:03}")).collect()
    }

    #[test]
    fn pages_walk_every_entry_once() {
        let all = keys(5);
        let (p1, t1) = page(all.clone(), |s| s, "", 2).unwrap();
        assert_eq!(p1, ["vol-000", "vol-001"]);
        let (p2, t2) = page(all.clone(), |s| s, &t1, 0).unwrap();
        assert_eq!(p2, ["vol-002", "vol-003", "vol-004"]);
        assert!(t2.is_empty());
    }

    #[test]
    fn foreign_tokens_are_refused() {
        for bad in ["invalid-token", "k1.", "k1.zz", "k1.0", "k1.ff"] {
            assert!(
                matches!(page(keys(1), |s| s, bad, 0), Err(PageError::BadToken(_))),
                "{bad}"
            );
        }
        assert_eq!(
            page(keys(1), |s| s, "", -1).unwrap_err(),
            PageError::NegativeMax(-1)
        );
    }

    #[test]
    fn a_token_survives_deletion_of_its_entry() {
        let all = keys(4);
        let (_, token) = page(all.clone(), |s| s, "", 2).unwrap();
        let fewer: Vec<String> = all.into_iter().filter(|k| k != "vol-001").collect();
        let (p2, _) = page(fewer, |s| s, &token, 0).unwrap();
        assert_eq!(p2, ["vol-002", "vol-003"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn paging_concatenates_to_the_whole_list(n in 0usize..40, max in 1i32..10) {
            let all = keys(n);
            let mut seen = Vec::new();
            let mut token = String::new();
            loop {
                let (p, next) = page(all.clone(), |s| s, &token, max).unwrap();
                prop_assert!(p.len() <= usize::try_from(max).unwrap());
                seen.extend(p);
                if next.is_empty() { break; }
                token = next;
            }
            prop_assert_eq!(seen, all);
        }

        #[test]
        fn tokens_round_trip(key in "\\PC{0,40}") {
            prop_assume!(!key.is_empty());
            prop_assert_eq!(parse_token(&token_after(&key)), Ok(Some(key)));
        }
    }
}
