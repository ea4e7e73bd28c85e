//! Incidents: a secure round whose decrypted sum is outside what well-formed
//! updates can add up to had a malformed ciphertext in it, which may have
//! made the joint decryption reveal secret-key material. The incident is
//! recorded in `<state>/incidents.log` and the federation key is never used
//! again: a new one is made.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::CoordinatorError;
use crate::hub::Hub;
use crate::phase::key_ceremony;
use crate::report::now_ms;
use crate::secure::FederationKey;
use crate::store::Store;

/// Records the incident of `round` (its sum is unusable for `why`), retires
/// the federation key and returns the new one.
pub async fn malformed_sum(
    hub: &Hub,
    store: &Store,
    round: u64,
    contributors: &[String],
    why: &str,
    min: usize,
    deadline: Duration,
) -> Result<Arc<FederationKey>, CoordinatorError> {
    record(store.dir(), round, contributors, why)?;
    tracing::error!(
        round,
        contributors = ?contributors,
        "INCIDENT: round {round}'s decrypted sum is outside what well-formed updates can add up to \
         (a contributor sent a malformed ciphertext, which may expose key material): the \
         federation key is retired and a new one is made; see {}",
        store.dir().join("incidents.log").display()
    );
    key_ceremony::renew(hub, store, min, deadline).await
}

/// Appends an incident (JSON, one line) to `<state>/incidents.log`, synced.
fn record(
    state_dir: &Path,
    round: u64,
    contributors: &[String],
    detail: &str,
) -> Result<(), CoordinatorError> {
    use std::io::Write;
    let line = serde_json::json!({
        "time_unix_ms": now_ms(),
        "round": round,
        "kind": "malformed-ciphertext",
        "contributors": contributors,
        "detail": detail,
        "action": "federation key retired; a new key ceremony started",
    });
    let path = state_dir.join("incidents.log");
    let append = || -> Result<(), std::io::Error> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(f, "{line}")?;
        f.sync_all()
    };
    append().map_err(CoordinatorError::file(&path))
}
