//! The orchestration: preflight, then the scheduled phases, recording state after each.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nixpave_disk::Plan;

use crate::disk::DiskEngine;
use crate::events::{Event, Reporter};
use crate::kexec::{self, TarballInfo};
use crate::phase::{Phase, PhaseSet};
use crate::preflight::{self, DiskNeed, Observed, RamPolicy, Refusal, Requirements};
use crate::state::{self, NodeState, ScheduleError, StateError, StateStore};
use crate::steps::{self, Chown, CopySpec, EncryptionKey};
use nixpave_remote::Connection;

/// Downloads `$1` to `$2` on the target with curl or wget (`--kexec-fetch-on-target`).
const FETCH_SCRIPT: &str = "set -e; mkdir -p \"$(dirname \"$2\")\"; \
    if command -v curl >/dev/null; then curl -fsSL --retry 3 --connect-timeout 20 -o \"$2.part\" \"$1\"; \
    else wget -q -T 20 -O \"$2.part\" \"$1\"; fi; mv -f \"$2.part\" \"$2\"";

/// Bounds of every wait (no wait is unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long the old system may take to go away after `kexec/run`.
    pub kexec_down: Duration,
    /// How long the installer may take to answer ssh after kexec.
    pub kexec_up: Duration,
    /// How long the installer may take to go away after `reboot`.
    pub reboot_down: Duration,
    /// How long the installed system may take to answer ssh after the reboot.
    pub verify_up: Duration,
    /// Pause between probes.
    pub poll: Duration,
    /// Limit of one probe.
    pub probe: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            kexec_down: Duration::from_secs(120),
            kexec_up: Duration::from_secs(600),
            reboot_down: Duration::from_secs(120),
            verify_up: Duration::from_secs(600),
            poll: Duration::from_secs(2),
            probe: Duration::from_secs(10),
        }
    }
}

/// The kexec phase's input.
#[derive(Debug, Clone)]
pub struct KexecSpec {
    /// The tarball on this machine (already fetched); `None` with `fetch_url`.
    pub tarball: Option<TarballInfo>,
    /// Download the tarball on the target from this URL instead of uploading it
    /// (`--kexec-fetch-on-target`; needs curl or wget there).
    pub fetch_url: Option<String>,
    /// Directory on the target where it is uploaded and unpacked.
    pub remote_dir: String,
    /// `--kexec-extra-flags`: handed to `kexec/run` as `--kexec-extra-flags FLAGS` (nixos-images'
    /// interface), which adds them to its `kexec --load` and `kexec -e`.
    pub extra_flags: Option<String>,
}

/// The disk phase's input.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// The plan the disk phase applies (destroy, format, mount).
    pub plan: Plan,
    /// The plan that only mounts (used when a resumed install finds nothing mounted).
    pub mount_plan: Option<Plan>,
    /// The disks the layout needs, for preflight.
    pub needs: Vec<DiskNeed>,
    /// Disk-encryption keys written to the installer's RAM before the plan runs.
    pub keys: Vec<EncryptionKey>,
}

/// Everything needed to install one node.
pub struct NodeSpec {
    /// Node name.
    pub node: String,
    /// How to reach it.
    pub session: Box<dyn Connection>,
    /// The system closure (built locally).
    pub toplevel: String,
    /// `uname -m` the closure is built for.
    pub arch: String,
    /// The selected phases.
    pub phases: PhaseSet,
    /// Continue from the state file.
    pub resume: bool,
    /// The installer, when the kexec phase may run.
    pub kexec: Option<KexecSpec>,
    /// The disk layout, when the disk phase may run.
    pub disk: Option<DiskSpec>,
    /// Where the new system's root is mounted on the target (`/mnt`).
    pub root: PathBuf,
    /// `--extra-files DIR`.
    pub extra_files: Option<PathBuf>,
    /// `--chown PATH UID:GID` pairs.
    pub chown: Vec<Chown>,
    /// `--copy-host-keys`.
    pub copy_host_keys: bool,
    /// `--substitute-on-destination`.
    pub substitute_on_destination: bool,
    /// Substituters (and their keys) the installer's nix adds when substituting on the destination.
    pub substituters: steps::SubstituterSettings,
    /// `--build-on target`: the derivation to realise on the target instead of copying outputs.
    pub build_on_target: Option<String>,
    /// `--force-kexec`: kexec even when the target already runs a NixOS installer.
    pub force_kexec: bool,
    /// Extra `nix` arguments for `nix copy` (`--option K V`, `-L`, `--show-trace`).
    pub nix_args: Vec<String>,
    /// Every wait's bound.
    pub timeouts: Timeouts,
    /// The RAM rule for the installer.
    pub ram: RamPolicy,
}

/// Shared by all nodes of one run.
pub struct Installer<'a> {
    /// Where per-node state is kept.
    pub state: StateStore,
    /// Where events go.
    pub reporter: &'a dyn Reporter,
    /// The disk engine.
    pub disk_engine: &'a dyn DiskEngine,
    /// Asked before a plan that wipes disks runs; `false` refuses.
    pub confirm: &'a (dyn Fn(&str, &Plan) -> bool + Sync),
}

/// The outcome of a finished install.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Node name.
    pub node: String,
    /// Seconds per phase that ran.
    pub timings: Vec<(Phase, f64)>,
    /// Phases that were skipped (done before, or not needed).
    pub skipped: Vec<Phase>,
    /// Total seconds, preflight included.
    pub total_seconds: f64,
}

/// Why a phase failed. Typed, so callers decide on the kind (a refused host key, a timeout, a
/// failed command) without reading messages.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// A command of the phase failed, or could not run.
    #[error(transparent)]
    Step(#[from] steps::StepError),
    /// The connection failed.
    #[error(transparent)]
    Transport(#[from] nixpave_remote::TransportError),
    /// The facts could not be gathered.
    #[error(transparent)]
    Facts(#[from] nixpave_remote::FactsError),
    /// Something the phase needs was not given.
    #[error("{0}")]
    Missing(&'static str),
    /// ssh answers, but with a host key that is refused: waiting would not change it.
    #[error(
        "ssh answers but refuses the host key: {0}\n  the system that answers does not have the machine's host keys \
         (they are copied into the new system unless the flake or --extra-files brings its own, or \
         --no-copy-host-keys was given)"
    )]
    HostKeyRefused(#[source] nixpave_remote::TransportError),
    /// ssh did not come back in time.
    #[error("ssh did not come back within {seconds} s (last error: {last}); check the machine's console")]
    NotBack {
        /// The limit.
        seconds: u64,
        /// The last probe's error.
        last: String,
    },
    /// The old system still runs after kexec or reboot.
    #[error("the target still runs the same system {seconds} s after {after}{details}")]
    NotGone {
        /// The limit.
        seconds: u64,
        /// `kexec/run` or `reboot`.
        after: &'static str,
        /// The run's log, when there is one.
        details: String,
    },
    /// The target's boot id could not be read.
    #[error("cannot read the target's boot id before {0}")]
    NoBootId(&'static str),
    /// `kexec/run` failed on the old system.
    #[error("kexec/run exited with {rc}; the target still runs its old system:\n{log}")]
    KexecRun {
        /// Its exit status.
        rc: i32,
        /// Its log and the kernel log tail.
        log: String,
    },
    /// After kexec the target is not a NixOS installer.
    #[error("the target came back ({seconds} s) but does not run a NixOS installer (os-release ID={id}, VARIANT_ID={variant}, / is {root_fstype}): kexec failed and it rebooted into its old system")]
    NotInstaller {
        /// Seconds until it answered.
        seconds: u64,
        /// os-release `ID`.
        id: String,
        /// os-release `VARIANT_ID`.
        variant: String,
        /// Filesystem of `/`.
        root_fstype: String,
    },
    /// The disk engine failed.
    #[error("{0}")]
    Disk(String),
    /// Nothing is mounted where the new root should be.
    #[error("nothing is mounted at {0} on the target; run the disk phase first (--phases disk,install,…)")]
    NotMounted(String),
    /// The machine booted another system than the installed one.
    #[error("the target booted {booted}, not the installed {expected}: the bootloader did not pick the new system")]
    WrongSystem {
        /// What `/run/current-system` is.
        booted: String,
        /// The installed toplevel.
        expected: String,
    },
    /// The install thread panicked (a bug).
    #[error("internal error: the install thread panicked")]
    Panicked,
    /// A step failed; what it was doing comes first.
    #[error("{what}: {source}")]
    Context {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<PhaseError>,
    },
}

impl PhaseError {
    fn context(self, what: impl Into<String>) -> PhaseError {
        PhaseError::Context {
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// True when the failure is a refused host key (anywhere in the chain).
    pub fn is_host_key_refusal(&self) -> bool {
        match self {
            PhaseError::HostKeyRefused(_) => true,
            PhaseError::Transport(e) => e.is_refusal(),
            PhaseError::Context { source, .. } => source.is_host_key_refusal(),
            _ => false,
        }
    }
}

/// What kind of failure, for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Bad input; nothing changed.
    Usage,
    /// Refused for safety; nothing changed.
    Refused,
    /// An operation failed.
    Failed,
}

/// An install that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Preflight refused.
    #[error("{node}: preflight refused, nothing was written:\n  - {}", refusals.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n  - "))]
    Refused {
        /// Node name.
        node: String,
        /// Every reason.
        refusals: Vec<Refusal>,
    },
    /// The destroy confirmation was not given.
    #[error("{node}: the disk plan wipes disks and was not confirmed; nothing was written (answer the prompt, or pass --yes-wipe-all-disks when there is no terminal)")]
    NotConfirmed {
        /// Node name.
        node: String,
    },
    /// Wrong or missing input.
    #[error("{node}: {message}")]
    Input {
        /// Node name.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// Deciding what to resume failed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A phase failed.
    #[error("{node} [{phase}] failed: {error}\n  left behind: {left}\n  next: {next}")]
    Phase {
        /// Node name.
        node: String,
        /// The phase.
        phase: Phase,
        /// What failed and why.
        error: Box<PhaseError>,
        /// The state the target is in.
        left: String,
        /// What to do.
        next: String,
    },
}

impl InstallError {
    /// The class of failure, for the exit code.
    pub fn kind(&self) -> FailureKind {
        match self {
            InstallError::Refused { .. } | InstallError::NotConfirmed { .. } => {
                FailureKind::Refused
            }
            InstallError::Input { .. } | InstallError::Schedule(_) => FailureKind::Usage,
            // A refused host key is a refusal for safety, not a broken operation.
            InstallError::Phase { error, .. } if error.is_host_key_refusal() => {
                FailureKind::Refused
            }
            InstallError::State(_) | InstallError::Phase { .. } => FailureKind::Failed,
        }
    }
}

fn left_behind(phase: Phase, root: &std::path::Path) -> String {
    match phase {
        Phase::Preflight => "nothing was written".into(),
        Phase::Kexec => {
            "the disks are untouched; the target runs its old system, or is booting the installer"
                .into()
        }
        Phase::Disk => {
            "the installer runs in RAM; the disks may be partly partitioned or formatted".into()
        }
        Phase::Install => format!(
            "the disks are formatted and mounted at {}; the system may be partly copied",
            root.display()
        ),
        Phase::Reboot => "the system is installed; the target may be rebooting".into(),
        Phase::Verify => "the system is installed and the target was rebooted".into(),
    }
}

/// Context of one node's run.
struct Ctx<'a, 'b> {
    spec: &'b NodeSpec,
    inst: &'b Installer<'a>,
    /// The new system's own host keys, found by the install phase (kept in the state file).
    new_host_keys: std::sync::Mutex<Vec<String>>,
}

impl Ctx<'_, '_> {
    fn emit(&self, e: Event) {
        self.inst.reporter.report(&e);
    }

    fn progress(&self, phase: Phase, message: impl Into<String>) {
        self.emit(Event::Progress {
            node: self.spec.node.clone(),
            phase,
            message: message.into(),
        });
    }

    /// Probes until ssh answers (`want_up`) or stops answering, within `limit`.
    fn wait_ssh(
        &self,
        phase: Phase,
        want_up: bool,
        limit: Duration,
    ) -> Result<Duration, PhaseError> {
        let start = Instant::now();
        let mut last = String::new();
        let mut announced = Instant::now() - Duration::from_secs(3600);
        loop {
            let r = self.spec.session.probe(self.spec.timeouts.probe);
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
    fn boot_id(&self) -> Option<String> {
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
    fn wait_gone(
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

    fn upload_installer(&self, tarball: &TarballInfo, remote_tar: &str) -> Result<(), PhaseError> {
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
                    node: spec.node.clone(),
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

    fn kexec(&self) -> Result<(), PhaseError> {
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

    fn disk(&self) -> Result<(), PhaseError> {
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

    fn install(&self) -> Result<(), PhaseError> {
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

    fn reboot(&self) -> Result<(), PhaseError> {
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

    fn verify(&self) -> Result<(), PhaseError> {
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
    fn record_new_host_keys(&self, phase: Phase, st: &NodeState) -> Result<(), PhaseError> {
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

    fn run_phase(&self, phase: Phase) -> Result<(), PhaseError> {
        match phase {
            Phase::Preflight => Ok(()),
            Phase::Kexec => self.kexec(),
            Phase::Disk => self.disk(),
            Phase::Install => self.install(),
            Phase::Reboot => self.reboot(),
            Phase::Verify => self.verify(),
        }
    }

    fn preflight(&self, schedule: &[Phase]) -> Result<(Observed, bool), InstallError> {
        let spec = self.spec;
        let node = spec.node.clone();
        let devices: Vec<String> = spec
            .disk
            .as_ref()
            .map(|d| d.needs.iter().map(|n| n.device.clone()).collect())
            .unwrap_or_default();
        let facts = preflight::observe(spec.session.transport(), &devices).map_err(|e| {
            InstallError::Phase {
                node: node.clone(),
                phase: Phase::Preflight,
                error: Box::new(PhaseError::from(e).context("gathering facts")),
                left: left_behind(Phase::Preflight, &spec.root),
                next: "check that `ssh` to the target works with the same options".into(),
            }
        })?;
        let kexec_needed =
            schedule.contains(&Phase::Kexec) && (spec.force_kexec || !facts.is_installer());
        if kexec_needed && spec.kexec.is_none() {
            return Err(InstallError::Input {
                node,
                message: "the target is not a NixOS installer and no installer tarball was given: pass --kexec TARBALL|URL, or leave kexec out of --phases".into(),
            });
        }
        let disk_runs = schedule.contains(&Phase::Disk);
        if disk_runs && spec.disk.is_none() {
            return Err(InstallError::Input {
                node,
                message: "the disk phase needs a layout: the flake's config.disko.devices or --disk-config FILE".into(),
            });
        }
        let req = Requirements {
            kexec: kexec_needed,
            disk: disk_runs,
            reboot: schedule.contains(&Phase::Reboot),
            initrd_bytes: spec
                .kexec
                .as_ref()
                .and_then(|k| k.tarball.as_ref())
                .map(|t| t.initrd_bytes),
            ram: spec.ram,
            arch: spec.arch.clone(),
            disks: if disk_runs {
                spec.disk
                    .as_ref()
                    .map(|d| d.needs.clone())
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
        };
        let refusals = preflight::check(&facts, &req);
        if !refusals.is_empty() {
            self.emit(Event::Refused {
                node: node.clone(),
                refusals: refusals.clone(),
            });
            return Err(InstallError::Refused { node, refusals });
        }
        if disk_runs {
            if let Some(d) = &spec.disk {
                if d.plan.operations.iter().any(|o| o.destructive)
                    && !(self.inst.confirm)(&node, &d.plan)
                {
                    return Err(InstallError::NotConfirmed { node });
                }
            }
        }
        Ok((facts, kexec_needed))
    }
}

/// Installs one node: preflight, then the scheduled phases; state is saved around every phase.
pub fn install_node(spec: &NodeSpec, inst: &Installer<'_>) -> Result<Summary, InstallError> {
    let started = Instant::now();
    let node = spec.node.clone();
    let ctx = Ctx {
        spec,
        inst,
        new_host_keys: Default::default(),
    };
    let previous = inst.state.load(&node)?;
    let schedule = state::schedule(
        &spec.phases,
        previous.as_ref(),
        spec.resume,
        &node,
        Some(&spec.toplevel),
        &inst.state.path(&node),
    )?;
    let mut skipped: Vec<Phase> = spec
        .phases
        .phases()
        .iter()
        .copied()
        .filter(|p| !schedule.contains(p))
        .collect();
    for p in &skipped {
        ctx.emit(Event::PhaseSkipped {
            node: node.clone(),
            phase: *p,
            reason: "finished in an earlier run".into(),
        });
    }

    ctx.emit(Event::PhaseStarted {
        node: node.clone(),
        phase: Phase::Preflight,
    });
    let t0 = Instant::now();
    let (_facts, kexec_needed) = ctx.preflight(&schedule)?;
    let mut timings = vec![(Phase::Preflight, t0.elapsed().as_secs_f64())];
    ctx.emit(Event::PhaseFinished {
        node: node.clone(),
        phase: Phase::Preflight,
        seconds: timings[0].1,
    });

    let mut st = match (spec.resume, previous) {
        (true, Some(prev)) => prev,
        _ => NodeState::new(&node, spec.session.transport().host()),
    };
    if !st.is_done(Phase::Install) {
        st.toplevel = Some(spec.toplevel.clone());
    }
    if let Some(d) = &spec.disk {
        if schedule.contains(&Phase::Disk) {
            st.disk_plan = serde_json::to_value(&d.plan).ok();
        }
    }
    inst.state.save(&st)?;

    for phase in schedule {
        if phase == Phase::Kexec && !kexec_needed {
            ctx.emit(Event::PhaseSkipped {
                node: node.clone(),
                phase,
                reason: "the target already runs a NixOS installer".into(),
            });
            st.finish(phase, 0.0);
            inst.state.save(&st)?;
            skipped.push(phase);
            continue;
        }
        ctx.emit(Event::PhaseStarted {
            node: node.clone(),
            phase,
        });
        st.start(phase);
        inst.state.save(&st)?;
        let t = Instant::now();
        let result = ctx
            .record_new_host_keys(phase, &st)
            .and_then(|()| ctx.run_phase(phase));
        let secs = t.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                if phase == Phase::Install {
                    st.new_host_keys = std::mem::take(
                        &mut *ctx.new_host_keys.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                }
                st.finish(phase, secs);
                inst.state.save(&st)?;
                timings.push((phase, secs));
                ctx.emit(Event::PhaseFinished {
                    node: node.clone(),
                    phase,
                    seconds: secs,
                });
            }
            Err(error) => {
                let message = error.to_string();
                st.fail(phase, secs, &message);
                inst.state.save(&st)?;
                ctx.emit(Event::Failed {
                    node: node.clone(),
                    phase,
                    error: message,
                });
                return Err(InstallError::Phase {
                    node: node.clone(),
                    phase,
                    error: Box::new(error),
                    left: left_behind(phase, &spec.root),
                    next: format!(
                        "fix the cause, then `nixpave install {node} --resume` (finished phases are skipped; state in {})",
                        inst.state.path(&node).display()
                    ),
                });
            }
        }
    }
    let total_seconds = started.elapsed().as_secs_f64();
    ctx.emit(Event::Finished {
        node: node.clone(),
        timings: timings.clone(),
        total_seconds,
    });
    Ok(Summary {
        node,
        timings,
        skipped,
        total_seconds,
    })
}

/// Installs several nodes in parallel, at most `max_parallel` at a time (0: all at once); results in
/// the order of `specs`.
pub fn install_all(
    specs: &[NodeSpec],
    inst: &Installer<'_>,
    max_parallel: usize,
) -> Vec<Result<Summary, InstallError>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let workers = match max_parallel {
        0 => specs.len(),
        n => n.min(specs.len()),
    };
    let next = AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<Summary, InstallError>>>> =
        std::sync::Mutex::new(specs.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(spec) = specs.get(i) else { break };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    install_node(spec, inst)
                }))
                .unwrap_or_else(|_| {
                    Err(InstallError::Phase {
                        node: spec.node.clone(),
                        phase: Phase::Preflight,
                        error: Box::new(PhaseError::Panicked),
                        left: "unknown; see the state file".into(),
                        next: "report a bug; `--resume` continues from the last finished phase"
                            .into(),
                    })
                });
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .zip(specs)
        .map(|(r, spec)| {
            r.unwrap_or_else(|| {
                Err(InstallError::Phase {
                    node: spec.node.clone(),
                    phase: Phase::Preflight,
                    error: Box::new(PhaseError::Panicked),
                    left: "unknown; see the state file".into(),
                    next: "report a bug".into(),
                })
            })
        })
        .collect()
}

/// Preflight alone, for `--dry-run`: gathers facts and checks them against what the selected
/// phases need. Writes nothing (no state file either); the wipe confirmation is not asked.
pub fn preflight_node(spec: &NodeSpec, inst: &Installer<'_>) -> Result<Observed, InstallError> {
    let previous = inst.state.load(&spec.node)?;
    let schedule = state::schedule(
        &spec.phases,
        previous.as_ref(),
        spec.resume,
        &spec.node,
        Some(&spec.toplevel),
        &inst.state.path(&spec.node),
    )?;
    let no_confirm = |_: &str, _: &Plan| true;
    let dry = Installer {
        state: inst.state.clone(),
        reporter: inst.reporter,
        disk_engine: inst.disk_engine,
        confirm: &no_confirm,
    };
    let ctx = Ctx {
        spec,
        inst: &dry,
        new_host_keys: Default::default(),
    };
    ctx.preflight(&schedule).map(|(facts, _)| facts)
}
