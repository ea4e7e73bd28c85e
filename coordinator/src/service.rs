//! The gRPC service: authenticates each caller by its certificate and routes
//! its messages to the round in progress.
//!
//! A partner is known only by the common name of its client certificate; no
//! message field says who is calling. Every refusal is logged with its reason
//! and answered with a `Rejection` carrying its code and what was expected
//! (the session stays open) or, for a broken stream, a gRPC status; both use
//! the codes of [`crate::rejection`].

use std::sync::Arc;
use std::time::Duration;

use consortia_he::Shape;
use consortia_model::Evaluation;
use consortia_proto::{
    ClientMessage, ContributionDigest, EncryptedChunk, ServerMessage, UpdateChunk, Welcome,
    chunk_count, chunk_range, client_message, federation_server::Federation, server_message::Kind,
    sha256,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::hub::Hub;
use crate::rejection::{Rejection, Subject};
use crate::round::no_examples;
use crate::secure::{StoredUpdate, Upload};
use crate::session::{self, COMMAND_QUEUE, Outbound, STREAM_BUFFER, SessionHandle};
use crate::telemetry::{SessionRefusal, message_kind};

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
            self.hub
                .telemetry
                .session_refused(SessionRefusal::NoCertificate);
            tracing::warn!(reason = SessionRefusal::NoCertificate.code(), detail = %s.message(), "session refused: no usable client certificate");
        })?;
        if self.hub.is_revoked(&peer.serial) {
            tracing::warn!(partner = %peer.name, reason = SessionRefusal::Revoked.code(), "session refused: certificate revoked");
            self.hub.telemetry.session_refused(SessionRefusal::Revoked);
            return Err(Status::permission_denied(format!(
                "the certificate of `{}` has been revoked",
                peer.name
            )));
        }
        if peer.name == "coordinator" || !self.hub.is_partner_name(&peer.name) {
            tracing::warn!(partner = %peer.name, reason = SessionRefusal::NotAPartner.code(), "session refused: not a partner certificate");
            self.hub
                .telemetry
                .session_refused(SessionRefusal::NotAPartner);
            return Err(Status::permission_denied(format!(
                "certificate `{}` is not a partner certificate",
                peer.name
            )));
        }
        if !self.hub.task.admits_partner(&peer.name) {
            tracing::warn!(
                partner = %peer.name,
                reason = SessionRefusal::NotInTask.code(),
                "session refused: not among the task's partners (the task file's `partners`)"
            );
            self.hub
                .telemetry
                .session_refused(SessionRefusal::NotInTask);
            return Err(Status::permission_denied(format!(
                "`{}` is not a partner of task `{}`: the task file's `partners` list does not \
                 name it (ask the coordinator's operator to add it)",
                peer.name, self.hub.task.name
            )));
        }
        if self.hub.is_connected(&peer.name) {
            tracing::warn!(
                partner = %peer.name,
                reason = SessionRefusal::AlreadyConnected.code(),
                "session refused: the partner is already connected (the running session keeps its place)"
            );
            return Err(already_connected(&self.hub, &peer.name));
        }
        // The certificate an encrypted update's and a sketch's signatures are checked against.
        let certificate = consortia_pki::peer_connect_info(&request)
            .and_then(|info| info.peer_certs().first().map(|c| c.to_vec()))
            .unwrap_or_default();
        let inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        tokio::spawn(session::writer(cmd_rx, out_tx));
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let peer = Peer {
                name: peer.name,
                serial: peer.serial,
                certificate,
            };
            read_session(hub, peer, inbound, cmd_tx).await;
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// A second session of a partner that is connected: refused, the running one
/// keeps its place. `ALREADY_EXISTS`, which an agent retries later (its own
/// earlier session may not have been noticed gone yet).
fn already_connected(hub: &Hub, partner: &str) -> Status {
    hub.telemetry
        .session_refused(SessionRefusal::AlreadyConnected);
    Status::already_exists(format!(
        "`{partner}` is already connected: a second session with the same certificate is \
         refused while the first is running"
    ))
}

/// Maps a broken inbound stream to the status the issue of the message calls for:
/// a message over the size limit is `RESOURCE_EXHAUSTED`, one that does not
/// decode is an invalid message (`INVALID_ARGUMENT`, as [`Rejection::status`]).
/// Whether a stream error is the peer's connection going away rather than bytes
/// that failed to decode: tonic reports a reset or closed HTTP/2 connection as an
/// `h2 protocol error` with code `Unknown` (or `Cancelled`/`Unavailable`).
fn is_disconnect(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unknown | Code::Cancelled | Code::Unavailable
    ) && status.message().contains("h2 protocol error")
}

fn inbound_error(status: &Status) -> Status {
    match status.code() {
        Code::OutOfRange => Status::resource_exhausted(status.message().to_string()),
        Code::Internal | Code::Unknown | Code::DataLoss => Rejection::invalid(
            Subject::Message,
            "a well-formed consortia.v1 message",
            format!("a malformed message: {}", status.message()),
        )
        .status(),
        _ => status.clone(),
    }
}

/// An update arriving chunk by chunk (one per connection at most), kept as
/// the decoded chunks until the last is in (no copy into one vector).
///
/// The chunks cannot be added to the round's sum as they arrive: an update is
/// refused whole when a later chunk is bad or never comes, and an `f64` sum
/// cannot take a partial update back out exactly (subtracting is rounded, and
/// a chunk of huge values would wipe out the other partners' contributions on
/// the way in and out).
struct PendingUpdate {
    round: u64,
    example_count: u64,
    next: u32,
    chunks: Vec<Vec<f64>>,
}

/// An encrypted update arriving chunk by chunk, written to disk as it comes
/// (one per connection at most; the partial file is removed if it fails).
struct PendingEncrypted {
    round: u64,
    example_count: u64,
    next: u32,
    shape: Shape,
    upload: Upload,
    digest: ContributionDigest,
    body_hashes: Vec<[u8; 32]>,
}

/// The authenticated partner behind a session.
struct Peer {
    name: String,
    serial: Vec<u8>,
    /// Its certificate (DER) as presented in the TLS handshake.
    certificate: Vec<u8>,
}

async fn read_session(
    hub: Arc<Hub>,
    peer: Peer,
    mut inbound: Streaming<ClientMessage>,
    tx: mpsc::Sender<Outbound>,
) {
    let Peer {
        name: partner,
        serial,
        certificate,
    } = peer;
    // The first message must be Hello.
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await;
    match first {
        Ok(Ok(Some(ClientMessage {
            kind: Some(client_message::Kind::Hello(hello)),
        }))) => {
            if hub.task.secure_aggregation
                && hello.protocol_version < consortia_proto::MIN_SECURE_PROTOCOL_VERSION
            {
                // Such an agent would wait, at decryption, for every
                // contributor's masks, which are no longer sent.
                tracing::warn!(partner = %partner, agent = %hello.agent_version, protocol = hello.protocol_version, reason = SessionRefusal::OldProtocol.code(), "session refused: the agent predates joint decryption by sketches");
                hub.telemetry.session_refused(SessionRefusal::OldProtocol);
                let _ = tx
                    .send(Outbound::Close(Status::permission_denied(format!(
                        "this agent speaks protocol {} (version {}); task `{}` uses secure \
                         aggregation, whose joint decryption needs protocol {} or newer (key \
                         holders check the aggregate by signed sketches): upgrade the agent",
                        hello.protocol_version,
                        hello.agent_version,
                        hub.task.name,
                        consortia_proto::MIN_SECURE_PROTOCOL_VERSION
                    ))))
                    .await;
                return;
            }
            tracing::info!(partner = %partner, agent = %hello.agent_version, "partner connected");
        }
        Ok(Ok(_)) => {
            tracing::warn!(partner = %partner, reason = SessionRefusal::NoHello.code(), "session refused: first message was not Hello");
            hub.telemetry.session_refused(SessionRefusal::NoHello);
            let _ = tx
                .send(Outbound::Close(
                    Rejection::out_of_phase(
                        Subject::Message,
                        "the first message of a session must be Hello",
                        "Hello",
                    )
                    .status(),
                ))
                .await;
            return;
        }
        Ok(Err(status)) => {
            tracing::warn!(partner = %partner, detail = %status.message(), "session ended before Hello");
            hub.telemetry.stream_broken(&inbound_error(&status));
            let _ = tx.send(Outbound::Close(inbound_error(&status))).await;
            return;
        }
        Err(_) => {
            tracing::warn!(partner = %partner, reason = SessionRefusal::NoHello.code(), "session refused: no Hello within 30 s");
            hub.telemetry.session_refused(SessionRefusal::NoHello);
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
        acknowledged_head: hub.partner_heads.acknowledged(&partner),
        protocol_version: consortia_proto::PROTOCOL_VERSION,
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
                key.to_message(),
            ))))
            .await
            .is_err()
    {
        return;
    }
    let registered = hub.register(
        &partner,
        SessionHandle {
            id: 0,
            serial,
            tx: tx.clone(),
        },
    );
    let Some(id) = registered else {
        // Another session of the partner started in the meantime.
        tracing::warn!(
            partner = %partner,
            reason = SessionRefusal::AlreadyConnected.code(),
            "session refused: the partner is already connected (the running session keeps its place)"
        );
        let _ = tx
            .send(Outbound::Close(already_connected(&hub, &partner)))
            .await;
        return;
    };

    let mut pending: Option<PendingUpdate> = None;
    let mut encrypted: Option<PendingEncrypted> = None;
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(status) if is_disconnect(&status) => {
                // The partner's end of the connection went away (a normal exit at the
                // end of a task, a restart, a network cut): not a malformed message.
                tracing::info!(partner = %partner, detail = %status.message(), "partner disconnected");
                break;
            }
            Err(status) => {
                let mapped = inbound_error(&status);
                tracing::warn!(partner = %partner, code = ?mapped.code(), detail = %mapped.message(), "session stream broken");
                hub.telemetry.stream_broken(&mapped);
                let _ = tx.send(Outbound::Close(mapped)).await;
                break;
            }
        };
        let kind = message_kind(&msg);
        let outcome = match msg.kind {
            None => Err(Rejection::invalid(
                Subject::Message,
                "a message of a known kind",
                "an empty message (or one of a kind this coordinator does not know)",
            )),
            Some(client_message::Kind::Hello(_)) => Err(Rejection::out_of_phase(
                Subject::Hello,
                "Hello was already received",
                "Hello only as a session's first message",
            )),
            Some(client_message::Kind::Stats(report)) => hub.add_stats(&partner, report),
            Some(client_message::Kind::Eval(report)) => {
                match serde_json::from_slice::<Evaluation>(&report.partial_json) {
                    Ok(partial) => hub.add_eval(&partner, report.model_round, partial),
                    Err(e) => Err(Rejection::invalid(
                        Subject::Evaluation,
                        "an evaluation as JSON",
                        format!("a report that is not valid JSON: {e}"),
                    )),
                }
            }
            Some(client_message::Kind::Decline(d)) => {
                let kind = d.kind();
                tracing::info!(partner = %partner, round = d.round, reason = kind.code(), detail = %d.reason, "partner declined");
                hub.decline(&partner, d.round, d.reason, kind)
            }
            Some(client_message::Kind::Update(chunk)) => {
                let r = take_chunk(&hub, &partner, &mut pending, chunk);
                if r.is_err() {
                    pending = None;
                }
                r
            }
            Some(client_message::Kind::KeyCommit(c)) => hub.key_commit(&partner, &c),
            Some(client_message::Kind::KeyShare(k)) => hub.key_share(&partner, &certificate, &k),
            Some(client_message::Kind::Encrypted(chunk)) => {
                take_encrypted(&hub, &partner, &certificate, &mut encrypted, chunk)
            }
            Some(client_message::Kind::DecryptionShare(piece)) => {
                hub.add_share_piece(&partner, piece)
            }
            Some(client_message::Kind::LedgerHead(head)) => {
                hub.partner_heads.record(&partner, &head)
            }
            Some(client_message::Kind::ChallengeCommit(c)) => hub.challenge_commit(&partner, &c),
            Some(client_message::Kind::ChallengeSeed(s)) => hub.challenge_seed(&partner, &s),
            Some(client_message::Kind::Sketch(s)) => hub.add_sketch(&partner, &s),
            Some(client_message::Kind::ThresholdKeys(k)) => hub.threshold_keys(&partner, &k),
            Some(client_message::Kind::ThresholdDealing(d)) => hub.threshold_dealing(&partner, d),
            Some(client_message::Kind::ThresholdResult(r)) => hub.threshold_result(&partner, &r),
        };
        if let Err(rejection) = outcome {
            tracing::warn!(partner = %partner, round = hub.open_round(), message_kind = kind, reason = rejection.reason_code(), "{rejection}");
            hub.telemetry.rejected(kind, &rejection);
            let round = hub.open_round().unwrap_or(0);
            let msg = session::message(Kind::Rejection(rejection.to_wire(round)));
            if tx.send(Outbound::Message(msg)).await.is_err() {
                break;
            }
        }
    }
    hub.unregister(&partner, id);
    tracing::info!(partner = %partner, "partner disconnected");
}

/// The coordinator's own disk failed while storing an update: logged for the
/// operator, answered without detail.
fn storage_failed(e: std::io::Error) -> Rejection {
    tracing::error!("cannot store an encrypted update: {e}");
    Rejection::unavailable(
        Subject::EncryptedUpdate,
        "the coordinator cannot store your update now",
    )
}

fn chunk_position(index: u32, round: u64) -> String {
    format!("chunk {index} of round {round}")
}

/// A chunk that is not the next of the update in progress (`next`: the
/// next chunk's index and round, if an update is in progress).
fn out_of_order(subject: Subject, got: &str, next: Option<(u32, u64)>) -> Rejection {
    let expected = match next {
        Some((index, round)) => chunk_position(index, round),
        None => "chunk 0 of an update first".to_string(),
    };
    Rejection::out_of_phase(subject, format!("{got} arrived out of order"), expected)
}

/// Takes one chunk of an encrypted update; a refused chunk drops the whole
/// pending update (its partial file included), so the round is untouched.
fn take_encrypted(
    hub: &Hub,
    partner: &str,
    certificate: &[u8],
    pending: &mut Option<PendingEncrypted>,
    chunk: EncryptedChunk,
) -> Result<(), Rejection> {
    let r = take_encrypted_chunk(hub, partner, certificate, pending, chunk);
    if r.is_err() {
        *pending = None;
    }
    r
}

fn take_encrypted_chunk(
    hub: &Hub,
    partner: &str,
    certificate: &[u8],
    pending: &mut Option<PendingEncrypted>,
    chunk: EncryptedChunk,
) -> Result<(), Rejection> {
    let subject = Subject::EncryptedUpdate;
    if chunk.index == 0 {
        *pending = None;
        let shape = hub.admits_encrypted(partner, chunk.round)?;
        if chunk.chunk_count != shape.chunks() {
            return Err(Rejection::invalid(
                subject,
                format!("{} chunks, as this round's updates take", shape.chunks()),
                format!("an update of {} chunks", chunk.chunk_count),
            ));
        }
        if chunk.example_count == 0 {
            return Err(no_examples(subject));
        }
        let store = hub.ciphertexts.as_ref().ok_or_else(|| {
            Rejection::out_of_phase(
                subject,
                "this task takes plaintext updates",
                "updates in the clear",
            )
        })?;
        let upload = store
            .begin(chunk.round, partner, chunk.example_count, shape.chunks())
            .map_err(storage_failed)?;
        *pending = Some(PendingEncrypted {
            round: chunk.round,
            example_count: chunk.example_count,
            next: 0,
            shape,
            upload,
            digest: ContributionDigest::new(
                &shape.key_id,
                &hub.task_hash,
                chunk.round,
                hub.attempt(),
                partner,
                chunk.example_count,
            ),
            body_hashes: Vec::with_capacity(shape.chunks() as usize),
        });
    }
    let p = match pending.as_mut() {
        Some(p) if p.round == chunk.round && p.next == chunk.index => p,
        other => {
            return Err(out_of_order(
                subject,
                &chunk_position(chunk.index, chunk.round),
                other.map(|p| (p.next, p.round)),
            ));
        }
    };
    if chunk.example_count != p.example_count || chunk.chunk_count != p.shape.chunks() {
        return Err(Rejection::invalid(
            subject,
            format!(
                "the example and chunk counts of chunk 0 ({} and {})",
                p.example_count,
                p.shape.chunks()
            ),
            format!(
                "chunk {} with {} examples and {} chunks",
                chunk.index, chunk.example_count, chunk.chunk_count
            ),
        ));
    }
    // Wrong size, dimension, key or parameter set: refused before it is stored.
    let (masks, bodies) = p
        .shape
        .check_chunk_bytes(chunk.index, &chunk.ciphertext)
        .map_err(|e| {
            Rejection::invalid(
                subject,
                "ciphertext chunks of the round's shape (size, dimension, key, parameters)",
                format!("encrypted chunk {} refused: {e}", chunk.index),
            )
        })?;
    p.upload.append(&chunk.ciphertext).map_err(storage_failed)?;
    let body_hash = sha256(bodies);
    p.digest.chunk(&sha256(masks), &body_hash);
    p.body_hashes.push(body_hash);
    p.next += 1;
    if p.next == p.shape.chunks() {
        let done = pending.take().expect("pending update present");
        // The partner's signed record of its update; refusing a bad one here
        // gives the partner a clear error.
        let digest = done.digest.finish();
        let signed = consortia_ledger::Verifier::from_cert_der(certificate)
            .map(|v| v.verify_hash(&digest, &chunk.signature))
            .unwrap_or(false);
        if !signed {
            return Err(Rejection::invalid(
                subject,
                "a signature of the update's ContributionDigest with your certificate's key, \
                 on its last chunk",
                "a signature that does not verify with your certificate's key",
            ));
        }
        let path = done
            .upload
            .finish(&chunk.signature, certificate, &done.body_hashes)
            .map_err(storage_failed)?;
        let update = StoredUpdate {
            partner: partner.to_string(),
            examples: done.example_count,
            path: path.clone(),
            signature: chunk.signature.clone(),
            certificate: certificate.to_vec(),
            body_hashes: done.body_hashes,
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
    let subject = Subject::Update;
    if chunk.chunk_count != expected_chunks {
        return Err(Rejection::invalid(
            subject,
            format!("{expected_chunks} chunks, as a model of {n} parameters takes"),
            format!("an update of {} chunks", chunk.chunk_count),
        ));
    }
    if chunk.index == 0 {
        hub.admits(partner, chunk.round)?;
        if chunk.example_count == 0 {
            return Err(no_examples(subject));
        }
        *pending = Some(PendingUpdate {
            round: chunk.round,
            example_count: chunk.example_count,
            next: 0,
            chunks: Vec::with_capacity(expected_chunks as usize),
        });
    }
    let p = match pending.as_mut() {
        Some(p) if p.round == chunk.round && p.next == chunk.index => p,
        other => {
            return Err(out_of_order(
                subject,
                &chunk_position(chunk.index, chunk.round),
                other.map(|p| (p.next, p.round)),
            ));
        }
    };
    if chunk.example_count != p.example_count {
        return Err(Rejection::invalid(
            subject,
            format!("the example count of chunk 0 ({})", p.example_count),
            format!(
                "chunk {} with {} examples",
                chunk.index, chunk.example_count
            ),
        ));
    }
    let want = chunk_range(n, chunk.index).len();
    if chunk.values.len() != want {
        return Err(Rejection::invalid(
            subject,
            format!("{want} values in chunk {}", chunk.index),
            format!("{} values", chunk.values.len()),
        ));
    }
    p.chunks.push(chunk.values);
    p.next += 1;
    if p.next == expected_chunks {
        let done = pending.take().expect("pending update present");
        hub.add_update_chunks(
            partner,
            done.round,
            done.example_count,
            chunk.train_loss,
            &done.chunks,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round::{RoundCollector, RoundKind};
    use crate::secure::{CiphertextStore, FederationKey};
    use consortia_he::{Aggregate, CollectivePublicKey, Encryptor, HeParams};
    use consortia_model::TaskSpec;
    use std::time::Instant;

    const TASK: &str = include_str!("../../examples/telco_churn_secure.toml");
    const VALUES: usize = 42;

    fn key(params: HeParams, parties: u32, id: u8) -> CollectivePublicKey {
        crate::testing::collective_key(params, parties, id)
    }

    /// A hub serving the secure example task with round 1 open to a, b, c.
    fn secure_hub(dir: &std::path::Path) -> (Hub, CollectivePublicKey) {
        let task = TaskSpec::from_toml_str(TASK).unwrap();
        let n = task.param_count();
        let k = key(HeParams::Secure128, 3, 1);
        let fed = FederationKey::new(k.clone(), vec!["a".into(), "b".into(), "c".into()], vec![])
            .unwrap();
        let hub = Hub::new(task, TASK.into(), n, Box::new(|_: &[u8]| false))
            .with_secure_aggregation(CiphertextStore::new(dir), Some(fed));
        let shape = Shape::new(&k, VALUES as u64).unwrap();
        let collector = RoundCollector::new(
            1,
            0,
            RoundKind::Train,
            n,
            ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
            Instant::now() + Duration::from_secs(60),
        )
        .with_aggregate(Aggregate::new(shape).unwrap());
        hub.open(collector);
        (hub, k)
    }

    /// Partner `a`'s certificate (DER) and signing key.
    fn identity(dir: &std::path::Path) -> (Vec<u8>, consortia_ledger::Signer) {
        let pki = consortia_pki::Pki::init(
            dir.join("pki"),
            &["127.0.0.1".to_string()],
            &["a".to_string(), "b".to_string()],
        )
        .unwrap();
        let cert = consortia_pki::read_ca_certificate(&pki.partner_cert_path("a")).unwrap();
        let signer =
            consortia_ledger::Signer::from_pkcs8_pem_file(pki.partner_key_path("a")).unwrap();
        (cert, signer)
    }

    /// A one-chunk update from `a`, signed by `signer`.
    fn chunk(
        signer: &consortia_ledger::Signer,
        key: &CollectivePublicKey,
        round: u64,
        bytes: Vec<u8>,
    ) -> EncryptedChunk {
        let shape = Shape::new(key, VALUES as u64).unwrap();
        let hash = TaskSpec::from_toml_str(TASK)
            .unwrap()
            .canonical_hash()
            .unwrap();
        let mut d = ContributionDigest::new(&key.key_id(), &hash, round, 0, "a", 100);
        // Chunks that are not of this shape are refused before their signature is read.
        let signature = match shape.chunk_parts(0, &bytes) {
            Ok((masks, bodies)) => {
                d.chunk(&sha256(masks), &sha256(bodies));
                signer.sign_hash(&d.finish()).unwrap()
            }
            Err(_) => Vec::new(),
        };
        EncryptedChunk {
            round,
            index: 0,
            chunk_count: 1,
            example_count: 100,
            ciphertext: bytes,
            signature,
        }
    }

    fn stored(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("secure/round-00000001"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn bad_encrypted_updates_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, k) = secure_hub(dir.path());
        let (cert, signer) = identity(dir.path());
        let good = Encryptor::new(&k).encrypt(&[5u64; VALUES]).unwrap();
        let good = good.chunk(0).unwrap().to_vec();
        let mut pending = None;
        let refused = |r: Result<(), Rejection>, needle: &str| match r {
            Err(r @ (Rejection::Invalid { .. } | Rejection::OutOfPhase { .. })) => {
                let m = r.to_string();
                assert!(m.contains(needle), "{m}")
            }
            other => panic!("expected a refusal naming `{needle}`, got {other:?}"),
        };
        // Wrong size: a truncated chunk.
        let r = take_encrypted(
            &hub,
            "a",
            &cert,
            &mut pending,
            chunk(&signer, &k, 1, good[..good.len() - 16].to_vec()),
        );
        refused(r, "encrypted chunk 0 refused");
        // Wrong dimension: an update of another length under the same key.
        let other_len = Encryptor::new(&k).encrypt(&[5u64; 5000]).unwrap();
        let r = take_encrypted(
            &hub,
            "a",
            &cert,
            &mut pending,
            chunk(&signer, &k, 1, other_len.chunk(0).unwrap().to_vec()),
        );
        refused(r, "refused");
        // Another key, and another modulus (the 2^64 parameter set).
        for other in [key(HeParams::Secure128, 3, 2), key(HeParams::Fast64, 3, 1)] {
            let c = Encryptor::new(&other).encrypt(&[5u64; VALUES]).unwrap();
            let r = take_encrypted(
                &hub,
                "a",
                &cert,
                &mut pending,
                chunk(&signer, &k, 1, c.chunk(0).unwrap().to_vec()),
            );
            refused(r, "refused");
        }
        // A plaintext update in a secure round.
        let mut plain = None;
        let r = take_chunk(
            &hub,
            "a",
            &mut plain,
            UpdateChunk {
                round: 1,
                index: 0,
                chunk_count: 1,
                example_count: 100,
                values: vec![0.0; hub.param_count],
                train_loss: 0.1,
            },
        );
        refused(r, "encrypted updates only");
        assert_eq!(hub.updates_received(), 0);
        assert!(stored(dir.path()).is_empty(), "{:?}", stored(dir.path()));

        // A good ciphertext whose signature is not over this update (signed
        // for another round), and one with no signature at all.
        let mut forged = chunk(&signer, &k, 1, good.clone());
        forged.signature = chunk(&signer, &k, 2, good.clone()).signature;
        refused(
            take_encrypted(&hub, "a", &cert, &mut pending, forged),
            "signature",
        );
        let mut unsigned = chunk(&signer, &k, 1, good.clone());
        unsigned.signature.clear();
        refused(
            take_encrypted(&hub, "a", &cert, &mut pending, unsigned),
            "signature",
        );
        assert_eq!(hub.updates_received(), 0);
        assert!(stored(dir.path()).is_empty(), "{:?}", stored(dir.path()));

        // A good update is stored and counted; a second one is refused.
        take_encrypted(
            &hub,
            "a",
            &cert,
            &mut pending,
            chunk(&signer, &k, 1, good.clone()),
        )
        .unwrap();
        assert_eq!(hub.updates_received(), 1);
        assert_eq!(
            stored(dir.path()),
            vec!["a.ct".to_string(), "a.sig".to_string()]
        );
        let before = std::fs::read(dir.path().join("secure/round-00000001/a.ct")).unwrap();
        let r = take_encrypted(
            &hub,
            "a",
            &cert,
            &mut pending,
            chunk(&signer, &k, 1, good.clone()),
        );
        assert_eq!(r, Err(Rejection::Duplicate { round: 1 }));
        assert_eq!(hub.updates_received(), 1);
        let after = std::fs::read(dir.path().join("secure/round-00000001/a.ct")).unwrap();
        assert_eq!(before, after);
        // A partner that is not in the round, and a round that is not open.
        assert_eq!(
            take_encrypted(
                &hub,
                "z",
                &cert,
                &mut pending,
                chunk(&signer, &k, 1, good.clone())
            ),
            Err(Rejection::NotSelected { round: 1 })
        );
        assert_eq!(
            take_encrypted(&hub, "b", &cert, &mut pending, chunk(&signer, &k, 2, good)),
            Err(Rejection::WrongRound { got: 2, open: 1 })
        );
        assert_eq!(hub.updates_received(), 1);
    }
}
