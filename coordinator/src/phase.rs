//! The protocol's phases and the one loop that waits for each of them.
//!
//! A phase asks partners for something (statistics, key shares, updates,
//! decryption shares), then waits until every answer is in, the phase can no
//! longer complete, or its deadline passes. The asking differs per phase; the
//! waiting is the same, so it is written once: [`drive`] polls a [`Phase`]
//! each time a session changes the hub and hands the phase how it ended.
//!
//! * [`standardization`] — feature statistics → the federation-wide standardisation.
//! * [`key_ceremony`] — commit, then reveal → the federation key.
//! * [`threshold_ceremony`] — a t-of-N key's dealing, relayed between its holders.
//! * [`collection`] — a round's updates and evaluations → its aggregate or encrypted sum.
//! * [`decryption`] — the key holders' partial decryptions → the round's sum in the clear.

use std::time::Instant;

use crate::hub::Hub;

pub mod collection;
pub mod decryption;
pub mod key_ceremony;
pub mod standardization;
pub mod threshold_ceremony;

/// Where a phase stands after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Answers are still missing.
    Waiting,
    /// Every answer is in.
    Complete,
    /// The phase cannot complete any more (a member left, a key holder refused).
    Failed,
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every answer arrived.
    Complete,
    /// The phase could no longer complete.
    Failed,
    /// The deadline passed with answers missing.
    Deadline,
}

/// One phase of the protocol, as [`drive`] waits for it. The phase's state
/// lives in the hub's [`Stage`](crate::hub::Stage), where sessions add the
/// partners' answers; the phase itself only looks at it and, at the end,
/// takes it out.
pub trait Phase {
    /// What the phase produces when it ends.
    type Output;

    /// Where the phase stands now.
    fn poll(&mut self, hub: &Hub) -> Progress;

    /// Ends the phase (closing its stage in the hub) and says what it produced.
    fn finish(self, hub: &Hub, ending: Ending) -> Self::Output;
}

/// Waits until `phase` completes, fails or reaches `until`, whichever comes
/// first, and returns what it produced. The only wait-for-answers loop of
/// the coordinator.
pub async fn drive<P: Phase>(hub: &Hub, mut phase: P, until: Instant) -> P::Output {
    loop {
        let ending = match phase.poll(hub) {
            Progress::Complete => Ending::Complete,
            Progress::Failed => Ending::Failed,
            Progress::Waiting if Instant::now() >= until => Ending::Deadline,
            Progress::Waiting => {
                hub.wait_change(until.saturating_duration_since(Instant::now()))
                    .await;
                continue;
            }
        };
        return phase.finish(hub, ending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TASK, connect, hub_with};
    use std::time::Duration;

    /// Complete once two partners are connected; failed if `x` connects.
    struct TwoConnected;

    impl Phase for TwoConnected {
        type Output = Ending;
        fn poll(&mut self, hub: &Hub) -> Progress {
            let connected = hub.connected();
            if connected.iter().any(|p| p == "x") {
                Progress::Failed
            } else if connected.len() >= 2 {
                Progress::Complete
            } else {
                Progress::Waiting
            }
        }
        fn finish(self, _: &Hub, ending: Ending) -> Ending {
            ending
        }
    }

    async fn drive_after(partner: Option<&'static str>, wait: Duration) -> Ending {
        let (hub, _inbox) = hub_with(TASK, &["a"]);
        let h = hub.clone();
        let running =
            tokio::spawn(async move { drive(&h, TwoConnected, Instant::now() + wait).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _session = partner.map(|p| connect(&hub, p));
        running.await.unwrap()
    }

    #[tokio::test]
    async fn drive_ends_on_completion_failure_or_deadline() {
        let long = Duration::from_secs(60);
        let ended = tokio::time::timeout(Duration::from_secs(10), drive_after(Some("b"), long));
        assert_eq!(ended.await.unwrap(), Ending::Complete);
        let ended = tokio::time::timeout(Duration::from_secs(10), drive_after(Some("x"), long));
        assert_eq!(ended.await.unwrap(), Ending::Failed);
        let t = Instant::now();
        assert_eq!(
            drive_after(None, Duration::from_millis(200)).await,
            Ending::Deadline
        );
        assert!(t.elapsed() >= Duration::from_millis(200));
    }
}
