//! Utility of record-level differential privacy on the telco churn demo:
//! final federated ROC-AUC at ε = 1, 3 and 8 per partner (δ = 1e-5) with
//! local noise, and at ε = 1 and 8 with distributed noise under secure
//! aggregation, next to the non-private federation, each run `--repeats`
//! times (DP noise differs between runs).
//!
//! Two figures per run: the ROC-AUC the federation *reports* (under `[privacy]` an estimate
//! from each partner's noised 20-bin score histograms) and the *exact* ROC-AUC of the final
//! model on the pooled held-out rows of all partners (recomputed here from the demo's state and
//! data, at the full 1,000-bin resolution). The goals are judged on the exact figure: they are
//! about the model's utility, not the accuracy of the private estimate.
//!
//! ```text
//! cargo bench --bench dp_utility -- [--repeats 3]
//! ```

use std::path::Path;
use std::process::Command;

use consortia_client::local::LocalData;
use consortia_coordinator::store::Store;
use consortia_model::{EvalPartial, TaskSpec};

const EXE: &str = env!("CARGO_BIN_EXE_consortia");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The final ROC-AUC the demo reports, and the exact one of its final model.
fn final_auc(task: &str) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = Command::new(EXE)
        .args(["demo", "--task", &format!("{ROOT}/examples/{task}")])
        .arg("--workdir")
        .arg(&run)
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {text}");
    let reported = text
        .lines()
        .filter(|l| l.starts_with("final model"))
        .find_map(|l| l.split("ROC-AUC ").nth(1))
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .expect("final ROC-AUC in the demo output");
    (reported, exact_auc(&run))
}

/// The exact ROC-AUC of the final model stored in the demo's `run` directory on the pooled
/// held-out rows of its partners (each partner's hold-out split, as its agent makes it).
fn exact_auc(run: &Path) -> f64 {
    let store = Store::open(&run.join("state")).expect("the coordinator's state");
    let task = TaskSpec::from_toml_str(
        &store
            .task_toml()
            .expect("stored task")
            .expect("a stored task"),
    )
    .expect("task");
    let last = store.last_round().expect("last round");
    let params = store.model(last).expect("model").expect("final model");
    let model = consortia_model::model_with_params(&task, &params).expect("final model");
    let st = store
        .standardizer()
        .expect("standardisation")
        .expect("standardisation stored");
    let mut pooled = EvalPartial::empty();
    let mut files: Vec<_> = std::fs::read_dir(run.join("data"))
        .expect("the demo's partner data")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    for file in files {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut data = LocalData::load(&file, &task, &name).expect("partner data");
        let partial = data
            .evaluate(model.as_ref(), &st.mean, &st.std)
            .expect("exact evaluation");
        pooled
            .merge(partial.as_binary().expect("a classifier's evaluation"))
            .expect("merge");
    }
    pooled.roc_auc().expect("both classes held out")
}

fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    (mean, min, max)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repeats: usize = args
        .iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let runs = [
        ("non-private", "telco_churn_task.toml", None),
        ("ε = 8", "telco_churn_dp_eps8.toml", Some(0.02)),
        ("ε = 3", "telco_churn_dp_eps3.toml", None),
        ("ε = 1", "telco_churn_dp_eps1.toml", Some(0.05)),
        (
            "ε = 8, distributed + secure aggregation",
            "telco_churn_ddg_eps8.toml",
            Some(0.02),
        ),
        (
            "ε = 1, distributed + secure aggregation",
            "telco_churn_ddg_eps1.toml",
            Some(0.05),
        ),
    ];
    println!(
        "final federated ROC-AUC, telco churn demo, 3 partners (20 rounds; 60 one-step rounds when distributed), {repeats} runs each"
    );
    println!(
        "{:<40} {:>8} {:>8} {:>8} {:>14} {:>9} {:>9} {:>9}",
        "privacy", "exact", "min", "max", "mean - non-DP", "reported", "min", "max"
    );
    let mut baseline = f64::NAN;
    for (label, task, goal) in runs {
        let (reported, exact): (Vec<f64>, Vec<f64>) = (0..repeats).map(|_| final_auc(task)).unzip();
        let (mean, min, max) = stats(&exact);
        let (r_mean, r_min, r_max) = stats(&reported);
        if baseline.is_nan() {
            baseline = mean;
        }
        let gap = mean - baseline;
        let verdict = match goal {
            Some(g) if -gap <= g => format!("  (goal: within {g}: met)"),
            Some(g) => format!("  (goal: within {g}: NOT met)"),
            None => String::new(),
        };
        println!(
            "{label:<40} {mean:>8.4} {min:>8.4} {max:>8.4} {gap:>+14.4} {r_mean:>9.4} {r_min:>9.4} {r_max:>9.4}{verdict}"
        );
    }
}
