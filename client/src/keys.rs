//! The partner's part in encrypted aggregation: its secret key share, the
//! federation key it installed ([`InstalledKey`]: the shared
//! [`consortia_proto::FederationKey`] with this partner's secret share and
//! records), and its partial decryptions.
//!
//! Key material lives in `<state_dir>/keys/`:
//! * `<session>.secret` — this partner's secret key share, mode 0600, never
//!   sent anywhere (`consortia_he::SecretKeyShare::save`);
//! * `<session>.public` — the federation key as installed (key, committee,
//!   transcript), in the stored form the coordinator also writes
//!   ([`consortia_proto::FederationKey::to_json`]);
//! * `<session>.answered` — digests of every aggregate this partner has
//!   partially decrypted, appended and synced *before* the share leaves, so
//!   no aggregate is ever decrypted twice, across restarts too;
//! * `<session>.used` — every (round, attempt) this key holder decrypted and
//!   every contribution (partner, round, attempt) in those sums: a key holder
//!   answers at most one decryption per (round, attempt), with attempts
//!   strictly increasing, and never opens a sum that reuses a contribution —
//!   so a coordinator cannot open {A, B, C, D} and then {A, B, C} and subtract;
//! * `<session>.signed` — every (round, attempt) this partner signed an
//!   update for: it never signs two updates for one (round, attempt).
//!
//! The collective key is authenticated: each key holder signs its public
//! share (with the session, its party number, its name and the task's
//! canonical hash, [`consortia_proto::key_share_digest`]) with its
//! certificate key; every partner checks the whole transcript against the
//! federation CA and the committee, recomputes the key from it and installs
//! only that key. A coordinator that swaps in a key it holds the secret of,
//! or sends different tasks to different partners, is refused.
//!
//! A decryption request is honoured only after the partner has summed the
//! contributors' ciphertexts itself and found at least the task's
//! `min_partners` distinct updates in the sum (Mouchet et al., PoPETs 2021,
//! §4: the decryptor must know what it decrypts), each signed by the partner
//! named for it with the key of a certificate the federation CA issued — so
//! the coordinator can neither pass one partner's update off as a sum nor pad
//! it with updates of its own making.

use std::collections::HashSet;
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use consortia_he::{
    Aggregate, CollectiveKeyAggregator, HeParams, KeySession, KeyShare, KeyShareGen,
    PartialDecryptor, PartyId, PublicKeyShare, SecretKeyShare, Shape,
};
use consortia_ledger::{Signer, Verifier};
use consortia_model::TaskSpec;
use consortia_proto::federation_key::{parse_params, parse_session_id};
use consortia_proto::{
    CiphertextChunk, CollectiveKey, ContributionDigest, DecryptRequest, FederationKey,
    FederationKeyError, KeyGenRequest, key_share_digest, sha256,
};

use crate::AgentError;
use crate::policy::Policy;

/// Most contributors a decryption request may name.
const MAX_CONTRIBUTORS: usize = 1024;

fn key_err(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Protocol(format!("{what}: {e}"))
}

fn session_id(bytes: &[u8]) -> Result<[u8; 32], AgentError> {
    parse_session_id(bytes).map_err(|e| AgentError::Protocol(format!("key generation: {e}")))
}

fn params(id: u32) -> Result<HeParams, AgentError> {
    parse_params(id).map_err(|e| AgentError::Protocol(format!("key generation: {e}")))
}

/// The federation key this partner installed: the shared public key
/// material (key, committee, transcript; read through `Deref`), this
/// partner's secret share when it is a key holder, and its records under
/// the key.
pub struct InstalledKey {
    /// The federation key, checked (structure, transcript signatures, sum of
    /// the shares) before it was installed.
    pub public: FederationKey,
    /// This partner's secret share, when it is a key holder.
    secret: Option<SecretKeyShare>,
    answered_path: PathBuf,
    used_path: PathBuf,
    signed_path: PathBuf,
}

impl std::fmt::Debug for InstalledKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstalledKey")
            .field("key_id", &hex::encode(self.public.key_id()))
            .field("committee", &self.public.committee)
            .field("key_holder", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl InstalledKey {
    /// True when this partner holds a share of the decryption key.
    pub fn is_key_holder(&self) -> bool {
        self.secret.is_some()
    }
}

impl Deref for InstalledKey {
    type Target = FederationKey;

    /// The public key material (`installed.key`, `installed.committee`).
    fn deref(&self) -> &FederationKey {
        &self.public
    }
}

/// This partner's key material.
pub struct KeyHolder {
    dir: PathBuf,
    partner: String,
    signer: Option<Signer>,
    ca: Option<Vec<u8>>,
    pending: Option<(KeySession, KeyShare)>,
    /// The federation key, once distributed and installed.
    pub current: Option<InstalledKey>,
}

/// A partial decryption being prepared: the key holder's own sum of the
/// contributors' ciphertexts.
pub struct DecryptJob {
    round: u64,
    attempt: u64,
    task_hash: [u8; 32],
    key_id: [u8; 32],
    /// Each contributor: name, example count, its certificate's key, its signature.
    signed: Vec<(String, u64, Verifier, Vec<u8>)>,
    running: Option<ContributionDigest>,
    contributors: usize,
    min: u32,
    digest: [u8; 32],
    aggregate: Aggregate,
    next: (u32, u32),
    chunks: u32,
}

impl KeyHolder {
    /// Key material of `partner` under `state_dir/keys`.
    pub fn new(state_dir: &Path, partner: &str) -> Self {
        KeyHolder {
            dir: state_dir.join("keys"),
            partner: partner.to_string(),
            signer: None,
            ca: None,
            pending: None,
            current: None,
        }
    }

    /// Signs updates with the partner's TLS key and checks other partners'
    /// signatures against the federation CA.
    pub fn with_identity(mut self, tls_key: &Path, ca_cert: &Path) -> Result<Self, AgentError> {
        self.signer =
            Some(
                Signer::from_pkcs8_pem_file(tls_key).map_err(|e| AgentError::Config {
                    path: tls_key.to_path_buf(),
                    message: format!("cannot load the key that signs encrypted updates: {e}"),
                })?,
            );
        self.ca = Some(
            consortia_pki::read_ca_certificate(ca_cert).map_err(|message| AgentError::Config {
                path: ca_cert.to_path_buf(),
                message,
            })?,
        );
        Ok(self)
    }

    /// This partner's signature of its encrypted update (the chunks of
    /// `shape` in wire form) for attempt `attempt` of `round` of the task
    /// with hash `task_hash`. Refuses a second update for the same (round,
    /// attempt) under the installed key, across restarts (the record is
    /// synced before the signature is returned).
    pub fn sign_update(
        &self,
        shape: &Shape,
        task_hash: &[u8; 32],
        round: u64,
        attempt: u64,
        example_count: u64,
        chunks: &[Vec<u8>],
    ) -> Result<Vec<u8>, AgentError> {
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("no signing key loaded".into()))?;
        let fed = self.current.as_ref().ok_or_else(|| {
            AgentError::Protocol("no collective key installed to sign an update under".into())
        })?;
        let tag = format!("{round} {attempt}");
        if read_lines(&fed.signed_path)?.iter().any(|l| l == &tag) {
            return Err(AgentError::Protocol(format!(
                "this partner already signed an update for attempt {attempt} of round {round}: \
                 it signs at most one per attempt"
            )));
        }
        let mut d = ContributionDigest::new(
            &shape.key_id,
            task_hash,
            round,
            attempt,
            &self.partner,
            example_count,
        );
        for (index, c) in chunks.iter().enumerate() {
            let (masks, bodies) = shape
                .chunk_parts(index as u32, c)
                .map_err(|e| key_err("cannot sign the update", e))?;
            d.chunk(&sha256(masks), &sha256(bodies));
        }
        append_lines(&fed.signed_path, &[tag])?;
        signer
            .sign_hash(&d.finish())
            .map_err(|e| AgentError::Protocol(format!("cannot sign the update: {e}")))
    }

    /// True when this partner already signed an update for (`round`,
    /// `attempt`) under the installed key.
    pub fn has_signed(&self, round: u64, attempt: u64) -> Result<bool, AgentError> {
        match &self.current {
            Some(fed) => Ok(read_lines(&fed.signed_path)?
                .iter()
                .any(|l| l == &format!("{round} {attempt}"))),
            None => Ok(false),
        }
    }

    fn path(&self, session: &[u8; 32], ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", hex::encode(session)))
    }

    fn create_dir(&self) -> Result<(), AgentError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| AgentError::Config {
            path: self.dir.clone(),
            message: format!("cannot create the key directory: {e}"),
        })
    }

    /// Key generation step 1: checks the request against the partner's
    /// policy, draws this partner's secret share, stores it (0600) and
    /// returns the commitment to its public share.
    pub fn keygen(
        &mut self,
        req: &KeyGenRequest,
        task: &TaskSpec,
        policy: &Policy,
    ) -> Result<[u8; 32], AgentError> {
        let id = session_id(&req.session_id)?;
        let params = params(req.params)?;
        policy.admit_he_params(task, params)?;
        check_committee(&req.committee, task, policy)?;
        let session = KeySession::new(params, id);
        if req.committee.get(req.party as usize) != Some(&self.partner)
            || req.committee.len() != req.parties as usize
        {
            return Err(AgentError::Protocol(format!(
                "key generation names `{}` party {} of {}, which is not this partner (`{}`)",
                req.committee
                    .get(req.party as usize)
                    .map_or("nobody", |s| s),
                req.party,
                req.parties,
                self.partner
            )));
        }
        let share = KeyShareGen::new(&session).generate(PartyId(req.party));
        self.create_dir()?;
        share
            .secret
            .save(&self.path(&id, "secret"))
            .map_err(|e| key_err("cannot store the secret key share", e))?;
        let commitment = share.commitment.0;
        self.pending = Some((session, share));
        Ok(commitment)
    }

    /// Key generation step 2: the public share committed to in step 1, and
    /// this partner's signature of it for the task with hash `task_hash`.
    pub fn reveal(
        &self,
        session: &[u8],
        task_hash: &[u8; 32],
    ) -> Result<(Vec<u8>, Vec<u8>), AgentError> {
        let id = session_id(session)?;
        let (s, share) = match &self.pending {
            Some((s, share)) if s.id == id => (s, share),
            _ => {
                return Err(AgentError::Protocol(
                    "asked to reveal a key share this agent did not commit to (it may have restarted): \
                     the coordinator will start key generation again"
                        .into(),
                ));
            }
        };
        let bytes = share.public.to_bytes();
        let digest = key_share_digest(
            &s.id,
            share.public.party().0,
            &self.partner,
            task_hash,
            &bytes,
        );
        let signature = self
            .signer
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("no signing key loaded".into()))?
            .sign_hash(&digest)
            .map_err(|e| AgentError::Protocol(format!("cannot sign the key share: {e}")))?;
        Ok((bytes, signature))
    }

    /// Installs the collective key after checking its transcript: every key
    /// holder's share signed by that key holder for this task, every
    /// certificate issued by the federation CA to the partner named, the
    /// key the sum of the shares, this partner's own share the one it drew.
    /// A key holder loads its secret share.
    ///
    /// The installed key is replaced only by the key of a new, complete and
    /// valid ceremony (the re-key path); a different key under the installed
    /// session is refused.
    pub fn install(
        &mut self,
        msg: &CollectiveKey,
        task: &TaskSpec,
        task_hash: &[u8; 32],
        policy: &Policy,
    ) -> Result<&InstalledKey, AgentError> {
        let refuse =
            |e: FederationKeyError| AgentError::Protocol(format!("federation key refused: {e}"));
        // The policy's refusals first: they name what the partner would have
        // to change.
        let id = parse_session_id(&msg.session_id).map_err(refuse)?;
        let params = parse_params(msg.params).map_err(refuse)?;
        policy.admit_he_params(task, params)?;
        check_committee(&msg.committee, task, policy)?;
        if let Some(cur) = &self.current
            && cur.key.session().id == id
        {
            if cur.key.to_bytes() == msg.key && cur.committee == msg.committee {
                return Ok(self.current.as_ref().expect("checked"));
            }
            return Err(AgentError::Protocol(
                "the coordinator sends a different key for the installed key session: refused"
                    .into(),
            ));
        }
        let public = FederationKey::from_message(msg).map_err(refuse)?;
        self.check_transcript(&public, task_hash)?;
        let secret = match public.party(&self.partner) {
            Some(party) => {
                let path = self.path(&id, "secret");
                let damaged = |e: String| AgentError::KeyShare {
                    path: path.clone(),
                    party: party.0,
                    message: e,
                };
                let secret = SecretKeyShare::load(&path).map_err(|e| damaged(e.to_string()))?;
                if secret.party() != party {
                    return Err(damaged(format!(
                        "the stored secret share is for party {}, the key names this partner party {}",
                        secret.party().0,
                        party.0
                    )));
                }
                // The share must be the secret behind this partner's public share, as
                // signed in the transcript: a damaged share would decrypt garbage.
                let own = public
                    .transcript
                    .get(party.0 as usize)
                    .ok_or_else(|| damaged("the key has no public share for this party".into()))?;
                let session = KeySession::new(params, id);
                PublicKeyShare::from_bytes(&own.public_share, &session)
                    .map_err(|e| damaged(format!("its public share: {e}")))
                    .and_then(|p| {
                        secret
                            .check_public(&p)
                            .map_err(|e| damaged(format!("secret key share file: {e}")))
                    })?;
                Some(secret)
            }
            None => None,
        };
        self.create_dir()?;
        let stored = self.path(&id, "public");
        std::fs::write(&stored, public.to_json()).map_err(|e| AgentError::Config {
            path: stored.clone(),
            message: format!("cannot store the federation key: {e}"),
        })?;
        if self.pending.as_ref().is_some_and(|(s, _)| s.id == id) {
            self.pending = None;
        }
        self.current = Some(InstalledKey {
            public,
            secret,
            answered_path: self.path(&id, "answered"),
            used_path: self.path(&id, "used"),
            signed_path: self.path(&id, "signed"),
        });
        Ok(self.current.as_ref().expect("just set"))
    }

    /// Checks a structurally valid key's transcript against the federation
    /// CA (every share signed for this task by the key holder the committee
    /// names, with a certificate the CA issued to it; this partner's own
    /// share the one it drew) and that the key is the sum of its shares.
    fn check_transcript(
        &self,
        fed: &FederationKey,
        task_hash: &[u8; 32],
    ) -> Result<(), AgentError> {
        let refuse = |why: String| AgentError::Protocol(format!("federation key refused: {why}"));
        // Party order, names and sizes were checked by `FederationKey::from_message`.
        if fed.transcript.len() != fed.committee.len() {
            return Err(refuse(format!(
                "transcript has {} signed shares for a committee of {}",
                fed.transcript.len(),
                fed.committee.len()
            )));
        }
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("no federation CA certificate loaded".into()))?;
        let session = fed.key.session();
        let mut agg = CollectiveKeyAggregator::new(&session, fed.committee.len() as u32)
            .map_err(|e| refuse(e.to_string()))?;
        let mut shares = Vec::with_capacity(fed.transcript.len());
        for (i, (t, name)) in fed.transcript.iter().zip(&fed.committee).enumerate() {
            let who = consortia_pki::verify_partner_certificate(ca, &t.certificate)
                .map_err(|e| refuse(format!("the certificate given for `{name}`: {e}")))?;
            if &who.name != name {
                return Err(refuse(format!(
                    "the certificate given for `{name}` names `{}`",
                    who.name
                )));
            }
            let verifier = Verifier::from_cert_der(&t.certificate)
                .map_err(|e| refuse(format!("certificate of `{name}`: {e}")))?;
            let digest = key_share_digest(&session.id, i as u32, name, task_hash, &t.public_share);
            if !verifier.verify_hash(&digest, &t.signature) {
                return Err(refuse(format!(
                    "the share given as `{name}`'s is not signed by `{name}` for this task \
                     (a forged share, or another task sent to `{name}`)"
                )));
            }
            if name == &self.partner
                && let Some((s, own)) = &self.pending
                && s.id == session.id
                && own.public.to_bytes() != t.public_share
            {
                return Err(refuse(
                    "the share given as this partner's is not the one it drew".into(),
                ));
            }
            let share = PublicKeyShare::from_bytes(&t.public_share, &session)
                .map_err(|e| refuse(format!("share of `{name}`: {e}")))?;
            if share.party() != PartyId(i as u32) {
                return Err(refuse(format!("share of `{name}` is for another party")));
            }
            agg.add_commitment(share.party(), share.commitment())
                .map_err(|e| refuse(e.to_string()))?;
            shares.push(share);
        }
        for share in shares {
            agg.add_share(share.party(), share)
                .map_err(|e| refuse(e.to_string()))?;
        }
        let key = agg.finish().map_err(|e| refuse(e.to_string()))?;
        if key != fed.key {
            return Err(refuse(
                "the key sent is not the sum of the signed shares".into(),
            ));
        }
        Ok(())
    }

    /// Starts a partial decryption: checks the request against the task's
    /// minimum and the key.
    pub fn begin_decrypt(
        &self,
        req: &DecryptRequest,
        floor: u32,
        expected_values: u64,
        task_hash: &[u8; 32],
    ) -> Result<DecryptJob, AgentError> {
        let fed = self.current.as_ref().ok_or_else(|| {
            AgentError::Protocol("decryption asked before the collective key was installed".into())
        })?;
        if fed.secret.is_none() {
            return Err(AgentError::Protocol(
                "decryption asked of a partner that holds no key share".into(),
            ));
        }
        if req.task_hash.as_slice() != task_hash.as_slice() {
            return Err(AgentError::Protocol(format!(
                "decryption of round {} refused: the request is for task hash {}, this partner \
                 admitted {}",
                req.round,
                hex::encode(&req.task_hash),
                hex::encode(task_hash)
            )));
        }
        // The coordinator's figure only ever raises the partner's own floor.
        let min = req.min_contributors.max(floor).max(1);
        let names: Vec<&String> = req.contributions.iter().map(|c| &c.partner).collect();
        let distinct: HashSet<&String> = names.iter().copied().collect();
        if names.len() > MAX_CONTRIBUTORS || distinct.len() != names.len() {
            return Err(AgentError::Protocol(
                "decryption request names a contributor twice (or too many)".into(),
            ));
        }
        if (distinct.len() as u32) < min {
            return Err(AgentError::Protocol(format!(
                "decryption of round {} refused: {} contributors, the task needs at least {min}",
                req.round,
                distinct.len()
            )));
        }
        if req.values != expected_values {
            return Err(AgentError::Protocol(format!(
                "decryption request for {} values; this task's updates have {expected_values}",
                req.values
            )));
        }
        let digest: [u8; 32] = req
            .aggregate_digest
            .as_slice()
            .try_into()
            .map_err(|_| AgentError::Protocol("aggregate digest is not 32 bytes".into()))?;
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("no federation CA certificate loaded".into()))?;
        let mut signed = Vec::with_capacity(req.contributions.len());
        for c in &req.contributions {
            let who = consortia_pki::verify_partner_certificate(ca, &c.certificate).map_err(|e| {
                AgentError::Protocol(format!(
                    "decryption of round {} refused: the certificate given for `{}` is not one of \
                     this federation's partner certificates ({e})",
                    req.round, c.partner
                ))
            })?;
            if who.name != c.partner {
                return Err(AgentError::Protocol(format!(
                    "decryption of round {} refused: the certificate given for `{}` names `{}`",
                    req.round, c.partner, who.name
                )));
            }
            let verifier = Verifier::from_cert_der(&c.certificate)
                .map_err(|e| key_err(&format!("certificate of `{}`", c.partner), e))?;
            signed.push((
                c.partner.clone(),
                c.example_count,
                verifier,
                c.signature.clone(),
            ));
        }
        let used = read_lines(&fed.used_path)?;
        check_fresh(&used, req)?;
        // Each release publishes flooded coefficients; the flooding's security
        // argument holds for a bounded number of them per key (`privacy::he`).
        let answered = used.iter().filter(|l| l.starts_with("answered ")).count() as u64;
        let budget = fed.key.params().max_releases_per_key(req.values);
        if answered >= budget {
            return Err(AgentError::Protocol(format!(
                "decryption of round {} refused: this key holder has already decrypted {answered} \
                 sums under the federation key, the most its flooding tolerates for updates of \
                 {} values; the coordinator must make a new key",
                req.round, req.values
            )));
        }
        let shape = Shape::new(&fed.key, req.values).map_err(|e| key_err("ciphertext shape", e))?;
        let aggregate = Aggregate::new(shape).map_err(|e| key_err("aggregate", e))?;
        Ok(DecryptJob {
            round: req.round,
            attempt: req.attempt,
            task_hash: *task_hash,
            key_id: fed.key.key_id(),
            signed,
            running: None,
            contributors: req.contributions.len(),
            min,
            digest,
            chunks: shape.chunks(),
            aggregate,
            next: (0, 0),
        })
    }

    /// Finishes a partial decryption once every ciphertext is in: compares the
    /// own sum with the coordinator's digest, records the digest as answered
    /// (durably) and returns the share's wire form.
    pub fn finish_decrypt(&self, job: DecryptJob) -> Result<Vec<u8>, AgentError> {
        let fed = self.current.as_ref().ok_or_else(|| {
            AgentError::Protocol("decryption asked before the collective key was installed".into())
        })?;
        let secret = fed
            .secret
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("not a key holder".into()))?;
        if !job.complete() {
            return Err(AgentError::Protocol(format!(
                "decryption of round {}: ciphertexts missing",
                job.round
            )));
        }
        if job.aggregate.contributors() as usize != job.contributors {
            return Err(AgentError::Protocol(format!(
                "decryption of round {}: the ciphertexts sum {} updates, the request names {}",
                job.round,
                job.aggregate.contributors(),
                job.contributors
            )));
        }
        if job.aggregate.mask_digest() != job.digest {
            return Err(AgentError::Protocol(format!(
                "decryption of round {} refused: the sum of the contributors' ciphertexts is not \
                 the aggregate the coordinator asks to open",
                job.round
            )));
        }
        let answered = read_answered(&fed.answered_path)?;
        // Checked again right before the share is made: nothing answered
        // since `begin_decrypt` may be reused.
        let used = read_lines(&fed.used_path)?;
        let names: Vec<&str> = job.signed.iter().map(|(n, ..)| n.as_str()).collect();
        check_fresh_parts(&used, job.round, job.attempt, &names)?;
        let mut decryptor = PartialDecryptor::new(secret);
        decryptor.remember(answered);
        let share = decryptor
            .partial_decrypt(&job.aggregate, job.min)
            .map_err(|e| key_err(&format!("decryption of round {} refused", job.round), e))?;
        // Durable before the share leaves: this (round, attempt) and every
        // contribution in the sum are never opened again.
        let mut lines = vec![format!("answered {} {}", job.round, job.attempt)];
        lines.extend(
            names
                .iter()
                .map(|n| format!("contribution {} {} {n}", job.round, job.attempt)),
        );
        append_lines(&fed.used_path, &lines)?;
        append_answered(&fed.answered_path, &job.digest)?;
        Ok(share.to_bytes())
    }
}

impl DecryptJob {
    /// The round being decrypted.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// True once every contributor's every chunk is in.
    pub fn complete(&self) -> bool {
        self.next.0 as usize == self.contributors
    }

    /// Adds the next ciphertext chunk (contributor by contributor, chunk by chunk).
    pub fn add(&mut self, c: &CiphertextChunk) -> Result<(), AgentError> {
        if c.round != self.round || (c.contributor, c.index) != self.next {
            return Err(AgentError::Protocol(format!(
                "ciphertext chunk (round {}, contributor {}, chunk {}) out of order",
                c.round, c.contributor, c.index
            )));
        }
        let Some((partner, examples, verifier, signature)) =
            self.signed.get(c.contributor as usize)
        else {
            return Err(AgentError::Protocol(format!(
                "ciphertext chunk for contributor {} of {}",
                c.contributor, self.contributors
            )));
        };
        if c.index == 0 {
            self.running = Some(ContributionDigest::new(
                &self.key_id,
                &self.task_hash,
                self.round,
                self.attempt,
                partner,
                *examples,
            ));
        }
        let body_hash: [u8; 32] = c
            .body_hash
            .as_slice()
            .try_into()
            .map_err(|_| AgentError::Protocol("a chunk's body hash is not 32 bytes".into()))?;
        let masks = self
            .aggregate
            .add_mask_bytes(c.index, &c.masks)
            .map_err(|e| key_err("contributor ciphertext refused", e))?;
        let masks_hash = sha256(masks);
        let running = self
            .running
            .as_mut()
            .ok_or_else(|| AgentError::Protocol("ciphertext chunk out of order".into()))?;
        running.chunk(&masks_hash, &body_hash);
        if c.index + 1 == self.chunks {
            let d = self.running.take().expect("digest present").finish();
            if !verifier.verify_hash(&d, signature) {
                return Err(AgentError::Protocol(format!(
                    "decryption of round {} refused: the update given as `{partner}`'s is not signed by `{partner}`",
                    self.round
                )));
            }
            self.next = (c.contributor + 1, 0);
        } else {
            self.next = (c.contributor, c.index + 1);
        }
        Ok(())
    }
}

/// Refuses a committee too small for the colluders assumed, or whose names
/// are not valid ([`consortia_proto::federation_key::check_committee`]: a
/// partner named twice, an empty or overlong name).
fn check_committee(
    committee: &[String],
    task: &TaskSpec,
    policy: &Policy,
) -> Result<(), AgentError> {
    let floor = policy.key_holder_floor(task);
    if (committee.len() as u32) < floor {
        return Err(crate::policy::PolicyViolation {
            task: task.name.clone(),
            field: "key holders",
            task_value: committee.len().to_string(),
            policy_value: format!(
                "requires at least {floor} (more than the colluders assumed, so that every key \
                 has an honest holder)"
            ),
        }
        .into());
    }
    consortia_proto::federation_key::check_committee(committee)
        .map_err(|e| AgentError::Protocol(format!("the key {e}")))
}

/// Refuses a decryption whose (round, attempt) is not newer than every one
/// answered for that round, or whose sum reuses a contribution.
fn check_fresh(used: &[String], req: &DecryptRequest) -> Result<(), AgentError> {
    let names: Vec<&str> = req
        .contributions
        .iter()
        .map(|c| c.partner.as_str())
        .collect();
    check_fresh_parts(used, req.round, req.attempt, &names)
}

fn check_fresh_parts(
    used: &[String],
    round: u64,
    attempt: u64,
    names: &[&str],
) -> Result<(), AgentError> {
    for line in used {
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        let num = |i: usize| parts.get(i).and_then(|x| x.parse::<u64>().ok());
        match (parts.first().copied(), num(1), num(2)) {
            (Some("answered"), Some(r), Some(a)) if r == round && a >= attempt => {
                return Err(AgentError::Protocol(format!(
                    "decryption of attempt {attempt} of round {round} refused: this key holder \
                     already decrypted attempt {a} of that round (one decryption per attempt, \
                     attempts strictly increasing)"
                )));
            }
            (Some("contribution"), Some(r), Some(a)) if r == round && a == attempt => {
                if let Some(p) = parts.get(3)
                    && names.contains(p)
                {
                    return Err(AgentError::Protocol(format!(
                        "decryption of round {round} refused: `{p}`'s update of attempt {attempt} \
                         was already in a sum this key holder decrypted (no contribution is \
                         opened twice)"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn read_lines(path: &Path) -> Result<Vec<String>, AgentError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(AgentError::Config {
            path: path.to_path_buf(),
            message: format!("cannot read the key holder's record: {e}"),
        }),
    }
}

fn append_lines(path: &Path, lines: &[String]) -> Result<(), AgentError> {
    let err = |e: std::io::Error| AgentError::Config {
        path: path.to_path_buf(),
        message: format!("cannot write the key holder's record: {e}"),
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    for l in lines {
        writeln!(f, "{l}").map_err(err)?;
    }
    f.sync_all().map_err(err)
}

fn read_answered(path: &Path) -> Result<Vec<[u8; 32]>, AgentError> {
    read_lines(path)?
        .iter()
        .map(|line| {
            hex::decode(line.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| AgentError::Config {
                    path: path.to_path_buf(),
                    message: format!("corrupt line `{line}` in the decrypted-aggregate record"),
                })
        })
        .collect()
}

fn append_answered(path: &Path, digest: &[u8; 32]) -> Result<(), AgentError> {
    append_lines(path, &[hex::encode(digest)])
}

#[cfg(test)]
mod tests {
    use super::*;

    use consortia_he::{CollectivePublicKey, Encryptor};
    use consortia_proto::{Contribution, SignedKeyShare};

    const HASH: [u8; 32] = [5u8; 32];

    struct Committee {
        _dir: tempfile::TempDir,
        pki: consortia_pki::Pki,
        holders: Vec<KeyHolder>,
        certs: Vec<Vec<u8>>,
        key: CollectivePublicKey,
        msg: CollectiveKey,
        task: TaskSpec,
        policy: Policy,
    }

    fn task() -> TaskSpec {
        let text = include_str!("../../examples/telco_churn_task.toml").replacen(
            "secure_aggregation = false",
            "secure_aggregation = true",
            1,
        );
        TaskSpec::from_toml_str(&text).unwrap()
    }

    /// Runs a key ceremony among `holders` (party order) for session `id`
    /// with every share signed for `hashes[i]`; the message the coordinator
    /// would send.
    fn ceremony(
        holders: &mut [KeyHolder],
        certs: &[Vec<u8>],
        names: &[String],
        id: u8,
        hashes: &[[u8; 32]],
        task: &TaskSpec,
        policy: &Policy,
    ) -> (CollectivePublicKey, CollectiveKey) {
        ceremony_with(
            HeParams::Secure128,
            holders,
            certs,
            names,
            id,
            hashes,
            task,
            policy,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn ceremony_with(
        params: HeParams,
        holders: &mut [KeyHolder],
        certs: &[Vec<u8>],
        names: &[String],
        id: u8,
        hashes: &[[u8; 32]],
        task: &TaskSpec,
        policy: &Policy,
    ) -> (CollectivePublicKey, CollectiveKey) {
        let session_id = vec![id; 32];
        let session = KeySession::new(params, [id; 32]);
        let mut agg = CollectiveKeyAggregator::new(&session, names.len() as u32).unwrap();
        for (i, h) in holders.iter_mut().enumerate() {
            let c = h
                .keygen(
                    &KeyGenRequest {
                        session_id: session_id.clone(),
                        params: u32::from(params.id()),
                        party: i as u32,
                        parties: names.len() as u32,
                        committee: names.to_vec(),
                    },
                    task,
                    policy,
                )
                .unwrap();
            agg.add_commitment(PartyId(i as u32), consortia_he::KeyCommitment(c))
                .unwrap();
        }
        let mut transcript = Vec::new();
        for (i, h) in holders.iter().enumerate() {
            let (bytes, signature) = h.reveal(&session_id, &hashes[i]).unwrap();
            let share = PublicKeyShare::from_bytes(&bytes, &session).unwrap();
            agg.add_share(PartyId(i as u32), share).unwrap();
            transcript.push(SignedKeyShare {
                party: i as u32,
                partner: names[i].clone(),
                public_share: bytes,
                signature,
                certificate: certs[i].clone(),
            });
        }
        let key = agg.finish().unwrap();
        let msg = CollectiveKey {
            session_id,
            params: u32::from(params.id()),
            committee: names.to_vec(),
            key: key.to_bytes(),
            transcript,
        };
        (key, msg)
    }

    /// Three key holders a, b, c with a federation PKI, through the real
    /// commit-then-reveal steps, every share signed.
    fn committee() -> Committee {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let pki = consortia_pki::Pki::init(dir.path().join("pki"), &["127.0.0.1".into()], &names)
            .unwrap();
        let mut holders: Vec<KeyHolder> = names
            .iter()
            .map(|n| {
                KeyHolder::new(&dir.path().join(n), n)
                    .with_identity(&pki.partner_key_path(n), &pki.ca_cert_path())
                    .unwrap()
            })
            .collect();
        let certs: Vec<Vec<u8>> = names
            .iter()
            .map(|n| consortia_pki::read_ca_certificate(&pki.partner_cert_path(n)).unwrap())
            .collect();
        let (task, policy) = (task(), Policy::default());
        let (key, msg) = ceremony(&mut holders, &certs, &names, 7, &[HASH; 3], &task, &policy);
        for h in &mut holders {
            assert!(
                h.install(&msg, &task, &HASH, &policy)
                    .unwrap()
                    .is_key_holder()
            );
        }
        Committee {
            _dir: dir,
            pki,
            holders,
            certs,
            key,
            msg,
            task,
            policy,
        }
    }

    /// A restarted key holder reloads its share: one flipped bit in the file is
    /// refused at load (its checksum), and in a file without a checksum (an
    /// earlier version's) against its public share; either way the error names
    /// the file and says the federation must re-key.
    #[test]
    fn a_damaged_secret_share_is_refused_when_the_key_is_installed() {
        let c = committee();
        let restarted = || {
            KeyHolder::new(&c._dir.path().join("b"), "b")
                .with_identity(&c.pki.partner_key_path("b"), &c.pki.ca_cert_path())
                .unwrap()
        };
        let file = restarted().path(&[7; 32], "secret");
        let bytes = std::fs::read(&file).unwrap();
        restarted()
            .install(&c.msg, &c.task, &HASH, &c.policy)
            .unwrap();
        // The 40th secret bit (header 8, session 32, party 4 bytes before it).
        let at = 8 + 32 + 4 + 40;
        let secret_len = bytes.len() - 32;
        for (contents, want) in [
            (bytes.clone(), "checksum"),
            (
                bytes[..secret_len].to_vec(),
                "not the secret behind party 1",
            ),
        ] {
            let mut damaged = contents;
            damaged[at] ^= 1;
            std::fs::write(&file, &damaged).unwrap();
            let e = restarted()
                .install(&c.msg, &c.task, &HASH, &c.policy)
                .unwrap_err();
            assert!(matches!(e, AgentError::KeyShare { party: 1, .. }), "{e}");
            let e = e.to_string();
            assert!(
                e.contains(&file.display().to_string())
                    && e.contains(want)
                    && e.contains("consortia rekey"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_key_without_a_valid_signed_transcript_is_refused() {
        let mut c = committee();
        // An outsider (the coordinator) with its own key: no transcript.
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut fresh: Vec<KeyHolder> = names
            .iter()
            .map(|n| {
                KeyHolder::new(&dir.path().join(n), n)
                    .with_identity(&c.pki.partner_key_path(n), &c.pki.ca_cert_path())
                    .unwrap()
            })
            .collect();
        let (_, mut swapped) = ceremony(
            &mut fresh[..],
            &c.certs,
            &names,
            9,
            &[HASH; 3],
            &c.task,
            &c.policy,
        );
        let full = swapped.clone();
        swapped.transcript.clear();
        let outsider = &mut c.holders[0];
        let e = outsider
            .install(&swapped, &c.task, &HASH, &c.policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("transcript"), "{e}");
        // A forged transcript: b's share replaced by one the coordinator drew,
        // with b's certificate and b's old signature.
        let mut forged = full.clone();
        let session = KeySession::new(HeParams::Secure128, [9; 32]);
        let mine = consortia_he::KeyShareGen::new(&session).generate(PartyId(1));
        forged.transcript[1].public_share = mine.public.to_bytes();
        let e = outsider
            .install(&forged, &c.task, &HASH, &c.policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not signed by `b`"), "{e}");
        // A key that is not the sum of the shares.
        let mut wrong = full.clone();
        wrong.key = c.key.to_bytes();
        wrong.session_id = vec![9; 32];
        let e = outsider
            .install(&wrong, &c.task, &HASH, &c.policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("federation key refused"), "{e}");
        // A different key under the installed session.
        let mut same_session = c.msg.clone();
        same_session.key = full.key.clone();
        let e = outsider
            .install(&same_session, &c.task, &HASH, &c.policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("installed key session"), "{e}");
        // Shares signed for another task (another task sent to `c`).
        let (_, other_task) = ceremony(
            &mut fresh[..],
            &c.certs,
            &names,
            10,
            &[HASH, HASH, [6u8; 32]],
            &c.task,
            &c.policy,
        );
        let e = outsider
            .install(&other_task, &c.task, &HASH, &c.policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not signed by `c` for this task"), "{e}");
        // Fast64 and a one-holder committee are outside the default policy.
        let mut fast = full.clone();
        fast.params = 2;
        let e = outsider
            .install(&fast, &c.task, &HASH, &c.policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fast64"), "{e}");
        // The re-key path: a complete, valid new ceremony that this partner
        // took part in replaces the key.
        let (new_key, rekey) = ceremony(
            &mut c.holders[..],
            &c.certs,
            &names,
            11,
            &[HASH; 3],
            &c.task,
            &c.policy,
        );
        let a = &mut c.holders[0];
        assert!(
            a.install(&rekey, &c.task, &HASH, &c.policy)
                .unwrap()
                .is_key_holder()
        );
        assert_eq!(a.current.as_ref().unwrap().key.key_id(), new_key.key_id());
    }

    #[test]
    fn the_installed_key_is_the_shared_type_and_stored_in_its_form() {
        let c = committee();
        let fed = c.holders[0].current.as_ref().unwrap();
        assert_eq!(fed.public.to_message(), c.msg);
        assert_eq!(fed.party("b"), Some(PartyId(1)));
        let path = c.holders[0].path(&fed.key.session().id, "public");
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(FederationKey::from_json(&text).unwrap(), fed.public);
    }

    #[test]
    fn a_malformed_key_is_refused_before_its_signatures_are_checked() {
        let mut c = committee();
        let (task, policy) = (&c.task, &c.policy);
        let a = &mut c.holders[0];
        let mut short = c.msg.clone();
        short.session_id.pop();
        let e = a
            .install(&short, task, &HASH, policy)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("federation key refused: session_id has 31 bytes"),
            "{e}"
        );
        // Another session, its transcript out of party order.
        let mut swapped = c.msg.clone();
        swapped.session_id = vec![13; 32];
        swapped.transcript.swap(0, 1);
        let e = a
            .install(&swapped, task, &HASH, policy)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("federation key refused: transcript entry 0 is party 1 `b`"),
            "{e}"
        );
        let mut twice = c.msg.clone();
        twice.committee[2] = "a".into();
        let e = a
            .install(&twice, task, &HASH, policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("committee names `a` twice"), "{e}");
    }

    const VALUES: usize = 100;

    /// An update as the coordinator relays it: partner name, index of the
    /// certificate given for it, ciphertext chunks, signature.
    type Relayed<'a> = (&'a str, usize, Vec<Vec<u8>>, Vec<u8>);

    fn chunks(key: &CollectivePublicKey, value: u64) -> Vec<Vec<u8>> {
        Encryptor::new(key)
            .encrypt(&[value; VALUES])
            .unwrap()
            .chunks()
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// Runs holder 0's side of a decryption of `updates` (name, cert index,
    /// chunks, signature) for (round 4, `attempt`); the result of its
    /// partial decryption.
    fn decrypt(
        c: &Committee,
        attempt: u64,
        updates: &[Relayed<'_>],
    ) -> Result<Vec<u8>, AgentError> {
        let shape = Shape::new(&c.key, VALUES as u64).unwrap();
        let mut agg = Aggregate::new(shape).unwrap();
        for (_, _, ch, _) in updates {
            for (i, b) in ch.iter().enumerate() {
                agg.add_bytes(i as u32, b).unwrap();
            }
        }
        let req = request(c, updates, 1, agg.mask_digest(), attempt, HASH);
        let mut job = c.holders[0].begin_decrypt(&req, 3, VALUES as u64, &HASH)?;
        for (k, (_, _, ch, _)) in updates.iter().enumerate() {
            for (i, b) in ch.iter().enumerate() {
                let (masks, bodies) = shape.chunk_parts(i as u32, b).unwrap();
                job.add(&CiphertextChunk {
                    round: 4,
                    contributor: k as u32,
                    index: i as u32,
                    masks: shape.mask_chunk(i as u32, masks),
                    body_hash: sha256(bodies).to_vec(),
                })?;
            }
        }
        c.holders[0].finish_decrypt(job)
    }

    /// The decryption request of round 4 for `updates` as the coordinator
    /// sends it.
    fn request(
        c: &Committee,
        updates: &[Relayed<'_>],
        min_contributors: u32,
        digest: [u8; 32],
        attempt: u64,
        task_hash: [u8; 32],
    ) -> DecryptRequest {
        DecryptRequest {
            round: 4,
            contributions: updates
                .iter()
                .map(|(name, cert, _, sig)| Contribution {
                    partner: name.to_string(),
                    example_count: 100,
                    signature: sig.clone(),
                    certificate: c.certs[*cert].clone(),
                })
                .collect(),
            min_contributors,
            aggregate_digest: digest.to_vec(),
            values: VALUES as u64,
            attempt,
            task_hash: task_hash.to_vec(),
        }
    }

    fn genuine<'a>(c: &Committee, attempt: u64, n: usize) -> Vec<Relayed<'a>> {
        let kid = Shape::new(&c.key, VALUES as u64).unwrap();
        (0..n)
            .map(|i| {
                let ch = chunks(&c.key, i as u64 + 1);
                let sig = c.holders[i % 3]
                    .sign_update(&kid, &HASH, 4, attempt, 100, &ch)
                    .unwrap();
                (["a", "b", "c"][i % 3], i % 3, ch, sig)
            })
            .collect()
    }

    #[test]
    fn key_holders_open_only_sums_of_signed_updates() {
        let c = committee();
        let kid = Shape::new(&c.key, VALUES as u64).unwrap();
        let genuine = genuine(&c, 1, 3);

        // The coordinator pads a's update with one of its own making, given as c's.
        let mut padded = genuine.clone();
        let made_up = chunks(&c.key, 0);
        padded[2] = ("c", 2, made_up.clone(), genuine[2].3.clone());
        let e = decrypt(&c, 1, &padded).unwrap_err().to_string();
        assert!(e.contains("not signed by `c`"), "{e}");
        // Or signs it itself with another partner's certificate.
        let sig_b = c.holders[1]
            .sign_update(&kid, &HASH, 4, 9, 100, &made_up)
            .unwrap();
        let mut wrong_cert = genuine.clone();
        wrong_cert[2] = ("c", 1, made_up.clone(), sig_b);
        let e = decrypt(&c, 1, &wrong_cert).unwrap_err().to_string();
        assert!(e.contains("names `b`"), "{e}");
        // A signature for another round or attempt does not carry over.
        let mut replayed = genuine.clone();
        replayed[1].3 = c.holders[1]
            .sign_update(&kid, &HASH, 3, 1, 100, &genuine[1].2)
            .unwrap();
        let e = decrypt(&c, 1, &replayed).unwrap_err().to_string();
        assert!(e.contains("not signed by `b`"), "{e}");
        // Fewer contributors than the partner's own floor, whatever the request says.
        let e = decrypt(&c, 1, &genuine[..2]).unwrap_err().to_string();
        assert!(e.contains("at least 3"), "{e}");

        // Three signed updates: the share comes, once.
        assert!(decrypt(&c, 1, &genuine).is_ok());
        let e = decrypt(&c, 1, &genuine).unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
    }

    #[test]
    fn a_key_holder_stops_decrypting_when_the_keys_release_budget_is_spent() {
        // Fast64's flooding tolerates no release at the stated loss
        // (`HeParams::max_releases_per_key` is 0), so its first is refused.
        let mut c = committee();
        let policy = Policy {
            allowed_he_params: [
                crate::policy::HeParamsName::Secure128,
                crate::policy::HeParamsName::Fast64,
            ]
            .into(),
            ..Policy::default()
        };
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let (key, msg) = ceremony_with(
            HeParams::Fast64,
            &mut c.holders[..],
            &c.certs,
            &names,
            12,
            &[HASH; 3],
            &c.task,
            &policy,
        );
        for h in &mut c.holders {
            h.install(&msg, &c.task, &HASH, &policy).unwrap();
        }
        assert_eq!(HeParams::Fast64.max_releases_per_key(VALUES as u64), 0);
        c.key = key;
        let e = decrypt(&c, 1, &genuine(&c, 1, 3)).unwrap_err().to_string();
        assert!(e.contains("most its flooding tolerates"), "{e}");
    }

    #[test]
    fn partners_sign_one_update_per_attempt() {
        let c = committee();
        let kid = Shape::new(&c.key, VALUES as u64).unwrap();
        let ch = chunks(&c.key, 1);
        c.holders[0]
            .sign_update(&kid, &HASH, 4, 1, 100, &ch)
            .unwrap();
        assert!(c.holders[0].has_signed(4, 1).unwrap());
        let e = c.holders[0]
            .sign_update(&kid, &HASH, 4, 1, 100, &ch)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already signed"), "{e}");
        assert!(
            c.holders[0]
                .sign_update(&kid, &HASH, 4, 2, 100, &ch)
                .is_ok()
        );
    }

    #[test]
    fn nested_sums_and_reruns_that_share_contributions_are_refused() {
        let c = committee();
        // Attempt 1 signs four updates (a, b, c, and a second set never opened).
        let first = genuine(&c, 1, 3);
        assert!(decrypt(&c, 1, &first).is_ok());
        // The same round and attempt again (a nested subset): refused.
        let e = decrypt(&c, 1, &first[..3]).unwrap_err().to_string();
        assert!(e.contains("already decrypted attempt 1"), "{e}");
        // An older attempt: refused.
        let e = decrypt(&c, 0, &first).unwrap_err().to_string();
        assert!(e.contains("already decrypted attempt 1"), "{e}");
        // A rerun under a new attempt with fresh updates is answered.
        let second = genuine(&c, 2, 3);
        assert!(decrypt(&c, 2, &second).is_ok());
        // The record survives a restart of the key holder.
        let used = read_lines(&c.holders[0].current.as_ref().unwrap().used_path).unwrap();
        assert!(used.contains(&"answered 4 2".to_string()), "{used:?}");
        assert!(used.contains(&"contribution 4 1 a".to_string()), "{used:?}");
    }

    #[test]
    fn a_request_for_another_task_is_refused() {
        let c = committee();
        let ups = genuine(&c, 1, 3);
        let shape = Shape::new(&c.key, VALUES as u64).unwrap();
        let digest = Aggregate::new(shape).unwrap().mask_digest();
        let req = request(&c, &ups, 3, digest, 1, [6u8; 32]);
        let e = c.holders[0]
            .begin_decrypt(&req, 3, VALUES as u64, &HASH)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("task hash"), "{e}");
    }

    #[test]
    fn answered_digests_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.answered");
        assert!(read_answered(&p).unwrap().is_empty());
        append_answered(&p, &[7u8; 32]).unwrap();
        append_answered(&p, &[9u8; 32]).unwrap();
        assert_eq!(read_answered(&p).unwrap(), vec![[7u8; 32], [9u8; 32]]);
        std::fs::write(&p, "zz\n").unwrap();
        assert!(read_answered(&p).is_err());
    }
}
