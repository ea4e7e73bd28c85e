//! Property-based fuzzing of the ledger's readers of untrusted bytes: one
//! entry's JSON (as the sled store and exported files hold it), an exported
//! ledger file ([`LedgerFile::load_with_limit`]), entries stored in the
//! database ([`Ledger::entries`]), signatures and public keys
//! ([`Verifier::from_public_key_bytes`], [`Verifier::verify_hash`]) and
//! certificates ([`Verifier::from_cert_pem`], [`Verifier::from_cert_der`]).
//!
//! Each reader gets random input and valid input mutated (bytes flipped,
//! values replaced, truncated, extended). It must return an error or a value —
//! never panic — and never hold more memory than a small multiple of its
//! input (`PeakAlloc`). What it accepts goes through the auditor's checks
//! (hash, validation, signature, reports) without a panic, and an entry that
//! verifies is the entry that was signed: no mutation forges one.
//!
//! Fixed seed and budget, so CI is deterministic and fast; a long campaign:
//! `PROPTEST_CASES=100000 cargo test --release -p consortia-ledger --test fuzz_entries`.

mod common;

use std::sync::OnceLock;

use consortia_fuzzing::{PeakAlloc, fuzz, peak};
use consortia_ledger::audit::{compare, report_html, report_table, rng_warnings, verify};
use consortia_ledger::store::ENTRIES_TREE;
use consortia_ledger::{Ledger, LedgerEntry, LedgerFile, Signer, Verifier};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// What reading `len` bytes of JSON may hold: the decoded entries (maps and
/// strings, some tens of bytes per input byte at worst), plus small change.
fn bound(len: usize) -> usize {
    64 * len + (256 << 10)
}

struct Fixture {
    verifier: Verifier,
    entries: Vec<LedgerEntry>,
    /// Each entry's JSON, compact and pretty.
    jsons: Vec<String>,
    file: String,
    cert_pem: String,
    cert_der: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let signer: Signer = common::fresh_signer();
        let mut records: Vec<_> = (1..=3).map(common::record).collect();
        records.push(common::record_v1(4));
        let entries = common::chain(records, &signer);
        let jsons = entries
            .iter()
            .flat_map(|e| {
                [
                    serde_json::to_string(e).unwrap(),
                    serde_json::to_string_pretty(e).unwrap(),
                ]
            })
            .collect();
        let file =
            serde_json::to_string_pretty(&LedgerFile::from_entries(entries.clone())).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["ledger.example".into()]).unwrap();
        Fixture {
            verifier: signer.verifier(),
            entries,
            jsons,
            file,
            cert_pem: cert.cert.pem(),
            cert_der: cert.cert.der().to_vec(),
        }
    })
}

/// Values a mutation splices into JSON.
const TOKENS: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "1e999",
    "-0.0",
    "18446744073709551615",
    "18446744073709551616",
    "null",
    "true",
    "\"\"",
    "\"zcdp\"",
    "\"gaussian\"",
    "\"openssl\"",
    "\"00\"",
    "\"zz\"",
    "[]",
    "{}",
    "[[[[[[[[",
    "{\"a\":",
    ",",
    "\"",
    "\\u0000",
    "\\ud800",
    "é",
];

/// One edit of a valid text.
#[derive(Clone, Debug)]
enum Edit {
    /// Replace the JSON value after the (i mod n)-th `:` with a token, up to
    /// the next `,` `}` or `]`.
    Value(usize, usize),
    /// Insert a token at byte (i mod len), on a char boundary.
    Insert(usize, usize),
    /// Keep the first (n mod (len + 1)) bytes, on a char boundary.
    Truncate(usize),
    /// XOR byte (i mod len) with a mask (read back lossily as UTF-8).
    Flip(usize, u8),
    /// Replace one hex digit at (i mod len) by another, if it is one.
    Hex(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let t = 0..TOKENS.len();
    prop_oneof![
        4 => (any::<usize>(), t.clone()).prop_map(|(i, k)| Edit::Value(i, k)),
        2 => (any::<usize>(), t).prop_map(|(i, k)| Edit::Insert(i, k)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        2 => (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
        2 => (any::<usize>(), 0..16u8).prop_map(|(i, d)| Edit::Hex(i, d)),
    ]
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(valid: &str, edits: &[Edit]) -> String {
    let mut s = valid.to_string();
    for e in edits {
        s = match *e {
            Edit::Value(i, k) => {
                let colons: Vec<usize> = s.match_indices(':').map(|(at, _)| at).collect();
                if colons.is_empty() {
                    s
                } else {
                    let start = colons[i % colons.len()] + 1;
                    let end = s[start..]
                        .find([',', '}', ']'])
                        .map_or(s.len(), |e| start + e);
                    format!("{}{}{}", &s[..start], TOKENS[k], &s[end..])
                }
            }
            Edit::Insert(i, k) => {
                let at = floor_boundary(&s, i % (s.len() + 1));
                let mut s = s.clone();
                s.insert_str(at, TOKENS[k]);
                s
            }
            Edit::Truncate(k) => {
                let at = floor_boundary(&s, k % (s.len() + 1));
                s[..at].to_string()
            }
            Edit::Flip(i, m) if !s.is_empty() => {
                let mut b = s.into_bytes();
                let i = i % b.len();
                b[i] ^= m;
                String::from_utf8_lossy(&b).into_owned()
            }
            Edit::Hex(i, d) if !s.is_empty() => {
                let mut b = s.into_bytes();
                let i = i % b.len();
                if b[i].is_ascii_hexdigit() && !b[i].is_ascii_uppercase() {
                    b[i] = b"0123456789abcdef"[d as usize];
                }
                String::from_utf8(b).unwrap()
            }
            Edit::Flip(..) | Edit::Hex(..) => s,
        };
    }
    s
}

fn texts(corpus: Vec<String>) -> impl Strategy<Value = String> {
    let n = corpus.len();
    prop_oneof![
        1 => ".{0,200}",
        6 => (0..n, prop::collection::vec(edit(), 1..4))
            .prop_map(move |(i, e)| mutate(&corpus[i], &e)),
    ]
}

/// The auditor's checks on decoded entries: none may panic.
fn audit(entries: &[LedgerEntry], verifier: &Verifier) -> bool {
    for e in entries {
        let _ = e.hash_matches();
        let _ = e.record.validate();
        let _ = e.hash_hex();
    }
    let _ = rng_warnings(entries);
    let _ = report_table(entries);
    let _ = report_html(entries, "fuzz");
    for p in ["bank-a", "bank-b", "telco-c"] {
        let _ = compare(p, entries, &fixture().entries);
    }
    verify(entries, verifier).is_valid()
}

#[test]
fn entry_json() {
    let f = fixture();
    for (i, j) in f.jsons.iter().enumerate() {
        assert_eq!(
            serde_json::from_str::<LedgerEntry>(j).unwrap(),
            f.entries[i / 2]
        );
    }
    let strategy =
        (0..f.jsons.len()).prop_flat_map(|i| (Just(i / 2), texts(vec![f.jsons[i].clone()])));
    fuzz(256, strategy, |(at, text)| {
        let (entry, used) = peak(|| serde_json::from_str::<LedgerEntry>(&text));
        prop_assert!(used <= bound(text.len()), "{used} bytes for {}", text.len());
        let Ok(entry) = entry else { return Ok(()) };
        // In its place in the chain: it verifies only if it is the signed entry.
        let mut chain = f.entries[..at].to_vec();
        chain.push(entry.clone());
        if audit(&chain, &f.verifier) {
            prop_assert_eq!(&entry, &f.entries[at]);
        }
        Ok(())
    });
}

#[test]
fn exported_ledger_file() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.json");
    std::fs::write(&path, &f.file).unwrap();
    assert_eq!(LedgerFile::load(&path).unwrap().entries, f.entries);
    let limit = 2 * f.file.len() as u64;
    fuzz(64, texts(vec![f.file.clone()]), |text| {
        std::fs::write(&path, &text).unwrap();
        let (file, used) = peak(|| LedgerFile::load_with_limit(&path, limit));
        prop_assert!(used <= bound(text.len()), "{used} bytes for {}", text.len());
        if text.len() as u64 > limit {
            prop_assert!(file.is_err());
        }
        if let Ok(file) = file
            && audit(&file.entries, &f.verifier)
        {
            prop_assert_eq!(&file.entries, &f.entries);
        }
        Ok(())
    });
}

/// Entries as the sled database holds them (JSON under an 8-byte index key),
/// written behind the ledger's back.
#[test]
fn stored_entries() {
    let f = fixture();
    let strategy = (
        0..f.jsons.len(),
        prop::collection::vec(edit(), 1..4),
        prop_oneof![Just(None), any::<Vec<u8>>().prop_map(Some)],
    );
    fuzz(24, strategy, |(i, edits, key)| {
        let dir = tempfile::tempdir().unwrap();
        let value = mutate(&f.jsons[i], &edits);
        {
            let db = sled::Config::new()
                .path(dir.path())
                .flush_every_ms(None)
                .open()
                .unwrap();
            let tree = db.open_tree(ENTRIES_TREE).unwrap();
            let key = key.unwrap_or_else(|| ((i / 2) as u64).to_be_bytes().to_vec());
            tree.insert(key, value.as_bytes()).unwrap();
            db.flush().unwrap();
        }
        let ledger = Ledger::open_existing(dir.path()).unwrap();
        let (entries, used) = peak(|| ledger.entries());
        prop_assert!(
            used <= bound(value.len()),
            "{used} bytes for {}",
            value.len()
        );
        let _ = ledger.last();
        if let Ok(entries) = entries {
            let _ = audit(&entries, &f.verifier);
        }
        Ok(())
    });
}

#[test]
fn public_keys_and_signatures() {
    let f = fixture();
    let key = f.verifier.public_key_bytes().to_vec();
    let sig = f.entries[0].signature.clone();
    let hash = f.entries[0].hash;
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..130),
        (any::<usize>(), 1..=255u8).prop_map(move |(i, m)| {
            let mut k = key.clone();
            let i = i % k.len();
            k[i] ^= m;
            k
        }),
    ];
    let sigs = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..130),
        (any::<usize>(), 1..=255u8).prop_map(move |(i, m)| {
            let mut s = sig.clone();
            let i = i % s.len();
            s[i] ^= m;
            s
        }),
    ];
    fuzz(256, (bytes, sigs), |(key, sig)| {
        if let Ok(v) = Verifier::from_public_key_bytes(&key) {
            prop_assert!(
                !v.verify_hash(&hash, &sig)
                    || v.public_key_bytes() == f.verifier.public_key_bytes()
            );
        }
        prop_assert!(
            !f.verifier.verify_hash(&hash, &sig),
            "a mutated signature verified"
        );
        Ok(())
    });
}

#[test]
fn certificates() {
    let f = fixture();
    assert!(Verifier::from_cert_pem(f.cert_pem.as_bytes()).is_ok());
    assert!(Verifier::from_cert_der(&f.cert_der).is_ok());
    let der = f.cert_der.clone();
    let ders = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (
            prop::collection::vec((any::<usize>(), 1..=255u8), 1..4),
            any::<usize>()
        )
            .prop_map(move |(flips, cut)| {
                let mut d = der.clone();
                for (i, m) in flips {
                    let i = i % d.len();
                    d[i] ^= m;
                }
                d.truncate(d.len() - cut % 8);
                d
            }),
    ];
    fuzz(
        256,
        (ders, texts(vec![f.cert_pem.clone()])),
        |(der, pem)| {
            let (_, used) = peak(|| Verifier::from_cert_der(&der));
            prop_assert!(used <= bound(der.len()));
            let (_, used) = peak(|| Verifier::from_cert_pem(pem.as_bytes()));
            prop_assert!(used <= bound(pem.len()));
            Ok(())
        },
    );
}

/// The probe sees what a reader holds (else every bound above is vacuous).
#[test]
fn peak_alloc_counts_live_bytes() {
    let (v, used) = peak(|| vec![0u8; 1 << 20]);
    assert!(used >= 1 << 20, "{used}");
    drop(v);
}
