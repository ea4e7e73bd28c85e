//! The PKI directory: layout, permissions, naming rules, issue and revoke.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use consortia_pki::{Pki, PkiError, Role};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

fn hosts() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn cert_der(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

fn crl_serials(pki: &Pki) -> (Vec<Vec<u8>>, u64) {
    let der =
        rustls_pki_types::CertificateRevocationListDer::from_pem_file(pki.crl_path()).unwrap();
    let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
    let number = crl.crl_number().unwrap().to_u64_digits();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    (serials, number.first().copied().unwrap_or(0))
}

#[test]
fn init_writes_the_layout_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path().join("pki"), &hosts(), &names(&["alice", "bob"])).unwrap();

    for key in [
        pki.ca_key_path(),
        pki.coordinator_key_path(),
        pki.partner_key_path("alice"),
        pki.partner_key_path("bob"),
    ] {
        assert_eq!(mode(&key), 0o600, "{} must be private", key.display());
        let pem = std::fs::read_to_string(&key).unwrap();
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8 PEM expected"
        );
    }
    for public in [pki.ca_cert_path(), pki.crl_path(), pki.index_path()] {
        assert!(public.is_file(), "{} missing", public.display());
    }

    let records = pki.list();
    assert_eq!(records.len(), 4);
    assert_eq!(records[0].role, Role::Ca);
    assert_eq!(records[1].role, Role::Coordinator);
    assert_eq!(records[1].name, "coordinator");
    assert_eq!(records[2].name, "alice");
    assert_eq!(records[3].name, "bob");
    assert!(records.iter().all(|r| !r.is_revoked()));
    let mut serials: Vec<_> = records.iter().map(|r| r.serial.clone()).collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 4, "serial numbers must be unique");

    // The index survives a reopen.
    let reopened = Pki::open(pki.dir()).unwrap();
    assert_eq!(reopened.list(), pki.list());
    assert_eq!(crl_serials(&reopened), (vec![], 1));
}

#[test]
fn certificates_carry_names_sans_and_purposes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), &hosts(), &names(&["alice"])).unwrap();

    let der = cert_der(&pki.coordinator_cert_path());
    let (_, coord) = X509Certificate::from_der(&der).unwrap();
    let cn = coord.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "coordinator");
    let san = coord.subject_alternative_name().unwrap().unwrap();
    let sans: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(sans.iter().any(|s| s.contains("localhost")), "{sans:?}");
    assert!(sans.iter().any(|s| s.contains("7f:00:00:01")), "{sans:?}");
    let eku = coord.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);

    let der = cert_der(&pki.partner_cert_path("alice"));
    let (_, alice) = X509Certificate::from_der(&der).unwrap();
    let cn = alice.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "alice");
    let eku = alice.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!alice.is_ca());
    assert_eq!(
        hex(alice.raw_serial()),
        pki.partner("alice").unwrap().serial,
        "index serial matches the certificate"
    );

    let der = cert_der(&pki.ca_cert_path());
    let (_, ca) = X509Certificate::from_der(&der).unwrap();
    assert!(ca.is_ca());
    assert_eq!(alice.issuer().as_raw(), ca.subject().as_raw());
}

#[test]
fn partner_keys_load_as_ring_pkcs8_signing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), &hosts(), &names(&["alice"])).unwrap();
    let pem = std::fs::read(pki.partner_key_path("alice")).unwrap();
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .unwrap();
    let sig = key.sign(&rng, b"ledger entry").unwrap();

    // The certificate's public key verifies the signature.
    let cert = cert_der(&pki.partner_cert_path("alice"));
    let (_, x509) = X509Certificate::from_der(&cert).unwrap();
    let spki = x509.public_key().subject_public_key.data.to_vec();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, spki)
        .verify(b"ledger entry", sig.as_ref())
        .unwrap();
}

#[test]
fn init_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    Pki::init(dir.path(), &hosts(), &names(&["alice"])).unwrap();
    let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let err = Pki::init(dir.path(), &hosts(), &names(&["bob"])).unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
    assert!(!dir.path().join("partners/bob.pem").exists());
}

#[test]
fn bad_names_and_hosts_are_refused_before_writing() {
    for bad in [
        &["../evil"][..],
        &["a b"],
        &["coordinator"],
        &[""],
        &["x".repeat(65).leak() as &str],
        &["alice", "Alice"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let err = Pki::init(dir.path(), &hosts(), &names(bad)).unwrap_err();
        assert!(
            matches!(
                err,
                PkiError::InvalidName { .. } | PkiError::DuplicateName { .. }
            ),
            "{bad:?}: {err}"
        );
        assert!(
            !dir.path().join("ca.pem").exists(),
            "{bad:?}: nothing written"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let err = Pki::init(dir.path(), &[], &names(&["alice"])).unwrap_err();
    assert!(matches!(err, PkiError::NoHosts), "{err}");
    let err = Pki::init(dir.path(), &names(&["bad host"]), &[]).unwrap_err();
    assert!(matches!(err, PkiError::InvalidHost { .. }), "{err}");
    assert!(!dir.path().join("ca.pem").exists());
}

#[test]
fn open_without_pki_says_to_run_init() {
    let dir = tempfile::tempdir().unwrap();
    let err = Pki::open(dir.path()).unwrap_err();
    assert!(matches!(err, PkiError::NotInitialised { .. }));
    assert!(err.to_string().contains("consortia pki init"), "{err}");
}

#[test]
fn issue_refuses_active_names_and_allows_reissue_after_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(dir.path(), &hosts(), &names(&["alice"])).unwrap();

    let err = pki.issue("alice").unwrap_err();
    assert!(matches!(err, PkiError::NameTaken { .. }), "{err}");
    let err = pki.issue("ALICE").unwrap_err();
    assert!(matches!(err, PkiError::NameTaken { .. }), "{err}");
    assert!(matches!(
        pki.issue("coordinator"),
        Err(PkiError::InvalidName { .. })
    ));
    assert!(matches!(
        pki.issue("a/b"),
        Err(PkiError::InvalidName { .. })
    ));

    let carol = pki.issue("carol").unwrap();
    assert_eq!(mode(&carol.key_path), 0o600);
    assert_eq!(hex(&carol.serial), pki.partner("carol").unwrap().serial);
    assert_eq!(Pki::open(dir.path()).unwrap().list().len(), 4);

    let old = pki.partner("alice").unwrap().serial.clone();
    pki.revoke("alice").unwrap();
    let new = pki.issue("alice").unwrap();
    assert_ne!(hex(&new.serial), old);
    assert!(
        dir.path()
            .join(format!("partners/archive/alice-{old}.pem"))
            .is_file()
    );
    assert_eq!(mode(&new.key_path), 0o600);
    // The re-issued certificate is active, the old one stays revoked.
    assert!(!pki.partner("alice").unwrap().is_revoked());
    let alice: Vec<_> = pki.list().iter().filter(|r| r.name == "alice").collect();
    assert_eq!(alice.len(), 2);
    assert!(alice[0].is_revoked());
}

#[test]
fn revoke_rewrites_the_crl_with_a_higher_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(dir.path(), &hosts(), &names(&["alice", "bob"])).unwrap();
    let alice = pki.partner("alice").unwrap().serial_bytes();
    let bob = pki.partner("bob").unwrap().serial_bytes();

    let record = pki.revoke("alice").unwrap();
    assert!(record.is_revoked());
    assert_eq!(crl_serials(&pki), (vec![alice.clone()], 2));
    assert!(matches!(
        pki.revoke("alice"),
        Err(PkiError::AlreadyRevoked { .. })
    ));
    assert!(matches!(
        pki.revoke("nobody"),
        Err(PkiError::UnknownName { .. })
    ));
    assert!(matches!(
        pki.revoke("coordinator"),
        Err(PkiError::UnknownName { .. })
    ));

    pki.revoke("bob").unwrap();
    assert_eq!(crl_serials(&pki), (vec![alice, bob], 3));
    let reopened = Pki::open(dir.path()).unwrap();
    assert_eq!(reopened.crl_number(), 3);
    assert!(reopened.partner("bob").unwrap().is_revoked());
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn issue_with_validity_writes_the_requested_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(dir.path(), &hosts(), &[]).unwrap();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let issued = pki
        .issue_with_validity("old", now - 10 * day, now - day)
        .unwrap();
    let der = cert_der(&issued.cert_path);
    let (_, x509) = X509Certificate::from_der(&der).unwrap();
    assert!(
        !x509.validity().is_valid(),
        "the certificate must already be expired"
    );
    let record = pki.partner("old").unwrap();
    assert_eq!(x509.validity().not_after.timestamp(), record.not_after);
    assert!(matches!(
        pki.issue_with_validity("later", now, now - day),
        Err(PkiError::InvalidValidity)
    ));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
