//! The partner's private data and what the agent computes on it.
//!
//! Rows are split once into training and held-out rows (stratified, seeded
//! by the task seed and the partner's name, so a restarted agent holds out
//! the same rows). Features are standardised with the federation-wide
//! statistics the coordinator sends, never with this partner's own alone.

use std::path::Path;

use consortia_dp::{PrivacySpec, PrivacyUnit, noisy_statistics};
use consortia_model::TaskSpec;
use consortia_model::data::Dataset;
use consortia_model::logistic::{LogisticModel, TrainConfig, TrainProgress, TrainReport};
use consortia_model::metrics::EvalPartial;
use consortia_model::standardize::{FeatureStats, Standardizer};
use ndarray::Array2;
use rand::SeedableRng;

use crate::AgentError;

/// Standardised design matrices for one standardisation.
struct Prepared {
    mean: Vec<f64>,
    std: Vec<f64>,
    train_x: Array2<f64>,
    test_x: Array2<f64>,
}

/// A partner's rows, split and ready to train on.
pub struct LocalData {
    train: Dataset,
    test: Dataset,
    prepared: Option<Prepared>,
    seed: u64,
}

/// A stable 64-bit hash of a name (FNV-1a), to derive per-partner seeds.
pub fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl LocalData {
    /// Loads `path` under the task's schema and holds out the task's fraction of rows.
    pub fn load(path: &Path, task: &TaskSpec, partner: &str) -> Result<Self, AgentError> {
        let data =
            Dataset::load_csv(path, &task.schema).map_err(|e| AgentError::Data(e.to_string()))?;
        let (train, test) = data.split_holdout(task.holdout_fraction, task.seed);
        let seed = task.seed ^ name_seed(partner);
        if train.is_empty() || test.is_empty() {
            return Err(AgentError::Data(format!(
                "{}: {} rows are too few to hold out {:.0} % for evaluation",
                path.display(),
                data.len(),
                task.holdout_fraction * 100.0
            )));
        }
        Ok(LocalData {
            train,
            test,
            prepared: None,
            seed,
        })
    }

    /// Training rows.
    pub fn train_rows(&self) -> usize {
        self.train.len()
    }

    /// Held-out rows.
    pub fn test_rows(&self) -> usize {
        self.test.len()
    }

    /// Feature sums of the training rows, for federation-wide standardisation.
    pub fn feature_stats(&self) -> FeatureStats {
        self.train.feature_stats()
    }

    /// Feature statistics of the training rows under a task's `[privacy]`, as released:
    ///
    /// * record unit: count, Σu and Σu² of the features clipped to `bounds` and scaled to
    ///   [0, 1], plus Gaussian noise of multiplier `statistics_noise_multiplier`
    ///   (`consortia_dp::noisy_statistics`, one `Gaussian { z_s }` event), mapped back
    ///   to the features' units ([`FeatureStats::from_noisy_unit`], post-processing);
    /// * partner unit: statistics of the public bounds alone ([`FeatureStats::from_bounds`]), which
    ///   depend on no row.
    ///
    /// Either is then stated over the partner's training-row count
    /// ([`FeatureStats::rescaled_to`]): that count is not protected here, because every update
    /// the partner sends carries it (its FedAvg weight) and both ledgers record it — the
    /// coordinator's first write-ahead round charge takes it from this report. The means and
    /// variances are the noisy ones.
    ///
    /// The caller charges the release first (`PartnerPrivacy::admit_statistics`).
    pub fn private_feature_stats(
        &self,
        spec: &PrivacySpec,
        bounds: &[(f64, f64)],
    ) -> Result<FeatureStats, AgentError> {
        let rows = self.train_rows() as u64;
        if spec.unit == PrivacyUnit::Partner {
            return Ok(FeatureStats::from_bounds(bounds).rescaled_to(rows));
        }
        let err = |e: String| AgentError::Data(format!("feature statistics: {e}"));
        let exact = self
            .train
            .clipped_unit_stats(bounds)
            .map_err(|e| err(e.to_string()))?;
        let noisy = noisy_statistics(
            exact.count,
            &exact.sum,
            &exact.sum_sq,
            spec.statistics_noise_multiplier,
        )
        .map_err(|e| err(e.to_string()))?;
        let estimate =
            FeatureStats::from_noisy_unit(noisy.count, &noisy.sum, &noisy.sum_sq, bounds)
                .map_err(|e| err(e.to_string()))?;
        Ok(estimate.rescaled_to(rows))
    }

    fn prepare(&mut self, mean: &[f64], std: &[f64]) -> Result<&Prepared, AgentError> {
        let stale = self
            .prepared
            .as_ref()
            .is_none_or(|p| p.mean != mean || p.std != std);
        if stale {
            let n = self.train.feature_count();
            if mean.len() != n || std.len() != n {
                return Err(AgentError::Protocol(format!(
                    "standardisation has {} features, the schema has {n}",
                    mean.len()
                )));
            }
            let bad = |e: consortia_model::StandardizeError| {
                AgentError::Protocol(format!("standardisation from the coordinator: {e}"))
            };
            let s = Standardizer::from_parts(mean.to_vec(), std.to_vec()).map_err(bad)?;
            self.prepared = Some(Prepared {
                mean: mean.to_vec(),
                std: std.to_vec(),
                train_x: s.apply(&self.train).map_err(bad)?,
                test_x: s.apply(&self.test).map_err(bad)?,
            });
        }
        self.prepared
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("standardisation missing".into()))
    }

    /// Scores `model` on the held-out rows.
    pub fn evaluate(
        &mut self,
        model: &LogisticModel,
        mean: &[f64],
        std: &[f64],
    ) -> Result<EvalPartial, AgentError> {
        let labels = self.test.labels().clone();
        let p = self.prepare(mean, std)?;
        EvalPartial::evaluate(model, &p.test_x, &labels)
            .map_err(|e| AgentError::Protocol(format!("cannot score the global model: {e}")))
    }

    /// Trains `model` in place on the training rows.
    pub fn train(
        &mut self,
        model: &mut LogisticModel,
        task: &TaskSpec,
        round: u64,
        mean: &[f64],
        std: &[f64],
        progress: impl FnMut(TrainProgress),
    ) -> Result<TrainReport, AgentError> {
        let labels = self.train.labels().clone();
        let seed = self.seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let p = self.prepare(mean, std)?;
        let cfg = TrainConfig {
            epochs: task.local_epochs,
            batch_size: task.batch_size,
            learning_rate: task.learning_rate,
            l2: task.model.l2,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        model
            .train(&p.train_x, &labels, &cfg, &mut rng, progress)
            .map_err(|e| AgentError::Data(format!("local training failed: {e}")))
    }
}

impl LocalData {
    /// Distributed DP with the record unit (one full-batch step of the
    /// federation per round): the sum over every training row of its
    /// log-loss gradient at `model`, each clipped to L2 norm `clip` (Abadi et
    /// al. 2016, Alg. 1, with q = 1). No noise is added here: the partner's
    /// noise share is added when the sum is encoded
    /// (`consortia_he::update::UpdateEncoding::encode_ddg`).
    pub fn clipped_gradient_sum(
        &mut self,
        model: &LogisticModel,
        clip: f64,
        mean: &[f64],
        std: &[f64],
    ) -> Result<Vec<f64>, AgentError> {
        let labels = self.train.labels().clone();
        let p = self.prepare(mean, std)?;
        let dim = model.param_count();
        let mut sum = vec![0.0; dim];
        for i in 0..p.train_x.nrows() {
            let mut g = model
                .per_example_gradients(p.train_x.row(i), labels[i])
                .map_err(|e| AgentError::Data(format!("gradient of row {i}: {e}")))?;
            consortia_dp::clip_l2(&mut g, clip);
            sum.iter_mut().zip(&g).for_each(|(s, v)| *s += v);
        }
        Ok(sum)
    }

    /// Trains `model` in place under the task's differential privacy.
    ///
    /// * Record unit — DP-SGD (Abadi et al. 2016, "Deep Learning with
    ///   Differential Privacy", Alg. 1) in federated form: each of
    ///   `steps_per_round` steps Poisson-samples this partner's rows with rate
    ///   q, clips every per-example gradient to C, adds N(0, z²C²) to the sum
    ///   and divides by the expected batch q·n. Each step is one
    ///   Poisson-sampled Gaussian event for the accountant.
    /// * Partner unit — DP-FedAvg (McMahan et al. 2018, "Learning Differentially
    ///   Private Recurrent Language Models", Alg. 1): ordinary local training,
    ///   then the model delta is clipped to C and N(0, z²C²) is added.
    ///
    /// Returns a loss figure for the partner's own display only: it is computed
    /// on private rows without noise, so it is never sent.
    #[allow(clippy::too_many_arguments)]
    pub fn train_private(
        &mut self,
        model: &mut LogisticModel,
        task: &TaskSpec,
        spec: &consortia_dp::PrivacySpec,
        round: u64,
        mean: &[f64],
        std: &[f64],
    ) -> Result<f64, AgentError> {
        use consortia_dp::PrivacyUnit;
        use consortia_dp::mechanism::{DpSgdStep, privatize_partner_update};
        let dp_err = |e: consortia_dp::DpError| AgentError::Data(format!("private training: {e}"));
        match spec.unit {
            PrivacyUnit::Record => {
                let labels = self.train.labels().clone();
                let p = self.prepare(mean, std)?;
                let x = &p.train_x;
                let n = x.nrows();
                let dim = model.param_count();
                let f = dim - 1;
                let step = DpSgdStep {
                    clip_norm: spec.clip_norm,
                    noise_multiplier: spec.noise_multiplier,
                    sampling_rate: spec.sampling_rate.unwrap_or(1.0),
                };
                let lr = task.learning_rate;
                let l2 = task.model.l2;
                for _ in 0..spec.steps_per_round {
                    let current = &*model;
                    let g = step
                        .noisy_gradient(n, dim, |i| {
                            current
                                .per_example_gradients(x.row(i), labels[i])
                                .unwrap_or_else(|_| vec![0.0; dim])
                        })
                        .map_err(dp_err)?;
                    for (w, gj) in model.weights.iter_mut().zip(&g[..f]) {
                        *w -= lr * (gj + l2 * *w);
                    }
                    model.bias -= lr * g[f];
                }
                model
                    .log_loss(x, &labels)
                    .map_err(|e| AgentError::Data(e.to_string()))
            }
            PrivacyUnit::Partner => {
                let global = model.to_params();
                let report = self.train(model, task, round, mean, std, |_| {})?;
                let mut delta: Vec<f64> = model
                    .to_params()
                    .iter()
                    .zip(&global)
                    .map(|(a, b)| a - b)
                    .collect();
                privatize_partner_update(&mut delta, spec.clip_norm, spec.noise_multiplier)
                    .map_err(dp_err)?;
                let noised: Vec<f64> = global.iter().zip(&delta).map(|(g, d)| g + d).collect();
                *model = LogisticModel::from_params(&noised, model.feature_count())
                    .map_err(|e| AgentError::Data(e.to_string()))?;
                Ok(report.mean_loss)
            }
        }
    }
}
