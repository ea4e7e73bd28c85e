//! Wiring: load the task, open the state, listen with mutual TLS, reload
//! the revocation list on SIGHUP, run the round loop, shut down when done.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use consortia_model::TaskSpec;
use consortia_pki::{ServerTls, ServerTlsFiles};
use consortia_proto::MAX_MESSAGE_BYTES;
use consortia_proto::federation_server::FederationServer;

use crate::hub::{Hub, RevocationCheck};
use crate::report::TaskSummary;
use crate::secure::{CiphertextStore, load_key};
use crate::service::FederationService;
use crate::store::Store;
use crate::task::run_task;
use crate::telemetry::Telemetry;
use crate::{CoordinatorConfig, CoordinatorError};

/// Loads the task: from the task file when given (it must match a stored
/// one), otherwise from the state directory.
fn load_task(
    cfg: &CoordinatorConfig,
    store: &Store,
) -> Result<(TaskSpec, String), CoordinatorError> {
    let stored = store.task_toml()?;
    let text = match (&cfg.task, &stored) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|e| CoordinatorError::Config {
            path: path.clone(),
            message: format!("cannot read the task file: {e}"),
        })?,
        (None, Some(s)) => s.clone(),
        (None, None) => {
            return Err(CoordinatorError::Task(
                "no task file given and the state directory holds no task: pass --task".into(),
            ));
        }
    };
    let origin = match &cfg.task {
        Some(path) => path.display().to_string(),
        None => format!("stored in {}", store.dir().display()),
    };
    let task = TaskSpec::from_toml_named(&text, &origin)
        .map_err(|e| CoordinatorError::Task(e.to_string()))?;
    // Refuse a bad privacy plan before anything is stored.
    crate::accounting::task_privacy(&task)?;
    if let Some(s) = &stored {
        if s.trim() != text.trim() {
            let stored_name = TaskSpec::from_toml_str(s)
                .map(|t| t.name)
                .unwrap_or_else(|_| "<unreadable>".into());
            return Err(CoordinatorError::TaskMismatch {
                stored: stored_name,
                given: task.name,
            });
        }
    } else {
        let initial = consortia_model::initial_model(&task)
            .map_err(|e| CoordinatorError::Task(format!("[model]: {e}")))?;
        store.init_task(&text, initial.params())?;
    }
    Ok((task, text))
}

/// Runs the coordinator until the task finishes or `shutdown` resolves.
///
/// Returns the task summary when the task finished, `None` when stopped early.
pub async fn run(
    cfg: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<TaskSummary>, CoordinatorError> {
    // The state is checked before anything is written to it: a damaged, missing or
    // rolled-back file stops the start here (`crate::commit`).
    let (store, ledger) = crate::commit::open_for_start(&cfg.state_dir)?;
    let store = Arc::new(store);
    let (task, task_toml) = load_task(&cfg, &store)?;
    let telemetry = Telemetry::new(&task);
    let tls = Arc::new(
        ServerTls::new(ServerTlsFiles {
            ca_cert: cfg.tls.ca_cert.clone(),
            cert: cfg.tls.cert.clone(),
            key: cfg.tls.key.clone(),
            crl: cfg.tls.crl.clone(),
        })
        .map_err(|e| CoordinatorError::Tls(e.to_string()))?
        .with_refusal_observer(telemetry.handshake_observer()),
    );
    let accounting = match crate::accounting::task_privacy(&task)? {
        Some(spec) => {
            let ledger = match ledger {
                Some(l) => l,
                None => crate::accounting::open_ledger(&cfg.state_dir)?,
            };
            let acc = crate::accounting::Accounting::with_ledger(
                spec,
                &task,
                ledger,
                &cfg.state_dir,
                &cfg.tls.key,
            )?;
            Some(acc.recording_heads_in(store.clone()))
        }
        None => None,
    };
    // Metrics are served before the federation's address is published.
    let _metrics = telemetry.serve(&cfg.observability).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(CoordinatorError::Network)?;
    let addr = listener.local_addr().map_err(CoordinatorError::Network)?;
    if let Some(path) = &cfg.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string()).map_err(CoordinatorError::file(&tmp))?;
        std::fs::rename(&tmp, path).map_err(CoordinatorError::file(path))?;
    }
    tracing::info!(%addr, task = %task.name, rounds = task.rounds, "coordinator listening (mutual TLS)");
    let param_count = task.param_count();
    let secure = task.secure_aggregation;
    let mut hub = Hub::new(task, task_toml, param_count, revocation_check(&tls))
        .with_telemetry(telemetry)
        .with_partner_heads(crate::partner_heads::PartnerHeads::open(&cfg.state_dir)?);
    if secure {
        hub = hub.with_secure_aggregation(
            CiphertextStore::new(&cfg.state_dir),
            load_key(&cfg.state_dir)?,
        );
    }
    hub.key_holders.set_rekey_after(cfg.keys.rekey_after());
    let hub = Arc::new(hub);
    let _console = crate::console::serve(&cfg, hub.clone(), store.clone()).await?;
    serve(hub, store, accounting, tls, listener, shutdown).await
}

/// The revocation check the hub applies to live sessions.
pub fn revocation_check(tls: &Arc<ServerTls>) -> RevocationCheck {
    let tls = tls.clone();
    Box::new(move |serial: &[u8]| tls.is_revoked(serial))
}

/// Serves `hub` on `listener` and runs its task; the task and the store must
/// already be initialised.
pub async fn serve(
    hub: Arc<Hub>,
    store: Arc<Store>,
    accounting: Option<crate::accounting::Accounting>,
    tls: Arc<ServerTls>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<TaskSummary>, CoordinatorError> {
    // Revocation: the verifier notices a changed CRL file by itself; SIGHUP forces a reload.
    #[cfg(unix)]
    {
        let tls = tls.clone();
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match tls.reload_crl() {
                        Ok(()) => tracing::info!("revocation list reloaded (SIGHUP)"),
                        Err(e) => tracing::warn!("revocation list reload failed: {e}"),
                    }
                }
            });
        }
    }

    let service = FederationServer::new(FederationService::new(hub.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .initial_stream_window_size(Some(consortia_pki::client::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(consortia_pki::client::CONNECTION_WINDOW_BYTES))
        .add_service(service)
        .serve_with_incoming_shutdown(
            hub.telemetry.count_bytes(tls.incoming(listener)),
            async move {
                let _ = stop_rx.await;
            },
        );
    let server = tokio::spawn(server);

    let outcome = tokio::select! {
        r = run_task(hub.clone(), store.clone(), accounting) => Some(r),
        () = shutdown => None,
    };
    // Give partners a moment to receive the final messages.
    if outcome.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    store.flush()?;
    match outcome {
        Some(r) => r.map(Some),
        None => Ok(None),
    }
}
