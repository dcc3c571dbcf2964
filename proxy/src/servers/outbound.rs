//! The outbound listener: connections captured from the node's pods arrive here. Each is given
//! its original destination, its protocol is detected, and it is served at L7 (HTTP/1.1, HTTP/2,
//! gRPC) through the request stack, or forwarded as opaque TCP.

use crate::core::body::ProxyBody;
use crate::core::closing::{request_ends_connection, CloseFirst, LastAnswer};
use crate::core::detect::{detect, invalid_preface_answer, read_request_line, Protocol, RequestLine};
use crate::core::metrics::{Metrics, TcpLabels};
use crate::core::rewind::Rewind;
use crate::servers::original_dst::OriginalDst;
use crate::state::{ConfigStore, Destination, ProxyState};
use crate::svc::{
    backend::Backend, context::ConnectionInfo, context::ResolveContext, filters::Filters, mirror::Mirror,
    observe::Observe, retry::Retry, route::Route, timeout::RequestTimeout, validate::Validate,
};
use crate::transport::UpstreamProtocol;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nodus_config::AppProtocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::Service;
use tracing::Instrument;

/// Settings of the outbound listener.
#[derive(Clone, Debug)]
pub struct OutboundSettings {
    /// How long to wait for a client's first bytes before treating it as a server-speaks-first
    /// protocol (opaque TCP).
    pub detect_timeout: Duration,
    /// Limits of the HTTP connections served.
    pub limits: crate::core::limits::ConnectionLimits,
    /// Each source pod's share of the proxy.
    pub sources: crate::servers::fairness::SourceLimits,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_secs(1),
            limits: crate::core::limits::ConnectionLimits::default(),
            sources: crate::servers::fairness::SourceLimits::default(),
        }
    }
}

/// See the module docs.
pub struct Outbound {
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    original_dst: Arc<dyn OriginalDst>,
    settings: OutboundSettings,
    sources: Arc<crate::servers::fairness::SourceGate>,
    drain: crate::core::drain::Drain,
    /// The request stack's leaf, built once: every HTTP connection clones it.
    backend: Backend,
}

impl Outbound {
    /// The listener's shared state.
    pub fn new(
        store: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        original_dst: Arc<dyn OriginalDst>,
        settings: OutboundSettings,
    ) -> Self {
        let sources = crate::servers::fairness::SourceGate::new(settings.sources);
        let backend = Backend::new(metrics.clone(), store.tunnels().clone());
        let drain = crate::core::drain::Drain::default();
        Self { store, metrics, original_dst, settings, sources, drain, backend }
    }

    /// Drains on `drain` (see [`crate::core::drain`]).
    pub fn with_drain(mut self, drain: crate::core::drain::Drain) -> Self {
        self.drain = drain;
        self
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            // Once draining, the successor accepts on this (shared) socket.
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = self.drain.signaled() => return Ok(()),
            };
            let outbound = self.clone();
            tokio::spawn(async move {
                let span = tracing::debug_span!("outbound", %peer);
                outbound.handle(stream, peer).instrument(span).await;
            });
        }
    }

    async fn handle(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let _open = self.drain.track();
        let Some(admitted) = self.sources.admit(peer.ip()) else {
            self.metrics
                .source_limited
                .get_or_create(&crate::core::metrics::LimitLabels { reason: "connections" })
                .inc();
            tracing::debug!("source at its connection limit; closing");
            return;
        };
        let Ok(local) = stream.local_addr() else { return };
        let Some(original_dst) = self.original_dst.lookup(peer, local) else {
            tracing::debug!("connection was not captured by the redirect; closing");
            return;
        };
        let state = self.store.load();
        let destination = state.as_ref().and_then(|s| s.destination(original_dst).cloned());
        let declared = destination.as_ref().map(|d| d.protocol);
        let (mut protocol, mut prefix) = match declared {
            Some(AppProtocol::Tcp) => (Protocol::Opaque, bytes::BytesMut::new()),
            // A port declared HTTP is always served as HTTP, whatever its first bytes: HTTP/2 for
            // the client preface, else HTTP/1.1, which answers 400 to what does not parse. Never
            // relayed as bytes, where the mesh could neither route it nor keep a client from
            // sending the caller-identity header itself.
            Some(AppProtocol::Http | AppProtocol::Http2 | AppProtocol::Grpc) => {
                match detect(&mut stream, self.settings.limits.header_read_timeout).await {
                    Ok((Protocol::Http2, prefix)) => (Protocol::Http2, prefix),
                    Ok((_, prefix)) if prefix.is_empty() => {
                        tracing::debug!(%original_dst, "no request on a declared HTTP port in time; closing");
                        return;
                    }
                    Ok((_, prefix)) => (Protocol::Http1, prefix),
                    Err(error) => return tracing::debug!(%error, "connection failed during protocol detection"),
                }
            }
            _ => match detect(&mut stream, self.settings.detect_timeout).await {
                Ok(detected) => detected,
                Err(error) => return tracing::debug!(%error, "connection failed during protocol detection"),
            },
        };
        let silent = protocol == Protocol::Opaque && prefix.is_empty() && declared != Some(AppProtocol::Tcp);
        let has_routes = destination.as_ref().is_some_and(|d| d.routes.as_ref().is_some_and(|r| !r.is_empty()));
        // Silent through the detection timeout: a server-speaks-first protocol (SMTP, MySQL), or
        // a client that connected ahead of its first request (pre-connected pools). To a Service
        // with routes, only HTTP may pass: wait for the client. Otherwise whoever speaks first
        // decides: the client's bytes are classified as usual (HTTP to a Service is served as
        // HTTP, never relayed unparsed), the server's make it an opaque relay.
        if silent && has_routes {
            match detect(&mut stream, self.settings.limits.header_read_timeout).await {
                Ok(detected) => (protocol, prefix) = detected,
                Err(error) => return tracing::debug!(%error, "connection failed during protocol detection"),
            }
        } else if silent && destination.is_some() {
            let target = self.opaque_target(destination.as_deref(), original_dst, peer, state.as_deref());
            match self.first_speaker(stream, target).await {
                Some((client, detected)) => (stream, (protocol, prefix)) = (client, detected),
                None => return,
            }
        }
        match protocol {
            // Known Services (or no config yet: the stack answers 503) are served at L7.
            Protocol::Http1 | Protocol::Http2 if destination.is_some() || state.is_none() => {
                if protocol == Protocol::Http1 {
                    let timeout = self.settings.limits.header_read_timeout;
                    let line = match read_request_line(&mut stream, &mut prefix, timeout).await {
                        Ok(line) => line,
                        Err(error) => return tracing::debug!(%error, "connection failed reading its request line"),
                    };
                    // A port declared HTTP/2 or gRPC speaks HTTP/1.1 to a client that asks for it;
                    // what is neither is an invalid HTTP/2 preface (RFC 9113 §3.4).
                    if line == RequestLine::NotHttp1 && matches!(declared, Some(AppProtocol::Http2 | AppProtocol::Grpc))
                    {
                        tracing::debug!(%original_dst, "invalid HTTP/2 connection preface; GOAWAY");
                        let _ = stream.write_all(&invalid_preface_answer()).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
                let upstream =
                    if protocol == Protocol::Http2 { UpstreamProtocol::Http2 } else { UpstreamProtocol::Http1 };
                let connection = ConnectionInfo { peer, original_dst, protocol: upstream };
                self.serve_http(prefix.freeze(), stream, connection, admitted.budget.clone()).await;
            }
            _ if state.is_none() => {
                // Fail closed: policy may apply and cannot be known.
                tracing::info!(%original_dst, "no config yet; refusing an opaque connection");
            }
            Protocol::Opaque if has_routes => {
                // L7 routes apply but the bytes are not HTTP: refuse rather than bypass them.
                tracing::info!(%original_dst, "non-HTTP traffic to a destination with L7 routes; refusing");
            }
            _ => {
                let Some(target) = self.opaque_target(destination.as_deref(), original_dst, peer, state.as_deref())
                else {
                    return;
                };
                let label = target.label.clone();
                if let Some(server) = self.connect_opaque(&stream, target).await {
                    self.relay(stream, server, prefix.freeze(), bytes::Bytes::new(), &label).await;
                }
            }
        }
    }

    /// Waits for whoever speaks first on a connection whose client was silent through the
    /// detection timeout, with the server side (`target`) connected: the server's bytes make it
    /// an opaque relay, run here; the client's are classified and, if HTTP, handed back with the
    /// connection for the stack. `None`: relayed, refused or closed.
    async fn first_speaker(
        &self,
        mut client: TcpStream,
        target: Option<OpaqueTarget>,
    ) -> Option<(TcpStream, (Protocol, bytes::BytesMut))> {
        let target = target?;
        let label = target.label.clone();
        let mut server = self.connect_opaque(&client, target).await?;
        let mut greeting = bytes::BytesMut::new();
        tokio::select! {
            readable = client.readable() => {
                readable.ok()?;
                let (protocol, bytes) = detect(&mut client, self.settings.detect_timeout).await.ok()?;
                if bytes.is_empty() {
                    return None;
                }
                if protocol != Protocol::Opaque {
                    return Some((client, (protocol, bytes)));
                }
                // Not HTTP: relayed on the connection already open.
                self.relay(client, server, bytes.freeze(), bytes::Bytes::new(), &label).await;
                None
            }
            read = server.read_buf(&mut greeting) => {
                if matches!(read, Ok(n) if n > 0) {
                    self.relay(client, server, bytes::Bytes::new(), greeting.freeze(), &label).await;
                }
                None
            }
        }
    }

    /// Where an opaque connection goes: an endpoint of the Service, or the address dialled
    /// (through its node's proxy for a mesh pod on another node). `None`: refused (said why).
    fn opaque_target(
        &self,
        destination: Option<&Destination>,
        original_dst: SocketAddr,
        peer: SocketAddr,
        state: Option<&ProxyState>,
    ) -> Option<OpaqueTarget> {
        let source = state.and_then(|s| s.workload(peer.ip()).cloned());
        // `in_mesh`: the server side is a mesh pod, on this node or through its node's proxy.
        let (addr, via, label, identities, in_mesh) = match destination {
            Some(d) => match d.balancer.pick() {
                Some(endpoint) => {
                    let meta = endpoint.meta();
                    let identities = tunnel_identities(
                        self.store.tunnels(),
                        source.as_deref(),
                        meta.namespace.as_deref(),
                        meta.service_account.as_deref(),
                    );
                    (endpoint.addr, meta.via, d.label.to_string(), identities, meta.mesh)
                }
                None => {
                    tracing::info!(destination = %d.label, "no endpoint for an opaque connection");
                    return None;
                }
            },
            None => match state.and_then(|s| s.remote_pod(original_dst.ip())) {
                // A pod on another node, dialled by its address: through the tunnel.
                Some(pod) => {
                    let identities = tunnel_identities(
                        self.store.tunnels(),
                        source.as_deref(),
                        pod.namespace.as_deref(),
                        pod.service_account.as_deref(),
                    );
                    (original_dst, Some(pod.tunnel), "passthrough".to_owned(), identities, true)
                }
                // A mesh pod whose node is not known: refused, never reached in plaintext.
                None if state.is_some_and(|s| s.is_unplaced_pod(original_dst.ip())) => {
                    tracing::warn!(%original_dst, "destination is a mesh pod whose node is not known; refusing");
                    return None;
                }
                None => {
                    let local_mesh_pod = state.is_some_and(|s| s.workload(original_dst.ip()).is_some());
                    (original_dst, None, "passthrough".to_owned(), None, local_mesh_pod)
                }
            },
        };
        let transport = crate::transport::PeerTransport::of(via.is_some(), in_mesh, identities.is_some());
        let plaintext = transport == crate::transport::PeerTransport::Plaintext;
        if let Some(caller) = source.as_deref().filter(|s| s.mtls_only_outbound && plaintext) {
            let labels = crate::core::metrics::MtlsRequiredLabels {
                source: format!("{}/{}", caller.namespace, caller.workload),
                destination: label,
                protocol: "opaque",
            };
            self.metrics.mtls_required_refusals.get_or_create(&labels).inc();
            tracing::info!(%addr, source = %labels.source, destination = %labels.destination,
                "opaque connection refused: the destination is not in the mesh, and the caller's MeshPolicy allows only mTLS calls");
            return None;
        }
        let label = TcpLabels { direction: "outbound", protocol: "opaque", destination: label };
        Some(OpaqueTarget { addr, via, label, identities })
    }

    /// Connects an opaque connection's server side (counted); `None` when it failed (said why).
    async fn connect_opaque(&self, client: &TcpStream, target: OpaqueTarget) -> Option<ServerIo> {
        self.metrics.tcp_connections.get_or_create(&target.label).inc();
        let addr = target.addr;
        match target.via {
            Some(peer) => match self.store.tunnels().open(peer, addr, target.identities.as_ref(), None).await {
                Ok(tunnel) => Some(Box::new(TokioIo::new(tunnel))),
                Err(error) => {
                    tracing::info!(target = %addr, %error, "opaque connection: tunnel failed");
                    if matches!(error, crate::transport::UpstreamError::Denied { .. }) {
                        // Refused by policy: reset, as a firewall would, rather than a clean close.
                        let _ = client.set_zero_linger();
                    }
                    None
                }
            },
            None => match crate::transport::connect_tcp(addr).await {
                Ok(server) => Some(Box::new(server)),
                Err(error) => {
                    tracing::info!(target = %addr, %error, "opaque connection: endpoint unreachable");
                    None
                }
            },
        }
    }

    async fn serve_http(
        &self,
        prefix: bytes::Bytes,
        stream: TcpStream,
        connection: ConnectionInfo,
        budget: Arc<crate::servers::fairness::SourceBudget>,
    ) {
        let metrics = &self.metrics;
        let labels =
            TcpLabels { direction: "outbound", protocol: "http", destination: connection.original_dst.to_string() };
        metrics.tcp_connections.get_or_create(&labels).inc();
        metrics.tcp_open.get_or_create(&labels).inc();
        let stack = Observe::new(
            Validate::new(ResolveContext::new(
                Route::new(Filters::new(Mirror::new(RequestTimeout::new(Retry::new(
                    self.backend.clone(),
                    metrics.clone(),
                ))))),
                self.store.clone(),
                connection,
            )),
            metrics.clone(),
            "outbound",
        );
        let limited = metrics.clone();
        let drain = self.drain.clone();
        let last_answer = LastAnswer::default();
        let last = last_answer.clone();
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let mut stack = stack.clone();
            let (budget, limited, drain, last) = (budget.clone(), limited.clone(), drain.clone(), last.clone());
            async move {
                // The source's share: past it, requests wait for one of its own to finish.
                let (_slot, waited) = budget.request_slot().await;
                if waited {
                    limited
                        .source_limited
                        .get_or_create(&crate::core::metrics::LimitLabels { reason: "requests" })
                        .inc();
                }
                let ends = request_ends_connection(&request);
                let response = stack.call(request.map(ProxyBody::Incoming)).await?;
                let mut response = crate::core::drain::close_when_draining(&drain, response);
                if ends || drain.is_draining() {
                    response.body_mut().ends_connection(last);
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let io = TokioIo::new(Rewind::new(prefix, CloseFirst::new(stream, last_answer)));
        let result = match connection.protocol {
            // HTTP/1.1 ends through `Connection: close` on its next answer (close_when_draining).
            UpstreamProtocol::Http1 => self.settings.limits.http1().serve_connection(io, service).with_upgrades().await,
            UpstreamProtocol::Http2 => {
                let connection = self.settings.limits.http2().serve_connection(io, service);
                self.drain.serve(connection, |c| c.graceful_shutdown()).await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "HTTP connection ended with an error");
        }
        metrics.tcp_open.get_or_create(&labels).dec();
    }

    /// Relays bytes both ways, first `to_server` (read during detection) and `to_client` (a
    /// server's greeting read while waiting for the first speaker).
    async fn relay(
        &self,
        client: TcpStream,
        server: ServerIo,
        to_server: bytes::Bytes,
        to_client: bytes::Bytes,
        labels: &TcpLabels,
    ) {
        let metrics = &self.metrics;
        metrics.tcp_open.get_or_create(labels).inc();
        let (mut client, mut server) = (Rewind::new(to_server, client), Rewind::new(to_client, server));
        crate::transport::relay(&mut client, &mut server, Some((metrics, labels))).await;
        metrics.tcp_open.get_or_create(labels).dec();
    }
}

/// Where an opaque connection goes, and how.
struct OpaqueTarget {
    addr: SocketAddr,
    via: Option<SocketAddr>,
    label: TcpLabels,
    identities: Option<crate::transport::tunnel::TunnelIdentities>,
}

/// The server side of an opaque connection: a TCP connection or a tunnel stream.
trait ServerStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ServerStream for T {}
type ServerIo = Box<dyn ServerStream>;

/// The identities of a tunnel from `source` to `endpoint`, when mutual TLS is in use and both
/// ends are mesh workloads with known service accounts.
fn tunnel_identities(
    tunnels: &crate::transport::tunnel::Tunnels,
    source: Option<&crate::state::WorkloadInfo>,
    destination_namespace: Option<&str>,
    destination_service_account: Option<&str>,
) -> Option<crate::transport::tunnel::TunnelIdentities> {
    let source = source?;
    tunnels.identities(
        (&source.namespace, &source.service_account),
        (destination_namespace?, destination_service_account?),
    )
}
