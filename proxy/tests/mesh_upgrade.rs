//! Upgrading node proxies under load with zero failed requests: a new proxy process takes the
//! listening sockets over from the running one (`--handoff-socket`), the pinned eBPF state keeps
//! capture working, and the old process drains (HTTP/2 GOAWAY, `Connection: close` on HTTP/1.1,
//! tunnel connections from other nodes moved over) and exits. Two nodes, mTLS, the controller.
//! Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::{skip_unless_lab_supported, ConfigSource, NodeProxy};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::controlled::{load_sum, load_totals, sibling, start_mesh_with_proxies, successes};

/// Waits for the old proxy process to exit on its own (it drains, then exits).
fn exits_within(proxy: &mut NodeProxy, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if proxy.process.try_wait().is_some() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn node_proxies_upgrade_under_load_without_a_failed_request() {
    skip_unless_lab_supported!();
    let dir = tempfile::tempdir().unwrap();
    let socket = |node: &str| dir.path().join(format!("{node}-handoff.sock")).to_str().unwrap().to_string();
    let (socket1, socket2) = (socket("node-1"), socket("node-2"));
    let args1 = ["--handoff-socket", socket1.as_str(), "--drain-grace-secs", "8"];
    let args2 = ["--handoff-socket", socket2.as_str(), "--drain-grace-secs", "8"];
    let mut mesh = start_mesh_with_proxies(&[], &args1, &args2);
    // Keep-alive HTTP/1.1 across nodes (the split), HTTP/2 and gRPC, for 12 s.
    let loads: Vec<_> = [
        vec!["--target", "10.96.0.10:80", "--rate", "100"],
        vec!["--target", "10.96.0.11:80", "--protocol", "h2", "--rate", "50"],
        vec!["--target", "10.96.0.10:9090", "--protocol", "grpc", "--rate", "50"],
    ]
    .into_iter()
    .map(|args| {
        mesh.client
            .command(sibling("nodus-echo-client"))
            .unwrap()
            .args(&args)
            .args(["--duration-secs", "12", "--report-every", "60"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    })
    .collect();
    let proxy_binary = PathBuf::from(env!("CARGO_BIN_EXE_nodus-proxy"));
    std::thread::sleep(Duration::from_secs(2));

    // node-2 first: the destination side, with node-1's tunnel connections into it.
    let node2 = mesh.lab.node("node-2").unwrap().clone();
    let new2 =
        mesh.lab.start_node_proxy(&node2, &proxy_binary, ConfigSource::Controller(mesh.url.clone()), &args2).unwrap();
    let old2_exit = exits_within(&mut mesh.proxy2, Duration::from_secs(10));
    let old2 = std::mem::replace(&mut mesh.proxy2, new2);
    std::thread::sleep(Duration::from_secs(1));

    // Then node-1: the client side, where the pods' connections are captured.
    let node1 = mesh.node1.clone();
    let new1 =
        mesh.lab.start_node_proxy(&node1, &proxy_binary, ConfigSource::Controller(mesh.url.clone()), &args1).unwrap();
    let old1_exit = exits_within(&mut mesh.proxy1, Duration::from_secs(10));
    let old1 = std::mem::replace(&mut mesh.proxy1, new1);

    let mut failures = Vec::new();
    for (load, name) in loads.into_iter().zip(["HTTP/1.1", "HTTP/2", "gRPC"]) {
        let out = load.wait_with_output().unwrap();
        let (requests, ok) = load_totals(&out.stdout);
        // gRPC calls that never left the client, sent again as gRPC clients do (the HTTP clients'
        // pool does the same without saying).
        let unsent = load_sum(&out.stdout, "unsent_retries");
        eprintln!("upgrade: {name}: {ok}/{requests} ({unsent} never sent, sent again)");
        assert!(requests > 0, "{name} ran");
        if ok != requests {
            failures.push(format!("{name}: {}", String::from_utf8_lossy(&out.stdout)));
        }
    }
    eprintln!("upgrade: old node-2 proxy exited after {old2_exit:?}, old node-1 proxy after {old1_exit:?}");
    assert!(failures.is_empty(), "failed requests during the upgrades: {failures:?}");
    assert!(old2_exit.is_some(), "the old node-2 proxy drained and exited");
    assert!(old1_exit.is_some(), "the old node-1 proxy drained and exited");
    // The new proxies capture and serve: a fresh connection works end to end.
    let (ok, text) = successes(&mesh.client, "10.96.0.11:80", 2);
    assert_eq!(ok, 2, "{text}");
    drop((old1, old2));
}

/// Under Kubernetes an exited container is restarted, and a restarted old proxy would take the
/// listeners back: the chart runs proxies with `--linger-after-handoff`, so the old one stays
/// (idle, drained) until the pod is deleted, and then exits on SIGTERM.
#[test]
fn a_lingering_old_proxy_waits_for_sigterm_after_the_hand_over() {
    skip_unless_lab_supported!();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("node-2-handoff.sock").to_str().unwrap().to_string();
    let args = ["--handoff-socket", socket.as_str(), "--drain-grace-secs", "2", "--linger-after-handoff"];
    let mut mesh = start_mesh_with_proxies(&[], &[], &args);
    let node2 = mesh.lab.node("node-2").unwrap().clone();
    let proxy_binary = PathBuf::from(env!("CARGO_BIN_EXE_nodus-proxy"));
    let new2 =
        mesh.lab.start_node_proxy(&node2, &proxy_binary, ConfigSource::Controller(mesh.url.clone()), &args).unwrap();
    // Idle, so the drain ends at once; the old process must still be there well after it.
    assert_eq!(exits_within(&mut mesh.proxy2, Duration::from_secs(4)), None, "the old proxy exited on its own");
    let old2 = std::mem::replace(&mut mesh.proxy2, new2);
    let (ok, text) = successes(&mesh.client, "10.96.0.11:80", 3);
    assert_eq!(ok, 3, "the successor serves: {text}");
    let status = old2.process.terminate(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "the old proxy exits cleanly on SIGTERM: {status:?}");
}
