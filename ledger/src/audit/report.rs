//! Human-readable reports of a ledger: a plain-text table and a self-contained HTML page.
//!
//! Both flag the entries whose noise was not drawn from the secure generator
//! ([`SECURE_RNG`], OpenSSL, the crate feature `secure-rng`): a build without it draws DP noise
//! from a generator OpenDP does not vouch for, and format v1 entries did not record their
//! generator at all ([`rng_warnings`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::entry::{LedgerEntry, SECURE_RNG};
use crate::error::LedgerError;

/// The most bytes of a certificate file read to describe it.
const MAX_CERT_FILE_BYTES: u64 = 64 * 1024;

/// Which certificate a ledger's signatures were checked against, as a report names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateSummary {
    /// The certificate file as given.
    pub file: String,
    /// The certificate's subject (`CN=coordinator`).
    pub subject: String,
    /// SHA-256 of the certificate (its DER bytes, as `openssl x509 -fingerprint -sha256`
    /// computes it), 64 lowercase hex digits.
    pub sha256: String,
}

impl CertificateSummary {
    /// Describes the first certificate of the PEM file `path` (at most 64 KiB).
    pub fn from_pem_file(path: &std::path::Path) -> Result<Self, LedgerError> {
        use std::io::Read as _;
        use x509_parser::pem::Pem;
        use x509_parser::prelude::{FromDer, X509Certificate};
        let with_path = |reason: String| LedgerError::VerifyingKey {
            path: Some(path.to_path_buf()),
            reason,
        };
        let mut text = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CERT_FILE_BYTES + 1).read_to_end(&mut text))
            .map_err(|e| with_path(e.to_string()))?;
        if text.len() as u64 > MAX_CERT_FILE_BYTES {
            return Err(with_path(format!(
                "file is larger than {MAX_CERT_FILE_BYTES} bytes"
            )));
        }
        for block in Pem::iter_from_buffer(&text) {
            let block = block.map_err(|e| with_path(format!("malformed PEM: {e}")))?;
            if block.label != "CERTIFICATE" {
                continue;
            }
            let (_, cert) = X509Certificate::from_der(&block.contents)
                .map_err(|e| with_path(format!("not an X.509 certificate ({e})")))?;
            use sha2::Digest as _;
            return Ok(CertificateSummary {
                file: path.display().to_string(),
                subject: cert.subject().to_string(),
                sha256: hex::encode(sha2::Sha256::digest(&block.contents)),
            });
        }
        Err(with_path(
            "no `-----BEGIN CERTIFICATE-----` block found".into(),
        ))
    }
}

/// What a report says at its top about its ledger's verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signatures", rename_all = "snake_case")]
pub enum ReportVerification {
    /// Every entry's hash, signature and chain link was checked against `certificate`.
    Checked {
        /// The signer's certificate.
        certificate: CertificateSummary,
        /// Entries verified (all of them).
        entries: u64,
    },
    /// Signatures were not checked (no certificate given): the entries are shown as stored.
    NotChecked {
        /// A break in the hash chain found without a key, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chain_problem: Option<String>,
    },
}

impl ReportVerification {
    /// Whether the signatures were checked.
    pub fn checked(&self) -> bool {
        matches!(self, ReportVerification::Checked { .. })
    }

    /// The sentence the report opens with.
    pub fn sentence(&self) -> String {
        match self {
            ReportVerification::Checked {
                certificate,
                entries,
            } => format!(
                "Verified: the signatures, hashes and hash chain of all {entries} entries were checked against the certificate {} (subject {}, SHA-256 fingerprint {}).",
                certificate.file, certificate.subject, certificate.sha256
            ),
            ReportVerification::NotChecked { chain_problem } => {
                let mut s = "Not verified: signatures were not checked (no signer certificate was given); the entries are shown as stored."
                    .to_string();
                if let Some(p) = chain_problem {
                    s.push_str(&format!(" The hash chain is broken: {p}."));
                }
                s
            }
        }
    }
}

/// An entry whose noise was not drawn from [`SECURE_RNG`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngWarning {
    /// The entry's index.
    pub index: u64,
    /// The generator it recorded; `None` for a format v1 entry, which recorded none.
    pub rng: Option<String>,
}

impl std::fmt::Display for RngWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rng {
            Some(rng) => write!(f, "entry {}: rng {rng:?}", self.index),
            None => write!(f, "entry {}: rng not recorded (format v1)", self.index),
        }
    }
}

/// The entries whose `rng` is not [`SECURE_RNG`] (including format v1 entries, which did not
/// record it), in ledger order.
pub fn rng_warnings(entries: &[LedgerEntry]) -> Vec<RngWarning> {
    entries
        .iter()
        .filter(|e| !e.record.rng_is_secure())
        .map(|e| RngWarning {
            index: e.index,
            rng: e.record.rng().map(str::to_string),
        })
        .collect()
}

/// The warning line about entries drawn without the secure generator, if any.
fn rng_warning_text(entries: &[LedgerEntry]) -> Option<String> {
    let warnings = rng_warnings(entries);
    if warnings.is_empty() {
        return None;
    }
    let insecure: Vec<String> = warnings
        .iter()
        .filter(|w| w.rng.is_some())
        .map(|w| w.index.to_string())
        .collect();
    let unrecorded: Vec<String> = warnings
        .iter()
        .filter(|w| w.rng.is_none())
        .map(|w| w.index.to_string())
        .collect();
    let mut parts = Vec::new();
    if !insecure.is_empty() {
        parts.push(format!(
            "{} of {} entries drew their noise without the secure generator (rng is not {SECURE_RNG:?}: \
             built without the `secure-rng` feature): entries {}",
            insecure.len(),
            entries.len(),
            insecure.join(", ")
        ));
    }
    if !unrecorded.is_empty() {
        parts.push(format!(
            "{} of {} entries (format v1) did not record their generator: entries {}",
            unrecorded.len(),
            entries.len(),
            unrecorded.join(", ")
        ));
    }
    Some(format!(
        "WARNING: INSECURE RNG — {}. Noise from a generator other than OpenSSL is not \
         vouched for; build the agents and coordinator with `--features secure-rng`.",
        parts.join("; ")
    ))
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2026-11-25T10:27:14.123Z`.
///
/// Uses the proleptic Gregorian calendar (days-to-civil conversion from H. Hinnant,
/// "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
pub fn format_time_utc(time_unix_ms: u64) -> String {
    let secs = time_unix_ms / 1000;
    let ms = time_unix_ms % 1000;
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Hinnant's `civil_from_days` for non-negative day counts since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Formats an ε value: 4 decimals from 0.001 up, scientific notation below.
fn fmt_eps(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v.abs() >= 1e-3 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

/// One line of the per-round table: one partner in one entry.
struct Row {
    cells: [String; 12],
    over_budget: bool,
    insecure_rng: bool,
}

/// Columns shown left-aligned (text); the others are numbers.
fn is_text_column(i: usize) -> bool {
    matches!(i, 1 | 3 | 4 | 6 | 11)
}

const HEADERS: [&str; 12] = [
    "entry",
    "task",
    "round",
    "time (UTC)",
    "mechanism",
    "delta",
    "partner",
    "eps round",
    "eps cumulative",
    "eps budget",
    "used",
    "rng",
];

fn rows(entries: &[LedgerEntry]) -> Vec<Row> {
    let mut out = Vec::new();
    for e in entries {
        let r = &e.record;
        for p in &r.participants {
            let cum = r.epsilon_cumulative.get(p).copied();
            let budget = r.budget_epsilon.get(p).copied();
            let used = match (cum, budget) {
                (Some(c), Some(b)) if b > 0.0 => Some(c / b),
                _ => None,
            };
            out.push(Row {
                cells: [
                    e.index.to_string(),
                    r.task.clone(),
                    r.round.to_string(),
                    format_time_utc(r.time_unix_ms),
                    r.mechanism.clone(),
                    format!("{:e}", r.delta),
                    p.clone(),
                    r.epsilon_round.get(p).map_or("-".into(), |v| fmt_eps(*v)),
                    cum.map_or("-".into(), fmt_eps),
                    budget.map_or("-".into(), fmt_eps),
                    used.map_or("-".into(), |u| format!("{:.1}%", u * 100.0)),
                    r.rng().unwrap_or("unrecorded").to_string(),
                ],
                over_budget: used.is_some_and(|u| u > 1.0),
                insecure_rng: !r.rng_is_secure(),
            });
        }
    }
    out
}

/// Latest cumulative ε and budget per partner, over all entries.
fn latest_per_partner(entries: &[LedgerEntry]) -> BTreeMap<String, (Option<f64>, Option<f64>)> {
    let mut out: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for e in entries {
        for (p, v) in &e.record.epsilon_cumulative {
            out.entry(p.clone()).or_default().0 = Some(*v);
        }
        for (p, v) in &e.record.budget_epsilon {
            out.entry(p.clone()).or_default().1 = Some(*v);
        }
    }
    out
}

fn head_line(entries: &[LedgerEntry]) -> String {
    match entries.last() {
        None => "0 entries".to_string(),
        Some(last) => format!(
            "{} entries; head {}:{}",
            entries.len(),
            last.index,
            last.hash_hex()
        ),
    }
}

/// A plain-text table of the ledger: for each entry and participant, the round, time, ε spent
/// in the round and cumulatively, against the partner's budget (rows over budget are marked
/// `OVER BUDGET`), and the noise's generator (rows not drawn from [`SECURE_RNG`] are marked
/// `INSECURE RNG`), followed by each partner's latest total and the ledger head. A ledger with
/// such rows starts with a `WARNING: INSECURE RNG` line.
///
/// Reports contents as recorded; check integrity with [`super::verify`] first.
pub fn report_table(entries: &[LedgerEntry]) -> String {
    let rows = rows(entries);
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(&row.cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String], flag: &str| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w.saturating_sub(c.chars().count());
            // Text columns left-aligned, numbers right-aligned.
            if is_text_column(i) {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', pad));
            } else {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(c);
            }
        }
        if !flag.is_empty() {
            s.push_str("  ");
            s.push_str(flag);
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = String::new();
    if let Some(w) = rng_warning_text(entries) {
        out.push_str(&w);
        out.push_str("\n\n");
    }
    out.push_str(&line(&HEADERS.map(String::from), ""));
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in &rows {
        let flag = match (row.over_budget, row.insecure_rng) {
            (true, true) => "OVER BUDGET  INSECURE RNG",
            (true, false) => "OVER BUDGET",
            (false, true) => "INSECURE RNG",
            (false, false) => "",
        };
        out.push_str(&line(&row.cells, flag));
    }
    out.push('\n');
    for (p, (cum, budget)) in latest_per_partner(entries) {
        let _ = write!(
            out,
            "{p}: cumulative eps {} of budget {}",
            cum.map_or("-".into(), fmt_eps),
            budget.map_or("-".into(), fmt_eps)
        );
        if let (Some(c), Some(b)) = (cum, budget) {
            let _ = write!(out, " ({:.1}% used)", c / b * 100.0);
            if c > b {
                out.push_str("  OVER BUDGET");
            }
        }
        out.push('\n');
    }
    out.push_str(&head_line(entries));
    out.push('\n');
    out
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Ten distinguishable colours (Tableau 10), cycled over partners.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `target` ticks over `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = range / target;
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

/// The inline SVG chart: cumulative ε per partner (one solid `<polyline>` each) and its budget
/// (one dashed `<path>` each), over rounds (or over entry indices when rounds are not
/// monotone, e.g. several tasks in one ledger).
fn chart_svg(entries: &[LedgerEntry]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 200.0;
    const TOP: f64 = 20.0;
    const BOTTOM: f64 = 50.0;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);

    let by_round = entries
        .windows(2)
        .all(|w| w[0].record.round <= w[1].record.round && w[0].record.task == w[1].record.task);
    let x_of = |e: &LedgerEntry| {
        if by_round {
            e.record.round as f64
        } else {
            e.index as f64
        }
    };

    let partners: BTreeSet<&str> = entries
        .iter()
        .flat_map(|e| {
            e.record
                .epsilon_cumulative
                .keys()
                .chain(e.record.budget_epsilon.keys())
        })
        .map(String::as_str)
        .collect();

    let mut x_min = f64::INFINITY;
    let mut x_max = f64::NEG_INFINITY;
    let mut y_max: f64 = 0.0;
    for e in entries {
        let x = x_of(e);
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        for v in e
            .record
            .epsilon_cumulative
            .values()
            .chain(e.record.budget_epsilon.values())
        {
            if v.is_finite() {
                y_max = y_max.max(*v);
            }
        }
    }
    if !x_min.is_finite() {
        (x_min, x_max) = (0.0, 1.0);
    }
    if x_max <= x_min {
        x_max = x_min + 1.0;
    }
    if y_max <= 0.0 {
        y_max = 1.0;
    }
    let y_step = nice_step(y_max, 5.0);
    let y_top = (y_max * 1.05 / y_step).ceil() * y_step;
    let sx = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * pw;
    let sy = |y: f64| TOP + ph - (y.clamp(0.0, y_top) / y_top) * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="Cumulative epsilon per partner against budget">"#
    );
    s.push_str("<title>Cumulative ε per partner against budget</title>");
    // Axes, grid and ticks.
    let mut y = 0.0;
    while y <= y_top + y_step * 1e-9 {
        let py = sy(y);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            py + 4.0,
            fmt_tick(y, y_step)
        );
        y += y_step;
    }
    let x_step = nice_step(x_max - x_min, 10.0).max(1.0).round();
    let mut x = (x_min / x_step).ceil() * x_step;
    while x <= x_max + 1e-9 {
        let px = sx(x);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#999"/><text x="{px:.1}" y="{:.1}" text-anchor="middle" class="tick">{x:.0}</text>"##,
            TOP + ph,
            TOP + ph + 5.0,
            TOP + ph + 18.0
        );
        x += x_step;
    }
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">cumulative ε</text>"##,
        LEFT + pw / 2.0,
        H - 8.0,
        if by_round { "round" } else { "ledger entry" },
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );

    for (i, p) in partners.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let name = esc(p);
        // Budget: dashed step line through every entry that states one.
        let mut d = String::new();
        for e in entries {
            if let Some(b) = e.record.budget_epsilon.get(*p) {
                let (px, py) = (sx(x_of(e)), sy(*b));
                if d.is_empty() {
                    let _ = write!(d, "M{px:.1} {py:.1}");
                } else {
                    let _ = write!(d, " H{px:.1} V{py:.1}");
                }
            }
        }
        if !d.is_empty() {
            let _ = write!(
                s,
                r#"<path class="budget" d="{d}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"><title>{name} budget</title></path>"#
            );
        }
        // Cumulative ε: one polyline, with a marker per point.
        let points: Vec<(f64, f64, &LedgerEntry)> = entries
            .iter()
            .filter_map(|e| {
                e.record
                    .epsilon_cumulative
                    .get(*p)
                    .map(|v| (sx(x_of(e)), *v, e))
            })
            .collect();
        let pts: Vec<String> = points
            .iter()
            .map(|(px, v, _)| format!("{px:.1},{:.1}", sy(*v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="cumulative" points="{}" fill="none" stroke="{colour}" stroke-width="2"><title>{name} cumulative ε</title></polyline>"#,
            pts.join(" ")
        );
        for (px, v, e) in &points {
            let _ = write!(
                s,
                r#"<circle cx="{px:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{name}: round {} of {}, cumulative ε {}</title></circle>"#,
                sy(*v),
                e.record.round,
                esc(&e.record.task),
                fmt_eps(*v)
            );
        }
        // Legend.
        let ly = TOP + 10.0 + i as f64 * 36.0;
        let lx = LEFT + pw + 16.0;
        let _ = write!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{name}</text><line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{}" y="{}" class="tick">budget</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            ly + 14.0,
            lx + 24.0,
            ly + 14.0,
            lx + 30.0,
            ly + 18.0
        );
    }
    s.push_str("</svg>");
    s
}

/// A self-contained HTML page (no scripts, no external resources; a Content-Security-Policy
/// forbids loading any) with an inline SVG chart of cumulative ε per partner against its budget
/// (one solid polyline and one dashed budget line per partner), a per-partner summary, and the
/// per-round table. All ledger text is HTML-escaped.
///
/// Reports contents as recorded; check integrity with [`super::verify`] first.
pub fn report_html(entries: &[LedgerEntry], title: &str) -> String {
    let not_checked = ReportVerification::NotChecked {
        chain_problem: None,
    };
    report_html_verified(entries, title, &not_checked)
}

/// [`report_html`], stating `verification` at the top: whether the signatures were
/// checked and against which certificate (subject and SHA-256 fingerprint), or not.
pub fn report_html_verified(
    entries: &[LedgerEntry],
    title: &str,
    verification: &ReportVerification,
) -> String {
    let title = esc(title);
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">\n",
    );
    let _ = writeln!(s, "<title>{title}</title>");
    s.push_str(
        "<style>\nbody{font-family:system-ui,sans-serif;margin:2em;color:#222}\n\
         table{border-collapse:collapse;font-size:0.9em}\n\
         th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}\n\
         td.t,th.t{text-align:left}\nth{background:#f3f3f3}\n\
         tr.over td{background:#fde2e2}\ntr.insecure td.rng{color:#b00020;font-weight:bold}\n\
         p.warning{border:2px solid #b00020;background:#fde2e2;padding:0.6em;font-weight:bold}\n\
         p.verified{border:2px solid #1b7f3b;background:#e3f4e8;padding:0.6em;font-weight:bold}\n\
         p.unverified{border:2px solid #b26a00;background:#fff1d6;padding:0.6em;font-weight:bold}\n.tick{font-size:11px;fill:#555}\n\
         svg text{font-size:12px}\ncode{font-size:0.85em;word-break:break-all}\n</style>\n",
    );
    s.push_str("</head>\n<body>\n");
    let _ = writeln!(s, "<h1>{title}</h1>");
    let _ = writeln!(
        s,
        "<p class=\"{}\" id=\"verification\">{}</p>",
        if verification.checked() {
            "verified"
        } else {
            "unverified"
        },
        esc(&verification.sentence())
    );
    if let Some(w) = rng_warning_text(entries) {
        let _ = writeln!(
            s,
            "<p class=\"warning\" id=\"insecure-rng\">{}</p>",
            esc(&w)
        );
    }
    let _ = writeln!(s, "<p>{}</p>", esc(&head_line(entries)));
    s.push_str("<h2>Cumulative ε per partner</h2>\n");
    s.push_str(&chart_svg(entries));
    s.push('\n');

    s.push_str("<h2>Budget status</h2>\n<table>\n<tr><th class=\"t\">partner</th><th>cumulative ε</th><th>budget ε</th><th>used</th></tr>\n");
    for (p, (cum, budget)) in latest_per_partner(entries) {
        let used = match (cum, budget) {
            (Some(c), Some(b)) => Some(c / b),
            _ => None,
        };
        let _ = writeln!(
            s,
            "<tr{}><td class=\"t\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if used.is_some_and(|u| u > 1.0) {
                " class=\"over\""
            } else {
                ""
            },
            esc(&p),
            cum.map_or("-".into(), fmt_eps),
            budget.map_or("-".into(), fmt_eps),
            used.map_or("-".into(), |u| format!("{:.1}%", u * 100.0))
        );
    }
    s.push_str("</table>\n");

    s.push_str("<h2>Rounds</h2>\n<table>\n<tr>");
    for (i, h) in HEADERS.iter().enumerate() {
        let class = if is_text_column(i) {
            " class=\"t\""
        } else {
            ""
        };
        let _ = write!(s, "<th{class}>{}</th>", esc(h));
    }
    s.push_str("</tr>\n");
    for row in rows(entries) {
        let classes: Vec<&str> = [(row.over_budget, "over"), (row.insecure_rng, "insecure")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| *c)
            .collect();
        if classes.is_empty() {
            s.push_str("<tr>");
        } else {
            let _ = write!(s, "<tr class=\"{}\">", classes.join(" "));
        }
        for (i, c) in row.cells.iter().enumerate() {
            let class = match (i, is_text_column(i)) {
                (11, _) => " class=\"t rng\"",
                (_, true) => " class=\"t\"",
                (_, false) => "",
            };
            let _ = write!(s, "<td{class}>{}</td>", esc(c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    if let Some(last) = entries.last() {
        let _ = writeln!(
            s,
            "<p>Head entry {}: <code>{}</code></p>",
            last.index,
            last.hash_hex()
        );
    }
    s.push_str("</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_times() {
        assert_eq!(format_time_utc(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day) 12:34:56.789 UTC = 951827696789 ms.
        assert_eq!(format_time_utc(951_827_696_789), "2000-02-29T12:34:56.789Z");
        // 2026-11-25 10:27:14 UTC = 1795602434 s.
        assert_eq!(
            format_time_utc(1_795_602_434_000),
            "2026-11-25T10:27:14.000Z"
        );
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(8.0, 5.0), 2.0);
        assert!((nice_step(0.3, 5.0) - 0.1).abs() < 1e-12);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
    }
}
