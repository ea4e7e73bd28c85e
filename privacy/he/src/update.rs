//! How a partner's model update becomes the vector of residues it encrypts,
//! and how the decrypted sum becomes the federation's step.
//!
//! Two encodings, both exact under the wrapping sum of [`crate`] (sums
//! modulo `2^plaintext_bits`):
//!
//! * [`UpdateEncoding::Weighted`] (secure aggregation without differential
//!   privacy): FedAvg weighted by rows (McMahan et al. 2017, Alg. 1). Partner
//!   `k` sends `round(n_k·Δ_k·2^16)` per parameter and `n_k` last; the sum
//!   gives `Σ n_k Δ_k` and `Σ n_k`, hence the weighted mean delta.
//! * [`UpdateEncoding::Ddg`] (`placement = "distributed"`): the distributed
//!   discrete Gaussian of Kairouz, Liu, Steinke 2021 (Alg. 1 client, Alg. 2
//!   server) with the parameters of [`PrivacySpec::ddg_params`]. The decoded
//!   sum is the sum of the partners' clipped vectors (clipped deltas for the
//!   partner unit, sums of per-row clipped gradients for the record unit)
//!   plus noise. Against the coordinator plus up to `t` colluding partners
//!   (the spec's [`colluders`](PrivacySpec::colluders)), that noise holds at
//!   least `min_partners − t` shares the coalition does not know, of total
//!   real std z·C.

use sha2::{Digest, Sha256};

use crate::CollectivePublicKey;
use consortia_dp::ddg::{self, DdgParams, unwrap_signed, wrap};
use consortia_dp::{DpError, NoisePlacement, PrivacySpec, PrivacyUnit};

/// Fraction bits of the weighted encoding: deltas are kept to 2^-16 per row.
pub const WEIGHTED_FRACTION_BITS: u32 = 16;

/// Headroom of the weighted encoding: one update's values stay below
/// `2^(bits − 1 − HEADROOM_BITS) / parties`, so the values of any sum of
/// well-formed updates stay below `2^(bits − 1 − HEADROOM_BITS)` and a
/// decoded value beyond that is proof of a malformed ciphertext.
///
/// Why it matters: a ciphertext is checked for its shape (tfhe's conformance
/// check) but not for how it was made — there are no zero-knowledge proofs of
/// encryption yet (tfhe's `zk-pok` refuses moduli above 2^64). A contributor
/// that sends a crafted mask (`Δ·2^j·X^k` instead of a fresh encryption of
/// zero's) makes the joint decryption return secret-key coefficients scaled
/// into the plaintext. Most such choices land far outside this range, which
/// [`UpdateEncoding::decode`] refuses, so the round is discarded and the
/// coordinator re-keys; a contributor that aims its probe into the range is
/// not detected, and that remains open until proofs of encryption exist.
/// Distributed-DP encodings are not range-checked: their residues are
/// uniformly spread by design.
pub const HEADROOM_BITS: u32 = 8;

/// Most plaintext bits an encoding uses (DDG's residues must fit an `i64`).
const MAX_BITS: u32 = 62;

/// The encoding of one secure round's updates.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateEncoding {
    /// Example-weighted fixed-point deltas, then the example count.
    Weighted {
        /// Model parameters.
        dim: usize,
        /// Plaintext bits of the sum.
        bits: u32,
        /// Most updates in one sum (the key's committee size).
        parties: u32,
    },
    /// Distributed discrete Gaussian.
    Ddg {
        /// The round's DDG parameters.
        params: DdgParams,
        /// The round's public rotation seed ([`rotation_seed`]).
        seed: [u8; 32],
        /// What a partner's vector is: a clipped delta or a sum of clipped rows.
        unit: PrivacyUnit,
    },
}

/// The public per-round seed of the DDG rotation: SHA-256 of a label, the
/// collective key's id and the round number (every party derives the same).
pub fn rotation_seed(key_id: &[u8; 32], round: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"consortia ddg rotation v1");
    h.update(key_id);
    h.update(round.to_le_bytes());
    h.finalize().into()
}

fn bits_for(plaintext_bits: u32) -> Result<u32, DpError> {
    if plaintext_bits < 24 {
        return Err(DpError::InvalidParameter {
            name: "plaintext bits",
            value: plaintext_bits.to_string(),
            hint: "the key leaves too few plaintext bits for model updates: use the Secure128 \
                   parameters or a smaller committee",
        });
    }
    Ok(plaintext_bits.min(MAX_BITS))
}

/// The largest magnitude one weighted update's value may have.
fn weighted_limit(bits: u32, parties: u32) -> f64 {
    2f64.powi(bits as i32 - 1 - HEADROOM_BITS as i32) / f64::from(parties.max(1))
}

impl UpdateEncoding {
    /// Secure aggregation without differential privacy.
    pub fn weighted(dim: usize, plaintext_bits: u32, parties: u32) -> Result<Self, DpError> {
        Ok(Self::Weighted {
            dim,
            bits: bits_for(plaintext_bits)?,
            parties: parties.max(1),
        })
    }

    /// Distributed DP for round `round` under the key `key_id`, with `n_min`
    /// partners in every sum and the colluders of the spec's
    /// [`DistributedShape`](consortia_dp::DistributedShape) (refused without one).
    pub fn ddg(
        spec: &PrivacySpec,
        dim: usize,
        n_min: usize,
        plaintext_bits: u32,
        key_id: &[u8; 32],
        round: u64,
    ) -> Result<Self, DpError> {
        let params = spec.ddg_params(dim, n_min, spec.colluders()?, bits_for(plaintext_bits)?)?;
        Ok(Self::Ddg {
            params,
            seed: rotation_seed(key_id, round),
            unit: spec.unit,
        })
    }

    /// The encoding of round `round` of a task with privacy settings `spec`
    /// (distributed placement: DDG; otherwise weighted), `dim` parameters and
    /// `n_min` = the task's `min_partners`, under `key`. Coordinator and
    /// partners derive the same one.
    pub fn for_round(
        spec: Option<&PrivacySpec>,
        dim: usize,
        n_min: usize,
        key: &CollectivePublicKey,
        round: u64,
    ) -> Result<Self, DpError> {
        match spec {
            Some(s) if s.placement == NoisePlacement::Distributed => {
                Self::ddg(s, dim, n_min, key.plaintext_bits(), &key.key_id(), round)
            }
            _ => Self::weighted(dim, key.plaintext_bits(), key.parties()),
        }
    }

    /// Values each partner encrypts.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Weighted { dim, .. } => dim + 1,
            Self::Ddg { params, .. } => params.padded_dim(),
        }
    }

    fn bits(&self) -> u32 {
        match self {
            Self::Weighted { bits, .. } => *bits,
            Self::Ddg { params, .. } => params.bits(),
        }
    }

    /// Weighted encoding of a partner's delta trained on `rows` rows. Refuses
    /// a value that could overflow the sum of a full committee.
    pub fn encode_weighted(&self, delta: &[f64], rows: u64) -> Result<Vec<u64>, DpError> {
        let Self::Weighted { dim, bits, parties } = self else {
            return Err(DpError::Unsupported(
                "this round is distributed-DP: use encode_ddg",
            ));
        };
        if delta.len() != *dim {
            return Err(DpError::LengthMismatch {
                expected: *dim,
                got: delta.len(),
            });
        }
        // Each value must leave room for `parties` of them in
        // `bits − 1 − HEADROOM_BITS` bits (see [`HEADROOM_BITS`]).
        let limit = weighted_limit(*bits, *parties);
        let scale = 2f64.powi(WEIGHTED_FRACTION_BITS as i32) * rows as f64;
        let mut out = Vec::with_capacity(dim + 1);
        for (index, &d) in delta.iter().enumerate() {
            if !d.is_finite() {
                return Err(DpError::NonFinite { index, value: d });
            }
            let v = (d * scale).round();
            if v.abs() >= limit {
                return Err(DpError::Overflow {
                    value: format!("parameter {index}: delta {d} × {rows} rows"),
                    bits: *bits,
                });
            }
            out.push(wrap(v as i64, *bits));
        }
        if rows as f64 >= limit {
            return Err(DpError::Overflow {
                value: format!("{rows} rows"),
                bits: *bits,
            });
        }
        out.push(wrap(rows as i64, *bits));
        Ok(out)
    }

    /// DDG encoding of a partner's vector: its delta (partner unit, clipped
    /// here) or its sum of per-row clipped gradients (record unit).
    pub fn encode_ddg(&self, vector: &[f64]) -> Result<Vec<u64>, DpError> {
        let Self::Ddg { params, seed, unit } = self else {
            return Err(DpError::Unsupported(
                "this round has no distributed DP: use encode_weighted",
            ));
        };
        match unit {
            PrivacyUnit::Partner => ddg::encode(params, vector, seed),
            PrivacyUnit::Record => ddg::encode_sum(params, vector, seed),
        }
    }

    /// Decodes the decrypted sum of `contributors` updates (residues modulo
    /// at least `2^bits`): the example-weighted mean delta (weighted), or the
    /// noisy sum of the partners' vectors (DDG; divide as the unit requires).
    ///
    /// A weighted sum whose values are outside what `contributors`
    /// well-formed updates can add up to is refused with
    /// [`DpError::OutOfRange`] (see [`HEADROOM_BITS`]).
    pub fn decode(&self, sum: &[u64], contributors: u64) -> Result<Vec<f64>, DpError> {
        if sum.len() != self.encoded_len() {
            return Err(DpError::LengthMismatch {
                expected: self.encoded_len(),
                got: sum.len(),
            });
        }
        let bits = self.bits();
        // bits <= MAX_BITS (62), so the mask fits.
        let mask = (1u64 << bits) - 1;
        let reduced: Vec<u64> = sum.iter().map(|v| v & mask).collect();
        match self {
            Self::Weighted { dim, parties, .. } => {
                let bound = (weighted_limit(bits, *parties) * contributors.max(1) as f64) as i64;
                for (index, &v) in reduced.iter().enumerate() {
                    let value = unwrap_signed(v, bits);
                    if value.unsigned_abs() >= bound.unsigned_abs() {
                        return Err(DpError::OutOfRange {
                            index,
                            value,
                            bound,
                            contributors,
                        });
                    }
                }
                let rows = unwrap_signed(reduced[*dim], bits);
                if rows <= 0 {
                    return Err(DpError::InvalidParameter {
                        name: "rows",
                        value: rows.to_string(),
                        hint: "the decrypted sum counts no rows: the aggregate is not a sum of updates",
                    });
                }
                let scale = 2f64.powi(WEIGHTED_FRACTION_BITS as i32) * rows as f64;
                Ok(reduced[..*dim]
                    .iter()
                    .map(|&v| unwrap_signed(v, bits) as f64 / scale)
                    .collect())
            }
            Self::Ddg { params, seed, .. } => ddg::decode(params, &reduced, seed),
        }
    }
}

/// What the contributors of a sum declared: how many updates went into it and
/// the example counts they signed (summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    /// Updates in the sum.
    pub contributors: u64,
    /// The sum of the example counts the contributors signed.
    pub examples: u64,
}

/// Negative log of the false-failure probability of the distributed-DP
/// plausibility check ([`UpdateEncoding::decode_declared`]): a correct sum is
/// refused with probability at most `e^-t` = 2^-40 per round.
pub const DDG_CHECK_T: f64 = 40.0 * std::f64::consts::LN_2;

/// Why a decrypted sum is not used.
#[derive(Debug, thiserror::Error)]
pub enum SumError {
    /// The sum does not decode (length, or outside what well-formed updates can add up to).
    #[error(transparent)]
    Decode(#[from] DpError),
    /// The weighted encoding's row-count slot differs from the example counts signed.
    #[error(
        "the decrypted sum counts {decoded} rows, but its contributors signed for {declared} \
         examples"
    )]
    Rows {
        /// The row count the sum holds.
        decoded: i64,
        /// The example counts the contributors signed, summed.
        declared: u64,
    },
    /// A distributed-DP sum far larger than its contributors' clipped vectors and noise.
    #[error(
        "the decrypted sum has L2 norm {norm:.4e} (integer units), more than the {bound:.4e} \
         that {contributors} contributors' clipped vectors and noise shares reach (except with \
         probability 2^-40)"
    )]
    Implausible {
        /// The sum's L2 norm, in the encoding's integer units.
        norm: f64,
        /// The largest plausible norm.
        bound: f64,
        /// Updates in the sum.
        contributors: u64,
    },
}

impl UpdateEncoding {
    /// [`UpdateEncoding::decode`], after checking the sum against what its
    /// contributors declared, so that a sum a damaged key share decrypted into
    /// garbage is never applied:
    ///
    /// * weighted: the row-count slot must equal `declared.examples` exactly
    ///   (after the range check of [`HEADROOM_BITS`]);
    /// * distributed DP: the sum's L2 norm (before the inverse rotation, which
    ///   keeps norms) must be at most [`UpdateEncoding::ddg_norm_bound`].
    pub fn decode_declared(&self, sum: &[u64], declared: Declared) -> Result<Vec<f64>, SumError> {
        let decoded = self.decode(sum, declared.contributors)?;
        let bits = self.bits();
        let mask = (1u64 << bits) - 1;
        match self {
            Self::Weighted { dim, .. } => {
                let rows = unwrap_signed(sum[*dim] & mask, bits);
                if u64::try_from(rows).ok() != Some(declared.examples) {
                    return Err(SumError::Rows {
                        decoded: rows,
                        declared: declared.examples,
                    });
                }
            }
            Self::Ddg { .. } => {
                let norm = sum
                    .iter()
                    .map(|&v| {
                        let x = unwrap_signed(v & mask, bits) as f64;
                        x * x
                    })
                    .sum::<f64>()
                    .sqrt();
                let bound = self.ddg_norm_bound(declared);
                if norm.is_nan() || norm > bound {
                    return Err(SumError::Implausible {
                        norm,
                        bound,
                        contributors: declared.contributors,
                    });
                }
            }
        }
        Ok(decoded)
    }

    /// The largest L2 norm (integer units, d' coordinates) a distributed-DP sum
    /// of `declared` contributions reaches, except with probability 2^-40
    /// ([`DDG_CHECK_T`]); infinite for the weighted encoding.
    ///
    /// The sum is `Σ_k x_k + Σ_k z_k`. Each rounded vector `x_k` has norm at most
    /// [`DdgParams::norm_bound`] (partner unit: clipped to C, then rounded; KLS21
    /// Thm 1), or `n_k·C/γ + √d'` (record unit: a sum of `n_k` rows each clipped
    /// to C, rounded unconditionally), so `Σ_k ‖x_k‖` is at most
    /// `contributors·Δ₂`, or `examples·C/γ + contributors·√d'`. The noise
    /// `Σ_k z_k` has independent coordinates, each a sum of `contributors`
    /// discrete Gaussians of σ = [`DdgParams::local_sigma`], hence
    /// `contributors·σ²`-subgaussian (a discrete Gaussian is σ²-subgaussian:
    /// Canonne, Kamath, Steinke 2020, Prop. 1.6); by Hsu, Kakade, Zhang 2012
    /// (Thm 1), `‖Σ z_k‖² ≤ contributors·σ²·(d' + 2√(d't) + 2t)` except with
    /// probability `e^-t`. A garbage sum (uniform residues modulo 2^bits) has norm
    /// about `2^(bits−1)·√(d'/3)`, far above this bound for every key this
    /// crate makes.
    pub fn ddg_norm_bound(&self, declared: Declared) -> f64 {
        let Self::Ddg { params, unit, .. } = self else {
            return f64::INFINITY;
        };
        let n = declared.contributors.max(1) as f64;
        let d = params.padded_dim() as f64;
        let signal = match unit {
            PrivacyUnit::Partner => n * params.norm_bound(),
            PrivacyUnit::Record => {
                declared.examples as f64 * params.clip() / params.gamma() + n * d.sqrt()
            }
        };
        let t = DDG_CHECK_T;
        let sigma = params.local_sigma();
        let noise = (n * sigma * sigma * (d + 2.0 * (d * t).sqrt() + 2.0 * t)).sqrt();
        signal + noise
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_sum_is_the_fedavg_mean() {
        let e = UpdateEncoding::weighted(3, 44, 3).unwrap();
        let a = e.encode_weighted(&[0.5, -1.0, 0.0], 100).unwrap();
        let b = e.encode_weighted(&[-0.25, 2.0, 1e-3], 300).unwrap();
        let sum: Vec<u64> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x + y) & ((1u64 << 44) - 1))
            .collect();
        let mean = e.decode(&sum, 2).unwrap();
        let want = [
            (0.5 * 100.0 - 0.25 * 300.0) / 400.0,
            (-100.0 + 600.0) / 400.0,
            0.3 / 400.0,
        ];
        for (m, w) in mean.iter().zip(want) {
            assert!((m - w).abs() < 1e-4, "{m} vs {w}");
        }
        // A delta that could overflow a full committee's sum is refused.
        assert!(matches!(
            e.encode_weighted(&[1e9, 0.0, 0.0], 1000),
            Err(DpError::Overflow { .. })
        ));
        assert!(e.encode_weighted(&[f64::NAN, 0.0, 0.0], 1).is_err());
    }

    #[test]
    fn a_weighted_sum_outside_the_range_of_well_formed_updates_is_refused() {
        let bits = 44;
        let e = UpdateEncoding::weighted(3, bits, 3).unwrap();
        let a = e.encode_weighted(&[0.5, -1.0, 0.0], 100).unwrap();
        let mask = (1u64 << bits) - 1;
        // What a crafted mask does: secret-key bits land high in the plaintext.
        let mut probed = a.clone();
        probed[1] = (probed[1] + (1u64 << 40)) & mask;
        match e.decode(&probed, 1) {
            Err(DpError::OutOfRange { index, .. }) => assert_eq!(index, 1),
            other => panic!("expected OutOfRange, got {other:?}"),
        }
        // The largest well-formed values of three updates still decode.
        let limit = weighted_limit(bits, 3) as i64 - 1;
        let big: Vec<u64> = [limit, -limit, 1].iter().map(|&v| wrap(v, bits)).collect();
        let sum: Vec<u64> = (0..4)
            .map(|i| {
                if i < 3 {
                    big[i].wrapping_mul(3) & mask
                } else {
                    3
                }
            })
            .collect();
        assert!(e.decode(&sum, 3).is_ok());
        // The same sum claimed for one update is out of range.
        assert!(matches!(e.decode(&sum, 1), Err(DpError::OutOfRange { .. })));
    }

    /// The plaintext sum of encoded vectors modulo 2^bits, as joint decryption returns it.
    fn plain_sum(vectors: &[Vec<u64>], bits: u32) -> Vec<u64> {
        let mask = (1u64 << bits) - 1;
        let mut out = vec![0u64; vectors[0].len()];
        for v in vectors {
            for (o, x) in out.iter_mut().zip(v) {
                *o = o.wrapping_add(*x) & mask;
            }
        }
        out
    }

    fn declared(contributors: u64, examples: u64) -> Declared {
        Declared {
            contributors,
            examples,
        }
    }

    #[test]
    fn a_weighted_sum_must_count_the_rows_its_contributors_signed() {
        let bits = 44;
        let e = UpdateEncoding::weighted(3, bits, 3).unwrap();
        let a = e.encode_weighted(&[0.5, -1.0, 0.0], 100).unwrap();
        let b = e.encode_weighted(&[-0.25, 2.0, 1e-3], 300).unwrap();
        let sum = plain_sum(&[a, b], bits);
        let mean = e.decode_declared(&sum, declared(2, 400)).unwrap();
        assert!((mean[1] - 1.25).abs() < 1e-4, "{mean:?}");
        // Signed for other counts than the sum holds.
        match e.decode_declared(&sum, declared(2, 401)) {
            Err(SumError::Rows { decoded, declared }) => {
                assert_eq!((decoded, declared), (400, 401))
            }
            other => panic!("expected a row-count mismatch, got {other:?}"),
        }
        // A small error in the decryption (in range, so decode alone takes it).
        let mut off = sum.clone();
        off[3] = (off[3] + 7) & ((1u64 << bits) - 1);
        assert!(e.decode(&off, 2).is_ok());
        assert!(matches!(
            e.decode_declared(&off, declared(2, 400)),
            Err(SumError::Rows { decoded: 407, .. })
        ));
    }

    fn ddg_spec(unit: &str, z: f64) -> PrivacySpec {
        let s: PrivacySpec = toml::from_str(&format!(
            "unit = \"{unit}\"\nplacement = \"distributed\"\nepsilon = 100.0\ndelta = 1e-6\n\
             clip_norm = 1.5\nnoise_multiplier = {z}\n"
        ))
        .unwrap();
        s.with_distributed_shape(DIM, 3, 1).unwrap()
    }

    const DIM: usize = 100;

    /// Correct distributed-DP sums (clipped vectors at the clip norm, real noise
    /// shares, both units) pass the plausibility check; uniform residues, what a
    /// damaged key share decrypts, do not.
    #[test]
    fn a_distributed_sum_is_checked_against_its_contributors_clip_and_noise() {
        use rand::{Rng, SeedableRng};
        let bits = 44;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for (unit, z) in [("partner", 1.0), ("partner", 4.0), ("record", 1.0)] {
            let spec = ddg_spec(unit, z);
            let e = UpdateEncoding::ddg(&spec, DIM, 3, bits, &[3; 32], 1).unwrap();
            let rows = 50u64;
            let vectors: Vec<Vec<f64>> = (0..3)
                .map(|p| {
                    // Partner unit: far outside the clip (clipped to 1.5); record unit: a sum
                    // of `rows` rows each at the clip, all in one direction (the largest sum).
                    let v = (p as f64 + 1.0) * 100.0;
                    let scale = if unit == "record" {
                        1.5 * rows as f64 / (DIM as f64).sqrt()
                    } else {
                        v
                    };
                    vec![scale; DIM]
                })
                .collect();
            for _ in 0..10 {
                let encoded: Vec<Vec<u64>> =
                    vectors.iter().map(|v| e.encode_ddg(v).unwrap()).collect();
                let sum = plain_sum(&encoded, bits);
                let got = e.decode_declared(&sum, declared(3, 3 * rows));
                assert!(got.is_ok(), "{unit}, z {z}: {got:?}");
            }
            let garbage: Vec<u64> = (0..e.encoded_len())
                .map(|_| rng.random::<u64>() & ((1u64 << bits) - 1))
                .collect();
            assert!(e.decode(&garbage, 3).is_ok(), "decode alone takes anything");
            match e.decode_declared(&garbage, declared(3, 3 * rows)) {
                Err(SumError::Implausible { norm, bound, .. }) => {
                    assert!(norm > 1000.0 * bound, "{norm} vs {bound}")
                }
                other => panic!("{unit}: expected an implausible sum, got {other:?}"),
            }
        }
        // The bound is not loose by orders of magnitude: three partner-unit vectors
        // and their noise come within a factor 3 of it.
        let e = UpdateEncoding::ddg(&ddg_spec("partner", 1.0), DIM, 3, bits, &[3; 32], 1).unwrap();
        let encoded: Vec<Vec<u64>> = (0..3).map(|_| e.encode_ddg(&[9.0; DIM]).unwrap()).collect();
        let sum = plain_sum(&encoded, bits);
        let mask = (1u64 << bits) - 1;
        let norm = sum
            .iter()
            .map(|&v| (unwrap_signed(v & mask, bits) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let bound = e.ddg_norm_bound(declared(3, 0));
        assert!(norm < bound && norm > bound / 3.0, "{norm} vs {bound}");
    }

    #[test]
    fn rotation_seed_depends_on_key_and_round() {
        let k = [1u8; 32];
        assert_eq!(rotation_seed(&k, 3), rotation_seed(&k, 3));
        assert_ne!(rotation_seed(&k, 3), rotation_seed(&k, 4));
        assert_ne!(rotation_seed(&k, 3), rotation_seed(&[2u8; 32], 3));
    }
}
