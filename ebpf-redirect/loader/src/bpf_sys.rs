//! The few bpf(2) commands aya 0.13 does not expose for cgroup and TCX links: create a link and
//! pin it, open a pinned link, swap the program behind a link, and ask what a link is attached to.
//! Pinned links are what keep capture running while no proxy process holds them.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

// Commands and attach types from include/uapi/linux/bpf.h.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `enum bpf_attach_type` values of the hooks we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum AttachType {
    CgroupSockOps = 3,
    CgroupInet4Connect = 10,
    CgroupInet6Connect = 11,
    CgroupInet4Getpeername = 29,
    CgroupInet6Getpeername = 30,
    SkLookup = 36,
    TcxIngress = 46,
}

/// `union bpf_attr` is 144 bytes on current kernels; unused bytes must be zero.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Self([0; 144])
    }
    fn put_u32(&mut self, offset: usize, value: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn put_u64(&mut self, offset: usize, value: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }
}

fn bpf(command: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-initialised bpf_attr of the size we pass.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn owned_fd(raw: libc::c_long) -> io::Result<OwnedFd> {
    let raw = i32::try_from(raw).map_err(|_| io::Error::other("bpf returned an out-of-range fd"))?;
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// BPF_LINK_CREATE { prog_fd, target_fd, attach_type, flags }.
pub(crate) fn link_create(program: BorrowedFd<'_>, cgroup: BorrowedFd<'_>, attach: AttachType) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, program.as_raw_fd() as u32).put_u32(4, cgroup.as_raw_fd() as u32).put_u32(8, attach as u32);
    owned_fd(bpf(BPF_LINK_CREATE, &mut attr)?)
}

/// BPF_LINK_CREATE { prog_fd, target_ifindex, BPF_TCX_INGRESS, flags, tcx: { 0, 0 } }: appended
/// after the interface's other TCX programs (Linux 6.6+).
pub(crate) fn link_create_tcx(program: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, program.as_raw_fd() as u32).put_u32(4, ifindex).put_u32(8, AttachType::TcxIngress as u32);
    owned_fd(bpf(BPF_LINK_CREATE, &mut attr)?)
}

/// BPF_LINK_UPDATE { link_fd, new_prog_fd, flags, old_prog_fd }: atomically replaces the
/// program behind a link; traffic never sees a moment without one.
pub(crate) fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, link.as_raw_fd() as u32).put_u32(4, program.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// BPF_OBJ_PIN { pathname, bpf_fd, file_flags }.
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = path_cstring(path)?;
    let mut attr = Attr::new();
    attr.put_u64(0, path.as_ptr() as u64).put_u32(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// BPF_OBJ_GET { pathname, bpf_fd, file_flags }.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = path_cstring(path)?;
    let mut attr = Attr::new();
    attr.put_u64(0, path.as_ptr() as u64);
    owned_fd(bpf(BPF_OBJ_GET, &mut attr)?)
}

/// The first bytes of a link's `struct bpf_link_info { u32 type; u32 id; u32 prog_id; union {
/// ... } }`; the union starts at offset 16.
fn link_info(link: BorrowedFd<'_>) -> io::Result<[u8; 64]> {
    let mut info = [0u8; 64];
    let mut attr = Attr::new();
    attr.put_u32(0, link.as_raw_fd() as u32).put_u32(4, info.len() as u32).put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// The cgroup id a cgroup link is attached to (0 once its cgroup is gone): `cgroup { u64
/// cgroup_id; u32 attach_type; }`.
pub(crate) fn link_cgroup_id(link: BorrowedFd<'_>) -> io::Result<u64> {
    let info = link_info(link)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&info[16..24]);
    Ok(u64::from_ne_bytes(id))
}

/// The network namespace (inode) an `sk_lookup` link is attached to: `netns { u32 netns_ino;
/// u32 attach_type; }`.
pub(crate) fn link_netns_ino(link: BorrowedFd<'_>) -> io::Result<u32> {
    let info = link_info(link)?;
    let mut ino = [0u8; 4];
    ino.copy_from_slice(&info[16..20]);
    Ok(u32::from_ne_bytes(ino))
}

/// The interface a TCX link is attached to (0 once the interface is gone): `tcx { u32 ifindex;
/// u32 attach_type; }`.
pub(crate) fn link_tcx_ifindex(link: BorrowedFd<'_>) -> io::Result<u32> {
    let info = link_info(link)?;
    let mut index = [0u8; 4];
    index.copy_from_slice(&info[16..20]);
    Ok(u32::from_ne_bytes(index))
}
