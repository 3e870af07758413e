//! Progress events: every phase reports through them; the CLI renders them as lines or JSON.

use serde::Serialize;

use crate::phase::Phase;
use crate::preflight::Refusal;

/// Something that happened during an install. Serialised as one JSON object per line with
/// `--json` (`{"event":"phase_started","node":"web1","phase":"kexec"}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A phase begins.
    PhaseStarted {
        /// Node name.
        node: String,
        /// The phase.
        phase: Phase,
    },
    /// A phase is skipped (already done, not selected, or not needed).
    PhaseSkipped {
        /// Node name.
        node: String,
        /// The phase.
        phase: Phase,
        /// Why.
        reason: String,
    },
    /// A step inside a phase, for humans.
    Progress {
        /// Node name.
        node: String,
        /// The phase.
        phase: Phase,
        /// What is happening.
        message: String,
    },
    /// Bytes transferred so far out of a total (uploads).
    Transfer {
        /// Node name.
        node: String,
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
        /// Node name.
        node: String,
        /// The phase.
        phase: Phase,
        /// Its wall-clock time.
        seconds: f64,
    },
    /// Preflight refused; nothing was written.
    Refused {
        /// Node name.
        node: String,
        /// Every reason.
        refusals: Vec<Refusal>,
    },
    /// A phase failed.
    Failed {
        /// Node name.
        node: String,
        /// The phase.
        phase: Phase,
        /// The error, rendered.
        error: String,
    },
    /// The node is installed; per-phase times.
    Finished {
        /// Node name.
        node: String,
        /// Seconds per phase that ran, in order.
        timings: Vec<(Phase, f64)>,
        /// Total seconds.
        total_seconds: f64,
    },
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
        Event::PhaseStarted { node, phase } => format!("{node} [{phase}] started"),
        Event::PhaseSkipped {
            node,
            phase,
            reason,
        } => format!("{node} [{phase}] skipped: {reason}"),
        Event::Progress {
            node,
            phase,
            message,
        } => format!("{node} [{phase}] {message}"),
        Event::Transfer {
            node,
            phase,
            what,
            done,
            total,
        } => format!(
            "{node} [{phase}] {what}: {} / {} MiB ({}%)",
            done / (1 << 20),
            total / (1 << 20),
            if *total == 0 { 100 } else { done * 100 / total }
        ),
        Event::PhaseFinished {
            node,
            phase,
            seconds,
        } => format!("{node} [{phase}] done in {seconds:.1} s"),
        Event::Refused { node, refusals } => {
            let mut s = format!("{node} [preflight] refused, nothing was written:");
            for r in refusals {
                s.push_str("\n  - ");
                s.push_str(&r.to_string());
            }
            s
        }
        Event::Failed { node, phase, error } => format!("{node} [{phase}] FAILED: {error}"),
        Event::Finished {
            node,
            timings,
            total_seconds,
        } => {
            let parts: Vec<String> = timings
                .iter()
                .map(|(p, s)| format!("{p} {s:.1} s"))
                .collect();
            format!(
                "{node} installed in {total_seconds:.1} s ({})",
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
            node: "web1".into(),
            phase: Phase::Kexec,
            seconds: 55.25,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"phase_finished","node":"web1","phase":"kexec","seconds":55.25}"#
        );
        assert_eq!(render_line(&e), "web1 [kexec] done in 55.2 s");
        let t = Event::Transfer {
            node: "n".into(),
            phase: Phase::Kexec,
            what: "installer".into(),
            done: 64 << 20,
            total: 128 << 20,
        };
        assert_eq!(render_line(&t), "n [kexec] installer: 64 / 128 MiB (50%)");
    }
}
