//! The coordinator's running sum of encrypted updates (needs no key).
//!
//! RLWE ciphertexts are additively homomorphic: the coefficient-wise wrapping
//! sum of compact ciphertext lists (masks and bodies alike, tfhe's
//! `lwe_compact_ciphertext_list_add_assign`) encrypts the sum of the plaintexts
//! (eprint 2023/603 §4). Chunks are added straight from their wire bytes.

use sha2::{Digest, Sha256};

use super::encrypt::{EncryptedVector, Shape};
use super::error::HeError;
use super::keygen::hex_prefix;
use super::params::HeParams;
use super::wire::{HEADER_LEN, Reader, put_header};
use super::word::{Word, Words, add_le_bytes};

const AGGREGATE_MAGIC: &[u8; 4] = b"CHAG";

/// A running sum of encrypted updates of one [`Shape`], with the number of
/// contributions per chunk.
#[derive(Clone, PartialEq, Eq)]
pub struct Aggregate {
    shape: Shape,
    /// All chunks' words, chunk after chunk, each as masks then bodies.
    sum: Words,
    counts: Vec<u32>,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("shape", &self.shape)
            .field("contributors", &self.contributors())
            .field("digest", &hex_prefix(&self.digest()))
            .finish()
    }
}

impl Aggregate {
    /// An empty sum for updates of `shape`.
    pub fn new(shape: Shape) -> Result<Self, HeError> {
        shape.validate()?;
        let words = 2 * shape.polys() as usize * shape.polynomial_size();
        Ok(Self {
            shape,
            sum: Words::zeros(shape.params, words),
            counts: vec![0; shape.chunks() as usize],
        })
    }

    /// The key holders' recomputation: the sum of the given wire-form
    /// [`EncryptedVector`]s (each checked against `shape`).
    pub fn from_ciphertexts<'a>(
        shape: Shape,
        vectors: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, HeError> {
        let mut agg = Self::new(shape)?;
        for v in vectors {
            agg.add_vector_bytes(v)?;
        }
        Ok(agg)
    }

    /// Shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Contributions to every chunk (the minimum over chunks).
    pub fn contributors(&self) -> u32 {
        self.counts.iter().copied().min().unwrap_or(0)
    }

    /// Contributions per chunk.
    pub fn chunk_contributors(&self) -> &[u32] {
        &self.counts
    }

    fn chunk_range(&self, index: u32) -> std::ops::Range<usize> {
        let n = self.shape.polynomial_size();
        let start = 2 * self.shape.first_poly(index) * n;
        start..start + 2 * self.shape.polys_in_chunk(index) as usize * n
    }

    fn check_room(&self, index: u32) -> Result<(), HeError> {
        if self.counts[index as usize] >= self.shape.parties {
            return Err(HeError::TooManyContributors {
                chunk: index,
                max: self.shape.parties,
            });
        }
        Ok(())
    }

    /// Adds chunk `chunk_index` of one update, decoding its wire bytes straight
    /// into the running sum. Checks header, key, index, polynomial count and
    /// exact length first; refuses more contributions than the committee size
    /// (the noise budget).
    pub fn add_bytes(&mut self, chunk_index: u32, bytes: &[u8]) -> Result<(), HeError> {
        let payload = self.shape.check_chunk(chunk_index, bytes)?;
        self.check_room(chunk_index)?;
        self.add_payload(chunk_index, payload);
        Ok(())
    }

    fn add_payload(&mut self, index: u32, payload: &[u8]) {
        let range = self.chunk_range(index);
        match &mut self.sum {
            Words::W64(s) => add_le_bytes(&mut s[range], payload),
            Words::W128(s) => add_le_bytes(&mut s[range], payload),
        }
        self.counts[index as usize] += 1;
    }

    /// Mask words of chunk `index` within `words` (this sum's words).
    pub(crate) fn chunk_masks<'a, T: Word>(&self, words: &'a [T], index: u32) -> &'a [T] {
        let start = self.chunk_range(index).start;
        let len = self.shape.polys_in_chunk(index) as usize * self.shape.polynomial_size();
        &words[start..start + len]
    }

    /// The masks of chunk `index` of this sum in mask-chunk wire form
    /// ([`Shape::mask_chunk`]): what the coordinator sends each key holder,
    /// chunk by chunk, instead of every contributor's masks.
    pub fn mask_chunk(&self, index: u32) -> Result<Vec<u8>, HeError> {
        if index >= self.shape.chunks() {
            return Err(HeError::WrongCount {
                what: "chunk index",
                expected: u64::from(self.shape.chunks()),
                got: u64::from(index),
            });
        }
        let mut masks = Vec::with_capacity(self.shape.mask_chunk_bytes(index));
        match &self.sum {
            Words::W64(w) => self
                .chunk_masks(w, index)
                .iter()
                .for_each(|x| x.write_le(&mut masks)),
            Words::W128(w) => self
                .chunk_masks(w, index)
                .iter()
                .for_each(|x| x.write_le(&mut masks)),
        }
        Ok(self.shape.mask_chunk(index, &masks))
    }

    /// A key holder's copy of the sum: sets the masks of chunk `chunk_index`
    /// from their mask-chunk wire form ([`Aggregate::mask_chunk`]), as the
    /// masks of a sum of `contributors` updates, leaving the bodies alone (a
    /// partial decryption reads only the masks and the count, see
    /// [`Aggregate::mask_digest`]). Checks header, key, index, polynomial
    /// count and exact length first; refuses a chunk already set, and a count
    /// of 0 or above the committee size.
    pub fn set_mask_chunk(
        &mut self,
        chunk_index: u32,
        bytes: &[u8],
        contributors: u32,
    ) -> Result<(), HeError> {
        let masks = self.shape.check_mask_chunk(chunk_index, bytes)?;
        if contributors > self.shape.parties {
            return Err(HeError::TooManyContributors {
                chunk: chunk_index,
                max: self.shape.parties,
            });
        }
        if contributors == 0 {
            return Err(HeError::TooFewContributors { have: 0, min: 1 });
        }
        if self.counts[chunk_index as usize] != 0 {
            return Err(HeError::WrongCount {
                what: "times a chunk of the sum's masks is set",
                expected: 1,
                got: 2,
            });
        }
        let range = self.chunk_range(chunk_index);
        let len = self.shape.polys_in_chunk(chunk_index) as usize * self.shape.polynomial_size();
        let range = range.start..range.start + len;
        match &mut self.sum {
            Words::W64(s) => s[range]
                .iter_mut()
                .zip(masks.chunks_exact(8))
                .for_each(|(w, b)| *w = u64::read_le(b)),
            Words::W128(s) => s[range]
                .iter_mut()
                .zip(masks.chunks_exact(16))
                .for_each(|(w, b)| *w = u128::read_le(b)),
        }
        self.counts[chunk_index as usize] = contributors;
        Ok(())
    }

    /// Adds `delta` to mask word `index` (counted over all chunks' masks in
    /// order): a forged sum, for tests of the checks that catch one.
    #[cfg(test)]
    pub(crate) fn add_to_mask_word(&mut self, index: usize, delta: u128) {
        let n = self.shape.polynomial_size();
        let poly = index / n;
        let cp = self.shape.chunk_polys as usize;
        let chunk = (poly / cp) as u32;
        let at = self.chunk_range(chunk).start + (poly % cp) * n + index % n;
        match &mut self.sum {
            Words::W64(s) => s[at] = s[at].wrapping_add(delta as u64),
            Words::W128(s) => s[at] = s[at].wrapping_add(delta),
        }
    }

    /// Adds a whole update in wire form; all of it or nothing.
    pub fn add_vector_bytes(&mut self, bytes: &[u8]) -> Result<(), HeError> {
        let chunks = EncryptedVector::split(bytes, &self.shape)?;
        for index in 0..self.shape.chunks() {
            self.check_room(index)?;
        }
        for (index, payload) in chunks.into_iter().enumerate() {
            let payload = &payload[super::encrypt::CHUNK_HEADER_LEN..];
            self.add_payload(index as u32, payload);
        }
        Ok(())
    }

    /// Adds a whole update; all of it or nothing.
    pub fn add_vector(&mut self, vector: &EncryptedVector) -> Result<(), HeError> {
        if vector.shape() != &self.shape {
            return Err(HeError::WrongKey {
                what: "encrypted vector shape",
            });
        }
        for index in 0..self.shape.chunks() {
            self.check_room(index)?;
        }
        for (index, chunk) in vector.chunks().enumerate() {
            self.add_bytes(index as u32, chunk)?;
        }
        Ok(())
    }

    fn encoded_len(shape: &Shape) -> usize {
        HEADER_LEN
            + 32
            + 32
            + 4
            + 8
            + 4
            + 4 * shape.chunks() as usize
            + 2 * shape.polys() as usize * shape.polynomial_size() * shape.params.word_bytes()
    }

    /// Wire form: header ‖ key id ‖ session id ‖ parties ‖ values ‖ chunk_polys
    /// ‖ per-chunk counts (u32) ‖ sum words.
    pub fn to_bytes(&self) -> Vec<u8> {
        let s = &self.shape;
        let mut out = Vec::with_capacity(Self::encoded_len(s));
        put_header(&mut out, AGGREGATE_MAGIC, s.params);
        out.extend_from_slice(&s.key_id);
        out.extend_from_slice(&s.session_id);
        out.extend_from_slice(&s.parties.to_le_bytes());
        out.extend_from_slice(&s.values.to_le_bytes());
        out.extend_from_slice(&s.chunk_polys.to_le_bytes());
        for c in &self.counts {
            out.extend_from_slice(&c.to_le_bytes());
        }
        self.sum.write_le(&mut out);
        out
    }

    /// Decodes a persisted sum; must match `expected_shape` exactly.
    pub fn from_bytes(bytes: &[u8], expected_shape: &Shape) -> Result<Self, HeError> {
        let s = expected_shape;
        s.validate()?;
        let mut r = Reader::new(bytes, "aggregate");
        r.header(AGGREGATE_MAGIC, Some(s.params))?;
        r.expect_len(Self::encoded_len(s))?;
        if r.array32()? != s.key_id || r.array32()? != s.session_id {
            return Err(HeError::WrongKey { what: "aggregate" });
        }
        let parties = r.u32()?;
        let values = r.u64()?;
        let chunk_polys = r.u32()?;
        for (what, expected, got) in [
            ("parties", u64::from(s.parties), u64::from(parties)),
            ("values", s.values, values),
            (
                "polynomials per chunk",
                u64::from(s.chunk_polys),
                u64::from(chunk_polys),
            ),
        ] {
            if expected != got {
                return Err(HeError::WrongCount {
                    what,
                    expected,
                    got,
                });
            }
        }
        let mut counts = Vec::with_capacity(s.chunks() as usize);
        for _ in 0..s.chunks() {
            let c = r.u32()?;
            if c > s.parties {
                return Err(HeError::TooManyContributors {
                    chunk: counts.len() as u32,
                    max: s.parties,
                });
            }
            counts.push(c);
        }
        let sum = Words::read_le(s.params, r.rest());
        Ok(Self {
            shape: *s,
            sum,
            counts,
        })
    }

    /// SHA-256 of the wire form: key holders compare their recomputed
    /// aggregate's digest with the coordinator's.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"consortia/he/aggregate/v1");
        h.update(self.to_bytes());
        h.finalize().into()
    }

    /// SHA-256 of the shape, the per-chunk contribution counts and the masks
    /// only — everything a partial decryption depends on (it reads the masks
    /// and the count, never the bodies). Decryption shares name the sum by
    /// this digest, so a key holder that received only masks can check what
    /// it opens, and never opens the same masks twice. A coordinator that
    /// altered the bodies would only garble its own result: `body − Σ D_i`
    /// with foreign bodies is uniformly random.
    pub fn mask_digest(&self) -> [u8; 32] {
        let s = &self.shape;
        let mut h = Sha256::new();
        h.update(b"consortia/he/aggregate-masks/v1");
        h.update([s.params.id()]);
        h.update(s.key_id);
        h.update(s.session_id);
        h.update(s.parties.to_le_bytes());
        h.update(s.values.to_le_bytes());
        h.update(s.chunk_polys.to_le_bytes());
        for c in &self.counts {
            h.update(c.to_le_bytes());
        }
        let n = s.polynomial_size();
        let mut buf = Vec::new();
        for index in 0..s.chunks() {
            let start = 2 * s.first_poly(index) * n;
            let len = s.polys_in_chunk(index) as usize * n;
            buf.clear();
            match &self.sum {
                Words::W64(w) => w[start..start + len]
                    .iter()
                    .for_each(|x| x.write_le(&mut buf)),
                Words::W128(w) => w[start..start + len]
                    .iter()
                    .for_each(|x| x.write_le(&mut buf)),
            }
            h.update(&buf);
        }
        h.finalize().into()
    }

    /// Masks (`polys·N` words) and bodies of polynomial `poly` (global index).
    pub(crate) fn poly<'a, T: Word>(
        words: &'a [T],
        shape: &Shape,
        poly: usize,
    ) -> (&'a [T], &'a [T]) {
        let n = shape.polynomial_size();
        let cp = shape.chunk_polys as usize;
        let index = (poly / cp) as u32;
        let within = poly % cp;
        let start = 2 * shape.first_poly(index) * n;
        let polys = shape.polys_in_chunk(index) as usize;
        let mask = &words[start + within * n..start + (within + 1) * n];
        let body = &words[start + (polys + within) * n..start + (polys + within + 1) * n];
        (mask, body)
    }

    pub(crate) fn words(&self) -> &Words {
        &self.sum
    }

    pub(crate) fn params(&self) -> HeParams {
        self.shape.params
    }
}
