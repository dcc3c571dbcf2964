//! Prometheus on the local cluster (`nodusctl cluster create --prometheus`): the real server
//! (Debian's `prometheus` package) runs on node-1, as a host-network monitoring pod would, and
//! scrapes every node proxy's admin port and the controller's monitoring port; its HTTP API and
//! UI are forwarded to a port on the host's loopback.
//!
//! Targets are static (the nodes are fixed when the cluster is made), each labelled with its
//! `node`, as the chart's ServiceMonitors relabel them in a real cluster.

use nodus_harness::{Node, Process};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where Prometheus listens inside node-1's network namespace.
pub const LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));

/// How often Prometheus scrapes: short, so a user sees a change within seconds.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);

/// What Prometheus scrapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeTargets {
    /// The controller's `/metrics`.
    pub controller: SocketAddr,
    /// Every node proxy's admin address, with its node's name.
    pub proxies: Vec<(String, SocketAddr)>,
}

/// The `prometheus.yml` that scrapes `targets` every `interval`.
pub fn config(targets: &ScrapeTargets, interval: Duration) -> String {
    let seconds = interval.as_secs().max(1);
    let mut text = format!(
        "# Written by nodusctl cluster create --prometheus (docs/local-cluster.md#prometheus).\n\
         global:\n  scrape_interval: {seconds}s\n  evaluation_interval: {seconds}s\n\
         scrape_configs:\n  - job_name: nodus-controller\n    static_configs:\n      - targets: ['{}']\n  \
         - job_name: nodus-node\n    static_configs:\n",
        targets.controller
    );
    for (node, address) in &targets.proxies {
        text.push_str(&format!("      - targets: ['{address}']\n        labels: {{ node: {node} }}\n"));
    }
    text
}

/// Why Prometheus did not start.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// Writing its config or folders failed.
    #[error("preparing Prometheus' folder {path}: {source}")]
    Folder {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The process could not run.
    #[error("starting Prometheus: {0}")]
    Start(#[from] nodus_harness::HarnessError),
    /// It did not answer `/-/ready`.
    #[error("Prometheus was not ready within 30 s; see {0}")]
    NotReady(String),
}

/// Starts `binary` on `node` with the config for `targets`, its data in `dir`, its log in
/// `log`; returns once it answers `/-/ready`.
pub fn start(
    node: &Node,
    binary: &Path,
    dir: &Path,
    log: &Path,
    targets: &ScrapeTargets,
) -> Result<Process, PrometheusError> {
    let folder = |path: &Path| {
        let path = path.display().to_string();
        move |source| PrometheusError::Folder { path, source }
    };
    std::fs::create_dir_all(dir.join("data")).map_err(folder(dir))?;
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config(targets, SCRAPE_INTERVAL)).map_err(folder(&config_path))?;
    let log_file = std::fs::File::create(log).map_err(folder(log))?;
    let mut command = node.command(binary)?;
    command
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={LISTEN}"))
        .stderr(log_file);
    let process = Process::spawn("prometheus", command)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = node.netns().run(|| nodus_harness::http_get(LISTEN, "/-/ready"));
        if matches!(ready, Ok(Ok((200, _)))) {
            return Ok(process);
        }
        if Instant::now() > deadline {
            return Err(PrometheusError::NotReady(log.display().to_string()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Forwards connections to `host` (on the host's loopback) to Prometheus inside `node`.
pub fn forward(node: &Node, host: std::net::TcpListener) -> std::io::Result<tokio::task::JoinHandle<()>> {
    host.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(host)?;
    let netns = node.netns().clone();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut outside, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let netns = netns.clone();
            tokio::spawn(async move {
                // The socket is made inside node-1's namespace, then driven from here.
                let inside = tokio::task::spawn_blocking(move || {
                    netns.run(|| {
                        let stream = std::net::TcpStream::connect_timeout(&LISTEN, Duration::from_secs(2))?;
                        stream.set_nonblocking(true)?;
                        Ok::<_, std::io::Error>(stream)
                    })
                })
                .await;
                let Ok(Ok(Ok(inside))) = inside else { return };
                if let Ok(mut inside) = tokio::net::TcpStream::from_std(inside) {
                    let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_scrapes_the_controller_and_every_proxy_with_its_node() {
        let targets = ScrapeTargets {
            controller: "10.100.0.11:15014".parse().unwrap_or(LISTEN),
            proxies: vec![
                ("node-1".into(), "10.100.0.11:15020".parse().unwrap_or(LISTEN)),
                ("node-2".into(), "10.100.0.12:15020".parse().unwrap_or(LISTEN)),
            ],
        };
        let text = config(&targets, Duration::from_secs(2));
        let parsed: serde_json::Value = serde_norway::from_str(&text).expect("valid YAML");
        assert_eq!(parsed["global"]["scrape_interval"], "2s");
        let jobs = parsed["scrape_configs"].as_array().expect("scrape_configs");
        assert_eq!(jobs[0]["job_name"], "nodus-controller");
        assert_eq!(jobs[0]["static_configs"][0]["targets"][0], "10.100.0.11:15014");
        assert_eq!(jobs[1]["job_name"], "nodus-node");
        let nodes = jobs[1]["static_configs"].as_array().expect("node targets");
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1]["targets"][0], "10.100.0.12:15020");
        assert_eq!(nodes[1]["labels"]["node"], "node-2");
    }

    #[test]
    fn sub_second_intervals_round_up_to_one_second() {
        let targets = ScrapeTargets { controller: LISTEN, proxies: vec![] };
        assert!(config(&targets, Duration::from_millis(200)).contains("scrape_interval: 1s"));
    }
}
