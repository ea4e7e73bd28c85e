//! Random linear sketches of ciphertext masks: how a key holder checks, at a
//! cost independent of the number of contributors, that the aggregate it is
//! asked to open is the sum of the contributors' masks.
//!
//! A key holder receives only the aggregate's masks `A` (one vector of
//! `n = polys·N` words of `Z_q`, `q = 2^w` with `w` the word width: 128 bits
//! for Secure128, 64 for Fast64), and from each contributor `i`, signed, the
//! sketch of its own masks `M_i` under a challenge drawn after `A` was fixed.
//! It accepts `A` only if `sketch(A) = Σ_i sketch(M_i)`.
//!
//! **The sketch.** From a 32-byte challenge, a ChaCha20 stream (RFC 8439, via
//! `rand_chacha`, keyed by `SHA-256(tag ‖ challenge ‖ shape)`) yields
//! [`SKETCH_BYTES`] = 10 bytes per mask word; bit `k mod 8` of byte `⌊k/8⌋` of
//! word `j`'s bytes is the coefficient `r_{k,j} ∈ {0,1}`, and
//! `sketch_k(a) = Σ_j r_{k,j}·a_j mod q` for `k < K =` [`SKETCHES`] = 80. It
//! is linear: `sketch(a + b) = sketch(a) + sketch(b)`.
//!
//! **Soundness.** Let `D = A − Σ_i M_i ≠ 0` (fixed before the challenge) and
//! `j` an index with `D_j ≠ 0`. For each `k`, conditioned on every coefficient
//! but `r_{k,j}`, `Σ_j r_{k,j}·D_j ≡ 0 (mod q)` holds for at most one of the
//! two values of `r_{k,j}`: if it held for both, subtracting would give
//! `D_j ≡ 0`. So each of the `K` sketches accepts `D` with probability at most
//! 1/2, and since the `K` coefficient bits of word `j` are independent (a
//! random oracle / PRF stream), all `K` accept with probability at most
//! `2^-80`. One random combination with coefficients in `Z_q` would not do:
//! over `Z_{2^128}` the difference `2^127·e_j` vanishes for every even
//! coefficient, i.e. with probability 1/2.
//!
//! **Cost.** The coefficients are bits, so each sketch is a subset sum; the
//! bucket method computes all 80 at once: word `a_j` is added into
//! `bucket[b][byte_b]` for each of its 10 coefficient bytes (10 wrapping adds
//! per word instead of 80), and at the end `sketch_k` is the sum of the
//! buckets of byte `⌊k/8⌋` whose value has bit `k mod 8` set (80 × 128 adds in
//! all). Mask words are sketched chunk by chunk, in order, as they stream.
//!
//! Wire form of a sketch: header (8 bytes, see `wire`) ‖ 80 little-endian
//! words.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

use super::aggregate::Aggregate;
use super::encrypt::{EncryptedVector, Shape};
use super::error::HeError;
use super::params::HeParams;
use super::wire::{HEADER_LEN, Reader, put_header};
use super::word::{Word, Words};

/// Independent sketches per check (`K`): a wrong aggregate passes with
/// probability at most `2^-SKETCHES`.
pub const SKETCHES: usize = 80;
/// Coefficient bytes drawn per mask word (one bit per sketch).
pub const SKETCH_BYTES: usize = SKETCHES / 8;
const SKETCH_MAGIC: &[u8; 4] = b"CHSK";
const SEED_TAG: &[u8] = b"consortia/he/mask-sketch/v1";

/// The 80 subset sums of a vector of mask words under one challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct Sketch {
    params: HeParams,
    words: Words,
}

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("params", &self.params)
            .field("digest", &hex_prefix(&Sha256::digest(self.to_bytes())))
            .finish()
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl Sketch {
    /// The sketch of nothing (every sum zero): the neutral element of [`Sketch::add`].
    pub fn zero(params: HeParams) -> Self {
        Self {
            params,
            words: Words::zeros(params, SKETCHES),
        }
    }

    /// The sketch of an aggregate's masks (its bodies are not read).
    pub fn of_aggregate(aggregate: &Aggregate, challenge: &[u8; 32]) -> Self {
        let shape = *aggregate.shape();
        let mut s = Sketcher::new(&shape, challenge);
        for index in 0..shape.chunks() {
            match aggregate.words() {
                Words::W64(w) => s.absorb(aggregate.chunk_masks(w, index).iter().copied()),
                Words::W128(w) => s.absorb(aggregate.chunk_masks(w, index).iter().copied()),
            }
            s.next += 1;
        }
        s.sums()
    }

    /// The sketch of an encrypted update's masks.
    pub fn of_vector(vector: &EncryptedVector, challenge: &[u8; 32]) -> Result<Self, HeError> {
        let shape = *vector.shape();
        let mut s = Sketcher::new(&shape, challenge);
        for (index, chunk) in vector.chunks().enumerate() {
            let (masks, _) = shape.chunk_parts(index as u32, chunk)?;
            s.add_chunk_masks(index as u32, masks)?;
        }
        s.finish()
    }

    /// Adds `other` (wrapping, word by word): the sketch of the sum of the two vectors.
    pub fn add(&mut self, other: &Sketch) -> Result<(), HeError> {
        match (&mut self.words, &other.words) {
            (Words::W64(a), Words::W64(b)) => add_words(a, b),
            (Words::W128(a), Words::W128(b)) => add_words(a, b),
            _ => {
                return Err(HeError::WrongParams {
                    expected: self.params,
                    got: other.params.id(),
                });
            }
        }
        Ok(())
    }

    /// Bytes of the wire form under `params`.
    pub const fn encoded_len(params: HeParams) -> usize {
        HEADER_LEN + SKETCHES * params.word_bytes()
    }

    /// Wire form: header ‖ [`SKETCHES`] little-endian words.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::encoded_len(self.params));
        put_header(&mut out, SKETCH_MAGIC, self.params);
        self.words.write_le(&mut out);
        out
    }

    /// Decodes an untrusted sketch of `params`: the length is checked
    /// ([`Sketch::encoded_len`], a few hundred bytes) before anything is decoded.
    pub fn from_bytes(bytes: &[u8], params: HeParams) -> Result<Self, HeError> {
        let mut r = Reader::new(bytes, "mask sketch");
        r.expect_len(Self::encoded_len(params))?;
        r.header(SKETCH_MAGIC, Some(params))?;
        Ok(Self {
            params,
            words: Words::read_le(params, r.rest()),
        })
    }
}

fn add_words<T: Word>(a: &mut [T], b: &[T]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = x.wrapping_add(y);
    }
}

/// `bucket[b][v]`: the sum of the words whose coefficient byte `b` is `v`.
enum Buckets {
    W64(Box<[[u64; 256]; SKETCH_BYTES]>),
    W128(Box<[[u128; 256]; SKETCH_BYTES]>),
}

/// Sketches a vector's masks chunk by chunk, as they stream in (module docs).
pub struct Sketcher {
    shape: Shape,
    next: u32,
    stream: ChaCha20Rng,
    coefficients: Vec<u8>,
    buckets: Buckets,
}

impl std::fmt::Debug for Sketcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketcher")
            .field("shape", &self.shape)
            .field("next_chunk", &self.next)
            .finish_non_exhaustive()
    }
}

impl Sketcher {
    /// A sketch of updates of `shape` under `challenge`. The coefficient
    /// stream is keyed by `SHA-256(tag ‖ challenge ‖ params ‖ key id ‖ values)`.
    pub fn new(shape: &Shape, challenge: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(SEED_TAG);
        h.update(challenge);
        h.update([shape.params.id()]);
        h.update(shape.key_id);
        h.update(shape.values.to_le_bytes());
        let stream = ChaCha20Rng::from_seed(h.finalize().into());
        let buckets = match shape.params {
            HeParams::Fast64 => Buckets::W64(Box::new([[0; 256]; SKETCH_BYTES])),
            HeParams::Secure128 => Buckets::W128(Box::new([[0; 256]; SKETCH_BYTES])),
        };
        Self {
            shape: *shape,
            next: 0,
            stream,
            coefficients: Vec::new(),
            buckets,
        }
    }

    /// Adds the masks of chunk `index` (little-endian words, as
    /// [`Shape::chunk_parts`] returns them); chunks must come in order.
    pub fn add_chunk_masks(&mut self, index: u32, masks: &[u8]) -> Result<(), HeError> {
        if index != self.next || index >= self.shape.chunks() {
            return Err(HeError::WrongCount {
                what: "sketched chunk index",
                expected: u64::from(self.next),
                got: u64::from(index),
            });
        }
        let words = self.shape.polys_in_chunk(index) as usize * self.shape.polynomial_size();
        let bytes = self.shape.params.word_bytes();
        if masks.len() != words * bytes {
            return Err(HeError::WrongSize {
                what: "chunk masks",
                expected: words * bytes,
                got: masks.len(),
            });
        }
        match self.shape.params {
            HeParams::Fast64 => self.absorb(masks.chunks_exact(8).map(u64::read_le)),
            HeParams::Secure128 => self.absorb(masks.chunks_exact(16).map(u128::read_le)),
        }
        self.next += 1;
        Ok(())
    }

    /// Adds `words` into the buckets, drawing [`SKETCH_BYTES`] coefficient bytes per word.
    fn absorb<T: BucketWord>(&mut self, words: impl ExactSizeIterator<Item = T>) {
        self.coefficients.resize(words.len() * SKETCH_BYTES, 0);
        self.stream.fill_bytes(&mut self.coefficients);
        let buckets = T::buckets(&mut self.buckets);
        for (a, c) in words.zip(self.coefficients.chunks_exact(SKETCH_BYTES)) {
            for (bucket, &v) in buckets.iter_mut().zip(c) {
                let slot = &mut bucket[v as usize];
                *slot = slot.wrapping_add(a);
            }
        }
    }

    /// The sketch, once every chunk is in.
    pub fn finish(self) -> Result<Sketch, HeError> {
        if self.next != self.shape.chunks() {
            return Err(HeError::Incomplete {
                what: "chunks of the sketched masks",
                have: self.next,
                need: self.shape.chunks(),
            });
        }
        Ok(self.sums())
    }

    /// `sketch_k = Σ_{v : bit k mod 8 of v} bucket[⌊k/8⌋][v]`.
    fn sums(self) -> Sketch {
        fn sums<T: Word>(buckets: &[[T; 256]; SKETCH_BYTES]) -> Vec<T> {
            (0..SKETCHES)
                .map(|k| {
                    let (byte, bit) = (k / 8, k % 8);
                    buckets[byte]
                        .iter()
                        .enumerate()
                        .filter(|(v, _)| (v >> bit) & 1 == 1)
                        .fold(T::ZERO, |acc, (_, &x)| acc.wrapping_add(x))
                })
                .collect()
        }
        let words = match &self.buckets {
            Buckets::W64(b) => Words::W64(sums(b)),
            Buckets::W128(b) => Words::W128(sums(b)),
        };
        Sketch {
            params: self.shape.params,
            words,
        }
    }
}

/// A word width with its buckets.
trait BucketWord: Word + Copy {
    fn buckets(b: &mut Buckets) -> &mut [[Self; 256]; SKETCH_BYTES];
}

impl BucketWord for u64 {
    fn buckets(b: &mut Buckets) -> &mut [[u64; 256]; SKETCH_BYTES] {
        match b {
            Buckets::W64(b) => b,
            Buckets::W128(_) => unreachable!("buckets are made for the shape's word width"),
        }
    }
}

impl BucketWord for u128 {
    fn buckets(b: &mut Buckets) -> &mut [[u128; 256]; SKETCH_BYTES] {
        match b {
            Buckets::W128(b) => b,
            Buckets::W64(_) => unreachable!("buckets are made for the shape's word width"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CollectiveKeyAggregator, Encryptor, KeySession, KeyShareGen, PartyId};

    fn key(params: HeParams) -> crate::CollectivePublicKey {
        let session = KeySession::new(params, [3; 32]);
        let shares: Vec<_> = (0..3)
            .map(|i| KeyShareGen::new(&session).generate(PartyId(i)))
            .collect();
        let mut agg = CollectiveKeyAggregator::new(&session, 3).unwrap();
        for s in &shares {
            agg.add_commitment(s.public.party(), s.commitment).unwrap();
        }
        for s in shares {
            agg.add_share(s.public.party(), s.public).unwrap();
        }
        agg.finish().unwrap()
    }

    /// Mask words as `T`, in the order the sketch indexes them.
    fn masks<T: Word>(agg: &Aggregate) -> Vec<T>
    where
        Words: AsWords<T>,
    {
        let shape = *agg.shape();
        let w = <Words as AsWords<T>>::get(agg.words());
        (0..shape.chunks())
            .flat_map(|i| agg.chunk_masks(w, i).to_vec())
            .collect()
    }

    trait AsWords<T> {
        fn get(&self) -> &[T];
    }
    impl AsWords<u128> for Words {
        fn get(&self) -> &[u128] {
            match self {
                Words::W128(w) => w,
                Words::W64(_) => panic!("64-bit words"),
            }
        }
    }
    impl AsWords<u64> for Words {
        fn get(&self) -> &[u64] {
            match self {
                Words::W64(w) => w,
                Words::W128(_) => panic!("128-bit words"),
            }
        }
    }

    /// The definition: 80 subset sums, coefficient bit `k mod 8` of byte
    /// `⌊k/8⌋` of each word's 10 stream bytes.
    fn naive<T: Word>(shape: &Shape, challenge: &[u8; 32], words: &[T]) -> Vec<T> {
        let mut s = Sketcher::new(shape, challenge);
        let mut bytes = vec![0u8; words.len() * SKETCH_BYTES];
        s.stream.fill_bytes(&mut bytes);
        (0..SKETCHES)
            .map(|k| {
                words
                    .iter()
                    .zip(bytes.chunks_exact(SKETCH_BYTES))
                    .filter(|(_, c)| (c[k / 8] >> (k % 8)) & 1 == 1)
                    .fold(T::ZERO, |acc, (&a, _)| acc.wrapping_add(a))
            })
            .collect()
    }

    /// A shape of several chunks of one polynomial each, its aggregate of
    /// `n` fresh encryptions, and the encryptions.
    fn setup(params: HeParams, n: usize) -> (Shape, Vec<EncryptedVector>, Aggregate) {
        let k = key(params);
        let values = 3 * params.polynomial_size() as u64 - 5;
        let shape = Shape::new(&k, values).unwrap().with_chunk_polys(1).unwrap();
        let mut enc = Encryptor::new(&k);
        let vectors: Vec<EncryptedVector> = (0..n)
            .map(|i| {
                enc.encrypt_with_shape(&vec![i as u64; values as usize], &shape)
                    .unwrap()
            })
            .collect();
        let mut agg = Aggregate::new(shape).unwrap();
        for v in &vectors {
            agg.add_vector(v).unwrap();
        }
        (shape, vectors, agg)
    }

    #[test]
    fn the_bucket_method_is_the_subset_sum_definition() {
        let (shape, _, agg) = setup(HeParams::Secure128, 2);
        for c in [[0u8; 32], [7; 32], [0xff; 32]] {
            let fast = Sketch::of_aggregate(&agg, &c);
            let want = Words::W128(naive(&shape, &c, &masks::<u128>(&agg)));
            assert!(fast.words == want, "challenge {c:?}");
        }
        let (shape, _, agg) = setup(HeParams::Fast64, 2);
        let c = [9u8; 32];
        assert!(
            Sketch::of_aggregate(&agg, &c).words
                == Words::W64(naive(&shape, &c, &masks::<u64>(&agg)))
        );
    }

    #[test]
    fn sketches_are_linear() {
        for params in [HeParams::Secure128, HeParams::Fast64] {
            let (_, vectors, agg) = setup(params, 3);
            let c = [42u8; 32];
            let mut sum = Sketch::zero(params);
            for v in &vectors {
                sum.add(&Sketch::of_vector(v, &c).unwrap()).unwrap();
            }
            assert_eq!(sum, Sketch::of_aggregate(&agg, &c));
            // Under another challenge the sketch differs.
            assert_ne!(sum, Sketch::of_aggregate(&agg, &[43u8; 32]));
        }
    }

    /// A sum altered by `2^127` in one mask word (and by more) is caught
    /// under every challenge tried: one combination with coefficients in
    /// `Z_q` would miss `2^127·e_j` half the time.
    #[test]
    fn a_forged_difference_of_two_to_the_127_is_caught() {
        let (_, vectors, agg) = setup(HeParams::Secure128, 2);
        let n = 3 * HeParams::Secure128.polynomial_size();
        for (seed, j) in (0u8..16).zip((0..n).step_by(n / 16)) {
            let c = [seed; 32];
            let mut forged = agg.clone();
            forged.add_to_mask_word(j, 1u128 << 127);
            let mut honest = Sketch::zero(HeParams::Secure128);
            for v in &vectors {
                honest.add(&Sketch::of_vector(v, &c).unwrap()).unwrap();
            }
            assert_eq!(honest, Sketch::of_aggregate(&agg, &c));
            assert_ne!(
                honest,
                Sketch::of_aggregate(&forged, &c),
                "challenge {seed}, word {j}"
            );
            // And one sketch alone passes it about half the time: the 80
            // sketches are needed. Across 16 challenges, some sketch word
            // equals the honest one.
            let f = Sketch::of_aggregate(&forged, &c);
            let (Words::W128(a), Words::W128(b)) = (&honest.words, &f.words) else {
                unreachable!()
            };
            let passing = a.iter().zip(b).filter(|(x, y)| x == y).count();
            assert!(
                (10..=70).contains(&passing),
                "{passing} of 80 sketches pass"
            );
        }
    }

    #[test]
    fn the_wire_form_is_checked_before_it_is_decoded() {
        let (_, _, agg) = setup(HeParams::Secure128, 1);
        let s = Sketch::of_aggregate(&agg, &[1; 32]);
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), Sketch::encoded_len(HeParams::Secure128));
        assert_eq!(bytes.len(), 8 + 80 * 16);
        assert_eq!(Sketch::from_bytes(&bytes, HeParams::Secure128).unwrap(), s);
        for bad in [
            &bytes[..bytes.len() - 1],
            &[bytes.as_slice(), &[0]].concat()[..],
            &[][..],
        ] {
            assert!(matches!(
                Sketch::from_bytes(bad, HeParams::Secure128),
                Err(HeError::WrongSize { .. })
            ));
        }
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert!(matches!(
            Sketch::from_bytes(&magic, HeParams::Secure128),
            Err(HeError::BadHeader { .. })
        ));
        // A Secure128 sketch is not a Fast64 one.
        assert!(Sketch::from_bytes(&bytes, HeParams::Fast64).is_err());
        let mut fast = Sketch::zero(HeParams::Fast64);
        assert!(fast.add(&s).is_err());
    }

    #[test]
    fn chunks_are_sketched_in_order_and_whole() {
        let (shape, vectors, _) = setup(HeParams::Secure128, 1);
        let v = &vectors[0];
        let (m0, _) = shape.chunk_parts(0, v.chunk(0).unwrap()).unwrap();
        let (m1, _) = shape.chunk_parts(1, v.chunk(1).unwrap()).unwrap();
        let mut s = Sketcher::new(&shape, &[0; 32]);
        assert!(s.add_chunk_masks(1, m1).is_err());
        assert!(s.add_chunk_masks(0, &m0[1..]).is_err());
        s.add_chunk_masks(0, m0).unwrap();
        assert!(matches!(s.finish(), Err(HeError::Incomplete { .. })));
    }
}
