//! ρ-zCDP → (ε, δ)-DP conversion, rounded towards privacy.
//!
//! A port of OpenDP 0.16's `cdp_delta` (`combinators/measure_cast/zCDP_to_approxDP`, MIT,
//! Copyright (c) 2022 President and Fellows of Harvard College), itself derived from Thomas
//! Steinke's `cdp2adp.py` (Apache-2.0, Copyright 2020 Thomas Steinke,
//! <https://github.com/IBM/discrete-gaussian-differential-privacy>), and of the ε search of
//! OpenDP's `PrivacyProfile::epsilon`. Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for
//! Differential Privacy" (arXiv 2004.00010), Prop. 12 / Cor. 13: ρ-zCDP implies (ε, δ)-DP with
//!
//! `δ = exp((α − 1)(αρ − ε) + α·ln(1 − 1/α)) / (α − 1)` for every α ∈ (1, ∞),
//!
//! and the conversion searches α for the smallest δ. Any α gives a valid bound, so the search
//! itself needs no care; the final δ is computed with every operation rounded towards the larger
//! δ. OpenDP rounds with arbitrary-precision floats (`dashu`); here each correctly rounded
//! operation (+, −, ×, ÷) is stepped one ulp in the safe direction, and `exp` / `ln_1p` (libm,
//! under 1 ulp of error) two ulps, so every figure is at least OpenDP's and larger by a few ulps
//! at most. This keeps the accountant free of OpenDP, which only the noise samplers need.

use super::error::DpError;

/// `x` stepped `ulps` ulps towards +∞ (a finite result of a rounded operation is then an upper
/// bound of the exact one); an error when `x` is not finite.
fn up(x: f64, ulps: u32, what: &'static str) -> Result<f64, DpError> {
    let mut y = x;
    for _ in 0..ulps {
        y = y.next_up();
    }
    finite(y, what)
}

/// `x` stepped `ulps` ulps towards −∞ (a lower bound of the exact result).
fn down(x: f64, ulps: u32, what: &'static str) -> Result<f64, DpError> {
    let mut y = x;
    for _ in 0..ulps {
        y = y.next_down();
    }
    finite(y, what)
}

fn finite(x: f64, what: &'static str) -> Result<f64, DpError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(DpError::InvalidParameter {
            name: what,
            value: x.to_string(),
            hint: "the zCDP → (epsilon, delta) conversion overflows: rho or epsilon is out of range",
        })
    }
}

/// The smallest δ (over α, rounded up) such that ρ-zCDP implies (ε, δ)-DP
/// (OpenDP `cdp_delta`, CKS20 Prop. 12).
pub(crate) fn cdp_delta(rho: f64, eps: f64) -> Result<f64, DpError> {
    if rho.is_sign_negative() || rho.is_nan() {
        return Err(DpError::InvalidRho(rho));
    }
    if eps.is_sign_negative() || eps.is_nan() {
        return Err(DpError::InvalidEpsilon(eps));
    }
    if rho == 0.0 || eps.is_infinite() {
        return Ok(0.0);
    }
    if rho.is_infinite() {
        return Ok(1.0);
    }

    // The optimal α is at most (ε + 1)/(2ρ) + 2 (rounded up), and α ≤ 1.01 is numerically
    // unstable and only reached where ε ≤ ρ (a large δ anyway).
    let two_rho = down(2.0 * rho, 1, "2·rho")?;
    let ratio = up(
        up(eps + 1.0, 1, "epsilon + 1")? / two_rho,
        1,
        "(epsilon + 1)/(2·rho)",
    )?;
    let mut a_max = up(ratio + 2.0, 1, "alpha")?;
    let mut a_min = 1.01f64;

    // δ(α) is convex on [a_min, a_max]: bisect for the root of its derivative
    // (2α − 1)ρ − ε + ln(1 − 1/α).
    loop {
        let a_mid = a_min + (a_max - a_min) / 2.0;
        if a_mid == a_max || a_mid == a_min {
            break;
        }
        let deriv = (2.0 * a_mid - 1.0) * rho - eps + libm::log1p(-a_mid.recip());
        if deriv.is_sign_negative() {
            a_min = a_mid;
        } else {
            a_max = a_mid;
        }
    }

    // δ = exp((α − 1)(αρ − ε) + α·ln(1 − 1/α)) / (α − 1), every step rounded up.
    let ar_e = up(
        up(a_max * rho, 1, "alpha·rho")? - eps,
        1,
        "alpha·rho − epsilon",
    )?;
    // (α − 1) is rounded in the direction of its cofactor's sign, so that the product grows.
    let a_1 = if ar_e.is_sign_negative() {
        down(a_max - 1.0, 1, "alpha − 1")?
    } else {
        up(a_max - 1.0, 1, "alpha − 1")?
    };
    let product = a_1 * ar_e;
    let t1 = if !product.is_finite() && a_1.is_sign_negative() != ar_e.is_sign_negative() {
        // A negative overflow: the most negative finite float is larger, so δ stays an upper
        // bound.
        f64::MIN
    } else {
        up(product, 1, "(alpha − 1)(alpha·rho − epsilon)")?
    };
    // 1/α rounded down, so that the negative ln(1 − 1/α) rounds up.
    let inv = down(1.0 / a_max, 1, "1/alpha")?;
    let log_term = up(libm::log1p(-inv), 2, "ln(1 − 1/alpha)")?;
    let t2 = up(a_max * log_term, 1, "alpha·ln(1 − 1/alpha)")?;
    let exponent = up(t1 + t2, 1, "the exponent of delta")?;
    let numerator = up(libm::exp(exponent), 2, "exp of the exponent of delta")?;
    let divisor = down(a_max - 1.0, 1, "alpha − 1")?;
    let delta = up(numerator / divisor, 1, "delta")?;
    Ok(delta.min(1.0))
}

/// The smallest ε (found by bisection, rounded towards the larger ε) with
/// [`cdp_delta`]`(rho, ε) ≤ delta`, as OpenDP's `PrivacyProfile::epsilon`; +∞ when none is
/// found below 2^64. `delta` must be in (0, 1) (checked by the caller).
pub(crate) fn cdp_epsilon(rho: f64, delta: f64) -> Result<f64, DpError> {
    let mut e_min: f64 = 0.0;
    let mut e_max: f64 = 2.0;
    while cdp_delta(rho, e_max)? > delta {
        e_max *= e_max;
        if e_max.is_infinite() {
            return Ok(f64::INFINITY);
        }
    }
    // Invariant: cdp_delta(e_max) ≤ delta < cdp_delta(e_min) (or e_min = 0).
    let mut e_mid = e_min;
    loop {
        let new_mid = e_min + (e_max - e_min) / 2.0;
        if new_mid == e_mid {
            return Ok(if cdp_delta(rho, e_min)? == delta {
                e_min
            } else {
                e_max
            });
        }
        e_mid = new_mid;
        if cdp_delta(rho, e_mid)? > delta {
            e_min = e_mid;
        } else {
            e_max = e_mid;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bun & Steinke 2016, Prop. 1.3: ρ-zCDP implies (ρ + 2√(ρ ln(1/δ)), δ)-DP. The CKS20
    /// conversion is never looser.
    #[test]
    fn never_looser_than_the_bun_steinke_bound() {
        for rho in [1e-6, 1e-3, 0.005, 0.1, 1.0, 10.0, 250.0] {
            for delta in [1e-10, 1e-6, 1e-5, 1e-2] {
                let eps = cdp_epsilon(rho, delta).unwrap();
                let bs16 = rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt();
                assert!(
                    eps >= 0.0 && eps <= bs16,
                    "ρ {rho}, δ {delta}: {eps} > {bs16}"
                );
                // The figure found is a valid (ε, δ) pair, and a slightly smaller ε is not (ε = 0
                // where δ already covers ρ-zCDP, as at ρ = 1e-6, δ = 1e-2).
                assert!(cdp_delta(rho, eps).unwrap() <= delta);
                if eps > 0.0 {
                    assert!(cdp_delta(rho, eps * (1.0 - 1e-9)).unwrap() > delta);
                }
            }
        }
    }

    #[test]
    fn edge_cases() {
        assert_eq!(cdp_delta(0.0, 1.0).unwrap(), 0.0);
        assert_eq!(cdp_delta(1.0, f64::INFINITY).unwrap(), 0.0);
        assert_eq!(cdp_delta(f64::INFINITY, 1.0).unwrap(), 1.0);
        let at_zero = cdp_delta(1.0, 0.0).unwrap();
        assert!(at_zero > 0.0 && at_zero < 1.0, "{at_zero}");
        assert!(cdp_delta(-1.0, 1.0).is_err());
        assert!(cdp_delta(1.0, -0.0).is_err());
        assert!(cdp_delta(f64::NAN, 1.0).is_err());
        // δ falls as ε grows.
        let d: Vec<f64> = [0.5, 1.0, 2.0, 4.0]
            .iter()
            .map(|&e| cdp_delta(0.1, e).unwrap())
            .collect();
        assert!(d.windows(2).all(|w| w[1] < w[0]), "{d:?}");
    }

    /// (Needs the `mechanisms` feature, which brings OpenDP in.)
    ///
    /// The figures of OpenDP 0.16's own conversion, which this module ports, to a few ulps and
    /// never below them (the port rounds at least as conservatively).
    #[cfg(feature = "mechanisms")]
    #[test]
    fn matches_opendp() {
        use opendp::combinators::ConcentratedMeasure;
        use opendp::measures::ZeroConcentratedDivergence;
        for rho in [
            1e-7, 1e-4, 1e-3, 0.005, 0.02, 0.125, 0.5, 1.0, 3.0, 20.0, 500.0,
        ] {
            let profile = <ZeroConcentratedDivergence as ConcentratedMeasure>::convert(rho)
                .expect("opendp convert");
            for delta in [1e-12, 1e-8, 1e-6, 1e-5, 1e-3, 0.1, 0.9] {
                let theirs = profile.epsilon(delta).expect("opendp epsilon");
                let ours = cdp_epsilon(rho, delta).unwrap();
                assert!(
                    ours >= theirs && ours <= theirs * (1.0 + 1e-12) + 1e-300,
                    "ρ {rho}, δ {delta}: ours {ours:e}, OpenDP {theirs:e}"
                );
            }
            for eps in [0.0, 0.01, 0.3, 1.0, 8.0, 100.0] {
                let theirs = profile.delta(eps).expect("opendp delta");
                let ours = cdp_delta(rho, eps).unwrap();
                assert!(
                    ours >= theirs && ours <= theirs * (1.0 + 1e-12) + 1e-300,
                    "ρ {rho}, ε {eps}: ours {ours:e}, OpenDP {theirs:e}"
                );
            }
        }
    }
}
