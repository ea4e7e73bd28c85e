//! Tasks this partner has admitted, pinned by their canonical hash.
//!
//! The first time a task passes the partner's policy, the SHA-256 of its
//! canonical form ([`consortia_model::TaskSpec::canonical_hash`], the
//! `[privacy]` table included) is written to `<state_dir>/tasks/<name>.sha256`
//! and synced. A later `Welcome` with the same task name and another hash is
//! refused: a coordinator cannot change a task's settings — its noise, its
//! minimum of partners, whether it is encrypted — once a partner has joined.

use std::io::Write;
use std::path::{Path, PathBuf};

use consortia_model::FeatureStats;

use crate::AgentError;

fn pin_path(state_dir: &Path, task: &str) -> PathBuf {
    state_dir.join("tasks").join(format!("{task}.sha256"))
}

/// The hash pinned for `task`, if any.
pub fn pinned(state_dir: &Path, task: &str) -> Result<Option<[u8; 32]>, AgentError> {
    let path = pin_path(state_dir, task);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AgentError::Config {
                path,
                message: format!("cannot read the pinned task hash: {e}"),
            });
        }
    };
    let hash = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| AgentError::Config {
            path: path.clone(),
            message: "not a SHA-256 in hex: restore it from a backup of the state directory".into(),
        })?;
    Ok(Some(hash))
}

/// Refuses `hash` for `task` when another hash is pinned.
pub fn check(state_dir: &Path, task: &str, hash: &[u8; 32]) -> Result<(), AgentError> {
    match pinned(state_dir, task)? {
        Some(p) if &p != hash => Err(AgentError::Task(format!(
            "task `{task}` was admitted here with hash {}; the coordinator now sends a task of \
             that name with hash {}: refused (a task's settings, [privacy] included, cannot \
             change once a partner has joined; a new task needs a new name)",
            hex::encode(p),
            hex::encode(hash)
        ))),
        _ => Ok(()),
    }
}

/// Pins `hash` for `task` (durably) unless it is pinned already.
pub fn pin(state_dir: &Path, task: &str, hash: &[u8; 32]) -> Result<(), AgentError> {
    check(state_dir, task, hash)?;
    let path = pin_path(state_dir, task);
    if path.exists() {
        return Ok(());
    }
    write_durably(
        &path,
        &format!("{}\n", hex::encode(hash)),
        "cannot pin the task",
    )
}

/// Replaces `path` with `text` atomically (a synced temporary file renamed
/// over it), creating its directory.
fn write_durably(path: &Path, text: &str, what: &str) -> Result<(), AgentError> {
    let err = |e: std::io::Error| AgentError::Config {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Counts one more evaluation of a global model for `task` and returns the
/// count, written and synced *before* the evaluation runs (so a restart can
/// only over-count). The policy's `max_evaluations` caps it.
pub fn count_evaluation(state_dir: &Path, task: &str) -> Result<u32, AgentError> {
    let path = state_dir.join("tasks").join(format!("{task}.evaluations"));
    let err = |e: String| AgentError::Config {
        path: path.clone(),
        message: format!("evaluation count: {e}"),
    };
    let before = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().parse::<u32>().map_err(|e| err(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(err(e.to_string())),
    };
    let now = before.saturating_add(1);
    write_durably(&path, &format!("{now}\n"), "evaluation count")?;
    Ok(now)
}

fn statistics_path(state_dir: &Path, task: &str) -> PathBuf {
    state_dir
        .join("tasks")
        .join(format!("{task}.statistics.json"))
}

/// The noised feature statistics this partner released for `task`, if it has released any.
/// Under `[privacy]` a partner answers at most one statistics request per task with fresh
/// noise: every later request gets this stored answer again, which costs no budget.
pub fn released_statistics(
    state_dir: &Path,
    task: &str,
) -> Result<Option<FeatureStats>, AgentError> {
    let path = statistics_path(state_dir, task);
    let err = |e: String| AgentError::Config {
        path: path.clone(),
        message: format!("released feature statistics: {e}"),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Records the noised feature statistics released for `task` (written and synced before they
/// are sent; see [`released_statistics`]).
pub fn record_statistics(
    state_dir: &Path,
    task: &str,
    stats: &FeatureStats,
) -> Result<(), AgentError> {
    let path = statistics_path(state_dir, task);
    let what = "cannot record the released feature statistics";
    let text = serde_json::to_string(stats).map_err(|e| AgentError::Config {
        path: path.clone(),
        message: format!("{what}: {e}"),
    })?;
    write_durably(&path, &text, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_task_refuses_another_hash_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pinned(dir.path(), "t").unwrap(), None);
        pin(dir.path(), "t", &[1; 32]).unwrap();
        pin(dir.path(), "t", &[1; 32]).unwrap();
        let e = pin(dir.path(), "t", &[2; 32]).unwrap_err().to_string();
        assert!(
            e.contains("refused") && e.contains(&hex::encode([2u8; 32])),
            "{e}"
        );
        assert!(check(dir.path(), "u", &[2; 32]).is_ok());
        assert_eq!(pinned(dir.path(), "t").unwrap(), Some([1; 32]));
    }

    #[test]
    fn evaluations_are_counted_durably() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(count_evaluation(dir.path(), "t").unwrap(), 1);
        assert_eq!(count_evaluation(dir.path(), "t").unwrap(), 2);
        assert_eq!(count_evaluation(dir.path(), "u").unwrap(), 1);
        assert_eq!(count_evaluation(dir.path(), "t").unwrap(), 3);
    }
    #[test]
    fn released_statistics_are_kept_per_task() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(released_statistics(dir.path(), "t").unwrap(), None);
        let stats = FeatureStats {
            count: 7,
            sum: vec![1.5, -2.0],
            sum_sq: vec![3.25, 4.0],
        };
        record_statistics(dir.path(), "t", &stats).unwrap();
        assert_eq!(released_statistics(dir.path(), "t").unwrap(), Some(stats));
        assert_eq!(released_statistics(dir.path(), "u").unwrap(), None);
    }
}
