//! Threshold (t-of-N) decryption by replicated secret sharing of the collective
//! key among a key committee of at most [`MAX_THRESHOLD_PARTIES`] holders: the
//! maths layer of the scheme `docs/threshold.md` chooses.
//!
//! Replicated secret sharing: Ito, Saito, Nishizeki, "Secret sharing scheme
//! realizing general access structure", Globecom 1987; its use for threshold
//! decryption of a sum-shared key as in Cramer, Damgård, Ishai, "Share conversion,
//! pseudorandom secret-sharing and applications to secure computation", TCC 2005,
//! §3. Notation: committee `P = {0..N}`, threshold `t`, `𝒯` = the subsets of `P`
//! of size `t − 1` ([`Threshold::subsets`]), `C = |𝒯| = C(N, t−1)`.
//!
//! 1. **Dealing** ([`ThresholdDealer`]): partner `i`, holding the binary `s_i` of
//!    its N-of-N key share ([`super::SecretKeyShare`]; the collective secret is
//!    `s = Σ ±s_i`, odd parties negated), draws `r_{i,T}` uniform in
//!    `Z_q[X]/(X^n+1)` for every `T ∈ 𝒯` but the last and sets the last so that
//!    `Σ_T r_{i,T} = ±s_i (mod q)`. It publishes the RLWE commitments
//!    `c_{i,T} = a ⊙ r_{i,T} + e_{i,T}` ([`SubshareCommitments`]; `a` the
//!    session's common mask, `e_{i,T}` fresh TUniform noise of the parameter
//!    set, as `b_i = a ⊙ (±s_i) + e_i` in key generation) and gives
//!    `r_{i,T}` ([`Subshare`]) to every holder **not** in `T`.
//! 2. **Checks** ([`ThresholdKeyCollector`]): a holder checks that
//!    `c_{i,T} − a ⊙ r_{i,T}` is within the TUniform bound `2^b` for every
//!    subshare it receives, and anyone checks that `Σ_T c_{i,T} − b_i` is within
//!    `(C + 1)·2^b`. A failure names the dealer and `T`
//!    ([`HeError::SubshareMismatch`], [`HeError::DealingMismatch`]): the
//!    grounds of a complaint. Passing both binds the dealer: two openings of one
//!    commitment, or subshares not summing to `±s_i`, would give a short
//!    `δ ≠ 0` with `a ⊙ δ` small, i.e. solve Ring-SIS for the uniform `a`
//!    (the argument behind [`super::SecretKeyShare::check_public`]).
//! 3. **Holding** ([`ThresholdKeyShare`]): holder `j` keeps
//!    `R_{j,T} = Σ_i r_{i,T}` for every `T ∌ j` (`C(N−1, t−1)` polynomials),
//!    written 0600 with a checksum, zeroized on drop.
//! 4. **Decrypting with a set `Q`** ([`DecryptionSet`], `|Q| ≥ t`): each `T` is
//!    assigned to the lowest-numbered member of `Q` outside `T` (one exists as
//!    `|Q| > |T|`), so `Σ_{j∈Q} Σ_{T→j} R_{j,T} = Σ_T Σ_i r_{i,T} = s`.
//!    [`ThresholdPartialDecryptor`] returns a [`super::DecryptionShare`] and
//!    [`ThresholdCombiner`] subtracts the shares of `Q` from the bodies exactly
//!    as the N-of-N [`super::Combiner`] does (it is one, with the holders
//!    outside `Q` contributing nothing).
//!
//! # The partial decryption and the public-key noise bias
//!
//! The N-of-N share of partner `i` carries `round(m·B_i/2)` for an aggregate of
//! `m` contributions, `B_i = e_i ⊙ 1` (index-reversed) being its part of the
//! public-key noise bias (params module docs). A holder of subshares cannot
//! compute `e_i` — nor may it learn it, since `e_i` gives away `s_i`. But the
//! whole bias is linear in `s`: with the collective body `b = a ⊙ s + e`,
//! `B = e ⊙ 1 = b ⊙ 1 − (a ⊙ 1) ⊙ s`, because `(a ⊙ s) ⊙ 1 = a·φ(s)·φ(1) =
//! (a ⊙ 1) ⊙ s` in the commutative ring (`x ⊙ y = x·φ(y)`, eprint 2023/603 §3).
//! So with `k = ⌊m/2⌋`, holder `j` publishes (coefficient `ℓ`, index-reversed
//! as in the N-of-N share)
//!
//! `D_j[ℓ] = ((M − k·(a ⊙ 1)) ⊙ Σ_{T→j} R_{j,T})_{n−1−ℓ} + [j = min Q]·k·(b ⊙ 1)_{n−1−ℓ} + F_j[ℓ]`
//!
//! whose sum over `Q` is `(M ⊙ s)_{rev} + k·B + Σ F_j`: one general `u128`
//! product per polynomial (the subshares are uniform, not binary) and no
//! second secret. For even `m` this is the N-of-N correction `m·B/2`
//! exactly; for odd `m` a residual `B/2` stays in the decryption noise `G`,
//! adding `Var(B/2) = n·K·σ²/4` (`B` sums `n·K` TUniform terms) to the model
//! ([`threshold_noise_variance`]).
//!
//! # Flooding
//!
//! What one honest holder's share must hide is the same as in N-of-N: with at
//! most `t − 1` corrupted holders `S`, the only subshares they miss are the
//! `R_T` with `S ⊆ T`; every honest holder's share is then either a known value
//! plus flooding, or carries an `R_T` unknown to them, and the simulation of
//! the params module docs applies to the holder that completes the sum, whose
//! share shifted by `G` must look like a fresh one. `G` depends on the key
//! (`K = N` shares) and the contributions, **not** on `|Q|`: each share is
//! flooded with `σ_f = 2^r·B_thr` ([`threshold_flood_sigma`], `B_thr` the
//! bound on `G` including the residual above), the N-of-N dither, and costs the
//! same Rényi divergence per coefficient as an N-of-N share. `|Q| ≤ N` shares
//! sum at most `N` floods, and for every committee of 2 to 12 the N-of-N `Δ`
//! of the key still decodes exactly with `σ_f` raised to `B_thr` (the decoding
//! margin the params module derives; checked by
//! `threshold_noise_fits_the_key_delta` below for both parameter sets). Each
//! share a holder releases — one per aggregate and set `Q`, a repeat is
//! refused — counts against [`super::HeParams::max_releases_per_key`].
//!
//! # Costs
//!
//! The general product runs tfhe-ntt's `native128::Plan32` (ten 32-bit
//! primes, exact CRT), already a dependency of this crate (tfhe-ntt 0.7.1,
//! the version tfhe 1.8.2 uses): see the `threshold` lines of
//! `benches/he.rs` for the measured cost per value against the binary
//! product of the N-of-N share. Dealing costs `C(N, t−1)` products and
//! checking a holder's subshares `N·C(N−1, t−1)` (at `N = 12, t = 6`:
//! 924 and 5,544).
//!
//! # Wire forms and what is built around them
//!
//! [`SubshareCommitments::to_bytes`] and [`Subshare::to_bytes`] are the wire
//! forms the federation's dealing relays (signed commitments; subshares sealed
//! to their holder by `consortia-client`'s `seal` module); their decoders check
//! the exact length before anything else; the federation's key holders
//! decrypt with the set `Q` of their coin toss. Not built: the complaint
//! round's opening of a disputed `r_{i,T}` (`docs/threshold.md`, "Not built
//! yet").

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::Path;

use zeroize::Zeroize;

use super::aggregate::Aggregate;
use super::decrypt::{Combiner, DecryptionShare, check_aggregate};
use super::encrypt::Shape;
use super::error::HeError;
use super::flood::Flooding;
use super::keygen::{
    CHECKSUM_LEN, CollectivePublicKey, KeySession, PartyId, PublicKeyShare, SecretKeyShare,
    hex_prefix, read_secret_file, share_checksum, write_secret_file,
};
use super::params::HeParams;
use super::wire::{HEADER_LEN, Reader, put_header};
use super::word::{Rng, Word, Words};

/// Largest threshold committee: a dealer deals `C(N, t−1)` subshares, at most
/// `C(12, 5) = 792` here (`C(20, 9) = 167,960` would be too many).
pub const MAX_THRESHOLD_PARTIES: u32 = 12;

/// A set of committee members, `T ∈ 𝒯` or a decryption set (bit `k` = party `k`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subset(u16);

impl Subset {
    /// Whether `party` is in the set.
    pub fn contains(self, party: PartyId) -> bool {
        party.0 < 16 && self.0 & (1 << party.0) != 0
    }

    /// Members, in increasing order.
    pub fn members(self) -> impl Iterator<Item = PartyId> {
        (0..16u32)
            .filter(move |&k| self.0 & (1 << k) != 0)
            .map(PartyId)
    }

    /// Number of members.
    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// True for the empty set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members: Vec<String> = self.members().map(|p| p.0.to_string()).collect();
        write!(f, "{{{}}}", members.join(", "))
    }
}

impl fmt::Debug for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A t-of-N key committee: `N` holders, any `t` of whom decrypt.
#[derive(Clone, PartialEq, Eq)]
pub struct Threshold {
    parties: u32,
    threshold: u32,
    /// `𝒯`: every subset of size `t − 1`, in increasing bit order.
    subsets: Vec<Subset>,
}

impl fmt::Debug for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Threshold({}-of-{})", self.threshold, self.parties)
    }
}

impl Threshold {
    /// A committee of `parties` holders with threshold `threshold`; refuses
    /// more than [`MAX_THRESHOLD_PARTIES`] holders and a threshold outside
    /// `2..=parties`.
    pub fn new(parties: u32, threshold: u32) -> Result<Self, HeError> {
        if parties > MAX_THRESHOLD_PARTIES {
            return Err(HeError::ThresholdCommitteeTooLarge {
                got: parties,
                max: MAX_THRESHOLD_PARTIES,
            });
        }
        if threshold < 2 || threshold > parties {
            return Err(HeError::BadThreshold { threshold, parties });
        }
        let subsets = (0u16..1 << parties)
            .filter(|m| m.count_ones() == threshold - 1)
            .map(Subset)
            .collect();
        Ok(Self {
            parties,
            threshold,
            subsets,
        })
    }

    /// `N`.
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// `t`.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// `𝒯`: the subsets of size `t − 1`, one subshare per dealer each.
    pub fn subsets(&self) -> &[Subset] {
        &self.subsets
    }

    /// The subsets whose subshares `holder` receives (those without it).
    pub fn held_by(&self, holder: PartyId) -> impl Iterator<Item = Subset> + '_ {
        self.subsets
            .iter()
            .copied()
            .filter(move |t| !t.contains(holder))
    }

    /// The holders that receive the subshares of `subset` (those outside it).
    pub fn holders(&self, subset: Subset) -> impl Iterator<Item = PartyId> {
        (0..self.parties)
            .map(PartyId)
            .filter(move |&p| !subset.contains(p))
    }

    fn check_party(&self, party: PartyId) -> Result<(), HeError> {
        party.check(self.parties)
    }

    /// The decryption set `Q` of `members`: each in the committee, once, and
    /// at least `t` of them.
    pub fn decryption_set(
        &self,
        members: impl IntoIterator<Item = PartyId>,
    ) -> Result<DecryptionSet, HeError> {
        let mut set = 0u16;
        for p in members {
            self.check_party(p)?;
            if set & (1 << p.0) != 0 {
                return Err(HeError::DuplicateParty(p));
            }
            set |= 1 << p.0;
        }
        let have = set.count_ones();
        if have < self.threshold {
            return Err(HeError::BelowThreshold {
                have,
                threshold: self.threshold,
            });
        }
        Ok(DecryptionSet {
            committee: self.clone(),
            members: Subset(set),
        })
    }
}

/// The holders `Q` that decrypt one aggregate (`|Q| ≥ t`), and which of them
/// covers which subset.
#[derive(Clone, PartialEq, Eq)]
pub struct DecryptionSet {
    committee: Threshold,
    members: Subset,
}

impl fmt::Debug for DecryptionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecryptionSet({} of {:?})", self.members, self.committee)
    }
}

impl DecryptionSet {
    /// The members of `Q`.
    pub fn members(&self) -> Subset {
        self.members
    }

    /// The committee.
    pub fn committee(&self) -> &Threshold {
        &self.committee
    }

    /// The member of `Q` that covers `subset`: the lowest-numbered one outside
    /// it (one exists since `|Q| ≥ t > |T|`).
    pub fn assigned(&self, subset: Subset) -> PartyId {
        PartyId((self.members.0 & !subset.0).trailing_zeros())
    }

    /// The subsets `holder` covers.
    pub fn assigned_to(&self, holder: PartyId) -> impl Iterator<Item = Subset> + '_ {
        self.committee
            .subsets
            .iter()
            .copied()
            .filter(move |&t| self.assigned(t) == holder)
    }

    fn first(&self) -> PartyId {
        PartyId(self.members.0.trailing_zeros())
    }
}

/// Variance of the decryption noise `G` of a threshold decryption of an
/// aggregate of `contributors` updates under a key of `parties` shares: the
/// N-of-N model ([`HeParams::encryption_noise_variance`]) plus, for an odd
/// number of contributions, the residual bias `B/2` (module docs):
/// `n·K·σ²/4`.
pub fn threshold_noise_variance(params: HeParams, parties: u32, contributors: u32) -> f64 {
    let base = params.encryption_noise_variance(parties, contributors);
    if contributors % 2 == 1 {
        base + params.polynomial_size() as f64 * f64::from(parties) * params.noise_variance() / 4.0
    } else {
        base
    }
}

/// σ_f of each threshold decryption share: `2^r·B_thr`, with `B_thr` the
/// N-of-N bound ([`HeParams::flood_sigma`]) scaled to the largest threshold
/// noise variance over `1..=parties` contributions (module docs).
pub fn threshold_flood_sigma(params: HeParams, parties: u32) -> f64 {
    let k = parties.max(1);
    let worst = (1..=k)
        .map(|m| threshold_noise_variance(params, k, m))
        .fold(0.0, f64::max);
    params.flood_sigma(k) * (worst / params.encryption_noise_variance(k, k)).sqrt()
}

/// A dealt subshare `r_{i,T}`: secret, for the holders outside `T`. Zeroized
/// on drop; `Debug` shows no key material.
pub struct Subshare {
    session: KeySession,
    dealer: PartyId,
    subset: Subset,
    words: Words,
}

impl Drop for Subshare {
    fn drop(&mut self) {
        self.words.zeroize();
    }
}

impl fmt::Debug for Subshare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subshare")
            .field("dealer", &self.dealer)
            .field("subset", &self.subset)
            .finish_non_exhaustive()
    }
}

const SUBSHARE_MAGIC: &[u8; 4] = b"CHSS";
const COMMITMENTS_MAGIC: &[u8; 4] = b"CHSC";

impl Subshare {
    /// The dealer `i`.
    pub fn dealer(&self) -> PartyId {
        self.dealer
    }

    /// The subset `T`.
    pub fn subset(&self) -> Subset {
        self.subset
    }

    /// Length of the wire form for `params`.
    pub fn encoded_len(params: HeParams) -> usize {
        HEADER_LEN + 32 + 2 * 4 + params.polynomial_size() * params.word_bytes()
    }

    /// Wire form: header, session id, dealer, `T` (bit set), `r_{i,T}`. Secret:
    /// zeroized when dropped; it travels only sealed to its recipient.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let params = self.session.params;
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(Self::encoded_len(params)));
        put_header(&mut out, SUBSHARE_MAGIC, params);
        out.extend_from_slice(&self.session.id);
        out.extend_from_slice(&self.dealer.0.to_le_bytes());
        out.extend_from_slice(&u32::from(self.subset.0).to_le_bytes());
        self.words.write_le(&mut out);
        out
    }

    /// Decodes an untrusted subshare of `session` dealt to `committee`: exact
    /// length first, then session, a dealer of the committee and a `T ∈ 𝒯`.
    /// Whether it opens its commitment is [`SubshareCommitments::check_subshare`]'s
    /// (or the collector's) business.
    pub fn from_bytes(
        bytes: &[u8],
        session: &KeySession,
        committee: &Threshold,
    ) -> Result<Self, HeError> {
        let params = session.params;
        let mut r = Reader::new(bytes, "subshare");
        r.expect_len(Self::encoded_len(params))?;
        r.header(SUBSHARE_MAGIC, Some(params))?;
        if r.take(32)? != session.id {
            return Err(HeError::WrongKey { what: "subshare" });
        }
        let dealer = PartyId(r.u32()?);
        committee.check_party(dealer)?;
        let bits = r.u32()?;
        let subset = u16::try_from(bits)
            .ok()
            .map(Subset)
            .filter(|t| committee.subsets.contains(t))
            .ok_or(HeError::SubshareMismatch {
                dealer: dealer.0,
                subset: format!("bits {bits:#x}"),
                why: "not a holder set of this committee",
            })?;
        Ok(Self {
            session: *session,
            dealer,
            subset,
            words: Words::read_le(params, r.rest()),
        })
    }
}

/// A dealer's public commitments `c_{i,T} = a ⊙ r_{i,T} + e_{i,T}`, one per
/// `T ∈ 𝒯` in [`Threshold::subsets`] order.
#[derive(Clone, PartialEq, Eq)]
pub struct SubshareCommitments {
    session: KeySession,
    committee: Threshold,
    dealer: PartyId,
    commitments: Vec<Words>,
}

impl fmt::Debug for SubshareCommitments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubshareCommitments")
            .field("dealer", &self.dealer)
            .field("committee", &self.committee)
            .finish_non_exhaustive()
    }
}

impl SubshareCommitments {
    /// The dealer.
    pub fn dealer(&self) -> PartyId {
        self.dealer
    }

    /// Length of the wire form of a dealing to `committee` under `params`.
    pub fn encoded_len(params: HeParams, committee: &Threshold) -> usize {
        HEADER_LEN
            + 32
            + 3 * 4
            + committee.subsets.len() * params.polynomial_size() * params.word_bytes()
    }

    /// Wire form: header, session id, `N`, `t`, dealer, then `c_{i,T}` in
    /// [`Threshold::subsets`] order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let params = self.session.params;
        let mut out = Vec::with_capacity(Self::encoded_len(params, &self.committee));
        put_header(&mut out, COMMITMENTS_MAGIC, params);
        out.extend_from_slice(&self.session.id);
        out.extend_from_slice(&self.committee.parties.to_le_bytes());
        out.extend_from_slice(&self.committee.threshold.to_le_bytes());
        out.extend_from_slice(&self.dealer.0.to_le_bytes());
        for c in &self.commitments {
            c.write_le(&mut out);
        }
        out
    }

    /// Decodes untrusted commitments of `session` for `committee`: exact
    /// length (that of `committee`'s dealing) before anything else, then the
    /// session, `N` and `t` of `committee` and a dealer of it.
    pub fn from_bytes(
        bytes: &[u8],
        session: &KeySession,
        committee: &Threshold,
    ) -> Result<Self, HeError> {
        let params = session.params;
        let mut r = Reader::new(bytes, "subshare commitments");
        r.expect_len(Self::encoded_len(params, committee))?;
        r.header(COMMITMENTS_MAGIC, Some(params))?;
        if r.take(32)? != session.id {
            return Err(HeError::WrongKey {
                what: "subshare commitments",
            });
        }
        let (parties, threshold) = (r.u32()?, r.u32()?);
        let dealer = PartyId(r.u32()?);
        if parties != committee.parties || threshold != committee.threshold {
            return Err(HeError::DealingMismatch {
                dealer: dealer.0,
                why: "dealt to another committee or threshold",
            });
        }
        committee.check_party(dealer)?;
        let poly_bytes = params.polynomial_size() * params.word_bytes();
        let commitments = r
            .rest()
            .chunks_exact(poly_bytes)
            .map(|w| Words::read_le(params, w))
            .collect();
        Ok(Self {
            session: *session,
            committee: committee.clone(),
            dealer,
            commitments,
        })
    }

    /// Checks that `subshare` opens its commitment: same session and dealer,
    /// and `c_{i,T} − a ⊙ r_{i,T}` within the TUniform bound `2^b`.
    pub fn check_subshare(&self, subshare: &Subshare) -> Result<(), HeError> {
        let mask = match self.session.params {
            HeParams::Fast64 => Words::W64(self.session.common_mask()),
            HeParams::Secure128 => Words::W128(self.session.common_mask()),
        };
        self.check_subshare_with_mask(subshare, &mask)
    }

    fn check_subshare_with_mask(&self, subshare: &Subshare, mask: &Words) -> Result<(), HeError> {
        let mismatch = |why| HeError::SubshareMismatch {
            dealer: subshare.dealer.0,
            subset: subshare.subset.to_string(),
            why,
        };
        if subshare.session != self.session {
            return Err(mismatch("another key session"));
        }
        if subshare.dealer != self.dealer {
            return Err(mismatch("another dealer's commitments"));
        }
        let index = self
            .committee
            .subsets
            .binary_search(&subshare.subset)
            .map_err(|_| mismatch("not a holder set of this committee"))?;
        let bound = self.session.params.noise_bound_log2();
        let small = match (&self.commitments[index], &subshare.words, mask) {
            (Words::W64(c), Words::W64(r), Words::W64(a)) => opens(c, a, r, bound),
            (Words::W128(c), Words::W128(r), Words::W128(a)) => opens(c, a, r, bound),
            _ => return Err(mismatch("another parameter set")),
        };
        if small {
            Ok(())
        } else {
            Err(mismatch("c − a ⊙ r is not small"))
        }
    }

    /// Checks that the commitments add up to the dealer's public key share
    /// `b_i` (as published, negated for odd parties): `Σ_T c_{i,T} − b_i =
    /// Σ_T e_{i,T} − e_i` within `(C + 1)·2^b`.
    pub fn check_public(&self, public: &PublicKeyShare) -> Result<(), HeError> {
        let mismatch = |why| HeError::DealingMismatch {
            dealer: self.dealer.0,
            why,
        };
        if public.session != self.session {
            return Err(mismatch("another key session"));
        }
        if public.party != self.dealer {
            return Err(mismatch("another party's public share"));
        }
        let terms = self.commitments.len() as i128 + 1;
        let limit = terms << self.session.params.noise_bound_log2();
        fn sum_minus<T: Word>(commitments: &[Words], body: &[T], limit: i128) -> Option<bool> {
            let mut acc: Vec<T> = body.iter().map(|b| b.wrapping_neg()).collect();
            for c in commitments {
                let c = words_as::<T>(c)?;
                for (a, &x) in acc.iter_mut().zip(c) {
                    *a = a.wrapping_add(x);
                }
            }
            Some(acc.iter().all(|d| d.to_i128().abs() <= limit))
        }
        let small = match &public.body {
            Words::W64(b) => sum_minus(&self.commitments, b, limit),
            Words::W128(b) => sum_minus(&self.commitments, b, limit),
        };
        match small {
            Some(true) => Ok(()),
            Some(false) => Err(mismatch("Σ_T c − b is not small")),
            None => Err(mismatch("another parameter set")),
        }
    }
}

/// `|c − a ⊙ r| ≤ 2^bound` coefficient-wise (signed).
fn opens<T: Word>(c: &[T], a: &[T], r: &[T], bound_log2: u32) -> bool {
    if c.len() != a.len() || r.len() != a.len() {
        return false;
    }
    let mut ar = vec![T::ZERO; a.len()];
    T::semi_reverse_conv(&mut ar, a, r);
    let limit = 1i128 << bound_log2;
    let small = c
        .iter()
        .zip(&ar)
        .all(|(&c, &x)| c.wrapping_sub(x).to_i128().abs() <= limit);
    ar.zeroize();
    small
}

fn words_as<T: Word>(words: &Words) -> Option<&[T]> {
    let any: &dyn std::any::Any = match words {
        Words::W64(v) => v,
        Words::W128(v) => v,
    };
    any.downcast_ref::<Vec<T>>().map(Vec::as_slice)
}

fn words_as_mut<T: Word>(words: &mut Words) -> Option<&mut Vec<T>> {
    let any: &mut dyn std::any::Any = match words {
        Words::W64(v) => v,
        Words::W128(v) => v,
    };
    any.downcast_mut::<Vec<T>>()
}

/// Deals a partner's key share to a committee.
#[derive(Clone, Debug)]
pub struct ThresholdDealer {
    committee: Threshold,
}

/// One dealer's output: the secret subshares and the public commitments.
/// Zeroized on drop.
pub struct ThresholdDealing {
    session: KeySession,
    committee: Threshold,
    dealer: PartyId,
    /// `r_{i,T}` in [`Threshold::subsets`] order.
    subshares: Vec<Words>,
    commitments: SubshareCommitments,
}

impl Drop for ThresholdDealing {
    fn drop(&mut self) {
        self.subshares.iter_mut().for_each(Zeroize::zeroize);
    }
}

impl fmt::Debug for ThresholdDealing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThresholdDealing")
            .field("dealer", &self.dealer)
            .field("committee", &self.committee)
            .finish_non_exhaustive()
    }
}

impl ThresholdDealer {
    /// A dealer for `committee`.
    pub fn new(committee: &Threshold) -> Self {
        Self {
            committee: committee.clone(),
        }
    }

    /// Reshares `key`'s `±s_i` into uniform subshares summing to it, with
    /// their commitments (module docs, step 1).
    pub fn deal(&self, key: &SecretKeyShare) -> Result<ThresholdDealing, HeError> {
        self.committee.check_party(key.party)?;
        let mut rng = Rng::new();
        let (subshares, commitments) = match &key.secret {
            Words::W64(s) => {
                let (r, c) = deal::<u64>(s, key, &self.committee, &mut rng);
                (
                    r.into_iter().map(Words::W64).collect(),
                    c.into_iter().map(Words::W64).collect(),
                )
            }
            Words::W128(s) => {
                let (r, c) = deal::<u128>(s, key, &self.committee, &mut rng);
                (
                    r.into_iter().map(Words::W128).collect(),
                    c.into_iter().map(Words::W128).collect(),
                )
            }
        };
        Ok(ThresholdDealing {
            session: key.session,
            committee: self.committee.clone(),
            dealer: key.party,
            subshares,
            commitments: SubshareCommitments {
                session: key.session,
                committee: self.committee.clone(),
                dealer: key.party,
                commitments,
            },
        })
    }
}

/// Subshares of `±s` (uniform, the last one completing the sum) and their
/// commitments `a ⊙ r + e` with TUniform(b) noise `e`.
fn deal<T: Word>(
    secret: &[T],
    key: &SecretKeyShare,
    committee: &Threshold,
    rng: &mut Rng,
) -> (Vec<Vec<T>>, Vec<Vec<T>>) {
    let n = secret.len();
    let count = committee.subsets.len();
    // rest = ±s_i − Σ of the subshares drawn so far.
    let mut rest: Vec<T> = if key.party.negated() {
        secret.iter().map(|s| s.wrapping_neg()).collect()
    } else {
        secret.to_vec()
    };
    let mut subshares = Vec::with_capacity(count);
    for _ in 1..count {
        let mut r = vec![T::ZERO; n];
        rng.plain.fill_slice_with_random_uniform(&mut r);
        for (x, &y) in rest.iter_mut().zip(&r) {
            *x = x.wrapping_sub(y);
        }
        subshares.push(r);
    }
    subshares.push(rest);
    let a: Vec<T> = key.session.common_mask();
    let bound = key.session.params.noise_bound_log2();
    let commitments = subshares
        .iter()
        .map(|r| {
            let mut c = vec![T::ZERO; n];
            T::semi_reverse_conv(&mut c, &a, r);
            T::add_tuniform(&mut c, bound, rng);
            c
        })
        .collect();
    (subshares, commitments)
}

impl ThresholdDealing {
    /// The dealer.
    pub fn dealer(&self) -> PartyId {
        self.dealer
    }

    /// The public commitments (for everyone).
    pub fn commitments(&self) -> &SubshareCommitments {
        &self.commitments
    }

    /// The subshares for `holder`: `r_{i,T}` for every `T` without it.
    pub fn subshares_for(&self, holder: PartyId) -> Result<Vec<Subshare>, HeError> {
        self.committee.check_party(holder)?;
        Ok(self
            .committee
            .subsets
            .iter()
            .zip(&self.subshares)
            .filter(|(t, _)| !t.contains(holder))
            .map(|(&subset, words)| Subshare {
                session: self.session,
                dealer: self.dealer,
                subset,
                words: words.clone(),
            })
            .collect())
    }
}

/// A holder's collection step: every dealer's commitments (checked against its
/// public key share), then its subshares (each checked against its
/// commitment), summed into the holder's [`ThresholdKeyShare`].
pub struct ThresholdKeyCollector {
    session: KeySession,
    committee: Threshold,
    holder: PartyId,
    mask: Words,
    dealers: BTreeMap<PartyId, SubshareCommitments>,
    received: BTreeSet<(PartyId, Subset)>,
    /// `R_{j,T}` so far, in [`Threshold::held_by`] order.
    sums: Vec<(Subset, Words)>,
}

impl Drop for ThresholdKeyCollector {
    fn drop(&mut self) {
        self.sums.iter_mut().for_each(|(_, w)| w.zeroize());
    }
}

impl fmt::Debug for ThresholdKeyCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThresholdKeyCollector")
            .field("holder", &self.holder)
            .field("committee", &self.committee)
            .field("dealers", &self.dealers.len())
            .field("subshares", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl ThresholdKeyCollector {
    /// Collection for `holder` of `committee` in `session`.
    pub fn new(
        session: &KeySession,
        committee: &Threshold,
        holder: PartyId,
    ) -> Result<Self, HeError> {
        committee.check_party(holder)?;
        let n = session.params.polynomial_size();
        let mask = match session.params {
            HeParams::Fast64 => Words::W64(session.common_mask()),
            HeParams::Secure128 => Words::W128(session.common_mask()),
        };
        let sums = committee
            .held_by(holder)
            .map(|t| (t, Words::zeros(session.params, n)))
            .collect();
        Ok(Self {
            session: *session,
            committee: committee.clone(),
            holder,
            mask,
            dealers: BTreeMap::new(),
            received: BTreeSet::new(),
            sums,
        })
    }

    /// Records `commitments` once `Σ_T c_{i,T}` is checked against the dealer's
    /// public key share `public` (the one in the federation key).
    pub fn add_dealer(
        &mut self,
        commitments: &SubshareCommitments,
        public: &PublicKeyShare,
    ) -> Result<(), HeError> {
        let dealer = commitments.dealer;
        self.committee.check_party(dealer)?;
        if commitments.session != self.session {
            return Err(HeError::WrongKey {
                what: "subshare commitments",
            });
        }
        if commitments.committee != self.committee {
            return Err(HeError::DealingMismatch {
                dealer: dealer.0,
                why: "dealt to another committee or threshold",
            });
        }
        if self.dealers.contains_key(&dealer) {
            return Err(HeError::DuplicateParty(dealer));
        }
        commitments.check_public(public)?;
        self.dealers.insert(dealer, commitments.clone());
        Ok(())
    }

    /// Checks `subshare` against its dealer's commitment (recorded first) and
    /// adds it to `R_{j,T}`; refuses a subshare for a set containing this
    /// holder and a repeat.
    pub fn add_subshare(&mut self, subshare: &Subshare) -> Result<(), HeError> {
        let dealer = subshare.dealer;
        let commitments = self.dealers.get(&dealer).ok_or(HeError::Incomplete {
            what: "dealers' commitments (the subshare's dealer is not in yet)",
            have: self.dealers.len() as u32,
            need: self.committee.parties,
        })?;
        if subshare.subset.contains(self.holder) {
            return Err(HeError::SubshareMismatch {
                dealer: dealer.0,
                subset: subshare.subset.to_string(),
                why: "sent to a holder inside its holder set",
            });
        }
        if self.received.contains(&(dealer, subshare.subset)) {
            return Err(HeError::DuplicateParty(dealer));
        }
        commitments.check_subshare_with_mask(subshare, &self.mask)?;
        let slot = self
            .sums
            .iter_mut()
            .find(|(t, _)| *t == subshare.subset)
            .map(|(_, w)| w)
            .ok_or(HeError::SubshareMismatch {
                dealer: dealer.0,
                subset: subshare.subset.to_string(),
                why: "not a holder set of this committee",
            })?;
        fn add<T: Word>(acc: &mut Words, r: &Words) -> bool {
            match (words_as_mut::<T>(acc), words_as::<T>(r)) {
                (Some(acc), Some(r)) => {
                    super::keygen::add_words(acc, r);
                    true
                }
                _ => false,
            }
        }
        let added = match subshare.words {
            Words::W64(_) => add::<u64>(slot, &subshare.words),
            Words::W128(_) => add::<u128>(slot, &subshare.words),
        };
        if !added {
            return Err(HeError::WrongParams {
                expected: self.session.params,
                got: 0,
            });
        }
        self.received.insert((dealer, subshare.subset));
        Ok(())
    }

    /// The holder's key share, once every dealer's commitments and every
    /// subshare for this holder are in.
    pub fn finish(mut self) -> Result<ThresholdKeyShare, HeError> {
        let parties = self.committee.parties;
        if self.dealers.len() as u32 != parties {
            return Err(HeError::Incomplete {
                what: "dealers' commitments",
                have: self.dealers.len() as u32,
                need: parties,
            });
        }
        let need = parties * self.sums.len() as u32;
        if self.received.len() as u32 != need {
            return Err(HeError::Incomplete {
                what: "subshares",
                have: self.received.len() as u32,
                need,
            });
        }
        Ok(ThresholdKeyShare {
            session: self.session,
            committee: self.committee.clone(),
            holder: self.holder,
            sums: std::mem::take(&mut self.sums),
        })
    }
}

const THRESHOLD_MAGIC: &[u8; 4] = b"CHTK";

/// A holder's threshold key share: `R_{j,T} = Σ_i r_{i,T}` for every `T ∌ j`.
/// Zeroized on drop; `Debug` shows no key material.
pub struct ThresholdKeyShare {
    session: KeySession,
    committee: Threshold,
    holder: PartyId,
    /// In [`Threshold::held_by`] order.
    sums: Vec<(Subset, Words)>,
}

impl Drop for ThresholdKeyShare {
    fn drop(&mut self) {
        self.sums.iter_mut().for_each(|(_, w)| w.zeroize());
    }
}

impl fmt::Debug for ThresholdKeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThresholdKeyShare")
            .field("params", &self.session.params)
            .field("holder", &self.holder)
            .field("committee", &self.committee)
            .finish_non_exhaustive()
    }
}

/// `C(n, k)` for `n ≤ 12`.
fn binomial(n: u32, k: u32) -> usize {
    (0..k).fold(1usize, |acc, i| acc * (n - i) as usize / (i + 1) as usize)
}

impl ThresholdKeyShare {
    /// The holder.
    pub fn holder(&self) -> PartyId {
        self.holder
    }

    /// The key session.
    pub fn session(&self) -> KeySession {
        self.session
    }

    /// The committee.
    pub fn committee(&self) -> &Threshold {
        &self.committee
    }

    /// File contents (without the checksum) of a share of `params` held in a
    /// committee of `parties` with threshold `threshold`.
    fn file_len(params: HeParams, parties: u32, threshold: u32) -> usize {
        let held = binomial(parties - 1, threshold - 1);
        HEADER_LEN + 32 + 3 * 4 + held * params.polynomial_size() * params.word_bytes()
    }

    /// The largest file any share has (Secure128, `N = 12`, `t = 6`: 462
    /// polynomials, about 29 MiB), with its checksum.
    fn max_file_len() -> usize {
        (2..=MAX_THRESHOLD_PARTIES)
            .flat_map(|n| (2..=n).map(move |t| (n, t)))
            .map(|(n, t)| Self::file_len(HeParams::Secure128, n, t))
            .max()
            .unwrap_or(0)
            + CHECKSUM_LEN
    }

    fn to_content_bytes(&self) -> Vec<u8> {
        let params = self.session.params;
        let mut out = Vec::with_capacity(Self::file_len(
            params,
            self.committee.parties,
            self.committee.threshold,
        ));
        put_header(&mut out, THRESHOLD_MAGIC, params);
        out.extend_from_slice(&self.session.id);
        out.extend_from_slice(&self.committee.parties.to_le_bytes());
        out.extend_from_slice(&self.committee.threshold.to_le_bytes());
        out.extend_from_slice(&self.holder.0.to_le_bytes());
        for (_, w) in &self.sums {
            w.write_le(&mut out);
        }
        out
    }

    /// Writes the share to `path` with mode 0600 (created or truncated),
    /// followed by its checksum (SHA-256 over [`super::SHARE_CHECKSUM_TAG`] and
    /// the contents, as [`SecretKeyShare::save`]), and syncs it.
    pub fn save(&self, path: &Path) -> Result<(), HeError> {
        let mut bytes = self.to_content_bytes();
        let sum = share_checksum(&bytes);
        bytes.extend_from_slice(&sum);
        write_secret_file(path, bytes)
    }

    /// Reads a share written by [`ThresholdKeyShare::save`]; refuses a file
    /// readable by group or others, one larger than any share (before reading
    /// it), one whose length is not that of its stated committee, and one
    /// whose checksum does not match.
    pub fn load(path: &Path) -> Result<Self, HeError> {
        let mut bytes = read_secret_file(path, Self::max_file_len())?;
        let parsed = Self::from_file_bytes(&bytes).map_err(|e| HeError::KeyFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        });
        bytes.zeroize();
        parsed
    }

    fn from_file_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let mut r = Reader::new(bytes, "threshold key share");
        let params = r.header(THRESHOLD_MAGIC, None)?;
        let id = r.array32()?;
        let parties = r.u32()?;
        let threshold = r.u32()?;
        let holder = PartyId(r.u32()?);
        let committee = Threshold::new(parties, threshold)?;
        committee.check_party(holder)?;
        let len = Self::file_len(params, parties, threshold);
        r.expect_len(len + CHECKSUM_LEN)?;
        let (content, sum) = bytes.split_at(len);
        if share_checksum(content) != sum {
            return Err(HeError::ChecksumMismatch);
        }
        let poly_bytes = params.polynomial_size() * params.word_bytes();
        let words = &content[HEADER_LEN + 32 + 12..];
        let sums = committee
            .held_by(holder)
            .zip(words.chunks_exact(poly_bytes))
            .map(|(t, w)| (t, Words::read_le(params, w)))
            .collect();
        Ok(Self {
            session: KeySession::new(params, id),
            committee,
            holder,
            sums,
        })
    }
}

/// A holder's threshold decryption step.
pub struct ThresholdPartialDecryptor<'a> {
    key: &'a ThresholdKeyShare,
    key_id: [u8; 32],
    /// `a ⊙ 1`.
    mask_ones: Words,
    /// `(b ⊙ 1)_{n−1−ℓ}` for the collective body `b`.
    body_ones: Words,
    rng: Rng,
    answered: HashSet<([u8; 32], Subset)>,
}

impl fmt::Debug for ThresholdPartialDecryptor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThresholdPartialDecryptor")
            .field("key", &self.key)
            .field("collective_key", &hex_prefix(&self.key_id))
            .field("answered", &self.answered.len())
            .finish_non_exhaustive()
    }
}

/// `(a ⊙ 1, reversed(b ⊙ 1))` for the mask `a` and the collective body `b`.
fn bias_terms<T: Word>(session: &KeySession, body: &[T]) -> (Vec<T>, Vec<T>) {
    let n = body.len();
    let ones = vec![T::ONE; n];
    let a: Vec<T> = session.common_mask();
    let mut mask_ones = vec![T::ZERO; n];
    T::semi_reverse_conv(&mut mask_ones, &a, &ones);
    let mut body_ones = vec![T::ZERO; n];
    T::semi_reverse_conv(&mut body_ones, body, &ones);
    body_ones.reverse();
    (mask_ones, body_ones)
}

impl<'a> ThresholdPartialDecryptor<'a> {
    /// A decryptor for `key` under the collective key `collective` (whose body
    /// enters the bias correction, module docs).
    pub fn new(
        key: &'a ThresholdKeyShare,
        collective: &CollectivePublicKey,
    ) -> Result<Self, HeError> {
        if collective.session != key.session {
            return Err(HeError::WrongKey {
                what: "collective public key",
            });
        }
        if collective.parties != key.committee.parties {
            return Err(HeError::WrongCount {
                what: "key holders of the collective key",
                expected: u64::from(key.committee.parties),
                got: u64::from(collective.parties),
            });
        }
        let (mask_ones, body_ones) = match &collective.body {
            Words::W64(b) => {
                let (m, o) = bias_terms(&key.session, b);
                (Words::W64(m), Words::W64(o))
            }
            Words::W128(b) => {
                let (m, o) = bias_terms(&key.session, b);
                (Words::W128(m), Words::W128(o))
            }
        };
        Ok(Self {
            key,
            key_id: collective.key_id,
            mask_ones,
            body_ones,
            rng: Rng::new(),
            answered: HashSet::new(),
        })
    }

    /// This holder's flooded share of `aggregate` for the decryption set
    /// `set`. Refuses a holder outside `set`, a set of another committee, an
    /// aggregate of another key, one whose chunks hold different numbers of
    /// contributions or fewer than `min_contributors` (at least 1), and a
    /// repeat of an aggregate and set already answered.
    pub fn partial_decrypt(
        &mut self,
        aggregate: &Aggregate,
        set: &DecryptionSet,
        min_contributors: u32,
    ) -> Result<DecryptionShare, HeError> {
        let holder = self.key.holder;
        if set.committee != self.key.committee {
            return Err(HeError::WrongCount {
                what: "holders and threshold of the decryption set's committee",
                expected: u64::from(self.key.committee.parties),
                got: u64::from(set.committee.parties),
            });
        }
        if !set.members.contains(holder) {
            return Err(HeError::NotInDecryptionSet(holder));
        }
        let (shape, have) =
            check_aggregate(aggregate, &self.key.session, holder, min_contributors)?;
        if shape.key_id != self.key_id {
            return Err(HeError::WrongKey { what: "aggregate" });
        }
        let digest = aggregate.mask_digest();
        if self.answered.contains(&(digest, set.members)) {
            return Err(HeError::AlreadyDecrypted {
                digest: hex_prefix(&digest),
            });
        }
        let words = match aggregate.words() {
            Words::W64(sum) => Words::W64(self.share::<u64>(sum, set, &shape, have)?),
            Words::W128(sum) => Words::W128(self.share::<u128>(sum, set, &shape, have)?),
        };
        self.answered.insert((digest, set.members));
        Ok(DecryptionShare::new(holder, &shape, digest, words))
    }

    fn share<T: Word>(
        &mut self,
        sum: &[T],
        set: &DecryptionSet,
        shape: &Shape,
        contributors: u32,
    ) -> Result<Vec<T>, HeError> {
        let mut out = self.unflooded(sum, set, shape, contributors)?;
        // Until the flooding is in, `out` is key-dependent: flood it in place.
        let params = shape.params;
        Flooding::new(
            threshold_flood_sigma(params, shape.parties),
            params.flood_dither_bits(shape.parties),
        )
        .add_to(&mut out, &mut self.rng);
        Ok(out)
    }

    /// `D_j` before its flooding (module docs).
    fn unflooded<T: Word>(
        &self,
        sum: &[T],
        set: &DecryptionSet,
        shape: &Shape,
        contributors: u32,
    ) -> Result<Vec<T>, HeError> {
        let wrong = HeError::WrongParams {
            expected: self.key.session.params,
            got: shape.params.id(),
        };
        let n = shape.polynomial_size();
        let polys = shape.polys() as usize;
        let holder = self.key.holder;
        let mask_ones = words_as::<T>(&self.mask_ones).ok_or(wrong)?;
        // R_j = Σ_{T assigned to j} R_{j,T}.
        let mut r = vec![T::ZERO; n];
        for (t, w) in &self.key.sums {
            if set.assigned(*t) == holder {
                let w = words_as::<T>(w).ok_or(HeError::WrongParams {
                    expected: self.key.session.params,
                    got: shape.params.id(),
                })?;
                super::keygen::add_words(&mut r, w);
            }
        }
        // k = ⌊m/2⌋ of the bias correction; the public k·(b ⊙ 1) once, by min Q.
        let k = T::from_u64(u64::from(contributors / 2));
        let public: Vec<T> = if set.first() == holder {
            words_as::<T>(&self.body_ones)
                .ok_or(HeError::WrongParams {
                    expected: self.key.session.params,
                    got: shape.params.id(),
                })?
                .iter()
                .map(|&x| x.wrapping_mul(k))
                .collect()
        } else {
            vec![T::ZERO; n]
        };
        let mut out = vec![T::ZERO; polys * n];
        let mut lhs = vec![T::ZERO; n];
        let mut conv = vec![T::ZERO; n];
        for (poly, d) in out.chunks_exact_mut(n).enumerate() {
            let (mask, _) = Aggregate::poly(sum, shape, poly);
            // M − k·(a ⊙ 1)
            for ((l, &m), &a1) in lhs.iter_mut().zip(mask).zip(mask_ones) {
                *l = m.wrapping_sub(a1.wrapping_mul(k));
            }
            T::semi_reverse_conv(&mut conv, &lhs, &r);
            for ((dst, &c), &p) in d.iter_mut().zip(conv.iter().rev()).zip(&public) {
                *dst = c.wrapping_add(p);
            }
        }
        r.zeroize();
        conv.zeroize();
        Ok(out)
    }
}

/// Combines the shares of a decryption set `Q`: the N-of-N [`Combiner`], to
/// which the holders outside `Q` contribute nothing.
#[derive(Debug)]
pub struct ThresholdCombiner {
    inner: Combiner,
    set: DecryptionSet,
}

impl ThresholdCombiner {
    /// Starts combining the shares of `set` over `aggregate`.
    pub fn new(aggregate: &Aggregate, set: &DecryptionSet) -> Result<Self, HeError> {
        let parties = aggregate.shape().parties;
        if parties != set.committee.parties {
            return Err(HeError::WrongCount {
                what: "key holders of the aggregate's key",
                expected: u64::from(set.committee.parties),
                got: u64::from(parties),
            });
        }
        Ok(Self {
            inner: Combiner::new(aggregate),
            set: set.clone(),
        })
    }

    /// Members of `Q` whose shares are still missing.
    pub fn missing(&self) -> u32 {
        self.set
            .members
            .members()
            .filter(|&p| !self.inner.has(p))
            .count() as u32
    }

    /// Subtracts one share of a member of `Q` (checked as [`Combiner::add`]
    /// does); a refused share changes nothing.
    pub fn add(&mut self, share: &DecryptionShare) -> Result<(), HeError> {
        if !self.set.members.contains(share.party()) {
            return Err(HeError::NotInDecryptionSet(share.party()));
        }
        self.inner.add(share)
    }

    /// The plaintext sum, once every member of `Q` is in.
    pub fn finish(mut self) -> Result<Vec<u64>, HeError> {
        let missing = self.missing();
        if missing > 0 {
            let need = self.set.members.len();
            return Err(HeError::Incomplete {
                what: "decryption shares of the set",
                have: need - missing,
                need,
            });
        }
        for p in (0..self.set.committee.parties).map(PartyId) {
            if !self.set.members.contains(p) {
                self.inner.complete_share(p)?;
            }
        }
        self.inner.finish()
    }
}

/// [`ThresholdCombiner`] over a slice of shares.
pub fn threshold_combine(
    aggregate: &Aggregate,
    set: &DecryptionSet,
    shares: &[DecryptionShare],
) -> Result<Vec<u64>, HeError> {
    let mut c = ThresholdCombiner::new(aggregate, set)?;
    for s in shares {
        c.add(s)?;
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CollectiveKeyAggregator, Encryptor, KeyShare, KeyShareGen, params::FLOOD_TAIL_SIGMAS,
    };

    fn session(params: HeParams) -> KeySession {
        KeySession::new(params, rand::random())
    }

    /// A key share with the given binary secret (bias unused here).
    fn key_with_secret(session: &KeySession, party: u32, bit: u64) -> SecretKeyShare {
        let n = session.params.polynomial_size();
        let secret = match session.params {
            HeParams::Fast64 => Words::W64(vec![bit; n]),
            HeParams::Secure128 => Words::W128(vec![u128::from(bit); n]),
        };
        SecretKeyShare {
            session: *session,
            party: PartyId(party),
            secret,
            bias: vec![0; n],
        }
    }

    fn w64(w: &Words) -> &[u64] {
        words_as::<u64>(w).unwrap()
    }

    #[test]
    fn subsets_holders_and_assignment() {
        let th = Threshold::new(5, 3).unwrap();
        assert_eq!(th.subsets().len(), 10);
        assert!(th.subsets().iter().all(|t| t.len() == 2));
        assert_eq!(th.held_by(PartyId(0)).count(), 6);
        assert_eq!(th.holders(th.subsets()[0]).count(), 3);
        for bits in 0u16..32 {
            let members = Subset(bits).members();
            let Ok(set) = th.decryption_set(members) else {
                assert!(bits.count_ones() < 3);
                continue;
            };
            for &t in th.subsets() {
                let j = set.assigned(t);
                assert!(set.members().contains(j) && !t.contains(j));
                // The lowest such member.
                assert!(
                    set.members()
                        .members()
                        .take_while(|&p| p != j)
                        .all(|p| t.contains(p))
                );
            }
            let covered: usize = set
                .members()
                .members()
                .map(|j| set.assigned_to(j).count())
                .sum();
            assert_eq!(covered, 10);
        }
        assert_eq!(Subset(0b10110).to_string(), "{1, 2, 4}");
        assert_eq!(ThresholdKeyShare::max_file_len(), 52 + 462 * 4096 * 16 + 32);
    }

    /// For committees of 2 to 12, each threshold share floods with at least the
    /// N-of-N σ_f, and `|Q| ≤ N` such shares with the threshold noise still
    /// decode under the key's N-of-N Δ (params module docs' margin).
    #[test]
    fn threshold_noise_fits_the_key_delta() {
        for params in [HeParams::Secure128, HeParams::Fast64] {
            for k in 2..=MAX_THRESHOLD_PARTIES {
                let sigma = threshold_flood_sigma(params, k);
                assert!(sigma >= params.flood_sigma(k));
                let worst = (1..=k)
                    .map(|m| threshold_noise_variance(params, k, m))
                    .fold(0.0, f64::max);
                let ratio = (worst / params.encryption_noise_variance(k, k)).sqrt();
                let g = 2f64.powf(params.encryption_noise_bound_log2(k)) * ratio;
                let kf = f64::from(k);
                let flood = (FLOOD_TAIL_SIGMAS * kf.sqrt() + kf * 2f64.powi(-9)) * sigma + kf;
                let half_delta = 2f64.powi(params.delta_log(k) as i32 - 1);
                assert!(flood + g < half_delta, "{params:?}, {k} holders");
            }
        }
    }

    /// The threshold shares of any set sum, before flooding, to the N-of-N
    /// shares' sum less the residual bias `Σ_i ⌈B_i/2⌉` for an odd number of
    /// contributions, and exactly to it for an even number (module docs).
    #[test]
    fn unflooded_threshold_shares_sum_to_the_n_of_n_ones() {
        let params = HeParams::Fast64;
        let s = session(params);
        let (parties, t) = (4, 2);
        let shares: Vec<KeyShare> = (0..parties)
            .map(|i| KeyShareGen::new(&s).generate(PartyId(i)))
            .collect();
        let mut agg = CollectiveKeyAggregator::new(&s, parties).unwrap();
        for sh in &shares {
            agg.add_commitment(sh.public.party(), sh.commitment)
                .unwrap();
        }
        for sh in &shares {
            agg.add_share(sh.public.party(), sh.public.clone()).unwrap();
        }
        let key = agg.finish().unwrap();
        let th = Threshold::new(parties, t).unwrap();
        let dealings: Vec<_> = shares
            .iter()
            .map(|sh| ThresholdDealer::new(&th).deal(&sh.secret).unwrap())
            .collect();
        let holders: Vec<ThresholdKeyShare> = (0..parties)
            .map(|j| {
                let mut c = ThresholdKeyCollector::new(&s, &th, PartyId(j)).unwrap();
                for (d, sh) in dealings.iter().zip(&shares) {
                    c.add_dealer(d.commitments(), &sh.public).unwrap();
                }
                for d in &dealings {
                    for sub in d.subshares_for(PartyId(j)).unwrap() {
                        c.add_subshare(&sub).unwrap();
                    }
                }
                c.finish().unwrap()
            })
            .collect();
        let n = params.polynomial_size();
        for contributors in [3u32, 4] {
            let mut enc = Encryptor::new(&key);
            let shape = enc.shape(n).unwrap();
            let wires: Vec<Vec<u8>> = (0..contributors)
                .map(|_| enc.encrypt(&vec![1; n]).unwrap().to_bytes())
                .collect();
            let aggregate =
                Aggregate::from_ciphertexts(shape, wires.iter().map(Vec::as_slice)).unwrap();
            let Words::W64(sum) = aggregate.words() else {
                panic!("Fast64")
            };
            let (mask, _) = Aggregate::poly(sum, &shape, 0);
            // N-of-N: Σ_i ±(M ⊙ s_i)_{rev} + round(m·B_i/2).
            let mut n_of_n = vec![0u64; n];
            let mut residual = vec![0u64; n];
            for sh in &shares {
                let mut conv = vec![0u64; n];
                u64::binary_semi_reverse_conv(&mut conv, mask, w64(&sh.secret.secret));
                for (l, d) in n_of_n.iter_mut().enumerate() {
                    let c = conv[n - 1 - l];
                    let c = if sh.secret.party.negated() {
                        c.wrapping_neg()
                    } else {
                        c
                    };
                    let b = i128::from(sh.secret.bias[l]);
                    *d = d
                        .wrapping_add(c)
                        .wrapping_add(((i128::from(contributors) * b + 1) >> 1) as u64);
                    if contributors % 2 == 1 {
                        residual[l] = residual[l].wrapping_add(((b + 1) >> 1) as u64);
                    }
                }
            }
            for members in [vec![0, 1], vec![1, 3], vec![0, 1, 2, 3]] {
                let set = th.decryption_set(members.into_iter().map(PartyId)).unwrap();
                let mut total = vec![0u64; n];
                for j in set.members().members() {
                    let d = ThresholdPartialDecryptor::new(&holders[j.0 as usize], &key).unwrap();
                    let part = d.unflooded(sum, &set, &shape, contributors).unwrap();
                    crate::keygen::add_words(&mut total, &part);
                }
                let diff: Vec<u64> = n_of_n
                    .iter()
                    .zip(&total)
                    .map(|(a, b)| a.wrapping_sub(*b))
                    .collect();
                assert!(
                    diff == residual,
                    "{contributors} contributions, set {set:?}"
                );
            }
        }
    }

    /// A holder's check of a tampered subshare fails, naming the dealer and `T`.
    #[test]
    fn a_tampered_subshare_fails_its_commitment_check() {
        for params in [HeParams::Fast64, HeParams::Secure128] {
            let s = session(params);
            let th = Threshold::new(5, 3).unwrap();
            let key = KeyShareGen::new(&s).generate(PartyId(2));
            let dealing = ThresholdDealer::new(&th).deal(&key.secret).unwrap();
            dealing.commitments().check_public(&key.public).unwrap();
            let mut subs = dealing.subshares_for(PartyId(4)).unwrap();
            for sub in &subs {
                dealing.commitments().check_subshare(sub).unwrap();
            }
            let sub = &mut subs[1];
            let subset = sub.subset.to_string();
            // One low bit of one coefficient.
            match &mut sub.words {
                Words::W64(w) => w[7] ^= 1,
                Words::W128(w) => w[7] ^= 1,
            }
            let e = dealing.commitments().check_subshare(sub).unwrap_err();
            assert!(
                matches!(&e, HeError::SubshareMismatch { dealer: 2, subset: t, .. } if *t == subset),
                "{e}"
            );
            let shown = e.to_string();
            assert!(
                shown.contains("dealer 2") && shown.contains(&subset),
                "{shown}"
            );
            // The holder's collector refuses it too, and accepts the others.
            let mut c = ThresholdKeyCollector::new(&s, &th, PartyId(4)).unwrap();
            c.add_dealer(dealing.commitments(), &key.public).unwrap();
            assert!(matches!(
                c.add_subshare(&subs[1]),
                Err(HeError::SubshareMismatch { .. })
            ));
            c.add_subshare(&subs[0]).unwrap();
            // A subshare for a set containing the holder is refused.
            let inside = dealing.subshares_for(PartyId(0)).unwrap();
            let inside = inside
                .iter()
                .find(|x| x.subset.contains(PartyId(4)))
                .unwrap();
            assert!(matches!(
                c.add_subshare(inside),
                Err(HeError::SubshareMismatch { .. })
            ));
        }
    }

    /// The wire forms round-trip and still pass the checks; a wrong length,
    /// session, committee, dealer or holder set is refused before decoding.
    #[test]
    fn wire_forms_round_trip_and_refuse_what_does_not_fit() {
        let s = session(HeParams::Fast64);
        let th = Threshold::new(4, 2).unwrap();
        let key = KeyShareGen::new(&s).generate(PartyId(1));
        let dealing = ThresholdDealer::new(&th).deal(&key.secret).unwrap();
        let bytes = dealing.commitments().to_bytes();
        assert_eq!(bytes.len(), SubshareCommitments::encoded_len(s.params, &th));
        let back = SubshareCommitments::from_bytes(&bytes, &s, &th).unwrap();
        assert_eq!(&back, dealing.commitments());
        back.check_public(&key.public).unwrap();
        let sub = &dealing.subshares_for(PartyId(3)).unwrap()[0];
        let sub_bytes = sub.to_bytes();
        let sub_back = Subshare::from_bytes(&sub_bytes, &s, &th).unwrap();
        assert_eq!((sub_back.dealer, sub_back.subset), (sub.dealer, sub.subset));
        back.check_subshare(&sub_back).unwrap();
        // Length first: one byte more or less, or another committee's length.
        assert!(matches!(
            SubshareCommitments::from_bytes(&bytes[..bytes.len() - 1], &s, &th),
            Err(HeError::WrongSize { .. })
        ));
        let other = Threshold::new(4, 3).unwrap();
        assert!(matches!(
            SubshareCommitments::from_bytes(&bytes, &s, &other),
            Err(HeError::WrongSize { .. })
        ));
        let mut long = sub_bytes.to_vec();
        long.push(0);
        assert!(matches!(
            Subshare::from_bytes(&long, &s, &th),
            Err(HeError::WrongSize { .. })
        ));
        // Another session.
        let s2 = session(HeParams::Fast64);
        assert!(matches!(
            SubshareCommitments::from_bytes(&bytes, &s2, &th),
            Err(HeError::WrongKey { .. })
        ));
        assert!(matches!(
            Subshare::from_bytes(&sub_bytes, &s2, &th),
            Err(HeError::WrongKey { .. })
        ));
        // A dealer outside the committee, a holder set not of size t − 1.
        let at = HEADER_LEN + 32;
        let mut bad = sub_bytes.to_vec();
        bad[at..at + 4].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            Subshare::from_bytes(&bad, &s, &th),
            Err(HeError::UnknownParty { .. })
        ));
        let mut bad = sub_bytes.to_vec();
        bad[at + 4..at + 8].copy_from_slice(&0b11u32.to_le_bytes());
        assert!(matches!(
            Subshare::from_bytes(&bad, &s, &th),
            Err(HeError::SubshareMismatch { .. })
        ));
        // Another threshold written in commitments of the right length.
        let mut bad = bytes.clone();
        bad[at + 4..at + 8].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            SubshareCommitments::from_bytes(&bad, &s, &th),
            Err(HeError::DealingMismatch { .. })
        ));
    }

    /// A dealer whose subshares do not sum to its key share — each one opening
    /// its own commitment — fails the `Σ_T c` check against its public share.
    #[test]
    fn a_dealing_not_summing_to_the_key_fails_the_sum_check() {
        let s = session(HeParams::Secure128);
        let th = Threshold::new(5, 3).unwrap();
        let key = KeyShareGen::new(&s).generate(PartyId(3));
        let mut dealing = ThresholdDealer::new(&th).deal(&key.secret).unwrap();
        // Change r_{3,T} for the 4th T (one coefficient by 1) and commit to it honestly.
        let Words::W128(r) = &mut dealing.subshares[3] else {
            panic!("Secure128")
        };
        r[0] = r[0].wrapping_add(1);
        let a: Vec<u128> = s.common_mask();
        let mut c = vec![0u128; a.len()];
        u128::semi_reverse_conv(&mut c, &a, r);
        u128::add_tuniform(&mut c, s.params.noise_bound_log2(), &mut Rng::new());
        dealing.commitments.commitments[3] = Words::W128(c);
        for j in 0..5 {
            for sub in dealing.subshares_for(PartyId(j)).unwrap() {
                dealing.commitments().check_subshare(&sub).unwrap();
            }
        }
        let e = dealing.commitments().check_public(&key.public).unwrap_err();
        assert!(
            matches!(e, HeError::DealingMismatch { dealer: 3, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("dealer 3"), "{e}");
        let mut col = ThresholdKeyCollector::new(&s, &th, PartyId(0)).unwrap();
        assert!(matches!(
            col.add_dealer(dealing.commitments(), &key.public),
            Err(HeError::DealingMismatch { dealer: 3, .. })
        ));
    }

    /// Upper 10^-9 point of χ² with 255 degrees of freedom (Wilson–Hilferty:
    /// `k·(1 − 2/(9k) + z·sqrt(2/(9k)))³` with `z = 6.0`, `P(Z > 6) ≈ 10^-9`),
    /// about 415: each χ² test below fails by chance with probability ≈ 10^-9.
    fn chi2_255_critical() -> f64 {
        let k = 255.0f64;
        let h = 2.0 / (9.0 * k);
        k * (1.0 - h + 6.0 * h.sqrt()).powi(3)
    }

    /// The view of the `t − 1` holders `S = T_0` (every subshare but `r_{S}`)
    /// for dealings of the secret `bit`: per coefficient, the low 4 bits of the
    /// first and of the last (completing) subshare they see, as one of 256 cells.
    fn view_cells(bit: u64, dealings: usize) -> Vec<u64> {
        let s = session(HeParams::Fast64);
        let th = Threshold::new(5, 3).unwrap();
        let key = key_with_secret(&s, 0, bit);
        let mut counts = vec![0u64; 256];
        for _ in 0..dealings {
            let d = ThresholdDealer::new(&th).deal(&key).unwrap();
            // S = subsets[0] misses only r_S = subshares[0]; it sees the others,
            // including the completing subshares[9] = ±s − Σ_{T≠T_9} r_T.
            let first = w64(&d.subshares[1]);
            let last = w64(&d.subshares[9]);
            for (&x, &y) in first.iter().zip(last) {
                counts[((x & 15) << 4 | (y & 15)) as usize] += 1;
            }
        }
        counts
    }

    /// Exact argument: the dealing is uniform on `{(r_T) : Σ_T r_T = ±s}`, so any
    /// `C − 1` subshares — all a set of `t − 1` holders sees — are independent
    /// and uniform whatever `s`. Tested: the cells of the view for the secrets 0
    /// and 1 follow one distribution (χ² homogeneity), and that distribution is
    /// uniform (χ² goodness of fit), each at a false-failure rate of about 10^-9.
    #[test]
    fn what_t_minus_1_holders_see_is_independent_of_the_secret() {
        let (a, b) = (view_cells(0, 4), view_cells(1, 4));
        let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
        let mut homogeneity = 0.0;
        let mut uniform = 0.0;
        for (&x, &y) in a.iter().zip(&b) {
            let (x, y) = (x as f64, y as f64);
            let pooled = (x + y) / (na + nb);
            if pooled > 0.0 {
                homogeneity += (x - na * pooled).powi(2) / (na * pooled)
                    + (y - nb * pooled).powi(2) / (nb * pooled);
            }
            let e = nb / 256.0;
            uniform += (y - e).powi(2) / e;
        }
        let crit = chi2_255_critical();
        assert!((410.0..420.0).contains(&crit), "{crit}");
        assert!(homogeneity < crit, "χ² homogeneity {homogeneity} ≥ {crit}");
        assert!(uniform < crit, "χ² uniformity {uniform} ≥ {crit}");
    }
}
