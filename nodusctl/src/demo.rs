//! `nodusctl demo`: the local mesh demo, on a local cluster.
//!
//! Creates a local cluster (docs/local-cluster.md: a real API server, the Nodus controller in
//! Kubernetes mode, two nodes with a node proxy and the real eBPF redirect each), applies the
//! plain manifests of `examples/local-mesh/` with kubectl (a namespace in the mesh, Deployments,
//! Services, an HTTPRoute, a GRPCRoute, a retrying route and an AuthorizationPolicy: no IPs, no
//! EndpointSlices), waits for the pods to be Ready and the routes' status, then drives HTTP and
//! gRPC load from processes inside the client pod, which call the Services by name through
//! cluster DNS and are captured by eBPF like any application. Per interval it reports which
//! pods answered, success rate, rate and latency as the clients saw them, and per route what
//! the client's node proxy counted.
//!
//! With `--duration` the cluster is deleted at the end (unless `--keep`); without it, the load
//! runs until Ctrl-C and the cluster is left running to explore.

use crate::cluster::{self, CreateArgs, NameArg};
use anyhow::{bail, Context, Result};
use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use nodus_harness::metric_value;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Options of `nodusctl demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop the load after this long (e.g. `10s`, `2m`) and delete the cluster (see --keep);
    /// without it the load runs until Ctrl-C and the cluster stays.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Keep the cluster running after --duration.
    #[arg(long)]
    keep: bool,
    /// Time between reports.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    interval: Duration,
    /// Requests per second of each client (two HTTP, two gRPC).
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// The cluster's name (a running cluster of that name is used as it is).
    #[arg(long, default_value = "demo")]
    name: String,
    /// Also run Prometheus on the cluster (nodusctl cluster create --prometheus).
    #[arg(long)]
    prometheus: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    nodus_config::parse_gateway_duration(text)
}

/// The example manifests, built into the binary so the demo runs from any directory; written
/// to the cluster's folder, where they can be edited and applied again.
const EXAMPLE_MANIFESTS: [(&str, &str); 3] = [
    ("apps.yaml", include_str!("../../examples/local-mesh/apps.yaml")),
    ("routes.yaml", include_str!("../../examples/local-mesh/routes.yaml")),
    ("catalog.yaml", include_str!("../../examples/local-mesh/catalog.yaml")),
];

/// The demo's namespace and its Deployments.
const NAMESPACE: &str = "demo";
const DEPLOYMENTS: [&str; 4] = ["client", "echo-v1", "echo-v2", "catalog"];

fn step(text: &str) -> Instant {
    print!("  {text} ... ");
    let _ = std::io::stdout().flush();
    Instant::now()
}

fn done(started: Instant) {
    println!("done ({} ms)", started.elapsed().as_millis());
}

/// Finds a binary built next to this one (`cargo build` puts workspace binaries together).
fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating nodusctl")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to nodusctl: build it with `cargo build -p nodus-proxy -p nodus-controller -p nodus-echo`",
            path.display()
        );
    }
    Ok(path)
}

/// The real kubectl: `$NODUS_KUBECTL`, the one scripts/setup-helm.sh caches, or the PATH's.
fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NODUS_KUBECTL") {
        return PathBuf::from(path);
    }
    let cached = cluster::repository().join(".cache/helm/bin/kubectl");
    if cached.exists() {
        cached
    } else {
        PathBuf::from("kubectl")
    }
}

/// One client's summary line (see `nodus-echo-client`).
#[derive(serde::Deserialize, Debug, Default)]
struct Summary {
    requests: u64,
    ok: u64,
    by_pod: BTreeMap<String, u64>,
    p50_ms: f64,
    p99_ms: f64,
}

/// A node proxy's admin port, reached from inside its node's network namespace.
struct ProxyAdmin {
    node: String,
    netns: String,
    address: SocketAddr,
}

impl ProxyAdmin {
    fn of_node(run_id: &str, node: &str, node_ip: &str) -> Result<Self> {
        let ip: std::net::Ipv4Addr = node_ip.parse().with_context(|| format!("node {node}'s address {node_ip:?}"))?;
        Ok(Self {
            node: node.to_owned(),
            netns: format!("nodus-{run_id}-{node}"),
            address: SocketAddr::from((ip, nodus_harness::PROXY_ADMIN_PORT)),
        })
    }

    fn metrics(&self) -> Option<String> {
        crate::admin::get(self.address, Some(&self.netns), "/metrics").ok()
    }

    fn metric_at_least(&self, name: &str, at_least: f64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.metrics().and_then(|m| metric_value(&m, name)).is_some_and(|v| v >= at_least) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    if let Some(reason) = nodus_harness::check_support().err() {
        bail!("the local mesh cannot run here: {reason}");
    }
    let client_binary = sibling_binary("nodus-echo-client")?;
    let kubectl = kubectl_binary();

    println!("Nodus local mesh demo, on a local cluster");
    let dir = cluster::clusters_dir().join(&args.name);
    let info = match cluster::info(&dir).filter(|i| cluster::alive(i.pid)) {
        Some(info) => {
            println!("  [1/5] using the running cluster {:?} (pid {})", args.name, info.pid);
            info
        }
        None => {
            let started = step(&format!(
                "[1/5] creating cluster {:?}: API server, Nodus controller (Kubernetes mode), 2 nodes",
                args.name
            ));
            let create = CreateArgs {
                name: NameArg { name: args.name.clone() },
                nodes: 2,
                kapi_kit: std::env::var_os("NODUS_KAPI_KIT").map(PathBuf::from),
                kapi_bin: std::env::var_os("NODUS_KAPI_BIN").map(PathBuf::from),
                prometheus: args.prometheus,
                prometheus_port: 0,
                prometheus_binary: PathBuf::from("/usr/bin/prometheus"),
            };
            let (_, info) = cluster::start_in_background(&create)?;
            done(started);
            info
        }
    };
    let kubeconfig = dir.join("kubeconfig");
    let examples = dir.join("examples/local-mesh");
    std::fs::create_dir_all(&examples).with_context(|| format!("creating {}", examples.display()))?;
    for (name, text) in EXAMPLE_MANIFESTS {
        let path = examples.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let started = step(&format!("[2/5] kubectl apply -f {}", examples.display()));
    let applied = std::process::Command::new(&kubectl)
        .env("KUBECONFIG", &kubeconfig)
        .arg("apply")
        .arg("-f")
        .arg(&examples)
        .output()
        .with_context(|| format!("running {} (scripts/setup-helm.sh installs it)", kubectl.display()))?;
    if !applied.status.success() {
        bail!("kubectl apply failed: {}", String::from_utf8_lossy(&applied.stderr).trim());
    }
    done(started);
    println!("        Namespace, Deployments, Services, HTTPRoutes, a GRPCRoute and an AuthorizationPolicy; no IPs");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cluster_view = runtime.block_on(wait_for_the_apps(&kubeconfig))?;
    for (node, (node_ip, pods)) in &cluster_view.nodes {
        println!("        {node} ({node_ip})  {}", pods.join(", "));
    }
    for line in &cluster_view.route_status {
        println!("        status {line}");
    }

    let client_node = &cluster_view.client_node;
    let client_proxy = ProxyAdmin::of_node(&info.run_id, client_node, &cluster_view.nodes[client_node].0)?;
    let catalog_proxy = ProxyAdmin::of_node(
        &info.run_id,
        &cluster_view.catalog_node,
        &cluster_view.nodes[&cluster_view.catalog_node].0,
    )?;
    // The client's node holds client's and echo-v2's certificates, the other echo-v1's and catalog's.
    let issued = [&client_proxy, &catalog_proxy]
        .iter()
        .all(|p| p.metric_at_least("nodus_workload_certificates_issued_total", 2.0, Duration::from_secs(15)));
    println!(
        "  [4/5] identity: workload certificates (SPIFFE) from the controller's CA: {} on both nodes",
        if issued { "issued" } else { "not issued yet" }
    );
    println!("        mTLS:  node-to-node tunnels are mutual TLS 1.3 (X25519MLKEM768), source workload's certificate");

    let client_pod = &cluster_view.client_pod;
    println!(
        "  [5/5] traffic from {NAMESPACE}/{client_pod} on {client_node} to Service echo (by name, cluster DNS), {} req/s per client",
        args.rate
    );
    println!("        HTTP:  HTTPRoute demo/echo-split (weights v1 80 / v2 20)");
    println!("        gRPC:  GRPCRoute demo/echo-by-method (EchoTwo -> v2, rest -> v1), method alternating");
    println!("        HTTP:  HTTPRoute demo/catalog: retries, 1 s timeout; only the client's identity allowed");
    println!("        path:  client pod -> eBPF connect4 -> {client_node} proxy -> pod on {client_node}, or");
    println!("               -> HTTP/2 CONNECT tunnel -> {} proxy (inbound :15008) -> pod there", catalog_proxy.node);
    println!(
        "        edit   {}, then kubectl apply -f it, to shift the split live",
        examples.join("routes.yaml").display()
    );
    println!("        stat:  nodusctl stat --netns {} --admin {}", client_proxy.netns, client_proxy.address);
    println!("        KUBECONFIG={}", kubeconfig.display());

    let duration_secs = args.duration.map_or(86_400.0, |d| d.as_secs_f64());
    let report_every = args.interval.as_secs_f64().to_string();
    let rate = args.rate.to_string();
    let duration = duration_secs.to_string();
    let streams: [(&str, &str, Vec<&str>); 4] = [
        ("HTTP/1.1 echo", "echo:80", vec!["--protocol", "h1"]),
        ("gRPC Echo", "echo:9090", vec!["--protocol", "grpc", "--grpc-method", "Echo"]),
        ("gRPC EchoTwo", "echo:9090", vec!["--protocol", "grpc", "--grpc-method", "EchoTwo"]),
        ("HTTP/1.1 catalog", "catalog:80", vec!["--protocol", "h1"]),
    ];
    let (tx, rx) = mpsc::channel::<(usize, Summary)>();
    let mut clients = Vec::new();
    for (index, (_, target, extra)) in streams.iter().enumerate() {
        let mut command = cluster::pod_command(&args.name, NAMESPACE, client_pod, &client_binary)?;
        command
            .args(["--target", target, "--duration-secs", &duration, "--report-every", &report_every, "--rate", &rate])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().context("starting a client in the client pod")?;
        let stdout = child.stdout.take().context("client stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                if let Ok(summary) = serde_json::from_str::<Summary>(&line) {
                    let _ = tx.send((index, summary));
                }
            }
        });
        clients.push(child);
    }
    drop(tx);

    let totals = report(&args, &rx, &streams.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(), &client_proxy)?;
    for mut child in clients {
        let _ = child.kill();
        let _ = child.wait();
    }
    print_inbound_security(&catalog_proxy);
    println!(
        "\n  {} requests, {} succeeded ({:.2}%).",
        totals.0,
        totals.1,
        if totals.0 == 0 { 0.0 } else { 100.0 * totals.1 as f64 / totals.0 as f64 }
    );
    if args.duration.is_some() && !args.keep {
        cluster::delete(&args.name)?;
    } else {
        println!("  The cluster keeps running; explore it:");
        println!("    export KUBECONFIG={}", kubeconfig.display());
        println!("    kubectl -n demo get pods,services,httproutes");
        println!("    nodusctl exec demo/{client_pod} -- curl -s http://echo/");
        println!("    nodusctl cluster delete --name {}", args.name);
    }
    Ok(if totals.1 > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What the demo found on the cluster once its applications were up.
struct ClusterView {
    /// Per node: its address and its pods (`demo/name ip`).
    nodes: BTreeMap<String, (String, Vec<String>)>,
    client_pod: String,
    client_node: String,
    catalog_node: String,
    /// `Kind namespace/name: conditions`, per route.
    route_status: Vec<String>,
}

/// Waits until every Deployment of the demo is Available, then until the controller wrote every
/// route's status; returns where everything runs.
async fn wait_for_the_apps(kubeconfig: &Path) -> Result<ClusterView> {
    let client = nodus_cluster::local::client_of(kubeconfig).await?;
    let started = step("[3/5] waiting for the Deployments' pods to be Ready and the routes' status");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut waiting = Vec::new();
        for name in DEPLOYMENTS {
            let ready = deployments.get_opt(name).await?.and_then(|d| d.status).and_then(|s| s.ready_replicas);
            if ready.unwrap_or(0) < 1 {
                waiting.push(name);
            }
        }
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("Deployments not Ready after 120 s: {waiting:?} (kubectl -n demo get pods -o yaml; the cluster's logs/)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let route_status = loop {
        let lines = route_status(&client).await?;
        if lines.len() == 3 && lines.iter().all(|l| !l.ends_with(": ")) {
            break lines;
        }
        if Instant::now() > deadline {
            bail!("the controller wrote no status on the routes within 120 s: {lines:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    done(started);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut nodes: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let (mut client_pod, mut client_node, mut catalog_node) = (None, None, None);
    for pod in pods.list(&ListParams::default()).await?.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        if status.phase.as_deref() != Some("Running") {
            continue;
        }
        let labels = pod.metadata.labels.unwrap_or_default();
        match labels.get("app").map(String::as_str) {
            Some("client") => (client_pod, client_node) = (Some(name.clone()), Some(node.clone())),
            Some("catalog") => catalog_node = Some(node.clone()),
            _ => {}
        }
        let entry = nodes.entry(node).or_insert_with(|| (status.host_ip.clone().unwrap_or_default(), Vec::new()));
        entry.1.push(format!("{NAMESPACE}/{name} {}", status.pod_ip.unwrap_or_default()));
    }
    Ok(ClusterView {
        nodes,
        client_pod: client_pod.context("no running client pod")?,
        client_node: client_node.context("the client pod's node")?,
        catalog_node: catalog_node.context("no running catalog pod")?,
        route_status,
    })
}

/// Each route's conditions as the controller wrote them (Gateway API `status.parents`).
async fn route_status(client: &kube::Client) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for kind in ["HTTPRoute", "GRPCRoute"] {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind);
        let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &ApiResource::from_gvk(&gvk));
        for route in routes.list(&ListParams::default()).await?.items {
            let conditions: Vec<String> = route.data["status"]["parents"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
                .map(|c| {
                    format!(
                        "{}={} ({})",
                        c["type"].as_str().unwrap_or(""),
                        c["status"].as_str().unwrap_or(""),
                        c["reason"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let name = route.metadata.name.unwrap_or_default();
            lines.push(format!("{kind} {NAMESPACE}/{name}: {}", conditions.join(", ")));
        }
    }
    lines.sort();
    Ok(lines)
}

/// Prints client summaries and proxy route metrics each interval until stopped.
fn report(
    args: &DemoArgs,
    rx: &mpsc::Receiver<(usize, Summary)>,
    names: &[&str],
    proxy: &ProxyAdmin,
) -> Result<(u64, u64)> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook_like::SIGINT, signal_hook_like::SIGTERM] {
        signal_hook_like::register(signal, stop.clone())?;
    }
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d + Duration::from_millis(500));
    let mut totals = (0u64, 0u64);
    let mut window: BTreeMap<usize, Summary> = BTreeMap::new();
    let mut last_print = Instant::now();
    let mut previous_routes = BTreeMap::new();
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            println!("\n  stopping");
            break;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            // A client's last summary can cover no request at all (it lands after the load
            // stopped): nothing to report.
            Ok((_, summary)) if summary.requests == 0 => {}
            Ok((index, summary)) => {
                totals.0 += summary.requests;
                totals.1 += summary.ok;
                window.insert(index, summary);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if window.len() == names.len()
            || (expired && !window.is_empty())
            || last_print.elapsed() > args.interval * 2 && !window.is_empty()
        {
            print_window(started.elapsed(), args.interval, names, &std::mem::take(&mut window));
            print_routes(proxy, &mut previous_routes);
            last_print = Instant::now();
        }
        if expired {
            break;
        }
    }
    Ok(totals)
}

fn print_window(elapsed: Duration, interval: Duration, names: &[&str], window: &BTreeMap<usize, Summary>) {
    println!(
        "\n  t={:>4.0}s  {:<16} {:>6} {:>8} {:>7} {:>9} {:>9}   ANSWERED BY",
        elapsed.as_secs_f64(),
        "CLIENT",
        "REQS",
        "SUCCESS",
        "RPS",
        "P50",
        "P99"
    );
    for (index, s) in window {
        let split: Vec<String> = s
            .by_pod
            .iter()
            .map(|(pod, n)| format!("{pod} {:.0}%", 100.0 * *n as f64 / s.requests.max(1) as f64))
            .collect();
        println!(
            "          {:<16} {:>6} {:>7.1}% {:>7.1} {:>7.2}ms {:>7.2}ms   {}",
            names.get(*index).copied().unwrap_or("?"),
            s.requests,
            100.0 * s.ok as f64 / s.requests.max(1) as f64,
            s.requests as f64 / interval.as_secs_f64(),
            s.p50_ms,
            s.p99_ms,
            split.join(", ")
        );
    }
}

/// Per-route request counts from the node proxy's /metrics, since the last report.
fn print_routes(proxy: &ProxyAdmin, previous: &mut BTreeMap<String, f64>) {
    let Some(metrics) = proxy.metrics() else { return };
    let mut current: BTreeMap<String, f64> = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("nodus_requests_total{")) {
        let label = |name: &str| crate::admin::label(line, name);
        let key = format!(
            "{} {} rule {} -> {} [{}]",
            label("route_kind"),
            label("route_name"),
            label("route_rule"),
            label("backend"),
            label("status_code")
        );
        *current.entry(key).or_default() += metric_value(line, "nodus_requests_total").unwrap_or(0.0);
    }
    println!("          {} proxy, by route (from its /metrics):", proxy.node);
    for (key, value) in &current {
        let delta = value - previous.get(key).copied().unwrap_or(0.0);
        if delta > 0.0 {
            println!("            {key:<70} {delta:>6.0}");
        }
    }
    *previous = current;
}

/// What the catalog's node proxy saw arrive through tunnels: mTLS or plaintext, and from whom.
fn print_inbound_security(proxy: &ProxyAdmin) {
    let Some(metrics) = proxy.metrics() else { return };
    println!("\n  {} proxy, tunnel streams received (from its /metrics):", proxy.node);
    for line in metrics.lines().filter(|l| l.starts_with("nodus_inbound_tunnels_total{")) {
        let label = |name: &str| crate::admin::label(line, name);
        let identity = label("client_identity");
        println!(
            "        {:<9} from {:<42} to {:<16} {:<20} {:>6.0}",
            label("tls"),
            if identity.is_empty() { "(unauthenticated)" } else { identity },
            label("destination"),
            label("result"),
            metric_value(line, "nodus_inbound_tunnels_total").unwrap_or(0.0)
        );
    }
}

/// Ctrl-C and SIGTERM set a flag (the demo's main loop polls it), so teardown always runs.
mod signal_hook_like {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};

    pub use nix::sys::signal::Signal::{SIGINT, SIGTERM};

    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

    extern "C" fn on_signal(_: nix::libc::c_int) {
        if let Some(flag) = FLAG.get() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    pub fn register(signal: nix::sys::signal::Signal, flag: Arc<AtomicBool>) -> anyhow::Result<()> {
        let _ = FLAG.set(flag);
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { nix::sys::signal::sigaction(signal, &action) }?;
        Ok(())
    }
}
