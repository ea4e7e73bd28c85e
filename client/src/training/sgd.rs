//! Plain local SGD, and FedProx when μ > 0.

use consortia_model::{TrainConfig, TrainReport, sgd};
use rand::SeedableRng;

use super::{
    Contribution, ContributionKind, DeltaUpdate, LocalUpdate, RoundInput, difference, model_error,
};
use crate::AgentError;
use consortia_dp::DpEvent;

/// `local_epochs` of mini-batch SGD from the global model
/// ([`consortia_model::sgd::train`]); with `proximal_mu > 0`, FedProx (Li et al. 2020,
/// "Federated Optimization in Heterogeneous Networks", eq. 2): each step also pulls
/// the parameters towards the round's global model by `μ (θ − θ_global)`. Sends the
/// delta. Spends no privacy budget of its own.
#[derive(Debug, Clone)]
pub struct LocalSgd {
    cfg: TrainConfig,
    mu: f64,
}

impl LocalSgd {
    /// Local SGD with the task's settings and proximal weight `mu` (0: plain SGD).
    pub fn new(cfg: TrainConfig, mu: f64) -> Self {
        Self { cfg, mu }
    }

    /// Trains a copy of the global model; returns its delta and the training report.
    pub(super) fn train(
        &self,
        input: RoundInput<'_>,
    ) -> Result<(Vec<f64>, TrainReport), AgentError> {
        let mut local = input.global.clone_box();
        let anchor = input.global.params();
        let proximal = (self.mu > 0.0).then_some(sgd::Proximal {
            anchor,
            mu: self.mu,
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(input.seed);
        let report = sgd::train(
            local.as_mut(),
            input.x,
            input.y,
            &self.cfg,
            proximal,
            &mut rng,
            input.progress,
        )
        .map_err(model_error("local training failed"))?;
        Ok((difference(local.params(), anchor), report))
    }
}

impl LocalUpdate for LocalSgd {
    fn name(&self) -> &'static str {
        if self.mu > 0.0 { "fedprox" } else { "sgd" }
    }

    fn events(&self, _rows: usize) -> Result<Vec<(DpEvent, u64)>, AgentError> {
        Ok(Vec::new())
    }

    fn compute(&self, input: RoundInput<'_>) -> Result<Contribution, AgentError> {
        let (delta, report) = self.train(input)?;
        Ok(Contribution {
            vector: delta,
            kind: ContributionKind::Delta,
            loss: Some(report.mean_loss),
        })
    }
}

impl DeltaUpdate for LocalSgd {
    fn delta(&self, input: RoundInput<'_>) -> Result<Vec<f64>, AgentError> {
        self.train(input).map(|(delta, _)| delta)
    }
}
