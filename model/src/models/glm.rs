//! Generalised linear regression for customer lifetime value and spend.
//!
//! The model predicts `μ = g⁻¹(w · x + b)` with the log link `μ = exp(η)` (Tweedie,
//! Poisson, Gamma) or the identity link (Gaussian), and trains on half the unit
//! deviance of its family (McCullagh and Nelder 1989, "Generalized Linear Models",
//! §2.3; Jørgensen 1997, "The Theory of Dispersion Models", ch. 4 for Tweedie):
//!
//! * Tweedie, power `p ∈ (1, 2)`: `d(y, μ) = 2 [y^{2−p}/((1−p)(2−p)) − y μ^{1−p}/(1−p) + μ^{2−p}/(2−p)]`;
//! * Poisson (`p = 1`): `d = 2 [y ln(y/μ) − (y − μ)]`;
//! * Gamma (`p = 2`): `d = 2 [−ln(y/μ) + (y − μ)/μ]`;
//! * Gaussian: `d = (y − μ)²`.
//!
//! With the log link the gradient of `d/2` with respect to `η` is `μ^{1−p} (μ − y)`
//! for every power family (Poisson `μ − y`, Gamma `1 − y/μ`); with the identity link
//! it is `μ − y`. The penalty `l2/2 · |w|²` leaves the intercept alone.
//!
//! `η` is clamped to `[−ETA_LIMIT, ETA_LIMIT]` before `exp`, so one extreme row cannot
//! overflow a prediction; the clamp is far outside any fitted value on standardised
//! features.
//!
//! Parameter layout on the wire: the `feature_count` weights in design-matrix order,
//! then the intercept.

use ndarray::{Array1, Array2, ArrayView1};

use super::linear;
use crate::model::{Model, ModelError, check_params, check_rows};
use crate::regression_metrics::RegressionPartial;
use crate::task::{GlmFamily, ModelKind};

/// Largest `|η|` the log link exponentiates.
pub const ETA_LIMIT: f64 = 50.0;

/// A generalised linear model: weights then intercept, in one vector.
#[derive(Debug, Clone, PartialEq)]
pub struct GlmModel {
    family: GlmFamily,
    /// The Tweedie power (1 for Poisson, 2 for Gamma, 0 for Gaussian).
    power: f64,
    params: Vec<f64>,
}

impl GlmModel {
    /// The all-zero model over `feature_count` features (predicts `g⁻¹(0)`).
    pub fn zeros(feature_count: usize, family: GlmFamily, power: f64) -> Self {
        Self {
            family,
            power,
            params: vec![0.0; feature_count + 1],
        }
    }

    /// The family.
    pub fn family(&self) -> GlmFamily {
        self.family
    }

    fn weights(&self) -> &[f64] {
        linear::weights(&self.params)
    }

    fn intercept(&self) -> f64 {
        linear::intercept(&self.params)
    }

    fn eta(&self, x_row: ArrayView1<'_, f64>) -> f64 {
        x_row.dot(&ArrayView1::from(self.weights())) + self.intercept()
    }

    fn log_link(&self) -> bool {
        self.family != GlmFamily::Gaussian
    }

    /// The mean `μ` at linear predictor `η`.
    pub fn mean(&self, eta: f64) -> f64 {
        if self.log_link() {
            eta.clamp(-ETA_LIMIT, ETA_LIMIT).exp()
        } else {
            eta
        }
    }

    /// `∂(d/2)/∂η` at `(y, η)`.
    fn d_eta(&self, y: f64, eta: f64) -> f64 {
        let mu = self.mean(eta);
        if !self.log_link() {
            return mu - y;
        }
        // Outside the clamp the prediction does not move with η.
        if eta.abs() > ETA_LIMIT {
            return 0.0;
        }
        mu.powf(1.0 - self.power) * (mu - y)
    }

    /// The unit deviance `d(y, μ)` of the family (see the module documentation).
    pub fn unit_deviance(&self, y: f64, mu: f64) -> f64 {
        let p = self.power;
        // y ln(y/μ) with the 0 · ln 0 = 0 convention.
        let ylog = |y: f64| if y > 0.0 { y * (y / mu).ln() } else { 0.0 };
        match self.family {
            GlmFamily::Gaussian => (y - mu) * (y - mu),
            GlmFamily::Poisson => 2.0 * (ylog(y) - (y - mu)),
            GlmFamily::Gamma => 2.0 * (-(y / mu).ln() + (y - mu) / mu),
            GlmFamily::Tweedie if p == 1.0 => 2.0 * (ylog(y) - (y - mu)),
            GlmFamily::Tweedie => {
                2.0 * (y.max(0.0).powf(2.0 - p) / ((1.0 - p) * (2.0 - p))
                    - y * mu.powf(1.0 - p) / (1.0 - p)
                    + mu.powf(2.0 - p) / (2.0 - p))
            }
        }
    }
}

impl Model for GlmModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Glm
    }

    fn layout(&self) -> String {
        format!("{} weights then the intercept", self.feature_count())
    }

    fn params(&self) -> &[f64] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [f64] {
        &mut self.params
    }

    fn set_params(&mut self, params: &[f64]) -> Result<(), ModelError> {
        check_params(params, self.params.len(), || self.layout())?;
        self.params.copy_from_slice(params);
        Ok(())
    }

    fn feature_count(&self) -> usize {
        self.params.len() - 1
    }

    fn predict(&self, x: &Array2<f64>) -> Result<Array1<f64>, ModelError> {
        if x.ncols() != self.feature_count() {
            return Err(ModelError::Shape(format!(
                "design matrix has {} columns, the model has {} features",
                x.ncols(),
                self.feature_count()
            )));
        }
        let eta = x.dot(&ArrayView1::from(self.weights())) + self.intercept();
        Ok(eta.mapv(|e| self.mean(e)))
    }

    fn example_gradient(
        &self,
        x_row: ArrayView1<'_, f64>,
        y: f64,
        out: &mut [f64],
    ) -> Result<f64, ModelError> {
        let f = self.feature_count();
        if x_row.len() != f || out.len() != f + 1 {
            return Err(ModelError::Shape(format!(
                "example has {} features and the buffer {} values; the model has {f} features",
                x_row.len(),
                out.len()
            )));
        }
        let eta = self.eta(x_row);
        linear::example_gradient(x_row, self.d_eta(y, eta), out);
        Ok(self.unit_deviance(y, self.mean(eta)) / 2.0)
    }

    fn batch_gradient(
        &self,
        x: &Array2<f64>,
        y: &Array1<f64>,
        rows: &[usize],
        out: &mut [f64],
    ) -> Result<f64, ModelError> {
        check_rows(x, y, self.feature_count())?;
        linear::batch_gradient(&self.params, x, y, rows, out, |eta, y| {
            (
                self.d_eta(y, eta),
                self.unit_deviance(y, self.mean(eta)) / 2.0,
            )
        })
    }

    fn penalty_gradient(&self, l2: f64, out: &mut [f64]) {
        linear::penalty_gradient(&self.params, l2, out);
    }

    fn loss(&self, x: &Array2<f64>, y: &Array1<f64>) -> Result<f64, ModelError> {
        check_rows(x, y, self.feature_count())?;
        if y.is_empty() {
            return Ok(0.0);
        }
        let mu = self.predict(x)?;
        let total: f64 = mu
            .iter()
            .zip(y)
            .map(|(&m, &t)| self.unit_deviance(t, m) / 2.0)
            .sum();
        Ok(total / y.len() as f64)
    }

    fn evaluate(&self, x: &Array2<f64>, y: &Array1<f64>) -> Result<crate::Evaluation, ModelError> {
        check_rows(x, y, self.feature_count())?;
        let mu = self.predict(x)?;
        Ok(crate::Evaluation::Regression(RegressionPartial::from_rows(
            mu.iter()
                .zip(y)
                .map(|(&m, &t)| (t, m, self.unit_deviance(t, m))),
        )))
    }

    fn export(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        out.insert(
            "family".into(),
            serde_json::to_value(self.family).unwrap_or_default(),
        );
        out.insert("power".into(), self.power.into());
        out.insert(
            "link".into(),
            if self.log_link() { "log" } else { "identity" }.into(),
        );
        out.insert("weights".into(), self.weights().into());
        out.insert("intercept".into(), self.intercept().into());
        out
    }

    fn clone_box(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TrainConfig;
    use crate::sgd;
    use ndarray::{Axis, array};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn families() -> [(GlmFamily, f64); 5] {
        [
            (GlmFamily::Tweedie, 1.5),
            (GlmFamily::Tweedie, 1.2),
            (GlmFamily::Poisson, 1.0),
            (GlmFamily::Gamma, 2.0),
            (GlmFamily::Gaussian, 0.0),
        ]
    }

    #[test]
    fn example_gradient_matches_finite_differences_of_half_the_deviance() {
        let x = array![0.7, -1.3];
        for (family, power) in families() {
            let mut m = GlmModel::zeros(2, family, power);
            m.set_params(&[0.2, -0.1, 0.4]).unwrap();
            for y in [0.5, 2.0, 7.5] {
                let mut g = vec![0.0; 3];
                m.example_gradient(x.view(), y, &mut g).unwrap();
                for k in 0..3 {
                    let h = 1e-6;
                    let at = |d: f64| {
                        let mut p = m.params().to_vec();
                        p[k] += d;
                        let mut q = m.clone();
                        q.set_params(&p).unwrap();
                        q.unit_deviance(y, q.mean(q.eta(x.view()))) / 2.0
                    };
                    let numeric = (at(h) - at(-h)) / (2.0 * h);
                    assert!(
                        (numeric - g[k]).abs() < 1e-6 * (1.0 + numeric.abs()),
                        "{family:?} p={power} y={y} param {k}: {numeric} vs {}",
                        g[k]
                    );
                }
            }
        }
    }

    #[test]
    fn deviance_is_zero_at_the_target_and_positive_elsewhere() {
        for (family, power) in families() {
            let m = GlmModel::zeros(1, family, power);
            for y in [0.3, 4.0, 120.0] {
                assert!(m.unit_deviance(y, y).abs() < 1e-9, "{family:?} at y = μ");
                assert!(m.unit_deviance(y, y * 1.5) > 0.0);
                assert!(m.unit_deviance(y, y / 1.5) > 0.0);
            }
        }
        // Tweedie and Poisson take zero targets (most customers spend nothing later).
        let t = GlmModel::zeros(1, GlmFamily::Tweedie, 1.5);
        assert!(t.unit_deviance(0.0, 2.0).is_finite());
        let p = GlmModel::zeros(1, GlmFamily::Poisson, 1.0);
        assert!((p.unit_deviance(0.0, 2.0) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn sgd_recovers_a_log_linear_mean() {
        // y ~ Poisson-ish around exp(0.8 x0 − 0.5 x1 + 1): the fitted Tweedie and
        // Poisson models recover the coefficients' signs and rough sizes.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 3000;
        let x = Array2::from_shape_fn((n, 2), |_| rng.random_range(-1.0..1.0));
        let y: Array1<f64> = x.map_axis(Axis(1), |r| {
            let mu = (0.8 * r[0] - 0.5 * r[1] + 1.0f64).exp();
            // A gamma-like spread with mean μ: μ · (0.5 + U) with U uniform on [0, 1).
            mu * (0.5 + rng.random::<f64>())
        });
        for (family, power) in [(GlmFamily::Tweedie, 1.5), (GlmFamily::Poisson, 1.0)] {
            let mut m = GlmModel::zeros(2, family, power);
            let cfg = TrainConfig {
                epochs: 40,
                batch_size: 32,
                learning_rate: 0.05,
                l2: 0.0,
            };
            sgd::train(
                &mut m,
                &x,
                &y,
                &cfg,
                None,
                &mut ChaCha8Rng::seed_from_u64(4),
                &mut |_| {},
            )
            .unwrap();
            let p = m.params();
            assert!((p[0] - 0.8).abs() < 0.1, "{family:?}: {p:?}");
            assert!((p[1] + 0.5).abs() < 0.1, "{family:?}: {p:?}");
            assert!((p[2] - 1.0).abs() < 0.15, "{family:?}: {p:?}");
            let crate::Evaluation::Regression(e) = m.evaluate(&x, &y).unwrap() else {
                panic!("a regression model evaluates as regression");
            };
            let metrics = crate::regression_metrics::RegressionMetrics::from_partial(&e);
            assert!(metrics.gini > 0.5, "{family:?}: {metrics:?}");
        }
    }
}
