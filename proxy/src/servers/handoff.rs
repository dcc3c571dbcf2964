//! Handing the listening sockets from a running node proxy to its successor, for upgrades
//! without a refused connection.
//!
//! The running proxy offers its listeners on a Unix socket (`--handoff-socket`). A new proxy
//! started with the same path connects, receives duplicates of the listening sockets
//! (`SCM_RIGHTS`) and accepts on them at once; the old one then stops accepting and drains
//! ([`crate::core::drain`]). Connections waiting in the kernel's accept queue belong to the socket,
//! not the process, so none is lost in between — unlike two processes on `SO_REUSEPORT`, where
//! closing one listener resets the connections queued on it. The eBPF redirect needs nothing:
//! its programs and maps are pinned and the new process re-adopts them.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a successor asks for.
const REQUEST: &[u8; 5] = b"TAKE\n";
/// The most listening sockets one hand-over carries (every outbound port, admin, inbound,
/// capture); the kernel takes up to 253 descriptors in one message.
pub const MAX_LISTENERS: usize = 128;

/// Which listener a handed-over socket is: sent as one byte per socket, in the order of the
/// sockets in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ListenerRole {
    /// Captured outbound connections of pods.
    Outbound = b'o',
    /// /metrics, /ready...
    Admin = b'a',
    /// Tunnels from other nodes' proxies.
    Inbound = b'i',
    /// Connections captured on their way in to pods (transparent).
    Capture = b'c',
    /// The node-local debug listener (/config_dump).
    Debug = b'd',
}

/// Listening sockets received from the predecessor.
#[derive(Debug)]
pub struct Inherited {
    /// The outbound listeners, in port order.
    pub outbound: Vec<std::net::TcpListener>,
    /// The admin listener.
    pub admin: std::net::TcpListener,
    /// The inbound (tunnel) listener, if the predecessor had one.
    pub inbound: Option<std::net::TcpListener>,
    /// The inbound capture listener, if the predecessor had one.
    pub capture: Option<std::net::TcpListener>,
    /// The node-local debug listener, if the predecessor had one.
    pub debug: Option<std::net::TcpListener>,
}

fn io_error(error: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(error as i32)
}

/// Takes the listeners over from a proxy offering them at `path`. `Ok(None)` when nobody offers
/// (the first proxy on the node): it binds its own.
pub fn take_over(path: &Path) -> std::io::Result<Option<Inherited>> {
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(error) if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(error) => return Err(error),
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(REQUEST)?;
    let mut roles = [0u8; MAX_LISTENERS];
    let mut buffer = nix::cmsg_space!([RawFd; MAX_LISTENERS]);
    let mut iov = [IoSliceMut::new(&mut roles)];
    let message =
        recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut buffer), MsgFlags::MSG_CMSG_CLOEXEC).map_err(io_error)?;
    let role_count = message.bytes;
    let mut fds = Vec::new();
    for control in message.cmsgs().map_err(io_error)? {
        if let ControlMessageOwned::ScmRights(received) = control {
            fds.extend(received);
        }
    }
    let listeners: Vec<std::net::TcpListener> = fds
        .into_iter()
        // SAFETY: each descriptor was just received with SCM_RIGHTS and is owned by nobody else.
        .map(|fd| unsafe { std::net::TcpListener::from_raw_fd(fd) })
        .collect();
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    let (mut outbound, mut admin, mut inbound, mut capture, mut debug) = (Vec::new(), None, None, None, None);
    for (role, listener) in roles[..role_count.min(roles.len())].iter().zip(listeners) {
        let slot = match *role {
            b'o' => {
                outbound.push(listener);
                continue;
            }
            b'a' => &mut admin,
            b'i' => &mut inbound,
            b'c' => &mut capture,
            b'd' => &mut debug,
            other => {
                tracing::warn!(role = other, "the predecessor sent a listener of an unknown role; closed");
                continue;
            }
        };
        *slot = Some(listener);
    }
    match (outbound.is_empty(), admin) {
        (false, Some(admin)) => Ok(Some(Inherited { outbound, admin, inbound, capture, debug })),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the predecessor sent no outbound or admin listener",
        )),
    }
}

/// Offers `listeners` at `path` to one successor; returns once they were handed over. Removes
/// a stale socket file left by a crashed process first.
pub async fn offer(path: PathBuf, listeners: Vec<(ListenerRole, RawFd)>) -> std::io::Result<()> {
    if listeners.len() > MAX_LISTENERS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} listeners to hand over; at most {MAX_LISTENERS} fit", listeners.len()),
        ));
    }
    let roles: Vec<u8> = listeners.iter().map(|(role, _)| *role as u8).collect();
    let fds: Vec<RawFd> = listeners.iter().map(|(_, fd)| *fd).collect();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        loop {
            let (mut stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut request = [0u8; REQUEST.len()];
            if stream.read_exact(&mut request).is_err() || &request != REQUEST {
                continue;
            }
            let rights = [ControlMessage::ScmRights(&fds)];
            match sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(&roles)], &rights, MsgFlags::empty(), None) {
                Ok(_) => {
                    // The successor binds its own offer at this path next.
                    drop(listener);
                    return Ok(());
                }
                Err(error) => tracing::warn!(%error, "handing the listeners over failed; still offering"),
            }
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn listeners_pass_to_a_successor_with_their_queued_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.sock");
        assert!(take_over(&path).unwrap().is_none(), "nobody offers yet");
        let outbound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let outbound_2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = outbound.local_addr().unwrap();
        let address_2 = outbound_2.local_addr().unwrap();
        // A client connects before the hand-over: its connection waits in the accept queue.
        let mut early = std::net::TcpStream::connect(address).unwrap();
        let capture = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let capture_address = capture.local_addr().unwrap();
        let offering = tokio::spawn(offer(
            path.clone(),
            vec![
                (ListenerRole::Outbound, outbound.as_raw_fd()),
                (ListenerRole::Outbound, outbound_2.as_raw_fd()),
                (ListenerRole::Admin, admin.as_raw_fd()),
                (ListenerRole::Capture, capture.as_raw_fd()),
            ],
        ));
        let taken = loop {
            if let Some(taken) = tokio::task::spawn_blocking({
                let path = path.clone();
                move || take_over(&path).unwrap()
            })
            .await
            .unwrap()
            {
                break taken;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        offering.await.unwrap().unwrap();
        // The predecessor closes its copies; the sockets live on in the successor.
        drop((outbound, outbound_2, admin, capture));
        let outbound: Vec<_> = taken.outbound.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(outbound, [address, address_2], "every outbound port, in order");
        assert!(taken.inbound.is_none());
        assert_eq!(taken.capture.as_ref().unwrap().local_addr().unwrap(), capture_address, "roles follow the sockets");
        taken.outbound[0].set_nonblocking(false).unwrap();
        let (mut accepted, _) = taken.outbound[0].accept().unwrap();
        early.write_all(b"hi").unwrap();
        let mut greeting = [0u8; 2];
        accepted.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"hi", "the queued connection reached the successor");
    }
}
