//! What one ledger entry says, and the canonical bytes its hash covers.
//!
//! # Formats
//!
//! An entry's [`SpendRecord`] is in one of two formats, told apart by the `charged` field:
//!
//! * **v2** (written by this build): `charged` is present and states the full mechanism the
//!   round charged — the DP events as stored data, the noise placement, the adjacency, the
//!   honest contributors assumed, the update dimension, the randomness source, the dataset and
//!   the task's canonical hash ([`ChargeDetails`]). A privacy book replays the entry from these
//!   stored events, never from the task's current settings.
//! * **v1** (read and verified, never written): `charged` is absent. A book replays it from its
//!   own `mechanism`, `noise_multiplier` and `sampling_rate`, as one step per round (v1 did not
//!   record the number of steps) — see [`crate::book`].
//!
//! # Hash of an entry
//!
//! `hash = SHA-256(m)` (FIPS 180-4) where `m` is the concatenation of
//!
//! | part | encoding | formats |
//! |------|----------|---------|
//! | domain tag | the 25 ASCII bytes `consortia-ledger/entry/v2` (v1: `consortia-ledger/entry/v1`) followed by one `0x00` byte | v1, v2 |
//! | `index` | u64 | v1, v2 |
//! | `prev_hash` | 32 raw bytes (all zero for the first entry, index 0) | v1, v2 |
//! | `record.task` | str | v1, v2 |
//! | `record.round` | u64 | v1, v2 |
//! | `record.time_unix_ms` | u64 | v1, v2 |
//! | `record.participants` | u64 count, then each as str, in stored order | v1, v2 |
//! | `record.privacy_unit` | str | v1, v2 |
//! | `record.mechanism` | str | v1, v2 |
//! | `record.clip_norm` | f64 | v1, v2 |
//! | `record.noise_multiplier` | f64 | v1, v2 |
//! | `record.sampling_rate` | f64 | v1, v2 |
//! | `record.dataset_sizes` | map of u64 | v1, v2 |
//! | `record.epsilon_round` | map of f64 | v1, v2 |
//! | `record.delta` | f64 | v1, v2 |
//! | `record.epsilon_cumulative` | map of f64 | v1, v2 |
//! | `record.budget_epsilon` | map of f64 | v1, v2 |
//! | `charged.events` | u64 count, then each event (below) | v2 |
//! | `charged.placement` | str: `local` or `distributed` | v2 |
//! | `charged.adjacency` | str: `add-remove`, `replace-one` or `zero-out` | v2 |
//! | `charged.honest_contributors` | opt u64 | v2 |
//! | `charged.dimension` | opt u64 | v2 |
//! | `charged.rng` | str | v2 |
//! | `charged.dataset` | opt (`name` as str, then `sha256` as 32 raw bytes) | v2 |
//! | `charged.task_hash` | 32 raw bytes | v2 |
//!
//! An event is its `kind` as str followed by its figures, in this order:
//!
//! | `kind` | figures |
//! |--------|---------|
//! | `gaussian` | `noise_multiplier` f64, `count` u64 |
//! | `poisson-sampled-gaussian` | `sampling_rate` f64, `noise_multiplier` f64, `count` u64 |
//! | `zcdp` | `rho` f64, `count` u64 |
//!
//! with `u64` = 8 bytes big-endian; `f64` = the IEEE 754 binary64 bit pattern as a big-endian
//! u64 (so `-0.0` and `0.0` differ, and no decimal formatting is involved); `str` = u64 byte
//! length then the UTF-8 bytes; `map` = u64 count, then for each key in ascending byte order of
//! its UTF-8 form (the order of Rust's `BTreeMap<String, _>`) the key as str and then the value;
//! `opt x` = one byte `0x00` when absent, or one byte `0x01` followed by `x`.
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
//! Entries are stored (in sled) and exported as JSON with `prev_hash`, `hash`, `signature`,
//! `charged.task_hash` and `charged.dataset.sha256` in lowercase hex, and each event as an object
//! whose `kind` names it, e.g.
//! `{"kind": "poisson-sampled-gaussian", "sampling_rate": 0.02, "noise_multiplier": 1.1, "count": 20}`.
//! Unknown fields are rejected when reading, so everything an entry's JSON says is covered by its
//! hash (adding or removing `charged` switches the hashed format, which the stored hash then fails
//! to match). Floats round-trip exactly through the JSON (serde_json writes the shortest
//! representation that parses back to the same binary64 value, and this crate enables serde_json's
//! `float_roundtrip` feature so that parsing is correctly rounded).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use consortia_dp::DpEvent;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::LedgerError;

/// Domain-separation tag of format v1 entries (read and verified, no longer written).
pub const HASH_DOMAIN_V1: &[u8] = b"consortia-ledger/entry/v1\0";

/// Domain-separation tag of format v2 entries.
pub const HASH_DOMAIN_V2: &[u8] = b"consortia-ledger/entry/v2\0";

/// Domain-separation tag of the format this build writes ([`HASH_DOMAIN_V2`]).
pub const HASH_DOMAIN: &[u8] = HASH_DOMAIN_V2;

/// `prev_hash` of the first entry (index 0).
pub const GENESIS_PREV_HASH: [u8; 32] = [0u8; 32];

/// The `rng` of noise drawn from OpenSSL's `RAND_priv_bytes` (OpenDP `use-openssl`, enabled by
/// the crate feature `secure-rng`): the only source reports accept without a warning.
pub const SECURE_RNG: &str = "openssl";

/// The `rng` of noise drawn without the `secure-rng` feature: OpenDP then falls back to rand
/// 0.7's `ThreadRng` (ChaCha, seeded from the operating system), which OpenDP does not vouch for
/// (`opendp::traits::samplers::fill_bytes`).
pub const FALLBACK_RNG: &str = "rand-thread-rng";

/// The randomness source this build draws differential-privacy noise from: [`SECURE_RNG`]
/// when consortia-dp was built with `secure-rng`, else [`FALLBACK_RNG`].
pub fn rng_name() -> &'static str {
    if consortia_dp::secure_rng() {
        SECURE_RNG
    } else {
        FALLBACK_RNG
    }
}

/// What one training round spent from the partners' privacy budgets.
///
/// Maps are keyed by partner name; `BTreeMap` keeps their order deterministic. Records written
/// by this build carry [`charged`](Self::charged) (format v2); records of format v1 lack it.
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
    /// The noise mechanism, e.g. `"dp-sgd-gaussian"` or `"distributed-discrete-gaussian"`.
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
    /// Format v2: the mechanism the round charged, as the book replays it. `None` marks a
    /// format v1 record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged: Option<ChargeDetails>,
}

/// What a format v2 record states about the mechanism a round charged, beyond the v1 summary
/// fields: enough to recompute the round's privacy loss without the task file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeDetails {
    /// The DP events one participant's data went through in the round, each with its count;
    /// composed by addition of RDP (Mironov 2017, "Rényi Differential Privacy", Prop. 1).
    pub events: Vec<StoredEvent>,
    /// Who added the noise.
    pub placement: Placement,
    /// The neighbouring relation the events' privacy holds for.
    pub adjacency: Adjacency,
    /// Distributed placement: how many contributors' noise shares every released sum was
    /// assumed to hold from honest partners (`n_min − t`, with t the colluders tolerated).
    /// `None` for local placement, or when the settings did not state it.
    pub honest_contributors: Option<u64>,
    /// Length of the noised update vector, when the accounting depends on it (distributed
    /// placement); `None` otherwise.
    pub dimension: Option<u64>,
    /// Where the noise's randomness came from in the build that wrote the entry:
    /// [`SECURE_RNG`] or [`FALLBACK_RNG`] (see [`rng_name`]).
    pub rng: String,
    /// The dataset the spend is charged to (a partner's own entries); `None` when the writer
    /// does not know it (the coordinator's entries).
    pub dataset: Option<DatasetId>,
    /// SHA-256 of the task's canonical form (`TaskSpec::canonical_hash`).
    #[serde(with = "hex32")]
    pub task_hash: [u8; 32],
}

/// One DP event of a round as stored in the ledger: the serialisable form of
/// [`consortia_dp::DpEvent`] with the number of times it was composed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StoredEvent {
    /// Gaussian mechanism with noise std `noise_multiplier`·Δ ([`DpEvent::Gaussian`]).
    Gaussian {
        /// z = σ/Δ.
        noise_multiplier: f64,
        /// How many times the round composed it.
        count: u64,
    },
    /// Poisson subsampling at rate `sampling_rate`, then the Gaussian mechanism
    /// ([`DpEvent::PoissonSampledGaussian`]).
    PoissonSampledGaussian {
        /// q ∈ (0, 1].
        sampling_rate: f64,
        /// z = σ/Δ.
        noise_multiplier: f64,
        /// How many times the round composed it (DP-SGD steps).
        count: u64,
    },
    /// A ρ-zCDP release ([`DpEvent::Zcdp`]); a distributed-discrete-Gaussian round is recorded
    /// as this, with ρ from KLS21 Thm 1 (`consortia_dp::ddg_round_rho`).
    Zcdp {
        /// ρ ≥ 0.
        rho: f64,
        /// How many times the round composed it.
        count: u64,
    },
}

impl StoredEvent {
    /// The stored form of `count` occurrences of `event`.
    pub fn from_dp(event: DpEvent, count: u64) -> Self {
        match event {
            DpEvent::Gaussian { noise_multiplier } => Self::Gaussian {
                noise_multiplier,
                count,
            },
            DpEvent::PoissonSampledGaussian {
                sampling_rate,
                noise_multiplier,
            } => Self::PoissonSampledGaussian {
                sampling_rate,
                noise_multiplier,
                count,
            },
            DpEvent::Zcdp { rho } => Self::Zcdp { rho, count },
        }
    }

    /// The accountant's event and its count.
    pub fn to_dp(&self) -> (DpEvent, u64) {
        match *self {
            Self::Gaussian {
                noise_multiplier,
                count,
            } => (DpEvent::Gaussian { noise_multiplier }, count),
            Self::PoissonSampledGaussian {
                sampling_rate,
                noise_multiplier,
                count,
            } => (
                DpEvent::PoissonSampledGaussian {
                    sampling_rate,
                    noise_multiplier,
                },
                count,
            ),
            Self::Zcdp { rho, count } => (DpEvent::Zcdp { rho }, count),
        }
    }

    /// The `kind` string of the JSON and hashed forms.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Gaussian { .. } => "gaussian",
            Self::PoissonSampledGaussian { .. } => "poisson-sampled-gaussian",
            Self::Zcdp { .. } => "zcdp",
        }
    }

    /// How many times the round composed the event.
    pub fn count(&self) -> u64 {
        match *self {
            Self::Gaussian { count, .. }
            | Self::PoissonSampledGaussian { count, .. }
            | Self::Zcdp { count, .. } => count,
        }
    }
}

impl std::fmt::Display for StoredEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Gaussian {
                noise_multiplier,
                count,
            } => write!(f, "{count} × gaussian(z={noise_multiplier})"),
            Self::PoissonSampledGaussian {
                sampling_rate,
                noise_multiplier,
                count,
            } => write!(
                f,
                "{count} × poisson-sampled-gaussian(q={sampling_rate}, z={noise_multiplier})"
            ),
            Self::Zcdp { rho, count } => write!(f, "{count} × zcdp(ρ={rho})"),
        }
    }
}

/// Who added a round's noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Each partner added the full calibrated noise to its own update.
    Local,
    /// Each partner added a share of the noise; only the encrypted sum carries all of it.
    Distributed,
}

impl Placement {
    /// The JSON and hashed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Distributed => "distributed",
        }
    }
}

/// The neighbouring relation a round's events are private for (`dp_accounting`'s
/// `NeighboringRelation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Adjacency {
    /// Add or remove one unit (`ADD_OR_REMOVE_ONE`): the relation consortia-dp's
    /// mechanisms and accountant use throughout.
    AddRemove,
    /// Replace one unit (`REPLACE_ONE`; doubles a clipped sum's sensitivity).
    ReplaceOne,
    /// Replace one unit by zeros (`REPLACE_SPECIAL`).
    ZeroOut,
}

impl Adjacency {
    /// The JSON and hashed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddRemove => "add-remove",
            Self::ReplaceOne => "replace-one",
            Self::ZeroOut => "zero-out",
        }
    }
}

/// A partner's dataset, to which its lifetime privacy budget applies: a name the partner
/// chooses and the SHA-256 of the file's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetId {
    /// The partner's name for the dataset (by default the data file's name).
    pub name: String,
    /// SHA-256 (FIPS 180-4) of the file's bytes.
    #[serde(with = "hex32")]
    pub sha256: [u8; 32],
}

impl DatasetId {
    /// Hashes the file at `path`; `name` defaults to the file's name.
    pub fn from_file(name: Option<&str>, path: &Path) -> Result<Self, LedgerError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    LedgerError::InvalidRecord(format!(
                        "{} has no file name to name the dataset by; set `dataset_name`",
                        path.display()
                    ))
                })?,
        };
        if name.is_empty() {
            return Err(LedgerError::InvalidRecord(
                "the dataset name is empty; set `dataset_name` to a non-empty name".into(),
            ));
        }
        let io_err = |source| LedgerError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io_err)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Self {
            name,
            sha256: hasher.finalize().into(),
        })
    }

    /// Whether a spend charged to `other` touched this dataset: the same name or the same
    /// contents. Either suffices — the same rows under another name, or rows edited under the
    /// same name, still describe the same people — so a partner can neither rename nor edit its
    /// way to a fresh budget (at worst two datasets sharing a name share a budget).
    pub fn same_data(&self, other: &DatasetId) -> bool {
        self.name == other.name || self.sha256 == other.sha256
    }
}

impl std::fmt::Display for DatasetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (sha256 {})", self.name, hex::encode(self.sha256))
    }
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

/// The exact bytes an entry's hash covers, in the record's format (see the module
/// documentation).
pub fn canonical_bytes(index: u64, prev_hash: &[u8; 32], record: &SpendRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(match record.charged {
        Some(_) => HASH_DOMAIN_V2,
        None => HASH_DOMAIN_V1,
    });
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
    if let Some(c) = &record.charged {
        put_u64(&mut out, c.events.len() as u64);
        for e in &c.events {
            put_str(&mut out, e.kind());
            match *e {
                StoredEvent::Gaussian {
                    noise_multiplier,
                    count,
                } => {
                    put_f64(&mut out, noise_multiplier);
                    put_u64(&mut out, count);
                }
                StoredEvent::PoissonSampledGaussian {
                    sampling_rate,
                    noise_multiplier,
                    count,
                } => {
                    put_f64(&mut out, sampling_rate);
                    put_f64(&mut out, noise_multiplier);
                    put_u64(&mut out, count);
                }
                StoredEvent::Zcdp { rho, count } => {
                    put_f64(&mut out, rho);
                    put_u64(&mut out, count);
                }
            }
        }
        put_str(&mut out, c.placement.as_str());
        put_str(&mut out, c.adjacency.as_str());
        put_opt_u64(&mut out, c.honest_contributors);
        put_opt_u64(&mut out, c.dimension);
        put_str(&mut out, &c.rng);
        match &c.dataset {
            None => out.push(0),
            Some(d) => {
                out.push(1);
                put_str(&mut out, &d.name);
                out.extend_from_slice(&d.sha256);
            }
        }
        out.extend_from_slice(&c.task_hash);
    }
    out
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
    }
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
    /// The record's format: 2 with [`charged`](Self::charged), 1 without.
    pub fn format(&self) -> u32 {
        if self.charged.is_some() { 2 } else { 1 }
    }

    /// The randomness source the round's noise was drawn from; `None` for format v1, which did
    /// not record it.
    pub fn rng(&self) -> Option<&str> {
        self.charged.as_ref().map(|c| c.rng.as_str())
    }

    /// Whether the noise was drawn from [`SECURE_RNG`] (false for format v1: not recorded).
    pub fn rng_is_secure(&self) -> bool {
        self.rng() == Some(SECURE_RNG)
    }

    /// The dataset the spend is charged to, when recorded.
    pub fn dataset(&self) -> Option<&DatasetId> {
        self.charged.as_ref().and_then(|c| c.dataset.as_ref())
    }

    /// Checks that the record is well-formed before it is appended.
    ///
    /// Rejects: format v1 (no `charged`: this build writes v2 only); empty task, mechanism or
    /// privacy unit; no participants or a repeated one; non-finite numbers; clip norm ≤ 0;
    /// negative noise multiplier; sampling rate outside (0, 1]; δ outside [0, 1); negative ε;
    /// budgets ≤ 0; per-round ε or dataset sizes for someone who is not a participant; no
    /// events, an invalid event or a zero count; an empty `rng` or dataset name; zero honest
    /// contributors or dimension.
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
        let Some(c) = &self.charged else {
            return bad(
                "the record has no `charged` details (format v1); this build appends format v2 \
                 only, which states the mechanism charged"
                    .into(),
            );
        };
        c.validate()
    }
}

impl ChargeDetails {
    /// Checks the details of a format v2 record (see [`SpendRecord::validate`]).
    pub fn validate(&self) -> Result<(), LedgerError> {
        let bad = |msg: String| Err(LedgerError::InvalidRecord(msg));
        if self.events.is_empty() {
            return bad("charged.events is empty: a round charges at least one event".into());
        }
        for (i, e) in self.events.iter().enumerate() {
            let (event, count) = e.to_dp();
            if let Err(err) = event.validate() {
                return bad(format!("charged.events[{i}] ({e}) is invalid: {err}"));
            }
            if count == 0 {
                return bad(format!("charged.events[{i}] ({e}) has count 0"));
            }
        }
        if self.rng.is_empty() {
            return bad("charged.rng is empty".into());
        }
        if self.honest_contributors == Some(0) {
            return bad("charged.honest_contributors is 0; it must be at least 1".into());
        }
        if self.dimension == Some(0) {
            return bad("charged.dimension is 0; it must be at least 1".into());
        }
        if self.dataset.as_ref().is_some_and(|d| d.name.is_empty()) {
            return bad("charged.dataset.name is empty".into());
        }
        Ok(())
    }
}

/// Serde helpers for `[u8; 32]` as lowercase hex.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
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

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
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
