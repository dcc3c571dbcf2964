//! `nodus-proxy`: the node proxy process.

use anyhow::{bail, Context};
use clap::Parser;
use nodus_proxy::app::{self, Proxy, ProxySettings};
use nodus_proxy::balance::OutlierPolicy;
use nodus_proxy::control::enrollment::{Enrollment, NetnsDiscovery, RedirectCollector};
use nodus_proxy::core::metrics::Metrics;
use nodus_proxy::servers::original_dst::{FixedOriginalDst, OriginalDst};
use nodus_proxy::servers::outbound::OutboundSettings;
use nodus_redirect::{Redirect, RedirectSpec};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The Nodus node proxy: serves every mesh pod of one node.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// This node's name (the config's workloads name their node).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The first outbound listener (captured pod connections arrive here).
    #[arg(long, default_value = "0.0.0.0:15100")]
    outbound_addr: SocketAddr,
    /// How many outbound listeners, on consecutive ports from --outbound-addr's: the redirect
    /// sends each original destination to one of them, so that a pod's connections to different
    /// Services do not share its ephemeral ports (docs/redirect.md).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    outbound_ports: u16,
    /// Inbound listener: tunnels from other nodes' proxies to this node's pods.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], nodus_config::TUNNEL_PORT)))]
    inbound_addr: SocketAddr,
    /// Inbound capture listener (transparent): with the eBPF redirect, connections from outside
    /// the mesh to this node's mesh pods arrive here, so that strict mTLS and authorization
    /// apply to them. Listens on every address; only the port is used.
    #[arg(long, default_value = "0.0.0.0:15006")]
    capture_addr: SocketAddr,
    /// With the eBPF redirect: leave connections arriving for pods alone (no inbound capture).
    #[arg(long)]
    no_inbound_capture: bool,
    /// Admin listener (/metrics, /ready, /live).
    #[arg(long, default_value = "0.0.0.0:15020")]
    admin_addr: SocketAddr,
    /// Node-local debug listener (those and /config_dump): keep it on a loopback address, which
    /// pods cannot reach; `none` turns it off.
    #[arg(long, default_value = "127.0.0.1:15021", value_parser = parse_optional_addr)]
    debug_addr: OptionalAddr,
    /// The controller's config service, e.g. `http://nodus-controller:15012`.
    #[arg(long, env = "NODUS_CONTROLLER", required_unless_present = "config_file")]
    controller: Option<String>,
    /// The node token to authenticate to the controller with (`nodus-controller
    /// --print-node-token NODE` makes it), when the controller requires one.
    #[arg(long, env = "NODUS_NODE_TOKEN_FILE", requires = "controller")]
    node_token_file: Option<PathBuf>,
    /// The SPIFFE trust domain of workload identities (with --controller, the proxy obtains
    /// certificates for its node's mesh workloads from the controller's CA).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Instead of a controller: a config snapshot file (YAML), re-read when it changes.
    #[arg(long, conflicts_with = "controller")]
    config_file: Option<PathBuf>,
    /// Attach the eBPF redirect to this cgroup (the one holding the node's pods).
    #[arg(long, requires = "bpf_pin_dir")]
    redirect_cgroup: Option<PathBuf>,
    /// bpffs directory for the redirect's pinned links and maps.
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// The address pods reach the first outbound listener at (the redirect rewrites connects to
    /// it, or to one of the --outbound-ports after it).
    #[arg(long)]
    redirect_to: Option<SocketAddrV4>,
    /// Where pod network namespaces are bind-mounted.
    #[arg(long, default_value = "/run/netns")]
    netns_dir: PathBuf,
    /// Only namespaces whose names start with this belong to this node.
    #[arg(long, default_value = "")]
    netns_prefix: String,
    /// Without the redirect: treat every outbound connection as going to this address
    /// (benchmarks and tests that do not capture with eBPF).
    #[arg(long, conflicts_with = "redirect_cgroup")]
    fixed_original_dst: Option<SocketAddr>,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Consecutive failures that eject an endpoint.
    #[arg(long, default_value_t = 5)]
    outlier_failures: u32,
    /// First ejection time in milliseconds (doubles on each further ejection).
    #[arg(long, default_value_t = 5000)]
    outlier_ejection_ms: u64,
    /// How long to wait for a client's first bytes before treating it as opaque, in ms.
    #[arg(long, default_value_t = 1000)]
    detect_timeout_ms: u64,
    /// Largest HTTP request head in bytes (HTTP/1.1 request line and headers; HTTP/2 header
    /// list, which also bounds CONTINUATION floods). Larger heads are refused (431).
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Seconds an HTTP/1.1 client has to send a request head before its connection is closed
    /// (slowloris).
    #[arg(long, default_value_t = 10)]
    header_read_timeout_secs: u64,
    /// HTTP/2 streams one client connection may have open at once.
    #[arg(long, default_value_t = 256)]
    max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before they were answered, before its connection is
    /// closed (rapid reset, CVE-2023-44487).
    #[arg(long, default_value_t = 20)]
    max_pending_reset_streams: usize,
    /// A Unix socket where a CNI plugin (or the local cluster's node agent) enrols a new pod
    /// before its first process starts (docs/redirect.md#enrolment-before-the-first-packet).
    #[arg(long, requires = "redirect_cgroup")]
    cni_socket: Option<PathBuf>,
    /// A Unix socket for upgrades: a new proxy started with the same path takes the listening
    /// sockets over from this one, which then drains and exits (docs/operations.md).
    #[arg(long)]
    handoff_socket: Option<PathBuf>,
    /// After handing its listeners over and draining, wait for SIGTERM instead of exiting. Under
    /// a supervisor that restarts exited processes (a Kubernetes container), an exit would start
    /// a new proxy that takes the listeners back; the old pod is deleted once its successor is
    /// ready.
    #[arg(long, requires = "handoff_socket")]
    linger_after_handoff: bool,
    /// Seconds a stopping or upgraded proxy waits for its connections to finish.
    #[arg(long, default_value_t = 30)]
    drain_grace_secs: u64,
    /// Open outbound connections one pod may have through this proxy; more are closed at once.
    #[arg(long, default_value_t = 1024)]
    max_connections_per_source: usize,
    /// Requests one pod may have in progress through this proxy; more wait for a slot, so one
    /// pod flooding the shared proxy cannot starve the others.
    #[arg(long, default_value_t = 256)]
    max_requests_per_source: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.workers).enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let outlier = OutlierPolicy {
        consecutive_failures: args.outlier_failures,
        base_ejection: Duration::from_millis(args.outlier_ejection_ms),
        ..OutlierPolicy::default()
    };
    let inbound_capture = args.redirect_cgroup.is_some() && !args.no_inbound_capture;
    let settings = ProxySettings {
        outbound_addr: args.outbound_addr,
        outbound_ports: args.outbound_ports,
        admin_addr: args.admin_addr,
        debug_addr: args.debug_addr.0,
        inbound_addr: Some(args.inbound_addr),
        capture_addr: inbound_capture.then_some(args.capture_addr),
        outbound: OutboundSettings {
            detect_timeout: Duration::from_millis(args.detect_timeout_ms),
            limits: nodus_proxy::core::limits::ConnectionLimits {
                max_header_bytes: args.max_header_bytes,
                header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
                max_concurrent_streams: args.max_concurrent_streams,
                max_pending_reset_streams: args.max_pending_reset_streams,
            },
            sources: nodus_proxy::servers::fairness::SourceLimits {
                max_connections: args.max_connections_per_source,
                max_requests: args.max_requests_per_source,
            },
        },
    };
    let mut metrics = Metrics::new();
    let mut redirect_handle = None;
    let original_dst: Arc<dyn OriginalDst> = match (&args.redirect_cgroup, args.fixed_original_dst) {
        (Some(cgroup), _) => {
            let pin_dir = args.bpf_pin_dir.clone().context("--bpf-pin-dir is required with --redirect-cgroup")?;
            let proxy_addr = args.redirect_to.context("--redirect-to is required with --redirect-cgroup")?;
            let inbound_port = inbound_capture.then_some(args.capture_addr.port());
            let spec = RedirectSpec {
                cgroup: cgroup.clone(),
                pin_dir,
                proxy_addr,
                proxy_ports: args.outbound_ports,
                inbound_port,
            };
            let redirect = Redirect::attach(&spec).context("attaching the eBPF redirect")?;
            tracing::info!(outcome = ?redirect.outcome(), cgroup = %cgroup.display(), "eBPF redirect attached");
            let lookup = Arc::new(redirect.original_dst_map().context("opening the original-destination map")?);
            let shared = Arc::new(Mutex::new(redirect));
            metrics.registry_mut().register_collector(Box::new(RedirectCollector::new(shared.clone())));
            redirect_handle = Some(shared);
            lookup
        }
        (None, Some(fixed)) => Arc::new(FixedOriginalDst(fixed)),
        (None, None) => bail!("either --redirect-cgroup (eBPF capture) or --fixed-original-dst is needed"),
    };
    let proxy = Arc::new(Proxy::for_node(outlier, metrics, &args.node));
    let mut identities_for_handoff = None;
    match (&args.controller, &args.config_file) {
        (Some(controller), _) => {
            let credentials = match &args.node_token_file {
                Some(path) => nodus_proxy::control::config_client::NodeCredentials::token_file(path.clone()),
                None => nodus_proxy::control::config_client::NodeCredentials::none(),
            };
            drop(nodus_proxy::control::config_client::subscribe(
                proxy.clone(),
                controller.clone(),
                args.node.clone(),
                credentials.clone(),
            ));
            let signer = nodus_proxy::control::identity::ControllerSigner::new(controller, credentials)
                .with_context(|| format!("the controller address {controller}"))?;
            // Tunnels between node proxies become mutual TLS with the node's workload certificates.
            let identities = app::use_mutual_tls(&proxy, &args.trust_domain, &args.node, Arc::new(signer))
                .context("turning mutual TLS on")?;
            identities_for_handoff = Some(identities);
        }
        (None, Some(file)) => app::watch_config_file(proxy.clone(), file.clone(), Duration::from_millis(250)),
        (None, None) => bail!("either --controller or --config-file is needed"),
    }
    let redirect_for_capture = redirect_handle.clone();
    if let Some(redirect) = redirect_handle {
        let discovery = NetnsDiscovery { dir: args.netns_dir.clone(), prefix: args.netns_prefix.clone() };
        let enrollment = Arc::new(Enrollment::new(args.node.clone(), discovery, redirect));
        if let Some(path) = &args.cni_socket {
            nodus_proxy::control::cni::serve(path, proxy.store.clone(), enrollment.clone())
                .with_context(|| format!("serving the CNI socket {}", path.display()))?;
        }
        app::run_enrollment(proxy.clone(), enrollment, Duration::from_secs(2));
    }
    // An upgrade: take the listening sockets over from the running proxy, if one offers them —
    // but only once this process can serve what it accepts: its config applied and its
    // workloads' certificates held (until then the old proxy keeps serving).
    if args.handoff_socket.as_ref().is_some_and(|path| path.exists()) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let ready = || {
            proxy.store.load().is_some()
                && identities_for_handoff.as_ref().is_none_or(
                    |manager: &Arc<nodus_proxy::control::identity::IdentityManager>| manager.has_all(&proxy.store),
                )
        };
        while !ready() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !ready() {
            tracing::warn!("not ready after 60 s; taking the listeners over anyway");
        }
    }
    let inherited = match &args.handoff_socket {
        Some(path) => nodus_proxy::servers::handoff::take_over(path)
            .with_context(|| format!("taking the listeners over at {}", path.display()))?,
        None => None,
    };
    let upgrading = inherited.is_some();
    let listening = app::start_with(&proxy, &settings, original_dst, inherited).await.context("binding listeners")?;
    // Connections captured on their way in to pods are handed to this listener from now on.
    let capture_fd =
        listening.fds.iter().find(|(role, _)| *role == nodus_proxy::servers::handoff::ListenerRole::Capture);
    if let (Some(redirect), Some((_, fd))) = (&redirect_for_capture, capture_fd) {
        redirect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_capture_listener(fd)
            .context("registering the inbound capture listener")?;
    }
    if upgrading {
        tracing::info!("took the listeners over from the previous proxy, which now drains");
    }
    let handed_over = match args.handoff_socket.clone() {
        Some(path) => tokio::spawn(nodus_proxy::servers::handoff::offer(path, listening.fds.clone())),
        None => tokio::spawn(std::future::pending()),
    };
    // Harnesses wait for this line.
    println!(
        "nodus-proxy ready outbound={} inbound={} capture={} admin={}",
        listening.outbound,
        listening.inbound.map_or("-".to_owned(), |a| a.to_string()),
        listening.capture.map_or("-".to_owned(), |a| a.to_string()),
        listening.admin
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut handed = false;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        result = handed_over => match result {
            Ok(Ok(())) => {
                handed = true;
                tracing::info!("listeners handed over to a new proxy");
            }
            Ok(Err(error)) => tracing::warn!(%error, "offering the listeners failed"),
            Err(error) => tracing::warn!(%error, "offering the listeners failed"),
        },
    }
    // Drain: stop accepting, GOAWAY on HTTP/2, `Connection: close` on HTTP/1.1's next answer,
    // opaque relays to their end; then exit.
    proxy.drain.start();
    let grace = Duration::from_secs(args.drain_grace_secs);
    let left = proxy.drain.drained(grace).await;
    if handed && args.linger_after_handoff {
        tracing::info!(connections_cut = left, "drained; waiting for SIGTERM (the successor serves)");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    tracing::info!(connections_cut = left, "shutting down");
    Ok(())
}

/// A listener's address, or none (`none` on the command line).
#[derive(Clone, Copy, Debug)]
struct OptionalAddr(Option<SocketAddr>);

fn parse_optional_addr(text: &str) -> Result<OptionalAddr, std::net::AddrParseError> {
    match text {
        "none" => Ok(OptionalAddr(None)),
        addr => addr.parse().map(|addr| OptionalAddr(Some(addr))),
    }
}
