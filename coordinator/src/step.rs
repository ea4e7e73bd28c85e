//! The server step: a training round's aggregate, as the FedAvg delta at the
//! global model, stepped by the task's server strategy into the next global
//! model, committed to the store together with the round's record and the
//! strategy's state.

use consortia_model::strategy::Strategy;
use consortia_model::{AggregatedUpdate, TaskSpec};

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
    let stop = |e: String| CoordinatorError::Stopped(e);
    let model = consortia_model::model_with_params(task, global)
        .map_err(|e| CoordinatorError::Corrupt(format!("the global model: {e}")))?;
    let delta = update
        .model_delta(model.as_ref(), &task.train_config())
        .map_err(|e| stop(format!("the round's aggregate is unusable: {e}")))?;
    strategy
        .aggregate(global, &delta)
        .map_err(|e| stop(e.to_string()))
}

/// Steps the global model with `result`'s aggregate `update` and commits the
/// round: the new model, the round's record and the strategy's state, together.
pub fn commit(
    task: &TaskSpec,
    store: &Store,
    strategy: &mut dyn Strategy,
    global: &[f64],
    result: &RoundResult,
    update: &AggregatedUpdate,
) -> Result<(), CoordinatorError> {
    let new_model = server_step(task, strategy, global, update)?;
    let rec = RoundRecord {
        round: result.round,
        participants: result.contributors.clone(),
        examples: result.examples,
        train_loss: result.train_loss.is_finite().then_some(result.train_loss),
        completed_unix_ms: now_ms(),
    };
    store.commit_round(&rec, &new_model, &strategy.checkpoint())
}
