//! The threshold extension of the key ceremony, for a task with
//! `key_threshold = t` (`docs/threshold.md`, "The scheme", steps 1 to 3): once
//! the collective key is made and sent, the coordinator relays
//!
//! 1. every key holder's signed X25519 subshare keys (`ThresholdStart` →
//!    `ThresholdRecipientKeys`),
//! 2. to every holder, all of them (`ThresholdDealRequest`); every holder
//!    answers its `ThresholdDealing` in pieces: the signed commitments, then
//!    one box of subshares sealed to each other holder,
//! 3. to every holder, each dealer's commitments with the one box sealed to
//!    that holder; every holder answers `ThresholdKeyResult`: its share is
//!    stored, or a complaint naming the dealer.
//!
//! The coordinator reads none of the subshares (each box is sealed to its
//! recipient's signed key); it checks shapes and sizes, and that each dealing
//! is signed by its dealer over its commitments and the digest of every box
//! it relays (a dealer whose dealing is not is at fault). Every holder checks
//! the signatures and the commitments itself. A holder's complaint carries
//! signed evidence, which [`judge`] weighs publicly: the dealer, the
//! complainer or the relay is at fault ([`Outcome::Faults`]; the key
//! ceremony excludes the party at fault and starts again). It records which
//! holders stored their share (`<state>/keys/threshold-holders.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use consortia_he::{HeParams, Subshare, SubshareCommitments, Threshold};
use consortia_proto::{
    SealedSubshares, SubshareRecipientKey, ThresholdComplaint, ThresholdDealRequest,
    ThresholdDealing, ThresholdKeyResult, ThresholdRecipientKeys, ThresholdStart,
    server_message::Kind,
};

pub mod judge;

use super::key_ceremony::{Ceremony, Step};
use super::{Ending, Phase, Progress, drive};
use crate::CoordinatorError;
use crate::hub::{Hub, Stage};
use crate::rejection::{Rejection, Subject};
use crate::session::{Outbound, message};

/// Most bytes of a signature (DER ECDSA P-256 is at most 72).
const MAX_SIGNATURE_BYTES: usize = 128;

/// Whether a dealing for `parties` holders with threshold `t` under `params`
/// fits the messages of this relay: the commitments with one sealed box in
/// one message of at most [`consortia_proto::MAX_MESSAGE_BYTES`].
pub fn dealing_fits(params: HeParams, parties: u32, t: u32) -> bool {
    let Ok(th) = Threshold::new(parties, t) else {
        return false;
    };
    let held = th.held_by(consortia_he::PartyId(0)).count();
    let total = SubshareCommitments::encoded_len(params, &th)
        + held * Subshare::encoded_len(params)
        + 16
        + 4096;
    total <= consortia_proto::MAX_MESSAGE_BYTES
}

/// Where the relay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayStep {
    Keys,
    Dealings,
    Results,
}

/// One dealer's dealing as it arrives.
#[derive(Default)]
struct Incoming {
    header: Option<ThresholdDealing>,
    boxes: BTreeMap<u32, SealedSubshares>,
}

/// The relay's state (the hub's `Stage::KeyCeremony(Ceremony::Threshold)`).
pub struct ThresholdRelay {
    session: [u8; 32],
    params: HeParams,
    committee: Vec<String>,
    threshold: Threshold,
    step: RelayStep,
    keys: BTreeMap<u32, ThresholdRecipientKeys>,
    dealings: BTreeMap<u32, Incoming>,
    results: BTreeMap<u32, ThresholdKeyResult>,
}

/// A fault found in the threshold ceremony: by the coordinator's own check of
/// a dealing, or by judging a holder's complaint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// Who is at fault.
    pub fault: judge::Fault,
    /// The partner at fault (the dealer or the complainer); `None` for the relay.
    pub partner: Option<String>,
    /// The dealer complained about, and the complainer (`None` when the
    /// coordinator found the fault itself).
    pub dealer: String,
    /// The complainer.
    pub complainer: Option<String>,
    /// Why.
    pub why: String,
    /// The evidence's digest.
    pub evidence: [u8; 32],
}

impl ThresholdRelay {
    fn party_of(&self, partner: &str, subject: Subject) -> Result<u32, Rejection> {
        self.committee
            .iter()
            .position(|p| p == partner)
            .map(|p| p as u32)
            .ok_or_else(|| {
                Rejection::out_of_phase(
                    subject,
                    "this partner is not a key holder of the key being dealt",
                    "nothing from this partner until the threshold ceremony ends",
                )
            })
    }

    fn check_session(&self, id: &[u8], subject: Subject) -> Result<(), Rejection> {
        if id != self.session {
            return Err(Rejection::invalid(
                subject,
                format!("the key session {}", hex::encode(&self.session[..8])),
                "another key session",
            ));
        }
        Ok(())
    }

    fn parties(&self) -> u32 {
        self.committee.len() as u32
    }

    /// A holder's signed subshare keys (step 1).
    pub fn keys(&mut self, partner: &str, msg: &ThresholdRecipientKeys) -> Result<(), Rejection> {
        let subject = Subject::ThresholdCeremony;
        let party = self.party_of(partner, subject)?;
        if self.step != RelayStep::Keys {
            return Err(Rejection::out_of_phase(
                subject,
                "the subshare keys are all in",
                "the dealing",
            ));
        }
        self.check_session(&msg.session_id, subject)?;
        let dealers: BTreeSet<u32> = msg.keys.iter().map(|k| k.dealer).collect();
        let want: BTreeSet<u32> = (0..self.parties()).filter(|&d| d != party).collect();
        if msg.recipient != party
            || dealers != want
            || msg.keys.len() != want.len()
            || msg.keys.iter().any(|k| {
                k.public_key.len() != X25519_LEN
                    || k.signature.is_empty()
                    || k.signature.len() > MAX_SIGNATURE_BYTES
            })
        {
            return Err(Rejection::invalid(
                subject,
                format!(
                    "one 32-byte key with its signature for each of the {} other dealers, as \
                     party {party}",
                    want.len()
                ),
                format!("{} keys as party {}", msg.keys.len(), msg.recipient),
            ));
        }
        if self.keys.insert(party, msg.clone()).is_some() {
            return Err(Rejection::invalid(
                subject,
                "the subshare keys once",
                "a second set",
            ));
        }
        Ok(())
    }

    /// A piece of a holder's dealing (step 2): the signed commitments, or one
    /// sealed box.
    pub fn dealing(&mut self, partner: &str, msg: ThresholdDealing) -> Result<(), Rejection> {
        let subject = Subject::ThresholdCeremony;
        let party = self.party_of(partner, subject)?;
        if self.step != RelayStep::Dealings {
            return Err(Rejection::out_of_phase(
                subject,
                "dealings are taken only after every holder's subshare keys are sent",
                "the step asked for",
            ));
        }
        self.check_session(&msg.session_id, subject)?;
        if msg.dealer != party {
            return Err(Rejection::invalid(
                subject,
                format!("a dealing of party {party}"),
                format!("one of party {}", msg.dealer),
            ));
        }
        let commitments_len = SubshareCommitments::encoded_len(self.params, &self.threshold);
        let box_len = self.threshold.held_by(consortia_he::PartyId(0)).count()
            * Subshare::encoded_len(self.params)
            + 16;
        let parties = self.parties();
        let incoming = self.dealings.entry(party).or_default();
        match (msg.commitments.is_empty(), msg.sealed.as_slice()) {
            (false, []) => {
                if msg.commitments.len() != commitments_len
                    || msg.signature.is_empty()
                    || msg.signature.len() > MAX_SIGNATURE_BYTES
                    || msg.box_digests.len() != parties as usize - 1
                    || msg.box_digests.iter().any(|d| d.len() != 32)
                {
                    return Err(Rejection::invalid(
                        subject,
                        format!(
                            "{commitments_len} bytes of commitments with {} box digests and a \
                             signature",
                            parties - 1
                        ),
                        format!(
                            "{} bytes and {} digests",
                            msg.commitments.len(),
                            msg.box_digests.len()
                        ),
                    ));
                }
                if incoming.header.is_some() {
                    return Err(Rejection::invalid(
                        subject,
                        "the commitments once",
                        "a second set",
                    ));
                }
                incoming.header = Some(msg);
            }
            (true, [b]) => {
                if !msg.box_digests.is_empty()
                    || b.recipient >= parties
                    || b.recipient == party
                    || b.dealer_key.len() != X25519_LEN
                    || b.ciphertext.len() != box_len
                {
                    return Err(Rejection::invalid(
                        subject,
                        format!("a box of {box_len} bytes for another holder"),
                        format!("{} bytes for party {}", b.ciphertext.len(), b.recipient),
                    ));
                }
                if incoming.boxes.insert(b.recipient, b.clone()).is_some() {
                    return Err(Rejection::invalid(
                        subject,
                        "one box per recipient",
                        "a second box",
                    ));
                }
            }
            _ => {
                return Err(Rejection::invalid(
                    subject,
                    "either the commitments or one sealed box",
                    "both, or neither",
                ));
            }
        }
        Ok(())
    }

    /// A holder's outcome (step 3).
    pub fn result(&mut self, partner: &str, msg: &ThresholdKeyResult) -> Result<(), Rejection> {
        let subject = Subject::ThresholdCeremony;
        let party = self.party_of(partner, subject)?;
        if self.step != RelayStep::Results {
            return Err(Rejection::out_of_phase(
                subject,
                "no dealing has been relayed yet",
                "the step asked for",
            ));
        }
        self.check_session(&msg.session_id, subject)?;
        let mut msg = msg.clone();
        msg.reason.truncate(1024);
        msg.subset.truncate(64);
        let box_len = self.threshold.held_by(consortia_he::PartyId(0)).count()
            * Subshare::encoded_len(self.params)
            + 16;
        if let Some(c) = &msg.complaint
            && (c.signature.len() > MAX_SIGNATURE_BYTES
                || c.recipient_key.len() > X25519_LEN
                || c.sealed.as_ref().is_some_and(|b| {
                    b.dealer_key.len() > X25519_LEN || b.ciphertext.len() > box_len
                }))
        {
            return Err(Rejection::invalid(
                subject,
                format!(
                    "a complaint with a box of at most {box_len} bytes, a 32-byte key and a \
                     signature"
                ),
                "a larger one",
            ));
        }
        if self.results.insert(party, msg).is_some() {
            return Err(Rejection::invalid(
                subject,
                "one outcome",
                "a second outcome",
            ));
        }
        Ok(())
    }

    fn done(&self) -> bool {
        let n = self.parties() as usize;
        match self.step {
            RelayStep::Keys => self.keys.len() == n,
            RelayStep::Dealings => {
                self.dealings.len() == n
                    && self
                        .dealings
                        .values()
                        .all(|d| d.header.is_some() && d.boxes.len() == n - 1)
            }
            RelayStep::Results => self.results.len() == n,
        }
    }

    fn waiting_for(&self) -> Vec<String> {
        let n = self.parties() as usize;
        self.committee
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let i = *i as u32;
                match self.step {
                    RelayStep::Keys => !self.keys.contains_key(&i),
                    RelayStep::Dealings => self
                        .dealings
                        .get(&i)
                        .is_none_or(|d| d.header.is_none() || d.boxes.len() != n - 1),
                    RelayStep::Results => !self.results.contains_key(&i),
                }
            })
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// Length of an X25519 public key.
pub const X25519_LEN: usize = 32;

/// Waits for the relay's current step.
struct RelayWait<'a>(Step<'a, ()>);

impl Phase for RelayWait<'_> {
    type Output = Result<(), Vec<String>>;

    fn poll(&mut self, hub: &Hub) -> Progress {
        let state = match &*hub.stage() {
            Stage::KeyCeremony(Ceremony::Threshold(r)) => Some((r.done(), r.waiting_for())),
            _ => None,
        };
        self.0.progress(hub, state)
    }

    fn finish(self, _hub: &Hub, ending: Ending) -> Self::Output {
        if ending == Ending::Complete {
            return Ok(());
        }
        tracing::warn!(
            gone = ?self.0.gone,
            waiting_for = ?self.0.waiting_for,
            "the threshold key ceremony did not complete; making the key again with the \
             partners connected"
        );
        Err(self.0.waiting_for)
    }
}

/// How the threshold ceremony ended.
pub enum Outcome {
    /// Every holder stored its threshold share.
    Stored,
    /// A holder left or did not answer: make the key again.
    Abandoned,
    /// A dealing was refused: who is at fault, as judged (the key is
    /// abandoned; exclude the partners at fault and make it again).
    Faults(Vec<Judged>),
}

/// Runs the threshold ceremony for the key `key` just sent to its
/// committee; `threshold` is the task's `key_threshold`. A refused dealing
/// ends it with [`Outcome::Faults`]: each complaint judged ([`judge`]).
pub async fn run(
    hub: &Hub,
    key: &crate::secure::FederationKey,
    threshold: u32,
    deadline: Duration,
) -> Result<Outcome, CoordinatorError> {
    let session = key.key.session();
    let committee = &key.committee[..];
    let th = Threshold::new(committee.len() as u32, threshold)
        .map_err(|e| CoordinatorError::SecureAggregation(format!("threshold key: {e}")))?;
    if !dealing_fits(session.params, th.parties(), threshold) {
        return Err(CoordinatorError::SecureAggregation(format!(
            "threshold key: a dealing among {} holders with key_threshold = {threshold} does not \
             fit one message yet (C(N, t-1) commitments of 64 KiB); use a smaller committee or \
             threshold",
            committee.len()
        )));
    }
    hub.begin(Stage::KeyCeremony(Ceremony::Threshold(Box::new(
        ThresholdRelay {
            session: session.id,
            params: session.params,
            committee: committee.to_vec(),
            threshold: th.clone(),
            step: RelayStep::Keys,
            keys: BTreeMap::new(),
            dealings: BTreeMap::new(),
            results: BTreeMap::new(),
        },
    ))));
    tracing::info!(phase = "key_ceremony", holders = ?committee, threshold, "dealing the federation key {threshold}-of-{}", committee.len());
    let wait = || RelayWait(Step::new(committee));
    for p in committee {
        hub.send_to(
            p,
            Outbound::Message(message(Kind::ThresholdStart(ThresholdStart {
                session_id: session.id.to_vec(),
            }))),
        );
    }
    if drive(hub, wait(), Instant::now() + deadline).await.is_err() {
        hub.end_stage();
        return Ok(Outcome::Abandoned);
    }
    let recipients: Vec<ThresholdRecipientKeys> = {
        let mut stage = hub.stage();
        let Stage::KeyCeremony(Ceremony::Threshold(r)) = &mut *stage else {
            return Ok(Outcome::Abandoned);
        };
        r.step = RelayStep::Dealings;
        r.keys.values().cloned().collect()
    };
    for p in committee {
        hub.send_to(
            p,
            Outbound::Message(message(Kind::ThresholdDeal(ThresholdDealRequest {
                session_id: session.id.to_vec(),
                recipients: recipients.clone(),
            }))),
        );
    }
    if drive(hub, wait(), Instant::now() + deadline).await.is_err() {
        hub.end_stage();
        return Ok(Outcome::Abandoned);
    }
    // Each dealing must be signed by its dealer over its commitments and
    // the digest of every box it sent: else the dealer is at fault.
    let dealings: BTreeMap<u32, Incoming> = {
        let mut stage = hub.stage();
        let Stage::KeyCeremony(Ceremony::Threshold(r)) = &mut *stage else {
            return Ok(Outcome::Abandoned);
        };
        r.step = RelayStep::Results;
        std::mem::take(&mut r.dealings)
    };
    let judging = |recipient: u32,
                   dealing: &ThresholdDealing,
                   complaint: &ThresholdComplaint,
                   relayed: Option<&SealedSubshares>,
                   recipient_key: Option<&SubshareRecipientKey>| {
        judge::judge(&judge::Case {
            session: &session,
            task_hash: &hub.task_hash,
            committee: &th,
            names: committee,
            transcript: &key.transcript,
            recipient,
            dealing,
            relayed,
            recipient_key,
            complaint,
        })
    };
    let empty = ThresholdComplaint::default();
    let mut unsigned = Vec::new();
    for (dealer, d) in &dealings {
        let Some(h) = d.header.as_ref() else {
            return Ok(Outcome::Abandoned);
        };
        let case = judge::Case {
            session: &session,
            task_hash: &hub.task_hash,
            committee: &th,
            names: committee,
            transcript: &key.transcript,
            recipient: 0,
            dealing: h,
            relayed: None,
            recipient_key: None,
            complaint: &empty,
        };
        if let Some(v) = judge::check_sent(&case, *dealer, d.boxes.values()) {
            let name = committee[*dealer as usize].clone();
            unsigned.push(Judged {
                fault: v.fault,
                partner: Some(name.clone()),
                dealer: name,
                complainer: None,
                why: v.why,
                evidence: v.evidence,
            });
        }
    }
    if !unsigned.is_empty() {
        hub.end_stage();
        return Ok(Outcome::Faults(unsigned));
    }
    // Each holder gets every dealer's commitments and the box sealed to it.
    let per_recipient: Vec<Vec<ThresholdDealing>> = (0..committee.len() as u32)
        .map(|recipient| {
            dealings
                .iter()
                .filter_map(|(dealer, d)| {
                    let h = d.header.as_ref()?;
                    Some(ThresholdDealing {
                        session_id: h.session_id.clone(),
                        dealer: *dealer,
                        commitments: h.commitments.clone(),
                        signature: h.signature.clone(),
                        sealed: d.boxes.get(&recipient).cloned().into_iter().collect(),
                        box_digests: h.box_digests.clone(),
                    })
                })
                .collect()
        })
        .collect();
    for (p, dealings) in committee.iter().zip(per_recipient) {
        for d in dealings {
            hub.send_to(p, Outbound::Message(message(Kind::ThresholdDealing(d))));
        }
    }
    if drive(hub, wait(), Instant::now() + deadline).await.is_err() {
        hub.end_stage();
        return Ok(Outcome::Abandoned);
    }
    let (results, keys) = match hub.end_stage() {
        Stage::KeyCeremony(Ceremony::Threshold(r)) => (r.results, r.keys),
        _ => return Ok(Outcome::Abandoned),
    };
    let mut faults = Vec::new();
    for (holder, r) in results.iter().filter(|(_, r)| !r.stored) {
        let by = committee[*holder as usize].clone();
        let named = committee.get(r.dealer as usize).map_or("?", String::as_str);
        tracing::error!(
            complainer = %by,
            dealer = %named,
            subset = %r.subset,
            reason = %r.reason,
            "threshold key refused: judging the complaint's evidence"
        );
        let complaint = r.complaint.clone().unwrap_or_default();
        let dealing = dealings
            .get(&complaint.dealer)
            .and_then(|d| d.header.as_ref().map(|h| (d, h)));
        let verdict = match (r.complaint.as_ref(), dealing) {
            (Some(c), Some((d, h))) if c.dealer == r.dealer => {
                let recipient_key = keys
                    .get(holder)
                    .and_then(|k| k.keys.iter().find(|k| k.dealer == c.dealer));
                judging(*holder, h, c, d.boxes.get(holder), recipient_key)
            }
            _ => judge::Verdict {
                fault: judge::Fault::Complainer,
                why: "a complaint without evidence, or about a dealer other than the one it \
                      names"
                    .into(),
                evidence: consortia_proto::threshold_complaint_evidence_digest(0, &[0; 32], &[]),
            },
        };
        let dealer = committee
            .get(complaint.dealer as usize)
            .cloned()
            .unwrap_or_else(|| named.to_string());
        let partner = match verdict.fault {
            judge::Fault::Dealer => Some(dealer.clone()),
            judge::Fault::Complainer => Some(by.clone()),
            judge::Fault::Relay => None,
        };
        faults.push(Judged {
            fault: verdict.fault,
            partner,
            dealer,
            complainer: Some(by),
            why: verdict.why,
            evidence: verdict.evidence,
        });
    }
    if !faults.is_empty() {
        for f in &faults {
            tracing::error!(
                fault = ?f.fault,
                at_fault = ?f.partner,
                dealer = %f.dealer,
                complainer = ?f.complainer,
                evidence = %hex::encode(f.evidence),
                "threshold complaint judged: {}",
                f.why
            );
        }
        return Ok(Outcome::Faults(faults));
    }
    tracing::info!(holders = ?committee, threshold, "every key holder stored its threshold share");
    Ok(Outcome::Stored)
}

/// Records that every holder of `key` stored its share of the `t`-of-N key:
/// `<state>/keys/threshold-holders.json` (session, threshold, holders),
/// written durably before the key is.
pub fn record(
    state_dir: &std::path::Path,
    key: &crate::secure::FederationKey,
    t: u32,
) -> Result<(), CoordinatorError> {
    let dir = state_dir.join("keys");
    std::fs::create_dir_all(&dir).map_err(CoordinatorError::file(&dir))?;
    let text = serde_json::json!({
        "session": hex::encode(key.key.session().id),
        "key_threshold": t,
        "holders_stored": key.committee,
    })
    .to_string();
    crate::secure::write_durably(&dir.join("threshold-holders.json"), "tmp", text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> ThresholdRelay {
        let committee: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        ThresholdRelay {
            session: [3; 32],
            params: HeParams::Fast64,
            committee,
            threshold: Threshold::new(3, 2).unwrap(),
            step: RelayStep::Keys,
            keys: BTreeMap::new(),
            dealings: BTreeMap::new(),
            results: BTreeMap::new(),
        }
    }

    /// The relay checks who sends what, of which session and size, before it
    /// keeps anything; it never looks inside a sealed box.
    #[test]
    fn the_relay_refuses_outsiders_other_sessions_and_wrong_sizes() {
        let mut r = relay();
        let key = |dealer| consortia_proto::SubshareRecipientKey {
            dealer,
            public_key: vec![1; 32],
            signature: vec![2; 70],
        };
        let keys = ThresholdRecipientKeys {
            session_id: vec![3; 32],
            recipient: 1,
            keys: vec![key(0), key(2)],
        };
        assert!(matches!(
            r.keys("mallory", &keys),
            Err(Rejection::OutOfPhase { .. })
        ));
        let other = ThresholdRecipientKeys {
            session_id: vec![4; 32],
            ..keys.clone()
        };
        assert!(matches!(
            r.keys("b", &other),
            Err(Rejection::Invalid { .. })
        ));
        let short = ThresholdRecipientKeys {
            keys: vec![key(0)],
            ..keys.clone()
        };
        assert!(matches!(
            r.keys("b", &short),
            Err(Rejection::Invalid { .. })
        ));
        r.keys("b", &keys).unwrap();
        assert!(matches!(r.keys("b", &keys), Err(Rejection::Invalid { .. })));
        // A dealing before the keys are all in is out of phase.
        let header = ThresholdDealing {
            session_id: vec![3; 32],
            dealer: 0,
            commitments: vec![0; SubshareCommitments::encoded_len(HeParams::Fast64, &r.threshold)],
            signature: vec![1; 70],
            sealed: Vec::new(),
            box_digests: vec![vec![0; 32]; 2],
        };
        assert!(matches!(
            r.dealing("a", header.clone()),
            Err(Rejection::OutOfPhase { .. })
        ));
        r.step = RelayStep::Dealings;
        let mut long = header.clone();
        long.commitments.push(0);
        assert!(matches!(
            r.dealing("a", long),
            Err(Rejection::Invalid { .. })
        ));
        // One signed box digest per other holder, of 32 bytes.
        let mut few = header.clone();
        few.box_digests.pop();
        assert!(matches!(
            r.dealing("a", few),
            Err(Rejection::Invalid { .. })
        ));
        let mut odd = header.clone();
        odd.box_digests[1].push(0);
        assert!(matches!(
            r.dealing("a", odd),
            Err(Rejection::Invalid { .. })
        ));
        assert!(matches!(
            r.dealing("b", header.clone()),
            Err(Rejection::Invalid { .. })
        ));
        r.dealing("a", header.clone()).unwrap();
        // Each holder of a 2-of-3 committee gets C(2, 1) = 2 subshares per dealer.
        let box_len = 2 * Subshare::encoded_len(HeParams::Fast64) + 16;
        let sealed = |recipient, len| ThresholdDealing {
            commitments: Vec::new(),
            signature: Vec::new(),
            sealed: vec![SealedSubshares {
                recipient,
                dealer_key: vec![5; 32],
                ciphertext: vec![0; len],
            }],
            box_digests: Vec::new(),
            ..header.clone()
        };
        assert!(matches!(
            r.dealing("a", sealed(1, box_len + 1)),
            Err(Rejection::Invalid { .. })
        ));
        assert!(matches!(
            r.dealing("a", sealed(0, box_len)),
            Err(Rejection::Invalid { .. })
        ));
        r.dealing("a", sealed(1, box_len)).unwrap();
        assert!(matches!(
            r.dealing("a", sealed(1, box_len)),
            Err(Rejection::Invalid { .. })
        ));
        r.dealing("a", sealed(2, box_len)).unwrap();
        assert_eq!(r.waiting_for(), vec!["b".to_string(), "c".to_string()]);
    }

    #[test]
    fn the_message_limit_admits_small_committees_and_refuses_large_dealings() {
        assert!(dealing_fits(HeParams::Secure128, 5, 3));
        assert!(dealing_fits(HeParams::Secure128, 3, 2));
        assert!(!dealing_fits(HeParams::Secure128, 12, 6));
        assert!(!dealing_fits(HeParams::Secure128, 13, 3));
    }
}
