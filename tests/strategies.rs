//! Server strategies end to end: every strategy trains a real federation in the
//! clear, under record-level DP, and under secure aggregation with distributed DP;
//! the strategy's state survives a coordinator `kill -9`.

mod common;

use std::time::Duration;

use common::{Federation, RECORD_DP, TASK, exact_final_auc};
use consortia_coordinator::store::Store;
use consortia_model::TaskSpec;

const LONG: Duration = Duration::from_secs(300);
const DDG_EPS8: &str = include_str!("../examples/telco_churn_ddg_eps8.toml");
const KINDS: [&str; 5] = ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"];

/// `base` with `rounds` rounds and the strategy `kind` at its defaults.
fn task(base: &str, rounds: u32, kind: &str) -> TaskSpec {
    let mut spec = TaskSpec::from_toml_str(base).expect("example parses");
    spec.rounds = rounds;
    spec.round_deadline_secs = 120;
    spec.strategy = toml::from_str(&format!("kind = \"{kind}\"")).expect("strategy");
    spec
}

/// The task with the tests' record-level `[privacy]` table (DP-SGD, noise added by
/// each partner).
fn with_record_dp(mut spec: TaskSpec) -> TaskSpec {
    spec.privacy = Some(toml::from_str(RECORD_DP).expect("privacy table"));
    spec
}

/// Runs a federation of the telco partners on `spec` to the end; its final model's
/// exact pooled ROC-AUC and the stored models of every round.
fn run(spec: &TaskSpec) -> (f64, Vec<Vec<f64>>, Federation) {
    let mut fed = Federation::new(&spec.to_toml_string().expect("task serialises"));
    fed.run_to_completion(LONG);
    let models = models(&fed, spec.rounds);
    (exact_final_auc(&fed), models, fed)
}

fn models(fed: &Federation, rounds: u32) -> Vec<Vec<f64>> {
    let store = Store::open(&fed.path("state")).expect("state");
    assert_eq!(
        store.last_round().unwrap(),
        u64::from(rounds),
        "every round ran"
    );
    (0..=u64::from(rounds))
        .map(|r| store.model(r).unwrap().expect("model stored"))
        .collect()
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn every_strategy_trains_in_the_clear_and_under_record_level_dp() {
    let mut finals = Vec::new();
    for kind in KINDS {
        let (auc, models, fed) = run(&task(TASK, 5, kind));
        assert!(
            auc > 0.78,
            "{kind}: ROC-AUC {auc} after 5 rounds\n{}",
            fed.logs()
        );
        finals.push((kind, models.last().cloned().unwrap()));

        let private = with_record_dp(task(TASK, 3, kind));
        let (auc, models, fed) = run(&private);
        assert!(
            auc > 0.7,
            "{kind} under DP: ROC-AUC {auc} after 3 rounds\n{}",
            fed.logs()
        );
        assert_ne!(models[0], models[3], "{kind} under DP moved the model");
    }
    // The strategies are really different update rules, not one rule five times.
    for (i, (a, ma)) in finals.iter().enumerate() {
        for (b, mb) in &finals[i + 1..] {
            assert!(
                distance(ma, mb) > 1e-3,
                "{a} and {b} ended at the same model"
            );
        }
    }
}

#[test]
fn every_strategy_works_under_secure_aggregation_with_distributed_dp() {
    for kind in KINDS {
        let spec = task(DDG_EPS8, 3, kind);
        assert!(spec.secure_aggregation, "the DDG example is a secure task");
        let (auc, models, fed) = run(&spec);
        assert!(
            auc > 0.7,
            "{kind} with secure aggregation: ROC-AUC {auc}\n{}",
            fed.logs()
        );
        assert_ne!(models[0], models[3], "{kind} moved the model");
        let log = fed.read(&fed.coordinator_log(1));
        assert!(log.contains(&format!("server strategy {kind}")), "{log}");
    }
}

/// FedAvgM's server momentum is committed with each round: a coordinator killed
/// mid-task resumes it, and ends at the model an uninterrupted run reaches. Without
/// the momentum the resumed run would take plain FedAvg steps from round 5 on, which
/// the last assertion shows is a large difference.
#[test]
fn server_momentum_survives_a_coordinator_kill() {
    let spec = task(TASK, 8, "fedavgm");
    let (_, uninterrupted, _) = run(&spec);

    let mut fed = Federation::new(&spec.to_toml_string().unwrap());
    fed.start_coordinator();
    fed.start_all_agents();
    fed.wait_log(1, "round started round=5", LONG);
    fed.kill_coordinator(); // SIGKILL, mid-task
    fed.start_coordinator();
    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "restarted coordinator\n{}", fed.logs());
    let log2 = fed.read(&fed.coordinator_log(2));
    assert!(
        log2.contains("resuming after the last completed round"),
        "{log2}"
    );
    let resumed = models(&fed, 8);
    // The same local training (seeded by task, partner and round) and the same
    // server steps: equal up to the order in which updates were summed.
    let gap = distance(&resumed[8], &uninterrupted[8]);
    assert!(
        gap < 1e-9,
        "resumed run ends {gap} away from the uninterrupted one"
    );

    let plain = task(TASK, 8, "fedavg");
    let (_, fedavg, _) = run(&plain);
    assert!(
        distance(&fedavg[8], &uninterrupted[8]) > 1e-3,
        "momentum changes the model"
    );
}
