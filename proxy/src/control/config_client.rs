//! The proxy's side of the control plane: one gRPC stream to the controller.
//!
//! The proxy says Hello with its node name and the resources it holds, applies each push
//! all or nothing (decode, assemble, validate, compile), and answers ACK or NACK with the error
//! text. When the stream breaks it keeps serving its last good config and reconnects with
//! backoff, resuming from what it holds so that only changes are sent again.

use crate::core::metrics::Metrics;
use nodus_config::ConfigSnapshot;
use nodus_wire::proto::config_discovery_client::ConfigDiscoveryClient;
use nodus_wire::proto::{subscribe_request, Ack, ConfigPush, Hello, Nack, SubscribeRequest};
use nodus_wire::ResourceSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// How this proxy proves its node to the controller: the node token (`--node-token-file`), when
/// the controller requires one. Passed to every control-plane client of the proxy.
#[derive(Clone, Debug, Default)]
pub struct NodeCredentials {
    token_file: Option<std::path::PathBuf>,
}

impl NodeCredentials {
    /// No token: for a controller that does not require one.
    pub fn none() -> Self {
        Self::default()
    }

    /// The node token in `path`, read at each call, so that a token replaced on disk is used
    /// from the next call on.
    pub fn token_file(path: std::path::PathBuf) -> Self {
        Self { token_file: Some(path) }
    }

    /// `message` as a call carrying the node token, if one is configured.
    pub fn authenticated<T>(&self, message: T) -> Result<tonic::Request<T>, tonic::Status> {
        let mut request = tonic::Request::new(message);
        let Some(path) = &self.token_file else { return Ok(request) };
        let token = std::fs::read_to_string(path)
            .map_err(|e| tonic::Status::unauthenticated(format!("reading the node token {}: {e}", path.display())))?;
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| tonic::Status::unauthenticated("the node token is not valid metadata"))?;
        request.metadata_mut().insert(nodus_identity::node_token::TOKEN_METADATA, value);
        Ok(request)
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where the config client delivers what it receives. The composition root (`app::Proxy`)
/// implements it, so that this layer depends on nothing above it.
pub trait ConfigSink: Send + Sync + 'static {
    /// The controller's version of the config in force (0: none yet).
    fn applied_version(&self) -> u64;
    /// Applies a snapshot whole or not at all; the error text is what the NACK carries.
    fn apply_snapshot(&self, snapshot: ConfigSnapshot) -> Result<u64, String>;
    /// The metrics the client reports its connection in.
    fn metrics(&self) -> &Metrics;
}

/// Subscribes to the controller at `endpoint` (e.g. `http://10.0.0.1:15012`) for `node`, forever,
/// proving the node with `credentials`.
pub fn subscribe<S: ConfigSink>(
    proxy: Arc<S>,
    endpoint: String,
    node: String,
    credentials: NodeCredentials,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = ResourceSet::default();
        let mut backoff = MIN_BACKOFF;
        loop {
            let span = tracing::info_span!("control_plane", %endpoint, %node);
            match run_stream(&*proxy, &endpoint, &node, &credentials, &mut held, &span).await {
                Ok(()) => tracing::warn!(parent: &span, "controller closed the stream; serving the last good config"),
                Err(error) => {
                    tracing::warn!(parent: &span, %error, "controller unreachable; serving the last good config")
                }
            }
            // A stream that got established resets the backoff; failures to connect double it.
            let was_connected = proxy.metrics().control_plane_connected.get() == 1;
            proxy.metrics().control_plane_connected.set(0);
            backoff = if was_connected { MIN_BACKOFF } else { (backoff * 2).min(MAX_BACKOFF) };
            let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
            tokio::time::sleep(backoff + jitter).await;
        }
    })
}

async fn run_stream(
    proxy: &impl ConfigSink,
    endpoint: &str,
    node: &str,
    credentials: &NodeCredentials,
    held: &mut ResourceSet,
    span: &tracing::Span,
) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (requests, receiver) = mpsc::channel(4);
    let applied_version = proxy.applied_version();
    let hello = Hello { node: node.to_string(), known: held.versions().into_iter().collect(), applied_version };
    let send = |message| SubscribeRequest { message: Some(message) };
    requests
        .send(send(subscribe_request::Message::Hello(hello)))
        .await
        .map_err(|_| tonic::Status::internal("request stream closed"))?;
    let mut pushes = ConfigDiscoveryClient::new(channel)
        .subscribe(credentials.authenticated(ReceiverStream::new(receiver))?)
        .await?
        .into_inner();
    tracing::info!(parent: span, resumed = !held.is_empty(), "subscribed to the controller");
    proxy.metrics().control_plane_connected.set(1);
    while let Some(push) = pushes.message().await? {
        let answer = match apply_push(proxy, held, &push) {
            Ok(()) => subscribe_request::Message::Ack(Ack { version: push.version, nonce: push.nonce.clone() }),
            Err(error) => {
                tracing::warn!(parent: span, version = push.version, %error, "push rejected (NACK); the previous config stays in force");
                subscribe_request::Message::Nack(Nack { version: push.version, nonce: push.nonce.clone(), error })
            }
        };
        if requests.send(send(answer)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Applies one push all or nothing; the error text is what the NACK carries.
fn apply_push(proxy: &impl ConfigSink, held: &mut ResourceSet, push: &ConfigPush) -> Result<(), String> {
    let (snapshot, next) = held.stage(push).map_err(|e| e.to_string())?;
    proxy.apply_snapshot(snapshot)?;
    *held = next;
    Ok(())
}
