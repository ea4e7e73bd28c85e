//! Evaluation of regression models (customer lifetime value, spend) that merges
//! exactly across partners.
//!
//! A partner's [`RegressionPartial`] holds sums — of errors, squared errors, targets,
//! squared targets and deviance — and two histograms over [`VALUE_BINS`] bins of
//! `log10(1 + max(v, 0))` on `[0, LOG_VALUE_SPAN)`: one of the predictions (each bin
//! with the count and the sum of the actual values it holds) and one of the actual
//! values (count and sum). Partials add up; [`RegressionMetrics::from_partial`] turns
//! the total into RMSE, MAE, R², mean deviance, the normalised Gini coefficient and
//! the share of the actual value captured by the top 20 % of predicted customers.
//! The last two are computed from the histograms, so they are those of the pooled
//! rows with predictions (and, for the Gini's normaliser, actual values) quantised to
//! bins: rows sharing a bin count as tied.
//!
//! Under a task's `[privacy]` table (record unit) a partner releases instead a
//! *private* partial ([`RegressionPartial::private`]): the five sums of
//! [`private_regression_record`] over its held-out rows — count, squared and absolute
//! errors, targets and squared targets, each row's target and prediction clipped to the
//! task's public `evaluation_bounds` — with discrete Gaussian noise
//! (`consortia_dp::release::noisy_bounded_sums`), rebuilt by
//! [`RegressionPartial::from_private_sums`]. RMSE, MAE and R² follow from them; the
//! mean deviance, the normalised Gini and the top-20 % capture are not released (NaN):
//! a unit deviance has no bound the task declares (a log-link prediction near 0 makes it
//! arbitrarily large), and the order statistics would need two noised histograms more
//! (prediction bins with counts and value sums), which raise the noise on every released
//! sum from σ_e·√5 to σ_e·√9 of its bound and, clamped at 0 in empty bins, count phantom
//! rows as the classifier's coarse histograms do.

use serde::{Deserialize, Serialize};

use crate::metrics::MetricsError;

/// Bins of each value histogram.
pub const VALUE_BINS: usize = 1200;
/// Decades of `1 + value` the histograms span: values up to 10¹² − 1; larger ones
/// fall in the last bin.
pub const LOG_VALUE_SPAN: f64 = 12.0;

/// Additive regression evaluation counts for one partner, or for several merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionPartial {
    /// Rows evaluated.
    pub n: u64,
    /// Σ (y − ŷ)².
    pub sum_sq_error: f64,
    /// Σ |y − ŷ|.
    pub sum_abs_error: f64,
    /// Σ y.
    pub sum_y: f64,
    /// Σ y².
    pub sum_y_sq: f64,
    /// Σ of the model family's unit deviance d(y, ŷ).
    pub sum_deviance: f64,
    /// Rows per bin of the prediction.
    pub pred_count: Vec<u64>,
    /// Σ y of the rows per bin of the prediction.
    pub pred_actual: Vec<f64>,
    /// Rows per bin of the actual value.
    pub actual_count: Vec<u64>,
    /// Σ y of the rows per bin of the actual value.
    pub actual_sum: Vec<f64>,
    /// A differentially private release ([`RegressionPartial::from_private_sums`]): the
    /// sums are noised estimates over clipped rows, the histograms are empty and the
    /// deviance is not released. Private and exact partials do not merge.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// Sums per row of a private regression release ([`private_regression_record`]).
pub const PRIVATE_REGRESSION_SUMS: usize = 5;

/// One held-out row's contribution to a private regression release, each coordinate a
/// fraction in [0, 1] of its public bound: with `y` and `pred` clipped to `[lo, hi]`
/// (`bounds`, the task's `evaluation_bounds`), `w = hi − lo` and `m = max(|lo|, |hi|)`,
/// `[1, (y − ŷ)²/w², |y − ŷ|/w, (y − lo)/w, y²/m²]`. No row can move a sum by more than
/// its bound, whatever its values, so the release's sensitivity is fixed by the task
/// (`consortia_dp::BoundedSums`). A NaN prediction is clipped as if it were `lo`.
pub fn private_regression_record(
    y: f64,
    pred: f64,
    bounds: [f64; 2],
) -> [f64; PRIVATE_REGRESSION_SUMS] {
    let [lo, hi] = bounds;
    let clip = |v: f64| if v.is_nan() { lo } else { v.clamp(lo, hi) };
    let (y, pred) = (clip(y), clip(pred));
    let w = hi - lo;
    let m = lo.abs().max(hi.abs());
    let e = y - pred;
    [
        1.0,
        e * e / (w * w),
        e.abs() / w,
        (y - lo) / w,
        y * y / (m * m),
    ]
}

/// Regression metrics of a model on a set of rows; NaN where undefined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Rows evaluated.
    pub examples: u64,
    /// Root mean squared error.
    #[serde(with = "crate::metrics::nan_as_null")]
    pub rmse: f64,
    /// Mean absolute error.
    #[serde(with = "crate::metrics::nan_as_null")]
    pub mae: f64,
    /// Coefficient of determination, `1 − SSE / SST`.
    #[serde(with = "crate::metrics::nan_as_null")]
    pub r2: f64,
    /// Mean unit deviance of the model's family.
    #[serde(with = "crate::metrics::nan_as_null")]
    pub deviance: f64,
    /// Normalised Gini: the Gini coefficient of the actual values ordered by
    /// prediction over that of the actual values ordered by themselves (1 is a
    /// perfect ranking, 0 a random one).
    #[serde(with = "crate::metrics::nan_as_null")]
    pub gini: f64,
    /// Share of the total actual value held by the 20 % of rows predicted highest.
    #[serde(with = "crate::metrics::nan_as_null")]
    pub top20_capture: f64,
}

/// Bin of a value on the log scale.
pub fn value_bin(v: f64) -> usize {
    let x = (1.0 + v.max(0.0)).log10();
    if !x.is_finite() {
        return VALUE_BINS - 1;
    }
    ((x / LOG_VALUE_SPAN * VALUE_BINS as f64) as usize).min(VALUE_BINS - 1)
}

impl RegressionPartial {
    /// Counts over no rows.
    pub fn empty() -> Self {
        Self {
            n: 0,
            sum_sq_error: 0.0,
            sum_abs_error: 0.0,
            sum_y: 0.0,
            sum_y_sq: 0.0,
            sum_deviance: 0.0,
            pred_count: vec![0; VALUE_BINS],
            pred_actual: vec![0.0; VALUE_BINS],
            actual_count: vec![0; VALUE_BINS],
            actual_sum: vec![0.0; VALUE_BINS],
            private: false,
        }
    }

    /// The private partial rebuilt from the noised sums of [`private_regression_record`]
    /// (in units of the bounds, as `consortia_dp::release::noisy_bounded_sums` returns
    /// them) over rows clipped to `bounds`. Post-processing only: the count is rounded and
    /// clamped at 0, every sum is clamped to what that many clipped rows can hold (so the
    /// partial validates), and with no row left every sum is 0.
    pub fn from_private_sums(sums: &[f64], bounds: [f64; 2]) -> Result<Self, MetricsError> {
        let &[count, sq, abs, y, y_sq] = sums else {
            return Err(MetricsError::Inconsistent(format!(
                "a private regression release has {PRIVATE_REGRESSION_SUMS} sums, not {}",
                sums.len()
            )));
        };
        if sums.iter().any(|v| !v.is_finite()) {
            return Err(MetricsError::Inconsistent(
                "a private regression sum is not finite".into(),
            ));
        }
        let [lo, hi] = bounds;
        let w = hi - lo;
        let m = lo.abs().max(hi.abs());
        let n = count.round().max(0.0);
        let within = |v: f64| v.clamp(0.0, n);
        Ok(Self {
            n: n as u64,
            sum_sq_error: within(sq) * w * w,
            sum_abs_error: within(abs) * w,
            sum_y: lo * n + within(y) * w,
            sum_y_sq: within(y_sq) * m * m,
            sum_deviance: 0.0,
            pred_count: Vec::new(),
            pred_actual: Vec::new(),
            actual_count: Vec::new(),
            actual_sum: Vec::new(),
            private: true,
        })
    }

    /// Counts over rows given as `(actual y, prediction ŷ, unit deviance)`.
    pub fn from_rows(rows: impl IntoIterator<Item = (f64, f64, f64)>) -> Self {
        let mut p = Self::empty();
        for (y, pred, dev) in rows {
            let e = y - pred;
            p.n += 1;
            p.sum_sq_error += e * e;
            p.sum_abs_error += e.abs();
            p.sum_y += y;
            p.sum_y_sq += y * y;
            p.sum_deviance += dev;
            let b = value_bin(pred);
            p.pred_count[b] += 1;
            p.pred_actual[b] += y;
            let a = value_bin(y);
            p.actual_count[a] += 1;
            p.actual_sum[a] += y;
        }
        p
    }

    /// Checks shapes, counts and that every sum is finite (and the non-negative ones
    /// non-negative): call it on partials received from elsewhere.
    pub fn validate(&self) -> Result<(), MetricsError> {
        let bad = |m: String| Err(MetricsError::Inconsistent(m));
        // A private release carries no histograms and no deviance.
        let bins = if self.private { 0 } else { VALUE_BINS };
        for (name, len) in [
            ("pred_count", self.pred_count.len()),
            ("pred_actual", self.pred_actual.len()),
            ("actual_count", self.actual_count.len()),
            ("actual_sum", self.actual_sum.len()),
        ] {
            if len != bins {
                return bad(format!("{name} has {len} bins, not {bins}"));
            }
        }
        if self.private && self.sum_deviance != 0.0 {
            return bad("a private release carries no deviance".into());
        }
        let total = |h: &[u64]| h.iter().try_fold(0u64, |a, &b| a.checked_add(b));
        if !self.private
            && (total(&self.pred_count) != Some(self.n)
                || total(&self.actual_count) != Some(self.n))
        {
            return bad(format!("the histograms do not hold n = {} rows", self.n));
        }
        let sums = [
            ("sum_sq_error", self.sum_sq_error, true),
            ("sum_abs_error", self.sum_abs_error, true),
            ("sum_y", self.sum_y, false),
            ("sum_y_sq", self.sum_y_sq, true),
            ("sum_deviance", self.sum_deviance, true),
        ];
        for (name, v, non_negative) in sums {
            if !v.is_finite() || (non_negative && v < 0.0) {
                return bad(format!("{name} is {v}"));
            }
        }
        if self
            .pred_actual
            .iter()
            .chain(&self.actual_sum)
            .any(|v| !v.is_finite())
        {
            return bad("a histogram sum is not finite".into());
        }
        Ok(())
    }

    /// Adds `other`'s rows to this partial; both must be valid.
    pub fn merge(&mut self, other: &RegressionPartial) -> Result<(), MetricsError> {
        self.validate()?;
        other.validate()?;
        if self.private != other.private {
            return Err(MetricsError::Inconsistent(
                "cannot merge a private regression evaluation with an exact one".into(),
            ));
        }
        let n = self
            .n
            .checked_add(other.n)
            .ok_or_else(|| MetricsError::Inconsistent("merged counts overflow".into()))?;
        let add_counts = |a: &mut Vec<u64>, b: &[u64]| -> Result<(), MetricsError> {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x
                    .checked_add(*y)
                    .ok_or_else(|| MetricsError::Inconsistent("merged counts overflow".into()))?;
            }
            Ok(())
        };
        let mut merged = self.clone();
        merged.n = n;
        merged.sum_sq_error += other.sum_sq_error;
        merged.sum_abs_error += other.sum_abs_error;
        merged.sum_y += other.sum_y;
        merged.sum_y_sq += other.sum_y_sq;
        merged.sum_deviance += other.sum_deviance;
        add_counts(&mut merged.pred_count, &other.pred_count)?;
        add_counts(&mut merged.actual_count, &other.actual_count)?;
        merged
            .pred_actual
            .iter_mut()
            .zip(&other.pred_actual)
            .for_each(|(a, b)| *a += b);
        merged
            .actual_sum
            .iter_mut()
            .zip(&other.actual_sum)
            .for_each(|(a, b)| *a += b);
        merged.validate()?;
        *self = merged;
        Ok(())
    }

    /// Share of the total actual value held by the fraction `q` of rows predicted
    /// highest; a bin straddling the cut counts in proportion. `None` without rows or
    /// with a total actual value that is not positive.
    pub fn capture(&self, q: f64) -> Option<f64> {
        if self.private || self.n == 0 || self.sum_y <= 0.0 || !(q > 0.0 && q <= 1.0) {
            return None;
        }
        let want = q * self.n as f64;
        let (mut taken, mut value) = (0.0f64, 0.0f64);
        for (&c, &v) in self.pred_count.iter().zip(&self.pred_actual).rev() {
            if c == 0 {
                continue;
            }
            let share = ((want - taken) / c as f64).min(1.0);
            taken += share * c as f64;
            value += share * v;
            if taken >= want {
                break;
            }
        }
        Some(value / self.sum_y)
    }

    /// The normalised Gini coefficient (see [`RegressionMetrics::gini`]). With rows
    /// ordered from the highest ranked down, the Gini of an ordering is
    /// `Σ_i (L_i − i/n) / n`, `L_i` the share of total value among the first `i` rows
    /// — the area between its cumulative-gains curve and the diagonal; tied rows (one
    /// bin) are taken as spread evenly, which is the trapezoid over the bin. The
    /// normalised figure divides the prediction ordering's Gini by the actual
    /// ordering's (Frees, Meyers and Cummings 2011, "Summarizing Insurance Scores
    /// Using a Gini Index", JASA 106(495)). `None` when undefined.
    pub fn normalised_gini(&self) -> Option<f64> {
        if self.private || self.n == 0 || self.sum_y <= 0.0 {
            return None;
        }
        let gini = |counts: &[u64], sums: &[f64]| -> f64 {
            let n = self.n as f64;
            let (mut rows, mut value, mut area) = (0.0f64, 0.0f64, 0.0f64);
            for (&c, &v) in counts.iter().zip(sums).rev() {
                if c == 0 {
                    continue;
                }
                let c = c as f64;
                // Area under the gains curve over this bin (trapezoid), in row units.
                let before = value / self.sum_y;
                value += v;
                let after = value / self.sum_y;
                area += c * (before + after) / 2.0;
                rows += c;
            }
            debug_assert!((rows - n).abs() < 0.5);
            area / n - 0.5
        };
        let by_pred = gini(&self.pred_count, &self.pred_actual);
        let best = gini(&self.actual_count, &self.actual_sum);
        (best > 0.0).then(|| by_pred / best)
    }
}

impl RegressionMetrics {
    /// Metrics of the rows counted in `partial` (validate a partial from elsewhere
    /// first).
    pub fn from_partial(p: &RegressionPartial) -> Self {
        let n = p.n as f64;
        let per_row = |x: f64| if p.n == 0 { f64::NAN } else { x / n };
        let sst = p.sum_y_sq - p.sum_y * p.sum_y / n.max(1.0);
        Self {
            examples: p.n,
            rmse: per_row(p.sum_sq_error).sqrt(),
            mae: per_row(p.sum_abs_error),
            r2: if p.n > 0 && sst > 0.0 {
                1.0 - p.sum_sq_error / sst
            } else {
                f64::NAN
            },
            deviance: if p.private {
                f64::NAN
            } else {
                per_row(p.sum_deviance)
            },
            gini: p.normalised_gini().unwrap_or(f64::NAN),
            top20_capture: p.capture(0.2).unwrap_or(f64::NAN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(pairs: &[(f64, f64)]) -> RegressionPartial {
        RegressionPartial::from_rows(pairs.iter().map(|&(y, p)| (y, p, (y - p) * (y - p))))
    }

    #[test]
    fn sums_give_rmse_mae_and_r2() {
        let p = rows(&[(1.0, 2.0), (3.0, 3.0), (5.0, 4.0)]);
        let m = RegressionMetrics::from_partial(&p);
        assert!((m.rmse - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m.mae - 2.0 / 3.0).abs() < 1e-12);
        // SST = 8, SSE = 2.
        assert!((m.r2 - 0.75).abs() < 1e-12);
        assert!((m.deviance - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn gini_and_capture_of_perfect_random_and_reversed_rankings() {
        // Values spread over distinct bins: a perfect ranking has normalised Gini 1,
        // the reversed one −1.
        let values: Vec<f64> = (0..50).map(|i| (1.3f64).powi(i)).collect();
        let perfect: Vec<(f64, f64)> = values.iter().map(|&v| (v, v)).collect();
        let reversed: Vec<(f64, f64)> = values
            .iter()
            .zip(values.iter().rev())
            .map(|(&v, &p)| (v, p))
            .collect();
        let g = rows(&perfect).normalised_gini().unwrap();
        assert!((g - 1.0).abs() < 1e-12, "{g}");
        let g = rows(&reversed).normalised_gini().unwrap();
        assert!((g + 1.0).abs() < 1e-12, "{g}");
        // A constant prediction ties everything: Gini 0, and the top 20 % of rows
        // capture 20 % of the value.
        let flat: Vec<(f64, f64)> = values.iter().map(|&v| (v, 7.0)).collect();
        let p = rows(&flat);
        assert!(p.normalised_gini().unwrap().abs() < 1e-12);
        assert!((p.capture(0.2).unwrap() - 0.2).abs() < 1e-12);
        // Perfect ranking: the top 10 rows of 50 hold their own value.
        let top: f64 = values[40..].iter().sum::<f64>() / values.iter().sum::<f64>();
        assert!((rows(&perfect).capture(0.2).unwrap() - top).abs() < 1e-12);
    }

    /// A row's private contribution is that of its target and prediction clipped to the
    /// bounds: nothing about a value beyond them reaches the sums.
    #[test]
    fn a_private_record_sees_only_clipped_values() {
        let b = [0.0, 1000.0];
        assert_eq!(
            private_regression_record(5000.0, -3.0, b),
            private_regression_record(1000.0, 0.0, b)
        );
        assert_eq!(
            private_regression_record(1000.0, 0.0, b),
            [1.0, 1.0, 1.0, 1.0, 1.0]
        );
        assert_eq!(
            private_regression_record(250.0, f64::NAN, b),
            private_regression_record(250.0, 0.0, b)
        );
        let r = private_regression_record(-7.0, 3.0, [-10.0, 10.0]);
        assert_eq!(
            r,
            [1.0, 100.0 / 400.0, 10.0 / 20.0, 3.0 / 20.0, 49.0 / 100.0]
        );
        assert!(r.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    /// Without noise, the sums of clipped rows rebuild the exact RMSE, MAE and R² of rows
    /// inside the bounds (to the grid's rounding); deviance, Gini and capture are not
    /// released; impossible noised sums are clamped so that the partial validates.
    #[test]
    fn private_sums_rebuild_rmse_mae_and_r2() {
        let b = [0.0, 200.0];
        let pairs: Vec<(f64, f64)> = (0..300)
            .map(|i| ((i % 17) as f64 * 9.0, (i % 13) as f64 * 11.0 + 1.0))
            .collect();
        let exact = RegressionMetrics::from_partial(&rows(&pairs));
        let mut sums = consortia_dp::BoundedSums::new(PRIVATE_REGRESSION_SUMS);
        for &(y, p) in &pairs {
            sums.add(&private_regression_record(y, p, b)).unwrap();
        }
        let private = RegressionPartial::from_private_sums(&sums.exact(), b).unwrap();
        private.validate().unwrap();
        let m = RegressionMetrics::from_partial(&private);
        assert_eq!(m.examples, 300);
        assert!(
            (m.rmse - exact.rmse).abs() < 1e-3 * exact.rmse,
            "{m:?} {exact:?}"
        );
        assert!((m.mae - exact.mae).abs() < 1e-3 * exact.mae);
        assert!((m.r2 - exact.r2).abs() < 1e-3);
        assert!(m.deviance.is_nan() && m.gini.is_nan() && m.top20_capture.is_nan());
        // Noise can push sums outside what n clipped rows hold: clamped, still valid.
        let wild = RegressionPartial::from_private_sums(&[2.6, -4.0, 9.0, 5.0, -1.0], b).unwrap();
        wild.validate().unwrap();
        assert_eq!(wild.n, 3);
        assert_eq!(wild.sum_sq_error, 0.0);
        assert_eq!(wild.sum_abs_error, 3.0 * 200.0);
        assert_eq!(wild.sum_y, 3.0 * 200.0);
        let none = RegressionPartial::from_private_sums(&[-3.0, 1.0, 1.0, 1.0, 1.0], b).unwrap();
        assert_eq!((none.n, none.sum_sq_error, none.sum_y), (0, 0.0, 0.0));
        assert!(RegressionPartial::from_private_sums(&[1.0; 4], b).is_err());
        assert!(RegressionPartial::from_private_sums(&[1.0, f64::NAN, 0.0, 0.0, 0.0], b).is_err());
        // Private partials merge with each other, never with an exact one.
        let mut both = private.clone();
        both.merge(&private).unwrap();
        assert_eq!(both.n, 600);
        assert!(both.private);
        assert!(both.clone().merge(&rows(&pairs)).is_err());
        assert!(rows(&pairs).merge(&private).is_err());
        // A private partial carries no histograms and no deviance.
        let mut bad = private.clone();
        bad.sum_deviance = 1.0;
        assert!(bad.validate().is_err());
        let mut bad = private.clone();
        bad.pred_count = vec![0; VALUE_BINS];
        assert!(bad.validate().is_err());
        // The flag reads back, and exact partials serialise as before (no field).
        let json = serde_json::to_string(&private).unwrap();
        assert_eq!(
            serde_json::from_str::<RegressionPartial>(&json).unwrap(),
            private
        );
        assert!(
            !serde_json::to_string(&rows(&pairs))
                .unwrap()
                .contains("private")
        );
    }

    #[test]
    fn merged_partials_equal_the_pooled_partial_and_bad_ones_are_refused() {
        let all: Vec<(f64, f64)> = (0..40)
            .map(|i| (i as f64 * 3.5, (i * 7 % 40) as f64 * 3.0))
            .collect();
        let pooled = rows(&all);
        let mut merged = rows(&all[..15]);
        merged.merge(&rows(&all[15..])).unwrap();
        assert_eq!(merged.n, pooled.n);
        assert_eq!(merged.pred_count, pooled.pred_count);
        let (a, b) = (
            RegressionMetrics::from_partial(&merged),
            RegressionMetrics::from_partial(&pooled),
        );
        assert!((a.rmse - b.rmse).abs() < 1e-9 && (a.gini - b.gini).abs() < 1e-12);
        let mut bad = pooled.clone();
        bad.n += 1;
        assert!(bad.validate().is_err());
        let mut bad = pooled.clone();
        bad.sum_deviance = f64::NAN;
        assert!(merged.merge(&bad).is_err());
    }
}
