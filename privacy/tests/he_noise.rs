//! Empirical noise budget: sums of max-magnitude updates from every partner
//! decode exactly at the documented plaintext bits, and the measured noise
//! stays below the model.

use consortia_privacy::he::*;

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
    // Model: Var(G) + K·Var(TUniform(b_f)); the flooding dominates.
    let b_f = params.flood_bound_log2(parties) as i32;
    let model = params.encryption_noise_variance(parties, parties)
        + f64::from(parties) * (2f64.powi(2 * b_f + 1) + 1.0) / 6.0;
    // The sample variance of N ≥ 2048 values of a sum of bounded terms has a
    // relative standard deviation below 3 %; 1.25× is over 8 of them away, so
    // the false-failure probability is below 10^-12.
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
    for parties in [2, 5, 10] {
        check(HeParams::Fast64, parties);
    }
}

#[test]
fn secure128_noise_budget() {
    for parties in [2, 7] {
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
        // Secure128 floods at 2^40 × the encryption-noise bound.
        let k = 10;
        let ratio = f64::from(params.flood_bound_log2(k)) - params.encryption_noise_bound_log2(k);
        assert!(ratio >= f64::from(params.flooding_ratio_log2()));
    }
    // The table documented on `HeParams::plaintext_bits`.
    for (k, secure, fast) in [
        (2, 45, 26),
        (3, 44, 26),
        (5, 43, 24),
        (10, 41, 22),
        (20, 39, 20),
        (50, 36, 18),
        (100, 34, 16),
        (1000, 28, 10),
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
