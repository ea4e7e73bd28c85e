//! Joint decryption of a secure round's sum: every key holder gets the
//! contributors' ciphertexts, recomputes the sum, and returns its partial
//! decryption; combined, they open the (noised) sum, which is then decoded
//! into the round's aggregate. The round is marked durably first, so that
//! its ciphertexts are never used again whatever happens.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consortia_dp::{NoisePlacement, PrivacySpec, PrivacyUnit};
use consortia_he::update::{Declared, SumError, UpdateEncoding};
use consortia_model::AggregatedUpdate;
use consortia_proto::DecryptRequest;

use super::{Ending, Phase, Progress, drive};
use crate::CoordinatorError;
use crate::hub::{Hub, Stage};
use crate::round::{Discard, RoundResult};
use crate::secure::{Decryption, FederationKey, count_release};
use crate::session::Outbound;

/// Why a round's sum could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecryptionFailed {
    /// The encrypted sum was spoilt while it was collected.
    UnusableSum,
    /// Key holders are not connected (all must decrypt together).
    Absent {
        /// Key holders not connected.
        absent: Vec<String>,
        /// Number of key holders.
        holders: usize,
    },
    /// The round could not be marked, durably, as being decrypted.
    Storage(String),
    /// A key holder refused, went away or broke its share.
    KeyHolder(String),
    /// The deadline passed with shares missing.
    Missing(Vec<String>),
    /// The decryption's state was no longer in the hub.
    Lost,
    /// The shares did not combine into the sum.
    Combine(String),
}

impl fmt::Display for DecryptionFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecryptionFailed::UnusableSum => f.write_str("the encrypted sum is unusable"),
            DecryptionFailed::Absent { absent, holders } => write!(
                f,
                "key holder(s) {absent:?} not connected, and all {holders} must decrypt together; \
                 re-key without an absent partner: stop the coordinator, run `consortia rekey --state <dir> --without <partner>`"
            ),
            DecryptionFailed::Storage(e) | DecryptionFailed::Combine(e) => f.write_str(e),
            DecryptionFailed::KeyHolder(why) => write!(f, "decryption failed: {why}"),
            DecryptionFailed::Missing(waiting) => write!(
                f,
                "decryption shares missing at the deadline from {waiting:?}"
            ),
            DecryptionFailed::Lost => f.write_str("decryption state lost"),
        }
    }
}

/// Waits for every key holder's share; ends with the decrypted sum.
struct Decrypting {
    failed: Option<String>,
    waiting_for: Vec<String>,
}

impl Phase for Decrypting {
    type Output = Result<Vec<u64>, DecryptionFailed>;

    fn poll(&mut self, hub: &Hub) -> Progress {
        match &*hub.stage() {
            Stage::Decryption(d) if d.complete() => Progress::Complete,
            Stage::Decryption(d) => {
                self.failed = d.failed.clone();
                self.waiting_for = d.waiting_for();
                if self.failed.is_some() {
                    Progress::Failed
                } else {
                    Progress::Waiting
                }
            }
            _ => Progress::Failed,
        }
    }

    fn finish(self, hub: &Hub, ending: Ending) -> Self::Output {
        let stage = hub.end_stage();
        match (ending, stage) {
            (Ending::Complete, Stage::Decryption(d)) => {
                d.finish().map_err(DecryptionFailed::Combine)
            }
            (_, Stage::Decryption(_)) => Err(match self.failed {
                Some(why) => DecryptionFailed::KeyHolder(why),
                None => DecryptionFailed::Missing(self.waiting_for),
            }),
            _ => Err(DecryptionFailed::Lost),
        }
    }
}

/// Asks every key holder of `key` to decrypt `result`'s encrypted sum (of at
/// least `min` contributors) and waits for their shares until `deadline`.
pub async fn decrypt_round(
    hub: &Hub,
    key: &FederationKey,
    result: &mut RoundResult,
    min: usize,
    deadline: Duration,
) -> Result<Vec<u64>, DecryptionFailed> {
    let round = result.round;
    let Some(aggregate) = result.aggregate.take() else {
        return Err(DecryptionFailed::UnusableSum);
    };
    let connected = hub.connected();
    let absent: Vec<String> = key
        .committee
        .iter()
        .filter(|p| !connected.contains(p))
        .cloned()
        .collect();
    if !absent.is_empty() {
        return Err(DecryptionFailed::Absent {
            absent,
            holders: key.committee.len(),
        });
    }
    if let Some(c) = &hub.ciphertexts {
        let storage = |e: CoordinatorError| DecryptionFailed::Storage(e.to_string());
        c.mark_decrypting(round).map_err(storage)?;
        count_release(key, c.state_dir()).map_err(storage)?;
    }
    let request = DecryptRequest {
        round,
        contributions: result
            .ciphertexts
            .iter()
            .map(|u| consortia_proto::Contribution {
                partner: u.partner.clone(),
                example_count: u.examples,
                signature: u.signature.clone(),
                certificate: u.certificate.clone(),
            })
            .collect(),
        min_contributors: min as u32,
        aggregate_digest: aggregate.mask_digest().to_vec(),
        values: aggregate.shape().values,
        attempt: hub.attempt(),
        task_hash: hub.task_hash.to_vec(),
    };
    let files = Arc::new(
        result
            .ciphertexts
            .iter()
            .map(|u| (u.path.clone(), u.body_hashes.clone()))
            .collect::<Vec<_>>(),
    );
    let shape = *aggregate.shape();
    hub.begin(Stage::Decryption(Decryption::new(round, &aggregate, key)));
    drop(aggregate);
    tracing::info!(
        round,
        phase = "decryption",
        holders = key.committee.len(),
        "asking the key holders to decrypt the sum"
    );
    for p in &key.committee {
        let sent = hub.send_to(
            p,
            Outbound::Decrypt {
                request: request.clone(),
                files: files.clone(),
                shape,
            },
        );
        if !sent && let Stage::Decryption(d) = &mut *hub.stage() {
            d.fail(p, "could not be reached");
        }
    }
    let phase = Decrypting {
        failed: None,
        waiting_for: Vec::new(),
    };
    drive(hub, phase, Instant::now() + deadline).await
}

/// Opens a secure training round's sum when at least `min` updates went
/// into it: decrypted jointly and decoded into `result.update`. The round's
/// ciphertexts are discarded in any case. Returns why the round must be
/// discarded, if it must.
#[allow(clippy::too_many_arguments)]
pub async fn open_sum(
    hub: &Hub,
    key: &FederationKey,
    result: &mut RoundResult,
    encoding: &UpdateEncoding,
    spec: Option<&PrivacySpec>,
    dim: usize,
    min: usize,
    deadline: Duration,
) -> Result<Option<Discard>, CoordinatorError> {
    let mut discard = None;
    if result.contributors.len() >= min {
        discard = match decrypt_round(hub, key, result, min, deadline).await {
            Ok(sum) => {
                let contributors = result.contributors.len();
                match decode_sum(spec, encoding, dim, &sum, contributors, result.examples) {
                    Ok(update) => {
                        result.update = Some(update);
                        None
                    }
                    Err(StepError::Malformed(e)) => Some(Discard::MalformedSum(format!(
                        "the decrypted sum is unusable: {e}"
                    ))),
                    Err(StepError::Other(e)) => Some(Discard::Unusable(format!(
                        "the decrypted sum is unusable: {e}"
                    ))),
                    Err(StepError::Undeclared(detail)) => {
                        undeclared_sum(hub, result.round, &result.contributors, &detail)?;
                        Some(Discard::Unusable(UNDECLARED_SUM.into()))
                    }
                }
            }
            Err(why) => Some(Discard::Unusable(why.to_string())),
        };
    }
    if let Some(c) = &hub.ciphertexts {
        c.discard(result.round)?;
    }
    if let Some(why) = &discard {
        tracing::warn!(
            round = result.round,
            reason = why.code(),
            "round discarded: {why}"
        );
    }
    Ok(discard)
}

/// Why a round whose decrypted sum does not match what its contributors declared
/// is discarded. The same words every attempt (the figures go to the incident
/// line), so that consecutive failures of a round count as identical and stop
/// the task after `max_round_attempts` with this diagnosis.
pub const UNDECLARED_SUM: &str = "the decrypted sum does not match what its contributors \
     declared (the example counts they signed, or their clip and noise), so nothing was \
     applied: a key holder's secret key share is probably damaged (or a contributor's update \
     differs from what it signed); see incidents.log in the coordinator's state directory, \
     and if it repeats, re-key the federation: stop the coordinator and run \
     `consortia rekey --state <dir>`";

/// Records the incident of a decrypted sum that does not match what its
/// contributors declared (`detail`: the figures) and logs it.
fn undeclared_sum(
    hub: &Hub,
    round: u64,
    contributors: &[String],
    detail: &str,
) -> Result<(), CoordinatorError> {
    let log = match &hub.ciphertexts {
        Some(c) => {
            crate::incident::undeclared_sum(c.state_dir(), round, contributors, detail)?;
            c.state_dir()
                .join(crate::incident::LOG)
                .display()
                .to_string()
        }
        None => "(no state directory)".into(),
    };
    tracing::error!(
        round,
        contributors = ?contributors,
        "INCIDENT: round {round}'s decrypted sum does not match what its contributors declared \
         ({detail}): the round is discarded, nothing is applied; see {log}"
    );
    Ok(())
}

/// Why a decrypted sum gives no model.
#[derive(Debug)]
pub enum StepError {
    /// Outside what well-formed updates can add up to: a malformed ciphertext.
    Malformed(String),
    /// Decodable, but not what the contributors declared (their signed example
    /// counts, or their clip and noise): garbage, never applied.
    Undeclared(String),
    /// Anything else.
    Other(String),
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Malformed(s) | StepError::Undeclared(s) | StepError::Other(s) => {
                f.write_str(s)
            }
        }
    }
}

/// The decrypted sum of a secure round as an [`AggregatedUpdate`]: the
/// example-weighted mean delta (no distributed DP), the noisy sum of clipped deltas
/// (distributed, partner unit) or of clipped per-row gradients (distributed, record
/// unit).
///
/// The sum is first checked against what its `contributors` declared
/// ([`UpdateEncoding::decode_declared`]): the weighted encoding's row count must
/// be `examples`, the sum of the example counts they signed; a distributed-DP
/// sum must be within their clip and noise. Otherwise [`StepError::Undeclared`].
pub fn decode_sum(
    spec: Option<&PrivacySpec>,
    encoding: &UpdateEncoding,
    dim: usize,
    sum: &[u64],
    contributors: usize,
    examples: u64,
) -> Result<AggregatedUpdate, StepError> {
    let declared = Declared {
        contributors: contributors as u64,
        examples,
    };
    let decoded = encoding
        .decode_declared(sum, declared)
        .map_err(|e| match e {
            SumError::Decode(e @ consortia_dp::DpError::OutOfRange { .. }) => {
                StepError::Malformed(e.to_string())
            }
            SumError::Decode(e) => StepError::Other(e.to_string()),
            e @ (SumError::Rows { .. } | SumError::Implausible { .. }) => {
                StepError::Undeclared(e.to_string())
            }
        })?;
    if decoded.len() != dim {
        return Err(StepError::Other(format!(
            "decoded {} values for a model of {dim}",
            decoded.len(),
        )));
    }
    let distributed = spec.filter(|s| s.placement == NoisePlacement::Distributed);
    Ok(match distributed.map(|s| s.unit) {
        None => AggregatedUpdate::WeightedMeanDelta(decoded),
        Some(PrivacyUnit::Partner) => AggregatedUpdate::ClippedDeltaSum {
            sum: decoded,
            contributors,
        },
        Some(PrivacyUnit::Record) => AggregatedUpdate::GradientSum {
            sum: decoded,
            rows: examples,
        },
    })
}

#[cfg(test)]
mod decode_tests {
    use super::*;
    use crate::step::server_step;
    use consortia_he::{CollectivePublicKey, HeParams};
    use consortia_model::TaskSpec;

    const SECURE: &str = include_str!("../../../examples/telco_churn_secure.toml");
    const DDG: &str = include_str!("../../../examples/telco_churn_ddg_eps8.toml");

    fn key(parties: u32) -> CollectivePublicKey {
        crate::testing::collective_key(HeParams::Secure128, parties, 3)
    }

    /// A decrypted sum through decoding and a FedAvg server step, as a round does.
    fn secure_step(
        task: &TaskSpec,
        spec: Option<&PrivacySpec>,
        enc: &UpdateEncoding,
        global: &[f64],
        sum: &[u64],
        contributors: usize,
        examples: u64,
    ) -> Result<Vec<f64>, StepError> {
        let update = decode_sum(spec, enc, global.len(), sum, contributors, examples)?;
        let mut fedavg = consortia_model::strategy::build(&Default::default());
        server_step(task, fedavg.as_mut(), global, &update)
            .map_err(|e| StepError::Other(e.to_string()))
    }

    /// The plaintext sum of encoded vectors, as joint decryption returns it.
    fn sum(vectors: &[Vec<u64>], bits: u32) -> Vec<u64> {
        let mask = (1u64 << bits) - 1;
        let mut out = vec![0u64; vectors[0].len()];
        for v in vectors {
            for (o, x) in out.iter_mut().zip(v) {
                *o = o.wrapping_add(*x) & mask;
            }
        }
        out
    }

    #[test]
    fn weighted_secure_round_is_fedavg() {
        let task = TaskSpec::from_toml_str(SECURE).unwrap();
        let n = task.param_count();
        let k = key(3);
        let enc = UpdateEncoding::for_round(None, n, 3, &k, 1).unwrap();
        let global = vec![0.5; n];
        let a = enc.encode_weighted(&vec![0.25; n], 100).unwrap();
        let b = enc.encode_weighted(&vec![-0.5; n], 300).unwrap();
        let s = sum(&[a, b], k.plaintext_bits());
        let next = secure_step(&task, None, &enc, &global, &s, 2, 400).unwrap();
        // (100·0.25 − 300·0.5)/400 = −0.3125
        for v in &next {
            assert!((v - (0.5 - 0.3125)).abs() < 1e-4, "{v}");
        }
        // A sum with a value no two well-formed updates can reach is a
        // malformed ciphertext: the round is an incident.
        let mut probed = s.clone();
        probed[0] = (probed[0] + (1u64 << 40)) & ((1u64 << k.plaintext_bits().min(62)) - 1);
        assert!(matches!(
            secure_step(&task, None, &enc, &global, &probed, 2, 400),
            Err(StepError::Malformed(_))
        ));
    }

    /// A decodable sum that is not what its contributors declared is refused:
    /// a weighted sum counting other rows than they signed, a distributed-DP sum
    /// of uniform residues (what a damaged key share decrypts).
    #[test]
    fn a_sum_that_is_not_what_its_contributors_declared_is_refused() {
        let task = TaskSpec::from_toml_str(SECURE).unwrap();
        let n = task.param_count();
        let k = key(3);
        let enc = UpdateEncoding::for_round(None, n, 3, &k, 1).unwrap();
        let global = vec![0.5; n];
        let a = enc.encode_weighted(&vec![0.25; n], 100).unwrap();
        let b = enc.encode_weighted(&vec![-0.5; n], 300).unwrap();
        let s = sum(&[a, b], k.plaintext_bits());
        assert!(secure_step(&task, None, &enc, &global, &s, 2, 400).is_ok());
        match secure_step(&task, None, &enc, &global, &s, 2, 500) {
            Err(StepError::Undeclared(e)) => assert!(e.contains("400 rows") && e.contains("500")),
            other => panic!("expected a refusal, got {other:?}"),
        }

        let task = TaskSpec::from_toml_str(DDG).unwrap();
        let spec = task.privacy_spec().unwrap().unwrap();
        let n = task.param_count();
        let enc = UpdateEncoding::for_round(Some(&spec), n, 3, &k, 5).unwrap();
        let global = vec![0.0; n];
        let honest: Vec<Vec<u64>> = (0..3)
            .map(|_| enc.encode_ddg(&vec![0.01; n]).unwrap())
            .collect();
        let s = sum(&honest, k.plaintext_bits());
        assert!(secure_step(&task, Some(&spec), &enc, &global, &s, 3, 900).is_ok());
        // Uniform residues from a fixed generator (SplitMix64).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let garbage: Vec<u64> = (0..enc.encoded_len())
            .map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            })
            .collect();
        match secure_step(&task, Some(&spec), &enc, &global, &garbage, 3, 900) {
            Err(StepError::Undeclared(e)) => assert!(e.contains("L2 norm"), "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Rounds discarded for a sum that is not what was declared fail the same way
    /// every attempt, so the task stops after `max_round_attempts` with the diagnosis.
    #[test]
    fn repeated_undeclared_sums_stop_the_task_with_the_diagnosis() {
        use crate::round::{Discard, RoundCollector, RoundEnd, RoundKind};
        let mut attempts = crate::retry::Attempts::new(3, std::time::Duration::from_secs(1));
        let mut stopped = None;
        for _ in 0..3 {
            let result = RoundCollector::new(
                7,
                0,
                RoundKind::Train,
                4,
                Default::default(),
                std::time::Instant::now(),
            )
            .finish();
            let end = RoundEnd::Discarded(Discard::Unusable(UNDECLARED_SUM.into()));
            let why = crate::report::failure(&end, &result, 2).expect("a failure");
            if let Err(e) = attempts.failed(7, "round 7", &why) {
                stopped = Some(e.to_string());
            }
        }
        let stopped = stopped.expect("stopped after three identical failures");
        assert!(
            stopped.contains("round 7 failed 3 times")
                && stopped.contains("secret key share is probably damaged")
                && stopped.contains("consortia rekey"),
            "{stopped}"
        );
    }

    #[test]
    fn distributed_record_round_is_one_gradient_step() {
        let task = TaskSpec::from_toml_str(DDG).unwrap();
        let mut spec = task.privacy_spec().unwrap().unwrap();
        // Almost no noise, so the step is checked to the rounding precision.
        spec.noise_multiplier = 1e-4;
        let n = task.param_count();
        let k = key(3);
        let enc = UpdateEncoding::for_round(Some(&spec), n, 3, &k, 5).unwrap();
        let grads: Vec<Vec<f64>> = (0..3)
            .map(|p| {
                (0..n)
                    .map(|i| ((i + p) as f64 * 0.3).sin() * 20.0)
                    .collect()
            })
            .collect();
        let encoded: Vec<Vec<u64>> = grads.iter().map(|g| enc.encode_ddg(g).unwrap()).collect();
        let s = sum(&encoded, k.plaintext_bits());
        let global: Vec<f64> = (0..n).map(|i| i as f64 * 0.01).collect();
        let rows = 1000u64;
        let next = secure_step(&task, Some(&spec), &enc, &global, &s, 3, rows).unwrap();
        let lr = task.learning_rate;
        let l2 = task.model.l2;
        for i in 0..n {
            let g: f64 = grads.iter().map(|v| v[i]).sum::<f64>() / rows as f64;
            let penalty = if i == n - 1 { 0.0 } else { l2 * global[i] };
            let want = global[i] - lr * (g + penalty);
            assert!(
                (next[i] - want).abs() < 1e-3,
                "parameter {i}: {} vs {want}",
                next[i]
            );
        }
    }

    #[test]
    fn distributed_partner_round_adds_the_mean_clipped_delta() {
        let mut task = TaskSpec::from_toml_str(DDG).unwrap();
        let mut table = task.privacy.clone().unwrap();
        table.insert("unit".into(), "partner".into());
        task.privacy = Some(table);
        let mut spec = task.privacy_spec().unwrap().unwrap();
        spec.noise_multiplier = 1e-4;
        spec.clip_norm = 1.0;
        let n = task.param_count();
        let k = key(3);
        let enc = UpdateEncoding::for_round(Some(&spec), n, 3, &k, 2).unwrap();
        // One delta inside the clip, one far outside it (clipped to norm 1).
        let small = vec![0.01; n];
        let big = vec![10.0; n];
        let s = sum(
            &[
                enc.encode_ddg(&small).unwrap(),
                enc.encode_ddg(&big).unwrap(),
            ],
            k.plaintext_bits(),
        );
        let global = vec![0.0; n];
        let next = secure_step(&task, Some(&spec), &enc, &global, &s, 2, 500).unwrap();
        let clipped = 1.0 / (n as f64).sqrt();
        for v in &next {
            assert!((v - (0.01 + clipped) / 2.0).abs() < 1e-3, "{v}");
        }
    }
}

#[cfg(test)]
mod phase_tests {
    use super::*;
    use crate::round::{Rejection, RoundCollector, RoundKind};
    use crate::testing::{SECURE_TASK, collective_key, hub_with, next};
    use consortia_he::{Aggregate, HeParams, Shape};

    /// A key of a, b and c, and a closed round 1 with an (empty) encrypted sum.
    fn round(hub: &Hub) -> (Arc<FederationKey>, RoundResult) {
        let k = collective_key(HeParams::Secure128, 3, 1);
        let shape = Shape::new(&k, 42).unwrap();
        let key = FederationKey::new(k, vec!["a".into(), "b".into(), "c".into()], vec![]).unwrap();
        let result = RoundCollector::new(
            1,
            0,
            RoundKind::Train,
            hub.param_count,
            Default::default(),
            Instant::now(),
        )
        .with_aggregate(Aggregate::new(shape).unwrap())
        .finish();
        (Arc::new(key), result)
    }

    fn start(
        hub: &Arc<Hub>,
        deadline: Duration,
    ) -> tokio::task::JoinHandle<Result<Vec<u64>, DecryptionFailed>> {
        let hub = hub.clone();
        tokio::spawn(async move {
            let (key, mut result) = round(&hub);
            decrypt_round(&hub, &key, &mut result, 2, deadline).await
        })
    }

    #[tokio::test]
    async fn a_key_holders_refusal_fails_the_decryption() {
        let (hub, mut inbox) = hub_with(SECURE_TASK, &["a", "b", "c"]);
        let running = start(&hub, Duration::from_secs(60));
        for p in ["a", "b", "c"] {
            match next(inbox.get_mut(p).unwrap()).await {
                Outbound::Decrypt { request, .. } => {
                    assert_eq!((request.round, request.min_contributors), (1, 2))
                }
                other => panic!("expected a decryption request, got {other:?}"),
            }
        }
        // A share from a partner that holds none is refused; the decryption goes on.
        let piece = consortia_proto::share_pieces(1, &[0; 64]).next().unwrap();
        assert!(matches!(
            hub.add_share_piece("z", piece),
            Err(r @ Rejection::OutOfPhase { .. }) if r.to_string().contains("holds no share")
        ));
        hub.decline(
            "b",
            1,
            "not today".into(),
            consortia_proto::DeclineKind::Decryption,
        )
        .unwrap();
        let failed = running.await.unwrap().unwrap_err();
        assert_eq!(
            failed,
            DecryptionFailed::KeyHolder("key holder `b`: not today".into())
        );
        assert_eq!(
            failed.to_string(),
            "decryption failed: key holder `b`: not today"
        );
    }

    #[tokio::test]
    async fn an_absent_key_holder_fails_before_anyone_is_asked() {
        let (hub, mut inbox) = hub_with(SECURE_TASK, &["a", "b"]);
        let failed = start(&hub, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            failed,
            Err(DecryptionFailed::Absent {
                absent: vec!["c".into()],
                holders: 3
            })
        );
        assert!(inbox.get_mut("a").unwrap().try_recv().is_err());
    }

    #[tokio::test]
    async fn missing_shares_at_the_deadline_fail_the_decryption() {
        let (hub, _inbox) = hub_with(SECURE_TASK, &["a", "b", "c"]);
        let failed = start(&hub, Duration::from_millis(300)).await.unwrap();
        assert_eq!(
            failed,
            Err(DecryptionFailed::Missing(vec![
                "a".into(),
                "b".into(),
                "c".into()
            ]))
        );
    }
}
