//! DP-FedAvg (partner unit, noise added locally).

use consortia_dp::mechanism::privatize_partner_update;
use consortia_dp::{DpEvent, PrivacySpec};

use super::{
    Contribution, ContributionKind, DeltaUpdate, LocalSgd, LocalUpdate, RoundInput, dp_error,
};
use crate::AgentError;

/// DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
/// Language Models", Alg. 1): the partner's ordinary local update `L` — local SGD
/// ([`LocalSgd`], FedProx included), or a matrix factorisation's ALS item step
/// ([`super::MfAls`]) — then its model delta is clipped to L2 norm C and N(0, z²C²) is
/// added to every coordinate. Sends the noised delta, weighted in the coordinator's
/// average by the partner's published training-row count as every delta is.
///
/// Privacy map: one `Gaussian { z }` event per round (sensitivity C of the clipped
/// delta under replacing the partner's whole dataset), whatever `L` is: `L` spends
/// nothing of its own ([`DeltaUpdate`]).
#[derive(Debug, Clone)]
pub struct DpFedAvg<L = LocalSgd> {
    spec: PrivacySpec,
    local: L,
}

impl<L: DeltaUpdate> DpFedAvg<L> {
    /// DP-FedAvg under `spec` (partner unit, local placement) around `local`.
    pub fn new(spec: PrivacySpec, local: L) -> Self {
        Self { spec, local }
    }
}

impl<L: DeltaUpdate> LocalUpdate for DpFedAvg<L> {
    fn name(&self) -> &'static str {
        "dp-fedavg"
    }

    fn events(&self, rows: usize) -> Result<Vec<(DpEvent, u64)>, AgentError> {
        self.spec
            .validate_for_rows(rows.max(1))
            .map_err(dp_error("private training"))?;
        Ok(vec![(
            DpEvent::Gaussian {
                noise_multiplier: self.spec.noise_multiplier,
            },
            1,
        )])
    }

    fn compute(&self, input: RoundInput<'_>) -> Result<Contribution, AgentError> {
        let mut delta = self.local.delta(input)?;
        privatize_partner_update(&mut delta, self.spec.clip_norm, self.spec.noise_multiplier)
            .map_err(dp_error("private training"))?;
        Ok(Contribution {
            vector: delta,
            kind: ContributionKind::Delta,
            loss: None,
        })
    }
}
