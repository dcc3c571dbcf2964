//! Mutual TLS between node proxies in the lab, with the controller in standalone mode on the
//! example manifests: requests across nodes carry the source workload's identity; a strict
//! namespace refuses a plaintext tunnel, a permissive one accepts and counts it. Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::{metric_value, skip_unless_lab_supported, NetNs};
use std::time::Duration;
use support::controlled::{load_totals, mesh_policy, sibling, start_mesh, successes, write, MtlsMesh};

/// A plaintext HTTP/2 CONNECT to node-2's inbound listener, from node-1's namespace: what a
/// proxy without identities (or anything else on the network) would send. Returns the status.
fn plaintext_connect(node1: &NetNs) -> u16 {
    node1
        .run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let tcp = tokio::net::TcpStream::connect("10.100.0.12:15008").await.unwrap();
                let (mut sender, connection) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tcp),
                )
                .await
                .unwrap();
                tokio::spawn(connection);
                let request = http::Request::builder()
                    .method(http::Method::CONNECT)
                    .uri("10.244.2.2:8080")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                sender.send_request(request).await.unwrap().status().as_u16()
            })
        })
        .unwrap()
}

#[test]
fn tunnels_are_mutual_tls_and_strict_namespaces_refuse_plaintext() {
    skip_unless_lab_supported!();
    let mesh = start_mesh(&[]);
    let MtlsMesh { proxy2, client, node1, manifests, .. } = &mesh;

    // Across nodes through the mesh: mutual TLS, node-2 knows the caller.
    let (ok, text) = successes(client, "10.96.0.11:80", 5);
    assert_eq!(ok, 5, "{text}");
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    let mtls = metric_value(
        &metrics,
        r#"nodus_inbound_tunnels_total{tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/client",destination="demo/echo-v1-0",result="allowed"}"#,
    );
    assert!(mtls.unwrap_or(0.0) >= 1.0, "{metrics}");
    // The destination proxy tells the application who called, and a caller cannot forge it.
    let out = client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args([
            "--target",
            "10.96.0.11:80",
            "--count",
            "1",
            "-H",
            "x-nodus-client-identity: spiffe://cluster.local/ns/kube-system/sa/admin",
        ])
        .output()
        .unwrap();
    let answer: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        answer["report"]["headers"]["x-nodus-client-identity"],
        serde_json::json!(["spiffe://cluster.local/ns/demo/sa/client"]),
        "{answer}"
    );
    // Same node (echo-v2-0 is on node-1): set by node-1's proxy, equally unforgeable.
    let out = client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.12:80", "--count", "1", "-H", "x-nodus-client-identity: forged"])
        .output()
        .unwrap();
    let answer: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        answer["report"]["headers"]["x-nodus-client-identity"],
        serde_json::json!(["spiffe://cluster.local/ns/demo/sa/client"]),
        "{answer}"
    );

    // Opaque TCP (appProtocol: tcp, never parsed) crosses over mutual TLS too: in a strict
    // namespace a plaintext tunnel would be refused and this request would fail.
    let out = client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.13:7000", "--count", "1"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"status\":200"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    let after = metric_value(
        &metrics,
        r#"nodus_inbound_tunnels_total{tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/client",destination="demo/echo-v1-0",result="allowed"}"#,
    );
    assert!(after > mtls, "the opaque connection's tunnel stream is mTLS: {mtls:?} -> {after:?}");

    // Plaintext to a pod of a strict namespace: refused, and counted.
    assert_eq!(plaintext_connect(node1.netns()), 403);
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(
            r#"tls="plaintext",client_identity="",destination="demo/echo-v1-0",result="plaintext_to_strict""#
        ),
        "{metrics}"
    );

    // Permissive: plaintext accepted, and marked as such.
    let version = metric_value(&proxy2.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    write(&manifests.join("mesh-policy.yaml"), &mesh_policy("Permissive"));
    proxy2.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    assert_eq!(plaintext_connect(node1.netns()), 200);
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"tls="plaintext",client_identity="",destination="demo/echo-v1-0",result="allowed""#),
        "{metrics}"
    );

    // Authorization: only another identity may call echo v1: HTTP gets 403, gRPC
    // PERMISSION_DENIED, and the denial is counted; removing the policy lets calls through.
    let policy = manifests.join("authz.yaml");
    write(&policy, AUTHZ_ONLY_NOBODY);
    let version = metric_value(&proxy2.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    proxy2.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    let call = |args: &[&str]| {
        let out = client.command(sibling("nodus-echo-client")).unwrap().args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let http = call(&["--target", "10.96.0.11:80", "--count", "1"]);
    assert!(http.contains("\"status\":403"), "{http}");
    let grpc = call(&["--target", "10.96.0.11:9090", "--protocol", "grpc", "--count", "1"]);
    assert!(grpc.contains("\"grpc_status\":7"), "{grpc}");
    let opaque = call(&["--target", "10.96.0.13:7000", "--count", "1"]);
    assert!(opaque.contains("ConnectionReset"), "denied opaque TCP is reset: {opaque}");
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"nodus_authorization_denials_total{client_identity="spiffe://cluster.local/ns/demo/sa/client",destination="demo/echo-v1-0",policy="no allow policy matched"}"#),
        "{metrics}"
    );
    std::fs::remove_file(&policy).unwrap();
    let version = metric_value(&proxy2.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    proxy2.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    let http = call(&["--target", "10.96.0.11:80", "--count", "1"]);
    assert!(http.contains("\"status\":200"), "{http}");

    // HTTP rules are decided per request: /admin is denied, the rest of the stream is not.
    write(&policy, DENY_ADMIN);
    let version = metric_value(&proxy2.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    proxy2.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    let admin = call(&["--target", "10.96.0.11:80", "--path", "/admin/users", "--count", "1"]);
    assert!(admin.contains("\"status\":403"), "{admin}");
    let other = call(&["--target", "10.96.0.11:80", "--path", "/public", "--count", "2"]);
    assert_eq!(other.matches("\"status\":200").count(), 2, "{other}");
    let grpc = call(&["--target", "10.96.0.11:9090", "--protocol", "grpc", "--count", "1"]);
    assert!(grpc.contains("\"grpc_status\":0"), "gRPC paths are not /admin: {grpc}");
}

/// Nobody may call /admin paths of echo v1.
const DENY_ADMIN: &str = r#"
apiVersion: policy.nodus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: demo }
spec:
  selector: { matchLabels: { app: echo, version: v1 } }
  action: Deny
  rules: [{ paths: ["/admin/*"] }]
"#;

/// Only spiffe://cluster.local/ns/demo/sa/nobody may call echo v1.
const AUTHZ_ONLY_NOBODY: &str = r#"
apiVersion: policy.nodus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: echo-v1-callers, namespace: demo }
spec:
  selector: { matchLabels: { app: echo, version: v1 } }
  action: Allow
  rules: [{ identities: ["spiffe://cluster.local/ns/demo/sa/nobody"] }]
"#;

#[test]
fn certificates_rotate_under_load_with_zero_failed_requests() {
    skip_unless_lab_supported!();
    // Two-second certificates: renewed every second on both nodes while traffic crosses them.
    let mesh = start_mesh(&["--certificate-lifetime", "2s"]);
    let issued_before =
        metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_workload_certificates_issued_total")
            .unwrap();
    let out = mesh
        .client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.11:80", "--rate", "100", "--duration-secs", "6", "--report-every", "10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut requests, mut ok) = (0, 0);
    for line in text.lines() {
        let summary: serde_json::Value = serde_json::from_str(line).unwrap();
        requests += summary["requests"].as_u64().unwrap();
        ok += summary["ok"].as_u64().unwrap();
    }
    assert!(requests >= 500, "{text}");
    assert_eq!(ok, requests, "no failed request while certificates rotate: {text}");
    let issued_after =
        metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_workload_certificates_issued_total")
            .unwrap();
    assert!(
        issued_after - issued_before >= 6.0,
        "both identities renewed several times: {issued_before} -> {issued_after}"
    );
    // A new identity pair now needs a fresh handshake with rotated certificates on both sides.
    let (ok, text) = successes(&mesh.echo_v2, "10.96.0.11:80", 3);
    assert_eq!(ok, 3, "{text}");
    let (_, metrics) = mesh.proxy2.admin_get("/metrics").unwrap();
    assert!(metrics.contains(r#"tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/echo""#), "{metrics}");
}

/// Mutual TLS handshakes a node proxy's inbound listener completed.
fn handshakes(proxy: &nodus_harness::NodeProxy) -> f64 {
    let (_, metrics) = proxy.admin_get("/metrics").unwrap();
    metric_value(&metrics, r#"nodus_inbound_tls_handshakes_total{result="ok"}"#).unwrap_or(0.0)
}

#[test]
fn the_trust_anchor_rotates_under_load_with_zero_failed_requests() {
    skip_unless_lab_supported!();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_arg = ca_dir.path().to_str().unwrap().to_string();
    let mesh = start_mesh(&["--ca-dir", &ca_arg]);
    let old_root = std::fs::read_to_string(ca_dir.path().join("ca.pem")).unwrap();
    let issued = |proxy: &nodus_harness::NodeProxy| {
        metric_value(&proxy.admin_get("/metrics").unwrap().1, "nodus_workload_certificates_issued_total").unwrap()
    };
    let issued_before = (issued(&mesh.proxy1), issued(&mesh.proxy2));

    // Steady cross-node traffic over a tunnel established with certificates from the old root.
    let load = mesh
        .client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.11:80", "--rate", "100", "--duration-secs", "12", "--report-every", "10"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // And connection churn over opaque TCP: every connection is a new tunnel stream, so each
    // step of the rotation meets new mutual TLS handshakes (a tunnel connection is replaced
    // when its certificate or the trust roots change).
    let churn = mesh
        .client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.13:7000", "--new-connection", "--rate", "50", "--duration-secs", "12"])
        .args(["--report-every", "10"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let handshakes_before = handshakes(&mesh.proxy2);
    // What an operator runs: stage a new root next to the active one.
    let staged =
        std::process::Command::new(sibling("nodus-controller")).args(["--generate-root", &ca_arg]).output().unwrap();
    assert!(staged.status.success(), "{}", String::from_utf8_lossy(&staged.stderr));
    let new_root = std::fs::read_to_string(ca_dir.path().join("next.pem")).unwrap();
    assert_ne!(new_root, old_root);

    // Trust both, sign with the new root, re-issue, retire the old root, store the new one.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while (ca_dir.path().join("next.pem").exists()
        || std::fs::read_to_string(ca_dir.path().join("ca.pem")).unwrap() != new_root)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(ca_dir.path().join("ca.pem")).unwrap(), new_root, "rotation completed");
    // Proxies trust only the new root now (their config dump shows the roots pushed).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let only_new = |proxy: &nodus_harness::NodeProxy| {
        let (_, dump) = proxy.debug_get("/config_dump").unwrap();
        let config: serde_json::Value = serde_json::from_str(&dump).unwrap();
        let roots = config["snapshot"]["trustRoots"].as_array().cloned().unwrap_or_default();
        roots.len() == 1 && roots[0]["certificatePem"] == serde_json::Value::String(new_root.clone())
    };
    while !(only_new(&mesh.proxy1) && only_new(&mesh.proxy2)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(only_new(&mesh.proxy1) && only_new(&mesh.proxy2), "the old root is retired on both nodes");
    // Every identity was re-issued from the new root at once (24 h certificates: not renewal).
    assert!(issued(&mesh.proxy1) >= issued_before.0 + 2.0, "node-1's two identities re-issued");
    assert!(issued(&mesh.proxy2) >= issued_before.1 + 1.0, "node-2's identity re-issued");

    let out = load.wait_with_output().unwrap();
    let (requests, ok) = load_totals(&out.stdout);
    assert!(requests >= 1000, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ok, requests, "no failed request during the rotation");
    let out = churn.wait_with_output().unwrap();
    let (requests, ok) = load_totals(&out.stdout);
    assert!(requests >= 500, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ok, requests, "no failed connection during the rotation");
    // Node-1's tunnel to node-2 was replaced at each step: handshakes happened mid-rotation.
    assert!(handshakes(&mesh.proxy2) >= handshakes_before + 3.0, "new mTLS connections during the rotation");
    // A new identity pair needs a fresh handshake: both sides now hold new-root certificates
    // and trust only the new root.
    let (ok, text) = successes(&mesh.echo_v2, "10.96.0.11:80", 3);
    assert_eq!(ok, 3, "{text}");
}

#[test]
fn private_keys_stay_in_memory_out_of_logs_and_off_the_admin_port() {
    skip_unless_lab_supported!();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_arg = ca_dir.path().to_str().unwrap().to_string();
    let mesh = start_mesh(&["--ca-dir", &ca_arg, "--certificate-lifetime", "2s"]);
    // Certificates are issued and renewed (every second) while traffic crosses the nodes.
    let out = mesh
        .client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.11:80", "--rate", "50", "--duration-secs", "3", "--report-every", "10"])
        .output()
        .unwrap();
    let (requests, ok) = load_totals(&out.stdout);
    assert!(requests > 0 && ok == requests);
    let ca_key = std::fs::read_to_string(ca_dir.path().join("ca-key.pem")).unwrap();
    let key_body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    let secret_markers = ["PRIVATE KEY", key_body.get(..40).unwrap()];
    let leaks = |what: &str, text: &str| {
        for marker in secret_markers {
            assert!(!text.contains(marker), "{what} shows key material ({marker:?})");
        }
    };
    for proxy in [&mesh.proxy1, &mesh.proxy2] {
        for path in ["/metrics", "/config_dump", "/ready", "/live", "/debug", "/keys"] {
            let (_, body) = proxy.admin_get(path).unwrap();
            leaks(&format!("{} admin {path}", proxy.node), &body);
            let (_, body) = proxy.debug_get(path).unwrap();
            leaks(&format!("{} debug {path}", proxy.node), &body);
        }
    }
    // The config dump (every Service, endpoint, identity and policy of the mesh) is the node's
    // alone: the public admin port answers 404 for it, and a pod cannot reach the node-local
    // debug listener at all, by the node's address or its own loopback.
    let (status, _) = mesh.proxy1.admin_get("/config_dump").unwrap();
    assert_eq!(status, 404, "the public admin port serves no config dump");
    let (status, dump) = mesh.proxy1.debug_get("/config_dump").unwrap();
    assert_eq!(status, 200, "the node reads it: {dump}");
    let node_ip = mesh.proxy1.admin.ip().to_string();
    let probe = r#"
import socket, sys
for host, port, path in [(sys.argv[1], 15020, "/config_dump"), (sys.argv[1], 15021, "/config_dump"), ("127.0.0.1", 15021, "/config_dump")]:
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        answer = s.recv(200).decode("latin-1").split("\r\n")[0]
    except OSError as error:
        answer = type(error).__name__
    print(f"{host}:{port}{path} {answer}")
"#;
    let out = mesh.client.command("python3").unwrap().args(["-c", probe, &node_ip]).output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 3, "{seen}");
    assert!(lines[0].ends_with(" 404 Not Found"), "the admin port answers 404: {seen}");
    // The node's address: nothing listens there on 15021 (the redirect passes the connection
    // through and it ends unanswered); its own loopback is the pod's, not the node's.
    assert!(!lines[1].contains(" 200") && !lines[2].contains(" 200"), "a pod read the config dump: {seen}");
    assert!(lines[2].ends_with("ConnectionRefusedError"), "{seen}");
    // Every log the lab kept: both proxies' and the controller's.
    let work = mesh.lab.work_dir().unwrap();
    let mut logs = 0;
    for entry in std::fs::read_dir(&work).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            leaks(&path.display().to_string(), &std::fs::read_to_string(&path).unwrap_or_default());
            logs += 1;
        }
    }
    assert!(logs >= 3, "the proxies' and the controller's logs were read ({logs} in {})", work.display());
    // On disk, key material exists only where the controller keeps the CA (0600); node proxies
    // write nothing: no file under the lab's directories holds a PEM private key.
    for entry in walk(&work) {
        let text = std::fs::read(&entry).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        assert!(!text.contains("PRIVATE KEY"), "{} holds a private key", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.is_file() {
            files.push(path);
        }
    }
    files
}
