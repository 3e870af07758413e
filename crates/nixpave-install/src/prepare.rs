//! Turning what the user asked for ([`InstallRequest`]) into the [`NodeSpec`] of each node: its
//! target, its system (built, evaluated for a build on the target, or deferred until the hardware
//! configuration exists), its disk plan, the login a resumed run uses, the substituters and the
//! ssh connection.
//!
//! The pure parts ([`targets_for`], [`post_kexec_target`], [`resume_login`], [`nix_args`],
//! [`disk_spec`], [`substituter_settings`], [`builds_remotely`]) are unit-tested here; the IO
//! (nix eval/build in [`crate::nix`], layout loading in `nixpave_disk`, ssh in `nixpave_remote`)
//! stays at the edges: [`prepare_node`], [`build`], [`substituters`], [`kexec_spec`].

use std::path::{Path, PathBuf};

use nixpave_disk::{Layout, LayoutSource, LoadOptions, Mode, PlanOptions};
use nixpave_remote::{SshConnection, SshOptions, SshTransport, Target, TransportError};

use crate::hwconfig;
use crate::kexec::{self, KexecSource, TarballError};
use crate::nix::BuildError;
use crate::phase::{Phase, PhaseSet};
use crate::preflight::{arch_of_system, min_disk_bytes, DiskNeed};
use crate::run::{
    DiskSpec, FailureKind, InstallError, Installer, KexecSpec, NodeSpec, Summary, Timeouts,
};
use crate::state::StateStore;
use crate::steps::{Chown, EncryptionKey, SubstituterSettings};

/// The toplevel of a node whose build waits for its hardware configuration.
pub const DEFERRED_BUILD: &str = "(built after the hardware configuration is generated)";

/// Where the installer unpacks the kexec tarball.
const KEXEC_REMOTE_DIR: &str = "/root/nixpave-kexec";

/// Where the system is built (`--build-on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildOn {
    /// On this machine.
    #[default]
    Local,
    /// On the target: only the derivations are copied.
    Remote,
    /// Here when this machine builds for the node's system, else on the target.
    Auto,
}

impl BuildOn {
    /// From `--build-on`'s words: `remote` and `target` build on the target, `auto` decides, anything
    /// else (`local`) builds here (pure).
    pub fn from_name(name: &str) -> BuildOn {
        match name {
            "remote" | "target" => BuildOn::Remote,
            "auto" => BuildOn::Auto,
            _ => BuildOn::Local,
        }
    }
}

/// What `nixpave install` was asked to do, as plain values (the CLI's flags, parsed).
#[derive(Clone)]
pub struct InstallRequest {
    /// The flake holding the nodes' configurations.
    pub flake: String,
    /// The selected phases.
    pub phases: PhaseSet,
    /// What the disk phase does (`--disko-mode`).
    pub disko_mode: Mode,
    /// `--disk NAME=DEVICE` overrides.
    pub disk_overrides: Vec<(String, String)>,
    /// `--disk-config FILE`: the layout instead of the node's `config.disko.devices`.
    pub disk_config: Option<PathBuf>,
    /// `--extra-files DIR`.
    pub extra_files: Option<PathBuf>,
    /// `--chown PATH UID:GID` pairs.
    pub chown: Vec<(String, String)>,
    /// `--disk-encryption-keys REMOTE LOCAL` pairs.
    pub disk_encryption_keys: Vec<(String, String)>,
    /// Copy the machine's host keys into the new system.
    pub copy_host_keys: bool,
    /// Where the system is built.
    pub build_on: BuildOn,
    /// Let the target substitute from its substituters (and the flake's and `--option`'s).
    pub substitute_on_destination: bool,
    /// kexec even when the target already runs a NixOS installer.
    pub force_kexec: bool,
    /// `--option NAME VALUE` pairs for the build and the copy.
    pub nix_options: Vec<(String, String)>,
    /// `-L`: show nix's build logs.
    pub print_build_logs: bool,
    /// `--show-trace`.
    pub show_trace: bool,
    /// `--system`: a prebuilt closure instead of the flake's toplevel.
    pub system: Option<String>,
    /// `--generate-hardware-config KIND PATH`: the build waits until it is written.
    pub hardware_config: Option<(hwconfig::Kind, PathBuf)>,
    /// Continue from the state file.
    pub resume: bool,
    /// The ssh port when a target does not name one.
    pub ssh_port: Option<u16>,
    /// The installer's address after kexec, when it changes.
    pub post_kexec_host: Option<String>,
    /// The installer's ssh port after kexec, when it changes.
    pub post_kexec_ssh_port: Option<u16>,
    /// Where per-node state files live (`None`: [`StateStore::default_dir`]).
    pub state_dir: Option<PathBuf>,
    /// Every wait's bound.
    pub timeouts: Timeouts,
    /// How to reach the nodes (the node's name is filled in per node).
    pub ssh: SshOptions,
    /// The installer, when given ([`kexec_spec`]).
    pub kexec: Option<KexecSpec>,
}

impl InstallRequest {
    /// The state store of this run.
    pub fn state_store(&self) -> StateStore {
        StateStore::new(
            self.state_dir
                .clone()
                .unwrap_or_else(StateStore::default_dir),
        )
    }
}

/// Why a node could not be prepared. [`PrepareError::kind`] says usage, refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// No node was named.
    #[error("no node named")]
    NoNode,
    /// A bare `--target` with several nodes, or several bare targets.
    #[error("with several nodes, give targets as --target NODE=USER@HOST (one per node)")]
    AmbiguousTargets,
    /// `--target NODE=…` for a node that is not installed.
    #[error("--target {node}={target}: {node} is not one of the nodes")]
    TargetForUnknownNode {
        /// The node named.
        node: String,
        /// Its target.
        target: String,
    },
    /// A target that does not parse.
    #[error(transparent)]
    BadTarget(#[from] nixpave_remote::TargetParseError),
    /// No `--target` and no `deploy.nodes.NODE.hostname` in the flake.
    #[error("{node}: no --target given and the flake has no deploy.nodes.{node}.hostname")]
    NoHostname {
        /// The node.
        node: String,
    },
    /// nix could not run (or timed out) while looking up the hostname.
    #[error("{node}: looking up deploy.nodes.{node}.hostname: {source}")]
    HostnameLookup {
        /// The node.
        node: String,
        /// Why.
        source: nixpave_nix::invoke::NixError,
    },
    /// `--extra-files` is not a directory.
    #[error("--extra-files {}: not a directory", .0.display())]
    ExtraFilesNotADirectory(PathBuf),
    /// A `--disk-encryption-keys` file cannot be read.
    #[error("--disk-encryption-keys …: cannot read {0}")]
    UnreadableKey(String),
    /// A `--chown` that is not an absolute path and `UID:GID`.
    #[error("--chown {path} {owner}: expected an absolute PATH and UID:GID")]
    BadChown {
        /// The path given.
        path: String,
        /// The owner given.
        owner: String,
    },
    /// `--kexec-fetch-on-target` with a local tarball.
    #[error("--kexec-fetch-on-target needs a --kexec URL")]
    FetchOnTargetNeedsUrl,
    /// The kexec tarball could not be fetched or read.
    #[error(transparent)]
    Tarball(#[from] TarballError),
    /// `--generate-hardware-config` with several nodes.
    #[error("--generate-hardware-config installs one node at a time")]
    HardwareConfigSeveralNodes,
    /// The layout could not be planned.
    #[error("{node}: {source}")]
    Plan {
        /// The node.
        node: String,
        /// Why.
        source: nixpave_disk::PlanError,
    },
    /// The layout could not be loaded (and the disk phase needs it).
    #[error("{node}: loading the disk layout: {source}")]
    Layout {
        /// The node.
        node: String,
        /// Why.
        source: Box<nixpave_disk::load::LoadError>,
    },
    /// The system could not be evaluated.
    #[error("{node}: evaluating the system: {source}")]
    Eval {
        /// The node.
        node: String,
        /// Why.
        source: BuildError,
    },
    /// The system could not be built.
    #[error("{node}: building the system: {source}")]
    Build {
        /// The node.
        node: String,
        /// Why.
        source: BuildError,
    },
    /// The flake's `nixConfig` could not be read.
    #[error("{node}: reading the flake's nixConfig: {source}")]
    NixConfig {
        /// The node.
        node: String,
        /// Why.
        source: nixpave_nix::invoke::NixError,
    },
    /// The first ssh connection failed (a refused host key is a refusal).
    #[error("{node}: {source}")]
    Connect {
        /// The node.
        node: String,
        /// Why.
        source: TransportError,
    },
    /// The hardware configuration could not be generated on the installer.
    #[error("{node}: generating the hardware configuration: {source}")]
    HardwareConfig {
        /// The node.
        node: String,
        /// Why.
        source: hwconfig::HwConfigError,
    },
    /// The hardware configuration could not be written here.
    #[error("{node}: writing {}: {source}", path.display())]
    WriteHardwareConfig {
        /// The node.
        node: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl PrepareError {
    /// The class of failure, for the exit code: wrong input (nothing done), a refusal for safety
    /// (a host key), or a failed operation.
    pub fn kind(&self) -> FailureKind {
        match self {
            PrepareError::Connect { source, .. } if source.is_refusal() => FailureKind::Refused,
            PrepareError::HostnameLookup { .. }
            | PrepareError::Eval { .. }
            | PrepareError::Build { .. }
            | PrepareError::NixConfig { .. }
            | PrepareError::Connect { .. }
            | PrepareError::HardwareConfig { .. }
            | PrepareError::WriteHardwareConfig { .. } => FailureKind::Failed,
            PrepareError::NoNode
            | PrepareError::AmbiguousTargets
            | PrepareError::TargetForUnknownNode { .. }
            | PrepareError::BadTarget(_)
            | PrepareError::NoHostname { .. }
            | PrepareError::ExtraFilesNotADirectory(_)
            | PrepareError::UnreadableKey(_)
            | PrepareError::BadChown { .. }
            | PrepareError::FetchOnTargetNeedsUrl
            | PrepareError::Tarball(_)
            | PrepareError::HardwareConfigSeveralNodes
            | PrepareError::Plan { .. }
            | PrepareError::Layout { .. } => FailureKind::Usage,
        }
    }
}

/// Checks the local inputs before anything connects: `--extra-files` is a directory, every key
/// file is readable, every `--chown` is an absolute path and `UID:GID`, and a hardware
/// configuration is generated for one node only.
pub fn check_inputs(request: &InstallRequest, nodes: &[String]) -> Result<(), PrepareError> {
    if let Some(dir) = &request.extra_files {
        if !dir.is_dir() {
            return Err(PrepareError::ExtraFilesNotADirectory(dir.clone()));
        }
    }
    for (_, local) in &request.disk_encryption_keys {
        if std::fs::metadata(local).is_err() {
            return Err(PrepareError::UnreadableKey(local.clone()));
        }
    }
    for (path, owner) in &request.chown {
        if !path.starts_with('/') || !owner.contains(':') {
            return Err(PrepareError::BadChown {
                path: path.clone(),
                owner: owner.clone(),
            });
        }
    }
    if nodes.is_empty() {
        return Err(PrepareError::NoNode);
    }
    if request.hardware_config.is_some() && nodes.len() > 1 {
        return Err(PrepareError::HardwareConfigSeveralNodes);
    }
    Ok(())
}

/// The target of each node from `--target` (pure): one bare target for a single node, else
/// `NODE=TARGET` pairs. Nodes without one are `None` (looked up in the flake).
pub fn targets_for(
    nodes: &[String],
    targets: &[String],
) -> Result<Vec<Option<String>>, PrepareError> {
    let bare: Vec<&String> = targets.iter().filter(|t| !t.contains('=')).collect();
    if !bare.is_empty() && (nodes.len() > 1 || bare.len() > 1) {
        return Err(PrepareError::AmbiguousTargets);
    }
    let mut out = Vec::new();
    for node in nodes {
        let named = targets
            .iter()
            .filter_map(|t| t.split_once('='))
            .find(|(n, _)| n == node)
            .map(|(_, t)| t.to_string());
        out.push(named.or_else(|| bare.first().map(|t| t.to_string())));
    }
    for (node, target) in targets.iter().filter_map(|t| t.split_once('=')) {
        if !nodes.iter().any(|n| n == node) {
            return Err(PrepareError::TargetForUnknownNode {
                node: node.into(),
                target: target.into(),
            });
        }
    }
    Ok(out)
}

/// The installer's address after kexec (pure): root at `--post-kexec-host` / `--post-kexec-ssh-port`,
/// the rest from `target`; `None` when neither is given (the same address).
pub fn post_kexec_target(target: &Target, host: Option<&str>, port: Option<u16>) -> Option<Target> {
    (host.is_some() || port.is_some()).then(|| Target {
        user: Some("root".into()),
        host: host.map_or_else(|| target.host.clone(), str::to_string),
        port: port.or(target.port),
    })
}

/// Who logs in first (pure): after a finished kexec (a resumed run) the old system's login user is
/// gone and the installer takes root's keys, at its post-kexec address when it has one.
pub fn resume_login(target: &Target, after_kexec: Option<&Target>, kexec_done: bool) -> Target {
    match (kexec_done, after_kexec) {
        (true, Some(after)) => after.clone(),
        (true, None) => nixpave_remote::root_target(target),
        (false, _) => target.clone(),
    }
}

/// The extra `nix` arguments of `--option`, `-L` and `--show-trace` (pure).
pub fn nix_args(
    options: &[(String, String)],
    print_build_logs: bool,
    show_trace: bool,
) -> Vec<String> {
    let mut v = Vec::new();
    for (name, value) in options {
        v.extend(["--option".to_string(), name.clone(), value.clone()]);
    }
    if print_build_logs {
        v.push("-L".into());
    }
    if show_trace {
        v.push("--show-trace".into());
    }
    v
}

/// The disk phase's input from a loaded layout (pure): the plan in `mode`, the mount-only plan
/// (for a resume that finds nothing mounted), each disk's least size and the keys to upload.
pub fn disk_spec(
    node: &str,
    layout: &Layout,
    mode: Mode,
    keys: &[(String, String)],
) -> Result<DiskSpec, PrepareError> {
    let plan_options = PlanOptions::default();
    let plan =
        nixpave_disk::plan(layout, mode, &plan_options).map_err(|source| PrepareError::Plan {
            node: node.to_string(),
            source,
        })?;
    let mount_plan = nixpave_disk::plan(layout, Mode::Mount, &plan_options).ok();
    Ok(DiskSpec {
        plan,
        mount_plan,
        needs: layout
            .disks()
            .into_iter()
            .map(|d| DiskNeed {
                min_bytes: layout.disk.get(&d.name).map_or(0, min_disk_bytes),
                name: d.name,
                device: d.device,
            })
            .collect(),
        keys: keys
            .iter()
            .map(|(remote, local)| EncryptionKey {
                remote: remote.into(),
                local: local.into(),
            })
            .collect(),
    })
}

/// The substituters the installer's nix adds (pure): `extra-substituters` / `trusted-public-keys`
/// and their kin from the flake's `nixConfig`, then from `--option`.
pub fn substituter_settings(
    from_flake: &[(String, String)],
    options: &[(String, String)],
) -> SubstituterSettings {
    SubstituterSettings::from_settings(
        from_flake
            .iter()
            .chain(options)
            .map(|(n, v)| (n.as_str(), v.as_str())),
    )
}

/// What the installer's nix substitutes from besides its defaults: the flake's `nixConfig` (when the
/// system comes from the flake) and `--option` substituters; nothing without substitution on the
/// destination.
pub fn substituters(
    request: &InstallRequest,
    node: &str,
) -> Result<SubstituterSettings, PrepareError> {
    if !request.substitute_on_destination {
        return Ok(SubstituterSettings::default());
    }
    let from_flake = if request.system.is_none() {
        let flake = nixpave_nix::flake::FlakeTarget::parse(&request.flake).flake;
        nixpave_nix::flake::flake_nix_config(&flake, &Default::default()).map_err(|source| {
            PrepareError::NixConfig {
                node: node.to_string(),
                source,
            }
        })?
    } else {
        Vec::new()
    };
    Ok(substituter_settings(&from_flake, &request.nix_options))
}

/// True when the system is built on the target rather than here (pure): `here` is this machine's
/// `uname -m`, `system` the node's nix system.
pub fn builds_remotely(build_on: BuildOn, here: &str, system: &str) -> bool {
    match build_on {
        BuildOn::Remote => true,
        BuildOn::Auto => here != arch_of_system(system),
        BuildOn::Local => false,
    }
}

/// A node's system, ready for its [`NodeSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The toplevel store path (built here, or the output a build on the target makes).
    pub toplevel: String,
    /// `uname -m` it is built for.
    pub arch: String,
    /// The derivation to realise on the target (`--build-on target`), else `None`.
    pub build_on_target: Option<String>,
}

/// Evaluates the node's toplevel, then builds it here unless `build_on` says the target.
pub fn build(
    flake: &str,
    node: &str,
    build_on: BuildOn,
    nix_args: &[String],
) -> Result<Built, PrepareError> {
    let eval =
        crate::nix::eval_toplevel(flake, node, nix_args).map_err(|source| PrepareError::Eval {
            node: node.to_string(),
            source,
        })?;
    let arch = arch_of_system(&eval.system).to_string();
    if builds_remotely(build_on, std::env::consts::ARCH, &eval.system) {
        return Ok(Built {
            toplevel: eval.out,
            arch,
            build_on_target: Some(eval.drv),
        });
    }
    let built =
        crate::nix::build_evaluated(&eval, nix_args).map_err(|source| PrepareError::Build {
            node: node.to_string(),
            source,
        })?;
    Ok(Built {
        toplevel: built.toplevel,
        arch: arch_of_system(&built.system).to_string(),
        build_on_target: None,
    })
}

/// `user@host` of a node without `--target`: `root@` its flake's `deploy.nodes.NODE.hostname`.
fn flake_target(flake: &str, node: &str) -> Result<String, PrepareError> {
    use nixpave_nix::invoke::NixError;
    match crate::nix::eval_hostname(flake, node) {
        Ok(host) => Ok(format!("root@{host}")),
        // nix itself did not run or finish: not the flake's fault.
        Err(BuildError::Nix(
            source @ (NixError::Spawn { .. }
            | NixError::Timeout { .. }
            | NixError::Interrupted { .. }),
        )) => Err(PrepareError::HostnameLookup {
            node: node.to_string(),
            source,
        }),
        Err(_) => Err(PrepareError::NoHostname {
            node: node.to_string(),
        }),
    }
}

/// The installer of `--kexec SOURCE`: fetched and inspected here, or, with `fetch_on_target` and a
/// URL, downloaded by the target.
pub fn kexec_spec(
    source: &str,
    fetch_on_target: bool,
    extra_flags: Option<String>,
) -> Result<KexecSpec, PrepareError> {
    match (KexecSource::parse(source), fetch_on_target) {
        (KexecSource::Url(url), true) => Ok(KexecSpec {
            tarball: None,
            fetch_url: Some(url),
            remote_dir: KEXEC_REMOTE_DIR.into(),
            extra_flags,
        }),
        (KexecSource::File(_), true) => Err(PrepareError::FetchOnTargetNeedsUrl),
        (source, false) => {
            let local = kexec::fetch(&source, &kexec::default_cache_dir())?;
            Ok(KexecSpec {
                tarball: Some(kexec::inspect(&local)?),
                fetch_url: None,
                remote_dir: KEXEC_REMOTE_DIR.into(),
                extra_flags,
            })
        }
    }
}

/// The disk phase's input for `node`, when the disk or install phase may run: the layout from
/// `--disk-config` or the flake, planned. A layout that does not load is an error only when the
/// disk phase runs.
fn load_disk(request: &InstallRequest, node: &str) -> Result<Option<DiskSpec>, PrepareError> {
    if !request.phases.contains(Phase::Disk) && !request.phases.contains(Phase::Install) {
        return Ok(None);
    }
    let source = match &request.disk_config {
        Some(f) => LayoutSource::File(f.clone()),
        None => LayoutSource::Flake {
            flake_ref: request.flake.clone(),
            name: node.to_string(),
        },
    };
    let options = LoadOptions {
        args: Vec::new(),
        disk_overrides: request.disk_overrides.clone(),
    };
    match nixpave_disk::load_layout(&source, &options) {
        Ok(layout) => disk_spec(
            node,
            &layout,
            request.disko_mode,
            &request.disk_encryption_keys,
        )
        .map(Some),
        Err(source) if request.phases.contains(Phase::Disk) => Err(PrepareError::Layout {
            node: node.to_string(),
            source: Box::new(source),
        }),
        Err(_) => Ok(None),
    }
}

/// Prepares one node: its target (`target`, else the flake's hostname), its system, its disk
/// plan, its substituters, and the ssh connection (at the installer's address when a resumed run
/// finds kexec done).
pub fn prepare_node(
    request: &InstallRequest,
    node: &str,
    target: Option<String>,
) -> Result<NodeSpec, PrepareError> {
    let target = match target {
        Some(t) => t,
        None => flake_target(&request.flake, node)?,
    };
    let mut target: Target = target.parse()?;
    if target.port.is_none() {
        target.port = request.ssh_port;
    }
    let after_kexec = post_kexec_target(
        &target,
        request.post_kexec_host.as_deref(),
        request.post_kexec_ssh_port,
    );
    let nix_args = nix_args(
        &request.nix_options,
        request.print_build_logs,
        request.show_trace,
    );
    let built = match &request.system {
        Some(path) => Built {
            toplevel: path.clone(),
            arch: std::env::consts::ARCH.to_string(),
            build_on_target: None,
        },
        // Built once the hardware configuration is written beside the flake (after kexec).
        None if request.hardware_config.is_some() => Built {
            toplevel: DEFERRED_BUILD.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            build_on_target: None,
        },
        None => build(&request.flake, node, request.build_on, &nix_args)?,
    };
    let disk = load_disk(request, node)?;
    let options = SshOptions {
        name: Some(node.to_string()),
        ..request.ssh.clone()
    };
    let kexec_done = request.resume
        && matches!(request.state_store().load(node), Ok(Some(st)) if st.is_done(Phase::Kexec));
    let login = resume_login(&target, after_kexec.as_ref(), kexec_done);
    let substituters = substituters(request, node)?;
    let ssh =
        SshTransport::connect(&login, options.clone()).map_err(|source| PrepareError::Connect {
            node: node.to_string(),
            source,
        })?;
    Ok(NodeSpec {
        node: node.to_string(),
        session: Box::new(SshConnection::with_login_after_kexec(
            ssh,
            options,
            after_kexec,
        )),
        toplevel: built.toplevel,
        arch: built.arch,
        phases: request.phases.clone(),
        resume: request.resume,
        kexec: request.kexec.clone(),
        disk,
        root: PathBuf::from("/mnt"),
        extra_files: request.extra_files.clone(),
        chown: request
            .chown
            .iter()
            .map(|(path, owner)| Chown {
                path: path.clone(),
                owner: owner.clone(),
            })
            .collect(),
        copy_host_keys: request.copy_host_keys,
        substitute_on_destination: request.substitute_on_destination,
        substituters,
        build_on_target: built.build_on_target,
        force_kexec: request.force_kexec,
        nix_args,
        timeouts: request.timeouts,
        ram: Default::default(),
    })
}

/// Installs one node that generates its hardware configuration: preflight for every phase, then
/// kexec alone, then the configuration written to `path`, then (for a flake) the system build, then
/// the remaining phases as a resumed run. The outer error is about the preparation (generating,
/// writing, building); the inner one is the install's own.
pub fn install_with_hardware_config(
    request: &InstallRequest,
    spec: NodeSpec,
    installer: &Installer<'_>,
    kind: hwconfig::Kind,
    path: &Path,
) -> Result<Result<Summary, InstallError>, PrepareError> {
    if let Err(e) = crate::preflight_node(&spec, installer) {
        return Ok(Err(e));
    }
    let rest = spec.phases.clone();
    let mut first = spec;
    first.phases = PhaseSet::from_phases([Phase::Kexec]);
    if let Err(e) = crate::install_node(&first, installer) {
        return Ok(Err(e));
    }
    let node = first.node.clone();
    let (text, source) = hwconfig::generate(
        first.session.transport(),
        kind,
        first.disk.as_ref().map(|d| &d.plan),
    )
    .map_err(|source| PrepareError::HardwareConfig {
        node: node.clone(),
        source,
    })?;
    std::fs::write(path, &text).map_err(|source| PrepareError::WriteHardwareConfig {
        node: node.clone(),
        path: path.to_path_buf(),
        source,
    })?;
    installer.reporter.report(&crate::Event::Progress {
        host: node.clone(),
        phase: Phase::Kexec,
        message: format!(
            "hardware configuration written to {} ({})",
            path.display(),
            match source {
                hwconfig::Source::Tool => "by the installer's own tool",
                hwconfig::Source::Nixpave => "by nixpave from the machine's facts",
            }
        ),
    });
    let mut second = first;
    if second.toplevel == DEFERRED_BUILD {
        let built = build(&request.flake, &node, request.build_on, &second.nix_args)?;
        second.arch = built.arch;
        second.build_on_target = built.build_on_target;
        second.toplevel = built.toplevel;
    }
    second.phases = rest;
    second.resume = true;
    Ok(crate::install_node(&second, installer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn targets_single_and_per_node() {
        let one = targets_for(&["a".into()], &["root@h".into()]).unwrap();
        assert_eq!(one, vec![Some("root@h".to_string())]);
        let two = targets_for(&["a".into(), "b".into()], &["b=root@hb".into()]).unwrap();
        assert_eq!(two, vec![None, Some("root@hb".to_string())]);
        let e = targets_for(&["a".into(), "b".into()], &["root@h".into()]).unwrap_err();
        assert!(matches!(e, PrepareError::AmbiguousTargets));
        assert_eq!(e.kind(), FailureKind::Usage);
        let e = targets_for(&["a".into()], &["c=root@h".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--target c=root@h: c is not one of the nodes"
        );
    }

    #[test]
    fn post_kexec_target_is_root_at_the_new_address() {
        let t = target("admin@10.0.0.5:2222");
        assert_eq!(post_kexec_target(&t, None, None), None);
        assert_eq!(
            post_kexec_target(&t, Some("10.0.0.9"), None),
            Some(target("root@10.0.0.9:2222"))
        );
        assert_eq!(
            post_kexec_target(&t, None, Some(22)),
            Some(target("root@10.0.0.5:22"))
        );
    }

    #[test]
    fn a_resume_after_kexec_logs_in_as_root_at_the_installer() {
        let t = target("admin@h:2222");
        let after = target("root@h2:22");
        assert_eq!(resume_login(&t, Some(&after), false), t);
        assert_eq!(resume_login(&t, None, false), t);
        assert_eq!(resume_login(&t, Some(&after), true), after);
        assert_eq!(resume_login(&t, None, true), target("root@h:2222"));
    }

    #[test]
    fn nix_args_from_options() {
        let opts = vec![("cores".to_string(), "2".to_string())];
        assert_eq!(nix_args(&opts, false, false), ["--option", "cores", "2"]);
        assert_eq!(
            nix_args(&opts, true, true),
            ["--option", "cores", "2", "-L", "--show-trace"]
        );
        assert!(nix_args(&[], false, false).is_empty());
    }

    #[test]
    fn substituters_from_the_flake_then_options() {
        let flake = vec![(
            "extra-substituters".to_string(),
            "https://f.example".to_string(),
        )];
        let options = vec![
            (
                "extra-substituters".to_string(),
                "https://c.example".to_string(),
            ),
            (
                "extra-trusted-public-keys".to_string(),
                "c-1:CCC=".to_string(),
            ),
            ("cores".to_string(), "2".to_string()),
        ];
        let s = substituter_settings(&flake, &options);
        assert_eq!(s.substituters, ["https://f.example", "https://c.example"]);
        assert_eq!(s.trusted_public_keys, ["c-1:CCC="]);
    }

    #[test]
    fn where_the_system_is_built() {
        assert_eq!(BuildOn::from_name("target"), BuildOn::Remote);
        assert_eq!(BuildOn::from_name("remote"), BuildOn::Remote);
        assert_eq!(BuildOn::from_name("auto"), BuildOn::Auto);
        assert_eq!(BuildOn::from_name("local"), BuildOn::Local);
        assert!(builds_remotely(BuildOn::Remote, "x86_64", "x86_64-linux"));
        assert!(!builds_remotely(BuildOn::Local, "x86_64", "aarch64-linux"));
        assert!(!builds_remotely(BuildOn::Auto, "x86_64", "x86_64-linux"));
        assert!(builds_remotely(BuildOn::Auto, "x86_64", "aarch64-linux"));
    }

    #[test]
    fn a_disk_spec_from_a_layout() {
        let layout = Layout::from_json(&serde_json::json!({
            "disk": { "main": { "device": "/dev/vdb", "type": "disk", "content": {
                "type": "gpt", "partitions": {
                    "boot": { "size": "1M", "type": "EF02" },
                    "root": { "size": "100%", "content": {
                        "type": "filesystem", "format": "ext4", "mountpoint": "/" } } } } } }
        }))
        .unwrap();
        let keys = vec![("/tmp/k".to_string(), "./k".to_string())];
        let spec = disk_spec("web1", &layout, Mode::DestroyFormatMount, &keys).unwrap();
        assert!(spec.plan.operations.iter().any(|o| o.destructive));
        let mount = spec.mount_plan.expect("a mount plan");
        assert!(mount.operations.iter().all(|o| !o.destructive));
        assert_eq!(spec.needs.len(), 1);
        assert_eq!(spec.needs[0].name, "main");
        assert_eq!(spec.needs[0].device, "/dev/vdb");
        assert!(spec.needs[0].min_bytes >= 1 << 20, "{:?}", spec.needs);
        assert_eq!(spec.keys[0].remote, PathBuf::from("/tmp/k"));
        assert_eq!(spec.keys[0].local, PathBuf::from("./k"));
    }

    #[test]
    fn a_local_tarball_cannot_be_fetched_on_the_target() {
        let e = kexec_spec("/tmp/x.tar.gz", true, None).unwrap_err();
        assert!(matches!(e, PrepareError::FetchOnTargetNeedsUrl));
        let k = kexec_spec("https://example.org/i.tar.gz", true, Some("--x".into())).unwrap();
        assert_eq!(k.fetch_url.as_deref(), Some("https://example.org/i.tar.gz"));
        assert!(k.tarball.is_none());
        assert_eq!(k.extra_flags.as_deref(), Some("--x"));
    }
}
