//! Server aggregation strategies: how the coordinator picks a round's partners, turns
//! the round's aggregate into the next global model, and merges evaluations.
//!
//! The interface follows Flower's `Strategy` (configure-fit → aggregate-fit →
//! aggregate-evaluate) and the server optimisers of Reddi et al. 2021, "Adaptive
//! Federated Optimization" (ICLR), Alg. 2: every strategy steps the global parameters
//! from one vector, the FedAvg model delta `Δ` ([`crate::AggregatedUpdate::model_delta`]),
//! which is the same whether the round was summed in the clear or decrypted from
//! ciphertexts. A strategy's state (server momentum, Adam moments) is checkpointed as
//! bytes ([`Strategy::checkpoint`]) that the coordinator commits in the same
//! transaction as the round it produced, so a restart resumes it exactly.
//!
//! The registry is [`build`]: one arm per [`StrategySpec`] variant.

mod adaptive;
mod fedavg;

use std::collections::BTreeSet;
use std::fmt;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::evaluation::{Evaluation, TaskMetrics};
use crate::metrics::MetricsError;
use crate::schema::InvalidField;

pub use adaptive::{Adaptive, AdaptiveRule};
pub use fedavg::{FedAvg, FedAvgM};

/// The `[strategy]` table of a task file; FedAvg when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StrategySpec {
    /// Federated averaging (McMahan et al. 2017): `θ ← θ + η Δ`.
    FedAvg {
        /// Server learning rate η; 1 when absent (plain FedAvg).
        #[serde(default = "one")]
        server_learning_rate: f64,
    },
    /// FedAvg with server momentum (Hsu et al. 2019, "Measuring the Effects of
    /// Non-Identical Data Distribution for Federated Visual Classification", §3):
    /// `v ← β v + Δ`, `θ ← θ + η v`.
    FedAvgM {
        /// Server learning rate η; 1 when absent.
        #[serde(default = "one")]
        server_learning_rate: f64,
        /// Momentum β in [0, 1); 0.9 when absent.
        #[serde(default = "default_momentum")]
        momentum: f64,
    },
    /// FedAdam (Reddi et al. 2021, Alg. 2).
    FedAdam {
        /// Server learning rate η; 0.1 when absent.
        #[serde(default = "default_adaptive_lr")]
        server_learning_rate: f64,
        /// β1 in [0, 1); 0.9 when absent.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// β2 in [0, 1); 0.99 when absent.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity τ > 0; 1e-3 when absent.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// FedYogi (Reddi et al. 2021, Alg. 2).
    FedYogi {
        /// Server learning rate η; 0.1 when absent.
        #[serde(default = "default_adaptive_lr")]
        server_learning_rate: f64,
        /// β1 in [0, 1); 0.9 when absent.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// β2 in [0, 1); 0.99 when absent.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity τ > 0; 1e-3 when absent.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// FedAdagrad (Reddi et al. 2021, Alg. 2).
    FedAdagrad {
        /// Server learning rate η; 0.1 when absent.
        #[serde(default = "default_adaptive_lr")]
        server_learning_rate: f64,
        /// β1 in [0, 1); 0 when absent (no momentum, as in Alg. 2's FedAdagrad).
        #[serde(default)]
        beta1: f64,
        /// Adaptivity τ > 0; 1e-3 when absent.
        #[serde(default = "default_tau")]
        tau: f64,
    },
}

fn one() -> f64 {
    1.0
}
fn default_momentum() -> f64 {
    0.9
}
fn default_adaptive_lr() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.99
}
fn default_tau() -> f64 {
    1e-3
}

/// The largest server learning rate a task may set.
pub const MAX_SERVER_LEARNING_RATE: f64 = 100.0;

impl Default for StrategySpec {
    fn default() -> Self {
        Self::FedAvg {
            server_learning_rate: 1.0,
        }
    }
}

impl StrategySpec {
    /// True for plain FedAvg with η = 1 (what a task without `[strategy]` means).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The kind, as the task file writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::FedAvg { .. } => "fedavg",
            Self::FedAvgM { .. } => "fedavgm",
            Self::FedAdam { .. } => "fedadam",
            Self::FedYogi { .. } => "fedyogi",
            Self::FedAdagrad { .. } => "fedadagrad",
        }
    }

    /// Checks every hyper-parameter; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidField> {
        let lr = |v: f64| {
            if v.is_finite() && v > 0.0 && v <= MAX_SERVER_LEARNING_RATE {
                Ok(())
            } else {
                Err(InvalidField::new(
                    "strategy.server_learning_rate",
                    v,
                    format!("a number greater than 0 and at most {MAX_SERVER_LEARNING_RATE}"),
                ))
            }
        };
        let unit = |field: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(InvalidField::new(
                    format!("strategy.{field}"),
                    v,
                    "a number in [0, 1)",
                ))
            }
        };
        let tau = |v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(InvalidField::new(
                    "strategy.tau",
                    v,
                    "a number greater than 0 and at most 1",
                ))
            }
        };
        match *self {
            Self::FedAvg {
                server_learning_rate,
            } => lr(server_learning_rate),
            Self::FedAvgM {
                server_learning_rate,
                momentum,
            } => {
                lr(server_learning_rate)?;
                unit("momentum", momentum)
            }
            Self::FedAdam {
                server_learning_rate,
                beta1,
                beta2,
                tau: t,
            }
            | Self::FedYogi {
                server_learning_rate,
                beta1,
                beta2,
                tau: t,
            } => {
                lr(server_learning_rate)?;
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                tau(t)
            }
            Self::FedAdagrad {
                server_learning_rate,
                beta1,
                tau: t,
            } => {
                lr(server_learning_rate)?;
                unit("beta1", beta1)?;
                tau(t)
            }
        }
    }
}

/// Why a strategy could not step or restore.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrategyError {
    /// The global parameters and the delta differ in length, or differ from the
    /// strategy's state.
    #[error("{0}")]
    Shape(String),
    /// The step produced a NaN or infinite parameter.
    #[error(
        "the {strategy} step made parameter {index} {value}; lower strategy.server_learning_rate"
    )]
    NonFinite {
        /// The strategy.
        strategy: &'static str,
        /// Index in the parameter layout.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A checkpoint that is not this strategy's.
    #[error("the stored {strategy} state is unusable: {why}")]
    Checkpoint {
        /// The strategy.
        strategy: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// Who trains in a round, from [`Strategy::configure_round`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundPlan {
    /// The partners asked to train (and evaluate).
    pub partners: BTreeSet<String>,
}

/// What a round's selection depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    /// The round.
    pub round: u64,
    /// The coordinator's attempt counter (a retried round samples afresh).
    pub attempt: u64,
    /// The task's seed.
    pub seed: u64,
    /// Fraction of the available partners to sample; all when `None`.
    pub sample_fraction: Option<f64>,
    /// Fewest partners a round needs.
    pub min_partners: usize,
}

/// A server strategy (see the module documentation).
pub trait Strategy: fmt::Debug + Send {
    /// The kind, as the task file writes it.
    fn kind(&self) -> &'static str;

    /// Chooses the round's partners among `available`: all of them, or a sample of
    /// `⌈fraction · available⌉` (at least `min_partners`) seeded by the task's seed,
    /// the round and the attempt. Hyper-parameters are not configured per partner:
    /// each partner trains with the settings of the task it pinned.
    fn configure_round(&self, available: &[String], s: &Selection) -> RoundPlan {
        let mut pool = available.to_vec();
        pool.sort();
        pool.dedup();
        if let Some(f) = s.sample_fraction {
            let k = ((pool.len() as f64 * f).ceil() as usize)
                .max(s.min_partners)
                .min(pool.len());
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                s.seed ^ s.round.rotate_left(32) ^ s.attempt,
            );
            pool.shuffle(&mut rng);
            pool.truncate(k);
        }
        RoundPlan {
            partners: pool.into_iter().collect(),
        }
    }

    /// The next global parameters from the current ones and the round's FedAvg
    /// delta `Δ`. Updates the strategy's state; on error the state is unchanged.
    fn aggregate(&mut self, global: &[f64], delta: &[f64]) -> Result<Vec<f64>, StrategyError>;

    /// The merged evaluation of the partners' evaluations and its metrics. The merge
    /// is exact (sums and histograms, never averages of per-partner figures).
    fn aggregate_evaluation(
        &self,
        partials: &[Evaluation],
    ) -> Result<Option<(Evaluation, TaskMetrics)>, MetricsError> {
        let mut iter = partials.iter();
        let Some(first) = iter.next() else {
            return Ok(None);
        };
        first.validate()?;
        let mut total = first.clone();
        for p in iter {
            total.merge(p)?;
        }
        let metrics = total.metrics();
        Ok(Some((total, metrics)))
    }

    /// The strategy's state as bytes (empty for a stateless strategy).
    fn checkpoint(&self) -> Vec<u8>;

    /// Restores the state [`Strategy::checkpoint`] wrote. Empty bytes are the
    /// initial state.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), StrategyError>;
}

/// The strategy a task asks for, in its initial state. The one place that matches on
/// [`StrategySpec`].
pub fn build(spec: &StrategySpec) -> Box<dyn Strategy> {
    match *spec {
        StrategySpec::FedAvg {
            server_learning_rate,
        } => Box::new(FedAvg::new(server_learning_rate)),
        StrategySpec::FedAvgM {
            server_learning_rate,
            momentum,
        } => Box::new(FedAvgM::new(server_learning_rate, momentum)),
        StrategySpec::FedAdam {
            server_learning_rate,
            beta1,
            beta2,
            tau,
        } => Box::new(Adaptive::new(
            AdaptiveRule::Adam,
            server_learning_rate,
            beta1,
            beta2,
            tau,
        )),
        StrategySpec::FedYogi {
            server_learning_rate,
            beta1,
            beta2,
            tau,
        } => Box::new(Adaptive::new(
            AdaptiveRule::Yogi,
            server_learning_rate,
            beta1,
            beta2,
            tau,
        )),
        StrategySpec::FedAdagrad {
            server_learning_rate,
            beta1,
            tau,
        } => Box::new(Adaptive::new(
            AdaptiveRule::Adagrad,
            server_learning_rate,
            beta1,
            0.0,
            tau,
        )),
    }
}

/// Checks that `global` and `delta` have the same length.
fn check_lengths(global: &[f64], delta: &[f64]) -> Result<(), StrategyError> {
    if global.len() != delta.len() {
        return Err(StrategyError::Shape(format!(
            "the delta has {} values, the model {} parameters",
            delta.len(),
            global.len()
        )));
    }
    Ok(())
}

/// Refuses a step that produced a non-finite parameter.
fn check_finite(strategy: &'static str, next: &[f64]) -> Result<(), StrategyError> {
    match next.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((index, &value)) => Err(StrategyError::NonFinite {
            strategy,
            index,
            value,
        }),
        None => Ok(()),
    }
}

/// State bytes: a tag naming the strategy, the vector length, then the vectors'
/// values as little-endian `f64`.
fn encode_state(tag: &str, vectors: &[&[f64]]) -> Vec<u8> {
    let len = vectors.first().map_or(0, |v| v.len());
    let mut out = Vec::with_capacity(tag.len() + 9 + 8 * len * vectors.len());
    out.push(tag.len() as u8);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    for v in vectors {
        for x in *v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Reads what [`encode_state`] wrote: `count` vectors of one length.
fn decode_state(
    strategy: &'static str,
    tag: &str,
    count: usize,
    bytes: &[u8],
) -> Result<Vec<Vec<f64>>, StrategyError> {
    let bad = |why: String| StrategyError::Checkpoint { strategy, why };
    let (&n, rest) = bytes
        .split_first()
        .ok_or_else(|| bad("it is empty".into()))?;
    let n = n as usize;
    if rest.len() < n + 8 || &rest[..n] != tag.as_bytes() {
        return Err(bad(format!(
            "it was written by another strategy (tag {:?})",
            String::from_utf8_lossy(&rest[..n.min(rest.len())])
        )));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&rest[n..n + 8]);
    let len = u64::from_le_bytes(len) as usize;
    let body = &rest[n + 8..];
    if Some(body.len()) != len.checked_mul(8).and_then(|b| b.checked_mul(count)) {
        return Err(bad(format!(
            "{} bytes cannot hold {count} vectors of {len} values",
            body.len()
        )));
    }
    let values: Vec<f64> = body
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            f64::from_le_bytes(b)
        })
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("value {i} is not finite")));
    }
    Ok(values
        .chunks(len.max(1))
        .take(count)
        .map(<[f64]>::to_vec)
        .chain(std::iter::repeat_with(Vec::new))
        .take(count)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}")).collect()
    }

    #[test]
    fn selection_takes_everyone_or_a_seeded_sample_of_at_least_min() {
        let s = build(&StrategySpec::default());
        let mut sel = Selection {
            round: 3,
            attempt: 1,
            seed: 42,
            sample_fraction: None,
            min_partners: 2,
        };
        assert_eq!(s.configure_round(&names(5), &sel).partners.len(), 5);
        sel.sample_fraction = Some(0.1);
        let a = s.configure_round(&names(10), &sel).partners;
        assert_eq!(a.len(), 2, "at least min_partners");
        assert_eq!(a, s.configure_round(&names(10), &sel).partners, "seeded");
        sel.sample_fraction = Some(0.5);
        assert_eq!(s.configure_round(&names(10), &sel).partners.len(), 5);
    }

    #[test]
    fn out_of_range_hyper_parameters_are_named() {
        let bad = [
            (
                StrategySpec::FedAvg {
                    server_learning_rate: 0.0,
                },
                "strategy.server_learning_rate",
            ),
            (
                StrategySpec::FedAvgM {
                    server_learning_rate: 1.0,
                    momentum: 1.0,
                },
                "strategy.momentum",
            ),
            (
                StrategySpec::FedAdam {
                    server_learning_rate: 0.1,
                    beta1: 0.9,
                    beta2: -0.1,
                    tau: 1e-3,
                },
                "strategy.beta2",
            ),
            (
                StrategySpec::FedYogi {
                    server_learning_rate: 0.1,
                    beta1: f64::NAN,
                    beta2: 0.99,
                    tau: 1e-3,
                },
                "strategy.beta1",
            ),
            (
                StrategySpec::FedAdagrad {
                    server_learning_rate: 0.1,
                    beta1: 0.0,
                    tau: 0.0,
                },
                "strategy.tau",
            ),
        ];
        for (spec, field) in bad {
            let err = spec.validate().unwrap_err();
            assert_eq!(err.field, field, "{spec:?}");
        }
        assert!(StrategySpec::default().validate().is_ok());
    }

    #[test]
    fn state_bytes_round_trip_and_foreign_state_is_refused() {
        let a = [1.0, -2.5, 3.25];
        let b = [0.5, 0.0, 1e-300];
        let bytes = encode_state("fedadam", &[&a, &b]);
        let back = decode_state("FedAdam", "fedadam", 2, &bytes).unwrap();
        assert_eq!(back, vec![a.to_vec(), b.to_vec()]);
        assert!(decode_state("FedYogi", "fedyogi", 2, &bytes).is_err());
        assert!(decode_state("FedAdam", "fedadam", 2, &bytes[..bytes.len() - 1]).is_err());
        assert!(decode_state("FedAdam", "fedadam", 2, &[]).is_err());
    }
}
