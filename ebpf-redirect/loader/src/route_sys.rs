//! The policy routing inbound capture needs, over rtnetlink: the equivalent of
//!
//! ```text
//! ip rule add fwmark CAPTURE_MARK/CAPTURE_MARK_MASK lookup CAPTURE_ROUTE_TABLE pref CAPTURE_RULE_PRIORITY
//! ip route replace local 0.0.0.0/0 dev lo table CAPTURE_ROUTE_TABLE
//! ```
//!
//! in the calling thread's network namespace. Marked packets (see the TC program) are then
//! delivered locally, to the proxy socket they were assigned to, although their destination is
//! a pod's address. Both requests are idempotent. Written against the kernel's ABI directly
//! (a few fixed-layout messages) rather than pulling in a netlink stack.

use nodus_redirect_common::{CAPTURE_MARK, CAPTURE_MARK_MASK, CAPTURE_ROUTE_TABLE, CAPTURE_RULE_PRIORITY};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// From include/uapi/linux/{netlink,rtnetlink,fib_rules}.h.
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWRULE: u16 = 32;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const FR_ACT_TO_TBL: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const AF_INET: u8 = libc::AF_INET as u8;

/// Appends a `u32` netlink attribute (4-byte header, 4-byte payload: already aligned).
fn put_attribute(message: &mut Vec<u8>, kind: u16, value: u32) {
    message.extend_from_slice(&8u16.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&value.to_ne_bytes());
}

struct Netlink {
    socket: OwnedFd,
    sequence: u32,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor.
        Ok(Self { socket: unsafe { OwnedFd::from_raw_fd(raw) }, sequence: 0 })
    }

    /// Sends one request and waits for its acknowledgement; the kernel's error as an io::Error.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.sequence += 1;
        let length = 16 + body.len();
        let mut message = Vec::with_capacity(length);
        message.extend_from_slice(&(length as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        message.extend_from_slice(&self.sequence.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(body);
        // SAFETY: the buffer is valid for its length; the kernel is the destination (no address).
        let sent = unsafe { libc::send(self.socket.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 1024];
        loop {
            // SAFETY: the buffer is valid for its length.
            let received = unsafe { libc::recv(self.socket.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
            if received < 0 {
                return Err(io::Error::last_os_error());
            }
            let reply = &reply[..received as usize];
            if reply.len() < 20 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"));
            }
            let kind = u16::from_ne_bytes([reply[4], reply[5]]);
            let sequence = u32::from_ne_bytes([reply[8], reply[9], reply[10], reply[11]]);
            if kind != NLMSG_ERROR || sequence != self.sequence {
                continue;
            }
            // struct nlmsgerr { int error; struct nlmsghdr msg; }: 0 is the acknowledgement.
            let error = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
            return if error == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-error)) };
        }
    }
}

/// Installs the rule and the local route (see the module docs). Needs CAP_NET_ADMIN.
pub(crate) fn ensure_capture_routing() -> io::Result<()> {
    let mut netlink = Netlink::open()?;

    // struct fib_rule_hdr { family, dst_len, src_len, tos, table, res1, res2, action; u32 flags }
    let mut rule = vec![AF_INET, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0];
    put_attribute(&mut rule, FRA_PRIORITY, CAPTURE_RULE_PRIORITY);
    put_attribute(&mut rule, FRA_FWMARK, CAPTURE_MARK);
    put_attribute(&mut rule, FRA_FWMASK, CAPTURE_MARK_MASK);
    put_attribute(&mut rule, FRA_TABLE, CAPTURE_ROUTE_TABLE);
    match netlink.request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, &rule) {
        Err(error) if error.raw_os_error() != Some(libc::EEXIST) => return Err(error),
        _ => {}
    }

    // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags }
    let mut route = vec![AF_INET, 0, 0, 0, 0, RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL, 0, 0, 0, 0];
    put_attribute(&mut route, RTA_TABLE, CAPTURE_ROUTE_TABLE);
    // SAFETY: the argument is a NUL-terminated string literal.
    let loopback = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if loopback == 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no loopback interface in this network namespace"));
    }
    put_attribute(&mut route, RTA_OIF, loopback);
    netlink.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &route)
}
