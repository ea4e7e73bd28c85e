//! The coordinator's side of differential privacy: refuse a task whose plan
//! cannot finish within budget, leave out partners a round would take over
//! budget, and write each round's spend to the signed ledger *before* the
//! round's result is released (write-ahead: a crash can only over-count).
//!
//! The book keeps each partner's spend per task (by the task's name), replayed
//! from the DP events every ledger entry stored — never from the task's current
//! settings, so changing the noise mid-task cannot make past rounds cheaper.
//! Each partner also keeps its own lifetime budget per dataset, across tasks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use consortia_dp::{
    DpEvent, EVALUATION_MECHANISM, PrivacySpec, STATISTICS_MECHANISM, check_task_plan,
};
use consortia_ledger::book::{BookError, PrivacyBook, TaskId};
use consortia_ledger::{Ledger, Signer, SpendRecord};
use consortia_model::TaskSpec;

use crate::CoordinatorError;
use crate::commit::LedgerHead;
use crate::store::Store;

/// Reads the task's `[privacy]` table, if any, and checks it can run here.
///
/// Refused at task creation: invalid figures (ε ≤ 0, δ ∉ (0,1), C ≤ 0, z ≤ 0,
/// σ_e < 1), a plan whose rounds and planned evaluations exceed the budget
/// (`check_task_plan`; the message gives the ε reached), and settings this
/// coordinator cannot honour.
pub fn task_privacy(task: &TaskSpec) -> Result<Option<PrivacySpec>, CoordinatorError> {
    let bad = |m: String| CoordinatorError::Task(format!("[privacy]: {m}"));
    let Some(spec) = task
        .privacy_spec()
        .map_err(|e| CoordinatorError::Task(e.to_string()))?
    else {
        return Ok(None);
    };
    // Events of a round do not depend on a partner's size (the sampling rate is
    // fixed by the task); δ against each partner's rows is checked once known.
    let events = spec.round_events(1).map_err(|e| bad(e.to_string()))?;
    let rounds = u64::from(task.rounds);
    check_task_plan(&spec, &events, rounds).map_err(|e| {
        bad(format!(
            "{e} (the plan includes {} evaluation(s) at evaluation_noise = {}: raise \
             `evaluation_noise` or `evaluate_every` to make them cheaper)",
            spec.planned_evaluations(rounds),
            spec.evaluation_noise
        ))
    })?;
    Ok(Some(spec))
}

/// The coordinator's privacy book and ledger.
pub struct Accounting {
    /// Budgets of all partners, replayed from the ledger.
    pub book: PrivacyBook,
    ledger: Ledger,
    signer: Signer,
    export: PathBuf,
    /// Partners whose release of feature statistics this task's ledger already charges.
    statistics_charged: BTreeSet<String>,
    /// The state whose commit record follows the ledger's head.
    heads: Option<Arc<Store>>,
}

/// Opens (or creates) the coordinator's ledger in `state_dir/ledger`.
pub fn open_ledger(state_dir: &Path) -> Result<Ledger, CoordinatorError> {
    Ledger::open(state_dir.join("ledger")).map_err(|e| CoordinatorError::Ledger(e.to_string()))
}

impl Accounting {
    /// Opens the ledger in `state_dir/ledger`, signing with the coordinator's key, and replays
    /// the spend of `task`'s rounds from their stored events. New rounds are recorded with the
    /// task's name and canonical hash.
    pub fn open(
        spec: PrivacySpec,
        task: &TaskSpec,
        state_dir: &Path,
        key: &Path,
    ) -> Result<Self, CoordinatorError> {
        Self::with_ledger(spec, task, open_ledger(state_dir)?, state_dir, key)
    }

    /// [`open`](Self::open) with the ledger already opened (the start-up check read it).
    pub fn with_ledger(
        spec: PrivacySpec,
        task: &TaskSpec,
        ledger: Ledger,
        state_dir: &Path,
        key: &Path,
    ) -> Result<Self, CoordinatorError> {
        let task_id = TaskId {
            name: task.name.clone(),
            hash: task
                .canonical_hash()
                .map_err(|e| CoordinatorError::Task(e.to_string()))?,
        };
        let ledger_err = |e: consortia_ledger::LedgerError| CoordinatorError::Ledger(e.to_string());
        let signer = Signer::from_pkcs8_pem_file(key).map_err(ledger_err)?;
        let entries = ledger.entries().map_err(ledger_err)?;
        let statistics_charged = entries
            .iter()
            .filter(|e| e.record.task == task.name && e.record.mechanism == STATISTICS_MECHANISM)
            .flat_map(|e| e.record.participants.iter().cloned())
            .collect();
        let book = PrivacyBook::new(spec, task_id, None, &entries)
            .map_err(|e| CoordinatorError::Ledger(e.to_string()))?;
        for note in book.notes() {
            tracing::warn!(task = %task.name, "privacy ledger: {note}");
        }
        Ok(Accounting {
            book,
            ledger,
            signer,
            export: state_dir.join("privacy-ledger.json"),
            statistics_charged,
            heads: None,
        })
    }

    /// Records the ledger's head in `store`'s commit record after every append (written
    /// after the entry: the ledger runs ahead of the record, never behind it).
    pub fn recording_heads_in(mut self, store: Arc<Store>) -> Self {
        self.heads = Some(store);
        self
    }

    /// The ledger's head now (`None` while it is empty).
    pub fn head(&self) -> Result<Option<LedgerHead>, CoordinatorError> {
        let last = self
            .ledger
            .last()
            .map_err(|e| CoordinatorError::Ledger(e.to_string()))?;
        Ok(last.as_ref().map(LedgerHead::of))
    }

    /// Whether `partner` (with `rows` training rows) can afford the next round;
    /// the reason when it cannot.
    pub fn admits(&mut self, partner: &str, rows: u64) -> Result<(), String> {
        self.admits_round(partner, rows, true, false)
    }

    /// Whether `partner` (with `rows` training rows) can afford what the next round
    /// releases about it: a training round (`train`), an evaluation of the model
    /// (`evaluate`), or both together; the reason when it cannot.
    pub fn admits_round(
        &mut self,
        partner: &str,
        rows: u64,
        train: bool,
        evaluate: bool,
    ) -> Result<(), String> {
        let mut events: Vec<(DpEvent, u64)> = Vec::new();
        if train {
            events = self
                .book
                .round_events(rows as usize)
                .map_err(|e| e.to_string())?;
        }
        if evaluate {
            events.extend(self.book.spec().evaluation_events());
        }
        match self.book.quote_events(partner, &events) {
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
        let record = self.book.charge(round, time_unix_ms, contributions);
        self.append(record, "the round")
    }

    /// Appends a charged record to the ledger (durably), exports the ledger
    /// for auditors and logs each partner's spend.
    fn append(
        &mut self,
        record: Result<SpendRecord, BookError>,
        what: &str,
    ) -> Result<(), CoordinatorError> {
        let record =
            record.map_err(|e| CoordinatorError::Ledger(format!("cannot charge {what}: {e}")))?;
        let err = |e: consortia_ledger::LedgerError| CoordinatorError::Ledger(e.to_string());
        let entry = self
            .ledger
            .append(record.clone(), &self.signer)
            .map_err(err)?;
        if let Some(store) = &self.heads {
            store.record_ledger_head(LedgerHead::of(&entry))?;
        }
        self.ledger.export_json(&self.export).map_err(err)?;
        for (p, eps) in &record.epsilon_cumulative {
            tracing::info!(partner = %p, round = record.round, epsilon = eps, budget = record.budget_epsilon.get(p).copied().unwrap_or(f64::NAN), "privacy spend of {what} recorded");
        }
        Ok(())
    }

    /// Writes the spend of the evaluation released in `round` by each of `partners` (name →
    /// training rows) to the ledger (durably, *before* the round asks for it: write-ahead,
    /// like [`record_round`](Self::record_round)) and exports it: one record of mechanism
    /// [`EVALUATION_MECHANISM`] charging `PrivacySpec::evaluation_events`.
    pub fn record_evaluation(
        &mut self,
        round: u64,
        time_unix_ms: u64,
        partners: &[(String, u64)],
    ) -> Result<(), CoordinatorError> {
        let events = self.book.spec().evaluation_events();
        let record =
            self.book
                .charge_events(round, time_unix_ms, partners, &events, EVALUATION_MECHANISM);
        self.append(record, "the evaluation")
    }

    /// Charges the task's one release of feature statistics
    /// ([`PrivacySpec::statistics_events`]) for each of `partners` not charged for it yet (in
    /// this task's ledger, across restarts), as round 0 with mechanism [`STATISTICS_MECHANISM`]
    /// and row count 0 — as each partner charges it in its own ledger — before they are asked
    /// (write-ahead). Nothing is charged under the partner unit (statistics of the public
    /// bounds cost nothing).
    pub fn record_statistics(
        &mut self,
        time_unix_ms: u64,
        partners: &[String],
    ) -> Result<(), CoordinatorError> {
        let events = self.book.spec().statistics_events();
        let fresh: Vec<(String, u64)> = partners
            .iter()
            .filter(|p| !self.statistics_charged.contains(*p))
            .map(|p| (p.clone(), 0))
            .collect();
        if events.is_empty() || fresh.is_empty() {
            return Ok(());
        }
        let record =
            self.book
                .charge_events(0, time_unix_ms, &fresh, &events, STATISTICS_MECHANISM);
        self.append(record, "the feature statistics")?;
        self.statistics_charged
            .extend(fresh.into_iter().map(|(p, _)| p));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use consortia_ledger::load_entries;

    use super::*;

    const TASK: &str = include_str!("../../examples/telco_churn_dp_eps3.toml");

    /// The plan counts the final evaluation: a task whose rounds fit the budget but whose
    /// rounds and evaluations do not is refused, with the evaluations named.
    #[test]
    fn the_task_plan_includes_the_evaluations() {
        let mut task = TaskSpec::from_toml_str(TASK).unwrap();
        let spec = task_privacy(&task).unwrap().unwrap();
        let events = spec.round_events(1).unwrap();
        let rounds = u64::from(task.rounds);
        let rounds_only = consortia_dp::plan_epsilon_with(&spec, &events, rounds).unwrap();
        // Evaluating every 2nd model at σ_e = 2 costs more than the ε left over.
        let mut table = task.privacy.clone().unwrap();
        table.insert("evaluate_every".into(), 2.into());
        table.insert("evaluation_noise".into(), 2.0.into());
        task.privacy = Some(table);
        assert!(rounds_only <= spec.epsilon);
        let err = task_privacy(&task).unwrap_err().to_string();
        assert!(
            err.contains("would spend") && err.contains("10 evaluation(s) at evaluation_noise = 2"),
            "{err}"
        );
        // And σ_e below 1 is refused as a figure.
        let mut table = task.privacy.clone().unwrap();
        table.insert("evaluation_noise".into(), 0.5.into());
        task.privacy = Some(table);
        let err = task_privacy(&task).unwrap_err().to_string();
        assert!(err.contains("evaluation_noise"), "{err}");
    }

    /// An evaluation is recorded as its own ledger entry, after the round's.
    #[test]
    fn evaluations_are_recorded_after_the_round() {
        let dir = tempfile::tempdir().unwrap();
        let pki =
            consortia_pki::Pki::init(dir.path().join("pki"), &["localhost".into()], &[]).unwrap();
        let task = TaskSpec::from_toml_str(TASK).unwrap();
        let spec = task_privacy(&task).unwrap().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut acc =
            Accounting::open(spec.clone(), &task, &state, &pki.coordinator_key_path()).unwrap();
        let parts = [("a".to_string(), 2000u64), ("b".to_string(), 3000)];
        acc.record_round(1, 0, &parts).unwrap();
        let before = acc.book.spent("a").unwrap();
        acc.admits_round("a", 2000, false, true).unwrap();
        acc.record_evaluation(1, 0, &parts).unwrap();
        assert!(acc.book.spent("a").unwrap() > before);
        let entries = load_entries(state.join("privacy-ledger.json")).unwrap();
        assert_eq!(entries.len(), 2);
        let e = &entries[1].record;
        assert_eq!(
            (e.round, e.mechanism.as_str()),
            (1, "evaluation-discrete-gaussian")
        );
        assert_eq!(e.participants, ["a", "b"]);
        assert_eq!(
            e.charged.as_ref().unwrap().events,
            vec![consortia_ledger::entry::StoredEvent::Zcdp {
                rho: 1.0 / (2.0 * spec.evaluation_noise * spec.evaluation_noise),
                count: 1
            }]
        );
    }

    /// Rounds recorded under one noise multiplier keep their cost when the
    /// coordinator restarts with another: the book replays the ledger's
    /// stored events, per task.
    #[test]
    fn reopening_with_other_noise_replays_the_recorded_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let pki =
            consortia_pki::Pki::init(dir.path().join("pki"), &["localhost".into()], &[]).unwrap();
        let key = pki.coordinator_key_path();
        let task = TaskSpec::from_toml_str(TASK).unwrap();
        let mut spec = task_privacy(&task).unwrap().unwrap();
        spec.noise_multiplier *= 0.5;
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut acc = Accounting::open(spec.clone(), &task, &state, &key).unwrap();
        let parts = [("a".to_string(), 2000u64), ("b".to_string(), 3000)];
        for round in 1..=3 {
            acc.record_round(round, 0, &parts).unwrap();
        }
        let spent = acc.book.spent("a").unwrap();
        assert!(spent > 0.0);
        drop(acc);

        spec.noise_multiplier *= 4.0;
        let mut again = Accounting::open(spec.clone(), &task, &state, &key).unwrap();
        assert!((again.book.spent("a").unwrap() - spent).abs() < 1e-12);
        // The rounds at half the noise took `a` past its budget, whatever the new noise.
        assert!(spent > task_privacy(&task).unwrap().unwrap().epsilon);
        let refusal = again.admits("a", 2000).unwrap_err();
        assert!(refusal.contains("is spent"), "{refusal}");
        let entries = load_entries(state.join("privacy-ledger.json")).unwrap();
        let hash = task.canonical_hash().unwrap();
        assert!(entries.iter().all(|e| {
            e.record
                .charged
                .as_ref()
                .is_some_and(|c| c.task_hash == hash && c.dataset.is_none())
        }));
        drop(again);

        // Another task's book does not see these rounds.
        let mut other = task.clone();
        other.name = "another-task".into();
        let fresh = Accounting::open(spec, &other, &state, &key).unwrap();
        assert_eq!(fresh.book.spent("a").unwrap(), 0.0);
    }
    /// The feature statistics are charged once per partner and task, across restarts, as
    /// round 0 with the statistics event.
    #[test]
    fn statistics_are_charged_once_per_partner() {
        let dir = tempfile::tempdir().unwrap();
        let pki =
            consortia_pki::Pki::init(dir.path().join("pki"), &["localhost".into()], &[]).unwrap();
        let key = pki.coordinator_key_path();
        let task = TaskSpec::from_toml_str(TASK).unwrap();
        let spec = task_privacy(&task).unwrap().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut acc = Accounting::open(spec.clone(), &task, &state, &key).unwrap();
        acc.record_statistics(0, &["a".into(), "b".into()]).unwrap();
        let spent = acc.book.spent("a").unwrap();
        assert!(spent > 0.0);
        acc.record_statistics(0, &["a".into(), "b".into()]).unwrap();
        drop(acc);
        let mut again = Accounting::open(spec.clone(), &task, &state, &key).unwrap();
        again
            .record_statistics(0, &["a".into(), "c".into()])
            .unwrap();
        assert!((again.book.spent("a").unwrap() - spent).abs() < 1e-12);
        let entries = load_entries(state.join("privacy-ledger.json")).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].record.participants, ["a", "b"]);
        assert_eq!(entries[1].record.participants, ["c"]);
        for e in &entries {
            assert_eq!(
                (e.record.round, e.record.mechanism.as_str()),
                (0, "statistics-gaussian")
            );
            assert_eq!(
                e.record.charged.as_ref().unwrap().events,
                vec![consortia_ledger::entry::StoredEvent::from_dp(
                    consortia_dp::statistics_event(spec.statistics_noise_multiplier),
                    1
                )]
            );
        }
    }
}
