//! consortia-client: the partner agent that runs next to a partner's private data.
//!
//! The agent connects to the coordinator over mutual TLS, keeps one live
//! session, and for every round it is asked into: scores the global model on
//! its held-out rows, trains locally, and sends back only the model update.
//! Raw rows never leave the partner. It reconnects with backoff when the
//! coordinator goes away and reports what it is doing as it goes.
//!
//! * [`config`] — what the partner configures.
//! * [`policy`] — what the partner accepts, checked before any private row is read.
//! * [`pins`] — the tasks it admitted, pinned by their canonical hash.
//! * [`accounting`] — the partner's own privacy budget and ledger.
//! * [`local`] — the partner's data: loading, hold-out split, standardisation.
//! * [`training`] — the local update it computes each round ([`training::LocalUpdate`]).
//! * [`keys`] — its share of the federation key and its partial decryptions.
//! * [`seal`] — threshold subshares sealed to their recipient (X25519, HKDF, ChaCha20-Poly1305).
//! * [`telemetry`] — its Prometheus metrics, served at `/metrics` when configured.
//! * [`user_factors`] — a recommendation partner's own users' factors, kept for scoring.
//! * [`agent`] — the session loop ([`run`]; [`run_with`] takes a caller's local update).

pub mod accounting;
pub mod agent;
pub mod config;
pub mod error;
pub mod keys;
pub mod local;
pub mod pins;
pub mod policy;
pub use consortia_seal as seal;
pub mod telemetry;
mod test_hooks;
pub mod training;
pub mod user_factors;

pub use agent::{AgentSummary, RunOptions, run, run_with};
pub use config::AgentConfig;
pub use error::AgentError;
