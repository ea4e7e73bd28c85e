//! The coordinator's Prometheus metrics: one registry of every metric family, and a
//! typed handle ([`Telemetry`], kept in the [`Hub`]) that the places where things
//! happen call in one line each.
//!
//! Served on a listener of its own when `[observability] metrics_listen` is set
//! ([`consortia_observability::serve`]); off by default. Names follow Prometheus'
//! conventions: a `consortia_` prefix, `_total` on counters, base units in the name
//! (`_seconds`, `_bytes`). README's "Metrics" section lists them all.
//!
//! What is counted where:
//!
//! * rounds and their outcomes: [`Telemetry::round_started`] and
//!   [`Telemetry::round_ended`], from the task loop;
//! * the phase in progress and how long each took: [`Telemetry::stage_begun`] and
//!   [`Telemetry::stage_ended`], from the hub, where every phase opens and closes its stage;
//! * partners: the hub's sessions, declines and updates; refused handshakes through
//!   the TLS acceptor's observer ([`Telemetry::handshake_observer`]); refused sessions,
//!   rejected messages and oversized ones from the service;
//! * bytes in and out: every accepted connection's reads and writes ([`Counted`]);
//! * ε spent and budgets: from the coordinator's privacy book after each charge
//!   ([`Telemetry::privacy`]);
//! * the latest federated evaluation of the task's kind ([`Telemetry::evaluated`]);
//! * key holders: how many hold the federation key and are connected
//!   ([`Telemetry::key_holders`], from the hub's [`crate::key_holders::KeyHolders`]), each
//!   holder's part in every decryption ([`Telemetry::key_holder_decryption`]) and
//!   re-keys ([`Telemetry::rekeyed`]).

use std::collections::BTreeSet;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use consortia_model::{TaskMetrics, TaskSpec};
use consortia_observability::prometheus_client::metrics::counter::Counter;
use consortia_observability::prometheus_client::metrics::family::Family;
use consortia_observability::prometheus_client::metrics::gauge::Gauge;
use consortia_observability::prometheus_client::metrics::histogram::Histogram;
use consortia_observability::prometheus_client::registry::{Registry, Unit};
use consortia_observability::{MetricsServer, ObservabilityConfig, seconds_buckets};
use consortia_pki::{HandshakeRefusal, RefusalObserver};
use consortia_proto::{ClientMessage, DeclineKind, client_message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tonic::transport::server::Connected;

use crate::CoordinatorError;
use crate::accounting::Accounting;
use crate::hub::{Hub, Stage, lock};
use crate::phase::collection::RoundSpec;
use crate::rejection::Rejection;
use crate::round::{RoundEnd, RoundResult, abandoned_code};
use crate::store::MetricsRecord;

/// One label.
type Label = [(&'static str, &'static str); 1];
/// A partner's name as a label.
type PartnerLabel = [(&'static str, String); 1];
/// A partner's name and an outcome as labels.
type PartnerOutcome = [(&'static str, String); 2];
/// A gauge of a real number.
type FloatGauge = Gauge<f64, AtomicU64>;
/// Histograms of durations in seconds, by one label.
type Durations = Family<Label, Histogram, fn() -> Histogram>;

/// The phases of the protocol, as the `phase` label names them.
pub const PHASES: [&str; 5] = [
    "idle",
    "standardisation",
    "key_ceremony",
    "collection",
    "decryption",
];

/// Why the coordinator re-keys by itself, as the `reason` label of `consortia_rekeys_total`
/// names it: too few key holders reachable for `[keys] rekey_after_s`, the key's release
/// budget spent, a malformed sum.
pub const REKEY_REASONS: [&str; 3] = ["holders_unreachable", "releases_spent", "malformed_sum"];

/// Why a session was refused after its TLS handshake succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The request carried no usable client certificate.
    NoCertificate,
    /// The certificate was revoked after the connection was made.
    Revoked,
    /// The certificate is not a partner's (the coordinator's own, or no name).
    NotAPartner,
    /// The partner is not among the task's `partners`.
    NotInTask,
    /// The partner already has a running session.
    AlreadyConnected,
    /// The first message was not `Hello`, or none came in time.
    NoHello,
    /// The agent's `Hello` declares an older protocol than the task needs
    /// (joint decryption by sketches, for a secure task).
    OldProtocol,
}

impl SessionRefusal {
    /// The `reason` label.
    pub fn code(self) -> &'static str {
        match self {
            SessionRefusal::NoCertificate => "no_certificate",
            SessionRefusal::Revoked => "revoked",
            SessionRefusal::NotAPartner => "not_a_partner",
            SessionRefusal::NotInTask => "not_in_task",
            SessionRefusal::AlreadyConnected => "already_connected",
            SessionRefusal::NoHello => "no_hello",
            SessionRefusal::OldProtocol => "old_protocol",
        }
    }
}

/// The coordinator's metrics. Cheap to clone: every clone counts into the same registry.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    rounds_started: Counter,
    rounds_completed: Counter,
    rounds_abandoned: Family<Label, Counter>,
    rounds_discarded: Family<Label, Counter>,
    round: Gauge,
    phase: Family<Label, Gauge>,
    round_duration: Durations,
    phase_duration: Durations,
    partners_connected: Gauge,
    partners_selected: Counter,
    partners_contributed: Counter,
    partners_declined: Family<Label, Counter>,
    handshakes_refused: Family<Label, Counter>,
    sessions_refused: Family<Label, Counter>,
    updates_received: Counter,
    updates_rejected: Family<Label, Counter>,
    messages_rejected: Family<[(&'static str, &'static str); 2], Counter>,
    messages_oversized: Counter,
    received_bytes: Counter,
    sent_bytes: Counter,
    epsilon_spent: Family<PartnerLabel, FloatGauge>,
    epsilon_budget: Family<PartnerLabel, FloatGauge>,
    evaluation_round: Gauge,
    evaluation: Vec<(&'static str, FloatGauge)>,
    key_holders: Gauge,
    key_holders_connected: Gauge,
    key_threshold: Gauge,
    key_holder_decryptions: Family<PartnerOutcome, Counter>,
    rekeys: Family<Label, Counter>,
    round_start: Mutex<Option<Instant>>,
    phase_start: Mutex<Option<(&'static str, Instant)>>,
}

fn durations() -> Histogram {
    Histogram::new(seconds_buckets())
}

/// The evaluation figures of a task's kind: (metric name suffix, help).
fn evaluation_figures(classifier: bool) -> &'static [(&'static str, &'static str)] {
    if classifier {
        &[
            ("roc_auc", "ROC-AUC"),
            ("pr_auc", "area under the precision-recall curve"),
            ("log_loss", "log-loss"),
            ("accuracy", "accuracy at threshold 0.5"),
            ("precision", "precision at threshold 0.5"),
            ("recall", "recall at threshold 0.5"),
            ("f1", "F1 score at threshold 0.5"),
            ("lift_top10", "lift in the top 10 % of scores"),
            ("lift_top20", "lift in the top 20 % of scores"),
            ("examples", "held-out rows scored"),
        ]
    } else {
        &[
            ("rmse", "root mean squared error"),
            ("mae", "mean absolute error"),
            ("r2", "coefficient of determination R²"),
            ("deviance", "mean deviance of the task's family"),
            ("gini", "normalised Gini coefficient"),
            (
                "top20_capture",
                "share of the target in the top 20 % of predictions",
            ),
            ("examples", "held-out rows scored"),
        ]
    }
}

/// The figures of `m` by the names [`evaluation_figures`] gives.
fn figures(m: &TaskMetrics) -> Vec<(&'static str, f64)> {
    match m {
        TaskMetrics::Binary(m) => vec![
            ("roc_auc", m.roc_auc),
            ("pr_auc", m.pr_auc),
            ("log_loss", m.log_loss),
            ("accuracy", m.accuracy),
            ("precision", m.precision),
            ("recall", m.recall),
            ("f1", m.f1),
            ("lift_top10", m.lift_10),
            ("lift_top20", m.lift_20),
            ("examples", m.examples as f64),
        ],
        TaskMetrics::Regression(m) => vec![
            ("rmse", m.rmse),
            ("mae", m.mae),
            ("r2", m.r2),
            ("deviance", m.deviance),
            ("gini", m.gini),
            ("top20_capture", m.top20_capture),
            ("examples", m.examples as f64),
        ],
        // Under the regression gauges' names (a recommendation task is not a classifier).
        TaskMetrics::Recommendation(m) => vec![
            ("rmse", m.rmse),
            ("mae", m.mae),
            ("examples", m.examples as f64),
        ],
    }
}

/// The `phase` label of a stage.
pub fn phase_of(stage: &Stage) -> &'static str {
    match stage {
        Stage::Idle => "idle",
        Stage::Standardisation(_) => "standardisation",
        Stage::KeyCeremony(_) => "key_ceremony",
        Stage::Collection(_) => "collection",
        Stage::Decryption(_) => "decryption",
    }
}

/// The `message` label of a partner's message.
pub fn message_kind(msg: &ClientMessage) -> &'static str {
    use client_message::Kind;
    match &msg.kind {
        None => "unknown",
        Some(Kind::Hello(_)) => "hello",
        Some(Kind::Stats(_)) => "statistics",
        Some(Kind::Eval(_)) => "evaluation",
        Some(Kind::Decline(_)) => "decline",
        Some(Kind::Update(_)) => "update",
        Some(Kind::KeyCommit(_)) => "key_commit",
        Some(Kind::KeyShare(_)) => "key_share",
        Some(Kind::Encrypted(_)) => "encrypted_update",
        Some(Kind::DecryptionShare(_)) => "decryption_share",
        Some(Kind::LedgerHead(_)) => "ledger_head",
        Some(Kind::ChallengeCommit(_)) => "challenge_commit",
        Some(Kind::ChallengeSeed(_)) => "challenge_seed",
        Some(Kind::Sketch(_)) => "sketch",
        Some(Kind::ThresholdKeys(_)) => "threshold_keys",
        Some(Kind::ThresholdDealing(_)) => "threshold_dealing",
        Some(Kind::ThresholdResult(_)) => "threshold_result",
    }
}

impl Telemetry {
    /// Every metric family of the coordinator serving `task` (its evaluation gauges
    /// are those of the task's kind), all at zero.
    pub fn new(task: &TaskSpec) -> Self {
        let mut r = Registry::with_prefix("consortia");
        let rounds_started = Counter::default();
        r.register(
            "rounds_started",
            "Rounds started (each attempt of a round counts)",
            rounds_started.clone(),
        );
        let rounds_completed = Counter::default();
        r.register(
            "rounds_completed",
            "Rounds that achieved what they asked: a training round aggregated and committed, or an evaluation round evaluated",
            rounds_completed.clone(),
        );
        let rounds_abandoned = Family::<Label, Counter>::default();
        r.register(
            "rounds_abandoned",
            "Rounds that ended with too few answers, by reason (too_few_updates, no_evaluation); each runs again",
            rounds_abandoned.clone(),
        );
        let rounds_discarded = Family::<Label, Counter>::default();
        r.register(
            "rounds_discarded",
            "Rounds whose result was thrown away, by reason (unusable_sum, malformed_sum, not_finite); each runs again",
            rounds_discarded.clone(),
        );
        let round = Gauge::default();
        r.register(
            "round",
            "The round in progress (or the last one started)",
            round.clone(),
        );
        let task_rounds = Gauge::<i64>::default();
        task_rounds.set(i64::from(task.rounds));
        r.register(
            "task_rounds",
            "Training rounds the task asks for",
            task_rounds,
        );
        let phase = Family::<Label, Gauge>::default();
        for p in PHASES {
            phase
                .get_or_create(&[("phase", p)])
                .set(i64::from(p == "idle"));
        }
        r.register(
            "phase",
            "1 for the protocol phase in progress (idle, standardisation, key_ceremony, collection, decryption), 0 for the others",
            phase.clone(),
        );
        let round_duration = Durations::new_with_constructor(durations);
        r.register_with_unit(
            "round_duration",
            "Duration of rounds from selection to their end (collection, decryption and commit), by outcome (completed, abandoned, discarded)",
            Unit::Seconds,
            round_duration.clone(),
        );
        let phase_duration = Durations::new_with_constructor(durations);
        r.register_with_unit(
            "phase_duration",
            "Duration of each protocol phase (standardisation, key_ceremony, collection, decryption)",
            Unit::Seconds,
            phase_duration.clone(),
        );
        let partners_connected = Gauge::default();
        r.register(
            "partners_connected",
            "Partners with a live session",
            partners_connected.clone(),
        );
        let partners_selected = Counter::default();
        r.register(
            "partners_selected",
            "Partners asked into rounds, summed over rounds",
            partners_selected.clone(),
        );
        let partners_contributed = Counter::default();
        r.register(
            "partners_contributed",
            "Partners whose update went into a round's aggregate, summed over rounds",
            partners_contributed.clone(),
        );
        let partners_declined = Family::<Label, Counter>::default();
        r.register(
            "partners_declined",
            "Declines received from partners, by reason (round, budget, decryption)",
            partners_declined.clone(),
        );
        let handshakes_refused = Family::<Label, Counter>::default();
        r.register(
            "handshakes_refused",
            "TLS handshakes refused, by reason (no_certificate, other_ca, expired, not_valid_yet, revoked, wrong_purpose, timeout, other)",
            handshakes_refused.clone(),
        );
        let sessions_refused = Family::<Label, Counter>::default();
        r.register(
            "sessions_refused",
            "Sessions refused after the handshake, by reason (no_certificate, revoked, not_a_partner, not_in_task, already_connected, no_hello, old_protocol)",
            sessions_refused.clone(),
        );
        let updates_received = Counter::default();
        r.register(
            "updates_received",
            "Complete model updates (plain or encrypted) taken into a round",
            updates_received.clone(),
        );
        let updates_rejected = Family::<Label, Counter>::default();
        r.register(
            "updates_rejected",
            "Update chunks (plain or encrypted) refused, by reason (no_open_round, wrong_round, closed, not_selected, duplicate, out_of_phase, invalid, unavailable)",
            updates_rejected.clone(),
        );
        let messages_rejected = Family::default();
        r.register(
            "messages_rejected",
            "Partner messages of any kind refused, by message kind and reason",
            messages_rejected.clone(),
        );
        let messages_oversized = Counter::default();
        r.register(
            "messages_oversized",
            "Partner messages refused for exceeding the message size limit (the session is ended)",
            messages_oversized.clone(),
        );
        let received_bytes = Counter::default();
        r.register_with_unit(
            "network_received",
            "Bytes received on partner connections (TLS records included)",
            Unit::Bytes,
            received_bytes.clone(),
        );
        let sent_bytes = Counter::default();
        r.register_with_unit(
            "network_sent",
            "Bytes sent on partner connections (TLS records included)",
            Unit::Bytes,
            sent_bytes.clone(),
        );
        let epsilon_spent = Family::<PartnerLabel, FloatGauge>::default();
        r.register(
            "partner_epsilon_spent",
            "ε each partner has spent on this task, by the coordinator's privacy ledger (write-ahead: charged when a round starts)",
            epsilon_spent.clone(),
        );
        let epsilon_budget = Family::<PartnerLabel, FloatGauge>::default();
        r.register(
            "partner_epsilon_budget",
            "Each partner's ε budget for this task",
            epsilon_budget.clone(),
        );
        let evaluation_round = Gauge::default();
        r.register(
            "evaluation_model_round",
            "The round whose model the latest federated evaluation scored (0: the initial model)",
            evaluation_round.clone(),
        );
        let evaluation = evaluation_figures(task.is_classifier())
            .iter()
            .map(|(name, help)| {
                let g = FloatGauge::default();
                r.register(
                    format!("evaluation_{name}"),
                    format!("Latest federated evaluation: {help}"),
                    g.clone(),
                );
                (*name, g)
            })
            .collect();
        let key_holders = Gauge::default();
        r.register(
            "key_holders",
            "Holders of the federation key (0 without a key)",
            key_holders.clone(),
        );
        let key_holders_connected = Gauge::default();
        r.register(
            "key_holders_connected",
            "Holders of the federation key with a live session",
            key_holders_connected.clone(),
        );
        let key_threshold = Gauge::default();
        r.register(
            "key_threshold",
            "Key holders whose shares open a sum: the task's key_threshold t, or every holder of an N-of-N key",
            key_threshold.clone(),
        );
        let key_holder_decryptions = Family::<PartnerOutcome, Counter>::default();
        r.register(
            "key_holder_decryptions",
            "Each key holder's part in every joint decryption, by partner and outcome (answered: its share arrived; absent: not connected, not asked; failed: refused, left or missed the deadline; stopped: another party failed first)",
            key_holder_decryptions.clone(),
        );
        let rekeys = Family::<Label, Counter>::default();
        for reason in REKEY_REASONS {
            let _ = rekeys.get_or_create(&[("reason", reason)]);
        }
        r.register(
            "rekeys",
            "Federation keys retired and made again by the coordinator, by reason (holders_unreachable, releases_spent, malformed_sum)",
            rekeys.clone(),
        );
        Telemetry {
            inner: Arc::new(Inner {
                registry: Arc::new(r),
                rounds_started,
                rounds_completed,
                rounds_abandoned,
                rounds_discarded,
                round,
                phase,
                round_duration,
                phase_duration,
                partners_connected,
                partners_selected,
                partners_contributed,
                partners_declined,
                handshakes_refused,
                sessions_refused,
                updates_received,
                updates_rejected,
                messages_rejected,
                messages_oversized,
                received_bytes,
                sent_bytes,
                epsilon_spent,
                epsilon_budget,
                evaluation_round,
                evaluation,
                key_holders,
                key_holders_connected,
                key_threshold,
                key_holder_decryptions,
                rekeys,
                round_start: Mutex::new(None),
                phase_start: Mutex::new(None),
            }),
        }
    }

    /// The registry, for encoding.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.inner.registry)
    }

    /// Starts the metrics listener when `cfg` asks for one; `None` when it does not.
    /// The listener stops when the returned server is dropped.
    pub async fn serve(
        &self,
        cfg: &ObservabilityConfig,
    ) -> Result<Option<MetricsServer>, CoordinatorError> {
        let Some(addr) = cfg.metrics_listen else {
            return Ok(None);
        };
        consortia_observability::serve(addr, self.registry(), "coordinator")
            .await
            .map(Some)
            .map_err(|e| {
                CoordinatorError::Network(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen for metrics on {addr} ([observability] metrics_listen): {e}"
                    ),
                ))
            })
    }

    // ----- rounds and phases -----

    /// A round's collection starts with `spec.selected` asked.
    pub fn round_started(&self, spec: &RoundSpec) {
        let m = &self.inner;
        m.rounds_started.inc();
        m.round.set(spec.round as i64);
        m.partners_selected.inc_by(spec.selected.len() as u64);
        *lock(&m.round_start) = Some(Instant::now());
    }

    /// A round ended as `end`, with `result`'s contributors.
    pub fn round_ended(&self, end: &RoundEnd, result: &RoundResult) {
        let m = &self.inner;
        let outcome = match end {
            RoundEnd::Aggregated(_) | RoundEnd::Evaluated => {
                m.rounds_completed.inc();
                "completed"
            }
            RoundEnd::TooFew => {
                let reason = abandoned_code(result.kind);
                m.rounds_abandoned
                    .get_or_create(&[("reason", reason)])
                    .inc();
                "abandoned"
            }
            RoundEnd::Discarded(why) => {
                let reason = why.code();
                m.rounds_discarded
                    .get_or_create(&[("reason", reason)])
                    .inc();
                "discarded"
            }
        };
        if end.completed() {
            m.partners_contributed
                .inc_by(result.contributors.len() as u64);
        }
        if let Some(start) = lock(&m.round_start).take() {
            m.round_duration
                .get_or_create(&[("outcome", outcome)])
                .observe(start.elapsed().as_secs_f64());
        }
    }

    /// The hub begins `stage` (replacing whatever was in progress, which ends now).
    pub fn stage_begun(&self, stage: &Stage) {
        let phase = phase_of(stage);
        self.end_phase();
        if phase != "idle" {
            *lock(&self.inner.phase_start) = Some((phase, Instant::now()));
        }
        self.set_phase(phase);
    }

    /// The hub ended `stage`; returns it.
    pub fn stage_ended(&self, stage: Stage) -> Stage {
        self.end_phase();
        self.set_phase("idle");
        stage
    }

    fn end_phase(&self) {
        if let Some((phase, start)) = lock(&self.inner.phase_start).take() {
            self.inner
                .phase_duration
                .get_or_create(&[("phase", phase)])
                .observe(start.elapsed().as_secs_f64());
        }
    }

    fn set_phase(&self, current: &'static str) {
        for p in PHASES {
            let g = self.inner.phase.get_or_create(&[("phase", p)]);
            g.set(i64::from(p == current));
        }
    }

    // ----- partners -----

    /// `n` partners now have a session.
    pub fn connected(&self, n: usize) {
        self.inner.partners_connected.set(n as i64);
    }

    /// A partner declined something of `kind`.
    pub fn declined(&self, kind: DeclineKind) {
        let family = &self.inner.partners_declined;
        family.get_or_create(&[("reason", kind.code())]).inc();
    }

    /// Counts each handshake the TLS acceptor refuses, by its reason.
    pub fn handshake_observer(&self) -> RefusalObserver {
        let refused = self.inner.handshakes_refused.clone();
        Arc::new(move |why: HandshakeRefusal| {
            refused.get_or_create(&[("reason", why.code())]).inc();
        })
    }

    /// A session was refused after its handshake.
    pub fn session_refused(&self, why: SessionRefusal) {
        let family = &self.inner.sessions_refused;
        family.get_or_create(&[("reason", why.code())]).inc();
    }

    // ----- messages -----

    /// A complete update was taken into the open round.
    pub fn update_received(&self) {
        self.inner.updates_received.inc();
    }

    /// A message of kind `message` ([`message_kind`]) was refused.
    pub fn rejected(&self, message: &'static str, rejection: &Rejection) {
        let reason = rejection.reason_code();
        let m = &self.inner;
        let labels = [("message", message), ("reason", reason)];
        m.messages_rejected.get_or_create(&labels).inc();
        if matches!(message, "update" | "encrypted_update") {
            m.updates_rejected
                .get_or_create(&[("reason", reason)])
                .inc();
        }
    }

    /// A partner's stream broke with `status` (as answered): counts a message over the
    /// size limit.
    pub fn stream_broken(&self, status: &Status) {
        if status.code() == tonic::Code::ResourceExhausted {
            self.inner.messages_oversized.inc();
        }
    }

    /// Counts the bytes read from and written to every connection `incoming` yields.
    pub fn count_bytes<S, T>(
        &self,
        incoming: S,
    ) -> impl Stream<Item = io::Result<Counted<T>>> + use<S, T>
    where
        S: Stream<Item = io::Result<T>>,
    {
        let (received, sent) = (
            self.inner.received_bytes.clone(),
            self.inner.sent_bytes.clone(),
        );
        incoming.map(move |conn| {
            conn.map(|inner| Counted {
                inner,
                received: received.clone(),
                sent: sent.clone(),
            })
        })
    }

    // ----- privacy and evaluation -----

    /// Sets each partner's ε spent and budget from `acc`'s book: the task's partners,
    /// those connected and those that reported rows.
    pub fn privacy(&self, hub: &Hub, acc: &Accounting) {
        let mut partners: BTreeSet<String> = hub.connected().into_iter().collect();
        partners.extend(hub.rows().into_keys());
        partners.extend(hub.task.partners.iter().flatten().cloned());
        for p in partners {
            let label = [("partner", p.clone())];
            let budget = acc.book.budget_for(&p).epsilon;
            self.inner.epsilon_budget.get_or_create(&label).set(budget);
            if let Ok(spent) = acc.book.spent(&p) {
                self.inner.epsilon_spent.get_or_create(&label).set(spent);
            }
        }
    }

    /// The latest federated evaluation, if any.
    pub fn evaluated(&self, record: Option<&MetricsRecord>) {
        let Some(record) = record else { return };
        let m = &self.inner;
        m.evaluation_round.set(record.model_round as i64);
        for (name, value) in figures(&record.metrics) {
            if let Some((_, g)) = m.evaluation.iter().find(|(n, _)| *n == name) {
                g.set(value);
            }
        }
    }
}

impl Telemetry {
    // ----- key holders -----

    /// The federation key has `holders` holders (0: no key), `connected` of them with a
    /// session; `threshold`: the task's key_threshold (none: every holder).
    pub fn key_holders(&self, holders: usize, connected: usize, threshold: Option<u32>) {
        let m = &self.inner;
        m.key_holders.set(holders as i64);
        m.key_holders_connected.set(connected as i64);
        let t = threshold.map_or(holders as i64, i64::from);
        m.key_threshold.set(if holders == 0 { 0 } else { t });
    }

    /// A decryption ended as `record` says: each holder's outcome is counted.
    pub fn key_holder_decryption(&self, record: &crate::key_holders::DecryptionRecord) {
        for (partner, outcome) in record.outcomes() {
            let labels = [
                ("partner", partner.to_string()),
                ("outcome", outcome.code().to_string()),
            ];
            self.inner
                .key_holder_decryptions
                .get_or_create(&labels)
                .inc();
        }
    }

    /// The coordinator retired the federation key for `reason` ([`REKEY_REASONS`]).
    pub fn rekeyed(&self, reason: &'static str) {
        self.inner.rekeys.get_or_create(&[("reason", reason)]).inc();
    }
}

/// A connection whose reads and writes are counted in bytes; otherwise the connection
/// itself (its peer information included).
pub struct Counted<T> {
    inner: T,
    received: Counter,
    sent: Counter,
}

impl<T: Connected> Connected for Counted<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.received.inc_by(read as u64);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent.inc_by(n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent.inc_by(n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round::RoundKind;
    use crate::testing::TASK;

    fn scrape(t: &Telemetry) -> String {
        consortia_observability::encode(&t.registry(), false)
            .unwrap()
            .0
    }

    #[test]
    fn names_follow_prometheus_conventions_and_start_at_zero() {
        let t = Telemetry::new(&TaskSpec::from_toml_str(TASK).unwrap());
        let text = scrape(&t);
        for line in [
            "consortia_rounds_started_total 0",
            "consortia_rounds_completed_total 0",
            "consortia_partners_connected 0",
            "consortia_network_received_bytes_total 0",
            "consortia_network_sent_bytes_total 0",
            "consortia_phase{phase=\"idle\"} 1",
            "consortia_phase{phase=\"collection\"} 0",
            "consortia_evaluation_roc_auc 0.0",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        // A classifier's task has no regression gauges.
        assert!(!text.contains("consortia_evaluation_rmse"), "{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut words = line.split_whitespace().skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert!(name.starts_with("consortia_"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
    }

    #[test]
    fn key_holder_outcomes_are_counted_with_partner_names_label_safe() {
        let t = Telemetry::new(&TaskSpec::from_toml_str(TASK).unwrap());
        let text = scrape(&t);
        assert!(text.contains("consortia_key_holders 0"), "{text}");
        assert!(
            text.contains("consortia_rekeys_total{reason=\"holders_unreachable\"} 0"),
            "{text}"
        );
        t.key_holders(5, 3, Some(3));
        let odd = "e\"} 1\nconsortia_fake 9".to_string();
        let record = crate::key_holders::DecryptionRecord {
            round: 2,
            attempt: 1,
            at_unix_ms: 0,
            decrypted: true,
            reason: None,
            holders: vec!["a".into(), "b".into(), "c".into(), "d".into(), odd.clone()],
            threshold: 3,
            asked: vec!["a".into(), "b".into(), "c".into()],
            answered: vec!["a".into(), "b".into(), "c".into()],
            failed: Vec::new(),
            stopped: Vec::new(),
            away: vec!["d".into(), odd],
        };
        t.key_holder_decryption(&record);
        t.key_holder_decryption(&record);
        t.rekeyed("holders_unreachable");
        let text = scrape(&t);
        for line in [
            "consortia_key_holders 5",
            "consortia_key_holders_connected 3",
            "consortia_key_threshold 3",
            "consortia_key_holder_decryptions_total{partner=\"a\",outcome=\"answered\"} 2",
            "consortia_key_holder_decryptions_total{partner=\"d\",outcome=\"absent\"} 2",
            // The untrusted name stays inside its label value, escaped.
            "consortia_key_holder_decryptions_total{partner=\"e\\\"} 1\\nconsortia_fake 9\",outcome=\"absent\"} 2",
            "consortia_rekeys_total{reason=\"holders_unreachable\"} 1",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        assert!(
            !text.lines().any(|l| l.starts_with("consortia_fake")),
            "{text}"
        );
        // An N-of-N key's threshold is every holder.
        t.key_holders(4, 4, None);
        assert!(scrape(&t).contains("consortia_key_threshold 4"));
    }

    #[test]
    fn stages_set_the_phase_and_time_it() {
        let t = Telemetry::new(&TaskSpec::from_toml_str(TASK).unwrap());
        let collector = crate::round::RoundCollector::new(
            1,
            0,
            RoundKind::Train,
            3,
            BTreeSet::new(),
            Instant::now(),
        );
        t.stage_begun(&Stage::Collection(collector));
        let text = scrape(&t);
        assert!(
            text.contains("consortia_phase{phase=\"collection\"} 1"),
            "{text}"
        );
        assert!(text.contains("consortia_phase{phase=\"idle\"} 0"), "{text}");
        t.stage_ended(Stage::Idle);
        let text = scrape(&t);
        assert!(text.contains("consortia_phase{phase=\"idle\"} 1"), "{text}");
        assert!(
            text.contains("# TYPE consortia_phase_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("consortia_phase_duration_seconds_count{phase=\"collection\"} 1"),
            "{text}"
        );
    }
}
