//! `kill -9` of the coordinator at 20 seeded random points of a task with
//! secure aggregation and distributed differential privacy.
//!
//! After every kill the coordinator is started again on the same state and the
//! same port; the agents reconnect by themselves. When the task is over:
//! every round was completed exactly once and in order, both sides' ledgers
//! verify against their certificates, every charge in a partner's own ledger
//! has its counterpart in the coordinator's (a crash may make the coordinator
//! over-count, by charging write-ahead for a round a partner never trained,
//! but never under-count), and the coordinator's cumulative ε for each partner
//! is never below the partner's own.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Federation, wait_until};
use consortia_coordinator::store::Store;
use consortia_ledger::audit::verify;
use consortia_ledger::{LedgerEntry, Verifier};

const LONG: Duration = Duration::from_secs(300);
const DDG_EPS8: &str = include_str!("../examples/telco_churn_ddg_eps8.toml");
/// Kill points.
const KILLS: usize = 20;
/// Seed of the kill schedule (xorshift64*).
const SEED: u64 = 0x5eed_c0de_2026_1129;
/// A kill comes this long after the coordinator listens, drawn uniformly: from
/// before the agents are back (they reconnect after 1 s) to the middle of a
/// round.
const KILL_AFTER_MS: std::ops::Range<u64> = 100..2_000;
/// Rounds of the task: long enough that most kills land inside the task (a
/// round of this small model takes some 50 ms here).
const ROUNDS: u32 = 400;

/// The schedule's random source: xorshift64* (Vigna 2016), enough for a
/// reproducible spread of kill times.
struct Schedule(u64);

impl Schedule {
    fn next_ms(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        KILL_AFTER_MS.start + r % (KILL_AFTER_MS.end - KILL_AFTER_MS.start)
    }
}

fn ddg_task() -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(DDG_EPS8).expect("example parses");
    spec.rounds = ROUNDS;
    spec.round_deadline_secs = 60;
    let text = spec.to_toml_string().expect("task serialises");
    // The example's noise covers 60 rounds at ε 8; √(400/60)·4.96 ≈ 12.8 covers 400.
    text.replace("noise_multiplier = 4.9602", "noise_multiplier = 14.0")
}

/// The latest cumulative ε of `partner` in entries up to and including
/// (task, round).
fn cumulative_at(entries: &[LedgerEntry], partner: &str, round: u64) -> f64 {
    entries
        .iter()
        .filter(|e| e.record.round <= round)
        .filter_map(|e| e.record.epsilon_cumulative.get(partner).copied())
        .fold(0.0, f64::max)
}

#[test]
fn twenty_coordinator_kills_lose_no_round_and_never_under_count_a_budget() {
    let mut fed = Federation::new(&ddg_task());
    fed.start_coordinator();
    fed.start_all_agents();
    let mut schedule = Schedule(SEED);
    let mut kills = 0;
    let started = Instant::now();
    while kills < KILLS {
        let after = Duration::from_millis(schedule.next_ms());
        let finished = wait_until(after, || {
            fed.coordinator
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
        });
        if let Some(status) = finished {
            // The task ended before every kill was spent: that is fine only
            // if it ended well.
            assert!(status.success(), "coordinator failed\n{}", fed.logs());
            break;
        }
        fed.kill_coordinator(); // SIGKILL
        kills += 1;
        fed.start_coordinator();
        assert!(
            started.elapsed() < LONG,
            "kill {kills}: the task is not moving\n{}",
            fed.logs()
        );
    }
    // Enough kills landed inside the task for the test to mean something.
    assert!(
        kills >= KILLS / 2,
        "only {kills} kills landed\n{}",
        fed.logs()
    );
    if fed.coordinator.is_some() {
        let status = fed.wait_coordinator(LONG);
        assert!(status.success(), "coordinator failed\n{}", fed.logs());
    }
    for (name, _) in fed.partners.clone() {
        let s = fed.wait_agent(&name, Duration::from_secs(60));
        assert!(s.success(), "agent {name} failed\n{}", fed.logs());
    }

    // Every round exactly once, in order, and a model file for each.
    let store = Store::open(&fed.path("state")).expect("open coordinator state");
    let rounds: Vec<u64> = store
        .rounds()
        .expect("rounds")
        .iter()
        .map(|r| r.round)
        .collect();
    assert_eq!(rounds, (1..=u64::from(ROUNDS)).collect::<Vec<_>>());
    drop(store);
    for r in 0..=ROUNDS {
        let model = fed.path(&format!("state/models/round-{r:08}.f64"));
        assert!(model.is_file(), "{} missing", model.display());
    }

    // Both sides' ledgers verify; every partner charge has its counterpart in
    // the coordinator's ledger; the coordinator never shows less spend.
    let coordinator_key = Verifier::from_cert_pem_file(fed.pki.coordinator_cert_path()).unwrap();
    let theirs = consortia_ledger::load_entries(fed.path("state/privacy-ledger.json"))
        .expect("coordinator's exported ledger");
    let report = verify(&theirs, &coordinator_key);
    assert!(report.is_valid(), "coordinator's ledger: {report:?}");
    let mut over_counted: BTreeMap<String, usize> = BTreeMap::new();
    for (name, _) in fed.partners.clone() {
        let mine = consortia_ledger::load_entries(fed.agent_state(&name).join("ledger"))
            .unwrap_or_else(|e| panic!("{name}'s ledger: {e}"));
        assert!(!mine.is_empty(), "{name} charged nothing");
        let key = Verifier::from_cert_pem_file(fed.pki.partner_cert_path(&name)).unwrap();
        let report = verify(&mine, &key);
        assert!(report.is_valid(), "{name}'s ledger: {report:?}");
        // Every charge in the partner's ledger (task, round, mechanism and DP
        // events) appears in the coordinator's at least as often. (`compare`
        // pairs entries by position within a round, which a crash's extra
        // write-ahead entry shifts, so the multiset is checked here.)
        let charges = |entries: &[LedgerEntry]| {
            let mut m: BTreeMap<String, usize> = BTreeMap::new();
            for e in entries
                .iter()
                .filter(|e| e.record.participants.contains(&name))
            {
                let r = &e.record;
                let events = r.charged.as_ref().map(|c| &c.events);
                *m.entry(format!(
                    "{} round {} {} {events:?}",
                    r.task, r.round, r.mechanism
                ))
                .or_default() += 1;
            }
            m
        };
        let (own, coordinator) = (charges(&mine), charges(&theirs));
        for (charge, n) in &own {
            let m = coordinator.get(charge).copied().unwrap_or(0);
            assert!(
                m >= *n,
                "{name}: {charge} charged {n}× by the partner, {m}× by the coordinator\n{}",
                fed.logs()
            );
        }
        let extra = coordinator
            .values()
            .sum::<usize>()
            .saturating_sub(own.values().sum::<usize>());
        over_counted.insert(name.clone(), extra);
        for e in &mine {
            let own = e.record.epsilon_cumulative[&name];
            let coordinator = cumulative_at(&theirs, &name, e.record.round);
            assert!(
                coordinator >= own * (1.0 - 1e-9),
                "{name} round {}: the coordinator's ε {coordinator} is below the partner's {own}",
                e.record.round
            );
        }
    }
    eprintln!("{kills} kills; coordinator-only charges per partner: {over_counted:?}");
}
