//! Userspace side of the Nodus redirect: loads the eBPF programs, attaches them to the cgroup that
//! holds a node's pods, pins programs' links and maps under bpffs, and gives the node proxy what it
//! needs: enrol or release pods, find a captured connection's original destination, read counters.
//!
//! Everything is pinned under one directory per node (`/sys/fs/bpf/nodus` in a cluster), so a
//! proxy restart neither stops capture nor loses the original destinations of live connections:
//! [`Redirect::attach`] on an existing pin directory reuses the maps and atomically swaps the
//! programs behind the pinned links (which is also how an upgrade replaces program code).

mod bpf_sys;
mod netns;
mod route_sys;

pub use netns::{current_netns_cookie, netns_cookie_and_ipv4, netns_cookie_of};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, SockMap};
use aya::programs::{CgroupSockAddr, SchedClassifier, SkLookup, SockOps};
use aya::{Ebpf, EbpfLoader};
use bpf_sys::AttachType;
use nodus_redirect_common::{
    Counter, Enrollment, InboundPod, OriginalDst, PeerKey, RedirectConfig, ENROLL_OUTBOUND, INBOUND_CAPTURE_NEW,
    MAP_CAPTURE_LISTENER, MAP_CONFIG, MAP_COUNTERS, MAP_ENROLLED, MAP_INBOUND, MAP_ORIG_BY_PEER, PROG_CONNECT4,
    PROG_CONNECT6, PROG_GETPEERNAME4, PROG_GETPEERNAME6, PROG_SK_LOOKUP, PROG_SOCK_OPS, PROG_TC_INGRESS,
};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The compiled kernel-side object, built by `build.rs`.
static PROGRAMS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodus-redirect.bpf.o"));

/// Why the redirect could not be set up or used. Messages say what to do about it.
#[derive(Debug, Error)]
pub enum RedirectError {
    /// The process lacks the privileges to load eBPF programs.
    #[error("loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): {0}")]
    NotPermitted(String),
    /// bpffs is not mounted where the pins go.
    #[error("{0} is not on a bpf file system; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NoBpffs(PathBuf),
    /// The cgroup to attach to is not a cgroup v2 directory.
    #[error("{0} is not a cgroup v2 directory (the redirect attaches to the cgroup holding the node's pods)")]
    NotACgroup(PathBuf),
    /// The kernel refused a program or attach type (too old, or built without the feature).
    #[error("the kernel refused {what}: {detail} (needs Linux 5.15+ with cgroup BPF, sock_ops and BTF)")]
    KernelFeature {
        /// What was refused.
        what: String,
        /// The kernel's or loader's error text.
        detail: String,
    },
    /// A map operation failed.
    #[error("eBPF map {map}: {detail}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Error text.
        detail: String,
    },
    /// File-system work under the pin directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn classify(what: impl Into<String>, error: impl std::error::Error) -> RedirectError {
    // aya nests the errno deep in its error chain; its text is where EPERM shows.
    let mut detail = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        detail.push_str(": ");
        detail.push_str(&inner.to_string());
        source = inner.source();
    }
    if detail.contains("Operation not permitted") || detail.contains("os error 1)") {
        RedirectError::NotPermitted(detail)
    } else {
        RedirectError::KernelFeature { what: what.into(), detail }
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RedirectError + 'a {
    move |source| RedirectError::Io { action, path: path.to_path_buf(), source }
}

/// Where and how to capture.
#[derive(Clone, Debug)]
pub struct RedirectSpec {
    /// The cgroup v2 directory that holds the node's pods (programs see every process below it).
    pub cgroup: PathBuf,
    /// The pin directory on bpffs for this node (`links/` and `maps/` go below it).
    pub pin_dir: PathBuf,
    /// The node proxy's first outbound listener, as pods reach it.
    pub proxy_addr: SocketAddrV4,
    /// How many consecutive outbound ports, from `proxy_addr`'s, the proxy listens on: each
    /// original destination is sent to one of them (see `RedirectConfig`).
    pub proxy_ports: u16,
    /// The port of the proxy's inbound capture listener (transparent, on every address of the
    /// node); `None` leaves traffic arriving for pods alone.
    pub inbound_port: Option<u16>,
}

/// How each program was brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// No pinned link existed: a new link was created and pinned.
    Created,
    /// A pinned link existed: its program was swapped in place (restart or upgrade).
    Replaced,
}

/// Counters kept by the programs, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectCounters {
    /// Connections redirected to the proxy.
    pub captured: u64,
    /// Connections of enrolled pods left alone (loopback, the proxy itself).
    pub bypassed: u64,
    /// Connections refused because their original destination could not be recorded.
    pub errors: u64,
    /// Connections to enrolled pods diverted to the capture listener on their way in.
    pub inbound_captured: u64,
    /// New connections to enrolled pods dropped because no capture listener was found.
    pub inbound_no_listener: u64,
}

/// The attached redirect. Dropping it leaves capture running (links and maps stay pinned); call
/// [`Redirect::uninstall`] to stop capture and remove the pins.
pub struct Redirect {
    pin_dir: PathBuf,
    outcome: AttachOutcome,
    enrolled: HashMap<MapData, u64, Enrollment>,
    orig_by_peer: HashMap<MapData, PeerKey, OriginalDst>,
    counters: PerCpuArray<MapData, u64>,
    inbound: HashMap<MapData, u32, InboundPod>,
    capture_listener: SockMap<MapData>,
    /// The TC ingress program, for interfaces that appear later (new pods' veths); `None`
    /// without inbound capture.
    tc_ingress: Option<OwnedFd>,
    /// Interfaces (name, index) this process attached or re-adopted the TC program on.
    tc_attached: std::collections::HashSet<(String, u32)>,
    // Keeps the loaded programs (and so their fds) alive for this process's lifetime.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect").field("pin_dir", &self.pin_dir).field("outcome", &self.outcome).finish()
    }
}

const LINKS: [(&str, AttachType); 5] = [
    (PROG_CONNECT4, AttachType::CgroupInet4Connect),
    (PROG_CONNECT6, AttachType::CgroupInet6Connect),
    (PROG_GETPEERNAME4, AttachType::CgroupInet4Getpeername),
    (PROG_GETPEERNAME6, AttachType::CgroupInet6Getpeername),
    (PROG_SOCK_OPS, AttachType::CgroupSockOps),
];

impl Redirect {
    /// Loads the programs, reuses or creates the pinned maps, attaches (or re-adopts) the pinned
    /// links on `spec.cgroup`, and writes the proxy address.
    pub fn attach(spec: &RedirectSpec) -> Result<Self, RedirectError> {
        check_bpffs(&spec.pin_dir)?;
        let cgroup_id = cgroup_id(&spec.cgroup)?;
        let maps_dir = spec.pin_dir.join("maps");
        let links_dir = spec.pin_dir.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        drop_pinned_map_of_other_layout(&maps_dir, MAP_CONFIG, std::mem::size_of::<RedirectConfig>())?;
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(&maps_dir)
            .load(PROGRAMS_OBJECT)
            .map_err(|e| classify("the eBPF object", e))?;
        // The settings first, links after: a program swapped in must never run on a config map
        // that does not say where the proxy is yet (it would let connections pass uncaptured).
        let mut config: Array<MapData, RedirectConfig> = take_map(&mut ebpf, MAP_CONFIG)?;
        let value = RedirectConfig {
            proxy_ip4: u32::from_ne_bytes(spec.proxy_addr.ip().octets()),
            proxy_port: spec.proxy_addr.port().to_be(),
            inbound_port: spec.inbound_port.unwrap_or(0).to_be(),
            proxy_port_count: spec.proxy_ports.max(1),
            _pad: 0,
        };
        config.set(0, value, 0).map_err(|e| RedirectError::Map { map: MAP_CONFIG, detail: e.to_string() })?;
        let cgroup = std::fs::File::open(&spec.cgroup).map_err(io_err("opening", &spec.cgroup))?;

        let mut outcome = AttachOutcome::Created;
        for (name, attach_type) in LINKS {
            let program = ebpf.program_mut(name).ok_or_else(|| RedirectError::KernelFeature {
                what: format!("program {name}"),
                detail: "missing from the object".into(),
            })?;
            let program_fd = if attach_type == AttachType::CgroupSockOps {
                let program: &mut SockOps = program.try_into().map_err(|e| classify(name, e))?;
                program.load().map_err(|e| classify(name, e))?;
                program.fd().map_err(|e| classify(name, e))?.try_clone().map_err(|e| classify(name, e))?
            } else {
                let program: &mut CgroupSockAddr = program.try_into().map_err(|e| classify(name, e))?;
                program.load().map_err(|e| classify(name, e))?;
                program.fd().map_err(|e| classify(name, e))?.try_clone().map_err(|e| classify(name, e))?
            };
            let link_path = links_dir.join(name);
            let replaced = attach_or_replace(&link_path, program_fd.as_fd(), cgroup.as_fd(), attach_type, cgroup_id)
                .map_err(|e| classify(format!("attaching {name} to {}", spec.cgroup.display()), e))?;
            if replaced {
                outcome = AttachOutcome::Replaced;
            }
        }

        let tc_ingress = match spec.inbound_port {
            Some(_) => {
                let lookup: &mut SkLookup = ebpf
                    .program_mut(PROG_SK_LOOKUP)
                    .ok_or_else(|| RedirectError::KernelFeature {
                        what: format!("program {PROG_SK_LOOKUP}"),
                        detail: "missing from the object".into(),
                    })?
                    .try_into()
                    .map_err(|e| classify(PROG_SK_LOOKUP, e))?;
                lookup.load().map_err(|e| classify(PROG_SK_LOOKUP, e))?;
                let lookup_fd = lookup.fd().map_err(|e| classify(PROG_SK_LOOKUP, e))?;
                attach_sk_lookup(&links_dir.join(PROG_SK_LOOKUP), lookup_fd.as_fd())
                    .map_err(|e| classify(format!("attaching {PROG_SK_LOOKUP} to this network namespace"), e))?;
                let program: &mut SchedClassifier = ebpf
                    .program_mut(PROG_TC_INGRESS)
                    .ok_or_else(|| RedirectError::KernelFeature {
                        what: format!("program {PROG_TC_INGRESS}"),
                        detail: "missing from the object".into(),
                    })?
                    .try_into()
                    .map_err(|e| classify(PROG_TC_INGRESS, e))?;
                program.load().map_err(|e| classify(PROG_TC_INGRESS, e))?;
                let fd = program.fd().map_err(|e| classify(PROG_TC_INGRESS, e))?;
                Some(fd.as_fd().try_clone_to_owned().map_err(|e| classify(PROG_TC_INGRESS, e))?)
            }
            None => None,
        };

        let mut redirect = Self {
            pin_dir: spec.pin_dir.clone(),
            outcome,
            enrolled: take_map(&mut ebpf, MAP_ENROLLED)?,
            orig_by_peer: take_map(&mut ebpf, MAP_ORIG_BY_PEER)?,
            counters: take_map(&mut ebpf, MAP_COUNTERS)?,
            inbound: take_map(&mut ebpf, MAP_INBOUND)?,
            capture_listener: take_map(&mut ebpf, MAP_CAPTURE_LISTENER)?,
            tc_ingress,
            tc_attached: std::collections::HashSet::new(),
            _ebpf: ebpf,
        };
        if redirect.tc_ingress.is_some() {
            route_sys::ensure_capture_routing().map_err(|e| classify("policy routing for inbound capture", e))?;
            redirect.attach_interfaces()?;
        }
        Ok(redirect)
    }

    /// Attaches (or re-adopts) the TC ingress program on every interface of this network
    /// namespace but loopback, pinning each link as `links/tc-<interface>`. Idempotent; call it
    /// again when interfaces appear (a new pod's veth). Returns the interfaces newly attached.
    pub fn attach_interfaces(&mut self) -> Result<Vec<String>, RedirectError> {
        let Some(program) = &self.tc_ingress else { return Ok(Vec::new()) };
        let links_dir = self.pin_dir.join("links");
        let interfaces = nix::net::if_::if_nameindex().map_err(|e| RedirectError::Io {
            action: "listing interfaces of",
            path: PathBuf::from("this network namespace"),
            source: e.into(),
        })?;
        let mut attached = Vec::new();
        for interface in interfaces.iter() {
            let name = interface.name().to_string_lossy().into_owned();
            if name == "lo" || self.tc_attached.contains(&(name.clone(), interface.index())) {
                continue;
            }
            let link_path = links_dir.join(format!("tc-{name}"));
            match attach_tcx(&link_path, program.as_fd(), interface.index()) {
                Ok(outcome) => {
                    self.tc_attached.insert((name.clone(), interface.index()));
                    if matches!(outcome, TcxOutcome::Attached) {
                        attached.push(name);
                    }
                }
                // An interface going away between listing and attaching is not an error.
                Err(error) if error.raw_os_error() == Some(libc::ENODEV) => {}
                Err(error) => return Err(classify(format!("attaching {PROG_TC_INGRESS} to {name}"), error)),
            }
        }
        Ok(attached)
    }

    /// Registers the proxy's capture listener (a transparent TCP listener on
    /// [`RedirectSpec::inbound_port`]): connections captured on their way in to pods are handed
    /// to it. Until one is registered they are refused. A successor that took the listener over
    /// registers the same socket again.
    pub fn set_capture_listener(&mut self, listener: &impl std::os::fd::AsRawFd) -> Result<(), RedirectError> {
        self.capture_listener
            .set(0, listener, 0)
            .map_err(|e| RedirectError::Map { map: MAP_CAPTURE_LISTENER, detail: e.to_string() })
    }

    /// Whether inbound capture was set up ([`RedirectSpec::inbound_port`]).
    pub fn captures_inbound(&self) -> bool {
        self.tc_ingress.is_some()
    }

    /// Captures new connections to `ip` (an enrolled pod's address) on their way in, or, with
    /// `capture_new` false, delivers to the proxy only the connections it already holds (a pod
    /// just released: they end normally, new ones go straight to the pod).
    pub fn set_inbound(&mut self, ip: Ipv4Addr, capture_new: bool) -> Result<(), RedirectError> {
        let flags = if capture_new { INBOUND_CAPTURE_NEW } else { 0 };
        self.inbound
            .insert(u32::from_ne_bytes(ip.octets()), InboundPod { flags }, 0)
            .map_err(|e| RedirectError::Map { map: MAP_INBOUND, detail: e.to_string() })
    }

    /// Forgets `ip` for inbound capture altogether (its pod is gone).
    pub fn remove_inbound(&mut self, ip: Ipv4Addr) -> Result<(), RedirectError> {
        match self.inbound.remove(&u32::from_ne_bytes(ip.octets())) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(RedirectError::Map { map: MAP_INBOUND, detail: e.to_string() }),
        }
    }

    /// The addresses in the inbound map, each with whether new connections are captured.
    pub fn inbound(&self) -> Result<Vec<(Ipv4Addr, bool)>, RedirectError> {
        self.inbound
            .iter()
            .map(|entry| {
                entry.map(|(ip, pod)| (Ipv4Addr::from(ip.to_ne_bytes()), pod.flags & INBOUND_CAPTURE_NEW != 0))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RedirectError::Map { map: MAP_INBOUND, detail: e.to_string() })
    }

    /// Whether [`Redirect::attach`] created the links or re-adopted pinned ones.
    pub fn outcome(&self) -> AttachOutcome {
        self.outcome
    }

    /// Captures the outbound TCP connections of the pod whose network namespace has `netns_cookie`,
    /// from its next connect() on.
    pub fn enroll(&mut self, netns_cookie: u64) -> Result<(), RedirectError> {
        self.enrolled
            .insert(netns_cookie, Enrollment { flags: ENROLL_OUTBOUND }, 0)
            .map_err(|e| RedirectError::Map { map: MAP_ENROLLED, detail: e.to_string() })
    }

    /// Stops capturing the pod's new connections; connections already made are not touched.
    pub fn release(&mut self, netns_cookie: u64) -> Result<(), RedirectError> {
        match self.enrolled.remove(&netns_cookie) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(RedirectError::Map { map: MAP_ENROLLED, detail: e.to_string() }),
        }
    }

    /// The cookies of every enrolled pod namespace.
    pub fn enrolled(&self) -> Result<Vec<u64>, RedirectError> {
        self.enrolled
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RedirectError::Map { map: MAP_ENROLLED, detail: e.to_string() })
    }

    /// The destination a captured client asked for, found by the client's address (the peer
    /// address of the proxy's accepted socket) and the outbound port it reached (the accepted
    /// socket's local port). `None` if the connection was not captured.
    pub fn original_dst(&self, peer: SocketAddrV4, proxy_port: u16) -> Result<Option<SocketAddrV4>, RedirectError> {
        lookup_original(&self.orig_by_peer, peer, proxy_port)
    }

    /// A separate handle on the original-destination map, for the proxy's accept path: it needs
    /// no lock shared with enrolment.
    pub fn original_dst_map(&self) -> Result<OriginalDstMap, RedirectError> {
        let path = self.pin_dir.join("maps").join(MAP_ORIG_BY_PEER);
        let data = MapData::from_pin(&path)
            .map_err(|e| RedirectError::Map { map: MAP_ORIG_BY_PEER, detail: e.to_string() })?;
        let map = HashMap::try_from(aya::maps::Map::LruHashMap(data))
            .map_err(|e| RedirectError::Map { map: MAP_ORIG_BY_PEER, detail: e.to_string() })?;
        Ok(OriginalDstMap { map })
    }

    /// The programs' counters, summed over CPUs.
    pub fn counters(&self) -> Result<RedirectCounters, RedirectError> {
        let read = |counter: Counter| -> Result<u64, RedirectError> {
            let per_cpu = self
                .counters
                .get(&(counter as u32), 0)
                .map_err(|e| RedirectError::Map { map: MAP_COUNTERS, detail: e.to_string() })?;
            Ok(per_cpu.iter().sum())
        };
        Ok(RedirectCounters {
            captured: read(Counter::Captured)?,
            bypassed: read(Counter::Bypassed)?,
            errors: read(Counter::Errors)?,
            inbound_captured: read(Counter::InboundCaptured)?,
            inbound_no_listener: read(Counter::InboundNoListener)?,
        })
    }

    /// Detaches the programs and removes every pin: capture stops for good.
    pub fn uninstall(self) -> Result<(), RedirectError> {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        std::fs::remove_dir_all(&pin_dir).map_err(io_err("removing", &pin_dir))
    }
}

/// Read access to captured connections' original destinations.
pub struct OriginalDstMap {
    map: HashMap<MapData, PeerKey, OriginalDst>,
}

impl std::fmt::Debug for OriginalDstMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OriginalDstMap")
    }
}

impl OriginalDstMap {
    /// See [`Redirect::original_dst`].
    pub fn get(&self, peer: SocketAddrV4, proxy_port: u16) -> Result<Option<SocketAddrV4>, RedirectError> {
        lookup_original(&self.map, peer, proxy_port)
    }
}

fn lookup_original(
    map: &HashMap<MapData, PeerKey, OriginalDst>,
    peer: SocketAddrV4,
    proxy_port: u16,
) -> Result<Option<SocketAddrV4>, RedirectError> {
    let key = PeerKey::new(peer.ip().octets(), peer.port(), proxy_port);
    match map.get(&key, 0) {
        Ok(original) => Ok(Some(SocketAddrV4::new(Ipv4Addr::from(original.octets()), original.host_port()))),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(RedirectError::Map { map: MAP_ORIG_BY_PEER, detail: e.to_string() }),
    }
}

/// Removes the pin of map `name` if its values are not `value_size` bytes (pinned by an older
/// version with another layout), so that loading makes it anew instead of failing. Only for maps
/// whose whole content [`Redirect::attach`] writes again.
fn drop_pinned_map_of_other_layout(
    maps_dir: &Path,
    name: &'static str,
    value_size: usize,
) -> Result<(), RedirectError> {
    let path = maps_dir.join(name);
    if !path.exists() {
        return Ok(());
    }
    let pinned = MapData::from_pin(&path).map_err(|e| RedirectError::Map { map: name, detail: e.to_string() })?;
    let size = pinned.info().map(|info| info.value_size() as usize).unwrap_or(value_size);
    if size != value_size {
        tracing::info!(map = name, pinned = size, now = value_size, "pinned map has an older layout; making it anew");
        std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
    }
    Ok(())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, RedirectError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(RedirectError::Map { map: name, detail: "missing from the object".into() })?;
    T::try_from(map).map_err(|e| RedirectError::Map { map: name, detail: e.to_string() })
}

/// Swaps the program behind the pinned link at `link_path` if that link is still attached to
/// this cgroup; otherwise creates and pins a new link. Returns whether it replaced.
fn attach_or_replace(
    link_path: &Path,
    program: std::os::fd::BorrowedFd<'_>,
    cgroup: std::os::fd::BorrowedFd<'_>,
    attach_type: AttachType,
    cgroup_id: u64,
) -> io::Result<bool> {
    if link_path.exists() {
        let link = bpf_sys::obj_get(link_path)?;
        if bpf_sys::link_cgroup_id(link.as_fd())? == cgroup_id {
            bpf_sys::link_update(link.as_fd(), program)?;
            return Ok(true);
        }
        // Pinned for another (or a deleted) cgroup: replace the pin.
        tracing::info!(path = %link_path.display(), "pinned link belongs to another cgroup; re-creating it");
        std::fs::remove_file(link_path)?;
    }
    let link = bpf_sys::link_create(program, cgroup, attach_type)?;
    bpf_sys::obj_pin(link.as_fd(), link_path)?;
    Ok(false)
}

/// What [`attach_tcx`] did.
enum TcxOutcome {
    /// A pinned link was already attached to this interface: its program was swapped in place.
    AlreadyAttached,
    /// A new link was created and pinned.
    Attached,
}

/// Like [`attach_or_replace`], for a TCX ingress link on interface `ifindex`.
fn attach_tcx(link_path: &Path, program: std::os::fd::BorrowedFd<'_>, ifindex: u32) -> io::Result<TcxOutcome> {
    if link_path.exists() {
        let link = bpf_sys::obj_get(link_path)?;
        if bpf_sys::link_tcx_ifindex(link.as_fd())? == ifindex {
            bpf_sys::link_update(link.as_fd(), program)?;
            return Ok(TcxOutcome::AlreadyAttached);
        }
        // The interface was deleted (and its name reused): the old link is defunct.
        std::fs::remove_file(link_path)?;
    }
    let link = bpf_sys::link_create_tcx(program, ifindex)?;
    bpf_sys::obj_pin(link.as_fd(), link_path)?;
    Ok(TcxOutcome::Attached)
}

/// Like [`attach_or_replace`], for the `sk_lookup` link on the calling thread's network namespace.
fn attach_sk_lookup(link_path: &Path, program: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let netns = std::fs::File::open("/proc/thread-self/ns/net")?;
    let ino = netns.metadata()?.ino();
    if link_path.exists() {
        let link = bpf_sys::obj_get(link_path)?;
        if u64::from(bpf_sys::link_netns_ino(link.as_fd())?) == ino {
            return bpf_sys::link_update(link.as_fd(), program);
        }
        std::fs::remove_file(link_path)?;
    }
    let link = bpf_sys::link_create(program, netns.as_fd(), AttachType::SkLookup)?;
    bpf_sys::obj_pin(link.as_fd(), link_path)
}

/// On cgroup v2 a cgroup's id is its directory's inode number.
fn cgroup_id(path: &Path) -> Result<u64, RedirectError> {
    let meta = std::fs::metadata(path).map_err(io_err("reading", path))?;
    if !path.join("cgroup.procs").exists() || !meta.is_dir() {
        return Err(RedirectError::NotACgroup(path.to_path_buf()));
    }
    Ok(meta.ino())
}

/// BPF_FS_MAGIC from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn check_bpffs(pin_dir: &Path) -> Result<(), RedirectError> {
    // The pin directory may not exist yet: check the closest existing ancestor.
    let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let stat = nix::sys::statfs::statfs(existing).map_err(|e| RedirectError::Io {
        action: "statfs",
        path: existing.to_path_buf(),
        source: e.into(),
    })?;
    if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(RedirectError::NoBpffs(pin_dir.to_path_buf()));
    }
    Ok(())
}
