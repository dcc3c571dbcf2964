//! The gRPC service node proxies subscribe to (`nodus.mesh.v1.ConfigDiscovery`).
//!
//! The controller publishes whole-mesh snapshots; each subscriber's task cuts its node's view
//! out of the latest one, diffs it against what that proxy holds, and sends the difference.
//! One push is in flight per proxy at a time: the next waits for the ACK or NACK, so a NACKed
//! push is never built upon, and a burst of changes coalesces into one push.

use crate::node_view::node_view;
use nodus_config::{ConfigSnapshot, TrustRoot};
use nodus_wire::proto::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use nodus_wire::proto::{subscribe_request, ConfigPush, SubscribeRequest};
use nodus_wire::{select, split, ResourceMap, ResourceMapDelta};
use prost::Message;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A published whole-mesh config.
#[derive(Debug, Default)]
pub struct Published {
    /// Its version (0: nothing published yet).
    pub version: u64,
    /// The config.
    pub snapshot: ConfigSnapshot,
    /// The config cut into resources, encoded once for every subscriber.
    pub resources: ResourceMap,
}

/// What the controller knows of one node proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// A stream is open.
    pub connected: bool,
    /// The last version the proxy acknowledged.
    pub acked_version: u64,
    /// The last push it refused: version and its error text.
    pub last_nack: Option<(u64, String)>,
    /// Pushes sent, and their encoded size in bytes.
    pub pushes: u64,
    /// Bytes of all pushes sent.
    pub bytes_sent: u64,
    /// Size of the last push in bytes.
    pub last_push_bytes: u64,
    /// Whether the last push was full (not a delta).
    pub last_push_full: bool,
    /// Of the pushes, how many were full (the rest were deltas).
    pub full_pushes: u64,
    /// Pushes the proxy acknowledged.
    pub acks: u64,
    /// Pushes the proxy refused.
    pub nacks: u64,
}

/// Publishes snapshots to subscribed node proxies.
#[derive(Clone)]
pub struct Distributor {
    published: Arc<watch::Sender<Arc<Published>>>,
    nodes: Arc<Mutex<BTreeMap<String, NodeStatus>>>,
    /// Bumped on every ACK, NACK or connection change, for whoever waits on node status.
    changes: Arc<watch::Sender<u64>>,
    /// Set when the controller shuts down: every stream ends so proxies reconnect elsewhere.
    closing: Arc<watch::Sender<bool>>,
    /// The CA roots every published snapshot carries (set by the trust-anchor rotation).
    trust_roots: Arc<Mutex<Vec<TrustRoot>>>,
}

impl std::fmt::Debug for Distributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributor").field("version", &self.current().version).finish_non_exhaustive()
    }
}

impl Default for Distributor {
    fn default() -> Self {
        Self::new()
    }
}

impl Distributor {
    /// A distributor with nothing published.
    pub fn new() -> Self {
        Self {
            published: Arc::new(watch::channel(Arc::new(Published::default())).0),
            nodes: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
            closing: Arc::new(watch::channel(false).0),
            trust_roots: Arc::default(),
        }
    }

    /// Publishes a snapshot; returns its version. A snapshot equal to the current one (other
    /// than its version) keeps the current version and wakes nobody.
    /// The snapshot's trust roots are replaced by those set with [`Self::set_trust_roots`].
    pub fn publish(&self, snapshot: ConfigSnapshot) -> u64 {
        self.replace(|_| Some(snapshot))
    }

    /// Sets the CA roots every node trusts and publishes them with the current config (if one
    /// was published yet); returns the version carrying them (0: none yet).
    pub fn set_trust_roots(&self, roots: Vec<TrustRoot>) -> u64 {
        *self.trust_roots.lock().unwrap_or_else(|p| p.into_inner()) = roots;
        self.replace(|current| (current.version != 0).then(|| current.snapshot.clone()))
    }

    /// The trust roots set.
    pub fn trust_roots(&self) -> Vec<TrustRoot> {
        self.trust_roots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes what `next` makes of the current config, if anything, with the trust roots.
    fn replace(&self, next: impl FnOnce(&Published) -> Option<ConfigSnapshot>) -> u64 {
        let mut version = 0;
        self.published.send_if_modified(|current| {
            let Some(mut snapshot) = next(current) else {
                version = current.version;
                return false;
            };
            // Read under the watch's lock: a publish racing a roots change still carries them.
            snapshot.trust_roots = self.trust_roots();
            snapshot.version = current.snapshot.version;
            if current.version != 0 && current.snapshot == snapshot {
                version = current.version;
                return false;
            }
            let resources = match split(&snapshot) {
                Ok(resources) => resources,
                Err(error) => {
                    // Config objects always serialize; if one does not, publishing nothing is
                    // the safe choice: proxies keep the config in force.
                    tracing::error!(%error, "cannot encode the config; not published");
                    version = current.version;
                    return false;
                }
            };
            version = current.version + 1;
            snapshot.version = version;
            *current = Arc::new(Published { version, snapshot, resources });
            true
        });
        version
    }

    /// The current published config.
    pub fn current(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    /// What is known of every node proxy that ever subscribed.
    pub fn node_statuses(&self) -> BTreeMap<String, NodeStatus> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `done` holds for the node statuses, or `timeout` passes; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&BTreeMap<String, NodeStatus>) -> bool) -> bool {
        let mut changes = self.changes.subscribe();
        let wait = async {
            loop {
                if done(&self.node_statuses()) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    pub(crate) fn update_node(&self, node: &str, change: impl FnOnce(&mut NodeStatus)) {
        change(self.nodes.lock().unwrap_or_else(|p| p.into_inner()).entry(node.to_string()).or_default());
        self.changes.send_modify(|n| *n += 1);
    }

    /// Ends every subscriber's stream (controller shutdown); proxies keep their config and
    /// reconnect, to this controller's successor or another replica.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// The tonic service to add to a server.
    pub fn service(&self) -> ConfigDiscoveryServer<Self> {
        ConfigDiscoveryServer::new(self.clone())
    }

    /// Serves one subscriber until its stream ends.
    async fn serve_node(
        self,
        inbound: Streaming<SubscribeRequest>,
        authenticated: Option<crate::node_auth::AuthenticatedNode>,
        outbound: mpsc::Sender<Result<ConfigPush, Status>>,
    ) {
        let mut closing = self.closing.subscribe();
        tokio::select! {
            () = self.clone().stream_to_node(inbound, authenticated, outbound) => {}
            _ = closing.wait_for(|closing| *closing) => {}
        }
    }

    async fn stream_to_node(
        self,
        mut inbound: Streaming<SubscribeRequest>,
        authenticated: Option<crate::node_auth::AuthenticatedNode>,
        outbound: mpsc::Sender<Result<ConfigPush, Status>>,
    ) {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(SubscribeRequest { message: Some(subscribe_request::Message::Hello(hello)) }))) => hello,
            _ => {
                let _ = outbound.send(Err(Status::invalid_argument("the first message must be a Hello"))).await;
                return;
            }
        };
        // A proxy gets the config of the node its token names, never another node's.
        if let Err(status) = crate::node_auth::authorize_node(authenticated.as_ref(), &hello.node) {
            let _ = outbound.send(Err(status)).await;
            return;
        }
        let node = hello.node.clone();
        let span = tracing::info_span!("subscriber", node = %node);
        let _entered = span.enter();
        drop(_entered);
        tracing::info!(parent: &span, resumed = !hello.known.is_empty(), applied = hello.applied_version, "node proxy subscribed");
        self.update_node(&node, |s| s.connected = true);

        let mut held: BTreeMap<String, String> = hello.known.into_iter().collect();
        let mut first = held.is_empty();
        let mut published = self.published.subscribe();
        let mut nonce: u64 = 0;
        loop {
            let current = published.borrow_and_update().clone();
            if current.version != 0 {
                let view = select(&current.resources, &node_view(&current.snapshot, &node));
                let delta = view.delta_to(&held);
                if first || !delta.is_empty() {
                    nonce += 1;
                    let push = ConfigPush {
                        version: current.version,
                        nonce: nonce.to_string(),
                        full: first,
                        updated: if first { view.values().cloned().collect() } else { delta.updated },
                        removed: if first { Vec::new() } else { delta.removed },
                    };
                    let bytes = push.encoded_len() as u64;
                    let full = push.full;
                    tracing::debug!(parent: &span, version = current.version, full, bytes, updated = push.updated.len(), removed = push.removed.len(), "push");
                    if outbound.send(Ok(push)).await.is_err() {
                        break;
                    }
                    self.update_node(&node, |s| {
                        s.pushes += 1;
                        s.bytes_sent += bytes;
                        s.last_push_bytes = bytes;
                        s.last_push_full = full;
                        s.full_pushes += u64::from(full);
                    });
                    // One push in flight: wait for its answer before building on it.
                    match self.await_answer(&mut inbound, &node, &span, &nonce.to_string()).await {
                        Answer::Ack(version) => {
                            held = view.versions();
                            first = false;
                            self.update_node(&node, |s| {
                                s.acked_version = version;
                                s.acks += 1;
                            });
                        }
                        Answer::Nack => {}
                        Answer::Closed => break,
                    }
                    continue;
                } else {
                    self.update_node(&node, |s| s.acked_version = current.version);
                }
            }
            tokio::select! {
                changed = published.changed() => if changed.is_err() { break },
                message = inbound.next() => match message {
                    Some(Ok(_)) => tracing::debug!(parent: &span, "unexpected message with no push in flight"),
                    _ => break,
                },
            }
        }
        tracing::info!(parent: &span, "node proxy unsubscribed");
        self.update_node(&node, |s| s.connected = false);
    }

    async fn await_answer(
        &self,
        inbound: &mut Streaming<SubscribeRequest>,
        node: &str,
        span: &tracing::Span,
        nonce: &str,
    ) -> Answer {
        loop {
            match inbound.next().await {
                Some(Ok(SubscribeRequest { message: Some(subscribe_request::Message::Ack(ack)) }))
                    if ack.nonce == nonce =>
                {
                    return Answer::Ack(ack.version)
                }
                Some(Ok(SubscribeRequest { message: Some(subscribe_request::Message::Nack(nack)) }))
                    if nack.nonce == nonce =>
                {
                    tracing::warn!(parent: span, version = nack.version, error = %nack.error, "node proxy rejected a push; it keeps its previous config");
                    self.update_node(node, |s| {
                        s.last_nack = Some((nack.version, nack.error.clone()));
                        s.nacks += 1;
                    });
                    return Answer::Nack;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Answer::Closed,
            }
        }
    }
}

enum Answer {
    Ack(u64),
    Nack,
    Closed,
}

type PushStream = Pin<Box<dyn Stream<Item = Result<ConfigPush, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for Distributor {
    type SubscribeStream = PushStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (sender, receiver) = mpsc::channel(4);
        let authenticated = request.extensions().get::<crate::node_auth::AuthenticatedNode>().cloned();
        tokio::spawn(self.clone().serve_node(request.into_inner(), authenticated, sender));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}
