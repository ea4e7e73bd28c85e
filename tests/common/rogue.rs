//! A scripted, malicious coordinator for the integration tests.
//!
//! [`Rogue`] serves `consortia.v1.Federation` on `127.0.0.1:0` with the
//! federation's own PKI and mutual TLS, exactly as the real coordinator does,
//! so real partner agents (processes of the built binary) connect to it and
//! trust it. What it says to them is up to the test: every session runs the
//! test's script with a [`Peer`] handle, so a test can play the honest
//! protocol where it needs to and deviate where the attack is.
//!
//! Every message a partner sends is recorded before the script sees it, so a
//! test can assert what a partner did **not** send ([`Rogue::assert_nothing_private`]).
//!
//! Bounds: every wait takes a timeout, every script is cut off after
//! [`SCRIPT_LIMIT`], the server listens on loopback only, and dropping the
//! [`Rogue`] kills the agents and stops the server.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use consortia_pki::{ServerTls, ServerTlsFiles};
use consortia_proto::federation_server::{Federation as FederationRpc, FederationServer};
use consortia_proto::{
    ClientMessage, MAX_MESSAGE_BYTES, ServerMessage, Welcome, client_message::Kind as Up,
    server_message::Kind as Down,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{EXE, Federation, wait_until};

/// The default bound on a test's waits.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// The longest one session script may run; it is then cut off (and the
/// session closed).
pub(crate) const SCRIPT_LIMIT: Duration = Duration::from_secs(120);

/// Messages that carry something derived from a partner's private rows.
pub(crate) const PRIVATE_KINDS: &[&str] = &[
    "StatsReport",
    "UpdateChunk",
    "EncryptedChunk",
    "EvalReport",
    "DecryptionSharePiece",
];

/// The name of a client message's kind (`"Hello"`, `"StatsReport"`, ...).
pub(crate) fn kind_name(msg: &ClientMessage) -> &'static str {
    match &msg.kind {
        None => "Empty",
        Some(Up::Hello(_)) => "Hello",
        Some(Up::Stats(_)) => "StatsReport",
        Some(Up::Update(_)) => "UpdateChunk",
        Some(Up::Eval(_)) => "EvalReport",
        Some(Up::Decline(_)) => "Decline",
        Some(Up::KeyCommit(_)) => "KeyCommit",
        Some(Up::KeyShare(_)) => "KeyShare",
        Some(Up::Encrypted(_)) => "EncryptedChunk",
        Some(Up::DecryptionShare(_)) => "DecryptionSharePiece",
        Some(Up::LedgerHead(_)) => "LedgerHead",
        Some(Up::ChallengeCommit(_)) => "ChallengeCommit",
        Some(Up::ChallengeSeed(_)) => "ChallengeSeed",
        Some(Up::Sketch(_)) => "SignedSketch",
        Some(Up::ThresholdKeys(_)) => "ThresholdRecipientKeys",
        Some(Up::ThresholdDealing(_)) => "ThresholdDealing",
        Some(Up::ThresholdResult(_)) => "ThresholdKeyResult",
    }
}

/// A server message of `kind`.
pub(crate) fn down(kind: Down) -> ServerMessage {
    ServerMessage { kind: Some(kind) }
}

/// One message a partner sent.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// The partner, from its client certificate.
    pub partner: String,
    /// Which of the partner's sessions (0 for its first).
    pub session: u32,
    /// Time since the rogue started.
    pub after: Duration,
    /// The message itself.
    pub message: ClientMessage,
}

impl Received {
    /// Its kind, as [`kind_name`] names it.
    pub(crate) fn kind(&self) -> &'static str {
        kind_name(&self.message)
    }
}

/// Everything the rogue saw.
#[derive(Default)]
struct Journal {
    received: Vec<Received>,
    /// Sessions opened per partner.
    sessions: BTreeMap<String, u32>,
    /// How each session's inbound stream ended: (partner, session, how).
    ended: Vec<(String, u32, String)>,
    /// Sessions refused before a script ran (no usable certificate).
    refused: Vec<String>,
    /// Scripts that panicked or ran past [`SCRIPT_LIMIT`].
    script_failures: Vec<String>,
}

type Shared = Arc<Mutex<Journal>>;

fn lock(j: &Shared) -> MutexGuard<'_, Journal> {
    j.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The test's side of one partner session.
pub(crate) struct Peer {
    /// The partner, from the common name of its client certificate.
    pub name: String,
    /// Which of this partner's sessions this is (0 for its first).
    pub session: u32,
    /// The partner's certificate (DER), as it presented it in the handshake.
    pub certificate: Vec<u8>,
    out: mpsc::Sender<Result<ServerMessage, Status>>,
    inbox: mpsc::UnboundedReceiver<ClientMessage>,
    logs: PathBuf,
}

impl Peer {
    /// Sends `msg`; false when the agent has gone.
    pub(crate) async fn send(&self, msg: ServerMessage) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.out.send(Ok(msg))).await,
            Ok(Ok(()))
        )
    }

    /// Sends a message of `kind`; false when the agent has gone.
    pub(crate) async fn send_kind(&self, kind: Down) -> bool {
        self.send(down(kind)).await
    }

    /// A `Welcome` for this partner with `task_toml` (its name read from it,
    /// empty if it does not parse).
    pub(crate) async fn welcome(&self, task_toml: &str) -> bool {
        let task_name = consortia_model::TaskSpec::from_toml_str(task_toml)
            .map(|t| t.name)
            .unwrap_or_default();
        self.send_kind(Down::Welcome(Welcome {
            partner: self.name.clone(),
            task_name,
            task_toml: task_toml.to_string(),
            acknowledged_head: None,
            protocol_version: consortia_proto::PROTOCOL_VERSION,
        }))
        .await
    }

    /// The next message from the agent, or `None` after `timeout` or when
    /// the agent has closed its side.
    pub(crate) async fn recv_timeout(&mut self, timeout: Duration) -> Option<ClientMessage> {
        tokio::time::timeout(timeout, self.inbox.recv())
            .await
            .ok()
            .flatten()
    }

    /// Skips messages until one of `kind` arrives (`None` after `timeout` or
    /// when the agent closes its side). Skipped messages stay in the journal.
    pub(crate) async fn recv_kind(
        &mut self,
        kind: &str,
        timeout: Duration,
    ) -> Option<ClientMessage> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let msg = self.recv_timeout(left).await?;
            if kind_name(&msg) == kind {
                return Some(msg);
            }
        }
    }

    /// Waits for the agent's opening `Hello`; false if anything else comes first.
    pub(crate) async fn expect_hello(&mut self, timeout: Duration) -> bool {
        self.recv_timeout(timeout)
            .await
            .is_some_and(|m| kind_name(&m) == "Hello")
    }

    /// Waits until the agent closes its side of the session (true), reading
    /// and discarding what it sends (the journal keeps it), or `timeout`
    /// passes (false).
    pub(crate) async fn closed(&mut self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.inbox.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Ends the session with a gRPC error instead of a clean close.
    pub(crate) async fn fail(self, status: Status) {
        let _ = tokio::time::timeout(WAIT, self.out.send(Err(status))).await;
    }

    /// This agent's output so far (stdout, then stderr).
    pub(crate) fn agent_log(&self) -> String {
        read_agent_log(&self.logs, &self.name)
    }

    /// Waits until this agent's output contains `needle`; false after `timeout`.
    pub(crate) async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if self.agent_log().contains(needle) {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn read_agent_log(logs: &std::path::Path, name: &str) -> String {
    let read = |ext: &str| std::fs::read_to_string(logs.join(format!("{name}.{ext}")));
    format!(
        "{}{}",
        read("out").unwrap_or_default(),
        read("err").unwrap_or_default()
    )
}

type Script = Arc<dyn Fn(Peer) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static>;

struct Service {
    tls: Arc<ServerTls>,
    journal: Shared,
    script: Script,
    logs: PathBuf,
    epoch: Instant,
}

#[tonic::async_trait]
impl FederationRpc for Service {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        // Who is calling: the common name of its client certificate, as the
        // real coordinator learns it.
        let name = match self.tls.authorize(&request) {
            Ok(id) => id.name,
            Err(s) => {
                lock(&self.journal).refused.push(s.message().to_string());
                return Err(s);
            }
        };
        let session = {
            let mut j = lock(&self.journal);
            let n = j.sessions.entry(name.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let certificate = consortia_pki::peer_connect_info(&request)
            .and_then(|info| info.peer_certs().first().map(|c| c.to_vec()))
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(16);
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        // Record every inbound message before the script sees it. Ends when
        // the agent closes its side or its connection (or at shutdown).
        let journal = self.journal.clone();
        let epoch = self.epoch;
        let partner = name.clone();
        tokio::spawn(async move {
            let how = loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        lock(&journal).received.push(Received {
                            partner: partner.clone(),
                            session,
                            after: epoch.elapsed(),
                            message: message.clone(),
                        });
                        let _ = in_tx.send(message);
                    }
                    Ok(None) => break "closed by the agent".to_string(),
                    Err(s) => break format!("{:?}: {}", s.code(), s.message()),
                }
            };
            lock(&journal).ended.push((partner, session, how));
        });
        let peer = Peer {
            name: name.clone(),
            session,
            certificate,
            out: out_tx,
            inbox: in_rx,
            logs: self.logs.clone(),
        };
        let script = (self.script)(peer);
        let journal = self.journal.clone();
        tokio::spawn(async move {
            let run = tokio::spawn(tokio::time::timeout(SCRIPT_LIMIT, script));
            let failure = match run.await {
                Ok(Ok(())) => None,
                Ok(Err(_)) => Some(format!(
                    "script of {name} session {session} ran past {SCRIPT_LIMIT:?}"
                )),
                Err(e) => Some(format!("script of {name} session {session} failed: {e}")),
            };
            if let Some(f) = failure {
                lock(&journal).script_failures.push(f);
            }
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// Whether the agent's command line has `--max-connect-attempts`.
fn agent_has_max_connect_attempts() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::process::Command::new(EXE)
            .args(["agent", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--max-connect-attempts"))
            .unwrap_or(false)
    })
}

/// A scripted coordinator on loopback and the real agents connected to it.
pub(crate) struct Rogue {
    /// PKI, partner data, agent processes (killed on drop).
    pub fed: Federation,
    addr: SocketAddr,
    journal: Shared,
    stop: Option<oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Rogue {
    fn drop(&mut self) {
        for (_, agent) in &mut self.fed.agents {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Rogue {
    /// Serves `fed`'s PKI on `127.0.0.1:0` and runs `script` for every
    /// partner session (the [`Peer`] says which partner and which session).
    pub(crate) fn start<F, Fut>(mut fed: Federation, script: F) -> Rogue
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let tls = Arc::new(
            ServerTls::new(ServerTlsFiles::from_pki(&fed.pki)).expect("rogue TLS from the PKI"),
        );
        let journal = Shared::default();
        let script: Script = Arc::new(move |peer| Box::pin(script(peer)));
        let service = Service {
            tls: tls.clone(),
            journal: journal.clone(),
            script,
            logs: fed.path("logs"),
            epoch: Instant::now(),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let addr = rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let addr = listener.local_addr().expect("bound address");
            let service = FederationServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let server = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tls.incoming(listener), async move {
                    let _ = stop_rx.await;
                });
            tokio::spawn(server);
            addr
        });
        fed.addr = Some(addr.to_string());
        Rogue {
            fed,
            addr,
            journal,
            stop: Some(stop_tx),
            rt: Some(rt),
        }
    }

    /// The address the rogue listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL agents are given.
    pub(crate) fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The name of partner `i` (0, 1 or 2).
    pub(crate) fn partner(&self, i: usize) -> String {
        self.fed.partners[i].0.clone()
    }

    /// Starts the real agent of partner `i` against the rogue with `policy`
    /// (the text of a policy file) and returns its name.
    pub(crate) fn start_agent(&mut self, i: usize, policy: &str) -> String {
        self.start_agent_with(i, policy, &[])
    }

    /// As [`start_agent`](Self::start_agent), with more command-line arguments.
    pub(crate) fn start_agent_with(&mut self, i: usize, policy: &str, args: &[&str]) -> String {
        let name = self.partner(i);
        let policy_file = self.fed.path(&format!("policy-{name}.toml"));
        std::fs::write(&policy_file, policy).expect("write the policy file");
        let policy_file = policy_file.to_str().expect("utf-8 temp path").to_string();
        let mut extra = vec!["--policy", policy_file.as_str()];
        if agent_has_max_connect_attempts() {
            extra.extend(["--max-connect-attempts", "3"]);
        }
        extra.extend_from_slice(args);
        self.fed.start_agent_with(i, None, &extra)
    }

    /// Kills the agent `name` (its state directory stays) and forgets it,
    /// so that it can be started again.
    pub(crate) fn kill_agent(&mut self, name: &str) {
        self.fed.kill_agent(name);
        self.fed.agents.retain(|(n, _)| n != name);
    }

    /// The agent's output so far (stdout, then stderr).
    pub(crate) fn agent_log(&self, name: &str) -> String {
        read_agent_log(&self.fed.path("logs"), name)
    }

    /// Waits until the agent's output contains `needle`, or fails the test
    /// with everything logged.
    pub(crate) fn wait_agent_log(&self, name: &str, needle: &str, timeout: Duration) {
        if wait_until(timeout, || {
            self.agent_log(name).contains(needle).then_some(())
        })
        .is_none()
        {
            panic!(
                "agent {name} never logged `{needle}` within {timeout:?}\n{}",
                self.report()
            );
        }
    }

    /// Waits for the agent to exit, or fails the test with everything logged.
    pub(crate) fn wait_agent_exit(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        let child = &mut self
            .fed
            .agents
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no agent {name} started"))
            .1;
        match wait_until(timeout, || child.try_wait().ok().flatten()) {
            Some(status) => status,
            None => panic!(
                "agent {name} did not exit within {timeout:?}\n{}",
                self.report()
            ),
        }
    }

    /// Everything partner `name` sent, in order, over all its sessions.
    pub(crate) fn received(&self, name: &str) -> Vec<Received> {
        lock(&self.journal)
            .received
            .iter()
            .filter(|r| r.partner == name)
            .cloned()
            .collect()
    }

    /// The kinds of message partner `name` sent, in order.
    pub(crate) fn kinds(&self, name: &str) -> Vec<&'static str> {
        self.received(name).iter().map(Received::kind).collect()
    }

    /// The kinds of message partner `name` sent in its session `session`.
    pub(crate) fn kinds_in(&self, name: &str, session: u32) -> Vec<&'static str> {
        self.received(name)
            .iter()
            .filter(|r| r.session == session)
            .map(Received::kind)
            .collect()
    }

    /// How many sessions partner `name` opened.
    pub(crate) fn sessions(&self, name: &str) -> u32 {
        lock(&self.journal).sessions.get(name).copied().unwrap_or(0)
    }

    /// Waits until partner `name` has opened `n` sessions.
    pub(crate) fn wait_sessions(&self, name: &str, n: u32, timeout: Duration) {
        if wait_until(timeout, || (self.sessions(name) >= n).then_some(())).is_none() {
            panic!(
                "partner {name} opened {} sessions, not {n}, within {timeout:?}\n{}",
                self.sessions(name),
                self.report()
            );
        }
    }

    /// Waits until partner `name` has sent a message of `kind`, and returns it.
    pub(crate) fn wait_received(&self, name: &str, kind: &str, timeout: Duration) -> Received {
        let found = wait_until(timeout, || {
            self.received(name).into_iter().find(|r| r.kind() == kind)
        });
        found.unwrap_or_else(|| {
            panic!(
                "partner {name} sent no {kind} within {timeout:?}\n{}",
                self.report()
            )
        })
    }

    /// Waits until every session partner `name` opened has ended (its
    /// inbound stream closed), so that everything it sent is in the journal.
    pub(crate) fn wait_ended(&self, name: &str, timeout: Duration) {
        let all_ended = || {
            let j = lock(&self.journal);
            let opened = j.sessions.get(name).copied().unwrap_or(0);
            let ended = j.ended.iter().filter(|(p, ..)| p == name).count() as u32;
            (ended >= opened).then_some(())
        };
        if wait_until(timeout, all_ended).is_none() {
            panic!(
                "sessions of {name} still open after {timeout:?}\n{}",
                self.report()
            );
        }
    }

    /// Fails the test if a script panicked or ran past its limit.
    pub(crate) fn check_scripts(&self) {
        let failures = lock(&self.journal).script_failures.clone();
        assert!(
            failures.is_empty(),
            "rogue scripts failed: {failures:?}\n{}",
            self.report()
        );
    }

    /// Asserts that partner `name` opened a session (its `Hello` arrived, so
    /// the check below is not vacuous) and sent nothing derived from its
    /// private rows in any session. Call it once the agent has left: it
    /// first waits for every session of the partner to end.
    pub(crate) fn assert_nothing_private(&self, name: &str) {
        self.wait_ended(name, WAIT);
        self.check_scripts();
        let kinds = self.kinds(name);
        assert!(
            kinds.contains(&"Hello"),
            "partner {name} never opened a session with the rogue\n{}",
            self.report()
        );
        let private: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|k| PRIVATE_KINDS.contains(k))
            .collect();
        assert!(
            private.is_empty(),
            "partner {name} sent private messages {private:?} to the rogue\n{}",
            self.report()
        );
    }

    /// As [`assert_nothing_private`](Self::assert_nothing_private), for one session only.
    pub(crate) fn assert_nothing_private_in(&self, name: &str, session: u32) {
        self.wait_ended(name, WAIT);
        self.check_scripts();
        let kinds = self.kinds_in(name, session);
        assert_eq!(
            kinds.first(),
            Some(&"Hello"),
            "partner {name} opened no session {session}\n{}",
            self.report()
        );
        let private: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|k| PRIVATE_KINDS.contains(k))
            .collect();
        assert!(
            private.is_empty(),
            "partner {name} sent private messages {private:?} in session {session}\n{}",
            self.report()
        );
    }

    /// What the rogue saw and what every process logged, for failure messages.
    pub(crate) fn report(&self) -> String {
        let mut out = String::from("===== rogue journal =====\n");
        {
            let j = lock(&self.journal);
            for (partner, n) in &j.sessions {
                out.push_str(&format!("{partner}: {n} sessions\n"));
            }
            for r in &j.received {
                out.push_str(&format!(
                    "{:>8.3}s {} #{}: {}\n",
                    r.after.as_secs_f64(),
                    r.partner,
                    r.session,
                    r.kind()
                ));
            }
            for (partner, session, how) in &j.ended {
                out.push_str(&format!("{partner} #{session} ended: {how}\n"));
            }
            for r in &j.refused {
                out.push_str(&format!("refused: {r}\n"));
            }
            for f in &j.script_failures {
                out.push_str(&format!("script: {f}\n"));
            }
        }
        out.push_str(&self.process_logs());
        out
    }

    /// Every process's output, each cut before any backtrace and to its
    /// last 60 lines.
    pub(crate) fn process_logs(&self) -> String {
        let mut out = String::new();
        let Ok(rd) = std::fs::read_dir(self.fed.path("logs")) else {
            return out;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let text = text.split("Stack backtrace:").next().unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            out.push_str(&format!("===== {} =====\n{tail}\n", f.display()));
        }
        out
    }
}
