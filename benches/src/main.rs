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
mod procfs;
mod scenario_a;
mod scenario_b;
mod scenario_c;
mod tools;

use anyhow::{bail, Result};
use clap::Parser;
use std::path::PathBuf;
use std::process::Command;

/// Benchmarks Nodus against direct traffic, nginx and haproxy.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub(crate) struct Args {
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

pub(crate) const SERVICE_VIP: &str = "10.96.0.10";
pub(crate) const BACKEND_PORT: u16 = 8080;
pub(crate) const NGINX_PROXY_PORT: u16 = 8081;
pub(crate) const HAPROXY_PORT: u16 = 8082;

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
        let (text, more) = scenario_a::run(&args, &proxy_binary)?;
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

pub(crate) fn median_range(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

/// "met" or "**not met**".
pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}
