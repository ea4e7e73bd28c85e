//! Federation-wide standardisation.
//!
//! Each partner computes [`FeatureStats`] (count, per-feature sum and sum of
//! squares) over its training rows; the sums merge by addition, so the federation's
//! mean and standard deviation come out exactly as if all rows were in one place,
//! without any row leaving its partner. One-hot columns are standardised like the
//! others.
//!
//! Under a task's `[privacy]` table a partner does not release exact sums: it computes them over
//! its features clipped to the task's public bounds and scaled to [0, 1]
//! ([`Dataset::clipped_unit_stats`]), adds Gaussian noise
//! (`consortia_dp::noisy_statistics`) and maps the noisy figures back to the features'
//! units ([`FeatureStats::from_noisy_unit`], post-processing); under the partner unit it releases
//! statistics of the bounds alone ([`FeatureStats::from_bounds`]).

use ndarray::{Array1, Array2, ArrayView1};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;

/// A standard deviation below this is treated as a constant column: the column is
/// only centred (its standard deviation is taken as 1), so it maps to about 0
/// instead of being divided by almost nothing.
pub const MIN_STD: f64 = 1e-9;

/// Per-feature sufficient statistics for mean and variance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    /// Number of rows summed.
    pub count: u64,
    /// Per-feature sum of values.
    pub sum: Vec<f64>,
    /// Per-feature sum of squared values.
    pub sum_sq: Vec<f64>,
}

/// Why statistics or a standardizer could not be combined or used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StandardizeError {
    /// Two vectors that must have one entry per feature do not.
    #[error("dimension mismatch: {what} has {found} features, expected {expected}")]
    Dimension {
        /// What has the wrong length.
        what: &'static str,
        /// Its length.
        found: usize,
        /// The length it must have.
        expected: usize,
    },
    /// No rows were summed, so there is no mean.
    #[error("feature statistics cover no rows; at least one partner must contribute training rows")]
    NoRows,
    /// A mean, standard deviation or sum is not usable.
    #[error("{what}[{index}] is {value}, but it must be {expected}")]
    Value {
        /// Which vector.
        what: &'static str,
        /// Which feature.
        index: usize,
        /// The value found.
        value: f64,
        /// What it must be.
        expected: &'static str,
    },
}

impl FeatureStats {
    /// Statistics over no rows, for `feature_count` features.
    pub fn empty(feature_count: usize) -> Self {
        Self {
            count: 0,
            sum: vec![0.0; feature_count],
            sum_sq: vec![0.0; feature_count],
        }
    }

    /// Number of features.
    pub fn feature_count(&self) -> usize {
        self.sum.len()
    }

    /// Adds `other`'s rows to these statistics.
    pub fn merge(&mut self, other: &FeatureStats) -> Result<(), StandardizeError> {
        other.check_shape()?;
        self.check_shape()?;
        if other.sum.len() != self.sum.len() {
            return Err(StandardizeError::Dimension {
                what: "merged feature statistics",
                found: other.sum.len(),
                expected: self.sum.len(),
            });
        }
        self.count = self
            .count
            .checked_add(other.count)
            .ok_or(StandardizeError::Value {
                what: "count",
                index: 0,
                value: f64::INFINITY,
                expected: "below 2^64",
            })?;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *a += b;
        }
        Ok(())
    }

    /// Statistics over the `bounds` alone, data-independent: one pseudo-row whose mean is each
    /// range's midpoint and whose standard deviation is half its width. Releasing them reveals
    /// nothing about any row.
    pub fn from_bounds(bounds: &[(f64, f64)]) -> Self {
        let mid = |&(lo, hi): &(f64, f64)| (lo + hi) / 2.0;
        Self {
            count: 1,
            sum: bounds.iter().map(mid).collect(),
            sum_sq: bounds
                .iter()
                .map(|b| {
                    let half = (b.1 - b.0) / 2.0;
                    mid(b) * mid(b) + half * half
                })
                .collect(),
        }
    }

    /// Statistics in the features' own units from noisy figures `count` ≈ n, `sum[j]` ≈ Σu_j and
    /// `sum_sq[j]` ≈ Σu_j² over values scaled to u = (x − lo)/(hi − lo) by `bounds`
    /// ([`Dataset::clipped_unit_stats`] plus noise). Pure post-processing of the noisy release
    /// (Dwork & Roth 2014, Prop. 2.1): the count is rounded and clamped to ≥ 1, the mean of u to
    /// [0, 1], E[u²] to [mean², mean] (a variable in [0, 1] has E[u²] ≤ E[u], so the variance is
    /// ≥ 0 and at most its largest possible value), then mean_x = lo + w·mean_u and
    /// E[x²] = mean_x² + w²·Var(u) with w = hi − lo.
    pub fn from_noisy_unit(
        count: f64,
        sum: &[f64],
        sum_sq: &[f64],
        bounds: &[(f64, f64)],
    ) -> Result<Self, StandardizeError> {
        for (what, len) in [("noisy sum", sum.len()), ("noisy sum_sq", sum_sq.len())] {
            if len != bounds.len() {
                return Err(StandardizeError::Dimension {
                    what,
                    found: len,
                    expected: bounds.len(),
                });
            }
        }
        if !count.is_finite() {
            return Err(StandardizeError::Value {
                what: "noisy count",
                index: 0,
                value: count,
                expected: "finite",
            });
        }
        // `as` saturates; at least one row.
        let n = (count.round() as u64).max(1);
        let nf = n as f64;
        let mut out = Self::empty(bounds.len());
        for (j, (&(lo, hi), (&s, &sq))) in bounds.iter().zip(sum.iter().zip(sum_sq)).enumerate() {
            if !(s.is_finite() && sq.is_finite()) {
                return Err(StandardizeError::Value {
                    what: "noisy statistics",
                    index: j,
                    value: if s.is_finite() { sq } else { s },
                    expected: "finite",
                });
            }
            let w = hi - lo;
            let mean_u = (s / nf).clamp(0.0, 1.0);
            let second_u = (sq / nf).clamp(mean_u * mean_u, mean_u);
            let mean_x = lo + w * mean_u;
            let var_x = w * w * (second_u - mean_u * mean_u);
            out.sum[j] = nf * mean_x;
            out.sum_sq[j] = nf * (mean_x * mean_x + var_x);
        }
        out.count = n;
        Ok(out)
    }

    /// The same means and variances over `count` rows: every sum scaled by `count / self.count`
    /// (all zeros when `self.count` is 0). Under `[privacy]` a partner reports its training-row
    /// count, which every one of its updates publishes anyway, with the noisy means and
    /// variances ([`from_noisy_unit`](Self::from_noisy_unit)); rescaling is post-processing.
    pub fn rescaled_to(&self, count: u64) -> Self {
        let factor = if self.count == 0 {
            0.0
        } else {
            count as f64 / self.count as f64
        };
        Self {
            count,
            sum: self.sum.iter().map(|v| v * factor).collect(),
            sum_sq: self.sum_sq.iter().map(|v| v * factor).collect(),
        }
    }

    fn check_shape(&self) -> Result<(), StandardizeError> {
        if self.sum_sq.len() != self.sum.len() {
            return Err(StandardizeError::Dimension {
                what: "sum_sq",
                found: self.sum_sq.len(),
                expected: self.sum.len(),
            });
        }
        Ok(())
    }
}

impl Dataset {
    /// Count, per-feature sum and sum of squares of this dataset's features.
    pub fn feature_stats(&self) -> FeatureStats {
        let x = self.features();
        FeatureStats {
            count: x.nrows() as u64,
            sum: x.sum_axis(ndarray::Axis(0)).to_vec(),
            sum_sq: x.mapv(|v| v * v).sum_axis(ndarray::Axis(0)).to_vec(),
        }
    }
}

impl Dataset {
    /// Count, per-feature Σu and Σu² of this dataset's features clipped to `bounds` (one
    /// `(lo, hi)` per feature, lo < hi) and scaled to u = (x − lo)/(hi − lo) ∈ [0, 1]: adding or
    /// removing a row changes each figure by at most 1.
    pub fn clipped_unit_stats(
        &self,
        bounds: &[(f64, f64)],
    ) -> Result<FeatureStats, StandardizeError> {
        let x = self.features();
        if x.ncols() != bounds.len() {
            return Err(StandardizeError::Dimension {
                what: "bounds",
                found: bounds.len(),
                expected: x.ncols(),
            });
        }
        if let Some((index, &(lo, hi))) = bounds
            .iter()
            .enumerate()
            .find(|(_, (lo, hi))| !(lo.is_finite() && hi.is_finite() && lo < hi))
        {
            return Err(StandardizeError::Value {
                what: "bounds",
                index,
                value: if lo.is_finite() { hi } else { lo },
                expected: "finite with lo < hi",
            });
        }
        let mut stats = FeatureStats::empty(bounds.len());
        stats.count = x.nrows() as u64;
        for row in x.rows() {
            for (j, (&v, &(lo, hi))) in row.iter().zip(bounds).enumerate() {
                // NaN cannot occur in a Dataset; clamp maps ±∞ to the bounds.
                let u = ((v.clamp(lo, hi) - lo) / (hi - lo)).clamp(0.0, 1.0);
                stats.sum[j] += u;
                stats.sum_sq[j] += u * u;
            }
        }
        Ok(stats)
    }
}

/// Maps each feature `x` to `(x - mean) / std`. Deserialising checks the same
/// things as [`Standardizer::from_parts`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StandardizerParts")]
pub struct Standardizer {
    mean: Vec<f64>,
    std: Vec<f64>,
}

#[derive(Deserialize)]
struct StandardizerParts {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl TryFrom<StandardizerParts> for Standardizer {
    type Error = StandardizeError;

    fn try_from(parts: StandardizerParts) -> Result<Self, Self::Error> {
        Standardizer::from_parts(parts.mean, parts.std)
    }
}

impl Standardizer {
    /// Mean and (population) standard deviation from merged statistics. Columns with
    /// a standard deviation below [`MIN_STD`] get a standard deviation of 1.
    pub fn from_stats(stats: &FeatureStats) -> Result<Self, StandardizeError> {
        stats.check_shape()?;
        if stats.count == 0 {
            return Err(StandardizeError::NoRows);
        }
        let n = stats.count as f64;
        let mut mean = Vec::with_capacity(stats.sum.len());
        let mut std = Vec::with_capacity(stats.sum.len());
        for (j, (&s, &sq)) in stats.sum.iter().zip(&stats.sum_sq).enumerate() {
            let m = s / n;
            // E[x^2] - E[x]^2 can dip below 0 by rounding; clamp it.
            let var = (sq / n - m * m).max(0.0);
            let sd = var.sqrt();
            if !m.is_finite() || !sd.is_finite() {
                return Err(StandardizeError::Value {
                    what: "feature statistics",
                    index: j,
                    value: if m.is_finite() { sd } else { m },
                    expected: "finite",
                });
            }
            mean.push(m);
            std.push(if sd < MIN_STD { 1.0 } else { sd });
        }
        Ok(Self { mean, std })
    }

    /// A standardizer with a given mean and standard deviation per feature (as sent
    /// by the coordinator). Means must be finite and standard deviations finite and
    /// positive.
    pub fn from_parts(mean: Vec<f64>, std: Vec<f64>) -> Result<Self, StandardizeError> {
        if std.len() != mean.len() {
            return Err(StandardizeError::Dimension {
                what: "std",
                found: std.len(),
                expected: mean.len(),
            });
        }
        if let Some((index, &value)) = mean.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(StandardizeError::Value {
                what: "mean",
                index,
                value,
                expected: "finite",
            });
        }
        if let Some((index, &value)) = std
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v > 0.0))
        {
            return Err(StandardizeError::Value {
                what: "std",
                index,
                value,
                expected: "finite and greater than 0",
            });
        }
        Ok(Self { mean, std })
    }

    /// Per-feature means.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Per-feature standard deviations.
    pub fn std(&self) -> &[f64] {
        &self.std
    }

    /// Number of features.
    pub fn feature_count(&self) -> usize {
        self.mean.len()
    }

    /// The standardised design matrix of `data`.
    pub fn apply(&self, data: &Dataset) -> Result<Array2<f64>, StandardizeError> {
        self.apply_features(data.features())
    }

    /// Standardises a raw design matrix (one row per example).
    pub fn apply_features(&self, x: &Array2<f64>) -> Result<Array2<f64>, StandardizeError> {
        if x.ncols() != self.mean.len() {
            return Err(StandardizeError::Dimension {
                what: "design matrix",
                found: x.ncols(),
                expected: self.mean.len(),
            });
        }
        let mean = ArrayView1::from(&self.mean[..]);
        let inv_std: Array1<f64> = self.std.iter().map(|s| 1.0 / s).collect();
        Ok((x - &mean) * &inv_std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn dataset(x: Array2<f64>) -> Dataset {
        let n = x.nrows();
        Dataset::new(x, Array1::zeros(n)).unwrap()
    }

    #[test]
    fn merged_stats_equal_pooled_stats() {
        let a = dataset(array![[1.0, 10.0, 5.0], [2.0, 20.0, 5.0]]);
        let b = dataset(array![[3.0, 30.0, 5.0], [4.0, 50.0, 5.0], [5.0, 40.0, 5.0]]);
        let pooled = Dataset::concat(&[&a, &b]).unwrap();
        let mut merged = a.feature_stats();
        merged.merge(&b.feature_stats()).unwrap();
        assert_eq!(merged, pooled.feature_stats());

        let s = Standardizer::from_stats(&merged).unwrap();
        assert_eq!(s.mean(), [3.0, 30.0, 5.0]);
        assert!((s.std()[0] - 2f64.sqrt()).abs() < 1e-12);
        assert!((s.std()[1] - 200f64.sqrt()).abs() < 1e-12);
        // Constant column: centred only.
        assert_eq!(s.std()[2], 1.0);

        let z = s.apply(&pooled).unwrap();
        for j in 0..3 {
            let col = z.column(j);
            assert!(col.mean().unwrap().abs() < 1e-12);
        }
        assert!((z.column(0).mapv(|v| v * v).mean().unwrap() - 1.0).abs() < 1e-12);
        assert!(z.column(2).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn rejects_mismatched_dimensions_and_bad_parts() {
        let mut a = FeatureStats::empty(2);
        assert!(matches!(
            a.merge(&FeatureStats::empty(3)),
            Err(StandardizeError::Dimension { .. })
        ));
        assert_eq!(Standardizer::from_stats(&a), Err(StandardizeError::NoRows));
        assert!(Standardizer::from_parts(vec![0.0, 1.0], vec![1.0]).is_err());
        assert!(Standardizer::from_parts(vec![0.0], vec![0.0]).is_err());
        assert!(Standardizer::from_parts(vec![f64::NAN], vec![1.0]).is_err());
        let s = Standardizer::from_parts(vec![1.0, 2.0], vec![2.0, 4.0]).unwrap();
        assert_eq!(
            s.apply_features(&array![[3.0, 6.0]]).unwrap(),
            array![[1.0, 1.0]]
        );
        assert!(s.apply_features(&array![[1.0]]).is_err());
    }
    #[test]
    fn clipped_unit_stats_scale_and_clip_and_unscale_back() {
        let d = dataset(array![[-5.0, 0.0], [5.0, 1.0], [20.0, 1.0]]);
        let bounds = [(0.0, 10.0), (0.0, 1.0)];
        let u = d.clipped_unit_stats(&bounds).unwrap();
        // -5 clips to 0 (u 0), 5 is u 0.5, 20 clips to 10 (u 1).
        assert_eq!(u.count, 3);
        assert_eq!(u.sum, vec![1.5, 2.0]);
        assert_eq!(u.sum_sq, vec![1.25, 2.0]);
        assert!(d.clipped_unit_stats(&bounds[..1]).is_err());
        assert!(d.clipped_unit_stats(&[(1.0, 1.0), (0.0, 1.0)]).is_err());

        // Exact figures map back to the clipped data's statistics.
        let back = FeatureStats::from_noisy_unit(3.0, &u.sum, &u.sum_sq, &bounds).unwrap();
        let clipped = dataset(array![[0.0, 0.0], [5.0, 1.0], [10.0, 1.0]]).feature_stats();
        assert_eq!(back.count, 3);
        for j in 0..2 {
            assert!((back.sum[j] - clipped.sum[j]).abs() < 1e-9);
            assert!((back.sum_sq[j] - clipped.sum_sq[j]).abs() < 1e-9);
        }
        // Noisy figures out of range are clamped: n >= 1, mean in the bounds, variance >= 0.
        let wild =
            FeatureStats::from_noisy_unit(-7.0, &[-3.0, 9.0], &[-1.0, -1.0], &bounds).unwrap();
        assert_eq!(wild.count, 1);
        assert_eq!(wild.sum, vec![0.0, 1.0]);
        let s = Standardizer::from_stats(&wild).unwrap();
        assert_eq!(s.std(), [1.0, 1.0]); // zero variance: centred only (MIN_STD)
        assert!(
            FeatureStats::from_noisy_unit(f64::NAN, &[0.0, 0.0], &[0.0, 0.0], &bounds).is_err()
        );
        assert!(FeatureStats::from_noisy_unit(1.0, &[0.0], &[0.0, 0.0], &bounds).is_err());

        // Rescaling keeps means and standard deviations.
        let more = back.rescaled_to(300);
        assert_eq!(more.count, 300);
        let (a, b) = (
            Standardizer::from_stats(&back).unwrap(),
            Standardizer::from_stats(&more).unwrap(),
        );
        for j in 0..2 {
            assert!((a.mean()[j] - b.mean()[j]).abs() < 1e-12);
            assert!((a.std()[j] - b.std()[j]).abs() < 1e-12);
        }

        let public = Standardizer::from_stats(&FeatureStats::from_bounds(&bounds)).unwrap();
        assert_eq!(public.mean(), [5.0, 0.5]);
        assert!((public.std()[0] - 5.0).abs() < 1e-12 && (public.std()[1] - 0.5).abs() < 1e-12);
    }
}
