//! Arithmetic shared by the models whose parameters are weights then one intercept
//! and whose per-example loss depends on the example only through the linear
//! predictor `η = w · x + b` (logistic regression, the GLM): the gradient of such a
//! loss is `∂ℓ/∂η · x` for the weights and `∂ℓ/∂η` for the intercept, and the L2
//! penalty leaves the intercept alone.

use ndarray::{Array1, Array2, ArrayView1, Axis};

use crate::model::ModelError;

/// The weights of `params` (all but the last value).
pub(crate) fn weights(params: &[f64]) -> &[f64] {
    &params[..params.len() - 1]
}

/// The intercept of `params` (the last value).
pub(crate) fn intercept(params: &[f64]) -> f64 {
    params[params.len() - 1]
}

/// Writes one example's gradient into `out` given `∂ℓ/∂η` at it.
pub(crate) fn example_gradient(x_row: ArrayView1<'_, f64>, d_eta: f64, out: &mut [f64]) {
    let f = out.len() - 1;
    out[..f]
        .iter_mut()
        .zip(x_row)
        .for_each(|(o, v)| *o = d_eta * v);
    out[f] = d_eta;
}

/// Writes the sum over `rows` of the examples' gradients into `out` as one matrix
/// product (ndarray hands f64 products to an optimised kernel) and returns the sum
/// of their losses. `at(η, y)` gives an example's `(∂ℓ/∂η, ℓ)`. `x` and `y` must
/// already be checked against each other and the model.
pub(crate) fn batch_gradient(
    params: &[f64],
    x: &Array2<f64>,
    y: &Array1<f64>,
    rows: &[usize],
    out: &mut [f64],
    at: impl Fn(f64, f64) -> (f64, f64),
) -> Result<f64, ModelError> {
    let xb = x.select(Axis(0), rows);
    let z = xb.dot(&ArrayView1::from(weights(params)));
    let b = intercept(params);
    let mut residual = Array1::<f64>::zeros(rows.len());
    let (mut loss, mut residual_sum) = (0.0, 0.0);
    for ((r, &zi), &i) in residual.iter_mut().zip(z.iter()).zip(rows) {
        let (d, l) = at(zi + b, y[i]);
        *r = d;
        residual_sum += d;
        loss += l;
    }
    let grad = xb.t().dot(&residual);
    let f = params.len() - 1;
    out[..f].iter_mut().zip(&grad).for_each(|(o, g)| *o = *g);
    out[f] = residual_sum;
    Ok(loss)
}

/// Adds `l2 · w` to the weights' entries of `out` (the intercept is not penalised).
pub(crate) fn penalty_gradient(params: &[f64], l2: f64, out: &mut [f64]) {
    out.iter_mut()
        .zip(weights(params))
        .for_each(|(o, w)| *o += l2 * w);
}
