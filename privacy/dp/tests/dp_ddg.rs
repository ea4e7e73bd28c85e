//! Distributed discrete Gaussian: encode → modular sum → decode, rotation, wrap-around, ρ.

use consortia_dp::ddg::{
    DdgParams, add_mod, ddg_round_rho, decode, encode, encode_sum, inverse_rotate, rotate,
    unwrap_signed, wrap,
};

#[test]
fn inverse_rotation_recovers_input_and_padding_is_zero() {
    let seed = [7u8; 32];
    let x: Vec<f64> = (0..100)
        .map(|i| (i as f64 * 0.37).sin() * 3.0 - 0.5)
        .collect();
    let y = rotate(&x, 128, &seed).unwrap();
    assert_eq!(y.len(), 128);
    // Orthogonal: the norm is preserved.
    let nx: f64 = x.iter().map(|v| v * v).sum();
    let ny: f64 = y.iter().map(|v| v * v).sum();
    assert!((nx - ny).abs() < 1e-10 * nx);
    let back = inverse_rotate(&y, 128, &seed).unwrap();
    for (i, v) in back.iter().enumerate() {
        let want = if i < 100 { x[i] } else { 0.0 };
        assert!((v - want).abs() < 1e-12, "coordinate {i}: {v} vs {want}");
    }
    // A different seed does not invert it.
    let wrong = inverse_rotate(&y, 100, &[8u8; 32]).unwrap();
    assert!(wrong.iter().zip(&x).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn modular_wrap_round_trips_negatives() {
    for bits in [2u32, 8, 16, 32, 62] {
        let half = 1i64 << (bits - 1);
        for v in [-half, -half + 1, -1, 0, 1, half - 1, -3 % half, 3 % half] {
            let w = wrap(v, bits);
            assert!(w < (1u64 << bits));
            assert_eq!(unwrap_signed(w, bits), v, "bits {bits} value {v}");
        }
    }
    // Sum of negatives wraps and comes back.
    let bits = 16;
    let mut acc = vec![wrap(-30_000, bits)];
    add_mod(&mut acc, &[wrap(-2_000, bits)], bits).unwrap();
    add_mod(&mut acc, &[wrap(1_000, bits)], bits).unwrap();
    assert_eq!(unwrap_signed(acc[0], bits), -31_000);
}

/// n = 10 partners, d = 100 (padded to 128), c = 1, z = 1, 24-bit modulus. The decoded mean
/// differs from the true mean of the clipped updates by rotated noise of per-coordinate variance
/// at most v = n·γ²·(σ_int² + 1/4)/n² (discrete noise plus rounding error, each coordinate of
/// the rotated integer vector), so ‖error‖² ≈ v·χ²-like with d = 100 degrees of freedom. The
/// test allows 2.5·d·v: for a χ²(100) variable P(X > 250) < 1e-15, and the bounded rounding
/// terms only shrink the tail, so the false-failure probability is below 1e-12.
#[test]
fn encode_sum_decode_recovers_the_mean() {
    // z = 1: the noise dominates; z = 0.01: the decoded mean is within ~0.03 in L2 of the truth,
    // which a sign, scale or rotation error would miss by O(1).
    for z in [1.0, 0.01] {
        encode_sum_decode(z);
    }
}

fn encode_sum_decode(z: f64) {
    let (n, dim) = (10usize, 100usize);
    let params = DdgParams::calibrate(dim, 1.0, z, n, n, 24).unwrap();
    assert_eq!(params.padded_dim(), 128);
    let seed = [42u8; 32];
    let updates: Vec<Vec<f64>> = (0..n)
        .map(|k| {
            (0..dim)
                .map(|i| ((i * (k + 3)) as f64 * 0.1).cos() * 0.08 - 0.01 * k as f64)
                .collect()
        })
        .collect();
    // Some updates have norm > c = 1 and get clipped; compute the clipped mean.
    let mut true_mean = vec![0.0; dim];
    for u in &updates {
        let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        let f = (1.0 / norm).min(1.0);
        true_mean
            .iter_mut()
            .zip(u)
            .for_each(|(m, v)| *m += v * f / n as f64);
    }
    let mut sum = vec![0u64; params.padded_dim()];
    for u in &updates {
        let enc = encode(&params, u, &seed).unwrap();
        assert!(enc.iter().all(|&v| v < params.modulus()));
        add_mod(&mut sum, &enc, params.bits()).unwrap();
    }
    let decoded = decode(&params, &sum, &seed).unwrap();
    assert_eq!(decoded.len(), dim);
    let err2: f64 = decoded
        .iter()
        .zip(&true_mean)
        .map(|(s, m)| (s / n as f64 - m).powi(2))
        .sum();
    let g = params.gamma();
    let s = params.local_sigma();
    let v = n as f64 * g * g * (s * s + 0.25) / (n * n) as f64;
    let allowed = 2.5 * dim as f64 * v;
    assert!(err2 < allowed, "squared error {err2} > {allowed}");
    // …and the noise is really there: at least 0.3·d·v (P(χ²(100) < 30) < 1e-15).
    assert!(err2 > 0.3 * dim as f64 * n as f64 * g * g * s * s / (n * n) as f64);
}

#[test]
fn round_rho_includes_tau_and_matches_gaussian_when_negligible() {
    // Large integer σ: τ ≈ 0, ρ ≈ Δ₂²/(2·n·σ²) ≈ 1/(2z²) (Δ₂ slightly above c/γ).
    let p = DdgParams::calibrate(100, 1.0, 1.0, 10, 10, 24).unwrap();
    assert!(p.tau() < 1e-300);
    let rho = ddg_round_rho(&p);
    let plain = p.norm_bound().powi(2) / (2.0 * 10.0 * p.local_sigma().powi(2));
    assert!((rho - plain).abs() < 1e-12 * plain, "{rho} vs {plain}");
    assert!((0.5..0.5 * 1.01).contains(&rho), "{rho}");
    // Small integer σ (0.6): τ is large and must raise ρ above the plain Gaussian figure.
    let small = DdgParams::new(100, 1.0, 0.1, 0.0, 0.6, 10, 16).unwrap();
    assert!(small.tau() > 1e-3);
    let plain_small = small.norm_bound().powi(2) / (2.0 * 10.0 * 0.36);
    assert!(ddg_round_rho(&small) > plain_small * 1.01);
}

#[test]
fn encode_rejects_bad_input() {
    let p = DdgParams::calibrate(4, 1.0, 1.0, 3, 3, 20).unwrap();
    assert!(encode(&p, &[1.0, 2.0], &[0; 32]).is_err());
    assert!(encode(&p, &[1.0, f64::NAN, 0.0, 0.0], &[0; 32]).is_err());
    assert!(decode(&p, &[0; 3], &[0; 32]).is_err());
    assert!(DdgParams::new(4, 1.0, 0.01, 1.0, 1.0, 3, 20).is_err());
    assert!(DdgParams::new(4, 1.0, 0.01, 0.5, 1.0, 0, 20).is_err());
    assert!(DdgParams::new(4, 1.0, 1e-9, 0.5, 1.0, 3, 20).is_err());
}

/// The record unit's encoding keeps a partner's sum of clipped rows whole (its norm is many
/// times C) and refuses conditional rounding. Three partners, d = 41 (d' = 64), sums of norm
/// ≈ 50 with C = 1, γ = 2^-16, local σ = z·2^16/√3 with z = 0.01: the decoded total differs
/// from the true total by noise of real std ≈ 0.01 per coordinate (plus rounding of 2^-16),
/// so ‖error‖ ≈ 0.01·√41 ≈ 0.064; the test allows 0.2 (a χ²(64) tail beyond 9.7× its mean,
/// probability < 1e-30), while a clip to C would be off by about 100.
#[test]
fn encode_sum_keeps_a_partner_sum_whole() {
    let spec_gamma = 1.0 / 65536.0;
    let sigma = 0.01 * 65536.0 / 3f64.sqrt();
    let p = DdgParams::new(41, 1.0, spec_gamma, 0.0, sigma, 3, 40).unwrap();
    let seed = [9u8; 32];
    let mut total = vec![0.0; 41];
    let mut acc = vec![0u64; 64];
    for k in 0..3 {
        let sum: Vec<f64> = (0..41)
            .map(|i| ((i * 7 + k * 13) as f64 * 0.61).sin() * 8.0)
            .collect();
        total.iter_mut().zip(&sum).for_each(|(t, s)| *t += s);
        let enc = encode_sum(&p, &sum, &seed).unwrap();
        add_mod(&mut acc, &enc, 40).unwrap();
    }
    let got = decode(&p, &acc, &seed).unwrap();
    let err: f64 = got
        .iter()
        .zip(&total)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    assert!(err < 0.2, "decoded total off by {err}");
    let with_beta = DdgParams::new(41, 1.0, spec_gamma, 0.5, sigma, 3, 40).unwrap();
    assert!(encode_sum(&with_beta, &total, &seed).is_err());
}
