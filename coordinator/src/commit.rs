//! The commit record: what the coordinator's durable state must hold, checked at every
//! start and by `consortia state verify`, so that a damaged or rolled-back file stops the
//! start instead of silently rerunning committed rounds or forgetting privacy spend.
//!
//! # What is recorded
//!
//! A [`CommitRecord`] holds the last completed round, the SHA-256 of every stored model
//! file `models/round-N.f64` (rounds 0 to the last completed one), of the task text, of the
//! agreed standardisation, the head of the coordinator's privacy ledger (entry count and
//! the hash of its last entry) and the SHA-256 of the federation key file
//! (`keys/federation-key.json`, secure tasks), with a write counter (`write`) that grows by
//! one with every new record.
//!
//! # Where, and in which order
//!
//! The record is kept twice: under `commit` in the `meta` tree of the sled database, in
//! the same transaction as what it describes (the round's record and `last_round`, the task
//! at creation, the standardisation), and mirrored in `<state>/commit.json` (one line of
//! JSON with its own SHA-256, replaced atomically: temporary file, fsync, rename, fsync of
//! the directory), because a damaged sled database can recover an older consistent prefix
//! of itself and would then not know that it lost anything. Every change is made in this
//! order:
//!
//! 1. the file it describes: a round's model file (written durably *before* the record,
//!    [`crate::store::Store::commit_round`]), a ledger entry (appended and flushed by the
//!    ledger before the record, write-ahead), a federation key (the record first announces
//!    the change as `federation_key_next`, then the key file is written or removed, then
//!    a second record makes it current);
//! 2. the sled transaction holding the new record, flushed;
//! 3. `commit.json`.
//!
//! # Legal states after a crash
//!
//! A start accepts exactly these, and refuses every other with a [`StateProblem`] naming
//! the file, the round and how to restore:
//!
//! * the database's record and `commit.json` are the same write; or `commit.json` is one
//!   write behind the database (a crash between steps 2 and 3: the file is rewritten from
//!   the database). A `commit.json` that is missing or damaged while the database's record
//!   agrees with every model file, the ledger and the key is rewritten the same way (with a
//!   warning): the model files are the second witness of a rolled-back database.
//! * a model file for the round after the last completed one (a crash between the model
//!   file and the transaction): the round was not committed, and is run again, which
//!   overwrites that file. A model file two or more rounds ahead means the database lost
//!   committed rounds: refused.
//! * a ledger *longer* than the recorded head, the recorded head being one of its entries:
//!   spend is charged before the round is released (write-ahead), so the ledger is ahead
//!   of the record after a crash. A shorter ledger, or another hash at the recorded
//!   index, is refused.
//! * a federation key file matching either the recorded key or the announced change
//!   (`federation_key_next`; a crash in the middle of a key change): the change is
//!   completed in the record. An announced removal whose key file is still there is
//!   carried out (a retired key is never used again).
//! * no task in the database, no `commit.json`, no model file but round 0's, no ledger
//!   entry and no federation key: a new task (a crash while the task was being created).
//!
//! Refused, among others: a database that cannot be opened, is empty or missing, or is
//! behind `commit.json`; a model file missing or whose hash differs; a ledger missing,
//! unreadable, shorter than its head or different at it; a key file that is neither the
//! recorded key nor the announced one.
//!
//! # Older state directories
//!
//! A state directory written before the commit record existed (a task in the database,
//! but no record in it and no `commit.json`) is adopted once, at the coordinator's first
//! start with this version: its model files, ledger head and key are recorded as they are
//! (after the same checks that can be made without a record: every model file from round
//! 0 to the last completed round exists and none lies two rounds ahead), with an INFO line
//! saying so.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use consortia_ledger::{Ledger, LedgerEntry};
use serde::{Deserialize, Serialize};

use crate::CoordinatorError;
use crate::store::Store;

/// Name of the mirrored record in the state directory.
pub const COMMIT_FILE: &str = "commit.json";

/// Format string of the commit record this build writes and reads.
pub const FORMAT: &str = "consortia-commit/v1";

/// Largest `commit.json` read (bytes); the record grows by 70 bytes a round.
const MAX_COMMIT_BYTES: u64 = 64 * 1024 * 1024;

/// What the coordinator's durable state holds after its last durable step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRecord {
    /// Counts the records written for this state directory (1: the task's creation).
    pub write: u64,
    /// The last completed round (0 before the first).
    pub round: u64,
    /// Hex SHA-256 of the stored task text.
    pub task_sha256: String,
    /// Hex SHA-256 of the stored standardisation (its JSON), once agreed.
    pub standardizer_sha256: Option<String>,
    /// Hex SHA-256 of each model file, by round (`models[r]`: `models/round-r.f64`).
    pub models: Vec<String>,
    /// The privacy ledger's head when the record was written (tasks with `[privacy]`).
    pub ledger: Option<LedgerHead>,
    /// Hex SHA-256 of `keys/federation-key.json`, when the federation has a key.
    pub federation_key: Option<String>,
    /// A change of the federation key announced before its file is written or removed.
    pub federation_key_next: Option<KeyChange>,
}

/// The head of a privacy ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerHead {
    /// Entries in the ledger (the head's index is one less).
    pub entries: u64,
    /// Hex hash of the last entry.
    pub hash: String,
}

impl LedgerHead {
    /// The head a ledger has with `entry` as its last entry.
    pub fn of(entry: &LedgerEntry) -> Self {
        LedgerHead {
            entries: entry.index + 1,
            hash: entry.hash_hex(),
        }
    }
}

impl fmt::Display for LedgerHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} entries, head {}:{}",
            self.entries,
            self.entries.saturating_sub(1),
            self.hash
        )
    }
}

/// A change of the federation key, announced in the record before it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case", deny_unknown_fields)]
pub enum KeyChange {
    /// A new key file with this hex SHA-256 is being written.
    Save {
        /// Hex SHA-256 of the new key file.
        sha256: String,
    },
    /// The key file is being removed (a re-key).
    Remove,
}

/// The stored form: the record and the SHA-256 of its JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    record: CommitRecord,
    sha256: String,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(consortia_proto::sha256(bytes))
}

impl CommitRecord {
    /// The stored form: compact JSON (no insignificant byte: any damage changes a value
    /// or breaks the syntax) with the SHA-256 of the record's JSON.
    pub fn encode(&self) -> Vec<u8> {
        let record = serde_json::to_vec(self).expect("a commit record serialises");
        let env = Envelope {
            format: FORMAT.to_string(),
            record: self.clone(),
            sha256: sha256_hex(&record),
        };
        serde_json::to_vec(&env).expect("a commit record serialises")
    }

    /// Reads the stored form, checking its format and checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| format!("not a commit record: {e}"))?;
        if env.format != FORMAT {
            return Err(format!("format `{}`, expected `{FORMAT}`", env.format));
        }
        let record = serde_json::to_vec(&env.record).map_err(|e| e.to_string())?;
        if sha256_hex(&record) != env.sha256 {
            return Err("its checksum does not match its contents".into());
        }
        if env.record.models.len() as u64 != env.record.round + 1 {
            return Err(format!(
                "it lists {} model hashes for round {}",
                env.record.models.len(),
                env.record.round
            ));
        }
        Ok(env.record)
    }
}

/// `<state>/commit.json`.
pub fn commit_path(state_dir: &Path) -> PathBuf {
    state_dir.join(COMMIT_FILE)
}

/// Replaces `<state>/commit.json` with `record`, durably.
pub(crate) fn write_file(state_dir: &Path, record: &CommitRecord) -> Result<(), CoordinatorError> {
    write_durably(&commit_path(state_dir), &record.encode())
}

/// Replaces `path` with `bytes`: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> Result<(), std::io::Error> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(CoordinatorError::file(&tmp))?;
    std::fs::rename(&tmp, path).map_err(CoordinatorError::file(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(CoordinatorError::file(dir))?;
    }
    Ok(())
}

/// What `commit.json` holds.
#[derive(Debug)]
enum FileView {
    Absent,
    Damaged(String),
    Record(CommitRecord),
}

fn read_file(state_dir: &Path) -> Result<FileView, CoordinatorError> {
    use std::io::Read;
    let path = commit_path(state_dir);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileView::Absent),
        Err(e) => return Err(CoordinatorError::file(&path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_COMMIT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(CoordinatorError::file(&path))?;
    if bytes.len() as u64 > MAX_COMMIT_BYTES {
        return Ok(FileView::Damaged(format!(
            "it is larger than {MAX_COMMIT_BYTES} bytes"
        )));
    }
    if bytes.is_empty() {
        return Ok(FileView::Damaged("it is empty".into()));
    }
    Ok(match CommitRecord::decode(&bytes) {
        Ok(r) => FileView::Record(r),
        Err(e) => FileView::Damaged(e),
    })
}

/// What is wrong with a state directory (one [`StateProblem`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The sled database cannot be opened or read.
    DatabaseUnreadable,
    /// The database is missing or holds no task while other state exists.
    DatabaseMissing,
    /// The database is behind `commit.json` or the model files (it lost committed writes).
    DatabaseBehind,
    /// The database and `commit.json` disagree about the same write, or the database's
    /// record does not describe its own contents.
    DatabaseMismatch,
    /// `commit.json` is more than one write behind the database.
    CommitFileBehind,
    /// A model file of a committed round is missing.
    ModelMissing,
    /// A model file's SHA-256 differs from the recorded one.
    ModelMismatch,
    /// The privacy ledger is missing.
    LedgerMissing,
    /// The privacy ledger cannot be opened or read, or an entry is damaged.
    LedgerUnreadable,
    /// The privacy ledger holds fewer entries than its recorded head.
    LedgerShort,
    /// The privacy ledger's entry at the recorded head has another hash.
    LedgerDiverged,
    /// The federation key file is neither the recorded key nor the announced one.
    KeyMismatch,
}

/// A state directory the coordinator will not start from: which file, which round, what
/// is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateProblem {
    /// What kind of disagreement.
    pub fault: Fault,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The file (or database directory) at fault.
    pub file: PathBuf,
    /// The last completed round according to the most trustworthy record, if known.
    pub round: Option<u64>,
    /// What is wrong, in words.
    pub detail: String,
}

impl fmt::Display for StateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}. The coordinator does not start from this state directory and changed \
             nothing in it. ",
            self.file.display(),
            self.detail
        )?;
        match self.round {
            Some(r) => write!(
                f,
                "Restore {} from a backup taken after round {r} (or later) and start again",
                self.state_dir.display()
            )?,
            None => write!(
                f,
                "Restore {} from a backup and start again",
                self.state_dir.display()
            )?,
        }
        write!(
            f,
            "; `consortia state verify --state {}` checks a directory without starting. Do not \
             delete files to get past this check: committed rounds would run again and their \
             model files and privacy spend be overwritten or forgotten",
            self.state_dir.display()
        )
    }
}

/// A ledger as the check sees it.
#[derive(Debug)]
pub enum LedgerView<'a> {
    /// No `<state>/ledger` directory.
    Absent,
    /// The ledger could not be opened or read.
    Unreadable(String),
    /// Its entries, in storage order.
    Entries(&'a [LedgerEntry]),
}

/// The ledger as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerFound {
    /// Its head now (`None`: empty).
    pub head: Option<LedgerHead>,
    /// Entries beyond the recorded head (charged ahead, write-ahead).
    pub ahead: u64,
}

/// Something the start does to complete an interrupted step (never a rollback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// `commit.json` is rewritten from the database's record: it is one write behind it
    /// (a crash between the two), or (`damaged`) missing or damaged.
    RewriteCommitFile {
        /// Why, in words.
        why: String,
        /// Missing or damaged, rather than behind.
        damaged: bool,
    },
    /// A state directory of the older layout is adopted: its record is written.
    Adopt,
    /// An interrupted key change is completed (or dropped when its key file was never
    /// written): the record is updated.
    CompleteKeyChange(String),
    /// An announced removal of the federation key is carried out.
    RemoveKey,
}

/// The outcome of a check that passed.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The task's name, when one is stored.
    pub task: Option<String>,
    /// The record the state holds (after completing interrupted steps); `None` for a new
    /// state directory.
    pub record: Option<CommitRecord>,
    /// The ledger as found (when there is one).
    pub ledger: Option<LedgerFound>,
    /// What the start completes.
    pub repairs: Vec<Repair>,
    /// What else was seen (legal crash windows).
    pub notes: Vec<String>,
}

impl Verified {
    /// A new state directory: nothing committed yet.
    pub fn is_new(&self) -> bool {
        self.record.is_none() && !self.repairs.contains(&Repair::Adopt)
    }
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = &self.state_dir;
        writeln!(f, "state directory {}", dir.display())?;
        let Some(rec) = &self.record else {
            writeln!(
                f,
                "  new: no task, no committed round, no ledger entry, no federation key"
            )?;
            return Ok(());
        };
        if let Some(task) = &self.task {
            writeln!(f, "  task:            {task} (sha256 {})", rec.task_sha256)?;
        }
        writeln!(
            f,
            "  database:        {}: round {} committed (record write {})",
            dir.join("db").display(),
            rec.round,
            rec.write
        )?;
        let file = if self
            .repairs
            .iter()
            .any(|r| matches!(r, Repair::RewriteCommitFile { .. } | Repair::Adopt))
        {
            "rewritten at the next start (below)"
        } else {
            "the same record"
        };
        writeln!(
            f,
            "  commit file:     {}: {file}",
            commit_path(dir).display()
        )?;
        writeln!(
            f,
            "  models:          {} files (rounds 0-{}) match their recorded SHA-256; round {}: {}",
            rec.models.len(),
            rec.round,
            rec.round,
            rec.models.last().map(String::as_str).unwrap_or("-")
        )?;
        match (&rec.ledger, &self.ledger) {
            (Some(h), Some(found)) => writeln!(
                f,
                "  ledger:          {}: recorded {h}; {} entries charged ahead of it",
                dir.join("ledger").display(),
                found.ahead
            )?,
            (None, Some(LedgerFound { head: Some(h), .. })) => writeln!(
                f,
                "  ledger:          {}: {h} (no head recorded yet)",
                dir.join("ledger").display()
            )?,
            (None, _) => writeln!(f, "  ledger:          none")?,
            (Some(h), None) => writeln!(f, "  ledger:          recorded {h}")?,
        }
        match &rec.federation_key {
            Some(k) => writeln!(
                f,
                "  federation key:  {} (sha256 {k})",
                crate::secure::key_path(dir).display()
            )?,
            None => writeln!(f, "  federation key:  none")?,
        }
        for r in &self.repairs {
            let what = match r {
                Repair::RewriteCommitFile { why, .. } => {
                    format!("{} is rewritten from the database ({why})", COMMIT_FILE)
                }
                Repair::Adopt => "a state directory of the older layout (no commit record): \
                                  its files are recorded as they are"
                    .to_string(),
                Repair::CompleteKeyChange(what) => what.clone(),
                Repair::RemoveKey => {
                    "an interrupted re-key is completed: the federation key is removed".into()
                }
            };
            writeln!(f, "  at the next start: {what}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

/// What the database holds, for the check.
struct DbView {
    task: Option<String>,
    last_round: u64,
    record: Option<Result<CommitRecord, String>>,
    standardizer: Option<Vec<u8>>,
}

fn db_view(store: &Store) -> Result<DbView, StateProblem> {
    let dir = store.dir();
    let bad = |detail: String| StateProblem {
        fault: Fault::DatabaseUnreadable,
        state_dir: dir.to_path_buf(),
        file: dir.join("db"),
        round: None,
        detail,
    };
    let task = store
        .task_toml()
        .map_err(|e| bad(format!("its task cannot be read: {e}")))?;
    let last_round = store
        .last_round()
        .map_err(|e| bad(format!("its last completed round cannot be read: {e}")))?;
    let record = store
        .raw_commit_record()
        .map_err(|e| bad(format!("its commit record cannot be read: {e}")))?
        .map(|b| CommitRecord::decode(&b));
    let standardizer = store
        .raw_standardizer()
        .map_err(|e| bad(format!("its standardisation cannot be read: {e}")))?;
    Ok(DbView {
        task,
        last_round,
        record,
        standardizer,
    })
}

/// The model files in `<state>/models`, by round (temporary files are left out).
fn model_files(state_dir: &Path) -> Result<BTreeMap<u64, PathBuf>, CoordinatorError> {
    let dir = state_dir.join("models");
    let mut out = BTreeMap::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(CoordinatorError::file(&dir)(e)),
    };
    for entry in rd {
        let entry = entry.map_err(CoordinatorError::file(&dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("round-")
            .and_then(|s| s.strip_suffix(".f64"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.insert(n, entry.path());
        }
    }
    Ok(out)
}

/// Hex SHA-256 of a file, `None` when it does not exist.
fn file_sha256(path: &Path) -> Result<Option<String>, CoordinatorError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(sha256_hex(&b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoordinatorError::file(path)(e)),
    }
}

/// Checks a ledger against its recorded head (`None`: nothing recorded yet).
fn check_ledger(
    state_dir: &Path,
    round: u64,
    recorded: Option<&LedgerHead>,
    view: &LedgerView<'_>,
) -> Result<Option<LedgerFound>, StateProblem> {
    let path = state_dir.join("ledger");
    let problem = |fault, detail: String| StateProblem {
        fault,
        state_dir: state_dir.to_path_buf(),
        file: path.clone(),
        round: Some(round),
        detail,
    };
    let entries = match view {
        LedgerView::Absent => {
            return match recorded {
                None => Ok(None),
                Some(h) => Err(problem(
                    Fault::LedgerMissing,
                    format!(
                        "the privacy ledger is missing, but the commit record of round {round} \
                         says it held {h}"
                    ),
                )),
            };
        }
        LedgerView::Unreadable(e) => {
            return Err(problem(
                Fault::LedgerUnreadable,
                format!("the privacy ledger cannot be read ({e})"),
            ));
        }
        LedgerView::Entries(entries) => *entries,
    };
    let mut prev = consortia_ledger::entry::GENESIS_PREV_HASH;
    for (position, e) in entries.iter().enumerate() {
        let broken = if e.index != position as u64 {
            Some(format!(
                "entry {} stands at position {position} (entries were removed or reordered)",
                e.index
            ))
        } else if !e.hash_matches() {
            Some(format!(
                "entry {position} is damaged (its stored hash does not match its contents)"
            ))
        } else if e.prev_hash != prev {
            Some(format!(
                "the hash chain breaks at entry {position} (an entry was replaced or removed)"
            ))
        } else {
            None
        };
        if let Some(why) = broken {
            return Err(problem(Fault::LedgerUnreadable, why));
        }
        prev = e.hash;
    }
    let head = entries.last().map(LedgerHead::of);
    let Some(rec) = recorded.filter(|h| h.entries > 0) else {
        return Ok(Some(LedgerFound {
            ahead: entries.len() as u64,
            head,
        }));
    };
    if (entries.len() as u64) < rec.entries {
        return Err(problem(
            Fault::LedgerShort,
            format!(
                "the privacy ledger holds {} entries, but the commit record of round {round} \
                 says it had reached {rec}: recorded privacy spend was lost",
                entries.len()
            ),
        ));
    }
    let at = &entries[(rec.entries - 1) as usize];
    if at.hash_hex() != rec.hash {
        return Err(problem(
            Fault::LedgerDiverged,
            format!(
                "the privacy ledger's entry {} has hash {}, but the commit record of round \
                 {round} says its head was {rec}: the ledger was replaced or rewritten",
                at.index,
                at.hash_hex()
            ),
        ));
    }
    Ok(Some(LedgerFound {
        ahead: entries.len() as u64 - rec.entries,
        head,
    }))
}

/// Checks the state directory `store` opened, with its ledger as `ledger`, without changing
/// anything. `Ok`: the coordinator can start from it exactly (after the listed repairs).
pub fn examine(store: &Store, ledger: &LedgerView<'_>) -> Result<Verified, CoordinatorError> {
    let dir = store.dir().to_path_buf();
    let db = db_view(store).map_err(boxed)?;
    let file = read_file(&dir)?;
    let models = model_files(&dir)?;
    let key_path = crate::secure::key_path(&dir);
    let key_now = file_sha256(&key_path)?;
    let problem = |fault, file: PathBuf, round: Option<u64>, detail: String| {
        boxed(StateProblem {
            fault,
            state_dir: dir.clone(),
            file,
            round,
            detail,
        })
    };
    let db_path = dir.join("db");
    let file_round = match &file {
        FileView::Record(r) => Some(r.round),
        _ => None,
    };

    // A database without a task: a new state directory, unless anything else exists.
    let Some(task_text) = db.task else {
        let mut others = Vec::new();
        match &file {
            FileView::Absent => {}
            FileView::Record(r) => others.push(format!(
                "{} records round {} (write {})",
                COMMIT_FILE, r.round, r.write
            )),
            FileView::Damaged(why) => others.push(format!("{COMMIT_FILE} exists (damaged: {why})")),
        }
        if let Some((&r, path)) = models.iter().rev().find(|(r, _)| **r > 0) {
            others.push(format!(
                "model files up to round {r} exist ({})",
                path.display()
            ));
        }
        if let LedgerView::Entries(e) = ledger
            && !e.is_empty()
        {
            others.push(format!("the privacy ledger holds {} entries", e.len()));
        }
        if key_now.is_some() {
            others.push(format!("{} exists", key_path.display()));
        }
        if others.is_empty() {
            return Ok(Verified {
                state_dir: dir,
                task: None,
                record: None,
                ledger: None,
                repairs: Vec::new(),
                notes: Vec::new(),
            });
        }
        return Err(problem(
            Fault::DatabaseMissing,
            db_path,
            file_round,
            format!(
                "the database holds no task, but {}: the database was lost or replaced",
                others.join(", ")
            ),
        ));
    };
    let task_name = consortia_model::TaskSpec::from_toml_str(&task_text)
        .map(|t| t.name)
        .ok();

    let mut repairs = Vec::new();
    let mut notes = Vec::new();
    // The authoritative record: the database's, checked against commit.json.
    let mut record = match (db.record, file) {
        (Some(Err(why)), _) => {
            return Err(problem(
                Fault::DatabaseUnreadable,
                db_path,
                file_round,
                format!("its commit record is damaged ({why})"),
            ));
        }
        (None, FileView::Absent) => {
            repairs.push(Repair::Adopt);
            adopt(&dir, &task_text, db.last_round, &db.standardizer, &models)?
        }
        (None, FileView::Record(f)) => {
            return Err(problem(
                Fault::DatabaseBehind,
                db_path,
                Some(f.round),
                format!(
                    "the database holds no commit record, but {COMMIT_FILE} records round {} \
                     (write {}): the database was replaced or rolled back (it says round {})",
                    f.round, f.write, db.last_round
                ),
            ));
        }
        (None, FileView::Damaged(why)) => {
            return Err(problem(
                Fault::DatabaseMismatch,
                commit_path(&dir),
                None,
                format!(
                    "{COMMIT_FILE} is damaged ({why}) and the database holds no commit record \
                     to rebuild it from"
                ),
            ));
        }
        (Some(Ok(d)), FileView::Absent) => {
            repairs.push(Repair::RewriteCommitFile {
                why: "it is missing".into(),
                damaged: true,
            });
            d
        }
        (Some(Ok(d)), FileView::Damaged(why)) => {
            repairs.push(Repair::RewriteCommitFile {
                why: format!("it is damaged: {why}"),
                damaged: true,
            });
            d
        }
        (Some(Ok(d)), FileView::Record(f)) => {
            if d.write == f.write {
                if d != f {
                    return Err(problem(
                        Fault::DatabaseMismatch,
                        commit_path(&dir),
                        Some(d.round.min(f.round)),
                        format!(
                            "{COMMIT_FILE} and the database hold different records of the same \
                             write {} (rounds {} and {})",
                            d.write, f.round, d.round
                        ),
                    ));
                }
            } else if d.write == f.write + 1 {
                repairs.push(Repair::RewriteCommitFile {
                    why: "it is one write behind the database: the coordinator stopped \
                          between the two"
                        .into(),
                    damaged: false,
                });
            } else if d.write < f.write {
                return Err(problem(
                    Fault::DatabaseBehind,
                    db_path,
                    Some(f.round),
                    format!(
                        "the database is behind {COMMIT_FILE}: it records round {} (write {}), \
                         {COMMIT_FILE} round {} (write {}); the database lost committed writes \
                         (a damaged database recovers an older state of itself)",
                        d.round, d.write, f.round, f.write
                    ),
                ));
            } else {
                return Err(problem(
                    Fault::CommitFileBehind,
                    commit_path(&dir),
                    Some(d.round),
                    format!(
                        "{COMMIT_FILE} records round {} (write {}) but the database round {} \
                         (write {}): the file is older than the coordinator ever leaves it (was \
                         it restored from another copy?)",
                        f.round, f.write, d.round, d.write
                    ),
                ));
            }
            d
        }
    };
    let round = record.round;

    // The database's record describes the database.
    if db.last_round != round {
        return Err(problem(
            Fault::DatabaseMismatch,
            db_path,
            Some(round),
            format!(
                "its last completed round is {} but its commit record says {round}",
                db.last_round
            ),
        ));
    }
    if sha256_hex(task_text.as_bytes()) != record.task_sha256 {
        return Err(problem(
            Fault::DatabaseMismatch,
            db_path,
            Some(round),
            "its task text differs from the one recorded when the task was created".into(),
        ));
    }
    let std_now = db.standardizer.as_deref().map(sha256_hex);
    if std_now != record.standardizer_sha256 {
        return Err(problem(
            Fault::DatabaseMismatch,
            db_path,
            Some(round),
            match (&std_now, &record.standardizer_sha256) {
                (None, Some(_)) => "the agreed standardisation is missing from it".into(),
                (Some(_), None) => "it holds a standardisation the commit record does not".into(),
                _ => "its standardisation differs from the one recorded".into(),
            },
        ));
    }

    // Every committed round's model file, exactly as committed.
    for (r, want) in record.models.iter().enumerate() {
        let r = r as u64;
        let path = store.model_path(r);
        match file_sha256(&path)? {
            None => {
                return Err(problem(
                    Fault::ModelMissing,
                    path,
                    Some(round),
                    format!("the model file of committed round {r} is missing"),
                ));
            }
            Some(h) if &h != want => {
                return Err(problem(
                    Fault::ModelMismatch,
                    path,
                    Some(round),
                    format!(
                        "the model file of committed round {r} has SHA-256 {h}, but {want} was \
                         committed: the file was damaged or replaced"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let ahead: Vec<u64> = models.keys().copied().filter(|&r| r > round + 1).collect();
    if let Some(&last) = ahead.last() {
        return Err(problem(
            Fault::DatabaseBehind,
            db_path,
            Some(last.saturating_sub(1).max(round)),
            format!(
                "model files of rounds after its last committed round {round} exist (up to \
                 round {last}: {}): the database lost committed rounds",
                models[&last].display()
            ),
        ));
    }
    if models.contains_key(&(round + 1)) {
        notes.push(format!(
            "the model file of round {} was written but the round not committed (the \
             coordinator stopped in between): the round runs again and replaces it",
            round + 1
        ));
    }

    let found = check_ledger(&dir, round, record.ledger.as_ref(), ledger).map_err(boxed)?;
    if repairs.contains(&Repair::Adopt) {
        record.ledger = found.as_ref().and_then(|f| f.head.clone());
    }

    // The federation key: the recorded one, or the change announced before a crash.
    if repairs.contains(&Repair::Adopt) {
        record.federation_key = key_now.clone();
    } else if key_now != record.federation_key {
        match (&record.federation_key_next, &key_now) {
            (Some(KeyChange::Save { sha256 }), Some(now)) if sha256 == now => {
                repairs.push(Repair::CompleteKeyChange(
                    "the federation key written just before the coordinator stopped is recorded"
                        .into(),
                ));
                record.federation_key = key_now.clone();
                record.federation_key_next = None;
            }
            (Some(KeyChange::Remove), None) => {
                repairs.push(Repair::CompleteKeyChange(
                    "the removal of the federation key just before the coordinator stopped is \
                     recorded"
                        .into(),
                ));
                record.federation_key = None;
                record.federation_key_next = None;
            }
            _ => {
                let detail = match (&key_now, &record.federation_key) {
                    (None, Some(want)) => format!(
                        "the federation key file is missing, but the commit record of round \
                         {round} says the key {want} is in use"
                    ),
                    (Some(now), None) => format!(
                        "a federation key file (SHA-256 {now}) exists, but the commit record of \
                         round {round} says the federation has none"
                    ),
                    (Some(now), Some(want)) => format!(
                        "the federation key file has SHA-256 {now}, but the commit record of \
                         round {round} says {want}: the file was damaged or replaced"
                    ),
                    (None, None) => unreachable!("equal"),
                };
                return Err(problem(Fault::KeyMismatch, key_path, Some(round), detail));
            }
        }
    } else if let Some(next) = &record.federation_key_next {
        match next {
            KeyChange::Remove => repairs.push(Repair::RemoveKey),
            KeyChange::Save { .. } => repairs.push(Repair::CompleteKeyChange(
                "a federation key change that was announced but never written is dropped: the \
                 stored key stays"
                    .into(),
            )),
        }
        if matches!(next, KeyChange::Save { .. }) {
            record.federation_key_next = None;
        }
    }

    Ok(Verified {
        state_dir: dir,
        task: task_name,
        record: Some(record),
        ledger: found,
        repairs,
        notes,
    })
}

/// The record of an older state directory, from its files as they are.
fn adopt(
    dir: &Path,
    task_text: &str,
    last_round: u64,
    standardizer: &Option<Vec<u8>>,
    models: &BTreeMap<u64, PathBuf>,
) -> Result<CommitRecord, CoordinatorError> {
    let mut hashes = Vec::new();
    for r in 0..=last_round {
        let Some(path) = models.get(&r) else {
            return Err(boxed(StateProblem {
                fault: Fault::ModelMissing,
                state_dir: dir.to_path_buf(),
                file: dir.join("models").join(format!("round-{r:08}.f64")),
                round: Some(last_round),
                detail: format!("the model file of completed round {r} is missing"),
            }));
        };
        let bytes = std::fs::read(path).map_err(CoordinatorError::file(path))?;
        hashes.push(sha256_hex(&bytes));
    }
    Ok(CommitRecord {
        write: 1,
        round: last_round,
        task_sha256: sha256_hex(task_text.as_bytes()),
        standardizer_sha256: standardizer.as_deref().map(sha256_hex),
        models: hashes,
        ledger: None,
        federation_key: None,
        federation_key_next: None,
    })
}

fn boxed(p: StateProblem) -> CoordinatorError {
    CoordinatorError::State(Box::new(p))
}

/// Whether a coordinator holds the state directory's database (its lock).
pub fn database_in_use(state_dir: &Path) -> bool {
    sled_in_use(&state_dir.join("db"))
}

/// Whether another process holds the lock of the sled database in the directory
/// `db_dir` (a coordinator's `db`, or a ledger's).
pub fn sled_in_use(db_dir: &Path) -> bool {
    match std::fs::File::open(db_dir.join("db")) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Whether anything but the database exists in `state_dir` that a task leaves behind.
fn other_state(state_dir: &Path) -> Result<Vec<String>, CoordinatorError> {
    let mut out = Vec::new();
    if commit_path(state_dir).exists() {
        out.push(COMMIT_FILE.to_string());
    }
    let models = model_files(state_dir)?;
    if let Some((&r, _)) = models.iter().rev().find(|(r, _)| **r > 0) {
        out.push(format!("model files up to round {r}"));
    }
    if state_dir.join("ledger").exists() {
        out.push("a privacy ledger".into());
    }
    if crate::secure::key_path(state_dir).exists() {
        out.push("a federation key".into());
    }
    Ok(out)
}

/// The round `commit.json` records, if it can be read.
fn recorded_round(state_dir: &Path) -> Option<u64> {
    match read_file(state_dir) {
        Ok(FileView::Record(r)) => Some(r.round),
        _ => None,
    }
}

/// The database's directory is missing although the task left other state.
fn check_database_exists(state_dir: &Path) -> Result<(), CoordinatorError> {
    let db = state_dir.join("db");
    if db.join("db").is_file() {
        return Ok(());
    }
    let others = other_state(state_dir)?;
    if others.is_empty() {
        return Ok(());
    }
    Err(boxed(StateProblem {
        fault: Fault::DatabaseMissing,
        state_dir: state_dir.to_path_buf(),
        file: db,
        round: recorded_round(state_dir),
        detail: format!(
            "the database is missing, but the state directory holds {}",
            others.join(", ")
        ),
    }))
}

/// A sled error on opening the database, as a problem naming it (a held lock stays a
/// [`CoordinatorError::Store`] error: another coordinator runs).
fn unopenable(state_dir: &Path, e: CoordinatorError) -> CoordinatorError {
    match e {
        CoordinatorError::Store { source, .. } if !crate::store::is_lock_error(&source) => {
            boxed(StateProblem {
                fault: Fault::DatabaseUnreadable,
                state_dir: state_dir.to_path_buf(),
                file: state_dir.join("db"),
                round: recorded_round(state_dir),
                detail: format!("the database cannot be opened ({source})"),
            })
        }
        e => e,
    }
}

/// Opens the ledger in `<state>/ledger` if it exists, and reads its entries.
fn open_ledger(path: &Path) -> (Option<Ledger>, Result<Option<Vec<LedgerEntry>>, String>) {
    if !path.is_dir() {
        return (None, Ok(None));
    }
    match Ledger::open(path) {
        // sled's own words: the ledger's advice about locks and exports does not apply.
        Err(consortia_ledger::LedgerError::Open { source, .. }) => {
            (None, Err(format!("sled cannot open it: {source}")))
        }
        Err(e) => (None, Err(e.to_string())),
        Ok(l) => match l.entries() {
            Ok(e) => (Some(l), Ok(Some(e))),
            Err(e) => (Some(l), Err(e.to_string())),
        },
    }
}

fn view(entries: &Result<Option<Vec<LedgerEntry>>, String>) -> LedgerView<'_> {
    match entries {
        Ok(None) => LedgerView::Absent,
        Ok(Some(e)) => LedgerView::Entries(e),
        Err(e) => LedgerView::Unreadable(e.clone()),
    }
}

/// Opens the state directory for a coordinator's start and checks it ([`examine`]),
/// completing any interrupted step ([`Repair`]); returns the store and the ledger
/// (opened when `<state>/ledger` exists), or the problem that stops the start.
///
/// The check runs on copies of the database and the ledger first ([`verify_dir`]): sled
/// repairs a damaged database as it opens it, and a state directory that is refused is left
/// exactly as it was found, for its owner to inspect or restore.
pub fn open_for_start(state_dir: &Path) -> Result<(Store, Option<Ledger>), CoordinatorError> {
    if state_dir.join("db").join("db").is_file() {
        verify_dir(state_dir)?;
    } else {
        check_database_exists(state_dir)?;
    }
    let store = Store::open(state_dir).map_err(|e| unopenable(state_dir, e))?;
    let (ledger, entries) = open_ledger(&state_dir.join("ledger"));
    let verified = examine(&store, &view(&entries))?;
    apply(&store, &verified)?;
    log(&verified);
    Ok((store, ledger))
}

/// Completes the interrupted steps `verified` lists.
fn apply(store: &Store, verified: &Verified) -> Result<(), CoordinatorError> {
    let Some(record) = &verified.record else {
        return Ok(());
    };
    let dir = store.dir();
    let adopt = verified.repairs.contains(&Repair::Adopt);
    let key_change = verified
        .repairs
        .iter()
        .any(|r| matches!(r, Repair::CompleteKeyChange(_)));
    if adopt {
        store.install_record(record.clone(), true)?;
    } else if key_change {
        store.install_record(record.clone(), false)?;
        store.update_record(|_| {})?;
    } else {
        store.install_record(record.clone(), false)?;
        if verified
            .repairs
            .iter()
            .any(|r| matches!(r, Repair::RewriteCommitFile { .. }))
        {
            write_file(dir, record)?;
        }
    }
    if verified.repairs.contains(&Repair::RemoveKey) {
        let excluded = crate::secure::excluded(dir)?;
        store.remove_federation_key(&excluded)?;
    }
    Ok(())
}

fn log(v: &Verified) {
    for r in &v.repairs {
        match r {
            Repair::Adopt => {
                let rec = v.record.as_ref().expect("adopted");
                tracing::info!(
                    round = rec.round,
                    models = rec.models.len(),
                    "adopted a state directory of the older layout (no commit record): its \
                     {} model files, ledger head and federation key are recorded as they are \
                     now, in the database and in {}; every start checks them from now on",
                    rec.models.len(),
                    commit_path(&v.state_dir).display()
                );
            }
            Repair::RewriteCommitFile { why, damaged: true } => tracing::warn!(
                "{} is rewritten from the database's commit record ({why}); the database's \
                 record agrees with every model file, the ledger and the federation key",
                commit_path(&v.state_dir).display()
            ),
            Repair::RewriteCommitFile {
                why,
                damaged: false,
            } => tracing::info!(
                "{} is brought up to date with the database ({why})",
                commit_path(&v.state_dir).display()
            ),
            Repair::CompleteKeyChange(what) => tracing::info!("{what}"),
            Repair::RemoveKey => tracing::warn!(
                "a re-key was interrupted: the federation key is removed now, and a new one is \
                 made with the partners connected"
            ),
        }
    }
    for n in &v.notes {
        tracing::info!("{n}");
    }
    if let Some(rec) = &v.record {
        tracing::info!(
            round = rec.round,
            models = rec.models.len(),
            ledger = %rec.ledger.as_ref().map(|h| h.to_string()).unwrap_or_else(|| "none".into()),
            federation_key = rec.federation_key.is_some(),
            "state verified: database, {}, model files, ledger and federation key agree",
            COMMIT_FILE
        );
    }
}

/// `consortia state verify`: checks a state directory offline, without changing it (the
/// database and the ledger are read from copies). Refused while a coordinator runs on it.
pub fn verify_dir(state_dir: &Path) -> Result<Verified, CoordinatorError> {
    if !state_dir.is_dir() {
        return Err(CoordinatorError::Config {
            path: state_dir.to_path_buf(),
            message: "no such state directory".into(),
        });
    }
    if database_in_use(state_dir) {
        return Err(CoordinatorError::Config {
            path: state_dir.to_path_buf(),
            message: "a coordinator is running on this state directory (it holds the \
                      database's lock): stop it first"
                .into(),
        });
    }
    check_database_exists(state_dir)?;
    if !state_dir.join("db").join("db").is_file() {
        return Err(CoordinatorError::Config {
            path: state_dir.to_path_buf(),
            message: "not a coordinator state directory (no db/ inside)".into(),
        });
    }
    let store = Store::open_snapshot(state_dir).map_err(|e| unopenable(state_dir, e))?;
    let ledger_dir = state_dir.join("ledger");
    let copy = if ledger_dir.is_dir() {
        Some(crate::store::Snapshot::copy_of(&ledger_dir)?)
    } else {
        None
    };
    let (_ledger, entries) = match &copy {
        Some(c) => open_ledger(c.path()),
        None => (None, Ok(None)),
    };
    examine(&store, &view(&entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RoundRecord;

    fn rec(round: u64) -> RoundRecord {
        RoundRecord {
            round,
            participants: vec!["a".into()],
            examples: 10,
            train_loss: None,
            completed_unix_ms: 1,
        }
    }

    /// A state of 3 committed rounds, closed.
    fn state() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open_for_start(dir.path()).unwrap();
        s.init_task("name = 't'", &[0.0, 0.0]).unwrap();
        for r in 1..=3 {
            s.commit_round(&rec(r), &[r as f64, -1.0], &[]).unwrap();
        }
        dir
    }

    fn check(dir: &Path) -> Result<Verified, CoordinatorError> {
        verify_dir(dir)
    }

    fn fault(e: CoordinatorError) -> StateProblem {
        match e {
            CoordinatorError::State(p) => *p,
            e => panic!("expected a state problem, got {e}"),
        }
    }

    #[test]
    fn the_record_round_trips_and_detects_damage() {
        let r = CommitRecord {
            write: 3,
            round: 1,
            task_sha256: sha256_hex(b"t"),
            standardizer_sha256: None,
            models: vec![sha256_hex(b"0"), sha256_hex(b"1")],
            ledger: Some(LedgerHead {
                entries: 2,
                hash: "ab".repeat(32),
            }),
            federation_key: None,
            federation_key_next: Some(KeyChange::Remove),
        };
        let bytes = r.encode();
        assert_eq!(CommitRecord::decode(&bytes).unwrap(), r);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(CommitRecord::decode(&b).is_err(), "flip at {i} went unseen");
        }
        assert!(CommitRecord::decode(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn an_intact_state_verifies_and_restarts() {
        let dir = state();
        let v = check(dir.path()).unwrap();
        assert_eq!(v.record.as_ref().unwrap().round, 3);
        assert!(v.repairs.is_empty(), "{:?}", v.repairs);
        let (s, _) = open_for_start(dir.path()).unwrap();
        assert_eq!(s.last_round().unwrap(), 3);
        assert_eq!(s.commit_record().unwrap().models.len(), 4);
    }

    #[test]
    fn a_damaged_model_file_is_refused_naming_it() {
        let dir = state();
        let path = dir.path().join("models/round-00000003.f64");
        let mut b = std::fs::read(&path).unwrap();
        b[3] ^= 0x01; // a mantissa bit: still finite
        std::fs::write(&path, b).unwrap();
        let p = fault(check(dir.path()).unwrap_err());
        assert_eq!((p.fault, p.round), (Fault::ModelMismatch, Some(3)));
        assert!(p.to_string().contains("round-00000003.f64"), "{p}");
        let p = fault(open_for_start(dir.path()).err().unwrap());
        assert_eq!(p.fault, Fault::ModelMismatch);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            fault(check(dir.path()).unwrap_err()).fault,
            Fault::ModelMissing
        );
    }

    #[test]
    fn a_model_file_two_rounds_ahead_means_lost_rounds_one_ahead_is_a_crash() {
        let dir = state();
        let models = dir.path().join("models");
        std::fs::write(models.join("round-00000004.f64"), [0u8; 16]).unwrap();
        let v = check(dir.path()).unwrap();
        assert!(v.notes[0].contains("round 4"), "{:?}", v.notes);
        std::fs::write(models.join("round-00000005.f64"), [0u8; 16]).unwrap();
        let p = fault(check(dir.path()).unwrap_err());
        assert_eq!(p.fault, Fault::DatabaseBehind);
    }

    #[test]
    fn the_commit_file_one_write_behind_or_missing_is_rewritten() {
        let dir = state();
        let path = commit_path(dir.path());
        let current = std::fs::read(&path).unwrap();
        // The file as it was before round 3's commit.
        let mut older = CommitRecord::decode(&current).unwrap();
        older.write -= 1;
        older.round = 2;
        older.models.pop();
        std::fs::write(&path, older.encode()).unwrap();
        let v = check(dir.path()).unwrap();
        assert!(matches!(
            v.repairs[..],
            [Repair::RewriteCommitFile { damaged: false, .. }]
        ));
        drop(open_for_start(dir.path()).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), current);
        // Two writes behind: refused.
        older.write -= 1;
        std::fs::write(&path, older.encode()).unwrap();
        assert_eq!(
            fault(check(dir.path()).unwrap_err()).fault,
            Fault::CommitFileBehind
        );
        std::fs::remove_file(&path).unwrap();
        drop(open_for_start(dir.path()).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), current);
    }

    #[test]
    fn a_database_behind_the_commit_file_is_refused() {
        let dir = state();
        let path = commit_path(dir.path());
        let mut ahead = CommitRecord::decode(&std::fs::read(&path).unwrap()).unwrap();
        ahead.write += 2;
        ahead.round += 1;
        ahead.models.push(sha256_hex(b"x"));
        std::fs::write(&path, ahead.encode()).unwrap();
        let p = fault(check(dir.path()).unwrap_err());
        assert_eq!((p.fault, p.round), (Fault::DatabaseBehind, Some(4)));
        assert!(p.file.ends_with("db"), "{p}");
        assert!(p.to_string().contains("backup taken after round 4"), "{p}");
    }

    #[test]
    fn an_emptied_database_is_refused_and_a_new_one_is_not() {
        let dir = state();
        std::fs::remove_dir_all(dir.path().join("db")).unwrap();
        let p = fault(check(dir.path()).unwrap_err());
        assert_eq!((p.fault, p.round), (Fault::DatabaseMissing, Some(3)));
        let p = fault(open_for_start(dir.path()).err().unwrap());
        assert_eq!(p.fault, Fault::DatabaseMissing);
        // Nothing was created.
        assert!(!dir.path().join("db").exists());
        // A crash while a task was created (model 0 only) is a new state directory.
        let fresh = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(fresh.path().join("models")).unwrap();
        std::fs::write(fresh.path().join("models/round-00000000.f64"), [0u8; 8]).unwrap();
        let (s, _) = open_for_start(fresh.path()).unwrap();
        assert!(s.task_toml().unwrap().is_none());
    }

    #[test]
    fn an_older_state_directory_is_adopted_once() {
        let dir = state();
        // Remove every trace of the record, as an older build left the directory.
        std::fs::remove_file(commit_path(dir.path())).unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.forget_record_for_tests();
        }
        let v = check(dir.path()).unwrap();
        assert_eq!(v.repairs, [Repair::Adopt]);
        drop(open_for_start(dir.path()).unwrap());
        let v = check(dir.path()).unwrap();
        assert!(v.repairs.is_empty());
        assert_eq!(v.record.unwrap().round, 3);
    }

    #[test]
    fn key_changes_are_recorded_and_an_interrupted_one_completes() {
        let dir = state();
        let key_path = crate::secure::key_path(dir.path());
        std::fs::create_dir_all(key_path.parent().unwrap()).unwrap();
        // A key file nobody recorded.
        std::fs::write(&key_path, b"{}").unwrap();
        let p = fault(check(dir.path()).unwrap_err());
        assert_eq!(p.fault, Fault::KeyMismatch);
        assert!(p.to_string().contains("federation-key.json"), "{p}");
        // Announced, then written, then the coordinator stopped: completed at the start.
        {
            let s = Store::open(dir.path()).unwrap();
            s.update_record(|r| {
                r.federation_key_next = Some(KeyChange::Save {
                    sha256: sha256_hex(b"{}"),
                })
            })
            .unwrap();
        }
        let v = check(dir.path()).unwrap();
        assert!(matches!(v.repairs[..], [Repair::CompleteKeyChange(_)]));
        drop(open_for_start(dir.path()).unwrap());
        let v = check(dir.path()).unwrap();
        assert!(v.repairs.is_empty());
        assert_eq!(
            v.record.unwrap().federation_key.as_deref(),
            Some(sha256_hex(b"{}").as_str())
        );
        // Damaged afterwards: refused.
        std::fs::write(&key_path, b"{ }").unwrap();
        assert_eq!(
            fault(check(dir.path()).unwrap_err()).fault,
            Fault::KeyMismatch
        );
        std::fs::remove_file(&key_path).unwrap();
        assert_eq!(
            fault(check(dir.path()).unwrap_err()).fault,
            Fault::KeyMismatch
        );
    }
}
