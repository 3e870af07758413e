//! Why applying a plan stopped.

use nixpave_remote::TransportError;

/// A reason to refuse touching a disk (nothing was changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The disk concerned.
    pub disk: String,
    /// What is in the way, e.g. `/dev/sda2 is mounted at /home (outside /mnt)`.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.disk, self.reason)
    }
}

/// One operation that failed, with everything needed to understand and recover.
#[derive(Debug, Clone)]
pub struct OpFailure {
    /// Host the plan ran on.
    pub host: String,
    /// 1-based position of the failing step.
    pub index: usize,
    /// Number of steps.
    pub total: usize,
    /// The step's description.
    pub description: String,
    /// The exact command (argv after path resolution, shell-quoted for display).
    pub command: String,
    /// Exit status (`None`: killed by a signal or could not start).
    pub status: Option<i32>,
    /// Last lines of the command's standard error (or why it could not start, or, when
    /// `stopped` is set, why nixpave stopped at this step).
    pub stderr_tail: String,
    /// True when nixpave itself stopped at this step (a device that does not resolve, a
    /// partition table the kernel does not take) rather than the command failing.
    pub stopped: bool,
    /// Descriptions of the steps that ran before, in order.
    pub done: Vec<String>,
    /// A fresh summary of the plan's disks (lsblk/blkid), or why it could not be taken.
    pub disk_state: String,
}

impl std::fmt::Display for OpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            _ if self.stopped => "stopped by nixpave (reason below)".to_string(),
            Some(code) => format!("exit status {code}"),
            None => "no exit status (signal or could not start)".into(),
        };
        writeln!(
            f,
            "{}: step {}/{} failed: {}",
            self.host, self.index, self.total, self.description
        )?;
        writeln!(f, "  command: {}", self.command)?;
        writeln!(f, "  result:  {status}")?;
        if !self.stderr_tail.trim().is_empty() {
            writeln!(f, "  {}:", if self.stopped { "reason" } else { "stderr" })?;
            for line in self.stderr_tail.lines() {
                writeln!(f, "    {line}")?;
            }
        }
        if self.done.is_empty() {
            writeln!(
                f,
                "  already done: nothing (the failing step was the first)"
            )?;
        } else {
            writeln!(f, "  already done ({} steps):", self.done.len())?;
            for step in &self.done {
                writeln!(f, "    - {step}")?;
            }
        }
        writeln!(f, "  disks now:")?;
        for line in self.disk_state.lines() {
            writeln!(f, "    {line}")?;
        }
        write!(
            f,
            "  next: fix the cause above, then run the same command again — steps that are \
             already done are skipped by their guards (format and mount are idempotent); \
             to start from blank disks use --mode destroy,format,mount"
        )
    }
}

/// Errors of [`crate::exec`].
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Refused for safety before anything was changed.
    #[error("{host}: refusing to touch the disks, nothing was changed:\n{}\n  {hint}",
        reasons.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n"))]
    Refused {
        /// Host the plan was for.
        host: String,
        /// Every reason found.
        reasons: Vec<Refusal>,
        /// What the user can do about it.
        hint: String,
    },
    /// The plan wipes disks and nobody confirmed it.
    #[error("{host}: the plan wipes disks and was not confirmed, nothing was changed: {why}")]
    NotConfirmed {
        /// Host the plan was for.
        host: String,
        /// Why no confirmation was possible or what was answered.
        why: String,
    },
    /// A disk of the layout does not exist on the machine (nothing was changed).
    #[error(
        "{host}: the layout's disk {disk} does not exist here ({reason}); nothing was changed. \
         Check the device path or override it with --disk NAME=DEVICE"
    )]
    MissingDisk {
        /// Host.
        host: String,
        /// The disk path from the layout.
        disk: String,
        /// What was looked at.
        reason: String,
    },
    /// A read-only probe failed (lsblk, blkid, …).
    #[error("{host}: probing the disks failed: `{command}` (exit {status:?}): {stderr}")]
    Probe {
        /// Host probed.
        host: String,
        /// The probe command.
        command: String,
        /// Its exit status.
        status: Option<i32>,
        /// Tail of its standard error.
        stderr: String,
    },
    /// A device path of the plan does not lead to a device.
    #[error("{host}: step {index} ({description}): cannot find `{path}`: {reason}")]
    Resolve {
        /// Host.
        host: String,
        /// 1-based step.
        index: usize,
        /// The step's description.
        description: String,
        /// The path that could not be resolved.
        path: String,
        /// Why.
        reason: String,
    },
    /// After a partition-table change the kernel did not show the expected partitions in time.
    #[error(
        "{host}: the kernel did not pick up the new partition table of {disk} within {seconds} s \
         (on disk: {expected}; kernel: {kernel}). A partition is probably still in use (mounted, \
         also in another mount namespace, an active swap, or held open); free it and run \
         `partx -u {disk}`, or reboot, then run the same command again"
    )]
    Rescan {
        /// Host.
        host: String,
        /// The disk.
        disk: String,
        /// Partitions in the on-disk table.
        expected: String,
        /// Partitions the kernel shows.
        kernel: String,
        /// How long we waited.
        seconds: u64,
    },
    /// An operation of the plan failed.
    #[error("{0}")]
    Op(Box<OpFailure>),
    /// Interrupted (Ctrl-C / SIGTERM) between or during steps.
    #[error(
        "{host}: interrupted after {} of {total} steps{}\n  disks now:\n{}\n  next: run the same \
         command again to finish — steps that are already done are skipped",
        done.len(),
        done.last().map(|d| format!(" (last done: {d})")).unwrap_or_default(),
        disk_state.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
    )]
    Interrupted {
        /// Host.
        host: String,
        /// Number of steps.
        total: usize,
        /// Descriptions of the steps that completed.
        done: Vec<String>,
        /// A fresh summary of the plan's disks.
        disk_state: String,
    },
    /// A secret could not be obtained for an operation's standard input.
    #[error("{host}: step {index} ({description}): {reason}")]
    Stdin {
        /// Host.
        host: String,
        /// 1-based step.
        index: usize,
        /// The step's description.
        description: String,
        /// Why.
        reason: String,
    },
    /// The transport failed (connection lost, program missing, …).
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl ApplyError {
    /// True when nixpave refused (safety, no confirmation, failed preflight) and nothing was
    /// changed (exit code 3).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ApplyError::Refused { .. }
                | ApplyError::NotConfirmed { .. }
                | ApplyError::MissingDisk { .. }
        )
    }
}
