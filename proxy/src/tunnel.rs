//! Client side of the node-to-node tunnel: requests for an endpoint on another node travel
//! through that node's proxy, as HTTP/2 CONNECT streams (in the spirit of Istio's HBONE),
//! multiplexed over one connection per peer node and identity pair.
//!
//! With workload identities in use ([`use_mtls`], set when the proxy has a controller), the
//! connection is mutual TLS 1.3: the source proxy presents the source workload's certificate and
//! accepts only a peer proving the destination workload's identity; one connection per (peer,
//! source identity, destination identity), since a TLS connection proves exactly one identity
//! on each side. Without identities (a config file, tests of the plain data path) it is plaintext.

use crate::identity::{HeldCertificate, IdentityManager};
use crate::state::TrustRoots;
use crate::transport::{connect_tcp, SharedHttp2, UpstreamError};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use nodus_identity::tls::{client_config, server_name_for};
use nodus_identity::SpiffeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

/// Who a tunnel connection authenticates as, and whom it must reach.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TunnelIdentities {
    /// The source workload's identity (presented).
    pub source: SpiffeId,
    /// The destination workload's identity (required of the peer).
    pub destination: SpiffeId,
}

static IDENTITIES: OnceLock<Arc<IdentityManager>> = OnceLock::new();

/// Makes every tunnel with known identities mutual TLS, with certificates from `manager`.
pub fn use_mtls(manager: Arc<IdentityManager>) {
    let _ = IDENTITIES.set(manager);
}

/// The identity manager, when tunnels use mutual TLS.
pub fn mtls() -> Option<&'static Arc<IdentityManager>> {
    IDENTITIES.get()
}

/// What a mutual TLS connection was established with: the certificate presented and the
/// roots the peer was verified against.
#[derive(Debug)]
struct Credentials {
    certificate: Arc<HeldCertificate>,
    roots: Arc<TrustRoots>,
}

impl Credentials {
    fn current(identities: &TunnelIdentities) -> Result<Self, String> {
        let manager = mtls().ok_or("mutual TLS is not in use")?;
        let certificate = manager
            .certificate(&identities.source)
            .ok_or_else(|| format!("no workload certificate for {} yet", identities.source))?;
        let roots = manager.trust_roots().ok_or("no trust roots in the config yet")?;
        Ok(Self { certificate, roots })
    }

    fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.certificate, &other.certificate) && Arc::ptr_eq(&self.roots, &other.roots)
    }
}

/// One peer node proxy and the multiplexed connection to it.
#[derive(Debug)]
struct Peer {
    connection: SharedHttp2<Empty<Bytes>>,
    /// The credentials of the current mutual TLS connection. When the certificate is renewed
    /// or the trust roots change, new streams go to a new connection made with the new ones;
    /// streams open on the old connection finish there, then it closes (no stream is cut).
    established: ArcSwapOption<Credentials>,
}

/// Peers by tunnel address and identities, shared by every endpoint pool of the process.
fn peer(addr: SocketAddr, identities: Option<&TunnelIdentities>) -> Arc<Peer> {
    type Peers = HashMap<(SocketAddr, Option<TunnelIdentities>), Arc<Peer>>;
    static PEERS: OnceLock<Mutex<Peers>> = OnceLock::new();
    let mut peers = PEERS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
    peers
        .entry((addr, identities.cloned()))
        .or_insert_with(|| Arc::new(Peer { connection: SharedHttp2::new(), established: ArcSwapOption::empty() }))
        .clone()
}

/// Connects to the peer with mutual TLS as `identities.source`, requiring `identities.destination`.
async fn connect_mtls(
    peer_addr: SocketAddr,
    identities: &TunnelIdentities,
    credentials: &Credentials,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let config =
        client_config(&credentials.certificate.certificate, &credentials.roots.bundle, identities.destination.clone())
            .map_err(|e| e.to_string())?;
    let tcp = connect_tcp(peer_addr).await?;
    let name = server_name_for(&identities.destination).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_failure(&e, peer_addr, identities))?;
    tracing::debug!(
        %peer_addr,
        source = %identities.source,
        destination = %identities.destination,
        key_exchange = ?tls.get_ref().1.negotiated_key_exchange_group().map(|g| g.name()),
        "tunnel connection established"
    );
    Ok(tls)
}

/// A failed handshake with a peer proxy, said in the mesh's terms where the alert has one
/// meaning: AccessDenied is what a node proxy answers when it holds no certificate for the
/// identity asked for (its resolver found none for the SNI).
fn handshake_failure(error: &std::io::Error, peer_addr: SocketAddr, identities: &TunnelIdentities) -> String {
    let alert = error.get_ref().and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>());
    match alert {
        Some(tokio_rustls::rustls::Error::AlertReceived(tokio_rustls::rustls::AlertDescription::AccessDenied)) => format!(
            "mTLS: the node proxy at {peer_addr} holds no certificate for workload {} (it is not a mesh pod of that node, or not enrolled there yet); TLS alert AccessDenied",
            identities.destination
        ),
        _ => format!("mTLS: {error}"),
    }
}

/// Tells the destination proxy the stream carries HTTP of this version (absent: opaque bytes),
/// so that it can authorize each request and add the caller's identity.
pub const PROTOCOL_HEADER: &str = "x-nodus-protocol";

/// The peer's live connection, or a new one (mutual TLS with the current credentials when
/// `identities` are given; a connection made with older credentials is retired first).
async fn pooled_sender(
    peer: &Peer,
    peer_addr: SocketAddr,
    identities: Option<&TunnelIdentities>,
    failed: &impl Fn(String) -> UpstreamError,
) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>, UpstreamError> {
    let connection = &peer.connection;
    match identities {
        Some(identities) => {
            let credentials = Arc::new(Credentials::current(identities).map_err(failed)?);
            if peer.established.load().as_ref().is_some_and(|established| !established.same_as(&credentials)) {
                connection.retire();
            }
            let connect = || async {
                let tls = connect_mtls(peer_addr, identities, &credentials).await.map_err(failed)?;
                peer.established.store(Some(credentials.clone()));
                Ok(TokioIo::new(tls))
            };
            connection.get(connect, |e| failed(e.to_string())).await
        }
        None => {
            let connect = || async { connect_tcp(peer_addr).await.map(TokioIo::new).map_err(failed) };
            connection.get(connect, |e| failed(e.to_string())).await
        }
    }
}

/// Opens a stream to `target` through the node proxy at `peer`; mutual TLS when `identities`
/// are given; `protocol` says which HTTP the stream carries, if any.
pub async fn open(
    peer_addr: SocketAddr,
    target: SocketAddr,
    identities: Option<&TunnelIdentities>,
    protocol: Option<crate::upstream::UpstreamProtocol>,
) -> Result<hyper::upgrade::Upgraded, UpstreamError> {
    let failed =
        |reason: String| UpstreamError::Connect { addr: target, reason: format!("tunnel via {peer_addr}: {reason}") };
    let peer = peer(peer_addr, identities);
    let mut request = Request::builder().method(Method::CONNECT).uri(target.to_string());
    if let Some(protocol) = protocol {
        let name = match protocol {
            crate::upstream::UpstreamProtocol::Http1 => "http1",
            crate::upstream::UpstreamProtocol::Http2 => "http2",
        };
        request = request.header(PROTOCOL_HEADER, name);
    }
    let request = request.body(Empty::new()).map_err(|e| failed(e.to_string()))?;
    // Two tries: a pooled connection may be going away (the peer drains after an upgrade and
    // sent GOAWAY, or it died). Nothing has reached the pod before the CONNECT is answered, so
    // asking again on a new connection — to whoever accepts on the peer's port now — is safe.
    let mut attempt = 0;
    let response = loop {
        attempt += 1;
        let outcome = async {
            let mut sender = pooled_sender(&peer, peer_addr, identities, &failed).await?;
            sender.ready().await.map_err(|e| failed(e.to_string()))?;
            sender.send_request(request.clone()).await.map_err(|e| failed(e.to_string()))
        }
        .await;
        match outcome {
            Ok(response) => break response,
            Err(error) if attempt == 1 => {
                tracing::debug!(%error, %peer_addr, "tunnel connection unusable; retrying on a new one");
                peer.connection.retire();
            }
            Err(error) => return Err(error),
        }
    };
    if response.status() == StatusCode::FORBIDDEN && response.headers().contains_key(crate::headers::DENIED_HEADER) {
        return Err(UpstreamError::Denied { addr: target });
    }
    if response.status() != StatusCode::OK {
        return Err(failed(format!("peer answered {}", response.status())));
    }
    hyper::upgrade::on(response).await.map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::rustls::{AlertDescription, Error as TlsError};

    #[test]
    fn a_peer_without_the_certificate_is_named_not_left_as_a_bare_alert() {
        let identities = TunnelIdentities {
            source: SpiffeId::new("cluster.local", "demo", "client"),
            destination: SpiffeId::new("cluster.local", "legacy", "default"),
        };
        let peer: SocketAddr = "10.100.0.12:15008".parse().unwrap();
        let denied = std::io::Error::other(TlsError::AlertReceived(AlertDescription::AccessDenied));
        let text = handshake_failure(&denied, peer, &identities);
        assert!(
            text.contains("the node proxy at 10.100.0.12:15008 holds no certificate for workload spiffe://cluster.local/ns/legacy/sa/default"),
            "{text}"
        );
        let other = std::io::Error::other(TlsError::AlertReceived(AlertDescription::DecryptError));
        assert_eq!(handshake_failure(&other, peer, &identities), "mTLS: received fatal alert: DecryptError");
    }
}
