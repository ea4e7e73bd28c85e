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
/// started, before the coordinator holds their sketches (usually): holders
/// that had not committed are left out of the decryption set, but the sum
/// holds their updates and no holder checked their sketches, so no further
/// coin toss can open it and the attempt fails; the round runs again
/// (a rare kill after their sketches were relayed is survived in the same
/// attempt by a further toss, as in
/// `a_three_of_five_round_completes_in_the_same_attempt_when_two_holders_die_after_the_coin_toss`).
/// Every later decryption asks the three holders still connected, which is
/// enough, and the task completes all its rounds with the three remaining
/// partners.
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
    // Which way the attempt in flight went, for the record: a round run
    // again starts again; a further toss of the same sum does not.
    let round1_started = log
        .lines()
        .filter(|l| l.contains("round started") && l.contains("round=1 "))
        .count();
    let retossed = log.contains("further coin toss 1 for the same aggregate");
    eprintln!(
        "the decryption in flight when two holders died {}",
        match (round1_started, retossed) {
            (1, true) => "was tossed again with the three left and completed",
            (1, false) => "had their shares already and completed",
            _ => "failed; the round completed on a later attempt",
        }
    );
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).unwrap();
    assert_eq!(store.last_round().unwrap(), 3, "{log}");
}

/// The federation key stored in `fed`'s state: (session id, committee).
fn stored_key(fed: &Federation) -> (String, Vec<String>) {
    let text = fed.read(&fed.path("state/keys/federation-key.json"));
    let key: serde_json::Value = serde_json::from_str(&text).expect("the stored key parses");
    let committee = key["committee"]
        .as_array()
        .expect("a committee")
        .iter()
        .map(|p| p.as_str().expect("a name").to_string())
        .collect();
    (
        key["session_id"].as_str().expect("an id").to_string(),
        committee,
    )
}

/// The body of `GET /metrics` at `addr`, if it answers.
fn metrics_text(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).ok()?;
    Some(raw.split_once("\r\n\r\n")?.1.to_string())
}

/// `GET path` of the console at `addr` as the operator `ops` of `fed`'s PKI: the body.
fn console_get(fed: &Federation, addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = fed.path("pki");
    let config = common::client_tls(
        &pki.join("ca.pem"),
        Some((
            &pki.join("console").join("ops.pem"),
            &pki.join("console").join("ops.key"),
        )),
        b"http/1.1",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let exchange = async {
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
            let mut tls = connector.connect(name, tcp).await.ok()?;
            let ask = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            tls.write_all(ask.as_bytes()).await.ok()?;
            let mut raw = Vec::new();
            let _ = tls.read_to_end(&mut raw).await;
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (head, body) = raw.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.1 200").then(|| body.to_string())
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .ok()
            .flatten()
    })
}

/// Rounds of the automatic re-key's test: enough for the rounds to outlast
/// `REKEY_AFTER_S` (a round of this task takes about a tenth of a second here).
const REKEY_ROUNDS: u32 = 60;
/// `[keys] rekey_after_s` of the automatic re-key's test.
const REKEY_AFTER_S: &str = "1";

/// N = 5, t = 3, `[keys] rekey_after_s` = 1: four partners make the key, then one
/// holder is killed and the fifth partner, outside the key, connects. The three
/// holders still reachable open every sum but would not survive one more departure;
/// a second later, between rounds, the coordinator retires the key and makes a new
/// one with the four partners connected (more than the holders left), logs which
/// holder was unreachable and since when, counts it, and the task completes under
/// the new key. The killed holder's absence from the decryptions under the old key is
/// counted per partner. With `--rekey-after-s 0` the old key stays and this test fails.
#[test]
fn the_coordinator_re_keys_by_itself_when_too_few_key_holders_stay_reachable() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = five_partner_data(data_dir.path());
    let mut fed = Federation::with_data(&threshold_task(REKEY_ROUNDS), &data, "shard");
    let issued = std::process::Command::new(common::EXE)
        .args(["pki", "issue", "ops", "--role", "operator", "--dir"])
        .arg(fed.path("pki"))
        .output()
        .unwrap();
    assert!(issued.status.success(), "{issued:?}");
    fed.start_coordinator_with(&[
        "--rekey-after-s",
        REKEY_AFTER_S,
        "--metrics-listen",
        "127.0.0.1:0",
        "--console-listen",
        "127.0.0.1:0",
    ]);
    let log = fed.coordinator_log(1);
    let console = common::wait_until(Duration::from_secs(30), || {
        let text = fed.read(&log);
        let rest = text.split("console listening on https://").nth(1)?;
        Some(rest.split('/').next()?.to_string())
    })
    .unwrap_or_else(|| panic!("no console address\n{}", fed.logs()));
    let metrics = common::wait_until(Duration::from_secs(30), || {
        let text = fed.read(&log);
        let rest = text.split("metrics listening on http://").nth(1)?;
        Some(rest.split('/').next()?.to_string())
    })
    .unwrap_or_else(|| panic!("no metrics address\n{}", fed.logs()));
    for i in 0..4 {
        fed.start_agent(i, None);
    }
    fed.wait_log(1, "federation key made", LONG);
    let (old_id, old) = stored_key(&fed);
    assert!(old.len() >= 3, "{old:?}");
    let victim = old.last().unwrap().clone();
    fed.kill_agent(&victim);
    let fresh = fed.start_agent(4, None);
    assert!(!old.contains(&fresh), "{old:?}");
    let mut expected: Vec<String> = fed
        .partners
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| *n != victim)
        .collect();
    expected.sort();

    fed.wait_log(1, "automatic re-key", Duration::from_secs(120));
    // Counted while the coordinator runs the rounds under the new key: the re-key,
    // and the fresh partner's shares in decryptions under it.
    let rekeyed = "consortia_rekeys_total{reason=\"holders_unreachable\"} 1";
    let fresh_answered = format!(
        "consortia_key_holder_decryptions_total{{partner=\"{fresh}\",outcome=\"answered\"}}"
    );
    let text = common::wait_until(Duration::from_secs(60), || {
        metrics_text(&metrics).filter(|t| t.contains(rekeyed) && t.contains(&fresh_answered))
    })
    .unwrap_or_else(|| panic!("no `{rekeyed}` and `{fresh_answered}`\n{}", fed.logs()));
    // The victim was away from (or failed) the decryptions under the old key, which
    // went on with the three holders left (a key of four; had standardisation ended
    // with three connected, the key has three holders and none decrypts after the kill).
    let victim_counted = ["absent", "failed"].iter().any(|o| {
        text.contains(&format!(
            "consortia_key_holder_decryptions_total{{partner=\"{victim}\",outcome=\"{o}\"}}"
        ))
    });
    assert!(
        victim_counted || old.len() == 3,
        "{victim} not counted away in\n{text}"
    );
    assert!(text.contains("consortia_key_threshold 3"), "{text}");
    assert!(text.contains("consortia_key_holders 4"), "{text}");
    // The console: the re-key (old and new holders, the unreachable one), and the
    // decryptions with who decrypted and who was away.
    let view = console_get(&fed, &console, "/api/v1/federation")
        .unwrap_or_else(|| panic!("the console did not answer\n{}", fed.logs()));
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    let kh = &view["key_holders"];
    assert_eq!(kh["threshold"], 3, "{kh}");
    let rekey = &kh["rekeys"][0];
    assert_eq!(rekey["reason"], "holders_unreachable", "{kh}");
    assert_eq!(rekey["old_holders"], serde_json::json!(old), "{kh}");
    assert_eq!(rekey["new_holders"], serde_json::json!(expected), "{kh}");
    assert_eq!(rekey["unreachable"][0]["partner"], victim.as_str(), "{kh}");
    let latest = &kh["decryptions"][0];
    assert_eq!(latest["holders"], serde_json::json!(expected), "{kh}");
    assert!(
        latest["answered"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(fresh)),
        "{kh}"
    );
    let page = console_get(&fed, &console, "/federation?part=main").unwrap();
    assert!(page.contains("<h2>Decryptions</h2>"), "{page}");
    assert!(page.contains("<h2>Automatic re-keys</h2>"), "{page}");
    assert!(page.contains(&format!("{victim} (since ")), "{page}");

    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    let text = fed.read(&log);
    let (new_id, new) = stored_key(&fed);
    assert_eq!(new, expected, "{text}");
    assert_ne!(new_id, old_id, "the old key was not retired");
    assert!(
        text.contains(&format!("federation key {old_id} retired and replaced")),
        "{text}"
    );
    // Which holder was unreachable, and since when; the partner outside the old key was named.
    let line = text
        .lines()
        .find(|l| l.contains("automatic re-key"))
        .unwrap();
    assert!(line.contains(&format!("{victim} (since ")), "{line}");
    assert!(
        text.contains(&format!(
            "partner `{fresh}` is connected but holds no share of the federation key"
        )),
        "{text}"
    );
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).unwrap();
    assert_eq!(
        store.last_round().unwrap(),
        u64::from(REKEY_ROUNDS),
        "{text}"
    );
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

/// Pauses the agent process of `name` (SIGSTOP to its pid): it sends
/// nothing more, and its connection stays open until it is killed.
fn pause_agent(fed: &Federation, name: &str) {
    let (_, child) = fed
        .agents
        .iter()
        .find(|(n, _)| n == name)
        .expect("agent started");
    let paused = std::process::Command::new("kill")
        .args(["-STOP", &child.id().to_string()])
        .status()
        .expect("kill -STOP runs");
    assert!(paused.success(), "could not pause agent {name}");
}

/// Pauses each of `victims` the moment the coordinator took its sketch of
/// round 1's coin toss 0 (its log says so), within [`LONG`].
fn pause_when_sketched(fed: &Federation, victims: &[String]) {
    let log_path = fed.coordinator_log(1);
    let mut paused: Vec<&String> = Vec::new();
    let until = std::time::Instant::now() + LONG;
    while paused.len() < victims.len() {
        assert!(std::time::Instant::now() < until, "{}", fed.logs());
        let log = fed.read(&log_path);
        for v in victims {
            let taken = format!("round 1: sketch of `{v}`'s update taken (coin toss 0)");
            if !paused.contains(&v) && log.contains(&taken) {
                pause_agent(fed, v);
                paused.push(v);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The agent `name`'s log (stdout and stderr).
fn agent_log(fed: &Federation, name: &str) -> String {
    fed.read(&fed.path(&format!("logs/{name}.out")))
        + &fed.read(&fed.path(&format!("logs/{name}.err")))
}

/// N = 5, t = 3: two key holders die after round 1's coin toss, once the
/// coordinator took their sketches and relayed every sketch to the five
/// holders, and before their shares: each is paused as soon as its sketch
/// is taken and killed once the three others sent their shares. The
/// coordinator tosses again for the same aggregate with the three left,
/// who checked the sketches already, and round 1 completes in the same
/// attempt with all five updates: nobody trains it twice.
#[test]
fn a_three_of_five_round_completes_in_the_same_attempt_when_two_holders_die_after_the_coin_toss() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = five_partner_data(data_dir.path());
    let mut fed = Federation::with_data(&threshold_task(2), &data, "shard");
    fed.start_coordinator();
    fed.start_all_agents();
    let names: Vec<String> = fed.partners.iter().map(|(n, _)| n.clone()).collect();
    let (alive, dead) = names.split_at(3);
    let (alive, dead) = (alive.to_vec(), dead.to_vec());
    let log_path = fed.coordinator_log(1);
    pause_when_sketched(&fed, &dead);
    // The three others check the sketches and send their shares of toss 0.
    let shared = common::wait_until(LONG, || {
        alive
            .iter()
            .all(|n| agent_log(&fed, n).contains("round 1: partial decryption sent"))
            .then_some(())
    });
    assert!(shared.is_some(), "{}", fed.logs());
    for v in &dead {
        fed.kill_agent(v);
    }
    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    for name in &alive {
        let s = fed.wait_agent(name, Duration::from_secs(60));
        assert!(s.success(), "agent {name} failed\n{}", fed.logs());
    }
    let log = fed.read(&log_path);
    assert!(
        log.contains("further coin toss 1 for the same aggregate")
            && log.contains("checked the contributors' sketches of this sum already"),
        "no further toss\n{log}"
    );
    // Round 1 started once: one attempt, trained once by every partner.
    let started = log
        .lines()
        .filter(|l| l.contains("round started") && l.contains("round=1 "))
        .count();
    assert_eq!(started, 1, "{log}");
    for name in &names {
        let trained = agent_log(&fed, name)
            .lines()
            .filter(|l| {
                l.contains("] round 1/")
                    && (l.contains("epoch 1/") || l.contains("private training done"))
            })
            .count();
        assert_eq!(trained, 1, "{name} trained round 1 {trained} times");
    }
    // Its sum holds the dead partners' updates, collected before they died.
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).unwrap();
    let round1 = store.round(1).unwrap().expect("round 1 recorded");
    for v in &dead {
        assert!(round1.participants.contains(v), "{:?}", round1.participants);
    }
    assert_eq!(round1.participants.len(), 5);
    assert_eq!(store.last_round().unwrap(), 2, "{log}");
}

/// N = 5, t = 3: two key holders stay connected but fall silent after round
/// 1's coin toss (each paused, not killed, as soon as the coordinator took
/// its sketch). Once the three others sent their shares, the coordinator
/// waits the straggler window (a quarter of the 40 s round deadline), drops
/// the two silent ones from the toss and tosses again for the same aggregate
/// with the three: round 1 completes in its first attempt with all five
/// updates, although no holder disconnected.
#[test]
fn a_three_of_five_round_completes_in_the_same_attempt_when_two_holders_fall_silent() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = five_partner_data(data_dir.path());
    let mut spec = consortia_model::TaskSpec::from_toml_str(&threshold_task(1)).unwrap();
    spec.round_deadline_secs = 40;
    let mut fed = Federation::with_data(&spec.to_toml_string().unwrap(), &data, "shard");
    fed.start_coordinator();
    fed.start_all_agents();
    let names: Vec<String> = fed.partners.iter().map(|(n, _)| n.clone()).collect();
    let (alive, silent) = names.split_at(3);
    let (alive, silent) = (alive.to_vec(), silent.to_vec());
    let log_path = fed.coordinator_log(1);
    pause_when_sketched(&fed, &silent);
    // Still connected, silent: the coordinator cuts them after the window.
    let retossed = common::wait_until(LONG, || {
        fed.read(&log_path)
            .contains("further coin toss 1 for the same aggregate")
            .then_some(())
    });
    assert!(retossed.is_some(), "{}", fed.logs());
    let log = fed.read(&log_path);
    assert!(log.contains("straggler window"), "{log}");
    assert!(
        !log.contains("disconnected during decryption"),
        "the silent holders were still connected\n{log}"
    );
    // Out of the way of the final evaluation.
    for v in &silent {
        fed.kill_agent(v);
    }
    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    let log = fed.read(&log_path);
    let started = log
        .lines()
        .filter(|l| l.contains("round started") && l.contains("round=1 "))
        .count();
    assert_eq!(started, 1, "{log}");
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).unwrap();
    let round1 = store.round(1).unwrap().expect("round 1 recorded");
    assert_eq!(round1.participants.len(), 5, "{:?}", round1.participants);
    assert_eq!(store.last_round().unwrap(), 1, "{log}");
    for name in &alive {
        let s = fed.wait_agent(name, Duration::from_secs(60));
        assert!(s.success(), "agent {name} failed\n{}", fed.logs());
    }
}
