//! `nixpave disk plan` and `nixpave disk nixos-config`; `apply` lives in `disk_apply`.

use std::path::PathBuf;
use std::process::ExitCode;

use nixpave_disk::{LayoutSource, LoadError, LoadOptions, Mode, PlanOptions};
use nixpave_nix::NixArg;

use crate::exit;

/// `nixpave disk` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DiskCommand {
    /// Show what a layout would do, without touching any disk.
    Plan(PlanArgs),
    /// Print the NixOS configuration fragment the layout implies (fileSystems, swapDevices, boot…).
    NixosConfig(NixosConfigArgs),
    /// Run a layout's plan on this machine (or a remote one).
    Apply(super::disk_apply::ApplyArgs),
}

/// Where the layout comes from (shared by `plan` and `nixos-config`).
#[derive(Debug, clap::Args)]
pub struct LayoutArgs {
    /// Layout file: a disko `.nix` file (attrset or function) or `.json`.
    #[arg(required_unless_present = "flake", conflicts_with = "flake")]
    pub config: Option<PathBuf>,
    /// Read the layout from a flake: `diskoConfigurations.NAME` or
    /// `nixosConfigurations.NAME.config.disko.devices`.
    #[arg(long, value_name = "REF#NAME")]
    pub flake: Option<String>,
    /// Pass `NAME = EXPR` (a Nix expression) to a function-valued layout file.
    #[arg(long = "arg", num_args = 2, value_names = ["NAME", "EXPR"], action = clap::ArgAction::Append)]
    pub arg: Vec<String>,
    /// Pass `NAME = "VALUE"` (a string) to a function-valued layout file.
    #[arg(long = "argstr", num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    pub argstr: Vec<String>,
    /// Use DEVICE for the layout's disk NAME (repeatable), e.g. `--disk main=/dev/vdb`.
    #[arg(long = "disk", value_name = "NAME=DEVICE", value_parser = nixpave_disk::parse_disk_override)]
    pub disk: Vec<(String, String)>,
}

/// Arguments of `nixpave disk plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// What to plan: format, mount, unmount, destroy, format,mount, destroy,format,mount, update.
    /// `update` compares the layout with the live disks (read-only probes, here or on
    /// --target) and classifies every difference: already there, additive, growable,
    /// destructive.
    #[arg(long, short, default_value = "format,mount")]
    mode: String,
    /// Where the target system gets mounted [default: /mnt; with --mode update: /].
    #[arg(long, value_name = "DIR")]
    root_mountpoint: Option<String>,
    /// With --mode update: probe this host over SSH (USER@HOST[:PORT]) instead of this machine.
    #[arg(long, value_name = "USER@HOST")]
    target: Option<String>,
    /// Print the plan as JSON.
    #[arg(long, conflicts_with = "script")]
    json: bool,
    /// Print the plan as a standalone bash script.
    #[arg(long)]
    script: bool,
    #[command(flatten)]
    connect: super::connect::ConnectArgs,
}

/// Arguments of `nixpave disk nixos-config`.
#[derive(Debug, clap::Args)]
pub struct NixosConfigArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// Print JSON instead of Nix.
    #[arg(long)]
    json: bool,
}

/// Runs a `nixpave disk` subcommand.
pub fn run(command: DiskCommand) -> miette::Result<ExitCode> {
    match command {
        DiskCommand::Plan(args) => plan(args),
        DiskCommand::NixosConfig(args) => nixos_config(args),
        DiskCommand::Apply(args) => super::disk_apply::run(args),
    }
}

/// Prints a bad-input error and returns exit code 2.
fn usage_error(message: impl std::fmt::Display, help: Option<String>) -> ExitCode {
    let report = match help {
        Some(h) => miette::miette!(help = h, "{message}"),
        None => miette::miette!("{message}"),
    };
    exit::CliError::report(exit::USAGE, report).exit()
}

/// Turns `--arg`/`--argstr`/`--disk` into load options; `Err` is a message for exit code 2.
pub fn load_options(args: &LayoutArgs) -> Result<(LayoutSource, LoadOptions), String> {
    let source = match (&args.config, &args.flake) {
        (_, Some(f)) => LayoutSource::flake(f)?,
        (Some(c), None) => LayoutSource::File(c.clone()),
        (None, None) => return Err("give a layout file or --flake REF#NAME".into()),
    };
    let mut nix_args = Vec::new();
    for pair in args.arg.chunks(2) {
        if let [name, expr] = pair {
            nix_args.push(NixArg::Expr {
                name: name.clone(),
                expr: expr.clone(),
            });
        }
    }
    for pair in args.argstr.chunks(2) {
        if let [name, value] = pair {
            nix_args.push(NixArg::Str {
                name: name.clone(),
                value: value.clone(),
            });
        }
    }
    Ok((
        source,
        LoadOptions {
            args: nix_args,
            disk_overrides: args.disk.clone(),
        },
    ))
}

/// Loads the layout, printing errors; `Err(code)` is the exit code to return.
pub fn load(args: &LayoutArgs) -> Result<nixpave_disk::Layout, ExitCode> {
    let (source, options) = load_options(args).map_err(|m| usage_error(m, None))?;
    nixpave_disk::load_layout(&source, &options).map_err(|e| match &e {
        LoadError::Eval(nixpave_nix::EvalError::Spawn { .. }) => {
            eprintln!(
                "{:?}",
                miette::miette!(help = "install nix (scripts/install-deps.sh does)", "{e}")
            );
            exit::code(exit::FAILED)
        }
        LoadError::Eval(_) => usage_error("the layout could not be evaluated", Some(e.to_string())),
        LoadError::Layout { .. } => usage_error(
            format!("invalid layout: {e}"),
            Some("nothing was changed; fix the layout and run again".into()),
        ),
        _ => usage_error(e, None),
    })
}

fn plan(args: PlanArgs) -> miette::Result<ExitCode> {
    let mode: Mode = match args.mode.parse() {
        Ok(m) => m,
        Err(e) => return Ok(usage_error(e, None)),
    };
    let layout = match load(&args.layout) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let root = super::disk_apply::root_for(args.root_mountpoint.as_deref(), Some(mode));
    if mode == Mode::Update {
        return plan_update(&args, &layout, &root);
    }
    if args.target.is_some() {
        return Ok(usage_error(
            "--target is for --mode update (other modes plan from the layout alone)",
            None,
        ));
    }
    let options = PlanOptions {
        root_mountpoint: root,
        ..PlanOptions::default()
    };
    let plan = match nixpave_disk::plan(&layout, mode, &options) {
        Ok(p) => p,
        Err(e) => return Ok(usage_error(format!("cannot plan: {e}"), None)),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&plan)
            .map_err(|e| miette::miette!("cannot serialise the plan: {e}"))?;
        println!("{text}");
    } else if args.script {
        print!("{}", nixpave_disk::render::script(&plan));
    } else {
        print!("{}", nixpave_disk::render::human(&plan));
    }
    Ok(exit::code(exit::OK))
}

/// `disk plan --mode update`: the layout compared with the live disks, grouped by class.
fn plan_update(
    args: &PlanArgs,
    layout: &nixpave_disk::Layout,
    root: &str,
) -> miette::Result<ExitCode> {
    use super::disk_apply::{compare, connect_to};
    if args.script {
        return Ok(usage_error(
            "--script is not available for --mode update (its steps depend on the live disks)",
            None,
        ));
    }
    let result = connect_to(args.target.as_deref(), &args.connect)
        .and_then(|t| compare(t.as_ref(), layout, root));
    let u = match result {
        Ok(u) => u,
        Err(e) => return Ok(e.exit()),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&u)
            .map_err(|e| miette::miette!("cannot serialise the update plan: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", nixpave_disk::planner::update::render_human(&u));
    }
    Ok(exit::code(exit::OK))
}

fn nixos_config(args: NixosConfigArgs) -> miette::Result<ExitCode> {
    let layout = match load(&args.layout) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let value = nixpave_disk::nixos_config(&layout);
    if args.json {
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| miette::miette!("cannot serialise the configuration: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", nixpave_disk::nixos::to_nix(&value));
    }
    Ok(exit::code(exit::OK))
}
