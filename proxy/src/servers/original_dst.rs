//! Where a captured connection was going before the redirect sent it to the proxy.

use std::net::SocketAddr;

/// Looks up a connection's original destination by its peer address and the outbound listener
/// address it reached.
pub trait OriginalDst: Send + Sync + 'static {
    /// The destination the client dialled, or `None` if the connection was not captured.
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr>;
}

/// The eBPF redirect's map (production).
impl OriginalDst for nodus_redirect::OriginalDstMap {
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
        let SocketAddr::V4(peer) = peer else { return None };
        // The outbound port the redirect sent the connection to is part of the key.
        match self.get(peer, local.port()) {
            Ok(found) => found.map(SocketAddr::V4),
            Err(error) => {
                tracing::warn!(%peer, %error, "original destination lookup failed");
                None
            }
        }
    }
}

/// Every connection to this listener is taken to be going to one destination. For tests and
/// benchmarks that do not capture with eBPF (they say so), like a port-forward.
#[derive(Clone, Copy, Debug)]
pub struct FixedOriginalDst(pub SocketAddr);

impl OriginalDst for FixedOriginalDst {
    fn lookup(&self, _peer: SocketAddr, _local: SocketAddr) -> Option<SocketAddr> {
        Some(self.0)
    }
}
