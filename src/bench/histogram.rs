//! Latency histogram in the manner of HdrHistogram: log-linear buckets,
//! so every recorded value lands in a bucket whose width is at most 1/64 of
//! the value (a relative error under 1.6 %), whatever its magnitude, in a
//! fixed amount of memory (30 KiB).
//!
//! Layout: values below [`SUB_BUCKETS`] have one bucket each (exact); above,
//! each power of two `[2^k, 2^(k+1))` is cut into [`SUB_BUCKETS`]/2 equal
//! buckets. Values are nanoseconds here; the largest, 2^64 - 1, still has a
//! bucket, so recording never fails and never allocates.
//!
//! Percentiles are answered with the *upper* edge of the bucket holding the
//! rank (never below the true value, as HdrHistogram's
//! `value_at_quantile`); `max` and `min` are kept exactly.

/// Buckets per power of two below which values are exact; a power of two.
const SUB_BUCKETS: u64 = 128;
/// log2(SUB_BUCKETS).
const SUB_BUCKET_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Half of the sub-buckets: the buckets of each power of two past the first.
const HALF: u64 = SUB_BUCKETS / 2;
/// Number of buckets: the exact range, then HALF per power of two from
/// 2^SUB_BUCKET_BITS to 2^63.
const BUCKETS: usize = (SUB_BUCKETS + (64 - SUB_BUCKET_BITS as u64) * HALF) as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("min", &self.min())
            .field("max", &self.max)
            .finish()
    }
}

/// The bucket of `value`.
fn index(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    // value >= 2^SUB_BUCKET_BITS: its power of two and its position within.
    let power = 63 - value.leading_zeros(); // >= SUB_BUCKET_BITS
    let shift = power + 1 - SUB_BUCKET_BITS; // bucket width is 2^shift
    let within = (value >> shift) - HALF; // 0..HALF
    (SUB_BUCKETS + u64::from(power - SUB_BUCKET_BITS) * HALF + within) as usize
}

/// The largest value that falls into bucket `i` (its upper edge).
fn upper_edge(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB_BUCKETS {
        return i;
    }
    let power = (i - SUB_BUCKETS) / HALF + u64::from(SUB_BUCKET_BITS);
    let within = (i - SUB_BUCKETS) % HALF;
    let shift = power + 1 - u64::from(SUB_BUCKET_BITS);
    let low = (HALF + within) << shift;
    low.saturating_add((1u64 << shift) - 1)
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        if let Some(c) = self.counts.get_mut(index(value)) {
            *c += 1;
        }
        self.count += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest value recorded, 0 when empty.
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the recorded values, 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at `quantile` (0.0..=1.0): the smallest bucket edge with at
    /// least that share of the values at or below it, capped by the exact
    /// maximum. 0 when empty.
    pub fn quantile(&self, quantile: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = quantile.clamp(0.0, 1.0);
        // Rank of the value wanted, 1-based: ceil(q * count), at least 1.
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_edge(i).min(self.max).max(self.min());
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100);
        assert_eq!(h.mean(), 50.5);
    }

    #[test]
    fn every_value_lands_in_a_bucket_within_one_percent_of_it() {
        let mut v = 1u64;
        while v < u64::MAX / 3 {
            for x in [v, v + 1, v * 3 / 2, v * 2 - 1] {
                let i = index(x);
                assert!(i < BUCKETS, "{x} -> {i}");
                let edge = upper_edge(i);
                assert!(edge >= x, "{x}: edge {edge}");
                assert!(
                    (edge - x) as f64 <= x as f64 / (HALF as f64) + 1.0,
                    "{x}: edge {edge}"
                );
                if i > 0 {
                    assert!(upper_edge(i - 1) < x, "{x}: previous edge");
                }
            }
            v = v * 2 + 1;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(upper_edge(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn percentiles_of_a_wide_spread_are_close_and_never_below() {
        let mut h = Histogram::default();
        // 1 µs .. 10 ms in ns, uniform: the p-th percentile is p% of the way.
        let n = 10_000u64;
        for i in 1..=n {
            h.record(i * 1_000);
        }
        for (q, want) in [(0.5, 5_000_000u64), (0.9, 9_000_000), (0.99, 9_900_000)] {
            let got = h.quantile(q);
            assert!(got >= want, "q{q}: {got} < {want}");
            assert!((got - want) as f64 <= want as f64 * 0.02, "q{q}: {got}");
        }
        assert_eq!(h.quantile(1.0), 10_000_000);
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        b.record(5);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.min(), 5);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(a.quantile(1.0), 1_000_000);
    }

    #[test]
    fn empty_histogram_answers_zero() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.99), 0);
        assert_eq!(h.min(), 0);
        assert_eq!(h.mean(), 0.0);
    }
}
