//! Partner selection: who is asked to take part in a round. The server
//! strategy chooses among the connected partners
//! ([`Strategy::configure_round`]); under secure aggregation only key
//! holders take part, and no training round starts while one is away;
//! under `[privacy]` partners whose budget the round would exceed are left
//! out, and every partner asked is charged, durably, before it is asked.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use consortia_model::strategy::{Selection, Strategy};

use crate::CoordinatorError;
use crate::accounting::Accounting;
use crate::hub::Hub;
use crate::report::now_ms;
use crate::round::RoundKind;
use crate::secure::FederationKey;

/// The `reason` of a partner left out for its privacy budget: the code of a budget
/// decline, the same refusal made by the coordinator.
const BUDGET: &str = "budget";

/// What the next round releases about the partners asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Releases {
    /// A training round (an update).
    pub train: bool,
    /// An evaluation of the model going in.
    pub evaluate: bool,
}

impl Releases {
    /// The kind of round that releases these.
    pub fn kind(&self) -> RoundKind {
        if self.train {
            RoundKind::Train
        } else {
            RoundKind::Evaluate
        }
    }
}

/// The selection's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Ask `selected`; the round starts only if at least `needed` are.
    Ask {
        /// Partners chosen.
        selected: BTreeSet<String>,
        /// The fewest partners the round can start with.
        needed: usize,
    },
    /// A key holder is away and the round's sum could not be opened
    /// without it: wait (this attempt does not count).
    KeyHoldersAway,
    /// No partner can afford the final evaluation: the task ends without it.
    NoFinalEvaluation,
}

/// Chooses each round's partners; counts the attempts at a round (the
/// strategy's sampling seed) and rate-limits the warning about absent key holders.
#[derive(Debug)]
pub struct Selector {
    attempt: u64,
    absent_log: Instant,
}

impl Default for Selector {
    fn default() -> Self {
        Selector {
            attempt: 0,
            absent_log: Instant::now() - Duration::from_secs(60),
        }
    }
}

impl Selector {
    /// Chooses the partners of `round` (a new attempt at it); stops the task
    /// (an error) when fewer than the minimum can afford a training round.
    pub fn choose(
        &mut self,
        hub: &Hub,
        strategy: &dyn Strategy,
        key: Option<&FederationKey>,
        accounting: Option<&mut Accounting>,
        round: u64,
        releases: Releases,
    ) -> Result<Choice, CoordinatorError> {
        self.attempt += 1;
        let selection = Selection {
            round,
            attempt: self.attempt,
            seed: hub.task.seed,
            sample_fraction: hub.task.sample_fraction,
            min_partners: hub.task.min_partners as usize,
        };
        let choice = choose(
            hub,
            strategy,
            key,
            accounting,
            &selection,
            releases,
            &mut self.absent_log,
        );
        if matches!(choice, Ok(Choice::KeyHoldersAway)) {
            self.retry();
        }
        choice
    }

    /// The attempt just chosen asked no one: it does not count.
    pub fn retry(&mut self) {
        self.attempt -= 1;
    }
}

/// Chooses the partners of the round described by `selection`; stops the
/// task (an error) when fewer than the minimum can afford a training round.
/// `absent_log` rate-limits the warning about absent key holders.
fn choose(
    hub: &Hub,
    strategy: &dyn Strategy,
    key: Option<&FederationKey>,
    accounting: Option<&mut Accounting>,
    selection: &Selection,
    releases: Releases,
    absent_log: &mut Instant,
) -> Result<Choice, CoordinatorError> {
    let round = selection.round;
    let min = selection.min_partners;
    let mut selected = strategy
        .configure_round(&hub.connected(), selection)
        .partners;
    if let Some(key) = key {
        // Only key holders contribute: the sum's noise budget counts them.
        selected.retain(|p| key.party(p).is_some());
        // A sum can only be opened by every key holder together (N-of-N), or
        // by `key_threshold` of them: no round starts (and no privacy budget
        // is spent) while too few are connected.
        let connected = hub.connected();
        let absent: Vec<&String> = key
            .committee
            .iter()
            .filter(|p| !connected.contains(p))
            .collect();
        // t-of-N: a sum opens with any t holders.
        let enough = hub
            .task
            .key_threshold
            .is_some_and(|t| key.committee.len() - absent.len() >= t as usize);
        if releases.train && !absent.is_empty() && !enough {
            if absent_log.elapsed() >= Duration::from_secs(10) {
                let waits_for = match hub.task.key_threshold {
                    Some(t) => format!("at least {t} key holders connected"),
                    None => "every key holder".to_string(),
                };
                tracing::warn!(
                    round,
                    absent = ?absent,
                    "round {round} waits for {waits_for}: the sum cannot be decrypted without them. \
                     To go on without a partner that is gone for good, stop the coordinator and run \
                     `consortia rekey --state <dir> --without <partner>`"
                );
                *absent_log = Instant::now();
            }
            return Ok(Choice::KeyHoldersAway);
        }
    }
    // The final evaluation of a private task goes ahead with the partners that can
    // afford it (each report is private on its own; min_partners is about sums).
    let mut needed = min;
    if releases.train {
        leave_out_over_budget(
            hub,
            &mut selected,
            accounting,
            min,
            round,
            releases.evaluate,
        )?;
    } else if let Some(acc) = accounting {
        let reasons = leave_out_unaffordable_evaluation(hub, &mut selected, acc, round);
        if selected.is_empty() {
            tracing::warn!(
                reasons = ?reasons,
                "no partner can afford the final evaluation within its privacy budget; the task ends without it"
            );
            return Ok(Choice::NoFinalEvaluation);
        }
        needed = 1;
    }
    Ok(Choice::Ask { selected, needed })
}

/// Leaves out of a training round every partner whose budget the round would
/// exceed (by the coordinator's book or by the partner's own word); stops the
/// task when fewer than the minimum remain.
pub fn leave_out_over_budget(
    hub: &Hub,
    selected: &mut BTreeSet<String>,
    mut accounting: Option<&mut Accounting>,
    min: usize,
    round: u64,
    evaluate: bool,
) -> Result<(), CoordinatorError> {
    let mut reasons = Vec::new();
    let declared = hub.exhausted();
    let rows = hub.rows();
    selected.retain(|p| {
        if let Some(why) = declared.get(p) {
            reasons.push(format!("{p} declined: {why}"));
            return false;
        }
        if let Some(acc) = accounting.as_deref_mut()
            && let Err(why) = acc.admits_round(p, rows.get(p).copied().unwrap_or(1), true, evaluate)
        {
            tracing::warn!(partner = %p, round, reason = BUDGET, "left out of the round: {why}");
            reasons.push(format!("{p}: {why}"));
            return false;
        }
        true
    });
    if selected.len() < min && !reasons.is_empty() {
        return Err(CoordinatorError::Stopped(format!(
            "only {} partner(s) can still afford round {round} within their privacy budgets, fewer than min_partners = {min} ({})",
            selected.len(),
            reasons.join("; ")
        )));
    }
    Ok(())
}

/// Leaves out of the final evaluation of a private task every partner that
/// declared its budget exhausted or whose evaluation the coordinator's book
/// cannot afford; returns why each was left out.
pub fn leave_out_unaffordable_evaluation(
    hub: &Hub,
    selected: &mut BTreeSet<String>,
    accounting: &mut Accounting,
    round: u64,
) -> Vec<String> {
    let mut reasons = Vec::new();
    let declared = hub.exhausted();
    let rows = hub.rows();
    selected.retain(|p| {
        if let Some(why) = declared.get(p) {
            reasons.push(format!("{p} declined: {why}"));
            return false;
        }
        if let Err(why) = accounting.admits_round(p, rows.get(p).copied().unwrap_or(1), false, true)
        {
            tracing::warn!(partner = %p, round, reason = BUDGET, "left out of the final evaluation: {why}");
            reasons.push(format!("{p}: {why}"));
            return false;
        }
        true
    });
    reasons
}

/// Write-ahead: every partner asked to train is charged, durably, before
/// the round starts — a partner that then declines or is late is
/// over-counted, never under-counted. The same for the evaluation of the
/// model going in: every partner asked to evaluate it is charged before it
/// is asked (after the training charge, the order in which partners charge
/// their own ledgers); partners in `kept` (their encrypted update was kept
/// from before a restart) are not asked again.
pub fn charge(
    accounting: &mut Accounting,
    hub: &Hub,
    round: u64,
    releases: Releases,
    selected: &BTreeSet<String>,
    kept: &BTreeSet<String>,
) -> Result<(), CoordinatorError> {
    if releases.train {
        let rows = hub.rows();
        let charged: Vec<(String, u64)> = selected
            .iter()
            .map(|p| (p.clone(), rows.get(p).copied().unwrap_or(1)))
            .collect();
        accounting.record_round(round, now_ms(), &charged)?;
    }
    if releases.evaluate {
        let rows = hub.rows();
        let charged: Vec<(String, u64)> = selected
            .iter()
            .filter(|p| !kept.contains(*p))
            .map(|p| (p.clone(), rows.get(p).copied().unwrap_or(1)))
            .collect();
        if !charged.is_empty() {
            accounting.record_evaluation(round, now_ms(), &charged)?;
        }
    }
    Ok(())
}
