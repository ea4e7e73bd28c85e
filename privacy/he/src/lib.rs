//! consortia-he: the multiparty additive homomorphic encryption on tfhe's `core_crypto`, and the
//! encoding of model updates into its plaintexts ([`update`]).
//!
//! Multiparty additive homomorphic encryption of quantised model updates.
//!
//! An N-out-of-N RLWE scheme after Mouchet, Troncoso-Pastoriza, Bossuat,
//! Hubaux, "Multiparty Homomorphic Encryption from Ring-Learning-with-Errors",
//! PoPETs 2021(4) (and Lattigo's `multiparty` package), built on tfhe 1.8.2's
//! `core_crypto` compact public-key encryption (Joye, eprint 2023/603). One
//! value is packed per polynomial coefficient; sums are exact modulo
//! `2^plaintext_bits`.
//!
//! Protocol steps, one type each:
//! 1. [`KeyShareGen`]: each partner draws a [`SecretKeyShare`], a
//!    [`PublicKeyShare`] and its [`KeyCommitment`].
//! 2. [`CollectiveKeyAggregator`]: commitments first, then shares, into the
//!    [`CollectivePublicKey`].
//! 3. [`Encryptor`]: each partner encrypts its update into an
//!    [`EncryptedVector`] of chunks.
//! 4. [`Aggregate`]: the coordinator sums chunks from their wire bytes.
//! 5. [`Sketch`]: a key holder is sent only the aggregate's masks
//!    ([`Aggregate::mask_chunk`], rebuilt with [`Aggregate::set_mask_chunk`])
//!    and checks them against its digest; after a challenge drawn once the
//!    aggregate is fixed, each contributor sketches its own masks and the
//!    holder checks that the sketches add up to the sketch of the aggregate
//!    (80 random subset sums: a wrong aggregate passes with probability at
//!    most 2^-80, [`sketch`] module docs). The holder's work does not grow with the
//!    number of contributors.
//! 6. [`PartialDecryptor`]: every partner publishes a flooded
//!    [`DecryptionShare`] of the aggregate it checked.
//! 7. [`combine`] (or [`Combiner`], one share — or one piece of a share — at
//!    a time): all shares give the sum.
//!
//! Threshold (t-of-N) decryption among a key committee of at most 12
//! ([`threshold`]): each partner reshares its key share by replicated secret
//! sharing ([`ThresholdDealer`], checked by [`ThresholdKeyCollector`]), and any
//! `t` holders decrypt ([`ThresholdPartialDecryptor`], [`ThresholdCombiner`]).
//! The arithmetic only: the protocol messages are not wired yet.
//!
//! Threat model of this module: partners and coordinator are
//! honest-but-curious; a malicious client could craft ciphertexts whose noise
//! leaks key bits through the decryption (no zero-knowledge proof of
//! well-formed encryption is required here). The federation protocol adds
//! signed contributions and signed sketches on top (`consortia-client`'s
//! `keys`), so that key holders only open sums of updates their senders
//! signed.
//!
//! Decryption shares are flooded with Gaussian noise 2^40 times the noise
//! they hide (Secure128), which bounds what all published shares together
//! reveal about the key shares in Rényi divergence: one key tolerates
//! [`HeParams::max_releases_per_key`] decryptions at a stated loss of under 4
//! bits of security (params module docs), after which it must be replaced.

mod aggregate;
mod decrypt;
mod encrypt;
mod error;
mod flood;
mod keygen;
mod params;
pub mod threshold;
mod wire;
mod word;

pub mod sketch;
pub mod update;

pub use aggregate::Aggregate;
pub use decrypt::{
    Combiner, DecryptionShare, PartialDecryptor, combine, decode_signed, decryption_noise,
    encode_signed,
};
pub use encrypt::{EncryptedVector, Encryptor, MAX_CHUNK_BYTES, MAX_VALUES, Shape};
pub use error::HeError;
pub use keygen::{
    CollectiveKeyAggregator, CollectivePublicKey, KeyCommitment, KeySession, KeyShare, KeyShareGen,
    MAX_PARTIES, PartyId, PublicKeyShare, SHARE_CHECKSUM_TAG, SecretKeyShare,
};
pub use params::{FLOOD_TAIL_SIGMAS, FLOODING_RENYI_ORDER, HeParams, SAMPLER_COEFFICIENTS_LOG2};
pub use sketch::{SKETCH_BYTES, SKETCHES, Sketch, Sketcher};
pub use threshold::{
    DecryptionSet, MAX_THRESHOLD_PARTIES, Subset, Subshare, SubshareCommitments, Threshold,
    ThresholdCombiner, ThresholdDealer, ThresholdDealing, ThresholdKeyCollector, ThresholdKeyShare,
    ThresholdPartialDecryptor, threshold_combine, threshold_flood_sigma, threshold_noise_variance,
};
