//! The partner's private data and what the agent computes on it.
//!
//! Rows are split once into training and held-out rows (stratified, seeded
//! by the task seed and the partner's name, so a restarted agent holds out
//! the same rows). Features are standardised with the federation-wide
//! statistics the coordinator sends, never with this partner's own alone.
//!
//! A recommendation task's data are ratings instead ([`consortia_model::ratings`]):
//! a share of each user's ratings is held out, and the users' factors are fitted
//! here, on this partner, every time the model is trained or scored; the factors
//! fitted to all of each user's ratings are kept in the partner's state directory
//! for scoring ([`LocalData::keep_user_factors`], [`crate::user_factors`]).

use std::path::Path;

use consortia_dp::{PrivacySpec, PrivacyUnit, noisy_statistics};
use consortia_model::Evaluation;
use consortia_model::TaskSpec;
use consortia_model::data::Dataset;
use consortia_model::models::mf::{MfModel, TrainRatings};
use consortia_model::ratings::{Catalogue, Ratings, RatingsError};
use consortia_model::standardize::{FeatureStats, Standardizer};
use consortia_model::{Model, TrainProgress};
use ndarray::Array2;

use crate::AgentError;
use crate::training::{Contribution, LocalUpdate, RoundInput};
use crate::user_factors::{self, StoredUsers, model_digest};

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
    /// A recommendation task's ratings (then `train` and `test` are empty).
    ratings: Option<RatingsData>,
}

/// A matrix factorisation partner's ratings: the training ratings grouped for the
/// ALS steps, the held-out ratings, and what the loader could not use.
struct RatingsData {
    task: TaskSpec,
    train: TrainRatings,
    test: Ratings,
    unknown_items: u64,
    /// All ratings, training and held-out, grouped as `consortia score` groups them.
    all: TrainRatings,
    /// Each user's id, in the users' order of `train`, `test` and `all`.
    users: Vec<i64>,
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
        if task.schema.ratings.is_some() {
            return Self::load_ratings(path, task, partner);
        }
        let data =
            Dataset::load_task_csv(path, task).map_err(|e| AgentError::Data(e.to_string()))?;
        let rows = data.len();
        // Consumed: the training rows stay in the loaded buffer, only the held-out
        // rows are copied.
        let (train, test) = data.into_holdout_split(task.holdout_fraction, task.seed);
        let seed = task.seed ^ name_seed(partner);
        if train.is_empty() || test.is_empty() {
            return Err(AgentError::Data(format!(
                "{}: {} rows are too few to hold out {:.0} % for evaluation",
                path.display(),
                rows,
                task.holdout_fraction * 100.0
            )));
        }
        Ok(LocalData {
            train,
            test,
            prepared: None,
            seed,
            ratings: None,
        })
    }

    /// A recommendation task's ratings: the catalogue the task pins (beside `path`
    /// when relative), the ratings, and `holdout_fraction` of each user's ratings held
    /// out (seeded by the task's seed and the user's id). Ratings of items outside the
    /// catalogue are counted and logged, and reported with every evaluation.
    fn load_ratings(path: &Path, task: &TaskSpec, partner: &str) -> Result<Self, AgentError> {
        let Some(spec) = task.schema.ratings.as_ref() else {
            return Err(AgentError::Task(
                "the task declares no [schema.ratings]".into(),
            ));
        };
        let err = |e: RatingsError| AgentError::Data(e.to_string());
        let catalogue = Catalogue::load(spec, path).map_err(err)?;
        let all = Ratings::load(path, task, &catalogue).map_err(err)?;
        if all.unknown_items > 0 {
            tracing::warn!(
                "{}: {} ratings of items that are not in the task's catalogue ({}) were not \
                 used; the count is reported with every evaluation",
                path.display(),
                all.unknown_items,
                spec.catalogue
            );
        }
        let (train, test) = all.split_per_user(task.holdout_fraction, task.seed);
        if train.rows.is_empty() || test.rows.is_empty() {
            return Err(AgentError::Data(format!(
                "{}: {} ratings are too few to hold out {:.0} % of each user's for evaluation",
                path.display(),
                all.rows.len(),
                task.holdout_fraction * 100.0
            )));
        }
        tracing::info!(
            "{}: {} users; their ratings are fitted here and never leave this partner",
            path.display(),
            all.users.len()
        );
        let empty = || Dataset::new(Array2::zeros((0, 0)), ndarray::Array1::zeros(0));
        let empty = empty().map_err(|e| AgentError::Data(e.to_string()))?;
        Ok(LocalData {
            train: empty.clone(),
            test: empty,
            prepared: None,
            seed: task.seed ^ name_seed(partner),
            ratings: Some(RatingsData {
                task: task.clone(),
                train: TrainRatings::new(&train, catalogue.len()),
                test,
                unknown_items: all.unknown_items,
                all: TrainRatings::new(&all, catalogue.len()),
                users: all.users,
            }),
        })
    }

    /// Training rows (for a recommendation task, training ratings).
    pub fn train_rows(&self) -> usize {
        match &self.ratings {
            Some(r) => r.train.rows,
            None => self.train.len(),
        }
    }

    /// Held-out rows (for a recommendation task, held-out ratings).
    pub fn test_rows(&self) -> usize {
        match &self.ratings {
            Some(r) => r.test.rows.len(),
            None => self.test.len(),
        }
    }

    /// Feature sums of the training rows, for federation-wide standardisation.
    pub fn feature_stats(&self) -> FeatureStats {
        match &self.ratings {
            // No features: only the count, which every update carries anyway.
            Some(r) => FeatureStats {
                count: r.train.rows as u64,
                ..FeatureStats::empty(0)
            },
            None => self.train.feature_stats(),
        }
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
        if spec.unit == PrivacyUnit::Partner || self.ratings.is_some() {
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
        model: &dyn Model,
        mean: &[f64],
        std: &[f64],
    ) -> Result<Evaluation, AgentError> {
        if let Some(r) = &self.ratings {
            let model = MfModel::from_task(&r.task, model.params())
                .map_err(|e| AgentError::Protocol(format!("cannot score the global model: {e}")))?;
            let users = model.solve_users(&r.train, r.task.model.l2);
            let mut partial = model.evaluate_ratings(&r.train, &users, &r.test);
            partial.unknown_items = r.unknown_items;
            return Ok(Evaluation::Recommendation(partial));
        }
        let labels = self.test.labels().clone();
        let p = self.prepare(mean, std)?;
        model
            .evaluate(&p.test_x, &labels)
            .map_err(|e| AgentError::Protocol(format!("cannot score the global model: {e}")))
    }

    /// The exact sums of the bounded contributions of this partner's held-out data to a
    /// private evaluation of `model` (`consortia_dp::BoundedSums`; noised by the caller
    /// before anything leaves):
    ///
    /// * regression: one record per held-out row,
    ///   [`private_regression_record`](consortia_model::regression_metrics::private_regression_record)
    ///   with the row's target and prediction clipped to `bounds` (the task's
    ///   `evaluation_bounds`, required);
    /// * recommendation: one record per user,
    ///   [`private_user_record`](consortia_model::recommendation_metrics::private_user_record)
    ///   (per-user mean errors, bounded by the task's rating scale; NDCG@10 and
    ///   recall@10).
    ///
    /// A classifier's private release is its noised score histograms instead: refused here.
    pub fn private_evaluation_sums(
        &mut self,
        model: &dyn Model,
        mean: &[f64],
        std: &[f64],
        bounds: Option<[f64; 2]>,
    ) -> Result<consortia_dp::BoundedSums, AgentError> {
        use consortia_model::recommendation_metrics::{
            PRIVATE_RECOMMENDATION_SUMS, private_user_record,
        };
        use consortia_model::regression_metrics::{
            PRIVATE_REGRESSION_SUMS, private_regression_record,
        };
        let dp = |e: consortia_dp::DpError| AgentError::Data(format!("private evaluation: {e}"));
        if let Some(r) = &self.ratings {
            let model = MfModel::from_task(&r.task, model.params())
                .map_err(|e| AgentError::Protocol(format!("cannot score the global model: {e}")))?;
            let [lo, hi] = r
                .task
                .schema
                .ratings
                .as_ref()
                .map(|s| s.scale)
                .ok_or_else(|| AgentError::Task("the task declares no rating scale".into()))?;
            let users = model.solve_users(&r.train, r.task.model.l2);
            let mut sums = consortia_dp::BoundedSums::new(PRIVATE_RECOMMENDATION_SUMS);
            for user in model.evaluate_ratings_per_user(&r.train, &users, &r.test) {
                sums.add(&private_user_record(&user, hi - lo)).map_err(dp)?;
            }
            return Ok(sums);
        }
        let labels = self.test.labels().clone();
        let p = self.prepare(mean, std)?;
        let Some(bounds) = bounds else {
            return Err(AgentError::Task(
                "this task's evaluation has no private release without public bounds of its \
                 target: set `evaluation_bounds = [lo, hi]` in the task's [privacy] table"
                    .into(),
            ));
        };
        if model.kind() != consortia_model::ModelKind::Glm {
            return Err(AgentError::Task(
                "a classifier's private evaluation is its noised score histograms, not bounded \
                 sums"
                    .into(),
            ));
        }
        let predictions = model
            .predict(&p.test_x)
            .map_err(|e| AgentError::Protocol(format!("cannot score the global model: {e}")))?;
        let mut sums = consortia_dp::BoundedSums::new(PRIVATE_REGRESSION_SUMS);
        for (&y, &pred) in labels.iter().zip(&predictions) {
            sums.add(&private_regression_record(y, pred, bounds))
                .map_err(dp)?;
        }
        Ok(sums)
    }

    /// For a recommendation task: fits every user's bias and factors to all of their
    /// ratings, training and held-out, given the item part of `global` — the model of
    /// round `model_round` — and keeps them in this partner's state directory
    /// (`user_factors::path`), bound to the task's canonical hash `task_hash` and to
    /// that model, for `consortia score --state`. Returns the number of users kept;
    /// 0, and nothing written, for a task of another kind.
    pub fn keep_user_factors(
        &self,
        global: &dyn Model,
        state_dir: &Path,
        task_hash: [u8; 32],
        model_round: u64,
    ) -> Result<usize, AgentError> {
        let Some(r) = &self.ratings else {
            return Ok(0);
        };
        let model = MfModel::from_task(&r.task, global.params())
            .map_err(|e| AgentError::Protocol(format!("global model: {e}")))?;
        let stored = StoredUsers {
            task_hash,
            model_round,
            model_digest: model_digest(global.params()),
            ids: r.users.clone(),
            users: model.solve_users(&r.all, r.task.model.l2),
        };
        stored.write(&user_factors::path(state_dir, &r.task.name))?;
        Ok(stored.ids.len())
    }

    /// Computes this round's contribution with `update` from the global model, on the
    /// training rows standardised by `mean` and `std`. The round's randomness is
    /// seeded by the task's seed, this partner's name and the round, so a rerun of a
    /// round trains identically.
    pub fn contribute(
        &mut self,
        update: &dyn LocalUpdate,
        global: &dyn Model,
        round: u64,
        mean: &[f64],
        std: &[f64],
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<Contribution, AgentError> {
        let labels = self.train.labels().clone();
        let seed = self.seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if let Some(r) = &self.ratings {
            return update.compute(RoundInput {
                global,
                x: &Array2::zeros((0, 0)),
                y: &labels,
                ratings: Some(&r.train),
                seed,
                progress,
            });
        }
        let p = self.prepare(mean, std)?;
        update.compute(RoundInput {
            global,
            x: &p.train_x,
            y: &labels,
            ratings: None,
            seed,
            progress,
        })
    }
}
