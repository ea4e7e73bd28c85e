//! The holders of the federation key, as the operator follows them: which holders
//! are reachable (and since when one is not), which holders answered each joint
//! decryption ([`DecryptionRecord`]), and the timing rule of the automatic re-key
//! ([`Book::verdict`]).
//!
//! The rule: when, for `[keys] rekey_after_s` without interruption, the holders of
//! the current key that are connected are fewer than `t + 1` (a t-of-N key: one
//! more departure would stop every round) or fewer than all of them (an N-of-N
//! key), the coordinator re-keys between rounds with the partners connected then
//! (less the `excluded`, at least the key's minimum). For a t-of-N key only if
//! that committee would be larger than the holders still reachable: otherwise
//! the new key would be no safer than the old, and it says once per interval why
//! it waits. For an N-of-N key, which opens nothing while a holder is away, a key
//! of the connected partners always helps, smaller or not. The re-key itself is
//! `phase::key_ceremony::renew_if_holders_unreachable`.
//!
//! Only key holders contribute to a secure round (`selection`): a connected
//! partner outside the current key is named once per key ([`Book::newly_outside`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::hub::lock;
use crate::phase::decryption::DecryptionFailed;
use crate::report::now_ms;
use crate::secure::Decryption;
use crate::telemetry::Telemetry;

/// Decryption records kept for the console (the latest).
pub const DECRYPTIONS_KEPT: usize = 20;
/// Automatic re-keys kept for the console (the latest).
pub const REKEYS_KEPT: usize = 20;
/// The `reason` of an automatic re-key for unreachable holders.
pub const HOLDERS_UNREACHABLE: &str = "holders_unreachable";

/// A key holder's part in one decryption, as the `outcome` label of
/// `consortia_key_holder_decryptions_total` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HolderOutcome {
    /// Its whole partial decryption arrived.
    Answered,
    /// Not connected when the decryption started: not asked.
    Absent,
    /// Asked, and it refused, left, sent a broken share or did not answer a step by
    /// the deadline.
    Failed,
    /// Asked; the decryption stopped (another party failed) before its share was in.
    Stopped,
}

impl HolderOutcome {
    /// The `outcome` label.
    pub fn code(self) -> &'static str {
        match self {
            HolderOutcome::Answered => "answered",
            HolderOutcome::Absent => "absent",
            HolderOutcome::Failed => "failed",
            HolderOutcome::Stopped => "stopped",
        }
    }
}

/// A key holder that did not answer, and why (when known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unanswered {
    /// The key holder.
    pub partner: String,
    /// What happened, as the coordinator saw it.
    pub reason: String,
}

/// Which key holders answered one joint decryption of a round's sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecryptionRecord {
    /// The round.
    pub round: u64,
    /// Its attempt.
    pub attempt: u64,
    /// When the decryption ended, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Whether the sum was opened.
    pub decrypted: bool,
    /// Why not, when it was not.
    pub reason: Option<String>,
    /// The holders of the key.
    pub holders: Vec<String>,
    /// Shares that open a sum: the key's threshold t, or every holder (N-of-N).
    pub threshold: usize,
    /// The holders asked (the decryption set).
    pub asked: Vec<String>,
    /// The holders whose partial decryption arrived.
    pub answered: Vec<String>,
    /// The holders asked that failed the decryption or did not answer by the deadline.
    pub failed: Vec<Unanswered>,
    /// The holders asked (or to be asked) whose share was not in when the decryption
    /// stopped for another party's failure.
    pub stopped: Vec<String>,
    /// The holders not asked: not connected when the decryption started.
    pub away: Vec<String>,
}

impl DecryptionRecord {
    /// Every holder's outcome, in the committee's order.
    pub fn outcomes(&self) -> Vec<(&str, HolderOutcome)> {
        self.holders
            .iter()
            .map(|p| {
                let outcome = if self.answered.contains(p) {
                    HolderOutcome::Answered
                } else if self.failed.iter().any(|f| &f.partner == p) {
                    HolderOutcome::Failed
                } else if self.stopped.contains(p) {
                    HolderOutcome::Stopped
                } else {
                    HolderOutcome::Absent
                };
                (p.as_str(), outcome)
            })
            .collect()
    }

    /// One line for people: who decrypted, who was asked and did not answer, who was away.
    pub fn summary(&self) -> String {
        let names = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut not_answering: Vec<String> = self
            .failed
            .iter()
            .map(|f| format!("{} ({})", f.partner, f.reason))
            .collect();
        not_answering.extend(self.stopped.iter().map(|p| format!("{p} (stopped)")));
        format!(
            "{} by {}; asked but did not answer: {}; away: {}",
            if self.decrypted {
                "decrypted"
            } else {
                "not decrypted"
            },
            names(&self.answered),
            names(&not_answering),
            names(&self.away),
        )
    }
}

/// What the hub saw of a decryption when its stage ended.
#[derive(Debug, Clone)]
pub struct DecryptionSnapshot {
    round: u64,
    attempt: u64,
    asked: Vec<String>,
    answered: Vec<String>,
    failed: Option<(String, String)>,
}

impl DecryptionSnapshot {
    /// The state of `d` as its stage ends.
    pub fn of(d: &Decryption) -> Self {
        DecryptionSnapshot {
            round: d.round(),
            attempt: d.attempt(),
            asked: d.asked().to_vec(),
            answered: d.answered(),
            failed: d
                .failed_holder()
                .map(|(p, why)| (p.to_string(), why.to_string())),
        }
    }
}

/// A key holder that is not connected, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Away {
    /// The key holder.
    pub partner: String,
    /// Since when it is not connected (or since the coordinator started, if it never
    /// was), milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
}

/// One automatic re-key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RekeyRecord {
    /// When the re-key started, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Why (`holders_unreachable`).
    pub reason: String,
    /// The holders of the retired key.
    pub old_holders: Vec<String>,
    /// The holders of the new key.
    pub new_holders: Vec<String>,
    /// The holders of the retired key that were unreachable, and since when.
    pub unreachable: Vec<Away>,
}

/// What the timing rule says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Keep,
    /// Re-key now with `candidates`.
    Rekey(RekeyPlan),
    /// A re-key would not help; say why (once per interval).
    Waits(String),
}

/// Why and with whom to re-key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyPlan {
    /// Holders of the current key.
    pub holders: Vec<String>,
    /// Holders not connected, and since when.
    pub unreachable: Vec<Away>,
    /// Holders connected.
    pub reachable: usize,
    /// Since when the reachable holders are too few.
    pub for_secs: u64,
    /// The partners that would make the new key.
    pub candidates: Vec<String>,
}

/// Whether `reachable` holders of a key of `holders` leave the federation one
/// departure (t-of-N) or any departure (N-of-N) from stopping every round.
pub fn at_risk(holders: usize, reachable: usize, threshold: Option<u32>) -> bool {
    match threshold {
        Some(t) => reachable < t as usize + 1,
        None => reachable < holders,
    }
}

/// The state behind [`KeyHolders`]; every method takes the time, so the rule is
/// tested with a clock the test controls.
#[derive(Debug)]
pub struct Book {
    rekey_after: Duration,
    started: (Instant, u64),
    holders: Vec<String>,
    threshold: Option<u32>,
    connected: BTreeSet<String>,
    /// Partners whose session ended, and when (removed when they come back).
    left: BTreeMap<String, (Instant, u64)>,
    at_risk_since: Option<(Instant, u64)>,
    waits_told: Option<Instant>,
    outside_told: BTreeSet<String>,
    last_answered: BTreeMap<String, u64>,
    pending: Vec<DecryptionSnapshot>,
    decryptions: VecDeque<DecryptionRecord>,
    rekeys: VecDeque<RekeyRecord>,
}

impl Book {
    /// An empty book at `now` (`now_ms` since the Unix epoch), re-keying after `rekey_after`
    /// (zero: never).
    pub fn new(now: Instant, now_ms: u64, rekey_after: Duration) -> Self {
        Book {
            rekey_after,
            started: (now, now_ms),
            holders: Vec::new(),
            threshold: None,
            connected: BTreeSet::new(),
            left: BTreeMap::new(),
            at_risk_since: None,
            waits_told: None,
            outside_told: BTreeSet::new(),
            last_answered: BTreeMap::new(),
            pending: Vec::new(),
            decryptions: VecDeque::new(),
            rekeys: VecDeque::new(),
        }
    }

    fn reachable(&self) -> usize {
        self.holders
            .iter()
            .filter(|p| self.connected.contains(*p))
            .count()
    }

    fn update_risk(&mut self, now: Instant, now_ms: u64) {
        let risk = !self.holders.is_empty()
            && at_risk(self.holders.len(), self.reachable(), self.threshold);
        match (risk, self.at_risk_since) {
            (true, None) => self.at_risk_since = Some((now, now_ms)),
            (false, _) => {
                self.at_risk_since = None;
                self.waits_told = None;
            }
            (true, Some(_)) => {}
        }
    }

    /// The partners connected now.
    pub fn presence(&mut self, now: Instant, now_ms: u64, connected: BTreeSet<String>) {
        for gone in self.connected.difference(&connected) {
            self.left.insert(gone.clone(), (now, now_ms));
        }
        for p in &connected {
            self.left.remove(p);
        }
        self.connected = connected;
        self.update_risk(now, now_ms);
    }

    /// The federation key is now `holders` (empty: none), of threshold `threshold`; the
    /// timer starts again.
    pub fn key_changed(
        &mut self,
        now: Instant,
        now_ms: u64,
        holders: Vec<String>,
        threshold: Option<u32>,
    ) {
        if holders != self.holders {
            self.outside_told.clear();
        }
        self.holders = holders;
        self.threshold = threshold;
        self.at_risk_since = None;
        self.waits_told = None;
        self.update_risk(now, now_ms);
    }

    /// The holders of the current key not connected, and since when.
    pub fn unreachable(&self) -> Vec<Away> {
        self.holders
            .iter()
            .filter(|p| !self.connected.contains(*p))
            .map(|p| Away {
                partner: p.clone(),
                since_unix_ms: self.left.get(p).map_or(self.started.1, |(_, ms)| *ms),
            })
            .collect()
    }

    /// What the rule says at `now`, when the new key would be made by `candidates`
    /// (the connected partners, less the excluded, at most the committee's limit) and
    /// needs at least `needed` of them.
    pub fn verdict(&mut self, now: Instant, candidates: &[String], needed: usize) -> Verdict {
        let Some((since, _)) = self.at_risk_since else {
            return Verdict::Keep;
        };
        let waited = now.saturating_duration_since(since);
        if self.rekey_after.is_zero() || waited < self.rekey_after {
            return Verdict::Keep;
        }
        let reachable = self.reachable();
        // Every candidate is connected. An N-of-N key stops every round while a
        // single holder is away, so a key of the candidates helps whatever its
        // size; a t-of-N key that still opens sums is worth replacing only by a
        // larger committee (one of the reachable holders alone would soon be at
        // risk again, and re-keyed without end).
        let helps = match self.threshold {
            None => true,
            Some(_) => candidates.len() > reachable,
        };
        if helps && candidates.len() >= needed {
            return Verdict::Rekey(RekeyPlan {
                holders: self.holders.clone(),
                unreachable: self.unreachable(),
                reachable,
                for_secs: waited.as_secs(),
                candidates: candidates.to_vec(),
            });
        }
        if self
            .waits_told
            .is_some_and(|t| now.saturating_duration_since(t) < self.rekey_after)
        {
            return Verdict::Keep;
        }
        self.waits_told = Some(now);
        let unreachable: Vec<String> = self.unreachable().into_iter().map(|a| a.partner).collect();
        let short = if candidates.len() < needed {
            format!("fewer than the {needed} a key needs")
        } else {
            format!("not more than the {reachable} holders still reachable")
        };
        Verdict::Waits(format!(
            "only {reachable} of the {} holders of the federation key are reachable (unreachable: \
             {unreachable:?}) for {} s, but a new key would be made by {} partner(s) \
             ({candidates:?}), {short}: no automatic re-key until more partners connect",
            self.holders.len(),
            waited.as_secs(),
            candidates.len(),
        ))
    }

    /// Connected partners outside the current key not named before (for this key).
    pub fn newly_outside(&mut self) -> Vec<String> {
        if self.holders.is_empty() {
            return Vec::new();
        }
        let outside: Vec<String> = self
            .connected
            .iter()
            .filter(|p| !self.holders.contains(*p) && !self.outside_told.contains(*p))
            .cloned()
            .collect();
        self.outside_told.extend(outside.iter().cloned());
        outside
    }

    /// A decryption stage ended as `snapshot` shows.
    pub fn stage_ended(&mut self, snapshot: DecryptionSnapshot) {
        self.pending
            .retain(|s| s.round == snapshot.round && s.attempt == snapshot.attempt);
        self.pending.push(snapshot);
    }

    /// The decryption of `round`'s attempt `attempt` under a key of `holders` ended
    /// (`failure`: why it failed): the record of who answered, kept.
    pub fn decryption_ended(
        &mut self,
        now_ms: u64,
        holders: &[String],
        round: u64,
        attempt: u64,
        failure: Option<&DecryptionFailed>,
    ) -> DecryptionRecord {
        let stages: Vec<DecryptionSnapshot> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|s| s.round == round && s.attempt == attempt)
            .collect();
        let mut asked: Vec<String> = Vec::new();
        let mut failed: Vec<Unanswered> = Vec::new();
        for s in &stages {
            for p in &s.asked {
                if !asked.contains(p) {
                    asked.push(p.clone());
                }
            }
            if let Some((p, why)) = &s.failed
                && !failed.iter().any(|f| &f.partner == p)
            {
                failed.push(Unanswered {
                    partner: p.clone(),
                    reason: why.clone(),
                });
            }
        }
        let answered: Vec<String> = stages
            .last()
            .map(|s| s.answered.clone())
            .unwrap_or_default();
        if let Some(DecryptionFailed::Missing { what, from }) = failure {
            for p in from {
                if asked.contains(p)
                    && !answered.contains(p)
                    && !failed.iter().any(|f| &f.partner == p)
                {
                    failed.push(Unanswered {
                        partner: p.clone(),
                        reason: format!("no {what} by the deadline"),
                    });
                }
            }
        }
        let mut stopped: Vec<String> = asked
            .iter()
            .filter(|p| !answered.contains(p) && !failed.iter().any(|f| &f.partner == *p))
            .cloned()
            .collect();
        let mut away: Vec<String> = holders
            .iter()
            .filter(|p| !asked.contains(p))
            .cloned()
            .collect();
        // N-of-N with a holder away: nobody was asked; the others were to be.
        if let (true, Some(DecryptionFailed::Absent { absent, .. })) = (stages.is_empty(), failure)
        {
            (away, stopped) = holders.iter().cloned().partition(|p| absent.contains(p));
        }
        for p in &answered {
            self.last_answered.insert(p.clone(), round);
        }
        let record = DecryptionRecord {
            round,
            attempt,
            at_unix_ms: now_ms,
            decrypted: failure.is_none(),
            reason: failure.map(|f| f.to_string()),
            holders: holders.to_vec(),
            threshold: self.threshold.map_or(holders.len(), |t| t as usize),
            asked,
            answered,
            failed,
            stopped,
            away,
        };
        if self.decryptions.len() == DECRYPTIONS_KEPT {
            self.decryptions.pop_front();
        }
        self.decryptions.push_back(record.clone());
        record
    }

    /// An automatic re-key started.
    pub fn rekeyed(&mut self, record: RekeyRecord) {
        if self.rekeys.len() == REKEYS_KEPT {
            self.rekeys.pop_front();
        }
        self.rekeys.push_back(record);
    }

    /// What the console shows.
    pub fn view(&self, now: Instant, now_ms: u64) -> KeyHolderView {
        let rows = self
            .holders
            .iter()
            .map(|p| HolderRow {
                partner: p.clone(),
                connected: self.connected.contains(p),
                away_since_unix_ms: (!self.connected.contains(p))
                    .then(|| self.left.get(p).map_or(self.started.1, |(_, ms)| *ms)),
                last_answered_round: self.last_answered.get(p).copied(),
            })
            .collect();
        let at_risk_since = self.at_risk_since.map(|(_, ms)| ms);
        let rekey_in_secs = self
            .at_risk_since
            .filter(|_| !self.rekey_after.is_zero())
            .map(|(since, _)| {
                self.rekey_after
                    .saturating_sub(now.saturating_duration_since(since))
                    .as_secs()
            });
        KeyHolderView {
            threshold: (!self.holders.is_empty())
                .then(|| self.threshold.map_or(self.holders.len(), |t| t as usize)),
            connected: self.reachable(),
            holders: rows,
            outside: self
                .connected
                .iter()
                .filter(|p| !self.holders.is_empty() && !self.holders.contains(*p))
                .cloned()
                .collect(),
            rekey_after_secs: self.rekey_after.as_secs(),
            at_risk_since_unix_ms: at_risk_since,
            rekey_in_secs,
            decryptions: self.decryptions.iter().rev().cloned().collect(),
            rekeys: self.rekeys.iter().rev().cloned().collect(),
            as_of_unix_ms: now_ms,
        }
    }
}

/// One key holder, for the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderRow {
    /// The key holder.
    pub partner: String,
    /// Whether it has a session now.
    pub connected: bool,
    /// Since when it has none, milliseconds since the Unix epoch.
    pub away_since_unix_ms: Option<u64>,
    /// The last round whose decryption its share went into (since the coordinator started).
    pub last_answered_round: Option<u64>,
}

/// The key holders' state, for the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyHolderView {
    /// Shares that open a sum (t, or every holder); none without a key.
    pub threshold: Option<usize>,
    /// Holders connected now.
    pub connected: usize,
    /// Every holder of the current key.
    pub holders: Vec<HolderRow>,
    /// Connected partners outside the current key: they do not train until the next key.
    pub outside: Vec<String>,
    /// `[keys] rekey_after_s` (0: no automatic re-key).
    pub rekey_after_secs: u64,
    /// Since when the reachable holders are too few (fewer than t + 1, or than all).
    pub at_risk_since_unix_ms: Option<u64>,
    /// Seconds until an automatic re-key is considered, while they are.
    pub rekey_in_secs: Option<u64>,
    /// The latest decryptions, the latest first.
    pub decryptions: Vec<DecryptionRecord>,
    /// The latest automatic re-keys, the latest first.
    pub rekeys: Vec<RekeyRecord>,
    /// When this was taken, milliseconds since the Unix epoch.
    pub as_of_unix_ms: u64,
}

/// The [`Book`] behind a lock, on the wall clock; kept in the hub.
#[derive(Debug)]
pub struct KeyHolders {
    book: Mutex<Book>,
}

impl Default for KeyHolders {
    fn default() -> Self {
        KeyHolders {
            book: Mutex::new(Book::new(
                Instant::now(),
                now_ms(),
                Duration::from_secs(crate::config::DEFAULT_REKEY_AFTER_S),
            )),
        }
    }
}

impl KeyHolders {
    /// Sets `[keys] rekey_after_s` (zero: never).
    pub fn set_rekey_after(&self, after: Duration) {
        lock(&self.book).rekey_after = after;
    }

    /// The partners connected now; the key-holder gauges follow.
    pub fn presence<'a>(&self, connected: impl Iterator<Item = &'a String>, t: &Telemetry) {
        let mut book = lock(&self.book);
        book.presence(Instant::now(), now_ms(), connected.cloned().collect());
        t.key_holders(book.holders.len(), book.reachable(), book.threshold);
    }

    /// The federation key is now `holders` (empty: none).
    pub fn key_changed(&self, holders: Vec<String>, threshold: Option<u32>, t: &Telemetry) {
        let mut book = lock(&self.book);
        book.key_changed(Instant::now(), now_ms(), holders, threshold);
        t.key_holders(book.holders.len(), book.reachable(), book.threshold);
    }

    /// A decryption stage ended.
    pub fn stage_ended(&self, d: &Decryption) {
        lock(&self.book).stage_ended(DecryptionSnapshot::of(d));
    }

    /// The decryption of `round` (attempt `attempt`) under a key of `holders` ended.
    pub fn decryption_ended(
        &self,
        holders: &[String],
        round: u64,
        attempt: u64,
        failure: Option<&DecryptionFailed>,
    ) -> DecryptionRecord {
        lock(&self.book).decryption_ended(now_ms(), holders, round, attempt, failure)
    }

    /// What the timing rule says now ([`Book::verdict`]).
    pub fn verdict(&self, candidates: &[String], needed: usize) -> Verdict {
        lock(&self.book).verdict(Instant::now(), candidates, needed)
    }

    /// Connected partners outside the current key, not named before.
    pub fn newly_outside(&self) -> Vec<String> {
        lock(&self.book).newly_outside()
    }

    /// An automatic re-key started.
    pub fn rekeyed(&self, record: RekeyRecord) {
        lock(&self.book).rekeyed(record);
    }

    /// What the console shows.
    pub fn view(&self) -> KeyHolderView {
        lock(&self.book).view(Instant::now(), now_ms())
    }
}

/// Records and reports the end of the decryption of `round` under a key of `holders`
/// (`failure`: why it failed): the record is kept for the console, counted in the
/// metrics, and logged.
pub fn decryption_ended(
    hub: &crate::hub::Hub,
    holders: &[String],
    round: u64,
    failure: Option<&DecryptionFailed>,
) {
    let record = hub
        .key_holders
        .decryption_ended(holders, round, hub.attempt(), failure);
    hub.telemetry.key_holder_decryption(&record);
    tracing::info!(
        round,
        answered = ?record.answered,
        away = ?record.away,
        "round {round}'s sum {}",
        record.summary()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn at_risk_is_one_departure_from_stopping() {
        // 3-of-5: four reachable holders survive one departure; three do not.
        assert!(!at_risk(5, 4, Some(3)));
        assert!(at_risk(5, 3, Some(3)));
        assert!(at_risk(3, 3, Some(3)));
        // N-of-N: every holder is needed.
        assert!(!at_risk(4, 4, None));
        assert!(at_risk(4, 3, None));
    }

    #[test]
    fn a_t_of_n_key_is_renewed_only_after_the_reachable_holders_stayed_too_few_for_the_whole_time()
    {
        let t0 = Instant::now();
        let mut b = Book::new(t0, 1_000, S(10));
        b.presence(t0, 1_000, set(&["a", "b", "c", "d", "e"]));
        b.key_changed(t0, 1_000, names(&["a", "b", "c", "d"]), Some(3));
        let candidates = names(&["a", "b", "c", "e"]);
        assert_eq!(b.verdict(t0 + S(60), &candidates, 3), Verdict::Keep);
        // d leaves: three holders reachable, one departure from stopping.
        b.presence(t0 + S(1), 2_000, set(&["a", "b", "c", "e"]));
        assert_eq!(b.verdict(t0 + S(10), &candidates, 3), Verdict::Keep);
        // d comes back for a moment: the interval starts again.
        b.presence(t0 + S(9), 9_000, set(&["a", "b", "c", "d", "e"]));
        b.presence(t0 + S(10), 10_000, set(&["a", "b", "c", "e"]));
        assert_eq!(b.verdict(t0 + S(19), &candidates, 3), Verdict::Keep);
        match b.verdict(t0 + S(20), &candidates, 3) {
            Verdict::Rekey(plan) => {
                assert_eq!(plan.reachable, 3);
                assert_eq!(plan.for_secs, 10);
                assert_eq!(plan.candidates, candidates);
                assert_eq!(
                    plan.unreachable,
                    vec![Away {
                        partner: "d".into(),
                        since_unix_ms: 10_000
                    }]
                );
            }
            other => panic!("expected a re-key, got {other:?}"),
        }
        // A new key starts the timer again.
        b.key_changed(t0 + S(21), 21_000, candidates.clone(), Some(3));
        assert_eq!(b.verdict(t0 + S(100), &candidates, 3), Verdict::Keep);
    }

    #[test]
    fn no_re_key_when_the_new_committee_would_not_be_larger_and_the_wait_is_said_once_per_interval()
    {
        let t0 = Instant::now();
        let mut b = Book::new(t0, 0, S(5));
        b.key_changed(t0, 0, names(&["a", "b", "c", "d", "e"]), Some(3));
        b.presence(t0, 0, set(&["a", "b", "c"]));
        let candidates = names(&["a", "b", "c"]);
        let Verdict::Waits(why) = b.verdict(t0 + S(5), &candidates, 3) else {
            panic!("expected a wait");
        };
        assert!(why.contains("only 3 of the 5 holders"), "{why}");
        assert!(why.contains("\"d\", \"e\""), "{why}");
        assert_eq!(b.verdict(t0 + S(9), &candidates, 3), Verdict::Keep);
        assert!(matches!(
            b.verdict(t0 + S(10), &candidates, 3),
            Verdict::Waits(_)
        ));
        // Too few candidates for the key's minimum: no re-key either.
        let more = names(&["a", "b", "c", "f"]);
        assert!(matches!(b.verdict(t0 + S(20), &more, 5), Verdict::Waits(_)));
        assert!(matches!(b.verdict(t0 + S(20), &more, 3), Verdict::Rekey(_)));
    }

    #[test]
    fn an_n_of_n_key_with_a_holder_gone_is_renewed_by_the_others_alone() {
        // N-of-N: with `c` gone no round can be opened; the two holders left
        // make a smaller key, which every one of them can open.
        let t0 = Instant::now();
        let mut b = Book::new(t0, 0, S(5));
        b.key_changed(t0, 0, names(&["a", "b", "c"]), None);
        b.presence(t0, 0, set(&["a", "b"]));
        let left = names(&["a", "b"]);
        assert_eq!(b.verdict(t0 + S(4), &left, 2), Verdict::Keep);
        match b.verdict(t0 + S(5), &left, 2) {
            Verdict::Rekey(plan) => {
                assert_eq!(plan.reachable, 2);
                assert_eq!(plan.candidates, left);
            }
            other => panic!("expected a re-key, got {other:?}"),
        }
        // Fewer than the key's minimum (e.g. min_partners = 3): it waits.
        assert!(matches!(b.verdict(t0 + S(5), &left, 3), Verdict::Waits(_)));
    }

    #[test]
    fn an_n_of_n_key_is_at_risk_with_any_holder_away_and_zero_disables_the_re_key() {
        let t0 = Instant::now();
        let mut b = Book::new(t0, 0, S(0));
        b.key_changed(t0, 0, names(&["a", "b", "c"]), None);
        b.presence(t0, 0, set(&["a", "b", "d", "e"]));
        assert!(b.at_risk_since.is_some());
        assert_eq!(
            b.verdict(t0 + S(10_000), &names(&["a", "b", "d", "e"]), 3),
            Verdict::Keep
        );
        b.rekey_after = S(1);
        assert!(matches!(
            b.verdict(t0 + S(1), &names(&["a", "b", "d", "e"]), 3),
            Verdict::Rekey(_)
        ));
        // Every holder back: not at risk.
        b.presence(t0 + S(2), 0, set(&["a", "b", "c"]));
        assert_eq!(
            b.verdict(t0 + S(100), &names(&["a", "b", "c", "d"]), 3),
            Verdict::Keep
        );
    }

    #[test]
    fn partners_outside_the_key_are_named_once_per_key() {
        let t0 = Instant::now();
        let mut b = Book::new(t0, 0, S(5));
        b.key_changed(t0, 0, names(&["a", "b"]), None);
        b.presence(t0, 0, set(&["a", "b", "c"]));
        assert_eq!(b.newly_outside(), names(&["c"]));
        assert!(b.newly_outside().is_empty());
        b.key_changed(t0, 0, names(&["a", "c"]), None);
        b.presence(t0, 0, set(&["a", "b", "c"]));
        assert_eq!(b.newly_outside(), names(&["b"]));
    }

    fn snapshot(
        asked: &[&str],
        answered: &[&str],
        failed: Option<(&str, &str)>,
    ) -> DecryptionSnapshot {
        DecryptionSnapshot {
            round: 4,
            attempt: 1,
            asked: names(asked),
            answered: names(answered),
            failed: failed.map(|(p, w)| (p.to_string(), w.to_string())),
        }
    }

    #[test]
    fn a_decryption_record_says_who_answered_failed_stopped_and_was_away() {
        let t0 = Instant::now();
        let mut b = Book::new(t0, 0, S(5));
        b.key_changed(t0, 0, names(&["a", "b", "c", "d", "e"]), Some(3));
        let holders = names(&["a", "b", "c", "d", "e"]);
        b.stage_ended(snapshot(
            &["a", "b", "c", "d"],
            &["a"],
            Some(("d", "disconnected during decryption")),
        ));
        let failure = DecryptionFailed::KeyHolder("key holder `d`: disconnected".into());
        let r = b.decryption_ended(7, &holders, 4, 1, Some(&failure));
        assert!(!r.decrypted);
        assert_eq!(r.threshold, 3);
        assert_eq!(r.answered, names(&["a"]));
        assert_eq!(r.stopped, names(&["b", "c"]));
        assert_eq!(r.away, names(&["e"]));
        assert_eq!(
            r.failed,
            vec![Unanswered {
                partner: "d".into(),
                reason: "disconnected during decryption".into()
            }]
        );
        let outcomes = r.outcomes();
        assert_eq!(outcomes[0], ("a", HolderOutcome::Answered));
        assert_eq!(outcomes[1], ("b", HolderOutcome::Stopped));
        assert_eq!(outcomes[3], ("d", HolderOutcome::Failed));
        assert_eq!(outcomes[4], ("e", HolderOutcome::Absent));
        assert_eq!(
            r.summary(),
            "not decrypted by a; asked but did not answer: d (disconnected during decryption), \
             b (stopped), c (stopped); away: e"
        );
        // The next attempt opens the sum with three holders.
        b.stage_ended(DecryptionSnapshot {
            attempt: 2,
            ..snapshot(&["a", "b", "c"], &["a", "b", "c"], None)
        });
        let r = b.decryption_ended(8, &holders, 4, 2, None);
        assert!(r.decrypted);
        assert_eq!(
            r.summary(),
            "decrypted by a, b, c; asked but did not answer: none; away: d, e"
        );
        // Missing answers at the deadline are failures of those named.
        b.stage_ended(snapshot(&["a", "b", "c"], &[], None));
        let missing = DecryptionFailed::Missing {
            what: "challenge seeds",
            from: names(&["c"]),
        };
        let r = b.decryption_ended(9, &holders, 4, 1, Some(&missing));
        assert_eq!(r.failed[0].partner, "c");
        assert_eq!(r.failed[0].reason, "no challenge seeds by the deadline");
        assert_eq!(r.stopped, names(&["a", "b"]));
        // The view keeps the latest first and each holder's last answered round.
        let view = b.view(t0, 10);
        assert_eq!(view.decryptions.len(), 3);
        assert_eq!(view.decryptions[0].at_unix_ms, 9);
        assert_eq!(view.holders[0].last_answered_round, Some(4));
        assert_eq!(view.holders[3].last_answered_round, None);
    }

    #[test]
    fn an_n_of_n_decryption_that_cannot_start_names_the_absent_holders() {
        let mut b = Book::new(Instant::now(), 0, S(5));
        let holders = names(&["a", "b"]);
        let failure = DecryptionFailed::Absent {
            absent: names(&["b"]),
            holders: 2,
        };
        let r = b.decryption_ended(1, &holders, 2, 1, Some(&failure));
        assert!(r.asked.is_empty());
        assert_eq!(r.away, names(&["b"]));
        assert_eq!(r.stopped, names(&["a"]));
        assert!(r.reason.unwrap().contains("not connected"));
    }
}
