//! Helpers shared by this crate's unit tests: collective keys made in
//! process, and hubs with partners "connected" through plain channels, so
//! that phases run without processes or sockets and a test reads what each
//! partner is sent as typed [`Outbound`] commands.

use std::collections::BTreeMap;
use std::sync::Arc;

use consortia_he::{
    CollectiveKeyAggregator, CollectivePublicKey, HeParams, KeySession, KeyShareGen, PartyId,
    SecretKeyShare,
};
use consortia_model::TaskSpec;
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::session::{COMMAND_QUEUE, Outbound, SessionHandle};

/// The plaintext example task.
pub(crate) const TASK: &str = include_str!("../../examples/telco_churn_task.toml");
/// The secure-aggregation example task.
pub(crate) const SECURE_TASK: &str = include_str!("../../examples/telco_churn_secure.toml");

/// A collective key of `parties` made in-process (session id `[id; 32]`),
/// through the same commit-then-reveal steps the partners run.
pub(crate) fn collective_key(params: HeParams, parties: u32, id: u8) -> CollectivePublicKey {
    collective_key_with_secrets(params, parties, id).0
}

/// [`collective_key`], with the parties' secret shares (party `i`'s `i`-th).
pub(crate) fn collective_key_with_secrets(
    params: HeParams,
    parties: u32,
    id: u8,
) -> (CollectivePublicKey, Vec<SecretKeyShare>) {
    let session = KeySession::new(params, [id; 32]);
    let generator = KeyShareGen::new(&session);
    let shares: Vec<_> = (0..parties)
        .map(|i| generator.generate(PartyId(i)))
        .collect();
    let mut agg = CollectiveKeyAggregator::new(&session, parties).unwrap();
    for s in &shares {
        agg.add_commitment(s.public.party(), s.commitment).unwrap();
    }
    let mut secrets = Vec::with_capacity(shares.len());
    for s in shares {
        agg.add_share(s.public.party(), s.public).unwrap();
        secrets.push(s.secret);
    }
    (agg.finish().unwrap(), secrets)
}

/// What each connected test partner is sent.
pub(crate) type Inboxes = BTreeMap<String, mpsc::Receiver<Outbound>>;

/// A hub serving `task_toml`, with `partners` connected.
pub(crate) fn hub_with(task_toml: &str, partners: &[&str]) -> (Arc<Hub>, Inboxes) {
    let task = TaskSpec::from_toml_str(task_toml).unwrap();
    let n = task.param_count();
    let hub = Arc::new(Hub::new(
        task,
        task_toml.into(),
        n,
        Box::new(|_: &[u8]| false),
    ));
    let inboxes = partners
        .iter()
        .map(|p| (p.to_string(), connect(&hub, p).1))
        .collect();
    (hub, inboxes)
}

/// Connects `partner` to `hub`: its session id and what it is sent.
pub(crate) fn connect(hub: &Hub, partner: &str) -> (u64, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let id = hub
        .register(
            partner,
            SessionHandle {
                id: 0,
                serial: Vec::new(),
                tx,
            },
        )
        .expect("a partner connected once");
    (id, rx)
}

/// The next message `inbox` is sent (as a message kind), waiting up to 5 s.
pub(crate) async fn next_message(
    inbox: &mut mpsc::Receiver<Outbound>,
) -> consortia_proto::server_message::Kind {
    match next(inbox).await {
        Outbound::Message(m) => m.kind.expect("a message kind"),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next command `inbox` is sent, waiting up to 5 s.
pub(crate) async fn next(inbox: &mut mpsc::Receiver<Outbound>) -> Outbound {
    tokio::time::timeout(std::time::Duration::from_secs(5), inbox.recv())
        .await
        .expect("a command within 5 s")
        .expect("the session is open")
}
