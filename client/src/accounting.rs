//! The partner's own privacy accounting: its lifetime budget per dataset, its
//! own signed ledger, and the decision to decline a round — whatever the
//! coordinator says.
//!
//! The budget covers the partner's data file, identified by a name (the
//! configured `dataset_name`, by default the file's name) and the SHA-256 of
//! its bytes ([`DatasetId`]). Every round the partner ever spent on that
//! dataset counts against it, whatever the task was called, and each is
//! replayed from the DP events its ledger entry stored — so neither renaming a
//! task, nor a second task on the same data, nor lowering a task's noise
//! mid-way gives the data a fresh or cheaper budget.
//!
//! The spend of a round is appended to the partner's ledger (and flushed)
//! before the noised update leaves the partner, so a crash can only
//! over-count. So is each evaluation's ([`PartnerPrivacy::admit_evaluation`]),
//! before a held-out row is scored.
//!
//! A ledger that lost entries would make the partner's own budget check
//! forget spend. So after every append the ledger's head — its entry count and
//! the hash of its last entry — is written durably to `<state_dir>/ledger.head`
//! ([`HEAD_FILE`]), and every start checks the ledger against it
//! ([`check_ledger`]): a ledger shorter than its head, a different entry at the
//! head's index, a broken hash chain, a ledger missing while its head exists,
//! and a head file missing or unreadable while the ledger has entries are all
//! refused, naming the file; the remedy is to restore the state directory
//! from a backup. A ledger *longer* than its head (a crash between the
//! append and the head's write) is accepted and its head moved on: it can
//! only over-count.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use consortia_dp::{Budget, DpEvent, EVALUATION_MECHANISM, PrivacySpec, STATISTICS_MECHANISM};
use consortia_ledger::book::{BookError, PrivacyBook, TaskId};
use consortia_ledger::{DatasetId, Ledger, Signer, SpendRecord};
use consortia_model::TaskSpec;

use crate::{AgentConfig, AgentError};

/// A partner's privacy state for one task on its dataset.
pub struct PartnerPrivacy {
    /// The task's privacy settings.
    pub spec: PrivacySpec,
    book: PrivacyBook,
    ledger: Ledger,
    signer: Signer,
    partner: String,
    /// Where the ledger and its head ([`HEAD_FILE`]) live.
    state_dir: PathBuf,
}

/// The ledger head's file name in the agent's state directory.
pub const HEAD_FILE: &str = "ledger.head";

/// The ledger database's directory name in the agent's state directory.
pub const LEDGER_DIR: &str = "ledger";

/// First word of a head file.
const HEAD_FORMAT: &str = "consortia-ledger-head/v1";

/// What to do when the ledger and its head disagree.
const RESTORE: &str = "the privacy ledger has lost or changed entries, so this partner's own \
    budget check would forget spend: refused. Restore the agent's whole state directory from a \
    backup (the ledger and its head together), then start the agent again";

/// The head of the partner's ledger: how many entries it holds and the hash of
/// the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerHead {
    /// Entries in the ledger.
    pub entries: u64,
    /// Hash of the last entry.
    pub hash: [u8; 32],
}

impl LedgerHead {
    fn to_text(self) -> String {
        format!(
            "{HEAD_FORMAT} {} {}\n",
            self.entries,
            hex::encode(self.hash)
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        if words.next()? != HEAD_FORMAT {
            return None;
        }
        let entries = words.next()?.parse().ok()?;
        let hash = <[u8; 32]>::try_from(hex::decode(words.next()?).ok()?).ok()?;
        if words.next().is_some() || entries == 0 {
            return None;
        }
        Some(LedgerHead { entries, hash })
    }
}

fn head_error(path: &Path, message: String) -> AgentError {
    AgentError::Ledger {
        path: path.to_path_buf(),
        message,
    }
}

/// The head recorded in `state_dir`'s [`HEAD_FILE`], if there is one.
pub fn read_head(state_dir: &Path) -> Result<Option<LedgerHead>, AgentError> {
    let path = state_dir.join(HEAD_FILE);
    let text = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() > 256 => {
            return Err(head_error(
                &path,
                format!(
                    "the ledger head file is {} bytes, not a head; {RESTORE}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes) => String::from_utf8(bytes).unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(head_error(
                &path,
                format!("cannot read the ledger head: {e}"),
            ));
        }
    };
    LedgerHead::parse(&text).map(Some).ok_or_else(|| {
        head_error(
            &path,
            format!(
                "the ledger head file is damaged (not `{HEAD_FORMAT} <entries> <hash>`); {RESTORE}"
            ),
        )
    })
}

/// Writes `head` to `state_dir`'s [`HEAD_FILE`] durably: a synced temporary
/// file renamed over it, then the directory synced.
fn write_head(state_dir: &Path, head: LedgerHead) -> Result<(), AgentError> {
    let path = state_dir.join(HEAD_FILE);
    let err = |e: std::io::Error| head_error(&path, format!("cannot write the ledger head: {e}"));
    let tmp = state_dir.join(format!("{HEAD_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(head.to_text().as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// Checks the partner's ledger in `state_dir` against its recorded head (see
/// the module docs) before anything is charged; moves the head on when the
/// ledger is longer. Returns the ledger's head (`None`: no entries yet).
///
/// Run at every start of the agent, and again when the ledger is opened for a
/// task ([`PartnerPrivacy::open`]).
pub fn check_ledger(state_dir: &Path) -> Result<Option<LedgerHead>, AgentError> {
    let dir = state_dir.join(LEDGER_DIR);
    if !dir.exists() {
        return match read_head(state_dir)? {
            None => Ok(None),
            Some(head) => Err(head_error(
                &dir,
                format!(
                    "the privacy ledger is missing, but its head ({}) records {} entries; {RESTORE}",
                    state_dir.join(HEAD_FILE).display(),
                    head.entries
                ),
            )),
        };
    }
    let ledger = open_ledger(&dir)?;
    check_opened(state_dir, &ledger)
}

/// Opens the ledger database at `dir`; an error names it and says what to do.
fn open_ledger(dir: &Path) -> Result<Ledger, AgentError> {
    Ledger::open(dir).map_err(|e| {
        head_error(
            dir,
            format!("cannot open the privacy ledger ({e}); if it is damaged, {RESTORE}"),
        )
    })
}

/// [`check_ledger`] on an opened ledger.
fn check_opened(state_dir: &Path, ledger: &Ledger) -> Result<Option<LedgerHead>, AgentError> {
    let dir = ledger.path();
    let refuse = |what: String| head_error(dir, format!("{what}; {RESTORE}"));
    let entries = ledger.entries().map_err(|e| {
        refuse(format!(
            "an entry of the privacy ledger cannot be read ({e})"
        ))
    })?;
    // The hash chain, whatever the head says: entries in order, each hash its contents'.
    let mut prev = consortia_ledger::entry::GENESIS_PREV_HASH;
    for (i, e) in entries.iter().enumerate() {
        if e.index != i as u64 || e.prev_hash != prev || !e.hash_matches() {
            return Err(refuse(format!(
                "entry {i} of the privacy ledger does not chain onto the one before it"
            )));
        }
        prev = e.hash;
    }
    let current = entries.last().map(|e| LedgerHead {
        entries: entries.len() as u64,
        hash: e.hash,
    });
    let head_path = state_dir.join(HEAD_FILE);
    match (read_head(state_dir)?, current) {
        (None, None) => Ok(None),
        (None, Some(cur)) => Err(head_error(
            &head_path,
            format!(
                "the privacy ledger {} holds {} entries, but its head file is missing; {RESTORE}",
                dir.display(),
                cur.entries
            ),
        )),
        (Some(head), cur) => {
            let have = cur.map_or(0, |c| c.entries);
            if have < head.entries {
                return Err(refuse(format!(
                    "the privacy ledger holds {have} entries, but its head ({}) records {}",
                    head_path.display(),
                    head.entries
                )));
            }
            let at = &entries[(head.entries - 1) as usize];
            if at.hash != head.hash {
                return Err(refuse(format!(
                    "entry {} of the privacy ledger has hash {}, but its head ({}) records {}",
                    head.entries - 1,
                    hex::encode(at.hash),
                    head_path.display(),
                    hex::encode(head.hash)
                )));
            }
            if let Some(cur) = cur
                && cur != head
            {
                tracing::warn!(
                    "the privacy ledger holds {} entries, its head recorded {}: a crash came between \
                     an append and its head (the spend counts); head moved on",
                    cur.entries,
                    head.entries
                );
                write_head(state_dir, cur)?;
            }
            Ok(cur)
        }
    }
}

/// Parses the task's `[privacy]` table.
pub fn task_privacy(task: &TaskSpec) -> Result<Option<PrivacySpec>, AgentError> {
    task.privacy_spec()
        .map_err(|e| AgentError::Task(e.to_string()))
}

fn ledger_err(e: consortia_ledger::LedgerError) -> AgentError {
    AgentError::Config {
        path: "privacy ledger".into(),
        message: e.to_string(),
    }
}

/// The dataset the partner's budget covers: `cfg.dataset_name` (default: the file name of
/// `cfg.data`) and the SHA-256 of the file's bytes.
pub fn dataset_id(cfg: &AgentConfig) -> Result<DatasetId, AgentError> {
    DatasetId::from_file(cfg.dataset_name.as_deref(), &cfg.data).map_err(|e| AgentError::Config {
        path: cfg.data.clone(),
        message: format!("cannot identify the dataset for privacy accounting: {e}"),
    })
}

impl PartnerPrivacy {
    /// Opens the partner's ledger in `cfg.state_dir/ledger` and replays every entry it holds
    /// for its dataset ([`dataset_id`]), of any task, against its own budget (`cfg.privacy`;
    /// without one, the task's). New rounds are charged to `task` (name and canonical hash
    /// `task_hash`, `TaskSpec::canonical_hash`) and to the dataset.
    pub fn open(
        cfg: &AgentConfig,
        spec: PrivacySpec,
        task: &str,
        partner: &str,
        task_hash: [u8; 32],
    ) -> Result<Self, AgentError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| AgentError::Config {
            path: cfg.state_dir.clone(),
            message: format!("cannot create the agent's state directory: {e}"),
        })?;
        let dataset = dataset_id(cfg)?;
        if !cfg.state_dir.join(LEDGER_DIR).exists() {
            // A missing ledger with a head is refused before an empty one is created.
            check_ledger(&cfg.state_dir)?;
        }
        let ledger = open_ledger(&cfg.state_dir.join(LEDGER_DIR))?;
        check_opened(&cfg.state_dir, &ledger)?;
        let signer = Signer::from_pkcs8_pem_file(&cfg.tls.key).map_err(ledger_err)?;
        let own = match cfg.privacy {
            Some(b) => Some(Budget {
                epsilon: b.epsilon,
                delta: b.delta,
            }),
            None => {
                tracing::warn!(
                    "no [privacy] budget in the agent configuration: using the task's (ε {}, δ {})",
                    spec.budget_for(partner).epsilon,
                    spec.delta
                );
                None
            }
        };
        if let Some(b) = own {
            b.validate().map_err(|e| AgentError::Config {
                path: "[privacy]".into(),
                message: e.to_string(),
            })?;
        }
        let entries = ledger.entries().map_err(ledger_err)?;
        let task = TaskId {
            name: task.to_string(),
            hash: task_hash,
        };
        let book = PrivacyBook::for_dataset(spec.clone(), task, dataset, own, &entries)
            .map_err(|e| AgentError::Task(e.to_string()))?;
        for note in book.notes() {
            tracing::warn!("privacy ledger: {note}");
        }
        Ok(PartnerPrivacy {
            spec,
            book,
            ledger,
            signer,
            partner: partner.to_string(),
            state_dir: cfg.state_dir.clone(),
        })
    }

    /// The ledger's head now (`None` while it is empty): what the agent reports to the
    /// coordinator after each charge.
    pub fn head(&self) -> Option<LedgerHead> {
        let last = self.ledger.last().ok().flatten()?;
        Some(LedgerHead {
            entries: last.index + 1,
            hash: last.hash,
        })
    }

    /// Checks the head the coordinator acknowledged — the latest one this partner
    /// reported to it — against the ledger: a ledger with fewer entries, or another
    /// entry at that position, was lost or rolled back together with its head file
    /// (a state directory deleted or restored from an older backup), and is refused.
    /// A coordinator can only make the agent stop this way, never spend more.
    pub fn check_acknowledged(&self, entries: u64, hash: &[u8]) -> Result<(), AgentError> {
        if entries == 0 {
            return Ok(());
        }
        let dir = self.ledger.path();
        let held = self.ledger.entries().map_err(|e| {
            head_error(
                dir,
                format!("an entry of the privacy ledger cannot be read ({e})"),
            )
        })?;
        let at = usize::try_from(entries - 1).ok().and_then(|i| held.get(i));
        match at {
            None => Err(head_error(
                dir,
                format!(
                    "the coordinator acknowledged {entries} entries of this partner's privacy ledger, but it holds {}; {RESTORE}",
                    held.len()
                ),
            )),
            Some(e) if e.hash.as_slice() != hash => Err(head_error(
                dir,
                format!(
                    "entry {} of this partner's privacy ledger has hash {}, but the coordinator acknowledged {}; {RESTORE}",
                    entries - 1,
                    hex::encode(e.hash),
                    hex::encode(hash)
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The dataset this partner's budget covers.
    pub fn dataset(&self) -> Option<&DatasetId> {
        self.book.dataset()
    }

    /// ε the partner has spent on its dataset so far, over every task.
    pub fn spent(&self) -> Result<f64, String> {
        self.book.spent(&self.partner).map_err(|e| e.to_string())
    }

    /// Charges `round`'s `events` — what the partner's local update states it spends
    /// ([`crate::training::LocalUpdate::events`]) — to the partner's own budget and
    /// ledger, or says why not.
    ///
    /// `Err` carries the reason to send the coordinator with a `Decline`.
    pub fn admit(
        &mut self,
        round: u64,
        rows: usize,
        events: &[(DpEvent, u64)],
    ) -> Result<f64, String> {
        let after = self.fits(events, "this round")?;
        let record = self.book.charge_round(
            round,
            now_ms(),
            &[(self.partner.clone(), rows as u64)],
            events,
        );
        self.write(record)?;
        Ok(after)
    }

    /// Appends a charged record to the partner's own ledger (flushed), then
    /// moves the ledger's head ([`HEAD_FILE`]) on, durably.
    fn write(&mut self, record: Result<SpendRecord, BookError>) -> Result<(), String> {
        let record = record.map_err(|e| e.to_string())?;
        let entry = self
            .ledger
            .append(record, &self.signer)
            .map_err(|e| format!("cannot write the privacy ledger: {e}"))?;
        let head = LedgerHead {
            entries: entry.index + 1,
            hash: entry.hash,
        };
        write_head(&self.state_dir, head).map_err(|e| e.to_string())
    }

    /// Checks that releasing `events` fits the partner's own budget: ε after them, or the
    /// reason to send the coordinator with a `Decline`.
    fn fits(&self, events: &[(DpEvent, u64)], what: &str) -> Result<f64, String> {
        let quote = match self.book.quote_events(&self.partner, events) {
            Ok(q) => q,
            Err(BookError::Overspent { budget, .. }) => {
                return Err(format!("our privacy budget (ε {budget}) is spent"));
            }
            Err(e) => return Err(e.to_string()),
        };
        if !quote.fits() {
            return Err(format!(
                "our privacy budget would go from ε {:.3} to ε {:.3} with {what}, over our ε {}",
                quote.spent, quote.after, quote.budget
            ));
        }
        Ok(quote.after)
    }

    /// Checks, before anything is charged, that a round that spends `round_events` *and*
    /// evaluates the model fits the budget as a whole, so that a partner never pays for a
    /// training round whose evaluation it must then decline.
    pub fn check_round_and_evaluation(
        &self,
        round_events: &[(DpEvent, u64)],
    ) -> Result<f64, String> {
        let mut events = round_events.to_vec();
        events.extend(self.spec.evaluation_events());
        self.fits(&events, "this round and its evaluation")
    }

    /// Charges one evaluation release of `round` (`PrivacySpec::evaluation_events`, mechanism
    /// [`EVALUATION_MECHANISM`]) to the partner's own budget and ledger — appended and flushed
    /// before any held-out row is scored — or says why not (`Err` carries the reason for a
    /// `Decline`). `rows` is the partner's training row count, the dataset size its ledger
    /// records for every release.
    pub fn admit_evaluation(&mut self, round: u64, rows: usize) -> Result<f64, String> {
        let events = self.spec.evaluation_events();
        let after = self.fits(&events, "this evaluation")?;
        let record = self.book.charge_events(
            round,
            now_ms(),
            &[(self.partner.clone(), rows as u64)],
            &events,
            EVALUATION_MECHANISM,
        );
        self.write(record)?;
        Ok(after)
    }

    /// Write-ahead charge of the task's one release of feature statistics
    /// ([`PrivacySpec::statistics_events`]): appended (and flushed) to this partner's own ledger
    /// as round 0, mechanism [`STATISTICS_MECHANISM`], before any statistic is computed. Returns
    /// the ε after it, `None` when the release costs nothing (partner unit: statistics of the
    /// public bounds only), or why it does not fit the budget.
    pub fn admit_statistics(&mut self) -> Result<Option<f64>, String> {
        let events = self.spec.statistics_events();
        if events.is_empty() {
            return Ok(None);
        }
        let after = self.fits(&events, "the release of feature statistics")?;
        // Row count 0: the ledger entry states no exact count of the rows it protects.
        let record = self.book.charge_events(
            0,
            now_ms(),
            &[(self.partner.clone(), 0)],
            &events,
            STATISTICS_MECHANISM,
        );
        self.write(record)?;
        Ok(Some(after))
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const PARTNER: &str = "acme";

    /// An agent configuration for `data`, with its state and key under `dir`.
    fn config(dir: &Path, key: &Path, data: &Path, dataset_name: Option<&str>) -> AgentConfig {
        let name = dataset_name.map_or(String::new(), |n| format!("dataset_name = {n:?}\n"));
        toml::from_str(&format!(
            "coordinator = \"https://localhost:7443\"\ndata = {:?}\nstate_dir = {:?}\n{name}\
             [privacy]\nepsilon = 6.0\ndelta = 1e-5\n\
             [tls]\nca_cert = \"ca.pem\"\ncert = \"acme.pem\"\nkey = {:?}\n",
            data.display().to_string(),
            dir.join("state").display().to_string(),
            key.display().to_string(),
        ))
        .expect("agent configuration")
    }

    /// A partner with a PKI and a one-row data file `d.csv` under a fresh
    /// temporary directory (kept alive by the first value).
    fn one_row_partner() -> (tempfile::TempDir, consortia_pki::Pki, AgentConfig) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let pki = consortia_pki::Pki::init(
            dir.path().join("pki"),
            &["localhost".into()],
            &[PARTNER.into()],
        )
        .expect("PKI");
        let data = dir.path().join("d.csv");
        std::fs::write(&data, "a\n1\n").expect("data");
        let cfg = config(dir.path(), &pki.partner_key_path(PARTNER), &data, None);
        (dir, pki, cfg)
    }

    /// The events one round of the spec's local update spends for 2,000 rows.
    fn round_events(p: &PartnerPrivacy) -> Vec<(DpEvent, u64)> {
        p.spec.round_events(2000).unwrap()
    }

    fn spec() -> PrivacySpec {
        toml::from_str(
            "epsilon = 10.0\ndelta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = 1.0\nsampling_rate = 0.01\nsteps_per_round = 10\n",
        )
        .expect("privacy spec")
    }

    /// Admits rounds until the partner's own ε 6 budget refuses one; returns how many fit.
    fn rounds_until_refused(p: &mut PartnerPrivacy, first_round: u64) -> u64 {
        let mut n = 0;
        while p.admit(first_round + n, 2000, &round_events(p)).is_ok() {
            n += 1;
            assert!(n < 1000, "the budget never ran out");
        }
        n
    }

    #[test]
    fn tasks_on_one_dataset_share_its_budget_and_another_dataset_has_its_own() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let pki = consortia_pki::Pki::init(
            dir.path().join("pki"),
            &["localhost".into()],
            &[PARTNER.into()],
        )
        .expect("PKI");
        let key = pki.partner_key_path(PARTNER);
        let data = dir.path().join("customers.csv");
        std::fs::write(&data, "age,income\n30,1\n40,2\n").expect("data");
        let cfg = config(dir.path(), &key, &data, None);

        // Task "churn" spends part of the dataset's budget.
        let mut churn = PartnerPrivacy::open(&cfg, spec(), "churn", PARTNER, [1; 32]).unwrap();
        assert_eq!(
            churn.dataset().map(|d| d.name.as_str()),
            Some("customers.csv")
        );
        for round in 1..=2 {
            churn.admit(round, 2000, &round_events(&churn)).unwrap();
        }
        let spent = churn.spent().unwrap();
        assert!(spent > 0.0);
        drop(churn);

        // A task of another name on the same file starts from that spend, and the two together
        // stop where one task alone would.
        let mut renamed = PartnerPrivacy::open(&cfg, spec(), "churn-v2", PARTNER, [2; 32]).unwrap();
        assert!((renamed.spent().unwrap() - spent).abs() < 1e-12);
        let more = rounds_until_refused(&mut renamed, 1);
        drop(renamed);
        let alone_dir = tempfile::tempdir().expect("temporary directory");
        let alone_cfg = config(alone_dir.path(), &key, &data, None);
        let mut alone = PartnerPrivacy::open(&alone_cfg, spec(), "x", PARTNER, [3; 32]).unwrap();
        assert_eq!(2 + more, rounds_until_refused(&mut alone, 1));

        // The same rows under another dataset name are still the same data.
        let renamed_data = config(dir.path(), &key, &data, Some("crm-export"));
        let p = PartnerPrivacy::open(&renamed_data, spec(), "y", PARTNER, [4; 32]).unwrap();
        assert!(p.spent().unwrap() >= spent);
        assert!(p.admit_would_fail());
        drop(p);

        // Another file under another name has a budget of its own.
        let other = dir.path().join("suppliers.csv");
        std::fs::write(&other, "age,income\n50,3\n").expect("data");
        let other_cfg = config(dir.path(), &key, &other, None);
        let mut fresh =
            PartnerPrivacy::open(&other_cfg, spec(), "churn", PARTNER, [1; 32]).unwrap();
        assert_eq!(fresh.spent().unwrap(), 0.0);
        fresh.admit(1, 2000, &round_events(&fresh)).unwrap();
    }

    impl PartnerPrivacy {
        /// Whether the next round would be declined (without charging it).
        fn admit_would_fail(&self) -> bool {
            !matches!(self.book.quote(&self.partner, 2000), Ok(q) if q.fits())
        }
    }

    /// An evaluation is written to the partner's own ledger (mechanism
    /// "evaluation-discrete-gaussian", ρ = 1/(2σ_e²)) and its spend grows by exactly that
    /// event; one that does not fit the budget is refused and writes nothing.
    #[test]
    fn an_evaluation_is_charged_to_the_partners_own_ledger() {
        use consortia_ledger::entry::StoredEvent;
        let (_dir, pki, cfg) = one_row_partner();
        let mut s = spec();
        s.evaluation_noise = 5.0;
        let mut p = PartnerPrivacy::open(&cfg, s.clone(), "t", PARTNER, [1; 32]).unwrap();
        p.admit(1, 2000, &round_events(&p)).unwrap();
        let before = p.spent().unwrap();
        let planned = p.check_round_and_evaluation(&round_events(&p)).unwrap();
        assert!(planned > before);
        let after = p.admit_evaluation(1, 2000).unwrap();
        assert!((p.spent().unwrap() - after).abs() < 1e-12);
        // The increase is that of ρ = 1/(2·25) composed onto the round.
        let mut by_hand = consortia_dp::RdpAccountant::new();
        by_hand.compose_all(&s.round_events(2000).unwrap()).unwrap();
        by_hand.compose(DpEvent::Zcdp { rho: 0.02 }, 1).unwrap();
        assert!((after - by_hand.epsilon(1e-5).unwrap()).abs() < 1e-12);
        drop(p);

        let entries = Ledger::open(cfg.state_dir.join("ledger"))
            .unwrap()
            .entries()
            .unwrap();
        assert_eq!(entries.len(), 2);
        let e = &entries[1].record;
        assert_eq!(e.mechanism, "evaluation-discrete-gaussian");
        assert_eq!(
            (e.round, e.participants.as_slice()),
            (1, [PARTNER.to_string()].as_slice())
        );
        let charged = e.charged.as_ref().unwrap();
        assert_eq!(
            charged.events,
            vec![StoredEvent::Zcdp {
                rho: 0.02,
                count: 1
            }]
        );
        assert_eq!(
            charged.dataset.as_ref().map(|d| d.name.as_str()),
            Some("d.csv")
        );
        assert!((e.epsilon_cumulative[PARTNER] - after).abs() < 1e-12);
        assert!((e.epsilon_round[PARTNER] - (after - before)).abs() < 1e-12);
        let verifier =
            consortia_ledger::Verifier::from_cert_pem_file(pki.partner_cert_path(PARTNER)).unwrap();
        assert!(consortia_ledger::audit::verify(&entries, &verifier).is_valid());

        // Reopened, the book replays the evaluation; with σ_e = 1 (ρ = 0.5 each) the own
        // budget of ε 6 runs out, and the refused evaluation leaves no entry.
        s.evaluation_noise = 1.0;
        let mut p = PartnerPrivacy::open(&cfg, s, "t", PARTNER, [1; 32]).unwrap();
        assert!((p.spent().unwrap() - after).abs() < 1e-12);
        let mut admitted = 0;
        let refusal = loop {
            match p.admit_evaluation(2 + admitted, 2000) {
                Ok(eps) => assert!(eps <= 6.0),
                Err(why) => break why,
            }
            admitted += 1;
            assert!(admitted < 100, "the budget never ran out");
        };
        assert!(refusal.contains("this evaluation"), "{refusal}");
        assert!(p.spent().unwrap() <= 6.0);
        assert!(p.check_round_and_evaluation(&round_events(&p)).is_err());
        drop(p);
        let entries = Ledger::open(cfg.state_dir.join("ledger"))
            .unwrap()
            .entries()
            .unwrap();
        assert_eq!(entries.len() as u64, 2 + admitted);
    }

    /// A partner with `n` rounds charged to its ledger; the ledger's head file.
    fn charged(n: u64) -> (tempfile::TempDir, consortia_pki::Pki, AgentConfig, PathBuf) {
        let (dir, pki, cfg) = one_row_partner();
        let mut p = PartnerPrivacy::open(&cfg, spec(), "t", PARTNER, [1; 32]).unwrap();
        for round in 1..=n {
            p.admit(round, 2000, &round_events(&p)).unwrap();
        }
        drop(p);
        let head = cfg.state_dir.join(HEAD_FILE);
        (dir, pki, cfg, head)
    }

    /// The refusal of `check_ledger` and of `PartnerPrivacy::open`: both name `file`.
    fn refused(cfg: &AgentConfig, file: &Path, want: &str) {
        for e in [
            check_ledger(&cfg.state_dir).map(|_| ()).unwrap_err(),
            PartnerPrivacy::open(cfg, spec(), "t", PARTNER, [1; 32])
                .map(|_| ())
                .unwrap_err(),
        ] {
            assert!(matches!(e, AgentError::Ledger { .. }), "{e}");
            let e = e.to_string();
            assert!(
                e.starts_with(&file.display().to_string())
                    && e.contains(want)
                    && e.contains("Restore the agent's whole state directory from a backup"),
                "{e}"
            );
        }
    }

    #[test]
    fn every_append_moves_the_ledger_head_and_a_whole_ledger_opens() {
        let (_dir, _pki, cfg, head) = charged(3);
        let text = std::fs::read_to_string(&head).unwrap();
        let entries = Ledger::open(cfg.state_dir.join(LEDGER_DIR))
            .unwrap()
            .entries()
            .unwrap();
        assert_eq!(
            text,
            format!("{HEAD_FORMAT} 3 {}\n", hex::encode(entries[2].hash))
        );
        let checked = check_ledger(&cfg.state_dir).unwrap().unwrap();
        assert_eq!((checked.entries, checked.hash), (3, entries[2].hash));
        assert!(PartnerPrivacy::open(&cfg, spec(), "t", PARTNER, [1; 32]).is_ok());
        // A fresh state directory has neither, and is fine.
        let (_d, _p, fresh) = one_row_partner();
        assert_eq!(check_ledger(&fresh.state_dir).unwrap(), None);
    }

    #[test]
    fn a_ledger_shorter_than_its_head_is_refused() {
        let (_dir, _pki, cfg, head) = charged(3);
        // What a truncated database recovers to: its first two entries.
        let entries = Ledger::open(cfg.state_dir.join(LEDGER_DIR))
            .unwrap()
            .entries()
            .unwrap();
        let ledger = cfg.state_dir.join(LEDGER_DIR);
        std::fs::remove_dir_all(&ledger).unwrap();
        let signer = Signer::from_pkcs8_pem_file(&cfg.tls.key).unwrap();
        let short = Ledger::open(&ledger).unwrap();
        for e in &entries[..2] {
            short.append(e.record.clone(), &signer).unwrap();
        }
        drop(short);
        refused(&cfg, &ledger, "holds 2 entries, but its head");
        assert!(head.exists());
    }

    #[test]
    fn a_ledger_whose_entry_at_the_head_differs_is_refused() {
        let (_dir, _pki, cfg, head) = charged(2);
        let text = std::fs::read_to_string(&head).unwrap();
        let mut words: Vec<String> = text.split_whitespace().map(String::from).collect();
        words[2] = hex::encode([9u8; 32]);
        std::fs::write(&head, words.join(" ")).unwrap();
        refused(
            &cfg,
            &cfg.state_dir.join(LEDGER_DIR),
            "entry 1 of the privacy ledger has hash",
        );
    }

    #[test]
    fn a_deleted_ledger_or_head_is_refused() {
        let (_dir, _pki, cfg, head) = charged(2);
        let ledger = cfg.state_dir.join(LEDGER_DIR);
        let saved = std::fs::read(&head).unwrap();
        std::fs::remove_file(&head).unwrap();
        refused(&cfg, &head, "its head file is missing");
        std::fs::write(&head, b"garbage\n").unwrap();
        refused(&cfg, &head, "the ledger head file is damaged");
        std::fs::write(&head, &saved).unwrap();
        std::fs::remove_dir_all(&ledger).unwrap();
        refused(&cfg, &ledger, "the privacy ledger is missing");
        // Refused before an empty ledger was created in its place.
        assert!(!ledger.exists());
    }

    /// A crash between an append and its head leaves the ledger one entry ahead:
    /// accepted (it can only over-count), and the head moves on.
    #[test]
    fn a_ledger_ahead_of_its_head_is_accepted_and_the_head_moves_on() {
        let (_dir, _pki, cfg, head) = charged(2);
        let before = std::fs::read_to_string(&head).unwrap();
        let mut p = PartnerPrivacy::open(&cfg, spec(), "t", PARTNER, [1; 32]).unwrap();
        p.admit(3, 2000, &round_events(&p)).unwrap();
        drop(p);
        std::fs::write(&head, &before).unwrap();
        assert_eq!(check_ledger(&cfg.state_dir).unwrap().unwrap().entries, 3);
        assert!(std::fs::read_to_string(&head).unwrap().contains(" 3 "));
    }

    #[test]
    fn rounds_charged_before_a_noise_change_keep_their_cost() {
        let (_dir, _pki, cfg) = one_row_partner();
        let mut low = spec();
        low.noise_multiplier = 0.8;
        let mut p = PartnerPrivacy::open(&cfg, low, "t", PARTNER, [1; 32]).unwrap();
        p.admit(1, 2000, &round_events(&p)).unwrap();
        let spent = p.spent().unwrap();
        drop(p);
        let mut high = spec();
        high.noise_multiplier = 2.0;
        let p = PartnerPrivacy::open(&cfg, high, "t", PARTNER, [5; 32]).unwrap();
        assert!((p.spent().unwrap() - spent).abs() < 1e-12);
    }
    /// The statistics release is charged write-ahead as its own entry (round 0); under the
    /// partner unit it costs nothing and writes nothing.
    #[test]
    fn the_statistics_release_is_charged_to_the_partners_own_ledger() {
        let (_dir, pki, cfg) = one_row_partner();
        let mut p = PartnerPrivacy::open(&cfg, spec(), "t", PARTNER, [1; 32]).unwrap();
        let after = p
            .admit_statistics()
            .unwrap()
            .expect("a charge under the record unit");
        let mut by_hand = consortia_dp::RdpAccountant::new();
        by_hand
            .compose(consortia_dp::statistics_event(10.0), 1)
            .unwrap();
        assert!((after - by_hand.epsilon(1e-5).unwrap()).abs() < 1e-12);
        assert!((p.spent().unwrap() - after).abs() < 1e-12);
        drop(p);
        let entries = Ledger::open(cfg.state_dir.join("ledger"))
            .unwrap()
            .entries()
            .unwrap();
        assert_eq!(entries.len(), 1);
        let e = &entries[0].record;
        assert_eq!((e.round, e.mechanism.as_str()), (0, STATISTICS_MECHANISM));
        assert_eq!(e.dataset_sizes[PARTNER], 0);

        let partner_unit: PrivacySpec = toml::from_str(
            "unit = \"partner\"\nepsilon = 10.0\ndelta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = 1.0\n",
        )
        .unwrap();
        let other = tempfile::tempdir().expect("temporary directory");
        let cfg = config(
            other.path(),
            &pki.partner_key_path(PARTNER),
            &cfg.data,
            None,
        );
        let mut p = PartnerPrivacy::open(&cfg, partner_unit, "u", PARTNER, [2; 32]).unwrap();
        assert_eq!(p.admit_statistics().unwrap(), None);
        assert_eq!(p.spent().unwrap(), 0.0);
    }
}
