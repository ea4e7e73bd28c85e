//! Standardisation: every connected partner reports its features' sums and
//! sums of squares; merged, they give the federation-wide means and standard
//! deviations every partner scales its rows with. Asked again (with a new
//! request id) until at least `min_partners` usable reports arrive in time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use consortia_model::standardize::{FeatureStats, Standardizer};
use consortia_proto::{StatsReport, StatsRequest, server_message::Kind};

use super::{Ending, Phase, Progress, drive};
use crate::CoordinatorError;
use crate::accounting::Accounting;
use crate::hub::{Hub, Stage};
use crate::rejection::{Rejection, Subject};
use crate::report::now_ms;
use crate::retry::Attempts;
use crate::session::{Outbound, message};
use crate::store::{Store, StoredStandardizer};

/// Standardisation statistics being collected (the hub's
/// [`Stage::Standardisation`]).
#[derive(Debug)]
pub struct StatsCollector {
    request_id: u64,
    expected: BTreeSet<String>,
    received: BTreeMap<String, FeatureStats>,
    /// Partners that refused to send statistics, with their reasons.
    declined: BTreeMap<String, String>,
}

impl StatsCollector {
    /// Asks `expected` for the statistics of request `request_id`.
    pub fn new(request_id: u64, expected: BTreeSet<String>) -> Self {
        StatsCollector {
            request_id,
            expected,
            received: BTreeMap::new(),
            declined: BTreeMap::new(),
        }
    }

    /// Takes `partner`'s report for a schema of `features` features.
    pub fn add(
        &mut self,
        partner: &str,
        report: StatsReport,
        features: usize,
    ) -> Result<(), Rejection> {
        let subject = Subject::Statistics;
        if report.request_id != self.request_id || !self.expected.contains(partner) {
            return Err(Rejection::out_of_phase(
                subject,
                format!(
                    "feature statistics for request {} were not asked of you",
                    report.request_id
                ),
                format!("statistics for request {} if asked", self.request_id),
            ));
        }
        if report.sum.len() != features || report.sum_sq.len() != features {
            return Err(Rejection::invalid(
                subject,
                format!("{features} sums and sums of squares, one per feature of the schema"),
                format!(
                    "{} sums and {} sums of squares",
                    report.sum.len(),
                    report.sum_sq.len()
                ),
            ));
        }
        if report.count == 0
            || report
                .sum
                .iter()
                .chain(&report.sum_sq)
                .any(|v| !v.is_finite())
        {
            return Err(Rejection::invalid(
                subject,
                "statistics of at least one row, all finite",
                format!("{} rows, or a sum that is not finite", report.count),
            ));
        }
        self.received.insert(
            partner.to_string(),
            FeatureStats {
                count: report.count,
                sum: report.sum,
                sum_sq: report.sum_sq,
            },
        );
        Ok(())
    }

    /// `partner` refused to send statistics (`reason`): it is no longer waited for.
    pub fn decline(&mut self, partner: &str, reason: String) -> Result<(), Rejection> {
        if !self.expected.remove(partner) {
            return Err(Rejection::out_of_phase(
                Subject::Statistics,
                "no feature statistics were asked of you",
                "nothing",
            ));
        }
        self.declined.insert(partner.to_string(), reason);
        Ok(())
    }

    /// A partner that disconnected is no longer waited for.
    pub fn drop_partner(&mut self, partner: &str) {
        self.expected.remove(partner);
    }

    /// True once every partner asked (and still connected) has reported.
    pub fn complete(&self) -> bool {
        self.expected.iter().all(|p| self.received.contains_key(p))
    }

    /// The request being answered.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Reports received, by partner.
    pub fn received(&self) -> &BTreeMap<String, FeatureStats> {
        &self.received
    }
}

/// Waiting for the reports; ends with the collector (none if it was lost).
struct Gathering;

impl Phase for Gathering {
    type Output = Option<StatsCollector>;

    fn poll(&mut self, hub: &Hub) -> Progress {
        match &*hub.stage() {
            Stage::Standardisation(c) if c.complete() => Progress::Complete,
            Stage::Standardisation(_) => Progress::Waiting,
            _ => Progress::Failed,
        }
    }

    fn finish(self, hub: &Hub, _: Ending) -> Self::Output {
        match hub.end_stage() {
            Stage::Standardisation(c) => Some(c),
            _ => None,
        }
    }
}

/// The federation's standardisation: the stored one, or one agreed now.
/// Under `[privacy]`, the partners' data must suit the privacy settings
/// (δ against the smallest partner's rows), or the task stops.
pub async fn agreed(
    hub: &Hub,
    store: &Store,
    min: usize,
    deadline: Duration,
    max_attempts: u32,
    mut accounting: Option<&mut Accounting>,
) -> Result<StoredStandardizer, CoordinatorError> {
    if let Some(s) = store.standardizer()? {
        return Ok(s);
    }
    let (s, smallest) = agree(hub, min, deadline, max_attempts, accounting.as_deref_mut()).await?;
    // Under [privacy] the reports' means and variances are noisy, but their counts are
    // the partners' training-row counts, which every update publishes anyway (FedAvg
    // weight; recorded in both ledgers): δ is checked against the smallest of those.
    if let Some(acc) = accounting {
        acc.book
            .spec()
            .validate_for_rows(smallest as usize)
            .map_err(|e| {
                CoordinatorError::Stopped(format!(
                    "[privacy] does not suit the partners' data: {e}"
                ))
            })?;
    }
    store.put_standardizer(&s)?;
    Ok(s)
}

/// Agrees on the federation-wide standardisation; also returns the smallest
/// partner's row count. Under `[privacy]` every partner asked is first charged, in the
/// coordinator's ledger, for its one release of noised statistics
/// ([`Accounting::record_statistics`]; once per partner and task). Requests that
/// fail are repeated after a backoff, and `max_attempts` identical failures in a
/// row (partners refusing, say) stop the task with their reasons.
pub async fn agree(
    hub: &Hub,
    min: usize,
    deadline: Duration,
    max_attempts: u32,
    mut accounting: Option<&mut Accounting>,
) -> Result<(StoredStandardizer, u64), CoordinatorError> {
    let mut request_id = 0u64;
    let mut attempts = Attempts::new(max_attempts, deadline);
    loop {
        hub.wait_for_partners(min).await;
        request_id += 1;
        let expected: BTreeSet<String> = hub.connected().into_iter().collect();
        hub.begin(Stage::Standardisation(StatsCollector::new(
            request_id,
            expected.clone(),
        )));
        if let Some(acc) = accounting.as_deref_mut() {
            let asked: Vec<String> = expected.iter().cloned().collect();
            acc.record_statistics(now_ms(), &asked)?;
        }
        for p in &expected {
            hub.send_to(
                p,
                Outbound::Message(message(Kind::StatsRequest(StatsRequest { request_id }))),
            );
        }
        tracing::info!(
            phase = "standardisation",
            partners = expected.len(),
            "asking partners for feature statistics"
        );
        let Some(c) = drive(hub, Gathering, Instant::now() + deadline).await else {
            continue;
        };
        let why = match merge(&c, min) {
            Ok(agreed) => return Ok(agreed),
            Err(why) => why,
        };
        let pause = attempts.failed(0, "the request for feature statistics", &why)?;
        tracing::info!(
            attempt = attempts.failures(),
            "asking for feature statistics again in {} s",
            pause.as_secs_f64()
        );
        tokio::time::sleep(pause).await;
    }
}

/// The standardisation of the reports in `c`, and the smallest partner's row
/// count; why not (logged) when they are too few or unusable.
fn merge(c: &StatsCollector, min: usize) -> Result<(StoredStandardizer, u64), String> {
    if c.received.len() < min {
        tracing::warn!(
            received = c.received.len(),
            min,
            declined = ?c.declined,
            "too few partners sent feature statistics; asking again"
        );
        let mut why = format!("{} of the {min} reports it needs arrived", c.received.len());
        if !c.declined.is_empty() {
            let refusals: Vec<String> = c
                .declined
                .iter()
                .map(|(p, reason)| format!("`{p}`: {reason}"))
                .collect();
            why.push_str(&format!("; refused by {}", refusals.join("; ")));
        }
        let missing: Vec<&str> = c
            .expected
            .iter()
            .filter(|p| !c.received.contains_key(*p))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            why.push_str(&format!("; no answer from {}", missing.join(", ")));
        }
        return Err(why);
    }
    let mut merged: Option<FeatureStats> = None;
    let mut ok = true;
    for s in c.received.values() {
        match merged.as_mut() {
            None => merged = Some(s.clone()),
            Some(m) => ok &= m.merge(s).is_ok(),
        }
    }
    let merged = merged
        .filter(|_| ok)
        .ok_or_else(|| "the partners' feature statistics do not merge".to_string())?;
    let st = match Standardizer::from_stats(&merged) {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!("feature statistics unusable ({e}); asking again");
            return Err(format!("the feature statistics are unusable: {e}"));
        }
    };
    tracing::info!(
        partners = c.received.len(),
        rows = merged.count,
        "federation-wide standardisation agreed"
    );
    let smallest = c.received.values().map(|s| s.count).min().unwrap_or(0);
    Ok((
        StoredStandardizer {
            mean: st.mean().to_vec(),
            std: st.std().to_vec(),
        },
        smallest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TASK, hub_with, next_message};

    fn report(request_id: u64, n: usize, count: u64, value: f64) -> StatsReport {
        StatsReport {
            request_id,
            count,
            sum: vec![value * count as f64; n],
            sum_sq: vec![value * value * count as f64 + count as f64; n],
        }
    }

    async fn asked(inbox: &mut tokio::sync::mpsc::Receiver<Outbound>) -> u64 {
        match next_message(inbox).await {
            Kind::StatsRequest(r) => r.request_id,
            other => panic!("expected a statistics request, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reports_from_every_partner_agree_a_standardisation_and_too_few_ask_again() {
        let (hub, mut inbox) = hub_with(TASK, &["a", "b"]);
        let n = hub.task.schema.feature_count();
        let h = hub.clone();
        let running =
            tokio::spawn(async move { agree(&h, 2, Duration::from_millis(300), 10, None).await });
        assert_eq!(asked(inbox.get_mut("a").unwrap()).await, 1);
        assert_eq!(asked(inbox.get_mut("b").unwrap()).await, 1);
        // Only a reports in time: both are asked again, with a new request.
        hub.add_stats("a", report(1, n, 10, 1.0)).unwrap();
        assert_eq!(asked(inbox.get_mut("a").unwrap()).await, 2);
        assert_eq!(asked(inbox.get_mut("b").unwrap()).await, 2);
        // Refused: an old request, a report of the wrong size.
        assert!(hub.add_stats("a", report(1, n, 10, 1.0)).is_err());
        assert!(hub.add_stats("a", report(2, n + 1, 10, 1.0)).is_err());
        hub.add_stats("a", report(2, n, 10, 1.0)).unwrap();
        hub.add_stats("b", report(2, n, 30, 3.0)).unwrap();
        let (st, smallest) = running.await.unwrap().unwrap();
        assert_eq!(smallest, 10);
        // (10·1 + 30·3) / 40 = 2.5
        assert!(
            st.mean.iter().all(|m| (m - 2.5).abs() < 1e-9),
            "{:?}",
            st.mean
        );
        assert_eq!(st.std.len(), n);
        // The stage is over: statistics are no longer taken.
        assert!(hub.add_stats("b", report(2, n, 30, 3.0)).is_err());
    }
}
