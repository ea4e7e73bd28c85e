//! A key holder's part in the threshold extension of the key ceremony, for a
//! task with `key_threshold = t` (`docs/threshold.md`, "The scheme", steps
//! 1 to 3), once the collective key is installed:
//!
//! 1. [`KeyHolder::threshold_recipient_keys`]: it draws one X25519 key per
//!    other dealer ([`crate::seal::RecipientKeys`], in memory for the
//!    ceremony only) and signs each with its certificate key
//!    ([`consortia_proto::subshare_recipient_key_digest`]);
//! 2. [`KeyHolder::threshold_deal`]: it checks every other holder's signature
//!    on the key it drew for this dealer (with the certificate in the key's
//!    transcript: a key the coordinator substituted is refused), deals its
//!    secret share ([`ThresholdDealer`]), signs the RLWE commitments
//!    ([`consortia_proto::threshold_dealing_digest`]) and seals each holder's
//!    subshares to that holder ([`crate::seal::seal`]); its own subshares stay
//!    in memory;
//! 3. [`KeyHolder::threshold_collect`]: from every dealer's dealing it checks
//!    the signature, the commitments against the dealer's public share in the
//!    transcript and each subshare it opens against its commitment
//!    ([`ThresholdKeyCollector`]), then stores its [`ThresholdKeyShare`] in
//!    `<session>.threshold` (0600, checksum) beside its secret share.
//!
//! The dealer's signature covers its commitments and the digest of every box
//! it sealed ([`consortia_proto::sealed_subshares_digest`]), so a recipient
//! tells the dealer's faults from the relay's. A failed check refuses the
//! threshold key with [`AgentError::ThresholdDealing`], naming the dealer and,
//! for a subshare, its holder set `T`, and leaves a signed
//! [`ThresholdComplaint`] for the coordinator ([`KeyHolder::take_threshold_complaint`],
//! `docs/threshold.md`, "Complaints"):
//!
//! - a dealing or box the dealer's signature does not cover: the relay's
//!   fault (`THRESHOLD_COMPLAINT_KIND_RELAY`, the box as received);
//! - signed commitments that are malformed or do not add up to the dealer's
//!   public share: anyone checks them from the signed dealing (`…_COMMITMENTS`);
//! - a signed box that does not open, or whose subshares fail the signed
//!   commitments (`…_SUBSHARES`): the complaint reveals this holder's X25519
//!   private key for that dealer, so that anyone can open the box again and
//!   see who lied. The key was drawn for that dealer and this ceremony only,
//!   and the key being dealt is abandoned.

use consortia_he::{
    HeError, PartyId, PublicKeyShare, Subshare, SubshareCommitments, Threshold, ThresholdDealer,
    ThresholdKeyCollector, ThresholdKeyShare,
};
use consortia_ledger::Verifier;
use consortia_model::TaskSpec;
use consortia_proto::{
    SealedSubshares, SubshareRecipientKey, ThresholdComplaint, ThresholdComplaintKind,
    ThresholdDealing, ThresholdRecipientKeys, sealed_subshares_digest,
    subshare_recipient_key_digest, threshold_complaint_digest, threshold_complaint_evidence_digest,
    threshold_dealing_digest,
};
use zeroize::Zeroizing;

use super::{InstalledKey, KeyHolder};
use crate::AgentError;
use crate::seal::{PUBLIC_KEY_LEN, RecipientKeys, SealContext, Sealed, seal};
use crate::test_hooks;

/// A key holder's threshold ceremony in progress: in memory only (a holder
/// that restarts takes part in a new ceremony).
pub struct ThresholdCeremony {
    session: [u8; 32],
    committee: Threshold,
    party: PartyId,
    keys: RecipientKeys,
    /// This holder's subshares of its own dealing, once dealt.
    own: Option<Vec<Subshare>>,
    /// The dealings relayed so far (step 3), one per dealer.
    received: Vec<ThresholdDealing>,
}

impl std::fmt::Debug for ThresholdCeremony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThresholdCeremony")
            .field("session", &hex::encode(&self.session[..4]))
            .field("committee", &self.committee)
            .field("party", &self.party.0)
            .field("dealt", &self.own.is_some())
            .finish_non_exhaustive()
    }
}

fn protocol(why: String) -> AgentError {
    AgentError::Protocol(format!("threshold key: {why}"))
}

/// The complaint for `dealer`'s failed check `e`.
fn complaint(fed: &InstalledKey, dealer: PartyId, e: impl std::fmt::Display) -> AgentError {
    complaint_on(fed, dealer, None, e.to_string())
}

fn complaint_on(
    fed: &InstalledKey,
    dealer: PartyId,
    subset: Option<String>,
    message: String,
) -> AgentError {
    AgentError::ThresholdDealing {
        dealer: fed
            .committee
            .get(dealer.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("party {}", dealer.0)),
        party: dealer.0,
        subset,
        message,
    }
}

/// The complaint for the maths layer's refusal `e` of `dealer`'s dealing.
fn he_complaint(fed: &InstalledKey, dealer: PartyId, e: HeError) -> AgentError {
    let subset = match &e {
        HeError::SubshareMismatch { subset, .. } => Some(subset.clone()),
        _ => None,
    };
    complaint_on(fed, dealer, subset, e.to_string())
}

/// What a complaint shows: the dealer, what is at fault and the box as
/// received; `reveal`: the recipient's private key for the dealer goes with it.
struct Evidence {
    dealer: u32,
    kind: ThresholdComplaintKind,
    sealed: Option<SealedSubshares>,
    reveal: bool,
}

/// A refused dealing: the error, and the evidence of a complaint.
struct Refusal {
    error: AgentError,
    evidence: Option<Box<Evidence>>,
}

impl From<AgentError> for Refusal {
    fn from(error: AgentError) -> Self {
        Refusal {
            error,
            evidence: None,
        }
    }
}

/// `error` about `dealer`, with the evidence of kind `kind`.
fn blame(
    dealer: PartyId,
    kind: ThresholdComplaintKind,
    sealed: Option<&SealedSubshares>,
    error: AgentError,
) -> Refusal {
    Refusal {
        error,
        evidence: Some(Box::new(Evidence {
            dealer: dealer.0,
            kind,
            sealed: sealed.cloned(),
            reveal: kind == ThresholdComplaintKind::Subshares,
        })),
    }
}

/// The verifier of party `party`'s certificate in the key's transcript
/// (checked against the federation CA when the key was installed).
fn verifier_of(fed: &InstalledKey, party: u32) -> Result<Verifier, AgentError> {
    let t = fed
        .transcript
        .get(party as usize)
        .ok_or_else(|| protocol(format!("the key has no party {party}")))?;
    Verifier::from_cert_der(&t.certificate)
        .map_err(|e| protocol(format!("certificate of party {party}: {e}")))
}

/// Loads the threshold share stored for `secret`'s key, if any; refuses one
/// of another key or holder.
pub(super) fn load_share(
    path: &std::path::Path,
    secret: &consortia_he::SecretKeyShare,
) -> Result<Option<ThresholdKeyShare>, AgentError> {
    if !path.exists() {
        return Ok(None);
    }
    let damaged = |message: String| AgentError::KeyShare {
        path: path.to_path_buf(),
        party: secret.party().0,
        message,
    };
    let share = ThresholdKeyShare::load(path).map_err(|e| damaged(e.to_string()))?;
    if share.session() != secret.session() || share.holder() != secret.party() {
        return Err(damaged(format!(
            "the threshold share is for holder {} of another key session, this partner is \
             party {} of this one",
            share.holder().0,
            secret.party().0
        )));
    }
    Ok(Some(share))
}

impl InstalledKey {
    /// This key holder's share of a t-of-N key, once its ceremony completed.
    pub fn threshold_share(&self) -> Option<&ThresholdKeyShare> {
        self.threshold.as_ref()
    }
}

impl KeyHolder {
    /// The installed key and this partner's secret share, for a task with a
    /// threshold: `(key, t)`.
    fn threshold_key(&self, task: &TaskSpec) -> Result<(&InstalledKey, Threshold), AgentError> {
        let t = task.key_threshold.ok_or_else(|| {
            protocol(format!(
                "task `{}` has no key_threshold: its key is N-of-N",
                task.name
            ))
        })?;
        let fed = self
            .current
            .as_ref()
            .ok_or_else(|| protocol("no federation key installed".into()))?;
        if fed.secret.is_none() {
            return Err(protocol(
                "this partner is not a key holder of the installed key".into(),
            ));
        }
        let committee = Threshold::new(fed.committee.len() as u32, t)
            .map_err(|e| protocol(format!("the key's committee: {e}")))?;
        Ok((fed, committee))
    }

    /// Step 1: one signed X25519 key per other dealer, for the installed key
    /// of `task` (whose canonical hash is `task_hash`). Starts the ceremony
    /// afresh (any earlier one of this run is dropped).
    pub fn threshold_recipient_keys(
        &mut self,
        task: &TaskSpec,
        task_hash: &[u8; 32],
    ) -> Result<ThresholdRecipientKeys, AgentError> {
        let (fed, committee) = self.threshold_key(task)?;
        let secret = fed.secret.as_ref().expect("checked by threshold_key");
        let party = secret.party();
        let session = secret.session().id;
        let dealers: Vec<u32> = (0..committee.parties()).filter(|&d| d != party.0).collect();
        let keys =
            RecipientKeys::new(dealers.iter().copied()).map_err(|e| protocol(e.to_string()))?;
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("no signing key loaded".into()))?;
        let mut out = Vec::with_capacity(dealers.len());
        for d in dealers {
            let public_key = keys.public_for(d).expect("drawn for every dealer");
            let digest = subshare_recipient_key_digest(
                &session,
                task_hash,
                party.0,
                &self.partner,
                d,
                &public_key,
            );
            let signature = signer
                .sign_hash(&digest)
                .map_err(|e| protocol(format!("cannot sign a subshare key: {e}")))?;
            out.push(SubshareRecipientKey {
                dealer: d,
                public_key: public_key.to_vec(),
                signature,
            });
        }
        self.ceremony = Some(ThresholdCeremony {
            session,
            committee,
            party,
            keys,
            own: None,
            received: Vec::new(),
        });
        Ok(ThresholdRecipientKeys {
            session_id: session.to_vec(),
            recipient: party.0,
            keys: out,
        })
    }

    /// Step 2: this holder's dealing, its subshares sealed to the keys the
    /// other holders signed for it (`recipients`: every other holder's
    /// [`ThresholdRecipientKeys`], once each).
    pub fn threshold_deal(
        &mut self,
        task: &TaskSpec,
        task_hash: &[u8; 32],
        recipients: &[ThresholdRecipientKeys],
    ) -> Result<ThresholdDealing, AgentError> {
        let (fed, committee) = self.threshold_key(task)?;
        let secret = fed.secret.as_ref().expect("checked by threshold_key");
        let party = secret.party();
        let session = secret.session().id;
        match &self.ceremony {
            Some(c) if c.session == session && c.own.is_none() => {}
            _ => {
                return Err(protocol(
                    "asked to deal before this holder drew its subshare keys, or a second \
                     time: the coordinator starts the threshold ceremony again"
                        .into(),
                ));
            }
        }
        // Every other holder's signed key for this dealer, once.
        let mut to: Vec<(u32, [u8; PUBLIC_KEY_LEN])> = Vec::new();
        for r in (0..committee.parties()).filter(|&r| r != party.0) {
            let name = &fed.committee[r as usize];
            let mut lists = recipients.iter().filter(|k| k.recipient == r);
            let (Some(list), None) = (lists.next(), lists.next()) else {
                return Err(protocol(format!(
                    "the subshare keys of `{name}` (party {r}) are missing or given twice"
                )));
            };
            if list.session_id != session {
                return Err(protocol(format!(
                    "the subshare keys of `{name}` are for another key session"
                )));
            }
            let mut mine = list.keys.iter().filter(|k| k.dealer == party.0);
            let (Some(k), None) = (mine.next(), mine.next()) else {
                return Err(protocol(format!(
                    "`{name}` gives no subshare key, or several, for this dealer"
                )));
            };
            let public: [u8; PUBLIC_KEY_LEN] =
                k.public_key.as_slice().try_into().map_err(|_| {
                    protocol(format!(
                        "the subshare key of `{name}` is not a 32-byte X25519 key"
                    ))
                })?;
            let digest =
                subshare_recipient_key_digest(&session, task_hash, r, name, party.0, &public);
            if !verifier_of(fed, r)?.verify_hash(&digest, &k.signature) {
                return Err(protocol(format!(
                    "the subshare key given as `{name}`'s is not signed by `{name}` for this \
                     key and task: refused (a key the coordinator substituted would let it \
                     read the subshares)"
                )));
            }
            to.push((r, public));
        }
        let dealing = ThresholdDealer::new(&committee)
            .deal(secret)
            .map_err(|e| protocol(format!("cannot deal this holder's share: {e}")))?;
        let commitments = dealing.commitments().to_bytes();
        let mut sealed = Vec::with_capacity(to.len());
        for (i, (r, public)) in to.into_iter().enumerate() {
            let subshares = dealing
                .subshares_for(PartyId(r))
                .map_err(|e| protocol(e.to_string()))?;
            let mut plain = Zeroizing::new(Vec::new());
            for s in &subshares {
                plain.extend_from_slice(&s.to_bytes());
            }
            if i == 0 && test_hooks::enabled(test_hooks::BAD_SUBSHARE) {
                // The last byte of the first subshare's top coefficient.
                let at = Subshare::encoded_len(secret.session().params) - 1;
                plain[at] ^= 0x40;
                tracing::warn!("test hook: dealing a bad subshare to party {r}");
            }
            let ctx = SealContext {
                session,
                task_hash: *task_hash,
                dealer: party.0,
                recipient: r,
            };
            let boxed = seal(&ctx, &public, &plain).map_err(|e| protocol(e.to_string()))?;
            sealed.push(SealedSubshares {
                recipient: r,
                dealer_key: boxed.dealer_key.to_vec(),
                ciphertext: boxed.ciphertext,
            });
        }
        let box_digests: Vec<Vec<u8>> = sealed
            .iter()
            .map(|b| sealed_subshares_digest(&session, task_hash, party.0, b).to_vec())
            .collect();
        let digest = threshold_dealing_digest(
            &session,
            task_hash,
            party.0,
            &self.partner,
            committee.parties(),
            committee.threshold(),
            &commitments,
            &box_digests,
        );
        let signature = self
            .signer
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("no signing key loaded".into()))?
            .sign_hash(&digest)
            .map_err(|e| protocol(format!("cannot sign the dealing: {e}")))?;
        let own = dealing
            .subshares_for(party)
            .map_err(|e| protocol(e.to_string()))?;
        if let Some(c) = self.ceremony.as_mut() {
            c.own = Some(own);
        }
        Ok(ThresholdDealing {
            session_id: session.to_vec(),
            dealer: party.0,
            commitments,
            signature,
            sealed,
            box_digests,
        })
    }

    /// Step 3 as relayed, one dealer's dealing at a time: kept until every
    /// dealer's is in, then [`KeyHolder::threshold_collect`]. `Ok(true)` once
    /// the share is stored. A second dealing of one dealer is a complaint.
    pub fn threshold_receive(
        &mut self,
        task: &TaskSpec,
        task_hash: &[u8; 32],
        dealing: ThresholdDealing,
    ) -> Result<bool, AgentError> {
        let (fed, committee) = self.threshold_key(task)?;
        let parties = committee.parties();
        if dealing.dealer >= parties {
            return Err(protocol(format!(
                "a dealing of party {} in a committee of {parties}",
                dealing.dealer
            )));
        }
        let Some(c) = self.ceremony.as_ref().filter(|c| c.own.is_some()) else {
            return Err(protocol(
                "a dealing arrives before this holder dealt: the coordinator starts the \
                 threshold ceremony again"
                    .into(),
            ));
        };
        if c.received.iter().any(|d| d.dealer == dealing.dealer) {
            return Err(complaint(
                fed,
                PartyId(dealing.dealer),
                "its dealing is relayed twice",
            ));
        }
        let ceremony = self.ceremony.as_mut().expect("checked above");
        ceremony.received.push(dealing);
        if ceremony.received.len() < parties as usize {
            return Ok(false);
        }
        let all = std::mem::take(&mut ceremony.received);
        self.threshold_collect(task, task_hash, &all)?;
        Ok(true)
    }

    /// Step 3: checks every dealer's dealing (`dealings`, one per holder,
    /// this holder's own included; each with at least the box sealed to this
    /// holder) and stores this holder's threshold share. A failed check is a
    /// complaint naming the dealer ([`AgentError::ThresholdDealing`]), whose
    /// signed evidence [`KeyHolder::take_threshold_complaint`] gives;
    /// nothing is stored then.
    pub fn threshold_collect(
        &mut self,
        task: &TaskSpec,
        task_hash: &[u8; 32],
        dealings: &[ThresholdDealing],
    ) -> Result<(), AgentError> {
        self.complaint = None;
        // Taken out: a ceremony whose collection fails is over (each subshare
        // key opens one box only).
        let mut ceremony = match self.ceremony.take() {
            Some(c) if c.own.is_some() => c,
            _ => {
                return Err(protocol(
                    "dealings arrive before this holder dealt: the coordinator starts the \
                     threshold ceremony again"
                        .into(),
                ));
            }
        };
        match self.check_dealings(&mut ceremony, task, task_hash, dealings) {
            Ok(share) => {
                let path = self.path(&ceremony.session, "threshold");
                share.save(&path).map_err(|e| AgentError::KeyShare {
                    path: path.clone(),
                    party: ceremony.party.0,
                    message: format!("cannot store the threshold share: {e}"),
                })?;
                if let Some(cur) = self.current.as_mut() {
                    cur.threshold = Some(share);
                }
                Ok(())
            }
            Err(Refusal { error, evidence }) => {
                if let Some(evidence) = evidence {
                    self.complaint =
                        Some(self.sign_complaint(&mut ceremony, task_hash, *evidence)?);
                }
                Err(error)
            }
        }
    }

    /// The signed complaint left by the last refused dealing, once.
    pub fn take_threshold_complaint(&mut self) -> Option<ThresholdComplaint> {
        self.complaint.take()
    }

    /// Signs `evidence` as this holder's complaint (its X25519 key for the
    /// dealer revealed when the evidence says so).
    fn sign_complaint(
        &self,
        ceremony: &mut ThresholdCeremony,
        task_hash: &[u8; 32],
        evidence: Evidence,
    ) -> Result<ThresholdComplaint, AgentError> {
        let recipient_key = if evidence.reveal {
            ceremony
                .keys
                .reveal(evidence.dealer)
                .map(|k| k.to_vec())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let box_digest = evidence.sealed.as_ref().map_or([0; 32], |b| {
            sealed_subshares_digest(&ceremony.session, task_hash, evidence.dealer, b)
        });
        let evidence_digest =
            threshold_complaint_evidence_digest(evidence.kind as i32, &box_digest, &recipient_key);
        let digest = threshold_complaint_digest(
            &ceremony.session,
            task_hash,
            evidence.dealer,
            ceremony.party.0,
            &self.partner,
            &evidence_digest,
        );
        let signature = self
            .signer
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("no signing key loaded".into()))?
            .sign_hash(&digest)
            .map_err(|e| protocol(format!("cannot sign the complaint: {e}")))?;
        Ok(ThresholdComplaint {
            dealer: evidence.dealer,
            kind: evidence.kind as i32,
            sealed: evidence.sealed,
            recipient_key,
            signature,
        })
    }

    /// The checks of step 3, in dealer order; the first failure refuses.
    fn check_dealings(
        &self,
        ceremony: &mut ThresholdCeremony,
        task: &TaskSpec,
        task_hash: &[u8; 32],
        dealings: &[ThresholdDealing],
    ) -> Result<ThresholdKeyShare, Refusal> {
        use ThresholdComplaintKind::{Commitments, Relay, Subshares};
        let (fed, committee) = self.threshold_key(task)?;
        let secret = fed.secret.as_ref().expect("checked by threshold_key");
        let party = secret.party();
        let key_session = secret.session();
        let session = key_session.id;
        if ceremony.session != session {
            return Err(protocol(
                "the threshold ceremony in progress is for another key session".into(),
            )
            .into());
        }
        let mut collector = ThresholdKeyCollector::new(&key_session, &committee, party)
            .map_err(|e| protocol(e.to_string()))?;
        let per_holder = committee.held_by(party).count();
        let sub_len = Subshare::encoded_len(key_session.params);
        let mut false_complaint = test_hooks::enabled(test_hooks::FALSE_COMPLAINT);
        for d in 0..committee.parties() {
            let dealer = PartyId(d);
            let name = &fed.committee[d as usize];
            let relay = |why: String| {
                blame(
                    dealer,
                    Relay,
                    None,
                    complaint(
                        fed,
                        dealer,
                        format!("{why}: the relay's fault, not the dealer's"),
                    ),
                )
            };
            let mut of = dealings.iter().filter(|x| x.dealer == d);
            let (Some(dealing), None) = (of.next(), of.next()) else {
                return Err(relay("its dealing is missing or relayed twice".into()));
            };
            if dealing.session_id != session {
                return Err(relay(
                    "its dealing is relayed for another key session".into(),
                ));
            }
            let digest = threshold_dealing_digest(
                &session,
                task_hash,
                d,
                name,
                committee.parties(),
                committee.threshold(),
                &dealing.commitments,
                &dealing.box_digests,
            );
            if !verifier_of(fed, d)?.verify_hash(&digest, &dealing.signature) {
                return Err(relay(format!(
                    "the dealing relayed is not signed by `{name}` for this key and task"
                )));
            }
            // Signed by the dealer from here on: what fails is its fault.
            let signed = |e: AgentError| blame(dealer, Commitments, None, e);
            if dealing.box_digests.len() != committee.parties() as usize - 1 {
                return Err(signed(complaint(
                    fed,
                    dealer,
                    format!(
                        "it signed {} box digests for {} other holders",
                        dealing.box_digests.len(),
                        committee.parties() - 1
                    ),
                )));
            }
            let commitments =
                SubshareCommitments::from_bytes(&dealing.commitments, &key_session, &committee)
                    .map_err(|e| signed(he_complaint(fed, dealer, e)))?;
            if commitments.dealer() != dealer {
                return Err(signed(complaint(
                    fed,
                    dealer,
                    format!("its commitments name dealer {}", commitments.dealer().0),
                )));
            }
            let public = fed
                .transcript
                .get(d as usize)
                .ok_or_else(|| protocol(format!("the key has no party {d}")))
                .and_then(|t| {
                    PublicKeyShare::from_bytes(&t.public_share, &key_session)
                        .map_err(|e| protocol(format!("public share of `{name}`: {e}")))
                })?;
            collector
                .add_dealer(&commitments, &public)
                .map_err(|e| signed(he_complaint(fed, dealer, e)))?;
            if dealer == party {
                for s in ceremony.own.as_ref().expect("checked by threshold_collect") {
                    collector
                        .add_subshare(s)
                        .map_err(|e| he_complaint(fed, dealer, e))?;
                }
                continue;
            }
            let mut boxes = dealing.sealed.iter().filter(|s| s.recipient == party.0);
            let (Some(b), None) = (boxes.next(), boxes.next()) else {
                return Err(relay(
                    "no box of subshares sealed to this holder is relayed, or several".into(),
                ));
            };
            // This holder's slot among the other holders, in party order.
            let slot = if party.0 < d { party.0 } else { party.0 - 1 } as usize;
            let box_digest = sealed_subshares_digest(&session, task_hash, d, b);
            if dealing.box_digests[slot] != box_digest {
                return Err(blame(
                    dealer,
                    Relay,
                    Some(b),
                    complaint(
                        fed,
                        dealer,
                        format!(
                            "the box relayed to this holder is not the one `{name}` signed: \
                             the relay's fault, not the dealer's"
                        ),
                    ),
                ));
            }
            let bad = |e: AgentError| blame(dealer, Subshares, Some(b), e);
            let dealer_key: [u8; PUBLIC_KEY_LEN] = b
                .dealer_key
                .as_slice()
                .try_into()
                .map_err(|_| bad(complaint(fed, dealer, "its X25519 key is not 32 bytes")))?;
            let ctx = SealContext {
                session,
                task_hash: *task_hash,
                dealer: d,
                recipient: party.0,
            };
            let plain = ceremony
                .keys
                .open(
                    &ctx,
                    &Sealed {
                        dealer_key,
                        ciphertext: b.ciphertext.clone(),
                    },
                )
                .map_err(|e| bad(complaint(fed, dealer, e)))?;
            if plain.len() != per_holder * sub_len {
                return Err(bad(complaint(
                    fed,
                    dealer,
                    format!(
                        "{} bytes of subshares for this holder, {} expected",
                        plain.len(),
                        per_holder * sub_len
                    ),
                )));
            }
            for bytes in plain.chunks_exact(sub_len) {
                let s = Subshare::from_bytes(bytes, &key_session, &committee)
                    .map_err(|e| bad(he_complaint(fed, dealer, e)))?;
                if s.dealer() != dealer {
                    return Err(bad(complaint(
                        fed,
                        dealer,
                        format!("its box holds a subshare of dealer {}", s.dealer().0),
                    )));
                }
                collector
                    .add_subshare(&s)
                    .map_err(|e| bad(he_complaint(fed, dealer, e)))?;
            }
            if std::mem::take(&mut false_complaint) {
                tracing::warn!("test hook: complaining falsely about party {d}");
                return Err(bad(complaint(fed, dealer, "a false complaint (test hook)")));
            }
        }
        collector
            .finish()
            .map_err(|e| protocol(format!("incomplete dealing: {e}")).into())
    }
}
