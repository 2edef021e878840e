//! A log-linear histogram of microsecond values, exact to merge across processes.
//!
//! Values below 128 µs have a bucket each; above, every doubling is split into 64 buckets,
//! so a reported percentile is at most 1.6 % above the true value. The maximum is exact.

use serde::{Deserialize, Serialize};

const EXACT: u64 = 128;
const SUB_BUCKETS: u64 = 64;
const SUB_BITS: u32 = 6;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Histogram {
    /// Sparse `(bucket, count)` pairs: compact on the worker pipe.
    buckets: Vec<(u32, u64)>,
    #[serde(skip)]
    dense: Vec<u64>,
    count: u64,
    max: u64,
}

fn bucket_of(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let shift = 63 - value.leading_zeros() - SUB_BITS; // >= 1
    let mantissa = value >> shift; // in [64, 128)
    (EXACT + (u64::from(shift) - 1) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)) as usize
}

/// The highest value that falls in `bucket`.
fn upper_bound(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < EXACT {
        return bucket;
    }
    let shift = (bucket - EXACT) / SUB_BUCKETS + 1;
    let mantissa = (bucket - EXACT) % SUB_BUCKETS + SUB_BUCKETS;
    ((mantissa + 1) << shift) - 1
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        let bucket = bucket_of(value);
        if self.dense.len() <= bucket {
            self.dense.resize(bucket + 1, 0);
        }
        self.dense[bucket] += 1;
        self.count += 1;
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Packs the counts into their sparse form before serialising.
    pub fn packed(&self) -> Histogram {
        let mut out = self.clone();
        out.buckets = self
            .dense
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(b, &n)| (b as u32, n))
            .collect();
        out.dense.clear();
        out
    }

    /// Adds a histogram received from a worker (sparse form).
    pub fn merge(&mut self, other: &Histogram) {
        for &(bucket, n) in &other.buckets {
            let bucket = bucket as usize;
            if self.dense.len() <= bucket {
                self.dense.resize(bucket + 1, 0);
            }
            self.dense[bucket] += n;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1), as the upper bound of its bucket (never above max).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, &n) in self.dense.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_bound(bucket).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut last = 0;
        for v in 0..2_000_000u64 {
            let b = bucket_of(v);
            assert!(b == last || b == last + 1, "{v}");
            last = b;
            assert!(upper_bound(b) >= v);
            assert!(upper_bound(b) as f64 <= v as f64 * 1.016 + 1.0, "{v}");
        }
    }

    #[test]
    fn quantiles_survive_packing_and_merging() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        (1..=500).for_each(|v| a.record(v));
        (501..=1000).for_each(|v| b.record(v));
        let mut all = Histogram::default();
        all.merge(&a.packed());
        all.merge(&b.packed());
        assert_eq!(all.count(), 1000);
        assert_eq!(all.max(), Some(1000));
        assert_eq!(all.quantile(0.1), Some(100));
        let p99 = all.quantile(0.99).unwrap();
        assert!((990..=1000).contains(&p99), "{p99}");
    }
}
