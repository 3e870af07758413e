//! Deploying a fleet: one build for everything, then hosts in waves, in parallel, streaming.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::connection::Connector;
use crate::event::{Event, EventSink, HostReport, Outcome};
use crate::host::{deploy_host, DeployOptions};
use crate::inventory::{Host, ProfilePath};
use crate::rollout::{continue_after, may_start, plan_waves, RolloutSettings};

/// The result of a fleet deploy.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// One report per selected host, in inventory order.
    pub hosts: Vec<HostReport>,
    /// ssh handshakes made (master connections and fresh logins).
    pub handshakes: usize,
}

impl FleetReport {
    /// Hosts that did not succeed (failed, rolled back or skipped).
    pub fn failed(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| !h.outcome.is_success())
            .count()
    }

    /// True when every host succeeded.
    pub fn all_ok(&self) -> bool {
        self.failed() == 0
    }
}

/// Building the fleet's profiles failed.
#[derive(Debug, thiserror::Error)]
#[error("building the selected profiles failed")]
pub struct BuildError(#[source] pub nixpave_nix::invoke::NixError);

/// Builds every derivation of `hosts` with ONE `nix build` (skipped with `build_on_target`).
pub fn build_all(hosts: &[Host], opts: &DeployOptions) -> Result<usize, BuildError> {
    build_all_rooted(hosts, opts).map(|built| built.count)
}

/// What [`build_all_rooted`] built; its outputs stay GC roots until this is dropped.
#[derive(Debug)]
pub struct Built {
    /// How many derivations were built.
    pub count: usize,
    /// Holds the `--out-link` roots (removed on drop).
    _roots: Option<tempfile::TempDir>,
}

/// [`build_all`], with the outputs kept as GC roots until the returned [`Built`] is dropped: hold it until
/// the push has ended, so a garbage collection meanwhile cannot remove what is about to be copied.
pub fn build_all_rooted(hosts: &[Host], opts: &DeployOptions) -> Result<Built, BuildError> {
    if opts.build_on_target {
        return Ok(Built {
            count: 0,
            _roots: None,
        });
    }
    let mut drvs: Vec<String> = hosts
        .iter()
        .filter(|h| !h.settings.remote_build)
        .flat_map(|h| &h.profiles)
        .filter_map(|p| match &p.path {
            ProfilePath::Derivation { drv_path, .. } => Some(drv_path.clone()),
            ProfilePath::Store(_) => None,
        })
        .collect();
    drvs.sort();
    drvs.dedup();
    let roots = roots_dir()?;
    crate::timing::timed("-", "build", || {
        nixpave_nix::build::build_derivations_rooted(&drvs, &opts.nix, &roots.path().join("result"))
    })
    .map_err(BuildError)?;
    Ok(Built {
        count: drvs.len(),
        _roots: Some(roots),
    })
}

/// The fleet's build as it runs, shared by the build thread and the hosts: a host goes on to push as soon as
/// its own profiles are built, while the others still build ([`Builds::run`], [`Builds::wait_for`]).
pub struct Builds {
    /// Derivation → its output, for the derivations this build makes.
    outputs: std::collections::HashMap<String, String>,
    state: Mutex<BuildState>,
    changed: std::sync::Condvar,
    /// Keeps the outputs GC roots until dropped.
    roots: Option<tempfile::TempDir>,
}

#[derive(Default)]
struct BuildState {
    built: std::collections::HashSet<String>,
    /// `Some` once the nix build ended: `Err` with why it failed.
    ended: Option<Result<(), Failure>>,
}

/// Why a build ended without building everything, kept for the hosts waiting on it.
struct Failure {
    /// nix's error without the builds' logs (or why the build did not run).
    message: String,
    /// The log tails of the derivations not built.
    logs: Vec<nixpave_nix::progress::BuildLog>,
}

impl Failure {
    /// The failure as `wanted`'s host sees it: the logs of its own derivations; the others only named (every
    /// host of a build would repeat them; the build's own error has them all).
    fn for_host(&self, wanted: &[&str]) -> String {
        let (own, others): (Vec<_>, Vec<_>) = self
            .logs
            .iter()
            .partition(|l| wanted.contains(&l.drv.as_str()));
        let mut text = self.message.clone();
        for log in own {
            text.push_str(&format!("\n{log}"));
        }
        if !others.is_empty() {
            let names: Vec<&str> = others.iter().map(|l| l.drv.as_str()).collect();
            text.push_str(&format!(
                "\nnot built: {} (their logs are in the build's error)",
                names.join(", ")
            ));
        }
        text
    }
}

impl std::fmt::Debug for Builds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builds")
            .field("derivations", &self.outputs.len())
            .finish()
    }
}

impl Builds {
    /// The build of every derivation of `hosts` (none with `build_on_target`, none of `remoteBuild` nodes).
    /// Derivations whose output is already valid in the store count as built as soon as [`run`](Self::run)
    /// has asked the store (its first step), before the build itself.
    pub fn new(hosts: &[Host], opts: &DeployOptions) -> Result<Builds, BuildError> {
        let outputs: std::collections::HashMap<String, String> = if opts.build_on_target {
            Default::default()
        } else {
            hosts
                .iter()
                .filter(|h| !h.settings.remote_build)
                .flat_map(|h| &h.profiles)
                .filter_map(|p| match &p.path {
                    ProfilePath::Derivation { drv_path, out_path } => {
                        Some((drv_path.clone(), out_path.clone()))
                    }
                    ProfilePath::Store(_) => None,
                })
                .collect()
        };
        let roots = if outputs.is_empty() {
            None
        } else {
            Some(roots_dir()?)
        };
        let builds = Builds {
            outputs,
            state: Mutex::new(BuildState::default()),
            changed: std::sync::Condvar::new(),
            roots,
        };
        Ok(builds)
    }

    /// Runs the one `nix build` (call it on a thread of its own); `progress` hears (built, to build) as it
    /// changes. Returns how many derivations were asked for.
    pub fn run(
        &self,
        opts: &DeployOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<usize, BuildError> {
        // Asked here, on the build's thread, not before the hosts start: the store query is off the
        // critical path (hosts connect and probe meanwhile; only a host that must push waits for it).
        self.refresh(&opts.nix);
        let mut drvs: Vec<String> = self.outputs.keys().cloned().collect();
        drvs.sort();
        let result = match &self.roots {
            None => Ok(()),
            // Every output already valid (a no-op redeploy): only GC roots are wanted, not a `nix build`
            // (an evaluator start and `nix --version` on a busy machine: the deploy would wait for it at the
            // end). Should a path have gone meanwhile, the build below makes it again.
            Some(roots)
                if self.all_built()
                    && crate::timing::timed("-", "root", || {
                        let outs: Vec<String> = self.outputs.values().cloned().collect();
                        nixpave_nix::build::root_valid_paths(
                            &outs,
                            &opts.nix,
                            &roots.path().join("valid"),
                        )
                    })
                    .is_ok() =>
            {
                Ok(())
            }
            Some(roots) => crate::timing::timed("-", "build", || {
                nixpave_nix::build::build_derivations_streaming(
                    &drvs,
                    &opts.nix,
                    &roots.path().join("result"),
                    &mut |event| self.heard(event, &opts.nix, progress),
                )
                .map(|_| ())
            }),
        };
        let mut state = self.lock();
        match &result {
            Ok(_) => {
                state.built.extend(drvs.iter().cloned());
                state.ended = Some(Ok(()));
            }
            Err(e) => {
                state.ended = Some(Err(Failure {
                    message: e.without_build_logs(),
                    logs: e.build_logs().to_vec(),
                }))
            }
        }
        drop(state);
        self.changed.notify_all();
        result.map(|_| drvs.len()).map_err(BuildError)
    }

    fn heard(
        &self,
        event: nixpave_nix::progress::LogEvent,
        nix: &nixpave_nix::invoke::NixOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) {
        use nixpave_nix::progress::LogEvent;
        // nix 2.8 ends a build's activity only when the whole build ends, but counts it done at once. On every
        // count, outputs that nix has finished writing (canonicalised: mtime 1) are candidates, and those the
        // store says are valid are built. Without a sandbox a build writes its output in place, so existing
        // is not enough.
        if let LogEvent::Builds { done, expected, .. } = event {
            progress(done, expected);
        }
        if matches!(event, LogEvent::Builds { .. } | LogEvent::BuildStopped(_)) {
            self.refresh(nix);
        }
    }

    /// Marks the outputs that are now valid in the store as built.
    fn refresh(&self, nix: &nixpave_nix::invoke::NixOptions) {
        let candidates: Vec<(String, String)> = {
            let state = self.lock();
            self.outputs
                .iter()
                .filter(|(drv, out)| !state.built.contains(*drv) && finished_writing(out))
                .map(|(d, o)| (d.clone(), o.clone()))
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let mut args = vec![
            "--check-validity".to_string(),
            "--print-invalid".to_string(),
        ];
        args.extend(candidates.iter().map(|(_, out)| out.clone()));
        let Ok(out) = nixpave_nix::invoke::run_nix("nix-store", &args, nix, &[]) else {
            return;
        };
        let invalid: std::collections::HashSet<&str> = out.stdout.lines().map(str::trim).collect();
        let mut state = self.lock();
        state.built.extend(
            candidates
                .into_iter()
                .filter(|(_, out)| !invalid.contains(out.as_str()))
                .map(|(drv, _)| drv),
        );
        drop(state);
        self.changed.notify_all();
    }

    /// Ends a build that will not run (or whose run panicked) with `why`, so that no host waits for it
    /// forever; a build that has ended already keeps its result.
    pub(crate) fn abandon(&self, why: &str) {
        let mut state = self.lock();
        if state.ended.is_none() {
            state.ended = Some(Err(Failure {
                message: why.to_string(),
                logs: Vec::new(),
            }));
        }
        drop(state);
        self.changed.notify_all();
    }

    /// True when every derivation of the build counts as built.
    fn all_built(&self) -> bool {
        let state = self.lock();
        self.outputs.keys().all(|d| state.built.contains(d))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BuildState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every derivation of `host` that this build makes is built. `Err` says why not (the build
    /// failed, or Ctrl-C).
    pub fn wait_for(&self, host: &Host) -> Result<(), String> {
        let wanted: Vec<&str> = host
            .profiles
            .iter()
            .filter_map(|p| p.path.drv_path())
            .filter(|d| self.outputs.contains_key(*d))
            .collect();
        let mut state = self.lock();
        loop {
            if wanted.iter().all(|d| state.built.contains(*d)) {
                return Ok(());
            }
            if let Some(Err(e)) = &state.ended {
                return Err(format!(
                    "building its profile failed: {}",
                    e.for_host(&wanted)
                ));
            }
            if state.ended.is_some() {
                return Err("the build ended without building its profile".into());
            }
            if nixpave_remote::cancel::is_cancelled() {
                return Err("interrupted while waiting for the build".into());
            }
            state = self
                .changed
                .wait_timeout(state, std::time::Duration::from_millis(200))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// True when the store path `out` exists with nix's canonical mtime (1 s after the epoch): nix is done
/// writing it (it may still be registering it).
fn finished_writing(out: &str) -> bool {
    std::fs::symlink_metadata(out)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t == std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
}

fn roots_dir() -> Result<tempfile::TempDir, BuildError> {
    tempfile::Builder::new()
        .prefix("nixpave-roots-")
        .tempdir()
        .map_err(|e| {
            BuildError(nixpave_nix::invoke::NixError::Spawn {
                command: "creating a directory for the build's GC roots".into(),
                source: e,
            })
        })
}

/// Building the flakes' checks failed: nothing was deployed.
#[derive(Debug, thiserror::Error)]
#[error("a check of the flake failed (skip the checks with --skip-checks); nothing was deployed")]
pub struct CheckError(#[source] pub nixpave_nix::invoke::NixError);

/// Builds the flakes' checks (`checks.<system>` derivations) with one `nix build`, as deploy-rs runs
/// `nix flake check` before deploying. Returns how many there were.
pub fn build_checks(
    checks: &std::collections::BTreeMap<String, String>,
    opts: &DeployOptions,
) -> Result<usize, CheckError> {
    let drvs: Vec<String> = checks.values().cloned().collect();
    crate::timing::timed("-", "checks", || {
        nixpave_nix::build::build_derivations(&drvs, &opts.nix)
    })
    .map_err(CheckError)?;
    Ok(drvs.len())
}

/// Deploys `hosts` in waves with up to `rollout.parallelism()` hosts at once; hosts not started because of
/// `max_failures` or a failed canary wave are reported as skipped.
pub fn deploy_fleet(
    hosts: &[Host],
    connector: &dyn Connector,
    opts: &DeployOptions,
    rollout: &RolloutSettings,
    emit: EventSink<'_>,
) -> FleetReport {
    run_waves(hosts, rollout, emit, &|host, host_index| {
        deploy_host(host, connector, opts, emit, host_index)
    })
    .with_handshakes(connector.handshakes())
}

/// deploy-rs's `--rollback-succeeded`: when a host of this run failed, the hosts this run deployed go back to
/// their previous generation too (all or nothing), unless their profiles turned `autoRollback` off. Hosts that
/// were already on the wanted generation are left alone. Returns `report` with those hosts' outcomes updated.
pub fn revoke_succeeded(
    hosts: &[Host],
    mut report: FleetReport,
    connector: &dyn Connector,
    goal: crate::agent::Goal,
    rollout: &RolloutSettings,
    emit: EventSink<'_>,
) -> FleetReport {
    if report.all_ok() || nixpave_remote::cancel::is_cancelled() {
        return report;
    }
    let revoke: Vec<Host> = hosts
        .iter()
        .filter(|h| {
            h.profiles.iter().all(|p| p.settings.auto_rollback)
                && report
                    .hosts
                    .iter()
                    .any(|r| r.host == h.name && r.outcome == Outcome::Deployed)
        })
        .cloned()
        .collect();
    if revoke.is_empty() {
        return report;
    }
    let rollout = RolloutSettings {
        parallel: rollout.parallel,
        ..Default::default()
    };
    let reverted = run_waves(&revoke, &rollout, emit, &|host, host_index| {
        crate::host::rollback_host(host, connector, goal, emit, host_index)
    });
    for r in reverted.hosts {
        if let Some(slot) = report.hosts.iter_mut().find(|h| h.host == r.host) {
            slot.outcome = if r.outcome == Outcome::RolledBack {
                Outcome::RolledBack
            } else {
                Outcome::Failed
            };
            slot.message = format!(
                "deployed, then reverted because another host failed (--rollback-succeeded): {}",
                r.message
            );
            slot.generation = r.generation;
            slot.path = r.path;
        }
    }
    report.handshakes = connector.handshakes();
    report
}

impl FleetReport {
    pub(crate) fn with_handshakes(mut self, n: usize) -> FleetReport {
        self.handshakes = n;
        self
    }
}

/// Runs `job` over the hosts following the rollout rules.
pub fn run_waves(
    hosts: &[Host],
    rollout: &RolloutSettings,
    emit: EventSink<'_>,
    job: &(dyn Fn(&Host, usize) -> HostReport + Sync),
) -> FleetReport {
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    run_waves_named(&names, rollout, emit, &|index| job(&hosts[index], index))
}

/// [`run_waves`] over hosts known by name only (their settings may still be evaluating): `job` gets the
/// host's index in `names`.
pub fn run_waves_named(
    names: &[String],
    rollout: &RolloutSettings,
    emit: EventSink<'_>,
    job: &(dyn Fn(usize) -> HostReport + Sync),
) -> FleetReport {
    let reports: Mutex<Vec<Option<HostReport>>> = Mutex::new(vec![None; names.len()]);
    let failures = AtomicUsize::new(0);
    let mut stop = false;
    for (number, wave) in plan_waves(names.len(), rollout).iter().enumerate() {
        if stop {
            break;
        }
        emit(Event::Wave {
            number: number + 1,
            hosts: wave.hosts.iter().map(|i| names[*i].clone()).collect(),
            canary: wave.canary,
        });
        let before = failures.load(Ordering::SeqCst);
        nixpave_remote::parallel::run(
            &wave.hosts,
            rollout.parallelism(),
            || !may_start(failures.load(Ordering::SeqCst), rollout),
            |&index| {
                let name = &names[index];
                // Caught here, not by the executor: a panicked host counts as a failure before
                // the next host starts, and shows as a failed row like any other.
                let report = nixpave_remote::parallel::catch_panic(|| job(index)).unwrap_or_else(
                    |message| {
                        bare_report(name, Outcome::Failed, format!("internal error: {message}"))
                    },
                );
                if !report.outcome.is_success() {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                emit(Event::Finished {
                    report: report.clone(),
                });
                if let Ok(mut r) = reports.lock() {
                    r[index] = Some(report);
                }
            },
        );
        let total = failures.load(Ordering::SeqCst);
        stop = !continue_after(wave, total - before, total, rollout)
            || nixpave_remote::cancel::is_cancelled();
    }
    let reports = reports.into_inner().unwrap_or_default();
    let hosts = reports
        .into_iter()
        .zip(names)
        .map(|(r, name)| {
            r.unwrap_or_else(|| {
                let message = if nixpave_remote::cancel::is_cancelled() {
                    "not started: interrupted"
                } else {
                    "not started: the rollout stopped (max failures or failed canary)"
                };
                let report = bare_report(name, Outcome::Skipped, message.into());
                emit(Event::Finished {
                    report: report.clone(),
                });
                report
            })
        })
        .collect();
    FleetReport {
        hosts,
        handshakes: 0,
    }
}

/// A report of a host that has nothing to show but its outcome and why.
pub(crate) fn bare_report(name: &str, outcome: Outcome, message: String) -> HostReport {
    HostReport::new(name, outcome, 0, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;
    use crate::select::Selection;

    fn hosts(n: usize) -> Vec<Host> {
        let nodes: serde_json::Map<String, serde_json::Value> = (0..n)
            .map(|i| {
                (
                    format!("h{i:02}"),
                    serde_json::json!({"hostname": "x", "profiles": {"system": {"path": "/nix/store/x"}}}),
                )
            })
            .collect();
        Inventory::from_json(serde_json::json!({ "nodes": nodes }), &Selection::default())
            .expect("valid")
            .hosts
    }

    fn report(host: &Host, outcome: Outcome) -> HostReport {
        bare_report(&host.name, outcome, String::new())
    }

    fn outcomes(n: usize, rollout: &RolloutSettings, failing: &[usize]) -> Vec<Outcome> {
        let hs = hosts(n);
        let job = |h: &Host, i: usize| {
            report(
                h,
                if failing.contains(&i) {
                    Outcome::Failed
                } else {
                    Outcome::Deployed
                },
            )
        };
        run_waves(&hs, rollout, &|_| {}, &job)
            .hosts
            .iter()
            .map(|r| r.outcome)
            .collect()
    }

    #[test]
    fn a_failed_canary_stops_the_rollout() {
        use Outcome::*;
        let rollout = RolloutSettings {
            canary: Some(2),
            ..Default::default()
        };
        assert_eq!(
            outcomes(5, &rollout, &[1]),
            [Deployed, Failed, Skipped, Skipped, Skipped]
        );
        assert_eq!(
            outcomes(5, &rollout, &[4]),
            [Deployed, Deployed, Deployed, Deployed, Failed]
        );
    }

    #[test]
    fn keep_going_by_default_and_max_failures_stops_starting_hosts() {
        use Outcome::*;
        assert_eq!(
            outcomes(4, &RolloutSettings::default(), &[0, 2]),
            [Failed, Deployed, Failed, Deployed]
        );
        let one_at_a_time = RolloutSettings {
            parallel: Some(1),
            max_failures: Some(2),
            ..Default::default()
        };
        assert_eq!(
            outcomes(5, &one_at_a_time, &[0, 2]),
            [Failed, Deployed, Failed, Skipped, Skipped]
        );
    }

    #[test]
    fn a_panicking_host_is_a_failed_row_and_counts_as_a_failure() {
        let hs = hosts(4);
        let one_at_a_time = RolloutSettings {
            parallel: Some(1),
            max_failures: Some(1),
            ..Default::default()
        };
        let finished = Mutex::new(Vec::new());
        let emit = |e: Event| {
            if let Event::Finished { report } = e {
                finished.lock().expect("lock").push(report.host);
            }
        };
        let job = |h: &Host, i: usize| {
            if i == 1 {
                panic!("bug on {}", h.name);
            }
            report(h, Outcome::Deployed)
        };
        let report = run_waves(&hs, &one_at_a_time, &emit, &job);
        let rows: Vec<(Outcome, &str)> = report
            .hosts
            .iter()
            .map(|r| (r.outcome, r.message.as_str()))
            .collect();
        assert_eq!(rows[0].0, Outcome::Deployed);
        assert_eq!(rows[1], (Outcome::Failed, "internal error: bug on h01"));
        // max-failures 1: the panic stopped the rollout like any failure.
        assert_eq!(rows[2].0, Outcome::Skipped);
        assert_eq!(rows[3].0, Outcome::Skipped);
        // Every host, the panicked one included, was reported exactly once.
        let mut seen = finished.into_inner().expect("lock");
        seen.sort();
        assert_eq!(seen, ["h00", "h01", "h02", "h03"]);
    }

    #[test]
    fn a_host_sees_the_logs_of_its_own_failed_builds_and_the_names_of_the_others() {
        let log = |drv: &str, line: &str| nixpave_nix::progress::BuildLog {
            drv: drv.into(),
            lines: vec![line.into()],
            earlier: 0,
        };
        let failure = Failure {
            message:
                "`nix build` failed (exit Some(1)):\nerror: builder for '/nix/store/a-x.drv' failed"
                    .into(),
            logs: vec![
                log("/nix/store/a-x.drv", "x broke"),
                log("/nix/store/b-y.drv", "y stopped"),
            ],
        };
        assert_eq!(
            failure.for_host(&["/nix/store/a-x.drv"]),
            "`nix build` failed (exit Some(1)):\nerror: builder for '/nix/store/a-x.drv' failed\n\
             1 log line of the build of /nix/store/a-x.drv:\n> x broke\n\
             not built: /nix/store/b-y.drv (their logs are in the build's error)"
        );
        assert_eq!(
            failure.for_host(&["/nix/store/c-z.drv"]),
            "`nix build` failed (exit Some(1)):\nerror: builder for '/nix/store/a-x.drv' failed\n\
             not built: /nix/store/a-x.drv, /nix/store/b-y.drv (their logs are in the build's error)"
        );
    }
}
