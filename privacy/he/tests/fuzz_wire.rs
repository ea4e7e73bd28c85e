//! Property-based fuzzing of every decoder of untrusted homomorphic-encryption
//! bytes: public-key shares, the collective key, ciphertext chunks (full and
//! mask form), encrypted vectors, aggregates and decryption shares (whole, and
//! streamed as the coordinator combines `DecryptionSharePiece`s).
//!
//! Each decoder gets random bytes, random bytes behind a valid header, and
//! valid encodings mutated (bytes flipped, truncated, extended). It must
//! return an error or a value that re-encodes to its input — never panic —
//! and never hold more memory than a small multiple of its input
//! (`PeakAlloc`): sizes come from the receiver's own [`Shape`], never from
//! the bytes.
//!
//! Fixed seed and budget, so CI is deterministic and fast; a long campaign:
//! `PROPTEST_CASES=100000 cargo test --release -p consortia-he --test fuzz_wire`.

use std::sync::OnceLock;

use consortia_fuzzing::{PeakAlloc, fuzz, peak};
use consortia_he::*;
use proptest::prelude::*;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// What a decoder may hold while decoding `len` bytes: its decoded words (as
/// many bytes as the input), one re-encoding for a key id, tfhe's
/// conformance copies, and small change.
fn bound(len: usize) -> usize {
    4 * len + (64 << 10)
}

const P: HeParams = HeParams::Fast64;
/// Three polynomials in two chunks (2 + 1): every chunk path, a short last chunk.
const VALUES: u64 = 2 * 2048 + 5;

/// Valid encodings of every wire form, made once.
struct Fixture {
    session: KeySession,
    shape: Shape,
    public_share: Vec<u8>,
    collective: Vec<u8>,
    vector: Vec<u8>,
    chunks: Vec<Vec<u8>>,
    mask_chunks: Vec<Vec<u8>>,
    aggregate: Vec<u8>,
    aggregate_value: Aggregate,
    share: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let session = KeySession::new(P, [7; 32]);
        let shares: Vec<KeyShare> = (0..2)
            .map(|i| KeyShareGen::new(&session).generate(PartyId(i)))
            .collect();
        let mut agg = CollectiveKeyAggregator::new(&session, 2).unwrap();
        for s in &shares {
            agg.add_commitment(s.public.party(), s.commitment).unwrap();
        }
        for s in &shares {
            agg.add_share(s.public.party(), s.public.clone()).unwrap();
        }
        let key = agg.finish().unwrap();
        let shape = Shape::new(&key, VALUES)
            .unwrap()
            .with_chunk_polys(2)
            .unwrap();
        assert_eq!(shape.chunks(), 2);
        let mut enc = Encryptor::new(&key);
        let values: Vec<u64> = (0..VALUES).map(|i| i % 1000).collect();
        let vector = enc.encrypt_with_shape(&values, &shape).unwrap();
        let chunks: Vec<Vec<u8>> = vector.chunks().map(<[u8]>::to_vec).collect();
        let mask_chunks = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (masks, _) = shape.chunk_parts(i as u32, c).unwrap();
                shape.mask_chunk(i as u32, masks)
            })
            .collect();
        let mut sum = Aggregate::new(shape).unwrap();
        sum.add_vector(&vector).unwrap();
        sum.add_vector(&vector).unwrap();
        let share = PartialDecryptor::new(&shares[0].secret)
            .partial_decrypt(&sum, 1)
            .unwrap()
            .to_bytes();
        Fixture {
            session,
            shape,
            public_share: shares[1].public.to_bytes(),
            collective: key.to_bytes(),
            vector: vector.to_bytes(),
            chunks,
            mask_chunks,
            aggregate: sum.to_bytes(),
            aggregate_value: sum,
            share,
        }
    })
}

/// One edit of a valid encoding.
#[derive(Clone, Debug)]
enum Edit {
    /// XOR the byte at (index mod len) with a non-zero mask.
    Flip(usize, u8),
    /// Keep the first (n mod (len + 1)) bytes.
    Truncate(usize),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Overwrite 4 bytes at (index mod len) with a little-endian u32 (counts, indices).
    PutU32(usize, u32),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
        2 => any::<usize>().prop_map(Edit::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Edit::Extend),
        2 => (0..80usize, any::<u32>()).prop_map(|(i, v)| Edit::PutU32(i, v)),
    ]
}

fn mutate(valid: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = valid.to_vec();
    for e in edits {
        match e {
            Edit::Flip(i, m) if !out.is_empty() => {
                let i = i % out.len();
                out[i] ^= m;
            }
            Edit::Truncate(n) => out.truncate(n % (out.len() + 1)),
            Edit::Extend(b) => out.extend_from_slice(b),
            Edit::PutU32(i, v) if out.len() >= 4 => {
                let i = i % (out.len() - 3);
                out[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    out
}

/// Inputs for a decoder whose valid form is `valid`: random bytes, a valid
/// header (first 8..80 bytes) followed by random bytes, or `valid` edited.
fn inputs(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let header_len = valid.len().min(80);
    let v1 = valid.clone();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (8..=header_len, prop::collection::vec(any::<u8>(), 0..4096)).prop_map(
            move |(keep, tail)| {
                let mut out = v1[..keep].to_vec();
                out.extend(tail);
                out
            }
        ),
        4 => prop::collection::vec(edit(), 1..4).prop_map(move |e| mutate(&valid, &e)),
    ]
}

/// Decodes `bytes` with `decode`: no panic, a bounded peak, and an accepted
/// input is exactly as long as the valid form and re-encodes to itself.
fn check_decoder<T>(
    bytes: &[u8],
    valid_len: usize,
    decode: impl FnOnce(&[u8]) -> Result<T, HeError>,
    encode: impl FnOnce(&T) -> Vec<u8>,
) -> Result<(), TestCaseError> {
    let (out, used) = peak(|| decode(bytes));
    prop_assert!(
        used <= bound(bytes.len()),
        "{used} bytes live decoding {} bytes",
        bytes.len()
    );
    if let Ok(v) = out {
        prop_assert_eq!(bytes.len(), valid_len);
        prop_assert!(
            encode(&v) == bytes,
            "accepted input does not re-encode to itself"
        );
    }
    Ok(())
}

#[test]
fn public_key_share() {
    let f = fixture();
    assert!(PublicKeyShare::from_bytes(&f.public_share, &f.session).is_ok());
    fuzz(128, inputs(f.public_share.clone()), |b| {
        check_decoder(
            &b,
            f.public_share.len(),
            |b| PublicKeyShare::from_bytes(b, &f.session),
            PublicKeyShare::to_bytes,
        )
    });
}

#[test]
fn collective_public_key() {
    let f = fixture();
    assert!(CollectivePublicKey::from_bytes(&f.collective, &f.session).is_ok());
    fuzz(128, inputs(f.collective.clone()), |b| {
        check_decoder(
            &b,
            f.collective.len(),
            |b| CollectivePublicKey::from_bytes(b, &f.session),
            CollectivePublicKey::to_bytes,
        )
    });
}

#[test]
fn encrypted_vector() {
    let f = fixture();
    assert!(EncryptedVector::from_bytes(&f.vector, &f.shape).is_ok());
    fuzz(128, inputs(f.vector.clone()), |b| {
        check_decoder(
            &b,
            f.vector.len(),
            |b| EncryptedVector::from_bytes(b, &f.shape),
            EncryptedVector::to_bytes,
        )?;
        // The coordinator's path: straight into a running sum, all or nothing.
        let mut sum = Aggregate::new(f.shape).unwrap();
        let before = sum.clone();
        let (added, used) = peak(|| sum.add_vector_bytes(&b));
        prop_assert!(used <= bound(b.len()));
        if added.is_err() {
            prop_assert!(sum == before, "a refused vector changed the sum");
        }
        Ok(())
    });
}

#[test]
fn ciphertext_chunks() {
    let f = fixture();
    let strategy = (0..3u32, any::<u32>()).prop_flat_map(|(i, declared)| {
        let valid = f.chunks[(i as usize).min(1)].clone();
        (Just(i), Just(declared), inputs(valid))
    });
    fuzz(256, strategy, |(i, declared, b)| {
        // The chunk's index in its message is another untrusted field.
        let index = if i == 2 { declared } else { i };
        let valid_len = f.chunks[(index as usize).min(1)].len();
        check_decoder(
            &b,
            valid_len,
            |b| {
                f.shape
                    .check_chunk_bytes(index, b)
                    .map(|(m, body)| (m.len(), body.len()))
            },
            // Accepted: masks and bodies of equal length, the input unchanged.
            |&(m, body)| if m == body { b.clone() } else { Vec::new() },
        )?;
        let mut sum = Aggregate::new(f.shape).unwrap();
        let before = sum.clone();
        let (added, used) = peak(|| sum.add_bytes(index, &b));
        prop_assert!(used <= bound(b.len()));
        if added.is_err() {
            prop_assert!(sum == before, "a refused chunk changed the sum");
        }
        Ok(())
    });
}

#[test]
fn mask_chunks() {
    let f = fixture();
    let strategy =
        (0..2u32).prop_flat_map(|i| (Just(i), inputs(f.mask_chunks[i as usize].clone())));
    fuzz(128, strategy, |(index, b)| {
        let (out, used) = peak(|| f.shape.check_mask_chunk(index, &b).map(<[u8]>::len));
        prop_assert!(used <= bound(b.len()));
        if out.is_ok() {
            prop_assert_eq!(b.len(), f.mask_chunks[index as usize].len());
        }
        let mut sum = Aggregate::new(f.shape).unwrap();
        let (added, used) = peak(|| sum.set_mask_chunk(index, &b, 1));
        prop_assert!(used <= bound(b.len()));
        prop_assert_eq!(added.is_ok(), out.is_ok());
        Ok(())
    });
}

#[test]
fn aggregate() {
    let f = fixture();
    assert!(Aggregate::from_bytes(&f.aggregate, &f.shape).is_ok());
    fuzz(128, inputs(f.aggregate.clone()), |b| {
        check_decoder(
            &b,
            f.aggregate.len(),
            |b| Aggregate::from_bytes(b, &f.shape),
            Aggregate::to_bytes,
        )
    });
}

#[test]
fn decryption_share() {
    let f = fixture();
    assert!(DecryptionShare::from_bytes(&f.share, &f.shape).is_ok());
    fuzz(128, inputs(f.share.clone()), |b| {
        check_decoder(
            &b,
            f.share.len(),
            |b| DecryptionShare::from_bytes(b, &f.shape),
            DecryptionShare::to_bytes,
        )?;
        if let Ok(share) = DecryptionShare::from_bytes(&b, &f.shape) {
            // A decodable share may still be refused by the combiner; never a panic.
            let _ = Combiner::new(&f.aggregate_value).add(&share);
        }
        Ok(())
    });
}

/// The coordinator's streamed form: a header piece, then whole words at
/// offsets it counts itself (`DecryptionSharePiece`s).
#[test]
fn decryption_share_stream() {
    let f = fixture();
    let strategy = (inputs(f.share.clone()), any::<usize>(), 0..4usize);
    fuzz(128, strategy, |(b, offset, which)| {
        let mut c = Combiner::new(&f.aggregate_value);
        let total = c.share_len();
        let (header, used) = peak(|| c.check_share_header(&b));
        prop_assert!(used <= bound(b.len()));
        if header.is_ok() {
            prop_assert!(b.len() >= Combiner::SHARE_HEADER_LEN);
        }
        let body = b.get(Combiner::SHARE_HEADER_LEN..).unwrap_or(&[]);
        let words = (total - Combiner::SHARE_HEADER_LEN) / P.word_bytes();
        // Offsets the caller might pass: start, in range, at the end, anything.
        let offset = match which {
            0 => 0,
            1 => offset % (words + 1),
            2 => words,
            _ => offset,
        };
        let fits = body.len().is_multiple_of(P.word_bytes())
            && offset
                .checked_add(body.len() / P.word_bytes())
                .is_some_and(|end| end <= words);
        let (sub, used) = peak(|| c.subtract_share_words(offset, body));
        prop_assert!(used <= bound(b.len()));
        prop_assert_eq!(sub.is_ok(), fits);
        Ok(())
    });
}

/// Decoders given a shape of the other parameter set, or a shape with
/// arbitrary (even absurd) counts, read only a header and refuse.
#[test]
fn shapes_from_configuration_bound_every_decoder() {
    let strategy = (
        any::<bool>(),
        any::<u64>(),
        any::<u32>(),
        1..=MAX_PARTIES,
        prop::collection::vec(any::<u8>(), 0..512),
    );
    fuzz(
        256,
        strategy,
        |(secure, values, chunk_polys, parties, b)| {
            let shape = Shape {
                params: if secure {
                    HeParams::Secure128
                } else {
                    HeParams::Fast64
                },
                key_id: [1; 32],
                session_id: [2; 32],
                parties,
                values,
                chunk_polys,
            };
            // `Shape::new` and `with_chunk_polys` refuse such a shape; the decoders
            // that take one must refuse it too, before reading a size from it.
            let valid = shape.with_chunk_polys(chunk_polys).is_ok();
            let (refused, used) = peak(|| {
                let vector = EncryptedVector::from_bytes(&b, &shape).is_err();
                let sum = Aggregate::from_bytes(&b, &shape).is_err();
                let _ = DecryptionShare::from_bytes(&b, &shape);
                if valid {
                    let _ = shape.check_mask_chunk(0, &b);
                }
                vector && sum
            });
            prop_assert!(used <= bound(b.len()));
            prop_assert!(refused || valid);
            Ok(())
        },
    );
}

/// Regression: a streamed share's word offset near `usize::MAX` overflowed
/// the range check (a panic in debug builds) instead of being refused.
#[test]
fn share_word_offset_overflow_is_refused() {
    let f = fixture();
    let mut c = Combiner::new(&f.aggregate_value);
    for offset in [usize::MAX, usize::MAX - 1, usize::MAX / 8 + 1] {
        let err = c.subtract_share_words(offset, &[0; 16]).unwrap_err();
        assert!(matches!(err, HeError::WrongCount { .. }), "{err}");
    }
}

/// The probe sees what a decoder holds (else every bound above is vacuous).
#[test]
fn peak_alloc_counts_live_bytes() {
    let (v, used) = peak(|| vec![0u8; 1 << 20]);
    assert!(used >= 1 << 20, "{used}");
    drop(v);
}
