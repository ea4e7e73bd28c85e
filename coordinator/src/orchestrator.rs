//! The round loop: wait for partners, agree on standardisation, then
//! configure → collect → aggregate each round until the task is done.
//!
//! [`Hub`] is the state shared between the loop and the sessions: who is
//! connected, the round being collected, and the standardisation request in
//! flight. Sessions change it and wake the loop; only the loop opens and
//! closes rounds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use consortia_model::TaskSpec;
use consortia_model::metrics::{EvalPartial, Metrics};
use consortia_model::standardize::{FeatureStats, Standardizer};
use consortia_proto::{
    RoundOutcome, RoundStart, StatsReport, StatsRequest, TaskFinished, chunk_count,
    server_message::Kind,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tokio::sync::Notify;
use tonic::Status;

use crate::CoordinatorError;
use crate::accounting::Accounting;
use crate::round::{Rejection, RoundCollector, RoundKind, RoundResult};
use crate::session::{Outbound, SessionHandle, message};
use crate::store::{MetricsRecord, RoundRecord, Store, StoredStandardizer};

/// Checks a certificate serial number against the current revocation list.
pub type RevocationCheck = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Standardisation statistics being collected.
struct StatsCollector {
    request_id: u64,
    expected: BTreeSet<String>,
    received: BTreeMap<String, FeatureStats>,
}

/// State shared by the round loop and the partner sessions.
pub struct Hub {
    /// The task being trained.
    pub task: TaskSpec,
    /// The task file's text, sent to partners.
    pub task_toml: String,
    /// Parameters of the model.
    pub param_count: usize,
    sessions: Mutex<BTreeMap<String, SessionHandle>>,
    round: Mutex<Option<RoundCollector>>,
    closed_up_to: AtomicU64,
    stats: Mutex<Option<StatsCollector>>,
    changed: Notify,
    next_session: AtomicU64,
    revoked: RevocationCheck,
    rows: Mutex<BTreeMap<String, u64>>,
    exhausted: Mutex<BTreeMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// Shared state for `task`, whose model has `param_count` parameters.
    pub fn new(
        task: TaskSpec,
        task_toml: String,
        param_count: usize,
        revoked: RevocationCheck,
    ) -> Self {
        Hub {
            task,
            task_toml,
            param_count,
            sessions: Mutex::new(BTreeMap::new()),
            round: Mutex::new(None),
            closed_up_to: AtomicU64::new(0),
            stats: Mutex::new(None),
            changed: Notify::new(),
            next_session: AtomicU64::new(1),
            revoked,
            rows: Mutex::new(BTreeMap::new()),
            exhausted: Mutex::new(BTreeMap::new()),
        }
    }

    /// True if the certificate with this serial has been revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        (self.revoked)(serial)
    }

    /// True if `name` can be a partner (not the coordinator's own name).
    pub fn is_partner_name(&self, name: &str) -> bool {
        !name.is_empty() && name != "coordinator"
    }

    /// Adds a session, replacing (and closing) an older one of the same partner.
    pub fn register(&self, partner: &str, mut handle: SessionHandle) -> u64 {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        handle.id = id;
        let old = lock(&self.sessions).insert(partner.to_string(), handle);
        if let Some(old) = old {
            tracing::info!(partner, "a new connection replaces the previous session");
            old.send(Outbound::Close(Status::aborted(
                "replaced by a newer session of the same partner",
            )));
        }
        self.changed.notify_one();
        id
    }

    /// Removes a session that ended (if it is still the current one).
    pub fn unregister(&self, partner: &str, id: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(partner).is_some_and(|s| s.id == id) {
            sessions.remove(partner);
            drop(sessions);
            if let Some(r) = lock(&self.round).as_mut() {
                r.drop_partner(partner);
            }
            if let Some(s) = lock(&self.stats).as_mut() {
                s.expected.remove(partner);
            }
        }
        self.changed.notify_one();
    }

    /// Names of connected partners.
    pub fn connected(&self) -> Vec<String> {
        lock(&self.sessions).keys().cloned().collect()
    }

    /// The round being collected, if any.
    pub fn open_round(&self) -> Option<u64> {
        lock(&self.round).as_ref().map(|r| r.round)
    }

    fn closed_or_none(&self, round: u64) -> Rejection {
        if round <= self.closed_up_to.load(Ordering::Relaxed) {
            Rejection::Closed { round }
        } else {
            Rejection::NoOpenRound { round }
        }
    }

    /// Checks that `partner` may start sending an update for `round`.
    pub fn admits(&self, partner: &str, round: u64) -> Result<(), Rejection> {
        match lock(&self.round).as_ref() {
            Some(r) => r.admits(partner, round),
            None => Err(self.closed_or_none(round)),
        }
    }

    /// Folds a complete update into the open round.
    pub fn add_update(
        &self,
        partner: &str,
        round: u64,
        examples: u64,
        loss: f64,
        params: &[f64],
    ) -> Result<(), Rejection> {
        let result = match lock(&self.round).as_mut() {
            Some(r) => r.add_update(partner, round, examples, loss, params),
            None => Err(self.closed_or_none(round)),
        };
        if result.is_ok() {
            tracing::info!(partner, round, examples, "update received");
            lock(&self.rows).insert(partner.to_string(), examples);
            self.changed.notify_one();
        }
        result
    }

    /// Records an evaluation report.
    pub fn add_eval(
        &self,
        partner: &str,
        model_round: u64,
        partial: EvalPartial,
    ) -> Result<(), Rejection> {
        let result = match lock(&self.round).as_mut() {
            Some(r) => r.add_eval(partner, model_round, partial),
            None => Err(self.closed_or_none(model_round + 1)),
        };
        if result.is_ok() {
            self.changed.notify_one();
        }
        result
    }

    /// Records that a partner declined a round; one whose own privacy budget
    /// is exhausted is not selected again.
    pub fn decline(
        &self,
        partner: &str,
        round: u64,
        reason: String,
        budget_exhausted: bool,
    ) -> Result<(), Rejection> {
        if budget_exhausted {
            lock(&self.exhausted).insert(partner.to_string(), reason.clone());
        }
        let result = match lock(&self.round).as_mut() {
            Some(r) => r.decline(partner, round, reason),
            None => Err(self.closed_or_none(round)),
        };
        self.changed.notify_one();
        result
    }

    /// Records a partner's feature statistics.
    pub fn add_stats(&self, partner: &str, report: StatsReport) -> Result<(), Rejection> {
        let mut guard = lock(&self.stats);
        let Some(c) = guard.as_mut() else {
            return Err(Rejection::Malformed(
                "feature statistics were not requested".into(),
            ));
        };
        if report.request_id != c.request_id || !c.expected.contains(partner) {
            return Err(Rejection::Malformed(format!(
                "feature statistics for request {} were not asked of you",
                report.request_id
            )));
        }
        let n = self.task.schema.feature_count();
        if report.sum.len() != n || report.sum_sq.len() != n {
            return Err(Rejection::Malformed(format!(
                "feature statistics have {} sums, the schema has {n} features",
                report.sum.len()
            )));
        }
        if report.count == 0
            || report
                .sum
                .iter()
                .chain(&report.sum_sq)
                .any(|v| !v.is_finite())
        {
            return Err(Rejection::Malformed(
                "feature statistics must cover at least one row and be finite".into(),
            ));
        }
        lock(&self.rows).insert(partner.to_string(), report.count);
        c.received.insert(
            partner.to_string(),
            FeatureStats {
                count: report.count,
                sum: report.sum,
                sum_sq: report.sum_sq,
            },
        );
        drop(guard);
        self.changed.notify_one();
        Ok(())
    }

    /// Sends a command to one partner; false if it is gone.
    fn send_to(&self, partner: &str, cmd: Outbound) -> bool {
        let handle = lock(&self.sessions).get(partner).cloned();
        handle.is_some_and(|h| h.send(cmd))
    }

    /// Ends the sessions of partners whose certificates were revoked since they connected.
    fn drop_revoked(&self) {
        let revoked: Vec<(String, SessionHandle)> = lock(&self.sessions)
            .iter()
            .filter(|(_, h)| self.is_revoked(&h.serial))
            .map(|(p, h)| (p.clone(), h.clone()))
            .collect();
        for (partner, handle) in revoked {
            tracing::warn!(partner = %partner, "certificate revoked: ending its session");
            handle.send(Outbound::Close(Status::permission_denied(format!(
                "the certificate of `{partner}` has been revoked"
            ))));
            lock(&self.sessions).remove(&partner);
        }
    }

    /// Waits until something changes or `timeout` passes.
    async fn wait_change(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }
}

/// What a finished task achieved.
#[derive(Debug, Clone)]
pub struct TaskSummary {
    /// Rounds completed.
    pub rounds: u64,
    /// Evaluation of the final model.
    pub final_metrics: Option<MetricsRecord>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Prints the header of the per-round table.
pub fn print_table_header() {
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
}

/// Prints one row of the per-round table.
pub fn print_table_row(rec: Option<&RoundRecord>, model_round: u64, m: &Metrics) {
    let (partners, examples, loss) = match rec {
        Some(r) => (
            r.participants.len().to_string(),
            r.examples.to_string(),
            r.train_loss
                .map_or_else(|| "-".to_string(), |l| format!("{l:.4}")),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    println!(
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
    );
}

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

    let standardizer = match store.standardizer()? {
        Some(s) => s,
        None => {
            let (s, smallest) = agree_standardization(&hub, min, deadline).await;
            if let Some(acc) = &accounting {
                acc.book
                    .spec()
                    .validate_for_rows(smallest as usize)
                    .map_err(|e| {
                        CoordinatorError::Stopped(format!(
                            "[privacy] does not suit the partners' data: {e}"
                        ))
                    })?;
            }
            store.put_standardizer(&s)?;
            s
        }
    };
    let mut last = store.last_round()?;
    if last > 0 {
        tracing::info!(
            last_completed = last,
            "resuming after the last completed round"
        );
    }
    print_table_header();
    let mut attempt = 0u64;
    loop {
        let train = last < total;
        if !train && store.metrics(last)?.is_some() {
            break;
        }
        let model = store
            .model(last)?
            .ok_or_else(|| CoordinatorError::Corrupt(format!("model of round {last} missing")))?;
        wait_for_partners(&hub, min).await;
        hub.drop_revoked();
        let round = last + 1;
        attempt += 1;
        let mut selected = select(&hub, &task, round, attempt, min);
        if train {
            leave_out_over_budget(&hub, &mut selected, accounting.as_mut(), min, round)?;
        }
        if selected.len() < min {
            continue;
        }
        let kind = if train {
            RoundKind::Train
        } else {
            RoundKind::Evaluate
        };
        let mut result = collect_round(
            &hub,
            round,
            last,
            kind,
            selected,
            Arc::new(model),
            &standardizer,
            deadline,
        )
        .await;

        // Store the evaluation of the model that went in.
        if let Some((partners, partial)) = &result.eval {
            let record = MetricsRecord {
                model_round: last,
                partners: partners.clone(),
                metrics: Metrics::from_partial(partial),
            };
            store.put_metrics(&record)?;
            if last > 0 {
                let rec = store.round(last)?;
                print_table_row(rec.as_ref(), last, &record.metrics);
            }
        }
        // Write-ahead: the spend of every update received is durable before
        // anything computed from it is released.
        if let (Some(acc), false) = (accounting.as_mut(), result.contributions.is_empty()) {
            acc.record_round(round, now_ms(), &result.contributions)?;
        }
        let completed = match (kind, result.model.take()) {
            (RoundKind::Train, Some(new_model)) if result.contributors.len() >= min => {
                let rec = RoundRecord {
                    round,
                    participants: result.contributors.clone(),
                    examples: result.examples,
                    train_loss: result.train_loss.is_finite().then_some(result.train_loss),
                    completed_unix_ms: now_ms(),
                };
                store.commit_round(&rec, &new_model)?;
                last = round;
                true
            }
            (RoundKind::Train, _) => {
                tracing::warn!(
                    round,
                    received = result.contributors.len(),
                    min,
                    missing = ?result.missing,
                    declined = ?result.declined,
                    "round abandoned: fewer updates than the minimum; starting it again"
                );
                false
            }
            (RoundKind::Evaluate, _) => result.eval.is_some(),
        };
        announce(&hub, &result_summary(round, completed, &result));
        if !train && !completed {
            tracing::warn!("final evaluation got no reports; asking again");
        }
    }
    let final_metrics = store.metrics(last)?;
    if let Some(m) = &final_metrics {
        let x = &m.metrics;
        println!(
            "final model (round {last}) on {} held-out rows of {} partners: ROC-AUC {:.4}, accuracy {:.4}, precision {:.4}, recall {:.4}, F1 {:.4}, log-loss {:.4}",
            x.examples,
            m.partners.len(),
            x.roc_auc,
            x.accuracy,
            x.precision,
            x.recall,
            x.f1,
            x.log_loss
        );
    }
    for partner in hub.connected() {
        hub.send_to(
            &partner,
            Outbound::Message(message(Kind::Finished(TaskFinished {
                detail: format!("task `{}` finished after {last} rounds", task.name),
            }))),
        );
    }
    Ok(TaskSummary {
        rounds: last,
        final_metrics,
    })
}

struct Summary {
    round: u64,
    completed: bool,
    detail: String,
    participants: u32,
}

fn result_summary(round: u64, completed: bool, r: &RoundResult) -> Summary {
    let detail = if completed {
        format!("{} partners contributed", r.contributors.len())
    } else {
        format!(
            "abandoned: {} updates arrived (missing: {:?}, declined: {:?})",
            r.contributors.len(),
            r.missing,
            r.declined.iter().map(|(p, _)| p).collect::<Vec<_>>()
        )
    };
    Summary {
        round,
        completed,
        detail,
        participants: r.contributors.len() as u32,
    }
}

fn announce(hub: &Hub, s: &Summary) {
    for partner in hub.connected() {
        hub.send_to(
            &partner,
            Outbound::Message(message(Kind::Outcome(RoundOutcome {
                round: s.round,
                completed: s.completed,
                detail: s.detail.clone(),
                participants: s.participants,
            }))),
        );
    }
}

/// Leaves out of a training round every partner whose budget the round would
/// exceed (by the coordinator's book or by the partner's own word); stops the
/// task when fewer than the minimum remain.
fn leave_out_over_budget(
    hub: &Hub,
    selected: &mut BTreeSet<String>,
    accounting: Option<&mut Accounting>,
    min: usize,
    round: u64,
) -> Result<(), CoordinatorError> {
    let mut reasons = Vec::new();
    let declared = lock(&hub.exhausted).clone();
    let rows = lock(&hub.rows).clone();
    let mut accounting = accounting;
    selected.retain(|p| {
        if let Some(why) = declared.get(p) {
            reasons.push(format!("{p} declined: {why}"));
            return false;
        }
        if let Some(acc) = accounting.as_deref_mut()
            && let Err(why) = acc.admits(p, rows.get(p).copied().unwrap_or(1))
        {
            tracing::warn!(partner = %p, round, "left out of the round: {why}");
            reasons.push(format!("{p}: {why}"));
            return false;
        }
        true
    });
    if selected.len() < min && !reasons.is_empty() {
        return Err(CoordinatorError::Stopped(format!(
            "only {} partner(s) can still afford round {round} within their privacy budgets, fewer than min_partners = {min} ({})",
            selected.len(),
            reasons.join("; ")
        )));
    }
    Ok(())
}

async fn wait_for_partners(hub: &Hub, min: usize) {
    let mut last_log = Instant::now() - Duration::from_secs(60);
    loop {
        let n = hub.connected().len();
        if n >= min {
            return;
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            tracing::info!(
                connected = n,
                needed = min,
                "waiting for partners to connect"
            );
            last_log = Instant::now();
        }
        hub.wait_change(Duration::from_secs(1)).await;
    }
}

/// Chooses the round's participants: everyone connected, or a seeded sample.
fn select(hub: &Hub, task: &TaskSpec, round: u64, attempt: u64, min: usize) -> BTreeSet<String> {
    let mut connected = hub.connected();
    if let Some(f) = task.sample_fraction {
        let k = ((connected.len() as f64 * f).ceil() as usize)
            .max(min)
            .min(connected.len());
        let mut rng =
            rand_chacha::ChaCha8Rng::seed_from_u64(task.seed ^ round.rotate_left(32) ^ attempt);
        connected.shuffle(&mut rng);
        connected.truncate(k);
    }
    connected.into_iter().collect()
}

/// Agrees on the federation-wide standardisation; also returns the smallest
/// partner's row count.
async fn agree_standardization(
    hub: &Hub,
    min: usize,
    deadline: Duration,
) -> (StoredStandardizer, u64) {
    let mut request_id = 0u64;
    loop {
        wait_for_partners(hub, min).await;
        request_id += 1;
        let expected: BTreeSet<String> = hub.connected().into_iter().collect();
        *lock(&hub.stats) = Some(StatsCollector {
            request_id,
            expected: expected.clone(),
            received: BTreeMap::new(),
        });
        for p in &expected {
            hub.send_to(
                p,
                Outbound::Message(message(Kind::StatsRequest(StatsRequest { request_id }))),
            );
        }
        tracing::info!(
            partners = expected.len(),
            "asking partners for feature statistics"
        );
        let until = Instant::now() + deadline;
        loop {
            let done = {
                let g = lock(&hub.stats);
                g.as_ref()
                    .is_some_and(|c| c.expected.iter().all(|p| c.received.contains_key(p)))
            };
            if done || Instant::now() >= until {
                break;
            }
            hub.wait_change(until.saturating_duration_since(Instant::now()))
                .await;
        }
        let collected = lock(&hub.stats).take();
        let Some(c) = collected else { continue };
        if c.received.len() < min {
            tracing::warn!(
                received = c.received.len(),
                min,
                "too few partners sent feature statistics; asking again"
            );
            continue;
        }
        let mut merged: Option<FeatureStats> = None;
        let mut ok = true;
        for s in c.received.values() {
            match merged.as_mut() {
                None => merged = Some(s.clone()),
                Some(m) => ok &= m.merge(s).is_ok(),
            }
        }
        let Some(merged) = merged.filter(|_| ok) else {
            continue;
        };
        let st = match Standardizer::from_stats(&merged) {
            Ok(st) => st,
            Err(e) => {
                tracing::warn!("feature statistics unusable ({e}); asking again");
                continue;
            }
        };
        tracing::info!(
            partners = c.received.len(),
            rows = merged.count,
            "federation-wide standardisation agreed"
        );
        let smallest = c.received.values().map(|s| s.count).min().unwrap_or(0);
        return (
            StoredStandardizer {
                mean: st.mean().to_vec(),
                std: st.std().to_vec(),
            },
            smallest,
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn collect_round(
    hub: &Hub,
    round: u64,
    model_round: u64,
    kind: RoundKind,
    selected: BTreeSet<String>,
    model: Arc<Vec<f64>>,
    standardizer: &StoredStandardizer,
    deadline: Duration,
) -> RoundResult {
    let until = Instant::now() + deadline;
    *lock(&hub.round) = Some(RoundCollector::new(
        round,
        model_round,
        kind,
        hub.param_count,
        selected.clone(),
        until,
    ));
    let start = RoundStart {
        round,
        param_count: hub.param_count as u64,
        chunk_count: chunk_count(hub.param_count),
        deadline_unix_ms: now_ms() + deadline.as_millis() as u64,
        feature_mean: standardizer.mean.clone(),
        feature_std: standardizer.std.clone(),
        train: kind == RoundKind::Train,
        model_round,
    };
    tracing::info!(round, partners = ?selected, train = kind == RoundKind::Train, "round started");
    for p in &selected {
        let sent = hub.send_to(
            p,
            Outbound::Round {
                start: start.clone(),
                model: model.clone(),
            },
        );
        if !sent && let Some(r) = lock(&hub.round).as_mut() {
            r.drop_partner(p);
        }
    }
    loop {
        let complete = lock(&hub.round).as_ref().is_none_or(|r| r.complete());
        if complete || Instant::now() >= until {
            break;
        }
        hub.wait_change(until.saturating_duration_since(Instant::now()))
            .await;
    }
    let collector = lock(&hub.round).take();
    hub.closed_up_to.store(round, Ordering::Relaxed);
    match collector {
        Some(c) => c.finish(),
        None => {
            RoundCollector::new(round, model_round, kind, hub.param_count, selected, until).finish()
        }
    }
}
