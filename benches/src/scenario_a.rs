//! Scenario A (one node, plaintext L7): directly, through Nodus, nginx and haproxy, interleaved
//! round by round; throughput, latency at a fixed rate, CPU per request, memory.

use anyhow::{Context, Result};
use nodus_harness::{Lab, LabSpec, Pod};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::churn;
use crate::procfs::{process_tree_cpu, process_tree_peak_rss_mib, process_tree_rss_mib};
use crate::tools::{oha, start_haproxy, start_nginx_backend, start_nginx_proxy, wrk};
use crate::{median_range, verdict, Args, BACKEND_PORT, HAPROXY_PORT, NGINX_PROXY_PORT, SERVICE_VIP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Contender {
    Direct,
    NodusL4,
    Nodus,
    Nginx,
    Haproxy,
}

impl Contender {
    const ALL: [Contender; 5] =
        [Contender::Direct, Contender::NodusL4, Contender::Nodus, Contender::Nginx, Contender::Haproxy];
    pub(crate) fn short_name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::NodusL4 => "Nodus L4 (redirect + relay)",
            Contender::Nodus => "Nodus L7",
            Contender::Nginx => "nginx L7",
            Contender::Haproxy => "haproxy L7",
        }
    }
    pub(crate) fn name(self) -> &'static str {
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
pub(crate) struct Measure {
    pub(crate) closed_loop_rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    /// p50 / p99 / p99.9 at the low rate.
    pub(crate) low_rate_ms: (f64, f64, f64),
    /// Closed-loop requests per second with a new connection for each.
    pub(crate) new_connection_rps: f64,
    pub(crate) cpu_s_per_10k: Option<f64>,
    /// The share of that CPU time spent in user space (the rest is the kernel: TCP/IP, syscalls).
    pub(crate) cpu_user_share: Option<f64>,
    pub(crate) rss_mib: Option<f64>,
}

/// Scenario A; returns its markdown section (and writes results.json).
pub(crate) fn run(args: &Args, proxy_binary: &Path) -> Result<(String, Vec<(String, f64)>)> {
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
pub(crate) fn median_of(results: &BTreeMap<Contender, Vec<Measure>>, contender: Contender) -> f64 {
    let mut values: Vec<f64> =
        results.get(&contender).map(|m| m.iter().map(|x| x.closed_loop_rps).collect()).unwrap_or_default();
    median_range(&mut values).0
}

/// RSS of an idle node proxy holding `count` Services (one endpoint each) and as many
/// HTTPRoutes (a prefix match and a header match each), in MiB.
pub(crate) fn rss_with_routes(proxy_binary: &Path, count: usize) -> Result<f64> {
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
pub(crate) fn many_routes_snapshot(count: usize) -> String {
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

pub(crate) fn snapshot(backend: &Pod, client: &Pod) -> String {
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

pub(crate) fn render(args: &Args, results: &BTreeMap<Contender, Vec<Measure>>, nodus_rss_after: f64) -> String {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    pub(crate) fn the_many_routes_snapshot_is_valid_config() {
        let snapshot: nodus_config::ConfigSnapshot = serde_norway::from_str(&super::many_routes_snapshot(300)).unwrap();
        snapshot.validate().unwrap();
        assert_eq!((snapshot.services.len(), snapshot.http_routes.len()), (300, 300));
    }
}
