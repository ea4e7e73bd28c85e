//! Flooding noise for partial decryptions: integer samples of standard
//! deviation σ_f (up to about 2^90) whose shift by the decryption noise they
//! hide changes their distribution by a bounded Rényi divergence (params
//! module docs), drawn from a ChaCha20 stream keyed from tfhe's CSPRNG
//! ([`Rng`]).
//!
//! # Why not one rounded floating-point Gaussian, nor OpenDP's sampler
//!
//! A Gaussian computed in `f64` carries 53 significant bits. At σ_f ≈ 2^80 a
//! single `round(σ_f·g)` would leave its lowest ~30 bits structured (the
//! samples lie on a sparse set), and a shift by the decryption noise it must
//! hide (≈ 2^40) would move the sample off that set: no smudging at all.
//! OpenDP's exact discrete-Gaussian sampler ([`consortia_dp::ddg`] uses it for the
//! DDG shares) works on big rationals, about 7 µs per sample — a hundred times
//! the partial decryption's whole cost per value.
//!
//! # Method: `F = 2^s·Z + U`
//!
//! * `U` is uniform on `[−2^(s−1), 2^(s−1))`: the low `s` bits, exact, from the
//!   stream. `s` = [`super::HeParams::flood_dither_bits`], so `2^s ≤ B/4` for
//!   the bound `B` of the noise to hide.
//! * `Z` is an integer Gaussian of standard deviation
//!   `σ_Z = sqrt(σ_f² − (4^s − 1)/12)/2^s` (so that `Var(F) = σ_f²`), about
//!   `2^(r+2)` to `2^(r+3)` for the flooding ratio `r`: a sum of scaled small
//!   Gaussians `Z = Σ_{j<L} 2^{s_j}·Y_j` with `s_0 = 0`, steps
//!   `s_{j+1} − s_j ≤ 13`, and `Y_j = round(σ_j·g_j)` for independent standard
//!   normals `g_j`. Below the top, `σ_j = 8·2^{s_{j+1} − s_j} ≤ 2^16`; the top
//!   level's `σ_{L−1} ∈ (2^15.9, 2^17]` makes `Σ 4^{s_j}·σ_j² = σ_Z²`. Secure128
//!   (σ_Z ≈ 2^42) takes L = 3 levels, Fast64 (σ_Z ≈ 2^11) one.
//!
//! Why the dither is safe: for a fixed shift `e`, `U + e = 2^s·c + U'` with
//! `U'` again uniform and `c ∈ {⌊e/2^s⌋, ⌊e/2^s⌋ + 1}` a function of `U'`, so
//! `F + e = 2^s·(Z + c) + U'`. Conditioned on `U'` this is `Z` shifted by `c`,
//! and by data processing and quasi-convexity of the Rényi divergence
//! `R_α(F + e ‖ F) ≤ max_c R_α(Z + c ‖ Z)` with `|c| ≤ |e|/2^s + 1`: the
//! coarse Gaussian `Z` must hide a shift of `(|e| + 2^s)/2^s` units, i.e. the
//! cost is that of a Gaussian of σ_f hiding `|e| + 2^s ≤ 1.25·B` — a factor
//! `1.25² ≈ 1.56` over a pure discrete Gaussian of σ_f. (A pure one, built
//! with the same levels down to the unit scale, needs twice as many normals:
//! measured ~3× the partial decryption's time instead of ~1.3–1.7×.)
//!
//! Why `Z` is close to a discrete Gaussian: each `Y_j` is a rounded continuous
//! Gaussian, whose probabilities differ from the discrete Gaussian
//! `D_{Z,σ_j}`'s by a relative `≲ x²/(24·σ_j⁴) ≤ 2^-38` over its support. A sum
//! of scaled discrete Gaussians is within a relative (max-log) distance
//! `O(ε)` of `D_{Z,σ_Z}` when every member's σ is at least
//! `√2·‖z‖_∞·η_ε(Z)` for the coefficients `z = (1, 2^k)` of each step: the
//! convolution theorem of Micciancio and Walter, "Gaussian Sampling over the
//! Integers: Efficient, Generic, Constant-Time", CRYPTO 2017 (after Peikert,
//! CRYPTO 2010, Thm 3.1). With ε = 2^-64, `η_ε(Z) ≤ 3.8` and the condition is
//! σ ≥ 5.4·2^k; the levels meet it with σ ≥ 8·2^k below the top and
//! σ_top ≥ 2^15.9 ≥ 5.4·2^13.
//!
//! The normals come from Marsaglia's polar method on 53-bit uniforms
//! `a, b ∈ [−2^52, 2^52)`: `S = a² + b²` and `S − 2^104` are computed exactly
//! in integers (so `ln s` near `s = 1`, where the smallest `g` come from, is
//! `ln_1p` of an exactly known `s − 1`), then `g = (a/2^52)·sqrt(−2·ln s / s)`.
//! The remaining floating-point error is a few ulps of `σ_j·|g| < 2^21`, i.e.
//! ≲ 2^-30 absolute, which moves each integer cell's probability by a relative
//! η ≲ 2^-29 per level and ≲ 2^-27 for `Z`. This is an estimate from the error
//! analysis of `ln_1p`/`sqrt`/rounding, not a proof; its effect on the Rényi
//! divergence is accounted in
//! [`super::HeParams::max_flooded_coefficients_log2`].
//!
//! The stream is ChaCha20 (`rand_chacha`, 256-bit key drawn from tfhe's
//! AES-CTR CSPRNG per partial decryption): tfhe's generator costs tens of ns
//! per word here (no AES-NI at the compiled target level), ChaCha20 a few.
//!
//! Tails: `Z = σ_Z·g + R` with `|R| ≤ max(σ_Z/2^15.9, 1/2)` (the levels'
//! rounding), so `|F − 2^s·σ_Z·g| ≤ σ_f/2^15.9 + 2^s ≤ σ_f·2^-9.9` for a
//! standard normal `g` (as `2^s ≤ σ_f/2^(r+2)`, r ≥ 8), and
//! `P(|F| > 12·σ_f) ≤ P(|g| > 12 − 2^-9.9) < 2^-103`.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroize;

use super::word::{Rng, Word};

/// Largest step `s_{j+1} − s_j` between levels (bits).
const MAX_STEP_BITS: u32 = 13;
/// `log2` of the largest σ of one level: above it the `f64` error of `σ·g`
/// grows past the precision budget of the module docs.
const MAX_LEVEL_SIGMA_LOG2: f64 = 17.0;
/// σ of a level below the top, in units of `2^step` (≥ √2·η_ε(Z) ≈ 5.4 for
/// ε = 2^-64).
const LOWER_LEVEL_SIGMA_PER_STEP: f64 = 8.0;
/// Uniform words drawn from the CSPRNG at a time.
const BUFFER_WORDS: usize = 1024;

/// One level of the coarse Gaussian: `2^shift · round(sigma · g)`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Level {
    shift: u32,
    sigma: f64,
}

/// A sampler of integer flooding noise of standard deviation σ_f (module docs):
/// `F = 2^dither_bits · Z + U`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Flooding {
    dither_bits: u32,
    levels: Vec<Level>,
}

/// Levels of an integer Gaussian of standard deviation `sigma` (module docs).
fn levels_for(sigma: f64) -> Vec<Level> {
    let e = sigma.log2();
    if e <= MAX_LEVEL_SIGMA_LOG2 {
        return vec![Level { shift: 0, sigma }];
    }
    // Top level at 2^top with σ_top = σ/2^top ∈ (2^16, 2^17] before the lower
    // levels' (relative 2^-26) share of the variance is taken out.
    let top = (e - MAX_LEVEL_SIGMA_LOG2).ceil() as u32;
    let steps = top.div_ceil(MAX_STEP_BITS);
    let shifts: Vec<u32> = (0..=steps)
        .map(|j| ((u64::from(j) * u64::from(top)) / u64::from(steps)) as u32)
        .collect();
    let mut levels = Vec::with_capacity(shifts.len());
    let mut lower_var = 0.0;
    for w in shifts.windows(2) {
        let step = w[1] - w[0];
        let s = LOWER_LEVEL_SIGMA_PER_STEP * 2f64.powi(step as i32);
        lower_var += 4f64.powi(w[0] as i32) * s * s;
        levels.push(Level {
            shift: w[0],
            sigma: s,
        });
    }
    let top_sigma = (sigma * sigma - lower_var).max(0.0).sqrt() / 2f64.powi(top as i32);
    levels.push(Level {
        shift: top,
        sigma: top_sigma,
    });
    levels
}

impl Flooding {
    /// The sampler for standard deviation `sigma` (finite, ≥ 1) whose lowest
    /// `dither_bits` bits (at most 62, and `2^dither_bits ≤ sigma/2^10`) are
    /// uniform.
    pub(crate) fn new(sigma: f64, dither_bits: u32) -> Self {
        let sigma = if sigma.is_finite() {
            sigma.max(1.0)
        } else {
            1.0
        };
        let dither_bits = dither_bits
            .min(62)
            .min((sigma.log2() - 10.0).max(0.0) as u32);
        // Var(F) = 4^s·σ_Z² + (4^s − 1)/12 = σ².
        let block = 2f64.powi(dither_bits as i32);
        let sigma_z = (sigma * sigma - (block * block - 1.0) / 12.0).sqrt() / block;
        Self {
            dither_bits,
            levels: levels_for(sigma_z),
        }
    }

    /// Number of levels `L` of `Z` (standard normals per sample).
    #[cfg(test)]
    pub(crate) fn levels(&self) -> usize {
        self.levels.len()
    }

    /// The sampler's standard deviation
    /// `sqrt(4^s·Σ 4^{s_j}·σ_j² + (4^s − 1)/12)` (= the σ asked for).
    #[cfg(test)]
    pub(crate) fn sigma(&self) -> f64 {
        let block = 2f64.powi(self.dither_bits as i32);
        let var_z: f64 = self
            .levels
            .iter()
            .map(|l| 4f64.powi(l.shift as i32) * l.sigma * l.sigma)
            .sum();
        (block * block * var_z + (block * block - 1.0) / 12.0).sqrt()
    }

    /// Writes one sample per element of `out`.
    #[cfg(test)]
    pub(crate) fn sample(&self, out: &mut [i128], rng: &mut Rng) {
        let mut normals = Normals::new(rng);
        for v in out.iter_mut() {
            *v = self.draw(&mut normals);
        }
        normals.zeroize();
    }

    /// Adds one sample to every word of `out`, wrapping modulo `q`.
    pub(crate) fn add_to<T: Word>(&self, out: &mut [T], rng: &mut Rng) {
        let mut normals = Normals::new(rng);
        for w in out.iter_mut() {
            *w = w.wrapping_add(T::from_i128(self.draw(&mut normals)));
        }
        normals.zeroize();
    }

    #[inline]
    fn draw(&self, normals: &mut Normals) -> i128 {
        let mut z = 0i128;
        for l in &self.levels {
            // |σ·g| < 12·2^17: exact in i64; the shifted sum stays below 2^100.
            let y = (l.sigma * normals.next()).round() as i64;
            z += i128::from(y) << l.shift;
        }
        if self.dither_bits == 0 {
            return z;
        }
        // U uniform on [−2^(s−1), 2^(s−1)): the top s bits of a fresh word, centred.
        let s = self.dither_bits;
        let u = i128::from(normals.word() >> (64 - s)) - (1i128 << (s - 1));
        (z << s) + u
    }
}

/// Standard normals from Marsaglia's polar method over a ChaCha20 stream keyed
/// from the decryptor's CSPRNG (module docs).
struct Normals {
    stream: ChaCha20Rng,
    words: Vec<u64>,
    pos: usize,
    spare: Option<f64>,
}

impl Normals {
    /// A fresh ChaCha20 key of 256 bits from `rng` (tfhe's AES-CTR CSPRNG).
    fn new(rng: &mut Rng) -> Self {
        let mut key = [0u8; 32];
        rng.plain.fill_slice_with_random_uniform(&mut key);
        let stream = ChaCha20Rng::from_seed(key);
        key.zeroize();
        Self {
            stream,
            words: vec![0; BUFFER_WORDS],
            pos: BUFFER_WORDS,
            spare: None,
        }
    }

    #[inline]
    fn word(&mut self) -> u64 {
        if self.pos == self.words.len() {
            for w in self.words.iter_mut() {
                *w = self.stream.next_u64();
            }
            self.pos = 0;
        }
        let w = self.words[self.pos];
        self.pos += 1;
        w
    }

    #[inline]
    fn next(&mut self) -> f64 {
        if let Some(g) = self.spare.take() {
            return g;
        }
        const HALF: i64 = 1 << 52;
        const ONE: u128 = 1 << 104;
        let scale = 2f64.powi(-52);
        loop {
            // a, b uniform on [−2^52, 2^52): the top 53 bits of two words.
            let a = (self.word() >> 11) as i64 - HALF;
            let b = (self.word() >> 11) as i64 - HALF;
            // S = (a² + b²) = s·2^104 exactly (< 2^105).
            let s_int = (a.unsigned_abs() as u128).pow(2) + (b.unsigned_abs() as u128).pow(2);
            if s_int == 0 || s_int >= ONE {
                continue;
            }
            // s − 1 exactly in integers, then rounded once to f64.
            let s_minus_one = (s_int as i128 - ONE as i128) as f64 * 2f64.powi(-104);
            let s = s_int as f64 * 2f64.powi(-104);
            let factor = (-2.0 * s_minus_one.ln_1p() / s).sqrt();
            self.spare = Some(b as f64 * scale * factor);
            return a as f64 * scale * factor;
        }
    }
}

impl Zeroize for Normals {
    /// Wipes the buffered words and replaces the ChaCha20 key by zeros
    /// (`rand_chacha` has no `Zeroize`; `black_box` keeps the overwrite from
    /// being elided as a dead store).
    fn zeroize(&mut self) {
        self.words.zeroize();
        self.spare = None;
        self.pos = self.words.len();
        self.stream = ChaCha20Rng::from_seed([0; 32]);
        std::hint::black_box(&mut self.stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeParams;

    #[test]
    fn plans_meet_the_level_conditions() {
        for log_sigma in [0.0, 10.0, 17.0, 17.5, 30.0, 34.7, 42.2, 60.0, 80.2, 90.0] {
            let sigma = 2f64.powf(log_sigma);
            for dither in [0, 24, 38] {
                let f = Flooding::new(sigma, dither);
                assert!(
                    (f.sigma() / sigma - 1.0).abs() < 1e-12,
                    "σ 2^{log_sigma}, dither {dither}: plan gives {}",
                    f.sigma()
                );
                assert!(f64::from(f.dither_bits) <= (log_sigma - 10.0).max(0.0));
                let levels = &f.levels;
                assert_eq!(levels[0].shift, 0);
                for w in levels.windows(2) {
                    let step = w[1].shift - w[0].shift;
                    assert!((1..=MAX_STEP_BITS).contains(&step), "{levels:?}");
                    // Micciancio–Walter: both members of each step at least 5.4·2^step.
                    let least = 5.4 * 2f64.powi(step as i32);
                    assert!(w[0].sigma >= least && w[1].sigma >= least, "{levels:?}");
                }
                assert!(
                    levels
                        .iter()
                        .all(|l| l.sigma <= 2f64.powf(17.0) * 1.000_001)
                );
            }
        }
        // The parameter sets' plans (3 partners): Z of 3 levels for Secure128, 1 for Fast64.
        let plan = |p: HeParams| Flooding::new(p.flood_sigma(3), p.flood_dither_bits(3));
        assert_eq!(plan(HeParams::Secure128).levels(), 3);
        assert_eq!(plan(HeParams::Secure128).dither_bits, 38);
        assert_eq!(plan(HeParams::Fast64).levels(), 1);
        assert_eq!(plan(HeParams::Fast64).dither_bits, 24);
    }

    /// Standard normals: mean 0, variance 1, fourth moment 3. With n = 2^20
    /// draws the standard errors are 2^-10 (mean), √2·2^-10 (variance) and
    /// √96·2^-10 (fourth moment: Var(g⁴) = 105 − 9); each tolerance is over 6
    /// of them, so the test fails by chance with probability below 1e-8.
    #[test]
    fn polar_normals_have_normal_moments() {
        let mut rng = Rng::new();
        let mut normals = Normals::new(&mut rng);
        let n = 1 << 20;
        let (mut m1, mut m2, mut m4) = (0.0, 0.0, 0.0);
        for _ in 0..n {
            let g = normals.next();
            m1 += g;
            m2 += g * g;
            m4 += g * g * g * g;
        }
        let n = f64::from(n);
        let (m1, m2, m4) = (m1 / n, m2 / n, m4 / n);
        assert!(m1.abs() < 0.006, "mean {m1}");
        assert!((m2 - 1.0).abs() < 0.009, "variance {m2}");
        assert!((m4 - 3.0).abs() < 0.06, "fourth moment {m4}");
    }

    /// The flooding of Secure128 and Fast64 decryption shares (3 partners:
    /// σ_f = 2^80.2 and 2^34.7). The sample std of n = 2^16 draws has relative
    /// standard error 1/sqrt(2n) = 2^-8.5 ≈ 0.28 % (the kurtosis is the
    /// normal's up to the dither's relative 2^-20), so the 2 % tolerance is 7
    /// of them, and the mean's tolerance 0.03·σ_f is 7.7 of its standard errors
    /// (σ_f/256): false-failure probability below 1e-11 per parameter set.
    /// The tail bound `P(|F| > 12·σ_f) < 2^-103` per draw (module docs) makes a
    /// draw beyond it a false failure with probability below 2^-87.
    #[test]
    fn flooding_std_and_tail_bound() {
        for params in [HeParams::Secure128, HeParams::Fast64] {
            let sigma = params.flood_sigma(3);
            let f = Flooding::new(sigma, params.flood_dither_bits(3));
            let mut rng = Rng::new();
            let mut samples = vec![0i128; 1 << 16];
            f.sample(&mut samples, &mut rng);
            let n = samples.len() as f64;
            let mean = samples.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = samples
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / (n - 1.0);
            let std = var.sqrt();
            assert!(
                (std / sigma - 1.0).abs() < 0.02,
                "{params:?}: std 2^{:.4} vs σ_f 2^{:.4}",
                std.log2(),
                sigma.log2()
            );
            assert!(mean.abs() < 0.03 * sigma, "{params:?}: mean {mean:e}");
            let worst = samples.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
            assert!(
                (worst as f64) < FLOOD_TAIL * sigma,
                "{params:?}: a sample of 2^{:.2} exceeds 12·σ_f = 2^{:.2}",
                (worst as f64).log2(),
                (FLOOD_TAIL * sigma).log2()
            );
        }
    }

    const FLOOD_TAIL: f64 = crate::FLOOD_TAIL_SIGMAS;

    /// Flooding must be smooth in the low bits, which a single rounded `f64`
    /// Gaussian of σ 2^80 is not: bits 0..4 (the dither) and 40..44 (the
    /// coarse Gaussian's lowest level) of Secure128's samples are uniform.
    /// χ² over 16 classes with 15 degrees of freedom: P(χ² > 60) < 1e-6 for
    /// each, so the test fails by chance with probability below 2e-6.
    #[test]
    fn flooding_low_bits_are_uniform() {
        let p = HeParams::Secure128;
        let f = Flooding::new(p.flood_sigma(3), p.flood_dither_bits(3));
        let mut rng = Rng::new();
        let mut samples = vec![0i128; 1 << 16];
        f.sample(&mut samples, &mut rng);
        for shift in [0u32, 40] {
            let mut counts = [0f64; 16];
            for &v in &samples {
                counts[((v >> shift) & 15) as usize] += 1.0;
            }
            let e = samples.len() as f64 / 16.0;
            let chi2: f64 = counts.iter().map(|c| (c - e).powi(2) / e).sum();
            assert!(chi2 < 60.0, "bits {shift}..{}: χ² = {chi2}", shift + 4);
        }
    }

    #[test]
    fn add_to_wraps_signed_samples() {
        let f = Flooding::new(100.0, 0);
        let mut rng = Rng::new();
        let mut words = vec![0u64; 4096];
        f.add_to(&mut words, &mut rng);
        let signed: Vec<i64> = words.iter().map(|&w| w as i64).collect();
        assert!(signed.iter().any(|&v| v < 0) && signed.iter().any(|&v| v > 0));
        assert!(signed.iter().all(|&v| v.abs() < 1200));
        let mut wide = vec![5u128; 4];
        Flooding::new(1.0, 0).add_to(&mut wide, &mut rng);
        assert!(wide.iter().all(|&w| (w as i128 - 5).abs() < 20));
    }
}
