//! The local cluster end to end, on a real API server (kapi), real kubectl and the Nodus
//! controller in Kubernetes mode: plain manifests (a labelled Namespace, a Deployment, a Service,
//! a bare Pod; no IPs, no EndpointSlices) become running pods whose traffic goes through the
//! mesh, by Service name through cluster DNS; scaling and deleting pods is followed by
//! EndpointSlices.
//!
//! Needs root (network namespaces, cgroups, eBPF) and the kapi binaries (scripts/setup-kapi.sh):
//! skipped with a message otherwise, and failed instead under CI.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use nodus_cluster::local::{ClusterSpec, LocalCluster};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The folder of the workspace's binaries (`target/debug`), two levels above this test.
fn binaries() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

fn spec(dir: &Path) -> Option<ClusterSpec> {
    if nodus_harness::lab_skip_reason("nodus_cluster::local_cluster").is_some() {
        return None;
    }
    let kapi_bin =
        std::env::var_os("NODUS_KAPI_BIN").map(PathBuf::from).unwrap_or_else(|| workspace().join(".cache/kapi/bin"));
    if !kapi_bin.join("kapilite").exists() {
        let why = format!("no kapi binaries in {} (run scripts/setup-kapi.sh)", kapi_bin.display());
        assert!(std::env::var("NODUS_REQUIRE_KAPI").as_deref() != Ok("1"), "NODUS_REQUIRE_KAPI=1 but {why}");
        eprintln!("SKIPPED nodus_cluster::local_cluster: {why}");
        return None;
    }
    let kit =
        std::env::var_os("NODUS_KAPI_KIT").map(PathBuf::from).unwrap_or_else(|| workspace().join("../shared/kapi"));
    Some(ClusterSpec {
        nodes: 2,
        dir: dir.to_path_buf(),
        kapi_kit: kit,
        kapi_bin,
        nodus_crds: workspace().join("charts/nodus/crds"),
        binaries: binaries(),
        exec_helper: None,
        prometheus: None,
        prometheus_port: 0,
    })
}

/// The example docs/getting-started.md walks through.
fn shop() -> String {
    std::fs::read_to_string(workspace().join("examples/local-cluster/shop.yaml")).unwrap()
}

/// The real kubectl: `$NODUS_KUBECTL`, else the one scripts/setup-helm.sh puts in .cache/helm/bin,
/// else the PATH's.
fn kubectl_binary() -> PathBuf {
    let cached = workspace().join(".cache/helm/bin/kubectl");
    std::env::var_os("NODUS_KUBECTL").map(PathBuf::from).unwrap_or_else(|| {
        if cached.exists() {
            cached
        } else {
            "kubectl".into()
        }
    })
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(kubectl_binary())
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ready_endpoints(slices: &Api<EndpointSlice>) -> Vec<String> {
    let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.unwrap();
    let mut ready: Vec<String> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .map(|e| e.addresses[0].clone())
        .collect();
    ready.sort();
    ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_manifests_run_through_the_mesh_and_follow_scaling_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let Some(spec) = spec(dir.path()) else { return };
    let cluster = LocalCluster::start(&spec).await.unwrap();
    let kubeconfig = spec.kubeconfig();
    kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&shop()));

    let client = cluster.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "shop");
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    eventually("2 Ready replicas", Duration::from_secs(60), || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.ready_replicas == Some(2)).then_some(())
    })
    .await;
    let endpoints = eventually("2 ready endpoints", Duration::from_secs(30), || async {
        let e = ready_endpoints(&slices).await;
        (e.len() == 2).then_some(e)
    })
    .await;
    let cluster_ip = services.get("web").await.unwrap().spec.unwrap().cluster_ip.unwrap();
    assert!(cluster_ip.starts_with("10.96."), "a ClusterIP from the Service range, got {cluster_ip}");
    // The scheduler spread the replicas: one per node.
    let web_pods = pods.list(&ListParams::default().labels("app=web")).await.unwrap();
    let mut nodes: Vec<String> = web_pods.items.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    nodes.sort();
    assert_eq!(nodes, ["node-1", "node-2"]);
    assert!(
        web_pods.items.iter().all(|p| p.metadata.owner_references.as_ref().is_some_and(|o| o[0].kind == "ReplicaSet")),
        "pods are owned by the Deployment's ReplicaSet"
    );

    // From the client pod, through its node's proxy, to both replicas.
    let client_pod = eventually("the client pod running", Duration::from_secs(30), || async {
        let lab = cluster.lab.lock().unwrap();
        lab.pods().iter().find(|p| p.namespace == "shop" && p.name == "client").cloned()
    })
    .await;
    let resolv_conf = nodus_cluster::agent::resolv_conf_path(&spec.pods_dir(), "shop", "client");
    let curl = |url: &str| {
        let mut command = client_pod.command("curl").unwrap();
        nodus_harness::with_resolv_conf(&mut command, &resolv_conf).unwrap();
        command.args(["-s", "-m", "2", url]).output().unwrap()
    };
    let mut answered = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.len() < 2 && Instant::now() < deadline {
        // By name, through cluster DNS: the short name by the search path, and the full name.
        let url = if answered.is_empty() { "http://web/" } else { "http://web.shop.svc.cluster.local/" };
        let out = curl(url);
        if let Ok(report) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            // DNS can name the Service a moment before the node proxy's config holds it; until
            // then the proxy passes the call through (as ztunnel does an unknown address), and
            // the cluster's Service rules carry it. From the first routed answer on, every call
            // takes the route.
            if answered.is_empty() && report["headers"]["x-routed-by"].is_null() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            assert_eq!(report["headers"]["x-routed-by"][0], "shop-web-route", "the HTTPRoute's filter ran: {report}");
            assert_eq!(
                report["headers"]["x-nodus-client-identity"][0], "spiffe://cluster.local/ns/shop/sa/client",
                "the callee was told the caller's mesh identity: {report}"
            );
            answered.insert(report["pod"].as_str().unwrap_or_default().to_owned());
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(answered.len(), 2, "both replicas answered through the Service: {answered:?}");
    let proxy = &cluster.proxies()[0];
    let client_node = pods.get("client").await.unwrap().spec.unwrap().node_name.unwrap();
    let proxy = cluster.proxies().iter().find(|p| p.node == client_node).unwrap_or(proxy);
    let (_, metrics) = proxy.admin_get("/metrics").unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("nodus_requests_total") && l.contains("shop/web:80")),
        "the client's node proxy carried the requests:\n{metrics}"
    );

    // The controller, in Kubernetes mode, wrote the route's status.
    let status = kubectl(
        &kubeconfig,
        &[
            "-n",
            "shop",
            "get",
            "httproute",
            "web",
            "-o",
            "jsonpath={.status.parents[0].conditions[?(@.type==\"Accepted\")].status}",
        ],
        None,
    );
    assert_eq!(status, "True", "HTTPRoute web Accepted");

    // kubectl scale: a third replica joins the slices once Ready.
    kubectl(&kubeconfig, &["-n", "shop", "scale", "deployment/web", "--replicas=3"], None);
    eventually("3 ready endpoints", Duration::from_secs(60), || async {
        (ready_endpoints(&slices).await.len() == 3).then_some(())
    })
    .await;

    // Deleting a pod: it leaves the slices, and the ReplicaSet replaces it.
    let victim = web_pods.items[0].metadata.name.clone().unwrap();
    let victim_ip = web_pods.items[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(endpoints.contains(&victim_ip));
    kubectl(&kubeconfig, &["-n", "shop", "delete", "pod", &victim, "--wait=false"], None);
    eventually("the replacement Ready", Duration::from_secs(60), || async {
        let names: Vec<String> = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let ready = ready_endpoints(&slices).await;
        (!names.contains(&victim) && names.len() == 3 && ready.len() == 3).then_some(())
    })
    .await;

    // Services created together each get their own ClusterIP: an allocation pass that runs
    // before the watch shows the previous pass's writes must not hand an address out twice.
    let many: String = (0..16)
        .map(|i| format!("apiVersion: v1\nkind: Service\nmetadata: {{ name: s{i}, namespace: shop }}\nspec: {{ ports: [{{ port: 80 }}] }}\n---\n"))
        .collect();
    kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&many));
    let addresses = eventually("16 ClusterIPs", Duration::from_secs(30), || async {
        let list = services.list(&ListParams::default()).await.ok()?;
        let addresses: Vec<String> = list
            .items
            .iter()
            .filter(|s| s.metadata.name.as_deref().is_some_and(|n| n.starts_with('s') && n != "shop"))
            .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
            .collect();
        (addresses.len() == 16).then_some(addresses)
    })
    .await;
    // Give a late second pass the chance to overwrite one, then check again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut all: Vec<String> = services
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
        .collect();
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "every Service of the namespace has its own ClusterIP: {addresses:?}");
}

const VAULT: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: vault, labels: { nodus.dev/mesh: enabled } }
---
apiVersion: policy.nodus.dev/v1alpha1
kind: MeshPolicy
metadata: { name: default, namespace: vault }
spec: { mtls: { mode: Strict } }
---
apiVersion: v1
kind: Pod
metadata: { name: safe, namespace: vault, labels: { app: safe } }
spec:
  containers:
    - name: safe
      image: nodus-echo
      ports: [{ containerPort: 8080 }]
      readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: safe, namespace: vault }
spec: { selector: { app: safe }, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Namespace
metadata: { name: callers, labels: { nodus.dev/mesh: enabled } }
"#;

/// Enrolment before the first packet: the node agent has the node proxy enrol a pod (its CNI
/// socket, as a chained CNI plugin's ADD) before the pod's first process starts. A pod whose
/// very first action is a connection to a Strict mesh Service gets through, with its identity;
/// had it started before enrolment, that connection would leave in plaintext and be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_first_action_is_a_call_to_a_strict_service_is_captured() {
    let dir = tempfile::tempdir().unwrap();
    let Some(spec) = spec(dir.path()) else { return };
    let cluster = LocalCluster::start(&spec).await.unwrap();
    let kubeconfig = spec.kubeconfig();
    kubectl(&kubeconfig, &["apply", "-f", "-"], Some(VAULT));
    let vault: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), "vault");
    eventually("the safe pod ready", Duration::from_secs(60), || async {
        let list = vault.list(&ListParams::default().labels("kubernetes.io/service-name=safe")).await.ok()?;
        list.items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .then_some(())
    })
    .await;
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "vault");
    let ip = services.get("safe").await.unwrap().spec.unwrap().cluster_ip.unwrap();
    // Its first and only action: a connection to the Service's address (no DNS lookup first).
    let first = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{ name: first, namespace: callers }}\n\
         spec: {{ serviceAccountName: caller, restartPolicy: Never, containers: [{{ name: first, image: curl, args: [-sS, -f, -m, '5', 'http://{ip}/'] }}] }}\n"
    );
    kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&first));
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "callers");
    let phase = eventually("the first pod to finish", Duration::from_secs(60), || async {
        let phase = pods.get("first").await.ok()?.status?.phase?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let log = std::fs::read_to_string(spec.logs().join("callers_first_first.log")).unwrap_or_default();
    assert_eq!(phase, "Succeeded", "the first connection was refused (not captured?): {log}");
    assert!(log.contains("spiffe://cluster.local/ns/callers/sa/caller"), "answered over the mesh: {log}");
}

/// Percent-encodes a PromQL query for a URL's query string.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant PromQL query's first sample, if it has one.
async fn prometheus_value(url: &str, query: &str) -> Option<f64> {
    let address: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let path = format!("/api/v1/query?query={}", url_encode(query));
    let (status, body) =
        tokio::task::spawn_blocking(move || nodus_harness::http_get(address, &path)).await.ok()?.ok()?;
    assert_eq!(status, 200, "Prometheus refused {query}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// `--prometheus`: the real Prometheus server scrapes every node proxy and the controller; after
/// traffic through a route, its HTTP API gives that route's request count, request rate and
/// success rate, and the controller's config pushes and ACKs per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reports_a_routes_request_and_success_rates() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut spec) = spec(dir.path()) else { return };
    let prometheus = PathBuf::from("/usr/bin/prometheus");
    if !prometheus.exists() {
        let why = "no /usr/bin/prometheus (Debian's package; scripts/setup.sh installs it)";
        assert!(std::env::var("NODUS_REQUIRE_KAPI").as_deref() != Ok("1"), "under CI, but {why}");
        eprintln!("SKIPPED nodus_cluster::local_cluster prometheus: {why}");
        return;
    }
    spec.prometheus = Some(prometheus);
    let cluster = LocalCluster::start(&spec).await.unwrap();
    let url = cluster.prometheus_url().unwrap().to_owned();
    // The config it runs is one Prometheus's own checker accepts.
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.path().join("prometheus/prometheus.yml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "promtool check config: {}", String::from_utf8_lossy(&check.stdout));

    kubectl(&spec.kubeconfig(), &["apply", "-f", "-"], Some(&shop()));
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), "shop");
    eventually("2 ready endpoints", Duration::from_secs(60), || async {
        (ready_endpoints(&slices).await.len() == 2).then_some(())
    })
    .await;
    let client_pod = eventually("the client pod running", Duration::from_secs(30), || async {
        let lab = cluster.lab.lock().unwrap();
        lab.pods().iter().find(|p| p.namespace == "shop" && p.name == "client").cloned()
    })
    .await;
    let resolv_conf = nodus_cluster::agent::resolv_conf_path(&spec.pods_dir(), "shop", "client");
    // 48 requests over about 10 s (several scrapes), one in four answered 503.
    let (mut ok, mut failed) = (0u32, 0u32);
    for i in 0..48 {
        let mut command = client_pod.command("curl").unwrap();
        nodus_harness::with_resolv_conf(&mut command, &resolv_conf).unwrap();
        command.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2"]);
        if i % 4 == 3 {
            command.args(["-H", "x-echo-status: 503"]);
        }
        let code = String::from_utf8_lossy(&command.arg("http://web/").output().unwrap().stdout).into_owned();
        match code.as_str() {
            "200" => ok += 1,
            "503" => failed += 1,
            other => panic!("request {i} answered {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!((ok, failed), (36, 12));

    let route = r#"route_name="shop/web",direction="outbound""#;
    let total = format!("sum(nodus_requests_total{{{route}}})");
    eventually("Prometheus to have scraped all 48 requests", Duration::from_secs(30), || async {
        (prometheus_value(&url, &total).await == Some(48.0)).then_some(())
    })
    .await;
    let rate = prometheus_value(&url, &format!("sum(rate(nodus_requests_total{{{route}}}[1m]))")).await.unwrap();
    assert!(rate > 0.0, "a request rate for the route, got {rate}");
    let success = format!(
        "sum(rate(nodus_requests_total{{{route},status_code!~\"5..\"}}[1m])) / sum(rate(nodus_requests_total{{{route}}}[1m]))"
    );
    let success = prometheus_value(&url, &success).await.unwrap();
    // Three in four succeeded; rate() extrapolates each series a little differently.
    assert!((0.6..=0.9).contains(&success), "the route's success rate is about 0.75, got {success}");

    // Every target is up, and the controller reports each node's config pushes and ACKs.
    assert_eq!(prometheus_value(&url, "sum(up)").await, Some(3.0), "the controller and two node proxies are up");
    for node in ["node-1", "node-2"] {
        let acks = prometheus_value(&url, &format!("nodus_controller_config_acks_total{{node=\"{node}\"}}")).await;
        assert!(acks.is_some_and(|a| a >= 1.0), "{node} acknowledged config: {acks:?}");
        let connected = prometheus_value(&url, &format!("nodus_controller_node_connected{{node=\"{node}\"}}")).await;
        assert_eq!(connected, Some(1.0), "{node} is connected");
    }
    let nacks = prometheus_value(&url, "sum(nodus_controller_config_nacks_total)").await;
    assert_eq!(nacks, Some(0.0), "no node refused a push");
    let services = prometheus_value(&url, "nodus_controller_watched_objects{kind=\"Service\"}").await;
    assert!(services.is_some_and(|s| s >= 1.0), "the controller counts the Services it watches: {services:?}");
}

/// Every example under examples/ is plain Kubernetes YAML this cluster runs: the demo's
/// applications come up, and each traffic example's route, applied on top with kubectl, is
/// Accepted with its references resolved by the controller in Kubernetes mode; each security
/// example is accepted by the API server's schema for Nodus's CRDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_runs_on_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let Some(spec) = spec(dir.path()) else { return };
    let cluster = LocalCluster::start(&spec).await.unwrap();
    let kubeconfig = spec.kubeconfig();
    let examples = workspace().join("examples");
    kubectl(&kubeconfig, &["apply", "-f", examples.join("local-mesh").to_str().unwrap()], None);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "demo");
    for name in ["client", "echo-v1", "echo-v2", "catalog"] {
        eventually(&format!("Deployment {name} Ready"), Duration::from_secs(60), || async {
            (deployments.get(name).await.ok()?.status?.ready_replicas == Some(1)).then_some(())
        })
        .await;
    }
    let condition = |kind: &str, name: &str, condition: &str| {
        kubectl(
            &kubeconfig,
            &[
                "-n",
                "demo",
                "get",
                &kind.to_lowercase(),
                name,
                "-o",
                &format!("jsonpath={{.status.parents[0].conditions[?(@.type==\"{condition}\")].status}}"),
            ],
            None,
        )
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples.join("traffic"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for path in &files {
        let route: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (kind, name) = (route["kind"].as_str().unwrap(), route["metadata"]["name"].as_str().unwrap());
        kubectl(&kubeconfig, &["apply", "-f", path.to_str().unwrap()], None);
        let what = format!("{}: {kind} {name} Accepted and ResolvedRefs", path.display());
        eventually(&what, Duration::from_secs(30), || async {
            (condition(kind, name, "Accepted") == "True" && condition(kind, name, "ResolvedRefs") == "True")
                .then_some(())
        })
        .await;
        kubectl(&kubeconfig, &["delete", "-f", path.to_str().unwrap()], None);
    }
    for entry in std::fs::read_dir(examples.join("security")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "yaml") {
            let out = kubectl(&kubeconfig, &["apply", "--dry-run=server", "-f", path.to_str().unwrap()], None);
            assert!(out.contains("(server dry run)"), "{}: {out}", path.display());
        }
    }
}

/// `kubectl label namespace ... nodus.dev/mesh=enabled` on a namespace whose pod already runs:
/// its calls to a Service by name, which reached it outside the mesh through the cluster's
/// Service rules, start to carry its mesh identity; removing the label takes it out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelling_a_namespace_enrols_its_running_pods_and_unlabelling_releases_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(spec) = spec(dir.path()) else { return };
    let cluster = LocalCluster::start(&spec).await.unwrap();
    let kubeconfig = spec.kubeconfig();
    kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&shop()));
    kubectl(
        &kubeconfig,
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Namespace\nmetadata: { name: late }\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: { name: caller, namespace: late }\n\
             spec: { serviceAccountName: caller, containers: [{ name: c, image: busybox, command: [sleep, infinity] }] }\n",
        ),
    );
    let caller = eventually("the caller pod running", Duration::from_secs(30), || async {
        let lab = cluster.lab.lock().unwrap();
        lab.pods().iter().find(|p| p.namespace == "late" && p.name == "caller").cloned()
    })
    .await;
    // The Service by name: outside the mesh, through the cluster's Service rules (kube-proxy's
    // job); in the mesh, through the node proxy.
    let resolv_conf = nodus_cluster::agent::resolv_conf_path(&spec.pods_dir(), "late", "caller");
    let identity = || {
        let mut command = caller.command("curl").unwrap();
        nodus_harness::with_resolv_conf(&mut command, &resolv_conf).unwrap();
        let out = command.args(["-s", "-m", "2", "http://web.shop/"]).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(report["headers"]["x-nodus-client-identity"][0].as_str().unwrap_or("").to_owned())
    };
    let before = eventually("an answer from web", Duration::from_secs(60), || async { identity() }).await;
    assert_eq!(before, "", "outside the mesh, the call carries no mesh identity");
    // Both replicas answer, the one on the caller's node and the one across nodes.
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let mut command = caller.command("curl").unwrap();
        nodus_harness::with_resolv_conf(&mut command, &resolv_conf).unwrap();
        let out = command.args(["-s", "-m", "2", "http://web.shop/"]).output().unwrap();
        if let Ok(report) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            answered.insert(report["pod"].as_str().unwrap_or_default().to_owned());
        }
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered.len(), 2, "the Service's rules spread calls over both replicas: {answered:?}");
    let proxy = cluster.proxies().iter().find(|p| p.node == caller.node).unwrap();
    let enrolled = || {
        let (_, metrics) = proxy.admin_get("/metrics").unwrap();
        nodus_harness::metric_value(&metrics, "nodus_redirect_enrolled_pods").unwrap_or(-1.0)
    };
    let enrolled_before = enrolled();

    kubectl(&kubeconfig, &["label", "namespace", "late", "nodus.dev/mesh=enabled"], None);
    // In the mesh: captured, so the Service reaches web with the caller's identity.
    eventually("the caller's calls to carry its identity", Duration::from_secs(30), || async {
        (identity().as_deref() == Some("spiffe://cluster.local/ns/late/sa/caller")).then_some(())
    })
    .await;
    assert_eq!(enrolled(), enrolled_before + 1.0, "the caller is enrolled in its node's redirect");

    kubectl(&kubeconfig, &["label", "namespace", "late", "nodus.dev/mesh-"], None);
    eventually("the caller out of the mesh again", Duration::from_secs(30), || async {
        (enrolled() == enrolled_before).then_some(())
    })
    .await;
    let after = eventually("an answer from web", Duration::from_secs(30), || async { identity() }).await;
    assert_eq!(after, "", "out of the mesh, its calls carry no identity again");
}
