//! The heads of the partners' own privacy ledgers, as they reported them.
//!
//! After it charges its own ledger an agent reports the ledger's head (entry
//! count, hash of the last entry; [`LedgerHead`]). The coordinator keeps the
//! latest head of each partner in `<state>/partner-heads.json` and sends it back
//! in the next session's `Welcome`: an agent whose ledger was lost or rolled
//! back together with its own head file (a whole state directory restored from
//! an old backup, or deleted) then sees that its ledger holds less than it
//! once reported and refuses to go on, instead of forgetting spend.
//!
//! Nothing here is trusted by the partner for its budget: a coordinator that
//! sends a made-up head can only make an agent stop. A report that goes
//! *back* (fewer entries than the kept head) is logged and does not replace
//! the kept head, so the partner is told again at its next session.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use consortia_proto::LedgerHead;
use serde::{Deserialize, Serialize};

use crate::CoordinatorError;
use crate::hub::lock;
use crate::rejection::{Rejection, Subject};

/// File name in the coordinator's state directory.
pub const FILE: &str = "partner-heads.json";
/// Largest file read back (the heads of some thousands of partners).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// One partner's reported head, as stored (the hash in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    entries: u64,
    hash: String,
}

/// The partners' reported ledger heads, kept durably.
#[derive(Debug)]
pub struct PartnerHeads {
    path: Option<PathBuf>,
    heads: Mutex<BTreeMap<String, Head>>,
}

impl PartnerHeads {
    /// Kept in memory only (tests and benches).
    pub fn in_memory() -> Self {
        PartnerHeads {
            path: None,
            heads: Mutex::new(BTreeMap::new()),
        }
    }

    /// Loads the heads kept in `state_dir` (none yet: empty).
    pub fn open(state_dir: &Path) -> Result<Self, CoordinatorError> {
        let path = state_dir.join(FILE);
        let heads = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(CoordinatorError::file(&path)(e)),
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                return Err(CoordinatorError::Corrupt(format!(
                    "{} is {} bytes, more than the {MAX_FILE_BYTES} a partner-heads file can \
                     be; delete it to start the partners' acknowledgements afresh",
                    path.display(),
                    m.len()
                )));
            }
            Ok(_) => {
                let text = std::fs::read_to_string(&path).map_err(CoordinatorError::file(&path))?;
                serde_json::from_str(&text).map_err(|e| {
                    CoordinatorError::Corrupt(format!(
                        "{} is not a partner-heads file ({e}); delete it to start the \
                         partners' acknowledgements afresh (it only strengthens the \
                         partners' own ledger checks)",
                        path.display()
                    ))
                })?
            }
        };
        Ok(PartnerHeads {
            path: Some(path),
            heads: Mutex::new(heads),
        })
    }

    /// The head `partner` last reported, for its `Welcome`.
    pub fn acknowledged(&self, partner: &str) -> Option<LedgerHead> {
        let heads = lock(&self.heads);
        let h = heads.get(partner)?;
        Some(LedgerHead {
            entries: h.entries,
            hash: hex::decode(&h.hash).ok()?,
        })
    }

    /// Records the head `partner` reports. A malformed head is refused; one
    /// behind the kept head is logged and not kept.
    pub fn record(&self, partner: &str, head: &LedgerHead) -> Result<(), Rejection> {
        if head.hash.len() != 32 {
            return Err(Rejection::invalid(
                Subject::Message,
                "a ledger head with a 32-byte hash",
                format!("a hash of {} bytes", head.hash.len()),
            ));
        }
        if head.entries == 0 {
            return Err(Rejection::invalid(
                Subject::Message,
                "a ledger head of at least one entry",
                "a head of 0 entries",
            ));
        }
        let new = Head {
            entries: head.entries,
            hash: hex::encode(&head.hash),
        };
        let mut heads = lock(&self.heads);
        match heads.get(partner) {
            Some(old) if *old == new => return Ok(()),
            Some(old) if old.entries > new.entries => {
                tracing::warn!(
                    partner = %partner,
                    reason = "ledger_head_behind",
                    "partner reports its privacy ledger at {} entries, after {} before: its \
                     ledger went back; it is told so at its next session",
                    new.entries,
                    old.entries
                );
                return Ok(());
            }
            _ => {}
        }
        heads.insert(partner.to_string(), new);
        if let Some(path) = &self.path
            && let Err(e) = write_durably(path, &heads)
        {
            // The acknowledgement only strengthens the partner's own check;
            // losing one is not a reason to stop a round.
            tracing::warn!(path = %path.display(), "cannot keep a partner's ledger head: {e}");
        }
        Ok(())
    }
}

fn write_durably(path: &Path, heads: &BTreeMap<String, Head>) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string(heads)?.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(entries: u64, byte: u8) -> LedgerHead {
        LedgerHead {
            entries,
            hash: vec![byte; 32],
        }
    }

    #[test]
    fn the_latest_head_is_kept_across_a_restart_and_a_head_going_back_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let heads = PartnerHeads::open(dir.path()).unwrap();
        assert_eq!(heads.acknowledged("acme"), None);
        heads.record("acme", &head(3, 1)).unwrap();
        heads.record("acme", &head(5, 2)).unwrap();
        heads.record("acme", &head(4, 9)).unwrap(); // behind: not kept
        let reopened = PartnerHeads::open(dir.path()).unwrap();
        assert_eq!(reopened.acknowledged("acme"), Some(head(5, 2)));
        assert_eq!(reopened.acknowledged("other"), None);
    }

    #[test]
    fn malformed_heads_are_refused() {
        let heads = PartnerHeads::in_memory();
        assert!(heads.record("acme", &head(0, 1)).is_err());
        assert!(
            heads
                .record(
                    "acme",
                    &LedgerHead {
                        entries: 2,
                        hash: vec![1; 31]
                    }
                )
                .is_err()
        );
        assert_eq!(heads.acknowledged("acme"), None);
    }

    #[test]
    fn a_damaged_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        let e = PartnerHeads::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains(FILE), "{e}");
    }
}
