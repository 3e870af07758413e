//! `nixpave install`: preflight → kexec → disk → install → reboot → verify, resumable.
//!
//! Only argument parsing, input gathering (build, layout, tarball) and rendering live here; the
//! work is `nixpave_install`.

use super::connect::{AskPassword, ConnectArgs};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use nixpave_disk::{LayoutSource, LoadOptions, Mode, Plan, PlanOptions};
use nixpave_install::events::{render_line, Event};
use nixpave_install::kexec::{self, KexecSource};
use nixpave_install::phase::PhaseSet;
use nixpave_install::preflight::{arch_of_system, min_disk_bytes, DiskNeed};
use nixpave_install::run::{DiskSpec, KexecSpec, NodeSpec, Timeouts};
use nixpave_install::state::StateStore;
use nixpave_install::steps::{Chown, EncryptionKey, SubstituterSettings};
use nixpave_install::{FailureKind, InstallError, Installer, Reporter};
use nixpave_remote::SshConnection;
use nixpave_remote::{SshOptions, SshTransport, Target};

use crate::exit::{self, CliError};

/// The toplevel of a node whose build waits for its hardware configuration.
const DEFERRED_BUILD: &str = "(built after the hardware configuration is generated)";

/// Arguments of `nixpave install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The node(s) to install: `nixosConfigurations` names; several (comma-separated) install in parallel.
    #[arg(value_name = "NODE[,NODE…]")]
    nodes: String,
    /// The flake holding the nodes' configurations.
    #[arg(default_value = ".")]
    flake: String,
    /// Where to install: USER@HOST[:PORT] (one node), or NODE=USER@HOST[:PORT] (repeat per node).
    /// Defaults to the flake's `deploy.nodes.NODE.hostname`.
    #[arg(long, value_name = "USER@HOST")]
    target: Vec<String>,
    /// The installer: a nixos-images kexec tarball (path or URL; URLs are cached locally).
    #[arg(long, value_name = "TARBALL|URL")]
    kexec: Option<String>,
    /// With a --kexec URL: download it on the target instead of uploading it from here
    /// (the RAM check then cannot know the initrd size).
    #[arg(long, requires = "kexec")]
    kexec_fetch_on_target: bool,
    /// The phases to run (preflight always runs).
    #[arg(long, default_value = "kexec,disk,install,reboot,verify", value_parser = parse_phases)]
    phases: PhaseSet,
    /// Use DEVICE for the layout's disk NAME.
    #[arg(long, value_name = "NAME=DEVICE", value_parser = nixpave_disk::parse_disk_override)]
    disk: Vec<(String, String)>,
    /// What the disk phase does: `destroy,format,mount` (the default; wipes the layout's disks, after
    /// confirmation), `format` (creates what does not exist yet, keeps what does, then mounts) or `mount`
    /// (only mounts: reinstall keeping every filesystem and its data). `disko` means the default.
    #[arg(long, default_value = "destroy,format,mount", value_parser = parse_disko_mode)]
    disko_mode: Mode,
    /// Read the layout from this file (.nix or .json) instead of the node's `config.disko.devices`.
    #[arg(long, value_name = "FILE")]
    disk_config: Option<PathBuf>,
    /// Copy this directory's contents into the new system's root (modes kept, owned by root).
    #[arg(long, value_name = "DIR")]
    extra_files: Option<PathBuf>,
    /// Change the owner of PATH (recursively) in the new system; repeatable.
    #[arg(long, num_args = 2, value_names = ["PATH", "UID:GID"], action = clap::ArgAction::Append)]
    chown: Vec<String>,
    /// Write the local file LOCAL to REMOTE in the installer's RAM (mode 0600) before the disk
    /// phase; repeatable. Contents travel on stdin, never in an argv or a log.
    #[arg(long, num_args = 2, value_names = ["REMOTE", "LOCAL"], action = clap::ArgAction::Append)]
    disk_encryption_keys: Vec<String>,
    /// Copy the installer's ssh host keys (the machine's original ones, kept across kexec) into the
    /// new system. The default; kept for nixos-anywhere's command line.
    #[arg(long, conflicts_with = "no_copy_host_keys")]
    copy_host_keys: bool,
    /// Do not copy the machine's host keys into the new system (it then needs its own, from the
    /// flake or --extra-files, or verify refuses the new key: checking stays strict).
    #[arg(long)]
    no_copy_host_keys: bool,
    /// Build the system here (`local`), on the target (`remote`, also spelled `target`: only the
    /// derivations are copied), or `auto`: here when this machine builds for the node's system, else remote.
    #[arg(long, default_value = "local", value_parser = ["auto", "local", "remote", "target"])]
    build_on: String,
    /// Let the target fetch store paths from its own substituters (the default), plus the flake's
    /// `nixConfig` and `--option` substituters and trusted keys, written to its nix.conf.
    #[arg(long, conflicts_with = "no_substitute_on_destination")]
    substitute_on_destination: bool,
    /// Copy every store path from here instead of letting the target substitute.
    #[arg(long)]
    no_substitute_on_destination: bool,
    /// kexec even when the target already runs a NixOS installer.
    #[arg(long)]
    force_kexec: bool,
    /// Extra flags for kexec, handed to the installer's `kexec/run --kexec-extra-flags`.
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    kexec_extra_flags: Option<String>,
    /// A nix option for the build and the copy (`--option NAME VALUE`); repeatable.
    #[arg(long, num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    option: Vec<String>,
    /// Show nix's build logs.
    #[arg(long, short = 'L')]
    print_build_logs: bool,
    /// Show nix's evaluation traces.
    #[arg(long)]
    show_trace: bool,
    /// Nodes installed at once (0: all).
    #[arg(long, default_value_t = 4)]
    max_parallel: usize,
    /// Install this prebuilt system closure instead of building the flake's toplevel.
    #[arg(long, value_name = "STORE_PATH")]
    system: Option<String>,
    /// After kexec, generate the machine's hardware configuration and write it to PATH (beside the
    /// flake), then build the system: `nixos-facter` (its JSON report) or `nixos-generate-config` (a
    /// module, `--show-hardware-config --no-filesystems`), run on the installer when it has the tool;
    /// without nixos-generate-config nixpave writes the module from the machine's facts, without
    /// nixos-facter it stops (nothing written). One node at a time.
    #[arg(long, num_args = 2, value_names = ["KIND", "PATH"])]
    generate_hardware_config: Vec<String>,
    /// Continue from the last finished phase of an earlier run.
    #[arg(long)]
    resume: bool,
    /// Confirm wiping the layout's disks without asking (needed when there is no terminal).
    #[arg(long)]
    yes_wipe_all_disks: bool,
    /// Preflight only: gather facts, show the plan and any refusal; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print events as JSON lines on stdout.
    #[arg(long)]
    json: bool,
    /// The ssh port when --target does not name one.
    #[arg(long, short = 'p', value_name = "PORT")]
    ssh_port: Option<u16>,
    /// The installer answers on another address after kexec (a provider that changes it).
    /// The machine's host keys are recorded for it before kexec, so checking stays strict.
    #[arg(long, value_name = "HOST")]
    post_kexec_host: Option<String>,
    /// The installer's ssh port after kexec, when it differs.
    #[arg(long, value_name = "PORT")]
    post_kexec_ssh_port: Option<u16>,
    /// Where per-node state files live (default: $NIXPAVE_STATE_DIR or ~/.local/state/nixpave/install).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds to wait for the installer's ssh after kexec.
    #[arg(long, default_value_t = 600)]
    kexec_timeout: u64,
    /// Seconds to wait for the installed system's ssh after the reboot.
    #[arg(long, default_value_t = 600)]
    reboot_timeout: u64,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// `--disko-mode` (pure): nixos-anywhere's names and nixpave's.
fn parse_disko_mode(s: &str) -> Result<Mode, String> {
    match s {
        "destroy,format,mount" | "disko" => Ok(Mode::DestroyFormatMount),
        "format" | "format,mount" => Ok(Mode::FormatMount),
        "mount" => Ok(Mode::Mount),
        other => Err(format!(
            "unknown disko mode `{other}` (expected destroy,format,mount, format or mount)"
        )),
    }
}

fn parse_phases(s: &str) -> Result<PhaseSet, String> {
    PhaseSet::parse(s).map_err(|e| e.to_string())
}

fn usage(message: impl std::fmt::Display) -> CliError {
    CliError::usage(message)
}

fn failed(message: impl std::fmt::Display) -> CliError {
    CliError::failed(message)
}

/// Pairs of a `num_args = 2` option.
fn pairs(values: &[String]) -> Vec<(String, String)> {
    values
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// The target of each node from `--target` (pure): one bare target for a single node, else
/// `NODE=TARGET` pairs. Nodes without one are `None` (looked up in the flake).
fn targets_for(nodes: &[String], targets: &[String]) -> Result<Vec<Option<String>>, CliError> {
    let bare: Vec<&String> = targets.iter().filter(|t| !t.contains('=')).collect();
    if !bare.is_empty() && (nodes.len() > 1 || bare.len() > 1) {
        return Err(usage(
            "with several nodes, give targets as --target NODE=USER@HOST (one per node)",
        ));
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
    for t in targets.iter().filter_map(|t| t.split_once('=')) {
        if !nodes.iter().any(|n| n == t.0) {
            return Err(usage(format!(
                "--target {}={}: {} is not one of the nodes",
                t.0, t.1, t.0
            )));
        }
    }
    Ok(out)
}

/// Reads `deploy.nodes.NODE.hostname` from the flake.
fn flake_hostname(flake: &str, node: &str) -> Result<String, CliError> {
    let out = std::process::Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "eval",
            "--raw",
        ])
        .arg(format!("{flake}#deploy.nodes.\"{node}\".hostname"))
        .output()
        .map_err(|e| failed(format!("cannot run nix: {e}")))?;
    if !out.status.success() {
        return Err(usage(format!(
            "{node}: no --target given and the flake has no deploy.nodes.{node}.hostname"
        )));
    }
    Ok(format!(
        "root@{}",
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

/// Prints events as lines (stderr) or JSON lines (stdout).
struct Printer {
    json: bool,
    out: Mutex<()>,
}

impl Reporter for Printer {
    fn report(&self, event: &Event) {
        let _guard = self.out.lock();
        if self.json {
            if let Ok(line) = serde_json::to_string(event) {
                println!("{line}");
            }
        } else if !crate::ui::quiet()
            || matches!(
                event,
                Event::Refused { .. } | Event::Failed { .. } | Event::Finished { .. }
            )
        {
            // -q: how each node ended, not how it got there.
            eprintln!("{}", render_line(event));
        }
    }
}

fn render_plan(node: &str, plan: &Plan) -> String {
    let mut s = format!(
        "{node}: disk plan ({} steps; ! = destroys data):\n",
        plan.operations.len()
    );
    for op in &plan.operations {
        s.push_str(&format!(
            "  {} {}\n",
            if op.destructive { "!" } else { " " },
            op.description
        ));
    }
    s
}

/// Asks on the terminal; one node at a time.
fn ask_wipe(node: &str, plan: &Plan, lock: &Mutex<()>) -> bool {
    let _g = lock.lock();
    eprint!("{}", render_plan(node, plan));
    eprint!("Type `{node}` to wipe these disks and install: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    answer.trim() == node
}

struct Prepared {
    spec: NodeSpec,
}

fn prepare(
    args: &InstallArgs,
    node: &str,
    target: Option<String>,
    kexec: Option<&KexecSpec>,
) -> Result<Prepared, CliError> {
    let target = match target {
        Some(t) => t,
        None => flake_hostname(&args.flake, node)?,
    };
    let mut target: Target = target
        .parse()
        .map_err(|e: nixpave_remote::TargetParseError| usage(e.to_string()))?;
    if target.port.is_none() {
        target.port = args.ssh_port;
    }
    let after_kexec_target = (args.post_kexec_host.is_some() || args.post_kexec_ssh_port.is_some())
        .then(|| Target {
            user: Some("root".into()),
            host: args
                .post_kexec_host
                .clone()
                .unwrap_or_else(|| target.host.clone()),
            port: args.post_kexec_ssh_port.or(target.port),
        });
    let nix_args = nix_args(args);
    let (toplevel, arch, drv) = match &args.system {
        Some(path) => (path.clone(), std::env::consts::ARCH.to_string(), None),
        // Built once the hardware configuration is written beside the flake (after kexec).
        None if !args.generate_hardware_config.is_empty() => (
            DEFERRED_BUILD.to_string(),
            std::env::consts::ARCH.to_string(),
            None,
        ),
        None => {
            let built = build(args, node, &nix_args)?;
            let remote = built.toplevel.is_empty();
            (
                if remote { built.out } else { built.toplevel },
                arch_of_system(&built.system).to_string(),
                remote.then_some(built.drv),
            )
        }
    };
    let disk = if args.phases.contains(nixpave_install::Phase::Disk)
        || args.phases.contains(nixpave_install::Phase::Install)
    {
        let source = match &args.disk_config {
            Some(f) => LayoutSource::File(f.clone()),
            None => LayoutSource::Flake {
                flake_ref: args.flake.clone(),
                name: node.to_string(),
            },
        };
        let options = LoadOptions {
            args: Vec::new(),
            disk_overrides: args.disk.clone(),
        };
        match nixpave_disk::load_layout(&source, &options) {
            Ok(layout) => {
                let plan_options = PlanOptions::default();
                let plan = nixpave_disk::plan(&layout, args.disko_mode, &plan_options)
                    .map_err(|e| usage(format!("{node}: {e}")))?;
                let mount = nixpave_disk::plan(&layout, Mode::Mount, &plan_options).ok();
                let keys = pairs(&args.disk_encryption_keys)
                    .into_iter()
                    .map(|(remote, local)| EncryptionKey {
                        remote: remote.into(),
                        local: local.into(),
                    })
                    .collect();
                Some(DiskSpec {
                    plan,
                    mount_plan: mount,
                    needs: layout
                        .disks()
                        .into_iter()
                        .map(|d| DiskNeed {
                            min_bytes: layout.disk.get(&d.name).map_or(0, min_disk_bytes),
                            name: d.name,
                            device: d.device,
                        })
                        .collect(),
                    keys,
                })
            }
            Err(e) if args.phases.contains(nixpave_install::Phase::Disk) => {
                return Err(usage(format!("{node}: loading the disk layout: {e}")))
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let options = SshOptions {
        name: Some(node.to_string()),
        ..args.connect.ssh_options(AskPassword::Once)
    };
    // Resuming after kexec: the old system's login user is gone, the installer takes root's keys.
    let state = StateStore::new(
        args.state_dir
            .clone()
            .unwrap_or_else(StateStore::default_dir),
    );
    let after_kexec = args.resume
        && matches!(state.load(node), Ok(Some(st)) if st.is_done(nixpave_install::Phase::Kexec));
    let login = match (after_kexec, &after_kexec_target) {
        (true, Some(after)) => after.clone(),
        (true, None) => nixpave_remote::root_target(&target),
        (false, _) => target.clone(),
    };
    let substituters = substituters(args, node)?;
    let ssh = SshTransport::connect(&login, options.clone()).map_err(|e| {
        CliError::msg(
            super::connect::connect_exit_code(&e),
            format!("{node}: {e}"),
        )
    })?;
    Ok(Prepared {
        spec: NodeSpec {
            node: node.to_string(),
            session: Box::new(SshConnection::with_login_after_kexec(
                ssh,
                options,
                after_kexec_target,
            )),
            toplevel,
            arch,
            phases: args.phases.clone(),
            resume: args.resume,
            kexec: kexec.cloned(),
            disk,
            root: PathBuf::from("/mnt"),
            extra_files: args.extra_files.clone(),
            chown: pairs(&args.chown)
                .into_iter()
                .map(|(path, owner)| Chown { path, owner })
                .collect(),
            copy_host_keys: !args.no_copy_host_keys,
            substitute_on_destination: !args.no_substitute_on_destination,
            substituters,
            build_on_target: drv,
            force_kexec: args.force_kexec,
            nix_args,
            timeouts: Timeouts {
                kexec_up: Duration::from_secs(args.kexec_timeout),
                verify_up: Duration::from_secs(args.reboot_timeout),
                ..Timeouts::default()
            },
            ram: Default::default(),
        },
    })
}

fn exit_code_of(kind: FailureKind) -> u8 {
    match kind {
        FailureKind::Usage => exit::USAGE,
        FailureKind::Refused => exit::REFUSED,
        FailureKind::Failed => exit::FAILED,
    }
}

fn run_inner(args: InstallArgs) -> Result<u8, CliError> {
    if let Some(dir) = &args.extra_files {
        if !dir.is_dir() {
            return Err(usage(format!(
                "--extra-files {}: not a directory",
                dir.display()
            )));
        }
    }
    for (_, local) in pairs(&args.disk_encryption_keys) {
        if std::fs::metadata(&local).is_err() {
            return Err(usage(format!(
                "--disk-encryption-keys …: cannot read {local}"
            )));
        }
    }
    for (path, owner) in pairs(&args.chown) {
        if !path.starts_with('/') || !owner.contains(':') {
            return Err(usage(format!(
                "--chown {path} {owner}: expected an absolute PATH and UID:GID"
            )));
        }
    }
    let nodes: Vec<String> = args
        .nodes
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    if nodes.is_empty() {
        return Err(usage("no node named"));
    }
    let targets = targets_for(&nodes, &args.target)?;
    let kexec_spec = match &args.kexec {
        Some(src) => match (KexecSource::parse(src), args.kexec_fetch_on_target) {
            (KexecSource::Url(url), true) => Some(KexecSpec {
                tarball: None,
                fetch_url: Some(url),
                remote_dir: "/root/nixpave-kexec".into(),
                extra_flags: args.kexec_extra_flags.clone(),
            }),
            (KexecSource::File(_), true) => {
                return Err(usage("--kexec-fetch-on-target needs a --kexec URL"))
            }
            (source, false) => {
                let local = kexec::fetch(&source, &kexec::default_cache_dir())
                    .map_err(|e| usage(e.to_string()))?;
                let tarball = kexec::inspect(&local).map_err(|e| usage(e.to_string()))?;
                Some(KexecSpec {
                    tarball: Some(tarball),
                    fetch_url: None,
                    remote_dir: "/root/nixpave-kexec".into(),
                    extra_flags: args.kexec_extra_flags.clone(),
                })
            }
        },
        None => None,
    };
    let mut specs = Vec::new();
    for (node, target) in nodes.iter().zip(targets) {
        specs.push(prepare(&args, node, target, kexec_spec.as_ref())?.spec);
    }
    let printer = Printer {
        json: args.json,
        out: Mutex::new(()),
    };
    let ask_lock = Mutex::new(());
    let interactive = std::io::stdin().is_terminal();
    let yes = args.yes_wipe_all_disks;
    let json = args.json;
    let confirm = move |node: &str, plan: &Plan| -> bool {
        if yes {
            if !json {
                eprint!("{}", render_plan(node, plan));
            }
            return true;
        }
        interactive && ask_wipe(node, plan, &ask_lock)
    };
    // askPassword devices: asked now, hidden and twice, before anything runs (one answer per name).
    let mut secrets = std::collections::BTreeMap::new();
    for spec in &specs {
        for (name, confirm) in spec
            .disk
            .as_ref()
            .map(|d| nixpave_install::disk::prompts(&d.plan))
            .unwrap_or_default()
        {
            if secrets.contains_key(&name) {
                continue;
            }
            use nixpave_disk::exec::SecretPrompt;
            let secret = super::disk_apply::TtyPrompt
                .secret(&name, confirm)
                .map_err(|e| usage(format!("{}: {e}", spec.node)))?;
            secrets.insert(name, secret);
        }
    }
    let engine = nixpave_install::disk::ExecEngine {
        root_mountpoint: "/mnt".into(),
        secrets: nixpave_install::disk::Secrets::new(secrets),
    };
    let installer = Installer {
        state: StateStore::new(
            args.state_dir
                .clone()
                .unwrap_or_else(StateStore::default_dir),
        ),
        reporter: &printer,
        disk_engine: &engine,
        confirm: &confirm,
    };
    if args.dry_run {
        let mut worst = exit::OK;
        for spec in &specs {
            match nixpave_install::preflight_node(spec, &installer) {
                Ok(observed) => {
                    eprintln!(
                        "{}: preflight passed ({} {}, {} MiB RAM, installer: {})",
                        spec.node,
                        observed.facts.os.id,
                        observed.facts.arch,
                        observed.facts.memory_bytes >> 20,
                        observed.is_installer()
                    );
                    if let Some(d) = &spec.disk {
                        eprint!("{}", render_plan(&spec.node, &d.plan));
                    }
                }
                Err(e) => {
                    eprintln!("{e}");
                    worst = worst.max(exit_code_of(e.kind()));
                }
            }
        }
        eprintln!("dry run: nothing was written");
        return Ok(worst);
    }
    let results = match hardware_config(&args)? {
        Some((kind, path)) => {
            let spec = specs
                .pop()
                .filter(|_| nodes.len() == 1)
                .ok_or_else(|| usage("--generate-hardware-config installs one node at a time"))?;
            vec![install_with_hardware_config(
                &args, spec, &installer, kind, &path,
            )?]
        }
        None => nixpave_install::install_all(&specs, &installer, args.max_parallel),
    };
    let failures: Vec<&InstallError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    for e in &failures {
        if !matches!(e, InstallError::Refused { .. }) || args.json {
            eprintln!("{e}");
        }
    }
    Ok(exit::aggregate(results.iter().map(|r| match r {
        Ok(_) => exit::OK,
        Err(e) => exit_code_of(e.kind()),
    })))
}

/// What the installer's nix substitutes from besides its defaults: the flake's `nixConfig` (when the
/// system comes from the flake) and `--option` substituters; nothing with `--no-substitute-on-destination`.
fn substituters(args: &InstallArgs, node: &str) -> Result<SubstituterSettings, CliError> {
    if args.no_substitute_on_destination {
        return Ok(SubstituterSettings::default());
    }
    let from_flake = if args.system.is_none() {
        let flake = nixpave_nix::flake::FlakeTarget::parse(&args.flake).flake;
        nixpave_nix::flake::flake_nix_config(&flake, &Default::default())
            .map_err(|e| failed(format!("{node}: reading the flake's nixConfig: {e}")))?
    } else {
        Vec::new()
    };
    let options = pairs(&args.option);
    Ok(SubstituterSettings::from_settings(
        from_flake
            .iter()
            .chain(options.iter())
            .map(|(n, v)| (n.as_str(), v.as_str())),
    ))
}

/// The extra `nix` arguments of `--option`, `-L` and `--show-trace` (pure).
fn nix_args(args: &InstallArgs) -> Vec<String> {
    let mut v = Vec::new();
    for (name, value) in pairs(&args.option) {
        v.extend(["--option".to_string(), name, value]);
    }
    if args.print_build_logs {
        v.push("-L".into());
    }
    if args.show_trace {
        v.push("--show-trace".into());
    }
    v
}

/// A node's system: built here (`toplevel` set), or, to be built on the target, only evaluated
/// (`toplevel` empty, `out` its output path).
struct Built {
    toplevel: String,
    out: String,
    drv: String,
    system: String,
}

/// Evaluates the node's toplevel, then builds it here unless `--build-on` says remote (or auto and
/// this machine does not build for the node's system).
fn build(args: &InstallArgs, node: &str, nix_args: &[String]) -> Result<Built, CliError> {
    let eval = nixpave_install::nix::eval_toplevel(&args.flake, node, nix_args)
        .map_err(|e| failed(format!("{node}: evaluating the system: {e}")))?;
    let here = std::env::consts::ARCH == arch_of_system(&eval.system);
    let remote = match args.build_on.as_str() {
        "remote" | "target" => true,
        "auto" => !here,
        _ => false,
    };
    if remote {
        return Ok(Built {
            toplevel: String::new(),
            out: eval.out,
            drv: eval.drv,
            system: eval.system,
        });
    }
    let built = nixpave_install::nix::build_evaluated(&eval, nix_args)
        .map_err(|e| failed(format!("{node}: building the system: {e}")))?;
    Ok(Built {
        out: built.toplevel.clone(),
        toplevel: built.toplevel,
        drv: built.drv,
        system: built.system,
    })
}

/// `--generate-hardware-config KIND PATH`, checked (pure).
fn hardware_config(
    args: &InstallArgs,
) -> Result<Option<(nixpave_install::hwconfig::Kind, PathBuf)>, CliError> {
    match args.generate_hardware_config.as_slice() {
        [] => Ok(None),
        [kind, path] => Ok(Some((
            kind.parse()
                .map_err(|e: String| usage(format!("--generate-hardware-config: {e}")))?,
            PathBuf::from(path),
        ))),
        _ => Err(usage("--generate-hardware-config KIND PATH")),
    }
}

/// Preflight for every phase, then kexec alone, then the hardware configuration written to `path`,
/// then (for a flake) the system build, then the remaining phases as a resumed run.
fn install_with_hardware_config(
    args: &InstallArgs,
    spec: NodeSpec,
    installer: &Installer<'_>,
    kind: nixpave_install::hwconfig::Kind,
    path: &std::path::Path,
) -> Result<Result<nixpave_install::Summary, InstallError>, CliError> {
    if let Err(e) = nixpave_install::preflight_node(&spec, installer) {
        return Ok(Err(e));
    }
    let rest = spec.phases.clone();
    let mut first = spec;
    first.phases = PhaseSet::from_phases([nixpave_install::Phase::Kexec]);
    if let Err(e) = nixpave_install::install_node(&first, installer) {
        return Ok(Err(e));
    }
    let node = first.node.clone();
    let (text, source) = nixpave_install::hwconfig::generate(
        first.session.transport(),
        kind,
        first.disk.as_ref().map(|d| &d.plan),
    )
    .map_err(|e| {
        failed(format!(
            "{node}: generating the hardware configuration: {e}"
        ))
    })?;
    std::fs::write(path, &text)
        .map_err(|e| failed(format!("{node}: writing {}: {e}", path.display())))?;
    installer
        .reporter
        .report(&nixpave_install::Event::Progress {
            host: node.clone(),
            phase: nixpave_install::Phase::Kexec,
            message: format!(
                "hardware configuration written to {} ({})",
                path.display(),
                match source {
                    nixpave_install::hwconfig::Source::Tool => "by the installer's own tool",
                    nixpave_install::hwconfig::Source::Nixpave =>
                        "by nixpave from the machine's facts",
                }
            ),
        });
    let mut second = first;
    if second.toplevel == DEFERRED_BUILD {
        let built = build(args, &node, &second.nix_args)?;
        second.arch = arch_of_system(&built.system).to_string();
        second.build_on_target = built.toplevel.is_empty().then(|| built.drv.clone());
        second.toplevel = if built.toplevel.is_empty() {
            built.out
        } else {
            built.toplevel
        };
    }
    second.phases = rest;
    second.resume = true;
    Ok(nixpave_install::install_node(&second, installer))
}

/// Runs `nixpave install`.
pub fn run(args: InstallArgs) -> miette::Result<ExitCode> {
    match run_inner(args) {
        Ok(code) => Ok(exit::code(code)),
        Err(e) => Ok(e.exit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_single_and_per_node() {
        let one = targets_for(&["a".into()], &["root@h".into()]).ok().unwrap();
        assert_eq!(one, vec![Some("root@h".to_string())]);
        let two = targets_for(&["a".into(), "b".into()], &["b=root@hb".into()])
            .ok()
            .unwrap();
        assert_eq!(two, vec![None, Some("root@hb".to_string())]);
        assert!(targets_for(&["a".into(), "b".into()], &["root@h".into()]).is_err());
        assert!(targets_for(&["a".into()], &["c=root@h".into()]).is_err());
    }

    #[test]
    fn disk_overrides_and_pairs() {
        let parse = nixpave_disk::parse_disk_override;
        assert_eq!(
            parse("main=/dev/vdb"),
            Ok(("main".to_string(), "/dev/vdb".to_string()))
        );
        assert!(parse("main").is_err());
        assert!(parse("main=vdb").is_err());
        assert_eq!(
            pairs(&["/a".into(), "1:2".into(), "/b".into(), "3:4".into()]),
            vec![("/a".into(), "1:2".into()), ("/b".into(), "3:4".into())]
        );
    }

    #[test]
    fn substituters_from_options_and_none_without_substitution() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: InstallArgs,
        }
        let base = [
            "install",
            "web1",
            "--system",
            "/nix/store/x-sys",
            "--option",
            "extra-substituters",
            "https://c.example",
            "--option",
            "extra-trusted-public-keys",
            "c-1:CCC=",
            "--option",
            "cores",
            "2",
        ];
        let cli = Cli::try_parse_from(base).ok().unwrap();
        let s = substituters(&cli.args, "web1").ok().unwrap();
        assert_eq!(s.substituters, ["https://c.example"]);
        assert_eq!(s.trusted_public_keys, ["c-1:CCC="]);
        let off = Cli::try_parse_from(base.iter().chain(&["--no-substitute-on-destination"]))
            .ok()
            .unwrap();
        assert!(substituters(&off.args, "web1").ok().unwrap().is_empty());
    }

    #[test]
    fn parses_the_documented_command_line() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: InstallArgs,
        }
        let cli = Cli::try_parse_from([
            "install",
            "web1,web2",
            "path:/f",
            "--target",
            "web1=root@10.0.0.1",
            "--phases",
            "disk,install",
            "--chown",
            "/home/a",
            "1000:100",
            "--disk-encryption-keys",
            "/tmp/k",
            "./k",
            "--disk",
            "main=/dev/vda",
            "--copy-host-keys",
            "--resume",
            "--build-on",
            "target",
        ])
        .ok()
        .unwrap();
        assert_eq!(cli.args.nodes, "web1,web2");
        assert_eq!(cli.args.flake, "path:/f");
        assert_eq!(cli.args.phases.to_string(), "disk,install");
        assert_eq!(
            pairs(&cli.args.chown),
            vec![("/home/a".into(), "1000:100".into())]
        );
        assert!(cli.args.resume && cli.args.copy_host_keys);
        assert!(Cli::try_parse_from(["install", "a", "--phases", "format"]).is_err());
        assert!(Cli::try_parse_from(["install", "a", "--build-on", "moon"]).is_err());
        assert_eq!(cli.args.disko_mode, Mode::DestroyFormatMount);
        for (given, mode) in [
            ("mount", Mode::Mount),
            ("format", Mode::FormatMount),
            ("disko", Mode::DestroyFormatMount),
        ] {
            let c = Cli::try_parse_from(["install", "a", "--disko-mode", given])
                .ok()
                .unwrap();
            assert_eq!(c.args.disko_mode, mode);
        }
        assert!(Cli::try_parse_from(["install", "a", "--disko-mode", "destroy"]).is_err());
    }
}
