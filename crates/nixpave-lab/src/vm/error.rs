//! What can go wrong with lab VMs, each error saying what, where, why and what to do next.

use std::path::PathBuf;

/// An error of the VM lab.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file or directory operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: String,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program could not be started at all.
    #[error(
        "cannot run `{program}`: {source} (scripts/install-deps.sh installs what the lab needs)"
    )]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program ran and failed.
    #[error("`{command}` failed ({status}): {stderr_tail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// An ssh login or a command over ssh failed (the transport says which and why).
    #[error("VM {name}: {source}")]
    Ssh {
        /// The VM.
        name: String,
        /// What the ssh transport reported.
        #[source]
        source: Box<nixpave_remote::TransportError>,
    },
    /// Building the images failed.
    #[error("building the lab images failed; the full log is {}:\n{tail}\nfix the cause and run again (finished steps are not cached, downloads are)", log.display())]
    ImageBuild {
        /// The build log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// A VM name was not usable.
    #[error("invalid VM name {0:?}: use letters, digits, '-' and '_' (at most 40)")]
    BadName(String),
    /// A VM with this name already runs.
    #[error("VM {name} already exists (state in {}); run `nixpave lab vm down {name}` first", dir.display())]
    Exists {
        /// The VM.
        name: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// No VM with this name exists.
    #[error("no VM named {name} (looked in {}); `nixpave lab vm status` lists them", dir.display())]
    NotFound {
        /// The VM.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// qemu did not start.
    #[error("qemu for VM {name} did not start: {stderr_tail}")]
    QemuStart {
        /// The VM.
        name: String,
        /// The end of qemu's stderr.
        stderr_tail: String,
    },
    /// The VM's qemu process went away while waiting for it.
    #[error("VM {name} stopped while {phase}; the end of its console ({}):\n{console_tail}", console.display())]
    Died {
        /// The VM.
        name: String,
        /// What was being waited for.
        phase: String,
        /// The serial console log.
        console: PathBuf,
        /// Its last lines.
        console_tail: String,
    },
    /// A bounded wait ran out.
    #[error("VM {name}: {what} did not happen within {seconds}s; the end of its console ({}):\n{console_tail}\nthe console log stays; `nixpave lab vm status` shows whether the VM still runs and `nixpave lab vm down {name}` removes it", console.display())]
    Timeout {
        /// The VM.
        name: String,
        /// What was awaited.
        what: String,
        /// The bound.
        seconds: u64,
        /// The serial console log.
        console: PathBuf,
        /// Its last lines.
        console_tail: String,
    },
}

impl VmError {
    pub(crate) fn io(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        VmError::Io {
            what: what.into(),
            path: path.into(),
            source,
        }
    }
}
