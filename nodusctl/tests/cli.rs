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

#[test]
fn demo_runs_pods_on_two_nodes_and_reports_their_answers() {
    skip_unless_lab_supported!();
    let echo = std::path::Path::new(env!("CARGO_BIN_EXE_nodusctl")).with_file_name("nodus-echo");
    assert!(echo.exists(), "{} is built by `cargo nextest run --workspace` (make test)", echo.display());
    let out = nodusctl().args(["demo", "--duration", "3s", "--interval", "1s", "--rate", "90"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in
        ["node-1 (10.100.0.11)", "node-2 (10.100.0.12)", "demo/echo-v1 node-2", "demo/echo-v2 node-1", "lab torn down"]
    {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    for protocol in ["HTTP/1.1", "HTTP/2", "gRPC"] {
        assert!(
            text.lines().any(|l| l.contains("echo-v1 node-2") && l.contains(protocol)),
            "{protocol} to node-2:\n{text}"
        );
    }
    // "N requests, M answered by the pod they were sent to (P%)"
    let summary = text.lines().find(|l| l.contains("answered by the pod they were sent to")).unwrap();
    let numbers: Vec<f64> =
        summary.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|w| w.parse().ok()).collect();
    assert!(numbers[0] >= 150.0, "about 270 requests expected in 3 s at 90/s: {summary}");
    assert!(numbers[2] >= 99.0, "pods on both nodes should answer: {summary}");
}
