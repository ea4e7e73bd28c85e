//! `consortia`: the command line of the Consortia federated learning system.
//!
//! Operators run `consortia coordinator`, partners run `consortia agent`,
//! both get their certificates from `consortia pki`, and `consortia demo`
//! runs a whole federation on loopback with bundled data.

mod audit;
mod demo;
mod onnx_export;
mod progress;
mod score;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use consortia_client::AgentConfig;
use consortia_client::config::{AgentTls, OwnBudget};
use consortia_coordinator::CoordinatorConfig;
use consortia_coordinator::config::TlsFiles;
use consortia_observability::LogFormat;
use consortia_pki::Pki;

#[derive(Parser)]
#[command(
    name = "consortia",
    version,
    about = "Cross-silo federated learning over mutual TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole federation on this machine: PKI, coordinator and 3 partner agents on bundled data.
    Demo(demo::DemoArgs),
    /// Manage the federation's certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Run the coordinator (the operator's side).
    Coordinator(CoordinatorArgs),
    /// Run a partner agent next to the partner's data.
    Agent(AgentArgs),
    /// Show the per-round metrics stored by a coordinator (also while it runs: a copy of
    /// its database is read).
    Metrics {
        /// The coordinator's state directory.
        #[arg(long)]
        state: PathBuf,
    },
    /// Check a coordinator's state directory.
    #[command(subcommand)]
    State(StateCommand),
    /// Work with stored global models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Score a partner's own CSV with an exported global model (partner side).
    Score {
        /// A model file written by `consortia model export`.
        #[arg(long)]
        model: PathBuf,
        /// The CSV to score: the task's feature columns (the label column is not needed).
        #[arg(long)]
        data: PathBuf,
        /// Where to write `id,score` rows.
        #[arg(long)]
        out: PathBuf,
        /// A column of `data` that identifies each row (default: row numbers from 1).
        #[arg(long)]
        id_column: Option<String>,
        /// Refuse a model of any task but this one (this partner's task file).
        #[arg(long)]
        task: Option<PathBuf>,
        /// For a recommendation model: this partner's agent state directory, whose
        /// users' factors (kept by the agent, fitted against the model of its latest
        /// round) are used instead of fitting them from `--data`.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Verify, report and reconcile privacy ledgers.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Make a new federation key at the coordinator's next start (secure
    /// aggregation), e.g. to go on without a key holder that is gone for good.
    /// Run it while the coordinator is stopped.
    Rekey {
        /// The coordinator's state directory.
        #[arg(long)]
        state: PathBuf,
        /// A partner to leave out of the new key (repeatable).
        #[arg(long = "without")]
        without: Vec<String>,
    },
    /// Plan a task's privacy: the ε its rounds reach, or the noise a target ε needs.
    PrivacyPlan {
        /// Task file with a [privacy] table.
        #[arg(long)]
        task: PathBuf,
        /// Print the smallest noise multiplier that keeps the planned rounds within this ε.
        #[arg(long)]
        target_epsilon: Option<f64>,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a federation CA, the coordinator's certificate and one per partner.
    Init {
        /// Directory to create the PKI in (must not hold one already).
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// A partner to issue a certificate for (repeatable).
        #[arg(long = "partner")]
        partners: Vec<String>,
        /// Host names / IP addresses the coordinator is reached at (repeatable).
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
    },
    /// Issue a certificate for a new partner, or with --role a console certificate.
    Issue {
        /// Partner or console user name (becomes the certificate's common name).
        name: String,
        /// PKI directory.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Issue a certificate for the coordinator's web console instead, with this role:
        /// `operator` (every page) or `auditor` (budgets, ledger, verification, models).
        /// Written to DIR/console/NAME.pem and NAME.key (mode 0600).
        #[arg(long)]
        role: Option<consortia_pki::ConsoleRole>,
    },
    /// Revoke a partner's certificate; a running coordinator picks the change up by itself.
    Revoke {
        /// Partner name.
        name: String,
        /// PKI directory.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
    /// List issued certificates.
    List {
        /// PKI directory.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct CoordinatorArgs {
    /// Configuration file (TOML). The flags below are an alternative for quick set-ups.
    #[arg(long, conflicts_with_all = ["task", "state", "pki"])]
    config: Option<PathBuf>,
    /// Task file (TOML).
    #[arg(long)]
    task: Option<PathBuf>,
    /// State directory (sled database).
    #[arg(long)]
    state: Option<PathBuf>,
    /// PKI directory made by `consortia pki init` (uses ca.pem, coordinator.pem/.key, crl.pem).
    #[arg(long)]
    pki: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: std::net::SocketAddr,
    /// Write the bound address to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics at GET /metrics on this address, e.g. 127.0.0.1:9464
    /// (port 0: a free port, logged); overrides `[observability] metrics_listen`.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log format: `text` (for people) or `json` (one object per line); overrides
    /// `[observability] log_format`.
    #[arg(long, value_name = "text|json")]
    log_format: Option<LogFormat>,
    /// Serve the web console over HTTPS on this address, e.g. 127.0.0.1:7444 (port 0: a
    /// free port, logged); overrides `[console] listen`. Console certificates come from
    /// `consortia pki issue NAME --role operator|auditor`.
    #[arg(long)]
    console_listen: Option<std::net::SocketAddr>,
    /// Seconds the connected key holders may stay too few (fewer than t + 1 of a
    /// t-of-N key, fewer than all of an N-of-N key) before the coordinator re-keys by
    /// itself (0: never); overrides `[keys] rekey_after_s` (default 600).
    #[arg(long, value_name = "SECONDS")]
    rekey_after_s: Option<u64>,
}

#[derive(Args)]
struct AgentArgs {
    /// Configuration file (TOML). The flags below are an alternative for quick set-ups.
    #[arg(long, conflicts_with_all = ["coordinator", "data", "pki", "name", "state"])]
    config: Option<PathBuf>,
    /// Coordinator URL, e.g. https://127.0.0.1:7443.
    #[arg(long)]
    coordinator: Option<String>,
    /// The partner's CSV file.
    #[arg(long)]
    data: Option<PathBuf>,
    /// PKI directory holding ca.pem and partners/NAME.pem/.key.
    #[arg(long)]
    pki: Option<PathBuf>,
    /// Partner name (selects the certificate in --pki).
    #[arg(long)]
    name: Option<String>,
    /// The agent's state directory (its own privacy ledger and key share); default `consortia-agent-NAME`.
    #[arg(long)]
    state: Option<PathBuf>,
    /// The partner's own ε budget for the task (with --budget-delta); default: the task's.
    #[arg(long, requires = "budget_delta")]
    budget_epsilon: Option<f64>,
    /// The partner's own δ budget for the task.
    #[arg(long, requires = "budget_epsilon")]
    budget_delta: Option<f64>,
    /// Policy file (TOML with a [policy] table): what this partner accepts.
    /// Without it the safe defaults apply (secure aggregation and DP required).
    #[arg(long, conflicts_with = "config")]
    policy: Option<PathBuf>,
    /// Give up after this many failed connection attempts in a row (default: never).
    #[arg(long, conflicts_with = "config")]
    max_connect_attempts: Option<u32>,
    /// Serve Prometheus metrics at GET /metrics on this address, e.g. 127.0.0.1:9465
    /// (port 0: a free port, logged); overrides `[observability] metrics_listen`.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log format: `text` (for people) or `json` (one object per line); overrides
    /// `[observability] log_format`.
    #[arg(long, value_name = "text|json")]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum StateCommand {
    /// Check offline, without changing anything, that a stopped coordinator's state
    /// directory is whole: the database, commit.json, every model file, the privacy
    /// ledger and the federation key agree (the check every coordinator start makes).
    /// Exits non-zero, naming the file and the round, when they do not.
    Verify {
        /// The coordinator's state directory.
        #[arg(long)]
        state: PathBuf,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Export the global model of a round as JSON: its task, parameters (flat and by
    /// name) and the federation's standardisation; `consortia score` reads it. For
    /// logistic regression, the MLP and the GLM, also an ONNX file beside it (the same
    /// path ending in .onnx) that takes the encoded features and standardises them.
    Export {
        /// The coordinator's state directory.
        #[arg(long)]
        state: PathBuf,
        /// Round (default: the last completed one).
        #[arg(long)]
        round: Option<u64>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// A command whose standard output is closed before it finishes writing
/// (`consortia audit report … | head`) stops quietly, as Unix tools do, instead of
/// panicking with "failed printing to stdout: Broken pipe": Rust ignores SIGPIPE,
/// so the write fails and `println!` panics; the hook ends the process with status 0
/// in that one case and leaves every other panic to the default hook.
fn exit_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Logs through `tracing` (filter from `RUST_LOG`, `info` by default), as text or
/// JSON ([`consortia_observability::logging`]): `--log-format`, else the
/// configuration file's `[observability] log_format`, else text. The coordinator and
/// the other commands log to standard error; a partner agent logs its progress (INFO
/// and below) to standard output and its warnings and errors to standard error, so
/// that an operator can follow one and alert on the other.
fn init_logging(command: &Command) -> LogFormat {
    use consortia_observability::logging::{Streams, init};
    // A configuration file that does not load is reported by the command itself.
    let format = match command {
        Command::Coordinator(a) => a.log_format.or_else(|| {
            let path = a.config.as_ref()?;
            let cfg = CoordinatorConfig::load(path).ok()?;
            Some(cfg.observability.log_format)
        }),
        Command::Agent(a) => a.log_format.or_else(|| {
            let path = a.config.as_ref()?;
            Some(AgentConfig::load(path).ok()?.observability.log_format)
        }),
        _ => None,
    };
    let streams = match command {
        Command::Agent(_) => Streams::Split,
        _ => Streams::Stderr,
    };
    let format = format.unwrap_or_default();
    init(format, streams);
    format
}

fn main() -> Result<()> {
    exit_quietly_when_stdout_closes();
    let cli = Cli::parse();
    let format = init_logging(&cli.command);
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Pki(cmd) => pki(cmd),
        Command::Coordinator(args) => coordinator(args),
        Command::Agent(args) => agent(args),
        Command::Metrics { state } => metrics(&state),
        Command::State(StateCommand::Verify { state }) => state_verify(&state),
        Command::Model(ModelCommand::Export { state, round, out }) => {
            score::export(&state, round, &out)
        }
        Command::Score {
            model,
            data,
            out,
            id_column,
            task,
            state,
        } => score::score(
            &model,
            &data,
            &out,
            id_column.as_deref(),
            task.as_deref(),
            state.as_deref(),
        ),
        Command::Audit(cmd) => audit::run(cmd),
        Command::PrivacyPlan {
            task,
            target_epsilon,
        } => privacy_plan(&task, target_epsilon),
        Command::Rekey { state, without } => rekey(&state, &without),
    };
    // A JSON log ends with its error as one more event, not a line of text.
    if let (Err(e), LogFormat::Json) = (&result, format) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
    result
}

fn rekey(state: &std::path::Path, without: &[String]) -> Result<()> {
    if !state.join("db").exists() {
        bail!(
            "{} is not a coordinator state directory (no db/ inside)",
            state.display()
        );
    }
    // Opening the database fails while a coordinator holds it.
    let store = consortia_coordinator::store::Store::open(state)
        .context("stop the coordinator before re-keying")?;
    // The removal is announced in the commit record, then made, then recorded.
    let old = store.remove_federation_key(without)?;
    drop(store);
    match old {
        Some(holders) => println!(
            "removed the federation key of {} key holders ({})",
            holders.len(),
            holders.join(", ")
        ),
        None => println!("no federation key was stored"),
    }
    if !without.is_empty() {
        println!("left out of the next key: {}", without.join(", "));
    }
    println!(
        "the coordinator makes a new key with the partners connected at its next start; \
         rounds already completed are kept, the round in progress starts again"
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

fn pki(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::Init {
            dir,
            partners,
            hosts,
        } => {
            progress::pki_init(&dir, &hosts, &partners)?;
            println!("created a federation PKI in {}", dir.display());
            println!(
                "  coordinator: {0}/coordinator.pem + {0}/coordinator.key (keep on the coordinator host)",
                dir.display()
            );
            for p in &partners {
                println!(
                    "  partner {p}: {0}/partners/{p}.pem + {0}/partners/{p}.key, with {0}/ca.pem (send to {p} only)",
                    dir.display()
                );
            }
            println!(
                "  {}/ca.key signs new certificates: keep it offline",
                dir.display()
            );
        }
        PkiCommand::Issue {
            name,
            dir,
            role: Some(role),
        } => {
            let mut pki = Pki::open(&dir)?;
            let issued = pki.issue_console(&name, role)?;
            println!(
                "issued a console certificate for `{name}` ({role}): {} and {} (give both to \
                 {name} only; see README, Console, for a browser)",
                issued.cert_path.display(),
                issued.key_path.display()
            );
        }
        PkiCommand::Issue {
            name,
            dir,
            role: None,
        } => {
            let mut pki = Pki::open(&dir)?;
            pki.issue(&name)?;
            println!(
                "issued a certificate for `{name}`: {} and {}",
                pki.partner_cert_path(&name).display(),
                pki.partner_key_path(&name).display()
            );
        }
        PkiCommand::Revoke { name, dir } => {
            let mut pki = Pki::open(&dir)?;
            pki.revoke(&name)?;
            println!(
                "revoked `{name}`; {} updated. A running coordinator reloads it on its own (or send it SIGHUP).",
                pki.crl_path().display()
            );
        }
        PkiCommand::List { dir } => {
            let pki = Pki::open(&dir)?;
            println!("{:<24} {:<12} {:<12} serial", "name", "role", "state");
            for c in pki.list() {
                let state = if c.is_revoked() { "revoked" } else { "active" };
                println!(
                    "{:<24} {:<12} {:<12} {}",
                    c.name,
                    format!("{:?}", c.role),
                    state,
                    c.serial
                );
            }
        }
    }
    Ok(())
}

fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(path) => CoordinatorConfig::load(path)?,
        None => {
            let (Some(state), Some(pki)) = (args.state.clone(), args.pki.clone()) else {
                bail!(
                    "give --config FILE, or --state DIR and --pki DIR (and --task FILE for a new task)"
                );
            };
            CoordinatorConfig {
                listen: args.listen,
                state_dir: state,
                task: args.task.clone(),
                tls: TlsFiles {
                    ca_cert: pki.join("ca.pem"),
                    cert: pki.join("coordinator.pem"),
                    key: pki.join("coordinator.key"),
                    crl: pki.join("crl.pem"),
                },
                addr_file: None,
                observability: Default::default(),
                console: Default::default(),
                keys: Default::default(),
            }
        }
    };
    if args.addr_file.is_some() {
        cfg.addr_file = args.addr_file;
    }
    if args.console_listen.is_some() {
        cfg.console.listen = args.console_listen;
    }
    if let Some(after) = args.rekey_after_s {
        cfg.keys.rekey_after_s = after;
    }
    if args.metrics_listen.is_some() {
        cfg.observability.metrics_listen = args.metrics_listen;
    }
    if let Some(format) = args.log_format {
        cfg.observability.log_format = format;
    }
    let rt = runtime()?;
    let summary = rt.block_on(consortia_coordinator::run(cfg, ctrl_c()))?;
    match summary {
        Some(s) => println!("task complete after {} rounds", s.rounds),
        None => {
            println!("coordinator stopped; restart it with the same state directory to continue")
        }
    }
    Ok(())
}

fn agent(args: AgentArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => {
            let (Some(coordinator), Some(data), Some(pki), Some(name)) =
                (args.coordinator, args.data, args.pki, args.name)
            else {
                bail!(
                    "give --config FILE, or --coordinator URL --data CSV --pki DIR --name PARTNER"
                );
            };
            AgentConfig {
                coordinator,
                server_name: None,
                data,
                tls: AgentTls {
                    ca_cert: pki.join("ca.pem"),
                    cert: pki.join("partners").join(format!("{name}.pem")),
                    key: pki.join("partners").join(format!("{name}.key")),
                },
                max_connect_attempts: args.max_connect_attempts,
                dataset_name: None,
                policy: match &args.policy {
                    Some(path) => consortia_client::policy::Policy::load(path)?,
                    None => consortia_client::policy::Policy::default(),
                },
                state_dir: args
                    .state
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("consortia-agent-{name}"))),
                privacy: match (args.budget_epsilon, args.budget_delta) {
                    (Some(epsilon), Some(delta)) => Some(OwnBudget { epsilon, delta }),
                    _ => None,
                },
                observability: Default::default(),
            }
        }
    };
    if args.metrics_listen.is_some() {
        cfg.observability.metrics_listen = args.metrics_listen;
    }
    if let Some(format) = args.log_format {
        cfg.observability.log_format = format;
    }
    let json = cfg.observability.log_format == LogFormat::Json;
    let rt = runtime()?;
    let summary = rt.block_on(consortia_client::run(cfg, ctrl_c()))?;
    consortia_observability::progress::clear();
    // Standard output carries the agent's log: in JSON, the summary is one more event.
    if json {
        tracing::info!(
            rounds_trained = summary.rounds_trained,
            "agent done: trained in {} rounds",
            summary.rounds_trained
        );
    } else {
        println!("agent done: trained in {} rounds", summary.rounds_trained);
    }
    Ok(())
}

fn state_verify(state: &std::path::Path) -> Result<()> {
    match consortia_coordinator::commit::verify_dir(state) {
        Ok(verified) => {
            print!("{verified}");
            match &verified.record {
                Some(r) => println!("OK: a coordinator resumes after round {}", r.round),
                None => println!("OK: a coordinator starts a new task here"),
            }
            Ok(())
        }
        Err(e) => {
            println!("state directory {}", state.display());
            println!("PROBLEM: {e}");
            Err(e.into())
        }
    }
}

/// Opens a coordinator's state for reading; while a coordinator runs on it, a copy of
/// its database (said on standard error).
pub(crate) fn open_state_read_only(
    state: &std::path::Path,
) -> Result<consortia_coordinator::store::Store> {
    let (store, copy) = consortia_coordinator::store::Store::open_read_only(state)?;
    if copy {
        eprintln!(
            "note: a coordinator is running on {}: reading a copy of its database taken now \
             (a round in progress is not in it yet)",
            state.display()
        );
    }
    Ok(store)
}

fn metrics(state: &std::path::Path) -> Result<()> {
    let store = open_state_read_only(state)?;
    let rounds = store.rounds()?;
    let private = match store.task_toml()? {
        Some(text) => {
            let task = consortia_model::TaskSpec::from_toml_str(&text)?;
            consortia_coordinator::orchestrator::print_task_table_header(&task);
            task.privacy_spec()?.is_some()
        }
        None => {
            consortia_coordinator::orchestrator::print_table_header(true);
            false
        }
    };
    let mut shown = 0;
    for m in store.all_metrics()? {
        if m.model_round == 0 {
            continue;
        }
        let rec = rounds.iter().find(|r| r.round == m.model_round);
        consortia_coordinator::orchestrator::print_table_row(rec, m.model_round, &m.metrics);
        shown += 1;
    }
    if private {
        println!(
            "(a [privacy] task: only the scheduled models are evaluated — the final one, and every \
             `evaluate_every`-th — and every figure is estimated from {}-bin score histograms with \
             discrete Gaussian noise)",
            consortia_dp::DP_SCORE_BINS
        );
    }
    if shown == 0 {
        println!("no evaluation of a trained model is stored yet");
    }
    Ok(())
}

fn privacy_plan(task_path: &std::path::Path, target: Option<f64>) -> Result<()> {
    use consortia_dp::accountant::smallest_noise_multiplier;
    use consortia_dp::{PrivacySpec, task_plan_epsilon};
    let task = consortia_model::TaskSpec::load(task_path)?;
    let spec: PrivacySpec = task
        .privacy_spec()?
        .with_context(|| format!("{} has no [privacy] table", task_path.display()))?;
    let rounds = u64::from(task.rounds);
    // The coordinator's own check at task creation (`check_task_plan`): the same events —
    // the feature statistics, the rounds and the planned evaluations — the same ε.
    let eps = |spec: &PrivacySpec| -> Result<f64, consortia_dp::DpError> {
        let events = spec.round_events(1)?;
        task_plan_epsilon(spec, &events, rounds)
    };
    let evaluations = spec.planned_evaluations(rounds);
    println!(
        "{} rounds at noise multiplier {} and {} evaluation(s) at evaluation_noise {} (ρ {} each): ε {:.4} at δ {} (budget ε {})",
        rounds,
        spec.noise_multiplier,
        evaluations,
        spec.evaluation_noise,
        1.0 / (2.0 * spec.evaluation_noise * spec.evaluation_noise),
        eps(&spec)?,
        spec.delta,
        spec.epsilon
    );
    if spec.statistics_events().is_empty() {
        println!(
            "  feature statistics: from the public [schema.bounds] only (no charge under unit = \"partner\")"
        );
    } else {
        println!(
            "  feature statistics: released once, Gaussian noise multiplier {} (ρ {})",
            spec.statistics_noise_multiplier,
            1.0 / (2.0 * spec.statistics_noise_multiplier * spec.statistics_noise_multiplier)
        );
    }
    if evaluations == 0 {
        println!(
            "  no evaluation is released: under unit = \"partner\" no noise independent of the data protects a whole partner's held-out rows"
        );
    } else if spec.evaluate_every == 0 {
        println!("  evaluations: the final model only (evaluate_every = 0)");
    } else {
        println!(
            "  evaluations: the final model and the model of every {}th round",
            spec.evaluate_every
        );
    }
    if let Some(target) = target {
        // Bisection, then rounded UP to the 4 printed decimals and re-checked: the printed
        // figure itself (as a task file would carry it) spends at most `target`.
        const DECIMALS: usize = 4;
        let (z, reached) = smallest_noise_multiplier(target, DECIMALS as u32, |z| {
            let mut s = spec.clone();
            s.noise_multiplier = z;
            eps(&s)
        })?;
        println!("smallest noise multiplier for ε ≤ {target}: {z:.DECIMALS$} (ε {reached:.6})");
    }
    Ok(())
}
