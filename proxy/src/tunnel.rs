//! Client side of the node-to-node tunnel: requests for an endpoint on another node travel
//! through that node's proxy, as HTTP/2 CONNECT streams (in the spirit of Istio's HBONE),
//! multiplexed over one connection per peer node. The peer's inbound listener connects the stream
//! to the pod. Today the connection between proxies is plaintext; mutual TLS with workload
//! identities wraps it next (docs/proxy.md).

use crate::upstream::UpstreamError;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One peer node proxy and the multiplexed connection to it.
#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    sender: ArcSwapOption<http2::SendRequest<Empty<Bytes>>>,
    connecting: tokio::sync::Mutex<()>,
}

/// Peers by tunnel address, shared by every endpoint pool of the process.
fn peer(addr: SocketAddr) -> Arc<Peer> {
    static PEERS: OnceLock<Mutex<HashMap<SocketAddr, Arc<Peer>>>> = OnceLock::new();
    let mut peers = PEERS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
    peers
        .entry(addr)
        .or_insert_with(|| {
            Arc::new(Peer { addr, sender: ArcSwapOption::empty(), connecting: tokio::sync::Mutex::new(()) })
        })
        .clone()
}

impl Peer {
    fn live(&self) -> Option<http2::SendRequest<Empty<Bytes>>> {
        self.sender.load().as_ref().filter(|s| !s.is_closed()).map(|s| (**s).clone())
    }

    async fn sender(&self, target: SocketAddr) -> Result<http2::SendRequest<Empty<Bytes>>, UpstreamError> {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let failed = |reason: String| UpstreamError::Connect {
            addr: target,
            reason: format!("tunnel via {}: {reason}", self.addr),
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(failed("timed out".into())),
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(connection);
        self.sender.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}

/// Opens a stream to `target` through the node proxy at `peer`.
pub async fn open(peer_addr: SocketAddr, target: SocketAddr) -> Result<hyper::upgrade::Upgraded, UpstreamError> {
    let peer = peer(peer_addr);
    let mut sender = peer.sender(target).await?;
    let failed =
        |reason: String| UpstreamError::Connect { addr: target, reason: format!("tunnel via {peer_addr}: {reason}") };
    sender.ready().await.map_err(|e| failed(e.to_string()))?;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(Empty::new())
        .map_err(|e| failed(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| failed(e.to_string()))?;
    if response.status() != StatusCode::OK {
        return Err(failed(format!("peer answered {}", response.status())));
    }
    hyper::upgrade::on(response).await.map_err(|e| failed(e.to_string()))
}
