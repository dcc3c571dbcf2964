//! Assembles a running proxy: config store, metrics, listeners, config source, enrolment.
//! The binary and the in-process tests both start the proxy through here.

use crate::balance::OutlierPolicy;
use crate::control::enrollment::Enrollment;
use crate::core::metrics::{ConfigLabels, Metrics};
use crate::servers::original_dst::OriginalDst;
use crate::servers::outbound::{Outbound, OutboundSettings};
use crate::state::{ApplyError, ConfigStore};
use nodus_config::ConfigSnapshot;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Settings of a proxy process.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// The first outbound listener's address.
    pub outbound_addr: SocketAddr,
    /// How many outbound listeners, on consecutive ports from `outbound_addr`'s.
    pub outbound_ports: u16,
    /// Admin listener address (`/metrics`, `/ready`, `/live`: what anyone reaching the node may see).
    pub admin_addr: SocketAddr,
    /// The debug listener's address (`/config_dump` and the rest of the admin port): the node's
    /// loopback, which pods (in network namespaces of their own) cannot reach. `None`: not served.
    pub debug_addr: Option<SocketAddr>,
    /// Inbound (tunnel) listener address, if this proxy accepts tunnels from other nodes.
    pub inbound_addr: Option<SocketAddr>,
    /// Inbound capture listener address (transparent; needs CAP_NET_ADMIN), when the eBPF
    /// redirect captures connections on their way in to pods.
    pub capture_addr: Option<SocketAddr>,
    /// Outbound listener settings.
    pub outbound: OutboundSettings,
}

/// The proxy's shared core.
pub struct Proxy {
    /// Config in force.
    pub store: Arc<ConfigStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Woken whenever a config is applied (enrolment listens).
    pub config_applied: Arc<Notify>,
    /// Set when the proxy hands over to a successor or stops: see [`crate::core::drain`].
    pub drain: crate::core::drain::Drain,
}

impl Proxy {
    /// A proxy with no config yet, exporting `metrics`.
    pub fn new(outlier: OutlierPolicy, metrics: Metrics) -> Self {
        Self::with_store(ConfigStore::new(outlier), metrics)
    }

    /// The proxy of `node`: endpoints on other nodes are reached through their node's proxy.
    pub fn for_node(outlier: OutlierPolicy, metrics: Metrics, node: &str) -> Self {
        Self::with_store(ConfigStore::for_node(outlier, node), metrics)
    }

    fn with_store(store: ConfigStore, metrics: Metrics) -> Self {
        Self {
            store: Arc::new(store),
            metrics: Arc::new(metrics),
            config_applied: Arc::new(Notify::new()),
            drain: crate::core::drain::Drain::default(),
        }
    }

    /// Applies a snapshot, recording the outcome; the config in force stays on error.
    pub fn apply(&self, snapshot: ConfigSnapshot) -> Result<u64, ApplyError> {
        let result = self.store.apply(snapshot);
        match &result {
            Ok(version) => {
                self.metrics.config_updates.get_or_create(&ConfigLabels { result: "accepted" }).inc();
                if let Some(state) = self.store.load() {
                    self.report_unplaced(&state);
                }
                self.metrics.config_version.set(*version as i64);
                self.config_applied.notify_waiters();
                tracing::info!(version, "config applied");
            }
            Err(error) => {
                self.metrics.config_updates.get_or_create(&ConfigLabels { result: "rejected" }).inc();
                tracing::warn!(%error, "config rejected; the previous config stays in force");
            }
        }
        result
    }

    /// Says which mesh endpoints the config in force leaves out, and why: a log line each, and
    /// a gauge per reason.
    fn report_unplaced(&self, state: &crate::state::ProxyState) {
        for reason in [nodus_config::Unplaced::NodeUnknown, nodus_config::Unplaced::NoNode] {
            let count = state.unplaced.iter().filter(|u| u.reason == reason).count();
            let labels = crate::core::metrics::UnplacedLabels { reason: reason.as_str() };
            self.metrics.unplaced_endpoints.get_or_create(&labels).set(count as i64);
        }
        for endpoint in &state.unplaced {
            tracing::warn!(service = %endpoint.service, address = %endpoint.address, "{endpoint}; left out until its node is known");
        }
    }
}

/// Addresses a started proxy listens on.
#[derive(Clone, Debug)]
pub struct Listening {
    /// The first outbound listener.
    pub outbound: SocketAddr,
    /// Every outbound listener (consecutive ports; the redirect spreads original destinations
    /// over them, see `nodus_redirect_common::RedirectConfig`).
    pub outbound_ports: Vec<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Inbound (tunnel) listener.
    pub inbound: Option<SocketAddr>,
    /// Inbound capture listener.
    pub capture: Option<SocketAddr>,
    /// The node-local debug listener.
    pub debug: Option<SocketAddr>,
    /// The listening sockets, for a hand-over to a successor; valid until draining starts.
    pub fds: Vec<(crate::servers::handoff::ListenerRole, std::os::fd::RawFd)>,
}

/// Binds a transparent listener: it may accept connections addressed to other hosts (pods),
/// which the eBPF redirect assigns to it; each accepted socket's local address is the one the
/// client dialled.
fn bind_transparent(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType};
    let SocketAddr::V4(v4) = addr else {
        return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "the capture listener is IPv4 only"));
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket(AddressFamily::Inet, SockType::Stream, flags, None)?;
    setsockopt(&fd, sockopt::IpTransparent, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    use std::os::fd::AsRawFd;
    bind(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(v4))?;
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// Binds `count` outbound listeners on consecutive ports from `first`'s (port 0: each on a port
/// of its own, for tests).
async fn bind_outbound(first: SocketAddr, count: u16) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(usize::from(count.max(1)));
    for index in 0..count.max(1) {
        let port = if first.port() == 0 { 0 } else { first.port().checked_add(index).unwrap_or(0) };
        if first.port() != 0 && port == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "outbound ports run past 65535"));
        }
        listeners.push(TcpListener::bind(SocketAddr::new(first.ip(), port)).await?);
    }
    Ok(listeners)
}

/// Binds the listeners and spawns their tasks on the current runtime.
pub async fn start(
    proxy: &Arc<Proxy>,
    settings: &ProxySettings,
    original_dst: Arc<dyn OriginalDst>,
) -> std::io::Result<Listening> {
    start_with(proxy, settings, original_dst, None).await
}

/// Like [`start`], accepting on listeners taken over from a predecessor when given
/// ([`crate::servers::handoff`]) instead of binding new ones.
pub async fn start_with(
    proxy: &Arc<Proxy>,
    settings: &ProxySettings,
    original_dst: Arc<dyn OriginalDst>,
    inherited: Option<crate::servers::handoff::Inherited>,
) -> std::io::Result<Listening> {
    let (outbound_listeners, admin_listener, inbound_listener, capture_listener, inherited_debug) = match inherited {
        Some(inherited) => (
            inherited.outbound.into_iter().map(TcpListener::from_std).collect::<std::io::Result<Vec<_>>>()?,
            TcpListener::from_std(inherited.admin)?,
            inherited.inbound.map(TcpListener::from_std).transpose()?,
            inherited.capture.map(TcpListener::from_std).transpose()?,
            inherited.debug.map(TcpListener::from_std).transpose()?,
        ),
        None => (
            bind_outbound(settings.outbound_addr, settings.outbound_ports).await?,
            TcpListener::bind(settings.admin_addr).await?,
            match settings.inbound_addr {
                Some(addr) => Some(TcpListener::bind(addr).await?),
                None => None,
            },
            settings.capture_addr.map(bind_transparent).transpose()?,
            None,
        ),
    };
    // A predecessor of a version without it passed none: bound here.
    let debug_listener = match (inherited_debug, settings.debug_addr) {
        (Some(listener), _) => Some(listener),
        (None, Some(addr)) => Some(TcpListener::bind(addr).await?),
        (None, None) => None,
    };
    use crate::servers::handoff::ListenerRole;
    use std::os::fd::AsRawFd;
    let mut fds: Vec<_> = outbound_listeners.iter().map(|l| (ListenerRole::Outbound, l.as_raw_fd())).collect();
    fds.push((ListenerRole::Admin, admin_listener.as_raw_fd()));
    fds.extend(inbound_listener.as_ref().map(|l| (ListenerRole::Inbound, l.as_raw_fd())));
    fds.extend(capture_listener.as_ref().map(|l| (ListenerRole::Capture, l.as_raw_fd())));
    fds.extend(debug_listener.as_ref().map(|l| (ListenerRole::Debug, l.as_raw_fd())));
    let outbound_addrs = outbound_listeners.iter().map(TcpListener::local_addr).collect::<std::io::Result<Vec<_>>>()?;
    let listening = Listening {
        outbound: *outbound_addrs
            .first()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no outbound listener"))?,
        outbound_ports: outbound_addrs,
        admin: admin_listener.local_addr()?,
        inbound: inbound_listener.as_ref().map(TcpListener::local_addr).transpose()?,
        capture: capture_listener.as_ref().map(TcpListener::local_addr).transpose()?,
        debug: debug_listener.as_ref().map(TcpListener::local_addr).transpose()?,
        fds,
    };
    if inbound_listener.is_some() || capture_listener.is_some() {
        let inbound = Arc::new(
            crate::servers::inbound::Inbound::new(proxy.store.clone(), proxy.metrics.clone(), settings.outbound.limits)
                .with_detect_timeout(settings.outbound.detect_timeout)
                .with_drain(proxy.drain.clone()),
        );
        // Every applied config is a chance that open streams are no longer allowed.
        let (reevaluated, applied) = (inbound.clone(), proxy.config_applied.clone());
        tokio::spawn(async move {
            loop {
                applied.notified().await;
                reevaluated.reevaluate();
            }
        });
        if let Some(listener) = capture_listener {
            let captured = inbound.clone();
            tokio::spawn(async move {
                if let Err(error) = captured.serve_captured(listener).await {
                    tracing::error!(%error, "inbound capture listener failed");
                }
            });
        }
        if let Some(listener) = inbound_listener {
            tokio::spawn(async move {
                if let Err(error) = inbound.serve(listener).await {
                    tracing::error!(%error, "inbound listener failed");
                }
            });
        }
    }
    let outbound = Arc::new(
        Outbound::new(proxy.store.clone(), proxy.metrics.clone(), original_dst, settings.outbound.clone())
            .with_drain(proxy.drain.clone()),
    );
    for listener in outbound_listeners {
        let outbound = outbound.clone();
        tokio::spawn(async move {
            if let Err(error) = outbound.serve(listener).await {
                tracing::error!(%error, "outbound listener failed");
            }
        });
    }
    let admin = Arc::new(crate::servers::admin::Admin::new(proxy.store.clone(), proxy.metrics.clone()));
    let listeners = [
        (Some(admin_listener), crate::servers::admin::Scope::Public),
        (debug_listener, crate::servers::admin::Scope::NodeLocal),
    ];
    for (listener, scope) in listeners {
        let Some(listener) = listener else { continue };
        let (admin, drain) = (admin.clone(), proxy.drain.clone());
        tokio::spawn(async move {
            if let Err(error) = admin.serve(listener, scope, drain).await {
                tracing::error!(%error, ?scope, "admin listener failed");
            }
        });
    }
    Ok(listening)
}

/// Reads a YAML snapshot file now and whenever it changes (polled), applying each version.
/// This is the config source until the controller's stream is used, and for the local mesh.
pub fn watch_config_file(proxy: Arc<Proxy>, path: PathBuf, interval: Duration) {
    tokio::spawn(async move {
        let mut seen: Option<(SystemTime, u64)> = None;
        loop {
            let stamp = std::fs::metadata(&path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
            if stamp.is_some() && stamp != seen {
                seen = stamp;
                match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| serde_norway::from_str::<ConfigSnapshot>(&text).map_err(|e| e.to_string()))
                {
                    Ok(snapshot) => {
                        let _ = proxy.apply(snapshot);
                    }
                    Err(error) => {
                        proxy.metrics.config_updates.get_or_create(&ConfigLabels { result: "rejected" }).inc();
                        tracing::warn!(path = %path.display(), %error, "config file unreadable; keeping the config in force");
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
}

/// Reconciles enrolment on every config change and every `interval`.
pub fn run_enrollment(proxy: Arc<Proxy>, enrollment: Arc<Enrollment>, interval: Duration) {
    tokio::spawn(async move {
        loop {
            let (store, enrollment_now) = (proxy.store.clone(), enrollment.clone());
            match tokio::task::spawn_blocking(move || enrollment_now.reconcile(&store)).await {
                Ok(report) => {
                    proxy.metrics.redirect_enrolled_pods.set(report.enrolled.len() as i64);
                    proxy.metrics.redirect_missing_pods.set(report.missing.len() as i64);
                    tracing::debug!(enrolled = ?report.enrolled, missing = ?report.missing, "enrolment");
                }
                Err(error) => tracing::warn!(%error, "enrolment task failed"),
            }
            tokio::select! {
                _ = proxy.config_applied.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
}

/// Makes `proxy`'s tunnels mutual TLS with certificates for `node`'s workloads in
/// `trust_domain`, signed by `signer` and kept current from now on; returns the certificate
/// manager. Called once, before the proxy serves.
pub fn use_mutual_tls(
    proxy: &Proxy,
    trust_domain: &str,
    node: &str,
    signer: Arc<dyn crate::control::identity::CertificateSigner>,
) -> Result<Arc<crate::control::identity::IdentityManager>, crate::transport::tunnel::AlreadyMutualTls> {
    let manager = Arc::new(crate::control::identity::IdentityManager::new(trust_domain, node, proxy.store.clone()));
    proxy.tunnels().use_mutual_tls(manager.clone())?;
    drop(crate::control::identity::run(proxy.certificate_inputs(), manager.clone(), signer));
    Ok(manager)
}

impl Proxy {
    /// This proxy's tunnel client.
    pub fn tunnels(&self) -> &Arc<crate::transport::tunnel::Tunnels> {
        self.store.tunnels()
    }

    /// What the certificate manager needs of this proxy.
    pub fn certificate_inputs(&self) -> crate::control::identity::CertificateInputs {
        crate::control::identity::CertificateInputs {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            config_applied: self.config_applied.clone(),
        }
    }
}

impl crate::control::config_client::ConfigSink for Proxy {
    fn applied_version(&self) -> u64 {
        self.store.load().map_or(0, |state| state.version)
    }
    fn apply_snapshot(&self, snapshot: ConfigSnapshot) -> Result<u64, String> {
        self.apply(snapshot).map_err(|e| e.to_string())
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
