//! The inbound listener: tunnels from other nodes' proxies arrive here (`:15008`), one HTTP/2
//! CONNECT stream per connection to a pod. Only pods of this node are reachable: a tunnel never
//! turns this proxy into an open relay. Mutual TLS and authorization arrive with workload
//! identities; today the listener accepts plaintext.

use crate::metrics::{Metrics, TcpLabels};
use crate::state::ConfigStore;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
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

    /// Accepts tunnel connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let inbound = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| inbound.clone().handle(request, peer));
                let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%peer, %error, "tunnel connection ended with an error");
                }
            });
        }
    }

    async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        peer: SocketAddr,
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
