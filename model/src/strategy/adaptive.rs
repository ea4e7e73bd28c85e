//! The adaptive server optimisers of Reddi et al. 2021, "Adaptive Federated
//! Optimization" (ICLR), Algorithm 2: FedAdagrad, FedYogi and FedAdam.
//!
//! With `Δ_t` the round's FedAvg delta, every rule keeps the first moment
//! `m_t = β1 m_{t−1} + (1 − β1) Δ_t` and steps `θ_{t+1} = θ_t + η m_t / (√v_t + τ)`,
//! where the second moment `v_t` is (all operations per coordinate):
//!
//! * FedAdagrad: `v_t = v_{t−1} + Δ_t²`;
//! * FedYogi: `v_t = v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²)`;
//! * FedAdam: `v_t = β2 v_{t−1} + (1 − β2) Δ_t²`.
//!
//! As in Algorithm 2, `m_{−1} = 0` and `v_{−1} = τ²`, and there is no bias
//! correction.

use super::{Strategy, StrategyError, check_finite, check_lengths, decode_state, encode_state};

/// Which second-moment rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptiveRule {
    /// FedAdagrad.
    Adagrad,
    /// FedYogi.
    Yogi,
    /// FedAdam.
    Adam,
}

impl AdaptiveRule {
    fn name(self) -> &'static str {
        match self {
            Self::Adagrad => "FedAdagrad",
            Self::Yogi => "FedYogi",
            Self::Adam => "FedAdam",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Adagrad => "fedadagrad/v1",
            Self::Yogi => "fedyogi/v1",
            Self::Adam => "fedadam/v1",
        }
    }
}

/// An adaptive server optimiser (see the module documentation).
#[derive(Debug, Clone)]
pub struct Adaptive {
    rule: AdaptiveRule,
    lr: f64,
    beta1: f64,
    beta2: f64,
    tau: f64,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl Adaptive {
    /// The optimiser `rule` with server learning rate `lr`, β1, β2 (unused by
    /// FedAdagrad) and τ.
    pub fn new(rule: AdaptiveRule, lr: f64, beta1: f64, beta2: f64, tau: f64) -> Self {
        Self {
            rule,
            lr,
            beta1,
            beta2,
            tau,
            m: Vec::new(),
            v: Vec::new(),
        }
    }
}

impl Strategy for Adaptive {
    fn kind(&self) -> &'static str {
        match self.rule {
            AdaptiveRule::Adagrad => "fedadagrad",
            AdaptiveRule::Yogi => "fedyogi",
            AdaptiveRule::Adam => "fedadam",
        }
    }

    fn aggregate(&mut self, global: &[f64], delta: &[f64]) -> Result<Vec<f64>, StrategyError> {
        check_lengths(global, delta)?;
        let n = delta.len();
        let (m_prev, v_prev) = if self.m.is_empty() {
            (vec![0.0; n], vec![self.tau * self.tau; n])
        } else if self.m.len() == n && self.v.len() == n {
            (self.m.clone(), self.v.clone())
        } else {
            return Err(StrategyError::Shape(format!(
                "the {} moments have {} values, the delta {n}",
                self.rule.name(),
                self.m.len()
            )));
        };
        let (b1, b2) = (self.beta1, self.beta2);
        let mut m = Vec::with_capacity(n);
        let mut v = Vec::with_capacity(n);
        let mut next = Vec::with_capacity(n);
        for i in 0..n {
            let d = delta[i];
            let d2 = d * d;
            let mi = b1 * m_prev[i] + (1.0 - b1) * d;
            let vi = match self.rule {
                AdaptiveRule::Adagrad => v_prev[i] + d2,
                AdaptiveRule::Yogi => {
                    v_prev[i] - (1.0 - b2) * d2 * (v_prev[i] - d2).signum_or_zero()
                }
                AdaptiveRule::Adam => b2 * v_prev[i] + (1.0 - b2) * d2,
            };
            // Yogi's v can only approach 0 from above through d² ≥ 0 steps, but
            // rounding may land a hair below: √ of a negative is NaN.
            let vi = vi.max(0.0);
            next.push(global[i] + self.lr * mi / (vi.sqrt() + self.tau));
            m.push(mi);
            v.push(vi);
        }
        check_finite(self.rule.name(), &next)?;
        self.m = m;
        self.v = v;
        Ok(next)
    }

    fn checkpoint(&self) -> Vec<u8> {
        if self.m.is_empty() {
            return Vec::new();
        }
        encode_state(self.rule.tag(), &[&self.m, &self.v])
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), StrategyError> {
        if bytes.is_empty() {
            self.m.clear();
            self.v.clear();
            return Ok(());
        }
        let mut vs = decode_state(self.rule.name(), self.rule.tag(), 2, bytes)?;
        let v = vs.pop().unwrap_or_default();
        let m = vs.pop().unwrap_or_default();
        if v.iter().any(|x| *x < 0.0) {
            return Err(StrategyError::Checkpoint {
                strategy: self.rule.name(),
                why: "a second moment is negative".into(),
            });
        }
        self.m = m;
        self.v = v;
        Ok(())
    }
}

/// `sign(x)` with `sign(0) = 0`, as Yogi's update uses it.
trait SignumOrZero {
    fn signum_or_zero(self) -> f64;
}

impl SignumOrZero for f64 {
    fn signum_or_zero(self) -> f64 {
        if self > 0.0 {
            1.0
        } else if self < 0.0 {
            -1.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rounds by hand, one coordinate, η = 1, β1 = 0.5, β2 = 0.75, τ = 0.5,
    /// deltas 1 then −2; v_{−1} = τ² = 0.25.
    ///
    /// Round 1: m = 0.5. Adagrad v = 1.25; Yogi v = 0.25 − 0.25·1·sign(0.25 − 1) = 0.5;
    /// Adam v = 0.1875 + 0.25 = 0.4375.
    /// Round 2: m = 0.25 − 1 = −0.75. Adagrad v = 5.25; Yogi v = 0.5 − 0.25·4·sign(0.5 − 4)
    /// = 1.5; Adam v = 0.328125 + 1 = 1.328125.
    #[test]
    fn two_rounds_match_algorithm_2_by_hand() {
        let cases = [
            (AdaptiveRule::Adagrad, 1.25, 5.25),
            (AdaptiveRule::Yogi, 0.5, 1.5),
            (AdaptiveRule::Adam, 0.4375, 1.328125),
        ];
        for (rule, v1, v2) in cases {
            let mut s = Adaptive::new(rule, 1.0, 0.5, 0.75, 0.5);
            let t1 = s.aggregate(&[0.0], &[1.0]).unwrap()[0];
            let want1 = 0.5 / (f64::sqrt(v1) + 0.5);
            assert!(
                (t1 - want1).abs() < 1e-12,
                "{rule:?} round 1: {t1} vs {want1}"
            );
            let saved = s.checkpoint();
            let t2 = s.aggregate(&[t1], &[-2.0]).unwrap()[0];
            let want2 = want1 - 0.75 / (f64::sqrt(v2) + 0.5);
            assert!(
                (t2 - want2).abs() < 1e-12,
                "{rule:?} round 2: {t2} vs {want2}"
            );
            let mut resumed = Adaptive::new(rule, 1.0, 0.5, 0.75, 0.5);
            resumed.restore(&saved).unwrap();
            assert_eq!(resumed.aggregate(&[t1], &[-2.0]).unwrap()[0], t2);
        }
    }

    #[test]
    fn steps_are_bounded_by_the_server_rate_and_state_is_kind_specific() {
        // Adam's step per coordinate is at most about η whatever the delta's scale.
        let mut s = Adaptive::new(AdaptiveRule::Adam, 0.1, 0.9, 0.99, 1e-3);
        let next = s.aggregate(&[0.0, 0.0], &[1e6, -1e-6]).unwrap();
        // First step: η (1 − β1) Δ / √((1 − β2) Δ²) = η (1 − β1) / √(1 − β2).
        assert!(next[0] > 0.0 && next[0] <= 0.1 * 0.1 / 0.01f64.sqrt() + 1e-9);
        assert!(next[1] < 0.0);
        let mut yogi = Adaptive::new(AdaptiveRule::Yogi, 0.1, 0.9, 0.99, 1e-3);
        assert!(yogi.restore(&s.checkpoint()).is_err());
        assert!(s.aggregate(&[0.0], &[1.0]).is_err(), "length changed");
    }
}
