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
//! * `<session>.used` — every coin toss this key holder drew a challenge for
//!   (`challenge R A T <aggregate digest> <contributions digest>`), every
//!   share it released (`answered R A`), and every contribution (partner,
//!   round, attempt) in the sums it decrypted: a key holder opens one sum
//!   per (round, attempt), attempts strictly increasing, and never opens a
//!   sum that reuses a contribution — so a coordinator cannot open {A, B, C,
//!   D} and then {A, B, C} and subtract. With a t-of-N key it takes part in
//!   further coin tosses of an attempt (toss numbers strictly increasing,
//!   fewer than [`MAX_TOSSES_PER_ATTEMPT`]) only for exactly the sum it
//!   recorded for that attempt: the same plaintext, each share counted
//!   against the release budget;
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
//! A decryption request is honoured only once the key holder knows that the
//! aggregate it opens is the sum of the updates of at least the task's
//! `min_partners` distinct contributors named in the request, each with a
//! certificate the federation CA issued to it (Mouchet et al., PoPETs 2021,
//! §4: the decryptor must know what it decrypts). It costs the holder the
//! aggregate's size, not the contributors' ([`DecryptJob`]):
//! 1. it receives the aggregate's masks only, chunk by chunk, and checks
//!    their digest against the request's;
//! 2. with the other holders it tosses a coin, commit then reveal: it draws a
//!    32-byte seed from the operating system, sends its commitment
//!    ([`DecryptionContext::commitment`]), reveals the seed only once
//!    it holds the aggregate and sees every holder's commitment (its own
//!    among them, unchanged), and checks every revealed seed against its
//!    commitment; the joint challenge ([`DecryptionContext::joint_challenge`])
//!    is thus unknown to the coordinator until the aggregate is fixed;
//! 3. every contributor sketches its own masks under the challenge
//!    ([`consortia_he::Sketch`]) and signs the sketch with its certificate key
//!    for the one sum it is asked for, one sum per attempt
//!    ([`consortia_proto::sketch_digest`], [`KeyHolder::sketch`]); the holder
//!    checks every contributor's signature over its own sum and that the
//!    sketches add up to the sketch of the aggregate's masks. A wrong aggregate passes with
//!    probability at most 2^-80 per attempt (`consortia_he::sketch`), so the
//!    coordinator can neither pass one partner's update off as a sum, pad it
//!    with updates of its own making, nor count a contribution twice.
//!
//! A contributor's sketch reveals nothing: the masks are public to the
//! coordinator, which could compute the sketch itself; only the signature is
//! the contributor's.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use consortia_he::{
    Aggregate, CollectiveKeyAggregator, HeParams, KeySession, KeyShare, KeyShareGen,
    PartialDecryptor, PartyId, PublicKeyShare, SecretKeyShare, Shape, Sketch, Sketcher,
    ThresholdPartialDecryptor,
};
use consortia_ledger::{Signer, Verifier};
use consortia_model::TaskSpec;
use consortia_proto::federation_key::{parse_params, parse_session_id};
use consortia_proto::{
    AggregateMasks, ChallengeCommit, ChallengeCommitments, ChallengeReveals, ChallengeSeed,
    CollectiveKey, ContributionDigest, ContributorSketches, DecryptRequest, DecryptionContext,
    FederationKey, FederationKeyError, KeyGenRequest, MAX_CONTRIBUTORS, MAX_TOSSES_PER_ATTEMPT,
    SignedSketch, SketchRequest, SketchedSum, contributions_digest, key_share_digest, sha256,
    sketch_digest,
};
use rand::TryRngCore;

use crate::AgentError;
use crate::policy::Policy;

pub mod threshold;

/// Most coin tosses a key holder takes part in per round: with a wrong
/// aggregate passing one toss with probability at most 2^-80, a coordinator
/// that reruns a round this many times still succeeds with at most 2^-64.
pub const MAX_CHALLENGES_PER_ROUND: usize = 1 << 16;

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
    /// This key holder's share of a t-of-N key, once its threshold ceremony
    /// completed (`<session>.threshold`, [`threshold`]).
    threshold: Option<consortia_he::ThresholdKeyShare>,
    /// The task's `key_threshold`, when its key is t-of-N, and where this key
    /// holder's threshold share is kept.
    key_threshold: Option<(u32, PathBuf)>,
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
    /// The threshold extension of the key ceremony in progress, if any.
    ceremony: Option<threshold::ThresholdCeremony>,
    /// The signed complaint of the last refused threshold dealing, until sent.
    complaint: Option<consortia_proto::ThresholdComplaint>,
    /// The federation key, once distributed and installed.
    pub current: Option<InstalledKey>,
    /// This partner's latest signed encrypted update, kept until its round ends.
    own: Option<OwnUpdate>,
}

/// The masks of this partner's own encrypted update (what it sketches when
/// asked), from its signature until its round ends: O(model) memory.
struct OwnUpdate {
    round: u64,
    attempt: u64,
    example_count: u64,
    shape: Shape,
    /// Each chunk's masks (little-endian words).
    masks: Vec<Vec<u8>>,
    /// What this attempt's sketches were signed for.
    sketched: std::sync::Mutex<Sketched>,
}

/// The sketches a contributor signed in its attempt (in memory, with its
/// update): one sum, and one challenge per coin toss of it.
#[derive(Default)]
struct Sketched {
    /// The one sum (aggregate and contributions digests) sketches are
    /// signed for in this attempt: the first asked. A coordinator that got
    /// sketches for two sums of one attempt could open both with disjoint
    /// t-of-N decryption sets and difference them (README "Why a further
    /// toss is safe").
    sum: Option<SketchedSum>,
    /// The coin tosses sketched for, with their challenge: one challenge per
    /// toss, tosses strictly increasing and below [`MAX_TOSSES_PER_ATTEMPT`]
    /// (the same toss and challenge may be asked again: the same sketch).
    tosses: Vec<(u32, [u8; 32])>,
}

/// A key holder's joint decryption in progress (module docs): the
/// aggregate's masks as they arrive, then the coin toss, then the
/// contributors' sketches.
pub struct DecryptJob {
    ctx: DecryptionContext,
    /// [`contributions_digest`] of the request: with the aggregate's digest,
    /// what every toss of this (round, attempt) must repeat exactly.
    contributions: [u8; 32],
    holder: String,
    /// Each contributor: name, example count, its certificate's key.
    contributors: Vec<(String, u64, Verifier)>,
    min: u32,
    aggregate: Aggregate,
    next_chunk: u32,
    stage: JobStage,
}

/// Where a [`DecryptJob`] stands.
enum JobStage {
    /// The aggregate's masks are arriving.
    Masks,
    /// Committed to `seed`; waiting for every holder's commitment.
    Committed {
        seed: [u8; 32],
        commitment: [u8; 32],
    },
    /// `seed` revealed; waiting for every holder's seed.
    Revealed {
        seed: [u8; 32],
        commitments: BTreeMap<String, [u8; 32]>,
    },
    /// The joint challenge is drawn; waiting for the contributors' sketches.
    /// `set`: the holders whose seeds drew it (the decryption set `Q`).
    Challenged {
        challenge: [u8; 32],
        set: Vec<String>,
    },
}

impl JobStage {
    fn name(&self) -> &'static str {
        match self {
            JobStage::Masks => "the aggregate's masks",
            JobStage::Committed { .. } => "the holders' challenge commitments",
            JobStage::Revealed { .. } => "the holders' challenge seeds",
            JobStage::Challenged { .. } => "the contributors' sketches",
        }
    }
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
            ceremony: None,
            complaint: None,
            current: None,
            own: None,
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
    ///
    /// The update's masks are kept ([`KeyHolder::sketch`] answers from them)
    /// until [`KeyHolder::end_round`] or the next signed update.
    pub fn sign_update(
        &mut self,
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
        let mut own = Vec::with_capacity(chunks.len());
        for (index, c) in chunks.iter().enumerate() {
            let (masks, bodies) = shape
                .chunk_parts(index as u32, c)
                .map_err(|e| key_err("cannot sign the update", e))?;
            d.chunk(&sha256(masks), &sha256(bodies));
            own.push(masks.to_vec());
        }
        append_lines(&fed.signed_path, &[tag])?;
        let signature = signer
            .sign_hash(&d.finish())
            .map_err(|e| AgentError::Protocol(format!("cannot sign the update: {e}")))?;
        self.own = Some(OwnUpdate {
            round,
            attempt,
            example_count,
            shape: *shape,
            masks: own,
            sketched: std::sync::Mutex::new(Sketched::default()),
        });
        Ok(signature)
    }

    /// Forgets this partner's own update: its round has ended (or another began).
    pub fn end_round(&mut self) {
        self.own = None;
    }

    /// This partner's signed sketch of its own update's masks for the
    /// decryption of (`req.round`, `req.attempt`) under `req.challenge`, for
    /// the task with hash `task_hash`. Answered only for the (round, attempt)
    /// this partner signed its latest update for, while it still holds that
    /// update's masks, and for one sum per attempt: the first sum asked
    /// (`req.aggregate_digest`, `req.contributions_digest`); a request naming
    /// another sum of the attempt is refused. Reveals nothing the coordinator
    /// does not know: the masks are public to it; the signature binds this
    /// partner's name, its example count, the sum and the challenge
    /// ([`consortia_proto::sketch_digest`]).
    pub fn sketch(
        &self,
        req: &SketchRequest,
        task_hash: &[u8; 32],
    ) -> Result<SignedSketch, AgentError> {
        let refuse = |why: String| {
            AgentError::Protocol(format!(
                "no sketch for attempt {} of round {}: {why}",
                req.attempt, req.round
            ))
        };
        let own = match &self.own {
            Some(o) if (o.round, o.attempt) == (req.round, req.attempt) => o,
            _ => {
                return Err(refuse(
                    "this partner holds no update it signed for that attempt (it sent none, \
                     or it restarted since)"
                        .into(),
                ));
            }
        };
        if !self.has_signed(req.round, req.attempt)? {
            return Err(refuse("this partner signed no update for it".into()));
        }
        let challenge: [u8; 32] = req.challenge.as_slice().try_into().map_err(|_| {
            refuse(format!(
                "a challenge of {} bytes, not 32",
                req.challenge.len()
            ))
        })?;
        let digest_of = |what: &str, bytes: &[u8]| -> Result<[u8; 32], AgentError> {
            bytes.try_into().map_err(|_| {
                refuse(format!(
                    "{what} of {} bytes, not 32, names no sum",
                    bytes.len()
                ))
            })
        };
        let sum = SketchedSum {
            aggregate_digest: digest_of("an aggregate digest", &req.aggregate_digest)?,
            contributions_digest: digest_of("a contributions digest", &req.contributions_digest)?,
        };
        // One challenge per coin toss, a bounded number of tosses per attempt.
        if req.toss >= MAX_TOSSES_PER_ATTEMPT {
            return Err(refuse(format!(
                "coin toss {} is past the most a decryption attempt takes \
                 ({MAX_TOSSES_PER_ATTEMPT})",
                req.toss
            )));
        }
        {
            let mut sketched = own
                .sketched
                .lock()
                .map_err(|_| refuse("the record of sketches is poisoned".into()))?;
            // One sum per attempt: sketches for two sums of one attempt could
            // be opened by disjoint decryption sets and differenced.
            if sketched.sum.is_some_and(|first| first != sum) {
                return Err(refuse(
                    "this partner already sketched its update for another sum of this attempt \
                     (another aggregate or contribution list): a coordinator may open one sum \
                     per attempt"
                        .into(),
                ));
            }
            let again = sketched.tosses.contains(&(req.toss, challenge));
            if let Some((last, _)) = sketched
                .tosses
                .last()
                .filter(|(t, _)| !again && *t >= req.toss)
            {
                return Err(refuse(format!(
                    "this partner already sketched its update for coin toss {last} of that \
                     attempt (one challenge per toss, tosses strictly increasing)"
                )));
            }
            sketched.sum = Some(sum);
            if !again {
                sketched.tosses.push((req.toss, challenge));
            }
        }
        let mut sketcher = Sketcher::new(&own.shape, &challenge);
        for (index, masks) in own.masks.iter().enumerate() {
            sketcher
                .add_chunk_masks(index as u32, masks)
                .map_err(|e| refuse(e.to_string()))?;
        }
        let sketch = sketcher
            .finish()
            .map_err(|e| refuse(e.to_string()))?
            .to_bytes();
        let digest = sketch_digest(
            &own.shape.key_id,
            task_hash,
            req.round,
            req.attempt,
            req.toss,
            &self.partner,
            own.example_count,
            &sum,
            &challenge,
            &sketch,
        );
        let signature = self
            .signer
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("no signing key loaded".into()))?
            .sign_hash(&digest)
            .map_err(|e| refuse(format!("cannot sign the sketch: {e}")))?;
        Ok(SignedSketch {
            round: req.round,
            attempt: req.attempt,
            toss: req.toss,
            sketch,
            signature,
        })
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
        // A threshold share stored by an earlier run of this key's ceremony.
        let threshold = match &secret {
            Some(secret) => threshold::load_share(&self.path(&id, "threshold"), secret)?,
            None => None,
        };
        self.current = Some(InstalledKey {
            public,
            secret,
            threshold,
            key_threshold: task.key_threshold.map(|t| (t, self.path(&id, "threshold"))),
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

    /// Starts a joint decryption: checks the request against the task (its
    /// hash, update length and minimum of contributors, raised to this
    /// partner's own `floor`), every contributor's certificate against the
    /// federation CA, this key holder's records (one answer per (round,
    /// attempt), no contribution reused) and its release budget. The
    /// aggregate's masks follow ([`DecryptJob::add_masks`]).
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
        // A t-of-N key decrypts only with the threshold share; the N-of-N share
        // alone would only spoil the sum.
        if let (Some((t, path)), None) = (&fed.key_threshold, &fed.threshold) {
            return Err(AgentError::Config {
                path: path.clone(),
                message: format!(
                    "decryption of round {} refused: this task's key is {t}-of-N \
                     (key_threshold), and this key holder's threshold share is missing; \
                     restore the file from a backup taken after the key was made, or ask the \
                     operator to re-key (`consortia rekey`)",
                    req.round
                ),
            });
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
        // N-of-N: every holder decrypts, so there is no other set to toss again with.
        if req.toss > 0 && fed.threshold.is_none() {
            return Err(AgentError::Protocol(format!(
                "decryption of round {} refused: coin toss {} asked, and this task's key is \
                 N-of-N (further tosses of an attempt are for key_threshold keys only)",
                req.round, req.toss
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
        let mut contributors = Vec::with_capacity(req.contributions.len());
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
            contributors.push((c.partner.clone(), c.example_count, verifier));
        }
        let used = read_lines(&fed.used_path)?;
        let contributions = contributions_digest(&req.contributions);
        let names: Vec<&str> = req
            .contributions
            .iter()
            .map(|c| c.partner.as_str())
            .collect();
        check_fresh(
            &used,
            &Toss {
                round: req.round,
                attempt: req.attempt,
                toss: req.toss,
                aggregate: digest,
                contributions,
            },
            &names,
            false,
        )?;
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
            ctx: DecryptionContext {
                task_hash: *task_hash,
                key_id: fed.key.key_id(),
                round: req.round,
                attempt: req.attempt,
                toss: req.toss,
                aggregate_digest: digest,
            },
            contributions,
            holder: self.partner.clone(),
            contributors,
            min,
            aggregate,
            next_chunk: 0,
            stage: JobStage::Masks,
        })
    }

    /// Coin toss, step 2: every holder's commitment is in. Checks that the
    /// list names every key holder of the installed key once and no one
    /// else, with this holder's own commitment unchanged; records (durably,
    /// before the seed leaves) that this holder drew a challenge for this
    /// (round, attempt), so it never tosses the coin for it again; reveals
    /// its seed.
    pub fn reveal_seed(
        &self,
        job: &mut DecryptJob,
        list: &ChallengeCommitments,
    ) -> Result<ChallengeSeed, AgentError> {
        let fed = self.current.as_ref().ok_or_else(|| {
            AgentError::Protocol("decryption asked before the collective key was installed".into())
        })?;
        job.expect(list.round, list.attempt, list.toss, "challenge commitments")?;
        let JobStage::Committed { seed, commitment } = job.stage else {
            return Err(job.out_of_order("challenge commitments"));
        };
        let refuse = |why: String| {
            AgentError::Protocol(format!(
                "decryption of round {} refused: the challenge commitments {why}",
                job.ctx.round
            ))
        };
        let mut commitments = BTreeMap::new();
        for c in &list.commitments {
            if !fed.committee.contains(&c.holder) {
                return Err(refuse(format!("name `{}`, not a key holder", c.holder)));
            }
            let value: [u8; 32] = c
                .commitment
                .as_slice()
                .try_into()
                .map_err(|_| refuse(format!("give `{}` one that is not 32 bytes", c.holder)))?;
            if commitments.insert(c.holder.clone(), value).is_some() {
                return Err(refuse(format!("name `{}` twice", c.holder)));
            }
        }
        match fed.threshold.as_ref().map(|s| s.committee().threshold()) {
            // N-of-N: every key holder tosses the coin and decrypts.
            None => {
                if let Some(missing) = fed.committee.iter().find(|h| !commitments.contains_key(*h))
                {
                    return Err(refuse(format!("leave out key holder `{missing}`")));
                }
            }
            // t-of-N: the holders that committed are the decryption set `Q`.
            Some(t) => {
                if (commitments.len() as u32) < t {
                    return Err(refuse(format!(
                        "name {} key holders, fewer than the key's threshold {t}",
                        commitments.len()
                    )));
                }
            }
        }
        if commitments.get(&job.holder) != Some(&commitment) {
            return Err(refuse("change this key holder's own commitment".into()));
        }
        let used = read_lines(&fed.used_path)?;
        check_fresh(&used, &job.toss(), &job.names(), false)?;
        let tossed = used
            .iter()
            .filter(|l| l.starts_with(&format!("challenge {} ", job.ctx.round)))
            .count();
        if tossed >= MAX_CHALLENGES_PER_ROUND {
            return Err(refuse(format!(
                "come after {tossed} coin tosses in this round, the most a key holder takes part \
                 in (a coordinator must not rerun a round without end)"
            )));
        }
        // Durable before the seed leaves: this toss, and the sum it is for,
        // which every further toss of this (round, attempt) must repeat.
        append_lines(&fed.used_path, &[job.toss().record()])?;
        job.stage = JobStage::Revealed { seed, commitments };
        Ok(ChallengeSeed {
            round: job.ctx.round,
            attempt: job.ctx.attempt,
            toss: job.ctx.toss,
            seed: seed.to_vec(),
        })
    }

    /// Finishes a joint decryption once the contributors' signed sketches are
    /// in: every contributor the request named gives exactly one, signed with
    /// the key of the certificate given for it over this decryption's
    /// challenge, and together they add up to the sketch of the aggregate's
    /// masks this holder received. Then records the (round, attempt), every
    /// contribution and the aggregate's digest as answered (durably) and
    /// returns the partial decryption's wire form.
    ///
    /// In a further coin toss of a t-of-N decryption, no sketches (an empty
    /// list) are accepted only if this key holder already checked them and
    /// answered in an earlier toss of the identical sum (its own record: the
    /// same attempt, aggregate digest and contributions): what it checked
    /// then still holds for the same sum, whoever of its contributors has
    /// gone since.
    pub fn finish_decrypt(
        &self,
        job: DecryptJob,
        sketches: &ContributorSketches,
    ) -> Result<Vec<u8>, AgentError> {
        let fed = self.current.as_ref().ok_or_else(|| {
            AgentError::Protocol("decryption asked before the collective key was installed".into())
        })?;
        let secret = fed
            .secret
            .as_ref()
            .ok_or_else(|| AgentError::Protocol("not a key holder".into()))?;
        job.expect(
            sketches.round,
            sketches.attempt,
            sketches.toss,
            "contributors' sketches",
        )?;
        let JobStage::Challenged { challenge, set } = &job.stage else {
            return Err(job.out_of_order("contributors' sketches"));
        };
        let challenge = *challenge;
        let refuse = |why: String| {
            AgentError::Protocol(format!(
                "decryption of round {} refused: {why}",
                job.ctx.round
            ))
        };
        let used = read_lines(&fed.used_path)?;
        let names = job.names();
        let retoss = check_fresh(&used, &job.toss(), &names, true)?;
        if sketches.sketches.is_empty() && !job.contributors.is_empty() {
            let answered_before = format!("answered {} {}", job.ctx.round, job.ctx.attempt);
            if !(retoss && used.contains(&answered_before)) {
                return Err(refuse(format!(
                    "no contributor's sketch was sent, and this key holder did not check the \
                     sketches of this sum in an earlier coin toss of attempt {}",
                    job.ctx.attempt
                )));
            }
        } else {
            job.check_sketches(&challenge, sketches)?;
        }
        let answered = read_answered(&fed.answered_path)?;
        let refused = |e: consortia_he::HeError| {
            key_err(&format!("decryption of round {} refused", job.ctx.round), e)
        };
        let share = match &fed.threshold {
            None => {
                let mut decryptor = PartialDecryptor::new(secret);
                decryptor.remember(answered);
                decryptor
                    .partial_decrypt(&job.aggregate, job.min)
                    .map_err(refused)?
            }
            Some(share) => {
                // The set `Q` of the coin toss, by party number.
                let members = set
                    .iter()
                    .map(|h| {
                        fed.party(h)
                            .ok_or_else(|| refuse(format!("`{h}` holds no share")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let q = share.committee().decryption_set(members).map_err(refused)?;
                // Only a further toss of the identical sum (same attempt,
                // aggregate and contributions, `check_fresh`) may open it again:
                // the same plaintext, nothing new.
                if answered.contains(&job.ctx.aggregate_digest) && !retoss {
                    return Err(refuse("this aggregate was already decrypted".into()));
                }
                ThresholdPartialDecryptor::new(share, &fed.key)
                    .and_then(|mut d| d.partial_decrypt(&job.aggregate, &q, job.min))
                    .map_err(refused)?
            }
        };
        // Durable before the share leaves: this (round, attempt) and every
        // contribution in the sum are never opened again.
        let mut lines = vec![format!("answered {} {}", job.ctx.round, job.ctx.attempt)];
        lines.extend(
            names
                .iter()
                .map(|n| format!("contribution {} {} {n}", job.ctx.round, job.ctx.attempt)),
        );
        append_lines(&fed.used_path, &lines)?;
        append_answered(&fed.answered_path, &job.ctx.aggregate_digest)?;
        Ok(share.to_bytes())
    }
}

impl DecryptJob {
    /// The round being decrypted.
    pub fn round(&self) -> u64 {
        self.ctx.round
    }

    /// The attempt being decrypted.
    pub fn attempt(&self) -> u64 {
        self.ctx.attempt
    }

    /// The coin toss of this attempt.
    pub fn toss_number(&self) -> u32 {
        self.ctx.toss
    }

    fn names(&self) -> Vec<&str> {
        self.contributors.iter().map(|(n, ..)| n.as_str()).collect()
    }

    /// What this job's toss is of, as the key holder's records keep it.
    fn toss(&self) -> Toss {
        Toss {
            round: self.ctx.round,
            attempt: self.ctx.attempt,
            toss: self.ctx.toss,
            aggregate: self.ctx.aggregate_digest,
            contributions: self.contributions,
        }
    }

    /// The sketch check (module docs): every contributor named gives exactly
    /// one sketch, signed with the key of the certificate given for it over
    /// this toss's `challenge` and this job's sum (its aggregate digest and
    /// contributions digest: a sketch signed for another sum is refused),
    /// and together they add up to the sketch of the aggregate's masks.
    fn check_sketches(
        &self,
        challenge: &[u8; 32],
        sketches: &ContributorSketches,
    ) -> Result<(), AgentError> {
        let challenge = *challenge;
        let job = self;
        let refuse = |why: String| {
            AgentError::Protocol(format!(
                "decryption of round {} refused: {why}",
                job.ctx.round
            ))
        };
        let params = job.aggregate.shape().params;
        let mut sum = Sketch::zero(params);
        let mut seen = HashSet::new();
        for s in &sketches.sketches {
            let Some((name, examples, verifier)) =
                job.contributors.iter().find(|(n, ..)| n == &s.partner)
            else {
                return Err(refuse(format!(
                    "a sketch is given as `{}`'s, who is not a contributor to this sum",
                    s.partner
                )));
            };
            if !seen.insert(name.as_str()) {
                return Err(refuse(format!("two sketches are given as `{name}`'s")));
            }
            // Length-checked (a few hundred bytes) before anything is decoded.
            let sketch = Sketch::from_bytes(&s.sketch, params)
                .map_err(|e| refuse(format!("the sketch given as `{name}`'s: {e}")))?;
            let digest =
                job.ctx
                    .sketch_digest(name, *examples, &self.contributions, &challenge, &s.sketch);
            if !verifier.verify_hash(&digest, &s.signature) {
                return Err(refuse(format!(
                    "the sketch given as `{name}`'s is not signed by `{name}` for this \
                     decryption (its round, attempt, example count, challenge and sum: a \
                     sketch signed for another sum of the attempt does not open this one)"
                )));
            }
            sum.add(&sketch).map_err(|e| refuse(e.to_string()))?;
        }
        if let Some((missing, ..)) = job
            .contributors
            .iter()
            .find(|(n, ..)| !seen.contains(n.as_str()))
        {
            return Err(refuse(format!("no sketch from contributor `{missing}`")));
        }
        // The defence (module docs): the sketches of the contributors' own
        // masks add up to the sketch of the aggregate's only if the aggregate
        // is their sum, but for probability at most 2^-80.
        if Sketch::of_aggregate(&job.aggregate, &challenge) != sum {
            return Err(refuse(
                "the aggregate's masks are not the sum of the named contributors' masks (their \
                 signed sketches do not add up to its sketch): the coordinator asks to open \
                 another sum than the one it names"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Refuses a message of another (round, attempt, toss) than this job's.
    fn expect(&self, round: u64, attempt: u64, toss: u32, what: &str) -> Result<(), AgentError> {
        if (round, attempt, toss) != (self.ctx.round, self.ctx.attempt, self.ctx.toss) {
            return Err(AgentError::Protocol(format!(
                "{what} for coin toss {toss} of attempt {attempt} of round {round} while \
                 decrypting toss {} of attempt {} of round {}",
                self.ctx.toss, self.ctx.attempt, self.ctx.round
            )));
        }
        Ok(())
    }

    fn out_of_order(&self, what: &str) -> AgentError {
        AgentError::Protocol(format!(
            "decryption of round {} refused: {what} sent while this key holder waits for {}",
            self.ctx.round,
            self.stage.name()
        ))
    }

    /// Coin toss, step 1: the next chunk of the aggregate's masks (in order).
    /// Once the last is in and their digest is the request's, draws a fresh
    /// 32-byte seed from the operating system and returns the commitment to
    /// send ([`DecryptionContext::commitment`]).
    pub fn add_masks(&mut self, m: &AggregateMasks) -> Result<Option<ChallengeCommit>, AgentError> {
        self.expect(m.round, m.attempt, m.toss, "aggregate masks")?;
        if !matches!(self.stage, JobStage::Masks) || m.index != self.next_chunk {
            return Err(AgentError::Protocol(format!(
                "decryption of round {} refused: chunk {} of the aggregate's masks out of order \
                 (this key holder waits for {})",
                self.ctx.round,
                m.index,
                self.stage.name()
            )));
        }
        self.aggregate
            .set_mask_chunk(m.index, &m.masks, self.contributors.len() as u32)
            .map_err(|e| key_err("the aggregate's masks refused", e))?;
        self.next_chunk += 1;
        if self.next_chunk < self.aggregate.shape().chunks() {
            return Ok(None);
        }
        if self.aggregate.mask_digest() != self.ctx.aggregate_digest {
            return Err(AgentError::Protocol(format!(
                "decryption of round {} refused: the aggregate's masks sent are not the aggregate \
                 the coordinator asks to open (their digest differs)",
                self.ctx.round
            )));
        }
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut seed).map_err(|e| {
            AgentError::Protocol(format!(
                "cannot draw a challenge seed from the operating system: {e}"
            ))
        })?;
        let commitment = self.ctx.commitment(&self.holder, &seed);
        self.stage = JobStage::Committed { seed, commitment };
        Ok(Some(ChallengeCommit {
            round: self.ctx.round,
            attempt: self.ctx.attempt,
            toss: self.ctx.toss,
            commitment: commitment.to_vec(),
        }))
    }

    /// Coin toss, step 3: every holder's seed. Each must open the commitment
    /// that holder made (a holder whose commitment is never opened fails the
    /// toss: whatever follows is a new toss, under a new context), and this holder's own
    /// must be the one it revealed. Draws the joint challenge
    /// ([`DecryptionContext::joint_challenge`]).
    pub fn take_reveals(&mut self, r: &ChallengeReveals) -> Result<(), AgentError> {
        self.expect(r.round, r.attempt, r.toss, "challenge seeds")?;
        let JobStage::Revealed { seed, commitments } = &self.stage else {
            return Err(self.out_of_order("challenge seeds"));
        };
        let refuse = |why: String| {
            AgentError::Protocol(format!(
                "decryption of round {} refused: the challenge seeds {why}",
                self.ctx.round
            ))
        };
        let mut seeds: BTreeMap<&str, [u8; 32]> = BTreeMap::new();
        for h in &r.seeds {
            let Some(commitment) = commitments.get(&h.holder) else {
                return Err(refuse(format!(
                    "name `{}`, who made no commitment",
                    h.holder
                )));
            };
            let value: [u8; 32] = h
                .seed
                .as_slice()
                .try_into()
                .map_err(|_| refuse(format!("give `{}` one that is not 32 bytes", h.holder)))?;
            if !self.ctx.opens(&h.holder, &value, commitment) {
                return Err(refuse(format!(
                    "give `{}` one that does not open its commitment",
                    h.holder
                )));
            }
            if seeds.insert(h.holder.as_str(), value).is_some() {
                return Err(refuse(format!("name `{}` twice", h.holder)));
            }
        }
        if let Some(missing) = commitments.keys().find(|h| !seeds.contains_key(h.as_str())) {
            return Err(refuse(format!(
                "leave out `{missing}`'s: its commitment is never opened"
            )));
        }
        if seeds.get(self.holder.as_str()) != Some(seed) {
            return Err(refuse("change this key holder's own seed".into()));
        }
        let challenge = self.ctx.joint_challenge(seeds.iter().map(|(h, s)| (*h, s)));
        let set = seeds.keys().map(|h| h.to_string()).collect();
        self.stage = JobStage::Challenged { challenge, set };
        Ok(())
    }

    /// The joint challenge, once drawn.
    pub fn challenge(&self) -> Option<[u8; 32]> {
        match self.stage {
            JobStage::Challenged { challenge, .. } => Some(challenge),
            _ => None,
        }
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
    if let Some(t) = task.key_threshold {
        let n = committee.len() as u32;
        let max = consortia_he::threshold::MAX_THRESHOLD_PARTIES;
        if n < t || n > max {
            return Err(crate::policy::PolicyViolation {
                task: task.name.clone(),
                field: "key holders",
                task_value: n.to_string(),
                policy_value: format!(
                    "requires between key_threshold ({t}) and {max} for a t-of-N key \
                     (docs/threshold.md)"
                ),
            }
            .into());
        }
    }
    consortia_proto::federation_key::check_committee(committee)
        .map_err(|e| AgentError::Protocol(format!("the key {e}")))
}

/// One coin toss of a decryption, as the key holder's record keeps it
/// (`challenge R A T <aggregate digest> <contributions digest>`, hex),
/// written durably before its seed leaves.
struct Toss {
    round: u64,
    attempt: u64,
    toss: u32,
    aggregate: [u8; 32],
    contributions: [u8; 32],
}

impl Toss {
    fn record(&self) -> String {
        format!(
            "challenge {} {} {} {} {}",
            self.round,
            self.attempt,
            self.toss,
            hex::encode(self.aggregate),
            hex::encode(self.contributions)
        )
    }
}

/// A line of the key holder's record, split: kind, round, attempt, and the
/// rest (a contributor's name; a toss's number and digests).
fn parse_record(line: &str) -> (Option<&str>, Option<u64>, Option<u64>, Vec<&str>) {
    let mut parts = line.split(' ');
    let kind = parts.next();
    let num = |x: Option<&str>| x.and_then(|x| x.parse::<u64>().ok());
    let round = num(parts.next());
    let attempt = num(parts.next());
    (kind, round, attempt, parts.collect())
}

/// Refuses a coin toss `t` unless it is fresh: its (round, attempt) newer
/// than every one answered or tossed a coin for in that round, and none of
/// its contributions in a sum already decrypted; or a further toss of that
/// very (round, attempt) — toss numbers strictly increasing, below
/// [`MAX_TOSSES_PER_ATTEMPT`] — for exactly the aggregate and contributions
/// every earlier toss of it recorded (re-opening the same sum: the same
/// plaintext, nothing new). `own_toss`: this holder has tossed the coin for
/// `t` itself (it is finishing it). True when an earlier toss of the same
/// sum is recorded (its share may already have been released).
fn check_fresh(
    used: &[String],
    t: &Toss,
    names: &[&str],
    own_toss: bool,
) -> Result<bool, AgentError> {
    let (round, attempt) = (t.round, t.attempt);
    if t.toss >= MAX_TOSSES_PER_ATTEMPT {
        return Err(AgentError::Protocol(format!(
            "decryption of attempt {attempt} of round {round} refused: coin toss {} is past the \
             most one attempt takes ({MAX_TOSSES_PER_ATTEMPT})",
            t.toss
        )));
    }
    // The earlier tosses of this very (round, attempt): all of this sum.
    let mut earlier = false;
    let mut refused = None;
    for line in used {
        let (kind, r, a, rest) = parse_record(line);
        if kind != Some("challenge") || r != Some(round) || a != Some(attempt) {
            continue;
        }
        let recorded = match rest.as_slice() {
            [toss, aggregate, contributions] => toss
                .parse::<u32>()
                .ok()
                .map(|toss| (toss, *aggregate, *contributions)),
            _ => None,
        };
        let why = match recorded {
            None => Some("one challenge per attempt, attempts strictly increasing".to_string()),
            Some((_, aggregate, contributions))
                if aggregate != hex::encode(t.aggregate)
                    || contributions != hex::encode(t.contributions) =>
            {
                Some(
                    "for another sum (another aggregate or other contributions); a further \
                     toss is only for the same sum"
                        .to_string(),
                )
            }
            Some((toss, ..)) if toss > t.toss || toss == t.toss && !own_toss => Some(format!(
                "its coin toss {toss}, so not toss {} (tosses strictly increasing)",
                t.toss
            )),
            Some((toss, ..)) => {
                earlier |= toss < t.toss;
                None
            }
        };
        if let Some(why) = why {
            refused.get_or_insert(AgentError::Protocol(format!(
                "decryption of attempt {attempt} of round {round} refused: this key holder \
                 already tossed the coin for attempt {attempt} of that round ({why})"
            )));
        }
    }
    if let Some(e) = refused {
        return Err(e);
    }
    for line in used {
        if let (Some("answered"), Some(r), Some(a), _) = parse_record(line)
            && r == round
            && (a > attempt || a == attempt && !earlier)
        {
            return Err(AgentError::Protocol(format!(
                "decryption of attempt {attempt} of round {round} refused: this key holder \
                 already decrypted attempt {a} of that round (one decryption per attempt, \
                 attempts strictly increasing)"
            )));
        }
    }
    for line in used {
        match parse_record(line) {
            (Some("challenge"), Some(r), Some(a), _) if r == round && a > attempt => {
                return Err(AgentError::Protocol(format!(
                    "decryption of attempt {attempt} of round {round} refused: this key holder \
                     already tossed the coin for attempt {a} of that round (one challenge per \
                     attempt, attempts strictly increasing)"
                )));
            }
            (Some("contribution"), Some(r), Some(a), rest)
                if r == round
                    && a == attempt
                    && !earlier
                    && names.contains(&rest.join(" ").as_str()) =>
            {
                let p = rest.join(" ");
                return Err(AgentError::Protocol(format!(
                    "decryption of round {round} refused: `{p}`'s update of attempt {attempt} \
                     was already in a sum this key holder decrypted (no contribution is \
                     opened twice)"
                )));
            }
            _ => {}
        }
    }
    Ok(earlier)
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
    use consortia_proto::{
        Contribution, ContributorSketch, HolderCommitment, HolderSeed, SignedKeyShare,
    };

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

    /// A t-of-N task's key committee has between t and 12 holders; without
    /// `key_threshold` any committee above the colluders assumed passes.
    #[test]
    fn a_threshold_task_refuses_a_committee_below_t_or_above_twelve() {
        let names = |n: usize| (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>();
        let policy = Policy::default();
        let mut t = task();
        check_committee(&names(2), &t, &policy).unwrap();
        check_committee(&names(13), &t, &policy).unwrap();
        t.key_threshold = Some(3);
        let e = check_committee(&names(2), &t, &policy)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key holders") && e.contains("key_threshold (3)"),
            "{e}"
        );
        check_committee(&names(3), &t, &policy).unwrap();
        check_committee(&names(12), &t, &policy).unwrap();
        let e = check_committee(&names(13), &t, &policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 13") && e.contains("and 12"), "{e}");
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
    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn chunks(key: &CollectivePublicKey, value: u64) -> Vec<Vec<u8>> {
        Encryptor::new(key)
            .encrypt(&[value; VALUES])
            .unwrap()
            .chunks()
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// Every contributor signs an update for (round 4, `attempt`): a, b and
    /// c, each keeping its masks to sketch them later. Returns the chunks.
    fn genuine(c: &mut Committee, attempt: u64) -> Vec<Vec<Vec<u8>>> {
        let shape = Shape::new(&c.key, VALUES as u64).unwrap();
        (0..3)
            .map(|i| {
                let ch = chunks(&c.key, i as u64 + 1);
                c.holders[i]
                    .sign_update(&shape, &HASH, 4, attempt, 100, &ch)
                    .unwrap();
                ch
            })
            .collect()
    }

    /// The contributors' signed sketches for (round 4, `attempt`, toss 0)
    /// of the sum `sum` under `challenge`, as the coordinator relays them.
    /// Each contributor's record of the sum and challenges it sketched is
    /// cleared first: these tests play many decryptions of one attempt
    /// against holder a, each for contributors meeting toss 0 for the first
    /// time (the contributors' own bounds are
    /// `contributors_sketch_one_challenge_per_toss_...` and
    /// `contributors_sketch_one_sum_per_attempt`).
    fn sketches(
        c: &Committee,
        attempt: u64,
        challenge: &[u8; 32],
        sum: &SketchedSum,
    ) -> Vec<ContributorSketch> {
        c.holders
            .iter()
            .zip(NAMES)
            .map(|(h, name)| {
                if let Some(own) = &h.own {
                    *own.sketched.lock().unwrap() = Sketched::default();
                }
                let req = sketch_request(attempt, 0, challenge, sum);
                let s = h.sketch(&req, &HASH).unwrap();
                ContributorSketch {
                    partner: name.into(),
                    sketch: s.sketch,
                    signature: s.signature,
                }
            })
            .collect()
    }

    /// What the coordinator asks holder a to open: the contributors it names
    /// (name, index of the certificate given for it) and the updates it sums.
    struct Ask<'a> {
        attempt: u64,
        named: Vec<(&'a str, usize)>,
        summed: Vec<&'a [Vec<u8>]>,
    }

    /// Runs holder a's side of the joint decryption of `ask` (round 4), the
    /// other holders tossing the coin honestly; `relay` gives the sketches
    /// the coordinator sends once it knows the challenge. The result of a's
    /// partial decryption.
    fn decrypt(
        c: &Committee,
        ask: &Ask<'_>,
        relay: impl Fn(&[u8; 32], &SketchedSum) -> Vec<ContributorSketch>,
    ) -> Result<Vec<u8>, AgentError> {
        let shape = Shape::new(&c.key, VALUES as u64).unwrap();
        let mut summed = Aggregate::new(shape).unwrap();
        for ch in &ask.summed {
            for (i, b) in ch.iter().enumerate() {
                summed.add_bytes(i as u32, b).unwrap();
            }
        }
        // The masks the coordinator sends, as a sum of the contributors it names.
        let mut agg = Aggregate::new(shape).unwrap();
        for i in 0..shape.chunks() {
            let chunk = summed.mask_chunk(i).unwrap();
            agg.set_mask_chunk(i, &chunk, ask.named.len() as u32)
                .unwrap();
        }
        let req = request(c, &ask.named, 1, agg.mask_digest(), ask.attempt, HASH);
        let job_sum = sum_of(&req);
        let a = &c.holders[0];
        let mut job = a.begin_decrypt(&req, 3, VALUES as u64, &HASH)?;
        let mut commit = None;
        for i in 0..shape.chunks() {
            commit = job.add_masks(&AggregateMasks {
                toss: 0,
                round: 4,
                attempt: ask.attempt,
                index: i,
                masks: agg.mask_chunk(i).unwrap(),
            })?;
        }
        let commit = commit.expect("a commitment once every chunk is in");
        let ctx = context(c, ask.attempt, agg.mask_digest());
        let others = [("b", [11u8; 32]), ("c", [12u8; 32])];
        let mut commitments = vec![HolderCommitment {
            holder: "a".into(),
            commitment: commit.commitment,
        }];
        for (h, seed) in &others {
            commitments.push(HolderCommitment {
                holder: h.to_string(),
                commitment: ctx.commitment(h, seed).to_vec(),
            });
        }
        let list = ChallengeCommitments {
            toss: 0,
            round: 4,
            attempt: ask.attempt,
            commitments,
        };
        let own = a.reveal_seed(&mut job, &list)?;
        let mut seeds = vec![HolderSeed {
            holder: "a".into(),
            seed: own.seed,
        }];
        seeds.extend(others.iter().map(|(h, seed)| HolderSeed {
            holder: h.to_string(),
            seed: seed.to_vec(),
        }));
        job.take_reveals(&ChallengeReveals {
            toss: 0,
            round: 4,
            attempt: ask.attempt,
            seeds,
        })?;
        let challenge = job.challenge().expect("drawn");
        a.finish_decrypt(
            job,
            &ContributorSketches {
                toss: 0,
                round: 4,
                attempt: ask.attempt,
                sketches: relay(&challenge, &job_sum),
            },
        )
    }

    /// The sum a decryption request names, as a contributor's sketch binds it.
    fn sum_of(req: &DecryptRequest) -> SketchedSum {
        SketchedSum {
            aggregate_digest: req.aggregate_digest.as_slice().try_into().unwrap(),
            contributions_digest: contributions_digest(&req.contributions),
        }
    }

    /// The request for a contributor's sketch of (round 4, `attempt`, `toss`)
    /// of `sum` under `challenge`.
    fn sketch_request(
        attempt: u64,
        toss: u32,
        challenge: &[u8; 32],
        sum: &SketchedSum,
    ) -> SketchRequest {
        SketchRequest {
            toss,
            round: 4,
            attempt,
            challenge: challenge.to_vec(),
            aggregate_digest: sum.aggregate_digest.to_vec(),
            contributions_digest: sum.contributions_digest.to_vec(),
        }
    }

    /// Attempt `attempt` at decrypting round 4 of the task `HASH` under
    /// `c`'s key, the aggregate's mask digest `digest`.
    fn context(c: &Committee, attempt: u64, digest: [u8; 32]) -> DecryptionContext {
        DecryptionContext {
            toss: 0,
            task_hash: HASH,
            key_id: c.key.key_id(),
            round: 4,
            attempt,
            aggregate_digest: digest,
        }
    }

    /// The decryption request of round 4 naming `named` (partner, index of
    /// the certificate given for it) as the coordinator sends it.
    fn request(
        c: &Committee,
        named: &[(&str, usize)],
        min_contributors: u32,
        digest: [u8; 32],
        attempt: u64,
        task_hash: [u8; 32],
    ) -> DecryptRequest {
        DecryptRequest {
            toss: 0,
            round: 4,
            contributions: named
                .iter()
                .map(|(name, cert)| Contribution {
                    partner: name.to_string(),
                    example_count: 100,
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

    const ALL: [(&str, usize); 3] = [("a", 0), ("b", 1), ("c", 2)];

    #[test]
    fn key_holders_open_only_sums_of_signed_updates() {
        let mut c = committee();
        let updates = genuine(&mut c, 1);
        let ask = |attempt| Ask {
            attempt,
            named: ALL.to_vec(),
            summed: updates.iter().map(Vec::as_slice).collect(),
        };
        // The certificate given for `c` is b's.
        let wrong_cert = Ask {
            named: vec![("a", 0), ("b", 1), ("c", 1)],
            ..ask(1)
        };
        let e = decrypt(&c, &wrong_cert, |ch, sum| sketches(&c, 1, ch, sum))
            .unwrap_err()
            .to_string();
        assert!(e.contains("names `b`"), "{e}");
        // b's sketch signed under another challenge does not carry over.
        let e = decrypt(&c, &ask(1), |ch, sum| {
            let mut s = sketches(&c, 1, ch, sum);
            s[1] = sketches(&c, 1, &[0; 32], sum).swap_remove(1);
            s
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("not signed by `b`"), "{e}");
        // A sketch missing, or one given as a partner's outside the sum.
        let updates = genuine(&mut c, 2);
        let ask = |attempt| Ask {
            attempt,
            named: ALL.to_vec(),
            summed: updates.iter().map(Vec::as_slice).collect(),
        };
        let e = decrypt(&c, &ask(2), |ch, sum| {
            sketches(&c, 2, ch, sum)[..2].to_vec()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no sketch from contributor `c`"), "{e}");
        let updates = genuine(&mut c, 3);
        let ask = |attempt| Ask {
            attempt,
            named: ALL.to_vec(),
            summed: updates.iter().map(Vec::as_slice).collect(),
        };
        let e = decrypt(&c, &ask(3), |ch, sum| {
            let mut s = sketches(&c, 3, ch, sum);
            s[2].partner = "mallory".into();
            s
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("`mallory`'s, who is not a contributor"), "{e}");
        // Fewer contributors than the partner's own floor, whatever the request says.
        let updates = genuine(&mut c, 4);
        let two = Ask {
            attempt: 4,
            named: ALL[..2].to_vec(),
            summed: updates[..2].iter().map(Vec::as_slice).collect(),
        };
        let e = decrypt(&c, &two, |ch, sum| sketches(&c, 4, ch, sum)[..2].to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 3"), "{e}");
        // Three signed updates and their sketches: the share comes, once.
        let ask = Ask {
            attempt: 4,
            named: ALL.to_vec(),
            summed: updates.iter().map(Vec::as_slice).collect(),
        };
        assert!(decrypt(&c, &ask, |ch, sum| sketches(&c, 4, ch, sum)).is_ok());
        let e = decrypt(&c, &ask, |ch, sum| sketches(&c, 4, ch, sum))
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused"), "{e}");
    }

    /// The three forged aggregates a coordinator could ask to open in place
    /// of the sum it names are refused by the sketch check, under the
    /// genuine contributors' genuine signed sketches: (a) one contributor's
    /// masks passed off as the sum, (b) the sum padded with a made-up
    /// update's masks (given as c's), (c) one contributor's masks counted
    /// twice. The honest sum is then answered.
    #[test]
    fn forged_aggregates_are_refused_by_the_sketch_check() {
        let mut c = committee();
        let made_up = chunks(&c.key, 9);
        for (attempt, what) in [(1, "one as the sum"), (2, "padded"), (3, "counted twice")] {
            let updates = genuine(&mut c, attempt);
            let summed: Vec<&[Vec<u8>]> = match attempt {
                1 => vec![&updates[0]],
                2 => vec![&updates[0], &updates[1], &made_up],
                _ => vec![&updates[0], &updates[0], &updates[1]],
            };
            let ask = Ask {
                attempt,
                named: ALL.to_vec(),
                summed,
            };
            let e = decrypt(&c, &ask, |ch, sum| sketches(&c, attempt, ch, sum))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not the sum of the named contributors' masks"),
                "{what}: {e}"
            );
        }
        let updates = genuine(&mut c, 4);
        let ask = Ask {
            attempt: 4,
            named: ALL.to_vec(),
            summed: updates.iter().map(Vec::as_slice).collect(),
        };
        assert!(decrypt(&c, &ask, |ch, sum| sketches(&c, 4, ch, sum)).is_ok());
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
        let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
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
        let updates = genuine(&mut c, 1);
        let ask = Ask {
            attempt: 1,
            named: ALL.to_vec(),
            summed: updates.iter().map(Vec::as_slice).collect(),
        };
        let e = decrypt(&c, &ask, |ch, sum| sketches(&c, 1, ch, sum))
            .unwrap_err()
            .to_string();
        assert!(e.contains("most its flooding tolerates"), "{e}");
    }

    #[test]
    fn partners_sign_one_update_per_attempt_and_sketch_only_that_one() {
        let mut c = committee();
        let shape = Shape::new(&c.key, VALUES as u64).unwrap();
        let ch = chunks(&c.key, 1);
        c.holders[0]
            .sign_update(&shape, &HASH, 4, 1, 100, &ch)
            .unwrap();
        assert!(c.holders[0].has_signed(4, 1).unwrap());
        let e = c.holders[0]
            .sign_update(&shape, &HASH, 4, 1, 100, &ch)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already signed"), "{e}");
        let sum = SketchedSum {
            aggregate_digest: [7; 32],
            contributions_digest: [8; 32],
        };
        let ask = |attempt| sketch_request(attempt, 0, &[1; 32], &sum);
        // The sketch is of the update's masks, signed for this request.
        let s = c.holders[0].sketch(&ask(1), &HASH).unwrap();
        let mut want = Sketcher::new(&shape, &[1; 32]);
        for (i, chunk) in ch.iter().enumerate() {
            let (masks, _) = shape.chunk_parts(i as u32, chunk).unwrap();
            want.add_chunk_masks(i as u32, masks).unwrap();
        }
        assert_eq!(s.sketch, want.finish().unwrap().to_bytes());
        let digest = sketch_digest(
            &c.key.key_id(),
            &HASH,
            4,
            1,
            0,
            "a",
            100,
            &sum,
            &[1; 32],
            &s.sketch,
        );
        assert!(
            Verifier::from_cert_der(&c.certs[0])
                .unwrap()
                .verify_hash(&digest, &s.signature)
        );
        // Nothing for an attempt it signed no update for, or a short challenge.
        let e = c.holders[0].sketch(&ask(2), &HASH).unwrap_err().to_string();
        assert!(e.contains("no update it signed"), "{e}");
        let mut short = ask(1);
        short.challenge.pop();
        assert!(c.holders[0].sketch(&short, &HASH).is_err());
        // Its round over, it holds the masks no longer.
        c.holders[0].end_round();
        assert!(c.holders[0].sketch(&ask(1), &HASH).is_err());
        assert!(
            c.holders[0]
                .sign_update(&shape, &HASH, 4, 2, 100, &ch)
                .is_ok()
        );
    }

    #[test]
    fn nested_sums_and_reruns_that_share_contributions_are_refused() {
        let mut c = committee();
        let first = genuine(&mut c, 1);
        let all = |attempt| Ask {
            attempt,
            named: ALL.to_vec(),
            summed: first.iter().map(Vec::as_slice).collect(),
        };
        assert!(decrypt(&c, &all(1), |ch, sum| sketches(&c, 1, ch, sum)).is_ok());
        // The same round, attempt and toss again: refused.
        let e = decrypt(&c, &all(1), |ch, sum| sketches(&c, 1, ch, sum))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("already tossed the coin for attempt 1")
                && e.contains("strictly increasing"),
            "{e}"
        );
        // An older attempt: refused.
        let e = decrypt(&c, &all(0), |ch, sum| sketches(&c, 1, ch, sum))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already decrypted attempt 1"), "{e}");
        // The same updates under a new attempt: their sketches are signed for
        // attempt 1 only.
        let e = decrypt(&c, &all(2), |ch, sum| sketches(&c, 1, ch, sum))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not signed by `a`"), "{e}");
        // Attempt 2's coin was tossed: a second toss for it is refused.
        let second = genuine(&mut c, 2);
        let fresh = |attempt| Ask {
            attempt,
            named: ALL.to_vec(),
            summed: second.iter().map(Vec::as_slice).collect(),
        };
        let e = decrypt(&c, &fresh(2), |ch, sum| sketches(&c, 2, ch, sum))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already tossed the coin for attempt 2"), "{e}");
        // A rerun under a new attempt with fresh updates is answered.
        let third = genuine(&mut c, 3);
        let ask = Ask {
            attempt: 3,
            named: ALL.to_vec(),
            summed: third.iter().map(Vec::as_slice).collect(),
        };
        assert!(decrypt(&c, &ask, |ch, sum| sketches(&c, 3, ch, sum)).is_ok());
        // The record survives a restart of the key holder.
        let used = read_lines(&c.holders[0].current.as_ref().unwrap().used_path).unwrap();
        assert!(used.contains(&"answered 4 3".to_string()), "{used:?}");
        assert!(
            used.iter().any(|l| l.starts_with("challenge 4 2 0 ")),
            "{used:?}"
        );
        assert!(used.contains(&"contribution 4 1 a".to_string()), "{used:?}");
    }

    /// The coin toss: a commitment list that leaves a holder out, changes
    /// this holder's own or names someone else is refused before the seed
    /// leaves; seeds that do not open their commitments, or that leave one
    /// unopened, fail the decryption.
    #[test]
    fn the_coin_toss_is_checked_at_every_step() {
        let mut c = committee();
        let updates = genuine(&mut c, 1);
        let shape = Shape::new(&c.key, VALUES as u64).unwrap();
        let mut agg = Aggregate::new(shape).unwrap();
        for u in &updates {
            for (i, b) in u.iter().enumerate() {
                agg.add_bytes(i as u32, b).unwrap();
            }
        }
        let digest = agg.mask_digest();
        let start = |attempt: u64| {
            let req = request(&c, &ALL, 1, digest, attempt, HASH);
            let mut job = c.holders[0]
                .begin_decrypt(&req, 3, VALUES as u64, &HASH)
                .unwrap();
            let mut commit = None;
            for i in 0..shape.chunks() {
                commit = job
                    .add_masks(&AggregateMasks {
                        toss: 0,
                        round: 4,
                        attempt,
                        index: i,
                        masks: agg.mask_chunk(i).unwrap(),
                    })
                    .unwrap();
            }
            (job, commit.unwrap().commitment)
        };
        let theirs = |h: &str, seed: &[u8; 32], attempt| HolderCommitment {
            holder: h.into(),
            commitment: context(&c, attempt, digest).commitment(h, seed).to_vec(),
        };
        let list = |attempt, commitments| ChallengeCommitments {
            toss: 0,
            round: 4,
            attempt,
            commitments,
        };
        let (mut job, own) = start(1);
        let mine = HolderCommitment {
            holder: "a".into(),
            commitment: own.clone(),
        };
        for (bad, want) in [
            (
                vec![mine.clone(), theirs("b", &[1; 32], 1)],
                "leave out key holder `c`",
            ),
            (
                vec![
                    mine.clone(),
                    theirs("b", &[1; 32], 1),
                    theirs("c", &[2; 32], 1),
                    theirs("mallory", &[3; 32], 1),
                ],
                "not a key holder",
            ),
            (
                vec![
                    mine.clone(),
                    theirs("b", &[1; 32], 1),
                    theirs("b", &[1; 32], 1),
                    theirs("c", &[2; 32], 1),
                ],
                "name `b` twice",
            ),
            (
                vec![
                    theirs("a", &[0; 32], 1),
                    theirs("b", &[1; 32], 1),
                    theirs("c", &[2; 32], 1),
                ],
                "own commitment",
            ),
        ] {
            let e = c.holders[0]
                .reveal_seed(&mut job, &list(1, bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // Nothing was recorded: the toss can still be made.
        let good = vec![
            mine.clone(),
            theirs("b", &[1; 32], 1),
            theirs("c", &[2; 32], 1),
        ];
        let seed = c.holders[0].reveal_seed(&mut job, &list(1, good)).unwrap();
        let reveals = |seeds: Vec<(&str, Vec<u8>)>| ChallengeReveals {
            toss: 0,
            round: 4,
            attempt: 1,
            seeds: seeds
                .into_iter()
                .map(|(h, s)| HolderSeed {
                    holder: h.into(),
                    seed: s,
                })
                .collect(),
        };
        let e = job
            .take_reveals(&reveals(vec![
                ("a", seed.seed.clone()),
                ("b", vec![1; 32]),
                ("c", vec![9; 32]),
            ]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not open its commitment"), "{e}");
        let e = job
            .take_reveals(&reveals(vec![("a", seed.seed.clone()), ("b", vec![1; 32])]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("never opened"), "{e}");
        job.take_reveals(&reveals(vec![
            ("a", seed.seed.clone()),
            ("b", vec![1; 32]),
            ("c", vec![2; 32]),
        ]))
        .unwrap();
        assert!(job.challenge().is_some());
        // The toss for attempt 1 is spent: the coordinator cannot ask for another.
        let req = request(&c, &ALL, 1, digest, 1, HASH);
        let e = c.holders[0]
            .begin_decrypt(&req, 3, VALUES as u64, &HASH)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("already tossed the coin for attempt 1"), "{e}");
    }

    #[test]
    fn a_request_for_another_task_is_refused() {
        let c = committee();
        let shape = Shape::new(&c.key, VALUES as u64).unwrap();
        let digest = Aggregate::new(shape).unwrap().mask_digest();
        let req = request(&c, &ALL, 3, digest, 1, [6u8; 32]);
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

    /// The threshold extension of the key ceremony among five holders, t = 3
    /// (`keys::threshold`), every message as the coordinator would relay it.
    mod threshold_ceremony {
        use super::*;
        use consortia_he::{
            DecryptionShare, HeError, Threshold, ThresholdKeyShare, ThresholdPartialDecryptor,
            encode_signed, threshold_combine,
        };
        use consortia_proto::{ThresholdDealing, ThresholdRecipientKeys};

        const ID: u8 = 9;

        struct Five {
            dir: tempfile::TempDir,
            pki: consortia_pki::Pki,
            names: Vec<String>,
            holders: Vec<KeyHolder>,
            key: CollectivePublicKey,
            msg: CollectiveKey,
            task: TaskSpec,
            policy: Policy,
        }

        /// Five holders a..e with an installed Fast64 key of a task with
        /// `key_threshold = 3`.
        fn five() -> Five {
            five_with(HeParams::Fast64)
        }

        /// [`five`] under `params`.
        fn five_with(params: HeParams) -> Five {
            let dir = tempfile::tempdir().unwrap();
            let names: Vec<String> = ["a", "b", "c", "d", "e"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let pki =
                consortia_pki::Pki::init(dir.path().join("pki"), &["127.0.0.1".into()], &names)
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
            let mut task = task();
            task.key_threshold = Some(3);
            let policy = Policy {
                allowed_he_params: [
                    crate::policy::HeParamsName::Secure128,
                    crate::policy::HeParamsName::Fast64,
                ]
                .into(),
                ..Policy::default()
            };
            let (key, msg) = ceremony_with(
                params,
                &mut holders,
                &certs,
                &names,
                ID,
                &[HASH; 5],
                &task,
                &policy,
            );
            for h in &mut holders {
                h.install(&msg, &task, &HASH, &policy).unwrap();
            }
            Five {
                dir,
                pki,
                names,
                holders,
                key,
                msg,
                task,
                policy,
            }
        }

        /// Steps 1 and 2: every holder's signed subshare keys, then every dealing.
        fn keys_and_dealings(f: &mut Five) -> (Vec<ThresholdRecipientKeys>, Vec<ThresholdDealing>) {
            let keys: Vec<ThresholdRecipientKeys> = f
                .holders
                .iter_mut()
                .map(|h| h.threshold_recipient_keys(&f.task, &HASH).unwrap())
                .collect();
            let dealings = f
                .holders
                .iter_mut()
                .map(|h| h.threshold_deal(&f.task, &HASH, &keys).unwrap())
                .collect();
            (keys, dealings)
        }

        fn dealing_refusal(e: AgentError) -> (String, u32, Option<String>, String) {
            match e {
                AgentError::ThresholdDealing {
                    dealer,
                    party,
                    subset,
                    message,
                } => (dealer, party, subset, message),
                other => panic!("not a complaint: {other}"),
            }
        }

        /// Every holder stores its share 0600; any three decrypt a sum
        /// exactly, a restarted holder reloads its share, and two holders are
        /// refused by the maths layer (that two holders' shares with the
        /// coordinator's state are independent of the key is the statistical
        /// test `threshold::tests::what_t_minus_1_holders_see_is_independent_of_the_secret`
        /// in `privacy/he/src/threshold.rs`).
        #[test]
        fn five_holders_make_a_three_of_five_key_any_three_decrypt_and_two_cannot() {
            let mut f = five();
            let (_, dealings) = keys_and_dealings(&mut f);
            for h in &mut f.holders {
                h.threshold_collect(&f.task, &HASH, &dealings).unwrap();
                assert!(h.current.as_ref().unwrap().threshold_share().is_some());
                let path = h.path(&[ID; 32], "threshold");
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            }
            // A restarted holder loads its stored share with the key.
            let mut restarted = KeyHolder::new(&f.dir.path().join("c"), "c")
                .with_identity(&f.pki.partner_key_path("c"), &f.pki.ca_cert_path())
                .unwrap();
            restarted
                .install(&f.msg, &f.task, &HASH, &f.policy)
                .unwrap();
            assert!(
                restarted
                    .current
                    .as_ref()
                    .unwrap()
                    .threshold_share()
                    .is_some()
            );
            // A holder whose threshold share was lost is refused before it
            // decrypts anything, naming the file.
            {
                let lost = f.dir.path().join("lost");
                std::fs::create_dir_all(lost.join("keys")).unwrap();
                for entry in std::fs::read_dir(f.dir.path().join("d").join("keys")).unwrap() {
                    let entry = entry.unwrap();
                    let name = entry.file_name();
                    if !name.to_string_lossy().ends_with(".threshold") {
                        std::fs::copy(entry.path(), lost.join("keys").join(&name)).unwrap();
                    }
                }
                let mut without = KeyHolder::new(&lost, "d")
                    .with_identity(&f.pki.partner_key_path("d"), &f.pki.ca_cert_path())
                    .unwrap();
                without.install(&f.msg, &f.task, &HASH, &f.policy).unwrap();
                let req = DecryptRequest {
                    round: 1,
                    task_hash: HASH.to_vec(),
                    ..Default::default()
                };
                let e = without
                    .begin_decrypt(&req, 1, 100, &HASH)
                    .err()
                    .expect("refused")
                    .to_string();
                assert!(
                    e.contains(".threshold") && e.contains("threshold share is missing"),
                    "{e}"
                );
            }
            // Three contributions under the key.
            let bits = f.key.plaintext_bits();
            let ups: Vec<Vec<i64>> = (0..3)
                .map(|k| (0..100).map(|v| (v * 7 + k * 1000) - 3000).collect())
                .collect();
            let sum: Vec<i64> = (0..100).map(|v| ups.iter().map(|u| u[v]).sum()).collect();
            let shape = Shape::new(&f.key, 100).unwrap();
            let wires: Vec<Vec<u8>> = ups
                .iter()
                .map(|u| {
                    Encryptor::new(&f.key)
                        .encrypt_with_shape(&encode_signed(u, bits).unwrap(), &shape)
                        .unwrap()
                        .to_bytes()
                })
                .collect();
            let agg = Aggregate::from_ciphertexts(shape, wires.iter().map(Vec::as_slice)).unwrap();
            let stored: Vec<ThresholdKeyShare> = f
                .holders
                .iter()
                .map(|h| ThresholdKeyShare::load(&h.path(&[ID; 32], "threshold")).unwrap())
                .collect();
            let th = Threshold::new(5, 3).unwrap();
            for q in [[1u32, 3, 4], [0, 1, 2], [0, 2, 4]] {
                let set = th.decryption_set(q.map(PartyId)).unwrap();
                let shares: Vec<DecryptionShare> = q
                    .iter()
                    .map(|&j| {
                        ThresholdPartialDecryptor::new(&stored[j as usize], &f.key)
                            .unwrap()
                            .partial_decrypt(&agg, &set, 1)
                            .unwrap()
                    })
                    .collect();
                let opened = threshold_combine(&agg, &set, &shares).unwrap();
                assert_eq!(opened, encode_signed(&sum, bits).unwrap(), "Q = {q:?}");
            }
            // Two holders: no decryption set, and together they miss R_T for
            // their own pair T.
            let e = th.decryption_set([PartyId(0), PartyId(1)]).unwrap_err();
            assert!(
                matches!(
                    e,
                    HeError::BelowThreshold {
                        have: 2,
                        threshold: 3
                    }
                ),
                "{e}"
            );
            let pair = th
                .subsets()
                .iter()
                .copied()
                .find(|t| t.contains(PartyId(0)) && t.contains(PartyId(1)))
                .unwrap();
            assert!(
                !th.held_by(PartyId(0))
                    .chain(th.held_by(PartyId(1)))
                    .any(|t| t == pair)
            );
        }

        /// A joint decryption under the 3-of-5 key by the holders a, c, e:
        /// each refuses a coin toss of two holders, takes one of three, and
        /// their shares for that set open the sum exactly.
        #[test]
        fn three_holders_of_five_toss_the_coin_and_open_the_sum() {
            // Secure128: Fast64's flooding allows no release.
            let mut f = five_with(HeParams::Secure128);
            let (_, dealings) = keys_and_dealings(&mut f);
            for h in &mut f.holders {
                h.threshold_collect(&f.task, &HASH, &dealings).unwrap();
            }
            let shape = Shape::new(&f.key, VALUES as u64).unwrap();
            let mut agg = Aggregate::new(shape).unwrap();
            for i in 0..3 {
                let ch = chunks(&f.key, i as u64 + 1);
                f.holders[i]
                    .sign_update(&shape, &HASH, 4, 1, 100, &ch)
                    .unwrap();
                for (k, b) in ch.iter().enumerate() {
                    agg.add_bytes(k as u32, b).unwrap();
                }
            }
            let cert =
                |n: &str| consortia_pki::read_ca_certificate(&f.pki.partner_cert_path(n)).unwrap();
            let req = DecryptRequest {
                toss: 0,
                round: 4,
                contributions: ["a", "b", "c"]
                    .iter()
                    .map(|n| Contribution {
                        partner: n.to_string(),
                        example_count: 100,
                        certificate: cert(n),
                    })
                    .collect(),
                min_contributors: 1,
                aggregate_digest: agg.mask_digest().to_vec(),
                values: VALUES as u64,
                attempt: 1,
                task_hash: HASH.to_vec(),
            };
            let q = [0usize, 2, 4];
            let mut jobs = Vec::new();
            let mut commitments = Vec::new();
            for &j in &q {
                let mut job = f.holders[j]
                    .begin_decrypt(&req, 3, VALUES as u64, &HASH)
                    .unwrap();
                let mut commit = None;
                for i in 0..shape.chunks() {
                    commit = job
                        .add_masks(&AggregateMasks {
                            toss: 0,
                            round: 4,
                            attempt: 1,
                            index: i,
                            masks: agg.mask_chunk(i).unwrap(),
                        })
                        .unwrap();
                }
                commitments.push(HolderCommitment {
                    holder: f.names[j].clone(),
                    commitment: commit.unwrap().commitment,
                });
                jobs.push(job);
            }
            // Two holders are fewer than the threshold: refused.
            let two = ChallengeCommitments {
                toss: 0,
                round: 4,
                attempt: 1,
                commitments: commitments[..2].to_vec(),
            };
            let e = f.holders[0]
                .reveal_seed(&mut jobs[0], &two)
                .unwrap_err()
                .to_string();
            assert!(e.contains("fewer than the key's threshold 3"), "{e}");
            let list = ChallengeCommitments {
                toss: 0,
                round: 4,
                attempt: 1,
                commitments,
            };
            let seeds: Vec<HolderSeed> = q
                .iter()
                .zip(&mut jobs)
                .map(|(&j, job)| {
                    let s = f.holders[j].reveal_seed(job, &list).unwrap();
                    HolderSeed {
                        holder: f.names[j].clone(),
                        seed: s.seed,
                    }
                })
                .collect();
            let reveals = ChallengeReveals {
                toss: 0,
                round: 4,
                attempt: 1,
                seeds,
            };
            for job in &mut jobs {
                job.take_reveals(&reveals).unwrap();
            }
            let challenge = jobs[0].challenge().unwrap();
            let sketches = ContributorSketches {
                toss: 0,
                round: 4,
                attempt: 1,
                sketches: (0..3)
                    .map(|i| {
                        let s = f.holders[i]
                            .sketch(&sketch_request(1, 0, &challenge, &sum_of(&req)), &HASH)
                            .unwrap();
                        ContributorSketch {
                            partner: f.names[i].clone(),
                            sketch: s.sketch,
                            signature: s.signature,
                        }
                    })
                    .collect(),
            };
            let shares: Vec<DecryptionShare> = q
                .iter()
                .zip(jobs)
                .map(|(&j, job)| {
                    let bytes = f.holders[j].finish_decrypt(job, &sketches).unwrap();
                    DecryptionShare::from_bytes(&bytes, agg.shape()).unwrap()
                })
                .collect();
            let th = Threshold::new(5, 3).unwrap();
            let set = th.decryption_set(q.map(|j| PartyId(j as u32))).unwrap();
            let opened = threshold_combine(&agg, &set, &shares).unwrap();
            assert_eq!(opened, vec![6; VALUES]);
        }

        /// A 3-of-5 key (Secure128) whose holders a, b and c signed updates
        /// for attempt 1 of round 4 (every value 1, 2, 3), and their sum.
        fn summed() -> (Five, Aggregate) {
            let (f, agg, _) = summed_updates();
            (f, agg)
        }

        /// [`summed`], with a, b and c's encrypted updates.
        fn summed_updates() -> (Five, Aggregate, Vec<Vec<Vec<u8>>>) {
            // Secure128: Fast64's flooding allows no release.
            let mut f = five_with(HeParams::Secure128);
            let (_, dealings) = keys_and_dealings(&mut f);
            for h in &mut f.holders {
                h.threshold_collect(&f.task, &HASH, &dealings).unwrap();
            }
            let shape = Shape::new(&f.key, VALUES as u64).unwrap();
            let mut agg = Aggregate::new(shape).unwrap();
            let mut updates = Vec::new();
            for i in 0..3 {
                let ch = chunks(&f.key, i as u64 + 1);
                f.holders[i]
                    .sign_update(&shape, &HASH, 4, 1, 100, &ch)
                    .unwrap();
                for (k, b) in ch.iter().enumerate() {
                    agg.add_bytes(k as u32, b).unwrap();
                }
                updates.push(ch);
            }
            (f, agg, updates)
        }

        /// Coin toss `toss` of attempt `attempt` of round 4 for `digest`, the
        /// sum of a, b and c (each of 100 examples).
        fn retoss_request(f: &Five, digest: [u8; 32], attempt: u64, toss: u32) -> DecryptRequest {
            let cert =
                |n: &str| consortia_pki::read_ca_certificate(&f.pki.partner_cert_path(n)).unwrap();
            DecryptRequest {
                toss,
                round: 4,
                contributions: ["a", "b", "c"]
                    .iter()
                    .map(|n| Contribution {
                        partner: n.to_string(),
                        example_count: 100,
                        certificate: cert(n),
                    })
                    .collect(),
                min_contributors: 1,
                aggregate_digest: digest.to_vec(),
                values: VALUES as u64,
                attempt,
                task_hash: HASH.to_vec(),
            }
        }

        /// The contributors' sketches relayed in a toss.
        enum Relay {
            /// a, b and c sketch under this toss's challenge.
            Fresh,
            /// None: the holders checked them in an earlier toss.
            Checked,
            /// a, b and c's sketches of the given toss, signed then.
            Of(Vec<ContributorSketch>),
            /// The contributors given (indices) sketch under this toss's
            /// challenge for the sum given, whatever sum the toss opens.
            For(SketchedSum, Vec<usize>),
        }

        /// a, b and c's signed sketches of `sum` under `challenge` for toss
        /// `toss` of attempt 1.
        fn sketched(
            f: &Five,
            toss: u32,
            challenge: &[u8; 32],
            sum: &SketchedSum,
        ) -> Vec<ContributorSketch> {
            sketched_by(f, &[0, 1, 2], toss, challenge, sum)
        }

        /// [`sketched`] by the contributors `by` (indices) only.
        fn sketched_by(
            f: &Five,
            by: &[usize],
            toss: u32,
            challenge: &[u8; 32],
            sum: &SketchedSum,
        ) -> Vec<ContributorSketch> {
            by.iter()
                .map(|&i| {
                    let s = f.holders[i]
                        .sketch(&sketch_request(1, toss, challenge, sum), &HASH)
                        .unwrap();
                    ContributorSketch {
                        partner: f.names[i].clone(),
                        sketch: s.sketch,
                        signature: s.signature,
                    }
                })
                .collect()
        }

        /// Plays coin toss `req.toss` with holders `q` (indices) up to the
        /// sketches, and the holders of `answer` (within `q`) to their
        /// shares; the others leave once the seeds are out. Returns the
        /// challenge and each answering holder's result.
        fn play(
            f: &Five,
            agg: &Aggregate,
            req: &DecryptRequest,
            q: &[usize],
            answer: &[usize],
            relay: Relay,
        ) -> ([u8; 32], Vec<Result<Vec<u8>, AgentError>>) {
            let shape = *agg.shape();
            let mut jobs = Vec::new();
            let mut commitments = Vec::new();
            for &j in q {
                let mut job = f.holders[j]
                    .begin_decrypt(req, 3, VALUES as u64, &HASH)
                    .unwrap();
                let mut commit = None;
                for i in 0..shape.chunks() {
                    commit = job
                        .add_masks(&AggregateMasks {
                            toss: req.toss,
                            round: 4,
                            attempt: req.attempt,
                            index: i,
                            masks: agg.mask_chunk(i).unwrap(),
                        })
                        .unwrap();
                }
                commitments.push(HolderCommitment {
                    holder: f.names[j].clone(),
                    commitment: commit.unwrap().commitment,
                });
                jobs.push(job);
            }
            let list = ChallengeCommitments {
                toss: req.toss,
                round: 4,
                attempt: req.attempt,
                commitments,
            };
            let seeds: Vec<HolderSeed> = q
                .iter()
                .zip(&mut jobs)
                .map(|(&j, job)| HolderSeed {
                    holder: f.names[j].clone(),
                    seed: f.holders[j].reveal_seed(job, &list).unwrap().seed,
                })
                .collect();
            let reveals = ChallengeReveals {
                toss: req.toss,
                round: 4,
                attempt: req.attempt,
                seeds,
            };
            for job in &mut jobs {
                job.take_reveals(&reveals).unwrap();
            }
            let challenge = jobs[0].challenge().unwrap();
            let sketches = ContributorSketches {
                toss: req.toss,
                round: 4,
                attempt: req.attempt,
                sketches: match relay {
                    Relay::Fresh => sketched(f, req.toss, &challenge, &sum_of(req)),
                    Relay::Checked => Vec::new(),
                    Relay::Of(s) => s,
                    Relay::For(sum, by) => sketched_by(f, &by, req.toss, &challenge, &sum),
                },
            };
            let results = q
                .iter()
                .zip(jobs)
                .filter(|(j, _)| answer.contains(j))
                .map(|(&j, job)| f.holders[j].finish_decrypt(job, &sketches))
                .collect();
            (challenge, results)
        }

        /// The first answering holder's refusal (a share it released instead
        /// is not printed).
        fn refusal(results: Vec<Result<Vec<u8>, AgentError>>) -> String {
            match results.into_iter().next() {
                Some(Err(e)) => e.to_string(),
                Some(Ok(_)) => panic!("the holder released a share"),
                None => panic!("no holder answered"),
            }
        }

        /// Opens the sum from the shares of `q` (indices).
        fn open(agg: &Aggregate, q: &[usize], shares: Vec<Vec<u8>>) -> Vec<u64> {
            let shares: Vec<DecryptionShare> = shares
                .iter()
                .map(|b| DecryptionShare::from_bytes(b, agg.shape()).unwrap())
                .collect();
            let th = Threshold::new(5, 3).unwrap();
            let set = th
                .decryption_set(q.iter().map(|&j| PartyId(j as u32)))
                .unwrap();
            threshold_combine(agg, &set, &shares).unwrap()
        }

        /// Toss 0 of attempt 1 with all five holders fails once the sketches
        /// are out: b and d leave (a, c and e answered). Toss 1 of the same
        /// aggregate with a, c and e opens it, and so does toss 2 with the
        /// same three, who checked the sketches already and are sent none
        /// (the contributors may be gone by then). Each share counts
        /// against the key's release budget.
        #[test]
        fn a_further_toss_of_the_same_sum_with_fewer_holders_opens_it() {
            let (f, agg) = summed();
            let digest = agg.mask_digest();
            let all = [0, 1, 2, 3, 4];
            let ace = [0, 2, 4];
            let (_, first) = play(
                &f,
                &agg,
                &retoss_request(&f, digest, 1, 0),
                &all,
                &ace,
                Relay::Fresh,
            );
            assert!(first.iter().all(Result::is_ok));
            let (_, second) = play(
                &f,
                &agg,
                &retoss_request(&f, digest, 1, 1),
                &ace,
                &ace,
                Relay::Fresh,
            );
            let shares = second.into_iter().map(Result::unwrap).collect();
            assert_eq!(open(&agg, &ace, shares), vec![6; VALUES]);
            let (_, third) = play(
                &f,
                &agg,
                &retoss_request(&f, digest, 1, 2),
                &ace,
                &ace,
                Relay::Checked,
            );
            let shares = third.into_iter().map(Result::unwrap).collect();
            assert_eq!(open(&agg, &ace, shares), vec![6; VALUES]);
            // Three releases each, counted; every toss recorded with its sum.
            let used = read_lines(&f.holders[0].current.as_ref().unwrap().used_path).unwrap();
            let answered = used.iter().filter(|l| *l == "answered 4 1").count();
            assert_eq!(answered, 3, "{used:?}");
            for toss in 0..3 {
                let line = format!("challenge 4 1 {toss} {} ", hex::encode(digest));
                assert!(used.iter().any(|l| l.starts_with(&line)), "{used:?}");
            }
            // b never saw the sketches checked: with none sent, it refuses.
            let (_, b) = play(
                &f,
                &agg,
                &retoss_request(&f, digest, 1, 3),
                &[0, 1, 2],
                &[1],
                Relay::Checked,
            );
            let e = refusal(b);
            assert!(e.contains("did not check the sketches"), "{e}");
        }

        /// Once a holder tossed the coin for attempt 1 (and answered), a
        /// further toss is refused for another aggregate, other
        /// contributions, a toss number used already or past the bound, or
        /// another attempt; messages and sketches of one toss are refused in
        /// the next.
        #[test]
        fn a_further_toss_for_another_sum_or_out_of_order_is_refused() {
            let (f, agg) = summed();
            let digest = agg.mask_digest();
            let (toss0_challenge, first) = play(
                &f,
                &agg,
                &retoss_request(&f, digest, 1, 0),
                &[0, 2, 4],
                &[0, 2, 4],
                Relay::Fresh,
            );
            assert!(first.iter().all(Result::is_ok));
            let a = &f.holders[0];
            let begin = |req: &DecryptRequest| {
                a.begin_decrypt(req, 3, VALUES as u64, &HASH)
                    .err()
                    .map(|e| e.to_string())
            };
            // Another aggregate digest: {a, b, c} then another sum.
            let e = begin(&retoss_request(&f, [7; 32], 1, 1)).unwrap();
            assert!(e.contains("for another sum"), "{e}");
            // Other contributions: d instead of c, or another example count.
            let mut other = retoss_request(&f, digest, 1, 1);
            other.contributions[2] = Contribution {
                partner: "d".into(),
                example_count: 100,
                certificate: consortia_pki::read_ca_certificate(&f.pki.partner_cert_path("d"))
                    .unwrap(),
            };
            let e = begin(&other).unwrap();
            assert!(e.contains("for another sum"), "{e}");
            let mut counts = retoss_request(&f, digest, 1, 1);
            counts.contributions[0].example_count = 101;
            let e = begin(&counts).unwrap();
            assert!(e.contains("for another sum"), "{e}");
            // The same toss again, and a toss past the bound.
            let e = begin(&retoss_request(&f, digest, 1, 0)).unwrap();
            assert!(e.contains("tosses strictly increasing"), "{e}");
            let e = begin(&retoss_request(&f, digest, 1, MAX_TOSSES_PER_ATTEMPT)).unwrap();
            assert!(e.contains("past the most"), "{e}");
            // An older attempt.
            let e = begin(&retoss_request(&f, digest, 0, 1)).unwrap();
            assert!(e.contains("already decrypted attempt 1"), "{e}");
            // Toss 1 of attempt 1: toss 0's messages are refused.
            let req = retoss_request(&f, digest, 1, 1);
            let mut job = a.begin_decrypt(&req, 3, VALUES as u64, &HASH).unwrap();
            let masks = |toss| AggregateMasks {
                toss,
                round: 4,
                attempt: 1,
                index: 0,
                masks: agg.mask_chunk(0).unwrap(),
            };
            let e = job.add_masks(&masks(0)).unwrap_err().to_string();
            assert!(e.contains("for coin toss 0"), "{e}");
            // Toss 0's sketches, signed for toss 0's challenge, relayed in
            // toss 1: not signed for this toss.
            let (_, relayed) = play(
                &f,
                &agg,
                &retoss_request(&f, digest, 1, 2),
                &[0, 2, 4],
                &[0],
                Relay::Of(sketched(
                    &f,
                    0,
                    &toss0_challenge,
                    &sum_of(&retoss_request(&f, digest, 1, 0)),
                )),
            );
            let e = refusal(relayed);
            assert!(e.contains("is not signed by"), "{e}");
            // A commitment made under toss 1's context does not open under
            // toss 2's, and toss 2's list refuses a seed of toss 1.
            let ctx = |toss| DecryptionContext {
                task_hash: HASH,
                key_id: f.key.key_id(),
                round: 4,
                attempt: 1,
                toss,
                aggregate_digest: digest,
            };
            assert!(!ctx(2).opens("b", &[1; 32], &ctx(1).commitment("b", &[1; 32])));
            // The same aggregate under a later attempt: without sketches (the
            // contributors signed none for it) it is not opened again.
            let (_, other) = play(
                &f,
                &agg,
                &retoss_request(&f, digest, 2, 1),
                &[0, 2, 4],
                &[0],
                Relay::Checked,
            );
            let e = refusal(other);
            assert!(e.contains("did not check the sketches"), "{e}");
        }

        /// A contributor sketches one challenge per coin toss of the attempt
        /// it signed an update for, tosses strictly increasing, below the
        /// bound.
        #[test]
        fn contributors_sketch_one_challenge_per_toss_of_their_attempt() {
            let (f, agg) = summed();
            let a = &f.holders[0];
            let sum = sum_of(&retoss_request(&f, agg.mask_digest(), 1, 0));
            let ask = |attempt, toss, challenge: u8| {
                sketch_request(attempt, toss, &[challenge; 32], &sum)
            };
            assert!(a.sketch(&ask(1, 0, 1), &HASH).is_ok());
            // The same toss and challenge again: the same sketch.
            assert!(a.sketch(&ask(1, 0, 1), &HASH).is_ok());
            let e = a.sketch(&ask(1, 0, 2), &HASH).unwrap_err().to_string();
            assert!(e.contains("already sketched"), "{e}");
            assert!(a.sketch(&ask(1, 2, 3), &HASH).is_ok());
            let e = a.sketch(&ask(1, 1, 4), &HASH).unwrap_err().to_string();
            assert!(e.contains("already sketched"), "{e}");
            let e = a
                .sketch(&ask(1, MAX_TOSSES_PER_ATTEMPT, 5), &HASH)
                .unwrap_err()
                .to_string();
            assert!(e.contains("past the most"), "{e}");
            assert!(a.sketch(&ask(2, 3, 6), &HASH).is_err());
        }

        /// A contributor signs sketches for one sum per attempt: the first
        /// it is asked for. Another aggregate, or another contribution list,
        /// of the same attempt is refused, whatever the toss; the same sum in
        /// a later toss is sketched. (With a 3-of-6 key, two disjoint
        /// decryption sets could otherwise open the sums of {a, b, c, d} and
        /// of {a, b, c} of one attempt, neither holder's record seeing the
        /// other, and their difference is d's update.)
        #[test]
        fn contributors_sketch_one_sum_per_attempt() {
            let (f, agg) = summed();
            let digest = agg.mask_digest();
            let req = retoss_request(&f, digest, 1, 0);
            let x = sum_of(&req);
            // Another aggregate of the same contributions, and the same
            // aggregate named with another contribution list.
            let other_aggregate = SketchedSum {
                aggregate_digest: [9; 32],
                ..x
            };
            let mut fewer = req.clone();
            fewer.contributions.pop();
            let other_list = sum_of(&fewer);
            assert_ne!(x, other_list);
            let a = &f.holders[0];
            assert!(a.sketch(&sketch_request(1, 0, &[1; 32], &x), &HASH).is_ok());
            for y in [&other_aggregate, &other_list] {
                for toss in [1, 3] {
                    let e = a
                        .sketch(&sketch_request(1, toss, &[2; 32], y), &HASH)
                        .unwrap_err()
                        .to_string();
                    assert!(
                        e.contains("already sketched its update for another sum of this attempt"),
                        "{e}"
                    );
                    assert!(e.contains("one sum per attempt"), "{e}");
                }
            }
            // The same sum in a later toss: sketched, and again after it.
            assert!(a.sketch(&sketch_request(1, 1, &[3; 32], &x), &HASH).is_ok());
            assert!(a.sketch(&sketch_request(1, 1, &[3; 32], &x), &HASH).is_ok());
            // The sum asked first is the one: b, asked for the shorter list
            // first, refuses the full one.
            let b = &f.holders[1];
            assert!(
                b.sketch(&sketch_request(1, 0, &[1; 32], &other_list), &HASH)
                    .is_ok()
            );
            let e = b
                .sketch(&sketch_request(1, 1, &[4; 32], &x), &HASH)
                .unwrap_err()
                .to_string();
            assert!(e.contains("another sum of this attempt"), "{e}");
            // A malformed sum is no sum.
            let mut short = sketch_request(1, 2, &[5; 32], &x);
            short.contributions_digest.pop();
            let e = a.sketch(&short, &HASH).unwrap_err().to_string();
            assert!(e.contains("names no sum"), "{e}");
        }

        /// Key holders check each sketch's signature over their own sum: a
        /// sketch signed under this toss's challenge but for another sum of
        /// the attempt (another aggregate digest, or another contribution
        /// list) is refused, naming its contributor; the same sketches signed
        /// for the sum the holders open pass.
        #[test]
        fn a_sketch_signed_for_another_sum_does_not_open_this_one() {
            let (f, agg) = summed();
            let req = |toss| retoss_request(&f, agg.mask_digest(), 1, toss);
            let sum = sum_of(&req(0));
            let other_aggregate = SketchedSum {
                aggregate_digest: [9; 32],
                ..sum
            };
            let mut fewer = req(0);
            fewer.contributions.pop();
            let other_list = SketchedSum {
                contributions_digest: contributions_digest(&fewer.contributions),
                ..sum
            };
            // c, d and e open a, b and c's sum, toss after toss; the
            // contributors' records are forgotten before each toss, so that
            // only the key holders' check stands.
            let forget = || {
                for h in &f.holders[..3] {
                    *h.own.as_ref().unwrap().sketched.lock().unwrap() = Sketched::default();
                }
            };
            for (toss, signed_for) in [(0, other_aggregate), (1, other_list)] {
                forget();
                let (_, results) = play(
                    &f,
                    &agg,
                    &req(toss),
                    &[2, 3, 4],
                    &[3],
                    Relay::For(signed_for, vec![0, 1, 2]),
                );
                let e = refusal(results);
                assert!(e.contains("is not signed by `a`"), "{e}");
                assert!(e.contains("another sum"), "{e}");
            }
            forget();
            let (_, results) = play(
                &f,
                &agg,
                &req(2),
                &[2, 3, 4],
                &[3],
                Relay::For(sum, vec![0, 1, 2]),
            );
            assert!(results.into_iter().all(|r| r.is_ok()));
        }

        /// What the coordinator could try while relaying: each is refused as
        /// the relay's fault, never the dealer's (the dealer's signature
        /// covers its commitments and every box); a bad subshare in a box the
        /// dealer signed is the dealer's, and the complaint reveals the key
        /// that opens it.
        #[test]
        fn a_tampered_relay_is_refused_as_the_relays_fault_and_a_bad_dealer_as_its_own() {
            let mut f = five();
            let (keys, dealings) = keys_and_dealings(&mut f);
            // A subshare key substituted by the coordinator: the dealer refuses
            // to seal to it.
            let own = crate::seal::RecipientKeys::new([0]).unwrap();
            let mut fresh = five();
            let fresh_keys: Vec<ThresholdRecipientKeys> = fresh
                .holders
                .iter_mut()
                .map(|h| h.threshold_recipient_keys(&fresh.task, &HASH).unwrap())
                .collect();
            let mut swapped = fresh_keys.clone();
            swapped[2].keys[0].public_key = own.public_for(0).unwrap().to_vec();
            let e = fresh.holders[0]
                .threshold_deal(&fresh.task, &HASH, &swapped)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not signed by `c`"), "{e}");
            // The same holder deals once the genuine keys arrive.
            fresh.holders[0]
                .threshold_deal(&fresh.task, &HASH, &fresh_keys)
                .unwrap();

            use consortia_proto::ThresholdComplaintKind as Kind;
            // A flipped bit in the box d sealed to b: not the box d signed.
            let mut flipped = dealings.clone();
            let b = flipped[3]
                .sealed
                .iter_mut()
                .find(|s| s.recipient == 1)
                .unwrap();
            b.ciphertext[10] ^= 1;
            let flipped_box = b.clone();
            let (dealer, party, _, message) = dealing_refusal(
                f.holders[1]
                    .threshold_collect(&f.task, &HASH, &flipped)
                    .unwrap_err(),
            );
            assert_eq!((dealer.as_str(), party), ("d", 3));
            assert!(
                message.contains("not the one `d` signed") && message.contains("relay's fault"),
                "{message}"
            );
            let c = f.holders[1].take_threshold_complaint().unwrap();
            assert_eq!((c.dealer, c.kind), (3, Kind::Relay as i32));
            assert_eq!(c.sealed.as_ref(), Some(&flipped_box));
            assert!(c.recipient_key.is_empty(), "a relay fault reveals no key");
            assert!(f.holders[1].take_threshold_complaint().is_none());

            // A box the coordinator sealed itself to c's (public) key for d,
            // holding subshares of another share: d's signature does not
            // cover it, so it is the relay's fault, and nothing is opened.
            let session = KeySession::new(HeParams::Fast64, [ID; 32]);
            let th = Threshold::new(5, 3).unwrap();
            let other = KeyShareGen::new(&session).generate(PartyId(3));
            let fake = consortia_he::ThresholdDealer::new(&th)
                .deal(&other.secret)
                .unwrap();
            let mut plain = Vec::new();
            for s in fake.subshares_for(PartyId(2)).unwrap() {
                plain.extend_from_slice(&s.to_bytes());
            }
            let c_key: [u8; 32] = keys[2]
                .keys
                .iter()
                .find(|k| k.dealer == 3)
                .unwrap()
                .public_key
                .as_slice()
                .try_into()
                .unwrap();
            let ctx = crate::seal::SealContext {
                session: [ID; 32],
                task_hash: HASH,
                dealer: 3,
                recipient: 2,
            };
            let boxed = crate::seal::seal(&ctx, &c_key, &plain).unwrap();
            let mut forged = dealings.clone();
            let b = forged[3]
                .sealed
                .iter_mut()
                .find(|s| s.recipient == 2)
                .unwrap();
            b.dealer_key = boxed.dealer_key.to_vec();
            b.ciphertext = boxed.ciphertext.clone();
            let (dealer, party, subset, message) = dealing_refusal(
                f.holders[2]
                    .threshold_collect(&f.task, &HASH, &forged)
                    .unwrap_err(),
            );
            assert_eq!((dealer.as_str(), party), ("d", 3));
            assert!(subset.is_none(), "{message}");
            assert!(message.contains("relay's fault"), "{message}");
            let c = f.holders[2].take_threshold_complaint().unwrap();
            assert_eq!(c.kind, Kind::Relay as i32);

            // The same kind of box in a fresh ceremony, signed by d as its
            // own: d's fault; the complaint reveals c's key for d, which
            // opens the box.
            let slot = 2; // c among d's other holders a, b, c, e
            let mut g = five();
            let (g_keys, mut g_dealings) = keys_and_dealings(&mut g);
            let d_signer = Signer::from_pkcs8_pem_file(g.pki.partner_key_path("d")).unwrap();
            let g_c_key: [u8; 32] = g_keys[2]
                .keys
                .iter()
                .find(|k| k.dealer == 3)
                .unwrap()
                .public_key
                .as_slice()
                .try_into()
                .unwrap();
            let boxed = crate::seal::seal(&ctx, &g_c_key, &plain).unwrap();
            let b = g_dealings[3]
                .sealed
                .iter_mut()
                .find(|s| s.recipient == 2)
                .unwrap();
            b.dealer_key = boxed.dealer_key.to_vec();
            b.ciphertext = boxed.ciphertext;
            let signed_box = b.clone();
            g_dealings[3].box_digests[slot] =
                consortia_proto::sealed_subshares_digest(&[ID; 32], &HASH, 3, &signed_box).to_vec();
            let digest = consortia_proto::threshold_dealing_digest(
                &[ID; 32],
                &HASH,
                3,
                "d",
                5,
                3,
                &g_dealings[3].commitments,
                &g_dealings[3].box_digests,
            );
            g_dealings[3].signature = d_signer.sign_hash(&digest).unwrap();
            let (dealer, party, subset, message) = dealing_refusal(
                g.holders[2]
                    .threshold_collect(&g.task, &HASH, &g_dealings)
                    .unwrap_err(),
            );
            assert_eq!((dealer.as_str(), party), ("d", 3));
            assert!(subset.is_some(), "{message}");
            assert!(message.contains("dealer 3"), "{message}");
            let c = g.holders[2].take_threshold_complaint().unwrap();
            assert_eq!((c.dealer, c.kind), (3, Kind::Subshares as i32));
            assert_eq!(c.sealed.as_ref(), Some(&signed_box));
            let revealed: [u8; 32] = c.recipient_key.as_slice().try_into().unwrap();
            assert_eq!(crate::seal::public_of(&revealed), g_c_key);
            let opened = crate::seal::open_with(
                &revealed,
                &ctx,
                &crate::seal::Sealed {
                    dealer_key: signed_box.dealer_key.as_slice().try_into().unwrap(),
                    ciphertext: signed_box.ciphertext.clone(),
                },
            )
            .unwrap();
            assert_eq!(opened.as_slice(), plain.as_slice());
            // Signed by c over the evidence.
            let evidence = consortia_proto::threshold_complaint_evidence_digest(
                c.kind,
                &consortia_proto::sealed_subshares_digest(&[ID; 32], &HASH, 3, &signed_box),
                &c.recipient_key,
            );
            let digest =
                consortia_proto::threshold_complaint_digest(&[ID; 32], &HASH, 3, 2, "c", &evidence);
            let c_signer = Signer::from_pkcs8_pem_file(g.pki.partner_key_path("c")).unwrap();
            assert!(c_signer.verifier().verify_hash(&digest, &c.signature));

            // A dealing whose signature is not e's: the relay's fault.
            let mut unsigned = dealings.clone();
            unsigned[4].signature[8] ^= 1;
            let (dealer, party, _, message) = dealing_refusal(
                f.holders[0]
                    .threshold_collect(&f.task, &HASH, &unsigned)
                    .unwrap_err(),
            );
            assert_eq!((dealer.as_str(), party), ("e", 4));
            assert!(
                message.contains("not signed by `e`") && message.contains("relay's fault"),
                "{message}"
            );
            let shown = AgentError::ThresholdDealing {
                dealer,
                party,
                subset: None,
                message,
            }
            .to_string();
            assert!(
                shown.contains("signed complaint") && shown.contains("excludes whoever"),
                "{shown}"
            );

            // The untouched holders complete; nothing was stored for the others.
            for j in [3, 4] {
                f.holders[j]
                    .threshold_collect(&f.task, &HASH, &dealings)
                    .unwrap();
            }
            for (j, h) in f.holders.iter().enumerate() {
                assert_eq!(
                    h.path(&[ID; 32], "threshold").exists(),
                    j >= 3,
                    "holder {}",
                    f.names[j]
                );
            }
        }
    }
}
