//! The ledger's error type.

use std::path::PathBuf;

/// Everything that can go wrong while opening, appending to, exporting or loading a ledger,
/// or while loading the keys that sign and verify it.
///
/// Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The sled database directory could not be opened.
    #[error(
        "cannot open the ledger database at {path}: {source}; check that the directory is \
         readable and writable, and that no other process (e.g. a running coordinator) holds it \
         open — to audit a live ledger, verify an exported JSON copy instead"
    )]
    Open {
        /// The database directory.
        path: PathBuf,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },

    /// A ledger that was expected to exist does not.
    #[error(
        "no ledger at {path}; pass the ledger database directory or an exported ledger JSON file"
    )]
    NotFound {
        /// The path that was given.
        path: PathBuf,
    },

    /// Reading from or writing to the sled database failed.
    #[error("ledger storage failed: {0}; check free disk space and permissions, then retry")]
    Storage(#[from] sled::Error),

    /// A stored entry cannot be decoded, or the stored head does not hash to its recorded hash.
    #[error(
        "ledger entry {what} is corrupt: {reason}; the database was changed outside the ledger — \
         run `audit verify` to locate the damage and restore from a partner's copy"
    )]
    Corrupt {
        /// Which entry (index or storage key).
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A spend record was rejected before being appended.
    #[error("spend record rejected: {0}; fix the value before appending it to the ledger")]
    InvalidRecord(String),

    /// A file could not be read or written.
    #[error("cannot access {path}: {source}; check the path and its permissions")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },

    /// A file is larger than the limit allowed for it, so it was not read.
    #[error(
        "{path} is {size} bytes, more than the {limit}-byte limit; check that it is the right \
         file, or raise the limit explicitly if the ledger really is that large"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// An exported ledger file is not valid JSON of the expected shape.
    #[error(
        "{path} is not a valid exported ledger: {source}; re-export it with `Ledger::export_json`"
    )]
    Json {
        /// The file.
        path: PathBuf,
        /// What the JSON parser reported.
        #[source]
        source: serde_json::Error,
    },

    /// An exported ledger file declares a format this version does not read.
    #[error(
        "unsupported ledger file format {found:?} (this build reads {expected:?}); use a \
         matching version of the tool"
    )]
    UnsupportedFormat {
        /// The format string found in the file.
        found: String,
        /// The format string this build reads.
        expected: &'static str,
    },

    /// The signing key could not be loaded.
    #[error(
        "cannot load the ledger signing key{}: {reason}; provide a PKCS#8 PEM \
         (`-----BEGIN PRIVATE KEY-----`) holding an ECDSA P-256 key",
        path_suffix(.path)
    )]
    SigningKey {
        /// The key file, when loaded from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },

    /// The verification key (certificate or raw public key) could not be loaded.
    #[error(
        "cannot load the ledger verification key{}: {reason}; provide the signer's X.509 \
         certificate PEM (ECDSA P-256 key) or its uncompressed 65-byte public key",
        path_suffix(.path)
    )]
    VerifyingKey {
        /// The certificate file, when loaded from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },

    /// Signing failed inside the cryptography library.
    #[error("signing the ledger entry failed; check that the signing key is a valid P-256 key")]
    Signing,

    /// JSON encoding of an entry failed (only possible for records with unusual contents).
    #[error("cannot encode ledger entry as JSON: {0}; check the record's contents")]
    Encode(#[source] serde_json::Error),
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" from {}", p.display()),
        None => String::new(),
    }
}
