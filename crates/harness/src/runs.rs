//! Run ownership: every lab is named with a run-unique id, claimed by a small owner record, and
//! found and removed by a later run if its owner died without tearing it down (SIGKILL, OOM,
//! a CI timeout).

use crate::cgroup::{cgroup2_mount, destroy_tree, HARNESS_CGROUP_DIR};
use crate::error::{io_error, Result};
use crate::netns::{NetNs, NETNS_RUN_DIR};
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where owner records live (tmpfs: cleared on reboot, like the namespaces themselves).
pub const OWNER_DIR: &str = "/run/nodus-harness";

/// Where per-run bpffs pins (eBPF links and maps of node proxies) live.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/nodus-harness";

/// Every network namespace the harness makes starts with this.
pub const NETNS_PREFIX: &str = "nodus-";

const RUN_ID_LEN: usize = 6;

/// Whether `name` has the shape of a run id (six lower-case hex digits), so that cgroup control
/// files and anything else in the scanned directories are never taken for a lab.
fn is_run_id(name: &str) -> bool {
    name.len() == RUN_ID_LEN && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn owner_path(run_id: &str) -> PathBuf {
    Path::new(OWNER_DIR).join(format!("{run_id}.owner"))
}

/// Names of the network namespaces that currently belong to `run_id`.
pub fn netns_of_run(run_id: &str) -> Vec<String> {
    let prefix = format!("{NETNS_PREFIX}{run_id}-");
    list_netns().into_iter().filter(|name| name.starts_with(&prefix)).collect()
}

fn list_netns() -> Vec<String> {
    std::fs::read_dir(NETNS_RUN_DIR)
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// The cgroup directory that holds everything of `run_id`.
pub(crate) fn cgroup_of_run(cgroup_root: &Path, run_id: &str) -> PathBuf {
    cgroup_root.join(HARNESS_CGROUP_DIR).join(run_id)
}

/// The directory for files of `run_id` (configs, logs).
pub(crate) fn work_dir_of_run(run_id: &str) -> PathBuf {
    Path::new(OWNER_DIR).join(format!("{run_id}.d"))
}

/// The bpffs directory for the pins of `run_id`.
pub(crate) fn bpffs_of_run(run_id: &str) -> PathBuf {
    Path::new(BPFFS_DIR).join(run_id)
}

/// Everything of `run_id` that still exists: namespace names, cgroup directory, owner record.
/// Empty after a clean teardown.
pub fn leftovers_of_run(run_id: &str) -> Vec<String> {
    let mut left: Vec<String> = netns_of_run(run_id).into_iter().map(|n| format!("netns {n}")).collect();
    if let Ok(root) = cgroup2_mount() {
        let dir = cgroup_of_run(&root, run_id);
        if dir.exists() {
            left.push(format!("cgroup {}", dir.display()));
        }
    }
    if work_dir_of_run(run_id).exists() {
        left.push(format!("work dir {}", work_dir_of_run(run_id).display()));
    }
    if bpffs_of_run(run_id).exists() {
        left.push(format!("bpffs pins {}", bpffs_of_run(run_id).display()));
    }
    if owner_path(run_id).exists() {
        left.push(format!("owner record {}", owner_path(run_id).display()));
    }
    left
}

/// Claims a fresh run id by creating its owner record exclusively.
pub(crate) fn claim_run_id() -> Result<String> {
    std::fs::create_dir_all(OWNER_DIR).map_err(io_error("creating", OWNER_DIR))?;
    let me = std::process::id();
    let start = process_start_time(me).unwrap_or(0);
    loop {
        let run_id = format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff);
        if !netns_of_run(&run_id).is_empty() {
            continue;
        }
        let path = owner_path(&run_id);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                writeln!(file, "{me} {start}").map_err(io_error("writing", &path))?;
                return Ok(run_id);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error("creating", path)(e)),
        }
    }
}

/// Removes every namespace, cgroup and owner record of `run_id`, killing its processes.
pub(crate) fn destroy_run(run_id: &str) -> Result<()> {
    let mut first_error = None;
    if let Ok(root) = cgroup2_mount() {
        if let Err(e) = destroy_tree(&cgroup_of_run(&root, run_id)) {
            first_error.get_or_insert(e);
        }
    }
    for name in netns_of_run(run_id) {
        if let Err(e) = NetNs::existing(name).delete() {
            first_error.get_or_insert(e);
        }
    }
    // Unpinning releases eBPF links and maps; with their cgroup gone the programs detach.
    let pins = bpffs_of_run(run_id);
    if let Err(e) = std::fs::remove_dir_all(&pins) {
        if e.kind() != std::io::ErrorKind::NotFound {
            first_error.get_or_insert(io_error("removing", pins)(e));
        }
    }
    let work = work_dir_of_run(run_id);
    if let Err(e) = std::fs::remove_dir_all(&work) {
        if e.kind() != std::io::ErrorKind::NotFound {
            first_error.get_or_insert(io_error("removing", work)(e));
        }
    }
    let owner = owner_path(run_id);
    if let Err(e) = std::fs::remove_file(&owner) {
        if e.kind() != std::io::ErrorKind::NotFound {
            first_error.get_or_insert(io_error("removing", owner)(e));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Finds labs whose owner process is gone and removes them. Returns the run ids removed.
pub fn remove_stale_runs() -> Vec<String> {
    let mut run_ids = BTreeSet::new();
    for name in list_netns() {
        if let Some(rest) = name.strip_prefix(NETNS_PREFIX) {
            if rest.len() > RUN_ID_LEN && rest.as_bytes()[RUN_ID_LEN] == b'-' && is_run_id(&rest[..RUN_ID_LEN]) {
                run_ids.insert(rest[..RUN_ID_LEN].to_owned());
            }
        }
    }
    if let Ok(root) = cgroup2_mount() {
        if let Ok(entries) = std::fs::read_dir(root.join(HARNESS_CGROUP_DIR)) {
            run_ids.extend(entries.flatten().filter_map(|e| e.file_name().into_string().ok()));
        }
    }
    if let Ok(entries) = std::fs::read_dir(BPFFS_DIR) {
        run_ids.extend(entries.flatten().filter_map(|e| e.file_name().into_string().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(OWNER_DIR) {
        run_ids.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|name| name.strip_suffix(".owner").or_else(|| name.strip_suffix(".d")).map(str::to_owned)),
        );
    }
    run_ids.retain(|id| is_run_id(id));
    let mut removed = Vec::new();
    for run_id in run_ids {
        if !owner_alive(&run_id) {
            tracing::info!(run_id, "removing stale lab left by a run that did not tear down");
            // Two runs may clean the same stale lab at once; the loser's errors are harmless.
            match destroy_run(&run_id) {
                Ok(()) => removed.push(run_id),
                Err(error) => tracing::warn!(run_id, %error, "could not fully remove a stale lab"),
            }
        }
    }
    removed
}

/// Whether the process that claimed `run_id` still runs (same PID *and* start time, so a
/// recycled PID does not keep a dead run's lab alive).
fn owner_alive(run_id: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(owner_path(run_id)) else {
        return false;
    };
    let mut fields = text.split_whitespace();
    let (Some(Ok(pid)), Some(Ok(start))) = (fields.next().map(str::parse::<u32>), fields.next().map(str::parse::<u64>))
    else {
        return false;
    };
    process_start_time(pid) == Some(start)
}

/// Field 22 of `/proc/<pid>/stat`: the process start time in clock ticks since boot.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past its last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id();
        let first = process_start_time(me).expect("start time of this process");
        assert_eq!(process_start_time(me), Some(first));
    }

    #[test]
    fn only_six_hex_digits_are_run_ids() {
        assert!(is_run_id("0a9f3c"));
        for name in ["cgroup.procs", "cpu.stat", "0a9f3", "0a9f3c0", "0A9F3C", "zzzzzz", ""] {
            assert!(!is_run_id(name), "{name}");
        }
    }

    #[test]
    fn missing_owner_record_means_dead() {
        assert!(!owner_alive("zzzzzz"));
    }
}
