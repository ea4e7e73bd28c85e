//! A multilayer perceptron for binary classification (churn, conversion, lead
//! scoring): one or two fully connected ReLU hidden layers and one sigmoid output.
//!
//! The model predicts `P(y = 1 | x) = sigmoid(w_L · a_{L-1} + b_L)`, where
//! `a_0 = x` and `a_l = relu(W_l a_{l-1} + b_l)` for each hidden layer, and trains
//! on the log-loss `-(y ln p + (1 - y) ln(1 - p))` (computed from the logit, as for
//! [logistic regression](crate::models::logistic)), with `l2 / 2 · Σ |W_l|²` as its
//! penalty (biases are not penalised).
//!
//! # Wire layout
//!
//! All parameters are one flat vector. For each layer in order — the hidden
//! layers, then the output layer — its weights, then its biases:
//!
//! - the weights of a layer with `fan_in` inputs and `fan_out` units are a
//!   `fan_out × fan_in` matrix stored row-major: row `j` holds the weights into
//!   unit `j`, in input order (for the first layer, design-matrix order, see
//!   [`crate::FeatureSchema::feature_names`]). This is the orientation of
//!   PyTorch's `nn.Linear.weight`;
//! - then its `fan_out` biases.
//!
//! For `features = 40` and `hidden = [16]`: 640 weights and 16 biases of the
//! hidden layer, then 16 weights and 1 bias of the output; 673 numbers in all
//! ([`param_count`]).
//!
//! # Initialisation
//!
//! Drawn from the task seed with `ChaCha8Rng::seed_from_u64(seed)`, in wire order,
//! so the coordinator and every partner derive the same initial model: hidden
//! (ReLU) layers from He (Kaiming) uniform `U(-√(6/fan_in), √(6/fan_in))`, which
//! keeps the activations' variance through ReLU layers (He, Zhang, Ren and Sun
//! 2015, "Delving Deep into Rectifiers: Surpassing Human-Level Performance on
//! ImageNet Classification", ICCV, §2.2); the sigmoid output from Glorot (Xavier)
//! uniform `U(-√(6/(fan_in + fan_out)), √(6/(fan_in + fan_out)))` (Glorot and
//! Bengio 2010, "Understanding the difficulty of training deep feedforward neural
//! networks", AISTATS, eq. 16); every bias 0.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::evaluation::Evaluation;
use crate::metrics::EvalPartial;
use crate::model::{Model, ModelError, check_params, check_rows};
use crate::models::logistic::{log_loss_from_logit, sigmoid};
use crate::task::{MAX_HIDDEN_LAYERS, MAX_HIDDEN_WIDTH, MAX_MODEL_PARAMS, ModelKind};

/// Rows pushed through the network at once by [`Model::predict`], [`Model::loss`]
/// and [`Model::evaluate`], which bounds their working memory.
const FORWARD_CHUNK_ROWS: usize = 4096;

/// Number of parameters of an MLP over `features` inputs with hidden layer widths
/// `hidden` and one output (saturating at `usize::MAX`).
pub fn param_count(features: usize, hidden: &[usize]) -> usize {
    let mut total = 0usize;
    let mut fan_in = features;
    for &width in hidden.iter().chain(std::iter::once(&1)) {
        total = total.saturating_add(fan_in.saturating_mul(width).saturating_add(width));
        fan_in = width;
    }
    total
}

/// One fully connected layer's place in the parameter vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layer {
    fan_in: usize,
    fan_out: usize,
    /// Index of its first weight; its biases follow its `fan_out × fan_in` weights.
    offset: usize,
}

impl Layer {
    fn weights(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.fan_out * self.fan_in
    }

    fn biases(&self) -> std::ops::Range<usize> {
        let start = self.offset + self.fan_out * self.fan_in;
        start..start + self.fan_out
    }
}

/// A multilayer perceptron: every layer's weights and biases, in one vector (see
/// the module documentation for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct MlpModel {
    features: usize,
    /// The hidden layers, then the output layer.
    layers: Vec<Layer>,
    params: Vec<f64>,
}

impl MlpModel {
    /// A freshly initialised MLP over `feature_count` inputs with hidden layer widths
    /// `hidden`, drawn from `seed` (see the module documentation).
    pub fn new(feature_count: usize, hidden: &[usize], seed: u64) -> Result<Self, ModelError> {
        let mut model = Self::zeros(feature_count, hidden)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let last = model.layers.len() - 1;
        for (l, layer) in model.layers.iter().enumerate() {
            let bound = if l < last {
                (6.0 / layer.fan_in as f64).sqrt()
            } else {
                (6.0 / (layer.fan_in + layer.fan_out) as f64).sqrt()
            };
            for w in &mut model.params[layer.weights()] {
                *w = rng.random_range(-bound..bound);
            }
        }
        Ok(model)
    }

    /// An MLP from parameters in wire layout; the length must be
    /// [`param_count`]`(feature_count, hidden)` and every value finite.
    pub fn from_params(
        params: &[f64],
        feature_count: usize,
        hidden: &[usize],
    ) -> Result<Self, ModelError> {
        let mut model = Self::zeros(feature_count, hidden)?;
        check_params(params, model.params.len(), || model.layout())?;
        model.params.copy_from_slice(params);
        Ok(model)
    }

    /// The architecture with every parameter 0, after checking it.
    fn zeros(features: usize, hidden: &[usize]) -> Result<Self, ModelError> {
        if features == 0 {
            return Err(ModelError::Config(
                "an mlp needs at least one feature".into(),
            ));
        }
        if hidden.is_empty() || hidden.len() > MAX_HIDDEN_LAYERS {
            return Err(ModelError::Config(format!(
                "an mlp has 1 to {MAX_HIDDEN_LAYERS} hidden layers, not {}",
                hidden.len()
            )));
        }
        if let Some(w) = hidden.iter().find(|w| !(1..=MAX_HIDDEN_WIDTH).contains(*w)) {
            return Err(ModelError::Config(format!(
                "hidden layer width {w} is not between 1 and {MAX_HIDDEN_WIDTH}"
            )));
        }
        let count = param_count(features, hidden);
        if count > MAX_MODEL_PARAMS {
            return Err(ModelError::Config(format!(
                "an mlp {features}-{hidden:?}-1 has {count} parameters, more than the \
                 {MAX_MODEL_PARAMS} allowed"
            )));
        }
        let mut layers = Vec::with_capacity(hidden.len() + 1);
        let (mut fan_in, mut offset) = (features, 0);
        for &fan_out in hidden.iter().chain(std::iter::once(&1)) {
            layers.push(Layer {
                fan_in,
                fan_out,
                offset,
            });
            offset += fan_out * fan_in + fan_out;
            fan_in = fan_out;
        }
        debug_assert_eq!(offset, count);
        Ok(Self {
            features,
            layers,
            params: vec![0.0; count],
        })
    }

    /// The hidden layer widths.
    pub fn hidden(&self) -> Vec<usize> {
        self.hidden_layers().iter().map(|l| l.fan_out).collect()
    }

    /// Layer sizes from input to output: `[features, hidden…, 1]`.
    pub fn sizes(&self) -> Vec<usize> {
        std::iter::once(self.features)
            .chain(self.layers.iter().map(|l| l.fan_out))
            .collect()
    }

    /// The weights of layer `l` (0 is the first hidden layer, the last is the
    /// output), `fan_out × fan_in`. Panics if there is no layer `l`.
    pub fn layer_weights(&self, l: usize) -> ArrayView2<'_, f64> {
        let layer = self.layers[l];
        ArrayView2::from_shape((layer.fan_out, layer.fan_in), &self.params[layer.weights()])
            .expect("layer shape matches its range")
    }

    /// The biases of layer `l`. Panics if there is no layer `l`.
    pub fn layer_biases(&self, l: usize) -> &[f64] {
        &self.params[self.layers[l].biases()]
    }

    fn hidden_layers(&self) -> &[Layer] {
        &self.layers[..self.layers.len() - 1]
    }

    fn output_layer(&self) -> Layer {
        self.layers[self.layers.len() - 1]
    }

    fn check_features(&self, columns: usize) -> Result<(), ModelError> {
        if columns != self.features {
            return Err(ModelError::Shape(format!(
                "design matrix has {columns} columns, the model has {} features",
                self.features
            )));
        }
        Ok(())
    }

    fn check_out(&self, out: &[f64]) -> Result<(), ModelError> {
        if out.len() != self.params.len() {
            return Err(ModelError::Shape(format!(
                "gradient buffer has {} values, the model {}",
                out.len(),
                self.params.len()
            )));
        }
        Ok(())
    }

    /// `a W_lᵀ + b_l`, one row per row of `a`.
    fn affine(&self, l: usize, a: ArrayView2<'_, f64>) -> Array2<f64> {
        let mut z = a.dot(&self.layer_weights(l).t());
        z += &ArrayView1::from(self.layer_biases(l));
        z
    }

    /// The activations of every hidden layer for the rows of `x`, and the logits.
    fn forward(&self, x: ArrayView2<'_, f64>) -> (Vec<Array2<f64>>, Array1<f64>) {
        let mut acts: Vec<Array2<f64>> = Vec::with_capacity(self.layers.len() - 1);
        for l in 0..self.layers.len() - 1 {
            let input = acts.last().map_or(x, |a| a.view());
            let mut z = self.affine(l, input);
            z.mapv_inplace(|v| v.max(0.0));
            acts.push(z);
        }
        let out = self.layers.len() - 1;
        let input = acts.last().map_or(x, |a| a.view());
        let logits = self.affine(out, input).column(0).to_owned();
        (acts, logits)
    }

    /// The logit of every row of `x`, computed 4096 rows at a time.
    pub fn decision_function(&self, x: &Array2<f64>) -> Result<Array1<f64>, ModelError> {
        self.check_features(x.ncols())?;
        let mut logits = Array1::zeros(x.nrows());
        let mut start = 0;
        while start < x.nrows() {
            let end = (start + FORWARD_CHUNK_ROWS).min(x.nrows());
            let (_, z) = self.forward(x.slice(s![start..end, ..]));
            logits.slice_mut(s![start..end]).assign(&z);
            start = end;
        }
        Ok(logits)
    }
}

impl Model for MlpModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Mlp
    }

    fn layout(&self) -> String {
        let sizes = self.sizes();
        let shape = sizes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("-");
        format!(
            "mlp {shape}: for each of its {} layers, the fan_out × fan_in weights row-major, then \
             the fan_out biases; {} numbers",
            self.layers.len(),
            self.params.len()
        )
    }

    fn params(&self) -> &[f64] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [f64] {
        &mut self.params
    }

    fn feature_count(&self) -> usize {
        self.features
    }

    fn predict(&self, x: &Array2<f64>) -> Result<Array1<f64>, ModelError> {
        Ok(self.decision_function(x)?.mapv(sigmoid))
    }

    /// Backpropagation for one example: a forward pass keeping each hidden layer's
    /// activations, then `δ_L = p − y` at the output and, going down,
    /// `∂W_l = δ_l a_{l-1}ᵀ`, `∂b_l = δ_l`, `δ_{l-1} = (W_lᵀ δ_l) ⊙ [a_{l-1} > 0]`.
    /// Uses one scratch vector of `features + Σ hidden + 2 · max(hidden)` values.
    fn example_gradient(
        &self,
        x_row: ArrayView1<'_, f64>,
        y: f64,
        out: &mut [f64],
    ) -> Result<f64, ModelError> {
        self.check_features(x_row.len())?;
        self.check_out(out)?;
        let widest = self.layers.iter().map(|l| l.fan_out).max().unwrap_or(1);
        let acts_len = self.features
            + self
                .hidden_layers()
                .iter()
                .map(|l| l.fan_out)
                .sum::<usize>();
        let mut scratch = vec![0.0; acts_len + 2 * widest];
        let (acts, deltas) = scratch.split_at_mut(acts_len);
        // acts = [x | a_1 | a_2 …]; layer l reads acts[start_l .. start_l + fan_in].
        acts[..self.features]
            .iter_mut()
            .zip(x_row)
            .for_each(|(a, v)| *a = *v);
        let mut starts = [0usize; MAX_HIDDEN_LAYERS + 1];
        let mut start = 0;
        for (l, layer) in self.hidden_layers().iter().enumerate() {
            starts[l] = start;
            let (before, after) = acts.split_at_mut(start + layer.fan_in);
            let input = &before[start..];
            let w = &self.params[layer.weights()];
            let b = &self.params[layer.biases()];
            for (j, a) in after[..layer.fan_out].iter_mut().enumerate() {
                let row = &w[j * layer.fan_in..(j + 1) * layer.fan_in];
                let z = b[j] + row.iter().zip(input).map(|(w, a)| w * a).sum::<f64>();
                *a = z.max(0.0);
            }
            start += layer.fan_in;
        }
        let output = self.output_layer();
        let last = self.layers.len() - 1;
        starts[last] = start;
        let input = &acts[start..start + output.fan_in];
        let z = self.params[output.biases()][0]
            + self.params[output.weights()]
                .iter()
                .zip(input)
                .map(|(w, a)| w * a)
                .sum::<f64>();

        let (mut delta, mut below) = deltas.split_at_mut(widest);
        delta[0] = sigmoid(z) - y;
        for l in (0..self.layers.len()).rev() {
            let layer = self.layers[l];
            let input = &acts[starts[l]..starts[l] + layer.fan_in];
            let (gw, gb) =
                out[layer.offset..layer.biases().end].split_at_mut(layer.fan_out * layer.fan_in);
            for (j, &d) in delta[..layer.fan_out].iter().enumerate() {
                gw[j * layer.fan_in..(j + 1) * layer.fan_in]
                    .iter_mut()
                    .zip(input)
                    .for_each(|(g, a)| *g = d * a);
                gb[j] = d;
            }
            if l > 0 {
                // input = a_{l-1}, the output of a ReLU layer.
                let w = &self.params[layer.weights()];
                let next = &mut below[..layer.fan_in];
                next.iter_mut().for_each(|v| *v = 0.0);
                for (j, &d) in delta[..layer.fan_out].iter().enumerate() {
                    let row = &w[j * layer.fan_in..(j + 1) * layer.fan_in];
                    next.iter_mut().zip(row).for_each(|(n, w)| *n += w * d);
                }
                next.iter_mut()
                    .zip(input)
                    .for_each(|(n, a)| *n = if *a > 0.0 { *n } else { 0.0 });
                std::mem::swap(&mut delta, &mut below);
            }
        }
        Ok(log_loss_from_logit(z, y))
    }

    /// The same backpropagation for the whole batch as matrix products (ndarray
    /// hands f64 products to an optimised kernel): with `Δ_l` the batch's deltas
    /// (rows are examples), `∂W_l = Δ_lᵀ A_{l-1}`, `∂b_l = Σ_rows Δ_l`,
    /// `Δ_{l-1} = (Δ_l W_l) ⊙ [A_{l-1} > 0]`.
    fn batch_gradient(
        &self,
        x: &Array2<f64>,
        y: &Array1<f64>,
        rows: &[usize],
        out: &mut [f64],
    ) -> Result<f64, ModelError> {
        check_rows(x, y, self.features)?;
        self.check_out(out)?;
        if let Some(&bad) = rows.iter().find(|&&i| i >= x.nrows()) {
            return Err(ModelError::Shape(format!(
                "row {bad} asked of a matrix of {} rows",
                x.nrows()
            )));
        }
        let xb = x.select(Axis(0), rows);
        let (acts, logits) = self.forward(xb.view());
        let mut loss = 0.0;
        let mut delta = Array2::<f64>::zeros((rows.len(), 1));
        for ((d, &z), &i) in delta.iter_mut().zip(&logits).zip(rows) {
            loss += log_loss_from_logit(z, y[i]);
            *d = sigmoid(z) - y[i];
        }
        for l in (0..self.layers.len()).rev() {
            let layer = self.layers[l];
            let input = if l == 0 {
                xb.view()
            } else {
                acts[l - 1].view()
            };
            let (gw, gb) =
                out[layer.offset..layer.biases().end].split_at_mut(layer.fan_out * layer.fan_in);
            let mut gw = ArrayViewMut2::from_shape((layer.fan_out, layer.fan_in), gw)
                .expect("layer shape matches its range");
            general_mat_mul(1.0, &delta.t(), &input, 0.0, &mut gw);
            gb.iter_mut()
                .zip(delta.sum_axis(Axis(0)))
                .for_each(|(g, s)| *g = s);
            if l > 0 {
                let mut below = delta.dot(&self.layer_weights(l));
                Zip::from(&mut below).and(&acts[l - 1]).for_each(|d, &a| {
                    if a <= 0.0 {
                        *d = 0.0;
                    }
                });
                delta = below;
            }
        }
        Ok(loss)
    }

    /// `l2 · W` for every layer's weights; biases are not penalised.
    fn penalty_gradient(&self, l2: f64, out: &mut [f64]) {
        for layer in &self.layers {
            let range = layer.weights();
            out[range.clone()]
                .iter_mut()
                .zip(&self.params[range])
                .for_each(|(o, w)| *o += l2 * w);
        }
    }

    fn loss(&self, x: &Array2<f64>, y: &Array1<f64>) -> Result<f64, ModelError> {
        check_rows(x, y, self.features)?;
        if x.nrows() == 0 {
            return Ok(0.0);
        }
        let z = self.decision_function(x)?;
        let total: f64 = z
            .iter()
            .zip(y)
            .map(|(&z, &y)| log_loss_from_logit(z, y))
            .sum();
        Ok(total / z.len() as f64)
    }

    fn evaluate(&self, x: &Array2<f64>, y: &Array1<f64>) -> Result<Evaluation, ModelError> {
        check_rows(x, y, self.features)?;
        let z = self.decision_function(x)?;
        Ok(Evaluation::Binary(EvalPartial::from_scores(
            z.iter()
                .zip(y)
                .map(|(&z, &y)| (sigmoid(z), y == 1.0, log_loss_from_logit(z, y))),
        )))
    }

    /// `sizes` (`[features, hidden…, 1]`), the activations, and `layers`: for each
    /// layer from the first hidden one to the output, `weights` (`fan_out` rows of
    /// `fan_in` numbers) and `biases`.
    fn export(&self) -> serde_json::Map<String, serde_json::Value> {
        let layers: Vec<serde_json::Value> = (0..self.layers.len())
            .map(|l| {
                let weights: Vec<Vec<f64>> = self
                    .layer_weights(l)
                    .rows()
                    .into_iter()
                    .map(|r| r.to_vec())
                    .collect();
                serde_json::json!({
                    "weights": weights,
                    "biases": self.layer_biases(l),
                })
            })
            .collect();
        let mut out = serde_json::Map::new();
        out.insert("sizes".into(), self.sizes().into());
        out.insert("hidden_activation".into(), "relu".into());
        out.insert("output_activation".into(), "sigmoid".into());
        out.insert("layers".into(), layers.into());
        out
    }

    fn clone_box(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TrainConfig;
    use crate::models::logistic::LogisticModel;
    use crate::sgd;

    fn random_matrix(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.5..1.5))
    }

    /// A model whose biases are not 0, so that they are exercised too.
    fn perturbed(features: usize, hidden: &[usize], seed: u64) -> MlpModel {
        let mut m = MlpModel::new(features, hidden, seed).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xb1a5);
        for layer in m.layers.clone() {
            for b in &mut m.params[layer.biases()] {
                *b = rng.random_range(-0.3..0.3);
            }
        }
        m
    }

    fn accuracy(model: &dyn Model, x: &Array2<f64>, y: &Array1<f64>) -> f64 {
        let p = model.predict(x).unwrap();
        let correct = p
            .iter()
            .zip(y)
            .filter(|(p, y)| (**p >= 0.5) == (**y == 1.0))
            .count();
        correct as f64 / y.len() as f64
    }

    #[test]
    fn layout_and_param_count() {
        assert_eq!(param_count(40, &[16]), 40 * 16 + 16 + 16 + 1);
        assert_eq!(param_count(3, &[4, 2]), 12 + 4 + 8 + 2 + 2 + 1);
        assert_eq!(param_count(usize::MAX, &[2]), usize::MAX);
        let m = MlpModel::new(3, &[4, 2], 1).unwrap();
        assert_eq!(m.params().len(), 29);
        assert_eq!(m.sizes(), [3, 4, 2, 1]);
        assert_eq!(m.hidden(), [4, 2]);
        assert_eq!(m.layer_weights(0).dim(), (4, 3));
        assert_eq!(m.layer_weights(1).dim(), (2, 4));
        assert_eq!(m.layer_weights(2).dim(), (1, 2));
        // Row-major fan_out × fan_in: layer 0's weight into unit 1 from input 2 is
        // parameter 1 · 3 + 2, and its biases follow its 12 weights.
        let mut p = vec![0.0; 29];
        p[5] = 7.0;
        p[13] = 0.5;
        let m = MlpModel::from_params(&p, 3, &[4, 2]).unwrap();
        assert_eq!(m.layer_weights(0)[[1, 2]], 7.0);
        assert_eq!(m.layer_biases(0), [0.0, 0.5, 0.0, 0.0]);
        assert!(m.layout().contains("3-4-2-1"), "{}", m.layout());
        assert!(matches!(
            MlpModel::from_params(&p[..28], 3, &[4, 2]),
            Err(ModelError::ParamCount {
                found: 28,
                expected: 29,
                ..
            })
        ));
        let mut nan = p.clone();
        nan[3] = f64::NAN;
        assert!(matches!(
            MlpModel::from_params(&nan, 3, &[4, 2]),
            Err(ModelError::NonFinite { index: 3, .. })
        ));
        for hidden in [&[][..], &[4, 4, 4], &[0], &[1025]] {
            assert!(
                matches!(MlpModel::new(3, hidden, 1), Err(ModelError::Config(_))),
                "{hidden:?}"
            );
        }
        let err = MlpModel::new(5000, &[1000], 1).unwrap_err().to_string();
        assert!(err.contains("4000000"), "{err}");
    }

    /// Central differences `(ℓ(θ + h e_k) − ℓ(θ − h e_k)) / 2h` with `h = 1e-6`
    /// against backpropagation, for every parameter. The truncation error is
    /// O(h²) and the rounding error about 1e-16 / h = 1e-10, so the tolerance is
    /// 1e-7 (absolute, on gradients of order 0.01 to 1); a ReLU kink within h of a
    /// unit's input would break it, which these fixed seeds avoid.
    fn check_gradient(hidden: &[usize], seed: u64) {
        let features = 4;
        let m = perturbed(features, hidden, seed);
        let x = random_matrix(6, features, seed + 100);
        let n = m.param_count();
        let mut live = vec![false; n];
        for i in 0..x.nrows() {
            let y = f64::from(i % 2 == 1);
            let row = x.row(i);
            let mut g = vec![f64::NAN; n];
            let loss = m.example_gradient(row, y, &mut g).unwrap();
            let single = x.slice(s![i..=i, ..]).to_owned();
            let labels = Array1::from_elem(1, y);
            assert!((loss - m.loss(&single, &labels).unwrap()).abs() < 1e-12);
            let base = m.params().to_vec();
            let at = |p: &[f64]| {
                MlpModel::from_params(p, features, hidden)
                    .unwrap()
                    .loss(&single, &labels)
                    .unwrap()
            };
            let h = 1e-6;
            for (k, gk) in g.iter().enumerate() {
                let mut up = base.clone();
                up[k] += h;
                let mut down = base.clone();
                down[k] -= h;
                let numeric = (at(&up) - at(&down)) / (2.0 * h);
                assert!(
                    (numeric - gk).abs() < 1e-7,
                    "hidden {hidden:?}, example {i}, param {k}: numeric {numeric} vs backprop {gk}"
                );
                live[k] |= gk.abs() > 1e-4;
            }
        }
        // Not a vacuous check: most parameters get a gradient from some example.
        let live = live.iter().filter(|l| **l).count();
        println!("{hidden:?}: {live} of {n} parameters have a gradient");
        assert!(
            2 * live > n,
            "{hidden:?}: only {live} of {n} parameters have a gradient"
        );
    }

    #[test]
    fn example_gradient_matches_finite_differences_with_one_hidden_layer() {
        check_gradient(&[5], 11);
    }

    #[test]
    fn example_gradient_matches_finite_differences_with_two_hidden_layers() {
        check_gradient(&[6, 3], 12);
    }

    #[test]
    fn example_gradient_checks_its_inputs() {
        let m = MlpModel::new(3, &[4], 1).unwrap();
        let mut g = vec![0.0; m.param_count()];
        assert!(
            m.example_gradient(Array1::zeros(2).view(), 1.0, &mut g)
                .is_err()
        );
        let mut short = vec![0.0; 3];
        assert!(
            m.example_gradient(Array1::zeros(3).view(), 1.0, &mut short)
                .is_err()
        );
    }

    #[test]
    fn batch_gradient_is_the_sum_of_example_gradients() {
        for hidden in [&[7][..], &[5, 4]] {
            let m = perturbed(3, hidden, 21);
            let x = random_matrix(9, 3, 22);
            let y = Array1::from_iter((0..9).map(|i| f64::from(i % 3 == 0)));
            let rows = [0, 3, 3, 8, 1, 5];
            let n = m.param_count();
            let mut fast = vec![f64::NAN; n];
            let loss = m.batch_gradient(&x, &y, &rows, &mut fast).unwrap();
            let mut slow = vec![0.0; n];
            let mut want_loss = 0.0;
            let mut g = vec![0.0; n];
            for &i in &rows {
                want_loss += m.example_gradient(x.row(i), y[i], &mut g).unwrap();
                slow.iter_mut().zip(&g).for_each(|(s, v)| *s += v);
            }
            assert!((loss - want_loss).abs() < 1e-12, "{loss} vs {want_loss}");
            for (k, (a, b)) in fast.iter().zip(&slow).enumerate() {
                assert!((a - b).abs() < 1e-12, "{hidden:?} param {k}: {a} vs {b}");
            }
            let mut empty = vec![f64::NAN; n];
            assert_eq!(m.batch_gradient(&x, &y, &[], &mut empty).unwrap(), 0.0);
            assert!(empty.iter().all(|v| *v == 0.0));
            assert!(m.batch_gradient(&x, &y, &[9], &mut empty).is_err());
        }
    }

    #[test]
    fn the_penalty_leaves_biases_alone() {
        let m = perturbed(3, &[4, 2], 5);
        let mut pen = vec![1.0; m.param_count()];
        m.penalty_gradient(0.5, &mut pen);
        for layer in &m.layers {
            for k in layer.weights() {
                assert_eq!(pen[k], 1.0 + 0.5 * m.params[k]);
            }
            for k in layer.biases() {
                assert_eq!(pen[k], 1.0, "bias {k} penalised");
            }
        }
    }

    #[test]
    fn init_is_deterministic_per_seed_and_scaled_per_layer() {
        let a = MlpModel::new(10, &[8, 4], 42).unwrap();
        assert_eq!(a, MlpModel::new(10, &[8, 4], 42).unwrap());
        let b = MlpModel::new(10, &[8, 4], 43).unwrap();
        let same = a
            .params()
            .iter()
            .zip(b.params())
            .filter(|(x, y)| x == y)
            .count();
        // Only the biases (8 + 4 + 1, all 0) coincide.
        assert_eq!(same, 13);
        let last = a.layers.len() - 1;
        for (l, layer) in a.layers.iter().enumerate() {
            let bound = if l < last {
                (6.0 / layer.fan_in as f64).sqrt()
            } else {
                (6.0 / (layer.fan_in + layer.fan_out) as f64).sqrt()
            };
            let w = &a.params[layer.weights()];
            assert!(w.iter().all(|w| w.abs() < bound && *w != 0.0));
            let max = w.iter().fold(0.0f64, |m, w| m.max(w.abs()));
            assert!(max > 0.5 * bound, "layer {l}: max |w| {max}, bound {bound}");
            assert!(a.layer_biases(l).iter().all(|b| *b == 0.0));
        }
        // Through `build`, from the task's seed: what coordinator and partners derive.
        let spec = crate::task::ModelSpec {
            kind: ModelKind::Mlp,
            l2: 0.0,
            hidden: vec![8, 4],
            family: None,
            power: None,
            factors: None,
        };
        let schema: crate::FeatureSchema = toml::from_str(
            "numeric = [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\", \"i\", \"j\"]\n\
             [label]\ncolumn = \"y\"\npositive = \"1\"\n",
        )
        .unwrap();
        let built = crate::model::build(&spec, &schema, 42).unwrap();
        assert_eq!(built.kind(), ModelKind::Mlp);
        assert_eq!(built.params(), a.params());
        assert_eq!(crate::model::param_count(&spec, &schema), a.param_count());
    }

    /// XOR-like labels, `y = 1` when `x0 · x1 > 0`: no linear rule does better than
    /// chance, a small MLP fits them.
    #[test]
    fn sgd_fits_a_rule_logistic_regression_cannot() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = Array2::from_shape_fn((800, 2), |_| rng.random_range(-1.0..1.0));
        let y = x.map_axis(Axis(1), |r| f64::from(r[0] * r[1] > 0.0));
        let cfg = TrainConfig {
            epochs: 60,
            batch_size: 16,
            learning_rate: 0.1,
            l2: 0.0,
        };
        let mut mlp = MlpModel::new(2, &[16], 4).unwrap();
        let before = mlp.loss(&x, &y).unwrap();
        let report = sgd::train(&mut mlp, &x, &y, &cfg, None, &mut rng, &mut |_| {}).unwrap();
        assert_eq!(report.steps, 60 * 50);
        let after = mlp.loss(&x, &y).unwrap();
        let mut logistic = LogisticModel::zeros(2);
        sgd::train(&mut logistic, &x, &y, &cfg, None, &mut rng, &mut |_| {}).unwrap();
        let (mlp_acc, log_acc) = (accuracy(&mlp, &x, &y), accuracy(&logistic, &x, &y));
        println!("XOR: mlp accuracy {mlp_acc}, logistic regression {log_acc}");
        assert!(
            mlp_acc > 0.9,
            "mlp accuracy {mlp_acc} (loss {before} -> {after})"
        );
        assert!(log_acc < 0.7, "logistic accuracy {log_acc}");
        assert!(after < 0.5 * before, "loss {before} -> {after}");

        let partial = EvalPartial::evaluate(&mlp, &x, &y).unwrap();
        assert_eq!(partial.n, 800);
        assert_eq!(
            (partial.tp + partial.tn) as f64 / 800.0,
            mlp_acc,
            "evaluate and predict agree"
        );
        assert!((partial.log_loss_sum / 800.0 - after).abs() < 1e-9);
    }

    #[test]
    fn predict_works_in_chunks_and_export_names_every_layer() {
        let m = perturbed(3, &[4, 2], 9);
        let x = random_matrix(FORWARD_CHUNK_ROWS + 17, 3, 10);
        let p = m.predict(&x).unwrap();
        assert_eq!(p.len(), x.nrows());
        let (_, whole) = m.forward(x.view());
        for (a, z) in p.iter().zip(&whole) {
            assert!((a - sigmoid(*z)).abs() < 1e-15);
        }
        assert!(m.predict(&random_matrix(2, 4, 1)).is_err());
        assert_eq!(
            m.loss(&Array2::zeros((0, 3)), &Array1::zeros(0)).unwrap(),
            0.0
        );

        let doc = serde_json::Value::Object(m.export());
        assert_eq!(doc["sizes"], serde_json::json!([3, 4, 2, 1]));
        assert_eq!(doc["layers"].as_array().unwrap().len(), 3);
        assert_eq!(doc["layers"][0]["weights"].as_array().unwrap().len(), 4);
        assert_eq!(
            doc["layers"][0]["weights"][1][2],
            m.layer_weights(0)[[1, 2]]
        );
        assert_eq!(doc["layers"][2]["biases"][0], m.layer_biases(2)[0]);
        let boxed: Box<dyn Model> = m.clone_box();
        assert_eq!(boxed.params(), m.params());
        assert_eq!(boxed.kind(), ModelKind::Mlp);
    }
}
