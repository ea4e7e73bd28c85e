//! One connected partner agent: the handle the orchestrator uses to reach
//! it, and the writer task that turns commands into the gRPC response stream.
//!
//! Models are cut into chunks lazily by the writer, from a model shared by
//! every session, and the outbound stream is bounded, so a slow partner holds
//! back only its own stream and costs a few chunks of memory.

use std::path::PathBuf;
use std::sync::Arc;

use consortia_privacy::he::Shape;

use consortia_proto::{
    CiphertextChunk, DecryptRequest, ModelChunk, RoundStart, ServerMessage, chunk_count,
    chunk_range, server_message::Kind,
};
use tokio::sync::mpsc;
use tonic::Status;

/// Outbound messages queued per session before the orchestrator sees it as stalled.
pub const COMMAND_QUEUE: usize = 16;
/// Encoded messages buffered in the response stream.
pub const STREAM_BUFFER: usize = 4;

/// What the orchestrator asks a session's writer to send.
#[derive(Debug)]
pub enum Outbound {
    /// One message as is.
    Message(ServerMessage),
    /// A round: its `RoundStart`, then the model as `ModelChunk`s.
    Round {
        /// The round's header.
        start: RoundStart,
        /// The global model (shared by all sessions).
        model: Arc<Vec<f64>>,
    },
    /// A decryption request, then the masks of every contributor's stored
    /// ciphertext, read from disk one chunk at a time.
    Decrypt {
        /// The request.
        request: DecryptRequest,
        /// The contributors' encrypted updates with the hashes of their
        /// chunks' bodies, in the request's order.
        files: Arc<Vec<(PathBuf, Vec<[u8; 32]>)>>,
        /// The round's ciphertext shape.
        shape: Shape,
    },
    /// End the stream with this status.
    Close(Status),
}

/// The orchestrator's handle on a connected partner.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Unique per connection, to tell a reconnection from the old session.
    pub id: u64,
    /// Serial number of the partner's certificate (for revocation checks).
    pub serial: Vec<u8>,
    /// Command queue of the writer task.
    pub tx: mpsc::Sender<Outbound>,
}

impl SessionHandle {
    /// Queues a command; false if the session is gone or stalled.
    pub fn send(&self, cmd: Outbound) -> bool {
        self.tx.try_send(cmd).is_ok()
    }
}

/// Wraps a message kind.
pub fn message(kind: Kind) -> ServerMessage {
    ServerMessage { kind: Some(kind) }
}

/// Runs a session's writer until the command queue closes or the peer goes away.
pub async fn writer(
    mut commands: mpsc::Receiver<Outbound>,
    out: mpsc::Sender<Result<ServerMessage, Status>>,
) {
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Outbound::Message(m) => {
                if out.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            Outbound::Round { start, model } => {
                let round = start.round;
                let n = model.len();
                if out
                    .send(Ok(message(Kind::RoundStart(start))))
                    .await
                    .is_err()
                {
                    return;
                }
                for index in 0..chunk_count(n) {
                    let values = model[chunk_range(n, index)].to_vec();
                    let chunk = ModelChunk {
                        round,
                        index,
                        values,
                    };
                    if out
                        .send(Ok(message(Kind::ModelChunk(chunk))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Outbound::Decrypt {
                request,
                files,
                shape,
            } => {
                let round = request.round;
                if out.send(Ok(message(Kind::Decrypt(request)))).await.is_err() {
                    return;
                }
                for (contributor, (path, body_hashes)) in files.iter().enumerate() {
                    let mut reader = match crate::secure::ChunkReader::open(path) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(path = %path.display(), "stored ciphertext unreadable: {e}");
                            let _ = out
                                .send(Err(Status::internal("stored ciphertext unreadable")))
                                .await;
                            return;
                        }
                    };
                    let mut index = 0u32;
                    loop {
                        let ciphertext = match reader.next_chunk() {
                            Ok(Some(c)) => c,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(path = %path.display(), "stored ciphertext unreadable: {e}");
                                let _ = out
                                    .send(Err(Status::internal("stored ciphertext unreadable")))
                                    .await;
                                return;
                            }
                        };
                        // Key holders need the masks only; the bodies' hash
                        // lets them check the sender's signature.
                        let Ok((masks, _)) = shape.chunk_parts(index, &ciphertext) else {
                            tracing::warn!(path = %path.display(), "stored ciphertext does not match the round's shape");
                            let _ = out
                                .send(Err(Status::internal("stored ciphertext unreadable")))
                                .await;
                            return;
                        };
                        let chunk = CiphertextChunk {
                            round,
                            contributor: contributor as u32,
                            index,
                            masks: shape.mask_chunk(index, masks),
                            body_hash: body_hashes
                                .get(index as usize)
                                .map(|h| h.to_vec())
                                .unwrap_or_default(),
                        };
                        index += 1;
                        if out
                            .send(Ok(message(Kind::Ciphertext(chunk))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            Outbound::Close(status) => {
                let _ = out.send(Err(status)).await;
                return;
            }
        }
    }
}
