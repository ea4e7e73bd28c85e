//! Integrity check of a ledger: index continuity, hash chain, signatures, and a known head.

use std::fmt;
use std::str::FromStr;

use crate::entry::{GENESIS_PREV_HASH, LedgerEntry};
use crate::keys::Verifier;

/// A head the ledger is known to have reached, used to detect truncation.
///
/// Dropping entries from the end of a hash chain leaves a valid, shorter chain: it is only
/// detectable against a head recorded elsewhere. Two sources give one: a partner's own ledger
/// (its last entry's index and hash), and the signed head the coordinator publishes to the
/// partners each round. The check passes when the ledger *contains* the head; entries appended
/// after it are fine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedHead {
    /// The ledger must reach at least this index (i.e. hold at least `index + 1` entries).
    LastIndex(u64),
    /// The ledger must contain an entry with this hash.
    Hash([u8; 32]),
    /// The entry at `index` must exist and have this hash.
    Entry {
        /// Its index.
        index: u64,
        /// Its hash.
        hash: [u8; 32],
    },
}

impl From<&LedgerEntry> for ExpectedHead {
    /// The head an entry establishes: its index and hash. The last entry of a ledger, with its
    /// signature, is the signed head to publish after each round.
    fn from(entry: &LedgerEntry) -> Self {
        Self::Entry {
            index: entry.index,
            hash: entry.hash,
        }
    }
}

impl fmt::Display for ExpectedHead {
    /// Writes the form [`ExpectedHead::from_str`] reads: `INDEX`, `HASH` or `INDEX:HASH`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LastIndex(index) => write!(f, "{index}"),
            Self::Hash(hash) => write!(f, "{}", hex::encode(hash)),
            Self::Entry { index, hash } => write!(f, "{index}:{}", hex::encode(hash)),
        }
    }
}

impl FromStr for ExpectedHead {
    type Err = String;

    /// Parses `INDEX`, `HASH` (64 hex digits) or `INDEX:HASH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse_hash = |h: &str| -> Result<[u8; 32], String> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h.trim(), &mut out)
                .map_err(|e| format!("head hash {h:?} is not 64 hex digits: {e}"))?;
            Ok(out)
        };
        let parse_index = |i: &str| -> Result<u64, String> {
            i.trim()
                .parse()
                .map_err(|e| format!("head index {i:?} is not a number: {e}"))
        };
        let s = s.trim();
        if let Some((i, h)) = s.split_once(':') {
            Ok(Self::Entry {
                index: parse_index(i)?,
                hash: parse_hash(h)?,
            })
        } else if s.len() == 64 {
            Ok(Self::Hash(parse_hash(s)?))
        } else {
            Ok(Self::LastIndex(parse_index(s)?))
        }
    }
}

/// What is wrong with the first bad entry.
#[derive(Clone, Debug, PartialEq)]
pub enum ProblemKind {
    /// The stored hash does not match the entry's contents: a field was edited.
    Edited,
    /// The hash matches but the signature does not verify with the given key: the entry was
    /// rewritten (and re-hashed) by someone else, or signed by another key.
    BadSignature,
    /// Entries are missing: the index jumps from `first_missing - 1` to
    /// `first_missing + count`.
    Removed {
        /// The first missing index.
        first_missing: u64,
        /// How many consecutive indices are missing.
        count: u64,
    },
    /// An entry appears out of order: `found_index` stands where `expected_index` should, and
    /// `expected_index` appears later.
    Reordered {
        /// The index that belongs at this position.
        expected_index: u64,
        /// The index found there.
        found_index: u64,
    },
    /// An index that already appeared earlier appears again.
    Duplicate {
        /// The repeated index.
        index: u64,
    },
    /// `prev_hash` does not match the previous entry's hash (or, for index 0, is not all
    /// zeros): an entry was replaced by another validly signed one, or removed and the chain
    /// re-indexed.
    ChainBroken,
    /// The ledger ends before the expected head.
    Truncated {
        /// The index the ledger should reach.
        expected_last_index: u64,
        /// The last index it has (`None` when empty).
        found_last_index: Option<u64>,
    },
    /// The entry at the expected head's index has a different hash: the ledger was rewritten
    /// (or forked) since that head was recorded.
    HeadMismatch {
        /// The expected hash.
        expected_hash: [u8; 32],
        /// The hash found.
        found_hash: [u8; 32],
    },
    /// No entry has the expected head hash: the ledger was truncated or rewritten.
    HeadNotFound {
        /// The expected hash.
        expected_hash: [u8; 32],
    },
}

/// The first bad entry of a ledger.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Position in the checked slice where the problem shows (`entries.len()` for truncation).
    pub position: usize,
    /// The ledger index concerned: the bad entry's own index, the first missing index, or the
    /// index expected at `position`.
    pub index: u64,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (index, position) = (self.index, self.position);
        match &self.kind {
            ProblemKind::Edited => write!(
                f,
                "entry {index} was edited: its stored hash does not match its contents"
            ),
            ProblemKind::BadSignature => write!(
                f,
                "entry {index} has an invalid signature: it was rewritten or signed by another key"
            ),
            ProblemKind::Removed {
                first_missing,
                count,
            } => write!(
                f,
                "entries removed: {count} entr{} missing starting at index {first_missing} \
                 (position {position})",
                if *count == 1 { "y" } else { "ies" }
            ),
            ProblemKind::Reordered {
                expected_index,
                found_index,
            } => write!(
                f,
                "entries reordered: entry {found_index} stands where entry {expected_index} \
                 belongs (position {position})"
            ),
            ProblemKind::Duplicate { index } => {
                write!(f, "entry {index} appears twice (position {position})")
            }
            ProblemKind::ChainBroken => write!(
                f,
                "hash chain broken at entry {index}: prev_hash does not match the previous \
                 entry — an entry was replaced or removed"
            ),
            ProblemKind::Truncated {
                expected_last_index,
                found_last_index,
            } => match found_last_index {
                Some(found) => write!(
                    f,
                    "ledger truncated: it ends at entry {found}, the known head is entry \
                     {expected_last_index}"
                ),
                None => write!(
                    f,
                    "ledger truncated: it is empty, the known head is entry {expected_last_index}"
                ),
            },
            ProblemKind::HeadMismatch {
                expected_hash,
                found_hash,
            } => write!(
                f,
                "entry {index} has hash {} but the known head says {}: the ledger was \
                 rewritten since",
                hex::encode(found_hash),
                hex::encode(expected_hash)
            ),
            ProblemKind::HeadNotFound { expected_hash } => write!(
                f,
                "no entry has the known head hash {}: the ledger was truncated or rewritten",
                hex::encode(expected_hash)
            ),
        }
    }
}

/// The outcome of [`verify`] / [`verify_with_head`].
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    /// Number of entries given.
    pub entries: usize,
    /// Number of leading entries that passed every check.
    pub valid_entries: usize,
    /// Index and hash of the last entry that passed every check.
    pub valid_head: Option<(u64, [u8; 32])>,
    /// SHA-256 fingerprint (hex) of the public key signatures were checked against.
    pub key_fingerprint: String,
    /// The first problem found, if any.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// Whether the ledger passed every check.
    pub fn is_valid(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => {
                write!(
                    f,
                    "OK: {} entries, indices contiguous, hash chain and signatures valid \
                     (key sha256 {})",
                    self.entries, self.key_fingerprint
                )?;
                if let Some((index, hash)) = self.valid_head {
                    write!(f, "; head {index}:{}", hex::encode(hash))?;
                }
                Ok(())
            }
            Some(problem) => write!(
                f,
                "FAILED: {problem}; {} of {} entries verified before it (key sha256 {})",
                self.valid_entries, self.entries, self.key_fingerprint
            ),
        }
    }
}

/// Checks a whole ledger (from index 0): index continuity, each entry's hash, each signature,
/// and the hash chain. Reports the first bad entry.
///
/// Checks per position `p`, in this order: the index is `p` (else removed / reordered /
/// duplicate), the hash matches the contents (else edited), the signature verifies (else bad
/// signature), `prev_hash` is the previous entry's hash (else chain broken). A truncated tail
/// passes: use [`verify_with_head`] to detect it.
pub fn verify(entries: &[LedgerEntry], verifier: &Verifier) -> VerifyReport {
    verify_with_progress(entries, verifier, &mut |_| {})
}

/// [`verify`], calling `progress` with the number of entries checked so far after each
/// one (for a progress display on a large ledger).
pub fn verify_with_progress(
    entries: &[LedgerEntry],
    verifier: &Verifier,
    progress: &mut dyn FnMut(usize),
) -> VerifyReport {
    let mut report = VerifyReport {
        entries: entries.len(),
        valid_entries: 0,
        valid_head: None,
        key_fingerprint: verifier.fingerprint(),
        problem: None,
    };
    let mut prev_hash = GENESIS_PREV_HASH;
    for (position, entry) in entries.iter().enumerate() {
        let expected = position as u64;
        let kind = if entry.index != expected {
            Some(index_problem(entries, position, entry.index))
        } else if !entry.hash_matches() {
            Some(ProblemKind::Edited)
        } else if !verifier.verify_hash(&entry.hash, &entry.signature) {
            Some(ProblemKind::BadSignature)
        } else if entry.prev_hash != prev_hash {
            Some(ProblemKind::ChainBroken)
        } else {
            None
        };
        if let Some(kind) = kind {
            let index = match &kind {
                ProblemKind::Removed { first_missing, .. } => *first_missing,
                ProblemKind::Reordered { expected_index, .. } => *expected_index,
                _ => entry.index,
            };
            report.problem = Some(Problem {
                position,
                index,
                kind,
            });
            return report;
        }
        prev_hash = entry.hash;
        report.valid_entries = position + 1;
        report.valid_head = Some((entry.index, entry.hash));
        progress(position + 1);
    }
    report
}

/// Like [`verify`], and then checks that the ledger contains `head` (see [`ExpectedHead`]), which
/// detects truncation of the tail.
pub fn verify_with_head(
    entries: &[LedgerEntry],
    verifier: &Verifier,
    head: ExpectedHead,
) -> VerifyReport {
    let mut report = verify(entries, verifier);
    if report.problem.is_some() {
        return report;
    }
    let last = entries.last().map(|e| e.index);
    let truncated = |expected_last_index: u64| Problem {
        position: entries.len(),
        index: expected_last_index,
        kind: ProblemKind::Truncated {
            expected_last_index,
            found_last_index: last,
        },
    };
    // After `verify`, entries[i].index == i for every i.
    let problem = match head {
        ExpectedHead::LastIndex(index) => (entries.len() as u64 <= index).then(|| truncated(index)),
        ExpectedHead::Entry { index, hash } => {
            match usize::try_from(index).ok().and_then(|i| entries.get(i)) {
                None => Some(truncated(index)),
                Some(entry) if entry.hash != hash => Some(Problem {
                    position: index as usize,
                    index,
                    kind: ProblemKind::HeadMismatch {
                        expected_hash: hash,
                        found_hash: entry.hash,
                    },
                }),
                Some(_) => None,
            }
        }
        ExpectedHead::Hash(hash) => {
            if entries.iter().any(|e| e.hash == hash) {
                None
            } else {
                Some(Problem {
                    position: entries.len(),
                    index: last.map_or(0, |l| l.saturating_add(1)),
                    kind: ProblemKind::HeadNotFound {
                        expected_hash: hash,
                    },
                })
            }
        }
    };
    report.problem = problem;
    report
}

/// Classifies an index that differs from its position `position`.
fn index_problem(entries: &[LedgerEntry], position: usize, found: u64) -> ProblemKind {
    let expected = position as u64;
    if found < expected {
        // Every index below `expected` already appeared at its own position.
        ProblemKind::Duplicate { index: found }
    } else if entries[position + 1..].iter().any(|e| e.index == expected) {
        ProblemKind::Reordered {
            expected_index: expected,
            found_index: found,
        }
    } else {
        ProblemKind::Removed {
            first_missing: expected,
            count: found - expected,
        }
    }
}
