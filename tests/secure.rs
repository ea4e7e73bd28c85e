//! Secure aggregation end to end: real processes over mutual TLS on loopback,
//! updates encrypted under the partners' collective key, sums opened only
//! jointly, with distributed differential privacy.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Federation, exact_final_auc, task_with, wait_until};
use consortia_coordinator::secure::{load_key, read_chunks};
use consortia_coordinator::store::Store;
use consortia_he::{Aggregate, DecryptionShare, PartialDecryptor, SecretKeyShare, Shape, combine};
use consortia_ledger::Verifier;
use consortia_ledger::audit::verify;

const LONG: Duration = Duration::from_secs(300);
const DDG_EPS8: &str = include_str!("../examples/telco_churn_ddg_eps8.toml");

/// The distributed-DP example task with a few fields changed.
fn ddg_task(rounds: u32, deadline_secs: u64) -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(DDG_EPS8).expect("example parses");
    spec.rounds = rounds;
    spec.round_deadline_secs = deadline_secs;
    spec.to_toml_string().expect("task serialises")
}

/// Runs the federation to the end; the exact ROC-AUC of its final model on the pooled
/// held-out rows (the stored metrics of a [privacy] task are noised estimates).
fn run_to_end(fed: &mut Federation) -> f64 {
    fed.run_to_completion(LONG);
    let store = Store::open(&fed.path("state")).unwrap();
    let last = store.last_round().unwrap();
    assert!(
        store.metrics(last).unwrap().is_some(),
        "final evaluation stored"
    );
    drop(store);
    exact_final_auc(fed)
}

/// The DP issue's utility goal at ε = 8 (no more than 0.02 below the
/// non-private federation), reached with the noise added in shares by the
/// partners and only encrypted updates on the wire.
#[test]
fn secure_aggregation_with_distributed_dp_keeps_the_plaintext_quality() {
    let mut plain = Federation::new(&task_with(20, 3, 120));
    let plain_auc = run_to_end(&mut plain);
    let plain_store = Store::open(&plain.path("state")).unwrap();
    let reported = plain_store
        .metrics(20)
        .unwrap()
        .unwrap()
        .metrics
        .as_binary()
        .unwrap()
        .roc_auc;
    assert!(
        (reported - plain_auc).abs() < 1e-12,
        "without [privacy] the stored evaluation is exact: {reported} vs {plain_auc}"
    );

    let mut fed = Federation::new(DDG_EPS8);
    let auc = run_to_end(&mut fed);
    assert!(
        auc >= plain_auc - 0.02,
        "secure + distributed DP ROC-AUC {auc:.4} vs plaintext {plain_auc:.4}\n{}",
        fed.logs()
    );

    let log = fed.read(&fed.coordinator_log(1));
    assert!(log.contains("federation key made"), "{log}");
    assert_eq!(
        log.matches("encrypted update received").count(),
        60 * 3,
        "every update of every round arrives encrypted\n{log}"
    );
    assert!(
        !log.contains("INFO update received"),
        "no plaintext update was taken\n{log}"
    );
    // Every round's ciphertexts are deleted once the round is decrypted.
    let secure = fed.path("state/secure");
    let left: Vec<_> = std::fs::read_dir(&secure)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "ciphertexts left behind: {left:?}");
    // Secret key shares stay with the partners, readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    for (name, _) in &fed.partners {
        let keys = fed.agent_state(name).join("keys");
        let secrets: Vec<_> = std::fs::read_dir(&keys)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "secret"))
            .collect();
        assert_eq!(secrets.len(), 1, "{name}: {secrets:?}");
        let mode = std::fs::metadata(&secrets[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}'s key share mode {mode:o}");
    }
    assert!(
        !walk(&fed.path("state"))
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "secret")),
        "the coordinator holds no secret key share"
    );
    // The coordinator's ledger charges the feature statistics (round 0), the distributed
    // mechanism for the 60 rounds, then the final evaluation, and stays in budget.
    let coordinator = Verifier::from_cert_pem_file(fed.pki.coordinator_cert_path()).unwrap();
    let entries = consortia_ledger::load_entries(fed.path("state/privacy-ledger.json")).unwrap();
    assert_eq!(entries.len(), 62);
    assert!(verify(&entries, &coordinator).is_valid());
    assert_eq!(entries[0].record.mechanism, "statistics-gaussian");
    assert_eq!(entries[0].record.round, 0);
    assert!(
        entries[1..61]
            .iter()
            .all(|e| e.record.mechanism == "distributed-discrete-gaussian")
    );
    let last = &entries.last().unwrap().record;
    assert_eq!(last.mechanism, "evaluation-discrete-gaussian");
    assert_eq!(last.round, 61);
    for (p, eps) in &last.epsilon_cumulative {
        assert!(*eps <= 8.0 && *eps > 7.0, "{p} spent ε {eps}");
    }
    // Each partner's own ledger, signed with its own key, reconciles with it.
    for (name, _) in &fed.partners {
        let own = consortia_ledger::load_entries(fed.agent_state(name).join("ledger")).unwrap();
        let cert = Verifier::from_cert_pem_file(fed.pki.partner_cert_path(name)).unwrap();
        assert!(verify(&own, &cert).is_valid(), "{name}'s ledger");
        assert_eq!(own.len(), 62, "{name}'s ledger");
        let disagreements = consortia_ledger::audit::compare(name, &own, &entries);
        assert!(disagreements.is_empty(), "{name}: {disagreements:?}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A round's directory holding exactly two complete encrypted updates and not
/// (yet) sent for decryption.
fn two_stored_updates(state: &Path) -> Option<std::path::PathBuf> {
    let rd = std::fs::read_dir(state.join("secure")).ok()?;
    for dir in rd.flatten().map(|e| e.path()) {
        if dir.join("decrypting").exists() {
            continue;
        }
        let cts = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "ct"))
            .count();
        if cts == 2 {
            return Some(dir);
        }
    }
    None
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

fn secret_share(fed: &Federation, partner: &str) -> SecretKeyShare {
    let keys = fed.agent_state(partner).join("keys");
    let path = std::fs::read_dir(&keys)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "secret"))
        .expect("secret share file");
    SecretKeyShare::load(&path).unwrap()
}

/// What the coordinator stores — an individual encrypted update and the
/// collective key — together with every key share but the sender's, opens
/// the update only to noise; a coordinator killed mid-round keeps the
/// updates it had received and finishes the round with them.
#[test]
fn stored_updates_survive_a_restart_and_all_but_one_share_open_only_noise() {
    let mut fed = Federation::new(&ddg_task(3, 20));
    fed.start_coordinator();
    fed.start_all_agents();
    fed.wait_log(1, "federation key made", LONG);
    // The third partner stops answering: its round never completes.
    let stopped = fed.partners[2].0.clone();
    let pid = fed
        .agents
        .iter()
        .find(|(n, _)| *n == stopped)
        .map(|(_, c)| c.id())
        .unwrap();
    signal(pid, "-STOP");
    let state = fed.path("state");
    // Updates already in flight when the partner stopped may still land: wait
    // until a round has held exactly two updates, undecrypted, for 2 s.
    let dir = wait_until(Duration::from_secs(120), || {
        let dir = two_stored_updates(&state)?;
        std::thread::sleep(Duration::from_secs(2));
        (two_stored_updates(&state).as_ref() == Some(&dir)).then_some(dir)
    })
    .unwrap_or_else(|| panic!("no round with two stored updates\n{}", fed.logs()));

    // The coordinator's data: the key and one partner's stored update.
    let key = load_key(&state).unwrap().expect("key stored");
    let sender = key
        .committee
        .iter()
        .find(|p| dir.join(format!("{p}.ct")).exists())
        .unwrap()
        .clone();
    let chunks = read_chunks(&dir.join(format!("{sender}.ct"))).unwrap();
    let values = 64; // d' = 64 for the 41-parameter model
    let shape = Shape::new(&key.key, values).unwrap();
    let mut single = Aggregate::new(shape).unwrap();
    for (i, c) in chunks.iter().enumerate() {
        single.add_bytes(i as u32, c).unwrap();
    }
    let bits = key.key.plaintext_bits();
    let signed = |v: u64| -> i64 {
        let v = v as i64;
        if v >= 1 << (bits - 1) {
            v - (1 << bits)
        } else {
            v
        }
    };
    let small = |vals: &[u64]| {
        vals.iter()
            .filter(|&&v| signed(v).unsigned_abs() < 1 << 40)
            .count()
    };
    // Every other key holder's genuine share, and nothing from the sender.
    let mut shares: Vec<DecryptionShare> = Vec::new();
    for (party, p) in key.committee.iter().enumerate() {
        let sk = secret_share(&fed, p);
        let share = PartialDecryptor::new(&sk)
            .partial_decrypt(&single, 1)
            .unwrap();
        if *p == sender {
            let mut forged = share.to_bytes();
            let words =
                shape.polys() as usize * shape.polynomial_size() * shape.params.word_bytes();
            let start = forged.len() - words;
            forged[start..].fill(0);
            shares.push(DecryptionShare::from_bytes(&forged, &shape).unwrap());
        } else {
            assert_eq!(share.party().0 as usize, party);
            shares.push(share);
        }
    }
    let without = combine(&single, &shares).unwrap();
    // An update's residues are DDG integers far below 2^40 in magnitude. If
    // the missing share left the values uniform modulo 2^bits (bits >= 41),
    // each lands below 2^40 with probability at most 1/2; more than 56 of 64
    // doing so has probability below 1e-9 (binomial tail).
    assert!(
        small(&without) <= 56,
        "{} of 64 values decrypted near their plaintext without {sender}'s share",
        small(&without)
    );
    // Positive control: with the sender's own share too, the same data opens.
    let all: Vec<DecryptionShare> = key
        .committee
        .iter()
        .map(|p| {
            PartialDecryptor::new(&secret_share(&fed, p))
                .partial_decrypt(&single, 1)
                .unwrap()
        })
        .collect();
    let with = combine(&single, &all).unwrap();
    assert_eq!(small(&with), 64, "the control decryption failed");

    // Kill the coordinator mid-round, restart it, and let the stopped partner go on.
    fed.kill_coordinator();
    fed.start_coordinator();
    signal(pid, "-CONT");
    let status = fed.wait_coordinator(LONG);
    assert!(
        status.success(),
        "restarted coordinator failed\n{}",
        fed.logs()
    );
    let log2 = fed.read(&fed.coordinator_log(2));
    assert_eq!(
        log2.matches("encrypted update kept from before the restart")
            .count(),
        2,
        "{log2}"
    );
    let rounds = Store::open(&state).unwrap().rounds().unwrap();
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(rounds.iter().all(|r| r.participants.len() == 3));
}

/// A key holder gone for good stops the rounds visibly (no round starts
/// that could not be decrypted); `consortia rekey --without` makes a new key
/// with the others and the task finishes without it.
#[test]
fn rekey_goes_on_without_a_key_holder_that_is_gone() {
    let mut spec = consortia_model::TaskSpec::from_toml_str(include_str!(
        "../examples/telco_churn_secure.toml"
    ))
    .unwrap();
    // Enough rounds that the task cannot finish between "round 2 started"
    // and the test stopping a key holder.
    spec.rounds = 30;
    spec.min_partners = 2;
    let mut fed = Federation::new(&spec.to_toml_string().unwrap());
    fed.start_coordinator();
    fed.start_all_agents();
    fed.wait_log(1, "round started round=2", LONG);
    let state = fed.path("state");
    let key = load_key(&state).unwrap().expect("key stored");
    let gone = key.committee[0].clone();
    fed.kill_agent(&gone);
    fed.wait_log(1, "waits for every key holder", LONG);
    fed.kill_coordinator();

    let out = std::process::Command::new(common::EXE)
        .args(["rekey", "--state"])
        .arg(&state)
        .args(["--without", &gone])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("removed the federation key"), "{text}");
    assert!(load_key(&state).unwrap().is_none());

    fed.start_coordinator();
    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    let new_key = load_key(&state).unwrap().expect("new key stored");
    assert_ne!(new_key.key.key_id(), key.key.key_id());
    assert!(
        !new_key.committee.contains(&gone),
        "{:?}",
        new_key.committee
    );
    let rounds = Store::open(&state).unwrap().rounds().unwrap();
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );
    let last = rounds.last().unwrap();
    assert!(!last.participants.contains(&gone), "{last:?}");
}

/// An agent from before joint decryption by sketches (no protocol version in
/// its `Hello`) would wait at decryption for every contributor's masks, which
/// are no longer sent: a coordinator serving a secure task refuses it at
/// `Hello`, saying why, and stops it (permission denied). A current agent's
/// `Hello` is welcomed.
#[test]
fn an_agent_from_before_decryption_by_sketches_is_refused_at_hello() {
    use consortia_pki::{ClientTls, ClientTlsFiles};
    use consortia_proto::federation_client::FederationClient;
    use consortia_proto::{ClientMessage, Hello, client_message::Kind as Up};

    let mut fed = Federation::new(&ddg_task(1, 60));
    let addr = fed.start_coordinator();
    let name = fed.partners[0].0.clone();
    let tls = ClientTls::new(ClientTlsFiles {
        ca_cert: fed.pki.ca_cert_path(),
        cert: fed.pki.partner_cert_path(&name),
        key: fed.pki.partner_key_path(&name),
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = |protocol_version: u32| {
        rt.block_on(async {
            let channel = tls
                .connect(&format!("https://{addr}"), "127.0.0.1")
                .await
                .unwrap();
            let mut client = FederationClient::new(channel);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(ClientMessage {
                kind: Some(Up::Hello(Hello {
                    agent_version: "0.0.1".into(),
                    protocol_version,
                })),
            })
            .await
            .unwrap();
            let mut inbound = client
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let first = tokio::time::timeout(Duration::from_secs(30), inbound.message()).await;
            drop(tx);
            first.expect("an answer to Hello")
        })
    };
    let status = first(0).expect_err("the session is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("upgrade the agent")
            && status.message().contains("protocol 0")
            && status.message().contains("secure aggregation"),
        "{}",
        status.message()
    );
    fed.wait_log(1, "the agent predates joint decryption by sketches", LONG);
    // The control: an agent of this version is welcomed.
    let welcome = first(consortia_proto::PROTOCOL_VERSION).expect("a welcome");
    assert!(
        matches!(welcome.and_then(|m| m.kind), Some(consortia_proto::server_message::Kind::Welcome(w)) if w.partner == name)
    );
    fed.kill_coordinator();
}
