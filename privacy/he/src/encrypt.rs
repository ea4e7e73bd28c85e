//! Encryption of quantised updates under the collective key, in chunks.
//!
//! An update of `values` coefficients is split into polynomials of `N` values
//! (the last one zero-padded) and the polynomials into chunks of
//! `chunk_polys` each, so that an update streams chunk by chunk and the
//! coordinator sums chunks as they arrive. Value `m` is encoded as `m·Δ` with
//! `Δ = 2^(log2 q − plaintext_bits)` (eprint 2023/603 §4).
//!
//! Chunk wire form: header (8 bytes, see `wire`) ‖ key id (32) ‖ chunk index
//! (u32) ‖ polynomial count (u32) ‖ all masks ‖ all bodies (tfhe's
//! `LweCompactCiphertextList` layout), little-endian words.

use super::error::HeError;
use super::keygen::CollectivePublicKey;
use super::params::HeParams;
use super::wire::{HEADER_LEN, Reader, put_header};
use super::word::Words;
use super::word::{Rng, Word};
use tfhe::conformance::{ListSizeConstraint, ParameterSetConformant};
use tfhe::core_crypto::prelude::{
    CiphertextModulus, LweCiphertextCount, LweCiphertextListConformanceParams,
    LweCompactCiphertextList, LweCompactPublicKeyOwned, LweDimension,
};

/// Most values in one update.
pub const MAX_VALUES: u64 = 1 << 30;
/// Most bytes in one chunk on the wire.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;
/// Default chunk size on the wire (about 1 MiB).
const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

pub(crate) const CHUNK_MAGIC: &[u8; 4] = b"CHCT";
pub(crate) const MASK_CHUNK_MAGIC: &[u8; 4] = b"CHMK";
const VECTOR_MAGIC: &[u8; 4] = b"CHEV";
/// Chunk header: common header, key id, index, polynomial count.
pub(crate) const CHUNK_HEADER_LEN: usize = HEADER_LEN + 32 + 4 + 4;
const VECTOR_HEADER_LEN: usize = HEADER_LEN + 32 + 8 + 4;

/// What an encrypted update looks like: key, committee, length and chunking.
/// Receivers build it from their own configuration and check every input
/// against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Parameter set.
    pub params: HeParams,
    /// [`CollectivePublicKey::key_id`].
    pub key_id: [u8; 32],
    /// Key-generation session id.
    pub session_id: [u8; 32],
    /// Committee size (and the most contributions an aggregate accepts).
    pub parties: u32,
    /// Values per update.
    pub values: u64,
    /// Polynomials per chunk (the last chunk may hold fewer).
    pub chunk_polys: u32,
}

impl Shape {
    /// Shape of `values`-long updates under `key`, in chunks of about 1 MiB.
    pub fn new(key: &CollectivePublicKey, values: u64) -> Result<Self, HeError> {
        let params = key.params();
        let poly_bytes = params.polynomial_size() * params.bytes_per_value();
        let shape = Self {
            params,
            key_id: key.key_id(),
            session_id: key.session().id,
            parties: key.parties(),
            values,
            chunk_polys: (DEFAULT_CHUNK_BYTES / poly_bytes).max(1) as u32,
        };
        shape.validate()?;
        Ok(shape)
    }

    /// The same shape with `chunk_polys` polynomials per chunk.
    pub fn with_chunk_polys(mut self, chunk_polys: u32) -> Result<Self, HeError> {
        self.chunk_polys = chunk_polys;
        self.validate()?;
        Ok(self)
    }

    pub(crate) fn validate(&self) -> Result<(), HeError> {
        if self.values == 0 || self.values > MAX_VALUES {
            return Err(HeError::TooLarge {
                what: "values per update (1..)",
                limit: MAX_VALUES,
                got: self.values,
            });
        }
        if self.chunk_polys == 0 || self.chunk_bytes_for(self.chunk_polys) > MAX_CHUNK_BYTES {
            return Err(HeError::TooLarge {
                what: "chunk size in bytes (at least one polynomial)",
                limit: MAX_CHUNK_BYTES as u64,
                got: self.chunk_bytes_for(self.chunk_polys) as u64,
            });
        }
        Ok(())
    }

    /// `N`.
    pub fn polynomial_size(&self) -> usize {
        self.params.polynomial_size()
    }

    /// Polynomials per update.
    pub fn polys(&self) -> u64 {
        self.values.div_ceil(self.polynomial_size() as u64)
    }

    /// Chunks per update.
    pub fn chunks(&self) -> u32 {
        self.polys().div_ceil(u64::from(self.chunk_polys)) as u32
    }

    /// Polynomials in chunk `index` (0 past the end).
    pub fn polys_in_chunk(&self, index: u32) -> u32 {
        let start = u64::from(index) * u64::from(self.chunk_polys);
        self.polys()
            .saturating_sub(start)
            .min(u64::from(self.chunk_polys)) as u32
    }

    /// First polynomial of chunk `index`.
    pub(crate) fn first_poly(&self, index: u32) -> usize {
        index as usize * self.chunk_polys as usize
    }

    fn chunk_bytes_for(&self, polys: u32) -> usize {
        CHUNK_HEADER_LEN + 2 * polys as usize * self.polynomial_size() * self.params.word_bytes()
    }

    /// Wire bytes of chunk `index`.
    pub fn chunk_bytes(&self, index: u32) -> usize {
        self.chunk_bytes_for(self.polys_in_chunk(index))
    }

    /// Wire bytes of a whole [`EncryptedVector`].
    pub fn vector_bytes(&self) -> usize {
        VECTOR_HEADER_LEN
            + (0..self.chunks())
                .map(|i| self.chunk_bytes(i))
                .sum::<usize>()
    }

    /// Plaintext bits of the sum.
    pub fn plaintext_bits(&self) -> u32 {
        self.params.plaintext_bits(self.parties)
    }

    /// `log2 Δ`.
    pub(crate) fn delta_log(&self) -> u32 {
        self.params.delta_log(self.parties)
    }

    /// Checks one chunk's wire bytes against this shape (header, key, index,
    /// polynomial count, exact length, and tfhe's conformance check of the
    /// list) without keeping them: what a receiver does before storing a
    /// chunk it will add later. Returns the chunk's masks and bodies, as
    /// [`Shape::chunk_parts`] does.
    pub fn check_chunk_bytes<'a>(
        &self,
        index: u32,
        bytes: &'a [u8],
    ) -> Result<(&'a [u8], &'a [u8]), HeError> {
        let payload = self.check_chunk(index, bytes)?;
        let polys = self.polys_in_chunk(index) as usize;
        let ok = match Words::read_le(self.params, payload) {
            Words::W64(w) => conformant(w, self.polynomial_size(), polys),
            Words::W128(w) => conformant(w, self.polynomial_size(), polys),
        };
        if !ok {
            return Err(HeError::NotConformant {
                what: "ciphertext chunk",
            });
        }
        Ok(payload.split_at(payload.len() / 2))
    }

    /// A checked chunk's masks and bodies (the two halves of its payload,
    /// little-endian words): a partial decryption reads only the masks.
    pub fn chunk_parts<'a>(
        &self,
        index: u32,
        bytes: &'a [u8],
    ) -> Result<(&'a [u8], &'a [u8]), HeError> {
        let payload = self.check_chunk(index, bytes)?;
        Ok(payload.split_at(payload.len() / 2))
    }

    /// Wire bytes of the mask form of chunk `index`.
    pub fn mask_chunk_bytes(&self, index: u32) -> usize {
        CHUNK_HEADER_LEN
            + self.polys_in_chunk(index) as usize
                * self.polynomial_size()
                * self.params.word_bytes()
    }

    /// The mask form of chunk `index` (`masks` from [`Shape::chunk_parts`]):
    /// header ‖ key id ‖ index ‖ polynomial count ‖ masks. What key holders
    /// receive to recompute the masks of a sum.
    pub fn mask_chunk(&self, index: u32, masks: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + masks.len());
        put_header(&mut out, MASK_CHUNK_MAGIC, self.params);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&self.polys_in_chunk(index).to_le_bytes());
        out.extend_from_slice(masks);
        out
    }

    /// Checks a mask chunk ([`Shape::mask_chunk`]) against this shape
    /// (header, key, index, polynomial count, length); returns its masks.
    pub fn check_mask_chunk<'a>(&self, index: u32, bytes: &'a [u8]) -> Result<&'a [u8], HeError> {
        self.check_framed(
            index,
            bytes,
            MASK_CHUNK_MAGIC,
            "mask chunk",
            self.mask_chunk_bytes(index),
        )
    }

    /// Checks a chunk's header against this shape; returns its payload.
    pub(crate) fn check_chunk<'a>(&self, index: u32, bytes: &'a [u8]) -> Result<&'a [u8], HeError> {
        self.check_framed(
            index,
            bytes,
            CHUNK_MAGIC,
            "ciphertext chunk",
            self.chunk_bytes(index),
        )
    }

    /// The checks common to both chunk forms: index in range, header (magic
    /// and parameter set), key id, index, polynomial count, exact length.
    fn check_framed<'a>(
        &self,
        index: u32,
        bytes: &'a [u8],
        magic: &[u8; 4],
        what: &'static str,
        len: usize,
    ) -> Result<&'a [u8], HeError> {
        if index >= self.chunks() {
            return Err(HeError::WrongCount {
                what: "chunk index",
                expected: u64::from(self.chunks()),
                got: u64::from(index),
            });
        }
        let mut r = Reader::new(bytes, what);
        r.header(magic, Some(self.params))?;
        if r.array32()? != self.key_id {
            return Err(HeError::WrongKey { what });
        }
        let got_index = r.u32()?;
        if got_index != index {
            return Err(HeError::WrongCount {
                what: "chunk index",
                expected: u64::from(index),
                got: u64::from(got_index),
            });
        }
        let polys = r.u32()?;
        if polys != self.polys_in_chunk(index) {
            return Err(HeError::WrongCount {
                what: "polynomials in chunk",
                expected: u64::from(self.polys_in_chunk(index)),
                got: u64::from(polys),
            });
        }
        r.expect_len(len)?;
        Ok(r.rest())
    }
}

/// An encrypted update: its shape and one wire-form chunk per chunk index.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedVector {
    shape: Shape,
    chunks: Vec<Vec<u8>>,
}

impl std::fmt::Debug for EncryptedVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedVector")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl EncryptedVector {
    /// Shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Wire form of chunk `index`, for streaming and [`super::Aggregate::add_bytes`].
    pub fn chunk(&self, index: u32) -> Option<&[u8]> {
        self.chunks.get(index as usize).map(Vec::as_slice)
    }

    /// All chunks in order.
    pub fn chunks(&self) -> impl DoubleEndedIterator<Item = &[u8]> + ExactSizeIterator {
        self.chunks.iter().map(Vec::as_slice)
    }

    /// Wire form: header ‖ key id ‖ values (u64) ‖ chunk_polys (u32) ‖ chunks.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.shape.vector_bytes());
        put_header(&mut out, VECTOR_MAGIC, self.shape.params);
        out.extend_from_slice(&self.shape.key_id);
        out.extend_from_slice(&self.shape.values.to_le_bytes());
        out.extend_from_slice(&self.shape.chunk_polys.to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out
    }

    /// Splits an untrusted wire form into checked chunks (no copy).
    pub(crate) fn split<'a>(bytes: &'a [u8], shape: &Shape) -> Result<Vec<&'a [u8]>, HeError> {
        shape.validate()?;
        let mut r = Reader::new(bytes, "encrypted vector");
        r.header(VECTOR_MAGIC, Some(shape.params))?;
        if r.array32()? != shape.key_id {
            return Err(HeError::WrongKey {
                what: "encrypted vector",
            });
        }
        let values = r.u64()?;
        if values != shape.values {
            return Err(HeError::WrongCount {
                what: "values",
                expected: shape.values,
                got: values,
            });
        }
        let chunk_polys = r.u32()?;
        if chunk_polys != shape.chunk_polys {
            return Err(HeError::WrongCount {
                what: "polynomials per chunk",
                expected: u64::from(shape.chunk_polys),
                got: u64::from(chunk_polys),
            });
        }
        r.expect_len(shape.vector_bytes())?;
        let mut out = Vec::with_capacity(shape.chunks() as usize);
        for index in 0..shape.chunks() {
            let chunk = r.take(shape.chunk_bytes(index))?;
            shape.check_chunk(index, chunk)?;
            out.push(chunk);
        }
        Ok(out)
    }

    /// Decodes an untrusted wire form; every size, the parameter set
    /// (dimension, modulus), the key and the counts are checked against
    /// `expected_shape` before anything is allocated.
    pub fn from_bytes(bytes: &[u8], expected_shape: &Shape) -> Result<Self, HeError> {
        let chunks = Self::split(bytes, expected_shape)?;
        for (index, chunk) in chunks.iter().enumerate() {
            let payload = &chunk[CHUNK_HEADER_LEN..];
            let polys = expected_shape.polys_in_chunk(index as u32) as usize;
            let conformant = match Words::read_le(expected_shape.params, payload) {
                Words::W64(w) => conformant(w, expected_shape.polynomial_size(), polys),
                Words::W128(w) => conformant(w, expected_shape.polynomial_size(), polys),
            };
            if !conformant {
                return Err(HeError::NotConformant {
                    what: "ciphertext chunk",
                });
            }
        }
        Ok(Self {
            shape: *expected_shape,
            chunks: chunks.into_iter().map(<[u8]>::to_vec).collect(),
        })
    }
}

/// tfhe's conformance check of a chunk as an `LweCompactCiphertextList` of
/// `polys·N` ciphertexts of dimension `N` over the native modulus.
fn conformant<T: Word>(words: Vec<T>, n: usize, polys: usize) -> bool {
    let count = polys * n;
    if words.len() != 2 * count {
        return false;
    }
    let list = LweCompactCiphertextList::from_container(
        words,
        LweDimension(n).to_lwe_size(),
        LweCiphertextCount(count),
        CiphertextModulus::new_native(),
    );
    list.is_conformant(&LweCiphertextListConformanceParams {
        lwe_dim: LweDimension(n),
        lwe_ciphertext_count_constraint: ListSizeConstraint::exact_size(count),
        ct_modulus: CiphertextModulus::new_native(),
    })
}

enum PublicKey {
    W64(LweCompactPublicKeyOwned<u64>),
    W128(LweCompactPublicKeyOwned<u128>),
}

/// Encrypts updates under a collective public key.
pub struct Encryptor {
    key: CollectivePublicKey,
    pk: PublicKey,
    rng: Rng,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// An encryptor for `key`, with its own CSPRNG.
    pub fn new(key: &CollectivePublicKey) -> Self {
        let pk = match &key.body {
            super::word::Words::W64(b) => PublicKey::W64(key.tfhe_key(b)),
            super::word::Words::W128(b) => PublicKey::W128(key.tfhe_key(b)),
        };
        Self {
            key: key.clone(),
            pk,
            rng: Rng::new(),
        }
    }

    /// Shape of a `values`-long update under this key (default chunking).
    pub fn shape(&self, values: usize) -> Result<Shape, HeError> {
        Shape::new(&self.key, values as u64)
    }

    /// Encrypts `values`, each already reduced modulo `2^plaintext_bits`
    /// (see [`super::encode_signed`] for signed values), with the default chunking.
    pub fn encrypt(&mut self, values: &[u64]) -> Result<EncryptedVector, HeError> {
        let shape = self.shape(values.len())?;
        self.encrypt_with_shape(values, &shape)
    }

    /// Encrypts `values` with the chunking of `shape`.
    pub fn encrypt_with_shape(
        &mut self,
        values: &[u64],
        shape: &Shape,
    ) -> Result<EncryptedVector, HeError> {
        if shape.key_id != self.key.key_id() {
            return Err(HeError::WrongKey { what: "shape" });
        }
        shape.validate()?;
        if values.len() as u64 != shape.values {
            return Err(HeError::WrongCount {
                what: "values",
                expected: shape.values,
                got: values.len() as u64,
            });
        }
        let bits = shape.plaintext_bits();
        if let Some((index, &v)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| bits < 64 && **v >> bits != 0)
        {
            return Err(HeError::ValueOutOfRange {
                index,
                value: i128::from(v),
                bits,
            });
        }
        let n = shape.polynomial_size();
        let chunk_values = shape.chunk_polys as usize * n;
        let chunks = (0..shape.chunks())
            .map(|index| {
                let start = index as usize * chunk_values;
                let end = (start + chunk_values).min(values.len());
                self.encrypt_chunk(shape, index, &values[start..end])
            })
            .collect();
        Ok(EncryptedVector {
            shape: *shape,
            chunks,
        })
    }

    /// Encrypts one chunk (values already range-checked).
    fn encrypt_chunk(&mut self, shape: &Shape, index: u32, values: &[u64]) -> Vec<u8> {
        let polys = shape.polys_in_chunk(index);
        let len = polys as usize * shape.polynomial_size();
        let delta_log = shape.delta_log();
        let noise = shape.params.noise_bound_log2();
        let mut out = Vec::with_capacity(shape.chunk_bytes(index));
        put_header(&mut out, CHUNK_MAGIC, shape.params);
        out.extend_from_slice(&shape.key_id);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&polys.to_le_bytes());
        match &self.pk {
            PublicKey::W64(pk) => {
                let words = u64::encrypt(pk, encode(values, len, delta_log), noise, &mut self.rng);
                words.iter().for_each(|w| w.write_le(&mut out));
            }
            PublicKey::W128(pk) => {
                let words = u128::encrypt(pk, encode(values, len, delta_log), noise, &mut self.rng);
                words.iter().for_each(|w| w.write_le(&mut out));
            }
        }
        out
    }
}

/// `m·Δ`, zero-padded to `len`.
fn encode<T: Word>(values: &[u64], len: usize, delta_log: u32) -> Vec<T> {
    let mut out = vec![T::ZERO; len];
    for (o, &v) in out.iter_mut().zip(values) {
        *o = T::from_u64(v).shl_bits(delta_log);
    }
    out
}
