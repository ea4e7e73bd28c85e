//! Metrics from merged partials, and the histogram ROC-AUC against exact AUCs.

use consortia_model::models::logistic::LogisticModel;
use consortia_model::{EvalPartial, Metrics, MetricsError, SCORE_BINS};
use ndarray::{Array1, Array2, array};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A one-feature model with weight 1 and bias 0 scores row `[z]` as sigmoid(z), so
/// rows are chosen as logits of the wanted scores.
fn identity_model() -> LogisticModel {
    LogisticModel::from_params(&[1.0, 0.0], 1).unwrap()
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn partial(scores: &[f64], labels: &[f64]) -> EvalPartial {
    let x = Array2::from_shape_fn((scores.len(), 1), |(i, _)| logit(scores[i]));
    EvalPartial::evaluate(&identity_model(), &x, &Array1::from(labels.to_vec())).unwrap()
}

/// AUC by comparing every (positive, negative) pair, ties counting one half.
fn exact_auc(scores: &[f64], labels: &[f64]) -> f64 {
    let (mut correct, mut pairs) = (0.0, 0.0);
    for (i, &si) in scores.iter().enumerate() {
        for (j, &sj) in scores.iter().enumerate() {
            if labels[i] == 1.0 && labels[j] == 0.0 {
                pairs += 1.0;
                correct += if si > sj {
                    1.0
                } else if si == sj {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    correct / pairs
}

#[test]
fn hand_computed_cases() {
    // Perfect ranking.
    let p = partial(&[0.1, 0.2, 0.8, 0.9], &[0.0, 0.0, 1.0, 1.0]);
    assert_eq!(p.roc_auc(), Some(1.0));
    // Reversed ranking.
    let p = partial(&[0.9, 0.8, 0.2, 0.1], &[0.0, 0.0, 1.0, 1.0]);
    assert_eq!(p.roc_auc(), Some(0.0));
    // Positives 0.35, 0.8; negatives 0.1, 0.4, 0.7: pairs won 1 + 3 of 6.
    let p = partial(&[0.35, 0.8, 0.1, 0.4, 0.7], &[1.0, 1.0, 0.0, 0.0, 0.0]);
    assert!((p.roc_auc().unwrap() - 4.0 / 6.0).abs() < 1e-12);
    // Same bin counts one half: positive 0.5001 vs negative 0.5004 share a bin.
    let p = partial(&[0.5001, 0.5004, 0.9], &[1.0, 0.0, 0.0]);
    assert!((p.roc_auc().unwrap() - 0.25).abs() < 1e-12);
    // One class only: undefined.
    assert_eq!(partial(&[0.3, 0.6], &[1.0, 1.0]).roc_auc(), None);
}

#[test]
fn confusion_counts_and_metrics() {
    // Threshold 0.5: predicted positive are 0.5, 0.9, 0.6.
    let p = partial(&[0.5, 0.9, 0.2, 0.6, 0.1], &[1.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!((p.n, p.tp, p.fn_, p.fp, p.tn), (5, 2, 1, 1, 1));
    let m = Metrics::from_partial(&p);
    assert_eq!(m.examples, 5);
    assert!((m.accuracy - 0.6).abs() < 1e-12);
    assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
    assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
    assert!((m.f1 - 2.0 / 3.0).abs() < 1e-12);
    let expected_loss =
        -(0.5f64.ln() + 0.9f64.ln() + 0.2f64.ln() + 0.4f64.ln() + 0.9f64.ln()) / 5.0;
    assert!((m.log_loss - expected_loss).abs() < 1e-9, "{}", m.log_loss);

    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);

    // Undefined metrics are NaN, and travel through JSON as null.
    let empty = Metrics::from_partial(&EvalPartial::empty());
    assert_eq!(empty.examples, 0);
    assert!(empty.accuracy.is_nan() && empty.log_loss.is_nan() && empty.roc_auc.is_nan());
    let one_class = Metrics::from_partial(&partial(&[0.3, 0.6], &[1.0, 1.0]));
    assert!(one_class.roc_auc.is_nan());
    assert_eq!(one_class.accuracy, 0.5);
    let json = serde_json::to_string(&one_class).unwrap();
    assert!(json.contains("\"roc_auc\":null"), "{json}");
    let back: Metrics = serde_json::from_str(&json).unwrap();
    assert!(back.roc_auc.is_nan());
    assert_eq!(back.accuracy, one_class.accuracy);
}

#[test]
fn histogram_auc_matches_exact_auc_on_random_scores() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for trial in 0..5 {
        let n = 1500;
        let labels: Vec<f64> = (0..n)
            .map(|_| if rng.random_bool(0.3) { 1.0 } else { 0.0 })
            .collect();
        // Overlapping classes: positives shifted up by a trial-dependent margin.
        let scores: Vec<f64> = labels
            .iter()
            .map(|&y| {
                let z: f64 = rng.random_range(-3.0..3.0) + y * (0.5 + trial as f64 * 0.4);
                1.0 / (1.0 + (-z).exp())
            })
            .collect();
        let hist = partial(&scores, &labels).roc_auc().unwrap();
        let exact = exact_auc(&scores, &labels);
        assert!(
            (hist - exact).abs() < 1e-3,
            "trial {trial}: {hist} vs {exact}"
        );
    }
}

#[test]
fn merged_partials_equal_the_pooled_partial() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let scores: Vec<f64> = (0..600).map(|_| rng.random_range(0.01..0.99)).collect();
    let labels: Vec<f64> = scores
        .iter()
        .map(|&s| if rng.random_bool(s) { 1.0 } else { 0.0 })
        .collect();
    let pooled = partial(&scores, &labels);
    let mut merged = EvalPartial::empty();
    for (s, l) in [(0, 100), (100, 350), (350, 600)] {
        merged
            .merge(&partial(&scores[s..l], &labels[s..l]))
            .unwrap();
    }
    assert_eq!(merged.pos_hist, pooled.pos_hist);
    assert_eq!(merged.neg_hist, pooled.neg_hist);
    assert_eq!(
        (merged.n, merged.tp, merged.fp, merged.tn, merged.fn_),
        (pooled.n, pooled.tp, pooled.fp, pooled.tn, pooled.fn_)
    );
    assert!((merged.log_loss_sum - pooled.log_loss_sum).abs() < 1e-9);
    let m = Metrics::from_partial(&merged);
    assert_eq!(Some(m.roc_auc), pooled.roc_auc());

    // The pooled AUC is not the mean of per-part AUCs in general, and merging
    // must give the pooled one: two parts each ranked perfectly but offset.
    let a = partial(&[0.6, 0.7], &[0.0, 1.0]);
    let b = partial(&[0.1, 0.2], &[0.0, 1.0]);
    let mut ab = a.clone();
    ab.merge(&b).unwrap();
    assert_eq!((a.roc_auc(), b.roc_auc()), (Some(1.0), Some(1.0)));
    assert_eq!(ab.roc_auc(), Some(0.75));

    let json = serde_json::to_string(&merged).unwrap();
    assert_eq!(serde_json::from_str::<EvalPartial>(&json).unwrap(), merged);
}

#[test]
fn inconsistent_partials_are_refused() {
    let good = partial(&[0.2, 0.8], &[0.0, 1.0]);
    let mut short = good.clone();
    short.pos_hist.truncate(SCORE_BINS - 1);
    let mut lying = good.clone();
    lying.tp += 1;
    let mut nan = good.clone();
    nan.log_loss_sum = f64::NAN;
    for bad in [short, lying, nan] {
        let mut acc = good.clone();
        assert!(matches!(
            acc.merge(&bad),
            Err(MetricsError::Inconsistent(_))
        ));
        assert_eq!(acc, good, "a refused merge leaves the partial unchanged");
        assert!(bad.validate().is_err());
    }
    let x = array![[0.0], [1.0]];
    assert!(EvalPartial::evaluate(&identity_model(), &x, &array![1.0]).is_err());
}

/// Coarsening to 20 bins and rebuilding a partial from the two histograms alone (what a
/// differentially private evaluation releases) keeps the example and confusion counts
/// exactly (0.5 is the edge between bins 9 and 10), gives the ROC-AUC of the merged bins,
/// and a log-loss close to the exact one.
#[test]
fn coarse_histograms_round_trip_the_metrics() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let n = 1500;
    let labels: Vec<f64> = (0..n)
        .map(|_| if rng.random_bool(0.3) { 1.0 } else { 0.0 })
        .collect();
    let scores: Vec<f64> = labels
        .iter()
        .map(|&y| {
            let z: f64 = rng.random_range(-3.0..3.0) + y * 1.5;
            1.0 / (1.0 + (-z).exp())
        })
        .collect();
    let fine = partial(&scores, &labels);
    let coarse = fine.coarsen(20).unwrap();
    assert_eq!(coarse.bins(), 20);
    for k in 0..20 {
        let range = 50 * k..50 * (k + 1);
        assert_eq!(
            coarse.pos_hist[k],
            fine.pos_hist[range.clone()].iter().sum::<u64>()
        );
        assert_eq!(coarse.neg_hist[k], fine.neg_hist[range].iter().sum::<u64>());
    }
    let rebuilt =
        EvalPartial::from_histograms(coarse.pos_hist.clone(), coarse.neg_hist.clone()).unwrap();
    rebuilt.validate().unwrap();
    assert_eq!(
        (rebuilt.n, rebuilt.tp, rebuilt.fp, rebuilt.tn, rebuilt.fn_),
        (fine.n, fine.tp, fine.fp, fine.tn, fine.fn_)
    );
    // The AUC of the 20-bin histograms is the pairwise AUC with each score replaced by its
    // 20-bin index (the fine bin divided by 50), ties counting one half.
    let binned: Vec<f64> = scores
        .iter()
        .map(|&p| (((p * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1) / 50) as f64)
        .collect();
    let expected = exact_auc(&binned, &labels);
    let auc = rebuilt.roc_auc().unwrap();
    assert!((auc - expected).abs() < 1e-12, "{auc} vs {expected}");
    assert_eq!(coarse.roc_auc(), rebuilt.roc_auc());
    // Coarser bins tie more pairs, so the AUC moves towards 1/2, here by little.
    let exact = exact_auc(&scores, &labels);
    assert!(auc <= exact && exact - auc < 0.02, "{auc} vs {exact}");
    // Log-loss at bin centres approximates the exact mean log-loss.
    let (approx, truth) = (
        Metrics::from_partial(&rebuilt).log_loss,
        Metrics::from_partial(&fine).log_loss,
    );
    assert!((approx - truth).abs() < 0.05 * truth, "{approx} vs {truth}");

    // Partials of 20 bins merge with each other (the coordinator's sum over partners), not
    // with partials of another bin count.
    let mut twice = rebuilt.clone();
    twice.merge(&rebuilt).unwrap();
    assert_eq!(twice.n, 2 * fine.n);
    assert_eq!(twice.roc_auc(), rebuilt.roc_auc());
    let mut mixed = rebuilt.clone();
    assert!(matches!(
        mixed.merge(&fine),
        Err(MetricsError::Inconsistent(_))
    ));
    assert_eq!(mixed, rebuilt);

    // Bin counts that do not divide the histograms, and mismatched histograms, are refused.
    assert!(fine.coarsen(7).is_err());
    assert!(fine.coarsen(0).is_err());
    assert!(EvalPartial::from_histograms(vec![1, 2], vec![3]).is_err());
    assert!(EvalPartial::from_histograms(Vec::new(), Vec::new()).is_err());
    // An odd bin count: the middle bin's centre is 0.5, so it counts as predicted positive.
    let odd = EvalPartial::from_histograms(vec![1, 2, 3], vec![4, 5, 6]).unwrap();
    assert_eq!((odd.tp, odd.fn_, odd.fp, odd.tn, odd.n), (5, 1, 11, 4, 21));
}

/// Average precision by sorting every example, each score its own threshold.
fn exact_average_precision(scores: &[f64], labels: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let positives = labels.iter().filter(|&&y| y == 1.0).count() as f64;
    let (mut tp, mut seen, mut ap) = (0.0, 0.0, 0.0);
    for i in order {
        seen += 1.0;
        if labels[i] == 1.0 {
            tp += 1.0;
            ap += (tp / seen) / positives;
        }
    }
    ap
}

#[test]
fn average_precision_and_lift_by_hand() {
    // Ranked: pos, neg, pos, neg, pos. AP = (1/3)(1 + 2/3 + 3/5) = 0.75556 (what
    // scikit-learn's average_precision_score gives for these scores).
    let p = partial(&[0.9, 0.8, 0.7, 0.6, 0.3], &[1.0, 0.0, 1.0, 0.0, 1.0]);
    let ap = p.average_precision().unwrap();
    assert!((ap - (1.0 + 2.0 / 3.0 + 0.6) / 3.0).abs() < 1e-12, "{ap}");
    // Top 20 % is the 0.9 positive: rate 1 over base rate 3/5.
    assert!((p.lift(0.2).unwrap() - 5.0 / 3.0).abs() < 1e-12);
    // Top 40 %: one positive in two.
    assert!((p.lift(0.4).unwrap() - 0.5 / 0.6).abs() < 1e-12);
    assert!((p.lift(1.0).unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(p.lift(0.0), None);
    let m = Metrics::from_partial(&p);
    assert!((m.pr_auc - ap).abs() < 1e-15);
    assert!((m.lift_20 - 5.0 / 3.0).abs() < 1e-12);
    let negatives_only = partial(&[0.2, 0.4], &[0.0, 0.0]);
    assert_eq!(negatives_only.average_precision(), None);
    assert!(Metrics::from_partial(&negatives_only).pr_auc.is_nan());
}

#[test]
fn histogram_average_precision_matches_the_exact_one_on_random_scores() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // 5 % positives, as conversion data often is; distinct bins for most scores.
    let n = 2000;
    let labels: Vec<f64> = (0..n)
        .map(|_| if rng.random::<f64>() < 0.05 { 1.0 } else { 0.0 })
        .collect();
    let scores: Vec<f64> = labels
        .iter()
        .map(|&y| (rng.random::<f64>() * 0.7 + 0.3 * y).clamp(0.0005, 0.9995))
        .collect();
    let p = partial(&scores, &labels);
    let exact = exact_average_precision(&scores, &labels);
    let binned = p.average_precision().unwrap();
    // 1000 bins: ties inside a bin move AP by at most a few thousandths here.
    assert!((exact - binned).abs() < 5e-3, "{exact} vs {binned}");
    // Merging per-partner partials gives the pooled figures exactly.
    let (a, b) = (
        partial(&scores[..700], &labels[..700]),
        partial(&scores[700..], &labels[700..]),
    );
    let mut merged = a.clone();
    merged.merge(&b).unwrap();
    assert_eq!(merged.average_precision(), p.average_precision());
    assert_eq!(merged.lift(0.1), p.lift(0.1));
    assert!(p.lift(0.1).unwrap() > 1.5, "the scores rank positives high");
}

#[test]
fn merging_partials_whose_loss_sums_overflow_is_refused() {
    let mut a = partial(&[0.9], &[1.0]);
    a.log_loss_sum = f64::MAX;
    let b = a.clone();
    let err = a.clone().merge(&b).unwrap_err();
    assert!(err.to_string().contains("overflows"), "{err}");
}
