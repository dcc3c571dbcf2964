//! `nodusctl check`: can this machine run the Nodus node agent (eBPF redirect + node proxy)?

use anyhow::Result;
use clap::Args;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `nodusctl check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Skip the live test that loads and attaches the redirect programs to a scratch cgroup.
    #[arg(long)]
    no_load: bool,
    /// Where bpffs is (or should be) mounted.
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// Also check the node proxy running here, through its node-local debug listener (its
    /// `--debug-addr`, 127.0.0.1:15021 by default): does it have a config, and is every mesh
    /// endpoint in it reachable (its node's proxy known)?
    #[arg(long)]
    proxy_debug: Option<std::net::SocketAddr>,
    /// Reach the proxy from inside this network namespace (a local-mesh node's
    /// `nodus-<id>-node-1`).
    #[arg(long, requires = "proxy_debug")]
    netns: Option<String>,
}

/// The oldest kernel with everything the redirect uses (netns cookies in sock_ops, SO_NETNS_COOKIE
/// is 5.14; BPF links on cgroups 5.7).
const MIN_KERNEL: (u32, u32) = (5, 15);

struct Outcome {
    name: &'static str,
    result: std::result::Result<String, String>,
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    let mut outcomes = vec![
        Outcome { name: "privileges", result: check_root() },
        Outcome { name: "kernel", result: check_kernel() },
        Outcome { name: "btf", result: check_file("/sys/kernel/btf/vmlinux", "kernel BTF") },
        Outcome { name: "cgroup v2", result: check_cgroup2() },
        Outcome { name: "bpffs", result: check_bpffs(&args.bpffs) },
        Outcome { name: "iproute2", result: check_ip() },
    ];
    let ready_for_live = outcomes.iter().all(|o| o.result.is_ok());
    if !args.no_load {
        let result =
            if ready_for_live { live_attach(&args.bpffs) } else { Err("skipped: fix the checks above first".into()) };
        outcomes.push(Outcome { name: "redirect load", result });
    }
    if let Some(debug) = args.proxy_debug {
        outcomes.push(Outcome {
            name: "mesh endpoints",
            result: crate::admin::unplaced_endpoints(debug, args.netns.as_deref()),
        });
    }
    let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(0);
    let mut failed = 0;
    for outcome in &outcomes {
        match &outcome.result {
            Ok(detail) => println!("  ok    {:width$}  {detail}", outcome.name),
            Err(problem) => {
                failed += 1;
                println!("  FAIL  {:width$}  {problem}", outcome.name);
            }
        }
    }
    if failed == 0 {
        println!("\nThis machine can run the Nodus node agent.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{failed} check(s) failed.");
        Ok(ExitCode::from(1))
    }
}

fn check_root() -> std::result::Result<String, String> {
    if nix::unistd::geteuid().is_root() {
        Ok("running as root".into())
    } else {
        Err("not root: the node agent needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN (run with sudo)".into())
    }
}

fn check_kernel() -> std::result::Result<String, String> {
    let uname = nix::sys::utsname::uname().map_err(|e| format!("uname failed: {e}"))?;
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= MIN_KERNEL {
        Ok(format!("Linux {release} (needs {}.{}+)", MIN_KERNEL.0, MIN_KERNEL.1))
    } else {
        Err(format!("Linux {release} is older than {}.{}", MIN_KERNEL.0, MIN_KERNEL.1))
    }
}

fn check_file(path: &str, what: &str) -> std::result::Result<String, String> {
    if Path::new(path).exists() {
        Ok(format!("{what} at {path}"))
    } else {
        Err(format!("{path} missing: the kernel lacks {what} (CONFIG_DEBUG_INFO_BTF)"))
    }
}

fn check_cgroup2() -> std::result::Result<String, String> {
    nodus_harness::cgroup2_mount()
        .map(|path| format!("mounted at {}", path.display()))
        .map_err(|e| format!("{e}: mount one with `mount -t cgroup2 none /sys/fs/cgroup`"))
}

fn check_bpffs(path: &Path) -> std::result::Result<String, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| format!("reading mounts: {e}"))?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next();
        fields.next() == Some(&*path.to_string_lossy()) && fields.next() == Some("bpf")
    });
    if mounted {
        Ok(format!("mounted at {}", path.display()))
    } else {
        Err(format!("not mounted at {0}: `mount -t bpf bpf {0}`", path.display()))
    }
}

fn check_ip() -> std::result::Result<String, String> {
    match std::process::Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        _ => Err("`ip` not found: install iproute2 (needed by the local mesh)".into()),
    }
}

/// Loads and attaches the real redirect programs to a scratch cgroup, then removes everything.
fn live_attach(bpffs: &Path) -> std::result::Result<String, String> {
    let root = nodus_harness::cgroup2_mount().map_err(|e| e.to_string())?;
    let scratch = root.join(format!("nodus-check-{}", std::process::id()));
    let pins = bpffs.join(format!("nodus-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let spec = nodus_redirect::RedirectSpec {
        cgroup: scratch.clone(),
        pin_dir: pins.clone(),
        proxy_addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15100),
        proxy_ports: 16,
        // Inbound capture attaches to interfaces: not on this machine's own ones.
        inbound_port: None,
    };
    let result = nodus_redirect::Redirect::attach(&spec)
        .map_err(|e| e.to_string())
        .and_then(|redirect| redirect.uninstall().map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir(&scratch);
    result.map(|()| "connect4, getpeername4 and sock_ops programs load, attach and detach".into())
}
