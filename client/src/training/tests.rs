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

const MF: &str = include_str!("../../../examples/recommend_mf.toml");

/// The bundled matrix factorisation with a `[privacy]` table of `unit` and
/// `placement` (ε 8, clip C, noise multiplier z), secure aggregation on.
fn mf_task(unit: &str, placement: &str, clip: f64, z: f64) -> TaskSpec {
    let mut task = TaskSpec::from_toml_str(MF).unwrap();
    task.secure_aggregation = true;
    // DP-SGD over users (record unit) samples users.
    let sampling = if unit == "record" {
        "sampling_rate = 1.0\n"
    } else {
        ""
    };
    task.privacy = Some(
        toml::from_str(&format!(
            "unit = \"{unit}\"\nplacement = \"{placement}\"\nepsilon = 8.0\ndelta = 1e-5\n\
             clip_norm = {clip}\nnoise_multiplier = {z}\n{sampling}"
        ))
        .unwrap(),
    );
    task
}

/// 40 users each rating 25 of the first 400 catalogue items, on the half-star scale.
fn mf_ratings(task: &TaskSpec) -> consortia_model::models::mf::TrainRatings {
    use consortia_model::ratings::{Rating, Ratings};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let rows = (0..40u32)
        .flat_map(|u| (0..25u32).map(move |j| (u, (u * 7 + j * 13) % 400)))
        .map(|(user, item)| Rating {
            user,
            item,
            value: f64::from(rng.random_range(1..=10u32)) / 2.0,
        })
        .collect();
    let ratings = Ratings {
        users: (0..40).collect(),
        rows,
        unknown_items: 0,
    };
    let items = task.schema.ratings.as_ref().unwrap().items;
    consortia_model::models::mf::TrainRatings::new(&ratings, items)
}

/// `update`'s contribution on [`mf_ratings`] at the task's initial model.
fn run_mf(update: &dyn LocalUpdate, task: &TaskSpec) -> Contribution {
    let global = consortia_model::initial_model(task).unwrap();
    let train = mf_ratings(task);
    let (x, y) = (Array2::zeros((0, 0)), Array1::zeros(0));
    update
        .compute(RoundInput {
            global: global.as_ref(),
            x: &x,
            y: &y,
            ratings: Some(&train),
            seed: 1,
            progress: &mut |_| {},
        })
        .unwrap()
}

#[test]
fn a_matrix_factorisation_chooses_its_update_and_charges_what_the_book_charges() {
    let plain = TaskSpec::from_toml_str(MF).unwrap();
    assert_eq!(build(&plain, None).unwrap().name(), "mf-als");
    let cases = [
        (mf_task("record", "local", 1.0, 1.0), "mf-dp-sgd-users"),
        (mf_task("partner", "local", 1.0, 1.0), "dp-fedavg"),
        (mf_task("partner", "distributed", 1.0, 1.0), "ddg-partner"),
    ];
    for (task, name) in &cases {
        let spec = task.privacy_spec().unwrap().unwrap();
        let update = build(task, Some(&spec)).unwrap();
        assert_eq!(update.name(), *name);
        assert_eq!(
            update.events(1000).unwrap(),
            spec.round_events(1000).unwrap(),
            "{name}"
        );
    }
    // Record unit with distributed placement: refused by the task already; a spec
    // made by hand is refused here too, saying which combinations train.
    let mut spec = cases[2].0.privacy_spec().unwrap().unwrap();
    spec.unit = consortia_dp::PrivacyUnit::Record;
    let e = build(&cases[2].0, Some(&spec)).err().unwrap().to_string();
    assert!(
        e.contains("unit = \"partner\" and placement = \"local\" or \"distributed\""),
        "{e}"
    );
}

#[test]
fn mf_partner_dp_sends_the_als_item_delta_clipped_to_c_and_noised_with_z_c() {
    // The ALS item step's delta (deterministic), its norm well above C = 2.
    let plain = TaskSpec::from_toml_str(MF).unwrap();
    let als = run_mf(build(&plain, None).unwrap().as_ref(), &plain);
    let norm = als.vector.iter().map(|v| v * v).sum::<f64>().sqrt();
    let (clip, z) = (2.0, 0.05);
    assert!(norm > 2.0 * clip, "the test needs a delta to clip: {norm}");
    let task = mf_task("partner", "local", clip, z);
    let spec = task.privacy_spec().unwrap().unwrap();
    let c = run_mf(build(&task, Some(&spec)).unwrap().as_ref(), &task);
    assert_eq!(c.kind, ContributionKind::Delta);
    assert_eq!(c.loss, None, "no loss computed on the ratings leaves");
    assert_eq!(c.vector.len(), als.vector.len(), "the item part only");
    // c = C·δ/|δ| + N(0, σ²) per coordinate, σ = zC = 0.1. Along δ/|δ| the noise is
    // one N(0, σ²) draw: the projection is within 6σ of C (false failure 2e-9; 2C or
    // more if the delta went unclipped). The residual's 99,727 coordinates are the
    // noise: their sample variance is within 6 sd of σ² (sd σ²√(2/(n−1)) ≈ 0.45 % of
    // it; false failure 2e-9), and 0 if no noise were added.
    let unit: Vec<f64> = als.vector.iter().map(|v| v / norm).collect();
    let along: f64 = c.vector.iter().zip(&unit).map(|(a, b)| a * b).sum();
    let sigma = z * clip;
    assert!((along - clip).abs() < 6.0 * sigma, "projection {along}");
    let residual: Vec<f64> = c
        .vector
        .iter()
        .zip(&unit)
        .map(|(v, u)| v - clip * u)
        .collect();
    let n = residual.len() as f64;
    let mean = residual.iter().sum::<f64>() / n;
    let var = residual.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let sd = sigma * sigma * (2.0 / (n - 1.0)).sqrt();
    assert!(
        (var - sigma * sigma).abs() < 6.0 * sd,
        "noise variance {var}, σ² {}",
        sigma * sigma
    );
}

#[test]
fn mf_distributed_dp_hands_the_als_item_delta_to_the_encoding() {
    // The vector the encoding clips and gives its noise share (UpdateEncoding::encode_ddg)
    // is exactly the ALS item step's delta, summed with unit weights.
    let plain = TaskSpec::from_toml_str(MF).unwrap();
    let als = run_mf(build(&plain, None).unwrap().as_ref(), &plain);
    let task = mf_task("partner", "distributed", 1.0, 1.0);
    let spec = task.privacy_spec().unwrap().unwrap();
    let c = run_mf(build(&task, Some(&spec)).unwrap().as_ref(), &task);
    assert_eq!(c.kind, ContributionKind::ClippedDelta);
    assert_eq!(c.loss, None);
    assert_eq!(c.vector, als.vector);
}
