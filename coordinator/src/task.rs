//! The task loop: agree on standardisation, make (or load) the federation
//! key, then round after round select → collect → (decrypt) → step the
//! global model, until the task's rounds and final evaluation are done. Each
//! phase is in [`crate::phase`]; this loop only decides what comes next from
//! each round's typed [`RoundEnd`].

use std::sync::Arc;
use std::time::Duration;

use consortia_dp::DP_SCORE_BINS;
use consortia_model::metrics::SCORE_BINS;

use crate::CoordinatorError;
use crate::accounting::Accounting;
use crate::hub::Hub;
use crate::phase::collection::{self, RoundSpec, prepare_secure_round};
use crate::phase::{decryption, key_ceremony, standardization};
use crate::report::{self, TaskSummary};
use crate::retry::Attempts;
use crate::round::{Discard, RoundEnd};
use crate::selection::{self, Choice, Releases, Selector};
use crate::store::Store;
use crate::{incident, step};

/// Runs the task to completion (or until the process is stopped).
pub async fn run_task(
    hub: Arc<Hub>,
    store: Arc<Store>,
    mut accounting: Option<Accounting>,
) -> Result<TaskSummary, CoordinatorError> {
    let task = hub.task.clone();
    let total = u64::from(task.rounds);
    let min = task.min_partners as usize;
    let deadline = Duration::from_secs(task.round_deadline_secs);
    // A stored model that is not finite stops the start (naming its file and round).
    store.model(store.last_round()?)?;
    let max_attempts = task.round_attempts();
    let standardizer = standardization::agreed(
        &hub,
        &store,
        min,
        deadline,
        max_attempts,
        accounting.as_mut(),
    )
    .await?;
    let mut last = store.last_round()?;
    if last > 0 {
        tracing::info!(
            last_completed = last,
            "resuming after the last completed round"
        );
    }
    // The checked privacy settings, as the accounting holds them.
    let privacy_spec = accounting.as_ref().map(|a| a.book.spec().clone());
    accounting
        .iter()
        .for_each(|acc| hub.telemetry.privacy(&hub, acc));
    // Under [privacy] partners release only the scheduled evaluations
    // (`PrivacySpec::evaluates`, which they apply too), as noised coarse histograms
    // (classifiers) or noised sums of clipped terms (regression, recommendation);
    // without it every round's input model is evaluated exactly.
    let eval_bins = if privacy_spec.is_some() {
        DP_SCORE_BINS
    } else {
        SCORE_BINS
    };
    let mut fed_key = key_ceremony::start(&hub, &store, last + 1, min, deadline).await?;
    let mut strategy = step::restore_strategy(&task, &store)?;
    let mut selector = Selector::default();
    let mut attempts = Attempts::new(max_attempts, deadline);
    report::print_task_table_header(&task);
    loop {
        let train = last < total;
        let evaluate = privacy_spec
            .as_ref()
            .is_none_or(|s| s.evaluates(last, train));
        if !train && (!evaluate || store.metrics(last)?.is_some()) {
            break;
        }
        let model = store
            .model(last)?
            .ok_or_else(|| CoordinatorError::Corrupt(format!("model of round {last} missing")))?;
        hub.wait_for_partners(min).await;
        hub.drop_revoked();
        // Too few key holders reachable for too long: a new key, between rounds.
        if let Some(key) = &fed_key
            && let Some(new) =
                key_ceremony::renew_if_holders_unreachable(&hub, &store, key, min, deadline).await?
        {
            fed_key = Some(new);
            continue;
        }
        let round = last + 1;
        let releases = Releases { train, evaluate };
        let (key, acc) = (fed_key.as_deref(), accounting.as_mut());
        let mut selected = match selector.choose(&hub, &*strategy, key, acc, round, releases)? {
            Choice::Ask { selected, needed } if selected.len() >= needed => selected,
            // Too few can take part now (budgets, key holders away): wait for a
            // change rather than spin.
            Choice::Ask { .. } | Choice::KeyHoldersAway => {
                hub.wait_change(Duration::from_secs(1)).await;
                continue;
            }
            Choice::NoFinalEvaluation => break,
        };
        let secure = match (&fed_key, train) {
            (Some(key), true) => {
                let spec = privacy_spec.as_ref();
                Some(prepare_secure_round(&hub, key, spec, round, &mut selected)?)
            }
            _ => None,
        };
        // Re-key before the key's flooding release budget runs out (key holders refuse past it).
        if let (Some(key), Some(s)) = (&fed_key, &secure)
            && key_ceremony::releases_spent(key, &store, round, s.encoding.encoded_len() as u64)?
        {
            hub.telemetry.rekeyed("releases_spent");
            fed_key = Some(key_ceremony::renew(&hub, &store, min, deadline).await?);
            selector.retry();
            continue;
        }
        if let Some(acc) = accounting.as_mut() {
            let kept = secure.as_ref().map(|s| s.kept()).unwrap_or_default();
            selection::charge(acc, &hub, round, releases, &selected, &kept)?;
            hub.telemetry.privacy(&hub, acc);
        }
        let encoding = secure.as_ref().map(|s| s.encoding.clone());
        let (kind, eval_bins) = (releases.kind(), evaluate.then_some(eval_bins));
        let spec = RoundSpec {
            round,
            model_round: last,
            kind,
            selected,
            eval_bins,
        };
        let model = Arc::new(model);
        hub.telemetry.round_started(&spec);
        let mut result =
            collection::collect(&hub, spec, model.clone(), &standardizer, deadline, secure).await;
        // Store the evaluation of the model that went in.
        report::store_evaluation(&store, &*strategy, &result, last)?;
        hub.telemetry.evaluated(store.metrics(last)?.as_ref());
        let discard = match (&fed_key, &encoding) {
            (Some(key), Some(encoding)) => {
                let spec = privacy_spec.as_ref();
                let dim = model.len();
                decryption::open_sum(&hub, key, &mut result, encoding, spec, dim, min, deadline)
                    .await?
            }
            _ => None,
        };
        if let Some(Discard::MalformedSum(why)) = &discard {
            let contributors = &result.contributors;
            hub.telemetry.rekeyed("malformed_sum");
            let new =
                incident::malformed_sum(&hub, &store, round, contributors, why, min, deadline);
            fed_key = Some(new.await?);
        }
        let mut end = match discard {
            Some(why) => RoundEnd::Discarded(why),
            None => result.end(min),
        };
        if let RoundEnd::Aggregated(update) = &end {
            match step::commit(&task, &store, strategy.as_mut(), &model, &result, update)? {
                Ok(()) => last = round,
                // Nothing non-finite is committed: the round fails, and counts as an attempt.
                Err(why) => {
                    let discard = Discard::NotFinite(why);
                    tracing::warn!(
                        round,
                        reason = discard.code(),
                        "round discarded, no model written: {discard}"
                    );
                    end = RoundEnd::Discarded(discard);
                }
            }
        }
        report::log_incomplete(&end, &result, min);
        hub.telemetry.round_ended(&end, &result);
        report::announce(&hub, &end, &result);
        match report::failure(&end, &result, min) {
            None => attempts.succeeded(),
            Some(why) => {
                let pause = attempts.failed(round, &format!("round {round}"), &why)?;
                tracing::info!(
                    round,
                    attempt = attempts.failures(),
                    "round {round} runs again in {} s",
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
    let final_metrics = store.metrics(last)?;
    report::finish(&hub, last, final_metrics.as_ref(), privacy_spec.is_some());
    Ok(TaskSummary {
        rounds: last,
        final_metrics,
    })
}
