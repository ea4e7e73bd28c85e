//! Matrix factorisation for recommendation: a biased latent-factor model (Koren, Bell
//! and Volinsky 2009, "Matrix Factorization Techniques for Recommender Systems", eq. 4)
//! whose item part is federated and whose user part never leaves its partner.
//!
//! The predicted rating of user `u` for item `i` is `μ + b_u + b_i + p_u · q_i`,
//! clipped to the task's scale. The **shared** parameters — the wire layout, the only
//! thing in an update, the coordinator's state or an exported model — are the global
//! mean `μ`, then the item biases `b_i` and then the item factors `q_i` (`k` values per
//! item) in catalogue order: `1 + items · (k + 1)` values. The **private** part, each
//! user's bias `b_u` and factors `p_u` ([`UserFactors`]), is fitted by the partner that
//! holds the user's ratings and is never sent anywhere.
//!
//! Training is alternating least squares (Hu, Koren and Volinsky 2008; Zhou et al.
//! 2008), split at the federation boundary:
//!
//! * **user step, on the partner, closed form**: given the global item part, each of the
//!   partner's users gets the exact ridge solution of `(b_u, p_u)` on their training
//!   ratings ([`MfModel::solve_users`]);
//! * **item step, federated**: each partner solves the same ridge problem for every item
//!   its users rated, on its own ratings, and sends the difference between that local
//!   solution and the global item part (and its mean rating minus `μ`) as its update
//!   ([`MfModel::local_item_delta`]). The coordinator's example-weighted average of
//!   these deltas (FedAvg) moves each item towards the average of the partners' local
//!   solutions; items rated on one partner only move by that partner's share of the
//!   rows per round, and converge geometrically over rounds.
//!
//! Under differential privacy with one user (all their ratings) as the unit, the item
//! part is learned by DP-SGD over users instead, each user's gradient of the item part
//! ([`MfModel::user_gradient`]) clipped before noise is added. With the whole partner as
//! the unit, the item step's delta is clipped and noised as any model's delta is
//! (`consortia_client::training`). Either way the user step stays exact and local, since
//! nothing of it is released.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use crate::evaluation::Evaluation;
use crate::model::{Model, ModelError, check_params};
use crate::ratings::{ByUser, Ratings, RatingsSpec};
use crate::recommendation_metrics::{RELEVANT_RATING, RecommendationPartial, TOP_K};
use crate::task::{ModelKind, TaskSpec};

/// Standard deviation of the initial item factors (drawn from the task's seed).
pub const INIT_SCALE: f64 = 0.1;

/// A matrix factorisation's shared part (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct MfModel {
    items: usize,
    factors: usize,
    scale: [f64; 2],
    params: Vec<f64>,
}

/// Shared parameters of a factorisation of `items` items with `factors` factors:
/// `1 + items · (factors + 1)` (saturating).
pub fn param_count(items: usize, factors: usize) -> usize {
    items
        .saturating_mul(factors.saturating_add(1))
        .saturating_add(1)
}

/// One partner's private user part: each user's bias and factors, indexed as the
/// partner's [`Ratings::users`].
#[derive(Debug, Clone, PartialEq)]
pub struct UserFactors {
    factors: usize,
    /// `b_u` per user.
    pub bias: Vec<f64>,
    /// `p_u` per user, `factors` values each.
    pub vectors: Vec<f64>,
}

impl UserFactors {
    /// Users' factors from their parts: `bias[u]` and `vectors[u · factors..]` for user
    /// `u` (`vectors` must hold `factors` values per user; every value finite).
    pub fn from_parts(
        factors: usize,
        bias: Vec<f64>,
        vectors: Vec<f64>,
    ) -> Result<Self, ModelError> {
        if Some(vectors.len()) != bias.len().checked_mul(factors) {
            return Err(ModelError::Shape(format!(
                "{} users with {factors} factors each need {} factor values, not {}",
                bias.len(),
                bias.len().saturating_mul(factors),
                vectors.len()
            )));
        }
        if let Some((index, &value)) = bias
            .iter()
            .chain(&vectors)
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(ModelError::NonFinite { index, value });
        }
        Ok(Self {
            factors,
            bias,
            vectors,
        })
    }

    /// Latent factors per user.
    pub fn factors(&self) -> usize {
        self.factors
    }

    /// User `u`'s factors.
    pub fn of(&self, u: usize) -> &[f64] {
        &self.vectors[u * self.factors..(u + 1) * self.factors]
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.bias.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.bias.is_empty()
    }
}

/// A partner's training ratings, grouped for the user and item steps.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRatings {
    /// By user: each user's items and ratings.
    pub by_user: ByUser,
    /// By item: each item's users and ratings.
    pub by_item: ByUser,
    /// Training ratings.
    pub rows: usize,
    /// Mean training rating.
    pub mean: f64,
}

impl TrainRatings {
    /// Groups `train` over a catalogue of `items` items.
    pub fn new(train: &Ratings, items: usize) -> Self {
        let rows = train.rows.len();
        let mean = train.rows.iter().map(|r| r.value).sum::<f64>() / rows.max(1) as f64;
        Self {
            by_user: train.by_user(),
            by_item: train.by_item(items),
            rows,
            mean,
        }
    }

    /// Users (with or without training ratings).
    pub fn users(&self) -> usize {
        self.by_user.len()
    }
}

impl MfModel {
    /// The task's model at its initial parameters: `μ` the middle of the scale, item
    /// biases 0, item factors N(0, [`INIT_SCALE`]²) drawn from `seed`.
    pub fn new(items: usize, factors: usize, scale: [f64; 2], seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = vec![0.0; param_count(items, factors)];
        params[0] = 0.5 * (scale[0] + scale[1]);
        for v in &mut params[1 + items..] {
            // Box–Muller.
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            *v = INIT_SCALE * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        }
        Self {
            items,
            factors,
            scale,
            params,
        }
    }

    /// The task's model (which must be a matrix factorisation) with shared parameters
    /// `params` (checked).
    pub fn from_task(task: &TaskSpec, params: &[f64]) -> Result<Self, ModelError> {
        let (items, factors, scale) = dims(task)?;
        let mut m = Self {
            items,
            factors,
            scale,
            params: Vec::new(),
        };
        check_params(params, param_count(items, factors), || m.layout())?;
        m.params = params.to_vec();
        Ok(m)
    }

    /// Catalogue items.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Latent factors.
    pub fn factors(&self) -> usize {
        self.factors
    }

    /// The global mean `μ`.
    pub fn mean(&self) -> f64 {
        self.params[0]
    }

    /// Item `i`'s bias.
    pub fn item_bias(&self, i: usize) -> f64 {
        self.params[1 + i]
    }

    /// Item `i`'s factors.
    pub fn item_factors(&self, i: usize) -> &[f64] {
        let at = 1 + self.items + i * self.factors;
        &self.params[at..at + self.factors]
    }

    /// Index in the wire layout of item `i`'s bias.
    fn bias_index(&self, i: usize) -> usize {
        1 + i
    }

    /// Index in the wire layout of item `i`'s first factor.
    fn factor_index(&self, i: usize) -> usize {
        1 + self.items + i * self.factors
    }

    /// The user step: for every user of `train`, the exact solution of
    /// `min Σ_i (r_ui − μ − b_i − b_u − p_u·q_i)² + λ (b_u² + |p_u|²)` over their
    /// training ratings, given this (global) item part. A user without training
    /// ratings gets zeros.
    pub fn solve_users(&self, train: &TrainRatings, lambda: f64) -> UserFactors {
        let k = self.factors;
        let n = k + 1;
        let users = train.users();
        let mut out = UserFactors {
            factors: k,
            bias: vec![0.0; users],
            vectors: vec![0.0; users * k],
        };
        let mut a = vec![0.0; n * n];
        let mut b = vec![0.0; n];
        let mut x = vec![0.0; n];
        for u in 0..users {
            let (items, values) = train.by_user.of(u);
            if items.is_empty() {
                continue;
            }
            a.iter_mut().for_each(|v| *v = 0.0);
            b.iter_mut().for_each(|v| *v = 0.0);
            for (&i, &r) in items.iter().zip(values) {
                let i = i as usize;
                x[..k].copy_from_slice(self.item_factors(i));
                x[k] = 1.0;
                let y = r - self.mean() - self.item_bias(i);
                accumulate(&mut a, &mut b, &x, y);
            }
            if solve_ridge(&mut a, &mut b, n, lambda) {
                out.vectors[u * k..(u + 1) * k].copy_from_slice(&b[..k]);
                out.bias[u] = b[k];
            }
        }
        out
    }

    /// The item step's update of one partner: for every item its users rated, the
    /// exact ridge solution of `(b_i, q_i)` on the partner's ratings given its users'
    /// factors, minus the global item part; for `μ`, the partner's mean training rating
    /// minus the global one. Zero for items the partner has no rating of.
    pub fn local_item_delta(
        &self,
        train: &TrainRatings,
        users: &UserFactors,
        lambda: f64,
    ) -> Vec<f64> {
        let k = self.factors;
        let n = k + 1;
        let mut delta = vec![0.0; self.params.len()];
        delta[0] = train.mean - self.mean();
        let mut a = vec![0.0; n * n];
        let mut b = vec![0.0; n];
        let mut x = vec![0.0; n];
        for i in 0..self.items {
            let (who, values) = train.by_item.of(i);
            if who.is_empty() {
                continue;
            }
            a.iter_mut().for_each(|v| *v = 0.0);
            b.iter_mut().for_each(|v| *v = 0.0);
            for (&u, &r) in who.iter().zip(values) {
                let u = u as usize;
                x[..k].copy_from_slice(users.of(u));
                x[k] = 1.0;
                let y = r - self.mean() - users.bias[u];
                accumulate(&mut a, &mut b, &x, y);
            }
            if solve_ridge(&mut a, &mut b, n, lambda) {
                let f = self.factor_index(i);
                for j in 0..k {
                    delta[f + j] = b[j] - self.params[f + j];
                }
                delta[self.bias_index(i)] = b[k] - self.item_bias(i);
            }
        }
        delta
    }

    /// User `u`'s contribution to the gradient of the item part, for DP-SGD over
    /// users: the gradient of `½ Σ_i (r̂_ui − r_ui)²` over the user's training ratings
    /// with respect to `μ`, `b_i` and `q_i`, as `(index, value)` pairs of the wire
    /// layout (it touches `μ` and the user's items only). Returns the pairs and the
    /// user's loss.
    pub fn user_gradient(
        &self,
        train: &TrainRatings,
        users: &UserFactors,
        u: usize,
        out: &mut Vec<(usize, f64)>,
    ) -> f64 {
        out.clear();
        let (items, values) = train.by_user.of(u);
        let p = users.of(u);
        let mut d_mu = 0.0;
        let mut loss = 0.0;
        for (&i, &r) in items.iter().zip(values) {
            let i = i as usize;
            let e = self.raw_prediction(users, u, i) - r;
            loss += 0.5 * e * e;
            d_mu += e;
            out.push((self.bias_index(i), e));
            let f = self.factor_index(i);
            out.extend(p.iter().enumerate().map(|(j, pj)| (f + j, e * pj)));
        }
        out.push((0, d_mu));
        loss
    }

    /// `μ + b_u + b_i + p_u·q_i`, not clipped.
    fn raw_prediction(&self, users: &UserFactors, u: usize, i: usize) -> f64 {
        self.mean() + users.bias[u] + self.item_bias(i) + dot(users.of(u), self.item_factors(i))
    }

    /// The predicted rating of user `u` for item `i`, clipped to the scale.
    pub fn predict_rating(&self, users: &UserFactors, u: usize, i: usize) -> f64 {
        self.raw_prediction(users, u, i)
            .clamp(self.scale[0], self.scale[1])
    }

    /// The `k` items user `u` is predicted to like most, best first, leaving out
    /// `exclude` (the items the user rated in training); ties go to the lower index.
    pub fn top_k(&self, users: &UserFactors, u: usize, exclude: &[u32], k: usize) -> Vec<u32> {
        let p = users.of(u);
        let mut scored: Vec<(f64, u32)> = (0..self.items)
            .map(|i| (self.item_bias(i) + dot(p, self.item_factors(i)), i as u32))
            .collect();
        for &i in exclude {
            if let Some(s) = scored.get_mut(i as usize) {
                s.0 = f64::NEG_INFINITY;
            }
        }
        let by_score = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        if k < scored.len() {
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
        }
        scored.sort_by(by_score);
        scored
            .into_iter()
            .filter(|s| s.0.is_finite())
            .map(|s| s.1)
            .collect()
    }

    /// The exact evaluation on a partner's held-out ratings `test`, with the users'
    /// factors `users` (solved on `train`): squared and absolute errors of the clipped
    /// predictions, and each user's NDCG@10 and recall@10 over the items they did not
    /// rate in training (relevant: a held-out rating of at least
    /// [`RELEVANT_RATING`]).
    pub fn evaluate_ratings(
        &self,
        train: &TrainRatings,
        users: &UserFactors,
        test: &Ratings,
    ) -> RecommendationPartial {
        let mut partial = RecommendationPartial::empty();
        let by_user = test.by_user();
        for u in 0..by_user.len().min(users.len()) {
            self.evaluate_user(&mut partial, train, users, &by_user, u);
        }
        partial
    }

    /// [`evaluate_ratings`](Self::evaluate_ratings) one user at a time: each user's own
    /// exact partial (their held-out ratings' errors and, when ranked, their NDCG@10 and
    /// recall@10), in the users' order. The input of a private release, which bounds
    /// each user's contribution (`recommendation_metrics::private_user_record`).
    pub fn evaluate_ratings_per_user(
        &self,
        train: &TrainRatings,
        users: &UserFactors,
        test: &Ratings,
    ) -> Vec<RecommendationPartial> {
        let by_user = test.by_user();
        (0..by_user.len().min(users.len()))
            .map(|u| {
                let mut partial = RecommendationPartial::empty();
                self.evaluate_user(&mut partial, train, users, &by_user, u);
                partial
            })
            .collect()
    }

    /// Adds user `u`'s held-out ratings (from `by_user`) and ranking to `partial`.
    fn evaluate_user(
        &self,
        partial: &mut RecommendationPartial,
        train: &TrainRatings,
        users: &UserFactors,
        by_user: &ByUser,
        u: usize,
    ) {
        let (items, values) = by_user.of(u);
        for (&i, &r) in items.iter().zip(values) {
            partial.add_rating(r, self.predict_rating(users, u, i as usize));
        }
        let relevant: Vec<u32> = items
            .iter()
            .zip(values)
            .filter(|(_, r)| **r >= RELEVANT_RATING)
            .map(|(i, _)| *i)
            .collect();
        if relevant.is_empty() {
            return;
        }
        let (seen, _) = if u < train.users() {
            train.by_user.of(u)
        } else {
            (&[][..], &[][..])
        };
        let ranked = self.top_k(users, u, seen, TOP_K);
        partial.add_user(&ranked, |i| relevant.contains(&i), relevant.len());
    }
}

/// `(items, factors, scale)` of a matrix factorisation task.
fn dims(task: &TaskSpec) -> Result<(usize, usize, [f64; 2]), ModelError> {
    let ratings = task.schema.ratings.as_ref().ok_or_else(|| {
        ModelError::Config("a matrix_factorization needs [schema.ratings]".into())
    })?;
    let factors = task.model.factors.ok_or_else(|| {
        ModelError::Config("a matrix_factorization needs model.factors (e.g. 10)".into())
    })?;
    Ok((ratings.items, factors, ratings.scale))
}

/// The model a task's `[model]` and `[schema.ratings]` make ([`crate::model::build`]).
pub(crate) fn build(
    factors: Option<usize>,
    ratings: Option<&RatingsSpec>,
    seed: u64,
) -> Result<MfModel, ModelError> {
    let (Some(k), Some(r)) = (factors, ratings) else {
        return Err(ModelError::Config(
            "a matrix_factorization needs model.factors and [schema.ratings]".into(),
        ));
    };
    Ok(MfModel::new(r.items, k, r.scale, seed))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Adds `x xᵀ` to `a` (upper triangle) and `y x` to `b`.
fn accumulate(a: &mut [f64], b: &mut [f64], x: &[f64], y: f64) {
    let n = x.len();
    for r in 0..n {
        let xr = x[r];
        b[r] += y * xr;
        for c in r..n {
            a[r * n + c] += xr * x[c];
        }
    }
}

/// Solves `(A + λI) z = b` for the symmetric positive definite `A` whose upper
/// triangle `a` holds (n × n, row-major) by Cholesky; `b` becomes `z`. False (and
/// `b` unspecified) when the matrix is not positive definite.
fn solve_ridge(a: &mut [f64], b: &mut [f64], n: usize, lambda: f64) -> bool {
    for r in 0..n {
        a[r * n + r] += lambda;
        for c in 0..r {
            a[r * n + c] = a[c * n + r];
        }
    }
    // In place: lower triangle L with A = L Lᵀ.
    for j in 0..n {
        let mut d = a[j * n + j];
        for p in 0..j {
            d -= a[j * n + p] * a[j * n + p];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for p in 0..j {
                s -= a[i * n + p] * a[j * n + p];
            }
            a[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        let mut s = b[i];
        for p in 0..i {
            s -= a[i * n + p] * b[p];
        }
        b[i] = s / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for p in i + 1..n {
            s -= a[p * n + i] * b[p];
        }
        b[i] = s / a[i * n + i];
    }
    true
}

fn not_tabular() -> ModelError {
    ModelError::Shape(
        "a matrix factorisation predicts ratings of (user, item) pairs with the partner's own \
         user factors; it has no design-matrix input (load the ratings with \
         consortia_model::ratings)"
            .into(),
    )
}

impl Model for MfModel {
    fn kind(&self) -> ModelKind {
        ModelKind::MatrixFactorization
    }

    fn layout(&self) -> String {
        format!(
            "global mean, {} item biases, then {} factors for each item",
            self.items, self.factors
        )
    }

    fn params(&self) -> &[f64] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [f64] {
        &mut self.params
    }

    fn feature_count(&self) -> usize {
        0
    }

    fn predict(&self, _x: &ndarray::Array2<f64>) -> Result<ndarray::Array1<f64>, ModelError> {
        Err(not_tabular())
    }

    fn example_gradient(
        &self,
        _x_row: ndarray::ArrayView1<'_, f64>,
        _y: f64,
        _out: &mut [f64],
    ) -> Result<f64, ModelError> {
        Err(not_tabular())
    }

    fn penalty_gradient(&self, l2: f64, out: &mut [f64]) {
        // Item biases and factors; not the global mean.
        for (o, w) in out.iter_mut().zip(&self.params).skip(1) {
            *o += l2 * w;
        }
    }

    fn loss(
        &self,
        _x: &ndarray::Array2<f64>,
        _y: &ndarray::Array1<f64>,
    ) -> Result<f64, ModelError> {
        Err(not_tabular())
    }

    fn evaluate(
        &self,
        _x: &ndarray::Array2<f64>,
        _y: &ndarray::Array1<f64>,
    ) -> Result<Evaluation, ModelError> {
        Err(not_tabular())
    }

    fn export(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("global_mean".into(), json!(self.mean()));
        m.insert("item_bias".into(), json!(&self.params[1..1 + self.items]));
        m.insert("item_factors".into(), json!(&self.params[1 + self.items..]));
        m.insert("factors".into(), json!(self.factors));
        m
    }

    fn clone_box(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratings::Rating;

    fn ratings(rows: &[(u32, u32, f64)], users: usize) -> Ratings {
        Ratings {
            users: (0..users as i64).collect(),
            rows: rows
                .iter()
                .map(|&(user, item, value)| Rating { user, item, value })
                .collect(),
            unknown_items: 0,
        }
    }

    #[test]
    fn user_factors_from_parts_check_their_shape_and_values() {
        let u = UserFactors::from_parts(2, vec![0.5, -1.0], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!((u.len(), u.factors()), (2, 2));
        assert_eq!(u.of(1), [3.0, 4.0]);
        let short = UserFactors::from_parts(2, vec![0.5, -1.0], vec![1.0, 2.0, 3.0]);
        assert!(matches!(short, Err(ModelError::Shape(_))), "{short:?}");
        let nan = UserFactors::from_parts(1, vec![0.5, -1.0], vec![1.0, f64::NAN]);
        assert!(
            matches!(nan, Err(ModelError::NonFinite { index: 3, .. })),
            "{nan:?}"
        );
    }

    #[test]
    fn ridge_solve_matches_the_normal_equations() {
        // A = [[2, 1], [1, 3]] + I, b = [1, 2] → z = [1/11·(4·1 − 1·2)…]
        let mut a = vec![2.0, 1.0, 0.0, 3.0];
        let mut b = vec![1.0, 2.0];
        assert!(solve_ridge(&mut a, &mut b, 2, 1.0));
        // (A + I) = [[3, 1], [1, 4]], det 11: z = [(4 − 2)/11, (6 − 1)/11].
        assert!((b[0] - 2.0 / 11.0).abs() < 1e-12 && (b[1] - 5.0 / 11.0).abs() < 1e-12);
    }

    #[test]
    fn alternating_steps_fit_a_small_matrix_and_rank_unseen_items() {
        // Two taste groups: users 0–2 like items 0–1, users 3–5 like items 2–3.
        let mut rows = Vec::new();
        for u in 0..6u32 {
            for i in 0..4u32 {
                let likes = (u < 3) == (i < 2);
                if (u + i) % 4 != 0 {
                    rows.push((u, i, if likes { 5.0 } else { 1.0 }));
                }
            }
        }
        let train = TrainRatings::new(&ratings(&rows, 6), 4);
        let mut m = MfModel::new(4, 2, [1.0, 5.0], 7);
        for _ in 0..30 {
            let users = m.solve_users(&train, 0.1);
            let d = m.local_item_delta(&train, &users, 0.1);
            m.params.iter_mut().zip(&d).for_each(|(p, d)| *p += d);
        }
        let users = m.solve_users(&train, 0.1);
        // Held out: (0, 0) liked, (1, 3) disliked.
        assert!(m.predict_rating(&users, 0, 0) > 4.0);
        assert!(m.predict_rating(&users, 1, 3) < 2.0);
        let test = ratings(&[(0, 0, 5.0), (1, 3, 1.0)], 6);
        let partial = m.evaluate_ratings(&train, &users, &test);
        assert_eq!(partial.n, 2);
        assert_eq!(partial.users, 1, "user 1 has no relevant held-out item");
        assert!(partial.sum_ndcg > 0.99, "{partial:?}");
        // The user gradient touches μ and the user's items only.
        let mut g = Vec::new();
        m.user_gradient(&train, &users, 0, &mut g);
        let (items, _) = train.by_user.of(0);
        assert_eq!(g.len(), 1 + items.len() * 3);
    }
}
