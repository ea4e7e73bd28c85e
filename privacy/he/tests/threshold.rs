//! Threshold (t-of-N) decryption end to end: collective key generation, dealing
//! of every key share to the committee, checks, encryption, aggregation, and
//! decryption by every set of holders.

use consortia_he::*;
use rand::Rng;

struct Committee {
    key: CollectivePublicKey,
    threshold: Threshold,
    holders: Vec<ThresholdKeyShare>,
}

/// An N-of-N key, each share dealt to the committee, each holder's subshares
/// checked and summed (every message through the public API).
fn committee(params: HeParams, parties: u32, threshold: u32) -> Committee {
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
    let th = Threshold::new(parties, threshold).unwrap();
    let dealings: Vec<ThresholdDealing> = shares
        .iter()
        .map(|s| ThresholdDealer::new(&th).deal(&s.secret).unwrap())
        .collect();
    let holders = (0..parties)
        .map(|j| {
            let mut c = ThresholdKeyCollector::new(&session, &th, PartyId(j)).unwrap();
            for (d, s) in dealings.iter().zip(&shares) {
                c.add_dealer(d.commitments(), &s.public).unwrap();
            }
            for d in &dealings {
                for sub in d.subshares_for(PartyId(j)).unwrap() {
                    c.add_subshare(&sub).unwrap();
                }
            }
            c.finish().unwrap()
        })
        .collect();
    Committee {
        key,
        threshold: th,
        holders,
    }
}

/// `count` random signed updates of `values` values that cannot overflow the sum.
fn updates(c: &Committee, count: usize, values: usize) -> (Vec<Vec<u64>>, Vec<u64>) {
    let bits = c.key.plaintext_bits();
    let range = 1i64 << (bits - 4).min(40);
    let mut rng = rand::rng();
    let signed: Vec<Vec<i64>> = (0..count)
        .map(|_| {
            (0..values)
                .map(|_| rng.random_range(-range..range))
                .collect()
        })
        .collect();
    let sum: Vec<i64> = (0..values)
        .map(|k| signed.iter().map(|u| u[k]).sum())
        .collect();
    let encoded = signed
        .iter()
        .map(|u| encode_signed(u, bits).unwrap())
        .collect();
    (encoded, encode_signed(&sum, bits).unwrap())
}

fn aggregate(c: &Committee, updates: &[Vec<u64>]) -> Aggregate {
    let shape = Shape::new(&c.key, updates[0].len() as u64).unwrap();
    let wires: Vec<Vec<u8>> = updates
        .iter()
        .map(|u| {
            Encryptor::new(&c.key)
                .encrypt_with_shape(u, &shape)
                .unwrap()
                .to_bytes()
        })
        .collect();
    Aggregate::from_ciphertexts(shape, wires.iter().map(Vec::as_slice)).unwrap()
}

/// The shares of `set` (through their wire form) and their combination.
fn decrypt(c: &Committee, agg: &Aggregate, set: &DecryptionSet) -> Vec<u64> {
    let shares: Vec<DecryptionShare> = set
        .members()
        .members()
        .map(|j| {
            let mut d = ThresholdPartialDecryptor::new(&c.holders[j.0 as usize], &c.key).unwrap();
            let share = d.partial_decrypt(agg, set, 1).unwrap();
            DecryptionShare::from_bytes(&share.to_bytes(), agg.shape()).unwrap()
        })
        .collect();
    threshold_combine(agg, set, &shares).unwrap()
}

/// All sets of `c`'s committee, by their member bits.
fn sets(c: &Committee) -> impl Iterator<Item = (u32, Vec<PartyId>)> {
    let n = c.threshold.parties();
    (0u32..1 << n).map(move |bits| {
        (
            bits,
            (0..n)
                .filter(|k| bits & (1 << k) != 0)
                .map(PartyId)
                .collect(),
        )
    })
}

fn every_set_decrypts(params: HeParams) {
    let c = committee(params, 5, 3);
    // Two polynomials, the second partly padding.
    let values = params.polynomial_size() + 37;
    let (ups, expected) = updates(&c, 3, values);
    let agg = aggregate(&c, &ups);
    let mut opened = 0;
    for (bits, members) in sets(&c) {
        match members.len() {
            0..=2 => {
                let e = c.threshold.decryption_set(members).unwrap_err();
                assert!(
                    matches!(e, HeError::BelowThreshold { threshold: 3, .. }),
                    "{e}"
                );
            }
            _ => {
                let set = c.threshold.decryption_set(members).unwrap();
                assert_eq!(decrypt(&c, &agg, &set), expected, "set {bits:05b}");
                opened += 1;
            }
        }
    }
    // C(5,3) + C(5,4) + C(5,5).
    assert_eq!(opened, 16);
}

#[test]
fn every_set_of_three_or_more_decrypts_the_exact_sum_secure128() {
    every_set_decrypts(HeParams::Secure128);
}

#[test]
fn every_set_of_three_or_more_decrypts_the_exact_sum_fast64() {
    every_set_decrypts(HeParams::Fast64);
}

/// Every number of contributions (the bias correction differs for odd and even
/// counts), with the smallest set, the full set, and one in between.
#[test]
fn every_number_of_contributions_decrypts() {
    for params in [HeParams::Fast64, HeParams::Secure128] {
        let c = committee(params, 5, 3);
        for count in 1..=5 {
            let (ups, expected) = updates(&c, count, 100);
            let agg = aggregate(&c, &ups);
            for members in [vec![2, 3, 4], vec![0, 2, 3, 4], vec![0, 1, 2, 3, 4]] {
                let set = c
                    .threshold
                    .decryption_set(members.into_iter().map(PartyId))
                    .unwrap();
                assert_eq!(
                    decrypt(&c, &agg, &set),
                    expected,
                    "{params:?}, {count} updates"
                );
            }
        }
    }
}

#[test]
fn refusals() {
    let e = Threshold::new(13, 7).unwrap_err().to_string();
    assert!(e.contains("13") && e.contains("at most 12"), "{e}");
    for t in [0, 1, 6] {
        let e = Threshold::new(5, t).unwrap_err();
        assert!(matches!(e, HeError::BadThreshold { parties: 5, .. }), "{e}");
    }
    let c = committee(HeParams::Fast64, 4, 2);
    let th = &c.threshold;
    assert!(matches!(
        th.decryption_set([PartyId(1)]).unwrap_err(),
        HeError::BelowThreshold {
            have: 1,
            threshold: 2
        }
    ));
    assert!(matches!(
        th.decryption_set([PartyId(1), PartyId(4)]).unwrap_err(),
        HeError::UnknownParty { .. }
    ));
    assert!(matches!(
        th.decryption_set([PartyId(1), PartyId(1)]).unwrap_err(),
        HeError::DuplicateParty(PartyId(1))
    ));
    let (ups, expected) = updates(&c, 2, 10);
    let agg = aggregate(&c, &ups);
    let set = th.decryption_set([PartyId(1), PartyId(3)]).unwrap();
    // A holder outside the set is refused.
    let mut d0 = ThresholdPartialDecryptor::new(&c.holders[0], &c.key).unwrap();
    assert!(matches!(
        d0.partial_decrypt(&agg, &set, 1).unwrap_err(),
        HeError::NotInDecryptionSet(PartyId(0))
    ));
    // Fewer contributions than asked for, and a repeat, are refused.
    let mut d1 = ThresholdPartialDecryptor::new(&c.holders[1], &c.key).unwrap();
    assert!(matches!(
        d1.partial_decrypt(&agg, &set, 3).unwrap_err(),
        HeError::TooFewContributors { have: 2, min: 3 }
    ));
    let s1 = d1.partial_decrypt(&agg, &set, 2).unwrap();
    assert!(matches!(
        d1.partial_decrypt(&agg, &set, 2).unwrap_err(),
        HeError::AlreadyDecrypted { .. }
    ));
    let mut d3 = ThresholdPartialDecryptor::new(&c.holders[3], &c.key).unwrap();
    let s3 = d3.partial_decrypt(&agg, &set, 2).unwrap();
    // The combiner takes only members' shares and needs all of them.
    let full = th.decryption_set((0..4).map(PartyId)).unwrap();
    let s0 = d0.partial_decrypt(&agg, &full, 2).unwrap();
    let mut comb = ThresholdCombiner::new(&agg, &set).unwrap();
    assert!(matches!(
        comb.add(&s0).unwrap_err(),
        HeError::NotInDecryptionSet(PartyId(0))
    ));
    comb.add(&s1).unwrap();
    assert_eq!(comb.missing(), 1);
    assert!(matches!(
        threshold_combine(&agg, &set, std::slice::from_ref(&s1)).unwrap_err(),
        HeError::Incomplete {
            have: 1,
            need: 2,
            ..
        }
    ));
    comb.add(&s3).unwrap();
    assert_eq!(comb.finish().unwrap(), expected);
    // The N-of-N combiner cannot use a set's shares.
    assert!(combine(&agg, &[s1, s3]).is_err());
}

#[test]
fn a_saved_share_loads_back_0600_and_refuses_damage() {
    use std::os::unix::fs::PermissionsExt;
    let c = committee(HeParams::Fast64, 4, 3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("holder2.threshold");
    c.holders[2].save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let loaded = ThresholdKeyShare::load(&path).unwrap();
    assert_eq!(loaded.holder(), PartyId(2));
    assert_eq!(loaded.committee(), &c.threshold);
    // The loaded share decrypts with the others.
    let (ups, expected) = updates(&c, 2, 50);
    let agg = aggregate(&c, &ups);
    let set = c
        .threshold
        .decryption_set([PartyId(0), PartyId(2), PartyId(3)])
        .unwrap();
    let shares: Vec<DecryptionShare> = [0usize, 2, 3]
        .iter()
        .map(|&j| {
            let key = if j == 2 { &loaded } else { &c.holders[j] };
            ThresholdPartialDecryptor::new(key, &c.key)
                .unwrap()
                .partial_decrypt(&agg, &set, 2)
                .unwrap()
        })
        .collect();
    assert_eq!(threshold_combine(&agg, &set, &shares).unwrap(), expected);

    let bytes = std::fs::read(&path).unwrap();
    // One flipped bit anywhere (header fields, words, checksum) is refused.
    for at in [9, 44, 60, bytes.len() / 2, bytes.len() - 1] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let e = ThresholdKeyShare::load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 0x10;
    std::fs::write(&path, &damaged).unwrap();
    let e = ThresholdKeyShare::load(&path).unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    // Truncated.
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(ThresholdKeyShare::load(&path).is_err());
    // Readable by others.
    std::fs::write(&path, &bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = ThresholdKeyShare::load(&path).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    // Larger than any share: refused before it is read.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    let e = ThresholdKeyShare::load(&path).unwrap_err().to_string();
    assert!(e.contains("larger than any"), "{e}");
}
