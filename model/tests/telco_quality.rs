//! Quality bar on the IBM telco churn data: central logistic regression, FedAvg
//! across three partners split by contract type, and each partner alone.

mod common;

use common::*;
use consortia_model::{Dataset, FeatureStats, Metrics, Standardizer, TrainConfig};

/// Central training with the demo task's settings and as many passes over the
/// data as the federation makes.
fn central_config() -> TrainConfig {
    let task = telco_task();
    TrainConfig {
        epochs: task.rounds * task.local_epochs,
        ..task.train_config()
    }
}

fn central_metrics(data: &Dataset, split_seed: u64) -> Metrics {
    let (train, test) = data.split_holdout(0.2, split_seed);
    let standardizer = Standardizer::from_stats(&train.feature_stats()).unwrap();
    let model = train_central(&train, &standardizer, &central_config(), split_seed);
    pooled_metrics(model.as_ref(), &standardizer, &[&test])
}

#[test]
fn centralised_model_reaches_reference_auc() {
    let task = telco_task();
    let data = Dataset::load_csv(telco_csv(), &task.schema).unwrap();
    assert_eq!(data.len(), 7043);
    assert_eq!(data.feature_count(), 9 + 31);

    // The test AUC of 1409 held-out rows moves by about ±0.015 with the split, so
    // the bar is checked on one fixed split and, more loosely, on the mean of five.
    let metrics = central_metrics(&data, 42);
    println!("centralised, split seed 42: {metrics:?}");
    let auc = metrics.roc_auc;
    assert!(auc >= 0.84, "centralised ROC-AUC {auc:.4} < 0.84");
    assert!(metrics.accuracy >= 0.79, "accuracy {}", metrics.accuracy);

    let aucs: Vec<f64> = (1..=5)
        .map(|seed| central_metrics(&data, seed).roc_auc)
        .collect();
    let mean = aucs.iter().sum::<f64>() / aucs.len() as f64;
    println!("centralised, split seeds 1..=5: {aucs:.4?}, mean {mean:.4}");
    assert!(mean >= 0.825, "mean centralised ROC-AUC {mean:.4} < 0.825");
}

#[test]
fn fedavg_matches_central_and_beats_every_partner_alone() {
    let task = telco_task();
    let dir = tempfile::tempdir().unwrap();
    let partners = telco_partners(&task, dir.path());
    let values: Vec<_> = partners.iter().map(|p| p.value.as_str()).collect();
    assert_eq!(values, ["Month-to-month", "One year", "Two year"]);
    let tests: Vec<&Dataset> = partners.iter().map(|p| &p.test).collect();
    let cfg = task.train_config();

    // Federated: federation-wide standardisation, then FedAvg.
    let standardizer = federated_standardizer(&partners);
    let global = fedavg(&partners, &standardizer, &cfg, task.rounds, task.seed);
    let federated = pooled_metrics(global.as_ref(), &standardizer, &tests);

    // Central: all partners' training rows in one place, same number of passes.
    let trains: Vec<&Dataset> = partners.iter().map(|p| &p.train).collect();
    let pooled = Dataset::concat(&trains).unwrap();
    assert_eq!(
        pooled.feature_stats().count,
        trains.iter().map(|t| t.len() as u64).sum::<u64>()
    );
    let central_std = Standardizer::from_stats(&pooled.feature_stats()).unwrap();
    let central_cfg = central_config();
    let central = train_central(&pooled, &central_std, &central_cfg, task.seed);
    let central = pooled_metrics(central.as_ref(), &central_std, &tests);

    let fed_auc = federated.roc_auc;
    let central_auc = central.roc_auc;
    println!("federated: {federated:?}");
    println!("central on pooled partner rows: {central:?}");
    assert!(
        (fed_auc - central_auc).abs() <= 0.01,
        "federated AUC {fed_auc:.4} vs central {central_auc:.4}"
    );

    // Local only: each partner alone, with its own statistics, on the pooled test rows.
    for p in &partners {
        let mut stats = FeatureStats::empty(p.train.feature_count());
        stats.merge(&p.train.feature_stats()).unwrap();
        let own = Standardizer::from_stats(&stats).unwrap();
        let model = train_central(&p.train, &own, &central_cfg, task.seed);
        let local = pooled_metrics(model.as_ref(), &own, &tests);
        let local_auc = local.roc_auc;
        println!("local only, {}: {local:?}", p.value);
        // Month-to-month holds most of the churners, and its model alone comes
        // within a few thousandths of the federation on AUC and log-loss; the
        // federation must still be strictly better on both.
        assert!(
            fed_auc > local_auc,
            "federated AUC {fed_auc:.4} does not beat {} alone ({local_auc:.4})",
            p.value
        );
        assert!(
            federated.log_loss < local.log_loss,
            "federated log-loss {:.4} vs {} alone {:.4}",
            federated.log_loss,
            p.value,
            local.log_loss
        );
    }
}
