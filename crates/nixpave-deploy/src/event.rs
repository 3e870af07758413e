//! What a deploy reports while it runs (for progress lines and `--json`) and when it is done.

use serde::Serialize;

/// The step a host is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening the master connection.
    Connect,
    /// Reading the host's current state.
    Probe,
    /// `--disk-update`: comparing the node's disk layout with its disks and applying the
    /// additive and growable changes (before anything is pushed or activated).
    Disk,
    /// Building or copying the closure.
    Push,
    /// Uploading keys.
    Keys,
    /// The agent is activating.
    Activate,
    /// Running health checks.
    HealthCheck,
    /// Confirming through a new connection.
    Confirm,
    /// Waiting for the agent's final record.
    Wait,
    /// Rebooting and waiting for the new boot.
    Reboot,
}

/// How a host's deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Activated and confirmed.
    Deployed,
    /// Already on the wanted generation; nothing done.
    Unchanged,
    /// Dry activation ran; the profile is untouched.
    DryActivated,
    /// The host rolled back to the previous generation.
    RolledBack,
    /// Something failed (see the message).
    Failed,
    /// Not started (max failures reached, or a canary failed).
    Skipped,
}

impl Outcome {
    /// True for outcomes that count as success.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Deployed | Outcome::Unchanged | Outcome::DryActivated
        )
    }
}

/// The result for one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Node name.
    pub host: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Generation of the (first) profile afterwards.
    pub generation: Option<u64>,
    /// Store path the (first) profile points at afterwards.
    pub path: Option<String>,
    /// Phase where it failed.
    pub failed_phase: Option<Phase>,
    /// It failed by refusing, for safety, before anything was changed on it (a destructive disk
    /// update): the command exits 3 when every failed host refused. Left out of JSON when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
    /// What happened, in one sentence (why it failed or rolled back).
    pub message: String,
    /// Last log lines of the host (agent log, command output) when it did not succeed.
    pub log_tail: Vec<String>,
}

impl HostReport {
    /// A report with only its outcome, wall time and message; the rest (generation, path,
    /// failed phase, log tail) is filled in by whoever knows it.
    pub fn new(
        host: impl Into<String>,
        outcome: Outcome,
        duration_ms: u64,
        message: String,
    ) -> HostReport {
        HostReport {
            host: host.into(),
            outcome,
            duration_ms,
            generation: None,
            path: None,
            failed_phase: None,
            refused: false,
            message,
            log_tail: Vec::new(),
        }
    }
}

/// Something that happened during a deploy.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The host entered a phase.
    Phase {
        /// Node name.
        host: String,
        /// The phase.
        phase: Phase,
    },
    /// A log line of the host.
    Log {
        /// Node name.
        host: String,
        /// The line.
        line: String,
    },
    /// How far the host's push is (paths, bytes), at most a few times a second. Renderers show it on a
    /// terminal only; `--json` leaves it out.
    Progress {
        /// Node name.
        host: String,
        /// E.g. `3/10 paths, 12.5/50.0 MiB`.
        text: String,
    },
    /// A wave of the rollout starts.
    Wave {
        /// Wave number, from 1.
        number: usize,
        /// Node names in it.
        hosts: Vec<String>,
        /// True for the canary wave.
        canary: bool,
    },
    /// `--disk-update`: how the node's disk layout compares with its disks, shown before
    /// anything is changed.
    DiskPlan {
        /// Node name.
        host: String,
        /// The classified differences, grouped by class, for humans.
        text: String,
        /// The same, for machines.
        update: nixpave_disk::planner::update::UpdatePlan,
    },
    /// A large flake evaluated in chunks (see [`crate::pipeline`]): `done` of `total` nodes are evaluated.
    Evaluated {
        /// Nodes evaluated so far.
        done: usize,
        /// Nodes listed.
        total: usize,
    },
    /// The host is done.
    Finished {
        /// Its report (its fields, `host` first among them, sit in the event itself).
        #[serde(flatten)]
        report: HostReport,
    },
}

/// Receives events (from several threads).
pub type EventSink<'a> = &'a (dyn Fn(Event) + Sync);
