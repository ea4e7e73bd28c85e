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

    #[test]
    fn rotation_seed_depends_on_key_and_round() {
        let k = [1u8; 32];
        assert_eq!(rotation_seed(&k, 3), rotation_seed(&k, 3));
        assert_ne!(rotation_seed(&k, 3), rotation_seed(&k, 4));
        assert_ne!(rotation_seed(&k, 3), rotation_seed(&[2u8; 32], 3));
    }
}
