//! Progress events: every phase reports through them; the CLI renders them as lines or JSON.

use serde::Serialize;

use crate::phase::Phase;
use crate::preflight::Refusal;

/// Something that happened during an install. Serialised as one JSON object per line with
/// `--json` in the CLI's one envelope (README, "JSON output"): the kind in `event`, the host in
/// `host`, times as integer milliseconds in `*_ms` fields
/// (`{"event":"phase_finished","host":"web1","phase":"kexec","duration_ms":55250}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A phase begins.
    PhaseStarted {
        /// The host (the node's name).
        host: String,
        /// The phase.
        phase: Phase,
    },
    /// A phase is skipped (already done, not selected, or not needed).
    PhaseSkipped {
        /// The host (the node's name).
        host: String,
        /// The phase.
        phase: Phase,
        /// Why.
        reason: String,
    },
    /// A step inside a phase, for humans.
    Progress {
        /// The host (the node's name).
        host: String,
        /// The phase.
        phase: Phase,
        /// What is happening.
        message: String,
    },
    /// Bytes transferred so far out of a total (uploads).
    Transfer {
        /// The host (the node's name).
        host: String,
        /// The phase.
        phase: Phase,
        /// What is transferred.
        what: String,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// A phase finished.
    PhaseFinished {
        /// The host (the node's name).
        host: String,
        /// The phase.
        phase: Phase,
        /// Its wall-clock time in milliseconds.
        duration_ms: u64,
    },
    /// Preflight refused; nothing was written.
    Refused {
        /// The host (the node's name).
        host: String,
        /// Every reason.
        refusals: Vec<Refusal>,
    },
    /// A phase failed.
    Failed {
        /// The host (the node's name).
        host: String,
        /// The phase.
        phase: Phase,
        /// The error, rendered.
        error: String,
    },
    /// The node is installed; per-phase times.
    Finished {
        /// The host (the node's name).
        host: String,
        /// Time of each phase that ran, in order.
        timings: Vec<PhaseTiming>,
        /// Total milliseconds, preflight included.
        total_ms: u64,
    },
}

/// How long one phase took (a row of [`Event::Finished`]'s `timings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseTiming {
    /// The phase.
    pub phase: Phase,
    /// Its wall-clock time in milliseconds.
    pub duration_ms: u64,
}

/// Milliseconds of a duration, as the JSON envelope carries times (saturating).
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Formats milliseconds as seconds with one decimal, for human lines.
fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Where events go. Must be shareable between the threads of a parallel install.
pub trait Reporter: Send + Sync {
    /// Receives one event.
    fn report(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync> Reporter for F {
    fn report(&self, event: &Event) {
        self(event)
    }
}

/// Renders an event as one human line (`web1 [kexec] waiting for ssh to come back`).
pub fn render_line(event: &Event) -> String {
    match event {
        Event::PhaseStarted { host, phase } => format!("{host} [{phase}] started"),
        Event::PhaseSkipped {
            host,
            phase,
            reason,
        } => format!("{host} [{phase}] skipped: {reason}"),
        Event::Progress {
            host,
            phase,
            message,
        } => format!("{host} [{phase}] {message}"),
        Event::Transfer {
            host,
            phase,
            what,
            done,
            total,
        } => format!(
            "{host} [{phase}] {what}: {} / {} MiB ({}%)",
            done / (1 << 20),
            total / (1 << 20),
            if *total == 0 { 100 } else { done * 100 / total }
        ),
        Event::PhaseFinished {
            host,
            phase,
            duration_ms,
        } => format!("{host} [{phase}] done in {}", secs(*duration_ms)),
        Event::Refused { host, refusals } => {
            let mut s = format!("{host} [preflight] refused, nothing was written:");
            for r in refusals {
                s.push_str("\n  - ");
                s.push_str(&r.to_string());
            }
            s
        }
        Event::Failed { host, phase, error } => format!("{host} [{phase}] FAILED: {error}"),
        Event::Finished {
            host,
            timings,
            total_ms,
        } => {
            let parts: Vec<String> = timings
                .iter()
                .map(|t| format!("{} {}", t.phase, secs(t.duration_ms)))
                .collect();
            format!(
                "{host} installed in {} ({})",
                secs(*total_ms),
                parts.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_line_forms() {
        let e = Event::PhaseFinished {
            host: "web1".into(),
            phase: Phase::Kexec,
            duration_ms: 55_250,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"phase_finished","host":"web1","phase":"kexec","duration_ms":55250}"#
        );
        assert_eq!(render_line(&e), "web1 [kexec] done in 55.2 s");
        let t = Event::Transfer {
            host: "n".into(),
            phase: Phase::Kexec,
            what: "installer".into(),
            done: 64 << 20,
            total: 128 << 20,
        };
        assert_eq!(render_line(&t), "n [kexec] installer: 64 / 128 MiB (50%)");
    }
}
