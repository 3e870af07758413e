//! `nixpave rollback`.

use std::process::ExitCode;

use nixpave_deploy::event::EventSink;
use nixpave_deploy::{Event, Outcome, RolloutSettings};

use super::fleet::load_fleet_as_it_is;
use super::render::Renderer;
use super::RollbackArgs;
use crate::exit;

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
    let report = nixpave_deploy::fleet::run_waves(hosts, &rollout, sink, &|host, host_index| {
        nixpave_deploy::rollback_host(host, &fleet.connector, args.goal, sink, host_index)
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
