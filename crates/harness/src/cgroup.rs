//! cgroup v2 directories for pods and node processes.
//!
//! eBPF programs that capture pod traffic (cgroup `connect4`, `sock_ops`) attach to a cgroup, so
//! each pod's processes live in a cgroup of their own, as they do under a kubelet.

use crate::error::{io_error, HarnessError, Result};
use crate::sys;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The top directory, below the cgroup v2 mount, of everything the harness makes.
pub const HARNESS_CGROUP_DIR: &str = "nodus-harness";

/// A cgroup v2 directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub(crate) fn create(path: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&path).map_err(io_error("creating cgroup", &path))?;
        Ok(Self { path })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The PIDs currently in this cgroup (not its children).
    pub fn pids(&self) -> Result<Vec<u32>> {
        let procs = self.path.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs).map_err(io_error("reading", procs))?;
        Ok(text.lines().filter_map(|line| line.trim().parse().ok()).collect())
    }
}

/// Finds where cgroup v2 is mounted (`/sys/fs/cgroup` on unified hosts, often
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(io_error("reading", "/proc/self/mountinfo"))?;
    mountinfo
        .lines()
        .find_map(|line| {
            // Fields: ... mount-point (5th) ... " - " fstype source options
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| HarnessError::Unsupported("no cgroup v2 file system is mounted".into()))
}

/// Kills every process below `dir` and removes the directory tree, deepest first.
pub(crate) fn destroy_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14) kills the whole subtree at once, including processes that fork
    // while we look.
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        sys::write_file(&kill, "1")?;
    } else {
        kill_listed_processes(dir)?;
    }
    remove_tree(dir)
}

fn kill_listed_processes(dir: &Path) -> Result<()> {
    for entry in walk(dir)? {
        let procs = entry.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs).unwrap_or_default();
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    Ok(())
}

/// Directories of the tree, parents before children.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    let mut index = 0;
    while index < out.len() {
        let current = out[index].clone();
        let entries = std::fs::read_dir(&current).map_err(io_error("listing", &current))?;
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(entry.path());
            }
        }
        index += 1;
    }
    Ok(out)
}

fn remove_tree(dir: &Path) -> Result<()> {
    let mut dirs = walk(dir)?;
    dirs.reverse();
    for path in dirs {
        // A killed process leaves its cgroup a moment after the signal: retry EBUSY briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc_ebusy()) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(io_error("removing cgroup", &path)(e)),
            }
        }
    }
    Ok(())
}

fn libc_ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}
