//! Errors of the coordinator.

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
    /// Network I/O.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// The task cannot continue (e.g. privacy budgets exhausted).
    #[error("task stopped: {0}")]
    Stopped(String),
}

impl CoordinatorError {
    pub(crate) fn store(path: &std::path::Path) -> impl FnOnce(sled::Error) -> Self + '_ {
        move |source| CoordinatorError::Store {
            path: path.to_path_buf(),
            source,
        }
    }
}
