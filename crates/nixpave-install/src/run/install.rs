//! The install phase: the system closure copied and activated under the mount root.

use std::time::Instant;

use super::{Ctx, PhaseError};
use crate::phase::Phase;
use crate::steps::{self, CopySpec};

impl Ctx<'_, '_> {
    pub(super) fn install(&self) -> Result<(), PhaseError> {
        let spec = self.spec;
        let t = spec.session.transport();
        let root = &spec.root;
        if !steps::is_mounted(t, root)? {
            match spec.disk.as_ref().and_then(|d| d.mount_plan.as_ref()) {
                Some(mount) => {
                    self.progress(
                        Phase::Install,
                        format!("nothing mounted at {}; mounting the layout", root.display()),
                    );
                    self.inst
                        .disk_engine
                        .apply(t, mount, &mut |m| self.progress(Phase::Install, m))
                        .map_err(PhaseError::Disk)?;
                }
                None => return Err(PhaseError::NotMounted(root.display().to_string())),
            }
        }
        let copy = CopySpec {
            store_url: spec.session.store_url(root),
            env: spec.session.nix_env(),
            substitute_on_destination: spec.substitute_on_destination,
            nix_args: spec.nix_args.clone(),
        };
        if spec.substitute_on_destination && !spec.substituters.is_empty() {
            let path = steps::write_substituters(t, &spec.substituters)?;
            self.progress(
                Phase::Install,
                format!(
                    "the installer's nix also substitutes from {} ({} trusted keys), set in {path}",
                    if spec.substituters.substituters.is_empty() {
                        "its own substituters".to_string()
                    } else {
                        spec.substituters.substituters.join(" ")
                    },
                    spec.substituters.trusted_public_keys.len()
                ),
            );
        }
        match &spec.build_on_target {
            None => {
                self.progress(
                    Phase::Install,
                    format!("copying {} into {}", spec.toplevel, copy.store_url),
                );
                let started = Instant::now();
                steps::copy_closure(&copy, &spec.toplevel)?;
                self.progress(
                    Phase::Install,
                    format!("closure copied in {:.1} s", started.elapsed().as_secs_f64()),
                );
            }
            Some(drv) => {
                self.progress(
                    Phase::Install,
                    format!("copying {drv} and building it on the target"),
                );
                let mut drv_copy = copy.clone();
                drv_copy.nix_args.push("--derivation".into());
                steps::copy_closure(&drv_copy, drv)?;
                steps::run(
                    t,
                    "building the system on the target",
                    vec![
                        "nix-store".into(),
                        "--store".into(),
                        root.display().to_string(),
                        "--realise".into(),
                        drv.clone(),
                    ],
                    None,
                )?;
            }
        }
        if let Some(dir) = &spec.extra_files {
            let n = steps::copy_extra_files(t, dir, root)?;
            self.progress(
                Phase::Install,
                format!("copied {n} extra entries from {}", dir.display()),
            );
        }
        steps::chown(t, root, &spec.chown)?;
        // Host identity across the reboot: the new system's own keys when it brings them (they are
        // recorded as the host's keys), else the installer's, which are the machine's original ones.
        let own_keys = steps::own_host_keys(t, root)?;
        if !own_keys.is_empty() {
            self.progress(
                Phase::Install,
                format!(
                    "the new system brings its own host keys ({}); they are recorded as the host's once the installer is gone",
                    own_keys
                        .iter()
                        .filter_map(|k| k.split_whitespace().next())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            *self.new_host_keys.lock().unwrap_or_else(|p| p.into_inner()) = own_keys;
        } else if spec.copy_host_keys {
            steps::copy_host_keys(t, root)?;
            self.progress(
                Phase::Install,
                "copied the machine's ssh host keys (kept by the installer) into the new system",
            );
        }
        let method = steps::install_method(t)?;
        let started = Instant::now();
        let out = match method {
            steps::InstallMethod::NixosInstall => {
                self.progress(
                    Phase::Install,
                    "installing with the installer's nixos-install",
                );
                steps::install_system_nixos_install(t, root, &spec.toplevel)?
            }
            steps::InstallMethod::Own => {
                self.progress(
                    Phase::Install,
                    "no nixos-install on the target: setting the system profile, activating and installing the bootloader by ourselves",
                );
                steps::set_profile(t, root, &spec.toplevel)?;
                steps::install_system_own(t, root)?
            }
        };
        for line in out.lines().take(20) {
            self.progress(Phase::Install, line.to_string());
        }
        self.progress(
            Phase::Install,
            format!(
                "system and bootloader installed in {:.1} s",
                started.elapsed().as_secs_f64()
            ),
        );
        Ok(())
    }
}
