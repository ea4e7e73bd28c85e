//! The hashed form of an entry is pinned, covers every field, and survives JSON round trips.

mod common;

use common::{fresh_signer, record, record_v1};
use consortia_ledger::entry::{
    GENESIS_PREV_HASH, HASH_DOMAIN, HASH_DOMAIN_V1, HASH_DOMAIN_V2, canonical_bytes, entry_hash,
};
use consortia_ledger::{LedgerEntry, SpendRecord, StoredEvent};

/// The hash of entry 0 holding `record_v1(1)` (format v1): ledgers written before format v2
/// must keep verifying.
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
/// def body(tag):
///     m = tag + u64(0) + bytes(32) + s("churn") + u64(1)
///     m += u64(1795602434000 + 60000) + u64(3) + b"".join(s(p) for p in P)
///     m += s("record") + s("distributed-discrete-gaussian") + f64(1.0) + f64(1.1) + f64(0.05)
///     m += u64(3) + s("bank-a") + u64(2000) + s("bank-b") + u64(3043) + s("telco-c") + u64(1500)
///     m += fmap(er) + f64(1e-5) + fmap(er) + fmap(dict(zip(P, [8.0, 4.0, 1.5])))
///     return m
/// print(hashlib.sha256(body(b"consortia-ledger/entry/v1\0")).hexdigest())
/// ```
const GOLDEN_HASH_V1: &str = "0bfd55a46e524830eee14de6d60f282eefe214fd7936d382300f843f67003e55";

/// The hash of entry 0 holding `record(1)` (format v2): a change means the canonical form
/// changed, which invalidates every existing ledger (bump the domain tag). With `body` above:
///
/// ```text
/// m = body(b"consortia-ledger/entry/v2\0")
/// m += u64(1) + s("zcdp") + f64(0.0125) + u64(1)
/// m += s("distributed") + s("add-remove") + b"\x01" + u64(2) + b"\x01" + u64(41) + s("openssl")
/// m += b"\x01" + s("customers.csv") + bytes([0x11]*32) + bytes([0xab]*32)
/// print(hashlib.sha256(m).hexdigest())
/// ```
const GOLDEN_HASH_V2: &str = "06ef5fddc045bc67a63f6982a921b309d59a1e9dd6278b6189f301c58d105c25";

#[test]
fn hash_of_a_fixed_record_is_pinned() {
    let hash = entry_hash(0, &GENESIS_PREV_HASH, &record(1));
    assert_eq!(hex::encode(hash), GOLDEN_HASH_V2);
    let bytes = canonical_bytes(0, &GENESIS_PREV_HASH, &record(1));
    assert_eq!(HASH_DOMAIN, HASH_DOMAIN_V2);
    assert!(bytes.starts_with(HASH_DOMAIN_V2));
    assert_eq!(&bytes[HASH_DOMAIN.len()..HASH_DOMAIN.len() + 8], &[0u8; 8]);
}

#[test]
fn hash_of_a_v1_record_is_unchanged() {
    let r = record_v1(1);
    assert_eq!(r.format(), 1);
    let hash = entry_hash(0, &GENESIS_PREV_HASH, &r);
    assert_eq!(hex::encode(hash), GOLDEN_HASH_V1);
    assert!(canonical_bytes(0, &GENESIS_PREV_HASH, &r).starts_with(HASH_DOMAIN_V1));
}

#[test]
fn v1_entries_still_parse_and_verify_and_cannot_gain_unhashed_fields() {
    let signer = fresh_signer();
    let r = record_v1(1);
    let hash = entry_hash(0, &GENESIS_PREV_HASH, &r);
    let entry = LedgerEntry {
        index: 0,
        prev_hash: GENESIS_PREV_HASH,
        record: r,
        hash,
        signature: signer.sign_hash(&hash).unwrap(),
    };
    let v = serde_json::to_value(&entry).unwrap();
    assert!(
        v["record"].get("charged").is_none(),
        "v1 entries are written back as v1"
    );
    let back: LedgerEntry = serde_json::from_value(v.clone()).unwrap();
    assert!(back.hash_matches());
    // Adding v2 details to a v1 entry switches its hashed form: the stored hash no longer
    // matches, so nothing in the JSON escapes the hash.
    let mut grafted = v;
    grafted["record"]["charged"] = serde_json::to_value(common::charged()).unwrap();
    let grafted: LedgerEntry = serde_json::from_value(grafted).unwrap();
    assert!(!grafted.hash_matches());
}

#[test]
fn hash_is_stable_across_calls_and_clones() {
    let r = record(3);
    let h = entry_hash(5, &[9u8; 32], &r);
    assert_eq!(h, entry_hash(5, &[9u8; 32], &r.clone()));
    assert_ne!(h, entry_hash(6, &[9u8; 32], &r));
    assert_ne!(h, entry_hash(5, &[8u8; 32], &r));
}

/// Every leaf of a JSON value, as a JSON pointer.
fn leaves(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, c) in o {
                leaves(c, format!("{at}/{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                leaves(c, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// Changes one leaf to another value of the same type that the record still accepts.
fn mutate(slot: &mut serde_json::Value, pointer: &str) {
    let changed = match &*slot {
        serde_json::Value::String(s) if pointer.ends_with("/placement") => {
            serde_json::json!(if s == "local" { "distributed" } else { "local" })
        }
        serde_json::Value::String(s) if pointer.ends_with("/adjacency") => {
            serde_json::json!(if s == "add-remove" {
                "zero-out"
            } else {
                "add-remove"
            })
        }
        serde_json::Value::String(s) if s.len() == 64 && hex::decode(s).is_ok() => {
            serde_json::json!(s.replace(&s[..1], if &s[..1] == "f" { "0" } else { "f" }))
        }
        serde_json::Value::String(s) => serde_json::json!(format!("{s}x")),
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(u) => serde_json::json!(u + 1),
            None => serde_json::json!(n.as_f64().unwrap() * 0.5),
        },
        other => panic!("unexpected JSON at {pointer}: {other}"),
    };
    *slot = changed;
}

/// Mutates every leaf of the record's JSON form in turn (and adds to every list): each change
/// must change the hash, so no field (present or future) escapes the hash.
#[test]
fn every_record_field_is_covered_by_the_hash() {
    let base = record(2);
    let base_hash = entry_hash(1, &[1u8; 32], &base);
    let json = serde_json::to_value(&base).unwrap();
    assert_eq!(json.as_object().unwrap().len(), 15);
    assert_eq!(json["charged"].as_object().unwrap().len(), 8);
    let mut pointers = Vec::new();
    leaves(&json, String::new(), &mut pointers);
    assert!(pointers.len() > 30, "{pointers:?}");
    // An event's kind decides its other fields: it is changed with them below.
    for pointer in pointers.iter().filter(|p| !p.ends_with("/kind")) {
        let mut v = json.clone();
        mutate(v.pointer_mut(pointer).unwrap(), pointer);
        let changed: SpendRecord = serde_json::from_value(v)
            .unwrap_or_else(|e| panic!("mutating {pointer} gave an unreadable record: {e}"));
        assert_ne!(
            entry_hash(1, &[1u8; 32], &changed),
            base_hash,
            "field {pointer} is not covered by the hash"
        );
    }
    // Optional details: absent differs from present.
    for field in ["honest_contributors", "dimension", "dataset"] {
        let mut v = json.clone();
        v["charged"][field] = serde_json::Value::Null;
        let changed: SpendRecord = serde_json::from_value(v).unwrap();
        assert_ne!(entry_hash(1, &[1u8; 32], &changed), base_hash, "{field}");
    }
    // Another kind with the same figures.
    let mut kind = base.clone();
    kind.charged.as_mut().unwrap().events[0] = StoredEvent::Gaussian {
        noise_multiplier: 0.0125,
        count: 1,
    };
    assert_ne!(entry_hash(1, &[1u8; 32], &kind), base_hash);
    // One more participant or event.
    let mut more = base.clone();
    more.participants.push("extra".into());
    assert_ne!(entry_hash(1, &[1u8; 32], &more), base_hash);
    let mut more = base.clone();
    more.charged
        .as_mut()
        .unwrap()
        .events
        .push(StoredEvent::Gaussian {
            noise_multiplier: 5.0,
            count: 1,
        });
    assert_ne!(entry_hash(1, &[1u8; 32], &more), base_hash);
}

#[test]
fn events_are_stored_with_their_kind_and_rejected_when_malformed() {
    let v = serde_json::to_value(StoredEvent::PoissonSampledGaussian {
        sampling_rate: 0.02,
        noise_multiplier: 1.1,
        count: 20,
    })
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"kind": "poisson-sampled-gaussian", "sampling_rate": 0.02,
                           "noise_multiplier": 1.1, "count": 20})
    );
    for bad in [
        serde_json::json!({"kind": "laplace", "scale": 1.0, "count": 1}),
        serde_json::json!({"kind": "gaussian", "noise_multiplier": 1.0}),
        serde_json::json!({"kind": "zcdp", "rho": 0.1, "count": 1, "note": "x"}),
    ] {
        assert!(
            serde_json::from_value::<StoredEvent>(bad.clone()).is_err(),
            "{bad}"
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
