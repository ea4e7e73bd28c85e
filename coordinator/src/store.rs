//! Durable coordinator state in sled.
//!
//! Layout (one sled database per task, in `<state_dir>/db`):
//! * tree `meta`: `task` (the task file text), `standardizer` (JSON),
//!   `last_round` (u64, big-endian): the last *completed* round, and
//!   `strategy_state` (bytes): the server strategy's state after that round,
//!   committed in the same transaction.
//! * directory `models/`: one file per round, `round-<N>.f64`, the global
//!   model after that round (f64 little-endian); round 0 is the initial model.
//!   Models live outside sled so that its page cache does not keep every
//!   round's model resident.
//! * tree `rounds`: round → [`RoundRecord`] (JSON).
//! * tree `metrics`: model round → [`MetricsRecord`] (JSON).
//!
//! * `meta`/`commit` and `<state_dir>/commit.json`: the [`CommitRecord`] (last
//!   completed round, SHA-256 of every model file, ledger head, federation key), see
//!   [`crate::commit`].
//!
//! A round is committed by writing its model file (synced, then renamed into
//! place) and then one sled transaction (record, counter, commit record), flushed
//! before the next round starts, and then `commit.json`, so after a crash the
//! coordinator resumes from the last completed round and never applies a round
//! twice; every start checks the database against `commit.json`, the model files,
//! the ledger and the key ([`crate::commit::open_for_start`]).
//!
//! Read-only commands open a copy of the database when a running coordinator holds
//! its lock ([`Store::open_read_only`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use consortia_model::TaskMetrics;
use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::CoordinatorError;
use crate::commit::{self, CommitRecord, KeyChange, LedgerHead, sha256_hex};

/// What a completed round did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundRecord {
    /// Round number (1-based).
    pub round: u64,
    /// Partners whose updates were aggregated.
    pub participants: Vec<String>,
    /// Training examples behind the aggregate.
    pub examples: u64,
    /// Example-weighted mean training loss reported by the partners (none
    /// under differential privacy, where partners do not report it).
    pub train_loss: Option<f64>,
    /// Completion time, milliseconds since the Unix epoch.
    pub completed_unix_ms: u64,
}

/// Federation-wide evaluation of one global model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsRecord {
    /// The round that produced the model (0: the initial model).
    pub model_round: u64,
    /// Partners whose held-out rows were scored.
    pub partners: Vec<String>,
    /// Combined metrics.
    pub metrics: TaskMetrics,
}

/// Feature standardisation agreed by the federation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredStandardizer {
    /// Per-feature mean.
    pub mean: Vec<f64>,
    /// Per-feature standard deviation.
    pub std: Vec<f64>,
}

/// The coordinator's database.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    models: PathBuf,
    rounds: sled::Tree,
    metrics: sled::Tree,
    /// The commit record of the last durable step (`None`: none yet, or an older state
    /// directory not adopted yet); held while a new one is written, so writes are serial.
    record: Mutex<Option<CommitRecord>>,
    /// A copy of the database opened by [`Store::open_read_only`]: nothing is written.
    snapshot: Option<Snapshot>,
}

const LAST_ROUND: &[u8] = b"last_round";
const STRATEGY_STATE: &[u8] = b"strategy_state";
const COMMIT: &[u8] = b"commit";
const STANDARDIZER: &[u8] = b"standardizer";
/// sled page cache of the coordinator's database.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn corrupt(what: &str, e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Corrupt(format!("{what}: {e}"))
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    ///
    /// This does not check the state: a coordinator starts through
    /// [`crate::commit::open_for_start`], which does.
    pub fn open(dir: &Path) -> Result<Self, CoordinatorError> {
        std::fs::create_dir_all(dir).map_err(CoordinatorError::file(dir))?;
        let models = dir.join("models");
        std::fs::create_dir_all(&models).map_err(CoordinatorError::file(&models))?;
        Self::open_db(dir, &dir.join("db"), None)
    }

    fn open_db(
        dir: &Path,
        db_path: &Path,
        snapshot: Option<Snapshot>,
    ) -> Result<Self, CoordinatorError> {
        // Only small records live in sled; a small page cache is plenty.
        let db = sled::Config::new()
            .path(db_path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(CoordinatorError::store(dir))?;
        let tree = |name: &str| db.open_tree(name).map_err(CoordinatorError::store(dir));
        let meta = tree("meta")?;
        // A record that cannot be read is the start-up check's to report.
        let record = meta
            .get(COMMIT)
            .ok()
            .flatten()
            .and_then(|b| CommitRecord::decode(&b).ok());
        Ok(Store {
            meta,
            models: dir.join("models"),
            rounds: tree("rounds")?,
            metrics: tree("metrics")?,
            path: dir.to_path_buf(),
            db,
            record: Mutex::new(record),
            snapshot,
        })
    }

    /// Opens a copy of the database in `dir` (in a temporary directory, removed when the
    /// store is dropped), for reading: sled recovers the copy's last consistent state.
    /// Nothing in `dir` is changed; the store refuses every write.
    pub fn open_snapshot(dir: &Path) -> Result<Self, CoordinatorError> {
        let snapshot = Snapshot::copy_of(&dir.join("db"))?;
        let db_path = snapshot.path().to_path_buf();
        Self::open_db(dir, &db_path, Some(snapshot))
    }

    /// Opens the state in `dir` for a command that only reads it (`consortia metrics`,
    /// `consortia model export`): the database itself, or, while a running coordinator
    /// holds its lock, a copy of it ([`Store::open_snapshot`]; the second value is then
    /// `true`: rounds in progress may be missing from it). A directory without a database
    /// is refused rather than made one.
    pub fn open_read_only(dir: &Path) -> Result<(Self, bool), CoordinatorError> {
        if !dir.join("db").join("db").is_file() {
            return Err(CoordinatorError::Config {
                path: dir.to_path_buf(),
                message: "not a coordinator state directory (no db/ inside)".into(),
            });
        }
        if commit::database_in_use(dir) {
            return Ok((Self::open_snapshot(dir)?, true));
        }
        match Self::open(dir) {
            Ok(s) => Ok((s, false)),
            // Taken between the check and the open.
            Err(CoordinatorError::Store { source, .. }) if is_lock_error(&source) => {
                Ok((Self::open_snapshot(dir)?, true))
            }
            Err(e) => Err(e),
        }
    }

    fn writable(&self) -> Result<(), CoordinatorError> {
        match &self.snapshot {
            None => Ok(()),
            Some(_) => Err(CoordinatorError::Corrupt(
                "a copy of the state database opened for reading cannot be written".into(),
            )),
        }
    }

    fn err(&self) -> impl FnOnce(sled::Error) -> CoordinatorError + '_ {
        CoordinatorError::store(&self.path)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The stored task file text, if a task was started here.
    pub fn task_toml(&self) -> Result<Option<String>, CoordinatorError> {
        match self.meta.get("task").map_err(self.err())? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|e| corrupt("task", e)),
        }
    }

    /// Starts a task: stores its text and the initial model (round 0).
    ///
    /// The model file first, then the task, round 0 and the first commit record in one
    /// transaction, then `commit.json`: a crash before the transaction leaves a new state
    /// directory (the model file is written again).
    pub fn init_task(&self, task_toml: &str, initial: &[f64]) -> Result<(), CoordinatorError> {
        self.writable()?;
        let mut slot = self.lock_record();
        if let Some(r) = slot.as_ref() {
            return Err(corrupt(
                "task creation",
                format!("a task is stored already (round {} committed)", r.round),
            ));
        }
        let model_sha = self.write_model(0, initial)?;
        let record = CommitRecord {
            write: 1,
            round: 0,
            task_sha256: sha256_hex(task_toml.as_bytes()),
            standardizer_sha256: None,
            models: vec![model_sha],
            ledger: None,
            federation_key: None,
            federation_key_next: None,
        };
        let bytes = record.encode();
        self.meta
            .transaction(|meta| {
                meta.insert(LAST_ROUND, &0u64.to_be_bytes())?;
                meta.insert("task", task_toml.as_bytes())?;
                meta.remove(STANDARDIZER)?;
                meta.insert(COMMIT, bytes.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.txn_err(e, "task creation"))?;
        self.flush()?;
        commit::write_file(&self.path, &record)?;
        *slot = Some(record);
        Ok(())
    }

    fn lock_record(&self) -> std::sync::MutexGuard<'_, Option<CommitRecord>> {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn txn_err(&self, e: sled::transaction::TransactionError<()>, what: &str) -> CoordinatorError {
        match e {
            sled::transaction::TransactionError::Storage(s) => CoordinatorError::Store {
                path: self.path.clone(),
                source: s,
            },
            sled::transaction::TransactionError::Abort(()) => corrupt(what, "aborted"),
        }
    }

    /// The commit record of the last durable step, if there is one.
    pub fn commit_record(&self) -> Option<CommitRecord> {
        self.lock_record().clone()
    }

    /// The commit record's bytes as stored in the database.
    pub(crate) fn raw_commit_record(&self) -> Result<Option<Vec<u8>>, CoordinatorError> {
        Ok(self
            .meta
            .get(COMMIT)
            .map_err(self.err())?
            .map(|v| v.to_vec()))
    }

    /// The standardisation's bytes as stored.
    pub(crate) fn raw_standardizer(&self) -> Result<Option<Vec<u8>>, CoordinatorError> {
        Ok(self
            .meta
            .get(STANDARDIZER)
            .map_err(self.err())?
            .map(|v| v.to_vec()))
    }

    /// Makes `record` the current one (the start-up check's verdict); with `write`, stores
    /// it as it is in the database and in `commit.json` (an adopted state directory).
    pub(crate) fn install_record(
        &self,
        record: CommitRecord,
        write: bool,
    ) -> Result<(), CoordinatorError> {
        let mut slot = self.lock_record();
        if write {
            self.writable()?;
            self.meta
                .insert(COMMIT, record.encode())
                .map_err(self.err())?;
            self.flush()?;
            commit::write_file(&self.path, &record)?;
        }
        *slot = Some(record);
        Ok(())
    }

    /// Writes a new commit record changed by `change` (one more write): the database
    /// first, flushed, then `commit.json`. Nothing is written for a state directory
    /// without a record (an older one, adopted at the coordinator's next start).
    pub(crate) fn update_record(
        &self,
        change: impl FnOnce(&mut CommitRecord),
    ) -> Result<(), CoordinatorError> {
        self.writable()?;
        let mut slot = self.lock_record();
        let Some(current) = slot.as_ref() else {
            return Ok(());
        };
        let mut record = current.clone();
        change(&mut record);
        record.write = current.write + 1;
        self.meta
            .insert(COMMIT, record.encode())
            .map_err(self.err())?;
        self.flush()?;
        commit::write_file(&self.path, &record)?;
        *slot = Some(record);
        Ok(())
    }

    /// Records the privacy ledger's new head (after each append: the ledger is written
    /// ahead of the record).
    pub fn record_ledger_head(&self, head: LedgerHead) -> Result<(), CoordinatorError> {
        self.update_record(|r| r.ledger = Some(head))
    }

    /// Stores a new federation key, announcing it in the commit record first and
    /// recording it as current once its file is written.
    pub fn save_federation_key(
        &self,
        key: &crate::secure::FederationKey,
    ) -> Result<(), CoordinatorError> {
        // `save_key` writes exactly `to_json`.
        let sha256 = sha256_hex(key.to_json().as_bytes());
        let announced = sha256.clone();
        self.update_record(|r| r.federation_key_next = Some(KeyChange::Save { sha256 }))?;
        crate::secure::save_key(key, &self.path)?;
        self.update_record(|r| {
            r.federation_key = Some(announced);
            r.federation_key_next = None;
        })
    }

    /// Forgets the federation key ([`crate::secure::remove_key`]), announcing the removal
    /// in the commit record first and recording it once done. Returns the key holders
    /// of the removed key.
    pub fn remove_federation_key(
        &self,
        excluded: &[String],
    ) -> Result<Option<Vec<String>>, CoordinatorError> {
        self.update_record(|r| r.federation_key_next = Some(KeyChange::Remove))?;
        let old = crate::secure::remove_key(&self.path, excluded)?;
        self.update_record(|r| {
            r.federation_key = None;
            r.federation_key_next = None;
        })?;
        Ok(old)
    }

    #[cfg(test)]
    pub(crate) fn forget_record_for_tests(&self) {
        self.meta.remove(COMMIT).unwrap();
        self.flush().unwrap();
        *self.lock_record() = None;
    }

    /// The last completed round (0 before the first).
    pub fn last_round(&self) -> Result<u64, CoordinatorError> {
        match self.meta.get(LAST_ROUND).map_err(self.err())? {
            None => Ok(0),
            Some(v) => decode_u64(&v).ok_or_else(|| corrupt("last_round", "not 8 bytes")),
        }
    }

    /// The model file of `round`.
    pub(crate) fn model_path(&self, round: u64) -> PathBuf {
        self.models.join(format!("round-{round:08}.f64"))
    }

    /// Writes a model file durably: temporary file, fsync, rename, fsync of the directory.
    /// Returns the file's hex SHA-256.
    fn write_model(&self, round: u64, model: &[f64]) -> Result<String, CoordinatorError> {
        use std::io::Write;
        self.writable()?;
        let path = self.model_path(round);
        let tmp = path.with_extension("tmp");
        let bytes = encode_f64(model);
        let write = || -> Result<(), std::io::Error> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        write().map_err(CoordinatorError::file(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(CoordinatorError::file(&path))?;
        std::fs::File::open(&self.models)
            .and_then(|d| d.sync_all())
            .map_err(CoordinatorError::file(&self.models))?;
        Ok(sha256_hex(&bytes))
    }

    /// The global model after `round`.
    pub fn model(&self, round: u64) -> Result<Option<Vec<f64>>, CoordinatorError> {
        if round > self.last_round()? {
            return Ok(None);
        }
        let path = self.model_path(round);
        match std::fs::read(&path) {
            Ok(bytes) => {
                // A committed model is read exactly as it was committed.
                let recorded = self
                    .lock_record()
                    .as_ref()
                    .and_then(|r| r.models.get(round as usize).cloned());
                if let Some(want) = recorded {
                    let got = sha256_hex(&bytes);
                    if got != want {
                        return Err(CoordinatorError::Corrupt(format!(
                            "the model file of round {round} ({}) has SHA-256 {got}, but {want} \
                             was committed",
                            path.display()
                        )));
                    }
                }
                let model = decode_f64(&bytes)?;
                if let Some(i) = model.iter().position(|v| !v.is_finite()) {
                    return Err(CoordinatorError::Corrupt(format!(
                        "the model of round {round} ({}) holds a value that is not finite \
                         (parameter {i} is {})",
                        path.display(),
                        model[i]
                    )));
                }
                Ok(Some(model))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CoordinatorError::file(&path)(e)),
        }
    }

    /// Commits a completed round atomically and durably, with the server strategy's
    /// state after the round (`strategy_state`, [`consortia_model::Strategy::checkpoint`])
    /// in the same transaction: a restart resumes the strategy exactly where the last
    /// committed round left it.
    pub fn commit_round(
        &self,
        record: &RoundRecord,
        model: &[f64],
        strategy_state: &[u8],
    ) -> Result<(), CoordinatorError> {
        let key = record.round.to_be_bytes();
        let record_bytes = serde_json::to_vec(record).map_err(|e| corrupt("round record", e))?;
        let mut slot = self.lock_record();
        // Rounds are committed once each, in order: the model file of a committed round is
        // never written again.
        if let Some(current) = slot.as_ref()
            && current.round + 1 != record.round
        {
            return Err(corrupt(
                "commit record",
                format!(
                    "round {} cannot be committed after round {}",
                    record.round, current.round
                ),
            ));
        }
        // The model file first: a crash before the transaction leaves a file
        // for a round that is not committed, overwritten when it is redone.
        let model_sha = self.write_model(record.round, model)?;
        // The commit record of the round, in the same transaction (none for an older state
        // directory not adopted yet).
        let commit = slot.as_ref().map(|current| {
            let mut next = current.clone();
            next.write = current.write + 1;
            next.models.push(model_sha);
            next.round = record.round;
            next
        });
        let commit_bytes = commit.as_ref().map(CommitRecord::encode);
        (&self.meta, &self.rounds)
            .transaction(|(meta, rounds)| {
                rounds.insert(&key, record_bytes.as_slice())?;
                meta.insert(LAST_ROUND, &key)?;
                meta.insert(STRATEGY_STATE, strategy_state)?;
                if let Some(c) = &commit_bytes {
                    meta.insert(COMMIT, c.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.txn_err(e, "round commit"))?;
        self.flush()?;
        if let Some(commit) = commit {
            commit::write_file(&self.path, &commit)?;
            *slot = Some(commit);
        }
        Ok(())
    }

    /// The server strategy's state as of the last committed round (empty before
    /// the first).
    pub fn strategy_state(&self) -> Result<Vec<u8>, CoordinatorError> {
        Ok(self
            .meta
            .get(STRATEGY_STATE)
            .map_err(self.err())?
            .map(|v| v.to_vec())
            .unwrap_or_default())
    }

    /// The record of one completed round.
    pub fn round(&self, round: u64) -> Result<Option<RoundRecord>, CoordinatorError> {
        match self.rounds.get(round.to_be_bytes()).map_err(self.err())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt("round record", e)),
        }
    }

    /// Every completed round, in order.
    pub fn rounds(&self) -> Result<Vec<RoundRecord>, CoordinatorError> {
        self.rounds
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(self.err())?;
                serde_json::from_slice(&v).map_err(|e| corrupt("round record", e))
            })
            .collect()
    }

    /// Stores the evaluation of a model.
    pub fn put_metrics(&self, record: &MetricsRecord) -> Result<(), CoordinatorError> {
        self.writable()?;
        let bytes = serde_json::to_vec(record).map_err(|e| corrupt("metrics", e))?;
        self.metrics
            .insert(record.model_round.to_be_bytes(), bytes)
            .map_err(self.err())?;
        self.flush()
    }

    /// Evaluation of the model of `model_round`, if one was stored.
    pub fn metrics(&self, model_round: u64) -> Result<Option<MetricsRecord>, CoordinatorError> {
        match self
            .metrics
            .get(model_round.to_be_bytes())
            .map_err(self.err())?
        {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt("metrics", e)),
        }
    }

    /// Every stored evaluation, by model round.
    pub fn all_metrics(&self) -> Result<Vec<MetricsRecord>, CoordinatorError> {
        self.metrics
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(self.err())?;
                serde_json::from_slice(&v).map_err(|e| corrupt("metrics", e))
            })
            .collect()
    }

    /// The federation's standardisation, once agreed.
    pub fn standardizer(&self) -> Result<Option<StoredStandardizer>, CoordinatorError> {
        match self.meta.get(STANDARDIZER).map_err(self.err())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt("standardizer", e)),
        }
    }

    /// Stores the federation's standardisation, with a commit record holding its hash
    /// in the same transaction.
    pub fn put_standardizer(&self, s: &StoredStandardizer) -> Result<(), CoordinatorError> {
        self.writable()?;
        let bytes = serde_json::to_vec(s).map_err(|e| corrupt("standardizer", e))?;
        let mut slot = self.lock_record();
        let commit = slot.as_ref().map(|current| {
            let mut next = current.clone();
            next.write = current.write + 1;
            next.standardizer_sha256 = Some(sha256_hex(&bytes));
            next
        });
        let commit_bytes = commit.as_ref().map(CommitRecord::encode);
        self.meta
            .transaction(|meta| {
                meta.insert(STANDARDIZER, bytes.as_slice())?;
                if let Some(c) = &commit_bytes {
                    meta.insert(COMMIT, c.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.txn_err(e, "standardisation"))?;
        self.flush()?;
        if let Some(commit) = commit {
            commit::write_file(&self.path, &commit)?;
            *slot = Some(commit);
        }
        Ok(())
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), CoordinatorError> {
        self.db.flush().map_err(self.err())?;
        Ok(())
    }
}

/// Whether sled failed to open a database because another process holds its lock.
pub fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// A copy of a directory in a temporary directory, removed when dropped.
#[derive(Debug)]
pub struct Snapshot {
    root: PathBuf,
    copy: PathBuf,
}

impl Snapshot {
    /// Copies `dir` (recursively) into a new temporary directory.
    pub fn copy_of(dir: &Path) -> Result<Self, CoordinatorError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let root = std::env::temp_dir().join(format!(
            "consortia-snapshot-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&root).map_err(CoordinatorError::file(&root))?;
        let name = dir.file_name().unwrap_or(std::ffi::OsStr::new("copy"));
        let snapshot = Snapshot {
            copy: root.join(name),
            root,
        };
        copy_dir(dir, &snapshot.copy)?;
        Ok(snapshot)
    }

    /// The copy.
    pub fn path(&self) -> &Path {
        &self.copy
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), CoordinatorError> {
    std::fs::create_dir_all(to).map_err(CoordinatorError::file(to))?;
    for entry in std::fs::read_dir(from).map_err(CoordinatorError::file(from))? {
        let entry = entry.map_err(CoordinatorError::file(from))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(CoordinatorError::file(&path))?;
        if kind.is_dir() {
            copy_dir(&path, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&path, &target).map_err(CoordinatorError::file(&path))?;
        }
    }
    Ok(())
}

fn decode_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

fn encode_f64(values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 8);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn decode_f64(bytes: &[u8]) -> Result<Vec<f64>, CoordinatorError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(corrupt("model", "length is not a multiple of 8"));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            f64::from_le_bytes(b)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_rounds_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.init_task("name = 't'", &[0.0, 0.0]).unwrap();
            let rec = RoundRecord {
                round: 1,
                participants: vec!["a".into()],
                examples: 10,
                train_loss: Some(0.5),
                completed_unix_ms: 1,
            };
            assert!(s.strategy_state().unwrap().is_empty());
            s.commit_round(&rec, &[1.5, -2.0], &[7, 8, 9]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.last_round().unwrap(), 1);
        assert_eq!(s.model(1).unwrap().unwrap(), vec![1.5, -2.0]);
        assert_eq!(s.model(0).unwrap().unwrap(), vec![0.0, 0.0]);
        assert_eq!(s.rounds().unwrap().len(), 1);
        assert_eq!(s.task_toml().unwrap().unwrap(), "name = 't'");
        assert_eq!(s.strategy_state().unwrap(), [7, 8, 9]);
    }

    #[test]
    fn a_model_that_is_not_finite_is_refused_naming_its_file_and_round() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.init_task("name = 't'", &[0.0, 0.0]).unwrap();
        let rec = RoundRecord {
            round: 1,
            participants: vec!["a".into()],
            examples: 10,
            train_loss: None,
            completed_unix_ms: 1,
        };
        s.commit_round(&rec, &[1.0, f64::NAN], &[]).unwrap();
        let e = s.model(1).unwrap_err().to_string();
        assert!(e.contains("round-00000001.f64"), "{e}");
        assert!(
            e.contains("round 1") && e.contains("parameter 1 is NaN"),
            "{e}"
        );
    }
}
