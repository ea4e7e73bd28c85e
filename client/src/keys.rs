//! The partner's part in encrypted aggregation: its secret key share, the
//! collective public key, and its partial decryptions.
//!
//! Key material lives in `<state_dir>/keys/`:
//! * `<session>.secret` — this partner's secret key share, mode 0600, never
//!   sent anywhere (`consortia_privacy::he::SecretKeyShare::save`);
//! * `<session>.public` — the collective public key and its committee;
//! * `<session>.answered` — digests of every aggregate this partner has
//!   partially decrypted, appended and synced *before* the share leaves, so
//!   no aggregate is ever decrypted twice, across restarts too.
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
use std::path::{Path, PathBuf};

use consortia_ledger::{Signer, Verifier};
use consortia_privacy::he::{
    Aggregate, CollectivePublicKey, HeParams, KeySession, KeyShare, KeyShareGen, PartialDecryptor,
    PartyId, SecretKeyShare, Shape,
};
use consortia_proto::{
    CiphertextChunk, CollectiveKey, ContributionDigest, DecryptRequest, KeyGenRequest, sha256,
};

use crate::AgentError;

/// Most contributors a decryption request may name.
const MAX_CONTRIBUTORS: usize = 1024;

fn key_err(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Protocol(format!("{what}: {e}"))
}

fn session_id(bytes: &[u8]) -> Result<[u8; 32], AgentError> {
    bytes.try_into().map_err(|_| {
        AgentError::Protocol(format!("key session id has {} bytes, not 32", bytes.len()))
    })
}

fn params(id: u32) -> Result<HeParams, AgentError> {
    u8::try_from(id)
        .ok()
        .and_then(HeParams::from_id)
        .ok_or_else(|| AgentError::Protocol(format!("unknown encryption parameter set {id}")))
}

/// The collective key the federation encrypts under, and this partner's place in it.
pub struct FederationKey {
    /// The collective public key.
    pub key: CollectivePublicKey,
    /// Key holders in party order.
    pub committee: Vec<String>,
    /// This partner's secret share, when it is a key holder.
    secret: Option<SecretKeyShare>,
    answered_path: PathBuf,
}

impl FederationKey {
    /// True when this partner holds a share of the decryption key.
    pub fn is_key_holder(&self) -> bool {
        self.secret.is_some()
    }
}

/// This partner's key material.
pub struct KeyHolder {
    dir: PathBuf,
    partner: String,
    signer: Option<Signer>,
    ca: Option<Vec<u8>>,
    pending: Option<(KeySession, KeyShare)>,
    /// The collective key, once distributed.
    pub current: Option<FederationKey>,
}

/// A partial decryption being prepared: the key holder's own sum of the
/// contributors' ciphertexts.
pub struct DecryptJob {
    round: u64,
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
    /// `shape` in wire form) for `round`.
    pub fn sign_update(
        &self,
        shape: &Shape,
        round: u64,
        example_count: u64,
        chunks: &[Vec<u8>],
    ) -> Result<Vec<u8>, AgentError> {
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("no signing key loaded".into()))?;
        let mut d = ContributionDigest::new(&shape.key_id, round, &self.partner, example_count);
        for (index, c) in chunks.iter().enumerate() {
            let (masks, bodies) = shape
                .chunk_parts(index as u32, c)
                .map_err(|e| key_err("cannot sign the update", e))?;
            d.chunk(&sha256(masks), &sha256(bodies));
        }
        signer
            .sign_hash(&d.finish())
            .map_err(|e| AgentError::Protocol(format!("cannot sign the update: {e}")))
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

    /// Key generation step 1: draws this partner's secret share, stores it
    /// (0600) and returns the commitment to its public share.
    pub fn keygen(&mut self, req: &KeyGenRequest) -> Result<[u8; 32], AgentError> {
        let id = session_id(&req.session_id)?;
        let session = KeySession::new(params(req.params)?, id);
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

    /// Key generation step 2: the public share committed to in step 1.
    pub fn reveal(&self, session: &[u8]) -> Result<Vec<u8>, AgentError> {
        let id = session_id(session)?;
        match &self.pending {
            Some((s, share)) if s.id == id => Ok(share.public.to_bytes()),
            _ => Err(AgentError::Protocol(
                "asked to reveal a key share this agent did not commit to (it may have restarted): \
                 the coordinator will start key generation again"
                    .into(),
            )),
        }
    }

    /// Installs the collective key; a key holder loads its secret share.
    pub fn install(&mut self, msg: &CollectiveKey) -> Result<&FederationKey, AgentError> {
        let id = session_id(&msg.session_id)?;
        let session = KeySession::new(params(msg.params)?, id);
        let key = CollectivePublicKey::from_bytes(&msg.key, &session)
            .map_err(|e| key_err("collective key refused", e))?;
        if key.parties() as usize != msg.committee.len() {
            return Err(AgentError::Protocol(format!(
                "collective key of {} parties comes with a committee of {}",
                key.parties(),
                msg.committee.len()
            )));
        }
        let secret = match msg.committee.iter().position(|p| p == &self.partner) {
            Some(party) => {
                let path = self.path(&id, "secret");
                let secret = SecretKeyShare::load(&path).map_err(|e| {
                    AgentError::Protocol(format!(
                        "this partner is key holder {party} of the federation key, but its secret \
                         share cannot be read ({e}); without it no round can be decrypted: ask the \
                         operator to re-key the federation (`consortia rekey`)"
                    ))
                })?;
                if secret.party() != PartyId(party as u32) {
                    return Err(AgentError::Protocol(format!(
                        "the stored secret share is for party {}, the key names this partner party {party}",
                        secret.party().0
                    )));
                }
                Some(secret)
            }
            None => None,
        };
        self.create_dir()?;
        let public = self.path(&id, "public");
        let text = format!("{}\n{}\n", msg.committee.join(","), hex::encode(&msg.key));
        std::fs::write(&public, text).map_err(|e| AgentError::Config {
            path: public.clone(),
            message: format!("cannot store the collective key: {e}"),
        })?;
        if self.pending.as_ref().is_some_and(|(s, _)| s.id == id) {
            self.pending = None;
        }
        self.current = Some(FederationKey {
            key,
            committee: msg.committee.clone(),
            secret,
            answered_path: self.path(&id, "answered"),
        });
        Ok(self.current.as_ref().expect("just set"))
    }

    /// Starts a partial decryption: checks the request against the task's
    /// minimum and the key.
    pub fn begin_decrypt(
        &self,
        req: &DecryptRequest,
        task_min_partners: u32,
        expected_values: u64,
    ) -> Result<DecryptJob, AgentError> {
        let fed = self.current.as_ref().ok_or_else(|| {
            AgentError::Protocol("decryption asked before the collective key was installed".into())
        })?;
        if fed.secret.is_none() {
            return Err(AgentError::Protocol(
                "decryption asked of a partner that holds no key share".into(),
            ));
        }
        let min = req.min_contributors.max(task_min_partners).max(1);
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
        let shape = Shape::new(&fed.key, req.values).map_err(|e| key_err("ciphertext shape", e))?;
        let aggregate = Aggregate::new(shape).map_err(|e| key_err("aggregate", e))?;
        Ok(DecryptJob {
            round: req.round,
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
        let mut decryptor = PartialDecryptor::new(secret);
        decryptor.remember(answered);
        let share = decryptor
            .partial_decrypt(&job.aggregate, job.min)
            .map_err(|e| key_err(&format!("decryption of round {} refused", job.round), e))?;
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
                self.round,
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

fn read_answered(path: &Path) -> Result<Vec<[u8; 32]>, AgentError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(AgentError::Config {
                path: path.to_path_buf(),
                message: format!("cannot read the decrypted-aggregate record: {e}"),
            });
        }
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bytes = hex::decode(line.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        match bytes {
            Some(d) => out.push(d),
            None => {
                return Err(AgentError::Config {
                    path: path.to_path_buf(),
                    message: format!("corrupt line `{line}` in the decrypted-aggregate record"),
                });
            }
        }
    }
    Ok(out)
}

fn append_answered(path: &Path, digest: &[u8; 32]) -> Result<(), AgentError> {
    let err = |e: std::io::Error| AgentError::Config {
        path: path.to_path_buf(),
        message: format!("cannot record the decrypted aggregate: {e}"),
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    writeln!(f, "{}", hex::encode(digest)).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    use consortia_privacy::he::{
        CollectiveKeyAggregator, Encryptor, KeyCommitment, PublicKeyShare,
    };
    use consortia_proto::Contribution;

    struct Committee {
        _dir: tempfile::TempDir,
        holders: Vec<KeyHolder>,
        certs: Vec<Vec<u8>>,
        key: CollectivePublicKey,
    }

    /// Three key holders a, b, c with a federation PKI, through the real
    /// commit-then-reveal steps.
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
        let session_id = vec![7u8; 32];
        let session = KeySession::new(HeParams::Secure128, [7u8; 32]);
        let mut agg = CollectiveKeyAggregator::new(&session, 3).unwrap();
        for (i, h) in holders.iter_mut().enumerate() {
            let c = h
                .keygen(&KeyGenRequest {
                    session_id: session_id.clone(),
                    params: 1,
                    party: i as u32,
                    parties: 3,
                    committee: names.clone(),
                })
                .unwrap();
            agg.add_commitment(PartyId(i as u32), KeyCommitment(c))
                .unwrap();
        }
        for (i, h) in holders.iter().enumerate() {
            let share =
                PublicKeyShare::from_bytes(&h.reveal(&session_id).unwrap(), &session).unwrap();
            agg.add_share(PartyId(i as u32), share).unwrap();
        }
        let key = agg.finish().unwrap();
        let msg = CollectiveKey {
            session_id,
            params: 1,
            committee: names.clone(),
            key: key.to_bytes(),
        };
        for h in &mut holders {
            assert!(h.install(&msg).unwrap().is_key_holder());
        }
        let certs = names
            .iter()
            .map(|n| consortia_pki::read_ca_certificate(&pki.partner_cert_path(n)).unwrap())
            .collect();
        Committee {
            _dir: dir,
            holders,
            certs,
            key,
        }
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
    /// chunks, signature); the result of its partial decryption.
    fn decrypt(c: &Committee, updates: &[Relayed<'_>]) -> Result<Vec<u8>, AgentError> {
        let shape = Shape::new(&c.key, VALUES as u64).unwrap();
        let mut agg = Aggregate::new(shape).unwrap();
        for (_, _, ch, _) in updates {
            for (i, b) in ch.iter().enumerate() {
                agg.add_bytes(i as u32, b).unwrap();
            }
        }
        let req = DecryptRequest {
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
            min_contributors: 3,
            aggregate_digest: agg.mask_digest().to_vec(),
            values: VALUES as u64,
        };
        let mut job = c.holders[0].begin_decrypt(&req, 3, VALUES as u64)?;
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

    #[test]
    fn key_holders_open_only_sums_of_signed_updates() {
        let c = committee();
        let kid = Shape::new(&c.key, VALUES as u64).unwrap();
        let genuine: Vec<Relayed<'_>> = (0..3)
            .map(|i| {
                let ch = chunks(&c.key, i as u64 + 1);
                let sig = c.holders[i].sign_update(&kid, 4, 100, &ch).unwrap();
                (["a", "b", "c"][i], i, ch, sig)
            })
            .collect();

        // The coordinator pads a's update with one of its own making, given as c's.
        let mut padded = genuine.clone();
        let made_up = chunks(&c.key, 0);
        padded[2] = ("c", 2, made_up.clone(), genuine[2].3.clone());
        let e = decrypt(&c, &padded).unwrap_err().to_string();
        assert!(e.contains("not signed by `c`"), "{e}");
        // Or signs it itself with another partner's certificate.
        let sig_b = c.holders[1].sign_update(&kid, 4, 100, &made_up).unwrap();
        let mut wrong_cert = genuine.clone();
        wrong_cert[2] = ("c", 1, made_up.clone(), sig_b);
        let e = decrypt(&c, &wrong_cert).unwrap_err().to_string();
        assert!(e.contains("names `b`"), "{e}");
        // A signature for another round does not carry over.
        let mut replayed = genuine.clone();
        replayed[1].3 = c.holders[1]
            .sign_update(&kid, 3, 100, &genuine[1].2)
            .unwrap();
        let e = decrypt(&c, &replayed).unwrap_err().to_string();
        assert!(e.contains("not signed by `b`"), "{e}");
        // Fewer contributors than the task's minimum.
        let e = decrypt(&c, &genuine[..2]).unwrap_err().to_string();
        assert!(e.contains("at least 3"), "{e}");

        // Three signed updates: the share comes, once.
        assert!(decrypt(&c, &genuine).is_ok());
        let e = decrypt(&c, &genuine).unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
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
