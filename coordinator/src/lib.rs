//! consortia-coordinator: the operator's side of a federation.
//!
//! The coordinator accepts partner agents over mutually authenticated TLS,
//! runs the task's rounds (configure → collect → aggregate, after Flower's
//! Strategy interface), and keeps every completed round durable in sled so a
//! crash loses at most the round in progress.
//!
//! * [`config`] — what the operator configures: listen address, TLS files, state directory.
//! * [`store`] — the durable state: task, standardisation, global models, metrics.
//! * [`commit`] — the commit record of the durable state, checked at every start and by
//!   `consortia state verify`: a damaged or rolled-back file stops the start.
//! * [`partner_heads`] — the heads of the partners' own ledgers, sent back in `Welcome`.
//! * [`accounting`] — privacy budgets, refusals and the write-ahead ledger.
//! * [`rejection`] — why a partner's message was refused: a code (invalid, out of phase,
//!   unavailable) mapped to one gRPC status code, and what was expected.
//! * [`round`] — one round's collection and FedAvg aggregation, and how a round ends.
//! * [`secure`] — secure aggregation: the key ceremony, encrypted updates, joint decryption.
//! * [`key_holders`] — the federation key's holders: who is reachable, who answered each
//!   joint decryption, and when the coordinator re-keys by itself.
//! * [`session`] — one connected partner agent and its outbound stream.
//! * [`service`] — the gRPC service that authenticates callers and routes their messages.
//! * [`hub`] — the state sessions and the task loop share: partners, the stage in progress.
//! * [`phase`] — the protocol's phases (standardisation, key ceremony, collection, joint
//!   decryption) and the one loop that waits for them.
//! * [`selection`] — who takes part in a round, and the write-ahead privacy charge.
//! * [`step`] — the server step from a round's aggregate to the next global model.
//! * [`incident`] — a malformed ciphertext: recorded, and the federation key retired.
//! * [`report`] — the per-round table, round outcomes and the task's end.
//! * [`retry`] — bounded retries: backoff between failed attempts, and the stop after too many.
//! * [`task`] — the task loop.
//! * [`telemetry`] — the Prometheus metrics, served at `/metrics` when configured.
//! * [`console`] — the read-only web console (HTTPS, console certificates) when configured.
//! * [`orchestrator`] — the former round-loop module's public paths, re-exported.
//! * [`server`] — wiring: TLS listener, revocation reload, shutdown.

pub mod accounting;
pub mod commit;
pub mod config;
pub mod console;
pub mod error;
pub mod hub;
pub mod incident;
pub mod key_holders;
pub mod orchestrator;
pub mod partner_heads;
pub mod phase;
pub mod rejection;
pub mod report;
pub mod retry;
pub mod round;
pub mod secure;
pub mod selection;
pub mod server;
pub mod service;
pub mod session;
pub mod step;
pub mod store;
pub mod task;
pub mod telemetry;
#[cfg(test)]
mod testing;

pub use config::CoordinatorConfig;
pub use error::CoordinatorError;
pub use server::run;
