//! `nixpave deploy`, `nixpave status`, `nixpave rollback`: argument parsing and rendering only; the work is in
//! `nixpave_deploy`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use miette::{miette, IntoDiagnostic};
use nixpave_deploy::event::EventSink;
use nixpave_deploy::settings::GeneralSettings;
use nixpave_deploy::{
    Event, FleetReport, Goal, HostReport, Inventory, Outcome, RolloutSettings, Selection,
    SshConnector,
};
use nixpave_nix::flake::FlakeTarget;
use nixpave_nix::invoke::NixOptions;
use nixpave_remote::{InventoryHost, SshOptions};

use super::connect::{password_once, AskPassword, ConnectArgs};
use crate::exit::{self, CliError};

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

/// Private state directory for lab hosts (they share the deployer's /var, not its /nix).
const LAB_STATE_DIR: &str = "/nix/var/nixpave/deploy";

/// Fleets larger than this get a summed-up final table on a terminal.
const COMPACT_ABOVE: usize = 25;

struct Fleet {
    inventory: Inventory,
    connector: SshConnector,
}

fn usage(message: String) -> CliError {
    CliError::report(exit::USAGE, miette!(code = "nixpave::usage", "{message}"))
}

/// Loads the selected hosts and how to reach them. Errors in the inventory are usage errors (exit 2).
/// `overrides` are command-line settings that beat every inventory level; `checks` also evaluates the flakes'
/// checks.
fn load_fleet(
    args: &FleetArgs,
    mut overrides: GeneralSettings,
    checks: bool,
    nix: &NixOptions,
) -> Result<Fleet, CliError> {
    let mut flakes: Vec<&str> = args
        .flakes
        .iter()
        .chain(&args.targets)
        .map(String::as_str)
        .collect();
    if flakes.is_empty() {
        flakes.push(".");
    }
    let on = Selection::parse_on(&args.on);
    let mut known: Vec<InventoryHost> = Vec::new();
    let mut deploy_json = None;
    if let Some(path) = &args.inventory {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?;
        if value.get("nodes").is_some() {
            deploy_json = Some(value);
        } else {
            let inv: nixpave_remote::Inventory = serde_json::from_value(value)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            known.extend(inv.hosts);
        }
    }
    if let Some(lab) = &args.lab {
        use nixpave_remote::HostGroups;
        let labs = nixpave_lab::hosts::Labs {
            dir: args.connect.lab_dir.clone(),
        };
        let inv = match labs.group(lab) {
            Ok(Some((inv, _))) => inv,
            Ok(None) => {
                return Err(usage(format!(
                    "lab {lab}: no such lab in {} (is it up? `nixpave lab up {lab}`)",
                    labs.dir.display()
                )))
            }
            Err(e) => return Err(usage(format!("lab {lab}: {e}"))),
        };
        known.extend(inv.hosts);
    }
    let inventory_error = |e: nixpave_deploy::InventoryError| {
        let code = match e {
            nixpave_deploy::InventoryError::Eval { .. } => exit::FAILED,
            _ => exit::USAGE,
        };
        CliError::from_error(code, e)
    };
    let mut inventory = match deploy_json {
        Some(v) => {
            let target = FlakeTarget::parse(flakes[0]);
            let selection = selection_for(&on, &target)?;
            Inventory::from_json(v, &selection).map_err(inventory_error)?
        }
        None => {
            let mut all = Inventory::default();
            for flake in &flakes {
                let target = FlakeTarget::parse(flake);
                let selection = selection_for(&on, &target)?;
                let one = Inventory::load_flake(&target.flake, &selection, checks, nix)
                    .map_err(inventory_error)?;
                all.merge(one).map_err(inventory_error)?;
            }
            all
        }
    };
    if inventory.hosts.is_empty() {
        return Err(usage(
            "no host matches the selection (check --on and FLAKE#node)".into(),
        ));
    }
    if args.lab.is_some() {
        nixpave_deploy::overrides::use_private_state_dir(&mut inventory.hosts, LAB_STATE_DIR);
    }
    overrides.state_dir = args.state_dir.clone();
    overrides.ssh_user = args.ssh_user.clone();
    overrides.sudo = args.sudo.clone();
    overrides.interactive_sudo = args
        .interactive_sudo
        .or(args.connect.ask_sudo_password.then_some(true));
    if let Some(opts) = &args.ssh_opts {
        overrides.ssh_opts = shlex::split(opts)
            .ok_or_else(|| usage(format!("--ssh-opts `{opts}`: unbalanced quotes")))?;
    }
    nixpave_deploy::overrides::apply_overrides(&mut inventory.hosts, &overrides);
    if let Some(hostname) = &args.hostname {
        for host in &mut inventory.hosts {
            host.hostname = hostname.clone();
        }
    }
    // The password goes only to hosts with `interactiveSudo` (the flag turned it on above).
    let base = SshOptions {
        sudo_password: None,
        ..args.connect.ssh_options(AskPassword::Once)
    };
    let mut connector = SshConnector::new(base, known).with_sudo_prompt(password_once());
    if let Some(tool) = args.connect.become_tool {
        connector = connector.with_privilege(tool.into());
    }
    Ok(Fleet {
        inventory,
        connector,
    })
}

/// The hosts a flake argument selects: `--on` plus its `#node.profile` fragment.
fn selection_for(on: &Selection, target: &FlakeTarget) -> Result<Selection, CliError> {
    match &target.fragment {
        Some(fragment) => on
            .clone()
            .with_fragment(fragment)
            .map_err(|e| usage(e.to_string())),
        None => Ok(on.clone()),
    }
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
    if !args.fleet.json && std::io::stderr().is_terminal() {
        eprintln!("evaluating the fleet…");
    }
    let fleet = match load_fleet(&args.fleet, overrides, !args.skip_checks, &nix) {
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
    if !args.fleet.json {
        eprintln!(
            "building {} profile(s) of {} host(s)…",
            hosts.iter().map(|h| h.profiles.len()).sum::<usize>(),
            hosts.len()
        );
    }
    if !fleet.inventory.checks.is_empty() {
        if !args.fleet.json {
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
    renderer.finish(&report, |h| h.outcome.is_success())?;
    if nixpave_remote::cancel::is_cancelled() {
        return Ok(exit::code(exit::INTERRUPTED));
    }
    Ok(exit::code(fleet_exit(&report)))
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
        } else {
            exit::FAILED
        }
    }))
}

fn print_plan(
    inventory: &Inventory,
    rollout: &RolloutSettings,
    opts: &nixpave_deploy::DeployOptions,
    json: bool,
) -> miette::Result<()> {
    let waves = nixpave_deploy::rollout::plan_waves(inventory.hosts.len(), rollout);
    if json {
        let plan = serde_json::json!({
            "goal": opts.goal,
            "hosts": inventory.hosts,
            "waves": waves,
            "parallel": rollout.parallelism(),
        });
        println!("{}", serde_json::to_string_pretty(&plan).into_diagnostic()?);
        return Ok(());
    }
    println!(
        "plan (dry run, nothing changed): goal {}, {} host(s) at a time",
        opts.goal.as_str(),
        rollout.parallelism()
    );
    for (i, wave) in waves.iter().enumerate() {
        println!(
            "wave {}{}:",
            i + 1,
            if wave.canary { " (canary)" } else { "" }
        );
        for &h in &wave.hosts {
            let host = &inventory.hosts[h];
            for p in &host.profiles {
                println!(
                    "  {:<16} {:<8} {} -> {}",
                    host.name,
                    p.name,
                    p.profile_path,
                    p.path.out_path()
                );
            }
            for (name, key) in &host.keys {
                println!(
                    "  {:<16} key      {} ({} {}:{}, {:?})",
                    host.name,
                    key.dest(name).display(),
                    key.permissions.as_deref().unwrap_or("0600"),
                    key.user.as_deref().unwrap_or("root"),
                    key.group.as_deref().unwrap_or("root"),
                    key.upload_at
                );
            }
        }
    }
    Ok(())
}

/// Progress while running and the final table.
///
/// On a terminal: one line per host that is being worked on (its phase and last log line), gone when it
/// finishes, under one line of counters (done, failed, active, waiting) and the fleet's current phase; hosts
/// that did not succeed get a permanent line. A 200-host rollout fits one screen. Without a terminal: one
/// line per host and phase change (agent log lines only with `-v`). With `--json`: one JSON event per line.
struct Renderer {
    json: bool,
    started: Instant,
    multi: Option<indicatif::MultiProgress>,
    summary: Option<indicatif::ProgressBar>,
    bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
    /// Active hosts without a line of their own: the terminal has no room left (locked after `bars`).
    hidden: Mutex<std::collections::HashSet<String>>,
    /// Host lines that fit the terminal (its height less the counter line and some room).
    max_lines: usize,
    phases: Mutex<HashMap<String, String>>,
    counts: Mutex<Counts>,
    verbose: bool,
}

/// Hosts by state, for the counter line.
#[derive(Default)]
struct Counts {
    total: usize,
    done: usize,
    failed: usize,
    active: usize,
    /// Active hosts without a line of their own.
    hidden: usize,
}

impl Renderer {
    fn new(json: bool, hosts: impl Iterator<Item = String>) -> Renderer {
        // -q: no progress at all (bars or phase lines); the result table still prints.
        let tty = std::io::stderr().is_terminal() && !json && !crate::ui::quiet();
        let multi = tty.then(indicatif::MultiProgress::new);
        let summary = multi.as_ref().map(|m| {
            let bar = m.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let renderer = Renderer {
            json,
            started: Instant::now(),
            multi,
            summary,
            bars: Mutex::new(HashMap::new()),
            hidden: Mutex::new(Default::default()),
            max_lines: (console::Term::stderr().size().0 as usize)
                .saturating_sub(4)
                .max(3),
            phases: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts {
                total: hosts.count(),
                ..Counts::default()
            }),
            verbose: tracing::enabled!(tracing::Level::INFO),
        };
        renderer.update_summary(None);
        renderer
    }

    /// The counter line: `12/200 done · 1 failed · 10 active · 177 waiting — push`.
    fn update_summary(&self, phase: Option<&str>) {
        let Some(bar) = &self.summary else { return };
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = c.total.saturating_sub(c.done + c.failed + c.active);
        let mut line = format!(
            "{}/{} done · {} failed · {} active · {} waiting",
            c.done, c.total, c.failed, c.active, waiting
        );
        if c.hidden > 0 {
            line.push_str(&format!(" ({} active not shown)", c.hidden));
        }
        if let Some(phase) = phase {
            line.push_str(&format!(" — {phase}"));
        }
        bar.set_message(line);
    }

    /// The fleet's build progress on the counter line (derivations built of those to build).
    fn build_progress(&self, done: u64, expected: u64) {
        if expected > 0 {
            self.update_summary(Some(&format!("build {done}/{expected}")));
        }
    }

    /// A fleet-wide message (the build failed): above the progress lines on a terminal, else on stderr
    /// (also with `--json`, whose stdout keeps its events).
    fn note(&self, text: &str) {
        if let Some(m) = &self.multi {
            let _ = m.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    /// The line of an active host, made when it becomes active.
    /// `None` on a terminal means the host is active without a line (no room left): it is counted.
    fn bar(&self, host: &str) -> Option<indicatif::ProgressBar> {
        let multi = self.multi.as_ref()?;
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bar) = bars.get(host) {
            return Some(bar.clone());
        }
        let mut hidden = self.hidden.lock().unwrap_or_else(|p| p.into_inner());
        if bars.len() >= self.max_lines {
            if hidden.insert(host.to_string()) {
                let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
                c.active += 1;
                c.hidden += 1;
            }
            return None;
        }
        let was_hidden = hidden.remove(host);
        drop(hidden);
        let bar = multi.add(indicatif::ProgressBar::new_spinner());
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {spinner} {prefix:<16} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(host.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bars.insert(host.to_string(), bar.clone());
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if was_hidden {
            c.hidden -= 1;
        } else {
            c.active += 1;
        }
        Some(bar)
    }

    fn event(&self, e: Event) {
        if self.json {
            // Progress is for a person at a terminal.
            if matches!(e, Event::Progress { .. }) {
                return;
            }
            if let Ok(line) = serde_json::to_string(&e) {
                println!("{line}");
            }
            return;
        }
        match &e {
            Event::Phase { host, phase } => {
                let name = serde_json::to_value(phase)
                    .ok()
                    .and_then(|v| v.as_str().map(|s| s.replace('_', "-")))
                    .unwrap_or_default();
                if let Ok(mut p) = self.phases.lock() {
                    p.insert(host.clone(), name.clone());
                }
                match self.bar(host) {
                    Some(bar) => {
                        bar.set_message(name.clone());
                        self.update_summary(Some(&name));
                    }
                    None if self.multi.is_some() => self.update_summary(Some(&name)),
                    None => self.plain(host, &name),
                }
            }
            Event::Log { host, line } => {
                let phase = self
                    .phases
                    .lock()
                    .ok()
                    .and_then(|p| p.get(host).cloned())
                    .unwrap_or_default();
                match self.bar(host) {
                    Some(bar) => bar.set_message(format!("{phase}: {line}")),
                    None if self.multi.is_some() => {}
                    None if self.verbose => self.plain(host, &format!("{phase}: {line}")),
                    None => {}
                }
            }
            Event::Progress { host, text } => {
                if self.multi.is_some() {
                    if let Some(bar) = self.bar(host) {
                        bar.set_message(format!("push: {text}"));
                    }
                }
            }
            Event::Wave {
                number,
                hosts,
                canary,
            } => {
                let line = format!(
                    "wave {number}{}: {} host(s)",
                    if *canary { " (canary)" } else { "" },
                    hosts.len()
                );
                match &self.multi {
                    Some(m) => {
                        let _ = m.println(line);
                    }
                    None => eprintln!("{line}: {}", hosts.join(", ")),
                }
            }
            Event::DiskPlan { host, text, .. } => {
                for line in text.lines() {
                    match &self.multi {
                        Some(m) => {
                            let _ = m.println(format!("{host}: {line}"));
                        }
                        None => self.plain(host, line),
                    }
                }
            }
            Event::Finished { report } => {
                let word = outcome_word(report);
                let ok = report.outcome.is_success();
                let (bar, was_hidden) = {
                    let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
                    let bar = bars.remove(&report.host);
                    let mut hidden = self.hidden.lock().unwrap_or_else(|p| p.into_inner());
                    (bar, hidden.remove(&report.host))
                };
                {
                    let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
                    if bar.is_some() || was_hidden {
                        c.active = c.active.saturating_sub(1);
                    }
                    if was_hidden {
                        c.hidden = c.hidden.saturating_sub(1);
                    }
                    if ok {
                        c.done += 1;
                    } else {
                        c.failed += 1;
                    }
                }
                match (&self.multi, bar) {
                    (Some(m), bar) => {
                        if let Some(bar) = bar {
                            bar.finish_and_clear();
                            m.remove(&bar);
                        }
                        if !ok {
                            let _ = m.println(format!(
                                "  ✗ {:<16} {word}: {}",
                                report.host, report.message
                            ));
                        }
                        self.update_summary(None);
                    }
                    (None, _) => self.plain(&report.host, word),
                }
            }
        }
    }

    fn plain(&self, host: &str, text: &str) {
        if crate::ui::quiet() {
            return;
        }
        eprintln!(
            "[{:>5.1}s] {host}: {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn finish(&self, report: &FleetReport, ok: fn(&HostReport) -> bool) -> miette::Result<()> {
        if self.json {
            let summary = serde_json::json!({
                "event": "report",
                "hosts": report.hosts,
                "failed": report.hosts.iter().filter(|h| !ok(h)).count(),
                "ssh_handshakes": report.handshakes,
            });
            println!("{}", serde_json::to_string(&summary).into_diagnostic()?);
            return Ok(());
        }
        if let Some(summary) = &self.summary {
            summary.finish_and_clear();
        }
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
        // On a terminal a large fleet is summed up: hosts that succeeded are counted, the others listed.
        let compact = self.multi.is_some() && report.hosts.len() > COMPACT_ABOVE;
        if compact {
            let mut by_outcome: Vec<(&str, usize)> = Vec::new();
            for h in report.hosts.iter().filter(|h| ok(h)) {
                match by_outcome.iter_mut().find(|(w, _)| *w == outcome_word(h)) {
                    Some((_, n)) => *n += 1,
                    None => by_outcome.push((outcome_word(h), 1)),
                }
            }
            for (word, n) in by_outcome {
                println!("{word}: {n} host(s)");
            }
        }
        let rows: Vec<&HostReport> = report.hosts.iter().filter(|h| !compact || !ok(h)).collect();
        if !rows.is_empty() {
            let mut table = super::table::new(&["HOST", "RESULT", "TIME", "GENERATION", "detail"]);
            for h in rows {
                table.add_row(vec![
                    h.host.clone(),
                    crate::ui::status(outcome_word(h)),
                    format!("{:.1}s", h.duration_ms as f64 / 1000.0),
                    h.generation.map(|g| g.to_string()).unwrap_or("-".into()),
                    h.message.clone(),
                ]);
            }
            println!("{}", super::table::render(table, &[2]));
        }
        for h in report
            .hosts
            .iter()
            .filter(|h| !ok(h) && h.outcome != Outcome::Skipped && !h.log_tail.is_empty())
        {
            println!("\n--- {}: last log lines ---", h.host);
            for l in &h.log_tail {
                println!("  {l}");
            }
        }
        let failed = report.hosts.iter().filter(|h| !ok(h)).count();
        println!(
            "\n{} of {} host(s) succeeded{}",
            report.hosts.len() - failed,
            report.hosts.len(),
            if failed > 0 {
                format!(
                    "; not succeeded: {}",
                    report
                        .hosts
                        .iter()
                        .filter(|h| !ok(h))
                        .map(|h| h.host.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            }
        );
        Ok(())
    }
}

fn outcome_word(r: &HostReport) -> &'static str {
    match r.outcome {
        Outcome::Deployed => "deployed",
        Outcome::Unchanged => "unchanged",
        Outcome::DryActivated => "dry-activated",
        Outcome::RolledBack => "rolled-back",
        Outcome::Failed => "FAILED",
        Outcome::Skipped => "skipped",
    }
}

/// The fleet without command-line setting overrides and without checks (status, rollback).
fn load_fleet_as_it_is(args: &FleetArgs) -> Result<Fleet, CliError> {
    load_fleet(
        args,
        GeneralSettings::default(),
        false,
        &NixOptions::default(),
    )
}

/// Runs `nixpave status`.
pub fn status(args: StatusArgs) -> miette::Result<ExitCode> {
    let fleet = match load_fleet_as_it_is(&args.fleet) {
        Ok(f) => f,
        Err(e) => return Ok(e.exit()),
    };
    let hosts = &fleet.inventory.hosts;
    let rows = status_rows(hosts, |host| {
        nixpave_deploy::status::host_status(host, &fleet.connector)
    });
    if args.fleet.json {
        println!("{}", serde_json::to_string_pretty(&rows).into_diagnostic()?);
    } else {
        let mut table = super::table::new(&[
            "HOST",
            "REACHABLE",
            "PROFILE",
            "GEN",
            "BOOTED",
            "LAST DEPLOY",
            "current system",
        ]);
        let mut notes = Vec::new();
        for r in &rows {
            if let Some(e) = &r.error {
                let mut row = vec![r.host.clone(), "no".into()];
                row.extend(["-"; 4].map(String::from));
                row.push(e.to_string());
                table.add_row(row);
                continue;
            }
            for p in &r.profiles {
                let last = p
                    .last
                    .as_ref()
                    .map(|l| {
                        if l.reason.is_empty() {
                            l.state.to_string()
                        } else {
                            format!("{} ({})", l.state, l.reason)
                        }
                    })
                    .unwrap_or_else(|| "-".into());
                table.add_row(vec![
                    r.host.clone(),
                    "yes".into(),
                    p.name.clone(),
                    p.generation.map(|g| g.to_string()).unwrap_or("-".into()),
                    p.booted_generation
                        .map(|g| g.to_string())
                        .unwrap_or("-".into()),
                    last,
                    p.current.as_deref().unwrap_or("-").to_string(),
                ]);
            }
            if r.state
                .as_ref()
                .is_some_and(|s| s.booted_system != s.current_system)
            {
                notes.push(format!(
                    "{}: booted system differs from current: {}",
                    r.host,
                    r.state
                        .as_ref()
                        .and_then(|s| s.booted_system.clone())
                        .unwrap_or("-".into())
                ));
            }
        }
        println!("{}", super::table::render(table, &[3, 4]));
        for note in notes {
            println!("{note}");
        }
    }
    Ok(exit::code(exit::aggregate(rows.iter().map(|r| {
        if r.error.is_some() {
            exit::FAILED
        } else {
            exit::OK
        }
    }))))
}

/// Reads every host's status, at most 10 at a time (a worker takes the next host as soon as it
/// is free); a host whose reading panicked or never started gets an error row, never no row.
fn status_rows(
    hosts: &[nixpave_deploy::Host],
    read: impl Fn(&nixpave_deploy::Host) -> nixpave_deploy::status::HostStatus + Sync,
) -> Vec<nixpave_deploy::status::HostStatus> {
    use nixpave_remote::parallel::{self, Slot};
    let slots = parallel::run(hosts, 10, || false, read);
    hosts
        .iter()
        .zip(slots)
        .map(|(host, slot)| {
            let error = match slot {
                Slot::Done(row) => return row,
                Slot::Panicked(m) => format!("internal error: {m}"),
                Slot::NotStarted => "not read: interrupted".into(),
            };
            nixpave_deploy::status::HostStatus {
                host: host.name.clone(),
                error: Some(error),
                state: None,
                profiles: Vec::new(),
            }
        })
        .collect()
}

/// Runs `nixpave rollback`.
pub fn rollback(args: RollbackArgs) -> miette::Result<ExitCode> {
    let fleet = match load_fleet_as_it_is(&args.fleet) {
        Ok(f) => f,
        Err(e) => return Ok(e.exit()),
    };
    let hosts = &fleet.inventory.hosts;
    // Ctrl-C stops the waiting, not the rollbacks: they run detached on the hosts.
    if let Err(e) = nixpave_remote::cancel::install_signal_handlers() {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let renderer = Renderer::new(args.fleet.json, hosts.iter().map(|h| h.name.clone()));
    let sink = |e: Event| renderer.event(e);
    let sink: EventSink<'_> = &sink;
    let rollout = RolloutSettings {
        parallel: Some(args.parallel),
        ..Default::default()
    };
    let report = nixpave_deploy::fleet::run_waves(hosts, &rollout, sink, &|host, salt| {
        nixpave_deploy::rollback_host(host, &fleet.connector, args.goal, sink, salt)
    });
    renderer.finish(&report, |h| h.outcome == Outcome::RolledBack)?;
    if nixpave_remote::cancel::is_cancelled() {
        return Ok(exit::code(exit::INTERRUPTED));
    }
    Ok(exit::code(exit::aggregate(report.hosts.iter().map(|h| {
        if h.outcome == Outcome::RolledBack {
            exit::OK
        } else {
            exit::FAILED
        }
    }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_a_panicking_host_an_error_row_and_keeps_order() {
        let nodes: serde_json::Map<String, serde_json::Value> = (0..12)
            .map(|i| {
                let node = serde_json::json!({"hostname": "x", "profiles": {"system": {"path": "/nix/store/x"}}});
                (format!("h{i:02}"), node)
            })
            .collect();
        let inventory = nixpave_deploy::Inventory::from_json(
            serde_json::json!({ "nodes": nodes }),
            &nixpave_deploy::Selection::default(),
        )
        .expect("valid inventory");
        let rows = status_rows(&inventory.hosts, |host| {
            if host.name == "h03" {
                panic!("cannot read {}", host.name);
            }
            nixpave_deploy::status::HostStatus {
                host: host.name.clone(),
                error: None,
                state: None,
                profiles: Vec::new(),
            }
        });
        let names: Vec<&str> = rows.iter().map(|r| r.host.as_str()).collect();
        let expected: Vec<String> = (0..12).map(|i| format!("h{i:02}")).collect();
        assert_eq!(names, expected, "every host has a row, in inventory order");
        assert_eq!(
            rows[3].error.as_deref(),
            Some("internal error: cannot read h03")
        );
        assert!(rows.iter().filter(|r| r.error.is_some()).count() == 1);
    }
}
