//! `consortia audit verify | report | compare` on ledgers signed with keys from `consortia pki`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use consortia_ledger::entry::{GENESIS_PREV_HASH, entry_hash};
use consortia_ledger::{
    Adjacency, ChargeDetails, Ledger, LedgerEntry, LedgerFile, Placement, Signer, SpendRecord,
    StoredEvent,
};
use consortia_pki::Pki;

const PARTNER: &str = "acme";

/// Longest a single `consortia audit` run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What `PARTNER` spent in `round` (1-based): 0.1 + 0.01·round, unless overridden.
fn epsilon(round: u64) -> f64 {
    0.1 + 0.01 * round as f64
}

/// Round `round` of a one-partner task; `eps` is the ε spent in each round 1..=round.
fn record(round: u64, eps: &dyn Fn(u64) -> f64) -> SpendRecord {
    let one = |v: f64| BTreeMap::from([(PARTNER.to_string(), v)]);
    SpendRecord {
        task: "churn".into(),
        round,
        time_unix_ms: 1_795_602_434_000 + round * 60_000,
        participants: vec![PARTNER.into()],
        privacy_unit: "record".into(),
        mechanism: "distributed-discrete-gaussian".into(),
        clip_norm: 1.0,
        noise_multiplier: 1.1,
        sampling_rate: 0.05,
        dataset_sizes: BTreeMap::from([(PARTNER.to_string(), 3043)]),
        epsilon_round: one(eps(round)),
        delta: 1e-5,
        epsilon_cumulative: one((1..=round).map(eps).sum()),
        budget_epsilon: one(4.0),
        charged: Some(ChargeDetails {
            events: vec![StoredEvent::Zcdp {
                rho: 0.01,
                count: 1,
            }],
            placement: Placement::Distributed,
            adjacency: Adjacency::AddRemove,
            honest_contributors: Some(2),
            dimension: Some(41),
            rng: "openssl".into(),
            dataset: None,
            task_hash: [0x5a; 32],
        }),
    }
}

/// A temporary directory holding a PKI (coordinator + partner `acme`) and ledgers.
struct Fixture {
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let pki = Pki::init(
            dir.path().join("pki"),
            &["localhost".into()],
            &[PARTNER.into()],
        )
        .expect("create PKI");
        Self { dir, pki }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn coordinator_cert(&self) -> PathBuf {
        self.pki.coordinator_cert_path()
    }

    fn partner_cert(&self) -> PathBuf {
        self.pki.partner_cert_path(PARTNER)
    }

    /// Builds a sled ledger `name` of rounds 1..=n signed with `key`, exports it to
    /// `name.json` and returns (database directory, JSON file). The database is closed.
    fn ledger(
        &self,
        name: &str,
        key: &Path,
        n: u64,
        eps: &dyn Fn(u64) -> f64,
    ) -> (PathBuf, PathBuf) {
        self.ledger_of(name, key, (1..=n).map(|round| record(round, eps)).collect())
    }

    /// Like [`Fixture::ledger`], holding `records`.
    fn ledger_of(&self, name: &str, key: &Path, records: Vec<SpendRecord>) -> (PathBuf, PathBuf) {
        let signer = Signer::from_pkcs8_pem_file(key).expect("load signing key");
        let db = self.path(name);
        let json = self.path(&format!("{name}.json"));
        let ledger = Ledger::open(&db).expect("open ledger");
        for r in records {
            ledger.append(r, &signer).expect("append");
        }
        ledger.export_json(&json).expect("export ledger");
        drop(ledger);
        (db, json)
    }

    /// The coordinator's ledger of rounds 1..=n (`privacy-ledger.json`).
    fn coordinator_ledger(&self, n: u64) -> PathBuf {
        let key = self.pki.coordinator_key_path();
        self.ledger("privacy-ledger", &key, n, &epsilon).1
    }

    /// Writes a copy of the exported ledger `from` changed by `edit`, returns its path.
    fn tampered(&self, from: &Path, name: &str, edit: impl FnOnce(&mut LedgerFile)) -> PathBuf {
        let mut file = LedgerFile::load(from).expect("load export");
        edit(&mut file);
        let out = self.path(name);
        file.save(&out).expect("save tampered copy");
        out
    }
}

/// Runs `consortia audit ARGS…`, killing it after [`RUN_LIMIT`].
fn audit<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_consortia"))
        .arg("audit")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start consortia");
    let start = Instant::now();
    while child.try_wait().expect("poll consortia").is_none() {
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("consortia audit did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run(child.wait_with_output().expect("collect output"))
}

struct Run(Output);

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    fn text(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr())
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert!(self.0.status.success(), "expected success\n{}", self.text());
        self
    }

    #[track_caller]
    fn fails(self) -> Self {
        assert!(
            !self.0.status.success(),
            "expected failure\n{}",
            self.text()
        );
        self
    }

    #[track_caller]
    fn says(&self, needle: &str) -> &Self {
        let text = self.text();
        assert!(text.contains(needle), "expected {needle:?} in\n{text}");
        self
    }
}

fn verify(ledger: &Path, cert: &Path) -> Run {
    audit(&[
        OsStr::new("verify"),
        "--ledger".as_ref(),
        ledger.as_os_str(),
        "--cert".as_ref(),
        cert.as_os_str(),
    ])
}

fn verify_with_head(ledger: &Path, cert: &Path, head: &str) -> Run {
    audit(&[
        OsStr::new("verify"),
        "--ledger".as_ref(),
        ledger.as_os_str(),
        "--cert".as_ref(),
        cert.as_os_str(),
        "--head".as_ref(),
        head.as_ref(),
    ])
}

#[test]
fn verify_passes_on_a_clean_ledger_directory_and_its_export() {
    let fx = Fixture::new();
    let key = fx.pki.coordinator_key_path();
    let (db, json) = fx.ledger("ledger", &key, 4, &epsilon);
    let last = LedgerFile::load(&json).unwrap().entries[3].hash_hex();
    for path in [&db, &json] {
        let run = verify(path, &fx.coordinator_cert()).ok();
        run.says("OK: 4 entries").says(&format!("3:{last}"));
    }
}

#[test]
fn verify_names_an_entry_whose_epsilon_was_edited() {
    let fx = Fixture::new();
    let json = fx.coordinator_ledger(4);
    let edited = fx.tampered(&json, "edited.json", |f| {
        f.entries[2]
            .record
            .epsilon_round
            .insert(PARTNER.into(), 0.001);
    });
    verify(&edited, &fx.coordinator_cert())
        .fails()
        .says("FAILED")
        .says("entry 2 was edited")
        .says("round 3");
    // The original is untouched and still verifies.
    verify(&json, &fx.coordinator_cert()).ok();
}

#[test]
fn verify_names_a_deleted_entry() {
    let fx = Fixture::new();
    let json = fx.coordinator_ledger(4);
    let deleted = fx.tampered(&json, "deleted.json", |f| {
        f.entries.remove(1);
    });
    verify(&deleted, &fx.coordinator_cert())
        .fails()
        .says("entries removed: 1 entry missing starting at index 1");
}

#[test]
fn verify_names_two_swapped_entries() {
    let fx = Fixture::new();
    let json = fx.coordinator_ledger(4);
    let swapped = fx.tampered(&json, "swapped.json", |f| f.entries.swap(1, 2));
    verify(&swapped, &fx.coordinator_cert())
        .fails()
        .says("entries reordered: entry 2 stands where entry 1 belongs");
}

#[test]
fn verify_rejects_a_ledger_signed_by_another_key() {
    let fx = Fixture::new();
    let partner_key = fx.pki.partner_key_path(PARTNER);
    let (_, json) = fx.ledger("partner", &partner_key, 2, &epsilon);
    verify(&json, &fx.coordinator_cert())
        .fails()
        .says("entry 0 has an invalid signature");
    verify(&json, &fx.partner_cert()).ok();
}

#[test]
fn verify_with_a_known_head_detects_truncation() {
    let fx = Fixture::new();
    let json = fx.coordinator_ledger(4);
    let head = LedgerFile::load(&json).unwrap().entries[3].hash_hex();
    let truncated = fx.tampered(&json, "truncated.json", |f| {
        f.entries.truncate(3);
    });
    // A shorter chain is valid on its own: only a known head reveals the truncation.
    verify(&truncated, &fx.coordinator_cert()).ok();
    for known in [format!("3:{head}"), "3".to_string()] {
        verify_with_head(&truncated, &fx.coordinator_cert(), &known)
            .fails()
            .says("ledger truncated: it ends at entry 2, the known head is entry 3");
    }
    verify_with_head(&truncated, &fx.coordinator_cert(), &head)
        .fails()
        .says("no entry has the known head hash");
    verify_with_head(&json, &fx.coordinator_cert(), &format!("3:{head}")).ok();
    verify_with_head(&json, &fx.coordinator_cert(), "not-a-head")
        .fails()
        .says("not-a-head");
}

#[test]
fn report_writes_an_html_chart_and_a_json_export() {
    let fx = Fixture::new();
    let json = fx.coordinator_ledger(3);
    let (html, out) = (fx.path("report.html"), fx.path("report.json"));
    let run = audit(&[
        OsStr::new("report"),
        "--ledger".as_ref(),
        json.as_os_str(),
        "--cert".as_ref(),
        fx.coordinator_cert().as_os_str(),
        "--html".as_ref(),
        html.as_os_str(),
        "--json".as_ref(),
        out.as_os_str(),
        "--title".as_ref(),
        "Churn <audit>".as_ref(),
    ])
    .ok();
    run.says(PARTNER);
    let page = std::fs::read_to_string(&html).expect("HTML report written");
    assert!(page.contains("<svg"), "{page}");
    assert!(
        page.contains("Churn &lt;audit&gt;"),
        "title not escaped:\n{page}"
    );
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("JSON written"))
            .expect("JSON export parses");
    assert_eq!(parsed["entries"].as_array().map(Vec::len), Some(3));
    let (written, source) = (
        LedgerFile::load(&out).unwrap(),
        LedgerFile::load(&json).unwrap(),
    );
    assert_eq!(written.entries, source.entries);
    assert_eq!(written.insecure_rng, source.insecure_rng);
}

/// SHA-256 of the first certificate of a PEM file (its DER bytes), in hex.
fn der_sha256(pem: &Path) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(pem).expect("a PEM certificate");
    hex::encode(consortia_proto::sha256(&der))
}

#[test]
fn report_states_its_verification_at_the_top_of_the_page_and_the_json() {
    let fx = Fixture::new();
    let json = fx.coordinator_ledger(3);
    let cert = fx.coordinator_cert();
    let fingerprint = der_sha256(&cert);
    let run_report = |cert: Option<&Path>, name: &str| {
        let (html, out) = (
            fx.path(&format!("{name}.html")),
            fx.path(&format!("{name}.json")),
        );
        let mut args: Vec<&OsStr> = vec![
            "report".as_ref(),
            "--ledger".as_ref(),
            json.as_os_str(),
            "--html".as_ref(),
            html.as_os_str(),
            "--json".as_ref(),
            out.as_os_str(),
        ];
        if let Some(cert) = cert {
            args.extend(["--cert".as_ref(), cert.as_os_str()]);
        }
        let run = audit(&args).ok();
        let page = std::fs::read_to_string(&html).expect("HTML report written");
        let export: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).expect("JSON written"))
                .expect("JSON export parses");
        (page, export, run.stderr())
    };
    /// The verification paragraph, which must come before the first section.
    fn verification_line(page: &str) -> &str {
        let at = page
            .find("id=\"verification\"")
            .expect("a verification line");
        let first_section = page.find("<h2>").expect("sections");
        assert!(
            at < first_section,
            "the verification line is not at the top:\n{page}"
        );
        let rest = &page[at..];
        &rest[..rest.find("</p>").expect("closed paragraph")]
    }

    // Checked against the coordinator's certificate: which one, by subject and fingerprint.
    let (page, export, stderr) = run_report(Some(&cert), "checked");
    // Progress of the verification, as an event off a terminal.
    assert!(
        stderr.contains("verifying entries: 3 of 3 (100 %)"),
        "{stderr}"
    );
    let line = verification_line(&page);
    assert!(
        page.contains("class=\"verified\" id=\"verification\""),
        "{page}"
    );
    assert!(line.contains("Verified"), "{line}");
    assert!(line.contains("all 3 entries"), "{line}");
    assert!(line.contains("CN=coordinator"), "{line}");
    assert!(line.contains(&fingerprint), "{line}");
    assert!(line.contains(&*cert.to_string_lossy()), "{line}");
    let v = &export["verification"];
    assert_eq!(v["signatures"], "checked", "{export}");
    assert_eq!(v["entries"], 3);
    assert_eq!(v["certificate"]["sha256"], fingerprint.as_str());
    let subject = v["certificate"]["subject"].as_str().unwrap_or_default();
    assert!(subject.contains("CN=coordinator"), "{export}");
    // The export still reads as a ledger, and verifies.
    let exported = fx.path("checked.json");
    verify(&exported, &cert).ok();

    // Not checked: said as plainly, at the same place.
    let (page, export, _) = run_report(None, "unchecked");
    let line = verification_line(&page);
    assert!(
        line.contains("Not verified") && line.contains("not checked"),
        "{line}"
    );
    assert!(
        page.contains("class=\"unverified\" id=\"verification\""),
        "{page}"
    );
    assert!(!line.contains(&fingerprint), "{line}");
    assert_eq!(
        export["verification"]["signatures"], "not_checked",
        "{export}"
    );
}

#[test]
fn report_without_a_certificate_warns_and_with_one_refuses_a_bad_ledger() {
    let fx = Fixture::new();
    let json = fx.coordinator_ledger(3);
    let edited = fx.tampered(&json, "edited.json", |f| {
        f.entries[1]
            .record
            .epsilon_cumulative
            .insert(PARTNER.into(), 0.0);
    });
    let report = |ledger: &Path, cert: Option<&Path>, html: &Path, out: &Path| {
        let mut args: Vec<&OsStr> = vec![
            "report".as_ref(),
            "--ledger".as_ref(),
            ledger.as_os_str(),
            "--html".as_ref(),
            html.as_os_str(),
            "--json".as_ref(),
            out.as_os_str(),
        ];
        if let Some(cert) = cert {
            args.extend(["--cert".as_ref(), cert.as_os_str()]);
        }
        audit(&args)
    };
    let (html, out) = (fx.path("a.html"), fx.path("a.json"));
    report(&json, None, &html, &out)
        .ok()
        .says("signatures were not checked");
    assert!(html.is_file() && out.is_file());

    let (html, out) = (fx.path("b.html"), fx.path("b.json"));
    report(&edited, Some(&fx.coordinator_cert()), &html, &out)
        .fails()
        .says("entry 1 was edited");
    assert!(!html.exists() && !out.exists(), "a report was written");
}

fn compare(fx: &Fixture, partner_ledger: &Path, coordinator_ledger: &Path) -> Run {
    audit(&[
        OsStr::new("compare"),
        "--partner".as_ref(),
        PARTNER.as_ref(),
        "--partner-ledger".as_ref(),
        partner_ledger.as_os_str(),
        "--coordinator-ledger".as_ref(),
        coordinator_ledger.as_os_str(),
        "--partner-cert".as_ref(),
        fx.partner_cert().as_os_str(),
        "--coordinator-cert".as_ref(),
        fx.coordinator_cert().as_os_str(),
    ])
}

#[test]
fn compare_succeeds_when_the_ledgers_agree() {
    let fx = Fixture::new();
    let coordinator = fx.coordinator_ledger(3);
    let partner_key = fx.pki.partner_key_path(PARTNER);
    let (partner_db, partner_json) = fx.ledger("partner", &partner_key, 3, &epsilon);
    compare(&fx, &partner_json, &coordinator)
        .ok()
        .says("OK: the ledgers agree");
    compare(&fx, &partner_db, &coordinator).ok();
}

#[test]
fn compare_lists_a_round_whose_epsilon_differs() {
    let fx = Fixture::new();
    let coordinator = fx.coordinator_ledger(3);
    let partner_key = fx.pki.partner_key_path(PARTNER);
    // The partner recorded a larger ε for round 2 (and hence larger cumulative ε from then on).
    let eps = |r: u64| if r == 2 { 0.5 } else { epsilon(r) };
    let (_, partner) = fx.ledger("partner", &partner_key, 3, &eps);
    compare(&fx, &partner, &coordinator)
        .fails()
        .says("DISAGREE")
        .says("round 2: ε spent 0.5 (partner) vs 0.12")
        .says("round 3: cumulative ε")
        .says("latest cumulative ε");
}

#[test]
fn compare_refuses_a_ledger_that_fails_verification() {
    let fx = Fixture::new();
    let coordinator = fx.coordinator_ledger(3);
    let partner_key = fx.pki.partner_key_path(PARTNER);
    let (_, partner) = fx.ledger("partner", &partner_key, 3, &epsilon);
    // Swapping the arguments: each ledger is checked against the other party's certificate.
    compare(&fx, &coordinator, &partner)
        .fails()
        .says("invalid signature");
}

#[test]
fn bad_input_names_the_file_and_says_what_to_pass() {
    let fx = Fixture::new();
    let json = fx.coordinator_ledger(1);
    let cert = fx.coordinator_cert();

    let missing = fx.path("no-such-ledger.json");
    verify(&missing, &cert)
        .fails()
        .says("no-such-ledger.json")
        .says("does not exist");

    let not_a_ledger = fx.path("other.json");
    std::fs::write(&not_a_ledger, r#"{"hello": "world"}"#).unwrap();
    verify(&not_a_ledger, &cert)
        .fails()
        .says("other.json")
        .says("privacy-ledger.json");

    let empty_dir = fx.path("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    verify(&empty_dir, &cert)
        .fails()
        .says("is not a ledger database directory");
    assert_eq!(
        std::fs::read_dir(&empty_dir).unwrap().count(),
        0,
        "auditing created files in a directory that held no ledger"
    );

    let not_pem = fx.path("cert.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    verify(&json, &not_pem)
        .fails()
        .says("cert.pem")
        .says("not a usable certificate");

    // The private key is PEM but not a certificate.
    verify(&json, &fx.pki.coordinator_key_path())
        .fails()
        .says("coordinator.key")
        .says("CERTIFICATE");

    verify(&json, &fx.path("missing.pem"))
        .fails()
        .says("missing.pem")
        .says("does not exist");
}

#[test]
fn compare_rejects_an_unknown_partner_name() {
    let fx = Fixture::new();
    let coordinator = fx.coordinator_ledger(2);
    let run = audit(&[
        OsStr::new("compare"),
        "--partner".as_ref(),
        "nobody".as_ref(),
        "--partner-ledger".as_ref(),
        coordinator.as_os_str(),
        "--coordinator-ledger".as_ref(),
        coordinator.as_os_str(),
    ]);
    run.fails().says("\"nobody\" took part in no round");
}

/// Runs `consortia audit report` on `ledger` (verified against `cert`), writing `NAME.html` and
/// `NAME.out.json`; returns the run, the HTML and the parsed JSON export.
fn report_files(
    fx: &Fixture,
    ledger: &Path,
    cert: &Path,
    name: &str,
) -> (Run, String, serde_json::Value) {
    let (html, out) = (
        fx.path(&format!("{name}.html")),
        fx.path(&format!("{name}.out.json")),
    );
    let run = audit(&[
        OsStr::new("report"),
        "--ledger".as_ref(),
        ledger.as_os_str(),
        "--cert".as_ref(),
        cert.as_os_str(),
        "--html".as_ref(),
        html.as_os_str(),
        "--json".as_ref(),
        out.as_os_str(),
    ])
    .ok();
    let page = std::fs::read_to_string(&html).expect("HTML report written");
    let json = serde_json::from_str(&std::fs::read_to_string(&out).expect("JSON written"))
        .expect("JSON export parses");
    (run, page, json)
}

#[test]
fn report_flags_entries_drawn_without_the_secure_generator() {
    let fx = Fixture::new();
    let key = fx.pki.coordinator_key_path();
    let mut records: Vec<SpendRecord> = (1..=3).map(|r| record(r, &epsilon)).collect();
    if let Some(c) = records[1].charged.as_mut() {
        c.rng = "rand-thread-rng".into();
    }
    let (_, json) = fx.ledger_of("mixed", &key, records);
    let (run, page, export) = report_files(&fx, &json, &fx.coordinator_cert(), "mixed");
    run.says("WARNING: INSECURE RNG")
        .says("1 of 3 entries drew their noise without the secure generator")
        .says("INSECURE RNG");
    assert!(page.contains("class=\"warning\""), "{page}");
    assert!(page.contains("<tr class=\"insecure\">"), "{page}");
    assert_eq!(
        export["insecure_rng"],
        serde_json::json!([{"index": 1, "rng": "rand-thread-rng"}])
    );

    // A ledger drawn from OpenSSL throughout has no warning, and an empty list in the export.
    let clean = fx.coordinator_ledger(2);
    let (run, page, export) = report_files(&fx, &clean, &fx.coordinator_cert(), "clean");
    assert!(!run.text().contains("INSECURE"), "{}", run.text());
    assert!(!page.contains("class=\"warning\""));
    assert_eq!(export["insecure_rng"], serde_json::json!([]));
}

/// A ledger exported before entry format v2 (file format consortia-ledger/v1, entries without
/// mechanism details) still verifies, reports and compares.
#[test]
fn ledgers_of_format_v1_still_verify_report_and_compare() {
    let fx = Fixture::new();
    let signer = Signer::from_pkcs8_pem_file(fx.pki.coordinator_key_path()).unwrap();
    let mut prev_hash = GENESIS_PREV_HASH;
    let mut entries = Vec::new();
    for round in 1..=3u64 {
        let mut record = record(round, &epsilon);
        record.charged = None;
        let index = round - 1;
        let hash = entry_hash(index, &prev_hash, &record);
        entries.push(LedgerEntry {
            index,
            prev_hash,
            record,
            hash,
            signature: signer.sign_hash(&hash).unwrap(),
        });
        prev_hash = hash;
    }
    let old = fx.path("old.json");
    let file = serde_json::json!({"format": "consortia-ledger/v1", "entries": entries});
    std::fs::write(&old, serde_json::to_vec_pretty(&file).unwrap()).unwrap();

    verify(&old, &fx.coordinator_cert())
        .ok()
        .says("OK: 3 entries");
    let (run, _, export) = report_files(&fx, &old, &fx.coordinator_cert(), "old");
    run.says("3 of 3 entries (format v1) did not record their generator");
    assert_eq!(export["format"], serde_json::json!("consortia-ledger/v2"));
    assert_eq!(export["insecure_rng"].as_array().map(Vec::len), Some(3));

    // The partner's v2 copy of the same rounds agrees with the coordinator's v1 ledger.
    let partner = fx
        .ledger("partner", &fx.pki.partner_key_path(PARTNER), 3, &epsilon)
        .1;
    compare(&fx, &partner, &old).ok().says("OK");
}

/// `consortia audit report … | head`: the reader goes away before the table is written;
/// the command ends quietly (status 0, no panic), as `tests/cli_output.rs` asks of every
/// command.
#[test]
fn report_ends_quietly_when_its_output_is_closed() {
    let fx = Fixture::new();
    let json = fx.coordinator_ledger(40);
    let (html, out) = (fx.path("head.html"), fx.path("head.json"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_consortia"))
        .arg("audit")
        .arg("report")
        .arg("--ledger")
        .arg(&json)
        .arg("--cert")
        .arg(fx.coordinator_cert())
        .arg("--html")
        .arg(&html)
        .arg("--json")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run consortia");
    // Close the read end before the command writes its first line.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}\n{stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
