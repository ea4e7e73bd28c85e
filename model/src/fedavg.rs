//! Federated averaging (McMahan et al., "Communication-Efficient Learning of Deep
//! Networks from Decentralized Data", AISTATS 2017, Algorithm 1): the average of the
//! partners' model deltas weighted by their example counts, `Σ_k n_k δ_k / Σ_k n_k`
//! (which, added to the global model, is the weighted average of their models).
//!
//! [`WeightedSum`] accumulates `n_k δ_k` chunk by chunk, so that updates streamed in
//! pieces never need to be held whole, and tracks the weight that reached each
//! coordinate so that a partner whose chunks did not cover every coordinate is
//! detected instead of silently skewing the average.

/// Running sum of weighted parameter vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedSum {
    sum: Vec<f64>,
    weight: Vec<f64>,
}

/// Why a chunk or an average was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FedAvgError {
    /// A chunk reaches past the end of the parameter vector.
    #[error("chunk at offset {offset} with {len} values does not fit in {total} parameters")]
    OutOfRange {
        /// Chunk offset.
        offset: usize,
        /// Chunk length.
        len: usize,
        /// Parameter count.
        total: usize,
    },
    /// A weight that is not finite and positive.
    #[error(
        "weight {0} must be finite and greater than 0 (it is the contribution's example count)"
    )]
    Weight(f64),
    /// A value that is NaN or infinite.
    #[error("value {index} of the chunk is {value}, not a finite number")]
    NonFinite {
        /// Index in the parameter vector.
        index: usize,
        /// The value.
        value: f64,
    },
    /// Nothing was added.
    #[error("no contributions were added, so there is nothing to average")]
    Empty,
    /// Coordinates received different total weights.
    #[error(
        "parameter {index} received total weight {found} but parameter 0 received {expected}; some contribution did not cover every parameter"
    )]
    Uneven {
        /// The first coordinate that differs.
        index: usize,
        /// Its total weight.
        found: f64,
        /// Coordinate 0's total weight.
        expected: f64,
    },
}

impl WeightedSum {
    /// An empty sum over `param_count` parameters.
    pub fn new(param_count: usize) -> Self {
        Self {
            sum: vec![0.0; param_count],
            weight: vec![0.0; param_count],
        }
    }

    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.sum.len()
    }

    /// Adds `weight * values` to the parameters `offset .. offset + values.len()`.
    /// Nothing is added when the chunk is refused.
    pub fn add_chunk(
        &mut self,
        offset: usize,
        values: &[f64],
        weight: f64,
    ) -> Result<(), FedAvgError> {
        let end = offset
            .checked_add(values.len())
            .filter(|&end| end <= self.sum.len())
            .ok_or(FedAvgError::OutOfRange {
                offset,
                len: values.len(),
                total: self.sum.len(),
            })?;
        if !(weight.is_finite() && weight > 0.0) {
            return Err(FedAvgError::Weight(weight));
        }
        if let Some((i, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(FedAvgError::NonFinite {
                index: offset + i,
                value,
            });
        }
        for (s, v) in self.sum[offset..end].iter_mut().zip(values) {
            *s += weight * v;
        }
        for w in &mut self.weight[offset..end] {
            *w += weight;
        }
        Ok(())
    }

    /// Adds a whole parameter vector (a chunk at offset 0).
    pub fn add(&mut self, values: &[f64], weight: f64) -> Result<(), FedAvgError> {
        if values.len() != self.sum.len() {
            return Err(FedAvgError::OutOfRange {
                offset: 0,
                len: values.len(),
                total: self.sum.len(),
            });
        }
        self.add_chunk(0, values, weight)
    }

    /// Total weight added to parameter 0 (the total example count when every
    /// contribution is complete).
    pub fn total_weight(&self) -> f64 {
        self.weight.first().copied().unwrap_or(0.0)
    }

    /// The weighted average. Every parameter must have received the same total
    /// weight, up to rounding.
    pub fn finish(self) -> Result<Vec<f64>, FedAvgError> {
        let expected = self.total_weight();
        if expected <= 0.0 {
            return Err(FedAvgError::Empty);
        }
        let tolerance = 1e-9 * expected;
        if let Some((index, &found)) = self
            .weight
            .iter()
            .enumerate()
            .find(|(_, w)| (**w - expected).abs() > tolerance)
        {
            return Err(FedAvgError::Uneven {
                index,
                found,
                expected,
            });
        }
        Ok(self
            .sum
            .iter()
            .zip(&self.weight)
            .map(|(s, w)| s / w)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_weighted_average() {
        let mut acc = WeightedSum::new(4);
        acc.add(&[1.0, 2.0, 3.0, 4.0], 1.0).unwrap();
        acc.add_chunk(2, &[30.0, 40.0], 3.0).unwrap();
        acc.add_chunk(0, &[10.0, 20.0], 3.0).unwrap();
        assert_eq!(acc.total_weight(), 4.0);
        let avg = acc.finish().unwrap();
        let expected = [7.75, 15.5, 23.25, 31.0];
        for (a, e) in avg.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12);
        }
    }

    #[test]
    fn rejects_bad_chunks_and_incomplete_contributions() {
        let mut acc = WeightedSum::new(3);
        assert!(matches!(
            acc.add_chunk(2, &[1.0, 2.0], 1.0),
            Err(FedAvgError::OutOfRange { .. })
        ));
        assert!(matches!(
            acc.add_chunk(usize::MAX, &[1.0], 1.0),
            Err(FedAvgError::OutOfRange { .. })
        ));
        assert!(matches!(
            acc.add(&[1.0, 2.0], 1.0),
            Err(FedAvgError::OutOfRange { .. })
        ));
        assert_eq!(acc.add(&[1.0; 3], 0.0), Err(FedAvgError::Weight(0.0)));
        assert!(matches!(acc.add(&[1.0; 3], f64::NAN), Err(FedAvgError::Weight(w)) if w.is_nan()));
        assert!(matches!(
            acc.add(&[1.0, f64::INFINITY, 0.0], 1.0),
            Err(FedAvgError::NonFinite { index: 1, .. })
        ));
        assert_eq!(acc.clone().finish(), Err(FedAvgError::Empty));
        acc.add_chunk(0, &[1.0, 1.0], 2.0).unwrap();
        assert!(matches!(
            acc.finish(),
            Err(FedAvgError::Uneven { index: 2, .. })
        ));
    }
}
