//! `nodus-bench`: Nodus side by side with direct traffic and real peers, in one run.
//!
//! Scenario A (one node, plaintext L7): a client pod loads a backend pod (nginx answering 12
//! bytes, as in the peer table of shared/README.md) four ways — directly; through Nodus (the
//! client pod is enrolled, so eBPF captures its connections into the node proxy); through nginx
//! and through haproxy from Debian, each a reverse proxy in the node's namespace with one worker
//! and upstream keep-alive, as equivalent as their configs allow. Contenders are interleaved
//! (A B C D, A B C D, ...) so that machine noise hits them alike; medians and ranges are
//! reported, and only ratios within this run are meant to be compared.
//!
//! Per contender and round: closed-loop throughput (wrk, 2 threads, 50 connections); latency at
//! a fixed rate with coordinated-omission correction (oha `-q --latency-correction`); proxy CPU
//! seconds per 10k requests (from /proc); proxy peak RSS.

mod attacks;
mod chart;
mod churn;
mod scenario_b;
mod scenario_c;

use anyhow::{bail, Context, Result};
use clap::Parser;
use nodus_harness::{Lab, LabSpec, Pod, Process};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Benchmarks Nodus against direct traffic, nginx and haproxy.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Rounds; each runs every contender once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of each closed-loop and each fixed-rate run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Fixed request rate for the latency runs.
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    /// A second, lower fixed rate for the latency runs.
    #[arg(long, default_value_t = 1000)]
    low_rate: u32,
    /// Connections of the load generators.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Which scenarios to run: `a` (one node, plaintext, peers), `b` (two nodes, mTLS), `c`
    /// (HTTP/2 and gRPC), `attacks` (memory and service under hostile clients).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,attacks")]
    scenarios: Vec<String>,
    /// Where to write results (results.md, results.json).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

const SERVICE_VIP: &str = "10.96.0.10";
const BACKEND_PORT: u16 = 8080;
const NGINX_PROXY_PORT: u16 = 8081;
const HAPROXY_PORT: u16 = 8082;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Contender {
    Direct,
    NodusL4,
    Nodus,
    Nginx,
    Haproxy,
}

impl Contender {
    const ALL: [Contender; 5] =
        [Contender::Direct, Contender::NodusL4, Contender::Nodus, Contender::Nginx, Contender::Haproxy];
    fn short_name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::NodusL4 => "Nodus L4 (redirect + relay)",
            Contender::Nodus => "Nodus L7",
            Contender::Nginx => "nginx L7",
            Contender::Haproxy => "haproxy L7",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct (no proxy)",
            Contender::NodusL4 => "Nodus L4 (eBPF redirect + byte relay, appProtocol tcp)",
            Contender::Nodus => "Nodus (eBPF redirect + node proxy)",
            Contender::Nginx => "nginx 1.22 (Debian), L7",
            Contender::Haproxy => "haproxy 2.6 (Debian), L7",
        }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Measure {
    closed_loop_rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// p50 / p99 / p99.9 at the low rate.
    low_rate_ms: (f64, f64, f64),
    /// Closed-loop requests per second with a new connection for each.
    new_connection_rps: f64,
    cpu_s_per_10k: Option<f64>,
    /// The share of that CPU time spent in user space (the rest is the kernel: TCP/IP, syscalls).
    cpu_user_share: Option<f64>,
    rss_mib: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    for tool in ["wrk", "oha", "nginx", "haproxy"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?.stdout.is_empty() {
            bail!("{tool} is not installed: run scripts/setup-bench.sh (make bench does)");
        }
    }
    if let Some(reason) = nodus_harness::check_support().err() {
        bail!("benchmarks need the mesh harness: {reason}");
    }
    let proxy_binary = std::env::current_exe()?.with_file_name("nodus-proxy");
    if !proxy_binary.exists() {
        bail!("{} not found: build with `cargo build --release -p nodus-proxy`", proxy_binary.display());
    }

    let started = std::time::SystemTime::now();
    let mut report = format!(
        "# Nodus benchmarks\n\nMachine: {}, {} CPUs, Linux {}. Started {} (Unix time). `nodus-bench {}`\n",
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_else(|| "unknown CPU".into()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut bars: Vec<(String, f64)> = Vec::new();
    if args.scenarios.iter().any(|s| s == "a") {
        let (text, more) = scenario_a(&args, &proxy_binary)?;
        report.push_str(&text);
        bars.extend(more);
    }
    if args.scenarios.iter().any(|s| s == "b") {
        let (text, more) = scenario_b::run(&args, &proxy_binary)?;
        report.push_str(&text);
        bars.extend(more);
    }
    if args.scenarios.iter().any(|s| s == "c") {
        let (text, more) = scenario_c::run(&args, &proxy_binary)?;
        report.push_str(&text);
        bars.extend(more);
    }
    if args.scenarios.iter().any(|s| s == "attacks") {
        report.push_str(&attacks::run(&args, &proxy_binary)?);
    }
    std::fs::create_dir_all(&args.out)?;
    chart::throughput_chart(&args.out.join("throughput.png"), "Nodus: throughput as a fraction of direct", &bars)?;
    report.push_str("\n![throughput as a fraction of direct](throughput.png)\n");
    std::fs::write(args.out.join("results.md"), &report)?;
    println!("{report}");
    Ok(())
}

/// Scenario A; returns its markdown section (and writes results.json).
fn scenario_a(args: &Args, proxy_binary: &Path) -> Result<(String, Vec<(String, f64)>)> {
    let args = args.clone();
    let mut lab = Lab::new(LabSpec { nodes: 1 })?;
    let backend = lab.add_pod("node-1", "bench", "backend")?;
    let client_plain = lab.add_pod("node-1", "plain", "client")?;
    let client_mesh = lab.add_pod("node-1", "demo", "client")?;
    let node = lab.node("node-1").context("node-1")?.clone();
    let work = lab.work_dir()?;

    let _backend = start_nginx_backend(&backend, &work)?;
    let config = work.join("snapshot.yaml");
    std::fs::write(&config, snapshot(&backend, &client_mesh))?;
    let nodus = lab.start_node_proxy(&node, proxy_binary, &config, &["--workers", "1"])?;
    nodus.wait_for_metric("nodus_redirect_enrolled_pods", 1.0, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_at_start = process_tree_rss_mib(nodus.process.id())?;
    let nginx = start_nginx_proxy(&node, &backend, &work)?;
    let haproxy = start_haproxy(&node, &backend, &work)?;
    let pids = BTreeMap::from([
        (Contender::Nodus, nodus.process.id()),
        (Contender::NodusL4, nodus.process.id()),
        (Contender::Nginx, nginx.id()),
        (Contender::Haproxy, haproxy.id()),
    ]);

    let mut results: BTreeMap<Contender, Vec<Measure>> = BTreeMap::new();
    for round in 1..=args.rounds {
        for contender in Contender::ALL {
            let (pod, target) = match contender {
                Contender::Direct => (&client_plain, format!("{}:{BACKEND_PORT}", backend.ip)),
                Contender::Nodus => (&client_mesh, format!("{SERVICE_VIP}:80")),
                Contender::NodusL4 => (&client_mesh, format!("{SERVICE_VIP}:81")),
                Contender::Nginx => (&client_plain, format!("{}:{NGINX_PROXY_PORT}", node.ip)),
                Contender::Haproxy => (&client_plain, format!("{}:{HAPROXY_PORT}", node.ip)),
            };
            eprintln!("round {round}/{}: {}", args.rounds, contender.name());
            let pid = pids.get(&contender).copied();
            let cpu_before = pid.map(process_tree_cpu).transpose()?;
            let (rps, closed_requests) = wrk(pod, &target, &args)?;
            let (p50, p99, p999, fixed_requests) = oha(pod, &target, &args, args.rate)?;
            let (low50, low99, low999, low_requests) = oha(pod, &target, &args, args.low_rate)?;
            let fixed_requests = fixed_requests + low_requests;
            let cpu_after = pid.map(process_tree_cpu).transpose()?;
            let new_connection_rps = churn::new_connection_rps(pod, &target, args.seconds)?;
            let used = cpu_before.zip(cpu_after).map(|(before, after)| after.since(&before));
            let cpu = used.map(|u| u.total() / (closed_requests + fixed_requests) * 10_000.0);
            let cpu_user_share = used.map(|u| u.user_seconds / u.total());
            let rss = pid.map(process_tree_peak_rss_mib).transpose()?;
            results.entry(contender).or_default().push(Measure {
                closed_loop_rps: rps,
                p50_ms: p50,
                p99_ms: p99,
                p999_ms: p999,
                low_rate_ms: (low50, low99, low999),
                new_connection_rps,
                cpu_s_per_10k: cpu,
                cpu_user_share,
                rss_mib: rss,
            });
        }
    }
    let idle_rss = process_tree_rss_mib(nodus.process.id())?;
    let mut report = render(&args, &results, idle_rss);
    let direct = median_of(&results, Contender::Direct);
    let bars = [Contender::NodusL4, Contender::Nodus, Contender::Nginx, Contender::Haproxy]
        .into_iter()
        .map(|c| (format!("A: {}", c.short_name()), median_of(&results, c) / direct))
        .collect();
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_vec_pretty(&results.iter().map(|(c, m)| (c.name(), m)).collect::<BTreeMap<_, _>>())?,
    )?;
    drop((nginx, haproxy, nodus));
    lab.teardown()?;
    let routes = 1000;
    let with_routes = rss_with_routes(proxy_binary, routes)?;
    let _ = writeln!(
        report,
        "- Nodus node proxy RSS, idle (config applied, before any load): {rss_at_start:.1} MiB (target <= 15 MiB: {}); \
         with {routes} Services and {routes} HTTPRoutes loaded: {with_routes:.1} MiB",
        verdict(rss_at_start <= 15.0)
    );
    Ok((report, bars))
}

/// The median closed-loop throughput of a contender.
fn median_of(results: &BTreeMap<Contender, Vec<Measure>>, contender: Contender) -> f64 {
    let mut values: Vec<f64> =
        results.get(&contender).map(|m| m.iter().map(|x| x.closed_loop_rps).collect()).unwrap_or_default();
    median_range(&mut values).0
}

/// RSS of an idle node proxy holding `count` Services (one endpoint each) and as many
/// HTTPRoutes (a prefix match and a header match each), in MiB.
fn rss_with_routes(proxy_binary: &Path, count: usize) -> Result<f64> {
    let lab = Lab::new(LabSpec { nodes: 1 })?;
    let node = lab.node("node-1").context("node-1")?.clone();
    let text = many_routes_snapshot(count);
    let config = lab.work_dir()?.join("routes-1000.yaml");
    std::fs::write(&config, text)?;
    let proxy = lab.start_node_proxy(&node, proxy_binary, &config, &["--workers", "1"])?;
    proxy.wait_for_metric("nodus_config_version", 1.0, Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_secs(1));
    let rss = process_tree_rss_mib(proxy.process.id())?;
    drop(proxy);
    lab.teardown()?;
    Ok(rss)
}

/// A snapshot of `count` Services (one endpoint each) and as many HTTPRoutes.
fn many_routes_snapshot(count: usize) -> String {
    let mut text = String::from("version: 1\nservices:\n");
    for i in 0..count {
        let _ = writeln!(
            text,
            "  - {{ id: {{ namespace: bench, name: svc-{i} }}, clusterIps: [10.97.{}.{}], ports: [{{ port: 80, targetPort: 8080, appProtocol: http }}], endpoints: [{{ address: 10.98.{}.{} }}] }}",
            i / 250,
            i % 250 + 1,
            i / 250,
            i % 250 + 1
        );
    }
    text.push_str("httpRoutes:\n");
    for i in 0..count {
        let _ = writeln!(
            text,
            "  - {{ id: {{ namespace: bench, name: route-{i} }}, parents: [{{ service: {{ namespace: bench, name: svc-{i} }}, port: 80 }}], rules: [{{ matches: [{{ path: {{ type: PathPrefix, value: /api/{i} }}, headers: [{{ name: x-tenant, match: {{ type: Exact, value: t{i} }} }}] }}], backends: [{{ service: {{ namespace: bench, name: svc-{i} }}, port: 80 }}] }}] }}"
        );
    }
    text
}

fn snapshot(backend: &Pod, client: &Pod) -> String {
    format!(
        r#"version: 1
services:
  - id: {{ namespace: bench, name: backend }}
    clusterIps: [{SERVICE_VIP}]
    ports: [{{ port: 80, targetPort: {BACKEND_PORT}, appProtocol: http }}, {{ port: 81, targetPort: {BACKEND_PORT}, appProtocol: tcp }}]
    endpoints: [{{ address: {backend_ip} }}]
workloads:
  - {{ id: {{ namespace: demo, name: client }}, node: node-1, ips: [{client_ip}], owner: client, meshEnabled: true }}
httpRoutes:
  - id: {{ namespace: bench, name: backend }}
    parents: [{{ service: {{ namespace: bench, name: backend }}, port: 80 }}]
    rules: [{{ backends: [{{ service: {{ namespace: bench, name: backend }}, port: 80 }}] }}]
"#,
        backend_ip = backend.ip,
        client_ip = client.ip
    )
}

fn nginx_common(work: &Path, name: &str) -> String {
    let dir = work.join(name);
    let _ = std::fs::create_dir_all(&dir);
    let d = dir.display();
    format!(
        "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; \
         uwsgi_temp_path {d}; scgi_temp_path {d};\n"
    )
}

fn spawn_logged(name: &str, mut command: Command, work: &Path) -> Result<Process> {
    let log = work.join(format!("{name}.log"));
    command.stderr(std::fs::File::create(&log)?);
    let mut process = Process::spawn(name, command)?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = process.try_wait() {
        bail!("{name} exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    Ok(process)
}

fn start_nginx_backend(pod: &Pod, work: &Path) -> Result<Process> {
    let conf = format!(
        "{}server {{ listen {BACKEND_PORT} reuseport; keepalive_requests 1000000; location / {{ return 200 \"hello world\\n\"; }} }} }}\n",
        nginx_common(work, "backend")
    );
    let path = work.join("backend.conf");
    std::fs::write(&path, conf)?;
    let mut command = pod.command("nginx")?;
    command.arg("-c").arg(&path);
    spawn_logged("backend-nginx", command, work)
}

fn start_nginx_proxy(node: &nodus_harness::Node, backend: &Pod, work: &Path) -> Result<Process> {
    let conf = format!(
        "{}upstream backend {{ server {}:{BACKEND_PORT}; keepalive 64; }}\n\
         server {{ listen {NGINX_PROXY_PORT}; keepalive_requests 1000000; location / {{ proxy_pass http://backend; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
        nginx_common(work, "proxy-nginx"),
        backend.ip
    );
    let path = work.join("proxy-nginx.conf");
    std::fs::write(&path, conf)?;
    let mut command = node.command("nginx")?;
    command.arg("-c").arg(&path);
    spawn_logged("proxy-nginx", command, work)
}

fn start_haproxy(node: &nodus_harness::Node, backend: &Pod, work: &Path) -> Result<Process> {
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  \
         option http-keep-alive\n  http-reuse always\nfrontend fe\n  bind :{HAPROXY_PORT}\n  default_backend be\n\
         backend be\n  server s1 {}:{BACKEND_PORT}\n",
        backend.ip
    );
    let path = work.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let mut command = node.command("haproxy")?;
    command.arg("-db").arg("-f").arg(&path);
    spawn_logged("proxy-haproxy", command, work)
}

/// Closed loop: returns (requests per second, requests).
fn wrk(pod: &Pod, target: &str, args: &Args) -> Result<(f64, f64)> {
    let out = pod
        .command("wrk")?
        .args([
            "-t2",
            &format!("-c{}", args.connections),
            &format!("-d{}s", args.seconds),
            &format!("http://{target}/"),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: {text}{}", String::from_utf8_lossy(&out.stderr)))?;
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors against {target}: {text}");
    }
    Ok((rps, requests))
}

/// Fixed rate with latency correction: returns (p50, p99, p99.9) in ms and requests.
fn oha(pod: &Pod, target: &str, args: &Args, rate: u32) -> Result<(f64, f64, f64, f64)> {
    let out = pod
        .command("oha")?
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
            "-q",
            &rate.to_string(),
            "-c",
            &args.connections.to_string(),
            "-z",
            &format!("{}s", args.seconds),
            &format!("http://{target}/"),
        ])
        .output()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!("oha output: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })?;
    let percentile = |key: &str| json["latencyPercentiles"][key].as_f64().map(|s| s * 1e3).unwrap_or(f64::NAN);
    let ok = json["statusCodeDistribution"]["200"].as_f64().unwrap_or(0.0);
    let total: f64 =
        json["statusCodeDistribution"].as_object().map(|m| m.values().filter_map(|v| v.as_f64()).sum()).unwrap_or(0.0);
    if ok < total || ok == 0.0 {
        bail!("oha saw non-200 answers against {target}: {}", json["statusCodeDistribution"]);
    }
    Ok((percentile("p50"), percentile("p99"), percentile("p99.9"), total))
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid =
                stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(child);
            }
        }
    }
    out
}

/// CPU time a process tree has used, split into user space and kernel.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTime {
    user_seconds: f64,
    system_seconds: f64,
}

impl CpuTime {
    fn total(&self) -> f64 {
        self.user_seconds + self.system_seconds
    }

    fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user_seconds: self.user_seconds - earlier.user_seconds,
            system_seconds: self.system_seconds - earlier.system_seconds,
        }
    }
}

impl std::ops::Add for CpuTime {
    type Output = CpuTime;

    fn add(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user_seconds: self.user_seconds + other.user_seconds,
            system_seconds: self.system_seconds + other.system_seconds,
        }
    }
}

/// User and system CPU time of a process and its children (nginx's workers).
fn process_tree_cpu(pid: u32) -> Result<CpuTime> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut used = CpuTime::default();
    for p in children(pid) {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat"))?;
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / ticks;
        used = used + CpuTime { user_seconds: field(11), system_seconds: field(12) };
    }
    Ok(used)
}

/// User + system CPU seconds of a process and its children.
fn process_tree_cpu_seconds(pid: u32) -> Result<f64> {
    Ok(process_tree_cpu(pid)?.total())
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn process_tree_peak_rss_mib(pid: u32) -> Result<f64> {
    Ok(children(pid).into_iter().map(|p| status_kib(p, "VmHWM:")).sum::<f64>() / 1024.0)
}

fn process_tree_rss_mib(pid: u32) -> Result<f64> {
    Ok(children(pid).into_iter().map(|p| status_kib(p, "VmRSS:")).sum::<f64>() / 1024.0)
}

fn median_range(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

fn render(args: &Args, results: &BTreeMap<Contender, Vec<Measure>>, nodus_rss_after: f64) -> String {
    let pick = |c: Contender, f: &dyn Fn(&Measure) -> Option<f64>| {
        let mut v: Vec<f64> = results.get(&c).map(|m| m.iter().filter_map(f).collect()).unwrap_or_default();
        median_range(&mut v)
    };
    let mut out = String::new();
    let _ = writeln!(out, "## Scenario A: one node, plaintext L7\n");
    let _ = writeln!(
        out,
        "{} rounds interleaved; each: wrk -t2 -c{} -d{}s (closed loop), then oha -q {} and -q {} --latency-correction \
         -c{} -z {}s, then oha --disable-keepalive -c 16 (a new connection per request). Backend: nginx returning 12 \
         bytes. Medians, [min-max].\n",
        args.rounds, args.connections, args.seconds, args.rate, args.low_rate, args.connections, args.seconds
    );
    let _ = writeln!(out, "| path | closed loop req/s | p50 / p99 / p99.9 at {} req/s (ms) | p50 / p99 / p99.9 at {} req/s (ms) | req/s, new connection each | proxy CPU-s per 10k req | proxy peak RSS (MiB) |", args.rate, args.low_rate);
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for c in Contender::ALL {
        let (rps, rps_lo, rps_hi) = pick(c, &|m| Some(m.closed_loop_rps));
        let (p50, ..) = pick(c, &|m| Some(m.p50_ms));
        let (p99, p99_lo, p99_hi) = pick(c, &|m| Some(m.p99_ms));
        let (p999, ..) = pick(c, &|m| Some(m.p999_ms));
        let (low50, ..) = pick(c, &|m| Some(m.low_rate_ms.0));
        let (low99, ..) = pick(c, &|m| Some(m.low_rate_ms.1));
        let (low999, ..) = pick(c, &|m| Some(m.low_rate_ms.2));
        let (churn, churn_lo, churn_hi) = pick(c, &|m| Some(m.new_connection_rps));
        let (cpu, cpu_lo, cpu_hi) = pick(c, &|m| m.cpu_s_per_10k);
        let (rss, ..) = pick(c, &|m| m.rss_mib);
        let (user_share, ..) = pick(c, &|m| m.cpu_user_share);
        let cpu = if cpu.is_nan() {
            "-".into()
        } else {
            format!("{cpu:.3} [{cpu_lo:.3}-{cpu_hi:.3}] ({:.0} % user)", user_share * 100.0)
        };
        let rss = if rss.is_nan() { "-".into() } else { format!("{rss:.1}") };
        let _ = writeln!(
            out,
            "| {} | {rps:.0} [{rps_lo:.0}-{rps_hi:.0}] | {p50:.2} / {p99:.2} [{p99_lo:.2}-{p99_hi:.2}] / {p999:.2} | {low50:.2} / {low99:.2} / {low999:.2} | {churn:.0} [{churn_lo:.0}-{churn_hi:.0}] | {cpu} | {rss} |",
            c.name()
        );
    }
    let ratio = |a: Contender, b: Contender, f: &dyn Fn(&Measure) -> Option<f64>| pick(a, f).0 / pick(b, f).0;
    let rps = |m: &Measure| Some(m.closed_loop_rps);
    let _ = writeln!(out, "\nRatios (medians, this run):\n");
    let _ = writeln!(
        out,
        "- Nodus throughput / nginx: {:.2}x; / haproxy: {:.2}x; / direct: {:.2}x",
        ratio(Contender::Nodus, Contender::Nginx, &rps),
        ratio(Contender::Nodus, Contender::Haproxy, &rps),
        ratio(Contender::Nodus, Contender::Direct, &rps)
    );
    let _ = writeln!(
        out,
        "- Nodus CPU per request / nginx: {:.2}x",
        ratio(Contender::Nodus, Contender::Nginx, &|m| m.cpu_s_per_10k)
    );
    let added = |c: Contender, f: &dyn Fn(&Measure) -> Option<f64>| pick(c, f).0 - pick(Contender::Direct, f).0;
    let _ = writeln!(
        out,
        "- The redirect and a byte relay alone (Nodus L4) / direct throughput: {:.2}x",
        ratio(Contender::NodusL4, Contender::Direct, &rps)
    );
    for c in [Contender::NodusL4, Contender::Nodus, Contender::Nginx, Contender::Haproxy] {
        let _ = writeln!(
            out,
            "- {} added over direct at {} req/s: p50 {:+.3} ms, p99 {:+.3} ms",
            c.name(),
            args.rate,
            added(c, &|m| Some(m.p50_ms)),
            added(c, &|m| Some(m.p99_ms))
        );
    }
    for c in [Contender::NodusL4, Contender::Nodus, Contender::Nginx, Contender::Haproxy] {
        let _ = writeln!(
            out,
            "- {} added over direct at {} req/s: p50 {:+.3} ms, p99 {:+.3} ms",
            c.name(),
            args.low_rate,
            added(c, &|m| Some(m.low_rate_ms.0)),
            added(c, &|m| Some(m.low_rate_ms.1))
        );
    }
    let _ = writeln!(
        out,
        "- New connection per request, Nodus / nginx: {:.2}x; / direct: {:.2}x",
        ratio(Contender::Nodus, Contender::Nginx, &|m| Some(m.new_connection_rps)),
        ratio(Contender::Nodus, Contender::Direct, &|m| Some(m.new_connection_rps))
    );
    let _ = writeln!(out, "- Nodus node proxy RSS after the run: {nodus_rss_after:.1} MiB");
    let _ = writeln!(
        out,
        "\nAgainst the targets: throughput >= 1.0x nginx: {}; CPU per request <= nginx: {}; added p99 at {} req/s <= 0.5 ms: {}.",
        verdict(ratio(Contender::Nodus, Contender::Nginx, &rps) >= 1.0),
        verdict(ratio(Contender::Nodus, Contender::Nginx, &|m| m.cpu_s_per_10k) <= 1.0),
        args.rate,
        verdict(added(Contender::Nodus, &|m| Some(m.p99_ms)) <= 0.5)
    );
    out
}

/// "met" or "**not met**".
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_many_routes_snapshot_is_valid_config() {
        let snapshot: nodus_config::ConfigSnapshot = serde_norway::from_str(&super::many_routes_snapshot(300)).unwrap();
        snapshot.validate().unwrap();
        assert_eq!((snapshot.services.len(), snapshot.http_routes.len()), (300, 300));
    }
}
