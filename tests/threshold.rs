//! t-of-N federation keys end to end (task `key_threshold`): real processes over
//! mutual TLS on loopback. Five partners make the federation key, then deal it
//! 3-of-5 (`docs/threshold.md`): every holder checks every dealer's signed
//! commitments and its sealed subshares and stores its threshold share.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{DATA, Federation};
use consortia_he::{HeError, PartyId, ThresholdKeyShare};

const LONG: Duration = Duration::from_secs(600);
const SECURE: &str = include_str!("../examples/telco_churn_secure.toml");

/// The telco rows with a `shard` column dealing them round-robin to five partners.
fn five_partner_data(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(DATA).expect("telco data");
    let mut lines = text.lines();
    let mut out = format!("{},shard\n", lines.next().expect("header"));
    for (i, line) in lines.filter(|l| !l.trim().is_empty()).enumerate() {
        out.push_str(&format!("{line},p{}\n", i % 5));
    }
    let path = dir.join("telco_five.csv");
    std::fs::write(&path, out).unwrap();
    path
}

/// The secure example task with `key_threshold = 3` and `rounds` rounds.
fn threshold_task(rounds: u32) -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(SECURE).expect("example parses");
    spec.rounds = rounds;
    spec.key_threshold = Some(3);
    spec.to_toml_string().expect("task serialises")
}

/// The files under `dir` (recursively) whose extension is `ext`.
fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out
}

/// Five partners deal the key 3-of-5: each stores its threshold share (0600),
/// the coordinator records that all five did and holds no share, and the
/// task's rounds complete. Two holders' stored shares are refused as a
/// decryption set by the maths layer; that they and the coordinator's state
/// reveal nothing about the key is the statistical test
/// `what_t_minus_1_holders_see_is_independent_of_the_secret` in
/// `privacy/he/src/threshold.rs`.
#[test]
fn five_partners_deal_a_three_of_five_key_and_train() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = five_partner_data(data_dir.path());
    let mut fed = Federation::with_data(&threshold_task(2), &data, "shard");
    assert_eq!(fed.partners.len(), 5);
    fed.run_to_completion(LONG);

    let log = fed.read(&fed.coordinator_log(1));
    assert!(
        log.contains("every key holder stored its threshold share"),
        "{}",
        fed.logs()
    );
    let record = fed.read(&fed.path("state/keys/threshold-holders.json"));
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["key_threshold"], 3);
    assert_eq!(record["holders_stored"].as_array().unwrap().len(), 5);

    use std::os::unix::fs::PermissionsExt;
    let mut shares = Vec::new();
    for (name, _) in &fed.partners {
        let files = files_with(&fed.agent_state(name).join("keys"), "threshold");
        assert_eq!(files.len(), 1, "{name}: {files:?}");
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{name}'s threshold share mode {mode:o}"
        );
        shares.push(ThresholdKeyShare::load(&files[0]).unwrap());
        let out = fed.read(&fed.path(&format!("logs/{name}.out")))
            + &fed.read(&fed.path(&format!("logs/{name}.err")));
        assert!(
            out.contains("share of the 3-of-5 key is stored"),
            "{name}\n{out}"
        );
    }
    assert!(
        files_with(&fed.path("state"), "threshold").is_empty()
            && files_with(&fed.path("state"), "secret").is_empty(),
        "the coordinator holds no key share"
    );
    // Two holders are not a decryption set.
    let committee = shares[0].committee();
    assert_eq!((committee.parties(), committee.threshold()), (5, 3));
    let e = committee
        .decryption_set([shares[1].holder(), shares[3].holder()])
        .unwrap_err();
    assert!(
        matches!(
            e,
            HeError::BelowThreshold {
                have: 2,
                threshold: 3
            }
        ),
        "{e}"
    );
    committee
        .decryption_set([PartyId(0), PartyId(2), PartyId(4)])
        .unwrap();
}

/// N = 5, t = 3: two key holders are killed once round 1's decryption has
/// started. The attempt in flight fails if they were among its holders (or
/// completes if their shares were already in); every later decryption asks
/// the three holders still connected, which is enough, and the task
/// completes all its rounds with the three remaining partners.
#[test]
fn a_three_of_five_federation_completes_after_two_key_holders_die_mid_decryption() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = five_partner_data(data_dir.path());
    let mut fed = Federation::with_data(&threshold_task(3), &data, "shard");
    fed.start_coordinator();
    fed.start_all_agents();
    fed.wait_log(1, "asking the key holders to decrypt the sum", LONG);
    let names: Vec<String> = fed.partners.iter().map(|(n, _)| n.clone()).collect();
    let (alive, dead) = names.split_at(3);
    let (alive, dead) = (alive.to_vec(), dead.to_vec());
    for name in &dead {
        fed.kill_agent(name);
    }
    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    for name in &alive {
        let s = fed.wait_agent(name, Duration::from_secs(60));
        assert!(s.success(), "agent {name} failed\n{}", fed.logs());
    }
    let log = fed.read(&fed.coordinator_log(1));
    // After the kill, decryptions ask the three holders left.
    assert!(
        log.contains("holders=3"),
        "no decryption with three holders\n{log}"
    );
    // Which way the attempt in flight went, for the record.
    let in_flight_failed = log.contains("disconnected during decryption");
    eprintln!(
        "the decryption in flight when two holders died {}",
        if in_flight_failed {
            "failed; the round completed on a later attempt"
        } else {
            "had their shares already and completed"
        }
    );
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).unwrap();
    assert_eq!(store.last_round().unwrap(), 3, "{log}");
}

/// Starts the coordinator and the five agents, partner `i` with `env`, and
/// waits for the task to complete.
fn run_with_hook(fed: &mut Federation, i: usize, env: &[(&str, &str)]) {
    fed.start_coordinator();
    for j in 0..fed.partners.len() {
        if j == i {
            fed.start_agent_with_env(j, None, &[], env);
        } else {
            fed.start_agent(j, None);
        }
    }
    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    for (name, _) in fed.partners.clone() {
        let s = fed.wait_agent(&name, Duration::from_secs(60));
        assert!(s.success(), "agent {name} failed\n{}", fed.logs());
    }
}

/// The incidents the coordinator recorded, one JSON object a line.
fn incidents(fed: &Federation) -> Vec<serde_json::Value> {
    fed.read(&fed.path("state/incidents.log"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("incident line"))
        .collect()
}

/// One of five partners deals a bad subshare, signed as its own: the
/// holder it was sealed to complains with its evidence, the coordinator
/// judges the dealer at fault, records the incident, excludes it and makes
/// the key again with the other four, who deal it 3-of-4; the task completes.
#[test]
fn a_dealer_of_a_bad_subshare_is_excluded_and_the_others_make_the_key() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = five_partner_data(data_dir.path());
    let mut fed = Federation::with_data(&threshold_task(1), &data, "shard");
    let cheat = fed.partners[0].0.clone();
    run_with_hook(&mut fed, 0, &[("CONSORTIA_TEST_BAD_SUBSHARE", "1")]);
    let found = incidents(&fed);
    assert_eq!(found.len(), 1, "{found:?}\n{}", fed.logs());
    assert_eq!(found[0]["kind"], "threshold-dealer-at-fault");
    assert_eq!(found[0]["at_fault"], cheat.as_str());
    assert_eq!(found[0]["dealer"], cheat.as_str());
    assert!(
        found[0]["detail"].as_str().unwrap().contains("signed box"),
        "{found:?}"
    );
    assert_eq!(found[0]["evidence_sha256"].as_str().unwrap().len(), 64);
    let excluded: Vec<String> =
        serde_json::from_str(&fed.read(&fed.path("state/keys/excluded.json"))).unwrap();
    assert_eq!(excluded, vec![cheat.clone()]);
    let record: serde_json::Value =
        serde_json::from_str(&fed.read(&fed.path("state/keys/threshold-holders.json"))).unwrap();
    let holders: Vec<&str> = record["holders_stored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(holders.len(), 4, "{record}");
    assert!(!holders.contains(&cheat.as_str()), "{record}");
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).unwrap();
    assert_eq!(store.last_round().unwrap(), 1);
}

/// One of five partners complains falsely about an honest dealer: the box
/// it reveals opens and matches the dealer's commitments, so the
/// coordinator excludes the complainer, not the dealer, and the others make
/// the key.
#[test]
fn a_false_complainer_is_excluded_instead_of_the_dealer() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = five_partner_data(data_dir.path());
    let mut fed = Federation::with_data(&threshold_task(1), &data, "shard");
    let liar = fed.partners[1].0.clone();
    run_with_hook(&mut fed, 1, &[("CONSORTIA_TEST_FALSE_COMPLAINT", "1")]);
    let found = incidents(&fed);
    assert_eq!(found.len(), 1, "{found:?}\n{}", fed.logs());
    assert_eq!(found[0]["kind"], "threshold-false-complaint");
    assert_eq!(found[0]["at_fault"], liar.as_str());
    assert_eq!(found[0]["complainer"], liar.as_str());
    assert_ne!(found[0]["dealer"], liar.as_str());
    assert!(
        found[0]["detail"]
            .as_str()
            .unwrap()
            .contains("complaint is false"),
        "{found:?}"
    );
    let excluded: Vec<String> =
        serde_json::from_str(&fed.read(&fed.path("state/keys/excluded.json"))).unwrap();
    assert_eq!(excluded, vec![liar]);
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).unwrap();
    assert_eq!(store.last_round().unwrap(), 1);
}
