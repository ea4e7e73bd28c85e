//! The task file: what the federation learns, for how many rounds, with which
//! training settings, over which features.
//!
//! A task file is TOML. Every field is validated when it is read, and an error names
//! the field, the value found and what is allowed. The `[privacy]` table is kept as
//! raw TOML for consortia-dp to interpret; any other unknown key is an error.

use consortia_dp::{NoisePlacement, PrivacySpec, PrivacyUnit};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::TrainConfig;
pub use crate::schema::{CategoricalSpec, FeatureSchema, InvalidField, LabelSpec, MissingPolicy};
use crate::strategy::StrategySpec;

/// The largest task file accepted, in bytes.
pub const MAX_TASK_FILE_BYTES: usize = 1 << 20;
/// The most rounds a task may ask for.
pub const MAX_ROUNDS: u32 = 100_000;
/// The most local epochs per round a task may ask for.
pub const MAX_LOCAL_EPOCHS: u32 = 10_000;
/// The largest mini-batch a task may ask for.
pub const MAX_BATCH_SIZE: usize = 1 << 24;
/// The longest round deadline a task may set: one week.
pub const MAX_ROUND_DEADLINE_SECS: u64 = 7 * 24 * 3600;
/// The longest task name.
pub const MAX_NAME_LEN: usize = 64;
/// The largest key committee a t-of-N key may have, hence the largest
/// `key_threshold` (`consortia_he::threshold::MAX_THRESHOLD_PARTIES`: replicated
/// secret sharing gives each holder `C(N−1, t−1)` subshares).
pub const MAX_KEY_THRESHOLD: u32 = 12;
/// How many failed attempts in a row a round gets when `max_round_attempts` is absent.
pub const DEFAULT_ROUND_ATTEMPTS: u32 = 10;
/// The largest `max_round_attempts` a task may set.
pub const MAX_ROUND_ATTEMPTS: u32 = 1000;

/// A learning task, as written in a task file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Task name: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, not starting with `.`.
    pub name: String,
    /// Number of federated rounds (at least 1).
    pub rounds: u32,
    /// Fewest partners whose updates a round needs (at least 1).
    pub min_partners: u32,
    /// Fraction of connected partners sampled each round, in (0, 1]; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_fraction: Option<f64>,
    /// Seconds a round waits for updates before it closes.
    pub round_deadline_secs: u64,
    /// Passes over its training rows that each partner makes per round.
    pub local_epochs: u32,
    /// Mini-batch size of local SGD.
    pub batch_size: usize,
    /// Step size of local SGD.
    pub learning_rate: f64,
    /// Seed from which every random choice of the task is derived.
    pub seed: u64,
    /// Fraction of each partner's rows held out for evaluation, in (0, 1); 0.2 when
    /// absent.
    #[serde(default = "default_holdout_fraction")]
    pub holdout_fraction: f64,
    /// Whether updates are summed under encryption; false when absent.
    #[serde(default)]
    pub secure_aggregation: bool,
    /// `t`: how many partners may collude with the coordinator. Distributed DP
    /// counts only `min_partners − t` noise shares as honest, and partners pin
    /// it with the rest of the task; 1 when absent.
    #[serde(default = "default_colluders")]
    pub colluders: u32,
    /// `t` of a t-of-N federation key (`key_threshold`): any `t` key holders
    /// together decrypt a sum, fewer learn nothing (replicated secret sharing,
    /// `docs/threshold.md`). Needs `secure_aggregation`; 2 to
    /// [`MAX_KEY_THRESHOLD`], more than `colluders` and at most the key
    /// committee. Absent: every key holder is needed (N-of-N), and the task
    /// hashes as before the parameter existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_threshold: Option<u32>,
    /// How many times in a row the same round (or the standardisation request) may
    /// fail the same way before the task stops with a diagnosis: 1 to
    /// [`MAX_ROUND_ATTEMPTS`]; [`DEFAULT_ROUND_ATTEMPTS`] when absent (and then left
    /// out of the canonical form, so that a task that does not set it hashes as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_round_attempts: Option<u32>,
    /// The partners allowed to take part, by certificate name; any partner with a
    /// certificate of the federation's CA when absent. Names are non-empty and distinct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partners: Option<Vec<String>>,
    /// The model to train.
    pub model: ModelSpec,
    /// The server strategy (`[strategy]`); FedAvg when absent.
    #[serde(default, skip_serializing_if = "StrategySpec::is_default")]
    pub strategy: StrategySpec,
    /// Partners' local training beyond the basic settings (`[local]`).
    #[serde(default, skip_serializing_if = "LocalSpec::is_default")]
    pub local: LocalSpec,
    /// How CSV columns become features.
    pub schema: FeatureSchema,
    /// The `[privacy]` table, uninterpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<toml::Table>,
}

fn default_holdout_fraction() -> f64 {
    0.2
}

fn default_colluders() -> u32 {
    1
}

/// Domain tag that starts the bytes [`TaskSpec::canonical_hash`] hashes.
pub const TASK_HASH_DOMAIN: &[u8] = b"consortia-task/v1\0";

/// The model section of a task file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model family.
    pub kind: ModelKind,
    /// L2 penalty on the weights (not the bias), at least 0; 0 when absent.
    #[serde(default)]
    pub l2: f64,
    /// Widths of the hidden layers of an `mlp` (`hidden = [32]` or `[64, 32]`): 1 to
    /// [`MAX_HIDDEN_LAYERS`] layers of 1 to [`MAX_HIDDEN_WIDTH`] units each. Empty,
    /// and left out of the canonical form, for every other kind, so that a task
    /// written before this field existed hashes as it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<usize>,
    /// The distribution of a `glm`'s target (`family = "tweedie"`, `"poisson"`,
    /// `"gamma"` or `"gaussian"`); required for a `glm`, absent for every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<GlmFamily>,
    /// The Tweedie power `p` in [1, 2) (`power = 1.5`); required for
    /// `family = "tweedie"`, absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<f64>,
    /// Latent factors per user and item of a `matrix_factorization` (`factors = 10`),
    /// 1 to [`MAX_FACTORS`]; required for it, absent for every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factors: Option<usize>,
}

/// The most latent factors a matrix factorisation may have.
pub const MAX_FACTORS: usize = 256;

/// The target distribution of a generalised linear model ([`crate::models::glm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlmFamily {
    /// Compound Poisson–gamma with power `p` in [1, 2) and a log link: non-negative
    /// targets with many zeros (spend, lifetime value).
    Tweedie,
    /// Poisson, log link: counts or other non-negative targets.
    Poisson,
    /// Gamma, log link: positive targets.
    Gamma,
    /// Normal, identity link: any real target.
    Gaussian,
}

impl GlmFamily {
    /// The Tweedie power of the family's variance function (`power` for Tweedie).
    pub fn power(self, tweedie_power: Option<f64>) -> f64 {
        match self {
            Self::Tweedie => tweedie_power.unwrap_or(1.5),
            Self::Poisson => 1.0,
            Self::Gamma => 2.0,
            Self::Gaussian => 0.0,
        }
    }

    /// Whether a target value is in the family's support, and the support in words.
    pub fn admits(self, y: f64) -> Result<(), &'static str> {
        let ok = match self {
            Self::Tweedie | Self::Poisson => y >= 0.0,
            Self::Gamma => y > 0.0,
            Self::Gaussian => true,
        };
        if ok && y.is_finite() {
            Ok(())
        } else {
            Err(match self {
                Self::Tweedie | Self::Poisson => "a finite number at least 0",
                Self::Gamma => "a finite number greater than 0",
                Self::Gaussian => "a finite number",
            })
        }
    }
}

/// The most hidden layers an `mlp` may have.
pub const MAX_HIDDEN_LAYERS: usize = 2;
/// The widest hidden layer an `mlp` may have.
pub const MAX_HIDDEN_WIDTH: usize = 1024;
/// The most shared parameters a task's model may have. Chunked transfer and the
/// encrypted encoding handle long vectors, but every round moves the whole vector
/// (and, under secure aggregation, its ciphertexts) once per partner.
pub const MAX_MODEL_PARAMS: usize = 4_000_000;

/// The `[local]` table of a task file: how partners train locally.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    /// FedProx's proximal weight μ (Li et al. 2020): each partner minimises its loss
    /// plus `μ/2 · |θ − θ_global|²`. 0 (plain local SGD) when absent; at most
    /// [`MAX_PROXIMAL_MU`].
    #[serde(default)]
    pub proximal_mu: f64,
}

/// The largest proximal weight a task may set.
pub const MAX_PROXIMAL_MU: f64 = 1000.0;

impl LocalSpec {
    /// True for plain local SGD (what a task without `[local]` means).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Model families this crate can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Binary logistic regression ([`crate::models::logistic`]).
    LogisticRegression,
    /// A multilayer perceptron for binary classification: ReLU hidden layers and one
    /// sigmoid output ([`crate::models::mlp`]); `hidden` sets the layer widths.
    Mlp,
    /// Generalised linear regression of a numeric target ([`crate::models::glm`]);
    /// `family` (and `power` for Tweedie) set the distribution.
    Glm,
    /// Matrix factorisation for recommendation ([`crate::models::mf`]): global mean,
    /// item biases and item factors shared, user factors and biases kept by each
    /// partner; `factors` sets the rank, `[schema.ratings]` the data.
    MatrixFactorization,
}

/// Why a task file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The file could not be read.
    #[error("cannot read task file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_TASK_FILE_BYTES`].
    #[error(
        "task file {origin} is larger than {MAX_TASK_FILE_BYTES} bytes; a task file holds settings only"
    )]
    TooLarge {
        /// The file, or `<string>`.
        origin: String,
    },
    /// The file is not TOML, or its structure does not match a task file.
    #[error("task file {origin} is not a valid task file: {source}")]
    Parse {
        /// The file, or `<string>`.
        origin: String,
        /// The TOML error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A field holds a value that is not allowed.
    #[error("task file {origin}: {field}")]
    Invalid {
        /// The file, or `<string>`.
        origin: String,
        /// Which field, what it holds, what it must hold.
        field: InvalidField,
    },
    /// The task could not be written as TOML.
    #[error("cannot write the task as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
    /// The `[privacy]` table is not a valid privacy setting, or cannot run
    /// with the rest of the task.
    #[error("[privacy]: {0}")]
    Privacy(String),
}

impl TaskSpec {
    /// The task's `[privacy]` table, checked (`None` without one): the one
    /// place coordinator, partners and tools read it. Distributed placement
    /// needs `secure_aggregation = true` (each partner adds only a share of
    /// the noise, so no update may be seen in the clear) and is calibrated to
    /// this task's model size and `min_partners`.
    pub fn privacy_spec(&self) -> Result<Option<PrivacySpec>, TaskError> {
        let Some(table) = &self.privacy else {
            return Ok(None);
        };
        // Said by name rather than as serde's "unknown field", which reads like a typo.
        if table.contains_key("adaptive_clipping") {
            return Err(TaskError::Privacy(
                "adaptive clipping ([privacy.adaptive_clipping]) is not supported, the clip norm \
                 is fixed for the whole task: remove the table and set a fixed `clip_norm`"
                    .into(),
            ));
        }
        let spec: PrivacySpec = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| TaskError::Privacy(e.message().to_string()))?;
        spec.validate()
            .map_err(|e| TaskError::Privacy(e.to_string()))?;
        // A regression evaluation is released from targets and predictions clipped to
        // public bounds (consortia_dp::release, RegressionPartial::from_private_sums).
        match (self.model.kind, spec.evaluation_bounds) {
            (ModelKind::Glm, None) if spec.unit == PrivacyUnit::Record => {
                return Err(TaskError::Privacy(
                    "a glm task with [privacy] needs `evaluation_bounds = [lo, hi]` in its \
                     [privacy] table: public bounds, in the label's units, of the target and \
                     the prediction that each held-out row's evaluation is clipped to before \
                     it is noised (domain knowledge, not taken from any partner's rows; e.g. \
                     [0, 1000] for a spend in dollars)"
                        .into(),
                ));
            }
            (ModelKind::Glm, _) | (_, None) => {}
            (_, Some(_)) => {
                return Err(TaskError::Privacy(
                    "`evaluation_bounds` applies to a glm task only (a classifier's evaluation \
                     is released as score histograms, a matrix factorisation's is bounded by \
                     its rating scale): remove it"
                        .into(),
                ));
            }
        }
        // Feature statistics are released from values clipped to public bounds.
        self.schema.feature_bounds().map_err(|column| {
            TaskError::Privacy(format!(
                "numeric column `{column}` has no public bounds: a task with [privacy] needs `{column} = [lo, hi]` in [schema.bounds] (domain knowledge, not taken from any partner's rows), so that its feature statistics can be clipped and noised"
            ))
        })?;
        // A matrix factorisation's record is a user, and its rows are ratings: the
        // distributed record-unit round (one gradient step over rows of a table, scaled
        // by the declared rows and the task's per-row l2) does not fit it.
        if self.model.kind == ModelKind::MatrixFactorization
            && spec.unit == PrivacyUnit::Record
            && spec.placement == NoisePlacement::Distributed
        {
            return Err(TaskError::Privacy(
                "a matrix_factorization trains under distributed DP with unit = \"partner\" \
                 only; unit = \"record\" (one user) needs placement = \"local\" (DP-SGD over \
                 users): change one of the two"
                    .into(),
            ));
        }
        if spec.placement != NoisePlacement::Distributed {
            return Ok(Some(spec));
        }
        if !self.secure_aggregation {
            return Err(TaskError::Privacy(
                "placement = \"distributed\" is only sound with encrypted aggregation (each partner \
                 adds only a share of the noise, so individual updates must never be seen in the \
                 clear): set secure_aggregation = true, or use placement = \"local\""
                    .into(),
            ));
        }
        Ok(Some(
            spec.with_distributed_shape(
                self.param_count(),
                self.min_partners as usize,
                self.colluders as usize,
            )
            .map_err(|e| TaskError::Privacy(e.to_string()))?,
        ))
    }

    /// Parses and validates a task file held in a string.
    pub fn from_toml_str(text: &str) -> Result<Self, TaskError> {
        Self::parse(text, "<string>")
    }

    /// Parses and validates a task file held in a string that came from `origin` (a
    /// path, or words such as "the task the coordinator sent"), which errors name.
    pub fn from_toml_named(text: &str, origin: &str) -> Result<Self, TaskError> {
        if text.len() > MAX_TASK_FILE_BYTES {
            return Err(TaskError::TooLarge {
                origin: origin.to_owned(),
            });
        }
        Self::parse(text, origin)
    }

    /// Reads, parses and validates a task file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TaskError> {
        let path = path.as_ref();
        let read_err = |source| TaskError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_TASK_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let origin = path.display().to_string();
        if bytes.len() > MAX_TASK_FILE_BYTES {
            return Err(TaskError::TooLarge { origin });
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        Self::parse(&text, &origin)
    }

    fn parse(text: &str, origin: &str) -> Result<Self, TaskError> {
        if text.len() > MAX_TASK_FILE_BYTES {
            return Err(TaskError::TooLarge {
                origin: origin.to_owned(),
            });
        }
        let spec: TaskSpec = toml::from_str(text).map_err(|source| TaskError::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        spec.validate().map_err(|field| TaskError::Invalid {
            origin: origin.to_owned(),
            field,
        })?;
        Ok(spec)
    }

    /// Checks every field against its allowed range (see each field's doc).
    pub fn validate(&self) -> Result<(), InvalidField> {
        let name_ok = (1..=MAX_NAME_LEN).contains(&self.name.len())
            && !self.name.starts_with('.')
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(InvalidField::new(
                "name",
                &self.name,
                format!(
                    "1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ - not starting with ."
                ),
            ));
        }
        check_range("rounds", self.rounds, 1, MAX_ROUNDS)?;
        if self.min_partners == 0 {
            return Err(InvalidField::new("min_partners", 0, "at least 1"));
        }
        if self.colluders >= self.min_partners && self.privacy.is_some() && self.secure_aggregation
        {
            return Err(InvalidField::new(
                "colluders",
                self.colluders,
                format!(
                    "fewer than min_partners ({}): distributed noise needs at least one honest share in every sum",
                    self.min_partners
                ),
            ));
        }
        self.validate_key_threshold()?;
        if let Some(f) = self.sample_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(InvalidField::new(
                "sample_fraction",
                f,
                "a fraction in (0, 1]",
            ));
        }
        check_range(
            "round_deadline_secs",
            self.round_deadline_secs,
            1,
            MAX_ROUND_DEADLINE_SECS,
        )?;
        check_range("local_epochs", self.local_epochs, 1, MAX_LOCAL_EPOCHS)?;
        if let Some(n) = self.max_round_attempts {
            check_range("max_round_attempts", n, 1, MAX_ROUND_ATTEMPTS)?;
        }
        self.validate_partners()?;
        check_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)?;
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(InvalidField::new(
                "learning_rate",
                self.learning_rate,
                "a finite number greater than 0",
            ));
        }
        if !(self.holdout_fraction > 0.0 && self.holdout_fraction < 1.0) {
            return Err(InvalidField::new(
                "holdout_fraction",
                self.holdout_fraction,
                "a fraction in (0, 1)",
            ));
        }
        if !(self.model.l2.is_finite() && self.model.l2 >= 0.0) {
            return Err(InvalidField::new(
                "model.l2",
                self.model.l2,
                "a finite number at least 0",
            ));
        }
        self.validate_hidden()?;
        self.validate_family()?;
        self.validate_factors()?;
        self.strategy.validate()?;
        let mu = self.local.proximal_mu;
        if !(mu.is_finite() && (0.0..=MAX_PROXIMAL_MU).contains(&mu)) {
            return Err(InvalidField::new(
                "local.proximal_mu",
                mu,
                format!("a number between 0 and {MAX_PROXIMAL_MU}"),
            ));
        }
        self.schema.validate()
    }

    /// `model.factors` and `[schema.ratings]`: both for a `matrix_factorization`
    /// (1 to [`MAX_FACTORS`] factors, a model of at most [`MAX_MODEL_PARAMS`]), neither
    /// for any other kind.
    fn validate_factors(&self) -> Result<(), InvalidField> {
        let mf = self.model.kind == ModelKind::MatrixFactorization;
        match (mf, self.model.factors, &self.schema.ratings) {
            (true, Some(k), Some(_)) => {
                if !(1..=MAX_FACTORS).contains(&k) {
                    return Err(InvalidField::new(
                        "model.factors",
                        k,
                        format!("between 1 and {MAX_FACTORS}"),
                    ));
                }
                let count = self.param_count();
                if count > MAX_MODEL_PARAMS {
                    return Err(InvalidField::new(
                        "model.factors",
                        k,
                        format!(
                            "a model of at most {MAX_MODEL_PARAMS} parameters; with {} items \
                             these factors give {count}",
                            self.schema.ratings.as_ref().map_or(0, |r| r.items)
                        ),
                    ));
                }
                Ok(())
            }
            (true, None, _) => Err(InvalidField::new(
                "model.factors",
                "absent",
                "the number of latent factors of a matrix_factorization, e.g. factors = 10",
            )),
            (true, _, None) => Err(InvalidField::new(
                "schema.ratings",
                "absent",
                "the ratings table of a matrix_factorization: user, item, scale and the item \
                 catalogue",
            )),
            (false, Some(k), _) => Err(InvalidField::new(
                "model.factors",
                k,
                "absent: only kind = \"matrix_factorization\" has factors",
            )),
            (false, None, Some(_)) => Err(InvalidField::new(
                "schema.ratings",
                "present",
                "absent: only kind = \"matrix_factorization\" learns from ratings",
            )),
            (false, None, None) => Ok(()),
        }
    }

    /// `key_threshold`: only with `secure_aggregation`; 2 to [`MAX_KEY_THRESHOLD`];
    /// more than `colluders` (that many holders together with the coordinator
    /// could otherwise decrypt one partner's update); at most the number of
    /// `partners` when the task lists them (the committee is drawn from them).
    fn validate_key_threshold(&self) -> Result<(), InvalidField> {
        let Some(t) = self.key_threshold else {
            return Ok(());
        };
        if !self.secure_aggregation {
            return Err(InvalidField::new(
                "key_threshold",
                t,
                "absent unless secure_aggregation = true (a threshold says how many key \
                 holders decrypt a sum; a task in the clear has no key)",
            ));
        }
        if !(2..=MAX_KEY_THRESHOLD).contains(&t) {
            return Err(InvalidField::new(
                "key_threshold",
                t,
                format!(
                    "between 2 and {MAX_KEY_THRESHOLD} (a t-of-N key committee has at most \
                     {MAX_KEY_THRESHOLD} holders); leave it out for N-of-N"
                ),
            ));
        }
        if t <= self.colluders {
            return Err(InvalidField::new(
                "key_threshold",
                t,
                format!(
                    "more than colluders ({}): that many key holders together with the \
                     coordinator could decrypt a single partner's update",
                    self.colluders
                ),
            ));
        }
        if let Some(names) = &self.partners
            && (names.len() as u64) < u64::from(t)
        {
            return Err(InvalidField::new(
                "key_threshold",
                t,
                format!(
                    "at most the number of partners listed ({}): the key committee is drawn \
                     from them",
                    names.len()
                ),
            ));
        }
        Ok(())
    }

    /// `partners`: when present, at least one name, each non-empty and named once.
    fn validate_partners(&self) -> Result<(), InvalidField> {
        let Some(names) = &self.partners else {
            return Ok(());
        };
        let shown = || format!("{names:?}");
        if names.is_empty() {
            return Err(InvalidField::new(
                "partners",
                shown(),
                "at least one partner name (leave `partners` out to admit every partner certificate)",
            ));
        }
        if names.iter().any(|n| n.trim().is_empty()) {
            return Err(InvalidField::new(
                "partners",
                shown(),
                "non-empty partner names (the names in the partners' certificates)",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(InvalidField::new(
                "partners",
                shown(),
                format!("distinct names (`{dup}` is listed twice)"),
            ));
        }
        Ok(())
    }

    /// How many times in a row a round may fail the same way (`max_round_attempts`,
    /// [`DEFAULT_ROUND_ATTEMPTS`] when absent).
    pub fn round_attempts(&self) -> u32 {
        self.max_round_attempts.unwrap_or(DEFAULT_ROUND_ATTEMPTS)
    }

    /// Whether `partner` may take part: named in `partners`, or any partner without
    /// the list.
    pub fn admits_partner(&self, partner: &str) -> bool {
        self.partners
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == partner))
    }

    /// `model.family` and `model.power`: a family for a `glm` (and a power in [1, 2)
    /// for Tweedie), neither for any other kind; and the label the kind needs (a
    /// positive value for a classifier, none — a numeric target — for a `glm`).
    fn validate_family(&self) -> Result<(), InvalidField> {
        let m = &self.model;
        match (m.kind, m.family) {
            (ModelKind::Glm, None) => Err(InvalidField::new(
                "model.family",
                "absent",
                "one of \"tweedie\", \"poisson\", \"gamma\", \"gaussian\" for a glm",
            )),
            (ModelKind::Glm, Some(GlmFamily::Tweedie)) => match m.power {
                Some(p) if (1.0..2.0).contains(&p) => Ok(()),
                other => Err(InvalidField::new(
                    "model.power",
                    format!("{other:?}"),
                    "a Tweedie power in [1, 2), e.g. power = 1.5",
                )),
            },
            (ModelKind::Glm, Some(f)) => match m.power {
                None => Ok(()),
                Some(p) => Err(InvalidField::new(
                    "model.power",
                    p,
                    format!("absent: family {f:?} has a fixed power (only tweedie takes one)"),
                )),
            },
            (_, Some(f)) => Err(InvalidField::new(
                "model.family",
                format!("{f:?}"),
                "absent: only kind = \"glm\" takes a family",
            )),
            (_, None) if m.power.is_some() => Err(InvalidField::new(
                "model.power",
                format!("{:?}", m.power),
                "absent: only a glm with family = \"tweedie\" takes a power",
            )),
            _ => Ok(()),
        }?;
        match (m.kind, self.schema.label.positive.as_deref()) {
            (ModelKind::Glm, Some(v)) => Err(InvalidField::new(
                "schema.label.positive",
                v,
                "absent: a glm predicts the label column's number",
            )),
            (ModelKind::MatrixFactorization, Some(v)) => Err(InvalidField::new(
                "schema.label.positive",
                v,
                "absent: the label column of a matrix_factorization holds the rating",
            )),
            (ModelKind::LogisticRegression | ModelKind::Mlp, None) => Err(InvalidField::new(
                "schema.label.positive",
                "absent",
                "the label value that means positive (a classifier's label is categorical)",
            )),
            _ => Ok(()),
        }
    }

    /// `model.hidden`: one or two layers of 1 to [`MAX_HIDDEN_WIDTH`] units for an
    /// `mlp`, absent for any other kind; and the model no larger than
    /// [`MAX_MODEL_PARAMS`].
    fn validate_hidden(&self) -> Result<(), InvalidField> {
        let hidden = &self.model.hidden;
        let shown = || format!("{hidden:?}");
        match self.model.kind {
            ModelKind::LogisticRegression | ModelKind::Glm | ModelKind::MatrixFactorization => {
                if !hidden.is_empty() {
                    return Err(InvalidField::new(
                        "model.hidden",
                        shown(),
                        format!(
                            "absent: {} has no hidden layers (only kind = \"mlp\" has)",
                            match self.model.kind {
                                ModelKind::Glm => "glm",
                                ModelKind::MatrixFactorization => "matrix_factorization",
                                _ => "logistic_regression",
                            }
                        ),
                    ));
                }
            }
            ModelKind::Mlp => {
                if hidden.is_empty() || hidden.len() > MAX_HIDDEN_LAYERS {
                    return Err(InvalidField::new(
                        "model.hidden",
                        shown(),
                        format!(
                            "1 to {MAX_HIDDEN_LAYERS} hidden layer widths for an mlp, e.g. hidden = [32]"
                        ),
                    ));
                }
                if let Some(w) = hidden.iter().find(|w| !(1..=MAX_HIDDEN_WIDTH).contains(*w)) {
                    return Err(InvalidField::new(
                        "model.hidden",
                        shown(),
                        format!("every width between 1 and {MAX_HIDDEN_WIDTH} (found {w})"),
                    ));
                }
                let count = self.param_count();
                if count > MAX_MODEL_PARAMS {
                    return Err(InvalidField::new(
                        "model.hidden",
                        shown(),
                        format!(
                            "a model of at most {MAX_MODEL_PARAMS} parameters; over {} features \
                             these widths give {count}",
                            self.schema.feature_count()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the task's model is a classifier (its label is categorical and it
    /// evaluates into score histograms). Under `[privacy]` (record unit) every kind's
    /// evaluations are released privately (`consortia_dp::release`): a classifier's as
    /// noised score histograms, a regression model's and a recommender's as noised sums
    /// of clipped per-row (per-user) terms (`RegressionPartial::from_private_sums`,
    /// `RecommendationPartial::from_private_sums`).
    pub fn is_classifier(&self) -> bool {
        matches!(
            self.model.kind,
            ModelKind::LogisticRegression | ModelKind::Mlp
        )
    }

    /// The kind of evaluation the task's model makes (`binary`, `regression` or
    /// `recommendation`, as [`crate::Evaluation::kind`] names them).
    pub fn evaluation_kind(&self) -> &'static str {
        match self.model.kind {
            ModelKind::LogisticRegression | ModelKind::Mlp => "binary",
            ModelKind::Glm => "regression",
            ModelKind::MatrixFactorization => "recommendation",
        }
    }

    /// Number of shared parameters of the task's model (the length of the vector
    /// the coordinator sends and partners' deltas), as `[model]` makes it:
    /// `features + 1` for logistic regression and the GLM, and for an MLP the weights
    /// and biases of every layer (see [`crate::models::mlp`]).
    pub fn param_count(&self) -> usize {
        crate::model::param_count(&self.model, &self.schema)
    }

    /// SHA-256 (FIPS 180-4) of the task's canonical form: [`TASK_HASH_DOMAIN`]
    /// followed by the UTF-8 bytes of [`TaskSpec::to_toml_string`] — every
    /// field in declaration order with defaults written out, the keys of the
    /// `[privacy]` table sorted, floats in the shortest form that reads back
    /// to the same binary64 value. Two task files that differ only in
    /// comments, key order or omitted defaults hash the same; any change to a
    /// setting, `[privacy]` included, changes the hash. Partners pin a task
    /// by this hash at first admission.
    pub fn canonical_hash(&self) -> Result<[u8; 32], TaskError> {
        use sha2::{Digest, Sha256};
        let text = self.to_toml_string()?;
        let mut h = Sha256::new();
        h.update(TASK_HASH_DOMAIN);
        h.update(text.as_bytes());
        Ok(h.finalize().into())
    }

    /// Writes the task as TOML that [`TaskSpec::from_toml_str`] reads back unchanged.
    pub fn to_toml_string(&self) -> Result<String, TaskError> {
        Ok(toml::to_string(self)?)
    }

    /// The local training settings of one round.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.local_epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            l2: self.model.l2,
        }
    }
}

fn check_range<T: PartialOrd + fmt::Debug + fmt::Display + Copy>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), InvalidField> {
    if value < min || value > max {
        return Err(InvalidField::new(
            field,
            value,
            format!("between {min} and {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/telco_churn_task.toml");

    fn with(extra: &str) -> Result<TaskSpec, TaskError> {
        // Plain keys go before the first table.
        let (head, tables) = EXAMPLE.split_at(EXAMPLE.find("\n[").unwrap());
        TaskSpec::from_toml_str(&format!("{head}\n{extra}\n{tables}"))
    }

    #[test]
    fn membership_and_attempts_are_optional_and_leave_the_hash_alone() {
        let plain = TaskSpec::from_toml_str(EXAMPLE).unwrap();
        assert_eq!(plain.round_attempts(), DEFAULT_ROUND_ATTEMPTS);
        assert!(plain.admits_partner("anyone"));
        let text = plain.to_toml_string().unwrap();
        assert!(!text.contains("\npartners =") && !text.contains("max_round_attempts"));
        let set = with("max_round_attempts = 3\npartners = [\"a\", \"b\"]").unwrap();
        assert_eq!(set.round_attempts(), 3);
        assert!(set.admits_partner("a") && !set.admits_partner("c"));
        assert_ne!(
            plain.canonical_hash().unwrap(),
            set.canonical_hash().unwrap()
        );
        let back = TaskSpec::from_toml_str(&set.to_toml_string().unwrap()).unwrap();
        assert_eq!(back, set);
    }

    /// `key_threshold` needs secure aggregation, lies in 2..=12, exceeds `colluders`
    /// and fits the listed partners; a task without it hashes as before.
    #[test]
    fn key_threshold_is_checked_and_optional_in_the_hash() {
        let secure = |extra: &str| {
            let text = EXAMPLE.replace("secure_aggregation = false", "secure_aggregation = true");
            let (head, tables) = text.split_at(text.find("\n[").unwrap());
            TaskSpec::from_toml_str(&format!("{head}\n{extra}\n{tables}"))
        };
        let plain = secure("").unwrap();
        assert_eq!(plain.key_threshold, None);
        assert!(!plain.to_toml_string().unwrap().contains("key_threshold"));
        let set = secure("key_threshold = 3").unwrap();
        assert_eq!(set.key_threshold, Some(3));
        assert_ne!(
            plain.canonical_hash().unwrap(),
            set.canonical_hash().unwrap()
        );
        assert_eq!(
            TaskSpec::from_toml_str(&set.to_toml_string().unwrap()).unwrap(),
            set
        );
        let refused = |r: Result<TaskSpec, TaskError>, needle: &str| {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("key_threshold") && e.contains(needle), "{e}");
        };
        refused(with("key_threshold = 3"), "secure_aggregation = true");
        refused(secure("key_threshold = 1"), "between 2 and 12");
        refused(secure("key_threshold = 13"), "between 2 and 12");
        refused(
            secure("key_threshold = 2\ncolluders = 2"),
            "more than colluders (2)",
        );
        refused(
            secure("key_threshold = 3\npartners = [\"a\", \"b\"]"),
            "number of partners listed (2)",
        );
        secure("key_threshold = 12\ncolluders = 11").unwrap();
    }

    /// A glm task's private evaluation needs the public bounds it is clipped to; no other
    /// kind takes them.
    #[test]
    fn a_private_glm_task_needs_evaluation_bounds_and_only_it_takes_them() {
        const CLV: &str = include_str!("../../examples/clv_glm.toml");
        let privacy = "\n[privacy]\nepsilon = 3.0\ndelta = 1e-6\nclip_norm = 1.0\n\
                       noise_multiplier = 1.0\nsampling_rate = 0.01\n";
        let glm = |extra: &str| {
            TaskSpec::from_toml_str(&format!("{CLV}{privacy}{extra}"))
                .unwrap()
                .privacy_spec()
        };
        let e = glm("").unwrap_err().to_string();
        assert!(e.contains("evaluation_bounds = [lo, hi]"), "{e}");
        let spec = glm("evaluation_bounds = [0.0, 1000.0]\n").unwrap().unwrap();
        assert_eq!(spec.evaluation_bounds, Some([0.0, 1000.0]));
        assert!(glm("evaluation_bounds = [10.0, 0.0]\n").is_err());
        let churn = TaskSpec::from_toml_str(&format!(
            "{}{privacy}evaluation_bounds = [0.0, 1.0]\n",
            include_str!("../../examples/telco_churn_dp_eps3.toml")
                .split("\n[privacy]")
                .next()
                .unwrap()
        ))
        .unwrap()
        .privacy_spec()
        .unwrap_err()
        .to_string();
        assert!(churn.contains("glm task only"), "{churn}");
    }

    /// A matrix factorisation's distributed DP is partner-level only; the other three
    /// combinations of unit and placement are accepted.
    #[test]
    fn a_private_matrix_factorisation_refuses_record_unit_distributed_dp() {
        const MF: &str = include_str!("../../examples/recommend_mf.toml");
        let mf = |unit: &str, placement: &str| {
            let text = MF.replace("secure_aggregation = false", "secure_aggregation = true");
            let sampling = if unit == "record" {
                "sampling_rate = 1.0\n"
            } else {
                ""
            };
            TaskSpec::from_toml_str(&format!(
                "{text}\n[privacy]\nunit = \"{unit}\"\nplacement = \"{placement}\"\n\
                 epsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = 1.0\n{sampling}"
            ))
            .unwrap()
            .privacy_spec()
        };
        let e = mf("record", "distributed").unwrap_err().to_string();
        assert!(
            e.contains("unit = \"partner\"") && e.contains("placement = \"local\""),
            "{e}"
        );
        for (unit, placement) in [
            ("record", "local"),
            ("partner", "local"),
            ("partner", "distributed"),
        ] {
            let spec = mf(unit, placement).unwrap().unwrap();
            assert_eq!(
                spec.distributed_shape.is_some(),
                placement == "distributed",
                "{unit} {placement}"
            );
        }
    }

    #[test]
    fn bad_membership_and_attempts_name_the_field() {
        for (extra, field) in [
            ("max_round_attempts = 0", "max_round_attempts"),
            ("max_round_attempts = 100000", "max_round_attempts"),
            ("partners = []", "partners"),
            ("partners = [\"a\", \"\"]", "partners"),
            ("partners = [\"a\", \"b\", \"a\"]", "partners"),
        ] {
            let e = with(extra).unwrap_err().to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }
}
