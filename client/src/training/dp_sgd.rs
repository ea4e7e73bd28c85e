//! DP-SGD on the partner's rows (record unit, noise added locally).

use consortia_dp::mechanism::DpSgdStep;
use consortia_dp::{DpEvent, PrivacySpec};
use consortia_model::TrainConfig;

use super::{
    Contribution, ContributionKind, LocalUpdate, RoundInput, difference, dp_error, model_error,
};
use crate::AgentError;

/// DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", Alg. 1) in
/// federated form: each of `steps_per_round` steps Poisson-samples this partner's rows
/// with rate q, clips every per-example gradient ([`consortia_model::Model::example_gradient`])
/// to C, adds N(0, z²C²) to the sum, divides by the expected batch q·n, adds the
/// model's penalty gradient and, with `[local] proximal_mu > 0`, FedProx's proximal
/// gradient `μ (θ − θ_global)`, and steps with the task's learning rate. Sends the
/// delta. The penalty and proximal terms depend on no row, so adding them after the
/// noise is post-processing and changes nothing in the privacy map.
///
/// Privacy map: one `PoissonSampledGaussian { q, z }` event per step
/// ([`DpSgdStep::event`]), `steps_per_round` per round.
#[derive(Debug, Clone)]
pub struct DpSgd {
    spec: PrivacySpec,
    cfg: TrainConfig,
    mu: f64,
}

impl DpSgd {
    /// DP-SGD under `spec` (record unit, local placement) with the task's settings
    /// and proximal weight `mu` (0: none).
    pub fn new(spec: PrivacySpec, cfg: TrainConfig, mu: f64) -> Self {
        Self { spec, cfg, mu }
    }

    fn step(&self) -> DpSgdStep {
        DpSgdStep {
            clip_norm: self.spec.clip_norm,
            noise_multiplier: self.spec.noise_multiplier,
            sampling_rate: self.spec.sampling_rate.unwrap_or(1.0),
        }
    }
}

impl LocalUpdate for DpSgd {
    fn name(&self) -> &'static str {
        "dp-sgd"
    }

    fn events(&self, rows: usize) -> Result<Vec<(DpEvent, u64)>, AgentError> {
        self.spec
            .validate_for_rows(rows.max(1))
            .map_err(dp_error("private training"))?;
        Ok(vec![(self.step().event(), self.spec.steps_per_round)])
    }

    fn compute(&self, input: RoundInput<'_>) -> Result<Contribution, AgentError> {
        let step = self.step();
        let mut model = input.global.clone_box();
        let (x, y) = (input.x, input.y);
        let n = x.nrows();
        let dim = model.param_count();
        let lr = self.cfg.learning_rate;
        for _ in 0..self.spec.steps_per_round {
            let current = model.as_ref();
            let mut g = step
                .noisy_gradient(n, dim, |i| {
                    let mut g = vec![0.0; dim];
                    // A row the model cannot score contributes nothing (its
                    // gradient is zero, which clipping keeps).
                    if current.example_gradient(x.row(i), y[i], &mut g).is_err() {
                        g.iter_mut().for_each(|v| *v = 0.0);
                    }
                    g
                })
                .map_err(dp_error("private training"))?;
            model.penalty_gradient(self.cfg.l2, &mut g);
            let anchor = input.global.params();
            for ((w, gj), a) in model.params_mut().iter_mut().zip(&g).zip(anchor) {
                *w -= lr * (gj + self.mu * (*w - a));
            }
        }
        if model.params().iter().any(|v| !v.is_finite()) {
            return Err(AgentError::Data(
                "private training diverged to a non-finite parameter; lower the learning rate"
                    .into(),
            ));
        }
        let loss = model.loss(x, y).map_err(model_error("private training"))?;
        (input.progress)(consortia_model::TrainProgress {
            epoch: 1,
            epochs: 1,
            mean_loss: loss,
            steps: self.spec.steps_per_round,
        });
        Ok(Contribution {
            vector: difference(model.params(), input.global.params()),
            kind: ContributionKind::Delta,
            loss: None,
        })
    }
}
