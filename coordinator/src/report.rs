//! What the coordinator reports: the per-round table and final line on
//! standard output, the evaluations it stores, and the messages that tell
//! partners how a round ended and that the task is finished.

use std::time::{SystemTime, UNIX_EPOCH};

use consortia_dp::DP_SCORE_BINS;
use consortia_model::Strategy;
use consortia_model::TaskMetrics;
use consortia_proto::{RoundOutcome, TaskFinished, server_message::Kind};

use crate::CoordinatorError;
use crate::hub::Hub;
use crate::round::{RoundEnd, RoundResult};
use crate::store::{MetricsRecord, RoundRecord, Store};

/// What a finished task achieved.
#[derive(Debug, Clone)]
pub struct TaskSummary {
    /// Rounds completed.
    pub rounds: u64,
    /// Evaluation of the final model.
    pub final_metrics: Option<MetricsRecord>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Prints the header of the per-round table for the evaluation kind of `task`
/// (a recommendation model's columns, otherwise as [`print_table_header`]).
pub fn print_task_table_header(task: &consortia_model::TaskSpec) {
    if task.evaluation_kind() != "recommendation" {
        return print_table_header(task.is_classifier());
    }
    println!(
        "{:>5}  {:>8}  {:>8}  {:>10}  {:>7}  {:>7}  {:>7}  {:>9}",
        "round", "partners", "examples", "train-loss", "RMSE", "MAE", "NDCG@10", "recall@10"
    );
}

/// Prints the header of the per-round table: a classifier's columns, or a
/// regression model's.
pub fn print_table_header(classifier: bool) {
    if classifier {
        println!(
            "{:>5}  {:>8}  {:>8}  {:>10}  {:>7}  {:>8}  {:>9}  {:>6}  {:>6}  {:>8}",
            "round",
            "partners",
            "examples",
            "train-loss",
            "ROC-AUC",
            "accuracy",
            "precision",
            "recall",
            "F1",
            "log-loss"
        );
    } else {
        println!(
            "{:>5}  {:>8}  {:>8}  {:>10}  {:>10}  {:>10}  {:>7}  {:>9}  {:>6}  {:>8}",
            "round",
            "partners",
            "examples",
            "train-loss",
            "RMSE",
            "MAE",
            "R2",
            "deviance",
            "Gini",
            "top-20%"
        );
    }
}

/// Prints one row of the per-round table.
pub fn print_table_row(rec: Option<&RoundRecord>, model_round: u64, m: &TaskMetrics) {
    let (partners, examples, loss) = match rec {
        Some(r) => (
            r.participants.len().to_string(),
            r.examples.to_string(),
            r.train_loss
                .map_or_else(|| "-".to_string(), |l| format!("{l:.4}")),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    match m {
        TaskMetrics::Binary(m) => println!(
            "{:>5}  {:>8}  {:>8}  {:>10}  {:>7.4}  {:>8.4}  {:>9.4}  {:>6.4}  {:>6.4}  {:>8.4}",
            model_round,
            partners,
            examples,
            loss,
            m.roc_auc,
            m.accuracy,
            m.precision,
            m.recall,
            m.f1,
            m.log_loss
        ),
        TaskMetrics::Regression(m) => println!(
            "{:>5}  {:>8}  {:>8}  {:>10}  {:>10.3}  {:>10.3}  {:>7.4}  {:>9.4}  {:>6.4}  {:>8.4}",
            model_round,
            partners,
            examples,
            loss,
            m.rmse,
            m.mae,
            m.r2,
            m.deviance,
            m.gini,
            m.top20_capture
        ),
        TaskMetrics::Recommendation(m) => println!(
            "{:>5}  {:>8}  {:>8}  {:>10}  {:>7.4}  {:>7.4}  {:>7.4}  {:>9.4}",
            model_round, partners, examples, loss, m.rmse, m.mae, m.ndcg_at_10, m.recall_at_10
        ),
    }
}

/// Stores the round's evaluation of the model that went in (made by round
/// `model_round`) and prints its row of the table.
pub fn store_evaluation(
    store: &Store,
    strategy: &dyn Strategy,
    result: &RoundResult,
    model_round: u64,
) -> Result<(), CoordinatorError> {
    let Some((partners, partials)) = &result.eval else {
        return Ok(());
    };
    let metrics = match strategy.aggregate_evaluation(partials) {
        Ok(Some((_, metrics))) => metrics,
        Ok(None) => return Ok(()),
        Err(e) => {
            // Each partial was checked on arrival and a trial merge succeeded, so
            // only counts that overflow when all are added end here.
            tracing::warn!(
                round = result.round,
                "the evaluation of model {model_round} is not stored: {e}"
            );
            return Ok(());
        }
    };
    let record = MetricsRecord {
        model_round,
        partners: partners.clone(),
        metrics,
    };
    store.put_metrics(&record)?;
    if model_round > 0 {
        let rec = store.round(model_round)?;
        print_table_row(rec.as_ref(), model_round, &record.metrics);
    }
    Ok(())
}

/// Logs why a round that did not complete runs again.
pub fn log_incomplete(end: &RoundEnd, result: &RoundResult, min: usize) {
    use crate::round::RoundKind;
    match (end, result.kind) {
        (RoundEnd::TooFew, RoundKind::Train) => tracing::warn!(
            round = result.round,
            reason = crate::round::abandoned_code(result.kind),
            received = result.contributors.len(),
            min,
            missing = ?result.missing,
            declined = ?result.declined,
            "round abandoned: fewer updates than the minimum; starting it again"
        ),
        (RoundEnd::TooFew, RoundKind::Evaluate) => {
            tracing::warn!(
                round = result.round,
                reason = crate::round::abandoned_code(result.kind),
                "final evaluation got no reports; asking again"
            )
        }
        // Discarded rounds were logged with their reason when discarded.
        _ => {}
    }
}

/// Why a round that did not complete failed, in words that are the same each
/// time the round fails the same way (the retries compare them); `None` for a
/// round that completed.
pub fn failure(end: &RoundEnd, result: &RoundResult, min: usize) -> Option<String> {
    use crate::round::RoundKind;
    let why = match (end, result.kind) {
        (RoundEnd::Aggregated(_) | RoundEnd::Evaluated, _) => return None,
        (RoundEnd::Discarded(why), _) => format!("its result was discarded: {why}"),
        (RoundEnd::TooFew, RoundKind::Evaluate) => "no evaluation report arrived".to_string(),
        (RoundEnd::TooFew, RoundKind::Train) => {
            let mut why = format!(
                "{} of the {min} updates it needs arrived",
                result.contributors.len()
            );
            let mut declined: Vec<String> = result
                .declined
                .iter()
                .map(|(p, reason)| format!("`{p}`: {reason}"))
                .collect();
            declined.sort();
            if !declined.is_empty() {
                why.push_str(&format!("; declined by {}", declined.join("; ")));
            }
            let mut missing = result.missing.clone();
            missing.sort();
            if !missing.is_empty() {
                why.push_str(&format!("; no answer from {}", missing.join(", ")));
            }
            why
        }
    };
    Some(why)
}

/// Tells every connected partner how `result`'s round ended.
pub fn announce(hub: &Hub, end: &RoundEnd, result: &RoundResult) {
    let detail = match end {
        RoundEnd::Aggregated(_) | RoundEnd::Evaluated => {
            format!("{} partners contributed", result.contributors.len())
        }
        RoundEnd::Discarded(why) => format!("discarded: {why}"),
        RoundEnd::TooFew => format!(
            "abandoned: {} updates arrived (missing: {:?}, declined: {:?})",
            result.contributors.len(),
            result.missing,
            result.declined.iter().map(|(p, _)| p).collect::<Vec<_>>()
        ),
    };
    hub.broadcast(Kind::Outcome(RoundOutcome {
        round: result.round,
        completed: end.completed(),
        detail,
        participants: result.contributors.len() as u32,
    }));
}

/// Prints the final model's evaluation (`private`: released under
/// `[privacy]`) and tells every partner the task is finished.
pub fn finish(hub: &Hub, last: u64, final_metrics: Option<&MetricsRecord>, private: bool) {
    match final_metrics {
        Some(m) => match &m.metrics {
            TaskMetrics::Binary(x) => println!(
                "final model (round {last}) on {} held-out rows of {} partners: ROC-AUC {:.4}, accuracy {:.4}, precision {:.4}, recall {:.4}, F1 {:.4}, log-loss {:.4}, PR-AUC {:.4}, lift top 10 % {:.2}, top 20 % {:.2}{}",
                x.examples,
                m.partners.len(),
                x.roc_auc,
                x.accuracy,
                x.precision,
                x.recall,
                x.f1,
                x.log_loss,
                x.pr_auc,
                x.lift_10,
                x.lift_20,
                if private {
                    format!(
                        " (differentially private estimates from {DP_SCORE_BINS}-bin noised score histograms)"
                    )
                } else {
                    String::new()
                }
            ),
            TaskMetrics::Regression(x) => println!(
                "final model (round {last}) on {} held-out rows of {} partners: RMSE {:.3}, MAE {:.3}, R² {:.4}, mean deviance {:.4}, normalised Gini {:.4}, top-20 % value capture {:.4}{}",
                x.examples,
                m.partners.len(),
                x.rmse,
                x.mae,
                x.r2,
                x.deviance,
                x.gini,
                x.top20_capture,
                if private {
                    " (differentially private estimates from noised sums over rows clipped to \
                     evaluation_bounds; deviance, Gini and capture are not released)"
                } else {
                    ""
                }
            ),
            TaskMetrics::Recommendation(x) => println!(
                "final model (round {last}) on {} held-out {} of {} partners: RMSE {:.4}, MAE {:.4}, NDCG@10 {:.4} and recall@10 {:.4} over {} users{}",
                x.examples,
                if private {
                    "users' ratings (differentially private estimates from noised per-user sums; \
                     RMSE and MAE averaged over users)"
                } else {
                    "ratings"
                },
                m.partners.len(),
                x.rmse,
                x.mae,
                x.ndcg_at_10,
                x.recall_at_10,
                x.users,
                if x.unknown_items > 0 {
                    format!(
                        " ({} ratings of items outside the catalogue were not used)",
                        x.unknown_items
                    )
                } else {
                    String::new()
                }
            ),
        },
        None if private => println!(
            "final model (round {last}): no evaluation was released (see the coordinator's log)"
        ),
        None => {}
    }
    hub.broadcast(Kind::Finished(TaskFinished {
        detail: format!("task `{}` finished after {last} rounds", hub.task.name),
    }));
}
