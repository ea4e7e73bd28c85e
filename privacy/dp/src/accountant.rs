//! Rényi-DP accountant for (Poisson-subsampled) Gaussian and zCDP events.
//!
//! This reproduces Google's `dp_accounting` 0.6 `RdpAccountant` with its default neighbouring
//! relation `ADD_OR_REMOVE_ONE` (one record, or one partner, is added or removed):
//!
//! * RDP curve of the Poisson-subsampled Gaussian mechanism: Mironov, Talwar, Zhang 2019,
//!   "Rényi Differential Privacy of the Sampled Gaussian Mechanism" (arXiv 1908.10530), §3.2
//!   (integer orders, binomial expansion) and §3.3 (fractional orders, two erfc series), computed
//!   in log space exactly as `dp_accounting`'s `_compute_log_a_int` / `_compute_log_a_frac`.
//! * Gaussian without sampling: `RDP(α) = α/(2z²)` (Mironov 2017, "Rényi Differential Privacy",
//!   Prop. 7).
//! * ρ-zCDP: `RDP(α) = ρ·α` (Bun & Steinke 2016, Def. 1.1), `dp_accounting` `ZCDpEvent`.
//! * Composition: RDP adds order by order (Mironov 2017, Prop. 1).
//! * RDP → (ε, δ): `ε = min_α RDP(α) + ln(1 − 1/α) − (ln δ + ln α)/(α − 1)` over α > 1.01
//!   (Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for DP", Prop. 12; Asoodeh et al.
//!   2020 Eq. 20), with ε = 0 where `δ² + expm1(−RDP(α)) > 0` (KL bound) — `dp_accounting`
//!   `compute_epsilon`. When every event composed is zCDP (Gaussians without sampling and ρ events)
//!   the total ρ is also available, with OpenDP's zCDP → approximate-DP conversion (CKS20 Prop. 12
//!   on a continuous α search, `make_zCDP_to_approxDP`, ported to this crate) as a second, slightly
//!   tighter figure.

use serde::{Deserialize, Serialize};

use super::cdp::{cdp_delta, cdp_epsilon};
use super::error::DpError;
use super::special::{log_add, log_comb, log_erfc};

/// `dp_accounting`'s `DEFAULT_RDP_ORDERS`:
/// `[1 + x/10 for x in 1..=99] + [11..=63] + [128, 256, 512, 1024]`.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// A privacy-relevant release, described by its mechanism parameters (not by an ε), so that any
/// accountant can recompute the totals from a ledger of events.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DpEvent {
    /// Gaussian mechanism on a query of L2 sensitivity Δ with noise std `noise_multiplier`·Δ.
    /// Under add/remove adjacency it is `1/(2z²)`-zCDP (`RDP(α) = α/(2z²)`).
    Gaussian {
        /// z = σ/Δ.
        noise_multiplier: f64,
    },
    /// Every unit is included independently with probability `sampling_rate`, then the Gaussian
    /// mechanism with `noise_multiplier` runs on the sample (Mironov, Talwar, Zhang 2019).
    PoissonSampledGaussian {
        /// q ∈ (0, 1].
        sampling_rate: f64,
        /// z = σ/Δ.
        noise_multiplier: f64,
    },
    /// A ρ-zCDP release (e.g. one distributed-discrete-Gaussian round, see `ddg_round_rho`).
    Zcdp {
        /// ρ ≥ 0.
        rho: f64,
    },
}

impl DpEvent {
    /// Checks the parameters: z > 0, q ∈ (0, 1], ρ ≥ 0, all finite.
    pub fn validate(&self) -> Result<(), DpError> {
        match *self {
            DpEvent::Gaussian { noise_multiplier } => check_z(noise_multiplier),
            DpEvent::PoissonSampledGaussian {
                sampling_rate,
                noise_multiplier,
            } => {
                if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
                    return Err(DpError::InvalidSamplingRate(sampling_rate));
                }
                check_z(noise_multiplier)
            }
            DpEvent::Zcdp { rho } => {
                if rho.is_finite() && rho >= 0.0 {
                    Ok(())
                } else {
                    Err(DpError::InvalidRho(rho))
                }
            }
        }
    }

    /// ρ if this event is ρ-zCDP as a whole (no subsampling), `None` otherwise.
    pub fn zcdp_rho(&self) -> Option<f64> {
        match *self {
            DpEvent::Gaussian { noise_multiplier } => {
                Some(1.0 / (2.0 * noise_multiplier * noise_multiplier))
            }
            DpEvent::PoissonSampledGaussian {
                sampling_rate: 1.0,
                noise_multiplier,
            } => Some(1.0 / (2.0 * noise_multiplier * noise_multiplier)),
            DpEvent::Zcdp { rho } => Some(rho),
            DpEvent::PoissonSampledGaussian { .. } => None,
        }
    }

    /// RDP of one occurrence of the event at each of `orders` (all > 1).
    pub fn rdp(&self, orders: &[f64]) -> Result<Vec<f64>, DpError> {
        self.validate()?;
        Ok(match *self {
            DpEvent::Gaussian { noise_multiplier } => orders
                .iter()
                .map(|&a| a / (2.0 * noise_multiplier * noise_multiplier))
                .collect(),
            DpEvent::PoissonSampledGaussian {
                sampling_rate,
                noise_multiplier,
            } => orders
                .iter()
                .map(|&a| rdp_poisson_subsampled_gaussian(sampling_rate, noise_multiplier, a))
                .collect(),
            DpEvent::Zcdp { rho } => orders.iter().map(|&a| rho * a).collect(),
        })
    }
}

fn check_z(z: f64) -> Result<(), DpError> {
    if z.is_finite() && z > 0.0 {
        Ok(())
    } else {
        Err(DpError::InvalidNoiseMultiplier(z))
    }
}

/// RDP at order `alpha` of the Poisson-subsampled Gaussian with rate `q` and multiplier `sigma`
/// (`dp_accounting` `_compute_rdp_poisson_subsampled_gaussian`):
/// `RDP(α) = ln(A_α)/(α − 1)` with `A_α` of Mironov, Talwar, Zhang 2019, §3; `q = 1` gives
/// `α/(2σ²)`. Returns +∞ where the fractional series does not converge (that order is then
/// ignored by the conversion, as in `dp_accounting`).
pub fn rdp_poisson_subsampled_gaussian(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if alpha.is_infinite() || sigma == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 && alpha < f64::from(u32::MAX) {
        log_a_int(q, sigma, alpha as u32)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    log_a / (alpha - 1.0)
}

/// `ln A_α` for integer α (Mironov, Talwar, Zhang 2019, §3.2, Eq. for `A_α` by the binomial
/// expansion): `A_α = Σ_{i=0}^{α} C(α,i) (1−q)^{α−i} q^i exp((i² − i)/(2σ²))`.
fn log_a_int(q: f64, sigma: f64, alpha: u32) -> f64 {
    let log_q = q.ln();
    let log1mq = (-q).ln_1p();
    let a = f64::from(alpha);
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let i = f64::from(i);
        let log_coef = log_comb(a, i) + i * log_q + (a - i) * log1mq;
        let s = log_coef + (i * i - i) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, s);
    }
    log_a
}

/// Iteration cap of the fractional series (`dp_accounting` `_MAX_STEPS_LOG_A_FRAC`).
const MAX_STEPS_LOG_A_FRAC: u32 = 1000;

/// `ln A_α` for fractional α (Mironov, Talwar, Zhang 2019, §3.3): the integrals over
/// `(−∞, z₀]` and `[z₀, ∞)`, `z₀ = σ² ln(1/q − 1) + ½`, as two series of binomial terms times
/// `½ erfc(·)`. Like `dp_accounting`, each term enters with `|C(α, i)|` (an upper bound on the
/// alternating terms), and the loop stops once both series decrease and their terms are 30 nats
/// below the running total.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let mut log_a0 = f64::NEG_INFINITY;
    let mut log_a1 = f64::NEG_INFINITY;
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let log_q = q.ln();
    let log1mq = (-q).ln_1p();
    let sqrt2_sigma = std::f64::consts::SQRT_2 * sigma;
    let half_ln = 0.5f64.ln();
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for step in 0..MAX_STEPS_LOG_A_FRAC {
        let i = f64::from(step);
        let log_coef = log_comb(alpha, i);
        let j = alpha - i;
        let log_t0 = log_coef + i * log_q + j * log1mq;
        let log_t1 = log_coef + j * log_q + i * log1mq;
        let log_e0 = half_ln + log_erfc((i - z0) / sqrt2_sigma);
        let log_e1 = half_ln + log_erfc((z0 - j) / sqrt2_sigma);
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

/// Smallest ε such that the RDP curve implies (ε, δ)-DP, and the order achieving it
/// (`dp_accounting` `compute_epsilon`; CKS20 Prop. 12 / Asoodeh et al. 2020 Eq. 20):
/// `ε(α) = RDP(α) + ln(1 − 1/α) − ln(δ·α)/(α − 1)` for α > 1.01, ε = 0 where the KL bound
/// `δ ≥ sqrt(1 − e^{−RDP(α)})` already holds.
pub fn compute_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64), DpError> {
    if !(delta.is_finite() && delta >= 0.0) {
        return Err(DpError::InvalidDelta(delta));
    }
    if orders.len() != rdp.len() {
        return Err(DpError::LengthMismatch {
            expected: orders.len(),
            got: rdp.len(),
        });
    }
    if delta == 0.0 {
        return Ok(if rdp.iter().all(|&r| r == 0.0) {
            (0.0, 0.0)
        } else {
            (f64::INFINITY, 0.0)
        });
    }
    let mut best = (f64::INFINITY, orders.first().copied().unwrap_or(0.0));
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if r.is_nan() {
            f64::INFINITY
        } else if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// Smallest δ such that the RDP curve implies (ε, δ)-DP, and the order achieving it
/// (`dp_accounting` `compute_delta`; CKS20 Prop. 12 solved for δ, plus the KL bound
/// `δ ≤ sqrt(1 − e^{−RDP(α)})`).
pub fn compute_delta(orders: &[f64], rdp: &[f64], epsilon: f64) -> Result<(f64, f64), DpError> {
    if epsilon.is_nan() || epsilon < 0.0 {
        return Err(DpError::InvalidEpsilon(epsilon));
    }
    if orders.len() != rdp.len() {
        return Err(DpError::LengthMismatch {
            expected: orders.len(),
            got: rdp.len(),
        });
    }
    let mut best = (f64::INFINITY, orders.first().copied().unwrap_or(0.0));
    for (&a, &r) in orders.iter().zip(rdp) {
        let mut log_delta = if r <= 0.0 {
            f64::NEG_INFINITY
        } else {
            0.5 * (-(-r).exp()).ln_1p()
        };
        if a > 1.01 {
            let bound = (a - 1.0) * (r - epsilon + (-1.0 / a).ln_1p()) - a.ln();
            log_delta = log_delta.min(bound);
        }
        if log_delta < best.0 {
            best = (log_delta, a);
        }
    }
    Ok((best.0.exp().min(1.0), best.1))
}

/// ε(δ) of ρ-zCDP by OpenDP's conversion (`ZeroConcentratedDivergence` →
/// `SmoothedMaxDivergence`, CKS20 Prop. 12 with a continuous search over α, rounded towards
/// privacy), as ported in this crate so that accounting needs no OpenDP.
pub fn zcdp_epsilon(rho: f64, delta: f64) -> Result<f64, DpError> {
    if !(rho.is_finite() && rho >= 0.0) {
        return Err(DpError::InvalidRho(rho));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(DpError::InvalidDelta(delta));
    }
    if rho == 0.0 {
        return Ok(0.0);
    }
    cdp_epsilon(rho, delta)
}

/// δ(ε) of ρ-zCDP by OpenDP's conversion (see [`zcdp_epsilon`]).
pub fn zcdp_delta(rho: f64, epsilon: f64) -> Result<f64, DpError> {
    if !(rho.is_finite() && rho >= 0.0) {
        return Err(DpError::InvalidRho(rho));
    }
    if epsilon.is_nan() || epsilon < 0.0 {
        return Err(DpError::InvalidEpsilon(epsilon));
    }
    cdp_delta(rho, epsilon)
}

/// Which accountant turns a ledger of events into (ε, δ): `accountant = "rdp"` in the task
/// file, the default and the only accountant there is. Any other value (e.g. a privacy-loss
/// distribution accountant, `"pld"`) is not supported and is refused when the task is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountantKind {
    /// Rényi DP (this module), matches `dp_accounting.rdp.RdpAccountant`.
    #[default]
    Rdp,
}

/// RDP accountant over `dp_accounting`'s default order grid.
///
/// Holds the ledger of composed events (mechanism parameters, for audit and recomputation) and
/// the RDP curve summed over them.
#[derive(Debug, Clone, PartialEq)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
    ledger: Vec<(DpEvent, u64)>,
    /// Σρ while every event is zCDP; `None` once a subsampled event is composed.
    rho: Option<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl RdpAccountant {
    /// An empty accountant on [`default_orders`].
    pub fn new() -> Self {
        let orders = default_orders();
        Self {
            rdp: vec![0.0; orders.len()],
            orders,
            ledger: Vec::new(),
            rho: Some(0.0),
        }
    }

    /// An empty accountant on custom orders (each finite and > 1).
    pub fn with_orders(orders: Vec<f64>) -> Result<Self, DpError> {
        if orders.is_empty() {
            return Err(DpError::InvalidParameter {
                name: "orders",
                value: "[]".into(),
                hint: "give at least one Rényi order > 1",
            });
        }
        if let Some(&bad) = orders.iter().find(|a| !(a.is_finite() && **a > 1.0)) {
            return Err(DpError::InvalidParameter {
                name: "RDP order",
                value: bad.to_string(),
                hint: "Rényi orders must be finite and > 1",
            });
        }
        Ok(Self {
            rdp: vec![0.0; orders.len()],
            orders,
            ledger: Vec::new(),
            rho: Some(0.0),
        })
    }

    /// Composes `count` occurrences of `event`. On error nothing is composed.
    pub fn compose(&mut self, event: DpEvent, count: u64) -> Result<&mut Self, DpError> {
        let one = event.rdp(&self.orders)?;
        if count == 0 {
            return Ok(self);
        }
        let c = count as f64;
        for (total, r) in self.rdp.iter_mut().zip(one) {
            *total += c * r;
        }
        self.rho = match (self.rho, event.zcdp_rho()) {
            (Some(total), Some(r)) => Some(total + c * r),
            _ => None,
        };
        match self.ledger.last_mut() {
            Some((last, n)) if *last == event => *n += count,
            _ => self.ledger.push((event, count)),
        }
        Ok(self)
    }

    /// Composes every `(event, count)` of `events`; on error nothing is composed.
    pub fn compose_all(&mut self, events: &[(DpEvent, u64)]) -> Result<&mut Self, DpError> {
        let mut next = self.clone();
        for &(event, count) in events {
            next.compose(event, count)?;
        }
        *self = next;
        Ok(self)
    }

    /// This accountant's composition repeated `times` times (RDP and ρ scale linearly;
    /// Mironov 2017, Prop. 1).
    pub fn repeated(&self, times: u64) -> Self {
        let t = times as f64;
        let mut out = self.clone();
        out.rdp.iter_mut().for_each(|r| *r *= t);
        out.rho = out.rho.map(|r| r * t);
        // Composition is commutative, so multiplying each entry's count is the same ledger.
        if times == 0 {
            out.ledger.clear();
        } else {
            out.ledger
                .iter_mut()
                .for_each(|(_, n)| *n = n.saturating_mul(times));
        }
        out
    }

    /// The events composed so far (consecutive repeats merged).
    pub fn ledger(&self) -> &[(DpEvent, u64)] {
        &self.ledger
    }

    /// The Rényi orders.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The composed RDP curve, one value per order.
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// Total ρ when every composed event is zCDP (no subsampling), else `None`.
    pub fn zcdp_rho(&self) -> Option<f64> {
        self.rho
    }

    /// ε at `delta` for everything composed, exactly as `dp_accounting`'s
    /// `RdpAccountant.get_epsilon` (conversion on the order grid), so that auditors can
    /// reproduce the figure with the reference implementation.
    pub fn epsilon(&self, delta: f64) -> Result<f64, DpError> {
        if !(delta > 0.0 && delta < 1.0) {
            return Err(DpError::InvalidDelta(delta));
        }
        Ok(compute_epsilon(&self.orders, &self.rdp, delta)?.0)
    }

    /// When every composed event is zCDP: ε at `delta` from OpenDP's zCDP → approximate-DP
    /// conversion of the total ρ (continuous search over α, CKS20 Prop. 12), never larger than
    /// [`epsilon`](Self::epsilon) by more than float rounding and noticeably smaller for small ρ,
    /// where the default grid is coarse (ρ = 0.001, δ = 1e-5: 0.158 against 0.166). `None` once
    /// a subsampled event is composed.
    pub fn zcdp_epsilon(&self, delta: f64) -> Result<Option<f64>, DpError> {
        match self.rho {
            Some(rho) => zcdp_epsilon(rho, delta).map(Some),
            None => Ok(None),
        }
    }

    /// The Rényi order at which [`epsilon`](Self::epsilon) is attained on the grid.
    pub fn optimal_order(&self, delta: f64) -> Result<f64, DpError> {
        Ok(compute_epsilon(&self.orders, &self.rdp, delta)?.1)
    }

    /// δ at `epsilon` for everything composed (`dp_accounting` `get_delta`, order grid).
    pub fn delta(&self, epsilon: f64) -> Result<f64, DpError> {
        Ok(compute_delta(&self.orders, &self.rdp, epsilon)?.0)
    }
}

/// ε at `delta` after `steps` Poisson-subsampled Gaussian steps with rate `q` and multiplier
/// `sigma` (`q = 1`: no sampling).
pub fn epsilon_after(q: f64, sigma: f64, steps: u64, delta: f64) -> Result<f64, DpError> {
    let mut acc = RdpAccountant::new();
    acc.compose(
        DpEvent::PoissonSampledGaussian {
            sampling_rate: q,
            noise_multiplier: sigma,
        },
        steps,
    )?;
    acc.epsilon(delta)
}

/// Search range of [`smallest_noise_multiplier`]: `[0.05, 1000]`.
pub const NOISE_MULTIPLIER_RANGE: (f64, f64) = (0.05, 1000.0);

/// The smallest noise multiplier `z`, written with `decimals` decimals and rounded **up** at the
/// last one, whose ε (`epsilon_at(z)`, non-increasing in `z`: more noise never costs more) is at
/// most `target_epsilon`; returns `(z, epsilon_at(z))`.
///
/// Bisection (60 geometric steps over [`NOISE_MULTIPLIER_RANGE`]) finds the boundary to well
/// below `10^-decimals`; the result is then rounded up to the decimal grid and **re-checked**:
/// `z` is the value that `format!("{z:.decimals$}")` prints and that reads back exactly, and its
/// own ε is within the target — so a task file or coordinator given the printed figure accepts
/// it (a figure rounded to nearest can fall just below the boundary and overspend by a hair).
/// Refuses with [`DpError::TargetUnreachable`] when even the top of the range overspends.
pub fn smallest_noise_multiplier<F>(
    target_epsilon: f64,
    decimals: u32,
    mut epsilon_at: F,
) -> Result<(f64, f64), DpError>
where
    F: FnMut(f64) -> Result<f64, DpError>,
{
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(DpError::InvalidEpsilon(target_epsilon));
    }
    let decimals = decimals.min(12) as usize;
    let (mut lo, mut hi) = NOISE_MULTIPLIER_RANGE;
    let top = epsilon_at(hi)?;
    if top > target_epsilon {
        return Err(DpError::TargetUnreachable {
            target_epsilon,
            noise_multiplier: hi,
            epsilon_reached: top,
        });
    }
    // ε falls as the noise multiplier grows: `hi` always stays within the target.
    for _ in 0..60 {
        let mid = (lo * hi).sqrt();
        if epsilon_at(mid)? > target_epsilon {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Round up onto the printed grid, through the decimal text itself, and step up until the
    // printed value's own ε is within the target (a step or two at most: ε is monotone, and
    // only float noise at the boundary can need the second).
    let step = 10f64.powi(-(decimals as i32));
    let printed = |k: f64| -> Result<f64, DpError> {
        format!("{:.*}", decimals, k * step)
            .parse::<f64>()
            .map_err(|_| DpError::InvalidNoiseMultiplier(k * step))
    };
    let mut k = (hi / step).ceil();
    for _ in 0..1000 {
        let z = printed(k)?;
        if z >= hi {
            let eps = epsilon_at(z)?;
            if eps <= target_epsilon {
                return Ok((z, eps));
            }
        }
        k += 1.0;
    }
    let z = printed(k)?;
    Err(DpError::TargetUnreachable {
        target_epsilon,
        noise_multiplier: z,
        epsilon_reached: epsilon_at(z)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grid_has_dp_accounting_shape() {
        let o = default_orders();
        assert_eq!(o.len(), 99 + 53 + 4);
        assert!((o[0] - 1.1).abs() < 1e-12);
        assert!((o[98] - 10.9).abs() < 1e-12);
        assert_eq!(o[99], 11.0);
        assert_eq!(*o.last().unwrap_or(&0.0), 1024.0);
    }

    #[test]
    fn integer_order_series_matches_closed_form_for_alpha_2() {
        // A_2 = (1−q)² + 2q(1−q) + q² e^{1/σ²} = 1 + q²(e^{1/σ²} − 1).
        let (q, s): (f64, f64) = (0.03, 1.3);
        let want = (q * q * (1.0 / (s * s)).exp_m1()).ln_1p();
        let got = rdp_poisson_subsampled_gaussian(q, s, 2.0);
        assert!((got - want).abs() < 1e-14, "{got} vs {want}");
    }

    #[test]
    fn fractional_orders_interpolate_between_integers() {
        // RDP is non-decreasing in α: the fractional series must sit between its integer neighbours.
        let (q, s) = (0.01, 0.9);
        let r3 = rdp_poisson_subsampled_gaussian(q, s, 3.0);
        let r35 = rdp_poisson_subsampled_gaussian(q, s, 3.5);
        let r4 = rdp_poisson_subsampled_gaussian(q, s, 4.0);
        assert!(r3 <= r35 && r35 <= r4, "{r3} {r35} {r4}");
    }

    #[test]
    fn composition_is_atomic_on_error() {
        let mut acc = RdpAccountant::new();
        acc.compose(DpEvent::Zcdp { rho: 0.1 }, 2).unwrap();
        let before = acc.clone();
        let bad = [
            (DpEvent::Zcdp { rho: 0.1 }, 1),
            (
                DpEvent::Gaussian {
                    noise_multiplier: -1.0,
                },
                1,
            ),
        ];
        assert!(acc.compose_all(&bad).is_err());
        assert_eq!(acc, before);
        assert_eq!(acc.zcdp_rho(), Some(0.2));
    }

    /// The calibrated figure is rounded up, reads back as printed, and stays within the target
    /// while one step below it does not (1000 Poisson-subsampled steps, q = 0.01, δ = 1e-5).
    #[test]
    fn calibrated_noise_multiplier_is_rounded_up_and_within_target() {
        let eps_at = |z: f64| epsilon_after(0.01, z, 1000, 1e-5);
        for target in [8.0, 3.0, 1.0, 0.5] {
            let (z, eps) = smallest_noise_multiplier(target, 4, eps_at).unwrap();
            let text = format!("{z:.4}");
            assert_eq!(text.parse::<f64>().unwrap(), z, "{text}");
            assert_eq!(eps, eps_at(z).unwrap());
            assert!(eps <= target, "target {target}: z {text} spends {eps}");
            // One grid step lower already overspends: z is the smallest printed value.
            let below: f64 = format!("{:.4}", z - 1e-4).parse().unwrap();
            assert!(
                eps_at(below).unwrap() > target,
                "target {target}: {below} also fits"
            );
        }
        // An unreachable target is refused with the figures.
        assert!(matches!(
            smallest_noise_multiplier(1e-9, 4, eps_at),
            Err(DpError::TargetUnreachable { noise_multiplier, .. }) if noise_multiplier == 1000.0
        ));
        assert!(smallest_noise_multiplier(-1.0, 4, eps_at).is_err());
    }

    /// A step function of z whose boundary lies just above a grid point: rounding to nearest
    /// would print that grid point (and overspend); rounding up prints the next one.
    #[test]
    fn calibration_never_prints_a_value_below_the_boundary() {
        let boundary = 0.767_640_1;
        let eps_at = |z: f64| Ok(if z >= boundary { 7.9 } else { 8.0002 });
        let (z, eps) = smallest_noise_multiplier(8.0, 4, eps_at).unwrap();
        assert_eq!(format!("{z:.4}"), "0.7677");
        assert_eq!(eps, 7.9);
        assert_eq!(format!("{boundary:.4}"), "0.7676");
    }

    #[test]
    fn delta_and_epsilon_are_consistent() {
        let mut acc = RdpAccountant::new();
        acc.compose(
            DpEvent::PoissonSampledGaussian {
                sampling_rate: 0.02,
                noise_multiplier: 1.1,
            },
            500,
        )
        .unwrap();
        let eps = acc.epsilon(1e-6).unwrap();
        let delta = acc.delta(eps).unwrap();
        assert!(delta <= 1e-6 * (1.0 + 1e-9), "delta(eps(1e-6)) = {delta}");
        assert!(acc.delta(eps * 0.9).unwrap() > 1e-6);
    }
}
