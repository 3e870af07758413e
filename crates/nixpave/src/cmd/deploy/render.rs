//! Progress, plan and result rendering for deploy and rollback.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use miette::IntoDiagnostic;
use nixpave_deploy::{Event, FleetReport, HostReport, Inventory, Outcome, RolloutSettings};

/// Fleets larger than this get a summed-up final table on a terminal.
const COMPACT_ABOVE: usize = 25;

pub(super) fn print_plan(
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
pub(super) struct Renderer {
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
    pub(super) fn new(json: bool, hosts: impl Iterator<Item = String>) -> Renderer {
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
    pub(super) fn build_progress(&self, done: u64, expected: u64) {
        if expected > 0 {
            self.update_summary(Some(&format!("build {done}/{expected}")));
        }
    }

    /// A fleet-wide message (the build failed): above the progress lines on a terminal, else on stderr
    /// (also with `--json`, whose stdout keeps its events).
    pub(super) fn note(&self, text: &str) {
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

    pub(super) fn event(&self, e: Event) {
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
            Event::Evaluated { done, total } => {
                // On a terminal only: a line per chunk would be a line per node with chunks of one.
                self.update_summary(Some(&format!("evaluating {done}/{total} nodes")));
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

    pub(super) fn finish(
        &self,
        report: &FleetReport,
        ok: fn(&HostReport) -> bool,
    ) -> miette::Result<()> {
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
        print!("{}", summary(report, ok, compact));
        Ok(())
    }
}

/// The final result of a deploy or rollback as text: a table of the hosts (`compact`: only those
/// that did not succeed, the others counted per outcome), the last log lines of each host that
/// failed, and one line of totals. `ok` says which outcome counts as success.
fn summary(report: &FleetReport, ok: fn(&HostReport) -> bool, compact: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if compact {
        let mut by_outcome: Vec<(&str, usize)> = Vec::new();
        for h in report.hosts.iter().filter(|h| ok(h)) {
            match by_outcome.iter_mut().find(|(w, _)| *w == outcome_word(h)) {
                Some((_, n)) => *n += 1,
                None => by_outcome.push((outcome_word(h), 1)),
            }
        }
        for (word, n) in by_outcome {
            let _ = writeln!(out, "{word}: {n} host(s)");
        }
    }
    let rows: Vec<&HostReport> = report.hosts.iter().filter(|h| !compact || !ok(h)).collect();
    if !rows.is_empty() {
        let mut table = crate::cmd::table::new(&["HOST", "RESULT", "TIME", "GENERATION", "detail"]);
        for h in rows {
            table.add_row(vec![
                h.host.clone(),
                crate::ui::status(outcome_word(h)),
                format!("{:.1}s", h.duration_ms as f64 / 1000.0),
                h.generation.map(|g| g.to_string()).unwrap_or("-".into()),
                h.message.clone(),
            ]);
        }
        let _ = writeln!(out, "{}", crate::cmd::table::render(table, &[2]));
    }
    for h in report
        .hosts
        .iter()
        .filter(|h| !ok(h) && h.outcome != Outcome::Skipped && !h.log_tail.is_empty())
    {
        let _ = writeln!(out, "\n--- {}: last log lines ---", h.host);
        for l in &h.log_tail {
            let _ = writeln!(out, "  {l}");
        }
    }
    let not_ok: Vec<&str> = report
        .hosts
        .iter()
        .filter(|h| !ok(h))
        .map(|h| h.host.as_str())
        .collect();
    let _ = writeln!(
        out,
        "\n{} of {} host(s) succeeded{}",
        report.hosts.len() - not_ok.len(),
        report.hosts.len(),
        if not_ok.is_empty() {
            String::new()
        } else {
            format!("; not succeeded: {}", not_ok.join(", "))
        }
    );
    out
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

#[cfg(test)]
mod tests {
    //! Snapshots of the final tables of `deploy` and `rollback`, from fixed reports (times and
    //! generations fixed, no colour: the tests do not call `ui::init`).
    use super::*;
    use nixpave_deploy::Phase;

    fn report(
        host: &str,
        outcome: Outcome,
        ms: u64,
        generation: Option<u64>,
        message: &str,
    ) -> HostReport {
        let mut r = HostReport::new(host, outcome, ms, message.into());
        r.generation = generation;
        r
    }

    fn fleet(hosts: Vec<HostReport>) -> FleetReport {
        FleetReport {
            hosts,
            handshakes: 0,
        }
    }

    fn deploy_ok(h: &HostReport) -> bool {
        h.outcome.is_success()
    }

    fn rollback_ok(h: &HostReport) -> bool {
        h.outcome == Outcome::RolledBack
    }

    fn mixed_deploy() -> FleetReport {
        let mut failed = report(
            "db1",
            Outcome::RolledBack,
            48_250,
            Some(7),
            "health check `curl -f localhost` failed: rolled back to generation 7",
        );
        failed.failed_phase = Some(Phase::HealthCheck);
        failed.log_tail = vec![
            "activating the configuration...".into(),
            "curl: (7) Failed to connect to localhost port 80".into(),
        ];
        let mut refused = report(
            "db2",
            Outcome::Failed,
            2_100,
            None,
            "refused: the disk layout shrinks partition root",
        );
        refused.failed_phase = Some(Phase::Disk);
        refused.refused = true;
        fleet(vec![
            report(
                "web1",
                Outcome::Deployed,
                31_400,
                Some(12),
                "deployed generation 12",
            ),
            report(
                "web2",
                Outcome::Unchanged,
                900,
                Some(12),
                "already on the wanted system",
            ),
            failed,
            refused,
            report(
                "web3",
                Outcome::Skipped,
                0,
                None,
                "not started: the rollout stopped (max failures or failed canary)",
            ),
        ])
    }

    #[test]
    fn deploy_summary_table() {
        insta::assert_snapshot!("deploy-summary", summary(&mixed_deploy(), deploy_ok, false));
    }

    #[test]
    fn deploy_summary_of_a_large_fleet_on_a_terminal_lists_only_failures() {
        let mut hosts: Vec<HostReport> = (1..=27)
            .map(|i| {
                report(
                    &format!("node{i:02}"),
                    if i % 3 == 0 {
                        Outcome::Unchanged
                    } else {
                        Outcome::Deployed
                    },
                    10_000 + i * 100,
                    Some(3),
                    "ok",
                )
            })
            .collect();
        let mut failed = report(
            "node28",
            Outcome::Failed,
            5_000,
            None,
            "cannot connect to node28: Connection refused",
        );
        failed.failed_phase = Some(Phase::Connect);
        hosts.push(failed);
        insta::assert_snapshot!(
            "deploy-summary-compact",
            summary(&fleet(hosts), deploy_ok, true)
        );
    }

    #[test]
    fn rollback_table() {
        let mut failed = report(
            "db1",
            Outcome::Failed,
            3_300,
            Some(4),
            "no earlier generation to roll back to",
        );
        failed.log_tail = vec!["error: no generation older than 4".into()];
        let report = fleet(vec![
            report(
                "web1",
                Outcome::RolledBack,
                6_800,
                Some(11),
                "rolled back to generation 11",
            ),
            report(
                "web2",
                Outcome::RolledBack,
                7_150,
                Some(11),
                "rolled back to generation 11",
            ),
            failed,
        ]);
        insta::assert_snapshot!("rollback-summary", summary(&report, rollback_ok, false));
    }
}
