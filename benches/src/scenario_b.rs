//! Scenario B: two nodes, mutual TLS. A client pod on node-1 loads an nginx backend pod on
//! node-2 directly, and through the full Nodus path: eBPF redirect → node-1 proxy → HTTP/2
//! CONNECT over mutual TLS 1.3 (X25519MLKEM768) → node-2 proxy → pod. The controller runs in
//! standalone mode and issues the workload certificates, as in a cluster.

use crate::{median_range, oha, process_tree_cpu_seconds, process_tree_peak_rss_mib, wrk, Args, Measure, BACKEND_PORT};
use anyhow::{Context, Result};
use nodus_harness::{ConfigSource, Lab, LabSpec};
use std::fmt::Write as _;
use std::path::Path;
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
pub fn run(args: &Args, proxy_binary: &Path) -> Result<String> {
    let controller_binary = proxy_binary.with_file_name("nodus-controller");
    anyhow::ensure!(controller_binary.exists(), "{} not found: build nodus-controller", controller_binary.display());
    let mut lab = Lab::new(LabSpec { nodes: 2 })?;
    let client_plain = lab.add_pod("node-1", "plain", "client")?; // 10.244.1.2
    let client_mesh = lab.add_pod("node-1", "demo", "client")?; // 10.244.1.3
    let backend = lab.add_pod("node-2", "bench", "backend")?; // 10.244.2.2
    let node1 = lab.node("node-1").context("node-1")?.clone();
    let node2 = lab.node("node-2").context("node-2")?.clone();
    let work = lab.work_dir()?;
    let _backend = crate::start_nginx_backend(&backend, &work)?;
    let dir = work.join("manifests");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.yaml"), manifests(&backend.ip.to_string(), &client_mesh.ip.to_string()))?;
    let (_controller, url) = lab.start_controller(&node1, &controller_binary, &dir, &work.join("status.yaml"), &[])?;
    let proxy1 =
        lab.start_node_proxy(&node1, proxy_binary, ConfigSource::Controller(url.clone()), &["--workers", "1"])?;
    let proxy2 = lab.start_node_proxy(&node2, proxy_binary, ConfigSource::Controller(url), &["--workers", "1"])?;
    proxy1.wait_for_metric("nodus_redirect_enrolled_pods", 1.0, Duration::from_secs(15))?;
    proxy1.wait_for_metric("nodus_workload_certificates_issued_total", 1.0, Duration::from_secs(15))?;
    proxy2.wait_for_metric("nodus_workload_certificates_issued_total", 1.0, Duration::from_secs(15))?;
    let pids = [proxy1.process.id(), proxy2.process.id()];

    let mut direct = Vec::new();
    let mut nodus = Vec::new();
    for round in 1..=args.rounds {
        for (name, pod, target, measures) in [
            ("direct", &client_plain, format!("{}:{BACKEND_PORT}", backend.ip), &mut direct),
            ("Nodus mTLS", &client_mesh, format!("{SERVICE_VIP}:80"), &mut nodus),
        ] {
            eprintln!("scenario B round {round}/{}: {name}", args.rounds);
            let cpu_before: f64 = pids.iter().map(|p| process_tree_cpu_seconds(*p)).sum::<Result<f64>>()?;
            let (rps, closed) = wrk(pod, &target, args)?;
            let (p50, p99, p999, fixed) = oha(pod, &target, args)?;
            let cpu_after: f64 = pids.iter().map(|p| process_tree_cpu_seconds(*p)).sum::<Result<f64>>()?;
            let proxies = name != "direct";
            measures.push(Measure {
                closed_loop_rps: rps,
                p50_ms: p50,
                p99_ms: p99,
                p999_ms: p999,
                cpu_s_per_10k: proxies.then(|| (cpu_after - cpu_before) / (closed + fixed) * 10_000.0),
                rss_mib: if proxies {
                    Some(pids.iter().map(|p| process_tree_peak_rss_mib(*p)).sum::<Result<f64>>()?)
                } else {
                    None
                },
            });
        }
    }
    let (_, metrics) = proxy2.admin_get("/metrics")?;
    anyhow::ensure!(
        metrics.contains(r#"tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/client""#),
        "the Nodus runs did not arrive over mTLS"
    );
    drop((proxy1, proxy2));
    lab.teardown()?;
    Ok(render(args, &mut direct, &mut nodus))
}

fn render(args: &Args, direct: &mut [Measure], nodus: &mut [Measure]) -> String {
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
         per proxy. Same load as scenario A. CPU and RSS: both proxies together.\n"
    );
    let _ = writeln!(out, "| path | closed loop req/s | p50 / p99 / p99.9 at {} req/s (ms) | proxies CPU-s per 10k req | proxies peak RSS (MiB) |", args.rate);
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (name, m) in [("direct (no proxy)", &mut *direct), ("Nodus, two hops, mTLS", &mut *nodus)] {
        let (rps, lo, hi) = pick(m, &|x| Some(x.closed_loop_rps));
        let (p50, ..) = pick(m, &|x| Some(x.p50_ms));
        let (p99, p99_lo, p99_hi) = pick(m, &|x| Some(x.p99_ms));
        let (p999, ..) = pick(m, &|x| Some(x.p999_ms));
        let (cpu, ..) = pick(m, &|x| x.cpu_s_per_10k);
        let (rss, ..) = pick(m, &|x| x.rss_mib);
        let cpu = if cpu.is_nan() { "-".to_string() } else { format!("{cpu:.3}") };
        let rss = if rss.is_nan() { "-".to_string() } else { format!("{rss:.1}") };
        let _ = writeln!(out, "| {name} | {rps:.0} [{lo:.0}-{hi:.0}] | {p50:.2} / {p99:.2} [{p99_lo:.2}-{p99_hi:.2}] / {p999:.2} | {cpu} | {rss} |");
    }
    let fraction = pick(nodus, &|x| Some(x.closed_loop_rps)).0 / pick(direct, &|x| Some(x.closed_loop_rps)).0;
    let added_p99 = pick(nodus, &|x| Some(x.p99_ms)).0 - pick(direct, &|x| Some(x.p99_ms)).0;
    let _ = writeln!(
        out,
        "\nThroughput as a fraction of direct: **{fraction:.2}x** (target >= 0.52x: 1.2x ztunnel's two-hop HBONE, 35k of ~81k, \
         L4 only). Added p99 at {} req/s: **{added_p99:+.2} ms** (target <= 1 ms).",
        args.rate
    );
    out
}
