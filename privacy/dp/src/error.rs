//! Errors of the differential-privacy module.

use thiserror::Error;

/// Everything that can go wrong while configuring, sampling or accounting differential privacy.
///
/// Every message names the offending figure and says what to change.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum DpError {
    /// ε of a budget is not a positive finite number.
    #[error("privacy budget epsilon = {0} is invalid: set `epsilon` to a finite number > 0")]
    InvalidEpsilon(f64),
    /// δ of a budget is not in (0, 1).
    #[error("privacy budget delta = {0} is invalid: set `delta` to a number in (0, 1), e.g. 1e-6")]
    InvalidDelta(f64),
    /// δ is not much smaller than one record in the smallest partner.
    #[error(
        "delta = {delta} is not below 1/rows = 1/{rows} = {inverse_rows:e} of the smallest partner: \
         such a delta allows releasing a whole record; set `delta` below {inverse_rows:e} (e.g. {suggested:e})"
    )]
    DeltaTooLarge {
        /// The configured δ.
        delta: f64,
        /// Rows of the smallest partner.
        rows: usize,
        /// 1 / rows.
        inverse_rows: f64,
        /// A suggested δ (1 / (10·rows)).
        suggested: f64,
    },
    /// The clipping norm is not a positive finite number.
    #[error("clip norm = {0} is invalid: set `clip_norm` to a finite number > 0")]
    InvalidClipNorm(f64),
    /// The noise multiplier is not a positive finite number.
    #[error(
        "noise multiplier = {0} is invalid: set `noise_multiplier` to a finite number > 0 \
         (the noise standard deviation divided by the clip norm)"
    )]
    InvalidNoiseMultiplier(f64),
    /// The sampling rate is outside (0, 1].
    #[error("sampling rate q = {0} is invalid: set `sampling_rate` to a number in (0, 1]")]
    InvalidSamplingRate(f64),
    /// A zCDP parameter ρ is negative or not finite.
    #[error("zCDP rho = {0} is invalid: rho must be a finite number >= 0")]
    InvalidRho(f64),
    /// A generic parameter is out of its range.
    #[error("{name} = {value} is invalid: {hint}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// Offending value (as text, to keep integers and floats alike).
        value: String,
        /// What to change.
        hint: &'static str,
    },
    /// Vectors whose lengths must agree do not.
    #[error(
        "length mismatch: expected {expected} values, got {got}; pass vectors of the same dimension"
    )]
    LengthMismatch {
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A value to be noised or clipped is NaN or infinite.
    #[error(
        "value at index {index} is not finite ({value}); remove NaN/inf from the update before privatising it"
    )]
    NonFinite {
        /// Index of the value.
        index: usize,
        /// The value.
        value: f64,
    },
    /// The configuration cannot finish its planned rounds within budget.
    #[error(
        "planned {rounds} rounds would spend epsilon = {epsilon_reached:.4} (at delta = {delta:e}) \
         but the budget is epsilon = {epsilon_budget}: raise `noise_multiplier`, lower `sampling_rate` \
         or plan fewer rounds (at most {affordable_rounds} fit)"
    )]
    PlanExceedsBudget {
        /// Planned rounds.
        rounds: u64,
        /// ε the plan reaches.
        epsilon_reached: f64,
        /// ε of the budget.
        epsilon_budget: f64,
        /// δ of the budget.
        delta: f64,
        /// How many rounds would fit.
        affordable_rounds: u64,
    },
    /// Spending the next round would exceed the budget.
    #[error(
        "the next round would bring epsilon to {epsilon_after:.4} (at delta = {delta:e}), over the budget \
         epsilon = {epsilon_budget}; stop training or approve a larger budget"
    )]
    BudgetExceeded {
        /// ε after the round.
        epsilon_after: f64,
        /// ε of the budget.
        epsilon_budget: f64,
        /// δ of the budget.
        delta: f64,
    },
    /// Distributed noise cannot tolerate as many colluders as there are
    /// partners in every sum: no share would be unknown to the coalition.
    #[error(
        "colluders = {colluders} must be below n_min = {n_min} (min_partners): distributed noise is \
         calibrated on the n_min - colluders shares the coordinator and its colluders do not know, \
         so lower `colluders` or raise `min_partners`"
    )]
    TooManyColluders {
        /// `t`: partners assumed to collude with the coordinator.
        colluders: usize,
        /// Least number of partners whose noise shares are in every sum.
        n_min: usize,
    },
    /// No noise multiplier in the searched range reaches the target ε.
    #[error(
        "even a noise multiplier of {noise_multiplier} spends epsilon = {epsilon_reached:.4}, over the \
         target epsilon = {target_epsilon}: raise the target, plan fewer rounds or lower the sampling rate"
    )]
    TargetUnreachable {
        /// The ε asked for.
        target_epsilon: f64,
        /// The largest noise multiplier tried.
        noise_multiplier: f64,
        /// ε it reaches.
        epsilon_reached: f64,
    },
    /// Two settings that cannot be combined.
    #[error("unsupported combination: {0}")]
    Unsupported(&'static str),
    /// DDG conditional rounding did not meet the norm bound within the retry limit.
    #[error(
        "conditional randomised rounding failed {attempts} times to stay within the norm bound {bound:.3}: \
         increase `beta` (e.g. e^-0.5) or the scale 1/gamma"
    )]
    RoundingFailed {
        /// Attempts made.
        attempts: u32,
        /// Norm bound in integer units.
        bound: f64,
    },
    /// An integer overflowed the plaintext modulus or i64.
    #[error(
        "value {value} does not fit the {bits}-bit plaintext modulus; increase `bits` or the gamma (coarser scale)"
    )]
    Overflow {
        /// Offending value (as text).
        value: String,
        /// Bits of the modulus.
        bits: u32,
    },
    /// A decrypted sum holds a value that no sum of well-formed updates can
    /// hold: a contributor sent a malformed ciphertext (see
    /// `consortia_he::update::UpdateEncoding::decode`).
    #[error(
        "the decrypted sum is outside the range {contributors} well-formed updates can add up to \
         (value {index}: {value}, bound {bound}): a contributor sent a malformed ciphertext"
    )]
    OutOfRange {
        /// Position in the sum.
        index: usize,
        /// The signed value found.
        value: i64,
        /// The largest magnitude allowed.
        bound: i64,
        /// Updates in the sum.
        contributors: u64,
    },
    /// OpenDP refused or failed (entropy, map overflow, ...).
    #[error("OpenDP: {0}")]
    OpenDp(String),
}

#[cfg(feature = "mechanisms")]
impl From<opendp::error::Error> for DpError {
    fn from(e: opendp::error::Error) -> Self {
        DpError::OpenDp(format!(
            "{:?}: {}",
            e.variant,
            e.message.unwrap_or_default()
        ))
    }
}
