//! Console certificates: who may open the coordinator's web console, and as what.
//!
//! `consortia pki issue NAME --role operator|auditor` signs a TLS client certificate
//! with the federation CA, like a partner's, and marks its role with one subject
//! alternative name URI, `consortia:role:operator` or `consortia:role:auditor`
//! ([`ConsoleRole::uri`]). The certificate and its key are written to
//! `DIR/console/NAME.pem` and `DIR/console/NAME.key` (mode 0600).
//!
//! The mark separates the two kinds of client certificate both ways: the console
//! accepts only certificates that carry a role ([`ServerTls::for_console`](crate::ServerTls::for_console)),
//! and the federation's gRPC port refuses a certificate that carries one at the
//! handshake ([`ServerTls::new`](crate::ServerTls::new)), so a console certificate
//! never speaks for a partner and a partner certificate never opens the console.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The prefix of the subject alternative name URI that marks a console certificate.
pub const ROLE_URI_PREFIX: &str = "consortia:role:";

/// What a console certificate lets its holder see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsoleRole {
    /// The federation's operator: every page of the console.
    Operator,
    /// A compliance auditor: privacy budgets, the ledger and its verification, the
    /// stored models; not the federation's internals (partners, phases, handshakes).
    Auditor,
}

impl ConsoleRole {
    /// The role's name: `operator` or `auditor`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRole::Operator => "operator",
            ConsoleRole::Auditor => "auditor",
        }
    }

    /// The subject alternative name URI that marks it: `consortia:role:NAME`.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for ConsoleRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConsoleRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "operator" => Ok(ConsoleRole::Operator),
            "auditor" => Ok(ConsoleRole::Auditor),
            other => Err(format!(
                "unknown console role {other:?}: give `operator` or `auditor`"
            )),
        }
    }
}

/// The console role a DER certificate carries: `Ok(None)` for a certificate without
/// one (a partner's, the coordinator's); an error for a certificate that cannot be
/// parsed, or that carries an unknown role or several roles.
pub fn console_role(cert_der: &[u8]) -> Result<Option<ConsoleRole>, String> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("cannot read the certificate's alternative names: {e}"))?;
    let mut found = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX) else {
            continue;
        };
        let role: ConsoleRole = role.parse()?;
        if found.is_some_and(|f| f != role) {
            return Err("the certificate carries several console roles".into());
        }
        found = Some(role);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print() {
        for role in [ConsoleRole::Operator, ConsoleRole::Auditor] {
            assert_eq!(role.as_str().parse::<ConsoleRole>(), Ok(role));
            assert!(role.uri().starts_with(ROLE_URI_PREFIX));
        }
        assert!("admin".parse::<ConsoleRole>().is_err());
        assert!("Operator".parse::<ConsoleRole>().is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(console_role(b"not a certificate").is_err());
    }
}
