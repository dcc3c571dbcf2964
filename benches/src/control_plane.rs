//! Control-plane benchmark (issue 6): translation cost, change-to-ACK latency across subscribed
//! node proxies, and bytes pushed per change (delta against the full view as the baseline).
//!
//! Everything is real except the transport's distance: the controller's translation and
//! distributor, tonic gRPC over loopback, and node proxies' subscription code applying each
//! push to a real config store (validate and compile included). Run with
//! `cargo run --release -p nodus-bench --bin nodus-control-bench`.

use anyhow::{Context, Result};
use clap::Parser;
use nodus_controller::cluster::ClusterState;
use nodus_controller::distribute::Distributor;
use nodus_controller::manifests::parse_objects;
use nodus_controller::translate::{translate, LastAccepted, TranslateOptions};
use nodus_proxy::app::Proxy;
use nodus_proxy::balance::OutlierPolicy;
use nodus_proxy::core::metrics::Metrics;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Control-plane benchmark.
#[derive(Parser, Debug)]
struct Args {
    /// Services (and as many HTTPRoutes, one per Service).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Node proxies subscribed.
    #[arg(long, default_value_t = 10)]
    proxies: usize,
    /// Repetitions of each measurement (the median is reported, with the range).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
}

/// Manifests for `services` Services with a slice, a pod each, and `routes` HTTPRoutes; the
/// pods are spread over `nodes` nodes. `marker` changes the first `changed` routes' paths.
fn manifests(services: usize, nodes: usize, changed: usize, marker: u32) -> String {
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: demo, labels: { nodus.dev/mesh: enabled } }\n",
    );
    for i in 0..services {
        let (a, b) = (i / 250, i % 250);
        let node = i % nodes + 1;
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{ name: svc-{i}, namespace: demo }}\nspec: {{ clusterIP: 10.96.{a}.{b}, ports: [{{ name: http, port: 80, targetPort: 8080 }}] }}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{ name: svc-{i}-1, namespace: demo, labels: {{ kubernetes.io/service-name: svc-{i} }} }}\naddressType: IPv4\nports: [{{ name: http, port: 8080 }}]\nendpoints: [{{ addresses: [10.{}.{a}.{b}], nodeName: node-{node}, targetRef: {{ kind: Pod, name: pod-{i}, namespace: demo }} }}]\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: pod-{i}, namespace: demo }}\nspec: {{ nodeName: node-{node}, containers: [{{ name: c, image: c }}] }}\nstatus: {{ phase: Running, hostIP: 10.100.0.{node}, podIP: 10.{}.{a}.{b} }}\n\
---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{ name: route-{i}, namespace: demo }}\nspec:\n  parentRefs: [{{ group: \"\", kind: Service, name: svc-{i}, port: 80 }}]\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: /v{} }} }}, {{ headers: [{{ name: x-canary, value: \"1\" }}] }}]\n      backendRefs: [{{ name: svc-{i}, port: 80, weight: 90 }}, {{ name: svc-{}, port: 80, weight: 10 }}]\n      timeouts: {{ request: 2s }}\n",
            200 + node,
            200 + node,
            if i < changed { marker } else { 0 },
            (i + 1) % services,
        );
    }
    text
}

fn state(text: &str) -> Result<ClusterState> {
    Ok(ClusterState::from_objects(parse_objects(Path::new("bench.yaml"), text).context("manifests")?))
}

fn median(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let options = TranslateOptions::default();
    let base = state(&manifests(args.services, args.proxies, 0, 0))?;

    // 1. Translation of the whole cluster.
    let mut translate_ms: Vec<f64> = (0..args.rounds)
        .map(|_| {
            let started = Instant::now();
            let t = translate(&base, &options, &LastAccepted::new());
            std::hint::black_box(&t);
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let translation = translate(&base, &options, &LastAccepted::new());
    translation.snapshot.validate().context("translated snapshot must validate")?;

    // 2. Subscribed proxies over real gRPC.
    let distributor = Distributor::new();
    distributor.publish(translation.snapshot.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = distributor.service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut proxies = Vec::new();
    for n in 1..=args.proxies {
        let node = format!("node-{n}");
        let proxy = Arc::new(Proxy::for_node(OutlierPolicy::default(), Metrics::new(), &node));
        nodus_proxy::control::config_client::subscribe(
            proxy.clone(),
            format!("http://{addr}"),
            node,
            nodus_proxy::control::config_client::NodeCredentials::none(),
        );
        proxies.push(proxy);
    }
    let version = distributor.current().version;
    let all_acked = |version: u64| {
        move |s: &std::collections::BTreeMap<String, nodus_controller::distribute::NodeStatus>| {
            s.len() == args.proxies && s.values().all(|n| n.acked_version >= version)
        }
    };
    anyhow::ensure!(distributor.wait_for(Duration::from_secs(60), all_acked(version)).await, "initial sync");
    let full_bytes: u64 = distributor.node_statuses().values().map(|n| n.last_push_bytes).sum();

    // 3. Change-to-ACK latency and bytes, for 1 and for all routes changed.
    let mut report = String::new();
    let mut rows = Vec::new();
    let mut marker = 1;
    for changed in [1, args.services] {
        let mut latency = Vec::new();
        let mut translate_and_publish = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..args.rounds {
            marker += 1;
            let edited = state(&manifests(args.services, args.proxies, changed, marker))?;
            let started = Instant::now();
            let t = translate(&edited, &options, &LastAccepted::new());
            let version = distributor.publish(t.snapshot);
            translate_and_publish.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(
                distributor.wait_for(Duration::from_secs(60), all_acked(version)).await,
                "ack of {version}"
            );
            latency.push(started.elapsed().as_secs_f64() * 1e3);
            let statuses = distributor.node_statuses();
            anyhow::ensure!(statuses.values().all(|n| !n.last_push_full), "changes travel as deltas");
            bytes.push(statuses.values().map(|n| n.last_push_bytes).sum::<u64>() as f64);
        }
        rows.push((changed, median(&mut translate_and_publish), median(&mut latency), median(&mut bytes)));
    }
    for p in &proxies {
        anyhow::ensure!(
            p.store.load().is_some_and(|s| s.version == distributor.current().version),
            "every proxy serves the last version"
        );
    }

    let (t_med, t_min, t_max) = median(&mut translate_ms);
    let _ = writeln!(
        report,
        "# Control plane: {} Services, {} HTTPRoutes, {} node proxies subscribed over gRPC (loopback)\n",
        args.services, args.services, args.proxies
    );
    let _ = writeln!(
        report,
        "Translate the whole cluster: {t_med:.1} ms median (range {t_min:.1}-{t_max:.1}), {} rounds.\n",
        args.rounds
    );
    let _ =
        writeln!(report, "Full initial push to all proxies: {full_bytes} bytes (the baseline for the delta ratio).\n");
    let _ = writeln!(report, "| routes changed | translate + publish (ms) | change to every proxy's ACK (ms) | bytes pushed (all proxies) | delta / full |");
    let _ = writeln!(report, "|---|---|---|---|---|");
    for (changed, tp, latency, bytes) in rows {
        let _ = writeln!(
            report,
            "| {changed} | {:.1} ({:.1}-{:.1}) | {:.1} ({:.1}-{:.1}) | {:.0} | {:.4} |",
            tp.0,
            tp.1,
            tp.2,
            latency.0,
            latency.1,
            latency.2,
            bytes.0,
            bytes.0 / full_bytes as f64
        );
    }
    print!("{report}");
    Ok(())
}
