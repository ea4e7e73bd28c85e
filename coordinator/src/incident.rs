//! Incidents: a secure round whose decrypted sum is outside what well-formed
//! updates can add up to had a malformed ciphertext in it, which may have
//! made the joint decryption reveal secret-key material. The incident is
//! recorded in `<state>/incidents.log` and the federation key is never used
//! again: a new one is made.
//!
//! A decrypted sum that decodes but does not match what its contributors
//! declared ([`undeclared_sum`]: the example counts they signed, or their clip
//! and noise) is garbage — most likely from a key holder's damaged secret
//! share — and is recorded there too; the round is discarded, nothing applied.

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

/// The incident log's file name in the coordinator's state directory.
pub const LOG: &str = "incidents.log";

/// Records that `round`'s decrypted sum does not match what its `contributors`
/// declared (`detail`: the figures): the round is discarded, nothing applied.
pub fn undeclared_sum(
    state_dir: &Path,
    round: u64,
    contributors: &[String],
    detail: &str,
) -> Result<(), CoordinatorError> {
    record_kind(
        state_dir,
        round,
        contributors,
        "undeclared-sum",
        detail,
        "round discarded, nothing applied; a key holder's secret share may be damaged: if this \
         repeats, re-key the federation (`consortia rekey`)",
    )
}

/// Records a judged fault of a t-of-N key's dealing
/// (`phase::threshold_ceremony::judge`): who is at fault, why, the dealer
/// and complainer, and the evidence's digest. `excluded`: whether the party
/// at fault is left out of the key made again.
pub fn threshold_fault(
    state_dir: &Path,
    fault: &crate::phase::threshold_ceremony::Judged,
    excluded: bool,
) -> Result<(), CoordinatorError> {
    use crate::phase::threshold_ceremony::judge::Fault;
    let kind = match fault.fault {
        Fault::Dealer => "threshold-dealer-at-fault",
        Fault::Complainer => "threshold-false-complaint",
        Fault::Relay => "threshold-relay-fault",
    };
    let action = match (&fault.partner, excluded) {
        (Some(p), true) => format!(
            "key abandoned; `{p}` excluded from the federation key (keys/excluded.json; \
             `consortia rekey` lists it again); the key is made again without it"
        ),
        (Some(p), false) => format!("key abandoned; `{p}` was already excluded"),
        (None, _) => "key abandoned and made again; nobody excluded (the coordinator's relay \
                      is at fault: check its host)"
            .to_string(),
    };
    let line = serde_json::json!({
        "time_unix_ms": now_ms(),
        "kind": kind,
        "at_fault": fault.partner,
        "dealer": fault.dealer,
        "complainer": fault.complainer,
        "evidence_sha256": hex::encode(fault.evidence),
        "detail": fault.why,
        "action": action,
    });
    append(state_dir, &line)
}

/// Appends an incident (JSON, one line) to `<state>/incidents.log`, synced.
fn record(
    state_dir: &Path,
    round: u64,
    contributors: &[String],
    detail: &str,
) -> Result<(), CoordinatorError> {
    record_kind(
        state_dir,
        round,
        contributors,
        "malformed-ciphertext",
        detail,
        "federation key retired; a new key ceremony started",
    )
}

fn record_kind(
    state_dir: &Path,
    round: u64,
    contributors: &[String],
    kind: &str,
    detail: &str,
    action: &str,
) -> Result<(), CoordinatorError> {
    let line = serde_json::json!({
        "time_unix_ms": now_ms(),
        "round": round,
        "kind": kind,
        "contributors": contributors,
        "detail": detail,
        "action": action,
    });
    append(state_dir, &line)
}

/// Appends `line` to `<state>/incidents.log`, synced.
fn append(state_dir: &Path, line: &serde_json::Value) -> Result<(), CoordinatorError> {
    use std::io::Write;
    let path = state_dir.join(LOG);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undeclared_sum_is_recorded_with_its_figures() {
        let dir = tempfile::tempdir().unwrap();
        let who = ["a".to_string(), "b".to_string()];
        undeclared_sum(dir.path(), 4, &who, "counts 7 rows, signed for 9").unwrap();
        undeclared_sum(dir.path(), 5, &who, "norm 1e12").unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["kind"], "undeclared-sum");
        assert_eq!(lines[0]["round"], 4);
        assert_eq!(lines[0]["detail"], "counts 7 rows, signed for 9");
        assert_eq!(lines[1]["contributors"], serde_json::json!(["a", "b"]));
        assert!(
            lines[1]["action"]
                .as_str()
                .unwrap()
                .contains("nothing applied")
        );
    }

    #[test]
    fn a_judged_threshold_fault_is_recorded_with_who_why_and_the_evidence() {
        use crate::phase::threshold_ceremony::{Judged, judge::Fault};
        let dir = tempfile::tempdir().unwrap();
        let dealer = Judged {
            fault: Fault::Dealer,
            partner: Some("d".into()),
            dealer: "d".into(),
            complainer: Some("b".into()),
            why: "a subshare in its signed box: c − a ⊙ r is not small".into(),
            evidence: [7; 32],
        };
        threshold_fault(dir.path(), &dealer, true).unwrap();
        let relay = Judged {
            fault: Fault::Relay,
            partner: None,
            ..dealer.clone()
        };
        threshold_fault(dir.path(), &relay, false).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["kind"], "threshold-dealer-at-fault");
        assert_eq!(lines[0]["at_fault"], "d");
        assert_eq!(lines[0]["complainer"], "b");
        assert_eq!(lines[0]["evidence_sha256"], hex::encode([7; 32]));
        assert!(
            lines[0]["action"]
                .as_str()
                .unwrap()
                .contains("`d` excluded")
        );
        assert_eq!(lines[1]["kind"], "threshold-relay-fault");
        assert!(lines[1]["at_fault"].is_null());
        assert!(
            lines[1]["action"]
                .as_str()
                .unwrap()
                .contains("nobody excluded")
        );
    }
}
