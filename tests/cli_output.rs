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
