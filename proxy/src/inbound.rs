//! The inbound listener: tunnels from other nodes' proxies arrive here (`:15008`), one HTTP/2
//! CONNECT stream per connection to a pod. Only pods of this node are reachable: a tunnel never
//! turns this proxy into an open relay. With workload identities in use, tunnels are mutual
//! TLS and the source identity is known and counted; plaintext is accepted for permissive
//! namespaces (counted as such) and refused for strict ones. Authorization policy is next.

use crate::metrics::{InboundLabels, Metrics, TcpLabels};
use crate::state::ConfigStore;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodus_config::MtlsMode;
use nodus_identity::tls::{peer_identity, server_config};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// See the module docs.
pub struct Inbound {
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
}

fn answer(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

impl Inbound {
    /// The listener's shared state.
    pub fn new(store: Arc<ConfigStore>, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics }
    }

    /// Accepts tunnel connections until the listener fails. With workload identities in use,
    /// a connection starting with a TLS record is mutual TLS (the client's identity is read
    /// from its certificate); anything else is plaintext, which strict namespaces refuse.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let inbound = self.clone();
            tokio::spawn(async move {
                match crate::tunnel::mtls() {
                    Some(manager) if starts_with_tls(&stream).await => {
                        let Some(bundle) = manager.trust_bundle() else {
                            tracing::info!(%peer, "mTLS tunnel refused: no trust bundle yet");
                            return;
                        };
                        let config = match server_config(manager.resolver(), &bundle) {
                            Ok(config) => config,
                            Err(error) => return tracing::warn!(%error, "no TLS server config"),
                        };
                        match tokio_rustls::TlsAcceptor::from(Arc::new(config)).accept(stream).await {
                            Ok(tls) => {
                                let identity = peer_identity(tls.get_ref().1);
                                inbound.serve_connection(TokioIo::new(tls), peer, identity.map(|i| i.to_string())).await
                            }
                            Err(error) => tracing::info!(%peer, %error, "mTLS handshake failed"),
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
        let service = hyper::service::service_fn(move |request| self.clone().handle(request, peer, identity.clone()));
        let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await;
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
        let local = self.store.node();
        let Some(workload) = state.workload(target.ip()).filter(|w| Some(&*w.node) == local).cloned() else {
            tracing::info!(%peer, %target, "tunnel to an address that is not a pod of this node: refused");
            return Ok(answer(StatusCode::FORBIDDEN));
        };
        let strict =
            state.snapshot.mtls.iter().any(|m| *m.namespace == *workload.namespace && m.mode == MtlsMode::Strict);
        let refused = identity.is_none() && strict;
        self.metrics
            .inbound_tunnels
            .get_or_create(&InboundLabels {
                tls: if identity.is_some() { "mtls" } else { "plaintext" },
                client_identity: identity.as_deref().unwrap_or("").to_string(),
                destination: format!("{}/{}", workload.namespace, workload.workload),
                result: if refused { "plaintext_to_strict" } else { "allowed" },
            })
            .inc();
        if refused {
            tracing::info!(%peer, %target, "plaintext tunnel to a pod of a strict namespace: refused");
            return Ok(answer(StatusCode::FORBIDDEN));
        }
        let pod = match TcpStream::connect(target).await {
            Ok(pod) => pod,
            Err(error) => {
                tracing::info!(%target, %error, "tunnel target unreachable");
                return Ok(answer(StatusCode::BAD_GATEWAY));
            }
        };
        let _ = pod.set_nodelay(true);
        let labels = TcpLabels {
            direction: "inbound",
            protocol: "tunnel",
            destination: format!("{}/{}", workload.namespace, workload.workload),
        };
        let metrics = self.metrics.clone();
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            metrics.tcp_connections.get_or_create(&labels).inc();
            metrics.tcp_open.get_or_create(&labels).inc();
            let mut pod = pod;
            if let Ok((from_peer, from_pod)) =
                tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut pod).await
            {
                metrics.tcp_received_bytes.get_or_create(&labels).inc_by(from_peer);
                metrics.tcp_sent_bytes.get_or_create(&labels).inc_by(from_pod);
            }
            metrics.tcp_open.get_or_create(&labels).dec();
        });
        Ok(answer(StatusCode::OK))
    }
}

/// Whether the connection's first byte is a TLS handshake record (0x16), without consuming it.
async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16)
}
