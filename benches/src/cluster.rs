//! Figures of the local cluster (docs/local-cluster.md#measured): `cluster create` to ready;
//! N pods of one Deployment scheduled, running and Ready; the time from a new pod being Ready to
//! its first request through the mesh; cluster DNS answer time.
//!
//! `cargo build --release --workspace && sudo target/release/nodus-cluster-bench [--pods 100]`
//! (needs root and scripts/setup-kapi.sh). Wall-clock figures of one run, printed as a table: on
//! a noisy 2-core machine, read them as orders of magnitude, not as a benchmark of the code.

use anyhow::{bail, Context, Result};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nodus_cluster::local::{ClusterSpec, LocalCluster};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Replicas of the Deployment.
    #[arg(long, default_value_t = 100)]
    pods: i32,
    /// DNS queries to time.
    #[arg(long, default_value_t = 2000)]
    dns_queries: usize,
    /// Nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_norway::from_str(text).context("a built-in manifest")
}

fn deployment(name: &str, replicas: i32) -> Result<Deployment> {
    from_yaml(&format!(
        "metadata: {{ name: {name}, namespace: bench }}\n\
         spec:\n  replicas: {replicas}\n  selector: {{ matchLabels: {{ app: {name} }} }}\n  template:\n    metadata: {{ labels: {{ app: {name} }} }}\n    spec:\n      containers:\n        - name: echo\n          image: nodus-echo\n          ports: [{{ containerPort: 8080 }}]\n          readinessProbe: {{ tcpSocket: {{ port: 8080 }}, periodSeconds: 1 }}\n"
    ))
}

fn service(name: &str) -> Result<Service> {
    from_yaml(&format!(
        "metadata: {{ name: {name}, namespace: bench }}\nspec: {{ selector: {{ app: {name} }}, ports: [{{ port: 80, targetPort: 8080 }}] }}"
    ))
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let binaries = std::env::current_exe()?.parent().context("the binaries' folder")?.to_path_buf();
    let spec = ClusterSpec {
        nodes: args.nodes,
        dir: dir.path().to_path_buf(),
        kapi_kit: std::env::var_os("NODUS_KAPI_KIT").map_or_else(|| repository().join("../shared/kapi"), PathBuf::from),
        kapi_bin: std::env::var_os("NODUS_KAPI_BIN")
            .map_or_else(|| repository().join(".cache/kapi/bin"), PathBuf::from),
        nodus_crds: repository().join("charts/nodus/crds"),
        binaries,
        exec_helper: None,
        prometheus: None,
        prometheus_port: 0,
    };
    let started = Instant::now();
    let cluster = LocalCluster::start(&spec).await?;
    let create = started.elapsed();

    let client = cluster.client.clone();
    let namespace: Namespace = from_yaml("metadata: { name: bench, labels: { nodus.dev/mesh: enabled } }")?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "bench");
    let services: Api<Service> = Api::namespaced(client.clone(), "bench");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let client_pod: Pod = from_yaml("metadata: { name: client, namespace: bench }\nspec: { containers: [{ name: c, image: busybox, command: [sleep, infinity] }] }")?;
    pods.create(&PostParams::default(), &client_pod).await?;
    for name in ["many", "fresh"] {
        services.create(&PostParams::default(), &service(name)?).await?;
    }

    // N pods of one Deployment: scheduled, running and Ready.
    let started = Instant::now();
    deployments.create(&PostParams::default(), &deployment("many", args.pods)?).await?;
    wait_for("the Deployment's pods Ready", Duration::from_secs(600), || async {
        let d = deployments.get("many").await.ok()?;
        (d.status?.ready_replicas == Some(args.pods)).then_some(())
    })
    .await?;
    let many_ready = started.elapsed();

    // A new pod, the only endpoint of its Service: from Ready to its first answer through the mesh.
    let client_sandbox = wait_for("the client pod", Duration::from_secs(60), || async {
        cluster.lab.lock().ok()?.pods().iter().find(|p| p.namespace == "bench" && p.name == "client").cloned()
    })
    .await?;
    let fresh_ip = services.get("fresh").await?.spec.and_then(|s| s.cluster_ip).context("fresh has a ClusterIP")?;
    let caller = tokio::task::spawn_blocking(move || {
        // curl in the client pod, again and again, until an answer: when it came.
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let answered = client_sandbox
                .command("curl")
                .ok()
                .and_then(|mut c| {
                    c.args(["-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{fresh_ip}/")])
                        .output()
                        .ok()
                })
                .is_some_and(|out| out.stdout == b"200");
            if answered {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    });
    deployments.create(&PostParams::default(), &deployment("fresh", 1)?).await?;
    let became_ready = wait_for("the fresh pod Ready", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default().labels("app=fresh")).await.ok()?;
        list.items
            .iter()
            .any(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .then(Instant::now)
    })
    .await?;
    let first_answer = caller.await?.context("the fresh pod never answered")?;
    let ready_to_traffic = first_answer.saturating_duration_since(became_ready);

    // DNS: sequential A queries from node-1's namespace to its server.
    let node = cluster.lab.lock().map_err(|_| anyhow::anyhow!("lab lock"))?.nodes()[0].clone();
    let queries = args.dns_queries;
    let mut times = tokio::task::spawn_blocking(move || {
        node.netns().run(move || {
            let socket = std::net::UdpSocket::bind((node.ip, 0))?;
            socket.set_read_timeout(Some(Duration::from_secs(1)))?;
            socket.connect((node.ip, 53))?;
            let query = dns_query("many.bench.svc.cluster.local");
            let mut answer = [0u8; 512];
            let mut times = Vec::with_capacity(queries);
            for _ in 0..queries {
                let sent = Instant::now();
                socket.send(&query)?;
                socket.recv(&mut answer)?;
                times.push(sent.elapsed());
            }
            Ok::<_, std::io::Error>(times)
        })
    })
    .await???;
    times.sort();
    let _ = deployments
        .patch("many", &PatchParams::default(), &Patch::Merge(&serde_json::json!({ "spec": { "replicas": 0 } })))
        .await;

    println!("| measure | value |");
    println!("|---|---|");
    println!("| `cluster create` to ready ({} nodes, after the build) | {:.2} s |", args.nodes, create.as_secs_f64());
    println!(
        "| {} pods of one Deployment scheduled, running and Ready | {:.1} s |",
        args.pods,
        many_ready.as_secs_f64()
    );
    println!("| a new pod Ready → its first answer through the mesh | {} ms |", ready_to_traffic.as_millis());
    println!(
        "| cluster DNS answer, p50 / p99 of {queries} | {} µs / {} µs |",
        percentile(&times, 0.5).as_micros(),
        percentile(&times, 0.99).as_micros()
    );
    drop(cluster);
    Ok(())
}

/// A DNS query for the A record of `name`, in wire format (RFC 1035 §4.1).
fn dns_query(name: &str) -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}
