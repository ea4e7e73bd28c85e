//! Collection: a round is opened for the selected partners, each is sent the
//! global model, and their updates (in the clear, or encrypted under the
//! federation key) and evaluations are folded in as they complete, until
//! every selected partner has answered or the round deadline passes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consortia_privacy::dp::PrivacySpec;
use consortia_privacy::he::{Aggregate, Shape};
use consortia_privacy::update::UpdateEncoding;
use consortia_proto::{RoundStart, chunk_count};

use super::{Ending, Phase, Progress, drive};
use crate::CoordinatorError;
use crate::hub::{Hub, Stage};
use crate::report::now_ms;
use crate::round::{RoundCollector, RoundKind, RoundResult};
use crate::secure::{CiphertextStore, FederationKey, StoredUpdate};
use crate::session::Outbound;
use crate::store::StoredStandardizer;

/// What a round asks, and of whom.
#[derive(Debug, Clone)]
pub struct RoundSpec {
    /// Round number.
    pub round: u64,
    /// Round that produced the model sent (the last completed one).
    pub model_round: u64,
    /// Train, or only evaluate.
    pub kind: RoundKind,
    /// Partners asked.
    pub selected: BTreeSet<String>,
    /// Histogram bins of the evaluations taken; `None`: no evaluation is asked.
    pub eval_bins: Option<usize>,
}

/// What a secure round starts with.
pub struct SecureRound {
    /// How updates are encoded for this round.
    pub encoding: UpdateEncoding,
    /// The empty encrypted sum.
    pub aggregate: Aggregate,
    /// Encrypted updates received before a restart.
    pub stored: Vec<StoredUpdate>,
}

impl SecureRound {
    /// Partners whose encrypted update was kept from before a restart.
    pub fn kept(&self) -> BTreeSet<String> {
        self.stored.iter().map(|u| u.partner.clone()).collect()
    }
}

/// On start-up, before the first round: ciphertexts of rounds other than
/// `next`, or of `next` if its sum was already sent for decryption, are never
/// used again.
pub fn resume_ciphertexts(
    ciphertexts: &CiphertextStore,
    next: u64,
) -> Result<(), CoordinatorError> {
    ciphertexts.discard_all_but(next)?;
    if ciphertexts.decrypting(next) {
        tracing::warn!(
            round = next,
            "round {next} was being decrypted when the coordinator stopped: its ciphertexts are discarded and the round runs again"
        );
        ciphertexts.discard(next)?;
    }
    Ok(())
}

/// Sets up a secure training round: its encoding and ciphertext shape, and
/// the encrypted updates already received before a restart (their senders
/// join the round without being asked again).
pub fn prepare_secure_round(
    hub: &Hub,
    key: &FederationKey,
    spec: Option<&PrivacySpec>,
    round: u64,
    selected: &mut BTreeSet<String>,
) -> Result<SecureRound, CoordinatorError> {
    let unusable = |e: String| CoordinatorError::Task(format!("secure aggregation: {e}"));
    let encoding = UpdateEncoding::for_round(
        spec,
        hub.param_count,
        hub.task.min_partners as usize,
        &key.key,
        round,
    )
    .map_err(|e| unusable(e.to_string()))?;
    let shape =
        Shape::new(&key.key, encoding.encoded_len() as u64).map_err(|e| unusable(e.to_string()))?;
    let aggregate = Aggregate::new(shape).map_err(|e| unusable(e.to_string()))?;
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

/// Waits for the selected partners' answers; ends with the closed round.
struct Collecting {
    plan: RoundSpec,
    param_count: usize,
    until: Instant,
}

impl Phase for Collecting {
    type Output = RoundResult;

    fn poll(&mut self, hub: &Hub) -> Progress {
        match &*hub.stage() {
            Stage::Collection(r) if !r.complete() => Progress::Waiting,
            _ => Progress::Complete,
        }
    }

    fn finish(self, hub: &Hub, _: Ending) -> RoundResult {
        let p = self.plan;
        hub.close_rounds_up_to(p.round);
        match hub.end_stage() {
            Stage::Collection(c) => c.finish(),
            _ => RoundCollector::new(
                p.round,
                p.model_round,
                p.kind,
                self.param_count,
                p.selected,
                self.until,
            )
            .finish(),
        }
    }
}

/// Runs the round `plan`: opens it, sends `model` to the selected partners
/// (but those whose encrypted update was kept from before a restart), and
/// collects their answers until all are in or `deadline` has passed.
pub async fn collect(
    hub: &Hub,
    plan: RoundSpec,
    model: Arc<Vec<f64>>,
    standardizer: &StoredStandardizer,
    deadline: Duration,
    secure: Option<SecureRound>,
) -> RoundResult {
    let round = plan.round;
    let until = Instant::now() + deadline;
    let mut collector = RoundCollector::new(
        round,
        plan.model_round,
        plan.kind,
        hub.param_count,
        plan.selected.clone(),
        until,
    )
    .with_evaluation(plan.eval_bins);
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
        Some(c) if !key_id.is_empty() => c.attempt(round).unwrap_or_else(|e| {
            tracing::warn!(round, "cannot store the round's attempt number: {e}");
            now_ms()
        }),
        _ => now_ms(),
    };
    hub.set_attempt(attempt);
    hub.open(collector);
    let train = plan.kind == RoundKind::Train;
    let start = RoundStart {
        round,
        param_count: hub.param_count as u64,
        chunk_count: chunk_count(hub.param_count),
        deadline_unix_ms: now_ms() + deadline.as_millis() as u64,
        feature_mean: standardizer.mean.clone(),
        feature_std: standardizer.std.clone(),
        train,
        model_round: plan.model_round,
        key_id,
        attempt,
    };
    tracing::info!(round, partners = ?plan.selected, train, "round started");
    for p in plan.selected.iter().filter(|p| !already.contains(*p)) {
        let sent = hub.send_to(
            p,
            Outbound::Round {
                start: start.clone(),
                model: model.clone(),
            },
        );
        if !sent && let Stage::Collection(r) = &mut *hub.stage() {
            r.drop_partner(p);
        }
    }
    let phase = Collecting {
        plan,
        param_count: hub.param_count,
        until,
    };
    drive(hub, phase, until).await
}
