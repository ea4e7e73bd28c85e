//! The agent's durable state, damaged between two runs, with the real binaries:
//! its privacy ledger truncated, deleted or with a byte flipped (the agent
//! refuses to start, naming the file, instead of counting its budget from a
//! shorter history), and one bit flipped in a key holder's secret key share
//! (the agent refuses the share when the federation key is installed, before it
//! decrypts anything).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{EXE, Federation, TASK};

const LONG: Duration = Duration::from_secs(300);

/// The bundled task with a record-level local-DP `[privacy]` table.
fn dp_task(rounds: u32) -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(TASK).unwrap();
    spec.rounds = rounds;
    spec.min_partners = 3;
    spec.round_deadline_secs = 120;
    format!(
        "{}\n[privacy]\nunit = \"record\"\nepsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\n\
         noise_multiplier = 1.0\nsampling_rate = 0.02\nsteps_per_round = 50\n",
        spec.to_toml_string().unwrap()
    )
}

/// Runs partner `i`'s agent once more, giving up after one connection attempt
/// (the coordinator is gone): its exit status and everything it printed.
fn agent_once(fed: &Federation, i: usize) -> (bool, String) {
    let (name, data) = fed.partners[i].clone();
    let addr = fed.addr.clone().expect("the coordinator ran");
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(EXE)
        .args(["agent", "--coordinator", &format!("https://{addr}")])
        .arg("--data")
        .arg(&data)
        .arg("--pki")
        .arg(fed.path("pki"))
        .args(["--name", &name])
        .arg("--state")
        .arg(fed.agent_state(&name))
        .arg("--policy")
        .arg(fed.path("policy.toml"))
        .args(["--max-connect-attempts", "1"])
        .output()
        .expect("run the agent");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Replaces `state` with a fresh copy of `backup`.
fn restore(backup: &Path, state: &Path) {
    std::fs::remove_dir_all(state).unwrap();
    copy_dir(backup, state);
}

/// The largest file directly in the ledger database's directory (sled's log).
fn ledger_log(state: &Path) -> PathBuf {
    std::fs::read_dir(state.join("ledger"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .max_by_key(|e| e.metadata().unwrap().len())
        .expect("the ledger has files")
        .path()
}

/// After a short DP task, one agent's ledger is damaged three ways: each time
/// the agent refuses to start, naming the ledger or its head and saying to
/// restore the state directory; the undamaged state starts (and gives up on
/// the coordinator that is gone).
#[test]
fn an_agent_refuses_a_truncated_deleted_or_altered_ledger() {
    let mut fed = Federation::new(&dp_task(3));
    fed.run_to_completion(LONG);
    let name = fed.partners[0].0.clone();
    let state = fed.agent_state(&name);
    assert!(state.join("ledger.head").exists());
    let backup = fed.path("backup");
    copy_dir(&state, &backup);

    // The undamaged state passes the check.
    let (ok, text) = agent_once(&fed, 0);
    assert!(
        !ok && text.contains("coordinator unreachable after 1"),
        "{text}"
    );

    let ledger = state.join("ledger");
    let head = state.join("ledger.head");
    type Fault = fn(&Path);
    let faults: [(&str, Fault); 4] = [
        ("truncated to half", |state| {
            let log = ledger_log(state);
            let len = std::fs::metadata(&log).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
            f.set_len(len / 2).unwrap();
        }),
        ("deleted", |state| {
            std::fs::remove_dir_all(state.join("ledger")).unwrap()
        }),
        ("a byte flipped in its last entry", |state| {
            // The last stored entry's record: its last `"mechanism"` field.
            let log = ledger_log(state);
            let mut bytes = std::fs::read(&log).unwrap();
            let needle = b"\"mechanism\"";
            let at = bytes
                .windows(needle.len())
                .rposition(|w| w == needle)
                .expect("an entry in the log");
            bytes[at + 3] ^= 0x01;
            std::fs::write(&log, &bytes).unwrap();
        }),
        ("its head deleted", |state| {
            std::fs::remove_file(state.join("ledger.head")).unwrap()
        }),
    ];
    for (what, damage) in faults {
        restore(&backup, &state);
        damage(&state);
        let (ok, text) = agent_once(&fed, 0);
        assert!(!ok, "ledger {what}: the agent started\n{text}");
        let named = text.contains(&ledger.display().to_string())
            || text.contains(&head.display().to_string());
        assert!(
            named && text.contains("Restore the agent's whole state directory from a backup"),
            "ledger {what}: {text}"
        );
        assert!(
            !text.contains("coordinator unreachable"),
            "ledger {what}: refused only after trying to connect\n{text}"
        );
    }
}

/// A key holder's share with one flipped bit: restarted during a secure task,
/// the agent refuses the share when the coordinator sends the federation key,
/// naming the file and the re-key; no sum is decrypted with it.
#[test]
fn a_key_holder_refuses_its_damaged_key_share_at_load() {
    let mut spec = consortia_model::TaskSpec::from_toml_str(include_str!(
        "../examples/telco_churn_secure.toml"
    ))
    .unwrap();
    // Enough rounds that the task cannot finish while one agent is restarted.
    spec.rounds = 30;
    let mut fed = Federation::new(&spec.to_toml_string().unwrap());
    fed.start_coordinator();
    fed.start_all_agents();
    fed.wait_log(1, "round started round=2", LONG);
    let (i, name) = fed
        .partners
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (i, n.clone()))
        .next()
        .unwrap();
    fed.kill_agent(&name);
    fed.agents.retain(|(n, _)| n != &name);
    let keys = fed.agent_state(&name).join("keys");
    let secret = std::fs::read_dir(&keys)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "secret"))
        .expect("a stored secret share");
    let mut bytes = std::fs::read(&secret).unwrap();
    // A secret bit: after the header (8), session (32) and party (4) bytes.
    bytes[8 + 32 + 4 + 100] ^= 1;
    std::fs::write(&secret, &bytes).unwrap();

    fed.start_agent(i, None);
    let status = fed.wait_agent(&name, LONG);
    assert!(!status.success(), "{}", fed.logs());
    let text = format!(
        "{}{}",
        fed.read(&fed.path(&format!("logs/{name}.out"))),
        fed.read(&fed.path(&format!("logs/{name}.err")))
    );
    assert!(
        text.contains(&secret.display().to_string())
            && text.contains("checksum")
            && text.contains("consortia rekey"),
        "{text}"
    );
    fed.kill_coordinator();
    let log = fed.read(&fed.coordinator_log(1));
    assert!(
        !log.contains("INCIDENT"),
        "a sum was decrypted with the damaged share\n{log}"
    );
}

/// The coordinator keeps the latest head each partner reported of its own ledger and
/// sends it back in `Welcome`: an agent whose whole state directory was lost (the
/// ledger and its head file together, so its own check sees nothing wrong) refuses to
/// go on, instead of charging from an empty ledger.
#[test]
fn an_agent_whose_whole_state_was_lost_is_stopped_by_the_coordinators_acknowledgement() {
    let mut fed = Federation::new(&dp_task(40));
    fed.start_coordinator();
    fed.start_all_agents();
    fed.wait_log(1, "round started round=3", LONG);
    let (name, data) = fed.partners[0].clone();
    fed.kill_agent(&name);
    let state = fed.agent_state(&name);
    assert!(
        state.join("ledger.head").is_file(),
        "the agent charged nothing"
    );
    std::fs::rename(&state, fed.path("lost-state")).unwrap();

    let addr = fed.addr.clone().unwrap();
    let mut child = Command::new(EXE)
        .args(["agent", "--coordinator", &format!("https://{addr}")])
        .arg("--data")
        .arg(&data)
        .arg("--pki")
        .arg(fed.path("pki"))
        .args(["--name", &name])
        .arg("--state")
        .arg(&state)
        .arg("--policy")
        .arg(fed.path("policy.toml"))
        .args(["--max-connect-attempts", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the agent");
    let status = common::wait_until(Duration::from_secs(60), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "the agent went on with an empty ledger\n{text}"
    );
    assert!(
        text.contains("the coordinator acknowledged")
            && text.contains("entries of this partner's privacy ledger, but it holds 0"),
        "{text}"
    );
    // Nothing was charged to the new, empty ledger.
    let fresh = consortia_ledger::load_entries(state.join("ledger")).unwrap_or_default();
    assert!(fresh.is_empty(), "{} entries charged", fresh.len());
}
