//! Distributed discrete Gaussian (DDG): Kairouz, Liu, Steinke 2021, "The Distributed Discrete
//! Gaussian Mechanism for Federated Learning with Secure Aggregation" (arXiv 2102.06387),
//! Algorithm 1 (client) and Algorithm 2 (server), privacy by Theorem 1 / Proposition 14.
//!
//! Each partner clips its update, rotates it with a randomised Walsh–Hadamard transform from a
//! shared per-round seed, scales it to integers, rounds it randomly (retrying until the rounded
//! norm is within the bound of Thm 1, Eq. 2 / Prop. 22), adds a share of discrete Gaussian noise
//! and reduces modulo the plaintext modulus 2^bits. The decoder maps the sum back to signed
//! integers, unscales and rotates back.
//!
//! Privacy unit: one partner (add/remove adjacency). Adversary: the coordinator, which sees the
//! decrypted sum, together with up to `t` colluding partners, who know their own noise shares
//! and can subtract them. With `h = n_min − t` (the parameters' [`DdgParams::n_min`]), every sum
//! of n ≥ n_min partners holds at least `h` shares the coalition does not know; each share has
//! variance σ_local² = σ²/h, so the unknown part of the noise has variance ≥ h·σ_local² = σ², and
//! the per-round ρ of [`ddg_round_rho`] is that of those `h` shares alone (KLS21 Thm 1 with
//! n = h). The shares the coalition knows only add noise it can remove; they are not counted.

#[cfg(feature = "mechanisms")]
use dashu::rational::RBig;
#[cfg(feature = "mechanisms")]
use opendp::traits::samplers::{sample_bernoulli_float, sample_discrete_gaussian};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::accountant::DpEvent;
use super::error::DpError;
#[cfg(feature = "mechanisms")]
use super::mechanism::clip_l2;

/// `DEFAULT_BETA` of the reference code: conditional rounding parameter β = e^{-1/2}.
pub const DEFAULT_BETA: f64 = 0.606_530_659_712_633_4;

/// Standard deviations of the aggregate that must fit in half the modulus (KLS21 §5, `k = 4`
/// in `ddgauss_params`): a coordinate wraps with probability ≲ 6e-5.
pub const DEFAULT_K_STDDEVS: f64 = 4.0;

/// Rounding attempts before giving up. Each attempt fails with probability at most β
/// (KLS21 Thm 1 / Prop. 22), so with β = e^{-1/2} 200 attempts all fail with probability
/// below e^{-100}.
pub const MAX_ROUNDING_ATTEMPTS: u32 = 200;

/// Public parameters of one DDG round, validated at construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdgParams {
    dim: usize,
    padded_dim: usize,
    clip: f64,
    gamma: f64,
    beta: f64,
    local_sigma: f64,
    n_min: usize,
    bits: u32,
}

impl DdgParams {
    /// Parameters given explicitly.
    ///
    /// * `dim` — update length d (padded to the next power of two d' for the rotation);
    /// * `clip` — L2 clip c of each partner's update (real units);
    /// * `gamma` — granularity γ: one integer step is γ real units;
    /// * `beta` — conditional rounding parameter β ∈ [0, 1) (0 = unconditional rounding);
    /// * `local_sigma` — each partner's discrete Gaussian σ in integer units;
    /// * `n_min` — `h`: least number of noise shares in every sum that the adversary does not
    ///   know (honest, non-dropped partners: the task's `min_partners − colluders`); ρ is
    ///   charged for these shares only;
    /// * `bits` — plaintext modulus 2^bits, 2 ≤ bits ≤ 62.
    pub fn new(
        dim: usize,
        clip: f64,
        gamma: f64,
        beta: f64,
        local_sigma: f64,
        n_min: usize,
        bits: u32,
    ) -> Result<Self, DpError> {
        if dim == 0 || dim > (1 << 30) {
            return Err(DpError::InvalidParameter {
                name: "dimension",
                value: dim.to_string(),
                hint: "the update must have between 1 and 2^30 coordinates",
            });
        }
        if !(clip.is_finite() && clip > 0.0) {
            return Err(DpError::InvalidClipNorm(clip));
        }
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(DpError::InvalidParameter {
                name: "gamma",
                value: gamma.to_string(),
                hint: "the granularity gamma must be finite and > 0",
            });
        }
        if !(0.0..1.0).contains(&beta) {
            return Err(DpError::InvalidParameter {
                name: "beta",
                value: beta.to_string(),
                hint: "beta must be in [0, 1); e^-0.5 is the usual choice",
            });
        }
        if !(local_sigma.is_finite() && local_sigma > 0.0) {
            return Err(DpError::InvalidParameter {
                name: "local sigma",
                value: local_sigma.to_string(),
                hint: "each partner's noise sigma (integer units) must be finite and > 0",
            });
        }
        if n_min == 0 {
            return Err(DpError::InvalidParameter {
                name: "n_min",
                value: "0".into(),
                hint: "at least one honest partner must contribute noise",
            });
        }
        if !(2..=62).contains(&bits) {
            return Err(DpError::InvalidParameter {
                name: "bits",
                value: bits.to_string(),
                hint: "the plaintext modulus must be 2^bits with 2 <= bits <= 62",
            });
        }
        let params = Self {
            dim,
            padded_dim: dim.next_power_of_two(),
            clip,
            gamma,
            beta,
            local_sigma,
            n_min,
            bits,
        };
        let bound = params.norm_bound();
        if bound >= (1u64 << (bits - 1)) as f64 {
            return Err(DpError::Overflow {
                value: format!("norm bound {bound:.1}"),
                bits,
            });
        }
        Ok(params)
    }

    /// Calibrated parameters for a central noise multiplier `noise_multiplier` (central σ =
    /// z·c when `n_min` honest partners contribute), summing up to `n_clients` updates in a
    /// `bits`-bit modulus, β = [`DEFAULT_BETA`].
    ///
    /// γ follows KLS21 §5 / `ddgauss_params` with k = [`DEFAULT_K_STDDEVS`] and flatness ρ = 1:
    /// `2^bits = 2k·sqrt(c²n²/d' + (γ²/4 + σ²)·n)/γ` with σ = z·c/√n_min the local real std, i.e.
    /// `1/γ = sqrt(4^bits − n·k²) / (2k·sqrt(c²n²/d' + n·σ²))` (the γ²/4 term moved left).
    pub fn calibrate(
        dim: usize,
        clip: f64,
        noise_multiplier: f64,
        n_min: usize,
        n_clients: usize,
        bits: u32,
    ) -> Result<Self, DpError> {
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(DpError::InvalidNoiseMultiplier(noise_multiplier));
        }
        if n_min == 0 || n_clients < n_min {
            return Err(DpError::InvalidParameter {
                name: "n_clients",
                value: n_clients.to_string(),
                hint: "the number of summed updates must be >= n_min >= 1",
            });
        }
        if !(2..=62).contains(&bits) {
            return Err(DpError::InvalidParameter {
                name: "bits",
                value: bits.to_string(),
                hint: "the plaintext modulus must be 2^bits with 2 <= bits <= 62",
            });
        }
        let k = DEFAULT_K_STDDEVS;
        let n = n_clients as f64;
        let d = dim.max(1).next_power_of_two() as f64;
        let sigma_real = noise_multiplier * clip / (n_min as f64).sqrt();
        let headroom = 4f64.powi(bits as i32) - n * k * k;
        if headroom.is_nan() || headroom <= 0.0 {
            return Err(DpError::InvalidParameter {
                name: "bits",
                value: bits.to_string(),
                hint: "the modulus is too small for this many partners: raise `bits`",
            });
        }
        let inv_gamma = headroom.sqrt()
            / (2.0 * k * (clip * clip * n * n / d + n * sigma_real * sigma_real).sqrt());
        let gamma = 1.0 / inv_gamma;
        Self::new(
            dim,
            clip,
            gamma,
            DEFAULT_BETA,
            sigma_real / gamma,
            n_min,
            bits,
        )
    }

    /// Update length d.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Padded length d' = next power of two ≥ d (the length of encoded vectors).
    pub fn padded_dim(&self) -> usize {
        self.padded_dim
    }
    /// L2 clip c.
    pub fn clip(&self) -> f64 {
        self.clip
    }
    /// Granularity γ.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }
    /// Conditional rounding parameter β.
    pub fn beta(&self) -> f64 {
        self.beta
    }
    /// Each partner's discrete Gaussian σ (integer units).
    pub fn local_sigma(&self) -> f64 {
        self.local_sigma
    }
    /// `h`: honest noise shares (unknown to the coordinator and its colluders) guaranteed in
    /// every sum; the privacy analysis counts only these.
    pub fn n_min(&self) -> usize {
        self.n_min
    }
    /// Bits of the plaintext modulus.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// The plaintext modulus 2^bits.
    pub fn modulus(&self) -> u64 {
        1u64 << self.bits
    }

    /// L2 bound Δ₂ on the rounded, scaled vector (integer units), KLS21 Thm 1 Eq. 2 and
    /// Prop. 22 (`rounded_l2_norm_bound` of the reference code):
    /// `Δ₂ = min{ c/γ + √d',  sqrt(c²/γ² + d'/4 + sqrt(2 ln(1/β))·(c/γ + √d'/2)) }`,
    /// the second term only when β > 0.
    pub fn norm_bound(&self) -> f64 {
        let c = self.clip / self.gamma;
        let d = self.padded_dim as f64;
        let bound1 = c + d.sqrt();
        if self.beta == 0.0 {
            return bound1;
        }
        let sq2 = c * c + 0.25 * d + (2.0 * (1.0 / self.beta).ln()).sqrt() * (c + 0.5 * d.sqrt());
        bound1.min(sq2.sqrt())
    }

    /// L1 bound Δ₁ = Δ₂·min(√d', Δ₂) (reference code `rounded_l1_norm_bound`).
    pub fn l1_bound(&self) -> f64 {
        let l2 = self.norm_bound();
        l2 * (self.padded_dim as f64).sqrt().min(l2)
    }

    /// τ of KLS21 Thm 1: `τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1))` with σ the local integer std
    /// and n = n_min: how far a sum of n discrete Gaussians is from one discrete Gaussian.
    pub fn tau(&self) -> f64 {
        let s2 = self.local_sigma * self.local_sigma;
        let pi2 = std::f64::consts::PI * std::f64::consts::PI;
        10.0 * (1..self.n_min)
            .map(|k| {
                let k = k as f64;
                (-2.0 * pi2 * s2 * k / (k + 1.0)).exp()
            })
            .sum::<f64>()
    }

    /// The accountant event of one round: `DpEvent::Zcdp { rho: ddg_round_rho(self) }`.
    pub fn round_event(&self) -> DpEvent {
        DpEvent::Zcdp {
            rho: ddg_round_rho(self),
        }
    }
}

/// ρ-zCDP of one DDG round for one partner (add/remove), KLS21 Thm 1 and Prop. 14 / Eq. 17,
/// keeping the pure-zCDP branches (so the event composes in OpenDP and in the RDP accountant):
///
/// `l2 = Δ₂/(√n·σ)`, `l1 = Δ₁/(√n·σ)`, with n = [`DdgParams::n_min`] (the honest shares `h`,
/// not the colluders' shares the adversary can subtract) and σ the local integer std;
/// `ρ = ½·min{ (l2 + τ√d')²,  l2² + 2·l1·τ + τ²·d' }`.
pub fn ddg_round_rho(params: &DdgParams) -> f64 {
    let central = (params.n_min as f64).sqrt() * params.local_sigma;
    let l2 = params.norm_bound() / central;
    let l1 = params.l1_bound() / central;
    let tau = params.tau();
    let d = params.padded_dim as f64;
    let a = (l2 + tau * d.sqrt()).powi(2);
    let b = l2 * l2 + 2.0 * l1 * tau + tau * tau * d;
    0.5 * a.min(b)
}

/// Random ±1 signs of the rotation's diagonal D, from the round's shared 32-byte seed
/// (ChaCha20; every partner and the decoder derive the same signs).
fn rademacher_signs(seed: &[u8; 32], n: usize) -> Vec<f64> {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    let mut signs = Vec::with_capacity(n);
    let mut word = 0u32;
    for i in 0..n {
        if i % 32 == 0 {
            word = rng.next_u32();
        }
        signs.push(if (word >> (i % 32)) & 1 == 1 {
            1.0
        } else {
            -1.0
        });
    }
    signs
}

/// In-place normalised fast Walsh–Hadamard transform H/√n (n a power of two). H/√n is
/// symmetric and orthogonal, hence its own inverse.
fn fwht_normalised(v: &mut [f64]) {
    let n = v.len();
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            for j in start..start + h {
                let (a, b) = (v[j], v[j + h]);
                v[j] = a + b;
                v[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let norm = 1.0 / (n as f64).sqrt();
    v.iter_mut().for_each(|x| *x *= norm);
}

/// Randomised Hadamard rotation x ↦ (H/√d')·D·x of the zero-padded input (KLS21 §4, "flattening").
pub fn rotate(x: &[f64], padded_dim: usize, seed: &[u8; 32]) -> Result<Vec<f64>, DpError> {
    if !padded_dim.is_power_of_two() || x.len() > padded_dim {
        return Err(DpError::LengthMismatch {
            expected: padded_dim,
            got: x.len(),
        });
    }
    let signs = rademacher_signs(seed, padded_dim);
    let mut v = vec![0.0; padded_dim];
    v[..x.len()].copy_from_slice(x);
    v.iter_mut().zip(&signs).for_each(|(a, s)| *a *= s);
    fwht_normalised(&mut v);
    Ok(v)
}

/// Inverse rotation y ↦ D·(H/√d')·y, truncated to `dim` (removes the padding).
pub fn inverse_rotate(y: &[f64], dim: usize, seed: &[u8; 32]) -> Result<Vec<f64>, DpError> {
    if !y.len().is_power_of_two() || dim > y.len() {
        return Err(DpError::LengthMismatch {
            expected: dim.next_power_of_two(),
            got: y.len(),
        });
    }
    let signs = rademacher_signs(seed, y.len());
    let mut v = y.to_vec();
    fwht_normalised(&mut v);
    v.iter_mut().zip(&signs).for_each(|(a, s)| *a *= s);
    v.truncate(dim);
    Ok(v)
}

/// Reduces a signed integer into [0, 2^bits).
pub fn wrap(value: i64, bits: u32) -> u64 {
    let m = 1i128 << bits;
    (i128::from(value).rem_euclid(m)) as u64
}

/// Maps a residue in [0, 2^bits) to the signed representative in [−2^(bits−1), 2^(bits−1)).
pub fn unwrap_signed(value: u64, bits: u32) -> i64 {
    let m = 1i128 << bits;
    let v = i128::from(value) % m;
    (if v >= m / 2 { v - m } else { v }) as i64
}

/// Adds `other` into `acc` modulo 2^bits (what the homomorphic sum computes).
pub fn add_mod(acc: &mut [u64], other: &[u64], bits: u32) -> Result<(), DpError> {
    if acc.len() != other.len() {
        return Err(DpError::LengthMismatch {
            expected: acc.len(),
            got: other.len(),
        });
    }
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    acc.iter_mut()
        .zip(other)
        .for_each(|(a, b)| *a = a.wrapping_add(*b) & mask);
    Ok(())
}

/// Conditional randomised rounding (KLS21 Alg. 1 step 4): round each coordinate up with
/// probability equal to its fractional part (OpenDP Bernoulli sampler), and resample the whole
/// vector until its L2 norm is at most `bound`.
#[cfg(feature = "mechanisms")]
fn conditional_round(x: &[f64], bound: f64) -> Result<Vec<i64>, DpError> {
    for _ in 0..MAX_ROUNDING_ATTEMPTS {
        let mut out = Vec::with_capacity(x.len());
        let mut norm2 = 0.0;
        for &v in x {
            let floor = v.floor();
            let frac = v - floor;
            let up = frac > 0.0 && sample_bernoulli_float(frac, false)?;
            let r = floor + if up { 1.0 } else { 0.0 };
            if r.abs() >= 9.0e15 {
                return Err(DpError::Overflow {
                    value: r.to_string(),
                    bits: 53,
                });
            }
            norm2 += r * r;
            out.push(r as i64);
        }
        if norm2.sqrt() <= bound {
            return Ok(out);
        }
    }
    Err(DpError::RoundingFailed {
        attempts: MAX_ROUNDING_ATTEMPTS,
        bound,
    })
}

/// Client side of one DDG round (KLS21 Alg. 1): clip to c, rotate with the shared `seed`, scale
/// by 1/γ, conditionally round, add `N_Z(0, σ²)` per coordinate (OpenDP
/// `sample_discrete_gaussian`, CKS20 Alg. 3), reduce modulo 2^bits. Returns d' residues.
#[cfg(feature = "mechanisms")]
pub fn encode(params: &DdgParams, update: &[f64], seed: &[u8; 32]) -> Result<Vec<u64>, DpError> {
    encode_with(params, update, seed, true)
}

/// Client side for the record unit: `sum` is a partner's sum of per-row clipped gradients
/// (norm up to rows·C), so it is not clipped again and is rounded unconditionally; needs
/// β = 0, under which the rounded vectors of neighbouring sums differ by at most `C/γ + √d'`
/// ([`DdgParams::norm_bound`]). Otherwise as [`encode`].
#[cfg(feature = "mechanisms")]
pub fn encode_sum(params: &DdgParams, sum: &[f64], seed: &[u8; 32]) -> Result<Vec<u64>, DpError> {
    if params.beta != 0.0 {
        return Err(DpError::InvalidParameter {
            name: "beta",
            value: params.beta.to_string(),
            hint: "a sum of clipped rows is rounded unconditionally: use beta = 0",
        });
    }
    encode_with(params, sum, seed, false)
}

#[cfg(feature = "mechanisms")]
fn encode_with(
    params: &DdgParams,
    update: &[f64],
    seed: &[u8; 32],
    clip: bool,
) -> Result<Vec<u64>, DpError> {
    if update.len() != params.dim {
        return Err(DpError::LengthMismatch {
            expected: params.dim,
            got: update.len(),
        });
    }
    if let Some(index) = update.iter().position(|v| !v.is_finite()) {
        return Err(DpError::NonFinite {
            index,
            value: update[index],
        });
    }
    let mut clipped = update.to_vec();
    if clip {
        clip_l2(&mut clipped, params.clip);
    }
    let mut rotated = rotate(&clipped, params.padded_dim, seed)?;
    let inv_gamma = 1.0 / params.gamma;
    rotated.iter_mut().for_each(|v| *v *= inv_gamma);
    let bound = if clip {
        params.norm_bound()
    } else {
        f64::INFINITY
    };
    let rounded = conditional_round(&rotated, bound)?;
    let sigma = RBig::try_from(params.local_sigma).map_err(|_| DpError::InvalidParameter {
        name: "local sigma",
        value: params.local_sigma.to_string(),
        hint: "sigma must be finite",
    })?;
    let mut out = Vec::with_capacity(rounded.len());
    for r in rounded {
        let noise = sample_discrete_gaussian(sigma.clone())?;
        let noise = i64::try_from(noise.clone()).map_err(|_| DpError::Overflow {
            value: noise.to_string(),
            bits: 64,
        })?;
        let y = r.checked_add(noise).ok_or(DpError::Overflow {
            value: format!("{r} + {noise}"),
            bits: 64,
        })?;
        out.push(wrap(y, params.bits));
    }
    Ok(out)
}

/// Server side (KLS21 Alg. 2): map the modular sum to signed integers, multiply by γ and undo
/// the rotation. Returns the (noisy) SUM of the partners' clipped updates, length d; divide by
/// the number of partners for the mean.
pub fn decode(params: &DdgParams, sum: &[u64], seed: &[u8; 32]) -> Result<Vec<f64>, DpError> {
    if sum.len() != params.padded_dim {
        return Err(DpError::LengthMismatch {
            expected: params.padded_dim,
            got: sum.len(),
        });
    }
    let scaled: Vec<f64> = sum
        .iter()
        .map(|&v| unwrap_signed(v, params.bits) as f64 * params.gamma)
        .collect();
    inverse_rotate(&scaled, params.dim, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hadamard_is_orthonormal() {
        let mut e = vec![0.0; 8];
        e[3] = 1.0;
        fwht_normalised(&mut e);
        let n: f64 = e.iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-15);
        assert!(
            e.iter()
                .all(|v| (v.abs() - 8f64.sqrt().recip()).abs() < 1e-15)
        );
    }

    #[test]
    fn signs_depend_on_seed() {
        let a = rademacher_signs(&[1; 32], 64);
        let b = rademacher_signs(&[2; 32], 64);
        assert_ne!(a, b);
        assert_eq!(a, rademacher_signs(&[1; 32], 64));
        assert!(a.iter().all(|s| *s == 1.0 || *s == -1.0));
    }

    #[test]
    fn beta_zero_bound_is_plain() {
        let p = DdgParams::new(3, 1.0, 0.01, 0.0, 5.0, 4, 20).unwrap();
        assert_eq!(p.padded_dim(), 4);
        assert!((p.norm_bound() - (100.0 + 2.0)).abs() < 1e-12);
    }
}
