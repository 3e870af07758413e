//! `nixpave install`: preflight → kexec → disk → install → reboot → verify, resumable.
//!
//! Only argument parsing, confirmations and rendering live here: the flags become a
//! [`InstallRequest`], and `nixpave_install::prepare` turns it into each node's spec (target, build,
//! disk plan, connection); the work is `nixpave_install`.

use super::connect::{AskPassword, ConnectArgs};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use nixpave_disk::{Mode, Plan};
use nixpave_install::events::{render_line, Event};
use nixpave_install::phase::PhaseSet;
use nixpave_install::prepare::{self, BuildOn, InstallRequest, PrepareError};
use nixpave_install::run::Timeouts;
use nixpave_install::{FailureKind, InstallError, Installer, Reporter};

use crate::exit::{self, CliError};

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

/// Pairs of a `num_args = 2` option.
fn pairs(values: &[String]) -> Vec<(String, String)> {
    values
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// `--generate-hardware-config KIND PATH`, checked (pure).
fn hardware_config(
    values: &[String],
) -> Result<Option<(nixpave_install::hwconfig::Kind, PathBuf)>, CliError> {
    match values {
        [] => Ok(None),
        [kind, path] => Ok(Some((
            kind.parse()
                .map_err(|e: String| usage(format!("--generate-hardware-config: {e}")))?,
            PathBuf::from(path),
        ))),
        _ => Err(usage("--generate-hardware-config KIND PATH")),
    }
}

/// The flags as the library's request (the installer tarball is fetched later, once the inputs
/// are checked).
fn request(args: &InstallArgs) -> Result<InstallRequest, CliError> {
    Ok(InstallRequest {
        flake: args.flake.clone(),
        phases: args.phases.clone(),
        disko_mode: args.disko_mode,
        disk_overrides: args.disk.clone(),
        disk_config: args.disk_config.clone(),
        extra_files: args.extra_files.clone(),
        chown: pairs(&args.chown),
        disk_encryption_keys: pairs(&args.disk_encryption_keys),
        copy_host_keys: !args.no_copy_host_keys,
        build_on: BuildOn::from_name(&args.build_on),
        substitute_on_destination: !args.no_substitute_on_destination,
        force_kexec: args.force_kexec,
        nix_options: pairs(&args.option),
        print_build_logs: args.print_build_logs,
        show_trace: args.show_trace,
        system: args.system.clone(),
        hardware_config: hardware_config(&args.generate_hardware_config)?,
        resume: args.resume,
        ssh_port: args.ssh_port,
        post_kexec_host: args.post_kexec_host.clone(),
        post_kexec_ssh_port: args.post_kexec_ssh_port,
        state_dir: args.state_dir.clone(),
        timeouts: Timeouts {
            kexec_up: Duration::from_secs(args.kexec_timeout),
            verify_up: Duration::from_secs(args.reboot_timeout),
            ..Timeouts::default()
        },
        // Never a persistent master: the machine kexecs and reboots under it, and a later login with the same
        // options would find the dead connection still listening until its keepalives ran out.
        ssh: nixpave_remote::SshOptions {
            persist: None,
            ..args.connect.ssh_options(AskPassword::Once)
        },
        kexec: None,
    })
}

fn exit_code_of(kind: FailureKind) -> u8 {
    match kind {
        FailureKind::Usage => exit::USAGE,
        FailureKind::Refused => exit::REFUSED,
        FailureKind::Failed => exit::FAILED,
    }
}

/// A preparation error with the exit code of its kind.
fn prepare_error(e: PrepareError) -> CliError {
    CliError::msg(exit_code_of(e.kind()), e)
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

fn run_inner(args: InstallArgs) -> Result<u8, CliError> {
    let mut request = request(&args)?;
    let nodes: Vec<String> = args
        .nodes
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    prepare::check_inputs(&request, &nodes).map_err(prepare_error)?;
    let targets = prepare::targets_for(&nodes, &args.target).map_err(prepare_error)?;
    if let Some(source) = &args.kexec {
        request.kexec = Some(
            prepare::kexec_spec(
                source,
                args.kexec_fetch_on_target,
                args.kexec_extra_flags.clone(),
            )
            .map_err(prepare_error)?,
        );
    }
    let mut specs = Vec::new();
    for (node, target) in nodes.iter().zip(targets) {
        specs.push(prepare::prepare_node(&request, node, target).map_err(prepare_error)?);
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
        state: request.state_store(),
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
    let results = match &request.hardware_config {
        // One node (checked with the inputs).
        Some((kind, path)) => {
            let mut results = Vec::new();
            for spec in specs {
                results.push(
                    prepare::install_with_hardware_config(&request, spec, &installer, *kind, path)
                        .map_err(prepare_error)?,
                );
            }
            results
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
    fn the_request_carries_options_and_substitution() {
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
            "--build-on",
            "target",
            "--kexec-timeout",
            "5",
        ];
        let cli = Cli::try_parse_from(base).ok().unwrap();
        let r = request(&cli.args).ok().unwrap();
        assert_eq!(r.build_on, BuildOn::Remote);
        assert_eq!(r.timeouts.kexec_up, Duration::from_secs(5));
        assert!(r.substitute_on_destination && r.copy_host_keys);
        let s = prepare::substituters(&r, "web1").ok().unwrap();
        assert_eq!(s.substituters, ["https://c.example"]);
        assert_eq!(s.trusted_public_keys, ["c-1:CCC="]);
        let off = Cli::try_parse_from(base.iter().chain(&["--no-substitute-on-destination"]))
            .ok()
            .unwrap();
        let r = request(&off.args).ok().unwrap();
        assert!(prepare::substituters(&r, "web1").ok().unwrap().is_empty());
        let bad = Cli::try_parse_from(base.iter().chain(&[
            "--generate-hardware-config",
            "lshw",
            "/tmp/h.nix",
        ]))
        .ok()
        .unwrap();
        assert_eq!(
            request(&bad.args).err().map(|e| e.code()),
            Some(exit::USAGE)
        );
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
