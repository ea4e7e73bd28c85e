//! Privacy budgets: validation, per-partner spending, and the plan check at task creation.

use serde::{Deserialize, Serialize};

use super::accountant::{DpEvent, RdpAccountant};
use super::config::PrivacySpec;
use super::error::DpError;

/// An (ε, δ) budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// ε > 0.
    pub epsilon: f64,
    /// δ ∈ (0, 1).
    pub delta: f64,
}

impl Budget {
    /// A validated budget.
    pub fn new(epsilon: f64, delta: f64) -> Result<Self, DpError> {
        let b = Self { epsilon, delta };
        b.validate()?;
        Ok(b)
    }

    /// ε finite and > 0, δ in (0, 1).
    pub fn validate(&self) -> Result<(), DpError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(DpError::InvalidEpsilon(self.epsilon));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(DpError::InvalidDelta(self.delta));
        }
        Ok(())
    }

    /// Also requires δ < 1/rows of the smallest partner: a δ of order 1/n permits mechanisms
    /// that publish a whole record (Dwork & Roth 2014, §2.3: "δ less than the inverse of any
    /// polynomial in the size of the database").
    pub fn validate_for_rows(&self, smallest_partner_rows: usize) -> Result<(), DpError> {
        self.validate()?;
        if smallest_partner_rows == 0 {
            return Err(DpError::InvalidParameter {
                name: "rows of the smallest partner",
                value: "0".into(),
                hint: "every partner needs at least one row",
            });
        }
        let inverse_rows = 1.0 / smallest_partner_rows as f64;
        if self.delta >= inverse_rows {
            return Err(DpError::DeltaTooLarge {
                delta: self.delta,
                rows: smallest_partner_rows,
                inverse_rows,
                suggested: inverse_rows / 10.0,
            });
        }
        Ok(())
    }
}

/// One partner's budget and the events it has spent.
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerBudget {
    budget: Budget,
    accountant: RdpAccountant,
}

impl PartnerBudget {
    /// An unspent budget, accounted with the RDP accountant (the only
    /// [`AccountantKind`](super::accountant::AccountantKind)).
    pub fn new(budget: Budget) -> Result<Self, DpError> {
        budget.validate()?;
        Ok(Self {
            budget,
            accountant: RdpAccountant::new(),
        })
    }

    /// The budget.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Events spent so far (the ledger of mechanism parameters).
    pub fn ledger(&self) -> &[(DpEvent, u64)] {
        self.accountant.ledger()
    }

    /// The accountant holding what was spent.
    pub fn accountant(&self) -> &RdpAccountant {
        &self.accountant
    }

    /// ε spent so far at the budget's δ.
    pub fn spent_epsilon(&self) -> Result<f64, DpError> {
        if self.accountant.ledger().is_empty() {
            return Ok(0.0);
        }
        self.accountant.epsilon(self.budget.delta)
    }

    /// ε at the budget's δ if `next` were spent too.
    pub fn cost_if(&self, next: &[(DpEvent, u64)]) -> Result<f64, DpError> {
        let mut acc = self.accountant.clone();
        acc.compose_all(next)?;
        if acc.ledger().is_empty() {
            return Ok(0.0);
        }
        acc.epsilon(self.budget.delta)
    }

    /// Whether spending `next` would take ε over the budget.
    pub fn would_exceed(&self, next: &[(DpEvent, u64)]) -> Result<bool, DpError> {
        Ok(self.cost_if(next)? > self.budget.epsilon)
    }

    /// Spends `next` if it fits, returning ε after; refuses with
    /// [`DpError::BudgetExceeded`] (and spends nothing) otherwise.
    pub fn spend(&mut self, next: &[(DpEvent, u64)]) -> Result<f64, DpError> {
        let after = self.cost_if(next)?;
        if after > self.budget.epsilon {
            return Err(DpError::BudgetExceeded {
                epsilon_after: after,
                epsilon_budget: self.budget.epsilon,
                delta: self.budget.delta,
            });
        }
        self.accountant.compose_all(next)?;
        Ok(after)
    }
}

/// ε at the spec's δ after `planned_rounds` rounds of `spec.round_events(partner_rows)`
/// (local placement; call it with the smallest partner's rows, which has the largest
/// per-record cost when sampling rates are equal).
pub fn plan_epsilon(
    spec: &PrivacySpec,
    partner_rows: usize,
    planned_rounds: u64,
) -> Result<f64, DpError> {
    let events = spec.round_events(partner_rows)?;
    plan_epsilon_with(spec, &events, planned_rounds)
}

/// ε at the spec's δ after `planned_rounds` rounds each costing `round_events` (e.g.
/// `spec.round_events_distributed(&ddg)` for distributed placement). Training rounds only: see
/// [`task_plan_epsilon`] for the whole task, evaluations included.
pub fn plan_epsilon_with(
    spec: &PrivacySpec,
    round_events: &[(DpEvent, u64)],
    planned_rounds: u64,
) -> Result<f64, DpError> {
    spec.validate()?;
    let per_round = per_round_accountant(round_events)?;
    if planned_rounds == 0 || per_round.ledger().is_empty() {
        return Ok(0.0);
    }
    per_round.repeated(planned_rounds).epsilon(spec.delta)
}

/// Refuses a plan of training rounds that cannot finish within budget: returns the ε that
/// `planned_rounds` rounds of `round_events` reach, or [`DpError::PlanExceedsBudget`] carrying
/// that ε and how many rounds would fit. Task creation uses [`check_task_plan`], which also
/// counts the evaluations.
pub fn check_plan(
    spec: &PrivacySpec,
    round_events: &[(DpEvent, u64)],
    planned_rounds: u64,
) -> Result<f64, DpError> {
    let reached = plan_epsilon_with(spec, round_events, planned_rounds)?;
    if reached <= spec.epsilon {
        return Ok(reached);
    }
    let per_round = per_round_accountant(round_events)?;
    let affordable = largest_affordable(planned_rounds, |rounds| {
        Ok(per_round.repeated(rounds).epsilon(spec.delta)? <= spec.epsilon)
    })?;
    Err(exceeds(spec, planned_rounds, reached, affordable))
}

/// The largest round count below `planned_rounds` for which `fits` holds,
/// by binary search (ε grows with the number of rounds); 0 when none does.
fn largest_affordable(
    planned_rounds: u64,
    fits: impl Fn(u64) -> Result<bool, DpError>,
) -> Result<u64, DpError> {
    let (mut lo, mut hi) = (0u64, planned_rounds);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

fn exceeds(spec: &PrivacySpec, planned_rounds: u64, reached: f64, affordable: u64) -> DpError {
    DpError::PlanExceedsBudget {
        rounds: planned_rounds,
        epsilon_reached: reached,
        epsilon_budget: spec.epsilon,
        delta: spec.delta,
        affordable_rounds: affordable,
    }
}

/// ε at the spec's δ after the whole task: `planned_rounds` rounds of `round_events`, the
/// feature statistics ([`PrivacySpec::statistics_events`], once) and the evaluations the task
/// releases ([`PrivacySpec::planned_evaluations`], each
/// [`PrivacySpec::evaluation_events`]). This is what a partner's budget must cover; [`plan_epsilon_with`]
/// counts the training rounds alone.
pub fn task_plan_epsilon(
    spec: &PrivacySpec,
    round_events: &[(DpEvent, u64)],
    planned_rounds: u64,
) -> Result<f64, DpError> {
    spec.validate()?;
    let acc = task_accountant(spec, round_events, planned_rounds)?;
    if acc.ledger().is_empty() {
        return Ok(0.0);
    }
    acc.epsilon(spec.delta)
}

/// [`check_plan`] for the whole task, evaluations included ([`task_plan_epsilon`]): returns the
/// ε the task reaches, or [`DpError::PlanExceedsBudget`] with that ε and the largest number of
/// rounds that fits together with its evaluations.
pub fn check_task_plan(
    spec: &PrivacySpec,
    round_events: &[(DpEvent, u64)],
    planned_rounds: u64,
) -> Result<f64, DpError> {
    let reached = task_plan_epsilon(spec, round_events, planned_rounds)?;
    if reached <= spec.epsilon {
        return Ok(reached);
    }
    // Evaluations grow with the rounds too; 0 when even the final evaluation
    // alone does not fit.
    let affordable = largest_affordable(planned_rounds, |rounds| {
        let acc = task_accountant(spec, round_events, rounds)?;
        Ok(acc.ledger().is_empty() || acc.epsilon(spec.delta)? <= spec.epsilon)
    })?;
    Err(exceeds(spec, planned_rounds, reached, affordable))
}

/// `planned_rounds` rounds of `round_events`, the task's release of feature statistics and its
/// planned evaluations, composed.
fn task_accountant(
    spec: &PrivacySpec,
    round_events: &[(DpEvent, u64)],
    planned_rounds: u64,
) -> Result<RdpAccountant, DpError> {
    let mut acc = if planned_rounds == 0 {
        RdpAccountant::new()
    } else {
        per_round_accountant(round_events)?.repeated(planned_rounds)
    };
    // The task's one release of feature statistics (none under the partner unit).
    for (event, count) in spec.statistics_events() {
        acc.compose(event, count)?;
    }
    let evaluations = spec.planned_evaluations(planned_rounds);
    if evaluations > 0 {
        for (event, count) in spec.evaluation_events() {
            acc.compose(event, count.saturating_mul(evaluations))?;
        }
    }
    Ok(acc)
}

fn per_round_accountant(round_events: &[(DpEvent, u64)]) -> Result<RdpAccountant, DpError> {
    let mut acc = RdpAccountant::new();
    acc.compose_all(round_events)?;
    Ok(acc)
}
