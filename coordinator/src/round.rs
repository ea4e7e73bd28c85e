//! One round: who was asked, who answered, and the running FedAvg sum.
//!
//! Updates are folded into the running sum as each one completes, so the
//! collector holds one model-sized sum however many partners take part
//! (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
//! from Decentralized Data", Algorithm 1: weights `n_k / n`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Instant;

use consortia_he::{Aggregate, Shape};
use consortia_model::AggregatedUpdate;
use consortia_model::Evaluation;
use consortia_model::fedavg::WeightedSum;
use consortia_model::metrics::SCORE_BINS;

use crate::secure::{StoredUpdate, for_each_chunk};

/// What the round asks of partners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundKind {
    /// Evaluate the model, train locally, send the update.
    Train,
    /// Only evaluate the model (the final evaluation after the last round).
    Evaluate,
}

pub use crate::rejection::{Rejection, RejectionCode, Subject};

/// A partner's answer to the round.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A model update weighted by its example count.
    Update {
        /// Training examples.
        examples: u64,
        /// Mean local training loss.
        loss: f64,
    },
    /// The partner declined (its own budget, a local failure).
    Declined(String),
    /// Evaluation only.
    Evaluated,
}

/// The outcome of a closed round.
#[derive(Debug)]
pub struct RoundResult {
    /// Round number.
    pub round: u64,
    /// The kind of round.
    pub kind: RoundKind,
    /// Partners whose updates were aggregated.
    pub contributors: Vec<String>,
    /// Each contributor with its example count.
    pub contributions: Vec<(String, u64)>,
    /// Total examples behind the aggregate.
    pub examples: u64,
    /// Example-weighted mean training loss.
    pub train_loss: f64,
    /// The contributors' deltas aggregated (in the clear: their example-weighted
    /// mean; under secure aggregation: set once the sum is decrypted).
    pub update: Option<AggregatedUpdate>,
    /// The partners' evaluations of the round's input model (each checked on
    /// arrival; the server strategy merges them), with who sent them.
    pub eval: Option<(Vec<String>, Vec<Evaluation>)>,
    /// Partners who declined, with reasons.
    pub declined: Vec<(String, String)>,
    /// Selected partners that never answered.
    pub missing: Vec<String>,
    /// Secure aggregation: the encrypted sum of the contributors' updates.
    pub aggregate: Option<Aggregate>,
    /// Secure aggregation: the contributors' stored ciphertexts.
    pub ciphertexts: Vec<StoredUpdate>,
}

/// Why a round's result was thrown away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    /// The encrypted sum could not be decrypted or decoded.
    Unusable(String),
    /// The decrypted sum is outside what well-formed updates can add up to:
    /// a contributor sent a malformed ciphertext (an incident: the
    /// federation key is retired).
    MalformedSum(String),
    /// The aggregate, or the model the server strategy stepped with it, holds a
    /// value that is not finite: nothing is written.
    NotFinite(String),
}

/// The `reason` code of a round abandoned for too few answers: the label of the
/// abandoned-rounds metric and the `reason` field of its log event.
pub fn abandoned_code(kind: RoundKind) -> &'static str {
    match kind {
        RoundKind::Train => "too_few_updates",
        RoundKind::Evaluate => "no_evaluation",
    }
}

impl Discard {
    /// The `reason` code of a discarded round: the label of the discarded-rounds
    /// metric and the `reason` field of its log event.
    pub fn code(&self) -> &'static str {
        match self {
            Discard::Unusable(_) => "unusable_sum",
            Discard::MalformedSum(_) => "malformed_sum",
            Discard::NotFinite(_) => "not_finite",
        }
    }
}

impl fmt::Display for Discard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Discard::Unusable(why) | Discard::MalformedSum(why) | Discard::NotFinite(why) => {
                f.write_str(why)
            }
        }
    }
}

/// How a round ended: what the task loop does next.
#[derive(Debug)]
pub enum RoundEnd {
    /// A training round: at least `min_partners` updates, aggregated (the
    /// server strategy steps the global model with it).
    Aggregated(AggregatedUpdate),
    /// Too few answers in time: fewer than `min_partners` updates (training)
    /// or no evaluation report (evaluation). The round runs again.
    TooFew,
    /// The round's result could not be used. The round runs again.
    Discarded(Discard),
    /// An evaluation round: the model going in was evaluated.
    Evaluated,
}

impl RoundEnd {
    /// True if the round achieved what it asked.
    pub fn completed(&self) -> bool {
        matches!(self, RoundEnd::Aggregated(_) | RoundEnd::Evaluated)
    }
}

impl RoundResult {
    /// How the round ended, once any encrypted sum has been opened into
    /// [`update`](Self::update): `min` updates make a training round.
    pub fn end(&mut self, min: usize) -> RoundEnd {
        match self.kind {
            RoundKind::Evaluate if self.eval.is_some() => RoundEnd::Evaluated,
            RoundKind::Evaluate => RoundEnd::TooFew,
            RoundKind::Train => match self.update.take() {
                Some(update) if self.contributors.len() >= min => RoundEnd::Aggregated(update),
                _ => RoundEnd::TooFew,
            },
        }
    }
}

/// An update in an evaluation round.
fn evaluation_only(subject: Subject, round: u64) -> Rejection {
    Rejection::out_of_phase(
        subject,
        format!("round {round} is an evaluation round; no update was asked for"),
        "an evaluation report only",
    )
}

/// An update trained on no example.
pub(crate) fn no_examples(subject: Subject) -> Rejection {
    Rejection::invalid(
        subject,
        "an update trained on at least one example",
        "an example count of 0",
    )
}

/// Collects one round's answers.
pub struct RoundCollector {
    /// Round number on the wire.
    pub round: u64,
    /// Round that produced the model being trained/evaluated.
    pub model_round: u64,
    /// What the round asks.
    pub kind: RoundKind,
    /// Model size.
    pub param_count: usize,
    /// Partners asked to take part.
    pub selected: BTreeSet<String>,
    /// When the round closes regardless of answers.
    pub deadline: Instant,
    answers: BTreeMap<String, Answer>,
    sum: WeightedSum,
    loss_sum: f64,
    loss_weight: f64,
    eval: Vec<Evaluation>,
    eval_partners: Vec<String>,
    eval_bins: Option<usize>,
    /// The evaluation kind of the task's model (`binary` unless set by
    /// [`RoundCollector::for_kind`]).
    eval_kind: &'static str,
    aggregate: Option<Aggregate>,
    ciphertexts: Vec<StoredUpdate>,
    poisoned: Option<String>,
}

impl RoundCollector {
    /// Opens a round.
    pub fn new(
        round: u64,
        model_round: u64,
        kind: RoundKind,
        param_count: usize,
        selected: BTreeSet<String>,
        deadline: Instant,
    ) -> Self {
        RoundCollector {
            round,
            model_round,
            kind,
            param_count,
            selected,
            deadline,
            answers: BTreeMap::new(),
            sum: WeightedSum::new(param_count),
            loss_sum: 0.0,
            loss_weight: 0.0,
            eval: Vec::new(),
            eval_partners: Vec::new(),
            eval_bins: Some(SCORE_BINS),
            eval_kind: "binary",
            aggregate: None,
            ciphertexts: Vec::new(),
            poisoned: None,
        }
    }

    /// The same round under secure aggregation: only encrypted updates of
    /// `aggregate`'s shape are taken, summed into `aggregate`.
    pub fn with_aggregate(mut self, aggregate: Aggregate) -> Self {
        self.aggregate = Some(aggregate);
        self
    }

    /// Which evaluation reports the round takes: `Some(bins)` (by default [`SCORE_BINS`],
    /// the exact evaluation) takes partials whose histograms have `bins` bins; `None` takes
    /// none (a round of a `[privacy]` task whose input model is not scheduled for evaluation).
    pub fn with_evaluation(mut self, bins: Option<usize>) -> Self {
        self.eval_bins = bins;
        self
    }

    /// The round of a regression task: evaluation reports are regression partials
    /// (any bin count set by [`RoundCollector::with_evaluation`] only says whether
    /// evaluations are taken).
    pub fn for_regression(self) -> Self {
        self.for_kind("regression")
    }

    /// The round of a task whose evaluations are of `kind` (as
    /// [`consortia_model::TaskSpec::evaluation_kind`] names it); reports of another kind
    /// are refused.
    pub fn for_kind(mut self, kind: &'static str) -> Self {
        self.eval_kind = kind;
        self
    }

    /// The ciphertext shape of a secure round.
    pub fn secure_shape(&self) -> Option<Shape> {
        self.aggregate.as_ref().map(|a| *a.shape())
    }

    /// Folds a complete, stored encrypted update into the encrypted running sum.
    pub fn add_encrypted(&mut self, round: u64, update: StoredUpdate) -> Result<(), Rejection> {
        self.admits(&update.partner, round)?;
        let subject = Subject::EncryptedUpdate;
        if self.kind != RoundKind::Train {
            return Err(evaluation_only(subject, round));
        }
        if update.examples == 0 {
            return Err(no_examples(subject));
        }
        let Some(agg) = self.aggregate.as_mut() else {
            return Err(Rejection::out_of_phase(
                subject,
                format!("round {round} takes plaintext updates"),
                "an update in the clear",
            ));
        };
        if agg.contributors() >= agg.shape().parties {
            return Err(Rejection::out_of_phase(
                subject,
                format!(
                    "round {round} already sums {} updates, as many as the key allows",
                    agg.contributors()
                ),
                "no more updates this round",
            ));
        }
        // Every chunk was checked against the shape when it arrived; a
        // failure here (a damaged file) spoils the sum, so the round is
        // abandoned rather than decrypted.
        let mut index = 0u32;
        let folded = for_each_chunk(&update.path, |chunk| {
            agg.add_bytes(index, chunk)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            index += 1;
            Ok(())
        });
        if let Err(e) = folded {
            self.poisoned = Some(format!(
                "the encrypted update of `{}` could not be added: {e}",
                update.partner
            ));
            return Err(Rejection::unavailable(
                subject,
                format!("your encrypted update could not be added: {e}"),
            ));
        }
        self.answers.insert(
            update.partner.clone(),
            Answer::Update {
                examples: update.examples,
                loss: f64::NAN,
            },
        );
        self.ciphertexts.push(update);
        Ok(())
    }

    /// Checks that `partner` may still send an update for `round`.
    pub fn admits(&self, partner: &str, round: u64) -> Result<(), Rejection> {
        if round != self.round {
            return Err(if round < self.round {
                Rejection::Closed { round }
            } else {
                Rejection::WrongRound {
                    got: round,
                    open: self.round,
                }
            });
        }
        if !self.selected.contains(partner) {
            return Err(Rejection::NotSelected { round });
        }
        if self.answers.contains_key(partner) {
            return Err(Rejection::Duplicate { round });
        }
        Ok(())
    }

    /// Folds a complete update into the running sum.
    pub fn add_update(
        &mut self,
        partner: &str,
        round: u64,
        examples: u64,
        loss: f64,
        params: &[f64],
    ) -> Result<(), Rejection> {
        self.add_update_chunks(partner, round, examples, loss, &[params])
    }

    /// [`RoundCollector::add_update`] of an update given as its consecutive chunks
    /// (as they arrived, without assembling them): every chunk is checked before
    /// any is added, so a refused update leaves the sum untouched.
    pub fn add_update_chunks<C: AsRef<[f64]>>(
        &mut self,
        partner: &str,
        round: u64,
        examples: u64,
        loss: f64,
        chunks: &[C],
    ) -> Result<(), Rejection> {
        self.admits(partner, round)?;
        let subject = Subject::Update;
        if self.kind != RoundKind::Train {
            return Err(evaluation_only(subject, round));
        }
        if self.aggregate.is_some() {
            return Err(Rejection::out_of_phase(
                subject,
                format!("round {round} takes encrypted updates only (secure aggregation)"),
                "an encrypted update",
            ));
        }
        if examples == 0 {
            return Err(no_examples(subject));
        }
        let len: usize = chunks.iter().map(|c| c.as_ref().len()).sum();
        if len != self.param_count {
            return Err(Rejection::invalid(
                subject,
                format!("{} parameters, as the model has", self.param_count),
                format!("{len} parameters"),
            ));
        }
        if let Some(i) = chunks
            .iter()
            .flat_map(|c| c.as_ref())
            .position(|v| !v.is_finite())
        {
            return Err(Rejection::invalid(
                subject,
                "finite parameters",
                format!("parameter {i} is not a finite number"),
            ));
        }
        // The chunks fit the model and are finite, and the weight is the same for
        // all: the sum refuses the first chunk or none.
        let mut offset = 0;
        for chunk in chunks {
            let chunk = chunk.as_ref();
            self.sum
                .add_chunk(offset, chunk, examples as f64)
                .map_err(|e| {
                    Rejection::invalid(subject, "an update of the model's shape", e.to_string())
                })?;
            offset += chunk.len();
        }
        // Under differential privacy partners do not report a loss (NaN).
        if loss.is_finite() {
            self.loss_sum += loss * examples as f64;
            self.loss_weight += examples as f64;
        }
        self.answers
            .insert(partner.to_string(), Answer::Update { examples, loss });
        Ok(())
    }

    /// Records a partner's evaluation of the round's input model.
    pub fn add_eval(
        &mut self,
        partner: &str,
        model_round: u64,
        partial: Evaluation,
    ) -> Result<(), Rejection> {
        let subject = Subject::Evaluation;
        if model_round != self.model_round {
            return Err(Rejection::out_of_phase(
                subject,
                format!(
                    "it is of model {model_round}, and round {} evaluates model {}",
                    self.round, self.model_round
                ),
                format!("an evaluation of model {}", self.model_round),
            ));
        }
        let Some(bins) = self.eval_bins else {
            return Err(Rejection::out_of_phase(
                subject,
                format!(
                    "round {} asks for no evaluation of model {model_round} \
                     (the task's [privacy] schedules evaluations)",
                    self.round
                ),
                "no evaluation this round",
            ));
        };
        if !self.selected.contains(partner) {
            return Err(Rejection::NotSelected { round: self.round });
        }
        match (&partial, self.eval_kind == partial.kind()) {
            (Evaluation::Binary(p), true) if p.bins() != bins => {
                return Err(Rejection::invalid(
                    subject,
                    format!("histograms of {bins} bins (round {})", self.round),
                    format!("histograms of {} bins", p.bins()),
                ));
            }
            (_, true) => {}
            (other, false) => {
                return Err(Rejection::invalid(
                    subject,
                    format!("a {} evaluation (the task's model)", self.eval_kind),
                    format!("a {} evaluation", other.kind()),
                ));
            }
        }
        if self.eval_partners.iter().any(|p| p == partner) {
            return Err(Rejection::Duplicate { round: self.round });
        }
        partial
            .validate()
            .map_err(|e| Rejection::invalid(subject, "a consistent evaluation", e.to_string()))?;
        // The merge the strategy makes of them must succeed: try it on a copy.
        if let Some(first) = self.eval.first() {
            let mut trial = first.clone();
            trial.merge(&partial).map_err(|e| {
                Rejection::invalid(subject, "an evaluation of the round's shape", e.to_string())
            })?;
        }
        self.eval.push(partial);
        self.eval_partners.push(partner.to_string());
        if self.kind == RoundKind::Evaluate {
            self.answers.insert(partner.to_string(), Answer::Evaluated);
        }
        Ok(())
    }

    /// Records that a partner declined the round.
    pub fn decline(&mut self, partner: &str, round: u64, reason: String) -> Result<(), Rejection> {
        self.admits(partner, round)?;
        self.answers
            .insert(partner.to_string(), Answer::Declined(reason));
        Ok(())
    }

    /// Marks a selected partner that disconnected as gone (it will not answer).
    pub fn drop_partner(&mut self, partner: &str) {
        if self.selected.contains(partner) && !self.answers.contains_key(partner) {
            self.answers.insert(
                partner.to_string(),
                Answer::Declined("disconnected".to_string()),
            );
        }
    }

    /// True when every selected partner has answered.
    pub fn complete(&self) -> bool {
        self.selected.iter().all(|p| self.answers.contains_key(p))
    }

    /// Number of updates received.
    pub fn updates(&self) -> usize {
        self.answers
            .values()
            .filter(|a| matches!(a, Answer::Update { .. }))
            .count()
    }

    /// Closes the round.
    pub fn finish(self) -> RoundResult {
        let mut contributors = Vec::new();
        let mut contributions = Vec::new();
        let mut declined = Vec::new();
        let mut examples = 0u64;
        for (p, a) in &self.answers {
            match a {
                Answer::Update { examples: n, .. } => {
                    contributors.push(p.clone());
                    contributions.push((p.clone(), *n));
                    examples += n;
                }
                Answer::Declined(r) => declined.push((p.clone(), r.clone())),
                Answer::Evaluated => {}
            }
        }
        let missing = self
            .selected
            .iter()
            .filter(|p| !self.answers.contains_key(*p))
            .cloned()
            .collect();
        let train_loss = if self.loss_weight > 0.0 {
            self.loss_sum / self.loss_weight
        } else {
            f64::NAN
        };
        let update = if contributors.is_empty() || self.aggregate.is_some() {
            None
        } else {
            self.sum
                .finish()
                .ok()
                .map(AggregatedUpdate::WeightedMeanDelta)
        };
        if let Some(why) = &self.poisoned {
            tracing::warn!(round = self.round, "encrypted sum unusable: {why}");
        }
        let aggregate = if self.poisoned.is_some() {
            None
        } else {
            self.aggregate
        };
        RoundResult {
            round: self.round,
            kind: self.kind,
            contributors,
            contributions,
            examples,
            train_loss,
            update,
            eval: (!self.eval.is_empty()).then_some((self.eval_partners, self.eval)),
            declined,
            missing,
            aggregate,
            ciphertexts: self.ciphertexts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn collector() -> RoundCollector {
        RoundCollector::new(
            3,
            2,
            RoundKind::Train,
            2,
            ["a".to_string(), "b".to_string()].into_iter().collect(),
            Instant::now() + Duration::from_secs(60),
        )
    }

    #[test]
    fn fedavg_weights_by_example_count() {
        let mut c = collector();
        c.add_update("a", 3, 1, 0.5, &[1.0, 0.0]).unwrap();
        assert!(!c.complete());
        c.add_update("b", 3, 3, 0.1, &[5.0, 4.0]).unwrap();
        assert!(c.complete());
        let r = c.finish();
        assert_eq!(
            r.update.unwrap(),
            AggregatedUpdate::WeightedMeanDelta(vec![4.0, 3.0])
        );
        assert_eq!(r.examples, 4);
        assert!((r.train_loss - 0.2).abs() < 1e-12);
    }

    /// A partial of `pos` positives and `neg` negatives, all in the top bin of `bins`.
    fn partial(bins: usize, pos: u64, neg: u64) -> Evaluation {
        let mut p = vec![0; bins];
        let mut n = vec![0; bins];
        p[bins - 1] = pos;
        n[bins - 1] = neg;
        Evaluation::Binary(consortia_model::EvalPartial::from_histograms(p, n).unwrap())
    }

    #[test]
    fn evaluations_are_taken_only_when_asked_for_and_with_the_expected_bins() {
        // By default (no [privacy]): exact partials of SCORE_BINS bins.
        let mut c = collector();
        assert!(matches!(
            c.add_eval("a", 2, partial(20, 3, 4)),
            Err(r @ Rejection::Invalid { .. }) if r.to_string().contains("20 bins")
        ));
        c.add_eval("a", 2, partial(SCORE_BINS, 3, 4)).unwrap();
        // A private round evaluating its model: 20-bin partials, merged across partners.
        let mut c = collector().with_evaluation(Some(20));
        assert!(matches!(
            c.add_eval("a", 2, partial(SCORE_BINS, 3, 4)),
            Err(Rejection::Invalid { .. })
        ));
        c.add_eval("a", 2, partial(20, 3, 4)).unwrap();
        c.add_eval("b", 2, partial(20, 1, 1)).unwrap();
        let (partners, partials) = c.finish().eval.unwrap();
        assert_eq!(partners, ["a", "b"]);
        let mut merged = partials[0].clone();
        merged.merge(&partials[1]).unwrap();
        let merged = merged.as_binary().unwrap();
        assert_eq!(
            (merged.n, merged.bins(), merged.tp, merged.fp),
            (9, 20, 4, 5)
        );
        // A regression partial in a classifier's round is refused by kind.
        let mut c = collector();
        let regression = Evaluation::Regression(consortia_model::RegressionPartial::from_rows([(
            1.0, 2.0, 1.0,
        )]));
        assert!(matches!(
            c.add_eval("a", 2, regression.clone()),
            Err(r @ Rejection::Invalid { .. }) if r.to_string().contains("binary")
        ));
        // And a regression round takes it, and refuses a binary one.
        let mut c = collector().for_regression();
        assert!(c.add_eval("a", 2, partial(SCORE_BINS, 3, 4)).is_err());
        c.add_eval("a", 2, regression).unwrap();
        // A private round whose model is not scheduled: no report is taken.
        let mut c = collector().with_evaluation(None);
        assert!(matches!(
            c.add_eval("a", 2, partial(20, 3, 4)),
            Err(r @ Rejection::OutOfPhase { .. }) if r.to_string().contains("asks for no evaluation")
        ));
        assert!(c.finish().eval.is_none());
    }

    #[test]
    fn an_update_in_chunks_is_added_whole_or_not_at_all() {
        let collector = |n| {
            RoundCollector::new(
                3,
                2,
                RoundKind::Train,
                n,
                ["a".to_string(), "b".to_string()].into_iter().collect(),
                Instant::now() + Duration::from_secs(60),
            )
        };
        // In chunks, the same sum as whole.
        let mut whole = collector(5);
        let mut chunked = collector(5);
        whole
            .add_update("a", 3, 2, 0.5, &[1.0, 2.0, 3.0, 4.0, 5.0])
            .unwrap();
        chunked
            .add_update_chunks("a", 3, 2, 0.5, &[vec![1.0, 2.0], vec![3.0, 4.0, 5.0]])
            .unwrap();
        // A later chunk that is not finite, or missing values, refuses the whole
        // update: its first chunk is not in the sum.
        for bad in [
            vec![vec![100.0, 100.0], vec![100.0, f64::INFINITY, 100.0]],
            vec![vec![100.0, 100.0], vec![100.0, 100.0]],
            vec![vec![100.0, 100.0], vec![100.0, 100.0, 100.0, 100.0]],
        ] {
            assert!(matches!(
                chunked.add_update_chunks("b", 3, 1, 0.5, &bad),
                Err(Rejection::Invalid { .. })
            ));
        }
        let (whole, chunked) = (whole.finish(), chunked.finish());
        assert_eq!(chunked.contributors, vec!["a".to_string()]);
        assert_eq!(chunked.update, whole.update);
        assert_eq!(
            chunked.update.unwrap(),
            AggregatedUpdate::WeightedMeanDelta(vec![1.0, 2.0, 3.0, 4.0, 5.0])
        );
    }

    #[test]
    fn late_duplicate_wrong_round_and_unselected_are_refused() {
        let mut c = collector();
        c.add_update("a", 3, 1, 0.5, &[1.0, 0.0]).unwrap();
        assert_eq!(
            c.add_update("a", 3, 1, 0.5, &[1.0, 0.0]),
            Err(Rejection::Duplicate { round: 3 })
        );
        assert_eq!(
            c.add_update("b", 2, 1, 0.5, &[1.0, 0.0]),
            Err(Rejection::Closed { round: 2 })
        );
        assert_eq!(
            c.add_update("b", 4, 1, 0.5, &[1.0, 0.0]),
            Err(Rejection::WrongRound { got: 4, open: 3 })
        );
        assert_eq!(
            c.add_update("z", 3, 1, 0.5, &[1.0, 0.0]),
            Err(Rejection::NotSelected { round: 3 })
        );
        assert!(matches!(
            c.add_update("b", 3, 1, 0.5, &[1.0]),
            Err(Rejection::Invalid { .. })
        ));
        assert!(matches!(
            c.add_update("b", 3, 1, 0.5, &[f64::NAN, 1.0]),
            Err(Rejection::Invalid { .. })
        ));
        // Refused messages changed nothing: only a's update is in.
        let r = c.finish();
        assert_eq!(r.contributors, vec!["a".to_string()]);
        assert_eq!(
            r.update.unwrap(),
            AggregatedUpdate::WeightedMeanDelta(vec![1.0, 0.0])
        );
        assert_eq!(r.missing, vec!["b".to_string()]);
    }
}
