//! The agent's session loop: connect, say hello, answer the coordinator.
//!
//! One long-lived bidirectional stream carries everything; the agent never
//! polls. When the coordinator goes away the agent reconnects with
//! exponential backoff (1 s doubling to 30 s) and resumes with whatever
//! round the coordinator is on.

use std::future::Future;
use std::time::Duration;

use consortia_model::TaskSpec;
use consortia_model::logistic::LogisticModel;
use consortia_pki::{ClientTls, ClientTlsFiles};
use consortia_proto::federation_client::FederationClient;
use consortia_proto::{
    ClientMessage, Decline, EvalReport, Hello, MAX_MESSAGE_BYTES, RoundStart, StatsReport,
    UpdateChunk, chunk_count, chunk_range, client_message::Kind as Up,
    server_message::Kind as Down,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::accounting::{PartnerPrivacy, task_privacy};
use crate::local::LocalData;
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
    tokio::pin!(shutdown);
    let tls = ClientTls::new(ClientTlsFiles {
        ca_cert: cfg.tls.ca_cert.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    })
    .map_err(|e| AgentError::Tls(e.to_string()))?;
    let server_name = cfg.server_name();
    let mut state = AgentState::default();
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
                println!("task finished: {detail}");
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
                eprintln!(
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
    data: Option<LocalData>,
    privacy: Option<PartnerPrivacy>,
    summary: AgentSummary,
    fatal: Option<AgentError>,
    connected_once_this_try: bool,
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
    let mut incoming: Option<Incoming> = None;
    let mut partner = String::new();
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
                partner = w.partner.clone();
                welcome(cfg, state, &w.partner, &w.task_toml).map_err(|e| fatal(state, e))?;
                println!(
                    "connected to the coordinator as `{}` for task `{}`",
                    w.partner, w.task_name
                );
            }
            Down::StatsRequest(r) => {
                let Some(data) = state.data.as_ref() else {
                    return Err(fatal(state, protocol("statistics asked before Welcome")));
                };
                let s = data.feature_stats();
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
                let n = start.param_count as usize;
                let expected = state
                    .task
                    .as_ref()
                    .map(|t| t.schema.param_count())
                    .unwrap_or(0);
                if n != expected || start.chunk_count != chunk_count(n) {
                    return Err(fatal(
                        state,
                        protocol(&format!(
                            "round {} announces {n} parameters in {} chunks; the task's model has {expected}",
                            start.round, start.chunk_count
                        )),
                    ));
                }
                incoming = Some(Incoming {
                    values: Vec::with_capacity(n),
                    next: 0,
                    start,
                });
            }
            Down::ModelChunk(chunk) => {
                let Some(inc) = incoming.as_mut() else {
                    continue;
                };
                let n = inc.start.param_count as usize;
                if chunk.round != inc.start.round
                    || chunk.index != inc.next
                    || chunk.values.len() != chunk_range(n, chunk.index).len()
                {
                    return Err(fatal(
                        state,
                        protocol("model chunk out of order or of the wrong size"),
                    ));
                }
                inc.values.extend_from_slice(&chunk.values);
                inc.next += 1;
                if inc.next == inc.start.chunk_count {
                    let Some(done) = incoming.take() else {
                        continue;
                    };
                    play_round(&tx, state, &partner, done).await?;
                }
            }
            Down::Outcome(o) => {
                if o.completed {
                    println!("round {} completed: {}", o.round, o.detail);
                } else {
                    println!("round {} did not complete: {}", o.round, o.detail);
                }
            }
            Down::Finished(f) => return Ok(f.detail),
            Down::Rejection(r) => {
                eprintln!("the coordinator refused a message: {}", r.reason);
            }
        }
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
    let task = TaskSpec::from_toml_str(task_toml).map_err(|e| AgentError::Task(e.to_string()))?;
    let same_task = state.task.as_ref().is_some_and(|t| t.name == task.name);
    if !same_task || state.data.is_none() {
        let data = LocalData::load(&cfg.data, &task, partner)?;
        println!(
            "loaded {}: {} training rows, {} held-out rows",
            cfg.data.display(),
            data.train_rows(),
            data.test_rows()
        );
        state.data = Some(data);
        state.privacy = match task_privacy(&task)? {
            Some(spec) => {
                let p = PartnerPrivacy::open(cfg, spec, &task.name, partner)?;
                println!(
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
    state.task = Some(task);
    Ok(())
}

async fn send(tx: &mpsc::Sender<ClientMessage>, kind: Up) -> Result<(), SessionEnd> {
    tx.send(up(kind))
        .await
        .map_err(|_| SessionEnd::Lost("session closed while sending".into()))
}

async fn play_round(
    tx: &mpsc::Sender<ClientMessage>,
    state: &mut AgentState,
    partner: &str,
    inc: Incoming,
) -> Result<(), SessionEnd> {
    let (Some(task), Some(data)) = (state.task.clone(), state.data.take()) else {
        return Err(fatal(state, protocol("round started before Welcome")));
    };
    let start = inc.start;
    let round = start.round;
    let feature_count = task.schema.feature_count();
    let model = match LogisticModel::from_params(&inc.values, feature_count) {
        Ok(m) => m,
        Err(e) => {
            state.data = Some(data);
            return Err(fatal(state, protocol(&format!("global model: {e}"))));
        }
    };
    let mean = start.feature_mean.clone();
    let std = start.feature_std.clone();
    let rows = data.train_rows();
    // The partner's own budget decides, before any work on private rows.
    let mut declined = None;
    let mut private_spec = None;
    if let (true, Some(p)) = (start.train, state.privacy.as_mut()) {
        match p.admit(round, rows) {
            Ok(eps) => {
                println!("round {round}: privacy spend recorded, ε after this round {eps:.3}");
                private_spec = Some(p.spec.clone());
            }
            Err(reason) => declined = Some(reason),
        }
    }
    let train = start.train && declined.is_none();
    let rounds = task.rounds;
    let partner = partner.to_string();
    // Evaluation and training are CPU work: keep them off the async threads.
    let work = tokio::task::spawn_blocking(move || {
        let mut data = data;
        let eval = data.evaluate(&model, &mean, &std);
        let trained = if train && eval.is_ok() {
            let mut local = model.clone();
            let report = match &private_spec {
                Some(spec) => data
                    .train_private(&mut local, &task, spec, round, &mean, &std)
                    .map(|loss| {
                        println!("[{partner}] round {round}/{rounds}: private training done, local loss {loss:.4} (not sent)");
                        f64::NAN
                    }),
                None => data
                    .train(&mut local, &task, round, &mean, &std, |p| {
                        println!(
                            "[{partner}] round {round}/{rounds}: epoch {}/{} on {rows} rows, loss {:.4}",
                            p.epoch, p.epochs, p.mean_loss
                        );
                    })
                    .map(|r| r.mean_loss),
            };
            Some(report.map(|loss| (local, loss)))
        } else {
            None
        };
        (data, eval, trained)
    })
    .await;
    let (data, eval, trained) = match work {
        Ok(x) => x,
        Err(e) => return Err(SessionEnd::Lost(format!("local work failed: {e}"))),
    };
    state.data = Some(data);
    let eval = eval.map_err(|e| fatal(state, e))?;
    let partial_json = serde_json::to_vec(&eval)
        .map_err(|e| SessionEnd::Lost(format!("cannot encode evaluation: {e}")))?;
    println!(
        "round {round}: model of round {} scored on {} held-out rows",
        start.model_round, eval.n
    );
    send(
        tx,
        Up::Eval(EvalReport {
            model_round: start.model_round,
            partial_json,
        }),
    )
    .await?;
    if let Some(reason) = declined {
        println!("round {round}: declined: {reason}");
        send(
            tx,
            Up::Decline(Decline {
                round,
                reason,
                budget_exhausted: true,
            }),
        )
        .await?;
        return Ok(());
    }
    let Some(trained) = trained else {
        return Ok(());
    };
    let (local, loss) = match trained {
        Ok(x) => x,
        Err(e) => {
            send(
                tx,
                Up::Decline(Decline {
                    round,
                    reason: format!("local training failed: {e}"),
                    budget_exhausted: false,
                }),
            )
            .await?;
            return Ok(());
        }
    };
    let params = local.to_params();
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
    state.summary.rounds_trained += 1;
    println!("round {round}: update sent ({rows} rows)");
    Ok(())
}
