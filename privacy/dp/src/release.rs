//! Differentially private evaluation and feature-statistics releases.
//!
//! Under a task's `[privacy]` table, a classifier's evaluation of a global model leaves the
//! partner only as two coarse histograms of the predicted score — positives and negatives over
//! [`DP_SCORE_BINS`] equal-width bins of [0, 1] — with independent discrete Gaussian noise on
//! each of the `2·DP_SCORE_BINS` counts, clamped at 0 afterwards. Every metric the coordinator
//! shows (example count, confusion counts at 0.5, accuracy, precision, recall, F1, ROC-AUC,
//! log-loss from bin centres) is computed from the noised histograms, which is post-processing
//! and costs nothing more (Dwork & Roth 2014, "The Algorithmic Foundations of Differential
//! Privacy", Prop. 2.1).
//!
//! # Privacy map
//!
//! Adding or removing one held-out record changes one bin of one histogram by 1, so the
//! histogram pair has L2 sensitivity Δ = 1 under add/remove adjacency. Adding discrete Gaussian
//! noise N_Z(0, σ²) to each count of an integer query of L2 sensitivity Δ is Δ²/(2σ²)-zCDP
//! (Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for Differential Privacy", Thm 14), so
//! one evaluation is ρ = 1/(2σ²)-zCDP ([`evaluation_event`]). Clamping at 0 is post-processing.
//! Held-out rows are rows of the partner's dataset, so the evaluation is charged to the same
//! budget as training.
//!
//! A regression or recommendation evaluation leaves instead as a few sums over records —
//! held-out rows, or users with all their ratings — each record's term clipped to a public
//! bound the task declares ([`BoundedSums`]; `evaluation_bounds` for a regression target and
//! prediction, the rating scale for a recommender), with discrete Gaussian noise of scale
//! σ·Δ on every sum, Δ = `BOUNDED_SUM_GRID`·√d their L2 sensitivity ([`noisy_bounded_sums`],
//! feature `mechanisms`). By the same theorem that release is Δ²/(2σ²Δ²) = 1/(2σ²)-zCDP: one
//! evaluation of any kind costs the same [`evaluation_event`], is charged the same way and
//! planned the same way ([`PrivacySpec::evaluation_events`], [`planned_evaluations`]).
//!
//! These bounds hold for the record unit only. Under `unit = "partner"` (adjacency: a
//! partner's whole dataset) one partner's histograms have sensitivity equal to its number of
//! held-out rows, which is private and unbounded, so no noise scale independent of the data
//! protects them: under the partner unit no evaluation is released at all
//! ([`PrivacySpec::evaluates`] is always false).

#[cfg(feature = "mechanisms")]
use dashu::integer::IBig;
#[cfg(feature = "mechanisms")]
use dashu::rational::RBig;
#[cfg(feature = "mechanisms")]
use opendp::traits::samplers::sample_discrete_gaussian;

use super::accountant::DpEvent;
use super::config::PrivacySpec;
use super::error::DpError;
use super::mechanism::PrivacyUnit;
#[cfg(feature = "mechanisms")]
use super::mechanism::{NOISE_GRID_K, add_gaussian_noise};

/// Bins per score histogram of a differentially private evaluation. Even, so that the
/// threshold 0.5 is the edge between bins 9 and 10.
pub const DP_SCORE_BINS: usize = 20;

/// The ledger's `mechanism` name of an evaluation release.
pub const EVALUATION_MECHANISM: &str = "evaluation-discrete-gaussian";

/// Smallest `evaluation_noise` a task may set: with σ < 1 the noise no longer hides a change of
/// one count well (ρ = 1/(2σ²) > 0.5 per evaluation).
pub const MIN_EVALUATION_NOISE: f64 = 1.0;

/// The `evaluation_noise` of a task that does not set one.
pub const DEFAULT_EVALUATION_NOISE: f64 = 10.0;

/// Checks `[lo, hi]` as a regression evaluation's public target bounds: finite, `lo < hi`.
pub fn check_evaluation_bounds([lo, hi]: [f64; 2]) -> Result<(), DpError> {
    if lo.is_finite() && hi.is_finite() && lo < hi {
        Ok(())
    } else {
        Err(DpError::InvalidParameter {
            name: "evaluation_bounds",
            value: format!("[{lo}, {hi}]"),
            hint: "set `evaluation_bounds = [lo, hi]` (public bounds of the target and the \
                   prediction, in the label's units) with finite lo < hi, e.g. [0, 1000]",
        })
    }
}

/// Checks `sigma` as an evaluation noise scale: finite and at least [`MIN_EVALUATION_NOISE`].
pub fn check_evaluation_noise(sigma: f64) -> Result<(), DpError> {
    if sigma.is_finite() && sigma >= MIN_EVALUATION_NOISE {
        Ok(())
    } else {
        Err(DpError::InvalidParameter {
            name: "evaluation_noise",
            value: sigma.to_string(),
            hint: "set `evaluation_noise` (the standard deviation of the discrete Gaussian noise on \
                   each evaluation count) to a finite number >= 1, e.g. 10",
        })
    }
}

/// The histograms `pos` and `neg` (of the same length) with independent discrete Gaussian noise
/// N_Z(0, `sigma`²) added to every count, each result clamped at 0 (post-processing). Noise is
/// drawn with OpenDP's exact sampler (CKS20 Alg. 3), as the distributed rounds do.
///
/// Releasing the result is `1/(2·sigma²)`-zCDP under add/remove of one record
/// ([`evaluation_event`]; CKS20 Thm 14 with Δ = 1).
#[cfg(feature = "mechanisms")]
pub fn noisy_histograms(
    pos: &[u64],
    neg: &[u64],
    sigma: f64,
) -> Result<(Vec<u64>, Vec<u64>), DpError> {
    check_evaluation_noise(sigma)?;
    if pos.len() != neg.len() {
        return Err(DpError::LengthMismatch {
            expected: pos.len(),
            got: neg.len(),
        });
    }
    let scale = RBig::try_from(sigma).map_err(|_| DpError::InvalidParameter {
        name: "evaluation_noise",
        value: sigma.to_string(),
        hint: "the noise scale must be a finite number",
    })?;
    let noised = |counts: &[u64]| -> Result<Vec<u64>, DpError> {
        counts
            .iter()
            .map(|&c| {
                let noise: IBig = sample_discrete_gaussian(scale.clone())?;
                let noise = i64::try_from(noise.clone()).map_err(|_| DpError::Overflow {
                    value: noise.to_string(),
                    bits: 64,
                })?;
                let y = i128::from(c) + i128::from(noise);
                u64::try_from(y.max(0)).map_err(|_| DpError::Overflow {
                    value: y.to_string(),
                    bits: 64,
                })
            })
            .collect()
    };
    Ok((noised(pos)?, noised(neg)?))
}

/// The privacy cost of one evaluation release with noise scale `sigma`:
/// `Zcdp { rho: 1/(2·sigma²) }` (CKS20 Thm 14, Δ = 1 under add/remove of one record).
pub fn evaluation_event(sigma: f64) -> DpEvent {
    DpEvent::Zcdp {
        rho: 1.0 / (2.0 * sigma * sigma),
    }
}

/// How many evaluations a task of `rounds` rounds releases under `[privacy]`: the final model's,
/// plus every `evaluate_every`-th round's model (rounds `N, 2N, …` up to `rounds`) when
/// `evaluate_every > 0`. The model of the last round is evaluated once (as the final model)
/// even when `rounds` is a multiple of `evaluate_every`.
pub fn planned_evaluations(rounds: u64, evaluate_every: u32) -> u64 {
    if evaluate_every == 0 {
        return 1;
    }
    let every = u64::from(evaluate_every);
    // Model `rounds` is the final model: counted once.
    let periodic = rounds / every - u64::from(rounds > 0 && rounds.is_multiple_of(every));
    1 + periodic
}

/// Fixed-point steps per public bound in a bounded-sum release ([`BoundedSums`]): each record's
/// contribution to each coordinate, a fraction in [0, 1] of that coordinate's public bound, is
/// rounded to a multiple of `1 / BOUNDED_SUM_GRID` before it is added, so every sum is an
/// integer and the discrete Gaussian applies. The rounding error is at most 2⁻¹⁷ of the bound
/// per record.
pub const BOUNDED_SUM_GRID: i64 = 1 << 16;

/// Exact sums over records of bounded contributions, the input of a private release of
/// regression and recommendation evaluations (`noisy_bounded_sums`, feature `mechanisms`).
///
/// Every record adds one value per coordinate, each a fraction of a public bound the caller
/// divides by: [`add`](Self::add) clamps it to [0, 1] (so a record never contributes more than
/// its bound, whatever the data) and rounds it to the grid [`BOUNDED_SUM_GRID`]. Adding or
/// removing one record therefore changes each of the `d` sums by at most `BOUNDED_SUM_GRID`
/// grid units, and the vector by at most Δ = `BOUNDED_SUM_GRID`·√d in L2 norm
/// ([`sensitivity`](Self::sensitivity)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundedSums {
    sums: Vec<i64>,
    records: u64,
}

impl BoundedSums {
    /// Sums of `coordinates` values per record, over no record yet.
    pub fn new(coordinates: usize) -> Self {
        Self {
            sums: vec![0; coordinates],
            records: 0,
        }
    }

    /// Adds one record's contribution: `record[j]` is its value of coordinate `j` divided by
    /// that coordinate's public bound. Values outside [0, 1] are clamped into it; a NaN or
    /// infinite value, or a record of another length, is refused (nothing is added).
    pub fn add(&mut self, record: &[f64]) -> Result<(), DpError> {
        if record.len() != self.sums.len() {
            return Err(DpError::LengthMismatch {
                expected: self.sums.len(),
                got: record.len(),
            });
        }
        if let Some((index, &value)) = record.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(DpError::NonFinite { index, value });
        }
        for (sum, &v) in self.sums.iter_mut().zip(record) {
            // In [0, GRID] after the clamp; the sum of up to 2^47 records fits i64.
            let units = (v.clamp(0.0, 1.0) * BOUNDED_SUM_GRID as f64).round() as i64;
            *sum = sum.checked_add(units).ok_or(DpError::Overflow {
                value: format!("{sum} + {units}"),
                bits: 64,
            })?;
        }
        self.records += 1;
        Ok(())
    }

    /// Coordinates per record.
    pub fn coordinates(&self) -> usize {
        self.sums.len()
    }

    /// Records added.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// L2 sensitivity of the sums under add/remove of one record, in grid units:
    /// `BOUNDED_SUM_GRID · √d`.
    pub fn sensitivity(&self) -> f64 {
        BOUNDED_SUM_GRID as f64 * (self.sums.len() as f64).sqrt()
    }

    /// The exact sums, in units of the bounds (no noise: never to be released under
    /// `[privacy]`).
    pub fn exact(&self) -> Vec<f64> {
        self.sums
            .iter()
            .map(|&s| s as f64 / BOUNDED_SUM_GRID as f64)
            .collect()
    }
}

/// The sums of `sums` with independent discrete Gaussian noise N_Z(0, (σ·Δ)²) on each, Δ the
/// L2 sensitivity [`BoundedSums::sensitivity`] (rounded up to the next binary64), returned in
/// units of the bounds and not clamped (clamping, rounding and rebuilding figures from them
/// is post-processing; Dwork & Roth 2014, Prop. 2.1). Noise is drawn with OpenDP's exact
/// sampler (CKS20 Alg. 3).
///
/// # Privacy map
///
/// An integer vector query of L2 sensitivity Δ with N_Z(0, s²) added to each coordinate is
/// Δ²/(2s²)-zCDP (Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for Differential
/// Privacy", Thm 14). With s ≥ σ·Δ the release is 1/(2σ²)-zCDP under add/remove of one record,
/// whatever the number of coordinates: the same cost as a classifier's histogram release at the
/// same `evaluation_noise` σ ([`evaluation_event`]).
#[cfg(feature = "mechanisms")]
pub fn noisy_bounded_sums(sums: &BoundedSums, sigma: f64) -> Result<Vec<f64>, DpError> {
    check_evaluation_noise(sigma)?;
    let scale = (sigma * sums.sensitivity()).next_up();
    let scale = RBig::try_from(scale).map_err(|_| DpError::InvalidParameter {
        name: "evaluation_noise",
        value: sigma.to_string(),
        hint: "the noise scale must be a finite number",
    })?;
    sums.sums
        .iter()
        .map(|&s| {
            let noise: IBig = sample_discrete_gaussian(scale.clone())?;
            let noise = i64::try_from(noise.clone()).map_err(|_| DpError::Overflow {
                value: noise.to_string(),
                bits: 64,
            })?;
            let y = i128::from(s) + i128::from(noise);
            Ok(y as f64 / BOUNDED_SUM_GRID as f64)
        })
        .collect()
}

/// The ledger's `mechanism` name of a release of feature statistics.
pub const STATISTICS_MECHANISM: &str = "statistics-gaussian";

/// The `statistics_noise_multiplier` of a task that does not set one.
pub const DEFAULT_STATISTICS_NOISE_MULTIPLIER: f64 = 10.0;

/// Smallest `statistics_noise_multiplier` a task may set (RDP α/2 per release at z_s = 1).
pub const MIN_STATISTICS_NOISE_MULTIPLIER: f64 = 1.0;

/// Checks `z` as a statistics noise multiplier: finite and at least
/// [`MIN_STATISTICS_NOISE_MULTIPLIER`].
pub fn check_statistics_noise(z: f64) -> Result<(), DpError> {
    if z.is_finite() && z >= MIN_STATISTICS_NOISE_MULTIPLIER {
        Ok(())
    } else {
        Err(DpError::InvalidParameter {
            name: "statistics_noise_multiplier",
            value: z.to_string(),
            hint: "set `statistics_noise_multiplier` (noise std / sensitivity of the released \
                   feature statistics) to a finite number >= 1, e.g. 10",
        })
    }
}

/// L2 sensitivity of the statistics vector `(n, Σu_1, …, Σu_d, Σu_1², …, Σu_d²)` of rows whose
/// `d` features each lie in [0, 1], under add/remove of one row: the count changes by 1 and every
/// other coordinate by at most 1, so Δ = √(1 + 2d).
pub fn statistics_sensitivity(features: usize) -> f64 {
    (1.0 + 2.0 * features as f64).sqrt()
}

/// The privacy cost of one release by `noisy_statistics` (feature `mechanisms`) with noise
/// multiplier `z`: `Gaussian { noise_multiplier: z }`, RDP α/(2z²) (Mironov 2017, "Rényi
/// Differential Privacy", Prop. 7), i.e. 1/(2z²)-zCDP.
pub fn statistics_event(z: f64) -> DpEvent {
    DpEvent::Gaussian {
        noise_multiplier: z,
    }
}

/// Feature statistics after noise, in the scaled coordinates u ∈ [0, 1] (not clamped: see
/// `noisy_statistics`, feature `mechanisms`).
#[derive(Debug, Clone, PartialEq)]
pub struct NoisyStatistics {
    /// n plus noise.
    pub count: f64,
    /// Σu_j plus noise, per feature.
    pub sum: Vec<f64>,
    /// Σu_j² plus noise, per feature.
    pub sum_sq: Vec<f64>,
}

/// Releases a partner's feature statistics with Gaussian noise: `count` = n, `sum[j]` = Σu_j and
/// `sum_sq[j]` = Σu_j² over rows whose features were clipped to public bounds and scaled to
/// u ∈ [0, 1] (the caller does that). Each of the 1 + 2d coordinates gets independent noise from
/// OpenDP's Gaussian on the grid 2^[`NOISE_GRID_K`] ([`add_gaussian_noise`]), of standard
/// deviation z·(Δ + √(1+2d)·2^(k−1)) with Δ = [`statistics_sensitivity`]`(d)`: the grid term
/// covers the rounding of OpenDP's privacy map (CKS20 Thm 4 as implemented by OpenDP), so the
/// release is exactly within `Gaussian { z }` ([`statistics_event`]; Mironov 2017 Prop. 7).
/// Anything computed from the result (rounding, clamping, un-scaling) is post-processing
/// (Dwork & Roth 2014, Prop. 2.1).
#[cfg(feature = "mechanisms")]
pub fn noisy_statistics(
    count: u64,
    sum: &[f64],
    sum_sq: &[f64],
    z: f64,
) -> Result<NoisyStatistics, DpError> {
    check_statistics_noise(z)?;
    if sum.len() != sum_sq.len() {
        return Err(DpError::LengthMismatch {
            expected: sum.len(),
            got: sum_sq.len(),
        });
    }
    let d = sum.len();
    let mut values = Vec::with_capacity(1 + 2 * d);
    values.push(count as f64);
    values.extend_from_slice(sum);
    values.extend_from_slice(sum_sq);
    let grid_slack = ((values.len() as f64).sqrt()) * 2f64.powi(NOISE_GRID_K - 1);
    let std_dev = z * (statistics_sensitivity(d) + grid_slack);
    add_gaussian_noise(&mut values, std_dev)?;
    let sum_sq = values.split_off(1 + d);
    let sum = values.split_off(1);
    Ok(NoisyStatistics {
        count: values[0],
        sum,
        sum_sq,
    })
}

impl PrivacySpec {
    /// Whether the model produced by round `model_round` is evaluated in a round that trains
    /// (`train`) or in the final evaluation (`!train`):
    ///
    /// * record unit: always for the final evaluation; during training when
    ///   `evaluate_every > 0`, `model_round > 0` and `model_round % evaluate_every == 0`;
    /// * partner unit: never (no data-independent noise scale protects a whole partner's
    ///   held-out rows; see the module documentation).
    ///
    /// Partner agents and the coordinator both decide with this function.
    pub fn evaluates(&self, model_round: u64, train: bool) -> bool {
        if self.unit == PrivacyUnit::Partner {
            return false;
        }
        if !train {
            return true;
        }
        self.evaluate_every > 0
            && model_round > 0
            && model_round.is_multiple_of(u64::from(self.evaluate_every))
    }

    /// The events one evaluation release costs a partner: `[(evaluation_event(σ_e), 1)]`.
    pub fn evaluation_events(&self) -> Vec<(DpEvent, u64)> {
        vec![(evaluation_event(self.evaluation_noise), 1)]
    }

    /// The events the task's one release of feature statistics costs a partner:
    /// `[(statistics_event(z_s), 1)]` under the record unit. None under the partner unit: there
    /// a partner releases statistics derived from the public bounds alone, which cost nothing
    /// (a whole partner's rows have no data-independent sensitivity).
    pub fn statistics_events(&self) -> Vec<(DpEvent, u64)> {
        if self.unit == PrivacyUnit::Partner {
            return Vec::new();
        }
        vec![(statistics_event(self.statistics_noise_multiplier), 1)]
    }

    /// Evaluations a task of `rounds` rounds releases ([`planned_evaluations`]; none under the
    /// partner unit).
    pub fn planned_evaluations(&self, rounds: u64) -> u64 {
        if self.unit == PrivacyUnit::Partner {
            return 0;
        }
        planned_evaluations(rounds, self.evaluate_every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        RdpAccountant, check_plan, check_task_plan, plan_epsilon_with, task_plan_epsilon,
        zcdp_epsilon,
    };

    fn spec(extra: &str) -> PrivacySpec {
        toml::from_str(&format!(
            "epsilon = 3.0\ndelta = 1e-6\nclip_norm = 1.0\nnoise_multiplier = 1.0\nsampling_rate = 0.01\n{extra}"
        ))
        .unwrap()
    }

    /// The noise on large counts (never clamped) has mean 0 and variance σ².
    ///
    /// 25,000 draws at σ = 10. The discrete Gaussian's variance is below σ² by less than
    /// 1e-80 at this σ (CKS20 Prop. 19 / Cor. 9), its kurtosis is that of a normal to the same
    /// precision, so the sample variance has standard deviation σ²·√(2/n) ≈ 0.0089·σ²; the
    /// 5 % tolerance is 5.6 standard deviations (false-failure rate ≈ 2e-8). The sample mean has
    /// standard deviation σ/√n ≈ 0.063; the tolerance 0.35 is 5.5 of them (≈ 4e-8).
    #[cfg(feature = "mechanisms")]
    #[test]
    fn noise_has_the_stated_variance() {
        let sigma = 10.0;
        let base = 1_000_000u64;
        let (mut sum, mut sum_sq, mut n) = (0.0f64, 0.0f64, 0usize);
        for _ in 0..625 {
            let (p, q) = noisy_histograms(&[base; 20], &[base; 20], sigma).unwrap();
            assert_eq!((p.len(), q.len()), (20, 20));
            for v in p.into_iter().chain(q) {
                let e = v as f64 - base as f64;
                sum += e;
                sum_sq += e * e;
                n += 1;
            }
        }
        assert_eq!(n, 25_000);
        let mean = sum / n as f64;
        let var = sum_sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.35, "mean {mean}");
        assert!(
            (var / (sigma * sigma) - 1.0).abs() < 0.05,
            "variance {var} vs σ² = {}",
            sigma * sigma
        );
    }

    /// Empty bins stay non-negative: about half of them come out as 0 (clamped noise ≤ 0,
    /// P = 1/2 + P(Z = 0)/2 ≈ 0.520 at σ = 10), the others positive.
    ///
    /// 4,000 empty cells; the fraction of zeros has standard deviation ≈ 0.0079, and the band
    /// [0.47, 0.57] is more than 6 of them either side (false-failure rate < 1e-9).
    #[cfg(feature = "mechanisms")]
    #[test]
    fn noisy_counts_are_clamped_at_zero() {
        let mut zeros = 0usize;
        let mut total = 0usize;
        for _ in 0..100 {
            let (p, q) = noisy_histograms(&[0; 20], &[0; 20], 10.0).unwrap();
            zeros += p.iter().chain(&q).filter(|&&v| v == 0).count();
            total += p.len() + q.len();
        }
        let fraction = zeros as f64 / total as f64;
        assert!((0.47..0.57).contains(&fraction), "{fraction}");
    }

    #[cfg(feature = "mechanisms")]
    #[test]
    fn bad_inputs_are_refused() {
        assert!(matches!(
            noisy_histograms(&[1, 2], &[1], 10.0),
            Err(DpError::LengthMismatch { .. })
        ));
        for sigma in [0.5, f64::NAN, f64::INFINITY, -3.0] {
            assert!(matches!(
                noisy_histograms(&[1], &[1], sigma),
                Err(DpError::InvalidParameter {
                    name: "evaluation_noise",
                    ..
                })
            ));
        }
    }

    /// ρ = 1/(2σ²): 0.005 at σ = 10; composed by the RDP accountant as α·ρ.
    #[test]
    fn one_evaluation_is_rho_zcdp() {
        assert_eq!(evaluation_event(10.0), DpEvent::Zcdp { rho: 0.005 });
        assert_eq!(evaluation_event(1.0), DpEvent::Zcdp { rho: 0.5 });
        let mut acc = RdpAccountant::new();
        acc.compose(evaluation_event(10.0), 1).unwrap();
        assert_eq!(acc.zcdp_rho(), Some(0.005));
        // The RDP curve's conversion is never better than the zCDP one it comes from.
        let eps = acc.epsilon(1e-6).unwrap();
        assert!(eps >= zcdp_epsilon(0.005, 1e-6).unwrap() * 0.999, "{eps}");
        assert_eq!(
            spec("evaluation_noise = 4.0").evaluation_events(),
            vec![(DpEvent::Zcdp { rho: 1.0 / 32.0 }, 1)]
        );
    }

    /// The task's plan composes its rounds and its evaluations; a budget that covers the
    /// rounds alone but not the evaluations is refused by the task plan.
    #[test]
    fn the_task_plan_counts_the_evaluations() {
        let mut s = spec("evaluate_every = 5\nevaluation_noise = 3.0");
        let ev = s.round_events(5000).unwrap();
        let rounds_only = plan_epsilon_with(&s, &ev, 20).unwrap();
        let whole = task_plan_epsilon(&s, &ev, 20).unwrap();
        let mut by_hand = RdpAccountant::new();
        for _ in 0..20 {
            by_hand.compose_all(&ev).unwrap();
        }
        by_hand.compose(evaluation_event(3.0), 4).unwrap();
        by_hand.compose(statistics_event(10.0), 1).unwrap();
        let expected = by_hand.epsilon(s.delta).unwrap();
        assert!(
            (whole - expected).abs() < 1e-9 * expected,
            "{whole} vs {expected}"
        );
        assert!(whole > rounds_only);
        s.epsilon = (whole + rounds_only) / 2.0;
        assert_eq!(check_plan(&s, &ev, 20).unwrap(), rounds_only);
        match check_task_plan(&s, &ev, 20) {
            Err(DpError::PlanExceedsBudget {
                epsilon_reached,
                affordable_rounds,
                ..
            }) => {
                assert!((epsilon_reached - whole).abs() < 1e-12);
                assert!(affordable_rounds < 20);
                assert!(task_plan_epsilon(&s, &ev, affordable_rounds).unwrap() <= s.epsilon);
                assert!(task_plan_epsilon(&s, &ev, affordable_rounds + 1).unwrap() > s.epsilon);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Without rounds, the statistics and the final evaluation are still planned.
        let alone = task_plan_epsilon(&s, &ev, 0).unwrap();
        let mut one = RdpAccountant::new();
        one.compose(evaluation_event(3.0), 1).unwrap();
        one.compose(statistics_event(10.0), 1).unwrap();
        assert!((alone - one.epsilon(s.delta).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn the_schedule_evaluates_the_final_model_and_every_nth() {
        assert_eq!(planned_evaluations(20, 0), 1);
        assert_eq!(planned_evaluations(20, 5), 4); // models 5, 10, 15 and the final 20
        assert_eq!(planned_evaluations(21, 5), 5); // 5, 10, 15, 20 and the final 21
        assert_eq!(planned_evaluations(3, 5), 1);
        assert_eq!(planned_evaluations(0, 5), 1);
        let s = spec("evaluate_every = 5");
        let evaluated: Vec<u64> = (0..20).filter(|&m| s.evaluates(m, true)).collect();
        assert_eq!(evaluated, vec![5, 10, 15]);
        assert!(s.evaluates(20, false));
        assert_eq!(s.planned_evaluations(20), 1 + evaluated.len() as u64);
        let final_only = spec("");
        assert_eq!(final_only.evaluate_every, 0);
        assert!((0..100).all(|m| !final_only.evaluates(m, true)));
        assert!(final_only.evaluates(7, false));
        let partner: PrivacySpec = toml::from_str(
            "unit = \"partner\"\nepsilon = 3.0\ndelta = 1e-6\nclip_norm = 1.0\nnoise_multiplier = 1.0\nevaluate_every = 2\n",
        )
        .unwrap();
        assert!(!partner.evaluates(4, true) && !partner.evaluates(4, false));
        assert_eq!(partner.planned_evaluations(20), 0);
    }
    /// The statistics noise has mean 0 and standard deviation z·Δ with Δ = √(1 + 2d).
    ///
    /// d = 4 features (Δ = 3), z = 2: σ = 6 (the grid slack, about 1.3e-15, is far below the
    /// tolerance). 2,000 releases × 9 coordinates = 18,000 draws of a Gaussian; the sample
    /// variance has standard deviation σ²·√(2/n) ≈ 0.0105·σ², so the 6 % tolerance is 5.7 standard
    /// deviations (false-failure rate ≈ 1e-8); the sample mean has standard deviation
    /// σ/√n ≈ 0.045, and the tolerance 0.25 is 5.6 of them (≈ 2e-8).
    #[cfg(feature = "mechanisms")]
    #[test]
    fn statistics_noise_has_the_stated_scale() {
        let (z, d) = (2.0, 4);
        let sigma = z * statistics_sensitivity(d);
        assert!((sigma - 6.0).abs() < 1e-12);
        let (count, sum, sum_sq) = (1000u64, [500.0; 4], [300.0; 4]);
        let (mut total, mut total_sq, mut n) = (0.0f64, 0.0f64, 0usize);
        for _ in 0..2000 {
            let r = noisy_statistics(count, &sum, &sum_sq, z).unwrap();
            assert_eq!((r.sum.len(), r.sum_sq.len()), (4, 4));
            let errors = std::iter::once(r.count - 1000.0)
                .chain(r.sum.iter().map(|v| v - 500.0))
                .chain(r.sum_sq.iter().map(|v| v - 300.0));
            for e in errors {
                total += e;
                total_sq += e * e;
                n += 1;
            }
        }
        let mean = total / n as f64;
        let var = total_sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.25, "mean {mean}");
        assert!(
            (var / (sigma * sigma) - 1.0).abs() < 0.06,
            "variance {var}, expected {}",
            sigma * sigma
        );
    }

    /// A record's contribution is clamped to its bounds and rounded to the grid; bad records
    /// are refused whole; Δ = GRID·√d.
    #[test]
    fn bounded_sums_clamp_every_record_to_its_bounds() {
        let mut s = BoundedSums::new(3);
        s.add(&[0.25, 7.0, -3.0]).unwrap();
        s.add(&[0.5, 1.0, 0.0]).unwrap();
        assert_eq!(s.exact(), vec![0.75, 2.0, 0.0]);
        assert_eq!(s.records(), 2);
        assert!(matches!(
            s.add(&[0.1, f64::NAN, 0.2]),
            Err(DpError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            s.add(&[0.1, 0.2]),
            Err(DpError::LengthMismatch { .. })
        ));
        assert_eq!(s.exact(), vec![0.75, 2.0, 0.0]);
        assert_eq!(s.sensitivity(), BOUNDED_SUM_GRID as f64 * 3f64.sqrt());
        // Rounding to the grid: within half a step of the value.
        let mut r = BoundedSums::new(1);
        r.add(&[1.0 / 3.0]).unwrap();
        assert!((r.exact()[0] - 1.0 / 3.0).abs() <= 0.5 / BOUNDED_SUM_GRID as f64);
        assert!(check_evaluation_bounds([0.0, 1.0]).is_ok());
        for bad in [
            [1.0, 1.0],
            [2.0, 1.0],
            [f64::NAN, 1.0],
            [0.0, f64::INFINITY],
        ] {
            assert!(check_evaluation_bounds(bad).is_err(), "{bad:?}");
        }
        assert!(spec("evaluation_bounds = [5.0, 1.0]").validate().is_err());
        assert_eq!(
            spec("evaluation_bounds = [0.0, 1000.0]").evaluation_bounds,
            Some([0.0, 1000.0])
        );
    }

    /// The noise of a bounded-sum release has mean 0 and standard deviation σ·√d in units of
    /// the bounds (σ·Δ in grid units), for every coordinate.
    ///
    /// σ = 2, d = 5: standard deviation 2√5 ≈ 4.47. 4,000 releases × 5 coordinates = 20,000
    /// draws of the discrete Gaussian of scale ≈ 586,000 grid units, whose variance equals the
    /// scale² to far below the tolerance (CKS20 Cor. 9) and whose kurtosis is a normal's; the
    /// sample variance has standard deviation s²·√(2/n) = 0.01·s², so the 5.5 % tolerance is 5.5
    /// standard deviations (false-failure rate ≈ 4e-8); the sample mean has standard deviation
    /// s/√n ≈ 0.032, and the tolerance 0.18 is 5.7 of them (≈ 1e-8).
    #[cfg(feature = "mechanisms")]
    #[test]
    fn bounded_sum_noise_has_the_calibrated_scale() {
        let (sigma, d) = (2.0, 5);
        let mut sums = BoundedSums::new(d);
        for i in 0..100 {
            sums.add(&[1.0, 0.5, 0.25, (i % 2) as f64, 0.0]).unwrap();
        }
        let exact = sums.exact();
        assert_eq!(exact, vec![100.0, 50.0, 25.0, 50.0, 0.0]);
        let s = sigma * (d as f64).sqrt();
        let (mut total, mut total_sq, mut n) = (0.0f64, 0.0f64, 0usize);
        for _ in 0..4000 {
            let noised = noisy_bounded_sums(&sums, sigma).unwrap();
            for (v, e) in noised.iter().zip(&exact) {
                let err = v - e;
                total += err;
                total_sq += err * err;
                n += 1;
            }
        }
        let mean = total / n as f64;
        let var = total_sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.18, "mean {mean}");
        assert!(
            (var / (s * s) - 1.0).abs() < 0.055,
            "variance {var}, expected {}",
            s * s
        );
        // Its cost is the histogram release's at the same σ: ρ = Δ²/(2(σΔ)²) = 1/(2σ²).
        assert_eq!(evaluation_event(sigma), DpEvent::Zcdp { rho: 0.125 });
        assert!(noisy_bounded_sums(&sums, 0.5).is_err());
    }

    #[test]
    fn statistics_sensitivity_event_and_refusals() {
        assert_eq!(statistics_sensitivity(0), 1.0);
        assert!((statistics_sensitivity(37) - 75f64.sqrt()).abs() < 1e-12);
        // One release at z is 1/(2z²)-zCDP (Mironov 2017 Prop. 7: RDP α/(2z²)).
        assert_eq!(statistics_event(10.0).zcdp_rho(), Some(0.005));
        #[cfg(feature = "mechanisms")]
        {
            assert!(noisy_statistics(1, &[0.0], &[], 10.0).is_err());
            assert!(noisy_statistics(1, &[0.0], &[0.0], 0.5).is_err());
            assert!(noisy_statistics(1, &[f64::NAN], &[0.0], 10.0).is_err());
        }
        assert!(check_statistics_noise(f64::INFINITY).is_err());
        assert!(
            spec("statistics_noise_multiplier = 0.9")
                .validate()
                .is_err()
        );
        let s = spec("");
        assert_eq!(s.statistics_noise_multiplier, 10.0);
        assert_eq!(s.statistics_events(), vec![(statistics_event(10.0), 1)]);
        let partner: PrivacySpec = toml::from_str(
            "unit = \"partner\"\nepsilon = 3.0\ndelta = 1e-6\nclip_norm = 1.0\nnoise_multiplier = 1.0",
        )
        .unwrap();
        assert!(partner.statistics_events().is_empty());
    }
}
