//! The partner's own policy: what it will train, spend and decrypt, whatever
//! the coordinator asks.
//!
//! Every message that reaches an agent is untrusted, the coordinator's
//! included. A task arrives in the coordinator's `Welcome`; the agent checks
//! it against the `[policy]` table of its own configuration **before any
//! private row is read**, and refuses a task outside it with a message that
//! names the field, the task's value and the policy's value. The defaults are
//! the safe ones, so a partner that writes no `[policy]` gets:
//!
//! ```toml
//! [policy]
//! require_secure_aggregation = true   # no update ever leaves in the clear
//! require_dp = true                   # every task must carry a [privacy] table
//! allowed_units = ["record", "partner"]
//! allowed_placements = ["local", "distributed"]
//! min_noise_multiplier = 0.5
//! min_evaluation_noise = 5.0          # σ of the noise on each released evaluation count
//! max_sampling_rate = 0.1             # record unit: Poisson rate per step
//! max_epsilon = 10.0                  # largest budget a task may set for this partner
//! max_delta = 1e-5
//! min_contributors = 3                # own floor for any sum this partner helps decrypt
//! max_colluders_assumed = 1           # the task's `colluders` must be at least this
//! # min_key_threshold = 3              # unset: any key_threshold; a task without one is N-of-N
//! allowed_he_params = ["secure128"]   # "fast64" only if the partner opts in
//! allowed_models = ["logistic_regression"]
//! max_rounds = 1000
//! max_evaluations = 1001              # evaluations of global models per task
//! allow_insecure_rng = false          # refuse DP in a build without `secure-rng`
//! ```
//!
//! The demo and the tests set what they need explicitly.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use consortia_dp::{NoisePlacement, PrivacySpec, PrivacyUnit};
use consortia_he::HeParams;
use consortia_model::TaskSpec;
use consortia_model::task::ModelKind;
use serde::{Deserialize, Serialize};

use crate::AgentError;

/// The largest policy file accepted, in bytes.
pub const MAX_POLICY_FILE_BYTES: u64 = 64 * 1024;

/// A partner's policy (`[policy]` of `agent.toml`). See the module docs for
/// the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Refuse tasks whose updates are not summed under encryption.
    pub require_secure_aggregation: bool,
    /// Refuse tasks without a `[privacy]` table.
    pub require_dp: bool,
    /// Privacy units this partner accepts.
    pub allowed_units: BTreeSet<PrivacyUnit>,
    /// Noise placements this partner accepts.
    pub allowed_placements: BTreeSet<NoisePlacement>,
    /// Smallest noise multiplier z accepted.
    pub min_noise_multiplier: f64,
    /// Smallest `evaluation_noise` (σ of the discrete Gaussian on each
    /// released evaluation count) accepted: a task may not buy exact-ish
    /// evaluations with a large share of the budget.
    pub min_evaluation_noise: f64,
    /// Largest record sampling rate q accepted (record unit; a task without
    /// one samples every row, q = 1).
    pub max_sampling_rate: f64,
    /// Largest ε a task may grant this partner (its `epsilon`, or its
    /// `[privacy.partner_epsilon]` entry for this partner). Without an own
    /// budget in `agent.toml` the task's figure is the dataset's lifetime
    /// budget, so a coordinator must not be able to raise it at will.
    pub max_epsilon: f64,
    /// Largest δ a task may set.
    pub max_delta: f64,
    /// This partner's own floor on the number of distinct contributors in
    /// any sum it helps decrypt, and on the task's `min_partners`.
    pub min_contributors: u32,
    /// The number of partners this partner assumes may collude with the
    /// coordinator: the task's `colluders` must be at least this, and a
    /// federation key must have more key holders than that.
    pub max_colluders_assumed: u32,
    /// The lowest `key_threshold` (t of a t-of-N federation key) accepted; any
    /// when absent. A task without `key_threshold` is N-of-N, which needs every
    /// key holder and so is stricter than any threshold: it satisfies every
    /// `min_key_threshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_key_threshold: Option<u32>,
    /// Encryption parameter sets accepted (`"secure128"`, `"fast64"`).
    pub allowed_he_params: BTreeSet<HeParamsName>,
    /// Model kinds accepted.
    pub allowed_models: Vec<ModelKind>,
    /// Most rounds a task may ask for.
    pub max_rounds: u32,
    /// Most evaluations of global models this partner makes per task.
    pub max_evaluations: u32,
    /// Accept differentially private tasks in a build whose noise is not
    /// drawn from OpenSSL (built without the `secure-rng` feature).
    pub allow_insecure_rng: bool,
}

/// An encryption parameter set, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeParamsName {
    /// [`HeParams::Secure128`].
    Secure128,
    /// [`HeParams::Fast64`].
    Fast64,
}

impl HeParamsName {
    /// The name of `params`.
    pub fn of(params: HeParams) -> Self {
        match params {
            HeParams::Secure128 => HeParamsName::Secure128,
            HeParams::Fast64 => HeParamsName::Fast64,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            require_secure_aggregation: true,
            require_dp: true,
            allowed_units: [PrivacyUnit::Record, PrivacyUnit::Partner].into(),
            allowed_placements: [NoisePlacement::Local, NoisePlacement::Distributed].into(),
            min_noise_multiplier: 0.5,
            min_evaluation_noise: 5.0,
            max_sampling_rate: 0.1,
            max_epsilon: 10.0,
            max_delta: 1e-5,
            min_contributors: 3,
            max_colluders_assumed: 1,
            min_key_threshold: None,
            allowed_he_params: [HeParamsName::Secure128].into(),
            allowed_models: vec![ModelKind::LogisticRegression],
            max_rounds: 1000,
            max_evaluations: 1001,
            allow_insecure_rng: false,
        }
    }
}

/// A task outside the partner's policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "policy refuses task `{task}`: {field}: the task has {task_value}, the policy {policy_value} \
     (change the task, or this partner's [policy] if it agrees)"
)]
pub struct PolicyViolation {
    /// The task's name.
    pub task: String,
    /// The field of the task (or of the request) that is outside the policy.
    pub field: &'static str,
    /// What the task (or request) has.
    pub task_value: String,
    /// What the policy allows, as a phrase ("requires true", "allows at most 0.1").
    pub policy_value: String,
}

/// A model kind as task and policy files write it (`logistic_regression`, `mlp`).
fn kind_name(kind: ModelKind) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{kind:?}"),
    }
}

fn list<T: fmt::Debug>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items
        .into_iter()
        .map(|x| format!("{x:?}").to_lowercase())
        .collect();
    format!("[{}]", v.join(", "))
}

impl Policy {
    /// Reads a policy file: TOML with a `[policy]` table (the same table as
    /// in `agent.toml`). Fields not given take their safe defaults.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        use std::io::Read;
        let err = |message: String| AgentError::Config {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let mut text = String::new();
        file.take(MAX_POLICY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        if text.len() as u64 > MAX_POLICY_FILE_BYTES {
            return Err(err(format!(
                "larger than {MAX_POLICY_FILE_BYTES} bytes; a policy file holds settings only"
            )));
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            policy: Policy,
        }
        let file: File = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        file.policy.validate().map_err(err)?;
        Ok(file.policy)
    }

    /// Checks the policy's own values.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.min_noise_multiplier.is_finite() && self.min_noise_multiplier >= 0.0) {
            return Err(format!(
                "[policy] min_noise_multiplier = {}: must be a finite number at least 0",
                self.min_noise_multiplier
            ));
        }
        if !(self.min_evaluation_noise.is_finite() && self.min_evaluation_noise >= 0.0) {
            return Err(format!(
                "[policy] min_evaluation_noise = {}: must be a finite number at least 0",
                self.min_evaluation_noise
            ));
        }
        if !(self.max_sampling_rate > 0.0 && self.max_sampling_rate <= 1.0) {
            return Err(format!(
                "[policy] max_sampling_rate = {}: must be in (0, 1]",
                self.max_sampling_rate
            ));
        }
        if !(self.max_epsilon.is_finite() && self.max_epsilon > 0.0) {
            return Err(format!(
                "[policy] max_epsilon = {}: must be a finite number greater than 0",
                self.max_epsilon
            ));
        }
        if !(self.max_delta > 0.0 && self.max_delta < 1.0) {
            return Err(format!(
                "[policy] max_delta = {}: must be in (0, 1)",
                self.max_delta
            ));
        }
        if self.min_contributors == 0 {
            return Err("[policy] min_contributors = 0: must be at least 1".into());
        }
        if let Some(t) = self.min_key_threshold
            && !(2..=consortia_model::task::MAX_KEY_THRESHOLD).contains(&t)
        {
            return Err(format!(
                "[policy] min_key_threshold = {t}: must be between 2 and {} (or left out to \
                 accept any threshold)",
                consortia_model::task::MAX_KEY_THRESHOLD
            ));
        }
        Ok(())
    }

    fn violation(
        task: &TaskSpec,
        field: &'static str,
        task_value: impl fmt::Display,
        policy_value: impl Into<String>,
    ) -> PolicyViolation {
        PolicyViolation {
            task: task.name.clone(),
            field,
            task_value: task_value.to_string(),
            policy_value: policy_value.into(),
        }
    }

    /// Admits `task` (with its parsed `[privacy]` table `privacy`) or says
    /// which field is outside the policy. `secure_rng` tells whether this
    /// build draws noise from OpenSSL.
    pub fn admit(
        &self,
        task: &TaskSpec,
        partner: &str,
        privacy: Option<&PrivacySpec>,
        secure_rng: bool,
    ) -> Result<(), PolicyViolation> {
        let v = |field, t: String, p: String| Err(Self::violation(task, field, t, p));
        if !self.allowed_models.contains(&task.model.kind) {
            let names: Vec<String> = self.allowed_models.iter().map(|k| kind_name(*k)).collect();
            return v(
                "model.kind",
                kind_name(task.model.kind),
                format!("allows [{}]", names.join(", ")),
            );
        }
        if task.rounds > self.max_rounds {
            return v(
                "rounds",
                task.rounds.to_string(),
                format!("allows at most {}", self.max_rounds),
            );
        }
        if self.require_secure_aggregation && !task.secure_aggregation {
            return v(
                "secure_aggregation",
                "false".into(),
                "requires true (require_secure_aggregation)".into(),
            );
        }
        if task.min_partners < self.min_contributors {
            return v(
                "min_partners",
                task.min_partners.to_string(),
                format!(
                    "requires at least {} (min_contributors)",
                    self.min_contributors
                ),
            );
        }
        if task.colluders < self.max_colluders_assumed {
            return v(
                "colluders",
                task.colluders.to_string(),
                format!(
                    "requires at least {} (max_colluders_assumed)",
                    self.max_colluders_assumed
                ),
            );
        }
        if let Some(t) = task.key_threshold {
            if let Some(min) = self.min_key_threshold
                && t < min
            {
                return v(
                    "key_threshold",
                    t.to_string(),
                    format!("requires at least {min} (min_key_threshold)"),
                );
            }
            // t key holders together decrypt: the colluders assumed must be fewer.
            let floor = self.key_holder_floor(task);
            if t < floor {
                return v(
                    "key_threshold",
                    t.to_string(),
                    format!(
                        "requires at least {floor} (more than the colluders assumed, \
                         max_colluders_assumed and the task's colluders)"
                    ),
                );
            }
        }
        let Some(spec) = privacy else {
            if self.require_dp {
                return v(
                    "[privacy]",
                    "no [privacy] table".into(),
                    "requires differential privacy (require_dp)".into(),
                );
            }
            return Ok(());
        };
        if !secure_rng && !self.allow_insecure_rng {
            return v(
                "[privacy] (noise source)",
                "noise drawn by this build without the `secure-rng` feature".into(),
                "requires noise from OpenSSL: build with --features secure-rng, or set \
                 allow_insecure_rng = true"
                    .into(),
            );
        }
        if !self.allowed_units.contains(&spec.unit) {
            return v(
                "[privacy] unit",
                format!("{:?}", spec.unit).to_lowercase(),
                format!("allows {}", list(&self.allowed_units)),
            );
        }
        if !self.allowed_placements.contains(&spec.placement) {
            return v(
                "[privacy] placement",
                format!("{:?}", spec.placement).to_lowercase(),
                format!("allows {}", list(&self.allowed_placements)),
            );
        }
        let budget = spec.budget_for(partner);
        if budget.epsilon > self.max_epsilon {
            return v(
                "[privacy] epsilon",
                budget.epsilon.to_string(),
                format!("allows at most {} (max_epsilon)", self.max_epsilon),
            );
        }
        if budget.delta > self.max_delta {
            return v(
                "[privacy] delta",
                budget.delta.to_string(),
                format!("allows at most {} (max_delta)", self.max_delta),
            );
        }
        if spec.noise_multiplier < self.min_noise_multiplier {
            return v(
                "[privacy] noise_multiplier",
                spec.noise_multiplier.to_string(),
                format!(
                    "requires at least {} (min_noise_multiplier)",
                    self.min_noise_multiplier
                ),
            );
        }
        if spec.unit == PrivacyUnit::Record && spec.evaluation_noise < self.min_evaluation_noise {
            return v(
                "[privacy] evaluation_noise",
                spec.evaluation_noise.to_string(),
                format!(
                    "requires at least {} (min_evaluation_noise)",
                    self.min_evaluation_noise
                ),
            );
        }
        if spec.unit == PrivacyUnit::Record {
            let q = spec.sampling_rate.unwrap_or(1.0);
            if q > self.max_sampling_rate {
                return v(
                    "[privacy] sampling_rate",
                    q.to_string(),
                    format!(
                        "allows at most {} (max_sampling_rate)",
                        self.max_sampling_rate
                    ),
                );
            }
        }
        Ok(())
    }

    /// Admits an encryption parameter set offered for a federation key.
    pub fn admit_he_params(
        &self,
        task: &TaskSpec,
        params: HeParams,
    ) -> Result<(), PolicyViolation> {
        if self.allowed_he_params.contains(&HeParamsName::of(params)) {
            return Ok(());
        }
        Err(Self::violation(
            task,
            "encryption parameter set",
            format!("{:?}", HeParamsName::of(params)).to_lowercase(),
            format!("allows {}", list(&self.allowed_he_params)),
        ))
    }

    /// The fewest distinct contributors a sum this partner decrypts may have.
    pub fn contributor_floor(&self, task: &TaskSpec) -> u32 {
        self.min_contributors.max(task.min_partners).max(1)
    }

    /// The fewest key holders a federation key may have: more than the
    /// colluders assumed, so an N-out-of-N key always has an honest holder.
    pub fn key_holder_floor(&self, task: &TaskSpec) -> u32 {
        self.max_colluders_assumed.max(task.colluders) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(extra: &str) -> TaskSpec {
        let base = include_str!("../../examples/telco_churn_task.toml");
        let text = base.replacen("secure_aggregation = false\n", extra, 1);
        TaskSpec::from_toml_str(&text).unwrap()
    }

    const PRIVATE: &str = "secure_aggregation = true\n[privacy]\nunit = \"partner\"\nepsilon = 8.0\ndelta = 1e-6\nclip_norm = 1.0\nnoise_multiplier = 1.0\n";

    fn spec(t: &TaskSpec) -> Option<PrivacySpec> {
        t.privacy_spec().unwrap()
    }

    #[test]
    fn a_model_kind_outside_the_policy_is_refused_in_task_file_terms() {
        let mut t = task(PRIVATE);
        t.model.kind = ModelKind::Mlp;
        t.model.hidden = vec![8];
        let e = Policy::default()
            .admit(&t, "a", spec(&t).as_ref(), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.kind") && e.contains("mlp") && e.contains("[logistic_regression]"),
            "{e}"
        );
    }

    #[test]
    fn the_default_policy_refuses_plaintext_and_non_private_tasks() {
        let p = Policy::default();
        let plain = task("secure_aggregation = false\n");
        let e = p.admit(&plain, "a", None, true).unwrap_err();
        assert_eq!(e.field, "secure_aggregation");
        assert!(e.to_string().contains("the task has false"), "{e}");
        let no_dp = task("secure_aggregation = true\n");
        let e = p.admit(&no_dp, "a", None, true).unwrap_err();
        assert_eq!(e.field, "[privacy]");
        let ok = task(PRIVATE);
        p.admit(&ok, "a", spec(&ok).as_ref(), true).unwrap();
        // Without OpenSSL noise the default refuses.
        let e = p.admit(&ok, "a", spec(&ok).as_ref(), false).unwrap_err();
        assert!(e.field.contains("noise source"), "{e}");
    }

    #[test]
    fn each_limit_names_its_field_and_both_values() {
        let p = Policy::default();
        let mut t = task(PRIVATE);
        t.min_partners = 1;
        let e = p
            .admit(&t, "a", spec(&task(PRIVATE)).as_ref(), true)
            .unwrap_err();
        assert_eq!(e.field, "min_partners");
        assert!(e.to_string().contains("has 1") && e.to_string().contains("at least 3"));
        let low = task(&PRIVATE.replace("noise_multiplier = 1.0", "noise_multiplier = 0.1"));
        let e = p.admit(&low, "a", spec(&low).as_ref(), true).unwrap_err();
        assert_eq!(e.field, "[privacy] noise_multiplier");
        assert!(e.to_string().contains("0.1") && e.to_string().contains("0.5"));
        let mut many = task(PRIVATE);
        many.rounds = 5000;
        let e = p.admit(&many, "a", spec(&many).as_ref(), true).unwrap_err();
        assert_eq!(e.field, "rounds");
        let record = "secure_aggregation = true\n[privacy]\nepsilon = 8.0\ndelta = 1e-6\nclip_norm = 1.0\nnoise_multiplier = 1.0\nsampling_rate = 0.05\nevaluation_noise = 1.0\n";
        let cheap = task(record);
        let e = p
            .admit(&cheap, "a", spec(&cheap).as_ref(), true)
            .unwrap_err();
        assert_eq!(e.field, "[privacy] evaluation_noise");
        let fine = task(&record.replace("evaluation_noise = 1.0", "evaluation_noise = 10.0"));
        p.admit(&fine, "a", spec(&fine).as_ref(), true).unwrap();
        let mut trusting = task(PRIVATE);
        trusting.colluders = 0;
        let e = p
            .admit(&trusting, "a", spec(&trusting).as_ref(), true)
            .unwrap_err();
        assert_eq!(e.field, "colluders");
        let generous = task(&PRIVATE.replace("epsilon = 8.0", "epsilon = 50.0"));
        let e = p
            .admit(&generous, "a", spec(&generous).as_ref(), true)
            .unwrap_err();
        assert_eq!(e.field, "[privacy] epsilon");
        assert!(e.to_string().contains("50") && e.to_string().contains("10"));
        let e = p.admit_he_params(&t, HeParams::Fast64).unwrap_err();
        assert!(e.to_string().contains("fast64"), "{e}");
        p.admit_he_params(&t, HeParams::Secure128).unwrap();
    }

    /// A task whose `key_threshold` is below `min_key_threshold` is refused naming
    /// both values; a task without one (N-of-N) satisfies any minimum.
    #[test]
    fn a_key_threshold_below_the_policy_minimum_is_refused_and_n_of_n_passes() {
        let p = Policy {
            min_key_threshold: Some(3),
            ..Policy::default()
        };
        let with = |t: u32| task(&PRIVATE.replacen("\n", &format!("\nkey_threshold = {t}\n"), 1));
        let low = with(2);
        let e = p.admit(&low, "a", spec(&low).as_ref(), true).unwrap_err();
        assert_eq!(e.field, "key_threshold");
        assert!(
            e.to_string().contains("has 2")
                && e.to_string().contains("at least 3 (min_key_threshold)"),
            "{e}"
        );
        // Without the minimum the same task is admitted.
        Policy::default()
            .admit(&low, "a", spec(&low).as_ref(), true)
            .unwrap();
        let enough = with(3);
        p.admit(&enough, "a", spec(&enough).as_ref(), true).unwrap();
        let n_of_n = task(PRIVATE);
        p.admit(&n_of_n, "a", spec(&n_of_n).as_ref(), true).unwrap();
        // A threshold the assumed colluders would reach is refused.
        let wary = Policy {
            max_colluders_assumed: 2,
            ..Policy::default()
        };
        let mut reach = with(2);
        reach.colluders = 2;
        let e = wary
            .admit(&reach, "a", spec(&reach).as_ref(), true)
            .unwrap_err();
        assert_eq!(e.field, "key_threshold");
        assert!(e.to_string().contains("at least 3"), "{e}");
    }

    #[test]
    fn the_task_and_the_maths_layer_agree_on_the_largest_committee() {
        assert_eq!(
            consortia_model::task::MAX_KEY_THRESHOLD,
            consortia_he::threshold::MAX_THRESHOLD_PARTIES
        );
    }

    #[test]
    fn a_policy_file_fills_in_safe_defaults_and_rejects_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("policy.toml");
        std::fs::write(&f, "[policy]\nrequire_dp = false\n").unwrap();
        let p = Policy::load(&f).unwrap();
        assert!(!p.require_dp);
        assert!(p.require_secure_aggregation);
        assert_eq!(p.min_contributors, 3);
        std::fs::write(&f, "[policy]\nrequire_dpp = false\n").unwrap();
        let e = Policy::load(&f).unwrap_err().to_string();
        assert!(e.contains("require_dpp"), "{e}");
        std::fs::write(&f, "[policy]\nmax_sampling_rate = 2.0\n").unwrap();
        assert!(Policy::load(&f).is_err());
        assert_eq!(p.min_key_threshold, None);
        std::fs::write(&f, "[policy]\nmin_key_threshold = 3\n").unwrap();
        assert_eq!(Policy::load(&f).unwrap().min_key_threshold, Some(3));
        std::fs::write(&f, "[policy]\nmin_key_threshold = 1\n").unwrap();
        let e = Policy::load(&f).unwrap_err().to_string();
        assert!(
            e.contains("min_key_threshold = 1") && e.contains("between 2 and 12"),
            "{e}"
        );
    }
}
