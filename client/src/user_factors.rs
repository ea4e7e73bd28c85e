//! A recommendation partner's own user part, kept in its state directory.
//!
//! In a matrix factorisation task ([`consortia_model::models::mf`]) each user's bias
//! and factors are private to the partner that holds the user's ratings: they are in
//! no update, evaluation, log line or coordinator state. Every time the agent works
//! from a global model (to evaluate it, train from it, or both), it also fits each of
//! its users to **all** of their ratings — training and held-out — given that model's
//! item part (the closed-form user step) and keeps the result in
//! `<state_dir>/tasks/<task>.mf-users.bin` ([`path`]), for `consortia score --state`.
//!
//! The file is written like the partner's other private state: a temporary file with
//! mode 0600, synced, renamed over the old one, and the directory synced. It is bound
//! to what the factors were fitted against — the task's canonical hash, the round of
//! the model, and the SHA-256 of that model's parameters ([`model_digest`]) — and ends
//! with a SHA-256 of everything before it, so a damaged file is found on reading.
//!
//! Layout (integers and floats little-endian): [`MAGIC`]; the task hash (32 bytes);
//! the model round (u64); the model digest (32 bytes); factors per user `k` (u32);
//! users `n` (u64); `n` records of the user's id (i64), bias (f64) and `k` factors
//! (f64); the checksum (32 bytes).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use consortia_model::models::mf::UserFactors;

use crate::AgentError;

/// The first bytes of a users' factors file (format version 1).
pub const MAGIC: &[u8; 24] = b"consortia mf-users v1\n\0\0";

/// Bytes before the users' records.
const HEADER: usize = MAGIC.len() + 32 + 8 + 32 + 4 + 8;
/// Bytes of the trailing checksum.
const CHECKSUM: usize = 32;

/// Where the agent keeps the users' factors of `task` in `state_dir`.
pub fn path(state_dir: &Path, task: &str) -> PathBuf {
    state_dir.join("tasks").join(format!("{task}.mf-users.bin"))
}

/// SHA-256 of a model's parameters (each as its 8 little-endian bytes): which global
/// model the users' factors were fitted against.
pub fn model_digest(params: &[f64]) -> [u8; 32] {
    let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
    consortia_proto::sha256(&bytes)
}

/// A partner's users' factors and what they were fitted against.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUsers {
    /// Canonical hash of the task.
    pub task_hash: [u8; 32],
    /// The round of the global model the factors were fitted against.
    pub model_round: u64,
    /// [`model_digest`] of that model's parameters.
    pub model_digest: [u8; 32],
    /// Each user's id, in the order of `users`.
    pub ids: Vec<i64>,
    /// The users' biases and factors.
    pub users: UserFactors,
}

/// Whether stored factors were fitted against the model being used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fitted {
    /// Against this very model (same task, round and parameters).
    ThisModel,
    /// Against another model of the same task; says which.
    OtherModel(String),
}

impl StoredUsers {
    /// The file's bytes (see the module documentation).
    fn to_bytes(&self) -> Vec<u8> {
        let k = self.users.factors();
        let mut out = Vec::with_capacity(HEADER + self.ids.len() * (16 + 8 * k) + CHECKSUM);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.task_hash);
        out.extend_from_slice(&self.model_round.to_le_bytes());
        out.extend_from_slice(&self.model_digest);
        out.extend_from_slice(&(k as u32).to_le_bytes());
        out.extend_from_slice(&(self.ids.len() as u64).to_le_bytes());
        for (u, id) in self.ids.iter().enumerate() {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&self.users.bias[u].to_le_bytes());
            for v in self.users.of(u) {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let sum = consortia_proto::sha256(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Replaces the file at `path` durably and privately: a temporary file beside it
    /// with mode 0600, synced, renamed over `path`, then the directory synced.
    pub fn write(&self, path: &Path) -> Result<(), AgentError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if self.ids.len() != self.users.len() {
            return Err(AgentError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "{} user ids for {} users' factors: not written",
                    self.ids.len(),
                    self.users.len()
                ),
            });
        }
        let err = |e: std::io::Error| AgentError::Config {
            path: path.to_path_buf(),
            message: format!("cannot keep the users' factors: {e}"),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // A temporary file left by an earlier run keeps its mode on open.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(&self.to_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }

    /// Reads the file at `path`; `None` when there is none. A file that is damaged,
    /// truncated or of another format is refused naming it.
    pub fn read(path: &Path) -> Result<Option<Self>, AgentError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(AgentError::Config {
                    path: path.to_path_buf(),
                    message: format!("cannot read the users' factors: {e}"),
                });
            }
        };
        Self::from_bytes(&bytes)
            .map(Some)
            .map_err(|why| AgentError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "not a users' factors file this version of consortia can use, or damaged \
                     ({why}); delete it (the agent writes it again at the next round it takes \
                     part in), or score without --state to fit the users' factors from the \
                     ratings"
                ),
            })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER + CHECKSUM || !bytes.starts_with(MAGIC) {
            return Err("it does not start with the format's header".into());
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
        if consortia_proto::sha256(body).as_slice() != sum {
            return Err("its checksum does not match its contents".into());
        }
        let mut at = MAGIC.len();
        let mut take = |n: usize| {
            let s = &body[at..at + n];
            at += n;
            s
        };
        let array = |s: &[u8]| <[u8; 32]>::try_from(s).unwrap_or_default();
        let task_hash = array(take(32));
        let model_round = u64::from_le_bytes(take(8).try_into().unwrap_or_default());
        let model_digest = array(take(32));
        let k = u32::from_le_bytes(take(4).try_into().unwrap_or_default()) as usize;
        let n = u64::from_le_bytes(take(8).try_into().unwrap_or_default());
        let record = 16 + 8 * k;
        let expected = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(record))
            .and_then(|r| r.checked_add(HEADER));
        if expected != Some(body.len()) {
            return Err(format!(
                "{} bytes of records for {n} users of {k} factors",
                body.len() - HEADER
            ));
        }
        let n = n as usize;
        let f64_at = |s: &[u8], i: usize| {
            f64::from_le_bytes(s[8 * i..8 * i + 8].try_into().unwrap_or_default())
        };
        let mut ids = Vec::with_capacity(n);
        let mut bias = Vec::with_capacity(n);
        let mut vectors = Vec::with_capacity(n * k);
        for rec in body[HEADER..].chunks_exact(record) {
            ids.push(i64::from_le_bytes(rec[..8].try_into().unwrap_or_default()));
            bias.push(f64_at(rec, 1));
            vectors.extend((0..k).map(|j| f64_at(rec, 2 + j)));
        }
        let mut seen = std::collections::HashSet::with_capacity(n);
        if let Some(id) = ids.iter().find(|id| !seen.insert(**id)) {
            return Err(format!("user {id} appears twice"));
        }
        let users = UserFactors::from_parts(k, bias, vectors).map_err(|e| e.to_string())?;
        Ok(Self {
            task_hash,
            model_round,
            model_digest,
            ids,
            users,
        })
    }

    /// Whether these factors (read from `path`) were fitted against the model of
    /// `round` with parameters `params` of task `task` (canonical hash `task_hash`).
    /// Factors of another task are refused naming the file.
    pub fn fitted_against(
        &self,
        path: &Path,
        task: &str,
        task_hash: &[u8; 32],
        round: u64,
        params: &[f64],
    ) -> Result<Fitted, AgentError> {
        if &self.task_hash != task_hash {
            return Err(AgentError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "these are the users' factors of another task (hash {}), not of task `{task}` \
                     (hash {}) whose model is scored: pass the state directory of the agent that \
                     took part in this task, or score without --state to fit the users' factors \
                     from the ratings",
                    &hex::encode(self.task_hash)[..16],
                    &hex::encode(task_hash)[..16]
                ),
            });
        }
        if self.model_round != round {
            return Ok(Fitted::OtherModel(format!(
                "they were fitted against the model of round {}, not round {round}",
                self.model_round
            )));
        }
        if self.model_digest != model_digest(params) {
            return Ok(Fitted::OtherModel(format!(
                "they were fitted against another model of round {round} (another run of the task)"
            )));
        }
        Ok(Fitted::ThisModel)
    }

    /// The factors of the users `ids`, in that order: the stored ones, and for a user
    /// with none stored, that user's row of `fitted` (fitted over the same `ids`).
    /// Returns them and how many users came from `fitted`.
    pub fn select(
        &self,
        ids: &[i64],
        fitted: Option<&UserFactors>,
    ) -> Result<(UserFactors, usize), AgentError> {
        let k = self.users.factors();
        let index: HashMap<i64, usize> = self
            .ids
            .iter()
            .enumerate()
            .map(|(u, id)| (*id, u))
            .collect();
        let mut bias = Vec::with_capacity(ids.len());
        let mut vectors = Vec::with_capacity(ids.len() * k);
        let mut from_fitted = 0;
        for (u, id) in ids.iter().enumerate() {
            let (b, v) = match (index.get(id), fitted) {
                (Some(&s), _) => (self.users.bias[s], self.users.of(s)),
                (None, Some(f)) if u < f.len() && f.factors() == k => {
                    from_fitted += 1;
                    (f.bias[u], f.of(u))
                }
                (None, _) => {
                    return Err(AgentError::Data(format!(
                        "user {id} has no stored factors and none were fitted"
                    )));
                }
            };
            bias.push(b);
            vectors.extend_from_slice(v);
        }
        let users = UserFactors::from_parts(k, bias, vectors)
            .map_err(|e| AgentError::Data(e.to_string()))?;
        Ok((users, from_fitted))
    }

    /// How many of `ids` have no stored factors.
    pub fn missing(&self, ids: &[i64]) -> usize {
        let have: std::collections::HashSet<i64> = self.ids.iter().copied().collect();
        ids.iter().filter(|id| !have.contains(id)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn stored() -> StoredUsers {
        StoredUsers {
            task_hash: [7; 32],
            model_round: 12,
            model_digest: model_digest(&[1.0, 2.5, -3.0]),
            ids: vec![4, 10, 1],
            users: UserFactors::from_parts(
                2,
                vec![0.5, -0.25, 0.0],
                vec![0.1, 0.2, -1.5, 3.0, 0.0, 1e-300],
            )
            .unwrap(),
        }
    }

    #[test]
    fn the_file_is_private_durable_and_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "movies");
        assert_eq!(p, dir.path().join("tasks/movies.mf-users.bin"));
        assert_eq!(StoredUsers::read(&p).unwrap(), None, "none kept yet");
        let s = stored();
        s.write(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(StoredUsers::read(&p).unwrap(), Some(s.clone()));
        // A temporary file left world-readable by an earlier run does not make the
        // next file readable.
        let tmp = dir.path().join("tasks/movies.mf-users.bin.tmp");
        std::fs::write(&tmp, b"old").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        s.write(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!tmp.exists());
    }

    #[test]
    fn a_damaged_or_truncated_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "movies");
        stored().write(&p).unwrap();
        let good = std::fs::read(&p).unwrap();
        let mut flipped = good.clone();
        flipped[HEADER + 20] ^= 0x01;
        for (bytes, why) in [
            (flipped, "checksum"),
            (good[..good.len() - 9].to_vec(), "checksum"),
            (b"userId,bias\n4,0.5\n".to_vec(), "header"),
        ] {
            std::fs::write(&p, &bytes).unwrap();
            let e = StoredUsers::read(&p).unwrap_err().to_string();
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(e.contains(why), "{e}");
            assert!(e.contains("delete it"), "{e}");
        }
        // A record count that disagrees with the length, checksum recomputed.
        let mut short = good[..good.len() - CHECKSUM - 8].to_vec();
        let sum = consortia_proto::sha256(&short);
        short.extend_from_slice(&sum);
        std::fs::write(&p, &short).unwrap();
        let e = StoredUsers::read(&p).unwrap_err().to_string();
        assert!(e.contains("for 3 users of 2 factors"), "{e}");
    }

    #[test]
    fn factors_of_another_task_are_refused_and_another_round_is_told_apart() {
        let s = stored();
        let p = Path::new("/state/tasks/movies.mf-users.bin");
        let params = [1.0, 2.5, -3.0];
        let e = s
            .fitted_against(p, "movies", &[8; 32], 12, &params)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/state/tasks/movies.mf-users.bin: "), "{e}");
        assert!(
            e.contains("another task") && e.contains("without --state"),
            "{e}"
        );
        let ok = s
            .fitted_against(p, "movies", &[7; 32], 12, &params)
            .unwrap();
        assert_eq!(ok, Fitted::ThisModel);
        let Fitted::OtherModel(why) = s
            .fitted_against(p, "movies", &[7; 32], 13, &params)
            .unwrap()
        else {
            panic!("another round")
        };
        assert!(why.contains("round 12, not round 13"), "{why}");
        let other = [1.0, 2.5, -3.5];
        let Fitted::OtherModel(why) = s.fitted_against(p, "movies", &[7; 32], 12, &other).unwrap()
        else {
            panic!("another model")
        };
        assert!(why.contains("another model of round 12"), "{why}");
    }

    #[test]
    fn select_takes_stored_users_and_fills_the_others_from_the_fitted_ones() {
        let s = stored();
        let ids = [1, 99, 4];
        assert_eq!(s.missing(&ids), 1);
        let fitted = UserFactors::from_parts(2, vec![9.0, 8.0, 7.0], vec![0.0; 6]).unwrap();
        let (users, from_fitted) = s.select(&ids, Some(&fitted)).unwrap();
        assert_eq!(from_fitted, 1);
        assert_eq!(users.bias, [0.0, 8.0, 0.5]);
        assert_eq!(users.of(0), [0.0, 1e-300]);
        assert_eq!(users.of(1), [0.0, 0.0]);
        assert_eq!(users.of(2), [0.1, 0.2]);
        assert!(s.select(&ids, None).is_err());
    }
}
