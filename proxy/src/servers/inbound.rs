//! The inbound side: tunnels from other nodes' proxies arrive at `:15008`, one HTTP/2 CONNECT
//! stream per connection to a pod. Only pods of this node are reachable: a tunnel never turns
//! this proxy into an open relay. With workload identities in use, tunnels are mutual TLS and
//! the source identity is known and counted; plaintext is accepted for permissive namespaces
//! (counted as such) and refused for strict ones; authorization policy applies to every stream.
//!
//! Connections from outside the mesh straight to a mesh pod's address are captured by the eBPF
//! redirect on their way in and arrive at the transparent capture listener (`:15006`): the same
//! rules apply to them as to a plaintext tunnel, so a strict namespace really refuses plaintext.

use crate::core::body::ProxyBody;
use crate::core::detect::{detect, read_request_line, Protocol};
use crate::core::metrics::{InboundLabels, Metrics, TcpLabels};
use crate::core::rewind::Rewind;
use crate::state::ConfigStore;
use crate::state::WorkloadInfo;
use crate::svc::errors::ProxyError;
use crate::svc::response::ResponseBody;
use crate::transport::pool::ConnectionPool;
use crate::transport::UpstreamError;
use crate::transport::UpstreamProtocol;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nodus_identity::tls::peer_identity;
use nodus_policy::authz::RequestView;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

pub use crate::core::headers::{CLIENT_IDENTITY_HEADER, DENIED_HEADER};

/// See the module docs.
pub struct Inbound {
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    /// Streams being relayed, so that a policy change can end those it no longer allows.
    active: Mutex<HashMap<u64, ActiveStream>>,
    next_stream: AtomicU64,
    limits: crate::core::limits::ConnectionLimits,
    /// How long a captured connection's first bytes are awaited to tell HTTP from opaque TCP.
    detect_timeout: std::time::Duration,
    drain: crate::core::drain::Drain,
}

/// A relayed tunnel stream.
struct ActiveStream {
    identity: Option<Arc<str>>,
    target: SocketAddr,
    workload: Arc<WorkloadInfo>,
    /// Whether it carries HTTP (authorized per request) or opaque bytes.
    http: bool,
    relay: tokio::task::AbortHandle,
}

impl ActiveStream {
    fn view(&self) -> RequestView<'static> {
        if self.http {
            RequestView::HttpStream
        } else {
            RequestView::Opaque
        }
    }
}

/// Why a stream is refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Plaintext to a pod of a strict namespace.
    PlaintextToStrict,
    /// An authorization policy (`namespace/name`, or "no allow policy matched").
    Denied(String),
}

/// Whether the config in force refuses a stream from `identity` to port `port` of `pod` (one of
/// this node's, from the compiled state).
fn refusal(
    pod: &WorkloadInfo,
    identity: Option<&str>,
    port: u16,
    request: nodus_policy::authz::RequestView<'_>,
) -> Option<Refusal> {
    if identity.is_none() && pod.mtls_strict {
        return Some(Refusal::PlaintextToStrict);
    }
    let stream = nodus_policy::authz::Stream { identity, port, request };
    match nodus_policy::authz::authorize(&pod.policies, stream) {
        nodus_policy::authz::Decision::Allow => None,
        nodus_policy::authz::Decision::Deny(policy) => Some(Refusal::Denied(policy)),
    }
}

fn answer(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

impl Inbound {
    /// The listener's shared state.
    pub fn new(store: Arc<ConfigStore>, metrics: Arc<Metrics>, limits: crate::core::limits::ConnectionLimits) -> Self {
        Self {
            store,
            metrics,
            active: Mutex::default(),
            next_stream: AtomicU64::new(0),
            limits,
            detect_timeout: std::time::Duration::from_secs(1),
            drain: crate::core::drain::Drain::default(),
        }
    }

    /// Sets how long captured connections' first bytes are awaited (`--detect-timeout-ms`).
    pub fn with_detect_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.detect_timeout = timeout;
        self
    }

    /// Drains on `drain` (see [`crate::core::drain`]): tunnel connections get GOAWAY.
    pub fn with_drain(mut self, drain: crate::core::drain::Drain) -> Self {
        self.drain = drain;
        self
    }

    fn count_denial(&self, identity: Option<&str>, workload: &WorkloadInfo, policy: String) {
        self.metrics
            .authorization_denials
            .get_or_create(&crate::core::metrics::DenialLabels {
                client_identity: identity.unwrap_or("").to_string(),
                destination: format!("{}/{}", workload.namespace, workload.workload),
                policy,
            })
            .inc();
    }

    fn count_handshake(&self, result: &'static str) {
        self.metrics.tls_handshakes.get_or_create(&crate::core::metrics::HandshakeLabels { result }).inc();
    }

    /// Re-checks every relayed stream against the config in force and ends those it no longer
    /// allows (a new deny policy, a namespace turned strict): policy applies to connections
    /// already open, not only to new ones.
    pub fn reevaluate(&self) {
        let Some(state) = self.store.load() else { return };
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let refused = |stream: &ActiveStream| {
            let pod = state.local_pod(stream.target.ip())?;
            refusal(pod, stream.identity.as_deref(), stream.target.port(), stream.view())
        };
        active.retain(|_, stream| match refused(stream) {
            None => true,
            Some(refusal) => {
                tracing::info!(target = %stream.target, caller = stream.identity.as_deref().unwrap_or("(plaintext)"), ?refusal, "open stream no longer allowed: closed");
                if let Refusal::Denied(policy) = refusal {
                    self.count_denial(stream.identity.as_deref(), &stream.workload, policy);
                }
                stream.relay.abort();
                false
            }
        });
    }

    /// Accepts tunnel connections until the listener fails. With workload identities in use,
    /// a connection starting with a TLS record is mutual TLS (the client's identity is read
    /// from its certificate); anything else is plaintext, which strict namespaces refuse.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            // Once draining, the successor accepts on this (shared) socket.
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = self.drain.signaled() => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let inbound = self.clone();
            tokio::spawn(async move {
                let _open = inbound.drain.track();
                match inbound.store.tunnels().mutual_tls() {
                    Some(manager) if starts_with_tls(&stream).await => {
                        let config = match manager.server_config() {
                            Ok(config) => config,
                            Err(error) => return tracing::info!(%peer, %error, "mTLS tunnel refused"),
                        };
                        match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                            Ok(tls) => {
                                inbound.count_handshake("ok");
                                let identity = peer_identity(tls.get_ref().1);
                                inbound.serve_connection(TokioIo::new(tls), peer, identity.map(|i| i.to_string())).await
                            }
                            Err(error) => {
                                inbound.count_handshake("failed");
                                tracing::info!(%peer, %error, "mTLS handshake failed")
                            }
                        }
                    }
                    _ => inbound.serve_connection(TokioIo::new(stream), peer, None).await,
                }
            });
        }
    }

    async fn serve_connection<IO>(self: Arc<Self>, io: IO, peer: SocketAddr, identity: Option<String>)
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let identity: Option<Arc<str>> = identity.map(Arc::from);
        let (builder, drain) = (self.limits.http2(), self.drain.clone());
        let service = hyper::service::service_fn(move |request| self.clone().handle(request, peer, identity.clone()));
        // Draining: GOAWAY; the streams relayed on this connection run to their end.
        let served = drain.serve(builder.serve_connection(io, service), |c| c.graceful_shutdown()).await;
        if let Err(error) = served {
            tracing::debug!(%peer, %error, "tunnel connection ended with an error");
        }
    }

    async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        identity: Option<Arc<str>>,
    ) -> Result<Response<Empty<Bytes>>, Infallible> {
        if request.method() != Method::CONNECT {
            return Ok(answer(StatusCode::METHOD_NOT_ALLOWED));
        }
        let Some(target) = request.uri().authority().and_then(|a| a.as_str().parse::<SocketAddr>().ok()) else {
            return Ok(answer(StatusCode::BAD_REQUEST));
        };
        let Some(state) = self.store.load() else {
            return Ok(answer(StatusCode::SERVICE_UNAVAILABLE));
        };
        let Some(workload) = state.local_pod(target.ip()).cloned() else {
            tracing::info!(%peer, %target, "tunnel to an address that is not a pod of this node: refused");
            return Ok(answer(StatusCode::FORBIDDEN));
        };
        let http = match request.headers().get(crate::transport::tunnel::PROTOCOL_HEADER).map(|v| v.as_bytes()) {
            Some(b"http1") => Some(UpstreamProtocol::Http1),
            Some(b"http2") => Some(UpstreamProtocol::Http2),
            _ => None,
        };
        let view = if http.is_some() { RequestView::HttpStream } else { RequestView::Opaque };
        let refusal = refusal(&workload, identity.as_deref(), target.port(), view);
        self.metrics
            .inbound_tunnels
            .get_or_create(&InboundLabels {
                tls: if identity.is_some() { "mtls" } else { "plaintext" },
                client_identity: identity.as_deref().unwrap_or("").to_string(),
                destination: format!("{}/{}", workload.namespace, workload.workload),
                result: match refusal {
                    Some(Refusal::PlaintextToStrict) => "plaintext_to_strict",
                    Some(Refusal::Denied(_)) => "denied",
                    None => "allowed",
                },
            })
            .inc();
        match refusal {
            Some(Refusal::PlaintextToStrict) => {
                tracing::info!(%peer, %target, "plaintext tunnel to a pod of a strict namespace: refused");
                return Ok(answer(StatusCode::FORBIDDEN));
            }
            Some(Refusal::Denied(policy)) => {
                tracing::info!(%peer, %target, caller = identity.as_deref().unwrap_or("(plaintext)"), %policy, "denied by authorization policy");
                self.count_denial(identity.as_deref(), &workload, policy);
                let mut response = answer(StatusCode::FORBIDDEN);
                response.headers_mut().insert(DENIED_HEADER, http::HeaderValue::from_static("authorization-policy"));
                return Ok(response);
            }
            None => {}
        }
        let labels = TcpLabels {
            direction: "inbound",
            protocol: if http.is_some() { "tunnel_http" } else { "tunnel" },
            destination: format!("{}/{}", workload.namespace, workload.workload),
        };
        let metrics = self.metrics.clone();
        let upgrade = hyper::upgrade::on(&mut request);
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let inbound = self.clone();
        let relay = match http {
            // HTTP: served here, so each request is authorized and carries the caller's identity.
            Some(protocol) => {
                let identity = identity.clone();
                // The stream outlives its request on the tunnel connection: counted on its own,
                // so a draining proxy does not exit under it.
                let open = inbound.drain.track();
                tokio::spawn(async move {
                    let _open = open;
                    let Ok(upgraded) = upgrade.await else { return };
                    metrics.tcp_connections.get_or_create(&labels).inc();
                    metrics.tcp_open.get_or_create(&labels).inc();
                    inbound.clone().serve_http_stream(upgraded, protocol, target, identity).await;
                    metrics.tcp_open.get_or_create(&labels).dec();
                    inbound.active.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                })
            }
            None => {
                let pod = match crate::transport::connect_tcp(target).await {
                    Ok(pod) => pod,
                    Err(error) => {
                        tracing::info!(%target, %error, "tunnel target unreachable");
                        return Ok(answer(StatusCode::BAD_GATEWAY));
                    }
                };
                let open = self.drain.track();
                tokio::spawn(async move {
                    let _open = open;
                    let Ok(upgraded) = upgrade.await else { return };
                    metrics.tcp_connections.get_or_create(&labels).inc();
                    metrics.tcp_open.get_or_create(&labels).inc();
                    let mut pod = pod;
                    crate::transport::relay(&mut TokioIo::new(upgraded), &mut pod, Some((&metrics, &labels))).await;
                    metrics.tcp_open.get_or_create(&labels).dec();
                    inbound.active.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                })
            }
        };
        let relay = relay.abort_handle();
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        // A relay that already ended has removed its (absent) entry: do not leave one behind.
        if !relay.is_finished() {
            active.insert(id, ActiveStream { identity, target, workload, http: http.is_some(), relay });
        }
        drop(active);
        Ok(answer(StatusCode::OK))
    }

    /// Accepts the connections the eBPF redirect captured on their way in to this node's mesh
    /// pods. The listener is transparent: an accepted socket's local address is the pod address
    /// the client dialled.
    pub async fn serve_captured(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = self.drain.signaled() => return Ok(()),
            };
            let inbound = self.clone();
            tokio::spawn(async move {
                let _open = inbound.drain.track();
                inbound.relay_captured(stream, peer).await;
            });
        }
    }

    /// One captured connection: plaintext from outside the mesh, so no identity. Refused (reset)
    /// for a strict namespace or by policy; otherwise HTTP is served here (each request
    /// authorized, any identity header from the client removed) and other bytes relayed.
    async fn relay_captured(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let Ok(target) = stream.local_addr() else { return };
        let _ = stream.set_nodelay(true);
        // Fail closed: without a config the namespace's mode and policies are unknown.
        let Some(state) = self.store.load() else { return reset(stream) };
        let Some(workload) = state.local_pod(target.ip()).cloned() else {
            tracing::info!(%peer, %target, "captured connection to an address that is not a pod of this node: reset");
            return reset(stream);
        };
        let destination = format!("{}/{}", workload.namespace, workload.workload);
        let count = |result: &'static str| {
            let labels = crate::core::metrics::CapturedLabels { destination: destination.clone(), result };
            self.metrics.inbound_captured.get_or_create(&labels).inc();
        };
        let (protocol, mut prefix) = match detect(&mut stream, self.detect_timeout).await {
            Ok(detected) => detected,
            Err(error) => return tracing::debug!(%peer, %error, "captured connection failed during protocol detection"),
        };
        if protocol == Protocol::Http1 {
            // For HTTP/1.2 and later minor versions, read as 1.1 (RFC 9110 §2.5).
            if let Err(error) = read_request_line(&mut stream, &mut prefix, self.detect_timeout).await {
                return tracing::debug!(%peer, %error, "captured connection failed reading its request line");
            }
        }
        let http = match protocol {
            Protocol::Http1 => Some(UpstreamProtocol::Http1),
            Protocol::Http2 => Some(UpstreamProtocol::Http2),
            Protocol::Opaque => None,
        };
        let view = if http.is_some() { RequestView::HttpStream } else { RequestView::Opaque };
        match refusal(&workload, None, target.port(), view) {
            Some(Refusal::PlaintextToStrict) => {
                count("plaintext_to_strict");
                tracing::info!(%peer, %target, "plaintext connection to a pod of a strict namespace: reset");
                return reset(stream);
            }
            Some(Refusal::Denied(policy)) => {
                count("denied");
                tracing::info!(%peer, %target, %policy, "captured connection denied by authorization policy: reset");
                self.count_denial(None, &workload, policy);
                return reset(stream);
            }
            None => {}
        }
        let labels = TcpLabels {
            direction: "inbound",
            protocol: if http.is_some() { "captured_http" } else { "captured" },
            destination: destination.clone(),
        };
        let metrics = self.metrics.clone();
        let relay = match http {
            Some(protocol) => {
                count("allowed");
                let client = TokioIo::new(Rewind::new(prefix.freeze(), stream));
                tokio::spawn(self.clone().serve_http_stream(client, protocol, target, None))
            }
            None => {
                let pod = match crate::transport::connect_tcp(target).await {
                    Ok(pod) => pod,
                    Err(error) => {
                        count("unreachable");
                        tracing::info!(%target, %error, "captured connection's pod unreachable");
                        return reset(stream);
                    }
                };
                count("allowed");
                let (metrics, labels) = (metrics.clone(), labels.clone());
                let mut client = Rewind::new(prefix.freeze(), stream);
                tokio::spawn(async move {
                    let mut pod = pod;
                    crate::transport::relay(&mut client, &mut pod, Some((&metrics, &labels))).await;
                })
            }
        };
        metrics.tcp_connections.get_or_create(&labels).inc();
        metrics.tcp_open.get_or_create(&labels).inc();
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let stream =
            ActiveStream { identity: None, target, workload, http: http.is_some(), relay: relay.abort_handle() };
        self.active.lock().unwrap_or_else(|p| p.into_inner()).insert(id, stream);
        // Awaited here so that the drain tracker held by the caller covers the relay.
        let _ = relay.await;
        metrics.tcp_open.get_or_create(&labels).dec();
        self.active.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Serves the HTTP a tunnel stream (or a captured connection) carries, forwarding each
    /// request to the pod.
    async fn serve_http_stream<IO>(
        self: Arc<Self>,
        upgraded: IO,
        protocol: UpstreamProtocol,
        target: SocketAddr,
        identity: Option<Arc<str>>,
    ) where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let pool = Arc::new(ConnectionPool::new(target, None));
        let (limits, drain) = (self.limits, self.drain.clone());
        let service = hyper::service::service_fn(move |request| {
            let (inbound, pool, identity) = (self.clone(), pool.clone(), identity.clone());
            async move {
                let response = inbound.forward(request, &pool, protocol, target, identity.as_deref()).await;
                Ok::<_, Infallible>(crate::core::drain::close_when_draining(&inbound.drain, response))
            }
        });
        let io = upgraded;
        let served = match protocol {
            UpstreamProtocol::Http1 => limits.http1().serve_connection(io, service).with_upgrades().await,
            UpstreamProtocol::Http2 => {
                drain.serve(limits.http2().serve_connection(io, service), |c| c.graceful_shutdown()).await
            }
        };
        if let Err(error) = served {
            tracing::debug!(%target, %error, "HTTP tunnel stream ended with an error");
        }
    }

    /// One request of an HTTP tunnel stream: authorized by method and path, marked with the
    /// caller's identity (any such header from upstream removed), sent to the pod.
    async fn forward(
        &self,
        mut request: Request<Incoming>,
        pool: &Arc<ConnectionPool>,
        protocol: UpstreamProtocol,
        target: SocketAddr,
        identity: Option<&str>,
    ) -> Response<ResponseBody> {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        // Policy and pod read the request in the one normal form (a client outside the mesh
        // reaches this side unchecked by any source proxy).
        if let Err(malformed) = crate::core::request_check::check(&mut request) {
            tracing::debug!(%target, method = %request.method(), uri = %request.uri(), %malformed, "malformed request refused");
            return ProxyError::Malformed(malformed).into_response(grpc);
        }
        if let Some(state) = self.store.load() {
            let view = RequestView::Http { method: request.method().as_str(), path: request.uri().path() };
            let pod = state.local_pod(target.ip());
            if let Some((pod, Refusal::Denied(policy))) =
                pod.and_then(|pod| Some((pod, refusal(pod, identity, target.port(), view)?)))
            {
                tracing::info!(%target, caller = identity.unwrap_or("(plaintext)"), %policy, method = %request.method(), path = request.uri().path(), "request denied by authorization policy");
                self.count_denial(identity, pod, policy);
                return ProxyError::Upstream(UpstreamError::Denied { addr: target }).into_response(grpc);
            }
        }
        let upgrade = protocol == UpstreamProtocol::Http1 && request.headers().contains_key(http::header::UPGRADE);
        let headers = request.headers_mut();
        crate::core::headers::strip_hop_by_hop(headers, upgrade);
        crate::core::headers::remove_client_identity(headers);
        if let Some(value) = identity.and_then(|i| http::HeaderValue::from_str(i).ok()) {
            headers.insert(CLIENT_IDENTITY_HEADER, value);
        }
        let downstream = upgrade.then(|| hyper::upgrade::on(&mut request));
        match pool.send(request.map(ProxyBody::Incoming), protocol).await {
            Ok(mut response) => {
                if let Some(downstream) = downstream.filter(|_| response.status() == StatusCode::SWITCHING_PROTOCOLS) {
                    crate::transport::relay_upgrade(downstream, hyper::upgrade::on(&mut response));
                } else {
                    crate::core::headers::strip_hop_by_hop(response.headers_mut(), false);
                }
                response.map(ResponseBody::upstream)
            }
            Err(error) => ProxyError::from(error).into_response(grpc),
        }
    }
}

/// Closes `stream` with a reset (zero linger), as a refused TCP connection is answered.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Whether the connection's first byte is a TLS handshake record (0x16), without consuming it.
async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16)
}
