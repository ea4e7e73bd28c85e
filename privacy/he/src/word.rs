//! Ciphertext words (`u64` for Fast64, `u128` for Secure128) and the ring
//! operations each parameter set runs on them.
//!
//! Conventions are tfhe's compact public-key encryption (Joye, eprint 2023/603,
//! §3-4, `tfhe::core_crypto` 1.8.2): with the "semi-reverse" product
//! `a ⊙ r = a · φ(r)` in `Z_q[X]/(X^N+1)` (`φ` reverses the coefficient vector),
//! a public key is `(a, b = a ⊙ s + e)`, an encryption of `m` with binary `r` is
//! `mask = a ⊙ r + e1`, `body_j = (b ⊙ r)_{N-1-j} + e2_j + Δ·m_j`, and
//! `body_j - (mask ⊙ s)_{N-1-j} = Δ·m_j + noise`.

use std::sync::OnceLock;

use tfhe::core_crypto::algorithms::lwe_encryption::re_randomization::rerand_encrypt_lwe_compact_ciphertext_list_with_compact_public_key;
use tfhe::core_crypto::algorithms::slice_algorithms::{
    slice_binary_semi_reverse_negacyclic_convolution, slice_semi_reverse_negacyclic_convolution,
};
use tfhe::core_crypto::commons::math::random::{
    RandomGenerable, RandomGenerator, Uniform, UniformBinary,
};
use tfhe::core_crypto::prelude::*;
use zeroize::Zeroize;

/// Randomness of one encryptor or decryptor: tfhe's AES-CTR CSPRNGs seeded by
/// `new_seeder()` (RDSEED, or the OS).
pub(crate) struct Rng {
    pub(crate) enc: EncryptionRandomGenerator<DefaultRandomGenerator>,
    pub(crate) plain: RandomGenerator<DefaultRandomGenerator>,
}

impl Rng {
    pub(crate) fn new() -> Self {
        let mut seeder = new_seeder();
        let seeder = seeder.as_mut();
        let plain = RandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
        let enc = EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder);
        Self { enc, plain }
    }
}

/// A ciphertext word.
pub(crate) trait Word:
    UnsignedTorus
    + Encryptable<Uniform, TUniform<Self>>
    + RandomGenerable<UniformBinary>
    + Default
    + Zeroize
    + Send
    + Sync
    + 'static
{
    /// Bytes on the wire.
    const BYTES: usize;

    fn read_le(bytes: &[u8]) -> Self;
    fn write_le(self, out: &mut Vec<u8>);
    /// `v mod q`, sign-extended.
    fn from_i128(v: i128) -> Self;
    /// Signed (two's complement) value, saturated to `i128` range.
    fn to_i128(self) -> i128;
    fn from_u64(v: u64) -> Self;
    fn shl_bits(self, bits: u32) -> Self;
    /// `(self >> bits)` truncated to 64 bits.
    fn shr_u64(self, bits: u32) -> u64;

    /// `out = lhs ⊙ rhs` (semi-reverse negacyclic product) for a binary `rhs`.
    fn binary_semi_reverse_conv(out: &mut [Self], lhs: &[Self], rhs_binary: &[Self]);
    /// Semi-reverse negacyclic product of two general (full-width) operands:
    /// tfhe-ntt's exact multi-prime NTT where it has a plan for the dimension,
    /// tfhe's Karatsuba otherwise (the same result either way).
    fn semi_reverse_conv(out: &mut [Self], lhs: &[Self], rhs: &[Self]);

    /// Encrypts `encoded` (a whole number of polynomials, already scaled by Δ)
    /// under `pk` into `out`, laid out as tfhe's `LweCompactCiphertextList`:
    /// all masks, then all bodies.
    fn encrypt(
        pk: &LweCompactPublicKeyOwned<Self>,
        encoded: Vec<Self>,
        noise_bound_log2: u32,
        rng: &mut Rng,
    ) -> Vec<Self>;

    /// Adds TUniform(`bound_log2`) noise to every word of `out`.
    fn add_tuniform(out: &mut [Self], bound_log2: u32, rng: &mut Rng);
    /// Fills `out` with uniform bits.
    fn fill_binary(out: &mut [Self], rng: &mut Rng);
}

impl Word for u64 {
    const BYTES: usize = 8;

    #[inline(always)]
    fn read_le(bytes: &[u8]) -> Self {
        let mut w = [0u8; 8];
        w.copy_from_slice(bytes);
        u64::from_le_bytes(w)
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn from_i128(v: i128) -> Self {
        v as u64
    }
    fn to_i128(self) -> i128 {
        i128::from(self as i64)
    }
    fn from_u64(v: u64) -> Self {
        v
    }
    fn shl_bits(self, bits: u32) -> Self {
        self.checked_shl(bits).unwrap_or(0)
    }
    fn shr_u64(self, bits: u32) -> u64 {
        self.checked_shr(bits).unwrap_or(0)
    }

    fn binary_semi_reverse_conv(out: &mut [Self], lhs: &[Self], rhs_binary: &[Self]) {
        // tfhe's NTT path (native_binary64 plan), eprint 2023/603 §3.
        slice_binary_semi_reverse_negacyclic_convolution(out, lhs, rhs_binary);
    }
    fn semi_reverse_conv(out: &mut [Self], lhs: &[Self], rhs: &[Self]) {
        // a ⊙ r = a · φ(r) (eprint 2023/603 §3): reverse r, then a negacyclic product.
        match plan64(lhs.len()) {
            Some(plan) => {
                let mut reversed: Vec<u64> = rhs.iter().rev().copied().collect();
                plan.negacyclic_polymul(out, lhs, &reversed);
                reversed.zeroize();
            }
            None => slice_semi_reverse_negacyclic_convolution(out, lhs, rhs),
        }
    }

    fn encrypt(
        pk: &LweCompactPublicKeyOwned<Self>,
        encoded: Vec<Self>,
        noise_bound_log2: u32,
        rng: &mut Rng,
    ) -> Vec<Self> {
        let dim = pk.lwe_dimension();
        let count = encoded.len();
        let plaintexts = PlaintextList::from_container(encoded);
        let mut list = LweCompactCiphertextList::new(
            0u64,
            dim.to_lwe_size(),
            LweCiphertextCount(count),
            CiphertextModulus::new_native(),
        );
        let noise = TUniform::<u64>::new(noise_bound_log2);
        rerand_encrypt_lwe_compact_ciphertext_list_with_compact_public_key(
            pk,
            &mut list,
            &plaintexts,
            noise,
            noise,
            rng.enc.noise_generator_mut(),
        );
        list.into_container()
    }

    fn add_tuniform(out: &mut [Self], bound_log2: u32, rng: &mut Rng) {
        rng.plain
            .unsigned_integer_slice_wrapping_add_random_from_distribution_assign(
                out,
                TUniform::<u64>::new(bound_log2),
            );
    }
    fn fill_binary(out: &mut [Self], rng: &mut Rng) {
        rng.plain.fill_slice_with_random_uniform_binary_bits(out);
    }
}

/// tfhe-ntt's negacyclic NTT for `Z_{2^128}[X]/(X^4096+1)` with a binary
/// operand (five 30-bit primes, CRT; exact since `|lhs · rhs| < 4096 · 2^128`).
fn plan128(n: usize) -> Option<&'static tfhe_ntt::native_binary128::Plan32> {
    static PLAN: OnceLock<Option<tfhe_ntt::native_binary128::Plan32>> = OnceLock::new();
    PLAN.get_or_init(|| tfhe_ntt::native_binary128::Plan32::try_new(4096))
        .as_ref()
        .filter(|p| p.ntt_size() == n)
}

/// tfhe-ntt's negacyclic NTT for `Z_{2^64}[X]/(X^2048+1)` with two general
/// operands (five 32-bit primes, CRT; exact since `|lhs · rhs| < 2048 · 2^128`
/// is below their product).
fn plan64(n: usize) -> Option<&'static tfhe_ntt::native64::Plan32> {
    static PLAN: OnceLock<Option<tfhe_ntt::native64::Plan32>> = OnceLock::new();
    PLAN.get_or_init(|| tfhe_ntt::native64::Plan32::try_new(2048))
        .as_ref()
        .filter(|p| p.ntt_size() == n)
}

/// tfhe-ntt's negacyclic NTT for `Z_{2^128}[X]/(X^4096+1)` with two general
/// operands (ten 32-bit primes, CRT; exact since `|lhs · rhs| < 4096 · 2^256`
/// is below their product): the product behind a threshold partial decryption,
/// whose key share is uniform rather than binary.
fn general_plan128(n: usize) -> Option<&'static tfhe_ntt::native128::Plan32> {
    static PLAN: OnceLock<Option<tfhe_ntt::native128::Plan32>> = OnceLock::new();
    PLAN.get_or_init(|| tfhe_ntt::native128::Plan32::try_new(4096))
        .as_ref()
        .filter(|p| p.ntt_size() == n)
}

impl Word for u128 {
    const BYTES: usize = 16;

    #[inline(always)]
    fn read_le(bytes: &[u8]) -> Self {
        let mut w = [0u8; 16];
        w.copy_from_slice(bytes);
        u128::from_le_bytes(w)
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn from_i128(v: i128) -> Self {
        v as u128
    }
    fn to_i128(self) -> i128 {
        self as i128
    }
    fn from_u64(v: u64) -> Self {
        u128::from(v)
    }
    fn shl_bits(self, bits: u32) -> Self {
        self.checked_shl(bits).unwrap_or(0)
    }
    fn shr_u64(self, bits: u32) -> u64 {
        self.checked_shr(bits).unwrap_or(0) as u64
    }

    fn binary_semi_reverse_conv(out: &mut [Self], lhs: &[Self], rhs_binary: &[Self]) {
        // a ⊙ r = a · φ(r) (eprint 2023/603 §3): reverse r, then a negacyclic product.
        let reversed: Vec<u128> = rhs_binary.iter().rev().copied().collect();
        match plan128(lhs.len()) {
            Some(plan) => plan.negacyclic_polymul(out, lhs, &reversed),
            None => slice_semi_reverse_negacyclic_convolution(out, lhs, rhs_binary),
        }
    }
    fn semi_reverse_conv(out: &mut [Self], lhs: &[Self], rhs: &[Self]) {
        match general_plan128(lhs.len()) {
            Some(plan) => {
                let mut reversed: Vec<u128> = rhs.iter().rev().copied().collect();
                plan.negacyclic_polymul(out, lhs, &reversed);
                reversed.zeroize();
            }
            None => slice_semi_reverse_negacyclic_convolution(out, lhs, rhs),
        }
    }

    /// The same computation as tfhe's
    /// `encrypt_lwe_compact_ciphertext_list_with_compact_public_key` (which
    /// would use a Karatsuba product for u128), with tfhe-ntt's binary NTT.
    fn encrypt(
        pk: &LweCompactPublicKeyOwned<Self>,
        mut encoded: Vec<Self>,
        noise_bound_log2: u32,
        rng: &mut Rng,
    ) -> Vec<Self> {
        let n = pk.lwe_dimension().0;
        let polys = encoded.len() / n;
        let (pk_mask, pk_body) = pk.get_mask_and_body();
        let mut out = vec![0u128; 2 * polys * n];
        let (masks, bodies) = out.split_at_mut(polys * n);
        let mut r = vec![0u128; n];
        let mut conv = vec![0u128; n];
        // Body noise e2 goes straight onto Δ·m.
        Self::add_tuniform(&mut encoded, noise_bound_log2, rng);
        for ((mask, body), pt) in masks
            .chunks_exact_mut(n)
            .zip(bodies.chunks_exact_mut(n))
            .zip(encoded.chunks_exact(n))
        {
            Self::fill_binary(&mut r, rng);
            // mask = a ⊙ r + e1
            Self::binary_semi_reverse_conv(mask, pk_mask.as_ref(), &r);
            Self::add_tuniform(mask, noise_bound_log2, rng);
            // body_j = (b ⊙ r)_{N-1-j} + e2_j + Δ·m_j
            Self::binary_semi_reverse_conv(&mut conv, pk_body.as_ref(), &r);
            for ((dst, &c), &p) in body.iter_mut().zip(conv.iter().rev()).zip(pt) {
                *dst = c.wrapping_add(p);
            }
        }
        r.zeroize();
        conv.zeroize();
        out
    }

    fn add_tuniform(out: &mut [Self], bound_log2: u32, rng: &mut Rng) {
        rng.plain
            .unsigned_integer_slice_wrapping_add_random_from_distribution_assign(
                out,
                TUniform::<u128>::new(bound_log2),
            );
    }
    fn fill_binary(out: &mut [Self], rng: &mut Rng) {
        rng.plain.fill_slice_with_random_uniform_binary_bits(out);
    }
}

/// Words of either width.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Words {
    W64(Vec<u64>),
    W128(Vec<u128>),
}

impl Words {
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::W64(v) => v.len(),
            Self::W128(v) => v.len(),
        }
    }

    pub(crate) fn zeros(params: super::HeParams, len: usize) -> Self {
        match params {
            super::HeParams::Fast64 => Self::W64(vec![0; len]),
            super::HeParams::Secure128 => Self::W128(vec![0; len]),
        }
    }

    pub(crate) fn write_le(&self, out: &mut Vec<u8>) {
        match self {
            Self::W64(v) => v.iter().for_each(|w| w.write_le(out)),
            Self::W128(v) => v.iter().for_each(|w| w.write_le(out)),
        }
    }

    /// Decodes `bytes` (already length-checked) as words of `params`.
    pub(crate) fn read_le(params: super::HeParams, bytes: &[u8]) -> Self {
        match params {
            super::HeParams::Fast64 => Self::W64(bytes.chunks_exact(8).map(u64::read_le).collect()),
            super::HeParams::Secure128 => {
                Self::W128(bytes.chunks_exact(16).map(u128::read_le).collect())
            }
        }
    }
}

impl Zeroize for Words {
    fn zeroize(&mut self) {
        match self {
            Self::W64(v) => v.zeroize(),
            Self::W128(v) => v.zeroize(),
        }
    }
}

/// `acc[i] += bytes[i]` (little-endian words), wrapping: the aggregation hot path.
#[inline]
pub(crate) fn add_le_bytes<T: Word>(acc: &mut [T], bytes: &[u8]) {
    for (a, b) in acc.iter_mut().zip(bytes.chunks_exact(T::BYTES)) {
        *a = a.wrapping_add(T::read_le(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tfhe::core_crypto::algorithms::slice_algorithms::slice_semi_reverse_negacyclic_convolution;

    fn random_words<T: Word>(rng: &mut Rng, n: usize) -> Vec<T> {
        let mut v = vec![T::ZERO; n];
        rng.plain.fill_slice_with_random_uniform(&mut v);
        v
    }

    /// The NTT products equal tfhe's schoolbook/Karatsuba semi-reverse product.
    fn conv_matches_reference<T: Word>(n: usize) {
        let mut rng = Rng::new();
        let lhs: Vec<T> = random_words(&mut rng, n);
        let mut rhs = vec![T::ZERO; n];
        T::fill_binary(&mut rhs, &mut rng);
        let mut fast = vec![T::ZERO; n];
        let mut reference = vec![T::ZERO; n];
        T::binary_semi_reverse_conv(&mut fast, &lhs, &rhs);
        slice_semi_reverse_negacyclic_convolution(&mut reference, &lhs, &rhs);
        assert_eq!(fast, reference);
    }

    #[test]
    fn ntt_products_match_tfhe_reference() {
        conv_matches_reference::<u64>(2048);
        conv_matches_reference::<u128>(4096);
    }

    /// The general NTT products equal tfhe's Karatsuba product on full-width
    /// operands, including the extreme words.
    fn general_conv_matches_reference<T: Word>(n: usize) {
        let mut rng = Rng::new();
        let lhs: Vec<T> = random_words(&mut rng, n);
        let mut rhs: Vec<T> = random_words(&mut rng, n);
        rhs[0] = T::MAX;
        rhs[n - 1] = T::ONE.shl_bits(T::BITS as u32 - 1);
        let mut fast = vec![T::ZERO; n];
        let mut reference = vec![T::ZERO; n];
        T::semi_reverse_conv(&mut fast, &lhs, &rhs);
        slice_semi_reverse_negacyclic_convolution(&mut reference, &lhs, &rhs);
        assert!(fast == reference);
    }

    #[test]
    fn general_ntt_products_match_tfhe_reference() {
        general_conv_matches_reference::<u64>(2048);
        general_conv_matches_reference::<u128>(4096);
    }

    /// Ciphertexts decrypt with tfhe's own expansion and LWE decryption.
    fn encryption_matches_tfhe<T: Word>(n: usize, bound: u32, delta_log: u32) {
        let mut seeder = new_seeder();
        let seeder = seeder.as_mut();
        let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
        let mut enc_gen =
            EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder);
        let sk: LweSecretKeyOwned<T> =
            allocate_and_generate_new_binary_lwe_secret_key(LweDimension(n), &mut secret_gen);
        let pk = allocate_and_generate_new_lwe_compact_public_key(
            &sk,
            TUniform::<T>::new(bound),
            CiphertextModulus::new_native(),
            &mut enc_gen,
        );
        let mut rng = Rng::new();
        let messages: Vec<u64> = (0..2 * n as u64).map(|i| i % 1000).collect();
        let encoded: Vec<T> = messages
            .iter()
            .map(|&m| T::from_u64(m).shl_bits(delta_log))
            .collect();
        let words = T::encrypt(&pk, encoded, bound, &mut rng);
        let list = LweCompactCiphertextList::from_container(
            words,
            LweDimension(n).to_lwe_size(),
            LweCiphertextCount(2 * n),
            CiphertextModulus::new_native(),
        );
        let lwe = list.expand_into_lwe_ciphertext_list();
        let mut out = PlaintextList::new(T::ZERO, PlaintextCount(2 * n));
        decrypt_lwe_ciphertext_list(&sk, &lwe, &mut out);
        let half = T::ONE.shl_bits(delta_log - 1);
        let decoded: Vec<u64> = out
            .iter()
            .map(|p| p.0.wrapping_add(half).shr_u64(delta_log))
            .collect();
        assert_eq!(decoded, messages);
    }

    #[test]
    fn encryption_decrypts_with_tfhe() {
        encryption_matches_tfhe::<u64>(2048, 17, 40);
        encryption_matches_tfhe::<u128>(4096, 30, 80);
    }
}
