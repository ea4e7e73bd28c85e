//! The key ceremony: the connected partners (less any a re-key excluded)
//! make the federation key together. Its states are types:
//! [`Ceremony::Committing`] (every member commits to its public-key share),
//! then [`Ceremony::Revealing`] (every member reveals the share, signed),
//! then done: the [`FederationKey`], stored and sent to every partner. The
//! ceremony starts again from the beginning if a member leaves or does not
//! answer a step within the round deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use consortia_he::HeParams;
use consortia_proto::{KeyCommit, KeyGenRequest, KeyReveal, KeyShare, server_message::Kind};

use super::collection::resume_ciphertexts;
use super::threshold_ceremony::{self, ThresholdRelay};
use super::{Ending, Phase, Progress, drive};
use crate::CoordinatorError;
use crate::hub::{Hub, Stage};
use crate::key_holders::{HOLDERS_UNREACHABLE, RekeyRecord, Verdict};
use crate::rejection::{Rejection, Subject};
use crate::secure::{FederationKey, KeyCeremony, releases};
use crate::session::{Outbound, message};
use crate::store::Store;
use consortia_ledger::audit::format_time_utc;

/// The ceremony in progress (the hub's [`Stage::KeyCeremony`]).
pub enum Ceremony {
    /// Waiting for every member's commitment.
    Committing(KeyCeremony),
    /// Every member committed; waiting for every member's signed share.
    Revealing(KeyCeremony),
    /// The key is made; its holders deal it t-of-N ([`threshold_ceremony`]).
    Threshold(Box<ThresholdRelay>),
}

impl Ceremony {
    /// A commitment; taken only while the members are committing.
    pub fn commit(&mut self, partner: &str, msg: &KeyCommit) -> Result<(), Rejection> {
        match self {
            Ceremony::Committing(c) => c.commit(partner, msg),
            Ceremony::Revealing(_) | Ceremony::Threshold(_) => Err(Rejection::out_of_phase(
                Subject::KeyCommitment,
                "every member has committed and the shares are being revealed",
                "public key shares",
            )),
        }
    }

    /// A revealed share; taken only once every member has committed.
    pub fn reveal(
        &mut self,
        partner: &str,
        certificate: &[u8],
        msg: &KeyShare,
    ) -> Result<(), Rejection> {
        match self {
            Ceremony::Committing(_) => Err(Rejection::out_of_phase(
                Subject::KeyShare,
                "shares are revealed only once every member has committed",
                "key commitments, then the share when asked (KeyReveal)",
            )),
            Ceremony::Revealing(c) => c.reveal(partner, certificate, msg),
            Ceremony::Threshold(_) => Err(Rejection::out_of_phase(
                Subject::KeyShare,
                "the key is made and being dealt t-of-N",
                "threshold dealing messages",
            )),
        }
    }
}

/// Why a step of the ceremony did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandoned {
    /// The ceremony's state was no longer in the hub.
    Lost,
    /// Members disconnected.
    Gone {
        /// Members no longer connected.
        gone: Vec<String>,
        /// Members that had not answered the step.
        waiting_for: Vec<String>,
    },
    /// The deadline passed.
    Deadline {
        /// Members that had not answered the step.
        waiting_for: Vec<String>,
    },
}

/// Proof that every member committed: the ceremony is revealing.
#[derive(Debug)]
pub struct Committed(());

/// Waits for a step of the ceremony: commitments (`Output` = [`Committed`])
/// or shares (`Output` = the finished [`KeyCeremony`]); the threshold
/// extension's relay waits with it too (`threshold_ceremony`).
pub(super) struct Step<'a, T> {
    committee: &'a [String],
    /// Members no longer connected, when the step failed for it.
    pub(super) gone: Vec<String>,
    /// Members the step still waits for.
    pub(super) waiting_for: Vec<String>,
    lost: bool,
    done: std::marker::PhantomData<T>,
}

impl<'a, T> Step<'a, T> {
    pub(super) fn new(committee: &'a [String]) -> Self {
        Step {
            committee,
            gone: Vec::new(),
            waiting_for: Vec::new(),
            lost: false,
            done: std::marker::PhantomData,
        }
    }

    /// `state` is `Some(done, waiting_for)` when the ceremony is at the step waited for.
    pub(super) fn progress(&mut self, hub: &Hub, state: Option<(bool, Vec<String>)>) -> Progress {
        let Some((done, waiting_for)) = state else {
            self.lost = true;
            return Progress::Failed;
        };
        if done {
            return Progress::Complete;
        }
        self.waiting_for = waiting_for;
        let connected = hub.connected();
        self.gone = self
            .committee
            .iter()
            .filter(|p| !connected.contains(p))
            .cloned()
            .collect();
        if self.gone.is_empty() {
            Progress::Waiting
        } else {
            Progress::Failed
        }
    }

    /// Why the step did not complete; the ceremony is dropped.
    fn abandon(self, hub: &Hub, ending: Ending) -> Abandoned {
        hub.end_stage();
        if self.lost {
            return Abandoned::Lost;
        }
        tracing::warn!(
            gone = ?self.gone,
            waiting_for = ?self.waiting_for,
            "key generation did not complete; starting it again with the partners connected"
        );
        match ending {
            Ending::Deadline => Abandoned::Deadline {
                waiting_for: self.waiting_for,
            },
            _ => Abandoned::Gone {
                gone: self.gone,
                waiting_for: self.waiting_for,
            },
        }
    }
}

impl Phase for Step<'_, Committed> {
    type Output = Result<Committed, Abandoned>;

    fn poll(&mut self, hub: &Hub) -> Progress {
        let state = match &*hub.stage() {
            Stage::KeyCeremony(Ceremony::Committing(c)) => {
                Some((c.all_committed(), c.waiting_for()))
            }
            _ => None,
        };
        self.progress(hub, state)
    }

    fn finish(self, hub: &Hub, ending: Ending) -> Self::Output {
        if ending != Ending::Complete {
            return Err(self.abandon(hub, ending));
        }
        let mut stage = hub.stage();
        *stage = match std::mem::take(&mut *stage) {
            Stage::KeyCeremony(Ceremony::Committing(c)) => {
                Stage::KeyCeremony(Ceremony::Revealing(c))
            }
            other => other,
        };
        Ok(Committed(()))
    }
}

impl Phase for Step<'_, KeyCeremony> {
    type Output = Result<KeyCeremony, Abandoned>;

    fn poll(&mut self, hub: &Hub) -> Progress {
        let state = match &*hub.stage() {
            Stage::KeyCeremony(Ceremony::Revealing(c)) => Some((c.all_revealed(), c.waiting_for())),
            _ => None,
        };
        self.progress(hub, state)
    }

    fn finish(self, hub: &Hub, ending: Ending) -> Self::Output {
        if ending != Ending::Complete {
            return Err(self.abandon(hub, ending));
        }
        match hub.end_stage() {
            Stage::KeyCeremony(Ceremony::Revealing(c)) => Ok(c),
            _ => Err(Abandoned::Lost),
        }
    }
}

/// Runs one ceremony with `committee`: commit, then reveal. The finished
/// ceremony, or why it was abandoned.
pub async fn run(
    hub: &Hub,
    committee: &[String],
    deadline: Duration,
) -> Result<Result<KeyCeremony, Abandoned>, CoordinatorError> {
    let ceremony = KeyCeremony::new(HeParams::default(), committee.to_vec(), hub.task_hash)?;
    let session = ceremony.session;
    hub.begin(Stage::KeyCeremony(Ceremony::Committing(ceremony)));
    tracing::info!(phase = "key_ceremony", holders = ?committee, "generating the federation key (commit, then reveal)");
    for (party, p) in committee.iter().enumerate() {
        hub.send_to(
            p,
            Outbound::Message(message(Kind::Keygen(KeyGenRequest {
                session_id: session.id.to_vec(),
                params: u32::from(session.params.id()),
                party: party as u32,
                parties: committee.len() as u32,
                committee: committee.to_vec(),
            }))),
        );
    }
    let committing: Step<'_, Committed> = Step::new(committee);
    if let Err(why) = drive(hub, committing, Instant::now() + deadline).await {
        return Ok(Err(why));
    }
    for p in committee {
        hub.send_to(
            p,
            Outbound::Message(message(Kind::KeyReveal(KeyReveal {
                session_id: session.id.to_vec(),
            }))),
        );
    }
    let revealing: Step<'_, KeyCeremony> = Step::new(committee);
    Ok(drive(hub, revealing, Instant::now() + deadline).await)
}

/// The federation key of a secure task, before its first round `next`:
/// kept ciphertexts are sorted out ([`resume_ciphertexts`]), then the key is
/// loaded or made ([`ensure_key`]). `None` for a task in the clear.
pub async fn start(
    hub: &Hub,
    store: &Store,
    next: u64,
    min: usize,
    deadline: Duration,
) -> Result<Option<Arc<FederationKey>>, CoordinatorError> {
    let Some(ciphertexts) = &hub.ciphertexts else {
        return Ok(None);
    };
    resume_ciphertexts(ciphertexts, next)?;
    Ok(Some(ensure_key(hub, store, min, deadline).await?))
}

/// The federation key: the stored one, or a new one made by the partners
/// connected now (commit, then reveal; started again if a member leaves or
/// does not answer within the round deadline).
pub async fn ensure_key(
    hub: &Hub,
    store: &Store,
    min: usize,
    deadline: Duration,
) -> Result<Arc<FederationKey>, CoordinatorError> {
    if let Some(k) = hub.federation_key() {
        tracing::info!(
            holders = ?k.committee,
            "federation key loaded: every round is decrypted jointly by its key holders"
        );
        return Ok(k);
    }
    let mut excluded = crate::secure::excluded(store.dir())?;
    let mut relay_faults = 0u32;
    // A t-of-N key needs at least t holders and at most MAX_THRESHOLD_PARTIES
    // (the first ones by name; the others encrypt under the key like any partner).
    let threshold = hub.task.key_threshold;
    let min = threshold.map_or(min, |t| min.max(t as usize));
    let mut last_log = Instant::now() - Duration::from_secs(60);
    loop {
        hub.wait_for_partners(min).await;
        let committee = candidates(hub, &excluded);
        if committee.len() < min {
            if last_log.elapsed() >= Duration::from_secs(10) {
                tracing::info!(
                    candidates = ?committee,
                    excluded = ?excluded,
                    needed = min,
                    "waiting for enough partners to make the federation key"
                );
                last_log = Instant::now();
            }
            hub.wait_change(Duration::from_secs(1)).await;
            continue;
        }
        let Ok(ceremony) = run(hub, &committee, deadline).await? else {
            continue;
        };
        let key = ceremony.finish()?;
        if let Some(t) = threshold {
            // The holders install the key, then deal it t-of-N; it is stored
            // and used only once every holder stored its threshold share.
            let msg = key.to_message();
            for p in &key.committee {
                hub.send_to(
                    p,
                    Outbound::Message(message(Kind::CollectiveKey(msg.clone()))),
                );
            }
            match threshold_ceremony::run(hub, &key, t, deadline).await? {
                threshold_ceremony::Outcome::Stored => {
                    threshold_ceremony::record(store.dir(), &key, t)?;
                }
                threshold_ceremony::Outcome::Abandoned => continue,
                threshold_ceremony::Outcome::Faults(faults) => {
                    excluded = exclude_at_fault(store, &faults, &mut relay_faults)?;
                    continue;
                }
            }
        }
        store.save_federation_key(&key)?;
        let key = Arc::new(key);
        hub.set_federation_key(Some(key.clone()));
        tracing::info!(
            holders = ?key.committee,
            plaintext_bits = key.key.plaintext_bits(),
            "federation key made: updates are encrypted under it and only the key holders together can decrypt a sum"
        );
        hub.broadcast(Kind::CollectiveKey(key.to_message()));
        return Ok(key);
    }
}

/// The committee a new key would have now: the connected partners less `excluded`,
/// for a t-of-N key at most `MAX_THRESHOLD_PARTIES` (the first ones by name; the others
/// encrypt under the key like any partner).
fn candidates(hub: &Hub, excluded: &[String]) -> Vec<String> {
    let mut committee: Vec<String> = hub
        .connected()
        .into_iter()
        .filter(|p| !excluded.contains(p))
        .collect();
    if hub.task.key_threshold.is_some() {
        committee.truncate(consortia_he::threshold::MAX_THRESHOLD_PARTIES as usize);
    }
    committee
}

/// Between rounds: when the holders of `key` that are connected have been too few
/// for `[keys] rekey_after_s` (`crate::key_holders`' rule) and the partners connected
/// now (less the excluded, who stay excluded) would make a larger committee than the
/// holders still reachable, retires the key (and every stored ciphertext) and makes a
/// new one with them; `None` when it does not. Connected partners outside the key are
/// named once per key: they do not train until the next key.
pub async fn renew_if_holders_unreachable(
    hub: &Hub,
    store: &Store,
    key: &FederationKey,
    min: usize,
    deadline: Duration,
) -> Result<Option<Arc<FederationKey>>, CoordinatorError> {
    for p in hub.key_holders.newly_outside() {
        tracing::warn!(
            partner = %p,
            holders = ?key.committee,
            "partner `{p}` is connected but holds no share of the federation key: only key \
             holders contribute to secure rounds, so it does not train until the next key (made \
             when too few holders stay reachable for [keys] rekey_after_s, when the key's \
             release budget is spent, or by `consortia rekey`)"
        );
    }
    let excluded = crate::secure::excluded(store.dir())?;
    let needed = hub.task.key_threshold.map_or(min, |t| min.max(t as usize));
    let plan = match hub.key_holders.verdict(&candidates(hub, &excluded), needed) {
        Verdict::Keep => return Ok(None),
        Verdict::Waits(why) => {
            tracing::warn!(holders = ?key.committee, "{why}");
            return Ok(None);
        }
        Verdict::Rekey(plan) => plan,
    };
    let unreachable: Vec<String> = plan
        .unreachable
        .iter()
        .map(|a| format!("{} (since {})", a.partner, format_time_utc(a.since_unix_ms)))
        .collect();
    let rule = match hub.task.key_threshold {
        Some(t) => format!(
            "fewer than t + 1 = {} (t = {t}): one more departure would stop every round",
            t + 1
        ),
        None => "fewer than all of them, and every one is needed (N-of-N)".to_string(),
    };
    tracing::warn!(
        reason = HOLDERS_UNREACHABLE,
        holders = ?plan.holders,
        unreachable = ?unreachable,
        candidates = ?plan.candidates,
        "automatic re-key: for {} s only {} of the {} key holders were reachable, {rule}; \
         unreachable: {}. Retiring the federation key and making a new one with the {} \
         partners connected ([keys] rekey_after_s)",
        plan.for_secs,
        plan.reachable,
        plan.holders.len(),
        unreachable.join(", "),
        plan.candidates.len(),
    );
    let retired = hex::encode(key.key.session().id);
    hub.telemetry.rekeyed(HOLDERS_UNREACHABLE);
    store.remove_federation_key(&excluded)?;
    hub.set_federation_key(None);
    let new = ensure_key(hub, store, min, deadline).await?;
    let left_out: Vec<&String> = plan
        .holders
        .iter()
        .filter(|p| !new.committee.contains(p))
        .collect();
    hub.key_holders.rekeyed(RekeyRecord {
        at_unix_ms: crate::report::now_ms(),
        reason: HOLDERS_UNREACHABLE.into(),
        old_holders: plan.holders.clone(),
        new_holders: new.committee.clone(),
        unreachable: plan.unreachable.clone(),
    });
    tracing::warn!(
        retired_key = %retired,
        old_holders = ?plan.holders,
        new_holders = ?new.committee,
        left_out = ?left_out,
        "federation key {retired} retired and replaced; holders of the retired key left out of \
         the new one ({left_out:?}) do not train, even if they come back, until the next key \
         (made when too few holders stay reachable, or by `consortia rekey`)"
    );
    Ok(Some(new))
}

/// How many times one key ceremony starts again for a fault of the relay
/// (the coordinator's own) before it stops the task: every other fault
/// excludes a partner, so the committee shrinks each time.
pub const MAX_RELAY_FAULTS: u32 = 3;

/// Records each judged fault of a t-of-N dealing in `<state>/incidents.log`
/// and excludes the partner at fault from the key made next (an excluded
/// partner is outside every later committee, so it cannot complain again);
/// returns the excluded partners. A relay fault excludes nobody; past
/// [`MAX_RELAY_FAULTS`] of them the task stops.
fn exclude_at_fault(
    store: &Store,
    faults: &[threshold_ceremony::Judged],
    relay_faults: &mut u32,
) -> Result<Vec<String>, CoordinatorError> {
    let mut excluded = crate::secure::excluded(store.dir())?;
    let mut relay = false;
    for f in faults {
        let newly = match &f.partner {
            Some(p) if !excluded.contains(p) => {
                excluded = crate::secure::exclude(store.dir(), p)?;
                true
            }
            Some(_) => false,
            None => {
                relay = true;
                false
            }
        };
        crate::incident::threshold_fault(store.dir(), f, newly)?;
        tracing::error!(
            at_fault = ?f.partner,
            dealer = %f.dealer,
            complainer = ?f.complainer,
            "INCIDENT: the threshold key's dealing failed ({}); {}; making the key again",
            f.why,
            f.partner.as_ref().map_or_else(
                || "the relay is at fault, nobody is excluded".to_string(),
                |p| format!("`{p}` is excluded")
            )
        );
    }
    if relay {
        *relay_faults += 1;
        if *relay_faults > MAX_RELAY_FAULTS {
            return Err(CoordinatorError::SecureAggregation(format!(
                "the threshold key's dealing failed {} times through the coordinator's own \
                 relay (see {}): stopped; check the coordinator's host",
                *relay_faults,
                store.dir().join(crate::incident::LOG).display()
            )));
        }
    }
    Ok(excluded)
}

/// Retires the federation key (and every stored ciphertext) and makes a new one.
pub async fn renew(
    hub: &Hub,
    store: &Store,
    min: usize,
    deadline: Duration,
) -> Result<Arc<FederationKey>, CoordinatorError> {
    store.remove_federation_key(&[])?;
    hub.set_federation_key(None);
    ensure_key(hub, store, min, deadline).await
}

/// True (logged) when `key` has been used for as many decryptions of
/// updates of `values` encoded values as its flooding tolerates
/// (`HeParams::max_releases_per_key`): key holders refuse past it, so the
/// federation must re-key before `round`.
pub fn releases_spent(
    key: &FederationKey,
    store: &Store,
    round: u64,
    values: u64,
) -> Result<bool, CoordinatorError> {
    let budget = key.key.params().max_releases_per_key(values);
    let done = releases(key, store.dir())?;
    if done >= budget {
        tracing::warn!(
            round,
            releases = done,
            budget,
            "the federation key has been used for {done} decryptions, the most its flooding \
             tolerates for updates of {values} values: making a new key"
        );
    }
    Ok(done >= budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{SECURE_TASK, connect, hub_with, next_message};
    use consortia_he::{KeySession, KeyShareGen, PartyId};
    use consortia_proto::key_share_digest;

    fn commit_of(session: &[u8], commitment: &[u8]) -> KeyCommit {
        KeyCommit {
            session_id: session.to_vec(),
            commitment: commitment.to_vec(),
        }
    }

    /// Starts a ceremony of `committee` in the background.
    fn start(
        hub: &Arc<Hub>,
        committee: &[&str],
        deadline: Duration,
    ) -> tokio::task::JoinHandle<Result<Result<KeyCeremony, Abandoned>, CoordinatorError>> {
        let hub = hub.clone();
        let committee: Vec<String> = committee.iter().map(|s| s.to_string()).collect();
        tokio::spawn(async move { run(&hub, &committee, deadline).await })
    }

    /// The key-generation request `inbox` is sent: (session id, params id, party).
    async fn keygen(inbox: &mut tokio::sync::mpsc::Receiver<Outbound>) -> (Vec<u8>, u32, u32) {
        match next_message(inbox).await {
            Kind::Keygen(k) => (k.session_id, k.params, k.party),
            other => panic!("expected a key-generation request, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_ceremony_goes_committing_then_revealing_then_done() {
        let names = ["a", "b"];
        let (hub, mut inbox) = hub_with(SECURE_TASK, &names);
        let dir = tempfile::tempdir().unwrap();
        let committee: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let pki =
            consortia_pki::Pki::init(dir.path().join("pki"), &["127.0.0.1".into()], &committee)
                .unwrap();
        let running = start(&hub, &names, Duration::from_secs(60));
        let mut session = None;
        for (i, p) in names.iter().enumerate() {
            let (id, params, party) = keygen(inbox.get_mut(*p).unwrap()).await;
            assert_eq!(party, i as u32);
            session = Some((id, params));
        }
        let (sid, params) = session.unwrap();
        let params = HeParams::from_id(u8::try_from(params).unwrap()).unwrap();
        let session = KeySession::new(params, sid.clone().try_into().unwrap());
        let generator = KeyShareGen::new(&session);
        let shares: Vec<_> = (0..2).map(|i| generator.generate(PartyId(i))).collect();
        let signed = |i: usize| {
            let cert =
                consortia_pki::read_ca_certificate(&pki.partner_cert_path(names[i])).unwrap();
            let signer =
                consortia_ledger::Signer::from_pkcs8_pem_file(pki.partner_key_path(names[i]))
                    .unwrap();
            let bytes = shares[i].public.to_bytes();
            let d = key_share_digest(&session.id, i as u32, names[i], &hub.task_hash, &bytes);
            let share = KeyShare {
                session_id: sid.clone(),
                public_share: bytes,
                signature: signer.sign_hash(&d).unwrap(),
            };
            (cert, share)
        };
        // Committing: a share is out of step.
        let (cert, share) = signed(0);
        assert!(hub.key_share("a", &cert, &share).is_err());
        for (p, s) in names.iter().zip(&shares) {
            hub.key_commit(p, &commit_of(&sid, &s.commitment.0))
                .unwrap();
        }
        // Revealing: every member is asked for its share; a commitment is out of step.
        for p in names {
            match next_message(inbox.get_mut(p).unwrap()).await {
                Kind::KeyReveal(r) => assert_eq!(r.session_id, sid),
                other => panic!("expected KeyReveal, got {other:?}"),
            }
        }
        assert!(
            hub.key_commit("a", &commit_of(&sid, &shares[0].commitment.0))
                .is_err()
        );
        for (i, p) in names.iter().enumerate() {
            let (cert, share) = signed(i);
            hub.key_share(p, &cert, &share).unwrap();
        }
        // Done: the ceremony gives the key, and the stage is over.
        let ceremony = running.await.unwrap().unwrap().unwrap();
        let key = ceremony.finish().unwrap();
        assert_eq!(key.committee, committee);
        assert_eq!(key.transcript.len(), 2);
        assert!(matches!(*hub.stage(), Stage::Idle));
    }

    #[tokio::test]
    async fn a_member_that_leaves_abandons_the_ceremony() {
        let (hub, mut inbox) = hub_with(SECURE_TASK, &["a"]);
        let (b, _b_inbox) = connect(&hub, "b");
        let running = start(&hub, &["a", "b"], Duration::from_secs(60));
        let (sid, _, _) = keygen(inbox.get_mut("a").unwrap()).await;
        hub.key_commit("a", &commit_of(&sid, &[7; 32])).unwrap();
        hub.unregister("b", b);
        let abandoned = running.await.unwrap().unwrap().unwrap_err();
        assert_eq!(
            abandoned,
            Abandoned::Gone {
                gone: vec!["b".into()],
                waiting_for: vec!["b".into()]
            }
        );
        // The ceremony is dropped: nothing more is taken.
        assert!(hub.key_commit("a", &commit_of(&sid, &[7; 32])).is_err());
    }

    #[tokio::test]
    async fn a_silent_member_abandons_the_ceremony_at_the_deadline() {
        let (hub, mut inbox) = hub_with(SECURE_TASK, &["a", "b"]);
        let running = start(&hub, &["a", "b"], Duration::from_millis(300));
        let (sid, _, _) = keygen(inbox.get_mut("a").unwrap()).await;
        hub.key_commit("a", &commit_of(&sid, &[7; 32])).unwrap();
        let abandoned = running.await.unwrap().unwrap().unwrap_err();
        assert_eq!(
            abandoned,
            Abandoned::Deadline {
                waiting_for: vec!["b".into()]
            }
        );
    }
}
