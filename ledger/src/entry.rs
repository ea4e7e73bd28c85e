//! What one ledger entry says, and the canonical bytes its hash covers.
//!
//! # Hash of an entry (format v1)
//!
//! `hash = SHA-256(m)` (FIPS 180-4) where `m` is the concatenation of
//!
//! | part | encoding |
//! |------|----------|
//! | domain tag | the 25 ASCII bytes `consortia-ledger/entry/v1` followed by one `0x00` byte |
//! | `index` | u64 |
//! | `prev_hash` | 32 raw bytes (all zero for the first entry, index 0) |
//! | `record.task` | str |
//! | `record.round` | u64 |
//! | `record.time_unix_ms` | u64 |
//! | `record.participants` | u64 count, then each as str, in stored order |
//! | `record.privacy_unit` | str |
//! | `record.mechanism` | str |
//! | `record.clip_norm` | f64 |
//! | `record.noise_multiplier` | f64 |
//! | `record.sampling_rate` | f64 |
//! | `record.dataset_sizes` | map of u64 |
//! | `record.epsilon_round` | map of f64 |
//! | `record.delta` | f64 |
//! | `record.epsilon_cumulative` | map of f64 |
//! | `record.budget_epsilon` | map of f64 |
//!
//! with `u64` = 8 bytes big-endian; `f64` = the IEEE 754 binary64 bit pattern as a big-endian
//! u64 (so `-0.0` and `0.0` differ, and no decimal formatting is involved); `str` = u64 byte
//! length then the UTF-8 bytes; `map` = u64 count, then for each key in ascending byte order of
//! its UTF-8 form (the order of Rust's `BTreeMap<String, _>`) the key as str and then the value.
//!
//! Every field is length-prefixed or fixed-size, so two different records never encode to the
//! same bytes. The encoding does not depend on JSON formatting: an auditor can recompute it from
//! an exported ledger in any language. Changing it is a format change and needs a new domain tag.
//!
//! # Signature
//!
//! ECDSA over P-256 with SHA-256 (FIPS 186-4 §6; ring `ECDSA_P256_SHA256_FIXED`), computed over
//! the 32 hash bytes, encoded as the fixed 64-byte `r || s` form.
//!
//! # JSON form
//!
//! Entries are stored (in sled) and exported as JSON with `prev_hash`, `hash` and `signature` in
//! lowercase hex. Unknown fields are rejected when reading, so everything an entry's JSON says is
//! covered by its hash. Floats round-trip exactly through the JSON (serde_json writes the shortest
//! representation that parses back to the same binary64 value, and this crate enables serde_json's
//! `float_roundtrip` feature so that parsing is correctly rounded).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::LedgerError;

/// Domain-separation tag that starts the hashed bytes of every entry (format v1).
pub const HASH_DOMAIN: &[u8] = b"consortia-ledger/entry/v1\0";

/// `prev_hash` of the first entry (index 0).
pub const GENESIS_PREV_HASH: [u8; 32] = [0u8; 32];

/// What one training round spent from the partners' privacy budgets.
///
/// Maps are keyed by partner name; `BTreeMap` keeps their order deterministic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendRecord {
    /// The training task (the task file's name).
    pub task: String,
    /// The round number within the task.
    pub round: u64,
    /// When the spend was recorded, milliseconds since the Unix epoch (UTC).
    pub time_unix_ms: u64,
    /// The partners that contributed to this round.
    pub participants: Vec<String>,
    /// What one unit of privacy protects: `"record"` or `"partner"`.
    pub privacy_unit: String,
    /// The noise mechanism, e.g. `"gaussian"` or `"distributed-discrete-gaussian"`.
    pub mechanism: String,
    /// L2 clipping bound applied to each contribution.
    pub clip_norm: f64,
    /// Noise standard deviation divided by the clipping bound.
    pub noise_multiplier: f64,
    /// Poisson sampling rate of records (1.0 for full batches).
    pub sampling_rate: f64,
    /// Number of records each participant trained on.
    pub dataset_sizes: BTreeMap<String, u64>,
    /// ε spent in this round, per participant, at `delta`.
    pub epsilon_round: BTreeMap<String, f64>,
    /// The δ the ε values are stated for.
    pub delta: f64,
    /// ε spent so far in total (including this round), per partner, at `delta`.
    pub epsilon_cumulative: BTreeMap<String, f64>,
    /// Each partner's total ε budget.
    pub budget_epsilon: BTreeMap<String, f64>,
}

/// One hash-chained, signed entry of the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    /// Position in the ledger, starting at 0 and increasing by one.
    pub index: u64,
    /// Hash of the previous entry ([`GENESIS_PREV_HASH`] for index 0).
    #[serde(with = "hex32")]
    pub prev_hash: [u8; 32],
    /// The spend this entry records.
    pub record: SpendRecord,
    /// [`entry_hash`] of `index`, `prev_hash` and `record`.
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    /// ECDSA P-256 SHA-256 signature (64 bytes, `r || s`) over `hash`.
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

impl LedgerEntry {
    /// Recomputes this entry's hash from its contents (ignoring the stored `hash`).
    pub fn compute_hash(&self) -> [u8; 32] {
        entry_hash(self.index, &self.prev_hash, &self.record)
    }

    /// Whether the stored `hash` matches the entry's contents.
    pub fn hash_matches(&self) -> bool {
        self.compute_hash() == self.hash
    }

    /// The stored hash in lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

/// The hash of an entry: SHA-256 over [`canonical_bytes`] (see the module documentation).
pub fn entry_hash(index: u64, prev_hash: &[u8; 32], record: &SpendRecord) -> [u8; 32] {
    Sha256::digest(canonical_bytes(index, prev_hash, record)).into()
}

/// The exact bytes an entry's hash covers (see the module documentation for the format).
pub fn canonical_bytes(index: u64, prev_hash: &[u8; 32], record: &SpendRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(HASH_DOMAIN);
    put_u64(&mut out, index);
    out.extend_from_slice(prev_hash);
    put_str(&mut out, &record.task);
    put_u64(&mut out, record.round);
    put_u64(&mut out, record.time_unix_ms);
    put_u64(&mut out, record.participants.len() as u64);
    for p in &record.participants {
        put_str(&mut out, p);
    }
    put_str(&mut out, &record.privacy_unit);
    put_str(&mut out, &record.mechanism);
    put_f64(&mut out, record.clip_norm);
    put_f64(&mut out, record.noise_multiplier);
    put_f64(&mut out, record.sampling_rate);
    put_u64(&mut out, record.dataset_sizes.len() as u64);
    for (k, v) in &record.dataset_sizes {
        put_str(&mut out, k);
        put_u64(&mut out, *v);
    }
    put_f64_map(&mut out, &record.epsilon_round);
    put_f64(&mut out, record.delta);
    put_f64_map(&mut out, &record.epsilon_cumulative);
    put_f64_map(&mut out, &record.budget_epsilon);
    out
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    put_u64(out, v.to_bits());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_f64_map(out: &mut Vec<u8>, map: &BTreeMap<String, f64>) {
    put_u64(out, map.len() as u64);
    for (k, v) in map {
        put_str(out, k);
        put_f64(out, *v);
    }
}

impl SpendRecord {
    /// Checks that the record is well-formed before it is appended.
    ///
    /// Rejects: empty task, mechanism or privacy unit; no participants or a repeated one;
    /// non-finite numbers; clip norm ≤ 0; negative noise multiplier; sampling rate outside
    /// (0, 1]; δ outside [0, 1); negative ε; budgets ≤ 0; per-round ε or dataset sizes for
    /// someone who is not a participant.
    pub fn validate(&self) -> Result<(), LedgerError> {
        let bad = |msg: String| Err(LedgerError::InvalidRecord(msg));
        if self.task.is_empty() {
            return bad("task is empty".into());
        }
        if self.mechanism.is_empty() {
            return bad("mechanism is empty".into());
        }
        if self.privacy_unit.is_empty() {
            return bad("privacy_unit is empty".into());
        }
        if self.participants.is_empty() {
            return bad("participants is empty".into());
        }
        let mut seen = BTreeSet::new();
        for p in &self.participants {
            if !seen.insert(p.as_str()) {
                return bad(format!("participant {p:?} is listed twice"));
            }
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return bad(format!(
                "clip_norm {} must be finite and > 0",
                self.clip_norm
            ));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return bad(format!(
                "noise_multiplier {} must be finite and >= 0",
                self.noise_multiplier
            ));
        }
        if !(self.sampling_rate > 0.0 && self.sampling_rate <= 1.0) {
            return bad(format!(
                "sampling_rate {} must be in (0, 1]",
                self.sampling_rate
            ));
        }
        if !(self.delta >= 0.0 && self.delta < 1.0) {
            return bad(format!("delta {} must be in [0, 1)", self.delta));
        }
        for (name, map) in [
            ("epsilon_round", &self.epsilon_round),
            ("epsilon_cumulative", &self.epsilon_cumulative),
        ] {
            for (k, v) in map {
                if !(v.is_finite() && *v >= 0.0) {
                    return bad(format!("{name}[{k:?}] = {v} must be finite and >= 0"));
                }
            }
        }
        for (k, v) in &self.budget_epsilon {
            if !(v.is_finite() && *v > 0.0) {
                return bad(format!(
                    "budget_epsilon[{k:?}] = {v} must be finite and > 0"
                ));
            }
        }
        for k in self.epsilon_round.keys().chain(self.dataset_sizes.keys()) {
            if !seen.contains(k.as_str()) {
                return bad(format!(
                    "{k:?} has a per-round value but is not among the participants"
                ));
            }
        }
        Ok(())
    }
}

/// Serde helpers for `[u8; 32]` as lowercase hex.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 64 {
            return Err(D::Error::custom(format!(
                "expected 64 hex digits, found {}",
                s.len()
            )));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

/// Serde helpers for a signature as lowercase hex (at most 256 bytes).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    const MAX_HEX: usize = 512;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() > MAX_HEX {
            return Err(D::Error::custom(format!(
                "signature is {} hex digits, more than {MAX_HEX}",
                s.len()
            )));
        }
        hex::decode(&s).map_err(D::Error::custom)
    }
}
