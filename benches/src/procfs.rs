//! What a benchmark reads about a process tree from /proc: CPU time (user and kernel) and
//! resident memory, the proxy's and its peers' alike.

use anyhow::Result;

pub(crate) fn children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid =
                stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(child);
            }
        }
    }
    out
}

/// CPU time a process tree has used, split into user space and kernel.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTime {
    pub(crate) user_seconds: f64,
    pub(crate) system_seconds: f64,
}

impl CpuTime {
    pub(crate) fn total(&self) -> f64 {
        self.user_seconds + self.system_seconds
    }

    pub(crate) fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user_seconds: self.user_seconds - earlier.user_seconds,
            system_seconds: self.system_seconds - earlier.system_seconds,
        }
    }
}

impl std::ops::Add for CpuTime {
    type Output = CpuTime;

    fn add(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user_seconds: self.user_seconds + other.user_seconds,
            system_seconds: self.system_seconds + other.system_seconds,
        }
    }
}

/// User and system CPU time of a process and its children (nginx's workers).
pub(crate) fn process_tree_cpu(pid: u32) -> Result<CpuTime> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut used = CpuTime::default();
    for p in children(pid) {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat"))?;
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / ticks;
        used = used + CpuTime { user_seconds: field(11), system_seconds: field(12) };
    }
    Ok(used)
}

/// User + system CPU seconds of a process and its children.
pub(crate) fn process_tree_cpu_seconds(pid: u32) -> Result<f64> {
    Ok(process_tree_cpu(pid)?.total())
}

pub(crate) fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn process_tree_peak_rss_mib(pid: u32) -> Result<f64> {
    Ok(children(pid).into_iter().map(|p| status_kib(p, "VmHWM:")).sum::<f64>() / 1024.0)
}

pub(crate) fn process_tree_rss_mib(pid: u32) -> Result<f64> {
    Ok(children(pid).into_iter().map(|p| status_kib(p, "VmRSS:")).sum::<f64>() / 1024.0)
}
