//! End-to-end federations of real processes over mutual TLS on loopback.

mod common;

use std::time::Duration;

use common::{Federation, task_with};
use consortia_coordinator::store::Store;

const LONG: Duration = Duration::from_secs(240);

fn completed_rounds(fed: &Federation) -> Vec<consortia_coordinator::store::RoundRecord> {
    Store::open(&fed.path("state"))
        .expect("open coordinator state")
        .rounds()
        .expect("rounds")
}

#[test]
fn three_partners_train_a_churn_model_together() {
    let mut fed = Federation::new(&task_with(8, 3, 120));
    fed.run_to_completion(LONG);
    let rounds = completed_rounds(&fed);
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    for r in &rounds {
        assert_eq!(r.participants.len(), 3, "round {} participants", r.round);
    }
    let store = Store::open(&fed.path("state")).unwrap();
    let last = store.metrics(8).unwrap().expect("final evaluation stored");
    let metrics = *last.metrics.as_binary().expect("a classifier's metrics");
    assert_eq!(last.partners.len(), 3);
    assert!(
        metrics.roc_auc > 0.82,
        "federated ROC-AUC {} too low",
        metrics.roc_auc
    );
    // Held-out rows of all partners were scored: about 20 % of 7,043.
    assert!(
        (1300..=1500).contains(&metrics.examples),
        "{}",
        metrics.examples
    );
    let out = fed.read(&fed.coordinator_out(1));
    assert!(out.contains("final model (round 8)"), "{out}");
    // Agents leaving at the normal end of the task are not reported as broken
    // streams or malformed messages.
    let log = fed.read(&fed.coordinator_log(1));
    assert!(
        !log.contains("session stream broken") && !log.contains("malformed"),
        "{log}"
    );
}

#[test]
fn a_coordinator_killed_mid_task_resumes_from_the_last_completed_round() {
    let mut fed = Federation::new(&task_with(8, 3, 120));
    fed.start_coordinator();
    fed.start_all_agents();
    fed.wait_log(1, "round started round=4", LONG);
    fed.kill_coordinator(); // SIGKILL, mid-task
    fed.start_coordinator();
    let status = fed.wait_coordinator(LONG);
    assert!(
        status.success(),
        "restarted coordinator failed\n{}",
        fed.logs()
    );
    let log2 = fed.read(&fed.coordinator_log(2));
    let resumed: u64 = log2
        .split("last_completed=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("restart did not resume\n{log2}"));
    assert!(resumed >= 3, "resumed after round {resumed}");
    // The first round the restarted coordinator runs is the next one.
    assert!(
        log2.contains(&format!("round started round={}", resumed + 1)),
        "{log2}"
    );
    // Every round exactly once, in order, all with the full federation.
    let rounds = completed_rounds(&fed);
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    // The agents reconnected by themselves and finished.
    for (name, _) in fed.partners.clone() {
        let s = fed.wait_agent(&name, Duration::from_secs(30));
        assert!(s.success(), "agent {name} failed\n{}", fed.logs());
    }
}

#[test]
fn a_partner_killed_mid_round_does_not_stop_the_round() {
    // Minimum 2 of 3: the round completes with the two that remain.
    let mut fed = Federation::new(&task_with(6, 2, 120));
    fed.start_coordinator();
    fed.start_all_agents();
    fed.wait_log(1, "round started round=3", LONG);
    let victim = fed.partners[0].0.clone();
    fed.kill_agent(&victim);
    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    let rounds = completed_rounds(&fed);
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    // After the kill, rounds go on without the victim.
    let last = rounds.last().unwrap();
    assert_eq!(last.participants.len(), 2);
    assert!(!last.participants.contains(&victim));
    assert!(
        fed.read(&fed.coordinator_log(1))
            .contains("partner disconnected")
    );
}

#[test]
fn a_partner_whose_data_does_not_match_the_schema_is_refused_with_file_row_and_column() {
    let mut fed = Federation::new(&task_with(3, 3, 60));
    // Partner 0's file without the `tenure` column.
    let own = fed.partners[0].1.clone();
    let text = std::fs::read_to_string(&own).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let drop = header.iter().position(|h| *h == "tenure").unwrap();
    let missing: String = text
        .lines()
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let bad_header = fed.path("no_tenure.csv");
    std::fs::write(&bad_header, missing).unwrap();
    // Partner 1's file with a non-numeric value on data row 5.
    let own1 = fed.partners[1].1.clone();
    let mut lines: Vec<String> = std::fs::read_to_string(&own1)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut cells: Vec<String> = lines[5].split(',').map(str::to_string).collect();
    cells[drop] = "twelve".into();
    lines[5] = cells.join(",");
    let bad_value = fed.path("bad_value.csv");
    std::fs::write(&bad_value, lines.join("\n")).unwrap();

    fed.start_coordinator();
    let a = fed.start_agent(0, Some(&bad_header));
    let b = fed.start_agent(1, Some(&bad_value));
    for (name, file) in [(&a, "no_tenure.csv"), (&b, "bad_value.csv")] {
        let status = fed.wait_agent(name, Duration::from_secs(60));
        assert!(
            !status.success(),
            "agent {name} accepted bad data\n{}",
            fed.logs()
        );
        let err = fed.read(&fed.path(&format!("logs/{name}.err")));
        assert!(err.contains(file), "error does not name the file: {err}");
        assert!(
            err.contains("tenure"),
            "error does not name the column: {err}"
        );
    }
    let err = fed.read(&fed.path(&format!("logs/{b}.err")));
    assert!(
        err.contains("twelve") || err.contains("row 6") || err.contains("line 6"),
        "{err}"
    );
}
