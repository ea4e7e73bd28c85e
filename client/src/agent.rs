//! The agent's session loop: connect, say hello, answer the coordinator.
//!
//! One long-lived bidirectional stream carries everything; the agent never
//! polls. When the coordinator goes away the agent reconnects with
//! exponential backoff (1 s doubling to 30 s) and resumes with whatever
//! round the coordinator is on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use consortia_dp::{DP_SCORE_BINS, PrivacySpec, noisy_histograms};
use consortia_he::update::UpdateEncoding;
use consortia_he::{CollectivePublicKey, Encryptor, Shape};
use consortia_model::Evaluation;
use consortia_model::TaskSpec;
use consortia_model::TrainProgress;
use consortia_model::metrics::EvalPartial;
use consortia_model::standardize::FeatureStats;
use consortia_observability::progress::RoundProgress;
use consortia_pki::{ClientTls, ClientTlsFiles};
use consortia_proto::federation_client::FederationClient;
use consortia_proto::{
    ClientMessage, Decline, DeclineKind, EncryptedChunk, EvalReport, Hello, KeyCommit,
    KeyShare as KeyShareMsg, MAX_MESSAGE_BYTES, RoundStart, StatsReport, UpdateChunk, chunk_count,
    chunk_range, client_message::Kind as Up, server_message::Kind as Down, share_pieces,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::accounting::{PartnerPrivacy, task_privacy};
use crate::keys::{DecryptJob, KeyHolder};
use crate::local::LocalData;
use crate::telemetry::Telemetry;
use crate::training::{self, Contribution, ContributionKind, LocalUpdate};
use crate::{AgentConfig, AgentError};

/// What an agent did before the task finished.
#[derive(Debug, Clone, Default)]
pub struct AgentSummary {
    /// Rounds this partner trained in.
    pub rounds_trained: u64,
    /// The coordinator's closing message.
    pub detail: String,
}

/// How a session ended.
enum SessionEnd {
    Lost(String),
}

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn up(kind: Up) -> ClientMessage {
    ClientMessage { kind: Some(kind) }
}

/// Runs the agent until the task finishes, a fatal error, or `shutdown`.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<AgentSummary, AgentError> {
    run_with(cfg, shutdown, RunOptions::default()).await
}

/// How [`run_with`] departs from what the task alone decides.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Computes every round's contribution instead of the local update the task asks
    /// for ([`training::build`]): for benchmarks that time the real agent without its
    /// training (a stub that returns a fixed delta), or for research on new updates.
    /// Everything else is unchanged: the policy admits the task, and the agent charges
    /// the DP events this update states ([`LocalUpdate::events`]) to the partner's own
    /// ledger before its rows are touched. A task with `[privacy]` is refused when this
    /// update states no events (it would release updates without spending budget).
    pub local_update: Option<Arc<dyn LocalUpdate>>,
}

/// [`run`], with `options` (a caller-supplied local update).
pub async fn run_with(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()>,
    options: RunOptions,
) -> Result<AgentSummary, AgentError> {
    tokio::pin!(shutdown);
    let tls = ClientTls::new(ClientTlsFiles {
        ca_cert: cfg.tls.ca_cert.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    })
    .map_err(|e| AgentError::Tls(e.to_string()))?;
    // The partner's own privacy ledger must agree with its recorded head before
    // the agent does anything (a lost entry would be forgotten spend).
    crate::accounting::check_ledger(&cfg.state_dir)?;
    let server_name = cfg.server_name();
    let mut state = AgentState {
        local_update: options.local_update,
        ..AgentState::default()
    };
    let _metrics = state.telemetry.serve(&cfg.observability).await?;
    let mut backoff = BACKOFF_START;
    let mut failures = 0u32;
    loop {
        let attempt = async {
            let channel = tls
                .connect(&cfg.coordinator, &server_name)
                .await
                .map_err(|e| SessionEnd::Lost(format!("cannot connect: {e}")))?;
            run_session(channel, &cfg, &mut state).await
        };
        let ended = tokio::select! {
            r = attempt => r,
            () = &mut shutdown => return Ok(state.summary),
        };
        match ended {
            Ok(detail) => {
                tracing::info!("task finished: {detail}");
                state.summary.detail = detail;
                return Ok(state.summary);
            }
            Err(SessionEnd::Lost(why)) => {
                if let Some(fatal) = state.fatal.take() {
                    return Err(fatal);
                }
                if state.connected_once_this_try {
                    backoff = BACKOFF_START;
                    failures = 0;
                }
                state.connected_once_this_try = false;
                failures += 1;
                if cfg.max_connect_attempts.is_some_and(|m| failures >= m) {
                    return Err(AgentError::Unreachable {
                        attempts: failures,
                        last: why,
                    });
                }
                tracing::warn!(
                    "coordinator unreachable ({why}); reconnecting in {} s",
                    backoff.as_secs()
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    () = &mut shutdown => return Ok(state.summary),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// What survives reconnections.
#[derive(Default)]
struct AgentState {
    task: Option<TaskSpec>,
    /// The canonical hash of `task`, pinned at admission.
    task_hash: Option<[u8; 32]>,
    data: Option<LocalData>,
    privacy: Option<PartnerPrivacy>,
    keys: Option<KeyHolder>,
    summary: AgentSummary,
    fatal: Option<AgentError>,
    connected_once_this_try: bool,
    /// [`RunOptions::local_update`].
    local_update: Option<Arc<dyn LocalUpdate>>,
    /// The agent's metrics.
    telemetry: Telemetry,
}

/// Where a session is: the agent answers nothing about the task until the
/// coordinator's `Welcome` has been checked against this partner's own
/// certificate, policy and pins.
enum Session {
    /// Connected, `Welcome` not yet received.
    AwaitingWelcome,
    /// Joined the task as `partner` (the name in this partner's certificate).
    Joined {
        /// This partner's name.
        partner: String,
        /// The work in flight.
        step: Step,
    },
}

/// The one piece of work a joined session has in flight. A new round or
/// decryption request replaces it: a step the coordinator abandons is dropped
/// unanswered.
enum Step {
    /// Waiting for the coordinator.
    Idle,
    /// A round's global model is arriving in chunks.
    ReceivingModel(Incoming),
    /// A joint decryption: the round's ciphertexts are arriving (boxed: the job
    /// holds the running sum's buffers).
    Decrypting(Box<DecryptJob>),
}

impl Session {
    /// The joined session, or the protocol error of a `what` sent before `Welcome`.
    fn joined(&mut self, what: &str) -> Result<(&str, &mut Step), AgentError> {
        match self {
            Session::Joined { partner, step } => Ok((partner.as_str(), step)),
            Session::AwaitingWelcome => Err(protocol(&format!("{what} before Welcome"))),
        }
    }
}

/// A round whose model is still arriving.
struct Incoming {
    start: RoundStart,
    values: Vec<f64>,
    next: u32,
}

async fn run_session(
    channel: tonic::transport::Channel,
    cfg: &AgentConfig,
    state: &mut AgentState,
) -> Result<String, SessionEnd> {
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<ClientMessage>(4);
    let hello = up(Up::Hello(Hello {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }));
    tx.send(hello)
        .await
        .map_err(|_| SessionEnd::Lost("session closed".into()))?;
    let response = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| classify(state, &s))?;
    let mut inbound = response.into_inner();
    state.connected_once_this_try = true;
    let mut session = Session::AwaitingWelcome;
    let own_name = own_name(cfg).map_err(|e| fatal(state, e))?;
    // The ledger head last reported to the coordinator in this session.
    let mut reported_head = None;
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(SessionEnd::Lost(
                    "the coordinator closed the session".into(),
                ));
            }
            Err(s) => return Err(classify(state, &s)),
        };
        let Some(kind) = msg.kind else { continue };
        match kind {
            Down::Welcome(w) => {
                // Who this partner is comes from its own certificate, never
                // from the coordinator.
                if w.partner != own_name {
                    return Err(fatal(
                        state,
                        protocol(&format!(
                            "the coordinator calls this partner `{}`, its certificate says `{own_name}`",
                            w.partner
                        )),
                    ));
                }
                if let Err(e) = welcome(cfg, state, &own_name, &w.task_toml) {
                    // Declined as a whole: the coordinator counts it as a decline of kind round.
                    tracing::warn!(reason = DeclineKind::Round.code(), "{e}");
                    // Tell the operator why before leaving; nothing private is in it.
                    let _ = send(&tx, Up::Decline(decline(0, e.to_string()))).await;
                    // End the request stream and give the coordinator a moment to read
                    // the decline and close the session, so that it is not lost with
                    // the connection.
                    drop(tx);
                    let _ = tokio::time::timeout(Duration::from_secs(5), inbound.message()).await;
                    return Err(fatal(state, e));
                }
                // The coordinator sends back the latest head this partner reported to it:
                // a ledger that holds less was lost or rolled back with its head file.
                if let (Some(ack), Some(p)) = (&w.acknowledged_head, state.privacy.as_ref())
                    && let Err(e) = p.check_acknowledged(ack.entries, &ack.hash)
                {
                    return Err(fatal(state, e));
                }
                tracing::info!(
                    "connected to the coordinator as `{}` for task `{}`",
                    w.partner,
                    w.task_name
                );
                session = Session::Joined {
                    partner: own_name.clone(),
                    step: Step::Idle,
                };
            }
            Down::StatsRequest(r) => {
                session
                    .joined("statistics asked")
                    .map_err(|e| fatal(state, e))?;
                let Some(data) = state.data.as_ref() else {
                    return Err(fatal(state, protocol("statistics asked before Welcome")));
                };
                let s = match (state.task.as_ref(), state.privacy.as_mut()) {
                    (Some(task), Some(privacy)) => {
                        match private_statistics(&cfg.state_dir, task, data, privacy) {
                            Ok(Ok(s)) => s,
                            Ok(Err(reason)) => {
                                tracing::info!("feature statistics: declined: {reason}");
                                send(&tx, Up::Decline(budget_decline(0, reason))).await?;
                                continue;
                            }
                            Err(e) => return Err(fatal(state, e)),
                        }
                    }
                    _ => data.feature_stats(),
                };
                send(
                    &tx,
                    Up::Stats(StatsReport {
                        request_id: r.request_id,
                        count: s.count,
                        sum: s.sum,
                        sum_sq: s.sum_sq,
                    }),
                )
                .await?;
            }
            Down::RoundStart(start) => {
                let (_, step) = session
                    .joined("a round started")
                    .map_err(|e| fatal(state, e))?;
                let n = start.param_count as usize;
                let expected = state.task.as_ref().map(|t| t.param_count()).unwrap_or(0);
                if n != expected || start.chunk_count != chunk_count(n) {
                    return Err(fatal(
                        state,
                        protocol(&format!(
                            "round {} announces {n} parameters in {} chunks; the task's model has {expected}",
                            start.round, start.chunk_count
                        )),
                    ));
                }
                progress(
                    state,
                    start.round,
                    AgentPhase::ReceivingModel,
                    start.deadline_unix_ms,
                );
                *step = Step::ReceivingModel(Incoming {
                    values: Vec::with_capacity(n),
                    next: 0,
                    start,
                });
            }
            Down::ModelChunk(chunk) => {
                let (partner, step) = session
                    .joined("a model chunk sent")
                    .map_err(|e| fatal(state, e))?;
                let Step::ReceivingModel(inc) = step else {
                    continue;
                };
                let n = inc.start.param_count as usize;
                if chunk.round != inc.start.round
                    || chunk.index != inc.next
                    || chunk.param_count() != Some(chunk_range(n, chunk.index).len())
                {
                    return Err(fatal(
                        state,
                        protocol("model chunk out of order or of the wrong size"),
                    ));
                }
                chunk.extend_params(&mut inc.values);
                inc.next += 1;
                if inc.next == inc.start.chunk_count {
                    let partner = partner.to_owned();
                    let Step::ReceivingModel(done) = std::mem::replace(step, Step::Idle) else {
                        continue;
                    };
                    state.telemetry.round_asked();
                    play_round(&tx, cfg, state, &partner, done).await?;
                    state
                        .telemetry
                        .privacy(state.privacy.as_ref(), cfg, &partner);
                }
            }
            Down::Outcome(o) => {
                consortia_observability::progress::clear();
                if o.completed {
                    tracing::info!("round {} completed: {}", o.round, o.detail);
                } else {
                    tracing::info!("round {} did not complete: {}", o.round, o.detail);
                }
            }
            Down::Keygen(req) => {
                let (partner, _) = session
                    .joined("key generation asked")
                    .map_err(|e| fatal(state, e))?;
                let partner = partner.to_owned();
                let Some(task) = state.task.clone() else {
                    return Err(fatal(
                        state,
                        protocol("key generation asked before Welcome"),
                    ));
                };
                let keys = key_holder(state, &partner)?;
                match keys.keygen(&req, &task, &cfg.policy) {
                    Ok(commitment) => {
                        tracing::info!(
                            "key generation: drew secret key share {} of {} (stored 0600 in {})",
                            req.party + 1,
                            req.parties,
                            cfg.state_dir.join("keys").display()
                        );
                        send(
                            &tx,
                            Up::KeyCommit(KeyCommit {
                                session_id: req.session_id,
                                commitment: commitment.to_vec(),
                            }),
                        )
                        .await?;
                    }
                    Err(e) => tracing::warn!("key generation refused: {e}"),
                }
            }
            Down::KeyReveal(r) => {
                let (partner, _) = session
                    .joined("key reveal asked")
                    .map_err(|e| fatal(state, e))?;
                let partner = partner.to_owned();
                let Some(hash) = state.task_hash else {
                    return Err(fatal(state, protocol("key reveal asked before Welcome")));
                };
                let keys = key_holder(state, &partner)?;
                match keys.reveal(&r.session_id, &hash) {
                    Ok((public_share, signature)) => {
                        send(
                            &tx,
                            Up::KeyShare(KeyShareMsg {
                                session_id: r.session_id,
                                public_share,
                                signature,
                            }),
                        )
                        .await?;
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            Down::CollectiveKey(k) => {
                let (partner, _) = session
                    .joined("collective key sent")
                    .map_err(|e| fatal(state, e))?;
                let partner = partner.to_owned();
                let (Some(task), Some(hash)) = (state.task.clone(), state.task_hash) else {
                    return Err(fatal(state, protocol("collective key sent before Welcome")));
                };
                let keys = key_holder(state, &partner)?;
                match keys.install(&k, &task, &hash, &cfg.policy) {
                    Ok(fed) => tracing::info!(
                        "federation key installed: {} key holders ({}); this partner {}",
                        fed.committee.len(),
                        fed.committee.join(", "),
                        if fed.is_key_holder() {
                            "holds a share of the decryption key"
                        } else {
                            "is not a key holder"
                        }
                    ),
                    Err(e) => return Err(fatal(state, e)),
                }
            }
            Down::Decrypt(req) => {
                let (_, step) = session
                    .joined("decryption asked")
                    .map_err(|e| fatal(state, e))?;
                let (Some(task), Some(keys)) = (state.task.as_ref(), state.keys.as_ref()) else {
                    return Err(fatal(state, protocol("decryption asked before Welcome")));
                };
                let Some(hash) = state.task_hash else {
                    return Err(fatal(state, protocol("decryption asked before Welcome")));
                };
                let spec = state.privacy.as_ref().map(|p| &p.spec);
                *step = Step::Idle;
                let floor = cfg.policy.contributor_floor(task);
                let job = update_len(task, spec, keys, req.round)
                    .and_then(|values| keys.begin_decrypt(&req, floor, values, &hash));
                match job {
                    Ok(job) => {
                        progress(state, req.round, AgentPhase::Decrypting, 0);
                        tracing::info!(
                            "round {}: summing {} contributors' ciphertexts before decrypting",
                            req.round,
                            req.contributions.len()
                        );
                        *step = Step::Decrypting(Box::new(job));
                    }
                    Err(e) => refuse_decryption(&tx, req.round, &e).await?,
                }
            }
            Down::Ciphertext(c) => {
                let (_, step) = session
                    .joined("a ciphertext sent")
                    .map_err(|e| fatal(state, e))?;
                let Step::Decrypting(job) = step else {
                    continue;
                };
                if let Err(e) = job.add(&c) {
                    *step = Step::Idle;
                    refuse_decryption(&tx, c.round, &e).await?;
                    continue;
                }
                if job.complete() {
                    let Step::Decrypting(job) = std::mem::replace(step, Step::Idle) else {
                        continue;
                    };
                    let round = job.round();
                    let Some(keys) = state.keys.as_ref() else {
                        continue;
                    };
                    // The partial decryption is CPU work (about 0.1 µs per value).
                    let decrypt = || {
                        state
                            .telemetry
                            .time_decryption(|| keys.finish_decrypt(*job))
                    };
                    match tokio::task::block_in_place(decrypt) {
                        Ok(share) => {
                            send_share(&tx, round, &share).await?;
                            consortia_observability::progress::clear();
                            tracing::info!("round {round}: partial decryption sent");
                        }
                        Err(e) => refuse_decryption(&tx, round, &e).await?,
                    }
                }
            }
            Down::Finished(f) => {
                consortia_observability::progress::clear();
                return Ok(f.detail);
            }
            Down::Rejection(r) => match Code::from(r.code) {
                // No code: a coordinator that predates rejection codes.
                Code::Ok => tracing::warn!("the coordinator refused a message: {}", r.reason),
                code => {
                    tracing::warn!("the coordinator refused a message ({code:?}): {}", r.reason)
                }
            },
        }
        // After every charge, the ledger's head goes to the coordinator, which sends it
        // back in the next session's Welcome.
        if let Some(head) = state.privacy.as_ref().and_then(|p| p.head())
            && reported_head != Some(head)
        {
            send(
                &tx,
                Up::LedgerHead(consortia_proto::LedgerHead {
                    entries: head.entries,
                    hash: head.hash.to_vec(),
                }),
            )
            .await?;
            reported_head = Some(head);
        }
    }
}

/// This partner's name, from its own certificate (checked against the federation CA).
fn own_name(cfg: &AgentConfig) -> Result<String, AgentError> {
    let read = |p: &std::path::Path| {
        consortia_pki::read_ca_certificate(p).map_err(|message| AgentError::Config {
            path: p.to_path_buf(),
            message,
        })
    };
    let ca = read(&cfg.tls.ca_cert)?;
    let cert = read(&cfg.tls.cert)?;
    consortia_pki::verify_partner_certificate(&ca, &cert)
        .map(|who| who.name)
        .map_err(|message| AgentError::Config {
            path: cfg.tls.cert.clone(),
            message,
        })
}

fn key_holder<'a>(
    state: &'a mut AgentState,
    partner: &str,
) -> Result<&'a mut KeyHolder, SessionEnd> {
    if state.keys.is_none() {
        return Err(fatal(
            state,
            protocol(&format!(
                "key generation asked of `{partner}` before Welcome"
            )),
        ));
    }
    Ok(state.keys.as_mut().expect("checked"))
}

/// Values per encrypted update of `round`: what the round's
/// `UpdateEncoding` (the one the coordinator uses too) produces.
fn update_len(
    task: &TaskSpec,
    spec: Option<&PrivacySpec>,
    keys: &KeyHolder,
    round: u64,
) -> Result<u64, AgentError> {
    let fed = keys
        .current
        .as_ref()
        .ok_or_else(|| protocol("decryption asked before the collective key was installed"))?;
    let encoding = UpdateEncoding::for_round(
        spec,
        task.param_count(),
        task.min_partners as usize,
        &fed.key,
        round,
    )
    .map_err(|e| AgentError::Task(format!("secure round {round}: {e}")))?;
    Ok(encoding.encoded_len() as u64)
}

async fn refuse_decryption(
    tx: &mpsc::Sender<ClientMessage>,
    round: u64,
    e: &AgentError,
) -> Result<(), SessionEnd> {
    let reason = DeclineKind::Decryption.code();
    tracing::warn!(round, reason, "round {round}: decryption refused: {e}");
    send(
        tx,
        Up::Decline(Decline {
            kind: DeclineKind::Decryption.into(),
            ..decline(round, format!("decryption refused: {e}"))
        }),
    )
    .await
}

async fn send_share(
    tx: &mpsc::Sender<ClientMessage>,
    round: u64,
    share: &[u8],
) -> Result<(), SessionEnd> {
    for piece in share_pieces(round, share) {
        send(tx, Up::DecryptionShare(piece)).await?;
    }
    Ok(())
}

/// The feature statistics this partner releases for a task with `[privacy]`: the stored answer
/// when it has already released them for `task` (re-sent, costing nothing), otherwise — charged
/// write-ahead to its own ledger first — freshly noised ones, recorded durably before they are
/// sent. `Ok(Err(reason))`: the release does not fit the budget (declined).
fn private_statistics(
    state_dir: &std::path::Path,
    task: &TaskSpec,
    data: &LocalData,
    privacy: &mut PartnerPrivacy,
) -> Result<Result<FeatureStats, String>, AgentError> {
    if let Some(stored) = crate::pins::released_statistics(state_dir, &task.name)? {
        tracing::info!("feature statistics: re-sending the ones released before (no new charge)");
        return Ok(Ok(stored));
    }
    let bounds = task
        .schema
        .feature_bounds()
        .map_err(|column| AgentError::Task(format!("numeric column `{column}` has no bounds")))?;
    match privacy.admit_statistics() {
        Ok(Some(eps)) => tracing::info!(
            "feature statistics: release charged to the privacy ledger, ε after it {eps:.3}"
        ),
        Ok(None) => {}
        Err(reason) => return Ok(Err(reason)),
    }
    let stats = data.private_feature_stats(&privacy.spec, &bounds)?;
    crate::pins::record_statistics(state_dir, &task.name, &stats)?;
    Ok(Ok(stats))
}

/// A `Decline` of `round` because the partner's budget (or its policy's cap on
/// what it releases) cannot afford it: the coordinator stops selecting it.
fn budget_decline(round: u64, reason: impl Into<String>) -> Decline {
    Decline {
        kind: DeclineKind::Budget.into(),
        ..decline(round, reason)
    }
}

/// Puts the partner's rows back, logs the refusal (`log`, or the reason;
/// budget declines on standard output, other refusals on standard error)
/// and sends `d`.
async fn decline_round(
    tx: &mpsc::Sender<ClientMessage>,
    state: &mut AgentState,
    data: LocalData,
    d: Decline,
    log: Option<&str>,
) -> Result<(), SessionEnd> {
    state.data = Some(data);
    state.telemetry.declined(d.kind());
    let budget = d.kind() == DeclineKind::Budget;
    let (round, reason) = (d.round, d.kind().code());
    match (log, budget) {
        (Some(line), true) => tracing::info!(round, reason, "round {round}: {line}"),
        (Some(line), false) => tracing::warn!(round, reason, "round {round}: {line}"),
        (None, true) => tracing::info!(round, reason, "round {round}: declined: {}", d.reason),
        (None, false) => tracing::warn!(round, reason, "round {round}: refused: {}", d.reason),
    }
    send(tx, Up::Decline(d)).await
}

/// Shows where `round` is ([`RoundProgress`]): a line on a terminal, an event otherwise.
fn progress(state: &AgentState, round: u64, phase: AgentPhase, deadline_unix_ms: u64) {
    RoundProgress {
        round,
        rounds: state.task.as_ref().map_or(0, |t| u64::from(t.rounds)),
        phase: phase.code(),
        deadline_unix_ms,
    }
    .show();
}

/// The agent's phases in a round, as its progress shows them (the `phase` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentPhase {
    /// The round's global model is arriving.
    ReceivingModel,
    /// Training on the partner's rows (and evaluating, when asked).
    Training,
    /// Only evaluating the model on the held-out rows.
    Evaluating,
    /// The update is sent; waiting for the round's outcome.
    Waiting,
    /// A key holder decrypting its part of the round's sum.
    Decrypting,
}

impl AgentPhase {
    /// The `phase` code.
    fn code(self) -> &'static str {
        match self {
            AgentPhase::ReceivingModel => "receiving_model",
            AgentPhase::Training => "training",
            AgentPhase::Evaluating => "evaluating",
            AgentPhase::Waiting => "waiting",
            AgentPhase::Decrypting => "decrypting",
        }
    }
}

/// A `Decline` of `round` for `reason` (not a budget or decryption refusal).
fn decline(round: u64, reason: impl Into<String>) -> Decline {
    Decline {
        round,
        reason: reason.into(),
        kind: DeclineKind::Round.into(),
    }
}

fn protocol(msg: &str) -> AgentError {
    AgentError::Protocol(msg.to_string())
}

fn fatal(state: &mut AgentState, e: AgentError) -> SessionEnd {
    let msg = e.to_string();
    state.fatal = Some(e);
    SessionEnd::Lost(msg)
}

/// Sorts a gRPC status into "retry later" and "stop".
fn classify(state: &mut AgentState, s: &tonic::Status) -> SessionEnd {
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            fatal(state, AgentError::Refused(s.message().to_string()))
        }
        _ => SessionEnd::Lost(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn welcome(
    cfg: &AgentConfig,
    state: &mut AgentState,
    partner: &str,
    task_toml: &str,
) -> Result<(), AgentError> {
    let task = TaskSpec::from_toml_named(task_toml, "sent by the coordinator")
        .map_err(|e| AgentError::Task(e.to_string()))?;
    let hash = task
        .canonical_hash()
        .map_err(|e| AgentError::Task(e.to_string()))?;
    // One task per agent run, and never another version of it.
    if let Some(current) = &state.task
        && current.name != task.name
    {
        return Err(AgentError::Task(format!(
            "this agent serves task `{}`; the coordinator now sends task `{}`: refused (start the agent again to take part in another task)",
            current.name, task.name
        )));
    }
    crate::pins::check(&cfg.state_dir, &task.name, &hash)?;
    if state.task_hash.is_some_and(|h| h != hash) {
        return Err(AgentError::Task(format!(
            "the coordinator changed task `{}` mid-task: refused",
            task.name
        )));
    }
    // The partner's policy decides before any private row is read.
    let spec = task_privacy(&task)?;
    cfg.policy
        .admit(&task, partner, spec.as_ref(), consortia_dp::secure_rng())?;
    if spec.is_none() && cfg.privacy.is_some() {
        return Err(AgentError::Task(format!(
            "task `{}` has no [privacy] table, but this partner's configuration sets a privacy budget: refused (its rows are never used without differential privacy)",
            task.name
        )));
    }
    crate::pins::pin(&cfg.state_dir, &task.name, &hash)?;
    if state.data.is_none() {
        let data = LocalData::load(&cfg.data, &task, partner)?;
        tracing::info!(
            "loaded {}: {} training rows, {} held-out rows",
            cfg.data.display(),
            data.train_rows(),
            data.test_rows()
        );
        state.data = Some(data);
        state.privacy = match spec {
            Some(spec) => {
                let p = PartnerPrivacy::open(cfg, spec, &task.name, partner, hash)?;
                tracing::info!(
                    "differential privacy: {:?} unit, clip {}, noise multiplier {}; own ledger in {}",
                    p.spec.unit,
                    p.spec.clip_norm,
                    p.spec.noise_multiplier,
                    cfg.state_dir.display()
                );
                Some(p)
            }
            None => None,
        };
    }
    // A caller's local update that cannot be accounted for is refused before anything
    // about the rows (even their statistics) leaves.
    if let (Some(update), Some(data)) = (&state.local_update, &state.data) {
        let spec = state.privacy.as_ref().map(|p| &p.spec);
        round_update(&task, spec, Some(update), data.train_rows())?;
    }
    if state.keys.is_none() {
        state.keys = Some(
            KeyHolder::new(&cfg.state_dir, partner)
                .with_identity(&cfg.tls.key, &cfg.tls.ca_cert)?,
        );
    }
    tracing::info!(
        "task `{}` admitted by this partner's policy (task hash {})",
        task.name,
        hex::encode(hash)
    );
    state.task_hash = Some(hash);
    state.task = Some(task);
    Ok(())
}

/// The local update of a round: the caller's ([`RunOptions::local_update`]) or the one
/// the task asks for. Under `[privacy]` a caller's update must state the DP events it
/// spends for `rows` training rows: one that states none is refused.
fn round_update(
    task: &TaskSpec,
    spec: Option<&PrivacySpec>,
    local_update: Option<&Arc<dyn LocalUpdate>>,
    rows: usize,
) -> Result<Arc<dyn LocalUpdate>, AgentError> {
    let Some(update) = local_update else {
        return training::build(task, spec).map(Arc::from);
    };
    if spec.is_some() && update.events(rows)?.is_empty() {
        return Err(AgentError::Task(format!(
            "task `{}` has a [privacy] table, but the local update `{}` this agent was started \
             with (RunOptions::local_update) spends no privacy budget: refused (run a private \
             task with the task's own local update)",
            task.name,
            update.name()
        )));
    }
    Ok(update.clone())
}

async fn send(tx: &mpsc::Sender<ClientMessage>, kind: Up) -> Result<(), SessionEnd> {
    tx.send(up(kind))
        .await
        .map_err(|_| SessionEnd::Lost("session closed while sending".into()))
}

async fn play_round(
    tx: &mpsc::Sender<ClientMessage>,
    cfg: &AgentConfig,
    state: &mut AgentState,
    partner: &str,
    inc: Incoming,
) -> Result<(), SessionEnd> {
    let (Some(task), Some(data)) = (state.task.clone(), state.data.take()) else {
        return Err(fatal(state, protocol("round started before Welcome")));
    };
    let start = inc.start;
    let round = start.round;
    let model = match consortia_model::model_with_params(&task, &inc.values) {
        Ok(m) => m,
        Err(e) => {
            state.data = Some(data);
            return Err(fatal(state, protocol(&format!("global model: {e}"))));
        }
    };
    // What this partner computes on its rows, and the DP events that costs, follow
    // from the task it pinned (or the caller's override), never from the round's message.
    let spec = state.privacy.as_ref().map(|p| &p.spec);
    let update = match round_update(&task, spec, state.local_update.as_ref(), data.train_rows()) {
        Ok(u) => u,
        Err(e) => {
            state.data = Some(data);
            return Err(fatal(state, e));
        }
    };
    let mean = start.feature_mean.clone();
    let std = start.feature_std.clone();
    let rows = data.train_rows();
    // Under [privacy] only the scheduled models are evaluated — the final one, and every
    // `evaluate_every`-th when set (PrivacySpec::evaluates, as the coordinator decides) —
    // and nothing else about the held-out rows leaves. Without [privacy] every model is
    // evaluated, exactly.
    let evaluate = state
        .privacy
        .as_ref()
        .is_none_or(|p| task.is_classifier() && p.spec.evaluates(start.model_round, start.train));
    if !start.train && !evaluate {
        let reason = if task.is_classifier() {
            "this task releases no evaluation (unit = \"partner\": no noise independent \
             of the data protects a whole partner's held-out rows)"
        } else {
            "this task releases no evaluation: under [privacy] only a classifier's evaluation \
             has a private release"
        };
        return decline_round(tx, state, data, decline(round, reason), None).await;
    }
    // One update per (round, attempt): a rerun of a round under the same
    // attempt is refused before any work (or spend) on private rows.
    if start.train && !start.key_id.is_empty() {
        let signed = state
            .keys
            .as_ref()
            .map(|k| k.has_signed(round, start.attempt))
            .transpose();
        match signed {
            Ok(Some(true)) => {
                let reason = format!(
                    "this partner already sent its update for attempt {} of round {round}",
                    start.attempt
                );
                return decline_round(tx, state, data, decline(round, reason), None).await;
            }
            Ok(_) => {}
            Err(e) => {
                state.data = Some(data);
                return Err(fatal(state, e));
            }
        }
    }
    // The partner's own budget decides, before any work on private rows.
    let mut declined = None;
    let mut private_spec = None;
    if let (true, Some(p)) = (start.train, state.privacy.as_mut()) {
        // A round that also evaluates is checked as a whole first, so that its training
        // is never charged when its evaluation could not be afforded.
        let events = update.events(rows).map_err(|e| e.to_string());
        let whole = events.and_then(|events| {
            if evaluate {
                p.check_round_and_evaluation(&events)?;
            }
            Ok(events)
        });
        match whole.and_then(|events| p.admit(round, rows, &events)) {
            Ok(eps) => {
                tracing::info!(
                    "round {round}: privacy spend of {} recorded, ε after this round {eps:.3}",
                    update.name()
                );
                private_spec = Some(p.spec.clone());
            }
            Err(reason) => declined = Some(reason),
        }
    }
    // A partner whose budget is spent answers nothing about its rows, not
    // even an evaluation.
    if let Some(reason) = declined {
        return decline_round(tx, state, data, budget_decline(round, reason), None).await;
    }
    // Each evaluation is a query on the held-out rows: the policy caps them.
    let evaluations = if evaluate {
        match crate::pins::count_evaluation(&cfg.state_dir, &task.name) {
            Ok(n) => n,
            Err(e) => {
                state.data = Some(data);
                return Err(fatal(state, e));
            }
        }
    } else {
        0
    };
    if evaluations > cfg.policy.max_evaluations {
        let reason = format!(
            "this partner's policy allows {} evaluations per task (max_evaluations); the \
             coordinator asks for evaluation {evaluations}",
            cfg.policy.max_evaluations
        );
        return decline_round(tx, state, data, budget_decline(round, reason), None).await;
    }
    let train = start.train;
    // Secure aggregation: the round names the collective key to encrypt under.
    // A task that promises secure aggregation never gets a plaintext update.
    if train && task.secure_aggregation && start.key_id.is_empty() {
        let d = decline(
            round,
            "the task requires secure aggregation; this partner sends no plaintext update",
        );
        let log = "refused: the task requires secure aggregation but the round asks for a plaintext update";
        return decline_round(tx, state, data, d, Some(log)).await;
    }
    let secure_key: Option<CollectivePublicKey> = if start.key_id.is_empty() {
        None
    } else {
        match state.keys.as_ref().and_then(|k| k.current.as_ref()) {
            Some(fed) if fed.key.key_id().as_slice() == start.key_id.as_slice() => {
                Some(fed.key.clone())
            }
            _ => {
                let d = decline(
                    round,
                    "this partner does not have the round's collective key",
                );
                let log = "the round's encryption key is not the one installed here";
                return decline_round(tx, state, data, d, Some(log)).await;
            }
        }
    };
    // Write-ahead: a private evaluation is charged to this partner's own ledger (and
    // flushed) before any held-out row is scored; one its budget cannot afford is declined.
    let mut eval_noise = None;
    if let (true, Some(p)) = (evaluate, state.privacy.as_mut()) {
        match p.admit_evaluation(round, rows) {
            Ok(eps) => {
                tracing::info!(
                    "round {round}: evaluation of model {} charged to the privacy ledger, ε after it {eps:.3}",
                    start.model_round
                );
                eval_noise = Some(p.spec.evaluation_noise);
            }
            Err(reason) => {
                return decline_round(tx, state, data, budget_decline(round, reason), None).await;
            }
        }
    }
    let phase = if train {
        AgentPhase::Training
    } else {
        AgentPhase::Evaluating
    };
    progress(state, round, phase, start.deadline_unix_ms);
    let rounds = task.rounds;
    let partner = partner.to_string();
    let telemetry = state.telemetry.clone();
    // Evaluation and training are CPU work: keep them off the async threads.
    let work = tokio::task::spawn_blocking(move || {
        let mut data = data;
        let eval = evaluate.then(|| {
            let exact = data.evaluate(model.as_ref(), &mean, &std)?;
            match eval_noise {
                None => Ok(exact),
                Some(sigma) => private_evaluation(&exact, sigma),
            }
        });
        let outgoing = if train && eval.as_ref().is_none_or(Result::is_ok) {
            let mut progress = |p: TrainProgress| {
                if private_spec.is_none() {
                    tracing::info!(
                        "[{partner}] round {round}/{rounds}: epoch {}/{} on {rows} rows, loss {:.4}",
                        p.epoch, p.epochs, p.mean_loss
                    );
                } else {
                    tracing::info!(
                        "[{partner}] round {round}/{rounds}: private training done, local loss {:.4} (not sent)",
                        p.mean_loss
                    );
                }
            };
            let contribution = telemetry.time_training(|| {
                data.contribute(update.as_ref(), model.as_ref(), round, &mean, &std, &mut progress)
            });
            Some(contribution.and_then(|c| match &secure_key {
                None => Ok(Outgoing::Plain(c.vector, c.loss.unwrap_or(f64::NAN))),
                Some(key) => {
                    let spec = private_spec.as_ref();
                    let encrypt = || secure_update(&c, &task, spec, key, round, rows);
                    let (shape, chunks) = telemetry.time_encryption(encrypt)?;
                    Ok(Outgoing::Encrypted(shape, chunks))
                }
            }))
        } else {
            None
        };
        (data, eval, outgoing)
    })
    .await;
    let (data, eval, outgoing) = match work {
        Ok(x) => x,
        Err(e) => return Err(SessionEnd::Lost(format!("local work failed: {e}"))),
    };
    state.data = Some(data);
    if let Some(eval) = eval {
        let eval = eval.map_err(|e| fatal(state, e))?;
        let partial_json = serde_json::to_vec(&eval)
            .map_err(|e| SessionEnd::Lost(format!("cannot encode evaluation: {e}")))?;
        match eval_noise {
            None => tracing::info!(
                "round {round}: model of round {} scored on {} held-out rows",
                start.model_round,
                eval.examples()
            ),
            Some(sigma) => tracing::info!(
                "round {round}: model of round {} scored; sending {}-bin score histograms with \
                 discrete Gaussian noise (σ {sigma}) on every count",
                start.model_round,
                eval.as_binary().map_or(0, EvalPartial::bins)
            ),
        }
        send(
            tx,
            Up::Eval(EvalReport {
                model_round: start.model_round,
                partial_json,
            }),
        )
        .await?;
    }
    let Some(outgoing) = outgoing else {
        return Ok(());
    };
    let outgoing = match outgoing {
        Ok(x) => x,
        Err(e) => {
            let reason = DeclineKind::Round.code();
            tracing::warn!(
                round,
                reason,
                "round {round}: refused: local training failed: {e}"
            );
            send(
                tx,
                Up::Decline(decline(round, format!("local training failed: {e}"))),
            )
            .await?;
            return Ok(());
        }
    };
    match outgoing {
        Outgoing::Plain(params, loss) => {
            let n = params.len();
            let chunks = chunk_count(n);
            for index in 0..chunks {
                let values = params[chunk_range(n, index)].to_vec();
                send(
                    tx,
                    Up::Update(UpdateChunk {
                        round,
                        index,
                        chunk_count: chunks,
                        example_count: rows as u64,
                        values,
                        train_loss: loss,
                    }),
                )
                .await?;
            }
            tracing::info!(
                "[{}/{rounds}] round {round}: update sent ({rows} rows)",
                state.summary.rounds_trained + 1
            );
        }
        Outgoing::Encrypted(shape, chunks) => {
            let count = chunks.len() as u32;
            let bytes: usize = chunks.iter().map(Vec::len).sum();
            // Signed with this partner's certificate key, so key holders can
            // tell its update from one the coordinator made up.
            let hash = state.task_hash.unwrap_or_default();
            let attempt = start.attempt;
            let signature = match state.keys.as_ref().map(|k| {
                tokio::task::block_in_place(|| {
                    k.sign_update(&shape, &hash, round, attempt, rows as u64, &chunks)
                })
            }) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    let reason = DeclineKind::Round.code();
                    tracing::warn!(round, reason, "round {round}: refused: {e}");
                    return send(
                        tx,
                        Up::Decline(decline(round, format!("update not signed: {e}"))),
                    )
                    .await;
                }
                None => return Err(fatal(state, protocol("no key material"))),
            };
            for (index, ciphertext) in chunks.into_iter().enumerate() {
                let last = index as u32 + 1 == count;
                send(
                    tx,
                    Up::Encrypted(EncryptedChunk {
                        round,
                        index: index as u32,
                        chunk_count: count,
                        example_count: rows as u64,
                        ciphertext,
                        signature: if last { signature.clone() } else { Vec::new() },
                    }),
                )
                .await?;
            }
            tracing::info!(
                "[{}/{rounds}] round {round}: encrypted update sent ({rows} rows, {:.1} MiB of ciphertext)",
                state.summary.rounds_trained + 1,
                bytes as f64 / (1024.0 * 1024.0)
            );
        }
    }
    state.summary.rounds_trained += 1;
    state.telemetry.trained();
    progress(state, round, AgentPhase::Waiting, start.deadline_unix_ms);
    Ok(())
}

/// The evaluation a partner releases under `[privacy]`: its exact partial coarsened to
/// [`DP_SCORE_BINS`] bins, independent discrete Gaussian noise of scale `sigma` on each of the
/// `2·DP_SCORE_BINS` counts (clamped at 0), and every other figure rebuilt from the noised
/// histograms (`consortia_dp::release`: `1/(2σ²)`-zCDP, CKS20 Thm 14 with Δ = 1).
fn private_evaluation(exact: &Evaluation, sigma: f64) -> Result<Evaluation, AgentError> {
    let Evaluation::Binary(exact) = exact else {
        return Err(AgentError::Task(format!(
            "a {} evaluation has no differentially private release; this partner sends none",
            exact.kind()
        )));
    };
    let coarse = exact
        .coarsen(DP_SCORE_BINS)
        .map_err(|e| AgentError::Data(format!("coarsening the evaluation: {e}")))?;
    let (pos, neg) = noisy_histograms(&coarse.pos_hist, &coarse.neg_hist, sigma)
        .map_err(|e| AgentError::Data(format!("noising the evaluation: {e}")))?;
    EvalPartial::from_histograms(pos, neg)
        .map(Evaluation::Binary)
        .map_err(|e| AgentError::Data(format!("the noised evaluation: {e}")))
}

/// What a partner sends for a round.
enum Outgoing {
    /// The update's vector in the clear (a delta), with its mean training loss (NaN
    /// when private).
    Plain(Vec<f64>, f64),
    /// The encrypted update's shape and its chunks (wire form).
    Encrypted(Shape, Vec<Vec<u8>>),
}

/// The encrypted update of a secure round: the contribution encoded
/// (`UpdateEncoding`, which adds this partner's noise share under distributed DP)
/// and encrypted under the collective key.
///
/// * distributed DP: the clipped delta (partner unit) or the sum of clipped per-row
///   gradients (record unit), with the share;
/// * otherwise: the delta weighted by this partner's `rows`.
fn secure_update(
    contribution: &Contribution,
    task: &TaskSpec,
    spec: Option<&PrivacySpec>,
    key: &CollectivePublicKey,
    round: u64,
    rows: usize,
) -> Result<(Shape, Vec<Vec<u8>>), AgentError> {
    let dim = contribution.vector.len();
    let encoding = UpdateEncoding::for_round(spec, dim, task.min_partners as usize, key, round)
        .map_err(|e| AgentError::Task(format!("secure round {round}: {e}")))?;
    let dp = |e: consortia_dp::DpError| AgentError::Data(format!("encoding the update: {e}"));
    let values = match contribution.kind {
        ContributionKind::ClippedDelta | ContributionKind::GradientSum => {
            encoding.encode_ddg(&contribution.vector).map_err(dp)?
        }
        ContributionKind::Delta => encoding
            .encode_weighted(&contribution.vector, rows as u64)
            .map_err(dp)?,
    };
    let encrypted = Encryptor::new(key)
        .encrypt(&values)
        .map_err(|e| AgentError::Protocol(format!("encrypting the update: {e}")))?;
    Ok((
        *encrypted.shape(),
        encrypted.chunks().map(<[u8]>::to_vec).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::RoundInput;
    use consortia_dp::DpEvent;

    const PLAIN: &str = include_str!("../../examples/telco_churn_task.toml");
    const PRIVATE: &str = include_str!("../../examples/telco_churn_dp_eps3.toml");

    /// A caller's update that states the events it is given.
    struct Stub(Vec<(DpEvent, u64)>);

    impl LocalUpdate for Stub {
        fn name(&self) -> &'static str {
            "stub"
        }
        fn events(&self, _rows: usize) -> Result<Vec<(DpEvent, u64)>, AgentError> {
            Ok(self.0.clone())
        }
        fn compute(&self, _: RoundInput<'_>) -> Result<Contribution, AgentError> {
            Err(AgentError::Data("not used".into()))
        }
    }

    #[test]
    fn a_callers_update_replaces_the_tasks_but_not_its_privacy_accounting() {
        let plain = TaskSpec::from_toml_str(PLAIN).unwrap();
        let private = TaskSpec::from_toml_str(PRIVATE).unwrap();
        let spec = task_privacy(&private).unwrap().unwrap();
        let free: Arc<dyn LocalUpdate> = Arc::new(Stub(Vec::new()));
        // Without an override the task decides; with one, the caller's update runs.
        assert_eq!(round_update(&plain, None, None, 10).unwrap().name(), "sgd");
        assert_eq!(
            round_update(&plain, None, Some(&free), 10).unwrap().name(),
            "stub"
        );
        // A private task never runs an update that spends nothing.
        let e = round_update(&private, Some(&spec), Some(&free), 10)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("spends no privacy budget"), "{e}");
        // One that states its events is charged them like the task's own.
        let events = training::build(&private, Some(&spec))
            .unwrap()
            .events(10)
            .unwrap();
        let costed: Arc<dyn LocalUpdate> = Arc::new(Stub(events));
        assert_eq!(
            round_update(&private, Some(&spec), Some(&costed), 10)
                .unwrap()
                .name(),
            "stub"
        );
    }
}
