//! Joint decryption of a secure round's sum, at a cost to each key holder of
//! the aggregate's size, not the contributors' (`consortia_client`'s `keys`
//! module docs; README, "Secure aggregation"):
//! 1. every key holder is sent the request (contributors, their example
//!    counts and certificates, the aggregate's mask digest) and the
//!    aggregate's masks, and commits to a challenge seed;
//! 2. once every holder committed, all commitments go to every holder, each
//!    reveals its seed, and all seeds go to every holder: the joint challenge
//!    is drawn only after the aggregate was fixed;
//! 3. every contributor signs the sketch of its own masks under the
//!    challenge; the coordinator checks the sketches add up to the sketch of
//!    the aggregate's masks and sends them to every holder;
//! 4. each holder checks the same itself and returns its partial
//!    decryption; combined, they open the (noised) sum, which is then decoded
//!    into the round's aggregate.
//!
//! A key holder or contributor that refuses, leaves or does not answer a step
//! by the deadline fails the attempt, named in the error. With a t-of-N key,
//! the decryption set is the holders that commit within [`commit_window`],
//! and a toss that only key holders fail after that is tossed again for the
//! same aggregate while at least `t` holders remain (README, "Decrypting
//! with any `t` holders"). The round is marked durably first, so that its
//! ciphertexts are never used again whatever happens.

use std::fmt;
use std::time::{Duration, Instant};

use consortia_dp::{NoisePlacement, PrivacySpec, PrivacyUnit};
use consortia_he::update::{Declared, SumError, UpdateEncoding};
use consortia_model::AggregatedUpdate;
use consortia_proto::{
    DecryptRequest, MAX_TOSSES_PER_ATTEMPT, SketchRequest, server_message::Kind,
};

use super::{Ending, Phase, Progress, drive};
use crate::CoordinatorError;
use crate::hub::{Hub, Stage};
use crate::round::{Discard, RoundResult};
use crate::secure::{Contributor, Decryption, DecryptionStep, FederationKey, Retry, count_release};
use crate::session::{Outbound, message};

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
    /// A key holder or a contributor refused, went away or broke its answer.
    KeyHolder(String),
    /// The deadline passed with answers to a step missing.
    Missing {
        /// What was missing ([`DecryptionStep::expects`]).
        what: &'static str,
        /// Who had not answered.
        from: Vec<String>,
    },
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
            DecryptionFailed::Missing { what, from } => {
                write!(f, "{what} missing at the deadline from {from:?}")
            }
            DecryptionFailed::Lost => f.write_str("decryption state lost"),
        }
    }
}

/// How long a t-of-N decryption waits for the key holders' commitments
/// before it goes on with those that committed (if at least `t`): a quarter
/// of the decryption's deadline, at most [`MAX_COMMIT_WINDOW`].
pub fn commit_window(deadline: Duration) -> Duration {
    (deadline / 4).min(MAX_COMMIT_WINDOW)
}

/// The longest a t-of-N coin toss waits for commitments ([`commit_window`]).
pub const MAX_COMMIT_WINDOW: Duration = Duration::from_secs(30);

/// t-of-N: how long, once `t` holders of the decryption set revealed their
/// seeds (or sent their shares), the others are waited for before they are
/// dropped from the toss as stragglers: the commit window again, a quarter of
/// the decryption's deadline, at most [`MAX_COMMIT_WINDOW`]. A holder that
/// stays connected but silent then costs a further toss, not the attempt.
pub fn straggler_window(deadline: Duration) -> Duration {
    commit_window(deadline)
}

/// Why a coin toss failed, and with whom a further one can be tossed.
struct TossFailed {
    why: DecryptionFailed,
    /// t-of-N: with whom a further toss can be made, if only key holders
    /// failed this one ([`Decryption::retry_with`]).
    retry_with: Option<Retry>,
    /// The key holders that failed the toss.
    dropped: Vec<String>,
}

impl From<DecryptionFailed> for TossFailed {
    fn from(why: DecryptionFailed) -> Self {
        TossFailed {
            why,
            retry_with: None,
            dropped: Vec::new(),
        }
    }
}

/// Waits for every answer to one step of the decryption; at the last step
/// ([`DecryptionStep::Shares`]) ends with the decrypted sum. `window`: at
/// the commitments of a t-of-N key, the deadline only closes the
/// commitments (the decryption set is those that committed).
struct Waiting {
    step: DecryptionStep,
    failed: Option<String>,
    waiting_for: Vec<String>,
    window: bool,
    /// t-of-N: complete once this many holders answered the step (the
    /// others are then given the straggler window).
    quorum: Option<usize>,
    /// t-of-N: at the deadline (the straggler window's end), the holders
    /// still silent are dropped from the toss, named.
    cut: Option<Duration>,
}

impl Waiting {
    fn new(step: DecryptionStep) -> Self {
        Waiting {
            step,
            failed: None,
            waiting_for: Vec::new(),
            window: false,
            quorum: None,
            cut: None,
        }
    }

    /// A step of the holders of a t-of-N toss, until `t` of them answered.
    fn quorum(step: DecryptionStep, t: usize) -> Self {
        Waiting {
            quorum: Some(t),
            ..Waiting::new(step)
        }
    }

    /// The rest of that step, for at most the straggler window `window`.
    fn stragglers(step: DecryptionStep, window: Duration) -> Self {
        Waiting {
            cut: Some(window),
            ..Waiting::new(step)
        }
    }

    /// The commitments of a t-of-N toss, until the commit window closes.
    fn commit_window() -> Self {
        Waiting {
            window: true,
            ..Waiting::new(DecryptionStep::Commitments)
        }
    }

    /// Why the step did not complete; the toss is over.
    fn failure(self, hub: &Hub, ending: Ending) -> TossFailed {
        match (ending, hub.end_stage()) {
            (_, Stage::Decryption(d)) => TossFailed {
                why: match self.failed {
                    Some(why) => DecryptionFailed::KeyHolder(why),
                    None => DecryptionFailed::Missing {
                        what: self.step.expects(),
                        from: self.waiting_for,
                    },
                },
                retry_with: d.retry_with(&hub.connected()),
                dropped: d.dropped().to_vec(),
            },
            _ => DecryptionFailed::Lost.into(),
        }
    }
}

impl Phase for Waiting {
    type Output = Result<Option<Vec<u64>>, TossFailed>;

    fn poll(&mut self, hub: &Hub) -> Progress {
        match &*hub.stage() {
            Stage::Decryption(d) if d.step() == self.step => {
                self.failed = d.failed.clone();
                if self.failed.is_some() {
                    Progress::Failed
                } else if d.step_complete() {
                    Progress::Complete
                } else {
                    self.waiting_for = d.waiting_for();
                    let answered = d.asked().len().saturating_sub(self.waiting_for.len());
                    if self.quorum.is_some_and(|t| answered >= t) {
                        Progress::Complete
                    } else {
                        Progress::Waiting
                    }
                }
            }
            _ => Progress::Failed,
        }
    }

    fn finish(mut self, hub: &Hub, ending: Ending) -> Self::Output {
        if self.window && ending == Ending::Deadline {
            // The decryption set is those that committed, if at least t.
            match with_decryption(hub, Decryption::close_commitments) {
                Some(Ok(())) => return Ok(None),
                _ => return Err(self.failure(hub, ending)),
            }
        }
        if let (Some(window), Ending::Deadline) = (self.cut, ending) {
            // The holders still silent are dropped; a further toss can do
            // without them (`Decryption::retry_with`).
            let what = self.step.expects();
            let why = format!(
                "sent no {what} within {} s of {} other key holders (straggler window)",
                window.as_secs_f64(),
                if self.step == DecryptionStep::Shares {
                    "the"
                } else {
                    "enough"
                }
            );
            self.failed = with_decryption(hub, |d| {
                for p in d.waiting_for() {
                    d.fail(&p, &why);
                }
                d.failed.clone()
            })
            .flatten();
            if self.failed.is_some() {
                return Err(self.failure(hub, Ending::Failed));
            }
        }
        if ending != Ending::Complete {
            return Err(self.failure(hub, ending));
        }
        if self.step != DecryptionStep::Shares || self.quorum.is_some() {
            return Ok(None);
        }
        match hub.end_stage() {
            Stage::Decryption(d) => d
                .finish()
                .map(Some)
                .map_err(|e| DecryptionFailed::Combine(e).into()),
            _ => Err(DecryptionFailed::Lost.into()),
        }
    }
}

/// Runs `f` on the decryption in progress (`None` if it is gone).
fn with_decryption<T>(hub: &Hub, f: impl FnOnce(&mut Decryption) -> T) -> Option<T> {
    match &mut *hub.stage() {
        Stage::Decryption(d) => Some(f(d)),
        _ => None,
    }
}

/// Sends `kind` to each of `partners`; one that cannot be reached fails the
/// decryption, named.
fn send_each(hub: &Hub, partners: &[String], kind: &Kind) {
    for p in partners {
        let sent = hub.send_to(p, Outbound::Message(message(kind.clone())));
        if !sent {
            with_decryption(hub, |d| d.fail(p, "could not be reached"));
        }
    }
}

/// Asks every key holder of `key` to decrypt `result`'s encrypted sum (of at
/// least `min` contributors), with the coin toss and the contributors'
/// sketches in between (module docs), and waits for every step until
/// `deadline` (for the whole decryption). With a t-of-N key, a toss that
/// key holders fail after its commitment list was sent is tossed again for
/// the same aggregate with the holders still connected, while at least `t`
/// remain, at most [`MAX_TOSSES_PER_ATTEMPT`] tosses in all.
pub async fn decrypt_round(
    hub: &Hub,
    key: &FederationKey,
    result: &mut RoundResult,
    min: usize,
    deadline: Duration,
) -> Result<Vec<u64>, DecryptionFailed> {
    let until = Instant::now() + deadline;
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
    let threshold = hub.task.key_threshold;
    // N-of-N: every holder. t-of-N: the holders connected now, if at least t.
    let mut asked: Vec<String> = match threshold {
        Some(t) if key.committee.len() - absent.len() >= t as usize => key
            .committee
            .iter()
            .filter(|p| connected.contains(p))
            .cloned()
            .collect(),
        _ if absent.is_empty() => key.committee.clone(),
        _ => {
            return Err(DecryptionFailed::Absent {
                absent,
                holders: key.committee.len(),
            });
        }
    };
    if let Some(c) = &hub.ciphertexts {
        let storage = |e: CoordinatorError| DecryptionFailed::Storage(e.to_string());
        c.mark_decrypting(round).map_err(storage)?;
        count_release(key, c.state_dir()).map_err(storage)?;
    }
    let contributors: Vec<Contributor> = result
        .ciphertexts
        .iter()
        .map(|u| Contributor {
            name: u.partner.clone(),
            examples: u.examples,
            certificate: u.certificate.clone(),
        })
        .collect();
    let request = DecryptRequest {
        round,
        contributions: contributors
            .iter()
            .map(|c| consortia_proto::Contribution {
                partner: c.name.clone(),
                example_count: c.examples,
                certificate: c.certificate.clone(),
            })
            .collect(),
        min_contributors: min as u32,
        aggregate_digest: aggregate.mask_digest().to_vec(),
        values: aggregate.shape().values,
        attempt: hub.attempt(),
        task_hash: hub.task_hash.to_vec(),
        toss: 0,
    };
    let mut toss = 0;
    // Whether the holders asked all checked the sketches in an earlier toss.
    let mut checked = false;
    loop {
        let mut decryption = Decryption::new(
            round,
            hub.attempt(),
            hub.task_hash,
            &aggregate,
            key,
            contributors.clone(),
        )
        .and_then(|d| d.with_holders(&asked))
        .map_err(|_| DecryptionFailed::UnusableSum)?;
        if let Some(t) = threshold {
            decryption = decryption.with_threshold(t, toss);
        }
        if checked {
            decryption = decryption.with_checked_sketches();
        }
        let request = DecryptRequest {
            toss,
            ..request.clone()
        };
        match toss_coin(
            hub, decryption, request, threshold, checked, deadline, until,
        )
        .await
        {
            Ok(sum) => return Ok(sum),
            Err(failed) => {
                let Some(retry) = failed
                    .retry_with
                    .filter(|_| toss + 1 < MAX_TOSSES_PER_ATTEMPT && Instant::now() < until)
                else {
                    return Err(failed.why);
                };
                checked |= matches!(retry, Retry::Checked(_));
                let holders = retry.holders().to_vec();
                toss += 1;
                // Each toss's shares are further releases under the key.
                if let Some(c) = &hub.ciphertexts {
                    count_release(key, c.state_dir())
                        .map_err(|e| DecryptionFailed::Storage(e.to_string()))?;
                }
                tracing::warn!(
                    round,
                    phase = "decryption",
                    toss,
                    dropped = ?failed.dropped,
                    holders = holders.len(),
                    checked,
                    "further coin toss {toss} for the same aggregate of attempt {} of round \
                     {round}: the last one failed ({}); asking the {} key holders still \
                     connected{}",
                    hub.attempt(),
                    failed.why,
                    holders.len(),
                    if checked {
                        ", which checked the contributors' sketches of this sum already"
                    } else {
                        ""
                    }
                );
                asked = holders;
            }
        }
    }
}

/// One coin toss of a decryption (module docs): the request and the
/// aggregate's masks to every holder asked, their commitments (t-of-N:
/// those in by the commit window), their seeds, the contributors' sketches
/// and the holders' shares. `threshold`: the key's `t` (`None`: N-of-N).
async fn toss_coin(
    hub: &Hub,
    decryption: Decryption,
    request: DecryptRequest,
    threshold: Option<u32>,
    checked: bool,
    deadline: Duration,
    until: Instant,
) -> Result<Vec<u64>, TossFailed> {
    let round = request.round;
    let toss = request.toss;
    let holders: Vec<String> = decryption.asked().to_vec();
    let masks = decryption.masks();
    hub.begin(Stage::Decryption(Box::new(decryption)));
    tracing::info!(
        round,
        phase = "decryption",
        toss,
        holders = holders.len(),
        contributors = request.contributions.len(),
        "asking the key holders to decrypt the sum"
    );
    for p in &holders {
        let sent = hub.send_to(
            p,
            Outbound::Decrypt {
                request: request.clone(),
                masks: masks.clone(),
            },
        );
        if !sent {
            with_decryption(hub, |d| d.fail(p, "could not be reached"));
        }
    }
    drop(masks);
    // The coin toss: every commitment (t-of-N: those in by the commit
    // window), then every seed.
    if threshold.is_some() {
        let window = (Instant::now() + commit_window(deadline)).min(until);
        drive(hub, Waiting::commit_window(), window).await?;
    } else {
        drive(hub, Waiting::new(DecryptionStep::Commitments), until).await?;
    }
    let (list, holders) = with_decryption(hub, |d| (d.commitments_message(), d.asked().to_vec()))
        .ok_or(DecryptionFailed::Lost)?;
    send_each(hub, &holders, &Kind::ChallengeCommitments(list));
    let quorum = threshold.map(|t| t as usize);
    holders_answer(hub, DecryptionStep::Seeds, quorum, deadline, until).await?;
    let (reveals, challenge, contributors) = with_decryption(hub, |d| {
        let (reveals, challenge) = d.reveals_message();
        let names: Vec<String> = d.contributors().iter().map(|c| c.name.clone()).collect();
        (reveals, challenge, names)
    })
    .ok_or(DecryptionFailed::Lost)?;
    send_each(hub, &holders, &Kind::ChallengeReveals(reveals));
    tracing::info!(
        round,
        phase = "decryption",
        toss,
        holders = holders.len(),
        "challenge seeds relayed"
    );
    if checked {
        // Every holder asked checked this sum's sketches in an earlier toss.
        let none = with_decryption(hub, Decryption::checked_sketches_message)
            .ok_or(DecryptionFailed::Lost)?;
        send_each(hub, &holders, &Kind::ContributorSketches(none));
        return holders_answer(hub, DecryptionStep::Shares, quorum, deadline, until)
            .await?
            .ok_or(DecryptionFailed::Lost.into());
    }
    // Every contributor signs the sketch of its own masks.
    // The sum they sign for: a contributor signs sketches for one sum per
    // attempt, and the key holders check the signatures over theirs.
    let ask = SketchRequest {
        round,
        attempt: request.attempt,
        toss,
        challenge: challenge.to_vec(),
        aggregate_digest: request.aggregate_digest.clone(),
        contributions_digest: consortia_proto::contributions_digest(&request.contributions)
            .to_vec(),
    };
    send_each(hub, &contributors, &Kind::SketchRequest(ask));
    drive(hub, Waiting::new(DecryptionStep::Sketches), until).await?;
    let sketches =
        with_decryption(hub, Decryption::sketches_message).ok_or(DecryptionFailed::Lost)?;
    let sketches = match sketches {
        Ok(s) => s,
        Err(why) => {
            hub.end_stage();
            return Err(DecryptionFailed::KeyHolder(why).into());
        }
    };
    send_each(hub, &holders, &Kind::ContributorSketches(sketches));
    tracing::info!(
        round,
        phase = "decryption",
        toss,
        "contributors' sketches relayed; waiting for the key holders' shares"
    );
    holders_answer(hub, DecryptionStep::Shares, quorum, deadline, until)
        .await?
        .ok_or(DecryptionFailed::Lost.into())
}

/// Waits for every key holder's answer to `step` (their seeds, or their
/// shares) until `until`. t-of-N (`quorum`: the key's threshold): once that
/// many holders of the decryption set answered, the others are waited for
/// the [`straggler_window`] at most, then dropped from the toss, named, so
/// that a further toss can go on without them.
async fn holders_answer(
    hub: &Hub,
    step: DecryptionStep,
    quorum: Option<usize>,
    deadline: Duration,
    until: Instant,
) -> Result<Option<Vec<u64>>, TossFailed> {
    let Some(t) = quorum else {
        return drive(hub, Waiting::new(step), until).await;
    };
    drive(hub, Waiting::quorum(step, t), until).await?;
    let window = straggler_window(deadline);
    let cut = (Instant::now() + window).min(until);
    drive(hub, Waiting::stragglers(step, window), cut).await
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
        let opened = decrypt_round(hub, key, result, min, deadline).await;
        crate::key_holders::decryption_ended(
            hub,
            &key.committee,
            result.round,
            opened.as_ref().err(),
        );
        discard = match opened {
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
    use crate::secure::StoredUpdate;
    use crate::testing::{
        Inboxes, SECURE_TASK, collective_key_with_secrets, hub_with, next, next_message,
    };
    use consortia_he::{
        Aggregate, EncryptedVector, Encryptor, HeParams, PartialDecryptor, SecretKeyShare, Shape,
        Sketch,
    };
    use consortia_proto::{
        ChallengeCommit, ChallengeSeed, DecryptionContext, SignedSketch, SketchedSum, sketch_digest,
    };
    use std::sync::Arc;

    const VALUES: usize = 42;

    /// A key of a, b and c (with their secret shares), a PKI for a, b, c
    /// and d, and a closed round 1 whose encrypted sum holds the updates of
    /// `contributors` (update of the i-th: every value i + 1).
    struct Round {
        _dir: tempfile::TempDir,
        key: Arc<FederationKey>,
        secrets: Vec<SecretKeyShare>,
        signers: BTreeMap<String, consortia_ledger::Signer>,
        updates: BTreeMap<String, EncryptedVector>,
        result: Option<RoundResult>,
        /// The sum the contributors' sketches are signed for.
        sum: SketchedSum,
    }

    use std::collections::BTreeMap;

    fn round(hub: &Hub, contributors: &[&str]) -> Round {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let pki = consortia_pki::Pki::init(dir.path().join("pki"), &["127.0.0.1".into()], &names)
            .unwrap();
        let (k, secrets) = collective_key_with_secrets(HeParams::Secure128, 3, 1);
        let shape = Shape::new(&k, VALUES as u64).unwrap();
        let mut sum = Aggregate::new(shape).unwrap();
        let mut updates = BTreeMap::new();
        let mut stored = Vec::new();
        for (i, name) in contributors.iter().enumerate() {
            let v = Encryptor::new(&k).encrypt(&[i as u64 + 1; VALUES]).unwrap();
            sum.add_vector(&v).unwrap();
            updates.insert(name.to_string(), v);
            stored.push(StoredUpdate {
                partner: name.to_string(),
                examples: 10,
                path: dir.path().join(format!("{name}.ct")),
                signature: Vec::new(),
                certificate: consortia_pki::read_ca_certificate(&pki.partner_cert_path(name))
                    .unwrap(),
                body_hashes: Vec::new(),
            });
        }
        let key = FederationKey::new(k, names[..3].to_vec(), vec![]).unwrap();
        let contributions: Vec<consortia_proto::Contribution> = stored
            .iter()
            .map(|u| consortia_proto::Contribution {
                partner: u.partner.clone(),
                example_count: u.examples,
                certificate: u.certificate.clone(),
            })
            .collect();
        let sketched_sum = SketchedSum {
            aggregate_digest: sum.mask_digest(),
            contributions_digest: consortia_proto::contributions_digest(&contributions),
        };
        let mut result = RoundCollector::new(
            1,
            0,
            RoundKind::Train,
            hub.param_count,
            Default::default(),
            Instant::now(),
        )
        .finish();
        result.aggregate = Some(sum);
        result.ciphertexts = stored;
        let signers = names
            .iter()
            .map(|n| {
                let s =
                    consortia_ledger::Signer::from_pkcs8_pem_file(pki.partner_key_path(n)).unwrap();
                (n.clone(), s)
            })
            .collect();
        Round {
            _dir: dir,
            key: Arc::new(key),
            secrets,
            signers,
            updates,
            result: Some(result),
            sum: sketched_sum,
        }
    }

    type Running = tokio::task::JoinHandle<Result<Vec<u64>, DecryptionFailed>>;

    /// Starts decrypting `r`'s round (with `r`'s key, needing 2 contributors).
    fn start(hub: &Arc<Hub>, r: &mut Round, deadline: Duration) -> Running {
        let hub = hub.clone();
        let key = r.key.clone();
        let mut result = r.result.take().unwrap();
        tokio::spawn(async move { decrypt_round(&hub, &key, &mut result, 2, deadline).await })
    }

    /// A hub with `partners` connected and `r`'s key installed, decrypting
    /// round 1 of `contributors` ([`round`]) with deadline `deadline`.
    fn decrypting(
        partners: &[&str],
        contributors: &[&str],
        deadline: Duration,
    ) -> (Arc<Hub>, Inboxes, Round, Running) {
        let (hub, inbox) = hub_with(SECURE_TASK, partners);
        let mut r = round(&hub, contributors);
        hub.set_federation_key(Some(r.key.clone()));
        let running = start(&hub, &mut r, deadline);
        (hub, inbox, r, running)
    }

    const HOLDERS: [&str; 3] = ["a", "b", "c"];

    /// Plays the key holders a, b, c through the coin toss, as honest
    /// agents do; returns each holder's copy of the aggregate and the
    /// challenge the contributors are asked to sketch under.
    async fn coin_toss(
        hub: &Hub,
        inbox: &mut Inboxes,
        contributors: &[&str],
    ) -> (Aggregate, [u8; 32]) {
        let mut copy = None;
        let mut ctx = None;
        for p in HOLDERS {
            let Outbound::Decrypt { request, masks } = next(inbox.get_mut(p).unwrap()).await else {
                panic!("a decryption request first");
            };
            assert_eq!(request.contributions.len(), contributors.len());
            let shape = Shape::new(&hub_key(hub), request.values).unwrap();
            let mut agg = Aggregate::new(shape).unwrap();
            for (i, m) in masks.iter().enumerate() {
                agg.set_mask_chunk(i as u32, m, contributors.len() as u32)
                    .unwrap();
            }
            assert_eq!(agg.mask_digest().to_vec(), request.aggregate_digest);
            ctx = Some(DecryptionContext {
                toss: 0,
                task_hash: hub.task_hash,
                key_id: hub_key(hub).key_id(),
                round: 1,
                attempt: request.attempt,
                aggregate_digest: agg.mask_digest(),
            });
            copy = Some(agg);
        }
        let ctx = ctx.unwrap();
        let attempt = ctx.attempt;
        for (i, p) in HOLDERS.iter().enumerate() {
            let c = ctx.commitment(p, &[i as u8; 32]);
            hub.challenge_commit(
                p,
                &ChallengeCommit {
                    toss: 0,
                    round: 1,
                    attempt,
                    commitment: c.to_vec(),
                },
            )
            .unwrap();
        }
        for p in HOLDERS {
            match next_message(inbox.get_mut(p).unwrap()).await {
                Kind::ChallengeCommitments(l) => assert_eq!(l.commitments.len(), 3),
                other => panic!("expected the commitments, got {other:?}"),
            }
        }
        for (i, p) in HOLDERS.iter().enumerate() {
            let msg = ChallengeSeed {
                toss: 0,
                round: 1,
                attempt,
                seed: vec![i as u8; 32],
            };
            hub.challenge_seed(p, &msg).unwrap();
        }
        let want = ctx.joint_challenge(
            HOLDERS
                .iter()
                .zip([[0u8; 32], [1; 32], [2; 32]].iter())
                .map(|(h, s)| (*h, s)),
        );
        for p in HOLDERS {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::ChallengeReveals(_)
            ));
        }
        (copy.unwrap(), want)
    }

    fn hub_key(hub: &Hub) -> consortia_he::CollectivePublicKey {
        hub.federation_key().unwrap().key.clone()
    }

    /// `name`'s signed sketch of `masks_of`'s update under `challenge`.
    fn signed(
        r: &Round,
        hub: &Hub,
        name: &str,
        masks_of: &str,
        challenge: &[u8; 32],
    ) -> SignedSketch {
        signed_in(0, r, hub, name, masks_of, challenge)
    }

    /// [`signed`] for coin toss `toss`.
    fn signed_in(
        toss: u32,
        r: &Round,
        hub: &Hub,
        name: &str,
        masks_of: &str,
        challenge: &[u8; 32],
    ) -> SignedSketch {
        let sketch = Sketch::of_vector(&r.updates[masks_of], challenge)
            .unwrap()
            .to_bytes();
        let d = sketch_digest(
            &r.key.key.key_id(),
            &hub.task_hash,
            1,
            hub.attempt(),
            toss,
            name,
            10,
            &r.sum,
            challenge,
            &sketch,
        );
        SignedSketch {
            toss,
            round: 1,
            attempt: hub.attempt(),
            signature: r.signers[name].sign_hash(&d).unwrap(),
            sketch,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_holders_toss_a_coin_and_the_contributors_sketches_open_the_sum() {
        let (hub, mut inbox, r, running) = decrypting(&HOLDERS, &HOLDERS, Duration::from_secs(60));
        let (copy, challenge) = coin_toss(&hub, &mut inbox, &HOLDERS).await;
        for p in HOLDERS {
            match next_message(inbox.get_mut(p).unwrap()).await {
                Kind::SketchRequest(s) => {
                    assert_eq!(s.challenge, challenge.to_vec());
                    // It names the sum, as the key holders compute it.
                    assert_eq!(s.aggregate_digest, r.sum.aggregate_digest.to_vec());
                    assert_eq!(s.contributions_digest, r.sum.contributions_digest.to_vec());
                }
                other => panic!("expected a sketch request, got {other:?}"),
            }
        }
        // A share before the sketches are out is refused.
        let early = consortia_proto::share_pieces(1, &[0; 64]).next().unwrap();
        assert!(hub.add_share_piece("a", early).is_err());
        for p in HOLDERS {
            hub.add_sketch(p, &signed(&r, &hub, p, p, &challenge))
                .unwrap();
        }
        for p in HOLDERS {
            match next_message(inbox.get_mut(p).unwrap()).await {
                Kind::ContributorSketches(s) => assert_eq!(s.sketches.len(), 3),
                other => panic!("expected the sketches, got {other:?}"),
            }
        }
        for (i, p) in HOLDERS.iter().enumerate() {
            let share = PartialDecryptor::new(&r.secrets[i])
                .partial_decrypt(&copy, 3)
                .unwrap()
                .to_bytes();
            for piece in consortia_proto::share_pieces(1, &share) {
                hub.add_share_piece(p, piece).unwrap();
            }
        }
        let sum = running.await.unwrap().unwrap();
        assert_eq!(&sum[..VALUES], &[6u64; VALUES][..]);
    }

    /// A sketch that is not of the contributor's update (here b signs the
    /// sketch of a's masks) does not add up: the decryption fails before the
    /// key holders are sent anything to open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sketches_that_do_not_add_up_fail_the_decryption() {
        let (hub, mut inbox, r, running) = decrypting(&HOLDERS, &HOLDERS, Duration::from_secs(60));
        let (_, challenge) = coin_toss(&hub, &mut inbox, &HOLDERS).await;
        // Signed by someone else: refused at once, naming the contributor.
        let by_d = signed(&r, &hub, "d", "a", &challenge);
        assert!(matches!(
            hub.add_sketch("d", &by_d),
            Err(Rejection::OutOfPhase { .. })
        ));
        for (p, of) in [("a", "a"), ("b", "a"), ("c", "c")] {
            hub.add_sketch(p, &signed(&r, &hub, p, of, &challenge))
                .unwrap();
        }
        let failed = running.await.unwrap().unwrap_err().to_string();
        assert!(failed.contains("do not add up"), "{failed}");
    }

    /// A contributor that is gone by decryption time gives no sketch: the
    /// attempt fails, naming it (at once when it cannot be reached, at the
    /// deadline when it does not answer).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_contributor_without_a_sketch_fails_the_decryption_by_name() {
        for connected in [false, true] {
            let partners: &[&str] = if connected {
                &["a", "b", "c", "d"]
            } else {
                &["a", "b", "c"]
            };
            let (hub, mut inbox, r, running) =
                decrypting(partners, &["a", "b", "d"], Duration::from_secs(3));
            let (_, challenge) = coin_toss(&hub, &mut inbox, &["a", "b", "d"]).await;
            // With d unreachable the decryption fails as soon as its sketch is asked
            // for; sketches are refused once it has (awaited first, so that the
            // check does not race the phase).
            let mut running = Some(running);
            let failed = if connected {
                None
            } else {
                Some(running.take().unwrap().await.unwrap().unwrap_err())
            };
            for p in ["a", "b"] {
                let taken = hub.add_sketch(p, &signed(&r, &hub, p, p, &challenge));
                assert_eq!(taken.is_ok(), connected);
            }
            let failed = match failed {
                Some(f) => f,
                None => running.take().unwrap().await.unwrap().unwrap_err(),
            };
            if connected {
                assert_eq!(
                    failed,
                    DecryptionFailed::Missing {
                        what: "contributors' signed sketches",
                        from: vec!["d".into()]
                    }
                );
            } else {
                let e = failed.to_string();
                assert!(
                    e.contains("contributor `d`") && e.contains("could not be reached"),
                    "{e}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_key_holders_refusal_fails_the_decryption() {
        let (hub, mut inbox) = hub_with(SECURE_TASK, &["a", "b", "c"]);
        let mut r = round(&hub, &["a", "b"]);
        let running = start(&hub, &mut r, Duration::from_secs(60));
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
        let mut r = round(&hub, &["a", "b"]);
        let failed = start(&hub, &mut r, Duration::from_secs(60)).await.unwrap();
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
    async fn missing_commitments_at_the_deadline_fail_the_decryption() {
        let (hub, _inbox) = hub_with(SECURE_TASK, &["a", "b", "c"]);
        let mut r = round(&hub, &["a", "b"]);
        let failed = start(&hub, &mut r, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(
            failed,
            Err(DecryptionFailed::Missing {
                what: "challenge commitments",
                from: vec!["a".into(), "b".into(), "c".into()]
            })
        );
    }

    /// The secure example task with `key_threshold = 2` (a 2-of-3 key of a, b, c).
    fn two_of_three() -> String {
        let mut spec = consortia_model::TaskSpec::from_toml_str(SECURE_TASK).unwrap();
        spec.key_threshold = Some(2);
        spec.to_toml_string().unwrap()
    }

    /// Plays key holders `holders` through coin toss `toss` (commitments to
    /// seeds `[i; 32]`, then seeds), as honest agents do; returns the
    /// challenge. The holders' decryption requests were already taken.
    async fn toss_among(
        hub: &Hub,
        inbox: &mut Inboxes,
        holders: &[&str],
        toss: u32,
        digest: [u8; 32],
    ) -> [u8; 32] {
        let ctx = DecryptionContext {
            task_hash: hub.task_hash,
            key_id: hub_key(hub).key_id(),
            round: 1,
            attempt: hub.attempt(),
            toss,
            aggregate_digest: digest,
        };
        for (i, p) in holders.iter().enumerate() {
            let commit = ChallengeCommit {
                round: 1,
                attempt: hub.attempt(),
                toss,
                commitment: ctx.commitment(p, &[i as u8; 32]).to_vec(),
            };
            hub.challenge_commit(p, &commit).unwrap();
        }
        for p in holders {
            match next_message(inbox.get_mut(*p).unwrap()).await {
                Kind::ChallengeCommitments(l) => {
                    assert_eq!((l.commitments.len(), l.toss), (holders.len(), toss))
                }
                other => panic!("expected the commitments, got {other:?}"),
            }
        }
        let mut seeds = Vec::new();
        for (i, p) in holders.iter().enumerate() {
            let msg = ChallengeSeed {
                round: 1,
                attempt: hub.attempt(),
                toss,
                seed: vec![i as u8; 32],
            };
            hub.challenge_seed(p, &msg).unwrap();
            seeds.push((*p, [i as u8; 32]));
        }
        for p in holders {
            assert!(matches!(
                next_message(inbox.get_mut(*p).unwrap()).await,
                Kind::ChallengeReveals(r) if r.toss == toss
            ));
        }
        ctx.joint_challenge(seeds.iter().map(|(h, s)| (*h, s)))
    }

    /// The decryption request `p` is sent next (its masks skipped).
    async fn request_to(inbox: &mut Inboxes, p: &str) -> DecryptRequest {
        match next(inbox.get_mut(p).unwrap()).await {
            Outbound::Decrypt { request, .. } => request,
            other => panic!("expected a decryption request for {p}, got {other:?}"),
        }
    }

    /// 2-of-3: c commits late and is left out of toss 0 (the holders asked
    /// then are a and b, and c is sent no commitment list); after the
    /// sketches are relayed, b refuses: toss 1 of the same aggregate asks a
    /// and c (every contributor is still connected, so each sketches again
    /// under toss 1's challenge), and shares of toss 0 are refused in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_holder_is_left_out_and_a_refusal_after_the_sketches_tosses_again() {
        let task = two_of_three();
        let (hub, mut inbox) = hub_with(&task, &HOLDERS);
        let mut r = round(&hub, &HOLDERS);
        hub.set_federation_key(Some(r.key.clone()));
        // Commit window: 1 s.
        let running = start(&hub, &mut r, Duration::from_secs(4));
        let mut digest = [0u8; 32];
        for p in HOLDERS {
            let req = request_to(&mut inbox, p).await;
            assert_eq!(req.toss, 0);
            digest = req.aggregate_digest.try_into().unwrap();
        }
        let challenge = toss_among(&hub, &mut inbox, &["a", "b"], 0, digest).await;
        // c's commitment after the window: refused, it takes no part.
        let late = ChallengeCommit {
            round: 1,
            attempt: hub.attempt(),
            toss: 0,
            commitment: vec![0; 32],
        };
        assert!(hub.challenge_commit("c", &late).is_err());
        for p in HOLDERS {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::SketchRequest(s) if s.toss == 0
            ));
        }
        for p in HOLDERS {
            hub.add_sketch(p, &signed_in(0, &r, &hub, p, p, &challenge))
                .unwrap();
        }
        for p in ["a", "b"] {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::ContributorSketches(s) if s.sketches.len() == 3 && s.toss == 0
            ));
        }
        hub.decline(
            "b",
            1,
            "gone fishing".into(),
            consortia_proto::DeclineKind::Decryption,
        )
        .unwrap();
        // Toss 1: a and c, fresh sketches from every contributor.
        for p in ["a", "c"] {
            let req = request_to(&mut inbox, p).await;
            assert_eq!((req.toss, req.attempt), (1, hub.attempt()));
            assert_eq!(req.aggregate_digest, digest.to_vec());
        }
        assert!(inbox.get_mut("b").unwrap().try_recv().is_err());
        let challenge = toss_among(&hub, &mut inbox, &["a", "c"], 1, digest).await;
        for p in HOLDERS {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::SketchRequest(s) if s.toss == 1
            ));
        }
        // A sketch of toss 0 is refused in toss 1.
        let stale = signed_in(0, &r, &hub, "a", "a", &challenge);
        assert!(hub.add_sketch("a", &stale).is_err());
        for p in HOLDERS {
            hub.add_sketch(p, &signed_in(1, &r, &hub, p, p, &challenge))
                .unwrap();
        }
        for p in ["a", "c"] {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::ContributorSketches(s) if s.sketches.len() == 3 && s.toss == 1
            ));
        }
        // A share of toss 0 is discarded.
        let stale = consortia_proto::share_pieces(1, &[0; 64]).next().unwrap();
        assert!(matches!(
            hub.add_share_piece("a", stale),
            Err(r @ Rejection::OutOfPhase { .. }) if r.to_string().contains("coin toss 0")
        ));
        // No shares: the toss runs out at the deadline, naming a and c.
        let failed = running.await.unwrap().unwrap_err();
        assert_eq!(
            failed,
            DecryptionFailed::Missing {
                what: "decryption shares",
                from: vec!["a".into(), "c".into()]
            }
        );
    }

    /// 2-of-3: a, b and c toss the coin, the sketches are relayed, a and b
    /// send their shares and c stays connected but silent. Once the
    /// straggler window (a quarter of the 4 s deadline) has passed, c is
    /// dropped from the toss and toss 1 of the same aggregate asks a and b,
    /// who answered toss 0 (so checked its sketches): they are sent no
    /// sketches, and c is sent nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_holder_is_cut_after_the_straggler_window_and_the_others_toss_again() {
        let task = two_of_three();
        let (hub, mut inbox) = hub_with(&task, &HOLDERS);
        let mut r = round(&hub, &HOLDERS);
        hub.set_federation_key(Some(r.key.clone()));
        let running = start(&hub, &mut r, Duration::from_secs(4));
        let mut copy = None;
        for p in HOLDERS {
            let Outbound::Decrypt { request, masks } = next(inbox.get_mut(p).unwrap()).await else {
                panic!("a decryption request first");
            };
            let shape = Shape::new(&hub_key(&hub), request.values).unwrap();
            let mut agg = Aggregate::new(shape).unwrap();
            for (i, m) in masks.iter().enumerate() {
                agg.set_mask_chunk(i as u32, m, 3).unwrap();
            }
            copy = Some(agg);
        }
        let copy = copy.unwrap();
        let digest = copy.mask_digest();
        let challenge = toss_among(&hub, &mut inbox, &HOLDERS, 0, digest).await;
        for p in HOLDERS {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::SketchRequest(s) if s.toss == 0
            ));
        }
        for p in HOLDERS {
            hub.add_sketch(p, &signed_in(0, &r, &hub, p, p, &challenge))
                .unwrap();
        }
        for p in HOLDERS {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::ContributorSketches(s) if s.sketches.len() == 3
            ));
        }
        for (i, p) in ["a", "b"].iter().enumerate() {
            let share = PartialDecryptor::new(&r.secrets[i])
                .partial_decrypt(&copy, 2)
                .unwrap()
                .to_bytes();
            for piece in consortia_proto::share_pieces(1, &share) {
                hub.add_share_piece(p, piece).unwrap();
            }
        }
        // c says nothing; after the window, toss 1 asks a and b only.
        for p in ["a", "b"] {
            let req = request_to(&mut inbox, p).await;
            assert_eq!(
                (req.toss, req.aggregate_digest.clone()),
                (1, digest.to_vec())
            );
        }
        assert!(inbox.get_mut("c").unwrap().try_recv().is_err());
        toss_among(&hub, &mut inbox, &["a", "b"], 1, digest).await;
        for p in ["a", "b"] {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::ContributorSketches(s) if s.sketches.is_empty() && s.toss == 1
            ));
        }
        // No shares in toss 1: it runs out at the deadline.
        assert!(running.await.unwrap().is_err());
        assert!(inbox.get_mut("c").unwrap().try_recv().is_err());
    }

    /// 2-of-3: c leaves once the sketches were relayed to a, b and c. A
    /// contributor is gone, so toss 1 asks a and b, who checked the
    /// sketches in toss 0, and sends them none; with one more holder gone
    /// fewer than t remain and the attempt fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_contributor_holder_gone_after_the_sketches_tosses_again_without_them() {
        let task = two_of_three();
        let (hub, mut inbox) = hub_with(&task, &["a", "b"]);
        let (c_session, c_inbox) = crate::testing::connect(&hub, "c");
        inbox.insert("c".into(), c_inbox);
        let mut r = round(&hub, &HOLDERS);
        hub.set_federation_key(Some(r.key.clone()));
        let running = start(&hub, &mut r, Duration::from_secs(20));
        let mut digest = [0u8; 32];
        for p in HOLDERS {
            digest = request_to(&mut inbox, p)
                .await
                .aggregate_digest
                .try_into()
                .unwrap();
        }
        let challenge = toss_among(&hub, &mut inbox, &HOLDERS, 0, digest).await;
        for p in HOLDERS {
            next_message(inbox.get_mut(p).unwrap()).await;
            hub.add_sketch(p, &signed_in(0, &r, &hub, p, p, &challenge))
                .unwrap();
        }
        for p in HOLDERS {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::ContributorSketches(s) if s.sketches.len() == 3
            ));
        }
        hub.unregister("c", c_session);
        for p in ["a", "b"] {
            assert_eq!(request_to(&mut inbox, p).await.toss, 1);
        }
        toss_among(&hub, &mut inbox, &["a", "b"], 1, digest).await;
        // No sketch is asked for: a and b are sent none.
        for p in ["a", "b"] {
            assert!(matches!(
                next_message(inbox.get_mut(p).unwrap()).await,
                Kind::ContributorSketches(s) if s.sketches.is_empty() && s.toss == 1
            ));
        }
        hub.decline(
            "b",
            1,
            "gone too".into(),
            consortia_proto::DeclineKind::Decryption,
        )
        .unwrap();
        let failed = running.await.unwrap().unwrap_err();
        assert_eq!(
            failed,
            DecryptionFailed::KeyHolder("key holder `b`: gone too".into())
        );
        assert!(inbox.get_mut("a").unwrap().try_recv().is_err());
    }
}
