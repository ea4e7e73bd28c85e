//! consortia-dp: the differential-privacy mathematics — mechanisms with their privacy maps, the
//! accountant and budgets. Pure computation: no network, no storage, and it depends on no crate
//! of ours.
//!
//! Differential privacy: clipping and noise for each partner's update, the distributed discrete
//! Gaussian for noise shared across partners, and the accountant that turns the rounds into
//! (ε, δ) per partner budget.
//!
//! Adjacency throughout is add/remove of one privacy unit (`dp_accounting`'s
//! `ADD_OR_REMOVE_ONE`): one record for [`PrivacyUnit::Record`], one partner's whole
//! contribution for [`PrivacyUnit::Partner`]. Under that adjacency a sum of contributions clipped
//! to L2 norm C has sensitivity C (replace-one adjacency would double it to 2C); every mechanism
//! states its privacy map next to its formula, and the accountant composes exactly those maps.
//!
//! All noise is drawn through OpenDP's samplers. With the crate feature `secure-rng` they read
//! OpenSSL's `RAND_priv_bytes`; without it (tests, development) OpenDP falls back to rand 0.7's
//! OS-seeded ChaCha `ThreadRng`, which OpenDP does not vouch for. Release builds of the partner
//! agents (client) and coordinator must enable `secure-rng`; tests run without it because the
//! vendored OpenSSL build takes minutes.
//!
//! # Features
//!
//! * `mechanisms` (default): everything that draws noise — the Gaussian and discrete Gaussian
//!   mechanisms, Poisson subsampling, the DDG client encoding and the noisy evaluation and
//!   statistics releases — on OpenDP's samplers. Without it only the accounting compiles (privacy
//!   specs, budgets, the accountant, events and their privacy maps, the DDG parameters and
//!   rotation), and neither OpenDP nor dashu is built: `consortia-model` and `consortia-ledger`
//!   use the crate that way.
//! * `secure-rng` (implies `mechanisms`): OpenDP draws from OpenSSL (above).

pub mod accountant;
pub mod budget;
mod cdp;
pub mod config;
pub mod ddg;
pub mod error;
pub mod mechanism;
pub mod release;
mod special;

pub use accountant::{
    AccountantKind, DpEvent, RdpAccountant, compute_delta, compute_epsilon, default_orders,
    epsilon_after, zcdp_delta, zcdp_epsilon,
};
pub use budget::{
    Budget, PartnerBudget, check_plan, check_task_plan, plan_epsilon, plan_epsilon_with,
    task_plan_epsilon,
};
pub use config::{DDG_SCALE_BITS, DistributedShape, PrivacySpec};
pub use ddg::{DdgParams, ddg_round_rho};
pub use error::DpError;
pub use mechanism::{NoisePlacement, PrivacyUnit, clip_l2};
pub use release::{
    BOUNDED_SUM_GRID, BoundedSums, DP_SCORE_BINS, EVALUATION_MECHANISM, NoisyStatistics,
    STATISTICS_MECHANISM, evaluation_event, planned_evaluations, statistics_event,
    statistics_sensitivity,
};
#[cfg(feature = "mechanisms")]
pub use release::{noisy_bounded_sums, noisy_histograms, noisy_statistics};

/// Whether this build draws differential-privacy noise from OpenSSL (the
/// crate feature `secure-rng`). Partners refuse private tasks in builds
/// without it unless their policy allows it.
pub fn secure_rng() -> bool {
    cfg!(feature = "secure-rng")
}
