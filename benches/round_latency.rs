//! Round latency over mutual TLS on loopback: pure orchestration, transport
//! and (with secure aggregation) cryptography cost.
//!
//! The coordinator runs in a child process (so its peak memory can be read
//! from /proc); the partners are in-process agents that return the model they
//! received plus a small change, so no training time is counted. In `secure`
//! mode they take part in the key ceremony, encrypt their update under the
//! collective key (`consortia_he`), and recompute and partially
//! decrypt every round's sum with the agent's own key-holder code
//! (`consortia_client::keys`); every partner runs on this one machine.
//!
//! ```text
//! cargo bench --bench round_latency -- [--params 1000000] [--rounds 10] [--partners 3,10] [--modes plain,secure]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consortia_client::keys::{DecryptJob, KeyHolder};
use consortia_client::policy::Policy;
use consortia_coordinator::orchestrator::Hub;
use consortia_coordinator::secure::CiphertextStore;
use consortia_coordinator::server::{revocation_check, serve};
use consortia_coordinator::store::{Store, StoredStandardizer};
use consortia_he::Encryptor;
use consortia_he::update::UpdateEncoding;
use consortia_model::TaskSpec;
use consortia_model::metrics::EvalPartial;
use consortia_pki::{ClientTls, ClientTlsFiles, Pki, ServerTls, ServerTlsFiles};
use consortia_proto::federation_client::FederationClient;
use consortia_proto::{
    ClientMessage, EncryptedChunk, EvalReport, Hello, KeyCommit, KeyShare, MAX_MESSAGE_BYTES,
    UpdateChunk, chunk_count, chunk_range, client_message::Kind as Up,
    server_message::Kind as Down, share_pieces,
};

const TASK: &str = include_str!("../examples/telco_churn_task.toml");

struct Options {
    params: usize,
    rounds: u32,
    partners: Vec<usize>,
    modes: Vec<String>,
}

fn options(args: &[String]) -> Options {
    let mut o = Options {
        params: 1_000_000,
        rounds: 10,
        partners: vec![3, 10],
        modes: vec!["plain".into(), "secure".into()],
    };
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--params" => o.params = v.parse().expect("--params N"),
            "--rounds" => o.rounds = v.parse().expect("--rounds N"),
            "--modes" => o.modes = v.split(',').map(str::to_string).collect(),
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
    if args.get(1).map(String::as_str) == Some("--coordinator-child") {
        coordinator_child(&args[2..]);
        return;
    }
    let o = options(&args[1..]);
    println!(
        "round latency, {} parameters, {} rounds per run, mutual TLS on 127.0.0.1",
        o.params, o.rounds
    );
    println!(
        "{:>8}  {:>7}  {:>12}  {:>12}  {:>12}  {:>22}  {:>14}  {:>22}",
        "partners",
        "mode",
        "mean s/round",
        "min s/round",
        "max s/round",
        "coordinator peak RSS MiB",
        "vs plain (mean)",
        "coordinator CPU s/round"
    );
    for &n in &o.partners {
        let mut plain_mean = None;
        for mode in &o.modes {
            let secure = mode == "secure";
            let r = run(n, o.params, o.rounds, secure);
            if !secure {
                plain_mean = Some(r.mean);
            }
            let ratio = plain_mean
                .filter(|_| secure)
                .map_or("-".to_string(), |p| format!("{:.2}x", r.mean / p));
            println!(
                "{:>8}  {:>7}  {:>12.3}  {:>12.3}  {:>12.3}  {:>22.1}  {:>14}  {:>22.3}",
                n, mode, r.mean, r.min, r.max, r.peak_mib, ratio, r.cpu_per_round
            );
        }
    }
}

/// Runs one federation; returns (mean, min, max) seconds per round and peak MiB.
fn run(partners: usize, params: usize, rounds: u32, secure: bool) -> RunResult {
    let dir = tempfile::tempdir().expect("temp dir");
    let names: Vec<String> = (0..partners).map(|i| format!("bench-{i}")).collect();
    let pki = Pki::init(dir.path().join("pki"), &["127.0.0.1".to_string()], &names).expect("pki");
    let addr_file = dir.path().join("addr");
    let child = Command::new(std::env::current_exe().expect("exe"))
        .arg("--coordinator-child")
        .arg(dir.path())
        .arg(partners.to_string())
        .arg(params.to_string())
        .arg(rounds.to_string())
        .arg(if secure { "secure" } else { "plain" })
        .stdout(Stdio::piped())
        .stderr(match std::env::var_os("ROUND_LATENCY_LOG") {
            // The coordinator's log, for a breakdown of where a round's time goes.
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        })
        .spawn()
        .expect("coordinator child");
    let until = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && !a.is_empty()
        {
            break a;
        }
        assert!(Instant::now() < until, "coordinator did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for name in &names {
            let tls = ClientTls::new(ClientTlsFiles {
                ca_cert: pki.ca_cert_path(),
                cert: pki.partner_cert_path(name),
                key: pki.partner_key_path(name),
            })
            .expect("client tls");
            let addr = addr.clone();
            let keys = KeyHolder::new(&dir.path().join(format!("agent-{name}")), name)
                .with_identity(&pki.partner_key_path(name), &pki.ca_cert_path())
                .expect("key holder identity");
            let min = partners as u32;
            tasks.push(tokio::spawn(async move {
                echo_partner(tls, addr, keys, min).await
            }));
        }
        for t in tasks {
            t.await.expect("partner task");
        }
    });
    let out = child.wait_with_output().expect("coordinator output");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let peak_kib = field("peak_kib=");
    let cpu = field("cpu_s=");
    let store = Store::open(&dir.path().join("state")).expect("state");
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
}

async fn echo_partner(tls: ClientTls, addr: String, mut keys: KeyHolder, min: u32) {
    let channel = tls
        .connect(&format!("https://{addr}"), "127.0.0.1")
        .await
        .expect("connect");
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let up = |k| ClientMessage { kind: Some(k) };
    tx.send(up(Up::Hello(Hello {
        agent_version: "bench".into(),
    })))
    .await
    .expect("hello");
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    let eval = {
        let one_row = EvalPartial::from_scores([(0.5, true, std::f64::consts::LN_2)]);
        serde_json::to_vec(&one_row).expect("eval json")
    };
    let mut round = None;
    let mut buf: Vec<f64> = Vec::new();
    let mut job: Option<DecryptJob> = None;
    // The bench partner admits whatever task it is sent, as a permissive
    // policy would; the real agent's policy checks are tested elsewhere.
    let policy = Policy {
        require_secure_aggregation: false,
        require_dp: false,
        min_contributors: 1,
        max_colluders_assumed: 0,
        ..Policy::default()
    };
    let mut task: Option<(TaskSpec, [u8; 32])> = None;
    while let Ok(Some(msg)) = inbound.message().await {
        match msg.kind {
            Some(Down::Welcome(w)) => {
                let t = TaskSpec::from_toml_str(&w.task_toml).expect("task");
                let h = t.canonical_hash().expect("task hash");
                task = Some((t, h));
            }
            Some(Down::RoundStart(s)) => {
                buf.clear();
                round = Some(s);
            }
            Some(Down::ModelChunk(c)) => {
                buf.extend_from_slice(&c.values);
                let Some(s) = round.as_ref() else { continue };
                if c.index + 1 < s.chunk_count {
                    continue;
                }
                tx.send(up(Up::Eval(EvalReport {
                    model_round: s.model_round,
                    partial_json: eval.clone(),
                })))
                .await
                .expect("send eval");
                if !s.train {
                    continue;
                }
                let n = buf.len();
                if !s.key_id.is_empty() {
                    let key = keys.current.as_ref().expect("key installed").key.clone();
                    let r = s.round;
                    let (shape, chunks) = tokio::task::spawn_blocking(move || {
                        let enc = UpdateEncoding::for_round(None, n, min as usize, &key, r)
                            .expect("encoding");
                        let values = enc.encode_weighted(&vec![1e-3; n], 100).expect("encode");
                        let v = Encryptor::new(&key).encrypt(&values).expect("encrypt");
                        (
                            *v.shape(),
                            v.chunks().map(<[u8]>::to_vec).collect::<Vec<_>>(),
                        )
                    })
                    .await
                    .expect("encrypt task");
                    let count = chunks.len() as u32;
                    let hash = task.as_ref().expect("welcomed").1;
                    let signature = keys
                        .sign_update(&shape, &hash, s.round, s.attempt, 100, &chunks)
                        .expect("sign");
                    for (index, ciphertext) in chunks.into_iter().enumerate() {
                        let last = index as u32 + 1 == count;
                        tx.send(up(Up::Encrypted(EncryptedChunk {
                            round: s.round,
                            index: index as u32,
                            chunk_count: count,
                            example_count: 100,
                            ciphertext,
                            signature: if last { signature.clone() } else { Vec::new() },
                        })))
                        .await
                        .expect("send update");
                    }
                    continue;
                }
                for index in 0..chunk_count(n) {
                    let values = buf[chunk_range(n, index)]
                        .iter()
                        .map(|v| v + 1e-3)
                        .collect();
                    tx.send(up(Up::Update(UpdateChunk {
                        round: s.round,
                        index,
                        chunk_count: chunk_count(n),
                        example_count: 100,
                        values,
                        train_loss: 0.5,
                    })))
                    .await
                    .expect("send update");
                }
            }
            Some(Down::Keygen(req)) => {
                let t = &task.as_ref().expect("welcomed").0;
                let commitment = keys.keygen(&req, t, &policy).expect("keygen");
                tx.send(up(Up::KeyCommit(KeyCommit {
                    session_id: req.session_id,
                    commitment: commitment.to_vec(),
                })))
                .await
                .expect("send commitment");
            }
            Some(Down::KeyReveal(r)) => {
                let hash = task.as_ref().expect("welcomed").1;
                let (public_share, signature) = keys.reveal(&r.session_id, &hash).expect("reveal");
                tx.send(up(Up::KeyShare(KeyShare {
                    session_id: r.session_id,
                    public_share,
                    signature,
                })))
                .await
                .expect("send share");
            }
            Some(Down::CollectiveKey(k)) => {
                let (t, h) = task.as_ref().expect("welcomed");
                keys.install(&k, t, h, &policy).expect("install key");
            }
            Some(Down::Decrypt(req)) => {
                let values = req.values;
                job = Some(
                    keys.begin_decrypt(&req, min, values, &task.as_ref().expect("welcomed").1)
                        .expect("decrypt request"),
                );
            }
            Some(Down::Ciphertext(c)) => {
                let Some(j) = job.as_mut() else { continue };
                j.add(&c).expect("ciphertext");
                if j.complete() {
                    let j = job.take().expect("job");
                    let round = j.round();
                    let share = keys.finish_decrypt(j).expect("partial decryption");
                    for piece in share_pieces(round, &share) {
                        tx.send(up(Up::DecryptionShare(piece)))
                            .await
                            .expect("send share");
                    }
                }
            }
            Some(Down::Finished(_)) => return,
            _ => {}
        }
    }
}

/// User + system CPU seconds of this process (/proc/self/stat fields 14, 15).
fn cpu_seconds() -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_to_string("/proc/self/stat")
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

fn coordinator_child(args: &[String]) {
    if std::env::var_os("ROUND_LATENCY_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let dir = PathBuf::from(&args[0]);
    let partners: u32 = args[1].parse().expect("partners");
    let params: usize = args[2].parse().expect("params");
    let rounds: u32 = args[3].parse().expect("rounds");
    let secure = args.get(4).map(String::as_str) == Some("secure");
    let mut task = TaskSpec::from_toml_str(TASK).expect("task");
    task.rounds = rounds;
    task.secure_aggregation = secure;
    task.min_partners = partners;
    task.round_deadline_secs = 120;
    let text = task.to_toml_string().expect("toml");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = Arc::new(Store::open(&dir.join("state")).expect("store"));
        store.init_task(&text, &vec![0.0; params]).expect("init");
        let f = task.schema.feature_count();
        store
            .put_standardizer(&StoredStandardizer {
                mean: vec![0.0; f],
                std: vec![1.0; f],
            })
            .expect("standardizer");
        let pki = Path::new(&dir).join("pki");
        let tls = Arc::new(
            ServerTls::new(ServerTlsFiles {
                ca_cert: pki.join("ca.pem"),
                cert: pki.join("coordinator.pem"),
                key: pki.join("coordinator.key"),
                crl: pki.join("crl.pem"),
            })
            .expect("server tls"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        std::fs::write(
            dir.join("addr"),
            listener.local_addr().expect("addr").to_string(),
        )
        .expect("addr file");
        let mut hub = Hub::new(task, text, params, revocation_check(&tls));
        if secure {
            hub = hub.with_secure_aggregation(CiphertextStore::new(&dir.join("state")), None);
        }
        let hub = Arc::new(hub);
        serve(hub, store, None, tls, listener, std::future::pending())
            .await
            .expect("serve");
    });
    println!("peak_kib={}", peak_rss_kib());
    println!("cpu_s={}", cpu_seconds());
}
