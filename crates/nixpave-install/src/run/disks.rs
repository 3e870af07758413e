//! The disk phase: the disk plan run on the target.

use super::{Ctx, PhaseError};
use crate::phase::Phase;
use crate::steps;

impl Ctx<'_, '_> {
    pub(super) fn disk(&self) -> Result<(), PhaseError> {
        let spec = self.spec;
        let d = spec
            .disk
            .as_ref()
            .ok_or(PhaseError::Missing(
                "the disk phase needs a layout (the flake's config.disko.devices or --disk-config FILE)",
            ))?;
        let t = spec.session.transport();
        if !d.keys.is_empty() {
            let landed = steps::upload_keys(t, &d.keys)?;
            for (path, fs) in landed {
                if steps::is_ram_fs(&fs) {
                    self.progress(
                        Phase::Disk,
                        format!("key {} written (mode 0600, in RAM)", path.display()),
                    );
                } else {
                    self.progress(
                        Phase::Disk,
                        format!("warning: key {} is on a {fs} filesystem, not in RAM; prefer /tmp or /run on the installer", path.display()),
                    );
                }
            }
        }
        spec.session.reset();
        self.inst
            .disk_engine
            .apply(t, &d.plan, &mut |m| self.progress(Phase::Disk, m))
            .map_err(PhaseError::Disk)
    }
}
