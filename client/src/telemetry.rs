//! The agent's Prometheus metrics: what this partner's agent did and what it cost,
//! served at `GET /metrics` on its own listener when `[observability] metrics_listen`
//! is set in `agent.toml` (off by default; see [`consortia_observability`]).
//!
//! | metric | type | meaning |
//! |--------|------|---------|
//! | `consortia_agent_rounds_total` | counter | rounds the coordinator asked this partner into |
//! | `consortia_agent_rounds_trained_total` | counter | rounds it sent an update in |
//! | `consortia_agent_rounds_declined_total{reason}` | counter | rounds it declined (`round`, `budget`) |
//! | `consortia_agent_training_duration_seconds` | histogram | local training per round |
//! | `consortia_agent_encryption_duration_seconds` | histogram | encoding and encrypting an update |
//! | `consortia_agent_partial_decryption_duration_seconds` | histogram | a key holder's partial decryption |
//! | `consortia_agent_epsilon_spent` | gauge | ε spent on its dataset, by its own ledger |
//! | `consortia_agent_epsilon_budget` | gauge | its own ε budget (or the task's) |

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use consortia_observability::prometheus_client::metrics::counter::Counter;
use consortia_observability::prometheus_client::metrics::family::Family;
use consortia_observability::prometheus_client::metrics::gauge::Gauge;
use consortia_observability::prometheus_client::metrics::histogram::Histogram;
use consortia_observability::prometheus_client::registry::{Registry, Unit};
use consortia_observability::{MetricsServer, ObservabilityConfig, seconds_buckets};
use consortia_proto::DeclineKind;

use crate::accounting::PartnerPrivacy;
use crate::{AgentConfig, AgentError};

/// A gauge of a real number.
type FloatGauge = Gauge<f64, AtomicU64>;

/// The agent's metrics. Cheap to clone: every clone counts into the same registry.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    rounds: Counter,
    rounds_trained: Counter,
    rounds_declined: Family<[(&'static str, &'static str); 1], Counter>,
    training: Histogram,
    encryption: Histogram,
    partial_decryption: Histogram,
    epsilon_spent: FloatGauge,
    epsilon_budget: FloatGauge,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// Every metric family of the agent, at zero.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("consortia_agent");
        let rounds = Counter::default();
        r.register(
            "rounds",
            "Rounds the coordinator asked this partner into",
            rounds.clone(),
        );
        let rounds_trained = Counter::default();
        r.register(
            "rounds_trained",
            "Rounds this partner sent an update in",
            rounds_trained.clone(),
        );
        let rounds_declined = Family::default();
        r.register(
            "rounds_declined",
            "Rounds this partner declined, by reason (round: its policy or a local failure; budget: its privacy budget or evaluation cap)",
            rounds_declined.clone(),
        );
        let timer = |r: &mut Registry, name: &str, help: &str| {
            let h = Histogram::new(seconds_buckets());
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
            h
        };
        let training = timer(
            &mut r,
            "training_duration",
            "Local training of one round's update on the partner's rows",
        );
        let encryption = timer(
            &mut r,
            "encryption_duration",
            "Encoding and encrypting one update under the federation key (secure aggregation)",
        );
        let partial_decryption = timer(
            &mut r,
            "partial_decryption_duration",
            "One partial decryption of a round's sum, as a key holder",
        );
        let epsilon_spent = FloatGauge::default();
        r.register(
            "epsilon_spent",
            "ε this partner has spent on its dataset, over every task, by its own privacy ledger",
            epsilon_spent.clone(),
        );
        let epsilon_budget = FloatGauge::default();
        r.register(
            "epsilon_budget",
            "This partner's ε budget (its own [privacy] budget, or the task's)",
            epsilon_budget.clone(),
        );
        Telemetry {
            inner: Arc::new(Inner {
                registry: Arc::new(r),
                rounds,
                rounds_trained,
                rounds_declined,
                training,
                encryption,
                partial_decryption,
                epsilon_spent,
                epsilon_budget,
            }),
        }
    }

    /// The registry, for encoding.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.inner.registry)
    }

    /// Starts the metrics listener when `cfg` asks for one; `None` when it does not.
    /// The listener stops when the returned server is dropped.
    pub async fn serve(
        &self,
        cfg: &ObservabilityConfig,
    ) -> Result<Option<MetricsServer>, AgentError> {
        let Some(addr) = cfg.metrics_listen else {
            return Ok(None);
        };
        consortia_observability::serve(addr, self.registry(), "agent")
            .await
            .map(Some)
            .map_err(|e| AgentError::Config {
                path: "[observability] metrics_listen".into(),
                message: format!("cannot listen for metrics on {addr}: {e}"),
            })
    }

    /// The coordinator asked this partner into a round.
    pub fn round_asked(&self) {
        self.inner.rounds.inc();
    }

    /// This partner sent its update for a round.
    pub fn trained(&self) {
        self.inner.rounds_trained.inc();
    }

    /// This partner declined a round (or, `kind` budget, the task).
    pub fn declined(&self, kind: DeclineKind) {
        let family = &self.inner.rounds_declined;
        family.get_or_create(&[("reason", kind.code())]).inc();
    }

    /// Runs `f` (local training), timing it.
    pub fn time_training<T>(&self, f: impl FnOnce() -> T) -> T {
        time(&self.inner.training, f)
    }

    /// Runs `f` (encoding and encrypting an update), timing it.
    pub fn time_encryption<T>(&self, f: impl FnOnce() -> T) -> T {
        time(&self.inner.encryption, f)
    }

    /// Runs `f` (a partial decryption), timing it.
    pub fn time_decryption<T>(&self, f: impl FnOnce() -> T) -> T {
        time(&self.inner.partial_decryption, f)
    }

    /// Sets ε spent and the budget of `partner` from its own privacy state, when the
    /// task has `[privacy]`.
    pub fn privacy(&self, privacy: Option<&PartnerPrivacy>, cfg: &AgentConfig, partner: &str) {
        let Some(p) = privacy else { return };
        let budget = cfg
            .privacy
            .map_or_else(|| p.spec.budget_for(partner).epsilon, |b| b.epsilon);
        self.inner.epsilon_budget.set(budget);
        if let Ok(spent) = p.spent() {
            self.inner.epsilon_spent.set(spent);
        }
    }
}

fn time<T>(h: &Histogram, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    h.observe(start.elapsed().as_secs_f64());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let t = Telemetry::new();
        t.round_asked();
        t.declined(DeclineKind::Budget);
        assert_eq!(t.time_training(|| 7), 7);
        let text = consortia_observability::encode(&t.registry(), false)
            .unwrap()
            .0;
        for line in [
            "consortia_agent_rounds_total 1",
            "consortia_agent_rounds_trained_total 0",
            "consortia_agent_rounds_declined_total{reason=\"budget\"} 1",
            "consortia_agent_training_duration_seconds_count 1",
            "consortia_agent_encryption_duration_seconds_count 0",
            "consortia_agent_partial_decryption_duration_seconds_count 0",
            "consortia_agent_epsilon_spent 0.0",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
    }
}
