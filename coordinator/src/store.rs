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
//! A round is committed by writing its model file (synced, then renamed into
//! place) and then one sled transaction (record, counter), flushed before the
//! next round starts, so after a crash the coordinator
//! resumes from the last completed round and never applies a round twice.

use std::path::{Path, PathBuf};

use consortia_model::TaskMetrics;
use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::CoordinatorError;

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
}

const LAST_ROUND: &[u8] = b"last_round";
const STRATEGY_STATE: &[u8] = b"strategy_state";
/// sled page cache of the coordinator's database.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn corrupt(what: &str, e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Corrupt(format!("{what}: {e}"))
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, CoordinatorError> {
        std::fs::create_dir_all(dir).map_err(CoordinatorError::file(dir))?;
        // Only small records live in sled; a small page cache is plenty.
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(CoordinatorError::store(dir))?;
        let tree = |name: &str| db.open_tree(name).map_err(CoordinatorError::store(dir));
        Ok(Store {
            meta: tree("meta")?,
            models: {
                let m = dir.join("models");
                std::fs::create_dir_all(&m).map_err(CoordinatorError::file(&m))?;
                m
            },
            rounds: tree("rounds")?,
            metrics: tree("metrics")?,
            path: dir.to_path_buf(),
            db,
        })
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
    pub fn init_task(&self, task_toml: &str, initial: &[f64]) -> Result<(), CoordinatorError> {
        self.write_model(0, initial)?;
        self.meta
            .insert(LAST_ROUND, &0u64.to_be_bytes())
            .map_err(self.err())?;
        self.meta
            .insert("task", task_toml.as_bytes())
            .map_err(self.err())?;
        self.flush()
    }

    /// The last completed round (0 before the first).
    pub fn last_round(&self) -> Result<u64, CoordinatorError> {
        match self.meta.get(LAST_ROUND).map_err(self.err())? {
            None => Ok(0),
            Some(v) => decode_u64(&v).ok_or_else(|| corrupt("last_round", "not 8 bytes")),
        }
    }

    fn model_path(&self, round: u64) -> PathBuf {
        self.models.join(format!("round-{round:08}.f64"))
    }

    /// Writes a model file durably: temporary file, fsync, rename, fsync of the directory.
    fn write_model(&self, round: u64, model: &[f64]) -> Result<(), CoordinatorError> {
        use std::io::Write;
        let path = self.model_path(round);
        let tmp = path.with_extension("tmp");
        let write = || -> Result<(), std::io::Error> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&encode_f64(model))?;
            f.sync_all()
        };
        write().map_err(CoordinatorError::file(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(CoordinatorError::file(&path))?;
        std::fs::File::open(&self.models)
            .and_then(|d| d.sync_all())
            .map_err(CoordinatorError::file(&self.models))
    }

    /// The global model after `round`.
    pub fn model(&self, round: u64) -> Result<Option<Vec<f64>>, CoordinatorError> {
        if round > self.last_round()? {
            return Ok(None);
        }
        let path = self.model_path(round);
        match std::fs::read(&path) {
            Ok(bytes) => {
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
        // The model file first: a crash before the transaction leaves a file
        // for a round that is not committed, overwritten when it is redone.
        self.write_model(record.round, model)?;
        let record_bytes = serde_json::to_vec(record).map_err(|e| corrupt("round record", e))?;
        (&self.meta, &self.rounds)
            .transaction(|(meta, rounds)| {
                rounds.insert(&key, record_bytes.as_slice())?;
                meta.insert(LAST_ROUND, &key)?;
                meta.insert(STRATEGY_STATE, strategy_state)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(s) => CoordinatorError::Store {
                    path: self.path.clone(),
                    source: s,
                },
                sled::transaction::TransactionError::Abort(()) => {
                    corrupt("round commit", "aborted")
                }
            })?;
        self.flush()
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
        match self.meta.get("standardizer").map_err(self.err())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt("standardizer", e)),
        }
    }

    /// Stores the federation's standardisation.
    pub fn put_standardizer(&self, s: &StoredStandardizer) -> Result<(), CoordinatorError> {
        let bytes = serde_json::to_vec(s).map_err(|e| corrupt("standardizer", e))?;
        self.meta
            .insert("standardizer", bytes)
            .map_err(self.err())?;
        self.flush()
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), CoordinatorError> {
        self.db.flush().map_err(self.err())?;
        Ok(())
    }
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
