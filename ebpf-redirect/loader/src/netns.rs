//! Network-namespace cookies: the key under which a pod is enrolled.
//!
//! All containers of a pod share its network namespace, and the kernel gives every namespace a
//! unique, never-reused 64-bit cookie that cgroup programs can read (`bpf_get_netns_cookie`), so
//! enrolment by cookie needs no knowledge of the container runtime's cgroup layout.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace the calling thread is in (Linux 5.14+).
pub fn current_netns_cookie() -> io::Result<u64> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket, output buffer of the advertised size.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the network namespace behind `netns_file` (`/run/netns/NAME` or
/// `/proc/PID/ns/net`), read from a short-lived thread that enters it.
pub fn netns_cookie_of(netns_file: &Path) -> io::Result<u64> {
    let file = std::fs::File::open(netns_file)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                current_netns_cookie()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The cookie and IPv4 addresses of the network namespace behind `netns_file`: how a node agent
/// finds which namespace holds a pod whose IP the config names.
pub fn netns_cookie_and_ipv4(netns_file: &Path) -> io::Result<(u64, Vec<std::net::Ipv4Addr>)> {
    let file = std::fs::File::open(netns_file)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                let cookie = current_netns_cookie()?;
                let addresses = nix::ifaddrs::getifaddrs()
                    .map_err(io::Error::from)?
                    .filter_map(|ifaddr| ifaddr.address?.as_sockaddr_in().map(|sin| sin.ip()))
                    .filter(|ip| !ip.is_loopback())
                    .collect();
                Ok((cookie, addresses))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
