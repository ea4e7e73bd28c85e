//! The partner's local update: what it computes on its training rows each round.
//!
//! Every way of computing an update is one [`LocalUpdate`]: plain local SGD and
//! FedProx ([`LocalSgd`]), DP-SGD ([`DpSgd`]), DP-FedAvg ([`DpFedAvg`]), the
//! vectors that distributed DP encodes ([`Distributed`]), and a matrix factorisation's
//! alternating least squares ([`MfAls`]) and DP-SGD over users ([`MfDpSgd`]). The
//! partner-unit wrappers ([`DpFedAvg`], [`Distributed`]) clip and noise the delta of
//! any non-private [`DeltaUpdate`] (local SGD or a matrix factorisation's ALS). Each
//! states the DP events one round of it spends ([`LocalUpdate::events`], OpenDP
//! style: a mechanism comes with its privacy map), and the agent charges exactly
//! those events to the partner's ledger before the round's rows are touched. [`build`] is the one place
//! that chooses the update from the task (its `[privacy]` and `[local]` tables).

mod distributed;
mod dp_fedavg;
mod dp_sgd;
mod mf;
mod sgd;

use consortia_dp::{DpEvent, NoisePlacement, PrivacySpec, PrivacyUnit};
use consortia_model::{Model, TaskSpec, TrainProgress};
use ndarray::{Array1, Array2};

pub use distributed::Distributed;
pub use dp_fedavg::DpFedAvg;
pub use dp_sgd::DpSgd;
pub use mf::{MfAls, MfDpSgd};
pub use sgd::LocalSgd;

use crate::AgentError;

/// What a contribution's vector is, and so how the coordinator combines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContributionKind {
    /// Local parameters minus the global ones, weighted by the partner's rows
    /// when aggregated.
    Delta,
    /// A delta to be clipped and noised under distributed DP (partner unit): summed
    /// with unit weights.
    ClippedDelta,
    /// The sum over training rows of per-example gradients at the global model,
    /// to be clipped per row and noised under distributed DP (record unit).
    GradientSum,
}

/// One round's contribution from this partner.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// The vector, in the model's wire layout.
    pub vector: Vec<f64>,
    /// What it is.
    pub kind: ContributionKind,
    /// Mean training loss for the partner's own display; `None` when it must not
    /// leave the partner (any private update: it is computed on rows without noise).
    pub loss: Option<f64>,
}

/// The inputs of one round's local work.
pub struct RoundInput<'a> {
    /// The global model the round starts from.
    pub global: &'a dyn Model,
    /// Standardised training rows.
    pub x: &'a Array2<f64>,
    /// Their labels.
    pub y: &'a Array1<f64>,
    /// A matrix factorisation's training ratings (then `x` and `y` are empty); `None`
    /// for every other model.
    pub ratings: Option<&'a consortia_model::models::mf::TrainRatings>,
    /// Seed of this round's randomness (batch order): the task's seed, the partner
    /// and the round.
    pub seed: u64,
    /// Called after each local epoch.
    pub progress: &'a mut dyn FnMut(TrainProgress),
}

/// A way of computing a partner's round update (see the module documentation).
pub trait LocalUpdate: Send + Sync {
    /// A short name for logs: `sgd`, `fedprox`, `dp-sgd`, `dp-fedavg`, `ddg-record`,
    /// `ddg-partner`.
    fn name(&self) -> &'static str;

    /// The DP events one round spends for a partner with `rows` training rows, each
    /// with its count; empty for an update that releases without DP.
    fn events(&self, rows: usize) -> Result<Vec<(DpEvent, u64)>, AgentError>;

    /// Computes the round's contribution. Private rows stay here; the returned vector
    /// is what the agent sends (in the clear or encrypted).
    fn compute(&self, input: RoundInput<'_>) -> Result<Contribution, AgentError>;
}

/// A non-private local update whose result is a model delta (local parameters minus
/// the global ones, in the model's wire layout): what the partner-unit wrappers
/// [`DpFedAvg`] and [`Distributed`] clip and noise. It spends no privacy budget of
/// its own; the wrapper's events are the whole charge.
pub trait DeltaUpdate: Send + Sync {
    /// The round's delta, before any clipping or noise. It never leaves the partner
    /// as it is.
    fn delta(&self, input: RoundInput<'_>) -> Result<Vec<f64>, AgentError>;
}

/// The local update the task asks for. `spec` is the task's checked `[privacy]`
/// (with its distributed shape set for distributed placement); `secure` says whether
/// the round is summed under encryption (distributed DP needs it).
pub fn build(
    task: &TaskSpec,
    spec: Option<&PrivacySpec>,
) -> Result<Box<dyn LocalUpdate>, AgentError> {
    if task.model.kind == consortia_model::ModelKind::MatrixFactorization {
        return mf::build(task, spec);
    }
    let local = LocalSgd::new(task.train_config(), task.local.proximal_mu);
    Ok(match spec {
        None => Box::new(local),
        Some(s) if s.placement == NoisePlacement::Distributed => {
            Box::new(Distributed::new(s.clone(), local))
        }
        Some(s) => match s.unit {
            PrivacyUnit::Record => Box::new(DpSgd::new(
                s.clone(),
                task.train_config(),
                task.local.proximal_mu,
            )),
            PrivacyUnit::Partner => Box::new(DpFedAvg::new(s.clone(), local)),
        },
    })
}

/// `a − b`, element by element.
fn difference(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn dp_error(what: &str) -> impl Fn(consortia_dp::DpError) -> AgentError + '_ {
    move |e| AgentError::Data(format!("{what}: {e}"))
}

fn model_error(what: &str) -> impl Fn(consortia_model::ModelError) -> AgentError + '_ {
    move |e| AgentError::Data(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests;
