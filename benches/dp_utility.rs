//! Utility of record-level differential privacy on the bundled demos, each run
//! `--repeats` times (DP noise differs between runs) next to the non-private federation:
//!
//! - `churn`: the telco churn logistic regression at ε = 1, 3 and 8 per partner
//!   (δ = 1e-5) with local noise, and at ε = 1 and 8 with distributed noise under secure
//!   aggregation; ROC-AUC.
//! - `churn-mlp`: the telco churn MLP (`examples/telco_churn_mlp.toml`) at ε = 8 and 3
//!   with local noise; ROC-AUC.
//! - `clv`: the CDNOW customer-lifetime-value Tweedie GLM (`examples/clv_glm.toml`) at
//!   ε = 8 and 3 with local noise; normalised Gini, RMSE and top-20 % value capture.
//!
//! Two figures per run: the metric the federation *reports* (under `[privacy]` an estimate
//! from each partner's noised histograms or sums; for the GLM its RMSE, since a private
//! regression evaluation releases no Gini) and the *exact* metric of the final model on the
//! pooled held-out rows of all partners (recomputed here from the demo's state and data; for
//! a classifier at the full 1,000-bin resolution). The goals are judged on the exact figure:
//! they are about the model's utility, not the accuracy of the private estimate.
//!
//! ```text
//! cargo bench --bench dp_utility -- [--scenario churn,churn-mlp,clv] [--repeats 3]
//! cargo bench --bench dp_utility -- --scenario clv --task FILE [--repeats 3]
//! ```
//!
//! `--scenario` takes a comma-separated list; without it the bench runs `churn` only.
//! `--task FILE` runs that task file (on the one scenario's partners) instead of the
//! scenario's private examples, next to its non-private one: a way to try other privacy
//! settings.

use std::path::Path;
use std::process::Command;

use consortia_client::local::LocalData;
use consortia_coordinator::store::Store;
use consortia_model::TaskSpec;
use consortia_model::evaluation::{Evaluation, TaskMetrics};

const EXE: &str = env!("CARGO_BIN_EXE_consortia");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The figures of one run: the headline metric the demo reports and, for the final model
/// on the pooled held-out rows, the exact headline metric and (for a regression) its RMSE
/// and top-20 % capture.
struct Run {
    reported: f64,
    exact: f64,
    rmse: f64,
    top20: f64,
}

/// A bundled scenario: the `consortia demo` arguments that pick its partners, the
/// headline metric (as the demo's final line names it) and its task files.
struct Scenario {
    name: &'static str,
    demo_args: &'static [&'static str],
    metric: &'static str,
    /// The figure read from the demo's final line for the `reported` column (a private
    /// regression releases its RMSE, not its Gini).
    reported: &'static str,
    regression: bool,
    /// (label, task file under examples/, goal: the largest drop of the exact metric
    /// below the non-private run's); the first is the non-private baseline.
    runs: Vec<(&'static str, String, Option<f64>)>,
}

fn scenarios() -> Vec<Scenario> {
    let ex = |f: &str| format!("{ROOT}/examples/{f}");
    vec![
        Scenario {
            name: "churn",
            demo_args: &[],
            metric: "ROC-AUC",
            reported: "ROC-AUC",
            regression: false,
            runs: vec![
                ("non-private", ex("telco_churn_task.toml"), None),
                ("ε = 8", ex("telco_churn_dp_eps8.toml"), Some(0.02)),
                ("ε = 3", ex("telco_churn_dp_eps3.toml"), None),
                ("ε = 1", ex("telco_churn_dp_eps1.toml"), Some(0.05)),
                (
                    "ε = 8, distributed + secure aggregation",
                    ex("telco_churn_ddg_eps8.toml"),
                    Some(0.02),
                ),
                (
                    "ε = 1, distributed + secure aggregation",
                    ex("telco_churn_ddg_eps1.toml"),
                    Some(0.05),
                ),
            ],
        },
        Scenario {
            name: "churn-mlp",
            demo_args: &[],
            metric: "ROC-AUC",
            reported: "ROC-AUC",
            regression: false,
            runs: vec![
                ("non-private", ex("telco_churn_mlp.toml"), None),
                ("ε = 8", ex("telco_churn_mlp_dp_eps8.toml"), Some(0.02)),
                ("ε = 3", ex("telco_churn_mlp_dp_eps3.toml"), Some(0.02)),
            ],
        },
        Scenario {
            name: "clv",
            demo_args: &["--scenario", "clv"],
            metric: "normalised Gini",
            reported: "RMSE",
            regression: true,
            runs: vec![
                ("non-private", ex("clv_glm.toml"), None),
                ("ε = 8", ex("clv_glm_dp_eps8.toml"), Some(0.03)),
                ("ε = 3", ex("clv_glm_dp_eps3.toml"), Some(0.03)),
            ],
        },
    ]
}

/// Runs the demo on `task` and reads its figures.
fn run(scenario: &Scenario, task: &str) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let workdir = dir.path().join("run");
    let out = Command::new(EXE)
        .arg("demo")
        .args(scenario.demo_args)
        .args(["--task", task])
        .arg("--workdir")
        .arg(&workdir)
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {text}");
    let reported = text
        .lines()
        .filter(|l| l.starts_with("final model"))
        .find_map(|l| l.split(&format!("{} ", scenario.reported)).nth(1))
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let pooled = exact_evaluation(&workdir);
    match (&pooled, pooled.metrics()) {
        (Evaluation::Binary(p), _) => Run {
            reported,
            exact: p.roc_auc().expect("both classes held out"),
            rmse: f64::NAN,
            top20: f64::NAN,
        },
        (_, TaskMetrics::Regression(m)) => Run {
            reported,
            exact: m.gini,
            rmse: m.rmse,
            top20: m.top20_capture,
        },
        _ => panic!("no bundled private scenario evaluates a {}", pooled.kind()),
    }
}

/// The exact evaluation of the final model stored in the demo's `run` directory on the
/// pooled held-out rows of its partners (each partner's hold-out split, as its agent
/// makes it).
fn exact_evaluation(run: &Path) -> Evaluation {
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
    let mut files: Vec<_> = std::fs::read_dir(run.join("data"))
        .expect("the demo's partner data")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let mut pooled: Option<Evaluation> = None;
    for file in files {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut data = LocalData::load(&file, &task, &name).expect("partner data");
        let partial = data
            .evaluate(model.as_ref(), &st.mean, &st.std)
            .expect("exact evaluation");
        match &mut pooled {
            Some(p) => p.merge(&partial).expect("merge"),
            None => pooled = Some(partial),
        }
    }
    pooled.expect("partner data in the demo's work directory")
}

/// Mean, min and max of the figures that are numbers (NaN for all three when none is).
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let values: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, min, max)
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repeats: usize = arg(&args, "--repeats")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let chosen: Vec<&str> = arg(&args, "--scenario")
        .unwrap_or("churn")
        .split(',')
        .collect();
    let task = arg(&args, "--task");
    assert!(
        task.is_none() || chosen.len() == 1,
        "--task runs on one --scenario's partners"
    );
    let mut all = scenarios();
    for name in &chosen {
        assert!(
            all.iter().any(|s| s.name == *name),
            "unknown scenario {name} (churn, churn-mlp, clv)"
        );
    }
    all.retain(|s| chosen.contains(&s.name));
    for mut scenario in all {
        if let Some(t) = task {
            scenario.runs.truncate(1);
            scenario.runs.push(("--task", t.to_string(), None));
        }
        report(&scenario, repeats);
    }
}

/// Runs every task of `scenario` `repeats` times and prints one line per task.
fn report(scenario: &Scenario, repeats: usize) {
    println!(
        "\n{}: final federated {} (exact, on the pooled held-out rows), and the {} the federation reports; 3 partners, {repeats} runs each",
        scenario.name, scenario.metric, scenario.reported
    );
    print!(
        "{:<40} {:>8} {:>8} {:>8} {:>14} {:>9} {:>9} {:>9}",
        "privacy", "exact", "min", "max", "mean - non-DP", "reported", "min", "max"
    );
    if scenario.regression {
        print!(" {:>9} {:>9}", "RMSE", "top-20%");
    }
    println!();
    let mut baseline = f64::NAN;
    for (label, task, goal) in &scenario.runs {
        let runs: Vec<Run> = (0..repeats).map(|_| run(scenario, task)).collect();
        let exact: Vec<f64> = runs.iter().map(|r| r.exact).collect();
        let reported: Vec<f64> = runs.iter().map(|r| r.reported).collect();
        let (mean, min, max) = stats(&exact);
        let (r_mean, r_min, r_max) = stats(&reported);
        if baseline.is_nan() {
            baseline = mean;
        }
        let gap = mean - baseline;
        print!(
            "{label:<40} {mean:>8.4} {min:>8.4} {max:>8.4} {gap:>+14.4} {r_mean:>9.4} {r_min:>9.4} {r_max:>9.4}"
        );
        if scenario.regression {
            let rmse = stats(&runs.iter().map(|r| r.rmse).collect::<Vec<_>>()).0;
            let top20 = stats(&runs.iter().map(|r| r.top20).collect::<Vec<_>>()).0;
            print!(" {rmse:>9.3} {top20:>9.4}");
        }
        match goal {
            Some(g) if -gap <= *g => println!("  (goal: within {g}: met)"),
            Some(g) => println!("  (goal: within {g}: NOT met)"),
            None => println!(),
        }
        if repeats > 1 && scenario.regression {
            let each: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.4}/{:.3}/{:.4}", r.exact, r.rmse, r.top20))
                .collect();
            println!("{:<40} runs (Gini/RMSE/top-20%): {}", "", each.join(", "));
        } else if repeats > 1 {
            let each: Vec<String> = exact.iter().map(|v| format!("{v:.4}")).collect();
            println!("{:<40} runs: {}", "", each.join(", "));
        }
    }
}
