//! `nodusctl stat` and `nodusctl proxy-config`: read a node proxy's admin port, and its
//! node-local debug listener (the config dump is served only there).
//!
//! `stat` scrapes `/metrics` twice, `--window` apart, and prints per route and backend what
//! `linkerd viz stat` prints per workload: success rate, requests per second and latency
//! percentiles (from the histogram's buckets, so they are bucket upper bounds).

use anyhow::{bail, Context, Result};
use clap::Args;
use nodus_harness::{http_get, NetNs};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Where the proxy's admin port is.
#[derive(Args, Debug)]
pub struct Target {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin: SocketAddr,
    /// Reach it from inside this network namespace (a name under /run/netns, e.g. a local-mesh
    /// node's `nodus-<id>-node-1`).
    #[arg(long)]
    netns: Option<String>,
}

impl Target {
    fn get(&self, path: &str) -> Result<String> {
        get(self.admin, self.netns.as_deref(), path)
    }
}

/// GETs `path` from `addr`, from inside network namespace `netns` if given.
pub(crate) fn get(addr: SocketAddr, netns: Option<&str>, path: &str) -> Result<String> {
    let (status, body) = match netns {
        Some(name) => NetNs::named(name.to_owned())
            .run(|| http_get(addr, path))
            .with_context(|| format!("entering network namespace {name}"))??,
        None => http_get(addr, path)?,
    };
    if status != 200 {
        bail!("{addr}{path} answered {status}: {}", body.trim());
    }
    Ok(body)
}

/// Options of `nodusctl stat`.
#[derive(Args, Debug)]
pub struct StatArgs {
    #[command(flatten)]
    target: Target,
    /// Time between the two scrapes the rates are computed from.
    #[arg(long, value_parser = |s: &str| nodus_config::parse_gateway_duration(s), default_value = "2s")]
    window: Duration,
}

/// Options of `nodusctl proxy-config`: run on the node (the debug listener is on its loopback).
#[derive(Args, Debug)]
pub struct ProxyConfigArgs {
    /// The proxy's node-local debug address (`--debug-addr` of the proxy).
    #[arg(long, default_value = "127.0.0.1:15021")]
    debug: SocketAddr,
    /// Reach it from inside this network namespace (a local-mesh node's `nodus-<id>-node-1`).
    #[arg(long)]
    netns: Option<String>,
}

pub fn proxy_config(args: ProxyConfigArgs) -> Result<ExitCode> {
    let dump = get(args.debug, args.netns.as_deref(), "/config_dump")?;
    let value: serde_json::Value = serde_json::from_str(&dump).context("the config dump is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}

/// `nodusctl check --proxy-debug`: every mesh endpoint of the proxy's config placed, or each
/// one left out and why (a mesh pod whose node's proxy is not known is never dialled).
pub fn unplaced_endpoints(debug: SocketAddr, netns: Option<&str>) -> std::result::Result<String, String> {
    let dump = get(debug, netns, "/config_dump").map_err(|e| format!("{e:#}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&dump).map_err(|e| format!("the config dump is not JSON: {e}"))?;
    let services = value["snapshot"]["services"].as_array().map_or(0, Vec::len);
    let unplaced: Vec<&str> =
        value["unplaced"].as_array().map(|u| u.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    let version = &value["version"];
    if unplaced.is_empty() {
        Ok(format!("config version {version}: every mesh endpoint of its {services} Services is reachable"))
    } else {
        Err(format!(
            "config version {version}: {} mesh endpoint(s) left out, reached by no one until fixed:\n        {}",
            unplaced.len(),
            unplaced.join("\n        ")
        ))
    }
}

/// Per (route, backend) sums from one scrape.
#[derive(Default, Clone, Debug)]
struct Totals {
    requests: f64,
    successes: f64,
    /// Cumulative bucket counts by upper bound.
    buckets: BTreeMap<u64, f64>,
}

/// The value of label `name` in one exposition line, or `""`.
pub(crate) fn label<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(&format!("{name}=\"")).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("")
}

fn value(line: &str) -> f64 {
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn key(line: &str) -> String {
    let route = match label(line, "route_kind") {
        "default" => format!("(no route) {}/{}", label(line, "dst_namespace"), label(line, "dst_service")),
        "none" => format!("(no match) {}/{}", label(line, "dst_namespace"), label(line, "dst_service")),
        kind => format!("{kind} {} [{}]", label(line, "route_name"), label(line, "route_rule")),
    };
    format!("{route} -> {}", label(line, "backend"))
}

fn scrape(target: &Target) -> Result<BTreeMap<String, Totals>> {
    let metrics = target.get("/metrics")?;
    let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
    for line in metrics.lines() {
        if line.starts_with("nodus_requests_total{") {
            let entry = totals.entry(key(line)).or_default();
            let count = value(line);
            entry.requests += count;
            let status: u16 = label(line, "status_code").parse().unwrap_or(0);
            let grpc_ok = matches!(label(line, "grpc_status"), "" | "0");
            if status < 500 && grpc_ok {
                entry.successes += count;
            }
        } else if line.starts_with("nodus_request_duration_seconds_bucket{") {
            let le = label(line, "le");
            // Bucket bounds in microseconds, +Inf as the largest.
            let bound = if le == "+Inf" { u64::MAX } else { (le.parse::<f64>().unwrap_or(0.0) * 1e6) as u64 };
            *totals.entry(key(line)).or_default().buckets.entry(bound).or_default() += value(line);
        }
    }
    Ok(totals)
}

/// The smallest bucket bound below which `q` of the window's requests fell.
fn quantile(before: &Totals, after: &Totals, q: f64) -> Option<u64> {
    let delta: Vec<(u64, f64)> = after
        .buckets
        .iter()
        .map(|(bound, count)| (*bound, count - before.buckets.get(bound).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, cumulative)| *cumulative >= q * total).map(|(bound, _)| *bound)
}

fn format_bound(bound: Option<u64>) -> String {
    match bound {
        None => "-".into(),
        Some(u64::MAX) => ">10s".into(),
        Some(us) if us < 1000 => format!("<{}µs", us),
        Some(us) => format!("<{}ms", us as f64 / 1000.0),
    }
}

pub fn stat(args: StatArgs) -> Result<ExitCode> {
    let before = scrape(&args.target)?;
    std::thread::sleep(args.window);
    let after = scrape(&args.target)?;
    let seconds = args.window.as_secs_f64();
    let width = after.keys().map(String::len).max().unwrap_or(5).max(5);
    println!("{:width$}  {:>8} {:>9} {:>9} {:>9}", "ROUTE", "SUCCESS", "RPS", "P50", "P99");
    let mut rows = 0;
    for (key, now) in &after {
        let then = before.get(key).cloned().unwrap_or_default();
        let requests = now.requests - then.requests;
        if requests <= 0.0 {
            continue;
        }
        rows += 1;
        let success = 100.0 * (now.successes - then.successes) / requests;
        println!(
            "{key:width$}  {success:>7.2}% {:>9.1} {:>9} {:>9}",
            requests / seconds,
            format_bound(quantile(&then, now, 0.5)),
            format_bound(quantile(&then, now, 0.99))
        );
    }
    if rows == 0 {
        println!("(no requests in the last {:?})", args.window);
    }
    Ok(ExitCode::SUCCESS)
}
