//! Joint decryption: every partner's flooded partial decryption, then the
//! combination into the plaintext sum.
//!
//! Protocol CKS (collective key switching to the zero key, i.e. decryption) of
//! Mouchet et al., PoPETs 2021(4), Lattigo `multiparty.KeySwitchProtocol` with
//! noise flooding: partner `i` publishes `D_i[j] = ±(mask ⊙ s_i)_{N-1-j} +
//! round(n·B_i[j]/2) + F_i[j]` with `F_i[j]` integer flooding noise of
//! standard deviation σ_f = 2^r·B ([`HeParams::flood_sigma`]): a discrete
//! Gaussian on multiples of `2^s ≤ B/4` plus a uniform dither on the low `s`
//! bits (sampler in `flood.rs`);
//! anyone holding all `K` shares computes `body − Σ D_i = Δ·Σm + G − ΣF_i` and
//! rounds (params module docs for `B_i`, `B`, σ_f and the bounds).
//!
//! Flooding hides the decryption noise `G` (which depends on the key shares)
//! from the partners and the coordinator: each published coefficient costs
//! `(B/σ_f)²·α/2` of Rényi divergence of order α, and one key may publish
//! [`HeParams::max_flooded_coefficients_log2`] coefficients in all
//! ([`HeParams::max_releases_per_key`] decryptions) at the security loss the
//! params module docs derive (Mouchet et al. PoPETs 2021 §4; Bai et al. J.
//! Cryptology 2018 for the Rényi-divergence argument).
//!
//! Security notes (Lattigo `SECURITY.md`; Mouchet et al.): a key share must
//! never decrypt the same ciphertext twice (fresh flooding on the same mask
//! lets the noise be averaged away) — [`PartialDecryptor`] refuses a digest it
//! has answered, but remembering digests across restarts is the caller's job;
//! partners must check that the aggregate they open is the sum of the
//! contributors' ciphertexts — here by the contributors' signed sketches of
//! their own masks under a joint challenge ([`super::sketch`]) — and require
//! a minimum of contributors, so a coordinator cannot pass a single update
//! off as a sum.

use std::collections::HashSet;

use zeroize::Zeroize;

use super::aggregate::Aggregate;
use super::encrypt::Shape;
use super::error::HeError;
use super::flood::Flooding;
use super::keygen::{KeySession, PartyId, SecretKeyShare, hex_prefix};
use super::params::HeParams;
use super::wire::{HEADER_LEN, Reader, put_header};
use super::word::{Rng, Word, Words};

const SHARE_MAGIC: &[u8; 4] = b"CHDS";

/// Reads the fields after a share's common header (session, party,
/// aggregate digest) and checks the session and party against `shape`.
fn read_share_fields(
    r: &mut Reader<'_>,
    shape: &Shape,
) -> Result<([u8; 32], PartyId, [u8; 32]), HeError> {
    let session_id = r.array32()?;
    if session_id != shape.session_id {
        return Err(HeError::WrongKey {
            what: "decryption share",
        });
    }
    let party = PartyId(r.u32()?);
    if party.0 >= shape.parties {
        return Err(HeError::UnknownParty {
            party,
            parties: shape.parties,
        });
    }
    Ok((session_id, party, r.array32()?))
}

/// What a key holder checks before decrypting `aggregate` with its key of
/// `session`: same session and parameters, `party` in the committee, every
/// chunk summing the same number of updates, and at least `min_contributors`
/// (at least 1) of them. Returns the shape and the number of contributions.
pub(crate) fn check_aggregate(
    aggregate: &Aggregate,
    session: &KeySession,
    party: PartyId,
    min_contributors: u32,
) -> Result<(Shape, u32), HeError> {
    let shape = *aggregate.shape();
    if shape.session_id != session.id || shape.params != session.params {
        return Err(HeError::WrongKey { what: "aggregate" });
    }
    if party.0 >= shape.parties {
        return Err(HeError::UnknownParty {
            party,
            parties: shape.parties,
        });
    }
    let have = aggregate.contributors();
    let counts = aggregate.chunk_contributors();
    if counts.iter().any(|&c| c != have) {
        // Some update was only partly added: the chunks do not sum the same updates.
        let most = counts.iter().copied().max().unwrap_or(0);
        return Err(HeError::Incomplete {
            what: "chunks of the aggregate",
            have,
            need: most,
        });
    }
    let min = min_contributors.max(1);
    if have < min {
        return Err(HeError::TooFewContributors { have, min });
    }
    Ok((shape, have))
}

/// One partner's partial decryption of an aggregate.
#[derive(Clone, PartialEq, Eq)]
pub struct DecryptionShare {
    party: PartyId,
    session_id: [u8; 32],
    aggregate_digest: [u8; 32],
    words: Words,
}

impl std::fmt::Debug for DecryptionShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptionShare")
            .field("party", &self.party)
            .field("aggregate", &hex_prefix(&self.aggregate_digest))
            .finish_non_exhaustive()
    }
}

impl DecryptionShare {
    /// The partner.
    pub fn party(&self) -> PartyId {
        self.party
    }

    /// Digest of the aggregate it decrypts.
    pub fn aggregate_digest(&self) -> [u8; 32] {
        self.aggregate_digest
    }

    pub(crate) fn encoded_len(shape: &Shape) -> usize {
        HEADER_LEN
            + 32
            + 4
            + 32
            + shape.polys() as usize * shape.polynomial_size() * shape.params.word_bytes()
    }

    /// A share of `party` over the aggregate of `shape` with `aggregate_digest`.
    pub(crate) fn new(
        party: PartyId,
        shape: &Shape,
        aggregate_digest: [u8; 32],
        words: Words,
    ) -> Self {
        Self {
            party,
            session_id: shape.session_id,
            aggregate_digest,
            words,
        }
    }

    /// Wire form: header ‖ session id ‖ party ‖ aggregate digest ‖ words.
    pub fn to_bytes(&self) -> Vec<u8> {
        let params = match self.words {
            Words::W64(_) => HeParams::Fast64,
            Words::W128(_) => HeParams::Secure128,
        };
        let mut out = Vec::new();
        put_header(&mut out, SHARE_MAGIC, params);
        out.extend_from_slice(&self.session_id);
        out.extend_from_slice(&self.party.0.to_le_bytes());
        out.extend_from_slice(&self.aggregate_digest);
        self.words.write_le(&mut out);
        out
    }

    /// Decodes an untrusted share for aggregates of `shape`.
    pub fn from_bytes(bytes: &[u8], shape: &Shape) -> Result<Self, HeError> {
        let mut r = Reader::new(bytes, "decryption share");
        r.header(SHARE_MAGIC, Some(shape.params))?;
        r.expect_len(Self::encoded_len(shape))?;
        let (session_id, party, aggregate_digest) = read_share_fields(&mut r, shape)?;
        let words = Words::read_le(shape.params, r.rest());
        Ok(Self {
            party,
            session_id,
            aggregate_digest,
            words,
        })
    }
}

/// A partner's decryption step, holding its key share.
pub struct PartialDecryptor<'a> {
    key: &'a SecretKeyShare,
    rng: Rng,
    answered: HashSet<[u8; 32]>,
}

impl std::fmt::Debug for PartialDecryptor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialDecryptor")
            .field("key", &self.key)
            .field("answered", &self.answered.len())
            .finish_non_exhaustive()
    }
}

impl<'a> PartialDecryptor<'a> {
    /// A decryptor for `key`, with its own CSPRNG for the flooding noise.
    pub fn new(key: &'a SecretKeyShare) -> Self {
        Self {
            key,
            rng: Rng::new(),
            answered: HashSet::new(),
        }
    }

    /// Digests this decryptor has answered (persist them to refuse repeats
    /// across restarts).
    pub fn answered(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.answered.iter()
    }

    /// Marks digests answered earlier (e.g. loaded from storage).
    pub fn remember(&mut self, digests: impl IntoIterator<Item = [u8; 32]>) {
        self.answered.extend(digests);
    }

    /// This partner's flooded partial decryption of `aggregate`. Refuses an
    /// aggregate of another session, one whose chunks hold different numbers
    /// of contributions, one with fewer than `min_contributors` (at least 1)
    /// contributions, and one already answered.
    pub fn partial_decrypt(
        &mut self,
        aggregate: &Aggregate,
        min_contributors: u32,
    ) -> Result<DecryptionShare, HeError> {
        let (shape, have) = check_aggregate(
            aggregate,
            &self.key.session,
            self.key.party,
            min_contributors,
        )?;
        let digest = aggregate.mask_digest();
        if self.answered.contains(&digest) {
            return Err(HeError::AlreadyDecrypted {
                digest: hex_prefix(&digest),
            });
        }
        let words = match (aggregate.words(), &self.key.secret) {
            (Words::W64(sum), Words::W64(s)) => Words::W64(self.share(sum, s, &shape, have)),
            (Words::W128(sum), Words::W128(s)) => Words::W128(self.share(sum, s, &shape, have)),
            _ => {
                return Err(HeError::WrongParams {
                    expected: shape.params,
                    got: aggregate.params().id(),
                });
            }
        };
        self.answered.insert(digest);
        Ok(DecryptionShare {
            party: self.key.party,
            session_id: shape.session_id,
            aggregate_digest: digest,
            words,
        })
    }

    fn share<T: Word>(
        &mut self,
        sum: &[T],
        secret: &[T],
        shape: &Shape,
        contributors: u32,
    ) -> Vec<T> {
        let n = shape.polynomial_size();
        let polys = shape.polys() as usize;
        let negated = self.key.party.negated();
        // round(n·B_i[j]/2): this partner's share of the public-key noise bias.
        let mut bias: Vec<T> = self
            .key
            .bias
            .iter()
            .map(|&b| T::from_i128((i128::from(contributors) * i128::from(b) + 1) >> 1))
            .collect();
        let mut out = vec![T::ZERO; polys * n];
        // M ⊙ s_i of one polynomial: key-dependent, wiped once added in.
        let mut conv = vec![T::ZERO; n];
        for (poly, d) in out.chunks_exact_mut(n).enumerate() {
            let (mask, _) = Aggregate::poly(sum, shape, poly);
            T::binary_semi_reverse_conv(&mut conv, mask, secret);
            for ((dst, &c), &b) in d.iter_mut().zip(conv.iter().rev()).zip(&bias) {
                let c = if negated { c.wrapping_neg() } else { c };
                *dst = c.wrapping_add(b);
            }
        }
        conv.zeroize();
        bias.zeroize();
        // Until the flooding is in, `out` is the unflooded M ⊙ s_i: flood it in place.
        let params = shape.params;
        Flooding::new(
            params.flood_sigma(shape.parties),
            params.flood_dither_bits(shape.parties),
        )
        .add_to(&mut out, &mut self.rng);
        out
    }
}

/// Combines all `K` partners' shares into the plaintext sum modulo
/// `2^plaintext_bits` (one value per update coefficient). Requires exactly one
/// share per committee member, each over this aggregate.
pub fn combine(aggregate: &Aggregate, shares: &[DecryptionShare]) -> Result<Vec<u64>, HeError> {
    let shape = *aggregate.shape();
    if shares.len() as u64 != u64::from(shape.parties) {
        return Err(HeError::Incomplete {
            what: "decryption shares",
            have: shares.len() as u32,
            need: shape.parties,
        });
    }
    let mut c = Combiner::new(aggregate);
    for s in shares {
        c.add(s)?;
    }
    c.finish()
}

/// [`combine`] one share at a time: holds the aggregate's bodies (one word
/// per value) and subtracts each share as it arrives, so a combiner needs
/// the memory of one share however many partners hold the key.
pub struct Combiner {
    shape: Shape,
    digest: [u8; 32],
    phase: Words,
    seen: HashSet<PartyId>,
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner")
            .field("digest", &hex_prefix(&self.digest))
            .field("shares", &self.seen.len())
            .finish()
    }
}

impl Combiner {
    /// Starts combining shares of `aggregate`.
    pub fn new(aggregate: &Aggregate) -> Self {
        let shape = *aggregate.shape();
        fn bodies<T: Word>(sum: &[T], shape: &Shape) -> Vec<T> {
            let n = shape.polynomial_size();
            let mut out = Vec::with_capacity(shape.polys() as usize * n);
            for poly in 0..shape.polys() as usize {
                out.extend_from_slice(Aggregate::poly(sum, shape, poly).1);
            }
            out
        }
        let phase = match aggregate.words() {
            Words::W64(sum) => Words::W64(bodies(sum, &shape)),
            Words::W128(sum) => Words::W128(bodies(sum, &shape)),
        };
        Self {
            shape,
            digest: aggregate.mask_digest(),
            phase,
            seen: HashSet::new(),
        }
    }

    /// Committee members whose shares are still missing.
    pub fn missing(&self) -> u32 {
        self.shape.parties - self.seen.len() as u32
    }

    /// True if `party`'s share is already in.
    pub fn has(&self, party: PartyId) -> bool {
        self.seen.contains(&party)
    }

    /// Subtracts one share, after checking party, session, aggregate digest
    /// and length; a refused share changes nothing.
    pub fn add(&mut self, s: &DecryptionShare) -> Result<(), HeError> {
        let shape = self.shape;
        if s.party.0 >= shape.parties {
            return Err(HeError::UnknownParty {
                party: s.party,
                parties: shape.parties,
            });
        }
        if self.seen.contains(&s.party) {
            return Err(HeError::DuplicateParty(s.party));
        }
        if s.session_id != shape.session_id {
            return Err(HeError::WrongKey {
                what: "decryption share",
            });
        }
        if s.aggregate_digest != self.digest {
            return Err(HeError::DigestMismatch(s.party));
        }
        let expected_words = shape.polys() as usize * shape.polynomial_size();
        if s.words.len() != expected_words {
            return Err(HeError::WrongCount {
                what: "decryption share words",
                expected: expected_words as u64,
                got: s.words.len() as u64,
            });
        }
        fn sub<T: Word>(phase: &mut [T], share: &Words, params: HeParams) -> Result<(), HeError> {
            let words = words_as::<T>(share).ok_or(HeError::WrongParams {
                expected: params,
                got: 0,
            })?;
            for (p, &d) in phase.iter_mut().zip(words) {
                *p = p.wrapping_sub(d);
            }
            Ok(())
        }
        match &mut self.phase {
            Words::W64(p) => sub(p, &s.words, shape.params)?,
            Words::W128(p) => sub(p, &s.words, shape.params)?,
        }
        self.seen.insert(s.party);
        Ok(())
    }

    /// Bytes of one share's wire form ([`DecryptionShare::to_bytes`]).
    pub fn share_len(&self) -> usize {
        DecryptionShare::encoded_len(&self.shape)
    }

    /// Bytes of a share's header, before its words.
    pub const SHARE_HEADER_LEN: usize = HEADER_LEN + 32 + 4 + 32;

    /// Streaming form of [`Combiner::add`], step 1: checks the first
    /// [`Combiner::SHARE_HEADER_LEN`] bytes of a share (parameters, session,
    /// party not yet combined, aggregate digest). Changes nothing.
    pub fn check_share_header(&self, header: &[u8]) -> Result<PartyId, HeError> {
        let shape = self.shape;
        let header = header
            .get(..Self::SHARE_HEADER_LEN)
            .ok_or(HeError::WrongCount {
                what: "decryption share header bytes",
                expected: Self::SHARE_HEADER_LEN as u64,
                got: header.len() as u64,
            })?;
        let mut r = Reader::new(header, "decryption share");
        r.header(SHARE_MAGIC, Some(shape.params))?;
        let (_, party, digest) = read_share_fields(&mut r, &shape)?;
        if self.seen.contains(&party) {
            return Err(HeError::DuplicateParty(party));
        }
        if digest != self.digest {
            return Err(HeError::DigestMismatch(party));
        }
        Ok(party)
    }

    /// Streaming step 2: subtracts whole words of a share (little-endian,
    /// `bytes.len()` a multiple of the word size) starting at word
    /// `word_offset`. The caller checks the header first and must treat a
    /// share that then breaks off as a failed decryption: words already
    /// subtracted cannot be taken back.
    pub fn subtract_share_words(
        &mut self,
        word_offset: usize,
        bytes: &[u8],
    ) -> Result<(), HeError> {
        let word = self.shape.params.word_bytes();
        let total = match &self.phase {
            Words::W64(p) => p.len(),
            Words::W128(p) => p.len(),
        };
        let count = bytes.len() / word;
        // `checked_add`: an offset near `usize::MAX` is refused, not wrapped.
        let end = word_offset.checked_add(count);
        if !bytes.len().is_multiple_of(word) || end.is_none_or(|end| end > total) {
            return Err(HeError::WrongCount {
                what: "decryption share words",
                expected: total as u64,
                got: end.map_or(u64::MAX, |end| end as u64),
            });
        }
        fn sub<T: Word>(phase: &mut [T], bytes: &[u8], word: usize) {
            for (p, b) in phase.iter_mut().zip(bytes.chunks_exact(word)) {
                *p = p.wrapping_sub(T::read_le(b));
            }
        }
        match &mut self.phase {
            Words::W64(p) => sub(&mut p[word_offset..word_offset + count], bytes, word),
            Words::W128(p) => sub(&mut p[word_offset..word_offset + count], bytes, word),
        }
        Ok(())
    }

    /// Streaming step 3: records that all of `party`'s words were subtracted.
    pub fn complete_share(&mut self, party: PartyId) -> Result<(), HeError> {
        if party.0 >= self.shape.parties {
            return Err(HeError::UnknownParty {
                party,
                parties: self.shape.parties,
            });
        }
        if !self.seen.insert(party) {
            return Err(HeError::DuplicateParty(party));
        }
        Ok(())
    }

    /// The plaintext sum, once every committee member's share is in.
    pub fn finish(self) -> Result<Vec<u64>, HeError> {
        if self.missing() > 0 {
            return Err(HeError::Incomplete {
                what: "decryption shares",
                have: self.seen.len() as u32,
                need: self.shape.parties,
            });
        }
        fn round<T: Word>(phase: &[T], shape: &Shape) -> Vec<u64> {
            let delta_log = shape.delta_log();
            let mask = (1u64 << shape.plaintext_bits()) - 1;
            let half = T::ONE.shl_bits(delta_log - 1);
            phase
                .iter()
                .map(|&p| p.wrapping_add(half).shr_u64(delta_log) & mask)
                .collect()
        }
        let mut out = match &self.phase {
            Words::W64(p) => round(p, &self.shape),
            Words::W128(p) => round(p, &self.shape),
        };
        out.truncate(self.shape.values as usize);
        Ok(out)
    }
}

/// The decryption noise `phase − Δ·expected` of every value (signed), given
/// the known plaintext sum `expected` — for tests and parameter audits.
pub fn decryption_noise(
    aggregate: &Aggregate,
    shares: &[DecryptionShare],
    expected: &[u64],
) -> Result<Vec<i128>, HeError> {
    let shape = *aggregate.shape();
    // Validates the shares exactly as `combine` does.
    combine(aggregate, shares)?;
    let take = shape.values as usize;
    if expected.len() != take {
        return Err(HeError::WrongCount {
            what: "values",
            expected: take as u64,
            got: expected.len() as u64,
        });
    }
    let delta_log = shape.delta_log();
    fn noise<T: Word>(
        sum: &[T],
        shape: &Shape,
        shares: &[DecryptionShare],
        expected: &[u64],
        delta_log: u32,
    ) -> Vec<i128> {
        let n = shape.polynomial_size();
        let mut out = Vec::with_capacity(expected.len());
        for (i, &m) in expected.iter().enumerate() {
            let (_, body) = Aggregate::poly(sum, shape, i / n);
            let mut p = body[i % n];
            for s in shares {
                if let Some(w) = words_as::<T>(&s.words) {
                    p = p.wrapping_sub(w[i]);
                }
            }
            out.push(p.wrapping_sub(T::from_u64(m).shl_bits(delta_log)).to_i128());
        }
        out
    }
    Ok(match aggregate.words() {
        Words::W64(sum) => noise::<u64>(sum, &shape, shares, expected, delta_log),
        Words::W128(sum) => noise::<u128>(sum, &shape, shares, expected, delta_log),
    })
}

fn words_as<T: Word>(words: &Words) -> Option<&[T]> {
    let any: &dyn std::any::Any = match words {
        Words::W64(v) => v,
        Words::W128(v) => v,
    };
    any.downcast_ref::<Vec<T>>().map(Vec::as_slice)
}

/// Encodes signed values in two's complement on `bits` plaintext bits;
/// refuses values outside `[-2^(bits-1), 2^(bits-1))`.
pub fn encode_signed(values: &[i64], bits: u32) -> Result<Vec<u64>, HeError> {
    let bits = bits.clamp(1, 63);
    let lo = -(1i64 << (bits - 1));
    let hi = 1i64 << (bits - 1);
    let mask = (1u64 << bits) - 1;
    values
        .iter()
        .enumerate()
        .map(|(index, &v)| {
            if v < lo || v >= hi {
                Err(HeError::ValueOutOfRange {
                    index,
                    value: i128::from(v),
                    bits,
                })
            } else {
                Ok(v as u64 & mask)
            }
        })
        .collect()
}

/// Decodes `bits`-bit two's-complement values (as returned by [`combine`]).
pub fn decode_signed(values: &[u64], bits: u32) -> Vec<i64> {
    let bits = bits.clamp(1, 63);
    let shift = 64 - bits;
    values
        .iter()
        .map(|&v| ((v << shift) as i64) >> shift)
        .collect()
}
