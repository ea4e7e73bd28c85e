//! Evaluation of recommendation models that merges exactly across partners.
//!
//! A partner's [`RecommendationPartial`] holds sums over its held-out ratings (count,
//! Σ squared error, Σ absolute error) and over its users (users ranked, Σ NDCG@10,
//! Σ recall@10). The ranking figures are computed per user on the partner, which
//! holds the user's factors: the model ranks every catalogue item the user did not
//! rate in training, and an item is relevant when the user's held-out rating of it is
//! at least [`RELEVANT_RATING`]; users without a relevant held-out item are not ranked.
//! Partials add up; [`RecommendationMetrics::from_partial`] divides the totals, so the
//! merged figures are those of the pooled ratings and users, never an average of
//! partners' averages.
//!
//! Under a task's `[privacy]` table (record unit: one *user* and all their ratings, as
//! DP-SGD over users defines it) a partner releases instead a *private* partial
//! ([`RecommendationPartial::private`]): the six per-user sums of
//! [`private_user_record`] with discrete Gaussian noise
//! (`consortia_dp::release::noisy_bounded_sums`), rebuilt by
//! [`RecommendationPartial::from_private_sums`]. Errors enter **per user**: each user
//! adds their own mean squared and mean absolute error (bounded by the square and the
//! width of the rating scale the task declares) instead of one term per rating, so a
//! user with hundreds of held-out ratings moves the sums no more than one with four. A
//! cap of `m` ratings per user would multiply both the sums and the noise needed by `m`
//! and buy no accuracy (it loses some once `m` exceeds a user's held-out count), and
//! needs no extra setting. The private RMSE and MAE are therefore averages over users
//! (`examples` counts users with a held-out rating), not over ratings; NDCG@10 and
//! recall@10 keep their meaning (one term per ranked user, each in [0, 1]).

use serde::{Deserialize, Serialize};

use crate::metrics::MetricsError;

/// A held-out rating at least this high marks a relevant item.
pub const RELEVANT_RATING: f64 = 4.0;
/// The length of the ranked list NDCG and recall are computed on.
pub const TOP_K: usize = 10;

/// Additive recommendation evaluation sums for one partner, or several merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendationPartial {
    /// Held-out ratings predicted.
    pub n: u64,
    /// Σ (r − r̂)² over them.
    pub sum_sq_error: f64,
    /// Σ |r − r̂| over them.
    pub sum_abs_error: f64,
    /// Users ranked (those with at least one relevant held-out item).
    pub users: u64,
    /// Σ over ranked users of NDCG@[`TOP_K`].
    pub sum_ndcg: f64,
    /// Σ over ranked users of recall@[`TOP_K`] (hits / min(k, relevant items)).
    pub sum_recall: f64,
    /// Ratings in the partners' files of items outside the catalogue, which the model
    /// cannot learn from (counted, so that the coordinator sees how many there are).
    #[serde(default)]
    pub unknown_items: u64,
    /// A differentially private release ([`RecommendationPartial::from_private_sums`]):
    /// `n` counts users (noised), the error sums are sums of per-user means, every sum is
    /// a noised estimate, and `unknown_items` is not released (0). Private and exact
    /// partials do not merge.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// Sums per user of a private recommendation release ([`private_user_record`]).
pub const PRIVATE_RECOMMENDATION_SUMS: usize = 6;

/// One user's contribution to a private recommendation release, from that user's exact
/// partial `user` (their held-out ratings and, if ranked, their NDCG and recall) and the
/// width `span = hi − lo` of the task's rating scale: each coordinate a fraction in
/// [0, 1] of its bound, `[has ratings, MSE_u/span², MAE_u/span, ranked, NDCG_u,
/// recall_u]`, where `MSE_u` and `MAE_u` are the user's mean squared and absolute error
/// (0 without held-out ratings). A rating and its clipped prediction both lie in the
/// scale, so `MSE_u ≤ span²` and `MAE_u ≤ span`; NDCG and recall are in [0, 1] by
/// definition. `consortia_dp::BoundedSums::add` clamps each coordinate to [0, 1] anyway.
pub fn private_user_record(
    user: &RecommendationPartial,
    span: f64,
) -> [f64; PRIVATE_RECOMMENDATION_SUMS] {
    let (mse, mae, rated) = if user.n == 0 {
        (0.0, 0.0, 0.0)
    } else {
        let n = user.n as f64;
        (user.sum_sq_error / n, user.sum_abs_error / n, 1.0)
    };
    let ranked = user.users.min(1) as f64;
    [
        rated,
        mse / (span * span),
        mae / span,
        ranked,
        user.sum_ndcg,
        user.sum_recall,
    ]
}

/// Recommendation metrics; NaN where undefined (no ratings, no ranked users).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecommendationMetrics {
    /// Held-out ratings predicted.
    pub examples: u64,
    /// Root mean squared error of the predicted ratings.
    #[serde(with = "crate::metrics::nan_as_null")]
    pub rmse: f64,
    /// Mean absolute error of the predicted ratings.
    #[serde(with = "crate::metrics::nan_as_null")]
    pub mae: f64,
    /// Users ranked.
    pub users: u64,
    /// Mean NDCG@10 over ranked users.
    #[serde(with = "crate::metrics::nan_as_null")]
    pub ndcg_at_10: f64,
    /// Mean recall@10 over ranked users.
    #[serde(with = "crate::metrics::nan_as_null")]
    pub recall_at_10: f64,
    /// Ratings of items outside the catalogue, not used.
    #[serde(default)]
    pub unknown_items: u64,
}

impl RecommendationPartial {
    /// Nothing evaluated yet.
    pub fn empty() -> Self {
        Self {
            n: 0,
            sum_sq_error: 0.0,
            sum_abs_error: 0.0,
            users: 0,
            sum_ndcg: 0.0,
            sum_recall: 0.0,
            unknown_items: 0,
            private: false,
        }
    }

    /// The private partial rebuilt from the noised sums of [`private_user_record`] (in
    /// units of the bounds, as `consortia_dp::release::noisy_bounded_sums` returns them)
    /// with rating-scale width `span`. Post-processing only: the counts are rounded and
    /// clamped at 0, every sum is clamped to what that many users can hold (so the partial
    /// validates).
    pub fn from_private_sums(sums: &[f64], span: f64) -> Result<Self, MetricsError> {
        let &[rated, mse, mae, ranked, ndcg, recall] = sums else {
            return Err(MetricsError::Inconsistent(format!(
                "a private recommendation release has {PRIVATE_RECOMMENDATION_SUMS} sums, not {}",
                sums.len()
            )));
        };
        if sums.iter().any(|v| !v.is_finite()) {
            return Err(MetricsError::Inconsistent(
                "a private recommendation sum is not finite".into(),
            ));
        }
        let n = rated.round().max(0.0);
        let users = ranked.round().max(0.0);
        Ok(Self {
            n: n as u64,
            sum_sq_error: mse.clamp(0.0, n) * span * span,
            sum_abs_error: mae.clamp(0.0, n) * span,
            users: users as u64,
            sum_ndcg: ndcg.clamp(0.0, users),
            sum_recall: recall.clamp(0.0, users),
            unknown_items: 0,
            private: true,
        })
    }

    /// Adds one held-out rating `r` predicted as `r_hat`.
    pub fn add_rating(&mut self, r: f64, r_hat: f64) {
        let e = r - r_hat;
        self.n += 1;
        self.sum_sq_error += e * e;
        self.sum_abs_error += e.abs();
    }

    /// Adds one ranked user: `ranked` is the user's top-[`TOP_K`] list (best first),
    /// `relevant(item)` whether the user's held-out rating of it is relevant, and
    /// `relevant_count` how many relevant items the user has (at least 1; a user
    /// with none is not ranked).
    pub fn add_user(
        &mut self,
        ranked: &[u32],
        relevant: impl Fn(u32) -> bool,
        relevant_count: usize,
    ) {
        if relevant_count == 0 {
            return;
        }
        let mut dcg = 0.0;
        let mut hits = 0usize;
        for (i, &item) in ranked.iter().take(TOP_K).enumerate() {
            if relevant(item) {
                dcg += 1.0 / ((i + 2) as f64).log2();
                hits += 1;
            }
        }
        let ideal = relevant_count.min(TOP_K);
        let idcg: f64 = (0..ideal).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
        self.users += 1;
        self.sum_ndcg += dcg / idcg;
        self.sum_recall += hits as f64 / ideal as f64;
    }

    /// Checks a partial received from elsewhere: finite, non-negative sums that
    /// their counts can hold (an NDCG or recall is at most 1 per user).
    pub fn validate(&self) -> Result<(), MetricsError> {
        let sums = [
            self.sum_sq_error,
            self.sum_abs_error,
            self.sum_ndcg,
            self.sum_recall,
        ];
        if sums.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(MetricsError::Inconsistent(
                "recommendation sums must be finite and non-negative".into(),
            ));
        }
        let users = self.users as f64;
        if self.sum_ndcg > users * (1.0 + 1e-9) || self.sum_recall > users * (1.0 + 1e-9) {
            return Err(MetricsError::Inconsistent(format!(
                "NDCG or recall sums above the {} users ranked",
                self.users
            )));
        }
        if self.n == 0 && (self.sum_sq_error > 0.0 || self.sum_abs_error > 0.0) {
            return Err(MetricsError::Inconsistent(
                "error sums without any rating".into(),
            ));
        }
        Ok(())
    }

    /// Adds `other`'s ratings and users; both must be valid.
    pub fn merge(&mut self, other: &RecommendationPartial) -> Result<(), MetricsError> {
        self.validate()?;
        other.validate()?;
        if self.private != other.private {
            return Err(MetricsError::Inconsistent(
                "cannot merge a private recommendation evaluation with an exact one".into(),
            ));
        }
        let merged = Self {
            n: self.n.checked_add(other.n).ok_or_else(overflow)?,
            sum_sq_error: self.sum_sq_error + other.sum_sq_error,
            sum_abs_error: self.sum_abs_error + other.sum_abs_error,
            users: self.users.checked_add(other.users).ok_or_else(overflow)?,
            sum_ndcg: self.sum_ndcg + other.sum_ndcg,
            sum_recall: self.sum_recall + other.sum_recall,
            unknown_items: self
                .unknown_items
                .checked_add(other.unknown_items)
                .ok_or_else(overflow)?,
            private: self.private,
        };
        merged.validate()?;
        *self = merged;
        Ok(())
    }
}

fn overflow() -> MetricsError {
    MetricsError::Inconsistent("counts overflow when merged".into())
}

impl RecommendationMetrics {
    /// The metrics of the ratings and users a partial counts.
    pub fn from_partial(p: &RecommendationPartial) -> Self {
        let per = |sum: f64, count: u64| {
            if count == 0 {
                f64::NAN
            } else {
                sum / count as f64
            }
        };
        Self {
            examples: p.n,
            rmse: per(p.sum_sq_error, p.n).sqrt(),
            mae: per(p.sum_abs_error, p.n),
            users: p.users,
            ndcg_at_10: per(p.sum_ndcg, p.users),
            recall_at_10: per(p.sum_recall, p.users),
            unknown_items: p.unknown_items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_partials_are_the_pooled_figures() {
        let mut a = RecommendationPartial::empty();
        a.add_rating(4.0, 3.0);
        a.add_user(&[1, 2, 3], |i| i == 1, 1);
        let mut b = RecommendationPartial::empty();
        b.add_rating(2.0, 2.5);
        b.add_rating(5.0, 5.0);
        // Relevant item at rank 2 of 2 relevant items.
        b.add_user(&[7, 8], |i| i == 8, 2);
        a.merge(&b).unwrap();
        let m = RecommendationMetrics::from_partial(&a);
        assert_eq!(m.examples, 3);
        assert!((m.rmse - (1.25f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m.mae - 0.5).abs() < 1e-12);
        assert_eq!(m.users, 2);
        let second = (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((m.ndcg_at_10 - (1.0 + second) / 2.0).abs() < 1e-12);
        assert!((m.recall_at_10 - 0.75).abs() < 1e-12);
    }

    /// A user's private record holds their mean errors over the scale, ranked flag, NDCG
    /// and recall: as many held-out ratings as they like, it moves each sum by at most its
    /// bound; the sums rebuild user-averaged RMSE and MAE, and NDCG and recall.
    #[test]
    fn private_records_are_per_user_and_rebuild_user_averages() {
        let span = 4.5;
        let mut heavy = RecommendationPartial::empty();
        for _ in 0..400 {
            heavy.add_rating(5.0, 0.5);
        }
        heavy.add_user(&[1, 2], |i| i == 1, 1);
        let r = private_user_record(&heavy, span);
        assert_eq!(r, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        let mut light = RecommendationPartial::empty();
        light.add_rating(4.0, 3.0);
        light.add_rating(2.0, 2.0);
        let r = private_user_record(&light, span);
        assert_eq!(r, [1.0, 0.5 / 20.25, 0.5 / 4.5, 0.0, 0.0, 0.0]);
        assert_eq!(
            private_user_record(&RecommendationPartial::empty(), span),
            [0.0; PRIVATE_RECOMMENDATION_SUMS]
        );
        let mut sums = consortia_dp::BoundedSums::new(PRIVATE_RECOMMENDATION_SUMS);
        sums.add(&private_user_record(&heavy, span)).unwrap();
        sums.add(&private_user_record(&light, span)).unwrap();
        let p = RecommendationPartial::from_private_sums(&sums.exact(), span).unwrap();
        p.validate().unwrap();
        let m = RecommendationMetrics::from_partial(&p);
        // Two users; user-averaged MSE (20.25 + 0.5) / 2 and MAE (4.5 + 0.5) / 2.
        assert_eq!((m.examples, m.users), (2, 1));
        assert!((m.rmse - (20.75f64 / 2.0).sqrt()).abs() < 1e-4, "{m:?}");
        assert!((m.mae - 2.5).abs() < 1e-4);
        assert!((m.ndcg_at_10 - 1.0).abs() < 1e-4 && (m.recall_at_10 - 1.0).abs() < 1e-4);
        // Noised sums beyond what the counts hold are clamped; the result validates.
        let wild =
            RecommendationPartial::from_private_sums(&[1.4, 3.0, -1.0, 0.6, 2.0, -0.5], span)
                .unwrap();
        wild.validate().unwrap();
        assert_eq!((wild.n, wild.users), (1, 1));
        assert_eq!((wild.sum_sq_error, wild.sum_abs_error), (20.25, 0.0));
        assert_eq!((wild.sum_ndcg, wild.sum_recall), (1.0, 0.0));
        assert!(RecommendationPartial::from_private_sums(&[1.0; 5], span).is_err());
        let mut twice = p.clone();
        twice.merge(&p).unwrap();
        assert!(twice.private && twice.n == 4);
        assert!(twice.merge(&light).is_err());
    }

    #[test]
    fn impossible_sums_are_refused() {
        let mut p = RecommendationPartial::empty();
        p.sum_ndcg = 2.0;
        p.users = 1;
        assert!(p.validate().is_err());
        let mut q = RecommendationPartial::empty();
        q.sum_sq_error = f64::INFINITY;
        assert!(RecommendationPartial::empty().merge(&q).is_err());
    }
}
