//! Each local update against its definition, and its events against what the
//! coordinator's book charges for the same task.

use super::*;
use consortia_model::TaskSpec;
use ndarray::Axis;
use rand::{Rng, SeedableRng};

const PLAIN: &str = include_str!("../../../examples/telco_churn_task.toml");
const DP_RECORD: &str = include_str!("../../../examples/telco_churn_dp_eps3.toml");
const DDG: &str = include_str!("../../../examples/telco_churn_ddg_eps8.toml");

fn with_privacy(text: &str, key: &str, value: toml::Value) -> TaskSpec {
    let mut task = TaskSpec::from_toml_str(text).unwrap();
    let mut table = task.privacy.clone().unwrap();
    if key == "unit" && value.as_str() == Some("partner") {
        // Sampling and steps describe DP-SGD (record unit) only.
        table.remove("sampling_rate");
        table.remove("steps_per_round");
    }
    table.insert(key.into(), value);
    task.privacy = Some(table);
    task
}

/// Rows in the task's feature space whose label follows the first feature.
fn rows(task: &TaskSpec, n: usize) -> (Array2<f64>, Array1<f64>) {
    let f = task.schema.feature_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let x = Array2::from_shape_fn((n, f), |_| rng.random_range(-1.0..1.0));
    let y = x.map_axis(Axis(1), |r| if r[0] > 0.0 { 1.0 } else { 0.0 });
    (x, y)
}

fn run(update: &dyn LocalUpdate, task: &TaskSpec, n: usize) -> Contribution {
    let global = consortia_model::initial_model(task).unwrap();
    let (x, y) = rows(task, n);
    update
        .compute(RoundInput {
            global: global.as_ref(),
            x: &x,
            y: &y,
            ratings: None,
            seed: 1,
            progress: &mut |_| {},
        })
        .unwrap()
}

#[test]
fn the_task_chooses_the_update_and_each_charges_what_the_book_charges() {
    let plain = TaskSpec::from_toml_str(PLAIN).unwrap();
    let record = TaskSpec::from_toml_str(DP_RECORD).unwrap();
    let partner = with_privacy(DP_RECORD, "unit", "partner".into());
    let ddg = TaskSpec::from_toml_str(DDG).unwrap();
    let ddg_partner = with_privacy(DDG, "unit", "partner".into());
    let mut prox = plain.clone();
    prox.local.proximal_mu = 0.1;
    let cases = [
        (&plain, "sgd"),
        (&prox, "fedprox"),
        (&record, "dp-sgd"),
        (&partner, "dp-fedavg"),
        (&ddg, "ddg-record"),
        (&ddg_partner, "ddg-partner"),
    ];
    for (task, name) in cases {
        let spec = task.privacy_spec().unwrap();
        let update = build(task, spec.as_ref()).unwrap();
        assert_eq!(update.name(), name);
        let events = update.events(2000).unwrap();
        match &spec {
            None => assert!(events.is_empty(), "{name} spends nothing"),
            // The coordinator charges every selected partner from the spec: the
            // partner's own charge must be the same events.
            Some(s) => assert_eq!(events, s.round_events(2000).unwrap(), "{name}"),
        }
    }
}

#[test]
fn contributions_have_the_kind_and_length_the_aggregation_expects() {
    let plain = TaskSpec::from_toml_str(PLAIN).unwrap();
    let dim = plain.param_count();
    let c = run(build(&plain, None).unwrap().as_ref(), &plain, 300);
    assert_eq!(c.kind, ContributionKind::Delta);
    assert_eq!(c.vector.len(), dim);
    assert!(c.loss.is_some(), "a non-private update reports its loss");
    assert!(c.vector.iter().any(|v| *v != 0.0));

    let ddg = TaskSpec::from_toml_str(DDG).unwrap();
    let spec = ddg.privacy_spec().unwrap();
    let c = run(build(&ddg, spec.as_ref()).unwrap().as_ref(), &ddg, 300);
    assert_eq!(c.kind, ContributionKind::GradientSum);
    assert_eq!(
        c.loss, None,
        "nothing computed on private rows without noise leaves"
    );
    // A sum of 300 row gradients each clipped to C = 1 has norm at most 300.
    let norm = c.vector.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        norm <= 300.0 * spec.as_ref().unwrap().clip_norm + 1e-9,
        "{norm}"
    );

    let ddg_partner = with_privacy(DDG, "unit", "partner".into());
    let spec = ddg_partner.privacy_spec().unwrap();
    let c = run(
        build(&ddg_partner, spec.as_ref()).unwrap().as_ref(),
        &ddg_partner,
        300,
    );
    assert_eq!(c.kind, ContributionKind::ClippedDelta);
}

#[test]
fn dp_fedavg_noise_is_the_configured_gaussian() {
    // One delta, clipped to C = 1, plus N(0, z²C²) with z = 5 on each of the 41
    // coordinates: the noise dominates, and its sample variance is within 5 sd of
    // 25 (the variance of a sample variance of 41 normals is 2σ⁴/40; false failure
    // below 1e-6).
    let mut task = with_privacy(DP_RECORD, "unit", "partner".into());
    let mut table = task.privacy.clone().unwrap();
    table.insert("noise_multiplier".into(), 5.0.into());
    table.insert("clip_norm".into(), 1.0.into());
    task.privacy = Some(table);
    let spec = task.privacy_spec().unwrap().unwrap();
    let update = build(&task, Some(&spec)).unwrap();
    let c = run(update.as_ref(), &task, 300);
    let n = c.vector.len() as f64;
    let mean = c.vector.iter().sum::<f64>() / n;
    let var = c
        .vector
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum::<f64>()
        / (n - 1.0);
    let sd_of_var = (2.0 * 625.0 / (n - 1.0)).sqrt();
    assert!(
        (var - 25.0).abs() < 5.0 * sd_of_var,
        "sample variance {var}"
    );
}

#[test]
fn fedprox_stays_closer_to_the_global_model() {
    let plain = TaskSpec::from_toml_str(PLAIN).unwrap();
    let mut prox = plain.clone();
    prox.local.proximal_mu = 1.0;
    let norm = |c: Contribution| c.vector.iter().map(|v| v * v).sum::<f64>().sqrt();
    let free = norm(run(build(&plain, None).unwrap().as_ref(), &plain, 500));
    let held = norm(run(build(&prox, None).unwrap().as_ref(), &prox, 500));
    assert!(held < free, "μ = 1 shrinks the delta: {held} vs {free}");
}

#[test]
fn dp_sgd_applies_the_proximal_term() {
    // Almost no noise, so the two runs differ by the proximal pull alone; μ = 5 with
    // the example's learning rate shrinks every step's move towards the global model.
    let mut task = with_privacy(DP_RECORD, "noise_multiplier", 0.05.into());
    let spec = task.privacy_spec().unwrap().unwrap();
    let norm = |c: Contribution| c.vector.iter().map(|v| v * v).sum::<f64>().sqrt();
    let free = norm(run(build(&task, Some(&spec)).unwrap().as_ref(), &task, 500));
    task.local.proximal_mu = 5.0;
    let held = norm(run(build(&task, Some(&spec)).unwrap().as_ref(), &task, 500));
    assert!(
        held < 0.8 * free,
        "μ = 5 shrinks the DP-SGD delta: {held} vs {free}"
    );
}
