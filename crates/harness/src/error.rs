//! Errors of the harness.

use std::path::PathBuf;
use thiserror::Error;

/// What went wrong while building, using or tearing down a lab.
#[derive(Debug, Error)]
pub enum HarnessError {
    /// This machine or process cannot run a lab (not root, no cgroup v2, no `ip`...).
    #[error("the mesh harness cannot run here: {0}")]
    Unsupported(String),
    /// An external command (`ip`) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Entering a network namespace failed.
    #[error("entering network namespace {name}: {source}")]
    Setns {
        /// The namespace.
        name: String,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },
    /// The caller named a node or pod the lab does not have, or reused a name.
    #[error("{0}")]
    Usage(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

pub(crate) fn io_error(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let path = path.into();
    move |source| HarnessError::Io { action, path, source }
}
