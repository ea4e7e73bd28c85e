//! Reconciliation between ledgers, and the text and HTML reports.

mod common;

use common::{PARTNERS, chain, fresh_signer, record, record_v1};
use consortia_ledger::audit::{
    Disagreement, RngWarning, compare, report_html, report_table, rng_warnings,
};
use consortia_ledger::{LedgerFile, SpendRecord, StoredEvent};

fn records(n: u64) -> Vec<SpendRecord> {
    (1..=n).map(record).collect()
}

#[test]
fn identical_ledgers_agree() {
    let coordinator = chain(records(10), &fresh_signer());
    let partner = chain(records(10), &fresh_signer());
    for p in PARTNERS {
        assert_eq!(compare(p, &partner, &coordinator), vec![]);
    }
}

#[test]
fn differences_within_relative_tolerance_are_not_disagreements() {
    let coordinator = chain(records(5), &fresh_signer());
    let mut mine = records(5);
    for r in &mut mine {
        for v in r
            .epsilon_round
            .values_mut()
            .chain(r.epsilon_cumulative.values_mut())
        {
            *v *= 1.0 + 1e-12;
        }
        r.noise_multiplier *= 1.0 - 1e-12;
    }
    let partner = chain(mine, &fresh_signer());
    assert_eq!(compare("bank-a", &partner, &coordinator), vec![]);
}

#[test]
fn rounds_on_one_side_only_are_reported() {
    let coordinator = chain(records(10), &fresh_signer());
    let mut mine = records(10);
    mine.remove(3); // round 4 missing on the partner's side
    mine.push(record(11)); // round 11 only on the partner's side
    let partner = chain(mine, &fresh_signer());
    let d = compare("bank-b", &partner, &coordinator);
    assert!(d.contains(&Disagreement::OnlyInCoordinator {
        task: "churn".into(),
        round: 4
    }));
    assert!(d.contains(&Disagreement::OnlyInPartner {
        task: "churn".into(),
        round: 11
    }));
    // The partner's total now runs ahead of the coordinator's.
    assert!(d.contains(&Disagreement::FinalCumulative {
        partner_value: record(11).epsilon_cumulative["bank-b"],
        coordinator_value: record(10).epsilon_cumulative["bank-b"],
    }));
    assert_eq!(d.len(), 3, "{d:?}");
}

#[test]
fn rounds_without_the_partner_are_ignored() {
    let mut theirs = records(6);
    theirs[2].participants.retain(|p| p != "telco-c");
    theirs[2].epsilon_round.remove("telco-c");
    theirs[2].dataset_sizes.remove("telco-c");
    let coordinator = chain(theirs, &fresh_signer());
    let mut mine = records(6);
    mine.remove(2);
    let partner = chain(mine, &fresh_signer());
    assert_eq!(compare("telco-c", &partner, &coordinator), vec![]);
    // bank-a took part in round 3, and its ledger lacks it.
    assert_eq!(
        compare("bank-a", &partner, &coordinator),
        vec![Disagreement::OnlyInCoordinator {
            task: "churn".into(),
            round: 3
        }]
    );
}

#[test]
fn different_epsilon_parameters_and_totals_are_reported() {
    let coordinator = chain(records(10), &fresh_signer());
    let mut mine = records(10);
    mine[1].epsilon_round.insert("bank-a".into(), 0.9); // round 2
    mine[2].clip_norm = 2.0; // round 3
    mine[3].noise_multiplier = 0.8; // round 4
    mine[4].sampling_rate = 0.1; // round 5
    mine[5].dataset_sizes.insert("bank-a".into(), 1999); // round 6
    mine[6].epsilon_cumulative.insert("bank-a".into(), 0.01); // round 7
    mine[9].epsilon_cumulative.insert("bank-a".into(), 3.0); // round 10, the latest
    // A difference about another partner is not this partner's business.
    mine[8].epsilon_round.insert("bank-b".into(), 0.0);
    let partner = chain(mine, &fresh_signer());

    let d = compare("bank-a", &partner, &coordinator);
    let t = || "churn".to_string();
    let expected = vec![
        Disagreement::EpsilonRound {
            task: t(),
            round: 2,
            partner_value: Some(0.9),
            coordinator_value: Some(record(2).epsilon_round["bank-a"]),
        },
        Disagreement::Parameter {
            task: t(),
            round: 3,
            name: "clip_norm",
            partner_value: "2".into(),
            coordinator_value: "1".into(),
        },
        Disagreement::Parameter {
            task: t(),
            round: 4,
            name: "noise_multiplier",
            partner_value: "0.8".into(),
            coordinator_value: "1.1".into(),
        },
        Disagreement::Parameter {
            task: t(),
            round: 5,
            name: "sampling_rate",
            partner_value: "0.1".into(),
            coordinator_value: "0.05".into(),
        },
        Disagreement::Parameter {
            task: t(),
            round: 6,
            name: "dataset_size",
            partner_value: "1999".into(),
            coordinator_value: "2000".into(),
        },
        Disagreement::CumulativeAtRound {
            task: t(),
            round: 7,
            partner_value: Some(0.01),
            coordinator_value: Some(record(7).epsilon_cumulative["bank-a"]),
        },
        Disagreement::CumulativeAtRound {
            task: t(),
            round: 10,
            partner_value: Some(3.0),
            coordinator_value: Some(record(10).epsilon_cumulative["bank-a"]),
        },
        Disagreement::FinalCumulative {
            partner_value: 3.0,
            coordinator_value: record(10).epsilon_cumulative["bank-a"],
        },
    ];
    assert_eq!(d, expected);
    assert!(
        d[1].to_string()
            .contains("clip_norm 2 (partner) vs 1 (coordinator)")
    );
}

#[test]
fn mechanism_delta_and_missing_values_are_reported() {
    let coordinator = chain(records(3), &fresh_signer());
    let mut mine = records(3);
    mine[0].mechanism = "gaussian".into();
    mine[1].delta = 1e-6;
    mine[2].epsilon_round.remove("bank-a");
    let partner = chain(mine, &fresh_signer());
    let d = compare("bank-a", &partner, &coordinator);
    assert!(matches!(
        &d[0],
        Disagreement::Parameter {
            round: 1,
            name: "mechanism",
            ..
        }
    ));
    assert!(matches!(
        &d[1],
        Disagreement::Parameter {
            round: 2,
            name: "delta",
            ..
        }
    ));
    assert!(matches!(
        &d[2],
        Disagreement::EpsilonRound {
            round: 3,
            partner_value: None,
            coordinator_value: Some(_),
            ..
        }
    ));
    assert_eq!(d.len(), 3, "{d:?}");
}

#[test]
fn text_table_lists_every_round_and_partner_against_budget() {
    let mut rs = records(10);
    rs[9].epsilon_cumulative.insert("telco-c".into(), 1.6); // over its 1.5 budget
    let entries = chain(rs, &fresh_signer());
    let table = report_table(&entries);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("entry"));
    for h in [
        "round",
        "time (UTC)",
        "partner",
        "eps round",
        "eps cumulative",
        "eps budget",
    ] {
        assert!(lines[0].contains(h), "header lacks {h}: {}", lines[0]);
    }
    // 10 entries x 3 partners data rows.
    let data_rows = lines
        .iter()
        .filter(|l| l.contains("distributed-discrete-gaussian"))
        .count();
    assert_eq!(data_rows, 30);
    assert!(table.contains("2026-11-25T10:28:14.000Z"), "{table}");
    let over: Vec<&&str> = lines.iter().filter(|l| l.contains("OVER BUDGET")).collect();
    assert_eq!(over.len(), 2, "{table}"); // the round-10 row and the summary line
    assert!(over.iter().all(|l| l.contains("telco-c")));
    assert!(table.contains("telco-c: cumulative eps 1.6000 of budget 1.5000 (106.7% used)"));
    assert!(table.contains(&format!("head 9:{}", entries[9].hash_hex())));
}

#[test]
fn html_report_is_self_contained_with_one_line_per_partner() {
    let mut rs = records(10);
    // Hostile text must come out escaped.
    for r in &mut rs {
        let eps = r.epsilon_round.remove("bank-b").unwrap();
        r.epsilon_round.insert("<b>bank-b</b>".into(), eps);
        let c = r.epsilon_cumulative.remove("bank-b").unwrap();
        r.epsilon_cumulative.insert("<b>bank-b</b>".into(), c);
        let b = r.budget_epsilon.remove("bank-b").unwrap();
        r.budget_epsilon.insert("<b>bank-b</b>".into(), b);
        let n = r.dataset_sizes.remove("bank-b").unwrap();
        r.dataset_sizes.insert("<b>bank-b</b>".into(), n);
        for p in &mut r.participants {
            if p == "bank-b" {
                *p = "<b>bank-b</b>".into();
            }
        }
    }
    let entries = chain(rs, &fresh_signer());
    let html = report_html(&entries, "Churn <script>alert(1)</script> audit");

    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<svg").count(), 1);
    assert_eq!(html.matches("<polyline").count(), 3);
    assert_eq!(html.matches("<path class=\"budget\"").count(), 3);
    assert!(html.matches("stroke-dasharray").count() >= 3);
    // Each polyline has one point per entry.
    for line in html.split("<polyline").skip(1) {
        let points = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 10);
    }
    // Nothing external, nothing executable, nothing unescaped.
    for forbidden in ["src=", "href=", "url(", "@import", "://", "<script", "<b>"] {
        assert!(!html.contains(forbidden), "HTML contains {forbidden}");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&lt;b&gt;bank-b&lt;/b&gt;"));
    assert!(html.contains("<table>"));
    assert!(html.contains(&entries[9].hash_hex()));
}

#[test]
fn reports_of_an_empty_ledger_are_well_formed() {
    let table = report_table(&[]);
    assert!(table.contains("0 entries"));
    let html = report_html(&[], "empty");
    assert!(html.contains("<svg"));
    assert_eq!(html.matches("<polyline").count(), 0);
}

#[test]
fn mechanism_details_of_v2_entries_are_compared() {
    let coordinator = chain(records(3), &fresh_signer());
    let mut mine = records(3);
    mine[0].charged.as_mut().unwrap().events = vec![StoredEvent::Zcdp {
        rho: 0.02,
        count: 1,
    }];
    mine[1].charged.as_mut().unwrap().task_hash = [0; 32];
    // Each writer records its own generator and dataset: not a disagreement.
    mine[2].charged.as_mut().unwrap().rng = "rand-thread-rng".into();
    mine[2].charged.as_mut().unwrap().dataset = None;
    let partner = chain(mine, &fresh_signer());
    let d = compare("bank-a", &partner, &coordinator);
    let names: Vec<(u64, &str)> = d
        .iter()
        .filter_map(|x| match x {
            Disagreement::Parameter { round, name, .. } => Some((*round, *name)),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec![(1, "events"), (2, "task_hash")], "{d:?}");
    assert!(
        d[0].to_string()
            .contains("events 1 × zcdp(ρ=0.02) (partner) vs 1 × zcdp(ρ=0.0125) (coordinator)"),
        "{}",
        d[0]
    );
    // A v1 entry against a v2 one: the common fields agree, nothing else is compared.
    let partner = chain(vec![record_v1(1)], &fresh_signer());
    let coordinator = chain(vec![record(1)], &fresh_signer());
    assert_eq!(compare("bank-a", &partner, &coordinator), vec![]);
}

#[test]
fn entries_drawn_without_the_secure_generator_are_flagged() {
    let mut rs = records(4);
    rs[1].charged.as_mut().unwrap().rng = "rand-thread-rng".into();
    let mut all = vec![record_v1(0)];
    all.extend(rs);
    let entries = chain(all, &fresh_signer());
    assert_eq!(
        rng_warnings(&entries),
        vec![
            RngWarning {
                index: 0,
                rng: None
            },
            RngWarning {
                index: 2,
                rng: Some("rand-thread-rng".into())
            },
        ]
    );

    let table = report_table(&entries);
    let first = table.lines().next().unwrap();
    assert!(first.starts_with("WARNING: INSECURE RNG"), "{table}");
    assert!(first.contains("1 of 5 entries drew their noise without the secure generator"));
    assert!(first.contains("entries 2"), "{first}");
    assert!(first.contains("1 of 5 entries (format v1) did not record their generator: entries 0"));
    let flagged: Vec<&str> = table
        .lines()
        .filter(|l| l.ends_with("INSECURE RNG"))
        .collect();
    assert_eq!(flagged.len(), 6, "{table}"); // 3 partners x entries 0 and 2
    assert!(
        flagged
            .iter()
            .all(|l| l.contains("rand-thread-rng") || l.contains("unrecorded"))
    );

    let html = report_html(&entries, "rng");
    assert!(html.contains("<p class=\"warning\" id=\"insecure-rng\">WARNING: INSECURE RNG"));
    assert_eq!(html.matches("<tr class=\"insecure\">").count(), 6);

    // The JSON export names them too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.json");
    LedgerFile::from_entries(entries.clone())
        .save(&path)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        v["insecure_rng"],
        serde_json::json!([{"index": 0, "rng": null}, {"index": 2, "rng": "rand-thread-rng"}])
    );
    assert_eq!(LedgerFile::load(&path).unwrap().entries, entries);

    // A ledger drawn entirely from OpenSSL carries no warning.
    let secure = chain(records(3), &fresh_signer());
    assert!(rng_warnings(&secure).is_empty());
    assert!(!report_table(&secure).contains("INSECURE"));
    assert!(!report_html(&secure, "ok").contains("class=\"warning\""));
}
