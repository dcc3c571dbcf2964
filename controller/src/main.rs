//! `nodus-controller`: translates Kubernetes objects (or a directory of manifests) into node
//! proxy config and serves it over gRPC.

use anyhow::Context;
use clap::Parser;
use nodus_controller::distribute::Distributor;
use nodus_controller::node_auth::{Authenticated, NodeAuth};
use nodus_controller::reconcile::Reconciler;
use nodus_controller::standalone::StandaloneSettings;
use nodus_controller::token_review::KubernetesTokens;
use nodus_controller::translate::TranslateOptions;
use nodus_identity::node_token::NodeTokenKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The Nodus controller.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// gRPC address node proxies subscribe to.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Standalone mode: read the cluster from this directory of YAML manifests instead of an
    /// API server, and re-read it when it changes.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Standalone mode: write route status here (YAML).
    #[arg(long, requires = "manifests")]
    status_file: Option<PathBuf>,
    /// Write Nodus's CRDs (generated from their Rust types) into this directory and exit.
    #[arg(long, value_name = "DIR")]
    write_crds: Option<PathBuf>,
    /// Generate a new root CA, stage it in this directory as `next.pem`/`next-key.pem` and exit.
    /// A controller using that --ca-dir rotates to it (docs/security.md); for the CA Secret,
    /// copy the two files into it as `next.crt`/`next.key`.
    #[arg(long, value_name = "DIR")]
    generate_root: Option<PathBuf>,
    /// Require node proxies to authenticate with a node token made from this key (created, mode
    /// 0600, if missing): each proxy then gets only its own node's config and certificates.
    #[arg(long, value_name = "FILE")]
    node_token_key: Option<PathBuf>,
    /// Print the node token of NODE (made from --node-token-key) and exit: what to give that
    /// node's proxy (`--node-token-file`).
    #[arg(long, value_name = "NODE", requires = "node_token_key")]
    print_node_token: Option<String>,
    /// In a cluster: accept the projected service-account tokens of this service account
    /// (NAMESPACE/NAME) from node proxies, checked by the API server (TokenReview); a proxy then
    /// acts only for the node of the pod its token is bound to.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    node_service_account: Option<nodus_controller::token_review::ServiceAccountRef>,
    /// The audience node proxies' service-account tokens must be made for.
    #[arg(long, default_value = nodus_controller::token_review::DEFAULT_AUDIENCE)]
    node_token_audience: String,
    /// The namespace the controller runs in (its CA Secret `nodus-ca` lives there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "nodus-system")]
    namespace: String,
    /// The SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Where the CA's certificate and key are kept (created if missing). Without it: the Secret
    /// `nodus-ca` in --namespace, or, in standalone mode, a CA made for this run only.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Lifetime of workload certificates (proxies renew them at half of it).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    certificate_lifetime: Duration,
    /// Where to serve the controller's own `/metrics` (Prometheus scrapes it).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], nodus_controller::metrics::MONITORING_PORT)))]
    metrics_addr: SocketAddr,
    /// Port node proxies accept tunnels on.
    #[arg(long, default_value_t = nodus_config::TUNNEL_PORT)]
    tunnel_port: u16,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    nodus_config::parse_gateway_duration(text)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(dir) = &args.write_crds {
        for (name, yaml) in nodus_api::crds_yaml().context("generating CRDs")? {
            let path = dir.join(name);
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        return Ok(());
    }
    if let Some(dir) = &args.generate_root {
        nodus_controller::trust::stage_root(dir, &args.trust_domain)
            .with_context(|| format!("staging a new root in {}", dir.display()))?;
        println!("staged a new root in {}: next.pem, next-key.pem", dir.display());
        return Ok(());
    }
    if let (Some(node), Some(path)) = (&args.print_node_token, &args.node_token_key) {
        let key = NodeTokenKey::load_or_create(path).with_context(|| format!("reading {}", path.display()))?;
        println!("{}", key.token(node));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let distributor = Distributor::new();
    let metrics = std::sync::Arc::new(nodus_controller::metrics::ControllerMetrics::new(distributor.clone()));
    let reconciler = Reconciler::new(TranslateOptions { tunnel_port: args.tunnel_port }, distributor.clone())
        .with_metrics(metrics.clone());
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {} for /metrics", args.metrics_addr))?;
    let metrics_local = metrics_listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = metrics.serve(metrics_listener).await {
            tracing::error!(%error, "the /metrics listener failed");
        }
    });
    let kube_client = match (&args.manifests, &args.node_service_account) {
        (Some(_), None) => None,
        _ => Some(kube::Client::try_default().await.context("connecting to the Kubernetes API")?),
    };
    // Standalone mode reads no cluster state even when a client is there to review tokens.
    let cluster = if args.manifests.is_some() { None } else { kube_client.clone() };
    use nodus_controller::trust::CaStore;
    let store = match (&args.ca_dir, &cluster) {
        (Some(dir), _) => CaStore::Dir(dir.clone()),
        (None, Some(client)) => CaStore::Secret { client: client.clone(), namespace: args.namespace.clone() },
        (None, None) => CaStore::Memory,
    };
    let ca = match (&args.ca_dir, &cluster) {
        (Some(dir), _) => nodus_controller::certificates::load_or_create_ca(dir, &args.trust_domain)
            .with_context(|| format!("loading the CA from {}", dir.display()))?,
        (None, Some(client)) => {
            nodus_controller::certificates::load_or_create_ca_secret(client, &args.namespace, &args.trust_domain)
                .await
                .context("loading the CA Secret")?
        }
        (None, None) => {
            tracing::warn!("no --ca-dir: using a CA made for this run only");
            nodus_identity::CertificateAuthority::generate(&args.trust_domain, Duration::from_secs(365 * 86_400))?
        }
    };
    let certificates = nodus_controller::certificates::CertificateService::new(
        std::sync::Arc::new(ca),
        &args.trust_domain,
        args.certificate_lifetime,
        distributor.clone(),
    );
    let rotation = nodus_controller::trust::TrustAnchorRotation {
        store,
        certificates: certificates.clone(),
        distributor: distributor.clone(),
        poll: Duration::from_secs(1),
    };
    rotation.publish_active();
    tokio::spawn(rotation.run());
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    let mut auth = NodeAuth::off();
    if let Some(path) = &args.node_token_key {
        let key = NodeTokenKey::load_or_create(path).with_context(|| format!("reading {}", path.display()))?;
        tracing::info!(key = %path.display(), "node proxies may authenticate with node tokens");
        auth = auth.with_node_tokens(key);
    }
    if let (Some(account), Some(client)) = (&args.node_service_account, &kube_client) {
        tracing::info!(
            account = %account.username(),
            audience = %args.node_token_audience,
            "node proxies may authenticate with their service-account tokens"
        );
        let tokens = KubernetesTokens::new(client.clone(), account.clone(), args.node_token_audience.clone());
        auth = auth.with_kubernetes(tokens);
    }
    if !auth.is_required() {
        tracing::warn!(
            "neither --node-token-key nor --node-service-account: node proxies are not authenticated; \
             any client can claim any node"
        );
    }
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(Authenticated::new(distributor.service(), auth.clone()))
        .add_service(Authenticated::new(certificates.service(), auth))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let source = match (args.manifests, cluster) {
        (Some(dir), _) => {
            let settings = StandaloneSettings { dir, status_file: args.status_file, poll: Duration::from_millis(200) };
            tokio::spawn(nodus_controller::standalone::run(settings, reconciler))
        }
        (None, client) => {
            let client = client.context("a Kubernetes client")?;
            tokio::spawn(nodus_controller::kube_io::run(client, reconciler))
        }
    };
    // Harnesses wait for this line.
    println!("nodus-controller ready grpc={local} metrics={metrics_local}");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = server => result.context("gRPC server")?,
        _ = source => anyhow::bail!("the config source stopped"),
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    distributor.close_streams();
    Ok(())
}
