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
//! - [`logistic`]: the logistic-regression model, its parameter layout on the wire,
//!   and mini-batch SGD training;
//! - [`metrics`]: evaluation partials ([`EvalPartial`]) that merge across partners
//!   into exact confusion counts and a histogram ROC-AUC ([`Metrics`]);
//! - [`fedavg`]: the example-weighted parameter average ([`WeightedSum`]).

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod csv;
pub mod data;
pub mod fedavg;
pub mod logistic;
pub mod metrics;
pub mod schema;
pub mod standardize;
pub mod task;

pub use data::{CellAt, DataError, Dataset, partition_csv_by_column};
pub use fedavg::{FedAvgError, WeightedSum};
pub use logistic::{LogisticModel, ModelError, TrainConfig, TrainProgress, TrainReport};
pub use metrics::{EvalPartial, Metrics, MetricsError, SCORE_BINS};
pub use schema::{CategoricalSpec, FeatureSchema, InvalidField, LabelSpec, MissingPolicy};
pub use standardize::{FeatureStats, StandardizeError, Standardizer};
pub use task::{ModelKind, ModelSpec, TaskError, TaskSpec};
