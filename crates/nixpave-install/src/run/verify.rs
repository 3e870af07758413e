//! The verify phase: the new system answers, with the host keys it brought.

use super::{Ctx, PhaseError};
use crate::phase::Phase;
use crate::state::NodeState;
use crate::steps;

impl Ctx<'_, '_> {
    pub(super) fn verify(&self) -> Result<(), PhaseError> {
        let spec = self.spec;
        let up = self.wait_ssh(Phase::Verify, true, spec.timeouts.verify_up)?;
        spec.session.reset();
        let current = steps::current_system(spec.session.transport())?;
        if current != spec.toplevel {
            return Err(PhaseError::WrongSystem {
                booted: current,
                expected: spec.toplevel.clone(),
            });
        }
        self.progress(
            Phase::Verify,
            format!("{current} is running (ssh back after {} s)", up.as_secs()),
        );
        Ok(())
    }

    /// Before verify: the host keys the new system brought are recorded as the host's (the
    /// installer, which still had the machine's old keys, is gone by then).
    pub(super) fn record_new_host_keys(
        &self,
        phase: Phase,
        st: &NodeState,
    ) -> Result<(), PhaseError> {
        if phase != Phase::Verify || st.new_host_keys.is_empty() {
            return Ok(());
        }
        let file = self
            .spec
            .session
            .record_host_keys(&st.new_host_keys)
            .map_err(|e| PhaseError::from(e).context("recording the new system's host keys"))?;
        self.progress(
            Phase::Verify,
            format!("the new system's host keys recorded in {file}"),
        );
        Ok(())
    }
}
