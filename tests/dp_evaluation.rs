//! What a partner's evaluation report carries, seen by a coordinator: a scripted one
//! ([`Rogue`]) that asks a real agent for the final evaluation of a model it chose, once in a
//! task with `[privacy]` and once in a task without; and what its feature statistics carry.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::rogue::{Rogue, WAIT};
use common::{Federation, PERMISSIVE_POLICY, TASK};
use consortia_model::{EvalPartial, Evaluation, TaskSpec};
use consortia_proto::{
    ModelChunk, RoundStart, StatsRequest, TaskFinished, chunk_count, chunk_range,
    client_message::Kind as Up, server_message::Kind as Down,
};

/// Record-level local DP at the default evaluation noise (σ_e = 10).
const DP: &str = common::RECORD_DP;

/// The bundled task, with `privacy` as its `[privacy]` table.
fn task(privacy: Option<&str>) -> String {
    let mut spec = TaskSpec::from_toml_str(TASK).expect("bundled task parses");
    spec.privacy = privacy.map(|p| toml::from_str::<toml::Table>(p).expect("privacy table"));
    spec.to_toml_string().expect("task serialises")
}

/// A model whose scores spread over [0, 1]: small alternating weights.
fn model_params(spec: &TaskSpec) -> Vec<f64> {
    (0..spec.param_count())
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
                    values: consortia_proto::params_bytes(&p[chunk_range(n, index)]),
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
    let reported: Evaluation =
        serde_json::from_slice(&report.partial_json).expect("the report is an Evaluation");
    let Evaluation::Binary(reported) = reported else {
        panic!("a churn model's evaluation is binary")
    };
    // The exact evaluation, computed here from the partner's own file.
    let mut data = consortia_client::local::LocalData::load(&rogue.fed.partners[0].1, &spec, &name)
        .expect("partner data");
    let model = consortia_model::model_with_params(&spec, &params).expect("model");
    let exact = data
        .evaluate(model.as_ref(), &vec![0.0; features], &vec![1.0; features])
        .expect("exact evaluation")
        .as_binary()
        .cloned()
        .expect("a churn model's evaluation is binary");
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

/// The rogue sends `task` and asks twice for feature statistics; returns the two reports.
fn statistics_reports(task_toml: String) -> (Vec<consortia_proto::StatsReport>, Rogue, String) {
    let fed = Federation::new(TASK);
    let mut rogue = Rogue::start(fed, move |mut peer| {
        let t = task_toml.clone();
        async move {
            if !peer.expect_hello(WAIT).await {
                return;
            }
            peer.welcome(&t).await;
            for request_id in [1, 2] {
                peer.send_kind(Down::StatsRequest(StatsRequest { request_id }))
                    .await;
                if peer.recv_kind("StatsReport", WAIT).await.is_none() {
                    return;
                }
            }
            peer.send_kind(Down::Finished(TaskFinished {
                detail: "statistics received".into(),
            }))
            .await;
            peer.closed(WAIT).await;
        }
    });
    let name = rogue.start_agent(0, PERMISSIVE_POLICY);
    let status = rogue.wait_agent_exit(&name, WAIT);
    assert!(status.success(), "{status}\n{}", rogue.report());
    let reports = rogue
        .received(&name)
        .into_iter()
        .filter_map(|r| match r.message.kind {
            Some(Up::Stats(s)) => Some(s),
            _ => None,
        })
        .collect();
    (reports, rogue, name)
}

/// With `[privacy]` the partner's feature statistics are noised and charged once: the report
/// differs from the exact sums of its training rows, its own ledger holds one
/// `statistics-gaussian` charge (written before the report), and the second request gets the
/// same answer again without a new charge.
///
/// The count is the partner's training-row count (every update publishes it); each mean and
/// variance comes from sums with Gaussian noise of standard deviation z_s·√(1 + 2·40) = 90.
/// A column constant at one of its bounds on this partner's rows (e.g. the contract types it
/// does not hold) can come back exact after clamping; every other column's sum and sum of
/// squares differ from the exact ones with probability 1 (continuous noise), so the test's
/// false-failure rate is 0 up to floating-point coincidence.
#[test]
fn with_privacy_feature_statistics_are_noised_charged_once_and_resent() {
    let (reports, rogue, name) = statistics_reports(task(Some(DP)));
    assert_eq!(reports.len(), 2, "{}", rogue.report());
    let (first, second) = (&reports[0], &reports[1]);
    assert_eq!(
        (first.count, &first.sum, &first.sum_sq),
        (second.count, &second.sum, &second.sum_sq),
        "the second request gets the stored answer"
    );
    let spec = TaskSpec::from_toml_str(&task(Some(DP))).expect("task");
    let data = consortia_client::local::LocalData::load(&rogue.fed.partners[0].1, &spec, &name)
        .expect("partner data");
    let exact = data.feature_stats();
    assert_eq!(first.sum.len(), exact.sum.len());
    assert_eq!(first.count, exact.count);
    let differing = first
        .sum
        .iter()
        .zip(&exact.sum)
        .chain(first.sum_sq.iter().zip(&exact.sum_sq))
        .filter(|(a, b)| a != b)
        .count();
    let bounds = spec.schema.feature_bounds().expect("bounds");
    let n = exact.count as f64;
    let constant_at_a_bound = exact
        .sum
        .iter()
        .zip(&bounds)
        .filter(|&(&s, &(lo, hi))| s == n * lo || s == n * hi)
        .count();
    assert!(
        differing >= 2 * (exact.sum.len() - constant_at_a_bound),
        "only {differing} of 80 sums are noised ({constant_at_a_bound} constant columns)"
    );
    assert!(constant_at_a_bound < 10);

    let entries =
        consortia_ledger::load_entries(rogue.fed.agent_state(&name).join("ledger")).unwrap();
    assert_eq!(entries.len(), 1, "one charge for two requests: {entries:?}");
    let e = &entries[0].record;
    assert_eq!((e.mechanism.as_str(), e.round), ("statistics-gaussian", 0));
    assert_eq!(
        e.charged.as_ref().unwrap().events,
        vec![consortia_ledger::entry::StoredEvent::from_dp(
            consortia_dp::statistics_event(10.0),
            1
        )]
    );
    let log = rogue.agent_log(&name);
    assert!(log.contains("re-sending"), "{log}");
}

/// Without `[privacy]` the statistics are the exact sums, as before.
#[test]
fn without_privacy_feature_statistics_are_exact() {
    let (reports, rogue, name) = statistics_reports(task(None));
    assert_eq!(reports.len(), 2, "{}", rogue.report());
    let spec = TaskSpec::from_toml_str(&task(None)).expect("task");
    let data = consortia_client::local::LocalData::load(&rogue.fed.partners[0].1, &spec, &name)
        .expect("partner data");
    let exact = data.feature_stats();
    for r in &reports {
        assert_eq!(
            (r.count, &r.sum, &r.sum_sq),
            (exact.count, &exact.sum, &exact.sum_sq)
        );
    }
}
