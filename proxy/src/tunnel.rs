//! Client side of the node-to-node tunnel: requests for an endpoint on another node travel
//! through that node's proxy, as HTTP/2 CONNECT streams (in the spirit of Istio's HBONE),
//! multiplexed over one connection per peer node. The peer's inbound listener connects the stream
//! to the pod. Today the connection between proxies is plaintext; mutual TLS with workload
//! identities wraps it next (docs/proxy.md).

use crate::upstream::{connect_tcp, SharedHttp2, UpstreamError};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

/// One peer node proxy and the multiplexed connection to it.
#[derive(Debug)]
struct Peer {
    connection: SharedHttp2<Empty<Bytes>>,
}

/// Peers by tunnel address, shared by every endpoint pool of the process.
fn peer(addr: SocketAddr) -> Arc<Peer> {
    static PEERS: OnceLock<Mutex<HashMap<SocketAddr, Arc<Peer>>>> = OnceLock::new();
    let mut peers = PEERS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
    peers.entry(addr).or_insert_with(|| Arc::new(Peer { connection: SharedHttp2::new() })).clone()
}

/// Opens a stream to `target` through the node proxy at `peer`.
pub async fn open(peer_addr: SocketAddr, target: SocketAddr) -> Result<hyper::upgrade::Upgraded, UpstreamError> {
    let failed =
        |reason: String| UpstreamError::Connect { addr: target, reason: format!("tunnel via {peer_addr}: {reason}") };
    let connect = || async { connect_tcp(peer_addr).await.map(TokioIo::new).map_err(failed) };
    let mut sender = peer(peer_addr).connection.get(connect, |e| failed(e.to_string())).await?;
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
