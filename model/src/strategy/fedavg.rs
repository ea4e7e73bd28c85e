//! FedAvg and FedAvgM.

use super::{Strategy, StrategyError, check_finite, check_lengths, decode_state, encode_state};

/// Federated averaging (McMahan et al. 2017, Alg. 1) with a server learning rate:
/// `θ ← θ + η Δ`. With η = 1 the new model is the example-weighted average of the
/// partners' models. Stateless.
#[derive(Debug, Clone)]
pub struct FedAvg {
    lr: f64,
}

impl FedAvg {
    /// FedAvg with server learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Self { lr }
    }
}

impl Strategy for FedAvg {
    fn kind(&self) -> &'static str {
        "fedavg"
    }

    fn aggregate(&mut self, global: &[f64], delta: &[f64]) -> Result<Vec<f64>, StrategyError> {
        check_lengths(global, delta)?;
        let next: Vec<f64> = if self.lr == 1.0 {
            global.iter().zip(delta).map(|(w, d)| w + d).collect()
        } else {
            global
                .iter()
                .zip(delta)
                .map(|(w, d)| w + self.lr * d)
                .collect()
        };
        check_finite("FedAvg", &next)?;
        Ok(next)
    }

    fn checkpoint(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), StrategyError> {
        if bytes.is_empty() {
            Ok(())
        } else {
            Err(StrategyError::Checkpoint {
                strategy: "FedAvg",
                why: format!(
                    "FedAvg keeps no state, but {} bytes are stored",
                    bytes.len()
                ),
            })
        }
    }
}

/// FedAvg with server momentum (Hsu, Qi and Brown 2019, "Measuring the Effects of
/// Non-Identical Data Distribution for Federated Visual Classification", §3):
/// `v ← β v + Δ`, `θ ← θ + η v`, with `v` starting at 0.
#[derive(Debug, Clone)]
pub struct FedAvgM {
    lr: f64,
    momentum: f64,
    velocity: Vec<f64>,
}

impl FedAvgM {
    /// FedAvgM with server learning rate `lr` and momentum `momentum`.
    pub fn new(lr: f64, momentum: f64) -> Self {
        Self {
            lr,
            momentum,
            velocity: Vec::new(),
        }
    }
}

const FEDAVGM_TAG: &str = "fedavgm/v1";

impl Strategy for FedAvgM {
    fn kind(&self) -> &'static str {
        "fedavgm"
    }

    fn aggregate(&mut self, global: &[f64], delta: &[f64]) -> Result<Vec<f64>, StrategyError> {
        check_lengths(global, delta)?;
        let velocity: Vec<f64> = if self.velocity.is_empty() {
            delta.to_vec()
        } else if self.velocity.len() == delta.len() {
            self.velocity
                .iter()
                .zip(delta)
                .map(|(v, d)| self.momentum * v + d)
                .collect()
        } else {
            return Err(StrategyError::Shape(format!(
                "the server momentum has {} values, the delta {}",
                self.velocity.len(),
                delta.len()
            )));
        };
        let next: Vec<f64> = global
            .iter()
            .zip(&velocity)
            .map(|(w, v)| w + self.lr * v)
            .collect();
        check_finite("FedAvgM", &next)?;
        self.velocity = velocity;
        Ok(next)
    }

    fn checkpoint(&self) -> Vec<u8> {
        encode_state(FEDAVGM_TAG, &[&self.velocity])
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), StrategyError> {
        if bytes.is_empty() {
            self.velocity.clear();
            return Ok(());
        }
        let mut v = decode_state("FedAvgM", FEDAVGM_TAG, 1, bytes)?;
        self.velocity = v.pop().unwrap_or_default();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedavg_adds_the_delta_scaled_by_the_server_rate() {
        let mut s = FedAvg::new(1.0);
        assert_eq!(s.aggregate(&[1.0, 2.0], &[0.5, -1.0]).unwrap(), [1.5, 1.0]);
        let mut s = FedAvg::new(0.5);
        assert_eq!(s.aggregate(&[1.0, 2.0], &[0.5, -1.0]).unwrap(), [1.25, 1.5]);
        assert!(s.aggregate(&[1.0], &[0.5, -1.0]).is_err());
        assert!(s.checkpoint().is_empty());
        assert!(s.restore(&[1]).is_err());
    }

    #[test]
    fn fedavgm_accumulates_momentum_and_resumes_from_its_checkpoint() {
        // By hand, β = 0.5, η = 1: v1 = 1, θ1 = 1; v2 = 0.5 + 1 = 1.5, θ2 = 2.5;
        // v3 = 0.75 + 1 = 1.75, θ3 = 4.25.
        let mut s = FedAvgM::new(1.0, 0.5);
        let mut theta = vec![0.0];
        let mut seen = Vec::new();
        for _ in 0..2 {
            theta = s.aggregate(&theta, &[1.0]).unwrap();
            seen.push(theta[0]);
        }
        let saved = s.checkpoint();
        let mut resumed = FedAvgM::new(1.0, 0.5);
        resumed.restore(&saved).unwrap();
        let a = s.aggregate(&theta, &[1.0]).unwrap();
        let b = resumed.aggregate(&theta, &[1.0]).unwrap();
        seen.push(a[0]);
        assert_eq!(seen, [1.0, 2.5, 4.25]);
        assert_eq!(a, b, "a restored strategy steps exactly as the original");
        // A failed step leaves the state alone.
        let before = s.checkpoint();
        assert!(s.aggregate(&[0.0], &[f64::MAX]).is_ok());
        let mut s2 = FedAvgM::new(1.0, 0.5);
        s2.restore(&before).unwrap();
        assert!(s2.aggregate(&[f64::MAX], &[f64::MAX]).is_err());
        assert_eq!(s2.checkpoint(), before);
    }
}
