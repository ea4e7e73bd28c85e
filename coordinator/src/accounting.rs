//! The coordinator's side of differential privacy: refuse a task whose plan
//! cannot finish within budget, leave out partners a round would take over
//! budget, and write each round's spend to the signed ledger *before* the
//! round's result is released (write-ahead: a crash can only over-count).

use std::path::{Path, PathBuf};

use consortia_ledger::book::{BookError, PrivacyBook};
use consortia_ledger::{Ledger, Signer};
use consortia_model::TaskSpec;
use consortia_privacy::dp::{PrivacySpec, check_plan};

use crate::CoordinatorError;

/// Reads the task's `[privacy]` table, if any, and checks it can run here.
///
/// Refused at task creation: invalid figures (ε ≤ 0, δ ∉ (0,1), C ≤ 0, z ≤ 0),
/// a plan whose rounds exceed the budget (the message gives the ε reached),
/// and settings this coordinator cannot honour.
pub fn task_privacy(task: &TaskSpec) -> Result<Option<PrivacySpec>, CoordinatorError> {
    let bad = |m: String| CoordinatorError::Task(format!("[privacy]: {m}"));
    let Some(spec) = task
        .privacy_spec()
        .map_err(|e| CoordinatorError::Task(e.to_string()))?
    else {
        return Ok(None);
    };
    if spec.adaptive_clipping.is_some() {
        return Err(bad(
            "adaptive_clipping is not supported by the partner agents yet: remove the table and set clip_norm"
                .into(),
        ));
    }
    // Events of a round do not depend on a partner's size (the sampling rate is
    // fixed by the task); δ against each partner's rows is checked once known.
    let events = spec.round_events(1).map_err(|e| bad(e.to_string()))?;
    check_plan(&spec, &events, u64::from(task.rounds)).map_err(|e| bad(e.to_string()))?;
    Ok(Some(spec))
}

/// The coordinator's privacy book and ledger.
pub struct Accounting {
    /// Budgets of all partners, replayed from the ledger.
    pub book: PrivacyBook,
    ledger: Ledger,
    signer: Signer,
    export: PathBuf,
}

impl Accounting {
    /// Opens the ledger in `state_dir/ledger`, signing with the coordinator's key.
    pub fn open(
        spec: PrivacySpec,
        task: &str,
        state_dir: &Path,
        key: &Path,
    ) -> Result<Self, CoordinatorError> {
        let ledger_err = |e: consortia_ledger::LedgerError| {
            CoordinatorError::Task(format!("privacy ledger: {e}"))
        };
        let ledger = Ledger::open(state_dir.join("ledger")).map_err(ledger_err)?;
        let signer = Signer::from_pkcs8_pem_file(key).map_err(ledger_err)?;
        let entries = ledger.entries().map_err(ledger_err)?;
        let book = PrivacyBook::new(spec, task, None, &entries)
            .map_err(|e| CoordinatorError::Task(format!("privacy ledger: {e}")))?;
        Ok(Accounting {
            book,
            ledger,
            signer,
            export: state_dir.join("privacy-ledger.json"),
        })
    }

    /// Whether `partner` (with `rows` training rows) can afford the next round;
    /// the reason when it cannot.
    pub fn admits(&mut self, partner: &str, rows: u64) -> Result<(), String> {
        match self.book.quote(partner, rows as usize) {
            Ok(q) if q.fits() => Ok(()),
            Ok(q) => Err(format!(
                "its budget would go from ε {:.3} to ε {:.3}, over its ε {}",
                q.spent, q.after, q.budget
            )),
            Err(BookError::Overspent { budget, .. }) => {
                Err(format!("its budget (ε {budget}) is spent"))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes a round's spend to the ledger (durably) and exports it for auditors.
    pub fn record_round(
        &mut self,
        round: u64,
        time_unix_ms: u64,
        contributions: &[(String, u64)],
    ) -> Result<(), CoordinatorError> {
        let record = self
            .book
            .charge(round, time_unix_ms, contributions)
            .map_err(|e| CoordinatorError::Task(format!("privacy accounting: {e}")))?;
        let err = |e: consortia_ledger::LedgerError| {
            CoordinatorError::Task(format!("privacy ledger: {e}"))
        };
        self.ledger
            .append(record.clone(), &self.signer)
            .map_err(err)?;
        self.ledger.export_json(&self.export).map_err(err)?;
        for (p, eps) in &record.epsilon_cumulative {
            tracing::info!(partner = %p, round, epsilon = eps, budget = record.budget_epsilon.get(p).copied().unwrap_or(f64::NAN), "privacy spend recorded");
        }
        Ok(())
    }
}
