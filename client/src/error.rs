//! Errors of the partner agent.

use std::path::PathBuf;

/// What stops a partner agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A configuration file is missing or invalid.
    #[error("{path}: {message}")]
    Config {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The partner's data does not match the task's feature schema.
    #[error("local data refused: {0}")]
    Data(String),
    /// The task sent by the coordinator is not acceptable.
    #[error("task refused: {0}")]
    Task(String),
    /// TLS material could not be loaded.
    #[error("TLS set-up: {0}")]
    Tls(String),
    /// The task, or a request of the coordinator, is outside the partner's policy.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyViolation),
    /// The coordinator refused this partner for good (revoked or unknown certificate).
    #[error("the coordinator refused this partner: {0}")]
    Refused(String),
    /// The coordinator sent something the agent cannot use.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Gave up reconnecting.
    #[error("coordinator unreachable after {attempts} attempts: {last}")]
    Unreachable {
        /// Connection attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}
