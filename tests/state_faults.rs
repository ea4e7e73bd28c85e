//! Fault injection into the coordinator's durable state: one federation with secure
//! aggregation and distributed differential privacy runs to completion, then every durable
//! file of its coordinator (the sled database's files, model files old and new, the privacy
//! ledger's files, the federation key, `commit.json`) is truncated to half, truncated to
//! zero, has one byte flipped or is deleted, each in its own copy of the state directory. The next start (`consortia state verify` for every case, a
//! real `consortia coordinator` for a few) must either recover exactly — the same last
//! round and final model, no round run again, no model file rewritten — or refuse with a
//! message naming the damaged file. And the read-only commands work while a coordinator
//! runs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{EXE, Federation, RECORD_DP, TASK, wait_until};
use consortia_coordinator::commit::sha256_hex;

const LONG: Duration = Duration::from_secs(300);
const ROUNDS: u32 = 4;
const DDG_EPS8: &str = include_str!("../examples/telco_churn_ddg_eps8.toml");

/// The secure-aggregation example with distributed DP (a ledger and a federation key),
/// `rounds` rounds.
fn secure_dp_task(rounds: u32) -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(DDG_EPS8).unwrap();
    spec.rounds = rounds;
    spec.to_toml_string().unwrap()
}

/// The bundled task, `rounds` rounds of 3 partners, with record-level DP (so there is a
/// ledger).
fn dp_task(rounds: u32) -> String {
    let mut spec = consortia_model::TaskSpec::from_toml_str(TASK).unwrap();
    spec.rounds = rounds;
    spec.min_partners = 3;
    spec.round_deadline_secs = 120;
    format!("{}\n[privacy]\n{RECORD_DP}", spec.to_toml_string().unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// SHA-256 of every file under `dir`, by path relative to it.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in rd {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, sha256_hex(&std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Only the model files of [`hashes`].
fn model_hashes(state: &Path) -> BTreeMap<PathBuf, String> {
    hashes(&state.join("models"))
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Half,
    Zero,
    Flip,
    Delete,
}

impl Damage {
    const ALL: [Damage; 4] = [Damage::Half, Damage::Zero, Damage::Flip, Damage::Delete];

    fn apply(self, file: &Path) {
        let bytes = std::fs::read(file).unwrap();
        match self {
            Damage::Half => std::fs::write(file, &bytes[..bytes.len() / 2]).unwrap(),
            Damage::Zero => std::fs::write(file, b"").unwrap(),
            Damage::Flip => {
                // The middle of the bytes in use (a sled file is mostly zeros past its data);
                // the lowest bit, as a bit rot would (in a model file: a mantissa bit, the
                // value stays finite).
                let used = bytes.iter().rposition(|&b| b != 0).map_or(1, |i| i + 1);
                let mut b = bytes;
                b[used / 2] ^= 0x01;
                std::fs::write(file, b).unwrap();
            }
            Damage::Delete => std::fs::remove_file(file).unwrap(),
        }
    }
}

fn verify(state: &Path) -> Output {
    Command::new(EXE)
        .args(["state", "verify", "--state"])
        .arg(state)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts a real coordinator on `state` (no agents) and waits for it to exit.
fn start_coordinator(fed: &Federation, state: &Path, log: &Path) -> (bool, String) {
    let mut child = Command::new(EXE)
        .args(["coordinator", "--task"])
        .arg(fed.path("task.toml"))
        .arg("--state")
        .arg(state)
        .arg("--pki")
        .arg(fed.path("pki"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(
            std::fs::File::create(log.with_extension("out")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    let status = wait_until(Duration::from_secs(60), || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the coordinator on {} neither finished nor refused within 60 s\n{}",
            state.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    let out = format!(
        "{}{}",
        std::fs::read_to_string(log.with_extension("out")).unwrap_or_default(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    (status.success(), out)
}

/// What the start of a damaged copy must show: the file it names when it refuses.
fn named(state: &Path, damaged: &Path) -> String {
    let rel = damaged.strip_prefix(state).unwrap();
    let first = rel.components().next().unwrap().as_os_str();
    if first == "models" {
        damaged.file_name().unwrap().to_string_lossy().into_owned()
    } else {
        state.join(first).display().to_string()
    }
}

#[test]
fn every_durable_file_of_the_coordinator_damaged_is_refused_or_recovered_exactly() {
    let mut fed = Federation::new(&secure_dp_task(ROUNDS));
    fed.run_to_completion(LONG);
    let state = fed.path("state");
    let golden = hashes(&state);
    let golden_models = model_hashes(&state);
    let newest = format!("round-{ROUNDS:08}.f64");
    let final_model = golden_models[Path::new(&newest)].clone();
    let intact = verify(&state);
    let intact_text = text(&intact);
    assert!(intact.status.success(), "{intact_text}");
    assert!(
        intact_text.contains(&format!("OK: a coordinator resumes after round {ROUNDS}")),
        "{intact_text}"
    );
    assert!(intact_text.contains(&final_model), "{intact_text}");
    assert_eq!(hashes(&state), golden, "state verify changed the state");
    eprintln!("{intact_text}");

    // Every durable file of the coordinator.
    let mut targets: Vec<PathBuf> = Vec::new();
    for sled_dir in ["db", "ledger"] {
        for entry in std::fs::read_dir(state.join(sled_dir)).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                targets.push(p);
            }
        }
    }
    for m in ["round-00000000.f64", "round-00000001.f64", newest.as_str()] {
        targets.push(state.join("models").join(m));
    }
    targets.push(state.join("keys/federation-key.json"));
    targets.push(state.join("commit.json"));
    assert!(targets.iter().all(|p| p.is_file()), "{targets:?}");
    assert!(targets.iter().any(|p| p.ends_with("db/db")));
    assert!(targets.iter().any(|p| p.ends_with("ledger/db")));

    let cases = fed.path("cases");
    let mut outcomes = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        for damage in Damage::ALL {
            let copy = cases.join(format!("{i}-{damage:?}")).join("state");
            copy_dir(&state, &copy);
            let file = copy.join(target.strip_prefix(&state).unwrap());
            damage.apply(&file);
            let before = hashes(&copy);
            let out = verify(&copy);
            let t = text(&out);
            assert_eq!(
                hashes(&copy),
                before,
                "state verify changed {}",
                copy.display()
            );
            let what = format!(
                "{} {damage:?}",
                target.strip_prefix(&state).unwrap().display()
            );
            if out.status.success() {
                // Recovered: the same round and final model as before the damage.
                assert!(
                    t.contains(&format!("OK: a coordinator resumes after round {ROUNDS}"))
                        && t.contains(&final_model),
                    "{what}: accepted, but not as the intact state\n{t}"
                );
                outcomes.push(format!("{what}: recovers exactly"));
            } else {
                let name = named(&copy, &file);
                assert!(
                    t.contains("PROBLEM") && t.contains(&name),
                    "{what}: refused without naming {name}\n{t}"
                );
                assert!(t.contains("Restore"), "{what}: no way to restore\n{t}");
                let problem = t
                    .lines()
                    .find(|l| l.contains("PROBLEM"))
                    .unwrap_or_default();
                outcomes.push(format!("{what}: refused: {problem}"));
            }
            // A model file of a committed round or the federation key is never accepted
            // damaged or missing.
            if target.starts_with(state.join("models")) || target.starts_with(state.join("keys")) {
                assert!(!out.status.success(), "{what} was accepted\n{t}");
            }
            // commit.json is mirrored in the database: rebuilt from it.
            if target.ends_with("commit.json") {
                assert!(out.status.success(), "{what} was refused\n{t}");
                assert!(t.contains("rewritten from the database"), "{what}\n{t}");
            }
        }
    }
    eprintln!("{}", outcomes.join("\n"));

    // Real starts, for the cases found by hand and for a recovery.
    let starts = fed.path("starts");
    std::fs::create_dir_all(&starts).unwrap();
    let start_case = |name: &str, file: &str, damage: Damage| -> (PathBuf, bool, String) {
        let copy = starts.join(name).join("state");
        copy_dir(&state, &copy);
        let damaged = copy.join(file);
        if damaged.is_dir() {
            std::fs::remove_dir_all(&damaged).unwrap();
        } else {
            damage.apply(&damaged);
        }
        let models_before = model_hashes(&copy);
        let before = hashes(&copy);
        let (ok, out) = start_coordinator(&fed, &copy, &starts.join(format!("{name}.log")));
        // No round runs again and no model file is written, whatever the outcome.
        assert!(
            !out.contains("round started"),
            "{name}: a round ran again\n{out}"
        );
        assert_eq!(
            model_hashes(&copy),
            models_before,
            "{name}: a model file was rewritten\n{out}"
        );
        if ok {
            assert!(
                out.contains(&format!("task complete after {ROUNDS} rounds")),
                "{name}\n{out}"
            );
            assert_eq!(
                model_hashes(&copy)[Path::new(&newest)],
                final_model,
                "{name}"
            );
        } else {
            assert!(out.contains(&named(&copy, &damaged)), "{name}\n{out}");
            // Refused: the state directory is left exactly as it was found.
            assert_eq!(
                hashes(&copy),
                before,
                "{name}: the refused start changed the state"
            );
        }
        (copy, ok, out)
    };
    // The database truncated to half, emptied, or with a byte flipped (issue 13, 1).
    start_case("db-half", "db/db", Damage::Half);
    start_case("db-zero", "db/db", Damage::Zero);
    start_case("db-flip", "db/db", Damage::Flip);
    // A mantissa bit of the newest model (issue 13, 5): refused.
    let (_, ok, out) = start_case("model-flip", &format!("models/{newest}"), Damage::Flip);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("committed round {ROUNDS}")), "{out}");
    // The ledger truncated or deleted (issue 13, 2): refused, or (sled noticed nothing) exact.
    start_case("ledger-half", "ledger/db", Damage::Half);
    let (_, ok, out) = start_case("ledger-gone", "ledger", Damage::Delete);
    assert!(!ok, "{out}");
    assert!(out.contains("privacy ledger is missing"), "{out}");
    // The federation key flipped: refused.
    let (_, ok, out) = start_case("key-flip", "keys/federation-key.json", Damage::Flip);
    assert!(!ok, "{out}");
    // commit.json deleted: rebuilt from the database, exactly as it was.
    let (copy, ok, out) = start_case("commit-gone", "commit.json", Damage::Delete);
    assert!(ok, "{out}");
    assert_eq!(
        hashes(&copy)[Path::new("commit.json")],
        golden[Path::new("commit.json")],
        "{out}"
    );
    // And the intact state starts, finds its task complete, and changes nothing of it.
    let copy = starts.join("intact").join("state");
    copy_dir(&state, &copy);
    let (ok, out) = start_coordinator(&fed, &copy, &starts.join("intact.log"));
    assert!(ok && out.contains("state verified"), "{out}");
    assert_eq!(model_hashes(&copy), golden_models);
    assert_eq!(
        hashes(&copy)[Path::new("commit.json")],
        golden[Path::new("commit.json")]
    );
}

#[test]
fn the_read_only_commands_work_while_the_coordinator_runs() {
    let mut fed = Federation::new(&dp_task(ROUNDS));
    // No agents: the coordinator waits for partners, holding its state.
    fed.start_coordinator();
    let state = fed.path("state");
    let run = |args: &[&str]| -> Output {
        let o = Command::new(EXE).args(args).output().unwrap();
        assert!(!text(&o).contains("could not acquire lock"), "{}", text(&o));
        o
    };
    let state_arg = state.to_str().unwrap();
    let m = run(&["metrics", "--state", state_arg]);
    assert!(m.status.success(), "{}", text(&m));
    assert!(
        String::from_utf8_lossy(&m.stderr).contains("reading a copy of its database"),
        "{}",
        text(&m)
    );
    assert!(
        String::from_utf8_lossy(&m.stdout).contains("no evaluation of a trained model"),
        "{}",
        text(&m)
    );
    let out = fed.path("model.json");
    let e = run(&[
        "model",
        "export",
        "--state",
        state_arg,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.status.success(), "{}", text(&e));
    assert!(out.exists());
    let cert = fed.path("pki/coordinator.pem");
    let ledger = state.join("ledger");
    let a = run(&[
        "audit",
        "verify",
        "--ledger",
        ledger.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(a.status.success(), "{}", text(&a));
    assert!(text(&a).contains("reading a copy"), "{}", text(&a));
    // `state verify` checks a stopped coordinator's state only.
    let v = verify(&state);
    assert!(!v.status.success());
    assert!(
        text(&v).contains("a coordinator is running"),
        "{}",
        text(&v)
    );
    // The coordinator was not disturbed.
    let c = fed.coordinator.as_mut().unwrap();
    assert!(c.try_wait().unwrap().is_none(), "{}", fed.logs());
    fed.kill_coordinator();
    let v = verify(&state);
    assert!(v.status.success(), "{}", text(&v));
}
