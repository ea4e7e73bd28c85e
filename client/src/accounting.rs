//! The partner's own privacy accounting: its budget, its own signed ledger,
//! and the decision to decline a round — whatever the coordinator says.
//!
//! The spend of a round is appended to the partner's ledger (and flushed)
//! before the noised update leaves the partner, so a crash can only
//! over-count.

use std::time::{SystemTime, UNIX_EPOCH};

use consortia_ledger::book::{BookError, PrivacyBook};
use consortia_ledger::{Ledger, Signer};
use consortia_model::TaskSpec;
use consortia_privacy::dp::{Budget, PrivacySpec};

use crate::{AgentConfig, AgentError};

/// A partner's privacy state for one task.
pub struct PartnerPrivacy {
    /// The task's privacy settings.
    pub spec: PrivacySpec,
    book: PrivacyBook,
    ledger: Ledger,
    signer: Signer,
    partner: String,
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

impl PartnerPrivacy {
    /// Opens the partner's ledger in `cfg.state_dir/ledger` and replays its spend.
    pub fn open(
        cfg: &AgentConfig,
        spec: PrivacySpec,
        task: &str,
        partner: &str,
    ) -> Result<Self, AgentError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| AgentError::Config {
            path: cfg.state_dir.clone(),
            message: format!("cannot create the agent's state directory: {e}"),
        })?;
        let ledger = Ledger::open(cfg.state_dir.join("ledger")).map_err(ledger_err)?;
        let signer = Signer::from_pkcs8_pem_file(&cfg.tls.key).map_err(ledger_err)?;
        let own = match cfg.privacy {
            Some(b) => Some(Budget {
                epsilon: b.epsilon,
                delta: b.delta,
            }),
            None => {
                eprintln!(
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
        let book = PrivacyBook::new(spec.clone(), task, own, &entries)
            .map_err(|e| AgentError::Task(e.to_string()))?;
        Ok(PartnerPrivacy {
            spec,
            book,
            ledger,
            signer,
            partner: partner.to_string(),
        })
    }

    /// Charges `round` to the partner's own budget and ledger, or says why not.
    ///
    /// `Err` carries the reason to send the coordinator with a `Decline`.
    pub fn admit(&mut self, round: u64, rows: usize) -> Result<f64, String> {
        let quote = match self.book.quote(&self.partner, rows) {
            Ok(q) => q,
            Err(BookError::Overspent { budget, .. }) => {
                return Err(format!("our privacy budget (ε {budget}) is spent"));
            }
            Err(e) => return Err(e.to_string()),
        };
        if !quote.fits() {
            return Err(format!(
                "our privacy budget would go from ε {:.3} to ε {:.3}, over our ε {}",
                quote.spent, quote.after, quote.budget
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let record = self
            .book
            .charge(round, now, &[(self.partner.clone(), rows as u64)])
            .map_err(|e| e.to_string())?;
        self.ledger
            .append(record, &self.signer)
            .map_err(|e| format!("cannot write the privacy ledger: {e}"))?;
        Ok(quote.after)
    }
}
