//! The executor: probes a machine through a [`nixpave_remote::Transport`], evaluates guards and
//! runs a [`crate::Plan`].
//!
//! Two calls, so the caller can show what will be wiped and ask before anything changes:
//!
//! ```no_run
//! # fn demo(transport: &dyn nixpave_remote::Transport, plan: &nixpave_disk::Plan)
//! #   -> Result<(), nixpave_disk::exec::ApplyError> {
//! use nixpave_disk::exec::{self, ApplyOptions};
//! let options = ApplyOptions::new("/mnt");
//! let preflight = exec::preflight(transport, plan, &options)?; // refusals happen here
//! if preflight.wipes {
//!     println!("{}", preflight.render_wipe_summary());
//!     // … ask the user, or rely on --yes-wipe-all-disks …
//! }
//! let report = exec::execute(transport, plan, &preflight, &options, true, &mut |p| {
//!     println!("{}", p.render());
//! })?;
//! # Ok(()) }
//! ```
//!
//! Paths such as `/dev/disk/by-partlabel/…` are resolved from the kernel's view before each
//! step; after every step that rewrites a partition table the kernel is made to re-read it and
//! the executor waits (bounded) until the partitions are there — no udev needed.

pub mod deactivate;
pub mod error;
pub mod facts;
pub mod guard;
pub mod readonly;
pub mod rescan;
pub mod resolve;
pub mod safety;
pub mod session;

use std::collections::HashMap;
use std::time::Duration;

use nixpave_remote::{shell_join, CommandOutput, Transport};
use serde::Serialize;

use crate::plan::{Mode, Operation, Plan, StdinSource};

pub use error::{ApplyError, OpFailure, Refusal};
pub use facts::{probe, BlockDevice, Facts};
pub use safety::DiskSummary;

use guard::Verdict;
use resolve::Resolution;
use session::Session;

/// Asks for a secret (a LUKS passphrase) when a step needs one on standard input.
pub trait SecretPrompt {
    /// Returns the secret for `name`; asks twice and compares when `confirm` is set.
    fn secret(&mut self, name: &str, confirm: bool) -> Result<Vec<u8>, String>;
}

/// A prompt for callers that cannot ask: every request fails with a message.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPrompt;

impl SecretPrompt for NoPrompt {
    fn secret(&mut self, name: &str, _confirm: bool) -> Result<Vec<u8>, String> {
        Err(format!(
            "a passphrase for `{name}` is needed but there is no terminal to ask on; \
             use a passwordFile / keyFile in the layout"
        ))
    }
}

/// How to apply a plan.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Where the layout's filesystems are mounted (`/mnt`); mounts below it belong to the plan.
    pub root_mountpoint: String,
    /// Only probe and report what would run; change nothing.
    pub dry_run: bool,
    /// How long to wait for the kernel to show a new partition table.
    pub rescan_timeout: Duration,
    /// The layout's disks (device paths), in addition to those the plan's operations name.
    pub disks: Vec<String>,
    /// Swap devices or files that belong to the layout even though this plan does not turn them
    /// on or off (a `destroy` plan): active swap on them does not make the disk refused.
    pub own_swaps: Vec<String>,
}

impl ApplyOptions {
    /// Defaults: not a dry run, 10 s rescan timeout, no extra disks.
    pub fn new(root_mountpoint: &str) -> Self {
        ApplyOptions {
            root_mountpoint: root_mountpoint.to_string(),
            dry_run: false,
            rescan_timeout: Duration::from_secs(10),
            disks: Vec::new(),
            own_swaps: Vec::new(),
        }
    }

    /// Options for applying `layout` in `mode`: its disks (those with `destroy = true` for
    /// wiping modes) and its own swap devices (so a `destroy` after `format,mount` is not refused
    /// for the layout's own active swap).
    pub fn for_layout(layout: &crate::Layout, mode: Mode, root_mountpoint: &str) -> Self {
        let mut options = ApplyOptions::new(root_mountpoint);
        options.disks = layout
            .disks()
            .into_iter()
            .filter(|d| d.destroy || !mode.destroys())
            .map(|d| d.device)
            .collect();
        let plan_options = crate::PlanOptions {
            root_mountpoint: root_mountpoint.to_string(),
            ..crate::PlanOptions::default()
        };
        options.own_swaps = crate::plan(layout, Mode::FormatMount, &plan_options)
            .map(|p| {
                p.operations
                    .into_iter()
                    .filter(|o| o.argv.first().is_some_and(|a| a == "swapon"))
                    .map(|o| o.device)
                    .collect()
            })
            .unwrap_or_default();
        options
    }
}

/// What the executor found before changing anything.
#[derive(Debug, Clone, Serialize)]
pub struct Preflight {
    /// Host the plan is for.
    pub host: String,
    /// The plan's mode.
    pub mode: Mode,
    /// True when the plan wipes disks (needs confirmation).
    pub wipes: bool,
    /// The disks the plan changes, as they are now.
    pub disks: Vec<DiskSummary>,
    /// Steps that release what is on the disks before they are wiped (destroy modes only).
    pub deactivation: Vec<Operation>,
    /// Kernel names of the plan's disks (scope for label resolution).
    #[serde(skip)]
    scope: Vec<String>,
}

impl Preflight {
    /// The "these disks will be wiped" text shown before asking for confirmation.
    pub fn render_wipe_summary(&self) -> String {
        let mut out = format!(
            "The following disks on {} will be WIPED (all data on them is lost):\n",
            self.host
        );
        if self.disks.is_empty() {
            out.push_str("  (none of the plan's disks exist on this machine)\n");
        }
        for disk in &self.disks {
            for line in disk.render().lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out
    }

    /// Words that confirm the wipe when typed: the host name or `yes`.
    pub fn confirmation_words(&self) -> Vec<String> {
        vec![self.host.clone(), "yes".to_string()]
    }
}

/// The state of one step, as reported while the plan runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StepState {
    /// The step is starting.
    Running,
    /// The step finished successfully.
    Done,
    /// The guard did not hold: nothing to do.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Dry run: the step would run.
    WouldRun {
        /// Extra information (e.g. a device an earlier step creates).
        note: Option<String>,
    },
    /// Dry run: the step would be skipped.
    WouldSkip {
        /// Why.
        reason: String,
    },
    /// The step failed (the error follows).
    Failed,
}

/// One progress event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// 1-based step number.
    pub index: usize,
    /// Number of steps.
    pub total: usize,
    /// The step's description.
    pub description: String,
    /// The command (resolved argv, shell-quoted for display).
    pub command: String,
    /// What happened.
    #[serde(flatten)]
    pub state: StepState,
    /// How long the command ran, in milliseconds (set on `done` and `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_ms: Option<u64>,
    /// How long waiting for the kernel to show a rewritten partition table took, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescan_ms: Option<u64>,
}

impl Progress {
    /// One line for humans, e.g. `[3/12] create partition 1 (ESP) on /dev/vda: $ sgdisk …`.
    pub fn render(&self) -> String {
        let head = format!("[{}/{}] {}", self.index, self.total, self.description);
        match &self.state {
            StepState::Running => format!("{head}: $ {}", self.command),
            StepState::Done => format!("{head}: done"),
            StepState::Skipped { reason } => format!("{head}: skipped ({reason})"),
            StepState::WouldRun { note: None } => format!("{head}: would run $ {}", self.command),
            StepState::WouldRun { note: Some(n) } => {
                format!("{head}: would run ({n}) $ {}", self.command)
            }
            StepState::WouldSkip { reason } => format!("{head}: would skip ({reason})"),
            StepState::Failed => format!("{head}: FAILED"),
        }
    }
}

/// What applying a plan did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// Steps that ran (or, in a dry run, would run).
    pub ran: usize,
    /// Steps skipped because their guard did not hold.
    pub skipped: usize,
    /// Commands that ran, in order (resolved argv).
    pub commands: Vec<Vec<String>>,
}

/// Everything `update` mode compares a layout with, probed through a read-only transport:
/// [`probe`], the subvolume lists of mounted btrfs filesystems, `vgs`/`lvs` when the layout has
/// volume groups, `zpool list`/`zfs list` when it has pools, and which of the layout's btrfs
/// swap files exist.
pub fn probe_for_update(
    transport: &dyn Transport,
    layout: &crate::Layout,
) -> Result<Facts, ApplyError> {
    // Comparing only looks: make that structural.
    let read_only = readonly::ReadOnly::new(transport);
    let transport: &dyn Transport = &read_only;
    let mut facts = probe(transport)?;
    let btrfs: Vec<String> = facts
        .all()
        .into_iter()
        .filter(|d| d.fstype.as_deref() == Some("btrfs"))
        .map(|d| d.path.clone())
        .collect();
    facts::probe_btrfs_subvolumes(transport, &mut facts, &btrfs)?;
    if !layout.lvm_vg.is_empty() {
        facts::probe_lvm(transport, &mut facts)?;
    }
    if !layout.zpool.is_empty() {
        let properties = crate::planner::update::zfs_properties(layout);
        facts::probe_zfs(transport, &mut facts, &properties)?;
    }
    let swap_files = crate::planner::update::swap_file_candidates(layout, &facts);
    facts::probe_paths(transport, &mut facts, &swap_files)?;
    Ok(facts)
}

/// Runs a read-only probe command and returns its output, whatever its exit status.
pub(crate) fn run_probe(
    transport: &dyn Transport,
    argv: &[&str],
) -> Result<CommandOutput, ApplyError> {
    Ok(transport.run(&nixpave_remote::argv(argv), None)?)
}

/// The error for a probe command (`argv`) that ran and failed.
pub(crate) fn probe_failed(
    transport: &dyn Transport,
    argv: &[&str],
    out: &CommandOutput,
) -> ApplyError {
    ApplyError::Probe {
        host: transport.host().to_string(),
        command: argv.join(" "),
        status: out.status,
        stderr: out.stderr_tail(5),
    }
}

/// Probes the machine, works out which disks the plan changes and refuses (before anything is
/// changed) when that is unsafe: a filesystem of such a disk is mounted outside the root
/// mountpoint, it holds the running root, or it carries swap the plan does not manage.
pub fn preflight(
    transport: &dyn Transport,
    plan: &Plan,
    options: &ApplyOptions,
) -> Result<Preflight, ApplyError> {
    // The preflight only looks: make that structural.
    let read_only = readonly::ReadOnly::new(transport);
    let transport: &dyn Transport = &read_only;
    let mut session = Session::new(transport);
    for disk in &options.disks {
        let reason = match session.resolve(disk)? {
            Resolution::Node(_) => continue,
            Resolution::Missing { reason } => reason,
            Resolution::Ambiguous { candidates } => {
                format!("it matches several devices: {}", candidates.join(", "))
            }
            Resolution::Verbatim => "no such block device (lsblk)".to_string(),
        };
        return Err(ApplyError::MissingDisk {
            host: transport.host().to_string(),
            disk: disk.clone(),
            reason,
        });
    }
    let facts = session.facts()?.clone();
    let scope = safety::plan_scope(plan, &facts, &options.disks);
    let changes = !matches!(plan.mode, Mode::Mount | Mode::Unmount);
    let disks = if changes {
        safety::touched_disks(plan, &facts, &scope, &options.disks)
    } else {
        Vec::new()
    };
    let reasons = safety::refusals(
        &disks,
        &facts,
        plan,
        &scope,
        &options.root_mountpoint,
        &options.own_swaps,
    );
    if !reasons.is_empty() {
        let running_root = reasons
            .iter()
            .any(|r| r.reason.contains("running system's root"));
        return Err(ApplyError::Refused {
            host: transport.host().to_string(),
            reasons,
            hint: if running_root {
                "the layout names the disk this system runs from: lay out another disk, or run \
                 from an installer (`nixpave install` kexecs into one)"
                    .to_string()
            } else {
                format!(
                    "unmount them (or pick another --root-mountpoint than {}) and check that \
                     the layout names the disks you mean",
                    options.root_mountpoint
                )
            },
        });
    }
    let wipes = plan.mode.destroys();
    let deactivation = if wipes {
        disks
            .iter()
            .flat_map(|d| deactivate::deactivation_ops(d, &facts))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Preflight {
        host: transport.host().to_string(),
        mode: plan.mode,
        wipes,
        disks: disks.iter().map(|d| DiskSummary::of(d)).collect(),
        deactivation,
        scope,
    })
}

/// Runs the plan (after `preflight`). `wipe_confirmed` must be true for plans that wipe disks
/// (the user typed the confirmation or passed `--yes-wipe-all-disks`). Stops at the first
/// failing step. In a dry run nothing is changed: only read-only probes run.
pub fn execute(
    transport: &dyn Transport,
    plan: &Plan,
    preflight: &Preflight,
    options: &ApplyOptions,
    wipe_confirmed: bool,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<ApplyReport, ApplyError> {
    execute_with_prompt(
        transport,
        plan,
        preflight,
        options,
        wipe_confirmed,
        &mut NoPrompt,
        on_progress,
    )
}

/// [`execute`] with a way to ask for secrets (`StdinSource::Prompt`).
pub fn execute_with_prompt(
    transport: &dyn Transport,
    plan: &Plan,
    preflight: &Preflight,
    options: &ApplyOptions,
    wipe_confirmed: bool,
    prompt: &mut dyn SecretPrompt,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<ApplyReport, ApplyError> {
    if preflight.wipes && !wipe_confirmed && !options.dry_run {
        return Err(ApplyError::NotConfirmed {
            host: transport.host().to_string(),
            why: "the caller did not confirm the wipe".into(),
        });
    }
    let steps: Vec<&Operation> = preflight
        .deactivation
        .iter()
        .chain(plan.operations.iter())
        .collect();
    let total = steps.len();
    // A dry run goes through a transport that refuses anything but read-only probes.
    let read_only = readonly::ReadOnly::new(transport);
    let transport: &dyn Transport = if options.dry_run {
        &read_only
    } else {
        transport
    };
    let mut session = Session::new(transport);
    session.scope = preflight.scope.clone();
    let mut report = ApplyReport::default();
    let mut done: Vec<String> = Vec::new();
    let mut secrets: HashMap<String, Vec<u8>> = HashMap::new();
    for (i, op) in steps.into_iter().enumerate() {
        let index = i + 1;
        if nixpave_remote::cancel::is_cancelled() {
            return Err(interrupted(&mut session, preflight, total, done));
        }
        let mut progress = Progress {
            index,
            total,
            description: op.description.clone(),
            command: shell_join(&op.argv),
            state: StepState::Running,
            command_ms: None,
            rescan_ms: None,
        };
        // A dry run of a wiping plan cannot probe the state after the wipe: every step after
        // the deactivation would run on blank disks.
        let after_wipe = options.dry_run && preflight.wipes && i >= preflight.deactivation.len();
        let verdict = match &op.guard {
            Some(_) if after_wipe => Verdict::Missing("on the wiped disks".into()),
            Some(g) => match guard::evaluate(g, &mut session) {
                Ok(v) => v,
                Err(e) => return Err(step_failed(&mut session, preflight, &progress, e, done)),
            },
            None => Verdict::Run,
        };
        let note = match verdict {
            Verdict::Run => None,
            Verdict::Skip(reason) => {
                report.skipped += 1;
                progress.state = if options.dry_run {
                    StepState::WouldSkip { reason }
                } else {
                    StepState::Skipped { reason }
                };
                on_progress(&progress);
                continue;
            }
            Verdict::Missing(reason) if options.dry_run => Some(reason),
            Verdict::Missing(reason) => {
                let e = ApplyError::Resolve {
                    host: session.host(),
                    index,
                    description: op.description.clone(),
                    path: guard_subject(op),
                    reason,
                };
                return Err(step_failed(&mut session, preflight, &progress, e, done));
            }
        };
        let ResolvedOp {
            argv,
            device,
            unresolved,
            note: missing,
        } = match resolve_op(&mut session, op, index) {
            Ok(r) => r,
            Err(e) => return Err(step_failed(&mut session, preflight, &progress, e, done)),
        };
        progress.command = shell_join(&argv);
        if options.dry_run {
            report.ran += 1;
            report.commands.push(argv);
            progress.state = StepState::WouldRun {
                note: note.or(missing),
            };
            on_progress(&progress);
            continue;
        }
        if let Some(reason) = unresolved {
            let e = ApplyError::Resolve {
                host: session.host(),
                index,
                description: op.description.clone(),
                path: op.device.clone(),
                reason,
            };
            return Err(step_failed(&mut session, preflight, &progress, e, done));
        }
        let stdin = stdin_bytes(&session, op, index, prompt, &mut secrets)?;
        // Decide about the rescan with the facts from before the step (the device may vanish).
        let table_disk = {
            let facts = session.facts()?;
            rescan::changed_table(op, &device, facts)
        };
        on_progress(&progress);
        let started = std::time::Instant::now();
        let result = transport.run_streaming(&argv, stdin.as_deref(), &mut |_, line| {
            tracing::debug!(target: "nixpave_disk::exec", "{line}");
        });
        progress.command_ms = Some(millis(started));
        session.invalidate();
        let failure = match result {
            Ok(out) if out.success() => None,
            Ok(out) => Some((out.status, out.stderr_tail(10))),
            Err(e) => Some((None, e.to_string())),
        };
        if let Some((status, stderr_tail)) = failure {
            progress.state = StepState::Failed;
            on_progress(&progress);
            if nixpave_remote::cancel::is_cancelled() {
                return Err(interrupted(&mut session, preflight, total, done));
            }
            return Err(ApplyError::Op(Box::new(OpFailure {
                host: session.host(),
                index,
                total,
                description: op.description.clone(),
                command: shell_join(&argv),
                status,
                stderr_tail,
                stopped: false,
                done,
                disk_state: disk_state(&mut session, preflight),
            })));
        }
        if let Some(disk) = table_disk {
            let started = std::time::Instant::now();
            if let Err(e) = rescan::reread(&mut session, &disk, options.rescan_timeout) {
                done.push(op.description.clone());
                return Err(step_failed(&mut session, preflight, &progress, e, done));
            }
            progress.rescan_ms = Some(millis(started));
        }
        report.ran += 1;
        report.commands.push(argv);
        done.push(op.description.clone());
        progress.state = StepState::Done;
        on_progress(&progress);
    }
    Ok(report)
}

/// Turns an error met while handling a step (a guard probe, a path that does not resolve, a
/// partition table the kernel does not take) into a step failure with the steps already done
/// and the disks' state — unless nothing ran yet, where the plain error says it all.
fn step_failed(
    session: &mut Session<'_>,
    preflight: &Preflight,
    progress: &Progress,
    error: ApplyError,
    done: Vec<String>,
) -> ApplyError {
    if done.is_empty() || matches!(error, ApplyError::Op(_) | ApplyError::Interrupted { .. }) {
        return error;
    }
    ApplyError::Op(Box::new(OpFailure {
        host: session.host(),
        index: progress.index,
        total: progress.total,
        description: progress.description.clone(),
        command: progress.command.clone(),
        status: None,
        stderr_tail: error.to_string(),
        stopped: true,
        done,
        disk_state: disk_state(session, preflight),
    }))
}

fn interrupted(
    session: &mut Session<'_>,
    preflight: &Preflight,
    total: usize,
    done: Vec<String>,
) -> ApplyError {
    ApplyError::Interrupted {
        host: session.host(),
        total,
        done,
        disk_state: disk_state(session, preflight),
    }
}

fn millis(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The device a guard is about, for error messages.
fn guard_subject(op: &Operation) -> String {
    use crate::plan::Guard;
    match &op.guard {
        Some(
            Guard::DeviceBlank { device }
            | Guard::NoFilesystem { device }
            | Guard::NotLuks { device }
            | Guard::SwapActive { device }
            | Guard::SwapInactive { device }
            | Guard::NotMounted { device, .. },
        ) => device.clone(),
        Some(Guard::PartitionAbsent { disk, .. }) => disk.clone(),
        _ => op.device.clone(),
    }
}

/// An operation's argv and device after path resolution.
struct ResolvedOp {
    argv: Vec<String>,
    device: String,
    /// Why some path could not be resolved (an error in a real run).
    unresolved: Option<String>,
    /// The same, short, for a dry run (an earlier step would create the device).
    note: Option<String>,
}

/// Resolves udev-style paths in the argv and the device.
fn resolve_op(
    session: &mut Session<'_>,
    op: &Operation,
    index: usize,
) -> Result<ResolvedOp, ApplyError> {
    let mut unresolved = None;
    let mut missing_note = None;
    let mut resolve_word = |session: &mut Session<'_>, word: &str| -> Result<String, ApplyError> {
        if !resolve::is_udev_path(word) {
            return Ok(word.to_string());
        }
        Ok(match session.resolve(word)? {
            Resolution::Node(node) => node,
            Resolution::Verbatim => word.to_string(),
            Resolution::Missing { reason } => {
                unresolved.get_or_insert(format!("{word}: {reason}"));
                missing_note.get_or_insert(format!("{word} does not exist yet"));
                word.to_string()
            }
            Resolution::Ambiguous { candidates } => {
                return Err(ApplyError::Resolve {
                    host: session.host(),
                    index,
                    description: op.description.clone(),
                    path: word.to_string(),
                    reason: format!(
                        "several devices match ({}) and none is on the plan's disks; \
                         name the disk with --disk NAME=DEVICE",
                        candidates.join(", ")
                    ),
                })
            }
        })
    };
    let mut argv = Vec::with_capacity(op.argv.len());
    for word in &op.argv {
        argv.push(resolve_word(session, word)?);
    }
    let device = resolve_word(session, &op.device)?;
    Ok(ResolvedOp {
        argv,
        device,
        unresolved,
        note: missing_note,
    })
}

/// The bytes to feed on standard input.
fn stdin_bytes(
    session: &Session<'_>,
    op: &Operation,
    index: usize,
    prompt: &mut dyn SecretPrompt,
    secrets: &mut HashMap<String, Vec<u8>>,
) -> Result<Option<Vec<u8>>, ApplyError> {
    let fail = |reason: String| ApplyError::Stdin {
        host: session.host(),
        index,
        description: op.description.clone(),
        reason,
    };
    Ok(match &op.stdin {
        None => None,
        Some(StdinSource::Text { text }) => Some(text.clone().into_bytes()),
        Some(StdinSource::File { path }) => Some(
            session
                .transport
                .read_file(std::path::Path::new(path))
                .map_err(|e| fail(format!("cannot read {path}: {e}")))?,
        ),
        Some(StdinSource::Prompt { name, confirm }) => {
            if let Some(secret) = secrets.get(name) {
                Some(secret.clone())
            } else {
                let secret = prompt.secret(name, *confirm).map_err(fail)?;
                secrets.insert(name.clone(), secret.clone());
                Some(secret)
            }
        }
    })
}

/// A fresh summary of the plan's disks for a failure report.
fn disk_state(session: &mut Session<'_>, preflight: &Preflight) -> String {
    session.invalidate();
    let scope = session.scope.clone();
    match session.facts() {
        Ok(facts) => {
            let lines: Vec<String> = facts
                .devices
                .iter()
                .filter(|d| {
                    scope.contains(&d.kname) || preflight.disks.iter().any(|s| s.path == d.path)
                })
                .map(|d| DiskSummary::of(d).render())
                .collect();
            if lines.is_empty() {
                "(the plan's disks were not found)".into()
            } else {
                lines.join("\n")
            }
        }
        Err(e) => format!("(could not probe the disks: {e})"),
    }
}
