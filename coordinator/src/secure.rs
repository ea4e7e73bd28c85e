//! Secure aggregation at the coordinator, which never holds a key to open
//! an individual update: the federation key ceremony, encrypted updates kept
//! on disk, and the joint decryption of the round's sum.
//!
//! Protocol (Mouchet, Troncoso-Pastoriza, Bossuat, Hubaux, PoPETs 2021, §4;
//! one type per step as in Lattigo's `multiparty`):
//! 1. [`KeyCeremony`]: each key holder commits to a public-key share, then
//!    reveals it; the coordinator sums the shares into the collective key
//!    ([`FederationKey`], stored in `<state>/keys/federation-key.json`).
//! 2. Encrypted updates stream in chunk by chunk, signed by their senders
//!    (`consortia_proto::ContributionDigest`); each chunk is checked against
//!    the round's ciphertext shape and appended to the partner's file in
//!    `<state>/secure/round-N/` ([`CiphertextStore`]), with the signature,
//!    the sender's certificate and the hashes of the chunks' bodies beside
//!    it; a complete update is folded into the round's encrypted running
//!    sum. A coordinator restarted mid-round keeps every update already
//!    received.
//! 3. [`Decryption`]: every key holder is sent the contributors' names,
//!    example counts and certificates and the aggregate's masks only (the
//!    same bytes for every holder, whatever the number of contributors);
//!    the holders toss a coin (commit, then reveal) for a challenge; every
//!    contributor signs the sketch of its own masks under it
//!    (`consortia_he::sketch`); each holder checks the sketches add up to
//!    the aggregate's and returns a flooded partial decryption; the shares
//!    are combined piece by piece into the (noised) sum. Once shares have
//!    been asked for, a round's ciphertexts are discarded whatever happens
//!    (`decrypting` marker), so none is ever decrypted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use consortia_he::{
    Aggregate, CollectiveKeyAggregator, Combiner, HeParams, KeyCommitment, KeySession, PartyId,
    PublicKeyShare, Shape, Sketch, Sketcher,
};
use consortia_proto::{
    ChallengeCommit, ChallengeCommitments, ChallengeReveals, ChallengeSeed, ContributorSketch,
    ContributorSketches, DecryptionContext, DecryptionSharePiece, HolderCommitment, HolderSeed,
    KeyCommit, KeyShare, SignedKeyShare, SignedSketch, key_share_digest,
};
use serde::{Deserialize, Serialize};

use crate::CoordinatorError;
use crate::rejection::{Rejection, Subject};

/// The federation key: one type shared with the partners
/// ([`consortia_proto::FederationKey`], with its wire and stored forms);
/// this module keeps it, and its release count, in the state directory.
pub use consortia_proto::FederationKey;

/// `<state>/keys/federation-key.json`.
pub(crate) fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("keys").join("federation-key.json")
}

fn releases_path(key: &FederationKey, state_dir: &Path) -> PathBuf {
    state_dir
        .join("keys")
        .join(format!("{}.releases", hex::encode(key.key.session().id)))
}

/// How many sums have been sent for decryption under `key`.
pub fn releases(key: &FederationKey, state_dir: &Path) -> Result<u64, CoordinatorError> {
    let path = releases_path(key, state_dir);
    match std::fs::read_to_string(&path) {
        Ok(t) => t
            .trim()
            .parse()
            .map_err(|e| CoordinatorError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(CoordinatorError::file(&path)(e)),
    }
}

/// Counts one more decryption under `key`, durably, before it is asked.
pub fn count_release(key: &FederationKey, state_dir: &Path) -> Result<(), CoordinatorError> {
    let n = releases(key, state_dir)? + 1;
    let path = releases_path(key, state_dir);
    write_durably(&path, "releases.tmp", format!("{n}\n").as_bytes())
}

/// Reads the stored key (`<state>/keys/federation-key.json`), if the
/// federation has one; a file that fails any of the key's checks is corrupt.
pub fn load_key(state_dir: &Path) -> Result<Option<FederationKey>, CoordinatorError> {
    let path = key_path(state_dir);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CoordinatorError::file(&path)(e)),
    };
    // Bounded: one byte over the limit is enough for the parser to refuse it.
    let limit = consortia_proto::federation_key::MAX_STORED_KEY_BYTES as u64 + 1;
    let mut text = String::new();
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(CoordinatorError::file(&path))?;
    let key = FederationKey::from_json(&text)
        .map_err(|e| CoordinatorError::Corrupt(format!("{}: {e}", path.display())))?;
    if !key.has_transcript() {
        tracing::warn!(
            path = %path.display(),
            "the stored federation key has no signed transcript (it was made before \
             transcripts): partners refuse it; re-key with `consortia rekey`"
        );
    }
    Ok(Some(key))
}

/// Stores `key` durably (it is public; the file is replaced atomically).
pub fn save_key(key: &FederationKey, state_dir: &Path) -> Result<(), CoordinatorError> {
    write_durably(&key_path(state_dir), "tmp", key.to_json().as_bytes())
}

/// Forgets the federation key and every round's stored ciphertexts, so the
/// next start generates a new key with the partners connected then,
/// leaving out `excluded` (kept in `keys/excluded.json` until the next
/// re-key). Returns the key holders of the removed key.
pub fn remove_key(
    state_dir: &Path,
    excluded: &[String],
) -> Result<Option<Vec<String>>, CoordinatorError> {
    let old = load_key(state_dir)?;
    let dir = state_dir.join("keys");
    std::fs::create_dir_all(&dir).map_err(CoordinatorError::file(&dir))?;
    let text = serde_json::to_string(excluded)
        .map_err(|e| CoordinatorError::Corrupt(format!("excluded partners: {e}")))?;
    let list = dir.join("excluded.json");
    std::fs::write(&list, text).map_err(CoordinatorError::file(&list))?;
    let key = key_path(state_dir);
    match std::fs::remove_file(&key) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CoordinatorError::file(&key)(e)),
    }
    let secure = state_dir.join("secure");
    if secure.exists() {
        std::fs::remove_dir_all(&secure).map_err(CoordinatorError::file(&secure))?;
    }
    Ok(old.map(|k| k.committee))
}

/// Partners a re-key left out of the next federation key.
pub fn excluded(state_dir: &Path) -> Result<Vec<String>, CoordinatorError> {
    let path = state_dir.join("keys").join("excluded.json");
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map_err(|e| CoordinatorError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(CoordinatorError::file(&path)(e)),
    }
}

/// Adds `partner` to the partners left out of the next federation key (as
/// `consortia rekey --without` does), durably; returns the list.
pub fn exclude(state_dir: &Path, partner: &str) -> Result<Vec<String>, CoordinatorError> {
    let mut list = excluded(state_dir)?;
    if !list.iter().any(|p| p == partner) {
        list.push(partner.to_string());
    }
    let dir = state_dir.join("keys");
    std::fs::create_dir_all(&dir).map_err(CoordinatorError::file(&dir))?;
    let text = serde_json::to_string(&list)
        .map_err(|e| CoordinatorError::Corrupt(format!("excluded partners: {e}")))?;
    write_durably(&dir.join("excluded.json"), "tmp", text.as_bytes())?;
    Ok(list)
}

/// Replaces `path` with `bytes` atomically and durably: written to a
/// sibling with extension `tmp_extension`, synced, then renamed.
pub(crate) fn write_durably(
    path: &Path,
    tmp_extension: &str,
    bytes: &[u8],
) -> Result<(), CoordinatorError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(CoordinatorError::file(dir))?;
    }
    let tmp = path.with_extension(tmp_extension);
    let write = || -> Result<(), std::io::Error> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(CoordinatorError::file(&tmp))?;
    std::fs::rename(&tmp, path).map_err(CoordinatorError::file(path))
}

/// Key generation in progress: commitments first, then shares.
pub struct KeyCeremony {
    /// The session (parameters and fresh public id).
    pub session: KeySession,
    /// Key holders in party order.
    pub committee: Vec<String>,
    aggregator: CollectiveKeyAggregator,
    committed: BTreeSet<String>,
    revealed: BTreeSet<String>,
    task_hash: [u8; 32],
    signed: BTreeMap<u32, SignedKeyShare>,
}

impl std::fmt::Debug for KeyCeremony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCeremony")
            .field("session", &hex::encode(self.session.id))
            .field("committee", &self.committee)
            .field("committed", &self.committed)
            .field("revealed", &self.revealed)
            .finish_non_exhaustive()
    }
}

impl KeyCeremony {
    /// A ceremony for `committee` with a fresh random session id.
    pub fn new(
        params: HeParams,
        committee: Vec<String>,
        task_hash: [u8; 32],
    ) -> Result<Self, CoordinatorError> {
        let session = KeySession::new(params, rand::random());
        let aggregator = CollectiveKeyAggregator::new(&session, committee.len() as u32)
            .map_err(|e| CoordinatorError::SecureAggregation(format!("key generation: {e}")))?;
        Ok(KeyCeremony {
            session,
            committee,
            aggregator,
            committed: BTreeSet::new(),
            revealed: BTreeSet::new(),
            task_hash,
            signed: BTreeMap::new(),
        })
    }

    fn party(&self, subject: Subject, partner: &str, session: &[u8]) -> Result<PartyId, Rejection> {
        if session != self.session.id.as_slice() {
            return Err(Rejection::out_of_phase(
                subject,
                "it is for another key-generation session",
                format!("one for session {}", hex::encode(&self.session.id[..8])),
            ));
        }
        self.committee
            .iter()
            .position(|p| p == partner)
            .map(|i| PartyId(i as u32))
            .ok_or_else(|| {
                Rejection::out_of_phase(
                    subject,
                    format!("`{partner}` is not a member of the key-generation committee"),
                    format!("messages from the committee only ({:?})", self.committee),
                )
            })
    }

    /// A refusal by the key aggregator: a second message from the same
    /// member is out of phase; anything else is invalid.
    fn refused(subject: Subject, e: consortia_he::HeError) -> Rejection {
        match e {
            consortia_he::HeError::DuplicateParty(_) => {
                Rejection::out_of_phase(subject, e.to_string(), "one per member")
            }
            e => Rejection::invalid(subject, format!("a valid {subject}"), e.to_string()),
        }
    }

    /// Step 1: a commitment.
    pub fn commit(&mut self, partner: &str, msg: &KeyCommit) -> Result<(), Rejection> {
        let subject = Subject::KeyCommitment;
        let party = self.party(subject, partner, &msg.session_id)?;
        let c: [u8; 32] = msg.commitment.as_slice().try_into().map_err(|_| {
            Rejection::invalid(
                subject,
                "32 bytes",
                format!("{} bytes", msg.commitment.len()),
            )
        })?;
        self.aggregator
            .add_commitment(party, KeyCommitment(c))
            .map_err(|e| Self::refused(subject, e))?;
        self.committed.insert(partner.to_string());
        Ok(())
    }

    /// Step 2: a public-key share, checked against its commitment and its
    /// signature by `partner`'s certificate (DER, as presented in TLS) for
    /// this task.
    pub fn reveal(
        &mut self,
        partner: &str,
        certificate: &[u8],
        msg: &KeyShare,
    ) -> Result<(), Rejection> {
        let subject = Subject::KeyShare;
        let party = self.party(subject, partner, &msg.session_id)?;
        let digest = key_share_digest(
            &self.session.id,
            party.0,
            partner,
            &self.task_hash,
            &msg.public_share,
        );
        let verifier = consortia_ledger::Verifier::from_cert_der(certificate).map_err(|e| {
            Rejection::invalid(
                subject,
                "a share signed with a certificate usable for signatures",
                format!("certificate of `{partner}`: {e}"),
            )
        })?;
        if !verifier.verify_hash(&digest, &msg.signature) {
            return Err(Rejection::invalid(
                subject,
                format!("a share signed by `{partner}` for this task and session"),
                format!("not signed by `{partner}` for this task"),
            ));
        }
        let share = PublicKeyShare::from_bytes(&msg.public_share, &self.session)
            .map_err(|e| Self::refused(subject, e))?;
        self.aggregator
            .add_share(party, share)
            .map_err(|e| Self::refused(subject, e))?;
        self.signed.insert(
            party.0,
            SignedKeyShare {
                party: party.0,
                partner: partner.to_string(),
                public_share: msg.public_share.clone(),
                signature: msg.signature.clone(),
                certificate: certificate.to_vec(),
            },
        );
        self.revealed.insert(partner.to_string());
        Ok(())
    }

    /// True once every member has committed.
    pub fn all_committed(&self) -> bool {
        self.committed.len() == self.committee.len()
    }

    /// True once every member has revealed.
    pub fn all_revealed(&self) -> bool {
        self.revealed.len() == self.committee.len()
    }

    /// Members that have not answered the current step.
    pub fn waiting_for(&self) -> Vec<String> {
        let done = if self.all_committed() {
            &self.revealed
        } else {
            &self.committed
        };
        self.committee
            .iter()
            .filter(|p| !done.contains(*p))
            .cloned()
            .collect()
    }

    /// The collective key.
    pub fn finish(&self) -> Result<FederationKey, CoordinatorError> {
        let key = self
            .aggregator
            .finish()
            .map_err(|e| CoordinatorError::SecureAggregation(format!("key generation: {e}")))?;
        FederationKey::new(
            key,
            self.committee.clone(),
            self.signed.values().cloned().collect(),
        )
        .map_err(|e| CoordinatorError::SecureAggregation(format!("key generation: {e}")))
    }
}

const UPLOAD_MAGIC: &[u8; 4] = b"CSUP";

/// Encrypted updates on disk, one directory per round.
#[derive(Debug, Clone)]
pub struct CiphertextStore {
    root: PathBuf,
}

/// One partner's complete encrypted update of a round.
#[derive(Debug, Clone)]
pub struct StoredUpdate {
    /// Partner.
    pub partner: String,
    /// Training rows behind it.
    pub examples: u64,
    /// Its file.
    pub path: PathBuf,
    /// The partner's signature of the update ([`consortia_proto::ContributionDigest`]).
    pub signature: Vec<u8>,
    /// The certificate (DER) the partner presented when it sent the update.
    pub certificate: Vec<u8>,
    /// SHA-256 of each chunk's bodies (key holders get masks only).
    pub body_hashes: Vec<[u8; 32]>,
}

#[derive(Serialize, Deserialize)]
struct StoredSignature {
    signature: String,
    certificate: String,
    body_hashes: Vec<String>,
}

impl CiphertextStore {
    /// The store under `<state_dir>/secure`.
    pub fn new(state_dir: &Path) -> Self {
        CiphertextStore {
            root: state_dir.join("secure"),
        }
    }

    fn dir(&self, round: u64) -> PathBuf {
        self.root.join(format!("round-{round:08}"))
    }

    /// The coordinator's state directory (the store's parent).
    pub fn state_dir(&self) -> &Path {
        self.root.parent().unwrap_or(&self.root)
    }

    /// The attempt number of `round`'s run in progress: the one stored with
    /// its ciphertexts (a restarted coordinator keeps the updates it has and
    /// their attempt), or a new one larger than any before — the clock in
    /// milliseconds, so attempts strictly increase without a counter —
    /// stored durably before any partner is asked.
    pub fn attempt(&self, round: u64) -> Result<u64, CoordinatorError> {
        let dir = self.dir(round);
        let path = dir.join("attempt");
        if let Ok(t) = std::fs::read_to_string(&path)
            && let Ok(a) = t.trim().parse::<u64>()
        {
            return Ok(a);
        }
        let a = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1)
            .max(1);
        write_durably(&path, "tmp", format!("{a}\n").as_bytes())?;
        Ok(a)
    }

    /// Starts receiving `partner`'s update for `round`.
    pub fn begin(
        &self,
        round: u64,
        partner: &str,
        examples: u64,
        chunks: u32,
    ) -> Result<Upload, std::io::Error> {
        let dir = self.dir(round);
        std::fs::create_dir_all(&dir)?;
        // Unique per upload: a reconnected partner's new upload never shares
        // a file with the one its old session leaves behind.
        let path = dir.join(format!("{partner}.{:016x}.part", rand::random::<u64>()));
        let mut file = std::fs::File::create(&path)?;
        file.write_all(UPLOAD_MAGIC)?;
        file.write_all(&examples.to_le_bytes())?;
        file.write_all(&chunks.to_le_bytes())?;
        Ok(Upload {
            file: Some(file),
            path,
            done: dir.join(format!("{partner}.ct")),
        })
    }

    /// The complete updates stored for `round` (none once it was sent for decryption).
    pub fn completed(&self, round: u64) -> Result<Vec<StoredUpdate>, CoordinatorError> {
        let dir = self.dir(round);
        if !dir.exists() || self.decrypting(round) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(CoordinatorError::file(&dir))? {
            let path = entry.map_err(CoordinatorError::file(&dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("ct") {
                continue;
            }
            let Some(partner) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let mut head = [0u8; 16];
            std::fs::File::open(&path)
                .and_then(|mut f| f.read_exact(&mut head))
                .map_err(CoordinatorError::file(&path))?;
            if &head[..4] != UPLOAD_MAGIC {
                return Err(CoordinatorError::Corrupt(format!(
                    "{} is not an encrypted update",
                    path.display()
                )));
            }
            let examples = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
            let sig_path = path.with_extension("sig");
            let bad = |m: String| CoordinatorError::Corrupt(format!("{}: {m}", sig_path.display()));
            let text =
                std::fs::read_to_string(&sig_path).map_err(CoordinatorError::file(&sig_path))?;
            let stored: StoredSignature =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let mut body_hashes = Vec::with_capacity(stored.body_hashes.len());
            for h in &stored.body_hashes {
                let h: [u8; 32] = hex::decode(h)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| bad("a body hash is not 32 hex bytes".into()))?;
                body_hashes.push(h);
            }
            out.push(StoredUpdate {
                partner: partner.to_string(),
                examples,
                path,
                signature: hex::decode(&stored.signature).map_err(|e| bad(e.to_string()))?,
                certificate: hex::decode(&stored.certificate).map_err(|e| bad(e.to_string()))?,
                body_hashes,
            });
        }
        out.sort_by(|a, b| a.partner.cmp(&b.partner));
        Ok(out)
    }

    /// Records, durably, that `round`'s sum is being decrypted: its
    /// ciphertexts will not be used again.
    pub fn mark_decrypting(&self, round: u64) -> Result<(), CoordinatorError> {
        let dir = self.dir(round);
        let mark = || -> Result<(), std::io::Error> {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::create(dir.join("decrypting"))?.sync_all()?;
            std::fs::File::open(&dir)?.sync_all()
        };
        mark().map_err(CoordinatorError::file(&dir))
    }

    /// True if `round`'s sum was sent for decryption.
    pub fn decrypting(&self, round: u64) -> bool {
        self.dir(round).join("decrypting").exists()
    }

    /// Deletes `round`'s ciphertexts.
    pub fn discard(&self, round: u64) -> Result<(), CoordinatorError> {
        let dir = self.dir(round);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(CoordinatorError::file(&dir))?;
        }
        Ok(())
    }

    /// Deletes the ciphertexts of every round other than `keep`.
    pub fn discard_all_but(&self, keep: u64) -> Result<(), CoordinatorError> {
        if !self.root.exists() {
            return Ok(());
        }
        let keep = self.dir(keep);
        for entry in std::fs::read_dir(&self.root).map_err(CoordinatorError::file(&self.root))? {
            let path = entry.map_err(CoordinatorError::file(&self.root))?.path();
            if path != keep {
                std::fs::remove_dir_all(&path).map_err(CoordinatorError::file(&path))?;
            }
        }
        Ok(())
    }
}

/// Reads a stored update's chunks in order, one at a time.
pub struct ChunkReader {
    r: std::io::BufReader<std::fs::File>,
    left: u32,
}

fn invalid(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

impl ChunkReader {
    /// Opens a stored update.
    pub fn open(path: &Path) -> Result<Self, std::io::Error> {
        let mut r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut head = [0u8; 16];
        r.read_exact(&mut head)?;
        if &head[..4] != UPLOAD_MAGIC {
            return Err(invalid("not an encrypted update"));
        }
        let left = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
        Ok(ChunkReader { r, left })
    }

    /// The next chunk, `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, std::io::Error> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > consortia_he::MAX_CHUNK_BYTES {
            return Err(invalid("chunk longer than the limit"));
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf)?;
        self.left -= 1;
        Ok(Some(buf))
    }
}

/// Every chunk of a stored update, in order (for audits and tests; the
/// coordinator itself reads one chunk at a time).
pub fn read_chunks(path: &Path) -> Result<Vec<Vec<u8>>, std::io::Error> {
    let mut r = ChunkReader::open(path)?;
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk()? {
        out.push(c);
    }
    Ok(out)
}

/// Calls `f` with each chunk of a stored update in order.
pub fn for_each_chunk(
    path: &Path,
    mut f: impl FnMut(&[u8]) -> Result<(), std::io::Error>,
) -> Result<(), std::io::Error> {
    let mut r = ChunkReader::open(path)?;
    while let Some(c) = r.next_chunk()? {
        f(&c)?;
    }
    Ok(())
}

/// A partner's encrypted update being written; the partial file is removed
/// unless [`Upload::finish`] is reached.
pub struct Upload {
    file: Option<std::fs::File>,
    path: PathBuf,
    done: PathBuf,
}

impl Upload {
    /// Appends one (already checked) chunk.
    pub fn append(&mut self, chunk: &[u8]) -> Result<(), std::io::Error> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("upload already finished"))?;
        f.write_all(&(chunk.len() as u32).to_le_bytes())?;
        f.write_all(chunk)
    }

    /// Syncs the update with its sender's signature and certificate and
    /// publishes it as complete; returns its path.
    pub fn finish(
        mut self,
        signature: &[u8],
        certificate: &[u8],
        body_hashes: &[[u8; 32]],
    ) -> Result<PathBuf, std::io::Error> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        let sig = StoredSignature {
            signature: hex::encode(signature),
            certificate: hex::encode(certificate),
            body_hashes: body_hashes.iter().map(hex::encode).collect(),
        };
        let mut f = std::fs::File::create(self.done.with_extension("sig"))?;
        f.write_all(
            serde_json::to_string(&sig)
                .map_err(std::io::Error::other)?
                .as_bytes(),
        )?;
        f.sync_all()?;
        std::fs::rename(&self.path, &self.done)?;
        if let Some(dir) = self.done.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(self.done.clone())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A key holder's share arriving piece by piece.
struct ShareStream {
    party: PartyId,
    next: u32,
    pieces: u32,
    /// Words subtracted so far.
    words: usize,
    /// Bytes of a word split across two pieces.
    carry: Vec<u8>,
}

/// The step a [`Decryption`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DecryptionStep {
    /// Every key holder's challenge commitment (after the aggregate's masks).
    Commitments,
    /// Every key holder's challenge seed.
    Seeds,
    /// Every contributor's signed sketch.
    Sketches,
    /// Every key holder's partial decryption.
    Shares,
}

impl DecryptionStep {
    /// What the step takes, for refusals and the console.
    pub fn expects(self) -> &'static str {
        match self {
            DecryptionStep::Commitments => "challenge commitments",
            DecryptionStep::Seeds => "challenge seeds",
            DecryptionStep::Sketches => "contributors' signed sketches",
            DecryptionStep::Shares => "decryption shares",
        }
    }
}

/// With whom a further coin toss for the same aggregate is made
/// ([`Decryption::retry_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// These key holders; every contributor signs a sketch under the new
    /// toss's challenge.
    Sketched(Vec<String>),
    /// These key holders, each of which checked the contributors' sketches
    /// of this sum in the toss that failed; no sketch is asked for.
    Checked(Vec<String>),
}

impl Retry {
    /// The key holders asked.
    pub fn holders(&self) -> &[String] {
        match self {
            Retry::Sketched(h) | Retry::Checked(h) => h,
        }
    }
}

/// One contributor to the sum being decrypted, as it sent its update.
#[derive(Debug, Clone)]
pub struct Contributor {
    /// Partner.
    pub name: String,
    /// Training rows it declared (and signs again with its sketch).
    pub examples: u64,
    /// The certificate (DER) it presented with its update.
    pub certificate: Vec<u8>,
}

/// Joint decryption of one round's sum, step by step ([`DecryptionStep`]):
/// the key holders' coin toss (commitments, then seeds) for a challenge the
/// coordinator cannot know before the aggregate is fixed, the contributors'
/// signed sketches of their own masks under it, then the key holders'
/// shares. Shares are combined piece by piece as they arrive
/// ([`Combiner::subtract_share_words`]), so the coordinator holds the
/// aggregate's bodies and a few messages, however many key holders there
/// are.
pub struct Decryption {
    ctx: DecryptionContext,
    shape: Shape,
    committee: Vec<String>,
    /// The key holders asked: the whole committee (N-of-N), or those connected
    /// when the decryption started, at least `key_threshold` (t-of-N): every
    /// one of them commits in the coin toss and is the decryption set `Q`.
    asked: Vec<String>,
    contributors: Vec<Contributor>,
    /// [`consortia_proto::contributions_digest`] of `contributors`: with the
    /// aggregate's digest, the sum every sketch is signed for.
    contributions: [u8; 32],
    /// The aggregate's masks, chunk by chunk, in mask-chunk wire form.
    masks: std::sync::Arc<Vec<Vec<u8>>>,
    step: DecryptionStep,
    commitments: BTreeMap<String, [u8; 32]>,
    seeds: BTreeMap<String, [u8; 32]>,
    challenge: Option<[u8; 32]>,
    sketches: BTreeMap<String, ContributorSketch>,
    combiner: Combiner,
    streams: BTreeMap<String, ShareStream>,
    word_bytes: usize,
    /// Why the decryption cannot complete, once known.
    pub failed: Option<String>,
    /// The key holder that failed it, and why, when it was one.
    failed_holder: Option<(String, String)>,
    /// t-of-N: the key's threshold `t` (`None`: N-of-N, every holder decrypts).
    threshold: Option<u32>,
    /// Key holders asked in this toss that refused, left or broke their
    /// answer: none of them is asked again in a further toss.
    dropped: Vec<String>,
    /// True when only key holders failed the toss (not a contributor, nor
    /// the sum): a further toss with other holders can still open it.
    holders_only: bool,
    /// Every holder asked checked this sum's sketches in an earlier toss
    /// ([`Retry::Checked`]).
    checked: bool,
}

impl Decryption {
    /// Starts decrypting `aggregate`, the sum of `contributors`' updates of
    /// attempt `attempt` of the task with hash `task_hash`, with the key
    /// holders of `key`.
    pub fn new(
        round: u64,
        attempt: u64,
        task_hash: [u8; 32],
        aggregate: &Aggregate,
        key: &FederationKey,
        contributors: Vec<Contributor>,
    ) -> Result<Self, consortia_he::HeError> {
        let shape = *aggregate.shape();
        let masks = (0..shape.chunks())
            .map(|i| aggregate.mask_chunk(i))
            .collect::<Result<Vec<_>, _>>()?;
        let contributions = consortia_proto::contributions_digest(
            &contributors
                .iter()
                .map(|c| consortia_proto::Contribution {
                    partner: c.name.clone(),
                    example_count: c.examples,
                    certificate: c.certificate.clone(),
                })
                .collect::<Vec<_>>(),
        );
        Ok(Decryption {
            ctx: DecryptionContext {
                task_hash,
                key_id: key.key.key_id(),
                round,
                attempt,
                toss: 0,
                aggregate_digest: aggregate.mask_digest(),
            },
            shape,
            committee: key.committee.clone(),
            asked: key.committee.clone(),
            contributors,
            contributions,
            masks: std::sync::Arc::new(masks),
            step: DecryptionStep::Commitments,
            commitments: BTreeMap::new(),
            seeds: BTreeMap::new(),
            challenge: None,
            sketches: BTreeMap::new(),
            combiner: Combiner::new(aggregate),
            streams: BTreeMap::new(),
            word_bytes: shape.params.word_bytes(),
            failed: None,
            failed_holder: None,
            threshold: None,
            dropped: Vec::new(),
            holders_only: false,
            checked: false,
        })
    }

    /// A t-of-N key's decryption (`threshold`: the key's `t`), at coin toss
    /// `toss` of its attempt: a holder that leaves before it committed is
    /// left out of the decryption set (while `t` remain), and a failed toss
    /// says with whom a further one can be made ([`Decryption::retry_with`]).
    pub fn with_threshold(mut self, threshold: u32, toss: u32) -> Self {
        self.threshold = Some(threshold);
        self.ctx.toss = toss;
        self
    }

    /// Every holder asked checked this sum's sketches in an earlier toss:
    /// none are asked for ([`Decryption::checked_sketches_message`]).
    pub fn with_checked_sketches(mut self) -> Self {
        self.checked = true;
        self
    }

    /// The coin toss of the attempt being decrypted.
    pub fn toss(&self) -> u32 {
        self.ctx.toss
    }

    /// t-of-N, at the commitments: the decryption set `Q` is the holders
    /// that committed; the others are left out (their shares count as
    /// nothing). Fails the decryption when fewer than `t` committed.
    pub fn close_commitments(&mut self) -> Result<(), String> {
        let t = self
            .threshold
            .ok_or("an N-of-N key waits for every key holder")? as usize;
        if self.commitments.len() < t {
            let why = format!(
                "{} key holder(s) committed to a challenge seed in time, fewer than the key's \
                 threshold {t}",
                self.commitments.len()
            );
            self.failed.get_or_insert_with(|| why.clone());
            return Err(why);
        }
        let late: Vec<String> = self
            .asked
            .iter()
            .filter(|p| !self.commitments.contains_key(*p))
            .cloned()
            .collect();
        for p in &late {
            self.leave_out(p).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Takes `partner` out of the holders asked; its share counts as nothing.
    fn leave_out(&mut self, partner: &str) -> Result<(), consortia_he::HeError> {
        if let Some(i) = self.committee.iter().position(|p| p == partner) {
            self.combiner.complete_share(PartyId(i as u32))?;
        }
        self.asked.retain(|p| p != partner);
        Ok(())
    }

    /// After a failed toss of a t-of-N decryption that only key holders
    /// failed it: with whom a further toss for the same aggregate is made,
    /// if at least `t` (and `None` otherwise, or when a contributor or the
    /// sum failed it). With every contributor still connected, the holders
    /// of `connected` not dropped, and the contributors sketch under the new
    /// toss's challenge ([`Retry::Sketched`]); otherwise, once this toss's
    /// sketches were sent to its decryption set, those of that set still
    /// connected and not dropped, who checked them ([`Retry::Checked`]).
    /// Before either: once at least `t` holders of the decryption set sent
    /// their whole share, those of them still connected ([`Retry::Checked`]:
    /// each recorded that it checked this sum's sketches).
    pub fn retry_with(&self, connected: &[String]) -> Option<Retry> {
        let t = self.threshold? as usize;
        if !self.holders_only {
            return None;
        }
        let healthy = |p: &&String| connected.contains(p) && !self.dropped.contains(p);
        // Holders of this toss that sent their whole share checked the
        // sketches and recorded this sum first: `t` of them toss again
        // without sketches (e.g. once the others were cut as stragglers).
        if self.step == DecryptionStep::Shares {
            let answered: Vec<String> = self
                .answered()
                .into_iter()
                .filter(|p| healthy(&p))
                .collect();
            if answered.len() >= t {
                return Some(Retry::Checked(answered));
            }
        }
        if self
            .contributors
            .iter()
            .all(|c| connected.contains(&c.name))
        {
            let holders: Vec<String> = self.committee.iter().filter(healthy).cloned().collect();
            return (holders.len() >= t).then_some(Retry::Sketched(holders));
        }
        if self.step != DecryptionStep::Shares && !self.checked {
            return None;
        }
        let holders: Vec<String> = self.asked.iter().filter(healthy).cloned().collect();
        (holders.len() >= t).then_some(Retry::Checked(holders))
    }

    /// A further toss whose holders all checked the contributors' sketches
    /// of this same sum in an earlier toss: no sketch is asked for, the
    /// holders are sent none, and the shares are taken next.
    pub fn checked_sketches_message(&mut self) -> ContributorSketches {
        self.step = DecryptionStep::Shares;
        ContributorSketches {
            round: self.ctx.round,
            attempt: self.ctx.attempt,
            toss: self.ctx.toss,
            sketches: Vec::new(),
        }
    }

    /// Key holders asked in this toss that refused, left or broke their answer.
    pub fn dropped(&self) -> &[String] {
        &self.dropped
    }

    /// Asks only `holders` (t-of-N: the decryption set `Q`, at least the
    /// key's threshold, which every holder checks): the holders outside take
    /// no part and their shares count as nothing in the combination
    /// (`consortia_he::ThresholdCombiner`'s rule).
    pub fn with_holders(mut self, holders: &[String]) -> Result<Self, consortia_he::HeError> {
        for (i, p) in self.committee.iter().enumerate() {
            if !holders.contains(p) {
                self.combiner.complete_share(PartyId(i as u32))?;
            }
        }
        self.asked = self
            .committee
            .iter()
            .filter(|p| holders.contains(p))
            .cloned()
            .collect();
        Ok(self)
    }

    /// Skips the coin toss and the sketches (for tests of the shares alone).
    #[cfg(test)]
    pub(crate) fn at_shares(mut self) -> Self {
        self.step = DecryptionStep::Shares;
        self
    }

    /// The aggregate's masks in mask-chunk wire form (what every key holder is sent).
    pub fn masks(&self) -> std::sync::Arc<Vec<Vec<u8>>> {
        self.masks.clone()
    }

    /// The round being decrypted.
    pub fn round(&self) -> u64 {
        self.ctx.round
    }

    /// The attempt being decrypted.
    pub fn attempt(&self) -> u64 {
        self.ctx.attempt
    }

    /// The key holders asked (t-of-N, once the commitments are closed: the
    /// decryption set `Q`).
    pub fn asked(&self) -> &[String] {
        &self.asked
    }

    /// The step in progress.
    pub fn step(&self) -> DecryptionStep {
        self.step
    }

    /// The key holders asked whose whole partial decryption is in.
    pub fn answered(&self) -> Vec<String> {
        self.committee
            .iter()
            .enumerate()
            .filter(|(i, p)| self.asked.contains(p) && self.combiner.has(PartyId(*i as u32)))
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The key holder that failed the decryption, and why, when it was one.
    pub fn failed_holder(&self) -> Option<(&str, &str)> {
        self.failed_holder
            .as_ref()
            .map(|(p, why)| (p.as_str(), why.as_str()))
    }

    /// The contributors whose sketches are asked for.
    pub fn contributors(&self) -> &[Contributor] {
        &self.contributors
    }

    /// Those whose answer to the step in progress is missing.
    pub fn waiting_for(&self) -> Vec<String> {
        let missing = |names: &mut dyn Iterator<Item = &String>, done: &dyn Fn(&str) -> bool| {
            names.filter(|p| !done(p)).cloned().collect()
        };
        match self.step {
            DecryptionStep::Commitments => missing(&mut self.asked.iter(), &|p| {
                self.commitments.contains_key(p)
            }),
            DecryptionStep::Seeds => {
                missing(&mut self.asked.iter(), &|p| self.seeds.contains_key(p))
            }
            DecryptionStep::Sketches => {
                missing(&mut self.contributors.iter().map(|c| &c.name), &|p| {
                    self.sketches.contains_key(p)
                })
            }
            DecryptionStep::Shares => self
                .committee
                .iter()
                .enumerate()
                .filter(|(i, p)| self.asked.contains(p) && !self.combiner.has(PartyId(*i as u32)))
                .map(|(_, p)| p.clone())
                .collect(),
        }
    }

    /// True once every answer to the step in progress is in.
    pub fn step_complete(&self) -> bool {
        match self.step {
            DecryptionStep::Shares => self.complete(),
            _ => self.waiting_for().is_empty(),
        }
    }

    /// True once every share is in.
    pub fn complete(&self) -> bool {
        self.step == DecryptionStep::Shares && self.combiner.missing() == 0
    }

    /// A key holder (or, until its sketch is in, a contributor) refused or
    /// went away. t-of-N: a holder that has not committed yet is left out,
    /// while at least `t` others are asked.
    pub fn fail(&mut self, partner: &str, why: &str) {
        let holder = self.asked.iter().any(|p| p == partner);
        if holder && !self.dropped.iter().any(|p| p == partner) {
            self.dropped.push(partner.to_string());
        }
        if self.failed.is_some() {
            return;
        }
        if let Some(t) = self.threshold
            && holder
            && self.step == DecryptionStep::Commitments
            && !self.commitments.contains_key(partner)
            && self.asked.len() > t as usize
            && self.leave_out(partner).is_ok()
        {
            return;
        }
        if holder {
            self.failed = Some(format!("key holder `{partner}`: {why}"));
            self.failed_holder = Some((partner.to_string(), why.to_string()));
            // A contributor's sketch is asked again in a further toss.
            self.holders_only = !(self.step <= DecryptionStep::Sketches
                && self.contributors.iter().any(|c| c.name == partner)
                && !self.sketches.contains_key(partner));
        } else if self.step <= DecryptionStep::Sketches
            && !self.checked
            && self.contributors.iter().any(|c| c.name == partner)
            && !self.sketches.contains_key(partner)
        {
            self.failed = Some(format!(
                "contributor `{partner}` (no sketch of its update): {why}"
            ));
        }
    }

    fn check_message(
        &self,
        subject: Subject,
        round: u64,
        attempt: u64,
        toss: u32,
    ) -> Result<(), Rejection> {
        if round != self.ctx.round {
            return Err(Rejection::WrongRound {
                got: round,
                open: self.ctx.round,
            });
        }
        if attempt != self.ctx.attempt || toss != self.ctx.toss {
            return Err(Rejection::out_of_phase(
                subject,
                format!("it is for coin toss {toss} of attempt {attempt}"),
                format!(
                    "coin toss {} of attempt {} of round {}",
                    self.ctx.toss, self.ctx.attempt, self.ctx.round
                ),
            ));
        }
        Ok(())
    }

    fn at_step(&self, subject: Subject, step: DecryptionStep) -> Result<(), Rejection> {
        if self.step != step {
            return Err(Rejection::out_of_phase(
                subject,
                format!(
                    "the decryption of round {} is not taking them now",
                    self.ctx.round
                ),
                self.step.expects(),
            ));
        }
        Ok(())
    }

    fn holder(&self, subject: Subject, partner: &str) -> Result<(), Rejection> {
        if !self.asked.iter().any(|p| p == partner) {
            return Err(Rejection::out_of_phase(
                subject,
                format!("`{partner}` holds no share of the federation key, or was not asked"),
                format!("the key holders asked only ({:?})", self.asked),
            ));
        }
        Ok(())
    }

    fn bytes32(subject: Subject, what: &str, bytes: &[u8]) -> Result<[u8; 32], Rejection> {
        bytes.try_into().map_err(|_| {
            Rejection::invalid(
                subject,
                format!("a {what} of 32 bytes"),
                format!("{} bytes", bytes.len()),
            )
        })
    }

    /// A key holder's commitment to its challenge seed.
    pub fn commit(&mut self, partner: &str, msg: &ChallengeCommit) -> Result<(), Rejection> {
        let subject = Subject::ChallengeCommitment;
        self.check_message(subject, msg.round, msg.attempt, msg.toss)?;
        self.holder(subject, partner)?;
        self.at_step(subject, DecryptionStep::Commitments)?;
        let c = Self::bytes32(subject, "commitment", &msg.commitment)?;
        if self.commitments.contains_key(partner) {
            return Err(Rejection::Duplicate {
                round: self.ctx.round,
            });
        }
        self.commitments.insert(partner.to_string(), c);
        Ok(())
    }

    /// Every commitment, for every key holder; the holders reveal next.
    pub fn commitments_message(&mut self) -> ChallengeCommitments {
        self.step = DecryptionStep::Seeds;
        ChallengeCommitments {
            round: self.ctx.round,
            attempt: self.ctx.attempt,
            toss: self.ctx.toss,
            commitments: self
                .commitments
                .iter()
                .map(|(holder, c)| HolderCommitment {
                    holder: holder.clone(),
                    commitment: c.to_vec(),
                })
                .collect(),
        }
    }

    /// A key holder's seed, checked against its commitment: one that does
    /// not open it fails the decryption (there is no second toss).
    pub fn reveal(&mut self, partner: &str, msg: &ChallengeSeed) -> Result<(), Rejection> {
        let subject = Subject::ChallengeSeed;
        self.check_message(subject, msg.round, msg.attempt, msg.toss)?;
        self.holder(subject, partner)?;
        self.at_step(subject, DecryptionStep::Seeds)?;
        if self.seeds.contains_key(partner) {
            return Err(Rejection::Duplicate {
                round: self.ctx.round,
            });
        }
        let seed = Self::bytes32(subject, "seed", &msg.seed)?;
        let opens = self
            .commitments
            .get(partner)
            .is_some_and(|c| self.ctx.opens(partner, &seed, c));
        if !opens {
            self.fail(partner, "its challenge seed does not open its commitment");
            return Err(Rejection::invalid(
                subject,
                "the seed your commitment was made to",
                "a seed that does not open it",
            ));
        }
        self.seeds.insert(partner.to_string(), seed);
        Ok(())
    }

    /// Every seed, for every key holder, and the joint challenge the
    /// contributors sketch under; the contributors answer next.
    pub fn reveals_message(&mut self) -> (ChallengeReveals, [u8; 32]) {
        let challenge = self
            .ctx
            .joint_challenge(self.seeds.iter().map(|(h, s)| (h.as_str(), s)));
        self.challenge = Some(challenge);
        self.step = DecryptionStep::Sketches;
        let reveals = ChallengeReveals {
            round: self.ctx.round,
            attempt: self.ctx.attempt,
            toss: self.ctx.toss,
            seeds: self
                .seeds
                .iter()
                .map(|(holder, seed)| HolderSeed {
                    holder: holder.clone(),
                    seed: seed.to_vec(),
                })
                .collect(),
        };
        (reveals, challenge)
    }

    /// A contributor's signed sketch, checked against the certificate it
    /// sent its update with (a bad one fails the decryption, naming it: the
    /// key holders would refuse it anyway).
    pub fn add_sketch(&mut self, partner: &str, msg: &SignedSketch) -> Result<(), Rejection> {
        let subject = Subject::Sketch;
        self.check_message(subject, msg.round, msg.attempt, msg.toss)?;
        self.at_step(subject, DecryptionStep::Sketches)?;
        let Some(c) = self.contributors.iter().find(|c| c.name == partner) else {
            return Err(Rejection::out_of_phase(
                subject,
                format!(
                    "`{partner}` is not a contributor to round {}'s sum",
                    self.ctx.round
                ),
                "sketches from the sum's contributors only",
            ));
        };
        if self.sketches.contains_key(partner) {
            return Err(Rejection::Duplicate {
                round: self.ctx.round,
            });
        }
        let challenge = self.challenge.unwrap_or_default();
        let digest = self.ctx.sketch_digest(
            partner,
            c.examples,
            &self.contributions,
            &challenge,
            &msg.sketch,
        );
        let checked =
            Sketch::from_bytes(&msg.sketch, self.shape.params)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    let signed = consortia_ledger::Verifier::from_cert_der(&c.certificate)
                        .map(|v| v.verify_hash(&digest, &msg.signature))
                        .unwrap_or(false);
                    if signed {
                        Ok(())
                    } else {
                        Err("its signature does not verify with the certificate it sent its update \
                         with, over this decryption's challenge and sum"
                        .to_string())
                    }
                });
        if let Err(why) = checked {
            self.fail(partner, &format!("its sketch is refused: {why}"));
            return Err(Rejection::invalid(
                subject,
                "a signed sketch of your update's masks",
                why,
            ));
        }
        self.sketches.insert(
            partner.to_string(),
            ContributorSketch {
                partner: partner.to_string(),
                sketch: msg.sketch.clone(),
                signature: msg.signature.clone(),
            },
        );
        Ok(())
    }

    /// Every contributor's signed sketch, for every key holder, once they add
    /// up to the sketch of the aggregate's masks (otherwise the decryption
    /// fails: a contributor's update is not what it sketched, or the sum was
    /// spoilt). The key holders answer next.
    pub fn sketches_message(&mut self) -> Result<ContributorSketches, String> {
        let challenge = self.challenge.ok_or("no challenge drawn")?;
        let mut sum = Sketch::zero(self.shape.params);
        for s in self.sketches.values() {
            let sketch =
                Sketch::from_bytes(&s.sketch, self.shape.params).map_err(|e| e.to_string())?;
            sum.add(&sketch).map_err(|e| e.to_string())?;
        }
        let mut own = Sketcher::new(&self.shape, &challenge);
        for (i, chunk) in self.masks.iter().enumerate() {
            let masks = self
                .shape
                .check_mask_chunk(i as u32, chunk)
                .map_err(|e| e.to_string())?;
            own.add_chunk_masks(i as u32, masks)
                .map_err(|e| e.to_string())?;
        }
        if own.finish().map_err(|e| e.to_string())? != sum {
            let why = "the contributors' signed sketches do not add up to the sketch of the \
                       aggregate's masks (a contributor's update is not what it sketched, or the \
                       sum was spoilt); the key holders would refuse it";
            self.failed.get_or_insert_with(|| why.to_string());
            return Err(why.into());
        }
        self.step = DecryptionStep::Shares;
        Ok(ContributorSketches {
            round: self.ctx.round,
            attempt: self.ctx.attempt,
            toss: self.ctx.toss,
            sketches: self.sketches.values().cloned().collect(),
        })
    }

    fn piece_len(total: usize, pieces: u32, index: u32) -> usize {
        if index.saturating_add(1) < pieces {
            consortia_proto::SHARE_PIECE_BYTES
        } else {
            total - consortia_proto::SHARE_PIECE_BYTES * (pieces as usize - 1)
        }
    }

    /// One piece of a key holder's share. The first piece is checked whole
    /// (sender, round, declared length, header) before anything is combined,
    /// so a share from a non-key-holder, of the wrong length, of another
    /// aggregate or sent twice is refused with the round untouched. A key
    /// holder that then breaks its own share off fails the decryption.
    pub fn add_piece(&mut self, partner: &str, p: DecryptionSharePiece) -> Result<(), Rejection> {
        if p.round != self.ctx.round {
            return Err(Rejection::WrongRound {
                got: p.round,
                open: self.ctx.round,
            });
        }
        let subject = Subject::DecryptionShare;
        // A share of an abandoned toss is discarded (it was made for another
        // decryption set).
        if p.toss != self.ctx.toss {
            return Err(Rejection::out_of_phase(
                subject,
                format!("it is for coin toss {}", p.toss),
                format!("shares of coin toss {}", self.ctx.toss),
            ));
        }
        if self.step != DecryptionStep::Shares && self.committee.iter().any(|c| c == partner) {
            return Err(Rejection::out_of_phase(
                subject,
                "shares are taken only once the contributors' sketches were sent",
                self.step.expects(),
            ));
        }
        let Some(party) = self
            .committee
            .iter()
            .position(|c| c == partner)
            .filter(|_| self.asked.iter().any(|c| c == partner))
        else {
            return Err(Rejection::out_of_phase(
                subject,
                format!("`{partner}` holds no share of the federation key"),
                format!("shares from the key holders only ({:?})", self.committee),
            ));
        };
        let party = PartyId(party as u32);
        if self.combiner.has(party) {
            return Err(Rejection::Duplicate {
                round: self.ctx.round,
            });
        }
        let total = self.combiner.share_len();
        let pieces = total.div_ceil(consortia_proto::SHARE_PIECE_BYTES) as u32;
        if p.index == 0 {
            if self.streams.contains_key(partner) {
                return Err(Rejection::Duplicate {
                    round: self.ctx.round,
                });
            }
            if p.total_bytes != total as u64 || p.piece_count != pieces {
                return Err(Rejection::invalid(
                    subject,
                    format!("a share of {total} bytes in {pieces} pieces, as this round's"),
                    format!(
                        "a share of {} bytes in {} pieces",
                        p.total_bytes, p.piece_count
                    ),
                ));
            }
            if p.bytes.len() != Self::piece_len(total, pieces, 0) {
                return Err(Rejection::invalid(
                    subject,
                    format!("piece 0 of {} bytes", Self::piece_len(total, pieces, 0)),
                    format!("piece 0 of {} bytes", p.bytes.len()),
                ));
            }
            let got = self.combiner.check_share_header(&p.bytes).map_err(|e| {
                Rejection::invalid(subject, "a share of this round's sum", e.to_string())
            })?;
            if got != party {
                return Err(Rejection::invalid(
                    subject,
                    format!("the share of party {} (`{partner}`)", party.0),
                    format!("a share for party {}", got.0),
                ));
            }
            self.streams.insert(
                partner.to_string(),
                ShareStream {
                    party,
                    next: 0,
                    pieces,
                    words: 0,
                    carry: Vec::new(),
                },
            );
        }
        let Some(stream) = self.streams.get_mut(partner) else {
            return Err(Rejection::out_of_phase(
                subject,
                format!("piece {} arrived before piece 0", p.index),
                "piece 0 first",
            ));
        };
        let expected = Self::piece_len(total, stream.pieces, p.index);
        if p.index != stream.next || p.piece_count != stream.pieces || p.bytes.len() != expected {
            let why = format!(
                "decryption share piece {} ({} bytes) out of order or of the wrong size",
                p.index,
                p.bytes.len()
            );
            let want = format!(
                "piece {} of {} bytes, of {} pieces",
                stream.next,
                Self::piece_len(total, stream.pieces, stream.next),
                stream.pieces
            );
            self.streams.remove(partner);
            if p.index > 0 {
                // Part of this share is already combined: the sum cannot be opened.
                self.fail(partner, &why);
            }
            let found = format!(
                "piece {} of {} bytes, of {} pieces",
                p.index,
                p.bytes.len(),
                p.piece_count
            );
            return Err(Rejection::invalid(subject, want, found));
        }
        let body = if p.index == 0 {
            &p.bytes[Combiner::SHARE_HEADER_LEN..]
        } else {
            &p.bytes[..]
        };
        stream.carry.extend_from_slice(body);
        let whole = stream.carry.len() / self.word_bytes * self.word_bytes;
        let subtracted = self
            .combiner
            .subtract_share_words(stream.words, &stream.carry[..whole]);
        if let Err(e) = subtracted {
            let why = format!("decryption share refused: {e}");
            self.streams.remove(partner);
            self.fail(partner, &why);
            return Err(Rejection::invalid(
                subject,
                "a share of this round's sum",
                e.to_string(),
            ));
        }
        stream.words += whole / self.word_bytes;
        stream.carry.drain(..whole);
        stream.next += 1;
        if stream.next == stream.pieces {
            let party = stream.party;
            self.streams.remove(partner);
            self.combiner.complete_share(party).map_err(|e| {
                Rejection::invalid(subject, "a share of this round's sum", e.to_string())
            })?;
        }
        Ok(())
    }

    /// The decrypted sum.
    pub fn finish(self) -> Result<Vec<u64>, String> {
        self.combiner.finish().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consortia_he::{Encryptor, KeyShareGen, PartialDecryptor, Shape};

    const TASK_HASH: [u8; 32] = [3u8; 32];

    fn ceremony_key(names: &[&str]) -> (FederationKey, Vec<consortia_he::SecretKeyShare>) {
        let committee: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let dir = tempfile::tempdir().unwrap();
        let pki =
            consortia_pki::Pki::init(dir.path().join("pki"), &["127.0.0.1".into()], &committee)
                .unwrap();
        let certs: Vec<Vec<u8>> = names
            .iter()
            .map(|n| consortia_pki::read_ca_certificate(&pki.partner_cert_path(n)).unwrap())
            .collect();
        let signers: Vec<consortia_ledger::Signer> = names
            .iter()
            .map(|n| {
                consortia_ledger::Signer::from_pkcs8_pem_file(pki.partner_key_path(n)).unwrap()
            })
            .collect();
        let mut c = KeyCeremony::new(HeParams::Secure128, committee.clone(), TASK_HASH).unwrap();
        let generator = KeyShareGen::new(&c.session);
        let shares: Vec<_> = (0..names.len())
            .map(|i| generator.generate(PartyId(i as u32)))
            .collect();
        let sid = c.session.id.to_vec();
        let session_id = c.session.id;
        let signed = |i: usize, party: usize| {
            let bytes = shares[i].public.to_bytes();
            let d = key_share_digest(&session_id, party as u32, names[party], &TASK_HASH, &bytes);
            KeyShare {
                session_id: sid.clone(),
                public_share: bytes,
                signature: signers[party].sign_hash(&d).unwrap(),
            }
        };
        // Reveal before every commitment is in: refused.
        let early = signed(0, 0);
        assert!(c.reveal(names[0], &certs[0], &early).is_err());
        for (name, s) in names.iter().zip(&shares) {
            c.commit(
                name,
                &KeyCommit {
                    session_id: sid.clone(),
                    commitment: s.commitment.0.to_vec(),
                },
            )
            .unwrap();
        }
        // A non-member's commitment is refused.
        assert!(
            c.commit(
                "mallory",
                &KeyCommit {
                    session_id: sid.clone(),
                    commitment: vec![0; 32]
                }
            )
            .is_err()
        );
        assert!(c.all_committed() && !c.all_revealed());
        // A share that is not the one committed to (another party's) is refused.
        let swapped = signed(1, 0);
        assert!(c.reveal(names[0], &certs[0], &swapped).is_err());
        // A share not signed by its sender (signed by another partner) is refused.
        if names.len() > 1 {
            let mut forged = signed(0, 0);
            forged.signature = signed(1, 1).signature;
            let e = c.reveal(names[0], &certs[0], &forged).unwrap_err();
            assert!(format!("{e:?}").contains("not signed"), "{e:?}");
        }
        for (i, name) in names.iter().enumerate() {
            c.reveal(name, &certs[i], &signed(i, i)).unwrap();
        }
        assert!(c.all_revealed());
        let key = c.finish().unwrap();
        (key, shares.into_iter().map(|s| s.secret).collect())
    }

    fn pieces(round: u64, bytes: &[u8]) -> Vec<DecryptionSharePiece> {
        consortia_proto::share_pieces(round, bytes).collect()
    }

    #[test]
    fn key_is_stored_and_reloaded() {
        let (key, _) = ceremony_key(&["a", "b"]);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(releases(&key, dir.path()).unwrap(), 0);
        count_release(&key, dir.path()).unwrap();
        count_release(&key, dir.path()).unwrap();
        assert_eq!(releases(&key, dir.path()).unwrap(), 2);
        save_key(&key, dir.path()).unwrap();
        assert!(dir.path().join("keys/federation-key.json").exists());
        let back = load_key(dir.path()).unwrap().unwrap();
        assert_eq!(back, key);
        assert_eq!(back.transcript.len(), 2);
        assert_eq!(back.party("b"), Some(PartyId(1)));
        // The releases are counted per key session, across reloads.
        assert_eq!(releases(&back, dir.path()).unwrap(), 2);
        assert_eq!(
            remove_key(dir.path(), &["b".to_string()]).unwrap(),
            Some(key.committee)
        );
        assert!(load_key(dir.path()).unwrap().is_none());
        assert_eq!(excluded(dir.path()).unwrap(), vec!["b".to_string()]);
        // A judged fault adds to the list, once, durably.
        assert_eq!(
            exclude(dir.path(), "c").unwrap(),
            vec!["b".to_string(), "c".to_string()]
        );
        exclude(dir.path(), "c").unwrap();
        assert_eq!(
            excluded(dir.path()).unwrap(),
            vec!["b".to_string(), "c".to_string()]
        );
    }

    /// `<state>/keys/federation-key.json` exactly as this module wrote it
    /// before the key type was shared with the partners (serde's compact
    /// form of its `StoredKey`, fields in this order), with or without the
    /// transcript (keys made before transcripts had none).
    fn written_before(key: &FederationKey, transcript: bool) -> String {
        let shares: Vec<String> = key
            .transcript
            .iter()
            .map(|t| {
                format!(
                    r#"{{"partner":"{}","public_share":"{}","signature":"{}","certificate":"{}"}}"#,
                    t.partner,
                    hex::encode(&t.public_share),
                    hex::encode(&t.signature),
                    hex::encode(&t.certificate)
                )
            })
            .collect();
        let committee: Vec<String> = key.committee.iter().map(|c| format!(r#""{c}""#)).collect();
        let mut text = format!(
            r#"{{"session_id":"{}","params":{},"committee":[{}],"key":"{}""#,
            hex::encode(key.key.session().id),
            key.key.params().id(),
            committee.join(","),
            hex::encode(key.key.to_bytes())
        );
        if transcript {
            text.push_str(&format!(r#","transcript":[{}]"#, shares.join(",")));
        }
        text.push('}');
        text
    }

    #[test]
    fn key_files_written_so_far_still_load() {
        let (key, _) = ceremony_key(&["a", "b"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("federation-key.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, written_before(&key, true)).unwrap();
        assert_eq!(load_key(dir.path()).unwrap().unwrap(), key);
        // Saved again, the file is the same.
        save_key(&key, dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            written_before(&key, true)
        );
        // A key from before transcripts loads (partners refuse it) and can be removed.
        std::fs::write(&path, written_before(&key, false)).unwrap();
        let old = load_key(dir.path()).unwrap().unwrap();
        assert!(!old.has_transcript());
        assert_eq!(old.key_id(), key.key_id());
        assert_eq!(
            remove_key(dir.path(), &[]).unwrap(),
            Some(key.committee.clone())
        );
        // A damaged file is refused, naming the field.
        let mut damaged = written_before(&key, true);
        damaged = damaged.replacen(r#""committee":["a","b"]"#, r#""committee":["a","a"]"#, 1);
        std::fs::write(&path, damaged).unwrap();
        let e = load_key(dir.path()).unwrap_err().to_string();
        assert!(e.contains("committee names `a` twice"), "{e}");
    }

    #[test]
    fn decryption_takes_each_key_holders_share_once_and_nobody_elses() {
        let (key, secrets) = ceremony_key(&["a", "b", "c"]);
        // Over 1 MiB per share: two pieces, split inside a word.
        let values: Vec<u64> = (0..70_000).collect();
        let shape = Shape::new(&key.key, values.len() as u64).unwrap();
        let mut agg = Aggregate::new(shape).unwrap();
        for _ in 0..3 {
            agg.add_vector(&Encryptor::new(&key.key).encrypt(&values).unwrap())
                .unwrap();
        }
        let new = || {
            Decryption::new(7, 1, TASK_HASH, &agg, &key, Vec::new())
                .unwrap()
                .at_shares()
        };
        let mut d = new();
        let shares: Vec<Vec<u8>> = secrets
            .iter()
            .map(|s| {
                PartialDecryptor::new(s)
                    .partial_decrypt(&agg, 3)
                    .unwrap()
                    .to_bytes()
            })
            .collect();
        // From a partner that holds no key share.
        for p in pieces(7, &shares[0]) {
            assert!(matches!(
                d.add_piece("mallory", p),
                Err(r @ Rejection::OutOfPhase { .. }) if r.to_string().contains("holds no share")
            ));
        }
        // Of the wrong length.
        let short = &shares[0][..shares[0].len() - 16];
        let rs: Vec<_> = pieces(7, short)
            .into_iter()
            .map(|p| d.add_piece("a", p))
            .collect();
        assert!(
            matches!(&rs[0], Err(r @ Rejection::Invalid { .. }) if r.to_string().contains("refused"))
        );
        assert!(rs.iter().all(Result::is_err));
        // b's share sent as a's.
        let rs: Vec<_> = pieces(7, &shares[1])
            .into_iter()
            .map(|p| d.add_piece("a", p))
            .collect();
        assert!(
            matches!(&rs[0], Err(r @ Rejection::Invalid { .. }) if r.to_string().contains("party 1"))
        );
        assert!(rs.iter().all(Result::is_err));
        // For another round.
        assert!(matches!(
            d.add_piece("a", pieces(8, &shares[0]).remove(0)),
            Err(Rejection::WrongRound { got: 8, open: 7 })
        ));
        assert_eq!(d.waiting_for(), vec!["a", "b", "c"]);
        assert!(d.failed.is_none());
        // A key holder that breaks its share off after the first piece fails
        // the decryption (part of it is combined already).
        let mut broken = new();
        let mut ps = pieces(7, &shares[0]);
        assert!(ps.len() >= 2);
        broken.add_piece("a", ps.remove(0)).unwrap();
        let mut wrong = ps.remove(0);
        wrong.bytes.pop();
        assert!(broken.add_piece("a", wrong).is_err());
        assert!(broken.failed.as_deref().is_some_and(|f| f.contains("`a`")));
        for (name, bytes) in ["a", "b", "c"].iter().zip(&shares) {
            for p in pieces(7, bytes) {
                d.add_piece(name, p).unwrap();
            }
        }
        // A second share from the same key holder.
        assert_eq!(
            d.add_piece("b", pieces(7, &shares[1]).remove(0)),
            Err(Rejection::Duplicate { round: 7 })
        );
        assert!(d.complete());
        let sum = d.finish().unwrap();
        assert_eq!(sum, values.iter().map(|v| v * 3).collect::<Vec<_>>());
    }

    #[test]
    fn uploads_are_published_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = CiphertextStore::new(dir.path());
        {
            let mut u = store.begin(3, "a", 10, 1).unwrap();
            u.append(b"chunk").unwrap();
            // Dropped unfinished: nothing remains.
        }
        assert!(store.completed(3).unwrap().is_empty());
        let mut u = store.begin(3, "a", 10, 2).unwrap();
        u.append(b"one").unwrap();
        u.append(b"two").unwrap();
        let path = u.finish(b"sig", b"cert", &[[1; 32], [2; 32]]).unwrap();
        let done = store.completed(3).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].partner.as_str(), done[0].examples), ("a", 10));
        assert_eq!(
            (&done[0].signature[..], &done[0].certificate[..]),
            (&b"sig"[..], &b"cert"[..])
        );
        assert_eq!(
            read_chunks(&path).unwrap(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        store.mark_decrypting(3).unwrap();
        assert!(
            store.completed(3).unwrap().is_empty(),
            "never reused once decrypting"
        );
        store.discard_all_but(4).unwrap();
        assert!(!dir.path().join("secure/round-00000003").exists());
    }
}
