//! Time of each bundled demo scenario, plain and with secure aggregation: the churn
//! logistic regression (`examples/telco_churn_task.toml`), the churn MLP
//! (`examples/telco_churn_mlp.toml`), the CLV Tweedie GLM (`examples/clv_glm.toml`) and
//! the MovieLens matrix factorisation (`examples/recommend_mf.toml`), each with its 3
//! partners and 20 rounds, real local training, every party a separate process over
//! mutual TLS on loopback (`consortia demo`, this build's binary: release under
//! `cargo bench`).
//!
//! The secure run is the same task file with `secure_aggregation = true` (key ceremony,
//! encrypted updates, joint decryption of each round's sum); the `threshold` mode adds
//! `key_threshold = 2` (a 2-of-3 key: the threshold dealing after the key ceremony, and
//! each round decrypted with replicated-sharing shares). The modes' runs alternate,
//! `--repeats` times per scenario, so that all see the same machine.
//!
//! For each run: `wall`, the whole `consortia demo` command (splitting the data, the PKI,
//! starting the processes, the federation, the agents' exit); `federation`, what the demo
//! prints as "federation finished in" (coordinator start to task complete: standardisation,
//! key ceremony when secure, the rounds and the final evaluation), the figure the
//! 30 s goal is judged on; and `round`, the mean gap between the completion times of
//! consecutive rounds as the coordinator stored them (rounds 2 to 20, so setup is left
//! out). The last column is the secure runs' mean round over the plain runs', and the
//! median over the alternating pairs of the secure run's mean round over the plain one's.
//!
//! ```text
//! cargo bench --bench scenarios -- [--repeats 2] [--scenario churn,churn-mlp,clv,recommend]
//!     [--modes plain,secure,threshold]   (default plain,secure)
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use consortia_coordinator::store::Store;

const EXE: &str = env!("CARGO_BIN_EXE_consortia");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A bundled scenario: its name, the `consortia demo` arguments that pick its partners,
/// and its task file under examples/.
const SCENARIOS: [(&str, &[&str], &str); 4] = [
    ("churn", &[], "telco_churn_task.toml"),
    ("churn-mlp", &[], "telco_churn_mlp.toml"),
    ("clv", &["--scenario", "clv"], "clv_glm.toml"),
    (
        "recommend",
        &["--scenario", "recommend"],
        "recommend_mf.toml",
    ),
];

/// The times of one demo run, in seconds.
#[derive(Clone, Copy)]
struct Times {
    wall: f64,
    federation: f64,
    round: f64,
}

/// Runs the demo on `task` (a task file's text) and reads its times.
fn run(demo_args: &[&str], task: &str) -> Times {
    let dir = tempfile::tempdir().expect("temp dir");
    let task_path = dir.path().join("task.toml");
    std::fs::write(&task_path, task).expect("write the task");
    let workdir = dir.path().join("run");
    let started = Instant::now();
    let out = Command::new(EXE)
        .arg("demo")
        .args(demo_args)
        .arg("--task")
        .arg(&task_path)
        .arg("--workdir")
        .arg(&workdir)
        .output()
        .expect("run the demo");
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let federation = text
        .lines()
        .find_map(|l| l.strip_prefix("federation finished in "))
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("\"federation finished in\" in the demo output: {text}"));
    Times {
        wall,
        federation,
        round: mean_round(&workdir.join("state")),
    }
}

/// Mean gap between the completion times of consecutive rounds, in seconds.
fn mean_round(state: &Path) -> f64 {
    let store = Store::open(state).expect("the coordinator's state");
    let done: Vec<u64> = store
        .rounds()
        .expect("rounds")
        .iter()
        .map(|r| r.completed_unix_ms)
        .collect();
    assert_eq!(done.len(), 20, "20 rounds stored");
    (done[done.len() - 1] - done[0]) as f64 / 1000.0 / (done.len() - 1) as f64
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
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
        .unwrap_or(2);
    let chosen: Vec<&str> = arg(&args, "--scenario")
        .map(|s| s.split(',').collect())
        .unwrap_or_else(|| SCENARIOS.iter().map(|s| s.0).collect());
    for name in &chosen {
        assert!(
            SCENARIOS.iter().any(|s| s.0 == *name),
            "unknown scenario {name} (churn, churn-mlp, clv, recommend)"
        );
    }
    let modes: Vec<&str> = arg(&args, "--modes")
        .map(|s| s.split(',').collect())
        .unwrap_or_else(|| vec!["plain", "secure"]);
    for m in &modes {
        assert!(
            ["plain", "secure", "threshold"].contains(m),
            "unknown mode {m} (plain, secure, threshold)"
        );
    }
    assert_eq!(
        modes.first(),
        Some(&"plain"),
        "--modes starts with plain (the ratios' base)"
    );
    println!(
        "bundled scenarios, 3 partners, 20 rounds, {repeats} runs per mode ({} alternating); load average {}",
        modes.join(", "),
        loadavg()
    );
    println!(
        "{:<10} {:<9} {:>8} {:>11} {:>10}   {:<34} round / plain round",
        "scenario", "mode", "wall s", "federation", "round ms", "runs (wall/federation/round ms)"
    );
    for (name, demo_args, file) in SCENARIOS.iter().filter(|s| chosen.contains(&s.0)) {
        let plain = std::fs::read_to_string(format!("{ROOT}/examples/{file}")).expect("task file");
        let secure = plain.replace("secure_aggregation = false", "secure_aggregation = true");
        assert_ne!(plain, secure, "{file} sets secure_aggregation = false");
        assert!(plain.contains("rounds = 20\n"), "{file} runs 20 rounds");
        let threshold = secure.replace(
            "secure_aggregation = true",
            "secure_aggregation = true\nkey_threshold = 2",
        );
        let task = |mode: &str| match mode {
            "plain" => &plain,
            "secure" => &secure,
            _ => &threshold,
        };
        let mut runs: Vec<Vec<Times>> = vec![Vec::new(); modes.len()];
        for _ in 0..repeats {
            for (m, mode) in modes.iter().enumerate() {
                runs[m].push(run(demo_args, task(mode)));
            }
        }
        let plain_round = mean(runs[0].iter().map(|t| t.round));
        for (mode, times) in modes.iter().zip(&runs) {
            let each: Vec<String> = times
                .iter()
                .map(|t| format!("{:.1}/{:.1}/{:.0}", t.wall, t.federation, t.round * 1000.0))
                .collect();
            let round = mean(times.iter().map(|t| t.round));
            let ratio = if *mode != "plain" {
                // Also the median of each alternating pair's ratio, less sensitive to a
                // burst of load on the shared machine.
                let mut pairs: Vec<f64> = times
                    .iter()
                    .zip(&runs[0])
                    .map(|(s, p)| s.round / p.round)
                    .collect();
                pairs.sort_by(f64::total_cmp);
                let median = if pairs.len() % 2 == 1 {
                    pairs[pairs.len() / 2]
                } else {
                    (pairs[pairs.len() / 2 - 1] + pairs[pairs.len() / 2]) / 2.0
                };
                format!("{:.2}x (pairs' median {median:.2}x)", round / plain_round)
            } else {
                String::new()
            };
            println!(
                "{name:<10} {mode:<9} {:>8.2} {:>11.2} {:>10.1}   {:<34} {ratio}",
                mean(times.iter().map(|t| t.wall)),
                mean(times.iter().map(|t| t.federation)),
                round * 1000.0,
                each.join(", "),
            );
        }
    }
    println!("load average at the end {}", loadavg());
}
