//! Evaluation that merges across partners.
//!
//! Each partner evaluates the global model on its held-out rows and produces an
//! [`EvalPartial`]: confusion counts at threshold 0.5, the summed log-loss, and
//! per-class histograms of the predicted score over [`SCORE_BINS`] equal-width bins
//! of [0, 1]. Partials add up, and [`Metrics::from_partial`] turns the total into
//! metrics. The ROC-AUC is computed from the merged histograms, so it is the AUC of
//! the pooled held-out rows (to within the bin width), not an average of
//! per-partner AUCs.
//!
//! A partial may also hold coarser histograms: [`EvalPartial::coarsen`] merges bins, and
//! [`EvalPartial::from_histograms`] rebuilds every other field from two histograms alone
//! (how a differentially private evaluation, which releases only noised coarse histograms, is
//! turned into metrics). Partials merge only with partials of the same bin count.

use ndarray::Array1;
use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelError};

/// Number of equal-width score bins on [0, 1] in an [`EvalPartial`].
pub const SCORE_BINS: usize = 1000;

/// A score at or above this is a positive prediction.
pub const THRESHOLD: f64 = 0.5;

/// Additive evaluation counts for one partner, or for several merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPartial {
    /// Examples evaluated.
    pub n: u64,
    /// Positives predicted positive.
    pub tp: u64,
    /// Negatives predicted positive.
    pub fp: u64,
    /// Negatives predicted negative.
    pub tn: u64,
    /// Positives predicted negative.
    pub fn_: u64,
    /// Sum of per-example log-loss.
    pub log_loss_sum: f64,
    /// Positives per score bin; bin `k` holds scores in `[k/B, (k+1)/B)`, the last
    /// bin also holds 1.
    pub pos_hist: Vec<u64>,
    /// Negatives per score bin.
    pub neg_hist: Vec<u64>,
}

/// Metrics of a model on a set of examples.
///
/// A metric that is undefined (the ROC-AUC of examples of one class only, the
/// accuracy or log-loss of no examples) is NaN, which serialises as `null`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Examples evaluated.
    pub examples: u64,
    /// Fraction predicted correctly at threshold 0.5.
    #[serde(with = "nan_as_null")]
    pub accuracy: f64,
    /// tp / (tp + fp); 0 when nothing is predicted positive.
    #[serde(with = "nan_as_null")]
    pub precision: f64,
    /// tp / (tp + fn); 0 when there are no positives.
    #[serde(with = "nan_as_null")]
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    #[serde(with = "nan_as_null")]
    pub f1: f64,
    /// Mean log-loss.
    #[serde(with = "nan_as_null")]
    pub log_loss: f64,
    /// Area under the ROC curve from the score histograms (see
    /// [`EvalPartial::roc_auc`]); NaN when the examples hold only one class.
    #[serde(with = "nan_as_null")]
    pub roc_auc: f64,
    /// Area under the precision-recall curve as average precision, from the score
    /// histograms (see [`EvalPartial::average_precision`]); NaN without positives.
    /// Absent (NaN) in records written before it existed.
    #[serde(with = "nan_as_null", default = "nan")]
    pub pr_auc: f64,
    /// Lift in the top 10 % of scores: the positive rate among the 10 % of examples
    /// scored highest over the overall positive rate (see [`EvalPartial::lift`]).
    #[serde(with = "nan_as_null", default = "nan")]
    pub lift_10: f64,
    /// Lift in the top 20 % of scores.
    #[serde(with = "nan_as_null", default = "nan")]
    pub lift_20: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// Serialises a non-finite `f64` as `null` and reads `null` back as NaN, since JSON
/// has no NaN.
pub(crate) mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Why partials could not be computed, merged or summarised.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// The model could not score the examples.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A partial whose counts contradict each other.
    #[error("inconsistent evaluation partial: {0}")]
    Inconsistent(String),
}

impl Default for EvalPartial {
    fn default() -> Self {
        Self::empty()
    }
}

/// The score bin of probability `p` in [0, 1].
fn bin_of(p: f64) -> usize {
    // p is in [0, 1], so the product is in [0, SCORE_BINS] and the cast is exact
    // enough; the min puts p = 1 in the last bin.
    ((p * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1)
}

impl EvalPartial {
    /// Counts over no examples.
    pub fn empty() -> Self {
        Self {
            n: 0,
            tp: 0,
            fp: 0,
            tn: 0,
            fn_: 0,
            log_loss_sum: 0.0,
            pos_hist: vec![0; SCORE_BINS],
            neg_hist: vec![0; SCORE_BINS],
        }
    }

    /// Counts over examples given as `(P(y = 1), is positive, log-loss)`, one per
    /// held-out row: how a binary model builds its evaluation
    /// ([`crate::Model::evaluate`]).
    pub fn from_scores(scores: impl IntoIterator<Item = (f64, bool, f64)>) -> Self {
        let mut partial = Self::empty();
        for (p, positive, loss) in scores {
            let predicted = p >= THRESHOLD;
            let bin = bin_of(p);
            match (positive, predicted) {
                (true, true) => partial.tp += 1,
                (true, false) => partial.fn_ += 1,
                (false, true) => partial.fp += 1,
                (false, false) => partial.tn += 1,
            }
            if positive {
                partial.pos_hist[bin] += 1;
            } else {
                partial.neg_hist[bin] += 1;
            }
            partial.log_loss_sum += loss;
            partial.n += 1;
        }
        partial
    }

    /// Evaluates a classifier `model` on the rows of `x` (standardised) with labels
    /// `y` ([`crate::Model::evaluate`]); a model of another task kind is refused.
    pub fn evaluate(
        model: &dyn Model,
        x: &ndarray::Array2<f64>,
        y: &Array1<f64>,
    ) -> Result<Self, MetricsError> {
        match model.evaluate(x, y)? {
            crate::Evaluation::Binary(p) => Ok(p),
            other => Err(MetricsError::Inconsistent(format!(
                "a {} evaluation is not a classifier's",
                other.kind()
            ))),
        }
    }

    /// Bins per histogram ([`SCORE_BINS`] for a partial from [`EvalPartial::evaluate`]).
    pub fn bins(&self) -> usize {
        self.pos_hist.len()
    }

    /// Checks that the two histograms have the same number of bins (at least one), that
    /// they and the confusion counts describe the same examples, and that the loss is
    /// finite and non-negative. Call it on partials received from elsewhere, and check
    /// [`EvalPartial::bins`] against the bin count expected.
    pub fn validate(&self) -> Result<(), MetricsError> {
        let bad = |m: String| Err(MetricsError::Inconsistent(m));
        if self.pos_hist.len() != self.neg_hist.len() || self.pos_hist.is_empty() {
            return bad(format!(
                "histograms have {} and {} bins; they need the same number, at least 1",
                self.pos_hist.len(),
                self.neg_hist.len()
            ));
        }
        let sum = |h: &[u64]| h.iter().try_fold(0u64, |a, &b| a.checked_add(b));
        let (Some(pos), Some(neg)) = (sum(&self.pos_hist), sum(&self.neg_hist)) else {
            return bad("histogram counts overflow".into());
        };
        let positives = self.tp.checked_add(self.fn_);
        let negatives = self.fp.checked_add(self.tn);
        if positives != Some(pos) || negatives != Some(neg) || pos.checked_add(neg) != Some(self.n)
        {
            return bad(format!(
                "n = {}, tp + fn = {:?}, fp + tn = {:?}, but the histograms hold {pos} positives and {neg} negatives",
                self.n, positives, negatives
            ));
        }
        if !(self.log_loss_sum.is_finite() && self.log_loss_sum >= 0.0) {
            return bad(format!(
                "log_loss_sum is {}, not a finite number at least 0",
                self.log_loss_sum
            ));
        }
        Ok(())
    }

    /// Adds `other`'s examples to this partial. Both must be valid (see
    /// [`EvalPartial::validate`]) and have the same number of bins.
    pub fn merge(&mut self, other: &EvalPartial) -> Result<(), MetricsError> {
        self.validate()?;
        other.validate()?;
        if self.bins() != other.bins() {
            return Err(MetricsError::Inconsistent(format!(
                "cannot merge histograms of {} bins with histograms of {} bins",
                self.bins(),
                other.bins()
            )));
        }
        let overflow = || MetricsError::Inconsistent("merged counts overflow".into());
        let add = |a: u64, b: u64| a.checked_add(b).ok_or_else(overflow);
        let log_loss_sum = self.log_loss_sum + other.log_loss_sum;
        if !log_loss_sum.is_finite() {
            return Err(MetricsError::Inconsistent(
                "merged log-loss sum overflows".into(),
            ));
        }
        let merged = EvalPartial {
            n: add(self.n, other.n)?,
            tp: add(self.tp, other.tp)?,
            fp: add(self.fp, other.fp)?,
            tn: add(self.tn, other.tn)?,
            fn_: add(self.fn_, other.fn_)?,
            log_loss_sum,
            pos_hist: self
                .pos_hist
                .iter()
                .zip(&other.pos_hist)
                .map(|(&a, &b)| add(a, b))
                .collect::<Result<_, _>>()?,
            neg_hist: self
                .neg_hist
                .iter()
                .zip(&other.neg_hist)
                .map(|(&a, &b)| add(a, b))
                .collect::<Result<_, _>>()?,
        };
        *self = merged;
        Ok(())
    }

    /// The same partial with histograms of `bins` bins, each the sum of `self.bins() / bins`
    /// consecutive bins (bin `k` then holds scores in `[k/bins, (k+1)/bins)`). The other
    /// fields are kept as they are. `self` must be valid and `bins` a divisor of
    /// `self.bins()` (1000 = [`SCORE_BINS`] divides into 20 bins of 50).
    pub fn coarsen(&self, bins: usize) -> Result<EvalPartial, MetricsError> {
        self.validate()?;
        if bins == 0 || !self.bins().is_multiple_of(bins) {
            return Err(MetricsError::Inconsistent(format!(
                "{} bins cannot be merged into {bins} equal bins",
                self.bins()
            )));
        }
        let width = self.bins() / bins;
        // The sums cannot overflow: `validate` checked the total of each histogram.
        let merge = |h: &[u64]| -> Vec<u64> { h.chunks(width).map(|c| c.iter().sum()).collect() };
        Ok(EvalPartial {
            pos_hist: merge(&self.pos_hist),
            neg_hist: merge(&self.neg_hist),
            ..self.clone()
        })
    }

    /// A partial built from two score histograms alone (positives and negatives over the
    /// same equal-width bins of [0, 1]); every other field is derived from them:
    ///
    /// * `n`: the total count;
    /// * confusion counts: a bin counts as predicted positive when its centre is at least
    ///   [`THRESHOLD`]. With an even number of bins 0.5 is a bin edge, so these are exactly
    ///   the counts of the rule "score ≥ 0.5" on the binned examples;
    /// * `log_loss_sum`: each example's log-loss at its bin's centre `c_k = (k + ½)/B`
    ///   (`−ln c_k` for a positive, `−ln(1 − c_k)` for a negative). This is an
    ///   approximation: the true loss of scores spread within a bin differs from the loss at
    ///   its centre (by convexity of the loss, the centre value is lower than the bin's mean
    ///   loss when scores spread evenly), and scores near 0 or 1 lose their tails.
    ///
    /// The ROC-AUC ([`EvalPartial::roc_auc`]) only ever reads the histograms, so it is that of
    /// the histograms at their own resolution. Refuses histograms of different lengths or no
    /// bins, and counts whose total overflows `u64`.
    pub fn from_histograms(pos: Vec<u64>, neg: Vec<u64>) -> Result<EvalPartial, MetricsError> {
        if pos.len() != neg.len() || pos.is_empty() {
            return Err(MetricsError::Inconsistent(format!(
                "histograms have {} and {} bins; they need the same number, at least 1",
                pos.len(),
                neg.len()
            )));
        }
        let bins = pos.len();
        let overflow = || MetricsError::Inconsistent("histogram counts overflow".into());
        let (mut tp, mut fp, mut tn, mut fn_) = (0u64, 0u64, 0u64, 0u64);
        let mut log_loss_sum = 0.0;
        for (k, (&p, &q)) in pos.iter().zip(&neg).enumerate() {
            let centre = (k as f64 + 0.5) / bins as f64;
            if centre >= THRESHOLD {
                tp = tp.checked_add(p).ok_or_else(overflow)?;
                fp = fp.checked_add(q).ok_or_else(overflow)?;
            } else {
                fn_ = fn_.checked_add(p).ok_or_else(overflow)?;
                tn = tn.checked_add(q).ok_or_else(overflow)?;
            }
            log_loss_sum += p as f64 * -centre.ln() + q as f64 * -(1.0 - centre).ln();
        }
        let n = [tp, fp, tn]
            .into_iter()
            .try_fold(fn_, u64::checked_add)
            .ok_or_else(overflow)?;
        let partial = EvalPartial {
            n,
            tp,
            fp,
            tn,
            fn_,
            log_loss_sum,
            pos_hist: pos,
            neg_hist: neg,
        };
        partial.validate()?;
        Ok(partial)
    }

    /// ROC-AUC from the histograms: the probability that a random positive scores
    /// in a higher bin than a random negative, counting a shared bin as one half.
    /// This equals the trapezoid area under the ROC curve traced through the bin
    /// edges (Fawcett, "An introduction to ROC analysis", Pattern Recognition
    /// Letters 27(8), 2006, section 7, with scores quantised to bins). Any number of
    /// bins works (only their order matters). `None` when either class is absent.
    pub fn roc_auc(&self) -> Option<f64> {
        let positives: u128 = self.pos_hist.iter().map(|&c| u128::from(c)).sum();
        let negatives: u128 = self.neg_hist.iter().map(|&c| u128::from(c)).sum();
        if positives == 0 || negatives == 0 {
            return None;
        }
        // Twice the number of (positive, negative) pairs ranked correctly, with
        // same-bin pairs counting 1 instead of 2; exact in integers.
        let mut twice_correct: u128 = 0;
        let mut negatives_below: u128 = 0;
        for (&pos, &neg) in self.pos_hist.iter().zip(&self.neg_hist) {
            let (pos, neg) = (u128::from(pos), u128::from(neg));
            twice_correct += pos * (2 * negatives_below + neg);
            negatives_below += neg;
        }
        Some(twice_correct as f64 / (2.0 * positives as f64 * negatives as f64))
    }
}

impl EvalPartial {
    /// Average precision from the histograms: `Σ_k (R_k − R_{k−1}) · P_k` over the
    /// thresholds at each bin's lower edge, from the highest bin down, where `R_k` and
    /// `P_k` are the recall and precision of "score in bin k or above". Examples that
    /// share a bin are one threshold, as scikit-learn's `average_precision_score`
    /// treats tied scores (Manning, Raghavan and Schütze, "Introduction to Information
    /// Retrieval", 2008, §8.4), so this is the exact average precision of the scores
    /// quantised to bins. `None` without positives.
    pub fn average_precision(&self) -> Option<f64> {
        let positives: u64 = self.pos_hist.iter().sum();
        if positives == 0 {
            return None;
        }
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut ap = 0.0;
        for (&p, &q) in self.pos_hist.iter().zip(&self.neg_hist).rev() {
            if p == 0 && q == 0 {
                continue;
            }
            tp += p;
            fp += q;
            let precision = tp as f64 / (tp + fp) as f64;
            ap += (p as f64 / positives as f64) * precision;
        }
        Some(ap)
    }

    /// Lift in the top fraction `q` (in (0, 1]) of scores: the share of positives
    /// among the `q·n` examples scored highest, divided by the share among all `n`.
    /// A bin that straddles the cut counts in proportion to the part of it inside
    /// (its examples are taken as evenly mixed). `None` without positives or
    /// examples, or for `q` outside (0, 1].
    pub fn lift(&self, q: f64) -> Option<f64> {
        let positives: u64 = self.pos_hist.iter().sum();
        let total: u64 = positives + self.neg_hist.iter().sum::<u64>();
        if positives == 0 || total == 0 || !(q > 0.0 && q <= 1.0) {
            return None;
        }
        let want = q * total as f64;
        let (mut taken, mut taken_pos) = (0.0f64, 0.0f64);
        for (&p, &n) in self.pos_hist.iter().zip(&self.neg_hist).rev() {
            let in_bin = (p + n) as f64;
            if in_bin == 0.0 {
                continue;
            }
            let share = ((want - taken) / in_bin).min(1.0);
            taken += share * in_bin;
            taken_pos += share * p as f64;
            if taken >= want {
                break;
            }
        }
        Some((taken_pos / taken) / (positives as f64 / total as f64))
    }
}

impl Metrics {
    /// Metrics of the examples counted in `partial`. The partial is taken as it is:
    /// call [`EvalPartial::validate`] first on a partial from elsewhere
    /// ([`EvalPartial::merge`] validates both sides).
    pub fn from_partial(partial: &EvalPartial) -> Self {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_example = |x: f64| {
            if partial.n == 0 {
                f64::NAN
            } else {
                x / partial.n as f64
            }
        };
        let precision = ratio(partial.tp, partial.tp.saturating_add(partial.fp));
        let recall = ratio(partial.tp, partial.tp.saturating_add(partial.fn_));
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            examples: partial.n,
            accuracy: per_example(partial.tp.saturating_add(partial.tn) as f64),
            precision,
            recall,
            f1,
            log_loss: per_example(partial.log_loss_sum),
            roc_auc: partial.roc_auc().unwrap_or(f64::NAN),
            pr_auc: partial.average_precision().unwrap_or(f64::NAN),
            lift_10: partial.lift(0.1).unwrap_or(f64::NAN),
            lift_20: partial.lift(0.2).unwrap_or(f64::NAN),
        }
    }
}
