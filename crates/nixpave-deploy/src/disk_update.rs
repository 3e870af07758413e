//! `nixpave deploy --disk-update`: before a node is pushed and activated, its flake's disk layout
//! (`nixosConfigurations.NAME.config.disko.devices`, or `diskoConfigurations.NAME`) is compared with
//! the node's disks over the deploy's own connection, the classified differences are shown, and the
//! additive and growable ones are applied by the disk executor. A destructive difference refuses the
//! node: nothing is written to its disks and it is not activated. Nodes without a layout skip the
//! step with a note.
//!
//! The layouts are read on the deployer (one evaluation per node, by `nixpave_disk`'s loader)
//! before the rollout starts; comparing and applying happen per node, in its own thread.

use std::collections::BTreeMap;

use nixpave_disk::exec::{self, ApplyOptions, Progress, StepState};
use nixpave_disk::planner::update::{self, Class, UpdatePlan};
use nixpave_disk::{Layout, LayoutSource, LoadOptions, Mode, PlanOptions};
use nixpave_remote::Transport;

use crate::inventory::Host;

/// On a running system the layout's filesystems are mounted at `/`.
const ROOT: &str = "/";

/// What a node's flake says about its disks.
#[derive(Debug, Clone)]
pub enum NodeLayout {
    /// No `disko.devices` (or no `nixosConfigurations` entry): the step is skipped.
    None,
    /// The layout to bring the disks to.
    Layout(Box<Layout>),
    /// The layout could not be loaded; the node fails before anything is changed.
    Error(String),
}

/// The disk layouts of the deployed nodes (`--disk-update`), by node name.
#[derive(Debug, Clone, Default)]
pub struct DiskUpdate {
    layouts: BTreeMap<String, NodeLayout>,
    dry_run: bool,
}

/// Why the disk step stopped a node.
#[derive(Debug, thiserror::Error)]
pub enum DiskStepError {
    /// The layout could not be loaded from the flake.
    #[error("reading the disk layout failed: {0}; nothing was changed")]
    Load(String),
    /// Comparing the layout with the disks failed (probe or planner).
    #[error("comparing the disk layout with the disks failed: {0}; nothing was changed")]
    Compare(String),
    /// Destructive differences remain.
    #[error(
        "disk layout: {} difference(s) cannot be done in place ({}); nothing was written to the \
         disks and the system was not activated. Change the layout to keep what is there, or \
         apply the rest with `nixpave disk apply --mode update --skip-destructive`",
        reasons.len(),
        reasons.join("; ")
    )]
    Destructive {
        /// Each destructive difference with why it cannot be done in place.
        reasons: Vec<String>,
    },
    /// The executor failed or refused (see its message for what was done).
    #[error("applying the disk update failed: {0}; the system was not activated")]
    Apply(#[source] exec::ApplyError),
}

impl DiskStepError {
    /// True when the node was refused for safety with nothing written (destructive differences).
    pub fn is_refusal(&self) -> bool {
        matches!(self, DiskStepError::Destructive { .. })
    }
}

impl DiskUpdate {
    /// Reads the layout of every host from the first of `flakes` that has a
    /// `nixosConfigurations` entry (or `diskoConfigurations` entry) of the host's node name.
    pub fn load(flakes: &[&str], hosts: &[Host]) -> DiskUpdate {
        let layouts = hosts
            .iter()
            .map(|h| (h.name.clone(), load_one(flakes, &h.name)))
            .collect();
        DiskUpdate {
            layouts,
            dry_run: false,
        }
    }

    /// Only compare and show what would run (a dry activation): nothing is written.
    pub fn dry_run(mut self, yes: bool) -> DiskUpdate {
        self.dry_run = yes;
        self
    }

    /// A disk update with these layouts (tests and callers that load layouts themselves).
    pub fn from_layouts(layouts: BTreeMap<String, NodeLayout>) -> DiskUpdate {
        DiskUpdate {
            layouts,
            dry_run: false,
        }
    }

    /// Compares `node`'s layout with its disks through `t`, shows the result through `show`,
    /// and applies the additive and growable differences (logging each step through `log`).
    /// Returns a note when there was nothing to do.
    pub fn run(
        &self,
        node: &str,
        t: &dyn Transport,
        show: &dyn Fn(String, UpdatePlan),
        log: &dyn Fn(String),
    ) -> Result<(), DiskStepError> {
        let layout = match self.layouts.get(node) {
            None | Some(NodeLayout::None) => {
                log(
                    "no disk layout in the flake (no config.disko.devices): disk step skipped"
                        .into(),
                );
                return Ok(());
            }
            Some(NodeLayout::Error(e)) => return Err(DiskStepError::Load(e.clone())),
            Some(NodeLayout::Layout(layout)) => layout,
        };
        let facts =
            exec::probe_for_update(t, layout).map_err(|e| DiskStepError::Compare(e.to_string()))?;
        let options = PlanOptions {
            root_mountpoint: ROOT.to_string(),
            ..PlanOptions::default()
        };
        let u = update::update(layout, &facts, &options)
            .map_err(|e| DiskStepError::Compare(e.to_string()))?;
        show(update::render_human(&u), u.clone());
        let reasons: Vec<String> = u
            .of(Class::Destructive)
            .map(|d| d.description.clone())
            .collect();
        if !reasons.is_empty() {
            return Err(DiskStepError::Destructive { reasons });
        }
        let plan = u.plan();
        if plan.operations.is_empty() {
            log("disks already match the layout".into());
            return Ok(());
        }
        let mut apply = ApplyOptions::for_layout(layout, Mode::Update, ROOT);
        apply.dry_run = self.dry_run;
        let preflight = exec::preflight(t, &plan, &apply).map_err(DiskStepError::Apply)?;
        // An update never wipes; no confirmation is given, so the executor refuses if it would.
        let report = exec::execute(t, &plan, &preflight, &apply, false, &mut |p: &Progress| {
            if p.state != StepState::Done {
                log(p.render());
            }
        })
        .map_err(DiskStepError::Apply)?;
        log(format!(
            "disk update {}: {} step(s) {}, {} skipped (already done)",
            if self.dry_run { "dry run" } else { "done" },
            report.ran,
            if self.dry_run { "would run" } else { "ran" },
            report.skipped
        ));
        Ok(())
    }
}

fn load_one(flakes: &[&str], name: &str) -> NodeLayout {
    for flake in flakes {
        match nixpave_disk::flake_has_layout(flake, name) {
            Ok(false) => continue,
            Ok(true) => {
                let source = LayoutSource::Flake {
                    flake_ref: flake.to_string(),
                    name: name.to_string(),
                };
                return match nixpave_disk::load_layout(&source, &LoadOptions::default()) {
                    Ok(layout) => NodeLayout::Layout(Box::new(layout)),
                    Err(e) => NodeLayout::Error(format!("{flake}#{name}: {e}")),
                };
            }
            Err(e) => return NodeLayout::Error(format!("{flake}#{name}: {e}")),
        }
    }
    NodeLayout::None
}

/// The deploy's disk step for `host`: enters [`Phase::Disk`](crate::Phase::Disk), shows the
/// comparison as an [`Event::DiskPlan`] and logs the executor's steps.
pub(crate) fn step(
    host: &Host,
    emit: crate::event::EventSink<'_>,
    t: &dyn Transport,
    disks: &DiskUpdate,
) -> Result<(), DiskStepError> {
    use crate::event::{Event, Phase};
    emit(Event::Phase {
        host: host.name.clone(),
        phase: Phase::Disk,
    });
    disks.run(
        &host.name,
        t,
        &|text, update| {
            emit(Event::DiskPlan {
                host: host.name.clone(),
                text,
                update,
            })
        },
        &|line| {
            emit(Event::Log {
                host: host.name.clone(),
                line,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn run(disks: &DiskUpdate, node: &str) -> (Result<(), DiskStepError>, Vec<String>, usize) {
        let logs = RefCell::new(Vec::new());
        let shown = RefCell::new(0);
        let r = disks.run(
            node,
            &nixpave_remote::LocalTransport,
            &|_, _| *shown.borrow_mut() += 1,
            &|l| logs.borrow_mut().push(l),
        );
        (r, logs.into_inner(), shown.into_inner())
    }

    #[test]
    fn a_node_without_a_layout_is_skipped_with_a_note() {
        let disks = DiskUpdate::from_layouts(BTreeMap::from([("web".into(), NodeLayout::None)]));
        for node in ["web", "not-in-the-map"] {
            let (r, logs, shown) = run(&disks, node);
            assert!(r.is_ok());
            assert_eq!(shown, 0);
            assert!(logs[0].contains("disk step skipped"), "{logs:?}");
        }
    }

    #[test]
    fn a_layout_that_did_not_load_fails_the_node_before_probing() {
        let disks = DiskUpdate::from_layouts(BTreeMap::from([(
            "web".into(),
            NodeLayout::Error("bad attribute".into()),
        )]));
        let (r, _, shown) = run(&disks, "web");
        assert!(matches!(r, Err(DiskStepError::Load(ref m)) if m == "bad attribute"));
        assert_eq!(shown, 0);
    }
}
