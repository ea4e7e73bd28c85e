//! Rejection of rogue keys, malformed inputs and protocol misuse.

use consortia_he::*;

const P: HeParams = HeParams::Fast64;

fn session() -> KeySession {
    KeySession::new(P, rand::random())
}

fn make_shares(session: &KeySession, parties: u32) -> Vec<KeyShare> {
    (0..parties)
        .map(|i| KeyShareGen::new(session).generate(PartyId(i)))
        .collect()
}

fn key(session: &KeySession, shares: &[KeyShare]) -> CollectivePublicKey {
    let mut agg = CollectiveKeyAggregator::new(session, shares.len() as u32).unwrap();
    for s in shares {
        agg.add_commitment(s.public.party(), s.commitment).unwrap();
    }
    for s in shares {
        agg.add_share(s.public.party(), s.public.clone()).unwrap();
    }
    agg.finish().unwrap()
}

#[test]
fn share_before_all_commitments_is_rejected() {
    let s = session();
    let shares = make_shares(&s, 3);
    let mut agg = CollectiveKeyAggregator::new(&s, 3).unwrap();
    agg.add_commitment(PartyId(0), shares[0].commitment)
        .unwrap();
    agg.add_commitment(PartyId(1), shares[1].commitment)
        .unwrap();
    let err = agg
        .add_share(PartyId(0), shares[0].public.clone())
        .unwrap_err();
    assert!(
        matches!(
            err,
            HeError::Incomplete {
                have: 2,
                need: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(agg.finish(), Err(HeError::Incomplete { .. })));
}

#[test]
fn share_not_matching_its_commitment_is_rejected() {
    let s = session();
    let shares = make_shares(&s, 2);
    let mut agg = CollectiveKeyAggregator::new(&s, 2).unwrap();
    for sh in &shares {
        agg.add_commitment(sh.public.party(), sh.commitment)
            .unwrap();
    }
    // Party 1 swaps in a share drawn after seeing party 0's.
    let rogue = KeyShareGen::new(&s).generate(PartyId(1));
    let err = agg.add_share(PartyId(1), rogue.public).unwrap_err();
    assert!(
        matches!(err, HeError::CommitmentMismatch(PartyId(1))),
        "{err}"
    );
    // Party 0 cannot submit party 1's share under its own id.
    let err = agg
        .add_share(PartyId(0), shares[1].public.clone())
        .unwrap_err();
    assert!(matches!(err, HeError::UnknownParty { .. }), "{err}");
    agg.add_share(PartyId(0), shares[0].public.clone()).unwrap();
    let err = agg
        .add_share(PartyId(0), shares[0].public.clone())
        .unwrap_err();
    assert!(matches!(err, HeError::DuplicateParty(PartyId(0))), "{err}");
    let err = agg
        .add_commitment(PartyId(0), shares[0].commitment)
        .unwrap_err();
    assert!(matches!(err, HeError::DuplicateParty(PartyId(0))), "{err}");
    let err = agg
        .add_commitment(PartyId(7), shares[0].commitment)
        .unwrap_err();
    assert!(
        matches!(err, HeError::UnknownParty { parties: 2, .. }),
        "{err}"
    );
}

#[test]
fn public_key_share_from_another_session_or_params_is_rejected() {
    let s = session();
    let other = session();
    let sh = KeyShareGen::new(&s).generate(PartyId(0));
    let bytes = sh.public.to_bytes();
    assert!(matches!(
        PublicKeyShare::from_bytes(&bytes, &other),
        Err(HeError::WrongKey { .. })
    ));
    let secure = KeySession::new(HeParams::Secure128, s.id);
    assert!(matches!(
        PublicKeyShare::from_bytes(&bytes, &secure),
        Err(HeError::WrongParams { .. })
    ));
    assert!(matches!(
        PublicKeyShare::from_bytes(&bytes[..bytes.len() - 1], &s),
        Err(HeError::WrongSize { .. })
    ));
    // The commitment binds the session and party.
    let again = PublicKeyShare::from_bytes(&bytes, &s).unwrap();
    assert_eq!(again.commitment(), sh.commitment);
}

#[test]
fn malformed_ciphertexts_are_rejected() {
    let s = session();
    let shares = make_shares(&s, 2);
    let key = key(&s, &shares);
    let shape = Shape::new(&key, 3000).unwrap().with_chunk_polys(1).unwrap();
    let mut enc = Encryptor::new(&key);
    let v = enc.encrypt_with_shape(&vec![1u64; 3000], &shape).unwrap();
    let wire = v.to_bytes();
    assert_eq!(wire.len(), shape.vector_bytes());
    assert_eq!(EncryptedVector::from_bytes(&wire, &shape).unwrap(), v);

    // Truncated, extended.
    assert!(matches!(
        EncryptedVector::from_bytes(&wire[..wire.len() - 8], &shape),
        Err(HeError::WrongSize { .. })
    ));
    let mut long = wire.clone();
    long.push(0);
    assert!(matches!(
        EncryptedVector::from_bytes(&long, &shape),
        Err(HeError::WrongSize { .. })
    ));
    assert!(matches!(
        EncryptedVector::from_bytes(&[], &shape),
        Err(HeError::WrongSize { .. })
    ));
    // Header fields: magic, params, dimension, modulus.
    let tamper = |at: usize, val: u8| {
        let mut w = wire.clone();
        w[at] = val;
        EncryptedVector::from_bytes(&w, &shape).unwrap_err()
    };
    assert!(matches!(tamper(0, b'X'), HeError::BadHeader { .. }));
    assert!(matches!(tamper(5, 1), HeError::WrongParams { .. }));
    assert!(matches!(
        tamper(6, 12),
        HeError::WrongDimension {
            expected: 2048,
            got: 4096
        }
    ));
    assert!(matches!(
        tamper(7, 128),
        HeError::WrongModulus {
            expected: 64,
            got: 128
        }
    ));
    // Value count and chunking.
    let other_len = Shape::new(&key, 3001).unwrap().with_chunk_polys(1).unwrap();
    assert!(matches!(
        EncryptedVector::from_bytes(&wire, &other_len),
        Err(HeError::WrongCount { .. })
    ));
    let other_chunks = Shape::new(&key, 3000).unwrap().with_chunk_polys(2).unwrap();
    assert!(matches!(
        EncryptedVector::from_bytes(&wire, &other_chunks),
        Err(HeError::WrongCount { .. })
    ));
    // Another key.
    let other_key = key_for_other_session();
    let foreign = Shape::new(&other_key, 3000)
        .unwrap()
        .with_chunk_polys(1)
        .unwrap();
    assert!(matches!(
        EncryptedVector::from_bytes(&wire, &foreign),
        Err(HeError::WrongKey { .. })
    ));

    // Chunks into an aggregate.
    let mut agg = Aggregate::new(shape).unwrap();
    let c0 = v.chunk(0).unwrap();
    let c1 = v.chunk(1).unwrap();
    assert!(matches!(
        agg.add_bytes(1, c0),
        Err(HeError::WrongCount { .. })
    ));
    assert!(matches!(
        agg.add_bytes(2, c0),
        Err(HeError::WrongCount { .. })
    ));
    assert!(matches!(
        agg.add_bytes(0, &c0[..c0.len() - 1]),
        Err(HeError::WrongSize { .. })
    ));
    assert_eq!(agg.chunk_contributors(), &[0, 0]);
    agg.add_bytes(0, c0).unwrap();
    agg.add_bytes(1, c1).unwrap();
    agg.add_bytes(0, c0).unwrap();
    // Only as many contributions as partners (the noise budget).
    assert!(matches!(
        agg.add_bytes(0, c0),
        Err(HeError::TooManyContributors { chunk: 0, max: 2 })
    ));
    assert_eq!(agg.contributors(), 1);
    // Chunks holding different numbers of updates are not decrypted.
    let err = PartialDecryptor::new(&shares[0].secret)
        .partial_decrypt(&agg, 1)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HeError::Incomplete {
                have: 1,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        Aggregate::from_bytes(&agg.to_bytes()[1..], &shape),
        Err(HeError::BadHeader { .. } | HeError::WrongSize { .. })
    ));
    assert!(matches!(
        Aggregate::from_bytes(&agg.to_bytes(), &other_len),
        Err(HeError::WrongSize { .. } | HeError::WrongCount { .. })
    ));
    assert_eq!(Aggregate::from_bytes(&agg.to_bytes(), &shape).unwrap(), agg);

    // Plaintexts must fit the plaintext modulus.
    let bits = key.plaintext_bits();
    let err = enc.encrypt(&[0, 1u64 << bits]).unwrap_err();
    assert!(
        matches!(err, HeError::ValueOutOfRange { index: 1, .. }),
        "{err}"
    );
    assert!(matches!(
        encode_signed(&[1i64 << (bits - 1)], bits),
        Err(HeError::ValueOutOfRange { .. })
    ));
    assert!(matches!(
        enc.encrypt_with_shape(&[1, 2], &shape),
        Err(HeError::WrongCount { .. })
    ));
    assert!(matches!(Shape::new(&key, 0), Err(HeError::TooLarge { .. })));
    assert!(matches!(
        Shape::new(&key, MAX_VALUES + 1),
        Err(HeError::TooLarge { .. })
    ));
}

fn key_for_other_session() -> CollectivePublicKey {
    let s = session();
    let shares = make_shares(&s, 2);
    key(&s, &shares)
}

#[test]
fn decryption_misuse_is_rejected() {
    let s = session();
    let shares = make_shares(&s, 3);
    let key = key(&s, &shares);
    let shape = Shape::new(&key, 10).unwrap();
    let wires: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            Encryptor::new(&key)
                .encrypt(&[5u64; 10])
                .unwrap()
                .to_bytes()
        })
        .collect();
    let agg = Aggregate::from_ciphertexts(shape, wires.iter().map(Vec::as_slice)).unwrap();
    let mut decryptors: Vec<PartialDecryptor<'_>> = shares
        .iter()
        .map(|s| PartialDecryptor::new(&s.secret))
        .collect();
    // Fewer contributors than required.
    let err = decryptors[0].partial_decrypt(&agg, 3).unwrap_err();
    assert!(
        matches!(err, HeError::TooFewContributors { have: 2, min: 3 }),
        "{err}"
    );
    let ds: Vec<DecryptionShare> = decryptors
        .iter_mut()
        .map(|d| d.partial_decrypt(&agg, 2).unwrap())
        .collect();
    // The same aggregate is never answered twice by one decryptor.
    let err = decryptors[0].partial_decrypt(&agg, 2).unwrap_err();
    assert!(matches!(err, HeError::AlreadyDecrypted { .. }), "{err}");
    assert_eq!(combine(&agg, &ds).unwrap(), vec![10u64; 10]);
    // Missing, duplicated, foreign shares.
    assert!(matches!(
        combine(&agg, &ds[..2]),
        Err(HeError::Incomplete {
            have: 2,
            need: 3,
            ..
        })
    ));
    let dup = vec![ds[0].clone(), ds[1].clone(), ds[1].clone()];
    assert!(matches!(
        combine(&agg, &dup),
        Err(HeError::DuplicateParty(PartyId(1)))
    ));
    let mut other = Aggregate::from_ciphertexts(shape, [wires[0].as_slice()]).unwrap();
    other.add_vector_bytes(&wires[0]).unwrap();
    assert!(matches!(
        combine(&other, &ds),
        Err(HeError::DigestMismatch(_))
    ));
    // A share from outside the committee, and one truncated.
    let mut bytes = ds[2].to_bytes();
    bytes[8 + 32..8 + 36].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(
        DecryptionShare::from_bytes(&bytes, &shape),
        Err(HeError::UnknownParty { .. })
    ));
    let bytes = ds[2].to_bytes();
    assert!(matches!(
        DecryptionShare::from_bytes(&bytes[..bytes.len() - 8], &shape),
        Err(HeError::WrongSize { .. })
    ));
    // A key share of another session refuses the aggregate.
    let stranger = KeyShareGen::new(&session()).generate(PartyId(0));
    let err = PartialDecryptor::new(&stranger.secret)
        .partial_decrypt(&agg, 2)
        .unwrap_err();
    assert!(matches!(err, HeError::WrongKey { .. }), "{err}");
}

#[test]
fn secret_key_share_file_is_private_and_round_trips() {
    use std::os::unix::fs::PermissionsExt;
    let s = session();
    let shares = make_shares(&s, 2);
    let key = key(&s, &shares);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("share.key");
    shares[1].secret.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = SecretKeyShare::load(&path).unwrap();
    assert_eq!(loaded.party(), PartyId(1));
    let debug = format!("{loaded:?}");
    assert!(debug.contains("party") && debug.len() < 120, "{debug}");
    // The loaded share decrypts like the original.
    let wire = Encryptor::new(&key).encrypt(&[3u64; 4]).unwrap().to_bytes();
    let shape = Shape::new(&key, 4).unwrap();
    let agg = Aggregate::from_ciphertexts(shape, [wire.as_slice()]).unwrap();
    let ds = vec![
        PartialDecryptor::new(&shares[0].secret)
            .partial_decrypt(&agg, 1)
            .unwrap(),
        PartialDecryptor::new(&loaded)
            .partial_decrypt(&agg, 1)
            .unwrap(),
    ];
    assert_eq!(combine(&agg, &ds).unwrap(), vec![3u64; 4]);
    // Group-readable or corrupt files are refused.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        SecretKeyShare::load(&path),
        Err(HeError::KeyFile { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(100);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        SecretKeyShare::load(&path),
        Err(HeError::KeyFile { .. })
    ));
}
