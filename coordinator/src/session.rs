//! One connected partner agent: the handle the orchestrator uses to reach
//! it, and the writer task that turns commands into the gRPC response stream.
//!
//! Models are cut into chunks lazily by the writer, from a model shared by
//! every session, and the outbound stream is bounded, so a slow partner holds
//! back only its own stream and costs a few chunks of memory.

use std::path::PathBuf;
use std::sync::Arc;

use consortia_he::Shape;

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
            } => match send_masks(&out, request, &files, &shape).await {
                Ok(()) => {}
                Err(Stop::Gone) => return,
                Err(Stop::Unreadable(why)) => {
                    tracing::warn!("stored ciphertext unreadable: {why}");
                    let _ = out
                        .send(Err(Status::internal("stored ciphertext unreadable")))
                        .await;
                    return;
                }
            },
            Outbound::Close(status) => {
                let _ = out.send(Err(status)).await;
                return;
            }
        }
    }
}

/// Why a writer stops streaming.
enum Stop {
    /// The peer went away.
    Gone,
    /// A stored ciphertext could not be read back.
    Unreadable(String),
}

/// Sends a decryption request, then the masks of every contributor's stored
/// chunks (read one at a time) with the hashes of their bodies: all a key
/// holder needs to recompute the sum's masks and check the signatures.
async fn send_masks(
    out: &mpsc::Sender<Result<ServerMessage, Status>>,
    request: DecryptRequest,
    files: &[(PathBuf, Vec<[u8; 32]>)],
    shape: &Shape,
) -> Result<(), Stop> {
    let round = request.round;
    out.send(Ok(message(Kind::Decrypt(request))))
        .await
        .map_err(|_| Stop::Gone)?;
    for (contributor, (path, body_hashes)) in files.iter().enumerate() {
        let unreadable = |e: String| Stop::Unreadable(format!("{}: {e}", path.display()));
        let mut reader =
            crate::secure::ChunkReader::open(path).map_err(|e| unreadable(e.to_string()))?;
        let mut index = 0u32;
        while let Some(stored) = reader.next_chunk().map_err(|e| unreadable(e.to_string()))? {
            let (masks, _) = shape
                .chunk_parts(index, &stored)
                .map_err(|e| unreadable(e.to_string()))?;
            let body_hash = body_hashes
                .get(index as usize)
                .ok_or_else(|| unreadable(format!("no body hash for chunk {index}")))?;
            let chunk = CiphertextChunk {
                round,
                contributor: contributor as u32,
                index,
                masks: shape.mask_chunk(index, masks),
                body_hash: body_hash.to_vec(),
            };
            index += 1;
            out.send(Ok(message(Kind::Ciphertext(chunk))))
                .await
                .map_err(|_| Stop::Gone)?;
        }
    }
    Ok(())
}
