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
#![no_std]
#![no_main]

use aya_ebpf::bindings::{
    BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_ANY,
};
use aya_ebpf::helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::macros::{cgroup_sock_addr, map, sock_ops};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray};
use aya_ebpf::programs::{SockAddrContext, SockOpsContext};
use aya_ebpf::EbpfContext;
use nodus_redirect_common::{
    Counter, Enrollment, OriginalDst, PeerKey, RedirectConfig, COUNTER_COUNT, ENROLL_OUTBOUND, MAX_ENROLLED_PODS,
    MAX_TRACKED_CONNECTIONS,
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
    /// Rewrite the destination to the proxy.
    Redirect(RedirectConfig),
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
    if is_loopback || (dst_ip4 == config.proxy_ip4 && dst_port == config.proxy_port) {
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
    Decision::Redirect(*config)
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
            Decision::Redirect(config) => {
                (*sock_addr).user_ip6[3] = config.proxy_ip4;
                (*sock_addr).user_port = config.proxy_port as u32;
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
        Decision::Redirect(config) => {
            (*sock_addr).user_ip4 = config.proxy_ip4;
            (*sock_addr).user_port = config.proxy_port as u32;
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
    // local_port is in host byte order in bpf_sock_ops, unlike the other port fields.
    PeerKey { ip4, port: (ctx.local_port() as u16).to_be(), _pad: 0 }
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
