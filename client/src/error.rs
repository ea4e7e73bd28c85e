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
    /// This key holder's stored secret key share is unreadable or damaged.
    #[error(
        "{}: this partner is key holder {party} of the federation key, but its secret key \
         share cannot be used: {message}. Without it no round can be decrypted, and a damaged \
         share would decrypt garbage. The federation must re-key: the operator stops the \
         coordinator and runs `consortia rekey --state <dir>` (with `--without <this partner>` \
         to go on without it); this agent then draws a fresh share at the next key ceremony",
        path.display()
    )]
    KeyShare {
        /// The share's file.
        path: PathBuf,
        /// This partner's party number in the key.
        party: u32,
        /// What is wrong.
        message: String,
    },
    /// A dealer's part of a t-of-N key, as relayed, failed this key holder's
    /// checks: the complaint (docs/threshold.md, "Complaints"), naming the
    /// dealer and, where one subshare is at fault, its holder set `T`; the
    /// message says when the relay, not the dealer, is at fault.
    #[error(
        "threshold key refused: dealer `{dealer}` (party {party}){}: {message}. This key \
         holder does not store a threshold share for this key and sends the coordinator its \
         signed complaint with the evidence; the coordinator excludes whoever the evidence \
         shows at fault (the dealer, or this holder if the complaint is false) and makes the \
         key again",
        subset.as_ref().map(|t| format!(", holder set T = {t}")).unwrap_or_default()
    )]
    ThresholdDealing {
        /// The dealer's name.
        dealer: String,
        /// The dealer's party number.
        party: u32,
        /// The holder set `T` of the subshare at fault, when one is.
        subset: Option<String>,
        /// What failed.
        message: String,
    },
    /// This partner's privacy ledger disagrees with its recorded head, or with the
    /// coordinator's count of charges.
    #[error("{}: {message}", path.display())]
    Ledger {
        /// The file (the ledger database, or its head file).
        path: PathBuf,
        /// What is wrong and what to do.
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
