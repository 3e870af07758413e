//! `nixpave deploy`, `nixpave status`, `nixpave rollback`: argument parsing and rendering only; the work is in
//! `nixpave_deploy`.

mod fleet;
mod render;
mod rollback;
mod status;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use nixpave_deploy::settings::GeneralSettings;
use nixpave_deploy::{Event, FleetReport, Goal, RolloutSettings};
use nixpave_nix::flake::FlakeTarget;
use nixpave_nix::invoke::NixOptions;

use super::connect::ConnectArgs;
use crate::exit::{self, CliError};
use fleet::{load_fleet, usage};
use render::{print_plan, Renderer};
pub use rollback::rollback;
pub use status::status;

/// Where the fleet and its connection details come from (shared by deploy, status and rollback).
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Flakes with a deploy-rs `deploy` output or `nixosConfigurations`, each optionally
    /// `FLAKE#node[.profile]` (quote names with dots: `'.#"web1.example.com".system'`); default `.`.
    #[arg(value_name = "FLAKE")]
    pub flakes: Vec<String>,
    /// More flakes, as deploy-rs's `--targets` takes them.
    #[arg(long, num_args = 1.., value_name = "FLAKE")]
    pub targets: Vec<String>,
    /// Hosts to act on: names, globs (`web-*`) and `@tag`s, comma separated; default all.
    #[arg(long = "on", value_name = "SELECTORS")]
    pub on: Vec<String>,
    /// A JSON inventory: deploy-rs-shaped (`{"nodes": …}`, store paths instead of derivations) replaces the
    /// flake; a nixpave host inventory (`{"hosts": […]}`) gives addresses, ports and keys of node hostnames.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Take connection details from lab LAB (`nixpave lab up`): node hostnames are lab host names.
    #[arg(long, value_name = "LAB")]
    pub lab: Option<String>,
    /// Log in as USER on every host (deploy-rs `--ssh-user`; beats `sshUser`).
    #[arg(long, value_name = "USER")]
    pub ssh_user: Option<String>,
    /// ssh options for every host, replacing the inventory's `sshOpts` (deploy-rs `--ssh-opts`), e.g.
    /// `--ssh-opts '-F ./ssh_config -J bastion'`. Words are split as a shell would.
    #[arg(long, value_name = "OPTS", allow_hyphen_values = true)]
    pub ssh_opts: Option<String>,
    /// Connect to HOST instead of the node's `hostname` (deploy-rs `--hostname`).
    #[arg(long, value_name = "HOST")]
    pub hostname: Option<String>,
    /// How a non-root login becomes root: `sudo -u`, `doas -u`, `run0 --user` (deploy-rs `sudo`).
    #[arg(long, value_name = "CMD")]
    pub sudo: Option<String>,
    /// Ask for the sudo password (deploy-rs `interactiveSudo`); asked once, fed to sudo on stdin.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub interactive_sudo: Option<bool>,
    /// Directory of the status records on the targets.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<String>,
    /// Nodes one `nix eval` evaluates at most (colmena's option); a larger flake is listed first and
    /// deployed chunk by chunk as it evaluates. Default: available memory less 1 GiB, at 512 MiB a node
    /// (or NIXPAVE_EVAL_NODE_LIMIT).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_node_limit: Option<u32>,
    /// Machine-readable output: JSON events (one per line) and a final JSON report.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `nixpave deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// What to do with the new system: switch, boot, test or dry-activate.
    #[arg(long, default_value = "switch")]
    goal: Goal,
    /// Reboot after switch/boot and check that the host comes back on the new system.
    #[arg(long)]
    reboot: bool,
    /// Seconds a reboot may take.
    #[arg(long, default_value_t = 600)]
    reboot_timeout: u64,
    /// Hosts deployed at the same time (default: 16 per core of this machine, between 10 and 64).
    #[arg(long)]
    parallel: Option<usize>,
    /// Rolling waves of N hosts or P% of the hosts.
    #[arg(long, value_name = "N|P%")]
    batch: Option<nixpave_deploy::Batch>,
    /// Stop starting new hosts after N failures (the rest are reported as skipped).
    #[arg(long, value_name = "N")]
    max_failures: Option<usize>,
    /// Deploy N hosts first and continue only if they all succeed.
    #[arg(long, value_name = "N")]
    canary: Option<usize>,
    /// Let targets fetch paths from their own substituters.
    #[arg(long, overrides_with = "no_substitute_on_destination")]
    substitute_on_destination: bool,
    /// Push everything from here.
    #[arg(long)]
    no_substitute_on_destination: bool,
    /// Build on the targets instead of locally.
    #[arg(long)]
    build_on_target: bool,
    /// Redeploy hosts that already run the wanted generation.
    #[arg(long)]
    force: bool,
    /// Seconds targets wait for confirmation (overrides the inventory).
    #[arg(long)]
    confirm_timeout: Option<u64>,
    /// Seconds an activation may take (overrides the inventory).
    #[arg(long)]
    activation_timeout: Option<u64>,
    /// Turn magic rollback off (no waiting for confirmation).
    #[arg(long)]
    no_magic_rollback: bool,
    /// Turn auto rollback off (a failed activation stays).
    #[arg(long)]
    no_auto_rollback: bool,
    /// deploy-rs `--magic-rollback BOOL` (overrides the inventory).
    #[arg(long, value_name = "BOOL", conflicts_with = "no_magic_rollback")]
    magic_rollback: Option<bool>,
    /// deploy-rs `--auto-rollback BOOL` (overrides the inventory).
    #[arg(long, value_name = "BOOL", conflicts_with = "no_auto_rollback")]
    auto_rollback: Option<bool>,
    /// The profiles belong to USER (deploy-rs `--profile-user`).
    #[arg(long, value_name = "USER")]
    profile_user: Option<String>,
    /// Directory on the targets for the activation agent (deploy-rs `--temp-path`).
    #[arg(long, value_name = "DIR")]
    temp_path: Option<String>,
    /// The link to the hosts is fast: push everything instead of substituting on them (deploy-rs).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    fast_connection: Option<bool>,
    /// Build on the targets (deploy-rs `--remote-build`; same as --build-on-target).
    #[arg(long)]
    remote_build: bool,
    /// Do not build the flakes' `checks` before deploying (deploy-rs `-s`).
    #[arg(short = 's', long)]
    skip_checks: bool,
    /// When a host fails, revert the hosts this run deployed too (deploy-rs's all-or-nothing; off by default:
    /// nixpave keeps the hosts that succeeded).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    rollback_succeeded: Option<bool>,
    /// Same as `--goal boot` (deploy-rs).
    #[arg(long, conflicts_with = "dry_activate")]
    boot: bool,
    /// Same as `--goal dry-activate` (deploy-rs).
    #[arg(long)]
    dry_activate: bool,
    /// Evaluate and build, show the plan, change nothing on any host.
    #[arg(long)]
    dry_run: bool,
    /// Push each closure once to this binary cache (`file://DIR?secret-key=FILE`, `s3://…`, `http(s)://…`,
    /// `ssh-ng://…`) and let the targets fetch it from there in parallel, trusting its key for that call only.
    #[arg(long, value_name = "STORE-URI")]
    cache: Option<String>,
    /// The URL targets fetch the cache from (needed for a local `file://` cache, e.g. served over HTTP).
    #[arg(long, value_name = "URL", requires = "cache")]
    cache_url: Option<String>,
    /// The public key targets trust for the cache (default: derived from the URI's `secret-key=FILE`).
    #[arg(long, value_name = "NAME:KEY", requires = "cache")]
    cache_public_key: Option<String>,
    /// Deploy the one selected node to the machine nixpave runs on, without ssh (colmena's `apply-local`):
    /// same agent, health checks and auto rollback; the agent's own lockout checks stand in for the login
    /// proof.
    #[arg(long)]
    local: bool,
    /// Before activating a node whose flake has a disk layout (`config.disko.devices`), compare
    /// it with the node's disks, show the differences and apply the additive and growable ones
    /// (as `disk apply --mode update`); a destructive difference fails the node, nothing written.
    #[arg(long)]
    disk_update: bool,
}

/// Arguments of `nixpave status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    fleet: FleetArgs,
}

/// Arguments of `nixpave rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// How to activate the previous generation: switch or boot.
    #[arg(long, default_value = "switch")]
    goal: Goal,
    /// Hosts rolled back at the same time.
    #[arg(long, default_value_t = 10)]
    parallel: usize,
}

/// Runs `nixpave deploy`.
pub fn run(args: DeployArgs) -> miette::Result<ExitCode> {
    let nix = NixOptions::default();
    let overrides = GeneralSettings {
        confirm_timeout: args.confirm_timeout,
        activation_timeout: args.activation_timeout,
        magic_rollback: args
            .magic_rollback
            .or(args.no_magic_rollback.then_some(false)),
        auto_rollback: args
            .auto_rollback
            .or(args.no_auto_rollback.then_some(false)),
        user: args.profile_user.clone(),
        temp_path: args.temp_path.clone(),
        fast_connection: args.fast_connection,
        remote_build: args.remote_build.then_some(true),
        ..Default::default()
    };
    // The build asks `nix --version` (cached per process) first: ask it now, while the fleet evaluates, so that
    // hosts waiting for their profile do not wait for it too. A failure shows where the build asks again.
    if !args.build_on_target {
        let nix = nix.clone();
        std::thread::spawn(move || nixpave_nix::local_version(&nix));
    }
    // Progress words: not in JSON mode, not with -q.
    let chatty = !args.fleet.json && !crate::ui::quiet();
    // On a terminal, one line that a fleet evaluated in chunks updates ("evaluating 100/200 nodes").
    let evaluating = (chatty && std::io::stderr().is_terminal()).then(|| {
        let line = indicatif::ProgressBar::new_spinner();
        line.set_message("evaluating the fleet…");
        line.enable_steady_tick(Duration::from_millis(200));
        line
    });
    let eval_progress = |done: usize, total: usize| {
        if let Some(line) = &evaluating {
            line.set_message(format!("evaluating {done}/{total} nodes"));
        }
    };
    // A large flake deploys as it evaluates (chunk by chunk, see nixpave_deploy::pipeline). A dry run, a local
    // deploy (one host) and --disk-update (which reads every host's layout first) keep the simpler path:
    // every chunk evaluated, then the deploy.
    let pipeline = !args.dry_run && !args.local && !args.disk_update;
    let loaded = load_fleet(
        &args.fleet,
        overrides,
        !args.skip_checks,
        &nix,
        &eval_progress,
        pipeline,
    );
    if let Some(line) = &evaluating {
        line.finish_and_clear();
    }
    let fleet = match loaded {
        Ok(f) => f,
        Err(e) => return Ok(e.exit()),
    };
    if args.local && fleet.inventory.hosts.len() != 1 {
        return Ok(usage(format!(
            "--local deploys one node to this machine, but {} are selected (pick one: FLAKE#node)",
            fleet.inventory.hosts.len()
        ))
        .exit());
    }
    let local = nixpave_deploy::LocalConnector::default();
    let connector: &dyn nixpave_deploy::Connector =
        if args.local { &local } else { &fleet.connector };
    let goal = if args.boot {
        Goal::Boot
    } else if args.dry_activate {
        Goal::DryActivate
    } else {
        args.goal
    };
    let rollout = fleet.inventory.rollout.overridden_by(&RolloutSettings {
        parallel: args.parallel,
        batch: args.batch,
        max_failures: args.max_failures,
        canary: args.canary,
    });
    let mut opts = nixpave_deploy::DeployOptions {
        goal,
        reboot: args.reboot,
        reboot_timeout: Duration::from_secs(args.reboot_timeout),
        substitute_on_destination: if args.substitute_on_destination {
            Some(true)
        } else if args.no_substitute_on_destination {
            Some(false)
        } else {
            None
        },
        build_on_target: args.build_on_target,
        force: args.force,
        nix,
        builds: None,
        cache: None,
        disk_update: args
            .disk_update
            .then(|| disk_update(&args.fleet, &fleet.inventory.hosts, goal)),
    };
    if let Some(uri) = &args.cache {
        match nixpave_deploy::cache::Cache::new(
            uri,
            args.cache_url.as_deref(),
            args.cache_public_key.as_deref(),
            &opts.nix,
        ) {
            Ok(cache) => opts.cache = Some(std::sync::Arc::new(cache)),
            Err(e) => return Ok(CliError::from_error(exit::USAGE, e).exit()),
        }
    }
    let hosts = &fleet.inventory.hosts;
    if chatty && fleet.listed.is_none() {
        eprintln!(
            "building {} profile(s) of {} host(s)…",
            hosts.iter().map(|h| h.profiles.len()).sum::<usize>(),
            hosts.len()
        );
    }
    if !fleet.inventory.checks.is_empty() {
        if chatty {
            eprintln!(
                "building {} check(s) of the flake(s)…",
                fleet.inventory.checks.len()
            );
        }
        if let Err(e) = nixpave_deploy::build_checks(&fleet.inventory.checks, &opts) {
            return Ok(CliError::from_error(exit::FAILED, e).exit());
        }
    }
    if args.dry_run {
        // The built outputs stay GC roots until the plan is shown.
        let _built = match nixpave_deploy::fleet::build_all_rooted(hosts, &opts) {
            Ok(built) => built,
            Err(e) => return Ok(CliError::from_error(exit::FAILED, e).exit()),
        };
        print_plan(&fleet.inventory, &rollout, &opts, args.fleet.json)?;
        return Ok(exit::code(exit::OK));
    }
    if let Err(e) = nixpave_remote::cancel::install_signal_handlers() {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    if let Some(listed) = &fleet.listed {
        if chatty {
            eprintln!(
                "deploying {} host(s) as they evaluate, {} node(s) per evaluation…",
                listed.names.len(),
                listed.limit
            );
        }
        let renderer = Renderer::new(args.fleet.json, listed.names.iter().cloned());
        let sink = |e: Event| renderer.event(e);
        let progress = |done: u64, expected: u64| renderer.build_progress(done, expected);
        let prepare = |hosts: &mut Vec<nixpave_deploy::Host>| fleet.prepare.apply(hosts);
        let done = nixpave_deploy::pipeline::deploy_listed(
            listed, &prepare, connector, &opts, &rollout, &sink, &progress,
        );
        for e in done.build_errors {
            renderer.note(&format!("{:?}", miette::Report::from_err(e)));
        }
        let mut report = done.report;
        if args.rollback_succeeded == Some(true) && goal != Goal::DryActivate {
            report = nixpave_deploy::fleet::revoke_succeeded(
                &done.hosts,
                report,
                connector,
                goal,
                &rollout,
                &sink,
            );
        }
        return finish(&renderer, &report);
    }
    // Streaming: the build runs on its own thread while the hosts connect and probe; each host pushes as
    // soon as its own profiles are built. The outputs stay GC roots until the deploy has ended.
    let builds = match nixpave_deploy::fleet::Builds::new(hosts, &opts) {
        Ok(b) => std::sync::Arc::new(b),
        Err(e) => return Ok(CliError::from_error(exit::FAILED, e).exit()),
    };
    opts.builds = Some(std::sync::Arc::clone(&builds));
    let renderer = Renderer::new(args.fleet.json, hosts.iter().map(|h| h.name.clone()));
    let sink = |e: Event| renderer.event(e);
    let progress = |done: u64, expected: u64| renderer.build_progress(done, expected);
    let (mut report, built) = std::thread::scope(|scope| {
        let build = scope.spawn(|| builds.run(&opts, &progress));
        let report = nixpave_deploy::deploy_fleet(hosts, connector, &opts, &rollout, &sink);
        (report, build.join())
    });
    match built {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => renderer.note(&format!("{:?}", miette::Report::from_err(e))),
        Err(_) => renderer.note("internal error: the build thread panicked"),
    }
    if args.rollback_succeeded == Some(true) && goal != Goal::DryActivate {
        report = nixpave_deploy::fleet::revoke_succeeded(
            hosts, report, connector, goal, &rollout, &sink,
        );
    }
    finish(&renderer, &report)
}

/// Shows the summary; the exit code: interrupted, or the hosts' outcomes.
fn finish(renderer: &Renderer, report: &FleetReport) -> miette::Result<ExitCode> {
    renderer.finish(report, |h| h.outcome.is_success())?;
    if nixpave_remote::cancel::is_cancelled() {
        return Ok(exit::code(exit::INTERRUPTED));
    }
    Ok(exit::code(fleet_exit(report)))
}

/// `--disk-update`: the selected nodes' layouts, read from the flakes given (a dry activation
/// only compares).
fn disk_update(
    args: &FleetArgs,
    hosts: &[nixpave_deploy::Host],
    goal: Goal,
) -> std::sync::Arc<nixpave_deploy::disk_update::DiskUpdate> {
    let mut flakes: Vec<String> = args
        .flakes
        .iter()
        .chain(&args.targets)
        .map(|f| FlakeTarget::parse(f).flake)
        .collect();
    if flakes.is_empty() {
        flakes.push(".".into());
    }
    let flakes: Vec<&str> = flakes.iter().map(String::as_str).collect();
    let disks = nixpave_deploy::disk_update::DiskUpdate::load(&flakes, hosts)
        .dry_run(goal == Goal::DryActivate);
    std::sync::Arc::new(disks)
}

fn fleet_exit(report: &FleetReport) -> u8 {
    exit::aggregate(report.hosts.iter().map(|h| {
        if h.outcome.is_success() {
            exit::OK
        } else if h.refused {
            exit::REFUSED
        } else {
            exit::FAILED
        }
    }))
}
