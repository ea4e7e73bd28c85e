//! What a round's contributions add up to, before the server strategy applies it.
//!
//! Partners send **deltas** (their locally trained parameters minus the global ones)
//! or, under distributed DP with the record unit, sums of clipped gradients. The
//! coordinator either sums them in the clear or decrypts their encrypted sum; both
//! paths end in the same [`AggregatedUpdate`], and [`AggregatedUpdate::model_delta`]
//! turns it into the one vector every [`crate::Strategy`] consumes: the FedAvg model
//! delta `Δ` (what plain FedAvg would add to the global parameters; Reddi et al. 2021,
//! "Adaptive Federated Optimization", ICLR, Alg. 1's "pseudo-gradient" `−Δ`).

use crate::model::{Model, TrainConfig};

/// A round's contributions, aggregated.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregatedUpdate {
    /// `Σ_k n_k δ_k / Σ_k n_k`: the example-weighted mean of the partners' model
    /// deltas (plain or locally private training; McMahan et al. 2017, Alg. 1).
    WeightedMeanDelta(Vec<f64>),
    /// `Σ_k clip(δ_k) + noise` over `contributors` partners: distributed DP with the
    /// partner unit (DP-FedAvg, McMahan et al. 2018, Alg. 1, with unit weights).
    ClippedDeltaSum {
        /// The noisy sum of clipped deltas.
        sum: Vec<f64>,
        /// Partners in the sum.
        contributors: usize,
    },
    /// `Σ_rows clip(∇ℓ_i) + noise` at the global parameters: distributed DP with the
    /// record unit, one full-batch DP-SGD step of the federation (Abadi et al. 2016,
    /// Alg. 1, q = 1).
    GradientSum {
        /// The noisy sum of clipped per-example gradients.
        sum: Vec<f64>,
        /// Training rows across the contributors.
        rows: u64,
    },
}

/// Why an aggregate could not become a model step.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AggregateError {
    /// The aggregate's length differs from the model's.
    #[error("the aggregate has {found} values, the model {expected} parameters")]
    Length {
        /// Values aggregated.
        found: usize,
        /// Model parameters.
        expected: usize,
    },
    /// A value that is NaN or infinite.
    #[error("aggregated value {index} is {value}, not a finite number")]
    NonFinite {
        /// Index in the parameter layout.
        index: usize,
        /// The value.
        value: f64,
    },
}

impl AggregatedUpdate {
    /// The vector aggregated, whatever its form.
    pub fn values(&self) -> &[f64] {
        match self {
            Self::WeightedMeanDelta(v) => v,
            Self::ClippedDeltaSum { sum, .. } | Self::GradientSum { sum, .. } => sum,
        }
    }

    /// The FedAvg model delta `Δ` at the global `model`:
    ///
    /// * weighted mean delta: itself;
    /// * clipped delta sum: `sum / contributors`;
    /// * gradient sum: `−η (sum / rows + ∇penalty(θ))`, the local learning rate η and
    ///   the model's own penalty gradient (biases unpenalised) from `train`.
    pub fn model_delta(
        &self,
        model: &dyn Model,
        train: &TrainConfig,
    ) -> Result<Vec<f64>, AggregateError> {
        let values = self.values();
        if values.len() != model.param_count() {
            return Err(AggregateError::Length {
                found: values.len(),
                expected: model.param_count(),
            });
        }
        let delta: Vec<f64> = match self {
            Self::WeightedMeanDelta(v) => v.clone(),
            Self::ClippedDeltaSum { sum, contributors } => {
                let n = (*contributors).max(1) as f64;
                sum.iter().map(|d| d / n).collect()
            }
            Self::GradientSum { sum, rows } => {
                let rows = (*rows).max(1) as f64;
                let mut g: Vec<f64> = sum.iter().map(|g| g / rows).collect();
                model.penalty_gradient(train.l2, &mut g);
                g.iter().map(|g| -train.learning_rate * g).collect()
            }
        };
        if let Some((index, &value)) = delta.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(AggregateError::NonFinite { index, value });
        }
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::logistic::LogisticModel;

    const TRAIN: TrainConfig = TrainConfig {
        epochs: 1,
        batch_size: 1,
        learning_rate: 0.5,
        l2: 0.1,
    };

    #[test]
    fn each_form_becomes_the_fedavg_delta() {
        let m = LogisticModel::from_params(&[1.0, -2.0, 3.0], 2).unwrap();
        let mean = AggregatedUpdate::WeightedMeanDelta(vec![0.1, 0.2, 0.3]);
        assert_eq!(mean.model_delta(&m, &TRAIN).unwrap(), [0.1, 0.2, 0.3]);
        let clipped = AggregatedUpdate::ClippedDeltaSum {
            sum: vec![0.3, 0.6, 0.9],
            contributors: 3,
        };
        let d = clipped.model_delta(&m, &TRAIN).unwrap();
        assert!(
            d.iter()
                .zip([0.1, 0.2, 0.3])
                .all(|(a, b)| (a - b).abs() < 1e-15)
        );
        // −η (g / rows + l2 w), bias unpenalised.
        let grads = AggregatedUpdate::GradientSum {
            sum: vec![10.0, 20.0, 30.0],
            rows: 10,
        };
        let d = grads.model_delta(&m, &TRAIN).unwrap();
        let want = [-0.5 * (1.0 + 0.1), -0.5 * (2.0 - 0.2), -0.5 * 3.0];
        assert!(
            d.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{d:?}"
        );
    }

    #[test]
    fn wrong_length_and_non_finite_are_refused() {
        let m = LogisticModel::zeros(2);
        let short = AggregatedUpdate::WeightedMeanDelta(vec![0.0; 2]);
        assert_eq!(
            short.model_delta(&m, &TRAIN),
            Err(AggregateError::Length {
                found: 2,
                expected: 3
            })
        );
        let nan = AggregatedUpdate::WeightedMeanDelta(vec![0.0, f64::NAN, 0.0]);
        assert!(matches!(
            nan.model_delta(&m, &TRAIN),
            Err(AggregateError::NonFinite { index: 1, .. })
        ));
    }
}
