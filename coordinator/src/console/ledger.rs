//! The privacy ledger as the console shows it: the coordinator's export
//! (`STATE_DIR/privacy-ledger.json`, rewritten atomically after every charge) read and
//! verified against the coordinator's certificate whenever it changed, at every
//! request. A failed verification raises an alarm that stays up until the coordinator
//! restarts, even if a later export verifies again; so does an entry verified earlier
//! that went missing or changed (truncation or rewriting of the tail).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use consortia_ledger::store::MAX_EXPORT_BYTES;
use consortia_ledger::{LedgerEntry, LedgerFile, Verifier, audit};
use serde::Serialize;

use crate::hub::lock;

/// When the console first saw the ledger fail verification, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    /// Milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// What failed.
    pub problem: String,
}

/// The ledger's verification, as the privacy page and `/api/v1/privacy` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerStatus {
    /// Whether the coordinator has exported a ledger (a task with `[privacy]` that
    /// charged something).
    pub present: bool,
    /// Entries in the export.
    pub entries: usize,
    /// Index of the last entry.
    pub head_index: Option<u64>,
    /// Hash of the last entry (hex).
    pub head_hash: Option<String>,
    /// Whether every entry verified (hash chain, signatures) and no entry verified
    /// earlier went missing or changed.
    pub verified: bool,
    /// The first problem found now, if any.
    pub problem: Option<String>,
    /// The certificate whose key the signatures were checked against.
    pub certificate: String,
    /// SHA-256 fingerprint (hex) of that key.
    pub key_fingerprint: Option<String>,
    /// When the export was last verified, milliseconds since the Unix epoch.
    pub checked_unix_ms: u64,
    /// Raised at the first failed verification; stays up until the coordinator restarts.
    pub alarm: Option<Alarm>,
}

/// Watches the ledger export. Cheap to clone.
#[derive(Clone)]
pub(super) struct LedgerWatch {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    cert: PathBuf,
    verifier: Result<Verifier, String>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The version of the file last read (length, modification time, inode).
    stamp: Option<(u64, Option<SystemTime>, u64)>,
    status: Option<LedgerStatus>,
    entries: Arc<Vec<LedgerEntry>>,
    /// The last entry that verified, ever.
    good_head: Option<(u64, [u8; 32])>,
    alarm: Option<Alarm>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LedgerWatch {
    /// Watches the export at `path`, signed with the key of the certificate at `cert`.
    pub(super) fn new(path: PathBuf, cert: PathBuf) -> Self {
        let verifier = Verifier::from_cert_pem_file(&cert).map_err(|e| e.to_string());
        LedgerWatch {
            inner: Arc::new(Inner {
                path,
                cert,
                verifier,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Verifies the export if it changed since the last look; its status and entries.
    pub(super) fn check(&self) -> (LedgerStatus, Arc<Vec<LedgerEntry>>) {
        use std::os::unix::fs::MetadataExt;
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        let stamp = std::fs::metadata(&inner.path)
            .ok()
            .map(|m| (m.len(), m.modified().ok(), m.ino()));
        if stamp.is_some()
            && stamp == state.stamp
            && let Some(status) = &state.status
        {
            let mut status = status.clone();
            status.checked_unix_ms = now_ms();
            status.alarm = state.alarm.clone();
            return (status, Arc::clone(&state.entries));
        }
        state.stamp = stamp;
        let (entries, problem) = match stamp {
            None => (Vec::new(), None),
            Some(_) => match LedgerFile::load_with_limit(&inner.path, MAX_EXPORT_BYTES) {
                Ok(file) => (file.entries, None),
                Err(e) => (
                    Vec::new(),
                    Some(format!("cannot read the ledger export: {e}")),
                ),
            },
        };
        let mut fingerprint = None;
        let problem = problem.or_else(|| match &inner.verifier {
            Err(e) => Some(format!(
                "cannot check signatures: the coordinator's certificate {} is unusable: {e}",
                inner.cert.display()
            )),
            Ok(verifier) => {
                let report = audit::verify(&entries, verifier);
                fingerprint = Some(report.key_fingerprint.clone());
                report.problem.map(|p| p.to_string())
            }
        });
        // An entry verified earlier must still be there, unchanged.
        let problem = problem.or_else(|| {
            let (index, hash) = state.good_head?;
            match entries.get(index as usize) {
                Some(e) if e.hash == hash => None,
                Some(_) => Some(format!(
                    "entry {index}, verified earlier, has changed (the ledger was rewritten)"
                )),
                None => Some(format!(
                    "entry {index}, verified earlier, is missing ({} entries left: the ledger \
                     was truncated or removed)",
                    entries.len()
                )),
            }
        });
        match &problem {
            None => {
                if let Some(last) = entries.last() {
                    state.good_head = Some((last.index, last.hash));
                }
            }
            Some(p) => {
                if state.alarm.is_none() {
                    tracing::error!(
                        ledger = %inner.path.display(),
                        "the privacy ledger failed verification: {p}"
                    );
                    state.alarm = Some(Alarm {
                        since_unix_ms: now_ms(),
                        problem: p.clone(),
                    });
                }
            }
        }
        let status = LedgerStatus {
            present: stamp.is_some(),
            entries: entries.len(),
            head_index: entries.last().map(|e| e.index),
            head_hash: entries.last().map(|e| hex::encode(e.hash)),
            verified: problem.is_none(),
            problem,
            certificate: inner.cert.display().to_string(),
            key_fingerprint: fingerprint,
            checked_unix_ms: now_ms(),
            alarm: state.alarm.clone(),
        };
        state.status = Some(status.clone());
        state.entries = Arc::new(entries);
        (status, Arc::clone(&state.entries))
    }

    /// The export's bytes as stored, for download (`None` when there is none).
    pub(super) fn raw(&self) -> Option<Vec<u8>> {
        use std::io::Read;
        let file = std::fs::File::open(&self.inner.path).ok()?;
        let mut bytes = Vec::new();
        file.take(MAX_EXPORT_BYTES).read_to_end(&mut bytes).ok()?;
        Some(bytes)
    }

    /// The HTML report `consortia audit report` writes, of the export's entries now.
    pub(super) fn report_html(&self, task: &str) -> Option<String> {
        let (status, entries) = self.check();
        if !status.present {
            return None;
        }
        Some(audit::report_html(
            &entries,
            &format!("Privacy ledger: {task}"),
        ))
    }
}
