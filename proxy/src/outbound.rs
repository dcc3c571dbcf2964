//! The outbound listener: connections captured from the node's pods arrive here. Each is given
//! its original destination, its protocol is detected, and it is served at L7 (HTTP/1.1, HTTP/2,
//! gRPC) through the request stack, or forwarded as opaque TCP.

use crate::body::ProxyBody;
use crate::closing::{request_ends_connection, CloseFirst, LastAnswer};
use crate::detect::{detect, Protocol};
use crate::metrics::{Metrics, TcpLabels};
use crate::original_dst::OriginalDst;
use crate::rewind::Rewind;
use crate::state::ConfigStore;
use crate::svc::{
    backend::Backend, context::ConnectionInfo, context::ResolveContext, filters::Filters, mirror::Mirror,
    observe::Observe, retry::Retry, route::Route, timeout::RequestTimeout,
};
use crate::upstream::UpstreamProtocol;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nodus_config::AppProtocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
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
    pub limits: crate::limits::ConnectionLimits,
    /// Each source pod's share of the proxy.
    pub sources: crate::fairness::SourceLimits,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_secs(1),
            limits: crate::limits::ConnectionLimits::default(),
            sources: crate::fairness::SourceLimits::default(),
        }
    }
}

/// See the module docs.
pub struct Outbound {
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    original_dst: Arc<dyn OriginalDst>,
    settings: OutboundSettings,
    sources: Arc<crate::fairness::SourceGate>,
    drain: crate::drain::Drain,
}

impl Outbound {
    /// The listener's shared state.
    pub fn new(
        store: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        original_dst: Arc<dyn OriginalDst>,
        settings: OutboundSettings,
    ) -> Self {
        let sources = crate::fairness::SourceGate::new(settings.sources);
        Self { store, metrics, original_dst, settings, sources, drain: crate::drain::Drain::default() }
    }

    /// Drains on `drain` (see [`crate::drain`]).
    pub fn with_drain(mut self, drain: crate::drain::Drain) -> Self {
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
            self.metrics.source_limited.get_or_create(&crate::metrics::LimitLabels { reason: "connections" }).inc();
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
        let declared_tcp = destination.as_ref().is_some_and(|d| d.protocol == AppProtocol::Tcp);
        let (protocol, prefix) = if declared_tcp {
            (Protocol::Opaque, bytes::BytesMut::new())
        } else {
            match detect(&mut stream, self.settings.detect_timeout).await {
                Ok(detected) => detected,
                Err(error) => {
                    tracing::debug!(%error, "connection failed during protocol detection");
                    return;
                }
            }
        };
        let has_routes = destination.as_ref().is_some_and(|d| d.routes.as_ref().is_some_and(|r| !r.is_empty()));
        match protocol {
            // Known Services (or no config yet: the stack answers 503) are served at L7.
            Protocol::Http1 | Protocol::Http2 if destination.is_some() || state.is_none() => {
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
                let source = state.as_ref().and_then(|s| s.workload(peer.ip()).cloned());
                let (target, via, label, identities) = match &destination {
                    Some(d) => match d.balancer.pick() {
                        Some(endpoint) => {
                            let meta = endpoint.meta();
                            let identities = tunnel_identities(
                                source.as_deref(),
                                meta.namespace.as_deref(),
                                meta.service_account.as_deref(),
                            );
                            (endpoint.addr, endpoint.meta().via, d.label.to_string(), identities)
                        }
                        None => {
                            tracing::info!(destination = %d.label, "no endpoint for an opaque connection");
                            return;
                        }
                    },
                    None => match state.as_ref().and_then(|s| s.remote_pod(original_dst.ip())) {
                        // A pod on another node, dialled by its address: through the tunnel.
                        Some(pod) => {
                            let identities = tunnel_identities(
                                source.as_deref(),
                                pod.namespace.as_deref(),
                                pod.service_account.as_deref(),
                            );
                            (original_dst, Some(pod.tunnel), "passthrough".to_owned(), identities)
                        }
                        // A mesh pod whose node is not known: refused, never reached in plaintext.
                        None if state.as_ref().is_some_and(|s| s.is_unplaced_pod(original_dst.ip())) => {
                            tracing::warn!(%original_dst, "destination is a mesh pod whose node is not known; refusing");
                            return;
                        }
                        None => (original_dst, None, "passthrough".to_owned(), None),
                    },
                };
                self.forward_tcp(stream, prefix.freeze(), target, via, label, identities).await;
            }
        }
    }

    async fn serve_http(
        &self,
        prefix: bytes::Bytes,
        stream: TcpStream,
        connection: ConnectionInfo,
        budget: Arc<crate::fairness::SourceBudget>,
    ) {
        let metrics = &self.metrics;
        let labels =
            TcpLabels { direction: "outbound", protocol: "http", destination: connection.original_dst.to_string() };
        metrics.tcp_connections.get_or_create(&labels).inc();
        metrics.tcp_open.get_or_create(&labels).inc();
        let stack = Observe::new(
            ResolveContext::new(
                Route::new(Filters::new(Mirror::new(RequestTimeout::new(Retry::new(
                    Backend::new(metrics.clone()),
                    metrics.clone(),
                ))))),
                self.store.clone(),
                connection,
            ),
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
                    limited.source_limited.get_or_create(&crate::metrics::LimitLabels { reason: "requests" }).inc();
                }
                let ends = request_ends_connection(&request);
                let response = stack.call(request.map(ProxyBody::Incoming)).await?;
                let mut response = crate::drain::close_when_draining(&drain, response);
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

    async fn forward_tcp(
        &self,
        client: TcpStream,
        prefix: bytes::Bytes,
        target: SocketAddr,
        via: Option<SocketAddr>,
        destination: String,
        identities: Option<crate::tunnel::TunnelIdentities>,
    ) {
        let labels = TcpLabels { direction: "outbound", protocol: "opaque", destination };
        self.metrics.tcp_connections.get_or_create(&labels).inc();
        match via {
            Some(peer) => match crate::tunnel::open(peer, target, identities.as_ref(), None).await {
                Ok(tunnel) => self.relay(client, TokioIo::new(tunnel), prefix, &labels).await,
                Err(error) => {
                    tracing::info!(%target, %error, "opaque connection: tunnel failed");
                    if matches!(error, crate::upstream::UpstreamError::Denied { .. }) {
                        // Refused by policy: reset, as a firewall would, rather than a clean close.
                        let _ = client.set_zero_linger();
                    }
                }
            },
            None => match TcpStream::connect(target).await {
                Ok(server) => {
                    let _ = server.set_nodelay(true);
                    self.relay(client, server, prefix, &labels).await
                }
                Err(error) => tracing::info!(%target, %error, "opaque connection: endpoint unreachable"),
            },
        }
    }

    async fn relay<S>(&self, mut client: TcpStream, mut server: S, prefix: bytes::Bytes, labels: &TcpLabels)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let metrics = &self.metrics;
        metrics.tcp_open.get_or_create(labels).inc();
        if server.write_all(&prefix).await.is_ok() {
            if let Ok((from_client, from_server)) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                metrics.tcp_received_bytes.get_or_create(labels).inc_by(from_client + prefix.len() as u64);
                metrics.tcp_sent_bytes.get_or_create(labels).inc_by(from_server);
            }
        }
        metrics.tcp_open.get_or_create(labels).dec();
    }
}

/// The identities of a tunnel from `source` to `endpoint`, when mutual TLS is in use and both
/// ends are mesh workloads with known service accounts.
fn tunnel_identities(
    source: Option<&crate::state::WorkloadInfo>,
    destination_namespace: Option<&str>,
    destination_service_account: Option<&str>,
) -> Option<crate::tunnel::TunnelIdentities> {
    let manager = crate::tunnel::mtls()?;
    let source = source?;
    let domain = manager.trust_domain();
    Some(crate::tunnel::TunnelIdentities {
        source: nodus_identity::SpiffeId::new(domain, &source.namespace, &source.service_account),
        destination: nodus_identity::SpiffeId::new(domain, destination_namespace?, destination_service_account?),
    })
}
