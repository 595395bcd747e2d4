//! Order statistics for `husk bench`: min, max and percentiles by the **nearest-rank**
//! method. For `n` samples sorted ascending, the p-th percentile (0 < p <= 100) is the
//! sample at 1-based rank `ceil(p / 100 * n)`: always one of the measured values, never an
//! interpolation, so p50 of `[1, 2, 3, 4]` is 2 and p99 of fewer than 100 samples is the
//! maximum. p = 0 is taken as the minimum.

use serde::{Deserialize, Serialize};

/// The summary of one figure's samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest sample.
    pub min: f64,
    /// 50th percentile (nearest rank).
    pub p50: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The nearest-rank `p`-th percentile of `sorted` (ascending, finite); `None` when it is
/// empty or `p` is outside 0..=100.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let n = sorted.len();
    // The epsilon keeps float error from pushing an exact rank (0.9 * 100) one up.
    let rank = ((p / 100.0) * n as f64 - 1e-9).ceil() as usize;
    let idx = rank.clamp(1, n) - 1;
    sorted.get(idx).copied()
}

impl Summary {
    /// Summarize `samples` (any order); `None` when there are none or one is not finite.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let (&min, &max) = (v.first()?, v.last()?);
        Some(Self {
            n: v.len(),
            min,
            p50: percentile(&v, 50.0)?,
            p90: percentile(&v, 90.0)?,
            p99: percentile(&v, 99.0)?,
            max,
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_measured_values() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.0));
        assert_eq!(percentile(&v, 75.0), Some(3.0));
        assert_eq!(percentile(&v, 76.0), Some(4.0));
        assert_eq!(percentile(&v, 99.0), Some(4.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 25.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&v, 101.0), None);
        assert_eq!(percentile(&v, -1.0), None);
    }

    #[test]
    fn hundred_samples_give_the_textbook_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 90.0), Some(90.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(990.0));
    }

    #[test]
    fn summary_sorts_and_orders_its_figures() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(
            (s.n, s.min, s.p50, s.p90, s.p99, s.max, s.mean),
            (5, 1.0, 3.0, 5.0, 5.0, 5.0, 3.0)
        );
        let one = Summary::of(&[7.5]).unwrap();
        assert_eq!((one.min, one.p50, one.p99, one.max), (7.5, 7.5, 7.5, 7.5));
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
        assert!(Summary::of(&[1.0, f64::INFINITY]).is_none());
    }
}
