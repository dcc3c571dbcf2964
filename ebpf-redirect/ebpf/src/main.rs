//! Kernel side of the Nodus redirect.
//!
//! Attached to the cgroup that holds a node's pods:
//! - `cgroup/connect4`: a TCP connect() from an enrolled pod (its network namespace is in
//!   `NODUS_ENROLLED`) is rewritten to the node proxy's outbound listener; the destination the
//!   pod asked for is kept under the socket's cookie.
//! - `sockops`: once that connection is established its local address is known; the original
//!   destination is indexed by it too, which is the peer address the proxy sees on accept(). The
//!   entries are removed when the socket closes.
//! - `cgroup/getpeername4`: the pod's application still sees the destination it dialled.
//! - `cgroup/connect6` and `cgroup/getpeername6`: the same for IPv6 sockets dialling IPv4-mapped
//!   addresses (`::ffff:a.b.c.d`), which dual-stack clients such as gRPC's C core use. Native
//!   IPv6 destinations are not captured yet.
//!
//! The proxy's own sockets live in the node's namespace, which is never enrolled, so its
//! upstream connections are not captured again.
//!
//! Inbound, in the node's network namespace:
//! - `nodus_tc_ingress` (TCX ingress of every interface): a new TCP connection (SYN) to an
//!   enrolled pod's address, and every packet of a connection the proxy holds, is marked so that
//!   policy routing delivers it locally (the pod's address is not the node's). The proxy's own
//!   connections to pods are locally generated and never pass ingress: not captured again.
//! - `nodus_sk_lookup` (`sk_lookup` of the namespace): when the kernel looks for a listener for
//!   such a connection, it gets the proxy's capture listener. Going through the kernel's own
//!   lookup (rather than assigning the socket at TC) keeps its TIME_WAIT handling: a SYN that
//!   reuses the 4-tuple of a connection the proxy closed first retires that TIME_WAIT socket.
#![no_std]
#![no_main]

use aya_ebpf::bindings::{
    BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_ANY,
};
use aya_ebpf::bindings::{bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1};
use aya_ebpf::helpers::gen::{bpf_sk_release, bpf_skc_lookup_tcp};
use aya_ebpf::helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::macros::{cgroup_sock_addr, classifier, map, sk_lookup, sock_ops};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, SockMap};
use aya_ebpf::programs::{SkLookupContext, SockAddrContext, SockOpsContext, TcContext};
use aya_ebpf::EbpfContext;
use nodus_redirect_common::{
    outbound_port_index, Counter, Enrollment, InboundPod, OriginalDst, PeerKey, RedirectConfig, CAPTURE_MARK,
    CAPTURE_MARK_MASK,
    COUNTER_COUNT, ENROLL_OUTBOUND, INBOUND_CAPTURE_NEW, MAX_ENROLLED_PODS, MAX_TRACKED_CONNECTIONS,
};

const SOCK_STREAM: u32 = 1;
const AF_INET6: u32 = 10;
/// `0000:ffff` in network byte order, as the third word of an IPv4-mapped IPv6 address.
const V4_MAPPED_WORD: u32 = 0xffff_u32.to_be();
const TCP_CLOSE: u32 = 7;
/// connect() may proceed.
const ALLOW: i32 = 1;
/// connect() fails with EPERM.
const REFUSE: i32 = 0;

#[map]
static NODUS_ENROLLED: HashMap<u64, Enrollment> = HashMap::pinned(MAX_ENROLLED_PODS, 0);

#[map]
static NODUS_CONFIG: Array<RedirectConfig> = Array::pinned(1, 0);

#[map]
static NODUS_ORIG_CK: LruHashMap<u64, OriginalDst> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map]
static NODUS_ORIG_PEER: LruHashMap<PeerKey, OriginalDst> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map]
static NODUS_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

#[map]
static NODUS_INBOUND: HashMap<u32, InboundPod> = HashMap::pinned(MAX_ENROLLED_PODS, 0);

#[map]
static mut NODUS_CAPTURE: SockMap = SockMap::pinned(1, 0);

fn count(counter: Counter) {
    if let Some(value) = NODUS_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *value += 1 };
    }
}

#[cgroup_sock_addr(connect4)]
pub fn nodus_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    unsafe { try_connect4(&ctx) }
}

/// What connect4/connect6 decided for a destination.
enum Decision {
    /// Leave the connection alone.
    Pass,
    /// Refuse connect() (the original destination could not be kept).
    Refuse,
    /// Rewrite the destination to the proxy's outbound listener at this address and port
    /// (network byte order).
    Redirect(u32, u16),
}

/// The shared capture logic, for an IPv4 destination (plain or IPv4-mapped).
unsafe fn decide(ctx: &SockAddrContext, dst_ip4: u32, dst_port: u16) -> Decision {
    let netns = bpf_get_netns_cookie(ctx.as_ptr());
    match NODUS_ENROLLED.get(&netns) {
        Some(enrollment) if enrollment.flags & ENROLL_OUTBOUND != 0 => {}
        _ => return Decision::Pass,
    }
    let Some(config) = NODUS_CONFIG.get(0) else {
        return Decision::Pass;
    };
    if config.proxy_ip4 == 0 {
        return Decision::Pass;
    }
    // First octet in network order is the lowest byte of the native little-endian u32.
    let is_loopback = (dst_ip4 & 0xff) == 127;
    let first = u16::from_be(config.proxy_port);
    let host_port = u16::from_be(dst_port);
    let to_proxy = dst_ip4 == config.proxy_ip4
        && host_port >= first
        && u32::from(host_port) < u32::from(first) + u32::from(config.proxy_port_count.max(1));
    if is_loopback || to_proxy {
        count(Counter::Bypassed);
        return Decision::Pass;
    }
    let cookie = bpf_get_socket_cookie(ctx.as_ptr());
    let original = OriginalDst { ip4: dst_ip4, port: dst_port, _pad: 0 };
    if NODUS_ORIG_CK.insert(&cookie, &original, BPF_ANY as u64).is_err() {
        // Without the original destination the proxy could not route or enforce policy: refuse
        // rather than let the connection bypass the mesh.
        count(Counter::Errors);
        return Decision::Refuse;
    }
    count(Counter::Captured);
    let index = outbound_port_index(u32::from_be(dst_ip4), host_port, config.proxy_port_count);
    Decision::Redirect(config.proxy_ip4, first.wrapping_add(index).to_be())
}

#[cgroup_sock_addr(connect6)]
pub fn nodus_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    unsafe {
        let sock_addr = ctx.sock_addr;
        if (*sock_addr).type_ != SOCK_STREAM {
            return ALLOW;
        }
        let ip6 = (*sock_addr).user_ip6;
        if ip6[0] != 0 || ip6[1] != 0 || ip6[2] != V4_MAPPED_WORD {
            return ALLOW;
        }
        match decide(&ctx, ip6[3], (*sock_addr).user_port as u16) {
            Decision::Pass => ALLOW,
            Decision::Refuse => REFUSE,
            Decision::Redirect(ip4, port) => {
                (*sock_addr).user_ip6[3] = ip4;
                (*sock_addr).user_port = port as u32;
                ALLOW
            }
        }
    }
}

#[cgroup_sock_addr(getpeername6)]
pub fn nodus_getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in nodus_connect6.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.as_ptr());
        if let Some(original) = NODUS_ORIG_CK.get(&cookie) {
            (*ctx.sock_addr).user_ip6 = [0, 0, V4_MAPPED_WORD, original.ip4];
            (*ctx.sock_addr).user_port = original.port as u32;
        }
    }
    ALLOW
}

unsafe fn try_connect4(ctx: &SockAddrContext) -> i32 {
    let sock_addr = ctx.sock_addr;
    if (*sock_addr).type_ != SOCK_STREAM {
        return ALLOW;
    }
    match decide(ctx, (*sock_addr).user_ip4, (*sock_addr).user_port as u16) {
        Decision::Pass => ALLOW,
        Decision::Refuse => REFUSE,
        Decision::Redirect(ip4, port) => {
            (*sock_addr).user_ip4 = ip4;
            (*sock_addr).user_port = port as u32;
            ALLOW
        }
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn nodus_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in nodus_connect4.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.as_ptr());
        if let Some(original) = NODUS_ORIG_CK.get(&cookie) {
            (*ctx.sock_addr).user_ip4 = original.ip4;
            (*ctx.sock_addr).user_port = original.port as u32;
        }
    }
    ALLOW
}

#[sock_ops]
pub fn nodus_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    0
}

fn peer_key(ctx: &SockOpsContext) -> PeerKey {
    // An IPv6 socket connected to an IPv4-mapped address reaches the proxy's IPv4 listener
    // from the IPv4 part of its local address.
    // Both fields are read with fixed offsets before choosing: the verifier rejects a context
    // load whose offset the compiler computed at run time.
    // SAFETY: ctx.ops is the kernel's valid bpf_sock_ops for this program run.
    let (v4, v6) = unsafe {
        (core::ptr::read_volatile(&(*ctx.ops).local_ip4), core::ptr::read_volatile(&(*ctx.ops).local_ip6[3]))
    };
    let ip4 = if ctx.family() == AF_INET6 { v6 } else { v4 };
    // local_port is in host byte order in bpf_sock_ops; remote_port in network byte order, in
    // the upper 16 bits on little-endian machines (the kernel shifts it there) and the lower on
    // others: a port is never 0, so the half that is not 0 holds it.
    let remote = ctx.remote_port();
    let proxy_port = if remote >> 16 != 0 { (remote >> 16) as u16 } else { remote as u16 };
    PeerKey { ip4, port: (ctx.local_port() as u16).to_be(), proxy_port }
}

fn on_established(ctx: &SockOpsContext) {
    // SAFETY: helper called with the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before any map update.
    let Some(original) = (unsafe { NODUS_ORIG_CK.get(&cookie) }).copied() else {
        return;
    };
    if NODUS_ORIG_PEER.insert(&peer_key(ctx), &original, BPF_ANY as u64).is_err() {
        count(Counter::Errors);
        return;
    }
    // Ask for the state callback so the entries go away with the socket.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

fn on_close(ctx: &SockOpsContext) {
    // SAFETY: helper called with the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = NODUS_ORIG_CK.remove(&cookie);
    let _ = NODUS_ORIG_PEER.remove(&peer_key(ctx));
}

/// TCX verdicts: let the next program (and then the stack) have the packet, end here, drop.
const TCX_NEXT: i32 = -1;
const TCX_PASS: i32 = 0;
const TCX_DROP: i32 = 2;
const ETH_HEADER_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const TCP_TIME_WAIT: u32 = 6;
const TCP_LISTEN: u32 = 10;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// `BPF_F_CURRENT_NETNS`: look sockets up in the packet's own network namespace.
const CURRENT_NETNS: u64 = u64::MAX;

#[classifier]
pub fn nodus_tc_ingress(mut ctx: TcContext) -> i32 {
    // SAFETY: the kernel passes a valid __sk_buff for the program's lifetime.
    unsafe { try_tc_ingress(&mut ctx) }.unwrap_or(TCX_NEXT)
}

/// Marks `ctx` for local delivery (see `CAPTURE_MARK`), keeping other mark bits.
unsafe fn mark_for_proxy(ctx: &mut TcContext) {
    let mark = (*ctx.skb.skb).mark;
    ctx.set_mark((mark & !CAPTURE_MARK_MASK) | CAPTURE_MARK);
}

/// Looks a TCP socket up in this namespace by `tuple` and returns its state, or `None`.
unsafe fn socket_state(ctx: &TcContext, tuple: &mut bpf_sock_tuple) -> Option<u32> {
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let sk: *mut bpf_sock = bpf_skc_lookup_tcp(ctx.skb.skb as *mut _, tuple, size, CURRENT_NETNS, 0);
    if sk.is_null() {
        return None;
    }
    let state = (*sk).state;
    bpf_sk_release(sk as *mut _);
    Some(state)
}

unsafe fn try_tc_ingress(ctx: &mut TcContext) -> Result<i32, i64> {
    // Already handled at an earlier interface (a bridge port, then the bridge).
    if (*ctx.skb.skb).mark & CAPTURE_MARK_MASK == CAPTURE_MARK {
        return Ok(TCX_NEXT);
    }
    let ethertype: u16 = ctx.load(12)?;
    if ethertype != ETH_P_IP.to_be() {
        return Ok(TCX_NEXT);
    }
    let version_ihl: u8 = ctx.load(ETH_HEADER_LEN)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    let protocol: u8 = ctx.load(ETH_HEADER_LEN + 9)?;
    let fragment: u16 = ctx.load(ETH_HEADER_LEN + 6)?;
    // Only whole IPv4 TCP segments, or first fragments, carry the ports.
    if version_ihl >> 4 != 4 || header_len < 20 || protocol != IPPROTO_TCP || u16::from_be(fragment) & 0x1fff != 0 {
        return Ok(TCX_NEXT);
    }
    let daddr: u32 = ctx.load(ETH_HEADER_LEN + 16)?;
    // Cheap test first: most packets are not for an enrolled pod.
    let Some(pod) = NODUS_INBOUND.get(&daddr) else {
        return Ok(TCX_NEXT);
    };
    let capture_new = pod.flags & INBOUND_CAPTURE_NEW != 0;
    let saddr: u32 = ctx.load(ETH_HEADER_LEN + 12)?;
    let tcp = ETH_HEADER_LEN + header_len;
    let sport: u16 = ctx.load(tcp)?;
    let dport: u16 = ctx.load(tcp + 2)?;
    let flags: u8 = ctx.load(tcp + 13)?;
    let mut tuple: bpf_sock_tuple = core::mem::zeroed();
    tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 { saddr, daddr, sport, dport };

    let new_connection = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // A connection the proxy holds (accepted, half-open or closing): deliver it there. A node
    // listener on the pod's port is not one of ours. A SYN reusing the 4-tuple of a connection
    // the proxy closed first (its socket in TIME_WAIT) is a new connection: the kernel would
    // look for a listener on the pod's port, find none in the node's namespace and reset it.
    match socket_state(ctx, &mut tuple) {
        Some(TCP_LISTEN) | None => {}
        Some(TCP_TIME_WAIT) if new_connection => {}
        Some(_) => {
            mark_for_proxy(ctx);
            return Ok(TCX_PASS);
        }
    }
    // Anything but a new connection (SYN without ACK) is left alone: connections opened before
    // the pod was enrolled keep going straight to it.
    if !new_connection || !capture_new {
        return Ok(TCX_NEXT);
    }
    // Inbound capture switched off (a proxy started with it off re-adopted these links).
    if NODUS_CONFIG.get(0).is_none_or(|config| config.inbound_port == 0) {
        return Ok(TCX_NEXT);
    }
    // The kernel's listener lookup for it runs `nodus_sk_lookup`, which picks the capture
    // listener.
    mark_for_proxy(ctx);
    count(Counter::InboundCaptured);
    Ok(TCX_PASS)
}

const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;
const AF_INET: u32 = 2;

#[sk_lookup]
pub fn nodus_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid bpf_sk_lookup for the program's lifetime.
    let (family, protocol, local_ip4) =
        unsafe { ((*ctx.lookup).family, (*ctx.lookup).protocol, (*ctx.lookup).local_ip4) };
    if family != AF_INET || protocol != u32::from(IPPROTO_TCP) {
        return SK_PASS;
    }
    // SAFETY: map value read by copy.
    let capture_new = match unsafe { NODUS_INBOUND.get(&local_ip4) } {
        Some(pod) => pod.flags & INBOUND_CAPTURE_NEW != 0,
        None => return SK_PASS,
    };
    if !capture_new {
        return SK_PASS;
    }
    // SAFETY: the only mutable access to the map object from this program; the helper it calls
    // takes a reference on the socket and releases it. (The kernel may look a listener up more
    // than once per connection: connections are counted at TC, by their SYN.)
    let assigned = unsafe { (*core::ptr::addr_of_mut!(NODUS_CAPTURE)).redirect_sk_lookup(&ctx, 0, 0) };
    match assigned {
        Ok(()) => SK_PASS,
        Err(_) => {
            // No proxy listening: refuse rather than let the connection bypass it.
            count(Counter::InboundNoListener);
            SK_DROP
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
