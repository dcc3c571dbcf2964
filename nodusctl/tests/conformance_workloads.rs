//! The Gateway API conformance suite's mesh workloads on the local cluster, unmodified: its
//! `conformance/mesh/manifests.yaml` (from the suite's sources in ../shared/tools/gateway-conformance)
//! applied with kubectl; the suite's way of sending a request, `kubectl exec` into container
//! `echo` running the image's `client` command, answered in the format the suite parses, through
//! the mesh.
//!
//! Needs root, the kapi binaries and the conformance kit: skipped with a message otherwise, and
//! failed instead under CI (where the kit is beside the repository).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn nodusctl(clusters: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodusctl")).env("NODUS_CLUSTERS_DIR", clusters).args(args).output().unwrap()
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(support::kubectl_binary())
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The suite's mesh manifests, read from its source tarball.
fn mesh_manifests() -> Option<String> {
    let kit = std::env::var_os("NODUS_CONFORMANCE_KIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/gateway-conformance"));
    let tarball = kit.join("src/gateway-api-v1.6.1.tar.gz");
    if !tarball.exists() {
        assert!(
            std::env::var("NODUS_REQUIRE_KAPI").as_deref() != Ok("1"),
            "under CI, but no conformance kit at {}",
            kit.display()
        );
        eprintln!("SKIPPED nodusctl conformance_workloads: no conformance kit at {}", kit.display());
        return None;
    }
    let out = Command::new("tar")
        .arg("-xzOf")
        .arg(&tarball)
        .arg("sigs.k8s.io/gateway-api/conformance/mesh/manifests.yaml")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8(out.stdout).unwrap())
}

/// The first value of `field` as the suite's parser reads it.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    text.lines().find_map(|line| line.find(&key).map(|at| &line[at + key.len()..]))
}

/// What the suite does to send a request: `client ARGS...` in container `echo` of `pod`, through
/// `pods/exec`; returns its standard output.
fn client(kubeconfig: &Path, pod: &str, args: &[&str]) -> String {
    let mut command = vec!["-n", "gateway-conformance-mesh", "exec", pod, "-c", "echo", "--", "client"];
    command.extend_from_slice(args);
    String::from_utf8_lossy(&kubectl(kubeconfig, &command, None).stdout).into_owned()
}

#[test]
fn the_suites_mesh_workloads_run_and_answer_its_client_through_the_mesh() {
    nodus_harness::skip_unless_lab_supported!();
    if !support::kapi_built("nodusctl conformance_workloads") {
        return;
    }
    let Some(manifests) = mesh_manifests() else { return };
    let clusters = tempfile::tempdir().unwrap();
    let created = nodusctl(clusters.path(), &["cluster", "create", "--name", "gwc"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let kubeconfig = clusters.path().join("gwc/kubeconfig");
    let applied = kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&manifests));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    // What the suite's -namespace-labels does.
    for namespace in ["gateway-conformance-mesh", "gateway-conformance-mesh-consumer"] {
        let labelled = kubectl(&kubeconfig, &["label", "namespace", namespace, "nodus.dev/mesh=enabled"], None);
        assert!(labelled.status.success(), "{}", String::from_utf8_lossy(&labelled.stderr));
    }

    // The suite's request: exec into container echo of an echo-v1 pod, run `client URL`.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (text, pod) = loop {
        let pod = kubectl(
            &kubeconfig,
            &[
                "-n",
                "gateway-conformance-mesh",
                "get",
                "pods",
                "-l",
                "app=echo,version=v1",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
            None,
        );
        let pod = String::from_utf8_lossy(&pod.stdout).into_owned();
        if !pod.is_empty() {
            let text = client(&kubeconfig, &pod, &["http://echo-v2/path", "-H", "X-Test:1"]);
            if field(&text, "StatusCode") == Some("200") {
                break (text, pod);
            }
        }
        assert!(Instant::now() < deadline, "no answer to the suite's client from {pod:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(field(&text, "Hostname").is_some_and(|h| h.starts_with("echo-v2")), "{text}");
    assert_eq!(field(&text, "URL"), Some("/path"), "{text}");
    assert!(text.contains("RequestHeader=X-Test:1"), "{text}");
    assert!(
        text.contains(
            "RequestHeader=X-Nodus-Client-Identity:spiffe://cluster.local/ns/gateway-conformance-mesh/sa/default"
        ),
        "the call went through the mesh with the caller's identity: {text}"
    );
    // A Service port without targetPort (`http-alt: 8080`) leads to the same container port.
    let alt = client(&kubeconfig, &pod, &["http://echo:8080/"]);
    assert_eq!(field(&alt, "StatusCode"), Some("200"), "{alt}");
    // gRPC on the grpc port, in a batch as the suite's weight tests send it.
    let text = client(&kubeconfig, &pod, &["grpc://echo:7070", "--count=4"]);
    let sections: Vec<&str> = text.split("\n\n").filter(|s| !s.trim().is_empty()).collect();
    assert_eq!(sections.len(), 4, "{text}");
    for section in sections {
        assert_eq!(field(section, "StatusCode"), Some("200"), "{section}");
        assert!(field(section, "Hostname").is_some_and(|h| h.starts_with("echo-v")), "{section}");
    }
    let deleted = nodusctl(clusters.path(), &["cluster", "delete", "--name", "gwc"]);
    assert!(deleted.status.success());
}
