//! The federation CA as a directory of PEM files.
//!
//! ```text
//! DIR/
//!   ca.pem  ca.key                  the federation CA (key mode 0600)
//!   coordinator.pem  coordinator.key the coordinator's server certificate
//!   partners/NAME.pem  NAME.key     one client certificate per partner
//!   partners/archive/NAME-SERIAL.pem certificates replaced after revocation
//!   console/NAME.pem  NAME.key      console certificates (operator, auditor)
//!   crl.pem                         the CA-signed revocation list
//!   index.json                      serials, names, validity, revocations
//! ```
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the
//! form `ring::signature::EcdsaKeyPair::from_pkcs8` reads. Private key files
//! are created with mode 0600; `crl.pem` and `index.json` are replaced
//! atomically (temporary file + rename).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::PkiError;
use crate::console::ConsoleRole;
use crate::files::{
    MAX_INDEX_BYTES, MAX_PEM_BYTES, PUBLIC_MODE, SECRET_MODE, create_private_dir, read_limited,
    write_atomic, write_new,
};
use crate::names::{COORDINATOR_NAME, validate_host, validate_partner_name};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const COORDINATOR_CERT: &str = "coordinator.pem";
const COORDINATOR_KEY: &str = "coordinator.key";
const PARTNERS_DIR: &str = "partners";
const ARCHIVE_DIR: &str = "archive";
const CONSOLE_DIR: &str = "console";
const CRL: &str = "crl.pem";
const INDEX: &str = "index.json";
const INDEX_VERSION: u32 = 1;

/// Common name prefix of the federation CA; a random tag follows, so that
/// CAs of different federations have different names.
pub const CA_COMMON_NAME: &str = "Consortia federation CA";
/// Organisation written in every certificate's subject.
const ORGANISATION: &str = "Consortia federation";

/// How long the CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long coordinator and partner certificates are valid by default.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// How far back `not_before` is set, to tolerate clock skew between sites.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// A CRL's `nextUpdate` is set this far ahead (the CRL is replaced on every
/// revocation; expiry of the CRL itself is not enforced).
const CRL_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The federation CA (self-signed).
    Ca,
    /// The coordinator's TLS server certificate.
    Coordinator,
    /// A partner's TLS client certificate.
    Partner,
    /// A console client certificate of the federation's operator
    /// ([`ConsoleRole::Operator`]).
    Operator,
    /// A console client certificate of an auditor ([`ConsoleRole::Auditor`]).
    Auditor,
}

impl Role {
    /// The console role of a console certificate; `None` for the other kinds.
    pub fn console(self) -> Option<ConsoleRole> {
        match self {
            Role::Operator => Some(ConsoleRole::Operator),
            Role::Auditor => Some(ConsoleRole::Auditor),
            Role::Ca | Role::Coordinator | Role::Partner => None,
        }
    }

    /// Whether the certificate is a client certificate (a partner's or a console's).
    fn is_client(self) -> bool {
        matches!(self, Role::Partner | Role::Operator | Role::Auditor)
    }
}

impl From<ConsoleRole> for Role {
    fn from(role: ConsoleRole) -> Self {
        match role {
            ConsoleRole::Operator => Role::Operator,
            ConsoleRole::Auditor => Role::Auditor,
        }
    }
}

/// One certificate in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Common name: the partner name, `coordinator`, or the CA's name.
    pub name: String,
    /// What the certificate is for.
    pub role: Role,
    /// Serial number, lowercase hex, big-endian.
    pub serial: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// When it was revoked, seconds since the Unix epoch.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

impl CertRecord {
    /// Whether the certificate has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// The serial number as bytes (empty if the index holds bad hex).
    pub fn serial_bytes(&self) -> Vec<u8> {
        hex_decode(&self.serial).unwrap_or_default()
    }
}

/// A freshly issued partner certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The partner name (certificate common name).
    pub name: String,
    /// Serial number, big-endian.
    pub serial: Vec<u8>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Where the certificate was written.
    pub cert_path: PathBuf,
    /// Where the private key was written (mode 0600).
    pub key_path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Index {
    version: u32,
    crl_number: u64,
    certificates: Vec<CertRecord>,
}

/// A PKI directory: the federation CA plus the certificates it issued.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    index: Index,
}

impl Pki {
    /// Creates a new PKI in `dir`: the CA, the coordinator certificate (with
    /// `coordinator_hosts` as subject alternative names), one client
    /// certificate per partner, an empty CRL and the index.
    ///
    /// Refuses to touch a directory that already holds a PKI. All names and
    /// hosts are checked before anything is written.
    pub fn init(
        dir: impl AsRef<Path>,
        coordinator_hosts: &[String],
        partners: &[String],
    ) -> Result<Pki, PkiError> {
        let dir = dir.as_ref().to_path_buf();
        if coordinator_hosts.is_empty() {
            return Err(PkiError::NoHosts);
        }
        let mut hosts: Vec<String> = Vec::with_capacity(coordinator_hosts.len());
        for host in coordinator_hosts {
            validate_host(host)?;
            if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                hosts.push(host.clone());
            }
        }
        for (i, name) in partners.iter().enumerate() {
            validate_partner_name(name)?;
            if partners[..i].iter().any(|p| p.eq_ignore_ascii_case(name)) {
                return Err(PkiError::DuplicateName { name: name.clone() });
            }
        }
        for file in [
            CA_CERT,
            CA_KEY,
            INDEX,
            CRL,
            COORDINATOR_CERT,
            COORDINATOR_KEY,
        ] {
            let path = dir.join(file);
            if path.symlink_metadata().is_ok() {
                return Err(PkiError::AlreadyExists { dir, found: path });
            }
        }
        create_private_dir(&dir)?;
        create_private_dir(&dir.join(PARTNERS_DIR))?;

        let mut pki = Pki {
            dir,
            index: Index {
                version: INDEX_VERSION,
                crl_number: 1,
                certificates: Vec::new(),
            },
        };

        // The CA.
        let now = now_seconds();
        let (ca_nb, ca_na) = (
            now - BACKDATE.as_secs() as i64,
            now + CA_VALIDITY.as_secs() as i64,
        );
        let mut ca_params = CertificateParams::default();
        let ca_name = format!("{CA_COMMON_NAME} {}", hex_encode(&random_serial()?[..4]));
        ca_params.distinguished_name = subject(&ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_serial = random_serial()?;
        ca_params.serial_number = Some(SerialNumber::from_slice(&ca_serial));
        ca_params.not_before = datetime(ca_nb)?;
        ca_params.not_after = datetime(ca_na)?;
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_key_pem = Zeroizing::new(ca_key.serialize_pem());
        write_new(&pki.ca_key_path(), ca_key_pem.as_bytes(), SECRET_MODE)?;
        write_new(&pki.ca_cert_path(), ca_cert.pem().as_bytes(), PUBLIC_MODE)?;
        pki.index.certificates.push(CertRecord {
            name: ca_name,
            role: Role::Ca,
            serial: hex_encode(&ca_serial),
            not_before: ca_nb,
            not_after: ca_na,
            revoked_at: None,
        });
        let issuer = Issuer::new(ca_params, ca_key);

        // The coordinator and the partners.
        let (nb, na) = (
            now - BACKDATE.as_secs() as i64,
            now + LEAF_VALIDITY.as_secs() as i64,
        );
        let record = pki.sign_leaf(&issuer, COORDINATOR_NAME, Role::Coordinator, &hosts, nb, na)?;
        pki.index.certificates.push(record);
        for name in partners {
            let record = pki.sign_leaf(&issuer, name, Role::Partner, &[], nb, na)?;
            pki.index.certificates.push(record);
        }

        pki.write_crl(&issuer, pki.index.crl_number)?;
        let index = pki.index_json()?;
        write_new(&pki.index_path(), &index, PUBLIC_MODE)?;
        Ok(pki)
    }

    /// Opens an existing PKI directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Pki, PkiError> {
        let dir = dir.as_ref().to_path_buf();
        let index_path = dir.join(INDEX);
        if !index_path.exists() || !dir.join(CA_CERT).exists() {
            return Err(PkiError::NotInitialised { dir });
        }
        let bytes = read_limited(&index_path, MAX_INDEX_BYTES)?;
        const WHAT: &str = "PKI index written by `consortia pki init`";
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|e| PkiError::parse(&index_path, WHAT, e))?;
        if index.version != INDEX_VERSION {
            return Err(PkiError::parse(
                &index_path,
                WHAT,
                format!("unsupported index version {}", index.version),
            ));
        }
        Ok(Pki { dir, index })
    }

    /// Issues a client certificate for a new partner, valid from now (less a
    /// few minutes for clock skew) for [`LEAF_VALIDITY`].
    ///
    /// Refuses a name that already has an active (unrevoked) certificate. A
    /// revoked partner may be issued a new certificate; the old certificate
    /// is moved to `partners/archive/` and its key deleted.
    pub fn issue(&mut self, name: &str) -> Result<IssuedCert, PkiError> {
        let now = SystemTime::now();
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        let not_after = now.checked_add(LEAF_VALIDITY).unwrap_or(now);
        self.issue_with_validity(name, not_before, not_after)
    }

    /// Like [`Pki::issue`] with an explicit validity period (which may lie
    /// wholly in the past or the future). Times are truncated to seconds.
    pub fn issue_with_validity(
        &mut self,
        name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        validate_partner_name(name)?;
        let nb = unix_seconds(not_before);
        let na = unix_seconds(not_after);
        if na <= nb {
            return Err(PkiError::InvalidValidity);
        }
        self.check_name_free(name)?;
        let issuer = self.load_issuer()?;
        self.archive_revoked(name)?;
        let record = self.sign_leaf(&issuer, name, Role::Partner, &[], nb, na)?;
        let serial = record.serial_bytes();
        self.index.certificates.push(record);
        if let Err(e) = self.save_index() {
            self.index.certificates.pop();
            return Err(e);
        }
        Ok(IssuedCert {
            name: name.to_owned(),
            serial,
            not_before: system_time(nb),
            not_after: system_time(na),
            cert_path: self.partner_cert_path(name),
            key_path: self.partner_key_path(name),
        })
    }

    /// Issues a console client certificate for `name` with `role`
    /// ([`crate::console`]), valid from now (less a few minutes for clock skew) for
    /// [`LEAF_VALIDITY`], written to `console/NAME.pem` and `console/NAME.key` (mode 0600).
    ///
    /// Names follow the partner naming rules and share their namespace: a name with an
    /// active partner or console certificate is refused.
    pub fn issue_console(&mut self, name: &str, role: ConsoleRole) -> Result<IssuedCert, PkiError> {
        validate_partner_name(name)?;
        self.check_name_free(name)?;
        let now = SystemTime::now();
        let nb = unix_seconds(now.checked_sub(BACKDATE).unwrap_or(now));
        let na = unix_seconds(now.checked_add(LEAF_VALIDITY).unwrap_or(now));
        let issuer = self.load_issuer()?;
        create_private_dir(&self.dir.join(CONSOLE_DIR))?;
        // A revoked console certificate of the same name makes way for the new one.
        for path in [self.console_cert_path(name), self.console_key_path(name)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PkiError::io("delete", &path, e)),
            }
        }
        let record = self.sign_leaf(&issuer, name, role.into(), &[], nb, na)?;
        let serial = record.serial_bytes();
        self.index.certificates.push(record);
        if let Err(e) = self.save_index() {
            self.index.certificates.pop();
            return Err(e);
        }
        Ok(IssuedCert {
            name: name.to_owned(),
            serial,
            not_before: system_time(nb),
            not_after: system_time(na),
            cert_path: self.console_cert_path(name),
            key_path: self.console_key_path(name),
        })
    }

    /// Refuses `name` when an active partner or console certificate has it.
    fn check_name_free(&self, name: &str) -> Result<(), PkiError> {
        if self
            .index
            .certificates
            .iter()
            .any(|r| r.role.is_client() && !r.is_revoked() && r.name.eq_ignore_ascii_case(name))
        {
            return Err(PkiError::NameTaken {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Revokes the active certificate of partner `name`: records it in the
    /// index and replaces `crl.pem` (atomically) with a new CRL carrying a
    /// higher CRL number. A running [`crate::ServerTls`] picks the new CRL up
    /// at its next handshake.
    pub fn revoke(&mut self, name: &str) -> Result<CertRecord, PkiError> {
        let position = self
            .index
            .certificates
            .iter()
            .rposition(|r| r.role.is_client() && r.name == name)
            .ok_or_else(|| PkiError::UnknownName {
                name: name.to_owned(),
            })?;
        if self.index.certificates[position].is_revoked() {
            return Err(PkiError::AlreadyRevoked {
                name: name.to_owned(),
            });
        }
        let issuer = self.load_issuer()?;
        let previous = self.index.clone();
        self.index.certificates[position].revoked_at = Some(now_seconds());
        self.index.crl_number = self.index.crl_number.saturating_add(1);
        // The CRL first: it is what enforces the revocation.
        let result = self
            .write_crl(&issuer, self.index.crl_number)
            .and_then(|()| self.save_index());
        if let Err(e) = result {
            self.index = previous;
            return Err(e);
        }
        Ok(self.index.certificates[position].clone())
    }

    /// Every certificate the CA issued, in issue order (revoked ones included).
    pub fn list(&self) -> &[CertRecord] {
        &self.index.certificates
    }

    /// The current certificate of partner `name` (the latest issued, revoked or not).
    pub fn partner(&self, name: &str) -> Option<&CertRecord> {
        self.index
            .certificates
            .iter()
            .rev()
            .find(|r| r.role == Role::Partner && r.name == name)
    }

    /// The number carried by the current CRL.
    pub fn crl_number(&self) -> u64 {
        self.index.crl_number
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/ca.pem`: the CA certificate every party trusts.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// `DIR/ca.key`: the CA private key (mode 0600; never leaves the CA host).
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join(CA_KEY)
    }

    /// `DIR/coordinator.pem`.
    pub fn coordinator_cert_path(&self) -> PathBuf {
        self.dir.join(COORDINATOR_CERT)
    }

    /// `DIR/coordinator.key` (mode 0600).
    pub fn coordinator_key_path(&self) -> PathBuf {
        self.dir.join(COORDINATOR_KEY)
    }

    /// `DIR/partners/NAME.pem`. `name` should be a valid partner name.
    pub fn partner_cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(PARTNERS_DIR).join(format!("{name}.pem"))
    }

    /// `DIR/partners/NAME.key` (mode 0600). `name` should be a valid partner name.
    pub fn partner_key_path(&self, name: &str) -> PathBuf {
        self.dir.join(PARTNERS_DIR).join(format!("{name}.key"))
    }

    /// `DIR/console/NAME.pem`: a console certificate. `name` should be a valid name.
    pub fn console_cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(CONSOLE_DIR).join(format!("{name}.pem"))
    }

    /// `DIR/console/NAME.key` (mode 0600). `name` should be a valid name.
    pub fn console_key_path(&self, name: &str) -> PathBuf {
        self.dir.join(CONSOLE_DIR).join(format!("{name}.key"))
    }

    /// `DIR/crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL)
    }

    /// `DIR/index.json`.
    pub fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX)
    }

    /// Generates a key pair and a certificate signed by `issuer`, writes both
    /// (key first, mode 0600) and returns the index record.
    fn sign_leaf(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        name: &str,
        role: Role,
        hosts: &[String],
        not_before: i64,
        not_after: i64,
    ) -> Result<CertRecord, PkiError> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name = subject(name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if role.is_client() {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if let Some(console) = role.console() {
            let uri = console.uri().try_into()?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = datetime(not_before)?;
        params.not_after = datetime(not_after)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, issuer)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        let (cert_path, key_path) = match role {
            Role::Partner => (self.partner_cert_path(name), self.partner_key_path(name)),
            Role::Operator | Role::Auditor => {
                (self.console_cert_path(name), self.console_key_path(name))
            }
            Role::Coordinator | Role::Ca => {
                (self.coordinator_cert_path(), self.coordinator_key_path())
            }
        };
        write_new(&key_path, key_pem.as_bytes(), SECRET_MODE)?;
        if let Err(e) = write_new(&cert_path, cert.pem().as_bytes(), PUBLIC_MODE) {
            let _ = std::fs::remove_file(&key_path);
            return Err(e);
        }
        Ok(CertRecord {
            name: name.to_owned(),
            role,
            serial: hex_encode(&serial),
            not_before,
            not_after,
            revoked_at: None,
        })
    }

    /// Moves a revoked partner's old certificate to the archive and deletes
    /// its key, so a new certificate can be written under the same name.
    fn archive_revoked(&self, name: &str) -> Result<(), PkiError> {
        let cert_path = self.partner_cert_path(name);
        if cert_path.symlink_metadata().is_ok() {
            let serial = self
                .partner(name)
                .map(|r| r.serial.clone())
                .unwrap_or_default();
            let archive = self.dir.join(PARTNERS_DIR).join(ARCHIVE_DIR);
            create_private_dir(&archive)?;
            let target = archive.join(format!("{name}-{serial}.pem"));
            std::fs::rename(&cert_path, &target)
                .map_err(|e| PkiError::io("archive", &cert_path, e))?;
        }
        let key_path = self.partner_key_path(name);
        match std::fs::remove_file(&key_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PkiError::io("delete", &key_path, e)),
        }
    }

    /// Rebuilds the CA issuer from `ca.pem` and `ca.key`.
    fn load_issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let ca_path = self.ca_cert_path();
        let key_path = self.ca_key_path();
        let ca_pem = String::from_utf8(read_limited(&ca_path, MAX_PEM_BYTES)?)
            .map_err(|e| PkiError::parse(&ca_path, "PEM certificate", e))?;
        let key_pem = Zeroizing::new(
            String::from_utf8(read_limited(&key_path, MAX_PEM_BYTES)?)
                .map_err(|_| PkiError::parse(&key_path, "PEM PKCS#8 private key", "not UTF-8"))?,
        );
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::parse(&key_path, "PEM PKCS#8 private key", e))?;
        Issuer::from_ca_cert_pem(&ca_pem, key)
            .map_err(|e| PkiError::parse(&ca_path, "PEM CA certificate", e))
    }

    /// Signs and atomically writes a CRL listing every revoked certificate.
    fn write_crl(&self, issuer: &Issuer<'_, KeyPair>, crl_number: u64) -> Result<(), PkiError> {
        let now = now_seconds();
        let revoked_certs = self
            .index
            .certificates
            .iter()
            .filter_map(|r| {
                let at = r.revoked_at?;
                Some(datetime(at).map(|revocation_time| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial_bytes()),
                    revocation_time,
                    reason_code: None,
                    invalidity_date: None,
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let params = CertificateRevocationListParams {
            this_update: datetime(now)?,
            next_update: datetime(now + CRL_VALIDITY.as_secs() as i64)?,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(issuer)?;
        write_atomic(&self.crl_path(), crl.pem()?.as_bytes(), PUBLIC_MODE)
    }

    fn index_json(&self) -> Result<Vec<u8>, PkiError> {
        let mut bytes = serde_json::to_vec_pretty(&self.index)
            .map_err(|e| PkiError::parse(self.index_path(), "PKI index", e))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    fn save_index(&self) -> Result<(), PkiError> {
        write_atomic(&self.index_path(), &self.index_json()?, PUBLIC_MODE)
    }
}

/// `CN=<name>, O=Consortia federation`.
fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANISATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A random 128-bit positive serial number (RFC 5280 §4.1.2.2: positive,
/// at most 20 octets, unique per CA). The top byte is in 0x40..=0x7f so the
/// DER encoding needs no leading zero and is always 16 bytes long.
fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut serial = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::Generate(rcgen::Error::RingUnspecified))?;
    serial[0] = (serial[0] & 0x3f) | 0x40;
    Ok(serial)
}

fn now_seconds() -> i64 {
    unix_seconds(SystemTime::now())
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn datetime(secs: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| PkiError::InvalidValidity)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes = vec![0x00, 0x7f, 0xab, 0xff];
        assert_eq!(hex_encode(&bytes), "007fabff");
        assert_eq!(hex_decode("007fabff"), Some(bytes));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_eq!(a.len(), 16);
        assert!((0x40..=0x7f).contains(&a[0]));
        assert_ne!(
            a, b,
            "two 126-bit random serials collide with probability 2^-126"
        );
    }

    #[test]
    fn time_conversions() {
        for s in [-86_400, 0, 1_700_000_000] {
            assert_eq!(unix_seconds(system_time(s)), s);
        }
    }
}
