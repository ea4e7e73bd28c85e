//! The [`Model`] trait: what every model family offers the rest of Consortia, and
//! [`build`], the one place that turns a task's `[model]` into a concrete model.
//!
//! A model holds its **shared** parameters as one flat vector of `f64` in a fixed
//! layout (its *wire layout*): that vector is what the coordinator sends, what
//! partners' updates are deltas of, and what the server strategy steps. A model whose
//! parameters are partly private to a partner keeps the private part out of that
//! vector. Everything generic — local SGD ([`crate::sgd`]), DP-SGD's per-example
//! clipping, evaluation merged across partners, the strategies — works through this
//! trait, so a new model family is one file in [`crate::models`] and one arm in
//! [`build`].

use std::fmt;

use ndarray::{Array1, Array2, ArrayView1};
use serde::{Deserialize, Serialize};

use crate::evaluation::Evaluation;
use crate::schema::FeatureSchema;
use crate::task::{ModelKind, ModelSpec, TaskSpec};

/// Why a model could not be built, used or trained.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A parameter vector of the wrong length.
    #[error("expected {expected} parameters ({layout}), got {found}")]
    ParamCount {
        /// Length received.
        found: usize,
        /// Length of the model's wire layout.
        expected: usize,
        /// The layout, in words.
        layout: String,
    },
    /// A parameter that is NaN or infinite.
    #[error("parameter {index} is {value}, not a finite number")]
    NonFinite {
        /// Index in the parameter layout.
        index: usize,
        /// The value.
        value: f64,
    },
    /// Inputs whose shapes do not fit the model or each other.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An unusable training setting.
    #[error("invalid training setting: {0}")]
    Config(String),
    /// Training produced a NaN or infinite parameter.
    #[error("training diverged to a non-finite parameter; lower the learning rate")]
    Diverged,
}

/// A model family behind the seam.
///
/// Conventions: `x` is a standardised design matrix (rows are examples, columns the
/// schema's features in [`FeatureSchema::feature_names`] order) and `y` the labels of
/// the task's kind. Gradients are of the per-example loss the model trains on, in
/// wire layout, without the penalty (which does not depend on the data, so DP-SGD
/// leaves it out of per-example clipping; [`Model::penalty_gradient`] adds it).
pub trait Model: fmt::Debug + Send + Sync {
    /// The family, as the task file names it.
    fn kind(&self) -> ModelKind;

    /// The layout of [`Model::params`], in words (for error messages).
    fn layout(&self) -> String;

    /// The shared parameters, in wire layout.
    fn params(&self) -> &[f64];

    /// The shared parameters, to step in place.
    fn params_mut(&mut self) -> &mut [f64];

    /// Number of shared parameters.
    fn param_count(&self) -> usize {
        self.params().len()
    }

    /// Replaces the shared parameters. The length must be [`Model::param_count`] and
    /// every value finite; on error nothing changes.
    fn set_params(&mut self, params: &[f64]) -> Result<(), ModelError> {
        check_params(params, self.param_count(), || self.layout())?;
        self.params_mut().copy_from_slice(params);
        Ok(())
    }

    /// Number of input features.
    fn feature_count(&self) -> usize;

    /// The prediction for every row of `x` (for a binary task, `P(y = 1)`).
    fn predict(&self, x: &Array2<f64>) -> Result<Array1<f64>, ModelError>;

    /// Writes the gradient of one example's loss into `out` (overwriting it) and
    /// returns that loss.
    fn example_gradient(
        &self,
        x_row: ArrayView1<'_, f64>,
        y: f64,
        out: &mut [f64],
    ) -> Result<f64, ModelError>;

    /// Writes the sum over `rows` of the examples' loss gradients into `out`
    /// (overwriting it) and returns the sum of their losses. The default adds up
    /// [`Model::example_gradient`]; a model may compute it faster as matrix products.
    fn batch_gradient(
        &self,
        x: &Array2<f64>,
        y: &Array1<f64>,
        rows: &[usize],
        out: &mut [f64],
    ) -> Result<f64, ModelError> {
        check_rows(x, y, self.feature_count())?;
        out.iter_mut().for_each(|v| *v = 0.0);
        let mut g = vec![0.0; out.len()];
        let mut loss = 0.0;
        for &i in rows {
            loss += self.example_gradient(x.row(i), y[i], &mut g)?;
            out.iter_mut().zip(&g).for_each(|(o, v)| *o += v);
        }
        Ok(loss)
    }

    /// Adds the gradient of the penalty `l2 / 2 · |w|²` to `out`. The model knows
    /// which parameters are penalised (weights, not biases or intercepts).
    fn penalty_gradient(&self, l2: f64, out: &mut [f64]);

    /// Mean loss over the rows of `x` (0 when there are none).
    fn loss(&self, x: &Array2<f64>, y: &Array1<f64>) -> Result<f64, ModelError>;

    /// The additive evaluation of this model on held-out rows, of its task's kind,
    /// which merges exactly across partners ([`Evaluation::merge`]).
    fn evaluate(&self, x: &Array2<f64>, y: &Array1<f64>) -> Result<Evaluation, ModelError>;

    /// The parameters by name for an exported model file (for logistic regression,
    /// `weights` and `bias`), in the model's own terms.
    fn export(&self) -> serde_json::Map<String, serde_json::Value>;

    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn Model>;
}

impl Clone for Box<dyn Model> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Local training settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the rows.
    pub epochs: u32,
    /// Rows per SGD step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Step size.
    pub learning_rate: f64,
    /// L2 penalty on the weights.
    pub l2: f64,
}

/// Sent to the progress callback after each epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainProgress {
    /// The epoch just finished, from 1.
    pub epoch: u32,
    /// Epochs in all.
    pub epochs: u32,
    /// Mean loss of the epoch's examples, each taken just before the step that used it.
    pub mean_loss: f64,
    /// SGD steps taken so far.
    pub steps: u64,
}

/// What a training run did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Mean loss over the last epoch (see [`TrainProgress::mean_loss`]); 0 when
    /// nothing was trained.
    pub mean_loss: f64,
    /// Examples processed, counting each once per epoch.
    pub examples: u64,
    /// SGD steps taken.
    pub steps: u64,
}

/// The model a task trains, at its initial parameters (drawn from `seed` for
/// families that need a random start, so that the coordinator and every partner
/// derive the same one). With [`param_count`], the only place that matches on
/// [`ModelKind`].
pub fn build(
    spec: &ModelSpec,
    schema: &FeatureSchema,
    seed: u64,
) -> Result<Box<dyn Model>, ModelError> {
    match spec.kind {
        ModelKind::LogisticRegression => Ok(Box::new(
            crate::models::logistic::LogisticModel::zeros(schema.feature_count()),
        )),
        ModelKind::Mlp => Ok(Box::new(crate::models::mlp::MlpModel::new(
            schema.feature_count(),
            &spec.hidden,
            seed,
        )?)),
        ModelKind::Glm => {
            let family = spec.family.ok_or_else(|| {
                ModelError::Config("a glm needs model.family (e.g. \"tweedie\")".into())
            })?;
            Ok(Box::new(crate::models::glm::GlmModel::zeros(
                schema.feature_count(),
                family,
                family.power(spec.power),
            )))
        }
        ModelKind::MatrixFactorization => Ok(Box::new(crate::models::mf::build(
            spec.factors,
            schema.ratings.as_ref(),
            seed,
        )?)),
    }
}

/// Number of shared parameters of the model [`build`] would return, without
/// building it (saturating; see [`crate::task::MAX_MODEL_PARAMS`]).
pub fn param_count(spec: &ModelSpec, schema: &FeatureSchema) -> usize {
    match spec.kind {
        ModelKind::LogisticRegression | ModelKind::Glm => schema.feature_count().saturating_add(1),
        ModelKind::Mlp => crate::models::mlp::param_count(schema.feature_count(), &spec.hidden),
        ModelKind::MatrixFactorization => crate::models::mf::param_count(
            schema.ratings.as_ref().map_or(0, |r| r.items),
            spec.factors.unwrap_or(0),
        ),
    }
}

/// The task's model at its initial parameters ([`build`] with the task's seed).
pub fn initial_model(task: &TaskSpec) -> Result<Box<dyn Model>, ModelError> {
    build(&task.model, &task.schema, task.seed)
}

/// The task's model with the shared parameters `params` (checked: length and
/// finiteness).
pub fn model_with_params(task: &TaskSpec, params: &[f64]) -> Result<Box<dyn Model>, ModelError> {
    let mut model = initial_model(task)?;
    model.set_params(params)?;
    Ok(model)
}

/// Checks a parameter vector's length against `expected` and that every value is
/// finite.
pub(crate) fn check_params(
    params: &[f64],
    expected: usize,
    layout: impl FnOnce() -> String,
) -> Result<(), ModelError> {
    if params.len() != expected {
        return Err(ModelError::ParamCount {
            found: params.len(),
            expected,
            layout: layout(),
        });
    }
    if let Some((index, &value)) = params.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ModelError::NonFinite { index, value });
    }
    Ok(())
}

/// Checks that `x` has `features` columns and as many rows as `y` has labels.
pub(crate) fn check_rows(
    x: &Array2<f64>,
    y: &Array1<f64>,
    features: usize,
) -> Result<(), ModelError> {
    if x.ncols() != features {
        return Err(ModelError::Shape(format!(
            "design matrix has {} columns, the model has {features} features",
            x.ncols()
        )));
    }
    if x.nrows() != y.len() {
        return Err(ModelError::Shape(format!(
            "{} rows but {} labels",
            x.nrows(),
            y.len()
        )));
    }
    Ok(())
}
