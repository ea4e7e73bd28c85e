//! consortia-ledger: the tamper-evident privacy ledger of a consortium.
//!
//! Every round, before a noised result is released, the coordinator appends a [`SpendRecord`]
//! (what the round spent from each partner's privacy budget, and the parameters that determine
//! it) to an append-only ledger ([`Ledger`], a sled database). Each [`LedgerEntry`] is
//! hash-chained to the previous one and signed with ECDSA P-256 ([`Signer`]), so that removing,
//! reordering or editing entries is detectable by anyone holding the signer's certificate
//! ([`Verifier`]). Partners keep their own ledger of what they spent, and compliance teams
//! verify a ledger ([`audit::verify`]), report it ([`audit::report_table`],
//! [`audit::report_html`]) and reconcile a partner's copy with the coordinator's
//! ([`audit::compare`]).
//!
//! Each entry (format v2, [`entry`]) also stores the exact mechanism it charged: the DP events,
//! the noise placement, the adjacency, the randomness source, the dataset and the task's hash.
//! The [`book`] replays a partner's spend from those stored events — never from a task's current
//! settings — so changing a task's noise, or renaming it, cannot make past rounds look cheaper.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod book;
pub mod entry;
mod error;
pub mod keys;
pub mod store;

pub use entry::{
    Adjacency, ChargeDetails, DatasetId, LedgerEntry, Placement, SpendRecord, StoredEvent, rng_name,
};
pub use error::LedgerError;
pub use keys::{Signer, Verifier};
pub use store::{Ledger, LedgerFile, load_entries};
