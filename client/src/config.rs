//! The partner agent's configuration file.
//!
//! ```toml
//! coordinator = "https://fl.operator.example:7443"
//! server_name = "fl.operator.example"   # must be in the coordinator certificate
//! data = "/srv/consortia/customers.csv"
//!
//! state_dir = "/var/lib/consortia/agent"   # own privacy ledger and key share (back it up)
//!
//! [privacy]                  # the partner's own budget (optional)
//! epsilon = 3.0
//! delta = 1e-5
//!
//! [policy]                   # what this partner accepts (safe defaults: see `policy`)
//! require_secure_aggregation = true
//! min_contributors = 3
//!
//! [tls]
//! ca_cert = "/etc/consortia/ca.pem"
//! cert = "/etc/consortia/acme-bank.pem"
//! key = "/etc/consortia/acme-bank.key"
//!
//! [observability]                     # optional; off by default
//! metrics_listen = "127.0.0.1:9465"   # Prometheus metrics at GET /metrics
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use consortia_observability::ObservabilityConfig;

use crate::AgentError;
use crate::policy::Policy;

/// The agent's certificate material.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTls {
    /// Federation CA certificate (PEM), to authenticate the coordinator.
    pub ca_cert: PathBuf,
    /// This partner's certificate (PEM): its common name is the partner's identity.
    pub cert: PathBuf,
    /// This partner's private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

/// Everything a partner configures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Coordinator URL, `https://host:port`.
    pub coordinator: String,
    /// Name to verify in the coordinator's certificate (defaults to the URL's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The partner's private CSV file.
    pub data: PathBuf,
    /// TLS material.
    pub tls: AgentTls,
    /// Give up after this many failed connection attempts in a row (default: never).
    #[serde(default)]
    pub max_connect_attempts: Option<u32>,
    /// Directory of the agent's own state: its privacy ledger and its share of
    /// the federation key (default `consortia-agent-state`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The partner's own privacy budget. The agent declines any round that
    /// would exceed it, whatever the coordinator says. Without it the task's
    /// budget is used.
    #[serde(default)]
    pub privacy: Option<OwnBudget>,
    /// The name the partner gives its data file in its own ledger. The
    /// lifetime privacy budget covers this dataset (its name and the SHA-256
    /// of its contents) across every task; default: the file's name.
    #[serde(default)]
    pub dataset_name: Option<String>,
    /// What this partner will train, spend and decrypt, whatever the
    /// coordinator asks (`[policy]`; safe defaults, see [`crate::policy`]).
    #[serde(default)]
    pub policy: Policy,
    /// `[observability]`: where to serve Prometheus metrics (off by default).
    #[serde(default)]
    pub observability: ObservabilityConfig,
}

/// A partner's own (ε, δ) budget for a task.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnBudget {
    /// ε over the whole task.
    pub epsilon: f64,
    /// δ of the budget.
    pub delta: f64,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("consortia-agent-state")
}

impl AgentConfig {
    /// Reads a configuration file; relative paths are taken relative to it.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        let mut cfg: AgentConfig = toml::from_str(&text).map_err(|e| AgentError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.policy
            .validate()
            .map_err(|message| AgentError::Config {
                path: path.to_path_buf(),
                message,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.data,
            &mut cfg.state_dir,
            &mut cfg.tls.ca_cert,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// The name the coordinator's certificate must carry.
    pub fn server_name(&self) -> String {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        let rest = self
            .coordinator
            .split("://")
            .nth(1)
            .unwrap_or(&self.coordinator);
        let host_port = rest.split('/').next().unwrap_or(rest);
        match host_port.rsplit_once(':') {
            Some((h, _)) => h.trim_matches(['[', ']']).to_string(),
            None => host_port.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_defaults_to_the_url_host() {
        let cfg = AgentConfig {
            coordinator: "https://fl.example.org:7443".into(),
            server_name: None,
            data: "d.csv".into(),
            tls: AgentTls {
                ca_cert: "a".into(),
                cert: "b".into(),
                key: "c".into(),
            },
            max_connect_attempts: None,
            state_dir: "s".into(),
            privacy: None,
            dataset_name: None,
            policy: Policy::default(),
            observability: ObservabilityConfig::default(),
        };
        assert_eq!(cfg.server_name(), "fl.example.org");
    }

    #[test]
    fn metrics_are_off_unless_the_observability_table_asks() {
        let base = "coordinator = \"https://h:1\"\ndata = \"d.csv\"\n\
                    [tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        let off: AgentConfig = toml::from_str(base).unwrap();
        assert_eq!(off.observability.metrics_listen, None);
        let on: AgentConfig = toml::from_str(&format!(
            "{base}[observability]\nmetrics_listen = \"127.0.0.1:9465\"\n"
        ))
        .unwrap();
        let addr = on.observability.metrics_listen.unwrap();
        assert_eq!(addr, "127.0.0.1:9465".parse().unwrap());
    }
}
