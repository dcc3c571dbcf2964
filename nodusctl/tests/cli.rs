//! nodusctl as a user runs it: the real binary, its output and exit codes.
#![allow(clippy::unwrap_used)]

use nodus_harness::skip_unless_lab_supported;
use std::process::Command;

fn nodusctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nodusctl"))
}

#[test]
fn help_lists_the_subcommands() {
    let out = nodusctl().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in ["demo", "check", "Usage:"] {
        assert!(text.contains(word), "--help should mention {word}: {text}");
    }
}

#[test]
fn unknown_arguments_exit_with_usage_error() {
    let out = nodusctl().args(["demo", "--durations", "1s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"), "clap suggests the right flag");
}

#[test]
fn check_passes_on_a_machine_that_can_run_nodus() {
    skip_unless_lab_supported!();
    let out = nodusctl().arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ok    redirect load"), "the live load test ran: {text}");
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn check_fails_with_a_fix_when_bpffs_is_missing() {
    skip_unless_lab_supported!();
    let out = nodusctl().args(["check", "--bpffs", "/tmp"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  bpffs") && text.contains("mount -t bpf bpf /tmp"), "{text}");
    assert!(text.contains("FAIL  redirect load") && text.contains("skipped"), "{text}");
}
