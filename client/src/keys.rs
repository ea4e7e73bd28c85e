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
//! §4: the decryptor must know what it decrypts).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use consortia_privacy::he::{
    Aggregate, CollectivePublicKey, HeParams, KeySession, KeyShare, KeyShareGen, PartialDecryptor,
    PartyId, SecretKeyShare, Shape,
};
use consortia_proto::{CiphertextChunk, CollectiveKey, DecryptRequest, KeyGenRequest};

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
    pending: Option<(KeySession, KeyShare)>,
    /// The collective key, once distributed.
    pub current: Option<FederationKey>,
}

/// A partial decryption being prepared: the key holder's own sum of the
/// contributors' ciphertexts.
pub struct DecryptJob {
    round: u64,
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
            pending: None,
            current: None,
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
        let distinct: HashSet<&String> = req.contributors.iter().collect();
        if req.contributors.len() > MAX_CONTRIBUTORS || distinct.len() != req.contributors.len() {
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
        let shape = Shape::new(&fed.key, req.values).map_err(|e| key_err("ciphertext shape", e))?;
        let aggregate = Aggregate::new(shape).map_err(|e| key_err("aggregate", e))?;
        Ok(DecryptJob {
            round: req.round,
            contributors: req.contributors.len(),
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
        if job.aggregate.digest() != job.digest {
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
        self.aggregate
            .add_bytes(c.index, &c.ciphertext)
            .map_err(|e| key_err("contributor ciphertext refused", e))?;
        self.next = if c.index + 1 == self.chunks {
            (c.contributor + 1, 0)
        } else {
            (c.contributor, c.index + 1)
        };
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
