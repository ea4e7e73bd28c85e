//! consortia-proto: the gRPC contract between the coordinator and partner
//! agents, generated from `proto/consortia.proto`, and the limits both sides
//! apply to it.
//!
//! Models travel as chunks of at most [`CHUNK_VALUES`] parameters so that no
//! single message exceeds [`MAX_MESSAGE_BYTES`]; both sides configure tonic to
//! refuse larger messages before decoding them.
//!
//! [`FederationKey`] is the federation's public key material as both sides
//! hold it, with its wire form ([`CollectiveKey`]) and stored form
//! ([`federation_key`]).

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("consortia.v1");
}

pub use generated::*;

impl DeclineKind {
    /// The `reason` code of a decline: the label of the declines metrics and the
    /// `reason` field of the log event (`round`, `budget`, `decryption`).
    pub fn code(self) -> &'static str {
        match self {
            DeclineKind::Round => "round",
            DeclineKind::Budget => "budget",
            DeclineKind::Decryption => "decryption",
        }
    }
}

pub mod federation_key;

pub use federation_key::{FederationKey, FederationKeyError};

/// Parameters per `ModelChunk` / `UpdateChunk` (16 KiB of `f64`).
///
/// Small on purpose: what a session holds in flight (tonic's encoding buffer,
/// the decoding buffer of the inbound stream, which keeps the capacity of the
/// largest message it has read for as long as the session lasts) grows with
/// the largest message, and a coordinator holds one of each per partner.
pub const CHUNK_VALUES: usize = 2_048;

/// Bytes per parameter in `ModelChunk.values` (a little-endian IEEE 754 `f64`).
pub const PARAM_BYTES: usize = 8;

pub use prost::bytes::Bytes;

/// The wire form of parameters in a `ModelChunk` (`values`): each one as a
/// little-endian `f64`, byte for byte the packed encoding of `repeated double`.
pub fn params_bytes(values: &[f64]) -> Bytes {
    let mut out = Vec::with_capacity(values.len() * PARAM_BYTES);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Bytes::from(out)
}

impl ModelChunk {
    /// Number of parameters the chunk carries, or `None` when its `values` are
    /// not a whole number of 8-byte doubles (a malformed chunk).
    pub fn param_count(&self) -> Option<usize> {
        self.values
            .len()
            .is_multiple_of(PARAM_BYTES)
            .then_some(self.values.len() / PARAM_BYTES)
    }

    /// Appends the chunk's parameters to `out` (a trailing partial double, which
    /// [`ModelChunk::param_count`] reports as malformed, is ignored).
    pub fn extend_params(&self, out: &mut Vec<f64>) {
        out.extend(self.values.chunks_exact(PARAM_BYTES).map(|b| {
            let mut le = [0u8; PARAM_BYTES];
            le.copy_from_slice(b);
            f64::from_le_bytes(le)
        }));
    }
}

/// Largest encoded message either side accepts (checked by tonic before decoding).
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// Bytes per `DecryptionSharePiece` (the share wire form is cut into pieces this long).
pub const SHARE_PIECE_BYTES: usize = 1024 * 1024;

/// Largest model, in parameters, a task may declare.
pub const MAX_PARAMS: usize = 16 * 1024 * 1024;

/// What a partner signs for an encrypted update: SHA-256 of a label, the
/// collective key's id, the round, the partner's name, its example count and,
/// for every ciphertext chunk in order, the SHA-256 of its masks and of its
/// bodies. Hashing the two halves separately lets key holders, who receive
/// only the masks and the bodies' hash, check the signature. Computed the same
/// way by the sender, the coordinator and every key holder.
pub struct ContributionDigest {
    hash: sha2::Sha256,
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

impl ContributionDigest {
    /// Starts the digest of `partner`'s update for attempt `attempt` of
    /// `round` of the task with canonical hash `task_hash`, under key `key_id`.
    pub fn new(
        key_id: &[u8],
        task_hash: &[u8; 32],
        round: u64,
        attempt: u64,
        partner: &str,
        example_count: u64,
    ) -> Self {
        let hash = contributor_hash(
            b"consortia/secure-update/v3",
            key_id,
            task_hash,
            round,
            attempt,
            partner,
            example_count,
        );
        ContributionDigest { hash }
    }

    /// Absorbs the next chunk, given the SHA-256 of its masks and of its bodies.
    pub fn chunk(&mut self, masks_sha256: &[u8; 32], bodies_sha256: &[u8; 32]) {
        use sha2::Digest;
        self.hash.update(masks_sha256);
        self.hash.update(bodies_sha256);
    }

    /// The digest to sign or verify.
    pub fn finish(self) -> [u8; 32] {
        use sha2::Digest;
        self.hash.finalize().into()
    }
}

/// What every hash a contributor signs starts with: domain tag, key id (u64
/// length, bytes), task hash, round, attempt, the contributor's name (u64
/// length, UTF-8) and its example count.
fn contributor_hash(
    tag: &[u8],
    key_id: &[u8],
    task_hash: &[u8; 32],
    round: u64,
    attempt: u64,
    partner: &str,
    example_count: u64,
) -> sha2::Sha256 {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(tag);
    hash.update((key_id.len() as u64).to_le_bytes());
    hash.update(key_id);
    hash.update(task_hash);
    hash.update(round.to_le_bytes());
    hash.update(attempt.to_le_bytes());
    hash.update((partner.len() as u64).to_le_bytes());
    hash.update(partner.as_bytes());
    hash.update(example_count.to_le_bytes());
    hash
}

/// What a key holder signs of its public-key share: SHA-256 over the domain
/// tag `consortia/key-share/v1`, the 32-byte session id, the party number
/// (u32 little-endian), the partner name (u64 length, UTF-8), the task's
/// 32-byte canonical hash and the SHA-256 of the share's wire form.
pub fn key_share_digest(
    session_id: &[u8; 32],
    party: u32,
    partner: &str,
    task_hash: &[u8; 32],
    public_share: &[u8],
) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"consortia/key-share/v1");
    h.update(session_id);
    h.update(party.to_le_bytes());
    h.update((partner.len() as u64).to_le_bytes());
    h.update(partner.as_bytes());
    h.update(task_hash);
    h.update(sha256(public_share));
    h.finalize().into()
}

/// What a dealer of a t-of-N key signs of its dealing: SHA-256 over the
/// domain tag `consortia/threshold-dealing/v2`, the 32-byte session id, the
/// task's 32-byte canonical hash, the dealer's party number and name (u32;
/// u64 length, UTF-8), the committee size and threshold (u32 each), the
/// SHA-256 of the commitments' wire form, and the number of sealed boxes
/// (u64) followed by each box's digest ([`sealed_subshares_digest`], u64
/// length then bytes), in recipient order. Two different dealings signed by
/// one dealer for one session are a proof of misbehaviour on their own; a box
/// whose digest is not among them was not sealed by the dealer.
#[allow(clippy::too_many_arguments)]
pub fn threshold_dealing_digest(
    session_id: &[u8; 32],
    task_hash: &[u8; 32],
    dealer: u32,
    dealer_name: &str,
    parties: u32,
    threshold: u32,
    commitments: &[u8],
    box_digests: &[Vec<u8>],
) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"consortia/threshold-dealing/v2");
    h.update(session_id);
    h.update(task_hash);
    h.update(dealer.to_le_bytes());
    h.update((dealer_name.len() as u64).to_le_bytes());
    h.update(dealer_name.as_bytes());
    h.update(parties.to_le_bytes());
    h.update(threshold.to_le_bytes());
    h.update(sha256(commitments));
    h.update((box_digests.len() as u64).to_le_bytes());
    for d in box_digests {
        h.update((d.len() as u64).to_le_bytes());
        h.update(d);
    }
    h.finalize().into()
}

/// The digest of one box of subshares a dealer sealed, which its dealing's
/// signature covers: SHA-256 over the domain tag `consortia/sealed-subshares/v1`,
/// the 32-byte session id, the task's 32-byte canonical hash, the dealer's and
/// the recipient's party numbers (u32 each), the dealer's X25519 key and the
/// ciphertext (u64 length then bytes each).
pub fn sealed_subshares_digest(
    session_id: &[u8; 32],
    task_hash: &[u8; 32],
    dealer: u32,
    sealed: &SealedSubshares,
) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"consortia/sealed-subshares/v1");
    h.update(session_id);
    h.update(task_hash);
    h.update(dealer.to_le_bytes());
    h.update(sealed.recipient.to_le_bytes());
    h.update((sealed.dealer_key.len() as u64).to_le_bytes());
    h.update(&sealed.dealer_key);
    h.update((sealed.ciphertext.len() as u64).to_le_bytes());
    h.update(&sealed.ciphertext);
    h.finalize().into()
}

/// The digest of a complaint's evidence: SHA-256 over the domain tag
/// `consortia/threshold-complaint-evidence/v1`, the kind (i32), the box's
/// [`sealed_subshares_digest`] (32 zero bytes without a box) and the revealed
/// private key (u64 length then bytes; empty without one). Recorded in the
/// coordinator's incident log.
pub fn threshold_complaint_evidence_digest(
    kind: i32,
    box_digest: &[u8; 32],
    recipient_key: &[u8],
) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"consortia/threshold-complaint-evidence/v1");
    h.update(kind.to_le_bytes());
    h.update(box_digest);
    h.update((recipient_key.len() as u64).to_le_bytes());
    h.update(recipient_key);
    h.finalize().into()
}

/// What a complainer signs: SHA-256 over the domain tag
/// `consortia/threshold-complaint/v1`, the 32-byte session id, the task's
/// 32-byte canonical hash, the dealer's party number (u32), the complainer's
/// party number and name (u32; u64 length, UTF-8) and the evidence digest
/// ([`threshold_complaint_evidence_digest`]).
pub fn threshold_complaint_digest(
    session_id: &[u8; 32],
    task_hash: &[u8; 32],
    dealer: u32,
    recipient: u32,
    recipient_name: &str,
    evidence: &[u8; 32],
) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"consortia/threshold-complaint/v1");
    h.update(session_id);
    h.update(task_hash);
    h.update(dealer.to_le_bytes());
    h.update(recipient.to_le_bytes());
    h.update((recipient_name.len() as u64).to_le_bytes());
    h.update(recipient_name.as_bytes());
    h.update(evidence);
    h.finalize().into()
}

/// What a recipient of subshares signs of the X25519 public key a dealer seals
/// them to: SHA-256 over the domain tag `consortia/subshare-recipient-key/v1`,
/// the 32-byte session id, the task's 32-byte canonical hash, the recipient's
/// party number and name (u32; u64 length, UTF-8), the dealer's party number
/// (u32) and the 32-byte public key.
pub fn subshare_recipient_key_digest(
    session_id: &[u8; 32],
    task_hash: &[u8; 32],
    recipient: u32,
    recipient_name: &str,
    dealer: u32,
    public_key: &[u8; 32],
) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"consortia/subshare-recipient-key/v1");
    h.update(session_id);
    h.update(task_hash);
    h.update(recipient.to_le_bytes());
    h.update((recipient_name.len() as u64).to_le_bytes());
    h.update(recipient_name.as_bytes());
    h.update(dealer.to_le_bytes());
    h.update(public_key);
    h.finalize().into()
}

/// The protocol this build speaks, sent in `Hello.protocol_version`:
/// 2 is joint decryption by the aggregate's masks and signed sketches (key
/// holders no longer receive every contributor's masks); 3 numbers every
/// coin toss of an attempt and binds the number into the commitment,
/// challenge and sketch hashes (`DecryptionContext`, formats v2), so that a
/// t-of-N decryption can be tossed again for the same aggregate, and binds
/// the sum a sketch is for (aggregate and contributions digests, sketch
/// format v3) into the sketch hash, a contributor signing sketches for one
/// sum per attempt. Agents that
/// predate the field send 0; a coordinator serving a secure task refuses
/// older agents at `Hello`, since their hashes would not match.
pub const PROTOCOL_VERSION: u32 = 3;

/// The oldest `Hello.protocol_version` a coordinator serving a secure task accepts.
pub const MIN_SECURE_PROTOCOL_VERSION: u32 = 3;

/// Most contributors one decryption request may name; every contributor's
/// signed sketch then still fits one `ContributorSketches` message.
pub const MAX_CONTRIBUTORS: usize = 1024;

/// Bytes of a challenge seed, a challenge and a commitment.
pub const CHALLENGE_BYTES: usize = 32;

/// Most coin tosses per (round, attempt): a t-of-N decryption whose key
/// holder leaves after the commitment list was sent is tossed again for the
/// same aggregate with the holders left, at most this many times in all.
pub const MAX_TOSSES_PER_ATTEMPT: u32 = 4;

/// One coin toss at jointly decrypting a round's sum, as every hash of it
/// and of its sketches binds it: the task's canonical hash, the collective
/// key's id, the round, the attempt, the toss and the digest of the
/// aggregate's masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecryptionContext {
    /// The task's 32-byte canonical hash.
    pub task_hash: [u8; 32],
    /// The collective key's id.
    pub key_id: [u8; 32],
    /// The round being decrypted.
    pub round: u64,
    /// The attempt being decrypted.
    pub attempt: u64,
    /// The coin toss of that attempt (0 first, then 1, ... for the same
    /// aggregate, below [`MAX_TOSSES_PER_ATTEMPT`]).
    pub toss: u32,
    /// The digest of the aggregate's masks.
    pub aggregate_digest: [u8; 32],
}

impl DecryptionContext {
    /// The context every challenge hash of this decryption starts with:
    /// domain tag, task hash, key id (u64 length, bytes), round, attempt,
    /// toss (u32), the aggregate's mask digest.
    fn challenge_hash(&self, tag: &[u8]) -> sha2::Sha256 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(tag);
        h.update(self.task_hash);
        h.update((self.key_id.len() as u64).to_le_bytes());
        h.update(self.key_id);
        h.update(self.round.to_le_bytes());
        h.update(self.attempt.to_le_bytes());
        h.update(self.toss.to_le_bytes());
        h.update(self.aggregate_digest);
        h
    }

    /// Key holder `holder`'s commitment to its challenge seed `seed`:
    /// SHA-256 over the domain tag `consortia/challenge-commit/v2`, the task
    /// hash, the key id, round, attempt, toss, the aggregate's mask digest, the
    /// holder's name (u64 length, UTF-8) and the 32-byte seed (a hash
    /// commitment: binding and, for a uniformly random seed, hiding).
    pub fn commitment(&self, holder: &str, seed: &[u8; 32]) -> [u8; 32] {
        use sha2::Digest;
        let mut h = self.challenge_hash(b"consortia/challenge-commit/v2");
        h.update((holder.len() as u64).to_le_bytes());
        h.update(holder.as_bytes());
        h.update(seed);
        h.finalize().into()
    }

    /// True when `seed` opens `commitment`, made by `holder`
    /// ([`DecryptionContext::commitment`]).
    pub fn opens(&self, holder: &str, seed: &[u8; 32], commitment: &[u8; 32]) -> bool {
        self.commitment(holder, seed) == *commitment
    }

    /// The joint challenge: SHA-256 over the domain tag
    /// `consortia/challenge/v2`, the same context as
    /// [`DecryptionContext::commitment`], and every (holder, seed) sorted by
    /// holder name (u64 length, UTF-8, 32-byte seed). Uniformly random as
    /// long as one holder's seed is, whatever the others chose after seeing
    /// its commitment only.
    pub fn joint_challenge<'a>(
        &self,
        seeds: impl IntoIterator<Item = (&'a str, &'a [u8; 32])>,
    ) -> [u8; 32] {
        use sha2::Digest;
        let mut h = self.challenge_hash(b"consortia/challenge/v2");
        let mut seeds: Vec<(&str, &[u8; 32])> = seeds.into_iter().collect();
        seeds.sort_by(|a, b| a.0.cmp(b.0));
        for (holder, seed) in seeds {
            h.update((holder.len() as u64).to_le_bytes());
            h.update(holder.as_bytes());
            h.update(seed);
        }
        h.finalize().into()
    }

    /// What contributor `partner`, of `example_count` examples, signs of its
    /// sketch `sketch` under `challenge` in this decryption of the sum of
    /// the contributions with digest `contributions` ([`sketch_digest`]: it
    /// binds this context's aggregate digest and `contributions`, the one
    /// sum the sketch may open).
    pub fn sketch_digest(
        &self,
        partner: &str,
        example_count: u64,
        contributions: &[u8; 32],
        challenge: &[u8; 32],
        sketch: &[u8],
    ) -> [u8; 32] {
        sketch_digest(
            &self.key_id,
            &self.task_hash,
            self.round,
            self.attempt,
            self.toss,
            partner,
            example_count,
            &SketchedSum {
                aggregate_digest: self.aggregate_digest,
                contributions_digest: *contributions,
            },
            challenge,
            sketch,
        )
    }
}

/// The one sum a contributor's sketch is signed for: the digest of the
/// aggregate's masks and [`contributions_digest`] of the contributions
/// summed (`SketchRequest.aggregate_digest`, `.contributions_digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SketchedSum {
    /// The digest of the aggregate's masks.
    pub aggregate_digest: [u8; 32],
    /// [`contributions_digest`] of the sum's contributions.
    pub contributions_digest: [u8; 32],
}

/// What a contributor signs of its sketch: SHA-256 over the domain tag
/// `consortia/mask-sketch/v3`, the key id (u64 length, bytes), the task
/// hash, round, attempt, the contributor's name (u64 length, UTF-8), its
/// example count, the coin toss (u32), the sum's aggregate digest and
/// contributions digest (32 bytes each, [`SketchedSum`]), the 32-byte
/// challenge and the SHA-256 of the sketch's wire form.
#[allow(clippy::too_many_arguments)]
pub fn sketch_digest(
    key_id: &[u8],
    task_hash: &[u8; 32],
    round: u64,
    attempt: u64,
    toss: u32,
    partner: &str,
    example_count: u64,
    sum: &SketchedSum,
    challenge: &[u8; 32],
    sketch: &[u8],
) -> [u8; 32] {
    use sha2::Digest;
    let mut h = contributor_hash(
        b"consortia/mask-sketch/v3",
        key_id,
        task_hash,
        round,
        attempt,
        partner,
        example_count,
    );
    h.update(toss.to_le_bytes());
    h.update(sum.aggregate_digest);
    h.update(sum.contributions_digest);
    h.update(challenge);
    h.update(sha256(sketch));
    h.finalize().into()
}

/// SHA-256 over the domain tag `consortia/decrypt-contributions/v1`, the
/// number of contributions (u64), then each in order: name (u64 length,
/// UTF-8), example count and the SHA-256 of its certificate: what every
/// toss of one (round, attempt) must name exactly, and what a contributor's
/// signed sketch names of the sum it is for ([`SketchedSum`]).
pub fn contributions_digest(contributions: &[Contribution]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"consortia/decrypt-contributions/v1");
    h.update((contributions.len() as u64).to_le_bytes());
    for c in contributions {
        h.update((c.partner.len() as u64).to_le_bytes());
        h.update(c.partner.as_bytes());
        h.update(c.example_count.to_le_bytes());
        h.update(sha256(&c.certificate));
    }
    h.finalize().into()
}

/// A decryption share's wire form cut into [`DecryptionSharePiece`]s of
/// [`SHARE_PIECE_BYTES`] (the last one shorter), in order.
pub fn share_pieces(round: u64, share: &[u8]) -> impl Iterator<Item = DecryptionSharePiece> + '_ {
    let piece_count = share.len().div_ceil(SHARE_PIECE_BYTES).max(1) as u32;
    share
        .chunks(SHARE_PIECE_BYTES)
        .enumerate()
        .map(move |(index, bytes)| DecryptionSharePiece {
            round,
            index: index as u32,
            piece_count,
            bytes: bytes.to_vec(),
            total_bytes: share.len() as u64,
            toss: 0,
        })
}

/// Number of chunks needed for `param_count` parameters.
pub fn chunk_count(param_count: usize) -> u32 {
    param_count.div_ceil(CHUNK_VALUES).max(1) as u32
}

/// Range of parameter indices carried by chunk `index`.
pub fn chunk_range(param_count: usize, index: u32) -> std::ops::Range<usize> {
    let start = (index as usize)
        .saturating_mul(CHUNK_VALUES)
        .min(param_count);
    let end = start.saturating_add(CHUNK_VALUES).min(param_count);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_parameter_once() {
        for n in [
            1usize,
            2,
            CHUNK_VALUES - 1,
            CHUNK_VALUES,
            CHUNK_VALUES + 1,
            1_000_000,
        ] {
            let count = chunk_count(n);
            let mut next = 0;
            for i in 0..count {
                let r = chunk_range(n, i);
                assert_eq!(r.start, next);
                assert!(!r.is_empty());
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }

    /// Every contributor's signed sketch fits one message, at the most
    /// contributors, the longest names and signatures accepted.
    #[test]
    fn every_sketch_fits_one_message() {
        let sketch = consortia_he::Sketch::encoded_len(consortia_he::HeParams::Secure128);
        let msg = ServerMessage {
            kind: Some(server_message::Kind::ContributorSketches(
                ContributorSketches {
                    toss: 0,
                    round: u64::MAX,
                    attempt: u64::MAX,
                    sketches: vec![
                        ContributorSketch {
                            partner: "p".repeat(federation_key::MAX_PARTNER_NAME_BYTES),
                            sketch: vec![0xff; sketch],
                            signature: vec![0xff; federation_key::MAX_SIGNATURE_BYTES],
                        };
                        MAX_CONTRIBUTORS
                    ],
                },
            )),
        };
        assert!(prost::Message::encoded_len(&msg) < MAX_MESSAGE_BYTES);
    }

    fn context(attempt: u64, aggregate_digest: [u8; 32]) -> DecryptionContext {
        DecryptionContext {
            task_hash: [1; 32],
            key_id: [2; 32],
            round: 7,
            attempt,
            toss: 0,
            aggregate_digest,
        }
    }

    #[test]
    fn challenges_bind_their_context_and_every_seed() {
        let x = context(9, [3; 32]);
        let (a, b) = ([4u8; 32], [5u8; 32]);
        let c = x.joint_challenge([("a", &a), ("b", &b)]);
        // Sorted by holder: the order they are given in does not matter.
        assert_eq!(c, x.joint_challenge([("b", &b), ("a", &a)]));
        assert_ne!(c, x.joint_challenge([("a", &b), ("b", &a)]));
        assert_ne!(
            c,
            context(10, [3; 32]).joint_challenge([("a", &a), ("b", &b)])
        );
        assert_ne!(
            c,
            context(9, [0; 32]).joint_challenge([("a", &a), ("b", &b)])
        );
        // Another toss of the same attempt and aggregate: nothing carries over.
        let next = DecryptionContext { toss: 1, ..x };
        assert_ne!(c, next.joint_challenge([("a", &a), ("b", &b)]));
        assert_ne!(x.commitment("a", &a), next.commitment("a", &a));
        assert_ne!(
            x.sketch_digest("a", 100, &[7; 32], &c, b"sketch"),
            next.sketch_digest("a", 100, &[7; 32], &c, b"sketch")
        );
        // A sketch names its sum: another aggregate or another contribution
        // list of the same attempt and toss is another digest.
        let signed = x.sketch_digest("a", 100, &[7; 32], &c, b"sketch");
        assert_ne!(
            signed,
            context(9, [0; 32]).sketch_digest("a", 100, &[7; 32], &c, b"sketch")
        );
        assert_ne!(signed, x.sketch_digest("a", 100, &[8; 32], &c, b"sketch"));
        let m = x.commitment("a", &a);
        assert_ne!(m, x.commitment("b", &a));
        assert_ne!(m, x.commitment("a", &b));
        assert!(x.opens("a", &a, &m));
        assert!(!x.opens("b", &a, &m) && !x.opens("a", &b, &m));
    }

    /// The hash formats, pinned: what agents and coordinators of different
    /// builds compute must agree byte for byte (the values follow the formats
    /// documented on each function).
    #[test]
    fn challenge_and_sketch_hashes_are_pinned() {
        let x = context(9, [3; 32]);
        let (a, b) = ([4u8; 32], [5u8; 32]);
        assert_eq!(
            hex::encode(x.commitment("a", &a)),
            "8cfbb7130d76b24679557fc672f76f8447a8d3dee940d347d456889592702d12"
        );
        assert_eq!(
            hex::encode(x.joint_challenge([("b", &b), ("a", &a)])),
            "ba67394e9d012ac6006f080b97bae18190932b948787d8da67a3e71521b4e6b1"
        );
        let sketch = x.sketch_digest("a", 100, &[7; 32], &[6; 32], b"sketch");
        assert_eq!(
            hex::encode(sketch),
            "ba04d7c1a100e3b200edb8bbca5f123f92dfe16060e346037dfb4bcf55a55c2f"
        );
        let sum = SketchedSum {
            aggregate_digest: [3; 32],
            contributions_digest: [7; 32],
        };
        assert_eq!(
            sketch,
            sketch_digest(
                &[2; 32], &[1; 32], 7, 9, 0, "a", 100, &sum, &[6; 32], b"sketch"
            )
        );
        let one = Contribution {
            partner: "a".into(),
            example_count: 100,
            certificate: b"cert".to_vec(),
        };
        assert_eq!(
            hex::encode(contributions_digest(std::slice::from_ref(&one))),
            "d4aa66c36ca1de7e8248590be04aa372c80622c9f17a9e37c4c8e675db89009b"
        );
        let mut update = ContributionDigest::new(&[2; 32], &[1; 32], 7, 9, "a", 100);
        update.chunk(&[8; 32], &[9; 32]);
        assert_eq!(
            hex::encode(update.finish()),
            "bb45754fc58c38c6bbe6e2c4d6e7e383ea6f895d7f5444887be50a722e80dbfb"
        );
    }

    #[test]
    fn largest_chunk_fits_the_message_limit() {
        let msg = UpdateChunk {
            round: u64::MAX,
            index: u32::MAX,
            chunk_count: u32::MAX,
            example_count: u64::MAX,
            values: vec![f64::MAX; CHUNK_VALUES],
            train_loss: 1.0,
        };
        assert!(prost::Message::encoded_len(&msg) < MAX_MESSAGE_BYTES);
    }

    /// `ModelChunk` as earlier versions declared it (`repeated double values = 3`).
    #[derive(Clone, PartialEq, prost::Message)]
    struct RepeatedDoubleChunk {
        #[prost(uint64, tag = "1")]
        round: u64,
        #[prost(uint32, tag = "2")]
        index: u32,
        #[prost(double, repeated, tag = "3")]
        values: Vec<f64>,
    }

    #[test]
    fn model_chunk_bytes_are_the_packed_doubles_of_earlier_versions() {
        use prost::Message;
        let values = [0.0, -1.5, f64::MIN_POSITIVE, 1e300, -0.0, 42.0];
        let chunk = ModelChunk {
            round: 7,
            index: 3,
            values: params_bytes(&values),
        };
        let old = RepeatedDoubleChunk {
            round: 7,
            index: 3,
            values: values.to_vec(),
        };
        assert_eq!(chunk.encode_to_vec(), old.encode_to_vec());
        let read = RepeatedDoubleChunk::decode(&chunk.encode_to_vec()[..]).unwrap();
        assert_eq!(read.values, values);
        let back = ModelChunk::decode(&old.encode_to_vec()[..]).unwrap();
        assert_eq!(back.param_count(), Some(values.len()));
        let mut params = Vec::new();
        back.extend_params(&mut params);
        assert_eq!(params, values);
    }

    #[test]
    fn a_model_chunk_of_partial_doubles_is_malformed() {
        let chunk = ModelChunk {
            round: 1,
            index: 0,
            values: Bytes::from_static(&[0u8; 12]),
        };
        assert_eq!(chunk.param_count(), None);
    }
}
