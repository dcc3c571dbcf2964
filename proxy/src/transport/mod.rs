//! The transport beneath the endpoint pool and the tunnel client, which both use it and
//! neither of which it knows: TCP connects under the connect timeout, the shared multiplexed
//! HTTP/2 client connection, and the error an exchange with an endpoint fails with.

pub mod credentials;
pub mod pool;
pub mod tunnel;

use crate::core::body::BoxError;
use arc_swap::ArcSwapOption;
use http_body::Body;
use hyper::client::conn::http2;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;

/// Which protocol to speak to the endpoint (the proxy keeps the client's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
}

/// How the way to an endpoint is secured: what the `tls` metric label says, and what an outbound
/// `Strict` MeshPolicy requires (anything but plaintext). One decision for HTTP and opaque TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerTransport {
    /// Through the endpoint's node proxy, over mutual TLS.
    MutualTls,
    /// To a mesh pod of this node: this proxy holds both ends, nothing crosses the network.
    Local,
    /// In plaintext: a pod outside the mesh or on a node without a proxy, or a tunnel without
    /// workload identities (no controller).
    Plaintext,
}

impl PeerTransport {
    /// The transport to an endpoint reached through a peer proxy (`tunnelled`) or directly,
    /// in the mesh or not, over a tunnel with identities (`mutual_tls`) or not.
    pub fn of(tunnelled: bool, mesh: bool, mutual_tls: bool) -> Self {
        match (tunnelled, mesh) {
            (true, _) if mutual_tls => PeerTransport::MutualTls,
            (false, true) => PeerTransport::Local,
            _ => PeerTransport::Plaintext,
        }
    }

    /// The `tls` metric label.
    pub fn label(self) -> &'static str {
        match self {
            PeerTransport::MutualTls => "mtls",
            PeerTransport::Local => "local",
            PeerTransport::Plaintext => "plaintext",
        }
    }
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request could not be sent or answered.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: ConnectError,
    },
    /// The tunnel to the endpoint through its node's proxy could not be opened.
    #[error("connecting to {addr}: tunnel via {peer}: {source}")]
    Tunnel {
        /// Endpoint.
        addr: SocketAddr,
        /// The peer node proxy.
        peer: SocketAddr,
        /// Cause.
        #[source]
        source: tunnel::TunnelFailure,
    },
    /// The HTTP exchange failed (reset, protocol error, closed connection).
    #[error("request to {addr} failed: {}", with_causes(source))]
    Http {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The endpoint answered with a transfer coding other than chunked: hyper removes only the
    /// chunked framing, so the answer cannot be passed on intact (RFC 9112 §6.1).
    #[error("{addr} answered with a transfer coding other than chunked")]
    TransferCoding {
        /// Endpoint.
        addr: SocketAddr,
    },
    /// The destination's node proxy refused by authorization policy.
    #[error("denied by authorization policy at {addr}")]
    Denied {
        /// Endpoint.
        addr: SocketAddr,
    },
}

impl UpstreamError {
    /// Whether the exchange failed because the client's request body did (bad framing, cut
    /// short): the client's fault, not the endpoint's.
    pub fn is_client_body(&self) -> bool {
        match self {
            UpstreamError::Http { source, .. } => crate::core::body::ClientBodyError::is_cause_of(source),
            _ => false,
        }
    }
}

/// An error and its causes, `: `-separated: hyper's own message alone ("http2 error") does not
/// say what went wrong (a reset stream and its reason, a GOAWAY, a closed connection).
pub(crate) fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// Why a TCP connection could not be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// No answer within the connect timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Refused, unreachable, or another socket error.
    #[error("{0}")]
    Io(#[source] std::io::Error),
}

/// Connects to `addr` within the connect timeout, with Nagle's algorithm off.
pub(crate) async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(ConnectError::Io(e)),
        Err(_) => Err(ConnectError::Timeout(CONNECT_TIMEOUT)),
    }
}

/// One multiplexed HTTP/2 client connection shared by every caller: re-established when it
/// closes, by one caller while the others wait for it. Endpoint pools and node-to-node tunnels
/// both hold one.
#[derive(Debug)]
pub(crate) struct SharedHttp2<B> {
    sender: ArcSwapOption<http2::SendRequest<B>>,
    connecting: tokio::sync::Mutex<()>,
}

impl<B> SharedHttp2<B>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new() -> Self {
        Self { sender: ArcSwapOption::empty(), connecting: tokio::sync::Mutex::new(()) }
    }

    fn live(&self) -> Option<http2::SendRequest<B>> {
        self.sender.load().as_ref().filter(|s| !s.is_closed()).map(|s| (**s).clone())
    }

    /// Sends no new request over the current connection: the next [`Self::get`] makes a new
    /// one. Requests in flight on the old connection finish; it closes when they have.
    pub(crate) fn retire(&self) {
        self.sender.store(None);
    }

    /// The live connection, or a new one made over the IO `connect` opens.
    pub(crate) async fn get<T, E, F>(
        &self,
        connect: impl FnOnce() -> F,
        handshake_failed: impl FnOnce(hyper::Error) -> E,
    ) -> Result<http2::SendRequest<B>, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let io = connect().await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .handshake(io)
            .await
            .map_err(handshake_failed)?;
        tokio::spawn(connection);
        self.sender.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}

/// Relays bytes both ways until both directions have ended, counting them under `counted`
/// (received: from the client; sent: to it). Bytes read before the relay (protocol detection,
/// a server's greeting) go first when the sides are wrapped in [`crate::core::rewind::Rewind`], and
/// are counted like the rest. An error ends the relay; what was relayed until then is lost to
/// the counters, as `copy_bidirectional` does not say.
pub(crate) async fn relay<C, S>(
    client: &mut C,
    server: &mut S,
    counted: Option<(&crate::core::metrics::Metrics, &crate::core::metrics::TcpLabels)>,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let relayed = tokio::io::copy_bidirectional(client, server).await;
    if let (Ok((from_client, from_server)), Some((metrics, labels))) = (relayed, counted) {
        metrics.tcp_received_bytes.get_or_create(labels).inc_by(from_client);
        metrics.tcp_sent_bytes.get_or_create(labels).inc_by(from_server);
    }
}

/// Relays an upgraded exchange (101 Switching Protocols: WebSocket and the like) once both the
/// client's and the server's side have been handed over by hyper; nothing if either fails.
pub(crate) fn relay_upgrade(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        if let (Ok(client), Ok(server)) = (client.await, server.await) {
            use hyper_util::rt::TokioIo;
            relay(&mut TokioIo::new(client), &mut TokioIo::new(server), None).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_a_tunnel_with_identities_or_a_local_mesh_pod_is_not_plaintext() {
        // (tunnelled, mesh, mutual TLS) → transport
        let cases = [
            ((true, true, true), PeerTransport::MutualTls),
            ((true, true, false), PeerTransport::Plaintext),
            ((false, true, false), PeerTransport::Local),
            ((false, false, false), PeerTransport::Plaintext),
            ((false, false, true), PeerTransport::Plaintext),
        ];
        for ((tunnelled, mesh, mutual_tls), expected) in cases {
            assert_eq!(PeerTransport::of(tunnelled, mesh, mutual_tls), expected, "{tunnelled} {mesh} {mutual_tls}");
        }
        assert_eq!(PeerTransport::MutualTls.label(), "mtls");
    }

    #[tokio::test]
    async fn a_relay_passes_replayed_bytes_first_and_counts_them_with_the_rest() {
        let metrics = crate::core::metrics::Metrics::new();
        let labels =
            crate::core::metrics::TcpLabels { direction: "outbound", protocol: "opaque", destination: "x".into() };
        let (mut app, proxy_client) = tokio::io::duplex(64);
        let (proxy_server, mut backend) = tokio::io::duplex(64);
        let mut client = crate::core::rewind::Rewind::new(bytes::Bytes::from_static(b"hel"), proxy_client);
        let mut server = crate::core::rewind::Rewind::new(bytes::Bytes::from_static(b"220 "), proxy_server);
        let relaying = async { relay(&mut client, &mut server, Some((&metrics, &labels))).await };
        let peers = async {
            app.write_all(b"lo").await.unwrap();
            app.shutdown().await.unwrap();
            backend.write_all(b"ready").await.unwrap();
            backend.shutdown().await.unwrap();
            let (mut at_backend, mut at_app) = (Vec::new(), Vec::new());
            backend.read_to_end(&mut at_backend).await.unwrap();
            app.read_to_end(&mut at_app).await.unwrap();
            (at_backend, at_app)
        };
        let ((), (at_backend, at_app)) = tokio::join!(relaying, peers);
        assert_eq!(at_backend, b"hello");
        assert_eq!(at_app, b"220 ready");
        assert_eq!(metrics.tcp_received_bytes.get_or_create(&labels).get(), 5);
        assert_eq!(metrics.tcp_sent_bytes.get_or_create(&labels).get(), 9);
    }
}
