//! Costs of the multiparty scheme per value: encryption, aggregation from wire
//! bytes, the 80 mask sketches a contributor and a key holder compute per
//! decryption, partial decryption (N-of-N and threshold); prints the wire size per value and the
//! sketch's cost per 1,000,000 values.

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use consortia_he::*;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const PARTIES: u32 = 3;

fn setup(params: HeParams) -> (Vec<KeyShare>, CollectivePublicKey) {
    let session = KeySession::new(params, [7; 32]);
    let shares: Vec<KeyShare> = (0..PARTIES)
        .map(|i| KeyShareGen::new(&session).generate(PartyId(i)))
        .collect();
    let mut agg = CollectiveKeyAggregator::new(&session, PARTIES).expect("committee");
    for s in &shares {
        agg.add_commitment(s.public.party(), s.commitment)
            .expect("commitment");
    }
    for s in &shares {
        agg.add_share(s.public.party(), s.public.clone())
            .expect("share");
    }
    (shares, agg.finish().expect("key"))
}

fn bench_params(c: &mut Criterion, params: HeParams) {
    let (shares, key) = setup(params);
    let values = 16 * params.polynomial_size();
    let update: Vec<u64> = (0..values as u64).map(|i| i % 1000).collect();
    let mut enc = Encryptor::new(&key);
    let shape = enc.shape(values).expect("shape");
    let wire = enc.encrypt(&update).expect("encrypt");
    let bytes = wire.to_bytes();
    println!(
        "{params:?}: {} bytes for {values} values = {:.2} bytes/value on the wire; plaintext bits for {PARTIES} partners: {}",
        bytes.len(),
        bytes.len() as f64 / values as f64,
        key.plaintext_bits()
    );

    let mut g = c.benchmark_group(format!("he/{params:?}"));
    g.throughput(Throughput::Elements(values as u64));
    g.bench_function("encrypt", |b| {
        b.iter(|| black_box(enc.encrypt(black_box(&update)).expect("encrypt")))
    });
    g.bench_function("aggregate_add_bytes", |b| {
        b.iter_batched_ref(
            // Steady state: the running sum already holds one update (its
            // pages are touched); time one more partner's chunks.
            || Aggregate::from_ciphertexts(shape, [bytes.as_slice()]).expect("aggregate"),
            |agg| {
                for (i, chunk) in wire.chunks().enumerate() {
                    agg.add_bytes(i as u32, black_box(chunk)).expect("add");
                }
            },
            BatchSize::LargeInput,
        )
    });
    let agg = Aggregate::from_ciphertexts(shape, [bytes.as_slice()]).expect("aggregate");
    // The joint-decryption check: a contributor sketches its own masks, a
    // key holder the aggregate's (the same work, once each, whatever the
    // number of contributors).
    let challenge = [9u8; 32];
    g.bench_function("sketch_masks", |b| {
        b.iter(|| black_box(Sketch::of_vector(black_box(&wire), &challenge).expect("sketch")))
    });
    g.bench_function("sketch_aggregate", |b| {
        b.iter(|| black_box(Sketch::of_aggregate(black_box(&agg), &challenge)))
    });
    let runs = 20;
    let t = std::time::Instant::now();
    for _ in 0..runs {
        black_box(Sketch::of_aggregate(black_box(&agg), &challenge));
    }
    let per_value = t.elapsed().as_secs_f64() / (runs * values) as f64;
    println!(
        "{params:?}: 80 mask sketches cost {:.1} ms per 1,000,000 values",
        per_value * 1e9
    );
    g.bench_function("partial_decrypt", |b| {
        b.iter_batched(
            || PartialDecryptor::new(&shares[0].secret),
            |mut d| black_box(d.partial_decrypt(&agg, 1).expect("share")),
            BatchSize::SmallInput,
        )
    });
    let ds: Vec<DecryptionShare> = shares
        .iter()
        .map(|s| {
            PartialDecryptor::new(&s.secret)
                .partial_decrypt(&agg, 1)
                .expect("share")
        })
        .collect();
    g.bench_function("combine_3_shares", |b| {
        b.iter(|| black_box(combine(&agg, &ds).expect("combine")))
    });
    // Threshold 2-of-3: holder 0, first of Q = {0, 1}, covers both subsets
    // without it; one general (not binary) product per polynomial.
    let holder0 = threshold_holder0(&shares, params);
    let set = holder0
        .committee()
        .decryption_set([PartyId(0), PartyId(1)])
        .expect("set");
    g.bench_function("threshold_partial_decrypt", |b| {
        b.iter_batched(
            || ThresholdPartialDecryptor::new(&holder0, &key).expect("decryptor"),
            |mut d| black_box(d.partial_decrypt(&agg, &set, 1).expect("share")),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Holder 0's 2-of-3 threshold share of the key `shares` make.
fn threshold_holder0(shares: &[KeyShare], params: HeParams) -> ThresholdKeyShare {
    let session = KeySession::new(params, [7; 32]);
    let th = Threshold::new(PARTIES, 2).expect("committee");
    let mut c = ThresholdKeyCollector::new(&session, &th, PartyId(0)).expect("collector");
    let dealings: Vec<ThresholdDealing> = shares
        .iter()
        .map(|s| ThresholdDealer::new(&th).deal(&s.secret).expect("dealing"))
        .collect();
    for (d, s) in dealings.iter().zip(shares) {
        c.add_dealer(d.commitments(), &s.public).expect("dealer");
    }
    for d in &dealings {
        for sub in d.subshares_for(PartyId(0)).expect("subshares") {
            c.add_subshare(&sub).expect("subshare");
        }
    }
    c.finish().expect("threshold share")
}

fn benches(c: &mut Criterion) {
    bench_params(c, HeParams::Fast64);
    bench_params(c, HeParams::Secure128);
}

criterion_group!(he, benches);
criterion_main!(he);
