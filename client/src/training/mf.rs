//! The local updates of a matrix factorisation ([`consortia_model::models::mf`]):
//! alternating least squares, and, when the task is private, DP-SGD over users (record
//! unit) or the ALS item step's delta clipped and noised by the partner-unit wrappers.
//!
//! Every one fits the partner's own users first, in closed form (the ALS user step,
//! exact ridge solutions given the round's global item part); those user factors and
//! biases stay in this process. Only the item part's update — global mean, item biases
//! and item factors — is returned.

use consortia_dp::mechanism::DpSgdStep;
use consortia_dp::{DpEvent, NoisePlacement, PrivacySpec, PrivacyUnit};
use consortia_model::models::mf::{MfModel, TrainRatings};
use consortia_model::{TaskSpec, TrainProgress};

use super::{
    Contribution, ContributionKind, DeltaUpdate, Distributed, DpFedAvg, LocalUpdate, RoundInput,
    difference, dp_error,
};
use crate::AgentError;

/// The local update a matrix factorisation task asks for:
///
/// * no `[privacy]`: [`MfAls`];
/// * record unit (one user and all their ratings), local placement: [`MfDpSgd`];
/// * partner unit, local placement: [`DpFedAvg`] around [`MfAls`] (the item step's
///   delta clipped to C, N(0, z²C²) added);
/// * partner unit, distributed placement: [`Distributed`] around [`MfAls`] (the item
///   step's delta, clipped and given its noise share when it is encoded).
///
/// Record unit with distributed placement is refused: there the coordinator turns the
/// decrypted sum into one gradient step, dividing by the declared training rows (here
/// ratings, while this model's record is a user) and adding the task's `l2` penalty
/// per row (here the ALS ridge λ of a whole item), so the step would be mis-scaled.
pub(super) fn build(
    task: &TaskSpec,
    spec: Option<&PrivacySpec>,
) -> Result<Box<dyn LocalUpdate>, AgentError> {
    let Some(s) = spec else {
        return Ok(Box::new(MfAls::new(task.clone())));
    };
    let als = || MfAls::new(task.clone());
    match (s.unit, s.placement) {
        (PrivacyUnit::Record, NoisePlacement::Local) => {
            Ok(Box::new(MfDpSgd::new(task.clone(), s.clone())))
        }
        (PrivacyUnit::Partner, NoisePlacement::Local) => {
            Ok(Box::new(DpFedAvg::new(s.clone(), als())))
        }
        (PrivacyUnit::Partner, NoisePlacement::Distributed) => {
            Ok(Box::new(Distributed::new(s.clone(), als())))
        }
        (PrivacyUnit::Record, NoisePlacement::Distributed) => Err(AgentError::Task(
            "a matrix_factorization trains under [privacy] with unit = \"record\" (one user \
             and all their ratings) and placement = \"local\", or with unit = \"partner\" and \
             placement = \"local\" or \"distributed\"; this task asks for unit = \"record\" \
             with placement = \"distributed\", whose one gradient step per round is scaled \
             for rows of a table, not for users: use placement = \"local\" for user-level DP, \
             or unit = \"partner\" for distributed DP"
                .into(),
        )),
    }
}

fn ratings<'a>(input: &RoundInput<'a>) -> Result<&'a TrainRatings, AgentError> {
    input.ratings.ok_or_else(|| {
        AgentError::Data(
            "a matrix factorisation trains on ratings; this partner's data has none".into(),
        )
    })
}

fn global(task: &TaskSpec, input: &RoundInput<'_>) -> Result<MfModel, AgentError> {
    MfModel::from_task(task, input.global.params())
        .map_err(|e| AgentError::Protocol(format!("global model: {e}")))
}

/// Alternating least squares across the federation: the exact user step on this
/// partner's users, then the local solution of the item step on this partner's ratings,
/// sent as a delta from the global item part (`MfModel::local_item_delta`), weighted
/// by this partner's training ratings in the coordinator's average. `model.l2` is the
/// ridge λ of both steps. Spends no privacy budget of its own; as a [`DeltaUpdate`]
/// it is what partner-unit DP clips and noises.
#[derive(Debug, Clone)]
pub struct MfAls {
    task: TaskSpec,
}

impl MfAls {
    /// ALS for `task` (a matrix factorisation).
    pub fn new(task: TaskSpec) -> Self {
        Self { task }
    }

    /// The item part's delta and the partner's mean training loss (per rating, at
    /// the fitted users and the global item part), after reporting it to `progress`.
    fn item_delta(&self, input: RoundInput<'_>) -> Result<(Vec<f64>, f64), AgentError> {
        let train = ratings(&input)?;
        let model = global(&self.task, &input)?;
        let lambda = self.task.model.l2;
        let users = model.solve_users(train, lambda);
        let delta = model.local_item_delta(train, &users, lambda);
        let mut g = Vec::new();
        let loss: f64 = (0..train.users())
            .map(|u| model.user_gradient(train, &users, u, &mut g))
            .sum::<f64>()
            / train.rows.max(1) as f64;
        (input.progress)(TrainProgress {
            epoch: 1,
            epochs: 1,
            mean_loss: loss,
            steps: 1,
        });
        Ok((delta, loss))
    }
}

impl LocalUpdate for MfAls {
    fn name(&self) -> &'static str {
        "mf-als"
    }

    fn events(&self, _rows: usize) -> Result<Vec<(DpEvent, u64)>, AgentError> {
        Ok(Vec::new())
    }

    fn compute(&self, input: RoundInput<'_>) -> Result<Contribution, AgentError> {
        let (delta, loss) = self.item_delta(input)?;
        Ok(Contribution {
            vector: delta,
            kind: ContributionKind::Delta,
            loss: Some(loss),
        })
    }
}

impl DeltaUpdate for MfAls {
    fn delta(&self, input: RoundInput<'_>) -> Result<Vec<f64>, AgentError> {
        self.item_delta(input).map(|(delta, _)| delta)
    }
}

/// DP-SGD over users (Abadi et al. 2016, Alg. 1, with one user — all their ratings —
/// as the record; McMahan et al. 2018, "Learning Differentially Private Recurrent
/// Language Models", for user-level clipping): the user step first (exact, local,
/// never released), then `steps_per_round` steps that each Poisson-sample users with
/// rate q, clip each sampled user's gradient of the item part
/// (`MfModel::user_gradient`) to C, add N(0, z²C²) to the sum, divide by the expected
/// batch q·users, add the penalty `model.l2 · θ` of the item biases and factors and
/// step with the task's learning rate. Sends the delta.
///
/// Privacy map: one `PoissonSampledGaussian { q, z }` event per step, as DP-SGD
/// (`steps_per_round` per round), with users as the rows: adding or removing a user
/// changes the clipped sum by at most C.
#[derive(Debug, Clone)]
pub struct MfDpSgd {
    task: TaskSpec,
    spec: PrivacySpec,
}

impl MfDpSgd {
    /// DP-SGD over users for `task` under `spec` (record unit, local placement).
    pub fn new(task: TaskSpec, spec: PrivacySpec) -> Self {
        Self { task, spec }
    }

    fn step(&self) -> DpSgdStep {
        DpSgdStep {
            clip_norm: self.spec.clip_norm,
            noise_multiplier: self.spec.noise_multiplier,
            sampling_rate: self.spec.sampling_rate.unwrap_or(1.0),
        }
    }
}

impl LocalUpdate for MfDpSgd {
    fn name(&self) -> &'static str {
        "mf-dp-sgd-users"
    }

    fn events(&self, rows: usize) -> Result<Vec<(DpEvent, u64)>, AgentError> {
        self.spec
            .validate_for_rows(rows.max(1))
            .map_err(dp_error("private training"))?;
        Ok(vec![(self.step().event(), self.spec.steps_per_round)])
    }

    fn compute(&self, input: RoundInput<'_>) -> Result<Contribution, AgentError> {
        let train = ratings(&input)?;
        let start = global(&self.task, &input)?;
        let lambda = self.task.model.l2;
        let users = start.solve_users(train, lambda);
        let step = self.step();
        let lr = self.task.learning_rate;
        let mut model = start.clone();
        let dim = consortia_model::Model::param_count(&model);
        let mut sparse = Vec::new();
        for _ in 0..self.spec.steps_per_round {
            let current = &model;
            let mut g = step
                .noisy_gradient(train.users(), dim, |u| {
                    current.user_gradient(train, &users, u, &mut sparse);
                    let mut dense = vec![0.0; dim];
                    for &(i, v) in &sparse {
                        dense[i] += v;
                    }
                    dense
                })
                .map_err(dp_error("private training"))?;
            // The ridge penalty λ|θ|²/2 of the whole partner, in the units of the
            // per-user mean gradient.
            let l2 = lambda / train.users().max(1) as f64;
            consortia_model::Model::penalty_gradient(&model, l2, &mut g);
            let params = consortia_model::Model::params_mut(&mut model);
            params.iter_mut().zip(&g).for_each(|(w, gj)| *w -= lr * gj);
        }
        let params = consortia_model::Model::params(&model);
        if params.iter().any(|v| !v.is_finite()) {
            return Err(AgentError::Data(
                "private training diverged to a non-finite parameter; lower the learning rate"
                    .into(),
            ));
        }
        (input.progress)(TrainProgress {
            epoch: 1,
            epochs: 1,
            mean_loss: f64::NAN,
            steps: self.spec.steps_per_round,
        });
        Ok(Contribution {
            vector: difference(params, consortia_model::Model::params(&start)),
            kind: ContributionKind::Delta,
            loss: None,
        })
    }
}
