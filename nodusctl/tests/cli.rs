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

fn summary_numbers(text: &str) -> Vec<f64> {
    // "N requests, M succeeded (P%)"
    let summary = text.lines().find(|l| l.contains("succeeded (")).unwrap_or_else(|| panic!("no summary in:\n{text}"));
    summary.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|w| w.parse().ok()).collect()
}

fn sibling(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_nodusctl")).with_file_name(name);
    assert!(path.exists(), "{} is built by `cargo nextest run --workspace` (make test)", path.display());
    path
}

#[test]
fn demo_runs_the_mesh_and_reports_routes_split_and_metrics() {
    skip_unless_lab_supported!();
    for binary in ["nodus-proxy", "nodus-controller", "nodus-echo", "nodus-echo-client"] {
        sibling(binary);
    }
    let out = nodusctl().args(["demo", "--duration", "4s", "--interval", "1s", "--rate", "60"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "node-1 (10.100.0.11)",
        "node-2 (10.100.0.12)",
        "starting the controller (standalone mode, reading the manifests)",
        "starting a node proxy with the eBPF redirect on each node",
        "status HTTPRoute demo/echo-split: Accepted=True (Accepted), ResolvedRefs=True (ResolvedRefs)",
        "status GRPCRoute demo/echo-by-method: Accepted=True (Accepted), ResolvedRefs=True (ResolvedRefs)",
        "HTTP/2 CONNECT tunnel -> node-2 proxy",
        "HTTPRoute demo/echo-split rule canary -> demo/echo-v1:80 [200]",
        "HTTPRoute demo/echo-split rule canary -> demo/echo-v2:80 [200]",
        "GRPCRoute demo/echo-by-method rule echo-two -> demo/echo-v2:9090 [200]",
        "HTTPRoute demo/catalog rule all -> demo/catalog:80 [200]",
        "status HTTPRoute demo/catalog: Accepted=True (Accepted), ResolvedRefs=True (ResolvedRefs)",
        "mtls      from spiffe://cluster.local/ns/demo/sa/client   to demo/catalog-0   allowed",
        "identity: workload certificates (SPIFFE) from the controller's CA: issued on both nodes",
        "node-2 proxy, tunnel streams received (from its /metrics):",
        "mtls      from spiffe://cluster.local/ns/demo/sa/client",
        "lab torn down",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("INFO"), "proxy logs stay out of the demo's output:\n{text}");
    let numbers = summary_numbers(&text);
    assert!(numbers[0] >= 400.0, "about 4 x 60 req/s for 4 s: {numbers:?}");
    assert!(numbers[2] >= 99.0, "{numbers:?}\n{text}");
}

#[test]
fn editing_a_route_manifest_while_the_demo_runs_moves_the_split() {
    skip_unless_lab_supported!();
    let dir = std::env::temp_dir().join(format!("nodus-demo-edit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), include_str!("../../examples/local-mesh/cluster.yaml")).unwrap();
    std::fs::write(dir.join("catalog.yaml"), include_str!("../../examples/local-mesh/catalog.yaml")).unwrap();
    let routes = dir.join("routes.yaml");
    let example = include_str!("../../examples/local-mesh/routes.yaml");
    std::fs::write(&routes, example).unwrap();
    let mut child = nodusctl()
        .args(["demo", "--duration", "8s", "--interval", "1s", "--rate", "80", "--manifests"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The edit lands once the demo has reported traffic under the first split: a fixed wait
    // raced the demo's start-up on a loaded machine.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(read > 0, "the demo ended before reporting traffic: {text}");
        text.push_str(&line);
        if line.trim_start().starts_with("HTTP/1.1 echo") {
            break;
        }
    }
    let shifted = example
        .replace("port: 80, weight: 80 }", "port: 80, weight: 0 }")
        .replace("port: 80, weight: 20 }", "port: 80, weight: 100 }");
    assert_ne!(shifted, example, "the example's weights are where this test expects them");
    let temporary = routes.with_extension("tmp");
    std::fs::write(&temporary, shifted).unwrap();
    std::fs::rename(&temporary, &routes).unwrap();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    let http_rows: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("HTTP/1.1 echo")).collect();
    assert!(http_rows.first().unwrap().contains("echo-v1-0"), "before the edit v1 takes most: {http_rows:?}");
    assert!(http_rows.last().unwrap().contains("echo-v2-0 100%"), "after the edit v2 takes all: {http_rows:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stat_and_proxy_config_read_a_running_proxy() {
    skip_unless_lab_supported!();
    use std::io::BufRead;
    let mut demo = nodusctl()
        .args(["demo", "--duration", "8s", "--interval", "4s", "--rate", "80"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The demo names its manifests /run/nodus-harness/<run id>.d/manifests/routes.yaml.
    let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let run_id = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split("/run/nodus-harness/").nth(1).and_then(|rest| rest.split(".d/").next()).map(str::to_owned)
        })
        .expect("the demo prints its manifests path");
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    std::thread::sleep(std::time::Duration::from_secs(1));
    let netns = format!("nodus-{run_id}-node-1");
    let target = ["--admin", "10.100.0.11:15020", "--netns", &netns];

    let out = nodusctl().arg("stat").args(target).args(["--window", "2s"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let canary = text
        .lines()
        .find(|l| l.contains("HTTPRoute demo/echo-split [canary] -> demo/echo-v1:80"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(canary.contains("100.00%"), "{text}");
    assert!(text.contains("GRPCRoute demo/echo-by-method [echo-two] -> demo/echo-v2:9090"), "{text}");

    // The config dump is on the node-local debug listener only, not on the admin port.
    let out = nodusctl().args(["proxy-config", "--netns", &netns]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let on_admin =
        nodusctl().args(["proxy-config", "--debug", "10.100.0.11:15020", "--netns", &netns]).output().unwrap();
    assert_eq!(on_admin.status.code(), Some(2), "the public admin port does not serve the config dump");
    assert!(String::from_utf8_lossy(&on_admin.stderr).contains("answered 404"));
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> =
        dump["snapshot"]["httpRoutes"].as_array().unwrap().iter().filter_map(|r| r["id"]["name"].as_str()).collect();
    assert_eq!(names, ["catalog", "echo-split"], "oldest first, then by name");

    let out = nodusctl().args(["stat", "--admin", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unreachable proxy is an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));

    assert!(demo.wait().unwrap().success());
    drain.join().unwrap();
}
