//! Errors of the coordinator: each variant says what failed (the task file,
//! the state database, the privacy ledger, secure aggregation, a file, the
//! network) so that the operator knows where to look.

use std::path::PathBuf;

/// What can stop the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The state database could not be opened or written.
    #[error(
        "state database at {path}: {source} (is another coordinator using this state directory?)"
    )]
    Store {
        /// State directory.
        path: PathBuf,
        /// Underlying error.
        source: sled::Error,
    },
    /// A stored record could not be read back.
    #[error(
        "state database is corrupt: {0}; restore the state directory from a backup or start a new one"
    )]
    Corrupt(String),
    /// The state directory belongs to another task.
    #[error(
        "state directory holds task `{stored}` but the task file describes `{given}`: use the same task file, or a new --state directory"
    )]
    TaskMismatch {
        /// Task in the state directory.
        stored: String,
        /// Task from the task file.
        given: String,
    },
    /// The task file is invalid.
    #[error("task file: {0}")]
    Task(String),
    /// The privacy ledger could not be opened, replayed or written.
    #[error("privacy ledger: {0}")]
    Ledger(String),
    /// Secure aggregation could not be set up for the task (key generation,
    /// the encoding or ciphertext shape of a round).
    #[error("secure aggregation: {0}")]
    SecureAggregation(String),
    /// TLS or certificate problem.
    #[error("TLS set-up: {0}")]
    Tls(String),
    /// Reading a configuration file failed.
    #[error("{path}: {message}")]
    Config {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The network: listening for partners.
    #[error("network: {0}")]
    Network(std::io::Error),
    /// Reading or writing a file (state directory, incidents log, address file).
    #[error("{path}: {source}")]
    File {
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The task cannot continue (e.g. privacy budgets exhausted).
    #[error("task stopped: {0}")]
    Stopped(String),
    /// The state directory's durable files disagree (a damaged, missing or rolled-back
    /// file): the start is refused, naming the file and the round
    /// ([`crate::commit::StateProblem`]).
    #[error("state directory: {0}")]
    State(Box<crate::commit::StateProblem>),
}

impl CoordinatorError {
    pub(crate) fn store(path: &std::path::Path) -> impl FnOnce(sled::Error) -> Self + '_ {
        move |source| CoordinatorError::Store {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Maps an I/O error on `path` (a file or directory).
    pub(crate) fn file(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| CoordinatorError::File {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_says_what_failed() {
        let disk = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let e =
            CoordinatorError::file(std::path::Path::new("/state/keys/federation-key.json"))(disk);
        assert_eq!(
            e.to_string(),
            "/state/keys/federation-key.json: no space left"
        );
        let net = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        assert_eq!(
            CoordinatorError::Network(net).to_string(),
            "network: address in use"
        );
        assert!(
            CoordinatorError::Ledger("entry 3 does not verify".into())
                .to_string()
                .starts_with("privacy ledger: ")
        );
        assert!(
            CoordinatorError::SecureAggregation("key generation: x".into())
                .to_string()
                .starts_with("secure aggregation: ")
        );
    }
}
