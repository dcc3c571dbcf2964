//! The peers and load generators of the side-by-side scenarios: nginx as backend and as reverse
//! proxy, haproxy, and wrk (closed loop) and oha (fixed rate, latency-corrected) run in a pod.

use anyhow::{bail, Context, Result};
use nodus_harness::{Pod, Process};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{Args, BACKEND_PORT, HAPROXY_PORT, NGINX_PROXY_PORT};

pub(crate) fn nginx_common(work: &Path, name: &str) -> String {
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

pub(crate) fn spawn_logged(name: &str, mut command: Command, work: &Path) -> Result<Process> {
    let log = work.join(format!("{name}.log"));
    command.stderr(std::fs::File::create(&log)?);
    let mut process = Process::spawn(name, command)?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = process.try_wait() {
        bail!("{name} exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    Ok(process)
}

pub(crate) fn start_nginx_backend(pod: &Pod, work: &Path) -> Result<Process> {
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

pub(crate) fn start_nginx_proxy(node: &nodus_harness::Node, backend: &Pod, work: &Path) -> Result<Process> {
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

pub(crate) fn start_haproxy(node: &nodus_harness::Node, backend: &Pod, work: &Path) -> Result<Process> {
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
pub(crate) fn wrk(pod: &Pod, target: &str, args: &Args) -> Result<(f64, f64)> {
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
pub(crate) fn oha(pod: &Pod, target: &str, args: &Args, rate: u32) -> Result<(f64, f64, f64, f64)> {
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
