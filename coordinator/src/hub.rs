//! The session hub: the state shared by the partner sessions and the task loop.
//!
//! [`Hub`] knows who is connected (registration, revocation, outbound
//! commands) and which protocol [`Stage`] is in progress. Sessions route each
//! inbound message to the stage it belongs to and wake the task loop
//! (`Hub::wait_change`); only the task loop's phases ([`crate::phase`]) open
//! and close stages. A message for a stage that is not in progress is refused
//! as out of phase, naming what the stage in progress takes ([`Stage::expects`]).

use crate::key_holders::KeyHolders;
use crate::partner_heads::PartnerHeads;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use consortia_model::Evaluation;
use consortia_model::TaskSpec;
use consortia_proto::{DeclineKind, StatsReport, server_message::Kind};
use tokio::sync::Notify;
use tonic::Status;

use crate::phase::key_ceremony::Ceremony;
use crate::phase::standardization::StatsCollector;
use crate::phase::threshold_ceremony::ThresholdRelay;
use crate::rejection::{Rejection, Subject};
use crate::round::RoundCollector;
use crate::secure::{CiphertextStore, Decryption, FederationKey, StoredUpdate};
use crate::session::{Outbound, SessionHandle, message};
use crate::telemetry::Telemetry;

/// Checks a certificate serial number against the current revocation list.
pub type RevocationCheck = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// The protocol stage in progress: what inbound messages are taken now.
/// Stages never overlap; the task loop moves from one to the next.
#[derive(Default)]
pub enum Stage {
    /// Between stages: no message is expected.
    #[default]
    Idle,
    /// Feature statistics are being collected.
    Standardisation(StatsCollector),
    /// The federation key is being made.
    KeyCeremony(Ceremony),
    /// A round's updates and evaluations are being collected.
    Collection(RoundCollector),
    /// A round's encrypted sum is being decrypted by the key holders.
    Decryption(Box<Decryption>),
}

impl Stage {
    /// What the coordinator takes now, for refusals of other messages.
    pub fn expects(&self) -> String {
        match self {
            Stage::Idle => "no message until the coordinator starts its next step".into(),
            Stage::Standardisation(c) => {
                format!("feature statistics for request {}", c.request_id())
            }
            Stage::KeyCeremony(Ceremony::Committing(_)) => "key commitments".into(),
            Stage::KeyCeremony(Ceremony::Revealing(_)) => "public key shares".into(),
            Stage::KeyCeremony(Ceremony::Threshold(_)) => {
                "the threshold key's subshare keys, dealings and outcomes".into()
            }
            Stage::Collection(r) => format!("answers for round {}", r.round),
            Stage::Decryption(d) => format!("{} for round {}", d.step().expects(), d.round()),
        }
    }
}

/// State shared by the task loop and the partner sessions.
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
    /// Where encrypted updates are kept (secure aggregation).
    pub ciphertexts: Option<CiphertextStore>,
    /// The coordinator's metrics.
    pub telemetry: Telemetry,
    /// The heads of the partners' own privacy ledgers, as they reported them.
    pub partner_heads: PartnerHeads,
    /// The federation key's holders: who is reachable, who answered each decryption.
    pub key_holders: KeyHolders,
    attempt: AtomicU64,
    closed_up_to: AtomicU64,
    sessions: Mutex<BTreeMap<String, SessionHandle>>,
    stage: Mutex<Stage>,
    changed: Notify,
    next_session: AtomicU64,
    revoked: RevocationCheck,
    rows: Mutex<BTreeMap<String, u64>>,
    exhausted: Mutex<BTreeMap<String, String>>,
    key: Mutex<Option<Arc<FederationKey>>>,
}

/// Locks `m`, taking the data of a poisoned lock as it is (no session's
/// panic may stop the coordinator).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
            telemetry: Telemetry::new(&task),
            partner_heads: PartnerHeads::in_memory(),
            key_holders: KeyHolders::default(),
            task,
            task_toml,
            param_count,
            task_hash,
            ciphertexts: None,
            attempt: AtomicU64::new(0),
            closed_up_to: AtomicU64::new(0),
            sessions: Mutex::new(BTreeMap::new()),
            stage: Mutex::new(Stage::Idle),
            changed: Notify::new(),
            next_session: AtomicU64::new(1),
            revoked,
            rows: Mutex::new(BTreeMap::new()),
            exhausted: Mutex::new(BTreeMap::new()),
            key: Mutex::new(None),
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
        self.set_federation_key(key.map(Arc::new));
        self
    }

    /// Counts into `telemetry` (the one the metrics listener serves).
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Keeps the partners' reported ledger heads in `heads` (durable) instead of in memory.
    pub fn with_partner_heads(mut self, heads: PartnerHeads) -> Self {
        self.partner_heads = heads;
        self
    }

    // ----- connected partners -----

    /// True if the certificate with this serial has been revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        (self.revoked)(serial)
    }

    /// True if `name` can be a partner (not the coordinator's own name).
    pub fn is_partner_name(&self, name: &str) -> bool {
        !name.is_empty() && name != "coordinator"
    }

    /// Adds a session; `None` (nothing changed) if `partner` already has one: the
    /// running session keeps its place and the newcomer is refused.
    pub fn register(&self, partner: &str, mut handle: SessionHandle) -> Option<u64> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        handle.id = id;
        {
            let mut sessions = lock(&self.sessions);
            if sessions.contains_key(partner) {
                return None;
            }
            sessions.insert(partner.to_string(), handle);
            self.telemetry.connected(sessions.len());
            self.key_holders.presence(sessions.keys(), &self.telemetry);
        }
        self.changed.notify_one();
        Some(id)
    }

    /// Whether `partner` has a session.
    pub fn is_connected(&self, partner: &str) -> bool {
        lock(&self.sessions).contains_key(partner)
    }

    /// Removes a session that ended (if it is still the current one); the
    /// stage in progress no longer waits for the partner.
    pub fn unregister(&self, partner: &str, id: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(partner).is_some_and(|s| s.id == id) {
            sessions.remove(partner);
            self.telemetry.connected(sessions.len());
            self.key_holders.presence(sessions.keys(), &self.telemetry);
            drop(sessions);
            match &mut *lock(&self.stage) {
                Stage::Collection(r) => r.drop_partner(partner),
                Stage::Standardisation(s) => s.drop_partner(partner),
                Stage::Decryption(d) => d.fail(partner, "disconnected during decryption"),
                // The key ceremony notices a member's absence itself.
                Stage::KeyCeremony(_) | Stage::Idle => {}
            }
        }
        self.changed.notify_one();
    }

    /// Names of connected partners.
    pub fn connected(&self) -> Vec<String> {
        lock(&self.sessions).keys().cloned().collect()
    }

    /// Sends a command to one partner; false if it is gone.
    pub(crate) fn send_to(&self, partner: &str, cmd: Outbound) -> bool {
        let handle = lock(&self.sessions).get(partner).cloned();
        handle.is_some_and(|h| h.send(cmd))
    }

    /// Sends a message to every connected partner.
    pub(crate) fn broadcast(&self, kind: Kind) {
        for partner in self.connected() {
            self.send_to(&partner, Outbound::Message(message(kind.clone())));
        }
    }

    /// Ends the sessions of partners whose certificates were revoked since they connected.
    pub(crate) fn drop_revoked(&self) {
        let revoked: Vec<(String, SessionHandle)> = lock(&self.sessions)
            .iter()
            .filter(|(_, h)| self.is_revoked(&h.serial))
            .map(|(p, h)| (p.clone(), h.clone()))
            .collect();
        for (partner, handle) in revoked {
            tracing::warn!(partner = %partner, reason = crate::telemetry::SessionRefusal::Revoked.code(), "certificate revoked: ending its session");
            handle.send(Outbound::Close(Status::permission_denied(format!(
                "the certificate of `{partner}` has been revoked"
            ))));
            let mut sessions = lock(&self.sessions);
            sessions.remove(&partner);
            self.telemetry.connected(sessions.len());
            self.key_holders.presence(sessions.keys(), &self.telemetry);
        }
    }

    /// Waits until something changes or `timeout` passes.
    pub(crate) async fn wait_change(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }

    /// Waits (indefinitely) until at least `min` partners are connected.
    pub(crate) async fn wait_for_partners(&self, min: usize) {
        let mut last_log = Instant::now() - Duration::from_secs(60);
        loop {
            let n = self.connected().len();
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
            self.wait_change(Duration::from_secs(1)).await;
        }
    }

    // ----- the stage in progress (opened and closed by the phases) -----

    /// The stage in progress, locked.
    pub(crate) fn stage(&self) -> MutexGuard<'_, Stage> {
        lock(&self.stage)
    }

    /// Starts `stage`, replacing whatever was in progress.
    pub(crate) fn begin(&self, stage: Stage) {
        self.telemetry.stage_begun(&stage);
        *lock(&self.stage) = stage;
        self.changed.notify_one();
    }

    /// Ends the stage in progress and returns it.
    pub(crate) fn end_stage(&self) -> Stage {
        let stage = std::mem::take(&mut *lock(&self.stage));
        if let Stage::Decryption(d) = &stage {
            self.key_holders.stage_ended(d);
        }
        self.telemetry.stage_ended(stage)
    }

    /// Records that rounds up to `round` are closed: later messages for them are late.
    pub(crate) fn close_rounds_up_to(&self, round: u64) {
        self.closed_up_to.store(round, Ordering::Relaxed);
    }

    /// Sets the attempt number of the round about to start.
    pub(crate) fn set_attempt(&self, attempt: u64) {
        self.attempt.store(attempt, Ordering::Relaxed);
    }

    /// The attempt number of the round in progress.
    pub fn attempt(&self) -> u64 {
        self.attempt.load(Ordering::Relaxed)
    }

    /// The federation key, once made.
    pub fn federation_key(&self) -> Option<Arc<FederationKey>> {
        lock(&self.key).clone()
    }

    /// Installs (or, with `None`, retires) the federation key.
    pub(crate) fn set_federation_key(&self, key: Option<Arc<FederationKey>>) {
        let holders = key
            .as_ref()
            .map(|k| k.committee.clone())
            .unwrap_or_default();
        *lock(&self.key) = key;
        let threshold = self.task.key_threshold;
        self.key_holders
            .key_changed(holders, threshold, &self.telemetry);
    }

    /// Each partner's training-row count, as last reported.
    pub(crate) fn rows(&self) -> BTreeMap<String, u64> {
        lock(&self.rows).clone()
    }

    /// Partners that declared their own privacy budget exhausted, with their reasons.
    pub(crate) fn exhausted(&self) -> BTreeMap<String, String> {
        lock(&self.exhausted).clone()
    }

    /// Opens `collector`'s round for answers (replacing any open stage).
    pub fn open(&self, collector: RoundCollector) {
        self.begin(Stage::Collection(collector));
    }

    /// Updates received so far in the open round (0 when none is open).
    pub fn updates_received(&self) -> usize {
        match &*lock(&self.stage) {
            Stage::Collection(r) => r.updates(),
            _ => 0,
        }
    }

    /// Runs `f` on the stage in progress, read-only (the web console shows it).
    pub fn with_stage<T>(&self, f: impl FnOnce(&Stage) -> T) -> T {
        f(&lock(&self.stage))
    }

    /// The round being collected, if any.
    pub fn open_round(&self) -> Option<u64> {
        match &*lock(&self.stage) {
            Stage::Collection(r) => Some(r.round),
            _ => None,
        }
    }

    // ----- inbound messages, routed to the stage in progress -----

    /// Runs `f` on the open round, or refuses a message for `round` when none is open.
    fn with_round<T>(
        &self,
        round: u64,
        f: impl FnOnce(&mut RoundCollector) -> Result<T, Rejection>,
    ) -> Result<T, Rejection> {
        match &mut *lock(&self.stage) {
            Stage::Collection(r) => f(r),
            _ => Err(self.closed_or_none(round)),
        }
    }

    fn closed_or_none(&self, round: u64) -> Rejection {
        if round <= self.closed_up_to.load(Ordering::Relaxed) {
            Rejection::Closed { round }
        } else {
            Rejection::NoOpenRound { round }
        }
    }

    /// Records a feature-statistics report.
    pub fn add_stats(&self, partner: &str, report: StatsReport) -> Result<(), Rejection> {
        let count = report.count;
        match &mut *lock(&self.stage) {
            Stage::Standardisation(c) => {
                c.add(partner, report, self.task.schema.feature_count())?
            }
            other => {
                return Err(Rejection::out_of_phase(
                    Subject::Statistics,
                    "feature statistics were not requested",
                    other.expects(),
                ));
            }
        }
        lock(&self.rows).insert(partner.to_string(), count);
        self.changed.notify_one();
        Ok(())
    }

    /// Records a key-generation commitment.
    pub fn key_commit(
        &self,
        partner: &str,
        msg: &consortia_proto::KeyCommit,
    ) -> Result<(), Rejection> {
        let r = match &mut *lock(&self.stage) {
            Stage::KeyCeremony(c) => c.commit(partner, msg),
            other => Err(Rejection::out_of_phase(
                Subject::KeyCommitment,
                "no key generation is in progress",
                other.expects(),
            )),
        };
        self.changed.notify_one();
        r
    }

    /// Records a revealed public-key share, signed with the key of
    /// `certificate` (the partner's, as presented in TLS).
    pub fn key_share(
        &self,
        partner: &str,
        certificate: &[u8],
        msg: &consortia_proto::KeyShare,
    ) -> Result<(), Rejection> {
        let r = match &mut *lock(&self.stage) {
            Stage::KeyCeremony(c) => c.reveal(partner, certificate, msg),
            other => Err(Rejection::out_of_phase(
                Subject::KeyShare,
                "no key generation is in progress",
                other.expects(),
            )),
        };
        self.changed.notify_one();
        r
    }

    /// Applies `f` to the threshold ceremony in progress (t-of-N keys).
    fn with_threshold(
        &self,
        f: impl FnOnce(&mut ThresholdRelay) -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let r = match &mut *lock(&self.stage) {
            Stage::KeyCeremony(Ceremony::Threshold(relay)) => f(relay),
            other => Err(Rejection::out_of_phase(
                Subject::ThresholdCeremony,
                "no threshold key is being dealt",
                other.expects(),
            )),
        };
        self.changed.notify_one();
        r
    }

    /// A key holder's signed subshare keys.
    pub fn threshold_keys(
        &self,
        partner: &str,
        msg: &consortia_proto::ThresholdRecipientKeys,
    ) -> Result<(), Rejection> {
        self.with_threshold(|r| r.keys(partner, msg))
    }

    /// A piece of a key holder's dealing.
    pub fn threshold_dealing(
        &self,
        partner: &str,
        msg: consortia_proto::ThresholdDealing,
    ) -> Result<(), Rejection> {
        self.with_threshold(|r| r.dealing(partner, msg))
    }

    /// A key holder's outcome of the threshold ceremony.
    pub fn threshold_result(
        &self,
        partner: &str,
        msg: &consortia_proto::ThresholdKeyResult,
    ) -> Result<(), Rejection> {
        self.with_threshold(|r| r.result(partner, msg))
    }

    /// Checks that `partner` may start sending an update for `round`.
    pub fn admits(&self, partner: &str, round: u64) -> Result<(), Rejection> {
        self.with_round(round, |r| r.admits(partner, round))
    }

    /// The ciphertext shape of the open round, checking that `partner` may
    /// send an encrypted update for `round`.
    pub fn admits_encrypted(
        &self,
        partner: &str,
        round: u64,
    ) -> Result<consortia_he::Shape, Rejection> {
        self.with_round(round, |r| {
            r.admits(partner, round)?;
            r.secure_shape().ok_or_else(|| {
                Rejection::out_of_phase(
                    Subject::EncryptedUpdate,
                    format!("round {round} takes plaintext updates"),
                    "an update in the clear",
                )
            })
        })
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
        self.add_update_chunks(partner, round, examples, loss, &[params])
    }

    /// Folds a complete update, given as its consecutive chunks, into the open round.
    pub fn add_update_chunks<C: AsRef<[f64]>>(
        &self,
        partner: &str,
        round: u64,
        examples: u64,
        loss: f64,
        chunks: &[C],
    ) -> Result<(), Rejection> {
        self.with_round(round, |r| {
            r.add_update_chunks(partner, round, examples, loss, chunks)
        })?;
        tracing::info!(partner, round, examples, "update received");
        self.telemetry.update_received();
        lock(&self.rows).insert(partner.to_string(), examples);
        self.changed.notify_one();
        Ok(())
    }

    /// Folds a complete stored encrypted update into the open round.
    pub fn add_encrypted(&self, round: u64, update: StoredUpdate) -> Result<(), Rejection> {
        let partner = update.partner.clone();
        let examples = update.examples;
        self.with_round(round, |r| r.add_encrypted(round, update))?;
        tracing::info!(partner = %partner, round, examples, "encrypted update received");
        self.telemetry.update_received();
        lock(&self.rows).insert(partner, examples);
        self.changed.notify_one();
        Ok(())
    }

    /// Records an evaluation report.
    pub fn add_eval(
        &self,
        partner: &str,
        model_round: u64,
        partial: Evaluation,
    ) -> Result<(), Rejection> {
        self.with_round(model_round + 1, |r| {
            r.add_eval(partner, model_round, partial)
        })?;
        self.changed.notify_one();
        Ok(())
    }

    /// Records that a partner declined: a round (it answers nothing in it), the
    /// task (its own privacy budget is exhausted: it is not selected again, and
    /// the round it declined counts as declined), or a decryption (a key holder's
    /// refusal fails the decryption in progress).
    pub fn decline(
        &self,
        partner: &str,
        round: u64,
        reason: String,
        kind: DeclineKind,
    ) -> Result<(), Rejection> {
        self.telemetry.declined(kind);
        if kind == DeclineKind::Budget {
            lock(&self.exhausted).insert(partner.to_string(), reason.clone());
        }
        let result = if kind == DeclineKind::Decryption {
            match &mut *lock(&self.stage) {
                Stage::Decryption(d) if d.round() == round => {
                    d.fail(partner, &reason);
                    Ok(())
                }
                other => Err(Rejection::out_of_phase(
                    Subject::DecryptionRefusal,
                    format!("no decryption of round {round} is in progress"),
                    other.expects(),
                )),
            }
        } else {
            let mut stage = lock(&self.stage);
            match &mut *stage {
                // A refusal to send feature statistics (they are not of a round).
                Stage::Standardisation(c) if round == 0 => c.decline(partner, reason),
                _ => {
                    drop(stage);
                    self.with_round(round, |r| r.decline(partner, round, reason))
                }
            }
        };
        self.changed.notify_one();
        result
    }

    /// Runs `f` on the decryption in progress, or refuses a `subject`
    /// message (for `round`) when none is.
    fn with_decryption(
        &self,
        subject: Subject,
        round: u64,
        f: impl FnOnce(&mut Decryption) -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let r = match &mut *lock(&self.stage) {
            Stage::Decryption(d) => f(d),
            other => Err(Rejection::out_of_phase(
                subject,
                format!("it is for round {round}, and no decryption is in progress"),
                other.expects(),
            )),
        };
        self.changed.notify_one();
        r
    }

    /// A key holder's commitment to its challenge seed.
    pub fn challenge_commit(
        &self,
        partner: &str,
        msg: &consortia_proto::ChallengeCommit,
    ) -> Result<(), Rejection> {
        self.with_decryption(Subject::ChallengeCommitment, msg.round, |d| {
            d.commit(partner, msg)
        })
    }

    /// A key holder's revealed challenge seed.
    pub fn challenge_seed(
        &self,
        partner: &str,
        msg: &consortia_proto::ChallengeSeed,
    ) -> Result<(), Rejection> {
        self.with_decryption(Subject::ChallengeSeed, msg.round, |d| {
            d.reveal(partner, msg)
        })
    }

    /// A contributor's signed sketch of its update's masks.
    pub fn add_sketch(
        &self,
        partner: &str,
        msg: &consortia_proto::SignedSketch,
    ) -> Result<(), Rejection> {
        let taken =
            self.with_decryption(Subject::Sketch, msg.round, |d| d.add_sketch(partner, msg));
        if taken.is_ok() {
            tracing::info!(
                round = msg.round,
                phase = "decryption",
                toss = msg.toss,
                "round {}: sketch of `{partner}`'s update taken (coin toss {})",
                msg.round,
                msg.toss
            );
        }
        taken
    }

    /// One piece of a key holder's partial decryption.
    pub fn add_share_piece(
        &self,
        partner: &str,
        piece: consortia_proto::DecryptionSharePiece,
    ) -> Result<(), Rejection> {
        let r = match &mut *lock(&self.stage) {
            Stage::Decryption(d) => d.add_piece(partner, piece),
            other => Err(Rejection::out_of_phase(
                Subject::DecryptionShare,
                format!(
                    "it is for round {}, and no decryption is in progress",
                    piece.round
                ),
                other.expects(),
            )),
        };
        self.changed.notify_one();
        r
    }
}
