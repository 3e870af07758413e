//! `nixpave disk apply`: run a layout's plan on a machine.
//!
//! Loads the layout, plans it, probes the machine (refusing unsafe disks), shows what will be
//! wiped and asks, then runs the plan step by step. Only parsing and rendering live here; the
//! work is `nixpave_disk::exec`.

use super::connect::{AskPassword, ConnectArgs};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use nixpave_disk::exec::{self, ApplyError, ApplyOptions, Progress, SecretPrompt, StepState};
use nixpave_disk::planner::update::{self, UpdatePlan};
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
    /// What to do: format, mount, unmount, destroy, format,mount, destroy,format,mount, update
    /// [default: format,mount; with --plan: the plan's mode]. `update` changes live disks
    /// without wiping: only additive and growable differences (see `disk plan --mode update`).
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
    /// Where the layout's filesystems are mounted [default: /mnt; with --mode update: /].
    #[arg(long, value_name = "DIR")]
    root_mountpoint: Option<String>,
    /// With --mode update: apply the additive and growable changes even though some
    /// differences are destructive (those are left out and listed).
    #[arg(long)]
    skip_destructive: bool,
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
    /// Destructive differences an update leaves out (`--skip-destructive`).
    left_out: Vec<String>,
}

/// The root mountpoint: as given, else `/` for an update of a live system, else `/mnt`.
pub(crate) fn root_for(given: Option<&str>, mode: Option<Mode>) -> String {
    match (given, mode) {
        (Some(r), _) => r.to_string(),
        (None, Some(Mode::Update)) => "/".to_string(),
        (None, _) => "/mnt".to_string(),
    }
}

fn apply(args: &ApplyArgs) -> Result<(), CliError> {
    let transport = connect_to(args.target.as_deref(), &args.connect)?;
    let transport: &dyn Transport = transport.as_ref();
    let root = root_for(args.root_mountpoint.as_deref(), args.mode);
    let planned = make_plan(args, transport, &root)?;
    let plan = &planned.plan;
    let mut options = ApplyOptions::new(&root);
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
    if !planned.left_out.is_empty() {
        eprintln!(
            "left out (--skip-destructive), {} difference(s):",
            planned.left_out.len()
        );
        for d in &planned.left_out {
            eprintln!("  ! {d}");
        }
    }
    if json {
        super::json::emit(
            "finished",
            &host,
            serde_json::json!({
                "dry_run": args.dry_run,
                "ran": report.ran,
                "skipped": report.skipped,
                "left_out": &planned.left_out,
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

/// The transport: this machine, or `target` over SSH.
pub(crate) fn connect_to(
    target: Option<&str>,
    connect: &ConnectArgs,
) -> Result<Box<dyn Transport>, CliError> {
    let Some(target) = target else {
        return Ok(Box::new(LocalTransport));
    };
    let target: Target = target.parse().map_err(CliError::usage)?;
    let options = connect.ssh_options(AskPassword::PerHost);
    let ssh = SshTransport::connect(&target, options)
        .map_err(|e| CliError::from_error(super::connect::connect_exit_code(&e), e))?;
    Ok(Box::new(ssh))
}

/// Loads and plans the layout (or reads a saved plan). Bad input is exit code 2.
fn make_plan(args: &ApplyArgs, transport: &dyn Transport, root: &str) -> Result<Planned, CliError> {
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
            left_out: Vec::new(),
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
    if args.mode == Some(Mode::Update) {
        return update_plan(args, transport, &layout, root);
    }
    // Known disk sizes let the planner refuse partitions that cannot fit.
    let facts = exec::probe(transport)?;
    let disk_sizes = exec::resolve::disk_sizes(&layout, &facts);
    let plan_options = PlanOptions {
        root_mountpoint: root.to_string(),
        disk_sizes,
    };
    let mode = args.mode.unwrap_or(Mode::FormatMount);
    let plan = nixpave_disk::plan(&layout, mode, &plan_options).map_err(CliError::usage)?;
    let for_layout = ApplyOptions::for_layout(&layout, mode, root);
    Ok(Planned {
        plan,
        disks: for_layout.disks,
        own_swaps: for_layout.own_swaps,
        left_out: Vec::new(),
    })
}

/// Compares the layout with the machine's disks (read-only probes) and classifies every
/// difference. Used by `disk plan --mode update` and `disk apply --mode update`.
pub(crate) fn compare(
    transport: &dyn Transport,
    layout: &nixpave_disk::Layout,
    root: &str,
) -> Result<UpdatePlan, CliError> {
    let facts = exec::probe_for_update(transport, layout)?;
    let options = PlanOptions {
        root_mountpoint: root.to_string(),
        ..PlanOptions::default()
    };
    update::update(layout, &facts, &options).map_err(CliError::usage)
}

/// `--mode update`: shows the classified differences, refuses while a destructive one remains
/// (unless `--skip-destructive`), and plans the additive and growable ones.
fn update_plan(
    args: &ApplyArgs,
    transport: &dyn Transport,
    layout: &nixpave_disk::Layout,
    root: &str,
) -> Result<Planned, CliError> {
    let u = compare(transport, layout, root)?;
    eprint!("{}", update::render_human(&u));
    if args.json {
        super::json::emit(
            "update",
            transport.host(),
            serde_json::json!({ "update": &u }),
        );
    }
    let left_out: Vec<String> = u
        .of(update::Class::Destructive)
        .map(|d| d.description.clone())
        .collect();
    if !left_out.is_empty() && !args.skip_destructive {
        return Err(CliError::msg(
            exit::REFUSED,
            format!(
                "{}: {} difference(s) above cannot be done in place; nothing was changed. \
                 Change the layout to keep what is there, or pass --skip-destructive to apply \
                 only the additive and growable changes.",
                transport.host(),
                left_out.len()
            ),
        ));
    }
    let for_layout = ApplyOptions::for_layout(layout, Mode::Update, root);
    Ok(Planned {
        plan: u.plan(),
        disks: for_layout.disks,
        own_swaps: for_layout.own_swaps,
        left_out,
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
