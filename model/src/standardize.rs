//! Federation-wide standardisation.
//!
//! Each partner computes [`FeatureStats`] (count, per-feature sum and sum of
//! squares) over its training rows; the sums merge by addition, so the federation's
//! mean and standard deviation come out exactly as if all rows were in one place,
//! without any row leaving its partner. One-hot columns are standardised like the
//! others.

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
}
