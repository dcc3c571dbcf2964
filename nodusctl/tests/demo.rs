//! `nodusctl demo` as a user runs it (`make demo`): a local cluster, the plain manifests of
//! examples/local-mesh applied with kubectl, load from inside the client pod by Service name,
//! the report; while it runs, `nodusctl stat` and `proxy-config` read the client's node proxy,
//! and a route edited and applied again with kubectl moves the split. After `--duration` the
//! cluster is deleted, leaving nothing behind.
//!
//! Needs root and the kapi binaries (scripts/setup-kapi.sh): skipped with a message otherwise,
//! and failed instead under CI.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn nodusctl(clusters: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nodusctl"));
    command.env("NODUS_CLUSTERS_DIR", clusters);
    command
}

/// "N requests, M succeeded (P%)."
fn summary_numbers(text: &str) -> Vec<f64> {
    let summary = text.lines().find(|l| l.contains("succeeded (")).unwrap_or_else(|| panic!("no summary in:\n{text}"));
    summary
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|n| n.trim_end_matches('.').parse().ok())
        .collect()
}

/// The value after `prefix` on the line that has it.
fn after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
        .trim()
}

#[test]
fn demo_runs_plain_manifests_on_a_cluster_and_follows_a_route_applied_again() {
    nodus_harness::skip_unless_lab_supported!();
    if !support::kapi_built("nodusctl demo") {
        return;
    }
    let clusters = tempfile::tempdir().unwrap();
    let mut demo = nodusctl(clusters.path())
        .args(["demo", "--name", "demo-test", "--duration", "14s", "--interval", "1s", "--rate", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(demo.stdout.take().unwrap());
    let mut text = String::new();
    // Up to the first report under the example's split.
    loop {
        let mut line = String::new();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(read > 0, "the demo ended before reporting traffic:\n{text}");
        text.push_str(&line);
        if line.trim_start().starts_with("HTTP/1.1 echo") {
            break;
        }
    }

    // nodusctl stat, as the demo says to run it, on the client's node proxy.
    let stat: Vec<String> = after(&text, "stat:  nodusctl stat").split_whitespace().map(str::to_owned).collect();
    let out = nodusctl(clusters.path()).arg("stat").args(&stat).args(["--window", "2s"]).output().unwrap();
    let stat_text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stat_text}{}", String::from_utf8_lossy(&out.stderr));
    let canary = stat_text
        .lines()
        .find(|l| l.contains("HTTPRoute demo/echo-split [canary] -> demo/echo-v1:80"))
        .unwrap_or_else(|| panic!("{stat_text}"));
    assert!(canary.contains("100.00%"), "{stat_text}");
    assert!(stat_text.contains("GRPCRoute demo/echo-by-method [echo-two] -> demo/echo-v2:9090"), "{stat_text}");
    // The config dump is on the node-local debug listener only, not on the admin port.
    let netns = stat[stat.iter().position(|a| a == "--netns").unwrap() + 1].clone();
    let out = nodusctl(clusters.path()).args(["proxy-config", "--netns", &netns]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut routes: Vec<&str> =
        dump["snapshot"]["httpRoutes"].as_array().unwrap().iter().filter_map(|r| r["id"]["name"].as_str()).collect();
    routes.sort();
    assert_eq!(routes, ["catalog", "echo-split"]);
    let on_admin = nodusctl(clusters.path())
        .args(["proxy-config", "--debug", "10.100.0.11:15020", "--netns", &netns])
        .output()
        .unwrap();
    assert_eq!(on_admin.status.code(), Some(2), "the public admin port does not serve the config dump");
    let out = nodusctl(clusters.path()).args(["stat", "--admin", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unreachable proxy is an error");

    // Edit the route the demo wrote out and apply it again: the split moves to v2.
    let routes_file = PathBuf::from(after(&text, "edit").split(',').next().unwrap());
    let example = std::fs::read_to_string(&routes_file).unwrap();
    let shifted = example
        .replace("port: 80, weight: 80 }", "port: 80, weight: 0 }")
        .replace("port: 80, weight: 20 }", "port: 80, weight: 100 }");
    assert_ne!(shifted, example, "the example's weights are where this test expects them");
    std::fs::write(&routes_file, shifted).unwrap();
    let kubeconfig = after(&text, "KUBECONFIG=").to_owned();
    let applied = Command::new(support::kubectl_binary())
        .env("KUBECONFIG", &kubeconfig)
        .args(["apply", "-f"])
        .arg(&routes_file)
        .output()
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let status = demo.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    for expected in [
        "creating cluster \"demo-test\": API server, Nodus controller (Kubernetes mode), 2 nodes",
        "kubectl apply -f",
        "node-1 (10.100.0.11)  demo/client-",
        "status HTTPRoute demo/echo-split: Accepted=True (Accepted), ResolvedRefs=True (ResolvedRefs)",
        "status GRPCRoute demo/echo-by-method: Accepted=True (Accepted), ResolvedRefs=True (ResolvedRefs)",
        "status HTTPRoute demo/catalog: Accepted=True (Accepted), ResolvedRefs=True (ResolvedRefs)",
        "identity: workload certificates (SPIFFE) from the controller's CA: issued on both nodes",
        "HTTP/2 CONNECT tunnel -> node-2 proxy",
        "HTTPRoute demo/echo-split rule canary -> demo/echo-v1:80 [200]",
        "HTTPRoute demo/echo-split rule canary -> demo/echo-v2:80 [200]",
        "GRPCRoute demo/echo-by-method rule echo-two -> demo/echo-v2:9090 [200]",
        "HTTPRoute demo/catalog rule all -> demo/catalog:80 [200]",
        "node-2 proxy, tunnel streams received (from its /metrics):",
        "mtls      from spiffe://cluster.local/ns/demo/sa/client   to demo/catalog     allowed",
        "Deleted cluster \"demo-test\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("INFO"), "component logs stay out of the demo's output:\n{text}");
    let numbers = summary_numbers(&text);
    assert!(numbers[0] >= 1500.0, "about 4 x 60 req/s for 14 s: {numbers:?}");
    assert!(numbers[2] >= 99.0, "{numbers:?}\n{text}");
    let http_rows: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("HTTP/1.1 echo")).collect();
    assert!(http_rows.first().unwrap().contains("echo-v1-"), "before the edit v1 takes most: {http_rows:?}");
    let last = http_rows[http_rows.len() - 2];
    assert!(last.contains("echo-v2-") && last.contains(" 100%"), "after the edit v2 takes all: {http_rows:?}");
    assert!(!clusters.path().join("demo-test").exists(), "the cluster's folder is removed");
}
