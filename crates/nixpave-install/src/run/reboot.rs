//! The reboot phase: into the installed system.

use std::time::Instant;

use super::{Ctx, PhaseError};
use crate::phase::Phase;
use crate::steps;

impl Ctx<'_, '_> {
    pub(super) fn reboot(&self) -> Result<(), PhaseError> {
        let spec = self.spec;
        let before = self.boot_id().ok_or(PhaseError::NoBootId("rebooting"))?;
        steps::start_reboot(spec.session.transport(), &spec.root)?;
        self.progress(Phase::Reboot, "unmounted; rebooting");
        let started = Instant::now();
        self.wait_gone(&before, spec.timeouts.reboot_down, "`reboot`", &mut || {
            Ok(())
        })?;
        self.progress(
            Phase::Reboot,
            format!(
                "installer gone after {:.1} s",
                started.elapsed().as_secs_f64()
            ),
        );
        spec.session.reset();
        Ok(())
    }
}
