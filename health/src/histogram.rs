//! A latency histogram in Prometheus' shape: fixed buckets ([`BOUNDS`], 0.5 ms to 10 s, then
//! +Inf), a sum and a count, all plain relaxed atomics, so recording costs a few adds and never
//! a lock. One type for every latency the daemon exports (queue wait, connect, check duration).
//!
//! A [`Snapshot`] is a plain copy for the status model: cumulative counts per bound (what a
//! Prometheus `_bucket{le=...}` sample says), the total count (`le="+Inf"`) and the sum. It is
//! taken bucket by bucket while other threads record, so the count is derived from the buckets
//! read: the buckets never exceed the count, whatever races.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds of the buckets, in seconds (`le`); the last bucket, +Inf, is implicit.
pub const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`BOUNDS`] in microseconds, for the comparisons.
const BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Recorded durations, by bucket.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative): index `i` counts durations in `(BOUNDS[i-1], BOUNDS[i]]`,
    /// the last one those above every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    /// Sum of the recorded durations, in microseconds.
    sum_us: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`], Prometheus' way (cumulative).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Durations at most [`BOUNDS`]`[i]`, for each `i` (cumulative, never decreasing).
    pub le: [u64; BOUNDS.len()],
    /// Every recorded duration (the `+Inf` bucket).
    pub count: u64,
    /// Their sum, in microseconds.
    pub sum_us: u64,
}

/// A duration in whole microseconds, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Histogram {
    /// Counts one duration `d`.
    pub fn record(&self, d: Duration) {
        let us = micros(d);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Adds what `s` counted (the histogram of a monitor this one replaces, say).
    pub fn add(&self, s: &Snapshot) {
        let mut below = 0;
        for (bucket, &cum) in self.buckets.iter().zip(s.le.iter().chain([&s.count])) {
            bucket.fetch_add(cum.saturating_sub(below), Ordering::Relaxed);
            below = below.max(cum);
        }
        self.sum_us.fetch_add(s.sum_us, Ordering::Relaxed);
    }

    /// A copy for rendering.
    pub fn snapshot(&self) -> Snapshot {
        let mut le = [0; BOUNDS.len()];
        let mut total = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            total = total.saturating_add(bucket.load(Ordering::Relaxed));
            if let Some(cum) = le.get_mut(i) {
                *cum = total;
            }
        }
        Snapshot {
            le,
            count: total,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

impl Snapshot {
    /// The sum in seconds, as Prometheus' `_sum` wants it.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1000.0)
    }

    #[test]
    fn a_duration_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let h = Histogram::default();
        h.record(Duration::ZERO); // le 0.0005
        h.record(ms(0.5)); // exactly on a bound: le 0.0005 (Prometheus' buckets are <=)
        h.record(ms(0.501)); // le 0.001
        h.record(ms(30.0)); // le 0.05
        h.record(Duration::from_secs(10)); // le 10
        h.record(Duration::from_secs(11)); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(
            s.le,
            [2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5],
            "cumulative counts per bound"
        );
        assert_eq!(s.sum_us, 500 + 501 + 30_000 + 10_000_000 + 11_000_000);
        assert!((s.sum_seconds() - 21.031001).abs() < 1e-9);
    }

    #[test]
    fn the_bounds_in_seconds_and_microseconds_agree() {
        for (s, us) in BOUNDS.iter().zip(BOUNDS_US) {
            assert_eq!((s * 1e6).round() as u64, us);
        }
        assert!(BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn an_empty_histogram_is_all_zero_and_huge_durations_saturate() {
        assert_eq!(Histogram::default().snapshot(), Snapshot::default());
        let h = Histogram::default();
        h.record(Duration::MAX);
        let s = h.snapshot();
        assert_eq!((s.count, s.le[BOUNDS.len() - 1]), (1, 0));
        assert_eq!(s.sum_us, u64::MAX);
    }

    #[test]
    fn adding_a_snapshot_counts_the_same_durations_again() {
        let (a, b) = (Histogram::default(), Histogram::default());
        for d in [
            ms(0.1),
            ms(3.0),
            ms(3.0),
            ms(700.0),
            Duration::from_secs(60),
        ] {
            a.record(d);
        }
        b.record(ms(3.0));
        b.add(&a.snapshot());
        let (sa, sb) = (a.snapshot(), b.snapshot());
        assert_eq!(sb.count, sa.count + 1);
        assert_eq!(sb.sum_us, sa.sum_us + 3_000);
        assert_eq!(sb.le[3], sa.le[3] + 1, "le 0.005 has the extra 3 ms");
        assert_eq!(sb.le[0], sa.le[0]);
    }
}
