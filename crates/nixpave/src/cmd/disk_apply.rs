//! `nixpave disk apply`: run a layout's plan on a machine.
//!
//! Loads the layout, plans it, probes the machine (refusing unsafe disks), shows what will be
//! wiped and asks, then runs the plan step by step. Only parsing and rendering live here; the
//! work is `nixpave_disk::exec`.

use super::connect::{AskPassword, ConnectArgs};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use nixpave_disk::exec::{self, ApplyError, ApplyOptions, Progress, SecretPrompt, StepState};
use nixpave_disk::{LayoutSource, LoadOptions, Mode, Plan, PlanOptions};
use nixpave_nix::NixArg;
use nixpave_remote::{LocalTransport, SshTransport, Target, Transport};

use crate::exit::{self, CliError};

/// Arguments of `nixpave disk apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Layout file (.nix or .json). Not needed with --flake or --plan.
    #[arg(required_unless_present_any = ["flake", "plan"])]
    config: Option<PathBuf>,
    /// What to do: format, mount, unmount, destroy, format,mount, destroy,format,mount
    /// [default: format,mount; with --plan: the plan's mode].
    #[arg(long, short)]
    mode: Option<Mode>,
    /// Read the layout from a flake: REF#NAME (diskoConfigurations.NAME or
    /// nixosConfigurations.NAME.config.disko.devices).
    #[arg(long, conflicts_with_all = ["config", "plan"])]
    flake: Option<String>,
    /// Run a plan saved with `nixpave disk plan --json` instead of planning a layout
    /// (its own mode is used).
    #[arg(long, conflicts_with_all = ["config", "flake"])]
    plan: Option<PathBuf>,
    /// Pass a Nix expression to a function-valued layout (like nix's --arg).
    #[arg(long, num_args = 2, value_names = ["NAME", "EXPR"], action = clap::ArgAction::Append)]
    arg: Vec<String>,
    /// Pass a string to a function-valued layout (like nix's --argstr).
    #[arg(long, num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    argstr: Vec<String>,
    /// Use DEVICE for the layout's disk NAME.
    #[arg(long, value_name = "NAME=DEVICE", value_parser = nixpave_disk::parse_disk_override)]
    disk: Vec<(String, String)>,
    /// Where the layout's filesystems are mounted.
    #[arg(long, default_value = "/mnt")]
    root_mountpoint: String,
    /// Probe and show what would run; change nothing at all.
    #[arg(long)]
    dry_run: bool,
    /// Confirm wiping the disks without asking (needed when there is no terminal).
    #[arg(long)]
    yes_wipe_all_disks: bool,
    /// Print progress as JSON lines on stdout.
    #[arg(long)]
    json: bool,
    /// Apply on this host over SSH (USER@HOST[:PORT]) instead of this machine.
    #[arg(long, value_name = "USER@HOST")]
    target: Option<String>,
    /// Seconds to wait for the kernel to show a new partition table.
    #[arg(long, default_value_t = 10)]
    rescan_timeout: u64,
    #[command(flatten)]
    connect: ConnectArgs,
}

impl From<ApplyError> for CliError {
    fn from(e: ApplyError) -> Self {
        let code = if e.is_refusal() {
            exit::REFUSED
        } else if matches!(e, ApplyError::Interrupted { .. }) {
            exit::INTERRUPTED
        } else {
            exit::FAILED
        };
        CliError::from_error(code, e)
    }
}

/// Runs `nixpave disk apply`.
pub fn run(args: ApplyArgs) -> miette::Result<ExitCode> {
    // Ctrl-C stops between steps (or fails the running one) and reports what was done.
    if let Err(e) = nixpave_remote::cancel::install_signal_handlers() {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    match apply(&args) {
        Ok(()) => Ok(exit::code(exit::OK)),
        Err(e) => Ok(e.exit()),
    }
}

/// A plan plus what the layout says about its own disks and swaps.
struct Planned {
    plan: Plan,
    disks: Vec<String>,
    own_swaps: Vec<String>,
}

fn apply(args: &ApplyArgs) -> Result<(), CliError> {
    let transport = connect(args)?;
    let transport: &dyn Transport = transport.as_ref();
    let planned = make_plan(args, transport)?;
    let plan = &planned.plan;
    let mut options = ApplyOptions::new(&args.root_mountpoint);
    options.dry_run = args.dry_run;
    options.disks = planned.disks.clone();
    options.own_swaps = planned.own_swaps.clone();
    options.rescan_timeout = std::time::Duration::from_secs(args.rescan_timeout);

    let preflight = exec::preflight(transport, plan, &options)?;
    let host = transport.host().to_string();
    if !crate::ui::quiet() {
        eprintln!(
            "nixpave disk apply: mode {} on {host}, {} steps{}",
            plan.mode,
            preflight.deactivation.len() + plan.operations.len(),
            if args.dry_run {
                " (dry run: nothing will be changed)"
            } else {
                ""
            }
        );
    }
    if args.json {
        // Machine consumers get the preflight (disks to wipe, deactivation steps) first.
        super::json::emit(
            "preflight",
            &host,
            serde_json::json!({ "preflight": &preflight }),
        );
    }
    let mut confirmed = args.yes_wipe_all_disks;
    if preflight.wipes {
        eprint!("{}", preflight.render_wipe_summary());
        if !args.dry_run && !confirmed {
            confirmed = confirm(&preflight.confirmation_words(), &host)?;
        }
    }
    let json = args.json;
    let mut prompt = TtyPrompt;
    let report = exec::execute_with_prompt(
        transport,
        plan,
        &preflight,
        &options,
        confirmed,
        &mut prompt,
        &mut |p: &Progress| {
            if json {
                super::json::emit("step", &host, p);
            } else if p.state != StepState::Done
                // -q: no running or skipped steps; a dry run's would-run lines are its result.
                && !(crate::ui::quiet()
                    && matches!(p.state, StepState::Running | StepState::Skipped { .. }))
            {
                eprintln!("{}", p.render());
            }
        },
    )?;
    if json {
        super::json::emit(
            "finished",
            &host,
            serde_json::json!({
                "dry_run": args.dry_run,
                "ran": report.ran,
                "skipped": report.skipped,
            }),
        );
    }
    if args.dry_run {
        eprintln!(
            "dry run on {host}: {} steps would run, {} would be skipped; nothing was changed",
            report.ran, report.skipped
        );
    } else {
        eprintln!(
            "done on {host}: {} steps ran, {} skipped (already done)",
            report.ran, report.skipped
        );
    }
    Ok(())
}

/// The transport: this machine, or `--target` over SSH.
fn connect(args: &ApplyArgs) -> Result<Box<dyn Transport>, CliError> {
    let Some(target) = &args.target else {
        return Ok(Box::new(LocalTransport));
    };
    let target: Target = target.parse().map_err(CliError::usage)?;
    let options = args.connect.ssh_options(AskPassword::PerHost);
    let ssh = SshTransport::connect(&target, options)
        .map_err(|e| CliError::from_error(super::connect::connect_exit_code(&e), e))?;
    Ok(Box::new(ssh))
}

/// Loads and plans the layout (or reads a saved plan). Bad input is exit code 2.
fn make_plan(args: &ApplyArgs, transport: &dyn Transport) -> Result<Planned, CliError> {
    if let Some(path) = &args.plan {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        let plan: Plan = serde_json::from_str(&text)
            .map_err(|e| CliError::usage(format!("{} is not a plan: {e}", path.display())))?;
        if let Some(mode) = args.mode.filter(|m| *m != plan.mode) {
            return Err(CliError::usage(format!(
                "--mode {mode} but {} is a `{}` plan; drop --mode or plan again",
                path.display(),
                plan.mode
            )));
        }
        return Ok(Planned {
            plan,
            disks: Vec::new(),
            own_swaps: Vec::new(),
        });
    }
    let source = match (&args.flake, &args.config) {
        (Some(flake), _) => LayoutSource::flake(flake).map_err(CliError::usage)?,
        (None, Some(config)) => LayoutSource::File(config.clone()),
        (None, None) => return Err(CliError::usage("give a layout file, --flake or --plan")),
    };
    let mut load = LoadOptions::default();
    for pair in args.arg.chunks(2) {
        if let [name, expr] = pair {
            load.args.push(NixArg::Expr {
                name: name.clone(),
                expr: expr.clone(),
            });
        }
    }
    for pair in args.argstr.chunks(2) {
        if let [name, value] = pair {
            load.args.push(NixArg::Str {
                name: name.clone(),
                value: value.clone(),
            });
        }
    }
    load.disk_overrides.clone_from(&args.disk);
    let layout = nixpave_disk::load_layout(&source, &load).map_err(CliError::usage)?;
    // Known disk sizes let the planner refuse partitions that cannot fit.
    let facts = exec::probe(transport)?;
    let mut disk_sizes = BTreeMap::new();
    for disk in layout.disks() {
        if let exec::resolve::Resolution::Node(node) =
            exec::resolve::resolve(&disk.device, &facts, &[])
        {
            if let Some(device) = facts.find(&node) {
                disk_sizes.insert(disk.device.clone(), device.size);
            }
        }
    }
    let plan_options = PlanOptions {
        root_mountpoint: args.root_mountpoint.clone(),
        disk_sizes,
    };
    let mode = args.mode.unwrap_or(Mode::FormatMount);
    let plan = nixpave_disk::plan(&layout, mode, &plan_options).map_err(CliError::usage)?;
    let for_layout = ApplyOptions::for_layout(&layout, mode, &args.root_mountpoint);
    Ok(Planned {
        plan,
        disks: for_layout.disks,
        own_swaps: for_layout.own_swaps,
    })
}

/// Asks on the terminal for the host name or `yes`; refuses without a terminal.
fn confirm(words: &[String], host: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::msg(
            exit::REFUSED,
            format!(
                "{host}: the plan wipes the disks listed above and there is no terminal to \
                 confirm on; nothing was changed. Pass --yes-wipe-all-disks to confirm."
            ),
        ));
    }
    eprint!("Type the host name ({host}) or `yes` to wipe these disks, anything else aborts: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| {
            CliError::msg(
                exit::REFUSED,
                format!("cannot read the confirmation: {e}; nothing was changed"),
            )
        })?;
    let answer = answer.trim();
    if words.iter().any(|w| w == answer) {
        Ok(true)
    } else {
        Err(CliError::msg(
            exit::REFUSED,
            format!("aborted (answer was `{answer}`); nothing was changed"),
        ))
    }
}

/// Asks for LUKS passphrases on /dev/tty with echo off.
#[derive(Default)]
pub(crate) struct TtyPrompt;

impl TtyPrompt {
    fn read_hidden(question: &str) -> Result<String, String> {
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|e| format!("no terminal to ask for a passphrase on: {e}"))?;
        let stty = |flag: &str| {
            tty.try_clone().ok().map(|t| {
                std::process::Command::new("stty")
                    .arg(flag)
                    .stdin(t)
                    .status()
            })
        };
        let mut out = tty.try_clone().map_err(|e| e.to_string())?;
        let _ = write!(out, "{question}");
        let _ = out.flush();
        let _ = stty("-echo");
        let mut line = String::new();
        let read = std::io::BufReader::new(&tty).read_line(&mut line);
        let _ = stty("echo");
        let _ = writeln!(out);
        read.map_err(|e| format!("cannot read the passphrase: {e}"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

impl SecretPrompt for TtyPrompt {
    fn secret(&mut self, name: &str, confirm: bool) -> Result<Vec<u8>, String> {
        let first = Self::read_hidden(&format!("Passphrase for {name}: "))?;
        if confirm {
            let second = Self::read_hidden(&format!("Repeat the passphrase for {name}: "))?;
            if first != second {
                return Err(format!("the passphrases for {name} do not match"));
            }
        }
        Ok(first.into_bytes())
    }
}
