//! Parameter sets and their noise budget.
//!
//! Both sets are RLWE over `Z_q[X]/(X^N + 1)` with a power-of-two `q`, a binary
//! secret and TUniform noise, as in tfhe's compact public-key encryption
//! (Joye, "Compact public key encryption", eprint 2023/603, §3-4).
//!
//! # Noise model (per coefficient of a decrypted aggregate)
//!
//! `K` partners each hold a binary key share `s_i` and each contributes one
//! ciphertext, so the aggregate sums `n <= K` ciphertexts. With
//! `σ² = (2^(2b+1) + 1)/6` (TUniform(b), tfhe `TUniform::variance`), the phase of
//! the aggregate is `Δ·Σm + G + F` where
//!
//! - `G` is the encryption noise: `Var(G) = n·σ² + n·N·σ²·E[s²] + N·K·σ²·n/4`
//!   (terms: body noise `e2`, mask noise `⟨e1, s⟩`, and the public-key noise
//!   `⟨e_pk, Σr − n/2⟩` left after the bias correction in which every partner
//!   folds `round(n·B_i/2)` of its own key noise into its decryption share;
//!   compact PKE noise analysis, eprint 2023/603 §4).
//!   The committee is signed (odd party ids use `−s_i`), so
//!   `E[s²] = (K + K mod 2)/4` instead of `(K + K²)/4` for `Σ s_i`.
//! - `F = Σ_i F_i` is the flooding (smudging) noise of the decryption shares:
//!   every partner adds independent integer noise of standard deviation
//!   `σ_f = 2^r·B` per coefficient (`r` = [`HeParams::flooding_ratio_log2`],
//!   `B = 14·sqrt(Var(G))` the bound on the noise it hides): `F_i = 2^s·Z + U`
//!   with `Z` an integer Gaussian and `U` a uniform dither on the low
//!   `s = ⌊log2 B⌋ − 2` bits ([`HeParams::flood_dither_bits`], `2^s ≤ B/4`;
//!   sampler and its precision in `flood.rs`).
//!
//! `G` is bounded by `B = 14·sqrt(Var(G))` (Gaussian tail ≈ 2^-146; `G` is a
//! sum of thousands of independent bounded terms). Each `F_i` is within
//! `σ_f·2^-9.9` (dither and the sampler's rounding) of a Gaussian of standard
//! deviation at most σ_f, so `|F| ≤ (12·√K + K·2^-9)·σ_f + K` except with
//! probability `P(|N(0,1)| > 12) < 2^-103`. Decoding is exact when
//! `Δ/2 > (12·√K + K·2^-9)·σ_f + K + B`, hence a decoding failure probability
//! below 2^-100 per coefficient.
//!
//! # Flooding and how many releases a key tolerates
//!
//! Smudging in the sense of the collective key-switching (decryption) protocol
//! of Mouchet, Troncoso-Pastoriza, Bossuat, Hubaux, "Multiparty Homomorphic
//! Encryption from Ring-Learning-with-Errors", PoPETs 2021(4), §4, and of the
//! smudging lemma of Asharov, Jain, López-Alt, Tromer, Vaikuntanathan, Wichs,
//! Eurocrypt 2012 — but with Gaussian rather than uniform noise, so that the
//! loss is measured by the Rényi divergence, which multiplies over
//! coefficients and releases, instead of the statistical distance, which adds
//! up and has no useful bound for uniform smudging after many releases (Bai,
//! Lepoint, Roux-Langlois, Sakzad, Stehlé, Steinfeld, "Improved security
//! proofs in lattice-based cryptography: using the Rényi divergence rather
//! than the statistical distance", J. Cryptology 31, 2018, §2.3).
//!
//! *One coefficient.* With one honest partner `h` (all others colluding with
//! the coordinator), its published coefficient is `c_h + F_h`, where `c_h`
//! depends on its key share. A simulator that knows only the plaintext sum and
//! the colluders' keys can output `c_h + G + F_h` (it knows `c_h + G` from the
//! body, the plaintext and the colluders' `c_j`). Real and simulated views
//! differ by the shift `G`, `|G| ≤ B`. For a discrete Gaussian of σ_f,
//! `D_α(F + G ‖ F) ≤ α·G²/(2σ_f²)` (the Rényi divergence of shifted discrete
//! Gaussians, Canonne, Kamath, Steinke, "The Discrete Gaussian for
//! Differential Privacy", 2020 — the bound behind its zCDP guarantee). The
//! dither turns a shift `G` into a shift of at most `|G|/2^s + 1` units of
//! the coarse Gaussian `Z` (data processing and quasi-convexity, `flood.rs`),
//! the cost of hiding `|G| + 2^s ≤ 1.25·B`: `D_α ≤ 1.5625·α·2^{-2r}/2`.
//!
//! *Composition.* Fresh flooding per coefficient and per release makes the
//! views of `T` published coefficients (all releases under the key together)
//! a product, and the Rényi divergence of a product is the sum of the
//! coefficients' (Bai et al. 2018, §2.3, multiplicativity):
//! `ln R_α(real ‖ sim) ≤ T·1.5625·α·2^{-2r}/2`. Each release thus costs about
//! `(B/σ_f)²·α/2` per published coefficient — `polys·N` coefficients per
//! partner, padding included.
//!
//! *Security loss.* Probability preservation (Bai et al. 2018, §2.3): any
//! attack on the key shares that succeeds with probability `p` given the
//! ciphertexts and plaintext sums alone succeeds with probability at most
//! `(R_α·p)^{1−1/α}` given the decryption shares too. We fix α =
//! [`FLOODING_RENYI_ORDER`] = 64 and allow `ln R_α ≤ 1`, i.e.
//! `p ↦ (e·p)^{63/64}`: an attack of probability 2^-128 stays below 2^-124.6,
//! a loss under 4 bits. The flooding itself allows
//! `T ≤ 2^{2r+1}/(1.5625·α) = 2^{2r−5.64}` coefficients (2^74.3 at r = 40).
//! The sampler's floating-point error (relative η ≲ 2^-27 on each probability
//! of `Z`, `flood.rs`) adds about `α·η² ≲ 2^-48` per coefficient (Prest,
//! "Sharper bounds in lattice-based cryptography using the Rényi divergence",
//! Asiacrypt 2017: a relative error η costs `ln R_α ≈ α·η²/2`), so we cap `T`
//! at [`SAMPLER_COEFFICIENTS_LOG2`] = 2^40 coefficients, where it adds at most
//! 2^-8 to `ln R_α`. [`HeParams::max_flooded_coefficients_log2`] is the
//! smaller of the two and [`HeParams::max_releases_per_key`] turns it into
//! decryptions; the coordinator must re-key before it. The bound `|G| ≤ B`
//! fails with probability `T·2^-146`, which adds to the attack's probability.
//!
//! *Plaintext room.* `σ_f = 2^40·B` fits Secure128's 128-bit modulus (42
//! plaintext bits are left for the sum of 3 partners, table at
//! [`HeParams::plaintext_bits`]). It does not fit Fast64's 64 bits (with
//! `B ≈ 2^27` it would leave none), so Fast64 floods at `r = 8`: 23 bits are
//! left for 3 partners, but at the loss above the key tolerates only
//! `2^{2·8−5.64} ≈ 2^10` flooded coefficients, less than one release of one
//! polynomial (2048 values) — Fast64 is for benchmarks and trusted settings
//! only.

/// Margin, in standard deviations, for the encryption noise bound.
const TAIL_SIGMAS: f64 = 14.0;

/// Margin, in standard deviations, for the partners' summed flooding noise
/// (`P(|N(0,1)| > 12) < 2^-103`).
pub const FLOOD_TAIL_SIGMAS: f64 = 12.0;

/// The Rényi order α at which the flooding's security loss is stated (module
/// docs): with `ln R_α ≤ 1`, an attack's success probability `p` becomes at
/// most `(e·p)^{1−1/α}`.
pub const FLOODING_RENYI_ORDER: f64 = 64.0;

/// `log2` of the most flooded coefficients one key may publish, whatever the
/// flooding ratio, because of the sampler's floating-point precision (module
/// docs).
pub const SAMPLER_COEFFICIENTS_LOG2: u32 = 40;

/// A parameter set for the multiparty additive scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HeParams {
    /// `q = 2^128` (u128 words), `N = 4096`, binary secret, TUniform(30) noise:
    /// the sizes of tfhe's noise-squashing parameters
    /// (`shortint::parameters::v1_8::noise_squashing`, GlweDimension 2 ×
    /// PolynomialSize 2048 = 4096, `CiphertextModulus::<u128>::new_native()`),
    /// which Zama reports at 128-bit security with the lattice estimator
    /// (`LWE.estimate(LWE.Parameters(n=4096, q=2^128, Xs=Binary, Xe=TUniform(30)))`).
    /// Decryption shares are flooded with Gaussian noise of standard deviation
    /// 2^40 times the bound of the noise they hide; a key tolerates 2^40
    /// flooded coefficients ([`HeParams::max_releases_per_key`]).
    /// 32 bytes per value on the wire.
    #[default]
    Secure128,
    /// `q = 2^64` (u64 words), `N = 2048`, binary secret, TUniform(17) noise:
    /// tfhe's compact public-key encryption parameters
    /// (`V1_8_PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`,
    /// `encryption_lwe_dimension: 2048`, `new_t_uniform(17)`; ~134-bit security
    /// per the lattice estimator figures in the tfhe documentation).
    ///
    /// **Decryption shares are only weakly flooded** (Gaussian of standard
    /// deviation 2^8 times the noise bound; 2^40 does not fit in q = 2^64): at
    /// the security loss of the module docs a key tolerates only 2^10 flooded
    /// coefficients, less than one release, and the decrypted sums may leak
    /// information about the key shares to the partners. Use only where
    /// partners and coordinator are trusted not to attack the keys.
    /// 16 bytes per value on the wire.
    Fast64,
}

impl HeParams {
    /// Ring dimension `N`: values per polynomial.
    pub const fn polynomial_size(self) -> usize {
        match self {
            Self::Secure128 => 4096,
            Self::Fast64 => 2048,
        }
    }

    /// `log2 q`.
    pub const fn modulus_bits(self) -> u32 {
        match self {
            Self::Secure128 => 128,
            Self::Fast64 => 64,
        }
    }

    /// Bytes of one ciphertext word (`log2 q / 8`).
    pub const fn word_bytes(self) -> usize {
        self.modulus_bits() as usize / 8
    }

    /// `b` of the TUniform(b) noise of keys and encryptions.
    pub const fn noise_bound_log2(self) -> u32 {
        match self {
            Self::Secure128 => 30,
            Self::Fast64 => 17,
        }
    }

    /// `r`: `log2` of the ratio between each partner's flooding standard
    /// deviation σ_f and the bound `B` of the encryption noise it hides.
    pub const fn flooding_ratio_log2(self) -> u32 {
        match self {
            Self::Secure128 => 40,
            Self::Fast64 => 8,
        }
    }

    /// Ciphertext bytes per encrypted value on the wire (mask and body).
    pub const fn bytes_per_value(self) -> usize {
        2 * self.word_bytes()
    }

    /// Wire identifier.
    pub const fn id(self) -> u8 {
        match self {
            Self::Secure128 => 1,
            Self::Fast64 => 2,
        }
    }

    /// The parameter set with wire identifier `id`.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Secure128),
            2 => Some(Self::Fast64),
            _ => None,
        }
    }

    /// Variance of TUniform(b): `(2^(2b+1) + 1) / 6` (tfhe `TUniform::variance`).
    pub(crate) fn noise_variance(self) -> f64 {
        let b = self.noise_bound_log2() as i32;
        (2f64.powi(2 * b + 1) + 1.0) / 6.0
    }

    /// `E[s²]` of a coefficient of the signed committee's collective secret
    /// `Σ ±s_i` with binary `s_i`: `(K + K mod 2) / 4`.
    fn collective_secret_square(parties: u32) -> f64 {
        f64::from(parties + parties % 2) / 4.0
    }

    /// Model variance of the encryption noise `G` of an aggregate of
    /// `contributors` ciphertexts under a key of `parties` shares (module docs).
    pub fn encryption_noise_variance(self, parties: u32, contributors: u32) -> f64 {
        let n = f64::from(contributors);
        let k = f64::from(parties);
        let dim = self.polynomial_size() as f64;
        let var = self.noise_variance();
        n * var + n * dim * var * Self::collective_secret_square(parties) + dim * k * var * n / 4.0
    }

    /// `log2` of the bound `14·sqrt(Var(G))` on the encryption noise of an
    /// aggregate of `n_partners` contributions under an `n_partners` key.
    pub fn encryption_noise_bound_log2(self, n_partners: u32) -> f64 {
        let var = self.encryption_noise_variance(n_partners.max(1), n_partners.max(1));
        (TAIL_SIGMAS * var.sqrt()).log2()
    }

    /// σ_f: standard deviation of each partner's flooding noise per
    /// coefficient, `2^r · B` with `B = 14·sqrt(Var(G))` for a key of
    /// `n_partners` shares.
    pub fn flood_sigma(self, n_partners: u32) -> f64 {
        2f64.powf(
            self.encryption_noise_bound_log2(n_partners) + f64::from(self.flooding_ratio_log2()),
        )
    }

    /// `s`: the flooding's lowest `s` bits are a uniform dither, `2^s ≤ B/4`
    /// (`s = ⌊log2 B⌋ − 2`; module docs).
    pub fn flood_dither_bits(self, n_partners: u32) -> u32 {
        (self.encryption_noise_bound_log2(n_partners).floor() as u32).saturating_sub(2)
    }

    /// Bound on the summed flooding of `n_partners` shares, exceeded with
    /// probability below 2^-103 per coefficient (module docs):
    /// `(12·√K + K·2^-9)·σ_f + K`.
    pub fn flood_sum_bound(self, n_partners: u32) -> f64 {
        let k = f64::from(n_partners.max(1));
        (FLOOD_TAIL_SIGMAS * k.sqrt() + k * 2f64.powi(-9)) * self.flood_sigma(n_partners) + k
    }

    /// `log2 Δ`: the smallest power of two with
    /// `Δ/2 > (12·√K + K·2^-9)·σ_f + K + 14·sqrt(Var(G))`.
    pub fn delta_log(self, n_partners: u32) -> u32 {
        let bound = self.flood_sum_bound(n_partners)
            + 2f64.powf(self.encryption_noise_bound_log2(n_partners));
        (2.0 * bound).log2().floor() as u32 + 1
    }

    /// `log2` of the most coefficients of flooded decryption shares one key may
    /// publish (all releases and padding together) for an attack's success
    /// probability `p` to stay below `(e·p)^{63/64}` (module docs):
    /// `min(⌊2r − 5.64⌋, 40)` — 40 for Secure128, 10 for Fast64.
    pub const fn max_flooded_coefficients_log2(self) -> u32 {
        let ideal = 2 * self.flooding_ratio_log2() - 6;
        if ideal < SAMPLER_COEFFICIENTS_LOG2 {
            ideal
        } else {
            SAMPLER_COEFFICIENTS_LOG2
        }
    }

    /// How many decryptions of `values`-long aggregates one key tolerates at
    /// the security loss of the module docs: every release publishes
    /// `ceil(values/N)·N` flooded coefficients per partner (at least one
    /// polynomial), and the key may publish
    /// 2^[`max_flooded_coefficients_log2`](Self::max_flooded_coefficients_log2).
    /// Re-key before this many releases. Secure128: 2^40 / (N·polys), e.g.
    /// 2^28 releases of a 4096-value update; Fast64: 0 (even one release of
    /// one polynomial exceeds the stated loss).
    pub fn max_releases_per_key(self, values: u64) -> u64 {
        let n = self.polynomial_size() as u64;
        let coefficients = values.div_ceil(n).max(1).saturating_mul(n);
        (1u64 << self.max_flooded_coefficients_log2()) / coefficients
    }

    /// Plaintext bits available for the **sum** of `n_partners` contributions
    /// under an `n_partners`-share key: results are exact modulo
    /// `2^plaintext_bits`, and the decoding failure probability is below
    /// 2^-100 per coefficient. `b`-bit signed updates need
    /// `b + ceil(log2 n_partners)` bits. Values (module docs' model):
    ///
    /// | partners | Secure128 | Fast64 |
    /// |---------:|----------:|-------:|
    /// | 2        | 43        | 24     |
    /// | 3        | 42        | 23     |
    /// | 5        | 41        | 22     |
    /// | 10       | 39        | 21     |
    /// | 20       | 38        | 19     |
    /// | 50       | 36        | 17     |
    /// | 100      | 34        | 16     |
    /// | 1000     | 29        | 11     |
    ///
    /// (With uniform flooding of bound `2^⌈log2 B + r⌉` per partner, before
    /// the Gaussian flooding, the Secure128 row read 45, 44, 43, 41, 39, 36,
    /// 34, 28: the Gaussian tail costs two bits for small committees and its
    /// `√K` growth gains one for large ones.)
    pub fn plaintext_bits(self, n_partners: u32) -> u32 {
        self.modulus_bits()
            .saturating_sub(self.delta_log(n_partners))
    }
}
