//! Prometheus metrics of a real federation: the coordinator's and each agent's
//! `/metrics` endpoint scraped while the rounds run and after the last one, parsed
//! with a Prometheus text-format parser (`prometheus-parse`), and checked against
//! what the federation did (the coordinator's log, its state and its privacy ledger).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::time::Duration;

use common::{Federation, TASK, wait_until};
use consortia_coordinator::store::Store;
use consortia_pki::Pki;
use prometheus_parse::{Scrape, Value};

const LONG: Duration = Duration::from_secs(300);
const ROUNDS: u32 = 4;
const BUDGET: f64 = 8.0;

/// The bundled task with a record-level local-DP `[privacy]` table.
fn dp_task() -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(TASK).unwrap();
    spec.rounds = ROUNDS;
    spec.min_partners = 3;
    spec.round_deadline_secs = 120;
    format!(
        "{}\n[privacy]\nunit = \"record\"\nepsilon = {BUDGET}\ndelta = 1e-5\nclip_norm = 1.0\n\
         noise_multiplier = 1.0\nsampling_rate = 0.02\nsteps_per_round = 50\n",
        spec.to_toml_string().unwrap()
    )
}

/// One HTTP/1.1 request: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    tcp.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// A parsed scrape of `addr`'s `/metrics`, or `None` when nothing answers there.
fn scrape(addr: SocketAddr) -> Option<Scrape> {
    let (status, body) = http_get(addr, "/metrics").ok()?;
    if status != 200 || body.is_empty() {
        return None;
    }
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Some(Scrape::parse(lines).expect("the Prometheus text format parses"))
}

/// The value of the sample `name` whose labels include `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn get(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(s, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"))
}

/// The sum of every sample of `name`, whatever its labels.
fn total(s: &Scrape, name: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter_map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .sum()
}

/// The metrics address `who` logged in `log` ("coordinator metrics listening on http://…").
fn logged_metrics_addr(fed: &Federation, log: &std::path::Path, who: &str) -> SocketAddr {
    let needle = format!("{who} metrics listening on http://");
    wait_until(Duration::from_secs(30), || {
        let text = fed.read(log);
        let rest = text.split(&needle).nth(1)?;
        rest.split('/').next()?.parse().ok()
    })
    .unwrap_or_else(|| panic!("{who} never logged its metrics address\n{}", fed.logs()))
}

/// Starts the coordinator (run 1) with `extra` arguments; waits until it listens.
fn start_coordinator(fed: &mut Federation, extra: &[&str]) -> String {
    fed.start_coordinator_with(extra)
}

#[test]
fn both_endpoints_count_a_real_federation_as_it_runs() {
    let mut fed = Federation::new(&dp_task());
    let any = ["--metrics-listen", "127.0.0.1:0"];
    let fed_addr = start_coordinator(&mut fed, &any);
    let coordinator = logged_metrics_addr(&fed, &fed.coordinator_log(1), "coordinator");
    assert!(coordinator.ip().is_loopback(), "{coordinator}");
    // Only GET /metrics is served.
    for path in ["/", "/metric", "/metrics/x", "/api/v1/federation"] {
        let (status, _) = http_get(coordinator, path).unwrap();
        assert_eq!(status, 404, "{path}");
    }
    let first = scrape(coordinator).expect("the coordinator's metrics");
    assert_eq!(get(&first, "consortia_rounds_completed_total", &[]), 0.0);
    assert_eq!(get(&first, "consortia_task_rounds", &[]), f64::from(ROUNDS));
    assert_eq!(get(&first, "consortia_phase", &[("phase", "idle")]), 1.0);

    // Handshakes refused: no certificate, and a certificate of another CA.
    let ca = fed.pki.ca_cert_path();
    common::assert_handshake_refused(&fed_addr, common::client_tls(&ca, None, b"h2"));
    let name = fed.partners[0].0.clone();
    let other = Pki::init(
        fed.path("other-pki"),
        &["localhost".to_string()],
        std::slice::from_ref(&name),
    )
    .unwrap();
    let (cert, key) = (
        other.partner_cert_path(&name),
        other.partner_key_path(&name),
    );
    common::assert_handshake_refused(
        &fed_addr,
        common::client_tls(&ca, Some((&cert, &key)), b"h2"),
    );

    for i in 0..fed.partners.len() {
        fed.start_agent_with(i, None, &any);
    }
    let agents: BTreeMap<String, SocketAddr> = fed
        .partners
        .clone()
        .into_iter()
        .map(|(name, _)| {
            let log = fed.path(&format!("logs/{name}.out"));
            let addr = logged_metrics_addr(&fed, &log, "agent");
            assert!(addr.ip().is_loopback(), "{addr}");
            (name, addr)
        })
        .collect();

    // Scrape every 100 ms until the coordinator's endpoint goes away with the
    // coordinator; keep each endpoint's scrapes, and the coordinator's first scrape
    // taken after it printed the final model (its endpoint stays up while it
    // says goodbye to the partners).
    let mut during: Vec<Scrape> = vec![first];
    let mut last_agent: BTreeMap<String, Vec<Scrape>> = BTreeMap::new();
    let mut after = None;
    let until = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < until {
        let finished = fed.read(&fed.coordinator_out(1)).contains("final model");
        for (name, addr) in &agents {
            if let Some(s) = scrape(*addr) {
                last_agent.entry(name.clone()).or_default().push(s);
            }
        }
        match scrape(coordinator) {
            Some(s) if finished => {
                after = Some(s);
                break;
            }
            Some(s) => during.push(s),
            None => break,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = after.unwrap_or_else(|| {
        panic!(
            "no scrape of the coordinator after its final model\n{}",
            fed.logs()
        )
    });
    let status = fed.wait_coordinator(LONG);
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    for (name, _) in fed.partners.clone() {
        assert!(fed.wait_agent(&name, Duration::from_secs(30)).success());
    }

    // Counters only grow, and they moved while the rounds ran.
    for name in [
        "consortia_rounds_started_total",
        "consortia_rounds_completed_total",
        "consortia_updates_received_total",
        "consortia_network_received_bytes_total",
        "consortia_network_sent_bytes_total",
    ] {
        let seen: Vec<f64> = during
            .iter()
            .chain([&after])
            .map(|s| get(s, name, &[]))
            .collect();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{name}: {seen:?}");
        assert!(
            seen[0] < seen[seen.len() - 1],
            "{name} never moved: {seen:?}"
        );
    }
    assert!(
        during
            .iter()
            .any(|s| get(s, "consortia_partners_connected", &[]) == 3.0),
        "never 3 partners connected"
    );
    assert!(
        during.len() > 2,
        "only {} scrapes during the rounds",
        during.len()
    );

    // The counts match what the coordinator logged and stored.
    let log = fed.read(&fed.coordinator_log(1));
    let started = log.matches("round started").count() as f64;
    let evaluation_rounds = log
        .lines()
        .filter(|l| l.contains("round started") && l.contains("train=false"))
        .count() as f64;
    let store = Store::open(&fed.path("state")).expect("state");
    let rounds = store.rounds().expect("rounds");
    assert_eq!(rounds.len(), ROUNDS as usize);
    let contributions: usize = rounds.iter().map(|r| r.participants.len()).sum();
    assert_eq!(get(&after, "consortia_rounds_started_total", &[]), started);
    assert_eq!(total(&after, "consortia_rounds_abandoned_total"), 0.0);
    assert_eq!(total(&after, "consortia_rounds_discarded_total"), 0.0);
    assert_eq!(
        get(&after, "consortia_rounds_completed_total", &[]),
        rounds.len() as f64 + evaluation_rounds,
        "completed rounds\n{log}"
    );
    assert_eq!(
        get(
            &after,
            "consortia_round_duration_seconds_count",
            &[("outcome", "completed")]
        ),
        get(&after, "consortia_rounds_completed_total", &[])
    );
    let updates = get(&after, "consortia_updates_received_total", &[]);
    assert_eq!(updates, contributions as f64);
    assert_eq!(
        get(&after, "consortia_partners_contributed_total", &[]),
        updates
    );
    assert!(get(&after, "consortia_partners_selected_total", &[]) >= updates);
    assert_eq!(get(&after, "consortia_round", &[]), started);
    assert!(get(&after, "consortia_network_received_bytes_total", &[]) > 0.0);
    assert_eq!(
        get(
            &after,
            "consortia_phase_duration_seconds_count",
            &[("phase", "collection")]
        ),
        started
    );
    assert!(
        get(
            &after,
            "consortia_phase_duration_seconds_count",
            &[("phase", "standardisation")]
        ) >= 1.0
    );
    assert_eq!(get(&after, "consortia_phase", &[("phase", "idle")]), 1.0);
    assert_eq!(
        get(
            &after,
            "consortia_handshakes_refused_total",
            &[("reason", "no_certificate")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "consortia_handshakes_refused_total",
            &[("reason", "other_ca")]
        ),
        1.0
    );

    // The latest evaluation is the stored one.
    let model_round = get(&after, "consortia_evaluation_model_round", &[]) as u64;
    let stored = store
        .metrics(model_round)
        .expect("metrics")
        .expect("the evaluation the gauges show is stored");
    let stored = *stored.metrics.as_binary().expect("a classifier's metrics");
    assert_eq!(
        get(&after, "consortia_evaluation_roc_auc", &[]),
        stored.roc_auc
    );
    assert_eq!(
        get(&after, "consortia_evaluation_log_loss", &[]),
        stored.log_loss
    );
    assert!(value(&after, "consortia_evaluation_rmse", &[]).is_none());

    // ε per partner equals the coordinator's ledger.
    let entries = consortia_ledger::load_entries(fed.path("state/privacy-ledger.json")).unwrap();
    for (name, _) in &fed.partners {
        let ledger = entries
            .iter()
            .rev()
            .find_map(|e| e.record.epsilon_cumulative.get(name).copied())
            .expect("the partner was charged");
        let label = [("partner", name.as_str())];
        let gauge = get(&after, "consortia_partner_epsilon_spent", &label);
        assert!((gauge - ledger).abs() < 1e-9, "{name}: {gauge} vs {ledger}");
        assert_eq!(
            get(&after, "consortia_partner_epsilon_budget", &label),
            BUDGET
        );
    }

    // Each agent's counters moved as it trained, and its ε is its share of the ledger's.
    for (name, scrapes) in &last_agent {
        let trained: Vec<f64> = scrapes
            .iter()
            .map(|s| get(s, "consortia_agent_rounds_trained_total", &[]))
            .collect();
        assert!(
            trained.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {trained:?}"
        );
        let last = scrapes.last().unwrap();
        let n = get(last, "consortia_agent_rounds_trained_total", &[]);
        assert!(
            (1.0..=f64::from(ROUNDS)).contains(&n),
            "{name}: {trained:?}"
        );
        assert!(trained[0] < n, "{name}'s counters never moved: {trained:?}");
        assert!(get(last, "consortia_agent_rounds_total", &[]) >= n);
        // Timed when training ends, counted once the update is sent.
        let timed = get(last, "consortia_agent_training_duration_seconds_count", &[]);
        assert!(
            timed == n || timed == n + 1.0,
            "{name}: {timed} timed, {n} trained"
        );
        assert_eq!(get(last, "consortia_agent_epsilon_budget", &[]), BUDGET);
        let spent = get(last, "consortia_agent_epsilon_spent", &[]);
        let ledger = get(
            &after,
            "consortia_partner_epsilon_spent",
            &[("partner", name)],
        );
        assert!(
            spent > 0.0 && spent <= ledger + 1e-9,
            "{name}: {spent} vs {ledger}"
        );
    }
    assert_eq!(
        last_agent.len(),
        fed.partners.len(),
        "an agent was never scraped"
    );
}

#[test]
fn no_metrics_listener_unless_configured() {
    let mut fed = Federation::new(&common::task_with(1, 3, 60));
    start_coordinator(&mut fed, &[]);
    // Metrics would be served (and logged) before the federation's address is published.
    let log = fed.coordinator_log(1);
    let listening = wait_until(Duration::from_secs(30), || {
        let text = fed.read(&log);
        text.contains("coordinator listening").then_some(text)
    });
    let text = listening.unwrap_or_else(|| panic!("no listening line\n{}", fed.logs()));
    assert!(!text.contains("metrics listening"), "{text}");
}
