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
//! - `F` is the flooding (smudging) noise of the decryption shares: every partner
//!   adds TUniform(`b_f`), so `|F| <= K·2^b_f` always.
//!
//! `G` is bounded by `14·sqrt(Var(G))` (Gaussian tail ≈ 2^-146; `G` is a sum of
//! thousands of independent bounded terms). Decoding is exact when
//! `Δ/2 > K·2^b_f + 14·sqrt(Var(G))`, hence a decoding failure probability
//! below 2^-100 per coefficient.
//!
//! Flooding follows the smudging lemma used for the collective key-switching
//! protocol of Mouchet, Troncoso-Pastoriza, Bossuat, Hubaux, "Multiparty
//! Homomorphic Encryption from Ring-Learning-with-Errors", PoPETs 2021(4):
//! the statistical distance between `F_i` and `F_i + G` is at most
//! `14·sqrt(Var(G)) / 2^b_f` per coefficient, with one honest partner's `F_i`
//! alone (the others may collude).

/// Margin, in standard deviations, for the encryption noise bound.
const TAIL_SIGMAS: f64 = 14.0;

/// A parameter set for the multiparty additive scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HeParams {
    /// `q = 2^128` (u128 words), `N = 4096`, binary secret, TUniform(30) noise:
    /// the sizes of tfhe's noise-squashing parameters
    /// (`shortint::parameters::v1_8::noise_squashing`, GlweDimension 2 ×
    /// PolynomialSize 2048 = 4096, `CiphertextModulus::<u128>::new_native()`),
    /// which Zama reports at 128-bit security with the lattice estimator
    /// (`LWE.estimate(LWE.Parameters(n=4096, q=2^128, Xs=Binary, Xe=TUniform(30)))`).
    /// Decryption shares are flooded with at least 2^40 times the bound of
    /// the noise they hide. 32 bytes per value on the wire.
    #[default]
    Secure128,
    /// `q = 2^64` (u64 words), `N = 2048`, binary secret, TUniform(17) noise:
    /// tfhe's compact public-key encryption parameters
    /// (`V1_8_PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`,
    /// `encryption_lwe_dimension: 2048`, `new_t_uniform(17)`; ~134-bit security
    /// per the lattice estimator figures in the tfhe documentation).
    ///
    /// **Decryption shares are only weakly flooded** (2^8 times the noise bound,
    /// statistical distance up to 2^-8 per coefficient): the decrypted sum may
    /// leak information about the key shares' noise to the partners. Use only
    /// where partners and coordinator are trusted not to attack the keys.
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

    /// `log2` of the ratio between each partner's flooding bound and the bound of
    /// the encryption noise it hides.
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
    fn noise_variance(self) -> f64 {
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

    /// `b_f`: each partner's flooding noise is TUniform(b_f), with
    /// `2^b_f >= 2^flooding_ratio_log2 · 14·sqrt(Var(G))`.
    pub fn flood_bound_log2(self, n_partners: u32) -> u32 {
        let bits =
            self.encryption_noise_bound_log2(n_partners) + f64::from(self.flooding_ratio_log2());
        bits.ceil() as u32
    }

    /// `log2 Δ`: the smallest power of two with
    /// `Δ/2 > K·2^b_f + 14·sqrt(Var(G))`.
    pub fn delta_log(self, n_partners: u32) -> u32 {
        let k = f64::from(n_partners.max(1));
        let bound = k * 2f64.powi(self.flood_bound_log2(n_partners) as i32)
            + 2f64.powf(self.encryption_noise_bound_log2(n_partners));
        (2.0 * bound).log2().floor() as u32 + 1
    }

    /// Plaintext bits available for the **sum** of `n_partners` contributions
    /// under an `n_partners`-share key: results are exact modulo
    /// `2^plaintext_bits`, and the decoding failure probability is below
    /// 2^-100 per coefficient. `b`-bit signed updates need
    /// `b + ceil(log2 n_partners)` bits. Values (module docs' model):
    ///
    /// | partners | Secure128 | Fast64 |
    /// |---------:|----------:|-------:|
    /// | 2        | 45        | 26     |
    /// | 3        | 44        | 26     |
    /// | 5        | 43        | 24     |
    /// | 10       | 41        | 22     |
    /// | 20       | 39        | 20     |
    /// | 50       | 36        | 18     |
    /// | 100      | 34        | 16     |
    /// | 1000     | 28        | 10     |
    pub fn plaintext_bits(self, n_partners: u32) -> u32 {
        self.modulus_bits()
            .saturating_sub(self.delta_log(n_partners))
    }
}
