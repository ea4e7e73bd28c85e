//! The public judgement of a complaint about a t-of-N dealing
//! (`docs/threshold.md`, "Complaints"): from the dealer's signed dealing, the
//! complainer's signed subshare key and its signed complaint, decide who is
//! at fault — the dealer, the complainer, or the relay (the coordinator
//! itself). Pure: everything it uses is signed by a party or is the
//! coordinator's own copy of what it relayed, so anyone holding the same
//! transcript reaches the same verdict.
//!
//! - A complaint that is malformed, or not signed by the complainer over
//!   [`consortia_proto::threshold_complaint_digest`]: the complainer.
//! - A box (or dealing) that the dealer's signature
//!   ([`consortia_proto::threshold_dealing_digest`], which covers every box's
//!   [`consortia_proto::sealed_subshares_digest`]) does not cover, and that
//!   the coordinator did relay: the relay. A box the coordinator never
//!   relayed: the complainer.
//! - Signed commitments that are malformed or do not add up to the dealer's
//!   public share (`SubshareCommitments::check_public`): the dealer; if they
//!   pass, the complainer.
//! - A complaint about the subshares in a signed box reveals the
//!   complainer's X25519 private key for this dealer. A key whose public key
//!   (RFC 7748 §6.1) is not the one the complainer signed: the complainer.
//!   Otherwise the box is opened with it (`consortia_seal::open_with`): a box
//!   that does not open, or holds anything but one subshare for each holder
//!   set `T` the complainer is outside of, each opening the dealer's signed
//!   commitment (`SubshareCommitments::check_subshare`: opening a commitment
//!   two ways solves Ring-SIS, `consortia_he::threshold` module docs): the
//!   dealer. A box that opens and matches: the complaint is false, the
//!   complainer.

use std::collections::BTreeSet;

use consortia_he::{KeySession, PartyId, PublicKeyShare, Subshare, SubshareCommitments, Threshold};
use consortia_ledger::Verifier;
use consortia_proto::{
    SealedSubshares, SignedKeyShare, SubshareRecipientKey, ThresholdComplaint,
    ThresholdComplaintKind, ThresholdDealing, sealed_subshares_digest,
    subshare_recipient_key_digest, threshold_complaint_digest, threshold_complaint_evidence_digest,
    threshold_dealing_digest,
};
use consortia_seal::{PRIVATE_KEY_LEN, PUBLIC_KEY_LEN, SealContext, Sealed};

/// Who a complaint shows at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The dealer: excluded.
    Dealer,
    /// The complainer (a false or malformed complaint): excluded.
    Complainer,
    /// The relay, i.e. the coordinator: nobody is excluded.
    Relay,
}

/// A judgement: who, why, and the digest of the evidence judged
/// ([`consortia_proto::threshold_complaint_evidence_digest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Who is at fault.
    pub fault: Fault,
    /// Why.
    pub why: String,
    /// The evidence's digest, for the incident log.
    pub evidence: [u8; 32],
}

/// Everything a complaint is judged on.
#[derive(Debug, Clone, Copy)]
pub struct Case<'a> {
    /// The key being dealt.
    pub session: &'a KeySession,
    /// The task's canonical hash.
    pub task_hash: &'a [u8; 32],
    /// The committee and threshold.
    pub committee: &'a Threshold,
    /// The key holders' names, in party order.
    pub names: &'a [String],
    /// The key's signed transcript: each holder's certificate and public share.
    pub transcript: &'a [SignedKeyShare],
    /// The complainer's party number.
    pub recipient: u32,
    /// The dealer's dealing as the coordinator received it (commitments,
    /// box digests and signature).
    pub dealing: &'a ThresholdDealing,
    /// The box the coordinator relayed to the complainer, if any.
    pub relayed: Option<&'a SealedSubshares>,
    /// The complainer's signed X25519 key for this dealer, as relayed.
    pub recipient_key: Option<&'a SubshareRecipientKey>,
    /// The complaint.
    pub complaint: &'a ThresholdComplaint,
}

fn verifier(transcript: &[SignedKeyShare], party: u32) -> Option<Verifier> {
    transcript
        .get(party as usize)
        .and_then(|t| Verifier::from_cert_der(&t.certificate).ok())
}

/// Whether `dealing` is signed by its dealer (party `dealer`, named
/// `names[dealer]`) over its commitments and box digests.
pub fn dealing_signed(case: &Case<'_>, dealer: u32, dealing: &ThresholdDealing) -> bool {
    let Some(name) = case.names.get(dealer as usize) else {
        return false;
    };
    let digest = threshold_dealing_digest(
        &case.session.id,
        case.task_hash,
        dealer,
        name,
        case.committee.parties(),
        case.committee.threshold(),
        &dealing.commitments,
        &dealing.box_digests,
    );
    verifier(case.transcript, dealer).is_some_and(|v| v.verify_hash(&digest, &dealing.signature))
}

/// The coordinator's own check of `case.dealing` as its dealer sent it,
/// with the `boxes` it sent: signed over its commitments and box digests,
/// and every box the one whose digest it signed. `Some`: the dealer is at
/// fault (the evidence: the digest its signature should cover).
pub fn check_sent<'b>(
    case: &Case<'_>,
    dealer: u32,
    boxes: impl IntoIterator<Item = &'b SealedSubshares>,
) -> Option<Verdict> {
    let h = case.dealing;
    let fault = |why: &str| {
        let evidence = threshold_dealing_digest(
            &case.session.id,
            case.task_hash,
            dealer,
            case.names.get(dealer as usize).map_or("", String::as_str),
            case.committee.parties(),
            case.committee.threshold(),
            &h.commitments,
            &h.box_digests,
        );
        Some(Verdict {
            fault: Fault::Dealer,
            why: why.to_string(),
            evidence,
        })
    };
    if !dealing_signed(case, dealer, h) {
        return fault("its dealing as sent to the coordinator is not signed by it");
    }
    let all_signed = boxes.into_iter().all(|b| {
        b.recipient != dealer
            && b.recipient < case.committee.parties()
            && h.box_digests
                .get(slot(dealer, b.recipient))
                .is_some_and(|d| {
                    d.as_slice()
                        == sealed_subshares_digest(&case.session.id, case.task_hash, dealer, b)
                })
    });
    if !all_signed {
        return fault("a box it sent to the coordinator is not one whose digest it signed");
    }
    None
}

/// The slot of `recipient` among the holders other than `dealer`, in party order.
fn slot(dealer: u32, recipient: u32) -> usize {
    if recipient < dealer {
        recipient as usize
    } else {
        recipient as usize - 1
    }
}

/// Checks a signed dealing's own content: one box digest per other holder,
/// commitments of this dealer adding up to its public share. `Err`: why the
/// dealer is at fault.
fn check_signed_commitments(case: &Case<'_>, dealer: u32) -> Result<SubshareCommitments, String> {
    let dealing = case.dealing;
    if dealing.box_digests.len() != case.committee.parties() as usize - 1 {
        return Err(format!(
            "it signed {} box digests for {} other holders",
            dealing.box_digests.len(),
            case.committee.parties() - 1
        ));
    }
    let commitments =
        SubshareCommitments::from_bytes(&dealing.commitments, case.session, case.committee)
            .map_err(|e| format!("its signed commitments: {e}"))?;
    if commitments.dealer() != PartyId(dealer) {
        return Err(format!(
            "its signed commitments name dealer {}",
            commitments.dealer().0
        ));
    }
    let public = case
        .transcript
        .get(dealer as usize)
        .and_then(|t| PublicKeyShare::from_bytes(&t.public_share, case.session).ok())
        .ok_or_else(|| "its public share in the key's transcript does not parse".to_string())?;
    commitments
        .check_public(&public)
        .map_err(|e| format!("its signed commitments: {e}"))?;
    Ok(commitments)
}

/// Opens the signed box with the revealed key and checks every subshare.
/// `Err`: why the dealer is at fault.
fn check_box(
    case: &Case<'_>,
    dealer: u32,
    commitments: &SubshareCommitments,
    sealed: &SealedSubshares,
    private: &[u8; PRIVATE_KEY_LEN],
) -> Result<(), String> {
    let dealer_key: [u8; PUBLIC_KEY_LEN] = sealed
        .dealer_key
        .as_slice()
        .try_into()
        .map_err(|_| "its signed box's X25519 key is not 32 bytes".to_string())?;
    let ctx = SealContext {
        session: case.session.id,
        task_hash: *case.task_hash,
        dealer,
        recipient: case.recipient,
    };
    let plain = consortia_seal::open_with(
        private,
        &ctx,
        &Sealed {
            dealer_key,
            ciphertext: sealed.ciphertext.clone(),
        },
    )
    .map_err(|e| format!("its signed box does not open with the revealed key: {e}"))?;
    let sub_len = Subshare::encoded_len(case.session.params);
    let want: BTreeSet<_> = case.committee.held_by(PartyId(case.recipient)).collect();
    if plain.len() != want.len() * sub_len {
        return Err(format!(
            "its signed box holds {} bytes, {} expected",
            plain.len(),
            want.len() * sub_len
        ));
    }
    let mut got = BTreeSet::new();
    for bytes in plain.chunks_exact(sub_len) {
        let s = Subshare::from_bytes(bytes, case.session, case.committee)
            .map_err(|e| format!("a subshare in its signed box: {e}"))?;
        commitments
            .check_subshare(&s)
            .map_err(|e| format!("a subshare in its signed box: {e}"))?;
        got.insert(s.subset());
    }
    if got != want {
        return Err(
            "its signed box does not hold one subshare for each holder set the \
                    complainer is outside of"
                .into(),
        );
    }
    Ok(())
}

/// Judges `case.complaint` about the dealing `case.dealing`.
pub fn judge(case: &Case<'_>) -> Verdict {
    let c = case.complaint;
    let box_digest = c.sealed.as_ref().map_or([0; 32], |b| {
        sealed_subshares_digest(&case.session.id, case.task_hash, c.dealer, b)
    });
    let evidence = threshold_complaint_evidence_digest(c.kind, &box_digest, &c.recipient_key);
    let verdict = |fault, why: String| Verdict {
        fault,
        why,
        evidence,
    };
    let parties = case.committee.parties();
    let dealer = c.dealer;
    if dealer >= parties || dealer == case.recipient || dealer != case.dealing.dealer {
        return verdict(
            Fault::Complainer,
            format!("a complaint about party {dealer}, which is not another dealer of this key"),
        );
    }
    let Some(name) = case.names.get(case.recipient as usize) else {
        return verdict(
            Fault::Complainer,
            "a complaint from outside the committee".into(),
        );
    };
    let digest = threshold_complaint_digest(
        &case.session.id,
        case.task_hash,
        dealer,
        case.recipient,
        name,
        &evidence,
    );
    if !verifier(case.transcript, case.recipient)
        .is_some_and(|v| v.verify_hash(&digest, &c.signature))
    {
        return verdict(
            Fault::Complainer,
            "the complaint is not signed by the complainer for this key and task".into(),
        );
    }
    let Ok(kind) = ThresholdComplaintKind::try_from(c.kind) else {
        return verdict(
            Fault::Complainer,
            format!("a complaint of unknown kind {}", c.kind),
        );
    };
    if !dealing_signed(case, dealer, case.dealing) {
        // The coordinator checks every dealing's signature as it arrives:
        // its own copy not verifying is its own fault.
        return verdict(
            Fault::Relay,
            "the coordinator's copy of the dealing is not signed by the dealer".into(),
        );
    }
    // Whether the box is the one the dealer signed for the complainer.
    let signed_box = |b: &SealedSubshares| {
        b.recipient == case.recipient
            && case
                .dealing
                .box_digests
                .get(slot(dealer, case.recipient))
                .is_some_and(|d| {
                    d.as_slice()
                        == sealed_subshares_digest(&case.session.id, case.task_hash, dealer, b)
                })
    };
    match kind {
        ThresholdComplaintKind::Unspecified => {
            verdict(Fault::Complainer, "a complaint of no kind".into())
        }
        ThresholdComplaintKind::Relay => match (c.sealed.as_ref(), case.relayed) {
            (_, None) => verdict(
                Fault::Relay,
                "the coordinator relayed no box of this dealer to the complainer".into(),
            ),
            (Some(b), Some(r)) if b != r => verdict(
                Fault::Complainer,
                "the complaint shows a box the coordinator never relayed".into(),
            ),
            (_, Some(r)) if signed_box(r) => verdict(
                Fault::Complainer,
                "the box relayed is the one the dealer signed, and its dealing is signed: \
                 nothing was substituted"
                    .into(),
            ),
            (_, Some(_)) => verdict(
                Fault::Relay,
                "the box relayed to the complainer is not the one the dealer signed".into(),
            ),
        },
        ThresholdComplaintKind::Commitments => match check_signed_commitments(case, dealer) {
            Err(why) => verdict(Fault::Dealer, why),
            Ok(_) => verdict(
                Fault::Complainer,
                "the dealer's signed commitments are well formed and add up to its public share"
                    .into(),
            ),
        },
        ThresholdComplaintKind::Subshares => {
            let commitments = match check_signed_commitments(case, dealer) {
                Err(why) => return verdict(Fault::Dealer, why),
                Ok(c) => c,
            };
            let Some(sealed) = c.sealed.as_ref() else {
                return verdict(
                    Fault::Complainer,
                    "a subshare complaint without its box".into(),
                );
            };
            if !signed_box(sealed) {
                return if case.relayed == Some(sealed) {
                    verdict(
                        Fault::Relay,
                        "the box relayed to the complainer is not the one the dealer signed".into(),
                    )
                } else {
                    verdict(
                        Fault::Complainer,
                        "the complaint shows a box the dealer did not sign and the coordinator \
                         never relayed"
                            .into(),
                    )
                };
            }
            let Ok(private) = <[u8; PRIVATE_KEY_LEN]>::try_from(c.recipient_key.as_slice()) else {
                return verdict(
                    Fault::Complainer,
                    "the complaint does not reveal a 32-byte X25519 key".into(),
                );
            };
            let signed_key = case.recipient_key.filter(|k| {
                k.dealer == dealer
                    && <[u8; PUBLIC_KEY_LEN]>::try_from(k.public_key.as_slice()).is_ok_and(|p| {
                        let digest = subshare_recipient_key_digest(
                            &case.session.id,
                            case.task_hash,
                            case.recipient,
                            name,
                            dealer,
                            &p,
                        );
                        verifier(case.transcript, case.recipient)
                            .is_some_and(|v| v.verify_hash(&digest, &k.signature))
                    })
            });
            let Some(signed_key) = signed_key else {
                return verdict(
                    Fault::Complainer,
                    "the complainer has no signed subshare key for this dealer".into(),
                );
            };
            if consortia_seal::public_of(&private).as_slice() != signed_key.public_key.as_slice() {
                return verdict(
                    Fault::Complainer,
                    "the revealed X25519 key is not the one the complainer signed for this dealer"
                        .into(),
                );
            }
            match check_box(case, dealer, &commitments, sealed, &private) {
                Err(why) => verdict(Fault::Dealer, why),
                Ok(()) => verdict(
                    Fault::Complainer,
                    "the dealer's signed box opens with the revealed key and every subshare \
                     opens its signed commitment: the complaint is false"
                        .into(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consortia_he::{HeParams, KeyShareGen, ThresholdDealer};
    use consortia_ledger::Signer;
    use consortia_seal::RecipientKeys;

    const TASK: [u8; 32] = [5; 32];
    const DEALER: u32 = 0;
    const RECIPIENT: u32 = 1;

    /// A 2-of-3 Fast64 key among a, b, c with its signed transcript; a's
    /// dealing, sealed to b's and c's signed keys for a.
    struct World {
        _dir: tempfile::TempDir,
        session: KeySession,
        committee: Threshold,
        names: Vec<String>,
        signers: Vec<Signer>,
        transcript: Vec<SignedKeyShare>,
        dealing: ThresholdDealing,
        /// The box sealed to b, as a signed it.
        boxed: SealedSubshares,
        /// b's signed key for a, and b's keys.
        b_key: SubshareRecipientKey,
        b_keys: RecipientKeys,
    }

    /// `bad_subshare`: a flips a byte of b's first subshare before sealing
    /// (and signs the box all the same).
    fn world(bad_subshare: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let pki = consortia_pki::Pki::init(dir.path().join("pki"), &["127.0.0.1".into()], &names)
            .unwrap();
        let signers: Vec<Signer> = names
            .iter()
            .map(|n| Signer::from_pkcs8_pem_file(pki.partner_key_path(n)).unwrap())
            .collect();
        let session = KeySession::new(HeParams::Fast64, [7; 32]);
        let committee = Threshold::new(3, 2).unwrap();
        let generator = KeyShareGen::new(&session);
        let shares: Vec<_> = (0..3).map(|i| generator.generate(PartyId(i))).collect();
        let transcript: Vec<SignedKeyShare> = names
            .iter()
            .enumerate()
            .map(|(i, n)| SignedKeyShare {
                party: i as u32,
                partner: n.clone(),
                public_share: shares[i].public.to_bytes(),
                signature: Vec::new(),
                certificate: consortia_pki::read_ca_certificate(&pki.partner_cert_path(n)).unwrap(),
            })
            .collect();
        let dealt = ThresholdDealer::new(&committee)
            .deal(&shares[DEALER as usize].secret)
            .unwrap();
        let b_keys = RecipientKeys::new([DEALER]).unwrap();
        let b_public = b_keys.public_for(DEALER).unwrap();
        let digest =
            subshare_recipient_key_digest(&session.id, &TASK, RECIPIENT, "b", DEALER, &b_public);
        let b_key = SubshareRecipientKey {
            dealer: DEALER,
            public_key: b_public.to_vec(),
            signature: signers[RECIPIENT as usize].sign_hash(&digest).unwrap(),
        };
        let c_public = RecipientKeys::new([DEALER])
            .unwrap()
            .public_for(DEALER)
            .unwrap();
        let mut sealed = Vec::new();
        for (r, public) in [(1u32, b_public), (2, c_public)] {
            let mut plain = Vec::new();
            for s in dealt.subshares_for(PartyId(r)).unwrap() {
                plain.extend_from_slice(&s.to_bytes());
            }
            if bad_subshare && r == RECIPIENT {
                let at = Subshare::encoded_len(HeParams::Fast64) - 1;
                plain[at] ^= 0x40;
            }
            let ctx = SealContext {
                session: session.id,
                task_hash: TASK,
                dealer: DEALER,
                recipient: r,
            };
            let b = consortia_seal::seal(&ctx, &public, &plain).unwrap();
            sealed.push(SealedSubshares {
                recipient: r,
                dealer_key: b.dealer_key.to_vec(),
                ciphertext: b.ciphertext,
            });
        }
        let box_digests: Vec<Vec<u8>> = sealed
            .iter()
            .map(|b| sealed_subshares_digest(&session.id, &TASK, DEALER, b).to_vec())
            .collect();
        let commitments = dealt.commitments().to_bytes();
        let digest = threshold_dealing_digest(
            &session.id,
            &TASK,
            DEALER,
            "a",
            3,
            2,
            &commitments,
            &box_digests,
        );
        let dealing = ThresholdDealing {
            session_id: session.id.to_vec(),
            dealer: DEALER,
            commitments,
            signature: signers[DEALER as usize].sign_hash(&digest).unwrap(),
            sealed: Vec::new(),
            box_digests,
        };
        World {
            _dir: dir,
            session,
            committee,
            names,
            signers,
            transcript,
            dealing,
            boxed: sealed[0].clone(),
            b_key,
            b_keys,
        }
    }

    impl World {
        /// b's complaint of `kind` about `sealed`, revealing `key`, signed by b.
        fn complaint(
            &self,
            kind: ThresholdComplaintKind,
            sealed: Option<SealedSubshares>,
            key: Vec<u8>,
        ) -> ThresholdComplaint {
            let box_digest = sealed.as_ref().map_or([0; 32], |b| {
                sealed_subshares_digest(&self.session.id, &TASK, DEALER, b)
            });
            let evidence = threshold_complaint_evidence_digest(kind as i32, &box_digest, &key);
            let digest = threshold_complaint_digest(
                &self.session.id,
                &TASK,
                DEALER,
                RECIPIENT,
                "b",
                &evidence,
            );
            ThresholdComplaint {
                dealer: DEALER,
                kind: kind as i32,
                sealed,
                recipient_key: key,
                signature: self.signers[RECIPIENT as usize].sign_hash(&digest).unwrap(),
            }
        }

        /// b's private key for a.
        fn reveal(&mut self) -> Vec<u8> {
            self.b_keys.reveal(DEALER).unwrap().to_vec()
        }

        fn judge(&self, relayed: &SealedSubshares, complaint: &ThresholdComplaint) -> Verdict {
            judge(&Case {
                session: &self.session,
                task_hash: &TASK,
                committee: &self.committee,
                names: &self.names,
                transcript: &self.transcript,
                recipient: RECIPIENT,
                dealing: &self.dealing,
                relayed: Some(relayed),
                recipient_key: Some(&self.b_key),
                complaint,
            })
        }
    }

    /// An honest dealing complained about, with b's genuine key: the box
    /// opens and matches, so b lied.
    #[test]
    fn a_false_complaint_about_an_honest_dealer_blames_the_complainer() {
        let mut w = world(false);
        let key = w.reveal();
        let c = w.complaint(
            ThresholdComplaintKind::Subshares,
            Some(w.boxed.clone()),
            key,
        );
        let v = w.judge(&w.boxed, &c);
        assert_eq!(v.fault, Fault::Complainer, "{}", v.why);
        assert!(v.why.contains("complaint is false"), "{}", v.why);
        // So do false claims that the commitments or the relay are at fault.
        let c = w.complaint(ThresholdComplaintKind::Commitments, None, Vec::new());
        assert_eq!(w.judge(&w.boxed, &c).fault, Fault::Complainer);
        let c = w.complaint(
            ThresholdComplaintKind::Relay,
            Some(w.boxed.clone()),
            Vec::new(),
        );
        assert_eq!(w.judge(&w.boxed, &c).fault, Fault::Complainer);
    }

    /// A bad subshare in a box the dealer signed: the dealer.
    #[test]
    fn a_bad_subshare_signed_by_the_dealer_blames_the_dealer() {
        let mut w = world(true);
        let key = w.reveal();
        let c = w.complaint(
            ThresholdComplaintKind::Subshares,
            Some(w.boxed.clone()),
            key,
        );
        let v = w.judge(&w.boxed, &c);
        assert_eq!(v.fault, Fault::Dealer, "{}", v.why);
        assert!(v.why.contains("c − a ⊙ r is not small"), "{}", v.why);
        // A signed box that does not open (a flipped ciphertext byte, signed
        // as such by the dealer) is the dealer's too.
        let mut w = world(false);
        let mut garbled = w.boxed.clone();
        garbled.ciphertext[3] ^= 1;
        w.dealing.box_digests[0] =
            sealed_subshares_digest(&w.session.id, &TASK, DEALER, &garbled).to_vec();
        let digest = threshold_dealing_digest(
            &w.session.id,
            &TASK,
            DEALER,
            "a",
            3,
            2,
            &w.dealing.commitments,
            &w.dealing.box_digests,
        );
        w.dealing.signature = w.signers[DEALER as usize].sign_hash(&digest).unwrap();
        let key = w.reveal();
        let c = w.complaint(
            ThresholdComplaintKind::Subshares,
            Some(garbled.clone()),
            key,
        );
        let v = w.judge(&garbled, &c);
        assert_eq!(v.fault, Fault::Dealer, "{}", v.why);
        assert!(v.why.contains("does not open"), "{}", v.why);
    }

    /// A box the relay sealed itself to b's public key for a: not covered by
    /// a's signature, relayed by the coordinator: the relay, nobody else.
    #[test]
    fn a_box_substituted_by_the_relay_is_the_relays_fault() {
        let mut w = world(false);
        let ctx = SealContext {
            session: w.session.id,
            task_hash: TASK,
            dealer: DEALER,
            recipient: RECIPIENT,
        };
        let forged = consortia_seal::seal(&ctx, &w.b_key.public_key, b"garbage").unwrap();
        let forged = SealedSubshares {
            recipient: RECIPIENT,
            dealer_key: forged.dealer_key.to_vec(),
            ciphertext: forged.ciphertext,
        };
        let c = w.complaint(
            ThresholdComplaintKind::Relay,
            Some(forged.clone()),
            Vec::new(),
        );
        let v = w.judge(&forged, &c);
        assert_eq!(v.fault, Fault::Relay, "{}", v.why);
        // Complained about as bad subshares, it is still the relay's.
        let key = w.reveal();
        let c = w.complaint(ThresholdComplaintKind::Subshares, Some(forged.clone()), key);
        assert_eq!(w.judge(&forged, &c).fault, Fault::Relay);
        // A forged box the coordinator never relayed: the complainer.
        let c = w.complaint(ThresholdComplaintKind::Relay, Some(forged), Vec::new());
        assert_eq!(w.judge(&w.boxed, &c).fault, Fault::Complainer);
    }

    /// Unsigned, re-signed by another party, of another dealer or kind, or
    /// with a truncated key: the complainer.
    #[test]
    fn malformed_or_unsigned_evidence_blames_the_complainer() {
        let mut w = world(true);
        let key = w.reveal();
        let good = w.complaint(
            ThresholdComplaintKind::Subshares,
            Some(w.boxed.clone()),
            key.clone(),
        );
        assert_eq!(w.judge(&w.boxed, &good).fault, Fault::Dealer);
        let mut unsigned = good.clone();
        unsigned.signature[6] ^= 1;
        let mut stripped = good.clone();
        stripped.signature.clear();
        let mut short_key = good.clone();
        short_key.recipient_key.pop();
        let mut other_dealer = good.clone();
        other_dealer.dealer = 2;
        let mut unknown = good.clone();
        unknown.kind = 9;
        let mut no_box = good.clone();
        no_box.sealed = None;
        let resigned = w.complaint(ThresholdComplaintKind::Subshares, None, key);
        for (what, c) in [
            ("a flipped signature", unsigned),
            ("no signature", stripped),
            ("a 31-byte key", short_key),
            ("another dealer", other_dealer),
            ("an unknown kind", unknown),
            ("no box", no_box),
            ("no box, signed", resigned),
        ] {
            let v = w.judge(&w.boxed, &c);
            assert_eq!(v.fault, Fault::Complainer, "{what}: {}", v.why);
        }
        // Signed by c instead of b.
        let mut by_c = good;
        let evidence = threshold_complaint_evidence_digest(
            by_c.kind,
            &sealed_subshares_digest(&w.session.id, &TASK, DEALER, &w.boxed),
            &by_c.recipient_key,
        );
        let digest =
            threshold_complaint_digest(&w.session.id, &TASK, DEALER, RECIPIENT, "b", &evidence);
        by_c.signature = w.signers[2].sign_hash(&digest).unwrap();
        assert_eq!(w.judge(&w.boxed, &by_c).fault, Fault::Complainer);
    }

    /// A revealed key other than the one b signed for a (which could open a
    /// box of the complainer's making): the complainer, even when the
    /// dealer's box is bad.
    #[test]
    fn a_revealed_key_other_than_the_signed_one_blames_the_complainer() {
        let w = world(true);
        let other = RecipientKeys::new([DEALER])
            .unwrap()
            .reveal(DEALER)
            .unwrap()
            .to_vec();
        let c = w.complaint(
            ThresholdComplaintKind::Subshares,
            Some(w.boxed.clone()),
            other,
        );
        let v = w.judge(&w.boxed, &c);
        assert_eq!(v.fault, Fault::Complainer, "{}", v.why);
        assert!(
            v.why.contains("not the one the complainer signed"),
            "{}",
            v.why
        );
    }

    /// The coordinator's own check of a dealing as sent: the honest one
    /// passes; a box other than the signed one, or a signature that does not
    /// verify, is the dealer's fault.
    #[test]
    fn a_dealing_sent_unsigned_or_with_an_unsigned_box_is_the_dealers_fault() {
        let w = world(false);
        let empty = ThresholdComplaint::default();
        let case = |dealing| Case {
            session: &w.session,
            task_hash: &TASK,
            committee: &w.committee,
            names: &w.names,
            transcript: &w.transcript,
            recipient: RECIPIENT,
            dealing,
            relayed: None,
            recipient_key: None,
            complaint: &empty,
        };
        assert_eq!(check_sent(&case(&w.dealing), DEALER, [&w.boxed]), None);
        let mut other = w.boxed.clone();
        other.ciphertext[0] ^= 1;
        let v = check_sent(&case(&w.dealing), DEALER, [&other]).unwrap();
        assert_eq!(v.fault, Fault::Dealer);
        assert!(v.why.contains("box"), "{}", v.why);
        let mut unsigned = w.dealing.clone();
        unsigned.signature[5] ^= 1;
        let v = check_sent(&case(&unsigned), DEALER, [&w.boxed]).unwrap();
        assert_eq!(v.fault, Fault::Dealer);
        assert!(v.why.contains("not signed"), "{}", v.why);
    }

    /// The evidence digest is the one the complaint's signature covers.
    #[test]
    fn the_verdict_names_the_evidence_digest() {
        let mut w = world(true);
        let key = w.reveal();
        let c = w.complaint(
            ThresholdComplaintKind::Subshares,
            Some(w.boxed.clone()),
            key.clone(),
        );
        let v = w.judge(&w.boxed, &c);
        let want = threshold_complaint_evidence_digest(
            ThresholdComplaintKind::Subshares as i32,
            &sealed_subshares_digest(&w.session.id, &TASK, DEALER, &w.boxed),
            &key,
        );
        assert_eq!(v.evidence, want);
    }
}
