//! Thin wrappers over the commands and files the harness drives, each failure carrying context.

use crate::error::{io_error, HarnessError, Result};
use std::path::Path;
use std::process::Command;

/// Runs `ip` with the given arguments.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Runs `ip -n <netns>` with the given arguments.
pub(crate) fn ip_in(netns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full)
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    let command_line = || format!("{program} {}", args.join(" "));
    let output = Command::new(program).args(args).output().map_err(|e| HarnessError::Command {
        command: command_line(),
        status: "could not start".into(),
        stderr: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            command: command_line(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Writes a small value to a file such as a sysctl or a cgroup control file.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(io_error("writing", path))
}
