//! Mini-batch stochastic gradient descent for any [`Model`], optionally with a
//! proximal term (FedProx).
//!
//! Each epoch visits the rows in a fresh order drawn from the caller's RNG, in
//! batches of `batch_size`; each batch takes one step
//!
//! `θ ← θ − η · (mean_batch ∇ℓ(θ) + ∇penalty(θ) + μ (θ − θ_global))`,
//!
//! where the last term is FedProx's proximal gradient (Li et al. 2020, "Federated
//! Optimization in Heterogeneous Networks", MLSys, eq. 2: each partner minimises
//! `F_k(θ) + μ/2 · |θ − θ_global|²`), present only when a proximal anchor is given.

use ndarray::{Array1, Array2};
use rand::RngCore;
use rand::seq::SliceRandom;

use crate::model::{Model, ModelError, TrainConfig, TrainProgress, TrainReport, check_rows};

/// FedProx's proximal term: the global model a partner started from and μ.
#[derive(Debug, Clone, Copy)]
pub struct Proximal<'a> {
    /// The global parameters of the round (wire layout).
    pub anchor: &'a [f64],
    /// μ ≥ 0; 0 is plain local SGD.
    pub mu: f64,
}

/// Checks a training setting; the error names the field.
pub fn check_config(cfg: &TrainConfig) -> Result<(), ModelError> {
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
    Ok(())
}

/// Trains `model` in place on the rows of `x` (standardised) with labels `y`; see the
/// module documentation for the step. `progress` is called after every epoch. Refuses
/// a model that ends with a non-finite parameter ([`ModelError::Diverged`]).
pub fn train(
    model: &mut dyn Model,
    x: &Array2<f64>,
    y: &Array1<f64>,
    cfg: &TrainConfig,
    proximal: Option<Proximal<'_>>,
    rng: &mut dyn RngCore,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<TrainReport, ModelError> {
    check_rows(x, y, model.feature_count())?;
    check_config(cfg)?;
    if let Some(p) = &proximal {
        if p.anchor.len() != model.param_count() {
            return Err(ModelError::Shape(format!(
                "proximal anchor has {} values, the model {}",
                p.anchor.len(),
                model.param_count()
            )));
        }
        if !(p.mu.is_finite() && p.mu >= 0.0) {
            return Err(ModelError::Config(format!(
                "proximal_mu is {}, it must be finite and at least 0",
                p.mu
            )));
        }
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
    let dim = model.param_count();
    let mut grad = vec![0.0; dim];
    let mut order: Vec<usize> = (0..n).collect();
    let lr = cfg.learning_rate;
    for epoch in 1..=cfg.epochs {
        order.shuffle(rng);
        let mut epoch_loss = 0.0;
        for batch in order.chunks(cfg.batch_size) {
            epoch_loss += model.batch_gradient(x, y, batch, &mut grad)?;
            let scale = 1.0 / batch.len() as f64;
            grad.iter_mut().for_each(|g| *g *= scale);
            model.penalty_gradient(cfg.l2, &mut grad);
            let params = model.params_mut();
            match &proximal {
                Some(p) if p.mu > 0.0 => {
                    for ((w, g), a) in params.iter_mut().zip(&grad).zip(p.anchor) {
                        *w -= lr * (g + p.mu * (*w - a));
                    }
                }
                _ => {
                    for (w, g) in params.iter_mut().zip(&grad) {
                        *w -= lr * g;
                    }
                }
            }
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
    if model.params().iter().any(|v| !v.is_finite()) {
        return Err(ModelError::Diverged);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::logistic::LogisticModel;
    use ndarray::Axis;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn data(seed: u64) -> (Array2<f64>, Array1<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = Array2::from_shape_fn((300, 2), |_| rng.random_range(-1.0..1.0));
        let y = x.map_axis(Axis(1), |r| if r[0] > r[1] { 1.0 } else { 0.0 });
        (x, y)
    }

    #[test]
    fn a_large_mu_keeps_the_model_near_its_anchor() {
        let (x, y) = data(3);
        let cfg = TrainConfig {
            epochs: 10,
            batch_size: 10,
            learning_rate: 0.2,
            l2: 0.0,
        };
        let anchor = vec![0.0; 3];
        let distance = |mu: f64| {
            let mut m = LogisticModel::zeros(2);
            let prox = Proximal {
                anchor: &anchor,
                mu,
            };
            train(
                &mut m,
                &x,
                &y,
                &cfg,
                Some(prox),
                &mut ChaCha8Rng::seed_from_u64(4),
                &mut |_| {},
            )
            .unwrap();
            m.params().iter().map(|v| v * v).sum::<f64>().sqrt()
        };
        let free = distance(0.0);
        let held = distance(2.0);
        assert!(free > 1.0, "plain SGD moves: {free}");
        assert!(
            held < 0.5 * free,
            "μ = 2 holds the model near 0: {held} vs {free}"
        );
    }

    #[test]
    fn mu_zero_is_plain_sgd_and_bad_settings_are_named() {
        let (x, y) = data(5);
        let cfg = TrainConfig {
            epochs: 3,
            batch_size: 7,
            learning_rate: 0.3,
            l2: 0.01,
        };
        let run = |prox: Option<Proximal<'_>>| {
            let mut m = LogisticModel::zeros(2);
            train(
                &mut m,
                &x,
                &y,
                &cfg,
                prox,
                &mut ChaCha8Rng::seed_from_u64(6),
                &mut |_| {},
            )
            .unwrap();
            m.params().to_vec()
        };
        let anchor = vec![1.0; 3];
        assert_eq!(
            run(None),
            run(Some(Proximal {
                anchor: &anchor,
                mu: 0.0
            }))
        );
        let mut m = LogisticModel::zeros(2);
        let bad = Proximal {
            anchor: &anchor,
            mu: -1.0,
        };
        let err = train(
            &mut m,
            &x,
            &y,
            &cfg,
            Some(bad),
            &mut ChaCha8Rng::seed_from_u64(6),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("proximal_mu"), "{err}");
    }
}
