//! Enrolment: which pods of this node the eBPF redirect captures.
//!
//! The config names the node's workloads, their IPs, and whether their namespace is in the mesh
//! (`nodus.dev/mesh=enabled`). The node's pod network namespaces are found in a netns directory
//! (`/run/netns`, where containerd and CRI-O bind-mount them) by the addresses inside them; their
//! cookies are what the redirect keys on. Reconciled on every config change and periodically,
//! for pods whose namespace appears after their config.

use crate::state::ConfigStore;
use nodus_redirect::{netns_cookie_and_ipv4, Redirect};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where to look for pod network namespaces.
#[derive(Clone, Debug)]
pub struct NetnsDiscovery {
    /// Directory of namespace bind mounts.
    pub dir: PathBuf,
    /// Only names starting with this (the mesh harness scopes a node to its own pods with it).
    pub prefix: String,
}

/// Keeps the redirect's enrolled set equal to the mesh pods of this node.
pub struct Enrollment {
    node: String,
    discovery: NetnsDiscovery,
    redirect: Arc<Mutex<Redirect>>,
}

/// What one reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnrollmentReport {
    /// Pods (by IP) whose outbound connections are captured now.
    pub enrolled: Vec<Ipv4Addr>,
    /// Pods (by IP) whose new inbound connections are captured now (all mesh pods of the node,
    /// whether or not their network namespace was found).
    pub inbound: Vec<Ipv4Addr>,
    /// Mesh pods of this node whose namespace was not found yet.
    pub missing: Vec<Ipv4Addr>,
}

impl Enrollment {
    /// Enrolment for `node`.
    pub fn new(node: String, discovery: NetnsDiscovery, redirect: Arc<Mutex<Redirect>>) -> Self {
        Self { node, discovery, redirect }
    }

    fn scan(&self) -> HashMap<Ipv4Addr, u64> {
        let mut found = HashMap::new();
        let Ok(entries) = std::fs::read_dir(&self.discovery.dir) else { return found };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(&self.discovery.prefix) {
                continue;
            }
            match netns_cookie_and_ipv4(&entry.path()) {
                Ok((cookie, ips)) => found.extend(ips.into_iter().map(|ip| (ip, cookie))),
                Err(error) => tracing::debug!(netns = ?name, %error, "cannot inspect network namespace"),
            }
        }
        found
    }

    /// Enrols this node's mesh pods and releases the rest. Blocking (enters namespaces).
    pub fn reconcile(&self, store: &ConfigStore) -> EnrollmentReport {
        let Some(state) = store.load() else { return EnrollmentReport::default() };
        let wanted: HashSet<Ipv4Addr> = state
            .snapshot
            .workloads
            .iter()
            .filter(|w| w.node == self.node && w.mesh_enabled)
            .flat_map(|w| w.ips.iter())
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let node_ips: HashSet<Ipv4Addr> = state
            .snapshot
            .workloads
            .iter()
            .filter(|w| w.node == self.node)
            .flat_map(|w| w.ips.iter())
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let found = self.scan();
        let wanted_cookies: HashSet<u64> = wanted.iter().filter_map(|ip| found.get(ip)).copied().collect();
        let mut report = EnrollmentReport::default();
        let mut redirect = self.redirect.lock().unwrap_or_else(|p| p.into_inner());
        for cookie in redirect.enrolled().unwrap_or_default() {
            if !wanted_cookies.contains(&cookie) {
                if let Err(error) = redirect.release(cookie) {
                    tracing::warn!(%error, "releasing a pod failed");
                }
            }
        }
        for ip in &wanted {
            match found.get(ip) {
                Some(cookie) => match redirect.enroll(*cookie) {
                    Ok(()) => report.enrolled.push(*ip),
                    Err(error) => tracing::warn!(pod = %ip, %error, "enrolling a pod failed"),
                },
                None => report.missing.push(*ip),
            }
        }
        // Inbound: mesh pods by address. A pod that left the mesh stays in the map without
        // capture of new connections while it exists, so the connections the proxy holds for it
        // end normally; gone pods are forgotten.
        if redirect.captures_inbound() {
            if let Err(error) = redirect.attach_interfaces() {
                tracing::warn!(%error, "attaching inbound capture to new interfaces failed");
            }
            for (ip, _) in redirect.inbound().unwrap_or_default() {
                let result = if !node_ips.contains(&ip) {
                    redirect.remove_inbound(ip)
                } else if !wanted.contains(&ip) {
                    redirect.set_inbound(ip, false)
                } else {
                    Ok(())
                };
                if let Err(error) = result {
                    tracing::warn!(pod = %ip, %error, "updating inbound capture failed");
                }
            }
            for ip in &wanted {
                match redirect.set_inbound(*ip, true) {
                    Ok(()) => report.inbound.push(*ip),
                    Err(error) => tracing::warn!(pod = %ip, %error, "enabling inbound capture failed"),
                }
            }
        }
        report.enrolled.sort();
        report.inbound.sort();
        report.missing.sort();
        report
    }
}

/// What enrolling one pod at once said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodEnrollment {
    /// Its namespace is in the mesh: its connections are captured from now on.
    Enrolled,
    /// Its namespace is not in the mesh: left alone.
    NotInMesh,
    /// The config in force does not list a pod of this node at that address (yet).
    Unknown,
}

/// Why a pod could not be enrolled.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Its network namespace could not be read.
    #[error("reading network namespace {path}: {source}")]
    Netns {
        /// The namespace file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The namespace does not hold the pod's address.
    #[error("network namespace {path} does not hold {ip}")]
    NotItsAddress {
        /// The namespace file.
        path: std::path::PathBuf,
        /// The pod's address.
        ip: Ipv4Addr,
    },
    /// The eBPF maps refused the update.
    #[error("updating the redirect: {0}")]
    Redirect(#[from] nodus_redirect::RedirectError),
}

impl Enrollment {
    /// Enrols the pod at `ip`, whose network namespace is `netns`, at once: what a CNI plugin's
    /// ADD asks for before the pod's first process starts (see [`super::cni`]). The config
    /// decides, as for the periodic pass; the pass keeps the pod enrolled afterwards.
    pub fn enroll_pod(
        &self,
        store: &ConfigStore,
        ip: Ipv4Addr,
        netns: &std::path::Path,
    ) -> Result<PodEnrollment, EnrollError> {
        let Some(state) = store.load() else { return Ok(PodEnrollment::Unknown) };
        let Some(workload) =
            state.snapshot.workloads.iter().find(|w| w.node == self.node && w.ips.contains(&IpAddr::V4(ip)))
        else {
            return Ok(PodEnrollment::Unknown);
        };
        if !workload.mesh_enabled {
            return Ok(PodEnrollment::NotInMesh);
        }
        let (cookie, addresses) =
            netns_cookie_and_ipv4(netns).map_err(|source| EnrollError::Netns { path: netns.to_path_buf(), source })?;
        if !addresses.contains(&ip) {
            return Err(EnrollError::NotItsAddress { path: netns.to_path_buf(), ip });
        }
        let mut redirect = self.redirect.lock().unwrap_or_else(|p| p.into_inner());
        redirect.enroll(cookie)?;
        if redirect.captures_inbound() {
            redirect.attach_interfaces()?;
            redirect.set_inbound(ip, true)?;
        }
        Ok(PodEnrollment::Enrolled)
    }
}

/// Reads one counter out of the redirect's counters.
pub type ReadCounter = fn(&nodus_redirect::RedirectCounters) -> u64;

/// The counters the redirect's eBPF programs keep, as exported: name (without `nodus_` and
/// `_total`), help, and how to read it.
pub const REDIRECT_METRICS: [(&str, &str, ReadCounter); 5] = [
    ("redirect_captured", "Pod connections redirected to this proxy by eBPF", |c| c.captured),
    ("redirect_bypassed", "Enrolled pods' connections left alone (loopback, the proxy itself)", |c| c.bypassed),
    ("redirect_errors", "Connections refused because their original destination could not be kept", |c| c.errors),
    (
        "redirect_inbound_captured",
        "Connections to enrolled pods diverted to this proxy's capture listener on their way in",
        |c| c.inbound_captured,
    ),
    (
        "redirect_inbound_no_listener",
        "New connections to enrolled pods dropped because no capture listener was found",
        |c| c.inbound_no_listener,
    ),
];

/// Exports the redirect programs' counters (read from their per-CPU map at scrape time).
#[derive(Debug)]
pub struct RedirectCollector {
    redirect: Arc<Mutex<Redirect>>,
}

impl RedirectCollector {
    /// Reads counters from `redirect`.
    pub fn new(redirect: Arc<Mutex<Redirect>>) -> Self {
        Self { redirect }
    }
}

impl prometheus_client::collector::Collector for RedirectCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let counters = match self.redirect.lock().unwrap_or_else(|p| p.into_inner()).counters() {
            Ok(counters) => counters,
            Err(error) => {
                tracing::warn!(%error, "reading redirect counters");
                return Ok(());
            }
        };
        for (name, help, value) in REDIRECT_METRICS {
            let value = value(&counters);
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
