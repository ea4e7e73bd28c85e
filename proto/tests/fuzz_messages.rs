//! Property-based fuzzing of the gRPC messages as either side decodes them
//! after tonic's size check: prost's `decode` of [`ClientMessage`] and
//! [`ServerMessage`] from random bytes, from valid encodings mutated (bytes
//! flipped, truncated, extended), and from fields whose length prefix claims
//! more bytes than follow. Decoding must return an error or a message — never
//! panic — and never hold more memory than a fixed multiple of its input: a
//! length prefix is checked against the bytes that follow before anything is
//! allocated for it.
//!
//! Fixed seed and budget, so CI is deterministic and fast; a long campaign:
//! `PROPTEST_CASES=100000 cargo test --release -p consortia-proto --test fuzz_messages`.

use consortia_fuzzing::{PeakAlloc, fuzz, peak};
use consortia_proto::*;
use proptest::prelude::*;
use prost::Message;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// What decoding `len` bytes may hold: every two input bytes can open a
/// repeated element (a nested message or a string header, a few hundred bytes
/// at most, doubled by `Vec` growth), plus small change. A length prefix that
/// drove an allocation would break this at once: inputs here are at most a
/// few KiB, the prefixes up to 2^64.
fn bound(len: usize) -> usize {
    256 * len + (256 << 10)
}

fn client_corpus() -> Vec<Vec<u8>> {
    use client_message::Kind;
    let kinds = vec![
        Kind::Hello(Hello {
            agent_version: "0.1.0".into(),
            protocol_version: PROTOCOL_VERSION,
        }),
        Kind::Stats(StatsReport {
            request_id: 3,
            count: 100,
            sum: vec![1.0, -2.5, 3.0],
            sum_sq: vec![1.0, 6.25, 9.0],
        }),
        Kind::Update(UpdateChunk {
            round: 2,
            index: 0,
            chunk_count: 1,
            example_count: 500,
            values: vec![0.25; 40],
            train_loss: 0.5,
        }),
        Kind::Eval(EvalReport {
            model_round: 2,
            partial_json: br#"{"kind":"binary","n":3}"#.to_vec(),
        }),
        Kind::Decline(Decline {
            round: 1,
            reason: "budget".into(),
            ..Default::default()
        }),
        Kind::KeyCommit(KeyCommit {
            session_id: vec![7; 32],
            commitment: vec![9; 32],
        }),
        Kind::KeyShare(KeyShare {
            session_id: vec![7; 32],
            public_share: vec![1; 200],
            signature: vec![2; 64],
        }),
        Kind::Encrypted(EncryptedChunk {
            round: 4,
            index: 1,
            chunk_count: 2,
            example_count: 10,
            ciphertext: vec![5; 300],
            signature: vec![6; 64],
        }),
        Kind::DecryptionShare(DecryptionSharePiece {
            toss: 0,
            round: 4,
            index: 0,
            piece_count: 1,
            bytes: vec![8; 100],
            total_bytes: 100,
        }),
        Kind::LedgerHead(LedgerHead {
            entries: 12,
            hash: vec![9; 32],
        }),
        Kind::ChallengeCommit(ChallengeCommit {
            toss: 0,
            round: 4,
            attempt: 5,
            commitment: vec![3; 32],
        }),
        Kind::ChallengeSeed(ChallengeSeed {
            toss: 0,
            round: 4,
            attempt: 5,
            seed: vec![4; 32],
        }),
        Kind::Sketch(SignedSketch {
            toss: 0,
            round: 4,
            attempt: 5,
            sketch: vec![5; 1288],
            signature: vec![6; 70],
        }),
    ];
    kinds
        .into_iter()
        .map(|k| ClientMessage { kind: Some(k) }.encode_to_vec())
        .collect()
}

fn server_corpus() -> Vec<Vec<u8>> {
    use server_message::Kind;
    let kinds = vec![
        Kind::Welcome(Welcome {
            partner: "bank-a".into(),
            task_name: "churn".into(),
            task_toml: "name = \"churn\"\n".into(),
            acknowledged_head: Some(LedgerHead {
                entries: 3,
                hash: vec![7; 32],
            }),
            protocol_version: PROTOCOL_VERSION,
        }),
        Kind::StatsRequest(StatsRequest::default()),
        Kind::RoundStart(RoundStart {
            feature_mean: vec![0.5; 8],
            feature_std: vec![1.5; 8],
            ..Default::default()
        }),
        Kind::ModelChunk(ModelChunk {
            values: consortia_proto::params_bytes(&[0.125; 40]),
            ..Default::default()
        }),
        Kind::Outcome(RoundOutcome {
            detail: "ok".into(),
            ..Default::default()
        }),
        Kind::Finished(TaskFinished {
            detail: "done".into(),
        }),
        Kind::Rejection(Rejection {
            reason: "bad".into(),
            ..Default::default()
        }),
        Kind::Keygen(KeyGenRequest {
            session_id: vec![7; 32],
            committee: vec!["a".into(), "b".into()],
            ..Default::default()
        }),
        Kind::KeyReveal(KeyReveal {
            session_id: vec![7; 32],
        }),
        Kind::CollectiveKey(CollectiveKey {
            session_id: vec![7; 32],
            committee: vec!["a".into(), "b".into()],
            key: vec![3; 200],
            transcript: vec![SignedKeyShare::default(), SignedKeyShare::default()],
            ..Default::default()
        }),
        Kind::Decrypt(DecryptRequest {
            contributions: vec![Contribution::default(); 3],
            aggregate_digest: vec![4; 32],
            task_hash: vec![5; 32],
            ..Default::default()
        }),
        Kind::AggregateMasks(AggregateMasks {
            masks: vec![6; 300],
            ..Default::default()
        }),
        Kind::ChallengeCommitments(ChallengeCommitments {
            commitments: vec![
                HolderCommitment {
                    holder: "a".into(),
                    commitment: vec![7; 32],
                };
                3
            ],
            ..Default::default()
        }),
        Kind::ChallengeReveals(ChallengeReveals {
            seeds: vec![
                HolderSeed {
                    holder: "b".into(),
                    seed: vec![8; 32],
                };
                3
            ],
            ..Default::default()
        }),
        Kind::SketchRequest(SketchRequest {
            challenge: vec![9; 32],
            ..Default::default()
        }),
        Kind::ContributorSketches(ContributorSketches {
            sketches: vec![
                ContributorSketch {
                    partner: "c".into(),
                    sketch: vec![1; 1288],
                    signature: vec![2; 70],
                };
                2
            ],
            ..Default::default()
        }),
    ];
    kinds
        .into_iter()
        .map(|k| ServerMessage { kind: Some(k) }.encode_to_vec())
        .collect()
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
    /// Splice a varint (a length prefix or a number) in at (index mod len).
    Varint(usize, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
        2 => any::<usize>().prop_map(Edit::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Edit::Extend),
        2 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Edit::Varint(i, v)),
    ]
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
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
            Edit::Varint(i, v) => {
                let i = i % (out.len() + 1);
                let mut b = Vec::new();
                varint(*v, &mut b);
                out.splice(i..i, b);
            }
            _ => {}
        }
    }
    out
}

/// A message whose nested fields (field numbers 1..16, wire type 2) claim
/// `len` bytes each, the outermost consistent or not: the shape of an
/// allocation-bomb attempt.
fn length_bomb() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((1..16u64, any::<u64>(), any::<bool>()), 1..4),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(fields, tail)| {
            let mut out = Vec::new();
            for (field, len, huge) in fields {
                varint((field << 3) | 2, &mut out);
                varint(if huge { len } else { len % 4096 }, &mut out);
            }
            out.extend(tail);
            out
        })
}

fn inputs(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = corpus.len();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => length_bomb(),
        4 => (0..n, prop::collection::vec(edit(), 1..4))
            .prop_map(move |(i, e)| mutate(&corpus[i], &e)),
    ]
}

fn check<M: Message + Default>(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (decoded, used) = peak(|| M::decode(bytes));
    prop_assert!(
        used <= bound(bytes.len()),
        "{used} bytes live decoding {} bytes",
        bytes.len()
    );
    if let Ok(m) = decoded {
        // What was accepted re-encodes to a message that decodes the same
        // (compared encoded: a NaN is not equal to itself).
        let once = m.encode_to_vec();
        let again = M::decode(once.as_slice());
        prop_assert!(again.is_ok_and(|a| a.encode_to_vec() == once));
    }
    Ok(())
}

#[test]
fn client_messages() {
    let corpus = client_corpus();
    for valid in &corpus {
        ClientMessage::decode(valid.as_slice()).unwrap();
    }
    fuzz(256, inputs(corpus), |b| check::<ClientMessage>(&b));
}

#[test]
fn server_messages() {
    let corpus = server_corpus();
    for valid in &corpus {
        ServerMessage::decode(valid.as_slice()).unwrap();
    }
    fuzz(256, inputs(corpus), |b| check::<ServerMessage>(&b));
}

/// Either side's limit helpers on decoded (untrusted) counts and indices.
#[test]
fn chunk_ranges_of_untrusted_indices() {
    fuzz(256, (0..=MAX_PARAMS, any::<u32>()), |(params, index)| {
        let r = chunk_range(params, index);
        prop_assert!(r.start <= r.end && r.end <= params);
        prop_assert!(r.len() <= CHUNK_VALUES);
        if index >= chunk_count(params) {
            prop_assert!(r.is_empty());
        }
        Ok(())
    });
}

/// Regression-style pins: fields whose length prefix claims far more than
/// follows are refused without allocating for the claim.
#[test]
fn huge_length_prefixes_are_refused() {
    for field in 1..=12u64 {
        for claim in [u64::from(u32::MAX), u64::MAX >> 1, 1 << 40] {
            let mut b = Vec::new();
            varint((field << 3) | 2, &mut b);
            varint(claim, &mut b);
            b.extend_from_slice(&[0; 8]);
            let (out, used) = peak(|| ServerMessage::decode(b.as_slice()));
            assert!(out.is_err(), "field {field}, claim {claim}");
            assert!(used <= bound(b.len()), "{used}");
            let (out, used) = peak(|| ClientMessage::decode(b.as_slice()));
            assert!(out.is_err(), "field {field}, claim {claim}");
            assert!(used <= bound(b.len()), "{used}");
        }
    }
}

/// The probe sees what a decoder holds (else every bound above is vacuous).
#[test]
fn peak_alloc_counts_live_bytes() {
    let (v, used) = peak(|| vec![0u8; 1 << 20]);
    assert!(used >= 1 << 20, "{used}");
    drop(v);
}
