//! `nodusctl demo`: the local mesh on one machine.
//!
//! Builds a two-node lab (network namespaces, veths, cgroups), starts a real node proxy on each
//! node with the real eBPF redirect, runs the echo workload in pods on both nodes, and drives
//! HTTP and gRPC traffic from client processes in a client pod — captured by eBPF like any
//! application. The controller runs in standalone mode on a directory of Kubernetes manifests
//! (`examples/local-mesh/`: the namespace label, pods, Services, EndpointSlices, an HTTPRoute
//! and a GRPCRoute; copied so it can be edited live) and pushes each node proxy its config over
//! gRPC. It shows the routes' status as the controller wrote it, then reports, per interval, which pods answered, success rate,
//! rate and latency as the clients saw them, and per route what the node proxy's own metrics say.
//! Everything is torn down on Ctrl-C, SIGTERM, after `--duration`, or if anything fails.

use anyhow::{bail, Context, Result};
use clap::Args;
use nodus_harness::{metric_value, start_echo, ConfigSource, Lab, LabSpec, NodeProxy, Process};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Options of `nodusctl demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop after this long (e.g. `10s`, `2m`); without it the demo runs until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Time between reports.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    interval: Duration,
    /// Requests per second of each client (one HTTP, one gRPC).
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// The manifests directory the controller reads and watches (default: a copy of
    /// examples/local-mesh, whose path is printed so you can edit it while the demo runs).
    #[arg(long)]
    manifests: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    nodus_config::parse_gateway_duration(text)
}

/// The example manifests, built into the binary so the demo runs from any directory.
const EXAMPLE_MANIFESTS: [(&str, &str); 3] = [
    ("cluster.yaml", include_str!("../../examples/local-mesh/cluster.yaml")),
    ("routes.yaml", include_str!("../../examples/local-mesh/routes.yaml")),
    ("catalog.yaml", include_str!("../../examples/local-mesh/catalog.yaml")),
];

/// Pods, in creation order (their IPs are fixed by it): (node, namespace, name, echo server).
const PODS: [(&str, &str, &str, bool); 4] = [
    ("node-1", "demo", "client", false),
    ("node-1", "demo", "echo-v2-0", true),
    ("node-2", "demo", "echo-v1-0", true),
    ("node-2", "demo", "catalog-0", true),
];
const ECHO_SERVICE: &str = "10.96.0.10";
const CATALOG_SERVICE: &str = "10.96.0.20";

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

/// One client's summary line (see `nodus-echo-client`).
#[derive(serde::Deserialize, Debug, Default)]
struct Summary {
    requests: u64,
    ok: u64,
    by_pod: BTreeMap<String, u64>,
    p50_ms: f64,
    p99_ms: f64,
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    if let Some(reason) = nodus_harness::check_support().err() {
        bail!("the local mesh cannot run here: {reason}");
    }
    let proxy_binary = sibling_binary("nodus-proxy")?;
    let controller_binary = sibling_binary("nodus-controller")?;
    let echo_binary = sibling_binary("nodus-echo")?;
    let client_binary = sibling_binary("nodus-echo-client")?;

    println!("Nodus local mesh");
    let started = step("[1/5] building the lab: 2 nodes, 4 pods");
    let mut lab = Lab::new(LabSpec { nodes: 2 }).context("building the lab")?;
    let mut pods = Vec::new();
    for (node, namespace, name, _) in PODS {
        pods.push(lab.add_pod(node, namespace, name).with_context(|| format!("adding pod {namespace}/{name}"))?);
    }
    done(started);
    for node in lab.nodes() {
        let here: Vec<String> = pods
            .iter()
            .filter(|p| p.node == node.name)
            .map(|p| format!("{}/{} {}", p.namespace, p.name, p.ip))
            .collect();
        println!("        {} ({})  {}", node.name, node.ip, here.join(", "));
    }

    let manifests = match &args.manifests {
        Some(dir) => dir.clone(),
        None => {
            let dir = lab.work_dir()?.join("manifests");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, text) in EXAMPLE_MANIFESTS {
                let path = dir.join(name);
                std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            }
            dir
        }
    };
    let status_file = lab.work_dir()?.join("route-status.yaml");
    let started = step("[2/5] starting the controller (standalone mode, reading the manifests)");
    let controller_node = lab.nodes().first().context("the lab has nodes")?;
    let (controller, controller_url) = lab
        .start_controller(controller_node, &controller_binary, &manifests, &status_file, &[])
        .context("starting the controller")?;
    done(started);

    let started = step("[3/5] starting a node proxy with the eBPF redirect on each node");
    let mut proxies: Vec<NodeProxy> = Vec::new();
    for node in lab.nodes() {
        proxies.push(
            lab.start_node_proxy(node, &proxy_binary, ConfigSource::Controller(controller_url.clone()), &[])
                .with_context(|| format!("proxy on {}", node.name))?,
        );
    }
    // Mesh pods are captured once their proxy has found them.
    proxies[0].wait_for_metric("nodus_redirect_enrolled_pods", 2.0, Duration::from_secs(15))?;
    done(started);

    let started = step("[4/5] starting the echo workload (HTTP/1.1, HTTP/2, gRPC) in its pods");
    let mut servers: Vec<Process> = Vec::new();
    for (pod, (_, _, _, is_server)) in pods.iter().zip(PODS) {
        if is_server {
            servers.push(start_echo(pod, &echo_binary, &[8080, 9090])?);
        }
    }
    done(started);

    print_route_status(&status_file);

    let client = &pods[0];
    println!(
        "  [5/5] traffic from {}/{} on {} to Service demo/echo ({ECHO_SERVICE}), {} req/s per client",
        client.namespace, client.name, client.node, args.rate
    );
    println!("        HTTP:  HTTPRoute demo/echo-split (weights v1 80 / v2 20)");
    println!("        gRPC:  GRPCRoute demo/echo-by-method (EchoTwo -> v2, rest -> v1), method alternating");
    println!("        HTTP:  HTTPRoute demo/catalog ({CATALOG_SERVICE}): retries, 1 s timeout; only the client's identity allowed");
    println!("        path:  client pod -> eBPF connect4 -> node-1 proxy -> pod on node-1, or");
    println!("               -> HTTP/2 CONNECT tunnel -> node-2 proxy (inbound :15008) -> pod on node-2");
    // node-1 holds client's and echo's certificates, node-2 echo's and catalog's.
    let issued = proxies[0]
        .wait_for_metric("nodus_workload_certificates_issued_total", 2.0, Duration::from_secs(10))
        .and_then(|_| {
            proxies[1].wait_for_metric("nodus_workload_certificates_issued_total", 2.0, Duration::from_secs(10))
        })
        .map(|_| "issued")
        .unwrap_or("not issued yet");
    println!("        identity: workload certificates (SPIFFE) from the controller's CA: {issued} on both nodes");
    println!("        mTLS:  node-to-node tunnels are mutual TLS 1.3 (X25519MLKEM768), source workload's certificate");
    println!("        edit   {}   to shift the split live", manifests.join("routes.yaml").display());

    let duration_secs = args.duration.map_or(86_400.0, |d| d.as_secs_f64());
    let report_every = args.interval.as_secs_f64().to_string();
    let rate = args.rate.to_string();
    let duration = duration_secs.to_string();
    let echo_http = format!("{ECHO_SERVICE}:80");
    let echo_grpc = format!("{ECHO_SERVICE}:9090");
    let catalog_http = format!("{CATALOG_SERVICE}:80");
    let streams: [(&str, &str, Vec<&str>); 4] = [
        ("HTTP/1.1 echo", &echo_http, vec!["--protocol", "h1", "--host", "echo.demo.svc"]),
        ("gRPC Echo", &echo_grpc, vec!["--protocol", "grpc", "--grpc-method", "Echo"]),
        ("gRPC EchoTwo", &echo_grpc, vec!["--protocol", "grpc", "--grpc-method", "EchoTwo"]),
        ("HTTP/1.1 catalog", &catalog_http, vec!["--protocol", "h1", "--host", "catalog.demo.svc"]),
    ];
    let (tx, rx) = mpsc::channel::<(usize, Summary)>();
    let mut clients = Vec::new();
    for (index, (_, target, extra)) in streams.iter().enumerate() {
        let mut command = client.command(&client_binary)?;
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

    let totals = report(&args, &rx, &streams.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(), &proxies[0])?;
    for mut child in clients {
        let _ = child.kill();
        let _ = child.wait();
    }
    print_inbound_security(&proxies[1]);
    drop(servers);
    drop(proxies);
    drop(controller);
    lab.teardown().context("tearing down the lab")?;
    println!(
        "\n  {} requests, {} succeeded ({:.2}%); lab torn down.",
        totals.0,
        totals.1,
        if totals.0 == 0 { 0.0 } else { 100.0 * totals.1 as f64 / totals.0 as f64 }
    );
    Ok(if totals.1 > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Prints each route's conditions as the controller wrote them (Gateway API `status.parents`).
fn print_route_status(status_file: &std::path::Path) {
    let document: Option<serde_json::Value> =
        std::fs::read_to_string(status_file).ok().and_then(|text| serde_norway::from_str(&text).ok());
    let Some(routes) = document.as_ref().and_then(|d| d["routes"].as_array()) else {
        println!("        status: not written yet ({})", status_file.display());
        return;
    };
    for route in routes {
        let conditions: Vec<String> = route["status"]["parents"]
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
        println!(
            "        status {} {}/{}: {}",
            route["kind"].as_str().unwrap_or(""),
            route["namespace"].as_str().unwrap_or(""),
            route["name"].as_str().unwrap_or(""),
            conditions.join(", ")
        );
    }
}

/// Prints client summaries and proxy route metrics each interval until stopped.
fn report(
    args: &DemoArgs,
    rx: &mpsc::Receiver<(usize, Summary)>,
    names: &[&str],
    proxy: &NodeProxy,
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
        "\n  t={:>4.0}s  {:<14} {:>6} {:>8} {:>7} {:>9} {:>9}   ANSWERED BY",
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
            "          {:<14} {:>6} {:>7.1}% {:>7.1} {:>7.2}ms {:>7.2}ms   {}",
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
fn print_routes(proxy: &NodeProxy, previous: &mut BTreeMap<String, f64>) {
    let Ok((200, metrics)) = proxy.admin_get("/metrics") else { return };
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
    println!("          node-1 proxy, by route (from its /metrics):");
    for (key, value) in &current {
        let delta = value - previous.get(key).copied().unwrap_or(0.0);
        if delta > 0.0 {
            println!("            {key:<70} {delta:>6.0}");
        }
    }
    *previous = current;
}

/// What node-2's proxy saw arrive through tunnels: mTLS or plaintext, and from whom.
fn print_inbound_security(proxy: &NodeProxy) {
    let Ok((200, metrics)) = proxy.admin_get("/metrics") else { return };
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
