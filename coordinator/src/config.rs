//! The coordinator's configuration file.
//!
//! ```toml
//! listen = "0.0.0.0:7443"
//! state_dir = "/var/lib/consortia/coordinator"
//! task = "/etc/consortia/churn-task.toml"
//!
//! [tls]
//! ca_cert = "/etc/consortia/pki/ca.pem"
//! cert = "/etc/consortia/pki/coordinator.pem"
//! key = "/etc/consortia/pki/coordinator.key"
//! crl = "/etc/consortia/pki/crl.pem"
//!
//! [observability]                       # optional; off by default
//! metrics_listen = "127.0.0.1:9464"     # Prometheus metrics at GET /metrics
//!
//! [console]                             # optional; off by default
//! listen = "127.0.0.1:7444"             # the web console (HTTPS, console certificates)
//!
//! [keys]                                # optional
//! rekey_after_s = 600                   # re-key when too few key holders stay reachable; 0: never
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use consortia_observability::ObservabilityConfig;

pub use crate::console::ConsoleConfig;

use crate::CoordinatorError;

/// Where the coordinator's certificate material lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Federation CA certificate (PEM): partners' certificates must chain to it.
    pub ca_cert: PathBuf,
    /// The coordinator's certificate (PEM).
    pub cert: PathBuf,
    /// The coordinator's private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
    /// Certificate revocation list (PEM), re-read when it changes or on SIGHUP.
    pub crl: PathBuf,
}

/// `rekey_after_s` when the configuration does not set it: ten minutes.
pub const DEFAULT_REKEY_AFTER_S: u64 = 600;

/// `[keys]`: the federation key's upkeep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Seconds the connected holders of the federation key may stay fewer than t + 1
    /// (a `key_threshold` key) or fewer than all of them (N-of-N) before the
    /// coordinator makes a new key, between rounds, with the partners connected then
    /// (only if they are more than the holders still reachable); 0 never re-keys for
    /// it. Default [`DEFAULT_REKEY_AFTER_S`].
    #[serde(default = "default_rekey_after_s")]
    pub rekey_after_s: u64,
}

fn default_rekey_after_s() -> u64 {
    DEFAULT_REKEY_AFTER_S
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            rekey_after_s: DEFAULT_REKEY_AFTER_S,
        }
    }
}

impl KeysConfig {
    /// `rekey_after_s` as a duration (zero: never).
    pub fn rekey_after(&self) -> Duration {
        Duration::from_secs(self.rekey_after_s)
    }
}

/// Everything the operator configures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address to listen on; port 0 picks a free port (see `addr_file`).
    pub listen: SocketAddr,
    /// Directory of the coordinator's sled database.
    pub state_dir: PathBuf,
    /// Task file (TOML). May be omitted on restart: the stored task is used.
    #[serde(default)]
    pub task: Option<PathBuf>,
    /// TLS material.
    pub tls: TlsFiles,
    /// When set, the bound address is written here once listening.
    #[serde(default)]
    pub addr_file: Option<PathBuf>,
    /// `[observability]`: where to serve Prometheus metrics (off by default).
    #[serde(default)]
    pub observability: ObservabilityConfig,
    /// `[console]`: where to serve the web console (off by default).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// `[keys]`: when the coordinator re-keys by itself.
    #[serde(default)]
    pub keys: KeysConfig,
}

impl CoordinatorConfig {
    /// Reads a configuration file; relative paths in it are taken relative to the file.
    pub fn load(path: &Path) -> Result<Self, CoordinatorError> {
        let text = std::fs::read_to_string(path).map_err(|e| CoordinatorError::Config {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        let mut cfg: CoordinatorConfig =
            toml::from_str(&text).map_err(|e| CoordinatorError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut cfg.state_dir);
        if let Some(t) = cfg.task.as_mut() {
            fix(t);
        }
        if let Some(a) = cfg.addr_file.as_mut() {
            fix(a);
        }
        fix(&mut cfg.tls.ca_cert);
        fix(&mut cfg.tls.cert);
        fix(&mut cfg.tls.key);
        fix(&mut cfg.tls.crl);
        Ok(cfg)
    }
}
