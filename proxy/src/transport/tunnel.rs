//! Client side of the node-to-node tunnel: requests for an endpoint on another node travel
//! through that node's proxy, as HTTP/2 CONNECT streams (in the spirit of Istio's HBONE),
//! multiplexed over one connection per peer node and identity pair.
//!
//! With workload identities in use ([`Tunnels::use_mutual_tls`], set when the proxy has a
//! controller), the connection is mutual TLS 1.3: the source proxy presents the source workload's certificate and
//! accepts only a peer proving the destination workload's identity; one connection per (peer,
//! source identity, destination identity), since a TLS connection proves exactly one identity
//! on each side. Without identities (a config file, tests of the plain data path) it is plaintext.

use crate::transport::credentials::{HeldCertificate, TrustRoots, TunnelCredentials, TunnelError};
use crate::transport::{connect_tcp, with_causes, ConnectError, SharedHttp2, UpstreamError};
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

type Peers = HashMap<(SocketAddr, Option<TunnelIdentities>), Arc<Peer>>;

/// The client side of the tunnels of one proxy: its credentials (once mutual TLS is in use)
/// and its connections to peer node proxies, shared by every endpoint pool of that proxy.
/// One per proxy, passed to what opens tunnels, so that proxies in one process (tests) each
/// have their own.
#[derive(Debug, Default)]
pub struct Tunnels {
    credentials: OnceLock<Arc<dyn TunnelCredentials>>,
    peers: Mutex<Peers>,
}

impl Tunnels {
    /// Plaintext tunnels until [`Tunnels::use_mutual_tls`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every tunnel between known identities mutual TLS with `credentials`, from now on.
    /// Set once, when the proxy is assembled and before it serves: a second call is refused,
    /// so that no tunnel ever changes from mutual TLS back to plaintext.
    pub fn use_mutual_tls(&self, credentials: Arc<dyn TunnelCredentials>) -> Result<(), AlreadyMutualTls> {
        self.credentials.set(credentials).map_err(|_| AlreadyMutualTls)
    }

    /// The credentials, when tunnels use mutual TLS.
    pub fn mutual_tls(&self) -> Option<&Arc<dyn TunnelCredentials>> {
        self.credentials.get()
    }

    /// The identities of a tunnel from the workload `source` (namespace, service account) to
    /// the workload `destination`, when mutual TLS is in use.
    pub fn identities(&self, source: (&str, &str), destination: (&str, &str)) -> Option<TunnelIdentities> {
        let domain = self.mutual_tls()?.trust_domain();
        Some(TunnelIdentities {
            source: SpiffeId::new(domain, source.0, source.1),
            destination: SpiffeId::new(domain, destination.0, destination.1),
        })
    }

    /// The SPIFFE ID of a workload (namespace, service account), when mutual TLS is in use.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> Option<SpiffeId> {
        Some(SpiffeId::new(self.mutual_tls()?.trust_domain(), namespace, service_account))
    }

    /// The peer connection for a tunnel address and identities.
    fn peer(&self, addr: SocketAddr, identities: Option<&TunnelIdentities>) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .entry((addr, identities.cloned()))
            .or_insert_with(|| Arc::new(Peer { connection: SharedHttp2::new(), established: ArcSwapOption::empty() }))
            .clone()
    }
}

/// [`Tunnels::use_mutual_tls`] was called twice.
#[derive(Debug, thiserror::Error)]
#[error("tunnels already use mutual TLS")]
pub struct AlreadyMutualTls;

/// What a mutual TLS connection was established with: the certificate presented and the
/// roots the peer was verified against.
#[derive(Debug)]
struct Credentials {
    certificate: Arc<HeldCertificate>,
    roots: Arc<TrustRoots>,
}

impl Credentials {
    fn current(credentials: &dyn TunnelCredentials, identities: &TunnelIdentities) -> Result<Self, TunnelError> {
        let certificate = credentials
            .certificate(&identities.source)
            .ok_or_else(|| TunnelError::NoCertificate(identities.source.clone()))?;
        let roots = credentials.trust_roots().ok_or(TunnelError::NoTrustRoots)?;
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

/// Why a tunnel stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelFailure {
    /// The endpoint wants mutual TLS (both ends have identities) and this proxy has none.
    #[error("mutual TLS is not in use")]
    NoMutualTls,
    /// This proxy's credentials are not ready (no certificate yet, no trust roots).
    #[error("{0}")]
    Credentials(#[from] TunnelError),
    /// TCP to the peer proxy failed.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The peer holds no certificate for the destination workload: what a node proxy answers
    /// (TLS alert AccessDenied) when its resolver finds none for the SNI.
    #[error("mTLS: the node proxy at {peer} holds no certificate for workload {destination} (it is not a mesh pod of that node, or not enrolled there yet); TLS alert AccessDenied")]
    PeerHasNoCertificate {
        /// The peer proxy.
        peer: SocketAddr,
        /// The identity asked for.
        destination: SpiffeId,
    },
    /// Another TLS handshake failure.
    #[error("mTLS: {0}")]
    Handshake(#[source] std::io::Error),
    /// The HTTP/2 connection or the CONNECT exchange failed.
    #[error("{}", with_causes(.0))]
    Http(#[from] hyper::Error),
    /// The CONNECT request could not be built.
    #[error("{0}")]
    Request(#[from] http::Error),
    /// The peer answered the CONNECT with something other than 200.
    #[error("peer answered {0}")]
    Refused(StatusCode),
}

/// Connects to the peer with mutual TLS as `identities.source`, requiring `identities.destination`.
async fn connect_mtls(
    peer_addr: SocketAddr,
    identities: &TunnelIdentities,
    credentials: &Credentials,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, TunnelFailure> {
    let config =
        client_config(&credentials.certificate.certificate, &credentials.roots.bundle, identities.destination.clone())
            .map_err(TunnelError::from)?;
    let tcp = connect_tcp(peer_addr).await?;
    let name = server_name_for(&identities.destination).map_err(TunnelError::from)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_failure(e, peer_addr, identities))?;
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
fn handshake_failure(error: std::io::Error, peer: SocketAddr, identities: &TunnelIdentities) -> TunnelFailure {
    let alert = error.get_ref().and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>());
    match alert {
        Some(tokio_rustls::rustls::Error::AlertReceived(tokio_rustls::rustls::AlertDescription::AccessDenied)) => {
            TunnelFailure::PeerHasNoCertificate { peer, destination: identities.destination.clone() }
        }
        _ => TunnelFailure::Handshake(error),
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
    mutual_tls: Option<(&dyn TunnelCredentials, &TunnelIdentities)>,
) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>, TunnelFailure> {
    let connection = &peer.connection;
    match mutual_tls {
        Some((credentials, identities)) => {
            let credentials = Arc::new(Credentials::current(credentials, identities)?);
            if peer.established.load().as_ref().is_some_and(|established| !established.same_as(&credentials)) {
                connection.retire();
            }
            let connect = || async {
                let tls = connect_mtls(peer_addr, identities, &credentials).await?;
                peer.established.store(Some(credentials.clone()));
                Ok(TokioIo::new(tls))
            };
            connection.get(connect, TunnelFailure::Http).await
        }
        None => {
            let connect = || async { Ok(TokioIo::new(connect_tcp(peer_addr).await?)) };
            connection.get(connect, TunnelFailure::Http).await
        }
    }
}

impl Tunnels {
    /// Opens a stream to `target` through the node proxy at `peer`; mutual TLS when `identities`
    /// are given (refused if this proxy has no credentials: never plaintext instead); `protocol`
    /// says which HTTP the stream carries, if any.
    pub async fn open(
        &self,
        peer_addr: SocketAddr,
        target: SocketAddr,
        identities: Option<&TunnelIdentities>,
        protocol: Option<crate::transport::UpstreamProtocol>,
    ) -> Result<hyper::upgrade::Upgraded, UpstreamError> {
        let failed = |source: TunnelFailure| UpstreamError::Tunnel { addr: target, peer: peer_addr, source };
        let mutual_tls = match identities {
            Some(identities) => {
                let credentials = self.mutual_tls().ok_or_else(|| failed(TunnelFailure::NoMutualTls))?;
                Some((&**credentials, identities))
            }
            None => None,
        };
        let peer = self.peer(peer_addr, identities);
        let mut request = Request::builder().method(Method::CONNECT).uri(target.to_string());
        if let Some(protocol) = protocol {
            let name = match protocol {
                crate::transport::UpstreamProtocol::Http1 => "http1",
                crate::transport::UpstreamProtocol::Http2 => "http2",
            };
            request = request.header(PROTOCOL_HEADER, name);
        }
        let request = request.body(Empty::new()).map_err(|e| failed(e.into()))?;
        // Two tries: a pooled connection may be going away (the peer drains after an upgrade and
        // sent GOAWAY, or it died). Nothing has reached the pod before the CONNECT is answered, so
        // asking again on a new connection — to whoever accepts on the peer's port now — is safe.
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let outcome = async {
                let mut sender = pooled_sender(&peer, peer_addr, mutual_tls).await?;
                sender.ready().await?;
                Ok::<_, TunnelFailure>(sender.send_request(request.clone()).await?)
            }
            .await
            .map_err(failed);
            match outcome {
                Ok(response) => break response,
                Err(error) if attempt == 1 => {
                    tracing::debug!(%error, %peer_addr, "tunnel connection unusable; retrying on a new one");
                    peer.connection.retire();
                }
                Err(error) => return Err(error),
            }
        };
        if response.status() == StatusCode::FORBIDDEN
            && response.headers().contains_key(crate::core::headers::DENIED_HEADER)
        {
            return Err(UpstreamError::Denied { addr: target });
        }
        if response.status() != StatusCode::OK {
            return Err(failed(TunnelFailure::Refused(response.status())));
        }
        hyper::upgrade::on(response).await.map_err(|e| failed(e.into()))
    }
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
        let text = handshake_failure(denied, peer, &identities).to_string();
        assert!(
            text.contains("the node proxy at 10.100.0.12:15008 holds no certificate for workload spiffe://cluster.local/ns/legacy/sa/default"),
            "{text}"
        );
        let other = std::io::Error::other(TlsError::AlertReceived(AlertDescription::DecryptError));
        assert_eq!(handshake_failure(other, peer, &identities).to_string(), "mTLS: received fatal alert: DecryptError");
    }
}
