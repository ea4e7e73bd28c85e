//! The console's HTML pages, rendered on the server from the views of [`super::views`].
//! Each page is a layout around a `<main>`; `?part=main` returns only what goes in it,
//! which the embedded script fetches every [`super::REFRESH_MS`] to keep the page live.

use std::fmt::Write as _;

use consortia_ledger::audit::format_time_utc;

use super::charts::{budget_bars, line_chart};
use super::views::{FederationView, PrivacyView, TrainingView};
use super::{REFRESH_MS, Viewer};
use crate::key_holders::KeyHolderView;

/// Rounds the training table shows (the latest); the JSON has them all.
const TABLE_ROWS: usize = 50;
/// Model versions the training page lists (the latest); every one is downloadable.
const MODEL_ROWS: usize = 20;

/// Escapes text for HTML content and attribute values (the audit report's escaping).
pub(super) use consortia_ledger::audit::escape_html as esc;

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "<span class=\"none\">none</span>".into()
    } else {
        names.iter().map(|n| esc(n)).collect::<Vec<_>>().join(", ")
    }
}

/// How people write an evaluation figure's name.
fn figure_name(key: &str) -> &str {
    match key {
        "roc_auc" => "ROC-AUC",
        "pr_auc" => "PR-AUC",
        "log_loss" => "log-loss",
        "rmse" => "RMSE",
        "mae" => "MAE",
        "r2" => "R²",
        other => other,
    }
}

fn eps(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e-3 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

/// The page around `main`, or `main` alone when `part`.
fn layout(viewer: &Viewer, task: &str, title: &str, main: String, part: bool) -> String {
    if part {
        return main;
    }
    let mut nav = String::new();
    let mut pages = vec![("/training", "Training"), ("/privacy", "Privacy")];
    if viewer.is_operator() {
        pages.insert(0, ("/federation", "Federation"));
    }
    for (href, name) in pages {
        let current = if name == title {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{name}</a>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Consortia console</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head>\
         <body data-refresh-ms=\"{REFRESH_MS}\"><header><span class=\"brand\">Consortia</span>\
         <span class=\"task\">{task}</span><nav>{nav}</nav>\
         <span class=\"who\" id=\"viewer\" data-role=\"{role}\">{name} · {role}</span></header>\
         <div id=\"offline\" class=\"offline\" hidden>The coordinator does not answer: \
         the figures below may be out of date.</div>\
         <main id=\"main\">{main}</main>\
         <footer>Read-only console. JSON of this page: <a href=\"/api/v1/{api}\">/api/v1/{api}</a></footer>\
         </body></html>",
        task = esc(task),
        role = viewer.role.as_str(),
        name = esc(&viewer.name),
        api = title.to_lowercase(),
    )
}

fn updated(at_unix_ms: u64) -> String {
    format!(
        "<p class=\"updated\">As of <time id=\"updated\" data-unix-ms=\"{at_unix_ms}\">{}</time></p>",
        format_time_utc(at_unix_ms)
    )
}

/// The Federation page (operators only).
pub(super) fn federation(viewer: &Viewer, v: &FederationView, part: bool) -> String {
    let t = &v.task;
    let p = &v.progress;
    let mut m = String::new();
    let _ = write!(
        m,
        "<h1>Federation</h1>{}<section class=\"cards\">\
         <div class=\"card\"><h2>Task</h2><dl>\
         <dt>Name</dt><dd id=\"task-name\">{}</dd><dt>Strategy</dt><dd>{}</dd>\
         <dt>Model</dt><dd>{}</dd><dt>Rounds</dt><dd>{}</dd><dt>Min. partners</dt><dd>{}</dd>\
         <dt>Round deadline</dt><dd>{} s</dd><dt>Secure aggregation</dt><dd>{}</dd>\
         <dt>Differential privacy</dt><dd>{}</dd></dl></div>",
        updated(v.at_unix_ms),
        esc(&t.name),
        esc(&t.strategy),
        esc(&t.model),
        t.rounds,
        t.min_partners,
        t.round_deadline_secs,
        if t.secure_aggregation { "yes" } else { "no" },
        if t.differential_privacy { "yes" } else { "no" },
    );
    let deadline = match (p.deadline_unix_ms, p.deadline_in_secs) {
        (Some(ms), Some(left)) => format!("{} ({left} s left)", format_time_utc(ms)),
        _ => "<span class=\"none\">none</span>".into(),
    };
    let _ = write!(
        m,
        "<div class=\"card\"><h2>Progress</h2><dl>\
         <dt>Round</dt><dd><span id=\"round\" class=\"big\">{}</span> of {}</dd>\
         <dt>Completed rounds</dt><dd id=\"completed-rounds\">{}</dd>\
         <dt>Phase</dt><dd id=\"phase\">{}</dd><dt>Deadline</dt><dd id=\"deadline\">{deadline}</dd>\
         </dl></div>",
        p.round,
        t.rounds,
        p.completed_rounds,
        esc(&p.phase),
    );
    let pa = &v.partners;
    let _ = write!(
        m,
        "<div class=\"card\"><h2>Partners</h2><dl class=\"stack\">\
         <dt>Connected ({})</dt><dd id=\"connected\">{}</dd>\
         <dt>Selected ({})</dt><dd id=\"selected\">{}</dd>\
         <dt>Contributed to the last round ({})</dt><dd id=\"contributed\">{}</dd>\
         <dt>Admitted by the task</dt><dd>{}</dd></dl></div>",
        pa.connected.len(),
        list(&pa.connected),
        pa.selected.len(),
        list(&pa.selected),
        pa.contributed.len(),
        list(&pa.contributed),
        pa.allowed
            .as_deref()
            .map(list)
            .unwrap_or_else(|| "any partner of the federation CA".into()),
    );
    let waiting = if v.key.waiting_for.is_empty() {
        "<span class=\"none\">nobody</span>".to_string()
    } else {
        format!(
            "<strong class=\"warn\">{}</strong>",
            list(&v.key.waiting_for)
        )
    };
    let kh = &v.key_holders;
    let _ = write!(
        m,
        "<div class=\"card\"><h2>Key holders</h2><dl class=\"stack\">\
         <dt>Holders ({})</dt><dd id=\"key-holders\">{}</dd>\
         <dt>Shares that open a sum</dt><dd id=\"key-threshold\">{}</dd>\
         <dt>Connected now</dt><dd id=\"key-holders-connected\">{}</dd>\
         <dt>Waiting for</dt><dd id=\"waiting-for\">{waiting}</dd>\
         <dt>Connected, not key holders (do not train until the next key)</dt>\
         <dd id=\"outside-key\">{}</dd>\
         <dt>Automatic re-key</dt><dd id=\"rekey-status\">{}</dd></dl>{}</div>",
        v.key.holders.len(),
        list(&v.key.holders),
        kh.threshold
            .map(|t| format!("{t} of {}", v.key.holders.len()))
            .unwrap_or_else(|| "<span class=\"none\">no key</span>".into()),
        kh.connected,
        list(&kh.outside),
        rekey_status(kh),
        holder_table(kh),
    );
    m.push_str(&decryptions(kh));
    let refusals = |map: &std::collections::BTreeMap<String, u64>| {
        if map.is_empty() {
            return "<span class=\"none\">none</span>".to_string();
        }
        map.iter()
            .map(|(k, n)| format!("{}: {n}", esc(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        m,
        "<div class=\"card\"><h2>Refusals</h2><dl class=\"stack\">\
         <dt>Handshakes</dt><dd id=\"refused-handshakes\">{}</dd>\
         <dt>Sessions</dt><dd id=\"refused-sessions\">{}</dd></dl></div></section>",
        refusals(&v.refused_handshakes),
        refusals(&v.refused_sessions),
    );
    layout(viewer, &t.name, "Federation", m, part)
}

/// Whether and when the coordinator re-keys by itself.
fn rekey_status(kh: &KeyHolderView) -> String {
    if kh.rekey_after_secs == 0 {
        return "off (<code>[keys] rekey_after_s = 0</code>)".into();
    }
    match (kh.at_risk_since_unix_ms, kh.rekey_in_secs) {
        (Some(since), Some(left)) => format!(
            "<strong class=\"warn\">too few holders reachable since {}</strong>: considered in \
             {left} s (after {} s)",
            format_time_utc(since),
            kh.rekey_after_secs
        ),
        _ => format!(
            "after {} s with too few holders reachable",
            kh.rekey_after_secs
        ),
    }
}

/// Each key holder: connected or since when not, and the last round it decrypted.
fn holder_table(kh: &KeyHolderView) -> String {
    if kh.holders.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "<table id=\"holder-table\"><thead><tr><th>Holder</th><th>Connected</th>\
         <th>Last round answered</th></tr></thead><tbody>",
    );
    for h in &kh.holders {
        let connected = match (h.connected, h.away_since_unix_ms) {
            (true, _) => "yes".to_string(),
            (false, Some(ms)) => format!(
                "<span class=\"warn\">no, since {}</span>",
                format_time_utc(ms)
            ),
            (false, None) => "no".to_string(),
        };
        let _ = write!(
            t,
            "<tr data-holder=\"{}\"><td>{}</td><td>{connected}</td><td>{}</td></tr>",
            esc(&h.partner),
            esc(&h.partner),
            h.last_answered_round
                .map(|r| r.to_string())
                .unwrap_or_else(|| "–".into()),
        );
    }
    t.push_str("</tbody></table>");
    t
}

/// The latest decryptions (who decrypted, who did not answer, who was away) and
/// automatic re-keys.
fn decryptions(kh: &KeyHolderView) -> String {
    let mut m = String::from(
        "<section><h2>Decryptions</h2><table id=\"decryptions\"><thead><tr><th>Round</th>\
         <th>Attempt</th><th>Outcome</th><th>Decrypted by</th><th>Asked, did not answer</th>\
         <th>Away</th></tr></thead><tbody>",
    );
    for d in &kh.decryptions {
        let mut silent: Vec<String> = d
            .failed
            .iter()
            .map(|f| format!("{} ({})", esc(&f.partner), esc(&f.reason)))
            .collect();
        silent.extend(d.stopped.iter().map(|p| format!("{} (stopped)", esc(p))));
        let outcome = match &d.reason {
            None => "<span class=\"ok\">decrypted</span>".to_string(),
            Some(why) => format!("<span class=\"bad\">failed: {}</span>", esc(why)),
        };
        let _ = write!(
            m,
            "<tr data-round=\"{}\"><td>{}</td><td>{}</td><td>{outcome}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            d.round,
            d.round,
            d.attempt,
            list(&d.answered),
            if silent.is_empty() {
                "<span class=\"none\">none</span>".to_string()
            } else {
                silent.join(", ")
            },
            list(&d.away),
        );
    }
    if kh.decryptions.is_empty() {
        m.push_str("<tr><td colspan=\"6\"><span class=\"none\">none yet</span></td></tr>");
    }
    m.push_str("</tbody></table></section>");
    if !kh.rekeys.is_empty() {
        m.push_str(
            "<section><h2>Automatic re-keys</h2><table id=\"rekeys\"><thead><tr><th>When (UTC)</th>\
             <th>Why</th><th>Unreachable holders</th><th>Old holders</th><th>New holders</th>\
             </tr></thead><tbody>",
        );
        for r in &kh.rekeys {
            let unreachable: Vec<String> = r
                .unreachable
                .iter()
                .map(|a| {
                    format!(
                        "{} (since {})",
                        esc(&a.partner),
                        format_time_utc(a.since_unix_ms)
                    )
                })
                .collect();
            let _ = write!(
                m,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                format_time_utc(r.at_unix_ms),
                esc(&r.reason),
                unreachable.join(", "),
                list(&r.old_holders),
                list(&r.new_holders),
            );
        }
        m.push_str(
            "</tbody></table><p class=\"note\">Holders of a retired key left out of the new \
             one do not train, even if they come back, until the next key.</p></section>",
        );
    }
    m
}

/// The Training page.
pub(super) fn training(viewer: &Viewer, v: &TrainingView, part: bool) -> String {
    let mut m = format!("<h1>Training</h1>{}", updated(v.at_unix_ms));
    match (&v.rounds, &v.evaluations) {
        (Some(rounds), Some(evals)) => {
            let headline: Vec<(f64, f64)> = evals
                .iter()
                .filter_map(|e| Some((e.model_round as f64, *e.metrics.get(&v.headline)?)))
                .collect();
            let loss: Vec<(f64, f64)> = rounds
                .iter()
                .filter_map(|r| Some((r.round as f64, r.train_loss?)))
                .collect();
            let _ = write!(
                m,
                "<section class=\"split\"><div><h2>{h} of the global model by round</h2>{}\
                 <h2>Training loss by round</h2>{}</div><div><h2>Rounds</h2>\
                 <table id=\"rounds\"><thead><tr><th>Round</th><th>Partners</th>\
                 <th>Examples</th><th>Loss</th><th>{h}</th><th>Completed (UTC)</th></tr></thead><tbody>",
                line_chart(
                    "chart-metric",
                    figure_name(&v.headline),
                    &headline,
                    "no evaluation yet"
                ),
                line_chart(
                    "chart-loss",
                    "training loss",
                    &loss,
                    "no training loss reported (under differential privacy partners do not report it)"
                ),
                h = esc(figure_name(&v.headline)),
            );
            let by_round: std::collections::BTreeMap<u64, f64> = evals
                .iter()
                .filter_map(|e| Some((e.model_round, *e.metrics.get(&v.headline)?)))
                .collect();
            for r in rounds.iter().rev().take(TABLE_ROWS) {
                let figure = by_round
                    .get(&r.round)
                    .map(|x| format!("{x:.4}"))
                    .unwrap_or_default();
                let _ = write!(
                    m,
                    "<tr data-round=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{figure}</td><td>{}</td></tr>",
                    r.round,
                    r.round,
                    r.participants.len(),
                    r.examples,
                    r.train_loss
                        .map(|l| format!("{l:.4}"))
                        .unwrap_or_else(|| "–".into()),
                    format_time_utc(r.completed_unix_ms),
                );
            }
            m.push_str("</tbody></table>");
            if rounds.len() > TABLE_ROWS {
                let _ = write!(
                    m,
                    "<p class=\"note\">The latest {TABLE_ROWS} of {} rounds; all of them in \
                     <a href=\"/api/v1/training\">/api/v1/training</a>.</p>",
                    rounds.len()
                );
            }
            m.push_str("</div></section>");
        }
        _ => m.push_str(
            "<p class=\"note\" id=\"operator-only\">Per-round training figures are shown to \
             the federation's operator.</p>",
        ),
    }
    let _ = write!(
        m,
        "<section><h2>Model versions ({})</h2><table id=\"models\"><thead><tr><th>Round</th>\
         <th>Export (what <code>consortia model export</code> writes)</th></tr></thead><tbody>",
        v.models.len()
    );
    for model in v.models.iter().rev().take(MODEL_ROWS) {
        let _ = write!(
            m,
            "<tr><td>{}</td><td><a href=\"{}\" download>model-round-{}.json</a></td></tr>",
            if model.round == 0 {
                "0 (initial)".to_string()
            } else {
                model.round.to_string()
            },
            esc(&model.download),
            model.round
        );
    }
    m.push_str("</tbody></table>");
    if v.models.len() > MODEL_ROWS {
        let _ = write!(
            m,
            "<p class=\"note\">The latest {MODEL_ROWS} of {} versions; any round's export is at \
             <code>/api/v1/models/ROUND.json</code>.</p>",
            v.models.len()
        );
    }
    m.push_str("</section>");
    layout(viewer, &v.task, "Training", m, part)
}

/// The Privacy page.
pub(super) fn privacy(viewer: &Viewer, v: &PrivacyView, part: bool) -> String {
    let l = &v.ledger;
    let mut m = String::from("<h1>Privacy</h1>");
    if let Some(alarm) = &l.alarm {
        let _ = write!(
            m,
            "<div id=\"ledger-alarm\" class=\"alarm\" role=\"alert\"><strong>Ledger verification \
             FAILED</strong> (first seen {}): {}. The ledger's signatures or hash chain do not hold: \
             treat the privacy figures below as untrusted and investigate.</div>",
            format_time_utc(alarm.since_unix_ms),
            esc(&alarm.problem)
        );
    }
    m.push_str(&updated(v.at_unix_ms));
    if !v.differential_privacy {
        m.push_str(
            "<p class=\"note\">This task has no <code>[privacy]</code> table: nothing is charged \
             to any budget.</p>",
        );
    }
    let status = if !l.present {
        "<span class=\"none\">no ledger yet</span>".to_string()
    } else if l.verified {
        "<span class=\"ok\">verified</span>".to_string()
    } else {
        format!(
            "<span class=\"bad\">FAILED: {}</span>",
            esc(l.problem.as_deref().unwrap_or("unknown"))
        )
    };
    let _ = write!(
        m,
        "<section class=\"cards\"><div class=\"card wide\"><h2>Ledger</h2><dl>\
         <dt>Verification</dt><dd id=\"ledger-status\" data-verified=\"{}\">{status}</dd>\
         <dt>Entries</dt><dd id=\"ledger-entries\">{}</dd>\
         <dt>Head</dt><dd>{} <code id=\"head-hash\">{}</code></dd>\
         <dt>Signatures checked against</dt><dd>{} <small>(key sha256 {})</small></dd>\
         <dt>Checked</dt><dd>{}</dd></dl>\
         <p class=\"downloads\"><a href=\"/api/v1/ledger.json\" download>Ledger (JSON)</a> \
         <a href=\"/api/v1/ledger-report.html\" download>Audit report (HTML)</a></p></div></section>",
        l.verified && l.present,
        l.entries,
        l.head_index
            .map(|i| format!("entry {i}"))
            .unwrap_or_default(),
        esc(l.head_hash.as_deref().unwrap_or("")),
        esc(&l.certificate),
        esc(l.key_fingerprint.as_deref().unwrap_or("?")),
        format_time_utc(l.checked_unix_ms),
    );
    let rows: Vec<(String, f64, Option<f64>)> = v
        .partners
        .iter()
        .map(|p| (p.partner.clone(), p.epsilon_spent, p.epsilon_budget))
        .collect();
    let _ = write!(
        m,
        "<section class=\"split\"><div><h2>Cumulative ε against budget{}</h2>{}</div><div>\
         <h2>Budgets</h2><table id=\"budgets\"><thead><tr><th>Partner</th><th>ε spent</th>\
         <th>ε budget</th><th>Used</th></tr></thead><tbody>",
        v.delta.map(|d| format!(" (δ = {d:e})")).unwrap_or_default(),
        budget_bars("chart-budget", &rows),
    );
    for p in &v.partners {
        let _ = write!(
            m,
            "<tr data-partner=\"{}\" data-spent=\"{}\" data-budget=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.partner),
            p.epsilon_spent,
            p.epsilon_budget.map(|b| b.to_string()).unwrap_or_default(),
            esc(&p.partner),
            eps(p.epsilon_spent),
            p.epsilon_budget.map(eps).unwrap_or_else(|| "?".into()),
            p.fraction
                .map(|f| format!("{:.1} %", f * 100.0))
                .unwrap_or_default(),
        );
    }
    m.push_str("</tbody></table></div></section>");
    layout(viewer, &v.task, "Privacy", m, part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decryptions_say_who_decrypted_who_did_not_answer_and_who_was_away_escaped() {
        use crate::key_holders::{DecryptionRecord, HolderRow, KeyHolderView, Unanswered};
        let evil = "<script>x</script>".to_string();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let kh = KeyHolderView {
            threshold: Some(3),
            connected: 3,
            holders: vec![
                HolderRow {
                    partner: "a".into(),
                    connected: true,
                    away_since_unix_ms: None,
                    last_answered_round: Some(2),
                },
                HolderRow {
                    partner: evil.clone(),
                    connected: false,
                    away_since_unix_ms: Some(0),
                    last_answered_round: None,
                },
            ],
            outside: names(&["f"]),
            rekey_after_secs: 600,
            at_risk_since_unix_ms: Some(0),
            rekey_in_secs: Some(42),
            decryptions: vec![DecryptionRecord {
                round: 2,
                attempt: 1,
                at_unix_ms: 0,
                decrypted: true,
                reason: None,
                holders: names(&["a", "b", "c", "d", "e"]),
                threshold: 3,
                asked: names(&["a", "b", "c", "d"]),
                answered: names(&["a", "b", "c"]),
                failed: vec![Unanswered {
                    partner: "d".into(),
                    reason: "no <b>seeds</b>".into(),
                }],
                stopped: Vec::new(),
                away: vec![evil.clone()],
            }],
            rekeys: Vec::new(),
            as_of_unix_ms: 0,
        };
        let html = decryptions(&kh);
        assert!(
            html.contains(
                "<td>a, b, c</td><td>d (no &lt;b&gt;seeds&lt;/b&gt;)</td>\
                 <td>&lt;script&gt;x&lt;/script&gt;</td>"
            ),
            "{html}"
        );
        assert!(!html.contains("<script>"), "{html}");
        let table = holder_table(&kh);
        assert!(
            table.contains("data-holder=\"&lt;script&gt;x&lt;/script&gt;\""),
            "{table}"
        );
        assert!(table.contains("<td>2</td>"), "{table}");
        assert!(!table.contains("<script>"), "{table}");
        assert!(rekey_status(&kh).contains("considered in 42 s"));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
