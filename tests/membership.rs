//! Membership: the task file's `partners` allow-list, and one session per
//! partner. Real processes on loopback; every wait is bounded.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{EXE, Federation, task_with};

/// The demo task for two partners, one round, with `partners` set.
fn task_for(partners: Option<&[&str]>) -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(&task_with(1, 2, 60)).unwrap();
    spec.partners = partners.map(|p| p.iter().map(|s| s.to_string()).collect());
    spec.to_toml_string().unwrap()
}

#[test]
fn a_partner_outside_the_allow_list_is_refused_with_the_reason() {
    let names: Vec<String> = Federation::new(&task_for(None))
        .partners
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let members = [names[0].as_str(), names[1].as_str()];
    let mut fed = Federation::new(&task_for(Some(&members)));
    fed.start_coordinator();
    // The third partner has a certificate of the federation's CA, but the task does not name it.
    let outsider = fed.start_agent(2, None);
    let status = fed.wait_agent(&outsider, Duration::from_secs(60));
    assert!(
        !status.success(),
        "the outsider was admitted\n{}",
        fed.logs()
    );
    let said = fed.read(&fed.path(&format!("logs/{outsider}.err")))
        + &fed.read(&fed.path(&format!("logs/{outsider}.out")));
    assert!(
        said.contains(&format!("`{outsider}` is not a partner of task"))
            && said.contains("`partners` list"),
        "the agent did not print why it was refused\n{}",
        fed.logs()
    );
    fed.wait_log(
        1,
        "session refused: not among the task's partners",
        Duration::from_secs(10),
    );
    // The members run the task to its end.
    fed.start_agent(0, None);
    fed.start_agent(1, None);
    let status = fed.wait_coordinator(Duration::from_secs(180));
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    let log = fed.read(&fed.coordinator_log(1));
    assert!(
        !log.contains(&format!("partner connected partner={outsider}"))
            && !log.contains(&format!("partner={outsider} agent=")),
        "the outsider connected\n{log}"
    );
}

#[test]
fn a_second_session_of_a_connected_partner_is_refused_and_the_first_keeps_its_place() {
    let mut fed = Federation::new(&task_for(None));
    fed.start_coordinator();
    let first = fed.start_agent(0, None);
    fed.wait_log(1, &format!("partner={first}"), Duration::from_secs(60));
    // The same certificate again, from another process (its own state and logs).
    let (name, data) = fed.partners[0].clone();
    let addr = fed.addr.clone().unwrap();
    let err = fed.path("logs/second.err");
    let mut second = Command::new(EXE)
        .args(["agent", "--coordinator", &format!("https://{addr}")])
        .arg("--data")
        .arg(&data)
        .arg("--pki")
        .arg(fed.path("pki"))
        .args(["--name", &name])
        .arg("--state")
        .arg(fed.path("agent-second"))
        .arg("--policy")
        .arg(fed.path("policy.toml"))
        .args(["--max-connect-attempts", "1"])
        .stdout(Stdio::from(
            std::fs::File::create(fed.path("logs/second.out")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .unwrap();
    let status = common::wait_until(Duration::from_secs(60), || second.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = second.kill();
        let _ = second.wait();
        panic!("the second session was not refused\n{}", fed.logs());
    };
    assert!(!status.success(), "the second session ran\n{}", fed.logs());
    assert!(
        fed.read(&err)
            .contains(&format!("`{name}` is already connected")),
        "the second agent did not say why it was refused\n{}",
        fed.logs()
    );
    fed.wait_log(
        1,
        "session refused: the partner is already connected",
        Duration::from_secs(10),
    );
    // The first session kept its place: with the second partner the task runs to its end.
    fed.start_agent(1, None);
    let status = fed.wait_coordinator(Duration::from_secs(180));
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    let s = fed.wait_agent(&first, Duration::from_secs(30));
    assert!(s.success(), "the first agent failed\n{}", fed.logs());
    // Its one session took part (nothing replaced it).
    let log = fed.read(&fed.coordinator_log(1));
    assert!(
        log.contains(&format!("update received partner=\"{first}\" round=1"))
            && log
                .matches(&format!("partner connected partner={first}"))
                .count()
                == 1,
        "the first session was disturbed\n{log}"
    );
}
