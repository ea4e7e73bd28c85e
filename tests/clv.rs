//! The customer-lifetime-value scenario (`consortia demo --scenario clv`) as real
//! processes: a coordinator and three agents over mutual TLS on loopback, the CDNOW
//! cohort split by `cohort_month`, the Tweedie GLM of `examples/clv_glm.toml`.
//!
//! The bar: after the task's 20 rounds, the federated model, evaluated exactly on the
//! pooled held-out rows of the three partners, is within 0.01 normalised Gini and 3 %
//! RMSE of a centralised GLM trained in-process on the pooled training rows of the same
//! split (same learning rate, batch size and l2, [`CENTRAL_EPOCHS`] passes) and scored on
//! the same rows.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use consortia_model::{
    Dataset, Evaluation, Model, RegressionMetrics, RegressionPartial, Standardizer, TrainConfig,
    sgd,
};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

/// Passes of the centralised GLM over the pooled training rows. In-process measurements on
/// ten holdout splits: its held-out RMSE and Gini no longer move between 1,000 and 3,000
/// passes (RMSE within 0.2 %), while 200 passes are still up to 2 % away.
const CENTRAL_EPOCHS: u32 = 1000;

/// The model's exact evaluation on the union of `rows`, merged from per-set partials as the
/// coordinator merges partners'.
fn pooled(model: &dyn Model, st: &Standardizer, rows: &[&Dataset]) -> RegressionPartial {
    let mut total = RegressionPartial::empty();
    for d in rows {
        let x = st.apply(d).expect("standardise");
        match model.evaluate(&x, d.labels()).expect("evaluate") {
            Evaluation::Regression(p) => total.merge(&p).expect("merge"),
            other => panic!("a GLM evaluates as regression, not {}", other.kind()),
        }
    }
    total
}

fn show(what: &str, m: &RegressionMetrics) -> String {
    format!(
        "{what:<34} rows {:>5}  RMSE {:>7.2}  MAE {:>6.2}  R² {:.4}  deviance {:.3}  Gini {:.4}  top-20 % {:.4}",
        m.examples, m.rmse, m.mae, m.r2, m.deviance, m.gini, m.top20_capture
    )
}

#[test]
fn federated_glm_is_within_the_bar_of_the_centralised_glm_on_the_same_rows() {
    let mut fed = Federation::with_data(CLV_TASK, Path::new(CLV_DATA), "cohort_month");
    let names: Vec<&str> = fed.partners.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["1997-01", "1997-02", "1997-03"]);
    // The partners admit a GLM (the permissive policy's default list has only logistic
    // regression).
    std::fs::write(
        fed.path("policy.toml"),
        format!("{PERMISSIVE_POLICY}allowed_models = [\"glm\"]\n"),
    )
    .expect("policy");

    let started = Instant::now();
    fed.run_to_completion(Duration::from_secs(600));
    let federation_secs = started.elapsed().as_secs_f64();
    let out = fed.read(&fed.coordinator_out(1));
    assert!(
        out.contains("normalised Gini"),
        "the coordinator prints the final regression metrics\n{out}"
    );

    // The federated model on every partner's held-out rows, split by each agent itself.
    let federated_partial = exact_final_regression(&fed);
    let federated = RegressionMetrics::from_partial(&federated_partial);
    let (task, model, stored) = final_model(&fed);
    assert_eq!(task.rounds, 20);

    // The same split, made here: the federated model scores exactly as it did on the
    // agents' held-out rows, so these are the same rows.
    let mut trains = Vec::new();
    let mut tests = Vec::new();
    for (_, path) in &fed.partners {
        let data = Dataset::load_task_csv(path, &task).expect("partner rows");
        let (train, test) = data.split_holdout(task.holdout_fraction, task.seed);
        trains.push(train);
        tests.push(test);
    }
    let tests: Vec<&Dataset> = tests.iter().collect();
    let fed_std = Standardizer::from_parts(stored.mean, stored.std).expect("standardisation");
    assert_eq!(pooled(model.as_ref(), &fed_std, &tests), federated_partial);

    // Centralised: the pooled training rows in one place, standardised on themselves.
    let trains: Vec<&Dataset> = trains.iter().collect();
    let pooled_train = Dataset::concat(&trains).expect("pool");
    let central_std = Standardizer::from_stats(&pooled_train.feature_stats()).expect("std");
    let x = central_std.apply(&pooled_train).expect("standardise");
    let mut central = consortia_model::initial_model(&task).expect("model");
    let cfg = TrainConfig {
        epochs: CENTRAL_EPOCHS,
        ..task.train_config()
    };
    let started = Instant::now();
    sgd::train(
        central.as_mut(),
        &x,
        pooled_train.labels(),
        &cfg,
        None,
        &mut ChaCha8Rng::seed_from_u64(task.seed),
        &mut |_| {},
    )
    .expect("central training");
    let central_secs = started.elapsed().as_secs_f64();
    let central = RegressionMetrics::from_partial(&pooled(central.as_ref(), &central_std, &tests));

    println!("{}", show("federated, 20 rounds", &federated));
    println!(
        "{}",
        show(&format!("centralised, {CENTRAL_EPOCHS} epochs"), &central)
    );
    println!(
        "federation {federation_secs:.1} s (processes, PKI and all), centralised training {central_secs:.1} s"
    );

    assert_eq!(federated.examples, 4714, "20 % of each partner's rows");
    assert_eq!(central.examples, federated.examples);
    assert!(
        federated.gini > 0.65,
        "the federated model ranks customers: {federated:?}"
    );
    let gini_gap = (federated.gini - central.gini).abs();
    assert!(
        gini_gap <= 0.01,
        "normalised Gini {:.4} vs centralised {:.4}: gap {gini_gap:.4} > 0.01",
        federated.gini,
        central.gini
    );
    let rmse_gap = (federated.rmse / central.rmse - 1.0).abs();
    assert!(
        rmse_gap <= 0.03,
        "RMSE {:.2} vs centralised {:.2}: {:.1} % apart, more than 3 %",
        federated.rmse,
        central.rmse,
        rmse_gap * 100.0
    );
}

/// `consortia demo --scenario clv` splits the bundled CDNOW rows by first-purchase month,
/// writes a real deployment's files and prints the regression metrics of every round; a
/// churn model choice is refused for it.
#[test]
fn the_clv_demo_runs_the_scenario_end_to_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("demo");
    let out = std::process::Command::new(EXE)
        .args(["demo", "--scenario", "clv", "--rounds", "2", "--workdir"])
        .arg(&work)
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for (partner, rows) in [("1997-01", 7846), ("1997-02", 8476), ("1997-03", 7248)] {
        assert!(
            stdout.contains(&format!("partner {partner:<16} {rows:>5} rows")),
            "{stdout}"
        );
        assert!(work.join(format!("agent-{partner}.toml")).is_file());
    }
    for needle in ["RMSE", "normalised Gini", "task complete after 2 rounds"] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }
    let task = consortia_model::TaskSpec::load(work.join("task.toml")).expect("task.toml");
    assert_eq!(task.name, "cdnow-clv");
    assert_eq!(task.rounds, 2);
    assert!(work.join("coordinator.toml").is_file());

    let out = std::process::Command::new(EXE)
        .args(["demo", "--scenario", "clv", "--model", "mlp", "--workdir"])
        .arg(dir.path().join("refused"))
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--model chooses the churn scenario's model"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("refused").exists(),
        "refused before creating anything"
    );
}

/// A partner's bad rows are refused before training, naming the file, row and column: a
/// target that is not a number (or is negative, outside Tweedie's support), and a `log1p`
/// feature at or below −1.
#[test]
fn a_partners_bad_cells_are_refused_naming_file_row_and_column() {
    let task = consortia_model::TaskSpec::from_toml_str(CLV_TASK).expect("task");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("partner.csv");
    let header = "customer_id,frequency_cal,recency_days_cal,T_days_cal,n_cds_cal,spend_cal,avg_order_value_cal,first_order_value,spend_holdout";
    let good = "1,2,90,271,6,61.06,20.35,20.76,95.4";
    let file = path.display().to_string();
    for (bad_row, column, says) in [
        (
            "2,0,0,272,1,11.77,11.77,11.77,n/a",
            "spend_holdout",
            "a finite number",
        ),
        (
            "2,0,0,272,1,11.77,11.77,11.77,-4",
            "spend_holdout",
            "at least 0",
        ),
        ("2,0,0,272,1,-5,11.77,11.77,0", "spend_cal", "ln(1 + x)"),
    ] {
        std::fs::write(&path, format!("{header}\n{good}\n{good}\n{bad_row}\n")).unwrap();
        let err = match consortia_client::local::LocalData::load(&path, &task, "1997-01") {
            Ok(_) => panic!("{bad_row} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("{file}:4: row 3, column `{column}`")) && err.contains(says),
            "{err}"
        );
    }
}

/// Under `[privacy]` (record unit, the default σ_e = 10) the CLV GLM's final model is
/// evaluated privately: every partner releases noised sums of its rows clipped to the
/// task's `evaluation_bounds` (RMSE, MAE and R² from them; deviance, Gini and capture not
/// released), and the release is charged in each partner's own ledger and in the
/// coordinator's, as a classifier's is. Two rounds of DP-SGD keep it short.
#[test]
fn a_private_clv_task_reports_a_noised_evaluation_charged_in_both_ledgers() {
    let mut task = consortia_model::TaskSpec::from_toml_str(CLV_TASK).expect("task");
    task.rounds = 2;
    task.privacy = Some(
        toml::from_str(
            "unit = \"record\"\nepsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\n\
             noise_multiplier = 1.0\nsampling_rate = 0.02\nsteps_per_round = 2\n\
             evaluation_bounds = [0.0, 1000.0]\n",
        )
        .expect("privacy table"),
    );
    let text = task.to_toml_string().expect("task");
    let mut fed = Federation::with_data(&text, Path::new(CLV_DATA), "cohort_month");
    std::fs::write(
        fed.path("policy.toml"),
        format!("{PERMISSIVE_POLICY}allowed_models = [\"glm\"]\n"),
    )
    .expect("policy");
    fed.run_to_completion(Duration::from_secs(600));
    let out = fed.read(&fed.coordinator_out(1));
    assert!(
        out.contains("final model (round 2)") && out.contains("noised sums over rows clipped"),
        "{out}\n{}",
        fed.logs()
    );
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).expect("store");
    let records = store.all_metrics().expect("metrics");
    assert_eq!(records.len(), 1, "the final model only");
    let consortia_model::TaskMetrics::Regression(m) = records[0].metrics else {
        panic!("regression metrics: {:?}", records[0].metrics)
    };
    drop(store);
    // 4,714 held-out rows; each partner's count carries noise of standard deviation
    // √5·σ_e ≈ 22, so the sum of three ≈ 39: 300 is more than 7 of them.
    assert!(m.examples.abs_diff(4714) < 300, "{m:?}");
    assert!(m.rmse.is_finite() && m.mae.is_finite(), "{m:?}");
    assert!(m.deviance.is_nan() && m.gini.is_nan() && m.top20_capture.is_nan());

    // The final evaluation, asked in round 3, charged once in every ledger.
    for (name, e) in common::assert_one_private_evaluation(&fed, 3) {
        assert_eq!(
            e.record.charged.as_ref().unwrap().events,
            vec![consortia_ledger::entry::StoredEvent::Zcdp {
                rho: 0.005,
                count: 1
            }],
            "{name}'s charge"
        );
    }
}
