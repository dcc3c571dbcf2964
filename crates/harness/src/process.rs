//! A child process that is killed and reaped when its handle is dropped, so a failing test never
//! leaves a server running or a zombie behind.

use crate::error::{HarnessError, Result};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A running child process owned by a test, a benchmark or the demo.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Process {
    /// Spawns `command` with its standard output captured (read it with [`Process::wait_for_line`]).
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Result<Self> {
        let name = name.into();
        let mut child = command.stdout(Stdio::piped()).spawn().map_err(|e| HarnessError::Command {
            command: name.clone(),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self { name, child, stdout })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Reads standard output until a line starting with `prefix` appears (a readiness line),
    /// and returns it. Fails if the process exits first or `timeout` passes.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let stdout = self.stdout.as_mut().ok_or_else(|| HarnessError::Usage(format!("{}: no stdout", self.name)))?;
        let mut line = String::new();
        loop {
            line.clear();
            // A blocking read: readiness lines come quickly, and a dead process gives EOF.
            let read = stdout.read_line(&mut line).unwrap_or(0);
            if read == 0 {
                let status = self.child.try_wait().ok().flatten().map(|s| s.to_string()).unwrap_or("running".into());
                return Err(HarnessError::Command {
                    command: self.name.clone(),
                    status,
                    stderr: format!("exited before printing {prefix:?}"),
                });
            }
            if line.starts_with(prefix) {
                return Ok(line.trim_end().to_owned());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Command {
                    command: self.name.clone(),
                    status: "running".into(),
                    stderr: format!("did not print {prefix:?} within {timeout:?}"),
                });
            }
        }
    }

    /// Whether the process has exited (and its status if so).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit, then kills.
    pub fn terminate(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
