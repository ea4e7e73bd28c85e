//! Round latency over mutual TLS on loopback: the orchestration, transport and (with
//! secure aggregation) cryptography cost of the real coordinator and the real agents.
//!
//! Every party is a child process of this binary: the coordinator runs
//! `consortia_coordinator::run` (so its peak memory and CPU time can be read from /proc)
//! and each partner runs the shipped agent, `consortia_client::run_with`, with one
//! change: its local update is [`FixedDelta`], a stub that returns 1e-3 for every
//! parameter without touching a row, so no training time is counted. Everything else is
//! what ships: the agent's configuration file and policy, loading its CSV under the
//! task's schema, the standardisation phase, evaluation of every global model on its
//! held-out rows, its state files, and in `secure` mode the key ceremony, the encoding,
//! encryption and signing of its update and the partial decryption of every round's sum.
//! Every process runs on this one machine.
//!
//! The model is the task's, so the task sets its size ([`BenchModel`]): the features are
//! the one-hot categories of one categorical column; up to `MAX_FEATURES + 1` parameters
//! the model is a logistic regression over `params − 1` of them, above that an MLP with
//! one hidden layer (`params` ≈ `hidden × (features + 2) + 1`, exact when some width up to
//! `MAX_HIDDEN_WIDTH` divides `params − 1`, as for 1,000,000: 999 × 1,001 + 1). The
//! header line gives the model. Each partner holds 10 rows.
//!
//! ```text
//! cargo bench --bench round_latency -- [--params 1000000] [--rounds 10] [--partners 3,10] [--modes plain,secure]
//! cargo bench --bench round_latency -- --metrics-cost 4 [--params 1000000] [--rounds 30] [--partners 3] [--modes plain]
//! ```
//!
//! `--metrics-cost K` measures what Prometheus metrics cost: for each partner count and
//! mode it runs `K` pairs of federations, alternately without metrics and with
//! `[observability] metrics_listen` set on the coordinator and every agent and a scraper
//! thread reading every endpoint's `GET /metrics` once a second, plus the web console
//! (`[console] listen`) with an operator's page open: its Privacy page's main part
//! fetched every 2 s over HTTPS with a console certificate, as the page's script does.
//! It reports each pair's ratio of mean round latency (with / without) and their
//! median, all within one run.
//!
//! The latency table also gives, over the same rounds (2..R, after the key ceremony and
//! round 1's connection set-up), what the coordinator sends and what every party's CPU
//! does. The bench scrapes the coordinator's own `/metrics` (`[observability]
//! metrics_listen`, a plain-HTTP listener of its own) every 20 ms and takes two
//! snapshots: the first time it sees `consortia_rounds_completed_total` ≥ 1 and the first
//! time it sees it ≥ R. Between them it reports, per round:
//!
//! * `consortia_network_sent_bytes_total`: bytes the coordinator wrote to partner
//!   connections (TLS records included), with, in secure mode, the bound
//!   (holders + 1) × 16 B × parameters (every partner is a key holder here);
//! * the coordinator's CPU (user + system of all its threads, `/proc/<pid>/stat`);
//! * the partners' CPU: the sum over every agent process of the same, read while they
//!   are alive (they are this process's children and outlive the last round);
//! * the coordinator's phases' wall time (`consortia_phase_duration_seconds` sums:
//!   collection, decryption) and the rest of the round (`consortia_round_duration_seconds`
//!   less both phases): closing the round, preparing the decryption, committing the model —
//!   steps that wait for no partner.
//!
//! Each snapshot lands up to 20 ms after its round's end; both windows shift alike.
//!
//! `ROUND_LATENCY_LOG=FILE` writes the coordinator's log to `FILE` and each agent's
//! output to `FILE.<partner>`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consortia_client::training::{Contribution, ContributionKind, LocalUpdate, RoundInput};
use consortia_client::{AgentConfig, AgentError, RunOptions};
use consortia_coordinator::CoordinatorConfig;
use consortia_coordinator::config::TlsFiles;
use consortia_coordinator::store::Store;
use consortia_dp::DpEvent;
use consortia_model::TaskSpec;
use consortia_model::models::mlp;
use consortia_model::schema::MAX_FEATURES;
use consortia_model::task::{MAX_HIDDEN_WIDTH, MAX_MODEL_PARAMS};
use consortia_pki::Pki;

/// Rows in each partner's CSV file (a fifth of them held out).
const ROWS_PER_PARTNER: usize = 10;

/// The local update the bench's agents run: a fixed small delta, computed without
/// looking at the rows. It releases nothing about them, so it states no DP events
/// (and the agent would refuse it for a task with `[privacy]`).
struct FixedDelta;

impl LocalUpdate for FixedDelta {
    fn name(&self) -> &'static str {
        "bench-fixed-delta"
    }

    fn events(&self, _rows: usize) -> Result<Vec<(DpEvent, u64)>, AgentError> {
        Ok(Vec::new())
    }

    fn compute(&self, input: RoundInput<'_>) -> Result<Contribution, AgentError> {
        Ok(Contribution {
            vector: vec![1e-3; input.global.param_count()],
            kind: ContributionKind::Delta,
            loss: Some(0.5),
        })
    }
}

struct Options {
    params: usize,
    rounds: u32,
    partners: Vec<usize>,
    modes: Vec<String>,
    /// Pairs of runs without and with metrics (`--metrics-cost K`); 0: the latency table.
    metrics_pairs: usize,
}

fn options(args: &[String]) -> Options {
    let mut o = Options {
        params: 1_000_000,
        rounds: 10,
        partners: vec![3, 10],
        modes: vec!["plain".into(), "secure".into()],
        metrics_pairs: 0,
    };
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--params" => o.params = v.parse().expect("--params N"),
            "--rounds" => o.rounds = v.parse().expect("--rounds N"),
            "--modes" => o.modes = v.split(',').map(str::to_string).collect(),
            "--metrics-cost" => o.metrics_pairs = v.parse().expect("--metrics-cost K"),
            "--partners" => {
                o.partners = v
                    .split(',')
                    .map(|x| x.parse().expect("--partners 3,10"))
                    .collect()
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--coordinator-child") => return coordinator_child(Path::new(&args[2])),
        Some("--agent-child") => return agent_child(Path::new(&args[2])),
        _ => {}
    }
    let o = options(&args[1..]);
    let Some(model) = BenchModel::for_params(o.params) else {
        eprintln!(
            "--params {}: a task's model has at most {MAX_MODEL_PARAMS} parameters \
             (consortia_model::task::MAX_MODEL_PARAMS): give 2 to {MAX_MODEL_PARAMS}",
            o.params
        );
        std::process::exit(2);
    };
    println!(
        "round latency, {} parameters ({}), {} rounds per run, mutual TLS on 127.0.0.1, real \
         agents (consortia_client::run_with) with a stub local update",
        model.params,
        model.describe(),
        o.rounds
    );
    if o.metrics_pairs > 0 {
        return metrics_cost(&o, &model);
    }
    println!(
        "per round over rounds 2..R; bound = (holders + 1) x 16 B x parameters, every \
         partner a key holder; rest = round less its collection and decryption phases; CPU/R = the coordinator's CPU over the whole run (key ceremony included) / R"
    );
    println!(
        "{:>8}  {:>6}  {:>7}  {:>7}  {:>7}  {:>6}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  \
         {:>8}  {:>8}  {:>8}  {:>8}",
        "partners",
        "mode",
        "mean s",
        "min s",
        "max s",
        "ratio",
        "peak MiB",
        "coordCPU",
        "CPU/R",
        "sent MB",
        "bound MB",
        "partCPU",
        "per part",
        "collect",
        "decrypt",
        "rest"
    );
    for &n in &o.partners {
        let mut plain_mean = None;
        for mode in &o.modes {
            let secure = mode == "secure";
            let r = run(n, &model, o.rounds, secure, false, true);
            if !secure {
                plain_mean = Some(r.mean);
            }
            let ratio = plain_mean
                .filter(|_| secure)
                .map_or("-".to_string(), |p| format!("{:.2}x", r.mean / p));
            let bound = if secure {
                format!("{:.1}", ((n + 1) * 16 * model.params) as f64 / 1e6)
            } else {
                "-".to_string()
            };
            let w = &r.window;
            println!(
                "{:>8}  {:>6}  {:>7.3}  {:>7.3}  {:>7.3}  {:>6}  {:>8.1}  {:>8.3}  {:>8.3}  \
                 {:>8.1}  {:>8}  {:>8.3}  {:>8.3}  {:>8.3}  {:>8.3}  {:>8.3}",
                n,
                mode,
                r.mean,
                r.min,
                r.max,
                ratio,
                r.peak_mib,
                w.coordinator_cpu,
                r.cpu_per_round,
                w.sent_bytes / 1e6,
                bound,
                w.partners_cpu,
                w.partners_cpu / n as f64,
                w.collection_s,
                w.decryption_s,
                w.round_s - w.collection_s - w.decryption_s,
            );
        }
    }
}

/// What the bench reads, at one moment, from the coordinator's `/metrics` and from
/// /proc for the coordinator and every agent.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    rounds_completed: f64,
    sent_bytes: f64,
    /// Sums of `consortia_phase_duration_seconds` (collection, decryption) and of
    /// `consortia_round_duration_seconds` (completed rounds).
    collection_s: f64,
    decryption_s: f64,
    round_s: f64,
    coordinator_cpu: f64,
    partners_cpu: f64,
}

/// Per-round differences between two snapshots (NaN when either is missing).
#[derive(Clone, Copy)]
struct Window {
    sent_bytes: f64,
    coordinator_cpu: f64,
    partners_cpu: f64,
    collection_s: f64,
    decryption_s: f64,
    round_s: f64,
}

impl Window {
    fn between(a: Option<Snapshot>, b: Option<Snapshot>) -> Window {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) if b.rounds_completed > a.rounds_completed => (a, b),
            _ => (Snapshot::default(), Snapshot::default()),
        };
        let rounds = b.rounds_completed - a.rounds_completed;
        // 0/0 = NaN where no window was seen.
        let per = |f: fn(&Snapshot) -> f64| (f(&b) - f(&a)) / rounds;
        Window {
            sent_bytes: per(|s| s.sent_bytes),
            coordinator_cpu: per(|s| s.coordinator_cpu),
            partners_cpu: per(|s| s.partners_cpu),
            collection_s: per(|s| s.collection_s),
            decryption_s: per(|s| s.decryption_s),
            round_s: per(|s| s.round_s),
        }
    }
}

/// The coordinator's `/metrics` at `addr`, or `None` if it does not answer.
fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.1 200").then_some(answer)
}

/// The value of the series named exactly `series` (name and labels) in `text`.
fn series(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A snapshot of the coordinator's metrics `text` and of the processes' CPU.
fn snapshot(text: &str, coordinator: u32, agents: &[(String, PathBuf, Child)]) -> Snapshot {
    Snapshot {
        rounds_completed: series(text, "consortia_rounds_completed_total"),
        sent_bytes: series(text, "consortia_network_sent_bytes_total"),
        collection_s: series(
            text,
            "consortia_phase_duration_seconds_sum{phase=\"collection\"}",
        ),
        decryption_s: series(
            text,
            "consortia_phase_duration_seconds_sum{phase=\"decryption\"}",
        ),
        round_s: series(
            text,
            "consortia_round_duration_seconds_sum{outcome=\"completed\"}",
        ),
        coordinator_cpu: cpu_seconds(&format!("/proc/{coordinator}/stat")),
        partners_cpu: agents
            .iter()
            .map(|(_, _, a)| cpu_seconds(&format!("/proc/{}/stat", a.id())))
            .sum(),
    }
}

/// `--metrics-cost`: pairs of runs without and with metrics (scraped every second),
/// alternating, and the ratio of their mean round latencies.
fn metrics_cost(o: &Options, model: &BenchModel) {
    println!(
        "cost of metrics and console: {} pairs of runs, alternately without and with \
         metrics_listen on the coordinator and every agent (each endpoint scraped every 1 s) \
         and the console open (/privacy?part=main every 2 s as an operator)",
        o.metrics_pairs
    );
    println!(
        "{:>8}  {:>7}  {:>4}  {:>14}  {:>14}  {:>8}  {:>8}  {:>13}",
        "partners",
        "mode",
        "pair",
        "off s/round",
        "on s/round",
        "on/off",
        "scrapes",
        "console polls"
    );
    for &n in &o.partners {
        for mode in &o.modes {
            let secure = mode == "secure";
            let mut ratios = Vec::new();
            for pair in 1..=o.metrics_pairs {
                // Alternate which goes first, so that a drift in the machine's load
                // does not always favour the same side.
                let (off, on) = if pair % 2 == 1 {
                    let off = run(n, model, o.rounds, secure, false, false);
                    (off, run(n, model, o.rounds, secure, true, false))
                } else {
                    let on = run(n, model, o.rounds, secure, true, false);
                    (run(n, model, o.rounds, secure, false, false), on)
                };
                let ratio = on.mean / off.mean;
                ratios.push(ratio);
                println!(
                    "{:>8}  {:>7}  {:>4}  {:>14.4}  {:>14.4}  {:>8.4}  {:>8}  {:>13}",
                    n, mode, pair, off.mean, on.mean, ratio, on.scrapes, on.console_polls
                );
            }
            ratios.sort_by(f64::total_cmp);
            let median = ratios[ratios.len() / 2];
            let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
            println!(
                "{:>8}  {:>7}  median on/off {:.4} ({:+.1} %), mean {:.4}, range {:.4} – {:.4}",
                n,
                mode,
                median,
                (median - 1.0) * 100.0,
                mean,
                ratios[0],
                ratios[ratios.len() - 1]
            );
        }
    }
}

/// A free loopback address for a metrics listener (bound, then released).
fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address")
}

/// Scrapes `GET /metrics` of every address once a second until `stop`; returns how many
/// scrapes answered 200.
fn scrape_every_second(
    addrs: Vec<std::net::SocketAddr>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut ok = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let next = Instant::now() + Duration::from_secs(1);
            for &addr in &addrs {
                let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                else {
                    continue;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let request =
                    format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let mut answer = String::new();
                if s.write_all(request.as_bytes()).is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.1 200")
                {
                    ok += 1;
                }
            }
            while Instant::now() < next && !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        ok
    })
}

/// Fetches the console's Privacy page (its main part, as the page's script does) every
/// 2 s as `cert`/`key` until `stop`; returns how many fetches answered 200.
fn poll_console(
    addr: std::net::SocketAddr,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&ca).expect("CA"))
            .expect("CA");
        let chain = CertificateDer::pem_file_iter(&cert)
            .expect("console certificate")
            .map(|c| c.expect("console certificate"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).expect("console key");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut ok = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let next = Instant::now() + Duration::from_secs(2);
            let fetch = || -> Option<bool> {
                let tcp =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
                tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                let name = ServerName::try_from("127.0.0.1").ok()?;
                let conn = rustls::ClientConnection::new(Arc::clone(&config), name).ok()?;
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let request = format!(
                    "GET /privacy?part=main HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                );
                tls.write_all(request.as_bytes()).ok()?;
                let mut answer = Vec::new();
                // A peer that closes without close_notify after answering is fine.
                let _ = tls.read_to_end(&mut answer);
                Some(answer.starts_with(b"HTTP/1.1 200"))
            };
            if fetch() == Some(true) {
                ok += 1;
            }
            while Instant::now() < next && !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        ok
    })
}

/// The bench task's model: `features` one-hot features and, for an MLP, the width of
/// its one hidden layer.
struct BenchModel {
    features: usize,
    hidden: Option<usize>,
    params: usize,
}

impl BenchModel {
    /// A logistic regression of exactly `params` parameters when a schema can hold
    /// `params − 1` features; otherwise the one-hidden-layer MLP closest to `params`
    /// (the widest among equals, so the fewest features). `None` above the largest model
    /// a task may have.
    fn for_params(params: usize) -> Option<Self> {
        if !(2..=MAX_MODEL_PARAMS).contains(&params) {
            return None;
        }
        if params <= MAX_FEATURES + 1 {
            let features = params - 1;
            return Some(BenchModel {
                features,
                hidden: None,
                params,
            });
        }
        // hidden × (features + 2) + 1 parameters: the feature counts just below and above.
        (1..=MAX_HIDDEN_WIDTH)
            .flat_map(|h| {
                let below = (params - 1) / h;
                [below, below + 1].map(|q| (h, q.saturating_sub(2)))
            })
            .filter_map(|(h, features)| {
                let count = mlp::param_count(features, &[h]);
                ((1..=MAX_FEATURES).contains(&features) && count <= MAX_MODEL_PARAMS).then_some(
                    BenchModel {
                        features,
                        hidden: Some(h),
                        params: count,
                    },
                )
            })
            .min_by_key(|m| {
                (
                    m.params.abs_diff(params),
                    usize::MAX - m.hidden.unwrap_or(0),
                )
            })
    }

    fn describe(&self) -> String {
        match self.hidden {
            None => format!("logistic regression over {} features", self.features),
            Some(h) => format!("mlp over {} features, hidden = [{h}]", self.features),
        }
    }
}

/// The bench task: `model.features` one-hot features from one categorical column `c`
/// (categories `0`, `1`, …), label `y`. Written compactly by hand: the canonical form
/// puts a space after every comma, and a task file may hold at most 1 MiB.
fn task_toml(model: &BenchModel, partners: usize, rounds: u32, secure: bool) -> String {
    let categories: Vec<String> = (0..model.features).map(|k| format!("\"{k}\"")).collect();
    let model_table = match model.hidden {
        None => "kind = \"logistic_regression\"".to_string(),
        Some(h) => format!("kind = \"mlp\"\nhidden = [{h}]"),
    };
    let text = format!(
        r#"name = "round-latency"
rounds = {rounds}
min_partners = {partners}
round_deadline_secs = 120
local_epochs = 1
batch_size = 64
learning_rate = 0.05
seed = 20261129
holdout_fraction = 0.2
secure_aggregation = {secure}

[model]
{model_table}
l2 = 0.0

[schema.label]
column = "y"
positive = "1"
negative = "0"

[[schema.categorical]]
column = "c"
categories = [{}]
"#,
        categories.join(",")
    );
    let task = TaskSpec::from_toml_str(&text).expect("the bench task is a valid task");
    assert_eq!(task.param_count(), model.params, "bench task size");
    text
}

/// A partner's rows: categories spread over the list, labels alternating.
fn partner_csv(index: usize, categories: usize) -> String {
    let mut csv = String::from("c,y\n");
    for j in 0..ROWS_PER_PARTNER {
        let k = (index * ROWS_PER_PARTNER + j).wrapping_mul(7919) % categories;
        csv.push_str(&format!("{k},{}\n", j % 2));
    }
    csv
}

/// A partner policy that admits the bench task in both modes (the real agent's
/// policy checks are tested elsewhere).
const POLICY: &str = r#"[policy]
require_secure_aggregation = false
require_dp = false
min_contributors = 1
max_colluders_assumed = 0
allowed_he_params = ["secure128", "fast64"]
allowed_models = ["logistic_regression", "mlp"]
"#;

fn agent_toml(
    dir: &Path,
    pki: &Pki,
    name: &str,
    addr: &str,
    metrics: Option<std::net::SocketAddr>,
) -> PathBuf {
    let path = dir.join(format!("agent-{name}.toml"));
    let observability = metrics.map_or(String::new(), |m| {
        format!("\n[observability]\nmetrics_listen = \"{m}\"\n")
    });
    let text = format!(
        "coordinator = \"https://{addr}\"\ndata = {:?}\nstate_dir = {:?}\nmax_connect_attempts = 5\n\n\
         [tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n\n{POLICY}{observability}",
        dir.join(format!("data-{name}.csv")),
        dir.join(format!("state-{name}")),
        pki.ca_cert_path(),
        pki.partner_cert_path(name),
        pki.partner_key_path(name),
    );
    std::fs::write(&path, text).expect("agent.toml");
    path
}

/// Where a child's output goes: `ROUND_LATENCY_LOG[.suffix]` when set, else a file in `dir`.
fn log_file(dir: &Path, suffix: &str) -> PathBuf {
    match std::env::var_os("ROUND_LATENCY_LOG") {
        Some(base) if suffix.is_empty() => PathBuf::from(base),
        Some(base) => PathBuf::from(format!("{}.{suffix}", base.to_string_lossy())),
        None => dir.join(format!(
            "log-{}",
            if suffix.is_empty() {
                "coordinator"
            } else {
                suffix
            }
        )),
    }
}

/// Stops every agent and panics with `why` and the end of the coordinator's log.
fn abort(why: &str, agents: &mut [(String, PathBuf, Child)], coordinator_log: &Path) -> ! {
    for (_, _, a) in agents.iter_mut() {
        let _ = a.kill();
        let _ = a.wait();
    }
    panic!("{why}\ncoordinator log:\n{}", tail(coordinator_log));
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs one federation; returns seconds per round (mean, min, max over rounds 2..R),
/// the coordinator's peak MiB and its CPU seconds per round. With `metrics`, the
/// coordinator and every agent serve `/metrics`, scraped once a second throughout.
/// With `probe` (and not `metrics`), the coordinator alone serves `/metrics`, scraped
/// every 20 ms for [`RunResult::window`].
fn run(
    partners: usize,
    model: &BenchModel,
    rounds: u32,
    secure: bool,
    metrics: bool,
    probe: bool,
) -> RunResult {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let names: Vec<String> = (0..partners).map(|i| format!("bench-{i}")).collect();
    let pki = Pki::init(d.join("pki"), &["127.0.0.1".to_string()], &names).expect("pki");
    std::fs::write(
        d.join("task.toml"),
        task_toml(model, partners, rounds, secure),
    )
    .expect("task file");
    for (i, name) in names.iter().enumerate() {
        std::fs::write(
            d.join(format!("data-{name}.csv")),
            partner_csv(i, model.features),
        )
        .expect("partner data");
    }
    let mut endpoints = Vec::new();
    let mut console = None;
    // The latency table's probe: the coordinator's metrics alone (the agents' stay off).
    let probe = (probe && !metrics).then(|| {
        let addr = free_addr();
        std::fs::write(d.join("metrics_listen"), addr.to_string()).expect("metrics address");
        addr
    });
    if metrics {
        let addr = free_addr();
        std::fs::write(d.join("metrics_listen"), addr.to_string()).expect("metrics address");
        endpoints.push(addr);
        let addr = free_addr();
        std::fs::write(d.join("console_listen"), addr.to_string()).expect("console address");
        let mut pki = Pki::open(d.join("pki")).expect("pki");
        let issued = pki
            .issue_console("bench-operator", consortia_pki::ConsoleRole::Operator)
            .expect("console certificate");
        console = Some((addr, issued.cert_path, issued.key_path));
    }
    let exe = std::env::current_exe().expect("exe");
    let coordinator_log = log_file(d, "");
    let mut coordinator = Command::new(&exe)
        .arg("--coordinator-child")
        .arg(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(&coordinator_log).expect("log file"),
        ))
        .spawn()
        .expect("coordinator child");
    let addr_file = d.join("addr");
    let until = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && !a.is_empty()
        {
            break a;
        }
        if Instant::now() > until || matches!(coordinator.try_wait(), Ok(Some(_))) {
            let _ = coordinator.kill();
            panic!("coordinator did not start:\n{}", tail(&coordinator_log));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut agents: Vec<(String, PathBuf, Child)> = names
        .iter()
        .map(|name| {
            let listen = metrics.then(free_addr);
            endpoints.extend(listen);
            let cfg = agent_toml(d, &pki, name, &addr, listen);
            let log = log_file(d, name);
            let out = std::fs::File::create(&log).expect("agent log");
            let err = out.try_clone().expect("agent log");
            let child = Command::new(&exe)
                .arg("--agent-child")
                .arg(cfg)
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .expect("agent child");
            (name.clone(), log, child)
        })
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = metrics.then(|| scrape_every_second(endpoints, Arc::clone(&stop)));
    let viewer = console.map(|(addr, cert, key)| {
        poll_console(addr, pki.ca_cert_path(), cert, key, Arc::clone(&stop))
    });
    let (mut first, mut last) = (None::<Snapshot>, None::<Snapshot>);
    // Until the coordinator finishes the task; an agent that fails stops the run.
    loop {
        if matches!(coordinator.try_wait(), Ok(Some(_))) {
            break;
        }
        // Snapshots when round 1 and round R are first seen completed.
        if let Some(text) = probe.filter(|_| last.is_none()).and_then(scrape) {
            let done = series(&text, "consortia_rounds_completed_total");
            if (first.is_none() && done >= 1.0) || done >= f64::from(rounds) {
                let s = snapshot(&text, coordinator.id(), &agents);
                if first.is_none() {
                    first = Some(s);
                } else if done >= f64::from(rounds) {
                    last = Some(s);
                }
            }
        }
        let failed = agents
            .iter_mut()
            .find_map(|(name, log, a)| match a.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    Some(format!("agent {name} failed ({status}):\n{}", tail(log)))
                }
                _ => None,
            });
        if let Some(why) = failed {
            let _ = coordinator.kill();
            let _ = coordinator.wait();
            abort(&why, &mut agents, &coordinator_log);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = coordinator.wait_with_output().expect("coordinator output");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let scrapes = scraper.map_or(0, |s| s.join().unwrap_or(0));
    let console_polls = viewer.map_or(0, |v| v.join().unwrap_or(0));
    if !out.status.success() {
        let why = format!("coordinator failed ({})", out.status);
        abort(&why, &mut agents, &coordinator_log);
    }
    for (name, log, a) in &mut agents {
        let until = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match a.try_wait() {
                Ok(Some(s)) => break Some(s),
                _ if Instant::now() > until => break None,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if !status.is_some_and(|s| s.success()) {
            let _ = a.kill();
            panic!("agent {name} did not finish cleanly:\n{}", tail(log));
        }
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let peak_kib = field("peak_kib=");
    let cpu = field("cpu_s=");
    let store = Store::open(&d.join("state")).expect("state");
    let times: Vec<u64> = store
        .rounds()
        .expect("rounds")
        .iter()
        .map(|r| r.completed_unix_ms)
        .collect();
    // Latency of round r = completion(r) - completion(r-1): skips round 1's connection set-up.
    let lat: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1000.0)
        .collect();
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    let min = lat.iter().copied().fold(f64::INFINITY, f64::min);
    let max = lat.iter().copied().fold(0.0, f64::max);
    RunResult {
        mean,
        min,
        max,
        peak_mib: peak_kib / 1024.0,
        cpu_per_round: cpu / f64::from(rounds),
        scrapes,
        console_polls,
        window: Window::between(first, last),
    }
}

/// What one federation run measured.
struct RunResult {
    mean: f64,
    min: f64,
    max: f64,
    peak_mib: f64,
    /// The coordinator process's CPU seconds over the run, per round.
    cpu_per_round: f64,
    /// `/metrics` scrapes answered (with metrics on).
    scrapes: u64,
    /// Console page fetches answered (with metrics on).
    console_polls: u64,
    /// Per round over rounds 2..R: bytes sent, CPU, phase times.
    window: Window,
}

/// User + system CPU seconds of the process whose `stat` file is `path` (fields 14,
/// 15: every thread's, live or ended); NaN if it cannot be read.
fn cpu_seconds(path: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / ticks)
        })
        .unwrap_or(f64::NAN)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The coordinator, as `consortia coordinator` runs it, on the bench's task and PKI.
fn coordinator_child(dir: &Path) {
    if std::env::var_os("ROUND_LATENCY_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let pki = dir.join("pki");
    let cfg = CoordinatorConfig {
        listen: "127.0.0.1:0".parse().expect("listen address"),
        state_dir: dir.join("state"),
        task: Some(dir.join("task.toml")),
        tls: TlsFiles {
            ca_cert: pki.join("ca.pem"),
            cert: pki.join("coordinator.pem"),
            key: pki.join("coordinator.key"),
            crl: pki.join("crl.pem"),
        },
        addr_file: Some(dir.join("addr")),
        observability: consortia_observability::ObservabilityConfig {
            metrics_listen: std::fs::read_to_string(dir.join("metrics_listen"))
                .ok()
                .and_then(|a| a.trim().parse().ok()),
            ..Default::default()
        },
        console: consortia_coordinator::config::ConsoleConfig {
            listen: std::fs::read_to_string(dir.join("console_listen"))
                .ok()
                .and_then(|a| a.trim().parse().ok()),
        },
        keys: Default::default(),
    };
    let summary = runtime()
        .block_on(consortia_coordinator::run(cfg, std::future::pending()))
        .expect("coordinator");
    assert!(summary.is_some(), "the task did not finish");
    println!("peak_kib={}", peak_rss_kib());
    println!("cpu_s={}", cpu_seconds("/proc/self/stat"));
}

/// A partner: the shipped agent with its configuration file, running [`FixedDelta`].
fn agent_child(config: &Path) {
    let cfg = AgentConfig::load(config).expect("agent configuration");
    let options = RunOptions {
        local_update: Some(Arc::new(FixedDelta)),
    };
    match runtime().block_on(consortia_client::run_with(
        cfg,
        std::future::pending(),
        options,
    )) {
        Ok(summary) => println!("agent done: trained in {} rounds", summary.rounds_trained),
        Err(e) => {
            eprintln!("agent failed: {e}");
            std::process::exit(1);
        }
    }
}
