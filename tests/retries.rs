//! Bounded retries: a round that keeps failing the same way is retried with a
//! backoff, and the task stops with a diagnosis after `max_round_attempts`.

mod common;

use std::time::{Duration, Instant};

use common::{Federation, task_with};

#[test]
fn a_diverging_learning_rate_stops_the_task_with_the_reason_after_a_few_attempts() {
    let mut spec = consortia_model::TaskSpec::from_toml_str(&task_with(3, 3, 20)).unwrap();
    spec.learning_rate = 1e300;
    spec.max_round_attempts = Some(3);
    let mut fed = Federation::new(&spec.to_toml_string().unwrap());
    let started = Instant::now();
    fed.start_coordinator();
    fed.start_all_agents();
    // Bounded: wait_coordinator panics after its timeout.
    let status = fed.wait_coordinator(Duration::from_secs(120));
    let took = started.elapsed();
    assert!(
        !status.success(),
        "the coordinator succeeded\n{}",
        fed.logs()
    );
    let log = fed.read(&fed.coordinator_log(1));
    assert!(
        log.contains("round 1 failed 3 times in a row")
            && log.contains("training diverged")
            && log.contains("max_round_attempts = 3"),
        "no diagnosis naming the round, the attempts and the reason\n{}",
        fed.logs()
    );
    let attempts = log.matches("round abandoned").count();
    assert!(
        (3..100).contains(&attempts),
        "{attempts} attempts\n{}",
        fed.logs()
    );
    // 1 s and 2 s between the three attempts.
    assert!(took >= Duration::from_secs(3), "no backoff: {took:?}");
}
