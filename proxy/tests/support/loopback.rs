//! The proxy in the test process on loopback, without eBPF: every connection to its outbound
//! listener is taken to be going to one Service address (`FixedOriginalDst`, like a
//! port-forward). This is not a mock of a component that could run here — the capture path has
//! its own end-to-end tests (`mesh_*.rs`) — it lets these cases run without root.

use nodus_proxy::app::{self, Proxy, ProxySettings};
use nodus_proxy::core::limits::ConnectionLimits;
use nodus_proxy::servers::original_dst::FixedOriginalDst;
use nodus_proxy::servers::outbound::OutboundSettings;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The Service address every outbound connection is taken to dial.
pub const VIP: &str = "10.96.0.10";

/// Starts the echo workload (pod `echo-0` of Service `demo/echo`) on an ephemeral loopback port,
/// which it returns.
pub async fn start_echo() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let identity = nodus_echo::EchoIdentity {
        pod: "echo-0".into(),
        namespace: "demo".into(),
        service: "echo".into(),
        ..Default::default()
    };
    tokio::spawn(nodus_echo::serve(listener, identity));
    port
}

/// Starts `proxy`'s listeners on ephemeral loopback ports, its outbound connections all going to
/// `VIP:service_port`.
pub async fn start_on_loopback(proxy: &Arc<Proxy>, service_port: u16, limits: ConnectionLimits) -> app::Listening {
    let settings = ProxySettings {
        outbound_addr: "127.0.0.1:0".parse().unwrap(),
        outbound_ports: 1,
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        debug_addr: Some("127.0.0.1:0".parse().unwrap()),
        inbound_addr: None,
        capture_addr: None,
        outbound: OutboundSettings { detect_timeout: Duration::from_millis(200), limits, ..Default::default() },
    };
    let original = SocketAddr::new(VIP.parse().unwrap(), service_port);
    app::start(proxy, &settings, Arc::new(FixedOriginalDst(original))).await.unwrap()
}

/// A proxy in front of a backend on `backend_port`, its Service `demo/echo` at `VIP:80`, the port
/// declared `app_protocol`; returns its listeners.
#[allow(dead_code)] // not every test file that includes this module uses it
pub async fn start_proxy_in_front_of(
    backend_port: u16,
    app_protocol: &str,
    limits: ConnectionLimits,
) -> app::Listening {
    let proxy = Arc::new(Proxy::new(
        nodus_proxy::balance::OutlierPolicy::default(),
        nodus_proxy::core::metrics::Metrics::new(),
    ));
    let config: nodus_config::ConfigSnapshot = serde_norway::from_str(&format!(
        "version: 1\nservices:\n  - id: {{ namespace: demo, name: echo }}\n    clusterIps: [{VIP}]\n    ports: [{{ port: 80, targetPort: {backend_port}, appProtocol: {app_protocol} }}]\n    endpoints: [{{ address: 127.0.0.1 }}]\n"
    ))
    .unwrap();
    proxy.apply(config).unwrap();
    start_on_loopback(&proxy, 80, limits).await
}
