//! The ledger on disk: an append-only sled tree of signed entries, and its portable JSON export.
//!
//! Entries are stored under their index (8 bytes big-endian) in the [`ENTRIES_TREE`] tree, as the
//! JSON described in [`crate::entry`]. [`Ledger::append`] returns only after sled has flushed the
//! new entry to disk, so callers may treat it as a write-ahead record: a spend is durable before
//! the result it pays for is released.
//!
//! sled lets one process at a time open a database. To audit a ledger that a running service
//! holds open, audit a copy exported with [`Ledger::export_json`] and read with [`LedgerFile`].

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::audit::{RngWarning, rng_warnings};
use crate::entry::{GENESIS_PREV_HASH, LedgerEntry, SpendRecord, entry_hash};
use crate::error::LedgerError;
pub use crate::keys::{Signer, Verifier};

/// Name of the sled tree that holds the entries.
pub const ENTRIES_TREE: &str = "entries";

/// Format string of the exported ledger files this build writes.
///
/// v2 adds [`LedgerFile::insecure_rng`]; the entries of either file format may be of entry
/// format v1 or v2 ([`crate::entry`]).
pub const EXPORT_FORMAT: &str = "consortia-ledger/v2";

/// Format strings of the exported ledger files this build reads.
pub const EXPORT_FORMATS_READ: [&str; 2] = ["consortia-ledger/v1", EXPORT_FORMAT];

/// Largest exported ledger file [`LedgerFile::load`] reads (bytes).
pub const MAX_EXPORT_BYTES: u64 = 256 * 1024 * 1024;

/// Largest stored entry decoded from the database (bytes).
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// An append-only, hash-chained, signed privacy ledger stored in a sled database directory.
///
/// `Ledger` is `Send + Sync`; appends from several threads are serialised. Its methods block on
/// disk I/O (append waits for an fsync): call them from `spawn_blocking` in async code.
pub struct Ledger {
    path: PathBuf,
    db: sled::Db,
    entries: sled::Tree,
    append_lock: Mutex<()>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl Ledger {
    /// Opens the ledger database at `path`, creating an empty one if the directory does not
    /// exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let db = open_sled(&path).map_err(|source| LedgerError::Open {
            path: path.clone(),
            source,
        })?;
        let entries = db
            .open_tree(ENTRIES_TREE)
            .map_err(|source| LedgerError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            db,
            entries,
            append_lock: Mutex::new(()),
        })
    }

    /// Opens an existing ledger database; fails with [`LedgerError::NotFound`] rather than
    /// creating one (for auditing).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref();
        if !path.is_dir() {
            return Err(LedgerError::NotFound {
                path: path.to_path_buf(),
            });
        }
        Self::open(path)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a signed entry recording `record`, and flushes it to disk before returning it.
    ///
    /// The record is validated first ([`SpendRecord::validate`]). The new entry chains onto the
    /// current last entry, whose stored hash is rechecked against its contents: a ledger whose
    /// head was altered is not extended ([`LedgerError::Corrupt`]).
    pub fn append(&self, record: SpendRecord, signer: &Signer) -> Result<LedgerEntry, LedgerError> {
        record.validate()?;
        let _guard = self
            .append_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (index, prev_hash) = match self.last()? {
            None => (0, GENESIS_PREV_HASH),
            Some(last) => {
                if !last.hash_matches() {
                    return Err(LedgerError::Corrupt {
                        what: format!("{}", last.index),
                        reason: "its stored hash does not match its contents".into(),
                    });
                }
                let next = last
                    .index
                    .checked_add(1)
                    .ok_or_else(|| LedgerError::Corrupt {
                        what: format!("{}", last.index),
                        reason: "its index is the largest possible".into(),
                    })?;
                (next, last.hash)
            }
        };
        let hash = entry_hash(index, &prev_hash, &record);
        let signature = signer.sign_hash(&hash)?;
        let entry = LedgerEntry {
            index,
            prev_hash,
            record,
            hash,
            signature,
        };
        let bytes = serde_json::to_vec(&entry).map_err(LedgerError::Encode)?;
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(LedgerError::InvalidRecord(format!(
                "the entry would take {} bytes, more than {MAX_ENTRY_BYTES}",
                bytes.len()
            )));
        }
        let key = index.to_be_bytes();
        match self
            .entries
            .compare_and_swap(key, None as Option<&[u8]>, Some(bytes))?
        {
            Ok(()) => {}
            Err(_) => {
                return Err(LedgerError::Corrupt {
                    what: format!("{index}"),
                    reason: "an entry is already stored under the next index".into(),
                });
            }
        }
        self.db.flush()?;
        Ok(entry)
    }

    /// All entries, in storage order (by index).
    pub fn entries(&self) -> Result<Vec<LedgerEntry>, LedgerError> {
        self.entries
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode_stored(&k, &v)
            })
            .collect()
    }

    /// The last entry, if any.
    pub fn last(&self) -> Result<Option<LedgerEntry>, LedgerError> {
        match self.entries.last()? {
            None => Ok(None),
            Some((k, v)) => decode_stored(&k, &v).map(Some),
        }
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the ledger holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most recently recorded cumulative ε of `partner` (0.0 if no entry mentions it).
    ///
    /// This is the value the accountant wrote into the latest entry that carries one for
    /// `partner`; the ledger does not recompose ε itself.
    pub fn cumulative_epsilon(&self, partner: &str) -> Result<f64, LedgerError> {
        for kv in self.entries.iter().rev() {
            let (k, v) = kv?;
            let entry = decode_stored(&k, &v)?;
            if let Some(eps) = entry.record.epsilon_cumulative.get(partner) {
                return Ok(*eps);
            }
        }
        Ok(0.0)
    }

    /// Writes all entries to a portable JSON file ([`LedgerFile`]).
    ///
    /// The file is written next to `path` under a temporary name, synced, then renamed, so a
    /// reader never sees half a file.
    pub fn export_json(&self, path: impl AsRef<Path>) -> Result<(), LedgerError> {
        LedgerFile::from_entries(self.entries()?).save(path)
    }
}

fn decode_stored(key: &[u8], value: &[u8]) -> Result<LedgerEntry, LedgerError> {
    let what = match <[u8; 8]>::try_from(key) {
        Ok(k) => format!("at storage key {}", u64::from_be_bytes(k)),
        Err(_) => format!("at storage key {}", hex::encode(key)),
    };
    if value.len() > MAX_ENTRY_BYTES {
        return Err(LedgerError::Corrupt {
            what,
            reason: format!("it is {} bytes, more than {MAX_ENTRY_BYTES}", value.len()),
        });
    }
    serde_json::from_slice(value).map_err(|e| LedgerError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

/// A ledger exported as one JSON file, portable to auditors and partners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerFile {
    /// [`EXPORT_FORMAT`] when written by this build.
    pub format: String,
    /// What `consortia audit report` checked before writing this file: the signatures
    /// against which certificate, or not checked. A statement of the report's author for
    /// readers of the JSON; never trusted when the file is read (verify it yourself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<crate::audit::ReportVerification>,
    /// The entries, in ledger order.
    pub entries: Vec<LedgerEntry>,
    /// The entries whose noise was not drawn from the secure generator (`rng` other than
    /// [`crate::entry::SECURE_RNG`], or not recorded), for readers of the JSON. Derived from
    /// `entries`: recomputed when the file is written and when it is read, never trusted.
    #[serde(default)]
    pub insecure_rng: Vec<RngWarning>,
}

impl LedgerFile {
    /// Wraps entries in the current export format.
    pub fn from_entries(entries: Vec<LedgerEntry>) -> Self {
        Self {
            format: EXPORT_FORMAT.to_string(),
            verification: None,
            insecure_rng: rng_warnings(&entries),
            entries,
        }
    }

    /// The same file, stating at its top how the report that writes it verified the ledger.
    pub fn with_verification(mut self, verification: crate::audit::ReportVerification) -> Self {
        self.verification = Some(verification);
        self
    }

    /// Reads an exported ledger file of at most [`MAX_EXPORT_BYTES`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        Self::load_with_limit(path, MAX_EXPORT_BYTES)
    }

    /// Reads an exported ledger file of at most `limit` bytes.
    pub fn load_with_limit(path: impl AsRef<Path>, limit: u64) -> Result<Self, LedgerError> {
        let path = path.as_ref();
        let io_err = |source| LedgerError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        if size > limit {
            return Err(LedgerError::TooLarge {
                path: path.to_path_buf(),
                size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > limit {
            return Err(LedgerError::TooLarge {
                path: path.to_path_buf(),
                size: bytes.len() as u64,
                limit,
            });
        }
        // The format is checked before the entries are decoded, so that a file of another
        // format is named as such rather than reported as malformed.
        #[derive(Deserialize)]
        struct Header {
            format: String,
        }
        let header: Header =
            serde_json::from_slice(&bytes).map_err(|source| LedgerError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        if !EXPORT_FORMATS_READ.contains(&header.format.as_str()) {
            return Err(LedgerError::UnsupportedFormat {
                found: header.format,
                expected: "consortia-ledger/v1 or consortia-ledger/v2",
            });
        }
        let mut file: LedgerFile =
            serde_json::from_slice(&bytes).map_err(|source| LedgerError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        file.insecure_rng = rng_warnings(&file.entries);
        Ok(file)
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    ///
    /// The file is written in [`EXPORT_FORMAT`] with [`insecure_rng`](Self::insecure_rng)
    /// recomputed from the entries.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), LedgerError> {
        let path = path.as_ref();
        #[derive(Serialize)]
        struct Out<'a> {
            format: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            verification: Option<&'a crate::audit::ReportVerification>,
            insecure_rng: Vec<RngWarning>,
            entries: &'a [LedgerEntry],
        }
        let this = Out {
            format: EXPORT_FORMAT,
            verification: self.verification.as_ref(),
            insecure_rng: rng_warnings(&self.entries),
            entries: &self.entries,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| LedgerError::Io { path: p, source }
        };
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut out, &this).map_err(LedgerError::Encode)?;
        out.write_all(b"\n").map_err(io_err(&tmp))?;
        let file = out.into_inner().map_err(|e| LedgerError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(())
    }
}

/// Reads the entries of a ledger given either its sled database directory or an exported JSON
/// file (for `audit verify` and reports).
pub fn load_entries(path: impl AsRef<Path>) -> Result<Vec<LedgerEntry>, LedgerError> {
    let path = path.as_ref();
    if path.is_dir() {
        Ledger::open_existing(path)?.entries()
    } else if path.is_file() {
        Ok(LedgerFile::load(path)?.entries)
    } else {
        Err(LedgerError::NotFound {
            path: path.to_path_buf(),
        })
    }
}

/// Opens the sled database at `path`, waiting up to [`LOCK_WAIT`] for a
/// previous handle in this process to let go of the database's file lock:
/// sled releases it when its last internal reference (its background flusher
/// holds one, and wakes every 500 ms) is dropped, shortly after the handle
/// itself. A handle held open elsewhere still fails after the wait.
fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let until = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// How long [`Ledger::open`] waits for another handle's file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
