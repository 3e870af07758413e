//! What can go wrong with lab hosts, worded for the person who has to fix it.

use std::path::PathBuf;

/// Failures of `lab up`, `lab down` and `lab status`.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab creates namespaces, bridges and loop devices: only root can.
    #[error("nixpave lab needs root (it creates network namespaces, a bridge and loop devices); run it with sudo")]
    NotRoot,
    /// A tool the lab runs is not installed.
    #[error("`{tool}` is not installed: install the Debian package `{package}` (apt-get install {package})")]
    MissingTool {
        /// The program that was looked for.
        tool: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// Bad lab parameters.
    #[error("invalid lab setting: {0}")]
    Spec(String),
    /// A lab with this name is already up in this directory.
    #[error("lab `{name}` already exists in {dir}; take it down first with `nixpave lab down --name {name}`")]
    Exists {
        /// The lab name.
        name: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// No lab with this name.
    #[error("no lab `{name}` in {dir} (create it with `nixpave lab up --name {name}`)")]
    NotFound {
        /// The lab name.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// Every private subnet of the lab range is taken.
    #[error("no free lab subnet left in 10.77.10.0–10.77.250.0/24; take down unused labs (`nixpave lab down`)")]
    NoSubnet,
    /// A command the lab ran failed.
    #[error("{what}: `{command}` failed (exit {status:?}): {stderr}")]
    Command {
        /// What the lab was doing.
        what: String,
        /// The command line.
        command: String,
        /// Its exit status.
        status: Option<i32>,
        /// Tail of its standard error.
        stderr: String,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the lab was doing.
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A host's sshd did not come up in time.
    #[error("lab host {host}: sshd did not accept connections within {seconds} s; its log says:\n{log_tail}\n(the lab is half up: run `nixpave lab down --name {lab}` to clean up)")]
    HostNotReady {
        /// The lab.
        lab: String,
        /// The host.
        host: String,
        /// The limit.
        seconds: u64,
        /// Last lines of its sshd log.
        log_tail: String,
    },
    /// The lab state file is unreadable.
    #[error("lab state {path} is unreadable: {reason}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl LabError {
    pub(crate) fn io(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> LabError {
        let what = what.into();
        let path = path.into();
        move |source| LabError::Io { what, path, source }
    }
}
