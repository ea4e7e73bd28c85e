//! What a partner's evaluation report carries, seen by a coordinator: a scripted one
//! ([`Rogue`]) that asks a real agent for the final evaluation of a model it chose, once in a
//! task with `[privacy]` and once in a task without.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::rogue::{Rogue, WAIT};
use common::{Federation, PERMISSIVE_POLICY, TASK};
use consortia_model::{EvalPartial, LogisticModel, TaskSpec};
use consortia_proto::{
    ModelChunk, RoundStart, TaskFinished, chunk_count, chunk_range, client_message::Kind as Up,
    server_message::Kind as Down,
};

/// Record-level local DP at the default evaluation noise (σ_e = 10).
const DP: &str = r#"unit = "record"
placement = "local"
epsilon = 8.0
delta = 1e-5
clip_norm = 1.0
noise_multiplier = 1.0
sampling_rate = 0.02
steps_per_round = 10
"#;

/// The bundled task, with `privacy` as its `[privacy]` table.
fn task(privacy: Option<&str>) -> String {
    let mut spec = TaskSpec::from_toml_str(TASK).expect("bundled task parses");
    spec.privacy = privacy.map(|p| toml::from_str::<toml::Table>(p).expect("privacy table"));
    spec.to_toml_string().expect("task serialises")
}

/// A model whose scores spread over [0, 1]: small alternating weights.
fn model_params(spec: &TaskSpec) -> Vec<f64> {
    (0..spec.schema.param_count())
        .map(|i| if i % 2 == 0 { 0.4 } else { -0.3 })
        .collect()
}

/// The rogue sends `task`, then the final evaluation (`train = false`) of [`model_params`]
/// with the identity standardisation, and returns what the agent of partner 0 reported,
/// with the exact partial of that model on the partner's held-out rows.
fn evaluation_report(task_toml: String) -> (EvalPartial, EvalPartial, Rogue, String) {
    let spec = TaskSpec::from_toml_str(&task_toml).expect("task");
    let params = model_params(&spec);
    let features = spec.schema.feature_count();
    let (t, p) = (task_toml.clone(), params.clone());
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + 120_000;
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let (t, p) = (t.clone(), p.clone());
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            peer.welcome(&t).await;
            let n = p.len();
            peer.send_kind(Down::RoundStart(RoundStart {
                round: 1,
                param_count: n as u64,
                chunk_count: chunk_count(n),
                deadline_unix_ms: deadline,
                feature_mean: vec![0.0; features],
                feature_std: vec![1.0; features],
                train: false,
                model_round: 0,
                key_id: Vec::new(),
                attempt: 1,
            }))
            .await;
            for index in 0..chunk_count(n) {
                peer.send_kind(Down::ModelChunk(ModelChunk {
                    round: 1,
                    index,
                    values: p[chunk_range(n, index)].to_vec(),
                }))
                .await;
            }
            if peer.recv_kind("EvalReport", WAIT).await.is_some() {
                peer.send_kind(Down::Finished(TaskFinished {
                    detail: "evaluation received".into(),
                }))
                .await;
            }
            peer.closed(WAIT).await;
        }
    });
    let name = rogue.start_agent(0, PERMISSIVE_POLICY);
    let received = rogue.wait_received(&name, "EvalReport", WAIT);
    let Some(Up::Eval(report)) = received.message.kind else {
        unreachable!("an EvalReport")
    };
    assert_eq!(report.model_round, 0);
    let reported: EvalPartial =
        serde_json::from_slice(&report.partial_json).expect("the report is an EvalPartial");
    // The exact evaluation, computed here from the partner's own file.
    let mut data = consortia_client::local::LocalData::load(&rogue.fed.partners[0].1, &spec, &name)
        .expect("partner data");
    let model = LogisticModel::from_params(&params, features).expect("model");
    let exact = data
        .evaluate(&model, &vec![0.0; features], &vec![1.0; features])
        .expect("exact evaluation");
    let status = rogue.wait_agent_exit(&name, WAIT);
    assert!(status.success(), "{status}\n{}", rogue.report());
    (reported, exact, rogue, name)
}

/// Without `[privacy]` the report is the exact evaluation, at full resolution.
#[test]
fn without_privacy_the_evaluation_is_exact() {
    let (reported, exact, rogue, name) = evaluation_report(task(None));
    assert_eq!(reported.bins(), consortia_model::SCORE_BINS);
    assert_eq!(
        (
            reported.n,
            reported.tp,
            reported.fp,
            reported.tn,
            reported.fn_
        ),
        (exact.n, exact.tp, exact.fp, exact.tn, exact.fn_)
    );
    assert_eq!(reported.pos_hist, exact.pos_hist);
    assert_eq!(reported.neg_hist, exact.neg_hist);
    assert!((reported.log_loss_sum - exact.log_loss_sum).abs() < 1e-9);
    // The model really spreads the scores (the DP test below relies on it).
    let used = |h: &[u64]| h.iter().filter(|&&c| c > 0).count();
    assert!(used(&exact.coarsen(20).unwrap().neg_hist) >= 3);
    assert!(!rogue.agent_log(&name).contains("discrete Gaussian"));
}

/// With `[privacy]` the report holds two 20-bin histograms whose counts are the exact ones
/// plus noise, every other figure derived from them; the partner charged the evaluation to
/// its own ledger first.
///
/// Each of the 40 counts differs from the exact count independently with probability at least
/// 0.48 (an empty bin stays at 0 only when its noise is ≤ 0, P ≈ 0.52 at σ = 10; a non-empty
/// one only when its noise is 0, P ≈ 0.04), so fewer than 5 differing counts has probability
/// below P(Bin(40, 0.48) < 5) < 1e-6: the false-failure rate of this test.
#[test]
fn with_privacy_the_evaluation_is_a_noised_coarse_histogram() {
    let (reported, exact, rogue, name) = evaluation_report(task(Some(DP)));
    assert_eq!(reported.bins(), 20);
    reported.validate().unwrap();
    let rebuilt =
        EvalPartial::from_histograms(reported.pos_hist.clone(), reported.neg_hist.clone()).unwrap();
    assert_eq!(reported, rebuilt, "every figure comes from the histograms");
    let coarse = exact.coarsen(20).unwrap();
    let differing = reported
        .pos_hist
        .iter()
        .zip(&coarse.pos_hist)
        .chain(reported.neg_hist.iter().zip(&coarse.neg_hist))
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differing >= 5,
        "only {differing} of 40 counts differ from the exact ones\nreported {reported:?}\nexact {coarse:?}"
    );
    // The totals are noised too, by a few σ at most (40 counts of σ 10: the total's noise has
    // standard deviation ≈ 63 before clamping, which only adds).
    assert!(
        reported.n + 400 >= exact.n && reported.n <= exact.n + 800,
        "{} vs {}",
        reported.n,
        exact.n
    );
    let log = rogue.agent_log(&name);
    assert!(log.contains("discrete Gaussian noise (σ 10)"), "{log}");

    // Write-ahead: the partner's own ledger holds the evaluation's charge.
    let entries =
        consortia_ledger::load_entries(rogue.fed.agent_state(&name).join("ledger")).unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0].record;
    assert_eq!(e.mechanism, "evaluation-discrete-gaussian");
    assert_eq!(
        e.charged.as_ref().unwrap().events,
        vec![consortia_ledger::entry::StoredEvent::Zcdp {
            rho: 0.005,
            count: 1
        }]
    );
}
