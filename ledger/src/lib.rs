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
//! The crate does no privacy accounting itself: ε values are computed by the accountant and
//! recorded here as given.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod book;
pub mod entry;
mod error;
pub mod keys;
pub mod store;

pub use entry::{LedgerEntry, SpendRecord};
pub use error::LedgerError;
pub use keys::{Signer, Verifier};
pub use store::{Ledger, LedgerFile, load_entries};
