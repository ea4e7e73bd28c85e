//! A federation of real processes on loopback for the integration tests.
//!
//! Every process is killed when the [`Federation`] is dropped; every wait is
//! bounded in time.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use consortia_pki::Pki;

pub(crate) mod rogue;

pub(crate) const EXE: &str = env!("CARGO_BIN_EXE_consortia");
pub(crate) const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/telco_churn_ibm.csv"
);
pub(crate) const TASK: &str = include_str!("../../examples/telco_churn_task.toml");
/// The customer-lifetime-value scenario: the CDNOW cohort, split by `cohort_month`.
pub(crate) const CLV_DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/cdnow_clv_customers.csv"
);
pub(crate) const CLV_TASK: &str = include_str!("../../examples/clv_glm.toml");

/// A partner policy that admits every task the tests run (plaintext and
/// encrypted, with and without differential privacy, in builds without
/// `secure-rng`). The malicious-coordinator tests use stricter ones.
pub(crate) const PERMISSIVE_POLICY: &str = "[policy]\nrequire_secure_aggregation = false\nrequire_dp = false\nmin_noise_multiplier = 0.0\nmin_evaluation_noise = 1.0\nmax_sampling_rate = 1.0\nmax_epsilon = 1000.0\nmax_delta = 0.1\nmin_contributors = 1\nmax_colluders_assumed = 0\nallowed_he_params = [\"secure128\", \"fast64\"]\nallow_insecure_rng = true\n";

/// A `[privacy]` table of record-level local DP (DP-SGD, q = 0.02, 10 steps
/// per round, ε 8) at the default evaluation and statistics noise.
pub(crate) const RECORD_DP: &str = r#"unit = "record"
placement = "local"
epsilon = 8.0
delta = 1e-5
clip_norm = 1.0
noise_multiplier = 1.0
sampling_rate = 0.02
steps_per_round = 10
"#;

/// The demo task with a few fields changed.
pub(crate) fn task_with(rounds: u32, min_partners: u32, deadline_secs: u64) -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(TASK).expect("bundled task parses");
    spec.rounds = rounds;
    spec.min_partners = min_partners;
    spec.round_deadline_secs = deadline_secs;
    spec.to_toml_string().expect("task serialises")
}

pub(crate) struct Federation {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub partners: Vec<(String, PathBuf)>,
    pub coordinator: Option<Child>,
    pub agents: Vec<(String, Child)>,
    pub addr: Option<String>,
    coordinator_runs: u32,
}

impl Drop for Federation {
    fn drop(&mut self) {
        if let Some(c) = self.coordinator.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, a) in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

impl Federation {
    /// PKI and partner data (the telco rows split by contract), nothing running.
    pub(crate) fn new(task_toml: &str) -> Self {
        Self::with_data(task_toml, Path::new(DATA), "contract")
    }

    /// PKI and partner data: the rows of `data` split into one partner per value of
    /// `column`; nothing running.
    pub(crate) fn with_data(task_toml: &str, data: &Path, column: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let parts = consortia_model::data::partition_csv_by_column(data, column, &data_dir)
            .expect("split data");
        let partners: Vec<(String, PathBuf)> = parts
            .into_iter()
            .map(|(v, p, _)| (consortia_model::data::partner_name(&v), p))
            .collect();
        let names: Vec<String> = partners.iter().map(|(n, _)| n.clone()).collect();
        let pki = Pki::init(
            dir.path().join("pki"),
            &["localhost".to_string(), "127.0.0.1".to_string()],
            &names,
        )
        .expect("pki init");
        std::fs::write(dir.path().join("task.toml"), task_toml).unwrap();
        std::fs::write(dir.path().join("policy.toml"), PERMISSIVE_POLICY).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        Federation {
            dir,
            pki,
            partners,
            coordinator: None,
            agents: Vec::new(),
            addr: None,
            coordinator_runs: 0,
        }
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub(crate) fn coordinator_log(&self, run: u32) -> PathBuf {
        self.path(&format!("logs/coordinator-{run}.err"))
    }

    pub(crate) fn coordinator_out(&self, run: u32) -> PathBuf {
        self.path(&format!("logs/coordinator-{run}.out"))
    }

    /// The coordinator command line for this federation's task, state and PKI.
    pub(crate) fn coordinator_command(&self, listen: &str) -> Command {
        let mut cmd = Command::new(EXE);
        cmd.args(["coordinator", "--task"])
            .arg(self.path("task.toml"))
            .arg("--state")
            .arg(self.path("state"))
            .arg("--pki")
            .arg(self.path("pki"))
            .args(["--listen", listen]);
        cmd
    }

    /// Starts (or restarts) the coordinator and waits until it listens.
    pub(crate) fn start_coordinator(&mut self) -> String {
        self.start_coordinator_with(&[])
    }

    /// [`start_coordinator`](Self::start_coordinator) with `extra` command-line arguments.
    pub(crate) fn start_coordinator_with(&mut self, extra: &[&str]) -> String {
        self.coordinator_runs += 1;
        let run = self.coordinator_runs;
        let addr_file = self.path("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        // Restarts reuse the first port so agents find the coordinator again.
        let listen = self
            .addr
            .clone()
            .unwrap_or_else(|| "127.0.0.1:0".to_string());
        let child = self
            .coordinator_command(&listen)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(
                std::fs::File::create(self.coordinator_out(run)).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(self.coordinator_log(run)).unwrap(),
            ))
            .spawn()
            .expect("start coordinator");
        self.coordinator = Some(child);
        let addr = wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&addr_file)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| {
            panic!(
                "coordinator did not listen: {}",
                self.read(&self.coordinator_log(run))
            )
        });
        self.addr = Some(addr.clone());
        addr
    }

    /// Starts the agent of partner `i` with its own data file (or `data`).
    pub(crate) fn start_agent(&mut self, i: usize, data: Option<&Path>) -> String {
        self.start_agent_with(i, data, &[])
    }

    /// The agent's state directory (its own privacy ledger).
    pub(crate) fn agent_state(&self, name: &str) -> PathBuf {
        self.path(&format!("agent-{name}"))
    }

    /// Starts the agent of partner `i` with extra command-line arguments.
    pub(crate) fn start_agent_with(
        &mut self,
        i: usize,
        data: Option<&Path>,
        extra: &[&str],
    ) -> String {
        self.start_agent_with_env(i, data, extra, &[])
    }

    /// [`start_agent_with`](Self::start_agent_with) with extra environment
    /// variables (the client's test hooks, honoured only in builds with its
    /// `test-hooks` feature, which the workspace's tests enable).
    pub(crate) fn start_agent_with_env(
        &mut self,
        i: usize,
        data: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> String {
        let (name, own) = self.partners[i].clone();
        let addr = self.addr.clone().expect("coordinator started");
        let child = Command::new(EXE)
            .args(["agent", "--coordinator", &format!("https://{addr}")])
            .arg("--data")
            .arg(data.unwrap_or(&own))
            .arg("--pki")
            .arg(self.path("pki"))
            .args(["--name", &name])
            .arg("--state")
            .arg(self.agent_state(&name))
            .args(if extra.contains(&"--policy") {
                Vec::new()
            } else {
                vec!["--policy".into(), self.path("policy.toml")]
            })
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::from(
                std::fs::File::create(self.path(&format!("logs/{name}.out"))).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(self.path(&format!("logs/{name}.err"))).unwrap(),
            ))
            .spawn()
            .expect("start agent");
        self.agents.push((name.clone(), child));
        name
    }

    pub(crate) fn start_all_agents(&mut self) {
        for i in 0..self.partners.len() {
            self.start_agent(i, None);
        }
    }

    pub(crate) fn read(&self, p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Everything the processes wrote, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.path("logs")) {
            let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let text = self.read(&f);
                let tail: String = text
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                out.push_str(&format!("===== {} =====\n{tail}\n", f.display()));
            }
        }
        out
    }

    /// Waits for the coordinator to exit.
    pub(crate) fn wait_coordinator(&mut self, timeout: Duration) -> ExitStatus {
        let c = self.coordinator.as_mut().expect("coordinator started");
        let status = wait_until(timeout, || c.try_wait().ok().flatten());
        match status {
            Some(s) => s,
            None => panic!(
                "coordinator did not finish within {timeout:?}\n{}",
                self.logs()
            ),
        }
    }

    /// Starts the coordinator and every agent, and waits until all of them
    /// have finished successfully (within `timeout` for the coordinator).
    pub(crate) fn run_to_completion(&mut self, timeout: Duration) {
        self.start_coordinator();
        self.start_all_agents();
        let status = self.wait_coordinator(timeout);
        assert!(status.success(), "coordinator failed\n{}", self.logs());
        for (name, _) in self.partners.clone() {
            let s = self.wait_agent(&name, Duration::from_secs(30));
            assert!(s.success(), "agent {name} failed\n{}", self.logs());
        }
    }

    /// Waits for an agent to exit.
    pub(crate) fn wait_agent(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        let c = &mut self
            .agents
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("agent")
            .1;
        let status = wait_until(timeout, || c.try_wait().ok().flatten());
        match status {
            Some(s) => s,
            None => panic!(
                "agent {name} did not finish within {timeout:?}\n{}",
                self.logs()
            ),
        }
    }

    /// Waits until the coordinator's log of run `run` contains `needle`.
    pub(crate) fn wait_log(&self, run: u32, needle: &str, timeout: Duration) {
        let log = self.coordinator_log(run);
        if wait_until(timeout, || self.read(&log).contains(needle).then_some(())).is_none() {
            panic!("coordinator log never showed `{needle}`\n{}", self.logs());
        }
    }

    pub(crate) fn kill_agent(&mut self, name: &str) {
        if let Some((_, c)) = self.agents.iter_mut().find(|(n, _)| n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub(crate) fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The private evaluations (`consortia_dp::EVALUATION_MECHANISM`) that the coordinator's
/// ledger and every partner's own record: exactly one each, that of `round` (the round that
/// asked for it). Returns each partner's entry, by partner, for checks of its charge. Read
/// the ledgers after the federation has finished.
pub(crate) fn assert_one_private_evaluation(
    fed: &Federation,
    round: u64,
) -> Vec<(String, consortia_ledger::LedgerEntry)> {
    let evaluations = |entries: Vec<consortia_ledger::LedgerEntry>| {
        entries
            .into_iter()
            .filter(|e| e.record.mechanism == consortia_dp::EVALUATION_MECHANISM)
            .collect::<Vec<_>>()
    };
    let rounds = |entries: &[consortia_ledger::LedgerEntry]| {
        entries.iter().map(|e| e.record.round).collect::<Vec<_>>()
    };
    let theirs = consortia_ledger::load_entries(fed.path("state/privacy-ledger.json"))
        .expect("the coordinator's ledger");
    let theirs = evaluations(theirs);
    assert_eq!(rounds(&theirs), [round], "the coordinator's ledger");
    let mut own_entries = Vec::new();
    for (name, _) in &fed.partners {
        let own = consortia_ledger::load_entries(fed.agent_state(name).join("ledger"))
            .unwrap_or_else(|e| panic!("{name}'s ledger: {e}"));
        let mut own = evaluations(own);
        assert_eq!(rounds(&own), [round], "{name}'s ledger");
        own_entries.push((name.clone(), own.remove(0)));
    }
    own_entries
}

/// The exact ROC-AUC of the coordinator's final model on the pooled held-out rows of every
/// partner (the split each agent makes, [`consortia_client::local::LocalData::load`]), at the
/// full [`consortia_model::SCORE_BINS`] resolution. A `[privacy]` task's stored metrics are
/// noised estimates; this is what the model itself achieves. Open the state after the
/// coordinator has exited.
pub(crate) fn exact_final_auc(fed: &Federation) -> f64 {
    let mut pooled = consortia_model::EvalPartial::empty();
    for partial in final_evaluations(fed) {
        pooled
            .merge(partial.as_binary().expect("a classifier's evaluation"))
            .expect("merge");
    }
    pooled.roc_auc().expect("both classes held out")
}

/// The regression analogue of [`exact_final_auc`]: the coordinator's final model evaluated
/// exactly on the pooled held-out rows of every partner (each agent's own split). Open the
/// state after the coordinator has exited.
pub(crate) fn exact_final_regression(fed: &Federation) -> consortia_model::RegressionPartial {
    let mut pooled = consortia_model::RegressionPartial::empty();
    for partial in final_evaluations(fed) {
        match partial {
            consortia_model::Evaluation::Regression(p) => pooled.merge(&p).expect("merge"),
            other => panic!(
                "expected a regression evaluation, got a {} one",
                other.kind()
            ),
        }
    }
    pooled
}

/// The task, final global model and standardisation the coordinator stored.
pub(crate) fn final_model(
    fed: &Federation,
) -> (
    consortia_model::TaskSpec,
    Box<dyn consortia_model::Model>,
    consortia_coordinator::store::StoredStandardizer,
) {
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).expect("state");
    let task = consortia_model::TaskSpec::from_toml_str(
        &store.task_toml().expect("task").expect("a stored task"),
    )
    .expect("task parses");
    let last = store.last_round().expect("last round");
    let params = store
        .model(last)
        .expect("model")
        .expect("final model stored");
    let model = consortia_model::model_with_params(&task, &params).expect("model");
    let st = store
        .standardizer()
        .expect("standardisation")
        .expect("standardisation stored");
    (task, model, st)
}

/// The final model's exact evaluation on each partner's held-out rows, in partner order.
fn final_evaluations(fed: &Federation) -> Vec<consortia_model::Evaluation> {
    let (task, model, st) = final_model(fed);
    fed.partners
        .iter()
        .map(|(name, data)| {
            let mut local =
                consortia_client::local::LocalData::load(data, &task, name).expect("partner data");
            local
                .evaluate(model.as_ref(), &st.mean, &st.std)
                .expect("evaluation")
        })
        .collect()
}

/// Runs one TLS handshake (and a read) against the coordinator; the server refuses it.
pub(crate) fn assert_handshake_refused(addr: &str, config: rustls::ClientConfig) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connect = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp));
        if let Ok(Ok(mut tls)) = connect.await {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
            assert!(
                !matches!(read, Ok(Ok(n)) if n > 0),
                "the handshake was accepted"
            );
        }
    });
}

/// A TLS 1.3 client trusting the CA certificates in `ca`, presenting `cert` and `key`
/// (PEM files) when given, and offering `alpn`.
pub(crate) fn client_tls(
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    alpn: &[u8],
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}
