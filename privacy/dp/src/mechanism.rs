//! Clipping, Gaussian noise and the two local mechanisms: record-level DP-SGD and partner-level
//! DP-FedAvg.
//!
//! Adjacency: add/remove one unit. A sum of vectors each clipped to L2 norm C changes by at most
//! C in L2 when one vector is added or removed, so its sensitivity is Δ = C and Gaussian noise of
//! standard deviation z·C is the Gaussian mechanism with noise multiplier z — exactly the
//! `DpEvent`s the accountant composes (replace-one adjacency would need Δ = 2C).

#[cfg(feature = "mechanisms")]
use dashu::rational::RBig;
#[cfg(feature = "mechanisms")]
use opendp::domains::{AtomDomain, VectorDomain};
#[cfg(feature = "mechanisms")]
use opendp::measurements::make_gaussian;
#[cfg(feature = "mechanisms")]
use opendp::measures::ZeroConcentratedDivergence;
#[cfg(feature = "mechanisms")]
use opendp::metrics::L2Distance;
#[cfg(feature = "mechanisms")]
use opendp::traits::samplers::{sample_bernoulli_float, sample_discrete_gaussian};
use serde::{Deserialize, Serialize};

use super::accountant::DpEvent;
use super::error::DpError;

/// Whose participation the guarantee hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyUnit {
    /// One record (row) of a partner: DP-SGD with per-example clipping inside each partner.
    #[default]
    Record,
    /// One partner's whole contribution to a round: DP-FedAvg clipping of the model delta.
    Partner,
}

/// Who adds the noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoisePlacement {
    /// Each partner adds the full calibrated noise to its own update.
    #[default]
    Local,
    /// Each partner adds a share of discrete Gaussian noise; only the encrypted sum carries the
    /// full noise (distributed discrete Gaussian, see [`super::ddg`]).
    Distributed,
}

/// Exponent of the fixed-point grid on which continuous values are noised: 2^-50 ≈ 8.9e-16.
///
/// OpenDP samples Gaussian noise for floats exactly as a discrete Gaussian on the grid 2^k
/// (`make_gaussian` over `Vec<f64>` with `k`, CKS20 §5 sampler): the input is rounded to the
/// nearest multiple of 2^k, integer noise `N_Z(0, (σ/2^k)²)` is added and the result is scaled
/// back. Its privacy map (OpenDP proof `make_float_to_bigint`) inflates the L2 sensitivity by the
/// rounding distance, at most `√d·2^(k−1)`, i.e. Δ' ≤ C + √d·4.4e-16 — below f64 resolution for
/// any realistic C, d; and at σ/2^k ≥ 2^40 the discrete Gaussian has the variance of the
/// continuous one to relative error far below 1e-12 (CKS20 Prop. 19: the variance is at most σ²).
pub const NOISE_GRID_K: i32 = -50;

/// Scales `values` in place to L2 norm at most `clip` (`x·min(1, C/‖x‖₂)`, Abadi et al. 2016,
/// Alg. 1) and returns the original norm.
///
/// If any value is NaN/∞ or `clip` is not a positive finite number, the vector is zeroed (a zero
/// contribution never breaks the sensitivity bound) and the returned norm is NaN/∞.
pub fn clip_l2(values: &mut [f64], clip: f64) -> f64 {
    let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
    if !(norm.is_finite() && clip.is_finite() && clip > 0.0) {
        values.iter_mut().for_each(|v| *v = 0.0);
        return if norm.is_finite() { f64::NAN } else { norm };
    }
    if norm > clip {
        let factor = clip / norm;
        values.iter_mut().for_each(|v| *v *= factor);
        // Rounding can leave the product a hair above `clip`; shrink until it is not.
        let mut scaled = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        while scaled > clip {
            values.iter_mut().for_each(|v| *v *= 1.0 - 1e-15);
            scaled = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        }
    }
    norm
}

pub(crate) fn check_clip(clip: f64) -> Result<(), DpError> {
    if clip.is_finite() && clip > 0.0 {
        Ok(())
    } else {
        Err(DpError::InvalidClipNorm(clip))
    }
}

pub(crate) fn check_noise_multiplier(z: f64) -> Result<(), DpError> {
    if z.is_finite() && z > 0.0 {
        Ok(())
    } else {
        Err(DpError::InvalidNoiseMultiplier(z))
    }
}

#[cfg(feature = "mechanisms")]
fn check_finite(values: &[f64]) -> Result<(), DpError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(DpError::NonFinite {
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// Adds i.i.d. Gaussian noise of standard deviation `std_dev` to every value, through OpenDP's
/// `make_gaussian` on the grid 2^[`NOISE_GRID_K`] (see there for the exactness bound).
///
/// Privacy map (OpenDP, CKS20 Thm 4): for an input of L2 sensitivity Δ this release is
/// `ρ = ((Δ + √d·2^(k−1))/std_dev)²/2`-zCDP.
#[cfg(feature = "mechanisms")]
pub fn add_gaussian_noise(values: &mut [f64], std_dev: f64) -> Result<(), DpError> {
    if !(std_dev.is_finite() && std_dev > 0.0) {
        return Err(DpError::InvalidParameter {
            name: "noise standard deviation",
            value: std_dev.to_string(),
            hint: "the noise standard deviation (noise_multiplier × clip_norm) must be finite and > 0",
        });
    }
    check_finite(values)?;
    let domain = VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(values.len());
    let meas = make_gaussian::<_, _, ZeroConcentratedDivergence>(
        domain,
        L2Distance::<f64>::default(),
        std_dev,
        Some(NOISE_GRID_K),
    )?;
    let noised = meas.invoke(&values.to_vec())?;
    if noised.len() != values.len() {
        return Err(DpError::LengthMismatch {
            expected: values.len(),
            got: noised.len(),
        });
    }
    values.copy_from_slice(&noised);
    Ok(())
}

/// zCDP ρ of [`add_gaussian_noise`] for an input of L2 sensitivity `sensitivity` in `dim`
/// coordinates, as computed by OpenDP's privacy map (rounding distance included, rounded up).
#[cfg(feature = "mechanisms")]
pub fn gaussian_noise_rho(sensitivity: f64, std_dev: f64, dim: usize) -> Result<f64, DpError> {
    let domain = VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(dim);
    let meas = make_gaussian::<_, _, ZeroConcentratedDivergence>(
        domain,
        L2Distance::<f64>::default(),
        std_dev,
        Some(NOISE_GRID_K),
    )?;
    Ok(meas.map(&sensitivity)?)
}

/// One exact draw from the discrete Gaussian `N_Z(0, σ²)` (OpenDP `sample_discrete_gaussian`,
/// CKS20 Alg. 3).
#[cfg(feature = "mechanisms")]
pub fn discrete_gaussian(sigma: f64) -> Result<i64, DpError> {
    let scale = RBig::try_from(sigma).map_err(|_| DpError::InvalidParameter {
        name: "discrete Gaussian sigma",
        value: sigma.to_string(),
        hint: "sigma must be finite and >= 0",
    })?;
    if sigma < 0.0 {
        return Err(DpError::InvalidParameter {
            name: "discrete Gaussian sigma",
            value: sigma.to_string(),
            hint: "sigma must be finite and >= 0",
        });
    }
    let z = sample_discrete_gaussian(scale)?;
    i64::try_from(z.clone()).map_err(|_| DpError::Overflow {
        value: z.to_string(),
        bits: 64,
    })
}

/// Poisson subsampling: each of `n_rows` rows is kept independently with probability `q`, drawn
/// with OpenDP's Bernoulli sampler (a CSPRNG; OpenSSL with `secure-rng`). Returns the kept
/// indices. This is the sampling the `PoissonSampledGaussian` event assumes (Mironov, Talwar,
/// Zhang 2019, §2: "each element is included independently with probability q").
#[cfg(feature = "mechanisms")]
pub fn poisson_subsample(n_rows: usize, q: f64) -> Result<Vec<usize>, DpError> {
    if !(q > 0.0 && q <= 1.0) {
        return Err(DpError::InvalidSamplingRate(q));
    }
    let mut kept = Vec::with_capacity((n_rows as f64 * q * 1.2) as usize + 8);
    for i in 0..n_rows {
        if sample_bernoulli_float(q, false)? {
            kept.push(i);
        }
    }
    Ok(kept)
}

/// Parameters of one record-level DP-SGD step (Abadi et al. 2016, Alg. 1, with Poisson sampling
/// as analysed by Mironov, Talwar, Zhang 2019).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgdStep {
    /// Per-example L2 clip C.
    pub clip_norm: f64,
    /// z: the noise on the sum has standard deviation z·C.
    pub noise_multiplier: f64,
    /// q: each row joins the batch independently with this probability.
    pub sampling_rate: f64,
}

impl DpSgdStep {
    /// The accountant event of one step: `PoissonSampledGaussian { q, z }` (sum sensitivity C
    /// under add/remove of one record, noise z·C).
    pub fn event(&self) -> DpEvent {
        DpEvent::PoissonSampledGaussian {
            sampling_rate: self.sampling_rate,
            noise_multiplier: self.noise_multiplier,
        }
    }

    /// One noisy gradient: Poisson-sample the `n_rows` rows with rate q, clip each sampled
    /// row's gradient (`per_example_grad(row)`, `dim` values) to C, sum, add N(0, z²C²) per
    /// coordinate, and divide by the expected batch size q·n_rows (a public constant, so the
    /// division is post-processing; Abadi et al. 2016 Alg. 1 "L" with the fixed denominator of
    /// McMahan et al. 2018 §2).
    #[cfg(feature = "mechanisms")]
    pub fn noisy_gradient<F>(
        &self,
        n_rows: usize,
        dim: usize,
        mut per_example_grad: F,
    ) -> Result<Vec<f64>, DpError>
    where
        F: FnMut(usize) -> Vec<f64>,
    {
        check_clip(self.clip_norm)?;
        check_noise_multiplier(self.noise_multiplier)?;
        if n_rows == 0 {
            return Err(DpError::InvalidParameter {
                name: "rows",
                value: "0".into(),
                hint: "a partner needs at least one row to train with DP-SGD",
            });
        }
        let batch = poisson_subsample(n_rows, self.sampling_rate)?;
        let mut sum = vec![0.0; dim];
        for row in batch {
            let mut g = per_example_grad(row);
            if g.len() != dim {
                return Err(DpError::LengthMismatch {
                    expected: dim,
                    got: g.len(),
                });
            }
            clip_l2(&mut g, self.clip_norm);
            sum.iter_mut().zip(&g).for_each(|(s, v)| *s += v);
        }
        add_gaussian_noise(&mut sum, self.noise_multiplier * self.clip_norm)?;
        let expected_batch = self.sampling_rate * n_rows as f64;
        sum.iter_mut().for_each(|v| *v /= expected_batch);
        Ok(sum)
    }
}

/// Partner-level DP-FedAvg with local noise (McMahan, Ramage, Talwar, Zhang 2018, Alg. 1 with
/// flat clipping): clip the partner's model delta to L2 norm C, then add N(0, z²C²) per
/// coordinate. Returns the delta's norm before clipping.
///
/// Privacy map: one partner's release is the Gaussian mechanism on a vector of sensitivity C
/// (add/remove that partner) with noise multiplier z: `DpEvent::Gaussian { z }`, i.e.
/// `1/(2z²)`-zCDP per round. No amplification by partner sampling is claimed.
#[cfg(feature = "mechanisms")]
pub fn privatize_partner_update(
    delta: &mut [f64],
    clip_norm: f64,
    noise_multiplier: f64,
) -> Result<f64, DpError> {
    check_clip(clip_norm)?;
    check_noise_multiplier(noise_multiplier)?;
    check_finite(delta)?;
    let norm = clip_l2(delta, clip_norm);
    add_gaussian_noise(delta, noise_multiplier * clip_norm)?;
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_scales_down_and_reports_norm() {
        let mut v = vec![3.0, 4.0];
        let n = clip_l2(&mut v, 1.0);
        assert_eq!(n, 5.0);
        let after = (v[0] * v[0] + v[1] * v[1]).sqrt();
        assert!(after <= 1.0 && after > 1.0 - 1e-12);
        let mut w = vec![0.3, 0.4];
        assert_eq!(clip_l2(&mut w, 1.0), 0.5);
        assert_eq!(w, vec![0.3, 0.4]);
    }

    #[test]
    fn clip_zeroes_non_finite() {
        let mut v = vec![1.0, f64::NAN];
        assert!(clip_l2(&mut v, 1.0).is_nan());
        assert_eq!(v, vec![0.0, 0.0]);
        let mut w = vec![1.0, 2.0];
        assert!(clip_l2(&mut w, -1.0).is_nan());
        assert_eq!(w, vec![0.0, 0.0]);
    }

    #[cfg(feature = "mechanisms")]
    #[test]
    fn noise_rejects_bad_inputs() {
        assert!(add_gaussian_noise(&mut [1.0], 0.0).is_err());
        assert!(matches!(
            add_gaussian_noise(&mut [1.0, f64::INFINITY], 1.0),
            Err(DpError::NonFinite { index: 1, .. })
        ));
        assert_eq!(
            privatize_partner_update(&mut [1.0], 1.0, -2.0),
            Err(DpError::InvalidNoiseMultiplier(-2.0))
        );
    }

    #[cfg(feature = "mechanisms")]
    #[test]
    fn opendp_map_matches_the_gaussian_rho() {
        // ρ = (Δ/σ)²/2 up to the grid rounding distance.
        let rho = gaussian_noise_rho(1.0, 2.0, 100).unwrap();
        assert!((rho - 0.125).abs() < 1e-9, "{rho}");
    }

    #[cfg(feature = "mechanisms")]
    #[test]
    fn poisson_subsample_rate() {
        // 10,000 rows at q = 0.1: the count is Binomial(10000, 0.1), sd 30; ±8 sd fails with
        // probability < 1.3e-15.
        let kept = poisson_subsample(10_000, 0.1).unwrap();
        assert!((kept.len() as i64 - 1000).abs() < 240, "{}", kept.len());
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(poisson_subsample(10, 1.0).unwrap().len(), 10);
        assert!(poisson_subsample(10, 0.0).is_err());
    }

    #[cfg(feature = "mechanisms")]
    #[test]
    fn dp_sgd_step_is_noisy_mean_of_clipped_gradients() {
        // Every gradient is (100, 0): clipped to (1, 0). With q = 1 the batch is all rows, the
        // sum is (n, 0), divided by n gives (1, 0) plus noise of sd z·C/n = 0.01·1/1000 = 1e-5.
        let step = DpSgdStep {
            clip_norm: 1.0,
            noise_multiplier: 0.01,
            sampling_rate: 1.0,
        };
        let g = step.noisy_gradient(1000, 2, |_| vec![100.0, 0.0]).unwrap();
        // 10 sd: false failure < 2e-22.
        assert!((g[0] - 1.0).abs() < 1e-4, "{g:?}");
        assert!(g[1].abs() < 1e-4, "{g:?}");
        assert_eq!(
            step.event(),
            DpEvent::PoissonSampledGaussian {
                sampling_rate: 1.0,
                noise_multiplier: 0.01
            }
        );
    }
}
