//! `consortia demo`: a whole federation on loopback.
//!
//! Creates a throwaway PKI, splits a bundled dataset into three partners by one of
//! its columns, writes the coordinator's and the agents' configuration files (the
//! same files a real deployment uses), and starts the coordinator and three agents
//! as separate processes over mutual TLS on 127.0.0.1. Two scenarios:
//!
//! * `churn` (the default): the IBM telco churn sample split by `contract`, logistic
//!   regression (`examples/telco_churn_task.toml`), or with `--model mlp` a multilayer
//!   perceptron (`examples/telco_churn_mlp.toml`);
//! * `clv`: customer lifetime value on the CDNOW cohort split by `cohort_month`, a
//!   Tweedie GLM (`examples/clv_glm.toml`);
//! * `recommend`: movie recommendation on MovieLens ml-latest-small, its 671 users
//!   split by `userId mod 3`, a matrix factorisation (`examples/recommend_mf.toml`);
//!   each partner gets the public movie catalogue beside its ratings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use consortia_pki::Pki;

/// The bundled churn data (IBM telco churn sample, MIT licence; see examples/data/LICENSE.md).
const CHURN_DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/telco_churn_ibm.csv"
);
/// The bundled customer-value data (the CDNOW cohort, MIT licence; see examples/data/LICENSE.md).
const CLV_DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/cdnow_clv_customers.csv"
);
/// The bundled MovieLens ratings (GroupLens ml-latest-small; see examples/data/LICENSE.md).
const RECOMMEND_DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/movielens_ratings.csv"
);
/// The bundled MovieLens movie list, the recommendation task's item catalogue.
const RECOMMEND_CATALOGUE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/movielens_movies.csv"
);
/// The recommendation scenario's task file.
const RECOMMEND_TASK: &str = include_str!("../examples/recommend_mf.toml");
/// The churn scenario's task file.
const CHURN_TASK: &str = include_str!("../examples/telco_churn_task.toml");
/// The churn scenario's task file with `--model mlp`.
const CHURN_MLP_TASK: &str = include_str!("../examples/telco_churn_mlp.toml");
/// The customer-value scenario's task file.
const CLV_TASK: &str = include_str!("../examples/clv_glm.toml");

/// A bundled federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Churn prediction: telco customers split by contract type.
    Churn,
    /// Customer lifetime value: CDNOW customers split by the month of their first purchase.
    Clv,
    /// Movie recommendation: MovieLens users split by userId mod 3, matrix factorisation.
    Recommend,
}

/// The model of the churn scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ChurnModel {
    /// Logistic regression (examples/telco_churn_task.toml).
    Logistic,
    /// A multilayer perceptron (examples/telco_churn_mlp.toml).
    Mlp,
}

impl Scenario {
    /// The bundled CSV, the column whose values become partners, and the task file.
    fn setup(
        self,
        model: Option<ChurnModel>,
    ) -> Result<(&'static str, &'static str, &'static str)> {
        Ok(match (self, model) {
            (Self::Churn, None | Some(ChurnModel::Logistic)) => {
                (CHURN_DATA, "contract", CHURN_TASK)
            }
            (Self::Churn, Some(ChurnModel::Mlp)) => (CHURN_DATA, "contract", CHURN_MLP_TASK),
            (Self::Clv, None) => (CLV_DATA, "cohort_month", CLV_TASK),
            (Self::Recommend, None) => (RECOMMEND_DATA, "userId", RECOMMEND_TASK),
            (Self::Clv, Some(_)) => bail!(
                "--model chooses the churn scenario's model; the clv scenario trains the GLM of \
                 examples/clv_glm.toml (pass --task FILE to run another task on its partners)"
            ),
            (Self::Recommend, Some(_)) => bail!(
                "--model chooses the churn scenario's model; the recommend scenario trains the \
                 matrix factorisation of examples/recommend_mf.toml"
            ),
        })
    }
}

/// Options of `consortia demo`.
#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Directory for the demo's PKI, data splits, state and logs (default: a fresh temporary directory).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Which federation to run: churn (telco customers split by contract), clv
    /// (customer lifetime value, CDNOW customers split by first-purchase month) or
    /// recommend (MovieLens users split by userId mod 3, matrix factorisation).
    #[arg(long, value_enum, default_value_t = Scenario::Churn)]
    scenario: Scenario,
    /// The churn scenario's model: logistic (examples/telco_churn_task.toml) or mlp
    /// (examples/telco_churn_mlp.toml).
    #[arg(long, value_enum, conflicts_with = "task")]
    model: Option<ChurnModel>,
    /// The CSV to split into partners (default: the scenario's bundled data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Task file to run instead of the scenario's bundled one.
    #[arg(long)]
    task: Option<PathBuf>,
    /// Number of rounds (overrides the task file).
    #[arg(long)]
    rounds: Option<u32>,
    /// Give up if the federation has not finished after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the demo.
pub(crate) fn run(args: DemoArgs) -> Result<()> {
    let (bundled_data, split_by, bundled_task) = args.scenario.setup(args.model)?;
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from(bundled_data));
    let _keep;
    let work = match &args.workdir {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            w.clone()
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("consortia-demo-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            _keep = t.keep();
            p
        }
    };
    let work = std::fs::canonicalize(&work)?;
    if work.join("pki").exists() || work.join("state").exists() {
        bail!(
            "{} already holds a demo; pass an empty --workdir or omit it",
            work.display()
        );
    }
    println!("Consortia demo in {}", work.display());

    // 1. Partners: the scenario's data split by one column (telco: contract type; CDNOW:
    // first-purchase month).
    let data_dir = work.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let parts = if args.scenario == Scenario::Recommend {
        // Users by userId mod 3, each partner with the public catalogue beside its ratings.
        std::fs::copy(RECOMMEND_CATALOGUE, data_dir.join("movielens_movies.csv"))
            .context("copying the movie catalogue")?;
        consortia_model::ratings::partition_by_user(&data, split_by, 3, &data_dir)
            .with_context(|| format!("splitting {}", data.display()))?
    } else {
        consortia_model::data::partition_csv_by_column(&data, split_by, &data_dir)
            .with_context(|| format!("splitting {}", data.display()))?
    };
    let mut partners = Vec::new();
    for (value, path, rows) in &parts {
        let name = consortia_model::data::partner_name(value);
        println!("  partner {name:<16} {rows:>5} rows  ({})", path.display());
        partners.push((name, path.clone()));
    }

    // 2. A throwaway PKI.
    let pki_dir = work.join("pki");
    let names: Vec<String> = partners.iter().map(|(n, _)| n.clone()).collect();
    let pki = Pki::init(
        &pki_dir,
        &["localhost".to_string(), "127.0.0.1".to_string()],
        &names,
    )?;

    // 3. Task and configuration files.
    let mut task = match &args.task {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => bundled_task.to_string(),
    };
    if let Some(r) = args.rounds {
        let mut spec = consortia_model::TaskSpec::from_toml_str(&task)?;
        spec.rounds = r;
        task = spec.to_toml_string()?;
    }
    let task_path = work.join("task.toml");
    std::fs::write(&task_path, &task)?;
    let addr_file = work.join("coordinator.addr");
    let coord_cfg = work.join("coordinator.toml");
    std::fs::write(
        &coord_cfg,
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\ntask = \"task.toml\"\naddr_file = \"coordinator.addr\"\n\n[tls]\nca_cert = \"pki/ca.pem\"\ncert = \"pki/coordinator.pem\"\nkey = \"pki/coordinator.key\"\ncrl = \"pki/crl.pem\"\n\n[observability]\nmetrics_listen = \"127.0.0.1:0\"\n",
    )?;
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let exe = std::env::current_exe().context("cannot find the consortia executable")?;

    // 4. Coordinator.
    let started = Instant::now();
    let mut procs = Procs(Vec::new());
    let coordinator = Command::new(&exe)
        .arg("coordinator")
        .arg("--config")
        .arg(&coord_cfg)
        .stdout(Stdio::piped())
        .stderr(log_file(&logs, "coordinator")?)
        .spawn()
        .context("cannot start the coordinator")?;
    // Its per-round table, printed here around the progress line.
    let mut coordinator = coordinator;
    let table = coordinator.stdout.take().map(|out| {
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                consortia_observability::progress::println(&line);
            }
        })
    });
    procs.0.push(("coordinator".into(), coordinator));
    let addr = wait_for_file(&addr_file, Duration::from_secs(30))
        .context("the coordinator did not start listening; see logs/coordinator.log")?;
    println!("  coordinator listening on {addr} (mutual TLS)\n");

    // 5. Agents. Each partner's policy admits exactly what this demo task
    // asks for; a real partner writes the policy its organisation agreed to
    // (the defaults require secure aggregation and differential privacy).
    let spec = consortia_model::TaskSpec::from_toml_str(&task)?;
    let policy = format!(
        "# What this partner accepts (see `consortia_client::policy`).\n[policy]\nrequire_secure_aggregation = {}\nrequire_dp = {}\nmin_noise_multiplier = 0.0\nmin_evaluation_noise = 1.0\nmax_sampling_rate = 1.0\nmax_epsilon = 1000.0\nmax_delta = 0.1\nmin_contributors = {}\nallow_insecure_rng = {}\nallowed_models = [{}]\n",
        spec.secure_aggregation,
        spec.privacy.is_some(),
        spec.min_partners.min(3),
        !consortia_dp::secure_rng(),
        toml::Value::try_from(spec.model.kind)?,
    );
    for (name, data) in &partners {
        let cfg = work.join(format!("agent-{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "coordinator = \"https://{addr}\"\nserver_name = \"127.0.0.1\"\ndata = \"{}\"\nstate_dir = \"agent-{name}-state\"\n\n{policy}\n[tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                data.display(),
                pki.ca_cert_path().display(),
                pki.partner_cert_path(name).display(),
                pki.partner_key_path(name).display()
            ),
        )?;
        let child = Command::new(&exe)
            .arg("agent")
            .arg("--config")
            .arg(&cfg)
            .stdout(log_file(&logs, &format!("agent-{name}"))?)
            .stderr(log_file(&logs, &format!("agent-{name}.err"))?)
            .spawn()
            .with_context(|| format!("cannot start agent {name}"))?;
        procs.0.push((format!("agent {name}"), child));
    }

    // 6. Wait for the coordinator to finish the task.
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    // Round, phase and time left, from the coordinator's /metrics.
    let mut watch = crate::progress::FederationWatch::new(
        logs.join("coordinator.log"),
        consortia_model::TaskSpec::from_toml_str(&task)?.round_deadline_secs,
    );
    let status = loop {
        watch.poll();
        if let Some(s) = procs.0[0].1.try_wait()? {
            break s;
        }
        for (name, c) in procs.0.iter_mut().skip(1) {
            if let Some(s) = c.try_wait()?
                && !s.success()
            {
                bail!("{name} failed ({s}); see {}", logs.display());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the federation did not finish within {} s; see {}",
                args.timeout_secs,
                logs.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        bail!(
            "the coordinator failed ({status}); see {}",
            logs.join("coordinator.log").display()
        );
    }
    consortia_observability::progress::clear();
    if let Some(table) = table {
        let _ = table.join();
    }
    let elapsed = started.elapsed();
    // Agents exit once told the task finished.
    let agent_deadline = Instant::now() + Duration::from_secs(15);
    for (name, c) in procs.0.iter_mut().skip(1) {
        loop {
            if let Some(s) = c.try_wait()? {
                if !s.success() {
                    eprintln!("{name} exited with {s}");
                }
                break;
            }
            if Instant::now() > agent_deadline {
                eprintln!("{name} did not exit; stopping it");
                let _ = c.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!(
        "\nfederation finished in {:.1} s. Work directory: {}\n  logs/  coordinator and agent logs\n  state/ the coordinator's database (try: consortia metrics --state {}/state)",
        elapsed.as_secs_f64(),
        work.display(),
        work.display()
    );
    Ok(())
}

fn log_file(dir: &Path, name: &str) -> Result<Stdio> {
    let f = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Ok(Stdio::from(f))
}

fn wait_for_file(path: &Path, timeout: Duration) -> Result<String> {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} did not appear within {:?}", path.display(), timeout)
}
