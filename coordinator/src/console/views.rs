//! What each console page shows, as the JSON its `/api/v1/...` endpoint returns. The
//! HTML pages ([`super::pages`]) are rendered from these same values, so a script and
//! a person see the same figures.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Viewer;
use super::ledger::{LedgerStatus, LedgerWatch};
use crate::CoordinatorError;
use crate::hub::{Hub, Stage};
use crate::key_holders::KeyHolderView;
use crate::store::Store;

/// `GET /api/v1/federation` (operators only).
#[derive(Debug, Clone, Serialize)]
pub struct FederationView {
    /// The task being trained.
    pub task: TaskInfo,
    /// The round in progress and its phase.
    pub progress: Progress,
    /// Partners.
    pub partners: Partners,
    /// Secure aggregation's key holders.
    pub key: KeyHolders,
    /// Each key holder's reachability and answers, the latest decryptions and re-keys.
    pub key_holders: KeyHolderView,
    /// Handshakes refused at the federation port, by reason (metrics' reason codes).
    pub refused_handshakes: BTreeMap<String, u64>,
    /// Sessions refused after their handshake, by reason.
    pub refused_sessions: BTreeMap<String, u64>,
    /// When this view was taken, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// The task, as its file states it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskInfo {
    /// Task name.
    pub name: String,
    /// Server strategy (`fedavg`, `fedadam`, …).
    pub strategy: String,
    /// Model kind (`logistic_regression`, `mlp`, `glm`).
    pub model: String,
    /// Rounds to train.
    pub rounds: u32,
    /// Fewest partners a round needs.
    pub min_partners: u32,
    /// Seconds a round waits for answers.
    pub round_deadline_secs: u64,
    /// Whether updates are summed under encryption.
    pub secure_aggregation: bool,
    /// Whether the task has a `[privacy]` table.
    pub differential_privacy: bool,
}

/// The round in progress.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// The round last started (0 before the first).
    pub round: u64,
    /// Training rounds completed and stored.
    pub completed_rounds: u64,
    /// The phase in progress: `idle`, `standardisation`, `key_ceremony`, `collection`,
    /// `decryption`.
    pub phase: String,
    /// When the collection in progress closes regardless of answers, milliseconds since
    /// the Unix epoch.
    pub deadline_unix_ms: Option<u64>,
    /// Seconds left until then.
    pub deadline_in_secs: Option<u64>,
}

/// Who is there.
#[derive(Debug, Clone, Serialize)]
pub struct Partners {
    /// Partners with a session now.
    pub connected: Vec<String>,
    /// Partners asked to take part in the round being collected.
    pub selected: Vec<String>,
    /// Partners whose updates the last completed round aggregated.
    pub contributed: Vec<String>,
    /// The partners the task admits (`partners = [...]`); absent: any of the CA's.
    pub allowed: Option<Vec<String>>,
}

/// Secure aggregation's key holders.
#[derive(Debug, Clone, Serialize)]
pub struct KeyHolders {
    /// The federation key's committee (empty without a key).
    pub holders: Vec<String>,
    /// Key holders whose decryption shares the round in progress still waits for.
    pub waiting_for: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The values of the counter family `name` by their `reason` label, from the
/// coordinator's metrics.
fn by_reason(text: &str, name: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{name}{{reason=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (reason, value) = rest.split_once("\"}")?;
            let value: f64 = value.trim().parse().ok()?;
            Some((reason.to_owned(), value as u64))
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// One unlabelled sample of the coordinator's metrics.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// The federation page's view.
pub fn federation(hub: &Hub, store: &Store) -> FederationView {
    let task = &hub.task;
    let metrics = consortia_observability::encode(&hub.telemetry.registry(), false)
        .map(|(text, _)| text)
        .unwrap_or_default();
    let (phase, stage_round, selected, deadline, waiting_for) = hub.with_stage(|stage| {
        let phase = crate::telemetry::phase_of(stage).to_owned();
        match stage {
            Stage::Collection(r) => (
                phase,
                Some(r.round),
                r.selected.iter().cloned().collect(),
                Some(r.deadline),
                Vec::new(),
            ),
            Stage::Decryption(d) => (phase, Some(d.round()), Vec::new(), None, d.waiting_for()),
            _ => (phase, None, Vec::new(), None, Vec::new()),
        }
    });
    let rounds = store.rounds().unwrap_or_default();
    let completed_rounds = rounds.len() as u64;
    let contributed = rounds
        .last()
        .map(|r| r.participants.clone())
        .unwrap_or_default();
    let started = sample(&metrics, "consortia_round").map(|v| v as u64);
    let round = stage_round.or(started).unwrap_or(0);
    let now = Instant::now();
    let left = deadline.map(|d| d.saturating_duration_since(now));
    FederationView {
        task: TaskInfo {
            name: task.name.clone(),
            strategy: task.strategy.kind().to_owned(),
            model: serde_json::to_value(task.model.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", task.model.kind)),
            rounds: task.rounds,
            min_partners: task.min_partners,
            round_deadline_secs: task.round_deadline_secs,
            secure_aggregation: task.secure_aggregation,
            differential_privacy: task.privacy.is_some(),
        },
        progress: Progress {
            round,
            completed_rounds,
            phase,
            deadline_unix_ms: left.map(|l| now_ms() + l.as_millis() as u64),
            deadline_in_secs: left.map(|l| l.as_secs()),
        },
        partners: Partners {
            connected: hub.connected(),
            selected,
            contributed,
            allowed: task.partners.clone(),
        },
        key: KeyHolders {
            holders: hub
                .federation_key()
                .map(|k| k.committee.clone())
                .unwrap_or_default(),
            waiting_for,
        },
        key_holders: hub.key_holders.view(),
        refused_handshakes: by_reason(&metrics, "consortia_handshakes_refused_total"),
        refused_sessions: by_reason(&metrics, "consortia_sessions_refused_total"),
        at_unix_ms: now_ms(),
    }
}

/// `GET /api/v1/training`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingView {
    /// Task name.
    pub task: String,
    /// The evaluation figure the chart follows (`roc_auc`, `rmse`).
    pub headline: String,
    /// Completed training rounds (operators only; absent for auditors).
    pub rounds: Option<Vec<RoundRow>>,
    /// Federated evaluations of the global models (operators only).
    pub evaluations: Option<Vec<EvaluationRow>>,
    /// Every stored model version, with its download.
    pub models: Vec<ModelRow>,
    /// When this view was taken, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// One completed round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    /// Round number.
    pub round: u64,
    /// Partners whose updates were aggregated.
    pub participants: Vec<String>,
    /// Training examples behind the aggregate.
    pub examples: u64,
    /// Example-weighted mean training loss (none under differential privacy).
    pub train_loss: Option<f64>,
    /// Completion time, milliseconds since the Unix epoch.
    pub completed_unix_ms: u64,
}

/// The federated evaluation of one global model.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationRow {
    /// The round that produced the model (0: the initial model).
    pub model_round: u64,
    /// Partners whose held-out rows were scored.
    pub partners: usize,
    /// The figures by name (`roc_auc`, `log_loss`, … or `rmse`, `r2`, …).
    pub metrics: BTreeMap<String, f64>,
}

/// One stored model version.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    /// The round that produced it (0: the initial model).
    pub round: u64,
    /// Where its export is downloaded.
    pub download: String,
}

/// The training page's view for `viewer`.
pub fn training(
    viewer: &Viewer,
    hub: &Hub,
    store: &Store,
) -> Result<TrainingView, CoordinatorError> {
    let stored = store.rounds()?;
    let headline = if hub.task.is_classifier() {
        "roc_auc"
    } else {
        "rmse"
    };
    let mut models = vec![ModelRow {
        round: 0,
        download: "/api/v1/models/0.json".into(),
    }];
    models.extend(stored.iter().map(|r| ModelRow {
        round: r.round,
        download: format!("/api/v1/models/{}.json", r.round),
    }));
    let (rounds, evaluations) = if viewer.is_operator() {
        let rounds = stored
            .iter()
            .map(|r| RoundRow {
                round: r.round,
                participants: r.participants.clone(),
                examples: r.examples,
                train_loss: r.train_loss,
                completed_unix_ms: r.completed_unix_ms,
            })
            .collect();
        let evaluations = store
            .all_metrics()?
            .into_iter()
            .map(|m| EvaluationRow {
                model_round: m.model_round,
                partners: m.partners.len(),
                metrics: figures(&m.metrics),
            })
            .collect();
        (Some(rounds), Some(evaluations))
    } else {
        (None, None)
    };
    Ok(TrainingView {
        task: hub.task.name.clone(),
        headline: headline.into(),
        rounds,
        evaluations,
        models,
        at_unix_ms: now_ms(),
    })
}

/// An evaluation's numeric figures by name.
fn figures(metrics: &consortia_model::TaskMetrics) -> BTreeMap<String, f64> {
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(metrics) else {
        return BTreeMap::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| Some((k, v.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// `GET /api/v1/privacy`.
#[derive(Debug, Clone, Serialize)]
pub struct PrivacyView {
    /// Task name.
    pub task: String,
    /// Whether the task has a `[privacy]` table.
    pub differential_privacy: bool,
    /// The δ the ε figures are stated at (the ledger's last entry).
    pub delta: Option<f64>,
    /// Each partner's cumulative ε and budget, as the ledger's latest entries state them.
    pub partners: Vec<PartnerBudget>,
    /// The ledger and its verification.
    pub ledger: LedgerStatus,
    /// When this view was taken, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// One partner's privacy budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartnerBudget {
    /// Partner name.
    pub partner: String,
    /// ε spent so far (the latest `epsilon_cumulative` the ledger records for it).
    pub epsilon_spent: f64,
    /// Its total ε budget (the latest `budget_epsilon`).
    pub epsilon_budget: Option<f64>,
    /// Spent over budget.
    pub fraction: Option<f64>,
}

/// The privacy page's view.
pub(super) fn privacy(hub: &Hub, ledger: &LedgerWatch) -> PrivacyView {
    let (status, entries) = ledger.check();
    let mut spent: BTreeMap<String, f64> = BTreeMap::new();
    let mut budget: BTreeMap<String, f64> = BTreeMap::new();
    for e in entries.iter() {
        spent.extend(
            e.record
                .epsilon_cumulative
                .iter()
                .map(|(k, v)| (k.clone(), *v)),
        );
        budget.extend(e.record.budget_epsilon.iter().map(|(k, v)| (k.clone(), *v)));
    }
    let partners = spent
        .into_iter()
        .map(|(partner, epsilon_spent)| {
            let epsilon_budget = budget.get(&partner).copied();
            PartnerBudget {
                fraction: epsilon_budget
                    .filter(|b| *b > 0.0)
                    .map(|b| epsilon_spent / b),
                partner,
                epsilon_spent,
                epsilon_budget,
            }
        })
        .collect();
    PrivacyView {
        task: hub.task.name.clone(),
        differential_privacy: hub.task.privacy.is_some(),
        delta: entries.last().map(|e| e.record.delta),
        partners,
        ledger: status,
        at_unix_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_reason() {
        let text = "# TYPE x counter\nconsortia_handshakes_refused_total{reason=\"other_ca\"} 2\n\
                    consortia_handshakes_refused_total{reason=\"expired\"} 0\n\
                    consortia_sessions_refused_total{reason=\"unknown\"} 1\nconsortia_round 3\n";
        let refused = by_reason(text, "consortia_handshakes_refused_total");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused["other_ca"], 2);
        assert_eq!(sample(text, "consortia_round"), Some(3.0));
        assert_eq!(sample(text, "consortia_rounds"), None);
    }
}
