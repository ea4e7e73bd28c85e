//! Differential privacy in a running federation: plans refused at task
//! creation, budgets enforced by the coordinator and by each partner, and
//! signed ledgers that verify and reconcile.

mod common;

use std::time::Duration;

use common::{Federation, TASK};
use consortia_ledger::Verifier;
use consortia_ledger::audit::{compare, verify};

const LONG: Duration = Duration::from_secs(240);

/// The bundled task with a `[privacy]` table appended.
fn dp_task(rounds: u32, min_partners: u32, noise: f64, extra: &str) -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(TASK).unwrap();
    spec.rounds = rounds;
    spec.min_partners = min_partners;
    spec.round_deadline_secs = 120;
    format!(
        "{}\n[privacy]\nunit = \"record\"\nepsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = {noise}\nsampling_rate = 0.02\nsteps_per_round = 50\n{extra}",
        spec.to_toml_string().unwrap()
    )
}

#[test]
fn a_task_with_too_little_noise_for_its_rounds_is_refused_at_creation() {
    let mut fed = Federation::new(&dp_task(20, 3, 0.5, ""));
    let child = fed.coordinator_command("127.0.0.1:0").output().unwrap();
    assert!(!child.status.success());
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(err.contains("planned 20 rounds would spend"), "{err}");
    assert!(err.contains("budget is epsilon = 8"), "{err}");
    // Nothing was stored: the same state directory takes a corrected task.
    std::fs::write(fed.path("task.toml"), dp_task(3, 3, 1.0, "")).unwrap();
    fed.start_coordinator();
    fed.start_all_agents();
    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "{}", fed.logs());
}

#[test]
fn budgets_are_enforced_by_the_coordinator_and_by_each_partner_and_ledgers_agree() {
    // one-year gets a small budget from the task (the coordinator leaves it out
    // once a round would exceed it); two-year sets a small budget of its own
    // (its agent declines). With min_partners = 2 the task then stops.
    // z = 0.7689: the feature statistics, the 20 rounds and the final evaluation just fit
    // the task's ε 8.
    let task = dp_task(
        20,
        2,
        0.7689,
        "\n[privacy.partner_epsilon]\none-year = 5.0\n",
    );
    let mut fed = Federation::new(&task);
    fed.start_coordinator();
    let names: Vec<String> = fed.partners.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, ["month-to-month", "one-year", "two-year"]);
    fed.start_agent(0, None);
    // month-to-month, whose ledger is reconciled below, connects before the
    // feature statistics are requested (at the second connection). A partner
    // that connects after that request is not asked for statistics, so the
    // coordinator charges its first round without its row count, and the two
    // ledgers would disagree on `dataset_size`.
    fed.wait_log(1, "partner connected partner=month-to-month", LONG);
    fed.start_agent(1, None);
    fed.start_agent_with(
        2,
        None,
        &["--budget-epsilon", "4.0", "--budget-delta", "1e-5"],
    );
    let status = fed.wait_coordinator(LONG);
    assert!(
        !status.success(),
        "the task should have stopped\n{}",
        fed.logs()
    );
    let log = fed.read(&fed.coordinator_log(1));
    assert!(log.contains("can still afford round"), "{log}");
    assert!(log.contains("one-year"), "{log}");
    assert!(log.contains("two-year declined"), "{log}");
    let out = fed.read(&fed.path("logs/two-year.out"));
    assert!(out.contains("declined: our privacy budget"), "{out}");
    for name in &names {
        fed.kill_agent(name);
    }

    // The coordinator's ledger verifies against its certificate and never
    // shows a partner past its budget.
    let coordinator = Verifier::from_cert_pem_file(fed.pki.coordinator_cert_path()).unwrap();
    let entries = consortia_ledger::load_entries(fed.path("state/privacy-ledger.json")).unwrap();
    assert!(!entries.is_empty());
    let report = verify(&entries, &coordinator);
    assert!(report.is_valid(), "{report:?}");
    let mut one_year_rounds = 0;
    for e in &entries {
        if let Some(eps) = e.record.epsilon_cumulative.get("one-year") {
            one_year_rounds += 1;
            assert!(
                *eps <= 5.0,
                "one-year spent ε {eps} > 5 in round {}",
                e.record.round
            );
        }
    }
    assert!(one_year_rounds >= 1);

    // two-year's own ledger, signed with its own key, stays within its own budget.
    let own = consortia_ledger::load_entries(fed.agent_state("two-year").join("ledger")).unwrap();
    let two_year = Verifier::from_cert_pem_file(fed.pki.partner_cert_path("two-year")).unwrap();
    assert!(verify(&own, &two_year).is_valid());
    assert!(!own.is_empty());
    for e in &own {
        assert!(e.record.epsilon_cumulative["two-year"] <= 4.0);
    }

    // month-to-month's own ledger reconciles with the coordinator's.
    let m2m =
        consortia_ledger::load_entries(fed.agent_state("month-to-month").join("ledger")).unwrap();
    assert!(!m2m.is_empty());
    let disagreements = compare("month-to-month", &m2m, &entries);
    assert!(disagreements.is_empty(), "{disagreements:?}");
}

/// With `evaluate_every = 2` in a 5-round task, the models of rounds 2 and 4 are evaluated
/// during training (in rounds 3 and 5) and the final model 5 at the end; no other model's
/// metrics exist. Each evaluation is charged in the coordinator's ledger and in every
/// partner's own, and the ledgers reconcile entry by entry.
#[test]
fn only_scheduled_models_are_evaluated_and_both_ledgers_charge_them() {
    let mut fed = Federation::new(&dp_task(5, 3, 1.0, "evaluate_every = 2\n"));
    fed.run_to_completion(LONG);
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).unwrap();
    let evaluated: Vec<u64> = store
        .all_metrics()
        .unwrap()
        .iter()
        .map(|m| m.model_round)
        .collect();
    assert_eq!(evaluated, [2, 4, 5], "{}", fed.logs());
    drop(store);
    let out = fed.read(&fed.coordinator_out(1));
    assert!(
        out.contains("final model (round 5)") && out.contains("differentially private estimates"),
        "{out}"
    );

    let coordinator = Verifier::from_cert_pem_file(fed.pki.coordinator_cert_path()).unwrap();
    let entries = consortia_ledger::load_entries(fed.path("state/privacy-ledger.json")).unwrap();
    assert!(verify(&entries, &coordinator).is_valid());
    let evaluation_rounds: Vec<u64> = entries
        .iter()
        .filter(|e| e.record.mechanism == "evaluation-discrete-gaussian")
        .map(|e| e.record.round)
        .collect();
    assert_eq!(evaluation_rounds, [3, 5, 6]);
    // The feature statistics are charged once, as round 0, before any round.
    let statistics: Vec<u64> = entries
        .iter()
        .filter(|e| e.record.mechanism == "statistics-gaussian")
        .map(|e| e.record.round)
        .collect();
    assert_eq!(statistics, [0]);
    assert_eq!(entries[0].record.mechanism, "statistics-gaussian");
    assert_eq!(entries.len(), 1 + 5 + 3);
    for (name, _) in &fed.partners {
        let own = consortia_ledger::load_entries(fed.agent_state(name).join("ledger")).unwrap();
        let cert = Verifier::from_cert_pem_file(fed.pki.partner_cert_path(name)).unwrap();
        assert!(verify(&own, &cert).is_valid(), "{name}'s ledger");
        assert_eq!(own.len(), 9, "{name}'s ledger");
        assert_eq!(
            own[0].record.mechanism, "statistics-gaussian",
            "{name}'s ledger"
        );
        let disagreements = compare(name, &own, &entries);
        assert!(disagreements.is_empty(), "{name}: {disagreements:?}");
    }

    // `consortia metrics` lists the evaluated rounds only.
    let shown = std::process::Command::new(common::EXE)
        .args(["metrics", "--state"])
        .arg(fed.path("state"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&shown.stdout);
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u64>().is_ok())
        .collect();
    assert_eq!(rows, ["2", "4", "5"], "{table}");
    assert!(table.contains("noise"), "{table}");
}
