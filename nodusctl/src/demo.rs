//! `nodusctl demo`: the local mesh on one machine.
//!
//! Builds a two-node lab (network namespaces, veths, cgroups), runs the echo workload in pods on
//! both nodes, and drives HTTP/1.1, h2c and gRPC traffic from a client pod, reporting per
//! destination what answered, success rate, rate and latency. Everything is torn down on Ctrl-C,
//! SIGTERM, after `--duration`, or if anything fails.

use anyhow::{bail, Context, Result};
use clap::Args;
use nodus_echo::proto::{echo_client::EchoClient, EchoRequest};
use nodus_harness::{Lab, LabSpec, Pod, Process};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Requests per second the client sends, over all destinations and protocols.
    #[arg(long, default_value_t = 60)]
    rate: u32,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    nodus_config::parse_gateway_duration(text)
}

const ECHO_PORT: u16 = 8080;
const PROTOCOLS: [&str; 3] = ["HTTP/1.1", "HTTP/2", "gRPC"];

/// Where the demo's pods go: (node, namespace, name, runs the echo server).
const PODS: [(&str, &str, &str, bool); 3] =
    [("node-1", "demo", "client", false), ("node-2", "demo", "echo-v1", true), ("node-1", "demo", "echo-v2", true)];

#[derive(Default)]
struct Window {
    requests: u64,
    ok: u64,
    latencies: Vec<Duration>,
}

/// Per (destination pod, protocol) statistics since the last report.
type Stats = Arc<Mutex<BTreeMap<(String, &'static str), Window>>>;

fn step(text: &str) -> Instant {
    print!("  {text} ... ");
    let _ = std::io::stdout().flush();
    Instant::now()
}

fn done(started: Instant) {
    println!("done ({} ms)", started.elapsed().as_millis());
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    if let Some(reason) = nodus_harness::check_support().err() {
        bail!("the local mesh cannot run here: {reason}");
    }
    println!("Nodus local mesh");
    let started = step("[1/3] building the lab: 2 nodes, 3 pods");
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

    let started = step("[2/3] starting the echo workload in its pods");
    let echo_binary = sibling_binary("nodus-echo")?;
    let mut servers: Vec<Process> = Vec::new();
    let mut targets: Vec<Pod> = Vec::new();
    for (pod, (_, _, _, is_server)) in pods.iter().zip(PODS) {
        if !is_server {
            continue;
        }
        let mut command = pod.command(&echo_binary)?;
        command.args(["--listen", &format!("0.0.0.0:{ECHO_PORT}"), "--pod", &pod.name, "--namespace", &pod.namespace]);
        let mut process = Process::spawn(format!("nodus-echo in {}", pod.name), command)?;
        process.wait_for_line("nodus-echo listening on", Duration::from_secs(10))?;
        servers.push(process);
        targets.push(pod.clone());
    }
    done(started);

    let client = pods[0].clone();
    println!(
        "  [3/3] traffic from {}/{} on {}: {} req/s, round robin over {} destinations x {}",
        client.namespace,
        client.name,
        client.node,
        args.rate,
        targets.len(),
        PROTOCOLS.join(", ")
    );
    println!("        path: direct pod to pod across the lab network (the node proxy is not in the path yet)");
    let stats: Stats = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stats, stop, targets) = (stats.clone(), stop.clone(), targets.clone());
        let pace = Duration::from_secs_f64(1.0 / f64::from(args.rate));
        std::thread::spawn(move || {
            client.netns().run(move || drive_traffic(targets, pace, stats, stop)).map_err(anyhow::Error::from)?
        })
    };

    let totals = report_until_stopped(&args, &stats, &traffic)?;
    stop.store(true, Ordering::SeqCst);
    match traffic.join() {
        Ok(result) => result.context("traffic generator")?,
        Err(_) => bail!("the traffic generator panicked"),
    }
    drop(servers);
    lab.teardown().context("tearing down the lab")?;
    println!(
        "\n  {} requests, {} answered by the pod they were sent to ({:.2}%); lab torn down.",
        totals.0,
        totals.1,
        percent(totals.1, totals.0)
    );
    Ok(if totals.1 > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Finds a binary built next to this one (`cargo build` puts workspace binaries together).
fn sibling_binary(name: &str) -> Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("locating nodusctl")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!("{} not found next to nodusctl: build it with `cargo build -p {name}`", path.display());
    }
    Ok(path)
}

/// Prints a report every interval until Ctrl-C, SIGTERM or the duration. Returns the totals
/// (requests, correct answers).
fn report_until_stopped(
    args: &DemoArgs,
    stats: &Stats,
    traffic: &std::thread::JoinHandle<Result<()>>,
) -> Result<(u64, u64)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let start = Instant::now();
        let mut totals = (0u64, 0u64);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let deadline = async {
            match args.duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let (requests, ok) = print_report(start.elapsed(), args.interval, stats);
                    totals = (totals.0 + requests, totals.1 + ok);
                    if traffic.is_finished() {
                        println!("  the traffic generator stopped early");
                        break;
                    }
                }
                _ = tokio::signal::ctrl_c() => { println!("\n  Ctrl-C: stopping"); break; }
                _ = terminate.recv() => { println!("\n  SIGTERM: stopping"); break; }
                _ = &mut deadline => {
                    let (requests, ok) = print_report(start.elapsed(), args.interval, stats);
                    totals = (totals.0 + requests, totals.1 + ok);
                    break;
                }
            }
        }
        Ok(totals)
    })
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn print_report(elapsed: Duration, interval: Duration, stats: &Stats) -> (u64, u64) {
    let window = std::mem::take(&mut *stats.lock().unwrap_or_else(|p| p.into_inner()));
    if window.is_empty() {
        return (0, 0);
    }
    println!(
        "\n  t={:>4.0}s  {:<22} {:<9} {:>6} {:>8} {:>7} {:>9} {:>9}",
        elapsed.as_secs_f64(),
        "DESTINATION",
        "PROTOCOL",
        "REQS",
        "SUCCESS",
        "RPS",
        "P50",
        "P99"
    );
    let (mut requests, mut ok) = (0, 0);
    for ((destination, protocol), mut w) in window {
        w.latencies.sort();
        println!(
            "          {:<22} {:<9} {:>6} {:>7.1}% {:>7.1} {:>7.2}ms {:>7.2}ms",
            destination,
            protocol,
            w.requests,
            percent(w.ok, w.requests),
            w.requests as f64 / interval.as_secs_f64(),
            percentile(&w.latencies, 50.0).as_secs_f64() * 1e3,
            percentile(&w.latencies, 99.0).as_secs_f64() * 1e3,
        );
        requests += w.requests;
        ok += w.ok;
    }
    (requests, ok)
}

/// Runs in the client pod's network namespace: sends one request per `pace`, rotating over
/// destinations and protocols, and records whether the intended pod answered.
fn drive_traffic(targets: Vec<Pod>, pace: Duration, stats: Stats, stop: Arc<AtomicBool>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut grpc_clients: BTreeMap<String, EchoClient<tonic::transport::Channel>> = BTreeMap::new();
        let mut ticker = tokio::time::interval(pace);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut turn = 0usize;
        while !stop.load(Ordering::SeqCst) {
            ticker.tick().await;
            let target = targets[turn % targets.len()].clone();
            let protocol = PROTOCOLS[(turn / targets.len()) % PROTOCOLS.len()];
            turn += 1;
            let addr = SocketAddr::from((target.ip, ECHO_PORT));
            let grpc = if protocol == "gRPC" {
                let entry = grpc_clients.entry(target.name.clone());
                Some(match entry {
                    std::collections::btree_map::Entry::Occupied(e) => e.get().clone(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
                        e.insert(EchoClient::new(channel)).clone()
                    }
                })
            } else {
                None
            };
            let stats = stats.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let answered_by = match (protocol, grpc) {
                    ("HTTP/1.1", _) => nodus_echo::http1_get(addr, "echo.demo", "/", &[])
                        .await
                        .ok()
                        .and_then(|a| a.report().ok())
                        .map(|r| r.pod),
                    ("HTTP/2", _) => nodus_echo::h2c_get(addr, "echo.demo", "/", &[])
                        .await
                        .ok()
                        .and_then(|a| a.report().ok())
                        .map(|r| r.pod),
                    (_, Some(mut client)) => client
                        .echo(EchoRequest { message: "demo".into() })
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().context)
                        .map(|c| c.pod),
                    _ => None,
                };
                let latency = started.elapsed();
                let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
                let window = stats
                    .entry((format!("{}/{} {}", target.namespace, target.name, target.node), protocol))
                    .or_default();
                window.requests += 1;
                if answered_by.as_deref() == Some(target.name.as_str()) {
                    window.ok += 1;
                    window.latencies.push(latency);
                }
            });
        }
        Ok(())
    })
}
