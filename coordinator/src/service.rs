//! The gRPC service: authenticates each caller by its certificate and routes
//! its messages to the round in progress.
//!
//! A partner is known only by the common name of its client certificate; no
//! message field says who is calling. Every refusal is logged with its reason
//! and answered with a `Rejection` (the session stays open) or, for a broken
//! stream, a gRPC status.

use std::sync::Arc;
use std::time::Duration;

use consortia_model::metrics::EvalPartial;
use consortia_privacy::he::Shape;
use consortia_proto::{
    ClientMessage, EncryptedChunk, Rejection as WireRejection, ServerMessage, UpdateChunk, Welcome,
    chunk_count, chunk_range, client_message, federation_server::Federation, server_message::Kind,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::orchestrator::Hub;
use crate::round::Rejection;
use crate::secure::{StoredUpdate, Upload};
use crate::session::{self, COMMAND_QUEUE, Outbound, STREAM_BUFFER, SessionHandle};

/// How long a new session may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// The coordinator's implementation of `consortia.v1.Federation`.
pub struct FederationService {
    hub: Arc<Hub>,
}

impl FederationService {
    /// Serves the given federation.
    pub fn new(hub: Arc<Hub>) -> Self {
        FederationService { hub }
    }
}

#[tonic::async_trait]
impl Federation for FederationService {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = consortia_pki::peer_identity(&request).inspect_err(|s| {
            tracing::warn!(reason = %s.message(), "session refused: no usable client certificate");
        })?;
        if self.hub.is_revoked(&peer.serial) {
            tracing::warn!(partner = %peer.name, "session refused: certificate revoked");
            return Err(Status::permission_denied(format!(
                "the certificate of `{}` has been revoked",
                peer.name
            )));
        }
        if peer.name == "coordinator" || !self.hub.is_partner_name(&peer.name) {
            tracing::warn!(partner = %peer.name, "session refused: not a partner certificate");
            return Err(Status::permission_denied(format!(
                "certificate `{}` is not a partner certificate",
                peer.name
            )));
        }
        let inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        tokio::spawn(session::writer(cmd_rx, out_tx));
        let hub = self.hub.clone();
        tokio::spawn(async move {
            read_session(hub, peer.name, peer.serial, inbound, cmd_tx).await;
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// Maps a broken inbound stream to the status the issue of the message calls for.
fn inbound_error(status: &Status) -> Status {
    match status.code() {
        Code::OutOfRange => Status::resource_exhausted(status.message().to_string()),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            Status::invalid_argument(format!("malformed message: {}", status.message()))
        }
        _ => status.clone(),
    }
}

/// An update arriving chunk by chunk (one per connection at most).
struct PendingUpdate {
    round: u64,
    example_count: u64,
    next: u32,
    values: Vec<f64>,
}

/// An encrypted update arriving chunk by chunk, written to disk as it comes
/// (one per connection at most; the partial file is removed if it fails).
struct PendingEncrypted {
    round: u64,
    example_count: u64,
    next: u32,
    shape: Shape,
    upload: Upload,
}

async fn read_session(
    hub: Arc<Hub>,
    partner: String,
    serial: Vec<u8>,
    mut inbound: Streaming<ClientMessage>,
    tx: mpsc::Sender<Outbound>,
) {
    // The first message must be Hello.
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await;
    match first {
        Ok(Ok(Some(ClientMessage {
            kind: Some(client_message::Kind::Hello(hello)),
        }))) => {
            tracing::info!(partner = %partner, agent = %hello.agent_version, "partner connected");
        }
        Ok(Ok(_)) => {
            tracing::warn!(partner = %partner, "session refused: first message was not Hello");
            let _ = tx
                .send(Outbound::Close(Status::invalid_argument(
                    "the first message of a session must be Hello",
                )))
                .await;
            return;
        }
        Ok(Err(status)) => {
            tracing::warn!(partner = %partner, reason = %status.message(), "session ended before Hello");
            let _ = tx.send(Outbound::Close(inbound_error(&status))).await;
            return;
        }
        Err(_) => {
            tracing::warn!(partner = %partner, "session refused: no Hello within 30 s");
            let _ = tx
                .send(Outbound::Close(Status::deadline_exceeded(
                    "no Hello within 30 s",
                )))
                .await;
            return;
        }
    }
    let welcome = Welcome {
        partner: partner.clone(),
        task_name: hub.task.name.clone(),
        task_toml: hub.task_toml.clone(),
    };
    if tx
        .send(Outbound::Message(session::message(Kind::Welcome(welcome))))
        .await
        .is_err()
    {
        return;
    }
    if let Some(key) = hub.federation_key()
        && tx
            .send(Outbound::Message(session::message(Kind::CollectiveKey(
                key.message(),
            ))))
            .await
            .is_err()
    {
        return;
    }
    let id = hub.register(
        &partner,
        SessionHandle {
            id: 0,
            serial,
            tx: tx.clone(),
        },
    );

    let mut pending: Option<PendingUpdate> = None;
    let mut encrypted: Option<PendingEncrypted> = None;
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(status) => {
                let mapped = inbound_error(&status);
                tracing::warn!(partner = %partner, code = ?mapped.code(), reason = %mapped.message(), "session stream broken");
                let _ = tx.send(Outbound::Close(mapped)).await;
                break;
            }
        };
        let outcome = match msg.kind {
            None => Err(Rejection::Malformed("empty message".into())),
            Some(client_message::Kind::Hello(_)) => {
                Err(Rejection::Malformed("Hello sent twice".into()))
            }
            Some(client_message::Kind::Stats(report)) => hub.add_stats(&partner, report),
            Some(client_message::Kind::Eval(report)) => {
                match serde_json::from_slice::<EvalPartial>(&report.partial_json) {
                    Ok(partial) => hub.add_eval(&partner, report.model_round, partial),
                    Err(e) => Err(Rejection::Malformed(format!(
                        "evaluation report is not valid JSON: {e}"
                    ))),
                }
            }
            Some(client_message::Kind::Decline(d)) => {
                tracing::info!(partner = %partner, round = d.round, reason = %d.reason, "partner declined the round");
                hub.decline(&partner, d.round, d.reason, d.budget_exhausted)
            }
            Some(client_message::Kind::Update(chunk)) => {
                let r = take_chunk(&hub, &partner, &mut pending, chunk);
                if r.is_err() {
                    pending = None;
                }
                r
            }
            Some(client_message::Kind::KeyCommit(c)) => hub.key_commit(&partner, &c),
            Some(client_message::Kind::KeyShare(k)) => hub.key_share(&partner, &k),
            Some(client_message::Kind::Encrypted(chunk)) => {
                let r = take_encrypted(&hub, &partner, &mut encrypted, chunk);
                if r.is_err() {
                    encrypted = None;
                }
                r
            }
            Some(client_message::Kind::DecryptionShare(piece)) => {
                hub.add_share_piece(&partner, piece)
            }
        };
        if let Err(rejection) = outcome {
            tracing::warn!(partner = %partner, "{rejection}");
            let round = hub.open_round().unwrap_or(0);
            let msg = session::message(Kind::Rejection(WireRejection {
                round,
                reason: rejection.to_string(),
            }));
            if tx.send(Outbound::Message(msg)).await.is_err() {
                break;
            }
        }
    }
    hub.unregister(&partner, id);
    tracing::info!(partner = %partner, "partner disconnected");
}

fn take_encrypted(
    hub: &Hub,
    partner: &str,
    pending: &mut Option<PendingEncrypted>,
    chunk: EncryptedChunk,
) -> Result<(), Rejection> {
    if chunk.index == 0 {
        *pending = None;
        let shape = hub.admits_encrypted(partner, chunk.round)?;
        if chunk.chunk_count != shape.chunks() {
            return Err(Rejection::Malformed(format!(
                "encrypted update announces {} chunks; this round's updates take {}",
                chunk.chunk_count,
                shape.chunks()
            )));
        }
        if chunk.example_count == 0 {
            return Err(Rejection::Malformed(
                "an update must be trained on at least one example".into(),
            ));
        }
        let store = hub
            .ciphertexts
            .as_ref()
            .ok_or_else(|| Rejection::Malformed("this task takes plaintext updates".into()))?;
        let upload = store
            .begin(chunk.round, partner, chunk.example_count, shape.chunks())
            .map_err(|e| {
                tracing::error!("cannot store an encrypted update: {e}");
                Rejection::Malformed("the coordinator cannot store your update now".into())
            })?;
        *pending = Some(PendingEncrypted {
            round: chunk.round,
            example_count: chunk.example_count,
            next: 0,
            shape,
            upload,
        });
    }
    let p = match pending.as_mut() {
        Some(p) if p.round == chunk.round && p.next == chunk.index => p,
        _ => {
            return Err(Rejection::Malformed(format!(
                "encrypted chunk {} of round {} arrived out of order",
                chunk.index, chunk.round
            )));
        }
    };
    if chunk.example_count != p.example_count || chunk.chunk_count != p.shape.chunks() {
        return Err(Rejection::Malformed(
            "example or chunk count changed between chunks of one update".into(),
        ));
    }
    // Wrong size, dimension, key or parameter set: refused before it is stored.
    p.shape
        .check_chunk_bytes(chunk.index, &chunk.ciphertext)
        .map_err(|e| {
            Rejection::Malformed(format!("encrypted chunk {} refused: {e}", chunk.index))
        })?;
    p.upload.append(&chunk.ciphertext).map_err(|e| {
        tracing::error!("cannot store an encrypted update: {e}");
        Rejection::Malformed("the coordinator cannot store your update now".into())
    })?;
    p.next += 1;
    if p.next == p.shape.chunks() {
        let done = pending.take().expect("pending update present");
        let path = done.upload.finish().map_err(|e| {
            tracing::error!("cannot store an encrypted update: {e}");
            Rejection::Malformed("the coordinator cannot store your update now".into())
        })?;
        let update = StoredUpdate {
            partner: partner.to_string(),
            examples: done.example_count,
            path: path.clone(),
        };
        if let Err(e) = hub.add_encrypted(done.round, update) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    }
    Ok(())
}

fn take_chunk(
    hub: &Hub,
    partner: &str,
    pending: &mut Option<PendingUpdate>,
    chunk: UpdateChunk,
) -> Result<(), Rejection> {
    let n = hub.param_count;
    let expected_chunks = chunk_count(n);
    if chunk.chunk_count != expected_chunks {
        return Err(Rejection::Malformed(format!(
            "update announces {} chunks; a model of {n} parameters takes {expected_chunks}",
            chunk.chunk_count
        )));
    }
    if chunk.index == 0 {
        hub.admits(partner, chunk.round)?;
        if chunk.example_count == 0 {
            return Err(Rejection::Malformed(
                "an update must be trained on at least one example".into(),
            ));
        }
        *pending = Some(PendingUpdate {
            round: chunk.round,
            example_count: chunk.example_count,
            next: 0,
            values: Vec::with_capacity(n),
        });
    }
    let p = match pending.as_mut() {
        Some(p) if p.round == chunk.round && p.next == chunk.index => p,
        _ => {
            return Err(Rejection::Malformed(format!(
                "update chunk {} of round {} arrived out of order",
                chunk.index, chunk.round
            )));
        }
    };
    if chunk.example_count != p.example_count {
        return Err(Rejection::Malformed(
            "example count changed between chunks of one update".into(),
        ));
    }
    let want = chunk_range(n, chunk.index).len();
    if chunk.values.len() != want {
        return Err(Rejection::Malformed(format!(
            "update chunk {} has {} values, expected {want}",
            chunk.index,
            chunk.values.len()
        )));
    }
    p.values.extend_from_slice(&chunk.values);
    p.next += 1;
    if p.next == expected_chunks {
        let done = pending.take().expect("pending update present");
        hub.add_update(
            partner,
            done.round,
            done.example_count,
            chunk.train_loss,
            &done.values,
        )?;
    }
    Ok(())
}
