//! Utility of record-level differential privacy on the telco churn demo:
//! final federated ROC-AUC at ε = 1, 3 and 8 per partner (δ = 1e-5) with
//! local noise, and at ε = 1 and 8 with distributed noise under secure
//! aggregation, next to the non-private federation, each run `--repeats`
//! times (DP noise differs between runs).
//!
//! ```text
//! cargo bench --bench dp_utility -- [--repeats 3]
//! ```

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_consortia");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn final_auc(task: &str) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(EXE)
        .args(["demo", "--task", &format!("{ROOT}/examples/{task}")])
        .arg("--workdir")
        .arg(dir.path().join("run"))
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {text}");
    text.lines()
        .filter(|l| l.starts_with("final model"))
        .find_map(|l| l.split("ROC-AUC ").nth(1))
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .expect("final ROC-AUC in the demo output")
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
        "{:<40} {:>8} {:>8} {:>8} {:>14}",
        "privacy", "mean", "min", "max", "mean - non-DP"
    );
    let mut baseline = f64::NAN;
    for (label, task, goal) in runs {
        let aucs: Vec<f64> = (0..repeats).map(|_| final_auc(task)).collect();
        let mean = aucs.iter().sum::<f64>() / aucs.len() as f64;
        let min = aucs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = aucs.iter().copied().fold(0.0, f64::max);
        if baseline.is_nan() {
            baseline = mean;
        }
        let gap = mean - baseline;
        let verdict = match goal {
            Some(g) if -gap <= g => format!("  (goal: within {g}: met)"),
            Some(g) => format!("  (goal: within {g}: NOT met)"),
            None => String::new(),
        };
        println!("{label:<40} {mean:>8.4} {min:>8.4} {max:>8.4} {gap:>+14.4}{verdict}");
    }
}
