//! Per-partner privacy budgets kept from a ledger: what each partner has
//! spent, what the next round would cost it, and the ledger record of a
//! round's spend.
//!
//! The book is rebuilt from ledger entries at start-up, so the ledger is the
//! single source of truth: the coordinator keeps one book per task for every
//! partner from its ledger ([`PrivacyBook::new`]), and each partner agent keeps
//! one for its dataset from its own ledger ([`PrivacyBook::for_dataset`]), so
//! no partner has to trust the operator's accounting.
//!
//! A partner's spend is the composition of the events every replayed entry
//! *stored* (RDP composes by addition, Mironov 2017, "Rényi Differential
//! Privacy", Prop. 1). The current [`PrivacySpec`] prices only the next round:
//! a task whose noise multiplier was lowered mid-way, or that was renamed,
//! still carries the full cost of its past rounds.
//!
//! Entries of format v1 stored no events. They are replayed from their own
//! `noise_multiplier` and `sampling_rate` as one Gaussian step per round
//! (Poisson-subsampled when the rate is below 1): v1 did not record the
//! number of DP-SGD steps, so a v1 round that took several steps is
//! under-counted, and a v1 distributed-discrete-Gaussian round is counted
//! without its rounding term. [`PrivacyBook::notes`] says when that happened.

use std::collections::BTreeMap;

use consortia_dp::{
    Budget, DpError, DpEvent, NoisePlacement, PrivacySpec, PrivacyUnit, RdpAccountant,
};

use crate::entry::{
    Adjacency, ChargeDetails, DatasetId, LedgerEntry, Placement, SpendRecord, StoredEvent, rng_name,
};

/// Why the book cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// The privacy settings or a figure are invalid.
    #[error("{0}")]
    Privacy(#[from] DpError),
    /// The ledger says a partner already spent more than its budget.
    #[error(
        "the ledger shows `{partner}` already past its budget (ε {budget}); it cannot take part in more rounds"
    )]
    Overspent {
        /// Partner.
        partner: String,
        /// Its ε budget.
        budget: f64,
    },
    /// A ledger entry cannot be replayed.
    #[error(
        "ledger entry {index} cannot be replayed: {reason}; the spend it records is unknown, so no budget can be computed — inspect it with `consortia audit report`"
    )]
    Unreplayable {
        /// The entry's index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// The participants of one round would be charged different events.
    #[error(
        "the participants of round {round} would be charged different events; one ledger record states one mechanism per round"
    )]
    MixedEvents {
        /// The round.
        round: u64,
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

/// The task a book charges new rounds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskId {
    /// The task's name.
    pub name: String,
    /// SHA-256 of its canonical form (`TaskSpec::canonical_hash`).
    pub hash: [u8; 32],
}

/// Which ledger entries a book replays.
#[derive(Debug, Clone, PartialEq)]
enum Scope {
    /// Entries whose task has the book's task name (the coordinator, per task).
    Task,
    /// Entries charged to this dataset, of any task (a partner's lifetime budget).
    Dataset(DatasetId),
}

/// Budgets of the partners: of one task (the coordinator's book) or of one dataset across every
/// task (a partner's own book).
#[derive(Debug)]
pub struct PrivacyBook {
    spec: PrivacySpec,
    task: TaskId,
    scope: Scope,
    own_budget: Option<Budget>,
    spent: BTreeMap<String, RdpAccountant>,
    replayed: usize,
    notes: Vec<String>,
}

impl PrivacyBook {
    /// The coordinator's book for `task`, replayed from the stored events of the entries of
    /// `task.name` (entries of other tasks are skipped).
    ///
    /// `own_budget`, when set, replaces the task's budgets.
    pub fn new(
        spec: PrivacySpec,
        task: TaskId,
        own_budget: Option<Budget>,
        entries: &[LedgerEntry],
    ) -> Result<Self, BookError> {
        Self::build(spec, task, Scope::Task, own_budget, entries)
    }

    /// A partner's book for its `dataset`: replays every entry charged to that dataset
    /// ([`DatasetId::same_data`]), whatever its task, so a renamed task or a second task on the
    /// same data spends from the same lifetime budget. Entries that do not name a dataset
    /// (format v1, or written without one) are counted too: their data is unknown, and
    /// over-counting is the safe side. New rounds are charged to `task` and `dataset`.
    ///
    /// `own_budget` is the partner's own budget; without it the task's budget applies.
    pub fn for_dataset(
        spec: PrivacySpec,
        task: TaskId,
        dataset: DatasetId,
        own_budget: Option<Budget>,
        entries: &[LedgerEntry],
    ) -> Result<Self, BookError> {
        Self::build(spec, task, Scope::Dataset(dataset), own_budget, entries)
    }

    fn build(
        spec: PrivacySpec,
        task: TaskId,
        scope: Scope,
        own_budget: Option<Budget>,
        entries: &[LedgerEntry],
    ) -> Result<Self, BookError> {
        spec.validate()?;
        if let Some(b) = own_budget {
            b.validate()?;
        }
        let mut book = PrivacyBook {
            spec,
            task,
            scope,
            own_budget,
            spent: BTreeMap::new(),
            replayed: 0,
            notes: Vec::new(),
        };
        let (mut legacy, mut legacy_ddg, mut unknown_dataset) = (0usize, 0usize, 0usize);
        // Composition is commutative: gather each partner's events with their counts, then
        // compose each distinct event once.
        let mut pending: BTreeMap<&str, Vec<(DpEvent, u64)>> = BTreeMap::new();
        for e in entries {
            let in_scope = match &book.scope {
                Scope::Task => e.record.task == book.task.name,
                Scope::Dataset(d) => match e.record.dataset() {
                    Some(other) => d.same_data(other),
                    None => {
                        unknown_dataset += 1;
                        true
                    }
                },
            };
            if !in_scope {
                continue;
            }
            let events = stored_events(e)?;
            if e.record.charged.is_none() {
                legacy += 1;
                if e.record.mechanism == DDG_MECHANISM {
                    legacy_ddg += 1;
                }
            }
            book.replayed += 1;
            for p in &e.record.participants {
                let list = pending.entry(p.as_str()).or_default();
                for &(event, count) in &events {
                    match list.iter_mut().find(|(known, _)| *known == event) {
                        Some((_, n)) => *n = n.saturating_add(count),
                        None => list.push((event, count)),
                    }
                }
            }
        }
        for (p, events) in pending {
            let mut acc = RdpAccountant::new();
            acc.compose_all(&events)?;
            book.spent.insert(p.to_string(), acc);
        }
        if legacy > 0 {
            book.notes.push(format!(
                "{legacy} ledger entr{} of format v1 (which stored no DP events) were replayed from \
                 their own noise multiplier and sampling rate as one step per round; if those \
                 rounds took several DP-SGD steps, the spend shown is too low",
                if legacy == 1 { "y" } else { "ies" }
            ));
        }
        if legacy_ddg > 0 {
            book.notes.push(format!(
                "{legacy_ddg} of them recorded distributed discrete Gaussian rounds, replayed as \
                 the continuous Gaussian of the same noise multiplier (the rounding term of KLS21 \
                 Thm 1 is not counted)"
            ));
        }
        if unknown_dataset > 0 {
            book.notes.push(format!(
                "{unknown_dataset} ledger entr{} name no dataset (written before datasets were \
                 recorded) and were counted against this dataset",
                if unknown_dataset == 1 { "y" } else { "ies" }
            ));
        }
        Ok(book)
    }

    /// The privacy settings that price the next round.
    pub fn spec(&self) -> &PrivacySpec {
        &self.spec
    }

    /// The task new rounds are charged to.
    pub fn task(&self) -> &TaskId {
        &self.task
    }

    /// The dataset the book covers (a partner's book), `None` for a per-task book.
    pub fn dataset(&self) -> Option<&DatasetId> {
        match &self.scope {
            Scope::Task => None,
            Scope::Dataset(d) => Some(d),
        }
    }

    /// How many ledger entries the book replayed.
    pub fn replayed_entries(&self) -> usize {
        self.replayed
    }

    /// What the replay had to assume (format v1 entries, entries without a dataset), for the
    /// operator to read; empty when every entry was replayed exactly as stored.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The budget that applies to `partner`.
    pub fn budget_for(&self, partner: &str) -> Budget {
        self.own_budget
            .unwrap_or_else(|| self.spec.budget_for(partner))
    }

    /// The events `partner` has been charged so far (consecutive repeats merged).
    pub fn charged_events(&self, partner: &str) -> &[(DpEvent, u64)] {
        self.spent.get(partner).map_or(&[], |acc| acc.ledger())
    }

    /// The events one round costs a partner with `rows` training rows, under the current
    /// settings.
    pub fn round_events(&self, rows: usize) -> Result<Vec<(DpEvent, u64)>, BookError> {
        Ok(self.spec.round_events(rows.max(1))?)
    }

    /// ε of `acc` at the δ of `partner`'s budget (0 when nothing was composed).
    fn epsilon_of(&self, partner: &str, acc: &RdpAccountant) -> Result<f64, BookError> {
        if acc.ledger().is_empty() {
            return Ok(0.0);
        }
        Ok(acc.epsilon(self.budget_for(partner).delta)?)
    }

    /// ε spent so far by `partner`, at its budget's δ.
    pub fn spent(&self, partner: &str) -> Result<f64, BookError> {
        match self.spent.get(partner) {
            Some(acc) => self.epsilon_of(partner, acc),
            None => Ok(0.0),
        }
    }

    /// What the next round would cost `partner`; [`BookError::Overspent`] when the ledger
    /// already shows it past its budget.
    pub fn quote(&self, partner: &str, rows: usize) -> Result<Quote, BookError> {
        let budget = self.budget_for(partner).epsilon;
        let spent = self.spent(partner)?;
        if spent > budget {
            return Err(BookError::Overspent {
                partner: partner.to_string(),
                budget,
            });
        }
        let events = self.round_events(rows)?;
        self.quote_events(partner, &events)
    }

    /// What releasing `events` (e.g. a training round's and an evaluation's together) would
    /// cost `partner`; [`BookError::Overspent`] when the ledger already shows it past its
    /// budget.
    pub fn quote_events(
        &self,
        partner: &str,
        events: &[(DpEvent, u64)],
    ) -> Result<Quote, BookError> {
        let budget = self.budget_for(partner).epsilon;
        let spent = self.spent(partner)?;
        if spent > budget {
            return Err(BookError::Overspent {
                partner: partner.to_string(),
                budget,
            });
        }
        let mut acc = self.spent.get(partner).cloned().unwrap_or_default();
        acc.compose_all(events)?;
        Ok(Quote {
            spent,
            after: self.epsilon_of(partner, &acc)?,
            budget,
        })
    }

    /// Charges one round to `participants` (name → training rows) and returns the ledger
    /// record (format v2) to append *before* the round's result is released.
    ///
    /// A participant whose budget the round exceeds is still charged (what was released cannot
    /// be taken back); later quotes for it fail with [`BookError::Overspent`].
    pub fn charge(
        &mut self,
        round: u64,
        time_unix_ms: u64,
        participants: &[(String, u64)],
    ) -> Result<SpendRecord, BookError> {
        let mut events: Option<Vec<(DpEvent, u64)>> = None;
        for (_, rows) in participants {
            let mine = self.round_events(*rows as usize)?;
            match &events {
                None => events = Some(mine),
                Some(first) if *first == mine => {}
                Some(_) => return Err(BookError::MixedEvents { round }),
            }
        }
        let events = match events {
            Some(e) => e,
            None => self.round_events(1)?,
        };
        self.charge_round(round, time_unix_ms, participants, &events)
    }

    /// Charges one training round's `events` — those the partner's local update states
    /// it spends — to `participants`, recorded with the round's mechanism summary (as
    /// [`charge`](Self::charge) does with the events the settings imply).
    pub fn charge_round(
        &mut self,
        round: u64,
        time_unix_ms: u64,
        participants: &[(String, u64)],
        events: &[(DpEvent, u64)],
    ) -> Result<SpendRecord, BookError> {
        for (event, _) in events {
            event.validate()?;
        }
        let summary = Mechanism {
            name: mechanism_name(&self.spec),
            clip_norm: self.spec.clip_norm,
            noise_multiplier: self.spec.noise_multiplier,
            sampling_rate: self.spec.sampling_rate.unwrap_or(1.0),
            placement: match self.spec.placement {
                NoisePlacement::Local => Placement::Local,
                NoisePlacement::Distributed => Placement::Distributed,
            },
            adjacency: adjacency(&self.spec),
            honest_contributors: honest_contributors(&self.spec),
            dimension: match self.spec.placement {
                NoisePlacement::Local => None,
                NoisePlacement::Distributed => self.spec.distributed_shape.map(|s| s.dim as u64),
            },
        };
        self.record(round, time_unix_ms, participants, events, summary)
    }

    /// Charges a release other than a training round — `events`, e.g. an evaluation's
    /// (`PrivacySpec::evaluation_events`) — to `participants` (name → training rows, stated in
    /// the record as their dataset sizes) and returns the ledger record (format v2) to append
    /// *before* the release, with `mechanism` as its mechanism name (e.g.
    /// [`EVALUATION_MECHANISM`](consortia_dp::EVALUATION_MECHANISM)).
    ///
    /// Such releases are noised by each partner on its own (placement `local`, no honest
    /// contributors or dimension) and private under add/remove of one record (the record
    /// unit; under the partner unit no evaluation is released). The record's summary fields describe the events as one
    /// Gaussian-equivalent release of unit sensitivity: `clip_norm` 1, `sampling_rate` 1 and
    /// `noise_multiplier` `1/√(2ρ)` with ρ the events' total zCDP ρ (σ_e for one evaluation;
    /// 0 when an event has no ρ). The events themselves are what the book replays.
    ///
    /// As with [`charge`](Self::charge), a participant whose budget the release exceeds is
    /// still charged; quote first with [`quote_events`](Self::quote_events).
    pub fn charge_events(
        &mut self,
        round: u64,
        time_unix_ms: u64,
        participants: &[(String, u64)],
        events: &[(DpEvent, u64)],
        mechanism: &str,
    ) -> Result<SpendRecord, BookError> {
        if events.is_empty() {
            return Err(BookError::Privacy(DpError::Unsupported(
                "a release charges at least one DP event",
            )));
        }
        for (event, _) in events {
            event.validate()?;
        }
        let rho = events.iter().try_fold(0.0f64, |total, &(e, n)| {
            e.zcdp_rho().map(|r| total + r * n as f64)
        });
        let summary = Mechanism {
            name: mechanism,
            clip_norm: 1.0,
            noise_multiplier: match rho {
                Some(r) if r > 0.0 => 1.0 / (2.0 * r).sqrt(),
                _ => 0.0,
            },
            sampling_rate: 1.0,
            placement: Placement::Local,
            // Evaluations are charged under the record unit only (one held-out row added or
            // removed; consortia_dp::release).
            adjacency: Adjacency::AddRemove,
            honest_contributors: None,
            dimension: None,
        };
        self.record(round, time_unix_ms, participants, events, summary)
    }

    /// Composes `events` into each participant's spend and returns the record stating it.
    fn record(
        &mut self,
        round: u64,
        time_unix_ms: u64,
        participants: &[(String, u64)],
        events: &[(DpEvent, u64)],
        summary: Mechanism<'_>,
    ) -> Result<SpendRecord, BookError> {
        let delta = self.own_budget.map_or(self.spec.delta, |b| b.delta);
        let mut record = SpendRecord {
            task: self.task.name.clone(),
            round,
            time_unix_ms,
            participants: participants.iter().map(|(p, _)| p.clone()).collect(),
            privacy_unit: match self.spec.unit {
                PrivacyUnit::Record => "record".into(),
                PrivacyUnit::Partner => "partner".into(),
            },
            mechanism: summary.name.into(),
            clip_norm: summary.clip_norm,
            noise_multiplier: summary.noise_multiplier,
            sampling_rate: summary.sampling_rate,
            dataset_sizes: BTreeMap::new(),
            epsilon_round: BTreeMap::new(),
            delta,
            epsilon_cumulative: BTreeMap::new(),
            budget_epsilon: BTreeMap::new(),
            charged: Some(ChargeDetails {
                events: events
                    .iter()
                    .map(|&(e, n)| StoredEvent::from_dp(e, n))
                    .collect(),
                placement: summary.placement,
                adjacency: summary.adjacency,
                honest_contributors: summary.honest_contributors,
                dimension: summary.dimension,
                rng: rng_name().to_string(),
                dataset: self.dataset().cloned(),
                task_hash: self.task.hash,
            }),
        };
        for (p, rows) in participants {
            let budget = self.budget_for(p).epsilon;
            let before = self.spent(p)?;
            let mut acc = self.spent.get(p).cloned().unwrap_or_default();
            acc.compose_all(events)?;
            let after = self.epsilon_of(p, &acc)?;
            self.spent.insert(p.clone(), acc);
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

/// The neighbouring relation a spec's rounds are private for.
///
/// * Record unit: add/remove one row (the relation of consortia-dp's
///   mechanisms and accountant, privacy/dp/src/lib.rs).
/// * Partner unit: zero-out (Kairouz, McMahan, Song, Thakkar, Thakurta, Xu
///   2021, "Practical and Private (Deep) Learning without Sampling or
///   Shuffling", §2): updates carry their sender's name, so whether a partner
///   took part is not hidden — what is hidden is its update, which may be
///   replaced by zeros. A clipped delta and zeros differ by at most C in L2,
///   the sensitivity the add/remove analysis uses, so the Gaussian's RDP curve
///   (and every ε figure) is the same; the ledger names the relation that
///   holds.
fn adjacency(spec: &PrivacySpec) -> Adjacency {
    match spec.unit {
        PrivacyUnit::Record => Adjacency::AddRemove,
        PrivacyUnit::Partner => Adjacency::ZeroOut,
    }
}

/// What a ledger record states about the mechanism besides its events.
struct Mechanism<'a> {
    name: &'a str,
    clip_norm: f64,
    noise_multiplier: f64,
    sampling_rate: f64,
    placement: Placement,
    adjacency: Adjacency,
    honest_contributors: Option<u64>,
    dimension: Option<u64>,
}

/// `n_min − t` of a distributed spec (`DistributedShape::honest_shares`): the noise shares in
/// every released sum that the coordinator and its colluders do not know. `None` for local
/// placement.
fn honest_contributors(spec: &PrivacySpec) -> Option<u64> {
    match spec.placement {
        NoisePlacement::Local => None,
        NoisePlacement::Distributed => spec.distributed_shape.map(|s| s.honest_shares() as u64),
    }
}

/// The `mechanism` name of distributed discrete Gaussian rounds.
const DDG_MECHANISM: &str = "distributed-discrete-gaussian";

/// The events an entry charged each participant: its stored events (format v2), or for a
/// format v1 entry one Gaussian step at its own noise multiplier, Poisson-sampled at its own
/// rate when that is below 1.
fn stored_events(e: &LedgerEntry) -> Result<Vec<(DpEvent, u64)>, BookError> {
    let bad = |reason: String| BookError::Unreplayable {
        index: e.index,
        reason,
    };
    let r = &e.record;
    let events: Vec<(DpEvent, u64)> = match &r.charged {
        Some(c) => {
            // Zero-out events of a clipped partner delta have the add/remove
            // sensitivity C (see `adjacency`), so they compose the same way.
            if c.adjacency == Adjacency::ReplaceOne {
                return Err(bad(format!(
                    "its events hold under {} adjacency, and this accountant composes add/remove \
                     and zero-out events only",
                    c.adjacency.as_str()
                )));
            }
            if c.events.is_empty() {
                return Err(bad("it stores no DP events".into()));
            }
            c.events.iter().map(StoredEvent::to_dp).collect()
        }
        None => match r.mechanism.as_str() {
            "dp-sgd-gaussian" | "dp-fedavg-gaussian" | DDG_MECHANISM => {
                let z = r.noise_multiplier;
                let event = if r.sampling_rate < 1.0 {
                    DpEvent::PoissonSampledGaussian {
                        sampling_rate: r.sampling_rate,
                        noise_multiplier: z,
                    }
                } else {
                    DpEvent::Gaussian {
                        noise_multiplier: z,
                    }
                };
                vec![(event, 1)]
            }
            other => {
                return Err(bad(format!(
                    "it is a format v1 entry of mechanism {other:?}, which this version cannot \
                     translate into DP events"
                )));
            }
        },
    };
    for (event, _) in &events {
        event
            .validate()
            .map_err(|err| bad(format!("its event {event:?} is invalid: {err}")))?;
    }
    Ok(events)
}

/// The ledger's name for the mechanism a spec runs.
pub fn mechanism_name(spec: &PrivacySpec) -> &'static str {
    match (spec.unit, spec.placement) {
        (PrivacyUnit::Record, NoisePlacement::Local) => "dp-sgd-gaussian",
        (PrivacyUnit::Partner, NoisePlacement::Local) => "dp-fedavg-gaussian",
        (_, NoisePlacement::Distributed) => DDG_MECHANISM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_z(z: f64) -> PrivacySpec {
        toml::from_str(&format!(
            "epsilon = 2.0\ndelta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = {z}\nsampling_rate = 0.02\nsteps_per_round = 20\n",
        ))
        .unwrap()
    }

    fn spec() -> PrivacySpec {
        spec_z(2.0)
    }

    #[test]
    fn partner_unit_rounds_are_recorded_under_zero_out_adjacency_and_replay() {
        let partner: PrivacySpec = toml::from_str(
            "unit = \"partner\"\nepsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = 1.0\n",
        )
        .unwrap();
        let mut book = PrivacyBook::new(partner.clone(), task("p"), None, &[]).unwrap();
        let r = book.charge(1, 0, &[("a".into(), 100)]).unwrap();
        assert_eq!(r.charged.as_ref().unwrap().adjacency, Adjacency::ZeroOut);
        let entries = vec![LedgerEntry {
            index: 0,
            prev_hash: [0; 32],
            record: r.clone(),
            hash: [0; 32],
            signature: vec![],
        }];
        let again = PrivacyBook::new(partner, task("p"), None, &entries).unwrap();
        assert!((again.spent("a").unwrap() - r.epsilon_cumulative["a"]).abs() < 1e-12);
    }

    fn task(name: &str) -> TaskId {
        TaskId {
            name: name.into(),
            hash: [7; 32],
        }
    }

    fn fake(rec: SpendRecord, i: u64) -> LedgerEntry {
        LedgerEntry {
            index: i,
            prev_hash: [0; 32],
            record: rec,
            hash: [0; 32],
            signature: vec![],
        }
    }

    #[test]
    fn charges_accumulate_and_replay_from_entries() {
        let mut book = PrivacyBook::new(spec(), task("t"), None, &[]).unwrap();
        let q1 = book.quote("a", 1000).unwrap();
        assert_eq!(q1.spent, 0.0);
        assert!(q1.fits());
        let r1 = book.charge(1, 0, &[("a".into(), 1000)]).unwrap();
        let r2 = book.charge(2, 0, &[("a".into(), 1000)]).unwrap();
        r1.validate().unwrap();
        assert!(r2.epsilon_cumulative["a"] > r1.epsilon_cumulative["a"]);
        assert!((r1.epsilon_cumulative["a"] - q1.after).abs() < 1e-12);
        let c = r1.charged.as_ref().unwrap();
        assert_eq!(
            c.events,
            vec![StoredEvent::PoissonSampledGaussian {
                sampling_rate: 0.02,
                noise_multiplier: 2.0,
                count: 20
            }]
        );
        assert_eq!(c.placement, Placement::Local);
        assert_eq!(c.adjacency, Adjacency::AddRemove);
        assert_eq!(c.task_hash, [7; 32]);
        assert_eq!(c.rng, rng_name());
        assert_eq!(c.dataset, None);
        // Rebuilding from the records gives the same spend.
        let entries = vec![fake(r1, 0), fake(r2.clone(), 1)];
        let again = PrivacyBook::new(spec(), task("t"), None, &entries).unwrap();
        assert!((again.spent("a").unwrap() - r2.epsilon_cumulative["a"]).abs() < 1e-12);
        assert!(again.notes().is_empty());
        // Another task's entries are not counted in a per-task book.
        let other = PrivacyBook::new(spec(), task("u"), None, &entries).unwrap();
        assert_eq!(other.spent("a").unwrap(), 0.0);
    }

    /// The bug this format fixes: rounds charged at z = 0.8 were re-costed with the current
    /// spec, so raising z to 2.0 made the book show a fraction of the true spend.
    #[test]
    fn replay_uses_the_stored_events_not_the_current_spec() {
        let mut book = PrivacyBook::new(spec_z(0.8), task("t"), None, &[]).unwrap();
        let mut entries = Vec::new();
        for round in 0..3 {
            let r = book.charge(round, 0, &[("a".into(), 1000)]).unwrap();
            entries.push(fake(r, round));
        }
        let true_spend = book.spent("a").unwrap();
        assert!(true_spend > 2.0, "z = 0.8 overspends the ε 2 budget");
        let reopened = PrivacyBook::new(spec_z(2.0), task("t"), None, &entries).unwrap();
        assert!((reopened.spent("a").unwrap() - true_spend).abs() < 1e-12);
        // Re-costing at z = 2.0 would have shown far less.
        let recosted = consortia_dp::epsilon_after(0.02, 2.0, 60, 1e-5).unwrap();
        assert!(recosted < true_spend / 2.0);
        assert!(matches!(
            reopened.quote("a", 1000),
            Err(BookError::Overspent { .. })
        ));
    }

    #[test]
    fn v1_entries_replay_from_their_own_fields_with_a_note() {
        let mut book = PrivacyBook::new(spec_z(0.8), task("t"), None, &[]).unwrap();
        let mut r = book.charge(1, 0, &[("a".into(), 1000)]).unwrap();
        r.charged = None; // as a v1 entry: no stored events
        let entries = vec![fake(r, 0)];
        let reopened = PrivacyBook::new(spec_z(2.0), task("t"), None, &entries).unwrap();
        let one_step = consortia_dp::epsilon_after(0.02, 0.8, 1, 1e-5).unwrap();
        assert!((reopened.spent("a").unwrap() - one_step).abs() < 1e-12);
        assert_eq!(reopened.notes().len(), 1);
        assert!(reopened.notes()[0].contains("one step per round"));
    }

    #[test]
    fn unreplayable_entries_are_refused() {
        let mut book = PrivacyBook::new(spec(), task("t"), None, &[]).unwrap();
        let r = book.charge(1, 0, &[("a".into(), 1000)]).unwrap();
        let mut replace = r.clone();
        replace.charged.as_mut().unwrap().adjacency = Adjacency::ReplaceOne;
        let err = PrivacyBook::new(spec(), task("t"), None, &[fake(replace, 4)]).unwrap_err();
        assert!(
            matches!(err, BookError::Unreplayable { index: 4, .. }),
            "{err}"
        );
        let mut unknown = r;
        unknown.charged = None;
        unknown.mechanism = "laplace".into();
        let err = PrivacyBook::new(spec(), task("t"), None, &[fake(unknown, 0)]).unwrap_err();
        assert!(err.to_string().contains("laplace"), "{err}");
    }

    #[test]
    fn a_dataset_book_counts_every_task_on_the_same_data() {
        let data = DatasetId {
            name: "customers.csv".into(),
            sha256: [1; 32],
        };
        let other = DatasetId {
            name: "suppliers.csv".into(),
            sha256: [2; 32],
        };
        let mut entries = Vec::new();
        let mut b1 =
            PrivacyBook::for_dataset(spec(), task("churn"), data.clone(), None, &[]).unwrap();
        entries.push(fake(b1.charge(1, 0, &[("a".into(), 1000)]).unwrap(), 0));
        let mut b2 =
            PrivacyBook::for_dataset(spec(), task("churn-v2"), data.clone(), None, &entries)
                .unwrap();
        let second = b2.charge(1, 0, &[("a".into(), 1000)]).unwrap();
        assert_eq!(second.dataset(), Some(&data));
        entries.push(fake(second, 1));
        let again = PrivacyBook::for_dataset(spec(), task("x"), data, None, &entries).unwrap();
        assert!((again.spent("a").unwrap() - b2.spent("a").unwrap()).abs() < 1e-12);
        assert_eq!(again.replayed_entries(), 2);
        let fresh = PrivacyBook::for_dataset(spec(), task("x"), other, None, &entries).unwrap();
        assert_eq!(fresh.spent("a").unwrap(), 0.0);
    }

    #[test]
    fn distributed_rounds_store_their_zcdp_event_and_shape() {
        let ddg = |z: f64| {
            toml::from_str::<PrivacySpec>(&format!(
                "unit = \"partner\"\nplacement = \"distributed\"\nepsilon = 5.0\ndelta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = {z}\n"
            ))
            .unwrap()
            .with_distributed_shape(41, 3, 1)
            .unwrap()
        };
        let mut book = PrivacyBook::new(ddg(1.0), task("t"), None, &[]).unwrap();
        let r = book
            .charge(1, 0, &[("a".into(), 10), ("b".into(), 20)])
            .unwrap();
        r.validate().unwrap();
        let c = r.charged.as_ref().unwrap();
        assert_eq!(c.placement, Placement::Distributed);
        assert_eq!(c.honest_contributors, Some(2));
        assert_eq!(c.dimension, Some(41));
        let expected = ddg(1.0).round_events(1).unwrap();
        assert_eq!(
            c.events,
            vec![StoredEvent::from_dp(expected[0].0, expected[0].1)]
        );
        assert!(matches!(c.events[0], StoredEvent::Zcdp { .. }));
        // Replayed under a spec with three times the noise: the stored ρ still counts.
        let reopened = PrivacyBook::new(ddg(3.0), task("t"), None, &[fake(r.clone(), 0)]).unwrap();
        for p in ["a", "b"] {
            assert!((reopened.spent(p).unwrap() - r.epsilon_cumulative[p]).abs() < 1e-12);
        }
    }

    /// An evaluation is charged as a release of its own: a v2 record of mechanism
    /// "evaluation-discrete-gaussian" storing ρ = 1/(2σ_e²), composed into the spend and
    /// replayed from the entry like a round.
    #[test]
    fn an_evaluation_is_charged_with_its_own_events() {
        use consortia_dp::EVALUATION_MECHANISM;
        let mut book = PrivacyBook::new(spec(), task("t"), None, &[]).unwrap();
        let round = book.charge(1, 0, &[("a".into(), 1000)]).unwrap();
        let before = book.spent("a").unwrap();
        let mut spec_e = spec();
        spec_e.evaluation_noise = 8.0;
        let events = spec_e.evaluation_events();
        assert_eq!(events, vec![(DpEvent::Zcdp { rho: 1.0 / 128.0 }, 1)]);
        let q = book.quote_events("a", &events).unwrap();
        assert!((q.spent - before).abs() < 1e-12 && q.after > before);
        let r = book
            .charge_events(2, 0, &[("a".into(), 1000)], &events, EVALUATION_MECHANISM)
            .unwrap();
        r.validate().unwrap();
        assert_eq!(r.mechanism, "evaluation-discrete-gaussian");
        assert_eq!(r.round, 2);
        assert!((r.noise_multiplier - 8.0).abs() < 1e-12);
        assert_eq!((r.clip_norm, r.sampling_rate), (1.0, 1.0));
        assert_eq!(r.dataset_sizes["a"], 1000);
        let c = r.charged.as_ref().unwrap();
        assert_eq!(
            c.events,
            vec![StoredEvent::Zcdp {
                rho: 1.0 / 128.0,
                count: 1
            }]
        );
        assert_eq!(
            (c.placement, c.adjacency, c.honest_contributors, c.dimension),
            (Placement::Local, Adjacency::AddRemove, None, None)
        );
        let after = book.spent("a").unwrap();
        assert!((after - q.after).abs() < 1e-12);
        assert!((r.epsilon_cumulative["a"] - after).abs() < 1e-12);
        assert!((r.epsilon_round["a"] - (after - before)).abs() < 1e-12);
        // The same as composing the round's events and ρ by hand.
        let mut by_hand = RdpAccountant::new();
        by_hand
            .compose_all(&spec().round_events(1000).unwrap())
            .unwrap();
        by_hand
            .compose(DpEvent::Zcdp { rho: 1.0 / 128.0 }, 1)
            .unwrap();
        assert!((after - by_hand.epsilon(1e-5).unwrap()).abs() < 1e-12);
        // Replayed from the entries, whatever the current σ_e.
        let entries = vec![fake(round, 0), fake(r, 1)];
        let again = PrivacyBook::new(spec(), task("t"), None, &entries).unwrap();
        assert!((again.spent("a").unwrap() - after).abs() < 1e-12);
        // An empty or invalid list of events is refused, and charges nothing.
        assert!(
            book.charge_events(3, 0, &[("a".into(), 1)], &[], EVALUATION_MECHANISM)
                .is_err()
        );
        let bad = [(DpEvent::Zcdp { rho: -1.0 }, 1)];
        assert!(
            book.charge_events(3, 0, &[("a".into(), 1)], &bad, EVALUATION_MECHANISM)
                .is_err()
        );
        assert!((book.spent("a").unwrap() - after).abs() < 1e-12);
    }

    #[test]
    fn a_smaller_own_budget_is_reached_sooner() {
        let own = Budget {
            epsilon: 0.5,
            delta: 1e-5,
        };
        let mut book = PrivacyBook::new(spec(), task("t"), Some(own), &[]).unwrap();
        let mut rounds = 0;
        while book.quote("a", 1000).unwrap().fits() {
            book.charge(rounds, 0, &[("a".into(), 1000)]).unwrap();
            rounds += 1;
            assert!(rounds < 1000);
        }
        assert!(rounds >= 1);
        assert!(book.spent("a").unwrap() <= 0.5);
    }

    #[test]
    fn an_overspending_round_is_still_charged() {
        let own = Budget {
            epsilon: 0.01,
            delta: 1e-5,
        };
        let mut book = PrivacyBook::new(spec(), task("t"), Some(own), &[]).unwrap();
        assert!(!book.quote("a", 1000).unwrap().fits());
        let r = book.charge(1, 0, &[("a".into(), 1000)]).unwrap();
        assert!(r.epsilon_cumulative["a"] > 0.01);
        assert!((book.spent("a").unwrap() - r.epsilon_cumulative["a"]).abs() < 1e-12);
        assert!(matches!(
            book.quote("a", 1000),
            Err(BookError::Overspent { .. })
        ));
    }
}
