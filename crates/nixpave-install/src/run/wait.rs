//! Waiting for the target: ssh up or down, the old boot gone.

use std::time::{Duration, Instant};

use super::{Ctx, PhaseError};
use crate::phase::Phase;

impl Ctx<'_, '_> {
    /// Probes until ssh answers (`want_up`) or stops answering, within `limit`.
    pub(super) fn wait_ssh(
        &self,
        phase: Phase,
        want_up: bool,
        limit: Duration,
    ) -> Result<Duration, PhaseError> {
        let start = Instant::now();
        let mut last = String::new();
        let mut announced = Instant::now() - Duration::from_secs(3600);
        loop {
            let r = self.spec.session.try_login(self.spec.timeouts.probe);
            match (r, want_up) {
                (Ok(()), true) | (Err(_), false) => return Ok(start.elapsed()),
                // A changed or unknown host key will not fix itself: fail at once, strict checking stays on.
                (Err(e), true) if e.is_refusal() => return Err(PhaseError::HostKeyRefused(e)),
                (Err(e), true) => last = e.to_string(),
                (Ok(()), false) => {}
            }
            if start.elapsed() >= limit {
                return Err(if want_up {
                    PhaseError::NotBack {
                        seconds: limit.as_secs(),
                        last: if last.is_empty() {
                            "none".into()
                        } else {
                            last.trim().to_string()
                        },
                    }
                } else {
                    PhaseError::NotGone {
                        seconds: limit.as_secs(),
                        after: "the wait",
                        details: String::new(),
                    }
                });
            }
            if announced.elapsed() >= Duration::from_secs(15) {
                self.progress(
                    phase,
                    format!(
                        "waiting for ssh to {} ({} s / {} s)",
                        if want_up { "come back" } else { "go away" },
                        start.elapsed().as_secs(),
                        limit.as_secs()
                    ),
                );
                announced = Instant::now();
            }
            std::thread::sleep(self.spec.timeouts.poll);
        }
    }

    /// The running kernel's boot id (`None` when the target does not answer).
    pub(super) fn boot_id(&self) -> Option<String> {
        let out = self
            .spec
            .session
            .transport()
            .run(
                &["cat".into(), "/proc/sys/kernel/random/boot_id".into()],
                None,
            )
            .ok()?;
        out.success().then(|| out.stdout_str().trim().to_string())
    }

    /// Waits (bounded) until the system with boot id `before` is gone: ssh stops answering, or
    /// answers with another boot id (a fast reboot can hide the downtime from ssh probes, as
    /// user-mode networking holds connections open while the guest reboots). `check` runs on
    /// every round while the old system still answers and may end the wait with an error.
    /// Returns whether the new system already answers.
    pub(super) fn wait_gone(
        &self,
        before: &str,
        limit: Duration,
        after: &'static str,
        check: &mut dyn FnMut() -> Result<(), PhaseError>,
    ) -> Result<bool, PhaseError> {
        let start = Instant::now();
        loop {
            match self.boot_id() {
                None => return Ok(false),
                Some(id) if id != before => return Ok(true),
                Some(_) => check()?,
            }
            if start.elapsed() >= limit {
                return Err(PhaseError::NotGone {
                    seconds: limit.as_secs(),
                    after,
                    details: String::new(),
                });
            }
            std::thread::sleep(self.spec.timeouts.poll);
        }
    }
}
