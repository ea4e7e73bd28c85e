//! Log-space arithmetic and special functions used by the accountant.
//!
//! These mirror the helpers of Google's `dp_accounting` (`rdp_privacy_accountant.py`:
//! `_log_add`, `_log_comb`, `_log_erfc`) so that the accountant reproduces its figures.

/// `ln(e^a + e^b)` without overflow (`dp_accounting` `_log_add`).
pub(crate) fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

/// `ln |C(n, k)|` for real `n`, `k` via `ln Γ` (`dp_accounting` `_log_comb`, which uses
/// `scipy.special.gammaln`, i.e. the log of the absolute value of Γ).
pub(crate) fn log_comb(n: f64, k: f64) -> f64 {
    ln_abs_gamma(n + 1.0) - ln_abs_gamma(k + 1.0) - ln_abs_gamma(n - k + 1.0)
}

fn ln_abs_gamma(x: f64) -> f64 {
    libm::lgamma_r(x).0
}

/// `ln erfc(x)`, accurate also where `erfc(x)` underflows.
///
/// For `x < 20` this is `ln(erfc(x))` (musl's `erfc`, relative error ~1 ulp; `erfc(20) ≈ 5e-176`
/// is still a normal f64). Above, the asymptotic expansion
/// `erfc(x) = e^{-x²}/(x√π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶) + 105/(16x⁸) − …)`
/// (Abramowitz & Stegun 7.1.23) whose truncation error at `x ≥ 20` is below 1e-13.
pub(crate) fn log_erfc(x: f64) -> f64 {
    if x < 20.0 {
        return libm::erfc(x).ln();
    }
    let x2 = x * x;
    let inv = 1.0 / (2.0 * x2);
    // Series in 1/(2x²): 1 − u + 3u² − 15u³ + 105u⁴.
    let series = 1.0 - inv + 3.0 * inv * inv - 15.0 * inv.powi(3) + 105.0 * inv.powi(4);
    -x2 - (x * std::f64::consts::PI.sqrt()).ln() + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_erfc_is_continuous_at_the_switch() {
        let below = libm::erfc(19.999_999).ln();
        let above = log_erfc(20.000_001);
        assert!((below - above).abs() < 1e-4, "{below} vs {above}");
        // erfc(0) = 1, erfc(1) = 0.157299207050285
        assert!(log_erfc(0.0).abs() < 1e-15);
        assert!((log_erfc(1.0) - 0.157_299_207_050_285_f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn log_comb_matches_integers() {
        assert!((log_comb(10.0, 3.0) - 120f64.ln()).abs() < 1e-12);
        assert!((log_comb(1024.0, 512.0) - 706.090_941_497_353_9).abs() < 1e-6);
    }

    #[test]
    fn log_add_adds() {
        assert!((log_add(2f64.ln(), 3f64.ln()) - 5f64.ln()).abs() < 1e-15);
        assert_eq!(log_add(f64::NEG_INFINITY, 1.0), 1.0);
    }
}
