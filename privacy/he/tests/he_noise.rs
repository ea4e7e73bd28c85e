//! Empirical noise budget: sums of max-magnitude updates from every partner
//! decode exactly at the documented plaintext bits under Gaussian flooding of
//! σ_f = 2^r·B per partner, the measured noise matches the model, and the key
//! tolerates the documented number of releases.

use consortia_he::*;

fn check(params: HeParams, parties: u32) {
    let session = KeySession::new(params, rand::random());
    let shares: Vec<KeyShare> = (0..parties)
        .map(|i| KeyShareGen::new(&session).generate(PartyId(i)))
        .collect();
    let mut agg = CollectiveKeyAggregator::new(&session, parties).unwrap();
    for s in &shares {
        agg.add_commitment(s.public.party(), s.commitment).unwrap();
    }
    for s in &shares {
        agg.add_share(s.public.party(), s.public.clone()).unwrap();
    }
    let key = agg.finish().unwrap();
    let bits = key.plaintext_bits();
    assert_eq!(bits, params.plaintext_bits(parties));
    let n = params.polynomial_size();
    let shape = Shape::new(&key, n as u64).unwrap();
    // Max magnitude: every partner sends 2^p − 1 (−1 in two's complement) in
    // the even coefficients and −2^(p−1) in the odd ones.
    let max = (1u64 << bits) - 1;
    let min = 1u64 << (bits - 1);
    let update: Vec<u64> = (0..n).map(|i| if i % 2 == 0 { max } else { min }).collect();
    let wires: Vec<Vec<u8>> = (0..parties)
        .map(|_| Encryptor::new(&key).encrypt(&update).unwrap().to_bytes())
        .collect();
    let sum = Aggregate::from_ciphertexts(shape, wires.iter().map(Vec::as_slice)).unwrap();
    let ds: Vec<DecryptionShare> = shares
        .iter()
        .map(|s| {
            PartialDecryptor::new(&s.secret)
                .partial_decrypt(&sum, parties)
                .unwrap()
        })
        .collect();
    let expected: Vec<u64> = update
        .iter()
        .map(|&v| v.wrapping_mul(u64::from(parties)) & max)
        .collect();
    assert_eq!(
        combine(&sum, &ds).unwrap(),
        expected,
        "{params:?} K={parties}: sum not exact"
    );

    let noise = decryption_noise(&sum, &ds, &expected).unwrap();
    let var = noise.iter().map(|&e| (e as f64).powi(2)).sum::<f64>() / noise.len() as f64;
    // Model: Var(G) + K·σ_f²; the Gaussian flooding dominates.
    let sigma_f = params.flood_sigma(parties);
    let model =
        params.encryption_noise_variance(parties, parties) + f64::from(parties) * sigma_f * sigma_f;
    // The noise is Gaussian up to a relative 2^-40 of its variance, so the
    // sample variance of N ≥ 2048 values has a relative standard deviation of
    // sqrt(2/N) ≤ 3.2 %; 1.25× is over 7 of them away, so the false-failure
    // probability is below 10^-12.
    assert!(
        var < 1.25 * model,
        "{params:?} K={parties}: variance 2^{:.2} > model 2^{:.2}",
        var.log2(),
        model.log2()
    );
    assert!(
        var > 0.75 * model,
        "{params:?} K={parties}: variance 2^{:.2} far below model 2^{:.2}",
        var.log2(),
        model.log2()
    );
    let half_delta = 2f64.powi(params.delta_log(parties) as i32 - 1);
    let worst = noise
        .iter()
        .map(|e| e.unsigned_abs() as f64)
        .fold(0.0, f64::max);
    assert!(
        worst < half_delta,
        "{params:?} K={parties}: noise 2^{:.2} reaches Δ/2",
        worst.log2()
    );
    eprintln!(
        "{params:?} K={parties}: p={bits} noise std 2^{:.2} (model 2^{:.2}), max 2^{:.2} < Δ/2 = 2^{:.0}",
        var.sqrt().log2(),
        model.sqrt().log2(),
        worst.log2(),
        half_delta.log2()
    );
}

#[test]
fn fast64_noise_budget() {
    for parties in [2, 3, 5, 10] {
        check(HeParams::Fast64, parties);
    }
}

#[test]
fn secure128_noise_budget() {
    for parties in [2, 3, 7] {
        check(HeParams::Secure128, parties);
    }
}

#[test]
fn plaintext_bits_shrink_with_partners() {
    for params in [HeParams::Fast64, HeParams::Secure128] {
        let mut last = u32::MAX;
        for k in [1, 2, 3, 5, 10, 20, 50, 100, 1000] {
            let bits = params.plaintext_bits(k);
            assert!(bits <= last, "{params:?}: {bits} bits at {k} partners");
            last = bits;
        }
        // σ_f = 2^r × the encryption-noise bound B (r = 40 for Secure128).
        let k = 10;
        let ratio = params.flood_sigma(k).log2() - params.encryption_noise_bound_log2(k);
        assert!((ratio - f64::from(params.flooding_ratio_log2())).abs() < 1e-9);
        // Decoding room: Δ/2 above the summed flooding's 12σ bound plus B.
        let half_delta = 2f64.powi(params.delta_log(k) as i32 - 1);
        let b = 2f64.powf(params.encryption_noise_bound_log2(k));
        assert!(half_delta > 12.0 * f64::from(k).sqrt() * params.flood_sigma(k) + b);
        assert!(half_delta <= 2.0 * (params.flood_sum_bound(k) + b));
    }
    assert_eq!(HeParams::Secure128.flooding_ratio_log2(), 40);
    // The table documented on `HeParams::plaintext_bits`.
    for (k, secure, fast) in [
        (2, 43, 24),
        (3, 42, 23),
        (5, 41, 22),
        (10, 39, 21),
        (20, 38, 19),
        (50, 36, 17),
        (100, 34, 16),
        (1000, 29, 11),
    ] {
        assert_eq!(
            HeParams::Secure128.plaintext_bits(k),
            secure,
            "Secure128, {k} partners"
        );
        assert_eq!(
            HeParams::Fast64.plaintext_bits(k),
            fast,
            "Fast64, {k} partners"
        );
    }
}

/// How many releases a key tolerates (params module docs): 2^40 flooded
/// coefficients for Secure128 (σ_f = 2^40·B), 2^10 for Fast64 (σ_f = 2^8·B).
#[test]
fn releases_per_key_follow_the_renyi_budget() {
    assert_eq!(HeParams::Secure128.max_flooded_coefficients_log2(), 40);
    assert_eq!(HeParams::Fast64.max_flooded_coefficients_log2(), 10);
    // Per coefficient, ln R_α ≤ 1.5625·α·(B/σ_f)²/2 (dither included); the
    // flooding's own total at the cap stays far below the allowed ln R_α ≤ 1,
    // and at 2^(2r − 5.64) coefficients it reaches it.
    let per_coefficient = |r: i32| 1.5625 * FLOODING_RENYI_ORDER * 2f64.powi(-2 * r) / 2.0;
    assert!(per_coefficient(40) * 2f64.powi(40) < 1e-6);
    assert!(per_coefficient(8) * 2f64.powi(10) <= 1.0);
    assert!(per_coefficient(8) * 2f64.powi(11) > 1.0);
    // One 4096-value polynomial per release: 2^28 releases; 2^20 values: 2^20.
    assert_eq!(HeParams::Secure128.max_releases_per_key(4096), 1 << 28);
    assert_eq!(HeParams::Secure128.max_releases_per_key(1), 1 << 28);
    assert_eq!(HeParams::Secure128.max_releases_per_key(4097), 1 << 27);
    assert_eq!(HeParams::Secure128.max_releases_per_key(1 << 20), 1 << 20);
    // Fast64: not even one polynomial's release fits the stated loss.
    assert_eq!(HeParams::Fast64.max_releases_per_key(2048), 0);
    assert_eq!(HeParams::Fast64.max_releases_per_key(1), 0);
}
