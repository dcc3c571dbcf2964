//! Scenario B: two nodes, mutual TLS. A client pod on node-1 loads an nginx backend pod on
//! node-2 directly, and through the full Nodus path: eBPF redirect → node-1 proxy → HTTP/2
//! CONNECT over mutual TLS 1.3 (X25519MLKEM768) → node-2 proxy → pod. The controller runs in
//! standalone mode and issues the workload certificates, as in a cluster.

use crate::procfs::{process_tree_cpu, process_tree_cpu_seconds, process_tree_peak_rss_mib, CpuTime};
use crate::scenario_a::Measure;
use crate::tools::{oha, wrk};
use crate::{median_range, Args, BACKEND_PORT};
use anyhow::{Context, Result};
use nodus_harness::{ConfigSource, Lab, LabSpec};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const SERVICE_VIP: &str = "10.96.0.20";

fn manifests(backend_ip: &str, client_ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{ name: bench, labels: {{ nodus.dev/mesh: enabled }} }}
---
apiVersion: v1
kind: Namespace
metadata: {{ name: demo, labels: {{ nodus.dev/mesh: enabled }} }}
---
apiVersion: v1
kind: Pod
metadata: {{ name: client, namespace: demo }}
spec: {{ nodeName: node-1, serviceAccountName: client, containers: [{{ name: c, image: c }}] }}
status: {{ phase: Running, hostIP: 10.100.0.11, podIP: {client_ip} }}
---
apiVersion: v1
kind: Pod
metadata: {{ name: backend, namespace: bench }}
spec: {{ nodeName: node-2, serviceAccountName: backend, containers: [{{ name: b, image: b }}] }}
status: {{ phase: Running, hostIP: 10.100.0.12, podIP: {backend_ip} }}
---
apiVersion: v1
kind: Service
metadata: {{ name: backend, namespace: bench }}
spec: {{ clusterIP: {SERVICE_VIP}, ports: [{{ name: http, port: 80, targetPort: {BACKEND_PORT}, appProtocol: http }}] }}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{ name: backend-1, namespace: bench, labels: {{ kubernetes.io/service-name: backend }} }}
addressType: IPv4
ports: [{{ name: http, port: {BACKEND_PORT} }}]
endpoints: [{{ addresses: [{backend_ip}], nodeName: node-2, targetRef: {{ kind: Pod, namespace: bench, name: backend }} }}]
"#
    )
}

/// Runs scenario B; returns its markdown section.
pub fn run(args: &Args, proxy_binary: &Path) -> Result<(String, Vec<(String, f64)>)> {
    let controller_binary = proxy_binary.with_file_name("nodus-controller");
    anyhow::ensure!(controller_binary.exists(), "{} not found: build nodus-controller", controller_binary.display());
    let mut lab = Lab::new(LabSpec { nodes: 2 })?;
    let client_plain = lab.add_pod("node-1", "plain", "client")?; // 10.244.1.2
    let client_mesh = lab.add_pod("node-1", "demo", "client")?; // 10.244.1.3
    let backend = lab.add_pod("node-2", "bench", "backend")?; // 10.244.2.2

    // The direct baseline's backend: the same nginx in a namespace outside the mesh, since
    // plaintext to a mesh pod's address is captured on its way in (measured as its own row).
    let backend_plain = lab.add_pod("node-2", "plain", "backend")?; // 10.244.2.3
    let node1 = lab.node("node-1").context("node-1")?.clone();
    let node2 = lab.node("node-2").context("node-2")?.clone();
    let work = lab.work_dir()?;
    let _backend = crate::tools::start_nginx_backend(&backend, &work)?;
    let _backend_plain = crate::tools::start_nginx_backend(&backend_plain, &work.join("plain"))?;
    let dir = work.join("manifests");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.yaml"), manifests(&backend.ip.to_string(), &client_mesh.ip.to_string()))?;
    let ca_dir = work.join("ca");
    let ca_arg = ca_dir.to_string_lossy().into_owned();
    let (_controller, url) =
        lab.start_controller(&node1, &controller_binary, &dir, &work.join("status.yaml"), &["--ca-dir", &ca_arg])?;
    let proxy1 =
        lab.start_node_proxy(&node1, proxy_binary, ConfigSource::Controller(url.clone()), &["--workers", "1"])?;
    let proxy2 = lab.start_node_proxy(&node2, proxy_binary, ConfigSource::Controller(url), &["--workers", "1"])?;
    proxy1.wait_for_metric("nodus_redirect_enrolled_pods", 1.0, Duration::from_secs(15))?;
    proxy1.wait_for_metric("nodus_workload_certificates_issued_total", 1.0, Duration::from_secs(15))?;
    proxy2.wait_for_metric("nodus_workload_certificates_issued_total", 1.0, Duration::from_secs(15))?;
    let pids = [proxy1.process.id(), proxy2.process.id()];

    let mut direct = Vec::new();
    let mut nodus = Vec::new();
    let mut captured = Vec::new();
    for round in 1..=args.rounds {
        for (name, pod, target, measures) in [
            ("direct", &client_plain, format!("{}:{BACKEND_PORT}", backend_plain.ip), &mut direct),
            ("Nodus mTLS", &client_mesh, format!("{SERVICE_VIP}:80"), &mut nodus),
            ("inbound capture", &client_plain, format!("{}:{BACKEND_PORT}", backend.ip), &mut captured),
        ] {
            eprintln!("scenario B round {round}/{}: {name}", args.rounds);
            let cpu_before = proxies_cpu(&pids)?;
            let (rps, closed) = wrk(pod, &target, args)?;
            let (p50, p99, p999, fixed) = oha(pod, &target, args, args.rate)?;
            let (low50, low99, low999, low_fixed) = oha(pod, &target, args, args.low_rate)?;
            let fixed = fixed + low_fixed;
            let used = proxies_cpu(&pids)?.since(&cpu_before);
            let proxies = name != "direct";
            measures.push(Measure {
                closed_loop_rps: rps,
                p50_ms: p50,
                p99_ms: p99,
                p999_ms: p999,
                low_rate_ms: (low50, low99, low999),
                new_connection_rps: f64::NAN,
                cpu_s_per_10k: proxies.then(|| used.total() / (closed + fixed) * 10_000.0),
                cpu_user_share: proxies.then(|| used.user_seconds / used.total()),
                rss_mib: if proxies {
                    Some(pids.iter().map(|p| process_tree_peak_rss_mib(*p)).sum::<Result<f64>>()?)
                } else {
                    None
                },
            });
        }
    }
    let churn = churn_rounds(
        args,
        &node1,
        &node2,
        &ca_dir,
        pids[1],
        (&client_plain, &client_mesh),
        (&backend_plain, &backend),
    )?;
    let (_, metrics) = proxy2.admin_get("/metrics")?;
    anyhow::ensure!(
        metrics.contains(r#"tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/client""#),
        "the Nodus runs did not arrive over mTLS"
    );
    anyhow::ensure!(
        nodus_harness::metric_value(&metrics, "nodus_redirect_inbound_captured_total").unwrap_or(0.0) > 0.0,
        "the inbound capture runs were not captured"
    );
    drop((proxy1, proxy2));
    lab.teardown()?;
    let fraction = {
        let mut d: Vec<f64> = direct.iter().map(|m| m.closed_loop_rps).collect();
        let mut n: Vec<f64> = nodus.iter().map(|m| m.closed_loop_rps).collect();
        median_range(&mut n).0 / median_range(&mut d).0
    };
    let text = render(args, &mut direct, &mut nodus, &mut captured) + &render_churn(churn);
    Ok((text, vec![("B: Nodus L7, two nodes, mTLS".to_string(), fraction)]))
}

/// Churn measures per round: baseline and Nodus handshakes/s, node-2 proxy CPU-s per 1k
/// handshakes, direct and Nodus requests/s with a new connection each.
struct ChurnRound {
    rustls_hps: f64,
    rustls_cpu_per_1k: f64,
    nodus_hps: f64,
    nodus_cpu_per_1k: f64,
    direct_new_conn_rps: f64,
    nodus_new_conn_rps: f64,
    /// A client outside the mesh to the mesh backend's address: inbound capture.
    captured_new_conn_rps: f64,
}

fn churn_rounds(
    args: &Args,
    node1: &nodus_harness::Node,
    node2: &nodus_harness::Node,
    ca_dir: &Path,
    proxy2_pid: u32,
    (client_plain, client_mesh): (&nodus_harness::Pod, &nodus_harness::Pod),
    (backend_plain, backend): (&nodus_harness::Pod, &nodus_harness::Pod),
) -> Result<Vec<ChurnRound>> {
    use nodus_identity::SpiffeId;
    use std::sync::atomic::{AtomicBool, Ordering};
    let credentials = crate::churn::ChurnCredentials::load(
        ca_dir,
        SpiffeId::new("cluster.local", "demo", "client"),
        SpiffeId::new("cluster.local", "bench", "backend"),
    )?;
    let baseline_addr = std::net::SocketAddr::from((node2.ip, 15108));
    let stop = Arc::new(AtomicBool::new(false));
    let server = crate::churn::start_baseline_server(node2.netns(), baseline_addr, &credentials, stop.clone())?;
    let proxy_addr = std::net::SocketAddr::from((node2.ip, nodus_harness::PROXY_INBOUND_PORT));
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("scenario B churn round {round}/{}", args.rounds);
        let thread_before = crate::churn::thread_cpu_seconds(server.tid)?;
        let started = std::time::Instant::now();
        let rustls_hps = crate::churn::handshake_rate(node1.netns(), baseline_addr, &credentials, args.seconds)?;
        let rustls_cpu_per_1k = (crate::churn::thread_cpu_seconds(server.tid)? - thread_before)
            / (rustls_hps * started.elapsed().as_secs_f64())
            * 1000.0;
        let cpu_before = process_tree_cpu_seconds(proxy2_pid)?;
        let started = std::time::Instant::now();
        let nodus_hps = crate::churn::handshake_rate(node1.netns(), proxy_addr, &credentials, args.seconds)?;
        let handshakes = nodus_hps * started.elapsed().as_secs_f64();
        let nodus_cpu_per_1k = (process_tree_cpu_seconds(proxy2_pid)? - cpu_before) / handshakes * 1000.0;
        let direct_new_conn_rps = crate::churn::new_connection_rps(
            client_plain,
            &format!("{}:{BACKEND_PORT}", backend_plain.ip),
            args.seconds,
        )?;
        let captured_new_conn_rps =
            crate::churn::new_connection_rps(client_plain, &format!("{}:{BACKEND_PORT}", backend.ip), args.seconds)?;
        let nodus_new_conn_rps =
            crate::churn::new_connection_rps(client_mesh, &format!("{SERVICE_VIP}:80"), args.seconds)?;
        rounds.push(ChurnRound {
            rustls_hps,
            rustls_cpu_per_1k,
            nodus_hps,
            nodus_cpu_per_1k,
            direct_new_conn_rps,
            nodus_new_conn_rps,
            captured_new_conn_rps,
        });
    }
    stop.store(true, Ordering::Relaxed);
    let _ = server.handle.join();
    Ok(rounds)
}

fn render_churn(rounds: Vec<ChurnRound>) -> String {
    let pick = |f: &dyn Fn(&ChurnRound) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        median_range(&mut v)
    };
    let (rustls, rustls_lo, rustls_hi) = pick(&|r| r.rustls_hps);
    let (nodus, nodus_lo, nodus_hi) = pick(&|r| r.nodus_hps);
    let (cpu, cpu_lo, cpu_hi) = pick(&|r| r.nodus_cpu_per_1k);
    let (rustls_cpu, rustls_cpu_lo, rustls_cpu_hi) = pick(&|r| r.rustls_cpu_per_1k);
    let cpu_ratio = pick(&|r| r.nodus_cpu_per_1k / r.rustls_cpu_per_1k).0;
    let (direct, direct_lo, direct_hi) = pick(&|r| r.direct_new_conn_rps);
    let (churned, churned_lo, churned_hi) = pick(&|r| r.nodus_new_conn_rps);
    let ratio = pick(&|r| r.nodus_hps / r.rustls_hps).0;
    let churn_ratio = pick(&|r| r.nodus_new_conn_rps / r.direct_new_conn_rps).0;
    let (captured, captured_lo, captured_hi) = pick(&|r| r.captured_new_conn_rps);
    let captured_ratio = pick(&|r| r.captured_new_conn_rps / r.direct_new_conn_rps).0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "
### Scenario B under connection churn
"
    );
    let _ = writeln!(
        out,
        "mTLS handshakes/s accepted on node-2 (16 clients on node-1, full TLS 1.3 handshake with client certificate and \
         X25519MLKEM768, no resumption, then close), against a bare tokio-rustls server with the same config on one \
         thread; and requests/s with a new connection per request (`oha --disable-keepalive -c 16`). The handshake \
         clients share the 2 cores with the server, so handshakes/s is bounded by them too: the server's CPU per \
         handshake is the comparable cost.\n"
    );
    let _ = writeln!(out, "| measure | baseline | Nodus | ratio |");
    let _ = writeln!(out, "|---|---|---|---|");
    let _ = writeln!(
        out,
        "| server CPU-s per 1k mTLS handshakes | {rustls_cpu:.3} [{rustls_cpu_lo:.3}-{rustls_cpu_hi:.3}] (bare rustls thread) | {cpu:.3} [{cpu_lo:.3}-{cpu_hi:.3}] (node-2 proxy process) | **{cpu_ratio:.2}x** |"
    );
    let _ = writeln!(
        out,
        "| mTLS handshakes/s at node-2 | {rustls:.0} [{rustls_lo:.0}-{rustls_hi:.0}] (bare rustls) | {nodus:.0} [{nodus_lo:.0}-{nodus_hi:.0}] (proxy) | **{ratio:.2}x** |"
    );
    let _ = writeln!(
        out,
        "| req/s, new connection each | {direct:.0} [{direct_lo:.0}-{direct_hi:.0}] (direct) | {churned:.0} [{churned_lo:.0}-{churned_hi:.0}] (two hops, mTLS) | **{churn_ratio:.2}x** |"
    );
    let _ = writeln!(
        out,
        "| req/s, new connection each, client outside the mesh | {direct:.0} (direct) | {captured:.0} [{captured_lo:.0}-{captured_hi:.0}] (inbound capture, one proxy) | **{captured_ratio:.2}x** |"
    );
    out
}

fn render(args: &Args, direct: &mut [Measure], nodus: &mut [Measure], captured: &mut [Measure]) -> String {
    let pick = |m: &mut [Measure], f: &dyn Fn(&Measure) -> Option<f64>| {
        let mut v: Vec<f64> = m.iter().filter_map(f).collect();
        median_range(&mut v)
    };
    let mut out = String::new();
    let _ = writeln!(out, "\n## Scenario B: two nodes, mutual TLS\n");
    let _ = writeln!(
        out,
        "Client pod on node-1, nginx backend pod on node-2. Nodus: eBPF redirect -> node-1 proxy -> HTTP/2 CONNECT over \
         mTLS 1.3 (X25519MLKEM768, workload certificates from the controller's CA) -> node-2 proxy -> pod; one worker \
         per proxy. Same load as scenario A. CPU and RSS: both proxies together. Inbound capture: the plain client \
         dials the mesh backend pod's address; node-2's TC program hands the connection to its proxy, which serves \
         it (permissive namespace, HTTP) and forwards it to the pod. Direct: the same nginx in a pod outside the mesh.\n"
    );
    let _ = writeln!(out, "| path | closed loop req/s | p50 / p99 / p99.9 at {} req/s (ms) | p50 / p99 / p99.9 at {} req/s (ms) | proxies CPU-s per 10k req | proxies peak RSS (MiB) |", args.rate, args.low_rate);
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (name, m) in [
        ("direct (no proxy)", &mut *direct),
        ("Nodus, two hops, mTLS", &mut *nodus),
        ("inbound capture (client outside the mesh -> node-2 proxy -> pod)", &mut *captured),
    ] {
        let (rps, lo, hi) = pick(m, &|x| Some(x.closed_loop_rps));
        let (p50, ..) = pick(m, &|x| Some(x.p50_ms));
        let (p99, p99_lo, p99_hi) = pick(m, &|x| Some(x.p99_ms));
        let (p999, ..) = pick(m, &|x| Some(x.p999_ms));
        let (low50, ..) = pick(m, &|x| Some(x.low_rate_ms.0));
        let (low99, ..) = pick(m, &|x| Some(x.low_rate_ms.1));
        let (low999, ..) = pick(m, &|x| Some(x.low_rate_ms.2));
        let (cpu, ..) = pick(m, &|x| x.cpu_s_per_10k);
        let (rss, ..) = pick(m, &|x| x.rss_mib);
        let (user_share, ..) = pick(m, &|x| x.cpu_user_share);
        let cpu = if cpu.is_nan() { "-".to_string() } else { format!("{cpu:.3} ({:.0} % user)", user_share * 100.0) };
        let rss = if rss.is_nan() { "-".to_string() } else { format!("{rss:.1}") };
        let _ = writeln!(out, "| {name} | {rps:.0} [{lo:.0}-{hi:.0}] | {p50:.2} / {p99:.2} [{p99_lo:.2}-{p99_hi:.2}] / {p999:.2} | {low50:.2} / {low99:.2} / {low999:.2} | {cpu} | {rss} |");
    }
    let fraction = pick(nodus, &|x| Some(x.closed_loop_rps)).0 / pick(direct, &|x| Some(x.closed_loop_rps)).0;
    let added_p99 = pick(nodus, &|x| Some(x.p99_ms)).0 - pick(direct, &|x| Some(x.p99_ms)).0;
    let added_p99_low = pick(nodus, &|x| Some(x.low_rate_ms.1)).0 - pick(direct, &|x| Some(x.low_rate_ms.1)).0;
    let captured_fraction =
        pick(captured, &|x| Some(x.closed_loop_rps)).0 / pick(direct, &|x| Some(x.closed_loop_rps)).0;
    let captured_p99 = pick(captured, &|x| Some(x.p99_ms)).0 - pick(direct, &|x| Some(x.p99_ms)).0;
    let _ = writeln!(
        out,
        "\nInbound capture alone (one proxy, no TLS): {captured_fraction:.2}x direct throughput, added p99 at {} req/s \
         {captured_p99:+.2} ms.",
        args.rate
    );
    let _ = writeln!(
        out,
        "\nThroughput as a fraction of direct: **{fraction:.2}x** (target >= 0.52x: 1.2x ztunnel's two-hop HBONE, 35k of ~81k, \
         L4 only): {}. Added p99 at {} req/s: **{added_p99:+.2} ms** (target <= 1 ms): {}; at {} req/s: {added_p99_low:+.2} ms.",
        crate::verdict(fraction >= 0.52),
        args.rate,
        crate::verdict(added_p99 <= 1.0),
        args.low_rate
    );
    out
}

/// CPU time both node proxies have used.
fn proxies_cpu(pids: &[u32]) -> Result<CpuTime> {
    pids.iter().try_fold(CpuTime::default(), |sum, pid| Ok(sum + process_tree_cpu(*pid)?))
}
