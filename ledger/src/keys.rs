//! The keys that sign ledger entries and verify them.
//!
//! Entries are signed with ECDSA over P-256 with SHA-256 (FIPS 186-4 §6), fixed-length
//! `r || s` signatures (ring `ECDSA_P256_SHA256_FIXED_SIGNING`). The signer loads its PKCS#8
//! private key (RFC 5208/5958) from a PEM file, as written by rcgen; verifiers take the public key
//! from the signer's X.509 certificate (RFC 5280 §4.1.2.7, `id-ecPublicKey` with the
//! `prime256v1` curve, RFC 5480 §2) or from the raw uncompressed point (SEC 1 §2.3.3).
//!
//! Loading a certificate here does not validate it: whoever picks the certificate (e.g. the PKI
//! crate, against the consortium CA and revocation list) decides whether it is trusted.

use std::fmt;
use std::io::Read;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use sha2::{Digest, Sha256};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::error::LedgerError;

/// Largest key or certificate PEM file read (bytes).
pub const MAX_PEM_BYTES: u64 = 64 * 1024;

/// Length of an uncompressed P-256 public key: `0x04 || x || y`.
pub const P256_PUBLIC_KEY_LEN: usize = 65;

/// Signs ledger entries with the ledger owner's ECDSA P-256 private key.
///
/// `Debug` shows only the public-key fingerprint. The private scalar lives inside ring's key
/// object, which does not expose it; the PEM and DER buffers it was loaded from are zeroed.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    /// Loads a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`) holding a P-256 key.
    pub fn from_pkcs8_pem_file(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref();
        let text = read_limited(path).map_err(|reason| LedgerError::SigningKey {
            path: Some(path.to_path_buf()),
            reason,
        })?;
        Self::from_pkcs8_pem(&text).map_err(|e| match e {
            LedgerError::SigningKey { reason, .. } => LedgerError::SigningKey {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        })
    }

    /// Parses PKCS#8 PEM text (`-----BEGIN PRIVATE KEY-----`) holding a P-256 key.
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<Self, LedgerError> {
        let err = |reason: String| LedgerError::SigningKey { path: None, reason };
        for block in Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| err(format!("malformed PEM: {e}")))?;
            let der = Zeroizing::new(block.contents);
            if block.label == "PRIVATE KEY" {
                return Self::from_pkcs8_der(&der);
            }
            if block.label.contains("PRIVATE KEY") {
                return Err(err(format!(
                    "found a `{}` block, which is not PKCS#8; convert it with \
                     `openssl pkcs8 -topk8 -nocrypt`",
                    block.label
                )));
            }
        }
        Err(err("no `-----BEGIN PRIVATE KEY-----` block found".into()))
    }

    /// Parses a DER-encoded PKCS#8 document holding a P-256 key (as made by
    /// `ring::signature::EcdsaKeyPair::generate_pkcs8`).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, LedgerError> {
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).map_err(|e| {
                LedgerError::SigningKey {
                    path: None,
                    reason: format!("not a PKCS#8 ECDSA P-256 key ({e})"),
                }
            })?;
        Ok(Self { key, rng })
    }

    /// Signs a 32-byte entry hash; returns the 64-byte `r || s` signature.
    pub fn sign_hash(&self, hash: &[u8; 32]) -> Result<Vec<u8>, LedgerError> {
        let sig = self
            .key
            .sign(&self.rng, hash)
            .map_err(|_| LedgerError::Signing)?;
        Ok(sig.as_ref().to_vec())
    }

    /// The uncompressed public key (65 bytes).
    pub fn public_key_bytes(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// A verifier for this signer's signatures.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            public_key: self.public_key_bytes().to_vec(),
        }
    }

    /// SHA-256 of the uncompressed public key, in hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.public_key_bytes())
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("public_key_sha256", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Verifies ledger entry signatures with the signer's P-256 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    public_key: Vec<u8>,
}

impl Verifier {
    /// Loads the public key from the first certificate in an X.509 PEM file.
    pub fn from_cert_pem_file(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref();
        let with_path = |reason: String| LedgerError::VerifyingKey {
            path: Some(path.to_path_buf()),
            reason,
        };
        let text = read_limited(path).map_err(with_path)?;
        Self::from_cert_pem(&text).map_err(|e| match e {
            LedgerError::VerifyingKey { reason, .. } => with_path(reason),
            other => other,
        })
    }

    /// Takes the public key from the first `CERTIFICATE` block of PEM text.
    pub fn from_cert_pem(pem: &[u8]) -> Result<Self, LedgerError> {
        for block in Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| verifying_err(format!("malformed PEM: {e}")))?;
            if block.label == "CERTIFICATE" {
                return Self::from_cert_der(&block.contents);
            }
        }
        Err(verifying_err(
            "no `-----BEGIN CERTIFICATE-----` block found".into(),
        ))
    }

    /// Takes the public key from a DER-encoded X.509 certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, LedgerError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| verifying_err(format!("not an X.509 certificate ({e})")))?;
        let spki = cert.public_key();
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return Err(verifying_err(format!(
                "the certificate's key type is {}, not id-ecPublicKey",
                spki.algorithm.algorithm
            )));
        }
        let curve_ok = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|oid| oid == OID_EC_P256);
        if !curve_ok {
            return Err(verifying_err(
                "the certificate's elliptic curve is not P-256 (prime256v1)".into(),
            ));
        }
        Self::from_public_key_bytes(&spki.subject_public_key.data)
    }

    /// Uses a raw uncompressed P-256 public key (`0x04 || x || y`, 65 bytes).
    ///
    /// The point itself is checked when a signature is verified: an invalid point verifies
    /// nothing.
    pub fn from_public_key_bytes(bytes: &[u8]) -> Result<Self, LedgerError> {
        if bytes.len() != P256_PUBLIC_KEY_LEN || bytes[0] != 0x04 {
            return Err(verifying_err(format!(
                "expected a 65-byte uncompressed P-256 point starting with 0x04, got {} bytes",
                bytes.len()
            )));
        }
        Ok(Self {
            public_key: bytes.to_vec(),
        })
    }

    /// Whether `signature` is a valid signature of `hash` by this key.
    pub fn verify_hash(&self, hash: &[u8; 32], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_key)
            .verify(hash, signature)
            .is_ok()
    }

    /// The uncompressed public key (65 bytes).
    pub fn public_key_bytes(&self) -> &[u8] {
        &self.public_key
    }

    /// SHA-256 of the uncompressed public key, in hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("public_key_sha256", &self.fingerprint())
            .finish()
    }
}

fn verifying_err(reason: String) -> LedgerError {
    LedgerError::VerifyingKey { path: None, reason }
}

fn fingerprint(public_key: &[u8]) -> String {
    hex::encode(Sha256::digest(public_key))
}

/// Reads a small file, refusing anything over [`MAX_PEM_BYTES`]; the buffer is zeroed on drop.
fn read_limited(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Zeroizing::new(Vec::new());
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("file is larger than {MAX_PEM_BYTES} bytes"));
    }
    Ok(buf)
}
