//! The server step: a training round's aggregate, as the FedAvg delta at the
//! global model, stepped by the task's server strategy into the next global
//! model, committed to the store together with the round's record and the
//! strategy's state.

use consortia_model::strategy::Strategy;
use consortia_model::{AggregateError, AggregatedUpdate, StrategyError, TaskSpec};

use crate::CoordinatorError;
use crate::report::now_ms;
use crate::round::RoundResult;
use crate::store::{RoundRecord, Store};

/// The task's server strategy, resumed from the state committed with the last round.
pub fn restore_strategy(
    task: &TaskSpec,
    store: &Store,
) -> Result<Box<dyn Strategy>, CoordinatorError> {
    let mut strategy = consortia_model::strategy::build(&task.strategy);
    strategy
        .restore(&store.strategy_state()?)
        .map_err(|e| CoordinatorError::Corrupt(e.to_string()))?;
    tracing::info!(
        strategy = strategy.kind(),
        "server strategy {} (from [strategy])",
        strategy.kind()
    );
    Ok(strategy)
}

/// The next global parameters: the round's aggregate as the FedAvg delta at the
/// global model ([`AggregatedUpdate::model_delta`]), stepped by the server strategy.
/// A step that cannot be taken stops the task: rerunning the round would produce the
/// same aggregate and fail again.
pub fn server_step(
    task: &TaskSpec,
    strategy: &mut dyn Strategy,
    global: &[f64],
    update: &AggregatedUpdate,
) -> Result<Vec<f64>, CoordinatorError> {
    step_model(task, strategy, global, update)?.map_err(CoordinatorError::Stopped)
}

/// [`server_step`], with an aggregate (or a stepped model) that is not finite
/// told apart: `Ok(Err(why))`, a failure of the round rather than of the task
/// (partners may train differently next time; the retries are bounded). The
/// strategy's state is left as it was before a step that failed.
pub fn step_model(
    task: &TaskSpec,
    strategy: &mut dyn Strategy,
    global: &[f64],
    update: &AggregatedUpdate,
) -> Result<Result<Vec<f64>, String>, CoordinatorError> {
    let model = consortia_model::model_with_params(task, global)
        .map_err(|e| CoordinatorError::Corrupt(format!("the global model: {e}")))?;
    let delta = match update.model_delta(model.as_ref(), &task.train_config()) {
        Ok(delta) => delta,
        Err(e @ AggregateError::NonFinite { .. }) => {
            return Ok(Err(format!("the round's aggregate is unusable: {e}")));
        }
        Err(e) => {
            return Err(CoordinatorError::Stopped(format!(
                "the round's aggregate is unusable: {e}"
            )));
        }
    };
    let saved = strategy.checkpoint();
    let next = match strategy.aggregate(global, &delta) {
        Ok(next) => next,
        Err(e) => {
            strategy
                .restore(&saved)
                .map_err(|e| CoordinatorError::Corrupt(format!("the strategy's state: {e}")))?;
            return match e {
                StrategyError::NonFinite { .. } => Ok(Err(e.to_string())),
                e => Err(CoordinatorError::Stopped(e.to_string())),
            };
        }
    };
    if let Some(i) = next.iter().position(|v| !v.is_finite()) {
        strategy
            .restore(&saved)
            .map_err(|e| CoordinatorError::Corrupt(format!("the strategy's state: {e}")))?;
        return Ok(Err(format!(
            "the stepped model's parameter {i} is {}, not a finite number",
            next[i]
        )));
    }
    Ok(Ok(next))
}

/// Steps the global model with `result`'s aggregate `update` and commits the
/// round: the new model, the round's record and the strategy's state, together.
/// `Ok(Err(why))`: the aggregate or the stepped model is not finite; nothing is
/// written and the round fails (see [`step_model`]).
pub fn commit(
    task: &TaskSpec,
    store: &Store,
    strategy: &mut dyn Strategy,
    global: &[f64],
    result: &RoundResult,
    update: &AggregatedUpdate,
) -> Result<Result<(), String>, CoordinatorError> {
    let new_model = match step_model(task, strategy, global, update)? {
        Ok(m) => m,
        Err(why) => return Ok(Err(why)),
    };
    let rec = RoundRecord {
        round: result.round,
        participants: result.contributors.clone(),
        examples: result.examples,
        train_loss: result.train_loss.is_finite().then_some(result.train_loss),
        completed_unix_ms: now_ms(),
    };
    store
        .commit_round(&rec, &new_model, &strategy.checkpoint())
        .map(Ok)
}
