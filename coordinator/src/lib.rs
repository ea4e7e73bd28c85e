//! consortia-coordinator: the operator's side of a federation.
//!
//! The coordinator accepts partner agents over mutually authenticated TLS,
//! runs the task's rounds (configure → collect → aggregate, after Flower's
//! Strategy interface), and keeps every completed round durable in sled so a
//! crash loses at most the round in progress.
//!
//! * [`config`] — what the operator configures: listen address, TLS files, state directory.
//! * [`store`] — the durable state: task, standardisation, global models, metrics.
//! * [`accounting`] — privacy budgets, refusals and the write-ahead ledger.
//! * [`round`] — one round's collection and FedAvg aggregation.
//! * [`secure`] — secure aggregation: the key ceremony, encrypted updates, joint decryption.
//! * [`session`] — one connected partner agent and its outbound stream.
//! * [`service`] — the gRPC service that authenticates callers and routes their messages.
//! * [`orchestrator`] — the round loop.
//! * [`server`] — wiring: TLS listener, revocation reload, shutdown.

pub mod accounting;
pub mod config;
pub mod error;
pub mod orchestrator;
pub mod round;
pub mod secure;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
#[cfg(test)]
mod testing;

pub use config::CoordinatorConfig;
pub use error::CoordinatorError;
pub use server::run;
