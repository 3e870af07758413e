//! The kexec phase: the installer onto the target (uploaded or fetched there), then kexec into it.

use std::time::Instant;

use super::{Ctx, PhaseError};
use crate::events::Event;
use crate::kexec::{self, TarballInfo};
use crate::phase::Phase;
use crate::steps;

/// Downloads `$1` to `$2` on the target with curl or wget (`--kexec-fetch-on-target`).
const FETCH_SCRIPT: &str = "set -e; mkdir -p \"$(dirname \"$2\")\"; \
    if command -v curl >/dev/null; then curl -fsSL --retry 3 --connect-timeout 20 -o \"$2.part\" \"$1\"; \
    else wget -q -T 20 -O \"$2.part\" \"$1\"; fi; mv -f \"$2.part\" \"$2\"";

impl Ctx<'_, '_> {
    pub(super) fn upload_installer(
        &self,
        tarball: &TarballInfo,
        remote_tar: &str,
    ) -> Result<(), PhaseError> {
        let spec = self.spec;
        let t = spec.session.transport();
        let total = tarball.size_bytes;
        let mut last_pct = u64::MAX;
        let upload_started = Instant::now();
        let sent = kexec::upload(t, &tarball.path, remote_tar, &mut |done, total| {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            if pct / 10 != last_pct / 10 || done == total {
                last_pct = pct;
                self.emit(Event::Transfer {
                    host: spec.node.clone(),
                    phase: Phase::Kexec,
                    what: "installer upload".into(),
                    done,
                    total,
                });
            }
        })
        .map_err(|e| {
            PhaseError::from(e).context(format!("uploading the installer ({total} bytes)"))
        })?;
        if sent {
            self.progress(
                Phase::Kexec,
                format!(
                    "installer uploaded in {:.1} s",
                    upload_started.elapsed().as_secs_f64()
                ),
            );
        } else {
            self.progress(
                Phase::Kexec,
                "the installer is already on the target (same sha256), not sent again",
            );
        }
        Ok(())
    }

    pub(super) fn kexec(&self) -> Result<(), PhaseError> {
        let spec = self.spec;
        let k = spec.kexec.as_ref().ok_or(PhaseError::Missing(
            "the kexec phase needs an installer tarball (--kexec TARBALL|URL)",
        ))?;
        let t = spec.session.transport();
        let remote_tar = format!("{}/installer.tar", k.remote_dir);
        match (&k.fetch_url, &k.tarball) {
            (Some(url), _) => {
                self.progress(Phase::Kexec, format!("downloading {url} on the target"));
                let started = Instant::now();
                let script = FETCH_SCRIPT.to_string();
                steps::run(
                    t,
                    "downloading the installer on the target",
                    vec![
                        "sh".into(),
                        "-c".into(),
                        script,
                        "fetch".into(),
                        url.clone(),
                        remote_tar.clone(),
                    ],
                    None,
                )?;
                self.progress(
                    Phase::Kexec,
                    format!(
                        "installer downloaded in {:.1} s",
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            (None, Some(tarball)) => self.upload_installer(tarball, &remote_tar)?,
            (None, None) => {
                return Err(PhaseError::Missing(
                    "the kexec phase needs an installer tarball (--kexec TARBALL|URL)",
                ))
            }
        }
        // Reached under another name after kexec: the machine's host keys (the installer keeps them)
        // are recorded for it now, read over this authenticated connection, so checking stays strict.
        let host_keys = steps::own_host_keys(t, std::path::Path::new("/"))?;
        if let Some(name) = spec
            .session
            .prepare_post_kexec_login(&host_keys)
            .map_err(|e| {
                PhaseError::from(e).context("recording the host keys for the login after kexec")
            })?
        {
            self.progress(
                Phase::Kexec,
                format!(
                    "the machine's host keys recorded for {name}, where the installer will answer"
                ),
            );
        }
        let before = self.boot_id().ok_or(PhaseError::NoBootId("kexec"))?;
        steps::run(
            t,
            "starting kexec/run",
            vec![
                "sh".into(),
                "-c".into(),
                kexec::launch_script(&k.remote_dir, &remote_tar, k.extra_flags.as_deref()),
            ],
            None,
        )?;
        self.progress(
            Phase::Kexec,
            "kexec/run started; waiting for the old system to go away",
        );
        let start = Instant::now();
        let status = || {
            t.run(
                &[
                    "sh".into(),
                    "-c".into(),
                    kexec::status_script(&k.remote_dir),
                ],
                None,
            )
            .map(|o| o.stdout_str())
            .unwrap_or_default()
        };
        let mut check = || match kexec::parse_status(&status()) {
            Some(rc) if rc != 0 => Err(PhaseError::KexecRun { rc, log: status() }),
            _ => Ok(()),
        };
        let back = self
            .wait_gone(&before, spec.timeouts.kexec_down, "kexec/run", &mut check)
            .map_err(|e| match e {
                PhaseError::NotGone { seconds, after, .. } => PhaseError::NotGone {
                    seconds,
                    after,
                    details: format!(":\n{}", status()),
                },
                other => other,
            })?;
        spec.session.reset();
        // The installer only restores root's keys: a non-root login user does not exist there.
        spec.session.use_root_login();
        self.progress(
            Phase::Kexec,
            format!(
                "old system gone {:.1} s after kexec/run started; waiting for the installer's ssh",
                start.elapsed().as_secs_f64()
            ),
        );
        // Even when the old login already reached the installer (`back`), the login after kexec is the one
        // that counts from now on (root, maybe at another address): it must work before anything goes on.
        self.wait_ssh(Phase::Kexec, true, spec.timeouts.kexec_up)?;
        let up = start.elapsed();
        if back {
            tracing::debug!(node = %spec.node, "the installer answered the old login already");
        }
        spec.session.reset();
        let facts = nixpave_remote::gather_facts(spec.session.transport())?;
        if !facts.os.is_nixos_installer {
            return Err(PhaseError::NotInstaller {
                seconds: up.as_secs(),
                id: facts.os.id,
                variant: facts.os.variant_id,
                root_fstype: facts.root_fstype,
            });
        }
        self.progress(
            Phase::Kexec,
            format!(
                "installer up after {} s ({}, {} MiB RAM)",
                up.as_secs(),
                facts.os.pretty_name,
                facts.memory_bytes >> 20
            ),
        );
        Ok(())
    }
}
