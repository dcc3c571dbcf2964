//! `nodusctl cluster create|list|delete` and `nodusctl exec` as a user runs them: the cluster
//! keeps running after `create` returns, `kubectl exec` reaches a pod through kapi's exec helper,
//! `nodusctl exec` runs inside the pod (it resolves Services by short name, and its traffic
//! carries the pod's mesh identity), and
//! `delete` leaves no namespace behind. A machine without the API server's binaries is told how
//! to get them.
//!
//! Needs root and the kapi binaries: skipped with a message otherwise, failed instead under CI.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn nodusctl(clusters: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodusctl")).env("NODUS_CLUSTERS_DIR", clusters).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(support::kubectl_binary()).env("KUBECONFIG", kubeconfig).args(args).output().unwrap()
}

#[test]
fn a_cluster_outlives_create_runs_exec_and_is_deleted_without_leftovers() {
    if nodus_harness::lab_skip_reason("nodusctl::cluster_cli").is_some() || !support::kapi_built("nodusctl cluster_cli")
    {
        return;
    }
    let clusters = tempfile::tempdir().unwrap();
    let created = nodusctl(clusters.path(), &["cluster", "create", "--name", "cli", "--prometheus"]);
    assert!(created.status.success(), "{}", text(&created));
    // Prometheus's UI and API, forwarded to the host's loopback, at the URL create printed.
    let prometheus = text(&created)
        .lines()
        .find_map(|l| l.trim().strip_prefix("prometheus: http://")?.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| panic!("create prints Prometheus's URL: {}", text(&created)));
    let prometheus: std::net::SocketAddr = prometheus.parse().unwrap();
    let (status, body) = nodus_harness::http_get(prometheus, "/-/ready").unwrap();
    assert_eq!(status, 200, "Prometheus ready: {body}");
    let kubeconfig = clusters.path().join("cli/kubeconfig");
    assert!(text(&created).contains(&kubeconfig.display().to_string()), "create prints the kubeconfig path");
    let listed = text(&nodusctl(clusters.path(), &["cluster", "list"]));
    assert!(listed.lines().any(|l| l.starts_with("cli") && l.contains("running")), "{listed}");

    let manifest = clusters.path().join("client.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: shop, labels: { nodus.dev/mesh: enabled } }\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: { name: client, namespace: shop }\n\
         spec: { serviceAccountName: shopper, containers: [{ name: c, image: busybox, command: [sleep, '3600'] }] }\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: { name: web, namespace: shop, labels: { app: web } }\n\
         spec: { containers: [{ name: web, image: nodus-echo, ports: [{ containerPort: 8080 }] }] }\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop }\n\
         spec: { selector: { app: web }, ports: [{ port: 80, targetPort: 8080 }] }\n",
    )
    .unwrap();
    let applied = kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied));

    // kubectl exec, through kapi's pods/exec and the cluster's exec helper.
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let out = kubectl(&kubeconfig, &["-n", "shop", "exec", "client", "--", "sh", "-c", "echo inside; exit 3"]);
        if String::from_utf8_lossy(&out.stdout).contains("inside") {
            break out;
        }
        assert!(Instant::now() < deadline, "kubectl exec never reached the pod: {}", text(&out));
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(said.status.code(), Some(3), "the command's exit code reaches kubectl");

    // nodusctl exec: the Service by its short name (cluster DNS, the pod's search path); the
    // request leaves the pod through the mesh, with the pod's identity.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = nodusctl(
            clusters.path(),
            &["exec", "--cluster", "cli", "shop/client", "--", "curl", "-s", "-m", "2", "http://web/"],
        );
        let body = String::from_utf8_lossy(&out.stdout);
        if body.contains("spiffe://cluster.local/ns/shop/sa/shopper") {
            break;
        }
        assert!(Instant::now() < deadline, "no mesh answer from inside the pod: {}", text(&out));
        std::thread::sleep(Duration::from_millis(300));
    }

    let run_id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(clusters.path().join("cli/cluster.json")).unwrap()).unwrap();
    let run_id = run_id["run_id"].as_str().unwrap().to_owned();
    let deleted = nodusctl(clusters.path(), &["cluster", "delete", "--name", "cli"]);
    assert!(deleted.status.success(), "{}", text(&deleted));
    assert!(nodus_harness::leftovers_of_run(&run_id).is_empty(), "{:?}", nodus_harness::leftovers_of_run(&run_id));
    assert!(!clusters.path().join("cli").exists());
    assert!(nodus_harness::http_get(prometheus, "/-/ready").is_err(), "Prometheus stopped with the cluster");
}

#[test]
fn create_says_what_is_missing_and_how_to_get_it() {
    let clusters = tempfile::tempdir().unwrap();
    let out = nodusctl(clusters.path(), &["cluster", "create", "--name", "x", "--kapi-bin", "/nonexistent/kapi"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("scripts/setup-kapi.sh"), "{}", text(&out));
    let out = nodusctl(
        clusters.path(),
        &["cluster", "create", "--name", "x", "--prometheus", "--prometheus-binary", "/nonexistent/prometheus"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("apt-get install prometheus"), "{}", text(&out));
}
