//! End-to-end multiparty protocol: collective key generation, encryption,
//! aggregation, joint decryption.

use consortia_he::*;
use rand::Rng;

struct Committee {
    session: KeySession,
    secrets: Vec<SecretKeyShare>,
    key: CollectivePublicKey,
}

fn committee(params: HeParams, parties: u32) -> Committee {
    let session = KeySession::new(params, rand::random());
    let shares: Vec<KeyShare> = (0..parties)
        .map(|i| KeyShareGen::new(&session).generate(PartyId(i)))
        .collect();
    let mut agg = CollectiveKeyAggregator::new(&session, parties).unwrap();
    for s in &shares {
        agg.add_commitment(s.public.party(), s.commitment).unwrap();
    }
    for s in &shares {
        // Shares travel as bytes.
        let share = PublicKeyShare::from_bytes(&s.public.to_bytes(), &session).unwrap();
        agg.add_share(s.public.party(), share).unwrap();
    }
    let key = agg.finish().unwrap();
    let key = CollectivePublicKey::from_bytes(&key.to_bytes(), &session).unwrap();
    Committee {
        session,
        secrets: shares.into_iter().map(|s| s.secret).collect(),
        key,
    }
}

/// Runs one round: every party encrypts its update, the coordinator sums the
/// wire bytes chunk by chunk, every party recomputes the aggregate, checks the
/// digest and decrypts; returns the combined sum.
fn round(c: &Committee, updates: &[Vec<u64>], shape: &Shape) -> Vec<u64> {
    let wires: Vec<Vec<u8>> = updates
        .iter()
        .map(|u| {
            Encryptor::new(&c.key)
                .encrypt_with_shape(u, shape)
                .unwrap()
                .to_bytes()
        })
        .collect();
    let mut coordinator = Aggregate::new(*shape).unwrap();
    for w in &wires {
        let v = EncryptedVector::from_bytes(w, shape).unwrap();
        for (i, chunk) in v.chunks().enumerate().rev() {
            coordinator.add_bytes(i as u32, chunk).unwrap();
        }
    }
    // The coordinator persists and reloads its running sum.
    let coordinator = Aggregate::from_bytes(&coordinator.to_bytes(), shape).unwrap();
    assert_eq!(coordinator.contributors(), updates.len() as u32);
    let shares: Vec<DecryptionShare> = c
        .secrets
        .iter()
        .map(|sk| {
            let own = Aggregate::from_ciphertexts(*shape, wires.iter().map(Vec::as_slice)).unwrap();
            assert_eq!(own.digest(), coordinator.digest());
            let share = PartialDecryptor::new(sk)
                .partial_decrypt(&own, updates.len() as u32)
                .unwrap();
            DecryptionShare::from_bytes(&share.to_bytes(), shape).unwrap()
        })
        .collect();
    combine(&coordinator, &shares).unwrap()
}

fn check_sum(params: HeParams, parties: u32, values: usize, chunk_polys: Option<u32>) {
    let c = committee(params, parties);
    let bits = c.key.plaintext_bits();
    assert_eq!(bits, params.plaintext_bits(parties));
    let mut shape = Shape::new(&c.key, values as u64).unwrap();
    if let Some(cp) = chunk_polys {
        shape = shape.with_chunk_polys(cp).unwrap();
    }
    let mut rng = rand::rng();
    // Signed updates of up to 16 bits, plus full-range values that wrap.
    let signed: Vec<Vec<i64>> = (0..parties)
        .map(|_| {
            (0..values)
                .map(|_| rng.random_range(-(1i64 << 15)..(1i64 << 15)))
                .collect()
        })
        .collect();
    let updates: Vec<Vec<u64>> = signed
        .iter()
        .map(|u| encode_signed(u, bits).unwrap())
        .collect();
    let sum = round(&c, &updates, &shape);
    let expected: Vec<i64> = (0..values)
        .map(|i| signed.iter().map(|u| u[i]).sum::<i64>())
        .collect();
    assert_eq!(decode_signed(&sum, bits), expected);

    let mask = (1u64 << bits) - 1;
    let wrapping: Vec<Vec<u64>> = (0..parties)
        .map(|_| (0..values).map(|_| rng.random::<u64>() & mask).collect())
        .collect();
    let sum = round(&c, &wrapping, &shape);
    let expected: Vec<u64> = (0..values)
        .map(|i| wrapping.iter().fold(0u64, |s, u| s.wrapping_add(u[i])) & mask)
        .collect();
    assert_eq!(sum, expected);
}

#[test]
fn fast64_two_parties_sum_exact() {
    check_sum(HeParams::Fast64, 2, 3000, None);
}

#[test]
fn fast64_three_parties_multi_chunk_sum_exact() {
    check_sum(HeParams::Fast64, 3, 5000, Some(1));
}

#[test]
fn fast64_ten_parties_sum_exact() {
    check_sum(HeParams::Fast64, 10, 100, None);
}

#[test]
fn secure128_two_parties_sum_exact() {
    check_sum(HeParams::Secure128, 2, 5000, Some(1));
}

#[test]
fn secure128_three_parties_sum_exact() {
    check_sum(HeParams::Secure128, 3, 1000, None);
}

#[test]
fn secure128_ten_parties_sum_exact() {
    check_sum(HeParams::Secure128, 10, 100, None);
}

#[test]
fn secure128_is_the_default() {
    assert_eq!(HeParams::default(), HeParams::Secure128);
    assert_eq!(HeParams::Secure128.bytes_per_value(), 32);
    assert_eq!(HeParams::Fast64.bytes_per_value(), 16);
}

/// Without one partner's share, a single ciphertext decodes to values that are
/// uniform modulo 2^p, nowhere near the plaintext.
#[test]
fn all_but_one_share_reveal_only_noise() {
    for params in [HeParams::Fast64, HeParams::Secure128] {
        let c = committee(params, 3);
        let n = params.polynomial_size();
        let bits = c.key.plaintext_bits();
        let shape = Shape::new(&c.key, n as u64).unwrap();
        let update = vec![0u64; n];
        let wire = Encryptor::new(&c.key).encrypt(&update).unwrap().to_bytes();
        let agg = Aggregate::from_ciphertexts(shape, [wire.as_slice()]).unwrap();
        let mut shares: Vec<DecryptionShare> = c
            .secrets
            .iter()
            .map(|sk| PartialDecryptor::new(sk).partial_decrypt(&agg, 1).unwrap())
            .collect();
        // Party 2 withholds its share: substitute an all-zero share.
        let mut forged = shares[2].to_bytes();
        let words_start = forged.len() - n * params.word_bytes();
        forged[words_start..].fill(0);
        shares[2] = DecryptionShare::from_bytes(&forged, &shape).unwrap();
        let decoded = combine(&agg, &shares).unwrap();
        // Under uniformity: P(a value decodes to its plaintext 0) = 2^-p, so
        // P(any of N does) <= N·2^-p < 2^-13. The top plaintext bit is a fair
        // coin: |ones − N/2| > 6·sqrt(N)/2 has probability < 2·10^-9.
        let exact = decoded.iter().filter(|&&v| v == 0).count();
        assert_eq!(
            exact, 0,
            "{params:?}: {exact} values decrypted without the missing share"
        );
        let ones = decoded
            .iter()
            .filter(|&&v| v >> (bits - 1) & 1 == 1)
            .count() as f64;
        let half = n as f64 / 2.0;
        assert!(
            (ones - half).abs() < 3.0 * (n as f64).sqrt(),
            "{params:?}: top bit set {ones} of {n}"
        );
        // With all shares the same aggregate decrypts to the plaintext.
        let complete: Vec<DecryptionShare> = c
            .secrets
            .iter()
            .map(|sk| PartialDecryptor::new(sk).partial_decrypt(&agg, 1).unwrap())
            .collect();
        assert_eq!(combine(&agg, &complete).unwrap(), update);
        let _ = &c.session;
    }
}

/// Key holders that receive only the sum's masks, chunk by chunk, rebuild
/// the same mask digest as the coordinator's full sum, and their shares open
/// the coordinator's sum; a mask chunk of another index, key, length or
/// count, or one sent twice, is refused.
#[test]
fn the_sums_masks_alone_open_the_full_sum() {
    let c = committee(HeParams::Secure128, 3);
    let n = 3 * 4096 + 17;
    let shape = Shape::new(&c.key, n as u64)
        .unwrap()
        .with_chunk_polys(2)
        .unwrap();
    assert!(shape.chunks() >= 2);
    let updates: Vec<Vec<u64>> = (0..3)
        .map(|k| (0..n as u64).map(|v| (v * 7 + k) % 1000).collect())
        .collect();
    let vectors: Vec<EncryptedVector> = updates
        .iter()
        .map(|u| {
            Encryptor::new(&c.key)
                .encrypt_with_shape(u, &shape)
                .unwrap()
        })
        .collect();
    let mut full = Aggregate::new(shape).unwrap();
    for v in &vectors {
        full.add_vector(v).unwrap();
    }
    // What a key holder receives: the sum's masks only, chunk by chunk.
    let mut masks_only = Aggregate::new(shape).unwrap();
    for i in 0..shape.chunks() {
        let wire = full.mask_chunk(i).unwrap();
        assert_eq!(wire.len(), shape.mask_chunk_bytes(i));
        masks_only.set_mask_chunk(i, &wire, 3).unwrap();
    }
    assert_eq!(masks_only.mask_digest(), full.mask_digest());
    assert_ne!(masks_only.digest(), full.digest());
    let mut combiner = Combiner::new(&full);
    for sk in &c.secrets {
        let share = PartialDecryptor::new(sk)
            .partial_decrypt(&masks_only, 3)
            .unwrap();
        combiner.add(&share).unwrap();
    }
    let sum = combiner.finish().unwrap();
    let mask = (1u64 << c.key.plaintext_bits()) - 1;
    for (i, s) in sum.iter().enumerate() {
        assert_eq!(*s, updates.iter().map(|u| u[i]).sum::<u64>() & mask);
    }
    // Refused mask chunks leave a sum as it was.
    let mut fresh = Aggregate::new(shape).unwrap();
    let before = fresh.mask_digest();
    let wire = full.mask_chunk(0).unwrap();
    assert!(matches!(
        fresh.set_mask_chunk(1, &wire, 3),
        Err(HeError::WrongCount { .. })
    ));
    assert!(
        fresh
            .set_mask_chunk(0, &wire[..wire.len() - 16], 3)
            .is_err()
    );
    assert!(matches!(
        fresh.set_mask_chunk(0, &wire, 4),
        Err(HeError::TooManyContributors { .. })
    ));
    assert!(fresh.set_mask_chunk(0, &wire, 0).is_err());
    let other = committee(HeParams::Secure128, 3);
    let other_shape = Shape::new(&other.key, n as u64)
        .unwrap()
        .with_chunk_polys(2)
        .unwrap();
    let (m0, _) = shape.chunk_parts(0, vectors[0].chunk(0).unwrap()).unwrap();
    let foreign = other_shape.mask_chunk(0, m0);
    assert!(matches!(
        fresh.set_mask_chunk(0, &foreign, 1),
        Err(HeError::WrongKey { .. })
    ));
    assert_eq!(fresh.mask_digest(), before);
    fresh.set_mask_chunk(0, &wire, 1).unwrap();
    // Set once only.
    assert!(fresh.set_mask_chunk(0, &wire, 1).is_err());
    assert_eq!(fresh.chunk_contributors()[0], 1);
}
