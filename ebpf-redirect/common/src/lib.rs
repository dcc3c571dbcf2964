//! Types shared by the Nodus eBPF programs (kernel side, `no_std`) and their loader (userspace).
//!
//! Every type here is `#[repr(C)]` with explicit padding so both sides agree on the layout byte
//! for byte. Addresses and ports are kept in network byte order, as the kernel hands them to the
//! programs: an IPv4 address is its four octets read as a native `u32`
//! (`u32::from_ne_bytes(octets)`), a port is `port.to_be()`.
#![no_std]

/// Map: network-namespace cookies of enrolled pods (`u64` key, [`Enrollment`] value).
pub const MAP_ENROLLED: &str = "NODUS_ENROLLED";
/// Map: redirect settings, one [`RedirectConfig`] at index 0.
pub const MAP_CONFIG: &str = "NODUS_CONFIG";
/// Map: original destination by the client socket's cookie (`u64` key, [`OriginalDst`] value).
pub const MAP_ORIG_BY_COOKIE: &str = "NODUS_ORIG_CK";
/// Map: original destination by the client's address as the proxy sees it ([`PeerKey`] key).
pub const MAP_ORIG_BY_PEER: &str = "NODUS_ORIG_PEER";
/// Map: per-CPU `u64` counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "NODUS_COUNTERS";
/// Map: the node proxy's capture listener (a one-slot SOCKMAP; the proxy puts its listening
/// socket at index 0).
pub const MAP_CAPTURE_LISTENER: &str = "NODUS_CAPTURE";
/// Map: IPv4 addresses of this node's enrolled pods, for inbound capture (`u32` address in
/// network order as key, [`InboundPod`] value).
pub const MAP_INBOUND: &str = "NODUS_INBOUND";

/// Program names (the functions' names, distinct from their section names: a function named
/// like its section fails to link).
pub const PROG_CONNECT4: &str = "nodus_connect4";
/// See [`PROG_CONNECT4`].
pub const PROG_GETPEERNAME4: &str = "nodus_getpeername4";
/// See [`PROG_CONNECT4`].
pub const PROG_SOCK_OPS: &str = "nodus_sock_ops";
/// IPv6 sockets dialling IPv4-mapped addresses (`::ffff:a.b.c.d`), as dual-stack clients do.
pub const PROG_CONNECT6: &str = "nodus_connect6";
/// See [`PROG_CONNECT6`].
pub const PROG_GETPEERNAME6: &str = "nodus_getpeername6";

/// TC ingress on the node's interfaces: new connections to enrolled pods and packets of
/// connections the proxy holds are marked for local delivery.
pub const PROG_TC_INGRESS: &str = "nodus_tc_ingress";
/// `sk_lookup` on the node's network namespace: the kernel's listener lookup for a connection to
/// an enrolled pod returns the proxy's capture listener.
pub const PROG_SK_LOOKUP: &str = "nodus_sk_lookup";

/// Entries of the original-destination maps (LRU; entries are also removed when a socket closes).
pub const MAX_TRACKED_CONNECTIONS: u32 = 65_536;
/// Entries of the enrolled-pods map.
pub const MAX_ENROLLED_PODS: u32 = 4_096;

/// The packet mark the TC program sets on packets it delivers to the proxy. A policy-routing
/// rule (`fwmark CAPTURE_MARK/CAPTURE_MARK_MASK lookup CAPTURE_ROUTE_TABLE`) sends them to a
/// table whose only route is `local 0.0.0.0/0 dev lo`: the pod's address is not the node's, and
/// without it the kernel would forward the packet past the proxy's socket (TPROXY's way, as
/// Cilium does for its per-node Envoy). The bits sit in the nibble Cilium also uses for proxy
/// marks, away from kube-proxy's 0x4000/0x8000 and Calico's upper half.
pub const CAPTURE_MARK: u32 = 0x0e00;
/// See [`CAPTURE_MARK`].
pub const CAPTURE_MARK_MASK: u32 = 0x0f00;
/// See [`CAPTURE_MARK`].
pub const CAPTURE_ROUTE_TABLE: u32 = 2107;
/// Priority of the policy-routing rule (before `main` at 32766, after `local` at 0).
pub const CAPTURE_RULE_PRIORITY: u32 = 1107;

/// Where captured connections are sent.
///
/// The proxy's outbound listeners are `proxy_port_count` consecutive ports from `proxy_port`,
/// and each original destination always goes to the same one ([`outbound_port_index`]). With
/// one port, every captured connection of a pod would share one destination address, so the
/// pod's ephemeral ports (about 28,000, each held 60 s in TIME-WAIT after a client-side close)
/// would be shared by all its connections, whatever they were for: a client that closes first
/// would be limited to a few hundred new connections a second across all its Services. Spread
/// by destination, each Service gets its own range, as it has without the mesh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    /// The node proxy's outbound listener address; 0 disables capture.
    pub proxy_ip4: u32,
    /// Its first port, network byte order.
    pub proxy_port: u16,
    /// The proxy's inbound capture listener port (network byte order; it listens on every
    /// address of the node); 0 disables inbound capture.
    pub inbound_port: u16,
    /// How many consecutive outbound ports, from `proxy_port`, the proxy listens on (host
    /// order; 0 counts as 1).
    pub proxy_port_count: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// Which of `count` outbound ports an original destination goes to (host-order address and
/// port). A plain sum modulo the count: consecutive cluster IPs, as Service IP allocation
/// hands them out, land on distinct ports; the verifier needs no loop.
pub fn outbound_port_index(dst_ip_host: u32, dst_port_host: u16, count: u16) -> u16 {
    let count = u32::from(count.max(1));
    (dst_ip_host.wrapping_add(u32::from(dst_port_host)) % count) as u16
}

/// Why a pod is in the enrolled map. Only one mode today; the field leaves room for
/// per-pod choices (inbound capture, strict mTLS) without a layout change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enrollment {
    /// Bit set of `ENROLL_*` flags.
    pub flags: u32,
}

/// Capture the pod's outbound TCP connections.
pub const ENROLL_OUTBOUND: u32 = 1;

/// An enrolled pod's address in the inbound map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundPod {
    /// Bit set of `INBOUND_*` flags.
    pub flags: u32,
}

/// New connections to this address are captured. Without it (a pod just released) only
/// packets of connections the proxy already holds are delivered to it, so that leaving the
/// mesh does not break them.
pub const INBOUND_CAPTURE_NEW: u32 = 1;

/// The destination a pod asked for before capture rewrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDst {
    /// IPv4 address, network byte order.
    pub ip4: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// A captured connection as the proxy's accepted socket sees it: the client socket's local
/// address (the peer address) and the outbound port it was sent to. The port is part of the key
/// because one client port may be in use towards two of the proxy's outbound ports at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// IPv4 address, network byte order.
    pub ip4: u32,
    /// Port, network byte order.
    pub port: u16,
    /// The proxy's outbound port the connection went to, network byte order.
    pub proxy_port: u16,
}

impl PeerKey {
    /// Builds a key from the client address's octets, its host-order port, and the host-order
    /// outbound port it connected to.
    pub fn new(octets: [u8; 4], port: u16, proxy_port: u16) -> Self {
        Self { ip4: u32::from_ne_bytes(octets), port: port.to_be(), proxy_port: proxy_port.to_be() }
    }
}

impl OriginalDst {
    /// The address's octets.
    pub fn octets(&self) -> [u8; 4] {
        self.ip4.to_ne_bytes()
    }

    /// The port in host byte order.
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Indexes of the counters map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Connections redirected to the proxy.
    Captured = 0,
    /// Connections of enrolled pods deliberately left alone (loopback, the proxy itself).
    Bypassed = 1,
    /// Connections refused because their original destination could not be recorded.
    Errors = 2,
    /// New connections (SYNs) to enrolled pods diverted to the proxy on their way in.
    InboundCaptured = 3,
    /// New connections to enrolled pods refused because no capture listener was registered
    /// (capture fails closed rather than let them bypass the proxy).
    InboundNoListener = 4,
}

/// Number of counters.
pub const COUNTER_COUNT: u32 = 5;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are plain `#[repr(C)]` integers with explicit padding: any bit pattern
    // is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::RedirectConfig {}
    unsafe impl aya::Pod for super::Enrollment {}
    unsafe impl aya::Pod for super::OriginalDst {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::InboundPod {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn destinations_spread_over_the_outbound_ports() {
        let ip = |last: u8| u32::from_be_bytes([10, 96, 0, last]);
        // Consecutive cluster IPs on one port: each its own outbound port.
        let ports: std::collections::BTreeSet<u16> = (10..26).map(|i| outbound_port_index(ip(i), 80, 16)).collect();
        assert_eq!(ports.len(), 16);
        // Always the same one for one destination; always in range; 0 and 1 ports mean one.
        assert_eq!(outbound_port_index(ip(10), 80, 16), outbound_port_index(ip(10), 80, 16));
        assert!((0..1000u32).all(|i| outbound_port_index(i.wrapping_mul(2_654_435_761), 443, 16) < 16));
        assert_eq!((outbound_port_index(ip(7), 80, 0), outbound_port_index(ip(7), 80, 1)), (0, 0));
    }
}
