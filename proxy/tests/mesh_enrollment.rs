//! Enrolment follows the config: a pod whose namespace leaves the mesh is released from its next
//! connection on, and captured again when it returns, without restarting anything in the pod;
//! a connection open across the change keeps working. Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::skip_unless_lab_supported;
use std::time::Duration;
use support::*;

/// echo-v1's pod IP, dialled directly (not a Service): captured connections reach it from the
/// node proxy's address (node-1, 10.100.0.11), direct ones from the client pod's own IP.
const ECHO_V1_POD: &str = "10.244.2.2:8080";

fn seen_from(mesh: &Mesh) -> String {
    let outcome = client(mesh, &["--target", ECHO_V1_POD]).remove(0);
    assert_eq!(outcome["status"], 200, "{outcome}");
    outcome["report"]["remote_addr"].as_str().unwrap().split(':').next().unwrap().to_owned()
}

fn wait_for_enrolled(mesh: &Mesh, count: f64) {
    let goal = format!("become {count}");
    mesh.proxy
        .wait_for_metric_where("nodus_redirect_enrolled_pods", &goal, |v| v == count, Duration::from_secs(10))
        .unwrap();
}

#[test]
fn leaving_and_rejoining_the_mesh_changes_capture_without_breaking_connections() {
    skip_unless_lab_supported!();
    let mesh = start("", &[]);
    assert_eq!(seen_from(&mesh), "10.100.0.11", "an enrolled pod's connection goes through the node proxy");

    // A keep-alive load across the changes: its connection was captured and must keep working.
    let client_pod = mesh.client.clone();
    let load = std::thread::spawn(move || {
        client_in(
            &client_pod,
            &["--target", ECHO_V1_POD, "--duration-secs", "3", "--rate", "100", "--report-every", "10"],
        )
    });
    std::thread::sleep(Duration::from_millis(500));

    let config = base_config(1);
    let released = config.replace(
        "{ id: { namespace: demo, name: client }, node: node-1, ips: [10.244.1.2], owner: client, meshEnabled: true }",
        "{ id: { namespace: demo, name: client }, node: node-1, ips: [10.244.1.2], owner: client, meshEnabled: false }",
    );
    assert_ne!(released, config);
    write_config(&mesh.config_path, &released.replace("version: 1", "version: 2"));
    wait_for_enrolled(&mesh, 1.0); // echo-v2 stays in
    assert_eq!(seen_from(&mesh), "10.244.1.2", "released: the next connection goes direct");

    write_config(&mesh.config_path, &config.replace("version: 1", "version: 3"));
    wait_for_enrolled(&mesh, 2.0);
    assert_eq!(seen_from(&mesh), "10.100.0.11", "enrolled again, no restart of the pod");

    let summaries = load.join().unwrap();
    let requests: u64 = summaries.iter().map(|s| s["requests"].as_u64().unwrap()).sum();
    let ok: u64 = summaries.iter().map(|s| s["ok"].as_u64().unwrap()).sum();
    assert!(requests >= 200, "{summaries:?}");
    assert_eq!(ok, requests, "the connection open across both changes kept working: {summaries:?}");
}

#[test]
fn capture_outlives_the_proxy_process_and_a_new_one_adopts_it() {
    skip_unless_lab_supported!();
    let mut mesh = start("", &[]);
    let target = format!("{ECHO}:80");
    assert_eq!(client(&mesh, &["--target", &target])[0]["status"], 200);

    // Kill the proxy outright: pinned links keep capturing, so the pod's connections now fail
    // (refused at the proxy's address) instead of silently bypassing the mesh.
    mesh.proxy.kill();
    let node = mesh.lab.node("node-1").unwrap().clone();
    let outcome = client(&mesh, &["--target", ECHO_V1_POD, "--timeout-ms", "2000"]).remove(0);
    assert!(outcome["error"].is_string(), "with no proxy running the pod is not let around the mesh: {outcome}");

    // A new proxy process adopts the pinned programs and maps; capture works again.
    mesh.proxy =
        mesh.lab.start_node_proxy(&node, env!("CARGO_BIN_EXE_nodus-proxy").as_ref(), &mesh.config_path, &[]).unwrap();
    mesh.proxy.wait_for_metric("nodus_redirect_enrolled_pods", 2.0, Duration::from_secs(10)).unwrap();
    let outcomes = client(&mesh, &["--target", &target, "--count", "5"]);
    assert!(outcomes.iter().all(|o| o["status"] == 200), "{outcomes:?}");
    assert_eq!(seen_from(&mesh), "10.100.0.11");
    let log = std::fs::read_to_string(mesh.lab.work_dir().unwrap().join("proxy-node-1.log")).unwrap();
    assert!(log.contains("Replaced"), "the new process swapped its programs into the pinned links: {log}");
}
