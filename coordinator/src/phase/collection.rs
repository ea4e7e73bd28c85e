//! Collection: a round is opened for the selected partners, each is sent the
//! global model, and their updates (in the clear, or encrypted under the
//! federation key) and evaluations are folded in as they complete, until
//! every selected partner has answered or the round deadline passes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consortia_dp::PrivacySpec;
use consortia_he::update::UpdateEncoding;
use consortia_he::{Aggregate, Shape};
use consortia_proto::{RoundStart, chunk_count};

use super::{Ending, Phase, Progress, drive};
use crate::CoordinatorError;
use crate::hub::{Hub, Stage};
use crate::report::now_ms;
use crate::round::{RoundCollector, RoundKind, RoundResult};
use crate::secure::{CiphertextStore, FederationKey, StoredUpdate};
use crate::session::{EncodedModel, Outbound};
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
    let unusable = CoordinatorError::SecureAggregation;
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
    collector = collector.for_kind(hub.task.evaluation_kind());
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
    tracing::info!(round, phase = "collection", partners = ?plan.selected, train, "round started");
    let model = Arc::new(EncodedModel::new(&model));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round::{Rejection, RoundEnd};
    use crate::testing::{TASK, connect, hub_with, next};
    use consortia_model::AggregatedUpdate;

    fn standardizer(hub: &Hub) -> StoredStandardizer {
        let n = hub.task.schema.feature_count();
        StoredStandardizer {
            mean: vec![0.0; n],
            std: vec![1.0; n],
        }
    }

    /// Starts round 1 (training, no evaluation) for `selected`; returns the
    /// collection running in the background.
    fn start(
        hub: &Arc<Hub>,
        selected: &[&str],
        deadline: Duration,
    ) -> tokio::task::JoinHandle<RoundResult> {
        let spec = RoundSpec {
            round: 1,
            model_round: 0,
            kind: RoundKind::Train,
            selected: selected.iter().map(|s| s.to_string()).collect(),
            eval_bins: None,
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let model = Arc::new(vec![0.0; hub.param_count]);
            let st = standardizer(&hub);
            collect(&hub, spec, model, &st, deadline, None).await
        })
    }

    /// Waits until `inbox` is sent round 1.
    async fn round_sent(inbox: &mut tokio::sync::mpsc::Receiver<Outbound>) {
        match next(inbox).await {
            Outbound::Round { start, model } => {
                assert_eq!((start.round, start.model_round, start.train), (1, 0, true));
                assert!(model.params().iter().all(|v| *v == 0.0));
            }
            other => panic!("expected round 1, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_update_in_ends_the_round_aggregated_and_a_duplicate_is_refused() {
        let (hub, mut inbox) = hub_with(TASK, &["a", "b"]);
        let n = hub.param_count;
        let running = start(&hub, &["a", "b"], Duration::from_secs(60));
        for p in ["a", "b"] {
            round_sent(inbox.get_mut(p).unwrap()).await;
        }
        hub.add_update("a", 1, 1, 0.5, &vec![1.0; n]).unwrap();
        assert_eq!(
            hub.add_update("a", 1, 1, 0.5, &vec![1.0; n]),
            Err(Rejection::Duplicate { round: 1 })
        );
        assert_eq!(hub.updates_received(), 1);
        hub.add_update("b", 1, 3, 0.1, &vec![5.0; n]).unwrap();
        // Complete long before the deadline.
        let mut result = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the round ends when every answer is in")
            .unwrap();
        assert_eq!(result.contributors, ["a", "b"]);
        match result.end(2) {
            RoundEnd::Aggregated(AggregatedUpdate::WeightedMeanDelta(d)) => {
                assert!(d.iter().all(|v| (v - 4.0).abs() < 1e-12), "{d:?}");
            }
            other => panic!("expected an aggregate, got {other:?}"),
        }
        // The round is closed: a late answer is refused as late.
        assert_eq!(
            hub.add_update("b", 1, 3, 0.1, &vec![5.0; n]),
            Err(Rejection::Closed { round: 1 })
        );
        assert_eq!(hub.open_round(), None);
    }

    #[tokio::test]
    async fn too_few_updates_at_the_deadline_end_the_round_too_few() {
        let (hub, mut inbox) = hub_with(TASK, &["a", "b"]);
        let n = hub.param_count;
        let running = start(&hub, &["a", "b"], Duration::from_millis(300));
        round_sent(inbox.get_mut("a").unwrap()).await;
        hub.add_update("a", 1, 4, 0.5, &vec![1.0; n]).unwrap();
        let mut result = running.await.unwrap();
        assert_eq!(result.contributors, ["a"]);
        assert_eq!(result.missing, ["b"]);
        assert!(matches!(result.end(2), RoundEnd::TooFew));
    }

    #[tokio::test]
    async fn a_partner_that_disconnects_is_not_waited_for() {
        let (hub, mut inbox) = hub_with(TASK, &["a"]);
        let (b, mut b_inbox) = connect(&hub, "b");
        let n = hub.param_count;
        let running = start(&hub, &["a", "b"], Duration::from_secs(60));
        round_sent(inbox.get_mut("a").unwrap()).await;
        round_sent(&mut b_inbox).await;
        hub.add_update("a", 1, 4, 0.5, &vec![1.0; n]).unwrap();
        hub.unregister("b", b);
        let mut result = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("a disconnected partner is not waited for")
            .unwrap();
        assert_eq!(
            result.declined,
            [("b".to_string(), "disconnected".to_string())]
        );
        assert!(matches!(result.end(1), RoundEnd::Aggregated(_)));
    }

    #[tokio::test]
    async fn an_evaluation_round_ends_evaluated_or_too_few() {
        use consortia_model::Evaluation;
        use consortia_model::metrics::{EvalPartial, SCORE_BINS};
        let (hub, mut inbox) = hub_with(TASK, &["a"]);
        let mut pos = vec![0; SCORE_BINS];
        pos[SCORE_BINS - 1] = 3;
        let partial = EvalPartial::from_histograms(pos, vec![1; SCORE_BINS]).unwrap();
        for (reports, want_evaluated) in [(true, true), (false, false)] {
            let spec = RoundSpec {
                round: 1,
                model_round: 0,
                kind: RoundKind::Evaluate,
                selected: ["a".to_string()].into_iter().collect(),
                eval_bins: Some(SCORE_BINS),
            };
            let h = hub.clone();
            let running = tokio::spawn(async move {
                let st = standardizer(&h);
                let model = Arc::new(vec![0.0; h.param_count]);
                collect(&h, spec, model, &st, Duration::from_millis(300), None).await
            });
            match next(inbox.get_mut("a").unwrap()).await {
                Outbound::Round { start, .. } => assert!(!start.train),
                other => panic!("expected the round, got {other:?}"),
            }
            if reports {
                hub.add_eval("a", 0, Evaluation::Binary(partial.clone()))
                    .unwrap();
            }
            let mut result = running.await.unwrap();
            let end = result.end(1);
            assert_eq!(
                matches!(end, RoundEnd::Evaluated),
                want_evaluated,
                "{end:?}"
            );
            assert_eq!(matches!(end, RoundEnd::TooFew), !want_evaluated, "{end:?}");
        }
    }
}
