//! Bounded retries. A round that fails (too few updates, a discarded sum, an
//! aggregate that is not finite) runs again, but not at once: the attempts of
//! one round are spaced by an exponential backoff (1 s doubling to 60 s, never
//! longer than the round deadline), and after `max_round_attempts` identical
//! failures in a row the task stops with a diagnosis, rather than asking the
//! partners the same question forever. The standardisation request is
//! retried the same way.

use std::time::Duration;

use crate::CoordinatorError;

/// The first pause after a failed attempt.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest pause between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The pause after the `failures`-th failed attempt in a row (1 s doubling to
/// [`BACKOFF_MAX`], at most `deadline`).
pub fn backoff(failures: u32, deadline: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_START * (1u32 << doublings))
        .min(BACKOFF_MAX)
        .min(deadline)
}

/// The failed attempts of one thing (a round, the standardisation request).
#[derive(Debug)]
pub struct Attempts {
    max: u32,
    deadline: Duration,
    /// The round the failures are of.
    round: u64,
    /// Failed attempts of `round` in a row, whatever their reason.
    failures: u32,
    /// Of those, how many in a row failed as the last one did.
    identical: u32,
    last: Option<String>,
}

impl Attempts {
    /// At most `max` identical failures in a row; pauses of at most `deadline`.
    pub fn new(max: u32, deadline: Duration) -> Self {
        Attempts {
            max: max.max(1),
            deadline,
            round: 0,
            failures: 0,
            identical: 0,
            last: None,
        }
    }

    /// The thing succeeded: the next failure starts a new count.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.identical = 0;
        self.last = None;
    }

    /// Records a failed attempt of `round` (`what` names it in the diagnosis:
    /// "round 3", "the feature statistics") that failed because of `why`.
    /// Returns the pause before the next attempt, or — after `max` identical
    /// failures in a row — the error that stops the task.
    pub fn failed(
        &mut self,
        round: u64,
        what: &str,
        why: &str,
    ) -> Result<Duration, CoordinatorError> {
        if round != self.round {
            self.succeeded();
            self.round = round;
        }
        self.failures += 1;
        if self.last.as_deref() == Some(why) {
            self.identical += 1;
        } else {
            self.identical = 1;
            self.last = Some(why.to_string());
        }
        if self.identical >= self.max {
            return Err(CoordinatorError::Stopped(format!(
                "{what} failed {} times in a row, each time because {why} \
                 (max_round_attempts = {}); fix the cause and start the coordinator again",
                self.identical, self.max
            )));
        }
        Ok(backoff(self.failures, self.deadline))
    }

    /// Failed attempts in a row of the current round.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_within_the_deadline() {
        let long = Duration::from_secs(3600);
        let pauses: Vec<u64> = (1..=9).map(|n| backoff(n, long).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(5, Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(backoff(u32::MAX, long), BACKOFF_MAX);
    }

    #[test]
    fn identical_failures_stop_after_max_and_a_change_of_reason_or_round_counts_anew() {
        let mut a = Attempts::new(3, Duration::from_secs(60));
        assert!(a.failed(1, "round 1", "x").is_ok());
        assert!(a.failed(1, "round 1", "y").is_ok());
        assert!(a.failed(1, "round 1", "y").is_ok());
        assert_eq!(a.failures(), 3);
        let e = a.failed(1, "round 1", "y").unwrap_err().to_string();
        assert!(e.contains("round 1 failed 3 times in a row"), "{e}");
        assert!(
            e.contains("because y") && e.contains("max_round_attempts = 3"),
            "{e}"
        );
        // Another round starts a new count; so does success.
        let mut a = Attempts::new(2, Duration::from_secs(60));
        assert!(a.failed(1, "round 1", "x").is_ok());
        assert!(a.failed(2, "round 2", "x").is_ok());
        a.succeeded();
        assert_eq!(a.failed(2, "round 2", "x").unwrap(), BACKOFF_START);
        assert!(a.failed(2, "round 2", "x").is_err());
    }
}
