//! Sizes and placement, pure: the size a capacity range gives, whether an
//! existing volume satisfies a range, which pools get a new volume's
//! replicas and how large a volume the pools can take.
//!
//! Invariants:
//! - A size is a positive multiple of the granularity (the largest chunk
//!   of the pools, itself a multiple of the block size), at least
//!   `required_bytes` and at most `limit_bytes` when those are set; no
//!   such size is OUT_OF_RANGE (CSI spec §CreateVolume errors).
//! - Placement puts every replica in a different pool (a different replica
//!   daemon), reuses the pools that already hold the volume (a retried,
//!   half-done CreateVolume) and otherwise prefers the most free space.

use crate::limits::DEFAULT_VOLUME_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// A negative byte count: INVALID_ARGUMENT.
    #[error("capacity range with a negative byte count")]
    Negative,
    /// No size fits the range: OUT_OF_RANGE.
    #[error("no size that is a multiple of {granularity} bytes lies in [{required}, {limit}] (0: unbounded)")]
    OutOfRange {
        required: u64,
        limit: u64,
        granularity: u64,
    },
}

/// `required_bytes` and `limit_bytes` of a CSI CapacityRange; 0 is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    pub required: u64,
    pub limit: u64,
}

impl Range {
    /// From the wire's signed fields.
    pub fn new(required: i64, limit: i64) -> Result<Self, CapacityError> {
        Ok(Range {
            required: u64::try_from(required).map_err(|_| CapacityError::Negative)?,
            limit: u64::try_from(limit).map_err(|_| CapacityError::Negative)?,
        })
    }

    /// Whether a volume of `size` bytes satisfies the range.
    pub fn admits(&self, size: u64) -> bool {
        size >= self.required && (self.limit == 0 || size <= self.limit)
    }

    /// The size to create: `required` rounded up to `granularity`, the
    /// default size when nothing is required (cut down to the limit).
    pub fn size(&self, granularity: u64) -> Result<u64, CapacityError> {
        let out_of_range = || CapacityError::OutOfRange {
            required: self.required,
            limit: self.limit,
            granularity,
        };
        let granularity = granularity.max(1);
        let wanted = if self.required == 0 {
            DEFAULT_VOLUME_BYTES
        } else {
            self.required
        };
        let up = round_up(wanted, granularity).ok_or_else(out_of_range)?;
        let size = if self.limit != 0 && up > self.limit && self.required == 0 {
            round_down(self.limit, granularity)
        } else {
            up
        };
        if size == 0 || !self.admits(size) {
            return Err(out_of_range());
        }
        Ok(size)
    }
}

/// `n` rounded up to a multiple of `g` (> 0); `None` on overflow.
pub fn round_up(n: u64, g: u64) -> Option<u64> {
    n.checked_next_multiple_of(g)
}

/// `n` rounded down to a multiple of `g` (> 0).
pub fn round_down(n: u64, g: u64) -> u64 {
    n - n % g.max(1)
}

/// One pool as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index of the pool in the driver's configuration.
    pub pool: usize,
    pub free_bytes: u64,
    /// Already holds a replica of the volume being placed.
    pub holds: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{needed} replicas need {needed} pools with room; {available} have it")]
pub struct PlacementError {
    pub needed: usize,
    pub available: usize,
}

/// Chooses `count` distinct pools for a volume: those already holding it,
/// then the ones with the most free space (ties: configuration order).
/// `min_free_bytes` is what a thick volume reserves (0 for thin).
pub fn place(
    candidates: &[Candidate],
    count: usize,
    min_free_bytes: u64,
) -> Result<Vec<usize>, PlacementError> {
    let mut chosen: Vec<usize> = candidates
        .iter()
        .filter(|c| c.holds)
        .map(|c| c.pool)
        .collect();
    let mut rest: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !c.holds && c.free_bytes >= min_free_bytes)
        .collect();
    rest.sort_by(|a, b| b.free_bytes.cmp(&a.free_bytes).then(a.pool.cmp(&b.pool)));
    chosen.dedup();
    for c in rest {
        if chosen.len() >= count {
            break;
        }
        if !chosen.contains(&c.pool) {
            chosen.push(c.pool);
        }
    }
    if chosen.len() < count {
        return Err(PlacementError {
            needed: count,
            available: chosen.len(),
        });
    }
    chosen.truncate(count);
    Ok(chosen)
}

/// The largest volume of `replicas` replicas the pools can take: the
/// `replicas`-th largest free space, rounded down to the granularity (0
/// when there are fewer pools than replicas).
pub fn available(free_bytes: &[u64], replicas: usize, granularity: u64) -> u64 {
    if replicas == 0 {
        return 0;
    }
    let mut free = free_bytes.to_vec();
    free.sort_unstable_by(|a, b| b.cmp(a));
    free.get(replicas - 1)
        .map_or(0, |f| round_down(*f, granularity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: u64 = 64 << 10;

    #[test]
    fn required_is_rounded_up_to_the_granularity() {
        let r = Range {
            required: 1,
            limit: 0,
        };
        assert_eq!(r.size(G), Ok(G));
        let r = Range {
            required: 10 << 30,
            limit: 10 << 30,
        };
        assert_eq!(r.size(G), Ok(10 << 30));
    }

    #[test]
    fn nothing_required_gives_the_default_within_the_limit() {
        assert_eq!(Range::default().size(G), Ok(DEFAULT_VOLUME_BYTES));
        let r = Range {
            required: 0,
            limit: 3 * G + 5,
        };
        assert_eq!(r.size(G), Ok(3 * G));
    }

    #[test]
    fn a_range_without_a_granular_size_is_out_of_range() {
        let r = Range {
            required: G + 1,
            limit: G + 100,
        };
        assert!(matches!(r.size(G), Err(CapacityError::OutOfRange { .. })));
        let r = Range {
            required: 0,
            limit: G - 1,
        };
        assert!(r.size(G).is_err());
        let r = Range {
            required: 2 * G,
            limit: G,
        };
        assert!(r.size(G).is_err());
        assert!(Range {
            required: u64::MAX,
            limit: 0
        }
        .size(G)
        .is_err());
        assert_eq!(Range::new(-1, 0), Err(CapacityError::Negative));
    }

    #[test]
    fn placement_reuses_holders_then_takes_the_freest_pools() {
        let c = |pool, free_bytes, holds| Candidate {
            pool,
            free_bytes,
            holds,
        };
        let pools = [
            c(0, 10, false),
            c(1, 30, false),
            c(2, 20, true),
            c(3, 30, false),
        ];
        assert_eq!(place(&pools, 3, 0), Ok(vec![2, 1, 3]));
        assert_eq!(place(&pools, 1, 0), Ok(vec![2]));
        assert_eq!(place(&pools, 3, 25), Ok(vec![2, 1, 3]));
        assert_eq!(
            place(&pools, 4, 25),
            Err(PlacementError {
                needed: 4,
                available: 3
            })
        );
    }

    #[test]
    fn capacity_is_the_nth_largest_free_space() {
        assert_eq!(available(&[5 * G, 9 * G, 7 * G], 2, G), 7 * G);
        assert_eq!(available(&[5 * G + 1], 1, G), 5 * G);
        assert_eq!(available(&[5 * G], 2, G), 0);
        assert_eq!(available(&[5 * G], 0, G), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Model: the smallest multiple of g that is >= required (or the
        /// default) and within the limit, found by counting.
        #[test]
        fn size_matches_a_counting_model(required in 0u64..1000, limit in 0u64..1000, g in 1u64..64) {
            let r = Range { required, limit };
            let got = r.size(g).ok();
            let admits = |s: u64| s > 0 && s.is_multiple_of(g) && r.admits(s);
            if required == 0 {
                // The default is far above these limits: the largest fit.
                if limit == 0 {
                    prop_assert_eq!(got, Some(DEFAULT_VOLUME_BYTES.next_multiple_of(g)));
                } else {
                    let model = (1..=limit).rev().find(|s| admits(*s));
                    prop_assert_eq!(got, model);
                }
            } else {
                let model = (required..=required + g).find(|s| admits(*s));
                prop_assert_eq!(got, model);
            }
        }

        #[test]
        fn placement_is_distinct_and_respects_room(
            free in proptest::collection::vec(0u64..100, 0..8),
            holders in proptest::collection::vec(any::<bool>(), 8),
            count in 1usize..6,
            min_free in 0u64..100,
        ) {
            let candidates: Vec<Candidate> = free.iter().enumerate()
                .map(|(pool, f)| Candidate { pool, free_bytes: *f, holds: holders[pool] })
                .collect();
            match place(&candidates, count, min_free) {
                Ok(chosen) => {
                    prop_assert_eq!(chosen.len(), count);
                    let mut sorted = chosen.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    prop_assert_eq!(sorted.len(), count);
                    for p in &chosen {
                        let c = &candidates[*p];
                        prop_assert!(c.holds || c.free_bytes >= min_free);
                    }
                    let held = candidates.iter().filter(|c| c.holds).count();
                    prop_assert!(chosen.iter().take(held.min(count)).all(|p| candidates[*p].holds));
                }
                Err(e) => {
                    let eligible = candidates.iter().filter(|c| c.holds || c.free_bytes >= min_free).count();
                    prop_assert!(eligible < count);
                    prop_assert_eq!(e.available, eligible);
                }
            }
        }
    }
}
