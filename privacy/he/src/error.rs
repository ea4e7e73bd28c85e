//! Errors of the homomorphic-encryption protocols.

use super::keygen::PartyId;

/// What went wrong in a homomorphic-encryption step; each message says what was
/// expected.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    /// Input bytes have the wrong length.
    #[error("{what}: {got} bytes, expected {expected}; the data is truncated or of another shape")]
    WrongSize {
        /// Which object.
        what: &'static str,
        /// Expected byte count.
        expected: usize,
        /// Received byte count.
        got: usize,
    },
    /// Input exceeds a size limit.
    #[error("{what}: {got} exceeds the limit {limit}")]
    TooLarge {
        /// Which object.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The received size.
        got: u64,
    },
    /// Input does not start with the expected magic bytes or version.
    #[error("{what}: not a consortia {what} (bad magic or unsupported version)")]
    BadHeader {
        /// Which object.
        what: &'static str,
    },
    /// The parameter set differs from the expected one.
    #[error("parameter set id {got} received, expected {expected:?}")]
    WrongParams {
        /// Expected parameter set.
        expected: super::HeParams,
        /// Received identifier.
        got: u8,
    },
    /// The ring dimension differs from the parameter set's.
    #[error("dimension {got} received, expected {expected}")]
    WrongDimension {
        /// Expected polynomial size.
        expected: usize,
        /// Received polynomial size.
        got: usize,
    },
    /// The ciphertext modulus differs from the parameter set's.
    #[error("modulus 2^{got} received, expected 2^{expected}")]
    WrongModulus {
        /// Expected `log2 q`.
        expected: u32,
        /// Received `log2 q`.
        got: u32,
    },
    /// A count (values, chunks, polynomials, shares) differs from the expected one.
    #[error("{what}: {got} received, expected {expected}")]
    WrongCount {
        /// Which count.
        what: &'static str,
        /// Expected count.
        expected: u64,
        /// Received count.
        got: u64,
    },
    /// Data was produced under another collective key or session.
    #[error("{what} belongs to another collective key or session; check the session id")]
    WrongKey {
        /// Which object.
        what: &'static str,
    },
    /// A plaintext does not fit the plaintext modulus.
    #[error(
        "value {value} at index {index} does not fit in {bits} plaintext bits; reduce it modulo 2^{bits} (encode_signed for signed values)"
    )]
    ValueOutOfRange {
        /// Position in the input.
        index: usize,
        /// The offending value.
        value: i128,
        /// Plaintext bits.
        bits: u32,
    },
    /// A party id outside the committee.
    #[error("party {party:?} is not in the committee of {parties} parties (ids 0..{parties})")]
    UnknownParty {
        /// The party.
        party: PartyId,
        /// Committee size.
        parties: u32,
    },
    /// A party submitted twice.
    #[error("party {0:?} already submitted")]
    DuplicateParty(PartyId),
    /// Not every party has contributed what the step needs.
    #[error("{what}: {have} of {need} parties so far; wait for the others")]
    Incomplete {
        /// Which step.
        what: &'static str,
        /// Received.
        have: u32,
        /// Needed.
        need: u32,
    },
    /// A public-key share does not match its party's commitment.
    #[error("public-key share of party {0:?} does not match its commitment; reject this party")]
    CommitmentMismatch(PartyId),
    /// The committee size is not supported.
    #[error("a committee needs 1 to {max} parties, got {got}")]
    BadCommittee {
        /// Requested size.
        got: u32,
        /// Largest supported size.
        max: u32,
    },
    /// Too few contributions in an aggregate to decrypt it.
    #[error("aggregate has {have} contributors, at least {min} required before decrypting")]
    TooFewContributors {
        /// Contributors in the aggregate.
        have: u32,
        /// Required minimum.
        min: u32,
    },
    /// More contributions than the noise budget allows.
    #[error("chunk {chunk} already has {max} contributions, the most the noise budget allows")]
    TooManyContributors {
        /// Chunk index.
        chunk: u32,
        /// The maximum.
        max: u32,
    },
    /// This key share already produced a decryption share for this aggregate.
    #[error("this key share already answered aggregate {digest}; decrypting twice leaks the key")]
    AlreadyDecrypted {
        /// Hex digest of the aggregate.
        digest: String,
    },
    /// A decryption share was computed over another aggregate.
    #[error("decryption share of party {0:?} was computed over another aggregate")]
    DigestMismatch(PartyId),
    /// tfhe's conformance check rejected a decoded entity.
    #[error("{what} is not conformant with the parameter set")]
    NotConformant {
        /// Which entity.
        what: &'static str,
    },
    /// A stored secret key share's checksum does not match its contents.
    #[error("its checksum does not match its contents: the file is damaged")]
    ChecksumMismatch,
    /// A threshold outside `2..=parties`.
    #[error(
        "threshold {threshold} of {parties} key holders: a threshold committee needs \
         2 ≤ threshold ≤ parties (use N-of-N decryption for a threshold of 1 or of all)"
    )]
    BadThreshold {
        /// The requested threshold.
        threshold: u32,
        /// Committee size.
        parties: u32,
    },
    /// A threshold committee above the size replicated sharing supports.
    #[error(
        "a threshold committee of {got} key holders: replicated sharing needs C(N, t−1) \
         subshares per dealer and supports at most {max} holders; keep at most {max} partners \
         on the key committee, or decrypt N-of-N"
    )]
    ThresholdCommitteeTooLarge {
        /// Requested committee size.
        got: u32,
        /// Largest supported size.
        max: u32,
    },
    /// A decryption set smaller than the threshold.
    #[error("decryption set of {have} key holders, the threshold is {threshold}")]
    BelowThreshold {
        /// Holders in the set.
        have: u32,
        /// The threshold.
        threshold: u32,
    },
    /// A key holder asked to take part in a decryption set it is not in.
    #[error("key holder {0:?} is not in this decryption set")]
    NotInDecryptionSet(PartyId),
    /// A dealt subshare does not open its dealer's commitment: grounds for a
    /// complaint against the dealer.
    #[error(
        "subshare of dealer {dealer} for holder set {subset} does not match the dealer's \
         commitment ({why}); complain against dealer {dealer}"
    )]
    SubshareMismatch {
        /// The dealer.
        dealer: u32,
        /// The subset `T` of the subshare, as `{i, j, …}`.
        subset: String,
        /// Which check failed.
        why: &'static str,
    },
    /// A dealer's commitments do not add up to its public key share: its
    /// subshares do not sum to its key share.
    #[error(
        "the subshare commitments of dealer {dealer} do not add up to its public key share \
         ({why}); exclude dealer {dealer}"
    )]
    DealingMismatch {
        /// The dealer.
        dealer: u32,
        /// Which check failed.
        why: &'static str,
    },
    /// A secret key share is not the one behind its party's public share.
    #[error(
        "it is not the secret behind party {party}'s public share in the federation key ({why}): \
         the share is damaged"
    )]
    ShareMismatch {
        /// The share's party.
        party: u32,
        /// Which check failed.
        why: &'static str,
    },
    /// A secret key file is unreadable, malformed or too permissive.
    #[error("secret key share file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// I/O error on a key file.
    #[error("secret key share file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
