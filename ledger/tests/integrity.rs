//! Storage, export and tamper detection of the ledger.

mod common;

use common::{PARTNERS, build_ledger, chain, fresh_signer, record, record_v1};
use consortia_ledger::audit::{ExpectedHead, ProblemKind, verify, verify_with_head};
use consortia_ledger::entry::entry_hash;
use consortia_ledger::store::{ENTRIES_TREE, EXPORT_FORMAT};
use consortia_ledger::{
    Ledger, LedgerEntry, LedgerError, LedgerFile, Signer, SpendRecord, Verifier, load_entries,
};

fn problem_kind(entries: &[LedgerEntry], verifier: &Verifier) -> (u64, ProblemKind) {
    let report = verify(entries, verifier);
    let p = report.problem.expect("tampering must be detected");
    (p.index, p.kind)
}

#[test]
fn valid_ledger_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    let ledger = build_ledger(dir.path(), &signer, 10);
    let entries = ledger.entries().unwrap();
    assert_eq!(entries.len(), 10);
    assert_eq!(ledger.len(), 10);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.index, i as u64);
        assert_eq!(e.signature.len(), 64);
    }
    let report = verify(&entries, &signer.verifier());
    assert!(report.is_valid(), "{report}");
    assert_eq!(report.valid_entries, 10);
    assert_eq!(report.valid_head, Some((9, entries[9].hash)));
    assert!(report.to_string().starts_with("OK: 10 entries"));

    // Heads the ledger contains pass, including earlier ones.
    let v = signer.verifier();
    for head in [
        ExpectedHead::LastIndex(9),
        ExpectedHead::LastIndex(4),
        ExpectedHead::Hash(entries[9].hash),
        ExpectedHead::Hash(entries[5].hash),
        ExpectedHead::Entry {
            index: 9,
            hash: entries[9].hash,
        },
    ] {
        let r = verify_with_head(&entries, &v, head);
        assert!(r.is_valid(), "{head:?}: {r}");
    }
    assert_eq!(ledger.last().unwrap().as_ref(), entries.last());
}

#[test]
fn reopen_after_drop_keeps_entries_and_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    let before = build_ledger(dir.path(), &signer, 10).entries().unwrap();

    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.entries().unwrap(), before);
    let e = ledger.append(record(11), &signer).unwrap();
    assert_eq!(e.index, 10);
    assert_eq!(e.prev_hash, before[9].hash);
    drop(ledger);

    let again = Ledger::open_existing(dir.path())
        .unwrap()
        .entries()
        .unwrap();
    assert_eq!(again.len(), 11);
    assert_eq!(again[..10], before[..]);
    assert!(verify(&again, &signer.verifier()).is_valid());
}

#[test]
fn cumulative_epsilon_is_the_latest_recorded_value() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.cumulative_epsilon("bank-a").unwrap(), 0.0);
    for round in 1..=10 {
        ledger.append(record(round), &signer).unwrap();
    }
    // A later round without bank-a must not hide its total.
    let mut r = record(11);
    r.participants.retain(|p| p != "bank-a");
    r.epsilon_round.remove("bank-a");
    r.dataset_sizes.remove("bank-a");
    r.epsilon_cumulative.remove("bank-a");
    ledger.append(r, &signer).unwrap();
    assert_eq!(
        ledger.cumulative_epsilon("bank-a").unwrap(),
        record(10).epsilon_cumulative["bank-a"]
    );
    for p in &PARTNERS[1..] {
        assert_eq!(
            ledger.cumulative_epsilon(p).unwrap(),
            record(11).epsilon_cumulative[*p]
        );
    }
    assert_eq!(ledger.cumulative_epsilon("nobody").unwrap(), 0.0);
}

/// Rewrites the stored JSON of entry `index` in the sled database behind the ledger's back.
fn tamper_in_sled(dir: &std::path::Path, index: u64, edit: impl FnOnce(&mut serde_json::Value)) {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree(ENTRIES_TREE).unwrap();
    let key = index.to_be_bytes();
    let mut v: serde_json::Value =
        serde_json::from_slice(&tree.get(key).unwrap().unwrap()).unwrap();
    edit(&mut v);
    tree.insert(key, serde_json::to_vec(&v).unwrap()).unwrap();
    db.flush().unwrap();
}

#[test]
fn epsilon_edited_in_sled_store_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    drop(build_ledger(dir.path(), &signer, 10));
    tamper_in_sled(dir.path(), 4, |v| {
        v["record"]["epsilon_round"]["bank-a"] = serde_json::json!(0.0001);
    });
    let entries = Ledger::open(dir.path()).unwrap().entries().unwrap();
    assert_eq!(entries[4].record.epsilon_round["bank-a"], 0.0001);
    assert_eq!(
        problem_kind(&entries, &signer.verifier()),
        (4, ProblemKind::Edited)
    );
    let report = verify(&entries, &signer.verifier());
    assert_eq!(report.valid_entries, 4);
    assert!(
        report.to_string().contains("entry 4 was edited"),
        "{report}"
    );
}

#[test]
fn append_refuses_to_extend_an_edited_head() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    drop(build_ledger(dir.path(), &signer, 3));
    tamper_in_sled(dir.path(), 2, |v| {
        v["record"]["epsilon_cumulative"]["bank-b"] = serde_json::json!(0.0);
    });
    let ledger = Ledger::open(dir.path()).unwrap();
    let err = ledger.append(record(4), &signer).unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err}");
    assert_eq!(ledger.len(), 3);
}

#[test]
fn unknown_field_smuggled_into_the_store_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    drop(build_ledger(dir.path(), &signer, 3));
    tamper_in_sled(dir.path(), 1, |v| {
        v["record"]["note"] = serde_json::json!("approved");
    });
    let err = Ledger::open(dir.path()).unwrap().entries().unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("storage key 1"), "{err}");
}

#[test]
fn export_round_trips_and_edits_in_the_file_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    let ledger = build_ledger(&dir.path().join("db"), &signer, 10);
    let path = dir.path().join("ledger.json");
    ledger.export_json(&path).unwrap();

    let file = LedgerFile::load(&path).unwrap();
    assert_eq!(file.format, EXPORT_FORMAT);
    assert_eq!(file.entries, ledger.entries().unwrap());
    assert!(verify(&file.entries, &signer.verifier()).is_valid());
    assert_eq!(load_entries(&path).unwrap(), file.entries);

    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["entries"][6]["record"]["epsilon_cumulative"]["telco-c"] = serde_json::json!(0.5);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let edited = LedgerFile::load(&path).unwrap().entries;
    assert_eq!(
        problem_kind(&edited, &signer.verifier()),
        (6, ProblemKind::Edited)
    );
}

#[test]
fn removed_entry_is_detected() {
    let signer = fresh_signer();
    let entries = chain((1..=10).map(record).collect(), &signer);
    let v = signer.verifier();

    let mut removed = entries.clone();
    removed.remove(3);
    assert_eq!(
        problem_kind(&removed, &v),
        (
            3,
            ProblemKind::Removed {
                first_missing: 3,
                count: 1
            }
        )
    );

    let mut first_removed = entries.clone();
    first_removed.remove(0);
    assert_eq!(
        problem_kind(&first_removed, &v).1,
        ProblemKind::Removed {
            first_missing: 0,
            count: 1
        }
    );

    let mut two_removed = entries;
    two_removed.drain(5..7);
    assert_eq!(
        problem_kind(&two_removed, &v).1,
        ProblemKind::Removed {
            first_missing: 5,
            count: 2
        }
    );
}

#[test]
fn removal_hidden_by_reindexing_is_detected() {
    let signer = fresh_signer();
    let mut entries = chain((1..=10).map(record).collect(), &signer);
    entries.remove(3);
    for (i, e) in entries.iter_mut().enumerate() {
        e.index = i as u64;
    }
    // Re-indexing changes what the hash covers.
    assert_eq!(
        problem_kind(&entries, &signer.verifier()),
        (3, ProblemKind::Edited)
    );
}

#[test]
fn swapped_entries_are_detected() {
    let signer = fresh_signer();
    let mut entries = chain((1..=10).map(record).collect(), &signer);
    entries.swap(5, 6);
    let report = verify(&entries, &signer.verifier());
    let p = report.problem.unwrap();
    assert_eq!(p.position, 5);
    assert_eq!(
        p.kind,
        ProblemKind::Reordered {
            expected_index: 5,
            found_index: 6
        }
    );
    assert!(p.to_string().contains("reordered"));
}

#[test]
fn duplicated_entry_is_detected() {
    let signer = fresh_signer();
    let mut entries = chain((1..=10).map(record).collect(), &signer);
    let copy = entries[3].clone();
    entries.insert(4, copy);
    assert_eq!(
        problem_kind(&entries, &signer.verifier()).1,
        ProblemKind::Duplicate { index: 3 }
    );
}

#[test]
fn truncation_is_detected_only_against_a_known_head() {
    let signer = fresh_signer();
    let v = signer.verifier();
    let full = chain((1..=10).map(record).collect(), &signer);
    let mut truncated = full.clone();
    truncated.truncate(7);

    // A shorter chain is still a valid chain...
    assert!(verify(&truncated, &v).is_valid());
    // ...but not against the head published earlier.
    let r = verify_with_head(&truncated, &v, ExpectedHead::LastIndex(9));
    assert_eq!(
        r.problem.unwrap().kind,
        ProblemKind::Truncated {
            expected_last_index: 9,
            found_last_index: Some(6)
        }
    );
    let r = verify_with_head(
        &truncated,
        &v,
        ExpectedHead::Entry {
            index: 9,
            hash: full[9].hash,
        },
    );
    assert!(matches!(
        r.problem.unwrap().kind,
        ProblemKind::Truncated { .. }
    ));
    let r = verify_with_head(&truncated, &v, ExpectedHead::Hash(full[9].hash));
    assert!(matches!(
        r.problem.unwrap().kind,
        ProblemKind::HeadNotFound { .. }
    ));
    let r = verify_with_head(&[], &v, ExpectedHead::LastIndex(0));
    assert_eq!(
        r.problem.unwrap().kind,
        ProblemKind::Truncated {
            expected_last_index: 0,
            found_last_index: None
        }
    );
}

#[test]
fn heads_parse_and_print_for_the_command_line() {
    let signer = fresh_signer();
    let entries = chain((1..=3).map(record).collect(), &signer);
    let head = ExpectedHead::from(&entries[2]);
    let text = head.to_string();
    assert_eq!(text, format!("2:{}", entries[2].hash_hex()));
    assert_eq!(text.parse::<ExpectedHead>().unwrap(), head);
    assert_eq!(
        entries[1].hash_hex().parse::<ExpectedHead>().unwrap(),
        ExpectedHead::Hash(entries[1].hash)
    );
    assert_eq!(
        "7".parse::<ExpectedHead>().unwrap(),
        ExpectedHead::LastIndex(7)
    );
    assert!("7:abc".parse::<ExpectedHead>().is_err());
    assert!("seven".parse::<ExpectedHead>().is_err());
}

#[test]
fn rewritten_history_is_detected_against_a_known_head() {
    // The signer itself rewrites its ledger: every entry verifies, but not the published head.
    let signer = fresh_signer();
    let published = chain((1..=10).map(record).collect(), &signer);
    let mut records: Vec<SpendRecord> = (1..=10).map(record).collect();
    records[2].epsilon_round.insert("bank-a".into(), 0.0);
    let rewritten = chain(records, &signer);
    let v = signer.verifier();
    assert!(verify(&rewritten, &v).is_valid());
    let head = ExpectedHead::Entry {
        index: 9,
        hash: published[9].hash,
    };
    let p = verify_with_head(&rewritten, &v, head).problem.unwrap();
    assert_eq!(p.index, 9);
    assert!(matches!(p.kind, ProblemKind::HeadMismatch { .. }));
}

#[test]
fn entry_spliced_from_another_chain_breaks_the_chain() {
    let signer = fresh_signer();
    let mut entries = chain((1..=10).map(record).collect(), &signer);
    let mut other_records: Vec<SpendRecord> = (1..=10).map(record).collect();
    other_records[0].task = "other-task".into();
    let other = chain(other_records, &signer);
    // Same key, same index, valid hash and signature, but a different predecessor.
    entries[3] = other[3].clone();
    assert_eq!(
        problem_kind(&entries, &signer.verifier()),
        (3, ProblemKind::ChainBroken)
    );
}

#[test]
fn signature_by_another_key_is_detected() {
    let signer = fresh_signer();
    let intruder = fresh_signer();
    let v = signer.verifier();
    let mut entries = chain((1..=10).map(record).collect(), &signer);

    // Edited, re-hashed and re-signed by someone else.
    entries[2].record.epsilon_round.insert("bank-b".into(), 0.0);
    entries[2].hash = entry_hash(2, &entries[2].prev_hash, &entries[2].record);
    entries[2].signature = intruder.sign_hash(&entries[2].hash).unwrap();
    assert_eq!(problem_kind(&entries, &v), (2, ProblemKind::BadSignature));

    // Edited and re-hashed, old signature kept.
    let mut rehashed = chain((1..=10).map(record).collect(), &signer);
    rehashed[7].record.clip_norm = 100.0;
    rehashed[7].hash = entry_hash(7, &rehashed[7].prev_hash, &rehashed[7].record);
    assert_eq!(problem_kind(&rehashed, &v), (7, ProblemKind::BadSignature));

    // A whole ledger checked against the wrong key fails at the first entry.
    let clean = chain((1..=3).map(record).collect(), &signer);
    assert_eq!(
        problem_kind(&clean, &intruder.verifier()),
        (0, ProblemKind::BadSignature)
    );
}

#[test]
fn pem_key_and_certificate_from_rcgen_sign_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["coordinator.consortia".into()]).unwrap();
    let key_path = dir.path().join("coordinator.key.pem");
    let cert_path = dir.path().join("coordinator.pem");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();

    let signer = Signer::from_pkcs8_pem_file(&key_path).unwrap();
    let verifier = Verifier::from_cert_pem_file(&cert_path).unwrap();
    assert_eq!(verifier, signer.verifier());
    assert_eq!(verifier.public_key_bytes().len(), 65);
    assert!(!format!("{signer:?}").contains(&hex::encode(certified.signing_key.serialize_der())));

    let ledger = build_ledger(&dir.path().join("db"), &signer, 5);
    assert!(verify(&ledger.entries().unwrap(), &verifier).is_valid());

    let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
    let other_verifier = Verifier::from_cert_pem(other.cert.pem().as_bytes()).unwrap();
    let (index, kind) = problem_kind(&ledger.entries().unwrap(), &other_verifier);
    assert_eq!((index, kind), (0, ProblemKind::BadSignature));
}

#[test]
fn unusable_keys_are_rejected_with_guidance() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();

    // A certificate is not a key, a key is not a certificate.
    let err = Signer::from_pkcs8_pem(certified.cert.pem().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("PKCS#8"), "{err}");
    let err =
        Verifier::from_cert_pem(certified.signing_key.serialize_pem().as_bytes()).unwrap_err();
    assert!(matches!(err, LedgerError::VerifyingKey { .. }), "{err}");

    // SEC 1 "EC PRIVATE KEY" is named and refused.
    let sec1 = certified
        .signing_key
        .serialize_pem()
        .replace("PRIVATE KEY", "EC PRIVATE KEY");
    let err = Signer::from_pkcs8_pem(sec1.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("EC PRIVATE KEY"), "{err}");

    // An Ed25519 certificate has the wrong key type.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_cert = rcgen::CertificateParams::new(vec!["ed".to_string()])
        .unwrap()
        .self_signed(&ed)
        .unwrap();
    let err = Verifier::from_cert_pem(ed_cert.pem().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("id-ecPublicKey"), "{err}");

    // Oversized files are not read.
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'A'; 70 * 1024]).unwrap();
    let err = Signer::from_pkcs8_pem_file(&big).unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    assert!(err.to_string().contains("big.pem"), "{err}");

    // Missing file, garbage DER, bad raw key.
    assert!(Verifier::from_cert_pem_file(dir.path().join("missing.pem")).is_err());
    assert!(Signer::from_pkcs8_der(b"not a key").is_err());
    assert!(Verifier::from_public_key_bytes(&[4u8; 33]).is_err());
    assert!(Verifier::from_public_key_bytes(&[2u8; 65]).is_err());
    // A 65-byte string that is not a curve point verifies nothing.
    let bogus = Verifier::from_public_key_bytes(&[4u8; 65]).unwrap();
    let signer = fresh_signer();
    let sig = signer.sign_hash(&[7u8; 32]).unwrap();
    assert!(!bogus.verify_hash(&[7u8; 32], &sig));
    assert!(signer.verifier().verify_hash(&[7u8; 32], &sig));
    let raw = Verifier::from_public_key_bytes(signer.public_key_bytes()).unwrap();
    assert!(raw.verify_hash(&[7u8; 32], &sig));
}

#[test]
fn invalid_records_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    let ledger = Ledger::open(dir.path()).unwrap();
    type Edit = Box<dyn Fn(&mut SpendRecord)>;
    let cases: Vec<Edit> = vec![
        Box::new(|r| {
            r.epsilon_round.insert("bank-a".into(), f64::NAN);
        }),
        Box::new(|r| {
            r.epsilon_cumulative.insert("bank-a".into(), -1.0);
        }),
        Box::new(|r| r.delta = 1.0),
        Box::new(|r| r.sampling_rate = 0.0),
        Box::new(|r| r.clip_norm = f64::INFINITY),
        Box::new(|r| r.participants.push("bank-a".into())),
        Box::new(|r| {
            r.epsilon_round.insert("stranger".into(), 0.1);
        }),
        Box::new(|r| {
            r.budget_epsilon.insert("bank-a".into(), 0.0);
        }),
        Box::new(|r| r.task.clear()),
        // Format v1 (no mechanism details) is read, never written.
        Box::new(|r| r.charged = None),
        Box::new(|r| r.charged.as_mut().unwrap().events.clear()),
        Box::new(|r| {
            r.charged.as_mut().unwrap().events[0] = consortia_ledger::StoredEvent::Gaussian {
                noise_multiplier: 0.0,
                count: 1,
            }
        }),
        Box::new(|r| {
            r.charged.as_mut().unwrap().events[0] =
                consortia_ledger::StoredEvent::Zcdp { rho: 0.1, count: 0 }
        }),
        Box::new(|r| r.charged.as_mut().unwrap().rng.clear()),
        Box::new(|r| r.charged.as_mut().unwrap().honest_contributors = Some(0)),
    ];
    for (i, edit) in cases.iter().enumerate() {
        let mut r = record(1);
        edit(&mut r);
        let err = ledger.append(r, &signer).unwrap_err();
        assert!(
            matches!(err, LedgerError::InvalidRecord(_)),
            "case {i}: {err}"
        );
    }
    assert!(ledger.is_empty());
}

#[test]
fn exported_files_are_size_limited_and_format_checked() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    let ledger = build_ledger(&dir.path().join("db"), &signer, 3);
    let path = dir.path().join("ledger.json");
    ledger.export_json(&path).unwrap();

    let err = LedgerFile::load_with_limit(&path, 100).unwrap_err();
    assert!(
        matches!(err, LedgerError::TooLarge { limit: 100, .. }),
        "{err}"
    );

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(EXPORT_FORMAT, "consortia-ledger/v0")).unwrap();
    assert!(matches!(
        LedgerFile::load(&path).unwrap_err(),
        LedgerError::UnsupportedFormat { .. }
    ));
    std::fs::write(&path, "{\"format\": ").unwrap();
    assert!(matches!(
        LedgerFile::load(&path).unwrap_err(),
        LedgerError::Json { .. }
    ));
}

#[test]
fn load_entries_reads_a_directory_and_never_creates_one() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    let db = dir.path().join("db");
    let expected = build_ledger(&db, &signer, 4).entries().unwrap();
    assert_eq!(load_entries(&db).unwrap(), expected);

    let missing = dir.path().join("missing");
    assert!(matches!(
        load_entries(&missing).unwrap_err(),
        LedgerError::NotFound { .. }
    ));
    assert!(matches!(
        Ledger::open_existing(&missing).unwrap_err(),
        LedgerError::NotFound { .. }
    ));
    assert!(!missing.exists());
}

/// sled takes an exclusive `flock` on the database, which a second open of the same
/// directory (from this or another process) cannot get on Linux.
#[cfg(target_os = "linux")]
#[test]
fn a_database_held_open_elsewhere_gives_advice() {
    let dir = tempfile::tempdir().unwrap();
    let _held = Ledger::open(dir.path()).unwrap();
    let err = Ledger::open(dir.path()).unwrap_err();
    assert!(matches!(err, LedgerError::Open { .. }), "{err}");
    assert!(err.to_string().contains("exported JSON copy"), "{err}");
}

#[test]
fn concurrent_appends_form_one_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    let ledger = Ledger::open(dir.path()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (ledger, signer) = (&ledger, &signer);
            s.spawn(move || {
                for i in 0..5 {
                    ledger.append(record(t * 100 + i + 1), signer).unwrap();
                }
            });
        }
    });
    let entries = ledger.entries().unwrap();
    assert_eq!(entries.len(), 20);
    assert!(verify(&entries, &signer.verifier()).is_valid());
}

/// A ledger written before format v2 keeps verifying, and new (v2) entries chain onto it.
#[test]
fn a_v1_ledger_verifies_and_v2_entries_extend_it() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fresh_signer();
    let old = chain((1..=3).map(record_v1).collect(), &signer);
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(ENTRIES_TREE).unwrap();
        for e in &old {
            tree.insert(e.index.to_be_bytes(), serde_json::to_vec(e).unwrap())
                .unwrap();
        }
        db.flush().unwrap();
    }
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.entries().unwrap(), old);
    let appended = ledger.append(record(4), &signer).unwrap();
    assert_eq!(appended.prev_hash, old[2].hash);
    let entries = ledger.entries().unwrap();
    let formats: Vec<u32> = entries.iter().map(|e| e.record.format()).collect();
    assert_eq!(formats, vec![1, 1, 1, 2]);
    let report = verify(&entries, &signer.verifier());
    assert!(report.is_valid(), "{report}");

    // An export of format consortia-ledger/v1 (before `insecure_rng`) still loads.
    let path = dir.path().join("old.json");
    let v1_file = serde_json::json!({"format": "consortia-ledger/v1", "entries": old});
    std::fs::write(&path, serde_json::to_vec_pretty(&v1_file).unwrap()).unwrap();
    let file = LedgerFile::load(&path).unwrap();
    assert_eq!(file.entries, old);
    assert_eq!(
        file.insecure_rng.len(),
        3,
        "v1 entries did not record their generator"
    );
    assert!(verify(&file.entries, &signer.verifier()).is_valid());
}
