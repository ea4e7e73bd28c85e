//! Binary logistic regression and its mini-batch SGD training.
//!
//! The model predicts `P(y = 1 | x) = sigmoid(w · x + b)`. Training minimises the
//! mean log-loss `-(y ln p + (1 - y) ln(1 - p))` over each mini-batch, plus
//! `l2 / 2 · |w|²` (the bias is not penalised).
//!
//! Parameter layout on the wire: the `feature_count` weights in design-matrix order
//! (see [`crate::FeatureSchema::feature_names`]), then the bias; `feature_count + 1`
//! numbers in all. [`LogisticModel::to_params`], [`LogisticModel::from_params`] and
//! [`LogisticModel::per_example_gradients`] all use it.

use ndarray::{Array1, Array2, ArrayView1, Axis};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// A logistic-regression model. It travels as [`LogisticModel::to_params`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    /// One weight per feature.
    pub weights: Array1<f64>,
    /// The intercept.
    pub bias: f64,
}

/// Local training settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the rows.
    pub epochs: u32,
    /// Rows per SGD step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Step size.
    pub learning_rate: f64,
    /// L2 penalty on the weights.
    pub l2: f64,
}

/// Sent to the progress callback after each epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainProgress {
    /// The epoch just finished, from 1.
    pub epoch: u32,
    /// Epochs in all.
    pub epochs: u32,
    /// Mean log-loss of the epoch's examples, each taken just before the step that
    /// used it.
    pub mean_loss: f64,
    /// SGD steps taken so far.
    pub steps: u64,
}

/// What a training run did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Mean log-loss over the last epoch (see [`TrainProgress::mean_loss`]); 0 when
    /// nothing was trained.
    pub mean_loss: f64,
    /// Examples processed, counting each once per epoch.
    pub examples: u64,
    /// SGD steps taken.
    pub steps: u64,
}

/// Why a model could not be built, used or trained.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A parameter vector of the wrong length.
    #[error("expected {expected} parameters ({features} weights then the bias), got {found}")]
    ParamCount {
        /// Length received.
        found: usize,
        /// `features + 1`.
        expected: usize,
        /// Number of features.
        features: usize,
    },
    /// A parameter that is NaN or infinite.
    #[error("parameter {index} is {value}, not a finite number")]
    NonFinite {
        /// Index in the parameter layout.
        index: usize,
        /// The value.
        value: f64,
    },
    /// Inputs whose shapes do not fit the model or each other.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An unusable training setting.
    #[error("invalid training setting: {0}")]
    Config(String),
    /// Training produced a NaN or infinite parameter.
    #[error("training diverged to a non-finite parameter; lower the learning rate")]
    Diverged,
}

/// The logistic function, computed without overflow for any finite `z`.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Log-loss of label `y` (0 or 1) given the logit `z = w · x + b`, computed as
/// `softplus(z) - y z` so that it stays finite and accurate for large `|z|`.
pub fn log_loss_from_logit(z: f64, y: f64) -> f64 {
    let softplus = z.max(0.0) + (-z.abs()).exp().ln_1p();
    softplus - y * z
}

impl LogisticModel {
    /// The all-zero model over `feature_count` features (predicts 0.5 everywhere).
    pub fn zeros(feature_count: usize) -> Self {
        Self {
            weights: Array1::zeros(feature_count),
            bias: 0.0,
        }
    }

    /// Number of features.
    pub fn feature_count(&self) -> usize {
        self.weights.len()
    }

    /// Number of parameters: `feature_count() + 1`.
    pub fn param_count(&self) -> usize {
        self.weights.len() + 1
    }

    /// The parameters in wire layout: weights, then the bias.
    pub fn to_params(&self) -> Vec<f64> {
        let mut params = Vec::with_capacity(self.param_count());
        params.extend(self.weights.iter());
        params.push(self.bias);
        params
    }

    /// A model from parameters in wire layout. The length must be
    /// `feature_count + 1` and every value finite.
    pub fn from_params(params: &[f64], feature_count: usize) -> Result<Self, ModelError> {
        let expected = feature_count.saturating_add(1);
        if params.len() != expected {
            return Err(ModelError::ParamCount {
                found: params.len(),
                expected,
                features: feature_count,
            });
        }
        if let Some((index, &value)) = params.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::NonFinite { index, value });
        }
        Ok(Self {
            weights: Array1::from(params[..feature_count].to_vec()),
            bias: params[feature_count],
        })
    }

    fn check_features(&self, x: &Array2<f64>) -> Result<(), ModelError> {
        if x.ncols() != self.weights.len() {
            return Err(ModelError::Shape(format!(
                "design matrix has {} columns, the model has {} features",
                x.ncols(),
                self.weights.len()
            )));
        }
        Ok(())
    }

    /// Logits `w · x + b`, one per row of `x`.
    pub fn decision_function(&self, x: &Array2<f64>) -> Result<Array1<f64>, ModelError> {
        self.check_features(x)?;
        Ok(x.dot(&self.weights) + self.bias)
    }

    /// `P(y = 1)`, one per row of `x`.
    pub fn predict_proba(&self, x: &Array2<f64>) -> Result<Array1<f64>, ModelError> {
        Ok(self.decision_function(x)?.mapv(sigmoid))
    }

    /// Mean log-loss over the rows of `x` with labels `y` (0 when there are none).
    pub fn log_loss(&self, x: &Array2<f64>, y: &Array1<f64>) -> Result<f64, ModelError> {
        check_labels(x, y)?;
        let z = self.decision_function(x)?;
        if z.is_empty() {
            return Ok(0.0);
        }
        let total: f64 = z
            .iter()
            .zip(y)
            .map(|(&z, &y)| log_loss_from_logit(z, y))
            .sum();
        Ok(total / z.len() as f64)
    }

    /// Gradient of one example's log-loss with respect to the parameters, in wire
    /// layout: `(p - y) x` for the weights, then `p - y` for the bias, where
    /// `p = sigmoid(w · x + b)`. The L2 penalty is not included: it does not depend
    /// on the data, so per-example clipping leaves it out.
    pub fn per_example_gradients(
        &self,
        x_row: ArrayView1<'_, f64>,
        y: f64,
    ) -> Result<Vec<f64>, ModelError> {
        if x_row.len() != self.weights.len() {
            return Err(ModelError::Shape(format!(
                "example has {} features, the model has {}",
                x_row.len(),
                self.weights.len()
            )));
        }
        let r = sigmoid(x_row.dot(&self.weights) + self.bias) - y;
        let mut grad = Vec::with_capacity(self.param_count());
        grad.extend(x_row.iter().map(|v| r * v));
        grad.push(r);
        Ok(grad)
    }

    /// Mini-batch SGD on the rows of `x` (already standardised) with 0/1 labels `y`.
    ///
    /// Each epoch visits the rows in a fresh order drawn from `rng`, in batches of
    /// `cfg.batch_size`; each batch takes one step of
    /// `w -= lr · (mean_batch((p - y) x) + l2 · w)`, `b -= lr · mean_batch(p - y)`.
    /// `progress` is called after every epoch.
    pub fn train(
        &mut self,
        x: &Array2<f64>,
        y: &Array1<f64>,
        cfg: &TrainConfig,
        rng: &mut impl Rng,
        mut progress: impl FnMut(TrainProgress),
    ) -> Result<TrainReport, ModelError> {
        self.check_features(x)?;
        check_labels(x, y)?;
        if cfg.batch_size == 0 {
            return Err(ModelError::Config("batch_size must be at least 1".into()));
        }
        if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
            return Err(ModelError::Config(format!(
                "learning_rate is {}, it must be finite and greater than 0",
                cfg.learning_rate
            )));
        }
        if !(cfg.l2.is_finite() && cfg.l2 >= 0.0) {
            return Err(ModelError::Config(format!(
                "l2 is {}, it must be finite and at least 0",
                cfg.l2
            )));
        }

        let n = x.nrows();
        let mut report = TrainReport {
            mean_loss: 0.0,
            examples: 0,
            steps: 0,
        };
        if n == 0 {
            return Ok(report);
        }
        let mut order: Vec<usize> = (0..n).collect();
        // Batches are multiplied as matrices: ndarray hands f64 matrix products to
        // an optimised kernel, which matters in unoptimised builds.
        let mut w = self.weights.clone().insert_axis(Axis(1));
        for epoch in 1..=cfg.epochs {
            order.shuffle(rng);
            let mut epoch_loss = 0.0;
            for batch in order.chunks(cfg.batch_size) {
                let xb = x.select(Axis(0), batch);
                let z = xb.dot(&w);
                let mut residual = Array2::<f64>::zeros((batch.len(), 1));
                let mut residual_sum = 0.0;
                for ((r, &zi), &i) in residual.iter_mut().zip(z.iter()).zip(batch) {
                    let zi = zi + self.bias;
                    epoch_loss += log_loss_from_logit(zi, y[i]);
                    *r = sigmoid(zi) - y[i];
                    residual_sum += *r;
                }
                let scale = 1.0 / batch.len() as f64;
                let grad = xb.t().dot(&residual);
                let shrink = 1.0 - cfg.learning_rate * cfg.l2;
                w.zip_mut_with(&grad, |wj, gj| {
                    *wj = shrink * *wj - cfg.learning_rate * scale * gj;
                });
                self.bias -= cfg.learning_rate * scale * residual_sum;
                report.steps += 1;
            }
            report.examples += n as u64;
            report.mean_loss = epoch_loss / n as f64;
            progress(TrainProgress {
                epoch,
                epochs: cfg.epochs,
                mean_loss: report.mean_loss,
                steps: report.steps,
            });
        }
        self.weights = w.remove_axis(Axis(1));
        if !self.bias.is_finite() || self.weights.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Diverged);
        }
        Ok(report)
    }
}

fn check_labels(x: &Array2<f64>, y: &Array1<f64>) -> Result<(), ModelError> {
    if x.nrows() != y.len() {
        return Err(ModelError::Shape(format!(
            "{} rows but {} labels",
            x.nrows(),
            y.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn sigmoid_and_loss_are_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((sigmoid(2.0) + sigmoid(-2.0) - 1.0).abs() < 1e-15);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((log_loss_from_logit(0.0, 1.0) - 2f64.ln()).abs() < 1e-15);
        assert!((log_loss_from_logit(800.0, 0.0) - 800.0).abs() < 1e-9);
        assert!(log_loss_from_logit(800.0, 1.0).abs() < 1e-300);
        let z = 1.3;
        let p = sigmoid(z);
        assert!((log_loss_from_logit(z, 1.0) + p.ln()).abs() < 1e-12);
        assert!((log_loss_from_logit(z, 0.0) + (1.0 - p).ln()).abs() < 1e-12);
    }

    #[test]
    fn params_round_trip_and_are_checked() {
        let m = LogisticModel {
            weights: array![1.0, -2.0, 3.0],
            bias: 0.5,
        };
        assert_eq!(m.to_params(), [1.0, -2.0, 3.0, 0.5]);
        assert_eq!(LogisticModel::from_params(&m.to_params(), 3).unwrap(), m);
        assert_eq!(
            LogisticModel::from_params(&[1.0, 2.0], 3),
            Err(ModelError::ParamCount {
                found: 2,
                expected: 4,
                features: 3
            })
        );
        assert!(matches!(
            LogisticModel::from_params(&[1.0, f64::NAN], 1),
            Err(ModelError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn per_example_gradient_matches_finite_differences() {
        let m = LogisticModel {
            weights: array![0.3, -0.7],
            bias: 0.1,
        };
        let x = array![1.5, -0.4];
        for y in [0.0, 1.0] {
            let g = m.per_example_gradients(x.view(), y).unwrap();
            let loss = |p: &[f64]| {
                let m = LogisticModel::from_params(p, 2).unwrap();
                log_loss_from_logit(x.dot(&m.weights) + m.bias, y)
            };
            let base = m.to_params();
            for (k, gk) in g.iter().enumerate() {
                let h = 1e-6;
                let mut up = base.clone();
                up[k] += h;
                let mut down = base.clone();
                down[k] -= h;
                let numeric = (loss(&up) - loss(&down)) / (2.0 * h);
                assert!((numeric - gk).abs() < 1e-8, "param {k}: {numeric} vs {gk}");
            }
        }
        assert!(m.per_example_gradients(array![1.0].view(), 1.0).is_err());
    }

    #[test]
    fn training_fits_a_separable_rule_and_reports() {
        // y = 1 exactly when x0 > x1.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let x = Array2::from_shape_fn((400, 2), |_| rng.random_range(-1.0..1.0));
        let y = x.map_axis(Axis(1), |r| if r[0] > r[1] { 1.0 } else { 0.0 });
        let mut m = LogisticModel::zeros(2);
        let before = m.log_loss(&x, &y).unwrap();
        let cfg = TrainConfig {
            epochs: 30,
            batch_size: 16,
            learning_rate: 0.5,
            l2: 0.0,
        };
        let mut epochs_seen = Vec::new();
        let report = m
            .train(&x, &y, &cfg, &mut rng, |p| epochs_seen.push(p.epoch))
            .unwrap();
        assert_eq!(epochs_seen, (1..=30).collect::<Vec<_>>());
        assert_eq!(report.examples, 30 * 400);
        assert_eq!(report.steps, 30 * 25);
        let after = m.log_loss(&x, &y).unwrap();
        assert!(after < 0.2 * before, "loss {before} -> {after}");
        assert!(m.weights[0] > 0.0 && m.weights[1] < 0.0);
        let p = m.predict_proba(&x).unwrap();
        let correct = p
            .iter()
            .zip(&y)
            .filter(|(p, y)| (**p >= 0.5) == (**y == 1.0))
            .count();
        assert!(correct >= 390, "{correct}/400 correct");
    }

    #[test]
    fn l2_shrinks_weights_and_bad_inputs_are_rejected() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let x = Array2::from_shape_fn((200, 3), |_| rng.random_range(-1.0..1.0));
        let y = x.map_axis(Axis(1), |r| if r[0] > 0.0 { 1.0 } else { 0.0 });
        let fit = |l2| {
            let mut m = LogisticModel::zeros(3);
            let cfg = TrainConfig {
                epochs: 20,
                batch_size: 10,
                learning_rate: 0.3,
                l2,
            };
            m.train(&x, &y, &cfg, &mut ChaCha8Rng::seed_from_u64(2), |_| {})
                .unwrap();
            m.weights.dot(&m.weights)
        };
        assert!(fit(0.1) < 0.5 * fit(0.0));

        let mut m = LogisticModel::zeros(3);
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: 0,
            learning_rate: 0.1,
            l2: 0.0,
        };
        assert!(matches!(
            m.train(&x, &y, &cfg, &mut rng, |_| {}),
            Err(ModelError::Config(_))
        ));
        let cfg = TrainConfig {
            batch_size: 1,
            ..cfg
        };
        assert!(matches!(
            m.train(
                &x,
                &y.slice(ndarray::s![..10]).to_owned(),
                &cfg,
                &mut rng,
                |_| {}
            ),
            Err(ModelError::Shape(_))
        ));
        assert!(LogisticModel::zeros(2).predict_proba(&x).is_err());
    }
}
