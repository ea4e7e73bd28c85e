//! The learning task that the coordinator and every partner share.
//!
//! This crate knows what is being learned and how, and nothing about networks or
//! cryptography:
//!
//! - [`task`]: the task file ([`TaskSpec`]), parsed from TOML and validated;
//! - [`schema`]: the feature schema ([`FeatureSchema`]) that turns CSV columns into
//!   a numeric design matrix (numeric columns, then one-hot categoricals);
//! - [`data`]: loading a partner's CSV into a [`Dataset`], stratified holdout
//!   splits, and splitting one CSV into one file per value of a column;
//! - [`standardize`]: per-feature sums ([`FeatureStats`]) that partners merge into
//!   federation-wide means and standard deviations ([`Standardizer`]);
//! - [`model`]: the [`Model`] trait every model family implements, and [`build`], the
//!   one place that turns a task's `[model]` into a model; the families themselves are
//!   in [`models`] (logistic regression, a multilayer perceptron);
//! - [`ratings`]: a recommendation task's ratings, item catalogue and per-user
//!   holdout, and [`recommendation_metrics`], their evaluation merged across partners;
//! - [`sgd`]: mini-batch SGD for any model, with FedProx's proximal term;
//! - [`metrics`]: evaluation partials ([`EvalPartial`]) that merge across partners
//!   into exact confusion counts and a histogram ROC-AUC ([`Metrics`]);
//! - [`fedavg`]: the example-weighted average of partners' deltas ([`WeightedSum`]);
//! - [`aggregate`]: a round's aggregate in any of its forms ([`AggregatedUpdate`]) and
//!   the FedAvg delta it stands for;
//! - [`onnx`]: a trained model, with its standardisation, as an ONNX file for any ONNX
//!   runtime ([`onnx::to_onnx`]);
//! - [`strategy`]: the server strategies ([`Strategy`]: FedAvg, FedAvgM, FedAdam,
//!   FedYogi, FedAdagrad) that step the global model from that delta.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod aggregate;
mod csv;
pub mod data;
pub mod evaluation;
pub mod fedavg;
pub mod metrics;
pub mod model;
pub mod models;
pub mod onnx;
pub mod ratings;
pub mod recommendation_metrics;
pub mod regression_metrics;
pub mod schema;
pub mod sgd;
pub mod standardize;
pub mod strategy;
pub mod task;

pub use aggregate::{AggregateError, AggregatedUpdate};
pub use evaluation::{Evaluation, TaskMetrics};

pub use data::{CellAt, DataError, Dataset, ScoringRows, partition_csv_by_column};
pub use fedavg::{FedAvgError, WeightedSum};
pub use metrics::{EvalPartial, Metrics, MetricsError, SCORE_BINS};
pub use model::{
    Model, ModelError, TrainConfig, TrainProgress, TrainReport, build, initial_model,
    model_with_params,
};
pub use recommendation_metrics::{RecommendationMetrics, RecommendationPartial};
pub use regression_metrics::{RegressionMetrics, RegressionPartial};
pub use schema::{CategoricalSpec, FeatureSchema, InvalidField, LabelSpec, MissingPolicy};
pub use standardize::{FeatureStats, StandardizeError, Standardizer};
pub use strategy::{Strategy, StrategyError, StrategySpec};
pub use task::{GlmFamily, LocalSpec, ModelKind, ModelSpec, TaskError, TaskSpec};
