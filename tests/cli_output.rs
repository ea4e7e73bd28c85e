//! The command line's behaviour when its output goes away early.

mod common;

use std::process::{Command, Stdio};

/// `consortia … | head` closes the pipe before the command is done writing: the
/// command must end quietly (status 0, no panic), as Unix tools do.
#[test]
fn a_closed_standard_output_ends_a_command_quietly() {
    let task = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/telco_churn_dp_eps3.toml"
    );
    let mut child = Command::new(common::EXE)
        .args(["privacy-plan", "--task", task])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run consortia");
    // Close the read end before the command writes its first line.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `consortia pki init` with many partners reports its progress; off a terminal, as log
/// events on standard error that end with the full count.
#[test]
fn pki_init_with_many_partners_reports_progress_as_events() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = dir.path().join("pki");
    let mut cmd = Command::new(common::EXE);
    cmd.args(["pki", "init", "--dir"]).arg(&pki);
    for i in 0..60 {
        cmd.args(["--partner", &format!("partner-{i}")]);
    }
    let out = cmd.output().expect("run consortia");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    let last = stderr
        .lines()
        .rfind(|l| l.contains("issuing partner certificates"))
        .unwrap_or_else(|| panic!("no progress event:\n{stderr}"));
    assert!(last.contains("60 of 60 (100 %)"), "{last}");
    assert!(last.contains("INFO"), "{last}");
    // Not a terminal: no line redrawn in place.
    assert!(!stderr.contains('\r'), "{stderr:?}");
}
