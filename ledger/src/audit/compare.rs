//! Reconciliation of a partner's own ledger against the coordinator's, for that partner.

use std::collections::BTreeMap;
use std::fmt;

use crate::entry::{LedgerEntry, StoredEvent};

/// Relative tolerance under which two ε or parameter values count as equal.
pub const RELATIVE_TOLERANCE: f64 = 1e-9;

/// One way in which a partner's ledger and the coordinator's disagree about that partner.
#[derive(Clone, Debug, PartialEq)]
pub enum Disagreement {
    /// A round the partner took part in according to its own ledger only.
    OnlyInPartner {
        /// The task.
        task: String,
        /// The round.
        round: u64,
    },
    /// A round the partner took part in according to the coordinator's ledger only.
    OnlyInCoordinator {
        /// The task.
        task: String,
        /// The round.
        round: u64,
    },
    /// The ε the partner spent in a round differs.
    EpsilonRound {
        /// The task.
        task: String,
        /// The round.
        round: u64,
        /// Value in the partner's ledger.
        partner_value: Option<f64>,
        /// Value in the coordinator's ledger.
        coordinator_value: Option<f64>,
    },
    /// A privacy parameter of a round differs: `clip_norm`, `noise_multiplier`,
    /// `sampling_rate`, `dataset_size` (the partner's), `delta`, `mechanism`, `privacy_unit` or
    /// `budget_epsilon` (the partner's); and when both entries are of format v2, `events`,
    /// `placement`, `adjacency`, `honest_contributors`, `dimension` or `task_hash`. (`rng` and
    /// `dataset` are each writer's own and are not compared.)
    Parameter {
        /// The task.
        task: String,
        /// The round.
        round: u64,
        /// Which parameter.
        name: &'static str,
        /// Value in the partner's ledger.
        partner_value: String,
        /// Value in the coordinator's ledger.
        coordinator_value: String,
    },
    /// The cumulative ε recorded for the partner after a round differs.
    CumulativeAtRound {
        /// The task.
        task: String,
        /// The round.
        round: u64,
        /// Value in the partner's ledger.
        partner_value: Option<f64>,
        /// Value in the coordinator's ledger.
        coordinator_value: Option<f64>,
    },
    /// The latest cumulative ε each ledger records for the partner differs (0 when none).
    FinalCumulative {
        /// Value in the partner's ledger.
        partner_value: f64,
        /// Value in the coordinator's ledger.
        coordinator_value: f64,
    },
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OnlyInPartner { task, round } => write!(
                f,
                "task {task:?} round {round}: in the partner's ledger only"
            ),
            Self::OnlyInCoordinator { task, round } => write!(
                f,
                "task {task:?} round {round}: in the coordinator's ledger only"
            ),
            Self::EpsilonRound {
                task,
                round,
                partner_value,
                coordinator_value,
            } => write!(
                f,
                "task {task:?} round {round}: ε spent {} (partner) vs {} (coordinator)",
                opt(partner_value),
                opt(coordinator_value)
            ),
            Self::Parameter {
                task,
                round,
                name,
                partner_value,
                coordinator_value,
            } => write!(
                f,
                "task {task:?} round {round}: {name} {partner_value} (partner) vs \
                 {coordinator_value} (coordinator)"
            ),
            Self::CumulativeAtRound {
                task,
                round,
                partner_value,
                coordinator_value,
            } => write!(
                f,
                "task {task:?} round {round}: cumulative ε {} (partner) vs {} (coordinator)",
                opt(partner_value),
                opt(coordinator_value)
            ),
            Self::FinalCumulative {
                partner_value,
                coordinator_value,
            } => write!(
                f,
                "latest cumulative ε {partner_value} (partner) vs {coordinator_value} \
                 (coordinator)"
            ),
        }
    }
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "absent".to_string(), T::to_string)
}

/// Whether `a` and `b` agree within [`RELATIVE_TOLERANCE`] of the larger magnitude.
pub fn approx_eq(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= RELATIVE_TOLERANCE * a.abs().max(b.abs())
}

fn opt_approx_eq(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => approx_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Whether two event lists agree: same kinds and counts in the same order, figures within
/// [`RELATIVE_TOLERANCE`].
fn events_approx_eq(a: &[StoredEvent], b: &[StoredEvent]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (*x, *y) {
            (
                StoredEvent::Gaussian {
                    noise_multiplier: za,
                    count: na,
                },
                StoredEvent::Gaussian {
                    noise_multiplier: zb,
                    count: nb,
                },
            ) => na == nb && approx_eq(za, zb),
            (
                StoredEvent::PoissonSampledGaussian {
                    sampling_rate: qa,
                    noise_multiplier: za,
                    count: na,
                },
                StoredEvent::PoissonSampledGaussian {
                    sampling_rate: qb,
                    noise_multiplier: zb,
                    count: nb,
                },
            ) => na == nb && approx_eq(qa, qb) && approx_eq(za, zb),
            (
                StoredEvent::Zcdp { rho: ra, count: na },
                StoredEvent::Zcdp { rho: rb, count: nb },
            ) => na == nb && approx_eq(ra, rb),
            _ => false,
        })
}

/// Reconciles `partner`'s own ledger against the coordinator's, as far as `partner` is
/// concerned.
///
/// Only entries listing `partner` among the participants are compared. Rounds are matched by
/// (task, round); if a round was recorded more than once, the k-th record on one side is
/// matched with the k-th on the other. For each matched pair: ε spent by `partner`, the
/// parameters named in [`Disagreement::Parameter`], and the cumulative ε recorded for
/// `partner`. Finally the latest cumulative ε each side records for `partner` (in any entry).
/// Floats agree within a relative tolerance of [`RELATIVE_TOLERANCE`]. Output is ordered by
/// task, round, then the order of the checks above.
///
/// Verify both ledgers' integrity first ([`super::verify`]): this compares contents only.
pub fn compare(
    partner: &str,
    partner_entries: &[LedgerEntry],
    coordinator_entries: &[LedgerEntry],
) -> Vec<Disagreement> {
    type Side<'a> = Vec<&'a LedgerEntry>;
    let mut rounds: BTreeMap<(&str, u64), (Side<'_>, Side<'_>)> = BTreeMap::new();
    let involves = |e: &&LedgerEntry| e.record.participants.iter().any(|p| p == partner);
    for e in partner_entries.iter().filter(involves) {
        rounds
            .entry((e.record.task.as_str(), e.record.round))
            .or_default()
            .0
            .push(e);
    }
    for e in coordinator_entries.iter().filter(involves) {
        rounds
            .entry((e.record.task.as_str(), e.record.round))
            .or_default()
            .1
            .push(e);
    }

    let mut out = Vec::new();
    for ((task, round), (mine, theirs)) in &rounds {
        let (task, round) = (task.to_string(), *round);
        for k in 0..mine.len().max(theirs.len()) {
            match (mine.get(k), theirs.get(k)) {
                (Some(a), Some(b)) => compare_round(partner, &task, round, a, b, &mut out),
                (Some(_), None) => out.push(Disagreement::OnlyInPartner {
                    task: task.clone(),
                    round,
                }),
                (None, Some(_)) => out.push(Disagreement::OnlyInCoordinator {
                    task: task.clone(),
                    round,
                }),
                (None, None) => {}
            }
        }
    }

    let latest = |entries: &[LedgerEntry]| {
        entries
            .iter()
            .rev()
            .find_map(|e| e.record.epsilon_cumulative.get(partner).copied())
            .unwrap_or(0.0)
    };
    let (partner_value, coordinator_value) = (latest(partner_entries), latest(coordinator_entries));
    if !approx_eq(partner_value, coordinator_value) {
        out.push(Disagreement::FinalCumulative {
            partner_value,
            coordinator_value,
        });
    }
    out
}

fn compare_round(
    partner: &str,
    task: &str,
    round: u64,
    a: &LedgerEntry,
    b: &LedgerEntry,
    out: &mut Vec<Disagreement>,
) {
    let (ra, rb) = (&a.record, &b.record);
    let eps_a = ra.epsilon_round.get(partner).copied();
    let eps_b = rb.epsilon_round.get(partner).copied();
    if !opt_approx_eq(eps_a, eps_b) {
        out.push(Disagreement::EpsilonRound {
            task: task.to_string(),
            round,
            partner_value: eps_a,
            coordinator_value: eps_b,
        });
    }

    let mut param = |name: &'static str, equal: bool, pa: String, pb: String| {
        if !equal {
            out.push(Disagreement::Parameter {
                task: task.to_string(),
                round,
                name,
                partner_value: pa,
                coordinator_value: pb,
            });
        }
    };
    for (name, x, y) in [
        ("clip_norm", ra.clip_norm, rb.clip_norm),
        ("noise_multiplier", ra.noise_multiplier, rb.noise_multiplier),
        ("sampling_rate", ra.sampling_rate, rb.sampling_rate),
    ] {
        param(name, approx_eq(x, y), x.to_string(), y.to_string());
    }
    let (na, nb) = (
        ra.dataset_sizes.get(partner).copied(),
        rb.dataset_sizes.get(partner).copied(),
    );
    param("dataset_size", na == nb, opt(&na), opt(&nb));
    param(
        "delta",
        approx_eq(ra.delta, rb.delta),
        ra.delta.to_string(),
        rb.delta.to_string(),
    );
    param(
        "mechanism",
        ra.mechanism == rb.mechanism,
        ra.mechanism.clone(),
        rb.mechanism.clone(),
    );
    param(
        "privacy_unit",
        ra.privacy_unit == rb.privacy_unit,
        ra.privacy_unit.clone(),
        rb.privacy_unit.clone(),
    );
    let (ba, bb) = (
        ra.budget_epsilon.get(partner).copied(),
        rb.budget_epsilon.get(partner).copied(),
    );
    param("budget_epsilon", opt_approx_eq(ba, bb), opt(&ba), opt(&bb));
    if let (Some(ca), Some(cb)) = (&ra.charged, &rb.charged) {
        let events = |evs: &[StoredEvent]| {
            evs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        param(
            "events",
            events_approx_eq(&ca.events, &cb.events),
            events(&ca.events),
            events(&cb.events),
        );
        param(
            "placement",
            ca.placement == cb.placement,
            ca.placement.as_str().into(),
            cb.placement.as_str().into(),
        );
        param(
            "adjacency",
            ca.adjacency == cb.adjacency,
            ca.adjacency.as_str().into(),
            cb.adjacency.as_str().into(),
        );
        param(
            "honest_contributors",
            ca.honest_contributors == cb.honest_contributors,
            opt(&ca.honest_contributors),
            opt(&cb.honest_contributors),
        );
        param(
            "dimension",
            ca.dimension == cb.dimension,
            opt(&ca.dimension),
            opt(&cb.dimension),
        );
        param(
            "task_hash",
            ca.task_hash == cb.task_hash,
            hex::encode(ca.task_hash),
            hex::encode(cb.task_hash),
        );
    }

    let cum_a = ra.epsilon_cumulative.get(partner).copied();
    let cum_b = rb.epsilon_cumulative.get(partner).copied();
    if !opt_approx_eq(cum_a, cum_b) {
        out.push(Disagreement::CumulativeAtRound {
            task: task.to_string(),
            round,
            partner_value: cum_a,
            coordinator_value: cum_b,
        });
    }
}
