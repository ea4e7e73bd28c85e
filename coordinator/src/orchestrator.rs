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

use consortia_dp::{DP_SCORE_BINS, NoisePlacement, PrivacySpec, PrivacyUnit};
use consortia_he::update::UpdateEncoding;
use consortia_he::{Aggregate, HeParams, Shape};
use consortia_model::metrics::{EvalPartial, Metrics, SCORE_BINS};
use consortia_model::standardize::{FeatureStats, Standardizer};
use consortia_model::strategy::{Selection, Strategy};
use consortia_model::{AggregatedUpdate, TaskSpec};
use consortia_proto::{
    DecryptRequest, KeyGenRequest, KeyReveal, RoundOutcome, RoundStart, StatsReport, StatsRequest,
    TaskFinished, chunk_count, server_message::Kind,
};
use tokio::sync::Notify;
use tonic::Status;

use crate::CoordinatorError;
use crate::accounting::Accounting;
use crate::round::{Rejection, RoundCollector, RoundKind, RoundResult};
use crate::secure::{CiphertextStore, Decryption, FederationKey, KeyCeremony, StoredUpdate};
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
    /// The task's canonical hash (`TaskSpec::canonical_hash`): partners sign
    /// key shares and updates for it.
    pub task_hash: [u8; 32],
    attempt: AtomicU64,
    sessions: Mutex<BTreeMap<String, SessionHandle>>,
    round: Mutex<Option<RoundCollector>>,
    closed_up_to: AtomicU64,
    stats: Mutex<Option<StatsCollector>>,
    changed: Notify,
    next_session: AtomicU64,
    revoked: RevocationCheck,
    rows: Mutex<BTreeMap<String, u64>>,
    exhausted: Mutex<BTreeMap<String, String>>,
    key: Mutex<Option<Arc<FederationKey>>>,
    ceremony: Mutex<Option<KeyCeremony>>,
    decryption: Mutex<Option<Decryption>>,
    /// Where encrypted updates are kept (secure aggregation).
    pub ciphertexts: Option<CiphertextStore>,
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
        let task_hash = task.canonical_hash().unwrap_or_default();
        Hub {
            task,
            task_toml,
            param_count,
            task_hash,
            attempt: AtomicU64::new(0),
            sessions: Mutex::new(BTreeMap::new()),
            round: Mutex::new(None),
            closed_up_to: AtomicU64::new(0),
            stats: Mutex::new(None),
            changed: Notify::new(),
            next_session: AtomicU64::new(1),
            revoked,
            rows: Mutex::new(BTreeMap::new()),
            exhausted: Mutex::new(BTreeMap::new()),
            key: Mutex::new(None),
            ceremony: Mutex::new(None),
            decryption: Mutex::new(None),
            ciphertexts: None,
        }
    }

    /// Serves a task with secure aggregation: encrypted updates are kept in
    /// `ciphertexts`; `key` is the federation key if one was made before.
    pub fn with_secure_aggregation(
        mut self,
        ciphertexts: CiphertextStore,
        key: Option<FederationKey>,
    ) -> Self {
        self.ciphertexts = Some(ciphertexts);
        *lock(&self.key) = key.map(Arc::new);
        self
    }

    /// The federation key, once made.
    pub fn federation_key(&self) -> Option<Arc<FederationKey>> {
        lock(&self.key).clone()
    }

    /// Records a key-generation commitment.
    pub fn key_commit(
        &self,
        partner: &str,
        msg: &consortia_proto::KeyCommit,
    ) -> Result<(), Rejection> {
        self.with_ceremony(|c| c.commit(partner, msg))
    }

    /// Records a revealed public-key share, signed with the key of
    /// `certificate` (the partner's, as presented in TLS).
    pub fn key_share(
        &self,
        partner: &str,
        certificate: &[u8],
        msg: &consortia_proto::KeyShare,
    ) -> Result<(), Rejection> {
        self.with_ceremony(|c| c.reveal(partner, certificate, msg))
    }

    /// The attempt number of the round in progress.
    pub fn attempt(&self) -> u64 {
        self.attempt.load(Ordering::Relaxed)
    }

    fn with_ceremony(
        &self,
        step: impl FnOnce(&mut KeyCeremony) -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let r = match lock(&self.ceremony).as_mut() {
            Some(c) => step(c),
            None => Err(Rejection::Malformed(
                "no key generation is in progress".into(),
            )),
        };
        self.changed.notify_one();
        r
    }

    /// The ciphertext shape of the open round, checking that `partner` may
    /// send an encrypted update for `round`.
    pub fn admits_encrypted(
        &self,
        partner: &str,
        round: u64,
    ) -> Result<consortia_he::Shape, Rejection> {
        match lock(&self.round).as_ref() {
            Some(r) => {
                r.admits(partner, round)?;
                r.secure_shape().ok_or_else(|| {
                    Rejection::Malformed(format!("round {round} takes plaintext updates"))
                })
            }
            None => Err(self.closed_or_none(round)),
        }
    }

    /// Folds a complete stored encrypted update into the open round.
    pub fn add_encrypted(&self, round: u64, update: StoredUpdate) -> Result<(), Rejection> {
        let partner = update.partner.clone();
        let examples = update.examples;
        let result = match lock(&self.round).as_mut() {
            Some(r) => r.add_encrypted(round, update),
            None => Err(self.closed_or_none(round)),
        };
        if result.is_ok() {
            tracing::info!(partner = %partner, round, examples, "encrypted update received");
            lock(&self.rows).insert(partner, examples);
            self.changed.notify_one();
        }
        result
    }

    /// One piece of a key holder's partial decryption.
    pub fn add_share_piece(
        &self,
        partner: &str,
        piece: consortia_proto::DecryptionSharePiece,
    ) -> Result<(), Rejection> {
        let r = match lock(&self.decryption).as_mut() {
            Some(d) => d.add_piece(partner, piece),
            None => Err(Rejection::Malformed(format!(
                "decryption share for round {} refused: no decryption is in progress",
                piece.round
            ))),
        };
        self.changed.notify_one();
        r
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
            if let Some(d) = lock(&self.decryption).as_mut() {
                d.fail(partner, "disconnected during decryption");
            }
        }
        self.changed.notify_one();
    }

    /// Names of connected partners.
    pub fn connected(&self) -> Vec<String> {
        lock(&self.sessions).keys().cloned().collect()
    }

    /// Opens `collector`'s round for answers (replacing any open round).
    pub fn open(&self, collector: RoundCollector) {
        *lock(&self.round) = Some(collector);
        self.changed.notify_one();
    }

    /// Updates received so far in the open round (0 when none is open).
    pub fn updates_received(&self) -> usize {
        lock(&self.round)
            .as_ref()
            .map_or(0, RoundCollector::updates)
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
    /// is exhausted is not selected again. A key holder's refusal to decrypt
    /// (`decryption`) fails the decryption in progress.
    pub fn decline(
        &self,
        partner: &str,
        round: u64,
        reason: String,
        budget_exhausted: bool,
        decryption: bool,
    ) -> Result<(), Rejection> {
        if budget_exhausted {
            lock(&self.exhausted).insert(partner.to_string(), reason.clone());
        }
        if decryption {
            let r = match lock(&self.decryption).as_mut() {
                Some(d) if d.round == round => {
                    d.fail(partner, &reason);
                    Ok(())
                }
                _ => Err(Rejection::Malformed(format!(
                    "refusal to decrypt round {round}: no decryption of that round is in progress"
                ))),
            };
            self.changed.notify_one();
            return r;
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
            let (s, smallest) =
                agree_standardization(&hub, min, deadline, accounting.as_mut()).await?;
            // Under [privacy] the reports' means and variances are noisy, but their counts are
            // the partners' training-row counts, which every update publishes anyway (FedAvg
            // weight; recorded in both ledgers): δ is checked against the smallest of those.
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
    // The checked privacy settings, as the accounting holds them.
    let privacy_spec = accounting.as_ref().map(|a| a.book.spec().clone());
    // Under [privacy] partners release only the scheduled evaluations
    // (`PrivacySpec::evaluates`, which they apply too), as noised coarse histograms;
    // without it every round's input model is evaluated exactly.
    let eval_bins = if privacy_spec.is_some() {
        DP_SCORE_BINS
    } else {
        SCORE_BINS
    };
    let mut fed_key = match &hub.ciphertexts {
        Some(ciphertexts) => {
            // Ciphertexts of other rounds, or of a round whose sum was already
            // sent for decryption, are never used again.
            ciphertexts.discard_all_but(last + 1)?;
            if ciphertexts.decrypting(last + 1) {
                tracing::warn!(
                    round = last + 1,
                    "round {} was being decrypted when the coordinator stopped: its ciphertexts are discarded and the round runs again",
                    last + 1
                );
                ciphertexts.discard(last + 1)?;
            }
            Some(ensure_key(&hub, &store, min, deadline).await?)
        }
        None => None,
    };
    // The server strategy resumes from the state committed with the last round.
    let mut strategy = consortia_model::strategy::build(&task.strategy);
    strategy
        .restore(&store.strategy_state()?)
        .map_err(|e| CoordinatorError::Corrupt(e.to_string()))?;
    tracing::info!(
        strategy = strategy.kind(),
        "server strategy {} (from [strategy])",
        strategy.kind()
    );
    print_table_header();
    let mut attempt = 0u64;
    let mut absent_log = Instant::now() - Duration::from_secs(60);
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
        wait_for_partners(&hub, min).await;
        hub.drop_revoked();
        let round = last + 1;
        attempt += 1;
        let mut selected = strategy
            .configure_round(
                &hub.connected(),
                &Selection {
                    round,
                    attempt,
                    seed: task.seed,
                    sample_fraction: task.sample_fraction,
                    min_partners: min,
                },
            )
            .partners;
        if let Some(key) = &fed_key {
            // Only key holders contribute: the sum's noise budget counts them.
            selected.retain(|p| key.party(p).is_some());
            // A sum can only be opened by every key holder together: no round
            // starts (and no privacy budget is spent) while one is away.
            let connected = hub.connected();
            let absent: Vec<&String> = key
                .committee
                .iter()
                .filter(|p| !connected.contains(p))
                .collect();
            if train && !absent.is_empty() {
                if absent_log.elapsed() >= Duration::from_secs(10) {
                    tracing::warn!(
                        round,
                        absent = ?absent,
                        "round {round} waits for every key holder: the sum cannot be decrypted without them. \
                         To go on without a partner that is gone for good, stop the coordinator and run \
                         `consortia rekey --state <dir> --without <partner>`"
                    );
                    absent_log = Instant::now();
                }
                attempt -= 1;
                hub.wait_change(Duration::from_secs(1)).await;
                continue;
            }
        }
        // The final evaluation of a private task goes ahead with the partners that can
        // afford it (each report is private on its own; min_partners is about sums).
        let mut needed = min;
        if train {
            leave_out_over_budget(
                &hub,
                &mut selected,
                accounting.as_mut(),
                min,
                round,
                evaluate,
            )?;
        } else if let Some(acc) = accounting.as_mut() {
            let reasons = leave_out_unaffordable_evaluation(&hub, &mut selected, acc, round);
            if selected.is_empty() {
                tracing::warn!(
                    reasons = ?reasons,
                    "no partner can afford the final evaluation within its privacy budget; the task ends without it"
                );
                break;
            }
            needed = 1;
        }
        if selected.len() < needed {
            if fed_key.is_some() {
                hub.wait_change(Duration::from_secs(1)).await;
            }
            continue;
        }
        let secure = match (&fed_key, train) {
            (Some(key), true) => Some(prepare_secure_round(
                &hub,
                key,
                privacy_spec.as_ref(),
                round,
                &mut selected,
            )?),
            _ => None,
        };
        // Re-key before the key's flooding release budget runs out (key
        // holders refuse past it): `HeParams::max_releases_per_key`.
        if let (Some(key), Some(s)) = (&fed_key, &secure) {
            let values = s.encoding.encoded_len() as u64;
            let budget = key.key.params().max_releases_per_key(values);
            let done = key.releases(store.dir())?;
            if done >= budget {
                tracing::warn!(
                    round,
                    releases = done,
                    budget,
                    "the federation key has been used for {done} decryptions, the most its flooding \
                     tolerates for updates of {values} values: making a new key"
                );
                FederationKey::remove(store.dir(), &[])?;
                *lock(&hub.key) = None;
                fed_key = Some(ensure_key(&hub, &store, min, deadline).await?);
                attempt -= 1;
                continue;
            }
        }
        let kind = if train {
            RoundKind::Train
        } else {
            RoundKind::Evaluate
        };
        let secure_encoding = secure.as_ref().map(|s| s.encoding.clone());
        // Write-ahead: every partner asked to train is charged, durably,
        // before the round starts — a partner that then declines or is late
        // is over-counted, never under-counted.
        if let (Some(acc), RoundKind::Train) = (accounting.as_mut(), kind) {
            let rows = lock(&hub.rows).clone();
            let charged: Vec<(String, u64)> = selected
                .iter()
                .map(|p| (p.clone(), rows.get(p).copied().unwrap_or(1)))
                .collect();
            acc.record_round(round, now_ms(), &charged)?;
        }
        // The same for the evaluation of the model going in: every partner asked to
        // evaluate it is charged before it is asked (after the training charge, the order
        // in which partners charge their own ledgers). Partners whose encrypted update was
        // kept from before a restart are not asked again.
        if let (Some(acc), true) = (accounting.as_mut(), evaluate) {
            let rows = lock(&hub.rows).clone();
            let kept: BTreeSet<&str> = secure
                .as_ref()
                .map(|s| s.stored.iter().map(|u| u.partner.as_str()).collect())
                .unwrap_or_default();
            let charged: Vec<(String, u64)> = selected
                .iter()
                .filter(|p| !kept.contains(p.as_str()))
                .map(|p| (p.clone(), rows.get(p).copied().unwrap_or(1)))
                .collect();
            if !charged.is_empty() {
                acc.record_evaluation(round, now_ms(), &charged)?;
            }
        }
        let model = Arc::new(model);
        let mut result = collect_round(
            &hub,
            round,
            last,
            kind,
            selected,
            model.clone(),
            &standardizer,
            deadline,
            secure,
            evaluate.then_some(eval_bins),
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
        let mut failure = None;
        let mut malformed = false;
        if let (Some(key), Some(encoding)) = (&fed_key, &secure_encoding) {
            if result.contributors.len() >= min {
                match decrypt_round(&hub, key, &mut result, min, deadline).await {
                    Ok(sum) => match decode_sum(
                        privacy_spec.as_ref(),
                        encoding,
                        model.len(),
                        &sum,
                        result.contributors.len(),
                        result.examples,
                    ) {
                        Ok(update) => result.update = Some(update),
                        Err(StepError::Malformed(e)) => {
                            malformed = true;
                            failure = Some(format!("the decrypted sum is unusable: {e}"));
                        }
                        Err(StepError::Other(e)) => {
                            failure = Some(format!("the decrypted sum is unusable: {e}"))
                        }
                    },
                    Err(why) => failure = Some(why),
                }
            }
            if let Some(c) = &hub.ciphertexts {
                c.discard(round)?;
            }
            if let Some(why) = &failure {
                tracing::warn!(round, "round discarded: {why}");
            }
            if malformed {
                // A malformed-but-conformant ciphertext may have made the joint
                // decryption reveal secret-key material: record the incident and
                // never use this key again.
                let why = failure.clone().unwrap_or_default();
                record_incident(store.dir(), round, &result.contributors, &why)?;
                tracing::error!(
                    round,
                    contributors = ?result.contributors,
                    "INCIDENT: round {round}'s decrypted sum is outside what well-formed updates can add up to \
                     (a contributor sent a malformed ciphertext, which may expose key material): the \
                     federation key is retired and a new one is made; see {}",
                    store.dir().join("incidents.log").display()
                );
                FederationKey::remove(store.dir(), &[])?;
                *lock(&hub.key) = None;
                fed_key = Some(ensure_key(&hub, &store, min, deadline).await?);
            }
        }
        let completed = match (kind, result.update.take()) {
            (RoundKind::Train, Some(update)) if result.contributors.len() >= min => {
                let new_model = server_step(&task, strategy.as_mut(), &model, &update)?;
                let rec = RoundRecord {
                    round,
                    participants: result.contributors.clone(),
                    examples: result.examples,
                    train_loss: result.train_loss.is_finite().then_some(result.train_loss),
                    completed_unix_ms: now_ms(),
                };
                store.commit_round(&rec, &new_model, &strategy.checkpoint())?;
                last = round;
                true
            }
            (RoundKind::Train, _) if failure.is_some() => false,
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
        let mut summary = result_summary(round, completed, &result);
        if let Some(why) = failure {
            summary.detail = format!("discarded: {why}");
        }
        announce(&hub, &summary);
        if !train && !completed {
            tracing::warn!("final evaluation got no reports; asking again");
        }
    }
    let final_metrics = store.metrics(last)?;
    match &final_metrics {
        Some(m) => {
            let x = &m.metrics;
            println!(
                "final model (round {last}) on {} held-out rows of {} partners: ROC-AUC {:.4}, accuracy {:.4}, precision {:.4}, recall {:.4}, F1 {:.4}, log-loss {:.4}{}",
                x.examples,
                m.partners.len(),
                x.roc_auc,
                x.accuracy,
                x.precision,
                x.recall,
                x.f1,
                x.log_loss,
                if privacy_spec.is_some() {
                    format!(
                        " (differentially private estimates from {DP_SCORE_BINS}-bin noised score histograms)"
                    )
                } else {
                    String::new()
                }
            );
        }
        None if privacy_spec.is_some() => println!(
            "final model (round {last}): no evaluation was released (see the coordinator's log)"
        ),
        None => {}
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
    evaluate: bool,
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
            && let Err(why) = acc.admits_round(p, rows.get(p).copied().unwrap_or(1), true, evaluate)
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

/// Leaves out of the final evaluation of a private task every partner that
/// declared its budget exhausted or whose evaluation the coordinator's book
/// cannot afford; returns why each was left out.
fn leave_out_unaffordable_evaluation(
    hub: &Hub,
    selected: &mut BTreeSet<String>,
    accounting: &mut Accounting,
    round: u64,
) -> Vec<String> {
    let mut reasons = Vec::new();
    let declared = lock(&hub.exhausted).clone();
    let rows = lock(&hub.rows).clone();
    selected.retain(|p| {
        if let Some(why) = declared.get(p) {
            reasons.push(format!("{p} declined: {why}"));
            return false;
        }
        if let Err(why) = accounting.admits_round(p, rows.get(p).copied().unwrap_or(1), false, true)
        {
            tracing::warn!(partner = %p, round, "left out of the final evaluation: {why}");
            reasons.push(format!("{p}: {why}"));
            return false;
        }
        true
    });
    reasons
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

/// Agrees on the federation-wide standardisation; also returns the smallest
/// partner's row count. Under `[privacy]` every partner asked is first charged, in the
/// coordinator's ledger, for its one release of noised statistics
/// ([`Accounting::record_statistics`]; once per partner and task).
async fn agree_standardization(
    hub: &Hub,
    min: usize,
    deadline: Duration,
    mut accounting: Option<&mut Accounting>,
) -> Result<(StoredStandardizer, u64), CoordinatorError> {
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
        if let Some(acc) = accounting.as_deref_mut() {
            let asked: Vec<String> = expected.iter().cloned().collect();
            acc.record_statistics(now_ms(), &asked)?;
        }
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
        return Ok((
            StoredStandardizer {
                mean: st.mean().to_vec(),
                std: st.std().to_vec(),
            },
            smallest,
        ));
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
    secure: Option<SecureRound>,
    eval_bins: Option<usize>,
) -> RoundResult {
    let until = Instant::now() + deadline;
    let mut collector = RoundCollector::new(
        round,
        model_round,
        kind,
        hub.param_count,
        selected.clone(),
        until,
    )
    .with_evaluation(eval_bins);
    let mut key_id = Vec::new();
    let mut already = BTreeSet::new();
    if let Some(s) = secure {
        key_id = s.aggregate.shape().key_id.to_vec();
        collector = collector.with_aggregate(s.aggregate);
        for update in s.stored {
            let partner = update.partner.clone();
            match collector.add_encrypted(round, update) {
                Ok(()) => {
                    tracing::info!(partner = %partner, round, "encrypted update kept from before the restart");
                    already.insert(partner);
                }
                Err(e) => {
                    tracing::warn!(partner = %partner, round, "stored encrypted update not used: {e}")
                }
            }
        }
    }
    let attempt = match &hub.ciphertexts {
        Some(c) if !key_id.is_empty() => match c.attempt(round) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(round, "cannot store the round's attempt number: {e}");
                now_ms()
            }
        },
        _ => now_ms(),
    };
    hub.attempt.store(attempt, Ordering::Relaxed);
    hub.open(collector);
    let start = RoundStart {
        round,
        param_count: hub.param_count as u64,
        chunk_count: chunk_count(hub.param_count),
        deadline_unix_ms: now_ms() + deadline.as_millis() as u64,
        feature_mean: standardizer.mean.clone(),
        feature_std: standardizer.std.clone(),
        train: kind == RoundKind::Train,
        model_round,
        key_id,
        attempt,
    };
    tracing::info!(round, partners = ?selected, train = kind == RoundKind::Train, "round started");
    for p in selected.iter().filter(|p| !already.contains(*p)) {
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

/// What a secure round starts with.
struct SecureRound {
    encoding: UpdateEncoding,
    aggregate: Aggregate,
    stored: Vec<StoredUpdate>,
}

/// Sets up a secure training round: its encoding and ciphertext shape, and
/// the encrypted updates already received before a restart (their senders
/// join the round without being asked again).
fn prepare_secure_round(
    hub: &Hub,
    key: &FederationKey,
    spec: Option<&PrivacySpec>,
    round: u64,
    selected: &mut BTreeSet<String>,
) -> Result<SecureRound, CoordinatorError> {
    let encoding = UpdateEncoding::for_round(
        spec,
        hub.param_count,
        hub.task.min_partners as usize,
        &key.key,
        round,
    )
    .map_err(|e| CoordinatorError::Task(format!("secure aggregation: {e}")))?;
    let shape = Shape::new(&key.key, encoding.encoded_len() as u64)
        .map_err(|e| CoordinatorError::Task(format!("secure aggregation: {e}")))?;
    let aggregate = Aggregate::new(shape)
        .map_err(|e| CoordinatorError::Task(format!("secure aggregation: {e}")))?;
    let stored = match &hub.ciphertexts {
        Some(c) => c.completed(round)?,
        None => Vec::new(),
    };
    let stored: Vec<StoredUpdate> = stored
        .into_iter()
        .filter(|u| key.party(&u.partner).is_some())
        .collect();
    for u in &stored {
        selected.insert(u.partner.clone());
    }
    Ok(SecureRound {
        encoding,
        aggregate,
        stored,
    })
}

/// The federation key: the stored one, or a new one made by the partners
/// connected now (commit, then reveal; started again if a member leaves or
/// does not answer within the round deadline).
async fn ensure_key(
    hub: &Hub,
    store: &Store,
    min: usize,
    deadline: Duration,
) -> Result<Arc<FederationKey>, CoordinatorError> {
    if let Some(k) = hub.federation_key() {
        tracing::info!(
            holders = ?k.committee,
            "federation key loaded: every round is decrypted jointly by its key holders"
        );
        return Ok(k);
    }
    let excluded = crate::secure::excluded(store.dir())?;
    let mut last_log = Instant::now() - Duration::from_secs(60);
    loop {
        wait_for_partners(hub, min).await;
        let committee: Vec<String> = hub
            .connected()
            .into_iter()
            .filter(|p| !excluded.contains(p))
            .collect();
        if committee.len() < min {
            if last_log.elapsed() >= Duration::from_secs(10) {
                tracing::info!(
                    candidates = ?committee,
                    excluded = ?excluded,
                    needed = min,
                    "waiting for enough partners to make the federation key"
                );
                last_log = Instant::now();
            }
            hub.wait_change(Duration::from_secs(1)).await;
            continue;
        }
        let ceremony = KeyCeremony::new(HeParams::default(), committee.clone(), hub.task_hash)?;
        let session = ceremony.session;
        *lock(&hub.ceremony) = Some(ceremony);
        tracing::info!(holders = ?committee, "generating the federation key (commit, then reveal)");
        for (party, p) in committee.iter().enumerate() {
            hub.send_to(
                p,
                Outbound::Message(message(Kind::Keygen(KeyGenRequest {
                    session_id: session.id.to_vec(),
                    params: u32::from(session.params.id()),
                    party: party as u32,
                    parties: committee.len() as u32,
                    committee: committee.clone(),
                }))),
            );
        }
        if !wait_ceremony(hub, &committee, deadline, KeyCeremony::all_committed).await {
            continue;
        }
        for p in &committee {
            hub.send_to(
                p,
                Outbound::Message(message(Kind::KeyReveal(KeyReveal {
                    session_id: session.id.to_vec(),
                }))),
            );
        }
        if !wait_ceremony(hub, &committee, deadline, KeyCeremony::all_revealed).await {
            continue;
        }
        let Some(ceremony) = lock(&hub.ceremony).take() else {
            continue;
        };
        let key = ceremony.finish()?;
        key.save(store.dir())?;
        let key = Arc::new(key);
        *lock(&hub.key) = Some(key.clone());
        tracing::info!(
            holders = ?key.committee,
            plaintext_bits = key.key.plaintext_bits(),
            "federation key made: updates are encrypted under it and only the key holders together can decrypt a sum"
        );
        let msg = key.message();
        for p in hub.connected() {
            hub.send_to(
                &p,
                Outbound::Message(message(Kind::CollectiveKey(msg.clone()))),
            );
        }
        return Ok(key);
    }
}

/// Waits for a ceremony step; false (and the ceremony dropped) if a member
/// disconnects or the deadline passes.
async fn wait_ceremony(
    hub: &Hub,
    committee: &[String],
    deadline: Duration,
    done: fn(&KeyCeremony) -> bool,
) -> bool {
    let until = Instant::now() + deadline;
    loop {
        let (finished, waiting) = match lock(&hub.ceremony).as_ref() {
            Some(c) => (done(c), c.waiting_for()),
            None => return false,
        };
        if finished {
            return true;
        }
        let connected = hub.connected();
        let gone: Vec<&String> = committee
            .iter()
            .filter(|p| !connected.contains(p))
            .collect();
        if !gone.is_empty() || Instant::now() >= until {
            tracing::warn!(
                gone = ?gone,
                waiting_for = ?waiting,
                "key generation did not complete; starting it again with the partners connected"
            );
            *lock(&hub.ceremony) = None;
            return false;
        }
        hub.wait_change(until.saturating_duration_since(Instant::now()))
            .await;
    }
}

/// Joint decryption of a secure round's sum: every key holder gets the
/// contributors' ciphertexts, recomputes the sum, and returns its partial
/// decryption. Marked durably first, so that the ciphertexts are never used
/// again whatever happens.
async fn decrypt_round(
    hub: &Hub,
    key: &FederationKey,
    result: &mut RoundResult,
    min: usize,
    deadline: Duration,
) -> Result<Vec<u64>, String> {
    let round = result.round;
    let Some(aggregate) = result.aggregate.take() else {
        return Err("the encrypted sum is unusable".into());
    };
    let connected = hub.connected();
    let absent: Vec<&String> = key
        .committee
        .iter()
        .filter(|p| !connected.contains(p))
        .collect();
    if !absent.is_empty() {
        return Err(format!(
            "key holder(s) {absent:?} not connected, and all {} must decrypt together; \
             re-key without an absent partner: stop the coordinator, run `consortia rekey --state <dir> --without <partner>`",
            key.committee.len()
        ));
    }
    if let Some(c) = &hub.ciphertexts {
        c.mark_decrypting(round).map_err(|e| e.to_string())?;
        key.count_release(c.state_dir())
            .map_err(|e| e.to_string())?;
    }
    let request = DecryptRequest {
        round,
        contributions: result
            .ciphertexts
            .iter()
            .map(|u| consortia_proto::Contribution {
                partner: u.partner.clone(),
                example_count: u.examples,
                signature: u.signature.clone(),
                certificate: u.certificate.clone(),
            })
            .collect(),
        min_contributors: min as u32,
        aggregate_digest: aggregate.mask_digest().to_vec(),
        values: aggregate.shape().values,
        attempt: hub.attempt(),
        task_hash: hub.task_hash.to_vec(),
    };
    let files = Arc::new(
        result
            .ciphertexts
            .iter()
            .map(|u| (u.path.clone(), u.body_hashes.clone()))
            .collect::<Vec<_>>(),
    );
    let shape = *aggregate.shape();
    *lock(&hub.decryption) = Some(Decryption::new(round, &aggregate, key));
    drop(aggregate);
    tracing::info!(
        round,
        holders = key.committee.len(),
        "asking the key holders to decrypt the sum"
    );
    for p in &key.committee {
        if !hub.send_to(
            p,
            Outbound::Decrypt {
                request: request.clone(),
                files: files.clone(),
                shape,
            },
        ) && let Some(d) = lock(&hub.decryption).as_mut()
        {
            d.fail(p, "could not be reached");
        }
    }
    let until = Instant::now() + deadline;
    loop {
        let state = lock(&hub.decryption)
            .as_ref()
            .map(|d| (d.complete(), d.failed.clone(), d.waiting_for()));
        match state {
            None => return Err("decryption state lost".into()),
            Some((true, _, _)) => break,
            Some((_, Some(why), _)) => {
                *lock(&hub.decryption) = None;
                return Err(format!("decryption failed: {why}"));
            }
            Some((_, None, waiting)) if Instant::now() >= until => {
                *lock(&hub.decryption) = None;
                return Err(format!(
                    "decryption shares missing at the deadline from {waiting:?}"
                ));
            }
            _ => {}
        }
        hub.wait_change(until.saturating_duration_since(Instant::now()))
            .await;
    }
    let d = lock(&hub.decryption)
        .take()
        .ok_or_else(|| "decryption state lost".to_string())?;
    d.finish()
}

/// Appends an incident (JSON, one line) to `<state>/incidents.log`, synced.
fn record_incident(
    state_dir: &std::path::Path,
    round: u64,
    contributors: &[String],
    detail: &str,
) -> Result<(), CoordinatorError> {
    use std::io::Write;
    let line = serde_json::json!({
        "time_unix_ms": now_ms(),
        "round": round,
        "kind": "malformed-ciphertext",
        "contributors": contributors,
        "detail": detail,
        "action": "federation key retired; a new key ceremony started",
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("incidents.log"))?;
    writeln!(f, "{line}")?;
    f.sync_all()?;
    Ok(())
}

/// Why a decrypted sum gives no model.
#[derive(Debug)]
enum StepError {
    /// Outside what well-formed updates can add up to: a malformed ciphertext.
    Malformed(String),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Malformed(s) | StepError::Other(s) => f.write_str(s),
        }
    }
}

/// The next global parameters: the round's aggregate as the FedAvg delta at the
/// global model ([`AggregatedUpdate::model_delta`]), stepped by the server strategy.
/// A step that cannot be taken stops the task: rerunning the round would produce the
/// same aggregate and fail again.
fn server_step(
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

/// The decrypted sum of a secure round as an [`AggregatedUpdate`]: the
/// example-weighted mean delta (no distributed DP), the noisy sum of clipped deltas
/// (distributed, partner unit) or of clipped per-row gradients (distributed, record
/// unit).
fn decode_sum(
    spec: Option<&PrivacySpec>,
    encoding: &UpdateEncoding,
    dim: usize,
    sum: &[u64],
    contributors: usize,
    examples: u64,
) -> Result<AggregatedUpdate, StepError> {
    let decoded = encoding
        .decode(sum, contributors as u64)
        .map_err(|e| match e {
            consortia_dp::DpError::OutOfRange { .. } => StepError::Malformed(e.to_string()),
            e => StepError::Other(e.to_string()),
        })?;
    if decoded.len() != dim {
        return Err(StepError::Other(format!(
            "decoded {} values for a model of {dim}",
            decoded.len(),
        )));
    }
    let distributed = spec.filter(|s| s.placement == NoisePlacement::Distributed);
    Ok(match distributed.map(|s| s.unit) {
        None => AggregatedUpdate::WeightedMeanDelta(decoded),
        Some(PrivacyUnit::Partner) => AggregatedUpdate::ClippedDeltaSum {
            sum: decoded,
            contributors,
        },
        Some(PrivacyUnit::Record) => AggregatedUpdate::GradientSum {
            sum: decoded,
            rows: examples,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use consortia_he::CollectivePublicKey;

    const SECURE: &str = include_str!("../../examples/telco_churn_secure.toml");
    const DDG: &str = include_str!("../../examples/telco_churn_ddg_eps8.toml");

    fn key(parties: u32) -> CollectivePublicKey {
        crate::testing::collective_key(HeParams::Secure128, parties, 3)
    }

    /// A decrypted sum through decoding and a FedAvg server step, as a round does.
    fn secure_step(
        task: &TaskSpec,
        spec: Option<&PrivacySpec>,
        enc: &UpdateEncoding,
        global: &[f64],
        sum: &[u64],
        contributors: usize,
        examples: u64,
    ) -> Result<Vec<f64>, StepError> {
        let update = decode_sum(spec, enc, global.len(), sum, contributors, examples)?;
        let mut fedavg = consortia_model::strategy::build(&Default::default());
        server_step(task, fedavg.as_mut(), global, &update)
            .map_err(|e| StepError::Other(e.to_string()))
    }

    /// The plaintext sum of encoded vectors, as joint decryption returns it.
    fn sum(vectors: &[Vec<u64>], bits: u32) -> Vec<u64> {
        let mask = (1u64 << bits) - 1;
        let mut out = vec![0u64; vectors[0].len()];
        for v in vectors {
            for (o, x) in out.iter_mut().zip(v) {
                *o = o.wrapping_add(*x) & mask;
            }
        }
        out
    }

    #[test]
    fn weighted_secure_round_is_fedavg() {
        let task = TaskSpec::from_toml_str(SECURE).unwrap();
        let n = task.schema.param_count();
        let k = key(3);
        let enc = UpdateEncoding::for_round(None, n, 3, &k, 1).unwrap();
        let global = vec![0.5; n];
        let a = enc.encode_weighted(&vec![0.25; n], 100).unwrap();
        let b = enc.encode_weighted(&vec![-0.5; n], 300).unwrap();
        let s = sum(&[a, b], k.plaintext_bits());
        let next = secure_step(&task, None, &enc, &global, &s, 2, 400).unwrap();
        // (100·0.25 − 300·0.5)/400 = −0.3125
        for v in &next {
            assert!((v - (0.5 - 0.3125)).abs() < 1e-4, "{v}");
        }
        // A sum with a value no two well-formed updates can reach is a
        // malformed ciphertext: the round is an incident.
        let mut probed = s.clone();
        probed[0] = (probed[0] + (1u64 << 40)) & ((1u64 << k.plaintext_bits().min(62)) - 1);
        assert!(matches!(
            secure_step(&task, None, &enc, &global, &probed, 2, 400),
            Err(StepError::Malformed(_))
        ));
    }

    #[test]
    fn distributed_record_round_is_one_gradient_step() {
        let task = TaskSpec::from_toml_str(DDG).unwrap();
        let mut spec = task.privacy_spec().unwrap().unwrap();
        // Almost no noise, so the step is checked to the rounding precision.
        spec.noise_multiplier = 1e-4;
        let n = task.schema.param_count();
        let k = key(3);
        let enc = UpdateEncoding::for_round(Some(&spec), n, 3, &k, 5).unwrap();
        let grads: Vec<Vec<f64>> = (0..3)
            .map(|p| {
                (0..n)
                    .map(|i| ((i + p) as f64 * 0.3).sin() * 20.0)
                    .collect()
            })
            .collect();
        let encoded: Vec<Vec<u64>> = grads.iter().map(|g| enc.encode_ddg(g).unwrap()).collect();
        let s = sum(&encoded, k.plaintext_bits());
        let global: Vec<f64> = (0..n).map(|i| i as f64 * 0.01).collect();
        let rows = 1000u64;
        let next = secure_step(&task, Some(&spec), &enc, &global, &s, 3, rows).unwrap();
        let lr = task.learning_rate;
        let l2 = task.model.l2;
        for i in 0..n {
            let g: f64 = grads.iter().map(|v| v[i]).sum::<f64>() / rows as f64;
            let penalty = if i == n - 1 { 0.0 } else { l2 * global[i] };
            let want = global[i] - lr * (g + penalty);
            assert!(
                (next[i] - want).abs() < 1e-3,
                "parameter {i}: {} vs {want}",
                next[i]
            );
        }
    }

    #[test]
    fn distributed_partner_round_adds_the_mean_clipped_delta() {
        let mut task = TaskSpec::from_toml_str(DDG).unwrap();
        let mut table = task.privacy.clone().unwrap();
        table.insert("unit".into(), "partner".into());
        task.privacy = Some(table);
        let mut spec = task.privacy_spec().unwrap().unwrap();
        spec.noise_multiplier = 1e-4;
        spec.clip_norm = 1.0;
        let n = task.schema.param_count();
        let k = key(3);
        let enc = UpdateEncoding::for_round(Some(&spec), n, 3, &k, 2).unwrap();
        // One delta inside the clip, one far outside it (clipped to norm 1).
        let small = vec![0.01; n];
        let big = vec![10.0; n];
        let s = sum(
            &[
                enc.encode_ddg(&small).unwrap(),
                enc.encode_ddg(&big).unwrap(),
            ],
            k.plaintext_bits(),
        );
        let global = vec![0.0; n];
        let next = secure_step(&task, Some(&spec), &enc, &global, &s, 2, 500).unwrap();
        let clipped = 1.0 / (n as f64).sqrt();
        for v in &next {
            assert!((v - (0.01 + clipped) / 2.0).abs() < 1e-3, "{v}");
        }
    }
}
