//! The orchestration: preflight, then the scheduled phases, recording state after each.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nixpave_disk::Plan;

use crate::disk::DiskEngine;
use crate::events::{millis, Event, PhaseTiming, Reporter};
use crate::kexec::TarballInfo;
use crate::phase::{Phase, PhaseSet};
use crate::preflight::{self, DiskNeed, Observed, RamPolicy, Refusal, Requirements};
use crate::state::{self, NodeState, ScheduleError, StateError, StateStore};
use crate::steps::{self, Chown, EncryptionKey};
use nixpave_remote::Connection;

mod disks;
mod install;
mod kexec;
mod reboot;
mod verify;
mod wait;

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
    /// Time of each phase that ran, in order.
    pub timings: Vec<PhaseTiming>,
    /// Phases that were skipped (done before, or not needed).
    pub skipped: Vec<Phase>,
    /// Total milliseconds, preflight included.
    pub total_ms: u64,
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
    /// Interrupted (Ctrl-C) before this node's turn came; nothing was done on it.
    #[error("not started: interrupted before this node's turn; nothing was done on it")]
    NotStarted,
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
            host: self.spec.node.clone(),
            phase,
            message: message.into(),
        });
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
                host: node.clone(),
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
            host: node.clone(),
            phase: *p,
            reason: "finished in an earlier run".into(),
        });
    }

    ctx.emit(Event::PhaseStarted {
        host: node.clone(),
        phase: Phase::Preflight,
    });
    let t0 = Instant::now();
    let (_facts, kexec_needed) = ctx.preflight(&schedule)?;
    let mut timings = vec![PhaseTiming {
        phase: Phase::Preflight,
        duration_ms: millis(t0.elapsed()),
    }];
    ctx.emit(Event::PhaseFinished {
        host: node.clone(),
        phase: Phase::Preflight,
        duration_ms: timings[0].duration_ms,
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
                host: node.clone(),
                phase,
                reason: "the target already runs a NixOS installer".into(),
            });
            st.finish(phase, 0);
            inst.state.save(&st)?;
            skipped.push(phase);
            continue;
        }
        ctx.emit(Event::PhaseStarted {
            host: node.clone(),
            phase,
        });
        st.start(phase);
        inst.state.save(&st)?;
        let t = Instant::now();
        let result = ctx
            .record_new_host_keys(phase, &st)
            .and_then(|()| ctx.run_phase(phase));
        let elapsed = t.elapsed();
        let duration_ms = millis(elapsed);
        match result {
            Ok(()) => {
                if phase == Phase::Install {
                    st.new_host_keys = std::mem::take(
                        &mut *ctx.new_host_keys.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                }
                st.finish(phase, duration_ms);
                inst.state.save(&st)?;
                timings.push(PhaseTiming { phase, duration_ms });
                ctx.emit(Event::PhaseFinished {
                    host: node.clone(),
                    phase,
                    duration_ms,
                });
            }
            Err(error) => {
                let message = error.to_string();
                st.fail(phase, duration_ms, &message);
                inst.state.save(&st)?;
                ctx.emit(Event::Failed {
                    host: node.clone(),
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
    let total_ms = millis(started.elapsed());
    ctx.emit(Event::Finished {
        host: node.clone(),
        timings: timings.clone(),
        total_ms,
    });
    Ok(Summary {
        node,
        timings,
        skipped,
        total_ms,
    })
}

/// Installs several nodes in parallel, at most `max_parallel` at a time (0: all at once); results in
/// the order of `specs`.
pub fn install_all(
    specs: &[NodeSpec],
    inst: &Installer<'_>,
    max_parallel: usize,
) -> Vec<Result<Summary, InstallError>> {
    // The one bounded executor of the workspace: a panicking node is an error of its own, and
    // nodes not yet started when Ctrl-C comes are reported as such.
    let slots = nixpave_remote::parallel::run(
        specs,
        max_parallel,
        || false,
        |spec| install_node(spec, inst),
    );
    slots
        .into_iter()
        .zip(specs)
        .map(|(slot, spec)| {
            let (error, left, next) = match slot {
                nixpave_remote::parallel::Slot::Done(r) => return r,
                nixpave_remote::parallel::Slot::Panicked(_) => (
                    PhaseError::Panicked,
                    "unknown; see the state file",
                    "report a bug; `--resume` continues from the last finished phase",
                ),
                nixpave_remote::parallel::Slot::NotStarted => (
                    PhaseError::NotStarted,
                    "nothing was done on this node",
                    "run the install again for it",
                ),
            };
            Err(InstallError::Phase {
                node: spec.node.clone(),
                phase: Phase::Preflight,
                error: Box::new(error),
                left: left.into(),
                next: next.into(),
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
