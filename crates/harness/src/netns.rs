//! Named network namespaces (`ip netns`): create, enter, run code or processes inside, delete.

use crate::cgroup::Cgroup;
use crate::error::{io_error, HarnessError, Result};
use crate::sys;
use nix::sched::{setns, CloneFlags};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A named network namespace made by the harness. Cloning the handle does not copy the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace and brings its loopback up.
    pub(crate) fn create(name: String) -> Result<Self> {
        sys::ip(&["netns", "add", &name])?;
        let netns = Self { name };
        sys::ip_in(&netns.name, &["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// A handle to an existing namespace, by name.
    pub(crate) fn existing(name: String) -> Self {
        Self { name }
    }

    /// A handle to a namespace named under `/run/netns` (for tools that reach into a lab).
    pub fn named(name: String) -> Self {
        Self { name }
    }

    /// The namespace's name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).map_err(io_error("opening network namespace", self.path()))
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    ///
    /// Sockets created inside `f` belong to the namespace for their whole life, so a listener or a
    /// connection made here can be handed to an async runtime afterwards. The calling thread is
    /// never moved, so this is safe to call from anywhere.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns_file = self.open()?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&ns_file, CloneFlags::CLONE_NEWNET)
                        .map_err(|source| HarnessError::Setns { name: self.name.clone(), source })?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sets a sysctl under `/proc/sys/net` for this namespace (e.g. `ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys/net").join(key);
        self.run(|| sys::write_file(&path, value))?
    }

    /// A command that runs `program` inside this namespace, and inside `cgroup` when given.
    ///
    /// The namespace and cgroup are joined between fork and exec, so the program's first
    /// instruction already runs there. Only the network namespace changes: `/sys` still shows the
    /// host's view (use `ip netns exec` for programs that read `/sys/class/net`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, cgroup: Option<&Cgroup>) -> Result<Command> {
        let ns_file = self.open()?;
        let mut procs = match cgroup {
            Some(cgroup) => {
                let path = cgroup.path().join("cgroup.procs");
                Some(OpenOptions::new().write(true).open(&path).map_err(io_error("opening", path))?)
            }
            None => None,
        };
        let mut command = Command::new(program);
        // SAFETY: the closure runs in the child between fork and exec; it only makes two system
        // calls on file descriptors opened before the fork and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                setns(&ns_file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                if let Some(procs) = procs.as_mut() {
                    // "0" means the writing process itself.
                    procs.write_all(b"0")?;
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Deletes the namespace; interfaces inside it go with it.
    pub(crate) fn delete(&self) -> Result<()> {
        if self.path().exists() {
            sys::ip(&["netns", "delete", &self.name])?;
        }
        Ok(())
    }
}

/// Makes `command` see `resolv_conf` as `/etc/resolv.conf`, as a container does its own: the
/// program gets a mount namespace of its own (mounts private, so nothing leaks back to the host)
/// with the file bind-mounted over the host's. Everything else of the filesystem is the host's.
pub fn with_resolv_conf(command: &mut Command, resolv_conf: &std::path::Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    use std::os::unix::ffi::OsStrExt;
    let source = std::ffi::CString::new(resolv_conf.as_os_str().as_bytes())
        .map_err(|_| HarnessError::Usage(format!("{}: a path without NUL bytes", resolv_conf.display())))?;
    let target = c"/etc/resolv.conf";
    let root = c"/";
    // SAFETY: the closure runs in the child between fork and exec and makes three system calls
    // on strings allocated before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
            mount(
                None::<&std::ffi::CStr>,
                root,
                None::<&std::ffi::CStr>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&std::ffi::CStr>,
            )
            .map_err(std::io::Error::from)?;
            mount(Some(source.as_c_str()), target, None::<&std::ffi::CStr>, MsFlags::MS_BIND, None::<&std::ffi::CStr>)
                .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    Ok(())
}
