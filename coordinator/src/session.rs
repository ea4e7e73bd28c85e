//! One connected partner agent: the handle the orchestrator uses to reach
//! it, and the writer task that turns commands into the gRPC response stream.
//!
//! A round's model is encoded once ([`EncodedModel`]: each chunk's parameters
//! as the bytes of `ModelChunk.values`) and every session's writer sends the
//! same shared chunks, so sending the model to many partners copies it only
//! into each connection's bounded send buffers. The outbound stream is
//! bounded, so a slow partner holds back only its own stream and costs a few
//! chunks of memory.

use std::sync::Arc;
use std::time::Duration;

use consortia_proto::{
    AggregateMasks, Bytes, DecryptRequest, ModelChunk, RoundStart, ServerMessage, chunk_count,
    chunk_range, params_bytes, server_message::Kind,
};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio::time::Instant;
use tonic::Status;

/// Outbound messages queued per session before the orchestrator sees it as stalled.
pub const COMMAND_QUEUE: usize = 16;
/// Encoded messages buffered in the response stream.
pub const STREAM_BUFFER: usize = 4;

/// Sessions that stream a round's model at the same time; the others wait for a
/// lane (at most [`LANE_WAIT`]). A round starts by sending the model to every
/// selected partner at once: paced, the coordinator holds a few sessions' model
/// bytes in its encoding and HTTP/2 send buffers instead of every partner's, and
/// the partners' updates come back spread out instead of all at once.
pub const MODEL_LANES: usize = 8;
/// Longest a session waits for a lane before it sends the model without one.
pub const LANE_WAIT: Duration = Duration::from_secs(2);
/// Longest a session keeps its lane: a partner that reads slowly (or not at all)
/// holds up the others for at most this long.
pub const LANE_HOLD: Duration = Duration::from_secs(1);

/// A round's model in its wire form, encoded once and shared by every session:
/// chunk `i` holds the parameters [`chunk_range`]`(n, i)` as `ModelChunk.values`.
#[derive(Debug)]
pub struct EncodedModel {
    param_count: usize,
    chunks: Vec<Bytes>,
    /// The round's [`MODEL_LANES`].
    lanes: Semaphore,
}

impl EncodedModel {
    /// Encodes `model` chunk by chunk.
    pub fn new(model: &[f64]) -> Self {
        let n = model.len();
        EncodedModel {
            param_count: n,
            chunks: (0..chunk_count(n))
                .map(|i| params_bytes(&model[chunk_range(n, i)]))
                .collect(),
            lanes: Semaphore::new(MODEL_LANES),
        }
    }

    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.param_count
    }

    /// The chunks' `values`, in order (cloning one shares its bytes).
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The parameters back (for checks).
    pub fn params(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.param_count);
        for (index, values) in self.chunks.iter().enumerate() {
            ModelChunk {
                round: 0,
                index: index as u32,
                values: values.clone(),
            }
            .extend_params(&mut out);
        }
        out
    }
}

/// What the orchestrator asks a session's writer to send.
#[derive(Debug)]
pub enum Outbound {
    /// One message as is.
    Message(ServerMessage),
    /// A round: its `RoundStart`, then the model as `ModelChunk`s.
    Round {
        /// The round's header.
        start: RoundStart,
        /// The global model, encoded once for all sessions.
        model: Arc<EncodedModel>,
    },
    /// A decryption request, then the aggregate's masks as `AggregateMasks`
    /// (the same chunks, shared, for every key holder).
    Decrypt {
        /// The request.
        request: DecryptRequest,
        /// The aggregate's masks, chunk by chunk, in mask-chunk wire form.
        masks: Arc<Vec<Vec<u8>>>,
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
                if send_round(&out, start, &model).await.is_err() {
                    return;
                }
            }
            Outbound::Decrypt { request, masks } => {
                if send_masks(&out, request, &masks).await.is_err() {
                    return;
                }
            }
            Outbound::Close(status) => {
                let _ = out.send(Err(status)).await;
                return;
            }
        }
    }
}

/// The peer went away.
struct Gone;

/// Sends a round's header, then its model in a lane of the round's
/// [`MODEL_LANES`] (or without one after [`LANE_WAIT`]).
async fn send_round(
    out: &mpsc::Sender<Result<ServerMessage, Status>>,
    start: RoundStart,
    model: &EncodedModel,
) -> Result<(), Gone> {
    let round = start.round;
    let mut lane = None;
    send_paced(
        out,
        message(Kind::RoundStart(start)),
        &mut lane,
        Instant::now(),
    )
    .await?;
    lane = tokio::time::timeout(LANE_WAIT, model.lanes.acquire())
        .await
        .ok()
        .and_then(Result::ok);
    let release_at = Instant::now() + LANE_HOLD;
    for (index, values) in model.chunks().iter().enumerate() {
        let chunk = ModelChunk {
            round,
            index: index as u32,
            values: values.clone(),
        };
        send_paced(out, message(Kind::ModelChunk(chunk)), &mut lane, release_at).await?;
    }
    Ok(())
}

/// Queues `msg` on the response stream; a lane held past `release_at` is given
/// up while waiting, so a stalled partner does not keep it.
async fn send_paced(
    out: &mpsc::Sender<Result<ServerMessage, Status>>,
    msg: ServerMessage,
    lane: &mut Option<SemaphorePermit<'_>>,
    release_at: Instant,
) -> Result<(), Gone> {
    let send = out.send(Ok(msg));
    tokio::pin!(send);
    if lane.is_some() {
        tokio::select! {
            sent = &mut send => return sent.map_err(|_| Gone),
            () = tokio::time::sleep_until(release_at) => *lane = None,
        }
    }
    send.await.map_err(|_| Gone)
}

/// Sends a decryption request, then the aggregate's masks chunk by chunk:
/// all a key holder needs to check and open the sum, whatever the number of
/// contributors.
async fn send_masks(
    out: &mpsc::Sender<Result<ServerMessage, Status>>,
    request: DecryptRequest,
    masks: &[Vec<u8>],
) -> Result<(), Gone> {
    let (round, attempt, toss) = (request.round, request.attempt, request.toss);
    out.send(Ok(message(Kind::Decrypt(request))))
        .await
        .map_err(|_| Gone)?;
    for (index, chunk) in masks.iter().enumerate() {
        let m = AggregateMasks {
            round,
            attempt,
            toss,
            index: index as u32,
            masks: chunk.clone(),
        };
        out.send(Ok(message(Kind::AggregateMasks(m))))
            .await
            .map_err(|_| Gone)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(round: u64) -> RoundStart {
        RoundStart {
            round,
            ..Default::default()
        }
    }

    /// A writer for one session: its command queue and its response stream.
    fn session() -> (
        mpsc::Sender<Outbound>,
        mpsc::Receiver<Result<ServerMessage, Status>>,
    ) {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(writer(cmd_rx, out_tx));
        (cmd_tx, out_rx)
    }

    /// The kinds of the messages queued on a response stream so far.
    fn drain(out: &mut mpsc::Receiver<Result<ServerMessage, Status>>) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        while let Ok(Ok(m)) = out.try_recv() {
            kinds.push(match m.kind {
                Some(Kind::RoundStart(_)) => "start",
                Some(Kind::ModelChunk(_)) => "chunk",
                _ => "other",
            });
        }
        kinds
    }

    #[test]
    fn the_encoded_model_is_the_model_in_wire_chunks() {
        let n = CHUNK_VALUES_FOR_TESTS * 2 + 3;
        let model: Vec<f64> = (0..n).map(|i| i as f64 * 0.5 - 7.0).collect();
        let encoded = EncodedModel::new(&model);
        assert_eq!(encoded.chunks().len(), chunk_count(n) as usize);
        assert_eq!(encoded.param_count(), n);
        assert_eq!(encoded.params(), model);
    }

    const CHUNK_VALUES_FOR_TESTS: usize = consortia_proto::CHUNK_VALUES;

    /// Lets the other tasks run for a while (no clock involved).
    async fn settle() {
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn the_model_waits_for_a_free_lane() {
        let n = CHUNK_VALUES_FOR_TESTS * 3;
        let model = Arc::new(EncodedModel::new(&vec![1.0; n]));
        // Every lane is taken (by sessions sending the model to other partners).
        let taken = model.lanes.acquire_many(MODEL_LANES as u32).await.unwrap();
        let (tx, mut out) = session();
        tx.send(Outbound::Round {
            start: start(1),
            model: model.clone(),
        })
        .await
        .unwrap();
        settle().await;
        // The round's header goes out at once, the model waits for a lane.
        assert_eq!(drain(&mut out), ["start"]);
        drop(taken);
        settle().await;
        assert_eq!(drain(&mut out), vec!["chunk"; chunk_count(n) as usize]);
        assert_eq!(model.lanes.available_permits(), MODEL_LANES);
    }

    #[tokio::test]
    async fn a_stalled_partner_gives_its_lane_up_after_the_hold() {
        let model = EncodedModel::new(&[1.0]);
        // A response stream nobody reads, full.
        let (out_tx, _out_rx) = mpsc::channel(1);
        out_tx
            .send(Ok(message(Kind::ModelChunk(ModelChunk::default()))))
            .await
            .unwrap();
        let mut lane = Some(model.lanes.acquire().await.unwrap());
        assert_eq!(model.lanes.available_permits(), MODEL_LANES - 1);
        // Held past its release time while the send is stuck: the lane is given
        // up, the send still waits.
        let send = send_paced(
            &out_tx,
            message(Kind::ModelChunk(ModelChunk::default())),
            &mut lane,
            Instant::now(),
        );
        let stuck = tokio::time::timeout(Duration::from_millis(200), send).await;
        assert!(stuck.is_err(), "the send cannot complete on a full stream");
        assert!(lane.is_none());
        assert_eq!(model.lanes.available_permits(), MODEL_LANES);
    }
}
