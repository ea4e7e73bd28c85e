//! Naming rules for partners and coordinator hosts.

use std::net::IpAddr;

use crate::PkiError;

/// Longest partner name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// The name reserved for the coordinator's own certificate.
pub const COORDINATOR_NAME: &str = "coordinator";

/// Checks a partner name: 1 to 64 characters from `[A-Za-z0-9_-]`, starting
/// with a letter or digit, and not `coordinator` (in any case).
///
/// Names become file names and certificate common names, so the rule keeps
/// out path separators, dots, spaces and leading dashes.
pub fn validate_partner_name(name: &str) -> Result<(), PkiError> {
    let invalid = |reason| {
        Err(PkiError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return invalid("use only letters A-Z a-z, digits, '_' and '-'");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return invalid("it must start with a letter or a digit");
    }
    if name.eq_ignore_ascii_case(COORDINATOR_NAME) {
        return invalid("\"coordinator\" is reserved for the coordinator's certificate");
    }
    Ok(())
}

/// Checks a coordinator host: an IP address, or a DNS name made of labels of
/// 1 to 63 characters from `[A-Za-z0-9-]` (not starting or ending with `-`),
/// at most 253 characters in all.
pub fn validate_host(host: &str) -> Result<(), PkiError> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(PkiError::InvalidHost {
            host: host.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_names() {
        for ok in ["alice", "Bank_2", "h-1", "0", &"a".repeat(64)] {
            assert!(
                validate_partner_name(ok).is_ok(),
                "{ok:?} should be accepted"
            );
        }
        for bad in [
            "",
            &"a".repeat(65),
            "a b",
            "a/b",
            "../x",
            ".",
            "-x",
            "_x",
            "é",
            "coordinator",
            "Coordinator",
            "a.b",
        ] {
            assert!(
                validate_partner_name(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "localhost",
            "127.0.0.1",
            "::1",
            "coord.example.org",
            "a-b.c",
        ] {
            assert!(validate_host(ok).is_ok(), "{ok:?} should be accepted");
        }
        for bad in ["", "a..b", "-a.b", "a_b", "a b", "x/y", &"a".repeat(64)] {
            assert!(validate_host(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
