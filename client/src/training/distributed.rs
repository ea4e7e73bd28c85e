//! The vectors that distributed DP encodes (noise shares are added at encoding).

use consortia_dp::{DpEvent, PrivacySpec, PrivacyUnit};

use super::{
    Contribution, ContributionKind, DeltaUpdate, LocalSgd, LocalUpdate, RoundInput, dp_error,
};
use crate::AgentError;

/// Distributed DP (Kairouz, Liu and Steinke 2021, "The Distributed Discrete Gaussian
/// Mechanism for Federated Learning with Secure Aggregation"): this update computes
/// the vector; clipping to C, the partner's noise share and the modular encoding are
/// applied by `UpdateEncoding::encode_ddg` just before encryption, so nothing here
/// leaves unencrypted.
///
/// * record unit: the sum over every training row of its loss gradient at the global
///   model, each clipped to C (Abadi et al. 2016, Alg. 1 with q = 1) — one
///   full-batch DP-SGD step of the federation per round (taken at the global model,
///   where FedProx's proximal gradient is zero, so `proximal_mu` changes nothing);
///   tabular models only, since a row is a row of `x` (a matrix factorisation refuses
///   this combination when the task is built);
/// * partner unit: the delta of the partner's ordinary local update `L` (local SGD,
///   [`LocalSgd`], or a matrix factorisation's ALS item step, [`super::MfAls`]), summed
///   with unit weights.
///
/// Privacy map: the round's DDG event (`DdgParams::round_event`, from the spec's
/// distributed shape: update length, `n_min` and colluders), once per round.
#[derive(Debug, Clone)]
pub struct Distributed<L = LocalSgd> {
    spec: PrivacySpec,
    local: L,
}

impl<L: DeltaUpdate> Distributed<L> {
    /// Distributed DP under `spec` (distributed placement, shape set) around `local`.
    pub fn new(spec: PrivacySpec, local: L) -> Self {
        Self { spec, local }
    }
}

impl<L: DeltaUpdate> LocalUpdate for Distributed<L> {
    fn name(&self) -> &'static str {
        match self.spec.unit {
            PrivacyUnit::Record => "ddg-record",
            PrivacyUnit::Partner => "ddg-partner",
        }
    }

    fn events(&self, rows: usize) -> Result<Vec<(DpEvent, u64)>, AgentError> {
        let err = dp_error("distributed DP");
        self.spec.validate_for_rows(rows.max(1)).map_err(&err)?;
        let shape = self.spec.distributed_shape.ok_or_else(|| {
            AgentError::Task(
                "distributed DP needs the update length, n_min and colluders of the task".into(),
            )
        })?;
        let params = self
            .spec
            .ddg_params(shape.dim, shape.n_min, shape.colluders, 62)
            .map_err(&err)?;
        Ok(vec![(params.round_event(), 1)])
    }

    fn compute(&self, input: RoundInput<'_>) -> Result<Contribution, AgentError> {
        match self.spec.unit {
            PrivacyUnit::Record => {
                let (global, x, y) = (input.global, input.x, input.y);
                let dim = global.param_count();
                let mut sum = vec![0.0; dim];
                let mut g = vec![0.0; dim];
                for i in 0..x.nrows() {
                    global
                        .example_gradient(x.row(i), y[i], &mut g)
                        .map_err(|e| AgentError::Data(format!("gradient of row {i}: {e}")))?;
                    consortia_dp::clip_l2(&mut g, self.spec.clip_norm);
                    sum.iter_mut().zip(&g).for_each(|(s, v)| *s += v);
                }
                Ok(Contribution {
                    vector: sum,
                    kind: ContributionKind::GradientSum,
                    loss: None,
                })
            }
            PrivacyUnit::Partner => {
                let delta = self.local.delta(input)?;
                Ok(Contribution {
                    vector: delta,
                    kind: ContributionKind::ClippedDelta,
                    loss: None,
                })
            }
        }
    }
}
