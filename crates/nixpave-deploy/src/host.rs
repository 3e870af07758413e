//! Deploying one host: probe, push, keys, activate through the agent, health checks, confirm, wait, reboot.

use std::time::{Duration, Instant};

use nixpave_nix::copy::CopyTo;
use nixpave_nix::invoke::NixOptions;
use nixpave_remote::{shell_quote, OutputStream, Transport, TransportError};

use crate::agent::{
    manual_rollback_script, new_deploy_id, Activation, Goal, AGENT_SCRIPT, EXIT_AGENT_GONE,
    EXIT_BUSY, EXIT_NOT_INSTALLED,
};
use crate::connection::{Connection, Connector};
use crate::event::{Event, EventSink, HostReport, Outcome, Phase};
use crate::health;
use crate::inventory::{Host, Profile};
use crate::keys::UploadAt;
use crate::status::{read_state, read_state_with_keys, AgentState, StatusRecord};
use crate::timing;

/// How a deploy runs (command-line options).
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// switch, boot, test or dry-activate.
    pub goal: Goal,
    /// Reboot after a successful `switch`/`boot` and wait for the new boot.
    pub reboot: bool,
    /// How long a reboot may take.
    pub reboot_timeout: Duration,
    /// Force `--substitute-on-destination` on or off (default: on unless `fastConnection`).
    pub substitute_on_destination: Option<bool>,
    /// Build on the target instead of locally (also per node through `remoteBuild`).
    pub build_on_target: bool,
    /// Redeploy even when the host already runs the wanted generation.
    pub force: bool,
    /// Options for local nix calls.
    pub nix: NixOptions,
    /// The fleet's build running alongside (streaming): a host waits for its own profiles before pushing.
    /// `None`: everything was built before the deploy started.
    pub builds: Option<std::sync::Arc<crate::fleet::Builds>>,
    /// Push through this binary cache (once per closure) and let the targets fetch from it.
    pub cache: Option<std::sync::Arc<crate::cache::Cache>>,
    /// `--disk-update`: bring each node's disks to its flake's layout before activating.
    pub disk_update: Option<std::sync::Arc<crate::disk_update::DiskUpdate>>,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            goal: Goal::Switch,
            reboot: false,
            reboot_timeout: Duration::from_secs(600),
            substitute_on_destination: None,
            build_on_target: false,
            force: false,
            nix: NixOptions::default(),
            builds: None,
            cache: None,
            disk_update: None,
        }
    }
}

struct Run<'a> {
    host: &'a Host,
    emit: EventSink<'a>,
    started: Instant,
    host_index: usize,
    /// The phase last announced: waiting for the build and pushing are both `push`, and a phase
    /// is announced once however many steps it has.
    current: std::cell::Cell<Option<Phase>>,
}

/// Why a step failed.
struct StepError {
    phase: Phase,
    message: String,
    log_tail: Vec<String>,
    /// Stopped for safety before anything was changed (the host's report says so).
    refused: bool,
}

impl StepError {
    fn new(phase: Phase, message: impl Into<String>) -> StepError {
        StepError {
            phase,
            message: message.into(),
            log_tail: Vec::new(),
            refused: false,
        }
    }
}

impl Run<'_> {
    fn phase(&self, phase: Phase) {
        if self.current.replace(Some(phase)) == Some(phase) {
            return;
        }
        (self.emit)(Event::Phase {
            host: self.host.name.clone(),
            phase,
        });
    }

    fn log(&self, line: impl Into<String>) {
        (self.emit)(Event::Log {
            host: self.host.name.clone(),
            line: line.into(),
        });
    }

    /// Starts a run on `host`: announces the connect phase, opens the host's connection and runs
    /// `work` on it; a failed connection is the host's report.
    fn with_connection<'a>(
        host: &'a Host,
        connector: &dyn Connector,
        emit: EventSink<'a>,
        host_index: usize,
        work: impl FnOnce(&Run<'a>, &dyn Connection) -> HostReport,
    ) -> HostReport {
        let run = Run {
            host,
            emit,
            started: Instant::now(),
            host_index,
            current: std::cell::Cell::new(None),
        };
        run.phase(Phase::Connect);
        match timing::timed(&host.name, "connect", || connector.connect(host)) {
            Ok(conn) => work(&run, conn.as_ref()),
            Err(e) => {
                let mut r = run.report(
                    Outcome::Failed,
                    format!("cannot connect to {}: {e}", host.hostname),
                );
                r.failed_phase = Some(Phase::Connect);
                r
            }
        }
    }

    fn report(&self, outcome: Outcome, message: String) -> HostReport {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        HostReport::new(self.host.name.clone(), outcome, elapsed_ms, message)
    }
}

/// Deploys `host` and returns its report (never panics, never returns early without one).
pub fn deploy_host(
    host: &Host,
    connector: &dyn Connector,
    opts: &DeployOptions,
    emit: EventSink<'_>,
    host_index: usize,
) -> HostReport {
    Run::with_connection(
        host,
        connector,
        emit,
        host_index,
        |run, conn| match deploy_connected(run, conn, opts) {
            Ok(report) => report,
            Err(e) => {
                let mut r = run.report(Outcome::Failed, e.message);
                r.failed_phase = Some(e.phase);
                r.refused = e.refused;
                r.log_tail = e.log_tail;
                r
            }
        },
    )
}

fn transport_err(phase: Phase) -> impl Fn(TransportError) -> StepError {
    move |e| StepError::new(phase, e.to_string())
}

fn deploy_connected(
    run: &Run<'_>,
    conn: &dyn Connection,
    opts: &DeployOptions,
) -> Result<HostReport, StepError> {
    let host = run.host;
    let t = conn.transport();
    run.phase(Phase::Probe);
    let key_dests: Vec<(&str, std::path::PathBuf)> = host
        .keys
        .iter()
        .map(|(name, k)| (name.as_str(), k.dest(name)))
        .collect();
    let key_refs: Vec<(&str, &std::path::Path)> =
        key_dests.iter().map(|(n, d)| (*n, d.as_path())).collect();
    let before = timing::timed(&host.name, "probe", || {
        read_state_with_keys(t, &host.profiles, true, &key_refs)
    })
    .map_err(transport_err(Phase::Probe))?;
    if let Some(disks) = &opts.disk_update {
        crate::disk_update::step(run.host, run.emit, t, disks).map_err(|e| StepError {
            refused: e.is_refusal(),
            ..StepError::new(Phase::Disk, e.to_string())
        })?;
    }

    // A no-op: every profile already on the wanted path, confirmed by its last deploy. A profile that another
    // tool deployed (no record of nixpave's) counts when it is on the wanted path and, for a system, that
    // system is the running one: the same one round trip as nixpave's own no-op, no re-activation.
    let unchanged = opts.goal == Goal::Switch
        && !opts.force
        && !opts.reboot
        && host
            .profiles
            .iter()
            .zip(&before.profiles)
            .enumerate()
            .all(|(i, (p, s))| {
                let wanted = p.path.out_path();
                s.current.as_deref() == Some(wanted)
                    && match &s.last {
                        Some(r) => r.state == AgentState::Confirmed && r.path == wanted,
                        None => s.wanted_system.is_none() || before.runs_wanted_system(i, wanted),
                    }
            });
    if unchanged {
        // Keys live apart from the system (under /run/keys they are gone after a reboot): a key whose
        // contents, mode or owner differ from the inventory's is uploaded even though the system is unchanged.
        let mut stale = Vec::new();
        for (name, key) in &host.keys {
            let wanted = key
                .fingerprint(name)
                .map_err(|e| StepError::new(Phase::Keys, error_chain(&e)))?;
            if before.keys.get(name) != Some(&wanted) {
                stale.push((name, key));
            }
        }
        if !stale.is_empty() {
            run.phase(Phase::Keys);
            for (name, key) in &stale {
                key.upload(name, t)
                    .map_err(|e| StepError::new(Phase::Keys, error_chain(&e)))?;
            }
        }
        let mut r = run.report(
            Outcome::Unchanged,
            if stale.is_empty() {
                "already on the wanted generation".into()
            } else {
                format!(
                    "already on the wanted generation; key(s) uploaded again: {}",
                    stale
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        );
        r.generation = before.profiles.first().and_then(|p| p.generation);
        r.path = before.profiles.first().and_then(|p| p.current.clone());
        return Ok(r);
    }

    let missing: Vec<String> = host
        .profiles
        .iter()
        .zip(&before.profiles)
        .filter(|(_, s)| !s.wanted_present)
        .map(|(p, _)| p.path.out_path().to_string())
        .collect();
    if !missing.is_empty() {
        if let Some(builds) = &opts.builds {
            run.phase(Phase::Push);
            timing::timed(&host.name, "build-wait", || builds.wait_for(host))
                .map_err(|e| StepError::new(Phase::Push, e))?;
        }
        timing::timed(&host.name, "push", || push(run, conn, opts, &missing))?;
    }

    upload_keys(run, t, UploadAt::PreActivation)?;

    let mut last: Option<StatusRecord> = None;
    let mut activated: Vec<(&Profile, StatusRecord)> = Vec::new();
    for (i, profile) in host.profiles.iter().enumerate() {
        let record = match activate_profile(run, conn, profile, opts, i) {
            Ok(record) => record,
            Err(mut e) => {
                e.message
                    .push_str(&revert_earlier(run, t, &activated, opts.goal));
                return Err(e);
            }
        };
        let done = record.state;
        match done {
            AgentState::Confirmed | AgentState::DryActivated => {
                activated.push((profile, record.clone()));
                last = Some(record);
            }
            _ => {
                let outcome = if done == AgentState::RolledBack {
                    Outcome::RolledBack
                } else {
                    Outcome::Failed
                };
                let reverted = revert_earlier(run, t, &activated, opts.goal);
                let mut r = run.report(
                    outcome,
                    format!(
                        "profile {}: {} ({}){reverted}",
                        profile.name,
                        done,
                        explain_reason(&record.reason)
                    ),
                );
                r.failed_phase = Some(Phase::Activate);
                r.generation = record.generation;
                r.path =
                    Some(record.previous_path.clone()).filter(|_| outcome == Outcome::RolledBack);
                r.log_tail = agent_log_tail(t, profile);
                return Ok(r);
            }
        }
    }

    upload_keys(run, t, UploadAt::PostActivation)?;

    if opts.reboot && matches!(opts.goal, Goal::Switch | Goal::Boot) {
        reboot_and_verify(
            run,
            t,
            &before.boot_id,
            host.profiles[0].path.out_path(),
            opts,
        )?;
    }

    let record = last.ok_or_else(|| StepError::new(Phase::Activate, "no profile was activated"))?;
    let outcome = if record.state == AgentState::DryActivated {
        Outcome::DryActivated
    } else {
        Outcome::Deployed
    };
    let mut r = run.report(outcome, String::new());
    r.generation = record.generation;
    r.path = Some(record.path);
    Ok(r)
}

/// A later profile of the node failed: the earlier profiles this deploy moved to a new generation go back to
/// their previous one (most recent first), so the node is never left half on the new release. Returns a
/// sentence for the report.
fn revert_earlier(
    run: &Run<'_>,
    t: &dyn Transport,
    activated: &[(&Profile, StatusRecord)],
    goal: Goal,
) -> String {
    if goal == Goal::DryActivate {
        return String::new();
    }
    let mut reverted = Vec::new();
    let mut failed = Vec::new();
    for (i, (profile, record)) in activated.iter().enumerate().rev() {
        if record.previous_path.is_empty() || record.previous_path == record.path {
            continue;
        }
        let id = new_deploy_id(run.host_index * 16 + 8 + i);
        match rollback_profile(t, profile, goal, &id) {
            Ok(_) => {
                run.log(format!(
                    "reverted profile {} to its previous generation",
                    profile.name
                ));
                reverted.push(profile.name.clone());
            }
            Err(e) => failed.push(e),
        }
    }
    let mut text = String::new();
    if !reverted.is_empty() {
        text.push_str(&format!(
            "; earlier profiles reverted: {}",
            reverted.join(", ")
        ));
    }
    if !failed.is_empty() {
        text.push_str(&format!(
            "; reverting earlier profiles failed: {}",
            failed.join("; ")
        ));
    }
    text
}

fn explain_reason(reason: &str) -> String {
    match reason {
        "no-confirmation" => "no confirmation through a new connection in time".into(),
        "activation-failed" => "activation failed".into(),
        "activation-timeout" => "activation did not finish in time".into(),
        "health-check-failed" => "a health check failed".into(),
        "profile-set-failed" => "nix-env --set failed".into(),
        lockout if lockout.starts_with("lockout-") => format!(
            "right after activation the host could no longer be reached the way the deployer came in \
             ({}): rolled back at once; the agent log has the details",
            &lockout["lockout-".len()..]
        ),
        other => other.to_string(),
    }
}

fn push(
    run: &Run<'_>,
    conn: &dyn Connection,
    opts: &DeployOptions,
    paths: &[String],
) -> Result<(), StepError> {
    run.phase(Phase::Push);
    let Some(mut to) = CopyTo::over(conn) else {
        return Ok(());
    };
    let host = run.host;
    to.substitute_on_destination = opts
        .substitute_on_destination
        .unwrap_or(!host.settings.fast_connection);
    let build_on_target = opts.build_on_target || host.settings.remote_build;
    if build_on_target {
        // Ship the derivations (not their outputs), then realise them on the host.
        let drvs: Vec<String> = host
            .profiles
            .iter()
            .filter_map(|p| p.path.drv_path().map(String::from))
            .collect();
        nixpave_nix::copy::copy_derivations(&to, &drvs, &opts.nix)
            .map_err(|e| StepError::new(Phase::Push, e.to_string()))?;
        let mut argv = vec!["nix-store".to_string(), "--realise".to_string()];
        argv.extend(drvs);
        let out = conn
            .transport()
            .run_streaming(&argv, None, &mut |_, line| run.log(line.to_string()))
            .map_err(transport_err(Phase::Push))?;
        if !out.success() {
            return Err(StepError {
                refused: false,
                phase: Phase::Push,
                message: format!("building on the host failed (exit {:?})", out.status),
                log_tail: out.stderr_tail(15).lines().map(String::from).collect(),
            });
        }
        run.log("built on the host");
        return Ok(());
    }
    if let Some(cache) = &opts.cache {
        // One upload for the fleet: the first host that needs a closure pushes it to the cache, the others
        // wait for that push; then each target fetches from the cache by itself.
        timing::timed(&host.name, "cache-push", || cache.push(paths, &opts.nix))
            .map_err(|e| StepError::new(Phase::Push, format!("pushing to the cache: {e}")))?;
        let out = timing::timed(&host.name, "cache-fetch", || {
            conn.transport().run(&cache.fetch_argv(paths), None)
        })
        .map_err(transport_err(Phase::Push))?;
        if !out.success() {
            return Err(StepError {
                refused: false,
                phase: Phase::Push,
                message: format!(
                    "fetching from the cache {} failed (exit {:?})",
                    cache.substituter, out.status
                ),
                log_tail: out.stderr_tail(10).lines().map(String::from).collect(),
            });
        }
        run.log(format!("fetched {} path(s) from the cache", paths.len()));
        return Ok(());
    }
    let mut progress = nixpave_nix::progress::CopyProgress::default();
    let mut shown = Instant::now();
    nixpave_nix::copy::copy_closure_streaming(&to, paths, &opts.nix, &mut |event| {
        if progress.add(&event) && shown.elapsed() >= Duration::from_millis(250) {
            shown = Instant::now();
            (run.emit)(Event::Progress {
                host: host.name.clone(),
                text: progress.text(),
            });
        }
    })
    .map_err(|e| StepError::new(Phase::Push, e.to_string()))?;
    run.log(format!(
        "pushed {} path(s)",
        paths.len().max(progress.paths.1 as usize)
    ));
    Ok(())
}

fn upload_keys(run: &Run<'_>, t: &dyn Transport, when: UploadAt) -> Result<(), StepError> {
    let keys: Vec<_> = run
        .host
        .keys
        .iter()
        .filter(|(_, k)| k.upload_at == when)
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    run.phase(Phase::Keys);
    for (name, key) in keys {
        key.upload(name, t)
            .map_err(|e| StepError::new(Phase::Keys, error_chain(&e)))?;
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn parse_record(stdout: &str) -> Option<StatusRecord> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<StatusRecord>(l.trim()).ok())
}

fn activate_profile(
    run: &Run<'_>,
    conn: &dyn Connection,
    profile: &Profile,
    opts: &DeployOptions,
    index: usize,
) -> Result<StatusRecord, StepError> {
    let t = conn.transport();
    let id = new_deploy_id(run.host_index * 16 + index);
    let mut a = Activation::for_profile(profile, opts.goal, &id);
    // The target waits for the health checks too: they run inside its confirmation window.
    a.confirm_timeout += health::budget_seconds(&run.host.health_checks);
    a.health_checks = !run.host.health_checks.is_empty() && opts.goal != Goal::DryActivate;
    run.phase(Phase::Activate);
    let since = Instant::now();
    let launched = t.run_streaming(
        &["sh".into(), "-c".into(), a.launch_script()],
        Some(AGENT_SCRIPT.as_bytes()),
        &mut |stream, line| {
            if stream == OutputStream::Stderr {
                run.log(line.trim_start_matches("nixpave-agent: "));
            }
        },
    );
    timing::record(&run.host.name, "activate", since);
    // A lost connection here does not stop the agent: find out what it did.
    let ready = match launched {
        Ok(out) if out.success() => parse_record(&out.stdout_str()),
        Ok(out) if out.status == Some(EXIT_BUSY) || out.status == Some(EXIT_NOT_INSTALLED) => {
            return Err(StepError::new(
                Phase::Activate,
                format!("{} (nothing was changed)", out.stderr_tail(1)),
            ));
        }
        Ok(out) => {
            run.log(format!("starting the agent: {}", out.stderr_tail(3)));
            None
        }
        Err(e) => {
            run.log(format!("connection lost while activating: {e}"));
            None
        }
    };
    let Some(ready) = ready else {
        return wait_final(run, t, &a, profile);
    };
    if ready.state != AgentState::WaitingConfirmation {
        return Ok(ready);
    }

    run.phase(Phase::HealthCheck);
    let since = Instant::now();
    let mut failures = Vec::new();
    for check in &run.host.health_checks {
        let started = Instant::now();
        match check.run(conn.address(), t) {
            Ok(()) => run.log(format!(
                "health check {} passed ({} ms)",
                check.display_name(),
                started.elapsed().as_millis()
            )),
            Err(f) => failures.push(f),
        }
    }
    if !run.host.health_checks.is_empty() {
        timing::record(&run.host.name, "health", since);
    }
    if !failures.is_empty() {
        for f in &failures {
            run.log(format!("health check {} failed: {}", f.check, f.output));
        }
        let _ = t.run(&a.reject_argv(), None);
        let mut record = wait_final(run, t, &a, profile)?;
        if record.state != AgentState::Confirmed {
            let suffix = record
                .reason
                .strip_prefix("health-check-failed")
                .unwrap_or_default()
                .to_string();
            record.reason = format!(
                "health check failed{suffix}: {}",
                failures
                    .iter()
                    .map(|f| format!("{} ({} attempts): {}", f.check, f.attempts, f.output))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        return Ok(record);
    }

    if nixpave_remote::cancel::is_cancelled() {
        // Interrupted before confirming: leave it unconfirmed, the host rolls back by itself.
        return Err(StepError::new(
            Phase::Confirm,
            format!(
                "interrupted before confirmation: the host rolls back to the previous generation by \
                 itself within {} s",
                a.confirm_timeout
            ),
        ));
    }
    run.phase(Phase::Confirm);
    // Magic rollback wants the proof that a new login still works; without it the verdict of the health
    // checks goes over the existing connection.
    // The proof login also waits for the final record: confirmation and final wait in one round trip. Should
    // it not see the record in time, the wait goes on over the master connection.
    let since = Instant::now();
    let argv = a.confirm_and_wait_argv(CONFIRM_WAIT_SECONDS);
    let confirmed = if a.magic_rollback {
        conn.run_fresh_login(&argv)
    } else {
        t.run(&argv, None)
    };
    timing::record(&run.host.name, "confirm", since);
    match confirmed {
        Ok(out) => {
            if let Some(r) = parse_record(&out.stdout_str()).filter(|r| r.is_final()) {
                return Ok(r);
            }
            if !out.success() {
                run.log(format!(
                    "confirmation over a new connection failed: {}",
                    out.stderr_tail(3)
                ));
            }
        }
        Err(e) => run.log(format!("new ssh connection failed, not confirming: {e}")),
    }
    timing::timed(&run.host.name, "wait", || wait_final(run, t, &a, profile))
}

/// How long the confirmation login waits for the agent's final record before the wait moves to the master
/// connection (the confirmation wakes the agent at once; a rollback it starts instead takes longer).
const CONFIRM_WAIT_SECONDS: u64 = 20;

/// Waits (retrying over a lost connection) until the agent's record is final.
fn wait_final(
    run: &Run<'_>,
    t: &dyn Transport,
    a: &Activation,
    profile: &Profile,
) -> Result<StatusRecord, StepError> {
    run.phase(Phase::Wait);
    let deadline = Instant::now() + Duration::from_secs(a.final_timeout() + 30);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        if nixpave_remote::cancel::is_cancelled() {
            return Err(StepError::new(
                Phase::Wait,
                format!(
                    "interrupted while waiting for the agent of profile {}; `nixpave status` shows how \
                     it ended (unconfirmed deploys roll back by themselves)",
                    profile.name
                ),
            ));
        }
        match t.run(&a.wait_final_argv(), None) {
            Ok(out) => {
                if let Some(r) = parse_record(&out.stdout_str()).filter(|r| r.is_final()) {
                    return Ok(r);
                }
                if out.status == Some(EXIT_AGENT_GONE) {
                    return Err(StepError {
                        refused: false,
                        phase: Phase::Activate,
                        message: out.stderr_tail(2),
                        log_tail: agent_log_tail(t, profile),
                    });
                }
                last_error = out.stderr_tail(5);
            }
            Err(e) => last_error = e.to_string(),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(StepError {
        refused: false,
        phase: Phase::Wait,
        message: format!(
            "no final status from the agent for profile {} within {} s: {last_error}",
            profile.name,
            a.final_timeout() + 30
        ),
        log_tail: agent_log_tail(t, profile),
    })
}

/// The end of the agent's last run: its run log (the history, `NAME.log`, gets it only when the run ends),
/// or the history when there is no run log.
fn agent_log_tail(t: &dyn Transport, profile: &Profile) -> Vec<String> {
    let base = format!("{}/{}", profile.settings.state_dir, profile.name);
    let script = format!(
        "tail -n 60 {} 2>/dev/null || tail -n 60 {}",
        shell_quote(&format!("{base}.run.log")),
        shell_quote(&format!("{base}.log"))
    );
    match t.run(&["sh".into(), "-c".into(), script], None) {
        Ok(out) => last_deploy_lines(&out.stdout_str(), 15),
        Err(_) => Vec::new(),
    }
}

/// The lines of the agent log that belong to its last run (it appends across deploys), at most `max`.
fn last_deploy_lines(log: &str, max: usize) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| {
            l.starts_with("nixpave-agent: deploy ")
                || l.starts_with("nixpave-agent: manual rollback")
        })
        .unwrap_or(0);
    let from = start.max(lines.len().saturating_sub(max));
    lines[from..].iter().map(|l| l.to_string()).collect()
}

/// Exits 3 when the host shares its kernel with the machine it runs on (container or lab host), where
/// rebooting would reboot that machine: the one guard install and deploy share.
const REBOOT_GUARD: &str = nixpave_remote::SHARED_KERNEL_GUARD;

fn reboot_and_verify(
    run: &Run<'_>,
    t: &dyn Transport,
    old_boot: &str,
    wanted: &str,
    opts: &DeployOptions,
) -> Result<(), StepError> {
    run.phase(Phase::Reboot);
    // Detached so the command's own connection dropping is not an error. A "host" whose session is not in
    // PID 1's mount namespace is a container or lab host sharing a kernel: rebooting would reboot that kernel.
    let out = t
        .run(
            &[
                "sh".into(),
                "-c".into(),
                format!("{REBOOT_GUARD}; (sleep 1; systemctl reboot || reboot) </dev/null >/dev/null 2>&1 &"),
            ],
            None,
        )
        .map_err(transport_err(Phase::Reboot))?;
    if out.status == Some(3) {
        return Err(StepError::new(
            Phase::Reboot,
            format!(
                "refused to reboot: {} (the new system is active)",
                out.stderr_tail(1)
            ),
        ));
    }
    let deadline = Instant::now() + opts.reboot_timeout;
    std::thread::sleep(Duration::from_secs(3));
    while Instant::now() < deadline {
        if let Ok(state) = read_state(t, &run.host.profiles, true) {
            if !state.boot_id.is_empty() && state.boot_id != old_boot {
                return if state.runs_wanted_system(0, wanted) {
                    Ok(())
                } else {
                    Err(StepError::new(
                        Phase::Reboot,
                        format!(
                            "rebooted, but /run/current-system is {} instead of {wanted}",
                            state.current_system.as_deref().unwrap_or("missing")
                        ),
                    ))
                };
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(StepError::new(
        Phase::Reboot,
        format!(
            "host did not come back with a new boot id within {} s",
            opts.reboot_timeout.as_secs()
        ),
    ))
}

/// Rolls `host` back to the previous generation of each profile (`nixpave rollback`).
pub fn rollback_host(
    host: &Host,
    connector: &dyn Connector,
    goal: Goal,
    emit: EventSink<'_>,
    host_index: usize,
) -> HostReport {
    Run::with_connection(host, connector, emit, host_index, |run, conn| {
        let t = conn.transport();
        run.phase(Phase::Activate);
        let mut last = None;
        for (i, profile) in host.profiles.iter().enumerate() {
            match rollback_profile(t, profile, goal, &new_deploy_id(host_index * 16 + i)) {
                Ok(r) => last = Some(r),
                Err(message) => {
                    let mut r = run.report(Outcome::Failed, message);
                    r.failed_phase = Some(Phase::Activate);
                    r.log_tail = agent_log_tail(t, profile);
                    return r;
                }
            }
        }
        let mut r = run.report(Outcome::RolledBack, "rolled back by hand".into());
        if let Some(rec) = last {
            r.generation = rec.generation;
            r.path = Some(rec.path);
        }
        r
    })
}

/// Activates the generation before the current one of `profile` (the agent's manual rollback, run in the
/// agent's own session so that a lost connection or Ctrl-C on the deployer cannot stop it half way).
fn rollback_profile(
    t: &dyn Transport,
    profile: &Profile,
    goal: Goal,
    id: &str,
) -> Result<StatusRecord, String> {
    let a = Activation::for_profile(profile, goal, id);
    let out = t
        .run(
            &["sh".into(), "-c".into(), manual_rollback_script(&a)],
            Some(AGENT_SCRIPT.as_bytes()),
        )
        .map_err(|e| {
            if nixpave_remote::cancel::is_cancelled() {
                format!(
                    "profile {}: interrupted while waiting; the rollback goes on on the host by itself \
                     (`nixpave status` shows how it ended)",
                    profile.name
                )
            } else {
                e.to_string()
            }
        })?;
    let said = format!("{}{}", out.stdout_str().trim(), out.stderr_tail(2));
    match parse_record(&out.stdout_str()) {
        Some(r) if r.state == AgentState::RolledBack => Ok(r),
        other => Err(format!(
            "profile {}: {}",
            profile.name,
            other
                .map(|r| format!("{} ({})", r.state, r.reason))
                .unwrap_or_else(|| format!("no status from the agent: {said}"))
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_guard_refuses_inside_another_mount_namespace() {
        // Only the guard runs here, never the reboot.
        let out = std::process::Command::new("unshare")
            .args(["--mount", "sh", "-c", REBOOT_GUARD])
            .output()
            .expect("unshare");
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("shares its kernel"));
    }

    #[test]
    fn log_tail_starts_at_the_last_run() {
        let log = "nixpave-agent: deploy a: x\nold\nnixpave-agent: deploy b: y\nnew 1\nnew 2\n";
        assert_eq!(
            last_deploy_lines(log, 15),
            ["nixpave-agent: deploy b: y", "new 1", "new 2"]
        );
        assert_eq!(last_deploy_lines(log, 2), ["new 1", "new 2"]);
    }
}
