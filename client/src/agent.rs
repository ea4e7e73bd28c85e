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
    ClientMessage, Decline, DeclineKind, DecryptionSharePiece, EncryptedChunk, EvalReport, Hello,
    KeyCommit, KeyShare as KeyShareMsg, MAX_MESSAGE_BYTES, RoundStart, StatsReport, UpdateChunk,
    chunk_count, chunk_range, client_message::Kind as Up, server_message::Kind as Down,
    share_pieces,
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
    /// A joint decryption this partner holds a key share for: the
    /// aggregate's masks, the coin toss, then the contributors' sketches
    /// (boxed: the job holds the aggregate's masks). A `SketchRequest` for
    /// this partner's own update is answered alongside, whatever the step.
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
        protocol_version: consortia_proto::PROTOCOL_VERSION,
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
                if let Err(e) = welcome(cfg, state, &own_name, &w.task_toml, w.protocol_version) {
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
                // A new round: the previous one's update is no longer sketched.
                if let Some(keys) = state.keys.as_mut() {
                    keys.end_round();
                }
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
                if let Some(keys) = state.keys.as_mut() {
                    keys.end_round();
                }
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
            Down::ThresholdStart(_) | Down::ThresholdDeal(_) | Down::ThresholdDealing(_) => {
                let (partner, _) = session
                    .joined("threshold key dealing")
                    .map_err(|e| fatal(state, e))?;
                let partner = partner.to_owned();
                let (Some(task), Some(hash)) = (state.task.clone(), state.task_hash) else {
                    return Err(fatal(
                        state,
                        protocol("threshold key dealing before Welcome"),
                    ));
                };
                let keys = key_holder(state, &partner)?;
                threshold_step(&tx, keys, &task, &hash, kind).await?;
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
                            "round {}: receiving the aggregate's masks to decrypt the sum of {} \
                             contributors",
                            req.round,
                            req.contributions.len()
                        );
                        *step = Step::Decrypting(Box::new(job));
                    }
                    Err(e) => refuse_decryption(&tx, req.round, &e).await?,
                }
            }
            Down::AggregateMasks(m) => {
                let (_, step) = session
                    .joined("the aggregate's masks sent")
                    .map_err(|e| fatal(state, e))?;
                let Step::Decrypting(job) = step else {
                    continue;
                };
                match job.add_masks(&m) {
                    Ok(None) => {}
                    Ok(Some(commit)) => {
                        tracing::info!(
                            "round {}: the aggregate's masks match the sum asked for; committed \
                             to a challenge seed",
                            m.round
                        );
                        send(&tx, Up::ChallengeCommit(commit)).await?;
                    }
                    Err(e) => {
                        *step = Step::Idle;
                        refuse_decryption(&tx, m.round, &e).await?;
                    }
                }
            }
            Down::ChallengeCommitments(list) => {
                let (_, step) = session
                    .joined("challenge commitments sent")
                    .map_err(|e| fatal(state, e))?;
                let Step::Decrypting(job) = &mut *step else {
                    continue;
                };
                let Some(keys) = state.keys.as_ref() else {
                    continue;
                };
                match keys.reveal_seed(job, &list) {
                    Ok(seed) => send(&tx, Up::ChallengeSeed(seed)).await?,
                    Err(e) => {
                        *step = Step::Idle;
                        refuse_decryption(&tx, list.round, &e).await?;
                    }
                }
            }
            Down::ChallengeReveals(r) => {
                let (_, step) = session
                    .joined("challenge seeds sent")
                    .map_err(|e| fatal(state, e))?;
                let Step::Decrypting(job) = step else {
                    continue;
                };
                if let Err(e) = job.take_reveals(&r) {
                    *step = Step::Idle;
                    refuse_decryption(&tx, r.round, &e).await?;
                }
            }
            Down::SketchRequest(req) => {
                // Answered whatever this partner's own step (it is usually a
                // key holder in the middle of the same decryption).
                session
                    .joined("a sketch asked")
                    .map_err(|e| fatal(state, e))?;
                let (Some(keys), Some(hash)) = (state.keys.as_ref(), state.task_hash) else {
                    return Err(fatal(state, protocol("a sketch asked before Welcome")));
                };
                let signed = tokio::task::block_in_place(|| keys.sketch(&req, &hash));
                match signed {
                    Ok(s) => {
                        tracing::info!(
                            "round {}: signed sketch of this partner's update sent",
                            req.round
                        );
                        send(&tx, Up::Sketch(s)).await?;
                    }
                    Err(e) => refuse_decryption(&tx, req.round, &e).await?,
                }
            }
            Down::ContributorSketches(sketches) => {
                let (_, step) = session
                    .joined("contributors' sketches sent")
                    .map_err(|e| fatal(state, e))?;
                let Step::Decrypting(_) = step else {
                    continue;
                };
                let Step::Decrypting(job) = std::mem::replace(step, Step::Idle) else {
                    continue;
                };
                let (round, toss) = (job.round(), job.toss_number());
                let Some(keys) = state.keys.as_ref() else {
                    continue;
                };
                // The sketch check and the partial decryption are CPU work
                // (about 0.1 µs per value).
                let decrypt = || {
                    state
                        .telemetry
                        .time_decryption(|| keys.finish_decrypt(*job, &sketches))
                };
                match tokio::task::block_in_place(decrypt) {
                    Ok(share) => {
                        send_share(&tx, round, toss, &share).await?;
                        consortia_observability::progress::clear();
                        tracing::info!("round {round}: partial decryption sent");
                    }
                    Err(e) => refuse_decryption(&tx, round, &e).await?,
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

/// One step of a t-of-N key's dealing (`keys::threshold`): answers the
/// coordinator, or logs why not. A complaint about a dealer is logged as an
/// error and sent to the coordinator, naming the dealer; no threshold share
/// is stored then.
async fn threshold_step(
    tx: &mpsc::Sender<ClientMessage>,
    keys: &mut KeyHolder,
    task: &TaskSpec,
    hash: &[u8; 32],
    kind: Down,
) -> Result<(), SessionEnd> {
    let session_id = keys
        .current
        .as_ref()
        .map(|k| k.key.session().id.to_vec())
        .unwrap_or_default();
    let outcome = match kind {
        Down::ThresholdStart(_) => match keys.threshold_recipient_keys(task, hash) {
            Ok(k) => return send(tx, Up::ThresholdKeys(k)).await,
            Err(e) => Err(e),
        },
        Down::ThresholdDeal(req) => match keys.threshold_deal(task, hash, &req.recipients) {
            Ok(mut dealing) => {
                // The commitments first, then one sealed box per message.
                let boxes = std::mem::take(&mut dealing.sealed);
                send(tx, Up::ThresholdDealing(dealing.clone())).await?;
                for b in boxes {
                    send(
                        tx,
                        Up::ThresholdDealing(consortia_proto::ThresholdDealing {
                            session_id: dealing.session_id.clone(),
                            dealer: dealing.dealer,
                            commitments: Vec::new(),
                            signature: Vec::new(),
                            sealed: vec![b],
                            box_digests: Vec::new(),
                        }),
                    )
                    .await?;
                }
                return Ok(());
            }
            Err(e) => Err(e),
        },
        Down::ThresholdDealing(d) => keys.threshold_receive(task, hash, d),
        _ => return Ok(()),
    };
    let result = match outcome {
        Ok(false) => return Ok(()),
        Ok(true) => {
            tracing::info!(
                "threshold key: every dealer's subshares checked; this holder's share of the \
                 {}-of-{} key is stored (0600)",
                task.key_threshold.unwrap_or(0),
                keys.current.as_ref().map_or(0, |k| k.committee.len())
            );
            consortia_proto::ThresholdKeyResult {
                session_id,
                stored: true,
                ..Default::default()
            }
        }
        Err(AgentError::ThresholdDealing {
            dealer,
            party,
            subset,
            message,
        }) => {
            let e = AgentError::ThresholdDealing {
                dealer,
                party,
                subset: subset.clone(),
                message: message.clone(),
            };
            tracing::error!("{e}");
            consortia_proto::ThresholdKeyResult {
                session_id,
                stored: false,
                dealer: party,
                subset: subset.unwrap_or_default(),
                reason: message,
                complaint: keys.take_threshold_complaint(),
            }
        }
        Err(e) => {
            tracing::warn!("{e}");
            return Ok(());
        }
    };
    send(tx, Up::ThresholdResult(result)).await
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
    toss: u32,
    share: &[u8],
) -> Result<(), SessionEnd> {
    for piece in share_pieces(round, share) {
        send(
            tx,
            Up::DecryptionShare(DecryptionSharePiece { toss, ..piece }),
        )
        .await?;
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
    coordinator_protocol: u32,
) -> Result<(), AgentError> {
    let task = TaskSpec::from_toml_named(task_toml, "sent by the coordinator")
        .map_err(|e| AgentError::Task(e.to_string()))?;
    // A coordinator that predates joint decryption by sketches would send every
    // contributor's masks, which this agent no longer reads: the round would only
    // time out. Say so at once instead.
    if task.secure_aggregation
        && coordinator_protocol < consortia_proto::MIN_SECURE_PROTOCOL_VERSION
    {
        return Err(AgentError::Task(format!(
            "task `{}` uses secure aggregation, and the coordinator speaks protocol \
             {coordinator_protocol}; this agent needs {} or newer (joint decryption by signed \
             sketches): refused — ask the operator to upgrade the coordinator",
            task.name,
            consortia_proto::MIN_SECURE_PROTOCOL_VERSION
        )));
    }
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
        .is_none_or(|p| p.spec.evaluates(start.model_round, start.train));
    if !start.train && !evaluate {
        let reason = "this task releases no evaluation (unit = \"partner\": no noise independent \
             of the data protects a whole partner's held-out rows)";
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
                eval_noise = Some((p.spec.evaluation_noise, p.spec.evaluation_bounds));
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
    // A recommendation partner keeps its users' factors, fitted against this model.
    let keep = state
        .task_hash
        .map(|hash| (cfg.state_dir.clone(), hash, start.model_round));
    // Evaluation and training are CPU work: keep them off the async threads.
    let work = tokio::task::spawn_blocking(move || {
        let mut data = data;
        let eval = evaluate.then(|| match eval_noise {
            None => data.evaluate(model.as_ref(), &mean, &std),
            Some((sigma, bounds)) => {
                private_evaluation(&mut data, model.as_ref(), &task, &mean, &std, sigma, bounds)
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
        if let Some((dir, hash, model_round)) = &keep
            && let Err(e) = data.keep_user_factors(model.as_ref(), dir, *hash, *model_round)
        {
            tracing::warn!("{e}; `consortia score --state` will fit the users' factors instead");
        }
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
            Some((sigma, _)) => match eval.as_binary() {
                Some(p) => tracing::info!(
                    "round {round}: model of round {} scored; sending {}-bin score histograms \
                     with discrete Gaussian noise (σ {sigma}) on every count",
                    start.model_round,
                    p.bins()
                ),
                None => tracing::info!(
                    "round {round}: model of round {} scored; sending its {} evaluation as \
                     clipped sums with discrete Gaussian noise (σ {sigma} × sensitivity) on each",
                    start.model_round,
                    eval.kind()
                ),
            },
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
            let signature = match state.keys.as_mut().map(|k| {
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

/// The evaluation a partner releases under `[privacy]` (record unit), by the task's kind.
/// Every release is `1/(2σ²)`-zCDP under add/remove of one record, σ the task's
/// `evaluation_noise` (Canonne, Kamath, Steinke 2020, Thm 14), and charged as such
/// ([`PrivacySpec::evaluation_events`]) before this function runs:
///
/// * binary: the exact partial coarsened to [`DP_SCORE_BINS`] bins, independent discrete
///   Gaussian noise of scale σ on each of the `2·DP_SCORE_BINS` counts (clamped at 0), every
///   other figure rebuilt from the noised histograms (`consortia_dp::release`: Δ = 1);
/// * regression (record: one held-out row) and recommendation (record: one user with all
///   their ratings): the bounded sums of [`LocalData::private_evaluation_sums`] — each
///   record's contribution clipped to the task's `evaluation_bounds` or rating scale —
///   with discrete Gaussian noise of scale σ·Δ on each sum, Δ their L2 sensitivity
///   (`consortia_dp::noisy_bounded_sums`), and the figures rebuilt from the noised sums
///   (`RegressionPartial::from_private_sums`, `RecommendationPartial::from_private_sums`).
///
/// Nothing exact about the held-out data leaves: the exact partial or sums are dropped here.
fn private_evaluation(
    data: &mut LocalData,
    model: &dyn consortia_model::Model,
    task: &TaskSpec,
    mean: &[f64],
    std: &[f64],
    sigma: f64,
    bounds: Option<[f64; 2]>,
) -> Result<Evaluation, AgentError> {
    let noise = |e: consortia_dp::DpError| AgentError::Data(format!("noising the evaluation: {e}"));
    let rebuilt =
        |e: consortia_model::MetricsError| AgentError::Data(format!("the noised evaluation: {e}"));
    match task.evaluation_kind() {
        "binary" => {
            let Evaluation::Binary(exact) = data.evaluate(model, mean, std)? else {
                return Err(AgentError::Data(
                    "a classifier did not evaluate into score histograms".into(),
                ));
            };
            let coarse = exact
                .coarsen(DP_SCORE_BINS)
                .map_err(|e| AgentError::Data(format!("coarsening the evaluation: {e}")))?;
            let (pos, neg) =
                noisy_histograms(&coarse.pos_hist, &coarse.neg_hist, sigma).map_err(noise)?;
            EvalPartial::from_histograms(pos, neg)
                .map(Evaluation::Binary)
                .map_err(|e| AgentError::Data(format!("the noised evaluation: {e}")))
        }
        "regression" => {
            let sums = data.private_evaluation_sums(model, mean, std, bounds)?;
            let noised = consortia_dp::noisy_bounded_sums(&sums, sigma).map_err(noise)?;
            let bounds = bounds.ok_or_else(|| {
                AgentError::Task("set `evaluation_bounds = [lo, hi]` in [privacy]".into())
            })?;
            consortia_model::RegressionPartial::from_private_sums(&noised, bounds)
                .map(Evaluation::Regression)
                .map_err(rebuilt)
        }
        _ => {
            let sums = data.private_evaluation_sums(model, mean, std, None)?;
            let noised = consortia_dp::noisy_bounded_sums(&sums, sigma).map_err(noise)?;
            let [lo, hi] = task
                .schema
                .ratings
                .as_ref()
                .map(|r| r.scale)
                .ok_or_else(|| AgentError::Task("the task declares no rating scale".into()))?;
            consortia_model::RecommendationPartial::from_private_sums(&noised, hi - lo)
                .map(Evaluation::Recommendation)
                .map_err(rebuilt)
        }
    }
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

    /// `task` with a record-unit `[privacy]` table (σ_e = `sigma`) plus `extra` keys.
    fn private_task(text: &str, sigma: f64, extra: &str) -> TaskSpec {
        let task = TaskSpec::from_toml_str(&format!(
            "{text}\n[privacy]\nepsilon = 50.0\ndelta = 1e-6\nclip_norm = 1.0\n\
             noise_multiplier = 1.0\nsampling_rate = 0.01\nevaluation_noise = {sigma}\n{extra}"
        ))
        .unwrap();
        task.privacy_spec().unwrap().unwrap();
        task
    }

    /// A CLV GLM's private evaluation at small noise (σ_e = 1) is close to the exact figures
    /// of the rows clipped to `evaluation_bounds`, and far from those of the unclipped rows:
    /// no unclipped value reaches the release. It carries no histograms and no deviance.
    ///
    /// Noise per sum: √5·σ_e of its bound (Δ = √5 grid-free). Tolerances are 6 standard
    /// deviations of the figure (first-order), a false-failure rate below 1e-8 each.
    #[test]
    fn a_private_regression_release_is_the_clipped_one_plus_small_noise() {
        let bounds = [0.0, 100.0];
        let task = private_task(
            include_str!("../../examples/clv_glm.toml"),
            1.0,
            "evaluation_bounds = [0.0, 100.0]",
        );
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/data/cdnow_clv_customers.csv"
        );
        let mut data = LocalData::load(std::path::Path::new(path), &task, "p").unwrap();
        let d = task.schema.feature_count();
        let (mean, std) = (vec![0.0; d], vec![1.0; d]);
        // Predicts e^0.02·… ≈ 1 for every row: most targets are 0, some in the thousands.
        let model = consortia_model::model_with_params(&task, &vec![0.01; d + 1]).unwrap();
        let Evaluation::Regression(raw) = data.evaluate(model.as_ref(), &mean, &std).unwrap()
        else {
            panic!("a glm evaluates as regression")
        };
        let sums = data
            .private_evaluation_sums(model.as_ref(), &mean, &std, Some(bounds))
            .unwrap();
        let clipped =
            consortia_model::RegressionPartial::from_private_sums(&sums.exact(), bounds).unwrap();
        let Evaluation::Regression(noised) = private_evaluation(
            &mut data,
            model.as_ref(),
            &task,
            &mean,
            &std,
            1.0,
            Some(bounds),
        )
        .unwrap() else {
            panic!("a regression release")
        };
        assert!(noised.private && noised.pred_count.is_empty() && noised.sum_deviance == 0.0);
        noised.validate().unwrap();
        let (n, w) = (clipped.n as f64, bounds[1] - bounds[0]);
        let s = 5f64.sqrt();
        let rmse = |p: &consortia_model::RegressionPartial| (p.sum_sq_error / p.n as f64).sqrt();
        let rel = ((s * w * w / clipped.sum_sq_error).powi(2) + (s / n).powi(2)).sqrt();
        let tol = 6.0 * 0.5 * rel * rmse(&clipped);
        assert!(
            (rmse(&noised) - rmse(&clipped)).abs() < tol,
            "{noised:?} vs {clipped:?}"
        );
        // The unclipped rows' RMSE is far outside that band.
        assert!(
            (rmse(&raw) - rmse(&clipped)).abs() > 20.0 * tol,
            "{}",
            rmse(&raw)
        );
        assert!((noised.n as f64 - n).abs() < 6.0 * s + 1.0);
        let mae_tol = 6.0
            * ((s * w / clipped.sum_abs_error).powi(2) + (s / n).powi(2)).sqrt()
            * (clipped.sum_abs_error / n);
        assert!(
            (noised.sum_abs_error / noised.n as f64 - clipped.sum_abs_error / n).abs() < mae_tol
        );
        assert!(noised.sum_y <= noised.n as f64 * bounds[1]);
        assert!(
            raw.sum_y > 1.5 * clipped.sum_y,
            "{} {}",
            raw.sum_y,
            clipped.sum_y
        );
        let m = consortia_model::RegressionMetrics::from_partial(&noised);
        assert!(m.deviance.is_nan() && m.gini.is_nan() && m.top20_capture.is_nan());
    }

    /// A recommender's private evaluation at small noise (σ_e = 1) counts users, not
    /// ratings, and is close to the exact per-user figures; each user enters through their
    /// mean errors only. Tolerances as above (Δ = √6 per sum).
    #[test]
    fn a_private_recommendation_release_is_per_user_plus_small_noise() {
        let task = private_task(include_str!("../../examples/recommend_mf.toml"), 1.0, "");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/data/movielens_ratings.csv"
        );
        let mut data = LocalData::load(std::path::Path::new(path), &task, "p").unwrap();
        let model = consortia_model::initial_model(&task).unwrap();
        let Evaluation::Recommendation(raw) = data.evaluate(model.as_ref(), &[], &[]).unwrap()
        else {
            panic!("an mf evaluates as recommendation")
        };
        let span = 4.5;
        let sums = data
            .private_evaluation_sums(model.as_ref(), &[], &[], None)
            .unwrap();
        let exact =
            consortia_model::RecommendationPartial::from_private_sums(&sums.exact(), span).unwrap();
        let Evaluation::Recommendation(noised) =
            private_evaluation(&mut data, model.as_ref(), &task, &[], &[], 1.0, None).unwrap()
        else {
            panic!("a recommendation release")
        };
        assert!(noised.private && noised.unknown_items == 0);
        noised.validate().unwrap();
        let s = 6f64.sqrt();
        // Users, not ratings: 671 users hold about 20,000 held-out ratings.
        assert_eq!(exact.n, 671);
        assert!(raw.n > 10 * exact.n, "{}", raw.n);
        assert!((noised.n as f64 - exact.n as f64).abs() < 6.0 * s + 1.0);
        assert!((noised.users as f64 - exact.users as f64).abs() < 6.0 * s + 1.0);
        // Σ per-user MSE: noise of standard deviation √6·span² at most.
        assert!((noised.sum_sq_error - exact.sum_sq_error).abs() < 6.0 * s * span * span);
        assert!(exact.sum_sq_error < raw.sum_sq_error / 10.0);
        let per_user = |p: &consortia_model::RecommendationPartial| p.sum_ndcg / p.users as f64;
        let users = exact.users as f64;
        let tol = 6.0 * s * (1.0 + per_user(&exact)) / users;
        assert!((per_user(&noised) - per_user(&exact)).abs() < tol);
    }
}
