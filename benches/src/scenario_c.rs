//! Scenario C: HTTP/2 (h2c, prior knowledge) and gRPC through the node proxy against direct,
//! on one node. The backend is the echo workload (HTTP/2 and gRPC `nodus.echo.v1.Echo/Echo`);
//! Nodus routes both through an HTTPRoute and a GRPCRoute. Closed loop with h2load (4
//! connections x 16 streams), latency with oha at fixed rates, coordinated omission corrected.

use crate::procfs::process_tree_cpu_seconds;
use crate::{median_range, Args};
use anyhow::{bail, Context, Result};
use nodus_harness::{start_echo, Lab, LabSpec, Pod};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const VIP: &str = "10.96.0.30";
const ECHO_PORT: u16 = 8080;

/// The two protocols measured.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Protocol {
    H2c,
    Grpc,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::H2c => "HTTP/2 (h2c)",
            Protocol::Grpc => "gRPC unary",
        }
    }
    fn nodus_port(self) -> u16 {
        match self {
            Protocol::H2c => 80,
            Protocol::Grpc => 90,
        }
    }
    fn path(self) -> &'static str {
        match self {
            Protocol::H2c => "/",
            Protocol::Grpc => "/nodus.echo.v1.Echo/Echo",
        }
    }
}

/// One run of one protocol and path.
#[derive(Clone, Debug, Default)]
struct Run {
    closed_loop_rps: f64,
    high: (f64, f64, f64),
    low: (f64, f64, f64),
    cpu_s_per_10k: Option<f64>,
}

fn snapshot(backend: &Pod, client: &Pod) -> String {
    format!(
        r#"version: 1
services:
  - id: {{ namespace: bench, name: echo }}
    clusterIps: [{VIP}]
    ports: [{{ port: 80, targetPort: {ECHO_PORT}, appProtocol: http2 }}, {{ port: 90, targetPort: {ECHO_PORT}, appProtocol: grpc }}]
    endpoints: [{{ address: {backend_ip} }}]
workloads:
  - {{ id: {{ namespace: demo, name: client }}, node: node-1, ips: [{client_ip}], owner: client, meshEnabled: true }}
httpRoutes:
  - id: {{ namespace: bench, name: echo-h2 }}
    parents: [{{ service: {{ namespace: bench, name: echo }}, port: 80 }}]
    rules: [{{ backends: [{{ service: {{ namespace: bench, name: echo }}, port: 80 }}] }}]
grpcRoutes:
  - id: {{ namespace: bench, name: echo-grpc }}
    parents: [{{ service: {{ namespace: bench, name: echo }}, port: 90 }}]
    rules:
      - matches: [{{ method: {{ service: nodus.echo.v1.Echo, method: Echo }} }}]
        backends: [{{ service: {{ namespace: bench, name: echo }}, port: 90 }}]
"#,
        backend_ip = backend.ip,
        client_ip = client.ip
    )
}

/// One framed gRPC message: EchoRequest { message: "hi" }.
const GRPC_BODY: [u8; 9] = [0, 0, 0, 0, 4, 0x0a, 0x02, b'h', b'i'];

fn grpc_headers() -> [&'static str; 4] {
    ["-H", "content-type: application/grpc", "-H", "te: trailers"]
}

/// A real client checks the path answers as it should (gRPC status 0, not only HTTP 200),
/// since the load generators do not read gRPC trailers.
fn check(pod: &Pod, echo_client: &Path, protocol: Protocol, target: &str) -> Result<()> {
    let kind = match protocol {
        Protocol::H2c => "h2",
        Protocol::Grpc => "grpc",
    };
    let out = pod.command(echo_client)?.args(["--target", target, "--protocol", kind, "--count", "3"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let good = match protocol {
        Protocol::H2c => text.matches("\"status\":200").count(),
        Protocol::Grpc => text.matches("\"grpc_status\":0").count(),
    };
    if good != 3 {
        bail!("{} via {target} does not answer as expected: {text}", protocol.name());
    }
    Ok(())
}

/// Closed loop with h2load: requests per second and requests.
fn h2load(pod: &Pod, protocol: Protocol, target: &str, body: &Path, seconds: u64) -> Result<(f64, f64)> {
    let mut command = pod.command("h2load")?;
    command.args(["-c", "4", "-m", "16", "-t", "1", "-D", &seconds.to_string()]);
    if protocol == Protocol::Grpc {
        command.arg("-d").arg(body).args(grpc_headers());
    }
    let out = command.arg(format!("http://{target}{}", protocol.path())).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse::<f64>().ok())
        .with_context(|| format!("h2load output: {text}{}", String::from_utf8_lossy(&out.stderr)))?;
    let requests = text.lines().find_map(|l| l.strip_prefix("requests: ")).unwrap_or_default();
    let field = |name: &str| {
        requests
            .split(", ")
            .find_map(|part| part.strip_suffix(name).map(str::trim))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()))
            .unwrap_or(f64::NAN)
    };
    let (succeeded, failed, errored) = (field("succeeded"), field("failed"), field("errored"));
    if failed != 0.0 || errored != 0.0 || succeeded.is_nan() {
        bail!("h2load saw failures against {target}: {text}");
    }
    let non_2xx: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .map(|l| l.split(", ").skip(1).filter_map(|p| p.split_whitespace().next()?.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    if non_2xx > 0.0 {
        bail!("h2load saw non-2xx answers against {target}: {text}");
    }
    Ok((rps, succeeded))
}

/// Fixed rate with latency correction (oha, HTTP/2): (p50, p99, p99.9) ms and requests.
fn oha_h2(
    pod: &Pod,
    protocol: Protocol,
    target: &str,
    body: &Path,
    rate: u32,
    seconds: u64,
) -> Result<(f64, f64, f64, f64)> {
    let mut command = pod.command("oha")?;
    command.args(["--no-tui", "--output-format", "json", "--http2", "--latency-correction", "-c", "16"]);
    command.args(["-q", &rate.to_string(), "-z", &format!("{seconds}s")]);
    if protocol == Protocol::Grpc {
        command.args(["-m", "POST", "-D"]).arg(body).args(grpc_headers());
    }
    let out = command.arg(format!("http://{target}{}", protocol.path())).output()?;
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

/// Runs scenario C; returns its markdown section and, per protocol, Nodus's closed-loop
/// throughput as a fraction of direct (for the chart).
pub fn run(args: &Args, proxy_binary: &Path) -> Result<(String, Vec<(String, f64)>)> {
    let echo_binary = proxy_binary.with_file_name("nodus-echo");
    let echo_client = proxy_binary.with_file_name("nodus-echo-client");
    for binary in [&echo_binary, &echo_client] {
        anyhow::ensure!(binary.exists(), "{} not found: build it with --release", binary.display());
    }
    let mut lab = Lab::new(LabSpec { nodes: 1 })?;
    let backend = lab.add_pod("node-1", "bench", "echo")?;
    let client_plain = lab.add_pod("node-1", "plain", "client")?;
    let client_mesh = lab.add_pod("node-1", "demo", "client")?;
    let node = lab.node("node-1").context("node-1")?.clone();
    let work = lab.work_dir()?;
    let _echo = start_echo(&backend, &echo_binary, &[ECHO_PORT])?;
    let config = work.join("snapshot-c.yaml");
    std::fs::write(&config, snapshot(&backend, &client_mesh))?;
    let body = work.join("grpc-body.bin");
    std::fs::write(&body, GRPC_BODY)?;
    let nodus = lab.start_node_proxy(&node, proxy_binary, &config, &["--workers", "1"])?;
    nodus.wait_for_metric("nodus_redirect_enrolled_pods", 1.0, Duration::from_secs(10))?;
    let pid = nodus.process.id();

    let direct = format!("{}:{ECHO_PORT}", backend.ip);
    let mut runs: std::collections::BTreeMap<(Protocol, bool), Vec<Run>> = Default::default();
    for protocol in [Protocol::H2c, Protocol::Grpc] {
        check(&client_plain, &echo_client, protocol, &direct)?;
        check(&client_mesh, &echo_client, protocol, &format!("{VIP}:{}", protocol.nodus_port()))?;
    }
    for round in 1..=args.rounds {
        for protocol in [Protocol::H2c, Protocol::Grpc] {
            for through_nodus in [false, true] {
                let (pod, target) = if through_nodus {
                    (&client_mesh, format!("{VIP}:{}", protocol.nodus_port()))
                } else {
                    (&client_plain, direct.clone())
                };
                eprintln!(
                    "scenario C round {round}/{}: {} {}",
                    args.rounds,
                    protocol.name(),
                    if through_nodus { "Nodus" } else { "direct" }
                );
                let cpu_before = process_tree_cpu_seconds(pid)?;
                let (rps, closed) = h2load(pod, protocol, &target, &body, args.seconds)?;
                let (p50, p99, p999, fixed) = oha_h2(pod, protocol, &target, &body, args.rate, args.seconds)?;
                let (l50, l99, l999, low) = oha_h2(pod, protocol, &target, &body, args.low_rate, args.seconds)?;
                let cpu = (process_tree_cpu_seconds(pid)? - cpu_before) / (closed + fixed + low) * 10_000.0;
                runs.entry((protocol, through_nodus)).or_default().push(Run {
                    closed_loop_rps: rps,
                    high: (p50, p99, p999),
                    low: (l50, l99, l999),
                    cpu_s_per_10k: through_nodus.then_some(cpu),
                });
            }
        }
    }
    drop(nodus);
    lab.teardown()?;
    Ok(render(args, &runs))
}

fn render(args: &Args, runs: &std::collections::BTreeMap<(Protocol, bool), Vec<Run>>) -> (String, Vec<(String, f64)>) {
    let pick = |key: (Protocol, bool), f: &dyn Fn(&Run) -> Option<f64>| {
        let mut v: Vec<f64> = runs.get(&key).map(|r| r.iter().filter_map(f).collect()).unwrap_or_default();
        median_range(&mut v)
    };
    let mut out = String::new();
    let mut fractions = Vec::new();
    let _ = writeln!(out, "\n## Scenario C: HTTP/2 and gRPC, one node\n");
    let _ = writeln!(
        out,
        "Client pod -> (eBPF redirect -> node proxy, HTTPRoute / GRPCRoute) -> echo pod, against the client calling the \
         pod directly. Closed loop: h2load -c 4 -m 16 -D {s}s; latency: oha --http2 -c 16 --latency-correction at {} and \
         {} req/s for {s}s. gRPC: unary `nodus.echo.v1.Echo/Echo` (a real gRPC client checks grpc-status 0 on both \
         paths first). One proxy worker. Medians, [min-max].\n",
        args.rate,
        args.low_rate,
        s = args.seconds
    );
    let _ = writeln!(out, "| protocol | path | closed loop req/s | p50 / p99 / p99.9 at {} req/s (ms) | p50 / p99 / p99.9 at {} req/s (ms) | proxy CPU-s per 10k req |", args.rate, args.low_rate);
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for protocol in [Protocol::H2c, Protocol::Grpc] {
        for through_nodus in [false, true] {
            let key = (protocol, through_nodus);
            let (rps, lo, hi) = pick(key, &|r| Some(r.closed_loop_rps));
            let (h50, ..) = pick(key, &|r| Some(r.high.0));
            let (h99, h99_lo, h99_hi) = pick(key, &|r| Some(r.high.1));
            let (h999, ..) = pick(key, &|r| Some(r.high.2));
            let (l50, ..) = pick(key, &|r| Some(r.low.0));
            let (l99, ..) = pick(key, &|r| Some(r.low.1));
            let (l999, ..) = pick(key, &|r| Some(r.low.2));
            let (cpu, ..) = pick(key, &|r| r.cpu_s_per_10k);
            let cpu = if cpu.is_nan() { "-".to_string() } else { format!("{cpu:.3}") };
            let _ = writeln!(
                out,
                "| {} | {} | {rps:.0} [{lo:.0}-{hi:.0}] | {h50:.2} / {h99:.2} [{h99_lo:.2}-{h99_hi:.2}] / {h999:.2} | {l50:.2} / {l99:.2} / {l999:.2} | {cpu} |",
                protocol.name(),
                if through_nodus { "Nodus" } else { "direct" }
            );
        }
        let fraction = pick((protocol, true), &|r| Some(r.closed_loop_rps)).0
            / pick((protocol, false), &|r| Some(r.closed_loop_rps)).0;
        let added = pick((protocol, true), &|r| Some(r.high.1)).0 - pick((protocol, false), &|r| Some(r.high.1)).0;
        let _ = writeln!(out, "| {} | Nodus / direct | **{fraction:.2}x** | p99 {added:+.2} ms | | |", protocol.name());
        fractions.push((format!("C: Nodus, {}", protocol.name()), fraction));
    }
    (out, fractions)
}
