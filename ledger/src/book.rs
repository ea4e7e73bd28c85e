//! Per-partner privacy budgets kept from a ledger: what each partner has
//! spent, what the next round would cost it, and the ledger record of a
//! round's spend.
//!
//! The book is rebuilt from ledger entries at start-up, so the ledger is the
//! single source of truth: the coordinator keeps one book for every partner
//! from its ledger, and each partner agent keeps its own from its own ledger,
//! so no partner has to trust the operator's accounting. Every round of a
//! task costs a partner the same events (`PrivacySpec::round_events`), so a
//! partner's spend is those events composed once per ledger entry naming it
//! (Mironov 2017, "Rényi Differential Privacy", Prop. 1: RDP composes by
//! addition).

use std::collections::BTreeMap;

use consortia_privacy::dp::{
    Budget, DpError, DpEvent, NoisePlacement, PartnerBudget, PrivacySpec, PrivacyUnit,
};

use crate::entry::{LedgerEntry, SpendRecord};

/// Why the book cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// The privacy settings or a figure are invalid.
    #[error("{0}")]
    Privacy(#[from] DpError),
    /// The ledger says a partner already spent more than its budget.
    #[error(
        "the ledger shows `{partner}` already past its budget (ε {budget}); it cannot take part in more rounds of this task"
    )]
    Overspent {
        /// Partner.
        partner: String,
        /// Its ε budget.
        budget: f64,
    },
}

/// What the next round would cost one partner.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    /// ε spent so far.
    pub spent: f64,
    /// ε after the round.
    pub after: f64,
    /// The partner's ε budget.
    pub budget: f64,
}

impl Quote {
    /// True when the round fits the budget.
    pub fn fits(&self) -> bool {
        self.after <= self.budget
    }
}

/// Budgets of the partners of one task.
#[derive(Debug)]
pub struct PrivacyBook {
    spec: PrivacySpec,
    task: String,
    own_budget: Option<Budget>,
    partners: BTreeMap<String, PartnerBudget>,
    exhausted: BTreeMap<String, f64>,
}

impl PrivacyBook {
    /// A book for `task` replayed from `entries` (entries of other tasks are skipped).
    ///
    /// `own_budget`, when set, replaces the task's budgets: a partner agent
    /// passes the budget its organisation configured.
    pub fn new(
        spec: PrivacySpec,
        task: &str,
        own_budget: Option<Budget>,
        entries: &[LedgerEntry],
    ) -> Result<Self, BookError> {
        spec.validate()?;
        let mut book = PrivacyBook {
            spec,
            task: task.to_string(),
            own_budget,
            partners: BTreeMap::new(),
            exhausted: BTreeMap::new(),
        };
        for e in entries.iter().filter(|e| e.record.task == task) {
            for p in &e.record.participants {
                let rows = e.record.dataset_sizes.get(p).copied().unwrap_or(1) as usize;
                let events = book.spec.round_events(rows.max(1))?;
                let budget = book.budget_for(p);
                let entry = book.entry(p)?;
                if entry.spend(&events).is_err() {
                    book.exhausted.insert(p.clone(), budget.epsilon);
                }
            }
        }
        Ok(book)
    }

    /// The privacy settings.
    pub fn spec(&self) -> &PrivacySpec {
        &self.spec
    }

    /// The budget that applies to `partner`.
    pub fn budget_for(&self, partner: &str) -> Budget {
        self.own_budget
            .unwrap_or_else(|| self.spec.budget_for(partner))
    }

    fn entry(&mut self, partner: &str) -> Result<&mut PartnerBudget, BookError> {
        if !self.partners.contains_key(partner) {
            let b = PartnerBudget::new(self.budget_for(partner), self.spec.accountant)?;
            self.partners.insert(partner.to_string(), b);
        }
        self.partners
            .get_mut(partner)
            .ok_or_else(|| BookError::Overspent {
                partner: partner.to_string(),
                budget: 0.0,
            })
    }

    /// The events one round costs a partner with `rows` training rows.
    pub fn round_events(&self, rows: usize) -> Result<Vec<(DpEvent, u64)>, BookError> {
        Ok(self.spec.round_events(rows.max(1))?)
    }

    /// What the next round would cost `partner`.
    pub fn quote(&mut self, partner: &str, rows: usize) -> Result<Quote, BookError> {
        let budget = self.budget_for(partner).epsilon;
        if self.exhausted.contains_key(partner) {
            return Err(BookError::Overspent {
                partner: partner.to_string(),
                budget,
            });
        }
        let events = self.round_events(rows)?;
        let entry = self.entry(partner)?;
        Ok(Quote {
            spent: entry.spent_epsilon()?,
            after: entry.cost_if(&events)?,
            budget,
        })
    }

    /// ε spent so far by `partner`.
    pub fn spent(&mut self, partner: &str) -> Result<f64, BookError> {
        Ok(self.entry(partner)?.spent_epsilon()?)
    }

    /// Charges one round to `participants` (name → training rows) and returns
    /// the ledger record to append *before* the round's result is released.
    ///
    /// A participant whose budget the round exceeds is still charged in the
    /// record (what was released cannot be taken back) and marked exhausted.
    pub fn charge(
        &mut self,
        round: u64,
        time_unix_ms: u64,
        participants: &[(String, u64)],
    ) -> Result<SpendRecord, BookError> {
        let mut record = SpendRecord {
            task: self.task.clone(),
            round,
            time_unix_ms,
            participants: participants.iter().map(|(p, _)| p.clone()).collect(),
            privacy_unit: match self.spec.unit {
                PrivacyUnit::Record => "record".into(),
                PrivacyUnit::Partner => "partner".into(),
            },
            mechanism: mechanism_name(&self.spec).into(),
            clip_norm: self.spec.clip_norm,
            noise_multiplier: self.spec.noise_multiplier,
            sampling_rate: self.spec.sampling_rate.unwrap_or(1.0),
            dataset_sizes: BTreeMap::new(),
            epsilon_round: BTreeMap::new(),
            delta: self.spec.delta,
            epsilon_cumulative: BTreeMap::new(),
            budget_epsilon: BTreeMap::new(),
        };
        for (p, rows) in participants {
            let events = self.round_events(*rows as usize)?;
            let budget = self.budget_for(p).epsilon;
            let entry = self.entry(p)?;
            let before = entry.spent_epsilon()?;
            let after = entry.cost_if(&events)?;
            if entry.spend(&events).is_err() {
                self.exhausted.insert(p.clone(), budget);
            }
            record.dataset_sizes.insert(p.clone(), *rows);
            // ε is not additive under RDP composition: the round's figure is the
            // increase of the cumulative ε at the budget's δ.
            record
                .epsilon_round
                .insert(p.clone(), (after - before).max(0.0));
            record.epsilon_cumulative.insert(p.clone(), after);
            record.budget_epsilon.insert(p.clone(), budget);
        }
        Ok(record)
    }
}

/// The ledger's name for the mechanism a spec runs.
pub fn mechanism_name(spec: &PrivacySpec) -> &'static str {
    match (spec.unit, spec.placement) {
        (PrivacyUnit::Record, NoisePlacement::Local) => "dp-sgd-gaussian",
        (PrivacyUnit::Partner, NoisePlacement::Local) => "dp-fedavg-gaussian",
        (_, NoisePlacement::Distributed) => "distributed-discrete-gaussian",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PrivacySpec {
        toml::from_str(
            "epsilon = 2.0\ndelta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = 2.0\nsampling_rate = 0.02\nsteps_per_round = 20\n",
        )
        .unwrap()
    }

    #[test]
    fn charges_accumulate_and_replay_from_entries() {
        let mut book = PrivacyBook::new(spec(), "t", None, &[]).unwrap();
        let q1 = book.quote("a", 1000).unwrap();
        assert_eq!(q1.spent, 0.0);
        assert!(q1.fits());
        let r1 = book.charge(1, 0, &[("a".into(), 1000)]).unwrap();
        let r2 = book.charge(2, 0, &[("a".into(), 1000)]).unwrap();
        assert!(r2.epsilon_cumulative["a"] > r1.epsilon_cumulative["a"]);
        assert!((r1.epsilon_cumulative["a"] - q1.after).abs() < 1e-12);
        // Rebuilding from the records gives the same spend.
        let fake = |rec: SpendRecord, i: u64| LedgerEntry {
            index: i,
            prev_hash: [0; 32],
            record: rec,
            hash: [0; 32],
            signature: vec![],
        };
        let entries = vec![fake(r1, 0), fake(r2.clone(), 1)];
        let mut again = PrivacyBook::new(spec(), "t", None, &entries).unwrap();
        assert!((again.spent("a").unwrap() - r2.epsilon_cumulative["a"]).abs() < 1e-12);
        // Another task's entries are not counted.
        let mut other = PrivacyBook::new(spec(), "u", None, &entries).unwrap();
        assert_eq!(other.spent("a").unwrap(), 0.0);
    }

    #[test]
    fn a_smaller_own_budget_is_reached_sooner() {
        let own = Budget {
            epsilon: 0.5,
            delta: 1e-5,
        };
        let mut book = PrivacyBook::new(spec(), "t", Some(own), &[]).unwrap();
        let mut rounds = 0;
        while book.quote("a", 1000).unwrap().fits() {
            book.charge(rounds, 0, &[("a".into(), 1000)]).unwrap();
            rounds += 1;
            assert!(rounds < 1000);
        }
        assert!(rounds >= 1);
        assert!(book.spent("a").unwrap() <= 0.5);
    }
}
