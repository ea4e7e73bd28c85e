//! Shared fixtures: the telco data, the demo task, and an in-process federation.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use consortia_model::{
    Dataset, EvalPartial, FeatureStats, Metrics, Model, Standardizer, TaskSpec, TrainConfig,
    WeightedSum, partition_csv_by_column, sgd,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub(crate) fn telco_csv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/telco_churn_ibm.csv")
}

pub(crate) fn telco_task() -> TaskSpec {
    TaskSpec::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/telco_task.toml"))
        .unwrap()
}

/// One partner's rows after the holdout split.
pub(crate) struct Partner {
    pub value: String,
    pub train: Dataset,
    pub test: Dataset,
}

/// Splits the telco CSV by `contract` into partner files and holds out each
/// partner's rows (stratified), as the demo does.
pub(crate) fn telco_partners(task: &TaskSpec, dir: &Path) -> Vec<Partner> {
    partition_csv_by_column(telco_csv(), "contract", dir)
        .unwrap()
        .into_iter()
        .map(|(value, path, _)| {
            let data = Dataset::load_csv(&path, &task.schema).unwrap();
            let (train, test) = data.split_holdout(task.holdout_fraction, task.seed);
            Partner { value, train, test }
        })
        .collect()
}

/// A different, fixed generator for every (round, partner) pair.
pub(crate) fn rng_for(seed: u64, round: u64, partner: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (round << 32) ^ (partner << 16) ^ 0x5eed)
}

/// Federation-wide standardizer from the partners' merged training statistics.
pub(crate) fn federated_standardizer(partners: &[Partner]) -> Standardizer {
    let mut stats = FeatureStats::empty(partners[0].train.feature_count());
    for p in partners {
        stats.merge(&p.train.feature_stats()).unwrap();
    }
    Standardizer::from_stats(&stats).unwrap()
}

/// `rounds` of FedAvg: every partner trains from the global model on its own
/// rows, and the global model becomes the example-weighted average.
pub(crate) fn fedavg(
    partners: &[Partner],
    standardizer: &Standardizer,
    cfg: &TrainConfig,
    rounds: u32,
    seed: u64,
) -> Box<dyn Model> {
    let initial = consortia_model::initial_model(&telco_task()).unwrap();
    fedavg_from(initial, partners, standardizer, cfg, rounds, seed)
}

/// [`fedavg`] from a given initial model (any task's `initial_model`).
pub(crate) fn fedavg_from(
    mut global: Box<dyn Model>,
    partners: &[Partner],
    standardizer: &Standardizer,
    cfg: &TrainConfig,
    rounds: u32,
    seed: u64,
) -> Box<dyn Model> {
    let xs: Vec<_> = partners
        .iter()
        .map(|p| standardizer.apply(&p.train).unwrap())
        .collect();
    for round in 0..rounds {
        let mut sum = WeightedSum::new(global.param_count());
        for (k, (p, x)) in partners.iter().zip(&xs).enumerate() {
            let mut local = global.clone();
            let mut rng = rng_for(seed, u64::from(round), k as u64);
            sgd::train(
                local.as_mut(),
                x,
                p.train.labels(),
                cfg,
                None,
                &mut rng,
                &mut |_| {},
            )
            .unwrap();
            let delta: Vec<f64> = local
                .params()
                .iter()
                .zip(global.params())
                .map(|(a, b)| a - b)
                .collect();
            sum.add(&delta, p.train.len() as f64).unwrap();
        }
        let mean = sum.finish().unwrap();
        let next: Vec<f64> = global
            .params()
            .iter()
            .zip(&mean)
            .map(|(w, d)| w + d)
            .collect();
        global.set_params(&next).unwrap();
    }
    global
}

/// Trains a fresh model centrally on `train` (standardised by `standardizer`).
pub(crate) fn train_central(
    train: &Dataset,
    standardizer: &Standardizer,
    cfg: &TrainConfig,
    seed: u64,
) -> Box<dyn Model> {
    let mut model = consortia_model::initial_model(&telco_task()).unwrap();
    let x = standardizer.apply(train).unwrap();
    sgd::train(
        model.as_mut(),
        &x,
        train.labels(),
        cfg,
        None,
        &mut rng_for(seed, 999, 999),
        &mut |_| {},
    )
    .unwrap();
    model
}

/// Metrics of `model` on the union of `tests`, merged from per-partner partials.
pub(crate) fn pooled_metrics(
    model: &dyn Model,
    standardizer: &Standardizer,
    tests: &[&Dataset],
) -> Metrics {
    let mut total = EvalPartial::empty();
    for t in tests {
        let x = standardizer.apply(t).unwrap();
        total
            .merge(&EvalPartial::evaluate(model, &x, t.labels()).unwrap())
            .unwrap();
    }
    Metrics::from_partial(&total)
}
