//! Load (not timed): 100 partners over mutual TLS on loopback, a 10,001-parameter model,
//! 50 rounds, two partners stopped and restarted on the way.
//!
//! The coordinator is the real binary (`consortia coordinator`), a child process; the
//! partners are the shipped agent, `consortia_client::run_with` with its real local
//! update, as tasks of one runtime in this process, each with its own configuration
//! file, certificate, state directory and 10-row CSV. The model is an MLP with one
//! hidden layer of 100 over the 98 one-hot categories of one column:
//! 100 × (98 + 2) + 1 = 10,001 parameters.
//!
//! On the way one partner's task is aborted (as a crash would end it: its connection
//! drops mid-session) and later started again, and another is stopped through its
//! shutdown signal and started again. `min_partners` is two below the partner count.
//! The test checks, from the coordinator's state after it exits, that every one of the
//! 50 rounds completed with at least `min_partners` updates, that each stopped partner
//! was missing from some round and contributed again after its restart, and that every
//! agent ended cleanly.
//!
//! It prints the coordinator's peak resident set (`VmHWM` of its `/proc` status, read
//! every 100 ms while it runs). `CONSORTIA_LOAD_PARTNERS=10` runs the same with 10
//! partners, to compare (BENCHMARKS.md):
//!
//! ```text
//! cargo test --test load -- --nocapture
//! CONSORTIA_LOAD_PARTNERS=10 cargo test --test load -- --nocapture
//! ```

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use consortia_client::{AgentConfig, AgentError, AgentSummary, RunOptions};
use consortia_coordinator::store::Store;
use consortia_pki::Pki;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const EXE: &str = env!("CARGO_BIN_EXE_consortia");
const DEFAULT_PARTNERS: usize = 100;
const ROUNDS: u64 = 50;
/// One-hot categories of the partners' one feature column.
const FEATURES: usize = 98;
/// Width of the MLP's hidden layer: 100 × (98 + 2) + 1 = 10,001 parameters.
const DEFAULT_HIDDEN: usize = 100;
/// Rows of each partner's CSV (a fifth of them held out).
const ROWS: usize = 10;
/// The whole run, coordinator start to exit.
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// A partner policy that admits the load task (policy checks are tested elsewhere).
const POLICY: &str = r#"[policy]
require_secure_aggregation = false
require_dp = false
min_contributors = 1
max_colluders_assumed = 0
allowed_models = ["mlp"]
"#;

/// Partners in this run: `CONSORTIA_LOAD_PARTNERS`, or 100.
fn partner_count() -> usize {
    match std::env::var("CONSORTIA_LOAD_PARTNERS") {
        Ok(v) => {
            let n: usize = v
                .trim()
                .parse()
                .expect("CONSORTIA_LOAD_PARTNERS is a number of partners");
            assert!(n >= 4, "CONSORTIA_LOAD_PARTNERS: at least 4 partners");
            n
        }
        Err(_) => DEFAULT_PARTNERS,
    }
}

/// Width of the hidden layer: `CONSORTIA_LOAD_HIDDEN` (to tell memory that grows with the
/// model from memory that does not), or 100.
fn hidden() -> usize {
    std::env::var("CONSORTIA_LOAD_HIDDEN").map_or(DEFAULT_HIDDEN, |v| {
        v.trim()
            .parse()
            .expect("CONSORTIA_LOAD_HIDDEN is a layer width")
    })
}

fn task_toml(min_partners: usize, hidden: usize) -> String {
    let categories: Vec<String> = (0..FEATURES).map(|k| format!("\"{k}\"")).collect();
    format!(
        r#"name = "load"
rounds = {ROUNDS}
min_partners = {min_partners}
round_deadline_secs = 120
local_epochs = 1
batch_size = 8
learning_rate = 0.05
seed = 20261129
holdout_fraction = 0.2
secure_aggregation = false

[model]
kind = "mlp"
hidden = [{hidden}]
l2 = 0.0

[schema.label]
column = "y"
positive = "1"
negative = "0"

[[schema.categorical]]
column = "c"
categories = [{}]
"#,
        categories.join(", ")
    )
}

/// Partner `index`'s rows: categories spread over the list, labels alternating.
fn partner_csv(index: usize) -> String {
    let mut csv = String::from("c,y\n");
    for j in 0..ROWS {
        let k = (index * ROWS + j).wrapping_mul(7919) % FEATURES;
        csv.push_str(&format!("{k},{}\n", j % 2));
    }
    csv
}

fn agent_config(dir: &Path, pki: &Pki, name: &str, addr: &str) -> AgentConfig {
    let data = dir.join(format!("data-{name}.csv"));
    let path = dir.join(format!("agent-{name}.toml"));
    let text = format!(
        "coordinator = \"https://{addr}\"\ndata = {:?}\nstate_dir = {:?}\nmax_connect_attempts = 10\n\n\
         [tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n\n{POLICY}",
        data,
        dir.join(format!("state-{name}")),
        pki.ca_cert_path(),
        pki.partner_cert_path(name),
        pki.partner_key_path(name),
    );
    std::fs::write(&path, text).expect("agent configuration");
    AgentConfig::load(&path).expect("agent configuration loads")
}

/// One in-process agent: its task and the sender of its shutdown signal.
struct Agent {
    name: String,
    config: AgentConfig,
    task: Option<JoinHandle<Result<AgentSummary, AgentError>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Agent {
    fn start(&mut self, rt: &tokio::runtime::Runtime) {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let cfg = self.config.clone();
        self.task = Some(rt.spawn(consortia_client::run_with(
            cfg,
            shutdown,
            RunOptions::default(),
        )));
        self.stop = Some(stop);
    }

    /// The agent's result, if its task has ended.
    fn finished(&mut self, rt: &tokio::runtime::Runtime) -> Option<Result<AgentSummary, String>> {
        if !self.task.as_ref()?.is_finished() {
            return None;
        }
        let task = self.task.take()?;
        Some(match rt.block_on(task) {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("task ended abnormally: {e}")),
        })
    }
}

/// Kills the coordinator on drop, so a failed assertion leaves nothing running.
struct Coordinator(Child);

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmHWM` (peak resident set) of process `pid`, in KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The last global model the coordinator's per-round table (its standard output) shows.
fn rounds_shown(stdout: &Path) -> u64 {
    std::fs::read_to_string(stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A planned stop and restart: partner `index` is stopped once the table shows model
/// `stop_after` and started again once it shows `restart_after`.
struct Outage {
    index: usize,
    abort: bool,
    stop_after: u64,
    restart_after: u64,
    stopped: bool,
    restarted: bool,
}

#[test]
fn partners_at_scale_complete_every_round_through_two_restarts() {
    let n = partner_count();
    let min = n - 2;
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let names: Vec<String> = (0..n).map(|i| format!("load-{i:03}")).collect();
    let pki = Pki::init(d.join("pki"), &["127.0.0.1".to_string()], &names).expect("pki");
    std::fs::write(d.join("task.toml"), task_toml(min, hidden())).expect("task file");
    for (i, name) in names.iter().enumerate() {
        std::fs::write(d.join(format!("data-{name}.csv")), partner_csv(i)).expect("data");
    }

    let (out, err) = (d.join("coordinator.out"), d.join("coordinator.err"));
    let addr_file = d.join("coordinator.addr");
    let child = Command::new(EXE)
        .args(["coordinator", "--task"])
        .arg(d.join("task.toml"))
        .arg("--state")
        .arg(d.join("state"))
        .arg("--pki")
        .arg(d.join("pki"))
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&out).expect("log")))
        .stderr(Stdio::from(std::fs::File::create(&err).expect("log")))
        .spawn()
        .expect("coordinator starts");
    let mut coordinator = Coordinator(child);
    let pid = coordinator.0.id();
    let started = Instant::now();
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && !a.trim().is_empty()
        {
            break a.trim().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60)
                && matches!(coordinator.0.try_wait(), Ok(None)),
            "the coordinator did not listen:\n{}",
            tail(&err, 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|name| Agent {
            name: name.clone(),
            config: agent_config(d, &pki, name, &addr),
            task: None,
            stop: None,
        })
        .collect();
    for a in &mut agents {
        a.start(&rt);
    }

    let mut outages = [
        Outage {
            index: 1,
            abort: true,
            stop_after: 10,
            restart_after: 15,
            stopped: false,
            restarted: false,
        },
        Outage {
            index: n / 2,
            abort: false,
            stop_after: 25,
            restart_after: 30,
            stopped: false,
            restarted: false,
        },
    ];
    let mut peak = 0u64;
    // The model the table showed when the peak last rose.
    let mut peak_at = 0u64;
    let status = loop {
        if let Some(kib) = peak_kib(pid)
            && kib > peak
        {
            peak = kib;
            peak_at = rounds_shown(&out);
        }
        if let Ok(Some(status)) = coordinator.0.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < RUN_LIMIT,
            "the task did not finish within {RUN_LIMIT:?} (model {} shown):\n{}",
            rounds_shown(&out),
            tail(&err, 40)
        );
        let shown = rounds_shown(&out);
        for o in &mut outages {
            let a = &mut agents[o.index];
            if !o.stopped && shown >= o.stop_after {
                if o.abort {
                    if let Some(task) = a.task.take() {
                        task.abort();
                        let _ = rt.block_on(task);
                    }
                } else {
                    if let Some(stop) = a.stop.take() {
                        let _ = stop.send(());
                    }
                    let task = a.task.take().expect("a running agent");
                    let ended = rt.block_on(async {
                        tokio::time::timeout(Duration::from_secs(30), task).await
                    });
                    assert!(
                        matches!(ended, Ok(Ok(Ok(_)))),
                        "agent {} did not stop on its shutdown signal",
                        a.name
                    );
                }
                o.stopped = true;
            } else if o.stopped && !o.restarted && shown >= o.restart_after {
                a.start(&rt);
                o.restarted = true;
            }
        }
        for a in &mut agents {
            if let Some(Err(e)) = a.finished(&rt) {
                panic!(
                    "agent {} failed: {e}\ncoordinator:\n{}",
                    a.name,
                    tail(&err, 40)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    assert!(
        status.success(),
        "the coordinator failed ({status}):\n{}",
        tail(&err, 40)
    );
    assert!(
        outages.iter().all(|o| o.restarted),
        "the task ended before both outages were played"
    );
    // Every agent ends cleanly once the task is complete.
    for a in &mut agents {
        let Some(task) = a.task.take() else {
            continue;
        };
        let ended =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), task).await });
        match ended {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => panic!("agent {} failed: {e}", a.name),
            other => panic!("agent {} did not finish: {other:?}", a.name),
        }
    }

    let store = Store::open(&d.join("state")).expect("the coordinator's state");
    let rounds = store.rounds().expect("rounds");
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        (1..=ROUNDS).collect::<Vec<_>>(),
        "every round completed, once"
    );
    for r in &rounds {
        assert!(
            r.participants.len() >= min,
            "round {} aggregated {} updates, fewer than min_partners = {min}",
            r.round,
            r.participants.len()
        );
    }
    for o in &outages {
        let name = &agents[o.index].name;
        let missed = rounds
            .iter()
            .any(|r| r.round > o.stop_after && !r.participants.contains(name));
        let back = rounds
            .iter()
            .any(|r| r.round > o.restart_after && r.participants.contains(name));
        assert!(missed, "{name} was stopped but took part in every round");
        assert!(back, "{name} never took part again after its restart");
    }
    let full = rounds.iter().filter(|r| r.participants.len() == n).count();
    let params = hidden() * (FEATURES + 2) + 1;
    println!(
        "load: {n} partners, {ROUNDS} rounds ({full} with every partner), {params}-parameter MLP: \
         coordinator peak RSS {:.1} MiB (reached by model {peak_at}); {:.1} s",
        peak as f64 / 1024.0,
        elapsed.as_secs_f64()
    );
}
