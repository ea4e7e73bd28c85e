//! `consortia audit`: what a compliance team does with a privacy ledger.
//!
//! `verify` checks a ledger's hash chain and signatures against the signer's certificate,
//! `report` prints and renders what a ledger says about each partner's privacy budget (and flags
//! every entry whose noise was not drawn from the secure generator, OpenSSL — builds without the
//! `secure-rng` feature, or format v1 entries that did not record it), and `compare` reconciles
//! a partner's own ledger against the coordinator's. All three only read ledgers; none repairs or
//! rewrites one. Ledgers of entry format v1 and v2 are read alike.
//!
//! A ledger is given either as its sled database directory (`STATE_DIR/ledger` for the
//! coordinator; while the coordinator runs, a copy of it taken at that moment is read) or as
//! an exported JSON file (`STATE_DIR/privacy-ledger.json`, refreshed after every round).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use consortia_ledger::audit::{self, ExpectedHead};
use consortia_ledger::entry::GENESIS_PREV_HASH;
use consortia_ledger::{LedgerEntry, LedgerFile, Verifier, load_entries};
use consortia_observability::progress::Counter;

/// The `consortia audit` subcommands.
#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check a ledger's hash chain and signatures; names the first entry that was edited, removed or reordered.
    Verify {
        /// The ledger: its database directory (e.g. STATE_DIR/ledger) or an exported JSON file
        /// (e.g. STATE_DIR/privacy-ledger.json).
        #[arg(long)]
        ledger: PathBuf,
        /// The signer's certificate: PKI_DIR/coordinator.pem for the coordinator's ledger,
        /// PKI_DIR/partners/NAME.pem for a partner's.
        #[arg(long)]
        cert: PathBuf,
        /// A head the ledger is known to have reached, to detect truncation: INDEX, HASH
        /// (64 hex digits) or INDEX:HASH, as printed by an earlier `audit verify`.
        #[arg(long)]
        head: Option<ExpectedHead>,
    },
    /// Print a table and write a self-contained HTML report (chart of cumulative ε per partner vs budget) and a JSON export; entries drawn without the secure RNG are flagged.
    Report {
        /// The ledger: its database directory or an exported JSON file.
        #[arg(long)]
        ledger: PathBuf,
        /// The signer's certificate; when given, a ledger that fails verification is not reported.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Where to write the HTML report.
        #[arg(long, default_value = "ledger-report.html")]
        html: PathBuf,
        /// Where to write the ledger's entries as an exported ledger JSON file.
        #[arg(long, default_value = "ledger-report.json")]
        json: PathBuf,
        /// Title of the HTML report (default: "Privacy ledger: " and the ledger's file name).
        #[arg(long)]
        title: Option<String>,
    },
    /// Reconcile a partner's own ledger against the coordinator's and list every disagreement.
    Compare {
        /// The partner whose spending is reconciled.
        #[arg(long)]
        partner: String,
        /// The partner's own ledger (database directory or exported JSON file).
        #[arg(long)]
        partner_ledger: PathBuf,
        /// The coordinator's ledger (database directory or exported JSON file).
        #[arg(long)]
        coordinator_ledger: PathBuf,
        /// The partner's certificate (PKI_DIR/partners/NAME.pem): verify the partner's ledger first.
        #[arg(long)]
        partner_cert: Option<PathBuf>,
        /// The coordinator's certificate (PKI_DIR/coordinator.pem): verify the coordinator's
        /// ledger first.
        #[arg(long)]
        coordinator_cert: Option<PathBuf>,
    },
}

/// Runs one `consortia audit` subcommand. Fails (non-zero exit) when a ledger fails
/// verification, when `compare` finds disagreements, or on unusable input.
pub(crate) fn run(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify { ledger, cert, head } => verify(&ledger, &cert, head),
        AuditCommand::Report {
            ledger,
            cert,
            html,
            json,
            title,
        } => report(&ledger, cert.as_deref(), &html, &json, title),
        AuditCommand::Compare {
            partner,
            partner_ledger,
            coordinator_ledger,
            partner_cert,
            coordinator_cert,
        } => compare(
            &partner,
            &partner_ledger,
            &coordinator_ledger,
            partner_cert.as_deref(),
            coordinator_cert.as_deref(),
        ),
    }
}

fn verify(ledger: &Path, cert: &Path, head: Option<ExpectedHead>) -> Result<()> {
    let verifier = load_verifier(cert)?;
    let entries = read_ledger(ledger)?;
    let report = match head {
        Some(head) => audit::verify_with_head(&entries, &verifier, head),
        None => audit::verify(&entries, &verifier),
    };
    println!("{report}");
    println!("  ledger:      {}", ledger.display());
    println!("  certificate: {}", cert.display());
    if let Some(head) = head {
        println!("  known head:  {head}");
    }
    match &report.problem {
        None => {
            match report.valid_head {
                Some((index, hash)) => println!(
                    "  head:        {} (pass it as --head next time to detect truncation)",
                    head_str(index, hash)
                ),
                None => println!("  the ledger is empty"),
            }
            Ok(())
        }
        Some(problem) => {
            if let Some(entry) = entries.get(problem.position) {
                println!(
                    "  at position {}: entry {} (task {:?}, round {})",
                    problem.position, entry.index, entry.record.task, entry.record.round
                );
            }
            match report.valid_head {
                Some((index, hash)) => println!(
                    "  last good entry: {} ({} of {} entries verified)",
                    head_str(index, hash),
                    report.valid_entries,
                    report.entries
                ),
                None => println!("  no entry verified"),
            }
            bail!(
                "{} failed verification: {problem}; nothing was changed — compare it with a \
                 partner's copy (`consortia audit compare`) and restore it from a verified export",
                ledger.display()
            )
        }
    }
}

fn report(
    ledger: &Path,
    cert: Option<&Path>,
    html: &Path,
    json: &Path,
    title: Option<String>,
) -> Result<()> {
    for (flag, out) in [("--html", html), ("--json", json)] {
        if same_file(ledger, out) {
            bail!(
                "{flag} {} is the ledger being reported; choose another output file",
                out.display()
            );
        }
    }
    let entries = read_ledger(ledger)?;
    let verification = match cert {
        Some(cert) => {
            let verifier = load_verifier(cert)?;
            let mut counter = Counter::new("verifying entries", Some(entries.len() as u64), 10_000);
            let report = audit::verify_with_progress(&entries, &verifier, &mut |done| {
                if done % 1024 == 0 {
                    counter.set(done as u64);
                }
            });
            counter.set(report.valid_entries as u64);
            counter.finish();
            if let Some(problem) = &report.problem {
                bail!(
                    "{} failed verification against {}: {problem}; no report was written — run \
                     `consortia audit verify` for details",
                    ledger.display(),
                    cert.display()
                );
            }
            eprintln!("{report}");
            let certificate = audit::CertificateSummary::from_pem_file(cert)
                .with_context(|| format!("cannot describe the certificate {}", cert.display()))?;
            audit::ReportVerification::Checked {
                certificate,
                entries: entries.len() as u64,
            }
        }
        None => {
            eprintln!(
                "warning: signatures were not checked (no --cert); pass the signer's certificate \
                 to verify the ledger before reporting it"
            );
            let chain_problem = chain_problem(&entries);
            if let Some(problem) = &chain_problem {
                eprintln!("warning: {problem}; the report shows the entries as stored");
            }
            audit::ReportVerification::NotChecked { chain_problem }
        }
    };
    print!("{}", audit::report_table(&entries));
    let insecure = audit::rng_warnings(&entries);
    if !insecure.is_empty() {
        eprintln!(
            "warning: {} of {} entries were not drawn from the secure generator (OpenSSL, \
             `--features secure-rng`): the rows marked INSECURE RNG; the JSON export lists them \
             under `insecure_rng`",
            insecure.len(),
            entries.len()
        );
    }
    let title = title.unwrap_or_else(|| {
        let name = ledger.file_name().unwrap_or(ledger.as_os_str());
        format!("Privacy ledger: {}", name.to_string_lossy())
    });
    let page = audit::report_html_verified(&entries, &title, &verification);
    std::fs::write(html, page).with_context(|| {
        format!(
            "cannot write the HTML report to {}; check that its directory exists and is writable",
            html.display()
        )
    })?;
    LedgerFile::from_entries(entries)
        .with_verification(verification)
        .save(json)
        .with_context(|| format!("cannot write the JSON export to {}", json.display()))?;
    println!("HTML report written to {}", html.display());
    println!("JSON export written to {}", json.display());
    Ok(())
}

fn compare(
    partner: &str,
    partner_ledger: &Path,
    coordinator_ledger: &Path,
    partner_cert: Option<&Path>,
    coordinator_cert: Option<&Path>,
) -> Result<()> {
    let mine = read_ledger(partner_ledger)?;
    let theirs = read_ledger(coordinator_ledger)?;
    for (whose, path, entries, cert, flag) in [
        (
            "partner's",
            partner_ledger,
            &mine,
            partner_cert,
            "--partner-cert",
        ),
        (
            "coordinator's",
            coordinator_ledger,
            &theirs,
            coordinator_cert,
            "--coordinator-cert",
        ),
    ] {
        match cert {
            Some(cert) => {
                let report = audit::verify(entries, &load_verifier(cert)?);
                if let Some(problem) = &report.problem {
                    bail!(
                        "the {whose} ledger {} failed verification against {}: {problem}; \
                         reconcile only verified ledgers — run `consortia audit verify` for \
                         details",
                        path.display(),
                        cert.display()
                    );
                }
                println!("{whose} ledger {}: {report}", path.display());
            }
            None => eprintln!(
                "warning: the {whose} ledger's signatures were not checked (no {flag}); \
                 contents are compared as stored"
            ),
        }
    }
    let involving = |entries: &[LedgerEntry]| {
        entries
            .iter()
            .filter(|e| e.record.participants.iter().any(|p| p == partner))
            .count()
    };
    let (n_mine, n_theirs) = (involving(&mine), involving(&theirs));
    if n_mine == 0 && n_theirs == 0 {
        bail!(
            "partner {partner:?} took part in no round of either ledger ({} and {}); check the \
             --partner name (it is the name in the partner's certificate)",
            partner_ledger.display(),
            coordinator_ledger.display()
        );
    }
    println!(
        "partner {partner:?}: {n_mine} rounds in its own ledger, {n_theirs} in the coordinator's"
    );
    let disagreements = audit::compare(partner, &mine, &theirs);
    if disagreements.is_empty() {
        println!("OK: the ledgers agree on everything partner {partner:?} spent");
        return Ok(());
    }
    println!(
        "DISAGREE: {} disagreement{}:",
        disagreements.len(),
        if disagreements.len() == 1 { "" } else { "s" }
    );
    for d in &disagreements {
        println!("  - {d}");
    }
    bail!(
        "{} disagreement{} between partner {partner:?}'s ledger {} and the coordinator's ledger \
         {}; raise each one with the other party before the next round",
        disagreements.len(),
        if disagreements.len() == 1 { "" } else { "s" },
        partner_ledger.display(),
        coordinator_ledger.display()
    )
}

/// Loads the public key from a certificate file given on the command line.
fn load_verifier(cert: &Path) -> Result<Verifier> {
    if !cert.is_file() {
        bail!(
            "certificate {} does not exist; pass the signer's certificate from the PKI directory \
             (coordinator.pem for the coordinator's ledger, partners/NAME.pem for a partner's)",
            cert.display()
        );
    }
    Verifier::from_cert_pem_file(cert).with_context(|| {
        format!(
            "{} is not a usable certificate; pass the PEM certificate (coordinator.pem or \
             partners/NAME.pem) made by `consortia pki`, not its .key file",
            cert.display()
        )
    })
}

/// Reads every entry of a ledger database directory or exported JSON file, without creating or
/// changing anything.
fn read_ledger(path: &Path) -> Result<Vec<LedgerEntry>> {
    if !path.exists() {
        bail!(
            "ledger {} does not exist; pass the ledger database directory (STATE_DIR/ledger) or \
             an exported ledger file (STATE_DIR/privacy-ledger.json)",
            path.display()
        );
    }
    // Opening an arbitrary directory as a sled database would create one in it.
    if path.is_dir() && !path.join("db").is_file() {
        let hint = if path.join("ledger").join("db").is_file() {
            format!(" — did you mean {}?", path.join("ledger").display())
        } else {
            String::new()
        };
        bail!(
            "{} is not a ledger database directory (it has no `db` file){hint}; pass the ledger \
             database directory (STATE_DIR/ledger) or an exported ledger file \
             (STATE_DIR/privacy-ledger.json)",
            path.display()
        );
    }
    // A running coordinator (or agent) holds the database's lock: read a copy of it.
    if path.is_dir() && consortia_coordinator::commit::sled_in_use(path) {
        let copy = consortia_coordinator::store::Snapshot::copy_of(path)?;
        eprintln!(
            "note: {} is in use by a running process: reading a copy of it taken now",
            path.display()
        );
        return load_entries(copy.path())
            .with_context(|| format!("cannot read the copy of the ledger {}", path.display()));
    }
    load_entries(path).with_context(|| {
        format!(
            "cannot read the ledger {}; pass a ledger database directory or a ledger file \
             exported by the coordinator (privacy-ledger.json) or by `consortia audit report`",
            path.display()
        )
    })
}

/// The first break in index continuity or the hash chain, checked without a key.
fn chain_problem(entries: &[LedgerEntry]) -> Option<String> {
    let mut prev_hash = GENESIS_PREV_HASH;
    for (position, entry) in entries.iter().enumerate() {
        if entry.index != position as u64 {
            return Some(format!(
                "entry {} stands at position {position}: entries were removed or reordered",
                entry.index
            ));
        }
        if !entry.hash_matches() {
            return Some(format!(
                "entry {} was edited: its stored hash does not match its contents",
                entry.index
            ));
        }
        if entry.prev_hash != prev_hash {
            return Some(format!(
                "hash chain broken at entry {}: an entry was replaced or removed",
                entry.index
            ));
        }
        prev_hash = entry.hash;
    }
    None
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `INDEX:HASH`, the form `--head` reads.
fn head_str(index: u64, hash: [u8; 32]) -> String {
    ExpectedHead::Entry { index, hash }.to_string()
}
