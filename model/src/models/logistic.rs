//! Binary logistic regression.
//!
//! The model predicts `P(y = 1 | x) = sigmoid(w · x + b)` and trains on the log-loss
//! `-(y ln p + (1 - y) ln(1 - p))`, with `l2 / 2 · |w|²` as its penalty (the bias is
//! not penalised).
//!
//! Parameter layout on the wire: the `feature_count` weights in design-matrix order
//! (see [`crate::FeatureSchema::feature_names`]), then the bias; `feature_count + 1`
//! numbers in all.

use ndarray::{Array1, Array2, ArrayView1};

use super::linear;
use crate::evaluation::Evaluation;
use crate::metrics::EvalPartial;
use crate::model::{Model, ModelError, check_params, check_rows};
use crate::task::ModelKind;

/// A logistic-regression model: weights then bias, in one vector.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    params: Vec<f64>,
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
            params: vec![0.0; feature_count + 1],
        }
    }

    /// A model from parameters in wire layout. The length must be
    /// `feature_count + 1` and every value finite.
    pub fn from_params(params: &[f64], feature_count: usize) -> Result<Self, ModelError> {
        check_params(params, feature_count.saturating_add(1), || {
            layout(feature_count)
        })?;
        Ok(Self {
            params: params.to_vec(),
        })
    }

    /// The weights, one per feature.
    pub fn weights(&self) -> &[f64] {
        linear::weights(&self.params)
    }

    /// The intercept.
    pub fn bias(&self) -> f64 {
        linear::intercept(&self.params)
    }

    /// Logits `w · x + b`, one per row of `x`.
    pub fn decision_function(&self, x: &Array2<f64>) -> Result<Array1<f64>, ModelError> {
        self.check_features(x.ncols())?;
        let w = ArrayView1::from(self.weights());
        Ok(x.dot(&w) + self.bias())
    }

    fn check_features(&self, columns: usize) -> Result<(), ModelError> {
        if columns != self.feature_count() {
            return Err(ModelError::Shape(format!(
                "design matrix has {columns} columns, the model has {} features",
                self.feature_count()
            )));
        }
        Ok(())
    }
}

fn layout(features: usize) -> String {
    format!("{features} weights then the bias")
}

impl Model for LogisticModel {
    fn kind(&self) -> ModelKind {
        ModelKind::LogisticRegression
    }

    fn layout(&self) -> String {
        layout(self.feature_count())
    }

    fn params(&self) -> &[f64] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [f64] {
        &mut self.params
    }

    fn feature_count(&self) -> usize {
        self.params.len() - 1
    }

    fn predict(&self, x: &Array2<f64>) -> Result<Array1<f64>, ModelError> {
        Ok(self.decision_function(x)?.mapv(sigmoid))
    }

    /// `(p - y) x` for the weights, then `p - y` for the bias, where
    /// `p = sigmoid(w · x + b)`.
    fn example_gradient(
        &self,
        x_row: ArrayView1<'_, f64>,
        y: f64,
        out: &mut [f64],
    ) -> Result<f64, ModelError> {
        self.check_features(x_row.len())?;
        if out.len() != self.params.len() {
            return Err(ModelError::Shape(format!(
                "gradient buffer has {} values, the model {}",
                out.len(),
                self.params.len()
            )));
        }
        let z = x_row.dot(&ArrayView1::from(self.weights())) + self.bias();
        linear::example_gradient(x_row, sigmoid(z) - y, out);
        Ok(log_loss_from_logit(z, y))
    }

    /// The batch as matrix products ([`linear::batch_gradient`]).
    fn batch_gradient(
        &self,
        x: &Array2<f64>,
        y: &Array1<f64>,
        rows: &[usize],
        out: &mut [f64],
    ) -> Result<f64, ModelError> {
        check_rows(x, y, self.feature_count())?;
        linear::batch_gradient(&self.params, x, y, rows, out, |z, y| {
            (sigmoid(z) - y, log_loss_from_logit(z, y))
        })
    }

    fn penalty_gradient(&self, l2: f64, out: &mut [f64]) {
        linear::penalty_gradient(&self.params, l2, out);
    }

    fn loss(&self, x: &Array2<f64>, y: &Array1<f64>) -> Result<f64, ModelError> {
        check_rows(x, y, self.feature_count())?;
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

    fn evaluate(&self, x: &Array2<f64>, y: &Array1<f64>) -> Result<Evaluation, ModelError> {
        check_rows(x, y, self.feature_count())?;
        let z = self.decision_function(x)?;
        Ok(Evaluation::Binary(EvalPartial::from_scores(
            z.iter()
                .zip(y)
                .map(|(&z, &y)| (sigmoid(z), y == 1.0, log_loss_from_logit(z, y))),
        )))
    }

    fn export(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        out.insert("weights".into(), self.weights().into());
        out.insert("bias".into(), self.bias().into());
        out
    }

    fn clone_box(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TrainConfig, TrainProgress};
    use crate::sgd;
    use ndarray::{Axis, array};
    use rand::{Rng, SeedableRng};
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
        let m = LogisticModel::from_params(&[1.0, -2.0, 3.0, 0.5], 3).unwrap();
        assert_eq!(m.weights(), [1.0, -2.0, 3.0]);
        assert_eq!(m.bias(), 0.5);
        assert_eq!(LogisticModel::from_params(m.params(), 3).unwrap(), m);
        assert_eq!(
            LogisticModel::from_params(&[1.0, 2.0], 3),
            Err(ModelError::ParamCount {
                found: 2,
                expected: 4,
                layout: "3 weights then the bias".into()
            })
        );
        assert!(matches!(
            LogisticModel::from_params(&[1.0, f64::NAN], 1),
            Err(ModelError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn per_example_gradient_matches_finite_differences() {
        let m = LogisticModel::from_params(&[0.3, -0.7, 0.1], 2).unwrap();
        let x = array![1.5, -0.4];
        for y in [0.0, 1.0] {
            let mut g = vec![0.0; 3];
            m.example_gradient(x.view(), y, &mut g).unwrap();
            let loss = |p: &[f64]| {
                let m = LogisticModel::from_params(p, 2).unwrap();
                log_loss_from_logit(x.dot(&ArrayView1::from(m.weights())) + m.bias(), y)
            };
            let base = m.params().to_vec();
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
        assert!(
            m.example_gradient(array![1.0].view(), 1.0, &mut g3())
                .is_err()
        );
    }

    #[test]
    fn training_fits_a_separable_rule_and_reports() {
        // y = 1 exactly when x0 > x1.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let x = Array2::from_shape_fn((400, 2), |_| rng.random_range(-1.0..1.0));
        let y = x.map_axis(Axis(1), |r| if r[0] > r[1] { 1.0 } else { 0.0 });
        let mut m = LogisticModel::zeros(2);
        let before = m.loss(&x, &y).unwrap();
        let cfg = TrainConfig {
            epochs: 30,
            batch_size: 16,
            learning_rate: 0.5,
            l2: 0.0,
        };
        let mut epochs_seen = Vec::new();
        let report = sgd::train(
            &mut m,
            &x,
            &y,
            &cfg,
            None,
            &mut rng,
            &mut |p: TrainProgress| epochs_seen.push(p.epoch),
        )
        .unwrap();
        assert_eq!(epochs_seen, (1..=30).collect::<Vec<_>>());
        assert_eq!(report.examples, 30 * 400);
        assert_eq!(report.steps, 30 * 25);
        let after = m.loss(&x, &y).unwrap();
        assert!(after < 0.2 * before, "loss {before} -> {after}");
        assert!(m.weights()[0] > 0.0 && m.weights()[1] < 0.0);
        let p = m.predict(&x).unwrap();
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
            sgd::train(
                &mut m,
                &x,
                &y,
                &cfg,
                None,
                &mut ChaCha8Rng::seed_from_u64(2),
                &mut |_| {},
            )
            .unwrap();
            m.weights().iter().map(|w| w * w).sum::<f64>()
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
            sgd::train(&mut m, &x, &y, &cfg, None, &mut rng, &mut |_| {}),
            Err(ModelError::Config(_))
        ));
        let cfg = TrainConfig {
            batch_size: 1,
            ..cfg
        };
        assert!(matches!(
            sgd::train(
                &mut m,
                &x,
                &y.slice(ndarray::s![..10]).to_owned(),
                &cfg,
                None,
                &mut rng,
                &mut |_| {}
            ),
            Err(ModelError::Shape(_))
        ));
        assert!(LogisticModel::zeros(2).predict(&x).is_err());
    }

    fn g3() -> Vec<f64> {
        vec![0.0; 3]
    }

    #[test]
    fn batch_gradient_is_the_sum_of_example_gradients() {
        let m = LogisticModel::from_params(&[0.4, -1.1, 0.2], 2).unwrap();
        let x = array![[1.0, 2.0], [-0.5, 0.3], [0.7, -1.2]];
        let y = array![1.0, 0.0, 1.0];
        let rows = [0, 2, 2];
        let mut fast = g3();
        let loss = m.batch_gradient(&x, &y, &rows, &mut fast).unwrap();
        let mut slow = vec![0.0; 3];
        let mut want_loss = 0.0;
        for &i in &rows {
            let mut g = g3();
            want_loss += m.example_gradient(x.row(i), y[i], &mut g).unwrap();
            slow.iter_mut().zip(&g).for_each(|(s, v)| *s += v);
        }
        assert!((loss - want_loss).abs() < 1e-12);
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let mut pen = vec![0.0; 3];
        m.penalty_gradient(0.5, &mut pen);
        assert_eq!(pen, [0.2, -0.55, 0.0], "the bias is not penalised");
    }
}
