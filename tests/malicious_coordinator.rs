//! A malicious coordinator against real partner agents.
//!
//! Each test starts real agents (the built binary, over mutual TLS on
//! loopback) against [`Rogue`], a coordinator that holds the federation's
//! genuine certificate but follows a script, and shows that the attack fails:
//! the agent's log names its refusal and the rogue received nothing derived
//! from the partner's rows. A control test shows the same harness does get
//! private answers when nothing is wrong, so the negative checks cannot pass
//! vacuously.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::rogue::{Peer, Rogue, WAIT};
use common::{Federation, TASK};
use consortia_he::update::UpdateEncoding;
use consortia_he::{
    Aggregate, CollectiveKeyAggregator, CollectivePublicKey, Encryptor, HeParams, KeySession,
    PublicKeyShare, Shape,
};
use consortia_model::TaskSpec;
use consortia_proto::{
    AggregateMasks, ChallengeCommitments, ChallengeReveals, ClientMessage, CollectiveKey,
    Contribution, ContributorSketch, ContributorSketches, DecryptRequest, DecryptionContext,
    HolderCommitment, HolderSeed, KeyGenRequest, KeyReveal, ModelChunk, RoundStart, SignedKeyShare,
    SketchRequest, StatsRequest, TaskFinished, Welcome, chunk_count, chunk_range,
    client_message::Kind as Up, server_message::Kind as Down,
};

/// An acceptable `[privacy]` table: partner-level DP, noise added locally.
const LOCAL_DP: &str = r#"unit = "partner"
placement = "local"
epsilon = 8.0
delta = 1e-6
clip_norm = 1.0
noise_multiplier = 1.0
"#;

/// The telco task with the given settings and `[privacy]` table (`None`:
/// none). The result is a valid task on its own, so a refusal can only come
/// from the partner's policy or pins.
fn task(secure_aggregation: bool, min_partners: u32, privacy: Option<&str>) -> String {
    let mut spec = TaskSpec::from_toml_str(TASK).expect("bundled task parses");
    spec.secure_aggregation = secure_aggregation;
    spec.min_partners = min_partners;
    spec.privacy = privacy.map(|p| toml::from_str::<toml::Table>(p).expect("privacy table"));
    let text = spec.to_toml_string().expect("task serialises");
    let back = TaskSpec::from_toml_str(&text).expect("the test task is valid");
    assert_eq!(back.secure_aggregation, secure_aggregation);
    assert_eq!(back.min_partners, min_partners);
    assert_eq!(back.privacy.is_some(), privacy.is_some());
    text
}

/// The canonical hash of a task, in hex, as the agent pins it.
fn hash_hex(task_toml: &str) -> String {
    let hash = TaskSpec::from_toml_str(task_toml)
        .expect("task parses")
        .canonical_hash()
        .expect("task hashes");
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A policy that allows everything a policy can allow (tests then tighten
/// the one field under test).
const PERMISSIVE: &[(&str, &str)] = &[
    ("require_secure_aggregation", "false"),
    ("require_dp", "false"),
    ("allowed_units", r#"["record", "partner"]"#),
    ("allowed_placements", r#"["local", "distributed"]"#),
    ("min_noise_multiplier", "0.0"),
    ("min_evaluation_noise", "1.0"),
    ("max_sampling_rate", "1.0"),
    ("min_contributors", "1"),
    ("max_colluders_assumed", "0"),
    ("min_key_threshold", "2"),
    ("allowed_he_params", r#"["secure128", "fast64"]"#),
    ("allowed_models", r#"["logistic_regression"]"#),
    ("max_rounds", "1000000"),
    ("max_evaluations", "1000001"),
    // Test builds draw noise without OpenSSL (no `secure-rng` feature).
    ("allow_insecure_rng", "true"),
];

/// The permissive policy file with `overrides` in place of its values.
fn policy(overrides: &[(&str, &str)]) -> String {
    for (k, _) in overrides {
        assert!(
            PERMISSIVE.iter().any(|(p, _)| p == k),
            "unknown policy field {k}"
        );
    }
    let mut out = String::from("[policy]\n");
    for (k, v) in PERMISSIVE {
        let v = overrides
            .iter()
            .find(|(o, _)| o == k)
            .map_or(*v, |(_, v)| *v);
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

/// What the agent prints once it has read its rows.
const LOADED_ROWS: &str = "training rows";

/// The rogue's opening against one agent: `Welcome` with `task`, then at
/// once the request for the partner's feature sums that an honest
/// coordinator makes next; then it waits for the agent to leave.
async fn welcome_then_ask_stats(mut peer: Peer, task: String) {
    if !peer.expect_hello(WAIT).await {
        return;
    }
    peer.welcome(&task).await;
    peer.send_kind(Down::StatsRequest(StatsRequest { request_id: 1 }))
        .await;
    peer.closed(WAIT).await;
}

/// One agent with `policy` is sent `task`: it must exit non-zero, log
/// `expect`, never read its rows and send the rogue nothing private.
fn refused_at_welcome(task: String, policy: String, expect: &[&str]) {
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |peer| welcome_then_ask_stats(peer, task.clone()));
    let name = rogue.start_agent(0, &policy);
    let status = rogue.wait_agent_exit(&name, WAIT);
    let log = rogue.agent_log(&name);
    assert!(
        !status.success(),
        "agent accepted the task ({status})\n{}",
        rogue.report()
    );
    for needle in expect {
        assert!(
            log.contains(needle),
            "agent log lacks `{needle}`\n{}",
            rogue.report()
        );
    }
    assert!(
        !log.contains(LOADED_ROWS),
        "agent read its rows before refusing\n{}",
        rogue.report()
    );
    rogue.assert_nothing_private(&name);
    assert_eq!(rogue.sessions(&name), 1, "{}", rogue.report());
}

/// Control: with a task its policy allows, the agent does answer the
/// rogue's statistics request (so the refusals below are the policy's doing,
/// and the harness would see a private message if one were sent).
#[test]
fn control_an_acceptable_task_gets_statistics() {
    let t = task(false, 3, Some(LOCAL_DP));
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let t = t.clone();
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            peer.welcome(&t).await;
            peer.send_kind(Down::StatsRequest(StatsRequest { request_id: 42 }))
                .await;
            if peer.recv_kind("StatsReport", WAIT).await.is_some() {
                peer.send_kind(Down::Finished(TaskFinished {
                    detail: "control done".into(),
                }))
                .await;
            }
            peer.closed(WAIT).await;
        }
    });
    let name = rogue.start_agent(0, &policy(&[]));
    let report = rogue.wait_received(&name, "StatsReport", WAIT);
    let Some(Up::Stats(stats)) = report.message.kind else {
        unreachable!("a StatsReport")
    };
    assert_eq!(stats.request_id, 42);
    assert!(stats.count > 0, "{}", rogue.report());
    let status = rogue.wait_agent_exit(&name, WAIT);
    assert!(status.success(), "{status}\n{}", rogue.report());
    let log = rogue.agent_log(&name);
    assert!(log.contains(LOADED_ROWS), "{}", rogue.report());
    assert!(log.contains("control done"), "{}", rogue.report());
    rogue.check_scripts();
}

/// A coordinator that predates joint decryption by sketches (its `Welcome`
/// carries no protocol version) serving a secure task: the agent says so at
/// once and reads nothing, rather than waiting for a decryption it could not
/// take part in. The same `Welcome` with the current version is the control
/// (`control_one_task_to_all_gives_a_key_and_encrypted_updates`).
#[test]
fn a_secure_task_from_a_coordinator_of_an_older_protocol_is_refused() {
    let t = task(true, 3, None);
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let t = t.clone();
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            let name = peer.name.clone();
            peer.send_kind(Down::Welcome(Welcome {
                partner: name,
                task_name: "telco-churn".into(),
                task_toml: t,
                acknowledged_head: None,
                protocol_version: 0,
            }))
            .await;
            peer.send_kind(Down::StatsRequest(StatsRequest { request_id: 1 }))
                .await;
            peer.closed(WAIT).await;
        }
    });
    let name = rogue.start_agent(0, &policy(&[]));
    let status = rogue.wait_agent_exit(&name, WAIT);
    let log = rogue.agent_log(&name);
    assert!(
        !status.success(),
        "agent accepted ({status})\n{}",
        rogue.report()
    );
    let needs = format!(
        "the coordinator speaks protocol 0; this agent needs {} or newer",
        consortia_proto::MIN_SECURE_PROTOCOL_VERSION
    );
    assert!(log.contains(&needs), "{}", rogue.report());
    assert!(!log.contains(LOADED_ROWS), "{}", rogue.report());
    rogue.assert_nothing_private(&name);
}

/// (a) A plaintext task against a policy that requires secure aggregation.
#[test]
fn a_plaintext_task_is_refused_when_the_policy_requires_secure_aggregation() {
    refused_at_welcome(
        task(false, 3, Some(LOCAL_DP)),
        policy(&[("require_secure_aggregation", "true")]),
        &[
            "policy refuses task `telco-churn`: secure_aggregation: the task has false, the policy requires true",
        ],
    );
}

/// (b) A task without `[privacy]` against a policy that requires DP.
#[test]
fn a_task_without_privacy_is_refused_when_the_policy_requires_dp() {
    refused_at_welcome(
        task(false, 3, None),
        policy(&[("require_dp", "true")]),
        &[
            "policy refuses task `telco-churn`: [privacy]: the task has no [privacy] table, the policy requires differential privacy",
        ],
    );
}

/// (c) `min_partners = 1` against a policy's `min_contributors = 3`: a sum
/// of one partner's update is that partner's update.
#[test]
fn a_task_of_one_partner_is_refused_below_the_policys_min_contributors() {
    refused_at_welcome(
        task(false, 1, Some(LOCAL_DP)),
        policy(&[("min_contributors", "3")]),
        &[
            "policy refuses task `telco-churn`: min_partners: the task has 1, the policy requires at least 3",
        ],
    );
}

/// (c') `key_threshold = 2` against a policy's `min_key_threshold = 3`: two key
/// holders would be enough to decrypt, fewer than the partner accepts.
#[test]
fn a_task_whose_key_threshold_is_below_the_policys_minimum_is_refused() {
    let mut spec = TaskSpec::from_toml_str(&task(true, 3, Some(LOCAL_DP))).expect("task parses");
    spec.key_threshold = Some(2);
    refused_at_welcome(
        spec.to_toml_string().expect("task serialises"),
        policy(&[("min_key_threshold", "3")]),
        &[
            "policy refuses task `telco-churn`: key_threshold: the task has 2, the policy requires at least 3 (min_key_threshold)",
        ],
    );
}

/// (d) The rogue admits the agent to task `first`, closes the session, and
/// on the agent's reconnection welcomes it to `second`, a task of the same
/// name with another setting: the pinned hash refuses it. With `restart`, the
/// agent process is killed and started again in between (the pin is durable).
fn changed_mid_task(first: String, second: String, restart: bool) {
    assert_ne!(hash_hex(&first), hash_hex(&second));
    let (t1, t2) = (first.clone(), second.clone());
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let (t1, t2) = (t1.clone(), t2.clone());
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            if peer.session == 0 {
                // Honest so far: the agent admits the task and answers.
                peer.welcome(&t1).await;
                peer.send_kind(Down::StatsRequest(StatsRequest { request_id: 1 }))
                    .await;
                let _ = peer.recv_kind("StatsReport", WAIT).await;
                if restart {
                    // The test kills the agent.
                    peer.closed(WAIT).await;
                }
                // Otherwise returning closes the session; the agent reconnects.
            } else {
                peer.welcome(&t2).await;
                peer.send_kind(Down::StatsRequest(StatsRequest { request_id: 2 }))
                    .await;
                peer.closed(WAIT).await;
            }
        }
    });
    let p = policy(&[]);
    let name = rogue.start_agent(0, &p);
    rogue.wait_received(&name, "StatsReport", WAIT);
    if restart {
        rogue.kill_agent(&name);
        rogue.start_agent(0, &p);
    }
    let status = rogue.wait_agent_exit(&name, WAIT);
    assert!(
        !status.success(),
        "agent accepted the changed task ({status})\n{}",
        rogue.report()
    );
    assert_eq!(rogue.sessions(&name), 2, "{}", rogue.report());
    // Session 0 really admitted the task (so the pin was in force) ...
    assert!(
        rogue.kinds_in(&name, 0).contains(&"StatsReport"),
        "{}",
        rogue.report()
    );
    // ... and session 1 got nothing.
    rogue.assert_nothing_private_in(&name, 1);
    let log = rogue.agent_log(&name);
    for needle in [
        format!(
            "task `telco-churn` was admitted here with hash {}",
            hash_hex(&first)
        ),
        format!("a task of that name with hash {}", hash_hex(&second)),
    ] {
        assert!(
            log.contains(&needle),
            "agent log lacks `{needle}`\n{}",
            rogue.report()
        );
    }
}

/// The acceptable task, and the same with a lower noise multiplier.
fn task_and_less_noise() -> (String, String) {
    (
        task(false, 3, Some(LOCAL_DP)),
        task(
            false,
            3,
            Some(&LOCAL_DP.replace("noise_multiplier = 1.0", "noise_multiplier = 0.6")),
        ),
    )
}

/// (d) `[privacy]` changed mid-task, across a reconnection.
#[test]
fn a_changed_privacy_table_is_refused_on_reconnection() {
    let (first, second) = task_and_less_noise();
    changed_mid_task(first, second, false);
}

/// (d) `[privacy]` changed mid-task, across a restart of the agent.
#[test]
fn a_changed_privacy_table_is_refused_after_an_agent_restart() {
    let (first, second) = task_and_less_noise();
    changed_mid_task(first, second, true);
}

/// (d) Secure aggregation switched off mid-task (the policy alone would
/// allow either).
#[test]
fn secure_aggregation_switched_off_mid_task_is_refused() {
    changed_mid_task(
        task(true, 3, Some(LOCAL_DP)),
        task(false, 3, Some(LOCAL_DP)),
        false,
    );
}

/// (d) A renamed task is not a fresh start: an agent that admitted task T
/// refuses, in the same run, a task of another name.
#[test]
fn a_renamed_task_is_refused_mid_run() {
    let first = task(false, 3, Some(LOCAL_DP));
    let renamed = first.replacen("name = \"telco-churn\"", "name = \"telco-churn-2\"", 1);
    assert_eq!(
        TaskSpec::from_toml_str(&renamed).expect("renamed").name,
        "telco-churn-2"
    );
    let (t1, t2) = (first.clone(), renamed.clone());
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let (t1, t2) = (t1.clone(), t2.clone());
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            let t = if peer.session == 0 { t1 } else { t2 };
            peer.welcome(&t).await;
            peer.send_kind(Down::StatsRequest(StatsRequest { request_id: 1 }))
                .await;
            if peer.session == 0 {
                let _ = peer.recv_kind("StatsReport", WAIT).await;
            } else {
                peer.closed(WAIT).await;
            }
        }
    });
    let name = rogue.start_agent(0, &policy(&[]));
    let status = rogue.wait_agent_exit(&name, WAIT);
    assert!(!status.success(), "{status}\n{}", rogue.report());
    assert_eq!(rogue.sessions(&name), 2, "{}", rogue.report());
    assert!(rogue.kinds_in(&name, 0).contains(&"StatsReport"));
    rogue.assert_nothing_private_in(&name, 1);
    let log = rogue.agent_log(&name);
    assert!(
        log.contains(
            "this agent serves task `telco-churn`; the coordinator now sends task `telco-churn-2`"
        ),
        "{}",
        rogue.report()
    );
}

/// (d) A renamed task is not a fresh budget: the agent spends on task T,
/// is restarted, and the rogue offers the same task under a new name. The
/// partner's own budget (ε 6: one round of this task costs ε 5.22, two 7.77)
/// covers its dataset whatever the task is called, so the renamed task's
/// first round is declined as over budget, before any use of the rows.
#[test]
fn a_renamed_task_after_a_restart_is_not_a_fresh_budget() {
    let first = task(false, 3, Some(LOCAL_DP));
    let renamed = first.replacen("name = \"telco-churn\"", "name = \"telco-churn-fresh\"", 1);
    let spec = TaskSpec::from_toml_str(&renamed).expect("renamed task");
    assert_eq!(spec.name, "telco-churn-fresh");
    let (t1, t2) = (first.clone(), renamed.clone());
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let (t1, t2, spec) = (t1.clone(), t2.clone(), spec.clone());
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            if peer.session == 0 {
                peer.welcome(&t1).await;
                send_round(&peer, &spec, Vec::new()).await;
                // The test kills the agent once its update is in.
                peer.closed(WAIT).await;
            } else {
                peer.welcome(&t2).await;
                send_round(&peer, &spec, Vec::new()).await;
                if peer.recv_kind("Decline", WAIT).await.is_some() {
                    peer.send_kind(Down::Finished(TaskFinished {
                        detail: "rogue gives up".into(),
                    }))
                    .await;
                }
                peer.closed(WAIT).await;
            }
        }
    });
    let p = policy(&[]);
    let budget = ["--budget-epsilon", "6.0", "--budget-delta", "1e-6"];
    let name = rogue.start_agent_with(0, &p, &budget);
    rogue.wait_received(&name, "UpdateChunk", WAIT);
    rogue.kill_agent(&name);
    rogue.start_agent_with(0, &p, &budget);
    rogue.wait_sessions(&name, 2, WAIT);
    rogue.wait_agent_exit(&name, WAIT);
    assert!(
        rogue.kinds_in(&name, 0).contains(&"UpdateChunk"),
        "{}",
        rogue.report()
    );
    rogue.assert_nothing_private_in(&name, 1);
    let decline = rogue
        .received(&name)
        .into_iter()
        .find(|r| r.session == 1 && r.kind() == "Decline")
        .unwrap_or_else(|| panic!("no Decline in session 1\n{}", rogue.report()));
    let Some(Up::Decline(d)) = decline.message.kind else {
        unreachable!("a Decline")
    };
    assert_eq!(
        d.kind(),
        consortia_proto::DeclineKind::Budget,
        "{d:?}\n{}",
        rogue.report()
    );
}

/// A task that promises secure aggregation, then a round that asks for a
/// plaintext update (no collective key named): the agent declines the round
/// and sends neither an update nor an evaluation.
#[test]
fn a_plaintext_round_in_a_secure_task_is_declined() {
    let t = task(true, 3, Some(LOCAL_DP));
    let spec = TaskSpec::from_toml_str(&t).expect("task");
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let t = t.clone();
        let spec = spec.clone();
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            peer.welcome(&t).await;
            send_round(&peer, &spec, Vec::new()).await;
            if peer.recv_kind("Decline", WAIT).await.is_some() {
                peer.send_kind(Down::Finished(TaskFinished {
                    detail: "rogue gives up".into(),
                }))
                .await;
            }
            peer.closed(WAIT).await;
        }
    });
    let name = rogue.start_agent(0, &policy(&[]));
    let decline = rogue.wait_received(&name, "Decline", WAIT);
    let Some(Up::Decline(d)) = decline.message.kind else {
        unreachable!("a Decline")
    };
    assert_eq!(d.round, 1);
    assert!(
        d.reason.contains("secure aggregation"),
        "{d:?}\n{}",
        rogue.report()
    );
    rogue.wait_agent_exit(&name, WAIT);
    rogue.assert_nothing_private(&name);
    assert!(
        rogue.agent_log(&name).contains(
            "the task requires secure aggregation but the round asks for a plaintext update"
        ),
        "{}",
        rogue.report()
    );
}

/// Round 1 (attempt 1) with an all-zero model, under the collective key
/// `key_id` (empty: a plaintext round), as an honest coordinator starts it.
async fn send_round(peer: &Peer, spec: &TaskSpec, key_id: Vec<u8>) {
    let n = spec.param_count();
    let features = spec.schema.feature_count();
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + 120_000;
    peer.send_kind(Down::RoundStart(RoundStart {
        round: 1,
        param_count: n as u64,
        chunk_count: chunk_count(n),
        deadline_unix_ms: deadline,
        feature_mean: vec![0.0; features],
        feature_std: vec![1.0; features],
        train: true,
        model_round: 0,
        key_id,
        attempt: 1,
    }))
    .await;
    for index in 0..chunk_count(n) {
        peer.send_kind(Down::ModelChunk(ModelChunk {
            round: 1,
            index,
            values: consortia_proto::params_bytes(&vec![0.0; chunk_range(n, index).len()]),
        }))
        .await;
    }
}

// ---------------------------------------------------------------------------
// (e) A different task to one partner.

/// The rogue's shared state for one key ceremony among three partners.
struct Ceremony {
    /// Partner → the task it is sent.
    tasks: BTreeMap<String, String>,
    /// The key holders, in party order.
    committee: Vec<String>,
    session_id: [u8; 32],
    barrier: tokio::sync::Barrier,
    /// Party → its signed share, as received.
    shares: Mutex<BTreeMap<u32, SignedKeyShare>>,
    /// The key and its transcript, once computed.
    key: Mutex<Option<(CollectiveKey, [u8; 32])>>,
    /// Partner → its encrypted update of round 1.
    updates: Mutex<BTreeMap<String, Relayed>>,
    /// Partner → how it answered each decryption request, in order.
    outcomes: Mutex<BTreeMap<String, Vec<Answer>>>,
    /// (decryption, key holder) → its challenge commitment, then its seed.
    commitments: Mutex<BTreeMap<(usize, String), Vec<u8>>>,
    seeds: Mutex<BTreeMap<(usize, String), Vec<u8>>>,
    /// (decryption, contributor) → its signed sketch.
    sketches: Mutex<BTreeMap<(usize, String), ContributorSketch>>,
    /// An update the rogue made up (the same for every key holder).
    made_up: Mutex<Option<Vec<Vec<u8>>>>,
}

/// A partner's encrypted update as the rogue holds it: chunks, signature, rows.
type Relayed = (Vec<Vec<u8>>, Vec<u8>, u64);

/// A key holder's answer to a decryption request.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// Its partial decryption.
    Share,
    /// A `Decline` of kind `Decryption` with this reason.
    Refused(String),
    /// Nothing within the wait.
    Silent,
    /// Its signed sketch (asked for alone, [`Ask::sketch_only`]).
    Sketched,
}

impl Ceremony {
    async fn all_here(&self) -> bool {
        tokio::time::timeout(WAIT, self.barrier.wait())
            .await
            .is_ok()
    }

    /// The collective key the rogue sends: the honest sum of the shares it
    /// received, with the transcript of signed shares (the rogue cannot forge
    /// a partner's signature, and does not need to).
    fn collective_key(&self) -> (CollectiveKey, [u8; 32]) {
        let mut key = self.key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = key.as_ref() {
            return k.clone();
        }
        let shares = self
            .shares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let session = KeySession::new(HeParams::Secure128, self.session_id);
        let mut agg =
            CollectiveKeyAggregator::new(&session, self.committee.len() as u32).expect("committee");
        let parsed: Vec<PublicKeyShare> = shares
            .values()
            .map(|s| PublicKeyShare::from_bytes(&s.public_share, &session).expect("public share"))
            .collect();
        for p in &parsed {
            agg.add_commitment(p.party(), p.commitment())
                .expect("commitment");
        }
        for p in parsed {
            agg.add_share(p.party(), p).expect("share");
        }
        let collective = agg.finish().expect("collective key");
        let msg = CollectiveKey {
            session_id: self.session_id.to_vec(),
            params: u32::from(HeParams::Secure128.id()),
            committee: self.committee.clone(),
            key: collective.to_bytes(),
            transcript: shares.into_values().collect(),
        };
        let made = (msg, collective.key_id());
        *key = Some(made.clone());
        made
    }
}

/// One partner's session in the ceremony: Welcome with its task, key
/// generation (commit, reveal), the collective key, then a training round
/// under that key. The rogue relays honestly; only the tasks may differ.
async fn ceremony_session(mut peer: Peer, c: Arc<Ceremony>) {
    let Some((key, key_id, spec)) = key_ceremony(&mut peer, &c).await else {
        return;
    };
    peer.send_kind(Down::CollectiveKey(key)).await;
    // A training round under the key, as an honest coordinator would start it.
    send_round(&peer, &spec, key_id.to_vec()).await;
    if peer.recv_kind("EncryptedChunk", WAIT).await.is_some() {
        peer.send_kind(Down::Finished(TaskFinished {
            detail: "ceremony control done".into(),
        }))
        .await;
    }
    peer.closed(WAIT).await;
}

/// Welcome and an honest key ceremony (commit, reveal); the collective key
/// with its signed transcript, not yet sent, and the task the partner got.
async fn key_ceremony(
    peer: &mut Peer,
    c: &Ceremony,
) -> Option<(CollectiveKey, [u8; 32], TaskSpec)> {
    if !peer.expect_hello(WAIT).await || peer.session > 0 {
        return None;
    }
    let task_toml = c.tasks[&peer.name].clone();
    let spec = TaskSpec::from_toml_str(&task_toml).expect("task");
    let party = c
        .committee
        .iter()
        .position(|p| p == &peer.name)
        .expect("in the committee") as u32;
    peer.welcome(&task_toml).await;
    if !c.all_here().await {
        return None;
    }
    peer.send_kind(Down::Keygen(KeyGenRequest {
        session_id: c.session_id.to_vec(),
        params: u32::from(HeParams::Secure128.id()),
        party,
        parties: c.committee.len() as u32,
        committee: c.committee.clone(),
    }))
    .await;
    if peer.recv_kind("KeyCommit", WAIT).await.is_none() || !c.all_here().await {
        return None;
    }
    peer.send_kind(Down::KeyReveal(KeyReveal {
        session_id: c.session_id.to_vec(),
    }))
    .await;
    let Some(Up::KeyShare(share)) = peer.recv_kind("KeyShare", WAIT).await.and_then(|m| m.kind)
    else {
        return None;
    };
    c.shares.lock().unwrap_or_else(|e| e.into_inner()).insert(
        party,
        SignedKeyShare {
            party,
            partner: peer.name.clone(),
            public_share: share.public_share,
            signature: share.signature,
            certificate: peer.certificate.clone(),
        },
    );
    if !c.all_here().await {
        return None;
    }
    let (key, key_id) = c.collective_key();
    Some((key, key_id, spec))
}

/// Three agents (secure aggregation required by their policies); partner
/// `i` is sent `tasks[i]`. Runs the ceremony and a round; returns the rogue
/// once every agent has exited, with the partner names.
fn ceremony(tasks: [String; 3]) -> (Rogue, Vec<String>) {
    let (c, fed, names) = ceremony_state(tasks);
    let mut rogue = Rogue::start(fed, move |peer| ceremony_session(peer, c.clone()));
    let p = policy(&[("require_secure_aggregation", "true")]);
    for i in 0..3 {
        rogue.start_agent(i, &p);
    }
    (rogue, names)
}

/// The shared ceremony state for three partners, partner `i` sent `tasks[i]`.
fn ceremony_state(tasks: [String; 3]) -> (Arc<Ceremony>, Federation, Vec<String>) {
    let fed = Federation::new(TASK);
    let names: Vec<String> = fed.partners.iter().map(|(n, _)| n.clone()).collect();
    let mut committee = names.clone();
    committee.sort();
    let c = Arc::new(Ceremony {
        tasks: names.iter().cloned().zip(tasks).collect(),
        committee,
        session_id: consortia_proto::sha256(b"rogue key ceremony"),
        barrier: tokio::sync::Barrier::new(3),
        shares: Mutex::default(),
        key: Mutex::default(),
        updates: Mutex::default(),
        outcomes: Mutex::default(),
        commitments: Mutex::default(),
        seeds: Mutex::default(),
        sketches: Mutex::default(),
        made_up: Mutex::default(),
    });
    (c, fed, names)
}

/// Control for (e): the same task to all three, and the rogue's honest
/// relay of the ceremony gives a key every agent installs and encrypts
/// under (so the refusal in (e) is the tasks' doing).
#[test]
fn control_one_task_to_all_gives_a_key_and_encrypted_updates() {
    let t = task(true, 3, Some(LOCAL_DP));
    let (mut rogue, names) = ceremony([t.clone(), t.clone(), t]);
    for name in &names {
        rogue.wait_received(name, "EncryptedChunk", WAIT);
    }
    for name in &names {
        let status = rogue.wait_agent_exit(name, WAIT);
        assert!(status.success(), "{name}: {status}\n{}", rogue.report());
        assert!(
            rogue.agent_log(name).contains("federation key installed"),
            "{}",
            rogue.report()
        );
    }
    rogue.check_scripts();
}

/// (e) Two partners are sent task T, one a task of the same name with
/// another noise multiplier; each task alone is acceptable. Key holders
/// sign their public shares together with the task hash they pinned, so the
/// transcript of the collective key shows the split and every agent refuses
/// the key: nobody trains, nobody sends an update.
#[test]
fn a_different_task_to_one_partner_is_caught_by_the_key_transcript() {
    let t = task(true, 3, Some(LOCAL_DP));
    let other = task(
        true,
        3,
        Some(&LOCAL_DP.replace("noise_multiplier = 1.0", "noise_multiplier = 0.6")),
    );
    let (mut rogue, names) = ceremony([t.clone(), t, other]);
    let odd = names[2].clone();
    for name in &names {
        let status = rogue.wait_agent_exit(name, WAIT);
        assert!(
            !status.success(),
            "{name} accepted the key ({status})\n{}",
            rogue.report()
        );
    }
    for name in &names {
        rogue.assert_nothing_private(name);
        // The ceremony really ran: the refusal is of the key, not earlier.
        assert!(
            rogue.kinds(name).contains(&"KeyShare"),
            "{}",
            rogue.report()
        );
        let log = rogue.agent_log(name);
        assert!(
            log.contains("federation key refused"),
            "{name}\n{}",
            rogue.report()
        );
        let needle = if name == &odd {
            "is not signed by".to_string()
        } else {
            format!("the share given as `{odd}`'s is not signed by `{odd}` for this task")
        };
        assert!(
            log.contains(&needle),
            "{name}'s log lacks `{needle}`\n{}",
            rogue.report()
        );
    }
}

// ---------------------------------------------------------------------------
// Decryption attacks: reopening contributions, forged aggregates.
//
// The rogue runs the joint decryption as the coordinator does: the request
// and the aggregate's masks to every key holder, the holders' coin toss
// (which it relays honestly: it can do no better), each contributor's signed
// sketch under the joint challenge, then the sketches to every holder. What
// it lies about is the aggregate.

/// The aggregate the rogue asks the key holders to open, as the sum of the
/// contributors it names.
#[derive(Clone, Copy, Debug)]
enum Forged {
    /// The honest sum of the named contributors' updates.
    No,
    /// One contributor's masks passed off as the sum of all three.
    OneAsTheSum,
    /// The sum padded with the masks of an update the rogue made up (given
    /// as the third contributor's).
    Padded,
    /// The first contributor's masks counted twice, naming the real set.
    CountedTwice,
}

/// One decryption the rogue asks for: the contributors it names, the
/// attempt, and the aggregate.
#[derive(Clone, Debug)]
struct Ask {
    named: Vec<String>,
    attempt: u64,
    forged: Forged,
    /// Only the contributors' sketches are asked for, in coin toss 1, as
    /// when the sum is opened by other key holders than these (a t-of-N
    /// key's disjoint decryption set): no decryption request is sent.
    sketch_only: bool,
}

/// The decryption of attempt `attempt` of the sum of `named`, `forged`.
fn ask(named: &[String], attempt: u64, forged: Forged) -> Ask {
    Ask {
        named: named.to_vec(),
        attempt,
        forged,
        sketch_only: false,
    }
}

/// One partner's session: ceremony, key, an encrypted round, then the
/// decryptions `asks` (the partner is a key holder and a contributor).
async fn decryption_session(mut peer: Peer, c: Arc<Ceremony>, asks: Vec<Ask>) {
    let Some((key_msg, key_id, spec)) = key_ceremony(&mut peer, &c).await else {
        return;
    };
    peer.send_kind(Down::CollectiveKey(key_msg.clone())).await;
    send_round(&peer, &spec, key_id.to_vec()).await;
    // The partner's whole encrypted update.
    let mut chunks = Vec::new();
    let (signature, rows) = loop {
        let Some(Up::Encrypted(e)) = peer
            .recv_kind("EncryptedChunk", WAIT)
            .await
            .and_then(|m| m.kind)
        else {
            return;
        };
        chunks.push(e.ciphertext);
        if e.index + 1 == e.chunk_count {
            break (e.signature, e.example_count);
        }
    };
    c.updates
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer.name.clone(), (chunks, signature, rows));
    if !c.all_here().await {
        return;
    }
    let session = KeySession::new(HeParams::Secure128, c.session_id);
    let key = CollectivePublicKey::from_bytes(&key_msg.key, &session).expect("collective key");
    let spec_privacy = spec.privacy_spec().expect("privacy");
    let values = UpdateEncoding::for_round(
        spec_privacy.as_ref(),
        spec.param_count(),
        spec.min_partners as usize,
        &key,
        1,
    )
    .expect("encoding")
    .encoded_len() as u64;
    let hash = spec.canonical_hash().expect("task hash");
    for (i, ask) in asks.iter().enumerate() {
        let answer = ask_decryption(&mut peer, &c, &key, values, &hash, i, ask).await;
        c.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer.name.clone())
            .or_default()
            .push(answer);
        if !c.all_here().await {
            return;
        }
    }
    peer.send_kind(Down::Finished(TaskFinished {
        detail: "decryption attacks done".into(),
    }))
    .await;
    peer.closed(WAIT).await;
}

/// The next message of `kind` from the agent, or its refusal to decrypt
/// (`Err`, the reason), or `Err("")` when nothing comes within the wait.
async fn answer(peer: &mut Peer, kind: &str) -> Result<ClientMessage, String> {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = peer.recv_timeout(left).await else {
            return Err(String::new());
        };
        if common::rogue::kind_name(&m) == kind {
            return Ok(m);
        }
        if let Some(Up::Decline(d)) = &m.kind
            && d.kind() == consortia_proto::DeclineKind::Decryption
        {
            return Err(d.reason.clone());
        }
    }
}

/// Waits for the agent's `kind` (`answer`) and records what `bytes` takes
/// of it under `me` in `into`; its refusal (`Some`, the reason, `""` when
/// nothing came) otherwise.
async fn record(
    peer: &mut Peer,
    kind: &str,
    into: &Mutex<BTreeMap<(usize, String), Vec<u8>>>,
    me: &(usize, String),
    bytes: impl FnOnce(Up) -> Option<Vec<u8>>,
) -> Option<String> {
    match answer(peer, kind).await {
        Ok(m) => {
            let Some(b) = m.kind.and_then(bytes) else {
                unreachable!("a message of the kind asked for")
            };
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(me.clone(), b);
            None
        }
        Err(why) => Some(why),
    }
}

/// The masks (in mask-chunk wire form) of the aggregate `ask` claims, and
/// its mask digest: `ask.forged` applied to the round-1 updates, labelled
/// as a sum of the contributors named.
fn claimed_masks(
    c: &Ceremony,
    key: &CollectivePublicKey,
    values: u64,
    ask: &Ask,
) -> (Vec<Vec<u8>>, [u8; 32]) {
    let updates = c.updates.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let shape = Shape::new(key, values).expect("shape");
    let made_up = c
        .made_up
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(|| {
            Encryptor::new(key)
                .encrypt(&vec![1u64; values as usize])
                .expect("an update of the rogue's making")
                .chunks()
                .map(<[u8]>::to_vec)
                .collect()
        })
        .clone();
    let n = &ask.named;
    let summed: Vec<&Vec<Vec<u8>>> = match ask.forged {
        Forged::No => n.iter().map(|p| &updates[p].0).collect(),
        Forged::OneAsTheSum => vec![&updates[&n[0]].0],
        Forged::Padded => vec![&updates[&n[0]].0, &updates[&n[1]].0, &made_up],
        Forged::CountedTwice => vec![&updates[&n[0]].0, &updates[&n[0]].0, &updates[&n[1]].0],
    };
    let mut sum = Aggregate::new(shape).expect("aggregate");
    for chunks in summed {
        for (i, chunk) in chunks.iter().enumerate() {
            sum.add_bytes(i as u32, chunk).expect("chunk");
        }
    }
    let mut claimed = Aggregate::new(shape).expect("aggregate");
    let masks: Vec<Vec<u8>> = (0..shape.chunks())
        .map(|i| {
            let m = sum.mask_chunk(i).expect("mask chunk");
            claimed
                .set_mask_chunk(i, &m, n.len() as u32)
                .expect("masks of the named sum");
            m
        })
        .collect();
    (masks, claimed.mask_digest())
}

/// Runs decryption number `index` (`ask`) with this key holder and
/// contributor, as the coordinator does, the holders' steps in lockstep;
/// returns the holder's answer.
async fn ask_decryption(
    peer: &mut Peer,
    c: &Ceremony,
    key: &CollectivePublicKey,
    values: u64,
    task_hash: &[u8; 32],
    index: usize,
    ask: &Ask,
) -> Answer {
    let updates = c.updates.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let certificates: BTreeMap<String, Vec<u8>> = c
        .shares
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|s| (s.partner.clone(), s.certificate.clone()))
        .collect();
    let (masks, digest) = claimed_masks(c, key, values, ask);
    let attempt = ask.attempt;
    let contributions: Vec<Contribution> = ask
        .named
        .iter()
        .map(|n| Contribution {
            partner: n.clone(),
            example_count: updates[n].2,
            certificate: certificates[n].clone(),
        })
        .collect();
    let sum = consortia_proto::contributions_digest(&contributions);
    if ask.sketch_only {
        peer.send_kind(Down::SketchRequest(SketchRequest {
            toss: 1,
            round: 1,
            attempt,
            challenge: vec![7; 32],
            aggregate_digest: digest.to_vec(),
            contributions_digest: sum.to_vec(),
        }))
        .await;
        return match answer(peer, "SignedSketch").await {
            Ok(_) => Answer::Sketched,
            Err(why) if why.is_empty() => Answer::Silent,
            Err(why) => Answer::Refused(why),
        };
    }
    peer.send_kind(Down::Decrypt(DecryptRequest {
        toss: 0,
        round: 1,
        contributions,
        min_contributors: 2,
        aggregate_digest: digest.to_vec(),
        values,
        attempt,
        task_hash: task_hash.to_vec(),
    }))
    .await;
    for (i, m) in masks.into_iter().enumerate() {
        peer.send_kind(Down::AggregateMasks(AggregateMasks {
            toss: 0,
            round: 1,
            attempt,
            index: i as u32,
            masks: m,
        }))
        .await;
    }
    let me = (index, peer.name.clone());
    // The coin toss, relayed honestly: every commitment, then every seed.
    let mut refused = record(peer, "ChallengeCommit", &c.commitments, &me, |m| match m {
        Up::ChallengeCommit(m) => Some(m.commitment),
        _ => None,
    })
    .await;
    if !c.all_here().await {
        return Answer::Silent;
    }
    // Every holder's commitment (or seed) in this decryption.
    let of_this = |m: &Mutex<BTreeMap<(usize, String), Vec<u8>>>| -> Vec<(String, Vec<u8>)> {
        m.lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((i, _), _)| *i == index)
            .map(|((_, h), v)| (h.clone(), v.clone()))
            .collect()
    };
    if refused.is_none() {
        let commitments = of_this(&c.commitments)
            .into_iter()
            .map(|(holder, commitment)| HolderCommitment { holder, commitment })
            .collect();
        peer.send_kind(Down::ChallengeCommitments(ChallengeCommitments {
            toss: 0,
            round: 1,
            attempt,
            commitments,
        }))
        .await;
        refused = record(peer, "ChallengeSeed", &c.seeds, &me, |m| match m {
            Up::ChallengeSeed(m) => Some(m.seed),
            _ => None,
        })
        .await;
    }
    if !c.all_here().await {
        return Answer::Silent;
    }
    if refused.is_none() {
        let seeds = of_this(&c.seeds);
        let reveals = seeds
            .iter()
            .map(|(holder, seed)| HolderSeed {
                holder: holder.clone(),
                seed: seed.clone(),
            })
            .collect();
        peer.send_kind(Down::ChallengeReveals(ChallengeReveals {
            toss: 0,
            round: 1,
            attempt,
            seeds: reveals,
        }))
        .await;
        // The challenge, as every holder draws it.
        let seeds: Vec<(String, [u8; 32])> = seeds
            .into_iter()
            .map(|(h, s)| (h, s.try_into().expect("32-byte seed")))
            .collect();
        let challenge = DecryptionContext {
            toss: 0,
            task_hash: *task_hash,
            key_id: key.key_id(),
            round: 1,
            attempt,
            aggregate_digest: digest,
        }
        .joint_challenge(seeds.iter().map(|(h, s)| (h.as_str(), s)));
        // This partner's signed sketch, as a contributor: for the attempt
        // asked if it signed an update for it, else for the attempt it did.
        for sketched in [attempt, 1] {
            peer.send_kind(Down::SketchRequest(SketchRequest {
                toss: 0,
                round: 1,
                attempt: sketched,
                challenge: challenge.to_vec(),
                aggregate_digest: digest.to_vec(),
                contributions_digest: sum.to_vec(),
            }))
            .await;
            if let Ok(ClientMessage {
                kind: Some(Up::Sketch(s)),
            }) = answer(peer, "SignedSketch").await
            {
                c.sketches.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    me.clone(),
                    ContributorSketch {
                        partner: peer.name.clone(),
                        sketch: s.sketch,
                        signature: s.signature,
                    },
                );
                break;
            }
        }
    }
    if !c.all_here().await {
        return Answer::Silent;
    }
    if let Some(why) = refused {
        return if why.is_empty() {
            Answer::Silent
        } else {
            Answer::Refused(why)
        };
    }
    let sketches: Vec<ContributorSketch> = c
        .sketches
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|((i, name), _)| *i == index && ask.named.contains(name))
        .map(|(_, s)| s.clone())
        .collect();
    peer.send_kind(Down::ContributorSketches(ContributorSketches {
        toss: 0,
        round: 1,
        attempt,
        sketches,
    }))
    .await;
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match peer.recv_timeout(left).await.and_then(|m| m.kind) {
            Some(Up::DecryptionShare(p)) if p.index + 1 == p.piece_count => return Answer::Share,
            Some(Up::Decline(d)) if d.kind() == consortia_proto::DeclineKind::Decryption => {
                return Answer::Refused(d.reason);
            }
            Some(_) => continue,
            None => return Answer::Silent,
        }
    }
}

/// Runs the decryptions `asks` against three key holders (each a
/// contributor) whose policy lets a sum of two be opened (so only reuse or
/// the sketch check can refuse it).
fn decryption_attack(
    asks: impl FnOnce(&[String]) -> Vec<Ask>,
) -> (Rogue, Arc<Ceremony>, Vec<String>) {
    let t = task(true, 2, Some(LOCAL_DP));
    let (c, fed, names) = ceremony_state([t.clone(), t.clone(), t]);
    let asks = asks(&c.committee);
    let shared = c.clone();
    let mut rogue = Rogue::start(fed, move |peer| {
        decryption_session(peer, shared.clone(), asks.clone())
    });
    let p = policy(&[
        ("require_secure_aggregation", "true"),
        ("min_contributors", "2"),
    ]);
    for i in 0..3 {
        rogue.start_agent(i, &p);
    }
    for name in &names {
        let status = rogue.wait_agent_exit(name, WAIT);
        assert!(status.success(), "{name}: {status}\n{}", rogue.report());
    }
    rogue.check_scripts();
    (rogue, c, names)
}

/// Every holder's answers, in order.
fn outcomes(c: &Ceremony) -> BTreeMap<String, Vec<Answer>> {
    c.outcomes.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Checks that every key holder of `names` answered the first of two
/// decryptions and refused the second (`second`), saying `why`.
fn answered_then_refused(rogue: &Rogue, c: &Ceremony, names: &[String], second: &str, why: &str) {
    let outcomes = outcomes(c);
    for name in names {
        let got = &outcomes[name];
        assert_eq!(got[0], Answer::Share, "{name}: {got:?}\n{}", rogue.report());
        match &got[1] {
            Answer::Refused(said) => assert!(said.contains(why), "{name}: {said}"),
            other => panic!("{name} answered {second}: {other:?}\n{}", rogue.report()),
        }
    }
}

/// Two decryptions in one round with nested contributor sets: every key
/// holder answers the first ({A, B, C}, the control: an honest decryption
/// through the coin toss and the sketches succeeds in this harness) and
/// refuses the second ({A, B}), so C's update is never the difference of
/// two opened sums.
#[test]
fn a_second_decryption_of_a_nested_set_in_the_same_round_is_refused() {
    let (rogue, c, names) = decryption_attack(|committee| {
        vec![
            ask(committee, 1, Forged::No),
            ask(&committee[..2], 1, Forged::No),
        ]
    });
    answered_then_refused(
        &rogue,
        &c,
        &names,
        "the nested sum",
        "already tossed the coin for attempt 1 of that round (for another sum",
    );
    for name in &names {
        assert!(
            rogue.agent_log(name).contains("decryption refused"),
            "{}",
            rogue.report()
        );
    }
}

/// Two sums of one attempt, the second opened by other key holders (a t-of-N
/// key's disjoint decryption set, which no holder's record links to the
/// first): the contributors sign sketches for one sum per attempt, so after
/// the honest decryption of {A, B, C} every agent refuses to sketch its
/// update for {A, B} (C's update would be the difference), and says so.
#[test]
fn contributors_refuse_to_sketch_a_second_sum_of_the_attempt() {
    let (rogue, c, names) = decryption_attack(|committee| {
        vec![
            ask(committee, 1, Forged::No),
            Ask {
                sketch_only: true,
                ..ask(&committee[..2], 1, Forged::No)
            },
        ]
    });
    answered_then_refused(
        &rogue,
        &c,
        &names,
        "a sketch for the nested sum",
        "already sketched its update for another sum of this attempt",
    );
    for name in &names {
        assert!(
            rogue
                .agent_log(name)
                .contains("a coordinator may open one sum per attempt"),
            "{}",
            rogue.report()
        );
    }
}

/// A rerun that reuses the same updates under a new attempt number: the
/// contributors sign sketches only for the attempt they sent an update
/// for, and only one challenge per coin toss of it (so the rogue's second
/// ask, for toss 0 of attempt 1 under the new challenge, is refused too):
/// it has no sketch to relay, and every key holder refuses.
#[test]
fn a_rerun_reusing_contributions_under_a_new_attempt_is_refused() {
    let (rogue, c, names) = decryption_attack(|committee| {
        vec![ask(committee, 1, Forged::No), ask(committee, 2, Forged::No)]
    });
    answered_then_refused(
        &rogue,
        &c,
        &names,
        "the rerun",
        "did not check the sketches of this sum",
    );
    for name in &names {
        // As a contributor, it refused to sketch an attempt it sent nothing for.
        assert!(
            rogue
                .agent_log(name)
                .contains("no sketch for attempt 2 of round 1"),
            "{}",
            rogue.report()
        );
    }
}

/// A forged aggregate, asked to be opened as the sum of the three genuine
/// contributors, with their genuine signed sketches: every key holder
/// refuses under the sketch check, logs why, and sends no share.
fn forged_aggregate_is_refused(forged: Forged) {
    let (rogue, c, names) = decryption_attack(|committee| vec![ask(committee, 1, forged)]);
    let outcomes = outcomes(&c);
    let sketched = c.sketches.lock().unwrap_or_else(|e| e.into_inner()).len();
    assert_eq!(
        sketched,
        3,
        "every contributor signed its sketch\n{}",
        rogue.report()
    );
    for name in &names {
        match &outcomes[name][0] {
            Answer::Refused(why) => assert!(
                why.contains("not the sum of the named contributors' masks"),
                "{name} ({forged:?}): {why}"
            ),
            other => panic!(
                "{name} answered a forged aggregate ({forged:?}): {other:?}\n{}",
                rogue.report()
            ),
        }
        let log = rogue.agent_log(name);
        assert!(
            log.contains("decryption refused") && log.contains("signed sketches do not add up"),
            "{}",
            rogue.report()
        );
        assert!(
            !rogue.kinds(name).contains(&"DecryptionSharePiece"),
            "{name} sent a share of a forged aggregate\n{}",
            rogue.report()
        );
    }
}

/// (a) One contributor's masks passed off as the sum of three.
#[test]
fn one_contributors_masks_passed_off_as_the_sum_are_refused() {
    forged_aggregate_is_refused(Forged::OneAsTheSum);
}

/// (b) The sum padded with a made-up update's masks.
#[test]
fn a_sum_padded_with_a_made_up_update_is_refused() {
    forged_aggregate_is_refused(Forged::Padded);
}

/// (c) A sum that counts one contribution twice while naming the real set.
#[test]
fn a_sum_counting_a_contribution_twice_is_refused() {
    forged_aggregate_is_refused(Forged::CountedTwice);
}

// ---------------------------------------------------------------------------
// Key attacks against one agent.

/// A key the rogue made itself (it holds every secret share), in the form a
/// coordinator sends: `transcript` as given.
fn rogue_key(committee: &[String], transcript: Vec<SignedKeyShare>) -> CollectiveKey {
    let session = KeySession::new(HeParams::Secure128, [42; 32]);
    let generator = consortia_he::KeyShareGen::new(&session);
    let mut agg =
        CollectiveKeyAggregator::new(&session, committee.len() as u32).expect("committee");
    let shares: Vec<_> = (0..committee.len() as u32)
        .map(|i| generator.generate(consortia_he::PartyId(i)))
        .collect();
    for s in &shares {
        agg.add_commitment(s.public.party(), s.commitment)
            .expect("commitment");
    }
    for s in shares {
        agg.add_share(s.public.party(), s.public).expect("share");
    }
    CollectiveKey {
        session_id: vec![42; 32],
        params: u32::from(HeParams::Secure128.id()),
        committee: committee.to_vec(),
        key: agg.finish().expect("key").to_bytes(),
        transcript,
    }
}

/// The rogue welcomes the agent with an acceptable secure task, then sends
/// `key` as the federation key and starts an encrypted round under it.
async fn swap_key(mut peer: Peer, task: String, key: CollectiveKey) {
    if !peer.expect_hello(WAIT).await {
        return;
    }
    peer.welcome(&task).await;
    let spec = TaskSpec::from_toml_str(&task).expect("task");
    let session = KeySession::new(HeParams::Secure128, [42; 32]);
    let key_id = CollectivePublicKey::from_bytes(&key.key, &session)
        .expect("key")
        .key_id();
    peer.send_kind(Down::CollectiveKey(key)).await;
    send_round(&peer, &spec, key_id.to_vec()).await;
    peer.closed(WAIT).await;
}

fn key_swap_is_refused(transcript: impl Fn(&Federation) -> Vec<SignedKeyShare>, expect: &str) {
    let fed = Federation::new(TASK);
    let mut committee: Vec<String> = fed.partners.iter().map(|(n, _)| n.clone()).collect();
    committee.sort();
    let key = rogue_key(&committee, transcript(&fed));
    let t = task(true, 3, Some(LOCAL_DP));
    let mut rogue = Rogue::start(fed, move |peer| swap_key(peer, t.clone(), key.clone()));
    let name = rogue.start_agent(0, &policy(&[("require_secure_aggregation", "true")]));
    let status = rogue.wait_agent_exit(&name, WAIT);
    assert!(
        !status.success(),
        "agent took the key ({status})\n{}",
        rogue.report()
    );
    let log = rogue.agent_log(&name);
    assert!(
        log.contains("federation key refused") && log.contains(expect),
        "agent log lacks `{expect}`\n{}",
        rogue.report()
    );
    for kind in ["EncryptedChunk", "UpdateChunk", "EvalReport"] {
        assert!(
            !rogue.kinds(&name).contains(&kind),
            "{kind} sent under a rogue key\n{}",
            rogue.report()
        );
    }
}

/// Key swap without a transcript: the rogue sends a key it holds the secret
/// of; the agent refuses it and encrypts nothing under it.
#[test]
fn a_key_without_a_transcript_is_refused() {
    key_swap_is_refused(|_| Vec::new(), "transcript has 0 signed shares");
}

/// Key swap with a forged transcript: every share carries the named
/// partner's genuine certificate, but the signatures are the rogue's own
/// (made with the coordinator's key), so none verifies.
#[test]
fn a_key_with_a_forged_transcript_is_refused() {
    key_swap_is_refused(
        |fed| {
            let signer =
                consortia_ledger::Signer::from_pkcs8_pem_file(fed.pki.coordinator_key_path())
                    .expect("coordinator key");
            let mut names: Vec<String> = fed.partners.iter().map(|(n, _)| n.clone()).collect();
            names.sort();
            let session = KeySession::new(HeParams::Secure128, [42; 32]);
            let generator = consortia_he::KeyShareGen::new(&session);
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let share = generator
                        .generate(consortia_he::PartyId(i as u32))
                        .public
                        .to_bytes();
                    let d =
                        consortia_proto::key_share_digest(&[42; 32], i as u32, n, &[0; 32], &share);
                    SignedKeyShare {
                        party: i as u32,
                        partner: n.clone(),
                        public_share: share,
                        signature: signer.sign_hash(&d).expect("sign"),
                        certificate: consortia_pki::read_ca_certificate(
                            &fed.pki.partner_cert_path(n),
                        )
                        .expect("certificate"),
                    }
                })
                .collect()
        },
        "is not signed by",
    );
}

/// Fast64 instead of Secure128: the agent refuses to take part in the key
/// generation (no commitment leaves it).
#[test]
fn a_key_generation_with_fast64_is_refused() {
    let fed = Federation::new(TASK);
    let mut committee: Vec<String> = fed.partners.iter().map(|(n, _)| n.clone()).collect();
    committee.sort();
    let t = task(true, 3, Some(LOCAL_DP));
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let (t, committee) = (t.clone(), committee.clone());
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            peer.welcome(&t).await;
            let party = committee.iter().position(|p| p == &peer.name).unwrap_or(0) as u32;
            peer.send_kind(Down::Keygen(KeyGenRequest {
                session_id: vec![7; 32],
                params: u32::from(HeParams::Fast64.id()),
                party,
                parties: committee.len() as u32,
                committee,
            }))
            .await;
            peer.wait_log("key generation refused", WAIT).await;
            peer.send_kind(Down::Finished(TaskFinished {
                detail: "fast64 attack done".into(),
            }))
            .await;
            peer.closed(WAIT).await;
        }
    });
    let name = rogue.start_agent(
        0,
        &policy(&[
            ("require_secure_aggregation", "true"),
            ("allowed_he_params", r#"["secure128"]"#),
        ]),
    );
    rogue.wait_agent_exit(&name, WAIT);
    let log = rogue.agent_log(&name);
    assert!(
        log.contains("key generation refused") && log.contains("fast64"),
        "{}",
        rogue.report()
    );
    assert!(
        !rogue.kinds(&name).contains(&"KeyCommit"),
        "a commitment left for a Fast64 key\n{}",
        rogue.report()
    );
    rogue.check_scripts();
}

// ---------------------------------------------------------------------------
// Evaluation the partner's budget cannot pay for.

/// The rogue asks for the final evaluation (`train = false`) of a model of
/// its choosing from a partner whose own budget cannot pay for one: the
/// partner declines before scoring a held-out row, and no report leaves.
#[test]
fn an_evaluation_the_budget_cannot_pay_for_is_declined_before_scoring() {
    let t = task(true, 3, Some(common::RECORD_DP));
    let spec = TaskSpec::from_toml_str(&t).expect("task");
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let (t, spec) = (t.clone(), spec.clone());
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            peer.welcome(&t).await;
            let n = spec.param_count();
            let features = spec.schema.feature_count();
            peer.send_kind(Down::RoundStart(RoundStart {
                round: 21,
                param_count: n as u64,
                chunk_count: chunk_count(n),
                deadline_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock")
                    .as_millis() as u64
                    + 120_000,
                // A crafted standardisation and model: one feature blown up.
                feature_mean: vec![0.0; features],
                feature_std: vec![1e-3; features],
                train: false,
                model_round: 20,
                key_id: Vec::new(),
                attempt: 1,
            }))
            .await;
            for index in 0..chunk_count(n) {
                let len = chunk_range(n, index).len();
                let mut values = vec![0.0; len];
                if index == 0 {
                    values[0] = 50.0;
                }
                peer.send_kind(Down::ModelChunk(ModelChunk {
                    round: 21,
                    index,
                    values: consortia_proto::params_bytes(&values),
                }))
                .await;
            }
            peer.recv_kind("Decline", WAIT).await;
            peer.send_kind(Down::Finished(TaskFinished {
                detail: "evaluation attack done".into(),
            }))
            .await;
            peer.closed(WAIT).await;
        }
    });
    // One evaluation at σ_e = 10 costs about ε 0.5 at δ = 1e-5; this
    // partner's own budget is ε 0.1.
    let name = rogue.start_agent_with(
        0,
        &policy(&[("require_secure_aggregation", "true")]),
        &["--budget-epsilon", "0.1", "--budget-delta", "1e-5"],
    );
    rogue.wait_agent_exit(&name, WAIT);
    rogue.check_scripts();
    let kinds = rogue.kinds(&name);
    assert!(kinds.contains(&"Decline"), "{}", rogue.report());
    for private in ["EvalReport", "StatsReport", "UpdateChunk", "EncryptedChunk"] {
        assert!(
            !kinds.contains(&private),
            "{private} sent although the budget cannot pay for it\n{}",
            rogue.report()
        );
    }
    let declined = rogue
        .received(&name)
        .into_iter()
        .find_map(|r| match r.message.kind {
            Some(Up::Decline(d)) => Some(d),
            _ => None,
        });
    let d = declined.expect("a decline");
    assert_eq!(d.kind(), consortia_proto::DeclineKind::Budget, "{d:?}");
    assert!(d.reason.contains("budget"), "{}", d.reason);
}
