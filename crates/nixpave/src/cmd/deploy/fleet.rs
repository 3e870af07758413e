//! The fleet a deploy, status or rollback acts on: hosts from flakes or an inventory, and how to reach them.

use miette::miette;
use nixpave_deploy::settings::GeneralSettings;
use nixpave_deploy::source::{self, InventoryFile, SourceError};
use nixpave_deploy::{Inventory, Selection, SshConnector};
use nixpave_nix::invoke::NixOptions;
use nixpave_remote::{InventoryHost, SshOptions};

use super::FleetArgs;
use crate::cmd::connect::{password_once, AskPassword};
use crate::exit::{self, CliError};

/// Private state directory for lab hosts (they share the deployer's /var, not its /nix).
const LAB_STATE_DIR: &str = "/nix/var/nixpave/deploy";

pub(super) struct Fleet {
    /// The hosts; none yet when `listed` (its rollout and checks are there).
    pub(super) inventory: Inventory,
    pub(super) connector: SshConnector,
    /// A large flake only listed (when the caller allowed it): its chunks evaluate as it deploys.
    pub(super) listed: Option<nixpave_deploy::inventory::Listed>,
    /// What the command line changes in the hosts (already applied to `inventory`).
    pub(super) prepare: Prepare,
}

/// Command-line changes to evaluated hosts: lab state directory, setting overrides, `--hostname`.
pub(super) struct Prepare {
    lab: bool,
    overrides: GeneralSettings,
    hostname: Option<String>,
}

impl Prepare {
    pub(super) fn apply(&self, hosts: &mut Vec<nixpave_deploy::Host>) {
        if self.lab {
            nixpave_deploy::overrides::use_private_state_dir(hosts, LAB_STATE_DIR);
        }
        nixpave_deploy::overrides::apply_overrides(hosts, &self.overrides);
        if let Some(hostname) = &self.hostname {
            for host in hosts {
                host.hostname = hostname.clone();
            }
        }
    }
}

pub(super) fn usage(message: String) -> CliError {
    CliError::report(exit::USAGE, miette!(code = "nixpave::usage", "{message}"))
}

/// Loads the selected hosts and how to reach them. Errors in the inventory are usage errors (exit 2).
/// `overrides` are command-line settings that beat every inventory level; `checks` also evaluates the flakes'
/// checks; `progress` hears how far a flake evaluated in chunks is (nodes evaluated, nodes listed). With
/// `list`, one flake larger than one evaluation is only listed ([`Fleet::listed`]).
pub(super) fn load_fleet(
    args: &FleetArgs,
    mut overrides: GeneralSettings,
    checks: bool,
    nix: &NixOptions,
    progress: nixpave_deploy::inventory::EvalProgress<'_>,
    list: bool,
) -> Result<Fleet, CliError> {
    let flakes: Vec<&str> = args
        .flakes
        .iter()
        .chain(&args.targets)
        .map(String::as_str)
        .collect();
    let on = Selection::parse_on(&args.on);
    let mut known: Vec<InventoryHost> = Vec::new();
    let mut deploy_json = None;
    if let Some(path) = &args.inventory {
        match InventoryFile::read(path).map_err(source_error)? {
            InventoryFile::Nodes(value) => deploy_json = Some(value),
            InventoryFile::Hosts(hosts) => known.extend(hosts),
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
    let limit = args.eval_node_limit.map(|n| n as usize);
    let (mut inventory, listed) = if list {
        match source::list_selected(&flakes, &on, deploy_json, checks, nix, limit, progress)
            .map_err(source_error)?
        {
            source::Selected::Hosts(inventory) => (inventory, None),
            source::Selected::Listed(listed) => (listed.top.clone(), Some(listed)),
        }
    } else {
        let inventory =
            source::load_selected(&flakes, &on, deploy_json, checks, nix, limit, progress)
                .map_err(source_error)?;
        (inventory, None)
    };
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
    let prepare = Prepare {
        lab: args.lab.is_some(),
        overrides,
        hostname: args.hostname.clone(),
    };
    prepare.apply(&mut inventory.hosts);
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
        listed,
        prepare,
    })
}

/// Inventory and selection errors are usage errors (exit 2), a failed evaluation is not (exit 1).
fn source_error(e: SourceError) -> CliError {
    let code = if e.is_usage() {
        exit::USAGE
    } else {
        exit::FAILED
    };
    match e {
        // Keeps the nix error as the diagnostic's source.
        SourceError::Inventory(e) => CliError::from_error(code, e),
        e => usage(e.to_string()),
    }
}

/// The fleet without command-line setting overrides and without checks (status, rollback).
pub(super) fn load_fleet_as_it_is(args: &FleetArgs) -> Result<Fleet, CliError> {
    load_fleet(
        args,
        GeneralSettings::default(),
        false,
        &NixOptions::default(),
        &|_, _| {},
        false,
    )
}
