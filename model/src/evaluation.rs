//! A model's evaluation on held-out rows, of its task's kind, and the metrics it
//! merges into.
//!
//! Every model family evaluates into one [`Evaluation`] variant: classifiers into
//! [`EvalPartial`] (confusion counts, log-loss, score histograms), regression models
//! into [`RegressionPartial`] (error sums and value histograms). Evaluations of one
//! kind merge exactly across partners, and [`Evaluation::metrics`] turns the merged
//! total into [`TaskMetrics`] of the same kind.

use serde::{Deserialize, Serialize};

use crate::metrics::{EvalPartial, Metrics, MetricsError};
use crate::recommendation_metrics::{RecommendationMetrics, RecommendationPartial};
use crate::regression_metrics::{RegressionMetrics, RegressionPartial};

/// An additive evaluation of one task kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evaluation {
    /// A binary classifier's evaluation.
    Binary(EvalPartial),
    /// A regression model's evaluation.
    Regression(RegressionPartial),
    /// A recommendation model's evaluation.
    Recommendation(RecommendationPartial),
}

/// Metrics of one task kind.
///
/// Serialised without a tag: a binary record reads exactly as records written before
/// other kinds existed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskMetrics {
    /// A classifier's metrics.
    Binary(Metrics),
    /// A regression model's metrics.
    Regression(RegressionMetrics),
    /// A recommendation model's metrics.
    Recommendation(RecommendationMetrics),
}

impl Evaluation {
    /// The task kind, in words (`binary`, `regression`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Binary(_) => "binary",
            Self::Regression(_) => "regression",
            Self::Recommendation(_) => "recommendation",
        }
    }

    /// Rows evaluated.
    pub fn examples(&self) -> u64 {
        match self {
            Self::Binary(p) => p.n,
            Self::Regression(p) => p.n,
            Self::Recommendation(p) => p.n,
        }
    }

    /// Checks an evaluation received from elsewhere.
    pub fn validate(&self) -> Result<(), MetricsError> {
        match self {
            Self::Binary(p) => p.validate(),
            Self::Regression(p) => p.validate(),
            Self::Recommendation(p) => p.validate(),
        }
    }

    /// Adds `other`'s rows; both must be valid and of the same kind (and, for binary
    /// evaluations, the same number of bins).
    pub fn merge(&mut self, other: &Evaluation) -> Result<(), MetricsError> {
        match (self, other) {
            (Self::Binary(a), Self::Binary(b)) => a.merge(b),
            (Self::Regression(a), Self::Regression(b)) => a.merge(b),
            (Self::Recommendation(a), Self::Recommendation(b)) => a.merge(b),
            (a, b) => Err(MetricsError::Inconsistent(format!(
                "cannot merge a {} evaluation with a {} one",
                a.kind(),
                b.kind()
            ))),
        }
    }

    /// The metrics of the rows counted.
    pub fn metrics(&self) -> TaskMetrics {
        match self {
            Self::Binary(p) => TaskMetrics::Binary(Metrics::from_partial(p)),
            Self::Regression(p) => TaskMetrics::Regression(RegressionMetrics::from_partial(p)),
            Self::Recommendation(p) => {
                TaskMetrics::Recommendation(RecommendationMetrics::from_partial(p))
            }
        }
    }

    /// The binary evaluation, if this is one.
    pub fn as_binary(&self) -> Option<&EvalPartial> {
        match self {
            Self::Binary(p) => Some(p),
            Self::Regression(_) | Self::Recommendation(_) => None,
        }
    }
}

impl TaskMetrics {
    /// Rows evaluated.
    pub fn examples(&self) -> u64 {
        match self {
            Self::Binary(m) => m.examples,
            Self::Regression(m) => m.examples,
            Self::Recommendation(m) => m.examples,
        }
    }

    /// The classifier's metrics, if these are.
    pub fn as_binary(&self) -> Option<&Metrics> {
        match self {
            Self::Binary(m) => Some(m),
            Self::Regression(_) | Self::Recommendation(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_do_not_mix_and_binary_metrics_read_back_untagged() {
        let b = Evaluation::Binary(EvalPartial::from_scores([(0.9, true, 0.1)]));
        let mut r = Evaluation::Regression(RegressionPartial::from_rows([(1.0, 2.0, 1.0)]));
        assert!(r.merge(&b).is_err());
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.contains("\"kind\":\"binary\""), "{json}");
        assert_eq!(serde_json::from_str::<Evaluation>(&json).unwrap(), b);
        // Binary metrics serialise as the plain `Metrics` record of earlier versions.
        let m = b.metrics();
        let text = serde_json::to_string(&m).unwrap();
        let plain: Metrics = serde_json::from_str(&text).unwrap();
        assert_eq!(plain.examples, 1);
        assert!(matches!(
            serde_json::from_str::<TaskMetrics>(&text).unwrap(),
            TaskMetrics::Binary(_)
        ));
        let rm = r.metrics();
        let text = serde_json::to_string(&rm).unwrap();
        assert!(matches!(
            serde_json::from_str::<TaskMetrics>(&text).unwrap(),
            TaskMetrics::Regression(_)
        ));
    }
}
