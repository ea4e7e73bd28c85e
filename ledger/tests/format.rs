//! The hashed form of an entry is pinned, covers every field, and survives JSON round trips.

mod common;

use common::{fresh_signer, record};
use consortia_ledger::entry::{GENESIS_PREV_HASH, HASH_DOMAIN, canonical_bytes, entry_hash};
use consortia_ledger::{LedgerEntry, SpendRecord};

/// The hash of entry 0 holding `record(1)`: a change means the canonical form changed, which
/// invalidates every existing ledger (bump the domain tag).
///
/// Computed independently from the format documented in `consortia_ledger::entry`, in Python:
///
/// ```text
/// import struct, hashlib
/// u64 = lambda v: struct.pack('>Q', v); f64 = lambda v: struct.pack('>d', v)
/// s = lambda x: u64(len(x.encode())) + x.encode()
/// P = ["bank-a", "bank-b", "telco-c"]; eps = lambda p, r: 0.05 * (p + 1) + 0.01 * (r % 3)
/// fmap = lambda m: u64(len(m)) + b"".join(s(k) + f64(m[k]) for k in sorted(m))
/// er = {p: eps(i, 1) for i, p in enumerate(P)}
/// m = b"consortia-ledger/entry/v1\0" + u64(0) + bytes(32) + s("churn") + u64(1)
/// m += u64(1795602434000 + 60000) + u64(3) + b"".join(s(p) for p in P)
/// m += s("record") + s("distributed-discrete-gaussian") + f64(1.0) + f64(1.1) + f64(0.05)
/// m += u64(3) + s("bank-a") + u64(2000) + s("bank-b") + u64(3043) + s("telco-c") + u64(1500)
/// m += fmap(er) + f64(1e-5) + fmap(er) + fmap(dict(zip(P, [8.0, 4.0, 1.5])))
/// print(hashlib.sha256(m).hexdigest())
/// ```
const GOLDEN_HASH: &str = "0bfd55a46e524830eee14de6d60f282eefe214fd7936d382300f843f67003e55";

#[test]
fn hash_of_a_fixed_record_is_pinned() {
    let hash = entry_hash(0, &GENESIS_PREV_HASH, &record(1));
    assert_eq!(hex::encode(hash), GOLDEN_HASH);
    let bytes = canonical_bytes(0, &GENESIS_PREV_HASH, &record(1));
    assert!(bytes.starts_with(HASH_DOMAIN));
    assert_eq!(&bytes[HASH_DOMAIN.len()..HASH_DOMAIN.len() + 8], &[0u8; 8]);
}

#[test]
fn hash_is_stable_across_calls_and_clones() {
    let r = record(3);
    let h = entry_hash(5, &[9u8; 32], &r);
    assert_eq!(h, entry_hash(5, &[9u8; 32], &r.clone()));
    assert_ne!(h, entry_hash(6, &[9u8; 32], &r));
    assert_ne!(h, entry_hash(5, &[8u8; 32], &r));
}

/// Mutates every field of the record's JSON form in turn: each change must change the hash, so
/// no field (present or future) escapes the hash.
#[test]
fn every_record_field_is_covered_by_the_hash() {
    let base = record(2);
    let base_hash = entry_hash(1, &[1u8; 32], &base);
    let json = serde_json::to_value(&base).unwrap();
    let fields: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
    assert_eq!(fields.len(), 14);
    for field in fields {
        let mut v = json.clone();
        let slot = &mut v[&field];
        match slot {
            serde_json::Value::String(s) => s.push('x'),
            serde_json::Value::Number(n) => {
                *slot = if let Some(u) = n.as_u64() {
                    serde_json::json!(u + 1)
                } else {
                    serde_json::json!(n.as_f64().unwrap() * 0.5)
                }
            }
            serde_json::Value::Array(a) => a.push(serde_json::json!("extra")),
            serde_json::Value::Object(o) => {
                let (k, val) = o
                    .iter()
                    .next()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .unwrap();
                let changed = match val.as_u64() {
                    Some(u) => serde_json::json!(u + 1),
                    None => serde_json::json!(val.as_f64().unwrap() * 0.5),
                };
                o.insert(k, changed);
            }
            other => panic!("unexpected JSON for {field}: {other}"),
        }
        let changed: SpendRecord = serde_json::from_value(v).unwrap();
        assert_ne!(
            entry_hash(1, &[1u8; 32], &changed),
            base_hash,
            "field {field} is not covered by the hash"
        );
    }
}

#[test]
fn swapping_values_between_map_keys_changes_the_hash() {
    let base = record(2);
    let mut swapped = base.clone();
    let a = swapped.epsilon_round["bank-a"];
    let b = swapped.epsilon_round["bank-b"];
    swapped.epsilon_round.insert("bank-a".into(), b);
    swapped.epsilon_round.insert("bank-b".into(), a);
    assert_ne!(
        entry_hash(0, &GENESIS_PREV_HASH, &base),
        entry_hash(0, &GENESIS_PREV_HASH, &swapped)
    );
    // Moving a character between adjacent strings changes the hash (length prefixes).
    let mut moved = base.clone();
    moved.privacy_unit = "recordd".into();
    moved.mechanism = "istributed-discrete-gaussian".into();
    assert_ne!(
        entry_hash(0, &GENESIS_PREV_HASH, &base),
        entry_hash(0, &GENESIS_PREV_HASH, &moved)
    );
}

/// xorshift64* (Vigna 2016), for reproducible pseudo-random float bit patterns.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Floats must come back from JSON bit for bit, or an exported ledger would fail verification.
/// Checks 20 000 random finite binary64 values (all exponents) through the entry JSON.
#[test]
fn hashes_survive_json_round_trips_of_arbitrary_floats() {
    let signer = fresh_signer();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut checked = 0;
    while checked < 20_000 {
        let mut next = || loop {
            let v = f64::from_bits(xorshift(&mut state)).abs();
            if v.is_finite() {
                return v;
            }
        };
        let mut r = record(1);
        r.clip_norm = next();
        r.noise_multiplier = next();
        for v in r.epsilon_round.values_mut() {
            *v = next();
        }
        for v in r.epsilon_cumulative.values_mut() {
            *v = next();
        }
        r.delta = next() % 1.0;
        let hash = entry_hash(0, &GENESIS_PREV_HASH, &r);
        let entry = LedgerEntry {
            index: 0,
            prev_hash: GENESIS_PREV_HASH,
            record: r,
            hash,
            signature: if checked == 0 {
                signer.sign_hash(&hash).unwrap()
            } else {
                vec![0; 64]
            },
        };
        let json = serde_json::to_vec(&entry).unwrap();
        let back: LedgerEntry = serde_json::from_slice(&json).unwrap();
        assert!(
            back.hash_matches(),
            "round trip changed {}",
            String::from_utf8_lossy(&json)
        );
        assert_eq!(back, entry);
        checked += 1;
    }
}

#[test]
fn entry_json_uses_hex_and_rejects_bad_lengths() {
    let signer = fresh_signer();
    let r = record(1);
    let hash = entry_hash(0, &GENESIS_PREV_HASH, &r);
    let entry = LedgerEntry {
        index: 0,
        prev_hash: GENESIS_PREV_HASH,
        record: r,
        hash,
        signature: signer.sign_hash(&hash).unwrap(),
    };
    let v = serde_json::to_value(&entry).unwrap();
    assert_eq!(v["prev_hash"], serde_json::json!("0".repeat(64)));
    assert_eq!(v["hash"], serde_json::json!(hex::encode(hash)));
    assert_eq!(v["signature"].as_str().unwrap().len(), 128);

    let mut short = v.clone();
    short["hash"] = serde_json::json!("abcd");
    assert!(serde_json::from_value::<LedgerEntry>(short).is_err());
    let mut long_sig = v.clone();
    long_sig["signature"] = serde_json::json!("00".repeat(300));
    assert!(serde_json::from_value::<LedgerEntry>(long_sig).is_err());
    let mut extra = v;
    extra["comment"] = serde_json::json!("not hashed");
    assert!(serde_json::from_value::<LedgerEntry>(extra).is_err());
}
