//! Statistical checks that the sampled noise has the configured standard deviation.

use consortia_dp::mechanism::{add_gaussian_noise, discrete_gaussian};

/// Two-sided z threshold. For a standard normal, P(|Z| > 5.5) = 3.8e-8.
const Z: f64 = 5.5;

/// Wilson–Hilferty: for X ~ χ²(k), (X/k)^(1/3) is approximately N(1 − 2/(9k), 2/(9k)); at
/// k ≈ 20,000 the approximation's error in the tail probability is negligible next to 3.8e-8.
fn chi_square_z(statistic: f64, k: f64) -> f64 {
    let m = 1.0 - 2.0 / (9.0 * k);
    let s = (2.0 / (9.0 * k)).sqrt();
    ((statistic / k).cbrt() - m) / s
}

fn mean_and_variance(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

/// 20,000 draws of the continuous-value Gaussian noise (OpenDP, grid 2^-50) with σ = 3.
/// (n − 1)s²/σ² ~ χ²(n − 1): the test fails only if the Wilson–Hilferty z exceeds 5.5 in
/// absolute value, and the mean test only if |mean| > 5.5σ/√n. False-failure probability of the
/// whole test < 2 × 3.8e-8 < 1e-7.
#[test]
fn gaussian_noise_has_configured_std() {
    let sigma = 3.0;
    let n = 20_000;
    let mut xs = vec![0.0; n];
    add_gaussian_noise(&mut xs, sigma).expect("noise");
    let (mean, var) = mean_and_variance(&xs);
    let k = (n - 1) as f64;
    let z = chi_square_z(k * var / (sigma * sigma), k);
    assert!(
        z.abs() < Z,
        "sample variance {var} vs sigma^2 {}: z = {z}",
        sigma * sigma
    );
    assert!(
        mean.abs() < Z * sigma / (n as f64).sqrt(),
        "sample mean {mean} too far from 0"
    );
    // A 10 % error in σ would be caught: σ = 3.3 gives z ≈ +30 on the same data scale.
    let z_wrong = chi_square_z(k * var / (3.3f64 * 3.3), k);
    assert!(z_wrong.abs() > Z, "test has no power: {z_wrong}");
}

/// 20,000 discrete Gaussian shares (OpenDP `sample_discrete_gaussian`) with σ = 2.5: the
/// discrete Gaussian's variance differs from σ² by less than 1e-50 at this σ (CKS20 Prop. 19
/// and its lower bound), so the same chi-square check applies. False failure < 1e-7.
#[test]
fn discrete_gaussian_shares_have_configured_std() {
    let sigma = 2.5;
    let n = 20_000;
    let xs: Vec<f64> = (0..n)
        .map(|_| discrete_gaussian(sigma).expect("sample") as f64)
        .collect();
    let (mean, var) = mean_and_variance(&xs);
    let k = (n - 1) as f64;
    let z = chi_square_z(k * var / (sigma * sigma), k);
    assert!(
        z.abs() < Z,
        "sample variance {var} vs {}: z = {z}",
        sigma * sigma
    );
    assert!(mean.abs() < Z * sigma / (n as f64).sqrt(), "mean {mean}");
    assert!(xs.iter().all(|x| x.fract() == 0.0));
}
